//! System tests for streaming file transfers (`Cmdop.Upload` /
//! `Cmdop.Download`, capability `files.v1`): real `cmdop server` and
//! `cmdop agent` processes on loopback, driven through the library client
//! and the generated gRPC stubs.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use cmdop::client::ErrorKind;
use cmdop_proto::ext::{
    download_chunk, upload_chunk, DownloadRequest, ServerInfoRequest, UploadChunk, UploadStart,
};
use common::*;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::{self, wrappers::ReceiverStream};
use tonic::Code;

const MIB: usize = 1024 * 1024;

/// Names in `dir` that look like an unfinished upload's temp file.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".cmdop-tmp-"))
        .collect()
}

/// Waits up to 5 s for the agent to remove every temp file in `dir`.
async fn wait_no_temp_files(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !temp_files(dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "temp files left behind: {:?}",
            temp_files(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_chunk(start: UploadStart) -> UploadChunk {
    UploadChunk {
        part: Some(upload_chunk::Part::Start(start)),
    }
}

fn data_chunk(data: &[u8]) -> UploadChunk {
    UploadChunk {
        part: Some(upload_chunk::Part::Data(bytes::Bytes::copy_from_slice(
            data,
        ))),
    }
}

#[tokio::test]
async fn server_advertises_files_v1() {
    let s = stack("xfer-host", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let info = e
        .server_info(ServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.capabilities.iter().any(|c| c == "files.v1"),
        "{:?}",
        info.capabilities
    );
}

#[tokio::test]
async fn hundred_mib_round_trip_keeps_every_byte() {
    let s = stack("xfer-host", &[]).await;
    let c = library_client(&s, false).await;
    let path = s.dir.path().join("big.bin");
    let data = pattern(100 * MIB, 7);
    c.write_file(path.to_str().unwrap(), &data)
        .await
        .expect("write 100 MiB");
    let on_disk = std::fs::read(&path).expect("file exists");
    assert!(
        on_disk == data,
        "the file on disk differs from what was written"
    );
    let back = c
        .read_file(path.to_str().unwrap())
        .await
        .expect("read 100 MiB");
    assert_eq!(back.len(), data.len());
    assert!(
        back == data,
        "the file read back differs from what was written"
    );
    assert!(temp_files(s.dir.path()).is_empty());

    // Replacing keeps working and errors name the path.
    c.write_file(path.to_str().unwrap(), b"small")
        .await
        .expect("replace");
    assert_eq!(std::fs::read(&path).unwrap(), b"small");
    let missing = s.dir.path().join("no/such/file");
    let err = c.read_file(missing.to_str().unwrap()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = c
        .write_file(missing.to_str().unwrap(), b"x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn broken_or_short_uploads_leave_no_partial_file() {
    let s = stack("xfer-host", &[]).await;
    let target = s.dir.path().join("atomic.bin");
    std::fs::write(&target, b"old content").unwrap();
    let start = UploadStart {
        session_id: s.session_id.clone(),
        path: target.to_str().unwrap().into(),
        overwrite: true,
        total_size: Some(20 * MIB as u64),
        ..Default::default()
    };

    // 1. The client goes away mid-stream.
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(start_chunk(start.clone())).await.unwrap();
    let call = tokio::spawn(async move { e.upload(ReceiverStream::new(rx)).await });
    let piece = pattern(MIB, 3);
    for _ in 0..6 {
        tx.send(data_chunk(&piece)).await.unwrap();
    }
    // Let the agent write some of it before the stream breaks.
    let deadline = Instant::now() + Duration::from_secs(5);
    while temp_files(s.dir.path()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call.abort();
    drop(tx);
    wait_no_temp_files(s.dir.path()).await;
    assert_eq!(std::fs::read(&target).unwrap(), b"old content");

    // 2. The stream ends cleanly but short of its declared size.
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let chunks = vec![
        start_chunk(start.clone()),
        data_chunk(&piece),
        data_chunk(&piece),
    ];
    let status = e.upload(tokio_stream::iter(chunks)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    wait_no_temp_files(s.dir.path()).await;
    assert_eq!(std::fs::read(&target).unwrap(), b"old content");

    // 3. overwrite=false refuses an existing file.
    let chunks = vec![
        start_chunk(UploadStart {
            overwrite: false,
            total_size: Some(1),
            ..start.clone()
        }),
        data_chunk(b"x"),
    ];
    let status = e.upload(tokio_stream::iter(chunks)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old content");

    // 4. A complete upload with an explicit mode replaces it.
    let chunks = vec![
        start_chunk(UploadStart {
            mode: 0o600,
            total_size: Some(3),
            ..start
        }),
        data_chunk(b"new"),
    ];
    let done = e
        .upload(tokio_stream::iter(chunks))
        .await
        .expect("upload")
        .into_inner();
    assert_eq!(done.bytes_written, 3);
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn transfers_respect_workspace_walls() {
    let s = stack("xfer-host", &[]).await;
    let beta = create_workspace(s.dir.path(), "beta");
    let mut a = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let machine_id = machine_by_host(&mut a, &s.host).await.machine_id;
    let secret = s.dir.path().join("secret.txt");
    std::fs::write(&secret, b"alpha only").unwrap();
    let target = s.dir.path().join("planted.txt");
    let mut b = ext(&s.server.addr, Some(&beta.api_key)).await;

    let pairs = [
        (String::new(), s.session_id.clone()),
        (machine_id.clone(), String::new()),
        (
            String::new(),
            "00000000-0000-4000-8000-000000000000".to_string(),
        ),
        ("mach_missing".to_string(), String::new()),
    ];
    for (machine_id, session_id) in pairs {
        let req = DownloadRequest {
            machine_id: machine_id.clone(),
            session_id: session_id.clone(),
            path: secret.to_str().unwrap().into(),
            ..Default::default()
        };
        let st = b.download(req).await.unwrap_err();
        assert_eq!(
            st.code(),
            Code::NotFound,
            "download {machine_id:?}/{session_id:?}: {st:?}"
        );
        let start = UploadStart {
            machine_id,
            session_id,
            path: target.to_str().unwrap().into(),
            total_size: Some(1),
            ..Default::default()
        };
        let st = b
            .upload(tokio_stream::iter(vec![
                start_chunk(start),
                data_chunk(b"x"),
            ]))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::NotFound, "upload: {st:?}");
    }
    assert!(!target.exists());

    // The owner still can.
    let req = DownloadRequest {
        machine_id,
        path: secret.to_str().unwrap().into(),
        ..Default::default()
    };
    let mut stream = a.download(req).await.expect("owner download").into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        if let Some(download_chunk::Part::Data(d)) = chunk.part {
            got.extend_from_slice(&d);
        }
    }
    assert_eq!(got, b"alpha only");
}

#[tokio::test]
async fn agent_killed_mid_transfer_is_unavailable_and_its_restart_removes_the_temp_file() {
    let mut s = stack("xfer-host", &[]).await;
    let source = s.dir.path().join("source.bin");
    std::fs::write(&source, pattern(64 * MIB, 11)).unwrap();
    let target = s.dir.path().join("upload.bin");

    // An upload in progress.
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let (tx, rx) = mpsc::channel(2);
    let start = UploadStart {
        session_id: s.session_id.clone(),
        path: target.to_str().unwrap().into(),
        overwrite: true,
        total_size: Some(64 * MIB as u64),
        ..Default::default()
    };
    tx.send(start_chunk(start)).await.unwrap();
    let upload = tokio::spawn(async move { e.upload(ReceiverStream::new(rx)).await });
    let piece = pattern(MIB, 5);
    for _ in 0..4 {
        tx.send(data_chunk(&piece)).await.unwrap();
    }

    // A download in progress, read no further than its first chunk.
    let mut d = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let req = DownloadRequest {
        session_id: s.session_id.clone(),
        path: source.to_str().unwrap().into(),
        ..Default::default()
    };
    let mut stream = d.download(req).await.expect("download opens").into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.part, Some(download_chunk::Part::Start(ref st)) if st.total_size == 64 * MIB as u64)
    );

    // Kill the agent only once the upload's temp file exists.
    let deadline = Instant::now() + Duration::from_secs(10);
    while temp_files(s.dir.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the upload never created its temp file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    s.agent.kill();
    // Keep feeding the upload until the server gives up on it.
    let feeder = tokio::spawn(async move { while tx.send(data_chunk(&piece)).await.is_ok() {} });
    let status = tokio::time::timeout(Duration::from_secs(5), upload)
        .await
        .expect("upload ends")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("download ended without an error"),
            Err(st) => break st,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "took {:?}",
        killed.elapsed()
    );
    feeder.abort();
    // The agent died before it could clean up; the file itself never appeared.
    assert!(!target.exists());
    assert!(
        !temp_files(s.dir.path()).is_empty(),
        "SIGKILL cannot have removed the temp file"
    );

    // Started again, the agent removes what the interrupted upload left.
    s.agent = start_agent(
        &s.server.addr,
        None,
        &s.dir.path().join("agent.json"),
        &s.host,
        &["--heartbeat-secs", "1"],
    );
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;
    wait_connected(&mut t, &s.host).await;
    wait_no_temp_files(s.dir.path()).await;
    assert!(!target.exists());
}

#[tokio::test]
async fn without_extensions_writes_fall_back_to_one_message() {
    let s = stack("xfer-host", &["--no-extensions"]).await;
    let c = library_client(&s, false).await;
    let path = s.dir.path().join("official.bin");
    let data = pattern(8 * MIB, 9);
    c.write_file(path.to_str().unwrap(), &data)
        .await
        .expect("8 MiB over FileWrite");
    assert!(
        c.read_file(path.to_str().unwrap())
            .await
            .expect("read back")
            == data
    );
    let err = c
        .write_file(path.to_str().unwrap(), &pattern(33 * MIB, 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("32 MiB"), "{err}");
}
