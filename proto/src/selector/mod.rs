//! Label selectors and hostname patterns for choosing machines in a fleet,
//! parsed and matched here once so that the control plane and every client
//! agree on what a selector means and which selectors are valid.
//!
//! A selector is a comma-separated list of terms, all of which must hold:
//!
//! | term              | holds when                                        |
//! | ----------------- | ------------------------------------------------- |
//! | `k=v`, `k==v`     | label `k` is present and equals `v`               |
//! | `k!=v`            | label `k` is absent, or present and not `v`       |
//! | `k in (a,b)`      | label `k` is present and is one of the values     |
//! | `k notin (a,b)`   | label `k` is absent, or present and none of them  |
//! | `k`               | label `k` is present (with any value)             |
//! | `!k`              | label `k` is absent                               |
//!
//! Whitespace is allowed around every token; an empty selector (or one of
//! only whitespace) has no terms and matches every machine.
//!
//! Keys are a name of 1 to 63 characters (letters, digits, `.`, `_`, `-`,
//! starting and ending with a letter or digit), optionally after a prefix
//! and a `/`: a lowercase DNS name of at most 253 characters, such as
//! `example.com/role`. Values in a selector are 1 to 63 characters of the
//! same set as names, starting and ending with a letter or digit: an empty
//! value cannot be written (`env=` is refused), so a label whose value is
//! empty is selected by its key alone (`k`), and it satisfies `k!=v` and
//! `k notin (…)`. Keys and values compare exactly, case included.
//!
//! A selector is at most [`MAX_SELECTOR_BYTES`] bytes long, both as written
//! and in its canonical form (what [`Selector`]'s `Display` prints), and
//! has at most [`MAX_TERMS`] terms.
//!
//! Hostnames are chosen separately, by a list of names and glob patterns:
//! [`parse_host_list`] reads `web-1,db-*`, [`hostname_matches`] tests one
//! pattern against one hostname.

#![warn(missing_docs)]

mod error;
mod hosts;
mod names;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

pub use error::SelectorError;
pub use hosts::{hostname_matches, parse_host_list};
pub use names::check_label;

use error::quoted;
use names::{check_key, check_name};

/// Longest selector accepted, in bytes, as written and in canonical form.
pub const MAX_SELECTOR_BYTES: usize = 4096;

/// Most terms one selector may have.
pub const MAX_TERMS: usize = 64;

/// A parsed label selector: terms that must all hold for a machine's labels.
///
/// Build one with [`Selector::parse`] (or `str::parse`), test labels with
/// [`Selector::matches`]; `Display` prints the canonical form, which parses
/// back to an equal selector. Two selectors are equal when they have the
/// same terms in the same order; sets are compared as sets (`k in (b,a,a)`
/// equals `k in (a,b)`). The default selector is empty and matches
/// everything.
///
/// ```
/// use std::collections::BTreeMap;
/// use cmdop_proto::selector::Selector;
///
/// let selector = Selector::parse("env in (staging, prod), !drain").unwrap();
/// let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
/// assert!(selector.matches(|key| labels.get(key).map(String::as_str)));
/// assert_eq!(selector.to_string(), "env in (prod,staging),!drain");
///
/// let error = Selector::parse("env=").unwrap_err();
/// assert!(error.to_string().starts_with("term 1 `env=`: a value is missing"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

/// One term: a key and what its label must satisfy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Term {
    key: String,
    test: Test,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Test {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    Absent,
}

