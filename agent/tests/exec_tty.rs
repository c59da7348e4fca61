//! Native Exec in a pseudo-terminal (`ExecStart.terminal`) against real
//! processes: the terminal is the command's stdin, stdout and stderr, has
//! the size asked for and takes resizes, and a typed 0x03 interrupts the
//! foreground process as Ctrl-C does.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cmdop_agent::exec::run_exec_piped;
use cmdop_proto::ext::{agent_uplink, AgentUplink, ExecStart, ExecStdin, ExecTerminal};
use tokio::sync::{mpsc, oneshot};

fn start(command: &str, rows: u32, cols: u32) -> ExecStart {
    ExecStart {
        exec_id: "t1".into(),
        command: command.into(),
        stdin_open: true,
        terminal: Some(ExecTerminal {
            rows,
            cols,
            term: String::new(),
        }),
        ..Default::default()
    }
}

/// Collects the command's output as it comes; panics on stderr output (a
/// terminal has one stream).
fn collect(mut rx: mpsc::Receiver<AgentUplink>) -> Arc<Mutex<Vec<u8>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&out);
    tokio::spawn(async move {
        while let Some(AgentUplink { msg }) = rx.recv().await {
            if let Some(agent_uplink::Msg::Output(o)) = msg {
                assert!(!o.is_stderr, "stderr output from a terminal");
                seen.lock().unwrap().extend_from_slice(&o.data);
            }
        }
    });
    out
}

async fn wait_for(out: &Mutex<Vec<u8>>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        if text.contains(what) {
            return;
        }
        assert!(Instant::now() < deadline, "{what:?} never came: {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_terminal_is_stdin_stdout_and_stderr_with_the_size_asked() {
    let (tx, rx) = mpsc::channel(64);
    let out = collect(rx);
    let (_keep, cancel) = oneshot::channel();
    let command = "tty; stty size; echo \"term=$TERM\"; echo to-stderr >&2; test -t 0 && exit 5";
    let done = run_exec_piped(
        start(command, 33, 111),
        &std::env::temp_dir(),
        cancel,
        &tx,
        None,
        None,
        None,
    )
    .await;
    drop(tx);
    let exit = done.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (5, 0), "{exit:?}");
    let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("33 111"), "{text:?}");
    assert!(text.contains("term=xterm-256color"), "{text:?}");
    assert!(text.contains("to-stderr"), "{text:?}");
}

#[tokio::test]
async fn typed_input_resizes_and_ctrl_c_reach_the_command() {
    let (tx, rx) = mpsc::channel(64);
    let out = collect(rx);
    let (_keep, cancel) = oneshot::channel();
    let (more, more_rx) = mpsc::unbounded_channel();
    let run = tokio::spawn(async move {
        run_exec_piped(
            start("read a; echo got-$a; stty size; sleep 300", 24, 80),
            &std::env::temp_dir(),
            cancel,
            &tx,
            None,
            None,
            Some(more_rx),
        )
        .await
    });
    let step = |data: &[u8], resize: Option<(u32, u32)>| ExecStdin {
        exec_id: "t1".into(),
        data: bytes::Bytes::copy_from_slice(data),
        close: false,
        resize: resize.map(|(rows, cols)| ExecTerminal {
            rows,
            cols,
            term: String::new(),
        }),
    };
    // In order: the resize applies before the line that lets stty run.
    more.send(step(b"", Some((40, 120)))).unwrap();
    more.send(step(b"bob\r", None)).unwrap();
    wait_for(&out, "got-bob").await;
    wait_for(&out, "40 120").await;
    more.send(step(b"\x03", None)).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("Ctrl-C did not end the command")
        .unwrap();
    let exit = done.exit.unwrap();
    assert_eq!(exit.signal, 2, "SIGINT from the terminal: {exit:?}");
}
