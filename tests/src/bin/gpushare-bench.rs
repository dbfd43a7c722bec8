//! `gpushare-bench`: measures the real `gpushared` against baselines taken in the same run.
//!
//! ```text
//! cargo build --release --bins
//! target/release/gpushare-bench [--json PATH]     # default PATH: bench/results/latest.json
//! ```
//!
//! Every figure is compared with a baseline measured by this same process, on this machine, in
//! this run (see `bench/README.md`):
//!
//! 1. GetValue round trip (one client, sequential) vs. a bare tonic unary call (tonic-health
//!    `Check`) over a Unix socket served from this process, and a raw Unix-socket echo.
//! 2. Export round trip (Export call + ticket redeemed on fd.sock + fd received) vs. the raw echo.
//! 3. GetValue throughput with 8 concurrent connections vs. the health `Check` with 8.
//! 4. Daemon resident memory: idle, with 1,000 sessions holding a semaphore each, after they end.
//! 5. Host wake latency: Signal-call return to Wait-call return on another connection.
//! 6. The daemon's CPU while one wait is pending (no spin) for 10 s vs. the same daemon idle,
//!    with driver waits on (the default) and off; the first 100 ms of the wait beside it.
//!
//! The exit status is 0 whether targets pass or fail (it is a measurement); 3 when no Vulkan
//! device exists, 1 on an error that stopped the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gpushare_client::{Client, CreateOptions, HostWaiter};
use gpushare_tests::report::{machine_info, print_table, Row};
use gpushare_tests::{TempDir, TestDaemon};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const RTT_WARMUP: usize = 1_000;
const RTT_N: usize = 20_000;
const EXPORT_WARMUP: usize = 200;
const EXPORT_N: usize = 5_000;
const EXPORT_BUFFER: u64 = 1 << 20;
const ECHO_BYTES: usize = 64;
const THROUGHPUT_CLIENTS: usize = 8;
const THROUGHPUT_TIME: Duration = Duration::from_secs(3);
const SESSIONS: usize = 1_000;
const SESSION_BATCH: usize = 50;
const MEMORY_CYCLES: usize = 10;
const DRIVER_N: usize = 5_000;
const WAKE_WARMUP: usize = 20;
const WAKE_ROUNDS: usize = 500;
const WAKE_PENDING: Duration = Duration::from_millis(2);
const PENDING_SPAN: Duration = Duration::from_secs(10);
const PENDING_SHORT_SPAN: Duration = Duration::from_secs(5);
const PENDING_FIRST: Duration = Duration::from_millis(100);
const IDLE_SPAN: Duration = Duration::from_secs(3);

/// Targets.
const GET_VALUE_MAX_RATIO: f64 = 1.5;
const EXPORT_MAX_RATIO: f64 = 4.0;
const THROUGHPUT_MIN: f64 = 20_000.0;
const SESSION_MAX_KIB: f64 = 64.0;
const PENDING_WAIT_MAX_CPU_PCT: f64 = 2.0;

fn main() -> ExitCode {
    let mut json_path = PathBuf::from("bench/results/latest.json");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => match args.next() {
                Some(p) => json_path = PathBuf::from(p),
                None => return usage(),
            },
            "-h" | "--help" => {
                println!(
                    "usage: gpushare-bench [--json PATH]   (default bench/results/latest.json)"
                );
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }

    let nofile = raise_nofile();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(json_path, nofile))
}

fn usage() -> ExitCode {
    eprintln!("usage: gpushare-bench [--json PATH]");
    ExitCode::from(2)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit now in force.
fn raise_nofile() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    getrlimit(Resource::Nofile).current
}

