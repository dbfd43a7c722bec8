//! `gpushare-pingpong`: the GPU suite's cross-process correctness program. Two processes share a
//! buffer and a timeline semaphore through the daemon and hand data back and forth on their GPU
//! queues, with no host round trip between them.
//!
//! ```text
//! gpushare-pingpong <runtime-dir> [--peer-api cuda|vulkan] [--path semaphore|word] [--rounds N]
//!                   [--seed S] [--json PATH]
//! gpushare-pingpong <runtime-dir> peer --api cuda|vulkan --path semaphore|word
//!                   --buffer-ticket HEX --sem-ticket HEX --rounds N --seed S
//! ```
//!
//! `--path word` runs on the CUDA fast path: the semaphore is created with a memop word and
//! every CUDA side signals and waits on the word (`CudaSemaphore`, `SyncPath::Word`). A Vulkan
//! peer keeps the semaphore: it opens it to signal through the semaphore alone, so the daemon
//! bridges its signals into the word that A waits on (mixed users of one semaphore).
//!
//! The first form is process A (CUDA). It opens a session, creates a 64 MiB buffer and a timeline
//! semaphore, exports both to itself and imports them into the CUDA device named by their UUID,
//! then starts process B (the second form) with export tickets, which B redeems and imports into
//! its own CUDA context or its own Vulkan device. Round `k` (from 0):
//!
//! 1. A writes random bytes at a random offset and length (host → pinned → `cuMemcpyHtoDAsync`)
//!    and signals the semaphore to `2k+1` on its stream;
//! 2. B waits for `2k+1` on its own stream or queue, reads the range, checks it byte for byte,
//!    writes back the bitwise NOT and signals `2k+2` on its stream or queue;
//! 3. A waits for `2k+2` on its stream, reads the range back and checks the NOT.
//!
//! Both derive each round's offset, length and bytes from the seed and `k` alone (SplitMix64), so
//! nothing but the semaphore passes between them. Lengths are 4-byte multiples from 4 B to 4 MiB,
//! log-uniform (every power of two as likely), offsets 4-aligned and uniform.
//!
//! A prints one summary line (rounds, mismatches of both sides, bytes moved, round trip p50/p99
//! in µs) and, with `--json`, writes it as JSON. A watchdog thread in each process ends it if no
//! round completes within 10 s. Exit status: 0 all rounds and no mismatch; 1 mismatches (the
//! first is printed); 2 usage; 3 any other error (including the peer's); 4 watchdog.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gpushare_client::cuda::{cuda_device_for, CudaSemaphore, InteropBuffer, SyncPath};
use gpushare_client::{import, v1, Client, CreateOptions, OpenTarget};
use gpushare_interop::cuda::{self, CudaDevice, PinnedBuffer};
use gpushare_interop::vulkan::{DeviceBuffer, Instance, SyncPoints, Transfer};
use gpushare_tests::rng::SplitMix64;

/// The shared buffer's size.
const BUFFER_SIZE: u64 = 64 << 20;
/// The longest range one round moves.
const MAX_LEN: usize = 4 << 20;
/// A round that takes longer than this is a hang.
const WATCHDOG: Duration = Duration::from_secs(10);
const DEFAULT_ROUNDS: u64 = 10_000;
const DEFAULT_SEED: u64 = 0x6770_7573_6861_7265; // "gpushare"

const EXIT_MISMATCH: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ERROR: i32 = 3;
const EXIT_WATCHDOG: i32 = 4;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn usage() -> ExitCode {
    eprintln!(
        "usage: gpushare-pingpong <runtime-dir> [--peer-api cuda|vulkan] [--path semaphore|word] [--rounds N] [--seed S] [--json PATH]\n\
         \x20      gpushare-pingpong <runtime-dir> peer --api cuda|vulkan --buffer-ticket HEX --sem-ticket HEX --rounds N --seed S"
    );
    ExitCode::from(EXIT_USAGE)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((dir, rest)) = args.split_first() else {
        return usage();
    };
    let (role, rest) = match rest.split_first() {
        Some((p, rest)) if p == "peer" => (Role::Peer, rest),
        _ => (Role::Main, rest),
    };
    let Some(opts) = Options::parse(rest, role) else {
        return usage();
    };
    let result = match role {
        Role::Main => run_main(dir, &opts),
        Role::Peer => run_peer(dir, &opts),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_MISMATCH),
        Err(e) => {
            eprintln!("gpushare-pingpong {}: {}", role.name(), chain(&*e));
            ExitCode::from(EXIT_ERROR as u8)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Peer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Main => "A",
            Role::Peer => "B",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Cuda,
    Vulkan,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Cuda => "cuda",
            Api::Vulkan => "vulkan",
        }
    }
}

