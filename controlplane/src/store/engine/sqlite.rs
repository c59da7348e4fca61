//! [`Exec`] on a SQLite connection (or transaction, which derefs to one).

use std::borrow::Cow;

use rusqlite::{
    types::{ToSqlOutput, ValueRef},
    Connection, ToSql,
};

use super::{Exec, Kind, Row, StatementTimer, Value};

/// Statements run on this connection.
pub struct SqliteExec<'a>(pub &'a Connection);

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Value::Int(v) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*v)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// `$N` placeholders as SQLite's numbered `?N` (a `$N` would be a named
/// parameter, numbered in order of first appearance instead).
pub fn placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn row(r: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Real(v) => Value::Int(v as i64),
            ValueRef::Blob(b) => Value::Text(hex::encode(b)),
        });
    }
    Ok(Row(values))
}

impl Exec for SqliteExec<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        let _timer = StatementTimer::start("sqlite", "execute");
        let mut stmt = self.0.prepare_cached(&placeholders(sql))?;
        Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Row>> {
        let _timer = StatementTimer::start("sqlite", "query");
        let mut stmt = self.0.prepare_cached(&placeholders(sql))?;
        let columns = stmt.column_count();
        let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
            row(r, columns)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        let _timer = StatementTimer::start("sqlite", "batch");
        Ok(self.0.execute_batch(sql)?)
    }

    fn kind(&self) -> Kind {
        Kind::Sqlite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_placeholders_become_numbered() {
        assert_eq!(
            placeholders("UPDATE t SET a = $2 WHERE b = $1 AND c = '$x'"),
            "UPDATE t SET a = ?2 WHERE b = ?1 AND c = '$x'"
        );
        let conn = Connection::open_in_memory().expect("in-memory database");
        let row = SqliteExec(&conn)
            .query_opt("SELECT $2, $1", &[Value::Int(1), Value::from("two")])
            .expect("query")
            .expect("a row");
        assert_eq!(row.text(0).expect("text"), "two");
        assert_eq!(row.int(1).expect("int"), 1);
    }
}
