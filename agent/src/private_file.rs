//! Files the agent writes for itself (its state file, the shell's inputrc).
//!
//! They are written to a temp file with a random name, opened with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` so that nothing planted in the directory (a
//! symlink at a guessed name) receives their content, then fsynced and
//! renamed over the target, so readers see the old file or the new one.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rand::Rng;

/// Temp names tried before giving up (each collision means something else
/// created that random name meanwhile).
const ATTEMPTS: usize = 8;

/// Replaces `path` with `bytes`, mode `mode`, atomically.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match write_via(path, bytes, mode, rand::rng().random()) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temp name available")))
}

/// The temp file used for `path` with `nonce`.
pub fn temp_name(path: &Path, nonce: u64) -> io::Result<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(file_name);
    tmp.push(format!(".tmp-{nonce:016x}"));
    Ok(dir.join(tmp))
}

/// [`write_atomically`] through the temp name of `nonce`; fails with
/// `AlreadyExists` if anything (even a dangling symlink) is there.
pub fn write_via(path: &Path, bytes: &[u8], mode: u32, nonce: u64) -> io::Result<()> {
    let tmp = temp_name(path, nonce)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)?;
    let result = (|| {
        // `mode` was filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = tmp.parent() {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_planted_at_the_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("agent.json");
        let victim = dir.path().join("victim");
        fs::write(&victim, "untouched").unwrap();
        let nonce = 7;
        std::os::unix::fs::symlink(&victim, temp_name(&target, nonce).unwrap()).unwrap();
        let err = write_via(&target, b"secret", 0o600, nonce).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(!target.exists());
    }

    #[test]
    fn temp_names_are_random_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        write_atomically(&target, b"one", 0o600).unwrap();
        write_atomically(&target, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_ne!(
            temp_name(&target, rand::rng().random()).unwrap(),
            temp_name(&target, rand::rng().random()).unwrap()
        );
    }
}
