//! System tests for downloads on side connections (agent capability
//! `files-raw.v1`): a large file's data leaves the Download stream for the
//! connection the control plane splices from the agent to the caller,
//! plain over plaintext and pinned TLS 1.3 over TLS. Real `cmdop server`
//! and `cmdop agent` processes on loopback, driven through the generated
//! gRPC stubs (to see the protocol) and through the library client (to see
//! what applications get).

mod common;

use std::path::Path;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use std::time::Duration;

use cmdop::client::{
    set_log_sink, CancelToken, Client, ClientOptions, Credentials, ErrorKind, LogLevel,
    TransferOptions,
};
use cmdop_proto::{
    ext::{download_chunk::Part, DownloadRequest},
    raw,
};
use common::{side::open_side, *};
use tokio::io::AsyncReadExt;

const MIB: usize = 1024 * 1024;

/// Counts the client's debug messages saying that the download of a path
/// containing `name` moved to a side connection (the log sink is
/// process-wide; each test uses its own file name).
fn count_switches(name: &str) -> Arc<AtomicUsize> {
    let switches = Arc::new(AtomicUsize::new(0));
    let seen = switches.clone();
    let name = name.to_owned();
    set_log_sink(Some((
        LogLevel::Debug,
        Arc::new(move |_, msg: &str| {
            if msg.contains("continues on a side connection") && msg.contains(&name) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }),
    )));
    switches
}

/// Names in `dir` that look like an unfinished transfer's temp file.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".cmdop-tmp-"))
        .collect()
}

