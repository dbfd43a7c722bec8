//! `gpushare-pipeline`: three processes joined by two gpushare frame streams.
//!
//! ```text
//! producer (Vulkan) --"frames"--> filter (CUDA, or Vulkan + host) --"filtered"--> sink
//! ```
//!
//! - The **producer** imports the slots of the first stream into its own Vulkan device and
//!   fills each frame with `vkCmdFillBuffer`: every RGBA8 pixel of frame `n` is
//!   [`pixel(n)`](pixel) (the frame number in red, green and blue, alpha 255).
//! - The **filter** consumes that stream and produces the second: with CUDA (the slots and
//!   timelines imported into its CUDA context), a kernel inverts the colour of every pixel
//!   ([`filtered`]); without CUDA it reads the frame through Vulkan, inverts it on the host
//!   and writes it through Vulkan, and says so.
//! - The **sink** consumes the second stream, checks every pixel of every frame against its
//!   number, measures the hops (present → acquire, from the `timestamp_ns` and `user_data` of
//!   the frames' metadata), writes one frame as a PNG, and prints a report.
//!
//! With GPU points (the daemon's device exports timeline semaphores) every hand-off is
//! GPU-side: each process waits for the frame's or slot's points and signals its own on its
//! queue or CUDA stream. With HOST points (lavapipe) the daemon signals them at each call
//! (point 0: "ready/done now").
//!
//! `gpushare-pipeline [--frames N] [--width W --height H] ...` starts the three processes
//! (this binary's `producer`, `filter` and `sink` subcommands) against the daemon of
//! `--runtime-dir` / `$GPUSHARE_RUNTIME_DIR`, or, with `--own-daemon`, against a `gpushared`
//! it starts itself.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use gpushare_client::cuda::InteropBuffer;
use gpushare_client::{
    import, v1, Client, Consumer, Exported, FrameMetadata, Producer, SlotKind, StreamOptions,
};
use gpushare_interop::cuda::kernels::{launch, Module};
use gpushare_interop::cuda::{CudaDevice, ExternalSemaphore};
use gpushare_interop::vulkan::{
    Device, ImportedBuffer, Instance, SyncPoints, TimelineSemaphore, Transfer,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

/// How long a frame call waits (a process may take a while to start on a loaded machine).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Frame `n`'s pixel as the producer writes it: `n` (24 bits) in R, G, B, alpha 255, as the
/// little-endian word `vkCmdFillBuffer` repeats.
pub fn pixel(n: u64) -> u32 {
    0xff00_0000 | (n as u32 & 0x00ff_ffff)
}

/// The filter's transform of one pixel: its colour inverted, alpha kept.
pub fn filtered(p: u32) -> u32 {
    p ^ 0x00ff_ffff
}

/// The filter's kernel: `invert_rgb(u64 src, u64 dst, u32 count)`, thread `i < count` stores
/// `src[i] ^ 0x00ffffff` at `dst[i]` (32-bit words). Hand-written PTX, JIT-compiled by the
/// driver (no nvcc at build time).
const INVERT_PTX: &str = ".version 7.0
.target sm_70
.address_size 64

.visible .entry invert_rgb(
\t.param .u64 invert_rgb_param_0,
\t.param .u64 invert_rgb_param_1,
\t.param .u32 invert_rgb_param_2
)
{
\t.reg .pred %p<2>;
\t.reg .b32 %r<8>;
\t.reg .b64 %rd<8>;

\tld.param.u64 %rd1, [invert_rgb_param_0];
\tld.param.u64 %rd2, [invert_rgb_param_1];
\tld.param.u32 %r1, [invert_rgb_param_2];
\tmov.u32 %r2, %ctaid.x;
\tmov.u32 %r3, %ntid.x;
\tmov.u32 %r4, %tid.x;
\tmad.lo.u32 %r5, %r2, %r3, %r4;
\tsetp.ge.u32 %p1, %r5, %r1;
\t@%p1 bra invert_rgb_done;
\tcvta.to.global.u64 %rd3, %rd1;
\tcvta.to.global.u64 %rd4, %rd2;
\tmul.wide.u32 %rd5, %r5, 4;
\tadd.s64 %rd6, %rd3, %rd5;
\tadd.s64 %rd7, %rd4, %rd5;
\tld.global.u32 %r6, [%rd6];
\txor.b32 %r7, %r6, 16777215;
\tst.global.u32 [%rd7], %r7;
invert_rgb_done:
\tret;
}
";

/// Threads per block of the kernel.
const BLOCK: u32 = 256;

#[derive(Parser, Debug)]
#[command(
    name = "gpushare-pipeline",
    about = "A Vulkan producer, a CUDA filter and a checking sink in three processes, joined by two gpushare frame streams",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The daemon's runtime directory (control.sock, fd.sock).
    #[arg(long, env = "GPUSHARE_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Frame width in pixels (RGBA8).
    #[arg(long, default_value_t = 1920)]
    width: u32,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 1080)]
    height: u32,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Frames to produce.
    #[arg(long, default_value_t = 500)]
    frames: u64,
    /// Slots per stream.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Start a gpushared of our own (found next to this binary, or --daemon-bin) in a
    /// temporary runtime directory, instead of using a running one.
    #[arg(long)]
    own_daemon: bool,
    /// The gpushared binary for --own-daemon.
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// The filter's API.
    #[arg(long, value_enum, default_value_t = FilterApi::Auto)]
    filter_api: FilterApi,
    /// Where the sink writes one frame as a PNG.
    #[arg(long, default_value = "pipeline-frame.png")]
    png: PathBuf,
    /// The frame the sink writes (default: the middle one).
    #[arg(long)]
    png_frame: Option<u64>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum FilterApi {
    /// CUDA if this process can open the daemon's GPU with CUDA, else Vulkan and the host.
    Auto,
    /// CUDA, or fail.
    Cuda,
    /// Vulkan transfers and a host-side transform.
    Vulkan,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// (Started by the pipeline.) Produces frames into a stream.
    Producer {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        stream: String,
        #[arg(long)]
        frames: u64,
    },
    /// (Started by the pipeline.) Consumes one stream, produces the filtered frames into another.
    Filter {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long, value_enum, default_value_t = FilterApi::Auto)]
        api: FilterApi,
    },
    /// (Started by the pipeline.) Consumes the filtered stream, checks and measures it.
    Sink {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        stream: String,
        #[arg(long)]
        frames: u64,
        #[arg(long)]
        png: PathBuf,
        #[arg(long)]
        png_frame: u64,
    },
}

