//! `cmdop admin create-key` with a scope, and `cmdop admin keys`: what a
//! key may do is checked here in the words of the flags, before the store
//! sees it.

use std::time::Duration;

use anyhow::{bail, Context};
use cmdop_controlplane::store::{KeyInfo, NewKey};
use cmdop_proto::{scope::Operations, selector::Selector};

use crate::fleet_cmd::{ago, now_ms};

/// The key `create-key` asked for.
pub fn new_key(
    name: String,
    allow: Option<String>,
    machines: Option<String>,
    expires: Option<Duration>,
) -> anyhow::Result<NewKey> {
    let allow = match allow {
        Some(text) => Some(Operations::parse(&text).with_context(|| format!("--allow '{text}'"))?),
        None => None,
    };
    let machines = match machines {
        Some(text) if text.trim().is_empty() => bail!(
            "--machines is empty; give a selector such as 'env=staging', or leave the flag out \
             for every machine"
        ),
        Some(text) => {
            Selector::parse(&text).with_context(|| format!("--machines '{text}'"))?;
            Some(text)
        }
        None => None,
    };
    let expires_ms =
        expires.map(|d| now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    Ok(NewKey {
        label: name,
        allow,
        machines,
        expires_ms,
    })
}

/// Prints keys as a table with a header, or as JSON lines.
pub fn print_keys(keys: &[KeyInfo], json: bool) -> anyhow::Result<()> {
    let now = now_ms();
    if json {
        for k in keys {
            println!("{}", key_json(k));
        }
        return Ok(());
    }
    if keys.is_empty() {
        println!("no keys; create one with `cmdop admin create-key --workspace NAME --name NAME`");
        return Ok(());
    }
    let rows: Vec<[String; 7]> = keys
        .iter()
        .map(|k| {
            [
                format!("{}…", k.prefix),
                if k.label.is_empty() {
                    "-".into()
                } else {
                    k.label.clone()
                },
                k.allow.clone().unwrap_or_else(|| "all".into()),
                k.machines.clone().unwrap_or_else(|| "all".into()),
                ago(now, k.created_ms),
                match (k.revoked_ms, k.expires_ms) {
                    (Some(at), _) => format!("revoked {}", ago(now, at)),
                    (None, Some(at)) if at <= now => format!("expired {}", ago(now, at)),
                    (None, Some(at)) => format!("expires {}", within(now, at)),
                    (None, None) => "active".into(),
                },
                k.last_used_ms
                    .map_or_else(|| "never".into(), |at| ago(now, at)),
            ]
        })
        .collect();
    let header = [
        "KEY",
        "NAME",
        "ALLOW",
        "MACHINES",
        "CREATED",
        "STATE",
        "LAST USED",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    Ok(())
}

fn key_json(k: &KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "prefix": k.prefix,
        "name": k.label,
        "allow": k.allow.as_deref().map_or_else(
            || Operations::all().iter().map(|op| op.name()).collect::<Vec<_>>(),
            |a| a.split(',').collect(),
        ),
        "machines": k.machines,
        "created_unix_ms": k.created_ms,
        "expires_unix_ms": k.expires_ms,
        "last_used_unix_ms": k.last_used_ms,
        "revoked_unix_ms": k.revoked_ms,
    })
}

/// "in 3 min", "in 29 d".
fn within(now_ms: i64, then_ms: i64) -> String {
    let secs = (then_ms - now_ms).max(0) / 1000;
    match secs {
        0..=59 => format!("in {secs} s"),
        60..=3599 => format!("in {} min", secs / 60),
        3600..=86_399 => format!("in {} h", secs / 3600),
        _ => format!("in {} d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_in_their_own_words() {
        let err = new_key("k".into(), Some("exec,teleport".into()), None, None).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("--allow 'exec,teleport'"), "{text}");
        assert!(text.contains("files:read"), "{text}");
        let err = new_key("k".into(), None, Some("env in (".into()), None).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("--machines 'env in ('"),
            "{err:#}"
        );
        assert!(new_key("k".into(), None, Some(" ".into()), None).is_err());
        let ok = new_key(
            "ci".into(),
            Some("exec".into()),
            Some("env=staging".into()),
            Some(Duration::from_secs(60)),
        )
        .unwrap();
        assert_eq!(ok.allow.unwrap().to_string(), "exec");
        assert!(ok.expires_ms.unwrap() > now_ms());
    }

    #[test]
    fn expiry_reads_like_a_person_would_say_it() {
        assert_eq!(within(0, 30_000), "in 30 s");
        assert_eq!(within(0, 30 * 86_400_000), "in 30 d");
    }
}
