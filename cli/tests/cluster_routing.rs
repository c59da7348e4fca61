//! Cluster mode: three real `cmdop server` replicas sharing one PostgreSQL
//! database (a private server per test, [`common::postgres`]), a real
//! agent on one of them, clients on another. Every call a client
//! makes through a replica without the agent must behave as on the
//! replica with it.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use cmdop_proto::{
    ext::{
        exec_event::Event, exec_input, upload_chunk, ExecEvent, ExecInput, ExecRequest,
        ResolveMachineRequest, UploadChunk, UploadStart,
    },
    terminal::{
        agent_message, control_message, AgentMessage, ListSessionsRequest, RegisterRequest,
        SessionInfoItem, TerminalOutput,
    },
};
use common::{
    postgres::{self, Postgres},
    *,
};
use tokio::sync::mpsc;
use tonic::{codegen::tokio_stream::wrappers::ReceiverStream, Code};

const MIB: usize = 1024 * 1024;
const PEER_SECRET: &str = "cluster-test-peer-secret-0123456789";

/// Starts replica `id` on the cluster's database; `dir` holds its ready file.
fn start_replica(url: &str, dir: &Path, id: &str, extra: &[&str]) -> Server {
    let mut flags = vec![
        "--peer-listen",
        "127.0.0.1:0",
        "--replica-id",
        id,
        "--keepalive-secs",
        "2",
    ];
    flags.extend_from_slice(extra);
    server_pg_env(url, &[("CMDOP_PEER_SECRET", PEER_SECRET)], dir, &flags)
}

/// One number or text the database answers to `sql`.
fn query(pg: &Postgres, sql: &str) -> String {
    pg.psql(postgres::DATABASE, sql).trim().to_string()
}

/// The peer address replica `id` recorded for itself.
fn peer_addr(pg: &Postgres, id: &str) -> String {
    let addr = query(
        pg,
        &format!("SELECT peer_addr FROM replicas WHERE replica_id = '{id}'"),
    );
    assert!(!addr.is_empty(), "no replica row for {id}");
    addr
}

/// The sessions of machine `host` that ListSessions through `addr` shows.
async fn sessions_of(addr: &str, key: &str, host: &str) -> Vec<SessionInfoItem> {
    let mut t = terminal(addr, Some(key)).await;
    let list = t
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions")
        .into_inner();
    list.sessions
        .into_iter()
        .filter(|s| s.machine_hostname == host)
        .collect()
}

/// Three replicas (A, B, C), workspace "alpha", an agent on A.
struct Cluster {
    // Dropped (killed) first.
    agent: Proc,
    a: Server,
    b: Server,
    c: Server,
    ws: Workspace,
    host: String,
    session_id: String,
    machine_id: String,
    dir: tempfile::TempDir,
    url: String,
    // Dropped (stopped) last.
    pg: Postgres,
}

async fn cluster(prefix: &str) -> Cluster {
    cluster_with(prefix, &[]).await
}

/// [`cluster`] with `extra` flags on every replica.
async fn cluster_with(prefix: &str, extra: &[&str]) -> Cluster {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start_replica(&url, dir.path(), "rep_a", extra);
    let b = start_replica(&url, dir.path(), "rep_b", extra);
    let c = start_replica(&url, dir.path(), "rep_c", extra);
    let ws = create_workspace_pg(&url, "alpha");
    let host = unique(prefix);
    let token = admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
    // The agent knows every replica and starts on A, the first (in order).
    let (to_b, to_c) = (format!("http://{}", b.addr), format!("http://{}", c.addr));
    let agent = start_agent(
        &a.addr,
        Some(&token),
        &dir.path().join("agent.json"),
        &host,
        &[
            "--heartbeat-secs",
            "1",
            "--server",
            &to_b,
            "--server",
            &to_c,
            "--servers-in-order",
        ],
    );
    let mut t = terminal(&a.addr, Some(&ws.api_key)).await;
    let session_id = wait_connected(&mut t, &host).await;
    // Through B: the machine shows as connected with native exec once A
    // has recorded its route.
    let mut e = ext(&b.addr, Some(&ws.api_key)).await;
    let m = wait_native_exec(&mut e, &host).await;
    assert_eq!(m.session_id, session_id);
    Cluster {
        agent,
        a,
        b,
        c,
        ws,
        host,
        session_id,
        machine_id: m.machine_id,
        dir,
        url,
        pg,
    }
}

/// Everything one Exec returned.
#[derive(Default, Debug)]
struct ExecResult {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<cmdop_proto::ext::ExecExit>,
}

async fn collect(mut stream: tonic::Streaming<ExecEvent>) -> Result<ExecResult, tonic::Status> {
    let mut r = ExecResult::default();
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(Event::Stdout(d)) => r.stdout.extend_from_slice(&d),
            Some(Event::Stderr(d)) => r.stderr.extend_from_slice(&d),
            Some(Event::Exit(x)) => r.exit = Some(x),
            _ => {}
        }
    }
    Ok(r)
}

async fn exec(e: &mut Ext, req: ExecRequest) -> ExecResult {
    let stream = e.exec(req).await.expect("exec").into_inner();
    collect(stream).await.expect("exec stream")
}

