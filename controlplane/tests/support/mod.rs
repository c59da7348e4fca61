//! Test harness: a real control plane on 127.0.0.1:0 with a temp data
//! directory, and a scripted agent that speaks the real agent protocol.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use cmdop_controlplane::{store::Store, ServerConfig};
use cmdop_proto::{
    ext::{
        agent_downlink, agent_link_client::AgentLinkClient, agent_uplink,
        cmdop_client::CmdopClient, AgentDownlink, AgentHello, AgentUplink, EnrollRequest, ExecExit,
        ExecFinished, ExecOutput,
    },
    terminal::{
        agent_message, control_message, file_operation_request::Operation, file_operation_result,
        terminal_streaming_service_client::TerminalStreamingServiceClient, AgentMessage,
        ControlMessage, FileListDirectoryResult, FileOperationResult, FileReadResult,
        HeartbeatUpdate, RegisterRequest, StreamFileEntry, TerminalOutput,
    },
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Request};

/// A running control plane.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Credentials created before the server starts.
pub struct Tenant {
    pub workspace_id: String,
    pub api_key: String,
}

impl TestServer {
    pub async fn start(dir: tempfile::TempDir, extensions: bool) -> TestServer {
        Self::start_with(dir, extensions, Duration::from_secs(20)).await
    }

    pub async fn start_with(
        dir: tempfile::TempDir,
        extensions: bool,
        heartbeat_timeout: Duration,
    ) -> TestServer {
        let config = ServerConfig {
            extensions,
            heartbeat_timeout,
            ..ServerConfig::default()
        };
        Self::start_configured(dir, config).await
    }

