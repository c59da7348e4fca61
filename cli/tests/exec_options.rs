//! System tests for execute options (stdin bytes, environment, working
//! directory) and streamed stdin, on the native path and on the terminal
//! (official) fallback, through the library and `cmdop exec`.

mod common;

use std::process::{Command, Stdio};

use cmdop::client::{CancelToken, ErrorKind, ExecOptions};
use common::*;

fn opts_in(dir: &std::path::Path) -> ExecOptions {
    ExecOptions {
        stdin: b"line one\nline two\n".to_vec(),
        env: vec![
            ("CMDOP_T1".into(), "it's a $value".into()),
            ("CMDOP_T2".into(), "two".into()),
        ],
        working_directory: dir.display().to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn native_exec_honours_stdin_env_and_cwd() {
    let s = stack("opts-host", &[]).await;
    let c = library_client(&s, false).await;
    let dir = s.dir.path().canonicalize().unwrap();
    let out = c
        .execute_with(
            r#"wc -l; printf '%s|%s|' "$CMDOP_T1" "$CMDOP_T2"; pwd"#,
            &opts_in(&dir),
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect("exec");
    assert!(out.native);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>().join(" "),
        format!("2 it's a $value|two|{}", dir.display()),
        "{text:?}"
    );

    let missing = ExecOptions {
        working_directory: dir.join("no-such-dir").display().to_string(),
        ..Default::default()
    };
    let e = c
        .execute_with("true", &missing, |_, _| {}, CancelToken::new())
        .await
        .expect_err("missing directory");
    assert_eq!(e.kind(), ErrorKind::OperationFailed, "{e}");
}

#[tokio::test]
async fn terminal_fallback_applies_env_and_cwd_and_refuses_stdin() {
    let s = stack("opts-host", &["--no-extensions"]).await;
    let c = library_client(&s, false).await;
    let dir = s.dir.path().canonicalize().unwrap();
    let mut opts = opts_in(&dir);
    let e = c
        .execute_with("cat", &opts, |_, _| {}, CancelToken::new())
        .await
        .expect_err("stdin cannot be typed faithfully");
    assert_eq!(e.kind(), ErrorKind::NotSupported, "{e}");

    opts.stdin.clear();
    let out = c
        .execute_with(
            r#"printf '%s|%s|' "$CMDOP_T1" "$CMDOP_T2"; pwd"#,
            &opts,
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect("exec over the terminal");
    assert!(!out.native);
    assert_eq!(
        String::from_utf8_lossy(&out.output).trim(),
        format!("it's a $value|two|{}", dir.display())
    );
    // The variables stay in the command's subshell.
    let out = c.execute("printf '%s' \"$CMDOP_T2\"", None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.output).trim(), "");

    let missing = ExecOptions {
        working_directory: dir.join("no-such-dir").display().to_string(),
        ..Default::default()
    };
    let e = c
        .execute_with("true", &missing, |_, _| {}, CancelToken::new())
        .await
        .expect_err("missing directory");
    assert_eq!(e.kind(), ErrorKind::OperationFailed, "{e}");
}

fn cmdop_exec(s: &Stack, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut cmd = Command::new(cmdop_bin());
    cmd.arg("exec")
        .args(["-H", &s.host])
        .args(args)
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &s.ws.api_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Some(input) = stdin else {
        return cmd.stdin(Stdio::null()).output().expect("run cmdop exec");
    };
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn cmdop exec");
    let mut pipe = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait cmdop exec");
    feeder.join().unwrap();
    out
}

#[tokio::test]
async fn cmdop_exec_takes_env_and_cwd() {
    let s = stack("opts-host", &[]).await;
    let _c = library_client(&s, false).await;
    let dir = s.dir.path().canonicalize().unwrap();
    let out = cmdop_exec(
        &s,
        &[
            "--env",
            "CMDOP_A=1",
            "-e",
            "CMDOP_B=x=y",
            "--cwd",
            dir.to_str().unwrap(),
            "--",
            r#"printf '%s %s ' "$CMDOP_A" "$CMDOP_B"; pwd"#,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("1 x=y {}", dir.display())
    );
    let out = cmdop_exec(&s, &["--env", "novalue", "true"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("K=V"));
}

#[tokio::test]
async fn streamed_stdin_feeds_cat_into_a_file() {
    let s = stack("opts-host", &[]).await;
    let c = library_client(&s, false).await;
    let target = s.dir.path().join("fed.bin");
    // 24 MiB in uneven pieces: far more than every window on the way.
    let data: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (writer, reader) = cmdop::client::stdin_pipe();
    let feed = {
        let data = data.clone();
        tokio::spawn(async move {
            for piece in data.chunks(300_001) {
                writer.write(piece).await.expect("write stdin");
            }
            writer.close().await.expect("close stdin");
        })
    };
    let opts = ExecOptions {
        stdin: b"".to_vec(),
        ..Default::default()
    };
    let out = c
        .execute_piped(
            &format!("cat > '{}'; echo done", target.display()),
            &opts,
            reader,
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect("exec with streamed stdin");
    feed.await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    let written = std::fs::read(&target).unwrap();
    assert_eq!(written.len(), data.len());
    assert!(written == data, "the file differs from what was streamed");

    // Bytes in the options come first; dropping the writer closes stdin.
    let (writer, reader) = cmdop::client::stdin_pipe();
    let opts = ExecOptions {
        stdin: b"first ".to_vec(),
        ..Default::default()
    };
    let run = c.execute_piped("cat", &opts, reader, |_, _| {}, CancelToken::new());
    let feed = async move {
        writer.write(b"second").await.unwrap();
        drop(writer);
    };
    let (out, ()) = tokio::join!(run, feed);
    assert_eq!(out.unwrap().stdout, b"first second");

    // A command that stops reading does not block the writer forever.
    let (writer, reader) = cmdop::client::stdin_pipe();
    let defaults = ExecOptions::default();
    let run = c.execute_piped(
        "head -c 5",
        &defaults,
        reader,
        |_, _| {},
        CancelToken::new(),
    );
    let feed = async move {
        let big = vec![b'x'; 1024 * 1024];
        for _ in 0..32 {
            if writer.write(&big).await.is_err() {
                break; // the call ended
            }
        }
    };
    let (out, ()) = tokio::join!(run, feed);
    assert_eq!(out.unwrap().stdout, b"xxxxx");
}

#[tokio::test]
async fn streamed_stdin_is_not_supported_without_extensions() {
    let s = stack("opts-host", &["--no-extensions"]).await;
    let c = library_client(&s, false).await;
    let (_writer, reader) = cmdop::client::stdin_pipe();
    let e = c
        .execute_piped(
            "cat",
            &ExecOptions::default(),
            reader,
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect_err("no streamed stdin over the terminal");
    assert_eq!(e.kind(), ErrorKind::NotSupported, "{e}");

    // The CLI says so too, and runs with --no-stdin.
    let out = cmdop_exec(&s, &["cat"], Some(b"data"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stdin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cmdop_exec(&s, &["--no-stdin", "echo", "ok"], Some(b"data"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[tokio::test]
async fn tar_round_trip_through_cmdop_exec_stdin() {
    let s = stack("opts-host", &[]).await;
    let _c = library_client(&s, false).await;
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("sub")).unwrap();
    std::fs::write(src.path().join("a.txt"), b"alpha\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(src.path().join("sub/big.bin"), &big).unwrap();
    let dst = s.dir.path().join("unpacked");
    std::fs::create_dir(&dst).unwrap();

    // tar c . | cmdop exec -H host 'tar x -C dst'
    let mut tar = Command::new("tar")
        .args(["c", "-C", src.path().to_str().unwrap(), "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tar");
    let out = Command::new(cmdop_bin())
        .args([
            "exec",
            "-H",
            &s.host,
            &format!("tar x -C '{}'", dst.display()),
        ])
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &s.ws.api_key)
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("run cmdop exec");
    assert!(tar.wait().unwrap().success());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"alpha\n");
    assert!(std::fs::read(dst.join("sub/big.bin")).unwrap() == big);

    // And a plain pipe: printf | cmdop exec 'wc -c'.
    let out = cmdop_exec(&s, &["wc", "-c"], Some(&[b'z'; 100_000]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100000");
}
