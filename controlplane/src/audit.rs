//! The audit trail as the services write it: [`Trail::begin`] before an
//! action proceeds (durable first: with `--audit-failure closed`, the
//! default, the action is refused with UNAVAILABLE when its record cannot
//! be written), [`Trail::finish`] with what it came to, [`Trail::note`] for
//! what needs no wait (refused calls). One writer task commits whatever
//! records are waiting in one transaction (group commit), so concurrent
//! calls share a commit instead of queueing for one each.
//!
//! Records never hold a secret: the actor is the key's name and prefix
//! (and token family), env variables appear by name only, and file
//! contents never. The store half is [`crate::store::Store::append_audit`].

use std::{sync::Arc, time::Instant};

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::store::{now_ms, AuditEntry, AuditOutcome, Store, Workspace};

/// What happens to an action whose record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditFailure {
    /// Refuse it with UNAVAILABLE (the default).
    #[default]
    Closed,
    /// Log the failure and let it go on.
    Open,
}

/// How the server keeps its audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    pub enabled: bool,
    pub failure: AuditFailure,
    /// Largest recording of one attached shell session (bytes).
    pub recording_max_bytes: usize,
    /// Records older than this are pruned (hourly); `None`: kept forever.
    pub retention: Option<std::time::Duration>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            failure: AuditFailure::Closed,
            recording_max_bytes: 1024 * 1024,
            retention: None,
        }
    }
}

/// How long an action waits for its record with `--audit-failure open`.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Records waiting at most for one commit; more wait for the next.
const MAX_BATCH: usize = 512;
/// Queue in front of the writer; a full queue means the database is far
/// behind, and new actions wait for room.
const QUEUE: usize = 4096;

enum Op {
    Append(AuditEntry, oneshot::Sender<Result<i64, String>>),
    Note(AuditEntry),
    Finish(i64, AuditOutcome),
    Recording(i64, String),
}

/// The server's audit writer.
pub struct Trail {
    tx: Option<mpsc::Sender<Op>>,
    failure: AuditFailure,
    replica: String,
    recording_max_bytes: usize,
}

/// An action's record, to finish when the action ends. Dropped without
/// [`Begun::finish`], it records the action as ended without an answer.
pub struct Begun {
    trail: Arc<Trail>,
    id: Option<i64>,
    started: Instant,
    done: bool,
}

impl Trail {
    /// A trail writing to `store` (started on the current runtime), or one
    /// that records nothing when `config.enabled` is false.
    pub fn start(store: Arc<Store>, config: AuditConfig, replica: String) -> Arc<Trail> {
        let tx = config.enabled.then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_batches(Arc::clone(&store), rx));
            tx
        });
        if let (true, Some(keep)) = (config.enabled, config.retention) {
            tokio::spawn(prune_every_hour(store, keep));
        }
        Arc::new(Trail {
            tx,
            failure: config.failure,
            replica,
            recording_max_bytes: config.recording_max_bytes,
        })
    }

    /// Whether shell sessions are recorded, and at most how many bytes each.
    pub fn recording_limit(&self) -> Option<usize> {
        (self.tx.is_some() && self.recording_max_bytes > 0).then_some(self.recording_max_bytes)
    }

    /// A record of `action` by the caller `ws` on a machine, with
    /// `detail` (a JSON object), before the action proceeds.
    pub fn entry(
        &self,
        ws: &Workspace,
        action: &str,
        machine_id: &str,
        hostname: &str,
        detail: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            workspace_id: ws.id.clone(),
            at_ms: now_ms(),
            replica: self.replica.clone(),
            actor: ws.scope.actor().to_string(),
            source: ws.source.clone(),
            action: action.to_string(),
            machine_id: machine_id.to_string(),
            hostname: hostname.to_string(),
            detail: detail.to_string(),
        }
    }

    /// Writes `entry` and waits until it is durable. UNAVAILABLE when it
    /// cannot be written and failures close (the action must not go on).
    pub async fn begin(self: &Arc<Self>, entry: AuditEntry) -> Result<Begun, Status> {
        let mut begun = Begun {
            trail: Arc::clone(self),
            id: None,
            started: Instant::now(),
            done: false,
        };
        let Some(tx) = &self.tx else {
            begun.done = true;
            return Ok(begun);
        };
        let (ack, answer) = oneshot::channel();
        let written = match tx.send(Op::Append(entry, ack)).await {
            // Closed: the action waits for its record, however long the
            // store takes to write it or to fail. Open: at most OPEN_WAIT;
            // a slower record is still written, the action goes on.
            Ok(()) => match self.failure {
                AuditFailure::Closed => answer
                    .await
                    .unwrap_or_else(|_| Err("the audit writer stopped".into())),
                AuditFailure::Open => match tokio::time::timeout(OPEN_WAIT, answer).await {
                    Ok(answer) => answer.unwrap_or_else(|_| Err("the audit writer stopped".into())),
                    Err(_) => Err(format!(
                        "the store did not write it within {} ms",
                        OPEN_WAIT.as_millis()
                    )),
                },
            },
            Err(_) => Err("the audit writer stopped".into()),
        };
        match written {
            Ok(id) => {
                begun.id = Some(id);
                Ok(begun)
            }
            Err(why) => match self.failure {
                AuditFailure::Closed => {
                    tracing::error!(error = %why, "cannot write an audit record; refusing the action");
                    Err(Status::unavailable(
                        "the control plane cannot write its audit trail, so it refuses actions \
                         for now; retry shortly (operators: check the database, or run \
                         `cmdop server --audit-failure open` to let actions go on unrecorded)",
                    ))
                }
                AuditFailure::Open => {
                    tracing::warn!(error = %why, "cannot write an audit record; the action goes on (--audit-failure open)");
                    begun.done = true;
                    Ok(begun)
                }
            },
        }
    }

    /// Records `entry` without waiting (a refused call: nothing proceeds).
    pub fn note(&self, entry: AuditEntry) {
        if let Some(tx) = &self.tx {
            if tx.try_send(Op::Note(entry)).is_err() {
                tracing::warn!("audit queue full; a refused call was not recorded");
            }
        }
    }
}

