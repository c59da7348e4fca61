//! [`Exec`] on PostgreSQL (tokio-postgres with a deadpool pool).
//!
//! Store methods are synchronous and run on the blocking pool (or the
//! admin CLI's main thread), so every database call here is spawned on a
//! small runtime of its own and waited for with a deadline: no call ever
//! runs on, or needs, the caller's async runtime, and none waits longer
//! than [`CALL_TIMEOUT`]. Connections lost while the database is down are
//! replaced by the pool once it is back.

use std::{error::Error as _, future::Future, str::FromStr, sync::mpsc, time::Duration};

use anyhow::Context;
use bytes::BytesMut;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime as PoolRuntime, Timeouts,
};
use tokio_postgres::{
    error::SqlState,
    types::{to_sql_checked, IsNull, ToSql, Type},
    NoTls,
};

use super::{Exec, Kind, Row, StatementTimer, Unavailable, Value};

/// Connecting to the database gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement running longer is cancelled by the server (as SQLite's
/// writes give up waiting for a lock after 5 s).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A caller waits at most this long for one database call (taking a
/// connection from the pool included), even when the database hangs.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(6);
/// Connections kept open at most.
const POOL_SIZE: usize = 16;

/// The channel revocations are announced on (`NOTIFY`, sent at commit by
/// the transaction that revoked something).
pub const REVOCATIONS_CHANNEL: &str = "cmdop_revocations";

/// A PostgreSQL database and the runtime its calls run on.
pub struct Pg {
    pool: Pool,
    config: tokio_postgres::Config,
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// The URL with its password replaced by `***`, for messages.
    shown: String,
}

/// `url` with the password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // key=value form: hide a password=… pair.
        return url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    let tail = tail
        .split('&')
        .map(|kv| {
            if kv.contains("password=") {
                let (k, _) = kv.split_once("password=").unwrap_or((kv, ""));
                format!("{k}password=***")
            } else {
                kv.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{scheme}://{user}@{host}{tail}")
}

impl Pg {
    /// Connects to `url` (`postgres://user:password@host:port/db`) and checks
    /// that the database answers, within [`CONNECT_TIMEOUT`].
    pub fn connect(url: &str) -> anyhow::Result<Pg> {
        let shown = redact(url);
        let mut config = tokio_postgres::Config::from_str(url).with_context(|| {
            format!("invalid database URL {shown}; use postgres://USER:PASSWORD@HOST:PORT/DATABASE")
        })?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("cmdop")
            .options(format!(
                "-c statement_timeout={}",
                STATEMENT_TIMEOUT.as_millis()
            ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cmdop-postgres")
            .enable_all()
            .build()
            .context("cannot start the database runtime")?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(PoolRuntime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(CALL_TIMEOUT),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            })
            .build()
            .context("cannot set up the database connection pool")?;
        let pg = Pg {
            pool,
            config,
            handle: rt.handle().clone(),
            rt: Some(rt),
            shown,
        };
        pg.client().map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the database {}: {e:#}; check that PostgreSQL is running and \
                 reachable at that address and that the user, password and database name are right",
                pg.shown
            )
        })?;
        Ok(pg)
    }

    /// Wakes the returned [`Notify`](tokio::sync::Notify) whenever any
    /// server or admin CLI commits a revocation (LISTEN on its own
    /// connection, re-established after the database was lost). A
    /// notification lost in an outage is covered by the caller's polling.
    pub fn listen_revocations(&self) -> std::sync::Arc<tokio::sync::Notify> {
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        let config = self.config.clone();
        let wake = notify.clone();
        self.handle.spawn(async move {
            loop {
                if let Err(e) = listen(&config, &wake).await {
                    tracing::debug!(error = %e, "revocation listener lost its connection; reconnecting");
                }
                // Whatever happened meanwhile: look again.
                wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        notify
    }

    /// The URL without its password.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// Runs `fut` on the database runtime and waits for it, at most
    /// [`CALL_TIMEOUT`]. `lost` gets the output when the caller gave up.
    fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
        lost: impl FnOnce(T) + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            if let Err(mpsc::TrySendError::Disconnected(out) | mpsc::TrySendError::Full(out)) =
                tx.try_send(fut.await)
            {
                lost(out);
            }
        });
        rx.recv_timeout(CALL_TIMEOUT).map_err(|_| {
            anyhow::Error::new(Unavailable(format!(
                "the database {} did not answer within {} s",
                self.shown,
                CALL_TIMEOUT.as_secs()
            )))
        })
    }

    /// A connection from the pool (opened if needed).
    pub fn client(&self) -> anyhow::Result<PgExec<'_>> {
        let pool = self.pool.clone();
        let got = self.wait(async move { pool.get().await }, |_| {})?;
        let status = self.pool.status();
        crate::metrics::db_pool(
            status.size.saturating_sub(status.available),
            status.available,
        );
        match got {
            Ok(client) => Ok(PgExec {
                pg: self,
                client: Some(client),
                in_transaction: false,
            }),
            Err(e) => Err(anyhow::Error::new(Unavailable(format!(
                "cannot connect to the database {}: {}",
                self.shown,
                chain(&e)
            )))),
        }
    }
}

