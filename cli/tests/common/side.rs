//! Helpers for the side-connection tests (plain and TLS): the command that
//! prints enough stdout to be offered one, what it prints, and the caller's
//! opening on the control plane's port.

use cmdop_proto::raw::{self, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lines 1..=N of `seq`, as the command prints them.
pub fn seq_text(n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.extend_from_slice(i.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Prints `seq 1 lines`, pausing after the first 1.3 MB (past the agent's
/// 1 MiB offer point) so that the side connection is certainly up before
/// the rest: a fast machine could otherwise finish on gRPC first.
pub fn seq_with_a_pause(lines: u32) -> String {
    format!("seq 1 200000; sleep 0.5; seq 200001 {lines}")
}

/// Opens the caller's side of a side connection for `ticket` on the
/// server's port; the control plane's one-byte answer.
pub async fn open_side(addr: &str, ticket: &str) -> (tokio::net::TcpStream, u8) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(&raw::opening(Role::Caller, ticket).expect("a valid ticket"))
        .await
        .unwrap();
    let answer = conn.read_u8().await.unwrap();
    (conn, answer)
}
