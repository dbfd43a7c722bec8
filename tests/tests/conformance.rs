//! The conformance suite's harness: every scenario of `tests/conformance/README.md` (the
//! contract) with every client's scenario CLI — Rust, Python, C++, Go — against one real
//! `gpushared`, and one table of the outcomes.
//!
//! The harness starts the daemon (`limits.ticket_ttl_ms` 2000), creates a pinned buffer as uid
//! 65534 when it runs as root (the `foreign` scenario's), runs the hostile fd.sock server of
//! `extra-fds` in a thread, then each scenario with each CLI in turn (one at a time: a ticket
//! issued by one run sweeps another's expired ticket), each with a 60 s limit and its output
//! kept in the test's output. It prints the table (rows: scenarios; columns: clients; cells:
//! pass / FAIL / skip / absent) and writes it to `target/test-logs/conformance.md` when that
//! directory exists.
//!
//! It fails when a cell FAILs, when a CLI is absent while `GPUSHARE_CONFORMANCE_ALL=1`
//! (`scripts/test` sets it once the C++ and Go clients are in the tree), when the daemon's
//! descriptor count does not come back to its baseline or the daemon died, or when the harness
//! itself leaked a descriptor. An absent CLI otherwise prints `SKIP: <client> CLI not built`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "conformance/hostile_fd.rs"]
mod hostile_fd;

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gpushare_tests::{bin_copy_in, TempDir, TestDaemon};
use hostile_fd::HostileFdServer;

/// The scenarios, in the contract's order.
const SCENARIOS: [&str; 12] = [
    "connect",
    "session",
    "resources",
    "export-redeem",
    "host-sync",
    "fd-wait",
    "ops",
    "tickets",
    "foreign",
    "extra-fds",
    "stream",
    "fast-path",
];

/// The daemon's `limits.ticket_ttl_ms`, passed to the CLIs.
const TICKET_TTL_MS: u32 = 2000;

/// How long one run of a CLI may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The uid (and gid) that owns the `foreign` scenario's buffer.
const OTHER: u32 = 65534;

/// The outcome of one scenario with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Pass,
    Fail,
    Skip,
    Absent,
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Cell::Pass => "pass",
            Cell::Fail => "FAIL",
            Cell::Skip => "skip",
            Cell::Absent => "absent",
        })
    }
}

/// One client's scenario CLI: the program, the arguments before the scenario's, and the path
/// whose absence means "not built".
#[derive(Debug)]
struct Cli {
    client: &'static str,
    program: PathBuf,
    prefix: Vec<OsString>,
    needs: Vec<PathBuf>,
}

impl Cli {
    /// The first path it needs that is missing.
    fn missing(&self) -> Option<&Path> {
        self.needs
            .iter()
            .find(|p| !p.exists())
            .map(PathBuf::as_path)
    }
}

/// The repository's root.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The four CLIs where the contract's table puts them.
fn clis() -> Vec<Cli> {
    let root = repo_root();
    let rust = match std::env::var_os("GPUSHARE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("gpushare-conformance"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_gpushare-conformance")),
    };
    let python = root.join(".venv/bin/python");
    let script = root.join("tests/conformance/python/conformance.py");
    let cpp = root.join("clients/cpp/build/gpushare-conformance");
    let go = root.join("clients/go/bin/gpushare-conformance");
    vec![
        Cli {
            client: "Rust",
            program: rust.clone(),
            prefix: vec![],
            needs: vec![rust],
        },
        Cli {
            client: "Python",
            program: python.clone(),
            prefix: vec![script.clone().into()],
            needs: vec![python, script],
        },
        Cli {
            client: "C++",
            program: cpp.clone(),
            prefix: vec![],
            needs: vec![cpp],
        },
        Cli {
            client: "Go",
            program: go.clone(),
            prefix: vec![],
            needs: vec![go],
        },
    ]
}

