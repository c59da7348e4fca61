//! Why a selector or a host list was refused, and how the input is quoted
//! back in those messages.

use std::fmt;

/// Longest piece of the input quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 60;

/// Why a selector or a host list was refused: what is wrong, where, and how
/// to write it instead, in one sentence fit to show a person as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    message: String,
}

impl SelectorError {
    pub(super) fn new(message: String) -> Self {
        SelectorError { message }
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SelectorError {}

/// Quotes user input in a message: at most [`MAX_QUOTED_CHARS`]
/// characters, control characters escaped.
pub(super) fn quoted(text: &str) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == MAX_QUOTED_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Describes one character for a message: printable ones as they are,
/// others by code point.
pub(super) fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("the character {}", c.escape_unicode())
    } else {
        format!("`{c}`")
    }
}
