//! `gpushare-streambench`: what frame streams cost, each figure against a baseline measured in
//! the same run, printed as a table and written as JSON (`--json PATH`, default
//! `bench/results/streams-latest.json`). It starts its own `gpushared` (`GPUSHARE_BIN_DIR` or
//! the build's directory).
//!
//! 1. **Frame calls on fd.sock** (any device): p50 of AcquireSlot, Present, AcquireFrame and
//!    ReleaseFrame, each answered at once, against the raw fd.sock wait round trip for a value
//!    already reached. Target: the slowest frame call ≤ 1.5 × the wait (`fd_call_ratio`).
//! 2. **Producer stall after a consumer SIGKILL** (any device): 100 consumers (`gpushare-streamer
//!    hold`) each holding or awaiting every slot, SIGKILLed while the producer waits for a
//!    slot; the time from the kill to the producer's slot. Target p99 ≤ 100 ms
//!    (`stall_after_kill_p99_ms`).
//! 3. **GPU→GPU hop through a stream** (CUDA, GPU points): two processes in lockstep, A producing
//!    into stream AB and consuming stream BA, B the other way round; per round trip (two hops)
//!    A's time from its enqueue to its stream passing B's frame. Against the same lockstep
//!    through one bare shared timeline semaphore. Target: hop p50 ≤ 1.10 × the bare
//!    semaphore's (`hop_ratio`).
//! 4. **Throughput** (CUDA, GPU points): 1920×1080 RGBA8 frames through producer → filter →
//!    sink in three processes (producer fills the frame with its number, the filter copies it
//!    into its own output stream, the sink checks the first and last word), frames per second
//!    against the same three stages in one process on one stream. Target ≥ 0.95×
//!    (`fps_ratio`).
//!
//! 5. **The CUDA fast path** (CUDA, the daemon's FastPath offered), written to its own file
//!    (`--fastpath-json PATH`, default `bench/results/fastpath-latest.json`): the lockstep round
//!    trip through a worded semaphore on its word, against raw stream memory operations on a
//!    word of a shared buffer (the floor, target p50 ≤ 1.2×: `fast_ratio`) and against the
//!    semaphore path (`sem_speedup`), all from one pair of processes; the round trip through two
//!    worded streams against the floor (target ≤ 1.3×: `stream_hop_ratio`); part 4's pipeline
//!    with worded streams against part 4's own figure (`pipeline_fps_fast`, `pipeline_fps_sem`,
//!    and each frame's latency from the producer's Present to the sink's check,
//!    `pipeline_latency_p50_us_fast` and `_sem`).
//!
//! Parts 3 to 5 need CUDA and a device that exports timeline semaphores; elsewhere they are
//! reported as skipped (and fail under `GPUSHARE_REQUIRE_GPU=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpushare_client::cuda::{cuda_device_for, CudaSemaphore, InteropBuffer, SyncPath};
use gpushare_client::{
    v1, Client, Consumer, CreateOptions, FrameMetadata, HostWaiter, Producer, SlotKind,
    StreamOptions, Timelines,
};
use gpushare_interop::cuda::{self, memops, CudaDevice, PinnedBuffer};
use gpushare_tests::report::{self, Row};
use gpushare_tests::{bin, TestDaemon};
use serde_json::{json, Map, Value};

use gpushare_tests::lines::{read_stdin_line, say, LinePeer, Res};

const CALLS: usize = 2000;
const KILLS: usize = 100;
const HOP_ROUNDS: u64 = 2000;
const FRAMES: u64 = 1000;
const FRAME_BYTES: u64 = 1920 * 1080 * 4;
/// Slots per stream in the throughput run: frames in flight between the processes.
const SLOTS: u32 = 16;
const LONG: Duration = Duration::from_secs(20);

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Out {
    rows: Vec<Row>,
    fields: Map<String, Value>,
    notes: Vec<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--role") {
        return match role(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "gpushare-streambench {}: {e}",
                    args.get(1).map_or("", |s| s)
                );
                ExitCode::from(3)
            }
        };
    }
    let mut json_path = PathBuf::from("bench/results/streams-latest.json");
    let mut fast_path = PathBuf::from("bench/results/fastpath-latest.json");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--json", Some(p)) => json_path = PathBuf::from(p),
            ("--fastpath-json", Some(p)) => fast_path = PathBuf::from(p),
            _ => {
                eprintln!("usage: gpushare-streambench [--json PATH] [--fastpath-json PATH]");
                return ExitCode::from(2);
            }
        }
    }
    match run(&json_path, &fast_path) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gpushare-streambench: {e}");
            ExitCode::from(3)
        }
    }
}

