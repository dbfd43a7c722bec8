//! `gpushare-streamer`: a frame stream's producer or consumer in its own process, for the
//! stream tests (`tests/tests/streams.rs`) and the GPU suite.
//!
//! ```text
//! gpushare-streamer <runtime-dir> produce <stream-id> <frames> [<delay-us>]
//! gpushare-streamer <runtime-dir> consume <stream-id> fifo|mailbox <limit> [<delay-us>]
//! gpushare-streamer <runtime-dir> hold <stream-id> <frames>
//! ```
//!
//! Every slot is imported into this process's Vulkan device (the device the descriptor's UUID
//! names) and moved with its own transfer queue: the producer writes frame `n`'s pattern
//! ([`pattern`]) into the slot it acquired and presents it with number `n`; a consumer reads
//! each frame it acquires, checks it byte for byte against its number, checks the order (FIFO:
//! `n` is the last plus one; mailbox: `n` grows), and releases it. With GPU points, the
//! transfers wait for the grant's or frame's points and signal the present's or release's
//! point on the GPU (the timelines imported into this process's device); with HOST points the
//! daemon signals them at the calls.
//!
//! `produce` prints `attached` once attached, then `produced <frames> stalls <s>` and exits
//! (its session's end ends the stream). `consume` prints `attached`, consumes until the stream
//! ends (ABORTED), then prints `consumed <count> last <n> gaps <g>` (`gaps`: frames it never
//! saw between the ones it did). `hold` attaches as a FIFO consumer with limit `frames`,
//! acquires that many frames, prints `holding`, and sleeps until killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use gpushare_client::{import, v1, Client, FrameMetadata};
use gpushare_interop::vulkan::{Device, ImportedBuffer, Instance, SyncPoints, Transfer};

/// Frame `n`'s bytes: its number, then a pattern of it.
fn pattern(n: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| ((n as usize).wrapping_mul(31).wrapping_add(i) % 251) as u8)
        .collect();
    let head = n.to_le_bytes();
    let k = head.len().min(len);
    v[..k].copy_from_slice(&head[..k]);
    v
}

const TIMEOUT: Duration = Duration::from_secs(20);

