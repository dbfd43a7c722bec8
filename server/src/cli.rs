//! `gpushared`'s process: command line, logging, signals, systemd glue (socket activation,
//! readiness, watchdog, journald), then the server (`server.rs`). The binary's `main` is
//! one call to [`main`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, Overrides};
use crate::daemon::Daemon;
use crate::error::chain;
use crate::metrics::Endpoint;
use crate::runtime_dir::RuntimeDir;
use crate::systemd::{self, ActivatedSockets, JournalFormat, Notifier};
use crate::waits::WaitService;
use crate::{devices, server};
use clap::Parser;
use gpushare_interop::vulkan;
use gpushare_proto::fdpass::SeqPacketListener;

/// gpushare daemon: shares GPU buffers, images and timeline semaphores between processes.
///
/// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 1 on failure, 2 for an invalid
/// configuration, 3 when no usable Vulkan device exists.
#[derive(Debug, Parser)]
#[command(name = "gpushared", version, about)]
struct Args {
    /// TOML configuration file (see deploy/config.example.toml).
    #[arg(long, env = "GPUSHARE_CONFIG")]
    config: Option<PathBuf>,
    /// Runtime directory for control.sock and fd.sock
    /// [default: $XDG_RUNTIME_DIR/gpushare, else /run/gpushare].
    #[arg(long, env = "GPUSHARE_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Devices to serve: auto (every GPU; the CPU Vulkan device when there is none), all
    /// (every Vulkan device, CPU drivers included), or a comma-separated list of Vulkan device
    /// indexes and device UUIDs, served in that order as daemon devices 0, 1, ...
    /// [default: auto].
    #[arg(long, env = "GPUSHARE_DEVICE", value_name = "DEVICES")]
    device: Option<String>,
    /// Log filter: error, warn, info, debug, trace, or per module [default: info].
    #[arg(long, env = "GPUSHARE_LOG")]
    log: Option<String>,
    /// Load and validate the configuration, print the effective settings (TOML), and exit:
    /// 0 when valid, 2 when not.
    #[arg(long)]
    check_config: bool,
}

