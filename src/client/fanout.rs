//! One command on many machines: the machines a label selector and a host
//! list choose (ext ListMachines), run with a concurrency limit, in rolling
//! batches, stopping new starts after a number of failures; every machine
//! ends with an exact [`Outcome`], and nothing is sent twice.
//!
//! A server listing `exec-fleet.v1` runs the fan-out itself
//! ([`super::fanout_server`]): one call, one stream, whatever the size of
//! the selection. Otherwise the fan-out runs here, one Exec per machine
//! over the client's connection.
//!
//! The executes run as futures of the caller's own task (no task per
//! machine): the events callback is therefore never called from two
//! threads at once, and a machine's output reaches it in order. A slow
//! machine holds only its own execute (HTTP/2 flow control per stream).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;

use cmdop_proto::caps;
pub use cmdop_proto::limits::MAX_FLEET_PARALLEL;

use super::{
    CancelToken, Client, Error, ExecOptions, FleetMachine, LogLevel, MachineInfo, Result, Stream,
};

/// Machines run at once unless told otherwise: enough to keep a few
/// hundred machines busy without opening a stream per machine at once.
pub const DEFAULT_PARALLEL: usize = 64;

/// Which machines, and how to pace them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetExec {
    /// Label selector (`env=prod,role in (web,api)`); "" = any.
    pub selector: String,
    /// Hostnames or globs, comma-separated (`web-1,db-*`); "" = any.
    pub hosts: String,
    /// Most machines running at once; 0 = [`DEFAULT_PARALLEL`].
    pub parallel: usize,
    /// Rolling batches: the next batch starts once the previous finished.
    /// `None` = one batch of every machine.
    pub batch: Option<Batch>,
    /// Start no further machine once this many failed (non-zero exit,
    /// signal, timeout, unknown outcome, error). `None` = no limit.
    pub max_failures: Option<usize>,
}

impl Default for FleetExec {
    fn default() -> FleetExec {
        FleetExec {
            selector: String::new(),
            hosts: String::new(),
            parallel: DEFAULT_PARALLEL,
            batch: None,
            max_failures: None,
        }
    }
}

/// The size of a rolling batch: a count or a share of the online machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Machines(usize),
    /// 1–100 % of the online machines, rounded up.
    Percent(usize),
}

impl Batch {
    /// Machines per batch out of `targets` online ones (at least 1).
    pub fn size(self, targets: usize) -> usize {
        match self {
            Batch::Machines(n) => n.max(1),
            Batch::Percent(p) => (targets * p.min(100)).div_ceil(100).max(1),
        }
    }
}

/// Why a machine of the selection never ran the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRun {
    /// Not connected when the fan-out started.
    Offline,
    /// Not started because the failure limit was reached.
    AfterMaxFailures,
    /// Not started because the fan-out was cancelled.
    Cancelled,
    /// Refused before it reached the machine (e.g. its agent left).
    Refused(String),
}

impl fmt::Display for NotRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotRun::Offline => f.write_str("offline"),
            NotRun::AfterMaxFailures => f.write_str("not started: the failure limit was reached"),
            NotRun::Cancelled => f.write_str("not started: cancelled"),
            NotRun::Refused(why) => write!(f, "refused before it reached the machine: {why}"),
        }
    }
}

/// How one machine's run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The command exited with this status.
    Exited(i32),
    /// The command was killed by this signal.
    Signal(i32),
    /// The time limit passed and the kill was confirmed.
    Timeout,
    /// The command was started but its end is not known (e.g. the agent's
    /// link was lost while it ran); it was not sent again.
    Unknown(String),
    /// The execute failed otherwise (cancelled while running, an error).
    Failed(Error),
    /// The command never ran there.
    NotRun(NotRun),
}

impl Outcome {
    /// Ran and exited 0.
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// The command was (or may have been) started on the machine.
    pub fn ran(&self) -> bool {
        !matches!(self, Outcome::NotRun(_))
    }

    /// A stable one-word name: ok, failed, timeout, outcome_unknown, error,
    /// not_run.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Exited(0) => "ok",
            Outcome::Exited(_) | Outcome::Signal(_) => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Unknown(_) => "outcome_unknown",
            Outcome::Failed(_) => "error",
            Outcome::NotRun(_) => "not_run",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exit {code}"),
            Outcome::Signal(sig) => write!(f, "killed by signal {sig}"),
            Outcome::Timeout => f.write_str("timed out (killed)"),
            Outcome::Unknown(why) => write!(f, "outcome unknown: {why}"),
            Outcome::Failed(e) => write!(f, "{e}"),
            Outcome::NotRun(why) => write!(f, "did not run: {why}"),
        }
    }
}

/// One machine of a fan-out and how it ended.
#[derive(Debug, Clone)]
pub struct MachineResult {
    pub machine: FleetMachine,
    pub outcome: Outcome,
    /// What the command printed (the part kept before a timeout or a lost
    /// link too); empty with `discard_output`.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From the start of this machine's execute to its end; zero when it
    /// did not run.
    pub duration: Duration,
}

