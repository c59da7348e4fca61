//! The exec relay engine: starts one native exec on its machine's agent
//! (`start_exec`), relays the agent's updates to the client as `ExecEvent`s
//! with credit back to the agent (`relay`), moves streamed stdin the other
//! way (`forward_stdin`, with a terminal's resizes in order), hands stdout over to a side connection when one
//! was offered, and ends a call whose agent link was lost with an unknown
//! outcome (an exit event, or UNAVAILABLE marked with the outcome trailer).

use std::{pin::Pin, sync::Arc};

use cmdop_proto::ext::{
    exec_event, exec_input, ExecEvent, ExecExit, ExecInput, ExecRawOffer, ExecRawSwitch,
    ExecRequest, ExecStart, ExecStarted,
};
// Trailing metadata on UNAVAILABLE when the agent's link was lost while
// the command ran (for callers without `accept_unknown_outcome`).
use cmdop_proto::headers::EXEC_OUTCOME as OUTCOME_HEADER;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{
    limits, raw,
    sessions::{
        exec_link::{EXEC_WINDOW_BYTES, EXEC_WINDOW_CHUNKS, STDIN_WINDOW_BYTES},
        ExecLink, ExecUpdate, Session,
    },
    state::State,
    store::Workspace,
};

/// What [`start_exec`] returns: the client's event stream,
/// the agent's link, the exec id, and (with streamed stdin) the agent's
/// stdin acknowledgements.
pub(crate) type StartedExec = (
    ExecStream,
    Arc<ExecLink>,
    String,
    Option<tokio::sync::watch::Receiver<u64>>,
);

/// Response stream of Exec.
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecEvent, Status>> + Send + 'static>>;

/// The request's sizes, command and environment within the limits.
pub(crate) fn validate_exec(req: &ExecRequest) -> Result<(), Status> {
    limits::check_len("command", req.command.len(), limits::MAX_COMMAND_BYTES)?;
    limits::check_len("stdin", req.stdin.len(), limits::MAX_EXEC_STDIN_BYTES)?;
    limits::check_len(
        "working_directory",
        req.working_directory.len(),
        limits::MAX_PATH_BYTES,
    )?;
    limits::check_len(
        "session_id",
        req.session_id.len(),
        limits::MAX_SESSION_ID_BYTES,
    )?;
    limits::check_len(
        "machine_id",
        req.machine_id.len(),
        limits::MAX_SESSION_ID_BYTES,
    )?;
    if req.command.trim().is_empty() {
        return Err(Status::invalid_argument("command is empty"));
    }
    if req.env.len() > limits::MAX_EXEC_ENV_ENTRIES {
        return Err(Status::invalid_argument(format!(
            "{} environment variables given; the limit is {}",
            req.env.len(),
            limits::MAX_EXEC_ENV_ENTRIES
        )));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "invalid environment variable name or value for '{k}'"
            )));
        }
        limits::check_len(
            "environment variable",
            k.len() + v.len(),
            limits::MAX_EXEC_ENV_ENTRY_BYTES,
        )?;
    }
    if let Some(terminal) = &req.terminal {
        validate_terminal(terminal)?;
    }
    Ok(())
}

/// A terminal's size (and TERM) within what a pseudo-terminal takes.
pub(crate) fn validate_terminal(t: &cmdop_proto::ext::ExecTerminal) -> Result<(), Status> {
    if t.rows > u32::from(u16::MAX) || t.cols > u32::from(u16::MAX) {
        return Err(Status::invalid_argument(format!(
            "a terminal of {} rows and {} columns is too large; the limit is {} each",
            t.rows,
            t.cols,
            u16::MAX
        )));
    }
    limits::check_len("term", t.term.len(), cmdop_proto::limits::MAX_TERM_BYTES)?;
    if t.term.contains(|c: char| c.is_control()) {
        return Err(Status::invalid_argument(
            "term holds a control character; pass a TERM name such as xterm-256color",
        ));
    }
    Ok(())
}

