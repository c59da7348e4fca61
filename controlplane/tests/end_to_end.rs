//! The control plane over real gRPC: an enrolled scripted agent on one
//! side, SDK-style client calls on the other.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cmdop_proto::{
    ext::{
        exec_event, ExecRequest, IssueTokenRequest, RefreshTokenRequest, ResolveMachineRequest,
        ServerInfoRequest,
    },
    terminal::{
        agent_message, control_message,
        terminal_streaming_service_client::TerminalStreamingServiceClient, AgentMessage,
        CreateSessionRequest, FileGetInfoRpcRequest, FileListDirectoryRpcRequest,
        FileReadRpcRequest, FileWriteRpcRequest, GetHistoryRequest, GetOutputRequest,
        GetSessionByHostnameRequest, GetSessionStatusRequest, ListSessionsRequest, RegisterRequest,
        SendInputRequest, SessionStatus, StatusUpdate, TerminalOutput,
    },
};
use support::{authed, enroll, Fixture};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code};

type Terminal = TerminalStreamingServiceClient<Channel>;

async fn wait_output(client: &mut Terminal, key: &str, sid: &str, want: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = client
            .get_output(authed(
                GetOutputRequest {
                    session_id: sid.into(),
                    offset: 0,
                    limit: 0,
                },
                key,
            ))
            .await
            .expect("get output")
            .into_inner();
        if out.data.windows(want.len()).any(|w| w == want) {
            return out.data.to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "output never contained {want:?}; have {:?}",
            out.data
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A SendInput request that types `data` into session `session_id`.
fn input_to(session_id: &str, data: Bytes) -> SendInputRequest {
    SendInputRequest {
        session_id: session_id.into(),
        data,
    }
}

/// An Exec request that runs `command` on the machine `machine_id`.
fn command_on_machine(machine_id: &str, command: &str) -> ExecRequest {
    ExecRequest {
        machine_id: machine_id.into(),
        command: command.into(),
        ..Default::default()
    }
}

/// An Exec request that runs `command` on the machine behind session `session_id`.
fn command_in_session(session_id: &str, command: &str) -> ExecRequest {
    ExecRequest {
        session_id: session_id.into(),
        command: command.into(),
        ..Default::default()
    }
}

/// A request to list directory `path` on the machine behind session `session_id`.
fn directory_in(session_id: &str, path: &str) -> FileListDirectoryRpcRequest {
    FileListDirectoryRpcRequest {
        session_id: session_id.into(),
        path: path.into(),
        ..Default::default()
    }
}

/// A request to read file `path` on the machine behind session `session_id`.
fn file_in(session_id: &str, path: &str) -> FileReadRpcRequest {
    FileReadRpcRequest {
        session_id: session_id.into(),
        path: path.into(),
        ..Default::default()
    }
}

/// A request for the status of session `session_id`.
fn status_of_session(session_id: &str) -> GetSessionStatusRequest {
    GetSessionStatusRequest {
        session_id: session_id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_output_files_and_exec() {
    let fixture = Fixture::start().await;
    let key = fixture.key();

    let id1 = fixture.enroll("web-1").await;
    assert!(id1.machine_id.starts_with("mach_"));
    let id2 = fixture.enroll("web-2").await;
    let agent1 = fixture
        .connect(&id1, "web-1", "11111111-1111-4111-8111-111111111111", true)
        .await;
    assert_eq!(
        agent1.session_id, "11111111-1111-4111-8111-111111111111",
        "the agent's session id is kept"
    );
    let agent2 = fixture.connect(&id2, "web-2", "", false).await;
    assert_eq!(
        agent2.session_id.len(),
        36,
        "an empty session id gets a UUID"
    );

    let mut client = fixture
        .terminal()
        .max_encoding_message_size(cmdop_proto::limits::MAX_MESSAGE_BYTES);

    // ListSessions: both connected, newest activity first, lowercase status.
    let list = client
        .list_sessions(authed(
            ListSessionsRequest {
                status_filter: "connected".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 2);
    assert_eq!(list.workspace_name, "acme");
    assert!(list.sessions.iter().all(|s| s.status == "connected"));
    let filtered = client
        .list_sessions(authed(
            ListSessionsRequest {
                hostname_filter: "WEB-2".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.sessions.len(), 1);
    assert_eq!(filtered.sessions[0].session_id, agent2.session_id);

    // GetSessionByHostname: exact, ambiguous partial, none.
    let by_host = |hostname: &str, partial_match| {
        authed(
            GetSessionByHostnameRequest {
                hostname: hostname.into(),
                partial_match,
            },
            key,
        )
    };
    let exact = client
        .get_session_by_hostname(by_host("web-1", false))
        .await
        .unwrap()
        .into_inner();
    assert!(exact.found);
    assert_eq!(exact.session_id, agent1.session_id);
    let ambiguous = client
        .get_session_by_hostname(by_host("web", true))
        .await
        .unwrap()
        .into_inner();
    assert!(!ambiguous.found && ambiguous.ambiguous);
    assert_eq!(ambiguous.matches_count, 2);
    assert!(
        ambiguous.error.contains("web-1") && ambiguous.error.contains("web-2"),
        "{}",
        ambiguous.error
    );
    let none = client
        .get_session_by_hostname(by_host("db", true))
        .await
        .unwrap()
        .into_inner();
    assert!(!none.found && !none.ambiguous && !none.error.is_empty());

    // SendInput is echoed by the agent; GetOutput serves tail and offset reads.
    let sid = agent1.session_id.clone();
    let sent = client
        .send_input(authed(
            input_to(&sid, Bytes::from_static(b"echo hello\n")),
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(sent.success, "{}", sent.error);
    assert_eq!(
        wait_output(&mut client, key, &sid, b"echo hello\n").await,
        b"echo hello\n"
    );
    let tail = client
        .get_output(authed(
            GetOutputRequest {
                session_id: sid.clone(),
                offset: 0,
                limit: 6,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&tail.data[..], b"hello\n");
    assert_eq!(tail.total_bytes, 11);
    let from = client
        .get_output(authed(
            GetOutputRequest {
                session_id: sid.clone(),
                offset: 5,
                limit: 0,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&from.data[..], b"hello\n");
    let history = client
        .get_history(authed(
            GetHistoryRequest {
                session_id: sid.clone(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.commands, vec!["echo hello"]);
    let status = client
        .get_session_status(authed(status_of_session(&sid), key))
        .await
        .unwrap()
        .into_inner();
    assert!(status.exists);
    assert_eq!(status.status, SessionStatus::Connected as i32);
    let unknown_input = client
        .send_input(authed(input_to("nope", Bytes::from_static(b"x")), key))
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown_input.success && unknown_input.error.contains("not found"));
    let created = client
        .create_session(authed(CreateSessionRequest::default(), key))
        .await
        .unwrap()
        .into_inner();
    assert!(!created.success && created.error.contains("agent"));

    // Files: forwarded to the agent; results always filled on success.
    let listing = client
        .file_list_directory(authed(directory_in(&sid, "/tmp"), key))
        .await
        .unwrap()
        .into_inner();
    assert!(listing.success, "{}", listing.error);
    let result = listing.result.expect("result");
    assert_eq!(result.entries[0].path, "/tmp/a.txt");
    let info = client
        .file_get_info(authed(
            FileGetInfoRpcRequest {
                session_id: sid.clone(),
                path: "/tmp/a.txt".into(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(info.success);
    assert!(
        info.result.expect("result").entry.is_some(),
        "entry is filled even when the agent sent none"
    );
    // Failures are error statuses (the Python SDK ignores `success`).
    let missing = client
        .file_read(authed(file_in(&sid, "/missing"), key))
        .await
        .expect_err("a failed read is an error status");
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("no such file"), "{missing:?}");
    assert_eq!(
        missing.metadata().get("x-cmdop-file-error").unwrap(),
        "NOT_FOUND"
    );
    let big = client
        .file_write(authed(
            FileWriteRpcRequest {
                session_id: sid.clone(),
                path: "/tmp/big".into(),
                content: vec![7u8; 6 << 20].into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .expect("messages above tonic's 4 MiB default are accepted")
        .into_inner();
    assert!(big.success && big.result.expect("result").entry.is_some());
    let err = client
        .send_input(authed(input_to(&sid, vec![b'x'; 2 << 20].into()), key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A connection that never picked a machine gets FAILED_PRECONDITION.
    let no_session = TerminalStreamingServiceClient::new(fixture.server.channel().await)
        .file_list_directory(authed(
            FileListDirectoryRpcRequest {
                path: "/".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .expect_err("no machine selected");
    assert_eq!(no_session.code(), Code::FailedPrecondition);
    assert!(
        no_session.message().contains("set_machine"),
        "{no_session:?}"
    );

    // Exec over the agent's Channel.
    let mut ext = fixture.cmdop();
    let info = ext
        .server_info(authed(ServerInfoRequest {}, key))
        .await
        .unwrap()
        .into_inner();
    assert!(info.capabilities.contains(&"exec.v1".to_string()));
    assert_eq!(info.workspace_name, "acme");
    let resolved = ext
        .resolve_machine(authed(
            ResolveMachineRequest {
                machine_id: id1.machine_id.clone(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    let machine = resolved.machine.expect("machine");
    assert_eq!(
        (machine.session_id.as_str(), machine.native_exec),
        (sid.as_str(), true)
    );
    let mut events = ext
        .exec(authed(
            ExecRequest {
                stdin: Bytes::from_static(b"in"),
                ..command_on_machine(&id1.machine_id, "true")
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ev) = events.message().await.expect("exec stream") {
        seen.push(ev.event.expect("event"));
    }
    assert!(matches!(&seen[0], exec_event::Event::Started(s) if s.exec_id.starts_with("exec_")));
    assert_eq!(
        seen[1],
        exec_event::Event::Stdout(Bytes::from_static(b"ran true"))
    );
    assert_eq!(
        seen[2],
        exec_event::Event::Stderr(Bytes::from_static(b"in"))
    );
    assert!(matches!(&seen[3], exec_event::Event::Exit(e) if e.exit_code == 3));
    assert_eq!(seen.len(), 4);

    // An agent without a Channel: UNIMPLEMENTED so clients fall back.
    let err = ext
        .exec(authed(command_in_session(&agent2.session_id, "true"), key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    drop((agent1, agent2));
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_are_walls_and_auth_errors_are_clear() {
    let fixture = Fixture::start().await;
    let other = fixture.server.tenant("other");
    let (id, agent) = fixture.agent("secret-box", "", true).await;
    let sid = agent.session_id.clone();
    let mut client = fixture.terminal();
    let key = other.api_key.as_str();

    let list = client
        .list_sessions(authed(ListSessionsRequest::default(), key))
        .await
        .unwrap()
        .into_inner();
    assert!(list.sessions.is_empty());
    let by_host = client
        .get_session_by_hostname(authed(
            GetSessionByHostnameRequest {
                hostname: "secret-box".into(),
                partial_match: false,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!by_host.found);
    let err = client
        .get_output(authed(
            GetOutputRequest {
                session_id: sid.clone(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .file_list_directory(authed(directory_in(&sid, "/"), key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = fixture
        .cmdop()
        .exec(authed(command_on_machine(&id.machine_id, "id"), key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let status = client
        .get_session_status(authed(status_of_session(&sid), key))
        .await
        .unwrap()
        .into_inner();
    assert!(!status.exists);

    // Missing and wrong keys.
    let err = client
        .list_sessions(ListSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("CMDOP_API_KEY"), "{}", err.message());
    let err = client
        .list_sessions(authed(ListSessionsRequest::default(), "cmdop_wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().starts_with("API key is invalid or revoked"));

    // Enrollment tokens are single use.
    let token = fixture.server.enrollment_token(&fixture.tenant);
    enroll(fixture.channel.clone(), &token, "box-2").await;
    let err = cmdop_proto::ext::agent_link_client::AgentLinkClient::new(fixture.channel.clone())
        .enroll(cmdop_proto::ext::EnrollRequest {
            enrollment_token: token,
            hostname: "box-3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("cmdop admin enroll-token"));

    drop(agent);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_loss_fails_calls_in_flight_quickly_and_client_loss_cancels_exec() {
    let fixture = Fixture::start().await;
    let key = fixture.key().to_string();
    let (id, mut agent) = fixture.agent("flaky", "", true).await;
    let sid = agent.session_id.clone();

    // A client that goes away cancels its exec on the agent.
    let mut ext = fixture.cmdop();
    let mut events = ext
        .exec(authed(command_in_session(&sid, "hang 1"), &key))
        .await
        .unwrap()
        .into_inner();
    let started = events.message().await.unwrap().unwrap();
    let Some(exec_event::Event::Started(started)) = started.event else {
        panic!("expected started")
    };
    drop(events);
    let cancelled = tokio::time::timeout(Duration::from_secs(5), agent.cancels.recv())
        .await
        .expect("cancel arrives");
    assert_eq!(cancelled, Some(started.exec_id));

    // Calls waiting on the agent fail with UNAVAILABLE as soon as it drops.
    let mut client = fixture.terminal();
    let read = {
        let (mut client, key, sid) = (client.clone(), key.clone(), sid.clone());
        tokio::spawn(async move { client.file_read(authed(file_in(&sid, "/slow"), &key)).await })
    };
    let mut hung = ext
        .exec(authed(command_in_session(&sid, "hang 2"), &key))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        hung.message().await.unwrap().unwrap().event,
        Some(exec_event::Event::Started(_))
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped_at = Instant::now();
    agent.kill();
    let err = tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .expect("file read fails within 1 s")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("disconnected during the call"),
        "{}",
        err.message()
    );
    let err = tokio::time::timeout(Duration::from_secs(1), hung.message())
        .await
        .expect("exec fails within 1 s")
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(dropped_at.elapsed() < Duration::from_secs(1));

    // The session is listed as disconnected; input to it fails in fields.
    let list = client
        .list_sessions(authed(ListSessionsRequest::default(), &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sessions[0].status, "disconnected");
    let sent = client
        .send_input(authed(input_to(&sid, Bytes::from_static(b"x\n")), &key))
        .await
        .unwrap()
        .into_inner();
    assert!(!sent.success && sent.error.contains("offline"));
    let err = ext
        .exec(authed(command_on_machine(&id.machine_id, "id"), &key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_refresh_and_reuse_detection() {
    let fixture = Fixture::start().await;
    let mut ext = fixture.cmdop();
    let mut client = fixture.terminal();

    let first = ext
        .issue_token(authed(IssueTokenRequest::default(), fixture.key()))
        .await
        .unwrap()
        .into_inner();
    assert!(first.access_token.starts_with("cmdat_") && first.refresh_token.starts_with("cmdrt_"));
    client
        .list_sessions(authed(ListSessionsRequest::default(), &first.access_token))
        .await
        .expect("access token works");

    let second = ext
        .refresh_token(RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.access_token, first.access_token);
    client
        .list_sessions(authed(ListSessionsRequest::default(), &second.access_token))
        .await
        .expect("rotated token works");

    let err = ext
        .refresh_token(RefreshTokenRequest {
            refresh_token: first.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().starts_with("refresh token reuse detected"),
        "{}",
        err.message()
    );
    let err = client
        .list_sessions(authed(ListSessionsRequest::default(), &second.access_token))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the whole family is revoked"
    );

    let short = ext
        .issue_token(authed(
            IssueTokenRequest {
                access_ttl_seconds: 1,
            },
            fixture.key(),
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = client
        .list_sessions(authed(ListSessionsRequest::default(), &short.access_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().starts_with("access token expired"));
    assert_eq!(
        err.metadata()
            .get("x-cmdop-auth-error")
            .and_then(|v| v.to_str().ok()),
        Some("expired")
    );

    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streams_output_and_ends_on_half_close() {
    let fixture = Fixture::start().await;
    let key = fixture.key();
    let (_, agent) = fixture.agent("shell-box", "", false).await;
    let sid = agent.session_id.clone();
    let mut client = fixture.terminal();

    let (tx, rx) = mpsc::channel::<AgentMessage>(8);
    let register = AgentMessage {
        session_id: sid.clone(),
        message_id: format!("{sid}-1"),
        payload: Some(agent_message::Payload::Register(RegisterRequest {
            version: "sdk-node-0.1.0-attach".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    tx.send(register).await.unwrap();
    let mut down = client
        .connect_terminal(authed(ReceiverStream::new(rx), key))
        .await
        .unwrap()
        .into_inner();
    let first = down.message().await.unwrap().unwrap();
    assert!(
        matches!(first.payload, Some(control_message::Payload::StartSession(ref s)) if s.config.as_ref().unwrap().session_id == sid)
    );

    // Typed input goes to the agent (which echoes it back as output, which
    // the attach stream receives as `input`). Unknown reasons are ignored.
    let unknown = AgentMessage {
        session_id: sid.clone(),
        payload: Some(agent_message::Payload::Status(StatusUpdate {
            reason: "history:10:0".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    tx.send(unknown).await.unwrap();
    let typed = AgentMessage {
        session_id: sid.clone(),
        payload: Some(agent_message::Payload::Output(TerminalOutput {
            data: Bytes::from_static(b"ls\n"),
            ..Default::default()
        })),
        ..Default::default()
    };
    tx.send(typed).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), down.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(echoed.payload, Some(control_message::Payload::Input(ref i)) if &i.data[..] == b"ls\n")
    );

    // Half-closing ends the response stream.
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(5), down.message())
        .await
        .expect("stream ends")
        .unwrap();
    assert!(end.is_none());

    // Attaching to an unknown session is NOT_FOUND.
    let (tx, rx) = mpsc::channel::<AgentMessage>(1);
    tx.send(AgentMessage {
        session_id: "nope".into(),
        payload: Some(agent_message::Payload::Register(RegisterRequest {
            version: "sdk-python-0.1.0-attach".into(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = client
        .connect_terminal(authed(ReceiverStream::new(rx), key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    drop(agent);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_and_extensions_can_be_disabled() {
    const SESSION_ID: &str = "22222222-2222-4222-8222-222222222222";
    let fixture = Fixture::start().await;
    let (id, agent) = fixture.agent("stable", SESSION_ID, false).await;
    drop(agent);

    let fixture = fixture.restart(false).await;
    let before = fixture
        .terminal()
        .list_sessions(authed(ListSessionsRequest::default(), fixture.key()))
        .await
        .expect("key still works")
        .into_inner();
    assert_eq!(
        before.sessions.len(),
        1,
        "an enrolled machine lists as disconnected before it reconnects"
    );
    assert_eq!(
        (
            before.sessions[0].status.as_str(),
            before.sessions[0].machine_hostname.as_str()
        ),
        ("disconnected", "stable")
    );
    let agent = fixture.connect(&id, "stable", SESSION_ID, false).await;
    let mut client = fixture.terminal();
    let list = client
        .list_sessions(authed(ListSessionsRequest::default(), fixture.key()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sessions.len(), 1);
    assert_eq!(list.sessions[0].status, "connected");
    assert_eq!(list.sessions[0].session_id, agent.session_id);
    let machines = cmdop_controlplane::store::Store::open(fixture.server.dir.path())
        .unwrap()
        .list_machines(&fixture.tenant.workspace_id)
        .unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].machine_id, id.machine_id);

    let err = fixture
        .cmdop()
        .server_info(authed(ServerInfoRequest {}, fixture.key()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    drop(agent);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agents_go_offline_and_idle_client_pings_are_tolerated() {
    let fixture = Fixture::start_with_heartbeat_timeout(Duration::from_millis(600)).await;
    let (_, talkative) = fixture.agent("answers-pings", "", false).await;

    // An agent that registers and then says nothing, not even to pings.
    let silent_id = fixture.enroll("silent").await;
    let (tx, rx) = mpsc::channel::<AgentMessage>(1);
    tx.send(AgentMessage {
        payload: Some(agent_message::Payload::Register(RegisterRequest {
            hostname: "silent".into(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let _silent_stream = fixture
        .terminal()
        .connect_terminal(authed(ReceiverStream::new(rx), &silent_id.secret))
        .await
        .unwrap();

    // A client channel that pings every 200 ms even with no call open.
    let pinging =
        tonic::transport::Endpoint::from_shared(format!("http://{}", fixture.server.addr))
            .unwrap()
            .http2_keep_alive_interval(Duration::from_millis(200))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let list = TerminalStreamingServiceClient::new(pinging)
        .list_sessions(authed(ListSessionsRequest::default(), fixture.key()))
        .await
        .expect("the pinging channel still works")
        .into_inner();
    let status_of = |host: &str| {
        list.sessions
            .iter()
            .find(|s| s.machine_hostname == host)
            .map(|s| s.status.clone())
    };
    assert_eq!(status_of("answers-pings").as_deref(), Some("connected"));
    assert_eq!(status_of("silent").as_deref(), Some("disconnected"));

    drop((talkative, tx));
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_of_a_machine_replaces_the_old_one() {
    let fixture = Fixture::start().await;
    let key = fixture.key();
    let sid = "33333333-3333-4333-8333-333333333333";
    let (id, first) = fixture.agent("box", sid, true).await;
    let mut client = fixture.terminal();
    client
        .send_input(authed(input_to(sid, Bytes::from_static(b"one\n")), key))
        .await
        .unwrap();
    wait_output(&mut client, key, sid, b"one\n").await;

    let second = fixture.connect(&id, "box", sid, true).await;
    assert_eq!(second.session_id, sid);
    assert!(
        first.finished(Duration::from_secs(5)).await,
        "the old connection's stream is closed"
    );
    client
        .send_input(authed(input_to(sid, Bytes::from_static(b"two\n")), key))
        .await
        .unwrap();
    let out = wait_output(&mut client, key, sid, b"two\n").await;
    assert_eq!(
        out, b"one\ntwo\n",
        "output carries over a reconnect with the same session id"
    );
    let list = client
        .list_sessions(authed(ListSessionsRequest::default(), key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (list.total, list.sessions[0].status.as_str()),
        (1, "connected")
    );

    drop((first, second));
    fixture.stop().await;
}
