//! The listings of the `cmdop` command against a real control plane and
//! agent: tables with a header row and human times, and `--json` (one
//! object per line) on `sessions`, `machines`, `ls` and `exec`.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

fn cmdop(s: &Stack, args: &[&str]) -> Output {
    let out = Command::new(cmdop_bin())
        .args(args)
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &s.ws.api_key)
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Each stdout line parsed as one JSON object.
fn objects(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// The header's column names and the row whose first cells contain `key`.
fn table_row(o: &Output, key: &str) -> (Vec<String>, String) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(o);
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("a header line")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let row = lines
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no row with {key}: {text}"))
        .to_string();
    (header, row)
}

#[tokio::test]
async fn listings_have_headers_human_times_and_json() {
    let s = stack("list", &[]).await;

    let (header, row) = table_row(&cmdop(&s, &["sessions"]), &s.host);
    assert_eq!(
        header,
        [
            "SESSION",
            "HOSTNAME",
            "STATUS",
            "CONNECTED",
            "HEARTBEAT",
            "OS",
            "SHELL"
        ]
    );
    assert!(row.contains(&s.session_id), "{row}");
    assert!(row.contains(" s ago") || row.contains(" min ago"), "{row}");
    let sessions = objects(&cmdop(&s, &["sessions", "--json"]));
    let mine = sessions
        .iter()
        .find(|v| v["hostname"] == s.host.as_str())
        .expect("this agent's session");
    assert_eq!(mine["session_id"], s.session_id.as_str());
    assert!(
        mine["connected_at_unix"].as_i64().unwrap_or(0) > 0,
        "{mine}"
    );

    let (header, row) = table_row(&cmdop(&s, &["machines"]), &s.host);
    assert_eq!(header[..3], ["HOSTNAME", "MACHINE", "PRESENCE"]);
    assert!(row.contains("online") && row.contains(" ago"), "{row}");

    // A directory on the agent's machine (the same machine here).
    let dir = s.dir.path().join("listed");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("five.txt"), b"12345").unwrap();
    let path = dir.display().to_string();
    let (header, row) = table_row(&cmdop(&s, &["ls", "-H", &s.host, &path]), "five.txt");
    assert_eq!(header, ["MODE", "SIZE", "MODIFIED", "NAME"]);
    assert!(row.starts_with("-rw"), "{row}");
    assert!(row.contains(" 5 ") && row.contains(" ago"), "{row}");
    let entries = objects(&cmdop(&s, &["ls", "--json", "-H", &s.host, &path]));
    let five = entries
        .iter()
        .find(|v| v["name"] == "five.txt")
        .expect("five.txt");
    assert_eq!(five["kind"], "file");
    assert_eq!(five["size"], 5);
    let sub = entries.iter().find(|v| v["name"] == "sub").expect("sub");
    assert_eq!(sub["kind"], "directory");

    // exec --json on one machine: one object, the exit status passed on.
    let out = cmdop(
        &s,
        &[
            "exec",
            "--json",
            "-H",
            &s.host,
            "printf out; printf err >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one object");
    assert_eq!(v["hostname"], s.host.as_str());
    assert_eq!(v["status"], "failed");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stdout"], "out");
    assert_eq!(v["stderr"], "err");
    assert!(
        v["machine_id"].as_str().unwrap_or("").starts_with("mach_"),
        "{v}"
    );
}
