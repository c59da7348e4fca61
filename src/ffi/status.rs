//! Status codes and their text.

use std::ffi::{c_int, CStr};

use crate::client::ErrorKind;

/// Outcome of a libcmdop call. Values are part of the ABI: they are never
/// renumbered, and a retired status keeps its number. Later 1.x versions
/// may add statuses, only for calls whose documentation then lists them
/// (OUTCOME_UNKNOWN came this way); treat a value you do not know
/// as a failure and show cmdop_status_str() and cmdop_last_error_message().
/// Each function documents the statuses it returns.
// A new status also gets its row in TEXTS (below), in value order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cmdop_status {
    /// Success.
    Ok = 0,
    /// A NULL or malformed argument (bad UTF-8, empty name, unknown options
    /// version...), or a request the server found too large.
    InvalidArgument = 1,
    /// Missing, wrong or expired API key or tokens.
    Unauthenticated = 2,
    /// Unknown machine, session, file, or no machine selected.
    NotFound = 3,
    /// A hostname matched several machines; the message lists them.
    Ambiguous = 4,
    /// The call ran out of time. For execute: the agent confirmed that it
    /// killed the command at its timeout.
    Timeout = 5,
    /// Server, agent or network unreachable now; may work later.
    Unavailable = 6,
    /// Not connected: never connected, closed, or reconnection gave up. Also
    /// what a call in flight returns when cmdop_close() ends it.
    Disconnected = 7,
    /// Stopped through the call's own cancel token.
    Cancelled = 8,
    /// The server answered something this library does not understand.
    Protocol = 9,
    /// Unexpected failure in the library or on the server.
    Internal = 10,
    /// The server lacks the extension this call needs.
    NotSupported = 11,
    /// A blocking function was called from inside a libcmdop callback.
    InCallback = 12,
    /// A bug inside libcmdop was caught at the boundary.
    Panic = 13,
    /// The agent was not allowed to do it (e.g. file permissions).
    PermissionDenied = 14,
    /// The remote side tried and reported a failure; see the message.
    OperationFailed = 15,
    /// Execute only: the command reached the agent, but how it ended is not
    /// known: the caller's deadline passed without the agent's answer, or
    /// the link to the agent (or the server) was lost while it ran. It may
    /// have finished, may still run, or may have died; nothing confirmed a
    /// kill. The output captured so far comes with it, as with TIMEOUT.
    /// Check on the machine before running it again.
    OutcomeUnknown = 16,
    /// The server refused the call: the API key's scope does not allow
    /// this operation (the message names it). Machines outside a key's
    /// scope are not refused but invisible (NOT_FOUND). Any function that
    /// calls the server may return it; use a key created with that
    /// operation allowed.
    NotAllowed = 17,
}

impl cmdop_status {
    pub(crate) fn from_kind(kind: ErrorKind) -> cmdop_status {
        use cmdop_status::*;
        match kind {
            ErrorKind::InvalidArgument => InvalidArgument,
            ErrorKind::Unauthenticated => Unauthenticated,
            ErrorKind::NotFound => NotFound,
            ErrorKind::Ambiguous => Ambiguous,
            ErrorKind::Timeout => Timeout,
            ErrorKind::Unavailable => Unavailable,
            ErrorKind::Disconnected => Disconnected,
            ErrorKind::Cancelled => Cancelled,
            ErrorKind::Protocol => Protocol,
            ErrorKind::Internal => Internal,
            ErrorKind::NotSupported => NotSupported,
            ErrorKind::PermissionDenied => PermissionDenied,
            ErrorKind::OperationFailed => OperationFailed,
            ErrorKind::OutcomeUnknown => OutcomeUnknown,
            ErrorKind::NotAllowed => NotAllowed,
        }
    }

    /// The status whose value is `raw`, if any.
    pub(super) fn from_raw(raw: c_int) -> Option<cmdop_status> {
        TEXTS.iter().map(|&(s, _)| s).find(|s| *s as c_int == raw)
    }

    /// Its short static description.
    pub(super) fn text(self) -> &'static CStr {
        TEXTS
            .iter()
            .find(|(s, _)| *s == self)
            .map_or(c"unknown status", |&(_, t)| t)
    }
}

/// Every status with its text: the one list beside the enum (a test holds
/// the two equal, in value order).
const TEXTS: [(cmdop_status, &CStr); 18] = {
    use cmdop_status::*;
    [
        (Ok, c"ok"),
        (InvalidArgument, c"invalid argument"),
        (Unauthenticated, c"unauthenticated"),
        (NotFound, c"not found"),
        (Ambiguous, c"ambiguous machine name"),
        (Timeout, c"timed out"),
        (Unavailable, c"unavailable"),
        (Disconnected, c"disconnected"),
        (Cancelled, c"cancelled"),
        (Protocol, c"protocol error"),
        (Internal, c"internal error"),
        (NotSupported, c"not supported by the server"),
        (InCallback, c"called from inside a callback"),
        (Panic, c"internal panic"),
        (PermissionDenied, c"permission denied"),
        (OperationFailed, c"operation failed"),
        (OutcomeUnknown, c"outcome unknown (not confirmed killed)"),
        (NotAllowed, c"not allowed by the API key's scope"),
    ]
};

#[cfg(test)]
mod tests {
    use super::super::errors::cmdop_status_str;
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn every_status_has_text_and_values_never_move() {
        use cmdop_status::*;
        assert_eq!(Ok as i32, 0);
        assert_eq!(Timeout as i32, 5);
        assert_eq!(Panic as i32, 13);
        assert_eq!(OperationFailed as i32, 15);
        assert_eq!(OutcomeUnknown as i32, 16);
        // SAFETY: a non-NULL, NUL-terminated string.
        let s = unsafe { CStr::from_ptr(cmdop_status_str(OutcomeUnknown as c_int)) };
        assert!(s.to_str().unwrap().starts_with("outcome unknown"));
        // SAFETY: a non-NULL, NUL-terminated string.
        let s = unsafe { CStr::from_ptr(cmdop_status_str(Ambiguous as c_int)) };
        assert_eq!(s.to_str().unwrap(), "ambiguous machine name");
        // SAFETY: a non-NULL, NUL-terminated string.
        let s = unsafe { CStr::from_ptr(cmdop_status_str(-7)) };
        assert_eq!(s.to_str().unwrap(), "unknown status");
    }

    #[test]
    fn the_text_table_lists_every_status_once_in_value_order() {
        for (i, (status, text)) in TEXTS.iter().enumerate() {
            assert_eq!(*status as usize, i, "{text:?}");
            assert_eq!(cmdop_status::from_raw(i as c_int), Some(*status));
        }
        // The last variant is the table's last row: nothing is missing.
        assert_eq!(cmdop_status::NotAllowed as usize + 1, TEXTS.len());
    }

    #[test]
    fn kinds_map_to_statuses() {
        assert_eq!(
            cmdop_status::from_kind(ErrorKind::Timeout),
            cmdop_status::Timeout
        );
        assert_eq!(
            cmdop_status::from_kind(ErrorKind::Ambiguous),
            cmdop_status::Ambiguous
        );
        assert_eq!(
            cmdop_status::from_kind(ErrorKind::Disconnected),
            cmdop_status::Disconnected
        );
    }
}
