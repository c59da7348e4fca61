//! Path resolution for file operations: `~` and `~/…` expand to the agent's
//! home directory, relative paths resolve against it.

use std::path::{Path, PathBuf};

/// Resolves a path from a request. An empty path means the home directory.
pub fn resolve(raw: &str, home: &Path) -> PathBuf {
    if raw.is_empty() || raw == "~" {
        return home.to_path_buf();
    }
    if let Some(rest) = raw.strip_prefix("~/") {
        return home.join(rest);
    }
    let p = Path::new(raw);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        home.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_home_and_relative_paths() {
        let home = Path::new("/home/u");
        assert_eq!(resolve("", home), PathBuf::from("/home/u"));
        assert_eq!(resolve("~", home), PathBuf::from("/home/u"));
        assert_eq!(resolve("~/a/b", home), PathBuf::from("/home/u/a/b"));
        assert_eq!(resolve("a/b", home), PathBuf::from("/home/u/a/b"));
        assert_eq!(resolve("/etc/hosts", home), PathBuf::from("/etc/hosts"));
        // `~user` is not expanded; it is a relative name.
        assert_eq!(resolve("~x", home), PathBuf::from("/home/u/~x"));
    }
}
