//! Exec stdout over a side connection (capability `exec-raw.v1`) end to
//! end: a plaintext control plane serving gRPC and side connections on one
//! port, a scripted agent that moves stdout to a side connection when it
//! gets a ticket, and a client that takes it.

mod support;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use cmdop_proto::{
    ext::{
        agent_downlink, agent_uplink, exec_event, AgentUplink, ExecExit, ExecFinished, ExecOutput,
        ExecRawOffered, ExecRawSwitched, ExecRequest, ServerInfoRequest,
    },
    raw::{self, Role, ACCEPTED},
};
use support::{authed, open_agent_link, AgentIdentity, Fixture, TestAgent};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(20);
/// What every command "prints" after a first line of "head\n".
const BODY_LEN: usize = 3 << 20;

fn body() -> Vec<u8> {
    (0..BODY_LEN).map(|i| (i % 251) as u8).collect()
}

/// An enrolled machine whose terminal is a [`TestAgent`] and whose exec is
/// served by [`side_agent`].
struct SideMachine {
    id: AgentIdentity,
    terminal: TestAgent,
    tickets: mpsc::UnboundedReceiver<String>,
}

/// Enrolls `hostname`, connects its terminal and opens a [`side_agent`]
/// Channel announcing `capabilities`.
async fn side_machine(fixture: &Fixture, hostname: &str, capabilities: &[&str]) -> SideMachine {
    let (id, terminal) = fixture.agent(hostname, "", false).await;
    let tickets = side_agent(
        fixture.server.addr,
        fixture.channel.clone(),
        &id,
        &terminal.session_id,
        capabilities,
    )
    .await;
    SideMachine {
        id,
        terminal,
        tickets,
    }
}

/// An AgentLink Channel announcing `capabilities`. Each command writes
/// "head\n" as ExecOutput, then the body: on a side connection when the
/// ExecStart has a ticket and the control plane accepts the pairing,
/// otherwise as ExecOutput. Every ticket it is given is reported (empty
/// when none).
async fn side_agent(
    addr: SocketAddr,
    channel: Channel,
    id: &AgentIdentity,
    session_id: &str,
    capabilities: &[&str],
) -> mpsc::UnboundedReceiver<String> {
    let (up_tx, mut down) = open_agent_link(channel, id, session_id, capabilities).await;
    let (tickets_tx, tickets) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = down.message().await {
            if let Some(agent_downlink::Msg::Start(start)) = msg.msg {
                let _ = tickets_tx.send(start.raw_ticket.clone());
                tokio::spawn(run_command(
                    addr,
                    up_tx.clone(),
                    start.exec_id,
                    start.raw_ticket,
                ));
            }
        }
    });
    tickets
}

async fn run_command(
    addr: SocketAddr,
    up: mpsc::Sender<AgentUplink>,
    exec_id: String,
    ticket: String,
) {
    let send = |msg| {
        let up = up.clone();
        async move { up.send(AgentUplink { msg: Some(msg) }).await.unwrap() }
    };
    let stdout = |data: &[u8]| {
        agent_uplink::Msg::Output(ExecOutput {
            exec_id: exec_id.clone(),
            data: Bytes::copy_from_slice(data),
            is_stderr: false,
        })
    };
    send(stdout(b"head\n")).await;
    let body = body();
    let mut raw_stdout_bytes = 0;
    let side = if ticket.is_empty() {
        None
    } else {
        send(agent_uplink::Msg::RawOffered(ExecRawOffered {
            exec_id: exec_id.clone(),
            ..Default::default()
        }))
        .await;
        let mut side = TcpStream::connect(addr).await.unwrap();
        side.write_all(&raw::opening(Role::Agent, &ticket).unwrap())
            .await
            .unwrap();
        let answer = tokio::time::timeout(PATIENCE, side.read_u8())
            .await
            .unwrap()
            .unwrap();
        (answer == ACCEPTED).then_some(side)
    };
    match side {
        Some(mut side) => {
            send(agent_uplink::Msg::RawSwitched(ExecRawSwitched {
                exec_id: exec_id.clone(),
            }))
            .await;
            side.write_all(&body).await.unwrap();
            side.shutdown().await.unwrap();
            raw_stdout_bytes = body.len() as u64;
        }
        None => {
            for chunk in body.chunks(64 * 1024) {
                send(stdout(chunk)).await;
            }
        }
    }
    send(agent_uplink::Msg::Finished(ExecFinished {
        exec_id: exec_id.clone(),
        exit: Some(ExecExit {
            raw_stdout_bytes,
            ..Default::default()
        }),
        pid: 7,
    }))
    .await;
}