impl Begun {
    /// Keeps a recording of the action (a shell session) with its record.
    pub fn attach_recording(&self, cast: String) {
        if let (Some(id), Some(tx)) = (self.id, &self.trail.tx) {
            if tx.try_send(Op::Recording(id, cast)).is_err() {
                tracing::warn!(
                    record = id,
                    "audit queue full; a session recording was not kept"
                );
            }
        }
    }

    /// Records what the action came to (`duration_ms` is measured here).
    pub fn finish(mut self, mut outcome: AuditOutcome) {
        self.done = true;
        outcome.duration_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.send(outcome);
    }

    fn send(&self, outcome: AuditOutcome) {
        let (Some(id), Some(tx)) = (self.id, &self.trail.tx) else {
            return;
        };
        if tx.try_send(Op::Finish(id, outcome)).is_err() {
            tracing::warn!(record = id, "audit queue full; an outcome was not recorded");
        }
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        if !self.done {
            self.send(AuditOutcome {
                outcome: "ended without an answer (the call went away)".into(),
                duration_ms: i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
                ..AuditOutcome::default()
            });
        }
    }
}

/// The writer: takes what waits (up to [`MAX_BATCH`]), commits it in one
/// transaction on the blocking pool, answers every waiting call.
async fn write_batches(store: Arc<Store>, mut rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut entries = Vec::new();
        let mut acks = Vec::new();
        let mut outcomes = Vec::new();
        let mut recordings = Vec::new();
        for op in batch.drain(..) {
            match op {
                Op::Append(e, ack) => {
                    entries.push(e);
                    acks.push(Some(ack));
                }
                Op::Note(e) => {
                    entries.push(e);
                    acks.push(None);
                }
                Op::Finish(id, o) => outcomes.push((id, o)),
                Op::Recording(id, cast) => recordings.push((id, cast)),
            }
        }
        // One commit for the new records (their callers wait) and the
        // outcomes and recordings of earlier ones.
        let count = entries.len();
        let written = crate::db::with_store(&store, move |s| {
            s.write_audit(&entries, &outcomes, &recordings)
        })
        .await;
        if count > 0 {
            crate::metrics::audit_batch(count, written.is_ok());
        }
        match written {
            Ok(ids) => {
                for (ack, id) in acks.into_iter().zip(ids) {
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(id));
                    }
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(error = %why, "audit write failed");
                for ack in acks.into_iter().flatten() {
                    let _ = ack.send(Err(why.clone()));
                }
            }
        }
    }
}

/// Prunes records older than `keep`, now and every hour (every replica of
/// a cluster does; the store serializes them and the second finds nothing).
async fn prune_every_hour(store: Arc<Store>, keep: std::time::Duration) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        ticker.tick().await;
        let before = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        match crate::db::with_store(&store, move |s| s.prune_audit(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                records = n,
                "pruned audit records past --audit-retention-days"
            ),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot prune the audit trail; will retry in an hour")
            }
        }
    }
}

/// What a finished exec came to, in the trail's words.
pub fn exec_outcome(exit: &cmdop_proto::ext::ExecExit, bytes_out: i64) -> AuditOutcome {
    let outcome = if exit.outcome_unknown {
        "outcome unknown".to_string()
    } else if exit.timed_out {
        "timed out (killed)".to_string()
    } else if exit.signal != 0 {
        format!("killed by signal {}", exit.signal)
    } else if !exit.error.is_empty() {
        format!("failed: {}", exit.error)
    } else {
        format!("exit {}", exit.exit_code)
    };
    AuditOutcome {
        outcome,
        exit_code: (!exit.outcome_unknown).then_some(i64::from(exit.exit_code)),
        bytes_out,
        ..AuditOutcome::default()
    }
}
