//! The control plane's Prometheus metrics: one registry per process, every
//! metric name defined here once, and small functions the rest of the code
//! calls to record what happened.
//!
//! Labels take values from fixed sets only (gRPC method paths of our .proto
//! files, gRPC codes, limit flag names, result words), never machine ids,
//! hostnames, keys or addresses, so the number of series stays bounded
//! whatever callers send. Values never carry secrets.
//!
//! `cmdop server --metrics-listen ADDR` serves [`encode`] on `/metrics`.
//! Several servers in one process (tests, `cmdop dev --cluster`) share the
//! registry.

mod layer;

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

pub(crate) use layer::MetricsLayer;

/// `method` of [`Metrics::calls`] for a path that is none of our RPCs.
pub(crate) const OTHER_METHOD: &str = "other";
/// The standard health service's methods, labelled like ours.
const HEALTH_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// A limit of `cmdop server` that refused something, named by its flag.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    ExecsPerKey,
    AttachesPerKey,
    TransfersPerKey,
    UnauthenticatedConnections,
    HandshakeTimeout,
    InflightRequestBytes,
}

impl Limit {
    fn flag(self) -> &'static str {
        match self {
            Limit::ExecsPerKey => "max-execs-per-key",
            Limit::AttachesPerKey => "max-attaches-per-key",
            Limit::TransfersPerKey => "max-transfers-per-key",
            Limit::UnauthenticatedConnections => "max-unauthenticated-connections",
            Limit::HandshakeTimeout => "handshake-timeout-secs",
            Limit::InflightRequestBytes => "max-inflight-request-mib",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    path: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    engine: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlagLabel {
    flag: &'static str,
}

/// A forwarded call: the peer replica's address (one series per replica
/// of the cluster) and the result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    peer: String,
    result: &'static str,
}

/// Where a credential check was answered: `cache` (no database
/// statement), `database`, or `outage` (the memory, the database being
/// unreachable).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

/// Every metric of the control plane.
pub(crate) struct Metrics {
    registry: Registry,
    agents_connected: Gauge,
    connections_open: Gauge,
    calls_in_flight: Family<MethodLabel, Gauge>,
    calls: Family<CallLabels, Counter>,
    exec_duration: Family<MethodLabel, Histogram>,
    stream_bytes: Family<BytesLabels, Counter>,
    forwarded: Family<ForwardLabels, Counter>,
    credential_checks: Family<SourceLabel, Counter>,
    db_statement: Family<StatementLabels, Histogram>,
    db_pool: Family<PoolLabel, Gauge>,
    auth_failures: Counter,
    limits_hit: Family<FlagLabel, Counter>,
    revocations: Counter,
    drains: Counter,
    draining: Gauge,
    scope_denials: Counter,
    audit_records: Family<ResultLabel, Counter>,
    audit_batch: Histogram,
}

fn exec_histogram() -> Histogram {
    // 5 ms to about 11 min.
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

fn statement_histogram() -> Histogram {
    // 50 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 18))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cmdop_server");
        let m = Metrics {
            agents_connected: Gauge::default(),
            connections_open: Gauge::default(),
            calls_in_flight: Family::default(),
            calls: Family::default(),
            exec_duration: Family::new_with_constructor(exec_histogram),
            stream_bytes: Family::default(),
            forwarded: Family::default(),
            credential_checks: Family::default(),
            db_statement: Family::new_with_constructor(statement_histogram),
            db_pool: Family::default(),
            auth_failures: Counter::default(),
            limits_hit: Family::default(),
            revocations: Counter::default(),
            drains: Counter::default(),
            draining: Gauge::default(),
            scope_denials: Counter::default(),
            audit_records: Family::default(),
            audit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "agents_connected",
            "Agents with a live session on this server",
            m.agents_connected.clone(),
        );
        r.register(
            "connections_open",
            "Open gRPC connections, agents' and clients' (each agent holds one), on both ports",
            m.connections_open.clone(),
        );
        r.register(
            "calls_in_flight",
            "gRPC calls in progress, by method",
            m.calls_in_flight.clone(),
        );
        r.register(
            "calls",
            "gRPC calls ended, by method and gRPC status code",
            m.calls.clone(),
        );
        r.register_with_unit(
            "exec_duration",
            "Duration of Exec calls from request to the end of the response",
            prometheus_client::registry::Unit::Seconds,
            m.exec_duration.clone(),
        );
        r.register_with_unit(
            "stream",
            "Bytes carried for calls: gRPC message bodies (in: from callers, out: to callers) \
             and Exec stdout spliced over side connections",
            prometheus_client::registry::Unit::Bytes,
            m.stream_bytes.clone(),
        );
        r.register(
            "forwarded_calls",
            "Calls forwarded to the replica that holds their machine's agent, by peer address and result",
            m.forwarded.clone(),
        );
        r.register(
            "credential_checks",
            "Credentials admitted, by where the check was answered: cache (no statement), database, \
             or outage (remembered while the database is unreachable)",
            m.credential_checks.clone(),
        );
        r.register_with_unit(
            "db_statement_duration",
            "Duration of state database statements, by engine and kind",
            prometheus_client::registry::Unit::Seconds,
            m.db_statement.clone(),
        );
        r.register(
            "db_pool_connections",
            "PostgreSQL pool connections by state (in_use, idle), as of the last checkout",
            m.db_pool.clone(),
        );
        r.register(
            "auth_failures",
            "Calls refused for a missing, unknown, revoked or expired credential",
            m.auth_failures.clone(),
        );
        r.register(
            "limits_hit",
            "Requests or connections refused by a limit, by the cmdop server flag that sets it",
            m.limits_hit.clone(),
        );
        r.register(
            "revocations",
            "Credentials found revoked or expired while they had calls open (those calls were ended)",
            m.revocations.clone(),
        );
        r.register(
            "drains",
            "Shutdown drains started (SIGTERM/SIGINT)",
            m.drains.clone(),
        );
        r.register(
            "draining",
            "1 while this server drains before stopping",
            m.draining.clone(),
        );
        r.register(
            "scope_denials",
            "Calls refused because the API key's scope does not allow the operation",
            m.scope_denials.clone(),
        );
        r.register(
            "audit_records",
            "Audit records by result: written, or failed (the store could not write the batch)",
            m.audit_records.clone(),
        );
        r.register(
            "audit_batch_records",
            "Records committed together by the audit writer (group commit)",
            m.audit_batch.clone(),
        );
        Metrics { registry, ..m }
    }
}

fn get() -> &'static Metrics {
    &METRICS
}

