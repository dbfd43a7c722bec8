//! `gpushare-load`: the load test of issue 4 against the real `gpushared`.
//!
//! ```text
//! cargo build --release --bins
//! target/release/gpushare-load [--json PATH] [--calls N]   # default bench/results/load-latest.json, N = 20000
//!     [--quota N] [--seconds S] [--streams N] [--daemon-cpus N] [--callers-call KIND]
//! ```
//!
//! 1. **Unloaded**: one client, 2,000 mixed calls one after another: the latency baseline.
//! 2. **Capacity**: 16 clients (each its own connection and session) × N mixed calls, all at
//!    once. Target: zero errors. Calls per second give the capacity.
//! 3. **Overload**: a second daemon with `quotas.calls_in_flight_per_uid = 1` (`--quota`) and
//!    `calls_in_flight` one more, and 160 callers (10 × the capacity run's 16): 16 connections
//!    × 10 tasks (`--streams` tasks per connection), each calling as fast as it can for 10 s
//!    (`--seconds`). The daemon's admitted rate under the quota is its capacity there; the
//!    offered rate (every attempt) must be at least 10 × that. (The quota is 1 so that the
//!    callers' six CPUs can offer that much: the daemon refuses a call in about the time the
//!    callers take to make one.)
//!    Beside the callers, a **probe** client in its own process (as a well-behaved client of
//!    a shared daemon is), with its own connection, makes one mixed call every 500 µs: its
//!    latencies are what such a client sees while the daemon is overloaded, free of the
//!    callers' own scheduling delays (160 busy tasks in one process would put their queueing
//!    into every figure they measure). On machines with 8 CPUs or more the daemon runs on the
//!    first half (`--daemon-cpus`; started there, so that it sizes its runtime to them, as
//!    under a service's `CPUAffinity=`), the callers on the rest but the last two CPUs, the
//!    probe on the last. As root, a second probe runs as uid 65534 on the CPU before: another
//!    tenant, whose calls the callers' uid cannot get refused (the total has room for one
//!    more than the callers' uid may take). Its targets: no refusal, and its admitted p99
//!    within 3 × its own unloaded p99. The probe makes 2,000 calls at its pace against the
//!    idle daemon before the callers start and 2,000 more after they stopped: together, its
//!    unloaded p99, the baseline of the targets (phase 1's figure is shown beside it; pooling both sides keeps
//!    a drift of the machine's noise during the run out of the ratio). Targets: offered ≥ 10 ×
//!    admitted; the probe's admitted calls' p99 within 3 × its unloaded p99; refusals
//!    RESOURCE_EXHAUSTED and fast (the probe's refused calls' p99 within 3 × the same); no
//!    other error; the daemon's resident memory bounded (peak ≤ 2 × before). The callers' own
//!    figures are reported beside. `--callers-call KIND` makes every caller's call one kind
//!    (GetValue, Write, Read, Describe, export) instead of the mix.
//!
//! Mixed calls: GetValue 30 %, Signal 10 %, Write 4 KiB 20 %, Read 4 KiB 20 %, Describe 10 %,
//! direct export on fd.sock 10 % (the descriptor is received and closed).
//!
//! Exit status: 0 when every phase ran (targets may fail: they are FAIL rows); 1 on an error that
//! stopped the run; 3 when no Vulkan device exists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpushare_tests::report::{machine_info, print_table, Row};
use gpushare_tests::rng::SplitMix64;
use gpushare_tests::TestDaemon;
use serde_json::json;
use tonic::Code;

mod mix;
mod probe;

use mix::{call, probe_mix, Kit, KINDS};
use probe::{probe_child, Phase, ProbeChild, ProbeRun};

const CLIENTS: usize = 16;
const UNLOADED_CALLS: usize = 2_000;
const OVERLOAD_FACTOR: usize = 10;
const PROBE_EVERY: Duration = Duration::from_micros(500);
/// What the command line may change.
#[derive(Clone, Copy)]
struct Settings {
    /// Mixed calls per client in the capacity run.
    calls: usize,
    /// The overload daemon's `quotas.calls_in_flight_per_uid` (its `calls_in_flight` is one more).
    quota: usize,
    /// How long the overload lasts.
    overload: Duration,
    /// CPUs for the daemons (`None`: half of them).
    daemon_cpus: Option<usize>,
    /// Overload callers per connection (HTTP/2 streams on one client).
    streams: usize,
    /// The overload callers' calls: one kind of [`KINDS`], or the mix (`None`).
    callers_kind: Option<usize>,
}