impl Selector {
    /// Parses a selector such as `env=prod,tier in (web,api),!maintenance`.
    ///
    /// Fails with a [`SelectorError`] naming the term at fault (by number
    /// and text) and how to write it, or the limit exceeded.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        if input.len() > MAX_SELECTOR_BYTES {
            return Err(SelectorError::new(format!(
                "the selector is {} bytes, more than the {MAX_SELECTOR_BYTES} allowed; \
                 shorten it, for example by combining terms on one key into `key in (a,b)`",
                input.len()
            )));
        }
        if input.bytes().all(|b| b.is_ascii_whitespace()) {
            return Ok(Selector::default());
        }
        let pieces = split_terms(input);
        if pieces.len() > MAX_TERMS {
            return Err(SelectorError::new(format!(
                "the selector has {} terms, more than the {MAX_TERMS} allowed; \
                 combine terms on one key into `key in (a,b)`",
                pieces.len()
            )));
        }
        let count = pieces.len();
        let mut terms = Vec::with_capacity(count);
        for (index, &(start, text)) in pieces.iter().enumerate() {
            terms.push(parse_term(index + 1, count, start, text)?);
        }
        let selector = Selector { terms };
        let canonical = selector.to_string().len();
        if canonical > MAX_SELECTOR_BYTES {
            return Err(SelectorError::new(format!(
                "the selector is {canonical} bytes in canonical form (one term after another, \
                 `key in (a,b)` with a space each side of `in`), more than the \
                 {MAX_SELECTOR_BYTES} allowed; shorten it"
            )));
        }
        Ok(selector)
    }

    /// Whether every term holds for a machine's labels, given as a lookup:
    /// `labels(key)` returns the label's value, or `None` when the machine
    /// has no such label. An empty selector matches every machine.
    ///
    /// With labels in a map:
    /// `selector.matches(|k| map.get(k).map(String::as_str))`.
    pub fn matches<'v, L>(&self, labels: L) -> bool
    where
        L: Fn(&str) -> Option<&'v str>,
    {
        self.terms.iter().all(|term| {
            let value = labels(&term.key);
            match &term.test {
                Test::Equals(want) => value == Some(want.as_str()),
                Test::NotEquals(unwanted) => value != Some(unwanted.as_str()),
                Test::In(set) => value.is_some_and(|v| set.contains(v)),
                Test::NotIn(set) => !value.is_some_and(|v| set.contains(v)),
                Test::Exists => value.is_some(),
                Test::Absent => value.is_none(),
            }
        })
    }

    /// Whether the selector has no terms (and so matches every machine).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

/// The canonical form: terms joined by `,` without spaces, `k=v`, `k!=v`,
/// `k in (a,b)` and `k notin (a,b)` with each set's values sorted and
/// distinct, `k`, `!k`; the empty selector prints as the empty string.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, term) in self.terms.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            let key = &term.key;
            match &term.test {
                Test::Equals(value) => write!(f, "{key}={value}")?,
                Test::NotEquals(value) => write!(f, "{key}!={value}")?,
                Test::In(set) => write_set(f, key, "in", set)?,
                Test::NotIn(set) => write_set(f, key, "notin", set)?,
                Test::Exists => f.write_str(key)?,
                Test::Absent => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

fn write_set(
    f: &mut fmt::Formatter<'_>,
    key: &str,
    op: &str,
    set: &BTreeSet<String>,
) -> fmt::Result {
    write!(f, "{key} {op} (")?;
    for (index, value) in set.iter().enumerate() {
        if index > 0 {
            f.write_str(",")?;
        }
        f.write_str(value)?;
    }
    f.write_str(")")
}

/// Splits the input at commas outside parentheses, giving each piece with
/// its byte offset. A `)` without a `(` does not go below depth 0 (the
/// term parser reports it); an unclosed `(` keeps the rest in one piece
/// (reported as never closed).
fn split_terms(input: &str) -> Vec<(usize, &str)> {
    let mut pieces = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (at, byte) in input.bytes().enumerate() {
        match byte {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                pieces.push((start, &input[start..at]));
                start = at + 1;
            }
            _ => {}
        }
    }
    pieces.push((start, &input[start..]));
    pieces
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a str),
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    Open,
    Close,
    Comma,
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(word) => f.write_str(&quoted(word)),
            Tok::Equals => f.write_str("="),
            Tok::DoubleEquals => f.write_str("=="),
            Tok::NotEquals => f.write_str("!="),
            Tok::Bang => f.write_str("!"),
            Tok::Open => f.write_str("("),
            Tok::Close => f.write_str(")"),
            Tok::Comma => f.write_str(","),
        }
    }
}

/// A token and its byte offset in the whole selector.
#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    tok: Tok<'a>,
    at: usize,
}

fn is_punctuation(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',')
}

/// Tokens of one term; `base` is the term's offset in the selector. A word
/// is a run of anything but ASCII whitespace and `=!(),`, so that a stray
/// character shows up inside a word and is reported by the key or value
/// check with its offset.
fn lex(text: &str, base: usize) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let tok = match c {
            c if c.is_ascii_whitespace() => continue,
            '=' if chars.next_if(|&(_, c)| c == '=').is_some() => Tok::DoubleEquals,
            '=' => Tok::Equals,
            '!' if chars.next_if(|&(_, c)| c == '=').is_some() => Tok::NotEquals,
            '!' => Tok::Bang,
            '(' => Tok::Open,
            ')' => Tok::Close,
            ',' => Tok::Comma,
            _ => {
                let mut end = at + c.len_utf8();
                while let Some((next, c)) =
                    chars.next_if(|&(_, c)| !c.is_ascii_whitespace() && !is_punctuation(c))
                {
                    end = next + c.len_utf8();
                }
                Tok::Word(&text[at..end])
            }
        };
        tokens.push(Token { tok, at: base + at });
    }
    tokens
}

