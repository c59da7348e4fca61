//! Running commands: natively through `cmdop.ext.v1.Cmdop/Exec` when the
//! server and agent offer it, else with the official marker technique over
//! the session's terminal (see [`super::marker`]).
//!
//! Timeouts are reported as `Err(Error::Timeout { partial: Some(output) })`:
//! the remote process has been killed and `partial` holds what it printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmdop_proto::caps;
use cmdop_proto::ext::exec_event::Event as ExecEv;
use cmdop_proto::ext::ExecRequest;
use cmdop_proto::terminal::{GetOutputRequest, SendInputRequest, SendSignalRequest};

use super::connection::{CallPolicy, Conn};
use super::exec_side::{side_address, SideStdout, SIDE_READ_BYTES};
use super::marker::{
    find, idle_marker, idle_probe_line, marker_command_line, new_marker_id, MarkerScanner,
};
use super::{lock, CancelToken, Client, Error, LogLevel, Result};

/// Output kept per stream in an [`ExecOutput`]; the rest still reaches the
/// chunk callback, and `truncated` is set.
const MAX_KEPT_OUTPUT: usize = 64 * 1024 * 1024;
/// Extra time the client waits for the server to report its own timeout.
const SERVER_TIMEOUT_GRACE: Duration = Duration::from_secs(3);
/// Terminal polling: first pause after sending, and the ceiling it backs
/// off to while the command prints nothing.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(50);
/// After SIGINT, how long to wait for the shell to come back before SIGKILL.
const INTERRUPT_GRACE: Duration = Duration::from_millis(1000);

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

/// Which output a call keeps in its [`ExecOutput`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Everything, up to [`MAX_KEPT_OUTPUT`] per stream.
    All,
    /// Nothing: the chunk callback is the only consumer.
    Nothing,
}

impl ExecOutput {
    fn keep(&mut self, keep: Keep, stream: Stream, data: &[u8]) {
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
        self.run_command(command, timeout, on_chunk, cancel, Keep::All)
            .await
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
        self.run_command(command, timeout, on_chunk, cancel, Keep::Nothing)
            .await
    }

