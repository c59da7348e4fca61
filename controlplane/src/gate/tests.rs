//! Tests of the gate: which routes need what, and the per-message budget
//! it holds on request bodies.

use super::*;

#[test]
fn routes_need_what_their_handlers_check() {
    let p = |path| route(path, true);
    assert_eq!(
        p("/terminal.TerminalStreamingService/FileWrite").need,
        Need::Client
    );
    assert_eq!(
        p("/terminal.TerminalStreamingService/FileWrite").max_message,
        limits::MAX_MESSAGE_BYTES
    );
    assert_eq!(
        p("/terminal.TerminalStreamingService/FileRead").max_message,
        DEFAULT_MESSAGE_BYTES
    );
    assert_eq!(p("/cmdop.ext.v1.AgentLink/Enroll").need, Need::Nothing);
    assert_eq!(p("/cmdop.ext.v1.AgentLink/Channel").need, Need::Agent);
    assert_eq!(p("/cmdop.ext.v1.Cmdop/RefreshToken").need, Need::Nothing);
    assert_eq!(p("/cmdop.ext.v1.Cmdop/Exec").slot, Some(SlotKind::Exec));
    assert_eq!(
        p("/cmdop.ext.v1.Cmdop/ExecWithStdin").slot,
        Some(SlotKind::Exec)
    );
    assert_eq!(
        p("/cmdop.ext.v1.Cmdop/Upload").max_message,
        UPLOAD_MESSAGE_BYTES
    );
    let side = p("/cmdop.ext.v1.Cmdop/UploadWithSide");
    assert_eq!(side.max_message, UPLOAD_MESSAGE_BYTES);
    assert_eq!(side.slot, Some(SlotKind::Transfer));
    assert_eq!(side.op, Some(Operation::FilesWrite));
    assert_eq!(route("/cmdop.ext.v1.Cmdop/Exec", false).need, Need::Nothing);
    assert_eq!(p("/nope/Nothing").max_message, PUBLIC_MESSAGE_BYTES);
}

fn body(max_message: usize, budget: &Arc<Semaphore>) -> RequestBody {
    RequestBody::new(
        Body::empty(),
        max_message,
        Some((budget.clone(), budget.available_permits())),
        None,
    )
}

fn prefix(len: u32) -> Vec<u8> {
    let mut p = vec![0u8];
    p.extend_from_slice(&len.to_be_bytes());
    p
}

#[test]
fn length_prefixes_are_read_across_chunks_and_budget_is_held_per_message() {
    let budget = Arc::new(Semaphore::new(300_000));
    let mut b = body(200_000, &budget);
    let p = prefix(100_000);
    // The prefix split over two chunks, then the message in pieces.
    b.account(&p[..2]).unwrap();
    b.account(&p[2..]).unwrap();
    assert_eq!(budget.available_permits(), 200_000);
    b.account(&vec![0u8; 60_000]).unwrap();
    assert_eq!(budget.available_permits(), 200_000, "held until the end");
    // The rest of this message and the next one's prefix in one chunk.
    let mut chunk = vec![0u8; 40_000];
    chunk.extend_from_slice(&prefix(10));
    chunk.extend_from_slice(&[1u8; 10]);
    b.account(&chunk).unwrap();
    assert_eq!(
        budget.available_permits(),
        300_000,
        "small messages are free"
    );
    // Over the method's limit.
    let st = b.account(&prefix(200_001)).unwrap_err();
    assert_eq!(st.code(), tonic::Code::ResourceExhausted);
    assert!(st.message().contains("at most 200000 bytes"), "{st:?}");
}

#[test]
fn a_full_budget_refuses_large_messages() {
    let budget = Arc::new(Semaphore::new(150_000));
    let mut first = body(1 << 20, &budget);
    first.account(&prefix(100_000)).unwrap();
    let mut second = body(1 << 20, &budget);
    let st = second.account(&prefix(100_000)).unwrap_err();
    assert_eq!(st.code(), tonic::Code::ResourceExhausted);
    // Small ones still go through.
    let mut small = body(1 << 20, &budget);
    small.account(&prefix(1_000)).unwrap();
    assert_eq!(small.remaining, 1_000);
    drop(first);
    let mut third = body(1 << 20, &budget);
    third.account(&prefix(100_000)).unwrap();
}
