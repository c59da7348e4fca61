//! ExecFleet: one command on every online machine a selector and host list
//! choose, fanned out by the control plane so that the caller makes one
//! call however many machines there are.
//!
//! The selection comes from the inventory (on a cluster, the whole
//! workspace with presence from every replica). Each online machine runs
//! one Exec where its agent is: through [`crate::exec_relay`] when its
//! session is on this replica, else as an Exec call to the owner replica's
//! peer port. Every machine's exec is read by a task of its own, so a
//! machine that is slow (or silent) holds nothing but itself; all of them
//! hand their events to one bounded queue that is the caller's stream.
//! While the caller reads slowly, each running machine keeps at most its
//! exec's credit window (1 MiB) queued here, or its peer stream's HTTP/2
//! window for a machine on another replica, and its agent stops reading
//! the command's output: memory is bounded by `parallel` windows.
//! When the caller goes away the fan-out is dropped, and with it every
//! running machine's task and exec stream, which cancels those commands
//! as dropping a plain Exec does. Nothing is ever resent.

use std::{pin::Pin, sync::Arc, time::Duration};

use cmdop_proto::{
    ext::{
        exec_event, exec_fleet_event, exec_fleet_not_run::Reason, ExecEvent, ExecExit,
        ExecFleetEvent, ExecFleetFailed, ExecFleetNotRun, ExecFleetRequest, ExecRequest,
        ExecStarted, Machine,
    },
    limits::{DEFAULT_FLEET_PARALLEL, MAX_FLEET_MACHINES, MAX_FLEET_PARALLEL, MAX_MESSAGE_BYTES},
};
use futures::{Stream, StreamExt};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::{
    cluster::{routes::Target, Caller},
    exec_relay::{start_exec, validate_exec, ExecStream},
    inventory::{self, Scope},
    state::SharedState,
    store::Workspace,
};

/// Response stream of ExecFleet.
pub type ExecFleetStream =
    Pin<Box<dyn Stream<Item = Result<ExecFleetEvent, Status>> + Send + 'static>>;

/// Events waiting for the caller: while it is full, every machine's task
/// waits to hand on its next event (and its agent, out of credit, stops
/// reading the command's output), so a slow caller costs no memory.
const EVENT_QUEUE: usize = 64;

/// How long past a machine's timeout its end may take to arrive before it
/// is reported as unknown (the agent kills at the timeout and reports).
const TIMEOUT_GRACE: Duration = Duration::from_secs(3);

/// How long an ended exec stream may take to deliver its trailers.
const TRAILERS_WAIT: Duration = Duration::from_secs(5);

/// How to pace the online machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pacing {
    parallel: usize,
    batch_size: usize,
    batch_percent: usize,
    max_failures: Option<usize>,
}

impl Pacing {
    fn of(req: &ExecFleetRequest) -> Result<Pacing, Status> {
        let parallel = match req.parallel as usize {
            0 => DEFAULT_FLEET_PARALLEL,
            n if n > MAX_FLEET_PARALLEL => {
                return Err(Status::invalid_argument(format!(
                    "parallel is {n}; at most {MAX_FLEET_PARALLEL} machines run at once in one ExecFleet"
                )))
            }
            n => n,
        };
        if req.batch_size > 0 && req.batch_percent > 0 {
            return Err(Status::invalid_argument(
                "give batch_size or batch_percent, not both",
            ));
        }
        if req.batch_percent > 100 {
            return Err(Status::invalid_argument(format!(
                "batch_percent is {}; give 1 to 100 (% of the online machines)",
                req.batch_percent
            )));
        }
        Ok(Pacing {
            parallel,
            batch_size: req.batch_size as usize,
            batch_percent: req.batch_percent as usize,
            max_failures: req.max_failures.map(|n| n as usize),
        })
    }

    /// Machines per batch out of `targets` online ones (at least 1).
    fn batch(&self, targets: usize) -> usize {
        if self.batch_size > 0 {
            self.batch_size
        } else if self.batch_percent > 0 {
            (targets * self.batch_percent).div_ceil(100).max(1)
        } else {
            targets.max(1)
        }
    }
}

/// What every machine's task shares.
struct Job {
    state: SharedState,
    ws: Workspace,
    /// Who asks, in a cluster (machines on other replicas are run through
    /// them); `None` on a single server and for calls from another replica.
    caller: Option<Caller>,
    /// The Exec of each machine, machine_id left empty.
    template: ExecRequest,
    accept_unknown_outcome: bool,
    tx: mpsc::Sender<Result<ExecFleetEvent, Status>>,
}

