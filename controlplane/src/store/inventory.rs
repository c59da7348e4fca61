//! What the store knows of each machine beyond its identity: the facts its
//! agent last reported and its labels, by source. Agent labels are what a
//! machine declares about itself (replaced whenever it says them again);
//! admin labels are set with `cmdop admin label` and win over them. Access
//! rules must read admin labels only: a machine never widens its own access
//! by what it declares.

use std::collections::{BTreeMap, HashMap};

use anyhow::bail;
use cmdop_proto::limits::MAX_LABELS_PER_SOURCE;

use super::{engine::args, MachineRow, Store};

/// Facts a machine's agent reported when it last registered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
}

/// A machine's labels by source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    /// Declared by the machine's agent: shown and selectable, never trusted.
    pub agent: BTreeMap<String, String>,
    /// Set by an admin: win over agent labels of the same key.
    pub admin: BTreeMap<String, String>,
}

impl Labels {
    /// What selectors see: agent labels with admin labels over them.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let mut all = self.agent.clone();
        all.extend(self.admin.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }
}

/// One machine of the inventory.
#[derive(Debug, Clone)]
pub struct InventoryRow {
    pub machine: MachineRow,
    pub facts: Facts,
    pub labels: Labels,
}

/// Where a label comes from (the `source` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    Agent,
    Admin,
}

impl LabelSource {
    fn column(self) -> &'static str {
        match self {
            LabelSource::Agent => "agent",
            LabelSource::Admin => "admin",
        }
    }
}

impl Store {
    /// Records the facts a machine's agent reported.
    pub fn set_facts(&self, machine_id: &str, f: &Facts) -> anyhow::Result<()> {
        self.write(|db| {
            db.execute(
                "UPDATE machines SET os = $2, os_version = $3, kernel = $4, arch = $5,
                     cpu_count = $6, memory_bytes = $7, agent_version = $8
                 WHERE machine_id = $1",
                args![
                    machine_id,
                    &f.os,
                    &f.os_version,
                    &f.kernel,
                    &f.arch,
                    i64::from(f.cpu_count),
                    i64::try_from(f.memory_bytes).unwrap_or(i64::MAX),
                    &f.agent_version
                ],
            )?;
            Ok(())
        })
    }

    /// Replaces the labels a machine's agent declares (validated by the
    /// caller; at most [`MAX_LABELS_PER_SOURCE`]).
    pub fn set_agent_labels(
        &self,
        machine_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        if labels.len() > MAX_LABELS_PER_SOURCE {
            bail!("at most {MAX_LABELS_PER_SOURCE} labels per machine");
        }
        self.transaction(|db| {
            db.execute(
                "DELETE FROM machine_labels WHERE machine_id = $1 AND source = 'agent'",
                args![machine_id],
            )?;
            for (k, v) in labels {
                db.execute(
                    "INSERT INTO machine_labels (machine_id, source, key, value)
                     VALUES ($1, 'agent', $2, $3)",
                    args![machine_id, k, v],
                )?;
            }
            Ok(())
        })
    }

