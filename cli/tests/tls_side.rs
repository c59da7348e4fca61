//! Side connections under TLS (capability `exec-raw-tls.v1`): a real
//! `cmdop server --tls-cert/--tls-key` and a real `cmdop agent` dialing it
//! over https. Bulk stdout leaves the gRPC stream only for TLS 1.3 run end
//! to end between agent and caller, each pinned by its certificate's
//! SHA-256; the control plane splices ciphertext. Driven through the
//! generated stubs (to see the protocol) and the library client.

mod common;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use std::time::Duration;

use cmdop::client::{set_log_sink, Client, ClientOptions, Credentials, LogLevel};
use cmdop_proto::{
    caps,
    ext::{exec_event::Event, ExecExit, ExecRequest, ServerInfoRequest},
    raw,
    raw_tls::{self, Identity},
};
use common::{side::*, *};
use tokio::io::AsyncReadExt;

/// `seq 1 LINES` is 69 MB, more than 64 MiB.
const LINES: u32 = 8_700_000;

/// A native Exec request on `machine_id` that asks for a side
/// connection, with the pin of `me` if given.
fn side_req(machine_id: &str, command: &str, me: Option<&Identity>) -> ExecRequest {
    ExecRequest {
        machine_id: machine_id.into(),
        command: command.into(),
        timeout_ms: 120_000,
        accept_raw_stdout: true,
        raw_tls_client_sha256: me
            .map(|id| bytes::Bytes::copy_from_slice(&id.pin()))
            .unwrap_or_default(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_stdout_under_tls_goes_through_the_pinned_side_connection_byte_for_byte() {
    let s = tls_stack("tls-side").await;
    let mut e = ext_tls(&s, Some(&s.ws.api_key)).await;
    let info = e
        .server_info(ServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.capabilities.iter().any(|c| c == caps::EXEC_RAW_TLS),
        "a TLS server offers TLS side connections: {:?}",
        info.capabilities
    );
    assert!(
        !info.capabilities.iter().any(|c| c == caps::EXEC_RAW),
        "a TLS server never offers plain side connections: {:?}",
        info.capabilities
    );
    let machine = machine_by_host(&mut e, &s.host).await.machine_id;

    let me = Arc::new(Identity::generate().unwrap());
    let req = side_req(
        &machine,
        &format!("{}; echo done >&2; exit 3", seq_with_a_pause(LINES)),
        Some(&me),
    );
    let mut stream = e.exec(req).await.expect("exec").into_inner();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut opening = None;
    let mut switched_at = None;
    let mut reader = None;
    let exit: ExecExit = loop {
        let ev = stream
            .message()
            .await
            .expect("exec stream")
            .expect("an exit event");
        match ev.event {
            Some(Event::Stdout(b)) => {
                assert!(
                    switched_at.is_none(),
                    "stdout on the stream after the switch"
                );
                stdout.extend_from_slice(&b);
            }
            Some(Event::Stderr(b)) => stderr.extend_from_slice(&b),
            Some(Event::RawOffer(offer)) => {
                assert!(opening.is_none(), "one offer per command");
                let agent_pin =
                    raw_tls::parse_pin(&offer.raw_tls_agent_sha256).expect("the agent's pin");
                let (addr, me) = (s.server.addr.clone(), Arc::clone(&me));
                // Handshakes run while the stream keeps flowing.
                opening = Some(tokio::spawn(async move {
                    let (conn, answer) = open_side(&addr, &offer.ticket).await;
                    assert_eq!(answer, raw::ACCEPTED);
                    raw_tls::connect(&me, agent_pin, conn).await
                }));
            }
            Some(Event::RawSwitch(_)) => {
                let mut conn = opening
                    .take()
                    .expect("switch without an offer")
                    .await
                    .unwrap()
                    .expect("the TLS handshake with the pinned agent");
                switched_at = Some(stdout.len());
                reader = Some(tokio::spawn(async move {
                    let mut rest = Vec::new();
                    conn.read_to_end(&mut rest).await.map(|_| rest)
                }));
            }
            Some(Event::Exit(x)) => break x,
            _ => {}
        }
    };
    let before = switched_at.expect("69 MB of stdout moves to the side connection");
    assert!(before >= 1024 * 1024, "{before} bytes before the switch");
    let rest = reader
        .expect("a reader")
        .await
        .unwrap()
        .expect("the side connection ends with close_notify");
    assert!(
        rest.len() > 64 << 20,
        "{} bytes on the side connection",
        rest.len()
    );
    assert_eq!(exit.raw_stdout_bytes, rest.len() as u64);
    stdout.extend_from_slice(&rest);
    assert!(
        stdout == seq_text(LINES),
        "stdout arrived in order and complete ({} bytes)",
        stdout.len()
    );
    assert_eq!(stderr, b"done\n");
    assert_eq!((exit.exit_code, exit.timed_out), (3, false));
}

/// Someone who learns the ticket (sniffed from a log, guessed) and the
/// agent's pin, but holds a different key than the caller's pin names,
/// gets a failed handshake and not one byte of output; the agent keeps
/// stdout on the Exec stream, where the real caller gets all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_without_the_pinned_key_gets_no_output() {
    let s = tls_stack("tls-side").await;
    let mut e = ext_tls(&s, Some(&s.ws.api_key)).await;
    let machine = machine_by_host(&mut e, &s.host).await.machine_id;
    let caller = Identity::generate().unwrap();
    let intruder = Arc::new(Identity::generate().unwrap());
    const LINES: u32 = 1_000_000;
    let req = side_req(&machine, &seq_with_a_pause(LINES), Some(&caller));
    let mut stream = e.exec(req).await.expect("exec").into_inner();
    let mut stdout = Vec::new();
    let mut attempt = None;
    let exit = loop {
        let ev = stream.message().await.expect("exec stream").expect("exit");
        match ev.event {
            Some(Event::Stdout(b)) => stdout.extend_from_slice(&b),
            Some(Event::RawOffer(offer)) => {
                let agent_pin = raw_tls::parse_pin(&offer.raw_tls_agent_sha256).unwrap();
                let (addr, intruder) = (s.server.addr.clone(), Arc::clone(&intruder));
                attempt = Some(tokio::spawn(async move {
                    let (conn, answer) = open_side(&addr, &offer.ticket).await;
                    // The rendezvous is only a rendezvous: it pairs anyone
                    // with the ticket.
                    assert_eq!(answer, raw::ACCEPTED);
                    let mut got = Vec::new();
                    let result = async {
                        let mut tls = raw_tls::connect(&intruder, agent_pin, conn).await?;
                        tls.read_to_end(&mut got).await
                    }
                    .await;
                    (result, got)
                }));
            }
            Some(Event::RawSwitch(_)) => panic!("the agent switched to an unauthenticated caller"),
            Some(Event::Exit(x)) => break x,
            _ => {}
        }
    };
    let (result, got) = attempt.expect("an offer").await.unwrap();
    assert!(result.is_err(), "the intruder's TLS must fail: {result:?}");
    assert!(got.is_empty(), "{} plaintext bytes leaked", got.len());
    assert_eq!(exit.raw_stdout_bytes, 0);
    assert!(stdout == seq_text(LINES), "all stdout stayed on the stream");
    assert_eq!(exit.exit_code, 0);
}

/// A caller that sends no pin (an old client, or one that does not want
/// side connections over TLS) gets no offer and everything on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_a_pin_gets_everything_on_the_stream() {
    let s = tls_stack("tls-side").await;
    let mut e = ext_tls(&s, Some(&s.ws.api_key)).await;
    let machine = machine_by_host(&mut e, &s.host).await.machine_id;
    const LINES: u32 = 1_000_000;
    let req = side_req(&machine, &seq_with_a_pause(LINES), None);
    let mut stream = e.exec(req).await.expect("exec").into_inner();
    let mut stdout = Vec::new();
    let exit = loop {
        let ev = stream.message().await.expect("exec stream").expect("exit");
        match ev.event {
            Some(Event::Stdout(b)) => stdout.extend_from_slice(&b),
            Some(Event::RawOffer(_)) => panic!("a plaintext side connection offered under TLS"),
            Some(Event::Exit(x)) => break x,
            _ => {}
        }
    };
    assert_eq!(exit.raw_stdout_bytes, 0);
    assert!(stdout == seq_text(LINES));
}

/// The library over TLS: big stdout moves to the pinned side connection
/// (its debug log says so) and arrives complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_reads_big_stdout_through_a_tls_side_connection() {
    let s = tls_stack("tls-side").await;
    let switches = Arc::new(AtomicUsize::new(0));
    let seen = switches.clone();
    set_log_sink(Some((
        LogLevel::Debug,
        Arc::new(move |_, msg: &str| {
            if msg.contains("continues on a side connection") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }),
    )));
    let mut opts = ClientOptions::remote(Credentials::ApiKey(s.ws.api_key.clone()));
    opts.server = format!("localhost:{}", s.port());
    opts.ca_pem = Some(s.ca_pem());
    opts.timeout = Duration::from_secs(30);
    opts.debug = true;
    let c = Client::new(opts).expect("client");
    c.open().await.expect("connect over TLS");
    c.set_machine(&s.host).await.expect("set_machine");
    const LINES: u32 = 3_000_000;
    let out = c
        .execute(
            &format!("{}; echo tail >&2", seq_with_a_pause(LINES)),
            Some(Duration::from_secs(120)),
        )
        .await
        .expect("execute");
    set_log_sink(None);
    assert!(out.native);
    assert!(
        out.stdout == seq_text(LINES),
        "stdout complete ({} bytes)",
        out.stdout.len()
    );
    assert_eq!(out.stderr, b"tail\n");
    assert_eq!(out.exit_code, 0);
    assert_eq!(
        switches.load(Ordering::SeqCst),
        1,
        "stdout moved to a side connection"
    );
}
