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
