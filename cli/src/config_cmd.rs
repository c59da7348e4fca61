//! `cmdop config show`: the client settings every command would use here
//! — server, API key (masked), CA, default host, time limit — and where
//! each came from (flag or environment, the profile, the default).

use clap::{Args, Subcommand};

use crate::connect::{ConnectArgs, Source};

#[derive(Args)]
#[command(after_long_help = PROFILES)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective client settings, secrets masked.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// One JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// The format of the config file, for `cmdop config --help`.
const PROFILES: &str = "\
The config file is ~/.config/cmdop/config.toml ($XDG_CONFIG_HOME/cmdop/config.toml,
or the file CMDOP_CONFIG names). It holds profiles; --profile NAME (or CMDOP_PROFILE)
picks one, else `default` does. Flags and environment variables win over the profile.

  default = \"dev\"

  [profiles.dev]
  server = \"127.0.0.1:50051\"             # or a list: [\"https://cp-1:50051\", \"https://cp-2:50051\"]
  api_key_file = \"~/.config/cmdop/dev.key\" # or api_key = \"cmdop_…\" (chmod 600 the file),
                                         # or api_key_command = \"pass show cmdop/dev\"
  ca_cert = \"/etc/cmdop/ca.pem\"          # for a server with a private CA
  host = \"web-1\"                         # when no -H, --machine-id or -l is given
  timeout_secs = 30                      # each call to the control plane";

/// A key shown without its secret part: its first characters (the
/// `cmdop_` prefix and a few more identify it in `cmdop admin keys`).
fn mask(key: &str) -> String {
    let shown: String = key.chars().take(10).collect();
    format!("{shown}… ({} characters)", key.chars().count())
}

fn source(s: &Source, profile: &str) -> String {
    match s {
        Source::Given => "flag or environment".to_string(),
        Source::Profile => profile.to_string(),
        Source::Default => "default".to_string(),
    }
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let ConfigCommand::Show(args) = args.command;
    let e = args.connect.effective()?;
    let profile = e
        .profile
        .as_ref()
        .map_or_else(|| "none".to_string(), |p| p.describe());
    let servers = if e.servers.0.is_empty() {
        "the hosted CMDOP service".to_string()
    } else {
        e.servers.0.join(",")
    };
    let key = e.api_key.0.as_deref().map(mask);
    let ca = e.ca_cert.0.as_ref().map(|p| p.display().to_string());
    if args.json {
        let json = serde_json::json!({
            "profile": e.profile.as_ref().map(|p| p.name.clone()),
            "config_file": crate::profile::path().map(|p| p.display().to_string()),
            "server": e.servers.0,
            "server_source": source(&e.servers.1, "profile"),
            "api_key": key,
            "api_key_source": source(&e.api_key.1, "profile"),
            "ca_cert": ca,
            "ca_cert_source": source(&e.ca_cert.1, "profile"),
            "host": e.host,
            "timeout_secs": e.timeout_secs.0,
            "timeout_secs_source": source(&e.timeout_secs.1, "profile"),
        });
        println!("{json}");
        return Ok(());
    }
    let p = e.profile.as_ref().map_or("profile", |p| p.name.as_str());
    let p = format!("profile {p}");
    let file =
        crate::profile::path().map_or_else(|| "none".to_string(), |f| f.display().to_string());
    println!("{:<14} {file}", "config file");
    println!("{:<14} {profile}", "profile");
    println!(
        "{:<14} {servers:<40} # {}",
        "server",
        source(&e.servers.1, &p)
    );
    println!(
        "{:<14} {:<40} # {}",
        "api_key",
        key.unwrap_or_else(|| "none".to_string()),
        source(&e.api_key.1, &p)
    );
    println!(
        "{:<14} {:<40} # {}",
        "ca_cert",
        ca.unwrap_or_else(|| "none (the system's roots)".to_string()),
        source(&e.ca_cert.1, &p)
    );
    println!(
        "{:<14} {:<40} # {}",
        "host",
        e.host.clone().unwrap_or_else(|| "none".to_string()),
        if e.host.is_some() {
            p.as_str()
        } else {
            "default"
        }
    );
    println!(
        "{:<14} {:<40} # {}",
        "timeout_secs",
        e.timeout_secs.0,
        source(&e.timeout_secs.1, &p)
    );
    Ok(())
}
