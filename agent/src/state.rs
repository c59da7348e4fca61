//! The agent's identity on disk: machine id, agent secret and the server it
//! enrolled with. The file holds a bearer credential, so it is created with
//! mode 0600 and replaced atomically through a randomly named temp file
//! that is never a planted symlink ([`crate::private_file`]).

use std::{fs, io, os::unix::fs::PermissionsExt, path::Path};

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
        crate::private_file::write_atomically(path, &json, 0o600)
            .with_context(|| format!("cannot write agent state file {}", path.display()))
    }
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
    fn a_symlink_at_the_old_predictable_temp_name_gets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        let victim = dir.path().join("victim");
        fs::write(&victim, "untouched").unwrap();
        // The name earlier versions always used.
        let planted = dir
            .path()
            .join(format!(".agent.json.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let state = AgentState {
            machine_id: "mach_0123456789abcdef".into(),
            agent_secret: "cmdag_secret".into(),
            server: "http://127.0.0.1:1".into(),
            workspace_name: "dev".into(),
        };
        state.save(&path).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(AgentState::load(&path).unwrap(), Some(state));
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
