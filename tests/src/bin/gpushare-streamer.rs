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
//! `GPUSHARE_STREAMER_API=cuda` moves the frames with CUDA instead (imports by UUID into this
//! process's CUDA context, copies and point waits and signals on its stream): the GPU suite
//! runs CUDA and Vulkan on both sides.
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

use gpushare_client::cuda::CudaSemaphore;
use gpushare_client::cuda::InteropBuffer;
use gpushare_client::{import, v1, Client, FrameMetadata, Points, Timelines};
use gpushare_interop::cuda::CudaDevice;
use gpushare_interop::vulkan::{
    Device, ImportedBuffer, Instance, SyncPoints, TimelineSemaphore, Transfer,
};

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

/// Where this process moves frames: its own Vulkan device or CUDA context, with the slots
/// and the timelines it met imported there.
enum Backend {
    Vulkan {
        device: Arc<Device>,
        buffers: Vec<ImportedBuffer>,
        transfer: Transfer,
        timelines: Timelines<TimelineSemaphore>,
    },
    Cuda {
        device: Arc<CudaDevice>,
        buffers: Vec<InteropBuffer>,
        timelines: Timelines<CudaSemaphore>,
    },
}

/// The slots, the stream's size per slot, and the backend.
struct Slots {
    backend: Backend,
    size: u64,
}

fn want_cuda() -> bool {
    std::env::var("GPUSHARE_STREAMER_API").is_ok_and(|v| v == "cuda")
}

async fn import_slots(
    exported: Vec<gpushare_client::Exported>,
) -> Result<Slots, Box<dyn std::error::Error>> {
    let first = exported.first().ok_or("a stream has slots")?;
    let mut size = 0;
    if let Some(v1::exported_fd::Details::Buffer(b)) = &first.info.details {
        size = b.size;
    }
    let backend = if want_cuda() {
        let device = gpushare_client::cuda::cuda_device_for(first)?;
        let mut buffers = Vec::new();
        for e in exported {
            buffers.push(InteropBuffer::import(&device, e)?);
        }
        Backend::Cuda {
            device,
            buffers,
            timelines: Timelines::new(),
        }
    } else {
        let instance = Instance::new("gpushare-streamer")?;
        let device = import::vulkan_device_for(&instance, first)?;
        let mut buffers = Vec::new();
        for e in exported {
            buffers.push(import::import_buffer_vulkan(&device, e)?);
        }
        Backend::Vulkan {
            transfer: Transfer::new(&device)?,
            device,
            buffers,
            timelines: Timelines::new(),
        }
    };
    Ok(Slots { backend, size })
}

impl Slots {
    /// Imports timeline `id` from `exported`.
    fn add_timeline(
        &mut self,
        id: &str,
        exported: gpushare_client::Exported,
    ) -> Result<(), Box<dyn std::error::Error>> {
        match &mut self.backend {
            Backend::Vulkan {
                device, timelines, ..
            } => timelines.insert(id, import::import_semaphore_vulkan(device, exported)?),
            Backend::Cuda {
                device, timelines, ..
            } => timelines.insert(
                id,
                gpushare_client::cuda::import_semaphore_cuda(device, exported)?,
            ),
        }
        Ok(())
    }

    /// Writes `data` into `slot` once every `wait` point is reached (on the GPU), then
    /// signals `signal`; returns when the copy is done.
    fn write(
        &mut self,
        slot: u32,
        data: &[u8],
        wait: &Points,
        signal: &Points,
    ) -> Result<(), Box<dyn std::error::Error>> {
        match &mut self.backend {
            Backend::Vulkan {
                buffers,
                transfer,
                timelines,
                ..
            } => {
                let sync = vk_sync(timelines, wait, signal)?;
                transfer.upload(&buffers[slot as usize], 0, data, &sync)?;
            }
            Backend::Cuda {
                device,
                buffers,
                timelines,
            } => {
                cuda_waits(device, timelines, wait)?;
                // SAFETY: `data` fits the slot (every slot is the stream's size, and `data` is
                // that long), and it outlives the copy: the stream is synchronized below.
                unsafe {
                    gpushare_interop::cuda::copy_htod(
                        device.stream(),
                        buffers[slot as usize].device_ptr(),
                        data,
                    )
                }?;
                cuda_signals(device, timelines, signal)?;
                device.synchronize_stream()?;
            }
        }
        Ok(())
    }

    /// Reads `slot` once every `wait` point is reached, then signals `signal`.
    fn read(
        &mut self,
        slot: u32,
        wait: &Points,
        signal: &Points,
    ) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let size = self.size;
        match &mut self.backend {
            Backend::Vulkan {
                buffers,
                transfer,
                timelines,
                ..
            } => {
                let sync = vk_sync(timelines, wait, signal)?;
                Ok(transfer.download(&buffers[slot as usize], 0, size, &sync)?)
            }
            Backend::Cuda {
                device,
                buffers,
                timelines,
            } => {
                let mut out = vec![0u8; size as usize];
                cuda_waits(device, timelines, wait)?;
                // SAFETY: the slot holds `size` bytes; `out` is not touched until the stream
                // is synchronized below.
                unsafe {
                    gpushare_interop::cuda::copy_dtoh(
                        device.stream(),
                        buffers[slot as usize].device_ptr(),
                        &mut out,
                    )
                }?;
                cuda_signals(device, timelines, signal)?;
                device.synchronize_stream()?;
                Ok(out)
            }
        }
    }
}