impl Common {
    fn dir(&self) -> PathBuf {
        self.runtime_dir
            .clone()
            .unwrap_or_else(gpushare_client::default_runtime_dir)
    }

    fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    fn args(&self, dir: &Path) -> Vec<String> {
        vec![
            "--runtime-dir".into(),
            dir.display().to_string(),
            "--width".into(),
            self.width.to_string(),
            "--height".into(),
            self.height.to_string(),
        ]
    }
}

/// Nanoseconds since the Unix epoch: the frames' timestamps, comparable across processes.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the pipeline gone) is no reason to stop moving frames.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn points_name(gpu: bool) -> &'static str {
    if gpu {
        "GPU points: hand-offs wait and signal on the imported timelines, on the GPU"
    } else {
        "HOST points: the daemon signals each hand-off at the call (point 0)"
    }
}

// ---- The GPU side of one process: Vulkan or CUDA, its slots and timelines ----

type Points = Vec<(String, u64)>;

/// One process's GPU: its slots (per stream, in slot order) and the timelines it imported.
enum Gpu {
    Vulkan {
        device: Arc<Device>,
        transfer: Transfer,
        slots: Vec<Vec<ImportedBuffer>>,
        timelines: HashMap<String, TimelineSemaphore>,
    },
    Cuda {
        device: Arc<CudaDevice>,
        module: Module,
        slots: Vec<Vec<InteropBuffer>>,
        timelines: HashMap<String, ExternalSemaphore>,
    },
}

impl Gpu {
    /// A Vulkan device of the GPU that exported `first`.
    fn vulkan(first: &Exported) -> Res<Gpu> {
        let instance = Instance::new("gpushare-pipeline")?;
        let device = import::vulkan_device_for(&instance, first)?;
        Ok(Gpu::Vulkan {
            transfer: Transfer::new(&device)?,
            device,
            slots: Vec::new(),
            timelines: HashMap::new(),
        })
    }

    /// The CUDA device of the GPU that exported `first`, with the filter's kernel loaded.
    fn cuda(first: &Exported) -> Res<Gpu> {
        if !gpushare_interop::cuda::is_present() {
            return Err("no CUDA driver (libcuda) in this process".into());
        }
        let device = gpushare_client::cuda::cuda_device_for(first)?;
        let ptx = CString::new(INVERT_PTX)?;
        let module = Module::load(&device, &ptx)?;
        Ok(Gpu::Cuda {
            device,
            module,
            slots: Vec::new(),
            timelines: HashMap::new(),
        })
    }

    fn is_cuda(&self) -> bool {
        matches!(self, Gpu::Cuda { .. })
    }

