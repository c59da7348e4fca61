//! Side connections over real loopback sockets, through the real accept
//! loop: pairing, refusals, the byte mover, and the hand-off to gRPC.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use cmdop_proto::raw::{self, Role, ACCEPTED, REFUSED};
use futures::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{listener, Rendezvous};

/// Bound on every wait in these tests, so a bug fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

struct Harness {
    addr: SocketAddr,
    rendezvous: Arc<Rendezvous>,
    /// Keeps the accept loop running; yields what went to gRPC.
    grpc: listener::Incoming,
    /// Never sends a stop: the accept loop runs while the harness lives.
    _serving: tokio::sync::watch::Sender<bool>,
}

async fn harness(pairing_timeout: Duration) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rendezvous = Rendezvous::new(pairing_timeout);
    let tracker = crate::conns::Tracker::new(&crate::config::Limits::default());
    let (serving, stop) = tokio::sync::watch::channel(false);
    let grpc = listener::spawn(listener, Some(rendezvous.clone()), tracker, stop, None);
    Harness {
        addr,
        rendezvous,
        grpc,
        _serving: serving,
    }
}

/// Connects and sends the opening for `ticket` as `role`.
async fn open(addr: SocketAddr, role: Role, ticket: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&raw::opening(role, ticket).unwrap())
        .await
        .unwrap();
    stream
}

/// The control plane's one-byte answer.
async fn answer(stream: &mut TcpStream) -> u8 {
    tokio::time::timeout(PATIENCE, stream.read_u8())
        .await
        .expect("an answer in time")
        .expect("an answer byte")
}

/// Reads until EOF, which must come right after a REFUSED.
async fn expect_refused(stream: &mut TcpStream) {
    assert_eq!(answer(stream).await, REFUSED);
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("closed after the answer")
        .unwrap();
    assert!(rest.is_empty(), "nothing follows REFUSED");
}

