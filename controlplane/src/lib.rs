//! The CMDOP control plane: a gRPC server that agents dial out to and SDK
//! clients talk to.
//!
//! It serves the official `terminal.TerminalStreamingService`, libcmdop's
//! `cmdop.ext.v1.Cmdop` (optional) and `cmdop.ext.v1.AgentLink`, keeps
//! durable state (workspaces, keys, machines, tokens) in SQLite and live
//! sessions in memory. [`serve`] runs it on a listener you bind.

mod agent_link;
pub mod audit;
mod auth;
pub mod cluster;
mod config;
mod conns;
mod db;
mod drain;
mod error_text;
mod exec_relay;
mod ext_service;
mod files;
mod fleet_exec;
mod gate;
pub mod health;
mod inventory;
mod key_use;
mod last_seen;
pub mod limits;
pub mod metrics;
#[cfg(target_os = "linux")]
mod raw;
mod recording;
mod remembered;
mod revocations;
pub mod scope;
mod selection;
pub mod sessions;
mod state;
pub mod store;
mod streams;
mod terminal_service;
mod timestamps;
mod tls;
mod transfer;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use cmdop_proto::{
    ext::{agent_link_server::AgentLinkServer, cmdop_server::CmdopServer},
    terminal::terminal_streaming_service_server::TerminalStreamingServiceServer,
};
use tonic::transport::Server;

pub use config::{ClusterConfig, Limits, ServerConfig, TlsFiles, MIN_PEER_SECRET_BYTES};

/// How long open streams get to end after agents' links were closed
/// before the server stops waiting for them.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(5);
/// Largest header block (metadata) of one call. Headers arrive before the
/// gate can look at a call, so they are capped low: credentials are at most
/// 512 bytes and gRPC metadata is small (h2's default would be 16 MiB).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Serves on `listener` until `shutdown` resolves. Binds nothing itself.
///
/// Over plaintext with extensions on, the same port also takes Exec side
/// connections (capability `exec-raw.v1`), told apart from gRPC by their
/// first byte.
///
/// Every call passes the gate ([`gate`]) first: credentials are checked
/// before a request body is read, and calls end when their credential is
/// revoked. Connections are tracked ([`conns`]) from accept to close.
///
/// On shutdown no new connections or calls are accepted on the public
/// port; agents that can move are told to connect to another control
/// plane of their list now, and running Exec calls and file transfers get
/// `config.shutdown_grace` to finish on their old links (see [`drain`]).
/// Then every agent session is closed (agents that did not move reconnect
/// to the next instance; what still ran ends with a message naming the
/// shutdown), and open calls get [`SHUTDOWN_LINGER`] more to end. The
/// peer port (cluster mode) serves until the drain is over.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = store::Store::open_at(&config.data_dir, config.database.as_deref())?;
    serve_with_store(listener, config, store, shutdown).await
}

/// Checks what [`serve`] would reject before it listens (the TLS files), so
/// a caller can do it before reporting ready.
pub fn check_config(config: &ServerConfig) -> anyhow::Result<()> {
    if let Some(files) = &config.tls {
        tls::server_tls_config(files)?;
    }
    Ok(())
}