impl MachineResult {
    pub(super) fn not_run(machine: FleetMachine, why: NotRun) -> MachineResult {
        MachineResult {
            machine,
            outcome: Outcome::NotRun(why),
            stdout: Vec::new(),
            stderr: Vec::new(),
            duration: Duration::ZERO,
        }
    }
}

/// What a fan-out reports while it runs, in order per machine.
pub enum FleetEvent<'a> {
    /// A chunk of one machine's output.
    Output {
        machine: &'a FleetMachine,
        stream: Stream,
        data: &'a [u8],
    },
    /// One machine ended (also those that did not run).
    Finished(&'a MachineResult),
}

impl From<&FleetMachine> for MachineInfo {
    fn from(m: &FleetMachine) -> MachineInfo {
        MachineInfo {
            machine_id: m.machine_id.clone(),
            hostname: m.hostname.clone(),
            session_id: m.session_id.clone(),
            status: m.status.clone(),
            os: m.os.clone(),
            shell: String::new(),
            native_exec: m.native_exec,
        }
    }
}

impl Client {
    /// Runs `command` with `opts` on every online machine `fleet` selects
    /// (`opts.machine` is ignored), handing output chunks and each machine's
    /// end to `on_event` as they come. Returns every selected machine's
    /// result (offline ones as not run), sorted by hostname.
    ///
    /// Cancelling `cancel` stops the running commands and starts no more.
    /// Errors: those of [`Client::list_machines`]; NotFound when nothing
    /// matches.
    ///
    /// A server that lists `exec-fleet.v1` fans the command out itself:
    /// one ExecFleet call for the whole selection (parallelism capped at
    /// [`MAX_FLEET_PARALLEL`]); others get one Exec per machine from here.
    pub async fn execute_on_fleet(
        &self,
        command: &str,
        opts: &ExecOptions,
        fleet: &FleetExec,
        on_event: impl FnMut(FleetEvent<'_>) + Send,
        cancel: CancelToken,
    ) -> Result<Vec<MachineResult>> {
        let on_server = self.inner.facts.lock().has(caps::EXEC_FLEET);
        let on_event = Mutex::new(on_event);
        if on_server && !cancel.is_cancelled() {
            match self
                .fan_out_on_server(command, opts, fleet, &on_event, &cancel)
                .await
            {
                // The server stopped offering it (e.g. restarted without).
                Err(Error::NotSupported(why)) => self.inner.log(LogLevel::Debug, || {
                    format!("server-side fan-out unavailable ({why}); one Exec per machine")
                }),
                other => return other,
            }
        }
        self.fan_out_here(command, opts, fleet, &on_event, cancel)
            .await
    }

    /// The fan-out run from here: one Exec per machine.
    async fn fan_out_here<F: FnMut(FleetEvent<'_>) + Send>(
        &self,
        command: &str,
        opts: &ExecOptions,
        fleet: &FleetExec,
        on_event: &Mutex<F>,
        cancel: CancelToken,
    ) -> Result<Vec<MachineResult>> {
        let machines = self.list_machines(&fleet.selector, &fleet.hosts).await?;
        if machines.is_empty() {
            return Err(self.inner.report(Error::NotFound(format!(
                "no machine matches the selector '{}' and the hosts '{}': list the machines to see their hostnames and labels",
                fleet.selector, fleet.hosts
            ))));
        }
        let failures = AtomicUsize::new(0);
        let mut results = Vec::with_capacity(machines.len());
        let mut targets = Vec::new();
        for m in machines {
            if m.online() {
                targets.push(m);
            } else {
                let r = MachineResult::not_run(m, NotRun::Offline);
                (on_event.lock())(FleetEvent::Finished(&r));
                results.push(r);
            }
        }
        let run_one = |m: FleetMachine| {
            let (failures, cancel) = (&failures, cancel.clone());
            async move {
                let why = if cancel.is_cancelled() {
                    Some(NotRun::Cancelled)
                } else if fleet
                    .max_failures
                    .is_some_and(|k| failures.load(Ordering::SeqCst) >= k)
                {
                    Some(NotRun::AfterMaxFailures)
                } else {
                    None
                };
                let result = match why {
                    Some(why) => MachineResult::not_run(m, why),
                    None => self.run_on(command, opts, m, on_event, cancel).await,
                };
                if result.outcome.ran() && !result.outcome.ok() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                (on_event.lock())(FleetEvent::Finished(&result));
                result
            }
        };
        let parallel = if fleet.parallel == 0 {
            DEFAULT_PARALLEL
        } else {
            fleet.parallel
        };
        let batch = fleet
            .batch
            .map_or(targets.len().max(1), |b| b.size(targets.len()));
        let mut pending = targets.into_iter().peekable();
        while pending.peek().is_some() {
            let mut this_batch = pending.by_ref().take(batch);
            let mut running = FuturesUnordered::new();
            loop {
                while running.len() < parallel {
                    match this_batch.next() {
                        Some(m) => running.push(run_one(m)),
                        None => break,
                    }
                }
                match running.next().await {
                    Some(r) => results.push(r),
                    None => break,
                }
            }
        }
        sort_results(&mut results);
        Ok(results)
    }

    /// One machine's execute, mapped to its exact outcome.
    pub(super) async fn run_on<F: FnMut(FleetEvent<'_>) + Send>(
        &self,
        command: &str,
        opts: &ExecOptions,
        m: FleetMachine,
        on_event: &Mutex<F>,
        cancel: CancelToken,
    ) -> MachineResult {
        let mut one = opts.clone();
        one.machine = Some(MachineInfo::from(&m));
        let started = Instant::now();
        let result = self
            .execute_with(
                command,
                &one,
                |stream, data| {
                    (on_event.lock())(FleetEvent::Output {
                        machine: &m,
                        stream,
                        data,
                    })
                },
                cancel,
            )
            .await;
        let duration = started.elapsed();
        let (outcome, stdout, stderr) = match result {
            Ok(o) if o.signal != 0 => (Outcome::Signal(o.signal), o.stdout, o.stderr),
            Ok(o) => (Outcome::Exited(o.exit_code), o.stdout, o.stderr),
            Err(Error::Timeout { partial, .. }) => {
                let p = partial.map(|p| *p).unwrap_or_default();
                (Outcome::Timeout, p.stdout, p.stderr)
            }
            Err(Error::OutcomeUnknown { message, partial }) => {
                let p = partial.map(|p| *p).unwrap_or_default();
                (Outcome::Unknown(message), p.stdout, p.stderr)
            }
            // UNAVAILABLE without an unknown outcome: the command was not
            // started (the machine left, its replica was unreachable).
            Err(Error::Unavailable(msg)) => (
                Outcome::NotRun(NotRun::Refused(msg)),
                Vec::new(),
                Vec::new(),
            ),
            Err(e) => (Outcome::Failed(e), Vec::new(), Vec::new()),
        };
        let duration = if outcome.ran() {
            duration
        } else {
            Duration::ZERO
        };
        MachineResult {
            machine: m,
            outcome,
            stdout,
            stderr,
            duration,
        }
    }
}

/// Results in hostname order.
pub(super) fn sort_results(results: &mut [MachineResult]) {
    results.sort_by(|a, b| {
        (a.machine.hostname.to_lowercase(), &a.machine.machine_id)
            .cmp(&(b.machine.hostname.to_lowercase(), &b.machine.machine_id))
    });
}

/// A fan-out's events, owned, for a thread that waits on them (the C
/// API's calling thread runs the application's callbacks from these).
pub(crate) enum FleetMsg {
    Output {
        machine: Arc<FleetMachine>,
        stream: Stream,
        data: Vec<u8>,
    },
    Finished(Box<MachineResult>),
}

/// Events waiting for the consuming thread before the fan-out pauses.
const FEED_CAPACITY: usize = 64;

/// An events callback for [`Client::execute_on_fleet`] that hands every
/// event to the returned receiver, in order. The queue is bounded: while
/// it is full the fan-out waits (its runtime thread handed over to others
/// meanwhile), so a slow consumer slows the machines' output down (HTTP/2
/// flow control) instead of growing memory. Once the receiver is dropped
/// events are discarded. Run the fan-out as a task of the multi-threaded
/// runtime.
pub(crate) fn fleet_feed() -> (
    impl FnMut(FleetEvent<'_>) + Send + 'static,
    std::sync::mpsc::Receiver<FleetMsg>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel(FEED_CAPACITY);
    let mut machines: HashMap<String, Arc<FleetMachine>> = HashMap::new();
    let events = move |event: FleetEvent<'_>| {
        let msg = match event {
            FleetEvent::Output {
                machine,
                stream,
                data,
            } => FleetMsg::Output {
                machine: machines
                    .entry(machine.machine_id.clone())
                    .or_insert_with(|| Arc::new(machine.clone()))
                    .clone(),
                stream,
                data: data.to_vec(),
            },
            FleetEvent::Finished(r) => {
                machines.remove(&r.machine.machine_id);
                FleetMsg::Finished(Box::new(r.clone()))
            }
        };
        if let Err(std::sync::mpsc::TrySendError::Full(msg)) = tx.try_send(msg) {
            let _ = tokio::task::block_in_place(|| tx.send(msg));
        }
    };
    (events, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_counts_or_shares_of_the_online_machines() {
        assert_eq!(Batch::Machines(10).size(3), 10);
        assert_eq!(Batch::Machines(0).size(3), 1);
        assert_eq!(Batch::Percent(25).size(10), 3);
        assert_eq!(Batch::Percent(100).size(7), 7);
        assert_eq!(Batch::Percent(1).size(0), 1);
    }

    #[test]
    fn outcomes_keep_their_exact_meaning() {
        assert_eq!(Outcome::Timeout.status(), "timeout");
        assert_eq!(Outcome::Unknown("lost".into()).status(), "outcome_unknown");
        assert!(!Outcome::NotRun(NotRun::Offline).ran());
        assert!(Outcome::Unknown("lost".into()).ran());
        assert!(Outcome::Exited(0).ok() && !Outcome::Exited(1).ok());
        assert_eq!(Outcome::Exited(3).to_string(), "exit 3");
    }
}
