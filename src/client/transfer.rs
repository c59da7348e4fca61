//! Streaming file transfers (`cmdop.ext.v1.Cmdop/Upload` and `/Download`,
//! capability `files.v1`): no size limit from the 32 MiB message cap, and
//! memory bounded by a few chunks in flight whatever the file size.

use std::time::{Duration, Instant};

use cmdop_proto::caps;
use cmdop_proto::ext::{
    download_chunk, upload_chunk, DownloadChunk, DownloadRequest, UploadChunk, UploadStart,
};
use cmdop_proto::limits::TRANSFER_CHUNK_BYTES;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::connection::Conn;
use super::error::is_expired_token;
use super::{lock, Client, Credentials, Error, ErrorKind, LogLevel, Result};

/// Upload chunks copied ahead of what gRPC has taken.
const UPLOAD_QUEUE: usize = 2;

/// What a transfer call failed with: a gRPC status (which may be retried
/// after a token refresh) or an error of our own.
enum Failure {
    Status(tonic::Status),
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Error(e)
    }
}

impl Client {
    /// True when the server offers streaming transfers.
    pub(crate) fn offers_file_streams(&self) -> bool {
        lock(&self.inner.facts).has(caps::FILES)
    }

    /// Uploads `data` to `path` on `session_id` in 1 MiB chunks; the agent
    /// renames the file into place only after the last byte. NotSupported
    /// when the machine's agent lacks streaming transfers.
    pub(crate) async fn upload(&self, session_id: String, path: &str, data: &[u8]) -> Result<()> {
        let what = "Upload";
        self.with_refresh(what, |conn| {
            let session_id = session_id.clone();
            async move {
                let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
                let start = UploadChunk {
                    part: Some(upload_chunk::Part::Start(UploadStart {
                        session_id,
                        path: path.to_string(),
                        overwrite: true,
                        total_size: Some(data.len() as u64),
                        ..Default::default()
                    })),
                };
                // The queue is empty; this cannot fail.
                let _ = tx.try_send(start);
                let mut request = tonic::Request::new(ReceiverStream::new(rx));
                self.inner.authorize(&mut request)?;
                let mut ext = conn.ext.clone();
                let call = ext.upload(request);
                let feed = self.feed(tx, data);
                tokio::pin!(call);
                tokio::pin!(feed);
                // Feed until the call answers; if the feeder stalls, the call
                // did not take data for a whole timeout.
                let mut fed = false;
                let answer = loop {
                    tokio::select! {
                        answer = &mut call => break answer,
                        stalled = &mut feed, if !fed => {
                            fed = true;
                            if stalled {
                                return Err(Failure::Error(Error::timeout(what, self.inner.opts.timeout)));
                            }
                        }
                    }
                };
                answer.map(|_| ()).map_err(Failure::Status)
            }
        })
        .await
    }

    /// Copies `data` into the upload stream chunk by chunk. Returns true when
    /// gRPC took nothing for a whole call timeout.
    async fn feed(&self, tx: mpsc::Sender<UploadChunk>, data: &[u8]) -> bool {
        let timeout = self.inner.opts.timeout;
        for piece in data.chunks(TRANSFER_CHUNK_BYTES) {
            let chunk = UploadChunk {
                part: Some(upload_chunk::Part::Data(bytes::Bytes::copy_from_slice(
                    piece,
                ))),
            };
            match tokio::time::timeout(timeout, tx.send(chunk)).await {
                Ok(Ok(())) => {}
                // The call ended (its answer says why).
                Ok(Err(_)) => return false,
                Err(_) => return true,
            }
        }
        // Dropping `tx` half-closes the stream: the agent commits.
        false
    }

