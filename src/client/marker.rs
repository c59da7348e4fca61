//! The official "marker" technique for running a command over a session's
//! terminal when the server has no native exec.
//!
//! We type one line into the shell:
//!
//! ```text
//!  printf '\n<<CMD:%s:START>>\n' ID; ( eval 'COMMAND' ); printf '\n<<CMD:%s:END:%d>>\n' ID "$?"
//! ```
//!
//! and read the terminal output until the END marker appears. Unlike the
//! official SDKs we pass the id as a printf *argument*, so the terminal's echo
//! of the typed line never contains a complete marker; that removes the need
//! to guess which lines are echo or prompt. The command goes through `eval`
//! in single quotes so that a trailing `# comment`, a `&` or a newline in it
//! cannot swallow the END marker, and in a subshell so that, as with native
//! exec, an `exit` ends the command rather than the session's shell (and
//! `cd` does not leak into later commands). The leading space keeps the line out of
//! shell history where `HISTCONTROL=ignorespace` is set.
//!
//! [`MarkerScanner`] turns the raw terminal bytes into the command's output:
//! everything between the START and END markers, with the terminal's `\r\n`
//! turned back into `\n`, and the exit code from the END marker.

/// Upper bound of the bytes kept while waiting for the START marker.
const MAX_PRESTART_BYTES: usize = 64 * 1024;

/// A random 12-hex-digit marker id.
pub fn new_marker_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The line to send with SendInput (terminated by `\n`).
pub fn marker_command_line(id: &str, command: &str) -> String {
    let quoted = command.replace('\'', r"'\''");
    format!(
        " printf '\\n<<CMD:%s:START>>\\n' {id}; ( eval '{quoted}' ); printf '\\n<<CMD:%s:END:%d>>\\n' {id} \"$?\"\n"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Looking for `<<CMD:id:START>>`.
    BeforeStart,
    /// Marker seen; skipping the newline printf put after it.
    AfterStart,
    /// Passing the command's output through, looking for the END marker.
    Body,
    /// END marker parsed.
    Done(i32),
}

/// A line that prints `<<CMD:id:IDLE>>` once the shell reads it: typed
/// after interrupting a command to learn whether the shell is back at its
/// prompt (and a SIGKILL is unnecessary).
pub fn idle_probe_line(id: &str) -> String {
    format!(" printf '<<CMD:%s:IDLE>>\\n' {id}\n")
}

/// The text [`idle_probe_line`] makes the shell print.
pub fn idle_marker(id: &str) -> Vec<u8> {
    format!("<<CMD:{id}:IDLE>>").into_bytes()
}

/// Incremental parser of terminal output produced by [`marker_command_line`].
#[derive(Debug)]
pub struct MarkerScanner {
    start_marker: Vec<u8>,
    /// `\n<<CMD:id:END:` — printf's leading newline belongs to the marker.
    end_prefix: Vec<u8>,
    phase: Phase,
    /// Raw bytes not yet classified.
    pending: Vec<u8>,
}

impl MarkerScanner {
    pub fn new(id: &str) -> MarkerScanner {
        MarkerScanner {
            start_marker: format!("<<CMD:{id}:START>>").into_bytes(),
            end_prefix: format!("\n<<CMD:{id}:END:").into_bytes(),
            phase: Phase::BeforeStart,
            pending: Vec::new(),
        }
    }

    /// True once the START marker was seen (the command has begun).
    #[cfg(test)]
    pub fn started(&self) -> bool {
        self.phase != Phase::BeforeStart
    }

    /// The exit code, once the END marker was seen.
    #[cfg(test)]
    pub fn exit_code(&self) -> Option<i32> {
        match self.phase {
            Phase::Done(code) => Some(code),
            _ => None,
        }
    }

    /// Feed raw terminal bytes; the command's output found in them is
    /// appended to `out`. Returns the exit code once the END marker is
    /// complete; later input is ignored.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Option<i32> {
        if let Phase::Done(code) = self.phase {
            return Some(code);
        }
        self.pending.extend_from_slice(data);
        loop {
            match self.phase {
                Phase::BeforeStart => match find(&self.pending, &self.start_marker) {
                    Some(at) => {
                        self.pending.drain(..at + self.start_marker.len());
                        self.phase = Phase::AfterStart;
                    }
                    None => {
                        let keep = (self.start_marker.len() - 1).min(MAX_PRESTART_BYTES);
                        let cut = self.pending.len().saturating_sub(keep);
                        self.pending.drain(..cut);
                        return None;
                    }
                },
                Phase::AfterStart => {
                    if self.pending.starts_with(b"\r\n") {
                        self.pending.drain(..2);
                    } else if self.pending.starts_with(b"\n") {
                        self.pending.drain(..1);
                    } else if self.pending.as_slice() == b"\r" || self.pending.is_empty() {
                        return None; // wait for the rest of the newline
                    }
                    self.phase = Phase::Body;
                }
                Phase::Body => return self.scan_body(out),
                Phase::Done(code) => return Some(code),
            }
        }
    }

    fn scan_body(&mut self, out: &mut Vec<u8>) -> Option<i32> {
        // Normalise CRLF in place, holding back a trailing '\r' whose '\n'
        // may arrive with the next chunk.
        let held_cr = self.pending.last() == Some(&b'\r');
        let body_end = if held_cr {
            self.pending.len() - 1
        } else {
            self.pending.len()
        };
        let mut body = Vec::with_capacity(body_end);
        let mut i = 0;
        while i < body_end {
            let b = self.pending[i];
            if b == b'\r' && self.pending.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            body.push(b);
            i += 1;
        }

        let mut from = 0;
        while let Some(rel) = find(&body[from..], &self.end_prefix) {
            let at = from + rel;
            match parse_exit_code(&body[at + self.end_prefix.len()..]) {
                Tail::Complete(code) => {
                    out.extend_from_slice(&body[..at]);
                    self.pending.clear();
                    self.phase = Phase::Done(code);
                    return Some(code);
                }
                Tail::Incomplete => {
                    // Emit what precedes the possible marker and keep the rest.
                    out.extend_from_slice(&body[..at]);
                    let mut rest = body[at..].to_vec();
                    if held_cr {
                        rest.push(b'\r');
                    }
                    self.pending = rest;
                    return None;
                }
                Tail::Invalid => from = at + 1, // just output that looks alike
            }
        }

        // Keep back the longest suffix that could start the END marker.
        let keep = longest_suffix_prefix(&body, &self.end_prefix);
        let emit = body.len() - keep;
        out.extend_from_slice(&body[..emit]);
        let mut rest = body[emit..].to_vec();
        if held_cr {
            rest.push(b'\r');
        }
        self.pending = rest;
        None
    }
}

