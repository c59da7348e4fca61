//! The fan-out run by the server (`Cmdop/ExecFleet`, capability
//! `exec-fleet.v1`): one call whose stream brings every selected machine's
//! events, tagged with its machine id, mapped here to the same
//! [`FleetEvent`]s and [`Outcome`]s as the fan-out run from the client.
//! Machines whose agent has no native exec come back as such and are tried
//! from here afterwards, as the client's own fan-out would (its terminal
//! path runs on the client's selected machine only, so they end as errors
//! unless that is the one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cmdop_proto::ext::exec_fleet_event::Event as FleetEv;
use cmdop_proto::ext::exec_fleet_not_run::Reason;
use cmdop_proto::ext::{ExecExit, ExecFleetRequest};
use cmdop_proto::limits::MAX_FLEET_PARALLEL;
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;

use super::exec::{ExecOutput, Keep};
use super::exec_native::outcome_unknown;
use super::fanout::{sort_results, Batch, DEFAULT_PARALLEL};
use super::{
    CancelToken, Client, Error, ExecOptions, FleetEvent, FleetExec, FleetMachine, MachineResult,
    NotRun, Outcome, Result, Stream,
};

/// One selected machine while the fan-out runs.
struct Slot {
    machine: FleetMachine,
    /// When the server handed it to its exec; `None` until then.
    started: Option<Instant>,
    out: ExecOutput,
}

impl Slot {
    fn end(self, outcome: Outcome) -> MachineResult {
        let (stdout, stderr) = match outcome {
            // As from the client: only a run that ended (or timed out, or
            // lost its link) keeps what it printed.
            Outcome::Failed(_) | Outcome::NotRun(_) => (Vec::new(), Vec::new()),
            _ => (self.out.stdout, self.out.stderr),
        };
        let duration = match self.started {
            Some(at) if outcome.ran() => at.elapsed(),
            _ => Duration::ZERO,
        };
        MachineResult {
            machine: self.machine,
            outcome,
            stdout,
            stderr,
            duration,
        }
    }
}

/// The outcome an `exit` event stands for, as a native Exec reports it.
fn exit_outcome(x: &ExecExit, started: Instant) -> Outcome {
    if x.outcome_unknown {
        return unknown(&x.error, started);
    }
    if x.timed_out {
        return Outcome::Timeout;
    }
    if !x.error.is_empty() && x.exit_code == -1 && x.signal == 0 {
        return Outcome::Failed(Error::OperationFailed(format!(
            "the command could not start: {}",
            x.error
        )));
    }
    if x.signal != 0 {
        Outcome::Signal(x.signal)
    } else {
        Outcome::Exited(x.exit_code)
    }
}

fn unknown(why: &str, started: Instant) -> Outcome {
    match outcome_unknown(ExecOutput::default(), started, why) {
        Error::OutcomeUnknown { message, .. } => Outcome::Unknown(message),
        other => Outcome::Failed(other),
    }
}

/// The request for `fleet`, paced as the client-side fan-out would be.
fn request(
    command: &str,
    opts: &ExecOptions,
    fleet: &FleetExec,
    timeout: Duration,
) -> ExecFleetRequest {
    let parallel = match fleet.parallel {
        0 => DEFAULT_PARALLEL,
        n => n,
    }
    .min(MAX_FLEET_PARALLEL);
    let (batch_size, batch_percent) = match fleet.batch {
        None => (0, 0),
        Some(Batch::Machines(n)) => (n.max(1), 0),
        // 0 % rounds up to one machine per batch.
        Some(Batch::Percent(0)) => (1, 0),
        Some(Batch::Percent(p)) => (0, p.min(100)),
    };
    let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    ExecFleetRequest {
        selector: fleet.selector.clone(),
        hosts: fleet.hosts.clone(),
        command: command.to_string(),
        stdin: opts.stdin.clone().into(),
        env: opts.env.iter().cloned().collect(),
        working_directory: opts.working_directory.clone(),
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        parallel: u32_of(parallel),
        batch_size: u32_of(batch_size),
        batch_percent: u32_of(batch_percent),
        max_failures: fleet.max_failures.map(u32_of),
        accept_unknown_outcome: true,
    }
}

