//! The official SDKs' execute() technique on our PTY: type a printf-marker
//! command line into the shell and parse output and exit code back out.

use std::time::{Duration, Instant};

use cmdop_agent::pty_session::{PtySession, ShellSpec};

/// Collects PTY output until `done` matches or the deadline passes.
async fn read_until(
    pty: &PtySession,
    out: &mut Vec<u8>,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while !done(&String::from_utf8_lossy(out)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, pty.next_output()).await {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(_) => return false,
        }
    }
    true
}

/// Parses output the way the SDKs do: the text between the last START
/// marker and `END:<digits>`, minus marker/echo lines; returns (output, code).
fn parse(text: &str, id: &str) -> Option<(String, i32)> {
    let end_tag = format!("<<CMD:{id}:END:");
    let mut search_from = 0;
    let (end_at, code) = loop {
        let at = search_from + text[search_from..].find(&end_tag)?;
        let rest = &text[at + end_tag.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !digits.is_empty() && rest[digits.len()..].starts_with(">>") {
            break (at, digits.parse().ok()?);
        }
        search_from = at + end_tag.len();
    };
    let start_tag = format!("<<CMD:{id}:START>>");
    let start_at = text[..end_at].rfind(&start_tag)? + start_tag.len();
    let body = text[start_at..end_at]
        .replace('\r', "")
        .lines()
        .filter(|l| !l.contains("<<CMD:") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Some((body, code))
}

fn shells() -> Vec<&'static str> {
    ["/bin/bash", "/bin/sh"]
        .into_iter()
        .filter(|s| std::path::Path::new(s).exists())
        .collect()
}

#[tokio::test]
async fn marker_round_trip_reports_output_and_exit_code() {
    for shell in shells() {
        let home = tempfile::tempdir().unwrap();
        let spec = ShellSpec::choose(Some(shell), home.path(), Some(home.path()));
        let pty = PtySession::start(spec).unwrap();
        let mut out = Vec::new();

        for (id, cmd, want_out, want_code) in [
            ("a1b2c3d4e5f6", "echo hi; (exit 7)", "hi", 7),
            ("0f0f0f0f0f0f", "echo one && echo two", "one\ntwo", 0),
        ] {
            out.clear();
            let line = format!("printf \"\\n<<CMD:{id}:START>>\\n\"; {cmd}; printf \"\\n<<CMD:{id}:END:%d>>\\n\" $?\n");
            pty.write_input(line.into_bytes()).await;
            let ok = read_until(&pty, &mut out, Duration::from_secs(10), |t| {
                parse(t, id).is_some()
            })
            .await;
            let text = String::from_utf8_lossy(&out);
            assert!(ok, "{shell}: no END marker in {text:?}");
            let (body, code) = parse(&text, id).unwrap();
            assert_eq!(code, want_code, "{shell}: {text:?}");
            assert_eq!(body, want_out, "{shell}: {text:?}");
            assert!(
                !text.contains("\x1b[?2004"),
                "{shell}: bracketed paste is on: {text:?}"
            );
        }
    }
}

#[tokio::test]
async fn ctrl_c_signal_interrupts_the_foreground_command_and_shell_restarts() {
    let home = tempfile::tempdir().unwrap();
    let spec = ShellSpec::choose(Some("/bin/sh"), home.path(), Some(home.path()));
    let pty = PtySession::start(spec).unwrap();
    let mut out = Vec::new();
    let begun = Instant::now();
    pty.write_input(b"sleep 30\n".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pty.signal(2).unwrap();
    // The interrupted command reports status 130 (128 + SIGINT).
    pty.write_input(b"echo after-sleep-$?\n".to_vec()).await;
    assert!(
        read_until(&pty, &mut out, Duration::from_secs(5), |t| t
            .contains("after-sleep-130"))
        .await,
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(begun.elapsed() < Duration::from_secs(10));

    // Resize is visible to the shell.
    pty.resize(40, 100).unwrap();
    out.clear();
    pty.write_input(b"stty size\n".to_vec()).await;
    assert!(
        read_until(&pty, &mut out, Duration::from_secs(5), |t| t
            .contains("40 100"))
        .await
    );

    // Exiting the shell starts a new one.
    let mut generation = pty.generation();
    let first = pty.shell_pid();
    pty.write_input(b"exit 3\n".to_vec()).await;
    tokio::time::timeout(Duration::from_secs(10), generation.changed())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(pty.shell_pid(), first);
    out.clear();
    pty.write_input(b"echo alive-$((40+2))\n".to_vec()).await;
    assert!(
        read_until(&pty, &mut out, Duration::from_secs(5), |t| t
            .contains("alive-42"))
        .await
    );
}
