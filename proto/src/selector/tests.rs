//! Tests of the selector grammar, labels and host lists: parsing, the
//! canonical form, matching and the error messages.

use super::*;
use std::collections::BTreeMap;

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