    /// Imports one stream's slots; returns the stream's index here.
    fn add_slots(&mut self, exported: Vec<Exported>) -> Res<usize> {
        match self {
            Gpu::Vulkan { device, slots, .. } => {
                let mut v = Vec::new();
                for e in exported {
                    v.push(import::import_buffer_vulkan(device, e)?);
                }
                slots.push(v);
                Ok(slots.len() - 1)
            }
            Gpu::Cuda { device, slots, .. } => {
                let mut v = Vec::new();
                for e in exported {
                    v.push(InteropBuffer::import(device, e)?);
                }
                slots.push(v);
                Ok(slots.len() - 1)
            }
        }
    }

    fn has_timeline(&self, id: &str) -> bool {
        match self {
            Gpu::Vulkan { timelines, .. } => timelines.contains_key(id),
            Gpu::Cuda { timelines, .. } => timelines.contains_key(id),
        }
    }

    fn add_timeline(&mut self, id: &str, exported: Exported) -> Res<()> {
        match self {
            Gpu::Vulkan {
                device, timelines, ..
            } => {
                let t = import::import_semaphore_vulkan(device, exported)?;
                timelines.insert(id.to_owned(), t);
            }
            Gpu::Cuda {
                device, timelines, ..
            } => {
                let t = gpushare_client::cuda::import_semaphore_cuda(device, exported)?;
                timelines.insert(id.to_owned(), t);
            }
        }
        Ok(())
    }

    /// Vulkan: fills slot `slot` of stream `s` with `value` after `wait`, signalling `signal`;
    /// returns when the fill is done.
    fn fill(&mut self, s: usize, slot: u32, value: u32, wait: &Points, signal: &Points) -> Res<()> {
        match self {
            Gpu::Vulkan {
                transfer,
                slots,
                timelines,
                ..
            } => {
                let buffer = &slots[s][slot as usize];
                let size = gpushare_interop::vulkan::DeviceBuffer::size(buffer);
                let sync = vk_sync(timelines, wait, signal)?;
                transfer.fill(buffer, 0, size, value, &sync)?;
                Ok(())
            }
            Gpu::Cuda { .. } => Err("the producer renders with Vulkan".into()),
        }
    }

    /// Vulkan: reads slot `slot` of stream `s` after `wait`, signalling `signal`.
    fn read(&mut self, s: usize, slot: u32, wait: &Points, signal: &Points) -> Res<Vec<u8>> {
        match self {
            Gpu::Vulkan {
                transfer,
                slots,
                timelines,
                ..
            } => {
                let buffer = &slots[s][slot as usize];
                let size = gpushare_interop::vulkan::DeviceBuffer::size(buffer);
                let sync = vk_sync(timelines, wait, signal)?;
                Ok(transfer.download(buffer, 0, size, &sync)?)
            }
            Gpu::Cuda { .. } => Err("reading back is done with Vulkan".into()),
        }
    }

    /// Vulkan: writes `data` into slot `slot` of stream `s` after `wait`, signalling `signal`.
    fn write(
        &mut self,
        s: usize,
        slot: u32,
        data: &[u8],
        wait: &Points,
        signal: &Points,
    ) -> Res<()> {
        match self {
            Gpu::Vulkan {
                transfer,
                slots,
                timelines,
                ..
            } => {
                let sync = vk_sync(timelines, wait, signal)?;
                transfer.upload(&slots[s][slot as usize], 0, data, &sync)?;
                Ok(())
            }
            Gpu::Cuda { .. } => Err("writing from the host is done with Vulkan".into()),
        }
    }

    /// CUDA: enqueues, on this process's stream, the waits for `wait`, the kernel from slot
    /// `src` of stream `si` into slot `dst` of stream `so` (`count` pixels), and the signals of
    /// `signal`. Returns once enqueued (GPU points: nothing on the host waits for it).
    fn invert(
        &mut self,
        (si, src): (usize, u32),
        (so, dst): (usize, u32),
        count: u32,
        wait: &Points,
        signal: &Points,
    ) -> Res<()> {
        let Gpu::Cuda {
            device,
            module,
            slots,
            timelines,
        } = self
        else {
            return Err("the kernel runs with CUDA".into());
        };
        let get = |id: &String| {
            timelines
                .get(id)
                .ok_or_else(|| format!("timeline {id} not imported"))
        };
        for (id, v) in wait {
            get(id)?.wait(*v, device.stream())?;
        }
        let function = module.function(c"invert_rgb")?;
        let (a, b) = (&slots[si][src as usize], &slots[so][dst as usize]);
        if u64::from(count) * 4 > a.size().min(b.size()) {
            return Err(format!("{count} pixels do not fit the slots").into());
        }
        let (mut p_src, mut p_dst, mut p_count) = (a.device_ptr(), b.device_ptr(), count);
        let mut params = [
            (&raw mut p_src).cast::<c_void>(),
            (&raw mut p_dst).cast::<c_void>(),
            (&raw mut p_count).cast::<c_void>(),
        ];
        let grid = count.div_ceil(BLOCK).max(1);
        // SAFETY: `params` points at a u64, a u64 and a u32, the kernel's parameters in order
        // (INVERT_PTX); the driver copies their values during the call. The kernel touches
        // `count` words of each slot, which fit both (checked above); the imports live until
        // the stream is synchronized (`finish`, before they drop).
        unsafe {
            launch(
                &function,
                (grid, 1, 1),
                (BLOCK, 1, 1),
                &mut params,
                device.stream(),
            )
        }?;
        for (id, v) in signal {
            get(id)?.signal(*v, device.stream())?;
        }
        Ok(())
    }