struct Options {
    api: Api,
    /// The CUDA fast path (`--path word`).
    word: bool,
    rounds: u64,
    seed: u64,
    json: Option<String>,
    buffer_ticket: Vec<u8>,
    sem_ticket: Vec<u8>,
}

impl Options {
    fn parse(args: &[String], role: Role) -> Option<Options> {
        let mut o = Options {
            api: Api::Cuda,
            word: false,
            rounds: DEFAULT_ROUNDS,
            seed: DEFAULT_SEED,
            json: None,
            buffer_ticket: Vec::new(),
            sem_ticket: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next()?;
            match (role, flag.as_str()) {
                (Role::Main, "--peer-api") | (Role::Peer, "--api") => {
                    o.api = match value.as_str() {
                        "cuda" => Api::Cuda,
                        "vulkan" => Api::Vulkan,
                        _ => return None,
                    }
                }
                (_, "--path") => {
                    o.word = match value.as_str() {
                        "semaphore" => false,
                        "word" => true,
                        _ => return None,
                    }
                }
                (_, "--rounds") => o.rounds = value.parse().ok()?,
                (_, "--seed") => o.seed = value.parse().ok()?,
                (Role::Main, "--json") => o.json = Some(value.clone()),
                (Role::Peer, "--buffer-ticket") => o.buffer_ticket = hex::decode(value).ok()?,
                (Role::Peer, "--sem-ticket") => o.sem_ticket = hex::decode(value).ok()?,
                _ => return None,
            }
        }
        if role == Role::Peer && (o.buffer_ticket.is_empty() || o.sem_ticket.is_empty()) {
            return None;
        }
        Some(o)
    }
}

/// One round's range, and the generator of its bytes (positioned after the range was drawn).
struct Round {
    offset: u64,
    len: usize,
    rng: SplitMix64,
}

impl Round {
    /// Round `k` of the run seeded with `seed`, over a buffer of `size` bytes.
    fn new(seed: u64, k: u64, size: u64) -> Round {
        let mut rng = SplitMix64(seed ^ k.wrapping_mul(0xd1b5_4a32_d192_ed03));
        rng.next();
        // Log-uniform: a power of two 2^e (e in 2..=22), then uniform up to the next one.
        let e = 2 + rng.below(21);
        let len = ((1u64 << e) + rng.below(1u64 << e)).min(MAX_LEN as u64) & !3;
        let len = len.min(size & !3);
        let offset = rng.below((size - len) / 4 + 1) * 4;
        Round {
            offset,
            len: len as usize,
            rng,
        }
    }

    /// Writes the round's bytes into `out[..len]`.
    fn fill(mut self, out: &mut [u8]) {
        self.rng.fill(&mut out[..self.len]);
    }
}

/// Compares `got` with `expect(i)`; counts mismatched bytes and describes the first one.
fn verify(
    got: &[u8],
    expect: impl Fn(usize) -> u8,
    round: u64,
    offset: u64,
    first: &mut Option<String>,
) -> u64 {
    let mut bad = 0;
    for (i, &g) in got.iter().enumerate() {
        let e = expect(i);
        if g != e {
            if first.is_none() {
                *first = Some(format!(
                    "round {round}: byte {i} of {} at buffer offset {}: expected {e:#04x}, got {g:#04x}",
                    got.len(),
                    offset + i as u64
                ));
            }
            bad += 1;
        }
    }
    bad
}

/// Ends the process when no round completes within [`WATCHDOG`]: a hang becomes a failure.
struct Watchdog {
    role: &'static str,
    start: Instant,
    /// Milliseconds since `start` of the last progress.
    last_ms: AtomicU64,
    /// Rounds completed.
    rounds: AtomicU64,
    /// The peer's pid (A), killed with this process.
    child: AtomicI32,
}

