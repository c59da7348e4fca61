//! Agents and clients that know several servers: two `cmdop server`
//! processes share one data directory (SQLite serves several processes) on
//! two loopback ports; an agent and a library client are given both.
//! Killing (SIGKILL) the server they use moves both to the other one: the
//! client reports on_disconnect(will_reconnect) then on_connect, and a new
//! execute succeeds there; a command in flight through the dead server ends
//! with UNAVAILABLE at once (never hangs, never resent). A list whose first server is dead from the start
//! connects to the next one.
//!
//! `CMDOP_FAILOVER_RUNS=5` repeats the kill (alternating servers) and
//! prints each time from the kill to the first successful execute.

mod common;

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cmdop::client::{Client, ClientOptions, Credentials, Event, EventKind};
use common::*;

/// An agent given every address of `servers`, preferring them in that order.
fn start_agent_on(servers: &[&str], token: &str, state_file: &Path, hostname: &str) -> Proc {
    let list: Vec<String> = servers.iter().map(|a| format!("http://{a}")).collect();
    let child = Command::new(cmdop_bin())
        .args(["--log-level", "warn", "agent", "--server"])
        .arg(list.join(","))
        .args([
            "--hostname",
            hostname,
            "--heartbeat-secs",
            "1",
            "--servers-in-order",
        ])
        .env("CMDOP_ENROLL_TOKEN", token)
        .arg("--state-file")
        .arg(state_file)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn cmdop agent");
    Proc(child)
}

/// A library client with `servers` as its list (tried in that order),
/// recording its connect and
/// disconnect events as "connect" / "disconnect(will_reconnect)" /
/// "disconnect(final)".
async fn list_client(servers: &[&str], key: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let mut opts = ClientOptions::local("127.0.0.1", 1);
    opts.servers = servers.iter().map(|s| s.to_string()).collect();
    opts.servers_in_order = true;
    opts.credentials = Credentials::ApiKey(key.to_string());
    opts.timeout = Duration::from_secs(30);
    let c = Client::new(opts).expect("client");
    let events = Arc::new(Mutex::new(Vec::new()));
    for kind in [EventKind::Connect, EventKind::Disconnect] {
        let log = Arc::clone(&events);
        c.set_event_handler(
            kind,
            Some(Box::new(move |e: &Event| {
                let what = match e {
                    Event::Connected => "connect".to_string(),
                    Event::Disconnected { final_: false, .. } => {
                        "disconnect(will_reconnect)".to_string()
                    }
                    Event::Disconnected { final_: true, .. } => "disconnect(final)".to_string(),
                    other => format!("{other:?}"),
                };
                log.lock().unwrap().push(what);
            })),
        )
        .expect("handler");
    }
    c.open().await.expect("connect through the list");
    (c, events)
}

/// A loopback address where nothing listens.
fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

/// Selects `host` (waiting for its native exec) and runs one command.
async fn echo(c: &Client, host: &str, word: &str) -> Result<(), String> {
    c.set_machine(host).await.map_err(|e| e.to_string())?;
    let out = c
        .execute(&format!("echo {word}"), Some(Duration::from_secs(20)))
        .await
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.exit_code == 0 && stdout.trim() == word {
        Ok(())
    } else {
        Err(format!("exit {} stdout {stdout:?}", out.exit_code))
    }
}

