//! Forwarding a client call to the replica that holds its machine's agent.
//!
//! The public gate hands every call that targets a session or machine
//! here. Its first gRPC message is read (at most one message, within the
//! method's size limit) to find the target; a call for an agent on this
//! replica goes on to the local handler with that message put back in
//! front of the rest of its body. A call for an agent elsewhere is sent as
//! the same HTTP/2 stream to the owner's peer port, request and response
//! bodies flowing through frame by frame: HTTP/2 flow control then holds
//! end to end (the owner's data is read only as the client takes it) and
//! this replica buffers at most a window per direction.
//!
//! A forwarded call is never retried (an Exec may have started) and never
//! forwarded again (the peer port serves locally).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::poll_fn;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{body::Body, Code, Status};

use super::{routes::Target, Caller, Cluster};
use crate::{
    raw::relays::RelayTicket, sessions::not_started, state::SharedState, store::cluster::RouteRow,
};

/// How long the first message of a call may take to arrive.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What to do with a call.
pub enum Decision {
    /// Serve it here.
    Local(http::Request<Body>),
    /// Answered (forwarded, or refused).
    Done(http::Response<Body>),
}

/// How a method names its target in its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// `session_id` (field 1). With `selection`, an empty one means the
    /// machine this connection selected.
    Session { selection: bool },
    /// `machine_id` (1) or `session_id` (2).
    MachineOrSession,
    /// The first message's `start` (1) holds a `MachineOrSession`.
    Start,
}

