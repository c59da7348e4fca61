//! Scoped API keys against a real cluster: two replicas on one PostgreSQL,
//! two machines on replica A (admin label env=staging and env=prod). Every
//! RPC a client can make — official `terminal` and `cmdop.ext.v1` — is
//! called with a key allowed each operation (and with access tokens issued
//! from those keys), directly on A and forwarded through B, on the
//! machine in scope and on the one out of it. Nothing out of scope may
//! succeed, nothing in scope may be refused; out-of-scope machines are
//! invisible, not named.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use cmdop_proto::{
    ext::{
        exec_event::Event, exec_fleet_event, exec_input, upload_chunk, DownloadRequest,
        ExecFleetRequest, ExecInput, IssueTokenRequest, ListMachinesRequest, ResolveMachineRequest,
        ServerInfoRequest, UploadChunk, UploadStart,
    },
    terminal::{
        agent_message, AgentMessage, CloseSessionRequest, CreateSessionRequest, FileCopyRpcRequest,
        FileCreateDirectoryRpcRequest, FileDeleteRpcRequest, FileGetInfoRpcRequest,
        FileListDirectoryRpcRequest, FileMoveRpcRequest, FileReadRpcRequest, FileWriteRpcRequest,
        GetHistoryRequest, GetOutputRequest, GetSessionByHostnameRequest, GetSessionStatusRequest,
        HealthCheckRequest, ListSessionsRequest, RegisterRequest, SendInputRequest,
        SendResizeRequest, SendSignalRequest,
    },
};
use common::{postgres::Postgres, *};
use tokio::sync::mpsc;
use tonic::{codegen::tokio_stream::wrappers::ReceiverStream, Code, Status};

const PEER_SECRET: &str = "scoped-keys-test-peer-secret-0123456789";

/// What one call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// PERMISSION_DENIED from the key's scope.
    Denied,
    /// The machine or session is not there for this caller.
    Hidden,
    Other(String),
}

