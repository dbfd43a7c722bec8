//! The `stream` scenario: a frame stream's calls, `CreateStream`, `AttachConsumer` and `Detach`
//! over gRPC, `AcquireSlot`, `Present`, `AcquireFrame` and `ReleaseFrame` over fd.sock.

use std::os::fd::AsFd;
use std::time::Duration;

use gpushare_client::{v1, Client, Consumer, Producer, SlotKind, StreamOptions, Sync};
use gpushare_proto::{fdpass, FD_SOCKET};
use prost::Message;
use tonic::Code;

use crate::sync_ops::expect_bytes;
use crate::{expect_code, fail, Context, Env, Fail, Outcome, Verdict};

/// Each slot's size.
const SLOT_SIZE: u64 = 4096;

/// The frame calls' wait.
const WAIT: Duration = Duration::from_millis(2000);

/// Round `n`'s bytes: `byte[i] = (i + n) % 251`.
fn round_pattern(n: u64) -> Vec<u8> {
    (0..SLOT_SIZE).map(|i| ((i + n) % 251) as u8).collect()
}

/// Runs a blocking frame call (the client's fd.sock calls block the calling thread): the
/// runtime is multi-threaded (`main`), so its other worker keeps the sessions' tasks going.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The slot's buffer id in the producer's attachment.
fn slot_buffer(producer: &Producer, slot: u32) -> Result<String, Fail> {
    match producer.attachment().slots.get(slot as usize) {
        Some(p) if !p.resource_id.is_empty() => Ok(p.resource_id.clone()),
        _ => fail!(
            "AcquireSlot: expected a slot below {}, got slot {slot}",
            producer.attachment().slots.len()
        ),
    }
}

/// One round: the producer writes and presents frame `n`, the consumer acquires, reads and
/// releases it.
async fn round(
    (producer_session, producer): (&Client, &Producer),
    (consumer_session, consumer): (&Client, &Consumer),
    n: u64,
) -> Result<(), Fail> {
    let grant = blocking(|| producer.acquire_slot(WAIT, false))
        .ctx(&format!("round {n}: AcquireSlot (timeout_ms 2000)"))?;
    let id = slot_buffer(producer, grant.slot)?;
    let want = round_pattern(n);
    producer_session
        .buffer(&id)
        .write(0, &want, &Sync::none())
        .await
        .ctx(&format!(
            "round {n}: Write 4096 bytes into slot {}",
            grant.slot
        ))?;
    let metadata = v1::FrameMetadata {
        number: n,
        ..Default::default()
    };
    let presented = blocking(|| producer.present(grant.slot, 0, metadata))
        .ctx(&format!("round {n}: Present slot {}", grant.slot))?;
    if presented.sequence != n {
        fail!(
            "round {n}: Present: expected sequence {n}, got {}",
            presented.sequence
        );
    }
    let frame = blocking(|| consumer.acquire_frame(WAIT, false))
        .ctx(&format!("round {n}: AcquireFrame (timeout_ms 2000)"))?;
    let number = frame.metadata.as_ref().map(|m| m.number);
    if number != Some(n) {
        fail!("round {n}: AcquireFrame: expected metadata.number {n}, got {number:?}");
    }
    if frame.slot != grant.slot {
        fail!(
            "round {n}: AcquireFrame: expected slot {} (the presented one), got {}",
            grant.slot,
            frame.slot
        );
    }
    let got = consumer_session
        .buffer(&id)
        .read(0, SLOT_SIZE, &Sync::none())
        .await
        .ctx(&format!("round {n}: Read slot {}", frame.slot))?;
    expect_bytes(&format!("round {n}: Read slot {}", frame.slot), &got, &want)?;
    blocking(|| consumer.release_frame(frame.slot, 0))
        .ctx(&format!("round {n}: ReleaseFrame slot {}", frame.slot))?;
    Ok(())
}