fn parse_term(
    number: usize,
    count: usize,
    start: usize,
    text: &str,
) -> Result<Term, SelectorError> {
    let shown = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let fail =
        |what: String| SelectorError::new(format!("term {number} `{}`: {what}", quoted(shown)));
    let tokens = lex(text, start);
    let Some(first) = tokens.first() else {
        let what = if number == count {
            "the selector ends with `,`; remove the trailing comma"
        } else if number == 1 {
            "the selector starts with `,`; remove the leading comma"
        } else {
            "there is nothing between two commas; remove one of them"
        };
        return Err(SelectorError::new(format!(
            "term {number} is empty (at byte {start}): {what}"
        )));
    };
    let tok = |index: usize| tokens.get(index).map(|token| token.tok);
    match first.tok {
        Tok::Bang => {
            let key = match tok(1) {
                Some(Tok::Word(key)) => key,
                None => {
                    return Err(fail(
                        "`!` needs a key after it; write `!KEY` to select machines without \
                         that label"
                            .to_string(),
                    ))
                }
                Some(other) => {
                    return Err(fail(format!(
                        "expected a key after `!`, found `{other}`; write `!KEY` to select \
                         machines without that label"
                    )))
                }
            };
            check_key(key, tokens[1].at).map_err(fail)?;
            match tok(2) {
                None => Ok(Term {
                    key: key.to_string(),
                    test: Test::Absent,
                }),
                Some(Tok::Equals | Tok::DoubleEquals | Tok::NotEquals) => {
                    let value = match tok(3) {
                        Some(Tok::Word(value)) => quoted(value),
                        _ => "VALUE".to_string(),
                    };
                    Err(fail(format!(
                        "`!` takes a key only, not a value; write `{key}!={value}` to select \
                         machines whose `{key}` is not `{value}`, or `!{key}` for machines \
                         without the key"
                    )))
                }
                Some(other) => Err(fail(format!(
                    "unexpected `{other}` after `!{key}`; `!` takes a key only, as in \
                     `!{key}`, and terms are separated by `,`"
                ))),
            }
        }
        Tok::Word(key) => {
            check_key(key, first.at).map_err(fail)?;
            let key_shown = quoted(key);
            let term = |test| Term {
                key: key.to_string(),
                test,
            };
            match tok(1) {
                None => Ok(term(Test::Exists)),
                Some(op @ (Tok::Equals | Tok::DoubleEquals | Tok::NotEquals)) => {
                    let value = match tok(2) {
                        Some(Tok::Word(value)) => value,
                        None => {
                            let other = if op == Tok::NotEquals {
                                format!("`!{key_shown}` to select machines without the key")
                            } else {
                                format!("`{key_shown}` to select machines that have the key")
                            };
                            return Err(fail(format!(
                                "a value is missing after `{op}`; write `{key_shown}{op}VALUE`, \
                                 or {other}"
                            )));
                        }
                        Some(other) => {
                            return Err(fail(format!(
                                "expected a value after `{op}`, found `{other}`; write \
                                 `{key_shown}{op}VALUE`"
                            )))
                        }
                    };
                    check_name(value, tokens[2].at, "value").map_err(fail)?;
                    if let Some(other) = tok(3) {
                        let hint = match (op, other) {
                            (Tok::NotEquals, Tok::Word(next)) => format!(
                                "; separate terms with `,`, or write \
                                 `{key_shown} notin ({},{next})` to exclude several values",
                                quoted(value)
                            ),
                            (_, Tok::Word(next)) => format!(
                                "; separate terms with `,`, or write \
                                 `{key_shown} in ({},{next})` to accept several values",
                                quoted(value)
                            ),
                            _ => "; separate terms with `,`".to_string(),
                        };
                        return Err(fail(format!("unexpected `{other}` after the value{hint}")));
                    }
                    let test = if op == Tok::NotEquals {
                        Test::NotEquals(value.to_string())
                    } else {
                        Test::Equals(value.to_string())
                    };
                    Ok(term(test))
                }
                Some(Tok::Word(op @ ("in" | "notin"))) => {
                    let set = parse_set(&tokens, &key_shown, op).map_err(fail)?;
                    Ok(term(if op == "in" {
                        Test::In(set)
                    } else {
                        Test::NotIn(set)
                    }))
                }
                Some(Tok::Word(word))
                    if word.eq_ignore_ascii_case("in") || word.eq_ignore_ascii_case("notin") =>
                {
                    Err(fail(format!(
                        "operators are lowercase; write `{key_shown} {} (a,b)`",
                        word.to_ascii_lowercase()
                    )))
                }
                Some(Tok::Word(word)) => Err(fail(format!(
                    "unexpected `{}` after the key; write `{key_shown}={}` to select that \
                     value, and separate terms with `,`",
                    quoted(word),
                    quoted(word)
                ))),
                Some(Tok::Bang) => Err(fail(format!(
                    "unexpected `!` after the key; write `{key_shown}!=VALUE`, with no space \
                     inside `!=`"
                ))),
                Some(Tok::Open) => Err(fail(format!(
                    "unexpected `(` after the key; write `{key_shown} in (a,b)` to accept any \
                     of several values"
                ))),
                Some(other) => Err(fail(format!(
                    "unexpected `{other}` after the key; write `{key_shown}=VALUE`, \
                     `{key_shown} in (a,b)` or `{key_shown}`"
                ))),
            }
        }
        Tok::Equals | Tok::DoubleEquals | Tok::NotEquals => Err(fail(format!(
            "the key is missing before `{}`; write `KEY{}VALUE`",
            first.tok, first.tok
        ))),
        Tok::Open => Err(fail(
            "a term cannot start with `(`; write `KEY in (a,b)`".to_string(),
        )),
        Tok::Close | Tok::Comma => Err(fail(format!(
            "unexpected `{}` at byte {}; a term starts with a key or `!`",
            first.tok, first.at
        ))),
    }
}