/// A download request for `path` that accepts a plain side connection.
fn side_request(session_id: &str, path: &Path) -> DownloadRequest {
    DownloadRequest {
        session_id: session_id.into(),
        path: path.to_str().unwrap().into(),
        accept_raw: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_big_download_moves_to_the_side_connection_complete_and_in_order() {
    let s = stack("dl-side", &[]).await;
    let remote = s.dir.path().join("proto-side.bin");
    let data = pattern(24 * MIB + 5, 11);
    std::fs::write(&remote, &data).unwrap();
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let mut stream = e
        .download(side_request(&s.session_id, &remote))
        .await
        .expect("download")
        .into_inner();
    let start = match stream.message().await.unwrap().unwrap().part {
        Some(Part::Start(start)) => start,
        other => panic!("expected start, got {other:?}"),
    };
    assert_eq!(start.total_size, data.len() as u64);
    assert_eq!(
        start.raw_ticket.len(),
        raw::TICKET_LEN,
        "a big file is offered a side connection"
    );
    assert!(
        start.raw_tls_agent_sha256.is_empty(),
        "plain over plaintext"
    );
    let (mut side, answer) = open_side(&s.server.addr, &start.raw_ticket).await;
    assert_eq!(answer, raw::ACCEPTED);
    let mut got = Vec::new();
    let mut switched = false;
    while let Some(chunk) = stream.message().await.expect("download stream") {
        match chunk.part {
            Some(Part::Data(d)) => {
                assert!(!switched, "data on the stream after the switch");
                got.extend_from_slice(&d);
            }
            Some(Part::RawSwitch(_)) => {
                assert!(!switched, "one switch");
                switched = true;
                side.read_to_end(&mut got)
                    .await
                    .expect("read the side connection");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(switched, "24 MiB moved to the side connection");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "every byte arrived, in order");
}

#[tokio::test]
async fn callers_that_do_not_ask_and_small_files_stay_on_the_stream() {
    let s = stack("dl-side", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let big = s.dir.path().join("not-asked.bin");
    let data = pattern(8 * MIB, 12);
    std::fs::write(&big, &data).unwrap();
    let small = s.dir.path().join("small.bin");
    std::fs::write(&small, b"small file").unwrap();
    for (req, want) in [
        (
            DownloadRequest {
                accept_raw: false,
                ..side_request(&s.session_id, &big)
            },
            &data[..],
        ),
        (side_request(&s.session_id, &small), &b"small file"[..]),
    ] {
        let mut stream = e.download(req).await.unwrap().into_inner();
        let mut got = Vec::new();
        while let Some(chunk) = stream.message().await.expect("download stream") {
            match chunk.part {
                Some(Part::Start(start)) => assert!(start.raw_ticket.is_empty(), "no offer"),
                Some(Part::Data(d)) => got.extend_from_slice(&d),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            got == want,
            "everything on the stream ({} bytes)",
            got.len()
        );
    }
}

#[tokio::test]
async fn an_offer_nobody_takes_keeps_the_download_on_the_stream() {
    let s = stack("dl-side", &[]).await;
    let remote = s.dir.path().join("untaken.bin");
    let data = pattern(48 * MIB, 13);
    std::fs::write(&remote, &data).unwrap();
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    // Asks, but never connects: the agent's side is refused after the
    // pairing timeout and everything comes on the stream.
    let mut stream = e
        .download(side_request(&s.session_id, &remote))
        .await
        .unwrap()
        .into_inner();
    let (mut got, mut offered) = (Vec::new(), false);
    while let Some(chunk) = stream.message().await.expect("download stream") {
        match chunk.part {
            Some(Part::Start(start)) => offered = !start.raw_ticket.is_empty(),
            Some(Part::Data(d)) => got.extend_from_slice(&d),
            Some(Part::RawSwitch(_)) => panic!("switched to a side connection nobody opened"),
            None => {}
        }
    }
    assert!(offered);
    assert!(got == data, "nothing lost while the offer was pending");
}

#[tokio::test]
async fn the_library_downloads_through_the_side_connection() {
    let s = stack("dl-side", &[]).await;
    let switches = count_switches("lib-side-");
    let c = library_client(&s, true).await;
    let remote = s.dir.path().join("lib-side-read.bin");
    let data = pattern(40 * MIB + 3, 14);
    std::fs::write(&remote, &data).unwrap();
    let back = c
        .read_file(remote.to_str().unwrap())
        .await
        .expect("read_file");
    assert!(
        back == data,
        "read_file: every byte ({} of {})",
        back.len(),
        data.len()
    );

    let local = tempfile::tempdir().unwrap();
    let target = local.path().join("copy.bin");
    let n = c
        .download_to_path(
            remote.to_str().unwrap(),
            &target,
            TransferOptions::default(),
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect("download_to_path");
    assert_eq!(n, data.len() as u64);
    assert!(
        std::fs::read(&target).unwrap() == data,
        "the local copy is the file"
    );
    set_log_sink(None);
    assert_eq!(
        switches.load(Ordering::SeqCst),
        2,
        "both downloads moved to a side connection"
    );
    // The trail counts every byte, those on the side connection too.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let downs = loop {
        let downs: Vec<serde_json::Value> = admin(s.dir.path(), &["audit", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .filter(|r: &serde_json::Value| r["action"] == "transfer.download")
            .collect();
        let done = downs.len() == 2 && downs.iter().all(|r| !r["outcome"].is_null());
        if done || std::time::Instant::now() > deadline {
            break downs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(downs.len(), 2, "{downs:#?}");
    for r in &downs {
        assert_eq!(r["outcome"]["outcome"], "ok", "{r:#}");
        assert_eq!(r["outcome"]["bytes_out"], data.len() as u64, "{r:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_key_ends_a_download_on_the_side_connection() {
    let s = stack("dl-side", &[]).await;
    let key = admin(s.dir.path(), &["create-key", "--workspace", "alpha"]);
    let remote = s.dir.path().join("revoked.bin");
    let size = 512 * MIB;
    std::fs::write(&remote, pattern(size, 19)).unwrap();
    let mut e = ext(&s.server.addr, Some(&key)).await;
    let mut stream = e
        .download(side_request(&s.session_id, &remote))
        .await
        .expect("download")
        .into_inner();
    let Some(Part::Start(start)) = stream.message().await.unwrap().unwrap().part else {
        panic!("expected start");
    };
    let (mut side, answer) = open_side(&s.server.addr, &start.raw_ticket).await;
    assert_eq!(answer, raw::ACCEPTED);
    loop {
        match stream
            .message()
            .await
            .expect("stream")
            .expect("a switch")
            .part
        {
            Some(Part::Data(_)) => {}
            Some(Part::RawSwitch(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Read a little, then revoke while most of the file is still to come.
    let mut buf = vec![0u8; MIB];
    side.read_exact(&mut buf).await.expect("the first bytes");
    admin(s.dir.path(), &["revoke-key", &key]);
    // The side connection ends (the agent stops, the control plane closes
    // it) well before the whole file came: read it slowly to the end.
    let mut read = MIB;
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match side.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the side connection still runs 60 s after revoke-key"
    );
    assert!(
        read < size,
        "the whole file came after revoke-key ({read} bytes)"
    );
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the download ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn cancelling_a_download_on_the_side_connection_leaves_nothing() {
    let s = stack("dl-side", &[]).await;
    let c = library_client(&s, true).await;
    let remote = s.dir.path().join("cancel-side.bin");
    std::fs::write(&remote, pattern(256 * MIB, 15)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let target = local.path().join("cancelled.bin");
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    // Cancelled well past the 1 MiB the agent sends before it can switch.
    let e = c
        .download_to_path(
            remote.to_str().unwrap(),
            &target,
            TransferOptions::default(),
            move |done, total| {
                if done >= 64 * MIB as u64 && done < total {
                    c2.cancel();
                }
            },
            cancel,
        )
        .await
        .expect_err("cancelled download");
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(!target.exists(), "a cancelled download created its target");
    assert!(
        temp_files(local.path()).is_empty(),
        "{:?}",
        temp_files(local.path())
    );
    // The agent stops too: the same client downloads the next file at once.
    let small = s.dir.path().join("after-cancel.bin");
    std::fs::write(&small, b"next").unwrap();
    assert_eq!(c.read_file(small.to_str().unwrap()).await.unwrap(), b"next");
}

#[tokio::test]
async fn without_extensions_downloads_fall_back_to_official_reads() {
    let s = stack("dl-side", &["--no-extensions"]).await;
    let c = library_client(&s, false).await;
    let remote = s.dir.path().join("official.bin");
    let data = pattern(9 * MIB + 1, 16);
    std::fs::write(&remote, &data).unwrap();
    let back = c
        .read_file(remote.to_str().unwrap())
        .await
        .expect("read_file");
    assert!(back == data, "every byte through FileRead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_the_library_downloads_through_the_pinned_side_connection() {
    let s = tls_stack("dl-tls-side").await;
    let switches = count_switches("tls-side-");
    let mut opts = ClientOptions::remote(Credentials::ApiKey(s.ws.api_key.clone()));
    opts.server = format!("localhost:{}", s.port());
    opts.ca_pem = Some(s.ca_pem());
    opts.timeout = Duration::from_secs(30);
    opts.debug = true;
    let c = Client::new(opts).expect("client");
    c.open().await.expect("connect over TLS");
    c.set_machine(&s.host).await.expect("set_machine");
    let remote = s.dir.path().join("tls-side-read.bin");
    let data = pattern(40 * MIB + 9, 17);
    std::fs::write(&remote, &data).unwrap();
    let back = c
        .read_file(remote.to_str().unwrap())
        .await
        .expect("read_file");
    assert!(
        back == data,
        "read_file: every byte ({} of {})",
        back.len(),
        data.len()
    );
    let local = tempfile::tempdir().unwrap();
    let target = local.path().join("copy.bin");
    c.download_to_path(
        remote.to_str().unwrap(),
        &target,
        TransferOptions::default(),
        |_, _| {},
        CancelToken::new(),
    )
    .await
    .expect("download_to_path");
    assert!(
        std::fs::read(&target).unwrap() == data,
        "the local copy is the file"
    );
    set_log_sink(None);
    assert_eq!(
        switches.load(Ordering::SeqCst),
        2,
        "both downloads moved to a TLS side connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_a_caller_without_a_pin_gets_no_offer() {
    let s = tls_stack("dl-tls-side").await;
    let remote = s.dir.path().join("no-pin.bin");
    let data = pattern(6 * MIB, 18);
    std::fs::write(&remote, &data).unwrap();
    let mut e = ext_tls(&s, Some(&s.ws.api_key)).await;
    let machine_id = machine_by_host(&mut e, &s.host).await.machine_id;
    let mut stream = e
        .download(DownloadRequest {
            machine_id,
            path: remote.to_str().unwrap().into(),
            accept_raw: true, // but no pin: a TLS server never goes plain
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = stream.message().await.expect("download stream") {
        match chunk.part {
            Some(Part::Start(start)) => assert!(start.raw_ticket.is_empty(), "no offer"),
            Some(Part::Data(d)) => got.extend_from_slice(&d),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == data);
}