impl Watchdog {
    fn spawn(role: &'static str) -> Arc<Watchdog> {
        let dog = Arc::new(Watchdog {
            role,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            child: AtomicI32::new(0),
        });
        let d = Arc::clone(&dog);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(100));
                let idle = (d.start.elapsed().as_millis() as u64)
                    .saturating_sub(d.last_ms.load(Ordering::Relaxed));
                if idle > WATCHDOG.as_millis() as u64 {
                    let done = d.rounds.load(Ordering::Relaxed);
                    d.fail(
                        &format!(
                            "watchdog: no progress for {} s (rounds completed: {done}; stuck in round {done})",
                            idle / 1000
                        ),
                        EXIT_WATCHDOG,
                    );
                }
            })
            .expect("spawn the watchdog");
        dog
    }

    /// Records progress (a round, or a setup step).
    fn tick(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn round_done(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.tick();
    }

    fn kill_child(&self) {
        let pid = self.child.swap(0, Ordering::Relaxed);
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    /// Prints `why`, kills the peer and ends this process at once with `code`.
    fn fail(&self, why: &str, code: i32) -> ! {
        eprintln!("gpushare-pingpong {}: {why}", self.role);
        self.kill_child();
        exit_now(code)
    }
}

/// Ends the process without running exit handlers: threads may be blocked in the driver, whose
/// own exit handlers could then block too.
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns; skipping destructors and exit handlers
    // is the point (nothing this process wrote needs flushing: stderr is unbuffered).
    unsafe { libc::_exit(code) }
}

/// What a peer reports on its last stdout line.
#[derive(Default)]
struct PeerReport {
    rounds: u64,
    mismatches: u64,
    first_mismatch: Option<String>,
}

fn run_main(dir: &str, opts: &Options) -> Res<u64> {
    let dog = Watchdog::spawn("A");
    // One worker thread drives the session (and its HTTP/2 connection) while this thread blocks
    // in the driver.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (client, buffer, sem, device, shared, ext_sem) = rt.block_on(async {
        let client = Client::connect_with_session(dir, "gpushare-pingpong A").await?;
        let sem = client.create_semaphore(0, &sem_options(opts.word)).await?;
        let exported = client.export_with_word(sem.id()).await?;
        let device = cuda_device_for(&exported)?;
        dog.tick();
        let ext_sem = CudaSemaphore::import(&device, exported, sync_path(opts.word))?;
        let (buffer, shared) = client
            .create_interop_buffer(BUFFER_SIZE, &CreateOptions::default(), &device)
            .await?;
        Res::Ok((client, buffer, sem, device, shared, ext_sem))
    })?;
    let (buffer_ticket, sem_ticket) = rt.block_on(async {
        let b = client.export_ticket(buffer.id()).await?.ticket;
        let s = client.export_ticket(sem.id()).await?.ticket;
        Res::Ok((b, s))
    })?;
    dog.tick();

    let mut child = Command::new(std::env::current_exe()?)
        .arg(dir)
        .arg("peer")
        .args(["--api", opts.api.name()])
        .args(["--path", path_name(opts.word)])
        .args(["--buffer-ticket", &hex::encode(buffer_ticket)])
        .args(["--sem-ticket", &hex::encode(sem_ticket)])
        .args(["--rounds", &opts.rounds.to_string()])
        .args(["--seed", &opts.seed.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    dog.child.store(child.id() as i32, Ordering::Relaxed);
    let mut child_out = child.stdout.take().expect("piped stdout");
    let (tx, peer_result) = mpsc::channel();
    let monitor_dog = Arc::clone(&dog);
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = child_out.read_to_string(&mut out);
        let status = child.wait();
        monitor_dog.child.store(0, Ordering::Relaxed);
        match &status {
            Ok(s) if s.success() || s.code() == Some(EXIT_MISMATCH.into()) => {}
            // This process is likely blocked on its stream, waiting for the peer: stop now.
            other => monitor_dog.fail(&format!("the peer failed ({other:?})"), EXIT_ERROR),
        }
        let _ = tx.send(out);
    });

    let started = Instant::now();
    let result = main_rounds(&device, &shared, &ext_sem, opts, &dog);
    let elapsed = started.elapsed();
    let stats = match result {
        Ok(stats) => stats,
        Err(e) => {
            dog.kill_child();
            return Err(e);
        }
    };
    let peer_out = peer_result.recv_timeout(WATCHDOG + Duration::from_secs(1))?;
    let peer = parse_peer(&peer_out);

    let mut rtt = stats.rtt_ns.clone();
    rtt.sort_unstable();
    let us = |p: f64| percentile(&rtt, p) as f64 / 1000.0;
    let mismatches = stats.mismatches + peer.mismatches;
    let summary = serde_json::json!({
        "test": "pingpong",
        "peer_api": opts.api.name(),
        "path": path_name(opts.word),
        "rounds": stats.rounds,
        "peer_rounds": peer.rounds,
        "seed": opts.seed,
        "buffer_size": shared.size(),
        "mismatches": mismatches,
        "mismatches_a": stats.mismatches,
        "mismatches_b": peer.mismatches,
        "first_mismatch": stats.first.clone().or(peer.first_mismatch.clone()),
        "bytes_moved": stats.bytes,
        "rtt_us": {
            "p50": us(50.0),
            "p99": us(99.0),
            "max": us(100.0),
            "mean": rtt.iter().sum::<u64>() as f64 / rtt.len().max(1) as f64 / 1000.0,
        },
        "elapsed_s": elapsed.as_secs_f64(),
        "cuda_device": device.info().name,
        "cuda_driver": cuda::driver_version().ok().map(|(a, b)| format!("{a}.{b}")),
    });
    println!(
        "pingpong: peer={} rounds={} mismatches={} (A {}, B {}) bytes_moved={} rtt_us p50={:.1} p99={:.1} max={:.1} elapsed={:.2}s",
        opts.api.name(),
        stats.rounds,
        mismatches,
        stats.mismatches,
        peer.mismatches,
        stats.bytes,
        us(50.0),
        us(99.0),
        us(100.0),
        elapsed.as_secs_f64()
    );
    if let Some(first) = stats.first.as_ref().or(peer.first_mismatch.as_ref()) {
        println!("first mismatch: {first}");
    }
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
    // Keep the session until the peer is done with the semaphore.
    drop((buffer, sem, client));
    if peer.rounds != opts.rounds {
        return Err(format!(
            "the peer completed {} of {} rounds",
            peer.rounds, opts.rounds
        )
        .into());
    }
    Ok(mismatches)
}

