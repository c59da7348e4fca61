//! Side connections through another replica: two real `cmdop server`
//! replicas on one PostgreSQL database, a real agent on the first (the
//! owner), clients on the second. A forwarded Exec or Download still moves
//! its bulk output to a side connection: the client opens it to the replica
//! it talks to, which relays it to the owner's peer port. Plain over
//! plaintext, pinned TLS 1.3 end to end over TLS.

mod common;

use std::path::Path;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use std::time::{Duration, Instant};

use cmdop::client::{
    set_log_sink, CancelToken, Client, ClientOptions, Credentials, LogLevel, TransferOptions,
};
use cmdop_proto::{
    ext::{exec_event::Event, ExecExit, ExecRequest},
    raw,
};
use common::{postgres::Postgres, side::*, *};
use tokio::io::AsyncReadExt;

const PEER_SECRET: &str = "cluster-side-test-peer-secret-0123456789";
/// About 20 MiB of stdout: far beyond the agent's offer point.
const LINES: u32 = 2_600_000;

/// Two replicas: the agent on `owner`, clients on `via`.
struct Pair {
    // Dropped (killed) first.
    _agent: Proc,
    owner: Server,
    via: Server,
    ws: Workspace,
    host: String,
    /// The private CA (TLS pairs only).
    ca: Option<Vec<u8>>,
    url: String,
    dir: tempfile::TempDir,
    // Dropped (stopped) last.
    _pg: Postgres,
}

