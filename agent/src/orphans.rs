//! Commands die with the agent.
//!
//! Three mechanisms, because none covers everything alone:
//!
//! * each command's shell gets `PR_SET_PDEATHSIG(SIGKILL)` before `exec`, so
//!   the kernel kills it the moment the agent dies, even by SIGKILL;
//! * each running command has a record (`<pid> <start time>`) in a file
//!   of a directory next to the agent's state file (files are reused: a
//!   blank one is free). Sweeping it kills the process group of every
//!   command a dead agent left behind (grandchildren such as
//!   `sh -c 'a; b'`'s children do not get the death signal). The start
//!   time (field 22 of `/proc/<pid>/stat`) is compared first, so a pid the
//!   kernel has since given to an unrelated process is never signalled;
//! * a small reaper process ([`start_reaper`], [`reap_when_closed`]) holds
//!   the read end of a pipe only the agent writes to: when the agent dies,
//!   however it dies, the pipe closes and the reaper sweeps at once, so the
//!   commands die within moments even if the agent never comes back. A
//!   restarted agent sweeps too, as the second line (the reaper itself may
//!   have been killed with the agent).

use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};

use parking_lot::Mutex;

use nix::{sys::signal::Signal, unistd::Pid};

/// Where this agent process records its running commands; unset (no
/// records) in embeddings that never call [`init`].
static DIR: OnceLock<PathBuf> = OnceLock::new();

/// The record directory for the agent whose state file is `state_file`.
pub fn dir_for(state_file: &Path) -> PathBuf {
    let mut dir = state_file.to_path_buf().into_os_string();
    dir.push(".pids");
    PathBuf::from(dir)
}

/// Kills what an earlier agent with the same state file left running, then
/// records this agent's commands in `dir`. Returns how many process groups
/// were killed.
pub fn init(dir: &Path) -> usize {
    let killed = sweep(dir);
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e,
            "cannot record running commands; commands left by a killed agent will not be cleaned up on restart");
        return killed;
    }
    let _ = DIR.set(dir.to_path_buf());
    killed
}

