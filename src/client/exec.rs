//! Running a command: the public entry points (`execute`, `execute_with`,
//! `execute_piped`, …), the result and option types both paths share, and
//! the choice of path: native exec over `cmdop.ext.v1.Cmdop/Exec`
//! ([`super::exec_native`]) when the server and agent offer it, else the
//! official marker technique over the session's terminal
//! ([`super::exec_terminal`]).
//!
//! Timeouts are reported as `Err(Error::Timeout { partial: Some(output) })`:
//! the remote process has been killed and `partial` holds what it printed.

use std::time::Duration;

use cmdop_proto::caps;

use super::exec_stdin::{StdinReader, CAP_EXEC_STDIN};
use super::{CancelToken, Client, Error, LogLevel, Result};

/// Output kept per stream in an [`ExecOutput`]; the rest still reaches the
/// chunk callback, and `truncated` is set.
const MAX_KEPT_OUTPUT: usize = 64 * 1024 * 1024;

/// Which stream a chunk came from. On the terminal path everything is
/// `Stdout` (a terminal merges both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

/// The result of a command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    /// Everything the command printed, in arrival order.
    pub output: Vec<u8>,
    /// Stdout alone (native path; on the terminal path, same as `output`).
    pub stdout: Vec<u8>,
    /// Stderr alone (native path only; empty on the terminal path).
    pub stderr: Vec<u8>,
    /// Exit status; -1 when killed by a signal or when it never finished.
    pub exit_code: i32,
    /// Signal that ended the command, 0 if none.
    pub signal: i32,
    pub timed_out: bool,
    pub duration: Duration,
    /// Ran through native Exec (true) or the terminal fallback (false).
    pub native: bool,
    /// Some output is missing: beyond the kept limit (64 MiB per stream),
    /// or, on the terminal path, evicted by the server before it was read.
    pub truncated: bool,
}

/// How to run a command beyond its text (see [`Client::execute_with`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOptions {
    /// Kill the command after this long; `None` = the client timeout.
    pub timeout: Option<Duration>,
    /// Written to the command's stdin, which is then closed (native exec
    /// only: NOT_SUPPORTED on the terminal path). Empty = no stdin.
    pub stdin: Vec<u8>,
    /// Added to the command's environment. Names must be shell identifiers
    /// (letters, digits, `_`) and values free of control characters on the
    /// terminal path, where they are exported in the command's subshell.
    pub env: Vec<(String, String)>,
    /// Directory to run in; relative and `~/` paths start at the agent's
    /// home. Empty = the agent's home on the native path, the shell's
    /// current directory on the terminal path. A directory that does not
    /// exist fails the call with OPERATION_FAILED on both paths.
    pub working_directory: String,
    /// Hand the output only to the chunk callback and keep none of it in
    /// the result (for large outputs).
    pub discard_output: bool,
    /// Run on this machine (from a listing, e.g. [`Client::list_machines`])
    /// instead of the client's selected one, so that one client can run
    /// commands on many machines at once. `None` = the selected machine.
    pub machine: Option<super::MachineInfo>,
    /// Run the command in a pseudo-terminal of this size, as `ssh -t` does
    /// (native exec with `exec-tty.v1` on server and agent; otherwise
    /// NOT_SUPPORTED, never a silent run without one). Its output is then
    /// one stream, the terminal, delivered as [`Stream::Stdout`]; stdin from
    /// [`Client::execute_piped`] is typed into the terminal (a 0x03 byte
    /// interrupts it as Ctrl-C does), and
    /// [`StdinWriter::resize`](super::StdinWriter::resize) changes its size.
    pub terminal: Option<super::Terminal>,
}

/// Which output a call keeps in its [`ExecOutput`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// Everything, up to [`MAX_KEPT_OUTPUT`] per stream.
    All,
    /// Nothing: the chunk callback is the only consumer.
    Nothing,
}

impl ExecOutput {
    pub(super) fn keep(&mut self, keep: Keep, stream: Stream, data: &[u8]) {
        if keep == Keep::All {
            self.push(stream, data);
        }
    }