    /// Starts a control plane with `config`, keeping its state in `dir`.
    pub async fn start_configured(dir: tempfile::TempDir, config: ServerConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            ..config
        };
        let task = tokio::spawn(cmdop_controlplane::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Creates a workspace with an API key (works while the server runs: WAL).
    pub fn tenant(&self, name: &str) -> Tenant {
        let store = Store::open(self.dir.path()).expect("open store");
        let ws = store.create_workspace(name).expect("workspace");
        Tenant {
            api_key: store.create_api_key(&ws.id, "test").expect("key"),
            workspace_id: ws.id,
        }
    }

    pub fn enrollment_token(&self, tenant: &Tenant) -> String {
        Store::open(self.dir.path())
            .expect("open store")
            .create_enrollment_token(&tenant.workspace_id)
            .expect("token")
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// Stops the server and returns its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops in time")
                .expect("server task")
                .expect("server result");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

/// A request carrying `authorization: Bearer <credential>`.
pub fn authed<T>(msg: T, credential: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().expect("header"),
    );
    req
}

/// Identity handed out by Enroll.
#[derive(Clone)]
pub struct AgentIdentity {
    pub machine_id: String,
    pub secret: String,
}

pub async fn enroll(channel: Channel, token: &str, hostname: &str) -> AgentIdentity {
    let resp = AgentLinkClient::new(channel)
        .enroll(EnrollRequest {
            enrollment_token: token.into(),
            hostname: hostname.into(),
        })
        .await
        .expect("enroll")
        .into_inner();
    AgentIdentity {
        machine_id: resp.machine_id,
        secret: resp.agent_secret,
    }
}

/// What most tests start from: a running control plane with extensions, its
/// workspace "acme" and a channel to it.
pub struct Fixture {
    pub server: TestServer,
    pub tenant: Tenant,
    pub channel: Channel,
}

impl Fixture {
    /// Starts a control plane with extensions on and creates the workspace "acme".
    pub async fn start() -> Fixture {
        Self::around(TestServer::start(tempfile::tempdir().expect("tempdir"), true).await).await
    }

    /// Like [`Fixture::start`], with agents marked offline after `heartbeat_timeout` of silence.
    pub async fn start_with_heartbeat_timeout(heartbeat_timeout: Duration) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::around(TestServer::start_with(dir, true, heartbeat_timeout).await).await
    }

    /// Creates the workspace "acme" on `server` and opens a channel to it.
    async fn around(server: TestServer) -> Fixture {
        let tenant = server.tenant("acme");
        let channel = server.channel().await;
        Fixture {
            server,
            tenant,
            channel,
        }
    }

    /// The API key of the workspace "acme".
    pub fn key(&self) -> &str {
        &self.tenant.api_key
    }

    /// Enrolls a machine named `hostname` in "acme" with a fresh enrollment token.
    pub async fn enroll(&self, hostname: &str) -> AgentIdentity {
        let token = self.server.enrollment_token(&self.tenant);
        enroll(self.channel.clone(), &token, hostname).await
    }

    /// Connects a scripted agent for the enrolled machine `id` (see [`TestAgent::connect`]).
    pub async fn connect(
        &self,
        id: &AgentIdentity,
        hostname: &str,
        session_id: &str,
        native_exec: bool,
    ) -> TestAgent {
        TestAgent::connect(self.channel.clone(), id, hostname, session_id, native_exec).await
    }

    /// Enrolls a machine named `hostname` and connects a scripted agent for it.
    pub async fn agent(
        &self,
        hostname: &str,
        session_id: &str,
        native_exec: bool,
    ) -> (AgentIdentity, TestAgent) {
        let id = self.enroll(hostname).await;
        let agent = self.connect(&id, hostname, session_id, native_exec).await;
        (id, agent)
    }

    /// A client of the terminal service over the fixture's channel.
    pub fn terminal(&self) -> TerminalStreamingServiceClient<Channel> {
        TerminalStreamingServiceClient::new(self.channel.clone())
    }

    /// A client of the Cmdop extension service over the fixture's channel.
    pub fn cmdop(&self) -> CmdopClient<Channel> {
        CmdopClient::new(self.channel.clone())
    }

    /// Closes the channel, stops the server and starts a new one on the same data.
    pub async fn restart(self, extensions: bool) -> Fixture {
        let Fixture {
            server,
            tenant,
            channel,
        } = self;
        drop(channel);
        let server = TestServer::start(server.stop().await, extensions).await;
        let channel = server.channel().await;
        Fixture {
            server,
            tenant,
            channel,
        }
    }

    /// Stops the server (the channel closes after it).
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// A scripted agent: echoes input as output, answers file operations
/// (never answering reads of "/slow"), and serves exec over Channel
/// (commands starting with "hang" never finish).
pub struct TestAgent {
    pub session_id: String,
    pub cancels: mpsc::UnboundedReceiver<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestAgent {
    pub async fn connect(
        channel: Channel,
        id: &AgentIdentity,
        hostname: &str,
        session_id: &str,
        native_exec: bool,
    ) -> TestAgent {
        let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(64);
        out_tx
            .send(AgentMessage {
                session_id: session_id.into(),
                payload: Some(agent_message::Payload::Register(RegisterRequest {
                    version: "cmdop-agent/test".into(),
                    hostname: hostname.into(),
                    platform: "linux".into(),
                    supported_shells: vec!["/bin/sh".into()],
                    has_shell: true,
                    device_id: id.machine_id.clone(),
                    home_dir: "/home/test".into(),
                    agent_capabilities: if native_exec {
                        vec!["cmdop.exec.v1".into()]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .expect("queue register");
        let mut inbound = TerminalStreamingServiceClient::new(channel.clone())
            .max_decoding_message_size(cmdop_proto::limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cmdop_proto::limits::MAX_MESSAGE_BYTES)
            .connect_terminal(authed(ReceiverStream::new(out_rx), &id.secret))
            .await
            .expect("connect terminal")
            .into_inner();
        let first = inbound
            .message()
            .await
            .expect("first control message")
            .expect("stream open");
        let Some(control_message::Payload::StartSession(start)) = first.payload else {
            panic!("expected start_session, got {first:?}")
        };
        let session_id = start.config.expect("config").session_id;
        let mut tasks = vec![tokio::spawn(serve_terminal(
            inbound,
            out_tx,
            session_id.clone(),
        ))];
        let (cancel_tx, cancels) = mpsc::unbounded_channel();
        if native_exec {
            tasks.push(open_channel(channel, id, &session_id, cancel_tx).await);
        }
        TestAgent {
            session_id,
            cancels,
            tasks,
        }
    }

    /// True once the server has ended this agent's ConnectTerminal stream.
    pub async fn finished(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.tasks.first().is_some_and(|t| t.is_finished()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Drops the agent's streams, as if its process died.
    pub fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve_terminal(
    mut inbound: tonic::Streaming<ControlMessage>,
    out: mpsc::Sender<AgentMessage>,
    session_id: String,
) {
    let msg = |payload| AgentMessage {
        session_id: session_id.clone(),
        payload: Some(payload),
        ..Default::default()
    };
    while let Ok(Some(ctl)) = inbound.message().await {
        let reply = match ctl.payload {
            Some(control_message::Payload::Input(input)) => {
                Some(msg(agent_message::Payload::Output(TerminalOutput {
                    data: input.data,
                    ..Default::default()
                })))
            }
            Some(control_message::Payload::Ping(_)) => Some(msg(
                agent_message::Payload::Heartbeat(HeartbeatUpdate::default()),
            )),
            Some(control_message::Payload::FileOperation(req)) => {
                file_answer(req.request_id, req.operation)
                    .map(|r| msg(agent_message::Payload::FileOperationResult(r)))
            }
            _ => None,
        };
        if let Some(reply) = reply {
            if out.send(reply).await.is_err() {
                return;
            }
        }
    }
}

fn file_answer(request_id: String, op: Option<Operation>) -> Option<FileOperationResult> {
    let ok = |result| FileOperationResult {
        request_id: request_id.clone(),
        success: true,
        result,
        ..Default::default()
    };
    Some(match op? {
        Operation::ListDirectory(l) => ok(Some(file_operation_result::Result::ListDirectory(
            FileListDirectoryResult {
                current_path: l.path.clone(),
                entries: vec![StreamFileEntry {
                    name: "a.txt".into(),
                    path: format!("{}/a.txt", l.path),
                    size: 3,
                    ..Default::default()
                }],
                total_count: 1,
                ..Default::default()
            },
        ))),
        Operation::ReadFile(r) if r.path == "/slow" => return None,
        Operation::ReadFile(r) if r.path == "/missing" => FileOperationResult {
            request_id,
            success: false,
            error_code: "NOT_FOUND".into(),
            error_message: "no such file: /missing".into(),
            ..Default::default()
        },
        Operation::ReadFile(_) => ok(Some(file_operation_result::Result::ReadFile(
            FileReadResult {
                content: Bytes::from_static(b"abc"),
                total_size: 3,
                ..Default::default()
            },
        ))),
        // Success without a result: the server must still fill one in.
        _ => ok(None),
    })
}

/// Opens machine `id`'s AgentLink Channel with a Hello announcing
/// `capabilities`; returns the uplink sender and the downlink stream.
pub async fn open_agent_link(
    channel: Channel,
    id: &AgentIdentity,
    session_id: &str,
    capabilities: &[&str],
) -> (mpsc::Sender<AgentUplink>, tonic::Streaming<AgentDownlink>) {
    let (up_tx, up_rx) = mpsc::channel::<AgentUplink>(64);
    up_tx
        .send(AgentUplink {
            msg: Some(agent_uplink::Msg::Hello(AgentHello {
                session_id: session_id.into(),
                agent_version: "test".into(),
                capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            })),
        })
        .await
        .expect("queue hello");
    let down = AgentLinkClient::new(channel)
        .channel(authed(ReceiverStream::new(up_rx), &id.secret))
        .await
        .expect("open channel")
        .into_inner();
    (up_tx, down)
}

async fn open_channel(
    channel: Channel,
    id: &AgentIdentity,
    session_id: &str,
    cancels: mpsc::UnboundedSender<String>,
) -> JoinHandle<()> {
    let (up_tx, mut down) = open_agent_link(channel, id, session_id, &[]).await;
    tokio::spawn(async move {
        while let Ok(Some(msg)) = down.message().await {
            match msg.msg {
                Some(agent_downlink::Msg::Start(start)) if start.command.starts_with("hang") => {}
                Some(agent_downlink::Msg::Start(start)) => {
                    let out = |data: &str, is_stderr| AgentUplink {
                        msg: Some(agent_uplink::Msg::Output(ExecOutput {
                            exec_id: start.exec_id.clone(),
                            data: Bytes::copy_from_slice(data.as_bytes()),
                            is_stderr,
                        })),
                    };
                    let _ = up_tx
                        .send(out(&format!("ran {}", start.command), false))
                        .await;
                    let _ = up_tx
                        .send(out(&String::from_utf8_lossy(&start.stdin), true))
                        .await;
                    let _ = up_tx
                        .send(AgentUplink {
                            msg: Some(agent_uplink::Msg::Finished(ExecFinished {
                                exec_id: start.exec_id.clone(),
                                exit: Some(ExecExit {
                                    exit_code: 3,
                                    duration_us: 10,
                                    ..Default::default()
                                }),
                                pid: 42,
                            })),
                        })
                        .await;
                }
                Some(agent_downlink::Msg::Cancel(c)) => {
                    let _ = cancels.send(c.exec_id);
                }
                _ => {}
            }
        }
    })
}
