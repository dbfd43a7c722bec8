//! `gpushared`: command line, logging, signals; everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use gpushare_interop::vulkan;
use gpushare_server::config::{Config, Overrides};
use gpushare_server::daemon::Daemon;
use gpushare_server::error::chain;
use gpushare_server::runtime_dir::RuntimeDir;
use gpushare_server::waiter::WaitService;
use gpushare_server::{devices, server};

/// gpushare daemon: shares GPU buffers and timeline semaphores between processes.
///
/// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 1 on failure, 2 for an invalid
/// configuration, 3 when no usable Vulkan device exists.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see deploy/config.example.toml).
    #[arg(long, env = "GPUSHARE_CONFIG")]
    config: Option<PathBuf>,
    /// Runtime directory for control.sock and fd.sock
    /// [default: $XDG_RUNTIME_DIR/gpushare, else /run/gpushare].
    #[arg(long, env = "GPUSHARE_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Device to serve: auto, an index, or a UUID [default: auto].
    #[arg(long, env = "GPUSHARE_DEVICE")]
    device: Option<String>,
    /// Log filter: error, warn, info, debug, trace, or per module [default: info].
    #[arg(long, env = "GPUSHARE_LOG")]
    log: Option<String>,
    /// Load and validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("gpushared: invalid log filter {:?}: {e}", config.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            tracing::error!("{e}");
            ExitCode::from(code)
        }
    }
}

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

async fn serve(config: Config) -> Result<(), (u8, String)> {
    raise_fd_limit();
    let fail = |e: &dyn std::error::Error| (1, chain(e));
    let dir = RuntimeDir::lock(&config.runtime_dir).map_err(|e| fail(&e))?;
    let slots = devices::open(&config.device).map_err(|e| {
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
    let (control, fd) = dir.bind(config.socket_mode).map_err(|e| fail(&e))?;
    let waits =
        WaitService::start().map_err(|e| (1, format!("cannot start the wait service: {e}")))?;
    let daemon = Arc::new(Daemon::new(config, slots, waits));
    tracing::info!(runtime_dir = %dir.path().display(), "listening");
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
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
    };
    let result = server::run(daemon, control, fd, shutdown).await;
    drop(dir);
    result.map_err(|e| fail(&e))
}
