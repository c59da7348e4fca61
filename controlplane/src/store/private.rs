//! The data directory holds credential hashes and machine names: only its
//! owner may read it. New files are created private; an existing directory
//! or database readable by others is fixed at start-up, with a log line.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::Context;

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the database and its -wal / -shm files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (mode 0700) and its missing parents (default mode).
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

/// Makes `dir` 0700 and `db` (creating it empty if missing, which SQLite
/// treats as a new database) and its companions 0600.
pub fn secure(dir: &Path, db: &Path) -> anyhow::Result<()> {
    restrict(dir, DIR_MODE)?;
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot create database {}", db.display()))
        }
    }
    let name = db.file_name().unwrap_or_default().to_string_lossy();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = db.with_file_name(format!("{name}{suffix}"));
        if file.exists() {
            restrict(&file, FILE_MODE)?;
        }
    }
    Ok(())
}

/// Sets `path`'s permission bits to `mode` if they allow more.
fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let current = meta.permissions().mode() & 0o777;
    if current & !mode == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| {
        format!(
            "cannot restrict {} to mode {mode:o}; fix its owner or permissions",
            path.display()
        )
    })?;
    tracing::warn!(
        path = %path.display(),
        from = format!("{current:o}"),
        to = format!("{mode:o}"),
        "restricted permissions of control-plane state (it was readable by other users)"
    );
    Ok(())
}