    /// Waits for everything this process enqueued.
    fn finish(&self) -> Res<()> {
        if let Gpu::Cuda { device, .. } = self {
            device.synchronize_stream()?;
        }
        Ok(())
    }
}

fn vk_sync<'a>(
    timelines: &'a HashMap<String, TimelineSemaphore>,
    wait: &Points,
    signal: &Points,
) -> Res<SyncPoints<'a>> {
    let get = |id: &String| {
        timelines
            .get(id)
            .ok_or_else(|| format!("timeline {id} not imported"))
    };
    Ok(SyncPoints {
        wait: wait
            .iter()
            .map(|(id, v)| Ok((get(id)?, *v)))
            .collect::<Result<_, String>>()?,
        signal: signal
            .iter()
            .map(|(id, v)| Ok((get(id)?, *v)))
            .collect::<Result<_, String>>()?,
        timeout: Some(TIMEOUT),
    })
}

/// Imports the timelines of `points` not met yet (a consumer's release timeline, exported
/// through the stream); a timeline gone already was poisoned (its points reached) and is left
/// out.
async fn meet(client: &Client, gpu: &mut Gpu, points: &[v1::SemaphorePoint]) -> Res<Points> {
    let mut out = Vec::new();
    for p in points {
        if !gpu.has_timeline(&p.semaphore_id) {
            match client.export_ticket(&p.semaphore_id).await {
                Ok(t) => {
                    let e = client.redeem(&t.ticket).await?;
                    gpu.add_timeline(&p.semaphore_id, e)?;
                }
                Err(e) if e.code() == Some(tonic::Code::NotFound) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        out.push((p.semaphore_id.clone(), p.value));
    }
    Ok(out)
}

/// The stream's ready timeline, imported (GPU points); its id.
async fn ready_of_producer(p: &Producer, gpu: &mut Gpu) -> Res<String> {
    let id = p.attachment().ready.clone().unwrap_or_default().resource_id;
    if p.gpu_points() {
        let e = p.import_ready().await?.ok_or("no ready timeline ticket")?;
        gpu.add_timeline(&id, e)?;
    }
    Ok(id)
}

/// The stream's ready timeline and the consumer's release timeline, imported (GPU points);
/// the release timeline's id.
async fn timelines_of_consumer(c: &Consumer, gpu: &mut Gpu) -> Res<String> {
    let ready = c.attachment().ready.clone().unwrap_or_default().resource_id;
    let release = c
        .attachment()
        .release
        .clone()
        .unwrap_or_default()
        .resource_id;
    if c.gpu_points() {
        let e = c.import_ready().await?.ok_or("no ready timeline ticket")?;
        gpu.add_timeline(&ready, e)?;
        let e = c
            .import_release()
            .await?
            .ok_or("no release timeline ticket")?;
        gpu.add_timeline(&release, e)?;
    }
    Ok(release)
}

async fn acquire_slot(p: &Arc<Producer>) -> Res<v1::SlotGrant> {
    let p = p.clone();
    Ok(tokio::task::spawn_blocking(move || p.acquire_slot(TIMEOUT, false)).await??)
}

/// The next frame, or `None` once the stream ended and is drained.
async fn acquire_frame(c: &Arc<Consumer>) -> Res<Option<v1::Frame>> {
    let c = c.clone();
    match tokio::task::spawn_blocking(move || c.acquire_frame(TIMEOUT, false)).await? {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.code() == Some(tonic::Code::Aborted) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

// ---- The three roles ----

async fn producer(common: &Common, stream: &str, frames: u64) -> Res<()> {
    let client = Client::connect_with_session(common.dir(), "gpushare-pipeline producer").await?;
    let producer = client.attach_producer(stream).await?;
    let gpu_points = producer.gpu_points();
    let exported = producer.import_slots().await?;
    let mut gpu = Gpu::vulkan(exported.first().ok_or("a stream has slots")?)?;
    let s = gpu.add_slots(exported)?;
    let ready = ready_of_producer(&producer, &mut gpu).await?;
    say(&format!(
        "producer: Vulkan fill of {}x{} RGBA8 frames; {}",
        common.width,
        common.height,
        points_name(gpu_points)
    ));
    say("attached");
    let producer = Arc::new(producer);
    let start = Instant::now();
    for n in 1..=frames {
        let grant = acquire_slot(&producer).await?;
        // GPU points: the fill waits for the slot's release points and signals ready point
        // `n` on the GPU; HOST points: the daemon signals at Present.
        let (wait, signal) = if gpu_points {
            (
                meet(&client, &mut gpu, &grant.wait).await?,
                vec![(ready.clone(), n)],
            )
        } else {
            (Vec::new(), Vec::new())
        };
        gpu.fill(s, grant.slot, pixel(n), &wait, &signal)?;
        let p = producer.clone();
        let metadata = FrameMetadata {
            number: n,
            timestamp_ns: now_ns(),
            user_data: Vec::new(),
        };
        let value = if gpu_points { n } else { 0 };
        tokio::task::spawn_blocking(move || p.present(grant.slot, value, metadata)).await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let info = client.describe_stream(stream).await?;
    say(&format!(
        "producer: {frames} frames in {secs:.2} s ({:.1} fps), {} stalls on a full pool",
        frames as f64 / secs.max(1e-9),
        info.producer_stalls
    ));
    Arc::into_inner(producer)
        .ok_or("producer still shared")?
        .detach()
        .await?;
    Ok(())
}

async fn filter(common: &Common, input: &str, output: &str, api: FilterApi) -> Res<()> {
    let client = Client::connect_with_session(common.dir(), "gpushare-pipeline filter").await?;
    let out = client.attach_producer(output).await?;
    let inp = client
        .attach_consumer(input, v1::DeliveryMode::Fifo, 2)
        .await?;
    let gpu_points = inp.gpu_points();
    let in_slots = inp.import_slots().await?;
    let out_slots = out.import_slots().await?;
    let first = in_slots.first().ok_or("a stream has slots")?;
    let mut gpu = match api {
        FilterApi::Vulkan => Gpu::vulkan(first)?,
        FilterApi::Cuda => Gpu::cuda(first)?,
        FilterApi::Auto => match Gpu::cuda(first) {
            Ok(g) => g,
            Err(e) => {
                say(&format!(
                    "filter: CUDA unavailable ({e}): falling back to a Vulkan/host-side filter"
                ));
                Gpu::vulkan(first)?
            }
        },
    };
    let si = gpu.add_slots(in_slots)?;
    let so = gpu.add_slots(out_slots)?;
    let release = timelines_of_consumer(&inp, &mut gpu).await?;
    let ready = ready_of_producer(&out, &mut gpu).await?;
    say(&format!(
        "filter: {}; {}",
        if gpu.is_cuda() {
            "CUDA kernel invert_rgb on the imported slots"
        } else {
            "Vulkan download, host-side invert, Vulkan upload (no CUDA)"
        },
        points_name(gpu_points)
    ));
    say("attached");
    let (inp, out) = (Arc::new(inp), Arc::new(out));
    let count_px = u32::try_from(common.pixels())?;
    let mut count = 0u64;
    while let Some(frame) = acquire_frame(&inp).await? {
        let acquired = now_ns();
        let meta = frame.metadata.clone().unwrap_or_default();
        let grant = acquire_slot(&out).await?;
        count += 1;
        // GPU points: wait for the frame's ready point and the output slot's release points,
        // signal this consumer's release point `count` and the output's ready point `count`.
        let (wait_in, wait_out) = if gpu_points {
            let r = frame
                .ready
                .as_ref()
                .ok_or("a frame without its ready point")?;
            (
                vec![(r.semaphore_id.clone(), r.value)],
                meet(&client, &mut gpu, &grant.wait).await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let (sig_in, sig_out) = if gpu_points {
            (vec![(release.clone(), count)], vec![(ready.clone(), count)])
        } else {
            (Vec::new(), Vec::new())
        };
        if gpu.is_cuda() {
            let mut wait = wait_in;
            wait.extend(wait_out);
            let mut signal = sig_in;
            signal.extend(sig_out);
            gpu.invert((si, frame.slot), (so, grant.slot), count_px, &wait, &signal)?;
            if !gpu_points {
                // HOST points: the daemon signals at the calls, so the kernel must be done.
                gpu.finish()?;
            }
        } else {
            let mut data = gpu.read(si, frame.slot, &wait_in, &sig_in)?;
            for px in data.chunks_exact_mut(4) {
                let v = filtered(u32::from_le_bytes([px[0], px[1], px[2], px[3]]));
                px.copy_from_slice(&v.to_le_bytes());
            }
            gpu.write(so, grant.slot, &data, &wait_out, &sig_out)?;
        }
        let value = if gpu_points { count } else { 0 };
        let c = inp.clone();
        let slot = frame.slot;
        tokio::task::spawn_blocking(move || c.release_frame(slot, value)).await??;
        let mut user_data = meta.timestamp_ns.to_le_bytes().to_vec();
        user_data.extend_from_slice(&acquired.to_le_bytes());
        let metadata = FrameMetadata {
            number: meta.number,
            timestamp_ns: now_ns(),
            user_data,
        };
        let p = out.clone();
        tokio::task::spawn_blocking(move || p.present(grant.slot, value, metadata)).await??;
    }
    gpu.finish()?;
    say(&format!("filter: {count} frames filtered"));
    Arc::into_inner(out)
        .ok_or("output still shared")?
        .detach()
        .await?;
    Arc::into_inner(inp)
        .ok_or("input still shared")?
        .detach()
        .await?;
    Ok(())
}

/// Latency samples in nanoseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn push(&mut self, from: u64, to: u64) {
        self.0.push(to.saturating_sub(from));
    }

    fn summary(&mut self) -> String {
        if self.0.is_empty() {
            return "no samples".into();
        }
        self.0.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        let at = |q: f64| self.0[((self.0.len() - 1) as f64 * q).round() as usize];
        let mean = self.0.iter().sum::<u64>() as f64 / self.0.len() as f64 / 1e6;
        format!(
            "mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(at(0.5)),
            ms(at(0.99)),
            ms(*self.0.last().unwrap_or(&0))
        )
    }
}

fn write_png(path: &Path, width: u32, height: u32, data: &[u8]) -> Res<()> {
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(data)?;
    writer.finish()?;
    Ok(())
}

async fn sink(common: &Common, stream: &str, frames: u64, png: &Path, png_frame: u64) -> Res<()> {
    let client = Client::connect_with_session(common.dir(), "gpushare-pipeline sink").await?;
    let consumer = client
        .attach_consumer(stream, v1::DeliveryMode::Fifo, 2)
        .await?;
    let gpu_points = consumer.gpu_points();
    let exported = consumer.import_slots().await?;
    let mut gpu = Gpu::vulkan(exported.first().ok_or("a stream has slots")?)?;
    let s = gpu.add_slots(exported)?;
    let release = timelines_of_consumer(&consumer, &mut gpu).await?;
    say(&format!(
        "sink: Vulkan readback, every pixel of every frame checked; {}",
        points_name(gpu_points)
    ));
    say("attached");
    let consumer = Arc::new(consumer);
    let len = common.pixels() as usize * 4;
    let (mut count, mut bad, mut last, mut out_of_order) = (0u64, 0u64, 0u64, 0u64);
    let (mut hop1, mut hop2, mut filter_time, mut total, mut read_back) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let (mut first_at, mut last_at) = (None, Instant::now());
    let mut png_written = None;
    while let Some(frame) = acquire_frame(&consumer).await? {
        let acquired = now_ns();
        let at = Instant::now();
        first_at.get_or_insert(at);
        last_at = at;
        let meta = frame.metadata.clone().unwrap_or_default();
        let n = meta.number;
        let mut produced_at = None;
        if n != last + 1 {
            out_of_order += 1;
        }
        last = n;
        count += 1;
        // Latency: producer present → filter acquire (in user_data), filter acquire → filter
        // present, filter present → sink acquire, producer present → sink acquire.
        if let (Some(p), Some(f)) = (meta.user_data.get(0..8), meta.user_data.get(8..16)) {
            let produced = u64::from_le_bytes(p.try_into()?);
            let filter_acquired = u64::from_le_bytes(f.try_into()?);
            hop1.push(produced, filter_acquired);
            filter_time.push(filter_acquired, meta.timestamp_ns);
            total.push(produced, acquired);
            produced_at = Some(produced);
        }
        hop2.push(meta.timestamp_ns, acquired);
        let (wait, signal) = match (gpu_points, &frame.ready) {
            (true, Some(r)) => (
                vec![(r.semaphore_id.clone(), r.value)],
                vec![(release.clone(), count)],
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let data = gpu.read(s, frame.slot, &wait, &signal)?;
        let read = now_ns();
        if let Some(p) = produced_at {
            read_back.push(p, read);
        }
        let want = filtered(pixel(n)).to_le_bytes();
        let wrong = if data.len() < len {
            Some(data.len() / 4)
        } else {
            data[..len].chunks_exact(4).position(|px| px != want)
        };
        if let Some(i) = wrong {
            bad += 1;
            if bad <= 5 {
                let got = data.get(i * 4..i * 4 + 4).unwrap_or(&[]);
                say(&format!(
                    "sink: frame {n}: pixel {i} is {got:?}, expected {want:?}"
                ));
            }
        }
        if n == png_frame {
            write_png(
                png,
                common.width,
                common.height,
                &data[..len.min(data.len())],
            )?;
            png_written = Some(n);
        }
        let c = consumer.clone();
        let slot = frame.slot;
        let value = if gpu_points { count } else { 0 };
        tokio::task::spawn_blocking(move || c.release_frame(slot, value)).await??;
    }
    let secs = first_at.map_or(0.0, |f| last_at.duration_since(f).as_secs_f64());
    let fps = if count > 1 {
        (count - 1) as f64 / secs.max(1e-9)
    } else {
        0.0
    };
    say(&format!(
        "sink: {count} of {frames} frames, {bad} bad, {out_of_order} out of order, {fps:.1} fps ({}x{} RGBA8, {:.1} MB/s per hop)",
        common.width,
        common.height,
        fps * len as f64 / 1e6
    ));
    say(&format!(
        "sink: producer present -> filter acquire: {}",
        hop1.summary()
    ));
    say(&format!(
        "sink: filter acquire -> filter present:   {}",
        filter_time.summary()
    ));
    say(&format!(
        "sink: filter present -> sink acquire:     {}",
        hop2.summary()
    ));
    say(&format!(
        "sink: producer present -> sink acquire:   {}",
        total.summary()
    ));
    say(&format!(
        "sink: producer present -> sink read back: {}",
        read_back.summary()
    ));
    match png_written {
        Some(n) => say(&format!("sink: frame {n} written to {}", png.display())),
        None => say(&format!(
            "sink: frame {png_frame} never came: no PNG written"
        )),
    }
    say(&format!(
        "RESULT frames={count} expected={frames} bad={bad} out_of_order={out_of_order} checked=all-pixels points={} png={}",
        if gpu_points { "gpu" } else { "host" },
        if png_written.is_some() {
            png.display().to_string()
        } else {
            "-".into()
        }
    ));
    Arc::into_inner(consumer)
        .ok_or("consumer still shared")?
        .detach()
        .await?;
    if count != frames || bad != 0 || out_of_order != 0 || png_written.is_none() {
        return Err("the sink's checks failed".into());
    }
    Ok(())
}

// ---- The pipeline: streams, three processes, optionally a daemon ----

/// A child of ours, killed (by its own id) if still running when dropped.
struct Kid {
    name: &'static str,
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    forward: Option<std::thread::JoinHandle<()>>,
}

impl Kid {
    /// Starts `args` of this binary; its stdout lines are printed prefixed with its name and
    /// handed to [`Kid::wait_for`].
    fn start(name: &'static str, args: &[String]) -> Res<Kid> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        let forward = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line != "attached" {
                    say(&format!("[{name:8}] {line}"));
                }
                let _ = tx.send(line);
            }
        });
        Ok(Kid {
            name,
            child,
            lines,
            forward: Some(forward),
        })
    }

    /// Waits for the line `want`.
    fn wait_for(&mut self, want: &str) -> Res<()> {
        loop {
            match self.lines.recv_timeout(TIMEOUT) {
                Ok(l) if l == want => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!("the {} never printed {want:?}", self.name).into());
                }
            }
        }
    }

    fn wait(mut self) -> Res<()> {
        let status = self.child.wait()?;
        if let Some(f) = self.forward.take() {
            let _ = f.join();
        }
        if !status.success() {
            return Err(format!("the {} failed ({status})", self.name).into());
        }
        Ok(())
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A gpushared of our own in a temporary runtime directory.
struct OwnDaemon {
    child: Child,
    dir: PathBuf,
}

impl OwnDaemon {
    fn start(bin: Option<&Path>) -> Res<OwnDaemon> {
        let bin = match bin {
            Some(b) => b.to_owned(),
            None => std::env::current_exe()?
                .parent()
                .ok_or("no directory of this binary")?
                .join("gpushared"),
        };
        let dir = std::env::temp_dir().join(format!("gpushare-pipeline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("config.toml");
        std::fs::write(&config, "")?;
        let log = std::fs::File::create(dir.join("gpushared.log"))?;
        let run = dir.join("run");
        let mut child = Command::new(&bin)
            .arg("--runtime-dir")
            .arg(&run)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("gpushared.log")).unwrap_or_default();
                return Err(format!("gpushared exited with {status}:\n{log}").into());
            }
            let serving = std::fs::read_to_string(dir.join("gpushared.log"))
                .is_ok_and(|l| l.contains("serving"));
            if serving && run.join("control.sock").exists() && run.join("fd.sock").exists() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("gpushared did not start within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(OwnDaemon { child, dir })
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn pipeline(args: &RunArgs) -> Res<()> {
    let own = if args.own_daemon {
        let d = OwnDaemon::start(args.daemon_bin.as_deref())?;
        say(&format!(
            "pipeline: started gpushared in {}",
            d.runtime_dir().display()
        ));
        Some(d)
    } else {
        None
    };
    let dir = match &own {
        Some(d) => d.runtime_dir(),
        None => args.common.dir(),
    };
    let client = Client::connect_with_session(&dir, "gpushare-pipeline")
        .await
        .map_err(|e| format!("connecting to gpushared at {}: {e}", dir.display()))?;
    let size = args.common.pixels() * 4;
    if size == 0 {
        return Err("empty frames".into());
    }
    // The streams are held by this session; the roles attach from their own processes.
    let kind = SlotKind::Buffer(size);
    let opts = StreamOptions::default();
    let frames_stream = client
        .create_stream_unproduced(args.slots, &kind, &opts)
        .await?;
    let filtered_stream = client
        .create_stream_unproduced(args.slots, &kind, &opts)
        .await?;
    say(&format!(
        "pipeline: {} frames of {}x{} RGBA8 ({} bytes), {} slots per stream; streams {} -> {}; {}",
        args.frames,
        args.common.width,
        args.common.height,
        size,
        args.slots,
        frames_stream.id,
        filtered_stream.id,
        points_name(frames_stream.points == v1::StreamPoints::Gpu as i32)
    ));
    let common = args.common.args(&dir);
    let with = |role: &str, extra: &[String]| {
        let mut v = vec![role.to_owned()];
        v.extend(common.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    };
    let png_frame = args.png_frame.unwrap_or((args.frames / 2).max(1));
    // Consumers first: a consumer receives the frames presented after it attached.
    let mut sink = Kid::start(
        "sink",
        &with(
            "sink",
            &[
                "--stream".into(),
                filtered_stream.id.clone(),
                "--frames".into(),
                args.frames.to_string(),
                "--png".into(),
                args.png.display().to_string(),
                "--png-frame".into(),
                png_frame.to_string(),
            ],
        ),
    )?;
    sink.wait_for("attached")?;
    let api = match args.filter_api {
        FilterApi::Auto => "auto",
        FilterApi::Cuda => "cuda",
        FilterApi::Vulkan => "vulkan",
    };
    let mut filter = Kid::start(
        "filter",
        &with(
            "filter",
            &[
                "--input".into(),
                frames_stream.id.clone(),
                "--output".into(),
                filtered_stream.id.clone(),
                "--api".into(),
                api.into(),
            ],
        ),
    )?;
    filter.wait_for("attached")?;
    let start = Instant::now();
    let producer = Kid::start(
        "producer",
        &with(
            "producer",
            &[
                "--stream".into(),
                frames_stream.id.clone(),
                "--frames".into(),
                args.frames.to_string(),
            ],
        ),
    )?;
    // Wait in order; the first failure drops (kills) the rest.
    let result = tokio::task::spawn_blocking(move || -> Res<()> {
        producer.wait()?;
        filter.wait()?;
        sink.wait()
    })
    .await?;
    result?;
    say(&format!(
        "pipeline: done in {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    drop(client);
    drop(own);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (what, result) = match &cli.role {
        None => ("pipeline", pipeline(&cli.run).await),
        Some(Role::Producer {
            common,
            stream,
            frames,
        }) => ("producer", producer(common, stream, *frames).await),
        Some(Role::Filter {
            common,
            input,
            output,
            api,
        }) => ("filter", filter(common, input, output, *api).await),
        Some(Role::Sink {
            common,
            stream,
            frames,
            png,
            png_frame,
        }) => ("sink", sink(common, stream, *frames, png, *png_frame).await),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpushare-pipeline {what}: {e}");
            ExitCode::FAILURE
        }
    }
}
