//! Test harness: starts the real `gpushared` binary on a temporary runtime directory and
//! locates the other binaries (`gpusharectl`, `gpushare-peer`), so that integration tests drive
//! real processes over real sockets.
//!
//! Binaries are looked up in `$GPUSHARE_BIN_DIR` when set (the GPU bundle), else next to the
//! test executable's `target/<profile>/` directory (build them first: `cargo build --bins`).
//!
//! Skips: when no Vulkan device exists the daemon exits with status 3 and [`TestDaemon::start`]
//! prints `SKIP: <reason>` and returns `None` — unless `GPUSHARE_REQUIRE_GPU=1` or
//! `GPUSHARE_REQUIRE_VULKAN=1` is set (CI and the GPU machine), where it panics instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Starts the daemon (`daemon_or_skip!()`, or with a TOML config: `daemon_or_skip!(config)`),
/// or returns from the calling test when it was skipped ([`TestDaemon::start`] printed why).
#[macro_export]
macro_rules! daemon_or_skip {
    () => {
        $crate::daemon_or_skip!("")
    };
    ($config:expr) => {
        match $crate::TestDaemon::start_with($config) {
            Some(d) => d,
            None => return,
        }
    };
}

pub mod lines;
pub mod mips;
pub mod report;
pub mod rng;

/// User plus system CPU time of process `pid` so far, in clock ticks (`/proc/<pid>/stat`).
pub fn process_cpu_ticks(pid: u32) -> std::io::Result<u64> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "a /proc stat line");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').ok_or_else(bad)?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15.
    let field = |i: usize| -> std::io::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(bad)
    };
    Ok(field(11)? + field(12)?)
}

/// CPU time the live threads of process `pid` have run so far, in nanoseconds: the sum of
/// `/proc/<pid>/task/*/schedstat`'s first field. Finer than [`process_cpu_ticks`] (10 ms), for
/// short windows; a thread that exits takes its time with it, so a difference over a window in
/// which threads may end can read low.
pub fn process_cpu_ns(pid: u32) -> std::io::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that ended since the listing has no file any more: it counts for nothing.
        let Ok(stat) = std::fs::read_to_string(path) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Clock ticks per second (`_SC_CLK_TCK`; 100 if unknown).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Exit status of `gpushared` when no usable Vulkan device exists.
pub const EXIT_NO_DEVICE: i32 = 3;

/// Whether a missing device must fail the test instead of skipping it.
pub fn device_required() -> bool {
    ["GPUSHARE_REQUIRE_GPU", "GPUSHARE_REQUIRE_VULKAN"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| s == "1"))
}

/// Whether a real GPU is required (`GPUSHARE_REQUIRE_GPU=1`, the GPU machine).
pub fn gpu_required() -> bool {
    std::env::var("GPUSHARE_REQUIRE_GPU").is_ok_and(|s| s == "1")
}

