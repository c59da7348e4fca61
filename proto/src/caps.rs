//! Capability strings: the names a peer lists to say which optional parts
//! of the protocol it speaks. Each is defined here once and used by the
//! client, the control plane and the agent, because a misspelt copy does not
//! fail: it silently turns the feature off between two peers.
//!
//! Where they are listed:
//! - `ServerInfoResponse.capabilities` (control plane to clients):
//!   [`EXEC`], [`EXEC_STDIN`], [`EXEC_OUTCOME`], [`EXEC_FLEET`], [`MACHINE_ID`], [`TOKENS`], [`FILES`], [`FILES_RAW_WRITE`], [`EXEC_RAW`], [`EXEC_RAW_TLS`], [`EXEC_TTY`];
//! - `AgentHello.capabilities` (agent to control plane, extension Channel):
//!   [`FILES`], [`FILES_RAW`], [`FILES_RAW_WRITE`], [`EXEC_SPAWNED`], [`EXEC_CREDIT`], [`EXEC_RAW`],
//!   [`EXEC_RAW_TLS`], [`EXEC_STDIN`], [`LINK_MOVE`], [`EXEC_TTY`];
//! - `RegisterRequest.agent_capabilities` (official protocol): [`AGENT_NATIVE_EXEC`].

/// The server serves native `Exec` (`cmdop.ext.v1.Cmdop/Exec`).
pub const EXEC: &str = "exec.v1";
/// Machines are addressed by a stable machine id as well as by hostname.
pub const MACHINE_ID: &str = "machine-id.v1";
/// The server lists machines with labels, facts and presence, chosen by a
/// selector (`Cmdop/ListMachines`).
pub const MACHINES: &str = "machines.v1";
/// The server issues and refreshes access/refresh token pairs.
pub const TOKENS: &str = "tokens.v1";
/// Streaming file transfers: `Upload`/`Download` (server) and
/// `FileDownlink`/`FileUplink` (agent).
pub const FILES: &str = "files.v1";
/// The agent moves a download's data to a side connection when the
/// control plane's `DownloadRequest` carries a ticket (plain or TLS, as it
/// lists [`EXEC_RAW`] / [`EXEC_RAW_TLS`]).
pub const FILES_RAW: &str = "files-raw.v1";
/// Uploads on side connections: the server serves `UploadWithSide`
/// (ServerInfo), the agent takes an upload's data from a side connection
/// when the control plane's `UploadStart` carries a ticket (hello).
pub const FILES_RAW_WRITE: &str = "files-raw-write.v1";
/// The agent reports each command's pid in an `ExecSpawned` message before
/// its output.
pub const EXEC_SPAWNED: &str = "exec-spawned.v1";
/// The agent honours `ExecStart.window` and the control plane's `ExecCredit`.
pub const EXEC_CREDIT: &str = "exec-credit.v1";
/// Side connections for bulk exec stdout (see [`crate::raw`]).
pub const EXEC_RAW: &str = "exec-raw.v1";
/// Side connections for bulk exec stdout that run TLS 1.3 end to end
/// between agent and caller, authenticated by certificate pins (see
/// [`crate::raw_tls`]).
pub const EXEC_RAW_TLS: &str = "exec-raw-tls.v1";
/// Streamed stdin for `Exec`: `ExecWithStdin` (server) and
/// `ExecStart.stdin_open` / `ExecStdin` / `ExecStdinWritten` (agent).
pub const EXEC_STDIN: &str = "exec-stdin.v1";
/// Exec reports a lost agent link as an unknown outcome
/// (`ExecExit.outcome_unknown`) to callers that set
/// `ExecRequest.accept_unknown_outcome`.
pub const EXEC_OUTCOME: &str = "exec-outcome.v1";
/// The server fans one command out over a selection of machines itself
/// (`Cmdop/ExecFleet`): one call and one stream for the whole fleet.
pub const EXEC_FLEET: &str = "exec-fleet.v1";
/// The agent moves its link to another control plane of its list when
/// told to (`MoveLink`, during a drain) and reports the new link with
/// `LinkMoved`.
pub const LINK_MOVE: &str = "link-move.v1";
/// Commands in a pseudo-terminal (`cmdop exec -t`, `cmdop shell`):
/// `ExecRequest.terminal` and `ExecInput.resize` (server), `ExecStart.
/// terminal` and `ExecStdin.resize` (agent).
pub const EXEC_TTY: &str = "exec-tty.v1";
/// Official protocol: an agent that serves native exec says so in its
/// registration.
pub const AGENT_NATIVE_EXEC: &str = "cmdop.exec.v1";

#[cfg(test)]
mod tests {
    use super::*;

    /// These strings are on the wire: old peers compare them byte for byte,
    /// so a rename here would silently switch features off against them.
    #[test]
    fn wire_names_never_change() {
        let all = [
            (EXEC, "exec.v1"),
            (MACHINE_ID, "machine-id.v1"),
            (MACHINES, "machines.v1"),
            (TOKENS, "tokens.v1"),
            (FILES, "files.v1"),
            (FILES_RAW, "files-raw.v1"),
            (FILES_RAW_WRITE, "files-raw-write.v1"),
            (EXEC_SPAWNED, "exec-spawned.v1"),
            (EXEC_CREDIT, "exec-credit.v1"),
            (EXEC_RAW, "exec-raw.v1"),
            (EXEC_RAW_TLS, "exec-raw-tls.v1"),
            (EXEC_STDIN, "exec-stdin.v1"),
            (EXEC_OUTCOME, "exec-outcome.v1"),
            (EXEC_FLEET, "exec-fleet.v1"),
            (LINK_MOVE, "link-move.v1"),
            (EXEC_TTY, "exec-tty.v1"),
            (AGENT_NATIVE_EXEC, "cmdop.exec.v1"),
        ];
        for (got, wire) in all {
            assert_eq!(got, wire);
        }
    }
}