static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

fn settings() -> Settings {
    *SETTINGS.get().expect("settings are set in main")
}

/// Where each part runs.
#[derive(Clone)]
struct Cpus {
    daemon: Vec<usize>,
    callers: Vec<usize>,
    probe: usize,
    /// The probe of another uid ([`OTHER_UID`]).
    other_probe: usize,
}

/// CPU sets: `None` below 8 CPUs (no pinning).
type CpuPlan = Option<Cpus>;

/// The uid (and gid) of the second probe, when the test runs as root.
const OTHER_UID: u32 = 65534;

/// Decided once, from the CPUs the process may use at its start: `main` then pins itself to the
/// callers' CPUs, after which `available_parallelism` would only see those.
fn cpu_plan() -> CpuPlan {
    static PLAN: std::sync::OnceLock<CpuPlan> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let d = settings()
            .daemon_cpus
            .unwrap_or(n / 2)
            .clamp(1, n.saturating_sub(3).max(1));
        (n >= 8).then(|| Cpus {
            daemon: (0..d).collect(),
            callers: (d..n - 2).collect(),
            probe: n - 1,
            other_probe: n - 2,
        })
    })
    .clone()
}

fn pin_thread(cpus: &[usize]) {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("cannot pin to CPUs {cpus:?}: {e}");
    }
}

/// Starts a daemon on the daemon's CPUs: it inherits this thread's affinity, and sizes its
/// runtime to those CPUs as it would under a service's `CPUAffinity=`.
fn start_daemon(config: &str) -> Option<TestDaemon> {
    match cpu_plan() {
        Some(cpus) => {
            pin_thread(&cpus.daemon);
            let d = TestDaemon::start_with(config);
            pin_thread(&cpus.callers);
            d
        }
        None => TestDaemon::start_with(config),
    }
}

