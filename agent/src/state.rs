//! The agent's identity on disk: machine id, agent secret and the server it
//! enrolled with. The file holds a bearer credential, so it is created with
//! mode 0600 and replaced atomically (temp file, fsync, rename).

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What enrollment gave us; everything a later start needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Stable machine identity, `mach_…`.
    pub machine_id: String,
    /// Bearer credential for every agent RPC, `cmdag_…`.
    pub agent_secret: String,
    /// Control plane URL used at enrollment.
    pub server: String,
    /// Workspace the machine belongs to (informational).
    #[serde(default)]
    pub workspace_name: String,
}

impl AgentState {
    /// Reads the state file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read agent state file {}", path.display()))
            }
        };
        warn_if_readable_by_others(path);
        let state: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "agent state file {} is not valid JSON; remove it and enroll again with a new token",
                path.display()
            )
        })?;
        if state.machine_id.is_empty() || state.agent_secret.is_empty() {
            anyhow::bail!(
                "agent state file {} lacks machine_id or agent_secret; remove it and enroll again",
                path.display()
            );
        }
        Ok(Some(state))
    }

    /// Writes the state file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self).context("cannot encode agent state")?;
        write_private_atomically(path, &json)
            .with_context(|| format!("cannot write agent state file {}", path.display()))
    }
}

/// Writes `bytes` to a 0600 temp file next to `path`, syncs it and renames
/// it over `path`, then syncs the directory so the rename survives a crash.
fn write_private_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "state file path has no file name",
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` only applies when the file is created; make sure of it.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "agent state file is accessible by other users; run `chmod 600` on it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        assert_eq!(AgentState::load(&path).unwrap(), None);
        let state = AgentState {
            machine_id: "mach_0123456789abcdef".into(),
            agent_secret: "cmdag_secret".into(),
            server: "http://127.0.0.1:1".into(),
            workspace_name: "dev".into(),
        };
        state.save(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(AgentState::load(&path).unwrap(), Some(state));
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        fs::write(&path, "not json").unwrap();
        let err = AgentState::load(&path).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