/// Kills the process group of every command recorded in `dir` whose leader
/// is gone or still the recorded process; removes the record files (blank
/// ones too).
pub fn sweep(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some((pid, start)) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| parse_record(&s))
        {
            if kill_left_behind(pid, start) {
                killed += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    crate::metrics::orphans_reaped(killed);
    if killed > 0 {
        tracing::warn!(
            groups = killed,
            "killed commands left running by an agent that did not shut down cleanly"
        );
    }
    killed
}

/// Starts the reaper: `argv` (a program and its arguments, to which `dir`
/// is appended) that runs [`reap_when_closed`] on `dir`, in a process
/// group of its own (a terminal's Ctrl-C meant for the agent does not reach
/// it), its stdin a pipe whose only write end this process keeps open until
/// it exits. Every other descriptor of the pipe is close-on-exec, so no
/// command inherits it and holds the reaper back.
pub fn start_reaper(argv: &[std::ffi::OsString], dir: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut child = std::process::Command::new(program)
        .args(args)
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        // It needs nothing of the agent's environment (its secrets least).
        .env_clear()
        .process_group(0)
        .spawn()?;
    static WRITE_END: OnceLock<std::process::ChildStdin> = OnceLock::new();
    if let Some(pipe) = child.stdin.take() {
        let _ = WRITE_END.set(pipe);
    }
    // Never waited for: it exits after this process, and init reaps it.
    drop(child);
    Ok(())
}

/// The reaper's whole life: waits until its stdin reaches end of file (the
/// agent that started it is gone), then kills what the agent left running
/// in `dir` ([`sweep`]). Returns how many process groups it killed.
pub fn reap_when_closed(dir: &Path) -> usize {
    use std::io::Read;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sweep(dir)
}

fn parse_record(s: &str) -> Option<(i32, u64)> {
    let mut it = s.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    (pid > 1).then_some((pid, start))
}

/// Kills process group `pid` if it is the one recorded. While any member
/// of a process group lives, its id is not handed out as a new pid; so if
/// no process `pid` exists, whatever group `pid` still has is ours.
fn kill_left_behind(pid: i32, recorded_start: u64) -> bool {
    match start_time(pid) {
        Some(start) if start != recorded_start => return false, // a recycled pid
        _ => {}
    }
    nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
}

/// Field 22 (`starttime`, clock ticks since boot) of `/proc/<pid>/stat`.
pub fn start_time(pid: i32) -> Option<u64> {
    use std::io::Read;
    // One read into a buffer that holds the whole line (the kernel makes
    // it at once), not read_to_string's stat and growing reads.
    let mut buf = [0u8; 1024];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = file.read(&mut buf).ok()?;
    let long;
    let stat = if n < buf.len() {
        std::str::from_utf8(&buf[..n]).ok()?
    } else {
        long = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        long.as_str()
    };
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` begins with field 3; field 22 is the 20th after it.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Size of one record: `<pid> <start time>` and a newline, padded with
/// spaces. A record of spaces only is free.
const RECORD_BYTES: usize = 48;

/// Record files not in use, open for writing. A command's record is
/// written into one of them and blanked when it ends, so that the hot path
/// creates and deletes no file (each costs a directory update); the
/// directory holds at most as many files as commands ever ran at once.
static FREE: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
/// Names new record files.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// The record of one running command; blanked when dropped.
pub struct Record(Option<std::fs::File>);

impl Record {
    /// Records command `pid` (a process group leader) if records are kept.
    pub fn new(pid: u32) -> Record {
        let Some(dir) = DIR.get() else {
            return Record(None);
        };
        let Ok(pid) = i32::try_from(pid) else {
            return Record(None);
        };
        let Some(start) = start_time(pid) else {
            return Record(None);
        };
        let mut record = [b' '; RECORD_BYTES];
        let text = format!("{pid} {start}\n");
        record[..text.len()].copy_from_slice(text.as_bytes());
        let free = FREE.lock().pop();
        let file = match free {
            Some(file) => Ok(file),
            None => {
                let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.join(format!("slot-{n}")))
            }
        };
        match file.and_then(|file| file.write_all_at(&record, 0).map(|()| file)) {
            Ok(file) => Record(Some(file)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot record a running command");
                Record(None)
            }
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            // A file that cannot be blanked is not reused (the next agent's
            // sweep removes it).
            if file.write_all_at(&[b' '; RECORD_BYTES], 0).is_ok() {
                FREE.lock().push(file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn start_time_reads_field_22() {
        let me = std::process::id() as i32;
        let a = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(a));
        assert!(start_time(i32::MAX).is_none());
    }

    #[test]
    fn a_recycled_pid_is_never_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let start = start_time(pid).expect("start time");
        let dir = tempfile::tempdir().expect("tempdir");
        // Same pid, another start time: an unrelated process now.
        std::fs::write(dir.path().join("a"), format!("{pid} {}\n", start + 1)).expect("write");
        assert_eq!(sweep(dir.path()), 0);
        assert!(
            child.try_wait().expect("wait").is_none(),
            "killed a recycled pid"
        );
        // The recorded process itself is killed, with its group.
        std::fs::write(dir.path().join("b"), format!("{pid} {start}\n")).expect("write");
        assert_eq!(sweep(dir.path()), 1);
        let status = child.wait().expect("wait");
        assert!(!status.success());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn records_reuse_their_files_and_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(init(dir.path()), 0);
        assert_eq!(DIR.get().map(PathBuf::as_path), Some(dir.path()));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let files = || -> Vec<String> {
            std::fs::read_dir(dir.path())
                .expect("dir")
                .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
                .collect()
        };
        let start = start_time(pid as i32).expect("start time");
        let first = Record::new(pid);
        assert_eq!(files().len(), 1);
        assert_eq!(parse_record(&files()[0]), Some((pid as i32, start)));
        drop(first);
        assert_eq!(files().len(), 1, "the file stays for the next command");
        assert!(
            files()[0].trim().is_empty(),
            "a finished command's record is blank"
        );
        // Two at once: the free file is reused, one more is made.
        let (a, b) = (Record::new(pid), Record::new(pid));
        assert_eq!(files().len(), 2);
        drop(b);
        // What a killed agent leaves: one live record, one blank file.
        let mut a = a;
        drop(a.0.take());
        assert_eq!(sweep(dir.path()), 1);
        assert!(!child.wait().expect("wait").success());
        assert!(files().is_empty());
    }
}
