//! The agent side of `ConnectTerminal`: register, then pump the agent's
//! messages (output, heartbeats, file results) until its stream ends or
//! goes quiet for longer than the heartbeat timeout.

use std::{sync::Arc, time::Duration};

use cmdop_proto::terminal::{
    agent_message, control_message, AgentMessage, PingCommand, RegisterRequest, SessionConfig,
    StartSessionCommand,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::ControlStream;
use crate::{
    limits,
    sessions::{AgentInfo, Session},
    state::SharedState,
    store::{now_ms, HostnameUpdate, MachineRow},
};

/// How often a connected machine's admin labels are asked for again while
/// the database cannot be reached.
const LABELS_RETRY: Duration = Duration::from_secs(2);

/// Registers `machine`'s new connection and starts pumping its messages.
pub fn start(
    state: SharedState,
    machine: MachineRow,
    first: AgentMessage,
    register: RegisterRequest,
    inbound: Streaming<AgentMessage>,
) -> Result<ControlStream, Status> {
    limits::check_len(
        "register.hostname",
        register.hostname.len(),
        limits::MAX_HOSTNAME_BYTES,
    )?;
    let info = AgentInfo::from_register(&register);
    let (tx, rx) = mpsc::channel(limits::AGENT_CONTROL_QUEUE);
    let session = state.sessions.register(
        &machine.workspace_id,
        &machine.machine_id,
        &first.session_id,
        info,
        tx.clone(),
    );
    if let Some(cluster) = &state.cluster {
        crate::cluster::presence::claim(&state, cluster, &session);
    }
    let hostname = if register.hostname.is_empty() {
        machine.hostname.clone()
    } else {
        register.hostname.clone()
    };
    // Recorded in the background: a database locked by another process
    // must not hold up the agent's registration.
    tokio::spawn({
        let (state, id, name) = (state.clone(), machine.machine_id.clone(), hostname.clone());
        let facts = crate::inventory::facts_of(&register);
        let session = session.clone();
        async move {
            // Until read, scoped keys limited by machine do not see it; a
            // database that cannot be reached is asked again while the
            // agent stays connected.
            loop {
                let labels = crate::db::with_store(&state.store, {
                    let id = id.clone();
                    move |store| store.admin_labels(&id)
                })
                .await;
                match labels {
                    Ok(labels) => {
                        session.set_admin_labels(Arc::new(labels));
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), machine = %id, "cannot read machine labels; retrying");
                        tokio::select! {
                            _ = session.closed() => break,
                            _ = tokio::time::sleep(LABELS_RETRY) => {}
                        }
                    }
                }
            }
            let recorded = crate::db::with_store(&state.store, {
                let id = id.clone();
                move |store| store.set_facts(&id, &facts)
            })
            .await;
            if let Err(err) = recorded {
                tracing::warn!(error = %format!("{err:#}"), machine = %id, "cannot record machine facts");
            }
            let touched = crate::db::with_store(&state.store, {
                let (id, name) = (id.clone(), name.clone());
                move |store| store.touch_machine(&id, &name)
            })
            .await;
            match touched {
                Ok(HostnameUpdate::Unchanged) => {}
                Ok(HostnameUpdate::Renamed { from }) => tracing::info!(
                    machine = %id, from = %from, to = %name, "machine changed its hostname"
                ),
                Ok(HostnameUpdate::Taken { by, kept }) => tracing::warn!(
                    machine = %id, reported = %name, owner = %by, kept = %kept,
                    "machine reports a hostname another machine of its workspace has; lookups by that name \
                     are ambiguous until one of them is renamed or revoked (`cmdop admin revoke-machine`)"
                ),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "cannot record machine last-seen time")
                }
            }
        }
    });
    tracing::info!(
        session = %session.id, machine = %machine.machine_id, hostname = %session.info.hostname,
        version = %session.info.version, native_exec = session.info.native_exec, "agent connected"
    );

    let start = control_message::Payload::StartSession(StartSessionCommand {
        config: Some(SessionConfig {
            session_id: session.id.clone(),
            shell: session.info.shell.clone(),
            working_directory: session.info.home_dir.clone(),
            env: Default::default(),
            size: Some(session.info.size),
        }),
        ..Default::default()
    });
    // The queue is fresh, so this cannot be full.
    let _ = tx.try_send(Box::new(Ok(cmdop_proto::terminal::ControlMessage {
        payload: Some(start),
        ..Default::default()
    })));
    drop(tx);

    tokio::spawn(pump(state, session.clone(), inbound));
    Ok(super::until_closed(rx, session))
}

/// Reads the agent's messages until its stream ends, it is replaced, or it
/// stays silent for the heartbeat timeout. A quiet agent is pinged a few
/// times first (agents answer pings with a heartbeat).
async fn pump(state: SharedState, session: Arc<Session>, mut inbound: Streaming<AgentMessage>) {
    let timeout = state.config.heartbeat_timeout;
    let ping_every = (timeout / 3).max(Duration::from_millis(100));
    let mut ping_sequence = 0i64;
    let reason = loop {
        let next = tokio::select! {
            next = tokio::time::timeout(ping_every, inbound.message()) => next,
            _ = session.closed() => break "closed by the server (replaced or shutting down)",
        };
        match next {
            Err(_) => {
                let silent_ms = now_ms() - session.last_activity_ms();
                if silent_ms >= i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX) {
                    break "heartbeat timeout";
                }
                ping_sequence += 1;
                session.try_send_control(control_message::Payload::Ping(PingCommand {
                    sequence: ping_sequence,
                }));
            }
            Ok(Ok(None)) => break "stream closed by agent",
            Ok(Err(status)) => {
                tracing::debug!(session = %session.id, %status, "agent stream error");
                break "stream error";
            }
            Ok(Ok(Some(msg))) => {
                session.touch();
                handle(&session, msg);
            }
        }
    };
    session.mark_closed("agent disconnected");
    if let Some(cluster) = &state.cluster {
        crate::cluster::presence::release(&state, cluster, &session).await;
    }
    let id = session.machine_id.clone();
    if let Err(err) =
        crate::db::with_store(&state.store, move |store| store.touch_machine(&id, "")).await
    {
        tracing::warn!(error = %format!("{err:#}"), "cannot record machine last-seen time");
    }
    tracing::info!(session = %session.id, machine = %session.machine_id, reason, "agent disconnected");
}

fn handle(session: &Session, msg: AgentMessage) {
    match msg.payload {
        Some(agent_message::Payload::Output(out)) => {
            if out.data.len() > limits::MAX_AGENT_OUTPUT_CHUNK_BYTES {
                tracing::warn!(session = %session.id, bytes = out.data.len(), "dropping oversized output chunk");
            } else if !out.data.is_empty() {
                session.record_output(&out.data);
            }
        }
        Some(agent_message::Payload::FileOperationResult(result)) => {
            session.complete_file_op(result)
        }
        Some(agent_message::Payload::Error(err)) => {
            tracing::warn!(session = %session.id, code = %err.error_code, message = %err.message, "agent reported an error");
        }
        Some(agent_message::Payload::Status(status)) => {
            tracing::debug!(session = %session.id, reason = %status.reason, "agent status");
        }
        // Heartbeats only refresh liveness (done by the caller); a repeated
        // register, acks, command_complete and unknown members are ignored.
        _ => {}
    }
}
