//! `cmdop admin`: offline administration against the control plane's state.
//! Safe to run while the server is up (SQLite in WAL mode).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use cmdop_controlplane::store::{Store, Workspace};

#[derive(Args)]
pub struct AdminArgs {
    /// The control plane's data directory.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create a workspace.
    CreateWorkspace { name: String },
    /// Create an API key for a workspace; it is printed once, keep it.
    CreateKey {
        #[arg(long)]
        workspace: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke an API key (the key itself or its listed prefix).
    RevokeKey { key: String },
    /// Create a one-time token that enrolls one agent into a workspace.
    EnrollToken {
        #[arg(long)]
        workspace: String,
    },
    /// List the machines enrolled in a workspace.
    Machines {
        #[arg(long)]
        workspace: String,
    },
}

fn workspace(store: &Store, name: &str) -> anyhow::Result<Workspace> {
    store.workspace_by_name(name)?.with_context(|| {
        format!("no workspace named '{name}'; create it with `cmdop admin create-workspace {name}`")
    })
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let dir = args
        .data_dir
        .unwrap_or_else(crate::data_dir::default_data_dir);
    let store = Store::open(&dir)
        .with_context(|| format!("cannot open control-plane state in {}", dir.display()))?;
    match args.command {
        AdminCommand::CreateWorkspace { name } => {
            let ws = store.create_workspace(&name)?;
            println!("{}\t{}", ws.id, ws.name);
        }
        AdminCommand::CreateKey {
            workspace: name,
            label,
        } => {
            let ws = workspace(&store, &name)?;
            println!("{}", store.create_api_key(&ws.id, &label)?);
        }
        AdminCommand::RevokeKey { key } => {
            if !store.revoke_api_key(&key)? {
                bail!("no API key matches '{key}'");
            }
            println!("revoked");
        }
        AdminCommand::EnrollToken { workspace: name } => {
            let ws = workspace(&store, &name)?;
            println!("{}", store.create_enrollment_token(&ws.id)?);
        }
        AdminCommand::Machines { workspace: name } => {
            let ws = workspace(&store, &name)?;
            for m in store.list_machines(&ws.id)? {
                println!("{}\t{}\t{}", m.machine_id, m.hostname, m.last_seen_unix_ms);
            }
        }
    }
    Ok(())
}