/// Runs `cmd` to its end, at most `timeout`: its status (`None` when it was killed at the
/// timeout), stdout and stderr.
fn run_limited(cmd: &mut Command, timeout: Duration) -> (Option<ExitStatus>, String, String) {
    let mut child = gpushare_tests::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status, reader.join().unwrap(), err_reader.join().unwrap())
}

/// Creates a pinned 4096-byte buffer as uid/gid [`OTHER`] with `gpusharectl`; its id.
fn foreign_buffer(d: &TestDaemon) -> String {
    // The binary may sit in a directory the other uid cannot enter: copy it out.
    let exe = bin_copy_in("gpusharectl", d.scratch());
    let mut cmd = Command::new(exe);
    cmd.arg("--runtime-dir")
        .arg(d.runtime_dir())
        .args(["buffer", "create", "--size", "4096"]);
    // SAFETY: the closure runs in the forked child before exec and makes only the setgroups,
    // setgid and setuid system calls (async-signal-safe), allocating nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(OTHER) != 0
                || libc::setuid(OTHER) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (status, out, err) = run_limited(&mut cmd, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "gpusharectl buffer create as uid {OTHER}: {status:?}\n{err}"
    );
    let id = out.trim().to_owned();
    assert!(id.starts_with("buf-"), "gpusharectl printed {out:?}");
    id
}