struct MainStats {
    rounds: u64,
    mismatches: u64,
    first: Option<String>,
    /// Bytes written into the shared buffer by both sides.
    bytes: u64,
    rtt_ns: Vec<u64>,
}

/// A's rounds: write, signal `2k+1`, wait `2k+2`, read back, check the NOT.
fn main_rounds(
    device: &Arc<CudaDevice>,
    shared: &InteropBuffer,
    sem: &gpushare_client::cuda::CudaSemaphore,
    opts: &Options,
    dog: &Watchdog,
) -> Res<MainStats> {
    let stream = device.stream();
    let mut out = PinnedBuffer::new(device, MAX_LEN)?;
    let mut back = PinnedBuffer::new(device, MAX_LEN)?;
    let mut stats = MainStats {
        rounds: 0,
        mismatches: 0,
        first: None,
        bytes: 0,
        rtt_ns: Vec::with_capacity(opts.rounds as usize),
    };
    for k in 0..opts.rounds {
        let round = Round::new(opts.seed, k, shared.size());
        let (offset, len) = (round.offset, round.len);
        round.fill(out.as_mut_slice());
        let ptr = shared.device_ptr() + offset;
        let t = Instant::now();
        // SAFETY: `ptr..ptr + len` lies in the mapped buffer (Round keeps ranges within its
        // size), which lives through the loop; `out` is pinned and not touched again before the
        // stream is synchronized below.
        unsafe { cuda::copy_htod(stream, ptr, &out.as_slice()[..len]) }?;
        sem.signal(2 * k + 1, stream)?;
        sem.wait(2 * k + 2, stream)?;
        // SAFETY: as above; `back` is neither read nor written before the synchronization.
        unsafe { cuda::copy_dtoh(stream, ptr, &mut back.as_mut_slice()[..len]) }?;
        device.synchronize_stream()?;
        stats.rtt_ns.push(t.elapsed().as_nanos() as u64);
        let sent = &out.as_slice()[..len];
        stats.mismatches += verify(
            &back.as_slice()[..len],
            |i| !sent[i],
            k,
            offset,
            &mut stats.first,
        );
        stats.bytes += 2 * len as u64;
        stats.rounds += 1;
        dog.round_done();
    }
    Ok(stats)
}

