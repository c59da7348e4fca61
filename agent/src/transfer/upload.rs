//! One upload: data steps are appended to an [`AtomicFile`], each reported
//! `written` (that report is the control plane's flow-control credit), and
//! `commit` publishes the file. Abort, or a Channel that ends first, drops
//! the temp file.

use std::path::PathBuf;

use cmdop_proto::ext::{file_downlink::Op, file_uplink::Event, UploadResult, UploadStart};
use tokio::sync::mpsc;

use super::{blocking, Reporter};
use crate::files::{
    atomic::{AtomicFile, AtomicOptions},
    error::{FileError, FileResult},
};

pub async fn run(
    start: UploadStart,
    path: PathBuf,
    mut steps: mpsc::Receiver<Op>,
    report: &Reporter,
) -> FileResult<()> {
    let opts = AtomicOptions {
        overwrite: start.overwrite,
        create_parents: start.create_parents,
        mode: (start.mode != 0).then_some(start.mode & 0o7777),
    };
    let mut file = blocking(move || AtomicFile::create(&path, opts)).await?;
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
            Some(Op::Commit(_)) => {
                let written = file.written();
                if let Some(total) = start.total_size.filter(|t| *t != written) {
                    return Err(FileError::invalid(format!(
                        "upload to {} ended after {written} of {total} bytes; nothing was written",
                        file.target().display()
                    )));
                }
                let target = blocking(move || file.commit()).await?;
                let result = UploadResult {
                    bytes_written: written,
                    path: target.to_string_lossy().into_owned(),
                };
                return report.send(Event::Done(result)).await;
            }
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

/// Drops an unfinished upload (unlinking its temp file) off the async threads.
async fn discard(file: AtomicFile) {
    let _ = blocking(move || {
        drop(file);
        Ok(())
    })
    .await;
}