/// Byte `i` of the test stream: not periodic at any power of two.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8 ^ (i >> 17) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_and_moves_64_mib_then_the_ticket_is_used() {
    let h = harness(raw::PAIRING_TIMEOUT).await;
    let ticket = h.rendezvous.register("exec_test");
    assert_eq!(h.rendezvous.registered(), 1);

    // The agent comes first and waits; the caller completes the pair.
    let mut agent = open(h.addr, Role::Agent, ticket.as_str()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut caller = open(h.addr, Role::Caller, ticket.as_str()).await;
    assert_eq!(answer(&mut caller).await, ACCEPTED);
    assert_eq!(answer(&mut agent).await, ACCEPTED);
    assert_eq!(h.rendezvous.registered(), 0, "a paired ticket is gone");

    const TOTAL: u64 = 64 << 20;
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut at = 0u64;
        while at < TOTAL {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = pattern(at + i as u64);
            }
            agent.write_all(&buf).await.unwrap();
            at += buf.len() as u64;
        }
        agent.shutdown().await.unwrap();
        agent
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut at = 0u64;
        loop {
            let n = caller.read(&mut buf).await.unwrap();
            if n == 0 {
                return at;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(at + i as u64), "byte {}", at + i as u64);
            }
            at += n as u64;
        }
    });
    let received = tokio::time::timeout(PATIENCE * 3, reader)
        .await
        .expect("the caller reaches EOF in time")
        .unwrap();
    assert_eq!(received, TOTAL);
    let mut agent = writer.await.unwrap();
    // After the agent's half-close, the control plane closes its end too.
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, agent.read_to_end(&mut rest))
        .await
        .expect("the agent's connection is closed")
        .unwrap();
    assert!(rest.is_empty());

    // The same ticket again, while `Exec` still holds it: used up.
    let mut late = open(h.addr, Role::Agent, ticket.as_str()).await;
    expect_refused(&mut late).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tickets_and_garbage_are_refused() {
    let h = harness(raw::PAIRING_TIMEOUT).await;
    let _registered = h.rendezvous.register("exec_test");

    let mut stranger = open(h.addr, Role::Caller, &raw::new_ticket()).await;
    expect_refused(&mut stranger).await;

    // Starts like a side connection, then is not one.
    let mut garbage = TcpStream::connect(h.addr).await.unwrap();
    garbage.write_all(&[b'C'; raw::OPENING_LEN]).await.unwrap();
    expect_refused(&mut garbage).await;

    // The right magic with a role that does not exist.
    let mut bad_role = raw::opening(Role::Agent, &raw::new_ticket()).unwrap();
    bad_role[9] = b'X';
    let mut odd = TcpStream::connect(h.addr).await.unwrap();
    odd.write_all(&bad_role).await.unwrap();
    expect_refused(&mut odd).await;

    assert_eq!(h.rendezvous.registered(), 1, "refusals leave tickets alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_side_is_refused_after_the_timeout_and_the_ticket_is_spent() {
    let timeout = Duration::from_millis(200);
    let h = harness(timeout).await;
    let ticket = h.rendezvous.register("exec_test");

    let started = tokio::time::Instant::now();
    let mut agent = open(h.addr, Role::Agent, ticket.as_str()).await;
    expect_refused(&mut agent).await;
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < Duration::from_secs(3),
        "refused after {waited:?}"
    );

    // One pairing attempt per ticket: a caller coming late finds nothing.
    let mut caller = open(h.addr, Role::Caller, ticket.as_str()).await;
    expect_refused(&mut caller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_opening_is_refused_after_the_timeout() {
    let h = harness(Duration::from_millis(200)).await;
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"CMDOP").await.unwrap();
    expect_refused(&mut slow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_role_is_refused() {
    let h = harness(raw::PAIRING_TIMEOUT).await;
    let ticket = h.rendezvous.register("exec_test");

    let mut first = open(h.addr, Role::Caller, ticket.as_str()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = open(h.addr, Role::Caller, ticket.as_str()).await;
    expect_refused(&mut second).await;

    // The first one still pairs.
    let mut agent = open(h.addr, Role::Agent, ticket.as_str()).await;
    assert_eq!(answer(&mut first).await, ACCEPTED);
    assert_eq!(answer(&mut agent).await, ACCEPTED);
    agent.write_all(b"hello").await.unwrap();
    agent.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, first.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_side_is_refused_as_soon_as_the_exec_ends() {
    let h = harness(raw::PAIRING_TIMEOUT).await;
    let ticket = h.rendezvous.register("exec_test");
    let text = ticket.as_str().to_owned();

    let mut agent = open(h.addr, Role::Agent, &text).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = tokio::time::Instant::now();
    drop(ticket);
    expect_refused(&mut agent).await;
    assert!(
        started.elapsed() < raw::PAIRING_TIMEOUT / 2,
        "not left to time out"
    );
    assert_eq!(h.rendezvous.registered(), 0);
    let mut caller = open(h.addr, Role::Caller, &text).await;
    expect_refused(&mut caller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_leaving_makes_the_agents_writes_fail() {
    let h = harness(raw::PAIRING_TIMEOUT).await;
    let ticket = h.rendezvous.register("exec_test");
    let mut caller = open(h.addr, Role::Caller, ticket.as_str()).await;
    let mut agent = open(h.addr, Role::Agent, ticket.as_str()).await;
    assert_eq!(answer(&mut caller).await, ACCEPTED);
    assert_eq!(answer(&mut agent).await, ACCEPTED);

    let writer = tokio::spawn(async move {
        let buf = vec![7u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            if let Err(e) = agent.write_all(&buf).await {
                return (sent, e);
            }
            sent += buf.len() as u64;
        }
    });
    let mut some = vec![0u8; 1024 * 1024];
    caller.read_exact(&mut some).await.unwrap();
    drop(caller);
    let (sent, error) = tokio::time::timeout(PATIENCE, writer)
        .await
        .expect("the agent's writes fail instead of blocking")
        .unwrap();
    assert!(sent >= some.len() as u64);
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_else_goes_to_grpc_untouched() {
    let mut h = harness(raw::PAIRING_TIMEOUT).await;
    for opening in [&b"PRI * HTTP/2.0\r\n"[..], &[0x16, 0x03, 0x01][..]] {
        let mut client = TcpStream::connect(h.addr).await.unwrap();
        client.write_all(opening).await.unwrap();
        let mut server = tokio::time::timeout(PATIENCE, h.grpc.next())
            .await
            .expect("handed to gRPC")
            .expect("stream open")
            .expect("a connection");
        assert!(server.tcp().nodelay().unwrap());
        let mut got = vec![0u8; opening.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, opening, "the first bytes are still there");
    }
}

#[test]
fn tls_servers_give_tickets_only_for_pinned_tls_side_connections() {
    use super::{side_mode, SideMode};
    let pin = [9u8; 32];
    // Plaintext server: as before, plus TLS when both ends can.
    assert_eq!(
        side_mode(false, true, &[], true, false),
        Some(SideMode::Plain)
    );
    assert_eq!(
        side_mode(false, true, &pin, true, true),
        Some(SideMode::Tls(pin))
    );
    assert_eq!(
        side_mode(false, true, &pin, true, false),
        Some(SideMode::Plain)
    );
    assert_eq!(side_mode(false, false, &pin, true, true), None);
    // TLS server: never plain.
    assert_eq!(
        side_mode(true, true, &pin, true, true),
        Some(SideMode::Tls(pin))
    );
    assert_eq!(side_mode(true, true, &[], true, true), None, "no pin");
    assert_eq!(
        side_mode(true, true, &pin[..31], true, true),
        None,
        "bad pin"
    );
    assert_eq!(side_mode(true, true, &pin, true, false), None, "old agent");
    assert_eq!(side_mode(true, false, &pin, true, true), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_ticket_moves_bytes_from_the_caller_to_the_agent() {
    let h = harness(raw::PAIRING_TIMEOUT).await;
    let ticket = h.rendezvous.register_upload("xfer_test");
    // The caller comes first this time; the agent (the receiver) is
    // answered first once it arrives.
    let mut caller = open(h.addr, Role::Caller, ticket.as_str()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut agent = open(h.addr, Role::Agent, ticket.as_str()).await;
    assert_eq!(answer(&mut agent).await, ACCEPTED);
    assert_eq!(answer(&mut caller).await, ACCEPTED);

    const TOTAL: u64 = 8 << 20;
    let writer = tokio::spawn(async move {
        let buf: Vec<u8> = (0..TOTAL).map(pattern).collect();
        caller.write_all(&buf).await.unwrap();
        caller.shutdown().await.unwrap();
        caller
    });
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE * 3, agent.read_to_end(&mut got))
        .await
        .expect("the agent reaches EOF in time")
        .unwrap();
    assert_eq!(got.len() as u64, TOTAL);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)),
        "every byte, in order"
    );
    assert_eq!(ticket.moved(), TOTAL, "the ticket counts the bytes moved");
    // After the caller's half-close the control plane closes its end too.
    let mut caller = writer.await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, caller.read_to_end(&mut rest))
        .await
        .expect("the caller's connection is closed")
        .unwrap();
    assert!(rest.is_empty());
}