/// Reads the peer's last stdout line: `rounds mismatches [first mismatch...]`.
fn parse_peer(out: &str) -> PeerReport {
    let Some(line) = out.lines().rev().find(|l| l.starts_with("peer ")) else {
        return PeerReport::default();
    };
    let mut parts = line.splitn(4, ' ').skip(1);
    PeerReport {
        rounds: parts.next().and_then(|v| v.parse().ok()).unwrap_or(0),
        mismatches: parts.next().and_then(|v| v.parse().ok()).unwrap_or(0),
        first_mismatch: parts.next().filter(|s| !s.is_empty()).map(str::to_owned),
    }
}

/// Creation options of the shared semaphore: with a memop word on the fast path, A signaling
/// through it.
fn sem_options(word: bool) -> CreateOptions {
    CreateOptions {
        word,
        signal_path: if word {
            v1::SignalPath::Word
        } else {
            v1::SignalPath::Semaphore
        },
        ..CreateOptions::default()
    }
}

/// The CUDA sides' path: the word, or the semaphore.
fn sync_path(word: bool) -> SyncPath {
    if word {
        SyncPath::Word
    } else {
        SyncPath::Semaphore
    }
}

fn path_name(word: bool) -> &'static str {
    if word {
        "word"
    } else {
        "semaphore"
    }
}

fn run_peer(dir: &str, opts: &Options) -> Res<u64> {
    // Die with A, whatever becomes of it.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let dog = Watchdog::spawn("B");
    // One worker thread keeps the session (and its HTTP/2 connection) served while this thread
    // blocks in the driver: the session lives until B returns.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (buffer, sem, _session) = rt.block_on(async {
        let client = Client::connect_with_session(dir, "gpushare-pingpong B").await?;
        let b = client.redeem(&opts.buffer_ticket).await?;
        let s = client.redeem_with_word(&opts.sem_ticket).await?;
        if opts.word && opts.api == Api::Vulkan {
            // B signals on its Vulkan queue, through the semaphore alone: say so, and the
            // daemon bridges those signals into the word A waits on.
            client
                .open_with(
                    OpenTarget::Id(s.info.resource_id.clone()),
                    true,
                    v1::SignalPath::Semaphore,
                )
                .await?;
        }
        Res::Ok((b, s, client))
    })?;
    dog.tick();
    let mut first = None;
    let (rounds, mismatches) = match opts.api {
        Api::Cuda => {
            let device = cuda_device_for(&buffer)?;
            dog.tick();
            let shared = InteropBuffer::import(&device, buffer)?;
            let sem = CudaSemaphore::import(&device, sem, sync_path(opts.word))?;
            peer_rounds_cuda(&device, &shared, &sem, opts, &dog, &mut first)?
        }
        Api::Vulkan => {
            let instance = Instance::new("gpushare-pingpong")?;
            let device = import::vulkan_device_for(&instance, &buffer)?;
            dog.tick();
            let shared = import::import_buffer_vulkan(&device, buffer)?;
            let sem = import::import_semaphore_vulkan(&device, sem)?;
            peer_rounds_vulkan(&device, &shared, &sem, opts, &dog, &mut first)?
        }
    };
    if let Some(first) = &first {
        eprintln!("gpushare-pingpong B: first mismatch: {first}");
    }
    println!("peer {rounds} {mismatches} {}", first.unwrap_or_default());
    Ok(mismatches)
}

/// B's rounds on CUDA: wait `2k+1` on its stream, read, check, write the NOT, signal `2k+2`.
fn peer_rounds_cuda(
    device: &Arc<CudaDevice>,
    shared: &InteropBuffer,
    sem: &gpushare_client::cuda::CudaSemaphore,
    opts: &Options,
    dog: &Watchdog,
    first: &mut Option<String>,
) -> Res<(u64, u64)> {
    let stream = device.stream();
    let mut got = PinnedBuffer::new(device, MAX_LEN)?;
    let mut not = PinnedBuffer::new(device, MAX_LEN)?;
    let mut expected = vec![0u8; MAX_LEN];
    let mut mismatches = 0;
    for k in 0..opts.rounds {
        let round = Round::new(opts.seed, k, shared.size());
        let (offset, len) = (round.offset, round.len);
        let ptr = shared.device_ptr() + offset;
        sem.wait(2 * k + 1, stream)?;
        // SAFETY: the range lies in the mapped buffer, which outlives the loop; `got` is neither
        // read nor written before the synchronization below.
        unsafe { cuda::copy_dtoh(stream, ptr, &mut got.as_mut_slice()[..len]) }?;
        // The expected bytes are computed while the stream waits.
        round.fill(&mut expected);
        device.synchronize_stream()?;
        let got = &got.as_slice()[..len];
        mismatches += verify(got, |i| expected[i], k, offset, first);
        // The previous round's upload from `not` completed: the synchronization above drained
        // the stream.
        for (n, g) in not.as_mut_slice()[..len].iter_mut().zip(got) {
            *n = !g;
        }
        // SAFETY: as above; `not` is pinned and not written again before the next round's
        // synchronization, which comes after this copy in stream order.
        unsafe { cuda::copy_htod(stream, ptr, &not.as_slice()[..len]) }?;
        sem.signal(2 * k + 2, stream)?;
        dog.round_done();
    }
    device.synchronize_stream()?;
    Ok((opts.rounds, mismatches))
}

