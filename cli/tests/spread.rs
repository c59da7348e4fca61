//! Spread over replicas: clients and agents that know every replica of a
//! three-replica cluster (one PostgreSQL, [`common::postgres`]) start at a
//! random one, and the clients and agents of a replica killed with
//! SIGKILL fail over to a random survivor, not all to the next in their
//! list.
//!
//! The bounds are wide enough that a fair spread fails them only by a
//! vanishing chance, and narrow enough that "everyone picks the same
//! replica" always fails them. With X the count on one replica:
//! - 200 clients starting at random over 3 replicas: X ~ Bin(200, 1/3),
//!   asserted 40 ≤ X ≤ 94 (±4 standard deviations): P(fail) = 3.4e-5 per
//!   replica, 1.0e-4 for the three.
//! - 200 clients all on the killed replica, moving to one of two: X ~
//!   Bin(200, 1/2), asserted 35–65 % (70 ≤ X ≤ 130): P(fail) = 1.4e-5.
//! - the same with the 20 agents counted in (220): 35–65 % (77 ≤ X ≤ 143):
//!   P(fail) = 5.3e-6. The 20 agents alone are too few for 35–65 %
//!   (Bin(20, 1/2) leaves it 11.5 % of the time), so each survivor must get
//!   at least 2 of them: P(fail) = 4.0e-5.
//!
//! Together: a correct build fails this test about once in 6,000 runs.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use cmdop::client::{Client, ClientOptions, Credentials};
use common::{
    postgres::{self, Postgres},
    *,
};

const PEER_SECRET: &str = "spread-test-peer-secret-0123456789abcdef";
const CLIENTS: usize = 200;
const AGENTS: usize = 20;

fn start_replica(url: &str, dir: &Path, id: &str) -> Server {
    server_pg_env(
        url,
        &[("CMDOP_PEER_SECRET", PEER_SECRET)],
        dir,
        &[
            "--peer-listen",
            "127.0.0.1:0",
            "--replica-id",
            id,
            "--keepalive-secs",
            "2",
        ],
    )
}

/// `replica_id → number of routes` of the route table.
fn routes_by_replica(pg: &Postgres) -> HashMap<String, usize> {
    pg.psql(
        postgres::DATABASE,
        "SELECT replica_id, COUNT(*) FROM routes WHERE replica_id <> '' GROUP BY replica_id",
    )
    .lines()
    .filter_map(|l| l.split_once('|'))
    .map(|(r, n)| (r.trim().to_string(), n.trim().parse().unwrap_or(0)))
    .collect()
}

/// `CLIENTS` connected library clients with every replica in `servers`.
async fn clients(servers: &[String], key: &str, in_order: bool) -> Vec<Client> {
    let mut out = Vec::with_capacity(CLIENTS);
    for batch in 0..CLIENTS / 20 {
        let opened = futures::future::join_all((0..20).map(|_| async {
            let mut opts = ClientOptions::local("127.0.0.1", 1);
            opts.servers = servers.to_vec();
            opts.servers_in_order = in_order;
            opts.credentials = Credentials::ApiKey(key.to_string());
            opts.timeout = Duration::from_secs(20);
            // Back within a second or two after the kill.
            opts.reconnect_delay = Duration::from_millis(500);
            let c = Client::new(opts).expect("client");
            c.open().await.expect("connect");
            c
        }))
        .await;
        out.extend(opened);
        assert_eq!(out.len(), (batch + 1) * 20);
    }
    out
}

/// How many of `clients` use each server (as its URL).
async fn clients_by_server(clients: &[Client]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for c in clients {
        *count.entry(c.connection_info().await.server).or_default() += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_and_agents_spread_over_the_replicas_and_over_the_survivors_of_a_kill() {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = ["rep_a", "rep_b", "rep_c"];
    let mut replicas: Vec<Server> = ids
        .iter()
        .map(|id| start_replica(&url, dir.path(), id))
        .collect();
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("http://{}", r.addr))
        .collect();
    let ws = create_workspace_pg(&url, "alpha");

    // Random start: each replica gets about a third.
    let spread = clients(&urls, &ws.api_key, false).await;
    let count = clients_by_server(&spread).await;
    eprintln!("{CLIENTS} clients starting at random: {count:?}");
    for u in &urls {
        let n = count.get(u).copied().unwrap_or(0);
        assert!(
            (40..=94).contains(&n),
            "{u} got {n} of {CLIENTS}: {count:?}"
        );
    }
    for c in &spread {
        c.close().await;
    }
    drop(spread);

    // Everyone on A (their lists in order), then A is killed.
    let on_a = clients(&urls, &ws.api_key, true).await;
    let count = clients_by_server(&on_a).await;
    assert_eq!(count.get(&urls[0]).copied(), Some(CLIENTS), "{count:?}");
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let token = admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
        agents.push(start_agent(
            &replicas[0].addr,
            Some(&token),
            &dir.path().join(format!("agent-{i}.json")),
            &unique(&format!("spread{i}")),
            &[
                "--heartbeat-secs",
                "1",
                "--server",
                &urls[1],
                "--server",
                &urls[2],
                "--servers-in-order",
            ],
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while routes_by_replica(&pg).get(ids[0]).copied() != Some(AGENTS) {
        assert!(
            Instant::now() < deadline,
            "the {AGENTS} agents did not all connect to A within 60 s: {:?}",
            routes_by_replica(&pg)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    replicas[0].proc.kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    let moved_clients = loop {
        let count = clients_by_server(&on_a).await;
        if count.get(&urls[0]).copied().unwrap_or(0) == 0
            && count.values().sum::<usize>() == CLIENTS
        {
            break count;
        }
        assert!(
            Instant::now() < deadline,
            "the clients did not all leave A within 60 s: {count:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let moved_agents = loop {
        let routes = routes_by_replica(&pg);
        let survivors =
            routes.get(ids[1]).copied().unwrap_or(0) + routes.get(ids[2]).copied().unwrap_or(0);
        if survivors == AGENTS {
            break routes;
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not all move to B and C within 60 s: {routes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("after kill -9 of A: clients {moved_clients:?}, agents (routes) {moved_agents:?}");
    for (url, id) in urls.iter().zip(ids).skip(1) {
        let c = moved_clients.get(url).copied().unwrap_or(0);
        let a = moved_agents.get(id).copied().unwrap_or(0);
        assert!(
            (70..=130).contains(&c),
            "{id} got {c} of the {CLIENTS} clients: {moved_clients:?}"
        );
        assert!(
            (77..=143).contains(&(c + a)),
            "{id} got {} of the {} clients and agents",
            c + a,
            CLIENTS + AGENTS
        );
        assert!(
            a >= 2,
            "{id} got {a} of the {AGENTS} agents: {moved_agents:?}"
        );
    }
    for c in &on_a {
        c.close().await;
    }
}
