//! Errors of file operations, as the `error_code` / `error_message` /
//! `suggestions` of a `FileOperationResult`.

use std::{io, path::Path};

/// A failed file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// Machine-readable code, e.g. `NOT_FOUND`, `PERMISSION_DENIED`.
    pub code: &'static str,
    /// What went wrong, naming the path.
    pub message: String,
    /// What the caller can do about it.
    pub suggestions: Vec<String>,
    /// Whether the same request may succeed later.
    pub can_retry: bool,
}

impl FileError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            suggestions: Vec::new(),
            can_retry: false,
        }
    }

    pub fn suggest(mut self, s: impl Into<String>) -> Self {
        self.suggestions.push(s.into());
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("INVALID_ARGUMENT", message)
    }

    /// Maps an I/O error on `path` during `action` ("read", "list", …).
    pub fn io(action: &str, path: &Path, e: &io::Error) -> Self {
        use io::ErrorKind as K;
        let p = path.display();
        match e.kind() {
            K::NotFound => Self::new("NOT_FOUND", format!("cannot {action} {p}: no such file or directory"))
                .suggest("check the path; relative paths are resolved against the agent user's home directory"),
            K::PermissionDenied => Self::new(
                "PERMISSION_DENIED",
                format!("cannot {action} {p}: permission denied for the agent's user"),
            )
            .suggest("run the agent as a user with access, or change the file's permissions"),
            K::AlreadyExists => Self::new("ALREADY_EXISTS", format!("cannot {action} {p}: it already exists"))
                .suggest("pass overwrite=true to replace it, or pick another path"),
            K::IsADirectory => Self::new("IS_DIRECTORY", format!("cannot {action} {p}: it is a directory")),
            K::NotADirectory => Self::new(
                "NOT_A_DIRECTORY",
                format!("cannot {action} {p}: a component of the path is not a directory"),
            ),
            K::DirectoryNotEmpty => {
                Self::new("DIRECTORY_NOT_EMPTY", format!("cannot {action} {p}: the directory is not empty"))
                    .suggest("pass recursive=true to delete it with its contents")
            }
            K::StorageFull | K::QuotaExceeded => {
                Self::new("NO_SPACE", format!("cannot {action} {p}: no space left on device")).suggest("free space on the machine, or write somewhere with room")
            }
            K::ReadOnlyFilesystem => {
                Self::new("READ_ONLY", format!("cannot {action} {p}: the file system is read-only"))
            }
            K::CrossesDevices => Self::new("CROSS_DEVICE", format!("cannot {action} {p}: crosses file systems")),
            K::Interrupted | K::WouldBlock | K::TimedOut | K::ResourceBusy => {
                let mut err = Self::new("IO_ERROR", format!("cannot {action} {p}: {e}"));
                err.can_retry = true;
                err
            }
            _ => Self::new("IO_ERROR", format!("cannot {action} {p}: {e}")),
        }
    }
}

/// Result of one file operation.
pub type FileResult<T> = Result<T, FileError>;
