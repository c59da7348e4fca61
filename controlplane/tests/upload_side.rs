//! UploadWithSide against scripted agents: the capability
//! `files-raw-write.v1` in an agent's hello is what gets an upload a
//! side-connection ticket; an agent without it (an older one) gets the
//! whole file as `data` steps on its Channel, and the caller gets its
//! result on the same call, with no offer.

mod support;

use std::time::Duration;

use bytes::Bytes;
use cmdop_proto::{
    caps,
    ext::{
        agent_downlink, agent_uplink, file_downlink::Op, file_uplink::Event, upload_chunk,
        upload_event, AgentUplink, FileUplink, UploadChunk, UploadResult, UploadStart,
    },
    raw,
};
use support::{authed, open_agent_link, Fixture};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const PATIENCE: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

/// What a scripted agent saw of one upload.
#[derive(Debug, Default)]
struct Seen {
    start: UploadStart,
    data: Vec<u8>,
}

/// Enrolls `hostname` and opens a Channel announcing `capabilities` that
/// serves uploads over gRPC only: it appends `data`, reports `written`,
/// and on `commit` answers `done`. What it saw comes on the receiver.
async fn upload_agent(
    fixture: &Fixture,
    hostname: &str,
    capabilities: &[&str],
) -> (String, mpsc::UnboundedReceiver<Seen>, support::TestAgent) {
    let (id, terminal) = fixture.agent(hostname, "", false).await;
    let (up_tx, mut down) = open_agent_link(
        fixture.channel.clone(),
        &id,
        &terminal.session_id,
        capabilities,
    )
    .await;
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut current = Seen::default();
        while let Ok(Some(msg)) = down.message().await {
            let Some(agent_downlink::Msg::File(step)) = msg.msg else {
                continue;
            };
            let event = match step.op {
                Some(Op::Upload(start)) => {
                    current = Seen {
                        start,
                        data: Vec::new(),
                    };
                    continue;
                }
                Some(Op::Data(d)) => {
                    current.data.extend_from_slice(&d);
                    Event::Written(current.data.len() as u64)
                }
                Some(Op::Commit(_)) => {
                    let done = Event::Done(UploadResult {
                        bytes_written: current.data.len() as u64,
                        path: current.start.path.clone(),
                    });
                    let _ = seen_tx.send(std::mem::take(&mut current));
                    done
                }
                _ => continue,
            };
            let up = AgentUplink {
                msg: Some(agent_uplink::Msg::File(FileUplink {
                    transfer_id: step.transfer_id,
                    event: Some(event),
                })),
            };
            if up_tx.send(up).await.is_err() {
                return;
            }
        }
    });
    (id.machine_id, seen, terminal)
}

/// Uploads `data` with UploadWithSide asking for a side connection, in
/// 1 MiB chunks on the call; returns every event of the answer.
async fn upload(fixture: &Fixture, machine_id: &str, data: &[u8]) -> Vec<upload_event::Event> {
    let (tx, rx) = mpsc::channel(4);
    let mut chunks = vec![UploadChunk {
        part: Some(upload_chunk::Part::Start(UploadStart {
            machine_id: machine_id.into(),
            path: "/tmp/upload-side-test.bin".into(),
            overwrite: true,
            total_size: Some(data.len() as u64),
            accept_raw: true,
            ..Default::default()
        })),
    }];
    chunks.extend(data.chunks(MIB).map(|c| UploadChunk {
        part: Some(upload_chunk::Part::Data(Bytes::copy_from_slice(c))),
    }));
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(c).await.is_err() {
                return;
            }
        }
    });
    let mut stream = fixture
        .cmdop()
        .upload_with_side(authed(ReceiverStream::new(rx), fixture.key()))
        .await
        .expect("UploadWithSide")
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("events in time")
        .expect("UploadWithSide stream")
    {
        events.extend(e.event);
    }
    events
}

fn data() -> Vec<u8> {
    (0..3 * MIB + 5).map(|i| (i % 253) as u8).collect()
}

#[tokio::test]
async fn an_agent_without_the_capability_gets_the_upload_on_grpc() {
    let fixture = Fixture::start().await;
    let (machine_id, mut seen, _terminal) =
        upload_agent(&fixture, "old-agent", &[caps::FILES, caps::EXEC_RAW]).await;
    let data = data();
    let events = upload(&fixture, &machine_id, &data).await;
    assert!(
        matches!(&events[..], [upload_event::Event::Result(r)] if r.bytes_written == data.len() as u64),
        "one result and no offer: {events:?}"
    );
    let seen = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .expect("in time")
        .expect("the agent saw the upload");
    assert!(
        seen.start.raw_ticket.is_empty(),
        "no ticket for an old agent"
    );
    assert!(seen.data == data, "every byte on the Channel");
    fixture.stop().await;
}

#[tokio::test]
async fn an_agent_with_the_capability_is_given_a_ticket_and_may_leave_it() {
    let fixture = Fixture::start().await;
    let (machine_id, mut seen, _terminal) = upload_agent(
        &fixture,
        "new-agent",
        &[caps::FILES, caps::EXEC_RAW, caps::FILES_RAW_WRITE],
    )
    .await;
    let data = data();
    // The agent never offers: the caller gets no raw_offer and the data
    // stays on the call.
    let events = upload(&fixture, &machine_id, &data).await;
    assert!(
        matches!(&events[..], [upload_event::Event::Result(r)] if r.bytes_written == data.len() as u64),
        "{events:?}"
    );
    let seen = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .expect("in time")
        .expect("the agent saw the upload");
    assert_eq!(seen.start.raw_ticket.len(), raw::TICKET_LEN);
    assert!(
        !seen.start.accept_raw,
        "the caller's side of the request stays with the control plane"
    );
    assert!(seen.data == data);
    fixture.stop().await;
}
