//! Native exec: one command over a `cmdop.ext.v1.Cmdop/Exec` (or
//! `ExecWithStdin`) stream, with its stdout moving to a side connection
//! when the server offers one, and the errors of an outcome that the agent
//! never confirmed.

use std::time::{Duration, Instant};

use cmdop_proto::caps;
use cmdop_proto::ext::exec_event::Event as ExecEv;
use cmdop_proto::ext::ExecRequest;
// Trailing metadata of servers that end an exec whose agent link was lost
// with UNAVAILABLE for callers that do not accept the unknown outcome
// (older paths); we accept it, but honour the mark either way.
use cmdop_proto::headers::EXEC_OUTCOME as OUTCOME_HEADER;

use super::exec::{deliver, timeout_error, ExecOptions, ExecOutput, Keep, Stream};
use super::exec_side::{offer_security, side_plan, SideStdout, SIDE_READ_BYTES};
use super::exec_stdin::{PipedInput, StdinReader};
use super::{CancelToken, Client, Error, LogLevel, Result};

/// Extra time the client waits for the server to report its own timeout.
const SERVER_TIMEOUT_GRACE: Duration = Duration::from_secs(3);

impl Client {
    /// Runs `command` over an Exec stream (ExecWithStdin with `stdin`);
    /// NOT_SUPPORTED when the server or agent answers UNIMPLEMENTED before
    /// any event, so that the caller can fall back to the terminal.
    // The arguments are the parts of one call, threaded through unchanged.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exec_native(
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
            let facts = self.inner.facts.lock();
            (facts.has(caps::EXEC_RAW), facts.has(caps::EXEC_RAW_TLS))
        };
        let mut side_plan = side_plan(&self.inner.opts, &self.inner.current_server(), plain, tls);
        // A terminal's output stays on the call.
        if opts.terminal.is_some() {
            side_plan = None;
        }
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
            terminal: opts.terminal.as_ref().map(super::Terminal::to_wire),
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
}

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
pub(super) fn outcome_unknown(mut partial: ExecOutput, started: Instant, why: &str) -> Error {
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

fn outcome_marked_unknown(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(OUTCOME_HEADER)
        .and_then(|v| v.to_str().ok())
        == Some("unknown")
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
}