/// Retries `echo` until it succeeds; returns when it did.
async fn echo_until_ok(c: &Client, host: &str, word: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        match echo(c, host, word).await {
            Ok(()) => return Instant::now(),
            Err(e) => assert!(
                Instant::now() < deadline,
                "no successful execute within {within:?}; last error: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_events(events: &Arc<Mutex<Vec<String>>>, want: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen = events.lock().unwrap().clone();
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "events {seen:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_in_use_moves_agent_and_client_to_the_other() {
    let runs: usize = std::env::var("CMDOP_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let mut servers = [
        Some(start_server(data, "127.0.0.1:0", &[])),
        Some(start_server(data, "127.0.0.1:0", &[])),
    ];
    let addrs: Vec<String> = servers
        .iter()
        .map(|s| s.as_ref().unwrap().addr.clone())
        .collect();
    let list: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let ws = create_workspace(data, "alpha");
    let host = unique("failover");
    let token = enroll_token(data, "alpha");
    let _agent = start_agent_on(&list, &token, &data.join("agent.json"), &host);
    // The agent starts with the first server of its list.
    let mut t = terminal(&addrs[0], Some(&ws.api_key)).await;
    wait_connected(&mut t, &host).await;
    let mut e = ext(&addrs[0], Some(&ws.api_key)).await;
    wait_native_exec(&mut e, &host).await;

    let mut in_use = 0;
    let mut times = Vec::new();
    for run in 0..runs {
        // A fresh client per run: each measures a first failover. Its list
        // starts with the server the agent is on (without routing between
        // replicas, a call must land where the agent is).
        let other = 1 - in_use;
        let order = [list[in_use], list[other]];
        let (c, events) = list_client(&order, &ws.api_key).await;
        assert_eq!(
            c.connection_info().await.server,
            format!("http://{}", addrs[in_use]),
            "the client uses the first server of its list that answers"
        );
        echo_until_ok(&c, &host, "before", Duration::from_secs(30)).await;
        wait_events(&events, &["connect"], Duration::from_secs(5)).await;

        // A command in flight through the server about to die.
        let in_flight = {
            let c = c.clone();
            tokio::spawn(async move {
                let r = c.execute("sleep 30", Some(Duration::from_secs(60))).await;
                (r.map(|o| o.exit_code), Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut dead = servers[in_use].take().expect("server running");
        let killed = Instant::now();
        dead.proc.kill(); // SIGKILL
                          // It ends with UNAVAILABLE at once, never hangs, and is not moved
                          // to the other server (an execute is never sent twice).
        let (ended, at) = tokio::time::timeout(Duration::from_secs(10), in_flight)
            .await
            .expect("the call in flight ended within 10 s")
            .expect("task");
        match ended {
            Err(e) => assert_eq!(
                e.kind(),
                cmdop::client::ErrorKind::Unavailable,
                "call in flight: {e}"
            ),
            Ok(code) => panic!("the command in flight finished with {code} after its server died"),
        }
        assert!(at - killed < Duration::from_secs(5), "{:?}", at - killed);
        let ok_at = echo_until_ok(&c, &host, "after", Duration::from_secs(60)).await;
        let took = ok_at - killed;
        eprintln!(
            "failover run {}: kill -9 of {} -> first successful execute through {} after {} ms",
            run + 1,
            addrs[in_use],
            addrs[other],
            took.as_millis()
        );
        times.push(took);
        wait_events(
            &events,
            &["connect", "disconnect(will_reconnect)", "connect"],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            c.connection_info().await.server,
            format!("http://{}", addrs[other]),
            "connection info names the server now in use"
        );
        assert!(c.is_connected());
        c.close().await;

        // Bring the killed server back on its port for the next run.
        if run + 1 < runs {
            servers[in_use] = Some(start_server(data, &addrs[in_use], &[]));
            // The agent's backoff starts over once it stayed connected 10 s.
            tokio::time::sleep(Duration::from_millis(10_500)).await;
        }
        in_use = other;
    }
    let mut ms: Vec<u128> = times.iter().map(|d| d.as_millis()).collect();
    ms.sort_unstable();
    eprintln!(
        "failover: {} run(s), kill -9 to first successful execute: min {} ms, median {} ms, max {} ms",
        ms.len(),
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_whose_first_server_is_dead_connects_to_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let server = start_server(data, "127.0.0.1:0", &[]);
    let dead = dead_address();
    let list = [dead.as_str(), server.addr.as_str()];
    let ws = create_workspace(data, "alpha");
    let host = unique("deadfirst");
    let token = enroll_token(data, "alpha");
    // Enrollment and the first connection both skip the dead server.
    let _agent = start_agent_on(&list, &token, &data.join("agent.json"), &host);
    let mut t = terminal(&server.addr, Some(&ws.api_key)).await;
    wait_connected(&mut t, &host).await;
    let mut e = ext(&server.addr, Some(&ws.api_key)).await;
    wait_native_exec(&mut e, &host).await;

    let (c, events) = list_client(&list, &ws.api_key).await;
    assert_eq!(
        c.connection_info().await.server,
        format!("http://{}", server.addr)
    );
    echo(&c, &host, "second")
        .await
        .expect("execute via the second server");
    wait_events(&events, &["connect"], Duration::from_secs(5)).await;
    c.close().await;

    // The CLI: CMDOP_SERVER=dead,live.
    let out = Command::new(cmdop_bin())
        .args(["exec", "-H", &host, "echo from-the-cli"])
        .env("CMDOP_SERVER", format!("{dead},{}", server.addr))
        .env("CMDOP_API_KEY", &ws.api_key)
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop exec");
    assert!(
        out.status.success(),
        "cmdop exec with a dead first server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-the-cli");

    // Only dead servers: one clear error naming each of them.
    let other_dead = dead_address();
    let mut opts = ClientOptions::local("127.0.0.1", 1);
    opts.servers = vec![dead.clone(), other_dead.clone()];
    opts.credentials = Credentials::ApiKey(ws.api_key.clone());
    let err = Client::connect(opts)
        .await
        .err()
        .expect("no server answers");
    let msg = err.to_string();
    assert!(
        msg.contains(&dead) && msg.contains(&other_dead) && msg.contains("none of the 2 servers"),
        "{msg}"
    );
}
