//! `gpushare-conformance`: the Rust client's scenario CLI for the conformance suite.
//!
//! ```text
//! gpushare-conformance <scenario>                                   # run one scenario
//! gpushare-conformance redeem-child <ticket-hex> <resource-id> <size>  # export-redeem's child
//! ```
//!
//! The scenarios, the environment the harness sets and the exit statuses (0 pass, 1 fail with a
//! `FAIL:` line, 77 skip with a `SKIP:` line) are the contract in `tests/conformance/README.md`;
//! the harness is `tests/tests/conformance.rs`. Every scenario here goes through the
//! `gpushare-client` crate's API (but for one raw fd.sock call in `stream`, see there): the
//! `extra-fds` scenario points a client at the hostile fd.sock through a directory of symbolic
//! links (its `control.sock` the daemon's, its `fd.sock` the hostile server's), since a client
//! names its sockets by runtime directory.
//!
//! What this is not: a test of the daemon's corner cases (the integration tests do that); it
//! checks that this client does what the contract says every client does.

mod descriptors;
mod fast_path;
mod lifecycle;
mod stream;
mod sync_ops;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gpushare_client::Client;

/// Why a scenario failed: the `FAIL:` line's text.
#[derive(Debug)]
pub(crate) struct Fail(pub(crate) String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a scenario that did not fail came to.
#[derive(Debug)]
pub(crate) enum Verdict {
    Pass,
    Skip(String),
}

pub(crate) type Outcome = Result<Verdict, Fail>;

/// Returns early with a [`Fail`] built like `format!`.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::Fail(format!($($arg)*)))
    };
}
pub(crate) use fail;

/// Attaches what was being done to a client error.
pub(crate) trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, Fail>;
}

impl<T> Context<T> for gpushare_client::Result<T> {
    fn ctx(self, what: &str) -> Result<T, Fail> {
        self.map_err(|e| Fail(format!("{what}: {} ({})", chain(&e), code_name(&e))))
    }
}

/// The error and its sources, joined by `: `.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The error's gRPC code, or `no code` for a local or protocol error.
pub(crate) fn code_name(e: &gpushare_client::Error) -> String {
    e.code()
        .map_or_else(|| "no code".to_owned(), |c| format!("{c:?}"))
}

/// Checks that `result` failed with one of `want`.
pub(crate) fn expect_code<T: fmt::Debug>(
    what: &str,
    result: gpushare_client::Result<T>,
    want: &[tonic::Code],
) -> Result<(), Fail> {
    match result {
        Err(e) if e.code().is_some_and(|c| want.contains(&c)) => Ok(()),
        Err(e) => fail!(
            "{what}: expected {want:?}, got error {} ({})",
            chain(&e),
            code_name(&e)
        ),
        Ok(v) => fail!("{what}: expected {want:?}, got success {v:?}"),
    }
}

/// What the harness tells every scenario.
#[derive(Debug)]
pub(crate) struct Env {
    /// `GPUSHARE_RUNTIME_DIR`.
    pub(crate) runtime_dir: PathBuf,
    /// `GPUSHARE_CONFORMANCE_TICKET_TTL_MS`, when set.
    pub(crate) ticket_ttl: Option<Duration>,
    /// `GPUSHARE_CONFORMANCE_FOREIGN_ID`, when set.
    pub(crate) foreign_id: Option<String>,
    /// `GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK`, when set.
    pub(crate) hostile_fd_sock: Option<PathBuf>,
}

impl Env {
    fn from_environment() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Env {
            runtime_dir: gpushare_client::default_runtime_dir(),
            ticket_ttl: var("GPUSHARE_CONFORMANCE_TICKET_TTL_MS")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
            foreign_id: var("GPUSHARE_CONFORMANCE_FOREIGN_ID"),
            hostile_fd_sock: var("GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK").map(PathBuf::from),
        }
    }

    /// A client with a session named for this CLI.
    pub(crate) async fn session(&self) -> Result<Client, Fail> {
        Client::connect_with_session(&self.runtime_dir, "conformance-rust")
            .await
            .ctx("connect with a session")
    }

    /// A client without a session.
    pub(crate) async fn sessionless(&self) -> Result<Client, Fail> {
        Client::connect(&self.runtime_dir)
            .await
            .ctx("connect without a session")
    }
}

/// The number of this process's open descriptors.
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// What this process's descriptors refer to, for a leak's message.
fn fd_targets() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

/// The descriptor count once it has not changed for 100 ms (at most 2 s): background tasks
/// that close a connection finish first.
async fn settled_fd_count() -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = fd_count();
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(100) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = fd_count();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// Fails when, within 2 s, the descriptor count does not come back to `baseline`.
async fn check_no_leaks(baseline: usize) -> Result<(), Fail> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = fd_count();
        if now <= baseline {
            return Ok(());
        }
        if Instant::now() > deadline {
            fail!(
                "leaked {} fds (open now: {})",
                now - baseline,
                fd_targets().join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one command line: the gRPC runtime initialised (one channel opened and closed), the
/// baseline counted, the scenario, the leak check.
async fn run(args: &[String]) -> Outcome {
    let env = Env::from_environment();
    drop(env.sessionless().await?);
    let baseline = settled_fd_count().await;
    let verdict = match args {
        [s] => match s.as_str() {
            "connect" => lifecycle::connect(&env).await?,
            "session" => lifecycle::session(&env).await?,
            "resources" => lifecycle::resources(&env).await?,
            "export-redeem" => descriptors::export_redeem(&env).await?,
            "host-sync" => sync_ops::host_sync(&env).await?,
            "fd-wait" => sync_ops::fd_wait(&env).await?,
            "ops" => sync_ops::ops(&env).await?,
            "tickets" => descriptors::tickets(&env).await?,
            "foreign" => descriptors::foreign(&env).await?,
            "extra-fds" => descriptors::extra_fds(&env).await?,
            "stream" => stream::stream(&env).await?,
            "fast-path" => fast_path::fast_path(&env).await?,
            other => fail!("unknown scenario {other:?}"),
        },
        [cmd, ticket, id, size] if cmd == "redeem-child" => {
            let size = size
                .parse()
                .map_err(|_| Fail(format!("redeem-child: size {size:?} is not a number")))?;
            descriptors::redeem_child(&env, ticket, id, size).await?
        }
        _ => {
            fail!("usage: gpushare-conformance <scenario> | redeem-child <ticket-hex> <id> <size>")
        }
    };
    check_no_leaks(baseline).await?;
    Ok(verdict)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("FAIL: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(&args));
    match outcome {
        Ok(Verdict::Pass) => ExitCode::SUCCESS,
        Ok(Verdict::Skip(reason)) => {
            eprintln!("SKIP: {reason}");
            ExitCode::from(77)
        }
        Err(Fail(what)) => {
            eprintln!("FAIL: {what}");
            ExitCode::from(1)
        }
    }
}
