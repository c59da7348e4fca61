//! The operator's view: a real Prometheus scrapes a real server and agent
//! (`--metrics-listen`) while commands run, and its PromQL answers match
//! what happened; the gRPC health service and `/readyz` follow a drain and
//! a database outage.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cmdop_proto::ext::{exec_event::Event, ExecRequest};
use common::{
    create_workspace, enroll_token, exec_req, ext, listen_addr_outside_ephemeral_range,
    start_agent, start_server, terminal, unique, wait_connected, wait_native_exec, Proc,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// `GET path` on `addr` over plain HTTP/1.0: (status code, body).
async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of one test, killed on drop.
struct Prometheus {
    _proc: Proc,
    addr: String,
}

impl Prometheus {
    /// Starts Debian's `prometheus` on loopback, scraping `targets` (job
    /// name, address) every second.
    fn start(dir: &Path, targets: &[(&str, &str)]) -> Prometheus {
        let have = Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            have,
            "the `prometheus` binary is missing: run scripts/deps.sh (it installs Debian's \
             prometheus package with apt-get install prometheus)"
        );
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let addr = listen_addr_outside_ephemeral_range();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            _proc: Proc(child),
            addr,
        }
    }

    /// The value of an instant PromQL query that yields one sample; `None`
    /// while it yields none (not scraped yet) or Prometheus is not up yet.
    async fn value(&self, query: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", percent_encode(query));
        let (status, body) = http_get(&self.addr, &path).await.ok()?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        assert!(
            result.len() <= 1,
            "{query} should yield at most one series: {body}"
        );
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Every series of our metrics, as Prometheus stores them (JSON).
    async fn all_series(&self) -> String {
        let path = format!(
            "/api/v1/series?{}",
            percent_encode_pair("match[]", "{__name__=~\"cmdop_.+\"}")
        );
        let (status, body) = http_get(&self.addr, &path).await.expect("series");
        assert_eq!(status, 200, "series query: {body}");
        body
    }

    /// Waits until `query` yields `want`; fails naming the last value.
    async fn wait_for(&self, query: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.value(query).await;
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {query} is {got:?}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn percent_encode_pair(key: &str, value: &str) -> String {
    format!("{}={}", percent_encode(key), percent_encode(value))
}

/// Runs `command` to its end; returns its exit code.
async fn run(e: &mut common::Ext, request: ExecRequest) -> i32 {
    let mut stream = e.exec(request).await.expect("Exec").into_inner();
    let mut code = None;
    while let Some(ev) = stream.message().await.expect("exec events") {
        if let Some(Event::Exit(exit)) = ev.event {
            code = Some(exit.exit_code);
        }
    }
    code.expect("an exit event")
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_server_and_agent_and_counts_every_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_metrics = listen_addr_outside_ephemeral_range();
    let agent_metrics = listen_addr_outside_ephemeral_range();
    let server = start_server(
        dir.path(),
        "127.0.0.1:0",
        &["--metrics-listen", &server_metrics],
    );
    let ws = create_workspace(dir.path(), "alpha");
    let host = unique("metrics");
    let token = enroll_token(dir.path(), "alpha");
    let _agent = start_agent(
        &server.addr,
        Some(&token),
        &dir.path().join("agent.json"),
        &host,
        &["--heartbeat-secs", "1", "--metrics-listen", &agent_metrics],
    );
    let mut t = terminal(&server.addr, Some(&ws.api_key)).await;
    let session_id = wait_connected(&mut t, &host).await;
    let mut e = ext(&server.addr, Some(&ws.api_key)).await;
    let machine = wait_native_exec(&mut e, &host).await;
    let prom = Prometheus::start(
        dir.path(),
        &[
            ("cmdop-server", server_metrics.as_str()),
            ("cmdop-agent", agent_metrics.as_str()),
        ],
    );
    prom.wait_for("up{job=\"cmdop-server\"}", 1.0).await;
    prom.wait_for("up{job=\"cmdop-agent\"}", 1.0).await;
    prom.wait_for("cmdop_server_agents_connected", 1.0).await;
    prom.wait_for("cmdop_agent_connected", 1.0).await;

    // A long command is seen running by both, then not once cancelled.
    let mut long = e
        .exec(exec_req(&session_id, "sleep 120", 0))
        .await
        .expect("Exec")
        .into_inner();
    prom.wait_for("cmdop_agent_commands_running", 1.0).await;
    prom.wait_for(
        "cmdop_server_calls_in_flight{method=\"/cmdop.ext.v1.Cmdop/Exec\"}",
        1.0,
    )
    .await;
    let first = long.message().await.expect("exec events").expect("first");
    assert!(matches!(first.event, Some(Event::Started(_))), "{first:?}");
    drop(long);
    prom.wait_for("cmdop_agent_commands_running", 0.0).await;

    // Seven commands, three of them failing: every one is counted once.
    for i in 0..7 {
        let command = if i % 2 == 1 { "exit 3" } else { "echo ok" };
        let code = run(&mut e, exec_req(&session_id, command, 10_000)).await;
        assert_eq!(code, if i % 2 == 1 { 3 } else { 0 });
    }
    // Plus the cancelled one: eight Exec calls, the last seven ended OK
    // (a command's exit code is not the call's status).
    prom.wait_for(
        "cmdop_server_calls_total{method=\"/cmdop.ext.v1.Cmdop/Exec\",code=\"OK\"}",
        7.0,
    )
    .await;
    prom.wait_for(
        "sum(cmdop_server_calls_total{method=\"/cmdop.ext.v1.Cmdop/Exec\"})",
        8.0,
    )
    .await;
    prom.wait_for(
        "cmdop_server_exec_duration_seconds_count{method=\"/cmdop.ext.v1.Cmdop/Exec\"}",
        8.0,
    )
    .await;
    prom.wait_for("cmdop_agent_spawn_duration_seconds_count", 8.0)
        .await;
    let out = prom
        .value("cmdop_server_stream_bytes_total{path=\"grpc\",direction=\"out\"}")
        .await
        .expect("bytes sent are counted");
    assert!(out > 0.0, "{out}");
    // The key was checked in the database once, then answered from the
    // credential cache.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cached = prom
            .value("cmdop_server_credential_checks_total{source=\"cache\"}")
            .await;
        let checked = prom
            .value("cmdop_server_credential_checks_total{source=\"database\"}")
            .await;
        if cached.is_some_and(|v| v > 0.0) && checked.is_some_and(|v| v >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "credential checks: cache {cached:?}, database {checked:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A call without a key: one auth failure, counted under its method.
    let mut anon = ext(&server.addr, None).await;
    let err = anon
        .exec(exec_req(&session_id, "true", 1000))
        .await
        .expect_err("Exec without a key");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    prom.wait_for("cmdop_server_auth_failures_total", 1.0).await;
    prom.wait_for(
        "cmdop_server_calls_total{method=\"/cmdop.ext.v1.Cmdop/Exec\",code=\"UNAUTHENTICATED\"}",
        1.0,
    )
    .await;
    // A made-up method is counted under "other", never under its path.
    let made_up = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(made_up);
    raw.ready().await.expect("ready");
    let made_up_path = "/cmdop.ext.v1.Cmdop/NoSuchMethodAtAll";
    let err = raw
        .unary::<(), (), _>(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static(made_up_path),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("a made-up method fails");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    prom.wait_for("cmdop_server_auth_failures_total", 2.0).await;

    // No label of any series names the machine, its id, the key or the
    // made-up path.
    let series = prom.all_series().await;
    for secret in [
        host.as_str(),
        machine.machine_id.as_str(),
        ws.api_key.as_str(),
        "NoSuchMethodAtAll",
    ] {
        assert!(
            !series.contains(secret),
            "a series names {secret}: {series}"
        );
    }
    assert!(
        series.contains("cmdop_server_db_statement_duration_seconds_count"),
        "database statements are timed: {series}"
    );
}

/// The overall status of the health service at `addr`, without a key.
async fn health_check(addr: &str) -> Result<ServingStatus, tonic::Status> {
    let mut h = HealthClient::new(common::channel(addr).await);
    let resp = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(resp.into_inner().status())
}

async fn wait_ready(metrics: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = http_get(metrics, "/readyz").await.map(|(s, _)| s).ok();
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz answers {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_service_and_readyz_report_not_serving_while_draining() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = listen_addr_outside_ephemeral_range();
    let mut server = start_server(
        dir.path(),
        "127.0.0.1:0",
        &["--metrics-listen", &metrics, "--shutdown-grace-secs", "60"],
    );
    let ws = create_workspace(dir.path(), "alpha");
    let host = unique("health");
    let token = enroll_token(dir.path(), "alpha");
    let _agent = start_agent(
        &server.addr,
        Some(&token),
        &dir.path().join("agent.json"),
        &host,
        &["--heartbeat-secs", "1"],
    );
    let mut t = terminal(&server.addr, Some(&ws.api_key)).await;
    let session_id = wait_connected(&mut t, &host).await;
    let mut e = ext(&server.addr, Some(&ws.api_key)).await;
    wait_native_exec(&mut e, &host).await;

    // Without a key: the health service answers, nothing else does.
    assert_eq!(
        health_check(&server.addr).await.expect("Check"),
        ServingStatus::Serving
    );
    let mut anon = ext(&server.addr, None).await;
    let err = anon
        .server_info(cmdop_proto::ext::ServerInfoRequest::default())
        .await
        .expect_err("ServerInfo without a key");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // A service the server does not have is not served either.
    let mut other = tonic::client::Grpc::new(common::channel(&server.addr).await);
    other.ready().await.expect("ready");
    let err = other
        .unary::<(), (), _>(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("an unknown service fails");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert_eq!(http_get(&metrics, "/readyz").await.expect("readyz").0, 200);
    assert_eq!(
        http_get(&metrics, "/healthz").await.expect("healthz").0,
        200
    );

    // A load balancer's watch, opened before the drain.
    let mut h = HealthClient::new(common::channel(&server.addr).await);
    let mut watch = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Watch")
        .into_inner();
    let first = watch.message().await.expect("watch").expect("first status");
    assert_eq!(first.status(), ServingStatus::Serving);

    // A running command keeps the drain going after SIGTERM.
    let mut running = e
        .exec(exec_req(&session_id, "sleep 30", 0))
        .await
        .expect("Exec")
        .into_inner();
    let started = running.message().await.expect("exec").expect("first");
    assert!(
        matches!(started.event, Some(Event::Started(_))),
        "{started:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.proc.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let next = watch.message().await.expect("watch").expect("next status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    wait_ready(&metrics, 503).await;
    // Still alive: it is finishing the command.
    assert_eq!(
        http_get(&metrics, "/healthz").await.expect("healthz").0,
        200
    );
    drop(running);
    server.proc.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_database_past_its_outage_grace() {
    let mut pg = common::postgres::Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = listen_addr_outside_ephemeral_range();
    let server = common::server_pg(
        &url,
        dir.path(),
        &["--metrics-listen", &metrics, "--db-outage-grace-secs", "1"],
    );
    assert_eq!(
        health_check(&server.addr).await.expect("Check"),
        ServingStatus::Serving
    );
    wait_ready(&metrics, 200).await;

    pg.stop();
    wait_ready(&metrics, 503).await;
    assert_eq!(
        health_check(&server.addr).await.expect("Check"),
        ServingStatus::NotServing
    );

    pg.start_again();
    wait_ready(&metrics, 200).await;
    assert_eq!(
        health_check(&server.addr).await.expect("Check"),
        ServingStatus::Serving
    );
}

#[test]
fn metrics_beyond_loopback_need_tls_or_allow_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(common::cmdop_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--metrics-listen", "0.0.0.0:0"])
        .output()
        .expect("run cmdop server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-listen") && err.contains("--allow-plaintext"),
        "{err}"
    );
    let out = Command::new(common::cmdop_bin())
        .args(["agent", "--metrics-listen", "0.0.0.0:0"])
        .output()
        .expect("run cmdop agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-allow-remote"), "{err}");
}