/// An `AcquireSlot` naming `handle`, sent on a fresh fd.sock connection: the daemon's code, or
/// a description of the reply that was not an error.
///
/// The client's `Producer` only ever names its own handle, so a made-up one goes through the
/// lowest public API: `gpushare_proto`'s types and `fdpass` on a connection of our own.
fn raw_acquire_slot(env: &Env, handle: &str) -> Result<Result<Code, String>, Fail> {
    let io = |what: &str, e: &dyn std::fmt::Display| Fail(format!("raw AcquireSlot: {what}: {e}"));
    let socket = fdpass::connect(&env.runtime_dir.join(FD_SOCKET))
        .map_err(|e| io("connect to fd.sock", &e))?;
    let request = v1::FdRequest {
        request: Some(v1::fd_request::Request::Stream(v1::StreamCall {
            call: Some(v1::stream_call::Call::AcquireSlot(v1::AcquireRequest {
                handle: handle.to_owned(),
                timeout_ms: 2000,
                host_wait: false,
                spin_us: 0,
            })),
        })),
        word: false,
    }
    .encode_to_vec();
    fdpass::send(socket.as_fd(), &request, &[]).map_err(|e| io("send", &e))?;
    let received = loop {
        if !fdpass::poll_readable(socket.as_fd(), Duration::from_secs(10))
            .map_err(|e| io("poll", &e))?
        {
            fail!("raw AcquireSlot: no reply within 10 s");
        }
        match fdpass::recv(socket.as_fd()) {
            Err(e) if e.would_block() => continue,
            Err(e) => return Err(io("recv", &e)),
            Ok(r) => break r,
        }
    };
    if !received.fds.is_empty() {
        fail!(
            "raw AcquireSlot: expected no descriptors, got {}",
            received.fds.len()
        );
    }
    let reply =
        v1::FdReply::decode(received.bytes.as_slice()).map_err(|e| io("decoding the reply", &e))?;
    match reply.reply {
        Some(v1::fd_reply::Reply::Error(e)) => Ok(Ok(Code::from_i32(e.code))),
        other => Ok(Err(format!("the reply {other:?}"))),
    }
}

/// A producer session and a consumer session on one stream: 3 frames, then the refusals.
pub(crate) async fn stream(env: &Env) -> Outcome {
    let producer_session = env.session().await?;
    let producer = producer_session
        .create_stream(2, &SlotKind::Buffer(SLOT_SIZE), &StreamOptions::default())
        .await
        .ctx("CreateStream (2 slots of 4096 bytes)")?;
    let stream_id = producer.info().id.clone();
    if stream_id.is_empty() {
        fail!("CreateStream: expected a stream id in the attachment, got none");
    }
    if producer.attachment().slots.len() != 2 {
        fail!(
            "CreateStream: expected 2 slots, got {}",
            producer.attachment().slots.len()
        );
    }
    let consumer_session = env.session().await?;
    let consumer = consumer_session
        .attach_consumer(&stream_id, v1::DeliveryMode::Fifo, 1)
        .await
        .ctx("AttachConsumer (FIFO, limit 1)")?;

    for n in 1..=3 {
        round(
            (&producer_session, &producer),
            (&consumer_session, &consumer),
            n,
        )
        .await?;
    }

    expect_code(
        "AcquireFrame with timeout_ms 0 and no frame",
        blocking(|| consumer.acquire_frame(Duration::ZERO, false)),
        &[Code::DeadlineExceeded],
    )?;
    expect_code(
        "ReleaseFrame of slot 0, which the consumer does not hold",
        blocking(|| consumer.release_frame(0, 0)),
        &[Code::FailedPrecondition],
    )?;
    let unknown = format!("role-{}", "0".repeat(32));
    match blocking(|| raw_acquire_slot(env, &unknown))? {
        Ok(Code::NotFound) => {}
        Ok(code) => {
            fail!("AcquireSlot naming the handle {unknown}: expected NotFound, got {code:?}")
        }
        Err(reply) => {
            fail!("AcquireSlot naming the handle {unknown}: expected NotFound, got {reply}")
        }
    }

    producer.detach().await.ctx("Detach the producer")?;
    expect_code(
        "AcquireFrame (timeout_ms 2000) after the producer detached",
        blocking(|| consumer.acquire_frame(WAIT, false)),
        &[Code::Aborted],
    )?;
    drop(consumer);
    drop(consumer_session);
    drop(producer_session);
    Ok(Verdict::Pass)
}
