//! The error type of the client core and its mapping from gRPC statuses.

use std::fmt;
use std::time::Duration;

use super::exec::ExecOutput;

/// Coarse classification of an [`Error`], one-to-one with the C
/// `cmdop_status` values (see `src/ffi/status.rs`), so that both layers agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    Unauthenticated,
    NotFound,
    Ambiguous,
    Timeout,
    Unavailable,
    Disconnected,
    Cancelled,
    Protocol,
    Internal,
    NotSupported,
    PermissionDenied,
    OperationFailed,
    OutcomeUnknown,
    NotAllowed,
}

/// What fixes an error, independent of the API it is worded in
/// ([`Error::next_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Connect (again): the client is not connected, closed, or gave up.
    Connect,
    /// Select a machine before calling anything that acts on one.
    SelectMachine,
}

/// How [`Error::no_machine`] starts.
const NO_MACHINE: &str = "no machine selected";

/// Everything that can go wrong in a client call. Messages are written for
/// the person reading a log: they say what happened and what to do next.
#[derive(Debug, Clone)]
pub enum Error {
    /// Bad input from the caller (or RESOURCE_EXHAUSTED from the server).
    InvalidArgument(String),
    /// Missing, wrong or expired credentials.
    Unauthenticated(String),
    /// Unknown session, machine, file or path.
    NotFound(String),
    /// A hostname matched several machines.
    Ambiguous {
        message: String,
        matches: Vec<String>,
    },
    /// The call ran out of time. For command execution `partial` holds what
    /// the command printed before it was stopped.
    Timeout {
        message: String,
        partial: Option<Box<ExecOutput>>,
    },
    /// Server, agent or network not reachable right now; retrying may help.
    Unavailable(String),
    /// The client is closed or gave up reconnecting.
    Disconnected(String),
    /// The caller cancelled the call.
    Cancelled,
    /// The peer answered something this client does not understand.
    Protocol(String),
    /// A bug or an unexpected server failure.
    Internal(String),
    /// The server lacks an extension this call needs.
    NotSupported(String),
    /// The agent was not allowed to do it (file permissions, ...).
    PermissionDenied(String),
    /// The remote side tried and reported a failure of its own.
    OperationFailed(String),
    /// A command was handed to the agent but nothing confirmed how it
    /// ended: the caller's deadline passed without the agent's answer, or
    /// the link to the agent was lost. It may have run to completion, may
    /// still run, or may have died; it was not confirmed killed. `partial`
    /// holds what it printed before the answer stopped.
    OutcomeUnknown {
        message: String,
        partial: Option<Box<ExecOutput>>,
    },
    /// The server refused the call because the API key's scope does not
    /// allow it (an operation the key may not use).
    NotAllowed(String),
}