#[tokio::test]
async fn calls_through_another_replica_reach_the_agent() {
    let cl = cluster("route-host").await;
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;

    // Exit code, stdout and stderr apart.
    let r = exec(
        &mut e,
        exec_req(&cl.session_id, "echo out; echo err >&2; exit 7", 30_000),
    )
    .await;
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.exit.as_ref().map(|x| x.exit_code), Some(7));

    // By machine id too.
    let r = exec(
        &mut e,
        ExecRequest {
            machine_id: cl.machine_id.clone(),
            command: "echo by-machine".into(),
            timeout_ms: 30_000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.stdout, b"by-machine\n");

    // Stdin given with the request, and streamed.
    let r = exec(
        &mut e,
        ExecRequest {
            stdin: b"given stdin".to_vec().into(),
            ..exec_req(&cl.session_id, "cat", 30_000)
        },
    )
    .await;
    assert_eq!(r.stdout, b"given stdin");
    let (tx, rx) = mpsc::channel::<ExecInput>(4);
    tx.send(ExecInput {
        part: Some(exec_input::Part::Start(exec_req(
            &cl.session_id,
            "tr a-z A-Z",
            30_000,
        ))),
    })
    .await
    .unwrap();
    tx.send(ExecInput {
        part: Some(exec_input::Part::Stdin(b"streamed ".to_vec().into())),
    })
    .await
    .unwrap();
    tx.send(ExecInput {
        part: Some(exec_input::Part::Stdin(b"stdin".to_vec().into())),
    })
    .await
    .unwrap();
    tx.send(ExecInput {
        part: Some(exec_input::Part::CloseStdin(true)),
    })
    .await
    .unwrap();
    let stream = e
        .exec_with_stdin(ReceiverStream::new(rx))
        .await
        .expect("exec with stdin")
        .into_inner();
    let r = collect(stream).await.expect("exec with stdin stream");
    assert_eq!(r.stdout, b"STREAMED STDIN");
    drop(tx);

    // A timeout keeps the output so far.
    let started = Instant::now();
    let r = exec(
        &mut e,
        exec_req(&cl.session_id, "echo partial; sleep 30", 1_000),
    )
    .await;
    let exit = r.exit.expect("exit");
    assert!(exit.timed_out, "{exit:?}");
    assert_eq!(r.stdout, b"partial\n");
    // Killed at its 1 s limit, not after its 30 s sleep (a loose bound: a
    // loaded machine may take seconds to tear the command down).
    assert!(started.elapsed() < Duration::from_secs(25));

    // 64 MiB of output, byte for byte.
    let data = pattern(64 * MIB, 11);
    let file = cl.dir.path().join("out.bin");
    std::fs::write(&file, &data).unwrap();
    let r = exec(
        &mut e,
        exec_req(&cl.session_id, &format!("cat {}", file.display()), 120_000),
    )
    .await;
    assert_eq!(r.exit.as_ref().map(|x| x.exit_code), Some(0));
    assert_eq!(r.stdout.len(), data.len());
    assert!(r.stdout == data, "streamed output differs");

    // Files, 64 MiB each way, through the library client on B (machine
    // selected by hostname, which B finds on A).
    let c = client_on(&cl.b.addr, &cl.ws.api_key, &cl.host).await;
    let up = cl.dir.path().join("written.bin");
    let data = pattern(64 * MIB, 12);
    c.write_file(up.to_str().unwrap(), &data)
        .await
        .expect("write 64 MiB through B");
    assert!(std::fs::read(&up).unwrap() == data, "written file differs");
    let back = c
        .read_file(up.to_str().unwrap())
        .await
        .expect("read 64 MiB through B");
    assert!(back == data, "read file differs");

    // The library's execute through B: it may ask for a side connection
    // (B offers them, relaying a forwarded call's: cluster_side.rs); this
    // output is too small for one and stays on gRPC.
    let out = c
        .execute("echo from-the-library; echo e >&2; exit 3", None)
        .await
        .expect("library execute through B");
    assert_eq!(out.stdout, b"from-the-library\n");
    assert_eq!(out.exit_code, 3);

    // The official File* path with the connection's selection (no session
    // id): B fills in the session of the machine it selected.
    let mut t = terminal(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let found = t
        .get_session_by_hostname(cmdop_proto::terminal::GetSessionByHostnameRequest {
            hostname: cl.host.clone(),
            ..Default::default()
        })
        .await
        .expect("GetSessionByHostname")
        .into_inner();
    assert!(found.found, "{found:?}");
    assert_eq!(found.session_id, cl.session_id);
    let small = cl.dir.path().join("small.txt");
    std::fs::write(&small, b"selected machine").unwrap();
    let read = t
        .file_read(cmdop_proto::terminal::FileReadRpcRequest {
            path: small.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .expect("FileRead")
        .into_inner();
    assert!(read.success, "{read:?}");
    let content = read.result.expect("result").content;
    assert_eq!(&content[..], b"selected machine");

    // Every replica lists the machine as connected.
    for addr in [&cl.a.addr, &cl.b.addr, &cl.c.addr] {
        let mine = sessions_of(addr, &cl.ws.api_key, &cl.host).await;
        assert_eq!(mine.len(), 1, "{addr}: {mine:?}");
        assert_eq!(mine[0].status, "connected");
        assert_eq!(mine[0].session_id, cl.session_id);
    }

    terminal_rpcs_through(&cl.b.addr, &cl.ws.api_key, &cl.session_id, &cl.host).await;

    // Attach through C: type into the terminal, see the output.
    let mut t = terminal(&cl.c.addr, Some(&cl.ws.api_key)).await;
    let (tx, rx) = mpsc::channel::<AgentMessage>(8);
    tx.send(AgentMessage {
        session_id: cl.session_id.clone(),
        message_id: "attach-1".into(),
        payload: Some(agent_message::Payload::Register(RegisterRequest {
            version: "cluster-test-attach".into(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut attach = t
        .connect_terminal(ReceiverStream::new(rx))
        .await
        .expect("attach through C")
        .into_inner();
    let first = attach.message().await.expect("attach").expect("first");
    assert!(matches!(
        first.payload,
        Some(control_message::Payload::StartSession(_))
    ));
    tx.send(AgentMessage {
        session_id: cl.session_id.clone(),
        message_id: "attach-2".into(),
        payload: Some(agent_message::Payload::Output(TerminalOutput {
            data: b"echo cluster-$((6*7))\n".to_vec().into(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("cluster-42") {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, attach.message())
            .await
            .expect("the typed command's output within 20 s")
            .expect("attach stream")
            .expect("attach stream open");
        if let Some(control_message::Payload::Input(i)) = msg.payload {
            seen.extend_from_slice(&i.data);
        }
    }
}

/// The official terminal RPCs through B: input in, output out.
async fn terminal_rpcs_through(addr: &str, key: &str, session_id: &str, host: &str) {
    use cmdop_proto::terminal::{
        GetHistoryRequest, GetOutputRequest, GetSessionStatusRequest, SendInputRequest,
    };
    let mut t = terminal(addr, Some(key)).await;
    let status = t
        .get_session_status(GetSessionStatusRequest {
            session_id: session_id.into(),
        })
        .await
        .expect("GetSessionStatus")
        .into_inner();
    assert!(status.exists, "{status:?}");
    assert_eq!(status.agent_hostname, host);
    let sent = t
        .send_input(SendInputRequest {
            session_id: session_id.into(),
            data: b"echo via-b-$((40+2))\n".to_vec().into(),
        })
        .await
        .expect("SendInput")
        .into_inner();
    assert!(sent.success, "{sent:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = t
            .get_output(GetOutputRequest {
                session_id: session_id.into(),
                ..Default::default()
            })
            .await
            .expect("GetOutput")
            .into_inner();
        if String::from_utf8_lossy(&out.data).contains("via-b-42") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the typed command's output did not show within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = t
        .get_history(GetHistoryRequest {
            session_id: session_id.into(),
            ..Default::default()
        })
        .await
        .expect("GetHistory")
        .into_inner();
    assert!(
        history.commands.iter().any(|c| c.contains("via-b-")),
        "{history:?}"
    );
}

/// A library client on `addr` with `host` selected.
async fn client_on(addr: &str, key: &str, host: &str) -> cmdop::client::Client {
    use cmdop::client::{Client, Credentials};
    let opts = local_options(
        addr,
        Credentials::ApiKey(key.to_string()),
        Duration::from_secs(60),
    );
    let c = Client::new(opts).expect("client");
    c.open().await.expect("connect");
    let m = c.set_machine(host).await.expect("set_machine");
    assert!(m.native_exec, "{m:?}");
    c
}

#[tokio::test]
async fn workspace_walls_hold_on_every_replica() {
    let cl = cluster("wall-host").await;
    let other = create_workspace_pg(&cl.url, "beta");
    for addr in [&cl.a.addr, &cl.b.addr, &cl.c.addr] {
        let mut t = terminal(addr, Some(&other.api_key)).await;
        let list = t
            .list_sessions(ListSessionsRequest::default())
            .await
            .expect("ListSessions")
            .into_inner();
        assert!(list.sessions.is_empty(), "{addr}: {list:?}");
        let mut e = ext(addr, Some(&other.api_key)).await;
        let st = e
            .exec(exec_req(&cl.session_id, "echo leaked", 10_000))
            .await
            .expect_err("another workspace's session");
        assert_eq!(st.code(), Code::NotFound, "{addr}: {st:?}");
        let st = e
            .exec(ExecRequest {
                machine_id: cl.machine_id.clone(),
                command: "echo leaked".into(),
                ..Default::default()
            })
            .await
            .expect_err("another workspace's machine");
        assert_eq!(st.code(), Code::NotFound, "{addr}: {st:?}");
        let r = e
            .resolve_machine(ResolveMachineRequest {
                hostname: cl.host.clone(),
                ..Default::default()
            })
            .await
            .expect("ResolveMachine")
            .into_inner();
        assert!(!r.found && r.machine.is_none(), "{addr}: {r:?}");
        let r = terminal(addr, Some(&other.api_key))
            .await
            .get_session_by_hostname(cmdop_proto::terminal::GetSessionByHostnameRequest {
                hostname: cl.host.clone(),
                ..Default::default()
            })
            .await
            .expect("GetSessionByHostname")
            .into_inner();
        assert!(!r.found, "{addr}: {r:?}");
    }
}

#[tokio::test]
async fn the_peer_port_refuses_calls_without_the_secret() {
    let cl = cluster("peer-host").await;
    let peer = peer_addr(&cl.pg, "rep_a");
    // A client key is no good on the peer port...
    let mut e = ext(&peer, Some(&cl.ws.api_key)).await;
    let st = e
        .exec(exec_req(&cl.session_id, "echo nope", 10_000))
        .await
        .expect_err("no peer secret");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("peer secret"), "{st:?}");
    // ...nor a wrong secret with forged identity headers.
    let ch = channel(&peer).await;
    let mut client = cmdop_proto::ext::cmdop_client::CmdopClient::new(ch);
    let mut req = tonic::Request::new(exec_req(&cl.session_id, "echo nope", 10_000));
    let m = req.metadata_mut();
    m.insert(
        "x-cmdop-peer-secret",
        "not-the-secret-at-all".parse().unwrap(),
    );
    m.insert("x-cmdop-peer-workspace", "ws_x".parse().unwrap());
    m.insert("x-cmdop-peer-workspace-name", "616c706861".parse().unwrap());
    m.insert("x-cmdop-peer-credential", "key:00".parse().unwrap());
    let st = client.exec(req).await.expect_err("wrong peer secret");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    // Peer headers on the public port are ignored: no key, no call.
    let ch = channel(&cl.b.addr).await;
    let mut client = cmdop_proto::ext::cmdop_client::CmdopClient::new(ch);
    let mut req = tonic::Request::new(exec_req(&cl.session_id, "echo nope", 10_000));
    req.metadata_mut()
        .insert("x-cmdop-peer-secret", PEER_SECRET.parse().unwrap());
    let st = client.exec(req).await.expect_err("no API key");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
}

/// Names in `dir` that look like an unfinished upload's temp file.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".cmdop-tmp-"))
        .collect()
}

fn upload_chunk(part: upload_chunk::Part) -> UploadChunk {
    UploadChunk { part: Some(part) }
}

#[tokio::test]
async fn killing_the_owner_mid_call_ends_the_call_on_another_replica_with_unavailable() {
    let mut cl = cluster("kill-host").await;
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let mut stream = e
        .exec(exec_req(&cl.session_id, "echo started; sleep 60", 90_000))
        .await
        .expect("exec")
        .into_inner();
    // Wait for the command's first output: it runs.
    loop {
        let ev = stream.message().await.expect("exec").expect("event");
        if matches!(ev.event, Some(Event::Stdout(_))) {
            break;
        }
    }
    // A second Exec that takes an unknown outcome as an exit.
    let mut accepting = e
        .exec(ExecRequest {
            accept_unknown_outcome: true,
            ..exec_req(&cl.session_id, "echo started; sleep 60", 90_000)
        })
        .await
        .expect("exec")
        .into_inner();
    loop {
        let ev = accepting.message().await.expect("exec").expect("event");
        if matches!(ev.event, Some(Event::Stdout(_))) {
            break;
        }
    }
    // An upload through B in progress, its temp file on the machine.
    let target = cl.dir.path().join("upload.bin");
    let (tx, rx) = mpsc::channel(2);
    tx.send(upload_chunk(upload_chunk::Part::Start(UploadStart {
        session_id: cl.session_id.clone(),
        path: target.to_str().unwrap().into(),
        overwrite: true,
        total_size: Some(64 * MIB as u64),
        ..Default::default()
    })))
    .await
    .unwrap();
    let mut up = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let upload = tokio::spawn(async move { up.upload(ReceiverStream::new(rx)).await });
    let piece = bytes::Bytes::from(pattern(MIB, 5));
    for _ in 0..4 {
        tx.send(upload_chunk(upload_chunk::Part::Data(piece.clone())))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while temp_files(cl.dir.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the upload never created its temp file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cl.a.proc.kill();
    let killed = Instant::now();
    let feeder = tokio::spawn(async move {
        while tx
            .send(upload_chunk(upload_chunk::Part::Data(piece.clone())))
            .await
            .is_ok()
        {}
    });
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(st) => return Some(st),
            }
        }
    })
    .await
    .expect("the exec ends within 15 s of the owner's death");
    let st = ended.expect("the exec fails");
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert_eq!(
        st.metadata()
            .get("x-cmdop-exec-outcome")
            .and_then(|v| v.to_str().ok()),
        Some("unknown"),
        "{st:?}"
    );
    let exec_took = killed.elapsed();
    let r = tokio::time::timeout(Duration::from_secs(15), collect(accepting))
        .await
        .expect("the accepting exec ends within 15 s")
        .expect("it ends OK, with an exit");
    let exit = r.exit.expect("exit");
    assert!(exit.outcome_unknown, "{exit:?}");
    assert_eq!(exit.exit_code, -1);
    assert!(exit.error.contains("rep_a"), "{exit:?}");
    let st = tokio::time::timeout(Duration::from_secs(15), upload)
        .await
        .expect("the upload ends within 15 s of the owner's death")
        .unwrap()
        .expect_err("the upload fails");
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    let upload_took = killed.elapsed();
    feeder.abort();
    eprintln!(
        "through B after replica A was killed: exec ended in {exec_took:?}, upload in {upload_took:?}"
    );
    // No partial target file; the agent, whose link died with A, removes
    // the temp file.
    assert!(!target.exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !temp_files(cl.dir.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "temp files left behind: {:?}",
            temp_files(cl.dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The agent comes back on another replica (it knows all three) and
    // an execute on the machine through B works again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        let r = e
            .exec(ExecRequest {
                machine_id: cl.machine_id.clone(),
                command: "echo again".into(),
                timeout_ms: 10_000,
                ..Default::default()
            })
            .await;
        if let Ok(stream) = r {
            if let Ok(r) = collect(stream.into_inner()).await {
                if r.stdout == b"again\n" {
                    break killed.elapsed();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no execute through B succeeded within 30 s of A's death"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("an execute on the machine worked again through B {back:?} after A was killed");
}

#[tokio::test]
async fn a_frozen_owner_ends_calls_through_another_replica_with_unavailable() {
    let cl = cluster("frozen-host").await;
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let mut stream = e
        .exec(exec_req(&cl.session_id, "echo started; sleep 60", 90_000))
        .await
        .expect("exec")
        .into_inner();
    loop {
        let ev = stream.message().await.expect("exec").expect("event");
        if matches!(ev.event, Some(Event::Stdout(_))) {
            break;
        }
    }
    // A stops answering without closing its sockets (SIGSTOP): only the
    // peer channel's keepalive can notice.
    let pid = cl.a.proc.pid().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("run kill");
    assert!(stopped.success());
    let frozen = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(st) => return Some(st),
            }
        }
    })
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    let st = ended
        .expect("the call ends within 30 s of the owner freezing")
        .expect("the call fails");
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    eprintln!(
        "exec through B ended {:?} after replica A froze",
        frozen.elapsed()
    );
}

/// Resident memory of process `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[tokio::test]
async fn a_slow_reader_through_another_replica_holds_the_output_back() {
    let cl = cluster("flow-host").await;
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let total: usize = 512 * MIB;
    let before = rss(cl.b.proc.pid());
    let mut stream = e
        .exec(exec_req(
            &cl.session_id,
            &format!("head -c {total} /dev/zero"),
            300_000,
        ))
        .await
        .expect("exec")
        .into_inner();
    let mut got = 0usize;
    while got == 0 {
        if let Some(Event::Stdout(d)) = stream.message().await.expect("exec").expect("event").event
        {
            got += d.len();
        }
    }
    // Not reading: B must not pull the output from A into its memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grew = rss(cl.b.proc.pid()).saturating_sub(before);
    assert!(
        grew < 96 * MIB as u64,
        "replica B grew by {} MiB while its client read nothing",
        grew / MIB as u64
    );
    let mut exit = None;
    while let Some(ev) = stream.message().await.expect("exec stream") {
        match ev.event {
            Some(Event::Stdout(d)) => got += d.len(),
            Some(Event::Exit(x)) => exit = Some(x),
            _ => {}
        }
    }
    assert_eq!(got, total);
    assert_eq!(exit.map(|x| x.exit_code), Some(0));
    eprintln!(
        "replica B grew by {} KiB with a stalled reader",
        grew / 1024
    );
}

#[tokio::test]
async fn the_newer_connection_of_a_machine_wins_and_calls_follow_it() {
    let cl = cluster("twice-host").await;
    // The same machine (same state file) connects to C as well.
    let state = cl.dir.path().join("agent.json");
    let second = start_agent(
        &cl.c.addr,
        None,
        &state,
        &cl.host,
        &["--heartbeat-secs", "1"],
    );
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    // Calls through B soon run on the agent connected to C: its process
    // is the one whose pid the command reports as its parent's.
    let deadline = Instant::now() + Duration::from_secs(20);
    let newer = second.pid().to_string();
    let older = cl.agent.pid().to_string();
    loop {
        let r = e
            .exec(ExecRequest {
                machine_id: cl.machine_id.clone(),
                command: "echo $PPID".into(),
                timeout_ms: 10_000,
                ..Default::default()
            })
            .await;
        if let Ok(resp) = r {
            if let Ok(out) = collect(resp.into_inner()).await {
                let ran_on = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if ran_on == newer {
                    break;
                }
                assert_eq!(ran_on, older, "ran on neither agent");
            }
        }
        assert!(
            Instant::now() < deadline,
            "calls through B did not follow the newer connection on C within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The older link on A was closed. Both agents keep the same identity,
    // so the older one reconnects and the two take turns winning; stopped,
    // the cluster settles on the newer one: every replica lists exactly one
    // connected session, and calls through B run on C's agent.
    let mut older_agent = cl.agent;
    older_agent.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut settled = true;
        for addr in [&cl.a.addr, &cl.b.addr, &cl.c.addr] {
            let connected = sessions_of(addr, &cl.ws.api_key, &cl.host)
                .await
                .iter()
                .filter(|s| s.status == "connected")
                .count();
            settled &= connected == 1;
        }
        let ran_on = match e
            .exec(ExecRequest {
                machine_id: cl.machine_id.clone(),
                command: "echo $PPID".into(),
                timeout_ms: 10_000,
                ..Default::default()
            })
            .await
        {
            Ok(resp) => collect(resp.into_inner())
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        if settled && ran_on == newer {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not settle on the newer connection within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(second);
}

#[tokio::test]
async fn a_stopped_replica_leaves_the_cluster_and_machines_that_cannot_move_show_offline() {
    let mut cl = cluster("leave-host").await;
    // An agent that knows only A has nowhere to move to (an agent with the
    // whole list moves during the drain: see rolling_restart.rs).
    cl.agent.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sessions_of(&cl.a.addr, &cl.ws.api_key, &cl.host)
        .await
        .iter()
        .any(|s| s.status == "connected")
    {
        assert!(Instant::now() < deadline, "A did not see the agent leave");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _only_a = start_agent(
        &cl.a.addr,
        None,
        &cl.dir.path().join("agent.json"),
        &cl.host,
        &["--heartbeat-secs", "1"],
    );
    let mut t = terminal(&cl.a.addr, Some(&cl.ws.api_key)).await;
    wait_connected(&mut t, &cl.host).await;
    let pid = cl.a.proc.pid();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    wait_gone(pid as i32, Duration::from_secs(20), "SIGTERM").await;
    let _ = cl.a.proc.0.wait();
    // Its row and its routes are gone at once, not when the lease expires.
    let rows = query(
        &cl.pg,
        "SELECT COUNT(*) FROM replicas WHERE replica_id = 'rep_a'",
    );
    assert_eq!(rows, "0");
    let routed = query(
        &cl.pg,
        "SELECT COUNT(*) FROM routes WHERE replica_id = 'rep_a'",
    );
    assert_eq!(routed, "0");
    // Through B the machine is offline (once B's next tick has seen the
    // replica leave, until then its calls there fail), and no call hangs.
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = tokio::time::timeout(
            Duration::from_secs(10),
            e.exec(ExecRequest {
                machine_id: cl.machine_id.clone(),
                command: "true".into(),
                ..Default::default()
            }),
        )
        .await
        .expect("answered within 10 s")
        .expect_err("the machine is offline");
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
        if st.message().contains("offline") {
            break;
        }
        // Until then B refuses the calls it cannot forward, and says that
        // nothing ran (never that some of it may have).
        assert!(
            st.message().contains("refused before it reached")
                && st.metadata().get("x-cmdop-not-started").is_some(),
            "{st:?}"
        );
        assert!(
            Instant::now() < deadline,
            "B still forwards to the replica that left: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mine = sessions_of(&cl.b.addr, &cl.ws.api_key, &cl.host).await;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].status, "disconnected");
}

/// A replica that finds no route for a machine (here the row is removed
/// behind the cluster's back) asks the live replicas before it calls the
/// machine offline: the one with the agent answers, and calls follow.
#[tokio::test]
async fn a_machine_without_a_route_is_found_by_asking_the_live_replicas() {
    let cl = cluster("no-route").await;
    let mut e = ext(&cl.c.addr, Some(&cl.ws.api_key)).await;
    // A notices at its next tick (1 s) that its route is gone and closes
    // the link (the agent reconnects and claims it again); a lookup that
    // lands after that may rightly find the machine offline, so the
    // scenario is tried up to three times. Before lookups asked the live
    // replicas, every try found it offline.
    let mut found = None;
    for _ in 0..3 {
        let mut a = ext(&cl.a.addr, Some(&cl.ws.api_key)).await;
        wait_native_exec(&mut a, &cl.host).await;
        query(
            &cl.pg,
            &format!("DELETE FROM routes WHERE machine_id = '{}'", cl.machine_id),
        );
        let m = e
            .resolve_machine(ResolveMachineRequest {
                hostname: cl.host.clone(),
                ..Default::default()
            })
            .await
            .expect("ResolveMachine")
            .into_inner()
            .machine
            .expect("the machine is known");
        if !m.session_id.is_empty() {
            found = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let m = found.expect("ResolveMachine through C said offline although A has the agent");
    assert_eq!(m.session_id, cl.session_id);
}

/// Execute through B on the machine whose agent is on A, by session id or
/// machine id: stdout and exit code, or the status.
async fn exec_through(e: &mut Ext, cl: &Cluster, by_machine: bool, word: &str) -> ExecResult {
    let req = if by_machine {
        ExecRequest {
            machine_id: cl.machine_id.clone(),
            command: format!("echo {word}"),
            timeout_ms: 30_000,
            ..Default::default()
        }
    } else {
        exec_req(&cl.session_id, &format!("echo {word}"), 30_000)
    };
    let r = exec(e, req).await;
    assert_eq!(r.exit.as_ref().map(|x| x.exit_code), Some(0), "{r:?}");
    assert_eq!(r.stdout, format!("{word}\n").as_bytes());
    r
}

/// The audit trail lives in PostgreSQL: while it is down, actions cannot be
/// put on the record, and by default they are refused (see
/// `--audit-failure`); the outage tests below let them go on unrecorded.
#[tokio::test]
async fn with_postgres_stopped_and_the_trail_closed_actions_are_refused() {
    let mut cl = cluster("outage-closed").await;
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    exec_through(&mut e, &cl, true, "before").await;
    cl.pg.stop();
    let mut req = exec_req("", "echo must-not-run", 10_000);
    req.machine_id = cl.machine_id.clone();
    let refused = match e.exec(req).await {
        Err(status) => status,
        Ok(stream) => collect(stream.into_inner())
            .await
            .expect_err("an exec must not run without its audit record"),
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("audit trail"), "{refused:?}");
}

#[tokio::test]
async fn with_postgres_stopped_calls_on_known_routes_keep_working_through_another_replica() {
    let mut cl = cluster_with("outage-host", &["--audit-failure", "open"]).await;
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    // Before the outage B learns the route, by session and by machine.
    exec_through(&mut e, &cl, false, "before").await;
    exec_through(&mut e, &cl, true, "before").await;
    // C has seen the key, never the machine.
    let mut on_c = ext(&cl.c.addr, Some(&cl.ws.api_key)).await;
    on_c.server_info(cmdop_proto::ext::ServerInfoRequest::default())
        .await
        .expect("ServerInfo through C");

    // Longer than a lease (5 s): leases expire meanwhile.
    cl.pg.stop();
    let down = Instant::now();
    let mut calls = 0;
    while down.elapsed() < Duration::from_secs(8) {
        exec_through(&mut e, &cl, calls % 2 == 1, "during").await;
        calls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("{calls} executes through B on A's machine while PostgreSQL was down");
    // Still down: selecting the machine by hostname through B and C (whose
    // databases cannot tell) works, answered by A, and C then runs a
    // command on it.
    for (replica, client) in [("B", &mut e), ("C", &mut on_c)] {
        let found = client
            .resolve_machine(ResolveMachineRequest {
                hostname: cl.host.clone(),
                partial_match: false,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("ResolveMachine through {replica} during the outage: {s:?}"))
            .into_inner();
        assert!(found.found, "through {replica}: {found:?}");
        let m = found.machine.expect("the machine");
        assert_eq!(m.machine_id, cl.machine_id, "through {replica}");
        assert_eq!(m.session_id, cl.session_id, "through {replica}");
    }
    exec_through(&mut on_c, &cl, true, "through-c").await;

    // Back: the replicas renew their leases and no call fails meanwhile.
    cl.pg.start_again();
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(6) {
        exec_through(&mut e, &cl, calls % 2 == 1, "after").await;
        calls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // And a client that never called B before works again too.
    let mut fresh = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let m = wait_native_exec(&mut fresh, &cl.host).await;
    assert_eq!(m.session_id, cl.session_id);
    exec_through(&mut fresh, &cl, true, "fresh").await;
}

#[tokio::test]
async fn an_agent_reconnecting_during_an_outage_is_routed_once_the_database_is_back() {
    let mut cl = cluster_with("outage-reconnect", &["--audit-failure", "open"]).await;
    let mut on_a = ext(&cl.a.addr, Some(&cl.ws.api_key)).await;
    let mut via_b = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    exec_through(&mut via_b, &cl, false, "before").await;

    cl.pg.stop();
    // The agent restarts and reconnects to A (its secret was checked
    // there before the outage).
    cl.agent.kill();
    let (to_b, to_c) = (
        format!("http://{}", cl.b.addr),
        format!("http://{}", cl.c.addr),
    );
    cl.agent = start_agent(
        &cl.a.addr,
        None,
        &cl.dir.path().join("agent.json"),
        &cl.host,
        &[
            "--heartbeat-secs",
            "1",
            "--server",
            &to_b,
            "--server",
            &to_c,
            "--servers-in-order",
        ],
    );
    let since = Instant::now();
    let session_id = loop {
        if let Ok(r) = on_a
            .resolve_machine(ResolveMachineRequest {
                hostname: cl.host.clone(),
                ..Default::default()
            })
            .await
        {
            let m = r.into_inner().machine.unwrap_or_default();
            if !m.session_id.is_empty() && m.session_id != cl.session_id {
                break m.session_id;
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "the agent did not reconnect to A during the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Longer than the claim's retries for a merely busy database.
    tokio::time::sleep(Duration::from_secs(8)).await;
    cl.pg.start_again();
    // Through B by the new session id: B finds its route in the database.
    cl.session_id = session_id;
    let back = Instant::now();
    loop {
        let req = exec_req(&cl.session_id, "echo rerouted", 30_000);
        match via_b.exec(req).await {
            Ok(stream) => {
                let r = collect(stream.into_inner()).await.expect("exec stream");
                assert_eq!(r.stdout, b"rerouted\n");
                break;
            }
            Err(status) => {
                assert!(
                    back.elapsed() < Duration::from_secs(20),
                    "no route to the reconnected agent after the outage: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    eprintln!(
        "execute through B on the agent that reconnected during the outage: {:?} after PostgreSQL restarted",
        back.elapsed()
    );
}

/// ListMachines through a replica that does not hold the agent shows the
/// machine online, with its labels and facts, on every replica; a machine
/// offline everywhere shows as offline.
#[tokio::test]
async fn every_replica_lists_the_workspace_s_machines_with_presence() {
    use cmdop_proto::ext::ListMachinesRequest;
    let cl = cluster("inventory-host").await;
    admin_pg(&cl.url, &["label", &cl.machine_id, "tier=db"]);
    for addr in [&cl.a.addr, &cl.b.addr, &cl.c.addr] {
        let mut e = ext(addr, Some(&cl.ws.api_key)).await;
        let listed = e
            .list_machines(ListMachinesRequest {
                selector: "tier=db,cmdop.io/status=online".into(),
                ..Default::default()
            })
            .await
            .expect("ListMachines")
            .into_inner();
        assert_eq!(listed.machines.len(), 1, "through {addr}: {listed:?}");
        let m = &listed.machines[0];
        assert_eq!(m.hostname, cl.host);
        assert_eq!(m.machine_id, cl.machine_id);
        assert_eq!(m.status, "connected", "through {addr}");
        assert_eq!(m.admin_labels.get("tier").map(String::as_str), Some("db"));
        assert!(m.facts.as_ref().is_some_and(|f| f.cpu_count > 0));
    }
    // One command on the selection through a replica that does not hold
    // the agent: forwarded to the one that does, output prefixed.
    let out = std::process::Command::new(cmdop_bin())
        .args(["exec", "-l", "tier=db", "echo through-b"])
        .env("CMDOP_SERVER", format!("http://{}", cl.b.addr))
        .env("CMDOP_API_KEY", &cl.ws.api_key)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cmdop exec");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: through-b", cl.host)
    );
    // A selector error is INVALID_ARGUMENT on every replica.
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let err = e
        .list_machines(ListMachinesRequest {
            selector: "tier in (".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad selector");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// A fleet of eight agents spread over the three replicas (the cluster's
/// own agent on A, seven more started on A, B and C in turn): every replica
/// lists all eight, and one command on a selection through any replica
/// reaches each machine on its own replica, with rolling batches, a failure
/// limit and an offline machine reported as not run.
#[tokio::test]
async fn one_command_reaches_eight_machines_spread_over_the_replicas() {
    let cl = cluster("fleet8-0").await;
    admin_pg(&cl.url, &["label", &cl.machine_id, "fleet=eight"]);
    let replicas = [&cl.a.addr, &cl.b.addr, &cl.c.addr];
    let mut agents = Vec::new();
    let mut hosts = vec![cl.host.clone()];
    for i in 1..8 {
        let host = unique(&format!("fleet8-{i}"));
        let token = admin_pg(&cl.url, &["enroll-token", "--workspace", "alpha"]);
        let role = if i % 2 == 0 { "role=web" } else { "role=db" };
        agents.push(start_agent(
            replicas[i % 3],
            Some(&token),
            &cl.dir.path().join(format!("agent-{i}.json")),
            &host,
            &["--label", "fleet=eight", "--label", role],
        ));
        hosts.push(host);
    }
    let everyone = |addr: &str| {
        let out = std::process::Command::new(cmdop_bin())
            .args([
                "machines",
                "--json",
                "-l",
                "fleet=eight,cmdop.io/status=online",
            ])
            .env("CMDOP_SERVER", format!("http://{addr}"))
            .env("CMDOP_API_KEY", &cl.ws.api_key)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("cmdop machines");
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("one object per line");
                v["hostname"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        names.sort();
        names
    };
    let mut want = hosts.clone();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in replicas {
        while everyone(addr) != want {
            assert!(
                Instant::now() < deadline,
                "{addr} lists {:?}, not all eight",
                everyone(addr)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let exec = |addr: &str, args: &[&str]| {
        std::process::Command::new(cmdop_bin())
            .arg("exec")
            .args(args)
            .env("CMDOP_SERVER", format!("http://{addr}"))
            .env("CMDOP_API_KEY", &cl.ws.api_key)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("cmdop exec")
    };
    // All eight through each replica, in rolling batches of three: every
    // machine's line once, prefixed with its hostname.
    for addr in replicas {
        let out = exec(
            addr,
            &["-l", "fleet=eight", "--batch", "3", "echo ran-here"],
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(0), "through {addr}: {err}");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        let expected: Vec<String> = want.iter().map(|h| format!("{h}: ran-here")).collect();
        assert_eq!(lines, expected, "through {addr}");
        assert!(err.contains("8 ok, 0 failed, 0 did not run"), "{err}");
    }
    // A selector the agents declared: the three role=web machines, on
    // three different replicas, and no other.
    let out = exec(&cl.a.addr, &["-l", "fleet=eight,role in (web)", "echo web"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    let mut web: Vec<String> = [2, 4, 6]
        .iter()
        .map(|&i| format!("{}: web", hosts[i]))
        .collect();
    web.sort();
    assert_eq!(lines, web);
    // A command that fails everywhere, one machine at a time: the first
    // failure stops new starts; each other machine did not run, and says
    // why in the CLI's words.
    let out = exec(
        &cl.c.addr,
        &[
            "-l",
            "fleet=eight",
            "--parallel",
            "1",
            "--max-failures",
            "1",
            "--json",
            "exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one object per line"))
        .collect();
    assert_eq!(results.len(), 8);
    let failed = results.iter().filter(|v| v["status"] == "failed").count();
    let skipped: Vec<&serde_json::Value> = results
        .iter()
        .filter(|v| v["status"] == "not_run")
        .collect();
    assert_eq!(failed, 1, "{results:?}");
    assert_eq!(skipped.len(), 7, "{results:?}");
    assert!(skipped
        .iter()
        .all(|v| v["detail"] == "did not run: skipped after --max-failures"));
    // An agent stopped: the selection through another replica reports it
    // as not run (offline), the rest ran.
    let gone = hosts[1].clone();
    agents[0].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let online = everyone(&cl.b.addr);
        if !online.contains(&gone) {
            break;
        }
        assert!(Instant::now() < deadline, "{gone} still online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = exec(&cl.b.addr, &["-l", "fleet=eight", "true"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("7 ok, 0 failed, 1 did not run"), "{err}");
    assert!(
        err.contains(&format!("{gone}: did not run: offline")),
        "{err}"
    );
}

/// One ExecFleet call through replica B runs the selection wherever each
/// agent is: on B itself, on A and C through their peer ports. Each
/// machine's output, exit code and confirmed timeout come back in the one
/// stream, an offline machine as not run, and dropping the call stops the
/// commands on the other replicas too.
#[tokio::test]
async fn one_exec_fleet_call_runs_machines_on_every_replica() {
    use cmdop_proto::ext::{
        exec_fleet_event, exec_fleet_not_run::Reason, ExecFleetRequest, ListMachinesRequest,
    };
    let cl = cluster("xf-a").await;
    admin_pg(&cl.url, &["label", &cl.machine_id, "xf=yes"]);
    let mut agents = Vec::new();
    let mut hosts = Vec::new();
    for (i, (name, addr)) in [
        ("xf-b", &cl.b.addr),
        ("xf-c", &cl.c.addr),
        ("xf-gone", &cl.c.addr),
    ]
    .into_iter()
    .enumerate()
    {
        let host = unique(name);
        let token = admin_pg(&cl.url, &["enroll-token", "--workspace", "alpha"]);
        agents.push(start_agent(
            addr,
            Some(&token),
            &cl.dir.path().join(format!("xf-{i}.json")),
            &host,
            &["--label", "xf=yes"],
        ));
        hosts.push(host);
    }
    let (on_a, on_b, on_c, gone) = (
        cl.host.clone(),
        hosts[0].clone(),
        hosts[1].clone(),
        hosts[2].clone(),
    );
    let mut e = ext(&cl.b.addr, Some(&cl.ws.api_key)).await;
    let (b_addr, key) = (cl.b.addr.clone(), cl.ws.api_key.clone());
    let listed = |selector: &'static str| {
        let (b_addr, key) = (b_addr.clone(), key.clone());
        async move {
            let mut e = ext(&b_addr, Some(&key)).await;
            let mut names: Vec<String> = e
                .list_machines(ListMachinesRequest {
                    selector: selector.into(),
                    ..Default::default()
                })
                .await
                .expect("ListMachines")
                .into_inner()
                .machines
                .into_iter()
                .map(|m| m.hostname)
                .collect();
            names.sort();
            names
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed("xf=yes,cmdop.io/status=online").await.len() < 4 {
        assert!(Instant::now() < deadline, "not all four online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agents[2].kill();
    while !listed("xf=yes,cmdop.io/status=offline")
        .await
        .contains(&gone)
    {
        assert!(Instant::now() < deadline, "{gone} still online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let script = format!(
        "{WHO_AM_I}; case $h in \
         {on_a}) echo out; echo err >&2;; \
         {on_b}) exit 4;; \
         {on_c}) echo before; sleep 30;; esac"
    );
    let stream = e
        .exec_fleet(ExecFleetRequest {
            selector: "xf=yes".into(),
            command: script,
            timeout_ms: 2000,
            accept_unknown_outcome: true,
            ..Default::default()
        })
        .await
        .expect("ExecFleet")
        .into_inner();
    let (all, ended) = fleet_events(stream).await;
    assert_eq!(all.len(), 4, "{:?}", all.keys());
    assert_eq!(all[&on_a].exit().exit_code, 0);
    assert_eq!(all[&on_a].stdout, b"out\n");
    assert_eq!(all[&on_a].stderr, b"err\n");
    assert_eq!(all[&on_b].exit().exit_code, 4);
    assert!(all[&on_c].exit().timed_out, "{:?}", all[&on_c].ends);
    assert_eq!(all[&on_c].stdout, b"before\n");
    assert_eq!(all[&gone].not_run(), Reason::Offline);
    assert_eq!(ended.last(), Some(&on_c), "{ended:?}");

    // Dropping the call stops the commands on A and C as well as on B.
    let pids = cl.dir.path().join("xf-pids");
    std::fs::create_dir(&pids).unwrap();
    let script = format!(
        "{WHO_AM_I}; echo $$ > '{}'/$h; echo running; exec sleep 60",
        pids.display()
    );
    let mut stream = e
        .exec_fleet(ExecFleetRequest {
            selector: "xf=yes,cmdop.io/status=online".into(),
            command: script,
            ..Default::default()
        })
        .await
        .expect("ExecFleet")
        .into_inner();
    let mut running = 0;
    while running < 3 {
        let ev = stream.message().await.expect("stream").expect("an event");
        if matches!(ev.event, Some(exec_fleet_event::Event::Stdout(_))) {
            running += 1;
        }
    }
    drop(stream);
    wait_recorded_pids_gone(
        &pids,
        [&on_a, &on_b, &on_c],
        "a command of a dropped ExecFleet",
    )
    .await;
}
