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
use cmdop_proto::terminal::{
    FileGetInfoRpcRequest, GetOutputRequest, SendInputRequest, SendSignalRequest, StreamFileType,
};

use super::connection::{CallPolicy, Conn};
use super::exec_side::{offer_security, side_plan, SideStdout, SIDE_READ_BYTES};
use super::exec_stdin::{PipedInput, StdinReader, CAP_EXEC_STDIN};
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
        let closing = lock(&self.inner.closing).clone();
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
        let machine = self.machine().ok_or_else(Error::no_machine)?;
        let server_native = lock(&self.inner.facts).has(caps::EXEC);
        // Without the extension's machine lookup we do not know whether the
        // agent executes natively; asking costs one round trip and answers
        // UNIMPLEMENTED quickly when it does not.
        let try_native = server_native && (machine.native_exec || machine.machine_id.is_empty());
        if stdin.is_some() {
            let why = if !lock(&self.inner.facts).has(CAP_EXEC_STDIN) {
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
        let line = terminal_command(command, opts).map_err(|e| self.inner.report(e))?;
        let cwd = Some(opts.working_directory.as_str()).filter(|d| !d.is_empty());
        self.exec_terminal(&line, cwd, timeout, &mut on_chunk, &cancel, keep)
            .await
    }

    // The arguments are the parts of one call, threaded through unchanged.
    #[allow(clippy::too_many_arguments)]
    async fn exec_native(
        &self,
        machine: &super::MachineInfo,
        command: &str,
        opts: &ExecOptions,
        stdin: Option<StdinReader>,
        timeout: Duration,
        on_chunk: &mut (impl FnMut(Stream, &[u8]) + Send),
        cancel: &CancelToken,
        keep: Keep,
    ) -> Result<ExecOutput> {
        let started = Instant::now();
        // Large stdout may move to a side connection: a plain one over
        // plaintext, a pinned TLS one over TLS.
        let (plain, tls) = {
            let facts = lock(&self.inner.facts);
            (facts.has(caps::EXEC_RAW), facts.has(caps::EXEC_RAW_TLS))
        };
        let mut side_plan = side_plan(&self.inner.opts, &self.inner.current_server(), plain, tls);
        let identity = match &side_plan {
            Some(plan) if plan.tls => self.inner.side_identity(),
            _ => None,
        };
        if side_plan.as_ref().is_some_and(|p| p.tls) && identity.is_none() {
            side_plan = None;
        }
        let client_pin = identity
            .as_ref()
            .map(|id| bytes::Bytes::copy_from_slice(&id.pin()))
            .unwrap_or_default();
        let req = ExecRequest {
            machine_id: machine.machine_id.clone(),
            session_id: if machine.machine_id.is_empty() {
                machine.session_id.clone()
            } else {
                String::new()
            },
            command: command.to_string(),
            stdin: opts.stdin.clone().into(),
            env: opts.env.iter().cloned().collect(),
            working_directory: opts.working_directory.clone(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            accept_raw_stdout: side_plan.is_some(),
            accept_unknown_outcome: true,
            raw_tls_client_sha256: client_pin,
        };
        let hard_deadline = started + timeout + SERVER_TIMEOUT_GRACE;
        let mut stream = match stdin {
            None => tokio::select! {
                s = self.inner.open_stream("Exec", req, Some(timeout + SERVER_TIMEOUT_GRACE), |mut c, r| async move { c.ext.exec(r).await }) => s?,
                _ = cancel.cancelled() => return Err(Error::Cancelled),
            },
            Some(reader) => {
                let (input, open) = PipedInput::new(req, reader);
                let opened = tokio::select! {
                    s = self.inner.open_stream("ExecWithStdin", input, Some(timeout + SERVER_TIMEOUT_GRACE), |mut c, r| async move {
                        let (meta, ext, input) = r.into_parts();
                        c.ext.exec_with_stdin(tonic::Request::from_parts(meta, ext, input.into_stream())).await
                    }) => s,
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                };
                // UNIMPLEMENTED (old server, or an agent without streamed
                // stdin) surfaces as NOT_SUPPORTED; no fallback can carry it.
                let stream = opened?;
                let _ = open.send(true);
                stream
            }
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
                    if seen_event && outcome_marked_unknown(&status) {
                        return Err(outcome_unknown(out, started, status.message()));
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
                    finish_in_background(stream);
                    out.exit_code = exit.exit_code;
                    out.signal = exit.signal;
                    out.timed_out = exit.timed_out;
                    out.duration = if exit.duration_us > 0 {
                        Duration::from_micros(exit.duration_us)
                    } else {
                        started.elapsed()
                    };
                    if exit.outcome_unknown {
                        out.exit_code = -1;
                        out.signal = 0;
                        out.timed_out = false;
                        return Err(outcome_unknown(out, started, &exit.error));
                    }
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
                    if let Some(plan) = &side_plan {
                        let security = match offer_security(plan.tls, &offer.raw_tls_agent_sha256) {
                            Some(None) => Some(None),
                            Some(Some(pin)) => identity.clone().map(|id| Some((id, pin))),
                            None => None,
                        };
                        match security {
                            Some(tls) => side.offer(&plan.addr, offer.ticket, tls),
                            // Stdout stays on this stream.
                            None => self.inner.log(LogLevel::Debug, || {
                                format!(
                                    "exec {exec_id}: ignoring a side connection offer without TLS"
                                )
                            }),
                        }
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
        cwd: Option<&str>,
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
        if let Some(dir) = cwd {
            self.check_directory(&session_id, dir).await?;
        }
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
                return Err(stopped_at_timeout(out, started, timeout));
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

    /// Fails like native exec (OPERATION_FAILED, "could not start") when
    /// `dir` is not a directory on the machine.
    async fn check_directory(&self, session_id: &str, dir: &str) -> Result<()> {
        let req = FileGetInfoRpcRequest {
            session_id: session_id.to_string(),
            path: dir.to_string(),
        };
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let not_a_dir = |why: &str| {
            Error::OperationFailed(format!(
                "the command could not start: working directory '{dir}' is not a directory on the machine{why}; create it or pass another"
            ))
        };
        // Servers answer a missing path with NOT_FOUND (older ones with
        // success=false): either way the command cannot start there.
        let r = match self
            .inner
            .unary("FileGetInfo", req, policy, |mut c, r| async move {
                c.terminal.file_get_info(r).await
            })
            .await
        {
            Ok(r) => r,
            Err(Error::NotFound(why)) => return Err(not_a_dir(&format!(" ({why})"))),
            Err(e) => return Err(e),
        };
        let is_dir = r.success
            && r.result
                .and_then(|res| res.entry)
                .is_some_and(|e| e.r#type == StreamFileType::StreamDirectory as i32);
        if is_dir {
            Ok(())
        } else {
            Err(not_a_dir(&if r.error.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.error)
            }))
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

/// The command typed on the terminal path: `command` preceded by what
/// applies `opts` in its subshell (`export`, `cd`). NOT_SUPPORTED for what
/// the terminal cannot carry faithfully.
/// How long an ended Exec stream may take to deliver its trailers.
const TRAILERS_WAIT: Duration = Duration::from_secs(5);

/// Reads the trailers of an Exec stream whose exit event has arrived, off
/// the caller's path, so the stream ends the normal way. Dropped before
/// them, h2 resets it (RST_STREAM CANCEL); a connection that piles up
/// resets is eventually closed by h2 itself with ENHANCE_YOUR_CALM, which
/// fails every call then in flight on it.
fn finish_in_background(mut stream: tonic::Streaming<cmdop_proto::ext::ExecEvent>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(TRAILERS_WAIT, async {
            while let Ok(Some(_)) = stream.message().await {}
        })
        .await;
    });
}

fn terminal_command(command: &str, opts: &ExecOptions) -> Result<String> {
    let unsupported = |what: &str| {
        Error::NotSupported(format!(
            "{what} needs native exec, which this server or agent does not offer; update them, or do without it"
        ))
    };
    if !opts.stdin.is_empty() {
        return Err(unsupported("stdin for a command"));
    }
    let mut line = String::new();
    for (name, value) in &opts.env {
        let ident = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return Err(Error::InvalidArgument(format!(
                "'{name}' is not a valid environment variable name for the shell; use letters, digits and _"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(unsupported(&format!(
                "a control character (such as a newline) in the value of {name}"
            )));
        }
        line.push_str(&format!("export {name}={}; ", shell_quote(value)));
    }
    let dir = &opts.working_directory;
    if !dir.is_empty() {
        if dir.chars().any(char::is_control) {
            return Err(unsupported("a control character in the working directory"));
        }
        // As the agent resolves it: "~", "~/x" and relative paths from home.
        let target = if dir == "~" {
            "\"$HOME\"".to_string()
        } else if let Some(rest) = dir.strip_prefix("~/") {
            format!("\"$HOME\"/{}", shell_quote(rest))
        } else if dir.starts_with('/') {
            shell_quote(dir)
        } else {
            format!("\"$HOME\"/{}", shell_quote(dir))
        };
        line.push_str(&format!("cd -- {target} || exit 126; "));
    }
    line.push_str(command);
    Ok(line)
}

/// `s` in single quotes for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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

/// The error of a terminal-path command that ran out of `timeout` and that
/// this client interrupted itself (SIGINT, then SIGKILL), with what it
/// printed.
fn stopped_at_timeout(mut partial: ExecOutput, started: Instant, timeout: Duration) -> Error {
    partial.timed_out = true;
    partial.duration = started.elapsed();
    timeout_error(timeout, partial)
}

/// The error of a native command whose deadline (its timeout plus the grace
/// for the server's answer) passed without the agent reporting its end:
/// nothing confirmed that it was killed, so its outcome is unknown.
fn expired(partial: ExecOutput, started: Instant, timeout: Duration) -> Error {
    outcome_unknown(
        partial,
        started,
        &format!(
            "no answer from the agent within {} ms of the command's {} ms timeout",
            SERVER_TIMEOUT_GRACE.as_millis(),
            timeout.as_millis()
        ),
    )
}

/// The command reached the agent but how it ended is not known (`why`).
fn outcome_unknown(mut partial: ExecOutput, started: Instant, why: &str) -> Error {
    partial.exit_code = -1;
    partial.duration = started.elapsed();
    let why = if why.is_empty() {
        "the link to the agent was lost while it ran"
    } else {
        why
    };
    // The server's text already explains it; ours is for our own deadline.
    let message = if why.contains("may have finished") {
        format!("the command's outcome is unknown: {why}")
    } else {
        format!(
            "the command's outcome is unknown ({why}): it may have finished, may still be running, or may have died; it was not confirmed killed. Check on the machine before running it again"
        )
    };
    Error::OutcomeUnknown {
        message,
        partial: Some(Box::new(partial)),
    }
}

// Trailing metadata of servers that end an exec whose agent link was lost
// with UNAVAILABLE for callers that do not accept the unknown outcome
// (older paths); we accept it, but honour the mark either way.
use cmdop_proto::headers::EXEC_OUTCOME as OUTCOME_HEADER;

fn outcome_marked_unknown(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(OUTCOME_HEADER)
        .and_then(|v| v.to_str().ok())
        == Some("unknown")
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
    fn an_unconfirmed_end_is_unknown_never_killed() {
        let partial = ExecOutput {
            output: b"so far".to_vec(),
            ..Default::default()
        };
        let e = expired(partial, Instant::now(), Duration::from_secs(5));
        assert_eq!(e.kind(), super::super::ErrorKind::OutcomeUnknown);
        assert!(!e.to_string().contains("was killed"), "{e}");
        match e {
            Error::OutcomeUnknown { partial, .. } => {
                let p = partial.unwrap();
                assert_eq!(p.output, b"so far");
                assert_eq!(p.exit_code, -1);
                assert!(!p.timed_out);
            }
            other => panic!("{other:?}"),
        }
        let mut s = tonic::Status::unavailable("agent link lost");
        assert!(!outcome_marked_unknown(&s));
        s.metadata_mut()
            .insert(OUTCOME_HEADER, "unknown".parse().unwrap());
        assert!(outcome_marked_unknown(&s));
    }

    #[test]
    fn terminal_commands_apply_env_and_cwd_or_refuse() {
        let opts = ExecOptions {
            env: vec![("A_1".into(), "it's $x".into())],
            working_directory: "~/my dir".into(),
            ..Default::default()
        };
        assert_eq!(
            terminal_command("pwd", &opts).unwrap(),
            r#"export A_1='it'\''s $x'; cd -- "$HOME"/'my dir' || exit 126; pwd"#
        );
        let abs = ExecOptions {
            working_directory: "/tmp".into(),
            ..Default::default()
        };
        assert_eq!(
            terminal_command("ls", &abs).unwrap(),
            "cd -- '/tmp' || exit 126; ls"
        );
        assert_eq!(
            terminal_command("ls", &ExecOptions::default()).unwrap(),
            "ls"
        );
        let kind = |o: ExecOptions| terminal_command("x", &o).unwrap_err().kind();
        let stdin = ExecOptions {
            stdin: b"data".to_vec(),
            ..Default::default()
        };
        assert_eq!(kind(stdin), super::super::ErrorKind::NotSupported);
        let newline = ExecOptions {
            env: vec![("A".into(), "a\nb".into())],
            ..Default::default()
        };
        assert_eq!(kind(newline), super::super::ErrorKind::NotSupported);
        let bad_name = ExecOptions {
            env: vec![("1A".into(), "x".into())],
            ..Default::default()
        };
        assert_eq!(kind(bad_name), super::super::ErrorKind::InvalidArgument);
    }

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
