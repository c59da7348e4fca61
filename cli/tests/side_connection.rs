//! System tests for Exec side connections (capability `exec-raw.v1`): bulk
//! stdout leaves the gRPC stream for a TCP connection that the control
//! plane splices from the agent to the caller. Real `cmdop server` and
//! `cmdop agent` processes on loopback, driven through the generated gRPC
//! stubs (to see the protocol) and through the library client (to see what
//! applications get).

mod common;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use std::time::{Duration, Instant};

use cmdop::client::{set_log_sink, CancelToken, Error, LogLevel, Stream};
use cmdop_proto::{
    ext::{exec_event::Event, ExecExit, ServerInfoRequest},
    raw,
};
use common::{side::*, *};
use tokio::io::AsyncReadExt;

/// About 20 MiB of stdout: far beyond the point where the agent offers a
/// side connection.
const LINES: u32 = 2_600_000;

#[tokio::test]
async fn the_server_advertises_side_connections_over_plaintext() {
    let s = stack("side-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let info = e
        .server_info(ServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.capabilities.iter().any(|c| c == raw::CAPABILITY),
        "{:?}",
        info.capabilities
    );
}

#[tokio::test]
async fn big_stdout_moves_to_a_side_connection_in_order_and_complete() {
    let s = stack("side-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut req = exec_req(
        &s.session_id,
        &format!("{}; echo done >&2; exit 3", seq_with_a_pause(LINES)),
        60_000,
    );
    req.accept_raw_stdout = true;
    let mut stream = e.exec(req).await.expect("exec").into_inner();

    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut side: Option<tokio::net::TcpStream> = None;
    let mut switched_at = None;
    // After the switch the side connection must be read while the stream
    // is: the exit event only comes once the agent has sent all of stdout.
    let mut reader = None;
    let exit: ExecExit = loop {
        let ev = stream
            .message()
            .await
            .expect("exec stream")
            .expect("an exit event");
        match ev.event {
            Some(Event::Stdout(b)) => {
                assert!(
                    switched_at.is_none(),
                    "stdout on the stream after the switch"
                );
                stdout.extend_from_slice(&b);
            }
            Some(Event::Stderr(b)) => stderr.extend_from_slice(&b),
            Some(Event::RawOffer(offer)) => {
                assert!(side.is_none() && reader.is_none(), "one offer per command");
                let (conn, answer) = open_side(&s.server.addr, &offer.ticket).await;
                assert_eq!(answer, raw::ACCEPTED);
                side = Some(conn);
            }
            Some(Event::RawSwitch(_)) => {
                let mut conn = side.take().expect("switch without an offer");
                switched_at = Some(stdout.len());
                reader = Some(tokio::spawn(async move {
                    let mut rest = Vec::new();
                    conn.read_to_end(&mut rest).await.map(|_| rest)
                }));
            }
            Some(Event::Exit(x)) => break x,
            _ => {}
        }
    };
    let before = switched_at.expect("20 MiB of stdout moves to the side connection");
    assert!(
        before >= 1024 * 1024,
        "small outputs stay on the stream ({before} bytes before the switch)"
    );
    let rest = reader
        .expect("a reader")
        .await
        .unwrap()
        .expect("read the side connection");
    assert_eq!(
        exit.raw_stdout_bytes,
        rest.len() as u64,
        "the agent's count matches what arrived"
    );
    stdout.extend_from_slice(&rest);
    assert!(
        stdout == seq_text(LINES),
        "stdout arrived in order and complete ({} bytes)",
        stdout.len()
    );
    assert_eq!(stderr, b"done\n");
    assert_eq!((exit.exit_code, exit.timed_out), (3, false));
}

#[tokio::test]
async fn callers_that_do_not_ask_get_everything_on_the_stream() {
    let s = stack("side-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut stream = e
        .exec(exec_req(&s.session_id, &format!("seq 1 {LINES}"), 60_000))
        .await
        .unwrap()
        .into_inner();
    let mut stdout = Vec::new();
    let exit = loop {
        match stream
            .message()
            .await
            .unwrap()
            .expect("an exit event")
            .event
        {
            Some(Event::Stdout(b)) => stdout.extend_from_slice(&b),
            Some(Event::RawOffer(_)) | Some(Event::RawSwitch(_)) => {
                panic!("side connection events for a caller that did not ask")
            }
            Some(Event::Exit(x)) => break x,
            _ => {}
        }
    };
    assert_eq!(exit.raw_stdout_bytes, 0);
    assert!(stdout == seq_text(LINES));
}

#[tokio::test]
async fn an_offer_nobody_takes_keeps_stdout_on_the_stream() {
    let s = stack("side-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut req = exec_req(&s.session_id, &format!("seq 1 {LINES}"), 60_000);
    req.accept_raw_stdout = true; // ... but never connects
    let mut stream = e.exec(req).await.unwrap().into_inner();
    let (mut stdout, mut offered) = (Vec::new(), false);
    let began = Instant::now();
    let exit = loop {
        match stream
            .message()
            .await
            .unwrap()
            .expect("an exit event")
            .event
        {
            Some(Event::Stdout(b)) => stdout.extend_from_slice(&b),
            Some(Event::RawOffer(_)) => offered = true,
            Some(Event::RawSwitch(_)) => panic!("switched to a side connection nobody opened"),
            Some(Event::Exit(x)) => break x,
            _ => {}
        }
    };
    assert!(offered);
    assert_eq!(exit.raw_stdout_bytes, 0);
    assert!(
        stdout == seq_text(LINES),
        "nothing lost while the offer was pending"
    );
    assert!(began.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn the_library_reads_big_stdout_through_the_side_connection() {
    let s = stack("side-host", &[]).await;
    // The client says in its debug log when stdout moves (the sink is
    // process-wide: count only this test's distinct command).
    let switches = Arc::new(AtomicUsize::new(0));
    let seen = switches.clone();
    set_log_sink(Some((
        LogLevel::Debug,
        Arc::new(move |_, msg: &str| {
            if msg.contains("continues on a side connection") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }),
    )));
    let c = library_client(&s, true).await;
    let out = c
        .execute(
            &format!("{}; echo tail >&2", seq_with_a_pause(LINES)),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("execute");
    assert!(out.native);
    assert!(
        out.stdout == seq_text(LINES),
        "stdout complete ({} bytes)",
        out.stdout.len()
    );
    assert_eq!(out.stderr, b"tail\n");
    assert_eq!(out.exit_code, 0);

    // Streaming without keeping: 256 MiB counted in the callback.
    let mut bytes = 0u64;
    let out = c
        .execute_stream_discarding(
            "head -c 268435456 /dev/zero",
            Some(Duration::from_secs(60)),
            |stream, data| {
                assert_eq!(stream, Stream::Stdout);
                assert!(data.iter().all(|&b| b == 0));
                bytes += data.len() as u64;
            },
            CancelToken::new(),
        )
        .await
        .expect("stream");
    assert_eq!(bytes, 256 << 20);
    assert_eq!(out.exit_code, 0);
    set_log_sink(None);
    assert!(
        switches.load(Ordering::SeqCst) >= 2,
        "both commands' stdout moved to a side connection"
    );
}

#[tokio::test]
async fn a_timeout_on_the_side_connection_returns_what_was_printed_and_kills_the_group() {
    let s = stack("side-host", &[]).await;
    let c = library_client(&s, false).await;
    // 8 MiB (switched to the side connection), then a grandchild that would
    // outlive the command; the pid goes to stderr first.
    let began = Instant::now();
    let err = c
        .execute(
            "echo $$ >&2; head -c 8388608 /dev/zero; sleep 30 & wait",
            Some(Duration::from_millis(2000)),
        )
        .await
        .expect_err("the command times out");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "took {:?}",
        began.elapsed()
    );
    let Error::Timeout {
        partial: Some(partial),
        ..
    } = err
    else {
        panic!("expected a timeout, got {err:?}")
    };
    assert_eq!(
        partial.stdout.len(),
        8 << 20,
        "everything printed before the timeout"
    );
    let pid: i32 = String::from_utf8_lossy(&partial.stderr)
        .trim()
        .parse()
        .expect("the pid on stderr");
    wait_gone(pid, Duration::from_secs(3), "its timeout").await;
}

#[tokio::test]
async fn cancelling_while_reading_the_side_connection_kills_the_command() {
    let s = stack("side-host", &[]).await;
    let c = library_client(&s, false).await;
    let cancel = CancelToken::new();
    let (mut pid, mut seen, mut stderr) = (0i32, 0u64, Vec::new());
    let err = c
        .execute_stream_discarding(
            "echo $$ >&2; exec yes",
            Some(Duration::from_secs(60)),
            |stream, data| match stream {
                Stream::Stderr => {
                    stderr.extend_from_slice(data);
                    pid = String::from_utf8_lossy(&stderr).trim().parse().unwrap_or(0);
                }
                Stream::Stdout => {
                    seen += data.len() as u64;
                    if seen > 64 << 20 {
                        cancel.cancel();
                    }
                }
            },
            cancel.clone(),
        )
        .await
        .expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert!(pid > 0, "pid reported");
    wait_gone(pid, Duration::from_secs(3), "the cancel").await;
}
