//! Exec in a pseudo-terminal (`ExecRequest.terminal`, capability
//! `exec-tty.v1`) through a real control plane, with scripted agents: the
//! server lists the capability, an old agent is refused by name, and a
//! terminal's size and resizes reach the agent in order with the typed
//! bytes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use cmdop_proto::ext::{
    agent_downlink, exec_input, ExecInput, ExecRequest, ExecTerminal, ServerInfoRequest,
};
use support::{authed, open_agent_link, Fixture};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(20);

fn terminal(rows: u32, cols: u32) -> ExecTerminal {
    ExecTerminal {
        rows,
        cols,
        term: "xterm".into(),
    }
}

fn start(machine_id: &str, size: ExecTerminal) -> ExecInput {
    ExecInput {
        part: Some(exec_input::Part::Start(ExecRequest {
            machine_id: machine_id.into(),
            command: "exec \"$SHELL\" -l".into(),
            terminal: Some(size),
            ..Default::default()
        })),
    }
}

/// The next downlink message's body (fails the test after a long silence).
async fn next(
    down: &mut tonic::Streaming<cmdop_proto::ext::AgentDownlink>,
) -> Option<agent_downlink::Msg> {
    tokio::time::timeout(PATIENCE, down.message())
        .await
        .expect("downlink keeps coming")
        .expect("downlink")
        .expect("downlink open")
        .msg
}

#[tokio::test]
async fn the_server_lists_it_and_refuses_old_agents_and_bad_sizes() {
    let f = Fixture::start().await;
    let info = f
        .cmdop()
        .server_info(authed(ServerInfoRequest {}, f.key()))
        .await
        .expect("server info")
        .into_inner();
    assert!(
        info.capabilities.iter().any(|c| c == "exec-tty.v1"),
        "{:?}",
        info.capabilities
    );

    let (id, session) = f.agent("old-agent", "", false).await;
    let (_up, _down) = open_agent_link(
        f.channel.clone(),
        &id,
        &session.session_id,
        &["exec-spawned.v1", "exec-stdin.v1"],
    )
    .await;
    let call = |size: ExecTerminal| {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(start(&id.machine_id, size)).unwrap();
        let mut cmdop = f.cmdop();
        let key = f.key();
        async move {
            let answer = tokio::time::timeout(
                PATIENCE,
                cmdop.exec_with_stdin(authed(ReceiverStream::new(rx), key)),
            )
            .await
            .expect("an answer");
            drop(tx);
            answer.expect_err("refused")
        }
    };
    let err = call(terminal(24, 80)).await;
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("exec-tty.v1"), "{}", err.message());
    let err = call(terminal(70_000, 80)).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn size_and_resizes_reach_the_agent_in_order_with_stdin() {
    let f = Fixture::start().await;
    let (id, session) = f.agent("tty-agent", "", false).await;
    let (_up, mut down) = open_agent_link(
        f.channel.clone(),
        &id,
        &session.session_id,
        &["exec-stdin.v1", "exec-tty.v1"],
    )
    .await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(start(&id.machine_id, terminal(33, 111)))
        .await
        .unwrap();
    let _events = f
        .cmdop()
        .exec_with_stdin(authed(ReceiverStream::new(rx), f.key()))
        .await
        .expect("call accepted");
    match next(&mut down).await {
        Some(agent_downlink::Msg::Start(s)) => {
            assert_eq!(s.terminal, Some(terminal(33, 111)));
            assert!(s.stdin_open);
            assert!(s.raw_ticket.is_empty(), "no side connection for a terminal");
        }
        other => panic!("expected start, got {other:?}"),
    }
    for part in [
        exec_input::Part::Stdin(Bytes::from_static(b"ls\r")),
        exec_input::Part::Resize(terminal(30, 100)),
        exec_input::Part::Stdin(Bytes::from_static(b"\x03")),
    ] {
        tx.send(ExecInput { part: Some(part) }).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next(&mut down).await {
            Some(agent_downlink::Msg::Stdin(s)) => seen.push((s.data, s.resize)),
            other => panic!("unexpected downlink {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            (Bytes::from_static(b"ls\r"), None),
            (Bytes::new(), Some(terminal(30, 100))),
            (Bytes::from_static(b"\x03"), None),
        ]
    );
}