/// What a client saw of one Exec.
#[derive(Default)]
struct Seen {
    grpc_stdout: Vec<u8>,
    side_stdout: Option<Vec<u8>>,
    offered: usize,
    switched: usize,
    exit: Option<ExecExit>,
}

/// Runs `command` and collects its stdout from both paths, taking the side
/// connection whenever it is offered.
async fn exec(fixture: &Fixture, machine_id: &str, accept_raw_stdout: bool) -> Seen {
    let addr = fixture.server.addr;
    let mut events = fixture
        .cmdop()
        .max_decoding_message_size(cmdop_proto::limits::MAX_MESSAGE_BYTES)
        .exec(authed(
            ExecRequest {
                machine_id: machine_id.into(),
                command: "cat big".into(),
                accept_raw_stdout,
                ..Default::default()
            },
            fixture.key(),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Seen::default();
    let mut side = None;
    loop {
        let ev = tokio::time::timeout(PATIENCE, events.message())
            .await
            .expect("events keep coming")
            .expect("exec stream");
        let Some(ev) = ev else { break };
        match ev.event.expect("event") {
            exec_event::Event::Started(_) => {}
            exec_event::Event::Stdout(data) => {
                assert_eq!(seen.switched, 0, "no gRPC stdout after the switch");
                seen.grpc_stdout.extend_from_slice(&data);
            }
            exec_event::Event::Stderr(_) => panic!("no stderr expected"),
            exec_event::Event::RawOffer(offer) => {
                seen.offered += 1;
                side = Some(tokio::spawn(async move {
                    let mut conn = TcpStream::connect(addr).await.unwrap();
                    conn.write_all(&raw::opening(Role::Caller, &offer.ticket).unwrap())
                        .await
                        .unwrap();
                    assert_eq!(conn.read_u8().await.unwrap(), ACCEPTED);
                    let mut data = Vec::new();
                    conn.read_to_end(&mut data).await.unwrap();
                    data
                }));
            }
            exec_event::Event::RawSwitch(_) => seen.switched += 1,
            exec_event::Event::Exit(exit) => seen.exit = Some(exit),
        }
    }
    if let Some(side) = side {
        seen.side_stdout = Some(
            tokio::time::timeout(PATIENCE, side)
                .await
                .expect("side connection ends")
                .unwrap(),
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_moves_to_a_side_connection_on_the_grpc_port() {
    let fixture = Fixture::start().await;

    let info = fixture
        .cmdop()
        .server_info(authed(ServerInfoRequest {}, fixture.key()))
        .await
        .unwrap()
        .into_inner();
    assert!(info.capabilities.contains(&raw::CAPABILITY.to_string()));

    // A machine whose agent can use side connections.
    let mut fast = side_machine(&fixture, "fast", &[raw::CAPABILITY]).await;

    let seen = exec(&fixture, &fast.id.machine_id, true).await;
    let ticket = fast.tickets.recv().await.unwrap();
    assert_eq!(ticket.len(), raw::TICKET_LEN);
    assert_eq!(seen.grpc_stdout, b"head\n");
    assert_eq!((seen.offered, seen.switched), (1, 1));
    assert!(
        seen.side_stdout.as_ref().unwrap() == &body(),
        "side bytes match"
    );
    assert_eq!(seen.exit.unwrap().raw_stdout_bytes, BODY_LEN as u64);

    // The ticket died with the call.
    let mut late = TcpStream::connect(fixture.server.addr).await.unwrap();
    late.write_all(&raw::opening(Role::Caller, &ticket).unwrap())
        .await
        .unwrap();
    assert_eq!(late.read_u8().await.unwrap(), raw::REFUSED);

    // A client that did not ask: no ticket, everything over gRPC.
    let seen = exec(&fixture, &fast.id.machine_id, false).await;
    assert_eq!(fast.tickets.recv().await.unwrap(), "");
    assert_eq!(seen.grpc_stdout.len(), 5 + BODY_LEN);
    assert_eq!((seen.offered, seen.switched), (0, 0));
    assert_eq!(seen.exit.unwrap().raw_stdout_bytes, 0);

    // An agent without the capability: no ticket even when the client asks.
    let mut old = side_machine(&fixture, "old", &[]).await;
    let seen = exec(&fixture, &old.id.machine_id, true).await;
    assert_eq!(old.tickets.recv().await.unwrap(), "");
    assert_eq!(seen.grpc_stdout.len(), 5 + BODY_LEN);
    assert_eq!(seen.offered, 0);

    drop((fast.terminal, old.terminal));
    fixture.stop().await;
}
