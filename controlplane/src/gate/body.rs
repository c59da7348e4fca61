//! The gate's request and response bodies: each gRPC message's length
//! prefix checked against the method's limit as it arrives, large client
//! messages holding request-byte budget while they do, and both directions
//! ended with the ticket's status when the call's credential is.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::{body::Body, Status};

use super::UNBUDGETED_MESSAGE_BYTES;
use crate::streams::Ticket;

/// A request body that checks each gRPC message's length prefix against
/// the method's limit, holds budget for the message while it arrives, and
/// fails when the call's credential is ended.
pub(super) struct RequestBody {
    inner: Body,
    max_message: usize,
    /// `None`: this call's messages do not take from the budget.
    budget: Option<Arc<Semaphore>>,
    budget_bytes: usize,
    /// The 5-byte gRPC message prefix being read.
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come.
    pub(super) remaining: usize,
    permit: Option<OwnedSemaphorePermit>,
    ending: Option<(Pin<Box<WaitForCancellationFutureOwned>>, Arc<Ticket>)>,
    failed: bool,
}

impl RequestBody {
    /// `budget`: the global byte budget and its size, when this call's
    /// large messages take from it; `ticket`: the call's open-stream
    /// ticket, whose end fails the body.
    pub(super) fn new(
        inner: Body,
        max_message: usize,
        budget: Option<(Arc<Semaphore>, usize)>,
        ticket: Option<Arc<Ticket>>,
    ) -> RequestBody {
        let (budget, budget_bytes) = match budget {
            Some((budget, bytes)) => (Some(budget), bytes),
            None => (None, 0),
        };
        RequestBody {
            inner,
            max_message,
            budget,
            budget_bytes,
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            permit: None,
            ending: ticket.map(|t| (Box::pin(t.ended()), t)),
            failed: false,
        }
    }

    pub(super) fn account(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                if self.remaining == 0 {
                    self.permit = None;
                }
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len < 5 {
                continue;
            }
            self.header_len = 0;
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            if len > self.max_message {
                return Err(Status::resource_exhausted(format!(
                    "a message of this call is {len} bytes; this method takes at most {} bytes \
                     per message — send smaller pieces",
                    self.max_message
                )));
            }
            self.remaining = len;
            let Some(budget) = &self.budget else {
                continue;
            };
            if len <= UNBUDGETED_MESSAGE_BYTES {
                continue;
            }
            let permit = u32::try_from(len)
                .ok()
                .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
                .ok_or_else(|| {
                    tracing::debug!(
                        budget = self.budget_bytes,
                        "request byte budget exhausted; refusing a message"
                    );
                    crate::metrics::limit_hit(crate::metrics::Limit::InflightRequestBytes);
                    Status::resource_exhausted(
                        "the server is receiving too much request data at once; retry shortly \
                         (operators: raise --max-inflight-request-mib on `cmdop server`)",
                    )
                })?;
            self.permit = Some(permit);
        }
        Ok(())
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        if let Some((ended, ticket)) = &mut this.ending {
            if ended.as_mut().poll(cx).is_ready() {
                this.failed = true;
                this.permit = None;
                return Poll::Ready(Some(Err(ticket.status())));
            }
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(status) = this.account(data) {
                        this.failed = true;
                        this.permit = None;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(status)) => Poll::Ready(Some(Err(status))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that ends with the ticket's status (as trailers) when
/// the call's credential is ended.
pub(super) struct ResponseBody {
    inner: Body,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    ticket: Arc<Ticket>,
    done: bool,
}

impl ResponseBody {
    pub(super) fn new(inner: Body, ticket: Arc<Ticket>) -> ResponseBody {
        ResponseBody {
            inner,
            ended: Box::pin(ticket.ended()),
            ticket,
            done: false,
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.ended.as_mut().poll(cx).is_ready() {
            this.done = true;
            let mut trailers = http::HeaderMap::new();
            // Only fails on a message that is not a valid header value;
            // ours are plain text.
            let _ = this.ticket.status().add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if frame.is_trailers() {
                    this.done = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(status)) => {
                this.done = true;
                Poll::Ready(Some(Err(status)))
            }
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
