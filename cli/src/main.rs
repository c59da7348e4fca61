//! `cmdop`: one binary for the control plane (`server`), the machine agent
//! (`agent`), administration (`admin`), a one-command local setup (`dev`),
//! and client commands built on the same core as libcmdop.

mod admin_cmd;
mod agent_cmd;
mod data_dir;
mod dev_cmd;
mod logging;
mod server_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cmdop", version, about = "Run commands on, and move files to and from, machines anywhere")]
struct Cli {
    /// Log level filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, global = true, default_value = "info", env = "CMDOP_LOG")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (gRPC; plaintext on loopback by default).
    Server(server_cmd::ServerArgs),
    /// Run the agent for this machine; it dials the control plane.
    Agent(agent_cmd::AgentArgs),
    /// Manage workspaces, API keys, enrollment tokens and machines.
    Admin(admin_cmd::AdminArgs),
    /// Start a throw-away control plane and an agent for this machine.
    Dev(dev_cmd::DevArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log_level);
    let result = match cli.command {
        Command::Admin(args) => admin_cmd::run(args),
        other => runtime().and_then(|rt| {
            rt.block_on(async move {
                match other {
                    Command::Server(args) => server_cmd::run(args).await,
                    Command::Agent(args) => agent_cmd::run(args).await,
                    Command::Dev(args) => dev_cmd::run(args).await,
                    Command::Admin(_) => unreachable!("handled above"),
                }
            })
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cmdop: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
