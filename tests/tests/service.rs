//! gpushared as a systemd service, without systemd running: the units pass `systemd-analyze
//! verify` and stay under an exposure threshold, the daemon takes its sockets from socket
//! activation (through `systemd-socket-activate`, and through a hand-made activation that also
//! carries `NOTIFY_SOCKET`, the watchdog and `JOURNAL_STREAM`), reports READY/STOPPING, serves
//! metrics that move with the load, and `cargo deb` packages what it should.
//!
//! Tools (`systemd-analyze`, `systemd-socket-activate`, `cargo deb`) that are missing make a
//! test print `SKIP:` — or fail when `GPUSHARE_REQUIRE_VULKAN=1`/`GPUSHARE_REQUIRE_GPU=1` is set,
//! as `scripts/test` does after `scripts/setup` installed them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpushare_client::{Client, CreateOptions};
use gpushare_tests::{bin, device_required, run, TempDir, EXIT_NO_DEVICE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// Highest acceptable `systemd-analyze security` exposure for gpushared.service (0 = locked
/// down, 10 = fully exposed). The unit scores 1.4 with systemd 252; what keeps it above 1.0 is
/// what a GPU daemon needs (device access, supplementary groups, W^X off for JITs, full /proc
/// for the NVIDIA driver, sockets, other users' uids visible). 2.0 leaves room for a future
/// systemd scoring the same unit a little differently, and fails on any real loosening.
const MAX_EXPOSURE: f64 = 2.0;

/// The unit files, as shipped.
const UNITS: [&str; 3] = [
    "gpushared.service",
    "gpushared.socket",
    "gpushared-fd.socket",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Prints SKIP (or fails where tools and devices are required) and returns `None` when `name`
/// is not on PATH.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !device_required(),
            "{name} is not installed (scripts/setup installs it)"
        );
        println!("SKIP: {name} is not installed");
    }
    found
}

/// Copies the units into `dir`, with ExecStart pointing at the built binary (verify checks
/// that the binary exists and is executable).
fn units_in(dir: &Path) -> Vec<PathBuf> {
    let daemon = bin("gpushared");
    UNITS
        .iter()
        .map(|name| {
            let text = fs::read_to_string(workspace().join("deploy").join(name)).unwrap();
            let text = text.replace("/usr/bin/gpushared", daemon.to_str().unwrap());
            let path = dir.join(name);
            fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify_without_warnings() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = TempDir::new();
    let units = units_in(dir.path());
    let (status, out, err) = run(
        Command::new(analyze)
            .arg("verify")
            .args(&units)
            .env("SYSTEMD_LOG_COLOR", "0"),
        Duration::from_secs(60),
    );
    assert!(
        status.success() && out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify: {status}\n{out}{err}"
    );
}

#[test]
fn service_exposure_is_under_the_threshold() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = TempDir::new();
    let units = units_in(dir.path());
    // --offline (systemd 250+, Debian 12 has 252) scores the file itself, no running manager.
    let threshold = format!("--threshold={}", (MAX_EXPOSURE * 10.0).round() as u32);
    let (status, out, err) = run(
        Command::new(analyze)
            .args(["security", "--offline=true", &threshold, "--no-pager"])
            .arg(&units[0])
            .env("SYSTEMD_COLORS", "0"),
        Duration::from_secs(60),
    );
    let exposure: f64 = out
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for gpushared.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}{err}"));
    assert!(
        status.success() && exposure <= MAX_EXPOSURE,
        "exposure {exposure} (at most {MAX_EXPOSURE}), {status}:\n{out}{err}"
    );
}

/// A spawned process, killed if the test ends without stopping it.
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// SIGTERM, then the exit status and how long it took.
    fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let mut child = self.0.take().unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gpushared did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status if it exited already.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().unwrap())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a daemon that exited early did so for want of a device, which skips the test
/// (unless devices are required).
fn skip_for_no_device(status: std::process::ExitStatus, log: &str) -> bool {
    if status.code() == Some(EXIT_NO_DEVICE) && !device_required() {
        println!(
            "SKIP: no Vulkan device: {}",
            log.lines().last().unwrap_or("")
        );
        return true;
    }
    panic!("gpushared exited early with {status}:\n{log}");
}