fn say(line: &str) {
    let mut out = std::io::stdout();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The slots imported into this process's device.
struct Slots {
    device: Arc<Device>,
    buffers: Vec<ImportedBuffer>,
    size: u64,
}

async fn import_slots(
    exported: Vec<gpushare_client::Exported>,
) -> Result<Slots, Box<dyn std::error::Error>> {
    let instance = Instance::new("gpushare-streamer")?;
    let first = exported.first().ok_or("a stream has slots")?;
    let device = import::vulkan_device_for(&instance, first)?;
    let mut size = 0;
    let mut buffers = Vec::new();
    for e in exported {
        if let Some(v1::exported_fd::Details::Buffer(b)) = &e.info.details {
            size = b.size;
        }
        buffers.push(import::import_buffer_vulkan(&device, e)?);
    }
    Ok(Slots {
        device,
        buffers,
        size,
    })
}

fn code(e: &gpushare_client::Error) -> Option<tonic::Code> {
    e.code()
}

async fn produce(
    dir: &str,
    id: &str,
    frames: u64,
    delay: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_with_session(dir, "gpushare-streamer produce").await?;
    let producer = client.attach_producer(id).await?;
    if producer.gpu_points() {
        return Err("GPU points: this tool moves frames with host points only".into());
    }
    let slots = import_slots(producer.import_slots().await?).await?;
    let mut transfer = Transfer::new(&slots.device)?;
    say("attached");
    let producer = Arc::new(producer);
    for n in 1..=frames {
        let p = producer.clone();
        let grant = tokio::task::spawn_blocking(move || p.acquire_slot(TIMEOUT, false)).await??;
        let data = pattern(n, slots.size as usize);
        transfer.upload(
            &slots.buffers[grant.slot as usize],
            0,
            &data,
            &SyncPoints::default(),
        )?;
        producer.present(
            grant.slot,
            0,
            FrameMetadata {
                number: n,
                timestamp_ns: 0,
                user_data: n.to_le_bytes().to_vec(),
            },
        )?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    let info = client.describe_stream(id).await?;
    say(&format!(
        "produced {frames} stalls {}",
        info.producer_stalls
    ));
    Ok(())
}

async fn consume(
    dir: &str,
    id: &str,
    mode: v1::DeliveryMode,
    limit: u32,
    delay: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_with_session(dir, "gpushare-streamer consume").await?;
    let consumer = client.attach_consumer(id, mode, limit).await?;
    let slots = import_slots(consumer.import_slots().await?).await?;
    let mut transfer = Transfer::new(&slots.device)?;
    say("attached");
    let consumer = Arc::new(consumer);
    let (mut count, mut last, mut gaps) = (0u64, 0u64, 0u64);
    loop {
        let c = consumer.clone();
        let frame =
            match tokio::task::spawn_blocking(move || c.acquire_frame(TIMEOUT, false)).await? {
                Ok(f) => f,
                Err(e) if code(&e) == Some(tonic::Code::Aborted) => break,
                Err(e) => return Err(e.into()),
            };
        let meta = frame.metadata.clone().unwrap_or_default();
        let n = meta.number;
        let ok_order = match mode {
            v1::DeliveryMode::Mailbox => n > last,
            _ => n == last + 1,
        };
        if !ok_order {
            return Err(format!("frame {n} after frame {last} ({mode:?})").into());
        }
        if meta.user_data != n.to_le_bytes() {
            return Err(format!("frame {n}: user data {:?}", meta.user_data).into());
        }
        let got = transfer.download(
            &slots.buffers[frame.slot as usize],
            0,
            slots.size,
            &SyncPoints::default(),
        )?;
        if got != pattern(n, slots.size as usize) {
            return Err(format!("frame {n} in slot {}: wrong contents", frame.slot).into());
        }
        gaps += n - last - 1;
        last = n;
        count += 1;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        consumer.release_frame(frame.slot, 0)?;
    }
    say(&format!("consumed {count} last {last} gaps {gaps}"));
    Ok(())
}

async fn hold(dir: &str, id: &str, frames: u32) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_with_session(dir, "gpushare-streamer hold").await?;
    let consumer = client
        .attach_consumer(id, v1::DeliveryMode::Fifo, frames.max(1))
        .await?;
    say("attached");
    let consumer = Arc::new(consumer);
    for _ in 0..frames {
        let c = consumer.clone();
        tokio::task::spawn_blocking(move || c.acquire_frame(TIMEOUT, false)).await??;
    }
    say("holding");
    std::future::pending::<()>().await;
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: gpushare-streamer <runtime-dir> (produce ID FRAMES [DELAY_US] | consume ID fifo|mailbox LIMIT [DELAY_US] | hold ID FRAMES)"
    );
    ExitCode::from(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, cmd, id, rest @ ..] = args.as_slice() else {
        return usage();
    };
    let us = |s: Option<&String>| Duration::from_micros(s.map_or(0, |s| s.parse().unwrap()));
    let result = match (cmd.as_str(), rest) {
        ("produce", [frames, delay @ ..]) => {
            produce(dir, id, frames.parse().unwrap(), us(delay.first())).await
        }
        ("consume", [mode, limit, delay @ ..]) => {
            let mode = match mode.as_str() {
                "fifo" => v1::DeliveryMode::Fifo,
                "mailbox" => v1::DeliveryMode::Mailbox,
                _ => return usage(),
            };
            consume(dir, id, mode, limit.parse().unwrap(), us(delay.first())).await
        }
        ("hold", [frames]) => hold(dir, id, frames.parse().unwrap()).await,
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpushare-streamer {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}
