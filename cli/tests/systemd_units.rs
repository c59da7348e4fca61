//! The systemd units in packaging/systemd/: `cmdop server` tells a
//! `Type=notify` service manager it is ready only once it serves, and that
//! it is stopping on SIGTERM; the units pass `systemd-analyze verify`.

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::Proc;

fn recv(socket: &UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no {what} from cmdop server within 20 s: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn server_notifies_ready_once_it_listens_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let ready = dir.path().join("ready");
    let mut server = Proc(
        Command::new(common::cmdop_bin())
            .args(["--log-level", "warn", "server", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn cmdop server"),
    );
    assert_eq!(recv(&socket, "READY=1").trim(), "READY=1");
    // Ready means serving: the port is bound and answers.
    let addr = std::fs::read_to_string(&ready).expect("the ready file is written first");
    std::net::TcpStream::connect(addr.trim()).expect("the server accepts connections");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(recv(&socket, "STOPPING=1").trim(), "STOPPING=1");
    let status = server.0.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!(
            "SKIPPED units_pass_systemd_analyze_verify: systemd-analyze is not installed here \
             (Debian package systemd); the units were not verified"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let mut copies = Vec::new();
    for name in ["cmdop-server.service", "cmdop-agent.service"] {
        // Verified against the binary under test (verify checks that it exists).
        let text = std::fs::read_to_string(units.join(name)).expect("read unit");
        assert!(
            text.contains("/usr/bin/cmdop "),
            "{name} runs /usr/bin/cmdop"
        );
        let copy = dir.path().join(name);
        std::fs::write(
            &copy,
            text.replace("/usr/bin/cmdop ", &format!("{} ", common::cmdop_bin())),
        )
        .expect("write unit");
        copies.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copies)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // It reports unknown keys and bad values as warnings only.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

/// Waits (up to 20 s) until the file at `path` contains `text`.
fn wait_for_log(path: &Path, text: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{text}` in the server's log within 20 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `systemctl reload` (ExecReload sends SIGHUP): the file is read again,
/// the log level changes at once, other changed settings are named as
/// needing a restart, a broken file changes nothing, and systemd hears
/// RELOADING=1 then READY=1 each time.
#[test]
fn sighup_reloads_the_log_level_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let ready = dir.path().join("ready");
    let config = dir.path().join("server.toml");
    let settings = |extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nready_file = {:?}\n{extra}",
            dir.path().join("data").display().to_string(),
            ready.display().to_string()
        )
    };
    std::fs::write(&config, settings("log_level = \"warn\"\n")).expect("write the config");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut server = Proc(
        Command::new(common::cmdop_bin())
            .args(["server", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("RUST_LOG")
            .env_remove("CMDOP_LOG")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cmdop server"),
    );
    assert_eq!(recv(&socket, "READY=1").trim(), "READY=1");
    let addr = std::fs::read_to_string(&ready).expect("ready file");
    let hangup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP")
    };
    let reloaded = |what: &str| {
        let first = recv(&socket, what);
        assert!(
            first.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{first:?}"
        );
        assert_eq!(recv(&socket, "READY=1 after the reload").trim(), "READY=1");
    };

    // At warn, the info line of a reload would not show: it shows once the
    // reload turned the level to info.
    std::fs::write(
        &config,
        settings("log_level = \"info\"\nshutdown_grace_secs = 7\n"),
    )
    .expect("rewrite the config");
    hangup();
    reloaded("RELOADING=1 for the first reload");
    let text = wait_for_log(&log_path, "settings reloaded");
    assert!(
        text.contains("`shutdown_grace_secs` changed; it takes effect at the next restart"),
        "{text}"
    );
    assert!(
        !text.contains("`log_level` changed; it takes effect"),
        "{text}"
    );

    // A broken file changes nothing and the server goes on serving.
    std::fs::write(&config, "listen = [oops\n").expect("break the config");
    hangup();
    reloaded("RELOADING=1 for the refused reload");
    wait_for_log(&log_path, "reload refused");
    std::net::TcpStream::connect(addr.trim()).expect("still serving after a refused reload");
    assert!(
        server.0.try_wait().expect("try_wait").is_none(),
        "the server ended"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(recv(&socket, "STOPPING=1").trim(), "STOPPING=1");
    assert!(server.0.wait().expect("wait").success());
}
