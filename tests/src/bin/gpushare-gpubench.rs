//! `gpushare-gpubench`: the GPU benchmarks of issue 3, each against a baseline taken by this same
//! program, on this machine, in this run (see `bench/README.md`, "GPU benchmarks (issue 3)").
//!
//! ```text
//! gpushare-gpubench [--json PATH]      # default PATH: bench/results/gpubench-latest.json
//! ```
//!
//! It starts the real `gpushared` (through `gpushare_tests::TestDaemon`) and measures:
//!
//! 1. device-to-device copy bandwidth on a 1 GiB daemon buffer imported into CUDA
//!    (`InteropBuffer`) vs. the same copies on `cuMemAlloc` memory;
//! 2. daemon Write (upload) of 256 MiB from a host buffer (`Buffer::write_from_host`: the
//!    bytes in shared memory the daemon page-locked at creation) vs. a pinned `cuMemcpyHtoD` of
//!    256 MiB in this process; beside it the download (`Buffer::read_into_host`) vs. a pinned
//!    `cuMemcpyDtoH`, the host buffer's creation cost, and the same upload with the bytes in
//!    gRPC messages (`Buffer::write`, chunks of the daemon's `max_transfer_size`) with the split
//!    of one chunk's time that can be measured from here;
//! 3. sharing a 64 MiB buffer end to end (CreateBuffer, export, descriptor received,
//!    `cuImportExternalMemory` + map) vs. `cuIpcGetMemHandle` here + `cuIpcOpenMemHandle` in a
//!    child process;
//! 4. host wake-up through the daemon (a pending gRPC `Wait`, a `Watch` stream, and an
//!    `fd.sock` wait through `HostWaiter` without and with spinning: the target row) after a
//!    child process signals the semaphore from its CUDA stream, with the daemon's CPU time per
//!    wait,
//!    vs. a plain `vkWaitSemaphores` on the same semaphore imported into Vulkan in a Vulkan-only
//!    child process, and in this process (which also holds a CUDA context);
//! 5. GPU→GPU ping-pong between this process and a child through the shared timeline semaphore,
//!    CUDA IPC events and stream memory operations on a word of a shared buffer.
//!
//! Child roles (started by the program itself): `--role ipc-open`, `--role signaler`,
//! `--role vk-waiter`, `--role pong`. The shared clock between processes is `CLOCK_MONOTONIC`.
//!
//! Exit status: 0 when every measurement ran (whether targets pass or fail: failed targets are
//! `FAIL` rows and listed in `failed_targets`); 1 when a measurement could not run; 3 when CUDA or
//! a Vulkan device is missing; 4 when the watchdog fired.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gpushare_client::cuda::{cuda_device_for, import_semaphore_cuda, InteropBuffer};
use gpushare_client::{import, v1, Client, CreateOptions, HostWaiter, Sync as Points};
use gpushare_interop::cuda::cudarc::driver::sys;
use gpushare_interop::cuda::{self, memops, CudaDevice, DeviceAllocation, PinnedBuffer};
use gpushare_interop::vulkan::Instance;
use gpushare_tests::report::{command_output, machine_info, print_table, Row};
use gpushare_tests::rng::SplitMix64;
use gpushare_tests::{clock_ticks_per_second, process_cpu_ticks, TestDaemon};
use serde_json::{json, Map, Value};

const BW_SIZE: u64 = 1 << 30;
const BW_ITERS: u64 = 20;
const BW_BLOCKS: usize = 3;
const WRITE_SIZE: usize = 256 << 20;
const WRITE_REPS: usize = 3;
const SPLIT_REPS: usize = 7;
const SMALL_WRITE: usize = 4096;
const SMALL_WRITE_N: usize = 200;
const SHARE_SIZE: u64 = 64 << 20;
const SHARE_WARMUP: usize = 5;
const SHARE_N: usize = 50;
const WAKE_WARMUP: usize = 20;
const WAKE_ROUNDS: usize = 500;
/// Each wait is pending this long, plus a random part up to as long again, before the signal
/// (random, so that no round locks onto the daemon's poll period).
const WAKE_PENDING: Duration = Duration::from_millis(1);
/// Rounds of the variant where the signaler does not synchronize its stream.
const NOSYNC_ROUNDS: usize = 200;
const PP_ROUNDS: u64 = 1_000;
const WATCHDOG: Duration = Duration::from_secs(230);

/// Targets.
const BW_MIN_RATIO: f64 = 0.98;
const WRITE_MIN_RATIO: f64 = 0.80;
const SHARE_MAX_US: f64 = 1_500.0;
const WAKE_P99_MAX_US: f64 = 100.0;
/// How long the spinning fd.sock waits ask to spin: longer than the 1-2 ms a wait is pending
/// here (the daemon caps it at its `limits.max_spin_us`).
const FD_WAIT_SPIN: Duration = Duration::from_millis(4);

const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NO_DEVICE: u8 = 3;
const EXIT_WATCHDOG: i32 = 4;

use gpushare_tests::lines::{LinePeer, Res};

/// The daemon's pid, for the watchdog to kill it.
static DAEMON_PID: AtomicU32 = AtomicU32::new(0);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--role") {
        return match child_main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gpushare-gpubench {}: {}", args[1..].join(" "), chain(&*e));
                ExitCode::from(EXIT_ERROR)
            }
        };
    }
    let mut json_path = PathBuf::from("bench/results/gpubench-latest.json");
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--json", Some(p)) => json_path = PathBuf::from(p),
            _ => {
                eprintln!("usage: gpushare-gpubench [--json PATH]");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if let Err(why) = cuda_available() {
        eprintln!(
            "gpushare-gpubench: CUDA is required (these are GPU benchmarks): {why}; nothing measured"
        );
        return ExitCode::from(EXIT_NO_DEVICE);
    }
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("gpushare-gpubench: watchdog: the run took over {WATCHDOG:?}");
        kill_daemon();
        std::process::exit(EXIT_WATCHDOG);
    });
    match run(&json_path) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_ERROR),
        Err(e) => {
            eprintln!("gpushare-gpubench: {}", chain(&*e));
            kill_daemon();
            if e.to_string().contains("no Vulkan device") {
                ExitCode::from(EXIT_NO_DEVICE)
            } else {
                ExitCode::from(EXIT_ERROR)
            }
        }
    }
}