fn pick(path: &str) -> Option<Pick> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "terminal.TerminalStreamingService" => match method {
            "CloseSession" | "GetSessionStatus" | "SendInput" | "SendResize" | "SendSignal"
            | "GetHistory" | "GetOutput" | "ConnectTerminal" => {
                Some(Pick::Session { selection: false })
            }
            m if m.starts_with("File") => Some(Pick::Session { selection: true }),
            _ => None,
        },
        "cmdop.ext.v1.Cmdop" => match method {
            "Exec" | "Download" => Some(Pick::MachineOrSession),
            "ExecWithStdin" | "Upload" | "UploadWithSide" => Some(Pick::Start),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionOnly {
    #[prost(string, tag = "1")]
    session_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MachineOrSession {
    #[prost(string, tag = "1")]
    machine_id: String,
    #[prost(string, tag = "2")]
    session_id: String,
    /// `ExecRequest.accept_unknown_outcome` (Exec calls only).
    #[prost(bool, tag = "9")]
    accept_unknown_outcome: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Start {
    #[prost(message, optional, tag = "1")]
    start: Option<MachineOrSession>,
}

#[derive(Debug, PartialEq, Eq)]
enum Want {
    Session(String),
    Machine(String),
    Selection,
    Nothing,
}

fn want(pick: Pick, msg: &[u8]) -> Want {
    use prost::Message;
    let by = |m: MachineOrSession| {
        if !m.session_id.is_empty() {
            Want::Session(m.session_id)
        } else if !m.machine_id.is_empty() {
            Want::Machine(m.machine_id)
        } else {
            Want::Nothing
        }
    };
    match pick {
        Pick::Session { selection } => match SessionOnly::decode(msg) {
            Ok(m) if !m.session_id.is_empty() => Want::Session(m.session_id),
            Ok(_) if selection => Want::Selection,
            _ => Want::Nothing,
        },
        Pick::MachineOrSession => MachineOrSession::decode(msg).map_or(Want::Nothing, by),
        Pick::Start => match Start::decode(msg) {
            Ok(Start { start: Some(m) }) => by(m),
            _ => Want::Nothing,
        },
    }
}

/// For Exec calls: whether the caller takes an exit with `outcome_unknown`
/// (`Some(false)`: it gets UNAVAILABLE marked unknown instead); `None` for
/// other methods.
fn exec_mode(path: &str, msg: Option<&[u8]>) -> Option<bool> {
    use prost::Message;
    let method = path.strip_prefix("/cmdop.ext.v1.Cmdop/")?;
    let accept = match (method, msg) {
        ("Exec", Some(m)) => MachineOrSession::decode(m).ok()?.accept_unknown_outcome,
        ("ExecWithStdin", Some(m)) => Start::decode(m).ok()?.start?.accept_unknown_outcome,
        ("Exec" | "ExecWithStdin", None) => false,
        _ => return None,
    };
    Some(accept)
}

/// The first message read off a request body.
struct Peeked {
    buf: BytesMut,
    trailers: Option<http::HeaderMap>,
    ended: bool,
}

impl Peeked {
    /// The first message's bytes, when complete and uncompressed.
    fn message(&self) -> Option<&[u8]> {
        if self.buf.len() < 5 || self.buf[0] != 0 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        self.buf.get(5..5 + len)
    }

    /// Sets field 1 (`session_id`, empty so far) of the first message by
    /// appending it: the last occurrence of a field wins in protobuf.
    fn fill_session(&mut self, session_id: &str) {
        let Some(msg) = self.message() else { return };
        let mut field = BytesMut::new();
        field.put_u8(0x0a);
        prost::encoding::encode_varint(session_id.len() as u64, &mut field);
        field.put_slice(session_id.as_bytes());
        let mut out = BytesMut::with_capacity(self.buf.len() + field.len());
        out.put_u8(0);
        out.put_u32((msg.len() + field.len()) as u32);
        out.put_slice(msg);
        out.put_slice(&field);
        out.put_slice(&self.buf[5 + msg.len()..]);
        self.buf = out;
    }
}

async fn peek(body: &mut Body) -> Result<Peeked, Status> {
    let mut p = Peeked {
        buf: BytesMut::new(),
        trailers: None,
        ended: false,
    };
    loop {
        if p.buf.len() >= 5 {
            let len = u32::from_be_bytes([p.buf[1], p.buf[2], p.buf[3], p.buf[4]]) as usize;
            if p.buf.len() >= 5 + len {
                return Ok(p);
            }
        }
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => p.buf.extend_from_slice(&data),
                Err(frame) => {
                    p.trailers = frame.into_trailers().ok();
                    p.ended = true;
                    return Ok(p);
                }
            },
            Some(Err(status)) => return Err(status),
            None => {
                p.ended = true;
                return Ok(p);
            }
        }
    }
}

/// A request body with its first message put back in front.
struct Replay {
    prefix: Option<Bytes>,
    inner: Option<Body>,
    trailers: Option<http::HeaderMap>,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.take() {
            if prefix.has_remaining() {
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
        }
        if let Some(inner) = &mut this.inner {
            return Pin::new(inner).poll_frame(cx);
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none()
            && self.trailers.is_none()
            && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn replay(peeked: Peeked, body: Body) -> Body {
    Body::new(Replay {
        prefix: Some(peeked.buf.freeze()),
        inner: (!peeked.ended).then_some(body),
        trailers: peeked.trailers,
    })
}

/// True for methods [`route_call`] may forward.
pub fn is_targeted(path: &str) -> bool {
    pick(path).is_some()
}

/// Decides where a client call (admitted by the public gate, with its
/// [`Caller`] in the extensions) is served, and forwards it when not here.
pub async fn route_call(
    state: SharedState,
    cluster: Arc<Cluster>,
    req: http::Request<Body>,
) -> Result<Decision, Status> {
    let Some(pick) = pick(req.uri().path()) else {
        return Ok(Decision::Local(req));
    };
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return Ok(Decision::Local(req));
    };
    let remote = crate::conns::remote_addr(req.extensions());
    let (parts, mut body) = req.into_parts();
    let mut peeked = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, peek(&mut body))
        .await
        .map_err(|_| Status::deadline_exceeded("no request message within 30 s"))??;
    let ws = &caller.workspace;
    let want = peeked
        .message()
        .map_or(Want::Nothing, |msg| want(pick, msg));
    let exec = exec_mode(parts.uri.path(), peeked.message());
    let (target, fill) = match want {
        Want::Session(sid) => (
            cluster
                .resolve_session(&state.sessions, &state.store, ws, &sid)
                .await?,
            false,
        ),
        Want::Machine(mid) => (
            cluster
                .resolve_machine(&state.sessions, &state.store, ws, &mid)
                .await?,
            false,
        ),
        Want::Selection => {
            let machine = remote.and_then(|peer| state.selections.selected(&ws.id, peer));
            match machine {
                Some(m) => (
                    cluster
                        .resolve_machine(&state.sessions, &state.store, ws, &m)
                        .await?,
                    true,
                ),
                None => (Target::Local, false),
            }
        }
        Want::Nothing => (Target::Local, false),
    };
    match target {
        Target::Local => Ok(Decision::Local(http::Request::from_parts(
            parts,
            replay(peeked, body),
        ))),
        Target::Remote { route, addr } => {
            if fill {
                peeked.fill_session(&route.session_id);
            }
            let body = replay(peeked, body);
            let peer = addr.clone();
            let side = state
                .side_connections
                .as_ref()
                .filter(|_| takes_side_connection(parts.uri.path()))
                .map(|rendezvous| rendezvous.relays().open(&addr));
            let to = Peer { route, addr, side };
            let response = forward(&cluster, parts, body, &caller, to, exec).await;
            // A refusal is answered in the headers; the owner's answer
            // carries its status in the trailers.
            let refused = response
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() != b"0");
            crate::metrics::forwarded(&peer, !refused);
            Ok(Decision::Done(response))
        }
    }
}

/// Codes from the owner that mean its route is stale (the agent moved or
/// left): the cached route is dropped, so the next call looks again.
fn stale(code: Option<Code>) -> bool {
    matches!(
        code,
        Some(Code::NotFound | Code::Unavailable | Code::FailedPrecondition)
    )
}

fn grpc_code(headers: &http::HeaderMap) -> Option<Code> {
    let n: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from(n))
}

