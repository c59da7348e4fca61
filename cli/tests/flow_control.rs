//! Per-exec flow control between control plane and agent: a client that
//! stops reading one command's output stalls only that command, never the
//! other commands on the same machine; and such a stalled command still
//! dies promptly when cancelled or timed out.

mod common;

use std::time::{Duration, Instant};

use cmdop_proto::ext::{exec_event::Event, ExecExit};
use common::*;
use tonic::Streaming;

/// 64 MiB: far more than every buffer between the command and the client.
const BIG: u64 = 64 * 1024 * 1024;

/// Reads the `started` event and returns the command's pid.
async fn started_pid(stream: &mut Streaming<cmdop_proto::ext::ExecEvent>) -> i32 {
    match stream
        .message()
        .await
        .expect("exec stream")
        .expect("an event")
        .event
    {
        Some(Event::Started(s)) => {
            assert_ne!(s.pid, 0, "the agent reports pids");
            s.pid as i32
        }
        other => panic!("expected `started`, got {other:?}"),
    }
}

/// Reads the rest of an exec: (stdout bytes, all of them zero, exit).
async fn drain(stream: &mut Streaming<cmdop_proto::ext::ExecEvent>) -> (u64, bool, ExecExit) {
    let (mut bytes, mut zeros) = (0u64, true);
    while let Some(ev) = stream.message().await.expect("exec stream") {
        match ev.event {
            Some(Event::Stdout(b)) => {
                bytes += b.len() as u64;
                zeros &= b.iter().all(|&x| x == 0);
            }
            Some(Event::Stderr(b)) => panic!("unexpected stderr: {}", String::from_utf8_lossy(&b)),
            Some(Event::Exit(x)) => return (bytes, zeros, x),
            _ => {}
        }
    }
    panic!("exec stream ended without an exit event");
}

/// Starts exec "A", which writes `BIG` bytes of zeros, and waits for its pid.
async fn start_big(
    e: &mut Ext,
    session_id: &str,
    timeout_ms: u32,
) -> (Streaming<cmdop_proto::ext::ExecEvent>, i32) {
    let mut a = e
        .exec(exec_req(
            session_id,
            &format!("exec head -c {BIG} /dev/zero"),
            timeout_ms,
        ))
        .await
        .expect("start A")
        .into_inner();
    let pid = started_pid(&mut a).await;
    (a, pid)
}

#[tokio::test]
async fn a_slow_reader_does_not_stall_other_execs_on_the_machine() {
    let s = stack("flow-host", &[]).await;
    let mut slow = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let (mut a, pid) = start_big(&mut slow, &s.session_id, 0).await;
    // Let A fill every buffer on its way while nobody reads it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        pid_alive(pid),
        "A cannot have finished: its client is not reading"
    );

    let mut quick = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let began = Instant::now();
    let b = tokio::time::timeout(Duration::from_secs(2), async {
        let mut b = quick
            .exec(exec_req(&s.session_id, "echo quick", 0))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(ev) = b.message().await? {
            match ev.event {
                Some(Event::Stdout(d)) => out.extend_from_slice(&d),
                Some(Event::Exit(x)) => return Ok::<_, tonic::Status>((out, x)),
                _ => {}
            }
        }
        Err(tonic::Status::internal("B ended without an exit event"))
    })
    .await;
    let (out, exit) = b
        .unwrap_or_else(|_| panic!("B did not finish within 2 s while A's client was not reading"))
        .expect("B");
    assert_eq!(out, b"quick\n");
    assert_eq!(exit.exit_code, 0);
    assert!(began.elapsed() < Duration::from_secs(2));

    // A's client resumes and gets every byte.
    let (bytes, zeros, exit) = tokio::time::timeout(Duration::from_secs(60), drain(&mut a))
        .await
        .expect("A finished within 60 s once read");
    assert_eq!(bytes, BIG, "A's output arrived complete");
    assert!(zeros, "A's output is intact");
    assert_eq!(
        (exit.exit_code, exit.signal, exit.timed_out),
        (0, 0, false),
        "{exit:?}"
    );
}

#[tokio::test]
async fn cancelling_an_exec_blocked_on_credit_kills_it() {
    let s = stack("flow-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let (a, pid) = start_big(&mut e, &s.session_id, 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(pid_alive(pid), "A is blocked, not finished");
    drop(a);
    wait_gone(pid, Duration::from_secs(3), "the cancelled call").await;
}

#[tokio::test]
async fn a_timeout_kills_an_exec_blocked_on_credit() {
    let s = stack("flow-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let (mut a, pid) = start_big(&mut e, &s.session_id, 1000).await;
    // Nobody reads A; its timeout still kills it.
    wait_gone(pid, Duration::from_secs(4), "its timeout").await;
    let (bytes, _, exit) = tokio::time::timeout(Duration::from_secs(30), drain(&mut a))
        .await
        .expect("A reported its end once read");
    assert!(bytes < BIG, "A was killed before it wrote everything");
    assert!(exit.timed_out, "{exit:?}");
}
