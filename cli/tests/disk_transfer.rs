//! System tests for files to and from local disk (`download_to_path`,
//! `upload_from_path`, `read_file_into`, `cmdop cp`): real `cmdop server`
//! and `cmdop agent` processes on loopback.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use cmdop::client::{CancelToken, ErrorKind, TransferOptions};
use common::*;

const MIB: usize = 1024 * 1024;

/// Names in `dir` that look like an unfinished transfer's temp file (the
/// agent's and the client's both contain ".cmdop-tmp-").
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".cmdop-tmp-"))
        .collect()
}

async fn wait_no_temp_files(dir: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !temp_files(dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "temp files left behind: {:?}",
            temp_files(dir)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

/// Progress calls as (done, total), in order.
type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

fn recorder() -> (Seen, impl Fn(u64, u64) + Send + Sync) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    (seen, move |d, t| s.lock().unwrap().push((d, t)))
}

fn check_progress(seen: &Seen, total: u64) {
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2, "progress reported too rarely: {seen:?}");
    assert!(seen.iter().all(|(_, t)| *t == total), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "not monotonic");
    assert_eq!(
        seen.last().unwrap().0,
        total,
        "progress did not reach the end"
    );
}

#[tokio::test]
async fn upload_and_download_disk_files_keep_bytes_and_mode() {
    let s = stack("disk-host", &[]).await;
    let c = library_client(&s, false).await;
    let local_dir = tempfile::tempdir().unwrap();
    let src = local_dir.path().join("src.bin");
    let data = pattern(9 * MIB + 123, 3);
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o751)).unwrap();

    // Upload with the mode kept, into a directory that does not exist yet.
    let remote = s.dir.path().join("up/nested/copy.bin");
    let (seen, progress) = recorder();
    let keep = TransferOptions {
        keep_mode: true,
        create_parents: true,
        ..Default::default()
    };
    let n = c
        .upload_from_path(
            &src,
            remote.to_str().unwrap(),
            keep,
            progress,
            CancelToken::new(),
        )
        .await
        .expect("upload");
    assert_eq!(n, data.len() as u64);
    assert!(
        std::fs::read(&remote).unwrap() == data,
        "uploaded bytes differ"
    );
    assert_eq!(mode_of(&remote), 0o751);
    check_progress(&seen, data.len() as u64);

    // Download it back with the mode kept.
    let back = local_dir.path().join("back.bin");
    let (seen, progress) = recorder();
    let n = c
        .download_to_path(
            remote.to_str().unwrap(),
            &back,
            keep,
            progress,
            CancelToken::new(),
        )
        .await
        .expect("download");
    assert_eq!(n, data.len() as u64);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "downloaded bytes differ"
    );
    assert_eq!(mode_of(&back), 0o751);
    check_progress(&seen, data.len() as u64);

    // Without keep_mode a replaced file keeps its own mode.
    std::fs::set_permissions(&back, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.download_to_path(
        remote.to_str().unwrap(),
        &back,
        TransferOptions::default(),
        |_, _| {},
        CancelToken::new(),
    )
    .await
    .expect("download again");
    assert_eq!(mode_of(&back), 0o600);

    // no_clobber refuses on both ends and leaves the targets alone.
    let refuse = TransferOptions {
        no_clobber: true,
        ..Default::default()
    };
    let e = c
        .download_to_path(
            remote.to_str().unwrap(),
            &back,
            refuse,
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect_err("local target exists");
    assert!(e.to_string().contains("already exists"), "{e}");
    c.upload_from_path(
        &src,
        remote.to_str().unwrap(),
        refuse,
        |_, _| {},
        CancelToken::new(),
    )
    .await
    .expect_err("remote target exists");
    assert!(std::fs::read(&remote).unwrap() == data);

    // A missing remote file is NOT_FOUND and creates nothing locally.
    let none = local_dir.path().join("none.bin");
    let e = c
        .download_to_path(
            s.dir.path().join("missing").to_str().unwrap(),
            &none,
            TransferOptions::default(),
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect_err("missing file");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!none.exists());
    assert!(temp_files(local_dir.path()).is_empty());
    assert!(temp_files(&s.dir.path().join("up/nested")).is_empty());
}

#[tokio::test]
async fn cancelled_transfers_leave_no_partial_file_on_either_end() {
    let s = stack("disk-host", &[]).await;
    let c = library_client(&s, false).await;
    let local_dir = tempfile::tempdir().unwrap();
    let src = local_dir.path().join("big.bin");
    let data = pattern(64 * MIB, 5);
    std::fs::write(&src, &data).unwrap();

    // Upload, cancelled from the progress callback after 4 MiB.
    let remote = s.dir.path().join("cancelled-up.bin");
    let cancel = CancelToken::new();
    let at = Arc::new(AtomicU64::new(0));
    let (c2, at2) = (cancel.clone(), at.clone());
    let e = c
        .upload_from_path(
            &src,
            remote.to_str().unwrap(),
            TransferOptions::default(),
            move |done, _| {
                if done >= 4 * MIB as u64 && !c2.is_cancelled() {
                    at2.store(done, Ordering::SeqCst);
                    c2.cancel();
                }
            },
            cancel,
        )
        .await
        .expect_err("cancelled upload");
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(
        at.load(Ordering::SeqCst) < data.len() as u64,
        "cancelled too late to test anything"
    );
    wait_no_temp_files(s.dir.path()).await;
    assert!(!remote.exists(), "a cancelled upload created its target");

    // Download of a remote 64 MiB file, cancelled after 4 MiB.
    let remote = s.dir.path().join("whole.bin");
    std::fs::write(&remote, &data).unwrap();
    let target = local_dir.path().join("cancelled-down.bin");
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let e = c
        .download_to_path(
            remote.to_str().unwrap(),
            &target,
            TransferOptions::default(),
            move |done, total| {
                if done >= 4 * MIB as u64 && done < total {
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
        temp_files(local_dir.path()).is_empty(),
        "{:?}",
        temp_files(local_dir.path())
    );
}

#[tokio::test]
async fn streaming_read_hands_every_chunk_to_the_callback() {
    let s = stack("disk-host", &[]).await;
    let c = library_client(&s, false).await;
    let remote = s.dir.path().join("read.bin");
    let data = pattern(5 * MIB + 7, 9);
    std::fs::write(&remote, &data).unwrap();
    let mut got = Vec::new();
    let mut calls = 0;
    let n = c
        .read_file_into(
            remote.to_str().unwrap(),
            |chunk| {
                calls += 1;
                got.extend_from_slice(chunk);
            },
            CancelToken::new(),
        )
        .await
        .expect("read");
    assert_eq!(n, data.len() as u64);
    assert!(got == data, "streamed bytes differ");
    assert!(calls > 1, "expected several chunks, got {calls}");
}

#[tokio::test]
async fn without_streaming_transfers_downloads_fall_back_and_refuse_what_they_cannot_do() {
    let s = stack("disk-host", &["--no-extensions"]).await;
    let c = library_client(&s, false).await;
    let local_dir = tempfile::tempdir().unwrap();
    let remote = s.dir.path().join("official.bin");
    // More than one 4 MiB FileRead.
    let data = pattern(9 * MIB + 5, 11);
    std::fs::write(&remote, &data).unwrap();
    let back = local_dir.path().join("back.bin");
    let (seen, progress) = recorder();
    c.download_to_path(
        remote.to_str().unwrap(),
        &back,
        TransferOptions::default(),
        progress,
        CancelToken::new(),
    )
    .await
    .expect("download over FileRead");
    assert!(std::fs::read(&back).unwrap() == data);
    check_progress(&seen, data.len() as u64);

    let keep = TransferOptions {
        keep_mode: true,
        ..Default::default()
    };
    let e = c
        .download_to_path(
            remote.to_str().unwrap(),
            &back,
            keep,
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect_err("mode bits cannot be read officially");
    assert_eq!(e.kind(), ErrorKind::NotSupported, "{e}");
    let e = c
        .upload_from_path(
            &back,
            remote.to_str().unwrap(),
            keep,
            |_, _| {},
            CancelToken::new(),
        )
        .await
        .expect_err("mode bits cannot be set officially");
    assert_eq!(e.kind(), ErrorKind::NotSupported, "{e}");
    let big = c
        .upload_from_path(
            &back,
            s.dir.path().join("too-big.bin").to_str().unwrap(),
            TransferOptions::default(),
            |_, _| {},
            CancelToken::new(),
        )
        .await;
    assert!(big.is_ok(), "9 MiB fits one FileWrite: {big:?}");
    assert!(std::fs::read(s.dir.path().join("too-big.bin")).unwrap() == data);
    assert!(temp_files(local_dir.path()).is_empty());
}

fn cmdop_client(s: &Stack, args: &[&str]) -> std::process::Output {
    Command::new(cmdop_bin())
        .args(args)
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &s.ws.api_key)
        .output()
        .expect("run cmdop")
}

#[tokio::test]
async fn cmdop_cp_copies_both_ways() {
    let s = stack("disk-host", &[]).await;
    let _c = library_client(&s, false).await; // waits for the agent's Channel
    let local_dir = tempfile::tempdir().unwrap();
    let src = local_dir.path().join("a.tar");
    let data = pattern(3 * MIB + 1, 13);
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let remote_dir = s.dir.path().join("drop");
    std::fs::create_dir(&remote_dir).unwrap();

    // Local → remote directory (trailing slash), keeping the mode.
    let out = cmdop_client(
        &s,
        &[
            "cp",
            "-p",
            src.to_str().unwrap(),
            &format!("{}:{}/", s.host, remote_dir.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "no progress bar without a terminal: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote = remote_dir.join("a.tar");
    assert!(std::fs::read(&remote).unwrap() == data);
    assert_eq!(mode_of(&remote), 0o640);

    // Remote → local directory.
    let down = tempfile::tempdir().unwrap();
    let out = cmdop_client(
        &s,
        &[
            "cp",
            &format!("{}:{}", s.host, remote.display()),
            down.path().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(down.path().join("a.tar")).unwrap() == data);

    // Errors name the problem.
    let out = cmdop_client(&s, &["cp", "a", "b"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PATH"));
    let out = cmdop_client(
        &s,
        &[
            "cp",
            &format!("{}:/nonexistent/file", s.host),
            down.path().to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(!down.path().join("file").exists());
}

/// Peak resident memory of `cmdop cp` downloading a 4 GiB (sparse) file,
/// read from `/usr/bin/time -v`. Slow and disk-hungry (4 GiB written), so
/// run on demand: `cargo test -p cmdop-cli --test disk_transfer -- --ignored`.
#[tokio::test]
#[ignore]
async fn four_gib_download_keeps_client_memory_under_32_mib() {
    const SIZE: u64 = 4 << 30;
    let s = stack("disk-host", &[]).await;
    let _c = library_client(&s, false).await;
    let remote = s.dir.path().join("four-gib.bin");
    std::fs::File::create(&remote)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let down = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(cmdop_bin())
        .args([
            "cp",
            &format!("{}:{}", s.host, remote.display()),
            down.path().to_str().unwrap(),
        ])
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &s.ws.api_key)
        .output()
        .expect("run /usr/bin/time -v cmdop cp");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let local = down.path().join("four-gib.bin");
    assert_eq!(std::fs::metadata(&local).unwrap().len(), SIZE);
    let _ = std::fs::remove_file(&local);
    let _ = std::fs::remove_file(&remote);
    let kib: u64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .expect("time -v reports the peak RSS");
    println!(
        "4 GiB download: client peak RSS {:.1} MiB, {:.1} s ({:.0} MiB/s)",
        kib as f64 / 1024.0,
        elapsed.as_secs_f64(),
        SIZE as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    assert!(kib <= 32 * 1024, "peak RSS {kib} KiB is over 32 MiB");
}

/// With stderr on a terminal (`script` gives it a pseudo-terminal) `cmdop
/// cp` draws a byte progress bar; `cmdop_cp_copies_both_ways` checks that
/// there is none otherwise.
#[tokio::test]
async fn cmdop_cp_draws_a_progress_bar_on_a_terminal() {
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("skipped: needs script(1) from util-linux");
        return;
    }
    let s = stack("disk-host", &[]).await;
    let _c = library_client(&s, false).await;
    let src = s.dir.path().join("bar-src.bin");
    std::fs::write(&src, pattern(2 * MIB, 17)).unwrap();
    let down = tempfile::tempdir().unwrap();
    let line = format!(
        "'{}' cp '{}:{}' '{}'",
        cmdop_bin(),
        s.host,
        src.display(),
        down.path().display()
    );
    let out = Command::new("/usr/bin/script")
        .args(["-qec", &line, "/dev/null"])
        .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
        .env("CMDOP_API_KEY", &s.ws.api_key)
        .env("TERM", "xterm")
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("2.00 MiB/2.00 MiB"),
        "no finished progress bar in {shown:?}"
    );
    // The bar names the file and ends its line.
    assert!(shown.contains("bar-src.bin"), "{shown:?}");
    assert!(
        shown.ends_with('\n'),
        "the bar's line is not ended: {shown:?}"
    );
    assert!(std::fs::read(down.path().join("bar-src.bin")).unwrap() == pattern(2 * MIB, 17));

    let on_terminal = |line: String| {
        Command::new("/usr/bin/script")
            .args(["-qec", &line, "/dev/null"])
            .env("CMDOP_SERVER", format!("http://{}", s.server.addr))
            .env("CMDOP_API_KEY", &s.ws.api_key)
            .env("TERM", "xterm")
            .output()
            .expect("run script")
    };
    // -q: no bar even on a terminal.
    let out = on_terminal(format!("{line} -q"));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "-q draws nothing");
    // A failed copy shows no bar that could pass for success, only the error.
    let out = on_terminal(format!(
        "'{}' cp '{}:{}' '{}'",
        cmdop_bin(),
        s.host,
        s.dir.path().join("missing.bin").display(),
        down.path().display()
    ));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{shown}");
    assert!(!shown.contains(" B/"), "a bar for a failed copy: {shown:?}");
    assert!(shown.starts_with("cmdop: "), "{shown:?}");
}