fn vk_sync<'a>(
    timelines: &'a Timelines<TimelineSemaphore>,
    wait: &Points,
    signal: &Points,
) -> Result<SyncPoints<'a>, Box<dyn std::error::Error>> {
    Ok(SyncPoints {
        wait: timelines.resolve(wait)?,
        signal: timelines.resolve(signal)?,
        timeout: Some(TIMEOUT),
    })
}

fn cuda_waits(
    device: &Arc<CudaDevice>,
    timelines: &Timelines<CudaSemaphore>,
    wait: &Points,
) -> Result<(), Box<dyn std::error::Error>> {
    for (t, v) in timelines.resolve(wait)? {
        t.wait(v, device.stream())?;
    }
    Ok(())
}

fn cuda_signals(
    device: &Arc<CudaDevice>,
    timelines: &Timelines<CudaSemaphore>,
    signal: &Points,
) -> Result<(), Box<dyn std::error::Error>> {
    for (t, v) in timelines.resolve(signal)? {
        t.signal(v, device.stream())?;
    }
    Ok(())
}

/// Imports the timelines of `points` this process has not met yet (a consumer that attached
/// later: exported through the stream, which the caller reaches); see [`Timelines::meet`].
async fn meet(
    client: &Client,
    slots: &mut Slots,
    points: &[v1::SemaphorePoint],
) -> Result<Points, Box<dyn std::error::Error>> {
    Ok(match &mut slots.backend {
        Backend::Vulkan {
            device, timelines, ..
        } => {
            timelines
                .meet(client, points, |e| {
                    import::import_semaphore_vulkan(device, e)
                })
                .await?
        }
        Backend::Cuda {
            device, timelines, ..
        } => {
            timelines
                .meet(client, points, |e| {
                    gpushare_client::cuda::import_semaphore_cuda(device, e)
                })
                .await?
        }
    })
}

async fn produce(
    dir: &str,
    id: &str,
    frames: u64,
    delay: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_with_session(dir, "gpushare-streamer produce").await?;
    let producer = client.attach_producer(id).await?;
    let gpu = producer.gpu_points();
    let mut slots = import_slots(producer.import_slots().await?).await?;
    let ready = producer.attachment().ready.clone().unwrap_or_default();
    if gpu {
        let e = producer
            .import_ready()
            .await?
            .ok_or("no ready timeline ticket")?;
        slots.add_timeline(&ready.resource_id, e)?;
    }
    say("attached");
    let producer = Arc::new(producer);
    for n in 1..=frames {
        let p = producer.clone();
        let grant = tokio::task::spawn_blocking(move || p.acquire_slot(TIMEOUT, false)).await??;
        let data = pattern(n, slots.size as usize);
        // GPU points: the copy waits for the slot's release points and signals the ready
        // point on the GPU; HOST points: the daemon signals at Present.
        let (wait, signal) = if gpu {
            (
                meet(&client, &mut slots, &grant.wait).await?,
                vec![(ready.resource_id.clone(), n)],
            )
        } else {
            (Vec::new(), Vec::new())
        };
        slots.write(grant.slot, &data, &wait, &signal)?;
        producer.present(
            grant.slot,
            if gpu { n } else { 0 },
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
    let gpu = consumer.gpu_points();
    let mut slots = import_slots(consumer.import_slots().await?).await?;
    let ready = consumer.attachment().ready.clone().unwrap_or_default();
    let release = consumer.attachment().release.clone().unwrap_or_default();
    if gpu {
        let e = consumer
            .import_ready()
            .await?
            .ok_or("no ready timeline ticket")?;
        slots.add_timeline(&ready.resource_id, e)?;
        let e = consumer
            .import_release()
            .await?
            .ok_or("no release timeline ticket")?;
        slots.add_timeline(&release.resource_id, e)?;
    }
    say("attached");
    let consumer = Arc::new(consumer);
    let (mut count, mut last, mut gaps) = (0u64, 0u64, 0u64);
    loop {
        let c = consumer.clone();
        let frame =
            match tokio::task::spawn_blocking(move || c.acquire_frame(TIMEOUT, false)).await? {
                Ok(f) => f,
                Err(e) if e.code() == Some(tonic::Code::Aborted) => break,
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
        // GPU points: the copy waits for the ready point and signals this consumer's next
        // release point on the GPU; the release below names that point.
        let release_value = if gpu { count + 1 } else { 0 };
        let (wait, signal) = match (gpu, &frame.ready) {
            (true, Some(r)) => (
                vec![(r.semaphore_id.clone(), r.value)],
                vec![(release.resource_id.clone(), release_value)],
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let got = slots.read(frame.slot, &wait, &signal)?;
        if got != pattern(n, slots.size as usize) {
            return Err(format!("frame {n} in slot {}: wrong contents", frame.slot).into());
        }
        gaps += n - last - 1;
        last = n;
        count += 1;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        consumer.release_frame(frame.slot, release_value)?;
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
