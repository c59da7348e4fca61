//! What an API key may do: the operations a scoped key can be allowed, by
//! the names admins write (`cmdop admin create-key --allow exec,files:read`)
//! and the control plane stores. One table ([`OPERATIONS`]); every name and
//! every refusal's wording comes from it.
//!
//! A key's scope has two halves: these operations, and which machines (a
//! label selector over admin-set labels only, see [`crate::selector`]).
//! Keys created without a scope may do everything, as before scopes
//! existed.

use std::fmt;

/// One thing a key may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Run commands: Exec, ExecWithStdin, ExecFleet.
    Exec,
    /// The machine's shared terminal: attach, SendInput, SendResize,
    /// SendSignal, GetOutput, GetHistory, CreateSession, CloseSession. The
    /// official SDKs run commands by typing into it, so their keys need it.
    Shell,
    /// FileRead, FileListDirectory, FileGetInfo, Download.
    FilesRead,
    /// FileWrite, FileCreateDirectory, FileDelete, FileMove, FileCopy,
    /// Upload.
    FilesWrite,
    /// ListSessions.
    SessionsList,
    /// ListMachines.
    MachinesList,
}

/// Every operation: its name, and what a refusal says the key may not do.
pub const OPERATIONS: [(Operation, &str, &str); 6] = [
    (Operation::Exec, "exec", "run commands"),
    (
        Operation::Shell,
        "shell",
        "use machines' shells (attach, terminal input)",
    ),
    (Operation::FilesRead, "files:read", "read files"),
    (Operation::FilesWrite, "files:write", "write files"),
    (Operation::SessionsList, "sessions:list", "list sessions"),
    (Operation::MachinesList, "machines:list", "list machines"),
];

impl Operation {
    fn bit(self) -> u32 {
        1 << OPERATIONS
            .iter()
            .position(|(op, _, _)| *op == self)
            .unwrap_or(0)
    }

    /// Its name (`files:read`).
    pub fn name(self) -> &'static str {
        OPERATIONS
            .iter()
            .find(|(op, _, _)| *op == self)
            .map_or("", |(_, name, _)| name)
    }

    /// What a refusal says the key may not do (`read files`).
    pub fn doing(self) -> &'static str {
        OPERATIONS
            .iter()
            .find(|(op, _, _)| *op == self)
            .map_or("", |(_, _, doing)| doing)
    }

    /// The operation named `name`, if any.
    pub fn from_name(name: &str) -> Option<Operation> {
        OPERATIONS
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(op, _, _)| *op)
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Operations(u32);

/// A list of operations that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOperation(pub String);

impl fmt::Display for UnknownOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = OPERATIONS.iter().map(|(_, n, _)| *n).collect();
        if self.0.is_empty() {
            write!(
                f,
                "empty operation in the list; name some of: {}",
                names.join(", ")
            )
        } else {
            write!(
                f,
                "unknown operation '{}'; the operations are: {}",
                self.0,
                names.join(", ")
            )
        }
    }
}

impl std::error::Error for UnknownOperation {}

impl Operations {
    /// Every operation.
    pub fn all() -> Operations {
        Operations(OPERATIONS.iter().fold(0, |acc, (op, _, _)| acc | op.bit()))
    }

    /// No operation.
    pub fn none() -> Operations {
        Operations(0)
    }

    /// Parses a comma-separated list of names (`exec,files:read`); spaces
    /// around names are ignored. `*` alone means every operation.
    pub fn parse(text: &str) -> Result<Operations, UnknownOperation> {
        if text.trim() == "*" {
            return Ok(Operations::all());
        }
        let mut set = Operations::none();
        for name in text.split(',').map(str::trim) {
            let op = Operation::from_name(name).ok_or_else(|| UnknownOperation(name.into()))?;
            set = set.with(op);
        }
        Ok(set)
    }

    /// This set and `op`.
    pub fn with(self, op: Operation) -> Operations {
        Operations(self.0 | op.bit())
    }

    pub fn contains(self, op: Operation) -> bool {
        self.0 & op.bit() != 0
    }

    /// Every operation of `self` is in `other`.
    pub fn is_subset_of(self, other: Operations) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Operation> {
        OPERATIONS
            .iter()
            .map(|(op, _, _)| *op)
            .filter(move |op| self.contains(*op))
    }
}

/// Names in table order, comma-separated (`exec,files:read`); what
/// [`Operations::parse`] reads back.
impl fmt::Display for Operations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Operation::name).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_change() {
        let wire = [
            "exec",
            "shell",
            "files:read",
            "files:write",
            "sessions:list",
            "machines:list",
        ];
        let names: Vec<&str> = OPERATIONS.iter().map(|(_, n, _)| *n).collect();
        assert_eq!(names, wire);
    }

    #[test]
    fn parses_and_prints_lists() {
        let set = Operations::parse(" files:read , exec").unwrap();
        assert!(set.contains(Operation::Exec));
        assert!(set.contains(Operation::FilesRead));
        assert!(!set.contains(Operation::FilesWrite));
        assert_eq!(set.to_string(), "exec,files:read");
        assert_eq!(Operations::parse(&set.to_string()), Ok(set));
        assert_eq!(Operations::parse("*"), Ok(Operations::all()));
        assert_eq!(
            Operations::all().to_string(),
            "exec,shell,files:read,files:write,sessions:list,machines:list"
        );
        assert!(set.is_subset_of(Operations::all()));
        assert!(!Operations::all().is_subset_of(set));
    }

    #[test]
    fn refuses_unknown_and_empty_names() {
        let err = Operations::parse("exec,files:raed").unwrap_err();
        assert_eq!(err, UnknownOperation("files:raed".into()));
        assert!(err.to_string().contains("files:read"), "{err}");
        assert!(Operations::parse("").is_err());
        assert!(Operations::parse("exec,").is_err());
    }
}
