//! Commands typed into a session through `SendInput`, for `GetHistory`.

use std::collections::VecDeque;

use crate::limits::{MAX_HISTORY_COMMANDS, MAX_HISTORY_COMMAND_BYTES};

/// Splits input at line ends into a bounded list of commands.
#[derive(Debug, Default)]
pub struct History {
    commands: VecDeque<String>,
    partial: Vec<u8>,
}

impl History {
    /// Feeds raw input bytes; each completed non-blank line becomes a command.
    pub fn record_input(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' || b == b'\r' {
                let line = String::from_utf8_lossy(&self.partial).trim().to_string();
                self.partial.clear();
                if !line.is_empty() {
                    if self.commands.len() == MAX_HISTORY_COMMANDS {
                        self.commands.pop_front();
                    }
                    self.commands.push_back(line);
                }
            } else if self.partial.len() < MAX_HISTORY_COMMAND_BYTES {
                self.partial.push(b);
            }
        }
    }

    /// Number of commands remembered.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Up to `limit` commands, oldest first, skipping the first `offset`.
    pub fn page(&self, offset: usize, limit: usize) -> Vec<String> {
        self.commands
            .iter()
            .skip(offset)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_keeps_partial_input() {
        let mut h = History::default();
        h.record_input(b"ls -l\nech");
        h.record_input(b"o hi\r\n\n");
        assert_eq!(h.page(0, 10), vec!["ls -l", "echo hi"]);
        assert_eq!(h.page(1, 10), vec!["echo hi"]);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn is_bounded() {
        let mut h = History::default();
        for i in 0..(MAX_HISTORY_COMMANDS + 5) {
            h.record_input(format!("cmd {i}\n").as_bytes());
        }
        assert_eq!(h.len(), MAX_HISTORY_COMMANDS);
        assert_eq!(h.page(0, 1), vec!["cmd 5"]);
    }
}
