//! Streamed stdin (`Cmdop.ExecWithStdin`, capability `exec-stdin.v1`)
//! through a real control plane, with scripted agents: an old one that
//! lacks the capability, and one that acknowledges stdin only when told,
//! to see the control plane's flow control.

mod support;

use std::time::Duration;

use bytes::Bytes;
use cmdop_proto::ext::{
    agent_downlink, agent_uplink, exec_event, exec_input, AgentUplink, ExecExit, ExecFinished,
    ExecInput, ExecRequest, ExecStdinWritten,
};
use support::{authed, open_agent_link, Fixture};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const MIB: usize = 1024 * 1024;
const PATIENCE: Duration = Duration::from_secs(20);

fn start(machine_id: &str) -> ExecInput {
    ExecInput {
        part: Some(exec_input::Part::Start(ExecRequest {
            machine_id: machine_id.into(),
            command: "cat".into(),
            stdin: Bytes::from_static(b"first"),
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
async fn agents_without_streamed_stdin_get_unimplemented() {
    let f = Fixture::start().await;
    let (id, terminal) = f.agent("old-agent", "", false).await;
    let (_up, _down) = open_agent_link(
        f.channel.clone(),
        &id,
        &terminal.session_id,
        &["exec-spawned.v1"],
    )
    .await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(start(&id.machine_id)).await.unwrap();
    let err = tokio::time::timeout(
        PATIENCE,
        f.cmdop()
            .exec_with_stdin(authed(ReceiverStream::new(rx), f.key())),
    )
    .await
    .expect("an answer")
    .expect_err("the agent cannot take streamed stdin");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("exec-stdin.v1"), "{}", err.message());
}

#[tokio::test]
async fn stdin_is_forwarded_within_a_window_of_what_the_agent_acknowledged() {
    let f = Fixture::start().await;
    let (id, terminal) = f.agent("stdin-agent", "", false).await;
    let (up, mut down) = open_agent_link(
        f.channel.clone(),
        &id,
        &terminal.session_id,
        &["exec-stdin.v1"],
    )
    .await;

    let (tx, rx) = mpsc::channel(4);
    tx.send(start(&id.machine_id)).await.unwrap();
    let mut events = f
        .cmdop()
        .exec_with_stdin(authed(ReceiverStream::new(rx), f.key()))
        .await
        .expect("call accepted")
        .into_inner();
    // The client writes 8 MiB and closes, as fast as the call takes it.
    let writer = tokio::spawn(async move {
        for i in 0..8u8 {
            let chunk = ExecInput {
                part: Some(exec_input::Part::Stdin(Bytes::from(vec![i; MIB]))),
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(ExecInput {
                part: Some(exec_input::Part::CloseStdin(true)),
            })
            .await;
    });

    let exec_id = match next(&mut down).await {
        Some(agent_downlink::Msg::Start(s)) => {
            assert!(s.stdin_open, "the start keeps stdin open");
            assert_eq!(&s.stdin[..], b"first");
            s.exec_id
        }
        other => panic!("expected start, got {other:?}"),
    };
    // Without acknowledgements the control plane stops at its window.
    let mut got = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), down.message()).await {
            Err(_) => break, // silence: the window is spent
            Ok(msg) => match msg.unwrap().unwrap().msg {
                Some(agent_downlink::Msg::Stdin(s)) => {
                    assert!(!s.close, "closed before all stdin arrived");
                    got += s.data.len();
                }
                other => panic!("unexpected downlink {other:?}"),
            },
        }
    }
    assert!(
        (2 * MIB..=3 * MIB).contains(&got),
        "{got} bytes forwarded unacknowledged; the window is 2 MiB (plus one chunk)"
    );
    // Acknowledging lets the rest through, then the close.
    let ack = |written: usize| AgentUplink {
        msg: Some(agent_uplink::Msg::StdinWritten(ExecStdinWritten {
            exec_id: exec_id.clone(),
            written: written as u64,
        })),
    };
    up.send(ack(got)).await.unwrap();
    loop {
        match next(&mut down).await {
            Some(agent_downlink::Msg::Stdin(s)) => {
                got += s.data.len();
                if s.close {
                    break;
                }
                up.send(ack(got)).await.unwrap();
            }
            other => panic!("unexpected downlink {other:?}"),
        }
    }
    assert_eq!(got, 8 * MIB);
    writer.await.unwrap();
    up.send(AgentUplink {
        msg: Some(agent_uplink::Msg::Finished(ExecFinished {
            exec_id: exec_id.clone(),
            exit: Some(ExecExit::default()),
            pid: 9,
        })),
    })
    .await
    .unwrap();
    let mut exited = false;
    while let Some(ev) = tokio::time::timeout(PATIENCE, events.message())
        .await
        .expect("events")
        .expect("exec stream")
    {
        if let Some(exec_event::Event::Exit(exit)) = ev.event {
            assert_eq!(exit.exit_code, 0);
            exited = true;
        }
    }
    assert!(exited, "the call ended with an exit event");
}
