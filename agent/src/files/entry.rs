//! `StreamFileEntry`: what a listing or stat says about one path.

use std::{
    collections::HashMap,
    fs::Metadata,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    time::UNIX_EPOCH,
};

use cmdop_proto::terminal::{LoadMethod, StreamFileEntry, StreamFileType, ViewerType};
use nix::unistd::{access, AccessFlags, Uid, User};

use super::{
    error::{FileError, FileResult},
    mime,
};

/// Caches uid → user name lookups during one listing.
#[derive(Default)]
pub struct OwnerNames(HashMap<u32, String>);

impl OwnerNames {
    fn name(&mut self, uid: u32) -> String {
        self.0
            .entry(uid)
            .or_insert_with(|| {
                User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string())
            })
            .clone()
    }
}

/// Describes `path` without following a final symlink.
pub fn entry_for(path: &Path, owners: &mut OwnerNames) -> FileResult<StreamFileEntry> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| FileError::io("stat", path, &e))?;
    Ok(entry_from_metadata(path, &meta, owners))
}

/// Builds the entry from metadata already fetched (with `lstat`).
pub fn entry_from_metadata(
    path: &Path,
    meta: &Metadata,
    owners: &mut OwnerNames,
) -> StreamFileEntry {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let ft = meta.file_type();
    let (kind, symlink_target) = if ft.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        (StreamFileType::StreamSymlink, target)
    } else if ft.is_dir() {
        (StreamFileType::StreamDirectory, String::new())
    } else {
        (StreamFileType::StreamFile, String::new())
    };
    let is_file = kind == StreamFileType::StreamFile;
    let mime_type = if is_file {
        mime::guess(&name).to_owned()
    } else {
        String::new()
    };
    let viewer_type = if is_file {
        mime::viewer_for(&mime_type)
    } else {
        ViewerType::ViewerUnknown
    };
    let modified_at = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        });
    StreamFileEntry {
        name: name.clone(),
        path: path.display().to_string(),
        r#type: kind as i32,
        size: meta.len() as i64,
        permissions: permission_string(meta.permissions().mode()),
        owner: owners.name(meta.uid()),
        modified_at,
        is_hidden: name.starts_with('.'),
        is_readable: access(path, AccessFlags::R_OK).is_ok(),
        is_writable: access(path, AccessFlags::W_OK).is_ok(),
        mime_type,
        symlink_target,
        is_system: false,
        viewer_type: viewer_type as i32,
        load_method: if is_file {
            LoadMethod::LoadRpc as i32
        } else {
            LoadMethod::LoadUnspecified as i32
        },
    }
}

/// `rwxr-xr-x` for the low nine mode bits.
pub fn permission_string(mode: u32) -> String {
    const FLAGS: [(u32, char); 9] = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    FLAGS
        .iter()
        .map(|&(bit, c)| if mode & bit != 0 { c } else { '-' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_strings() {
        assert_eq!(permission_string(0o755), "rwxr-xr-x");
        assert_eq!(permission_string(0o100644), "rw-r--r--");
        assert_eq!(permission_string(0), "---------");
    }
}
