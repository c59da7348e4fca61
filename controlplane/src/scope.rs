//! A caller's scope: which operations its API key may use and which
//! machines it may see. Carried in the caller's [`Workspace`] (as the gate
//! found it), so every lookup of a machine or session on a client's behalf
//! filters by it without being told. Machines outside the scope are
//! invisible (as absent as another workspace's), never an error that names
//! them; an operation outside it is PERMISSION_DENIED naming what is missing.
//!
//! The machine half is a label selector over **admin labels only**: labels
//! a machine declares itself, its facts and its hostname never decide what
//! a key may reach, so no machine widens its own access by what it reports.
//!
//! [`Workspace`]: crate::store::Workspace

use std::{collections::BTreeMap, fmt, sync::Arc};

use cmdop_proto::{
    headers::{AUTH_ERROR, AUTH_ERROR_SCOPE},
    scope::{Operation, Operations},
    selector::Selector,
};
use tonic::Status;

/// What a key may do, and who it is.
#[derive(Debug)]
pub struct KeyScope {
    /// The key's name (its label, or its listed prefix when it has none),
    /// for refusals.
    pub key_name: String,
    /// Who is calling, for the audit trail: the key's name and listed
    /// prefix, and the token family when the call came with a token (never
    /// a secret).
    pub actor: String,
    pub ops: Operations,
    /// `None`: every machine of the workspace.
    pub machines: Option<Selector>,
}

/// What a caller may do: everything (an unscoped key, or the server's own
/// work), or what its key's [`KeyScope`] allows.
#[derive(Clone, Default)]
pub struct Scope(Option<Arc<KeyScope>>);

impl Scope {
    /// No limits.
    pub fn full() -> Scope {
        Scope(None)
    }

    /// The scope of a key as stored: `allow` (operation names) and
    /// `machines` (a selector), each `None` when the key is not limited
    /// that way; `actor` names the caller for the audit trail. A stored
    /// scope that no longer parses is an error: the key is refused rather
    /// than widened.
    pub fn from_stored(
        key_name: &str,
        actor: &str,
        allow: Option<&str>,
        machines: Option<&str>,
    ) -> anyhow::Result<Scope> {
        let ops = match allow {
            Some(text) => Operations::parse(text)
                .map_err(|e| anyhow::anyhow!("stored scope of key '{key_name}': {e}"))?,
            None => Operations::all(),
        };
        let machines = match machines {
            Some(text) => Some(
                Selector::parse(text)
                    .map_err(|e| anyhow::anyhow!("stored scope of key '{key_name}': {e}"))?,
            ),
            None => None,
        };
        Ok(Scope(Some(Arc::new(KeyScope {
            key_name: key_name.to_string(),
            actor: actor.to_string(),
            ops,
            machines,
        }))))
    }

    /// Who is calling, for the audit trail ("" for the server's own work).
    pub fn actor(&self) -> &str {
        self.key().map_or("", |k| k.actor.as_str())
    }

    /// The key's limits; `None` for the server's own work.
    pub fn key(&self) -> Option<&KeyScope> {
        self.0.as_deref()
    }

    pub fn allows(&self, op: Operation) -> bool {
        self.key().is_none_or(|k| k.ops.contains(op))
    }

    /// OK when `op` is allowed; otherwise PERMISSION_DENIED saying which
    /// key may not do what, and how to get a key that may.
    pub fn check(&self, op: Operation) -> Result<(), Status> {
        let Some(key) = self.key().filter(|k| !k.ops.contains(op)) else {
            return Ok(());
        };
        let allowed = if key.ops == Operations::none() {
            "nothing".to_string()
        } else {
            key.ops.to_string()
        };
        let mut status = Status::permission_denied(format!(
            "API key '{}' may not {} (its scope allows: {allowed}); use a key created with \
             `cmdop admin create-key --allow {}`",
            key.key_name,
            op.doing(),
            op.name()
        ));
        status.metadata_mut().insert(
            AUTH_ERROR,
            tonic::metadata::MetadataValue::from_static(AUTH_ERROR_SCOPE),
        );
        Err(status)
    }

    /// Whether the caller's key limits which machines it sees.
    pub fn limits_machines(&self) -> bool {
        self.key().is_some_and(|k| k.machines.is_some())
    }

    /// Whether a machine with these admin labels is in scope. `None`: its
    /// admin labels are not known yet (an agent that just connected): in
    /// scope only for keys that do not limit machines.
    pub fn sees(&self, admin_labels: Option<&BTreeMap<String, String>>) -> bool {
        match self.key().and_then(|k| k.machines.as_ref()) {
            None => true,
            Some(selector) => admin_labels
                .is_some_and(|labels| selector.matches(|k| labels.get(k).map(String::as_str))),
        }
    }