fn status_outcome(s: &Status) -> Outcome {
    let scope = s
        .metadata()
        .get(cmdop_proto::headers::AUTH_ERROR)
        .and_then(|v| v.to_str().ok())
        == Some(cmdop_proto::headers::AUTH_ERROR_SCOPE);
    match s.code() {
        Code::PermissionDenied if scope => Outcome::Denied,
        Code::NotFound => Outcome::Hidden,
        _ => Outcome::Other(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// An answer that reports failure in its fields (`success`/`error`).
fn soft(success: bool, error: &str) -> Outcome {
    if success {
        Outcome::Ok
    } else if error.contains("not found") {
        Outcome::Hidden
    } else {
        Outcome::Other(error.to_string())
    }
}

fn of<T>(r: Result<tonic::Response<T>, Status>, judge: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(resp) => judge(resp.into_inner()),
        Err(s) => status_outcome(&s),
    }
}

/// A machine a call is aimed at.
#[derive(Clone)]
struct Target {
    host: String,
    machine_id: String,
    session_id: String,
}

/// Every RPC a client makes, and the operation it needs (`None`: any key).
const RPCS: [(&str, Option<&str>); 30] = [
    ("CreateSession", Some("shell")),
    ("GetSessionStatus", None),
    ("ListSessions", Some("sessions:list")),
    ("GetSessionByHostname", None),
    ("SendInput", Some("shell")),
    ("SendResize", Some("shell")),
    ("SendSignal", Some("shell")),
    ("GetHistory", Some("shell")),
    ("GetOutput", Some("shell")),
    ("HealthCheck", None),
    ("Attach", Some("shell")),
    ("FileListDirectory", Some("files:read")),
    ("FileRead", Some("files:read")),
    ("FileGetInfo", Some("files:read")),
    ("FileWrite", Some("files:write")),
    ("FileCreateDirectory", Some("files:write")),
    ("FileDelete", Some("files:write")),
    ("FileMove", Some("files:write")),
    ("FileCopy", Some("files:write")),
    ("ServerInfo", None),
    ("ResolveMachine", None),
    ("ResolveMachineById", None),
    ("ListMachines", Some("machines:list")),
    ("Exec", Some("exec")),
    ("ExecByMachineId", Some("exec")),
    ("ExecWithStdin", Some("exec")),
    ("ExecFleet", Some("exec")),
    ("IssueToken", None),
    ("Upload", Some("files:write")),
    ("Download", Some("files:read")),
];

/// RPCs that do not name a machine: in scope or not, they answer the same.
fn machine_free(rpc: &str) -> bool {
    matches!(
        rpc,
        "CreateSession" | "HealthCheck" | "ServerInfo" | "IssueToken"
    )
}

struct Caller {
    addr: String,
    credential: String,
    /// Where this caller's files go on the (shared, loopback) machine.
    dir: PathBuf,
}

impl Caller {
    fn path(&self, name: &str) -> String {
        self.dir
            .join(name)
            .to_str()
            .expect("utf-8 path")
            .to_string()
    }
}

async fn call(c: &Caller, rpc: &str, t: &Target, n: usize) -> Outcome {
    let key = Some(c.credential.as_str());
    let sid = t.session_id.clone();
    let mut term = terminal(&c.addr, key).await;
    let mut ext = ext(&c.addr, key).await;
    let fresh = |what: &str| c.path(&format!("{what}-{n}"));
    match rpc {
        "CreateSession" => of(
            term.create_session(CreateSessionRequest::default()).await,
            |_| Outcome::Ok,
        ),
        "GetSessionStatus" => of(
            term.get_session_status(GetSessionStatusRequest { session_id: sid })
                .await,
            |r| {
                if r.exists {
                    Outcome::Ok
                } else {
                    Outcome::Hidden
                }
            },
        ),
        "ListSessions" => of(
            term.list_sessions(ListSessionsRequest {
                limit: 100,
                ..Default::default()
            })
            .await,
            |r| {
                if r.sessions.iter().any(|s| s.machine_hostname == t.host) {
                    Outcome::Ok
                } else {
                    Outcome::Hidden
                }
            },
        ),
        "GetSessionByHostname" => of(
            term.get_session_by_hostname(GetSessionByHostnameRequest {
                hostname: t.host.clone(),
                ..Default::default()
            })
            .await,
            |r| {
                if r.found {
                    Outcome::Ok
                } else {
                    Outcome::Hidden
                }
            },
        ),
        "SendInput" => of(
            term.send_input(SendInputRequest {
                session_id: sid,
                data: b"\n".to_vec().into(),
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "SendResize" => of(
            term.send_resize(SendResizeRequest {
                session_id: sid,
                cols: 100,
                rows: 30,
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "SendSignal" => of(
            term.send_signal(SendSignalRequest {
                session_id: sid,
                signal: 2,
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "GetHistory" => of(
            term.get_history(GetHistoryRequest {
                session_id: sid,
                limit: 10,
                offset: 0,
            })
            .await,
            |_| Outcome::Ok,
        ),
        "GetOutput" => of(
            term.get_output(GetOutputRequest {
                session_id: sid,
                offset: 0,
                limit: 16,
            })
            .await,
            |_| Outcome::Ok,
        ),
        "HealthCheck" => of(term.health_check(HealthCheckRequest {}).await, |_| {
            Outcome::Ok
        }),
        "Attach" => {
            let (tx, rx) = mpsc::channel::<AgentMessage>(2);
            tx.send(AgentMessage {
                session_id: sid,
                message_id: format!("attach-{n}"),
                payload: Some(agent_message::Payload::Register(RegisterRequest {
                    version: "scope-test-attach".into(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .expect("queue the attach message");
            match term.connect_terminal(ReceiverStream::new(rx)).await {
                Ok(resp) => match resp.into_inner().message().await {
                    Ok(Some(_)) => Outcome::Ok,
                    Ok(None) => Outcome::Other("attach ended at once".into()),
                    Err(s) => status_outcome(&s),
                },
                Err(s) => status_outcome(&s),
            }
        }
        "FileListDirectory" => of(
            term.file_list_directory(FileListDirectoryRpcRequest {
                session_id: sid,
                path: c.dir.to_str().unwrap().into(),
                ..Default::default()
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "FileRead" => of(
            term.file_read(FileReadRpcRequest {
                session_id: sid,
                path: c.path("seed.txt"),
                ..Default::default()
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "FileGetInfo" => of(
            term.file_get_info(FileGetInfoRpcRequest {
                session_id: sid,
                path: c.path("seed.txt"),
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "FileWrite" => of(
            term.file_write(FileWriteRpcRequest {
                session_id: sid,
                path: fresh("written"),
                content: b"w".to_vec().into(),
                overwrite: true,
                ..Default::default()
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "FileCreateDirectory" => of(
            term.file_create_directory(FileCreateDirectoryRpcRequest {
                session_id: sid,
                path: fresh("made"),
                create_parents: true,
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "FileDelete" => {
            // Something to delete first (files:write as well).
            let victim = fresh("victim");
            std::fs::write(&victim, b"x").expect("write a file to delete");
            of(
                term.file_delete(FileDeleteRpcRequest {
                    session_id: sid,
                    path: victim,
                    recursive: false,
                })
                .await,
                |r| soft(r.success, &r.error),
            )
        }
        "FileMove" => {
            let from = fresh("move-from");
            std::fs::write(&from, b"x").expect("write a file to move");
            of(
                term.file_move(FileMoveRpcRequest {
                    session_id: sid,
                    source_path: from,
                    destination_path: fresh("move-to"),
                    overwrite: true,
                })
                .await,
                |r| soft(r.success, &r.error),
            )
        }
        "FileCopy" => of(
            term.file_copy(FileCopyRpcRequest {
                session_id: sid,
                source_path: c.path("seed.txt"),
                destination_path: fresh("copy"),
                overwrite: true,
                recursive: false,
            })
            .await,
            |r| soft(r.success, &r.error),
        ),
        "ServerInfo" => of(ext.server_info(ServerInfoRequest {}).await, |_| Outcome::Ok),
        "ResolveMachine" | "ResolveMachineById" => {
            let req = if rpc == "ResolveMachine" {
                ResolveMachineRequest {
                    hostname: t.host.clone(),
                    ..Default::default()
                }
            } else {
                ResolveMachineRequest {
                    machine_id: t.machine_id.clone(),
                    ..Default::default()
                }
            };
            of(ext.resolve_machine(req).await, |r| {
                if r.found {
                    Outcome::Ok
                } else {
                    Outcome::Hidden
                }
            })
        }
        "ListMachines" => of(
            ext.list_machines(ListMachinesRequest::default()).await,
            |r| {
                if r.machines.iter().any(|m| m.hostname == t.host) {
                    Outcome::Ok
                } else {
                    Outcome::Hidden
                }
            },
        ),
        "Exec" | "ExecByMachineId" => {
            let mut req = exec_req("", "echo scoped", 20_000);
            if rpc == "Exec" {
                req.session_id = sid;
            } else {
                req.machine_id = t.machine_id.clone();
            }
            match ext.exec(req).await {
                Ok(resp) => exec_outcome(resp.into_inner()).await,
                Err(s) => status_outcome(&s),
            }
        }
        "ExecWithStdin" => {
            let (tx, rx) = mpsc::channel::<ExecInput>(4);
            tx.send(ExecInput {
                part: Some(exec_input::Part::Start(exec_req(&sid, "cat", 20_000))),
            })
            .await
            .expect("queue start");
            tx.send(ExecInput {
                part: Some(exec_input::Part::Stdin(b"scoped\n".to_vec().into())),
            })
            .await
            .expect("queue stdin");
            tx.send(ExecInput {
                part: Some(exec_input::Part::CloseStdin(true)),
            })
            .await
            .expect("queue EOF");
            match ext.exec_with_stdin(ReceiverStream::new(rx)).await {
                Ok(resp) => exec_outcome(resp.into_inner()).await,
                Err(s) => status_outcome(&s),
            }
        }
        "ExecFleet" => {
            let req = ExecFleetRequest {
                hosts: t.host.clone(),
                command: "echo scoped".into(),
                timeout_ms: 20_000,
                ..Default::default()
            };
            match ext.exec_fleet(req).await {
                Ok(resp) => {
                    let mut events = resp.into_inner();
                    let mut reached = false;
                    loop {
                        match events.message().await {
                            Ok(Some(ev)) => {
                                // The command ran to exit 0 on the target.
                                if let Some(exec_fleet_event::Event::Exit(x)) = ev.event {
                                    reached |= ev.machine_id == t.machine_id && x.exit_code == 0;
                                }
                            }
                            Ok(None) => break,
                            Err(s) => return status_outcome(&s),
                        }
                    }
                    if reached {
                        Outcome::Ok
                    } else {
                        Outcome::Hidden
                    }
                }
                Err(s) => status_outcome(&s),
            }
        }
        "IssueToken" => match ext.issue_token(IssueTokenRequest::default()).await {
            Ok(_) => Outcome::Ok,
            // Tokens come from keys only, whatever the scope.
            Err(s)
                if s.code() == Code::Unauthenticated
                    && s.message().contains("needs an API key") =>
            {
                Outcome::Other(NEEDS_A_KEY.into())
            }
            Err(s) => status_outcome(&s),
        },
        "Upload" => {
            let (tx, rx) = mpsc::channel::<UploadChunk>(4);
            let start = UploadStart {
                machine_id: t.machine_id.clone(),
                path: fresh("uploaded"),
                overwrite: true,
                ..Default::default()
            };
            for part in [
                upload_chunk::Part::Start(start),
                upload_chunk::Part::Data(b"up".to_vec().into()),
            ] {
                tx.send(UploadChunk { part: Some(part) })
                    .await
                    .expect("queue upload");
            }
            drop(tx);
            of(ext.upload(ReceiverStream::new(rx)).await, |r| {
                if r.bytes_written == 2 {
                    Outcome::Ok
                } else {
                    Outcome::Other(format!("{r:?}"))
                }
            })
        }
        "Download" => match ext
            .download(DownloadRequest {
                machine_id: t.machine_id.clone(),
                path: c.path("seed.txt"),
                ..Default::default()
            })
            .await
        {
            Ok(resp) => {
                let mut chunks = resp.into_inner();
                loop {
                    match chunks.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break Outcome::Ok,
                        Err(s) => break status_outcome(&s),
                    }
                }
            }
            Err(s) => status_outcome(&s),
        },
        other => panic!("no call written for {other}"),
    }
}

async fn exec_outcome(mut events: tonic::Streaming<cmdop_proto::ext::ExecEvent>) -> Outcome {
    let mut stdout = Vec::new();
    loop {
        match events.message().await {
            Ok(Some(ev)) => match ev.event {
                Some(Event::Stdout(d)) => stdout.extend_from_slice(&d),
                Some(Event::Exit(x)) if x.exit_code == 0 && stdout == b"scoped\n" => {
                    return Outcome::Ok
                }
                Some(Event::Exit(x)) => {
                    return Outcome::Other(format!("exit {x:?}, stdout {stdout:?}"))
                }
                _ => {}
            },
            Ok(None) => return Outcome::Other("exec ended without an exit".into()),
            Err(s) => return status_outcome(&s),
        }
    }
}

/// IssueToken's refusal of a token.
const NEEDS_A_KEY: &str = "IssueToken needs an API key";

/// What a caller whose key allows `allowed` (`None`: everything) and sees
/// the machine (`in_scope`) must get from `rpc`, calling with a token
/// issued from the key or with the key itself.
fn expected(
    rpc: &str,
    needs: Option<&str>,
    allowed: Option<&str>,
    in_scope: bool,
    token: bool,
) -> Outcome {
    if rpc == "IssueToken" && token {
        return Outcome::Other(NEEDS_A_KEY.into());
    }
    let may = match (needs, allowed) {
        (None, _) | (_, None) => true,
        (Some(n), Some(a)) => n == a,
    };
    if !may {
        Outcome::Denied
    } else if in_scope || machine_free(rpc) {
        Outcome::Ok
    } else {
        Outcome::Hidden
    }
}

struct World {
    agents: Vec<Proc>,
    a: Server,
    b: Server,
    url: String,
    staging: Target,
    prod: Target,
    dir: tempfile::TempDir,
    _pg: Postgres,
}

fn start_replica(url: &str, dir: &Path, id: &str) -> Server {
    server_pg_env(
        url,
        &[("CMDOP_PEER_SECRET", PEER_SECRET)],
        dir,
        &["--peer-listen", "127.0.0.1:0", "--replica-id", id],
    )
}

async fn world() -> World {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start_replica(&url, dir.path(), "rep_a");
    let b = start_replica(&url, dir.path(), "rep_b");
    let ws = create_workspace_pg(&url, "alpha");
    let mut agents = Vec::new();
    let mut targets = Vec::new();
    for (name, env) in [("stg", "staging"), ("prd", "prod")] {
        let host = unique(&format!("scope-{name}"));
        let token = admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
        agents.push(start_agent(
            &a.addr,
            Some(&token),
            &dir.path().join(format!("{name}.json")),
            &host,
            &["--heartbeat-secs", "1"],
        ));
        let mut t = terminal(&a.addr, Some(&ws.api_key)).await;
        let session_id = wait_connected(&mut t, &host).await;
        let mut e = ext(&a.addr, Some(&ws.api_key)).await;
        let machine = wait_native_exec(&mut e, &host).await;
        admin_pg(&url, &["label", &host, &format!("env={env}")]);
        targets.push(Target {
            host,
            machine_id: machine.machine_id,
            session_id,
        });
    }
    let prod = targets.pop().expect("prod");
    let staging = targets.pop().expect("staging");
    World {
        agents,
        a,
        b,
        url,
        staging,
        prod,
        dir,
        _pg: pg,
    }
}

/// A key of workspace alpha allowed `allow` on machines env=staging.
fn scoped_key(url: &str, name: &str, allow: Option<&str>) -> String {
    let mut args = vec![
        "create-key",
        "--workspace",
        "alpha",
        "--name",
        name,
        "--machines",
        "env=staging",
    ];
    if let Some(ops) = allow {
        args.extend(["--allow", ops]);
    }
    admin_pg(url, &args)
}

async fn token_of(addr: &str, key: &str) -> String {
    ext(addr, Some(key))
        .await
        .issue_token(IssueTokenRequest::default())
        .await
        .expect("IssueToken with a scoped key")
        .into_inner()
        .access_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_held_to_the_key_s_scope_directly_and_forwarded() {
    let w = world().await;
    let ops: [Option<&str>; 7] = [
        Some("exec"),
        Some("shell"),
        Some("files:read"),
        Some("files:write"),
        Some("sessions:list"),
        Some("machines:list"),
        None,
    ];
    let keys: Vec<(Option<&str>, String)> = ops
        .iter()
        .map(|op| {
            let name = format!("k-{}", op.unwrap_or("machines-only").replace(':', "-"));
            (*op, scoped_key(&w.url, &name, *op))
        })
        .collect();
    for addr in [&w.a.addr, &w.b.addr] {
        wait_labels_read(addr, &keys[6].1, &w.staging.host).await;
    }
    let mut failures = Vec::new();
    let mut n = 0usize;
    let mut calls = 0usize;
    for (entry, addr) in [("direct", &w.a.addr), ("forwarded", &w.b.addr)] {
        for (allow, key) in &keys {
            let token = token_of(addr, key).await;
            for (kind, credential) in [("key", key.clone()), ("token", token)] {
                let dir = w.dir.path().join(format!("files-{n}"));
                std::fs::create_dir_all(&dir).expect("files dir");
                std::fs::write(dir.join("seed.txt"), b"seed").expect("seed file");
                let caller = Caller {
                    addr: addr.to_string(),
                    credential,
                    dir,
                };
                for (target, in_scope) in [(&w.staging, true), (&w.prod, false)] {
                    for (rpc, needs) in RPCS {
                        n += 1;
                        calls += 1;
                        let got = call(&caller, rpc, target, n).await;
                        let want = expected(rpc, needs, *allow, in_scope, kind == "token");
                        if got != want {
                            failures.push(format!(
                                "{entry} {kind} allow={} {rpc} on {}: got {got:?}, want {want:?}",
                                allow.unwrap_or("all"),
                                if in_scope { "staging" } else { "prod" },
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} calls went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // CloseSession (left out above: it ends the machine's shell session)
    // is refused without `shell`, invisible out of scope, and works in.
    let mut t = terminal(&w.b.addr, Some(&keys[0].1)).await;
    let denied = t
        .close_session(CloseSessionRequest {
            session_id: w.staging.session_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("exec-only key closing a session");
    assert_eq!(status_outcome(&denied), Outcome::Denied, "{denied:?}");
    let mut t = terminal(&w.b.addr, Some(&keys[1].1)).await;
    let hidden = t
        .close_session(CloseSessionRequest {
            session_id: w.prod.session_id.clone(),
            ..Default::default()
        })
        .await
        .expect("CloseSession answers in its fields")
        .into_inner();
    assert_eq!(soft(hidden.success, &hidden.error), Outcome::Hidden);
    assert!(!hidden.error.contains(&w.prod.host), "{hidden:?}");
    let closed = t
        .close_session(CloseSessionRequest {
            session_id: w.staging.session_id.clone(),
            ..Default::default()
        })
        .await
        .expect("CloseSession")
        .into_inner();
    assert!(closed.success, "{closed:?}");
    drop(w.agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_key_and_the_flag_and_hidden_machines_are_not_named() {
    let w = world().await;
    let key = scoped_key(&w.url, "ci-deploy", Some("exec"));
    wait_labels_read(&w.a.addr, &key, &w.staging.host).await;
    let mut t = terminal(&w.a.addr, Some(&key)).await;
    let refused = t
        .file_read(FileReadRpcRequest {
            session_id: w.staging.session_id.clone(),
            path: "/etc/hostname".into(),
            ..Default::default()
        })
        .await
        .expect_err("an exec-only key reading a file");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused
            .message()
            .starts_with("API key 'ci-deploy' may not read files"),
        "{}",
        refused.message()
    );
    assert!(refused.message().contains("--allow files:read"));

    // Out of scope: the same answer as a machine that does not exist.
    let mut e = ext(&w.a.addr, Some(&key)).await;
    let mut req = exec_req("", "true", 5_000);
    req.machine_id = w.prod.machine_id.clone();
    let hidden = e.exec(req).await.expect_err("exec on prod");
    assert_eq!(hidden.code(), Code::NotFound);
    assert!(!hidden.message().contains(&w.prod.host), "{hidden:?}");
    let mut req = exec_req("", "true", 5_000);
    req.machine_id = "mach_doesnotexist".into();
    let absent = e.exec(req).await.expect_err("exec on nothing");
    assert_eq!(absent.code(), hidden.code());

    // A label change moves a machine out of scope on every replica.
    admin_pg(&w.url, &["label", &w.staging.host, "env=retired"]);
    for addr in [&w.a.addr, &w.b.addr] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut e = ext(addr, Some(&key)).await;
        loop {
            let found = e
                .resolve_machine(ResolveMachineRequest {
                    hostname: w.staging.host.clone(),
                    ..Default::default()
                })
                .await
                .expect("ResolveMachine")
                .into_inner()
                .found;
            if !found {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} still shows a machine relabelled out of scope after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs the `cmdop` CLI against `addr` with `key`.
fn cli(addr: &str, key: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(cmdop_bin())
        .args(args)
        .env("CMDOP_SERVER", format!("http://{addr}"))
        .env("CMDOP_API_KEY", key)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cmdop")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The README's walk-through on a single server (SQLite): a staging-only,
/// exec-only key runs commands on staging, is refused on production and
/// on file reads, shows in `cmdop admin keys` with its last use, and stops
/// working — ending the command it started — when it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_only_exec_only_key_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path(), "127.0.0.1:0", &[]);
    let ws = create_workspace(dir.path(), "alpha");
    let mut agents = Vec::new();
    let mut hosts = Vec::new();
    for (name, env) in [("stg", "staging"), ("prd", "prod")] {
        let host = unique(&format!("cli-scope-{name}"));
        let token = enroll_token(dir.path(), "alpha");
        agents.push(start_agent(
            &server.addr,
            Some(&token),
            &dir.path().join(format!("{name}.json")),
            &host,
            &["--heartbeat-secs", "1"],
        ));
        let mut t = terminal(&server.addr, Some(&ws.api_key)).await;
        wait_connected(&mut t, &host).await;
        let mut e = ext(&server.addr, Some(&ws.api_key)).await;
        wait_native_exec(&mut e, &host).await;
        admin(dir.path(), &["label", &host, &format!("env={env}")]);
        hosts.push(host);
    }
    let (stg, prd) = (&hosts[0], &hosts[1]);
    let key = admin(
        dir.path(),
        &[
            "create-key",
            "--workspace",
            "alpha",
            "--name",
            "ci-deploy",
            "--machines",
            "env=staging",
            "--allow",
            "exec",
            "--expires",
            "30d",
        ],
    );
    assert!(key.starts_with("cmdop_"), "{key}");
    wait_labels_read(&server.addr, &key, stg).await;

    let ok = cli(&server.addr, &key, &["exec", "-H", stg, "echo staging-ok"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), "staging-ok\n");

    let prod = cli(&server.addr, &key, &["exec", "-H", prd, "echo prod"]);
    assert!(!prod.status.success(), "exec on production must fail");
    assert!(
        !text(&prod.stdout).contains("prod"),
        "{}",
        text(&prod.stdout)
    );

    let seed = dir.path().join("seed.txt");
    std::fs::write(&seed, b"secret").unwrap();
    let dest = dir.path().join("copied.txt");
    let read = cli(
        &server.addr,
        &key,
        &[
            "cp",
            &format!("{stg}:{}", seed.display()),
            dest.to_str().unwrap(),
        ],
    );
    assert!(!read.status.success(), "a file read must be refused");
    let err = text(&read.stderr);
    assert!(err.contains("may not read files"), "{err}");
    assert!(!dest.exists(), "nothing may be written on refusal");

    // The key is listed with its scope and, once the server wrote it, its
    // last use.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listing = admin(dir.path(), &["keys", "--workspace", "alpha"]);
        let row = listing
            .lines()
            .find(|l| l.contains("ci-deploy"))
            .unwrap_or_else(|| panic!("ci-deploy not listed:\n{listing}"))
            .to_string();
        assert!(listing.starts_with("KEY"), "{listing}");
        assert!(row.contains("exec") && row.contains("env=staging"), "{row}");
        assert!(row.contains("expires in"), "{row}");
        assert!(!row.contains(&key), "a listing never shows the key");
        if !row.trim_end().ends_with("never") {
            break;
        }
        assert!(Instant::now() < deadline, "last use not recorded: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let json = admin(dir.path(), &["keys", "--workspace", "alpha", "--json"]);
    let scoped: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|v| v["name"] == "ci-deploy")
        .expect("ci-deploy in --json");
    assert_eq!(scoped["allow"], serde_json::json!(["exec"]));
    assert_eq!(scoped["machines"], "env=staging");
    assert!(scoped["last_used_unix_ms"].as_i64().is_some(), "{scoped}");

    // A key that expires ends the command it started, and is refused after.
    let short = admin(
        dir.path(),
        &[
            "create-key",
            "--workspace",
            "alpha",
            "--name",
            "brief",
            "--allow",
            "exec",
            "--expires",
            "4s",
        ],
    );
    let started = Instant::now();
    let cut = cli(&server.addr, &short, &["exec", "-H", stg, "sleep 60"]);
    assert!(!cut.status.success(), "the command outlived its key");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the call was not ended at the key's expiry"
    );
    assert!(
        text(&cut.stderr).contains("expired"),
        "{}",
        text(&cut.stderr)
    );
    let after = cli(&server.addr, &short, &["exec", "-H", stg, "true"]);
    assert!(!after.status.success(), "an expired key still works");
    drop(agents);
}
