//! The agent against the real control plane on 127.0.0.1: enrollment, the
//! official execute() marker path, file RPCs, native Exec, reconnect with a
//! stable session id, and restart without a token.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use cmdop_agent::AgentConfig;
use cmdop_controlplane::{store::Store, ServerConfig};
use cmdop_proto::{
    ext::{cmdop_client::CmdopClient, exec_event, ExecRequest},
    terminal::{
        terminal_streaming_service_client::TerminalStreamingServiceClient,
        FileListDirectoryRpcRequest, FileReadRpcRequest, FileWriteRpcRequest, GetOutputRequest,
        GetSessionByHostnameRequest, SendInputRequest,
    },
};
use tokio::sync::watch;
use tonic::{metadata::MetadataValue, transport::Channel, Request};

const HOST: &str = "agent-e2e-host";

struct Server {
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_server(data: &Path, port: u16) -> Server {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let config = ServerConfig {
        data_dir: data.to_path_buf(),
        ..ServerConfig::default()
    };
    let task = tokio::spawn(cmdop_controlplane::serve(listener, config, wait(rx)));
    Server { addr, stop, task }
}

async fn wait(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn authed<T>(key: &str, body: T) -> Request<T> {
    let mut req = Request::new(body);
    let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
    req.metadata_mut().insert("authorization", value);
    req
}

async fn client(
    addr: std::net::SocketAddr,
) -> (
    TerminalStreamingServiceClient<Channel>,
    CmdopClient<Channel>,
) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        TerminalStreamingServiceClient::new(channel.clone()),
        CmdopClient::new(channel),
    )
}

