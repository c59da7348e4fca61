//! Metadata keys (gRPC headers and trailers) of our own, `x-cmdop-…`, that
//! peers must spell alike: defined once here, used by the control plane,
//! the client and the agent.

/// Response metadata telling a client why authentication failed
/// (`expired`: refresh the access token and retry), or, on
/// PERMISSION_DENIED, that the key's scope refused the call
/// ([`AUTH_ERROR_SCOPE`]).
pub const AUTH_ERROR: &str = "x-cmdop-auth-error";
/// The [`AUTH_ERROR`] value of a call the API key's scope does not allow.
pub const AUTH_ERROR_SCOPE: &str = "scope";
/// Trailing metadata on UNAVAILABLE when an exec's agent link was lost
/// while the command ran (`unknown`: the outcome is not known).
pub const EXEC_OUTCOME: &str = "x-cmdop-exec-outcome";
/// Metadata on a refusal (UNAVAILABLE) of a call that never reached the
/// machine: [`CALL_NOT_STARTED_REFUSED`] says nothing of it ran, so
/// sending it again is safe even for a command.
pub const CALL_NOT_STARTED: &str = "x-cmdop-not-started";
/// The [`CALL_NOT_STARTED`] value.
pub const CALL_NOT_STARTED_REFUSED: &str = "refused";
/// Response metadata carrying the agent's error code of a failed file
/// operation.
pub const FILE_ERROR: &str = "x-cmdop-file-error";

/// Between replicas of a cluster (peer port only): the peer secret.
pub const PEER_SECRET: &str = "x-cmdop-peer-secret";
/// The workspace id the forwarding replica authenticated.
pub const PEER_WORKSPACE: &str = "x-cmdop-peer-workspace";
/// That workspace's name, hex-encoded (names may be any UTF-8).
pub const PEER_WORKSPACE_NAME: &str = "x-cmdop-peer-workspace-name";
/// The caller's credential as open calls are filed: `key:<hash>` or
/// `token:<hash>` (revocations end the call on the owner too).
pub const PEER_CREDENTIAL: &str = "x-cmdop-peer-credential";
/// The API key hash per-key limits count against.
pub const PEER_KEY: &str = "x-cmdop-peer-key";
/// The caller's key scope, as the forwarding replica found it (absent:
/// an unscoped key); hex-encoded, see the control plane's `scope` module.
pub const PEER_SCOPE: &str = "x-cmdop-peer-scope";
/// The client's address as the forwarding replica saw it (audit trail).
pub const PEER_SOURCE: &str = "x-cmdop-peer-source";
/// On an Exec or Download a replica forwards (peer port only): the
/// side-connection ticket it will relay to the owner's peer port, 32 hex
/// characters ([`crate::raw::TICKET_LEN`]). The owner offers its side
/// connection under this ticket; without the header it offers none.
pub const PEER_SIDE_TICKET: &str = "x-cmdop-peer-side-ticket";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_never_change() {
        let all = [
            (AUTH_ERROR, "x-cmdop-auth-error"),
            (EXEC_OUTCOME, "x-cmdop-exec-outcome"),
            (CALL_NOT_STARTED, "x-cmdop-not-started"),
            (CALL_NOT_STARTED_REFUSED, "refused"),
            (FILE_ERROR, "x-cmdop-file-error"),
            (PEER_SECRET, "x-cmdop-peer-secret"),
            (PEER_WORKSPACE, "x-cmdop-peer-workspace"),
            (PEER_WORKSPACE_NAME, "x-cmdop-peer-workspace-name"),
            (PEER_CREDENTIAL, "x-cmdop-peer-credential"),
            (PEER_KEY, "x-cmdop-peer-key"),
            (PEER_SCOPE, "x-cmdop-peer-scope"),
            (PEER_SOURCE, "x-cmdop-peer-source"),
            (PEER_SIDE_TICKET, "x-cmdop-peer-side-ticket"),
        ];
        for (got, wire) in all {
            assert_eq!(got, wire);
            // gRPC metadata keys are lowercase ASCII.
            assert!(got.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
    }
}