fn run(json_path: &std::path::Path, fast_path_json: &std::path::Path) -> Res<bool> {
    let d = TestDaemon::start().ok_or("no Vulkan device")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut out = Out {
        rows: Vec::new(),
        fields: Map::new(),
        notes: Vec::new(),
    };
    fd_calls(&rt, &d, &mut out)?;
    stalls(&rt, &d, &mut out)?;
    let gpu = rt.block_on(gpu_points(&d))?;
    let cuda = cuda::is_present();
    let mut fast = Out {
        rows: Vec::new(),
        fields: Map::new(),
        notes: Vec::new(),
    };
    let mut fast_ran = false;
    if gpu && cuda {
        hops(&rt, &d, &mut out)?;
        let sem_pipeline = throughput(&rt, &d, &mut out)?;
        match rt.block_on(fast_path_offered(&d))? {
            Ok(()) => {
                fast_path(&rt, &d, sem_pipeline, &mut fast)?;
                fast_ran = true;
            }
            Err(why) if gpushare_tests::gpu_required() => {
                return Err(format!("GPUSHARE_REQUIRE_GPU=1 but no fast path: {why}").into())
            }
            Err(why) => println!("SKIP: the CUDA fast path: {why}"),
        }
    } else {
        let why = if cuda {
            "the device exports no timeline semaphore (HOST points)"
        } else {
            "no CUDA driver"
        };
        if gpushare_tests::gpu_required() {
            return Err(format!("GPUSHARE_REQUIRE_GPU=1 but {why}").into());
        }
        println!("SKIP: GPU hop latency and throughput: {why}");
        out.notes.push(format!("GPU parts skipped: {why}"));
    }
    let mut failed = write(out, json_path)?;
    if fast_ran {
        println!();
        failed.extend(write(fast, fast_path_json)?);
    }
    if !failed.is_empty() {
        println!("targets missed: {failed:?}");
    }
    Ok(failed.is_empty())
}

/// Whether device 0 offers the CUDA fast path (`Err`: why not).
async fn fast_path_offered(d: &TestDaemon) -> Res<Result<(), String>> {
    let c = Client::connect(d.runtime_dir()).await?;
    let info = c.info().await?;
    let fast = info
        .devices
        .first()
        .and_then(|dev| dev.fast_path.clone())
        .unwrap_or_default();
    Ok(if fast.offered {
        Ok(())
    } else {
        Err(fast.unavailable)
    })
}

/// Prints `out`'s table and notes and writes it with the run's metadata to `json_path`.
/// Returns the targets missed.
fn write(out: Out, json_path: &std::path::Path) -> Res<Vec<String>> {
    report::print_table(&out.rows);
    for n in &out.notes {
        println!("- {n}");
    }
    let failed: Vec<String> = report::failed(&out.rows)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut doc = out.fields;
    doc.insert("machine".into(), report::machine_info());
    doc.insert("date".into(), json!(report::utc_now()));
    doc.insert(
        "commit".into(),
        report::machine_info()["git_commit"].clone(),
    );
    doc.insert(
        "gpu".into(),
        json!(report::command_output(
            "nvidia-smi",
            &["--query-gpu=name,driver_version", "--format=csv,noheader"]
        )),
    );
    doc.insert(
        "rows".into(),
        Value::Array(out.rows.iter().map(Row::to_json).collect()),
    );
    doc.insert("notes".into(), json!(out.notes));
    report::write_json(json_path, &Value::Object(doc))?;
    println!("wrote {}", json_path.display());
    Ok(failed)
}

async fn gpu_points(d: &TestDaemon) -> Res<bool> {
    let c = Client::connect_with_session(d.runtime_dir(), "probe").await?;
    let p = c
        .create_stream(2, &SlotKind::Buffer(64), &StreamOptions::default())
        .await?;
    let gpu = p.gpu_points();
    p.detach().await?;
    Ok(gpu)
}

