//! Fleets through the CLI against a real control plane and real agents:
//! labels declared by agents and set by an admin, `cmdop machines` with
//! selectors, one command on several machines with per-host output, and
//! `cmdop exec` refusing to guess among several machines; the server-side
//! fan-out (ExecFleet) itself, and the client's own fan-out against a
//! server without it.

mod common;

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;

struct Fleet {
    server: Server,
    ws: Workspace,
    _agents: Vec<Proc>,
    hosts: Vec<String>,
    _dir: tempfile::TempDir,
}

/// A server with agents `<prefix>-web-1` (env=prod, role=web),
/// `<prefix>-web-2` (env=staging, role=web) and `<prefix>-db-1` (env=prod,
/// role=db), all online with native exec.
async fn fleet(prefix: &str) -> Fleet {
    fleet_with(prefix, &[]).await
}

/// [`fleet`] with `server_flags` for the server.
async fn fleet_with(prefix: &str, server_flags: &[&str]) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0", server_flags);
    let ws = create_workspace(dir.path(), "fleet");
    let specs = [
        ("web-1", "env=prod,role=web"),
        ("web-2", "env=staging,role=web"),
        ("db-1", "env=prod,role=db"),
    ];
    let mut agents = Vec::new();
    let mut hosts = Vec::new();
    for (name, labels) in specs {
        let host = format!("{prefix}-{name}");
        let token = enroll_token(dir.path(), "fleet");
        let state = dir.path().join(format!("{name}.json"));
        agents.push(start_agent(
            &server.addr,
            Some(&token),
            &state,
            &host,
            &["--label", labels],
        ));
        hosts.push(host);
    }
    // Each agent enrolls, connects, then opens its exec channel.
    let mut t = terminal(&server.addr, Some(&ws.api_key)).await;
    let mut e = ext(&server.addr, Some(&ws.api_key)).await;
    for host in &hosts {
        wait_connected(&mut t, host).await;
        wait_native_exec(&mut e, host).await;
    }
    let f = Fleet {
        server,
        ws,
        _agents: agents,
        hosts,
        _dir: dir,
    };
    // Declared labels are stored in the background: wait until all show.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(&f, &["machines", "-l", "role"]);
        if String::from_utf8_lossy(&out.stdout).lines().count() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "labels did not show: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f
}

/// `cmdop ARGS` as a client of the fleet's server.
fn cli(f: &Fleet, args: &[&str]) -> Output {
    Command::new(cmdop_bin())
        .args(args)
        .env("CMDOP_SERVER", format!("http://{}", f.server.addr))
        .env("CMDOP_API_KEY", &f.ws.api_key)
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Hostnames of `cmdop machines --json ARGS`.
fn listed(f: &Fleet, args: &[&str]) -> Vec<String> {
    let mut all = vec!["machines", "--json"];
    all.extend_from_slice(args);
    let out = cli(f, &all);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut hosts: Vec<String> = stdout(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            v["hostname"].as_str().unwrap().to_string()
        })
        .collect();
    hosts.sort();
    hosts
}