/// Methods whose bulk output may move to a side connection, which a
/// forwarded call gets through this replica ([`crate::raw::relay`]).
fn takes_side_connection(path: &str) -> bool {
    matches!(
        path.strip_prefix("/cmdop.ext.v1.Cmdop/"),
        Some("Exec" | "ExecWithStdin" | "Download")
    )
}

/// Where a call is forwarded: the owner's route, its peer address, and
/// the ticket this replica relays the call's side connection under.
struct Peer {
    route: RouteRow,
    addr: String,
    side: Option<RelayTicket>,
}

async fn forward(
    cluster: &Arc<Cluster>,
    mut parts: http::request::Parts,
    body: Body,
    caller: &Caller,
    to: Peer,
    exec: Option<bool>,
) -> http::Response<Body> {
    use tower_service::Service;
    let Peer { route, addr, side } = to;
    cluster.peer_headers(caller, &mut parts.headers);
    if let Some(side) = &side {
        if let Ok(ticket) = http::HeaderValue::from_str(side.as_str()) {
            parts
                .headers
                .insert(cmdop_proto::headers::PEER_SIDE_TICKET, ticket);
        }
    }
    parts.extensions = http::Extensions::new();
    let req = http::Request::from_parts(parts, body);
    if cluster.is_unreachable(&addr) {
        cluster.routes.forget(&route);
        return not_sent(&route, &addr, "it did not answer the last call").into_http();
    }
    let mut channel = match cluster.channel(&addr) {
        Ok(c) => c,
        Err(status) => return status.into_http(),
    };
    if let Err(err) = poll_fn(|cx| channel.poll_ready(cx)).await {
        cluster.routes.forget(&route);
        return not_sent(&route, &addr, &err.to_string()).into_http();
    }
    let sent = channel.call(req).await;
    match sent {
        Ok(response) => {
            if stale(grpc_code(response.headers())) {
                cluster.routes.forget(&route);
            }
            response.map(|inner| {
                Body::new(PeerBody {
                    inner,
                    cluster: cluster.clone(),
                    route,
                    side,
                    done: false,
                    exec,
                    frames: Framing::default(),
                    trailers: None,
                })
            })
        }
        Err(err) => {
            cluster.routes.forget(&route);
            let detail = crate::error_text::chain(&err);
            if cluster.mark_unreachable(&addr) {
                tracing::warn!(replica = %route.replica_id, %addr, error = %detail, "cannot reach a replica to forward a call");
            }
            if never_sent(&err) {
                not_sent(&route, &addr, &detail).into_http()
            } else {
                unreachable(&route, &addr, &detail).into_http()
            }
        }
    }
}

