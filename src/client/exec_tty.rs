//! A command's pseudo-terminal (`ExecOptions::terminal`, capability
//! `exec-tty.v1`): its size and TERM, and their wire form. Shared by the
//! execute entry points, the native path and streamed stdin (resizes),
//! and importing none of them.

/// A command's pseudo-terminal ([`super::ExecOptions::terminal`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terminal {
    /// Rows; 0 = 24.
    pub rows: u16,
    /// Columns; 0 = 80.
    pub cols: u16,
    /// `TERM` for the command (e.g. the local `$TERM`); empty =
    /// `xterm-256color`.
    pub term: String,
}

impl Terminal {
    /// The wire form (`ExecRequest.terminal`, `ExecInput.resize`).
    pub(crate) fn to_wire(&self) -> cmdop_proto::ext::ExecTerminal {
        cmdop_proto::ext::ExecTerminal {
            rows: u32::from(self.rows),
            cols: u32::from(self.cols),
            term: self.term.clone(),
        }
    }
}
