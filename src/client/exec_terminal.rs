//! The official terminal path: a command typed into the session's shell
//! with `SendInput`, its output read back with `GetOutput` until the
//! end marker (see [`super::marker`]) gives its exit code; stopped with
//! SIGINT, then SIGKILL. Used when native exec is not offered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmdop_proto::terminal::{
    FileGetInfoRpcRequest, GetOutputRequest, SendInputRequest, SendSignalRequest, StreamFileType,
};

use super::connection::{CallPolicy, Conn};
use super::exec::{deliver, timeout_error, ExecOptions, ExecOutput, Keep, Stream};
use super::marker::{
    find, idle_marker, idle_probe_line, marker_command_line, new_marker_id, MarkerScanner,
};
use super::{CancelToken, Client, Error, LogLevel, Result};

/// Terminal polling: first pause after sending, and the ceiling it backs
/// off to while the command prints nothing.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(50);
/// After SIGINT, how long to wait for the shell to come back before SIGKILL.
const INTERRUPT_GRACE: Duration = Duration::from_millis(1000);

impl Client {
    /// Runs `command` on the session's terminal, with `opts` applied in its
    /// subshell (see [`terminal_command`]).
    pub(super) async fn exec_terminal(
        &self,
        command: &str,
        opts: &ExecOptions,
        timeout: Duration,
        on_chunk: &mut (impl FnMut(Stream, &[u8]) + Send),
        cancel: &CancelToken,
        keep: Keep,
    ) -> Result<ExecOutput> {
        let line = terminal_command(command, opts).map_err(|e| self.inner.report(e))?;
        let cwd = Some(opts.working_directory.as_str()).filter(|d| !d.is_empty());
        self.exec_marked(&line, cwd, timeout, on_chunk, cancel, keep)
            .await
    }

    /// Types `command` with the end marker and collects its output until
    /// the marker reports its exit code.
    async fn exec_marked(
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
            self.inner
                .terminals
                .lock()
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
        let pinned = self.inner.conn.read().clone();
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
            // Closing the client ends its connection before its calls hear
            // of it: a closed client stops the command like a cancel does,
            // through the connection it was typed on.
            if cancel.is_cancelled() || self.is_closed() {
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
            let (data, more, total) = match self.read_output(None, &session_id, cursor).await {
                Ok(read) => read,
                // A read under way when the client closed: stopped above.
                Err(_) if cancel.is_cancelled() || self.is_closed() => continue,
                Err(e) => return Err(e),
            };
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

    /// The application closed this client.
    fn is_closed(&self) -> bool {
        *self.inner.state.borrow() == super::connection::ConnState::Closed
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

/// The error of a terminal-path command that ran out of `timeout` and that
/// this client interrupted itself (SIGINT, then SIGKILL), with what it
/// printed.
fn stopped_at_timeout(mut partial: ExecOutput, started: Instant, timeout: Duration) -> Error {
    partial.timed_out = true;
    partial.duration = started.elapsed();
    timeout_error(timeout, partial)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
