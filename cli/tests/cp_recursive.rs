//! `cmdop cp -r` both ways and the destination rules of cp and scp,
//! against a real control plane and agent. The agent runs on this machine,
//! so its side of each copy is checked in the local file system.

mod common;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, UNIX_EPOCH},
};

use common::*;

fn cmdop(s: &Stack, args: &[&str]) -> Output {
    Command::new(cmdop_bin())
        .args(args)
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &s.ws.api_key)
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr (no bar without a terminal): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const MTIME: u64 = 1_600_000_000;

fn set_mtime(path: &Path, secs: u64) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// tree/ (0750): a.txt (0640), run.sh (0755), empty/ (0700),
/// sub/b.txt, sub/deeper/c.txt, link -> a.txt, dangling -> nowhere.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    std::fs::write(root.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(root.join("sub/b.txt"), b"bravo\n").unwrap();
    std::fs::write(root.join("sub/deeper/c.txt"), pattern(100_000, 3)).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode("a.txt", 0o640);
    mode("run.sh", 0o755);
    mode("empty", 0o700);
    for f in ["a.txt", "run.sh", "sub/b.txt", "sub/deeper/c.txt"] {
        set_mtime(&root.join(f), MTIME);
    }
    for d in ["sub/deeper", "sub", "empty"] {
        set_mtime(&root.join(d), MTIME + 10);
    }
    mode(".", 0o750);
}

/// Same files, contents, links, modes and (with `times`) file times.
fn assert_same_tree(a: &Path, b: &Path, times: bool) {
    for f in ["a.txt", "run.sh", "sub/b.txt", "sub/deeper/c.txt"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap_or_else(|e| panic!("{}: {e}", b.join(f).display())),
            "{f}"
        );
        let (ma, mb) = (a.join(f).metadata().unwrap(), b.join(f).metadata().unwrap());
        assert_eq!(ma.mode() & 0o777, mb.mode() & 0o777, "mode of {f}");
        if times {
            assert_eq!(mb.mtime(), MTIME as i64, "time of {f}");
        }
    }
    assert!(b.join("empty").is_dir(), "the empty directory is copied");
    assert_eq!(
        b.join("empty").metadata().unwrap().mode() & 0o777,
        0o700,
        "mode of empty/"
    );
    assert_eq!(
        b.metadata().unwrap().mode() & 0o777,
        0o750,
        "mode of the top directory"
    );
    if times {
        assert_eq!(
            b.join("sub").metadata().unwrap().mtime(),
            (MTIME + 10) as i64
        );
    }
    for (link, to) in [("link", "a.txt"), ("dangling", "nowhere")] {
        assert_eq!(
            std::fs::read_link(b.join(link)).unwrap().to_str(),
            Some(to),
            "{link} stays a link"
        );
    }
}

#[tokio::test]
async fn cp_r_round_trips_a_tree_with_links_empty_dirs_modes_and_times() {
    let s = stack("cpr", &[]).await;
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    make_tree(&tree);
    let remote = s.dir.path().join("remote");
    std::fs::create_dir(&remote).unwrap();
    let remote_spec = format!("{}:{}", s.host, remote.display());

    // Up, into an existing directory: remote/tree.
    ok(&cmdop(
        &s,
        &["cp", "-r", "-p", tree.to_str().unwrap(), &remote_spec],
    ));
    assert_same_tree(&tree, &remote.join("tree"), true);

    // Down, into an existing directory: back/tree.
    let back = local.path().join("back");
    std::fs::create_dir(&back).unwrap();
    ok(&cmdop(
        &s,
        &[
            "cp",
            "-r",
            "-p",
            &format!("{remote_spec}/tree"),
            back.to_str().unwrap(),
        ],
    ));
    assert_same_tree(&tree, &back.join("tree"), true);

    // To a name that does not exist yet: the copy takes that name, both ways.
    ok(&cmdop(
        &s,
        &[
            "cp",
            "-r",
            tree.to_str().unwrap(),
            &format!("{remote_spec}/renamed"),
        ],
    ));
    assert!(remote.join("renamed/sub/deeper/c.txt").is_file());
    assert!(!remote.join("renamed/tree").exists());
    let fresh = local.path().join("fresh");
    ok(&cmdop(
        &s,
        &[
            "cp",
            "-r",
            &format!("{remote_spec}/renamed"),
            fresh.to_str().unwrap(),
        ],
    ));
    assert!(fresh.join("sub/deeper/c.txt").is_file());
    assert_eq!(
        std::fs::read_link(fresh.join("link")).unwrap().to_str(),
        Some("a.txt")
    );

    // A directory without -r is refused, naming the flag; nothing is made.
    let out = cmdop(
        &s,
        &["cp", tree.to_str().unwrap(), &format!("{remote_spec}/nope")],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-r"),
        "{out:?}"
    );
    assert!(!remote.join("nope").exists());
}

