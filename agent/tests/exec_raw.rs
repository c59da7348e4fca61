//! Bulk stdout over side connections (exec-raw.v1) with real commands and
//! real sockets: a loopback listener in the test plays the control plane's
//! side-connection endpoint.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use cmdop_agent::exec::run_exec_credited;
use cmdop_agent::exec_raw::RAW_SWITCH_AFTER;
use cmdop_proto::{
    ext::{agent_uplink, AgentUplink, ExecFinished, ExecStart, ExecWindow},
    raw::{self, Role, ACCEPTED, OPENING_LEN, REFUSED},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

/// What the uplink carried, in order.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Stdout(Bytes),
    Stderr(Bytes),
    Offered,
    Switched,
}

struct Outcome {
    events: Vec<Event>,
    finished: ExecFinished,
}

impl Outcome {
    fn stdout(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.events {
            if let Event::Stdout(d) = e {
                out.extend_from_slice(d);
            }
        }
        out
    }

    fn position(&self, wanted: &Event) -> Option<usize> {
        self.events.iter().position(|e| e == wanted)
    }

    fn count(&self, wanted: &Event) -> usize {
        self.events.iter().filter(|e| *e == wanted).count()
    }

    fn raw_stdout_bytes(&self) -> u64 {
        self.finished.exit.as_ref().unwrap().raw_stdout_bytes
    }
}

/// The control plane's side-connection endpoint: accepts one connection,
/// checks its opening, answers `answer`, and after `Y` reads to EOF
/// (unless `stall`, when it holds the connection without reading).
struct Endpoint {
    addr: SocketAddr,
    task: JoinHandle<Vec<u8>>,
}

fn endpoint(ticket: String, answer: u8, stall: Option<oneshot::Receiver<()>>) -> Endpoint {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut opening = [0u8; OPENING_LEN];
        socket.read_exact(&mut opening).await.unwrap();
        let (role, got) = raw::parse_opening(&opening).unwrap();
        assert_eq!(role, Role::Agent);
        assert_eq!(got, ticket);
        socket.write_all(&[answer]).await.unwrap();
        let mut data = Vec::new();
        if answer == ACCEPTED {
            if let Some(resume) = stall {
                let _ = resume.await;
            }
            // After a cancel the agent may reset the connection; keep what came.
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                }
            }
        }
        data
    });
    Endpoint { addr, task }
}

fn exec_start(command: &str, ticket: &str) -> ExecStart {
    ExecStart {
        exec_id: "raw1".into(),
        command: command.into(),
        window: Some(ExecWindow {
            bytes: 256 * 1024,
            chunks: 8,
        }),
        raw_ticket: ticket.into(),
        ..Default::default()
    }
}

/// Runs `start` the way ExecRunner does, crediting output as soon as it
/// arrives. `switched` fires when `raw_switched` is seen.
async fn run(
    start: ExecStart,
    server_url: &str,
    cancel: oneshot::Receiver<()>,
    switched: Option<oneshot::Sender<()>>,
) -> Outcome {
    let (tx, mut rx) = mpsc::channel(64);
    let (credit_tx, credit_rx) = watch::channel(0u64);
    let collect = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut delivered = 0u64;
        let mut switched = switched;
        while let Some(AgentUplink { msg }) = rx.recv().await {
            let event = match msg {
                Some(agent_uplink::Msg::Output(o)) => {
                    assert_eq!(o.exec_id, "raw1");
                    delivered += o.data.len() as u64;
                    credit_tx.send_replace(delivered);
                    if o.is_stderr {
                        Event::Stderr(o.data)
                    } else {
                        Event::Stdout(o.data)
                    }
                }
                Some(agent_uplink::Msg::RawOffered(o)) => {
                    assert_eq!(o.exec_id, "raw1");
                    Event::Offered
                }
                Some(agent_uplink::Msg::RawSwitched(s)) => {
                    assert_eq!(s.exec_id, "raw1");
                    if let Some(tell) = switched.take() {
                        let _ = tell.send(());
                    }
                    Event::Switched
                }
                _ => continue,
            };
            events.push(event);
        }
        events
    });
    let home = std::env::temp_dir();
    let finished =
        run_exec_credited(start, &home, cancel, &tx, Some(credit_rx), Some(server_url)).await;
    drop(tx);
    Outcome {
        events: collect.await.unwrap(),
        finished,
    }
}

