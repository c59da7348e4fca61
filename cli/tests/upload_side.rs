//! System tests for uploads on side connections (`UploadWithSide`, agent
//! capability `files-raw-write.v1`): a large file's data leaves the call
//! for the connection the control plane splices from the caller to the
//! agent, plain over plaintext and pinned TLS 1.3 over TLS; the agent
//! still commits atomically. Real `cmdop server` and `cmdop agent`
//! processes on loopback, driven through the generated gRPC stubs (to see
//! the protocol) and through the library client (to see what applications
//! get).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmdop::client::{
    set_log_sink, CancelToken, Client, ClientOptions, Credentials, ErrorKind, LogLevel,
    TransferOptions,
};
use cmdop_proto::{
    caps,
    ext::{
        upload_chunk, upload_event, ServerInfoRequest, UploadChunk, UploadRawSwitch, UploadStart,
    },
    raw,
};
use common::{side::open_side, *};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1024 * 1024;

/// The client's debug messages saying that an upload moved to a side
/// connection, as seen so far. The log sink is process-wide and the tests
/// of this file run at once, so one sink, set once, collects them all and
/// each test counts the ones naming its own file.
fn switches() -> &'static Mutex<Vec<String>> {
    static SEEN: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SEEN.get_or_init(|| {
        set_log_sink(Some((
            LogLevel::Debug,
            Arc::new(|_, msg: &str| {
                if msg.contains("continues on a side connection") {
                    switches().lock().unwrap().push(msg.to_owned());
                }
            }),
        )));
        Mutex::new(Vec::new())
    })
}

/// How many uploads to a path containing `name` moved to a side connection.
fn switched(name: &str) -> usize {
    switches()
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("upload of '") && m.contains(name))
        .count()
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