/// LISTENs for revocations until the connection fails.
async fn listen(
    config: &tokio_postgres::Config,
    wake: &tokio::sync::Notify,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {REVOCATIONS_CHANNEL}"))
        .await?;
    while rx.recv().await.is_some() {
        wake.notify_one();
    }
    drop(client);
    driver.await.unwrap_or(Ok(()))
}

impl Drop for Pg {
    fn drop(&mut self) {
        // The store may be dropped on an async worker, where a blocking
        // runtime shutdown would panic.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

use crate::error_text::chain;

/// True when `e` means the database is unreachable, restarting, or
/// overloaded (a retry may succeed) rather than a bad statement.
fn transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08")
            || c.starts_with("53")
            || c.starts_with("57")
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Statements run on one pooled connection.
pub struct PgExec<'a> {
    pg: &'a Pg,
    client: Option<Object>,
    /// A transaction is open (between `BEGIN` and [`PgExec::finish`]).
    in_transaction: bool,
}

impl Drop for PgExec<'_> {
    fn drop(&mut self) {
        // Left mid-transaction (a panic in the store method): the pool must
        // not hand out a connection with a transaction still open.
        if self.in_transaction {
            if let Some(client) = self.client.take() {
                drop(Object::take(client));
            }
        }
    }
}

type Outcome<T> = (Object, Result<T, tokio_postgres::Error>);

impl PgExec<'_> {
    fn run<T: Send + 'static, Fut>(&mut self, f: impl FnOnce(Object) -> Fut) -> anyhow::Result<T>
    where
        Fut: Future<Output = Outcome<T>> + Send + 'static,
    {
        let client = self.client.take().ok_or_else(|| {
            Unavailable("the database connection was lost by an earlier call; retry".into())
        })?;
        // A connection whose call we gave up on may be mid-transaction:
        // close it rather than give it back to the pool.
        let (client, res) = self.pg.wait(f(client), |(client, _)| {
            drop(Object::take(client));
        })?;
        match res {
            Ok(v) => {
                self.client = Some(client);
                Ok(v)
            }
            Err(e) => {
                let text = chain(&e);
                if transient(&e) {
                    drop(Object::take(client));
                    Err(anyhow::Error::new(Unavailable(format!(
                        "the database {} failed: {text}",
                        self.pg.shown
                    ))))
                } else {
                    self.client = Some(client);
                    Err(anyhow::Error::new(e).context(format!("database error: {text}")))
                }
            }
        }
    }

    /// Opens a transaction.
    pub fn begin(&mut self) -> anyhow::Result<()> {
        self.in_transaction = true;
        self.batch("BEGIN")
    }

    /// Opens a transaction and runs `sql` (statements without parameters)
    /// first in it, in one round trip. The caller ends it with
    /// [`finish`](Self::finish) whether this succeeded or not.
    pub fn begin_with(&mut self, sql: &str) -> anyhow::Result<()> {
        self.in_transaction = true;
        self.batch(&format!("BEGIN; {sql}"))
    }

    /// Ends an open transaction; a connection that cannot is closed.
    pub fn finish(&mut self, commit: bool) -> anyhow::Result<()> {
        let res = self.batch(if commit { "COMMIT" } else { "ROLLBACK" });
        self.in_transaction = false;
        if res.is_err() {
            if let Some(client) = self.client.take() {
                drop(Object::take(client));
            }
        }
        res
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn convert(row: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl Exec for PgExec<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        let _timer = StatementTimer::start("postgres", "execute");
        let sql = sql.to_owned();
        let params = params.to_vec();
        self.run(move |client| async move {
            let res = async {
                let stmt = client.prepare_cached(&sql).await?;
                client.execute(&stmt, &refs(&params)).await
            }
            .await;
            (client, res)
        })
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
        let _timer = StatementTimer::start("postgres", "query");
        let sql = sql.to_owned();
        let params = params.to_vec();
        self.run(move |client| async move {
            let res = async {
                let stmt = client.prepare_cached(&sql).await?;
                let rows = client.query(&stmt, &refs(&params)).await?;
                rows.iter().map(convert).collect::<Result<Vec<_>, _>>()
            }
            .await;
            (client, res)
        })
    }

    fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        let _timer = StatementTimer::start("postgres", "batch");
        let sql = sql.to_owned();
        self.run(move |client| async move {
            let res = client.batch_execute(&sql).await;
            (client, res)
        })
    }

    fn kind(&self) -> Kind {
        Kind::Postgres
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT8 => v.to_sql(ty, out),
            Value::Int(v) => Err(format!("integer {v} given for a {ty} parameter").into()),
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://cmdop:s3cret@127.0.0.1:5433/cmdop"),
            "postgres://cmdop:***@127.0.0.1:5433/cmdop"
        );
        assert_eq!(
            redact("postgresql://cmdop@db/cmdop?sslmode=disable"),
            "postgresql://cmdop@db/cmdop?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://u@h/db?password=x&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
        assert_eq!(
            redact("host=db user=u password=x"),
            "host=db user=u password=***"
        );
    }
}
