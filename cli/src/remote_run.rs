//! What the commands that run something on one machine share (`exec`,
//! `exec -t`, `shell`): which machine, stdin forwarded to the command, and
//! cmdop's exit status for how the command ended.

use std::time::Duration;

use clap::Args;

use crate::connect::ConnectArgs;
use cmdop::client::{Client, Error};

/// Which machine a command acts on.
#[derive(Args, Clone)]
pub struct MachineArgs {
    /// Hostname (exact, or a unique case-insensitive part of one). For
    /// `exec`: also a comma-separated list or globs (`-H web-1,web-2`,
    /// `-H 'web-*'`) to run on each.
    #[arg(long, short = 'H', conflicts_with = "machine_id")]
    pub host: Option<String>,
    /// Stable machine id (mach_…).
    #[arg(long)]
    pub machine_id: Option<String>,
}

impl MachineArgs {
    /// Selects the machine: -H, --machine-id, the profile's `host`, else
    /// the only online machine (or the active session).
    pub(crate) async fn select(
        &self,
        client: &Client,
        connect: &ConnectArgs,
    ) -> anyhow::Result<()> {
        let host = match (&self.host, &self.machine_id) {
            (None, None) => connect.profile_host()?,
            (host, _) => host.clone(),
        };
        match (&host, &self.machine_id) {
            (_, Some(id)) => {
                client.set_machine_id(id).await?;
            }
            (Some(host), None) => {
                client.set_machine(host).await?;
            }
            (None, None) => match crate::fleet_cmd::the_only_online_machine(client).await? {
                Some(machine_id) => {
                    client.set_machine_id(&machine_id).await?;
                }
                // A server that cannot list machines: its active session.
                None => {
                    let session = client.get_active_session(None).await?;
                    client.set_machine(&session.hostname).await?;
                }
            },
        }
        Ok(())
    }
}

/// Streams this process's stdin into a command, from a thread of its own
/// (reading stdin blocks), until EOF or until the command stops taking it.
pub(crate) fn forward_stdin() -> cmdop::client::StdinReader {
    let (writer, reader) = cmdop::client::stdin_pipe();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if writer.write_blocking(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("cmdop: reading stdin failed: {e}; closing the command's stdin");
                    break;
                }
            }
        }
        let _ = writer.close_blocking();
    });
    reader
}

/// `cmdop exec --help`'s table of exit statuses (also in the README).
pub const EXIT_STATUS: &str = "\
Exit status:
  0-255  the remote command's own status (one machine)
  128+N  the remote command was killed by signal N (137: kill -9)
  124    the command ran longer than --timeout and was killed
  255    also: -t or cmdop shell left with ~.
  255    cmdop itself failed: wrong command line, cannot connect, key refused,
         machine unknown or offline, connection lost while the command ran
         (its outcome is then unknown)
On several machines (-l, -H a,b, -H 'web-*'): 0 when every machine ran it and
it exited 0, 1 when one failed, 2 when none failed but some did not run; 255
as above.";

/// What `cmdop exec` asks for when no `--timeout` is given: the longest
/// limit the protocol carries (milliseconds in 32 bits, about 49 days). The
/// library would otherwise apply its per-call timeout (`--timeout-secs`) to
/// the command, which kills builds and other long work.
pub(crate) const NO_TIME_LIMIT: Duration = Duration::from_millis(u32::MAX as u64);

/// `cmdop exec`'s status when the command ran out of its `--timeout` and
/// was killed (as `timeout(1)`).
pub(crate) const TIMED_OUT: u8 = 124;

/// cmdop's exit status for a command's `result` (see [`EXIT_STATUS`]);
/// `timeout` is the `--timeout` given, if any.
pub(crate) fn exit_status(
    result: Result<cmdop::client::ExecOutput, Error>,
    timeout: Option<Duration>,
) -> anyhow::Result<std::process::ExitCode> {
    match result {
        Ok(out) if out.signal != 0 => {
            eprintln!("cmdop: remote command killed by signal {}", out.signal);
            Ok(std::process::ExitCode::from(
                128u8.saturating_add(out.signal as u8),
            ))
        }
        Ok(out) => Ok(std::process::ExitCode::from(
            out.exit_code.clamp(0, 255) as u8
        )),
        // The agent confirmed the kill at the --timeout; 124 as timeout(1).
        Err(Error::Timeout { .. }) if timeout.is_some() => {
            let limit = humantime::format_duration(timeout.unwrap_or_default());
            eprintln!(
                "cmdop: the remote command ran longer than --timeout {limit} and was killed; \
                 raise --timeout, or leave it out for no limit"
            );
            Ok(std::process::ExitCode::from(TIMED_OUT))
        }
        Err(e) => Err(e.into()),
    }
}
