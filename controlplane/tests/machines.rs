//! Machine identity: hostnames belong to machines, and revoking a machine
//! or an enrollment token takes effect on a running server.

mod support;

use std::time::{Duration, Instant};

use cmdop_controlplane::store::Store;
use cmdop_proto::{
    ext::{agent_link_client::AgentLinkClient, EnrollRequest, ResolveMachineRequest},
    terminal::{
        agent_message, terminal_streaming_service_client::TerminalStreamingServiceClient,
        AgentMessage, GetSessionByHostnameRequest, RegisterRequest,
    },
};
use support::{authed, Fixture};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn by_hostname(hostname: &str) -> GetSessionByHostnameRequest {
    GetSessionByHostnameRequest {
        hostname: hostname.into(),
        partial_match: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_machine_reporting_a_hostname_makes_lookups_ambiguous() {
    let fx = Fixture::start().await;
    let (victim, _victim_agent) = fx.agent("db-1", "", true).await;
    let found = fx
        .terminal()
        .get_session_by_hostname(authed(by_hostname("db-1"), fx.key()))
        .await
        .unwrap()
        .into_inner();
    assert!(found.found, "{found:?}");

    // Another enrolled machine of the workspace claims the same name.
    let squatter = fx.enroll("laptop").await;
    let _squatter_agent = fx.connect(&squatter, "DB-1", "", true).await;

    let answer = fx
        .terminal()
        .get_session_by_hostname(authed(by_hostname("db-1"), fx.key()))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.found, "never a silent switch: {answer:?}");
    assert!(answer.ambiguous);
    assert_eq!(answer.matches_count, 2);
    assert!(answer.session_id.is_empty());
    for id in [&victim.machine_id, &squatter.machine_id] {
        assert!(answer.error.contains(id.as_str()), "{}", answer.error);
    }

    let resolved = fx
        .cmdop()
        .resolve_machine(authed(
            ResolveMachineRequest {
                hostname: "db-1".into(),
                ..Default::default()
            },
            fx.key(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!resolved.found && resolved.ambiguous, "{resolved:?}");
    let mut ids: Vec<_> = resolved
        .matches
        .iter()
        .map(|m| m.machine_id.clone())
        .collect();
    ids.sort();
    let mut want = vec![victim.machine_id.clone(), squatter.machine_id.clone()];
    want.sort();
    assert_eq!(ids, want);

    // The reported name did not overwrite the squatter's stored one.
    let store = Store::open(fx.server.dir.path()).unwrap();
    let stored = store.list_machines(&fx.tenant.workspace_id).unwrap();
    let name_of = |id: &str| {
        stored
            .iter()
            .find(|m| m.machine_id == id)
            .map(|m| m.hostname.clone())
            .unwrap()
    };
    assert_eq!(name_of(&squatter.machine_id), "laptop");
    assert_eq!(name_of(&victim.machine_id), "db-1");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_machine_closes_its_link_and_refuses_its_secret() {
    let fx = Fixture::start().await;
    let (id, agent) = fx.agent("web-1", "", true).await;
    // The admin CLI revokes from its own process, with its own connection.
    let admin = Store::open(fx.server.dir.path()).unwrap();
    let revoked_at = Instant::now();
    assert!(admin.revoke_machine(&id.machine_id).unwrap());
    assert!(
        agent.finished(Duration::from_secs(5)).await,
        "the revoked machine's stream stays open"
    );
    let took = revoked_at.elapsed();
    eprintln!("revoke-machine to stream end: {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // Reconnecting with the revoked secret is refused.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(AgentMessage {
        payload: Some(agent_message::Payload::Register(RegisterRequest {
            hostname: "web-1".into(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = TerminalStreamingServiceClient::new(fx.channel.clone())
        .connect_terminal(authed(ReceiverStream::new(rx), &id.secret))
        .await
        .expect_err("a revoked secret must not connect");
    assert_eq!(err.code(), Code::Unauthenticated);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_enrollment_tokens_are_refused() {
    let fx = Fixture::start().await;
    let store = Store::open(fx.server.dir.path()).unwrap();
    let expired = store
        .create_enrollment_token_for(&fx.tenant.workspace_id, Duration::from_secs(1))
        .unwrap();
    let revoked = store
        .create_enrollment_token(&fx.tenant.workspace_id)
        .unwrap();
    assert!(store.revoke_enrollment_token(&revoked).unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for token in [expired, revoked] {
        let err = AgentLinkClient::new(fx.channel.clone())
            .enroll(EnrollRequest {
                enrollment_token: token,
                hostname: "web-1".into(),
            })
            .await
            .expect_err("token must be refused");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains("enroll-token"), "{}", err.message());
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_calls_without_a_session_id_use_this_connections_selection() {
    use cmdop_proto::terminal::{FileDeleteRpcRequest, FileListDirectoryRpcRequest};
    let fx = Fixture::start().await;
    let (_id, _agent) = fx.agent("db-1", "", false).await;
    let list = || FileListDirectoryRpcRequest {
        path: "/var/log".into(),
        ..Default::default()
    };
    // Nothing selected on this connection yet.
    let mut picked = TerminalStreamingServiceClient::new(fx.server.channel().await);
    let err = picked
        .file_list_directory(authed(list(), fx.key()))
        .await
        .expect_err("no machine selected");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("set_machine"), "{err:?}");

    let found = picked
        .get_session_by_hostname(authed(by_hostname("db"), fx.key()))
        .await
        .unwrap()
        .into_inner();
    assert!(found.found, "{found:?}");
    let listing = picked
        .file_list_directory(authed(list(), fx.key()))
        .await
        .expect("the selected machine answers")
        .into_inner();
    assert!(listing.success);
    assert_eq!(listing.result.unwrap().current_path, "/var/log");

    // Another connection's selection does not count.
    let err = TerminalStreamingServiceClient::new(fx.server.channel().await)
        .file_list_directory(authed(list(), fx.key()))
        .await
        .expect_err("selections are per connection");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // An empty path to change is refused before it reaches the agent.
    let err = picked
        .file_delete(authed(
            FileDeleteRpcRequest {
                session_id: String::new(),
                path: String::new(),
                recursive: true,
            },
            fx.key(),
        ))
        .await
        .expect_err("empty path");
    assert_eq!(err.code(), Code::InvalidArgument);

    // A failed lookup clears the selection.
    let miss = picked
        .get_session_by_hostname(authed(by_hostname("nothing-here"), fx.key()))
        .await
        .unwrap()
        .into_inner();
    assert!(!miss.found);
    let err = picked
        .file_list_directory(authed(list(), fx.key()))
        .await
        .expect_err("selection cleared");
    assert_eq!(err.code(), Code::FailedPrecondition);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_longer_than_the_os_takes_are_refused_naming_the_limit() {
    use cmdop_proto::ext::ExecRequest;
    let fx = Fixture::start().await;
    let (_id, agent) = fx.agent("web-1", "", true).await;
    let max = cmdop_proto::limits::MAX_COMMAND_BYTES;
    // Between the OS's 128 KiB and the old 256 KiB limit.
    let err = fx
        .cmdop()
        .exec(authed(
            ExecRequest {
                session_id: agent.session_id.clone(),
                command: "x".repeat(200 * 1024),
                ..Default::default()
            },
            fx.key(),
        ))
        .await
        .expect_err("too long for the OS");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains(&max.to_string()),
        "{}",
        err.message()
    );
    fx.stop().await;
}
