//! Starting a command's shell without copying the agent (Linux).
//!
//! `fork` copies the page tables of the whole multi-threaded agent and the
//! child then faults on every page it touches before `exec`; posix_spawn
//! avoids both by running the child on the parent's memory
//! (`CLONE_VM | CLONE_VFORK`, the parent waits until the child has called
//! `exec`), but it cannot set what the agent needs in the child:
//! `PR_SET_PDEATHSIG` ([`crate::orphans`]). [`spawn_shell`] does what
//! posix_spawn does, plus that: in the child, only system calls on memory
//! prepared beforehand, then `execve`.
//!
//! The child, between `clone` and `execve`:
//! * gets the default action for every signal the agent handles (the
//!   handlers live in memory it shares with the agent) and then an empty
//!   signal mask (the agent's thread blocks every signal around `clone`);
//!   SIGPIPE, which the Rust runtime ignores, is reset to its default too;
//! * leads a new process group (`setpgid(0, 0)`), so that killing the group
//!   reaches whatever the command starts; a command in a pseudo-terminal
//!   ([`spawn_shell_in_terminal`]) leads a new session instead (`setsid`,
//!   which makes a process group too) with the terminal as its controlling
//!   terminal;
//! * gets SIGKILL when the agent's thread that started it exits
//!   (`PR_SET_PDEATHSIG`), and gives up if the agent is already gone.
//!   Commands are started from the async runtime's worker threads, which
//!   live as long as the runtime; never start them from a blocking-pool
//!   thread (those exit when idle, and the command would die with it);
//! * changes to the working directory and takes its stdin (a pipe or
//!   `/dev/null`), stdout and stderr (pipes, or all three the terminal).
//!
//! Exit is watched with a pidfd on the runtime's reactor: no thread, no
//! SIGCHLD handler. Kernels without `pidfd_open` (before 5.3) wait on the
//! blocking pool instead.

use std::{
    collections::HashMap,
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            process::ExitStatusExt,
        },
    },
    path::Path,
    process::ExitStatus,
    sync::{
        atomic::{AtomicI32, Ordering},
        OnceLock,
    },
};

use nix::libc;
use tokio::{
    io::unix::AsyncFd,
    process::{ChildStderr, ChildStdin, ChildStdout},
};

/// Stack of the child between `clone` and `execve`: only a few system
/// call wrappers run there.
const CHILD_STACK_BYTES: usize = 64 * 1024;
/// Highest signal number on Linux.
const MAX_SIGNAL: libc::c_int = 64;
/// Environment variables the command never inherits from the agent.
const NOT_INHERITED: &[&str] = &["CMDOP_ENROLL_TOKEN"];

/// What the command runs with.
pub struct ShellCommand<'a> {
    /// Given to `/bin/sh -c`.
    pub command: &'a str,
    pub cwd: &'a Path,
    /// Added to (and overriding) the agent's environment.
    pub env: &'a HashMap<String, String>,
    /// A pipe for stdin; otherwise `/dev/null`.
    pub stdin_piped: bool,
}

/// A started command: its pipes and its process.
pub struct Spawned {
    pub stdin: Option<ChildStdin>,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
    pub child: Child,
}

/// Which step failed in the child, reported with its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    None = 0,
    ProcessGroup,
    DeathSignal,
    ParentGone,
    Chdir,
    Redirect,
    Exec,
    Terminal,
}

impl Step {
    fn from_i32(v: i32) -> Step {
        match v {
            1 => Step::ProcessGroup,
            2 => Step::DeathSignal,
            3 => Step::ParentGone,
            4 => Step::Chdir,
            5 => Step::Redirect,
            6 => Step::Exec,
            7 => Step::Terminal,
            _ => Step::None,
        }
    }
}

/// Everything the child reads, prepared by the parent. The child writes
/// only `step` and `errno`.
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// Descriptors that become the child's 0, 1 and 2.
    fds: [RawFd; 3],
    /// A pseudo-terminal's slave end to become the controlling terminal of
    /// a new session; -1 for none (the child then only leads a new process
    /// group).
    terminal: RawFd,
    parent: libc::pid_t,
    step: AtomicI32,
    errno: AtomicI32,
}

