//! `--config FILE` of `cmdop server` and `cmdop agent`: every flag can come
//! from the file, the environment overrides the file and a flag overrides
//! both, an unknown key is refused by name, `--check` masks secrets, and a
//! server and an agent started from files alone work together.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{
    create_workspace, enroll_token, listen_addr_outside_ephemeral_range, terminal, unique,
    wait_connected, Proc,
};

fn cmdop(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(common::cmdop_bin())
        .args(args)
        .env_remove("CMDOP_DATABASE_URL")
        .env_remove("CMDOP_LOG")
        .env_remove("CMDOP_PEER_SECRET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop")
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The line of `key` in `--check` output: (value, source).
fn setting(check: &str, key: &str) -> (String, String) {
    let line = check
        .lines()
        .find(|l| l.split_once(" = ").is_some_and(|(k, _)| k.trim() == key))
        .unwrap_or_else(|| panic!("no `{key}` in --check output:\n{check}"));
    let (value, source) = line.split_once(" # ").expect("a source comment");
    let value = value.split_once(" = ").expect("key = value").1.trim();
    (value.to_string(), source.trim().to_string())
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "cmdop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf8")
}

#[test]
fn flags_win_over_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("server.toml");
    write_private(
        &file,
        r#"
listen = "127.0.0.1:50999"
keepalive_secs = 7
shutdown_grace_secs = 11
log_level = "debug"
database = "postgres://cmdop:file-password@127.0.0.1:5999/fromfile"
peer_secret = "file-peer-secret-0123456789"
"#,
    );
    let file_arg = file.to_str().expect("utf8");

    // The file alone.
    let check = stdout_of(&cmdop(&["server", "--config", file_arg, "--check"], &[]));
    assert_eq!(
        setting(&check, "keepalive_secs"),
        ("7".into(), "config file".into())
    );
    assert_eq!(setting(&check, "log_level").1, "config file");
    assert_eq!(setting(&check, "listen").0, "\"127.0.0.1:50999\"");
    assert!(
        setting(&check, "database").0.contains("/fromfile"),
        "{check}"
    );
    // Untouched settings keep their defaults.
    assert_eq!(
        setting(&check, "heartbeat_timeout_secs"),
        ("75".into(), "default".into())
    );

    // The environment over the file.
    let env = [
        (
            "CMDOP_DATABASE_URL",
            "postgres://cmdop:env-password@127.0.0.1:5999/fromenv",
        ),
        ("CMDOP_LOG", "warn"),
    ];
    let check = stdout_of(&cmdop(&["server", "--config", file_arg, "--check"], &env));
    let (database, source) = setting(&check, "database");
    assert!(database.contains("/fromenv"), "{check}");
    assert_eq!(source, "environment CMDOP_DATABASE_URL");
    assert_eq!(
        setting(&check, "log_level"),
        ("\"warn\"".into(), "environment CMDOP_LOG".into())
    );
    assert_eq!(setting(&check, "keepalive_secs").0, "7");

    // A flag over both.
    let check = stdout_of(&cmdop(
        &[
            "--log-level",
            "error",
            "server",
            "--config",
            file_arg,
            "--check",
            "--keepalive-secs",
            "9",
            "--database",
            "postgres://cmdop@127.0.0.1:5999/fromflag",
        ],
        &env,
    ));
    assert_eq!(
        setting(&check, "keepalive_secs"),
        ("9".into(), "flag".into())
    );
    assert_eq!(
        setting(&check, "log_level"),
        ("\"error\"".into(), "flag".into())
    );
    assert!(
        setting(&check, "database").0.contains("/fromflag"),
        "{check}"
    );
    assert_eq!(
        setting(&check, "shutdown_grace_secs"),
        ("11".into(), "config file".into())
    );

    // Secrets never printed, wherever they came from.
    for out in [
        cmdop(&["server", "--config", file_arg, "--check"], &[]),
        cmdop(&["server", "--config", file_arg, "--check"], &env),
    ] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in [
            "file-password",
            "env-password",
            "file-peer-secret-0123456789",
        ] {
            assert!(!all.contains(secret), "--check printed {secret}:\n{all}");
        }
        assert_eq!(setting(&all, "peer_secret").0, "\"***\"");
    }
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("server.toml");
    write_private(
        &file,
        "listen = \"127.0.0.1:0\"\nlisten_adress = \"127.0.0.1:1\"\n",
    );
    let out = cmdop(
        &[
            "server",
            "--config",
            file.to_str().expect("utf8"),
            "--check",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `listen_adress`"), "{err}");

    // Written with dashes: the error says how to write it.
    write_private(&file, "allow-plaintext = true\n");
    let out = cmdop(
        &[
            "server",
            "--config",
            file.to_str().expect("utf8"),
            "--check",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key `allow-plaintext`") && err.contains("allow_plaintext"),
        "{err}"
    );

    // What only a command line can say stays there.
    write_private(&file, "check = true\n");
    let out = cmdop(&["server", "--config", file.to_str().expect("utf8")], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pass --check"), "{err}");

    // The agent's keys are the agent's: a server key is unknown there.
    write_private(&file, "data_dir = \"/nowhere\"\n");
    let out = cmdop(
        &["agent", "--config", file.to_str().expect("utf8"), "--check"],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `data_dir`"), "{err}");
}

/// `--check` prints a config file; read back, it gives the same settings:
/// every flag it lists can be set from a file.
fn every_setting_round_trips(command: &str, flags: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![command];
    args.extend_from_slice(flags);
    args.push("--check");
    let first = stdout_of(&cmdop(&args, &[]));
    let file = dir.path().join("effective.toml");
    write_private(&file, &first);
    let second = stdout_of(&cmdop(
        &[command, "--config", file.to_str().expect("utf8"), "--check"],
        &[],
    ));
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_once(" # ").map_or(l, |(v, _)| v).trim().to_string())
            .collect()
    };
    assert_eq!(
        values(&first),
        values(&second),
        "first:\n{first}\nsecond:\n{second}"
    );
    // Every setting the first run took from a flag came from the file.
    for line in second.lines().filter(|l| !l.starts_with('#')) {
        let source = line.split_once(" # ").expect("source").1.trim();
        assert_ne!(source, "flag", "{line}");
    }
    assert!(second.lines().count() > 10, "{second}");
}

#[test]
fn every_server_and_agent_flag_can_come_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    every_setting_round_trips(
        "server",
        &[
            "--listen",
            "127.0.0.1:50998",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--allow-plaintext",
            "--no-server-fanout",
            "--heartbeat-timeout-secs",
            "40",
            "--max-execs-per-key",
            "3",
            "--metrics-listen",
            "127.0.0.1:9464",
            "--ready-file",
            "/dev/null",
        ],
    );
    every_setting_round_trips(
        "agent",
        &[
            "--server",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--label",
            "env=test,role=web",
            "--hostname",
            "from-a-file",
            "--no-native-exec",
            "--heartbeat-secs",
            "3",
            "--metrics-listen",
            "127.0.0.1:9465",
        ],
    );
}

fn wait_for_file(path: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_and_an_agent_run_from_config_files_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ready = dir.path().join("ready");
    let metrics = listen_addr_outside_ephemeral_range();
    let server_file = dir.path().join("server.toml");
    write_private(
        &server_file,
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nready_file = {:?}\nmetrics_listen = \"{metrics}\"\nlog_level = \"warn\"\n",
            data.to_str().expect("utf8"),
            ready.to_str().expect("utf8"),
        ),
    );
    let _server = Proc(
        Command::new(common::cmdop_bin())
            .args(["server", "--config", server_file.to_str().expect("utf8")])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn cmdop server"),
    );
    let addr = wait_for_file(&ready, "cmdop server --config");
    let ws = create_workspace(&data, "alpha");
    let token_file = dir.path().join("token");
    write_private(&token_file, &enroll_token(&data, "alpha"));
    let host = unique("configured");
    let agent_file = dir.path().join("agent.toml");
    write_private(
        &agent_file,
        &format!(
            "server = [\"http://{addr}\"]\nhostname = \"{host}\"\nstate_file = {:?}\ntoken_file = {:?}\nlabel = [\"from=file\"]\nlog_level = \"warn\"\n",
            dir.path().join("agent.json").to_str().expect("utf8"),
            token_file.to_str().expect("utf8"),
        ),
    );
    let _agent = Proc(
        Command::new(common::cmdop_bin())
            .args(["agent", "--config", agent_file.to_str().expect("utf8")])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn cmdop agent"),
    );
    let mut t = terminal(&addr, Some(&ws.api_key)).await;
    wait_connected(&mut t, &host).await;
    // The label from the agent's file reached the server.
    let mut e = common::ext(&addr, Some(&ws.api_key)).await;
    let listed = e
        .list_machines(cmdop_proto::ext::ListMachinesRequest {
            selector: "from=file".into(),
            ..Default::default()
        })
        .await
        .expect("ListMachines")
        .into_inner()
        .machines;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let machine = &listed[0];
    assert_eq!(machine.hostname, host);
    assert!(
        machine.agent_labels.get("from").map(String::as_str) == Some("file"),
        "{machine:?}"
    );
    // And the metrics port from the server's file serves.
    let mut stream = tokio::net::TcpStream::connect(&metrics)
        .await
        .expect("metrics port from the config file");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /readyz HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let status = answer.lines().next().unwrap_or_default();
    assert!(
        status.starts_with("HTTP/1.") && status.contains(" 200 "),
        "{answer}"
    );
}
