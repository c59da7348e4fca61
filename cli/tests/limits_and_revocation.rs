//! Nothing an unauthenticated peer can exhaust, and revocation that ends
//! what is open: real `cmdop server` and `cmdop agent` processes on
//! loopback.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use cmdop_proto::{
    ext::{
        download_chunk, exec_event::Event, upload_chunk, DownloadRequest, IssueTokenRequest,
        RefreshTokenRequest, UploadChunk, UploadStart,
    },
    terminal::{
        agent_message, control_message, AgentMessage, FileListDirectoryRpcRequest,
        HealthCheckRequest, ListSessionsRequest, RegisterRequest, TerminalOutput,
    },
};
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A field of /proc/<pid>/status, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Sends `streams` concurrent FileWrite calls with `key` (or none) on one
/// HTTP/2 connection, each announcing a `size`-byte message and sending it
/// (while the server accepts data). Returns each call's grpc-status.
async fn big_writes(addr: &str, key: Option<&str>, streams: usize, size: usize) -> Vec<String> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // One MiB shared by every stream, so the attacker (this test) stays small.
    let payload = Bytes::from(vec![0x41u8; 1 << 20]);
    let mut calls = Vec::new();
    for _ in 0..streams {
        let mut client = client.clone().ready().await.expect("stream slot");
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{addr}/terminal.TerminalStreamingService/FileWrite"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = req.body(()).expect("request");
        let (response, mut send) = client.send_request(req, false).expect("open stream");
        let payload = payload.clone();
        calls.push(tokio::spawn(async move {
            let mut prefix = vec![0u8];
            prefix.extend_from_slice(&u32::try_from(size).expect("size").to_be_bytes());
            let _ = send.send_data(Bytes::from(prefix), false);
            let sender = async {
                let mut sent = 0;
                while sent < size {
                    send.reserve_capacity(payload.len().min(size - sent));
                    match futures::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(n)) if n > 0 => {
                            let n = n.min(size - sent);
                            if send
                                .send_data(payload.slice(0..n), sent + n == size)
                                .is_err()
                            {
                                break;
                            }
                            sent += n;
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                r = response => match r {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(in trailers)")
                        .to_string(),
                    Err(e) => format!("stream error: {e}"),
                },
                _ = sender => unreachable!(),
            }
        }));
    }
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.expect("call task"));
    }
    statuses
}

/// Bound on the server's peak RSS growth under the attack below.
const BIG_MESSAGE_RSS_BOUND_KIB: u64 = 128 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_big_messages_do_not_grow_the_server() {
    let s = stack("rss-host", &[]).await;
    let pid = s.server.proc.pid();
    let before_hwm = proc_kib(pid, "VmHWM:");
    let before_rss = proc_kib(pid, "VmRSS:");
    let started = Instant::now();
    let statuses = tokio::time::timeout(
        Duration::from_secs(120),
        big_writes(&s.server.addr, None, 64, 31 << 20),
    )
    .await
    .expect("the attack finished within 120 s");
    let took = started.elapsed();
    let after_hwm = proc_kib(pid, "VmHWM:");
    let after_rss = proc_kib(pid, "VmRSS:");
    eprintln!(
        "64 x 31 MiB unauthenticated FileWrite: {took:?}; server RSS {} -> {} MiB, peak {} -> {} MiB",
        before_rss / 1024,
        after_rss / 1024,
        before_hwm / 1024,
        after_hwm / 1024
    );
    assert!(
        statuses.iter().all(|s| s == "16"),
        "every call is UNAUTHENTICATED: {statuses:?}"
    );
    assert!(
        after_hwm < before_hwm + BIG_MESSAGE_RSS_BOUND_KIB,
        "server peak RSS grew from {before_hwm} KiB to {after_hwm} KiB"
    );
    // And it still serves.
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    t.list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions after the attack");
}