    /// Downloads the whole file at `path` on `session_id`, refusing files
    /// over `max` bytes. NotSupported when the agent lacks streaming transfers.
    pub(crate) async fn download(
        &self,
        session_id: String,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>> {
        let what = "Download";
        let timeout = self.inner.opts.timeout;
        self.with_refresh(what, |conn| {
            let session_id = session_id.clone();
            async move {
                let mut request = tonic::Request::new(DownloadRequest {
                    session_id,
                    path: path.to_string(),
                    ..Default::default()
                });
                self.inner.authorize(&mut request)?;
                let mut ext = conn.ext.clone();
                let mut stream = match tokio::time::timeout(timeout, ext.download(request)).await {
                    Err(_) => return Err(Error::timeout(what, timeout).into()),
                    Ok(Err(status)) => return Err(Failure::Status(status)),
                    Ok(Ok(response)) => response.into_inner(),
                };
                let total = match next_part(&mut stream, what, timeout).await? {
                    Some(download_chunk::Part::Start(start)) => start.total_size,
                    _ => {
                        return Err(Error::Protocol(
                            "Download did not begin with `start`".into(),
                        )
                        .into())
                    }
                };
                let total = usize::try_from(total).ok().filter(|t| *t <= max).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "'{path}' is {total} bytes, more than the {} MiB one read may return; copy it in parts with a command instead",
                        max >> 20
                    ))
                })?;
                let mut content = Vec::with_capacity(total);
                while let Some(part) = next_part(&mut stream, what, timeout).await? {
                    if let download_chunk::Part::Data(data) = part {
                        if content.len() + data.len() > total {
                            return Err(Error::Protocol(format!(
                                "Download sent more than the announced {total} bytes"
                            ))
                            .into());
                        }
                        content.extend_from_slice(&data);
                    }
                }
                if content.len() != total {
                    return Err(Error::Unavailable(format!(
                        "Download of '{path}' ended after {} of {total} bytes; try again",
                        content.len()
                    ))
                    .into());
                }
                Ok(content)
            }
        })
        .await
    }

    /// Runs `attempt` on the live connection; after an expired access token
    /// it refreshes the tokens (when allowed) and tries once more.
    async fn with_refresh<T, F, Fut>(&self, what: &'static str, attempt: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Failure>>,
    {
        let deadline = Instant::now() + self.inner.opts.timeout;
        let mut refreshed = false;
        loop {
            let conn = self.inner.ready_conn(deadline).await?;
            let used = current_token(self);
            let started = Instant::now();
            self.inner
                .log(LogLevel::Debug, || format!("-> {what} (stream)"));
            let status = match attempt(conn.clone()).await {
                Ok(value) => {
                    self.inner.log(LogLevel::Debug, || {
                        format!("<- {what} ok in {}", millis(started.elapsed()))
                    });
                    return Ok(value);
                }
                Err(Failure::Error(e)) => return Err(e),
                Err(Failure::Status(status)) => status,
            };
            self.inner.log(LogLevel::Debug, || {
                format!("<- {what} {:?}: {}", status.code(), status.message())
            });
            if is_expired_token(&status) && !refreshed && self.inner.can_refresh() {
                refreshed = true;
                self.inner.refresh_tokens(used.as_deref(), &conn).await?;
                continue;
            }
            let err = Error::from_status(what, &status);
            if err.kind() == ErrorKind::Unavailable {
                self.inner.trouble.notify_one();
            }
            return Err(err);
        }
    }
}

/// The access token (or API key) calls are sent with right now.
fn current_token(client: &Client) -> Option<String> {
    match &*lock(&client.inner.creds) {
        Credentials::ApiKey(k) => Some(k.clone()),
        Credentials::Tokens { access, .. } => Some(access.clone()),
        Credentials::None => None,
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The next part of a download; a silence of a whole `timeout` is TIMEOUT.
async fn next_part(
    stream: &mut tonic::Streaming<DownloadChunk>,
    what: &str,
    timeout: Duration,
) -> std::result::Result<Option<download_chunk::Part>, Failure> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => Err(Failure::Error(Error::timeout(what, timeout))),
        Ok(Err(status)) => Err(Failure::Status(status)),
        Ok(Ok(chunk)) => Ok(chunk.and_then(|c| c.part)),
    }
}
