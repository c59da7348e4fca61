//! Facts about this machine reported in `RegisterRequest`.

use std::path::{Path, PathBuf};

/// Host facts gathered once at startup.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    pub hostname: String,
    /// "linux", "darwin", … (the official protocol's spelling).
    pub platform: String,
    pub architecture: String,
    pub username: String,
    pub uid: u32,
    pub home_dir: PathBuf,
    pub os_version: String,
    pub kernel_version: String,
    pub cpu_count: u32,
    pub total_ram: u64,
    /// Login shells listed in /etc/shells that exist here.
    pub supported_shells: Vec<String>,
}

impl HostInfo {
    /// Gathers the facts; `hostname_override` replaces the real hostname.
    pub fn gather(hostname_override: Option<&str>) -> Self {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten();
        let home_dir = std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| user.as_ref().map(|u| u.dir.clone()))
            .unwrap_or_else(|| PathBuf::from("/"));
        let username = user
            .map(|u| u.name)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default();
        let hostname = match hostname_override.filter(|h| !h.is_empty()) {
            Some(h) => h.to_owned(),
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".to_owned()),
        };
        let uname = nix::sys::utsname::uname().ok();
        Self {
            hostname,
            platform: platform_name().to_owned(),
            architecture: std::env::consts::ARCH.to_owned(),
            username,
            uid: uid.as_raw(),
            home_dir,
            os_version: os_version(),
            kernel_version: uname
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            cpu_count: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            total_ram: total_ram(),
            supported_shells: supported_shells(),
        }
    }

    /// Whether the agent runs as root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The platform names the official protocol uses.
pub fn platform_name() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

fn os_version() -> String {
    if let Ok(text) = std::fs::read_to_string("/etc/os-release") {
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")) {
            return v.trim_matches('"').to_owned();
        }
    }
    std::env::consts::OS.to_owned()
}

fn total_ram() -> u64 {
    // Linux only; elsewhere the field stays 0 (unknown).
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

fn supported_shells() -> Vec<String> {
    let mut shells: Vec<String> = std::fs::read_to_string("/etc/shells")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/') && Path::new(l).exists())
        .map(str::to_owned)
        .collect();
    shells.dedup();
    if shells.is_empty() {
        shells.push("/bin/sh".to_owned());
    }
    shells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_plausible_facts() {
        let info = HostInfo::gather(Some("test-host"));
        assert_eq!(info.hostname, "test-host");
        assert!(!info.platform.is_empty());
        assert!(info.home_dir.is_absolute());
        assert!(info.cpu_count >= 1);
        assert!(!info.supported_shells.is_empty());
    }
}
