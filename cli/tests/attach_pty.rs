//! `cmdop attach` in a real pseudo-terminal, against a real control plane
//! and agent: raw mode (each command echoed once, by the remote side), the
//! session sized like the local terminal and resized with it, Ctrl-C
//! reaching the remote command, and `~.` leaving the session running.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{pty::Tty, *};

#[tokio::test]
async fn attach_is_raw_sized_interruptible_and_left_with_tilde_dot() {
    let s = stack("attach-pty", &[]).await;
    let server = format!("http://{}", s.server.addr);
    let mut t = Tty::spawn(
        &["attach", "-H", &s.host],
        &[("CMDOP_SERVER", &server), ("CMDOP_API_KEY", &s.ws.api_key)],
        33,
        111,
    );
    let screen = t.screen.clone();
    screen.wait_for("attached to session").await;
    // Raw mode: the command is echoed once, by the remote terminal.
    t.type_keys(b"echo one-$((40+2))\r");
    screen.wait_for("one-42").await;
    assert_eq!(
        screen.text().matches("echo one-$((40+2))").count(),
        1,
        "echoed locally and remotely: {:?}",
        screen.text()
    );

    // The session has the local size (not the 24x80 default), and follows
    // a resize.
    t.type_keys(b"stty size\r");
    screen.wait_for("33 111").await;
    t.resize(30, 100);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !screen.text().contains("30 100") {
        assert!(Instant::now() < deadline, "no resize: {:?}", screen.text());
        t.type_keys(b"stty size\r");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Ctrl-C goes to the remote command, not to cmdop.
    t.type_keys(b"echo st$((1+1))rt; sleep 300\r");
    screen.wait_for("st2rt").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.type_keys(b"\x03");
    t.type_keys(b"echo after-$((1+1))\r");
    screen.wait_for("after-2").await;
    assert!(t.running(), "Ctrl-C ended cmdop");

    // ~. after a newline leaves; the session goes on.
    t.type_keys(b"\r~.");
    let status = t.wait_exit().await;
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
