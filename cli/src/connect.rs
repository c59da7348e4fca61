//! How every client command reaches the control plane: `--server`,
//! `--api-key` (or its file), `--ca-cert`, `--timeout-secs`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use cmdop::client::{Client, ClientOptions, Credentials};

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
    /// `exec --timeout` limits.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

impl ConnectArgs {
    fn options(&self) -> anyhow::Result<ClientOptions> {
        let key = crate::secret_flags::resolve(&self.api_key, &self.api_key_file, "api-key-file")?
            .filter(|k| !k.is_empty())
            .context("no API key: set CMDOP_API_KEY or pass --api-key-file FILE (create one with `cmdop admin create-key`)")?;
        let mut opts = ClientOptions::remote(Credentials::ApiKey(key));
        let servers: Vec<&str> = self
            .server
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        if !servers.is_empty() {
            let mut tls = None;
            for server in &servers {
                let this = match server.split_once("://") {
                    Some(("https", _)) => true,
                    Some(("http", _)) => false,
                    Some((scheme, _)) => {
                        anyhow::bail!(
                            "unknown scheme '{scheme}' in --server; use http:// or https://"
                        )
                    }
                    None => !is_loopback(server),
                };
                if tls.is_some_and(|t| t != this) {
                    anyhow::bail!(
                        "the servers of --server (CMDOP_SERVER) mix TLS and plaintext: give every one the same scheme (https:// or http://)"
                    );
                }
                tls = Some(this);
            }
            opts.tls = tls.unwrap_or(true);
            if servers.len() == 1 {
                opts.server = servers[0].to_string();
            } else {
                opts.servers = servers.iter().map(|s| s.to_string()).collect();
            }
        }
        if let Some(ca) = &self.ca_cert {
            opts.ca_pem =
                Some(std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?);
        }
        opts.timeout = Duration::from_secs(self.timeout_secs.max(1));
        opts.auto_reconnect = false;
        // -v: the library's request/response summaries too.
        opts.debug = crate::logging::verbosity() >= 1;
        Ok(opts)
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.options()?).await?)
    }
}

fn is_loopback(host_port: &str) -> bool {
    let host = host_port
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(host_port);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
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