/// Waits (up to 20 s) until `dir` holds no temp file; the agent removes
/// an aborted upload's one as soon as its copy stops.
async fn no_temp_files_in(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !temp_files(dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(temp_files(dir).is_empty(), "{:?}", temp_files(dir));
}

fn chunk(part: upload_chunk::Part) -> UploadChunk {
    UploadChunk { part: Some(part) }
}

#[tokio::test]
async fn the_server_lists_side_uploads() {
    let s = stack("up-side", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let info = e
        .server_info(ServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.capabilities.iter().any(|c| c == caps::FILES_RAW_WRITE),
        "{:?}",
        info.capabilities
    );
}

#[tokio::test]
async fn an_upload_moves_to_the_side_connection_byte_exact_and_atomic() {
    let s = stack("up-side", &[]).await;
    let remote = s.dir.path().join("proto-side.bin");
    std::fs::write(&remote, b"the old content").unwrap();
    let data = pattern(24 * MIB + 7, 21);
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(chunk(upload_chunk::Part::Start(UploadStart {
        session_id: s.session_id.clone(),
        path: remote.to_str().unwrap().into(),
        overwrite: true,
        total_size: Some(data.len() as u64),
        accept_raw: true,
        ..Default::default()
    })))
    .await
    .unwrap();
    // One MiB on the call first: the rest goes on the side connection.
    tx.send(chunk(upload_chunk::Part::Data(Bytes::copy_from_slice(
        &data[..MIB],
    ))))
    .await
    .unwrap();
    let mut events = e
        .upload_with_side(ReceiverStream::new(rx))
        .await
        .expect("UploadWithSide")
        .into_inner();
    let offer = match events
        .message()
        .await
        .expect("events")
        .expect("an offer")
        .event
    {
        Some(upload_event::Event::RawOffer(offer)) => offer,
        other => panic!("expected raw_offer, got {other:?}"),
    };
    assert_eq!(offer.ticket.len(), raw::TICKET_LEN);
    assert!(
        offer.raw_tls_agent_sha256.is_empty(),
        "plain over plaintext"
    );
    let (mut side, answer) = open_side(&s.server.addr, &offer.ticket).await;
    assert_eq!(answer, raw::ACCEPTED);
    tx.send(chunk(upload_chunk::Part::RawSwitch(UploadRawSwitch {})))
        .await
        .unwrap();
    // Half of it, then a pause: the target is untouched until the end.
    let half = data.len() / 2;
    side.write_all(&data[MIB..half]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read(&remote).unwrap(), b"the old content");
    side.write_all(&data[half..]).await.unwrap();
    side.shutdown().await.unwrap();
    drop(tx);
    let result = match events
        .message()
        .await
        .expect("events")
        .expect("a result")
        .event
    {
        Some(upload_event::Event::Result(r)) => r,
        other => panic!("expected result, got {other:?}"),
    };
    assert_eq!(result.bytes_written, data.len() as u64);
    assert!(events.message().await.unwrap().is_none(), "result is last");
    assert!(std::fs::read(&remote).unwrap() == data, "byte-exact");
    assert!(temp_files(s.dir.path()).is_empty());
}

#[tokio::test]
async fn the_library_uploads_through_the_side_connection() {
    let s = stack("up-side", &[]).await;
    let c = library_client(&s, true).await;
    switches();
    let remote = s.dir.path().join("lib-side-write.bin");
    let data = pattern(40 * MIB + 3, 22);
    c.write_file(remote.to_str().unwrap(), &data)
        .await
        .expect("write_file");
    assert!(
        std::fs::read(&remote).unwrap() == data,
        "write_file: byte-exact"
    );

    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("source.bin");
    let other = pattern(17 * MIB + 1, 23);
    std::fs::write(&source, &other).unwrap();
    let target = s.dir.path().join("lib-side-path.bin");
    let n = c
        .upload_from_path(
            &source,
            target.to_str().unwrap(),
            TransferOptions::default(),
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect("upload_from_path");
    assert_eq!(n, other.len() as u64);
    assert!(
        std::fs::read(&target).unwrap() == other,
        "upload_from_path: byte-exact"
    );
    assert_eq!(
        switched("lib-side-"),
        2,
        "both uploads moved to a side connection"
    );
    assert!(temp_files(s.dir.path()).is_empty());
    // The trail counts every byte, those on the side connection too.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ups = loop {
        let ups: Vec<serde_json::Value> = admin(s.dir.path(), &["audit", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .filter(|r: &serde_json::Value| r["action"] == "transfer.upload")
            .collect();
        let done = ups.len() == 2 && ups.iter().all(|r| !r["outcome"].is_null());
        if done || Instant::now() > deadline {
            break ups;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ups.len(), 2, "{ups:#?}");
    let mut sizes: Vec<u64> = ups
        .iter()
        .map(|r| {
            assert_eq!(r["outcome"]["outcome"], "ok", "{r:#}");
            r["outcome"]["bytes_in"].as_u64().expect("bytes_in")
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [other.len() as u64, data.len() as u64]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_upload_on_the_side_connection_leaves_no_partial_file() {
    let s = stack("up-side", &[]).await;
    let c = library_client(&s, true).await;
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("big.bin");
    std::fs::write(&source, pattern(256 * MIB, 24)).unwrap();
    let target = s.dir.path().join("cancelled-up.bin");
    std::fs::write(&target, b"keep me").unwrap();
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let e = c
        .upload_from_path(
            &source,
            target.to_str().unwrap(),
            TransferOptions::default(),
            move |done, total| {
                if done >= 64 * MIB as u64 && done < total {
                    c2.cancel();
                }
            },
            cancel,
        )
        .await
        .expect_err("cancelled upload");
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    no_temp_files_in(s.dir.path()).await;
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"keep me",
        "target untouched"
    );
    // The agent is free again: the same client uploads the next file.
    let next = s.dir.path().join("after-cancel.bin");
    c.write_file(next.to_str().unwrap(), b"next").await.unwrap();
    assert_eq!(std::fs::read(&next).unwrap(), b"next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_key_ends_an_upload_on_the_side_connection() {
    let s = stack("up-side", &[]).await;
    let key = admin(s.dir.path(), &["create-key", "--workspace", "alpha"]);
    let remote = s.dir.path().join("revoked-up.bin");
    let mut e = ext(&s.server.addr, Some(&key)).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(chunk(upload_chunk::Part::Start(UploadStart {
        session_id: s.session_id.clone(),
        path: remote.to_str().unwrap().into(),
        overwrite: true,
        accept_raw: true,
        ..Default::default()
    })))
    .await
    .unwrap();
    let mut events = e
        .upload_with_side(ReceiverStream::new(rx))
        .await
        .expect("UploadWithSide")
        .into_inner();
    let Some(upload_event::Event::RawOffer(offer)) = events.message().await.unwrap().unwrap().event
    else {
        panic!("expected raw_offer");
    };
    let (mut side, answer) = open_side(&s.server.addr, &offer.ticket).await;
    assert_eq!(answer, raw::ACCEPTED);
    tx.send(chunk(upload_chunk::Part::RawSwitch(UploadRawSwitch {})))
        .await
        .unwrap();
    let piece = pattern(MIB, 25);
    side.write_all(&piece).await.expect("the first bytes");
    admin(s.dir.path(), &["revoke-key", &key]);
    // The side connection ends: writing into it fails within a minute,
    // long before 4 GiB went through.
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..4096 {
            if side.write_all(&piece).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    })
    .await;
    assert_eq!(
        ended,
        Ok(true),
        "the side connection still takes data after revoke-key"
    );
    let status = loop {
        match events.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the upload ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(!remote.exists(), "a revoked upload created its target");
    no_temp_files_in(s.dir.path()).await;
}

#[tokio::test]
async fn small_uploads_and_servers_without_extensions_stay_on_grpc() {
    let s = stack("up-side", &[]).await;
    let c = library_client(&s, true).await;
    switches();
    let small = s.dir.path().join("small-up.bin");
    c.write_file(small.to_str().unwrap(), b"small")
        .await
        .unwrap();
    assert_eq!(std::fs::read(&small).unwrap(), b"small");
    assert_eq!(switched("small-up"), 0, "no side connection");

    let s = stack("up-side", &["--no-extensions"]).await;
    let c = library_client(&s, false).await;
    let remote = s.dir.path().join("official-up.bin");
    let data = pattern(9 * MIB + 1, 26);
    c.write_file(remote.to_str().unwrap(), &data)
        .await
        .expect("write_file");
    assert!(
        std::fs::read(&remote).unwrap() == data,
        "every byte through FileWrite"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_the_library_uploads_through_the_pinned_side_connection() {
    let s = tls_stack("up-tls-side").await;
    let mut opts = ClientOptions::remote(Credentials::ApiKey(s.ws.api_key.clone()));
    opts.server = format!("localhost:{}", s.port());
    opts.ca_pem = Some(s.ca_pem());
    opts.timeout = Duration::from_secs(30);
    opts.debug = true;
    let c = Client::new(opts).expect("client");
    c.open().await.expect("connect over TLS");
    c.set_machine(&s.host).await.expect("set_machine");
    switches();
    let remote = s.dir.path().join("tls-side-write.bin");
    let data = pattern(40 * MIB + 9, 27);
    c.write_file(remote.to_str().unwrap(), &data)
        .await
        .expect("write_file");
    assert!(std::fs::read(&remote).unwrap() == data, "byte-exact");
    assert_eq!(
        switched("tls-side-write"),
        1,
        "the upload moved to a TLS side connection"
    );
    assert!(temp_files(s.dir.path()).is_empty());
}
