//! Size and count limits. Every request field that can grow is checked
//! against one of these before it reaches an agent or the database, so one
//! misbehaving caller cannot exhaust the server for everyone else.

use std::time::Duration;

/// Largest gRPC message accepted or sent (matches the Node SDK's 32 MiB).
pub const MAX_MESSAGE_BYTES: usize = cmdop_proto::limits::MAX_MESSAGE_BYTES;
/// Largest `SendInput` payload.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Largest file content in one `FileWrite`: whatever fits in a message.
pub const MAX_FILE_WRITE_BYTES: usize = cmdop_proto::limits::MAX_MESSAGE_BYTES;
/// Largest command line for `Exec` (see [`cmdop_proto::limits::MAX_COMMAND_BYTES`]).
pub const MAX_COMMAND_BYTES: usize = cmdop_proto::limits::MAX_COMMAND_BYTES;
/// Largest stdin payload for `Exec`.
pub const MAX_EXEC_STDIN_BYTES: usize = 16 * 1024 * 1024;
/// Most environment variables one `Exec` may add.
pub const MAX_EXEC_ENV_ENTRIES: usize = 256;
/// Largest single environment variable (name + value) for `Exec`.
pub const MAX_EXEC_ENV_ENTRY_BYTES: usize = 32 * 1024;
/// Longest hostname (DNS limit).
pub const MAX_HOSTNAME_BYTES: usize = 255;
/// Longest session id an agent may pick.
pub const MAX_SESSION_ID_BYTES: usize = 128;
/// Longest file path in a file operation.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest credential (key/token/secret) we bother hashing.
pub const MAX_CREDENTIAL_BYTES: usize = 512;
/// Longest workspace name.
pub const MAX_WORKSPACE_NAME_BYTES: usize = 128;
/// Longest API key label.
pub const MAX_LABEL_BYTES: usize = 256;
/// Largest output chunk we accept from an agent in one message; agents send
/// at most 64 KiB, anything above this is dropped as malformed.
pub const MAX_AGENT_OUTPUT_CHUNK_BYTES: usize = 1024 * 1024;
/// Default and largest `GetOutput` answer.
pub const MAX_GET_OUTPUT_BYTES: usize = 1024 * 1024;
/// Commands remembered per session for `GetHistory`.
pub const MAX_HISTORY_COMMANDS: usize = 1000;
/// Longest command remembered by `GetHistory` (longer ones are cut).
pub const MAX_HISTORY_COMMAND_BYTES: usize = 4096;
/// File operations in flight per session.
pub const MAX_PENDING_FILE_OPS: usize = 64;
/// Exec calls in flight per agent.
pub const MAX_PENDING_EXECS: usize = 256;
/// Attach clients per session.
pub const MAX_ATTACH_SUBSCRIBERS: usize = 32;
/// Largest `ListSessions` page.
pub const MAX_LIST_LIMIT: usize = 1000;
/// `ListSessions` page when the request says 0.
pub const DEFAULT_LIST_LIMIT: usize = 20;

/// Messages queued towards one agent's ConnectTerminal stream.
pub const AGENT_CONTROL_QUEUE: usize = 256;
/// Messages queued towards one attach client.
pub const ATTACH_QUEUE: usize = 256;
/// Messages queued towards one agent's AgentLink Channel.
pub const AGENT_DOWNLINK_QUEUE: usize = 64;
/// Events queued per Exec call (agent side and client side each).
pub const EXEC_EVENT_QUEUE: usize = 32;

/// How long a file operation may wait for the agent's answer.
pub const FILE_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a file read may wait for the agent's answer.
pub const FILE_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an agent may take to send its first ConnectTerminal/Channel message.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a disconnected session stays listed (and its output readable).
pub const DISCONNECTED_SESSION_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Access token lifetime when the request says 0.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest access token lifetime a caller may ask for.
pub const MAX_ACCESS_TTL: Duration = Duration::from_secs(12 * 3600);
/// Refresh token lifetime.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Checks `len <= max`, naming the field in the error.
pub fn check_len(field: &str, len: usize, max: usize) -> Result<(), tonic::Status> {
    if len > max {
        Err(tonic::Status::invalid_argument(format!(
            "{field} is {len} bytes; the limit is {max} bytes"
        )))
    } else {
        Ok(())
    }
}