    /// The form forwarded to the replica that serves a call
    /// ([`cmdop_proto::headers::PEER_SCOPE`]); `None` for full access.
    pub fn to_header(&self) -> Option<String> {
        let key = self.key()?;
        let machines = key.machines.as_ref().map(|s| s.to_string());
        let text = format!(
            "{}\n{}\n{}\n{}",
            key.key_name,
            key.ops,
            machines.as_deref().unwrap_or("\u{0}"),
            key.actor
        );
        Some(hex::encode(text))
    }

    /// Reads [`Scope::to_header`]'s form back.
    pub fn from_header(header: &str) -> Result<Scope, String> {
        let text = hex::decode(header)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("not hex-encoded UTF-8")?;
        let mut parts = text.splitn(4, '\n');
        let (Some(name), Some(ops), Some(machines), Some(actor)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not four lines".into());
        };
        let ops = if ops.is_empty() {
            Operations::none()
        } else {
            Operations::parse(ops).map_err(|e| e.to_string())?
        };
        let machines = match machines {
            "\u{0}" => None,
            text => Some(Selector::parse(text).map_err(|e| e.to_string())?),
        };
        Ok(Scope(Some(Arc::new(KeyScope {
            key_name: name.to_string(),
            actor: actor.to_string(),
            ops,
            machines,
        }))))
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key() {
            None => f.write_str("Scope(full)"),
            Some(k) => write!(
                f,
                "Scope({}: {}; machines {})",
                k.key_name,
                k.ops,
                k.machines
                    .as_ref()
                    .map_or_else(|| "all".to_string(), |s| s.to_string())
            ),
        }
    }
}

/// Equal when they allow the same (compared by their forwarded form).
impl PartialEq for Scope {
    fn eq(&self, other: &Scope) -> bool {
        self.to_header() == other.to_header()
    }
}

impl Eq for Scope {}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unscoped_keys_may_do_everything() {
        let s = Scope::from_stored("k", "key k", None, None).unwrap();
        assert!(s.allows(Operation::FilesWrite));
        assert!(s.check(Operation::Shell).is_ok());
        assert!(!s.limits_machines());
        assert!(s.sees(None));
        assert_eq!(s.actor(), "key k");
        assert_eq!(Scope::full().to_header(), None);
    }

    #[test]
    fn operations_are_checked_with_a_message_naming_the_key() {
        let s = Scope::from_stored("ci-deploy", "a", Some("exec"), None).unwrap();
        assert!(s.check(Operation::Exec).is_ok());
        let refused = s.check(Operation::FilesRead).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused
                .message()
                .starts_with("API key 'ci-deploy' may not read files"),
            "{}",
            refused.message()
        );
        assert!(refused.message().contains("--allow files:read"));
        assert_eq!(
            refused.metadata().get(AUTH_ERROR).unwrap(),
            AUTH_ERROR_SCOPE
        );
        // Not limited by machine: sees even machines of unknown labels.
        assert!(s.sees(None));
    }

    #[test]
    fn machines_are_chosen_by_admin_labels_and_unknown_ones_are_hidden() {
        let s = Scope::from_stored("k", "a", None, Some("env=staging")).unwrap();
        assert!(s.allows(Operation::Shell));
        assert!(s.sees(Some(&labels(&[("env", "staging")]))));
        assert!(!s.sees(Some(&labels(&[("env", "prod")]))));
        assert!(!s.sees(None));
        // Negative selectors do not see machines whose labels are unknown.
        let not_prod = Scope::from_stored("k", "a", None, Some("env!=prod")).unwrap();
        assert!(not_prod.sees(Some(&labels(&[]))));
        assert!(!not_prod.sees(None));
    }

    #[test]
    fn the_forwarded_form_round_trips() {
        for (allow, machines) in [
            (
                Some("exec,files:read"),
                Some("env=staging,role in (web,api)"),
            ),
            (Some("exec"), None),
            (None, Some("!legacy")),
            (None, None),
        ] {
            let s =
                Scope::from_stored("name with spaces", "key n (cmdop_x)", allow, machines).unwrap();
            let back = Scope::from_header(&s.to_header().unwrap()).unwrap();
            assert_eq!(back, s);
            assert_eq!(back.key().unwrap().key_name, "name with spaces");
            assert_eq!(back.actor(), "key n (cmdop_x)");
        }
        assert!(Scope::from_header("zz").is_err());
        assert!(Scope::from_header(&hex::encode("only\ntwo")).is_err());
    }

    #[test]
    fn a_stored_scope_that_does_not_parse_is_refused() {
        assert!(Scope::from_stored("k", "a", Some("exec,teleport"), None).is_err());
        assert!(Scope::from_stored("k", "a", None, Some("env in (")).is_err());
    }
}