    /// Runs the command until it ends, `cancel` fires (CANCELLED) or the
    /// application closes the client (DISCONNECTED); in the last two cases
    /// the remote command is killed before this returns.
    async fn run_command(
        &self,
        command: &str,
        timeout: Option<Duration>,
        on_chunk: impl FnMut(Stream, &[u8]) + Send,
        cancel: CancelToken,
        keep: Keep,
    ) -> Result<ExecOutput> {
        let closing = lock(&self.inner.closing).clone();
        let stop = CancelToken::new();
        let work = self.run_command_until(command, timeout, on_chunk, stop.clone(), keep);
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
        timeout: Option<Duration>,
        mut on_chunk: impl FnMut(Stream, &[u8]) + Send,
        cancel: CancelToken,
        keep: Keep,
    ) -> Result<ExecOutput> {
        if command.is_empty() {
            return Err(Error::InvalidArgument("command is empty".into()));
        }
        let timeout = timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(self.inner.opts.timeout);
        let machine = self.machine().ok_or_else(Error::no_machine)?;
        let server_native = lock(&self.inner.facts).has(caps::EXEC);
        // Without the extension's machine lookup we do not know whether the
        // agent executes natively; asking costs one round trip and answers
        // UNIMPLEMENTED quickly when it does not.
        let try_native = server_native && (machine.native_exec || machine.machine_id.is_empty());
        if try_native {
            match self
                .exec_native(&machine, command, timeout, &mut on_chunk, &cancel, keep)
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
        self.exec_terminal(command, timeout, &mut on_chunk, &cancel, keep)
            .await
    }

    async fn exec_native(
        &self,
        machine: &super::MachineInfo,
        command: &str,
        timeout: Duration,
        on_chunk: &mut (impl FnMut(Stream, &[u8]) + Send),
        cancel: &CancelToken,
        keep: Keep,
    ) -> Result<ExecOutput> {
        let started = Instant::now();
        // Large stdout may move to a side connection (plaintext only).
        let side_addr = lock(&self.inner.facts)
            .has(caps::EXEC_RAW)
            .then(|| side_address(&self.inner.opts))
            .flatten();
        let req = ExecRequest {
            machine_id: machine.machine_id.clone(),
            session_id: if machine.machine_id.is_empty() {
                machine.session_id.clone()
            } else {
                String::new()
            },
            command: command.to_string(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            accept_raw_stdout: side_addr.is_some(),
            ..Default::default()
        };
        let hard_deadline = started + timeout + SERVER_TIMEOUT_GRACE;
        let mut stream = tokio::select! {
            s = self.inner.open_stream("Exec", req, Some(timeout + SERVER_TIMEOUT_GRACE), |mut c, r| async move { c.ext.exec(r).await }) => s?,
            _ = cancel.cancelled() => return Err(Error::Cancelled),
        };
        let mut out = ExecOutput {
            native: true,
            exit_code: -1,
            ..Default::default()
        };
        let mut seen_event = false;
        let mut side = SideStdout::Unused;
        let mut exec_id = String::new();
        let mut side_buf = Vec::new();
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                r = side.read(&mut side_buf), if side.reading() => {
                    if let Some(n) = r? {
                        deliver(on_chunk, &mut out, keep, Stream::Stdout, &side_buf[..n]);
                    }
                    continue;
                }
                _ = cancel.cancelled() => return Err(Error::Cancelled), // dropping the stream kills it
                _ = tokio::time::sleep_until(hard_deadline.into()) => return Err(expired(out, started, timeout)),
            };
            let event = match msg {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    return Err(Error::Unavailable(
                        "the command's stream ended before it finished: the agent or server went away; check the machine".into(),
                    ))
                }
                Err(status) if !seen_event && status.code() == tonic::Code::Unimplemented => {
                    return Err(Error::NotSupported(status.message().to_string()))
                }
                Err(status) => {
                    if status.code() == tonic::Code::Unavailable {
                        self.inner.trouble.notify_one();
                    }
                    return Err(Error::from_status("Exec", &status));
                }
            };
            seen_event = true;
            match event.event {
                Some(ExecEv::Started(s)) => {
                    self.inner.log(LogLevel::Debug, || {
                        format!("exec {} started as pid {}", s.exec_id, s.pid)
                    });
                    exec_id = s.exec_id;
                }
                Some(ExecEv::Stdout(b)) => deliver(on_chunk, &mut out, keep, Stream::Stdout, &b),
                Some(ExecEv::Stderr(b)) => deliver(on_chunk, &mut out, keep, Stream::Stderr, &b),
                Some(ExecEv::Exit(exit)) => {
                    // Stdout on a side connection ends with its EOF, which
                    // may come after the exit event.
                    while side.reading() {
                        tokio::select! {
                            r = side.read(&mut side_buf) => {
                                if let Some(n) = r? {
                                    deliver(on_chunk, &mut out, keep, Stream::Stdout, &side_buf[..n]);
                                }
                            }
                            _ = cancel.cancelled() => return Err(Error::Cancelled),
                            _ = tokio::time::sleep_until(hard_deadline.into()) => return Err(expired(out, started, timeout)),
                        }
                    }
                    side.verify(exit.raw_stdout_bytes)?;
                    out.exit_code = exit.exit_code;
                    out.signal = exit.signal;
                    out.timed_out = exit.timed_out;
                    out.duration = if exit.duration_us > 0 {
                        Duration::from_micros(exit.duration_us)
                    } else {
                        started.elapsed()
                    };
                    if out.timed_out {
                        return Err(timeout_error(timeout, out));
                    }
                    if !exit.error.is_empty() && out.exit_code == -1 && out.signal == 0 {
                        return Err(Error::OperationFailed(format!(
                            "the command could not start: {}",
                            exit.error
                        )));
                    }
                    return Ok(out);
                }
                Some(ExecEv::RawOffer(offer)) => {
                    if let Some(addr) = &side_addr {
                        side.offer(addr, offer.ticket);
                    }
                }
                Some(ExecEv::RawSwitch(_)) => {
                    tokio::select! {
                        r = side.switch() => r?,
                        _ = cancel.cancelled() => return Err(Error::Cancelled),
                        _ = tokio::time::sleep_until(hard_deadline.into()) => return Err(expired(out, started, timeout)),
                    }
                    side_buf.resize(SIDE_READ_BYTES, 0);
                    self.inner.log(LogLevel::Debug, || {
                        format!("stdout of exec {exec_id} continues on a side connection")
                    });
                }
                None => {} // a newer event kind: ignore
            }
        }
    }

    async fn exec_terminal(
        &self,
        command: &str,
        timeout: Duration,
        on_chunk: &mut (impl FnMut(Stream, &[u8]) + Send),
        cancel: &CancelToken,
        keep: Keep,
    ) -> Result<ExecOutput> {
        // Session lookups may retry once with a fresh session id, but only
        // before the command has been typed.
        let session = self
            .with_session(|sid| async move {
                let base = self.output_end(&sid).await?;
                Ok((sid, base))
            })
            .await?;
        let (session_id, _) = session;
        let turn = Arc::clone(
            lock(&self.inner.terminals)
                .entry(session_id.clone())
                .or_default(),
        );
        let _turn = tokio::select! {
            g = turn.lock_owned() => g,
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(timeout) => return Err(Error::timeout("waiting for the terminal (another command is running on it)", timeout)),
        };
        // The connection this command runs on, kept so that stopping it
        // still works after the application closed the client.
        let pinned = self
            .inner
            .conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Where this command's output will start (after any earlier command's).
        let base = self.output_end(&session_id).await?;
        let started = Instant::now();
        let deadline = started + timeout;
        let id = new_marker_id();
        let line = marker_command_line(&id, command);
        let send = SendInputRequest {
            session_id: session_id.clone(),
            data: line.into_bytes().into(),
        };
        let policy = CallPolicy {
            idempotent: false,
            timeout: self.inner.opts.timeout,
        };
        let r = self
            .inner
            .unary("SendInput", send, policy, |mut c, r| async move {
                c.terminal.send_input(r).await
            })
            .await?;
        if !r.success {
            return Err(Error::from_remote_text("typing the command", &r.error));
        }

        let mut scanner = MarkerScanner::new(&id);
        let mut out = ExecOutput {
            native: false,
            exit_code: -1,
            ..Default::default()
        };
        let mut cursor = base;
        let mut pause = POLL_MIN;
        let mut chunk = Vec::new();
        loop {
            if cancel.is_cancelled() {
                self.interrupt(
                    &pinned,
                    &session_id,
                    &id,
                    &mut cursor,
                    &mut scanner,
                    &mut out,
                    keep,
                )
                .await;
                return Err(Error::Cancelled);
            }
            if Instant::now() >= deadline {
                self.interrupt(
                    &pinned,
                    &session_id,
                    &id,
                    &mut cursor,
                    &mut scanner,
                    &mut out,
                    keep,
                )
                .await;
                return Err(expired(out, started, timeout));
            }
            let (data, more, total) = self.read_output(None, &session_id, cursor).await?;
            if !more && total > cursor + data.len() as i64 && !out.truncated {
                // The server's bounded buffer evicted bytes before we read
                // them (the command printed faster than we polled).
                out.truncated = true;
                self.inner.log(LogLevel::Warn, || {
                    format!(
                        "{} bytes of terminal output were lost before they could be read; use native exec for large outputs",
                        total - cursor - data.len() as i64
                    )
                });
            }
            if !data.is_empty() {
                chunk.clear();
                let code = scanner.push(&data, &mut chunk);
                if !chunk.is_empty() {
                    deliver(on_chunk, &mut out, keep, Stream::Stdout, &chunk);
                }
                cursor += data.len() as i64;
                pause = POLL_MIN;
                if let Some(code) = code {
                    out.exit_code = code;
                    out.duration = started.elapsed();
                    return Ok(out);
                }
            }
            if !more {
                cursor = cursor.max(total);
                let wait = pause.min(deadline.saturating_duration_since(Instant::now()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => {}
                }
                pause = (pause * 2).min(POLL_MAX);
            }
        }
    }

    /// Absolute offset of the end of the session's output right now.
    async fn output_end(&self, session_id: &str) -> Result<i64> {
        let req = GetOutputRequest {
            session_id: session_id.to_string(),
            offset: 0,
            limit: 1,
        };
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let r = self
            .inner
            .unary("GetOutput", req, policy, |mut c, r| async move {
                c.terminal.get_output(r).await
            })
            .await?;
        Ok(i64::from(r.total_bytes))
    }

    /// Output from absolute `offset`: (bytes, has_more, total_bytes).
    async fn read_output(
        &self,
        pinned: Option<Conn>,
        session_id: &str,
        offset: i64,
    ) -> Result<(bytes::Bytes, bool, i64)> {
        let offset = i32::try_from(offset).map_err(|_| {
            Error::Protocol(
                "the session has printed more than 2 GiB; the terminal protocol cannot address it"
                    .into(),
            )
        })?;
        let req = GetOutputRequest {
            session_id: session_id.to_string(),
            offset,
            limit: 0,
        };
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let r = self
            .inner
            .unary_on(pinned, "GetOutput", req, policy, |mut c, r| async move {
                c.terminal.get_output(r).await
            })
            .await?;
        Ok((r.data, r.has_more, i64::from(r.total_bytes)))
    }

    /// Stop the foreground job: SIGINT, then type a probe line that prints
    /// an IDLE marker once the shell is back at its prompt; only if it does
    /// not appear in time, SIGKILL (which would hit the shell itself if sent
    /// when no job runs). Best effort; collects output printed meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn interrupt(
        &self,
        pinned: &Option<Conn>,
        session_id: &str,
        id: &str,
        cursor: &mut i64,
        scanner: &mut MarkerScanner,
        out: &mut ExecOutput,
        keep: Keep,
    ) {
        self.send_signal(pinned, session_id, 2).await;
        let probe = SendInputRequest {
            session_id: session_id.to_string(),
            data: idle_probe_line(id).into_bytes().into(),
        };
        let policy = CallPolicy {
            idempotent: false,
            timeout: self.inner.opts.timeout.min(Duration::from_secs(5)),
        };
        let _ = self
            .inner
            .unary_on(
                pinned.clone(),
                "SendInput",
                probe,
                policy,
                |mut c, r| async move { c.terminal.send_input(r).await },
            )
            .await;
        let idle = idle_marker(id);
        let mut window: Vec<u8> = Vec::new();
        let mut chunk = Vec::new();
        let until = Instant::now() + INTERRUPT_GRACE;
        while Instant::now() < until {
            tokio::time::sleep(POLL_MIN * 5).await;
            let Ok((data, _, _)) = self.read_output(pinned.clone(), session_id, *cursor).await
            else {
                break;
            };
            *cursor += data.len() as i64;
            chunk.clear();
            if scanner.push(&data, &mut chunk).is_none() {
                out.keep(keep, Stream::Stdout, &chunk);
            }
            window.extend_from_slice(&data);
            if find(&window, &idle).is_some() {
                return; // the shell is idle again: nothing left to kill
            }
            let keep = window.len().saturating_sub(idle.len());
            window.drain(..keep);
        }
        self.inner.log(LogLevel::Warn, || {
            "the command ignored SIGINT: sending SIGKILL".into()
        });
        self.send_signal(pinned, session_id, 9).await;
    }

    async fn send_signal(&self, pinned: &Option<Conn>, session_id: &str, signal: i32) {
        let req = SendSignalRequest {
            session_id: session_id.to_string(),
            signal,
        };
        let policy = CallPolicy {
            idempotent: false,
            timeout: self.inner.opts.timeout.min(Duration::from_secs(5)),
        };
        let r = self
            .inner
            .unary_on(
                pinned.clone(),
                "SendSignal",
                req,
                policy,
                |mut c, r| async move { c.terminal.send_signal(r).await },
            )
            .await;
        match r {
            Ok(r) if r.success => {}
            Ok(r) => self.inner.log(LogLevel::Warn, || {
                format!("signal {signal} not delivered: {}", r.error)
            }),
            Err(e) => self.inner.log(LogLevel::Warn, || {
                format!("signal {signal} not delivered: {e}")
            }),
        }
    }
}

/// Hands a chunk to the caller's callback and keeps it as `keep` says.
fn deliver(
    on_chunk: &mut (impl FnMut(Stream, &[u8]) + Send),
    out: &mut ExecOutput,
    keep: Keep,
    stream: Stream,
    data: &[u8],
) {
    on_chunk(stream, data);
    out.keep(keep, stream, data);
}

/// The error of a command that ran out of `timeout`, with what it printed.
fn expired(mut partial: ExecOutput, started: Instant, timeout: Duration) -> Error {
    partial.timed_out = true;
    partial.duration = started.elapsed();
    timeout_error(timeout, partial)
}

fn timeout_error(timeout: Duration, partial: ExecOutput) -> Error {
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