impl Error {
    /// The coarse classification, used for C status codes and retry decisions.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Ambiguous { .. } => ErrorKind::Ambiguous,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Disconnected(_) => ErrorKind::Disconnected,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Protocol(_) => ErrorKind::Protocol,
            Error::Internal(_) => ErrorKind::Internal,
            Error::NotSupported(_) => ErrorKind::NotSupported,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::OperationFailed(_) => ErrorKind::OperationFailed,
            Error::OutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
            Error::NotAllowed(_) => ErrorKind::NotAllowed,
        }
    }

    /// A timeout without partial output.
    pub(crate) fn timeout(what: &str, after: Duration) -> Error {
        Error::Timeout {
            message: format!(
                "{what} timed out after {} ms: raise the timeout or check that the server and agent are responsive",
                after.as_millis()
            ),
            partial: None,
        }
    }

    /// The error for "no machine selected yet".
    pub(crate) fn no_machine() -> Error {
        Error::NotFound(format!("{NO_MACHINE}: select one first (by name or id)"))
    }

    /// The call that fixes this error, for a layer that names it in its own
    /// API (the C layer adds `cmdop_connect()`, for example). The message
    /// itself says what to do in words every binding's user understands.
    pub fn next_step(&self) -> Option<NextStep> {
        match self {
            Error::Disconnected(_) => Some(NextStep::Connect),
            Error::NotFound(m) if m.starts_with(NO_MACHINE) => Some(NextStep::SelectMachine),
            _ => None,
        }
    }

    /// Classify a failure that the server reported in a response field
    /// (`success=false` + `error`) rather than as a gRPC status.
    pub(crate) fn from_remote_text(what: &str, text: &str) -> Error {
        let lower = text.to_ascii_lowercase();
        let message = format!("{what} failed: {text}");
        if lower.contains("not found")
            || lower.contains("no such")
            || lower.contains("unknown session")
        {
            Error::NotFound(message)
        } else if lower.contains("permission denied") || lower.contains("not permitted") {
            Error::PermissionDenied(message)
        } else if lower.contains("offline")
            || lower.contains("not connected")
            || lower.contains("unavailable")
        {
            Error::Unavailable(message)
        } else if lower.contains("invalid")
            || lower.contains("too large")
            || lower.contains("required")
        {
            Error::InvalidArgument(message)
        } else {
            Error::OperationFailed(message)
        }
    }

    /// Map a gRPC status from call `what` to an error.
    pub(crate) fn from_status(what: &str, status: &tonic::Status) -> Error {
        use tonic::Code;
        let msg = status.message();
        let detail = if msg.is_empty() {
            status.code().description()
        } else {
            msg
        };
        if super::connection::refused_above_last_stream(status) {
            return Error::Unavailable(format!(
                "{what}: the server was shutting down (HTTP/2 GOAWAY) and refused the call before \
                 it ran: the client moves to another server by itself; retry the call"
            ));
        }
        let source = std::error::Error::source(status);
        if source.is_some_and(cmdop_proto::unsent::crossed_goaway) {
            return Error::Unavailable(format!(
                "{what}: the server was shutting down (HTTP/2 GOAWAY) as the call was being sent, and \
                 the connection cannot tell whether the call reached it: the client moves to another \
                 server by itself; check whether it ran before running it again"
            ));
        }
        if is_transport_loss(status) {
            return Error::Unavailable(format!(
                "{what}: the connection to the server was lost ({detail}): the client reconnects by itself; retry the call"
            ));
        }
        if matches!(
            status.code(),
            Code::ResourceExhausted | Code::FailedPrecondition | Code::Internal | Code::Unknown
        ) && detail.to_ascii_lowercase().contains("no space left")
        {
            return Error::OperationFailed(format!(
                "{what}: {detail}: free space on the machine's disk, then retry"
            ));
        }
        match status.code() {
            Code::InvalidArgument
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::AlreadyExists => Error::InvalidArgument(format!("{what}: {detail}")),
            Code::ResourceExhausted => Error::InvalidArgument(format!(
                "{what}: {detail} (the request or its answer is too large; send less at once)"
            )),
            Code::Unauthenticated => {
                Error::Unauthenticated(format!("{what}: {detail}: check the API key or tokens"))
            }
            Code::PermissionDenied if is_scope_refusal(status) => Error::NotAllowed(detail.into()),
            Code::PermissionDenied => Error::PermissionDenied(format!("{what}: {detail}")),
            Code::NotFound => Error::NotFound(format!("{what}: {detail}")),
            Code::DeadlineExceeded => Error::Timeout {
                message: format!("{what}: deadline exceeded: raise the timeout"),
                partial: None,
            },
            Code::Unavailable => Error::Unavailable(format!(
                "{what}: {detail}: check that the server is reachable and the agent is online"
            )),
            Code::Cancelled => Error::Cancelled,
            Code::Unimplemented => Error::NotSupported(format!(
                "{what}: the server does not implement this call ({detail})"
            )),
            Code::DataLoss | Code::Internal | Code::Unknown | Code::Aborted | Code::Ok => {
                Error::Internal(format!("{what}: server error: {detail}"))
            }
        }
    }
}

/// True when `status` was made by the client's own transport from a lost
/// connection (server killed, reset, GOAWAY, broken HTTP/2), not sent by
/// the server: tonic reports those as INTERNAL or UNKNOWN, but retrying
/// after the reconnect may help, which is what UNAVAILABLE says.
pub(crate) fn is_transport_loss(status: &tonic::Status) -> bool {
    use tonic::Code;
    if !matches!(
        status.code(),
        Code::Internal | Code::Unknown | Code::Cancelled
    ) {
        return false;
    }
    // Made by the transport for a request it never sent (hyper's
    // "operation was canceled" when the connection closed under a queued
    // request, a GOAWAY above all): nothing of ours cancelled it.
    if std::error::Error::source(status).is_some_and(cmdop_proto::unsent::never_sent) {
        return true;
    }
    let msg = status.message().to_ascii_lowercase();
    let markers = [
        "h2 protocol error",
        "transport error",
        "connection reset",
        "connection closed",
        "connection error",
        "broken pipe",
        "goaway",
        "go_away",
        "stream no longer needed",
        "error reading a body from connection",
        "connection aborted",
        "unexpected eof",
    ];
    if status.code() == Code::Cancelled {
        // A GOAWAY or reset can surface as CANCELLED too; a cancel of our
        // own never reaches this mapping (it ends the call first).
        return markers[..7].iter().any(|m| msg.contains(m));
    }
    markers.iter().any(|m| msg.contains(m))
        || std::error::Error::source(status).is_some_and(|mut e| loop {
            if e.downcast_ref::<std::io::Error>().is_some() {
                break true;
            }
            match e.source() {
                Some(next) => e = next,
                None => break false,
            }
        })
}

/// True when the server refused a call because the API key's scope does not
/// allow it.
fn is_scope_refusal(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(cmdop_proto::headers::AUTH_ERROR)
        .and_then(|v| v.to_str().ok())
        == Some(cmdop_proto::headers::AUTH_ERROR_SCOPE)
}

