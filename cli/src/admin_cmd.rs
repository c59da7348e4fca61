//! `cmdop admin`: offline administration against the control plane's state.
//! Safe to run while the server is up (SQLite in WAL mode).

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use cmdop_controlplane::store::{Store, Workspace};

use crate::audit_cmd as audit;

#[derive(Args)]
pub struct AdminArgs {
    /// The control plane's data directory.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// The control plane's PostgreSQL database instead of a data directory
    /// (postgres://USER:PASSWORD@HOST:PORT/DATABASE). Other local users can
    /// read a command line: give a URL with a password through
    /// CMDOP_DATABASE_URL or --database-url-file instead.
    #[arg(
        long,
        global = true,
        env = "CMDOP_DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "data_dir"
    )]
    pub database: Option<String>,
    /// Read the --database URL from the first line of this file (mode 0600).
    #[arg(
        long,
        global = true,
        env = "CMDOP_DATABASE_URL_FILE",
        hide_env_values = true,
        conflicts_with = "data_dir"
    )]
    pub database_url_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create a workspace.
    CreateWorkspace { name: String },
    /// Create an API key for a workspace; it is printed once, keep it.
    /// Without --allow and --machines the key may do everything in the
    /// workspace; with them it is limited for good (a scope is never
    /// widened: create another key).
    CreateKey {
        #[arg(long)]
        workspace: String,
        /// The key's name, shown in listings, refusals and the audit trail.
        #[arg(long, visible_alias = "label", default_value = "")]
        name: String,
        /// The operations it may use, comma-separated: exec, shell,
        /// files:read, files:write, sessions:list, machines:list (default:
        /// all).
        #[arg(long, value_name = "OPS")]
        allow: Option<String>,
        /// The machines it may reach and see: a label selector over admin
        /// labels (`cmdop admin label`), e.g. 'env=staging' or
        /// 'env in (staging,dev),!legacy' (default: every machine). Labels
        /// a machine declares itself never count.
        #[arg(long, value_name = "SELECTOR")]
        machines: Option<String>,
        /// How long it works: a number with s, m, h or d (e.g. 30d);
        /// default: until revoked.
        #[arg(long, value_parser = crate::lifetime::parse, value_name = "LIFETIME")]
        expires: Option<Duration>,
    },
    /// List a workspace's API keys (never the keys themselves): prefix,
    /// name, scope, created, expiry, last use, revoked.
    Keys {
        #[arg(long)]
        workspace: String,
        /// One JSON object per key instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key: its listed prefix, or `-` to read the key itself
    /// from stdin (a key on the command line is visible to other users).
    RevokeKey { key: String },
    /// Create a one-time token that enrolls one agent into a workspace.
    EnrollToken {
        #[arg(long)]
        workspace: String,
        /// How long the token works: a number with s, m, h or d (e.g. 30m, 7d).
        #[arg(long, default_value = "24h", value_parser = crate::lifetime::parse)]
        ttl: Duration,
    },
    /// Revoke an unused enrollment token (or, with --workspace and --all,
    /// every unused token of a workspace).
    RevokeEnrollToken {
        /// The token as printed by `enroll-token`, or `-` to read it from
        /// stdin (a token on the command line is visible to other users).
        #[arg(required_unless_present = "all")]
        token: Option<String>,
        #[arg(long, requires = "all")]
        workspace: Option<String>,
        /// Revoke all unused tokens of --workspace (when a token was lost).
        #[arg(long, requires = "workspace", conflicts_with = "token")]
        all: bool,
    },
    /// Revoke a machine (id from `cmdop admin machines`): its agent secret
    /// stops working, a running server closes its connection within about
    /// a second, and it leaves the machine list. Enroll it again to re-add it.
    RevokeMachine { machine_id: String },
    /// Set admin labels on a machine (KEY=VALUE …) and remove some
    /// (--remove KEY). Admin labels win over the labels the machine's agent
    /// declares, and only they may grant access (see the README's security
    /// model). Prints the machine's admin labels after the change.
    Label {
        /// The machine: its id (mach_…) or its hostname.
        machine: String,
        /// Labels to set.
        #[arg(value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Keys to remove (repeatable).
        #[arg(long, value_name = "KEY")]
        remove: Vec<String>,
        /// The machine's workspace, when its hostname is used in several.
        #[arg(long)]
        workspace: Option<String>,
    },
    /// List the machines enrolled in a workspace.
    Machines {
        #[arg(long)]
        workspace: String,
    },
    /// The audit trail: who did what where, with what outcome (a table,
    /// --json lines, --follow); `audit verify` checks its hash chains.
    Audit(crate::audit_cmd::AuditArgs),
}

fn workspace(store: &Store, name: &str) -> anyhow::Result<Workspace> {
    store.workspace_by_name(name)?.with_context(|| {
        format!("no workspace named '{name}'; create it with `cmdop admin create-workspace {name}`")
    })
}

