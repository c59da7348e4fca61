//! A throwaway PostgreSQL server per test: the control plane's
//! [`LocalPostgres`] (see there for what it sets up), panicking with its
//! message — which says what to do, e.g. the command that installs
//! PostgreSQL — when it cannot: the tests need it and must not pass
//! without it. Stopped and deleted when dropped.

#![allow(dead_code)]

use cmdop_localpg::LocalPostgres;
// Not every suite uses every name.
#[allow(unused_imports)]
pub use cmdop_localpg::{DATABASE, INSTALL_COMMAND, USER};

/// A running (or stopped) PostgreSQL server of one test.
pub struct Postgres(LocalPostgres);

fn ok<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

impl Postgres {
    /// initdb, start, and create the user and database.
    pub fn start() -> Postgres {
        Postgres(ok(LocalPostgres::start()))
    }

    /// `postgres://cmdop:PASSWORD@127.0.0.1:PORT/cmdop`.
    pub fn url(&self) -> String {
        self.0.url()
    }

    /// The URL of database `name` (see [`Postgres::create_database`]).
    pub fn url_of(&self, name: &str) -> String {
        self.0.url_of(name)
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    pub fn password(&self) -> &str {
        self.0.password()
    }

    /// Creates another empty database owned by the application user and
    /// returns its URL (one per test keeps tests apart).
    pub fn create_database(&self, name: &str) -> String {
        ok(self.0.create_database(name))
    }

    /// Runs SQL as the superuser in database `db`; returns psql's output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        ok(self.0.psql(db, sql))
    }

    /// Stops the server (fast shutdown: connections are cut) and waits
    /// until it is gone.
    pub fn stop(&mut self) {
        self.0.stop();
    }

    /// Starts the server [`Postgres::stop`] stopped again, on the same port
    /// with the same data.
    pub fn start_again(&mut self) {
        ok(self.0.start_again());
    }

    /// Freezes the server (SIGSTOP to the postmaster and its backends);
    /// [`Postgres::thaw`] undoes it.
    pub fn freeze(&self) {
        ok(self.0.freeze());
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        ok(self.0.thaw());
    }
}