/// Parses `( value , … )` after `key in` / `key notin` (tokens 0 and 1)
/// and checks nothing follows the `)`.
fn parse_set(tokens: &[Token<'_>], key: &str, op: &str) -> Result<BTreeSet<String>, String> {
    let example = format!("`{key} {op} (a,b)`");
    let open_at = match tokens.get(2) {
        Some(Token { tok: Tok::Open, at }) => *at,
        None => return Err(format!("`{op}` needs a set of values; write {example}")),
        Some(Token {
            tok: Tok::Word(word),
            ..
        }) => {
            return Err(format!(
                "expected `(` after `{op}`, found `{}`; write `{key} {op} ({})`",
                quoted(word),
                quoted(word)
            ))
        }
        Some(other) => {
            return Err(format!(
                "expected `(` after `{op}`, found `{}`; write {example}",
                other.tok
            ))
        }
    };
    if !tokens[3..].iter().any(|token| token.tok == Tok::Close) {
        return Err(format!(
            "the `(` at byte {open_at} is never closed; write {example}"
        ));
    }
    let mut set = BTreeSet::new();
    let mut want_value = true;
    let mut index = 3;
    loop {
        let Some(token) = tokens.get(index) else {
            return Err(format!(
                "the `(` at byte {open_at} is never closed; write {example}"
            ));
        };
        match token.tok {
            Tok::Close if set.is_empty() => {
                return Err(format!(
                    "the set is empty; list at least one value, as in {example}"
                ))
            }
            Tok::Close if want_value => {
                return Err(format!(
                    "the set ends with `,` at byte {}; remove the trailing comma inside the \
                     parentheses",
                    tokens[index - 1].at
                ))
            }
            Tok::Close => break,
            Tok::Word(value) if want_value => {
                check_name(value, token.at, "value")?;
                set.insert(value.to_string());
                want_value = false;
            }
            Tok::Word(value) => {
                return Err(format!(
                    "expected `,` or `)` before `{}` at byte {}; values in a set are separated \
                     by `,`, as in {example}",
                    quoted(value),
                    token.at
                ))
            }
            Tok::Comma if want_value => {
                return Err(format!(
                    "a value is missing before the `,` at byte {}; values cannot be empty, \
                     write {example}",
                    token.at
                ))
            }
            Tok::Comma => want_value = true,
            Tok::Open => {
                return Err(format!(
                    "sets cannot be nested (`(` at byte {}); write {example}",
                    token.at
                ))
            }
            other => {
                return Err(format!(
                    "unexpected `{other}` at byte {} in the set; write {example}",
                    token.at
                ))
            }
        }
        index += 1;
    }
    if let Some(extra) = tokens.get(index + 1) {
        return Err(format!(
            "unexpected `{}` at byte {} after the set; separate terms with `,`",
            extra.tok, extra.at
        ));
    }
    Ok(set)
}