/// Validates the request, selects the machines and returns the caller's
/// stream, the fan-out running behind it.
pub async fn start(
    state: SharedState,
    ws: Workspace,
    caller: Option<Caller>,
    ticket: Option<Arc<crate::streams::Ticket>>,
    req: ExecFleetRequest,
) -> Result<ExecFleetStream, Status> {
    let mut pacing = Pacing::of(&req)?;
    // A fan-out runs at most as many machines at once as its key has exec
    // slots free: it holds the call's own slot and takes up to
    // `parallel - 1` more for its life, so plain execs and fan-outs of one
    // key share one bound on this replica. The owners of its machines
    // count none of them again (no key header on the peer calls).
    pacing.parallel = pacing
        .parallel
        .min(state.config.limits.execs_per_key.max(1));
    let slots = match &ticket {
        Some(t) => {
            let more = t.more(pacing.parallel.saturating_sub(1));
            pacing.parallel = 1 + more.len();
            more
        }
        None => Vec::new(),
    };
    let template = ExecRequest {
        command: req.command,
        stdin: req.stdin,
        env: req.env,
        working_directory: req.working_directory,
        timeout_ms: req.timeout_ms,
        accept_unknown_outcome: true,
        ..Default::default()
    };
    validate_exec(&template)?;
    let remote = match &caller {
        Some(caller) => inventory::live_elsewhere(&state, caller).await,
        None => Vec::new(),
    };
    let machines = inventory::select(
        &state,
        &ws,
        &req.selector,
        &req.hosts,
        Scope::Workspace(remote),
    )
    .await?;
    if machines.is_empty() {
        return Err(Status::not_found(format!(
            "no machine matches the selector '{}' and the hosts '{}'",
            req.selector, req.hosts
        )));
    }
    if machines.len() > MAX_FLEET_MACHINES {
        return Err(Status::invalid_argument(format!(
            "the selection has {} machines; one ExecFleet runs on at most {MAX_FLEET_MACHINES}: \
             narrow the selector or split the host list over several calls",
            machines.len()
        )));
    }
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let job = Arc::new(Job {
        state,
        ws,
        caller,
        template,
        accept_unknown_outcome: req.accept_unknown_outcome,
        tx: tx.clone(),
    });
    tracing::info!(
        machines = machines.len(),
        parallel = pacing.parallel,
        "exec fleet started"
    );
    tokio::spawn(async move {
        // Held until the fan-out ends.
        let _slots = slots;
        // The caller went away: dropping the fan-out drops every running
        // machine's task and exec stream, which cancels those commands.
        tokio::select! {
            _ = fan_out(job, pacing, machines) => {}
            _ = tx.closed() => tracing::info!("exec fleet client went away; cancelling"),
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Hands `event` of `machine_id` to the caller; false once it is gone.
async fn send(job: &Job, machine_id: &str, event: exec_fleet_event::Event) -> bool {
    job.tx
        .send(Ok(ExecFleetEvent {
            machine_id: machine_id.to_string(),
            event: Some(event),
        }))
        .await
        .is_ok()
}

fn not_run(reason: Reason, message: String) -> exec_fleet_event::Event {
    exec_fleet_event::Event::NotRun(ExecFleetNotRun {
        reason: reason as i32,
        message,
    })
}

/// Announces the selection, reports the offline machines and runs the
/// online ones, batch after batch, at most `parallel` at once.
async fn fan_out(job: Arc<Job>, pacing: Pacing, machines: Vec<Machine>) {
    for m in &machines {
        let id = m.machine_id.clone();
        if !send(&job, &id, exec_fleet_event::Event::Selected(m.clone())).await {
            return;
        }
    }
    let mut targets = Vec::new();
    for m in machines {
        if m.status == "connected" {
            targets.push(m);
        } else if !send(&job, &m.machine_id, not_run(Reason::Offline, String::new())).await {
            return;
        }
    }
    let batch = pacing.batch(targets.len());
    let mut failures = 0usize;
    let mut pending = targets.into_iter();
    loop {
        let this_batch: Vec<Machine> = pending.by_ref().take(batch).collect();
        if this_batch.is_empty() {
            break;
        }
        let mut this_batch = this_batch.into_iter();
        let mut running = JoinSet::new();
        loop {
            while running.len() < pacing.parallel {
                let Some(m) = this_batch.next() else { break };
                if pacing.max_failures.is_some_and(|k| failures >= k) {
                    let why = not_run(Reason::AfterMaxFailures, String::new());
                    if !send(&job, &m.machine_id, why).await {
                        return;
                    }
                    continue;
                }
                running.spawn(run_one(Arc::clone(&job), m));
            }
            match running.join_next().await {
                Some(Ok(true)) => failures += 1,
                Some(Ok(false)) => {}
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "an exec fleet machine's task failed");
                    failures += 1;
                }
                None => break,
            }
        }
    }
}

/// How one machine ended, as sent to the caller.
enum End {
    Exit(ExecExit),
    NotRun(Reason, String),
    Failed(Status),
    /// It reached the agent, but how it ended is not known.
    Unknown(String),
}

impl End {
    /// Ran and did not exit 0 (counts towards the failure limit).
    fn failed(&self) -> bool {
        match self {
            End::Exit(x) => x.exit_code != 0 || x.signal != 0 || x.timed_out || x.outcome_unknown,
            End::NotRun(..) => false,
            End::Failed(_) | End::Unknown(_) => true,
        }
    }

    fn event(self, accept_unknown_outcome: bool) -> exec_fleet_event::Event {
        match self {
            End::Exit(x) => exec_fleet_event::Event::Exit(x),
            End::NotRun(reason, why) => not_run(reason, why),
            End::Failed(s) => exec_fleet_event::Event::Failed(ExecFleetFailed {
                code: s.code() as i32,
                message: s.message().to_string(),
                outcome_unknown: false,
            }),
            End::Unknown(why) if accept_unknown_outcome => {
                exec_fleet_event::Event::Exit(ExecExit {
                    exit_code: -1,
                    outcome_unknown: true,
                    error: why,
                    ..Default::default()
                })
            }
            End::Unknown(why) => exec_fleet_event::Event::Failed(ExecFleetFailed {
                code: Code::Unavailable as i32,
                message: why,
                outcome_unknown: true,
            }),
        }
    }
}

/// Runs one machine to its end and reports it; true when it failed.
async fn run_one(job: Arc<Job>, m: Machine) -> bool {
    let id = m.machine_id;
    let started = exec_fleet_event::Event::Started(ExecStarted::default());
    if !send(&job, &id, started).await {
        return false;
    }
    let end = match open(&job, &id).await {
        Ok(stream) => relay(&job, &id, stream).await,
        Err(status) => match status.code() {
            // Not started: the machine left, its replica was unreachable.
            Code::Unavailable => End::NotRun(Reason::Refused, status.message().to_string()),
            Code::Unimplemented => End::NotRun(Reason::Unsupported, status.message().to_string()),
            _ => End::Failed(status),
        },
    };
    let failed = end.failed();
    send(&job, &id, end.event(job.accept_unknown_outcome)).await;
    failed
}

/// Starts machine `machine_id`'s exec where its agent is.
async fn open(job: &Job, machine_id: &str) -> Result<ExecStream, Status> {
    let state = &job.state;
    let req = ExecRequest {
        machine_id: machine_id.to_string(),
        ..job.template.clone()
    };
    let here = state
        .sessions
        .by_machine(&job.ws, machine_id)
        .is_some_and(|s| s.is_live());
    if let (false, Some(cluster), Some(caller)) = (here, &state.cluster, &job.caller) {
        let target = cluster
            .resolve_machine(&state.sessions, &state.store, &job.ws, machine_id)
            .await?;
        if let Target::Remote { route, addr } = target {
            if cluster.is_unreachable(&addr) {
                cluster.routes.forget(&route);
                return Err(crate::cluster::routes::replica_gone(&route));
            }
            // The fan-out already holds the key's exec slot: the owner
            // counts none for its machines (no key header).
            let caller = Caller {
                key_hash: None,
                ..caller.clone()
            };
            let mut client =
                cmdop_proto::ext::cmdop_client::CmdopClient::new(cluster.channel(&addr)?)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES);
            return match client.exec(cluster.peer_stream_request(&caller, req)).await {
                Ok(response) => Ok(Box::pin(response.into_inner())),
                Err(status) => {
                    if matches!(
                        status.code(),
                        Code::NotFound | Code::Unavailable | Code::FailedPrecondition
                    ) {
                        cluster.routes.forget(&route);
                    }
                    Err(status)
                }
            };
        }
    }
    let (stream, ..) =
        start_exec(state, &job.ws, req, false, crate::raw::SideTicket::Fresh).await?;
    Ok(stream)
}

/// Hands one started exec's output on, in order, and returns its end.
async fn relay(job: &Job, machine_id: &str, mut stream: ExecStream) -> End {
    let deadline = (job.template.timeout_ms > 0).then(|| {
        tokio::time::Instant::now()
            + Duration::from_millis(u64::from(job.template.timeout_ms))
            + TIMEOUT_GRACE
    });
    let end = loop {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    break End::Unknown(format!(
                        "no answer from the agent within {} ms of the command's {} ms timeout",
                        TIMEOUT_GRACE.as_millis(),
                        job.template.timeout_ms
                    ))
                }
            },
            None => stream.next().await,
        };
        let event = match next {
            Some(Ok(ExecEvent { event: Some(event) })) => event,
            Some(Ok(ExecEvent { event: None })) => continue,
            Some(Err(status)) => break lost(status),
            None => {
                break End::Unknown(
                    "the machine's exec stream ended before its exit was reported".into(),
                )
            }
        };
        let out = match event {
            exec_event::Event::Stdout(b) => exec_fleet_event::Event::Stdout(b),
            exec_event::Event::Stderr(b) => exec_fleet_event::Event::Stderr(b),
            exec_event::Event::Exit(x) => break End::Exit(x),
            // `started` went out when the machine was dispatched; no side
            // connections are asked for.
            exec_event::Event::Started(_)
            | exec_event::Event::RawOffer(_)
            | exec_event::Event::RawSwitch(_) => continue,
        };
        if !send(job, machine_id, out).await {
            // The caller is gone: dropping the stream cancels the command.
            return End::Failed(Status::cancelled("the caller went away"));
        }
    };
    // Let the stream end the normal way (its trailers), off this path: a
    // peer connection that piles up resets is closed by h2 itself.
    if matches!(end, End::Exit(_)) {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TRAILERS_WAIT, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        });
    }
    end
}

