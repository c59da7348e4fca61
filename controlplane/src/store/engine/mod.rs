//! The two database engines behind [`super::Store`]: SQLite (embedded, the
//! default) and PostgreSQL (shared by several servers). Store methods are
//! written once against [`Exec`], in SQL both engines accept, with `$1`…`$n`
//! placeholders (SQLite gets them as `?1`…`?n`, so the order they appear in
//! does not matter).

pub mod postgres;
pub mod sqlite;

use std::fmt;

/// A parameter or column value. Times and counters are `Int`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<&i64> for Value {
    fn from(v: &i64) -> Value {
        Value::Int(*v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}

/// `None` is NULL.
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters of a statement: `args![a, b]`.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::engine::Value::from($x)),*]
    };
}
pub(crate) use args;

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> anyhow::Result<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("result has no column {i}"))
    }

    /// Column `i` as text (must not be NULL).
    pub fn text(&self, i: usize) -> anyhow::Result<String> {
        match self.at(i)? {
            Value::Text(s) => Ok(s.clone()),
            other => anyhow::bail!("column {i} is {other:?}, not text"),
        }
    }

    /// Column `i` as text or NULL.
    pub fn opt_text(&self, i: usize) -> anyhow::Result<Option<String>> {
        match self.at(i)? {
            Value::Text(s) => Ok(Some(s.clone())),
            Value::Null => Ok(None),
            other => anyhow::bail!("column {i} is {other:?}, not text"),
        }
    }

    /// Column `i` as an integer (must not be NULL).
    pub fn int(&self, i: usize) -> anyhow::Result<i64> {
        self.opt_int(i)?
            .ok_or_else(|| anyhow::anyhow!("column {i} is NULL, not an integer"))
    }

    /// Column `i` as an integer or NULL.
    pub fn opt_int(&self, i: usize) -> anyhow::Result<Option<i64>> {
        match self.at(i)? {
            Value::Int(v) => Ok(Some(*v)),
            Value::Null => Ok(None),
            other => anyhow::bail!("column {i} is {other:?}, not an integer"),
        }
    }
}

/// Runs statements on one connection (or inside one transaction).
pub trait Exec {
    /// Runs a statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64>;
    /// Runs a query; returns all its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>>;
    /// Runs statements without parameters (schema changes).
    fn batch(&mut self, sql: &str) -> anyhow::Result<()>;
    /// Which engine this is.
    fn kind(&self) -> Kind;

    /// Runs a query; returns its first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// The engine of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// The database could not be reached or is locked: a retry may succeed.
/// Store errors carrying this (anywhere in their chain) are answered with
/// UNAVAILABLE.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Times one statement for the metrics (`cmdop_server_db_statement_duration_seconds`)
/// until dropped, whether it succeeded or not.
pub(crate) struct StatementTimer {
    engine: &'static str,
    kind: &'static str,
    started: std::time::Instant,
}

impl StatementTimer {
    pub(crate) fn start(engine: &'static str, kind: &'static str) -> StatementTimer {
        StatementTimer {
            engine,
            kind,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for StatementTimer {
    fn drop(&mut self) {
        crate::metrics::db_statement(self.engine, self.kind, self.started.elapsed());
    }
}
