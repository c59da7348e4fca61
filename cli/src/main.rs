//! `cmdop`: one binary for the control plane (`server`), the machine agent
//! (`agent`), administration (`admin`), a one-command local setup (`dev`),
//! and client commands built on the same core as libcmdop.

mod admin_cmd;
mod agent_cmd;
mod attach_cmd;
mod audit_cmd;
mod client_cmd;
mod config_cmd;
mod config_file;
mod connect;
mod cp_cmd;
mod data_dir;
mod dev_cluster;
mod dev_cmd;
mod docs_cmd;
mod fleet_cmd;
mod keys_cmd;
mod labels;
mod lifetime;
mod logging;
mod metrics_http;
mod profile;
mod readiness;
mod reload;
mod remote_run;
mod report;
mod secret_flags;
mod server_cmd;
mod shell_cmd;
mod table;
mod terminal;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cmdop",
    version,
    about = "Run commands on, and move files to and from, machines anywhere"
)]
struct Cli {
    /// Log level filter (error, warn, info, debug, trace, or a tracing
    /// filter). Default: info for server, agent and dev; warn otherwise.
    #[arg(long, global = true, env = "CMDOP_LOG", hide_env_values = true)]
    log_level: Option<String>,

    /// More log output: -v shows cmdop's own debug messages, -vv also the
    /// HTTP/2, gRPC and TLS internals. --log-level wins when given.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Log line format on stderr: text, or json (one object per line with
    /// timestamp, level, target and message).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,

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
    /// Run a command on a machine; exits with its exit status.
    #[command(after_help = remote_run::EXIT_STATUS, after_long_help = remote_run::EXIT_STATUS)]
    Exec(client_cmd::ExecArgs),
    /// List the workspace's sessions.
    Sessions(client_cmd::SessionsArgs),
    /// List the workspace's machines with labels, facts and presence
    /// (`-l env=prod`, `-H 'web-*'`, `--json`).
    Machines(fleet_cmd::MachinesArgs),
    /// List a directory on a machine.
    Ls(client_cmd::LsArgs),
    /// Join a machine's live session like ssh (raw terminal, its size
    /// followed); `~.` leaves it running.
    Attach(attach_cmd::AttachArgs),
    /// Open an interactive login shell on a machine, like `ssh host`: raw
    /// terminal, its size followed, Ctrl-C to the remote side; exits with
    /// the shell's status, or 255 after `~.` (which disconnects).
    Shell(shell_cmd::ShellArgs),
    /// Copy files or trees to or from a machine: `cp ./a.tar web-1:/tmp/`,
    /// `cp -r web-1:/etc/nginx .`
    Cp(cp_cmd::CpArgs),
    /// The client's settings: `cmdop config show` prints what every command
    /// would use (server, key masked, CA, default host) and where each
    /// came from (flags, environment, the profile of the config file).
    Config(config_cmd::ConfigArgs),
    /// Print a shell completion script (bash, zsh, fish, …) to stdout.
    Completions(docs_cmd::CompletionsArgs),
    /// Write the manual pages (cmdop.1, cmdop-exec.1, …) to a directory.
    #[command(hide = true)]
    Man(docs_cmd::ManArgs),
    /// Started by `cmdop agent` itself: waits for the agent to die, then
    /// kills the commands it left running (see `cmdop_agent::orphans`).
    #[command(hide = true)]
    AgentReaper(agent_cmd::ReaperArgs),
}

