//! How every client command reaches the control plane: `--server`,
//! `--api-key` (or its file), `--ca-cert`, `--timeout-secs`, each also from
//! the profile of the config file ([`crate::profile`]) when neither a flag
//! nor the environment gives it.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use cmdop::client::{Client, ClientOptions, Credentials};

use crate::profile::Profile;

/// How to reach the control plane; shared by every client command.
#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// Control plane: http://host:port (plaintext), https://host:port (TLS),
    /// or host:port (plaintext on loopback, TLS elsewhere). Default: the
    /// hosted CMDOP service. Several (replicas of one cluster):
    /// comma-separated or the flag repeated; the first that answers is used.
    #[arg(
        long,
        env = "CMDOP_SERVER",
        hide_env_values = true,
        value_delimiter = ',',
        num_args = 1
    )]
    pub server: Vec<String>,
    /// API key (any non-empty key; keys issued by `cmdop admin` start with
    /// cmdop_). Other local users can read a command line: prefer
    /// CMDOP_API_KEY or --api-key-file.
    #[arg(long, env = "CMDOP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the API key from the first line of this file (mode 0600).
    #[arg(long, env = "CMDOP_API_KEY_FILE", hide_env_values = true)]
    pub api_key_file: Option<PathBuf>,
    /// PEM CA certificate to trust, for servers with a private CA.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Time limit, in seconds, of each call to the control plane
    /// (connecting, lookups, listings); not of a remote command, which
    /// `exec --timeout` limits. Default: 30.
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Profile of the config file (~/.config/cmdop/config.toml, or
    /// CMDOP_CONFIG) to take the server, key, CA and default host from;
    /// default: the file's `default`. Flags and environment win over it.
    #[arg(long, env = "CMDOP_PROFILE", hide_env_values = true)]
    pub profile: Option<String>,
    /// The profile, read once.
    #[arg(skip)]
    loaded: std::sync::OnceLock<Option<Profile>>,
}

/// The time limit of each call without --timeout-secs or a profile's.
const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Where an effective setting came from, for `cmdop config show`.
pub enum Source {
    /// A flag or its environment variable.
    Given,
    Profile,
    Default,
}

/// The effective client settings, for `cmdop config show`.
pub struct Effective {
    pub profile: Option<Profile>,
    pub servers: (Vec<String>, Source),
    /// The key, and where it came from.
    pub api_key: (Option<String>, Source),
    pub ca_cert: (Option<PathBuf>, Source),
    pub host: Option<String>,
    pub timeout_secs: (u64, Source),
}

impl ConnectArgs {
    /// The profile in use, if any (read once).
    pub fn profile(&self) -> anyhow::Result<Option<&Profile>> {
        if let Some(loaded) = self.loaded.get() {
            return Ok(loaded.as_ref());
        }
        let profile = crate::profile::load(self.profile.as_deref())?;
        Ok(self.loaded.get_or_init(|| profile).as_ref())
    }

    /// The profile's default host, for commands given no -H, --machine-id
    /// or selector.
    pub fn profile_host(&self) -> anyhow::Result<Option<String>> {
        Ok(self.profile()?.and_then(|p| p.host.clone()))
    }

