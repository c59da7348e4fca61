//! Host lists and hostname globs: which machines a list such as
//! `web-1,db-*` names.

use super::error::{describe_char, quoted, SelectorError};

/// Longest entry of a host list (a hostname is at most 253 characters).
const MAX_HOST_PATTERN_BYTES: usize = 253;

/// Whether `hostname` matches `pattern`, where `*` stands for any run of
/// characters (none included) and `?` for exactly one; every other
/// character stands for itself, ASCII letters in either case (hostnames are
/// case-insensitive). Runs in time proportional to the product of the
/// lengths at worst, whatever the pattern.
///
/// ```
/// use cmdop_proto::selector::hostname_matches;
///
/// assert!(hostname_matches("web-*", "WEB-12.example.com"));
/// assert!(hostname_matches("db-?", "db-3"));
/// assert!(!hostname_matches("db-?", "db-10"));
/// ```
pub fn hostname_matches(pattern: &str, hostname: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let hostname: Vec<char> = hostname.chars().collect();
    let (mut p, mut h) = (0, 0);
    // The last `*` seen and the hostname position it is matched up to: on
    // a mismatch, that `*` takes one more character and matching resumes.
    let mut star: Option<(usize, usize)> = None;
    while h < hostname.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, h));
                p += 1;
            }
            Some(&c) if c == '?' || c.eq_ignore_ascii_case(&hostname[h]) => {
                p += 1;
                h += 1;
            }
            _ => match star {
                Some((star_p, star_h)) => {
                    star = Some((star_p, star_h + 1));
                    p = star_p + 1;
                    h = star_h + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Splits a host list such as `web-1, web-2,db-*` at commas into its
/// entries (trimmed, empty ones dropped), each a hostname or a pattern for
/// [`hostname_matches`]. Fails when no entry is left, or when an entry has
/// a character other than letters, digits, `.`, `_`, `-`, `*` and `?` or
/// is longer than a hostname can be (253 bytes).
pub fn parse_host_list(input: &str) -> Result<Vec<String>, SelectorError> {
    let mut hosts = Vec::new();
    let mut start = 0;
    for piece in input.split(',') {
        let piece_at = start;
        start += piece.len() + 1;
        let leading = piece.len()
            - piece
                .trim_start_matches(|c: char| c.is_ascii_whitespace())
                .len();
        let entry = piece.trim_matches(|c: char| c.is_ascii_whitespace());
        if entry.is_empty() {
            continue;
        }
        let number = hosts.len() + 1;
        let entry_at = piece_at + leading;
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?');
        if let Some((offset, c)) = entry.char_indices().find(|&(_, c)| !allowed(c)) {
            let hint = if c.is_ascii_whitespace() {
                "; separate hosts with `,`"
            } else {
                ""
            };
            return Err(SelectorError::new(format!(
                "host {number} `{}`: {} at byte {} is not allowed; hosts and patterns use \
                 letters, digits, `.`, `_`, `-`, and `*` or `?` as wildcards, as in \
                 `web-1,db-*`{hint}",
                quoted(entry),
                describe_char(c),
                entry_at + offset
            )));
        }
        if entry.len() > MAX_HOST_PATTERN_BYTES {
            return Err(SelectorError::new(format!(
                "host {number} `{}`: it is {} characters, more than the \
                 {MAX_HOST_PATTERN_BYTES} of the longest hostname",
                quoted(entry),
                entry.len()
            )));
        }
        hosts.push(entry.to_string());
    }
    if hosts.is_empty() {
        return Err(SelectorError::new(
            "the host list is empty; name one or more hosts separated by `,`, as in \
             `web-1,web-2`, or a pattern such as `web-*`"
                .to_string(),
        ));
    }
    Ok(hosts)
}