/// Validates `req`, starts it on its machine's agent and returns the
/// client's event stream, the agent's link and the exec id. With
/// `stdin_open` the agent keeps stdin open for [`forward_stdin`]
/// (UNIMPLEMENTED when it cannot).
pub(crate) async fn start_exec(
    state: &State,
    ws: &Workspace,
    req: ExecRequest,
    stdin_open: bool,
    side: raw::SideTicket,
) -> Result<StartedExec, Status> {
    validate_exec(&req)?;
    let session = if !req.session_id.is_empty() {
        state
            .sessions
            .get(ws, &req.session_id)
            .ok_or_else(|| Status::not_found(format!("session '{}' not found", req.session_id)))?
    } else if !req.machine_id.is_empty() {
        state
            .sessions
            .by_machine(ws, &req.machine_id)
            .ok_or_else(|| crate::inventory::absent_machine(state, ws, &req.machine_id))?
    } else {
        return Err(Status::invalid_argument(
            "pass machine_id or session_id to choose the machine",
        ));
    };
    if !session.is_live() {
        return Err(session.offline_status());
    }
    let link = session.exec_link().ok_or_else(|| {
        Status::unimplemented(format!(
            "agent on {} does not support native exec; use the terminal (SendInput/GetOutput) path",
            session.info.hostname
        ))
    })?;
    if stdin_open && !link.takes_stdin() {
        return Err(Status::unimplemented(format!(
            "the agent on {} cannot take streamed stdin (exec-stdin.v1); update its cmdop agent",
            session.info.hostname
        )));
    }
    if req.terminal.is_some() && !link.runs_tty() {
        return Err(Status::unimplemented(format!(
            "the agent on {} cannot run commands in a terminal (exec-tty.v1); update its cmdop agent",
            session.info.hostname
        )));
    }
    let exec_id = format!("exec_{}", uuid::Uuid::new_v4().simple());
    // Valid until `relay` returns, however the call ends.
    let side_mode = raw::side_mode(
        state.config.tls.is_some(),
        // A terminal's output stays on the call.
        req.accept_raw_stdout && req.terminal.is_none(),
        &req.raw_tls_client_sha256,
        link.raw_stdout(),
        link.raw_stdout_tls(),
    );
    let ticket = match (&state.side_connections, side_mode) {
        // A forwarded call's ticket is the one its replica relays (none:
        // stdout stays on gRPC).
        (Some(rendezvous), Some(mode)) => {
            raw::relay::register(rendezvous, &exec_id, &side).map(|t| (t, mode))
        }
        _ => None,
    };
    let peer_pin = match &ticket {
        Some((_, raw::SideMode::Tls(pin))) => bytes::Bytes::copy_from_slice(pin),
        _ => bytes::Bytes::new(),
    };
    // On the record before it reaches the agent (refused when it cannot be).
    let mut env_names: Vec<&String> = req.env.keys().collect();
    env_names.sort();
    let detail = serde_json::json!({
        "command": req.command,
        "cwd": req.working_directory,
        "env": env_names,
        "stdin_bytes": req.stdin.len(),
        "stdin_streamed": stdin_open,
        "timeout_ms": req.timeout_ms,
        "terminal": req.terminal.is_some(),
    });
    let audit = state
        .audit
        .begin(state.audit.entry(
            ws,
            "exec",
            &session.machine_id,
            &session.info.hostname,
            detail,
        ))
        .await?;
    let acks = stdin_open.then(|| link.watch_stdin(&exec_id));
    let accept_unknown_outcome = req.accept_unknown_outcome;
    let started = link
        .start(ExecStart {
            exec_id: exec_id.clone(),
            command: req.command,
            stdin: req.stdin,
            env: req.env,
            working_directory: req.working_directory,
            timeout_ms: req.timeout_ms,
            window: None,
            raw_ticket: ticket
                .as_ref()
                .map(|(t, _)| t.as_str().to_owned())
                .unwrap_or_default(),
            stdin_open,
            raw_tls_peer_sha256: peer_pin,
            terminal: req.terminal,
        })
        .await;
    let updates = match started {
        Ok(updates) => updates,
        Err(status) => {
            link.forget_stdin(&exec_id);
            return Err(status);
        }
    };
    tracing::info!(session = %session.id, %exec_id, "exec started");
    let (tx, rx) = mpsc::channel(limits::EXEC_EVENT_QUEUE);
    // With an agent that reports pids, `started` waits for its `spawned`.
    let started_sent = !link.reports_spawned();
    if started_sent {
        let _ = tx.try_send(Ok(started_event(&exec_id, 0)));
    }
    let opts = RelayOptions {
        started_sent,
        accept_unknown_outcome,
        audit: Some(audit),
    };
    tokio::spawn(relay(
        session,
        Arc::clone(&link),
        exec_id.clone(),
        updates,
        tx,
        opts,
        ticket,
    ));
    Ok((Box::pin(ReceiverStream::new(rx)), link, exec_id, acks))
}