/// Lets this test process hold a thousand sockets.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        soft >= 2500,
        "this test needs 2500 open files; raise `ulimit -n`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pre_handshake_connections_are_closed_within_the_bound() {
    raise_fd_limit();
    const BOUND: Duration = Duration::from_secs(3);
    // The machine running the tests may be busy.
    const SLACK: Duration = Duration::from_secs(7);
    let s = stack("idle-host", &["--handshake-timeout-secs", "3"]).await;
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut conn = TcpStream::connect(&s.server.addr).await.expect("connect");
        let opened = Instant::now();
        // Half say nothing, half send one byte of the HTTP/2 preface.
        if i % 2 == 1 {
            conn.write_all(b"P").await.expect("one byte");
        }
        idle.push(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                match tokio::time::timeout(BOUND + SLACK, conn.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
                    Ok(Ok(_)) => continue,
                    Err(_) => return None,
                }
            }
        }));
    }

    // Meanwhile normal calls work.
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    let list = t
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions beside 1000 idle connections")
        .into_inner();
    assert!(list.sessions.iter().any(|r| r.machine_hostname == s.host));
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut exec = e
        .exec(exec_req(&s.session_id, "echo served", 10_000))
        .await
        .expect("Exec beside 1000 idle connections")
        .into_inner();
    let mut out = Vec::new();
    while let Some(ev) = exec.message().await.expect("exec events") {
        if let Some(Event::Stdout(b)) = ev.event {
            out.extend_from_slice(&b);
        }
    }
    assert_eq!(out, b"served\n");

    let mut slowest = Duration::ZERO;
    let mut fastest = Duration::MAX;
    for (i, conn) in idle.into_iter().enumerate() {
        let closed = conn
            .await
            .expect("reader")
            .unwrap_or_else(|| panic!("idle connection {i} still open after {:?}", BOUND + SLACK));
        slowest = slowest.max(closed);
        fastest = fastest.min(closed);
    }
    eprintln!("1000 idle connections closed between {fastest:?} and {slowest:?} after opening (bound {BOUND:?})");
    assert!(
        fastest >= BOUND - Duration::from_millis(500),
        "closed before the bound: {fastest:?}"
    );
    // The server still takes new connections.
    t.list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions after the idle connections");
}

/// Runs `cmdop <args>` expecting it to exit (with failure) within 20 s;
/// returns its stderr.
fn refused(args: &[&str]) -> String {
    let mut child = Command::new(cmdop_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmdop");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read stderr");
            assert!(!status.success(), "cmdop {args:?} succeeded: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cmdop {args:?} kept running instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn plaintext_beyond_loopback_needs_allow_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8 path");
    let err = refused(&["server", "--listen", "0.0.0.0:0", "--data-dir", data]);
    assert!(
        err.contains("--allow-plaintext") && err.contains("--tls-cert"),
        "the refusal says what to do: {err}"
    );
    let err = refused(&["dev", "--listen", "0.0.0.0:0"]);
    assert!(err.contains("loopback"), "{err}");

    let server = start_server(dir.path(), "0.0.0.0:0", &["--allow-plaintext"]);
    let port = server.addr.rsplit(':').next().expect("port");
    let mut t = terminal(&format!("127.0.0.1:{port}"), None).await;
    t.health_check(HealthCheckRequest::default())
        .await
        .expect("HealthCheck over loopback to a 0.0.0.0 listener");
}