/// Polls until the agent shows up connected; returns its session id.
async fn wait_connected(t: &mut TerminalStreamingServiceClient<Channel>, key: &str) -> String {
    for _ in 0..200 {
        let req = authed(
            key,
            GetSessionByHostnameRequest {
                hostname: HOST.into(),
                partial_match: false,
            },
        );
        if let Ok(resp) = t.get_session_by_hostname(req).await {
            let r = resp.into_inner();
            if r.found && r.status == "connected" {
                return r.session_id;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("agent never connected");
}

/// The SDKs' execute(): marker line via SendInput, poll GetOutput.
async fn execute(
    t: &mut TerminalStreamingServiceClient<Channel>,
    key: &str,
    session: &str,
    id: &str,
    cmd: &str,
) -> (String, i32) {
    let line = format!(
        "printf \"\\n<<CMD:{id}:START>>\\n\"; {cmd}; printf \"\\n<<CMD:{id}:END:%d>>\\n\" $?\n"
    );
    let sent = t
        .send_input(authed(
            key,
            SendInputRequest {
                session_id: session.into(),
                data: line.into_bytes().into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(sent.success, "{}", sent.error);
    let end_tag = format!("<<CMD:{id}:END:");
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = t
            .get_output(authed(
                key,
                GetOutputRequest {
                    session_id: session.into(),
                    offset: 0,
                    limit: 20480,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let text = String::from_utf8_lossy(&out.data).replace('\r', "");
        let Some(end_at) = text.rmatch_indices(&end_tag).map(|(i, _)| i).find(|&i| {
            text[i + end_tag.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        }) else {
            continue;
        };
        let code: i32 = text[end_at + end_tag.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        let start_tag = format!("<<CMD:{id}:START>>");
        let start = text[..end_at].rfind(&start_tag).expect("START before END") + start_tag.len();
        let body = text[start..end_at]
            .lines()
            .filter(|l| !l.contains("<<CMD:") && !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        return (body, code);
    }
    panic!("execute({cmd}) timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_the_control_plane_end_to_end() {
    tokio::time::timeout(Duration::from_secs(90), scenario())
        .await
        .expect("scenario finished in time");
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let store = Store::open(&data).unwrap();
    let ws = store.create_workspace("e2e").unwrap();
    let key = store.create_api_key(&ws.id, "e2e").unwrap();
    let token = store.create_enrollment_token(&ws.id).unwrap();
    drop(store);

    let server = start_server(&data, 0).await;
    let state_file = dir.path().join("agent").join("agent.json");
    std::fs::create_dir_all(state_file.parent().unwrap()).unwrap();
    let config = AgentConfig {
        server: format!("http://{}", server.addr),
        enrollment_token: Some(token.clone()),
        state_file: state_file.clone(),
        hostname: Some(HOST.into()),
        shell: Some("/bin/sh".into()),
        heartbeat_interval: Duration::from_secs(1),
        reconnect_base: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
        ..AgentConfig::default()
    };
    let (agent_stop, agent_rx) = watch::channel(false);
    let agent = tokio::spawn(cmdop_agent::run(config.clone(), wait(agent_rx)));

    let (mut t, mut cmdop) = client(server.addr).await;
    let session = wait_connected(&mut t, &key).await;
    let mode = std::fs::metadata(&state_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Official execute() path over the PTY.
    let (out, code) = execute(&mut t, &key, &session, "a1b2c3d4e5f6", "echo hi; (exit 7)").await;
    assert_eq!((out.as_str(), code), ("hi", 7));

    // File RPCs.
    let work = dir.path().join("files");
    std::fs::create_dir(&work).unwrap();
    let file = work.join("note.txt").display().to_string();
    let w = t
        .file_write(authed(
            &key,
            FileWriteRpcRequest {
                session_id: session.clone(),
                path: file.clone(),
                content: b"hello".to_vec().into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(w.success, "{}", w.error);
    let r = t
        .file_read(authed(
            &key,
            FileReadRpcRequest {
                session_id: session.clone(),
                path: file.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&r.result.unwrap().content[..], b"hello");
    let l = t
        .file_list_directory(authed(
            &key,
            FileListDirectoryRpcRequest {
                session_id: session.clone(),
                path: work.display().to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        l.result
            .unwrap()
            .entries
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>(),
        ["note.txt"]
    );
    let missing = t
        .file_read(authed(
            &key,
            FileReadRpcRequest {
                session_id: session.clone(),
                path: "/no/such/file".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("a failed read is an error status");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(
        missing.message().contains("no such file"),
        "{}",
        missing.message()
    );

    // Native exec.
    let (stdout, stderr, exit) =
        exec(&mut cmdop, &key, &session, "echo out; echo err >&2; exit 3").await;
    assert_eq!(
        (stdout.as_str(), stderr.as_str(), exit.exit_code),
        ("out\n", "err\n", 3)
    );

    // Control plane restart: the agent reconnects with the same session id.
    let port = server.addr.port();
    server.stop.send(true).unwrap();
    let _ = server.task.await;
    let server = start_server(&data, port).await;
    let (mut t, _) = client(server.addr).await;
    let again = wait_connected(&mut t, &key).await;
    assert_eq!(again, session, "session id must survive reconnects");

    // Agent restart: no token needed, identity from the state file.
    agent_stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
    let (agent_stop, agent_rx) = watch::channel(false);
    let config = AgentConfig {
        enrollment_token: None,
        ..config
    };
    let agent = tokio::spawn(cmdop_agent::run(config, wait(agent_rx)));
    let _ = wait_connected(&mut t, &key).await;
    agent_stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
    server.stop.send(true).unwrap();
    let _ = server.task.await;
}

async fn exec(
    cmdop: &mut CmdopClient<Channel>,
    key: &str,
    session: &str,
    command: &str,
) -> (String, String, cmdop_proto::ext::ExecExit) {
    let mut stream = cmdop
        .exec(authed(
            key,
            ExecRequest {
                session_id: session.into(),
                command: command.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    // This agent reports pids: `started` comes first and carries one.
    let first = stream.message().await.unwrap().and_then(|ev| ev.event);
    let Some(exec_event::Event::Started(started)) = first else {
        panic!("expected `started` first, got {first:?}");
    };
    assert!(started.pid > 0, "started carries the real pid");
    while let Some(ev) = stream.message().await.unwrap() {
        match ev.event {
            Some(exec_event::Event::Stdout(b)) => out.extend_from_slice(&b),
            Some(exec_event::Event::Stderr(b)) => err.extend_from_slice(&b),
            Some(exec_event::Event::Exit(exit)) => {
                return (
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(err).unwrap(),
                    exit,
                )
            }
            _ => {}
        }
    }
    panic!("exec stream ended without exit");
}

#[tokio::test]
async fn refused_enrollment_and_missing_token_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    drop(Store::open(&data).unwrap());
    let server = start_server(&data, 0).await;
    let base = AgentConfig {
        server: format!("http://{}", server.addr),
        state_file: dir.path().join("agent.json"),
        ..AgentConfig::default()
    };
    let err = cmdop_agent::run(base.clone(), std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("enroll-token"), "{err}");
    let bad = AgentConfig {
        enrollment_token: Some("cmdenr_bogus".into()),
        ..base
    };
    let err = cmdop_agent::run(bad, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused"), "{err}");
    server.stop.send(true).unwrap();
    let _ = server.task.await;
}