fn main() -> std::process::ExitCode {
    let command = Cli::command();
    let matches = match command.clone().try_get_matches() {
        Ok(m) => m,
        Err(e) => report::usage_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut Cli::command()).exit(),
    };
    if let Err(err) = secret_flags::check_command_line(&command, &matches) {
        eprintln!("cmdop: {err:#}");
        return std::process::ExitCode::FAILURE;
    }
    // `--config FILE` of server and agent: under the flags and environment.
    let cli = match config_file::apply(&command, cli, &matches) {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("cmdop: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let quiet = matches!(
        cli.command,
        Command::Exec(_)
            | Command::Sessions(_)
            | Command::Machines(_)
            | Command::Ls(_)
            | Command::Attach(_)
            | Command::Shell(_)
            | Command::Cp(_)
    );
    logging::init(
        &logging::filter_for(
            cli.log_level.as_deref(),
            cli.verbose,
            // PostgreSQL's NOTICEs ("relation … already exists, skipping"
            // on every migration check) are no news to an operator.
            if quiet {
                "warn"
            } else {
                "info,tokio_postgres=warn"
            },
        ),
        cli.verbose,
        cli.log_format,
    );
    let is_dev = matches!(cli.command, Command::Dev(_));
    let success = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Admin(args) => admin_cmd::run(args),
        Command::Completions(args) => success(docs_cmd::completions(args, Cli::command())),
        Command::Config(args) => success(config_cmd::run(args)),
        Command::Man(args) => success(docs_cmd::man(args, Cli::command())),
        Command::AgentReaper(args) => {
            cmdop_agent::orphans::reap_when_closed(&args.dir);
            Ok(std::process::ExitCode::SUCCESS)
        }
        other => runtime().and_then(|rt| {
            rt.block_on(async move {
                match other {
                    Command::Server(args) => success(server_cmd::run(args).await),
                    Command::Agent(args) => success(agent_cmd::run(args).await),
                    Command::Dev(args) => success(dev_cmd::run(args).await),
                    Command::Exec(args) => client_cmd::exec(args).await,
                    Command::Sessions(args) => client_cmd::sessions(args).await,
                    Command::Machines(args) => fleet_cmd::machines(args).await,
                    Command::Ls(args) => client_cmd::ls(args).await,
                    Command::Attach(args) => attach_cmd::attach(args).await,
                    Command::Shell(args) => shell_cmd::shell(args).await,
                    Command::Cp(args) => cp_cmd::cp(args).await,
                    Command::Admin(_)
                    | Command::Config(_)
                    | Command::AgentReaper(_)
                    | Command::Completions(_)
                    | Command::Man(_) => unreachable!("handled above"),
                }
            })
        }),
    };
    match result {
        Ok(code) => code,
        // The client commands exit 255 for their own failures, like ssh,
        // so that a script tells them from the remote command's status.
        Err(err) if quiet => {
            eprintln!("cmdop: {}", report::one_line(&err));
            std::process::ExitCode::from(report::CMDOP_FAILED)
        }
        Err(err) if is_dev => {
            eprintln!("cmdop: {}", report::one_line(&err));
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("cmdop: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `--help` shows the value of an environment variable unless told not
    /// to, and several carry secrets (API key, enrollment token): no
    /// argument of any command may print one.
    #[test]
    fn no_help_text_prints_an_environment_value() {
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                if arg.get_env().is_some() {
                    assert!(
                        arg.is_hide_env_values_set(),
                        "{path} --{}: set hide_env_values",
                        arg.get_id()
                    );
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&super::Cli::command(), "cmdop");
    }

    #[test]
    fn agent_servers_are_comma_separated_or_repeated() {
        use clap::Parser;
        let parse = |args: &[&str]| match super::Cli::try_parse_from(args).expect("parses").command
        {
            super::Command::Agent(a) => a.config().expect("config").servers(),
            _ => unreachable!(),
        };
        assert_eq!(
            parse(&[
                "cmdop",
                "agent",
                "--server",
                "http://a:1,http://b:2",
                "--server",
                "http://c:3"
            ]),
            vec!["http://a:1", "http://b:2", "http://c:3"]
        );
        assert_eq!(
            parse(&["cmdop", "agent", "--server", "http://a:1"]),
            vec!["http://a:1"]
        );
        // Empty pieces (a trailing comma) are dropped; nothing at all is an error.
        assert_eq!(
            parse(&["cmdop", "agent", "--server", "http://a:1,"]),
            vec!["http://a:1"]
        );
        let cli = super::Cli::try_parse_from(["cmdop", "agent", "--server", ","]).expect("parses");
        let super::Command::Agent(a) = cli.command else {
            unreachable!()
        };
        assert!(a.config().is_err());
    }
}
