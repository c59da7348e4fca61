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

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Longest selector accepted, in bytes, as written and in canonical form.
pub const MAX_SELECTOR_BYTES: usize = 4096;

/// Most terms one selector may have.
pub const MAX_TERMS: usize = 64;

/// Longest key name (the part after any `prefix/`) and longest value.
const MAX_NAME_CHARS: usize = 63;
/// Longest key prefix (the DNS name before `/`).
const MAX_PREFIX_CHARS: usize = 253;
/// Longest entry of a host list (a hostname is at most 253 characters).
const MAX_HOST_PATTERN_BYTES: usize = 253;
/// Longest piece of the input quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 60;

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

/// Why a selector or a host list was refused: what is wrong, where, and how
/// to write it instead, in one sentence fit to show a person as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    message: String,
}

impl SelectorError {
    fn new(message: String) -> Self {
        SelectorError { message }
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SelectorError {}

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

/// Quotes user input in a message: at most [`MAX_QUOTED_CHARS`]
/// characters, control characters escaped.
fn quoted(text: &str) -> String {
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
fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("the character {}", c.escape_unicode())
    } else {
        format!("`{c}`")
    }
}

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
    let fail = |m: String| SelectorError {
        message: format!("label `{}`: {m}", quoted(key)),
    };
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
fn check_key(key: &str, at: usize) -> Result<(), String> {
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
fn check_name(text: &str, at: usize, what: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {

    #[test]
    fn labels_are_checked_like_selector_terms_and_may_have_empty_values() {
        assert!(check_label("env", "prod").is_ok());
        assert!(check_label("example.com/role", "web-1").is_ok());
        assert!(check_label("env", "").is_ok());
        let err = check_label("", "x").unwrap_err().to_string();
        assert!(err.contains("the key is empty"), "{err}");
        let err = check_label("bad key", "x").unwrap_err().to_string();
        assert!(err.starts_with("label `bad key`:"), "{err}");
        assert!(check_label("env", "has space").is_err());
        assert!(check_label("env", "-dash").is_err());
        assert!(check_label("env", &"v".repeat(64)).is_err());
    }

    use super::*;
    use std::collections::BTreeMap;

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }
    fn term(key: &str, test: Test) -> Term {
        Term {
            key: key.to_string(),
            test,
        }
    }
    fn eq(key: &str, value: &str) -> Term {
        term(key, Test::Equals(value.to_string()))
    }
    fn ne(key: &str, value: &str) -> Term {
        term(key, Test::NotEquals(value.to_string()))
    }
    fn is_in(key: &str, values: &[&str]) -> Term {
        term(key, Test::In(set(values)))
    }
    fn not_in(key: &str, values: &[&str]) -> Term {
        term(key, Test::NotIn(set(values)))
    }
    fn has(key: &str) -> Term {
        term(key, Test::Exists)
    }
    fn lacks(key: &str) -> Term {
        term(key, Test::Absent)
    }

    fn valid_rows() -> Vec<(String, Vec<Term>)> {
        let key63 = format!("k{}", "x".repeat(61)) + "9";
        let value63 = "v".repeat(63);
        let prefix253 = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let many: Vec<String> = (0..MAX_TERMS).map(|i| format!("k{i}")).collect();
        let padded = format!("{:<width$}", "env=prod", width = MAX_SELECTOR_BYTES);
        vec![
            ("".into(), vec![]),
            ("   ".into(), vec![]),
            ("\t\n ".into(), vec![]),
            ("env=prod".into(), vec![eq("env", "prod")]),
            ("env==prod".into(), vec![eq("env", "prod")]),
            ("env!=prod".into(), vec![ne("env", "prod")]),
            (
                "env in (prod,staging)".into(),
                vec![is_in("env", &["prod", "staging"])],
            ),
            ("env notin (dev)".into(), vec![not_in("env", &["dev"])]),
            ("gpu".into(), vec![has("gpu")]),
            ("!gpu".into(), vec![lacks("gpu")]),
            ("! gpu".into(), vec![lacks("gpu")]),
            (
                " env = prod , tier != web ".into(),
                vec![eq("env", "prod"), ne("tier", "web")],
            ),
            ("env  ==  prod".into(), vec![eq("env", "prod")]),
            (
                "env in(prod, staging )".into(),
                vec![is_in("env", &["prod", "staging"])],
            ),
            (
                "env notin(  a ,b  )".into(),
                vec![not_in("env", &["a", "b"])],
            ),
            ("env in (b,a,b)".into(), vec![is_in("env", &["a", "b"])]),
            ("x in (a)".into(), vec![is_in("x", &["a"])]),
            (
                "example.com/role=db".into(),
                vec![eq("example.com/role", "db")],
            ),
            (
                "kubernetes.io/arch in (amd64,arm64)".into(),
                vec![is_in("kubernetes.io/arch", &["amd64", "arm64"])],
            ),
            ("a-b.c/x=y".into(), vec![eq("a-b.c/x", "y")]),
            (
                "!example.com/drain".into(),
                vec![lacks("example.com/drain")],
            ),
            ("a.b-c_d=x.y-z_0".into(), vec![eq("a.b-c_d", "x.y-z_0")]),
            ("Zone=EU-West".into(), vec![eq("Zone", "EU-West")]),
            ("1=2".into(), vec![eq("1", "2")]),
            ("in=notin".into(), vec![eq("in", "notin")]),
            ("notin notin (in)".into(), vec![not_in("notin", &["in"])]),
            ("in".into(), vec![has("in")]),
            (
                "env=prod,env=staging".into(),
                vec![eq("env", "prod"), eq("env", "staging")],
            ),
            (
                "\tenv=prod\n,\r\n!drain".into(),
                vec![eq("env", "prod"), lacks("drain")],
            ),
            (
                "a,!b,c=d,e!=f,g in (h),i notin (j),k==l".into(),
                vec![
                    has("a"),
                    lacks("b"),
                    eq("c", "d"),
                    ne("e", "f"),
                    is_in("g", &["h"]),
                    not_in("i", &["j"]),
                    eq("k", "l"),
                ],
            ),
            (
                "rack in (r1,r2), !maintenance".into(),
                vec![is_in("rack", &["r1", "r2"]), lacks("maintenance")],
            ),
            (format!("{key63}={value63}"), vec![eq(&key63, &value63)]),
            (
                format!("{prefix253}/{key63}"),
                vec![has(&format!("{prefix253}/{key63}"))],
            ),
            (many.join(","), many.iter().map(|k| has(k)).collect()),
            (padded, vec![eq("env", "prod")]),
        ]
    }

    fn invalid_rows() -> Vec<(String, &'static str)> {
        let long_prefix = format!("{}/role", "a".repeat(254));
        // 64 terms `k in(vvv…)` of 63 bytes: 4095 bytes as written, one byte
        // more per term in canonical form.
        let dense = vec![format!("k in({})", "v".repeat(57)); MAX_TERMS].join(",");
        assert!(dense.len() <= MAX_SELECTOR_BYTES);
        vec![
            ("env=".into(), "term 1 `env=`: a value is missing after `=`"),
            (
                "a=b,env=".into(),
                "term 2 `env=`: a value is missing after `=`",
            ),
            (
                "env!=".into(),
                "a value is missing after `!=`; write `env!=VALUE`, or `!env`",
            ),
            ("env==".into(), "a value is missing after `==`"),
            ("=prod".into(), "the key is missing before `=`"),
            ("!=prod".into(), "the key is missing before `!=`"),
            (
                "env=prod,".into(),
                "term 2 is empty (at byte 9): the selector ends with `,`",
            ),
            (",env=prod".into(), "the selector starts with `,`"),
            (
                "a,,b".into(),
                "term 2 is empty (at byte 2): there is nothing between two commas",
            ),
            (",".into(), "the selector starts with `,`"),
            (
                "!env=prod".into(),
                "`!` takes a key only, not a value; write `env!=prod`",
            ),
            ("!".into(), "`!` needs a key after it"),
            ("!!env".into(), "expected a key after `!`, found `!`"),
            ("!env prod".into(), "unexpected `prod` after `!env`"),
            ("env in ()".into(), "the set is empty"),
            ("env notin ( )".into(), "the set is empty"),
            ("env in (a,b".into(), "the `(` at byte 7 is never closed"),
            ("env in (a,b, x=y".into(), "is never closed"),
            (
                "env in a,b)".into(),
                "expected `(` after `in`, found `a`; write `env in (a)`",
            ),
            ("env in".into(), "`in` needs a set of values"),
            (
                "env in (a,,b)".into(),
                "a value is missing before the `,` at byte 10",
            ),
            (
                "env in (,a)".into(),
                "a value is missing before the `,` at byte 8",
            ),
            ("env in (a,)".into(), "the set ends with `,` at byte 9"),
            (
                "env in (a b)".into(),
                "expected `,` or `)` before `b` at byte 10",
            ),
            ("env in ((a))".into(), "sets cannot be nested"),
            (
                "env in (a)b".into(),
                "unexpected `b` at byte 10 after the set",
            ),
            (
                "env in (a),)".into(),
                "term 2 `)`: unexpected `)` at byte 11",
            ),
            ("env=prod)".into(), "unexpected `)` after the value"),
            ("env=prod staging".into(), "write `env in (prod,staging)`"),
            ("env!=a b".into(), "write `env notin (a,b)`"),
            (
                "env = = prod".into(),
                "expected a value after `=`, found `=`",
            ),
            (
                "env===prod".into(),
                "expected a value after `==`, found `=`",
            ),
            (
                "env IN (a)".into(),
                "operators are lowercase; write `env in (a,b)`",
            ),
            ("env NotIn (a)".into(), "write `env notin (a,b)`"),
            (
                "env prod".into(),
                "unexpected `prod` after the key; write `env=prod`",
            ),
            ("env ! = prod".into(), "unexpected `!` after the key"),
            ("env(a)".into(), "unexpected `(` after the key"),
            ("(a)".into(), "a term cannot start with `(`"),
            ("env=pr*d".into(), "`*` at byte 6 is not allowed in a value"),
            (
                "env=a?".into(),
                "labels match exactly, globs are for hostnames only",
            ),
            ("env=\"prod\"".into(), "written without quotes"),
            ("en$v=prod".into(), "`$` at byte 2 is not allowed in a key"),
            ("env=prød".into(), "`ø` at byte 6 is not allowed in a value"),
            ("env=a\u{7}b".into(), "the character \\u{7} at byte 5"),
            ("env=prod;tier=web".into(), "separate terms with `,`"),
            (
                "-env=prod".into(),
                "the key `-env` must start and end with a letter or digit",
            ),
            (
                "env_=prod".into(),
                "must start and end with a letter or digit",
            ),
            ("env=prod-".into(), "the value `prod-` must start and end"),
            ("env in (a,.b)".into(), "the value `.b` must start and end"),
            (
                format!("{}=v", "k".repeat(64)),
                "is 64 characters, more than 63",
            ),
            (format!("k={}", "v".repeat(64)), "the value `vvvv"),
            (
                long_prefix,
                "the key prefix is 254 characters, more than 253",
            ),
            (
                "Example.com/role=db".into(),
                "`E` at byte 0 is not allowed in a key prefix",
            ),
            (
                "ex_ample.com/role".into(),
                "`_` at byte 2 is not allowed in a key prefix",
            ),
            (
                "ex..com/role".into(),
                "the key prefix `ex..com` is not a DNS name",
            ),
            ("-ex.com/role".into(), "is not a DNS name"),
            ("a/b/c=d".into(), "a key has at most one `/`"),
            ("/role=db".into(), "the prefix before `/` is empty"),
            (
                "example.com/=db".into(),
                "the key name after `example.com/` is missing",
            ),
            ("example.com/-x".into(), "the key `-x` must start and end"),
            (
                vec!["k"; MAX_TERMS + 1].join(","),
                "has 65 terms, more than the 64 allowed",
            ),
            (
                " ".repeat(MAX_SELECTOR_BYTES + 1),
                "is 4097 bytes, more than the 4096 allowed",
            ),
            (dense, "bytes in canonical form"),
        ]
    }

    #[test]
    fn valid_selectors_parse_to_their_terms() {
        let rows = valid_rows();
        assert!(rows.len() >= 25);
        for (input, terms) in rows {
            let parsed = Selector::parse(&input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(parsed.terms, terms, "{input:?}");
            assert_eq!(parsed.is_empty(), terms.is_empty(), "{input:?}");
            assert_eq!(input.parse::<Selector>().as_ref(), Ok(&parsed));
        }
    }

    #[test]
    fn invalid_selectors_say_what_and_how() {
        let rows = invalid_rows();
        assert!(rows.len() >= 20);
        for (input, expected) in rows {
            match Selector::parse(&input) {
                Ok(parsed) => panic!("{input:?} was accepted as {parsed:?}"),
                Err(e) => {
                    let message = e.to_string();
                    assert!(
                        message.contains(expected),
                        "{input:?}: {message:?} lacks {expected:?}"
                    );
                    assert!(
                        message.len() < 600,
                        "{input:?}: message too long: {message}"
                    );
                }
            }
        }
    }

    #[test]
    fn error_messages_in_full() {
        let cases = [
            (
                "a=b, env=",
                "term 2 `env=`: a value is missing after `=`; write `env=VALUE`, or `env` \
                 to select machines that have the key",
            ),
            (
                "env=prod,",
                "term 2 is empty (at byte 9): the selector ends with `,`; remove the \
                 trailing comma",
            ),
            (
                "env=prod staging",
                "term 1 `env=prod staging`: unexpected `staging` after the value; separate \
                 terms with `,`, or write `env in (prod,staging)` to accept several values",
            ),
            (
                "env in (a,b",
                "term 1 `env in (a,b`: the `(` at byte 7 is never closed; write \
                 `env in (a,b)`",
            ),
            (
                "!env=prod",
                "term 1 `!env=prod`: `!` takes a key only, not a value; write `env!=prod` \
                 to select machines whose `env` is not `prod`, or `!env` for machines \
                 without the key",
            ),
            (
                "env=pr*d",
                "term 1 `env=pr*d`: `*` at byte 6 is not allowed in a value; values use \
                 letters, digits, `.`, `_` and `-`; labels match exactly, globs are for \
                 hostnames only",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(Selector::parse(input).unwrap_err().to_string(), expected);
        }
        assert_eq!(
            parse_host_list("web 1").unwrap_err().to_string(),
            "host 1 `web 1`: the character \\u{20} at byte 3 is not allowed; hosts and \
             patterns use letters, digits, `.`, `_`, `-`, and `*` or `?` as wildcards, as in \
             `web-1,db-*`; separate hosts with `,`"
        );
    }

    #[test]
    fn error_quotes_long_terms_briefly() {
        let input = format!("k={}!", "v".repeat(500));
        let message = Selector::parse(&input).unwrap_err().to_string();
        assert!(message.starts_with("term 1 `k=vvv"), "{message}");
        assert!(message.contains('…'), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn display_round_trips() {
        for (input, _) in valid_rows() {
            let parsed = Selector::parse(&input).unwrap();
            let shown = parsed.to_string();
            assert_eq!(
                Selector::parse(&shown).as_ref(),
                Ok(&parsed),
                "{input:?} -> {shown:?}"
            );
        }
    }

    #[test]
    fn display_is_canonical() {
        let cases = [
            ("", ""),
            (" env == prod ", "env=prod"),
            ("env!=prod", "env!=prod"),
            ("env in(b, a,b)", "env in (a,b)"),
            ("env notin ( x )", "env notin (x)"),
            ("  gpu ,! drain", "gpu,!drain"),
            ("example.com/role=db", "example.com/role=db"),
        ];
        for (input, canonical) in cases {
            assert_eq!(Selector::parse(input).unwrap().to_string(), canonical);
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
        let map = labels(pairs);
        Selector::parse(selector)
            .unwrap()
            .matches(|k| map.get(k).map(String::as_str))
    }

    #[test]
    fn every_operator_matches_as_documented() {
        let prod = [("env", "prod"), ("gpu", "")];
        let dev = [("env", "dev")];
        let none: [(&str, &str); 0] = [];
        // (selector, matches prod, matches dev, matches a machine without labels)
        let cases = [
            ("", true, true, true),
            ("env=prod", true, false, false),
            ("env==prod", true, false, false),
            ("env!=prod", false, true, true),
            ("env in (prod,staging)", true, false, false),
            ("env in (dev)", false, true, false),
            ("env notin (prod,staging)", false, true, true),
            ("env notin (dev)", true, false, true),
            ("env", true, true, false),
            ("!env", false, false, true),
            ("gpu", true, false, false),
            ("!gpu", false, true, true),
            ("gpu!=x", true, true, true),
            ("gpu notin (x)", true, true, true),
            ("gpu in (x)", false, false, false),
            ("env=prod,gpu", true, false, false),
            ("env,!gpu", false, true, false),
            ("env=prod,env=dev", false, false, false),
            ("Env=prod", false, false, false),
            ("env=Prod", false, false, false),
        ];
        for (selector, on_prod, on_dev, on_none) in cases {
            assert_eq!(
                matches(selector, &prod),
                on_prod,
                "{selector:?} on {prod:?}"
            );
            assert_eq!(matches(selector, &dev), on_dev, "{selector:?} on {dev:?}");
            assert_eq!(
                matches(selector, &none),
                on_none,
                "{selector:?} without labels"
            );
        }
    }

    #[test]
    fn matches_takes_any_lookup() {
        let selector = Selector::parse("example.com/role in (db,cache),!drain").unwrap();
        let lookup = |k: &str| (k == "example.com/role").then_some("db");
        assert!(selector.matches(lookup));
        assert!(!selector.matches(|_: &str| None));
        let owned: Vec<(String, String)> = vec![("example.com/role".into(), "cache".into())];
        assert!(selector.matches(|k| owned
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())));
    }

    #[test]
    fn error_is_a_std_error() {
        let error: Box<dyn std::error::Error> = Box::new(Selector::parse("=").unwrap_err());
        assert!(error.to_string().starts_with("term 1 `=`"));
    }

    /// xorshift64: a deterministic source of pseudo-random numbers.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Pieces of random selectors and their weights: mostly what selectors
    /// are made of, some separators of keys and values, a few characters
    /// that are never allowed.
    const PIECES: &[(&str, usize)] = &[
        ("a", 12),
        ("b", 8),
        ("e", 6),
        ("k", 6),
        ("x", 4),
        ("z", 2),
        ("0", 4),
        ("7", 3),
        ("=", 10),
        ("!", 6),
        (",", 10),
        ("(", 6),
        (")", 6),
        (" ", 12),
        (" in ", 6),
        (" notin ", 4),
        ("in", 2),
        ("notin", 1),
        ("-", 3),
        (".", 3),
        ("_", 2),
        ("/", 3),
        ("\t", 1),
        ("*", 1),
        ("é", 1),
        ("\"", 1),
        ("A", 2),
    ];

    impl XorShift {
        fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
            choices[self.below(choices.len())]
        }

        /// One piece of [`PIECES`], by weight.
        fn piece(&mut self) -> &'static str {
            let total: usize = PIECES.iter().map(|(_, w)| w).sum();
            let mut pick = self.below(total);
            for (piece, weight) in PIECES {
                if pick < *weight {
                    return piece;
                }
                pick -= weight;
            }
            unreachable!("the weights add up to `total`")
        }
    }

    /// A random string: half of them a soup of weighted pieces, half of
    /// them well-formed terms (every operator, sets, prefixes, whitespace)
    /// with a few pieces inserted or removed, so that accepted selectors
    /// of every shape come up as well as near misses.
    fn random_input(rng: &mut XorShift) -> String {
        let mut pieces: Vec<&str> = Vec::new();
        if rng.below(2) == 0 {
            for _ in 0..rng.below(24) {
                pieces.push(rng.piece());
            }
            return pieces.concat();
        }
        let keys = ["a", "env", "k0", "example.com/role", "in", "notin", "x.y-z"];
        let values = ["b", "prod", "0", "in", "v_1", "A.B"];
        let spaces = ["", "", " ", "  ", "\t"];
        for term in 0..1 + rng.below(4) {
            if term > 0 {
                pieces.extend([rng.pick(&spaces), ",", rng.pick(&spaces)]);
            }
            let key = rng.pick(&keys);
            match rng.below(6) {
                0 => pieces.push(key),
                1 => pieces.extend(["!", rng.pick(&spaces), key]),
                2 | 3 => {
                    let op = rng.pick(&["=", "==", "!="]);
                    let space = rng.pick(&spaces);
                    pieces.extend([key, space, op, space, rng.pick(&values)]);
                }
                _ => {
                    let op = rng.pick(&[" in ", " notin ", " in"]);
                    pieces.extend([key, op, "(", rng.pick(&spaces)]);
                    for value in 0..1 + rng.below(3) {
                        if value > 0 {
                            pieces.extend([",", rng.pick(&spaces)]);
                        }
                        pieces.push(rng.pick(&values));
                    }
                    pieces.extend([rng.pick(&spaces), ")"]);
                }
            }
        }
        for _ in 0..rng.below(3) {
            let at = rng.below(pieces.len() + 1);
            if rng.below(2) == 0 {
                pieces.insert(at, rng.piece());
            } else if at < pieces.len() {
                pieces.remove(at);
            }
        }
        pieces.concat()
    }

    #[test]
    fn random_input_never_panics_and_accepted_input_round_trips() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let map = labels(&[("a", "b"), ("k", "0"), ("e", "")]);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let input = random_input(&mut rng);
            let outcome = std::panic::catch_unwind(|| Selector::parse(&input));
            let Ok(result) = outcome else {
                panic!("parse panicked on {input:?}");
            };
            match result {
                Ok(selector) => {
                    accepted += 1;
                    let shown = selector.to_string();
                    let again = Selector::parse(&shown)
                        .unwrap_or_else(|e| panic!("{input:?} -> {shown:?} refused: {e}"));
                    assert_eq!(again, selector, "{input:?} -> {shown:?}");
                    assert_eq!(again.to_string(), shown, "{input:?}");
                    let _ = selector.matches(|k| map.get(k).map(String::as_str));
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
            let _ = parse_host_list(&input);
            let _ = hostname_matches(&input, "web-1.example.com");
        }
        // The generator must reach the accepting paths, not only errors.
        assert!(accepted > 5_000, "only {accepted} accepted");
    }

    #[test]
    fn globs_match_hostnames() {
        let cases = [
            ("web-1", "web-1", true),
            ("web-1", "web-2", false),
            ("WEB-1", "web-1", true),
            ("web-*", "WEB-17.Example.COM", true),
            ("web-*", "web-", true),
            ("web-*", "db-1", false),
            ("*", "", true),
            ("*", "anything.at.all", true),
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("web-?", "web-1", true),
            ("web-?", "web-", false),
            ("web-?", "web-12", false),
            ("w?b-*.ex?mple.com", "wEb-9.example.com", true),
            ("*.example.com", "db.example.com", true),
            ("*.example.com", "example.com", false),
            ("*-*-*", "a-b-c", true),
            ("*-*-*", "a-b", false),
            ("**a**", "xyza", true),
            ("*a", "aaab", false),
            ("a*b*c", "aXXbYYbZZc", true),
            ("a*b*c", "aXXbYYbZZ", false),
            ("db-??", "db-1", false),
        ];
        for (pattern, hostname, expected) in cases {
            assert_eq!(
                hostname_matches(pattern, hostname),
                expected,
                "{pattern:?} vs {hostname:?}"
            );
        }
    }

    #[test]
    fn globs_stay_fast_on_hostile_patterns() {
        let hostname = "a".repeat(253);
        let pattern = format!("{}b", "*a".repeat(60));
        let started = std::time::Instant::now();
        assert!(!hostname_matches(&pattern, &hostname));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn host_lists_split_trim_and_check() {
        assert_eq!(parse_host_list("web-1").unwrap(), ["web-1"]);
        assert_eq!(
            parse_host_list(" a, b ,web-*,,db-?.example.com, ").unwrap(),
            ["a", "b", "web-*", "db-?.example.com"]
        );
        let invalid = [
            ("", "the host list is empty"),
            (" , ,", "the host list is empty"),
            (
                "web 1",
                "host 1 `web 1`: the character \\u{20} at byte 3 is not allowed",
            ),
            ("web 1", "separate hosts with `,`"),
            ("a, b/c", "host 2 `b/c`: `/` at byte 4 is not allowed"),
            ("a,web[1]", "`[` at byte 5"),
            ("ok,é", "`é` at byte 3"),
        ];
        for (input, expected) in invalid {
            let message = parse_host_list(input).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{input:?}: {message:?} lacks {expected:?}"
            );
        }
        let long = "h".repeat(254);
        assert!(parse_host_list(&long)
            .unwrap_err()
            .to_string()
            .contains("more than the 253"));
        assert!(parse_host_list(&"h".repeat(253)).is_ok());
    }
}