fn kill_daemon() {
    let pid = DAEMON_PID.load(Ordering::Relaxed);
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// `Err(why)` unless the CUDA driver is loaded and sees a device.
fn cuda_available() -> Result<(), String> {
    if !cuda::is_present() {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    match cuda::devices() {
        Ok(d) if !d.is_empty() => Ok(()),
        Ok(_) => Err("CUDA sees no device".into()),
        Err(e) => Err(format!("CUDA cannot list devices: {e}")),
    }
}

/// What the measurements share.
struct Ctx {
    rt: tokio::runtime::Runtime,
    client: Client,
    device: Arc<CudaDevice>,
    dir: PathBuf,
    daemon_pid: u32,
    limits: v1::Limits,
    /// The daemon's metrics socket.
    metrics: PathBuf,
}

/// The daemon's `gpushare_wait_wakeups_total` by source (driver, poll, notify, spin) and
/// `gpushare_wait_poller_relaxed`, from its metrics endpoint.
fn wakeup_counts(ctx: &Ctx) -> Res<([f64; 4], f64)> {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(&ctx.metrics)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let get = |key: &str| -> f64 {
        reply
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((
        ["driver", "poll", "notify", "spin"]
            .map(|by| get(&format!("gpushare_wait_wakeups_total{{by=\"{by}\"}} "))),
        get("gpushare_wait_poller_relaxed "),
    ))
}

/// What the measurements produce.
#[derive(Default)]
struct Out {
    rows: Vec<Row>,
    measurements: Map<String, Value>,
    notes: Vec<String>,
    errors: Vec<String>,
}

fn run(json_path: &Path) -> Res<bool> {
    // The metrics endpoint says which mechanism noticed each signal (driver wait or poller).
    let metrics =
        std::env::temp_dir().join(format!("gpushare-gpubench-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&metrics);
    let config = format!("[metrics]\nlisten = \"unix:{}\"\n", metrics.display());
    let Some(daemon) = TestDaemon::start_with(&config) else {
        return Err("the daemon found no Vulkan device".into());
    };
    DAEMON_PID.store(daemon.pid(), Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = daemon.runtime_dir().to_path_buf();
    let client = rt.block_on(Client::connect_with_session(&dir, "gpushare-gpubench"))?;
    let info = rt.block_on(client.info())?;
    let limits = info.limits.unwrap_or_default();
    // The CUDA device that is the daemon's GPU, by the UUID in an export's metadata.
    let device = rt.block_on(async {
        let probe = client
            .create_buffer(4096, &CreateOptions::default())
            .await?;
        let exported = client.export(probe.id()).await?;
        let device = cuda_device_for(&exported);
        drop(exported);
        probe.release().await?;
        Res::Ok(device?)
    })?;
    println!(
        "gpushare-gpubench: daemon {} (executor {}), CUDA device {} (driver {}), max_transfer_size {} B",
        info.daemon_version,
        info.executor,
        device.info().name,
        info.cuda_driver_version,
        limits.max_transfer_size
    );
    let ctx = Ctx {
        rt,
        client,
        device,
        dir,
        daemon_pid: daemon.pid(),
        limits,
        metrics,
    };
    let mut out = Out::default();
    type Measure = fn(&Ctx, &mut Out) -> Res<()>;
    let all: [(&str, Measure); 5] = [
        ("1 d2d bandwidth", bandwidth),
        ("2 upload", upload),
        ("3 sharing", sharing),
        ("4 wake-up", wakeup),
        ("5 ping-pong", pingpong),
    ];
    for (name, measure) in all {
        let t = Instant::now();
        eprintln!("gpushare-gpubench: {name}...");
        if let Err(e) = measure(&ctx, &mut out) {
            let msg = format!("{name}: {}", chain(&*e));
            eprintln!("gpushare-gpubench: ERROR {msg}");
            out.rows.push(Row::new(
                &format!("{name}: did not run"),
                "ERROR".into(),
                "-".into(),
                None,
                "runs".into(),
                Some(false),
            ));
            out.errors.push(msg);
        }
        eprintln!(
            "gpushare-gpubench: {name} took {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let Ctx {
        rt, client, device, ..
    } = ctx;
    drop((client, device));
    drop(rt);

    print_table(&out.rows);
    let failed: Vec<String> = gpushare_tests::report::failed(&out.rows)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if !failed.is_empty() {
        println!("\nFailed targets:");
        for f in &failed {
            println!("  - {f}");
        }
    }
    if !out.notes.is_empty() {
        println!("\nNotes:");
        for n in &out.notes {
            println!("  - {n}");
        }
    }
    let mut machine = machine_info();
    machine["daemon_version"] = json!(info.daemon_version);
    machine["executor"] = json!(info.executor);
    machine["cuda_driver_version"] = json!(info.cuda_driver_version);
    machine["gpu"] = json!(command_output(
        "nvidia-smi",
        &[
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader"
        ]
    ));
    machine["vulkan_device"] = json!(info.devices.first().map(|d| d.name.clone()));
    let doc = json!({
        "bench": "gpushare-gpubench",
        "machine": machine,
        "settings": {
            "bw_size": BW_SIZE, "bw_iters": BW_ITERS, "bw_blocks": BW_BLOCKS,
            "write_size": WRITE_SIZE, "write_reps": WRITE_REPS,
            "max_transfer_size": limits.max_transfer_size,
            "share_size": SHARE_SIZE, "share_warmup": SHARE_WARMUP, "share_n": SHARE_N,
            "wake_warmup": WAKE_WARMUP, "wake_rounds": WAKE_ROUNDS,
            "wake_pending_us": WAKE_PENDING.as_micros() as u64,
            "pingpong_rounds": PP_ROUNDS,
        },
        "measurements": Value::Object(out.measurements),
        "table": out.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "notes": out.notes,
        "errors": out.errors,
        "failed_targets": failed,
    });
    gpushare_tests::report::write_json(json_path, &doc)?;
    println!("\nJSON: {}", json_path.display());
    drop(daemon);
    Ok(out.errors.is_empty())
}

// ---------------------------------------------------------------------------------------------
// 1. Device-to-device bandwidth

fn bandwidth(ctx: &Ctx, out: &mut Out) -> Res<()> {
    let (buffer, shared) = ctx.rt.block_on(ctx.client.create_interop_buffer(
        BW_SIZE,
        &CreateOptions::default(),
        &ctx.device,
    ))?;
    let alloc = DeviceAllocation::new(&ctx.device, BW_SIZE)?;
    let half = BW_SIZE / 2;
    let stream = ctx.device.stream();
    // GB/s counted as bytes read + bytes written.
    let time_copies = |base: u64| -> Res<f64> {
        for _ in 0..2 {
            // SAFETY: `base..base + BW_SIZE` is device memory of this context (the imported buffer
            // or the allocation), alive until the stream is synchronized below; the halves do
            // not overlap.
            unsafe { cuda::copy_dtod(stream, base + half, base, half) }?;
        }
        ctx.device.synchronize_stream()?;
        let t = Instant::now();
        for _ in 0..BW_ITERS {
            // SAFETY: as above.
            unsafe { cuda::copy_dtod(stream, base + half, base, half) }?;
        }
        ctx.device.synchronize_stream()?;
        Ok((2 * half * BW_ITERS) as f64 / t.elapsed().as_secs_f64() / 1e9)
    };
    let (mut imported, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..BW_BLOCKS {
        imported.push(time_copies(shared.device_ptr())?);
        plain.push(time_copies(alloc.ptr())?);
    }
    ctx.device.synchronize_stream()?;
    drop(shared);
    drop(alloc);
    ctx.rt.block_on(buffer.release())?;
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (i, p) = (best(&imported), best(&plain));
    let ratio = i / p;
    out.measurements.insert(
        "d2d_bandwidth_gbps".into(),
        json!({"imported_blocks": imported, "cumemalloc_blocks": plain,
               "imported_best": i, "cumemalloc_best": p, "ratio": ratio,
               "counted": "bytes read + bytes written, 20 x cuMemcpyDtoDAsync of 512 MiB per block, stream sync"}),
    );
    out.rows.push(Row::new(
        "D2D copy bandwidth, imported 1 GiB buffer (read+write)",
        format!("{i:.0} GB/s"),
        format!("{p:.0} GB/s cuMemAlloc"),
        Some(ratio),
        format!(">= {BW_MIN_RATIO:.2}x"),
        Some(ratio >= BW_MIN_RATIO),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Daemon Write (upload) throughput

fn upload(ctx: &Ctx, out: &mut Out) -> Res<()> {
    let chunk = match ctx.limits.max_transfer_size {
        0 => 64 << 20,
        n => (n as usize).min(64 << 20),
    };
    let data: Vec<u8> = (0..WRITE_SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let buffer = ctx.rt.block_on(
        ctx.client
            .create_buffer(WRITE_SIZE as u64, &CreateOptions::default()),
    )?;
    let none = Points::none();

    // The bulk path: the bytes in a host buffer, created (and page-locked) once.
    let t = Instant::now();
    let host = ctx.rt.block_on(
        ctx.client
            .create_host_buffer(WRITE_SIZE as u64, &CreateOptions::default()),
    )?;
    let host_create_s = t.elapsed().as_secs_f64();
    host.write_at(0, &data)?;
    let from_host = || -> Res<f64> {
        let t = Instant::now();
        ctx.rt
            .block_on(buffer.write_from_host(0, &host, 0, WRITE_SIZE as u64, &none))?;
        Ok(t.elapsed().as_secs_f64())
    };
    from_host()?;
    let mut host_write_s = Vec::new();
    for _ in 0..WRITE_REPS * 3 {
        host_write_s.push(from_host()?);
    }
    let into_host = || -> Res<f64> {
        let t = Instant::now();
        ctx.rt
            .block_on(buffer.read_into_host(0, WRITE_SIZE as u64, &host, 0, &none))?;
        Ok(t.elapsed().as_secs_f64())
    };
    into_host()?;
    let mut host_read_s = Vec::new();
    for _ in 0..WRITE_REPS * 3 {
        host_read_s.push(into_host()?);
    }
    let mut check = vec![0u8; WRITE_SIZE];
    host.read_at(0, &mut check)?;
    if check != data {
        return Err("the bytes read back into the host buffer differ".into());
    }
    drop(check);
    ctx.rt.block_on(host.release())?;
    drop(host);

    let write_all = || -> Res<f64> {
        let t = Instant::now();
        ctx.rt.block_on(async {
            for (i, c) in data.chunks(chunk).enumerate() {
                buffer.write((i * chunk) as u64, c, &none).await?;
            }
            Res::Ok(())
        })?;
        Ok(t.elapsed().as_secs_f64())
    };
    write_all()?;
    let mut write_s = Vec::new();
    for _ in 0..WRITE_REPS {
        write_s.push(write_all()?);
    }
    // Sanity: the bytes arrived.
    let back = ctx
        .rt
        .block_on(buffer.read((WRITE_SIZE - 4096) as u64, 4096, &none))?;
    if back != data[WRITE_SIZE - 4096..] {
        return Err("the uploaded bytes read back differ".into());
    }

    // Baseline: one pinned cuMemcpyHtoD of the same 256 MiB.
    let stream = ctx.device.stream();
    let mut pinned = PinnedBuffer::new(&ctx.device, WRITE_SIZE)?;
    pinned.as_mut_slice().copy_from_slice(&data);
    let dst = DeviceAllocation::new(&ctx.device, WRITE_SIZE as u64)?;
    let htod = |src: &[u8]| -> Res<f64> {
        let t = Instant::now();
        // SAFETY: `dst` holds at least `src.len()` bytes and lives until the synchronization
        // below; `src` (pinned or pageable) is not modified before it.
        unsafe { cuda::copy_htod(stream, dst.ptr(), src) }?;
        ctx.device.synchronize_stream()?;
        Ok(t.elapsed().as_secs_f64())
    };
    htod(pinned.as_slice())?;
    let mut pinned_s = Vec::new();
    for _ in 0..WRITE_REPS {
        pinned_s.push(htod(pinned.as_slice())?);
    }
    let mut pinned_dtoh_s = Vec::new();
    for _ in 0..WRITE_REPS + 1 {
        let t = Instant::now();
        // SAFETY: `dst` holds WRITE_SIZE bytes; the pinned destination is not touched until
        // the stream is synchronized below.
        unsafe { cuda::copy_dtoh(stream, dst.ptr(), pinned.as_mut_slice()) }?;
        ctx.device.synchronize_stream()?;
        pinned_dtoh_s.push(t.elapsed().as_secs_f64());
    }
    pinned_dtoh_s.remove(0);
    htod(&data)?;
    let mut pageable_s = Vec::new();
    for _ in 0..WRITE_REPS {
        pageable_s.push(htod(&data)?);
    }

    // The split of one chunk that can be measured from here.
    let one = &data[..chunk];
    let mut chunk_write = Vec::new();
    let mut chunk_pinned = Vec::new();
    let mut chunk_copy = Vec::new();
    for _ in 0..SPLIT_REPS {
        let t = Instant::now();
        ctx.rt.block_on(buffer.write(0, one, &none))?;
        chunk_write.push(t.elapsed().as_secs_f64());
        chunk_pinned.push(htod(&pinned.as_slice()[..chunk])?);
        let t = Instant::now();
        let copy = std::hint::black_box(one.to_vec());
        chunk_copy.push(t.elapsed().as_secs_f64());
        drop(copy);
    }
    let mut small = Vec::new();
    for _ in 0..SMALL_WRITE_N {
        let t = Instant::now();
        ctx.rt
            .block_on(buffer.write(0, &data[..SMALL_WRITE], &none))?;
        small.push(t.elapsed().as_secs_f64());
    }
    drop(dst);
    drop(pinned);
    ctx.rt.block_on(buffer.release())?;

    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let med = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let gbps = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
    let w = gbps(WRITE_SIZE, min(&write_s));
    let p = gbps(WRITE_SIZE, min(&pinned_s));
    let pg = gbps(WRITE_SIZE, min(&pageable_s));
    let hw = gbps(WRITE_SIZE, min(&host_write_s));
    let hw_med = gbps(WRITE_SIZE, med(&host_write_s));
    let hr = gbps(WRITE_SIZE, min(&host_read_s));
    let pd = gbps(WRITE_SIZE, min(&pinned_dtoh_s));
    let ratio = hw / p;
    let (cw, cp, cc, sm) = (
        med(&chunk_write),
        med(&chunk_pinned),
        med(&chunk_copy),
        med(&small),
    );
    out.measurements.insert(
        "upload".into(),
        json!({
            "chunk_bytes": chunk,
            "write_256mib_s": write_s, "pinned_htod_256mib_s": pinned_s,
            "pageable_htod_256mib_s": pageable_s,
            "host_buffer_create_s": host_create_s,
            "write_from_host_256mib_s": host_write_s, "read_into_host_256mib_s": host_read_s,
            "pinned_dtoh_256mib_s": pinned_dtoh_s,
            "write_from_host_gbps": hw, "write_from_host_gbps_median": hw_med,
            "read_into_host_gbps": hr, "pinned_dtoh_gbps": pd, "ratio": ratio,
            "read_ratio": hr / pd,
            "write_gbps": w, "pinned_htod_gbps": p, "pageable_htod_gbps": pg,
            "inline_ratio": w / p,
            "one_chunk": {"write_ms": cw * 1e3, "pinned_htod_ms": cp * 1e3,
                          "client_copy_ms": cc * 1e3,
                          "rest_ms": (cw - cp - cc) * 1e3},
            "write_4kib_us_p50": sm * 1e6,
        }),
    );
    let mib = chunk >> 20;
    out.rows.push(Row::new(
        "daemon Write of 256 MiB from a host buffer (write_from_host), best",
        format!("{hw:.2} GB/s"),
        format!("{p:.2} GB/s pinned HtoD"),
        Some(ratio),
        format!(">= {WRITE_MIN_RATIO:.2}x"),
        Some(ratio >= WRITE_MIN_RATIO),
    ));
    out.rows.push(Row::info(
        "  the same, median of 9",
        format!("{hw_med:.2} GB/s"),
        format!("{p:.2} GB/s pinned HtoD"),
        Some(hw_med / p),
    ));
    out.rows.push(Row::info(
        "  daemon Read of 256 MiB into a host buffer (read_into_host)",
        format!("{hr:.2} GB/s"),
        format!("{pd:.2} GB/s pinned DtoH"),
        Some(hr / pd),
    ));
    out.rows.push(Row::info(
        "  CreateHostBuffer of 256 MiB (memfd + page-locking) + export + map",
        format!("{:.1} ms", host_create_s * 1e3),
        "-".into(),
        None,
    ));
    out.rows.push(Row::info(
        "  daemon Write of 256 MiB in gRPC messages (Buffer::write, chunks of max_transfer_size)",
        format!("{w:.2} GB/s"),
        format!("{p:.2} GB/s pinned HtoD"),
        Some(w / p),
    ));
    out.rows.push(Row::info(
        "  pageable cuMemcpyHtoD of 256 MiB (reference)",
        format!("{pg:.2} GB/s"),
        format!("{p:.2} GB/s pinned HtoD"),
        Some(pg / p),
    ));
    out.rows.push(Row::info(
        &format!("  one {mib} MiB Write call, p50"),
        format!("{:.2} ms", cw * 1e3),
        format!("{:.2} ms pinned HtoD", cp * 1e3),
        Some(cw / cp),
    ));
    out.rows.push(Row::info(
        &format!("  client copy of {mib} MiB into the request (to_vec), p50"),
        format!("{:.2} ms", cc * 1e3),
        "-".into(),
        None,
    ));
    out.rows.push(Row::info(
        "  Write of 4 KiB (fixed cost per call), p50",
        fmt_us(sm * 1e6),
        "-".into(),
        None,
    ));
    out.notes.push(format!(
        "upload from a host buffer: {hw:.2} GB/s best, {hw_med:.2} GB/s median, against \
         {p:.2} GB/s for a pinned cuMemcpyHtoD here; the call adds the gRPC round trip and \
         the daemon's stream synchronization to the DMA. Creating the 256 MiB host buffer \
         (memfd, cuMemHostRegister, export, mmap) took {:.1} ms, paid once.",
        host_create_s * 1e3
    ));
    out.notes.push(format!(
        "upload in messages: one {mib} MiB Write takes {:.2} ms: the device copy accounts for {:.2} ms (pinned \
         cuMemcpyHtoD of the same bytes here), the client's copy of the bytes into the request \
         for {:.2} ms, the fixed cost of a call for {:.3} ms (a 4 KiB Write); the remaining {:.2} ms \
         are the bytes' way through gRPC (protobuf encoding, HTTP/2 framing over the Unix socket, \
         decoding into the daemon's request buffer) and the daemon's copy into its pinned staging. \
         The upload moves {:.2} GB/s against {:.2} GB/s for a pinned copy and {:.2} GB/s for a \
         pageable one.",
        cw * 1e3,
        cp * 1e3,
        cc * 1e3,
        sm * 1e3,
        (cw - cp - cc - sm).max(0.0) * 1e3,
        w,
        p,
        pg
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Sharing a 64 MiB buffer end to end

fn sharing(ctx: &Ctx, out: &mut Out) -> Res<()> {
    let (mut total, mut create, mut export, mut import) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..SHARE_WARMUP + SHARE_N {
        let t0 = Instant::now();
        let (buffer, t1, exported, t2) = ctx.rt.block_on(async {
            let buffer = ctx
                .client
                .create_buffer(SHARE_SIZE, &CreateOptions::default())
                .await?;
            let t1 = Instant::now();
            let exported = ctx.client.export(buffer.id()).await?;
            Res::Ok((buffer, t1, exported, Instant::now()))
        })?;
        let imported = InteropBuffer::import(&ctx.device, exported)?;
        let t3 = Instant::now();
        drop(imported);
        ctx.rt.block_on(buffer.release())?;
        if i >= SHARE_WARMUP {
            total.push(ns(t3 - t0));
            create.push(ns(t1 - t0));
            export.push(ns(t2 - t1));
            import.push(ns(t3 - t2));
        }
    }

    // Baseline: cuIpcGetMemHandle here, cuIpcOpenMemHandle in a child process.
    let allocs = (0..SHARE_WARMUP + SHARE_N)
        .map(|_| DeviceAllocation::new(&ctx.device, SHARE_SIZE))
        .collect::<Result<Vec<_>, _>>()?;
    ctx.device.context().bind_to_thread()?;
    let mut get = Vec::new();
    let mut handles = Vec::new();
    for (i, a) in allocs.iter().enumerate() {
        let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
        let t = Instant::now();
        // SAFETY: the context is current; `a.ptr()` is the base of a live cuMemAlloc
        // allocation; `h` is a valid out-pointer.
        ck("cuIpcGetMemHandle", unsafe {
            sys::cuIpcGetMemHandle(&mut h, a.ptr())
        })?;
        if i >= SHARE_WARMUP {
            get.push(ns(t.elapsed()));
        }
        handles.push(hex::encode(h.reserved.map(|c| c as u8)));
    }
    let mut peer = LinePeer::spawn(&["ipc-open", "--uuid", &hex::encode(ctx.device.info().uuid)])?;
    peer.expect("ready")?;
    for h in &handles {
        peer.send(h)?;
    }
    peer.send("end")?;
    let mut open = Vec::new();
    for _ in &handles {
        let line = peer.line()?;
        let v = line
            .strip_prefix("open ")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("ipc-open child said {line:?}"))?;
        open.push(v);
    }
    peer.close()?;
    drop(allocs);
    let first_open = open[0];
    let open: Vec<u64> = open[SHARE_WARMUP..].to_vec();

    let s = |v: &[u64]| summary_us(&v.iter().map(|&x| x as i64).collect::<Vec<_>>());
    let p50 = |v: &[u64]| pct_u(v, 50.0) as f64 / 1e3;
    let (t, g, o) = (p50(&total), p50(&get), p50(&open));
    out.measurements.insert(
        "share_64mib".into(),
        json!({
            "total": s(&total), "create_buffer": s(&create), "export_fd": s(&export),
            "cuda_import_and_map": s(&import),
            "ipc_get_mem_handle": s(&get), "ipc_open_mem_handle_child": s(&open),
            "ipc_open_first_us": first_open as f64 / 1e3,
        }),
    );
    out.rows.push(Row::new(
        "share 64 MiB: create+export+fd+import+map, p50",
        fmt_us(t),
        format!("{} cuIpcGet+Open", fmt_us(g + o)),
        Some(t / (g + o)),
        format!("<= {}", fmt_us(SHARE_MAX_US)),
        Some(t <= SHARE_MAX_US),
    ));
    out.rows.push(Row::info(
        "  CreateBuffer / export (fd received) / cuImport+map, p50",
        format!(
            "{} / {} / {}",
            fmt_us(p50(&create)),
            fmt_us(p50(&export)),
            fmt_us(p50(&import))
        ),
        "-".into(),
        None,
    ));
    out.rows.push(Row::info(
        "  cuIpcGetMemHandle / cuIpcOpenMemHandle (child), p50",
        format!("{} / {}", fmt_us(g), fmt_us(o)),
        format!("first open {}", fmt_us(first_open as f64 / 1e3)),
        None,
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Host wake-up through the daemon

fn wakeup(ctx: &Ctx, out: &mut Out) -> Res<()> {
    let rt = &ctx.rt;
    let sem = rt.block_on(ctx.client.create_semaphore(0, &CreateOptions::default()))?;
    let ticket = rt.block_on(ctx.client.export_ticket(sem.id()))?.ticket;
    let dir = ctx.dir.display().to_string();
    let mut peer = LinePeer::spawn(&["signaler", "--dir", &dir, "--ticket", &hex::encode(ticket)])?;
    peer.expect("ready")?;
    // Baseline: vkWaitSemaphores in a second child that imports the semaphore into Vulkan only
    // (no CUDA context: the case of GPU.md's ~10 ms figure).
    let ticket = rt.block_on(ctx.client.export_ticket(sem.id()))?.ticket;
    let mut vk_peer =
        LinePeer::spawn(&["vk-waiter", "--dir", &dir, "--ticket", &hex::encode(ticket)])?;
    vk_peer.expect("ready")?;
    let mut rng = SplitMix64(0x6770_7562_656e_6368);
    let mut pending_time = move || WAKE_PENDING + Duration::from_nanos(rng.next() % 1_000_000);
    // Second baseline: the same in this process, which also holds a CUDA context.
    let instance = Instance::new("gpushare-gpubench")?;
    let exported = rt.block_on(ctx.client.export(sem.id()))?;
    let vk_device = import::vulkan_device_for(&instance, &exported)?;
    let vk_sem = import::import_semaphore_vulkan(&vk_device, exported)?;

    let mut v = 0u64;
    let idle0 = process_cpu_ticks(ctx.daemon_pid)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle1 = process_cpu_ticks(ctx.daemon_pid)?;

    // Reference for the reply path: a GetValue round trip after the same idle time.
    let mut idle_rtt = Vec::new();
    for _ in 0..WAKE_ROUNDS / 2 {
        std::thread::sleep(pending_time());
        let t = mono_ns();
        rt.block_on(sem.value())?;
        idle_rtt.push((mono_ns() - t) as i64);
    }

    // (a) a pending Wait call.
    let counts0 = wakeup_counts(ctx)?;
    let mut wait_lat = Vec::new();
    let mut cpu_wait = 0;
    for i in 0..WAKE_WARMUP + WAKE_ROUNDS {
        if i == WAKE_WARMUP {
            cpu_wait = process_cpu_ticks(ctx.daemon_pid)?;
        }
        v += 1;
        let s = sem.clone();
        let pending = rt.spawn(async move {
            let r = s.wait(v, Duration::from_secs(10)).await;
            (r, mono_ns())
        });
        std::thread::sleep(pending_time());
        let t_signal = peer.signal(v)?;
        let (r, t_wake) = rt.block_on(pending)?;
        r?;
        if i >= WAKE_WARMUP {
            wait_lat.push(t_wake as i64 - t_signal as i64);
        }
    }
    let cpu_wait = process_cpu_ticks(ctx.daemon_pid)? - cpu_wait;
    let counts1 = wakeup_counts(ctx)?;
    let by: [f64; 4] = std::array::from_fn(|i| counts1.0[i] - counts0.0[i]);

    // (b) a Watch stream.
    let (tx, rx) = mpsc::channel::<(u64, u64)>();
    let s = sem.clone();
    let watch = rt.spawn(async move {
        let mut w = s.watch();
        while let Some(Ok(value)) = w.next().await {
            if tx.send((value, mono_ns())).is_err() {
                break;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))?;
    let mut watch_lat = Vec::new();
    let mut cpu_watch = 0;
    for i in 0..WAKE_WARMUP + WAKE_ROUNDS {
        if i == WAKE_WARMUP {
            cpu_watch = process_cpu_ticks(ctx.daemon_pid)?;
        }
        v += 1;
        std::thread::sleep(pending_time());
        let t_signal = peer.signal(v)?;
        loop {
            let (value, t) = rx.recv_timeout(Duration::from_secs(10))?;
            if value >= v {
                if i >= WAKE_WARMUP {
                    watch_lat.push(t as i64 - t_signal as i64);
                }
                break;
            }
        }
    }
    let cpu_watch = process_cpu_ticks(ctx.daemon_pid)? - cpu_watch;
    watch.abort();

    // (f) an fd.sock wait (HostWaiter), without and with spinning: the reply comes from the
    // daemon thread that saw the value, and is received by the waiting thread itself.
    let waiter = HostWaiter::connect(&ctx.dir)?;
    let mut fd_lat = [Vec::new(), Vec::new()];
    let mut cpu_fd = [0; 2];
    let mut fd_by = [[0.0; 4]; 2];
    for (k, spin) in [Duration::ZERO, FD_WAIT_SPIN].into_iter().enumerate() {
        let c0 = wakeup_counts(ctx)?;
        for i in 0..WAKE_WARMUP + WAKE_ROUNDS {
            if i == WAKE_WARMUP {
                cpu_fd[k] = process_cpu_ticks(ctx.daemon_pid)?;
            }
            v += 1;
            let (r, t_wake, t_signal) = std::thread::scope(|sc| {
                let waiting = sc.spawn(|| {
                    let r = waiter.wait(sem.id(), v, Duration::from_secs(10), spin);
                    (r, mono_ns())
                });
                std::thread::sleep(pending_time());
                let t_signal = peer.signal(v);
                let (r, t_wake) = waiting.join().expect("the waiting thread");
                (r, t_wake, t_signal)
            });
            let t_signal = t_signal?;
            r?;
            if i >= WAKE_WARMUP {
                fd_lat[k].push(t_wake as i64 - t_signal as i64);
            }
        }
        cpu_fd[k] = process_cpu_ticks(ctx.daemon_pid)? - cpu_fd[k];
        let c1 = wakeup_counts(ctx)?;
        fd_by[k] = std::array::from_fn(|i| c1.0[i] - c0.0[i]);
    }

    // (c) baseline: vkWaitSemaphores in this process.
    let mut vk_lat = Vec::new();
    let mut vk_timeouts = 0;
    for i in 0..5 + WAKE_ROUNDS {
        v += 1;
        let (ok, t_wake, t_signal) = std::thread::scope(|sc| {
            let waiter = sc.spawn(|| {
                let ok = vk_sem.wait(v, Duration::from_secs(5));
                (ok, mono_ns())
            });
            std::thread::sleep(pending_time());
            let t_signal = peer.signal(v);
            let (ok, t_wake) = waiter.join().expect("the waiting thread");
            (ok, t_wake, t_signal)
        });
        let t_signal = t_signal?;
        if !ok? {
            vk_timeouts += 1;
        }
        if i >= 5 {
            vk_lat.push(t_wake as i64 - t_signal as i64);
        }
    }
    // (d) baseline: vkWaitSemaphores in a Vulkan-only child process.
    let mut vkc_lat = Vec::new();
    let mut vkc_timeouts = 0;
    for i in 0..5 + WAKE_ROUNDS {
        v += 1;
        vk_peer.send(&v.to_string())?;
        vk_peer.expect("armed")?;
        std::thread::sleep(pending_time());
        let t_signal = peer.signal(v)?;
        let line = vk_peer.line()?;
        let (t_wake, ok) = parse_woke(&line, v)?;
        if !ok {
            vkc_timeouts += 1;
        }
        if i >= 5 {
            vkc_lat.push(t_wake as i64 - t_signal as i64);
        }
    }
    // (e) the same two, but the signaler takes its clock right after enqueuing the signal and
    // never synchronizes its stream (the latency then includes the GPU's execution of the signal).
    let mut nosync_vk = Vec::new();
    let mut nosync_vk_timeouts = 0;
    let mut nosync_wait = Vec::new();
    for i in 0..5 + NOSYNC_ROUNDS {
        v += 1;
        vk_peer.send(&v.to_string())?;
        vk_peer.expect("armed")?;
        std::thread::sleep(pending_time());
        let t_signal = peer.signal_nosync(v)?;
        let line = vk_peer.line()?;
        let (t_wake, ok) = parse_woke(&line, v)?;
        if !ok {
            nosync_vk_timeouts += 1;
        }
        if i >= 5 {
            nosync_vk.push(t_wake as i64 - t_signal as i64);
        }
        v += 1;
        let s = sem.clone();
        let pending = rt.spawn(async move {
            let r = s.wait(v, Duration::from_secs(10)).await;
            (r, mono_ns())
        });
        std::thread::sleep(pending_time());
        let t_signal = peer.signal_nosync(v)?;
        let (r, t_wake) = rt.block_on(pending)?;
        r?;
        if i >= 5 {
            nosync_wait.push(t_wake as i64 - t_signal as i64);
        }
    }
    vk_peer.send("quit")?;
    vk_peer.close()?;
    peer.send("quit")?;
    peer.close()?;
    drop(vk_sem);
    rt.block_on(sem.release())?;

    let tick_us = 1e6 / clock_ticks_per_second();
    let per = |ticks: u64| ticks as f64 * tick_us / WAKE_ROUNDS as f64;
    let idle_pct = (idle1 - idle0) as f64 * tick_us / 1e4;
    let sorted = |mut v: Vec<i64>| {
        v.sort_unstable();
        v
    };
    let (wait_lat, watch_lat, vk_lat, vkc_lat) = (
        sorted(wait_lat),
        sorted(watch_lat),
        sorted(vk_lat),
        sorted(vkc_lat),
    );
    let (nosync_vk, nosync_wait) = (sorted(nosync_vk), sorted(nosync_wait));
    let [fd_block, fd_spin] = fd_lat.map(sorted);
    let idle_rtt = sorted(idle_rtt);
    let us = |v: &[i64], p: f64| pct_i(v, p) as f64 / 1e3;
    out.measurements.insert(
        "wake".into(),
        json!({
            "wait": summary_us(&wait_lat), "watch": summary_us(&watch_lat),
            "fd_wait": summary_us(&fd_block), "fd_wait_spin": summary_us(&fd_spin),
            "fd_wait_spin_us": FD_WAIT_SPIN.as_micros() as u64,
            "daemon_cpu_us_per_fd_wait": per(cpu_fd[0]),
            "daemon_cpu_us_per_fd_wait_spin": per(cpu_fd[1]),
            "fd_wait_completions_by": {"driver": fd_by[0][0], "poll": fd_by[0][1], "notify": fd_by[0][2], "spin": fd_by[0][3]},
            "fd_wait_spin_completions_by": {"driver": fd_by[1][0], "poll": fd_by[1][1], "notify": fd_by[1][2], "spin": fd_by[1][3]},
            "vk_wait_semaphores_vulkan_only_child": summary_us(&vkc_lat),
            "vk_wait_semaphores_vulkan_only_child_timeouts": vkc_timeouts,
            "vk_wait_semaphores_in_bench_process_with_cuda": summary_us(&vk_lat),
            "vk_wait_semaphores_in_bench_process_timeouts": vk_timeouts,
            "signaler_without_sync": {
                "rounds": NOSYNC_ROUNDS,
                "vk_wait_semaphores_vulkan_only_child": summary_us(&nosync_vk),
                "vk_wait_semaphores_vulkan_only_child_timeouts": nosync_vk_timeouts,
                "daemon_wait": summary_us(&nosync_wait),
                "latency": "from CLOCK_MONOTONIC right after the signal was enqueued (no cuStreamSynchronize in the signaler)",
            },
            "pending_us": [WAKE_PENDING.as_micros() as u64, 2 * WAKE_PENDING.as_micros() as u64],
            "daemon_cpu_us_per_wait": per(cpu_wait), "daemon_cpu_us_per_watch_round": per(cpu_watch),
            "daemon_cpu_idle_percent": idle_pct, "clock_tick_us": tick_us,
            "getvalue_rtt_after_same_idle": summary_us(&idle_rtt),
            "wait_completions_by": {"driver": by[0], "poll": by[1], "notify": by[2], "spin": by[3]},
            "poller_relaxed_after_waits": counts1.1,
            "latency": "CLOCK_MONOTONIC at the waiter's return minus CLOCK_MONOTONIC in the signaling process right after cuStreamSynchronize returned",
        }),
    );
    let vk = format!(
        "vkWait (Vulkan-only process) p50 {} p99 {}",
        fmt_us(us(&vkc_lat, 50.0)),
        fmt_us(us(&vkc_lat, 99.0))
    );
    let vk_p99 = us(&vkc_lat, 99.0);
    let spin_name = format!(
        "fd.sock wait (HostWaiter), spin {} ms",
        FD_WAIT_SPIN.as_millis()
    );
    for (name, lat, target) in [
        (spin_name.as_str(), &fd_spin, true),
        ("fd.sock wait (HostWaiter), no spin", &fd_block, false),
        ("gRPC Wait call", &wait_lat, false),
        ("gRPC Watch stream", &watch_lat, false),
    ] {
        let p99 = us(lat, 99.0);
        let metric = format!("host wake-up after a CUDA signal in another process, {name}");
        let value = format!("p50 {} p99 {}", fmt_us(us(lat, 50.0)), fmt_us(p99));
        let ratio = (vk_p99 > 0.0).then(|| p99 / vk_p99);
        out.rows.push(if target {
            Row::new(
                &metric,
                value,
                vk.clone(),
                ratio,
                format!("p99 <= {}", fmt_us(WAKE_P99_MAX_US)),
                Some(p99 <= WAKE_P99_MAX_US),
            )
        } else {
            Row::info(&metric, value, vk.clone(), ratio)
        });
    }
    out.rows.push(Row::info(
        "  GetValue round trip after the same 1-2 ms idle (the reply path's floor)",
        format!(
            "p50 {} p99 {}",
            fmt_us(us(&idle_rtt, 50.0)),
            fmt_us(us(&idle_rtt, 99.0))
        ),
        "-".into(),
        None,
    ));
    out.rows.push(Row::info(
        "  Wait calls completed by: driver wait / poller / daemon notify",
        format!("{:.0} / {:.0} / {:.0}", by[0], by[1], by[2]),
        format!("poller relaxed after: {}", counts1.1),
        None,
    ));
    out.rows.push(Row::info(
        "  vkWaitSemaphores in the bench process (which holds a CUDA context)",
        format!(
            "p50 {} p99 {}",
            fmt_us(us(&vk_lat, 50.0)),
            fmt_us(us(&vk_lat, 99.0))
        ),
        format!("{vk_timeouts} timeouts"),
        None,
    ));
    out.rows.push(Row::info(
        "  signaler without cuStreamSynchronize: Wait call (from the enqueue)",
        format!(
            "p50 {} p99 {}",
            fmt_us(us(&nosync_wait, 50.0)),
            fmt_us(us(&nosync_wait, 99.0))
        ),
        format!(
            "vkWait (Vulkan-only process) p50 {} p99 {}",
            fmt_us(us(&nosync_vk, 50.0)),
            fmt_us(us(&nosync_vk, 99.0))
        ),
        None,
    ));
    out.rows.push(Row::info(
        "  daemon CPU per wait: gRPC Wait / Watch round / fd.sock wait / fd.sock wait with spin",
        format!(
            "{} / {} / {} / {}",
            fmt_us(per(cpu_wait)),
            fmt_us(per(cpu_watch)),
            fmt_us(per(cpu_fd[0])),
            fmt_us(per(cpu_fd[1]))
        ),
        format!("idle {idle_pct:.1}% of a CPU"),
        None,
    ));
    out.rows.push(Row::info(
        "  fd.sock waits completed by: poller / spin (no spin; spin)",
        format!(
            "{:.0} / {:.0}; {:.0} / {:.0}",
            fd_by[0][1], fd_by[0][3], fd_by[1][1], fd_by[1][3]
        ),
        "-".into(),
        None,
    ));
    out.notes.push(format!(
        "wake-up: each round keeps the Wait pending {}-{} ms (uniformly random) before the child \
         signals; the daemon's CPU per wait is (utime+stime over the rounds)/rounds from /proc/<pid>/stat at {:.0} µs \
         per tick, so it includes the daemon's polling during the pending time. The latency can \
         read slightly low: the child takes its clock after cuStreamSynchronize returns, which is \
         after the semaphore was signaled.",
        WAKE_PENDING.as_millis(),
        2 * WAKE_PENDING.as_millis(),
        tick_us
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. GPU→GPU ping-pong between two processes

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Semaphore,
    Event,
    Memop,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Semaphore => "semaphore",
            Mode::Event => "event",
            Mode::Memop => "memop",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        [Mode::Semaphore, Mode::Event, Mode::Memop]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

fn pingpong(ctx: &Ctx, out: &mut Out) -> Res<()> {
    let mut us = [0.0f64; 3];
    let mut host_us = 0.0;
    for (i, mode) in [Mode::Semaphore, Mode::Event, Mode::Memop]
        .into_iter()
        .enumerate()
    {
        let (total, host) = run_pingpong(ctx, mode)?;
        us[i] = total.as_secs_f64() * 1e6 / PP_ROUNDS as f64;
        if mode == Mode::Event {
            host_us = host.as_secs_f64() * 1e6 / PP_ROUNDS as f64;
        }
    }
    let [sem, event, memop] = us;
    out.measurements.insert(
        "pingpong_us_per_round_trip".into(),
        json!({"rounds": PP_ROUNDS, "semaphore": sem, "ipc_event": event, "memop": memop,
               "ipc_event_host_lockstep": host_us}),
    );
    out.rows.push(Row::info(
        "GPU->GPU round trip, shared timeline semaphore (CUDA both)",
        fmt_us(sem),
        format!("{} IPC events", fmt_us(event)),
        Some(sem / event),
    ));
    out.rows.push(Row::info(
        "GPU->GPU round trip, stream memops on a shared word",
        fmt_us(memop),
        format!("{} semaphore", fmt_us(sem)),
        Some(memop / sem),
    ));
    out.rows.push(Row::info(
        "GPU->GPU round trip, CUDA IPC events (host lockstep)",
        fmt_us(event),
        format!("{} host lockstep alone", fmt_us(host_us)),
        None,
    ));
    out.notes.push(format!(
        "ping-pong: {PP_ROUNDS} round trips between this process and a child, each on its own \
         stream. Semaphore and memop rounds are all enqueued up front (the waits are on counter \
         values, so no host hand-shake is needed) and the time is from the first enqueue to \
         cuStreamSynchronize over the rounds. An IPC event can only be waited on for its latest \
         record, so the event rounds go in host lockstep over a pipe (record, tell the peer, the \
         peer enqueues its wait and its record, answers); the host part alone finished after {} \
         per round, so the event figure is GPU-bound when it is larger.",
        fmt_us(host_us)
    ));
    Ok(())
}

/// Runs one mode; returns the total time and (events) the time the host loop took.
fn run_pingpong(ctx: &Ctx, mode: Mode) -> Res<(Duration, Duration)> {
    let rt = &ctx.rt;
    let stream = ctx.device.stream();
    let dir = ctx.dir.display().to_string();
    let uuid = hex::encode(ctx.device.info().uuid);
    let rounds = PP_ROUNDS.to_string();
    let mut args = vec![
        "pong".to_owned(),
        "--mode".into(),
        mode.name().into(),
        "--dir".into(),
        dir,
        "--uuid".into(),
        uuid,
        "--rounds".into(),
        rounds,
    ];
    let mut sem = None;
    let mut word = None;
    let mut event = None;
    match mode {
        Mode::Semaphore => {
            let s = rt.block_on(ctx.client.create_semaphore(0, &CreateOptions::default()))?;
            let ticket = rt.block_on(ctx.client.export_ticket(s.id()))?.ticket;
            let exported = rt.block_on(ctx.client.export(s.id()))?;
            let ext = import_semaphore_cuda(&ctx.device, exported)?;
            args.extend(["--ticket".into(), hex::encode(ticket)]);
            sem = Some((s, ext));
        }
        Mode::Memop => {
            let (b, shared) = rt.block_on(ctx.client.create_interop_buffer(
                4096,
                &CreateOptions::default(),
                &ctx.device,
            ))?;
            // SAFETY: the mapped buffer holds 4096 bytes and lives until the synchronization.
            unsafe { cuda::memset_d32(stream, shared.device_ptr(), 0, 1024) }?;
            ctx.device.synchronize_stream()?;
            let ticket = rt.block_on(ctx.client.export_ticket(b.id()))?.ticket;
            args.extend(["--ticket".into(), hex::encode(ticket)]);
            word = Some((b, shared));
        }
        Mode::Event => {
            let e = IpcEvent::create(&ctx.device)?;
            args.extend(["--event".into(), e.handle_hex()?]);
            event = Some(e);
        }
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut peer = LinePeer::spawn(&argv)?;
    let ready = peer.line()?;
    let peer_event = match (mode, ready.strip_prefix("ready ")) {
        (Mode::Event, Some(h)) => Some(IpcEvent::open(&ctx.device, h)?),
        (_, Some(_)) => None,
        _ => return Err(format!("pong child said {ready:?}").into()),
    };
    peer.send("go")?;
    let t0 = Instant::now();
    let mut host = Duration::ZERO;
    match mode {
        Mode::Semaphore => {
            let (_, ext) = sem.as_ref().expect("set above");
            for k in 0..PP_ROUNDS {
                ext.signal(2 * k + 1, stream)?;
                ext.wait(2 * k + 2, stream)?;
            }
        }
        Mode::Memop => {
            let ptr = word.as_ref().expect("set above").1.device_ptr();
            for k in 0..PP_ROUNDS {
                // SAFETY: `ptr` is the 8-byte aligned first word of the mapped shared buffer,
                // alive until the stream is synchronized below; the peer writes the values
                // waited for.
                unsafe {
                    memops::write_value64(stream, ptr, 2 * k + 1)?;
                    memops::wait_value64_geq(stream, ptr, 2 * k + 2)?;
                }
            }
        }
        Mode::Event => {
            let mine = event.as_ref().expect("set above");
            let theirs = peer_event.as_ref().expect("opened above");
            for k in 0..PP_ROUNDS {
                mine.record(stream)?;
                peer.send(&k.to_string())?;
                let line = peer.line()?;
                if line != k.to_string() {
                    return Err(format!("pong child said {line:?} in round {k}").into());
                }
                theirs.wait(stream)?;
            }
            host = t0.elapsed();
        }
    }
    ctx.device.synchronize_stream()?;
    let total = t0.elapsed();
    peer.expect("done")?;
    peer.close()?;
    drop(peer_event);
    drop(event);
    if let Some((s, ext)) = sem {
        drop(ext);
        rt.block_on(s.release())?;
    }
    if let Some((b, shared)) = word {
        drop(shared);
        rt.block_on(b.release())?;
    }
    Ok((total, host))
}

/// A CUDA event made for interprocess use (created here or opened from a handle).
struct IpcEvent {
    device: Arc<CudaDevice>,
    raw: sys::CUevent,
}

impl IpcEvent {
    fn create(device: &Arc<CudaDevice>) -> Res<IpcEvent> {
        device.context().bind_to_thread()?;
        let mut raw = std::ptr::null_mut();
        let flags = sys::CUevent_flags::CU_EVENT_INTERPROCESS as u32
            | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        // SAFETY: the context is current; `raw` is a valid out-pointer; interprocess events
        // must disable timing, as here.
        ck("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut raw, flags)
        })?;
        Ok(IpcEvent {
            device: Arc::clone(device),
            raw,
        })
    }

    fn open(device: &Arc<CudaDevice>, handle: &str) -> Res<IpcEvent> {
        let bytes = hex::decode(handle)?;
        let mut h = sys::CUipcEventHandle { reserved: [0; 64] };
        if bytes.len() != h.reserved.len() {
            return Err(format!("an IPC event handle of {} bytes", bytes.len()).into());
        }
        for (d, s) in h.reserved.iter_mut().zip(bytes) {
            *d = s as _;
        }
        device.context().bind_to_thread()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: the context is current; `raw` is a valid out-pointer; the handle came from
        // cuIpcGetEventHandle in another process of this device, whose event outlives ours.
        ck("cuIpcOpenEventHandle", unsafe {
            sys::cuIpcOpenEventHandle(&mut raw, h)
        })?;
        Ok(IpcEvent {
            device: Arc::clone(device),
            raw,
        })
    }

    fn handle_hex(&self) -> Res<String> {
        self.device.context().bind_to_thread()?;
        let mut h = sys::CUipcEventHandle { reserved: [0; 64] };
        // SAFETY: the context is current; `raw` is a live interprocess event; `h` a valid
        // out-pointer.
        ck("cuIpcGetEventHandle", unsafe {
            sys::cuIpcGetEventHandle(&mut h, self.raw)
        })?;
        Ok(hex::encode(h.reserved.map(|c| c as u8)))
    }

    fn record(&self, stream: &cuda::cudarc::driver::CudaStream) -> Res<()> {
        self.device.context().bind_to_thread()?;
        // SAFETY: the context is current; the event and the stream (borrowed) are live and of
        // this context.
        ck("cuEventRecord", unsafe {
            sys::cuEventRecord(self.raw, stream.cu_stream())
        })
    }

    fn wait(&self, stream: &cuda::cudarc::driver::CudaStream) -> Res<()> {
        self.device.context().bind_to_thread()?;
        // SAFETY: as in `record`; flags 0 is the documented default.
        ck("cuStreamWaitEvent", unsafe {
            sys::cuStreamWaitEvent(stream.cu_stream(), self.raw, 0)
        })
    }
}

impl Drop for IpcEvent {
    fn drop(&mut self) {
        if self.device.context().bind_to_thread().is_ok() {
            // SAFETY: the context is current; `raw` is destroyed once, after the streams that
            // used it were synchronized by the owner.
            let _ = unsafe { sys::cuEventDestroy_v2(self.raw) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child roles

fn child_main(args: &[String]) -> Res<()> {
    // Die with the bench, whatever becomes of it.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let (role, rest) = args.split_first().ok_or("--role needs a name")?;
    let mut opts = std::collections::HashMap::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        opts.insert(flag.trim_start_matches("--").to_owned(), value.clone());
    }
    let get = |k: &str| {
        opts.get(k)
            .cloned()
            .ok_or_else(|| format!("--{k} is required"))
    };
    let device_by_uuid = || -> Res<Arc<CudaDevice>> {
        let uuid: [u8; 16] = hex::decode(get("uuid")?)?
            .try_into()
            .map_err(|_| "a UUID of 16 bytes")?;
        Ok(CudaDevice::by_uuid(&uuid)?)
    };
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut next_line = move || -> Res<String> {
        Ok(lines
            .next()
            .ok_or("the bench closed the pipe")??
            .trim()
            .to_owned())
    };
    let mut stdout = std::io::stdout().lock();
    let mut say = move |s: &str| -> Res<()> {
        writeln!(stdout, "{s}")?;
        stdout.flush()?;
        Ok(())
    };
    match role.as_str() {
        "ipc-open" => {
            let device = device_by_uuid()?;
            say("ready")?;
            loop {
                let line = next_line()?;
                if line == "end" {
                    break;
                }
                let bytes = hex::decode(&line)?;
                let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
                if bytes.len() != h.reserved.len() {
                    return Err(format!("an IPC handle of {} bytes", bytes.len()).into());
                }
                for (d, s) in h.reserved.iter_mut().zip(bytes) {
                    *d = s as _;
                }
                device.context().bind_to_thread()?;
                let mut ptr = 0;
                let t = Instant::now();
                // SAFETY: the context is current; `ptr` is a valid out-pointer; the handle names
                // a live allocation of the parent process on this device.
                ck("cuIpcOpenMemHandle", unsafe {
                    sys::cuIpcOpenMemHandle_v2(
                        &mut ptr,
                        h,
                        sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32,
                    )
                })?;
                let elapsed = ns(t.elapsed());
                // SAFETY: `ptr` was opened above and is closed once; nothing used it.
                ck("cuIpcCloseMemHandle", unsafe {
                    sys::cuIpcCloseMemHandle(ptr)
                })?;
                say(&format!("open {elapsed}"))?;
            }
            Ok(())
        }
        "signaler" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let ticket = hex::decode(get("ticket")?)?;
            let exported = rt.block_on(async {
                let client = Client::connect(get("dir")?).await?;
                Res::Ok(client.redeem(&ticket).await?)
            })?;
            drop(rt);
            let device = cuda_device_for(&exported)?;
            let sem = import_semaphore_cuda(&device, exported)?;
            say("ready")?;
            loop {
                let line = next_line()?;
                if line == "quit" {
                    break;
                }
                let (sync, v) = match line.strip_prefix("nosync ") {
                    Some(v) => (false, v.parse::<u64>()?),
                    None => (true, line.parse::<u64>()?),
                };
                sem.signal(v, device.stream())?;
                if sync {
                    device.synchronize_stream()?;
                }
                let t = mono_ns();
                say(&format!("signaled {v} {t}"))?;
            }
            device.synchronize_stream()?;
            Ok(())
        }
        "vk-waiter" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let ticket = hex::decode(get("ticket")?)?;
            let exported = rt.block_on(async {
                let client = Client::connect(get("dir")?).await?;
                Res::Ok(client.redeem(&ticket).await?)
            })?;
            drop(rt);
            let instance = Instance::new("gpushare-gpubench vk-waiter")?;
            let device = import::vulkan_device_for(&instance, &exported)?;
            let sem = import::import_semaphore_vulkan(&device, exported)?;
            say("ready")?;
            loop {
                let line = next_line()?;
                if line == "quit" {
                    break;
                }
                let v: u64 = line.parse()?;
                let (ok, t) = std::thread::scope(|sc| {
                    let waiter = sc.spawn(|| {
                        let ok = sem.wait(v, Duration::from_secs(5));
                        (ok, mono_ns())
                    });
                    let armed = say("armed");
                    let (ok, t) = waiter.join().expect("the waiting thread");
                    armed.map(|()| (ok, t))
                })?;
                say(&format!("woke {v} {t} {}", ok?))?;
            }
            Ok(())
        }
        "pong" => {
            let mode = Mode::parse(&get("mode")?).ok_or("--mode semaphore|event|memop")?;
            let rounds: u64 = get("rounds")?.parse()?;
            let device = device_by_uuid()?;
            let stream = device.stream();
            let redeem = || -> Res<gpushare_client::Exported> {
                let ticket = hex::decode(get("ticket")?)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let client = Client::connect(get("dir")?).await?;
                    Res::Ok(client.redeem(&ticket).await?)
                })
            };
            match mode {
                Mode::Semaphore => {
                    let sem = import_semaphore_cuda(&device, redeem()?)?;
                    say("ready -")?;
                    expect_line(&mut next_line, "go")?;
                    for k in 0..rounds {
                        sem.wait(2 * k + 1, stream)?;
                        sem.signal(2 * k + 2, stream)?;
                    }
                    device.synchronize_stream()?;
                }
                Mode::Memop => {
                    let shared = InteropBuffer::import(&device, redeem()?)?;
                    let ptr = shared.device_ptr();
                    say("ready -")?;
                    expect_line(&mut next_line, "go")?;
                    for k in 0..rounds {
                        // SAFETY: `ptr` is the aligned first word of the mapped shared buffer,
                        // alive until the synchronization below; the bench writes the values
                        // waited for.
                        unsafe {
                            memops::wait_value64_geq(stream, ptr, 2 * k + 1)?;
                            memops::write_value64(stream, ptr, 2 * k + 2)?;
                        }
                    }
                    device.synchronize_stream()?;
                }
                Mode::Event => {
                    let theirs = IpcEvent::open(&device, &get("event")?)?;
                    let mine = IpcEvent::create(&device)?;
                    say(&format!("ready {}", mine.handle_hex()?))?;
                    expect_line(&mut next_line, "go")?;
                    for k in 0..rounds {
                        expect_line(&mut next_line, &k.to_string())?;
                        theirs.wait(stream)?;
                        mine.record(stream)?;
                        say(&k.to_string())?;
                    }
                    device.synchronize_stream()?;
                }
            }
            say("done")?;
            Ok(())
        }
        other => Err(format!("unknown role {other}").into()),
    }
}

/// Parses the vk-waiter's `woke <v> <t> <ok>`: its clock at the wake-up and whether the wait
/// succeeded (`false`: it timed out).
fn parse_woke(line: &str, v: u64) -> Res<(u64, bool)> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("woke"), Some(w), Some(t), Some(ok)) if w == v.to_string() => {
            Ok((t.parse()?, ok == "true"))
        }
        _ => Err(format!("the vk-waiter said {line:?}").into()),
    }
}

fn expect_line(next_line: &mut impl FnMut() -> Res<String>, want: &str) -> Res<()> {
    let line = next_line()?;
    if line != want {
        return Err(format!("expected {want:?}, got {line:?}").into());
    }
    Ok(())
}

/// The signaler peer's protocol (`--role signaler`).
trait Signaler {
    fn signal(&mut self, value: u64) -> Res<u64>;
    fn signal_nosync(&mut self, value: u64) -> Res<u64>;
    fn signaled(&mut self, value: u64) -> Res<u64>;
}

impl Signaler for LinePeer {
    /// Asks the signaler for `value`; returns its CLOCK_MONOTONIC after the signal was done.
    fn signal(&mut self, value: u64) -> Res<u64> {
        self.send(&value.to_string())?;
        self.signaled(value)
    }

    /// Asks the signaler for `value` without synchronizing its stream; returns its
    /// CLOCK_MONOTONIC right after the signal was enqueued.
    fn signal_nosync(&mut self, value: u64) -> Res<u64> {
        self.send(&format!("nosync {value}"))?;
        self.signaled(value)
    }

    fn signaled(&mut self, value: u64) -> Res<u64> {
        let line = self.line()?;
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("signaled"), Some(v), Some(t)) if v == value.to_string() => Ok(t.parse()?),
            _ => Err(format!("the signaler said {line:?}").into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn ck(call: &str, r: sys::CUresult) -> Res<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{call} failed: {r:?}").into())
    }
}

/// CLOCK_MONOTONIC in ns: one clock for every process on the machine.
fn mono_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// utime + stime of a process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
/// The `p`th percentile (nearest rank) of sorted values; 0 for none.
fn pct_i(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn pct_u(v: &[u64], p: f64) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    let s: Vec<i64> = s.into_iter().map(|x| x as i64).collect();
    pct_i(&s, p) as u64
}

/// min, p50, p90, p99, max, mean in µs of values in ns.
fn summary_us(v: &[i64]) -> Value {
    let mut s = v.to_vec();
    s.sort_unstable();
    let us = |x: i64| (x as f64 / 10.0).round() / 100.0;
    json!({
        "n": s.len(),
        "min": us(pct_i(&s, 0.0)),
        "p50": us(pct_i(&s, 50.0)),
        "p90": us(pct_i(&s, 90.0)),
        "p99": us(pct_i(&s, 99.0)),
        "max": us(pct_i(&s, 100.0)),
        "mean": us(s.iter().sum::<i64>() / (s.len().max(1) as i64)),
    })
}

fn fmt_us(us: f64) -> String {
    if us.abs() >= 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us.abs() >= 100.0 {
        format!("{us:.0} us")
    } else {
        format!("{us:.1} us")
    }
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
    fn percentiles_use_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(pct_i(&v, 50.0), 50);
        assert_eq!(pct_i(&v, 99.0), 99);
        assert_eq!(pct_i(&v, 0.0), 1);
        assert_eq!(pct_i(&[], 50.0), 0);
    }

    #[test]
    fn own_cpu_ticks_are_read() {
        assert!(process_cpu_ticks(std::process::id()).is_ok());
        assert!(clock_ticks_per_second() > 0.0);
    }
}