/// True when a failed call to a peer certainly never left this replica:
/// the TCP connection to the peer could not be made (refused: nothing
/// listens there any more; or any other connect error), hyper handed the
/// request back unsent (the connection to the peer closed under it, as
/// after the peer's GOAWAY), or the peer refused the stream before
/// processing it (HTTP/2 REFUSED_STREAM).
/// Anything else may have reached the owner.
fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    cmdop_proto::unsent::never_sent(err)
}

/// The status of a call that was not sent to its owner replica: nothing of
/// it reached the machine (marked [`CALL_NOT_STARTED`], so a client may
/// send it again).
///
/// [`CALL_NOT_STARTED`]: cmdop_proto::headers::CALL_NOT_STARTED
fn not_sent(route: &RouteRow, addr: &str, why: &str) -> Status {
    not_started(Status::unavailable(format!(
        "the call was refused before it reached machine {}: replica {} ({addr}), which holds \
         its agent, cannot be reached ({why}); nothing ran. Retry in a few seconds (a gone \
         replica's agents reconnect to another)",
        route.machine_id, route.replica_id
    )))
}

/// The status of a call whose owner replica went away while it was sent.
fn unreachable(route: &RouteRow, addr: &str, why: &str) -> Status {
    Status::unavailable(format!(
        "the call to replica {} ({addr}), which holds the agent of machine {}, failed: \
         {why}; the replica is unreachable or went away. What reached the machine may be \
         incomplete; retry in a few seconds (a gone replica's agents reconnect to another)",
        route.replica_id, route.machine_id
    ))
}

/// Where a stream of gRPC messages stands: inside a message or between two.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
}

impl Framing {
    fn account(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                self.remaining = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
            }
        }
    }

    fn between_messages(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }
}

/// The owner's response body: a lost connection to the owner ends the
/// call with UNAVAILABLE (as trailers) — for an Exec, as its local
/// counterpart would: an exit with `outcome_unknown` for callers that take
/// it, else UNAVAILABLE marked `x-cmdop-exec-outcome: unknown` — and a
/// stale-route status drops the cached route.
struct PeerBody {
    inner: Body,
    cluster: Arc<Cluster>,
    route: RouteRow,
    /// Held for the whole call: the client's side connection is relayed
    /// while it lasts.
    side: Option<RelayTicket>,
    done: bool,
    exec: Option<bool>,
    frames: Framing,
    /// Trailers still to send after a last message of our own.
    trailers: Option<http::HeaderMap>,
}

impl PeerBody {
    /// The frames that end the call after the owner was lost: a message
    /// (first) and trailers.
    fn lost(&mut self, err: &Status) -> (Option<Bytes>, http::HeaderMap) {
        self.cluster.routes.forget(&self.route);
        tracing::warn!(replica = %self.route.replica_id, error = %err, "lost a replica mid-call");
        let what = if self.exec.is_some() {
            "the command may have finished, may still be running or may have died; the \
             outcome is unknown: check before running it again"
        } else {
            "what ran on the machine may or may not have finished — check before retrying"
        };
        let message = format!(
            "lost the connection to replica {}, which holds the agent of machine {}, in the \
             middle of this call ({}); {what}",
            self.route.replica_id,
            self.route.machine_id,
            err.message()
        );
        let mut trailers = http::HeaderMap::new();
        if self.exec == Some(true) && self.frames.between_messages() {
            use prost::Message;
            let event = cmdop_proto::ext::ExecEvent {
                event: Some(cmdop_proto::ext::exec_event::Event::Exit(
                    cmdop_proto::ext::ExecExit {
                        exit_code: -1,
                        outcome_unknown: true,
                        error: message,
                        ..Default::default()
                    },
                )),
            };
            let encoded = event.encode_to_vec();
            let mut frame = BytesMut::with_capacity(5 + encoded.len());
            frame.put_u8(0);
            frame.put_u32(encoded.len() as u32);
            frame.put_slice(&encoded);
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            return (Some(frame.freeze()), trailers);
        }
        let mut status = Status::unavailable(message);
        if self.exec.is_some() {
            status.metadata_mut().insert(
                cmdop_proto::headers::EXEC_OUTCOME,
                tonic::metadata::MetadataValue::from_static("unknown"),
            );
        }
        let _ = status.add_header(&mut trailers);
        (None, trailers)
    }
}

