//! A record of the temp files that writes in progress own, kept next to the
//! agent's state file, so that an agent killed in the middle of a write
//! (SIGKILL, power loss) removes the leftover temp file when it starts
//! again. Each [`AtomicFile`](super::atomic::AtomicFile) adds one entry
//! before it creates its temp file and removes it once the temp file is
//! renamed or unlinked.
//!
//! The record is one small file per write, named after the write's nonce
//! and holding the temp file's path. It is process-wide and off until
//! [`open`] is called (unit tests and library users that never call it
//! simply leave temp files to the OS on a crash, as before).

use std::{
    fs,
    io::{self, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Every temp file's name contains this; a swept entry naming anything else
/// is ignored, so a damaged record can never delete a user's file.
pub const TEMP_MARKER: &str = ".cmdop-tmp-";

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Turns the record on, in `dir` (created 0700 if missing), after removing
/// the temp files a previous run left behind. Returns how many it removed.
/// Only the first call in a process takes effect; later ones return 0.
pub fn open(dir: &Path) -> io::Result<usize> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if DIR.set(dir.to_path_buf()).is_err() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Ok(bytes) = fs::read(entry.path()) {
            let tmp = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
            let ours = tmp
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(TEMP_MARKER));
            if ours && fs::remove_file(&tmp).is_ok() {
                tracing::info!(path = %tmp.display(), "removed the temp file of an interrupted write");
                removed += 1;
            }
        }
        let _ = fs::remove_file(entry.path());
    }
    Ok(removed)
}

/// One write's entry; dropping it removes the entry.
pub struct Entry(Option<PathBuf>);

impl Entry {
    /// Records that `tmp` (named with `nonce`) is about to be created. A
    /// record that cannot be written only costs the cleanup after a crash,
    /// so it never fails the write.
    pub fn record(tmp: &Path, nonce: u64) -> Entry {
        let Some(dir) = DIR.get() else {
            return Entry(None);
        };
        let path = dir.join(format!("{nonce:016x}"));
        // A new file under the random name, never through a planted link.
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(tmp.as_os_str().as_bytes()));
        match written {
            Ok(()) => Entry(Some(path)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a write in progress; a crash now would leave its temp file");
                Entry(None)
            }
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test that calls `open` (it is once per process).
    #[test]
    fn open_sweeps_leftover_temp_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("agent.json.writes");
        fs::create_dir(&record).unwrap();
        let leftover = dir
            .path()
            .join(format!(".data.bin{TEMP_MARKER}00000000000000aa"));
        let user_file = dir.path().join("data.bin");
        fs::write(&leftover, b"partial").unwrap();
        fs::write(&user_file, b"keep me").unwrap();
        fs::write(
            record.join("00000000000000aa"),
            leftover.as_os_str().as_bytes(),
        )
        .unwrap();
        // A damaged entry naming a user's file must not delete it.
        fs::write(
            record.join("00000000000000bb"),
            user_file.as_os_str().as_bytes(),
        )
        .unwrap();
        // An entry whose temp file is already gone.
        fs::write(
            record.join("00000000000000cc"),
            b"/nonexistent/.x.cmdop-tmp-cc",
        )
        .unwrap();

        assert_eq!(open(&record).unwrap(), 1);
        assert!(!leftover.exists());
        assert_eq!(fs::read(&user_file).unwrap(), b"keep me");
        assert_eq!(
            fs::read_dir(&record).unwrap().count(),
            0,
            "entries are removed"
        );

        // From now on every write is recorded while it runs.
        let tmp = dir
            .path()
            .join(format!(".new{TEMP_MARKER}00000000000000dd"));
        let entry = Entry::record(&tmp, 0xdd);
        assert_eq!(
            fs::read(record.join("00000000000000dd")).unwrap(),
            tmp.as_os_str().as_bytes()
        );
        drop(entry);
        assert!(!record.join("00000000000000dd").exists());
    }
}