/// Runs `/bin/sh -c command` as described in the module documentation.
pub fn spawn_shell(cmd: &ShellCommand<'_>) -> io::Result<Spawned> {
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let (stdin_parent, stdin_child) = if cmd.stdin_piped {
        let (r, w) = pipe()?;
        (Some(w), Some(r))
    } else {
        (None, None)
    };
    let stdin_fd = match &stdin_child {
        Some(fd) => fd.as_raw_fd(),
        None => dev_null()?,
    };
    let child = launch(
        cmd,
        [stdin_fd, out_write.as_raw_fd(), err_write.as_raw_fd()],
        None,
    )?;
    // The child has its own copies now.
    drop((out_write, err_write, stdin_child));
    let stdout = ChildStdout::from_std(std::process::ChildStdout::from(out_read))?;
    let stderr = ChildStderr::from_std(std::process::ChildStderr::from(err_read))?;
    let stdin = match stdin_parent {
        Some(fd) => Some(ChildStdin::from_std(std::process::ChildStdin::from(fd))?),
        None => None,
    };
    Ok(Spawned {
        stdin,
        stdout,
        stderr,
        child,
    })
}

/// Runs `/bin/sh -c command` in the pseudo-terminal whose slave end is
/// `terminal`: the child leads a new session (`setsid`, which also makes it
/// a process group of its own, so killing the group works as for
/// [`spawn_shell`]), takes the terminal as its controlling terminal and as
/// its stdin, stdout and stderr. `cmd.stdin_piped` is ignored. The caller
/// keeps the master end and closes its copy of `terminal` afterwards.
pub fn spawn_shell_in_terminal(cmd: &ShellCommand<'_>, terminal: &OwnedFd) -> io::Result<Child> {
    let fd = terminal.as_raw_fd();
    launch(cmd, [fd, fd, fd], Some(fd))
}

/// Starts the child with `fds` as its 0, 1 and 2 (and `terminal` as its
/// controlling terminal, in a session of its own); returns once it has
/// called `execve`, or its error if it could not.
fn launch(cmd: &ShellCommand<'_>, fds: [RawFd; 3], terminal: Option<RawFd>) -> io::Result<Child> {
    let path = CString::new("/bin/sh").expect("no NUL in a literal");
    let argv_owned = [
        CString::new("sh").expect("no NUL in a literal"),
        CString::new("-c").expect("no NUL in a literal"),
        cstring(cmd.command.as_bytes(), "the command")?,
    ];
    let env_owned = environment(cmd.env)?;
    let cwd = cstring(cmd.cwd.as_os_str().as_bytes(), "the working directory")?;
    let argv = pointers(&argv_owned);
    let envp = pointers(&env_owned);

    let args = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ptr(),
        fds,
        terminal: terminal.unwrap_or(-1),
        parent: std::process::id() as libc::pid_t,
        step: AtomicI32::new(Step::None as i32),
        errno: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let pid = clone_child(&args, &mut stack)?;
    // The child has called execve or exited: nothing of ours is in use now.
    let step = Step::from_i32(args.step.load(Ordering::Acquire));
    if step != Step::None {
        let errno = args.errno.load(Ordering::Acquire);
        // It has exited (status 127); reap it.
        let _ = reap(pid, 0);
        return Err(child_error(step, errno));
    }
    Ok(Child::new(pid))
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte; remove it"),
        )
    })
}

/// `KEY=VALUE` strings: the agent's environment without [`NOT_INHERITED`]
/// and the keys of `extra`, then `extra`.
fn environment(extra: &HashMap<String, String>) -> io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for (key, value) in std::env::vars_os() {
        let skip = NOT_INHERITED.iter().any(|k| key == OsStr::new(k))
            || key.to_str().is_some_and(|k| extra.contains_key(k));
        if !skip {
            out.push(pair(key, value)?);
        }
    }
    for (key, value) in extra {
        out.push(pair(OsString::from(key), OsString::from(value))?);
    }
    Ok(out)
}

fn pair(key: OsString, value: OsString) -> io::Result<CString> {
    let mut bytes = key.into_vec();
    bytes.push(b'=');
    bytes.extend_from_slice(value.as_bytes());
    cstring(&bytes, "an environment variable")
}

/// A NULL-terminated array of pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A pipe, both ends close-on-exec (the child's ends are `dup2`ed).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// `/dev/null` for reading, opened once.
fn dev_null() -> io::Result<RawFd> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let file = std::fs::File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| OwnedFd::from(file)).as_raw_fd())
}

/// Starts the child on `stack`; returns once it has called `execve` or
/// exited.
fn clone_child(args: &ChildArgs, stack: &mut [u8]) -> io::Result<libc::pid_t> {
    // The stack grows down from its 16-byte aligned end.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: plain sigset_t values filled by sigfillset; the mask calls
    // only affect this thread, and the old mask is restored below on every
    // path.
    let old_mask = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    // SAFETY: `child_main` runs on `stack` (alive and unused by anyone
    // else until this returns: CLONE_VFORK suspends this thread until the
    // child has called execve or exited) and only reads `args`, which
    // outlives the call, making async-signal-safe system calls. Every
    // signal is blocked meanwhile, so no handler of ours runs in the child.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            args as *const ChildArgs as *mut libc::c_void,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above for this thread.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
    }
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