impl HttpBody for PeerBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.frames.account(data);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    this.done = true;
                    if let Some(side) = &mut this.side {
                        side.answered();
                    }
                    if stale(grpc_code(trailers)) {
                        this.cluster.routes.forget(&this.route);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                this.done = true;
                let (message, trailers) = this.lost(&err);
                match message {
                    Some(data) => {
                        this.trailers = Some(trailers);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    None => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                }
            }
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn framed(msg: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u32(msg.len() as u32);
        b.put_slice(msg);
        b
    }

    #[test]
    fn targets_are_read_from_first_messages() {
        let exec = cmdop_proto::ext::ExecRequest {
            machine_id: "mach_1".into(),
            command: "true".into(),
            ..Default::default()
        };
        assert_eq!(
            want(Pick::MachineOrSession, &exec.encode_to_vec()),
            Want::Machine("mach_1".into())
        );
        let input = cmdop_proto::ext::ExecInput {
            part: Some(cmdop_proto::ext::exec_input::Part::Start(
                cmdop_proto::ext::ExecRequest {
                    session_id: "s1".into(),
                    ..Default::default()
                },
            )),
        };
        assert_eq!(
            want(Pick::Start, &input.encode_to_vec()),
            Want::Session("s1".into())
        );
        let read = cmdop_proto::terminal::FileReadRpcRequest::default();
        assert_eq!(
            want(Pick::Session { selection: true }, &read.encode_to_vec()),
            Want::Selection
        );
        assert_eq!(pick("/cmdop.ext.v1.Cmdop/ServerInfo"), None);
        let accepting = cmdop_proto::ext::ExecRequest {
            accept_unknown_outcome: true,
            ..exec.clone()
        };
        assert_eq!(
            exec_mode("/cmdop.ext.v1.Cmdop/Exec", Some(&accepting.encode_to_vec())),
            Some(true)
        );
        assert_eq!(
            exec_mode("/cmdop.ext.v1.Cmdop/Exec", Some(&exec.encode_to_vec())),
            Some(false)
        );
        assert_eq!(exec_mode("/cmdop.ext.v1.Cmdop/Download", None), None);
        assert_eq!(
            pick("/terminal.TerminalStreamingService/FileWrite"),
            Some(Pick::Session { selection: true })
        );
    }

    #[test]
    fn message_boundaries_are_tracked_across_frames() {
        let mut f = Framing::default();
        let two = [framed(b"abc"), framed(b"")].concat();
        f.account(&two[..2]);
        assert!(!f.between_messages());
        f.account(&two[2..7]);
        assert!(!f.between_messages());
        f.account(&two[7..]);
        assert!(f.between_messages());
    }

    #[test]
    fn a_selected_session_is_filled_in() {
        let req = cmdop_proto::terminal::FileReadRpcRequest {
            path: "/etc/hostname".into(),
            ..Default::default()
        };
        let mut buf = framed(&req.encode_to_vec());
        buf.put_slice(b"rest");
        let mut p = Peeked {
            buf,
            trailers: None,
            ended: false,
        };
        p.fill_session("sess-9");
        let msg = p.message().unwrap();
        let back = cmdop_proto::terminal::FileReadRpcRequest::decode(msg).unwrap();
        assert_eq!(back.session_id, "sess-9");
        assert_eq!(back.path, "/etc/hostname");
        assert!(p.buf.ends_with(b"rest"));
    }
}
