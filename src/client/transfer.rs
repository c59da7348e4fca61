//! Streaming file transfers (`cmdop.ext.v1.Cmdop/Upload` and `/Download`,
//! capability `files.v1`): no size limit from the 32 MiB message cap, and
//! memory bounded by a few chunks in flight whatever the file size. A large
//! download may finish on a side connection ([`super::transfer_side`]), and
//! so may a large upload on servers with `UploadWithSide` (capability
//! `files-raw-write.v1`); an older server, or one that answers
//! UNIMPLEMENTED, gets the plain `Upload`.

use std::time::{Duration, Instant};

use cmdop_proto::caps;
use cmdop_proto::ext::{
    download_chunk, upload_chunk, upload_event, DownloadChunk, DownloadRequest, DownloadStart,
    UploadChunk, UploadRawSwitch, UploadStart,
};
use cmdop_proto::limits::TRANSFER_CHUNK_BYTES;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::connection::Conn;
use super::error::is_expired_token;
use super::transfer_side::{OpenTask, SideAsk, SideData, SideWrite, READ_BYTES};
use super::{CancelToken, Client, Credentials, Error, ErrorKind, LogLevel, Result};

/// Upload chunks copied ahead of what gRPC has taken.
const UPLOAD_QUEUE: usize = 2;
/// Uploads smaller than this never ask for a side connection: they are
/// gone on gRPC before one would be up.
const SIDE_UPLOAD_AFTER: u64 = 1024 * 1024;
/// How long an upload whose side connection broke waits for the call to
/// say why.
const SIDE_BROKEN_WAIT: Duration = Duration::from_secs(5);

/// Where upload data comes from.
pub(crate) enum Source<'a> {
    Bytes(&'a [u8]),
    /// Read in 1 MiB chunks as gRPC takes them: memory stays bounded.
    File(&'a std::path::Path),
}

impl Source<'_> {
    /// Bytes to send, as far as known now (0 when the file cannot be read;
    /// the upload then says why).
    async fn len(&self) -> u64 {
        match self {
            Source::Bytes(data) => data.len() as u64,
            Source::File(path) => tokio::fs::metadata(path).await.map_or(0, |m| m.len()),
        }
    }
}

