//! Client profiles: `~/.config/cmdop/config.toml` (or `$CMDOP_CONFIG`)
//! names the control planes a user works with, so that `cmdop exec` needs
//! no `--server` and no key on every line:
//!
//! ```toml
//! default = "dev"
//!
//! [profiles.dev]
//! server = "127.0.0.1:50051"          # or a list of replicas
//! api_key_file = "~/.config/cmdop/dev.key"
//! host = "web-1"                      # used when no -H, --machine-id or -l
//!
//! [profiles.prod]
//! server = ["https://cp-1:50051", "https://cp-2:50051"]
//! api_key_command = "pass show cmdop/prod"
//! ca_cert = "/etc/cmdop/ca.pem"
//! timeout_secs = 10
//! ```
//!
//! The profile is `--profile NAME` (or `CMDOP_PROFILE`), else the file's
//! `default`, else none. Flags and environment variables win over the
//! profile, which wins over the built-in defaults. Hand-rolled over the
//! `toml` crate (no serde derive in this crate) so that every error names
//! the key, the profile and the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The keys a profile may hold.
const KEYS: &[&str] = &[
    "server",
    "api_key",
    "api_key_file",
    "api_key_command",
    "ca_cert",
    "host",
    "timeout_secs",
];

/// The file: `$CMDOP_CONFIG`, else `$XDG_CONFIG_HOME/cmdop/config.toml`,
/// else `~/.config/cmdop/config.toml`; `None` without a home directory.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CMDOP_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(base.join("cmdop").join("config.toml"))
}

/// Where the API key of a profile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Key(String),
    File(PathBuf),
    Command(String),
}

/// One profile, read from the file.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub name: String,
    pub file: PathBuf,
    pub servers: Vec<String>,
    pub key: Option<KeySource>,
    pub ca_cert: Option<PathBuf>,
    pub host: Option<String>,
    pub timeout_secs: Option<u64>,
}

impl Profile {
    /// "profile NAME in FILE", for messages.
    pub fn describe(&self) -> String {
        format!("profile '{}' in {}", self.name, self.file.display())
    }

    /// The API key: read from its file or printed by its command.
    pub fn api_key(&self) -> anyhow::Result<Option<String>> {
        match &self.key {
            None => Ok(None),
            Some(KeySource::Key(k)) => Ok(Some(k.clone())),
            Some(KeySource::File(path)) => {
                crate::secret_flags::read_secret_file(path, "api-key-file")
                    .with_context(|| format!("api_key_file of {}", self.describe()))
                    .map(Some)
            }
            Some(KeySource::Command(cmd)) => {
                let out = std::process::Command::new("sh")
                    .args(["-c", cmd])
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .with_context(|| {
                        format!("cannot run api_key_command of {}", self.describe())
                    })?;
                if !out.status.success() {
                    bail!(
                        "api_key_command of {} failed ({}); run it by hand to see why: {cmd}",
                        self.describe(),
                        out.status
                    );
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let key = text.lines().next().unwrap_or("").trim().to_string();
                if key.is_empty() {
                    bail!(
                        "api_key_command of {} printed nothing; it must print the key on its first line",
                        self.describe()
                    );
                }
                Ok(Some(key))
            }
        }
    }
}

/// `~` at the start of a path in the file means the home directory.
fn expand(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The profile to use: `wanted` (`--profile` / `CMDOP_PROFILE`), else the
/// file's `default`; `None` when neither names one.
pub fn load(wanted: Option<&str>) -> anyhow::Result<Option<Profile>> {
    let Some(file) = path() else {
        if let Some(name) = wanted {
            bail!("--profile {name}: no config file (set CMDOP_CONFIG or HOME)");
        }
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(name) = wanted {
                bail!(
                    "--profile {name}: {} does not exist; create it with a [profiles.{name}] table \
                     (see `cmdop config --help`)",
                    file.display()
                );
            }
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    parse(&text, &file, wanted)
}

/// [`load`] on the text of `file`.
pub fn parse(text: &str, file: &Path, wanted: Option<&str>) -> anyhow::Result<Option<Profile>> {
    let shown = file.display();
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{shown} is not valid TOML"))?;
    for key in table.keys() {
        if key != "default" && key != "profiles" {
            bail!("unknown key `{key}` in {shown}: the file holds `default` and [profiles.NAME] tables");
        }
    }
    let default = match table.get("default") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.as_str()),
        Some(_) => bail!("`default` in {shown} must be a profile name in quotes"),
    };
    let profiles = match table.get("profiles") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("`profiles` in {shown} must be tables: [profiles.NAME]"),
    };
    let Some(name) = wanted.or(default) else {
        return Ok(None);
    };
    let known = || {
        let names: Vec<&str> = profiles.keys().map(String::as_str).collect();
        if names.is_empty() {
            "it has none".to_string()
        } else {
            format!("it has: {}", names.join(", "))
        }
    };
    let Some(entry) = profiles.get(name) else {
        let how = if wanted.is_some() {
            "--profile"
        } else {
            "its `default`"
        };
        bail!(
            "{how} names profile '{name}', which {shown} does not define ({})",
            known()
        );
    };
    let toml::Value::Table(entry) = entry else {
        bail!("profile '{name}' in {shown} must be a table: [profiles.{name}]");
    };
    let mut profile = Profile {
        name: name.to_string(),
        file: file.to_path_buf(),
        ..Profile::default()
    };
    let what = |key: &str| format!("`{key}` of profile '{name}' in {shown}");
    let string = |key: &str, v: &toml::Value| -> anyhow::Result<String> {
        match v {
            toml::Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            _ => bail!("{} must be a non-empty string", what(key)),
        }
    };
    let mut keys = Vec::new();
    for (key, value) in entry {
        match key.as_str() {
            "server" => {
                profile.servers = match value {
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|v| string(key, v))
                        .collect::<anyhow::Result<_>>()?,
                    v => vec![string(key, v)?],
                };
            }
            "api_key" => {
                keys.push(key.as_str());
                profile.key = Some(KeySource::Key(string(key, value)?));
            }
            "api_key_file" => {
                keys.push(key.as_str());
                profile.key = Some(KeySource::File(expand(&string(key, value)?)));
            }
            "api_key_command" => {
                keys.push(key.as_str());
                profile.key = Some(KeySource::Command(string(key, value)?));
            }
            "ca_cert" => profile.ca_cert = Some(expand(&string(key, value)?)),
            "host" => profile.host = Some(string(key, value)?),
            "timeout_secs" => match value {
                toml::Value::Integer(n) if *n > 0 => profile.timeout_secs = Some(*n as u64),
                _ => bail!("{} must be a whole number of seconds above 0", what(key)),
            },
            other => bail!(
                "unknown key `{other}` in profile '{name}' of {shown}; a profile holds: {}",
                KEYS.join(", ")
            ),
        }
    }
    if keys.len() > 1 {
        bail!(
            "profile '{name}' in {shown} gives its key {} ways ({}); keep one",
            keys.len(),
            keys.join(", ")
        );
    }
    if matches!(profile.key, Some(KeySource::Key(_))) {
        warn_if_readable(file);
    }
    Ok(Some(profile))
}