    fn push(&mut self, stream: Stream, data: &[u8]) {
        let keep = |buf: &mut Vec<u8>, truncated: &mut bool| {
            let room = MAX_KEPT_OUTPUT.saturating_sub(buf.len());
            if data.len() > room {
                *truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        };
        keep(&mut self.output, &mut self.truncated);
        match stream {
            Stream::Stdout => keep(&mut self.stdout, &mut self.truncated),
            Stream::Stderr => keep(&mut self.stderr, &mut self.truncated),
        }
    }
}

impl Client {
    /// Run `command` on the selected machine and collect its output.
    /// `timeout` defaults to the client timeout.
    pub async fn execute(&self, command: &str, timeout: Option<Duration>) -> Result<ExecOutput> {
        self.execute_stream(command, timeout, |_, _| {}, CancelToken::new())
            .await
    }

    /// Like [`execute`](Self::execute), handing each chunk of output to
    /// `on_chunk` as it arrives. Cancelling `cancel` stops the command
    /// (killing it) and returns `Err(Error::Cancelled)`.
    pub async fn execute_stream(
        &self,
        command: &str,
        timeout: Option<Duration>,
        on_chunk: impl FnMut(Stream, &[u8]) + Send,
        cancel: CancelToken,
    ) -> Result<ExecOutput> {
        let opts = ExecOptions {
            timeout,
            ..Default::default()
        };
        self.execute_with(command, &opts, on_chunk, cancel).await
    }

    /// Like [`execute_stream`](Self::execute_stream), but the output only
    /// goes to `on_chunk`: the result's `output`, `stdout` and `stderr`
    /// stay empty (also the partial output of a timeout). Memory use does
    /// not grow with the output, so this is the call for large outputs.
    pub async fn execute_stream_discarding(
        &self,
        command: &str,
        timeout: Option<Duration>,
        on_chunk: impl FnMut(Stream, &[u8]) + Send,
        cancel: CancelToken,
    ) -> Result<ExecOutput> {
        let opts = ExecOptions {
            timeout,
            discard_output: true,
            ..Default::default()
        };
        self.execute_with(command, &opts, on_chunk, cancel).await
    }

    /// Runs `command` with `opts` (stdin bytes, environment, working
    /// directory, timeout), handing each chunk of output to `on_chunk`.
    /// Native exec honours every option; on the terminal path, environment
    /// and working directory are applied in the command's subshell and
    /// stdin makes the call NOT_SUPPORTED: no option is ever dropped.
    pub async fn execute_with(
        &self,
        command: &str,
        opts: &ExecOptions,
        on_chunk: impl FnMut(Stream, &[u8]) + Send,
        cancel: CancelToken,
    ) -> Result<ExecOutput> {
        let keep = if opts.discard_output {
            Keep::Nothing
        } else {
            Keep::All
        };
        self.run_command(command, opts, None, on_chunk, cancel, keep)
            .await
    }

    /// Like [`execute_with`](Self::execute_with), with stdin streamed from
    /// `stdin` while the command runs (after `opts.stdin`): write with the
    /// [`StdinWriter`] from the same [`stdin_pipe`](super::stdin_pipe),
    /// close it (or drop it) for EOF. Needs native exec with streamed stdin
    /// (`exec-stdin.v1`) on server and agent; otherwise NOT_SUPPORTED,
    /// since a terminal cannot carry stdin faithfully.
    pub async fn execute_piped(
        &self,
        command: &str,
        opts: &ExecOptions,
        stdin: StdinReader,
        on_chunk: impl FnMut(Stream, &[u8]) + Send,
        cancel: CancelToken,
    ) -> Result<ExecOutput> {
        let keep = if opts.discard_output {
            Keep::Nothing
        } else {
            Keep::All
        };
        self.run_command(command, opts, Some(stdin), on_chunk, cancel, keep)
            .await
    }

    /// Runs the command until it ends, `cancel` fires (CANCELLED) or the
    /// application closes the client (DISCONNECTED); in the last two cases
    /// the remote command is killed before this returns.
    async fn run_command(
        &self,
        command: &str,
        opts: &ExecOptions,
        stdin: Option<StdinReader>,
        on_chunk: impl FnMut(Stream, &[u8]) + Send,
        cancel: CancelToken,
        keep: Keep,
    ) -> Result<ExecOutput> {
        let closing = self.inner.closing.lock().clone();
        let stop = CancelToken::new();
        let work = self.run_command_until(command, opts, stdin, on_chunk, stop.clone(), keep);
        tokio::pin!(work);
        let closed = tokio::select! {
            biased;
            r = &mut work => return r.map_err(|e| self.inner.report(e)),
            _ = cancel.cancelled() => false,
            _ = closing.cancelled() => true,
        };
        stop.cancel();
        match work.await {
            Err(Error::Cancelled) if closed => Err(self.inner.report(Error::Disconnected(
                "the client was closed while the command ran; the command was stopped (connect again to run it)"
                    .into(),
            ))),
            r => r.map_err(|e| self.inner.report(e)),
        }
    }