    /// Sets and removes admin labels of a machine; returns its admin labels
    /// after the change. `Ok(None)` when no such unrevoked machine exists.
    pub fn change_admin_labels(
        &self,
        machine_id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> anyhow::Result<Option<BTreeMap<String, String>>> {
        self.transaction(|db| {
            let exists = db
                .query_opt(
                    "SELECT 1 FROM machines WHERE machine_id = $1 AND revoked_ms IS NULL",
                    args![machine_id],
                )?
                .is_some();
            if !exists {
                return Ok(None);
            }
            for k in remove {
                db.execute(
                    "DELETE FROM machine_labels WHERE machine_id = $1 AND source = 'admin' AND key = $2",
                    args![machine_id, k],
                )?;
            }
            for (k, v) in set {
                db.execute(
                    "DELETE FROM machine_labels WHERE machine_id = $1 AND source = 'admin' AND key = $2",
                    args![machine_id, k],
                )?;
                db.execute(
                    "INSERT INTO machine_labels (machine_id, source, key, value)
                     VALUES ($1, 'admin', $2, $3)",
                    args![machine_id, k, v],
                )?;
            }
            let now = labels_of(db, machine_id, LabelSource::Admin)?;
            if now.len() > MAX_LABELS_PER_SOURCE {
                bail!(
                    "a machine may carry at most {MAX_LABELS_PER_SOURCE} admin labels; remove some with --remove KEY"
                );
            }
            // Admin labels decide what scoped keys reach: running servers
            // re-read them when this counter moves, as for revocations.
            super::bump_revocations(db)?;
            Ok(Some(now))
        })
    }

    /// Every unrevoked machine of a workspace with its facts and labels.
    pub fn inventory(&self, workspace_id: &str) -> anyhow::Result<Vec<InventoryRow>> {
        self.read(|db| {
            let mut rows: Vec<InventoryRow> = db
                .query(
                    "SELECT machine_id, hostname, workspace_id, last_seen_ms, enrolled_ms,
                            os, os_version, kernel, arch, cpu_count, memory_bytes, agent_version
                     FROM machines
                     WHERE workspace_id = $1 AND revoked_ms IS NULL
                     ORDER BY lower(hostname), machine_id",
                    args![workspace_id],
                )?
                .iter()
                .map(|r| {
                    Ok(InventoryRow {
                        machine: super::machine_row(r)?,
                        facts: Facts {
                            os: r.text(5)?,
                            os_version: r.text(6)?,
                            kernel: r.text(7)?,
                            arch: r.text(8)?,
                            cpu_count: u32::try_from(r.int(9)?).unwrap_or(0),
                            memory_bytes: u64::try_from(r.int(10)?).unwrap_or(0),
                            agent_version: r.text(11)?,
                        },
                        labels: Labels::default(),
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            let mut index: HashMap<String, usize> = HashMap::new();
            for (i, row) in rows.iter().enumerate() {
                index.insert(row.machine.machine_id.clone(), i);
            }
            for r in db.query(
                "SELECT l.machine_id, l.source, l.key, l.value
                 FROM machine_labels l JOIN machines m ON m.machine_id = l.machine_id
                 WHERE m.workspace_id = $1 AND m.revoked_ms IS NULL",
                args![workspace_id],
            )? {
                let Some(&i) = index.get(&r.text(0)?) else {
                    continue;
                };
                let labels = &mut rows[i].labels;
                let target = if r.text(1)? == LabelSource::Admin.column() {
                    &mut labels.admin
                } else {
                    &mut labels.agent
                };
                target.insert(r.text(2)?, r.text(3)?);
            }
            Ok(rows)
        })
    }

    /// A machine's admin labels (empty for an unknown machine).
    pub fn admin_labels(&self, machine_id: &str) -> anyhow::Result<BTreeMap<String, String>> {
        self.read(|db| labels_of(db, machine_id, LabelSource::Admin))
    }

    /// The admin labels of every unrevoked machine of a workspace that has
    /// any, by machine id.
    pub fn admin_labels_in(
        &self,
        workspace_id: &str,
    ) -> anyhow::Result<HashMap<String, BTreeMap<String, String>>> {
        self.read(|db| {
            let mut all: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            for r in db.query(
                "SELECT l.machine_id, l.key, l.value
                 FROM machine_labels l JOIN machines m ON m.machine_id = l.machine_id
                 WHERE m.workspace_id = $1 AND m.revoked_ms IS NULL AND l.source = 'admin'",
                args![workspace_id],
            )? {
                all.entry(r.text(0)?)
                    .or_default()
                    .insert(r.text(1)?, r.text(2)?);
            }
            Ok(all)
        })
    }

    /// Unrevoked machines whose id is `name`, or whose hostname is `name`
    /// (case-insensitively), in any workspace: (machine id, hostname,
    /// workspace name), for `cmdop admin` commands that name a machine.
    pub fn find_machines(&self, name: &str) -> anyhow::Result<Vec<(String, String, String)>> {
        self.read(|db| {
            db.query(
                "SELECT m.machine_id, m.hostname, w.name
                 FROM machines m JOIN workspaces w ON w.id = m.workspace_id
                 WHERE m.revoked_ms IS NULL AND (m.machine_id = $1 OR lower(m.hostname) = lower($1))
                 ORDER BY w.name, m.hostname",
                args![name],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
            .collect()
        })
    }
}

fn labels_of(
    db: &mut dyn super::engine::Exec,
    machine_id: &str,
    source: LabelSource,
) -> anyhow::Result<BTreeMap<String, String>> {
    db.query(
        "SELECT key, value FROM machine_labels WHERE machine_id = $1 AND source = $2",
        args![machine_id, source.column()],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?)))
    .collect()
}