/// The registry in Prometheus/OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &get().registry);
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `method` label of a request path: one of our RPCs or the health
/// service's, else [`OTHER_METHOD`].
pub(crate) fn method_label(path: &str) -> &'static str {
    cmdop_proto::methods::known(path)
        .or_else(|| HEALTH_METHODS.iter().copied().find(|m| *m == path))
        .unwrap_or(OTHER_METHOD)
}

/// An agent's session started (+1) or ended (-1).
pub(crate) fn agents_connected(delta: i64) {
    get().agents_connected.inc_by(delta);
}

/// A connection was accepted (+1) or closed (-1).
pub(crate) fn connections_open(delta: i64) {
    get().connections_open.inc_by(delta);
}

/// A limit refused something.
pub(crate) fn limit_hit(limit: Limit) {
    get()
        .limits_hit
        .get_or_create(&FlagLabel { flag: limit.flag() })
        .inc();
}

/// A credential with open calls was found revoked or expired (its calls
/// were ended).
pub(crate) fn revoked() {
    get().revocations.inc();
}

/// A shutdown drain started (`true`) or ended (`false`).
pub(crate) fn draining(on: bool) {
    let m = get();
    if on {
        m.drains.inc();
    }
    m.draining.set(i64::from(on));
}

/// A key's scope refused a call.
pub(crate) fn scope_denied() {
    get().scope_denials.inc();
}

/// The audit writer committed `n` records (`ok`) or failed to.
pub(crate) fn audit_batch(n: usize, ok: bool) {
    let m = get();
    let result = if ok { "written" } else { "failed" };
    m.audit_records
        .get_or_create(&ResultLabel { result })
        .inc_by(n as u64);
    if ok {
        m.audit_batch.observe(n as f64);
    }
}

/// A forwarded call's result: `forwarded` (the owner answered) or
/// `failed` (it could not be sent or the owner refused it).
pub(crate) fn forwarded(peer: &str, ok: bool) {
    let result = if ok { "forwarded" } else { "failed" };
    get()
        .forwarded
        .get_or_create(&ForwardLabels {
            peer: peer.to_string(),
            result,
        })
        .inc();
}

/// A credential was admitted; `source` is `cache`, `database` or `outage`.
pub(crate) fn credential_checked(source: &'static str) {
    get()
        .credential_checks
        .get_or_create(&SourceLabel { source })
        .inc();
}

/// Exec stdout bytes spliced from an agent's side connection to a client's.
pub(crate) fn side_connection_bytes(n: u64) {
    stream_bytes("side_connection", "out", n);
}

/// Side-connection bytes this replica relayed from the replica holding
/// the agent to a client whose call it forwarded there.
pub(crate) fn side_connection_relayed_bytes(n: u64) {
    stream_bytes("side_connection_relayed", "out", n);
}

fn stream_bytes(path: &'static str, direction: &'static str, n: u64) {
    get()
        .stream_bytes
        .get_or_create(&BytesLabels { path, direction })
        .inc_by(n);
}

/// One state database statement took `took`. `kind`: query, execute, batch.
pub(crate) fn db_statement(engine: &'static str, kind: &'static str, took: Duration) {
    get()
        .db_statement
        .get_or_create(&StatementLabels { engine, kind })
        .observe(took.as_secs_f64());
}

/// The PostgreSQL pool's connections after a checkout.
pub(crate) fn db_pool(in_use: usize, idle: usize) {
    let m = get();
    let set = |state, n: usize| {
        m.db_pool
            .get_or_create(&PoolLabel { state })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    };
    set("in_use", in_use);
    set("idle", idle);
}

/// A gRPC code as the `code` label (the names gRPC's documentation uses).
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether `method` is timed in [`Metrics::exec_duration`].
fn is_exec(method: &str) -> bool {
    matches!(
        method,
        "/cmdop.ext.v1.Cmdop/Exec"
            | "/cmdop.ext.v1.Cmdop/ExecWithStdin"
            | "/cmdop.ext.v1.Cmdop/ExecFleet"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_a_fixed_list() {
        assert_eq!(
            method_label("/cmdop.ext.v1.Cmdop/Exec"),
            "/cmdop.ext.v1.Cmdop/Exec"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/cmdop.ext.v1.Cmdop/Made_Up"), OTHER_METHOD);
        assert_eq!(method_label("/x.Y/Z"), OTHER_METHOD);
    }

    #[test]
    fn encoding_names_every_family_once() {
        limit_hit(Limit::ExecsPerKey);
        let text = encode();
        assert!(
            text.contains("cmdop_server_limits_hit_total{flag=\"max-execs-per-key\"}"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE cmdop_server_drains counter"),
            "{text}"
        );
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let all = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(
            types.len(),
            all,
            "a metric family is registered twice: {text}"
        );
    }
}