    async fn run_command_until(
        &self,
        command: &str,
        opts: &ExecOptions,
        stdin: Option<StdinReader>,
        mut on_chunk: impl FnMut(Stream, &[u8]) + Send,
        cancel: CancelToken,
        keep: Keep,
    ) -> Result<ExecOutput> {
        if command.is_empty() {
            return Err(Error::InvalidArgument("command is empty".into()));
        }
        let timeout = opts
            .timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(self.inner.opts.timeout);
        let machine = match &opts.machine {
            Some(m) => m.clone(),
            None => self.machine().ok_or_else(Error::no_machine)?,
        };
        let server_native = self.inner.facts.lock().has(caps::EXEC);
        // Without the extension's machine lookup we do not know whether the
        // agent executes natively; asking costs one round trip and answers
        // UNIMPLEMENTED quickly when it does not.
        let try_native = server_native && (machine.native_exec || machine.machine_id.is_empty());
        if opts.terminal.is_some() {
            let why = if !self.inner.facts.lock().has(caps::EXEC_TTY) {
                "the server does not offer it (exec-tty.v1); update it"
            } else if !try_native {
                "the machine's agent does not offer native exec; update it"
            } else {
                ""
            };
            if !why.is_empty() {
                return Err(self.inner.report(Error::NotSupported(format!(
                    "running a command in a terminal (exec -t, shell) needs native exec: {why}"
                ))));
            }
        }
        if stdin.is_some() {
            let why = if !self.inner.facts.lock().has(CAP_EXEC_STDIN) {
                "the server does not offer streamed stdin (exec-stdin.v1); update it"
            } else if !try_native {
                "the machine's agent does not offer native exec; update it"
            } else {
                ""
            };
            if !why.is_empty() {
                return Err(self.inner.report(Error::NotSupported(format!(
                    "streaming stdin into a command needs native exec: {why}"
                ))));
            }
        }
        if stdin.is_some() || opts.terminal.is_some() {
            // No fallback: the terminal path can carry neither.
            return self
                .exec_native(
                    &machine,
                    command,
                    opts,
                    stdin,
                    timeout,
                    &mut on_chunk,
                    &cancel,
                    keep,
                )
                .await
                .map_err(|e| self.inner.report(e));
        }
        if try_native {
            match self
                .exec_native(
                    &machine,
                    command,
                    opts,
                    None,
                    timeout,
                    &mut on_chunk,
                    &cancel,
                    keep,
                )
                .await
            {
                Err(Error::NotSupported(why)) => {
                    self.inner.log(LogLevel::Debug, || {
                        format!("native exec unavailable ({why}); using the terminal")
                    });
                }
                other => return other,
            }
        }
        self.exec_terminal(command, opts, timeout, &mut on_chunk, &cancel, keep)
            .await
    }
}

/// Hands a chunk to the caller's callback and keeps it as `keep` says.
pub(super) fn deliver(
    on_chunk: &mut (impl FnMut(Stream, &[u8]) + Send),
    out: &mut ExecOutput,
    keep: Keep,
    stream: Stream,
    data: &[u8],
) {
    on_chunk(stream, data);
    out.keep(keep, stream, data);
}

/// The error of a command that ran out of `timeout` and was killed, with
/// what it printed.
pub(super) fn timeout_error(timeout: Duration, partial: ExecOutput) -> Error {
    Error::Timeout {
        message: format!(
            "the command did not finish within {} ms and was killed; raise the timeout for long commands",
            timeout.as_millis()
        ),
        partial: Some(Box::new(partial)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_output_is_bounded_and_flags_truncation() {
        let mut o = ExecOutput::default();
        o.push(Stream::Stderr, b"err");
        o.push(Stream::Stdout, b"out");
        assert_eq!(o.output, b"errout");
        assert_eq!(o.stdout, b"out");
        assert_eq!(o.stderr, b"err");
        assert!(!o.truncated);
        let big = vec![0u8; MAX_KEPT_OUTPUT];
        o.push(Stream::Stdout, &big);
        assert!(o.truncated);
        assert_eq!(o.output.len(), MAX_KEPT_OUTPUT);
    }
}