/// The end of an exec whose stream failed after the command was handed to
/// its agent: unknown when the link (to the agent or the owner replica)
/// was lost, else the error.
fn lost(status: Status) -> End {
    let marked = status
        .metadata()
        .get(cmdop_proto::headers::EXEC_OUTCOME)
        .and_then(|v| v.to_str().ok())
        == Some("unknown");
    if marked
        || matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        )
    {
        let why = if status.message().is_empty() {
            "the link to the machine was lost while the command ran".to_string()
        } else {
            status.message().to_string()
        };
        End::Unknown(why)
    } else {
        End::Failed(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_is_checked_and_batches_are_counts_or_shares() {
        let req = |parallel, batch_size, batch_percent| ExecFleetRequest {
            parallel,
            batch_size,
            batch_percent,
            ..Default::default()
        };
        assert_eq!(
            Pacing::of(&req(0, 0, 0)).unwrap().parallel,
            DEFAULT_FLEET_PARALLEL
        );
        let too_many = Pacing::of(&req(MAX_FLEET_PARALLEL as u32 + 1, 0, 0)).unwrap_err();
        assert_eq!(too_many.code(), Code::InvalidArgument);
        assert!(too_many.message().contains("256"), "{}", too_many.message());
        assert!(Pacing::of(&req(1, 2, 3)).is_err());
        assert!(Pacing::of(&req(1, 0, 101)).is_err());
        assert_eq!(Pacing::of(&req(1, 3, 0)).unwrap().batch(10), 3);
        assert_eq!(Pacing::of(&req(1, 0, 25)).unwrap().batch(10), 3);
        assert_eq!(Pacing::of(&req(1, 0, 0)).unwrap().batch(7), 7);
        assert_eq!(Pacing::of(&req(1, 0, 1)).unwrap().batch(0), 1);
    }

    #[test]
    fn only_a_confirmed_exit_zero_is_not_a_failure() {
        let exit = |code, signal, timed_out| {
            End::Exit(ExecExit {
                exit_code: code,
                signal,
                timed_out,
                ..Default::default()
            })
        };
        assert!(!exit(0, 0, false).failed());
        assert!(exit(3, 0, false).failed());
        assert!(exit(-1, 9, false).failed());
        assert!(exit(-1, 9, true).failed());
        assert!(End::Unknown("lost".into()).failed());
        assert!(!End::NotRun(Reason::Refused, "gone".into()).failed());
        match End::Unknown("lost".into()).event(true) {
            exec_fleet_event::Event::Exit(x) => assert!(x.outcome_unknown && x.exit_code == -1),
            other => panic!("{other:?}"),
        }
        match End::Unknown("lost".into()).event(false) {
            exec_fleet_event::Event::Failed(f) => {
                assert!(f.outcome_unknown && f.code == Code::Unavailable as i32)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lost(Status::unavailable("agent gone")),
            End::Unknown(_)
        ));
        assert!(matches!(
            lost(Status::permission_denied("no")),
            End::Failed(_)
        ));
    }
}