impl Client {
    /// [`Client::execute_on_fleet`] through one ExecFleet call.
    /// NOT_SUPPORTED when the server answers UNIMPLEMENTED (the caller then
    /// fans out itself).
    pub(super) async fn fan_out_on_server<F: FnMut(FleetEvent<'_>) + Send>(
        &self,
        command: &str,
        opts: &ExecOptions,
        fleet: &FleetExec,
        on_event: &Mutex<F>,
        cancel: &CancelToken,
    ) -> Result<Vec<MachineResult>> {
        if command.is_empty() {
            return Err(self
                .inner
                .report(Error::InvalidArgument("command is empty".into())));
        }
        let timeout = opts
            .timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(self.inner.opts.timeout);
        let req = request(command, opts, fleet, timeout);
        let closing = self.inner.closing.lock().clone();
        let opened = self
            .inner
            .open_stream("ExecFleet", req, None, |mut c, r| async move {
                c.ext.exec_fleet(r).await
            })
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(Error::NotFound(_)) => {
                return Err(self.inner.report(Error::NotFound(format!(
                    "no machine matches the selector '{}' and the hosts '{}': list the machines to see their hostnames and labels",
                    fleet.selector, fleet.hosts
                ))))
            }
            Err(e) => return Err(self.inner.report(e)),
        };
        let keep = if opts.discard_output {
            Keep::Nothing
        } else {
            Keep::All
        };
        let mut slots: HashMap<String, Slot> = HashMap::new();
        let mut results = Vec::new();
        let mut no_native = Vec::new();
        let finish = |results: &mut Vec<MachineResult>, r: MachineResult| {
            (on_event.lock())(FleetEvent::Finished(&r));
            results.push(r);
        };
        // How the stream stopped before every machine ended, if it did.
        let stopped: Option<Outcome> = loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = cancel.cancelled() => break Some(Outcome::Failed(Error::Cancelled)),
                _ = closing.cancelled() => break Some(Outcome::Failed(Error::Disconnected(
                    "the client was closed while the command ran; the command was stopped (connect again to run it)".into(),
                ))),
            };
            let ev = match msg {
                Ok(Some(ev)) => ev,
                Ok(None) if slots.is_empty() => break None,
                Ok(None) => {
                    break Some(unknown(
                        "the fan-out's stream ended before this machine's end was reported",
                        Instant::now(),
                    ))
                }
                Err(status) if slots.is_empty() && results.is_empty() => {
                    let e = Error::from_status("ExecFleet", &status);
                    if matches!(e, Error::NotSupported(_)) {
                        return Err(e);
                    }
                    return Err(self.inner.report(e));
                }
                Err(status) => break Some(unknown(status.message(), Instant::now())),
            };
            let Some(event) = ev.event else { continue };
            let id = ev.machine_id;
            if let FleetEv::Selected(m) = event {
                slots.insert(
                    id,
                    Slot {
                        machine: FleetMachine::from(m),
                        started: None,
                        out: ExecOutput::default(),
                    },
                );
                continue;
            }
            let Some(slot) = slots.get_mut(&id) else {
                continue; // not announced: ignore
            };
            let outcome = match event {
                FleetEv::Selected(_) => continue,
                FleetEv::Started(_) => {
                    slot.started.get_or_insert_with(Instant::now);
                    continue;
                }
                FleetEv::Stdout(data) | FleetEv::Stderr(data) if data.is_empty() => continue,
                FleetEv::Stdout(data) => {
                    (on_event.lock())(FleetEvent::Output {
                        machine: &slot.machine,
                        stream: Stream::Stdout,
                        data: &data,
                    });
                    slot.out.keep(keep, Stream::Stdout, &data);
                    continue;
                }
                FleetEv::Stderr(data) => {
                    (on_event.lock())(FleetEvent::Output {
                        machine: &slot.machine,
                        stream: Stream::Stderr,
                        data: &data,
                    });
                    slot.out.keep(keep, Stream::Stderr, &data);
                    continue;
                }
                FleetEv::Exit(x) => {
                    exit_outcome(&x, *slot.started.get_or_insert_with(Instant::now))
                }
                FleetEv::NotRun(n) => match Reason::try_from(n.reason) {
                    Ok(Reason::Offline) => Outcome::NotRun(NotRun::Offline),
                    Ok(Reason::AfterMaxFailures) => Outcome::NotRun(NotRun::AfterMaxFailures),
                    Ok(Reason::Cancelled) => Outcome::NotRun(NotRun::Cancelled),
                    Ok(Reason::Unsupported) => {
                        if let Some(slot) = slots.remove(&id) {
                            no_native.push(slot.machine);
                        }
                        continue;
                    }
                    _ => Outcome::NotRun(NotRun::Refused(n.message)),
                },
                FleetEv::Failed(f) if f.outcome_unknown => {
                    unknown(&f.message, *slot.started.get_or_insert_with(Instant::now))
                }
                FleetEv::Failed(f) => {
                    let status = tonic::Status::new(tonic::Code::from(f.code), f.message);
                    match Error::from_status("Exec", &status) {
                        Error::Unavailable(msg) => Outcome::NotRun(NotRun::Refused(msg)),
                        e => Outcome::Failed(e),
                    }
                }
            };
            if let Some(slot) = slots.remove(&id) {
                finish(&mut results, slot.end(outcome));
            }
        };
        // Dropping the stream cancels what still runs on the server.
        drop(stream);
        if let Some(running_end) = stopped {
            let cancelled = matches!(
                running_end,
                Outcome::Failed(Error::Cancelled | Error::Disconnected(_))
            );
            let mut left: Vec<Slot> = slots.into_values().collect();
            left.sort_by(|a, b| a.machine.hostname.cmp(&b.machine.hostname));
            for slot in left {
                let outcome = match (&slot.started, cancelled) {
                    (Some(_), _) => running_end.clone(),
                    (None, true) => Outcome::NotRun(NotRun::Cancelled),
                    (None, false) => Outcome::NotRun(NotRun::Refused(
                        "the fan-out's stream ended before this machine was started".into(),
                    )),
                };
                finish(&mut results, slot.end(outcome));
            }
        }
        // Agents without native exec: as the client-side fan-out does.
        if !no_native.is_empty() {
            let failures = results
                .iter()
                .filter(|r| r.outcome.ran() && !r.outcome.ok())
                .count();
            let done = self
                .fan_out_list_here(command, opts, fleet, no_native, failures, on_event, cancel)
                .await;
            results.extend(done);
        }
        sort_results(&mut results);
        Ok(results)
    }

    /// Runs `machines` from here (one Exec each, at most `parallel` at
    /// once), starting none once `failures` reach the limit.
    // The arguments are the parts of one fan-out, threaded through.
    #[allow(clippy::too_many_arguments)]
    async fn fan_out_list_here<F: FnMut(FleetEvent<'_>) + Send>(
        &self,
        command: &str,
        opts: &ExecOptions,
        fleet: &FleetExec,
        machines: Vec<FleetMachine>,
        failures: usize,
        on_event: &Mutex<F>,
        cancel: &CancelToken,
    ) -> Vec<MachineResult> {
        let parallel = match fleet.parallel {
            0 => DEFAULT_PARALLEL,
            n => n,
        };
        let mut failures = failures;
        let mut results = Vec::new();
        let mut pending = machines.into_iter();
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < parallel {
                let Some(m) = pending.next() else { break };
                let why = if cancel.is_cancelled() {
                    Some(NotRun::Cancelled)
                } else if fleet.max_failures.is_some_and(|k| failures >= k) {
                    Some(NotRun::AfterMaxFailures)
                } else {
                    None
                };
                match why {
                    Some(why) => {
                        let r = MachineResult::not_run(m, why);
                        (on_event.lock())(FleetEvent::Finished(&r));
                        results.push(r);
                    }
                    None => running.push(self.run_on(command, opts, m, on_event, cancel.clone())),
                }
            }
            match running.next().await {
                Some(r) => {
                    if r.outcome.ran() && !r.outcome.ok() {
                        failures += 1;
                    }
                    (on_event.lock())(FleetEvent::Finished(&r));
                    results.push(r);
                }
                None => break,
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_keeps_the_client_side_pacing() {
        let fleet = FleetExec {
            selector: "env=prod".into(),
            hosts: "web-*".into(),
            parallel: 1000,
            batch: Some(Batch::Percent(0)),
            max_failures: Some(0),
        };
        let opts = ExecOptions {
            stdin: b"in".to_vec(),
            env: vec![("A".into(), "1".into())],
            working_directory: "/tmp".into(),
            ..Default::default()
        };
        let r = request("true", &opts, &fleet, Duration::from_secs(5));
        assert_eq!(r.parallel as usize, MAX_FLEET_PARALLEL);
        assert_eq!((r.batch_size, r.batch_percent), (1, 0));
        assert_eq!(r.max_failures, Some(0));
        assert_eq!(r.timeout_ms, 5000);
        assert!(r.accept_unknown_outcome);
        assert_eq!(&r.stdin[..], b"in");
        assert_eq!(r.env.get("A").map(String::as_str), Some("1"));
        let r = request(
            "true",
            &opts,
            &FleetExec {
                parallel: 0,
                batch: Some(Batch::Percent(250)),
                ..fleet.clone()
            },
            Duration::from_secs(1),
        );
        assert_eq!(r.parallel as usize, DEFAULT_PARALLEL);
        assert_eq!((r.batch_size, r.batch_percent), (0, 100));
        let r = request(
            "true",
            &opts,
            &FleetExec {
                batch: None,
                max_failures: None,
                ..fleet
            },
            Duration::from_secs(1),
        );
        assert_eq!(
            (r.batch_size, r.batch_percent, r.max_failures),
            (0, 0, None)
        );
    }

    #[test]
    fn exits_map_to_the_same_outcomes_as_a_native_exec() {
        let now = Instant::now();
        let exit = |f: &dyn Fn(&mut ExecExit)| {
            let mut x = ExecExit::default();
            f(&mut x);
            exit_outcome(&x, now)
        };
        assert!(matches!(exit(&|_| {}), Outcome::Exited(0)));
        assert!(matches!(exit(&|x| x.exit_code = 3), Outcome::Exited(3)));
        assert!(matches!(
            exit(&|x| {
                x.exit_code = -1;
                x.signal = 9
            }),
            Outcome::Signal(9)
        ));
        assert!(matches!(
            exit(&|x| {
                x.exit_code = -1;
                x.signal = 9;
                x.timed_out = true
            }),
            Outcome::Timeout
        ));
        assert!(matches!(
            exit(&|x| {
                x.exit_code = -1;
                x.outcome_unknown = true;
                x.error = "agent link lost".into()
            }),
            Outcome::Unknown(_)
        ));
        match exit(&|x| {
            x.exit_code = -1;
            x.error = "no such directory".into()
        }) {
            Outcome::Failed(Error::OperationFailed(m)) => assert!(m.contains("could not start")),
            other => panic!("{other:?}"),
        }
    }
}
