//! Label keys and values: which names a label and a selector may use,
//! checked with a message that points at the offending byte.

use super::error::{describe_char, quoted, SelectorError};

/// Longest key name (the part after any `prefix/`) and longest value.
const MAX_NAME_CHARS: usize = 63;
/// Longest key prefix (the DNS name before `/`).
const MAX_PREFIX_CHARS: usize = 253;

/// Whether `text` is non-empty and starts and ends with an ASCII letter
/// or digit.
fn alphanumeric_ends(text: &str) -> bool {
    let bytes = text.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric(),
        _ => false,
    }
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Hint for a character that is never allowed in keys and values.
fn char_hint(c: char) -> &'static str {
    match c {
        '"' | '\'' | '`' => "; keys and values are written without quotes",
        '*' | '?' => "; labels match exactly, globs are for hostnames only",
        ';' | '&' | '|' => "; separate terms with `,`",
        _ => "",
    }
}

/// Checks one label as a machine may carry it (`key=value`): the key as a
/// selector writes it, the value at most 63 characters of
/// `[A-Za-z0-9._-]` starting and ending with a letter or digit, or empty
/// (selected by `key`, `!key`, `key!=v`). The message names the label and
/// byte offsets count in `key=value`.
pub fn check_label(key: &str, value: &str) -> Result<(), SelectorError> {
    let fail = |m: String| SelectorError::new(format!("label `{}`: {m}", quoted(key)));
    if key.is_empty() {
        return Err(fail(
            "the key is empty; write KEY=VALUE, e.g. env=prod".into(),
        ));
    }
    check_key(key, 0).map_err(fail)?;
    if !value.is_empty() {
        check_name(value, key.len() + 1, "value").map_err(fail)?;
    }
    Ok(())
}

/// Checks a key (`name` or `prefix/name`) that starts at byte `at`.
pub(super) fn check_key(key: &str, at: usize) -> Result<(), String> {
    let (prefix, name, name_at) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name, at + prefix.len() + 1),
        None => (None, key, at),
    };
    if let Some(prefix) = prefix {
        if name.contains('/') {
            return Err(
                "a key has at most one `/`, between a DNS prefix and the name, as in \
                 `example.com/role`"
                    .to_string(),
            );
        }
        check_prefix(prefix, at)?;
        if name.is_empty() {
            return Err(format!(
                "the key name after `{}/` is missing; write `{}/role`",
                quoted(prefix),
                quoted(prefix)
            ));
        }
    }
    check_name(name, name_at, "key")
}

fn check_prefix(prefix: &str, at: usize) -> Result<(), String> {
    if prefix.is_empty() {
        return Err(
            "the prefix before `/` is empty; write a DNS name such as `example.com/role`, \
             or drop the `/`"
                .to_string(),
        );
    }
    if let Some((offset, c)) = prefix
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'))
    {
        let hint = if c.is_ascii_uppercase() {
            "; prefixes are lowercase DNS names"
        } else {
            char_hint(c)
        };
        return Err(format!(
            "{} at byte {} is not allowed in a key prefix, which is a DNS name of lowercase \
             letters, digits, `.` and `-` such as `example.com`{hint}",
            describe_char(c),
            at + offset
        ));
    }
    if prefix.len() > MAX_PREFIX_CHARS {
        return Err(format!(
            "the key prefix is {} characters, more than {MAX_PREFIX_CHARS}; use a shorter \
             DNS name",
            prefix.len()
        ));
    }
    if !prefix.split('.').all(alphanumeric_ends) {
        return Err(format!(
            "the key prefix `{}` is not a DNS name: its dot-separated parts must be non-empty \
             and start and end with a letter or digit, as in `example.com`",
            quoted(prefix)
        ));
    }
    Ok(())
}

/// Checks a key name (`what` = "key") or a value (`what` = "value").
pub(super) fn check_name(text: &str, at: usize, what: &str) -> Result<(), String> {
    if let Some((offset, c)) = text.char_indices().find(|&(_, c)| !is_label_char(c)) {
        let allowed = if what == "key" {
            "keys use letters, digits, `.`, `_` and `-`, with an optional DNS prefix and `/`"
        } else {
            "values use letters, digits, `.`, `_` and `-`"
        };
        return Err(format!(
            "{} at byte {} is not allowed in a {what}; {allowed}{}",
            describe_char(c),
            at + offset,
            char_hint(c)
        ));
    }
    if text.len() > MAX_NAME_CHARS {
        return Err(format!(
            "the {what} `{}` is {} characters, more than {MAX_NAME_CHARS}; shorten it",
            quoted(text),
            text.len()
        ));
    }
    if !alphanumeric_ends(text) {
        return Err(format!(
            "the {what} `{}` must start and end with a letter or digit; `.`, `_` and `-` \
             may appear only inside it",
            quoted(text)
        ));
    }
    Ok(())
}