/// Moves a streamed-stdin exec's input from its call to the agent, keeping
/// at most [`STDIN_WINDOW_BYTES`] beyond what the agent acknowledged in
/// flight: while the window is spent it stops reading the call, and HTTP/2
/// flow control holds the caller back. `close_stdin` or the end of the
/// request stream sends EOF; a broken call just stops (the response side
/// cancels the exec).
pub(crate) async fn forward_stdin(
    link: Arc<ExecLink>,
    exec_id: String,
    mut input: tonic::Streaming<ExecInput>,
    mut acks: tokio::sync::watch::Receiver<u64>,
) {
    let mut sent = 0u64;
    loop {
        let room = sent.saturating_sub(*acks.borrow()) < STDIN_WINDOW_BYTES;
        let next = tokio::select! {
            // Ends (Err) once the exec is over: `relay` forgets its acks.
            changed = acks.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
            next = input.message(), if room => next,
            _ = link.closed() => break,
        };
        let close = match next {
            Ok(Some(ExecInput {
                part: Some(exec_input::Part::Stdin(data)),
            })) => {
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                if link.stdin(&exec_id, data, false).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(Some(ExecInput {
                part: Some(exec_input::Part::CloseStdin(close)),
            })) => close,
            Ok(Some(ExecInput {
                part: Some(exec_input::Part::Resize(size)),
            })) => {
                // A bad size is dropped rather than failing the command.
                if validate_terminal(&size).is_ok() && link.resize(&exec_id, size).await.is_err() {
                    break;
                }
                continue;
            }
            // A repeated `start` or a newer member: ignored.
            Ok(Some(_)) => false,
            Ok(None) => true,
            Err(_) => break,
        };
        if close {
            let _ = link.stdin(&exec_id, bytes::Bytes::new(), true).await;
            // Keep the call open (without reading it) until the exec ends,
            // so that its stdin half is not reset early.
            while acks.changed().await.is_ok() {}
            break;
        }
    }
    link.forget_stdin(&exec_id);
}

fn started_event(exec_id: &str, pid: u32) -> ExecEvent {
    ExecEvent {
        event: Some(exec_event::Event::Started(ExecStarted {
            exec_id: exec_id.to_owned(),
            pid,
        })),
    }
}

/// Where one exec stands on moving stdout to a side connection, so that
/// the client sees at most one `raw_offer` and then at most one
/// `raw_switch`, whatever the agent sends.
#[derive(Default)]
struct RawProgress {
    offered: bool,
    switched: bool,
}

impl RawProgress {
    /// The `raw_offer` event for the agent's `raw_offered` (with the
    /// agent's pin `agent_pin`), if due: only with a ticket, only the first
    /// time, and for a TLS side connection only with a well-formed pin (an
    /// offer without one would be plaintext).
    fn offer(
        &mut self,
        ticket: Option<&(raw::Ticket, raw::SideMode)>,
        agent_pin: bytes::Bytes,
    ) -> Option<exec_event::Event> {
        let (ticket, mode) = ticket.filter(|_| !self.offered)?;
        let agent_pin = match mode {
            raw::SideMode::Plain => bytes::Bytes::new(),
            raw::SideMode::Tls(_) => {
                cmdop_proto::raw_tls::parse_pin(&agent_pin)?;
                agent_pin
            }
        };
        self.offered = true;
        Some(exec_event::Event::RawOffer(ExecRawOffer {
            ticket: ticket.as_str().to_owned(),
            raw_tls_agent_sha256: agent_pin,
        }))
    }

    /// The `raw_switch` event for the agent's `raw_switched`, if due: only
    /// after an offer, and only the first time.
    fn switch(&mut self) -> Option<exec_event::Event> {
        if !self.offered || self.switched {
            return None;
        }
        self.switched = true;
        Some(exec_event::Event::RawSwitch(ExecRawSwitch {}))
    }
}

/// Output handed to one exec's client, and how much of it the agent has
/// been credited for.
struct CreditTracker {
    /// The agent honours credit for this exec (it got an `ExecWindow`).
    enabled: bool,
    delivered: u64,
    credited: u64,
    chunks_since_credit: u32,
}

impl CreditTracker {
    fn new(enabled: bool) -> Self {
        CreditTracker {
            enabled,
            delivered: 0,
            credited: 0,
            chunks_since_credit: 0,
        }
    }

    /// Counts one output chunk the client's stream accepted.
    fn delivered(&mut self, bytes: usize) {
        self.delivered += bytes as u64;
        self.chunks_since_credit += 1;
    }

    /// Credit to send now, if any: once a quarter of either window was
    /// handed on, or when nothing else is queued (so a sender that spent its
    /// window always hears back once the client took everything).
    fn due(&mut self, queue_empty: bool) -> Option<u64> {
        let owed = self.delivered - self.credited;
        let batch =
            owed >= EXEC_WINDOW_BYTES / 4 || self.chunks_since_credit >= EXEC_WINDOW_CHUNKS / 4;
        if !self.enabled || self.chunks_since_credit == 0 || !(batch || queue_empty) {
            return None;
        }
        self.credited = self.delivered;
        self.chunks_since_credit = 0;
        Some(self.delivered)
    }
}

/// How [`relay`] talks to its caller.
struct RelayOptions {
    /// `started` was sent already.
    started_sent: bool,
    /// The caller set `ExecRequest.accept_unknown_outcome`.
    accept_unknown_outcome: bool,
    /// The exec's audit record, finished with what it came to.
    audit: Option<crate::audit::Begun>,
}

/// Forwards one exec's events from the agent to the client, opening with
/// exactly one `started` (sent already unless `started_sent` is false).
/// Cancels the remote process if the client goes away; fails with
/// UNAVAILABLE if the agent does. With an agent that honours credit, grants
/// it more output only as the client's stream accepts what came before.
///
/// With a side-connection `ticket` the agent's `raw_offered` becomes the
/// client's `raw_offer` (once) and a later `raw_switched` its `raw_switch`
/// (once); without one both are dropped. The ticket is withdrawn when this
/// returns.
///
/// When the agent's link ends before the exit arrived, the outcome is
/// unknown (the command may have finished): callers that accept it get an
/// exit with `outcome_unknown`, others UNAVAILABLE marked with
/// [`OUTCOME_HEADER`].
async fn relay(
    session: Arc<Session>,
    link: Arc<ExecLink>,
    exec_id: String,
    mut updates: mpsc::Receiver<ExecUpdate>,
    tx: mpsc::Sender<Result<ExecEvent, Status>>,
    opts: RelayOptions,
    ticket: Option<(raw::Ticket, raw::SideMode)>,
) {
    /// However `relay` ends, the exec's stdin (if streamed) is over too.
    struct ForgetStdin<'a>(&'a ExecLink, &'a str);
    impl Drop for ForgetStdin<'_> {
        fn drop(&mut self) {
            self.0.forget_stdin(self.1);
        }
    }
    let exec_id_copy = exec_id.clone();
    let _stdin = ForgetStdin(&link, &exec_id_copy);
    let mut started_sent = opts.started_sent;
    let mut audit = opts.audit;
    let mut bytes_out: i64 = 0;
    let mut finish = |outcome: crate::store::AuditOutcome| {
        if let Some(record) = audit.take() {
            record.finish(outcome);
        }
    };
    let cancelled = || crate::store::AuditOutcome {
        outcome: "cancelled: the caller went away; the command was stopped".into(),
        ..Default::default()
    };
    let mut credit = CreditTracker::new(link.exec_credit());
    let mut raw = RawProgress::default();
    loop {
        let update = tokio::select! {
            update = updates.recv() => update,
            _ = tx.closed() => {
                tracing::info!(%exec_id, "exec client went away; cancelling");
                link.cancel(&exec_id);
                finish(cancelled());
                return;
            }
        };
        if !started_sent {
            // Normally `spawned`; a command that could not start goes
            // straight to `finished`.
            let pid = match &update {
                Some(ExecUpdate::Spawned { pid }) => *pid,
                Some(ExecUpdate::Finished(f)) => f.pid,
                _ => 0,
            };
            if tx.send(Ok(started_event(&exec_id, pid))).await.is_err() {
                link.cancel(&exec_id);
                finish(cancelled());
                return;
            }
            started_sent = true;
            if matches!(update, Some(ExecUpdate::Spawned { .. })) {
                continue;
            }
        }
        let output_len = match &update {
            Some(ExecUpdate::Output { data, .. }) => Some(data.len()),
            _ => None,
        };
        bytes_out += output_len.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let event = match update {
            // A repeated or unexpected `spawned` carries nothing new.
            Some(ExecUpdate::Spawned { .. }) => continue,
            Some(ExecUpdate::RawOffered { agent_pin }) => {
                match raw.offer(ticket.as_ref(), agent_pin) {
                    Some(event) => event,
                    None => continue,
                }
            }
            Some(ExecUpdate::RawSwitched) => match raw.switch() {
                Some(event) => event,
                None => continue,
            },
            Some(ExecUpdate::Output {
                data,
                is_stderr: false,
            }) => exec_event::Event::Stdout(data),
            Some(ExecUpdate::Output {
                data,
                is_stderr: true,
            }) => exec_event::Event::Stderr(data),
            Some(ExecUpdate::Finished(finished)) => {
                let exit = finished.exit.unwrap_or(ExecExit {
                    exit_code: -1,
                    ..Default::default()
                });
                tracing::info!(
                    %exec_id,
                    exit_code = exit.exit_code,
                    signal = exit.signal,
                    timed_out = exit.timed_out,
                    raw_stdout_bytes = exit.raw_stdout_bytes,
                    "exec finished"
                );
                let raw = i64::try_from(exit.raw_stdout_bytes).unwrap_or(i64::MAX);
                finish(crate::audit::exec_outcome(
                    &exit,
                    bytes_out.saturating_add(raw),
                ));
                let _ = tx
                    .send(Ok(ExecEvent {
                        event: Some(exec_event::Event::Exit(exit)),
                    }))
                    .await;
                return;
            }
            None => {
                let message = session.outcome_unknown_message();
                tracing::warn!(%exec_id, session = %session.id, "agent link lost during exec; outcome unknown");
                finish(crate::store::AuditOutcome {
                    outcome: "outcome unknown (the agent's link was lost)".into(),
                    bytes_out,
                    ..Default::default()
                });
                let ending = if opts.accept_unknown_outcome {
                    Ok(ExecEvent {
                        event: Some(exec_event::Event::Exit(ExecExit {
                            exit_code: -1,
                            outcome_unknown: true,
                            error: message,
                            ..Default::default()
                        })),
                    })
                } else {
                    let mut status = Status::unavailable(message);
                    status.metadata_mut().insert(
                        OUTCOME_HEADER,
                        tonic::metadata::MetadataValue::from_static("unknown"),
                    );
                    Err(status)
                };
                let _ = tx.send(ending).await;
                return;
            }
        };
        if tx.send(Ok(ExecEvent { event: Some(event) })).await.is_err() {
            link.cancel(&exec_id);
            finish(cancelled());
            return;
        }
        if let Some(len) = output_len {
            credit.delivered(len);
            if let Some(delivered) = credit.due(updates.is_empty()) {
                // A failure means the link is gone; `updates` ends next.
                let _ = link.credit(&exec_id, delivered).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_batches_but_always_answers_a_drained_queue() {
        let mut credit = CreditTracker::new(true);
        credit.delivered(1000);
        assert_eq!(credit.due(false), None, "small output waits for a batch");
        assert_eq!(credit.due(true), Some(1000), "an idle queue flushes it");
        assert_eq!(credit.due(true), None, "nothing new, nothing sent");

        for _ in 0..4 {
            credit.delivered(64 * 1024);
        }
        assert_eq!(
            credit.due(false),
            Some(1000 + 4 * 64 * 1024),
            "a quarter window"
        );

        for _ in 0..EXEC_WINDOW_CHUNKS / 4 {
            credit.delivered(1);
        }
        assert!(credit.due(false).is_some(), "a quarter of the chunks");
    }

    #[test]
    fn raw_events_need_a_ticket_and_come_once_in_order() {
        let rendezvous = raw::Rendezvous::new(raw::PAIRING_TIMEOUT);
        let ticket = (rendezvous.register("exec_test"), raw::SideMode::Plain);
        let none = bytes::Bytes::new;

        let mut without = RawProgress::default();
        assert!(without.offer(None, none()).is_none(), "no ticket, no offer");
        assert!(without.switch().is_none());

        let mut raw = RawProgress::default();
        assert!(raw.switch().is_none(), "no switch before an offer");
        assert!(matches!(
            raw.offer(Some(&ticket), bytes::Bytes::from_static(&[7; 32])),
            Some(exec_event::Event::RawOffer(o))
                if o.ticket == ticket.0.as_str() && o.raw_tls_agent_sha256.is_empty()
        ));
        assert!(raw.offer(Some(&ticket), none()).is_none(), "one offer");
        assert!(matches!(
            raw.switch(),
            Some(exec_event::Event::RawSwitch(_))
        ));
        assert!(raw.switch().is_none(), "one switch");
    }

    #[test]
    fn no_credit_for_agents_without_the_capability() {
        let mut credit = CreditTracker::new(false);
        credit.delivered(EXEC_WINDOW_BYTES as usize);
        assert_eq!(credit.due(true), None);
    }
}