fn meta(n: u64) -> FrameMetadata {
    FrameMetadata {
        number: n,
        timestamp_ns: monotonic_ns(),
        ..Default::default()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Part 1: each frame call answered at once, against a raw fd.sock wait for a reached value.
fn fd_calls(rt: &tokio::runtime::Runtime, d: &TestDaemon, out: &mut Out) -> Res<()> {
    let c = rt.block_on(Client::connect_with_session(d.runtime_dir(), "calls"))?;
    let p = rt.block_on(c.create_stream(2, &SlotKind::Buffer(64), &StreamOptions::default()))?;
    let con = rt.block_on(c.attach_consumer(&p.info().id, v1::DeliveryMode::Fifo, 1))?;
    let sem = rt.block_on(c.create_semaphore(1, &CreateOptions::default()))?;
    let waiter = HostWaiter::connect(d.runtime_dir())?;
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for i in 0..CALLS + 100 {
        let t0 = Instant::now();
        waiter.wait(sem.id(), 1, LONG, Duration::ZERO)?;
        let t1 = Instant::now();
        let g = p.acquire_slot(LONG, false)?;
        let t2 = Instant::now();
        p.present(g.slot, 0, meta(i as u64))?;
        let t3 = Instant::now();
        let f = con.acquire_frame(LONG, false)?;
        let t4 = Instant::now();
        con.release_frame(f.slot, 0)?;
        let t5 = Instant::now();
        if i >= 100 {
            for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]
                .into_iter()
                .enumerate()
            {
                t[k].push(us(d));
            }
        }
    }
    let [mut wait, mut acq, mut pres, mut frame, mut rel] = t;
    let wait50 = pct(&mut wait, 0.5);
    let calls = [
        ("AcquireSlot", pct(&mut acq, 0.5)),
        ("Present", pct(&mut pres, 0.5)),
        ("AcquireFrame", pct(&mut frame, 0.5)),
        ("ReleaseFrame", pct(&mut rel, 0.5)),
    ];
    let worst = calls.iter().map(|c| c.1).fold(0.0, f64::max);
    for (name, v) in calls {
        out.rows.push(Row::info(
            &format!("fd.sock {name} p50"),
            format!("{v:.1} us"),
            format!("{wait50:.1} us fd.sock wait"),
            Some(v / wait50),
        ));
    }
    let ratio = worst / wait50;
    out.rows.push(Row::new(
        "fd.sock frame call p50 (slowest) / raw fd.sock wait p50",
        format!("{worst:.1} us"),
        format!("{wait50:.1} us"),
        Some(ratio),
        "<= 1.5x".into(),
        Some(ratio <= 1.5),
    ));
    out.fields.insert("fd_wait_p50_us".into(), json!(wait50));
    out.fields.insert(
        "fd_call_p50_us".into(),
        json!(calls
            .iter()
            .map(|(n, v)| (n.to_string(), json!(v)))
            .collect::<Map<_, _>>()),
    );
    out.fields.insert("fd_call_ratio".into(), json!(ratio));
    rt.block_on(con.detach())?;
    rt.block_on(p.detach())?;
    Ok(())
}

/// Part 2: producer stall after consumer SIGKILLs.
fn stalls(rt: &tokio::runtime::Runtime, d: &TestDaemon, out: &mut Out) -> Res<()> {
    let c = rt.block_on(Client::connect_with_session(d.runtime_dir(), "stalls"))?;
    let p = Arc::new(rt.block_on(c.create_stream(
        2,
        &SlotKind::Buffer(4096),
        &StreamOptions::default(),
    ))?);
    let id = p.info().id.clone();
    let mut ms = Vec::new();
    for run in 0..KILLS {
        let mut holder = Command::new(bin("gpushare-streamer"))
            .arg(d.runtime_dir())
            .args(["hold", &id, &(run % 3).to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut lines = BufReader::new(holder.stdout.take().ok_or("stdout")?);
        let mut line = String::new();
        lines.read_line(&mut line)?;
        for n in 0..2 {
            let g = p.acquire_slot(LONG, false)?;
            p.present(g.slot, 0, meta(n))?;
        }
        line.clear();
        lines.read_line(&mut line)?;
        if line.trim() != "holding" {
            return Err(format!("holder said {line:?}").into());
        }
        let waiting = {
            let p = p.clone();
            std::thread::spawn(move || (p.acquire_slot(LONG, false), Instant::now()))
        };
        std::thread::sleep(Duration::from_millis(5 + (run as u64 * 7) % 20));
        let killed = Instant::now();
        holder.kill()?;
        let (g, served) = waiting.join().map_err(|_| "the waiting thread panicked")?;
        holder.wait()?;
        let g = g?;
        ms.push(served.saturating_duration_since(killed).as_secs_f64() * 1e3);
        p.present(g.slot, 0, meta(0))?;
    }
    let p50 = pct(&mut ms, 0.5);
    let p99 = pct(&mut ms, 0.99);
    out.rows.push(Row::new(
        &format!("producer stall after a consumer SIGKILL, p99 of {KILLS}"),
        format!("{p99:.2} ms"),
        format!("p50 {p50:.2} ms"),
        None,
        "<= 100 ms".into(),
        Some(p99 <= 100.0),
    ));
    out.fields
        .insert("stall_after_kill_p99_ms".into(), json!(p99));
    out.fields
        .insert("stall_after_kill_p50_ms".into(), json!(p50));
    Ok(())
}

/// One side's GPU state for the stream roles: the CUDA device and the timelines it met.
struct Side {
    client: Client,
    /// On the CUDA fast path: timelines imported with their words, signaled through them.
    word: bool,
    device: Arc<CudaDevice>,
    timelines: Timelines<CudaSemaphore>,
    slots: Vec<InteropBuffer>,
}

impl Side {
    async fn new(dir: &str, name: &str, word: bool) -> Res<Side> {
        let client = Client::connect_with_session(dir, name).await?;
        let sem = client
            .create_semaphore(0, &CreateOptions::default())
            .await?;
        let device = cuda_device_for(&client.export(sem.id()).await?)?;
        sem.release().await?;
        Ok(Side {
            client,
            word,
            device,
            timelines: Default::default(),
            slots: Vec::new(),
        })
    }

    /// The path this side imports its timelines on.
    fn sync_path(&self) -> SyncPath {
        if self.word {
            SyncPath::Word
        } else {
            SyncPath::Semaphore
        }
    }

    /// Imports timeline `id` from an attachment's `ticket`.
    async fn add(&mut self, id: &str, ticket: Vec<u8>) -> Res<()> {
        let e = self.client.redeem_with_word(&ticket).await?;
        let path = self.sync_path();
        self.timelines
            .insert(id, CudaSemaphore::import(&self.device, e, path)?);
        Ok(())
    }

    /// How this side signals its timelines.
    fn path(&self) -> v1::SignalPath {
        signal_path(self.word)
    }

    async fn attach_producer(&self, id: &str) -> Res<Producer> {
        Ok(self.client.attach_producer_with(id, self.path()).await?)
    }

    async fn attach_consumer(&self, id: &str, limit: u32) -> Res<Consumer> {
        Ok(self
            .client
            .attach_consumer_with(id, v1::DeliveryMode::Fifo, limit, self.path())
            .await?)
    }

    async fn producer(&mut self, p: &Producer) -> Res<()> {
        let a = p.attachment();
        let ready = a.ready.clone().unwrap_or_default();
        self.add(&ready.resource_id, ready.ticket).await?;
        Ok(())
    }

    async fn consumer(&mut self, c: &Consumer) -> Res<()> {
        let a = c.attachment();
        let ready = a.ready.clone().unwrap_or_default();
        self.add(&ready.resource_id, ready.ticket).await?;
        let rel = a.release.clone().unwrap_or_default();
        self.add(&rel.resource_id, rel.ticket).await?;
        Ok(())
    }

    /// Enqueues waits for `points`, importing the timelines met for the first time.
    async fn wait_all(&mut self, points: &[v1::SemaphorePoint]) -> Res<()> {
        let (device, path) = (self.device.clone(), self.sync_path());
        let met = self
            .timelines
            .meet(&self.client, points, |e| {
                CudaSemaphore::import(&device, e, path)
            })
            .await?;
        for (t, v) in self.timelines.resolve(&met)? {
            t.wait(v, self.device.stream())?;
        }
        Ok(())
    }

    fn signal(&self, id: &str, value: u64) -> Res<()> {
        self.timelines
            .get(id)?
            .signal(value, self.device.stream())?;
        Ok(())
    }
}

/// The lockstep round trips of the bare runs, by mode, from one pair of processes: through a
/// shared timeline semaphore (`sem`), and with the fast path offered, through a worded
/// semaphore's word (`word`) and through raw stream memory operations on a word of a shared
/// buffer (`memop`, the floor).
fn bare_rounds(
    rt: &tokio::runtime::Runtime,
    d: &TestDaemon,
    fast: bool,
) -> Res<std::collections::HashMap<String, Vec<f64>>> {
    let dir = d.runtime_dir().display().to_string();
    let owner = rt.block_on(Client::connect_with_session(&dir, "hops"))?;
    let sem = rt.block_on(owner.create_semaphore(0, &CreateOptions::default()))?;
    let worded = CreateOptions {
        word: true,
        signal_path: v1::SignalPath::Word,
        ..CreateOptions::default()
    };
    let word = rt.block_on(owner.create_semaphore(0, &worded))?;
    let buffer = rt.block_on(owner.create_buffer(4096, &CreateOptions::default()))?;
    // Zeroed through the daemon: the floor's word starts at 0.
    rt.block_on(buffer.write(0, &[0; 64], &gpushare_client::Sync::none()))?;
    let tickets =
        |id: &str| -> Res<String> { Ok(hex::encode(rt.block_on(owner.export_ticket(id))?.ticket)) };
    let args = |side: &str| -> Res<Vec<String>> {
        let mut v = vec![side.to_owned(), dir.clone(), tickets(sem.id())?];
        if fast {
            v.push(tickets(word.id())?);
            v.push(tickets(buffer.id())?);
        }
        Ok(v)
    };
    let (args_b, args_a) = (args("bare-b")?, args("bare-a")?);
    let refs_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let refs_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let mut b = LinePeer::spawn(&refs_b)?;
    let mut a = LinePeer::spawn(&refs_a)?;
    b.line()?;
    a.line()?;
    b.send("go")?;
    a.send("go")?;
    let mut rounds = std::collections::HashMap::new();
    let modes = if fast { 3 } else { 1 };
    for _ in 0..modes {
        let line = a.line()?;
        let (mode, times) = line.split_once(' ').ok_or("an empty line from bare-a")?;
        rounds.insert(mode.to_owned(), parse_times(times)?);
    }
    a.finish()?;
    b.finish()?;
    Ok(rounds)
}

/// Space-separated microseconds.
fn parse_times(s: &str) -> Res<Vec<f64>> {
    Ok(s.split_whitespace()
        .map(|x| x.parse::<f64>())
        .collect::<Result<Vec<_>, _>>()?)
}

/// The lockstep round trips through two streams (AB, BA) between two processes; with `word`,
/// streams whose timelines have memop words, on the fast path.
fn stream_rounds(rt: &tokio::runtime::Runtime, d: &TestDaemon, word: bool) -> Res<Vec<f64>> {
    let dir = d.runtime_dir().display().to_string();
    let owner = rt.block_on(Client::connect_with_session(&dir, "hops"))?;
    let opts = StreamOptions {
        word,
        ..StreamOptions::default()
    };
    let ab = rt.block_on(owner.create_stream_unproduced(2, &SlotKind::Buffer(4096), &opts))?;
    let ba = rt.block_on(owner.create_stream_unproduced(2, &SlotKind::Buffer(4096), &opts))?;
    let path = path_arg(word);
    let mut b = LinePeer::spawn(&["stream-b", &dir, &ab.id, &ba.id, path])?;
    let mut a = LinePeer::spawn(&["stream-a", &dir, &ab.id, &ba.id, path])?;
    b.line()?;
    a.line()?;
    b.send("go")?;
    a.send("go")?;
    let streamed = a.finish()?;
    b.finish()?;
    parse_times(&streamed)
}

/// Part 3: GPU→GPU hops in lockstep, through streams and through a bare semaphore.
fn hops(rt: &tokio::runtime::Runtime, d: &TestDaemon, out: &mut Out) -> Res<()> {
    let mut bare = bare_rounds(rt, d, false)?
        .remove("sem")
        .ok_or("no semaphore rounds")?;
    let mut streamed = stream_rounds(rt, d, false)?;
    // A round trip is two hops.
    let bare50 = pct(&mut bare, 0.5) / 2.0;
    let hop50 = pct(&mut streamed, 0.5) / 2.0;
    let hop99 = pct(&mut streamed, 0.99) / 2.0;
    let ratio = hop50 / bare50;
    out.rows.push(Row::new(
        "GPU->GPU hop through a stream (CUDA -> CUDA), p50",
        format!("{hop50:.1} us (p99 {hop99:.1} us)"),
        format!("{bare50:.1} us bare semaphore"),
        Some(ratio),
        "<= 1.10x".into(),
        Some(ratio <= 1.10),
    ));
    out.fields.insert("hop_p50_us".into(), json!(hop50));
    out.fields.insert("hop_p99_us".into(), json!(hop99));
    out.fields.insert("bare_sem_p50_us".into(), json!(bare50));
    out.fields.insert("hop_ratio".into(), json!(ratio));
    out.notes.push(format!(
        "hops: {HOP_ROUNDS} lockstep round trips between two processes, each half a round trip; \
         stream rounds: A signals the ready point of the slot of AB it acquired before the round \
         (and whose release points its CUDA stream already waits for), presents, acquires B's \
         frame of BA, waits for its ready point, signals its release point and synchronizes \
         (then releases and books its next slot, outside the timing); B acquires A's frame, \
         waits for its ready point, signals its release point and its own ready point, presents \
         and releases. The bare \
         rounds do the same through one shared semaphore. The Vulkan -> CUDA hop is not \
         measured here (gpushare-streamer moves Vulkan frames in the GPU suite's stream test)."
    ));
    Ok(())
}

/// 1080p RGBA8 frames per second through producer → filter → sink in three processes, and the
/// p50 of a frame's latency from the producer's Present to the sink's check (µs); with `word`,
/// on the fast path. Every frame is checked by the sink.
fn pipeline_fps(rt: &tokio::runtime::Runtime, d: &TestDaemon, word: bool) -> Res<(f64, f64)> {
    let dir = d.runtime_dir().display().to_string();
    let owner = rt.block_on(Client::connect_with_session(&dir, "throughput"))?;
    let opts = StreamOptions {
        word,
        ..StreamOptions::default()
    };
    let s1 =
        rt.block_on(owner.create_stream_unproduced(SLOTS, &SlotKind::Buffer(FRAME_BYTES), &opts))?;
    let s2 =
        rt.block_on(owner.create_stream_unproduced(SLOTS, &SlotKind::Buffer(FRAME_BYTES), &opts))?;
    let path = path_arg(word);
    let mut sink = LinePeer::spawn(&["sink", &dir, &s2.id, path])?;
    sink.line()?;
    let mut filter = LinePeer::spawn(&["filter", &dir, &s1.id, &s2.id, path])?;
    filter.line()?;
    let mut producer = LinePeer::spawn(&["producer", &dir, &s1.id, path])?;
    producer.line()?;
    let t0 = Instant::now();
    producer.send("go")?;
    producer.finish()?;
    filter.finish()?;
    let last = sink.finish()?;
    let (checked, latency) = last.split_once(' ').ok_or("the sink's last line")?;
    let (checked, latency): (u64, f64) = (checked.parse()?, latency.parse()?);
    let fps = checked as f64 / t0.elapsed().as_secs_f64();
    if checked != FRAMES {
        return Err(format!("the sink checked {checked} of {FRAMES} frames").into());
    }
    Ok((fps, latency))
}

/// Part 4: 1080p RGBA8 frames through three processes, against one process. Returns the
/// pipeline's frames per second and its latency p50 (µs).
fn throughput(rt: &tokio::runtime::Runtime, d: &TestDaemon, out: &mut Out) -> Res<(f64, f64)> {
    let dir = d.runtime_dir().display().to_string();
    let one = LinePeer::spawn(&["single", &dir])?.finish()?;
    let single: f64 = one.parse()?;
    let (fps, latency) = pipeline_fps(rt, d, false)?;
    let ratio = fps / single;
    out.rows.push(Row::new(
        "1080p RGBA8 frames/s, producer -> filter -> sink, 3 processes",
        format!("{fps:.0}"),
        format!("{single:.0} in one process"),
        Some(ratio),
        ">= 0.95x".into(),
        Some(ratio >= 0.95),
    ));
    out.fields.insert("fps_pipeline".into(), json!(fps));
    out.fields.insert("fps_single".into(), json!(single));
    out.fields.insert("fps_ratio".into(), json!(ratio));
    out.fields
        .insert("pipeline_latency_p50_us".into(), json!(latency));
    out.notes.push(format!(
        "throughput: {FRAMES} frames of {FRAME_BYTES} bytes; the producer fills each with its \
         number (cuMemsetD32), the filter copies it into its own stream's slot (device to \
         device), the sink reads back the first and last word and checks them; {SLOTS} slots per \
         stream; every hand-off on the GPUs (GPU points). One process: the same three steps on \
         one CUDA stream, with the sink's check synchronizing each frame as in the pipeline. \
         Latency: the producer's Present (its CLOCK_MONOTONIC in the frame's metadata) to the \
         sink's check done, p50."
    ));
    Ok((fps, latency))
}

/// Part 5: the CUDA fast path (`fastpath.json`): the lockstep round trip through a worded
/// semaphore's word against raw memory operations on a shared word (the floor) and against
/// the semaphore, all three from one pair of processes; the round trip through two worded
/// streams against the floor; the three-stage pipeline on the fast path against part 4's.
fn fast_path(
    rt: &tokio::runtime::Runtime,
    d: &TestDaemon,
    (fps_sem, latency_sem): (f64, f64),
    fast: &mut Out,
) -> Res<()> {
    let mut bare = bare_rounds(rt, d, true)?;
    let mut take = |mode: &str| bare.remove(mode).ok_or(format!("no {mode} rounds"));
    let (mut sem, mut word, mut floor) = (take("sem")?, take("word")?, take("memop")?);
    let mut streamed = stream_rounds(rt, d, true)?;
    let (fps_fast, latency_fast) = pipeline_fps(rt, d, true)?;
    let (sem50, word50, floor50) = (
        pct(&mut sem, 0.5),
        pct(&mut word, 0.5),
        pct(&mut floor, 0.5),
    );
    let (word99, stream50) = (pct(&mut word, 0.99), pct(&mut streamed, 0.5));
    let fast_ratio = word50 / floor50;
    let hop_ratio = stream50 / floor50;
    let fps_ratio = fps_fast / fps_sem;
    fast.rows.push(Row::new(
        "GPU->GPU round trip, gpushare semaphore on the fast path, p50",
        format!("{word50:.1} us (p99 {word99:.1} us)"),
        format!("{floor50:.1} us raw memops (floor)"),
        Some(fast_ratio),
        "<= 1.2x".into(),
        Some(fast_ratio <= 1.2),
    ));
    fast.rows.push(Row::info(
        "GPU->GPU round trip, the same semaphore path, p50",
        format!("{sem50:.1} us"),
        format!("{word50:.1} us fast path"),
        Some(sem50 / word50),
    ));
    fast.rows.push(Row::new(
        "GPU->GPU round trip through two streams on the fast path, p50",
        format!("{stream50:.1} us"),
        format!("{floor50:.1} us raw memops (floor)"),
        Some(hop_ratio),
        "<= 1.3x".into(),
        Some(hop_ratio <= 1.3),
    ));
    fast.rows.push(Row::info(
        "1080p RGBA8 frames/s, 3 processes, fast path",
        format!("{fps_fast:.0}"),
        format!("{fps_sem:.0} semaphore path"),
        Some(fps_ratio),
    ));
    fast.rows.push(Row::info(
        "1080p RGBA8 frame latency p50, Present to the sink's check, fast path",
        format!("{latency_fast:.0} us"),
        format!("{latency_sem:.0} us semaphore path"),
        Some(latency_fast / latency_sem),
    ));
    for (k, v) in [
        ("fast_rtt_p50_us", word50),
        ("fast_rtt_p99_us", word99),
        ("memop_floor_p50_us", floor50),
        ("fast_ratio", fast_ratio),
        ("sem_rtt_p50_us", sem50),
        ("sem_speedup", sem50 / word50),
        ("stream_rtt_p50_us", stream50),
        ("stream_hop_ratio", hop_ratio),
        ("pipeline_fps_fast", fps_fast),
        ("pipeline_fps_sem", fps_sem),
        ("pipeline_fps_ratio", fps_ratio),
        ("pipeline_latency_p50_us_fast", latency_fast),
        ("pipeline_latency_p50_us_sem", latency_sem),
    ] {
        fast.fields.insert(k.into(), json!(v));
    }
    fast.notes.push(format!(
        "fast path: {HOP_ROUNDS} lockstep round trips per mode between the same two processes \
         (A signals 2k+1 and waits for 2k+2 on its CUDA stream, B the other way round, each \
         round timed on the host from A's first enqueue to its stream synchronized): through a \
         worded semaphore on the word (CudaSemaphore, SyncPath::Word: a cuStreamWriteValue64 on \
         the caller's stream, the semaphore signaled on the import's own stream behind it, a \
         cuStreamWaitValue64 to wait, each followed by a tracking event), through raw \
         cuStreamWriteValue64/cuStreamWaitValue64 on a word of a shared buffer (the floor), and \
         through a plain semaphore. Streams: part 3's stream rounds with worded timelines (one \
         round trip is two hops, each with its fd.sock calls). Pipeline: part 4 with worded \
         timelines, against part 4's own run (the semaphore path, same daemon)."
    ));
    Ok(())
}

/// The role argument naming the path.
fn path_arg(word: bool) -> &'static str {
    if word {
        "word"
    } else {
        "semaphore"
    }
}

/// How a side on `word` signals its timelines.
fn signal_path(word: bool) -> v1::SignalPath {
    if word {
        v1::SignalPath::Word
    } else {
        v1::SignalPath::Semaphore
    }
}

/// The child processes.
fn role(args: &[String]) -> Res<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        [side @ ("bare-a" | "bare-b"), dir, sem, fast @ ..] => {
            let client = rt.block_on(Client::connect(dir))?;
            let e = rt.block_on(client.redeem(&hex::decode(sem)?))?;
            let device = cuda_device_for(&e)?;
            let sem = CudaSemaphore::import(&device, e, SyncPath::Semaphore)?;
            let (word, floor) = match fast {
                [word, floor] => {
                    let e = rt.block_on(client.redeem_with_word(&hex::decode(word)?))?;
                    let word = CudaSemaphore::import(&device, e, SyncPath::Word)?;
                    let e = rt.block_on(client.redeem(&hex::decode(floor)?))?;
                    (Some(word), Some(InteropBuffer::import(&device, e)?))
                }
                [] => (None, None),
                _ => return Err(format!("bad bare arguments {a:?}").into()),
            };
            let stream = device.stream();
            say("ready");
            read_stdin_line()?;
            let a_side = *side == "bare-a";
            // One mode: HOP_ROUNDS lockstep round trips; `signal` and `wait` enqueue.
            let run = |signal: &dyn Fn(u64) -> Res<()>, wait: &dyn Fn(u64) -> Res<()>| {
                let mut times = Vec::new();
                for k in 0..HOP_ROUNDS {
                    let t0 = Instant::now();
                    if a_side {
                        signal(2 * k + 1)?;
                        wait(2 * k + 2)?;
                    } else {
                        wait(2 * k + 1)?;
                        signal(2 * k + 2)?;
                    }
                    device.synchronize_stream()?;
                    times.push(us(t0.elapsed()));
                }
                Res::Ok(times)
            };
            let report = |mode: &str, times: Vec<f64>| {
                if a_side {
                    let line: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
                    say(&format!("{mode} {}", line.join(" ")));
                }
            };
            let times = run(&|v| Ok(sem.signal(v, stream)?), &|v| {
                Ok(sem.wait(v, stream)?)
            })?;
            report("sem", times);
            if let (Some(word), Some(floor)) = (&word, &floor) {
                let times = run(&|v| Ok(word.signal(v, stream)?), &|v| {
                    Ok(word.wait(v, stream)?)
                })?;
                report("word", times);
                let ptr = floor.device_ptr();
                let write = |v| -> Res<()> {
                    // SAFETY: `ptr` is the 8-byte aligned first word of the imported buffer,
                    // alive until the stream is synchronized at the end of every round.
                    unsafe { memops::write_value64(stream, ptr, v) }?;
                    Ok(())
                };
                let wait = |v| -> Res<()> {
                    // SAFETY: as for `write`; the peer writes the values waited for.
                    unsafe { memops::wait_value64_geq(stream, ptr, v) }?;
                    Ok(())
                };
                let times = run(&write, &wait)?;
                report("memop", times);
            }
            say("done");
        }
        [side @ ("stream-a" | "stream-b"), dir, ab, ba, path] => {
            let mut me = rt.block_on(Side::new(dir, side, *path == "word"))?;
            let (mine, theirs) = if *side == "stream-a" {
                (ab, ba)
            } else {
                (ba, ab)
            };
            let p = rt.block_on(me.attach_producer(mine))?;
            let c = rt.block_on(me.attach_consumer(theirs, 1))?;
            rt.block_on(me.producer(&p))?;
            rt.block_on(me.consumer(&c))?;
            let ready = p.attachment().ready.clone().unwrap_or_default().resource_id;
            let release = c
                .attachment()
                .release
                .clone()
                .unwrap_or_default()
                .resource_id;
            say("ready");
            read_stdin_line()?;
            let mut times = Vec::new();
            // The booking of each role's next slot happens off the critical path, as a
            // pipelined producer does: the slot is acquired (and its release points waited
            // for on the stream) before the round starts; in the round, the GPU signal comes
            // first and the host calls after it.
            let next_slot = |me: &mut Side| -> Res<u32> {
                let g = p.acquire_slot(LONG, false)?;
                rt.block_on(me.wait_all(&g.wait))?;
                Ok(g.slot)
            };
            let mut slot = next_slot(&mut me)?;
            for k in 0..HOP_ROUNDS {
                let t0 = Instant::now();
                if *side == "stream-a" {
                    me.signal(&ready, k + 1)?;
                    p.present(slot, k + 1, meta(k))?;
                    let f = c.acquire_frame(LONG, false)?;
                    rt.block_on(me.wait_all(&[f.ready.clone().unwrap_or_default()]))?;
                    me.signal(&release, k + 1)?;
                    me.device.synchronize_stream()?;
                    times.push(us(t0.elapsed()));
                    c.release_frame(f.slot, k + 1)?;
                } else {
                    let f = c.acquire_frame(LONG, false)?;
                    rt.block_on(me.wait_all(&[f.ready.clone().unwrap_or_default()]))?;
                    me.signal(&release, k + 1)?;
                    me.signal(&ready, k + 1)?;
                    p.present(slot, k + 1, meta(k))?;
                    c.release_frame(f.slot, k + 1)?;
                    me.device.synchronize_stream()?;
                    times.push(us(t0.elapsed()));
                }
                slot = next_slot(&mut me)?;
            }
            let line: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
            say(&line.join(" "));
        }
        ["single", dir] => {
            let client = rt.block_on(Client::connect_with_session(dir, "single"))?;
            let opts = CreateOptions::default();
            let probe = rt.block_on(client.create_semaphore(0, &opts))?;
            let device = cuda_device_for(&rt.block_on(client.export(probe.id()))?)?;
            let (_a, a) = rt.block_on(client.create_interop_buffer(FRAME_BYTES, &opts, &device))?;
            let (_b, b) = rt.block_on(client.create_interop_buffer(FRAME_BYTES, &opts, &device))?;
            let mut host = PinnedBuffer::new(&device, 8)?;
            let stream = device.stream();
            let t0 = Instant::now();
            for n in 1..=FRAMES {
                // SAFETY: both buffers hold FRAME_BYTES bytes and live past the synchronize;
                // the pinned buffer holds 8 bytes and is read only after it.
                unsafe {
                    cuda::memset_d32(stream, a.device_ptr(), n as u32, (FRAME_BYTES / 4) as usize)?;
                    cuda::copy_dtod(stream, b.device_ptr(), a.device_ptr(), FRAME_BYTES)?;
                    check_frame(&device, &b, &mut host, n)?;
                }
            }
            say(&format!(
                "{:.1}",
                FRAMES as f64 / t0.elapsed().as_secs_f64()
            ));
        }
        ["producer", dir, s1, path] => {
            let mut me = rt.block_on(Side::new(dir, "producer", *path == "word"))?;
            let p = rt.block_on(me.attach_producer(s1))?;
            rt.block_on(me.producer(&p))?;
            for e in rt.block_on(p.import_slots())? {
                me.slots.push(InteropBuffer::import(&me.device, e)?);
            }
            let ready = p.attachment().ready.clone().unwrap_or_default().resource_id;
            say("ready");
            read_stdin_line()?;
            for n in 1..=FRAMES {
                let g = p.acquire_slot(LONG, false)?;
                rt.block_on(me.wait_all(&g.wait))?;
                // SAFETY: the slot holds FRAME_BYTES bytes and lives as long as `me`.
                unsafe {
                    cuda::memset_d32(
                        me.device.stream(),
                        me.slots[g.slot as usize].device_ptr(),
                        n as u32,
                        (FRAME_BYTES / 4) as usize,
                    )?;
                }
                me.signal(&ready, n)?;
                p.present(g.slot, n, meta(n))?;
            }
            me.device.synchronize_stream()?;
            rt.block_on(p.detach())?;
            say("done");
        }
        ["filter", dir, s1, s2, path] => {
            let mut me = rt.block_on(Side::new(dir, "filter", *path == "word"))?;
            let c = rt.block_on(me.attach_consumer(s1, SLOTS))?;
            let p = rt.block_on(me.attach_producer(s2))?;
            rt.block_on(me.consumer(&c))?;
            rt.block_on(me.producer(&p))?;
            let mut inputs = Vec::new();
            for e in rt.block_on(c.import_slots())? {
                inputs.push(InteropBuffer::import(&me.device, e)?);
            }
            for e in rt.block_on(p.import_slots())? {
                me.slots.push(InteropBuffer::import(&me.device, e)?);
            }
            let release = c
                .attachment()
                .release
                .clone()
                .unwrap_or_default()
                .resource_id;
            let ready = p.attachment().ready.clone().unwrap_or_default().resource_id;
            say("ready");
            let mut n = 0u64;
            loop {
                let f = match c.acquire_frame(LONG, false) {
                    Ok(f) => f,
                    Err(e) if e.code() == Some(tonic::Code::Aborted) => break,
                    Err(e) => return Err(e.into()),
                };
                n += 1;
                let g = p.acquire_slot(LONG, false)?;
                rt.block_on(me.wait_all(&[f.ready.clone().unwrap_or_default()]))?;
                rt.block_on(me.wait_all(&g.wait))?;
                // SAFETY: both slots hold FRAME_BYTES bytes and live as long as this loop.
                unsafe {
                    cuda::copy_dtod(
                        me.device.stream(),
                        me.slots[g.slot as usize].device_ptr(),
                        inputs[f.slot as usize].device_ptr(),
                        FRAME_BYTES,
                    )?;
                }
                me.signal(&release, n)?;
                me.signal(&ready, n)?;
                c.release_frame(f.slot, n)?;
                p.present(g.slot, n, f.metadata.unwrap_or_default())?;
            }
            me.device.synchronize_stream()?;
            rt.block_on(p.detach())?;
            say("done");
        }
        ["sink", dir, s2, path] => {
            let mut me = rt.block_on(Side::new(dir, "sink", *path == "word"))?;
            let c = rt.block_on(me.attach_consumer(s2, SLOTS))?;
            rt.block_on(me.consumer(&c))?;
            for e in rt.block_on(c.import_slots())? {
                me.slots.push(InteropBuffer::import(&me.device, e)?);
            }
            let release = c
                .attachment()
                .release
                .clone()
                .unwrap_or_default()
                .resource_id;
            let mut host = PinnedBuffer::new(&me.device, 8)?;
            say("ready");
            let mut n = 0u64;
            // Per frame: from the producer's Present to this check done, in microseconds.
            let mut latency = Vec::new();
            loop {
                let f = match c.acquire_frame(LONG, false) {
                    Ok(f) => f,
                    Err(e) if e.code() == Some(tonic::Code::Aborted) => break,
                    Err(e) => return Err(e.into()),
                };
                n += 1;
                rt.block_on(me.wait_all(&[f.ready.clone().unwrap_or_default()]))?;
                // SAFETY: the slot holds FRAME_BYTES bytes; the pinned buffer 8.
                unsafe { check_frame(&me.device, &me.slots[f.slot as usize], &mut host, n)? };
                let presented = f.metadata.map_or(0, |m| m.timestamp_ns);
                latency.push(monotonic_ns().saturating_sub(presented) as f64 / 1e3);
                me.signal(&release, n)?;
                c.release_frame(f.slot, n)?;
            }
            let p50 = if latency.is_empty() {
                0.0
            } else {
                pct(&mut latency, 0.5)
            };
            say(&format!("{n} {p50:.1}"));
        }
        _ => return Err(format!("unknown role {a:?}").into()),
    }
    Ok(())
}

/// Copies the first and last word of `frame` to `host`, synchronizes, and checks both are `n`.
///
/// # Safety
///
/// `frame` holds `FRAME_BYTES` bytes and `host` 8.
unsafe fn check_frame(
    device: &Arc<CudaDevice>,
    frame: &InteropBuffer,
    host: &mut PinnedBuffer,
    n: u64,
) -> Res<()> {
    let stream = device.stream();
    let base = host.as_mut_slice().as_mut_ptr();
    // SAFETY: the caller's contract: 4 bytes at each end of the frame, 8 pinned bytes; the
    // stream is synchronized before they are read.
    unsafe {
        cuda::copy_dtoh_ptr(stream, frame.device_ptr(), base, 4)?;
        cuda::copy_dtoh_ptr(stream, frame.device_ptr() + FRAME_BYTES - 4, base.add(4), 4)?;
    }
    device.synchronize_stream()?;
    let words = host.as_slice();
    let first = u32::from_le_bytes(words[0..4].try_into()?);
    let last = u32::from_le_bytes(words[4..8].try_into()?);
    if first != n as u32 || last != n as u32 {
        return Err(format!("frame {n}: read {first} and {last}").into());
    }
    Ok(())
}
