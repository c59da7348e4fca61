//! Client profiles (`~/.config/cmdop/config.toml`, `CMDOP_CONFIG`): a
//! profile gives the server, key and default host; `--profile` and the
//! file's `default` pick it; flags beat the environment, which beats the
//! profile; `cmdop config show` prints the effective settings with the key
//! masked. Against a real control plane with two agents.

mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use common::*;

/// `cmdop ARGS` with the config file `config` and only the environment
/// variables in `env` (none of the CMDOP_* of the test's own environment).
fn cmdop(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(cmdop_bin());
    cmd.args(args)
        .env("CMDOP_CONFIG", config)
        .stdin(Stdio::null());
    for var in [
        "CMDOP_SERVER",
        "CMDOP_API_KEY",
        "CMDOP_API_KEY_FILE",
        "CMDOP_PROFILE",
        "CMDOP_LOG",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cmdop")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The hostname `cmdop exec --json` reports.
fn ran_on(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(v["stdout"], "hi\n", "{v}");
    v["hostname"].as_str().expect("hostname").to_string()
}

fn private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_give_server_key_and_host_under_flags_and_environment() {
    let s = stack("profile-a", &[]).await;
    let second = unique("profile-b");
    let token = enroll_token(s.dir.path(), "alpha");
    let _agent = start_agent(
        &s.server.addr,
        Some(&token),
        &s.dir.path().join("agent-b.json"),
        &second,
        &["--heartbeat-secs", "1"],
    );
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    wait_connected(&mut t, &second).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    wait_native_exec(&mut e, &second).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("alpha.key");
    private(&key_file, &format!("{}\n", s.ws.api_key));
    // A port nothing listens on: a profile pointing there must not be used.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let live = format!("http://{}", s.server.addr);
    let config = dir.path().join("config.toml");
    private(
        &config,
        &format!(
            r#"default = "dev"

[profiles.dev]
server = "{live}"
api_key_file = "{}"
host = "{second}"

[profiles.broken]
server = "http://{dead}"
api_key = "cmdop_not_a_key"
host = "{first}"

[profiles.command]
server = ["{live}"]
api_key_command = "cat '{}'"
host = "{first}"
"#,
            key_file.display(),
            key_file.display(),
            first = s.host,
        ),
    );

    // The default profile: its server, its key file, its host.
    let out = cmdop(&config, &[], &["exec", "--json", "echo hi"]);
    assert_eq!(ran_on(&out), second);
    // -H beats the profile's host.
    let out = cmdop(&config, &[], &["exec", "--json", "-H", &s.host, "echo hi"]);
    assert_eq!(ran_on(&out), s.host);
    // --profile picks another; its key comes from a command.
    let out = cmdop(
        &config,
        &[],
        &["exec", "--json", "--profile", "command", "echo hi"],
    );
    assert_eq!(ran_on(&out), s.host);
    // CMDOP_PROFILE too.
    let out = cmdop(
        &config,
        &[("CMDOP_PROFILE", "broken")],
        &["exec", "echo hi"],
    );
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));

    // The environment beats the profile (server and key), the profile
    // still gives the host.
    let out = cmdop(
        &config,
        &[("CMDOP_SERVER", &live), ("CMDOP_API_KEY", &s.ws.api_key)],
        &["exec", "--json", "--profile", "broken", "echo hi"],
    );
    assert_eq!(ran_on(&out), s.host);
    // A flag beats the environment.
    let out = cmdop(
        &config,
        &[
            ("CMDOP_SERVER", &format!("http://{dead}")),
            ("CMDOP_API_KEY", &s.ws.api_key),
        ],
        &["exec", "--json", "--server", &live, "echo hi"],
    );
    assert_eq!(ran_on(&out), second);

    // config show: the settings and where they came from, the key masked.
    let out = cmdop(&config, &[], &["config", "show"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(!shown.contains(&s.ws.api_key), "the key leaked: {shown}");
    assert!(shown.contains(&live), "{shown}");
    assert!(shown.contains("profile 'dev'"), "{shown}");
    assert!(shown.contains(&second), "{shown}");
    let out = cmdop(
        &config,
        &[("CMDOP_API_KEY", &s.ws.api_key)],
        &["config", "show", "--json", "--profile", "broken"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["profile"], "broken");
    assert_eq!(v["api_key_source"], "flag or environment");
    assert_eq!(v["server_source"], "profile");
    assert!(!text(&out.stdout).contains(&s.ws.api_key));
    assert!(!text(&out.stdout).contains("cmdop_not_a_key"));

    // Mistakes name the key or the profile, in one line, exit 255.
    let out = cmdop(&config, &[], &["exec", "--profile", "nope", "echo hi"]);
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(
        err.contains("profile 'nope'") && err.contains("dev"),
        "{err}"
    );
    private(&config, "[profiles.dev]\nservr = \"x\"\n");
    let out = cmdop(&config, &[], &["exec", "--profile", "dev", "echo hi"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("unknown key `servr`"),
        "{}",
        text(&out.stderr)
    );
}