/// `seq 1 2000000` (about 14 MB), pausing after the first 1.3 MB (past
/// the offer point) so that the handshake certainly finishes while there is
/// stdout left: on a busy machine the rest could otherwise all go as
/// ExecOutput first.
const SEQ_WITH_A_PAUSE: &str = "seq 1 200000; sleep 0.3; seq 200001 2000000";

/// What `seq 1 n` prints.
fn seq(n: u32) -> Vec<u8> {
    let mut out = String::new();
    for i in 1..=n {
        out.push_str(&i.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// The endpoint's bytes, or `None` when nobody connected within a moment.
async fn side_bytes(ep: Endpoint, wait: Duration) -> Option<Vec<u8>> {
    let mut task = ep.task;
    match tokio::time::timeout(wait, &mut task).await {
        Ok(data) => Some(data.unwrap()),
        Err(_) => {
            task.abort();
            None
        }
    }
}

fn assert_same(got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "output differs: got {} bytes, want {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

#[tokio::test]
async fn bulk_stdout_moves_to_an_accepted_side_connection() {
    let ticket = raw::new_ticket();
    let ep = endpoint(ticket.clone(), ACCEPTED, None);
    let url = format!("http://{}", ep.addr);
    let (_keep, cancel) = oneshot::channel();
    let o = run(exec_start(SEQ_WITH_A_PAUSE, &ticket), &url, cancel, None).await;
    let side = side_bytes(ep, Duration::from_secs(10))
        .await
        .expect("the agent connected");

    let exit = o.finished.exit.clone().unwrap();
    assert_eq!((exit.exit_code, exit.signal), (0, 0));
    assert_eq!(o.count(&Event::Offered), 1);
    assert_eq!(o.count(&Event::Switched), 1);
    let offered = o.position(&Event::Offered).unwrap();
    let switched = o.position(&Event::Switched).unwrap();
    assert!(offered < switched);
    let before_offer: usize = o.events[..offered]
        .iter()
        .map(|e| match e {
            Event::Stdout(d) => d.len(),
            _ => 0,
        })
        .sum();
    assert!(
        before_offer as u64 >= RAW_SWITCH_AFTER,
        "offered after only {before_offer} bytes"
    );
    assert!(
        !o.events[switched..]
            .iter()
            .any(|e| matches!(e, Event::Stdout(_))),
        "stdout as ExecOutput after raw_switched"
    );
    assert!(!o.events.iter().any(|e| matches!(e, Event::Stderr(_))));

    eprintln!(
        "grpc {} side {} events {}",
        o.stdout().len(),
        side.len(),
        o.events.len()
    );
    assert!(!side.is_empty(), "nothing went over the side connection");
    assert_eq!(o.raw_stdout_bytes(), side.len() as u64);
    let mut all = o.stdout();
    all.extend_from_slice(&side);
    assert_same(&all, &seq(2_000_000));
}

#[tokio::test]
async fn a_refused_side_connection_leaves_stdout_on_grpc() {
    let ticket = raw::new_ticket();
    let ep = endpoint(ticket.clone(), REFUSED, None);
    let url = format!("http://{}", ep.addr);
    let (_keep, cancel) = oneshot::channel();
    let o = run(exec_start("seq 1 2000000", &ticket), &url, cancel, None).await;
    let side = side_bytes(ep, Duration::from_secs(10))
        .await
        .expect("the agent connected");

    assert!(side.is_empty());
    assert_eq!(o.count(&Event::Offered), 1);
    assert_eq!(o.count(&Event::Switched), 0);
    assert_eq!(o.raw_stdout_bytes(), 0);
    assert_same(&o.stdout(), &seq(2_000_000));
}

#[tokio::test]
async fn no_offer_over_tls_without_a_ticket_or_for_small_output() {
    let ticket = raw::new_ticket();
    // (command, ticket, scheme): each must stay on gRPC without trying.
    let cases = [
        ("seq 1 400000", ticket.as_str(), "https"),
        ("seq 1 400000", "", "http"),
        ("seq 1 1000", ticket.as_str(), "http"),
    ];
    for (command, with_ticket, scheme) in cases {
        let ep = endpoint(ticket.clone(), ACCEPTED, None);
        let url = format!("{scheme}://{}", ep.addr);
        let (_keep, cancel) = oneshot::channel();
        let o = run(exec_start(command, with_ticket), &url, cancel, None).await;
        let n: u32 = command.rsplit(' ').next().unwrap().parse().unwrap();
        assert_same(&o.stdout(), &seq(n));
        assert_eq!(o.count(&Event::Offered), 0, "{command} {scheme}");
        assert_eq!(o.count(&Event::Switched), 0);
        assert_eq!(o.raw_stdout_bytes(), 0);
        assert!(
            side_bytes(ep, Duration::from_millis(200)).await.is_none(),
            "{command} {scheme}: the agent opened a side connection"
        );
    }
}

#[tokio::test]
async fn cancel_stops_a_side_connection_stuck_on_a_slow_reader() {
    let ticket = raw::new_ticket();
    let (resume, stall) = oneshot::channel();
    let ep = endpoint(ticket.clone(), ACCEPTED, Some(stall));
    let url = format!("http://{}", ep.addr);
    let (cancel_tx, cancel) = oneshot::channel();
    let (switched_tx, switched) = oneshot::channel();
    let exec = tokio::spawn({
        let url = url.clone();
        let start = exec_start("cat /dev/zero", &ticket);
        async move { run(start, &url, cancel, Some(switched_tx)).await }
    });
    tokio::time::timeout(Duration::from_secs(10), switched)
        .await
        .expect("switched within 10 s")
        .unwrap();
    // Let the socket buffers fill up so the copy blocks in splice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = std::time::Instant::now();
    cancel_tx.send(()).unwrap();
    let o = tokio::time::timeout(Duration::from_secs(5), exec)
        .await
        .expect("finished promptly after cancel")
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(o.finished.exit.as_ref().unwrap().signal, 9);
    assert!(o.raw_stdout_bytes() > 0);
    // The agent's end is shut down: the reader sees the end of the stream.
    let _ = resume.send(());
    let side = side_bytes(ep, Duration::from_secs(5))
        .await
        .expect("the side connection ended");
    assert!(side.iter().all(|b| *b == 0));
}

#[tokio::test]
async fn a_background_process_holding_stdout_gets_only_the_drain_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let ticket = raw::new_ticket();
    let ep = endpoint(ticket.clone(), ACCEPTED, None);
    let url = format!("http://{}", ep.addr);
    let (_keep, cancel) = oneshot::channel();
    let command = format!(
        "{SEQ_WITH_A_PAUSE}; sleep 30 & echo $! > {}",
        pidfile.display()
    );
    let began = std::time::Instant::now();
    let o = run(exec_start(&command, &ticket), &url, cancel, None).await;
    let took = began.elapsed();
    let side = side_bytes(ep, Duration::from_secs(5))
        .await
        .expect("the side connection ended");
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        if let Ok(pid) = pid.trim().parse() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(o.finished.exit.as_ref().unwrap().exit_code, 0);
    assert_eq!(o.count(&Event::Switched), 1);
    assert_eq!(o.raw_stdout_bytes(), side.len() as u64);
    let mut all = o.stdout();
    all.extend_from_slice(&side);
    assert_same(&all, &seq(2_000_000));
}
