//! `cmdop attach` in a real pseudo-terminal, against a real control plane
//! and agent: raw mode (each command echoed once, by the remote side), the
//! session sized like the local terminal and resized with it, Ctrl-C
//! reaching the remote command, and `~.` leaving the session running.

mod common;

use std::{
    io::{Read, Write},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use nix::pty::{openpty, Winsize};

fn size(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Everything the program wrote to the terminal so far.
#[derive(Clone, Default)]
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Screen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until the screen shows `what`; the deadline only guards
    /// against a hang.
    async fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
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

#[tokio::test]
async fn attach_is_raw_sized_interruptible_and_left_with_tilde_dot() {
    let s = stack("attach-pty", &[]).await;
    let pty = openpty(Some(&size(33, 111)), None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = {
        let mut cmd = Command::new(cmdop_bin());
        cmd.args(["attach", "-H", &s.host])
            .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
            .env("CMDOP_API_KEY", &s.ws.api_key)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
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
        Proc(cmd.spawn().expect("spawn cmdop attach"))
    };
    let master = std::fs::File::from(pty.master);
    let master_fd = master.as_raw_fd();
    let mut keys = master.try_clone().unwrap();
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
    let mut type_keys = |keys_: &[u8]| {
        keys.write_all(keys_).unwrap();
        keys.flush().unwrap();
    };

    screen.wait_for("attached to session").await;
    // Raw mode: the command is echoed once, by the remote terminal.
    type_keys(b"echo one-$((40+2))\r");
    screen.wait_for("one-42").await;
    assert_eq!(
        screen.text().matches("echo one-$((40+2))").count(),
        1,
        "echoed locally and remotely: {:?}",
        screen.text()
    );

    // The session has the local size (not the 24x80 default), and follows
    // a resize.
    type_keys(b"stty size\r");
    screen.wait_for("33 111").await;
    // SAFETY: master_fd is the open pty master, and size() a valid winsize.
    let set = unsafe { nix::libc::ioctl(master_fd, nix::libc::TIOCSWINSZ, &size(30, 100)) };
    assert_eq!(set, 0, "TIOCSWINSZ");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !screen.text().contains("30 100") {
        assert!(Instant::now() < deadline, "no resize: {:?}", screen.text());
        type_keys(b"stty size\r");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Ctrl-C goes to the remote command, not to cmdop.
    type_keys(b"echo st$((1+1))rt; sleep 300\r");
    screen.wait_for("st2rt").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    type_keys(b"\x03");
    type_keys(b"echo after-$((1+1))\r");
    screen.wait_for("after-2").await;
    assert!(child.0.try_wait().unwrap().is_none(), "Ctrl-C ended cmdop");

    // ~. after a newline leaves; the session goes on.
    type_keys(b"\r~.");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "~. did not leave: {:?}",
            screen.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    screen.wait_for("the session goes on").await;
    let out = Command::new(cmdop_bin())
        .args(["sessions", "--json"])
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &s.ws.api_key)
        .output()
        .expect("cmdop sessions");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&s.session_id) && l.contains("\"connected\"")),
        "{listed}"
    );
}