/// B's rounds on Vulkan: the download waits for `2k+1` on its queue, the upload of the NOT
/// signals `2k+2` on its queue.
fn peer_rounds_vulkan(
    device: &Arc<gpushare_interop::vulkan::Device>,
    shared: &gpushare_interop::vulkan::ImportedBuffer,
    sem: &gpushare_interop::vulkan::TimelineSemaphore,
    opts: &Options,
    dog: &Watchdog,
    first: &mut Option<String>,
) -> Res<(u64, u64)> {
    let mut transfer = Transfer::new(device)?;
    let mut expected = vec![0u8; MAX_LEN];
    let mut not = Vec::with_capacity(MAX_LEN);
    let mut mismatches = 0;
    for k in 0..opts.rounds {
        let round = Round::new(opts.seed, k, shared.size());
        let (offset, len) = (round.offset, round.len);
        round.fill(&mut expected);
        let got = transfer.download(
            shared,
            offset,
            len as u64,
            &SyncPoints {
                wait: vec![(sem, 2 * k + 1)],
                signal: vec![],
                timeout: Some(WATCHDOG),
            },
        )?;
        mismatches += verify(&got, |i| expected[i], k, offset, first);
        not.clear();
        not.extend(got.iter().map(|b| !b));
        transfer.upload(
            shared,
            offset,
            &not,
            &SyncPoints {
                wait: vec![],
                signal: vec![(sem, 2 * k + 2)],
                timeout: Some(WATCHDOG),
            },
        )?;
        dog.round_done();
    }
    Ok((opts.rounds, mismatches))
}

/// The `p`th percentile (nearest rank) of sorted values; 0 for none.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// An error and its causes, one after the other.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_stay_in_the_buffer_and_are_reproducible() {
        let mut lens = std::collections::BTreeSet::new();
        for k in 0..20_000 {
            let r = Round::new(DEFAULT_SEED, k, BUFFER_SIZE);
            assert!(
                r.len >= 4 && r.len <= MAX_LEN && r.len % 4 == 0,
                "{}",
                r.len
            );
            assert!(r.offset % 4 == 0 && r.offset + r.len as u64 <= BUFFER_SIZE);
            lens.insert(r.len.ilog2());
            let again = Round::new(DEFAULT_SEED, k, BUFFER_SIZE);
            assert_eq!((again.offset, again.len), (r.offset, r.len));
        }
        // Every power of two from 4 B to 4 MiB occurs.
        assert_eq!(lens.len(), 21);
        let (mut a, mut b) = (vec![0; MAX_LEN], vec![0; MAX_LEN]);
        Round::new(7, 3, 1 << 20).fill(&mut a);
        Round::new(7, 3, 1 << 20).fill(&mut b);
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != 0));
        // A buffer smaller than the longest range still bounds every range.
        for k in 0..1000 {
            let r = Round::new(1, k, 4096);
            assert!(r.len >= 4 && r.offset + r.len as u64 <= 4096);
        }
    }

    #[test]
    fn mismatches_are_counted_and_the_first_described() {
        let mut first = None;
        assert_eq!(verify(&[1, 2, 3], |i| [1, 0, 0][i], 5, 100, &mut first), 2);
        let first = first.unwrap();
        assert!(
            first.contains("round 5") && first.contains("offset 101"),
            "{first}"
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn peer_report_parses() {
        let r = parse_peer("noise\npeer 10000 0 \n");
        assert_eq!((r.rounds, r.mismatches), (10000, 0));
        let r = parse_peer("peer 3 2 round 1: byte 0 ...\n");
        assert_eq!(r.first_mismatch.as_deref(), Some("round 1: byte 0 ..."));
    }
}
