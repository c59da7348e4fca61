//! Where the control plane and agent keep their state by default.

use std::path::PathBuf;

/// `$XDG_DATA_HOME/cmdop`, else `$HOME/.local/share/cmdop`, else `./cmdop-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("cmdop");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/cmdop");
    }
    PathBuf::from("cmdop-data")
}
