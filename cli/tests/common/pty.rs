//! The real `cmdop` binary in a pseudo-terminal of its own, driven as a
//! user at a terminal would: keys typed into the master end, everything
//! the program writes collected as the screen, resizes with TIOCSWINSZ.

use std::{
    io::{Read, Write},
    os::fd::AsRawFd,
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::pty::{openpty, Winsize};

use super::{cmdop_bin, Proc};

/// How long any wait on the terminal may take; it only guards against a
/// hang.
const PATIENCE: Duration = Duration::from_secs(60);

pub fn size(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Everything the program wrote to the terminal so far.
#[derive(Clone, Default)]
pub struct Screen(pub Arc<Mutex<Vec<u8>>>);

impl Screen {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until the screen shows `what`.
    pub async fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "{what:?} never appeared on the terminal: {:?}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `cmdop` running in a terminal of its own.
pub struct Tty {
    pub child: Proc,
    pub screen: Screen,
    /// The master end, for typing and resizing.
    keys: std::fs::File,
}

impl Tty {
    /// Starts `cmdop ARGS` with `env` in a new terminal of `rows` x `cols`
    /// that is its controlling terminal (so that it gets SIGWINCH).
    pub fn spawn(args: &[&str], env: &[(&str, &str)], rows: u16, cols: u16) -> Tty {
        let pty = openpty(Some(&size(rows, cols)), None).expect("openpty");
        let slave = std::fs::File::from(pty.slave);
        let mut cmd = Command::new(cmdop_bin());
        cmd.args(args)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: runs in the child between fork and exec and only makes
        // async-signal-safe calls (setsid, ioctl) on descriptors it owns:
        // the terminal becomes the child's controlling terminal, so that the
        // kernel sends it SIGWINCH when the size changes.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if nix::libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Proc(cmd.spawn().expect("spawn cmdop"));
        let master = std::fs::File::from(pty.master);
        let keys = master.try_clone().unwrap();
        let screen = Screen::default();
        {
            let screen = screen.clone();
            let mut master = master;
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = master.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    screen.0.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Tty {
            child,
            screen,
            keys,
        }
    }

    pub fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).unwrap();
        self.keys.flush().unwrap();
    }

    /// Gives the terminal a new size (the kernel sends SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        // SAFETY: the descriptor is the open pty master, and size() a
        // valid winsize that outlives the call.
        let set = unsafe {
            nix::libc::ioctl(
                self.keys.as_raw_fd(),
                nix::libc::TIOCSWINSZ,
                &size(rows, cols),
            )
        };
        assert_eq!(set, 0, "TIOCSWINSZ");
    }

    pub async fn wait_for(&self, what: &str) {
        self.screen.wait_for(what).await
    }

    pub fn running(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_none()
    }

    /// Waits until the program exits.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cmdop did not exit: {:?}",
                self.screen.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