/// The child between `clone` and `execve`. It shares the agent's memory:
/// no allocation, no lock, no Rust runtime; only system calls on `args`.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `clone_child` passed, alive
    // while the parent is suspended.
    let args = unsafe { &*(arg as *const ChildArgs) };
    let fail = |step: Step| -> libc::c_int {
        // SAFETY: errno of this (shared) thread area; _exit ends only the
        // child.
        unsafe {
            args.errno
                .store(*libc::__errno_location(), Ordering::Release);
            args.step.store(step as i32, Ordering::Release);
            libc::_exit(127)
        }
    };
    // SAFETY: every call below is a thin system call wrapper on memory the
    // parent prepared (C strings, pointer arrays, sigaction values on this
    // stack); none allocates or takes a lock.
    unsafe {
        // Handlers live in the shared memory: back to the default action
        // for those that are set, and for SIGPIPE (ignored by Rust).
        let mut action: libc::sigaction = std::mem::zeroed();
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=MAX_SIGNAL {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, std::ptr::null(), &mut action) != 0 {
                continue;
            }
            let handled = action.sa_sigaction != libc::SIG_DFL
                && (action.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE);
            if handled {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        if args.terminal >= 0 {
            // A new session is also a new process group, led by the child.
            if libc::setsid() < 0 {
                return fail(Step::ProcessGroup);
            }
            if libc::ioctl(args.terminal, libc::TIOCSCTTY as _, 0) != 0 {
                return fail(Step::Terminal);
            }
        } else if libc::setpgid(0, 0) != 0 {
            return fail(Step::ProcessGroup);
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return fail(Step::DeathSignal);
        }
        // The agent may have died before the call above took effect.
        if libc::getppid() != args.parent {
            *libc::__errno_location() = libc::ESRCH;
            return fail(Step::ParentGone);
        }
        if libc::chdir(args.cwd) != 0 {
            return fail(Step::Chdir);
        }
        for (target, &source) in args.fds.iter().enumerate() {
            let target = target as libc::c_int;
            let ok = if source == target {
                // dup2 would keep close-on-exec: clear it instead.
                libc::fcntl(source, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(source, target) == target
            };
            if !ok {
                return fail(Step::Redirect);
            }
        }
        libc::execve(args.path, args.argv, args.envp);
        fail(Step::Exec)
    }
}

fn child_error(step: Step, errno: i32) -> io::Error {
    let os = io::Error::from_raw_os_error(errno);
    let what = match step {
        Step::ProcessGroup => "cannot make the command a process group",
        Step::DeathSignal => "cannot tie the command to the agent (PR_SET_PDEATHSIG)",
        Step::ParentGone => "the agent exited during the spawn",
        Step::Chdir => "cannot change to the working directory",
        Step::Redirect => "cannot connect the command's stdin/stdout/stderr",
        Step::Terminal => "cannot give the command its terminal (TIOCSCTTY)",
        Step::Exec | Step::None => "cannot execute /bin/sh",
    };
    io::Error::new(os.kind(), format!("{what}: {os}"))
}

/// Reaps `pid` if it has exited (`flags` WNOHANG) or waits for it (0).
fn reap(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid on our own child, writing to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A started command's process, reaped by [`Child::wait`] or, if dropped
/// before, in the background.
pub struct Child {
    pid: libc::pid_t,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
}

impl Child {
    fn new(pid: libc::pid_t) -> Child {
        Child {
            pid,
            pidfd: pidfd_open(pid),
            status: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the process to exit (cancel-safe).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = match &self.pidfd {
            Some(fd) => loop {
                let mut ready = fd.readable().await?;
                if let Some(status) = reap(self.pid, libc::WNOHANG)? {
                    break status;
                }
                ready.clear_ready();
            },
            None => {
                let pid = self.pid;
                tokio::task::spawn_blocking(move || reap(pid, 0))
                    .await
                    .map_err(io::Error::other)??
                    .ok_or_else(|| io::Error::other("waitpid returned no status"))?
            }
        };
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() || !matches!(reap(self.pid, libc::WNOHANG), Ok(None)) {
            return;
        }
        // Still running (the exec was abandoned, not waited for): reap it
        // when it exits, without blocking here. Rare, so a thread will do.
        let pid = self.pid;
        let _ = std::thread::Builder::new()
            .name("cmdop-reap".into())
            .spawn(move || reap(pid, 0));
    }
}

/// A pidfd for `pid` on the reactor; `None` where the kernel has none.
fn pidfd_open(pid: libc::pid_t) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the pidfd_open system call takes a pid and flags; a
    // non-negative result is a new descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by no one
    // else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: the AsyncFd owns `fd`, which stays open (and is not
    // replaced) until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}
