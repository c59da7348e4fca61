//! One upload: data steps are appended to an [`AtomicFile`], each reported
//! `written` (that report is the control plane's flow-control credit), and
//! `commit` publishes the file. Abort, or a Channel that ends first, drops
//! the temp file. With a ticket the rest of the data may come on a side
//! connection ([`super::side_upload`]) after `raw_switch`.

use std::path::PathBuf;

use cmdop_proto::ext::{
    file_downlink::Op, file_uplink::Event, UploadRawOffer, UploadResult, UploadStart,
};
use cmdop_proto::limits::MAX_UPLOAD_BYTES;
use tokio::sync::mpsc;

use super::{blocking, side_upload::SideUpload, Reporter};
use crate::{
    exec_raw::SideTarget,
    files::{
        atomic::{AtomicFile, AtomicOptions},
        error::{FileError, FileResult},
    },
};

/// Writes the upload `start` describes to `path`; with a ticket and the
/// control plane's address (`server_url`, when this agent may use side
/// connections) the client may send the rest of the data on a side
/// connection.
pub async fn run(
    start: UploadStart,
    path: PathBuf,
    mut steps: mpsc::Receiver<Op>,
    report: &Reporter,
    server_url: Option<&str>,
) -> FileResult<()> {
    let opts = AtomicOptions {
        overwrite: start.overwrite,
        create_parents: start.create_parents,
        mode: (start.mode != 0).then_some(start.mode & 0o7777),
    };
    let mut file = blocking(move || AtomicFile::create(&path, opts)).await?;
    let target = SideTarget::new(
        &report.id,
        &start.raw_ticket,
        &start.raw_tls_peer_sha256,
        server_url,
    );
    let mut side = None;
    if let Some(target) = target {
        report
            .send(Event::UploadOffer(UploadRawOffer {
                ticket: start.raw_ticket.clone(),
                raw_tls_agent_sha256: target.agent_pin(),
            }))
            .await?;
        side = Some(SideUpload::open(target));
    }
    loop {
        match steps.recv().await {
            Some(Op::Data(data)) => {
                file = blocking(move || {
                    file.write(&data)?;
                    Ok(file)
                })
                .await?;
                report.send(Event::Written(file.written())).await?;
            }
            Some(Op::RawSwitch(_)) => {
                let Some(mut opened) = side.take() else {
                    discard(file).await;
                    return Err(FileError::invalid(
                        "the upload moved to a side connection that was never offered",
                    ));
                };
                let conn = opened.take().await?;
                let cap = start
                    .total_size
                    .unwrap_or(MAX_UPLOAD_BYTES)
                    .min(MAX_UPLOAD_BYTES);
                let Some((back, commit)) =
                    super::side_upload::receive(file, conn, cap, &mut steps).await?
                else {
                    return Ok(()); // aborted; the copy drops the temp file
                };
                file = back;
                report.send(Event::Written(file.written())).await?;
                if commit {
                    return commit_file(file, start.total_size, report).await;
                }
            }
            Some(Op::Commit(_)) => return commit_file(file, start.total_size, report).await,
            Some(Op::Abort(reason)) => {
                tracing::debug!(path = %file.target().display(), %reason, "upload aborted");
                discard(file).await;
                return Ok(());
            }
            None => {
                tracing::debug!(path = %file.target().display(), "upload dropped with its channel");
                discard(file).await;
                return Ok(());
            }
            Some(_) => {} // a download step: not ours, ignore
        }
    }
}

/// Publishes `file` when it has the declared `total` bytes (if any), and
/// says so.
async fn commit_file(file: AtomicFile, total: Option<u64>, report: &Reporter) -> FileResult<()> {
    let written = file.written();
    if let Some(total) = total.filter(|t| *t != written) {
        let err = FileError::invalid(format!(
            "upload to {} ended after {written} of {total} bytes; nothing was written",
            file.target().display()
        ));
        discard(file).await;
        return Err(err);
    }
    let target = blocking(move || file.commit()).await?;
    let result = UploadResult {
        bytes_written: written,
        path: target.to_string_lossy().into_owned(),
    };
    report.send(Event::Done(result)).await
}

/// Drops an unfinished upload (unlinking its temp file) off the async threads.
pub(super) async fn discard(file: AtomicFile) {
    let _ = blocking(move || {
        drop(file);
        Ok(())
    })
    .await;
}