/// How many GPUs the machine has and the multi-GPU tests must see served
/// (`GPUSHARE_REQUIRE_GPUS=N`, set by the GPU suite from `nvidia-smi`); 0 when unset.
pub fn gpus_required() -> usize {
    std::env::var("GPUSHARE_REQUIRE_GPUS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("GPUSHARE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    // target/<profile>/deps/<test-exe> or target/<profile>/<bin> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let mut profile_dir = exe.parent().expect("the executable's directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("target/<profile>");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --bins) or set GPUSHARE_BIN_DIR",
        path.display()
    );
    path
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `/tmp/gpushare-test-<pid>-<n>`.
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gpushare-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `gpushared`. Dropping it kills the daemon; [`TestDaemon::stop`] stops it
/// gracefully and returns its exit status.
#[derive(Debug)]
pub struct TestDaemon {
    child: Option<Child>,
    dir: TempDir,
    runtime_dir: PathBuf,
}

impl TestDaemon {
    /// Starts the daemon with default settings. `None` when skipped (see the module docs).
    pub fn start() -> Option<Self> {
        Self::start_with("")
    }

    /// Starts the daemon with `config` as its TOML configuration file.
    pub fn start_with(config: &str) -> Option<Self> {
        let dir = TempDir::new();
        let runtime_dir = dir.path().join("run");
        let config_path = dir.path().join("config.toml");
        fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("gpushared.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut child = Command::new(bin("gpushared"))
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .arg("--config")
            .arg(&config_path)
            .env(
                "GPUSHARE_LOG",
                std::env::var("GPUSHARE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gpushared");
        let deadline = Instant::now() + Duration::from_secs(30);
        let control = runtime_dir.join(gpushare_proto::CONTROL_SOCKET);
        let fd = runtime_dir.join(gpushare_proto::FD_SOCKET);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                if status.code() == Some(EXIT_NO_DEVICE) && !device_required() {
                    println!(
                        "SKIP: no Vulkan device: {}",
                        log.lines().last().unwrap_or("")
                    );
                    return None;
                }
                panic!("gpushared exited early with {status}:\n{log}");
            }
            if control.exists()
                && fd.exists()
                && fs::read_to_string(&log_path)
                    .unwrap_or_default()
                    .contains("serving")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gpushared did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Self {
            child: Some(child),
            dir,
            runtime_dir,
        })
    }

    /// The runtime directory holding control.sock and fd.sock.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// A scratch directory that lives as long as the daemon.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Number of descriptors the daemon has open.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// What each of the daemon's descriptors refers to (`readlink /proc/<pid>/fd/*`), sorted:
    /// to name the ones a test finds left over.
    pub fn fd_targets(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| fs::read_link(e.path()).ok())
                    .map(|t| t.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The daemon's descriptor count once it has not changed for 200 ms (at most 5 s): a
    /// baseline that background work (a spare export being made) cannot move afterwards.
    pub fn settled_fd_count(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.fd_count();
        let mut since = Instant::now();
        while Instant::now() < deadline && since.elapsed() < Duration::from_millis(200) {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.fd_count();
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
        last
    }

    /// Number of threads the daemon runs.
    pub fn thread_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("gpushared.log")).unwrap_or_default()
    }

    /// Whether the daemon still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends SIGTERM and waits up to 10 s for the exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "gpushared did not exit within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `cmd`, retrying for up to 5 s while exec fails with ETXTBSY.
///
/// A binary just copied by [`bin_copy_in`] can be busy for a moment: a child that
/// another test thread forked while the copy's write descriptor was open holds
/// that descriptor until its own exec closes it (close-on-exec).
pub fn spawn(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn {cmd:?}: {e}"),
        }
    }
}

/// `gpushare-peer <runtime_dir> hold <buffer_size> [pin|word]` started: a process with a
/// session, a buffer and a semaphore, which sleeps until killed. Returns it, the buffer's id and
/// the semaphore's.
pub fn hold_peer(runtime_dir: &Path, buffer_size: u64, extra: &[&str]) -> (Child, String, String) {
    use std::io::{BufRead, BufReader};
    let mut peer = spawn(
        Command::new(bin("gpushare-peer"))
            .arg(runtime_dir)
            .args(["hold", &buffer_size.to_string()])
            .args(extra)
            .stdout(std::process::Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(peer.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the holder's line");
    let ids: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(ids.len(), 2, "gpushare-peer hold said {line:?}");
    let (buffer, semaphore) = (ids[0].to_owned(), ids[1].to_owned());
    (peer, buffer, semaphore)
}

/// Copies the workspace binary `name` into `dir` (once) and returns its path:
/// another uid may not be able to enter the target directory. Spawn the copy
/// with [`spawn`] or [`run`], which wait out a transient ETXTBSY.
pub fn bin_copy_in(name: &str, dir: &Path) -> PathBuf {
    let exe = dir.join(name);
    if !exe.exists() {
        // Copy under a temporary name and rename: a concurrent caller never
        // sees a half-written binary.
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        fs::copy(bin(name), &tmp).expect("copy the binary");
        fs::rename(&tmp, &exe).expect("rename the copied binary");
    }
    exe
}

/// Runs a command to completion with a timeout; returns (status, stdout, stderr).
pub fn run(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = spawn(
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
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status, reader.join().unwrap(), err_reader.join().unwrap())
}