fn wait_for_path(path: &Path, proc: &mut Proc, log: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(status) = proc.exited() {
            return !skip_for_no_device(status, &fs::read_to_string(log).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// `systemd-socket-activate` cannot mix a stream and a seqpacket socket in one invocation
/// (`--seqpacket` applies to every `-l`), but it passes on the descriptors it received: so one
/// instance listens on fd.sock (seqpacket) and execs a second, which adds control.sock
/// (stream) and execs gpushared with LISTEN_FDS=2, LISTEN_FDNAMES=fd:control — the reverse of
/// the units' order, so the daemon must go by name. Both exec in place, so LISTEN_PID is
/// gpushared's pid. Like systemd, the first instance waits for a connection before starting
/// anything: the test connects to fd.sock first.
#[tokio::test]
async fn systemd_socket_activate_starts_the_daemon_on_both_named_sockets() {
    let Some(activate) = tool("systemd-socket-activate") else {
        return;
    };
    let dir = TempDir::new();
    let run_dir = dir.path().join("run");
    fs::create_dir_all(&run_dir).unwrap();
    let control = run_dir.join(gpushare_proto::CONTROL_SOCKET);
    let fd_sock = run_dir.join(gpushare_proto::FD_SOCKET);
    let log_path = dir.path().join("gpushared.log");
    let mut proc = Proc(Some(
        Command::new(&activate)
            .arg("--seqpacket")
            .arg("-l")
            .arg(&fd_sock)
            .arg("--fdname=fd")
            .arg("--")
            .arg(&activate)
            .arg("-l")
            .arg(&control)
            .arg("--fdname=fd:control")
            .arg("-E")
            .arg("GPUSHARE_LOG=info")
            .arg("--")
            .arg(bin("gpushared"))
            .arg("--runtime-dir")
            .arg(&run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    ));
    if !wait_for_path(&fd_sock, &mut proc, &log_path) {
        return;
    }
    // The connection that activates the service (served, then closed, by the daemon).
    let trigger = gpushare_proto::fdpass::SeqPacket::connect(&fd_sock)
        .await
        .unwrap();
    if !wait_for_path(&control, &mut proc, &log_path) {
        return;
    }
    // The socket file exists from bind() on, a moment before systemd-socket-activate listens:
    // retry a refused connection.
    let c = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match Client::connect_with_session(&run_dir, "socket-activated").await {
                Err(e) if e.is_unreachable() => tokio::time::sleep(Duration::from_millis(20)).await,
                other => return other,
            }
        }
    })
    .await
    .expect("connect within 30 s");
    let c = match c {
        Ok(c) => c,
        Err(e) => {
            if let Some(status) = proc.exited() {
                if skip_for_no_device(status, &fs::read_to_string(&log_path).unwrap()) {
                    return;
                }
            }
            panic!("{e}\n{}", fs::read_to_string(&log_path).unwrap());
        }
    };
    drop(trigger);
    let buf = c
        .create_buffer(64 << 10, &CreateOptions::default())
        .await
        .unwrap();
    // Export redeems a ticket on fd.sock: the other passed socket.
    let exported = c.export(buf.id()).await.unwrap();
    assert_eq!(exported.info.resource_id, buf.id());
    assert!(rustix::fs::fstat(&exported.fd).is_ok());
    drop(c);
    let (status, took) = proc.terminate(Duration::from_secs(10));
    let log = fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(
        log.contains("using a socket passed by the service manager"),
        "{log}"
    );
    // The sockets belong to the service manager: the daemon must leave them in place.
    assert!(control.exists() && fd_sock.exists());
}

/// A listening Unix socket of `kind` at `path`, duplicated to a descriptor above the ones the
/// child's shell will use.
fn listener(path: &Path, kind: rustix::net::SocketType) -> OwnedFd {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags};
    let fd =
        rustix::net::socket_with(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::bind(&fd, &SocketAddrUnix::new(path).unwrap()).unwrap();
    rustix::net::listen(&fd, 64).unwrap();
    rustix::io::fcntl_dupfd_cloexec(&fd, 20).unwrap()
}

/// Receives notify datagrams until one contains `want`; returns every message seen.
fn notifications_until(
    sock: &UnixDatagram,
    want: &str,
    proc: &mut Proc,
    log: &Path,
) -> Option<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == want);
                seen.push(msg);
                if done {
                    return Some(seen);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
        if let Some(status) = proc.exited() {
            if skip_for_no_device(status, &fs::read_to_string(log).unwrap_or_default()) {
                return None;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {want} within 30 s; seen {seen:?}\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// `GET /metrics` over the Unix socket, parsed into `name{labels}` → value.
async fn scrape(path: &Path) -> HashMap<String, f64> {
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut out = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            let ok = line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ");
            assert!(ok, "bad comment line {line:?}");
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(key.to_owned(), value);
    }
    out
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", m.keys().collect::<Vec<_>>()))
}

/// Socket activation done by hand, as systemd does it (control at 3, fd at 4,
/// LISTEN_FDNAMES=control:fd, LISTEN_PID the daemon's own pid), with a notify socket, a 200 ms
/// watchdog, the journal format and the metrics endpoint: READY=1 only once the daemon serves,
/// watchdog pings, metrics that follow the load, and on SIGTERM STOPPING=1, UNAVAILABLE for a
/// pending wait, exit 0 within 5 s, the passed sockets left in place.
#[tokio::test]
async fn activated_daemon_notifies_readiness_serves_metrics_and_stops_cleanly() {
    let dir = TempDir::new();
    let run_dir = dir.path().join("run");
    fs::create_dir_all(&run_dir).unwrap();
    let control = run_dir.join(gpushare_proto::CONTROL_SOCKET);
    let fd_sock = run_dir.join(gpushare_proto::FD_SOCKET);
    let metrics_sock = dir.path().join("metrics.sock");
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        format!("[metrics]\nlisten = \"unix:{}\"\n", metrics_sock.display()),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log_path = dir.path().join("gpushared.log");
    let log = fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let journal_stream = format!("{}:{}", meta.dev(), meta.ino());

    let c_fd = listener(&control, rustix::net::SocketType::STREAM);
    let f_fd = listener(&fd_sock, rustix::net::SocketType::SEQPACKET);
    let (c_raw, f_raw) = (c_fd.as_raw_fd(), f_fd.as_raw_fd());
    let mut cmd = Command::new("bash");
    // bash moves the listeners to 3 and 4 and sets LISTEN_PID to its own pid, which gpushared
    // keeps across exec.
    cmd.arg("-c")
        .arg(format!(
            "exec 3<&{c_raw} 4<&{f_raw} {c_raw}<&- {f_raw}<&-; LISTEN_PID=$$ exec \"$0\" \"$@\""
        ))
        .arg(bin("gpushared"))
        .arg("--runtime-dir")
        .arg(&run_dir)
        .arg("--config")
        .arg(&config)
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "control:fd")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env("JOURNAL_STREAM", &journal_stream)
        .env("GPUSHARE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: the closure only calls fcntl (async-signal-safe) on two descriptors that this
    // process owns (`c_fd`, `f_fd`, alive until after spawn) and the forked child inherited.
    unsafe {
        cmd.pre_exec(move || {
            for raw in [c_raw, f_raw] {
                // SAFETY: `raw` is open in the child: inherited from the parent, which holds it.
                let fd = BorrowedFd::borrow_raw(raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    let mut proc = Proc(Some(cmd.spawn().unwrap()));
    drop((c_fd, f_fd));

    let Some(seen) = notifications_until(&notify, "READY=1", &mut proc, &log_path) else {
        return;
    };
    let text = fs::read_to_string(&log_path).unwrap();
    assert!(
        seen.iter().any(|m| m.contains("STATUS=opening devices")),
        "{seen:?}"
    );
    let ready = seen.last().unwrap();
    assert!(ready.contains("STATUS=serving 1 device(s)"), "{ready}");
    // The daemon logged that it listens before it said READY=1, and serves at once.
    assert!(text.contains("listening"), "{text}");
    let c = Client::connect_with_session(&run_dir, "activated")
        .await
        .unwrap();
    assert_eq!(c.info().await.unwrap().devices.len(), 1);
    // Journal format: every line starts with a syslog priority; no ANSI, no timestamps.
    for line in text.lines() {
        assert!(
            line.len() > 3 && line.starts_with('<') && line.as_bytes()[2] == b'>',
            "not a journal line: {line:?}"
        );
        assert!(!line.contains('\u{1b}'), "ANSI in {line:?}");
    }
    assert!(text.contains("<6>"), "{text}");
    notifications_until(&notify, "WATCHDOG=1", &mut proc, &log_path).unwrap();

    // Metrics follow the load.
    let uid = rustix::process::getuid().as_raw();
    let before = scrape(&metrics_sock).await;
    let bytes_key = format!("gpushare_uid_buffer_bytes{{uid=\"{uid}\"}}");
    let buffers_key = format!("gpushare_uid_buffers{{uid=\"{uid}\"}}");
    assert_eq!(metric(&before, "gpushare_up"), 1.0);
    assert_eq!(metric(&before, "gpushare_resources"), 0.0);
    assert_eq!(metric(&before, "gpushare_sessions"), 1.0);
    // A uid without resources has no per-uid series.
    assert!(!before.contains_key(&bytes_key), "{before:?}");
    assert_eq!(metric(&before, "gpushare_descriptors_sent_total"), 0.0);
    let buf = c
        .create_buffer(1 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let sem = c
        .create_semaphore(0, &CreateOptions::default())
        .await
        .unwrap();
    let ticket = c.export_ticket(buf.id()).await.unwrap().ticket;
    let _exported = c.redeem(&ticket).await.unwrap();
    let _direct = c.export(buf.id()).await.unwrap();
    let wait = tokio::spawn({
        let sem = sem.clone();
        async move { sem.wait(1, Duration::from_secs(30)).await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let m = scrape(&metrics_sock).await;
        // The daemon counts a descriptor once its reply is sent: the client may have it first.
        if (metric(&m, "gpushare_pending_waits") >= 1.0
            && metric(&m, "gpushare_descriptors_sent_total") >= 2.0)
            || Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metric(&after, "gpushare_resources"), 2.0);
    assert!(metric(&after, &bytes_key) >= (1u64 << 20) as f64);
    assert_eq!(metric(&after, &buffers_key), 1.0);
    assert_eq!(
        metric(&after, &format!("gpushare_uid_semaphores{{uid=\"{uid}\"}}")),
        1.0
    );
    assert_eq!(metric(&after, "gpushare_pending_waits"), 1.0);
    assert_eq!(metric(&after, "gpushare_export_tickets_issued_total"), 1.0);
    assert_eq!(metric(&after, "gpushare_descriptors_sent_total"), 2.0);
    let create = "service=\"gpushare.v1.GpuShare\",method=\"CreateBuffer\"";
    assert_eq!(
        metric(&after, &format!("gpushare_grpc_calls_total{{{create}}}")),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            &format!("gpushare_grpc_call_duration_seconds_count{{{create}}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            &format!("gpushare_grpc_call_duration_seconds_bucket{{{create},le=\"+Inf\"}}")
        ),
        1.0
    );
    assert!(buf.release().await.unwrap());
    let released = scrape(&metrics_sock).await;
    assert_eq!(metric(&released, "gpushare_resources"), 1.0);
    assert_eq!(metric(&released, &bytes_key), 0.0);

    // SIGTERM with a wait pending.
    let pid = proc.pid();
    let (status, took) = tokio::task::spawn_blocking(move || {
        let r = proc.terminate(Duration::from_secs(10));
        drop(proc);
        r
    })
    .await
    .unwrap();
    let text = fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(0), "pid {pid}:\n{text}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let e = wait.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    let mut stopping = false;
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1");
    assert!(
        control.exists() && fd_sock.exists(),
        "passed sockets were removed"
    );
    assert!(!metrics_sock.exists(), "the metrics socket was left behind");
}

#[test]
fn check_config_prints_the_effective_settings_and_exits_0_or_2() {
    let dir = TempDir::new();
    let good = dir.path().join("good.toml");
    fs::write(
        &good,
        "device = \"0\"\n[metrics]\nlisten = \"127.0.0.1:9464\"\n",
    )
    .unwrap();
    let (status, out, err) = run(
        Command::new(bin("gpushared"))
            .arg("--check-config")
            .arg("--config")
            .arg(&good)
            .arg("--runtime-dir")
            .arg(dir.path()),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(0), "{out}{err}");
    for want in [
        "device = \"0\"",
        "socket_mode = 0o660",
        &format!("runtime_dir = \"{}\"", dir.path().display()),
        "[limits]",
        "[metrics]",
        "listen = \"127.0.0.1:9464\"",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    for (name, text) in [
        ("public", "[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
        ("relative", "[metrics]\nlisten = \"unix:metrics.sock\"\n"),
        ("unknown key", "devcie = \"0\"\n"),
        ("log filter", "log = \"gpushare_server=[\"\n"),
    ] {
        let path = dir.path().join("bad.toml");
        fs::write(&path, text).unwrap();
        let (status, out, err) = run(
            Command::new(bin("gpushared"))
                .arg("--check-config")
                .arg("--config")
                .arg(&path),
            Duration::from_secs(30),
        );
        assert_eq!(status.code(), Some(2), "{name}: {out}{err}");
        assert!(err.contains("gpushared:"), "{name}: {err}");
    }
}

/// `cargo deb` builds the package from the binaries this test run uses (`--no-build` with the
/// profile they were built with, no strip, fast compression: a release build would cost CI
/// minutes, and rebuilding here would replace binaries that other tests are running; the
/// package's layout is the same), and the package holds the binaries, the units, sysusers,
/// tmpfiles, the docs and the configuration as a conffile.
#[test]
fn cargo_deb_packages_binaries_units_and_the_config_as_a_conffile() {
    if std::env::var_os("GPUSHARE_BIN_DIR").is_some() {
        println!("SKIP: GPUSHARE_BIN_DIR set: no source tree to package");
        return;
    }
    if tool("cargo-deb").is_none() {
        return;
    }
    let Some(dpkg_deb) = tool("dpkg-deb") else {
        return;
    };
    // target/<profile>/gpushared → target dir and profile.
    let daemon = bin("gpushared");
    bin("gpusharectl");
    let profile_dir = daemon.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
        "debug" => "dev".to_owned(),
        other => other.to_owned(),
    };
    let out_dir = TempDir::new();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (status, out, err) = run(
        Command::new(cargo)
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", target_dir)
            .args([
                "deb",
                "-p",
                "gpushare-server",
                "--no-build",
                "--fast",
                "--no-strip",
            ])
            .args(["--profile", &profile])
            .arg("-o")
            .arg(out_dir.path()),
        Duration::from_secs(900),
    );
    assert!(status.success(), "cargo deb: {status}\n{out}{err}");
    let deb = fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}:\n{out}{err}", out_dir.path().display()));
    let (status, listing, err) = run(
        Command::new(&dpkg_deb).arg("-c").arg(&deb),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{err}");
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for want in [
        "./usr/bin/gpushared",
        "./usr/bin/gpusharectl",
        "./lib/systemd/system/gpushared.service",
        "./lib/systemd/system/gpushared.socket",
        "./lib/systemd/system/gpushared-fd.socket",
        "./usr/lib/sysusers.d/gpushare.conf",
        "./usr/lib/tmpfiles.d/gpushare.conf",
        "./etc/gpushare/config.toml",
        "./usr/share/doc/gpushare/OPERATIONS.md",
    ] {
        assert!(files.contains(&want), "{want} missing from:\n{listing}");
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/gpushared")),
        "{listing}"
    );
    let control = TempDir::new();
    let (status, _, err) = run(
        Command::new(&dpkg_deb)
            .arg("-e")
            .arg(&deb)
            .arg(control.path().join("DEBIAN")),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{err}");
    let conffiles = fs::read_to_string(control.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/gpushare/config.toml");
    let fields = fs::read_to_string(control.path().join("DEBIAN/control")).unwrap();
    assert!(fields.contains("Package: gpushare\n"), "{fields}");
    assert!(fields.contains("libvulkan1"), "{fields}");
    let postinst = fs::read_to_string(control.path().join("DEBIAN/postinst")).unwrap();
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    // The packaged config is the example, which the daemon accepts.
    let (status, out, err) = run(
        Command::new(bin("gpushared"))
            .arg("--check-config")
            .arg("--config")
            .arg(workspace().join("deploy/config.example.toml")),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(0), "{out}{err}");
}

/// SIGTERM while a call is being served: that call completes and its client gets its answer,
/// then the daemon exits 0. (The metrics endpoint's in-flight gauge tells when the call is in.)
#[tokio::test]
async fn sigterm_lets_a_call_in_flight_complete() {
    let dir = TempDir::new();
    let metrics_sock = dir.path().join("metrics.sock");
    let config = format!("[metrics]\nlisten = \"unix:{}\"\n", metrics_sock.display());
    let Some(d) = gpushare_tests::TestDaemon::start_with(&config) else {
        return;
    };
    let c = Client::connect_with_session(d.runtime_dir(), "in flight")
        .await
        .unwrap();
    let size = 32 << 20;
    let buf = c
        .create_buffer(size, &CreateOptions::default())
        .await
        .unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let write = tokio::spawn({
        let (buf, data) = (buf.clone(), data.clone());
        async move { buf.write(0, &data, &gpushare_client::Sync::none()).await }
    });
    // Wait until the daemon counts the Write in flight (the scrape itself is not a gRPC call).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(&metrics_sock).await;
        if metric(&m, "gpushare_grpc_calls_in_flight") >= 1.0 {
            break;
        }
        assert!(
            !write.is_finished(),
            "the write finished before it was seen in flight"
        );
        assert!(
            Instant::now() < deadline,
            "the write never showed as in flight"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let pid = rustix::process::Pid::from_raw(d.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let written = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the write got no answer")
        .unwrap();
    assert!(written.is_ok(), "the call in flight failed: {written:?}");
    let status = tokio::task::spawn_blocking(move || d.stop()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}