#[tokio::test]
async fn labels_select_machines_and_one_command_runs_on_several() {
    let f = fleet("fl").await;
    let [web1, web2, db1] = [&f.hosts[0], &f.hosts[1], &f.hosts[2]];

    // The table: a header and every machine with its labels and presence.
    let out = cli(&f, &["machines"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("HOSTNAME"), "{table}");
    let db_line = table.lines().find(|l| l.starts_with(db1.as_str())).unwrap();
    assert!(
        db_line.contains("online") && db_line.contains("env=prod,role=db"),
        "{db_line}"
    );
    assert!(db_line.contains("mach_"), "{db_line}");

    // Every selector form, and host lists and globs.
    assert_eq!(listed(&f, &["-l", "env=prod"]), [db1.clone(), web1.clone()]);
    assert_eq!(listed(&f, &["-l", "env!=prod"]), vec![web2.clone()]);
    assert_eq!(listed(&f, &["-l", "role in (db,cache)"]), vec![db1.clone()]);
    assert_eq!(
        listed(&f, &["-l", "role notin (db)"]),
        [web1.clone(), web2.clone()]
    );
    assert_eq!(listed(&f, &["-l", "env=prod,role=web"]), vec![web1.clone()]);
    assert_eq!(listed(&f, &["-l", "tier"]), Vec::<String>::new());
    assert_eq!(listed(&f, &["-l", "!tier"]).len(), 3);
    assert_eq!(listed(&f, &["-l", "cmdop.io/status=online"]).len(), 3);
    assert_eq!(listed(&f, &["-l", "cmdop.io/os=linux"]).len(), 3);
    assert_eq!(
        listed(&f, &["-H", "fl-web-*"]),
        [web1.clone(), web2.clone()]
    );
    assert_eq!(
        listed(&f, &["-H", &format!("{web2},{db1}")]),
        [db1.clone(), web2.clone()]
    );
    // A bad selector is refused with what is wrong and the flag.
    let bad = cli(&f, &["machines", "-l", "env="]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("-l"), "{}", stderr(&bad));

    // An admin label wins over what the machine declares, and the machine
    // cannot take it back by declaring again.
    let dir = &f.server.data_dir;
    let set = admin(dir, &["label", web1, "env=staging", "owner=ops"]);
    assert!(
        set.contains("env=staging") && set.contains("owner=ops"),
        "{set}"
    );
    assert_eq!(listed(&f, &["-l", "env=prod"]), vec![db1.clone()]);
    assert_eq!(
        listed(&f, &["-l", "env=staging"]),
        [web1.clone(), web2.clone()]
    );
    let out = cli(&f, &["machines", "--json", "-H", web1]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        v["agent_labels"]["env"], "prod",
        "the declaration is still shown"
    );
    assert_eq!(v["admin_labels"]["env"], "staging");
    assert_eq!(
        v["labels"]["env"], "staging",
        "the admin's value is what selectors see"
    );
    let removed = admin(dir, &["label", web1, "--remove", "env"]);
    assert!(!removed.contains("env="), "{removed}");
    assert_eq!(listed(&f, &["-l", "env=prod"]), [db1.clone(), web1.clone()]);
    // Reserved keys cannot be set by anyone.
    let refused = Command::new(cmdop_bin())
        .args(["admin", "--data-dir"])
        .arg(dir)
        .args(["label", web1, "cmdop.io/status=online"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("reserved"));

    // One command on two machines: each line prefixed with its host, a
    // summary on stderr, exit 0.
    let out = cli(&f, &["exec", "-l", "role=web", "echo hello; echo oops >&2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut got: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(got, [format!("{web1}: hello"), format!("{web2}: hello")]);
    assert!(
        stderr(&out).contains(&format!("{web1}: oops")),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("2 ok, 0 failed, 0 did not run"),
        "{}",
        stderr(&out)
    );

    // One machine failing (exactly one of two wins an atomic mkdir): exit
    // 1, and the summary names the failure.
    let marker = f._dir.path().join("first");
    let race = format!("mkdir '{}' 2>/dev/null || exit 5", marker.display());
    let out = cli(&f, &["exec", "-l", "env=prod", &race]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 ok, 1 failed, 0 did not run"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(": exit 5"), "{}", stderr(&out));

    // Rolling batches of one never overlap (a lock directory proves it);
    // all three at once do.
    let lock = f._dir.path().join("lock");
    let exclusive = format!(
        "mkdir '{0}' 2>/dev/null || exit 9; sleep 0.3; rmdir '{0}'",
        lock.display()
    );
    let out = cli(&f, &["exec", "-l", "role", "--batch", "1", &exclusive]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("3 ok, 0 failed"), "{}", stderr(&out));
    let out = cli(&f, &["exec", "-l", "role", "--batch", "100%", &exclusive]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(": exit 9"), "{}", stderr(&out));
    let _ = std::fs::remove_dir(&lock);
    let bad = cli(&f, &["exec", "-l", "role", "--batch", "0", "true"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--batch 10"),
        "{bad:?}"
    );

    // JSON: one object per machine with its exact outcome.
    let out = cli(
        &f,
        &[
            "exec",
            "--json",
            "-l",
            "role=web",
            "printf out; printf err >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    for line in stdout(&out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["exit_code"], 7);
        assert_eq!(v["status"], "failed");
        assert_eq!(v["stdout"], "out");
        assert_eq!(v["stderr"], "err");
        assert!(v["machine_id"].as_str().unwrap().starts_with("mach_"));
    }
    assert_eq!(stdout(&out).lines().count(), 2);

    // Several machines online and no -H/-l: refused, naming some of them.
    let out = cli(&f, &["exec", "true"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("3 machines are online") && err.contains("-H HOST"),
        "{err}"
    );
    // A selector that matches nothing is an error, not silence.
    let out = cli(&f, &["exec", "-l", "env=nowhere", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no machine matches"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn an_offline_machine_of_the_selection_did_not_run() {
    let mut f = fleet("off").await;
    let gone = f.hosts[2].clone();
    f._agents[2].kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listed(&f, &["-l", "cmdop.io/status=offline"]).contains(&gone) {
        assert!(
            Instant::now() < deadline,
            "the killed agent still shows as online"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli(&f, &["exec", "-l", "env=prod", "echo ran"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{}: ran", f.hosts[0]));
    let err = stderr(&out);
    assert!(err.contains("1 ok, 0 failed, 1 did not run"), "{err}");
    assert!(
        err.contains(&format!("{gone}: did not run: offline")),
        "{err}"
    );
    let listed = cli(&f, &["machines", "-l", "cmdop.io/status=offline"]);
    assert!(stdout(&listed).contains(&gone), "{}", stdout(&listed));
}

/// Each machine's outcome is exact: exit code, a confirmed timeout, an
/// unknown outcome when the agent dies mid-run; a megabyte from each of two
/// machines never mixes.
#[tokio::test]
async fn every_machine_s_outcome_is_exact_and_outputs_never_mix() {
    let mut f = fleet("ex").await;
    let [web1, web2, db1] = [f.hosts[0].clone(), f.hosts[1].clone(), f.hosts[2].clone()];
    let script = format!(
        "{WHO_AM_I}; case $h in \
         *web-1) yes aaaaaaaaaaaaaaa | head -c 1048576;; \
         *web-2) yes bbbbbbbbbbbbbbb | head -c 1048576; sleep 30;; \
         *db-1) echo failing >&2; exit 4;; esac"
    );
    let out = cli(&f, &["exec", "-l", "role", "--timeout", "3s", &script]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    let (mut a, mut b) = (0usize, 0usize);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{web1}: ")) {
            assert_eq!(
                rest, "aaaaaaaaaaaaaaa",
                "a line of {web1} mixed with another"
            );
            a += rest.len() + 1;
        } else if let Some(rest) = line.strip_prefix(&format!("{web2}: ")) {
            assert_eq!(
                rest, "bbbbbbbbbbbbbbb",
                "a line of {web2} mixed with another"
            );
            b += rest.len() + 1;
        } else {
            panic!("a line without its machine: {line:?}");
        }
    }
    // 1 MiB each; the last line of each is cut at the megabyte.
    assert!(
        (1_048_560..=1_048_576 + 16).contains(&a),
        "{a} bytes of {web1}"
    );
    assert!(
        (1_048_560..=1_048_576 + 16).contains(&b),
        "{b} bytes of {web2}"
    );
    let err = stderr(&out);
    assert!(err.contains(&format!("{db1}: failing")), "{err}");
    assert!(err.contains("1 ok, 2 failed, 0 did not run"), "{err}");
    assert!(err.contains(&format!("{db1}: exit 4")), "{err}");
    assert!(
        err.contains(&format!("{web2}: timed out: killed after --timeout")),
        "{err}"
    );

    // The agent of the only selected machine dies while the command runs:
    // its outcome is unknown (never "killed", never run again).
    let mut run = Command::new(cmdop_bin())
        .args(["exec", "--json", "-l", "role=db", "sleep 20"])
        .env("CMDOP_SERVER", format!("http://{}", f.server.addr))
        .env("CMDOP_API_KEY", &f.ws.api_key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmdop exec");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f._agents[2].kill();
    let out = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            if run.try_wait().expect("wait").is_some() {
                return run.wait_with_output().expect("output");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "cmdop exec hung"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one object");
    assert_eq!(v["hostname"], db1.as_str());
    assert_eq!(v["status"], "outcome_unknown", "{v}");
    assert!(v["exit_code"].is_null());
}

/// One ExecFleet call brings every selected machine's events: output, an
/// exit code, a confirmed timeout, a failure limit, an offline machine as
/// not run; a slow machine ends last without holding the others; dropping
/// the call stops what runs.
#[tokio::test]
async fn one_exec_fleet_call_streams_every_machine_s_events() {
    use cmdop_proto::ext::{exec_fleet_not_run::Reason, ExecFleetRequest, ServerInfoRequest};
    let mut f = fleet("sf").await;
    let [web1, web2, db1] = [f.hosts[0].clone(), f.hosts[1].clone(), f.hosts[2].clone()];
    let mut e = ext(&f.server.addr, Some(&f.ws.api_key)).await;
    let info = e
        .server_info(ServerInfoRequest {})
        .await
        .expect("ServerInfo")
        .into_inner();
    assert!(
        info.capabilities
            .iter()
            .any(|c| c == cmdop_proto::caps::EXEC_FLEET),
        "{info:?}"
    );
    let req = |command: String| ExecFleetRequest {
        selector: "role".into(),
        command,
        accept_unknown_outcome: true,
        ..Default::default()
    };

    // web-1 prints, db-1 fails, web-2 runs past its timeout.
    let script = format!(
        "{WHO_AM_I}; case $h in \
         *web-1) echo out; echo err >&2;; \
         *web-2) echo before; sleep 30;; \
         *db-1) exit 4;; esac"
    );
    let started = Instant::now();
    let stream = e
        .exec_fleet(ExecFleetRequest {
            timeout_ms: 2000,
            ..req(script)
        })
        .await
        .expect("ExecFleet")
        .into_inner();
    let (all, ended) = fleet_events(stream).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(all.len(), 3);
    assert_eq!(all[&web1].exit().exit_code, 0);
    assert_eq!(all[&web1].stdout, b"out\n");
    assert_eq!(all[&web1].stderr, b"err\n");
    assert_eq!(all[&db1].exit().exit_code, 4);
    assert!(all[&web2].exit().timed_out, "{:?}", all[&web2].ends);
    assert_eq!(all[&web2].stdout, b"before\n", "kept up to the timeout");
    assert!(all.values().all(|m| m.started));
    assert!(all[&db1].machine.labels.contains_key("role"));
    // The slow machine held only itself: the others ended first.
    assert_eq!(ended.last(), Some(&web2), "{ended:?}");

    // The failure limit: one machine at a time, the first failure stops
    // new starts; the others did not run.
    let stream = e
        .exec_fleet(ExecFleetRequest {
            parallel: 1,
            max_failures: Some(1),
            ..req("exit 3".into())
        })
        .await
        .expect("ExecFleet")
        .into_inner();
    let (all, ended) = fleet_events(stream).await;
    assert_eq!(all[&ended[0]].exit().exit_code, 3);
    for host in &ended[1..] {
        assert_eq!(all[host].not_run(), Reason::AfterMaxFailures);
        assert!(!all[host].started);
    }

    // What is wrong is said up front.
    let too_many = e
        .exec_fleet(ExecFleetRequest {
            parallel: 257,
            ..req("true".into())
        })
        .await
        .expect_err("parallel above the limit");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(too_many.message().contains("256"), "{too_many:?}");
    let both = e
        .exec_fleet(ExecFleetRequest {
            batch_size: 1,
            batch_percent: 50,
            ..req("true".into())
        })
        .await
        .expect_err("two batch sizes");
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    let nothing = e
        .exec_fleet(ExecFleetRequest {
            selector: "env=nowhere".into(),
            ..req("true".into())
        })
        .await
        .expect_err("an empty selection");
    assert_eq!(nothing.code(), tonic::Code::NotFound);

    // Dropping the call stops every running command.
    let pids = f._dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let script = format!(
        "{WHO_AM_I}; echo $$ > '{}'/$h; echo running; exec sleep 60",
        pids.display()
    );
    let mut stream = e
        .exec_fleet(req(script))
        .await
        .expect("ExecFleet")
        .into_inner();
    let mut running = 0;
    while running < 3 {
        let ev = stream.message().await.expect("stream").expect("an event");
        if matches!(
            ev.event,
            Some(cmdop_proto::ext::exec_fleet_event::Event::Stdout(_))
        ) {
            running += 1;
        }
    }
    drop(stream);
    wait_recorded_pids_gone(&pids, &f.hosts, "a command of a dropped ExecFleet").await;

    // An offline machine of the selection did not run; the others did.
    f._agents[2].kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listed(&f, &["-l", "cmdop.io/status=offline"]).contains(&db1) {
        assert!(Instant::now() < deadline, "{db1} still online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream = e
        .exec_fleet(req("echo hi".into()))
        .await
        .expect("ExecFleet")
        .into_inner();
    let (all, _) = fleet_events(stream).await;
    assert_eq!(all[&db1].not_run(), Reason::Offline);
    assert!(!all[&db1].started);
    for host in [&web1, &web2] {
        assert_eq!(all[host].exit().exit_code, 0);
        assert_eq!(all[host].stdout, b"hi\n");
    }
}

/// `cmdop exec -l` makes one call on a server with ExecFleet (which holds
/// one of the key's exec slots, however many machines, and then runs them
/// one at a time), and one Exec per
/// machine on a server without it (each holding a slot: with one slot per
/// key, only one machine gets to run at a time, the others are refused).
#[tokio::test]
async fn the_cli_fans_out_on_the_server_or_itself_without_it() {
    use cmdop_proto::ext::{ExecFleetRequest, ServerInfoRequest};
    let slow = "sleep 1; echo done";
    let f = fleet_with("sv", &["--max-execs-per-key", "1"]).await;
    let out = cli(&f, &["exec", "-l", "role", "--parallel", "3", slow]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("3 ok, 0 failed, 0 did not run"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
    drop(f);

    let f = fleet_with("cl", &["--no-server-fanout", "--max-execs-per-key", "1"]).await;
    let mut e = ext(&f.server.addr, Some(&f.ws.api_key)).await;
    let info = e
        .server_info(ServerInfoRequest {})
        .await
        .expect("ServerInfo")
        .into_inner();
    assert!(
        !info
            .capabilities
            .iter()
            .any(|c| c == cmdop_proto::caps::EXEC_FLEET),
        "{info:?}"
    );
    let refused = e
        .exec_fleet(ExecFleetRequest {
            selector: "role".into(),
            command: "true".into(),
            ..Default::default()
        })
        .await
        .expect_err("ExecFleet is off");
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    // One machine at a time: the client's own fan-out, exact as ever.
    let out = cli(&f, &["exec", "-l", "role", "--parallel", "1", "echo here"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut got: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    got.sort();
    let mut want: Vec<String> = f.hosts.iter().map(|h| format!("{h}: here")).collect();
    want.sort();
    assert_eq!(got, want);
    // Three at once: one Exec each, and the key has one slot.
    let out = cli(&f, &["exec", "-l", "role", "--parallel", "3", slow]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 ok, 2 failed"), "{}", stderr(&out));
}

/// A machine whose agent has no native exec comes back from ExecFleet as
/// not run (unsupported), and the client then tries it itself, as its own
/// fan-out always did: the others ran through the server meanwhile.
#[tokio::test]
async fn a_machine_without_native_exec_is_left_to_the_client() {
    use cmdop_proto::ext::{exec_fleet_not_run::Reason, ExecFleetRequest};
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0", &[]);
    let ws = create_workspace(dir.path(), "fleet");
    let (native, terminal_only) = (unique("nx-native"), unique("nx-terminal"));
    let mut agents = Vec::new();
    for (host, extra) in [
        (&native, &[][..]),
        (&terminal_only, &["--no-native-exec"][..]),
    ] {
        let token = enroll_token(dir.path(), "fleet");
        agents.push(start_agent(
            &server.addr,
            Some(&token),
            &dir.path().join(format!("{host}.json")),
            host,
            extra,
        ));
    }
    let mut t = terminal(&server.addr, Some(&ws.api_key)).await;
    let mut e = ext(&server.addr, Some(&ws.api_key)).await;
    wait_connected(&mut t, &terminal_only).await;
    wait_connected(&mut t, &native).await;
    wait_native_exec(&mut e, &native).await;
    let hosts = format!("{native},{terminal_only}");
    let stream = e
        .exec_fleet(ExecFleetRequest {
            hosts: hosts.clone(),
            command: "echo via-fleet".into(),
            ..Default::default()
        })
        .await
        .expect("ExecFleet")
        .into_inner();
    let (all, _) = fleet_events(stream).await;
    assert_eq!(all[&native].exit().exit_code, 0);
    assert_eq!(all[&native].stdout, b"via-fleet\n");
    assert_eq!(all[&terminal_only].not_run(), Reason::Unsupported);

    let f = Fleet {
        server,
        ws,
        _agents: agents,
        hosts: vec![native.clone(), terminal_only.clone()],
        _dir: dir,
    };
    let out = cli(&f, &["exec", "-H", &hosts, "echo ran-$((40+2))"]);
    assert_eq!(
        stdout(&out).trim(),
        format!("{native}: ran-42"),
        "{}",
        stderr(&out)
    );
    // The client's terminal path runs on its selected machine only, so a
    // fan-out's machine without native exec ends as an error there (as
    // before ExecFleet), named in the summary.
    let err = stderr(&out);
    assert!(err.contains("1 ok, 1 failed, 0 did not run"), "{err}");
    assert!(err.contains(&format!("{terminal_only}: ")), "{err}");
}