/// The probe's admitted (and refused) calls' p99, at most this many times its unloaded p99.
const ADMITTED_P99_MAX: f64 = 3.0;
/// The overload offers at least this many times the calls the daemon admits.
const OFFERED_MIN: f64 = 10.0;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
/// Latencies of admitted and refused calls (µs), other errors, and the first of those.
type Outcome = (Vec<f64>, Vec<f64>, u64, Option<String>);
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A probe's unloaded baseline: its calls before and after the overload, pooled and sorted.
fn run_unloaded(before: &[f64], after: &[f64]) -> Vec<f64> {
    sorted([before, after].concat())
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A target row: the p99 of `sorted` (µs) within [`ADMITTED_P99_MAX`] × `base_p99`. With no
/// sample it passes only when `none_ok`.
fn p99_row(metric: &str, sorted: &[f64], base_p99: f64, base: &str, none_ok: bool) -> Row {
    let p99 = pct(sorted, 99.0);
    Row::new(
        metric,
        format!(
            "{} ({} calls, p50 {})",
            us(p99),
            sorted.len(),
            us(pct(sorted, 50.0))
        ),
        format!("{} {base}", us(base_p99)),
        Some(p99 / base_p99),
        format!("<= {ADMITTED_P99_MAX:.0}x"),
        Some(if sorted.is_empty() {
            none_ok
        } else {
            p99 <= ADMITTED_P99_MAX * base_p99
        }),
    )
}

fn us(x: f64) -> String {
    format!("{x:.1} us")
}

fn main() -> ExitCode {
    const USAGE: &str = "usage: gpushare-load [--json PATH] [--calls N] [--quota N] [--seconds S] [--daemon-cpus N] [--streams N] [--callers-call KIND]";
    let mut json_path = PathBuf::from("bench/results/load-latest.json");
    let mut set = Settings {
        calls: 20_000,
        quota: 1,
        overload: Duration::from_secs(10),
        daemon_cpus: None,
        streams: 10,
        callers_kind: None,
    };
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--probe-child") {
        let (dir, cpu) = (args.nth(1), args.next());
        let Some(dir) = dir else {
            eprintln!("usage: gpushare-load --probe-child DIR CPU|-");
            return ExitCode::from(2);
        };
        return match probe_child(PathBuf::from(dir), cpu.and_then(|c| c.parse().ok())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gpushare-load probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    while let Some(a) = args.next() {
        let value = args.next();
        let ok = match (a.as_str(), value.as_deref()) {
            ("--json", Some(p)) => {
                json_path = PathBuf::from(p);
                true
            }
            ("--calls", Some(n)) => n.parse().map(|n| set.calls = n).is_ok(),
            ("--quota", Some(n)) => n.parse().map(|n: usize| set.quota = n.max(1)).is_ok(),
            ("--seconds", Some(n)) => n
                .parse()
                .map(|s: f64| set.overload = Duration::from_secs_f64(s.max(0.5)))
                .is_ok(),
            ("--daemon-cpus", Some(n)) => n.parse().map(|n| set.daemon_cpus = Some(n)).is_ok(),
            ("--streams", Some(n)) => n.parse().map(|n| set.streams = n).is_ok(),
            ("--callers-call", Some(k)) => KINDS
                .iter()
                .position(|n| n.eq_ignore_ascii_case(k) && *n != "Signal")
                .map(|k| set.callers_kind = Some(k))
                .is_some(),
            _ => false,
        };
        if !ok {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    SETTINGS.get_or_init(|| set);
    // The callers' CPUs for this process's runtime (the daemons are moved off them).
    if let Some(cpus) = cpu_plan() {
        pin_thread(&cpus.callers);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(run(json_path)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gpushare-load failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(json_path: PathBuf) -> Res<ExitCode> {
    let Settings {
        calls,
        quota,
        overload,
        ..
    } = settings();
    let started = Instant::now();
    let machine = machine_info();
    println!(
        "gpushare-load on {} ({} CPUs), {} UTC",
        machine["hostname"].as_str().unwrap_or("?"),
        machine["nproc"],
        machine["date_utc"].as_str().unwrap_or("?"),
    );
    let Some(daemon) = start_daemon("") else {
        eprintln!("no Vulkan device: nothing to measure");
        return Ok(ExitCode::from(3));
    };
    let dir = daemon.runtime_dir().to_owned();
    let mut rows = Vec::new();

    // 1. Unloaded.
    println!("[1/3] unloaded: one client, {UNLOADED_CALLS} mixed calls");
    let mut kit = Kit::new(&dir, "load unloaded").await?;
    let mut rng = SplitMix64(1);
    for _ in 0..200 {
        call(&mut kit, rng.below(100)).await?;
    }
    let mut lat = Vec::with_capacity(UNLOADED_CALLS);
    for _ in 0..UNLOADED_CALLS {
        let t = Instant::now();
        call(&mut kit, rng.below(100)).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(kit);
    let unloaded = sorted(lat);
    let (u50, u99) = (pct(&unloaded, 50.0), pct(&unloaded, 99.0));

    // 2. Capacity: 16 clients x `calls`, zero errors.
    println!("[2/3] capacity: {CLIENTS} clients x {calls} mixed calls");
    let rss_before = daemon.rss_kib();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let dir = dir.clone();
        tasks.spawn(async move {
            let mut kit = Kit::new(&dir, &format!("load {i}")).await?;
            let mut rng = SplitMix64(100 + i as u64);
            let mut errors = 0u64;
            let mut first: Option<String> = None;
            let mut lat = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t = Instant::now();
                if let Err(e) = call(&mut kit, rng.below(100)).await {
                    errors += 1;
                    first.get_or_insert(e.to_string());
                }
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Res::Ok((errors, first, lat))
        });
    }
    let mut errors = 0;
    let mut first_error = None;
    let mut loaded = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (e, f, l) = r??;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
        loaded.extend(l);
    }
    let capacity_s = t.elapsed().as_secs_f64();
    let total = (CLIENTS * calls) as f64;
    let rate = total / capacity_s;
    let loaded = sorted(loaded);
    let rss_capacity = daemon.rss_kib();
    rows.push(Row::new(
        &format!("{CLIENTS} clients x {calls} mixed calls: errors"),
        errors.to_string(),
        format!("{:.0} calls/s", rate),
        None,
        "0".into(),
        Some(errors == 0),
    ));
    rows.push(Row::info(
        "  call latency p50 / p99 under that load",
        format!("{} / {}", us(pct(&loaded, 50.0)), us(pct(&loaded, 99.0))),
        format!("unloaded {} / {}", us(u50), us(u99)),
        Some(pct(&loaded, 99.0) / u99),
    ));
    drop(daemon);

    // 3. Overload: 10x the callers against a daemon that admits `quota` calls of their uid.
    let callers = CLIENTS * OVERLOAD_FACTOR;
    println!(
        "[3/3] overload: {callers} callers for {} s, calls_in_flight_per_uid = {quota}, calls_in_flight = {}",
        overload.as_secs(),
        quota + 1
    );
    // The callers' uid may have `quota` calls in flight, everybody together one more: the
    // other uid's probe always finds room, however hard the callers' uid floods.
    let Some(daemon) = start_daemon(&format!(
        "socket_mode = 0o666\n[quotas]\ncalls_in_flight = {}\ncalls_in_flight_per_uid = {quota}\n",
        quota + 1
    )) else {
        return Ok(ExitCode::from(3));
    };
    let dir = daemon.runtime_dir().to_owned();
    let rss_overload_before = daemon.rss_kib();
    // The probe: a client in its own process (as a well-behaved client of a shared daemon is),
    // with its own runtime and connection, on its own CPU. It first measures its own unloaded
    // latency against this daemon (the same calls at the same pace, nobody else calling), then
    // runs under the overload, then, once the callers have stopped, measures its unloaded
    // latency again: its baseline pools both, so that a drift of the machine's noise during the
    // run weighs on both sides of the ratio.
    let exe = std::env::current_exe()?;
    let mut probe = ProbeChild::spawn(&exe, &dir, cpu_plan().map(|c| c.probe), None)?;
    // As root, a second probe runs as another uid: what a well-behaved client of another
    // tenant sees while one uid floods the daemon (`calls_in_flight_per_uid`). It runs a copy
    // of this binary that the other uid can reach.
    let mut other_probe = if rustix::process::getuid().is_root() {
        let exe = gpushare_tests::bin_copy_in("gpushare-load", daemon.scratch());
        Some(ProbeChild::spawn(
            &exe,
            &dir,
            cpu_plan().map(|c| c.other_probe),
            Some(OTHER_UID),
        )?)
    } else {
        None
    };
    tokio::task::block_in_place(|| {
        probe.expect("ready")?;
        other_probe.as_mut().map_or(Ok(()), |p| p.expect("ready"))
    })?;
    // The callers' connections and sessions, made before the overload starts.
    let streams = settings().streams.clamp(1, callers);
    let mut kits = Vec::new();
    for i in 0..callers.div_ceil(streams) {
        kits.push(Kit::new(&dir, &format!("overload {i}")).await?);
    }
    let deadline = Instant::now() + overload;
    for p in std::iter::once(&mut probe).chain(other_probe.as_mut()) {
        p.send(&format!("go {}", overload.as_micros()))?;
    }
    let (cpu0, cpu_t0) = (
        gpushare_tests::process_cpu_ticks(daemon.pid())?,
        Instant::now(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (i, kit) in kits.into_iter().enumerate() {
        // One connection and session per `streams` callers (HTTP/2 streams).
        let kit = Arc::new(tokio::sync::Mutex::new(kit));
        let shared = {
            let k = kit.lock().await;
            (k.client.clone(), k.buf.clone(), k.sem.clone())
        };
        for j in (0..streams).take_while(|j| i * streams + j < callers) {
            let (client, buf, sem) = shared.clone();
            tasks.spawn(async move {
                let mut kit = Kit {
                    client,
                    buf,
                    sem,
                    // Signals are left out of the overload (concurrent tasks share a semaphore).
                    next_signal: 0,
                    data: vec![0x5a; 4096],
                };
                let mut rng = SplitMix64(1000 + (i * streams + j) as u64);
                let (mut admitted, mut shed, mut other) = (Vec::new(), Vec::new(), 0u64);
                let mut first_other = None;
                let only = settings().callers_kind.map(|k| [0, 30, 40, 60, 80, 90][k]);
                while Instant::now() < deadline {
                    let r = only.unwrap_or_else(|| probe_mix(&mut rng));
                    let t = Instant::now();
                    let out = call(&mut kit, r).await;
                    let us = t.elapsed().as_secs_f64() * 1e6;
                    match out {
                        Ok(()) => admitted.push(us),
                        Err(e) if e.code() == Some(Code::ResourceExhausted) => shed.push(us),
                        Err(e) => {
                            other += 1;
                            first_other.get_or_insert(e.to_string());
                        }
                    }
                }
                (admitted, shed, other, first_other)
            });
        }
        drop(kit);
    }
    let mut admitted = Vec::new();
    let mut shed = Vec::new();
    let mut other = 0;
    let mut first_other = None;
    let mut rss_peak = daemon.rss_kib();
    while let Some(r) = tasks.join_next().await {
        let (a, s, o, f) = r?;
        admitted.extend(a);
        shed.extend(s);
        other += o;
        if first_other.is_none() {
            first_other = f;
        }
        rss_peak = rss_peak.max(daemon.rss_kib());
    }
    // The callers have stopped: the probes measure their unloaded latency again.
    for p in std::iter::once(&mut probe).chain(other_probe.as_mut()) {
        p.send("done")?;
    }
    let overload_cpu = (gpushare_tests::process_cpu_ticks(daemon.pid())? - cpu0) as f64
        / gpushare_tests::clock_ticks_per_second()
        / cpu_t0.elapsed().as_secs_f64();
    let daemon_cpus = cpu_plan().map_or(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        |cpus| cpus.daemon.len(),
    );
    let ProbeRun {
        before,
        after,
        overload: (probe_ok, probe_shed, probe_other, probe_first),
        by_kind,
    } = tokio::task::block_in_place(|| probe.finish())?;
    let other_run = match other_probe {
        Some(p) => Some(tokio::task::block_in_place(|| p.finish())?),
        None => None,
    };
    // The probe's p50 / p99 per kind of call, unloaded and admitted under the overload.
    let kind_figures: Vec<(&str, [(f64, f64); 2])> = KINDS
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let phase = |loaded: bool| {
                let v = sorted(
                    by_kind
                        .iter()
                        .filter(|&&(kk, p, _)| kk == k && (p == Phase::Overload) == loaded)
                        .map(|&(_, _, us)| us)
                        .collect(),
                );
                (pct(&v, 50.0), pct(&v, 99.0))
            };
            (*name, [phase(false), phase(true)])
        })
        .collect();
    let (before, after) = (sorted(before), sorted(after));
    let probe_base = run_unloaded(&before, &after);
    let (b50, b99) = (pct(&probe_base, 50.0), pct(&probe_base, 99.0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = daemon.rss_kib();
    let admitted = sorted(admitted);
    let shed = sorted(shed);
    let (probe_ok, probe_shed) = (sorted(probe_ok), sorted(probe_shed));
    let secs = overload.as_secs_f64();
    let admitted_rate = (admitted.len() + probe_ok.len()) as f64 / secs;
    let offered = (admitted.len() + shed.len() + probe_ok.len() + probe_shed.len()) as f64 / secs;
    let mut other = other + probe_other;
    if first_other.is_none() {
        first_other = probe_first;
    }
    let p99 = pct(&probe_ok, 99.0);
    let s99 = pct(&probe_shed, 99.0);
    rows.push(Row::new(
        &format!("overload: {callers} callers, calls offered per second"),
        format!("{offered:.0}/s"),
        format!("{admitted_rate:.0}/s admitted (capacity at calls_in_flight_per_uid = {quota})"),
        Some(offered / admitted_rate),
        format!(">= {OFFERED_MIN:.0}x"),
        Some(offered >= OFFERED_MIN * admitted_rate),
    ));
    rows.push(Row::info(
        "  daemon CPU during the overload (CPUs busy, of those it runs on)",
        format!("{overload_cpu:.2} of {daemon_cpus}"),
        "-".into(),
        Some(overload_cpu / daemon_cpus as f64),
    ));
    rows.push(Row::info(
        "  probe unloaded (same daemon, pace and CPU; before and after the callers)",
        format!(
            "p50 {} / p99 {} (before {}, after {})",
            us(b50),
            us(b99),
            us(pct(&before, 99.0)),
            us(pct(&after, 99.0))
        ),
        format!("{} unloaded p99 (phase 1)", us(u99)),
        Some(b99 / u99),
    ));
    rows.push(Row::info(
        "  probe p99 by call, unloaded -> admitted under overload",
        kind_figures
            .iter()
            .filter(|(_, [u, l])| u.1.is_finite() || l.1.is_finite())
            .map(|(n, [u, l])| format!("{n} {:.0}->{:.0}", u.1, l.1))
            .collect::<Vec<_>>()
            .join(", "),
        "us".into(),
        None,
    ));
    rows.push(p99_row(
        "  probe's admitted calls: p99",
        &probe_ok,
        b99,
        "probe unloaded p99",
        false,
    ));
    rows.push(p99_row(
        "  probe's refused calls (RESOURCE_EXHAUSTED): p99",
        &probe_shed,
        b99,
        "probe unloaded p99",
        true,
    ));
    // The other uid's probe: never refused (its uid has room whatever the callers' uid does),
    // and its admitted calls' p99 within the same bound of its own unloaded p99.
    let other_json = match &other_run {
        Some(run) => {
            let base = run_unloaded(&run.before, &run.after);
            let (ok, refused) = (sorted(run.overload.0.clone()), run.overload.1.len());
            let (o99, ob99) = (pct(&ok, 99.0), pct(&base, 99.0));
            other += run.overload.2;
            if first_other.is_none() {
                first_other = run.overload.3.clone();
            }
            rows.push(Row::new(
                &format!("  probe of another uid ({OTHER_UID}): refused"),
                format!("{refused} of {}", refused + ok.len()),
                "-".into(),
                None,
                "0".into(),
                Some(refused == 0),
            ));
            rows.push(p99_row(
                "  probe of another uid: admitted calls p99",
                &ok,
                ob99,
                "its unloaded p99",
                false,
            ));
            json!({"uid": OTHER_UID, "unloaded_p50_us": pct(&base, 50.0), "unloaded_p99_us": ob99,
                   "admitted": ok.len(), "refused": refused,
                   "admitted_p50_us": pct(&ok, 50.0), "admitted_p99_us": o99})
        }
        None => {
            rows.push(Row::info(
                "  probe of another uid",
                "SKIP: not root (it runs as another uid)".into(),
                "-".into(),
                None,
            ));
            serde_json::Value::Null
        }
    };
    rows.push(Row::new(
        "  callers: refused with RESOURCE_EXHAUSTED",
        format!(
            "{} of {} ({:.0}%), p50 {} p99 {}",
            shed.len(),
            admitted.len() + shed.len(),
            100.0 * shed.len() as f64 / (admitted.len() + shed.len()).max(1) as f64,
            us(pct(&shed, 50.0)),
            us(pct(&shed, 99.0))
        ),
        "-".into(),
        None,
        "some".into(),
        Some(!shed.is_empty()),
    ));
    rows.push(Row::info(
        "  callers: admitted calls p50 / p99 (their own queueing included)",
        format!(
            "{} / {}",
            us(pct(&admitted, 50.0)),
            us(pct(&admitted, 99.0))
        ),
        format!("{} unloaded p99", us(u99)),
        Some(pct(&admitted, 99.0) / u99),
    ));
    rows.push(Row::new(
        "  other errors",
        other.to_string(),
        "-".into(),
        None,
        "0".into(),
        Some(other == 0),
    ));
    rows.push(Row::new(
        "  daemon RSS before / peak / after overload",
        format!("{rss_overload_before} / {rss_peak} / {rss_after} KiB"),
        format!("capacity run: {rss_before} -> {rss_capacity} KiB"),
        Some(rss_peak as f64 / rss_overload_before.max(1) as f64),
        "peak <= 2x".into(),
        Some(rss_peak <= 2 * rss_overload_before),
    ));
    drop(daemon);

    print_table(&rows);
    let failed = gpushare_tests::report::failed(&rows);
    if let Some(e) = &first_error {
        println!("first error in the capacity run: {e}");
    }
    if let Some(e) = &first_other {
        println!("first unexpected error in the overload: {e}");
    }
    println!(
        "{}",
        if failed.is_empty() {
            "all targets PASS".to_owned()
        } else {
            format!("FAIL: {}", failed.join("; "))
        }
    );
    let report = json!({
        "machine": machine,
        "settings": {
            "clients": CLIENTS, "calls_per_client": calls, "unloaded_calls": UNLOADED_CALLS,
            "overload_callers": callers, "overload_seconds": overload.as_secs_f64(),
            "calls_in_flight_per_uid": quota, "calls_in_flight": quota + 1,
            "callers_per_connection": settings().streams,
            "callers_call": settings().callers_kind.map_or("mix", |k| KINDS[k]),
            "probe": "own process",
            "probe_every_us": PROBE_EVERY.as_micros() as u64,
            "cpus": cpu_plan().map(|c| json!({"daemon": c.daemon, "callers": c.callers,
                                             "probe": c.probe, "other_uid_probe": c.other_probe})),
            "mix": "GetValue 30%, Signal 10% (not in the overload), Write 4 KiB 20%, Read 4 KiB 20%, Describe 10%, export on fd.sock 10%",
        },
        "measurements": {
            "unloaded_us": {"p50": u50, "p99": u99, "n": unloaded.len()},
            "capacity": {"errors": errors, "calls": total, "seconds": capacity_s, "calls_per_s": rate,
                          "p50_us": pct(&loaded, 50.0), "p99_us": pct(&loaded, 99.0),
                          "first_error": first_error},
            "overload": {"offered_per_s": offered, "admitted_per_s": admitted_rate,
                          "admitted": admitted.len(), "shed": shed.len(),
                          "other_errors": other, "first_other_error": first_other,
                          "admitted_p50_us": pct(&admitted, 50.0),
                          "admitted_p99_us": pct(&admitted, 99.0),
                          "shed_p50_us": pct(&shed, 50.0), "shed_p99_us": pct(&shed, 99.0),
                          "probe_by_call": kind_figures.iter().map(|(n, [u, l])| (n.to_string(), json!({
                              "unloaded_p50_us": u.0, "unloaded_p99_us": u.1,
                              "admitted_p50_us": l.0, "admitted_p99_us": l.1}))).collect::<serde_json::Map<_, _>>(),
                          "probe": {"unloaded_p50_us": b50, "unloaded_p99_us": b99,
                                    "unloaded_calls": probe_base.len(),
                                    "unloaded_before_p99_us": pct(&before, 99.0),
                                    "unloaded_after_p99_us": pct(&after, 99.0),
                                    "admitted": probe_ok.len(), "refused": probe_shed.len(),
                                    "admitted_p50_us": pct(&probe_ok, 50.0), "admitted_p99_us": p99,
                                    "refused_p50_us": pct(&probe_shed, 50.0), "refused_p99_us": s99},
                          "probe_other_uid": other_json,
                          "daemon_cpus_busy": overload_cpu, "daemon_cpus": daemon_cpus,
                          "rss_kib": {"before": rss_overload_before, "peak": rss_peak, "after": rss_after}},
        },
        "table": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "failed_targets": failed,
        "total_seconds": started.elapsed().as_secs_f64(),
    });
    gpushare_tests::report::write_json(&json_path, &report)?;
    println!("wrote {}", json_path.display());
    Ok(ExitCode::SUCCESS)
}