async fn run(json_path: PathBuf, nofile: Option<u64>) -> ExitCode {
    let started = Instant::now();
    let mut machine = machine_info();
    machine["rlimit_nofile"] = json!(nofile);
    println!(
        "gpushare-bench on {} ({} CPUs, {}), kernel {}, {} UTC",
        machine["hostname"].as_str().unwrap_or("?"),
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["date_utc"].as_str().unwrap_or("?"),
    );

    let Some(daemon) = TestDaemon::start() else {
        eprintln!("no Vulkan device: nothing to measure");
        return ExitCode::from(3);
    };
    let result = measure(&daemon, &mut machine).await;
    drop(daemon);
    let (rows, details) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench failed: {e}");
            return ExitCode::FAILURE;
        }
    };

    print_table(&rows);
    let failed = gpushare_tests::report::failed(&rows);
    if failed.is_empty() {
        println!("\nall targets PASS");
    } else {
        println!(
            "\nFAIL: {} target(s) missed: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    let total_s = started.elapsed().as_secs_f64();
    println!("total time {total_s:.1} s");

    let report = json!({
        "machine": machine,
        "settings": {
            "rtt_warmup": RTT_WARMUP,
            "rtt_n": RTT_N,
            "export_warmup": EXPORT_WARMUP,
            "export_n": EXPORT_N,
            "export_buffer_bytes": EXPORT_BUFFER,
            "echo_bytes": ECHO_BYTES,
            "throughput_clients": THROUGHPUT_CLIENTS,
            "throughput_seconds": THROUGHPUT_TIME.as_secs_f64(),
            "sessions": SESSIONS,
            "wake_rounds": WAKE_ROUNDS,
            "wake_pending_ms": WAKE_PENDING.as_secs_f64() * 1e3,
            "pending_wait_seconds": PENDING_SPAN.as_secs_f64(),
            "pending_wait_first_ms": PENDING_FIRST.as_secs_f64() * 1e3,
            "idle_seconds": IDLE_SPAN.as_secs_f64(),
            "client_runtime": "tokio multi_thread, default workers",
        },
        "measurements": details,
        "table": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "failed_targets": failed,
        "total_seconds": total_s,
    });
    match gpushare_tests::report::write_json(&json_path, &report) {
        Ok(()) => println!("wrote {}", json_path.display()),
        Err(e) => {
            eprintln!("cannot write {}: {e}", json_path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs every measurement; returns the table and the detailed figures.
async fn measure(daemon: &TestDaemon, machine: &mut Value) -> BenchResult<(Vec<Row>, Value)> {
    let dir = daemon.runtime_dir().to_owned();
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();

    let session = Client::connect_with_session(&dir, "gpushare-bench").await?;
    let info = session.info().await?;
    let device = info.devices.first();
    machine["daemon_version"] = json!(info.daemon_version);
    machine["vulkan_device"] = json!(device.map(|d| d.name.clone()));
    machine["vulkan_driver"] =
        json!(device.map(|d| format!("{} {}", d.driver_name, d.driver_info)));
    machine["executor"] = json!(info.executor);
    println!(
        "daemon {} pid {}, device {:?}\n",
        info.daemon_version,
        daemon.pid(),
        device.map(|d| d.name.as_str()).unwrap_or("?")
    );
    let opts = CreateOptions::default();
    let sem = session.create_semaphore(0, &opts).await?;
    let sem_id = sem.id().to_owned();

    // ---- 1. round trips ----
    println!("[1/6] round trips: raw UDS echo, health Check, GetValue ({RTT_N} each)");
    let (cpu_a, cpu_b) = two_cpus();
    // Baseline B on two CPUs (one where only one exists); for reference, on one CPU.
    let mut echo = Echo::start((cpu_a, cpu_b.or(cpu_a)));
    let echo_cpus = echo.cpus_text();
    let mut echo_lat = Vec::with_capacity(RTT_N + EXPORT_N);
    let mut echo_one_cpu = Vec::with_capacity(RTT_N / 4);
    {
        let mut one = Echo::start((cpu_a, cpu_a));
        tokio::task::block_in_place(|| {
            one.round_trips(RTT_WARMUP, &mut Vec::new());
            one.round_trips(RTT_N / 4, &mut echo_one_cpu);
            echo.round_trips(RTT_WARMUP, &mut Vec::new());
        });
    }
    let health_server = HealthServer::start();
    let health = health_client(&health_server.path).await?;
    let getvalue_client = Client::connect(&dir).await?;
    let getvalue = getvalue_client.semaphore(&sem_id);
    let (mut health_lat, mut gv_lat) = (Vec::with_capacity(RTT_N), Vec::with_capacity(RTT_N));
    for _ in 0..RTT_WARMUP {
        health_check(&health).await?;
        getvalue.value().await?;
    }
    // Interleaved blocks, so that drift on the machine hits both alike.
    const BLOCK: usize = 1_000;
    for _ in 0..RTT_N / BLOCK {
        for _ in 0..BLOCK {
            let t = Instant::now();
            health_check(&health).await?;
            health_lat.push(t.elapsed());
        }
        for _ in 0..BLOCK {
            let t = Instant::now();
            getvalue.value().await?;
            gv_lat.push(t.elapsed());
        }
        tokio::task::block_in_place(|| echo.round_trips(BLOCK, &mut echo_lat));
    }

    // ---- 2. export ----
    println!("[2/6] export round trips on a 1 MiB buffer ({EXPORT_N} full, {EXPORT_N} split)");
    let buffer = session.create_buffer(EXPORT_BUFFER, &opts).await?;
    let buffer_id = buffer.id().to_owned();
    for _ in 0..EXPORT_WARMUP {
        drop(session.export(&buffer_id).await?);
    }
    let (mut full, mut ticket_lat, mut redeem_lat) = (Vec::new(), Vec::new(), Vec::new());
    let mut ticket_path = Vec::new();
    const EBLOCK: usize = 500;
    for _ in 0..EXPORT_N / EBLOCK {
        tokio::task::block_in_place(|| echo.round_trips(EBLOCK, &mut echo_lat));
        for _ in 0..EBLOCK {
            let t = Instant::now();
            let exported = session.export(&buffer_id).await?;
            full.push(t.elapsed());
            drop(exported);
        }
        for _ in 0..EBLOCK {
            let t0 = Instant::now();
            let ticket = session.export_ticket(&buffer_id).await?;
            let t1 = Instant::now();
            let exported = session.redeem(&ticket.ticket).await?;
            let t2 = Instant::now();
            ticket_lat.push(t1 - t0);
            redeem_lat.push(t2 - t1);
            ticket_path.push(t2 - t0);
            drop(exported);
        }
    }

    // Stats and rows of 1 (baseline B was sampled alongside 1 and 2), then of 2.
    drop(echo);
    let echo = Stats::of(echo_lat);
    let echo_one_cpu = Stats::of(echo_one_cpu);
    let driver = tokio::task::spawn_blocking(driver_costs).await??;
    let health_lat = Stats::of(health_lat);
    let gv = Stats::of(gv_lat);
    let ratio = gv.p50 / health_lat.p50;
    rows.push(Row::new(
        "GetValue RTT p50",
        us(gv.p50),
        format!("{} (bare tonic unary over UDS)", us(health_lat.p50)),
        Some(ratio),
        format!("<= {GET_VALUE_MAX_RATIO}x"),
        Some(ratio <= GET_VALUE_MAX_RATIO),
    ));
    rows.push(Row::info(
        "GetValue RTT p90",
        us(gv.p90),
        us(health_lat.p90),
        Some(gv.p90 / health_lat.p90),
    ));
    rows.push(Row::info(
        "GetValue RTT p99",
        us(gv.p99),
        us(health_lat.p99),
        Some(gv.p99 / health_lat.p99),
    ));
    rows.push(Row::info(
        "  vkGetSemaphoreCounterValue in-process p50",
        us(driver.counter_value.p50),
        "-".into(),
        None,
    ));
    rows.push(Row::info(
        "raw UDS echo RTT p50 (64 B, 2 CPUs)",
        us(echo.p50),
        format!("{} (both threads on 1 CPU)", us(echo_one_cpu.p50)),
        Some(echo.p50 / echo_one_cpu.p50),
    ));
    details.insert(
        "get_value_rtt".into(),
        json!({
            "target": gv.json(),
            "baseline_a": {"label": "bare tonic unary (health Check) over UDS", "stats": health_lat.json()},
            "baseline_b": {"label": format!("raw Unix-socket echo round trip, 64 bytes, SOCK_STREAM pair, timing thread and echo thread pinned {echo_cpus}; sampled in blocks interleaved with measurements 1 and 2"), "stats": echo.json()},
            "baseline_b_one_cpu": {"label": "the same echo with both threads pinned to one CPU (reference only)", "stats": echo_one_cpu.json()},
            "driver_vkGetSemaphoreCounterValue_in_process": driver.counter_value.json(),
            "ratio_p50_vs_a": ratio,
            "ratio_p50_vs_b": gv.p50 / echo.p50,
            "target_ratio": GET_VALUE_MAX_RATIO,
            "pass": ratio <= GET_VALUE_MAX_RATIO,
        }),
    );

    let full = Stats::of(full);
    let ticket_lat = Stats::of(ticket_lat);
    let redeem_lat = Stats::of(redeem_lat);
    let ticket_path = Stats::of(ticket_path);
    let eratio = full.p50 / echo.p50;
    rows.push(Row::new(
        "Export RTT p50 (client.export, 1 MiB)",
        us(full.p50),
        format!("{} (raw UDS echo)", us(echo.p50)),
        Some(eratio),
        format!("<= {EXPORT_MAX_RATIO}x"),
        Some(eratio <= EXPORT_MAX_RATIO),
    ));
    rows.push(Row::info(
        "Export RTT p99",
        us(full.p99),
        us(echo.p99),
        Some(full.p99 / echo.p99),
    ));
    rows.push(Row::info(
        "  vkGetMemoryFdKHR + close in-process p50",
        us(driver.memory_fd.p50),
        "-".into(),
        None,
    ));
    rows.push(Row::info(
        "Ticket path p50 (Export RPC + redeem)",
        us(ticket_path.p50),
        format!("{} (raw UDS echo)", us(echo.p50)),
        Some(ticket_path.p50 / echo.p50),
    ));
    rows.push(Row::info(
        "  Export RPC alone p50",
        us(ticket_lat.p50),
        format!("{} (bare tonic unary)", us(health_lat.p50)),
        Some(ticket_lat.p50 / health_lat.p50),
    ));
    rows.push(Row::info(
        "  redeem on fd.sock alone p50",
        us(redeem_lat.p50),
        format!("{} (raw UDS echo)", us(echo.p50)),
        Some(redeem_lat.p50 / echo.p50),
    ));
    details.insert(
        "export_rtt".into(),
        json!({
            "buffer_bytes": EXPORT_BUFFER,
            "target": full.json(),
            "what": "client.export(): one request on the client's kept fd.sock connection (FdRequest.export), descriptor received",
            "ticket_path": ticket_path.json(),
            "ticket_path_what": "Export RPC (ticket) + redeem on the kept fd.sock connection: how a descriptor is handed to another process",
            "export_rpc_only": ticket_lat.json(),
            "redeem_only": redeem_lat.json(),
            "driver_vkGetMemoryFdKHR_and_close_in_process": driver.memory_fd.json(),
            "baseline": {"label": "raw Unix-socket echo round trip (baseline B)", "stats": echo.json()},
            "ratio_p50": eratio,
            "target_ratio": EXPORT_MAX_RATIO,
            "pass": eratio <= EXPORT_MAX_RATIO,
        }),
    );
    let after = session.info().await?.stats.unwrap_or_default();
    details.insert(
        "outstanding_tickets_after_export".into(),
        json!(after.outstanding_tickets),
    );

    // ---- 3. throughput ----
    println!(
        "[3/6] throughput: {THROUGHPUT_CLIENTS} connections for {} s, GetValue then health Check",
        THROUGHPUT_TIME.as_secs()
    );
    let mut clients = Vec::new();
    for _ in 0..THROUGHPUT_CLIENTS {
        clients.push(Client::connect(&dir).await?.semaphore(&sem_id));
    }
    let gv_tp = throughput(clients, |s| async move {
        s.value().await?;
        Ok(())
    })
    .await?;
    let mut hclients = Vec::new();
    for _ in 0..THROUGHPUT_CLIENTS {
        hclients.push(health_client(&health_server.path).await?);
    }
    let health_tp = throughput(hclients, |h| async move { health_check(&h).await }).await?;
    rows.push(Row::new(
        "GetValue/s, 8 connections",
        format!("{gv_tp:.0}/s"),
        format!("{health_tp:.0}/s (health Check, 8)"),
        Some(gv_tp / health_tp),
        format!(">= {THROUGHPUT_MIN:.0}/s"),
        Some(gv_tp >= THROUGHPUT_MIN),
    ));
    details.insert(
        "throughput".into(),
        json!({
            "clients": THROUGHPUT_CLIENTS,
            "seconds": THROUGHPUT_TIME.as_secs_f64(),
            "get_value_per_s": gv_tp,
            "baseline_health_check_per_s": health_tp,
            "ratio": gv_tp / health_tp,
            "target_per_s": THROUGHPUT_MIN,
            "pass": gv_tp >= THROUGHPUT_MIN,
        }),
    );
    drop(health);
    health_server.stop();

    // ---- 5. wake latency (before 4, which uses its own daemon) ----
    println!(
        "[4/6] host wake latency: {WAKE_ROUNDS} rounds, signal {} ms after the wait",
        WAKE_PENDING.as_millis()
    );
    let waiter = Client::connect(&dir).await?.semaphore(&sem_id);
    let signaler = sem.clone();
    let mut value = sem.value().await?;
    let (mut wake, mut from_call, mut signal_call) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..WAKE_WARMUP + WAKE_ROUNDS {
        value += 1;
        let w = waiter.clone();
        let target = value;
        let pending = tokio::spawn(async move {
            let got = w.wait(target, Duration::from_secs(5)).await;
            (got, Instant::now())
        });
        tokio::time::sleep(WAKE_PENDING).await;
        let s0 = Instant::now();
        signaler.signal(value).await?;
        let s1 = Instant::now();
        let (got, woke) = pending.await?;
        let got = got?;
        if got < value {
            return Err(format!("wait returned {got}, expected >= {value}").into());
        }
        if round >= WAKE_WARMUP {
            wake.push(signed_us(s1, woke));
            from_call.push(signed_us(s0, woke));
            signal_call.push(s1 - s0);
        }
    }
    let wake = SignedStats::of(wake);
    let from_call = SignedStats::of(from_call);
    let signal_call = Stats::of(signal_call);
    // References: Signal back to back (hot, no waiter), and GetValue after the same 2 ms pause.
    let mut signal_hot = Vec::with_capacity(1_000);
    for i in 0..1_100 {
        value += 1;
        let t = Instant::now();
        signaler.signal(value).await?;
        if i >= 100 {
            signal_hot.push(t.elapsed());
        }
    }
    let signal_hot = Stats::of(signal_hot);
    let mut gv_cold = Vec::with_capacity(WAKE_ROUNDS);
    for _ in 0..WAKE_ROUNDS {
        tokio::time::sleep(WAKE_PENDING).await;
        let t = Instant::now();
        getvalue.value().await?;
        gv_cold.push(t.elapsed());
    }
    let gv_cold = Stats::of(gv_cold);
    let wake_rows = vec![
        Row::new(
            "wake: Signal return -> Wait return p50",
            format!("{:.1} us", wake.p50),
            format!("{} (GetValue RTT p50)", us(gv.p50)),
            None,
            "report".into(),
            None,
        ),
        Row::info(
            "wake: Signal return -> Wait return p99",
            format!("{:.1} us", wake.p99),
            format!("{} (GetValue RTT p99)", us(gv.p99)),
            None,
        ),
        Row::info(
            "  Signal call, a Wait pending, p50",
            us(signal_call.p50),
            format!("{} (Signal back to back)", us(signal_hot.p50)),
            Some(signal_call.p50 / signal_hot.p50),
        ),
        Row::info(
            "  GetValue RTT after 2 ms idle p50",
            us(gv_cold.p50),
            format!("{} (GetValue back to back)", us(gv.p50)),
            Some(gv_cold.p50 / gv.p50),
        ),
    ];
    details.insert(
        "wake_latency".into(),
        json!({
            "rounds": WAKE_ROUNDS,
            "pending_before_signal_ms": WAKE_PENDING.as_secs_f64() * 1e3,
            "signal_return_to_wait_return_us": wake.json(),
            "signal_start_to_wait_return_us": from_call.json(),
            "signal_call_with_wait_pending": signal_call.json(),
            "signal_back_to_back": signal_hot.json(),
            "get_value_after_2ms_idle": gv_cold.json(),
            "reference_get_value_rtt": gv.json(),
            "note": "negative values: the Wait reply arrived before the Signal reply",
        }),
    );
    drop((
        waiter,
        signaler,
        getvalue,
        getvalue_client,
        buffer,
        sem,
        session,
    ));

    // ---- 4. memory, on a fresh daemon ----
    println!(
        "[5/6] daemon memory: idle, {SESSIONS} sessions with a semaphore each, after they end"
    );
    let (mem_rows, mem) = memory().await?;
    rows.extend(mem_rows);
    rows.extend(wake_rows);
    details.insert("memory".into(), mem);

    // ---- 6. CPU of pending waits ----
    println!(
        "[6/6] daemon CPU with one wait pending (no spin) for {} s, driver waits on and off",
        PENDING_SPAN.as_secs()
    );
    let (cpu_rows, cpu) = pending_wait_cpu(daemon).await?;
    rows.extend(cpu_rows);
    details.insert(
        "pending_wait_cpu_pct".into(),
        cpu["pending_wait_cpu_pct"].clone(),
    );
    details.insert("pending_wait_cpu".into(), cpu);

    Ok((rows, Value::Object(details)))
}

/// Percent of one core used between two [`gpushare_tests::process_cpu_ticks`] readings `span`
/// apart.
fn cpu_pct(before: u64, after: u64, span: Duration) -> f64 {
    (after.saturating_sub(before)) as f64
        / gpushare_tests::clock_ticks_per_second()
        / span.as_secs_f64()
        * 100.0
}

/// The daemon's CPU over `span` in percent of one core, from its clock ticks (threads that
/// end meanwhile included).
async fn daemon_cpu(pid: u32, span: Duration) -> BenchResult<f64> {
    let before = gpushare_tests::process_cpu_ticks(pid)?;
    tokio::time::sleep(span).await;
    let after = gpushare_tests::process_cpu_ticks(pid)?;
    Ok(cpu_pct(before, after, span))
}

/// What one pending host wait costs the daemon, on `daemon` (default settings) and on a daemon
/// with `driver_waits = false`: its CPU while the semaphore is idle (the baseline), over the
/// first [`PENDING_FIRST`] of a gRPC Wait (the call's handling included: the tight polling of a
/// young wait), over [`PENDING_SPAN`] of it (the target), and, on the default daemon, over
/// [`PENDING_SHORT_SPAN`] of an fd.sock wait without spin and of a Watch stream.
async fn pending_wait_cpu(daemon: &TestDaemon) -> BenchResult<(Vec<Row>, Value)> {
    let second = TestDaemon::start_with("driver_waits = false")
        .ok_or("the daemon with driver_waits = false did not start")?;
    let mut figures = serde_json::Map::new();
    let mut rows = Vec::new();
    for (label, d) in [("driver_waits_on", daemon), ("driver_waits_off", &second)] {
        let pid = d.pid();
        let c = Client::connect(d.runtime_dir()).await?;
        let pinned = CreateOptions {
            pin: true,
            ..CreateOptions::default()
        };
        let sem = c.create_semaphore(0, &pinned).await?;
        let exportable = match sem.describe().await?.details {
            Some(gpushare_client::v1::resource::Details::Semaphore(s)) => s.exportable,
            _ => false,
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle = daemon_cpu(pid, IDLE_SPAN).await?;

        let first_ns = gpushare_tests::process_cpu_ns(pid)?;
        let first_ticks = gpushare_tests::process_cpu_ticks(pid)?;
        let wait = tokio::spawn({
            let sem = sem.clone();
            async move { sem.wait(1, Duration::from_secs(120)).await }
        });
        tokio::time::sleep(PENDING_FIRST).await;
        let first = (gpushare_tests::process_cpu_ns(pid)?.saturating_sub(first_ns)) as f64
            / PENDING_FIRST.as_nanos() as f64
            * 100.0;
        tokio::time::sleep(PENDING_SPAN - PENDING_FIRST).await;
        let pending = cpu_pct(
            first_ticks,
            gpushare_tests::process_cpu_ticks(pid)?,
            PENDING_SPAN,
        );
        sem.signal(1).await?;
        if wait.await?? < 1 {
            return Err("the pending wait returned below its value".into());
        }
        let mut entry = json!({
            "semaphore_exportable": exportable,
            "idle_cpu_pct": idle,
            "first_100ms_cpu_pct": first,
            "pending_wait_cpu_pct": pending,
        });
        if label == "driver_waits_on" {
            let waiter = HostWaiter::connect(d.runtime_dir())?;
            let fd_wait = tokio::task::spawn_blocking({
                let id = sem.id().to_owned();
                move || waiter.wait(&id, 2, Duration::from_secs(120), Duration::ZERO)
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let fd = daemon_cpu(pid, PENDING_SHORT_SPAN).await?;
            sem.signal(2).await?;
            fd_wait.await??;
            let mut watch = sem.watch();
            tokio_stream::StreamExt::next(&mut watch)
                .await
                .ok_or("no first value")??;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let watched = daemon_cpu(pid, PENDING_SHORT_SPAN).await?;
            drop(watch);
            entry["fd_wait_cpu_pct"] = json!(fd);
            entry["watch_cpu_pct"] = json!(watched);
            rows.push(Row::new(
                "pending wait: daemon CPU, 10 s (Wait, no spin)",
                format!("{pending:.2}%"),
                format!("{idle:.2}% (idle)"),
                None,
                format!("<= {PENDING_WAIT_MAX_CPU_PCT}%"),
                Some(pending <= PENDING_WAIT_MAX_CPU_PCT),
            ));
            rows.push(Row::info(
                "  its first 100 ms",
                format!("{first:.1}%"),
                format!("{idle:.2}% (idle)"),
                None,
            ));
            rows.push(Row::info(
                "  fd.sock wait (spin 0), 5 s",
                format!("{fd:.2}%"),
                format!("{idle:.2}% (idle)"),
                None,
            ));
            rows.push(Row::info(
                "  Watch stream, 5 s",
                format!("{watched:.2}%"),
                format!("{idle:.2}% (idle)"),
                None,
            ));
            figures.insert("pending_wait_cpu_pct".into(), json!(pending));
            figures.insert("pass".into(), json!(pending <= PENDING_WAIT_MAX_CPU_PCT));
        } else {
            rows.push(Row::info(
                "  with driver_waits = false, 10 s",
                format!("{pending:.2}% (first 100 ms {first:.1}%)"),
                format!("{idle:.2}% (idle)"),
                None,
            ));
        }
        figures.insert(label.into(), entry);
        c.release(sem.id()).await?;
    }
    figures.insert(
        "what".into(),
        json!("percent of one core used by the daemon (all threads): idle, then while one gRPC Wait (no spin) is pending on a semaphore nothing signals; the first 100 ms include the call's handling"),
    );
    figures.insert("target_max_pct".into(), json!(PENDING_WAIT_MAX_CPU_PCT));
    Ok((rows, Value::Object(figures)))
}

/// What the driver calls behind GetValue and a redeem cost by themselves, in this process.
struct DriverCosts {
    counter_value: Stats,
    memory_fd: Stats,
}

/// Opens the default Vulkan device in this process (as the daemon does) and times
/// `vkGetSemaphoreCounterValue` on a timeline semaphore and `vkGetMemoryFdKHR` (plus closing the
/// descriptor) on a 1 MiB exportable buffer.
fn driver_costs() -> BenchResult<DriverCosts> {
    use gpushare_interop::vulkan::{Device, DeviceSelector, Instance};
    let instance = Instance::new("gpushare-bench")?;
    let device = Device::open(&instance, &DeviceSelector::Default)?;
    let sem = device
        .create_timeline_semaphore(0, true)
        .or_else(|_| device.create_timeline_semaphore(0, false))?;
    let buffer = device.create_exportable_buffer(EXPORT_BUFFER)?;
    let (mut counter, mut memory_fd) = (Vec::new(), Vec::new());
    for i in 0..DRIVER_N + DRIVER_N / 10 {
        let t = Instant::now();
        sem.value()?;
        let t1 = Instant::now();
        drop(buffer.export_fd()?);
        let t2 = Instant::now();
        if i >= DRIVER_N / 10 {
            counter.push(t1 - t);
            memory_fd.push(t2 - t1);
        }
    }
    Ok(DriverCosts {
        counter_value: Stats::of(counter),
        memory_fd: Stats::of(memory_fd),
    })
}

/// Baseline B: 64-byte round trips over a `SOCK_STREAM` Unix socket pair between two threads of
/// this process, one sending and timing, one echoing, each pinned to a CPU. Pinned because on a
/// VM the figure is bimodal: two threads that the scheduler happens to put on one CPU pay a
/// context switch per hop, two on different CPUs pay a cross-CPU wakeup.
struct Echo {
    requests: Option<std::sync::mpsc::Sender<usize>>,
    results: std::sync::mpsc::Receiver<Vec<Duration>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The CPUs of the sending and the echoing thread.
    cpus: (Option<usize>, Option<usize>),
}

impl Echo {
    /// Pins the timing thread to `cpus.0` and the echo thread to `cpus.1` (unpinned: `None`).
    fn start(cpus: (Option<usize>, Option<usize>)) -> Self {
        let (mut a, mut b) = StdUnixStream::pair().expect("socketpair");
        let echo = std::thread::spawn(move || {
            pin_to(cpus.1);
            let mut buf = [0u8; ECHO_BYTES];
            while b.read_exact(&mut buf).is_ok() {
                if b.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let (requests, requests_rx) = std::sync::mpsc::channel::<usize>();
        let (results_tx, results) = std::sync::mpsc::channel();
        let driver = std::thread::spawn(move || {
            pin_to(cpus.0);
            let message = [0x5au8; ECHO_BYTES];
            let mut back = [0u8; ECHO_BYTES];
            while let Ok(n) = requests_rx.recv() {
                let mut lat = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    a.write_all(&message).unwrap();
                    a.read_exact(&mut back).unwrap();
                    lat.push(t.elapsed());
                }
                if results_tx.send(lat).is_err() {
                    break;
                }
            }
            // Dropping `a` ends the echo thread.
        });
        Echo {
            requests: Some(requests),
            results,
            threads: vec![driver, echo],
            cpus,
        }
    }

    /// Times `n` round trips (blocking the calling thread until done) into `out`.
    fn round_trips(&mut self, n: usize, out: &mut Vec<Duration>) {
        self.requests
            .as_ref()
            .expect("echo running")
            .send(n)
            .unwrap();
        out.extend(self.results.recv().expect("echo results"));
    }

    fn cpus_text(&self) -> String {
        let cpu = |c: Option<usize>| c.map_or_else(|| "any".to_owned(), |c| c.to_string());
        format!("CPU {} -> CPU {}", cpu(self.cpus.0), cpu(self.cpus.1))
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        drop(self.requests.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The first two CPUs this process may run on (the second `None` on a one-CPU machine).
fn two_cpus() -> (Option<usize>, Option<usize>) {
    let Ok(set) = rustix::thread::sched_getaffinity(None) else {
        return (None, None);
    };
    let mut cpus = (0..rustix::thread::CpuSet::MAX_CPU).filter(|c| set.is_set(*c));
    (cpus.next(), cpus.next())
}

/// Pins the calling thread to `cpu` (nothing for `None`; failures leave it unpinned).
fn pin_to(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

/// Baseline A's server: tonic serving `grpc.health.v1.Health` on a Unix socket, on its own thread
/// and runtime (as the daemon is its own process with its own runtime).
struct HealthServer {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl HealthServer {
    fn start() -> Self {
        let dir = TempDir::new();
        let path = dir.path().join("health.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sock = path.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&sock).expect("bind health socket");
                let (_reporter, service) = tonic_health::server::health_reporter();
                ready_tx.send(()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener),
                        async move {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .expect("health server");
            });
        });
        ready_rx.recv().expect("health server started");
        HealthServer {
            path,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A health client over its own connection to `path` (the connector of gpushare-client).
async fn health_client(path: &Path) -> BenchResult<HealthClient<Channel>> {
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(HealthClient::new(channel))
}

async fn health_check(client: &HealthClient<Channel>) -> BenchResult<()> {
    client
        .clone()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(())
}

/// Calls per second over all `clients`, each in its own task calling `call` back to back for
/// [`THROUGHPUT_TIME`] (after 200 warm-up calls each).
async fn throughput<C, F, Fut>(clients: Vec<C>, call: F) -> BenchResult<f64>
where
    C: Clone + Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = BenchResult<()>> + Send + 'static,
{
    for c in &clients {
        for _ in 0..200 {
            call(c.clone()).await?;
        }
    }
    let start = Instant::now();
    let end = start + THROUGHPUT_TIME;
    let mut tasks = JoinSet::new();
    for c in clients {
        let call = call.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                call(c.clone()).await?;
                n += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(n)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Measurement 4 on a daemon of its own: RSS idle, with [`SESSIONS`] sessions each holding a
/// semaphore over its own connection, and after they all end.
async fn memory() -> BenchResult<(Vec<Row>, Value)> {
    let daemon = TestDaemon::start().ok_or("second daemon did not start")?;
    let dir = daemon.runtime_dir().to_owned();
    let observer = Client::connect(&dir).await?;
    let stats = |c: Client| async move { c.info().await.map(|i| i.stats.unwrap_or_default()) };
    // Warm-up: one session with one semaphore, ended.
    {
        let c = Client::connect_with_session(&dir, "bench-warmup").await?;
        c.create_semaphore(0, &CreateOptions::default()).await?;
    }
    wait_for(|| {
        let o = observer.clone();
        async move {
            stats(o)
                .await
                .map(|s| s.live_sessions == 0 && s.live_resources == 0)
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = daemon.rss_kib();
    let idle_fds = daemon.fd_count();

    let t = Instant::now();
    let held = open_sessions(&dir).await?;
    let setup_s = t.elapsed().as_secs_f64();
    let loaded_stats = stats(observer.clone()).await?;
    if loaded_stats.live_sessions != SESSIONS as u64
        || loaded_stats.live_resources != SESSIONS as u64
    {
        return Err(format!(
            "expected {SESSIONS} sessions and resources, daemon reports {} and {}",
            loaded_stats.live_sessions, loaded_stats.live_resources
        )
        .into());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = daemon.rss_kib();
    let loaded_fds = daemon.fd_count();
    let threads = daemon.thread_count();

    let t = Instant::now();
    drop(held);
    wait_for(|| {
        let o = observer.clone();
        async move {
            stats(o)
                .await
                .map(|s| s.live_sessions == 0 && s.live_resources == 0)
        }
    })
    .await?;
    let teardown_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = daemon.rss_kib();
    let after_stats = stats(observer.clone()).await?;
    // More cycles: does memory the first one left resident get reused, or added to?
    let mut cycles = vec![(loaded, after)];
    for _ in 1..MEMORY_CYCLES {
        let held = open_sessions(&dir).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let loaded = daemon.rss_kib();
        drop(held);
        wait_for(|| {
            let o = observer.clone();
            async move {
                stats(o)
                    .await
                    .map(|s| s.live_sessions == 0 && s.live_resources == 0)
            }
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        cycles.push((loaded, daemon.rss_kib()));
    }
    let last = cycles[cycles.len() - 1];
    let final_stats = stats(observer.clone()).await?;
    drop(observer);
    drop(daemon);

    let per_session = (loaded as f64 - idle as f64) / SESSIONS as f64;
    let rows = vec![
        Row::info("daemon RSS idle", format!("{idle} KiB"), "-".into(), None),
        Row::info(
            &format!("daemon RSS, {SESSIONS} sessions x 1 semaphore"),
            format!("{loaded} KiB"),
            format!("{idle} KiB (idle)"),
            Some(loaded as f64 / idle as f64),
        ),
        Row::new(
            "daemon RSS per session",
            format!("{per_session:.1} KiB"),
            "-".into(),
            None,
            format!("<= {SESSION_MAX_KIB:.0} KiB"),
            Some(per_session <= SESSION_MAX_KIB),
        ),
        Row::info(
            "daemon RSS after sessions ended",
            format!("{after} KiB"),
            format!("{idle} KiB (idle)"),
            Some(after as f64 / idle as f64),
        ),
        Row::info(
            &format!("daemon RSS, cycle {MEMORY_CYCLES} loaded / ended"),
            format!("{} / {} KiB", last.0, last.1),
            format!("{loaded} KiB (cycle 1 loaded)"),
            Some(last.0 as f64 / loaded as f64),
        ),
        Row::new(
            "live_resources after sessions ended",
            after_stats.live_resources.to_string(),
            "-".into(),
            None,
            "0".into(),
            Some(after_stats.live_resources == 0),
        ),
    ];
    let details = json!({
        "sessions": SESSIONS,
        "rss_idle_kib": idle,
        "rss_loaded_kib": loaded,
        "rss_after_kib": after,
        "rss_per_cycle_loaded_ended_kib": cycles,
        "kib_per_session_high_water": (cycles.iter().map(|c| c.0).max().unwrap_or(loaded) as f64 - idle as f64) / SESSIONS as f64,
        "live_resources_after_last_cycle": final_stats.live_resources,
        "kib_per_session": per_session,
        "target_kib_per_session": SESSION_MAX_KIB,
        "pass": per_session <= SESSION_MAX_KIB,
        "fds_idle": idle_fds,
        "fds_loaded": loaded_fds,
        "threads_loaded": threads,
        "setup_seconds": setup_s,
        "teardown_seconds": teardown_s,
        "live_sessions_after": after_stats.live_sessions,
        "live_resources_after": after_stats.live_resources,
        "note": "separate daemon; idle measured after one warm-up session ended; RSS read 300 ms after each step",
    });
    Ok((rows, details))
}

/// Opens [`SESSIONS`] sessions, each over its own connection and holding one semaphore, in
/// concurrent batches of [`SESSION_BATCH`].
async fn open_sessions(dir: &Path) -> BenchResult<Vec<gpushare_client::Semaphore>> {
    let mut held = Vec::with_capacity(SESSIONS);
    for batch in 0..SESSIONS.div_ceil(SESSION_BATCH) {
        let mut set = JoinSet::new();
        for i in 0..SESSION_BATCH.min(SESSIONS - batch * SESSION_BATCH) {
            let dir = dir.to_owned();
            set.spawn(async move {
                let c = Client::connect_with_session(&dir, &format!("bench-{batch}-{i}")).await?;
                let s = c.create_semaphore(0, &CreateOptions::default()).await?;
                Ok::<_, gpushare_client::Error>(s)
            });
        }
        while let Some(r) = set.join_next().await {
            held.push(r??);
        }
    }
    Ok(held)
}

/// Polls `check` every 10 ms until it says true; fails after 10 s.
async fn wait_for<F, Fut>(check: F) -> BenchResult<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = gpushare_client::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("daemon state did not settle within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Latency percentiles, in seconds.
#[derive(Clone, Copy)]
struct Stats {
    n: usize,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn of(samples: Vec<Duration>) -> Self {
        let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        Stats {
            n: s.len(),
            min: s[0],
            p50: pct(&s, 0.50),
            p90: pct(&s, 0.90),
            p99: pct(&s, 0.99),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        }
    }

    fn json(&self) -> Value {
        let us = |x: f64| (x * 1e9).round() / 1e3;
        json!({
            "n": self.n,
            "min_us": us(self.min),
            "p50_us": us(self.p50),
            "p90_us": us(self.p90),
            "p99_us": us(self.p99),
            "max_us": us(self.max),
            "mean_us": us(self.mean),
        })
    }
}

/// Percentiles of signed samples in microseconds.
struct SignedStats {
    n: usize,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    negative: usize,
}

impl SignedStats {
    fn of(mut s: Vec<f64>) -> Self {
        s.sort_by(f64::total_cmp);
        SignedStats {
            n: s.len(),
            min: s[0],
            p50: pct(&s, 0.50),
            p90: pct(&s, 0.90),
            p99: pct(&s, 0.99),
            max: s[s.len() - 1],
            negative: s.iter().filter(|x| **x < 0.0).count(),
        }
    }

    fn json(&self) -> Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        json!({
            "n": self.n,
            "min_us": r(self.min),
            "p50_us": r(self.p50),
            "p90_us": r(self.p90),
            "p99_us": r(self.p99),
            "max_us": r(self.max),
            "negative": self.negative,
        })
    }
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `to - from` in microseconds, negative when `to` came first.
fn signed_us(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1e6,
        None => -(from.duration_since(to).as_secs_f64() * 1e6),
    }
}

fn us(seconds: f64) -> String {
    let us = seconds * 1e6;
    if us < 10.0 {
        format!("{us:.3} us")
    } else {
        format!("{us:.1} us")
    }
}