/// How feeding an upload ended.
enum Fed {
    All,
    /// The call answered first; its answer says why.
    CallEnded,
    /// gRPC took nothing for a whole call timeout.
    Stalled,
    Failed(Error),
    /// The side connection broke. The call stays open (not half-closed,
    /// so nothing is committed) until its answer says why.
    SideBroken(mpsc::Sender<UploadChunk>, Error),
}

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
        self.inner.facts.lock().has(caps::FILES)
    }

    /// Uploads `data` to `path` on `session_id` in 1 MiB chunks; the agent
    /// renames the file into place only after the last byte. NotSupported
    /// when the machine's agent lacks streaming transfers.
    pub(crate) async fn upload(&self, session_id: String, path: &str, data: &[u8]) -> Result<()> {
        let start = UploadStart {
            path: path.to_string(),
            overwrite: true,
            total_size: Some(data.len() as u64),
            ..Default::default()
        };
        self.upload_from(
            session_id,
            start,
            Source::Bytes(data),
            &|_| {},
            &CancelToken::new(),
        )
        .await
        .map(|_| ())
    }

    /// Uploads `source` as `start` says (its session is filled in);
    /// `progress` sees the bytes handed to gRPC so far. Cancelling `cancel`
    /// resets the call, so the agent drops its temp file and the target is
    /// untouched. Returns the bytes the agent wrote.
    pub(crate) async fn upload_from(
        &self,
        session_id: String,
        start: UploadStart,
        source: Source<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancelToken,
    ) -> Result<u64> {
        if self.inner.facts.lock().has(caps::FILES_RAW_WRITE)
            && source.len().await >= SIDE_UPLOAD_AFTER
        {
            let ask = SideAsk::new(self);
            if ask.accept() {
                match self
                    .upload_with_side(&session_id, &start, &source, progress, cancel, &ask)
                    .await
                {
                    Err(e) if e.kind() == ErrorKind::NotSupported => {
                        self.inner.log(LogLevel::Debug, || {
                            format!("UploadWithSide not served here ({e}); using Upload")
                        });
                    }
                    other => return other,
                }
            }
        }
        let what = "Upload";
        let attempt = self.with_refresh(what, |conn| {
            let start = UploadStart {
                session_id: session_id.clone(),
                ..start.clone()
            };
            let start_path = start.path.clone();
            let source = &source;
            async move {
                let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
                let start = UploadChunk {
                    part: Some(upload_chunk::Part::Start(start)),
                };
                // The queue is empty; this cannot fail.
                let _ = tx.try_send(start);
                let mut request = tonic::Request::new(ReceiverStream::new(rx));
                self.inner.authorize(&mut request)?;
                let mut ext = conn.ext.clone();
                let call = ext.upload(request);
                let feed = self.feed(tx, source, progress, None, &start_path);
                tokio::pin!(call);
                tokio::pin!(feed);
                // Feed until the call answers; if the feeder stalls, the call
                // did not take data for a whole timeout.
                let mut fed = false;
                let answer = loop {
                    tokio::select! {
                        answer = &mut call => break answer,
                        outcome = &mut feed, if !fed => {
                            fed = true;
                            match outcome {
                                Fed::All | Fed::CallEnded => {}
                                Fed::Stalled => return Err(Failure::Error(Error::timeout(what, self.inner.opts.timeout))),
                                Fed::Failed(e) | Fed::SideBroken(_, e) => return Err(Failure::Error(e)),
                            }
                        }
                    }
                };
                answer
                    .map(|r| r.into_inner().bytes_written)
                    .map_err(Failure::Status)
            }
        });
        tokio::select! {
            r = attempt => r,
            _ = cancel.cancelled() => Err(Error::Cancelled),
        }
    }

    /// Copies `source` into the upload stream chunk by chunk; dropping `tx`
    /// at the end half-closes the stream, and the agent commits.
    ///
    /// With `offers` (UploadWithSide), the side connection an offer opens
    /// takes the rest once it is up: `raw_switch`, then the bytes there,
    /// then its end, then the half-close.
    async fn feed(
        &self,
        tx: mpsc::Sender<UploadChunk>,
        source: &Source<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
        mut offers: Option<oneshot::Receiver<OpenTask>>,
        path: &str,
    ) -> Fed {
        let timeout = self.inner.opts.timeout;
        let mut opening: Option<OpenTask> = None;
        let mut side: Option<SideWrite> = None;
        let mut file = match source {
            Source::Bytes(_) => None,
            Source::File(path) => match tokio::fs::File::open(path).await {
                Ok(f) => Some(f),
                Err(e) => {
                    return Fed::Failed(Error::InvalidArgument(format!(
                        "cannot open '{}' to upload it: {e}",
                        path.display()
                    )))
                }
            },
        };
        let mut sent = 0u64;
        loop {
            if side.is_none() {
                if let Some(task) = offers.as_mut().and_then(|rx| rx.try_recv().ok()) {
                    offers = None;
                    opening = Some(task);
                }
                match opening.as_mut().and_then(OpenTask::ready) {
                    Some(Ok(conn)) => {
                        opening = None;
                        let switch = UploadChunk {
                            part: Some(upload_chunk::Part::RawSwitch(UploadRawSwitch {})),
                        };
                        match tokio::time::timeout(timeout, tx.send(switch)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Fed::CallEnded,
                            Err(_) => return Fed::Stalled,
                        }
                        self.inner.log(LogLevel::Debug, || {
                            format!("upload of '{path}' continues on a side connection after {sent} bytes")
                        });
                        side = Some(SideWrite(conn));
                    }
                    Some(Err(e)) => {
                        opening = None;
                        self.inner.log(LogLevel::Debug, || {
                            format!("no side connection for the upload ({e}); it stays on gRPC")
                        });
                    }
                    None => {}
                }
            }
            let piece = match (source, file.as_mut()) {
                (Source::Bytes(data), _) => {
                    let at = sent as usize;
                    if at >= data.len() {
                        break;
                    }
                    let end = (at + TRANSFER_CHUNK_BYTES).min(data.len());
                    bytes::Bytes::copy_from_slice(&data[at..end])
                }
                (Source::File(path), Some(f)) => {
                    use tokio::io::AsyncReadExt;
                    let mut buf = bytes::BytesMut::zeroed(TRANSFER_CHUNK_BYTES);
                    let mut n = 0;
                    // Fill whole chunks: fewer, larger messages.
                    while n < TRANSFER_CHUNK_BYTES {
                        match f.read(&mut buf[n..]).await {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) => {
                                return Fed::Failed(Error::OperationFailed(format!(
                                    "reading '{}' failed after {} bytes: {e}",
                                    path.display(),
                                    sent + n as u64
                                )))
                            }
                        }
                    }
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    buf.freeze()
                }
                (Source::File(_), None) => unreachable!("opened above"),
            };
            let len = piece.len() as u64;
            if let Some(conn) = side.as_mut() {
                match tokio::time::timeout(timeout, conn.write(&piece)).await {
                    Ok(Ok(())) => {}
                    // The call says why, when it knows (an agent error, a
                    // revoked key).
                    Ok(Err(e)) => return Fed::SideBroken(tx, e),
                    Err(_) => return Fed::Stalled,
                }
                sent += len;
                progress(sent);
                continue;
            }
            let chunk = UploadChunk {
                part: Some(upload_chunk::Part::Data(piece)),
            };
            match tokio::time::timeout(timeout, tx.send(chunk)).await {
                Ok(Ok(())) => {}
                // The call ended (its answer says why).
                Ok(Err(_)) => return Fed::CallEnded,
                Err(_) => return Fed::Stalled,
            }
            sent += len;
            progress(sent);
        }
        if let Some(conn) = side.as_mut() {
            match tokio::time::timeout(timeout, conn.finish()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Fed::SideBroken(tx, e),
                Err(_) => return Fed::Stalled,
            }
        }
        // Dropping `tx` here half-closes the call: the agent commits.
        drop(tx);
        Fed::All
    }

    /// [`Client::upload_from`] through `UploadWithSide`: the data starts on
    /// the call, and moves to a side connection once the agent's offer is
    /// taken and the connection is up.
    async fn upload_with_side(
        &self,
        session_id: &str,
        start: &UploadStart,
        source: &Source<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancelToken,
        ask: &SideAsk,
    ) -> Result<u64> {
        let what = "UploadWithSide";
        let timeout = self.inner.opts.timeout;
        let attempt = self.with_refresh(what, |conn| {
            let start = UploadStart {
                session_id: session_id.to_owned(),
                accept_raw: true,
                raw_tls_client_sha256: ask.pin(),
                ..start.clone()
            };
            let start_path = start.path.clone();
            async move {
                let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
                // The queue is empty; this cannot fail.
                let _ = tx.try_send(UploadChunk {
                    part: Some(upload_chunk::Part::Start(start)),
                });
                let mut request = tonic::Request::new(ReceiverStream::new(rx));
                self.inner.authorize(&mut request)?;
                let mut ext = conn.ext.clone();
                let (offer_tx, offer_rx) = oneshot::channel();
                let call = async move {
                    let mut events = match tokio::time::timeout(timeout, ext.upload_with_side(request)).await {
                        Err(_) => return Err(Error::timeout(what, timeout).into()),
                        Ok(Err(status)) => return Err(Failure::Status(status)),
                        Ok(Ok(response)) => response.into_inner(),
                    };
                    let mut offer_tx = Some(offer_tx);
                    // No bound here: the feeder bounds each step of its own.
                    loop {
                        match events.message().await {
                            Err(status) => return Err(Failure::Status(status)),
                            Ok(None) => {
                                return Err(Error::Protocol(format!(
                                    "{what} ended without a result"
                                ))
                                .into())
                            }
                            Ok(Some(event)) => match event.event {
                                Some(upload_event::Event::RawOffer(offer)) => {
                                    let task = ask.open(
                                        &offer.ticket,
                                        &offer.raw_tls_agent_sha256,
                                        "upload",
                                    );
                                    if let (Some(task), Some(tx)) = (task, offer_tx.take()) {
                                        let _ = tx.send(task);
                                    }
                                }
                                Some(upload_event::Event::Result(r)) => {
                                    return Ok(r.bytes_written)
                                }
                                None => {}
                            },
                        }
                    }
                };
                let feed = self.feed(tx, source, progress, Some(offer_rx), &start_path);
                tokio::pin!(call);
                tokio::pin!(feed);
                let mut fed = false;
                loop {
                    tokio::select! {
                        answer = &mut call => break answer,
                        outcome = &mut feed, if !fed => {
                            fed = true;
                            match outcome {
                                Fed::All | Fed::CallEnded => {}
                                Fed::Stalled => return Err(Failure::Error(Error::timeout(what, timeout))),
                                Fed::Failed(e) => return Err(Failure::Error(e)),
                                Fed::SideBroken(_open, e) => {
                                    // The call's own ending (the agent's
                                    // error, a revoked key) says more, when
                                    // it comes soon.
                                    return match tokio::time::timeout(SIDE_BROKEN_WAIT, &mut call).await {
                                        Ok(Err(failure)) => Err(failure),
                                        _ => Err(Failure::Error(e)),
                                    };
                                }
                            }
                        }
                    }
                }
            }
        });
        tokio::select! {
            r = attempt => r,
            _ = cancel.cancelled() => Err(Error::Cancelled),
        }
    }

    /// Downloads the whole file at `path` on `session_id`, refusing files
    /// over `max` bytes. NotSupported when the agent lacks streaming transfers.
    pub(crate) async fn download(
        &self,
        session_id: String,
        path: &str,
        max: usize,
    ) -> Result<Vec<u8>> {
        let content = parking_lot::Mutex::new(Vec::new());
        let total = self
            .download_each(
                session_id,
                path,
                |start| {
                    let total = usize::try_from(start.total_size)
                        .ok()
                        .filter(|t| *t <= max)
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "'{path}' is {} bytes, more than the {} MiB one read may return; download it to a local file instead",
                                start.total_size,
                                max >> 20
                            ))
                        })?;
                    *content.lock() = Vec::with_capacity(total);
                    Ok(())
                },
                |data| {
                    content.lock().extend_from_slice(data);
                    Ok(())
                },
                &CancelToken::new(),
            )
            .await?;
        let content = content.into_inner();
        debug_assert_eq!(content.len() as u64, total);
        Ok(content)
    }

    /// Streams the file at `path` on `session_id`: `on_start` sees the
    /// announced sizes and mode (and may refuse), then `on_data` each chunk
    /// in order. Returns the bytes delivered, which are exactly the announced
    /// `total_size`. After a token refresh the download starts over, and
    /// `on_start` is called again (callers reset what they collected there).
    /// Cancelling `cancel` drops the call and returns CANCELLED.
    pub(crate) async fn download_each(
        &self,
        session_id: String,
        path: &str,
        on_start: impl Fn(&DownloadStart) -> Result<()> + Send + Sync,
        on_data: impl Fn(&[u8]) -> Result<()> + Send + Sync,
        cancel: &CancelToken,
    ) -> Result<u64> {
        let what = "Download";
        let timeout = self.inner.opts.timeout;
        let attempt = self.with_refresh(what, |conn| {
            let session_id = session_id.clone();
            let on_start = &on_start;
            let on_data = &on_data;
            async move {
                let ask = SideAsk::new(self);
                let mut request = tonic::Request::new(DownloadRequest {
                    session_id,
                    path: path.to_string(),
                    accept_raw: ask.accept(),
                    raw_tls_client_sha256: ask.pin(),
                    ..Default::default()
                });
                self.inner.authorize(&mut request)?;
                let mut ext = conn.ext.clone();
                let mut stream = match tokio::time::timeout(timeout, ext.download(request)).await {
                    Err(_) => return Err(Error::timeout(what, timeout).into()),
                    Ok(Err(status)) => return Err(Failure::Status(status)),
                    Ok(Ok(response)) => response.into_inner(),
                };
                let (total, mut side) = match next_part(&mut stream, what, timeout).await? {
                    Some(download_chunk::Part::Start(start)) => {
                        on_start(&start)?;
                        (start.total_size, ask.take(&start))
                    }
                    _ => {
                        return Err(
                            Error::Protocol("Download did not begin with `start`".into()).into(),
                        )
                    }
                };
                let too_much = || {
                    Failure::Error(Error::Protocol(format!(
                        "Download sent more than the announced {total} bytes"
                    )))
                };
                let mut got = 0u64;
                while let Some(part) = next_part(&mut stream, what, timeout).await? {
                    match part {
                        download_chunk::Part::Data(data) => {
                            if got + data.len() as u64 > total {
                                return Err(too_much());
                            }
                            got += data.len() as u64;
                            on_data(&data)?;
                        }
                        download_chunk::Part::RawSwitch(_) => {
                            self.inner.log(LogLevel::Debug, || {
                                format!("download of '{path}' continues on a side connection after {got} bytes")
                            });
                            match tokio::time::timeout(timeout, side.switch()).await {
                                Err(_) => return Err(Error::timeout(what, timeout).into()),
                                Ok(r) => r?,
                            }
                            got = read_side(&mut side, &mut stream, got, total, &on_data, what, timeout)
                                .await?;
                        }
                        download_chunk::Part::Start(_) => {
                            return Err(Error::Protocol("Download sent a second `start`".into()).into())
                        }
                    }
                }
                if got != total {
                    return Err(Error::Unavailable(format!(
                        "Download of '{path}' ended after {got} of {total} bytes; try again"
                    ))
                    .into());
                }
                Ok(got)
            }
        });
        tokio::select! {
            r = attempt => r,
            _ = cancel.cancelled() => Err(Error::Cancelled),
        }
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
    match &*client.inner.creds.lock() {
        Credentials::ApiKey(k) => Some(k.clone()),
        Credentials::Tokens { access, .. } => Some(access.clone()),
        Credentials::None => None,
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Reads the rest of a download from its side connection into `on_data`
/// until its end, counting from `got` of `total` bytes; returns the new
/// count. A connection that breaks, or ends short, yields the stream's own
/// ending when it has one (the agent's error, a revoked key), else
/// UNAVAILABLE.
async fn read_side(
    side: &mut SideData,
    stream: &mut tonic::Streaming<DownloadChunk>,
    mut got: u64,
    total: u64,
    on_data: &(impl Fn(&[u8]) -> Result<()> + Send + Sync),
    what: &str,
    timeout: Duration,
) -> std::result::Result<u64, Failure> {
    let mut buf = vec![0u8; READ_BYTES];
    let broken = loop {
        match tokio::time::timeout(timeout, side.read(&mut buf)).await {
            Err(_) => return Err(Error::timeout(what, timeout).into()),
            Ok(Ok(Some(n))) => {
                if got + n as u64 > total {
                    return Err(Error::Protocol(format!(
                        "Download sent more than the announced {total} bytes"
                    ))
                    .into());
                }
                got += n as u64;
                on_data(&buf[..n])?;
            }
            Ok(Ok(None)) if got == total => return Ok(got),
            Ok(Ok(None)) => {
                break Error::Unavailable(format!(
                    "the download's side connection ended after {got} of {total} bytes; try again"
                ))
            }
            Ok(Err(e)) => break e,
        }
    };
    // The stream says why, when it knows (its status comes at once then).
    match next_part(stream, what, timeout).await {
        Err(Failure::Status(status)) => Err(Failure::Status(status)),
        _ => Err(broken.into()),
    }
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