/// A file holding a key should be readable by its owner only.
fn warn_if_readable(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(file) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        eprintln!(
            "cmdop: warning: {} holds an api_key and can be read by other users (mode {mode:04o}); \
             run `chmod 600 {}`, or use api_key_file or api_key_command",
            file.display(),
            file.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str, wanted: Option<&str>) -> anyhow::Result<Option<Profile>> {
        parse(text, Path::new("config.toml"), wanted)
    }

    #[test]
    fn picks_the_wanted_or_the_default_profile() {
        let text = r#"
default = "dev"
[profiles.dev]
server = "127.0.0.1:1"
api_key_command = "echo k"
host = "web-1"
[profiles.prod]
server = ["https://a:1", "https://b:2"]
timeout_secs = 5
"#;
        let dev = parsed(text, None).unwrap().unwrap();
        assert_eq!(dev.name, "dev");
        assert_eq!(dev.servers, vec!["127.0.0.1:1"]);
        assert_eq!(dev.host.as_deref(), Some("web-1"));
        assert_eq!(dev.api_key().unwrap().as_deref(), Some("k"));
        let prod = parsed(text, Some("prod")).unwrap().unwrap();
        assert_eq!(prod.servers.len(), 2);
        assert_eq!(prod.timeout_secs, Some(5));
        assert!(prod.key.is_none());
        assert!(parsed("[profiles.a]\n", None).unwrap().is_none());
    }

    #[test]
    fn errors_name_the_key_and_the_profile() {
        let e = parsed("[profiles.a]\nservr = \"x\"\n", Some("a")).unwrap_err();
        assert!(
            e.to_string().contains("unknown key `servr` in profile 'a'"),
            "{e}"
        );
        let e = parsed("[profiles.a]\n", Some("b")).unwrap_err();
        assert!(e.to_string().contains("profile 'b'"), "{e}");
        assert!(e.to_string().contains("it has: a"), "{e}");
        let e = parsed(
            "[profiles.a]\napi_key = \"k\"\napi_key_file = \"f\"\n",
            Some("a"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("keep one"), "{e}");
        let e = parsed("[profiles.a]\ntimeout_secs = 0\n", Some("a")).unwrap_err();
        assert!(e.to_string().contains("timeout_secs"), "{e}");
        let e = parsed("defualt = \"a\"\n", None).unwrap_err();
        assert!(e.to_string().contains("unknown key `defualt`"), "{e}");
    }
}
