//! System tests for the control plane and agent: real `cmdop server` and
//! `cmdop agent` processes on loopback, driven through the official
//! `terminal` protocol and our `cmdop.ext.v1` extension with generated
//! gRPC clients.

mod common;

use std::time::{Duration, Instant};

use cmdop_proto::{
    ext::{
        exec_event::Event, ExecEvent, ExecRequest, IssueTokenRequest, RefreshTokenRequest,
        ResolveMachineRequest, ServerInfoRequest,
    },
    terminal::*,
};
use common::*;
use tonic::Code;

async fn exec_collect(
    ext: &mut Ext,
    req: ExecRequest,
) -> Result<(Vec<u8>, Vec<u8>, cmdop_proto::ext::ExecExit), tonic::Status> {
    let mut stream = ext.exec(req).await?.into_inner();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(Event::Stdout(b)) => out.extend_from_slice(&b),
            Some(Event::Stderr(b)) => err.extend_from_slice(&b),
            Some(Event::Exit(x)) => return Ok((out, err, x)),
            _ => {}
        }
    }
    Err(tonic::Status::internal(
        "exec stream ended without an exit event",
    ))
}

#[tokio::test]
async fn registration_listing_and_hostname_resolution() {
    let s = stack("alpha-host", &[]).await;
    let tag = unique("res");
    let names = [format!("web-1-{tag}"), format!("web-2-{tag}")];
    let mut agents = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let token = enroll_token(s.dir.path(), "alpha");
        agents.push(start_agent(
            &s.server.addr,
            Some(&token),
            &s.dir.path().join(format!("a{i}.json")),
            name,
            &[],
        ));
    }
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    for name in &names {
        wait_connected(&mut t, name).await;
    }

    let list = t
        .list_sessions(ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.error.is_empty(), "{}", list.error);
    assert_eq!(list.workspace_name, "alpha");
    for name in names.iter().chain([&s.host]) {
        let row = list
            .sessions
            .iter()
            .find(|r| &r.machine_hostname == name)
            .expect("listed");
        assert_eq!(row.status, "connected");
        assert!(row.has_shell);
        assert!(!row.session_id.is_empty());
        assert!(row.connected_at.is_some());
    }

    // Exact match.
    let r = t
        .get_session_by_hostname(GetSessionByHostnameRequest {
            hostname: names[0].clone(),
            partial_match: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.found, "{}", r.error);
    assert_eq!(r.machine_hostname, names[0]);
    // Partial, case-insensitive, unique.
    let r = t
        .get_session_by_hostname(GetSessionByHostnameRequest {
            hostname: format!("WEB-2-{}", tag.to_uppercase()),
            partial_match: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.found, "{}", r.error);
    assert_eq!(r.machine_hostname, names[1]);
    // Partial, ambiguous.
    let r = t
        .get_session_by_hostname(GetSessionByHostnameRequest {
            hostname: tag.clone(),
            partial_match: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.found && r.ambiguous, "expected ambiguous: {r:?}");
    assert_eq!(r.matches_count, 2);
    // Partial disabled: a substring is not a match.
    let r = t
        .get_session_by_hostname(GetSessionByHostnameRequest {
            hostname: tag.clone(),
            partial_match: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.found && !r.ambiguous);
    // Unknown.
    let r = t
        .get_session_by_hostname(GetSessionByHostnameRequest {
            hostname: "no-such-host".into(),
            partial_match: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.found && !r.error.is_empty());

    // Our extension resolves by hostname and by stable machine id.
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let m = e
        .resolve_machine(ResolveMachineRequest {
            hostname: names[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(m.found);
    let machine = m.machine.expect("machine");
    assert!(
        machine.machine_id.starts_with("mach_"),
        "{}",
        machine.machine_id
    );
    let by_id = e
        .resolve_machine(ResolveMachineRequest {
            machine_id: machine.machine_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.machine.expect("machine").hostname, names[0]);
    let amb = e
        .resolve_machine(ResolveMachineRequest {
            hostname: tag.clone(),
            partial_match: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(amb.ambiguous && amb.matches.len() == 2);

    let info = e
        .server_info(ServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.capabilities.iter().any(|c| c == "exec.v1"),
        "{:?}",
        info.capabilities
    );
}

#[tokio::test]
async fn pty_input_output_round_trip() {
    let s = stack("alpha-host", &[]).await;
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    let r = t
        .send_input(SendInputRequest {
            session_id: s.session_id.clone(),
            data: b"echo pty-$((6*7))-ok\n".to_vec().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.error);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = t
            .get_output(GetOutputRequest {
                session_id: s.session_id.clone(),
                offset: 0,
                limit: 20480,
            })
            .await
            .unwrap()
            .into_inner();
        if String::from_utf8_lossy(&out.data).contains("pty-42-ok") {
            assert!(out.total_bytes as usize >= out.data.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PTY output never showed the result: {:?}",
            String::from_utf8_lossy(&out.data)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn files_through_the_official_rpcs() {
    let s = stack("alpha-host", &[]).await;
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    let dir = s.dir.path().join("files");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join(".hidden"), b"h").unwrap();
    let file = dir.join("a.txt");
    let path = file.to_string_lossy().to_string();

    let w = t
        .file_write(FileWriteRpcRequest {
            session_id: s.session_id.clone(),
            path: path.clone(),
            content: b"one\ntwo\n".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(w.success, "{}", w.error);
    assert_eq!(w.result.expect("result").bytes_written, 8);
    // A plain write replaces an existing file (the official SDKs never set overwrite).
    let w = t
        .file_write(FileWriteRpcRequest {
            session_id: s.session_id.clone(),
            path: path.clone(),
            content: b"three\n".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(w.success, "{}", w.error);
    assert_eq!(std::fs::read(&file).unwrap(), b"three\n");

    let r = t
        .file_read(FileReadRpcRequest {
            session_id: s.session_id.clone(),
            path: path.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.error);
    assert_eq!(&r.result.expect("result").content[..], b"three\n");

    let l = t
        .file_list_directory(FileListDirectoryRpcRequest {
            session_id: s.session_id.clone(),
            path: dir.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l.success, "{}", l.error);
    let res = l.result.expect("result");
    let names: Vec<_> = res
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.r#type))
        .collect();
    assert!(
        names.contains(&("a.txt", StreamFileType::StreamFile as i32)),
        "{names:?}"
    );
    assert!(
        names.contains(&("sub", StreamFileType::StreamDirectory as i32)),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|(n, _)| *n == ".hidden"),
        "hidden files are left out unless asked: {names:?}"
    );
    let l = t
        .file_list_directory(FileListDirectoryRpcRequest {
            session_id: s.session_id.clone(),
            path: dir.to_string_lossy().into(),
            include_hidden: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l
        .result
        .expect("result")
        .entries
        .iter()
        .any(|e| e.name == ".hidden"));

    let info = t
        .file_get_info(FileGetInfoRpcRequest {
            session_id: s.session_id.clone(),
            path: path.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.success);
    assert_eq!(info.result.expect("result").entry.expect("entry").size, 6);

    let missing = t
        .file_read(FileReadRpcRequest {
            session_id: s.session_id.clone(),
            path: format!("{path}.missing"),
            ..Default::default()
        })
        .await
        .expect_err("a failed read is an error status");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Empty session id on a connection that picked no machine (Python SDK
    // without set_machine): FAILED_PRECONDITION, not an empty success.
    let empty = terminal(&s.server.addr, Some(&s.ws.api_key))
        .await
        .file_read(FileReadRpcRequest {
            path: path.clone(),
            ..Default::default()
        })
        .await
        .expect_err("no machine selected");
    assert_eq!(empty.code(), Code::FailedPrecondition, "{empty:?}");
}

#[tokio::test]
async fn native_exec_streams_and_exit_codes() {
    let s = stack("alpha-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let (out, err, x) = exec_collect(
        &mut e,
        exec_req(&s.session_id, "echo out; echo err >&2; exit 7", 10_000),
    )
    .await
    .unwrap();
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!((x.exit_code, x.signal, x.timed_out), (7, 0, false));
    for code in [0, 1] {
        let (_, _, x) = exec_collect(
            &mut e,
            exec_req(&s.session_id, &format!("exit {code}"), 10_000),
        )
        .await
        .unwrap();
        assert_eq!(x.exit_code, code);
    }
    let (_, _, x) = exec_collect(&mut e, exec_req(&s.session_id, "kill -TERM $$", 10_000))
        .await
        .unwrap();
    assert_eq!(x.signal, 15, "{x:?}");
    // stdin, env and working directory.
    let req = ExecRequest {
        session_id: s.session_id.clone(),
        command: "cat; printf \"$GREETING\"; pwd".into(),
        stdin: b"from-stdin;".to_vec().into(),
        env: [("GREETING".to_string(), "hi;".to_string())].into(),
        working_directory: "/tmp".into(),
        timeout_ms: 10_000,
        ..Default::default()
    };
    let (out, _, x) = exec_collect(&mut e, req).await.unwrap();
    assert_eq!(x.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&out), "from-stdin;hi;/tmp\n");
}

#[tokio::test]
async fn exec_timeout_kills_the_process_tree() {
    let s = stack("alpha-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let started = Instant::now();
    let (out, _, x) = exec_collect(
        &mut e,
        exec_req(
            &s.session_id,
            "sleep 100 & echo $!; echo partial; wait",
            700,
        ),
    )
    .await
    .unwrap();
    assert!(x.timed_out, "{x:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(
        text.contains("partial"),
        "output captured before the timeout is kept: {text:?}"
    );
    let grandchild: i32 = text.lines().next().unwrap().trim().parse().unwrap();
    wait_gone(
        grandchild,
        Duration::from_secs(3),
        "the timeout (a background child)",
    )
    .await;
}

#[tokio::test]
async fn exec_cancelled_by_the_caller_kills_the_process() {
    let s = stack("alpha-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut stream = e
        .exec(exec_req(&s.session_id, "echo $$; exec sleep 100", 0))
        .await
        .unwrap()
        .into_inner();
    let mut pid = None;
    while pid.is_none() {
        if let Some(Event::Stdout(b)) = stream.message().await.unwrap().expect("event").event {
            pid = Some(String::from_utf8_lossy(&b).trim().parse::<i32>().unwrap())
        }
    }
    drop(stream);
    let pid = pid.unwrap();
    wait_gone(pid, Duration::from_secs(3), "the cancelled call").await;
}

#[tokio::test]
async fn agent_killed_mid_call_fails_unavailable_within_a_second() {
    let mut s = stack("alpha-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut stream = e
        .exec(exec_req(&s.session_id, "echo go; sleep 5", 0))
        .await
        .unwrap()
        .into_inner();
    loop {
        if let Some(ExecEvent {
            event: Some(Event::Stdout(_)),
        }) = stream.message().await.unwrap()
        {
            break;
        }
    }
    let killed = Instant::now();
    s.agent.kill();
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(st) => break st,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        killed.elapsed() <= Duration::from_secs(1),
        "took {:?}",
        killed.elapsed()
    );

    // File calls to the gone agent also fail fast, and listings show it offline.
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    let list = t
        .list_sessions(ListSessionsRequest {
            hostname_filter: s.host.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.sessions.iter().all(|r| r.status != "connected"),
        "{:?}",
        list.sessions
    );
}

#[tokio::test]
async fn control_plane_restart_keeps_identity_and_keys() {
    let mut s = stack("alpha-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let before = machine_by_host(&mut e, &s.host).await;

    let addr = s.server.addr.clone();
    s.server.proc.kill();
    s.server = start_server(s.dir.path(), &addr, &[]);
    let mut t = terminal(&addr, Some(&s.ws.api_key)).await;
    wait_connected(&mut t, &s.host).await;
    let mut e = ext(&addr, Some(&s.ws.api_key)).await;
    let after = wait_native_exec(&mut e, &s.host).await;
    assert_eq!(before.machine_id, after.machine_id);
    let (out, _, x) = exec_collect(
        &mut e,
        ExecRequest {
            machine_id: after.machine_id,
            command: "echo back".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((out.as_slice(), x.exit_code), (&b"back\n"[..], 0));
}

#[tokio::test]
async fn the_database_keeps_up_with_a_connected_machine_s_last_seen() {
    // Heartbeat timeout 4 s: live sessions' activity is written every 2 s.
    let s = stack("seen-host", &["--heartbeat-timeout-secs", "4"]).await;
    let last_seen = || -> i64 {
        let listing = admin(s.dir.path(), &["machines", "--workspace", "alpha"]);
        let line = listing
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(s.host.as_str()))
            .unwrap_or_else(|| panic!("{} not listed: {listing}", s.host));
        line.split('\t')
            .nth(2)
            .unwrap()
            .parse()
            .expect("last_seen in ms")
    };
    let first = last_seen();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let now = last_seen();
        if now >= first + 1500 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last_seen stayed at {first} (now {now}) while the agent heartbeats every second"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn auth_errors_are_unauthenticated_and_say_what_to_do() {
    let s = stack("alpha-host", &[]).await;
    let mut none = terminal(&s.server.addr, None).await;
    let st = none
        .list_sessions(ListSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    assert!(st.message().contains("CMDOP_API_KEY"), "{}", st.message());

    let mut wrong = terminal(&s.server.addr, Some("cmdop_not-a-real-key")).await;
    assert_eq!(
        wrong
            .list_sessions(ListSessionsRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    let extra = admin(s.dir.path(), &["create-key", "--workspace", "alpha"]);
    let mut t = terminal(&s.server.addr, Some(&extra)).await;
    t.list_sessions(ListSessionsRequest::default())
        .await
        .expect("new key works");
    admin(s.dir.path(), &["revoke-key", &extra]);
    assert_eq!(
        t.list_sessions(ListSessionsRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

/// Every RPC given another workspace's session or machine answers exactly
/// as it does for an id that does not exist.
#[tokio::test]
async fn workspaces_are_walls() {
    let s = stack("alpha-host", &[]).await;
    let beta = create_workspace(s.dir.path(), "beta");
    let mut a = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let machine_id = machine_by_host(&mut a, &s.host).await.machine_id;
    let mut t = terminal(&s.server.addr, Some(&beta.api_key)).await;
    let mut e = ext(&s.server.addr, Some(&beta.api_key)).await;

    let list = t
        .list_sessions(ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.sessions.is_empty(),
        "beta sees alpha's sessions: {:?}",
        list.sessions
    );
    let r = t
        .get_session_by_hostname(GetSessionByHostnameRequest {
            hostname: s.host.clone(),
            partial_match: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.found && !r.ambiguous);

    let foreign = s.session_id.clone();
    let missing = "00000000-0000-4000-8000-000000000000".to_string();
    // Normalise a debug rendering so the two ids compare equal.
    let norm = |text: String, id: &str| text.replace(id, "<ID>");
    macro_rules! same {
        ($call:ident, $make:expr) => {{
            let make = $make;
            let x = t.$call(make(foreign.clone())).await;
            let y = t.$call(make(missing.clone())).await;
            let fx = norm(
                format!(
                    "{:?}",
                    x.as_ref()
                        .map(|r| r.get_ref())
                        .map_err(|e| (e.code(), e.message().to_string()))
                ),
                &foreign,
            );
            let fy = norm(
                format!(
                    "{:?}",
                    y.as_ref()
                        .map(|r| r.get_ref())
                        .map_err(|e| (e.code(), e.message().to_string()))
                ),
                &missing,
            );
            assert_eq!(
                fx,
                fy,
                "{} leaks another workspace's session",
                stringify!($call)
            );
            if let Err(st) = &x {
                assert_eq!(st.code(), Code::NotFound, "{}: {st:?}", stringify!($call));
            }
        }};
    }
    same!(send_input, |id: String| SendInputRequest {
        session_id: id,
        data: b"echo x\n".to_vec().into()
    });
    same!(send_resize, |id: String| SendResizeRequest {
        session_id: id,
        cols: 100,
        rows: 30
    });
    same!(send_signal, |id: String| SendSignalRequest {
        session_id: id,
        signal: 2
    });
    same!(get_output, |id: String| GetOutputRequest {
        session_id: id,
        offset: 0,
        limit: 100
    });
    same!(get_history, |id: String| GetHistoryRequest {
        session_id: id,
        limit: 10,
        offset: 0
    });
    same!(get_session_status, |id: String| GetSessionStatusRequest {
        session_id: id
    });
    same!(close_session, |id: String| CloseSessionRequest {
        session_id: id,
        ..Default::default()
    });
    same!(file_list_directory, |id: String| {
        FileListDirectoryRpcRequest {
            session_id: id,
            path: "/".into(),
            ..Default::default()
        }
    });
    same!(file_read, |id: String| FileReadRpcRequest {
        session_id: id,
        path: "/etc/hostname".into(),
        ..Default::default()
    });
    same!(file_write, |id: String| FileWriteRpcRequest {
        session_id: id,
        path: "/tmp/x".into(),
        ..Default::default()
    });
    same!(file_get_info, |id: String| FileGetInfoRpcRequest {
        session_id: id,
        path: "/".into()
    });
    same!(file_delete, |id: String| FileDeleteRpcRequest {
        session_id: id,
        path: "/tmp/x".into(),
        ..Default::default()
    });
    same!(file_create_directory, |id: String| {
        FileCreateDirectoryRpcRequest {
            session_id: id,
            path: "/tmp/x".into(),
            ..Default::default()
        }
    });

    // Extension calls.
    let x = e
        .resolve_machine(ResolveMachineRequest {
            machine_id: machine_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!x.found && x.machine.is_none());
    for req in [
        ExecRequest {
            machine_id: machine_id.clone(),
            command: "true".into(),
            ..Default::default()
        },
        ExecRequest {
            session_id: foreign.clone(),
            command: "true".into(),
            ..Default::default()
        },
    ] {
        let st = exec_collect(&mut e, req).await.unwrap_err();
        assert_eq!(st.code(), Code::NotFound, "{st:?}");
    }
    // And the session still works for its owner.
    let mut ea = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    exec_collect(&mut ea, exec_req(&foreign, "true", 5000))
        .await
        .expect("owner can still exec");
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_and_the_server_keeps_serving() {
    let s = stack("alpha-host", &[]).await;
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    let big = vec![b'x'; 2 << 20];
    match t
        .send_input(SendInputRequest {
            session_id: s.session_id.clone(),
            data: big.into(),
        })
        .await
    {
        Ok(r) => panic!("2 MiB of input accepted: {:?}", r.into_inner()),
        Err(st) => assert!(
            matches!(st.code(), Code::InvalidArgument | Code::ResourceExhausted),
            "{st:?}"
        ),
    }
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let st = exec_collect(&mut e, exec_req(&s.session_id, &"x".repeat(1 << 20), 1000))
        .await
        .unwrap_err();
    assert!(
        matches!(st.code(), Code::InvalidArgument | Code::ResourceExhausted),
        "{st:?}"
    );
    let st = exec_collect(&mut e, exec_req(&s.session_id, "", 1000))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");

    // A body that is not a valid message at all.
    let status = malformed_call(&s.server.addr, &s.ws.api_key).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Everyone else is still served.
    let list = t
        .list_sessions(ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.sessions.iter().any(|r| r.machine_hostname == s.host));
    let (out, _, _) = exec_collect(&mut e, exec_req(&s.session_id, "echo still-here", 5000))
        .await
        .unwrap();
    assert_eq!(out, b"still-here\n");
}

/// Sends raw bytes that do not decode as ListSessionsRequest (field 1 with
/// a varint where a string belongs, then a truncated field).
async fn malformed_call(addr: &str, key: &str) -> tonic::Status {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    #[derive(Default)]
    struct Raw;
    struct RawEnc;
    struct RawDec;
    impl Encoder for RawEnc {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for RawDec {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            use bytes::Buf;
            let mut v = vec![0; src.remaining()];
            src.copy_to_slice(&mut v);
            Ok(Some(v))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEnc;
        type Decoder = RawDec;
        fn encoder(&mut self) -> RawEnc {
            RawEnc
        }
        fn decoder(&mut self) -> RawDec {
            RawDec
        }
    }
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(vec![0x08, 0x96, 0x01, 0x12, 0x7f, 0x41]);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let path =
        http::uri::PathAndQuery::from_static("/terminal.TerminalStreamingService/ListSessions");
    grpc.unary(req, path, Raw)
        .await
        .expect_err("malformed body accepted")
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let s = stack("alpha-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let first = e
        .issue_token(IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.access_token.is_empty() && !first.refresh_token.is_empty());

    let mut with_access = terminal(&s.server.addr, Some(&first.access_token)).await;
    with_access
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect("access token works on official RPCs");

    let mut anon = ext(&s.server.addr, None).await;
    let second = anon
        .refresh_token(RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.refresh_token, first.refresh_token);
    let mut with_second = terminal(&s.server.addr, Some(&second.access_token)).await;
    with_second
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect("rotated access token works");

    // Reusing the first refresh token is theft: the whole family goes.
    let st = anon
        .refresh_token(RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    assert_eq!(
        with_second
            .list_sessions(ListSessionsRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let st = anon
        .refresh_token(RefreshTokenRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    // The API key itself is unaffected.
    e.server_info(ServerInfoRequest {})
        .await
        .expect("API key still works");
}

#[tokio::test]
async fn extensions_off_answers_unimplemented() {
    let s = stack("alpha-host", &["--no-extensions"]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    assert_eq!(
        e.server_info(ServerInfoRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );
    // The official path still works.
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    let h = t
        .health_check(HealthCheckRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(h.healthy);
}