/// Runs the daemon as the process: parses the command line, serves until SIGTERM or SIGINT,
/// and returns the exit status (see `--help`).
pub fn main() -> ExitCode {
    let args = Args::parse();
    // First, before anything opens a file or starts a thread: the passed sockets sit at
    // descriptors 3, 4, ..., and the variables must not leak to anything we start.
    let activation = systemd::take_listen_fds();
    let notifier = if args.check_config {
        Notifier::disabled()
    } else {
        Notifier::from_env()
    };
    let config = match Config::load(
        args.config.as_deref(),
        Overrides {
            runtime_dir: args.runtime_dir,
            device: args.device,
            log: args.log,
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpushared: {}", chain(&e));
            notifier.status(&format!("invalid configuration: {}", chain(&e)));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("gpushared: invalid setting log {:?}: {e}", config.log);
            notifier.status(&format!("invalid log filter {:?}", config.log));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if args.check_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if systemd::stderr_is_journal() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(JournalFormat)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let activated = match activation {
        Ok(Some((sockets, ignored))) => {
            for fd in ignored {
                tracing::warn!(
                    fd,
                    "closed a passed descriptor that is neither control nor fd"
                );
            }
            Some(sockets)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!("socket activation: {}", chain(&e));
            notifier.status(&format!("socket activation: {}", chain(&e)));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let notifier = Arc::new(notifier);
    match runtime.block_on(serve(config, activated, notifier.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            tracing::error!("{e}");
            notifier.status(&format!("failed: {e}"));
            ExitCode::from(code)
        }
    }
}

/// Exit status for an invalid configuration (settings, log filter, passed sockets).
const EXIT_BAD_CONFIG: u8 = 2;

/// Exit status when no usable Vulkan device exists (no loader, no driver, no device): a
/// service manager should not restart the daemon in a loop for this (`RestartPreventExitStatus`).
const EXIT_NO_DEVICE: u8 = 3;

/// Raises the soft descriptor limit to the hard limit: every client connection, export and
/// lavapipe allocation costs a descriptor, and the default soft limit (1024) is far too low for
/// a daemon serving many clients.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the descriptor limit");
        }
    }
}

/// The sockets passed by the service manager, made async. `RuntimeDir` is not used to bind
/// them, and its drop must not unlink them: they belong to the socket units.
fn adopt(
    sockets: ActivatedSockets,
) -> std::io::Result<(tokio::net::UnixListener, SeqPacketListener)> {
    for (name, fd) in [("control", &sockets.control), ("fd", &sockets.fd)] {
        use std::os::fd::AsFd;
        match systemd::socket_path(fd.as_fd()) {
            Some(path) => {
                tracing::info!(socket = name, path = %path.display(), "using a socket passed by the service manager")
            }
            None => tracing::info!(
                socket = name,
                "using a socket passed by the service manager (no path)"
            ),
        }
    }
    let control = std::os::unix::net::UnixListener::from(sockets.control);
    control.set_nonblocking(true)?;
    let control = tokio::net::UnixListener::from_std(control)?;
    let fd = SeqPacketListener::from_owned(sockets.fd)?;
    Ok((control, fd))
}

async fn serve(
    config: Config,
    activated: Option<ActivatedSockets>,
    notifier: Arc<Notifier>,
) -> Result<(), (u8, String)> {
    raise_fd_limit();
    // Registered first: a SIGTERM that comes while devices open, or before the server task first
    // polls the shutdown future, is kept and starts a clean shutdown once serving, instead of
    // killing the process with the default action.
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    let fail = |e: &dyn std::error::Error| (1, chain(e));
    let dir = RuntimeDir::lock(&config.runtime_dir).map_err(|e| fail(&e))?;
    notifier.status("opening devices");
    let opened = devices::open(
        &config.device,
        &config.executor,
        config.strict_device_match,
        config.fast_path,
    )
    .map_err(|e| {
        let code = match &e {
            devices::DevicesError::Vulkan(vulkan::Error::Loader(_) | vulkan::Error::NoDevice) => {
                EXIT_NO_DEVICE
            }
            devices::DevicesError::Vulkan(vulkan::Error::Call { result, .. })
                if *result == vulkan::vk::Result::ERROR_INCOMPATIBLE_DRIVER =>
            {
                EXIT_NO_DEVICE
            }
            _ => 1,
        };
        (code, chain(&e))
    })?;
    let activated_sockets = activated.is_some();
    let (control, fd) = match activated {
        Some(sockets) => adopt(sockets).map_err(|e| fail(&e))?,
        None => dir.bind(config.socket_mode).map_err(|e| fail(&e))?,
    };
    // Under socket activation the socket files belong to the service manager: the runtime
    // directory's drop (which unlinks them) must not run. The lock goes with the process.
    let dir = std::mem::ManuallyDrop::new(dir);
    let metrics = match config.metrics.addr() {
        Ok(Some(addr)) => Some(Endpoint::bind(&addr, config.socket_mode).map_err(|e| fail(&e))?),
        Ok(None) => None,
        Err(e) => return Err((EXIT_BAD_CONFIG, chain(&e))),
    };
    let waits = WaitService::start(config.driver_waits)
        .map_err(|e| (1, format!("cannot start the wait service: {e}")))?;
    let devices = opened.slots.len();
    let runtime_dir = dir.path().to_owned();
    let daemon = Arc::new(Daemon::new(config, opened, waits));
    tracing::info!(runtime_dir = %runtime_dir.display(), socket_activation = activated_sockets, "listening");
    // Devices are up and both sockets listen (connections wait in the backlog until the
    // server accepts them): ready.
    notifier.ready(&format!(
        "serving {devices} device(s) on {}",
        runtime_dir.display()
    ));
    let background = tokio_util::sync::CancellationToken::new();
    if let Some(interval) = notifier.watchdog_interval() {
        tracing::info!(interval_ms = interval.as_millis() as u64, "watchdog on");
        let (notifier, stop) = (notifier.clone(), background.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => notifier.watchdog(),
                }
            }
        });
    }
    if notifier.enabled() {
        let (notifier, stop, d) = (notifier.clone(), background.clone(), daemon.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATUS_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = d.shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        let (resources, sessions) = d.registry.counts();
                        notifier.status(&format!(
                            "serving {devices} device(s): {sessions} session(s), {resources} resource(s), {} pending wait(s)",
                            d.waits.pending_waits()
                        ));
                    }
                }
            }
        });
    }
    let stopping = notifier.clone();
    let shutdown = async move {
        match signals {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        stopping.stopping("stopping: draining calls in flight");
    };
    let result = server::run(daemon, control, fd, metrics, shutdown).await;
    background.cancel();
    if !activated_sockets {
        drop(std::mem::ManuallyDrop::into_inner(dir));
    }
    result.map_err(|e| fail(&e))
}

/// How often the `STATUS=` line is refreshed with live counts.
const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