/// Waits for a stream to end; returns how it ended and when.
async fn ended<T>(
    mut next: impl FnMut() -> futures::future::BoxFuture<'static, Result<Option<T>, tonic::Status>>,
) -> (Option<tonic::Status>, Instant) {
    loop {
        match next().await {
            Ok(Some(_)) => continue,
            Ok(None) => return (None, Instant::now()),
            Err(st) => return (Some(st), Instant::now()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_attach_exec_and_transfer_streams() {
    let s = stack("revoke-host", &[]).await;
    let addr = s.server.addr.clone();
    let key = admin(s.dir.path(), &["create-key", "--workspace", "alpha"]);
    let sid = s.session_id.clone();
    let big = s.dir.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 64 << 20]).expect("write a 64 MiB file");
    let marker = s.dir.path().join("typed-after-revoke");

    // Attach.
    let mut t = terminal(&addr, Some(&key)).await;
    let (attach_tx, attach_rx) = mpsc::channel::<AgentMessage>(8);
    attach_tx
        .send(AgentMessage {
            session_id: sid.clone(),
            message_id: format!("{sid}-attach"),
            payload: Some(agent_message::Payload::Register(RegisterRequest {
                version: "sdk-python-0.1.0-attach".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("register");
    let mut attach = t
        .connect_terminal(ReceiverStream::new(attach_rx))
        .await
        .expect("attach")
        .into_inner();
    let first = attach.message().await.expect("attach").expect("first");
    assert!(matches!(
        first.payload,
        Some(control_message::Payload::StartSession(_))
    ));

    // Exec.
    let mut e = ext(&addr, Some(&key)).await;
    let mut exec = e
        .exec(exec_req(&sid, "sleep 30", 60_000))
        .await
        .expect("exec")
        .into_inner();
    let first = exec.message().await.expect("exec").expect("first");
    assert!(matches!(first.event, Some(Event::Started(_))));

    // Download, not read beyond its first message.
    let mut down = e
        .download(DownloadRequest {
            session_id: sid.clone(),
            path: big.to_str().expect("utf8").into(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    let first = down.message().await.expect("download").expect("first");
    assert!(matches!(first.part, Some(download_chunk::Part::Start(_))));

    // Upload, kept open.
    let (up_tx, up_rx) = mpsc::channel::<UploadChunk>(4);
    up_tx
        .send(UploadChunk {
            part: Some(upload_chunk::Part::Start(UploadStart {
                session_id: sid.clone(),
                path: s.dir.path().join("up.bin").to_str().expect("utf8").into(),
                overwrite: true,
                ..Default::default()
            })),
        })
        .await
        .expect("upload start");
    up_tx
        .send(UploadChunk {
            part: Some(upload_chunk::Part::Data(Bytes::from_static(b"partial"))),
        })
        .await
        .expect("upload data");
    let mut e2 = ext(&addr, Some(&key)).await;
    let upload = tokio::spawn(async move { e2.upload(ReceiverStream::new(up_rx)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!upload.is_finished(), "the upload stays open");

    admin(s.dir.path(), &["revoke-key", &key]);
    let revoked = Instant::now();

    let attach = std::sync::Arc::new(tokio::sync::Mutex::new(attach));
    let exec = std::sync::Arc::new(tokio::sync::Mutex::new(exec));
    let down = std::sync::Arc::new(tokio::sync::Mutex::new(down));
    let within = Duration::from_secs(1);
    let (a, x, d, u) = tokio::join!(
        tokio::time::timeout(
            within,
            ended(|| {
                let s = attach.clone();
                Box::pin(async move { s.lock().await.message().await })
            })
        ),
        tokio::time::timeout(
            within,
            ended(|| {
                let s = exec.clone();
                Box::pin(async move { s.lock().await.message().await })
            })
        ),
        tokio::time::timeout(
            within,
            ended(|| {
                let s = down.clone();
                // Read slowly: a fast reader could finish the 64 MiB
                // before the server has noticed the revocation.
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    s.lock().await.message().await
                })
            })
        ),
        tokio::time::timeout(within, async {
            let r = upload.await.expect("upload task");
            (r.err(), Instant::now())
        }),
    );
    let mut report = Vec::new();
    for (what, res) in [("attach", a), ("exec", x), ("download", d), ("upload", u)] {
        let (status, at) = res.unwrap_or_else(|_| panic!("{what} still open 1 s after revoke-key"));
        let status = status.unwrap_or_else(|| panic!("{what} ended without an error"));
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(status.message().contains("revoked"), "{what}: {status:?}");
        report.push(format!("{what} {:?}", at - revoked));
    }
    eprintln!("streams ended after revoke-key: {}", report.join(", "));
    // Typing once the attach has ended reaches no shell.
    let typed = attach_tx
        .send(AgentMessage {
            session_id: sid.clone(),
            payload: Some(agent_message::Payload::Output(TerminalOutput {
                data: format!("touch {}\n", marker.display()).into_bytes().into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await;
    drop(typed);

    drop(up_tx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!marker.exists(), "input typed after the revocation ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_streams_end_at_expiry_unless_refreshed() {
    let s = stack("token-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let issue = |ttl| IssueTokenRequest {
        access_ttl_seconds: ttl,
    };
    let expiring = e.issue_token(issue(2)).await.expect("issue").into_inner();
    let refreshed = e.issue_token(issue(2)).await.expect("issue").into_inner();
    let opened = Instant::now();
    let mut streams = Vec::new();
    for pair in [&expiring, &refreshed] {
        let mut x = ext(&s.server.addr, Some(&pair.access_token)).await;
        let mut stream = x
            .exec(exec_req(&s.session_id, "sleep 30", 60_000))
            .await
            .expect("exec with an access token")
            .into_inner();
        let first = stream.message().await.expect("exec").expect("first");
        assert!(matches!(first.event, Some(Event::Started(_))));
        streams.push(stream);
    }
    let mut anon = ext(&s.server.addr, None).await;
    anon.refresh_token(RefreshTokenRequest {
        refresh_token: refreshed.refresh_token.clone(),
    })
    .await
    .expect("refresh");
    let mut kept = streams.pop().expect("refreshed stream");
    let mut expired = streams.pop().expect("expiring stream");
    let st = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match expired.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without an error"),
                Err(st) => return st,
            }
        }
    })
    .await
    .expect("the stream of an expired token ends");
    let at = opened.elapsed();
    eprintln!("access-token stream ended {at:?} after opening (token lifetime 2 s)");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("expired"), "{st:?}");
    assert!(at >= Duration::from_millis(1500), "ended early: {at:?}");
    // The refreshed family's stream is still open.
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), kept.message())
            .await
            .is_err(),
        "the stream of a refreshed token stays open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_exec_limit_answers_resource_exhausted() {
    let s = stack("slots-host", &["--max-execs-per-key", "2"]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = e
            .exec(exec_req(&s.session_id, "sleep 30", 60_000))
            .await
            .expect("exec within the limit")
            .into_inner();
        stream.message().await.expect("exec").expect("started");
        open.push(stream);
    }
    let st = e
        .exec(exec_req(&s.session_id, "echo three", 10_000))
        .await
        .expect_err("a third exec on the same key");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().contains("--max-execs-per-key"), "{st:?}");

    // Another key has its own slots.
    let other = admin(s.dir.path(), &["create-key", "--workspace", "alpha"]);
    let mut o = ext(&s.server.addr, Some(&other)).await;
    let mut stream = o
        .exec(exec_req(&s.session_id, "echo other", 10_000))
        .await
        .expect("another key")
        .into_inner();
    while stream.message().await.expect("events").is_some() {}

    // A finished call gives its slot back.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match e.exec(exec_req(&s.session_id, "echo again", 10_000)).await {
            Ok(_) => break,
            Err(st) if st.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(st) => panic!("the slot did not come back: {st:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_big_messages_share_a_byte_budget() {
    let s = stack("budget-host", &["--max-inflight-request-mib", "32"]).await;
    let statuses = tokio::time::timeout(
        Duration::from_secs(120),
        big_writes(&s.server.addr, Some(&s.ws.api_key), 8, 31 << 20),
    )
    .await
    .expect("the calls finished within 120 s");
    // A 32 MiB budget holds one 31 MiB message at a time.
    let refused = statuses.iter().filter(|s| *s == "8").count();
    assert!(
        refused >= 1,
        "some calls are RESOURCE_EXHAUSTED: {statuses:?}"
    );
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    t.list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions after the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_methods_refuse_big_messages_before_reading_them() {
    let s = stack("limit-host", &[]).await;
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    let st = t
        .file_list_directory(FileListDirectoryRpcRequest {
            session_id: s.session_id.clone(),
            path: "x".repeat(2 << 20),
            ..Default::default()
        })
        .await
        .expect_err("a 2 MiB FileListDirectory");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().contains("at most"), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_beyond_the_cap_push_out_the_oldest() {
    let s = stack("cap-host", &["--max-unauthenticated-connections", "10"]).await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..30 {
        let mut conn = TcpStream::connect(&s.server.addr).await.expect("connect");
        idle.push(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
                    Ok(Ok(_)) => continue,
                    Err(_) => return None,
                }
            }
        }));
    }
    // A client that authenticates is served (and pushes out one more).
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    t.list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions beside 30 idle connections");
    let mut closed = 0;
    let mut slowest = Duration::ZERO;
    for conn in idle {
        if let Some(at) = conn.await.expect("reader") {
            closed += 1;
            slowest = slowest.max(at);
        }
    }
    eprintln!(
        "{closed} of 30 idle connections pushed out, the last {slowest:?} after the first opened"
    );
    // Well before the 10 s handshake bound, only the newest (at most 10) are left.
    assert!(closed >= 20, "only {closed} of 30 were closed");
    t.list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_family_ends_its_streams() {
    let s = stack("family-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let pair = e
        .issue_token(IssueTokenRequest {
            access_ttl_seconds: 600,
        })
        .await
        .expect("issue")
        .into_inner();
    let mut x = ext(&s.server.addr, Some(&pair.access_token)).await;
    let mut stream = x
        .exec(exec_req(&s.session_id, "sleep 30", 60_000))
        .await
        .expect("exec with an access token")
        .into_inner();
    stream.message().await.expect("exec").expect("started");
    // Using a refresh token twice revokes its whole family.
    let mut anon = ext(&s.server.addr, None).await;
    let refresh = || RefreshTokenRequest {
        refresh_token: pair.refresh_token.clone(),
    };
    anon.refresh_token(refresh()).await.expect("first refresh");
    let reuse = anon.refresh_token(refresh()).await.expect_err("reuse");
    assert_eq!(reuse.code(), Code::Unauthenticated);
    let revoked = Instant::now();
    let st = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without an error"),
                Err(st) => return st,
            }
        }
    })
    .await
    .expect("the family's stream ends within 1 s");
    eprintln!(
        "token-family stream ended {:?} after the reuse",
        revoked.elapsed()
    );
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("revoked"), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let s = stack("header-host", &[]).await;
    let tcp = TcpStream::connect(&s.server.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("stream slot");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/terminal.TerminalStreamingService/ListSessions",
            s.server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-padding", "p".repeat(1 << 20))
        .body(())
        .expect("request");
    let outcome = match client.send_request(req, true) {
        Err(e) => format!("refused: {e}"),
        Ok((response, _)) => match response.await {
            Err(e) => format!("refused: {e}"),
            Ok(r) => format!(
                "answered {} grpc-status {:?}",
                r.status(),
                r.headers().get("grpc-status")
            ),
        },
    };
    assert!(
        outcome.starts_with("refused") || outcome.contains("431"),
        "a 1 MiB header block was taken: {outcome}"
    );
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    t.list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_a_tls_port_are_closed_within_the_bound() {
    const BOUND: Duration = Duration::from_secs(2);
    const SLACK: Duration = Duration::from_secs(8);
    let dir = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let server = start_server(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert.to_str().expect("utf8"),
            "--tls-key",
            key.to_str().expect("utf8"),
            "--handshake-timeout-secs",
            "2",
        ],
    );
    let mut idle = Vec::new();
    for i in 0..100 {
        let mut conn = TcpStream::connect(&server.addr).await.expect("connect");
        let opened = Instant::now();
        // Half say nothing, half start a TLS record and stop.
        if i % 2 == 1 {
            conn.write_all(&[0x16, 0x03, 0x01])
                .await
                .expect("three bytes");
        }
        idle.push(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                match tokio::time::timeout(BOUND + SLACK, conn.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
                    Ok(Ok(_)) => continue,
                    Err(_) => return None,
                }
            }
        }));
    }
    let mut slowest = Duration::ZERO;
    for (i, conn) in idle.into_iter().enumerate() {
        let closed = conn
            .await
            .expect("reader")
            .unwrap_or_else(|| panic!("idle TLS connection {i} still open"));
        slowest = slowest.max(closed);
    }
    eprintln!("100 idle connections to a TLS port closed within {slowest:?} (bound {BOUND:?})");

    // TLS done, then silence or only the HTTP/2 preface: closed all the same.
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certified.cert.der().clone())
        .expect("trust the cert");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    for preface in [
        &b""[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"[..],
    ] {
        let tcp = TcpStream::connect(&server.addr).await.expect("connect");
        let opened = Instant::now();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        tls.write_all(preface).await.expect("preface");
        let mut buf = [0u8; 256];
        let closed = loop {
            match tokio::time::timeout(BOUND + SLACK, tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break opened.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!(
                    "a TLS connection that sent {} bytes stayed open",
                    preface.len()
                ),
            }
        };
        eprintln!(
            "TLS connection sending {} bytes after its handshake closed after {closed:?}",
            preface.len()
        );
        assert!(
            closed >= BOUND - Duration::from_millis(300),
            "closed early: {closed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_attach_and_transfer_limits_answer_resource_exhausted() {
    let s = stack(
        "slots2-host",
        &[
            "--max-attaches-per-key",
            "1",
            "--max-transfers-per-key",
            "1",
        ],
    )
    .await;
    let sid = s.session_id.clone();
    let register = || AgentMessage {
        session_id: sid.clone(),
        payload: Some(agent_message::Payload::Register(RegisterRequest {
            version: "sdk-python-0.1.0-attach".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    let (tx1, rx1) = mpsc::channel::<AgentMessage>(4);
    tx1.send(register()).await.expect("register");
    let mut first = t
        .connect_terminal(ReceiverStream::new(rx1))
        .await
        .expect("first attach")
        .into_inner();
    first.message().await.expect("attach").expect("start");
    let (tx2, rx2) = mpsc::channel::<AgentMessage>(4);
    tx2.send(register()).await.expect("register");
    let st = t
        .connect_terminal(ReceiverStream::new(rx2))
        .await
        .expect_err("a second attach on the same key");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().contains("--max-attaches-per-key"), "{st:?}");

    let big = s.dir.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 32 << 20]).expect("write a 32 MiB file");
    let request = || DownloadRequest {
        session_id: sid.clone(),
        path: big.to_str().expect("utf8").into(),
        ..Default::default()
    };
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut down = e.download(request()).await.expect("download").into_inner();
    down.message().await.expect("download").expect("start");
    let st = e
        .download(request())
        .await
        .expect_err("a second transfer on the same key");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().contains("--max-transfers-per-key"), "{st:?}");
}