/// [`serve`] with a store the caller opened (and migrated) already, so it
/// can report readiness only once the database is usable.
pub async fn serve_with_store(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    store: store::Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    conns::raise_fd_limit();
    let side_connections =
        raw::enabled(&config).then(|| raw::Rendezvous::new(raw::PAIRING_TIMEOUT));
    let open_streams = streams::OpenStreams::new(&config.limits);
    // Cluster mode: the peer port is bound and the lease taken before any
    // call is served.
    let (cluster, peer_listener) = match &config.cluster {
        Some(cc) => {
            if cc.peer_secret.len() < MIN_PEER_SECRET_BYTES {
                anyhow::bail!(
                    "the peer secret is shorter than {MIN_PEER_SECRET_BYTES} bytes; give every \
                     replica the same long random --peer-secret (or CMDOP_PEER_SECRET)"
                );
            }
            let listener = tokio::net::TcpListener::bind(cc.peer_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on the peer address {}; pick another with --peer-listen",
                        cc.peer_listen
                    )
                })?;
            let c = cluster::Cluster::new(cc);
            c.set_peer_addr(listener.local_addr()?.to_string());
            (Some(c), Some(listener))
        }
        None => (None, None),
    };
    let store = Arc::new(store);
    let state = Arc::new(state::State {
        store: Arc::clone(&store),
        sessions: sessions::Registry::new(config.output_buffer_bytes),
        config: config.clone(),
        side_connections: side_connections.clone(),
        selections: Default::default(),
        open_streams: open_streams.clone(),
        cluster: cluster.clone(),
        remembered: remembered::Remembered::new(
            config.db_outage_grace,
            config::credential_cache_lease(&config),
        ),
        key_uses: key_use::KeyUses::default(),
        audit: audit::Trail::start(
            Arc::clone(&store),
            config.audit,
            config
                .cluster
                .as_ref()
                .map_or_else(|| "server".to_string(), |c| c.replica_id.clone()),
        ),
    });
    if let Some(c) = &cluster {
        let (st, cl) = (state.clone(), c.clone());
        tokio::task::spawn_blocking(move || cluster::presence::tick(&st, &cl))
            .await
            .context("cluster presence task failed")?
            .context("cannot record this replica in the database")?;
        tracing::info!(replica = %c.replica_id, peer = %c.peer_addr(), "cluster replica up");
    }

    let max = limits::MAX_MESSAGE_BYTES;
    let terminal =
        TerminalStreamingServiceServer::new(terminal_service::TerminalService::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    let agent_link = AgentLinkServer::new(agent_link::AgentLinkService::new(state.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let cmdop = config.extensions.then(|| {
        CmdopServer::new(ext_service::CmdopService::new(state.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    });

    // Clients ping every 25 s even when idle; hyper's HTTP/2 server does not
    // police ping rates, so those are accepted. Our own pings detect dead
    // peers, agents' links above all, within about twice `keepalive`.
    let mut builder = server_builder(&config);
    if let Some(files) = &config.tls {
        builder = builder
            .tls_config(tls::server_tls_config(files)?.timeout(config.limits.handshake_timeout))
            .context("invalid TLS configuration")?;
    }
    let tracker = conns::Tracker::new(&config.limits);
    let peer_streams = open_streams.clone();
    let gate = gate::Gate::new(state.clone(), tracker.clone(), open_streams.clone());
    // Stops with this function (dropping a plain JoinHandle would not).
    use tokio_util::task::AbortOnDropHandle as AbortOnDrop;
    let _last_seen = AbortOnDrop::new(tokio::spawn(last_seen::run(
        state.clone(),
        last_seen::flush_interval(config.heartbeat_timeout),
    )));
    let presence = cluster
        .clone()
        .map(|c| AbortOnDrop::new(tokio::spawn(cluster::presence::run(state.clone(), c))));
    // The name this server acknowledges revocations under: its replica id
    // in a cluster, a random one otherwise.
    let server_id = cluster.as_ref().map_or_else(
        || store::secrets::random_hex("srv_", 6),
        |c| c.replica_id.clone(),
    );
    let revocation_watch = AbortOnDrop::new(tokio::spawn(revocations::watch(
        state.clone(),
        open_streams.clone(),
        config.limits.revocation_poll,
        server_id.clone(),
    )));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // Stops accepting at once (and tells connected peers with GOAWAY);
    // calls in progress, agents' links among them, go on.
    // The accept loop closes the port at the stop and says when what it
    // accepted before has been handed over; only then does the graceful
    // shutdown begin, so that no accepted connection is left unserved.
    let (handed_off_tx, mut handed_off_rx) = tokio::sync::watch::channel(false);
    let graceful = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
            let _ = tokio::time::timeout(
                raw::listener::HANDOFF_GRACE * 2,
                handed_off_rx.wait_for(|handed| *handed),
            )
            .await;
        }
    };
    let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
    tokio::spawn({
        let mut rx = stop_rx.clone();
        let state = state.clone();
        let grace = config.shutdown_grace;
        let serving = config.serving.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
            serving.draining();
            metrics::draining(true);
            drain::run(&state, &open_streams, grace).await;
            metrics::draining(false);
            let _ = drained_tx.send(true);
        }
    });
    // The peer port: the same services behind the peer gate (plaintext;
    // for a trusted network between replicas), and the side connections
    // other replicas relay for the calls they forwarded here (by ticket,
    // as on the public port: `raw::relay`). It serves through the
    // drain: calls other replicas forward for a machine whose agent is
    // moving away run on its old link until every replica has followed
    // the new route.
    let peer_server = peer_listener.map(|listener| {
        let peer_tracker = conns::Tracker::new(&config.limits);
        let peer_gate = gate::Gate::peer(state.clone(), peer_tracker.clone(), peer_streams);
        let router = server_builder(&config)
            .layer(gate::GateLayer(peer_gate))
            .add_service(terminal.clone())
            .add_optional_service(cmdop.clone());
        let mut rx = drained_rx.clone();
        let drained_port = drained_rx.clone();
        let peer_side_connections = side_connections.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|drained| *drained).await;
            };
            if let Err(err) = router
                .serve_with_incoming_shutdown(
                    raw::listener::spawn(
                        listener,
                        peer_side_connections,
                        peer_tracker,
                        drained_port,
                        None,
                    ),
                    stopped,
                )
                .await
            {
                tracing::error!(error = %err, "the peer port failed");
            }
        })
    });
    let mut peer_server = peer_server.map(AbortOnDrop::new);
    // The standard health service, for load balancers (see [`health`]).
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let _health = AbortOnDrop::new(tokio::spawn(health::report(
        config.serving.clone(),
        reporter,
    )));
    let _database_health = AbortOnDrop::new(tokio::spawn(health::watch_database(
        Arc::clone(&state.store),
        config.serving.clone(),
        config.db_outage_grace,
    )));
    // Outside the gate, so the calls it refuses are counted too.
    let router = builder
        .layer(metrics::MetricsLayer)
        .layer(gate::GateLayer(gate))
        .add_service(terminal)
        .add_service(agent_link)
        .add_service(health_service)
        .add_optional_service(cmdop);
    // Our own accept loop tracks connections and sorts side connections
    // (when on) from gRPC.
    let server = router.serve_with_incoming_shutdown(
        raw::listener::spawn(
            listener,
            side_connections,
            tracker,
            stop_rx.clone(),
            Some(handed_off_tx),
        ),
        graceful,
    );
    config.serving.listening();
    let mut drained_wait = drained_rx.clone();
    let deadline = {
        let mut rx = drained_rx;
        async move {
            let _ = rx.wait_for(|drained| *drained).await;
            tokio::time::sleep(SHUTDOWN_LINGER).await;
        }
    };
    tokio::select! {
        res = server => res.context("gRPC server failed")?,
        _ = deadline => tracing::warn!("streams still open after the shutdown grace period; stopping anyway"),
    }
    // The main port can finish first (its clients and agents gone) while
    // the drain still runs. The peer port stops taking calls once the drain
    // is over and lets those under way finish: wait for both, bounded, so
    // that a call another replica forwarded here is not cut off.
    if let Some(peer) = peer_server.as_mut() {
        let waited = tokio::time::timeout(SHUTDOWN_LINGER, async {
            let _ = drained_wait.wait_for(|drained| *drained).await;
            let _ = peer.await;
        })
        .await;
        if waited.is_err() {
            tracing::warn!("forwarded calls still open on the peer port after the shutdown grace period; stopping anyway");
        }
    }
    // No more acknowledgements: revokers stop waiting for this server.
    drop(revocation_watch);
    if state.remembered.caching() {
        let (st, id) = (state.clone(), server_id);
        match tokio::task::spawn_blocking(move || st.store.drop_revocation_ack(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %format!("{err:#}"), "cannot remove this server's revocation acknowledgement; revokers wait for its lease to run out")
            }
            Err(err) => {
                tracing::warn!(error = %err, "removing the revocation acknowledgement failed")
            }
        }
    }
    // Leaving the cluster: no more renewals, then the replica's row and
    // its routes go, so other replicas stop forwarding here at once.
    drop(presence);
    if let Some(cluster) = &cluster {
        let (st, cl) = (state.clone(), cluster.clone());
        // After any presence round under way (its spawn_blocking outlives
        // the aborted task), so the row is not written back.
        match tokio::task::spawn_blocking(move || {
            cl.leave(|| st.store.remove_replica(&cl.replica_id))
        })
        .await
        {
            Ok(Ok(())) => tracing::info!(replica = %cluster.replica_id, "left the cluster"),
            Ok(Err(err)) => {
                tracing::warn!(error = %format!("{err:#}"), "cannot remove this replica from the database; its lease expires by itself")
            }
            Err(err) => tracing::warn!(error = %err, "removing this replica failed"),
        }
    }
    Ok(())
}

/// The HTTP/2 server settings both ports use.
fn server_builder(config: &ServerConfig) -> Server {
    // Clients ping every 25 s even when idle; hyper's HTTP/2 server does not
    // police ping rates, so those are accepted. Our own pings detect dead
    // peers, agents' links above all, within about twice `keepalive`.
    let keepalive = config.keepalive.max(Duration::from_millis(100));
    Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        // Bulk output (Exec, file transfers) would stall on a round trip
        // every 64 KiB with the HTTP/2 default windows.
        .initial_stream_window_size(cmdop_proto::limits::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(cmdop_proto::limits::HTTP2_CONNECTION_WINDOW)
        .max_concurrent_streams(config.limits.max_concurrent_streams.max(1))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .tcp_nodelay(true)
}
