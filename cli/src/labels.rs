//! `KEY=VALUE` label assignments from the command line (`cmdop agent
//! --label`, `cmdop admin label`), checked with the selector grammar's
//! rules so that every label can be selected.

use std::collections::BTreeMap;

use anyhow::bail;
use cmdop_proto::{
    limits::{FACT_LABEL_PREFIX, MAX_LABELS_PER_SOURCE},
    selector,
};

/// Parses `KEY=VALUE` items given with `flag`; empty items (a trailing
/// comma) are skipped. Errors name the item and say how to write it.
pub fn parse_assignments(items: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            bail!("{flag} {item}: write KEY=VALUE, e.g. {flag} env=prod");
        };
        let (key, value) = (key.trim(), value.trim());
        check_key(key, flag)?;
        if let Err(e) = selector::check_label(key, value) {
            bail!("{flag} {item}: {e}");
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            bail!("{flag}: the key {key} is given twice; keep one");
        }
    }
    if labels.len() > MAX_LABELS_PER_SOURCE {
        bail!("{flag}: at most {MAX_LABELS_PER_SOURCE} labels per machine");
    }
    Ok(labels)
}

/// A key that may be set: valid, and not in the reserved facts prefix.
pub fn check_key(key: &str, flag: &str) -> anyhow::Result<()> {
    if key.starts_with(FACT_LABEL_PREFIX) {
        bail!(
            "{flag} {key}: the prefix {FACT_LABEL_PREFIX} is reserved for the facts cmdop reports; pick another key"
        );
    }
    if let Err(e) = selector::check_label(key, "x") {
        bail!("{flag} {key}: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(items: &[&str]) -> anyhow::Result<BTreeMap<String, String>> {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        parse_assignments(&items, "--label")
    }

    #[test]
    fn assignments_parse_and_bad_ones_say_how_to_write_them() {
        let ok = parse(&["env=prod", " role=web ", "", "empty="]).unwrap();
        assert_eq!(ok.get("env").map(String::as_str), Some("prod"));
        assert_eq!(ok.get("role").map(String::as_str), Some("web"));
        assert_eq!(ok.get("empty").map(String::as_str), Some(""));
        let err = parse(&["env"]).unwrap_err().to_string();
        assert!(err.contains("write KEY=VALUE"), "{err}");
        let err = parse(&["cmdop.io/os=linux"]).unwrap_err().to_string();
        assert!(err.contains("reserved"), "{err}");
        let err = parse(&["env=prod", "env=dev"]).unwrap_err().to_string();
        assert!(err.contains("given twice"), "{err}");
        assert!(parse(&["bad key=x"]).is_err());
        assert!(parse(&["k=has space"]).is_err());
    }
}