enum Tail {
    Complete(i32),
    Incomplete,
    Invalid,
}

/// Classifies what follows the END prefix: `123>>` is complete, a prefix of
/// that shape is incomplete, anything else is not our marker.
fn parse_exit_code(tail: &[u8]) -> Tail {
    let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 9 {
        return Tail::Invalid;
    }
    let rest = &tail[digits..];
    if rest.is_empty() || rest == b">" {
        return Tail::Incomplete;
    }
    if digits == 0 || !rest.starts_with(b">>") {
        return Tail::Invalid;
    }
    match std::str::from_utf8(&tail[..digits])
        .ok()
        .and_then(|d| d.parse().ok())
    {
        Some(code) => Tail::Complete(code),
        None => Tail::Invalid,
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest suffix of `data` that is a proper prefix of `pat`.
fn longest_suffix_prefix(data: &[u8], pat: &[u8]) -> usize {
    let max = (pat.len() - 1).min(data.len());
    (1..=max)
        .rev()
        .find(|&n| data[data.len() - n..] == pat[..n])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a bash on a PTY prints for one marker line (echo, prompt, CRLF).
    fn terminal_transcript(id: &str, command: &str, output: &str, code: i32) -> Vec<u8> {
        let line = marker_command_line(id, command);
        let mut t = String::new();
        t.push_str("user@host:~$ ");
        t.push_str(&line.replace('\n', "\r\n")); // echo of the typed line
        t.push_str(&format!("\r\n<<CMD:{id}:START>>\r\n"));
        t.push_str(&output.replace('\n', "\r\n"));
        t.push_str(&format!("\r\n<<CMD:{id}:END:{code}>>\r\n"));
        t.push_str("user@host:~$ ");
        t.into_bytes()
    }

    fn scan_all(id: &str, data: &[u8], chunk: usize) -> (Vec<u8>, Option<i32>) {
        let mut s = MarkerScanner::new(id);
        let mut out = Vec::new();
        let mut code = None;
        for c in data.chunks(chunk.max(1)) {
            code = s.push(c, &mut out);
        }
        (out, code)
    }

    #[test]
    fn command_line_quotes_and_never_contains_a_full_marker() {
        let line = marker_command_line("abc", "echo 'hi' # note");
        assert!(line.starts_with(' ') && line.ends_with('\n'));
        assert!(
            line.contains(r#"( eval 'echo '\''hi'\'' # note' );"#),
            "{line}"
        );
        let probe = idle_probe_line("abc");
        assert!(!probe.contains("<<CMD:abc:IDLE>>") && probe.ends_with('\n'));
        assert!(!line.contains("<<CMD:abc:START>>"));
        assert!(!line.contains("<<CMD:abc:END:"));
    }

    #[test]
    fn extracts_output_and_exit_code_from_every_chunking() {
        let t = terminal_transcript("0a1b2c", "ls", "a\nb b\n", 3);
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            let (out, code) = scan_all("0a1b2c", &t, chunk);
            assert_eq!(code, Some(3), "chunk {chunk}");
            assert_eq!(String::from_utf8_lossy(&out), "a\nb b\n", "chunk {chunk}");
        }
    }

    #[test]
    fn output_without_trailing_newline_and_empty_output() {
        let t = terminal_transcript("id1", "printf x", "x", 0);
        assert_eq!(scan_all("id1", &t, 5), (b"x".to_vec(), Some(0)));
        let t = terminal_transcript("id2", "true", "", 0);
        assert_eq!(scan_all("id2", &t, 1), (Vec::new(), Some(0)));
    }

    #[test]
    fn prompt_like_lines_inside_the_output_are_kept() {
        let t = terminal_transcript("id3", "cat f", "root@box:/# not a prompt\n", 1);
        let (out, code) = scan_all("id3", &t, 4);
        assert_eq!(code, Some(1));
        assert_eq!(String::from_utf8_lossy(&out), "root@box:/# not a prompt\n");
    }

    #[test]
    fn lone_carriage_returns_are_program_output() {
        let t = terminal_transcript("id4", "progress", "10%\r100%\n", 0);
        assert_eq!(scan_all("id4", &t, 3).0, b"10%\r100%\n".to_vec());
    }

    #[test]
    fn markers_of_other_ids_and_partial_markers_are_output() {
        let t = terminal_transcript("mine", "x", "<<CMD:other:END:0>>\n<<CMD:mine:END:x>>\n", 7);
        let (out, code) = scan_all("mine", &t, 2);
        assert_eq!(code, Some(7));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<<CMD:other:END:0>>\n<<CMD:mine:END:x>>\n"
        );
    }

    #[test]
    fn incomplete_output_is_delivered_as_it_comes() {
        let mut s = MarkerScanner::new("z");
        let mut out = Vec::new();
        assert_eq!(
            s.push(b"$ echo\r\n<<CMD:z:START>>\r\npart one\r\n", &mut out),
            None
        );
        assert!(s.started());
        assert_eq!(out, b"part one".to_vec()); // the newline may belong to END
        assert_eq!(s.push(b"more", &mut out), None);
        assert_eq!(out, b"part one\nmore".to_vec());
        assert_eq!(s.push(b"\r\n<<CMD:z:END:12", &mut out), None);
        assert_eq!(s.push(b"5>>\r\n$ ", &mut out), Some(125));
        assert_eq!(out, b"part one\nmore".to_vec());
        assert_eq!(s.exit_code(), Some(125));
    }

    #[test]
    fn garbage_before_start_is_bounded() {
        let mut s = MarkerScanner::new("q");
        let mut out = Vec::new();
        for _ in 0..1000 {
            s.push(&[b'x'; 1000], &mut out);
        }
        assert!(s.pending.len() < 64);
        assert!(out.is_empty() && !s.started());
    }

    #[test]
    fn ids_are_twelve_hex_digits() {
        let id = new_marker_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