fn replica(url: &str, dir: &Path, id: &str, tls: &[&str]) -> Server {
    let mut flags = vec!["--peer-listen", "127.0.0.1:0", "--replica-id", id];
    flags.extend_from_slice(tls);
    server_pg_env(url, &[("CMDOP_PEER_SECRET", PEER_SECRET)], dir, &flags)
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// Starts the pair (over TLS with a private CA when `tls`) and waits until
/// the agent serves native exec through `via`.
async fn pair(prefix: &str, tls: bool) -> Pair {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_tls_certs(dir.path());
    let tls_flags = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let tls_flags: &[&str] = if tls { &tls_flags } else { &[] };
    let owner = replica(&url, dir.path(), "rep_owner", tls_flags);
    let via = replica(&url, dir.path(), "rep_via", tls_flags);
    let ws = create_workspace_pg(&url, "alpha");
    let token = admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
    let host = unique(prefix);
    let agent = if tls {
        Proc(
            std::process::Command::new(cmdop_bin())
                .args(["--log-level", "warn", "agent", "--server"])
                .arg(format!("https://localhost:{}", port(&owner.addr)))
                .args(["--hostname", &host, "--heartbeat-secs", "1"])
                .arg("--state-file")
                .arg(dir.path().join("agent.json"))
                .arg("--ca-cert")
                .arg(&ca)
                .env("CMDOP_ENROLL_TOKEN", &token)
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("spawn cmdop agent"),
        )
    } else {
        start_agent(
            &owner.addr,
            Some(&token),
            &dir.path().join("agent.json"),
            &host,
            &["--heartbeat-secs", "1"],
        )
    };
    let p = Pair {
        _agent: agent,
        owner,
        via,
        ws,
        host,
        ca: tls.then(|| std::fs::read(&ca).expect("CA file")),
        url,
        dir,
        _pg: pg,
    };
    // Through `via`: native exec once the owner has recorded the route.
    let c = p.client(false).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.set_machine(&p.host).await.is_ok_and(|m| m.native_exec) {
        assert!(
            Instant::now() < deadline,
            "{} did not serve native exec through the other replica within 30 s",
            p.host
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p
}

impl Pair {
    /// A library client of `via` (debug log on with `debug`).
    async fn client(&self, debug: bool) -> Client {
        let mut opts = match &self.ca {
            None => ClientOptions::local("127.0.0.1", port(&self.via.addr)),
            Some(ca) => {
                let mut o = ClientOptions::remote(Credentials::None);
                o.server = format!("localhost:{}", port(&self.via.addr));
                o.ca_pem = Some(ca.clone());
                o
            }
        };
        opts.credentials = Credentials::ApiKey(self.ws.api_key.clone());
        opts.timeout = Duration::from_secs(30);
        opts.debug = debug;
        let c = Client::new(opts).expect("client");
        c.open().await.expect("connect");
        c
    }

    /// The machine id, as `via` resolves it (plaintext pairs).
    async fn machine_id(&self) -> String {
        let mut e = ext(&self.via.addr, Some(&self.ws.api_key)).await;
        wait_native_exec(&mut e, &self.host).await.machine_id
    }
}

fn side_req(machine_id: &str, command: &str) -> ExecRequest {
    ExecRequest {
        machine_id: machine_id.into(),
        command: command.into(),
        timeout_ms: 120_000,
        accept_raw_stdout: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_exec_s_big_stdout_is_relayed_over_a_side_connection() {
    let p = pair("fwd-side", false).await;
    let machine_id = p.machine_id().await;
    let mut e = ext(&p.via.addr, Some(&p.ws.api_key)).await;
    let req = side_req(
        &machine_id,
        &format!("{}; echo done >&2; exit 3", seq_with_a_pause(LINES)),
    );
    let mut stream = e.exec(req).await.expect("exec").into_inner();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut side = None;
    let mut switched_at = None;
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
                // The replica the client talks to relays the ticket.
                let (conn, answer) = open_side(&p.via.addr, &offer.ticket).await;
                assert_eq!(answer, raw::ACCEPTED, "the forwarding replica relays");
                side = Some(conn);
                // Used once: neither replica pairs it again.
                for addr in [&p.via.addr, &p.owner.addr] {
                    let (_, again) = open_side(addr, &offer.ticket).await;
                    assert_eq!(again, raw::REFUSED, "a used ticket on {addr}");
                }
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
    let rest = reader
        .expect("a reader")
        .await
        .unwrap()
        .expect("read the relayed side connection");
    assert!(rest.len() > 8 << 20, "{} bytes relayed", rest.len());
    assert_eq!(
        exit.raw_stdout_bytes,
        rest.len() as u64,
        "the agent's count matches what arrived through both replicas"
    );
    assert!(before >= 1 << 20, "{before} bytes before the switch");
    stdout.extend_from_slice(&rest);
    assert!(
        stdout == seq_text(LINES),
        "stdout in order and complete ({} bytes)",
        stdout.len()
    );
    assert_eq!(stderr, b"done\n");
    assert_eq!((exit.exit_code, exit.timed_out), (3, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_offer_nobody_takes_keeps_stdout_on_the_stream() {
    let p = pair("fwd-side-fallback", false).await;
    let machine_id = p.machine_id().await;
    let mut e = ext(&p.via.addr, Some(&p.ws.api_key)).await;
    const SHORT: u32 = 400_000;
    let req = side_req(&machine_id, &seq_with_a_pause(SHORT));
    let mut stream = e.exec(req).await.expect("exec").into_inner();
    let (mut stdout, mut offered, mut switched) = (Vec::new(), false, false);
    let exit = loop {
        let ev = stream.message().await.expect("exec stream").expect("exit");
        match ev.event {
            Some(Event::Stdout(b)) => stdout.extend_from_slice(&b),
            // Not taken: the agent gives up waiting for the pairing.
            Some(Event::RawOffer(offer)) => {
                offered = true;
                // The agent's side cannot be relayed: refused, nothing paired.
                let mut agent = tokio::net::TcpStream::connect(&p.via.addr).await.unwrap();
                use tokio::io::AsyncWriteExt;
                agent
                    .write_all(&raw::opening(raw::Role::Agent, &offer.ticket).unwrap())
                    .await
                    .unwrap();
                assert_eq!(agent.read_u8().await.unwrap(), raw::REFUSED);
            }
            Some(Event::RawSwitch(_)) => switched = true,
            Some(Event::Exit(x)) => break x,
            _ => {}
        }
    };
    assert!(offered, "the owner offered a side connection");
    assert!(!switched, "no switch without a caller");
    assert_eq!(exit.raw_stdout_bytes, 0);
    assert!(
        stdout == seq_text(SHORT),
        "everything on the stream ({} bytes)",
        stdout.len()
    );
    assert_eq!(exit.exit_code, 0);
}

/// Reads an endless command's events up to its switch, opening the side
/// connection through `via` on the offer: that connection, and the
/// stderr seen before the switch.
async fn until_switched(
    stream: &mut tonic::Streaming<cmdop_proto::ext::ExecEvent>,
    via: &str,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let (mut stderr, mut side) = (Vec::new(), None);
    loop {
        let ev = stream
            .message()
            .await
            .expect("exec stream")
            .expect("events");
        match ev.event {
            Some(Event::Stderr(b)) => stderr.extend_from_slice(&b),
            Some(Event::RawOffer(offer)) => {
                let (conn, answer) = open_side(via, &offer.ticket).await;
                assert_eq!(answer, raw::ACCEPTED);
                side = Some(conn);
            }
            Some(Event::RawSwitch(_)) => break,
            Some(Event::Exit(x)) => panic!("the endless command ended: {x:?}"),
            _ => {}
        }
    }
    (side.expect("an offer before the switch"), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_forwarded_exec_on_its_side_connection_kills_the_command() {
    let p = pair("fwd-side-cancel", false).await;
    let machine_id = p.machine_id().await;
    let mut e = ext(&p.via.addr, Some(&p.ws.api_key)).await;
    let req = side_req(&machine_id, "echo $$ >&2; exec yes");
    let mut stream = e.exec(req).await.expect("exec").into_inner();
    let (mut conn, stderr) = until_switched(&mut stream, &p.via.addr).await;
    let mut read = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while read < 32 << 20 {
        let n = conn.read(&mut buf).await.expect("read the side connection");
        assert!(n > 0, "the side connection ended after {read} bytes");
        read += n as u64;
    }
    let pid: i32 = String::from_utf8_lossy(&stderr)
        .trim()
        .parse()
        .expect("the pid on stderr before the switch");
    // Mid-stream, the client goes: the call and its side connection.
    drop(stream);
    drop(e);
    wait_gone(pid, Duration::from_secs(10), "the cancelled call").await;
    // The relayed connection ends too (data still queued, then EOF).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the relayed side connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_key_ends_a_forwarded_exec_s_relayed_side_connection() {
    let p = pair("fwd-side-revoke", false).await;
    let machine_id = p.machine_id().await;
    let key = admin_pg(&p.url, &["create-key", "--workspace", "alpha"]);
    let mut e = ext(&p.via.addr, Some(key.trim())).await;
    let req = side_req(&machine_id, "exec yes");
    let mut stream = e.exec(req).await.expect("exec").into_inner();
    let (mut side, _) = until_switched(&mut stream, &p.via.addr).await;
    let mut buf = vec![0u8; 1 << 20];
    side.read_exact(&mut buf).await.expect("the first bytes");
    admin_pg(&p.url, &["revoke-key", key.trim()]);
    // `yes` never ends by itself: only the revocation ends the relayed
    // connection (read slowly, so it is not the reader that keeps up).
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match side.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the relayed side connection still runs 60 s after revoke-key"
    );
    let status = loop {
        match stream.message().await {
            Ok(Some(ev)) => assert!(
                !matches!(ev.event, Some(Event::Exit(_))),
                "an exit instead of the revocation: {ev:?}"
            ),
            Ok(None) => panic!("the exec ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

/// Counts the library's debug lines that say output moved to a side
/// connection and contain `marker`.
fn count_switches(marker: &'static str) -> Arc<AtomicUsize> {
    let switches = Arc::new(AtomicUsize::new(0));
    let seen = switches.clone();
    set_log_sink(Some((
        LogLevel::Debug,
        Arc::new(move |_, msg: &str| {
            if msg.contains("continues on a side connection") && msg.contains(marker) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }),
    )));
    switches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_the_library_reads_forwarded_stdout_and_downloads_through_a_relayed_side_connection(
) {
    let p = pair("fwd-side-tls", true).await;
    // Only this test logs at debug level in this binary.
    let switches = count_switches("");
    let c = p.client(true).await;
    c.set_machine(&p.host).await.expect("set_machine");
    const TLS_LINES: u32 = 3_000_000;
    let out = c
        .execute(
            &format!("{}; echo tail >&2", seq_with_a_pause(TLS_LINES)),
            Some(Duration::from_secs(120)),
        )
        .await
        .expect("execute");
    assert!(out.native);
    assert!(
        out.stdout == seq_text(TLS_LINES),
        "stdout complete ({} bytes)",
        out.stdout.len()
    );
    assert_eq!(out.stderr, b"tail\n");
    assert_eq!(out.exit_code, 0);

    let remote = p.dir.path().join("fwd-side-download.bin");
    let data = pattern(24 * (1 << 20) + 5, 23);
    std::fs::write(&remote, &data).unwrap();
    let local = tempfile::tempdir().unwrap();
    let target = local.path().join("copy.bin");
    c.download_to_path(
        remote.to_str().unwrap(),
        &target,
        TransferOptions::default(),
        |_, _| {},
        CancelToken::new(),
    )
    .await
    .expect("download_to_path");
    set_log_sink(None);
    assert!(
        std::fs::read(&target).unwrap() == data,
        "the local copy is the file"
    );
    assert_eq!(
        switches.load(Ordering::SeqCst),
        2,
        "the exec's stdout and the download moved to TLS side connections through the forwarding replica"
    );
}