#[tokio::test]
async fn an_existing_directory_receives_each_source_by_name() {
    let s = stack("cpdir", &[]).await;
    let local = tempfile::tempdir().unwrap();
    let (one, two) = (local.path().join("one.txt"), local.path().join("two.txt"));
    std::fs::write(&one, b"1").unwrap();
    std::fs::write(&two, b"2").unwrap();
    let remote = s.dir.path().join("inbox");
    std::fs::create_dir(&remote).unwrap();
    // No trailing slash: still "into", because the directory exists.
    let target = format!("{}:{}", s.host, remote.display());
    ok(&cmdop(&s, &["cp", one.to_str().unwrap(), &target]));
    assert_eq!(std::fs::read(remote.join("one.txt")).unwrap(), b"1");
    // Several sources into one directory, both ways.
    ok(&cmdop(
        &s,
        &["cp", one.to_str().unwrap(), two.to_str().unwrap(), &target],
    ));
    assert_eq!(std::fs::read(remote.join("two.txt")).unwrap(), b"2");
    let down = local.path().join("down");
    std::fs::create_dir(&down).unwrap();
    ok(&cmdop(
        &s,
        &[
            "cp",
            &format!("{target}/one.txt"),
            &format!("{target}/two.txt"),
            down.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(down.join("one.txt")).unwrap(), b"1");
    assert_eq!(std::fs::read(down.join("two.txt")).unwrap(), b"2");
    // A key that may write files but not list them still uploads: the
    // check whether the target is a directory is refused to it, and the
    // path is taken as written.
    let writer = admin(
        s.dir.path(),
        &[
            "create-key",
            "--workspace",
            "alpha",
            "--name",
            "uploader",
            "--allow",
            "files:write",
        ],
    );
    let three = local.path().join("three.txt");
    std::fs::write(&three, b"3").unwrap();
    let out = Command::new(cmdop_bin())
        .args(["cp", three.to_str().unwrap(), &format!("{target}/3.txt")])
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &writer)
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop");
    ok(&out);
    assert_eq!(std::fs::read(remote.join("3.txt")).unwrap(), b"3");

    // -n refuses to replace, both ways, naming the flag to leave out.
    for (from, to) in [
        (one.to_str().unwrap().to_string(), target.clone()),
        (
            format!("{target}/one.txt"),
            down.to_str().unwrap().to_string(),
        ),
    ] {
        let out = cmdop(&s, &["cp", "-n", &from, &to]);
        assert_eq!(out.status.code(), Some(255));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("-n/--no-clobber"), "{err}");
        assert!(!err.contains("overwrite="), "{err}");
    }
    // Several sources but no directory to hold them: refused.
    let out = cmdop(
        &s,
        &[
            "cp",
            one.to_str().unwrap(),
            two.to_str().unwrap(),
            &format!("{target}/missing"),
        ],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("directory"),
        "{out:?}"
    );
}