/// True when the server says the presented access token has expired (as
/// opposed to being wrong), which is the signal to refresh it.
pub(crate) fn is_expired_token(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unauthenticated
        && (status.message().starts_with("access token expired")
            || status
                .metadata()
                .get(cmdop_proto::headers::AUTH_ERROR)
                .and_then(|v| v.to_str().ok())
                == Some("expired"))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m)
            | Error::Unauthenticated(m)
            | Error::NotFound(m)
            | Error::Unavailable(m)
            | Error::Disconnected(m)
            | Error::Protocol(m)
            | Error::Internal(m)
            | Error::NotSupported(m)
            | Error::PermissionDenied(m)
            | Error::NotAllowed(m)
            | Error::OperationFailed(m) => f.write_str(m),
            Error::Ambiguous { message, .. } => f.write_str(message),
            Error::Timeout { message, .. } | Error::OutcomeUnknown { message, .. } => {
                f.write_str(message)
            }
            Error::Cancelled => f.write_str("the call was cancelled"),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias of the client core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_machine_names_no_c_function_and_says_what_fixes_it() {
        let e = Error::no_machine();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.to_string().contains("cmdop_"), "{e}");
        assert_eq!(e.next_step(), Some(NextStep::SelectMachine));
        let other = Error::NotFound("no such file".into());
        assert_eq!(other.next_step(), None);
        let closed = Error::Disconnected("the client is closed".into());
        assert_eq!(closed.next_step(), Some(NextStep::Connect));
    }

    #[test]
    fn grpc_codes_map_to_kinds() {
        let cases = [
            (tonic::Code::Unauthenticated, ErrorKind::Unauthenticated),
            (tonic::Code::NotFound, ErrorKind::NotFound),
            (tonic::Code::Unavailable, ErrorKind::Unavailable),
            (tonic::Code::InvalidArgument, ErrorKind::InvalidArgument),
            (tonic::Code::ResourceExhausted, ErrorKind::InvalidArgument),
            (tonic::Code::Unimplemented, ErrorKind::NotSupported),
            (tonic::Code::DeadlineExceeded, ErrorKind::Timeout),
            (tonic::Code::Cancelled, ErrorKind::Cancelled),
            (tonic::Code::Internal, ErrorKind::Internal),
        ];
        for (code, kind) in cases {
            let e = Error::from_status("Call", &tonic::Status::new(code, "boom"));
            assert_eq!(e.kind(), kind, "{code:?}");
        }
    }

    #[test]
    fn transport_loss_is_unavailable_not_internal() {
        for (code, msg) in [
            (
                tonic::Code::Internal,
                "h2 protocol error: error reading a body from connection",
            ),
            (tonic::Code::Unknown, "transport error"),
            (tonic::Code::Internal, "h2 protocol error: connection reset"),
            (
                tonic::Code::Unknown,
                "error trying to connect: connection reset by peer",
            ),
            (tonic::Code::Internal, "h2 protocol error: received GOAWAY"),
            (
                tonic::Code::Cancelled,
                "h2 protocol error: stream no longer needed; connection closed",
            ),
        ] {
            let e = Error::from_status("Exec", &tonic::Status::new(code, msg));
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{code:?} {msg}");
        }
        // A failure the server itself reports stays INTERNAL.
        let e = Error::from_status("Exec", &tonic::Status::internal("database exploded"));
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(
            Error::from_status("Exec", &tonic::Status::cancelled("cancelled by caller")).kind(),
            ErrorKind::Cancelled
        );
    }

    #[test]
    fn a_full_disk_is_operation_failed_not_too_large() {
        let e = Error::from_status(
            "Upload",
            &tonic::Status::resource_exhausted("writing /tmp/x: no space left on device"),
        );
        assert_eq!(e.kind(), ErrorKind::OperationFailed);
        assert!(e.to_string().contains("no space left on device"), "{e}");
        assert!(!e.to_string().contains("send less"), "{e}");
        let e = Error::from_status(
            "Upload",
            &tonic::Status::resource_exhausted("message too big"),
        );
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn expired_token_is_detected_by_message_or_metadata() {
        let s = tonic::Status::unauthenticated("access token expired at 12:00");
        assert!(is_expired_token(&s));
        let mut s = tonic::Status::unauthenticated("nope");
        assert!(!is_expired_token(&s));
        s.metadata_mut()
            .insert(cmdop_proto::headers::AUTH_ERROR, "expired".parse().unwrap());
        assert!(is_expired_token(&s));
        assert!(!is_expired_token(&tonic::Status::not_found(
            "access token expired"
        )));
    }

    #[test]
    fn remote_text_is_classified() {
        assert_eq!(
            Error::from_remote_text("x", "No such file or directory").kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            Error::from_remote_text("x", "Permission denied").kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            Error::from_remote_text("x", "disk on fire").kind(),
            ErrorKind::OperationFailed
        );
    }
}
