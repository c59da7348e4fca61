//! Enrollment tokens for the simulated agents, minted straight into the
//! control plane's store (SQLite or a cluster's PostgreSQL).

use anyhow::Context;
use cmdop_controlplane::store::Store;

/// Opens the control plane's store: the SQLite one in `data_dir`, or the
/// cluster's PostgreSQL database at `database`.
fn open_store(data_dir: &std::path::Path, database: Option<&str>) -> anyhow::Result<Store> {
    Store::open_at(data_dir, database).with_context(|| match database {
        Some(_) => "cannot open the control plane's PostgreSQL database".to_string(),
        None => format!(
            "cannot open the control plane's state in {}",
            data_dir.display()
        ),
    })
}

/// Mints `n` one-time enrollment tokens for `workspace`.
pub fn mint_tokens(
    data_dir: &std::path::Path,
    database: Option<&str>,
    workspace: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let store = open_store(data_dir, database)?;
    let ws = store.workspace_by_name(workspace)?.with_context(|| {
        format!("no workspace named '{workspace}' in the control plane's store")
    })?;
    (0..n)
        .map(|_| store.create_enrollment_token(&ws.id))
        .collect()
}