    /// Every setting as it will be used, with where it came from.
    pub fn effective(&self) -> anyhow::Result<Effective> {
        let profile = self.profile()?.cloned();
        let given: Vec<String> = self
            .server
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let servers = match (&profile, given.is_empty()) {
            (_, false) => (given, Source::Given),
            (Some(p), true) if !p.servers.is_empty() => (p.servers.clone(), Source::Profile),
            _ => (Vec::new(), Source::Default),
        };
        let given_key =
            crate::secret_flags::resolve(&self.api_key, &self.api_key_file, "api-key-file")?
                .filter(|k| !k.is_empty());
        let api_key = match (given_key, &profile) {
            (Some(k), _) => (Some(k), Source::Given),
            (None, Some(p)) if p.key.is_some() => (p.api_key()?, Source::Profile),
            _ => (None, Source::Default),
        };
        let ca_cert = match (
            &self.ca_cert,
            profile.as_ref().and_then(|p| p.ca_cert.clone()),
        ) {
            (Some(ca), _) => (Some(ca.clone()), Source::Given),
            (None, Some(ca)) => (Some(ca), Source::Profile),
            _ => (None, Source::Default),
        };
        let timeout_secs = match (
            self.timeout_secs,
            profile.as_ref().and_then(|p| p.timeout_secs),
        ) {
            (Some(t), _) => (t, Source::Given),
            (None, Some(t)) => (t, Source::Profile),
            _ => (DEFAULT_TIMEOUT_SECS, Source::Default),
        };
        let host = profile.as_ref().and_then(|p| p.host.clone());
        Ok(Effective {
            profile,
            servers,
            api_key,
            ca_cert,
            host,
            timeout_secs,
        })
    }

    fn options(&self) -> anyhow::Result<ClientOptions> {
        let settings = self.effective()?;
        let key = settings.api_key.0.context(
            "no API key: set CMDOP_API_KEY, pass --api-key-file FILE, or give a profile an api_key_file \
             (create a key with `cmdop admin create-key`)",
        )?;
        let mut opts = ClientOptions::remote(Credentials::ApiKey(key));
        let servers: Vec<&str> = settings.servers.0.iter().map(|s| s.as_str()).collect();
        if !servers.is_empty() {
            opts.tls = cmdop::client::tls_by_default(servers.iter().copied()).map_err(|e| match e {
                cmdop::client::TlsRuleError::UnknownScheme(scheme) => anyhow::anyhow!(
                    "unknown scheme '{scheme}' in --server; use http:// or https://"
                ),
                cmdop::client::TlsRuleError::Mixed => anyhow::anyhow!(
                    "the servers of --server (CMDOP_SERVER) mix TLS and plaintext: give every one the same scheme (https:// or http://)"
                ),
            })?;
            if servers.len() == 1 {
                opts.server = servers[0].to_string();
            } else {
                opts.servers = servers.iter().map(|s| s.to_string()).collect();
            }
        }
        if let Some(ca) = &settings.ca_cert.0 {
            opts.ca_pem =
                Some(std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?);
        }
        opts.timeout = Duration::from_secs(settings.timeout_secs.0.max(1));
        opts.auto_reconnect = false;
        // -v: the library's request/response summaries too.
        opts.debug = crate::logging::verbosity() >= 1;
        Ok(opts)
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.options()?).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Connect {
        #[command(flatten)]
        c: ConnectArgs,
    }

    fn options(args: &[&str]) -> anyhow::Result<ClientOptions> {
        use clap::Parser;
        let mut argv = vec!["t", "--api-key", "k"];
        argv.extend_from_slice(args);
        Connect::try_parse_from(argv)?.c.options()
    }

    #[test]
    fn several_servers_become_the_client_list() {
        let o = options(&["--server", "127.0.0.1:1,127.0.0.1:2", "--server", "[::1]:3"]).unwrap();
        assert_eq!(o.servers, vec!["127.0.0.1:1", "127.0.0.1:2", "[::1]:3"]);
        assert!(!o.tls, "loopback without a scheme is plaintext");
        let o = options(&["--server", "https://a:1,https://b:2"]).unwrap();
        assert!(o.tls);
        assert_eq!(o.servers.len(), 2);
        // One server keeps the single-server field.
        let o = options(&["--server", "127.0.0.1:1"]).unwrap();
        assert!(o.servers.is_empty());
        assert_eq!(o.server, "127.0.0.1:1");
        let e = options(&["--server", "https://a:1,http://b:2"]).unwrap_err();
        assert!(e.to_string().contains("mix TLS and plaintext"), "{e}");
    }
}