/// Number of this process's open descriptors.
fn own_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Runs one scenario with one CLI and prints what it did.
fn run_scenario(cli: &Cli, scenario: &str, env: &[(&str, OsString)], foreign: bool) -> Cell {
    let mut cmd = Command::new(&cli.program);
    cmd.args(&cli.prefix)
        .arg(scenario)
        .current_dir(repo_root())
        .env_remove("GPUSHARE_CONFORMANCE_FOREIGN_ID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let (status, out, err) = run_limited(&mut cmd, RUN_TIMEOUT);
    let took = start.elapsed();
    let (cell, why) = match status.and_then(|s| s.code()) {
        Some(0) => (Cell::Pass, String::new()),
        Some(77) if scenario == "foreign" && !foreign => (Cell::Skip, String::new()),
        Some(77) => (
            Cell::Fail,
            " (skipped a scenario the contract does not let it skip)".into(),
        ),
        Some(1) => (Cell::Fail, String::new()),
        Some(code) => (Cell::Fail, format!(" (exit status {code})")),
        None if status.is_some() => (Cell::Fail, format!(" ({})", status.unwrap())),
        None => (
            Cell::Fail,
            format!(" (killed after {}s)", RUN_TIMEOUT.as_secs()),
        ),
    };
    println!(
        "== {} {scenario}: {cell}{why} ({:.2} s)",
        cli.client,
        took.as_secs_f64()
    );
    // Indented, so that a CLI's own `SKIP:` line is not taken for this test's.
    for line in out.lines().chain(err.lines()) {
        println!("   | {line}");
    }
    cell
}

/// The table, aligned, as Markdown.
fn table(clis: &[Cli], cells: &[Vec<Cell>]) -> String {
    let first = SCENARIOS.iter().map(|s| s.len()).max().unwrap_or(8);
    let widths: Vec<usize> = clis.iter().map(|c| c.client.len().max(6)).collect();
    let mut out = format!("| {:first$} |", "scenario");
    for (cli, w) in clis.iter().zip(&widths) {
        out.push_str(&format!(" {:w$} |", cli.client));
    }
    out.push_str(&format!("\n|{}|", "-".repeat(first + 2)));
    for w in &widths {
        out.push_str(&format!("{}|", "-".repeat(w + 2)));
    }
    for (row, scenario) in SCENARIOS.iter().enumerate() {
        out.push_str(&format!("\n| {scenario:first$} |"));
        for (column, w) in widths.iter().enumerate() {
            out.push_str(&format!(" {:w$} |", cells[column][row]));
        }
    }
    out.push('\n');
    out
}

#[test]
fn every_client_passes_every_scenario() {
    let root = rustix::process::getuid().is_root();
    // Uid 65534 must reach the sockets to create the foreign buffer.
    let mode = if root { "socket_mode = 0o666\n" } else { "" };
    let config = format!("{mode}[limits]\nticket_ttl_ms = {TICKET_TTL_MS}\n");
    let mut d = gpushare_tests::daemon_or_skip!(&config);
    let all = std::env::var("GPUSHARE_CONFORMANCE_ALL").is_ok_and(|v| v == "1");

    let foreign = if root {
        Some(foreign_buffer(&d))
    } else {
        println!("SKIP: foreign scenario: creating another uid's buffer needs root");
        None
    };

    let own_fds = own_fd_count();
    let hostile_dir = TempDir::new();
    let hostile = HostileFdServer::start(&hostile_dir.path().join("hostile-fd.sock"))
        .expect("start the hostile fd.sock server");
    let mut env: Vec<(&str, OsString)> = vec![
        ("GPUSHARE_RUNTIME_DIR", d.runtime_dir().into()),
        (
            "GPUSHARE_CONFORMANCE_TICKET_TTL_MS",
            TICKET_TTL_MS.to_string().into(),
        ),
        (
            "GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK",
            hostile.path().into(),
        ),
    ];
    if let Some(id) = &foreign {
        env.push(("GPUSHARE_CONFORMANCE_FOREIGN_ID", id.into()));
    }
    let clis = clis();
    // A GPU driver opens descriptors of its own lazily (more device nodes the first time it
    // exports or imports): one pass of the first client that is there, before the baseline, so
    // that only what the clients leave behind counts.
    if let Some(warm) = clis.iter().find(|c| c.missing().is_none()) {
        println!("== warm-up pass ({}), not counted", warm.client);
        for s in SCENARIOS {
            run_scenario(warm, s, &env, foreign.is_some());
        }
    }
    let daemon_fds = d.settled_fd_count();

    let mut cells: Vec<Vec<Cell>> = Vec::new();
    let mut absent = Vec::new();
    let start = Instant::now();
    for cli in &clis {
        if let Some(missing) = cli.missing() {
            println!("SKIP: {} CLI not built ({})", cli.client, missing.display());
            absent.push(cli.client);
            cells.push(vec![Cell::Absent; SCENARIOS.len()]);
            continue;
        }
        cells.push(
            SCENARIOS
                .iter()
                .map(|s| run_scenario(cli, s, &env, foreign.is_some()))
                .collect(),
        );
    }
    println!(
        "== every scenario with every client in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    drop(hostile);
    drop(hostile_dir);
    let own_after = own_fd_count();

    let daemon_after = d.settled_fd_count();
    let running = d.is_running();
    let table = table(&clis, &cells);
    println!("\n{table}");
    let logs = repo_root().join("target/test-logs");
    if logs.is_dir() {
        let md = format!("# Conformance: scenario × client\n\n{table}");
        std::fs::write(logs.join("conformance.md"), md).expect("write conformance.md");
    }

    let mut problems = Vec::new();
    for (cli, column) in clis.iter().zip(&cells) {
        for (scenario, cell) in SCENARIOS.iter().zip(column) {
            if *cell == Cell::Fail {
                problems.push(format!("{} FAILs {scenario}", cli.client));
            }
        }
    }
    if all {
        for client in &absent {
            problems.push(format!(
                "the {client} CLI is absent and GPUSHARE_CONFORMANCE_ALL=1"
            ));
        }
    }
    if daemon_after > daemon_fds {
        problems.push(format!(
            "the daemon holds {} descriptors more than before the clients ran: {:?}",
            daemon_after - daemon_fds,
            d.fd_targets()
        ));
    }
    if !running {
        problems.push(format!("the daemon died:\n{}", d.log()));
    }
    if own_after > own_fds {
        problems.push(format!(
            "the harness (the hostile server, the runs) leaked {} descriptors",
            own_after - own_fds
        ));
    }
    if !problems.is_empty() && running {
        let log = d.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        println!("== the daemon's log, last {} lines:", tail.len());
        for line in tail.iter().rev() {
            println!("   | {line}");
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