pub fn run(args: AdminArgs) -> anyhow::Result<std::process::ExitCode> {
    let database =
        crate::secret_flags::resolve(&args.database, &args.database_url_file, "database-url-file")?;
    let store = match &database {
        Some(url) => Store::connect(url)?,
        None => {
            let dir = args
                .data_dir
                .clone()
                .unwrap_or_else(crate::data_dir::default_data_dir);
            Store::open(&dir)
                .with_context(|| format!("cannot open control-plane state in {}", dir.display()))?
        }
    };
    match args.command {
        AdminCommand::CreateWorkspace { name } => {
            let ws = store.create_workspace(&name)?;
            println!("{}\t{}", ws.id, ws.name);
        }
        AdminCommand::CreateKey {
            workspace: ws_name,
            name,
            allow,
            machines,
            expires,
        } => {
            let ws = workspace(&store, &ws_name)?;
            let new = crate::keys_cmd::new_key(name, allow, machines, expires)?;
            let detail = serde_json::json!({
                "name": new.label,
                "allow": new.allow.map(|a| a.to_string()),
                "machines": new.machines,
                "expires_unix_ms": new.expires_ms,
            });
            let key = audited(&store, &ws.id, "key.create", ("", ""), detail, || {
                store.create_key(&ws.id, &new)
            })?;
            println!("{key}");
        }
        AdminCommand::Keys {
            workspace: ws_name,
            json,
        } => {
            let ws = workspace(&store, &ws_name)?;
            crate::keys_cmd::print_keys(&store.list_keys(&ws.id)?, json)?;
        }
        AdminCommand::RevokeKey { key } => {
            let key = crate::secret_flags::positional_secret(
                &key,
                "API key",
                cmdop_controlplane::store::api_key_prefix(&key).len(),
                "pass its first 12 characters instead",
            )?;
            let not_found = || {
                anyhow::anyhow!(
                    "no unrevoked API key matches '{}…'; check the key (or its first 12 characters)",
                    cmdop_controlplane::store::api_key_prefix(&key)
                )
            };
            let (ws_id, name, prefix) = store.key_owner(&key)?.ok_or_else(not_found)?;
            let detail = serde_json::json!({ "name": name, "prefix": prefix });
            audited(&store, &ws_id, "key.revoke", ("", ""), detail, || {
                if store.revoke_api_key(&key)? {
                    Ok(())
                } else {
                    Err(not_found())
                }
            })?;
            await_servers(&store)?;
            println!("revoked");
        }
        AdminCommand::EnrollToken {
            workspace: name,
            ttl,
        } => {
            let ws = workspace(&store, &name)?;
            let detail = serde_json::json!({ "ttl_s": ttl.as_secs() });
            let token = audited(
                &store,
                &ws.id,
                "enroll_token.create",
                ("", ""),
                detail,
                || store.create_enrollment_token_for(&ws.id, ttl),
            )?;
            println!("{token}");
        }
        AdminCommand::RevokeEnrollToken {
            token,
            workspace: name,
            all,
        } => match (token, name) {
            (_, Some(name)) if all => {
                let ws = workspace(&store, &name)?;
                let detail = serde_json::json!({ "all": true });
                let n = audited(
                    &store,
                    &ws.id,
                    "enroll_token.revoke",
                    ("", ""),
                    detail,
                    || store.revoke_all_enrollment_tokens(&ws.id),
                )?;
                if n > 0 {
                    await_servers(&store)?;
                }
                println!("revoked {n}");
            }
            (Some(token), _) => {
                let token = crate::secret_flags::positional_secret(
                    &token,
                    "enrollment token",
                    0,
                    "revoke all unused tokens with --workspace NAME --all",
                )?;
                let not_found = || {
                    anyhow::anyhow!("no unused enrollment token matches; it may be used, revoked or mistyped (pass the whole token, or --workspace NAME --all)")
                };
                let ws_id = store
                    .enrollment_token_owner(&token)?
                    .ok_or_else(not_found)?;
                let detail = serde_json::json!({ "all": false });
                audited(
                    &store,
                    &ws_id,
                    "enroll_token.revoke",
                    ("", ""),
                    detail,
                    || {
                        if store.revoke_enrollment_token(&token)? {
                            Ok(())
                        } else {
                            Err(not_found())
                        }
                    },
                )?;
                await_servers(&store)?;
                println!("revoked");
            }
            _ => bail!("pass the token, or --workspace NAME --all"),
        },
        AdminCommand::Label {
            machine,
            set,
            remove,
            workspace: in_workspace,
        } => {
            let set = crate::labels::parse_assignments(&set, "label")?;
            for key in &remove {
                crate::labels::check_key(key, "--remove")?;
            }
            if set.is_empty() && remove.is_empty() {
                bail!("name labels to set (KEY=VALUE …) or to remove (--remove KEY)");
            }
            let found: Vec<_> = store
                .find_machines(&machine)?
                .into_iter()
                .filter(|(_, _, ws)| in_workspace.as_ref().is_none_or(|w| w == ws))
                .collect();
            let (machine_id, hostname, ws_name) = match found.as_slice() {
                [(id, host, ws)] => (id.clone(), host.clone(), ws.clone()),
                [] => bail!(
                    "no machine '{machine}'{}; `cmdop admin machines --workspace NAME` lists them",
                    in_workspace.as_ref().map(|w| format!(" in workspace {w}")).unwrap_or_default()
                ),
                several => bail!(
                    "'{machine}' names {} machines: {}; pass the machine id (mach_…) or --workspace",
                    several.len(),
                    several
                        .iter()
                        .map(|(id, host, ws)| format!("{host} ({id}, workspace {ws})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let ws = workspace(&store, &ws_name)?;
            let detail = serde_json::json!({ "set": set, "remove": remove });
            let machine = (machine_id.as_str(), hostname.as_str());
            let now = audited(&store, &ws.id, "label.change", machine, detail, || {
                store
                    .change_admin_labels(&machine_id, &set, &remove)?
                    .with_context(|| format!("machine {machine_id} was revoked meanwhile"))
            })?;
            // What scoped keys reach follows admin labels: servers apply a
            // change like a revocation.
            await_servers(&store)?;
            if now.is_empty() {
                println!("{machine_id}: no admin labels");
            }
            for (k, v) in now {
                println!("{machine_id}\t{k}={v}");
            }
        }
        AdminCommand::RevokeMachine { machine_id } => {
            let not_found = || {
                anyhow::anyhow!("no enrolled machine has id '{machine_id}'; list them with `cmdop admin machines --workspace NAME`")
            };
            let found = store.find_machines(&machine_id)?;
            let (_, hostname, ws_name) = found
                .iter()
                .find(|(id, _, _)| *id == machine_id)
                .ok_or_else(not_found)?;
            let ws = workspace(&store, ws_name)?;
            let machine = (machine_id.as_str(), hostname.as_str());
            audited(
                &store,
                &ws.id,
                "machine.revoke",
                machine,
                serde_json::json!({}),
                || {
                    if store.revoke_machine(&machine_id)? {
                        Ok(())
                    } else {
                        Err(not_found())
                    }
                },
            )?;
            await_servers(&store)?;
            println!("revoked");
        }
        AdminCommand::Machines { workspace: name } => {
            let ws = workspace(&store, &name)?;
            for m in store.list_machines(&ws.id)? {
                println!("{}\t{}\t{}", m.machine_id, m.hostname, m.last_seen_unix_ms);
            }
        }
        AdminCommand::Audit(audit_args) => return audit::run(&store, audit_args),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Waits until every running server has applied the revocation just
/// committed (its credential cache no longer trusts anything from before
/// it), or that server's cache lease ran out, and says so on stderr. Gives
/// up after twice the lease, with a warning naming the servers still
/// trusting older state.
fn await_servers(store: &Store) -> anyhow::Result<()> {
    let lease = Duration::from_millis(cmdop_proto::limits::CREDENTIAL_CACHE_LEASE_MS);
    let max = 2 * lease + cmdop_controlplane::store::ACK_CLOCK_MARGIN;
    let generation = store.revocation_generation()?;
    let report = store.wait_for_revocation_acks(generation, max)?;
    if let Some(line) = describe_wait(&report) {
        eprintln!("{line}");
    }
    Ok(())
}

/// A line about a revocation's wait for the servers; `None` when no
/// running server caches credentials (nothing was waited for).
fn describe_wait(r: &cmdop_controlplane::store::AckReport) -> Option<String> {
    let waited = format!("{:.3} s", r.waited.as_secs_f64());
    if r.acknowledged.is_empty() && r.lapsed.is_empty() && r.pending.is_empty() {
        return None;
    }
    let mut line = if r.acknowledged.is_empty() {
        format!("waited {waited}; no server acknowledged")
    } else {
        format!(
            "applied by {} server(s) in {waited}: {}",
            r.acknowledged.len(),
            r.acknowledged.join(", ")
        )
    };
    if !r.lapsed.is_empty() {
        line.push_str(&format!(
            "; not answering, their cache lease ran out (they check credentials in the database \
             again): {}",
            r.lapsed.join(", ")
        ));
    }
    if !r.pending.is_empty() {
        line.push_str(&format!(
            "\nwarning: gave up after {waited}: server(s) {} still trust what they cached before \
             this revocation; check their logs and clocks (servers' clocks must agree within a \
             second)",
            r.pending.join(", ")
        ));
    }
    Some(line)
}

/// Runs admin action `f` on the record: the audit record is written first
/// (no record, no action), its outcome after.
fn audited<T>(
    store: &Store,
    workspace_id: &str,
    action: &str,
    machine: (&str, &str),
    detail: serde_json::Value,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let record = audit::begin_admin(store, workspace_id, action, machine, detail)?;
    let result = f();
    audit::finish_admin(
        store,
        record,
        &result
            .as_ref()
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    );
    result
}
