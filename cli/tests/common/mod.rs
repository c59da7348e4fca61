//! Test harness: real `cmdop server` and `cmdop agent` processes on
//! ephemeral loopback ports, each with its own temporary data dir. Every
//! process is killed when its guard drops.

#![allow(dead_code)]

pub mod postgres;
pub mod pty;
pub mod side;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cmdop_proto::{
    ext::{agent_link_client::AgentLinkClient, cmdop_client::CmdopClient},
    terminal::{
        terminal_streaming_service_client::TerminalStreamingServiceClient, ListSessionsRequest,
    },
};
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, transport::Channel,
};

pub fn cmdop_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cmdop")
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Server {
    pub proc: Proc,
    pub addr: String,
    pub data_dir: PathBuf,
}

pub fn admin(data_dir: &Path, args: &[&str]) -> String {
    admin_on(&["--data-dir".as_ref(), data_dir.as_os_str()], &[], args)
}

/// `cmdop admin STORE… ARGS…` (STORE: `--data-dir DIR` or `--database
/// URL`); its trimmed stdout.
fn admin_on(store: &[&std::ffi::OsStr], env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(cmdop_bin())
        .arg("admin")
        .args(store)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run cmdop admin");
    assert!(
        out.status.success(),
        "cmdop admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// Starts `cmdop server` on `listen` (use "127.0.0.1:0" for a fresh port).
pub fn start_server(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
    spawn_server(
        &["--data-dir".as_ref(), data_dir.as_os_str()],
        &[],
        data_dir,
        listen,
        extra,
        Duration::from_secs(20),
    )
}

/// `cmdop server STORE… --listen LISTEN EXTRA…` (STORE: `--data-dir DIR`
/// or `--database URL`), its ready file in `dir`; fails the test unless it
/// is ready within `within`.
fn spawn_server(
    store: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    dir: &Path,
    listen: &str,
    extra: &[&str],
    within: Duration,
) -> Server {
    let ready = dir.join(format!("ready-{}", rand_suffix()));
    let child = Command::new(cmdop_bin())
        .args(["--log-level", "warn", "server", "--listen", listen])
        .args(store)
        .envs(env.iter().copied())
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn cmdop server");
    let proc = Proc(child);
    let deadline = Instant::now() + within;
    loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            let addr = s.trim().to_string();
            let _ = std::fs::remove_file(&ready);
            return Server {
                proc,
                addr,
                data_dir: dir.to_path_buf(),
            };
        }
        assert!(
            Instant::now() < deadline,
            "cmdop server did not start within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rand_suffix() -> String {
    format!("{}-{:?}", std::process::id(), Instant::now())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// Starts `cmdop agent` against `addr` with its state in `state_file`.
pub fn start_agent(
    addr: &str,
    token: Option<&str>,
    state_file: &Path,
    hostname: &str,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(cmdop_bin());
    cmd.args([
        "--log-level",
        "warn",
        "agent",
        "--server",
        &format!("http://{addr}"),
        "--hostname",
        hostname,
        "--state-file",
    ])
    .arg(state_file)
    .args(extra)
    .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("CMDOP_ENROLL_TOKEN", t);
    }
    Proc(cmd.spawn().expect("spawn cmdop agent"))
}

/// One workspace with a key, on a running server.
pub struct Workspace {
    pub name: String,
    pub api_key: String,
}

pub fn create_workspace(data_dir: &Path, name: &str) -> Workspace {
    workspace_through(|args| admin(data_dir, args), name)
}

/// [`create_workspace`] in the database at `url`.
pub fn create_workspace_pg(url: &str, name: &str) -> Workspace {
    workspace_through(|args| admin_pg(url, args), name)
}

fn workspace_through(admin: impl Fn(&[&str]) -> String, name: &str) -> Workspace {
    admin(&["create-workspace", name]);
    let api_key = admin(&["create-key", "--workspace", name]);
    assert!(
        api_key.starts_with("cmdop_"),
        "API keys start with cmdop_: {api_key}"
    );
    Workspace {
        name: name.to_string(),
        api_key,
    }
}

/// Options for a library client of the loopback server at `addr`
/// ("127.0.0.1:PORT").
pub fn local_options(
    addr: &str,
    credentials: cmdop::client::Credentials,
    timeout: Duration,
) -> cmdop::client::ClientOptions {
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut opts = cmdop::client::ClientOptions::local("127.0.0.1", port);
    opts.credentials = credentials;
    opts.timeout = timeout;
    opts
}

pub fn enroll_token(data_dir: &Path, workspace: &str) -> String {
    admin(data_dir, &["enroll-token", "--workspace", workspace])
}

pub type Auth =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub type Terminal = TerminalStreamingServiceClient<InterceptedService<Channel, Auth>>;
pub type Ext = CmdopClient<InterceptedService<Channel, Auth>>;

pub async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to control plane")
}

fn auth(key: Option<String>) -> Auth {
    Box::new(move |mut req: tonic::Request<()>| {
        if let Some(k) = &key {
            let v: MetadataValue<_> = format!("Bearer {k}").parse().expect("ascii key");
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    })
}

pub async fn terminal(addr: &str, key: Option<&str>) -> Terminal {
    TerminalStreamingServiceClient::with_interceptor(
        channel(addr).await,
        auth(key.map(str::to_string)),
    )
    .max_decoding_message_size(64 << 20)
}

pub async fn ext(addr: &str, key: Option<&str>) -> Ext {
    CmdopClient::with_interceptor(channel(addr).await, auth(key.map(str::to_string)))
        .max_decoding_message_size(64 << 20)
}

pub async fn agent_link(addr: &str) -> AgentLinkClient<Channel> {
    AgentLinkClient::new(channel(addr).await)
}

/// Waits until `hostname` is listed as connected; returns its session id.
pub async fn wait_connected(t: &mut Terminal, hostname: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = t
            .list_sessions(ListSessionsRequest {
                hostname_filter: hostname.into(),
                status_filter: "connected".into(),
                limit: 50,
                offset: 0,
            })
            .await
            .expect("ListSessions")
            .into_inner();
        if let Some(s) = resp
            .sessions
            .iter()
            .find(|s| s.machine_hostname == hostname)
        {
            return s.session_id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "agent {hostname} did not connect within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True while a process with this pid exists.
pub fn pid_alive(pid: i32) -> bool {
    // kill(pid, 0) through /proc, to avoid a libc dependency in tests.
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// Waits up to `within` for process `pid` to be gone; `what` names what
/// should have ended it.
pub async fn wait_gone(pid: i32, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} survived {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the command of each of `hosts` is gone: each wrote its pid
/// to the file named after its host in `dir` (`echo $$ > DIR/HOST`).
pub async fn wait_recorded_pids_gone<'a>(
    dir: &Path,
    hosts: impl IntoIterator<Item = &'a String>,
    what: &str,
) {
    for host in hosts {
        let pid: i32 = std::fs::read_to_string(dir.join(host))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_gone(pid, Duration::from_secs(10), what).await;
    }
}

/// A server with workspace "alpha" and one connected agent.
pub struct Stack {
    // Fields drop in order: agent first, so it never logs a lost server.
    pub agent: Proc,
    pub server: Server,
    pub ws: Workspace,
    pub host: String,
    pub session_id: String,
    pub dir: tempfile::TempDir,
}

/// A name no other test of this process uses.
/// A free loopback address whose port lies below the kernel's ephemeral
/// range (32768 and up by default), for a server that must come back on its
/// old port after a long outage: while it is down, the kernel may hand an
/// ephemeral port to an outgoing connection (even the agent's own attempt,
/// connecting to itself), and the restart would fail with "address in use".
pub fn listen_addr_outside_ephemeral_range() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()) * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_micros()));
    for _ in 0..2000 {
        let port = 20000 + (seed + NEXT.fetch_add(104_729, Ordering::Relaxed)) % 12000;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
    panic!("no free loopback port in 20000-31999; stop what holds them and retry");
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts a server (with `server_flags`), workspace "alpha" and one agent
/// named `<host_prefix>-…` heartbeating every second; waits until it is
/// connected and, with extensions on, until its Channel serves native exec.
pub async fn stack(host_prefix: &str, server_flags: &[&str]) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path(), "127.0.0.1:0", server_flags);
    let ws = create_workspace(dir.path(), "alpha");
    let host = unique(host_prefix);
    let token = enroll_token(dir.path(), "alpha");
    let agent = start_agent(
        &server.addr,
        Some(&token),
        &dir.path().join("agent.json"),
        &host,
        &["--heartbeat-secs", "1"],
    );
    let mut t = terminal(&server.addr, Some(&ws.api_key)).await;
    let session_id = wait_connected(&mut t, &host).await;
    if !server_flags.contains(&"--no-extensions") {
        let mut e = ext(&server.addr, Some(&ws.api_key)).await;
        wait_native_exec(&mut e, &host).await;
    }
    Stack {
        agent,
        server,
        ws,
        host,
        session_id,
        dir,
    }
}

/// A native Exec request for `command` on `session_id`.
pub fn exec_req(session_id: &str, command: &str, timeout_ms: u32) -> cmdop_proto::ext::ExecRequest {
    cmdop_proto::ext::ExecRequest {
        session_id: session_id.into(),
        command: command.into(),
        timeout_ms,
        ..Default::default()
    }
}

/// The machine registered under exactly `hostname` (panics if none).
/// Waits until `hostname`'s agent serves native exec: its Channel attaches
/// shortly after its terminal session, on a loaded machine seconds later.
pub async fn wait_native_exec(e: &mut Ext, hostname: &str) -> cmdop_proto::ext::Machine {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = machine_by_host(e, hostname).await;
        if m.native_exec {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{hostname}'s agent did not attach its Channel (native exec) within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn machine_by_host(e: &mut Ext, hostname: &str) -> cmdop_proto::ext::Machine {
    e.resolve_machine(cmdop_proto::ext::ResolveMachineRequest {
        hostname: hostname.into(),
        ..Default::default()
    })
    .await
    .expect("ResolveMachine")
    .into_inner()
    .machine
    .expect("machine")
}

/// A library client on `s`'s workspace with its machine selected; `debug`
/// turns on its debug-level log messages.
pub async fn library_client(s: &Stack, debug: bool) -> cmdop::client::Client {
    use cmdop::client::{Client, ClientOptions, Credentials};
    let port = s
        .server
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut opts = ClientOptions::local("127.0.0.1", port);
    opts.credentials = Credentials::ApiKey(s.ws.api_key.clone());
    opts.timeout = Duration::from_secs(30);
    opts.debug = debug;
    let c = Client::new(opts).expect("client");
    c.open().await.expect("connect");
    // The Channel (and its files.v1 hello) follows ConnectTerminal closely.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = c.set_machine(&s.host).await.expect("set_machine");
        if m.native_exec || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `cmdop admin ARGS…` on database `url` (in CMDOP_DATABASE_URL, as the
/// README teaches: a password on a command line is readable by every
/// user); its trimmed stdout.
pub fn admin_pg(url: &str, args: &[&str]) -> String {
    admin_on(&[], &[("CMDOP_DATABASE_URL", url)], args)
}

/// `cmdop server` on database `url` (in CMDOP_DATABASE_URL) on a fresh
/// loopback port, its ready file in `dir`.
pub fn server_pg(url: &str, dir: &Path, extra: &[&str]) -> Server {
    server_pg_env(url, &[], dir, extra)
}

/// [`server_pg`] with more environment (secrets such as
/// CMDOP_PEER_SECRET, which never go on a command line).
pub fn server_pg_env(url: &str, env: &[(&str, &str)], dir: &Path, extra: &[&str]) -> Server {
    server_pg_env_on(url, env, dir, "127.0.0.1:0", extra)
}

/// [`server_pg_env`] listening on `listen` (a replica restarted on the
/// address its clients and agents know).
pub fn server_pg_env_on(
    url: &str,
    env: &[(&str, &str)],
    dir: &Path,
    listen: &str,
    extra: &[&str],
) -> Server {
    let mut all = vec![("CMDOP_DATABASE_URL", url)];
    all.extend_from_slice(env);
    spawn_server(&[], &all, dir, listen, extra, Duration::from_secs(30))
}

/// A CA and a server certificate for "localhost" signed by it, as PEM files
/// in `dir`: (CA, certificate, key).
pub fn make_tls_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A TLS server (`--tls-cert/--tls-key`, private CA), workspace "alpha"
/// and one agent dialing it over https with `--ca-cert`.
pub struct TlsStack {
    // Fields drop in order: agent first, so it never logs a lost server.
    pub agent: Proc,
    pub server: Server,
    pub ws: Workspace,
    pub host: String,
    /// `https://localhost:PORT`.
    pub url: String,
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TlsStack {
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// The private CA, PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("CA file")
    }
}

/// Starts a [`TlsStack`]; waits until its agent serves native exec.
pub async fn tls_stack(host_prefix: &str) -> TlsStack {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_tls_certs(dir.path());
    let server = start_server(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = server.addr.rsplit_once(':').unwrap().1.to_string();
    let ws = create_workspace(dir.path(), "alpha");
    let token = enroll_token(dir.path(), "alpha");
    let host = unique(host_prefix);
    let url = format!("https://localhost:{port}");
    let agent = Proc(
        Command::new(cmdop_bin())
            .args(["--log-level", "warn", "agent", "--server", &url])
            .args(["--hostname", &host, "--heartbeat-secs", "1"])
            .arg("--state-file")
            .arg(dir.path().join("agent.json"))
            .env("CMDOP_ENROLL_TOKEN", &token)
            .arg("--ca-cert")
            .arg(&ca)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn cmdop agent"),
    );
    let stack = TlsStack {
        agent,
        server,
        ws,
        host,
        url,
        ca,
        dir,
    };
    // The agent enrolls, connects, then attaches its Channel: on a loaded
    // machine that takes seconds.
    let mut e = ext_tls(&stack, Some(&stack.ws.api_key)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = e
            .resolve_machine(cmdop_proto::ext::ResolveMachineRequest {
                hostname: stack.host.clone(),
                ..Default::default()
            })
            .await
            .expect("ResolveMachine")
            .into_inner()
            .machine;
        if found.is_some_and(|m| m.native_exec) {
            return stack;
        }
        assert!(
            Instant::now() < deadline,
            "{}'s agent did not attach its Channel over TLS within 30 s",
            stack.host
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An extension client of `s`'s server over TLS, trusting its CA.
pub async fn ext_tls(s: &TlsStack, key: Option<&str>) -> Ext {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(s.ca_pem()))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(s.url.clone())
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("connect to the TLS control plane");
    CmdopClient::with_interceptor(channel, auth(key.map(str::to_string)))
        .max_decoding_message_size(64 << 20)
}

/// Shell that sets `h` to the agent's `--hostname` as a command sees it:
/// its parent is the agent.
pub const WHO_AM_I: &str =
    "h=$(tr '\\0' '\\n' < /proc/$PPID/cmdline | grep -A1 -x -- --hostname | tail -n 1)";

/// What one ExecFleet call reported for one machine.
#[derive(Debug, Default)]
pub struct FleetMachineEvents {
    pub machine: cmdop_proto::ext::Machine,
    pub started: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Every end event (there must be exactly one).
    pub ends: Vec<cmdop_proto::ext::exec_fleet_event::Event>,
}

impl FleetMachineEvents {
    /// The one `exit` this machine ended with.
    pub fn exit(&self) -> &cmdop_proto::ext::ExecExit {
        match self.ends.as_slice() {
            [cmdop_proto::ext::exec_fleet_event::Event::Exit(x)] => x,
            other => panic!("{}: not one exit but {other:?}", self.machine.hostname),
        }
    }

    /// The reason of the one `not_run` this machine ended with.
    pub fn not_run(&self) -> cmdop_proto::ext::exec_fleet_not_run::Reason {
        match self.ends.as_slice() {
            [cmdop_proto::ext::exec_fleet_event::Event::NotRun(n)] => n.reason(),
            other => panic!("{}: not one not_run but {other:?}", self.machine.hostname),
        }
    }
}

/// Everything an ExecFleet stream brought, by hostname, and the hostnames
/// in the order their ends came. Checks the stream's shape as it goes:
/// every `selected` before anything else, nothing of a machine before its
/// `selected` or after its end, output only after `started`.
pub async fn fleet_events(
    mut stream: tonic::Streaming<cmdop_proto::ext::ExecFleetEvent>,
) -> (
    std::collections::BTreeMap<String, FleetMachineEvents>,
    Vec<String>,
) {
    use cmdop_proto::ext::exec_fleet_event::Event;
    let mut by_id: std::collections::HashMap<String, FleetMachineEvents> = Default::default();
    let mut ended = Vec::new();
    let mut past_selection = false;
    while let Some(ev) = stream.message().await.expect("ExecFleet stream") {
        let event = ev.event.expect("an event");
        if let Event::Selected(m) = event {
            assert!(!past_selection, "a `selected` after other events");
            assert_eq!(m.machine_id, ev.machine_id);
            let prev = by_id.insert(
                ev.machine_id.clone(),
                FleetMachineEvents {
                    machine: m,
                    ..Default::default()
                },
            );
            assert!(prev.is_none(), "{} selected twice", ev.machine_id);
            continue;
        }
        past_selection = true;
        let m = by_id
            .get_mut(&ev.machine_id)
            .unwrap_or_else(|| panic!("an event of unselected {}", ev.machine_id));
        assert!(
            m.ends.is_empty(),
            "{}: an event after its end: {event:?}",
            m.machine.hostname
        );
        match event {
            Event::Started(_) => m.started = true,
            Event::Stdout(d) => {
                assert!(m.started, "output before `started`");
                m.stdout.extend_from_slice(&d)
            }
            Event::Stderr(d) => {
                assert!(m.started, "output before `started`");
                m.stderr.extend_from_slice(&d)
            }
            end => {
                ended.push(m.machine.hostname.clone());
                m.ends.push(end)
            }
        }
    }
    let all = by_id
        .into_values()
        .map(|m| {
            assert_eq!(m.ends.len(), 1, "{}: {:?}", m.machine.hostname, m.ends);
            (m.machine.hostname.clone(), m)
        })
        .collect();
    (all, ended)
}

/// Waits until replica `addr` has read the machines' admin labels into
/// their sessions (a key limited to env=staging finds the staging
/// machine's session).
pub async fn wait_labels_read(addr: &str, key: &str, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut t = terminal(addr, Some(key)).await;
    loop {
        let found = t
            .get_session_by_hostname(cmdop_proto::terminal::GetSessionByHostnameRequest {
                hostname: host.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().found)
            .unwrap_or(false);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not apply the admin label of {host} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
