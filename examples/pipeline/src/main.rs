//! `gpushare-pipeline`: three processes joined by two gpushare frame streams.
//!
//! ```text
//! producer (Vulkan) --"frames"--> filter (CUDA, or Vulkan + host) --"filtered"--> sink
//! ```
//!
//! - The **producer** imports the slots of the first stream into its own Vulkan device and
//!   fills each frame with `vkCmdFillBuffer`: every RGBA8 pixel of frame `n` is
//!   [`pixel(n)`](common::pixel) (the frame number in red, green and blue, alpha 255).
//! - The **filter** consumes that stream and produces the second: with CUDA (the slots and
//!   timelines imported into its CUDA context), a kernel inverts the colour of every pixel
//!   ([`filtered`](common::filtered)); without CUDA it reads the frame through Vulkan,
//!   inverts it on the host and writes it through Vulkan, and says so.
//! - The **sink** consumes the second stream, checks every pixel of every frame against its
//!   number, measures the hops (present → acquire, from the `timestamp_ns` and `user_data` of
//!   the frames' metadata), writes one frame as a PNG, and prints a report.
//!
//! With GPU points (the daemon's device exports timeline semaphores) every hand-off is
//! GPU-side: each process waits for the frame's or slot's points and signals its own on its
//! queue or CUDA stream. With HOST points (lavapipe) the daemon signals them at each call
//! (point 0: "ready/done now").
//!
//! `gpushare-pipeline [--frames N] [--width W --height H] ...` starts the three processes
//! (this binary's `producer`, `filter` and `sink` subcommands) against the daemon of
//! `--runtime-dir` / `$GPUSHARE_RUNTIME_DIR`, or, with `--own-daemon`, against a `gpushared`
//! it starts itself.
//!
//! The code, one concept a module: [`common`] (what the roles share: the frames' contents,
//! the frame calls, the output), [`gpu`] (one process's Vulkan or CUDA side: slots, timelines,
//! the filter's kernel), [`roles`] (the producer, filter and sink processes); this file holds
//! the command line and the pipeline that starts the three processes.

mod common;
mod gpu;
mod roles;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use gpushare_client::{v1, Client, SlotKind, StreamOptions};

use crate::common::{points_name, say, Res, TIMEOUT};

#[derive(Parser, Debug)]
#[command(
    name = "gpushare-pipeline",
    about = "A Vulkan producer, a CUDA filter and a checking sink in three processes, joined by two gpushare frame streams",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The daemon's runtime directory (control.sock, fd.sock).
    #[arg(long, env = "GPUSHARE_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Frame width in pixels (RGBA8).
    #[arg(long, default_value_t = 1920)]
    width: u32,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 1080)]
    height: u32,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Frames to produce.
    #[arg(long, default_value_t = 500)]
    frames: u64,
    /// Slots per stream.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Start a gpushared of our own (found next to this binary, or --daemon-bin) in a
    /// temporary runtime directory, instead of using a running one.
    #[arg(long)]
    own_daemon: bool,
    /// The gpushared binary for --own-daemon.
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// The filter's API.
    #[arg(long, value_enum, default_value_t = FilterApi::Auto)]
    filter_api: FilterApi,
    /// Where the sink writes one frame as a PNG.
    #[arg(long, default_value = "pipeline-frame.png")]
    png: PathBuf,
    /// The frame the sink writes (default: the middle one).
    #[arg(long)]
    png_frame: Option<u64>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum FilterApi {
    /// CUDA if this process can open the daemon's GPU with CUDA, else Vulkan and the host.
    Auto,
    /// CUDA, or fail.
    Cuda,
    /// Vulkan transfers and a host-side transform.
    Vulkan,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// (Started by the pipeline.) Produces frames into a stream.
    Producer {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        stream: String,
        #[arg(long)]
        frames: u64,
    },
    /// (Started by the pipeline.) Consumes one stream, produces the filtered frames into another.
    Filter {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long, value_enum, default_value_t = FilterApi::Auto)]
        api: FilterApi,
    },
    /// (Started by the pipeline.) Consumes the filtered stream, checks and measures it.
    Sink {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        stream: String,
        #[arg(long)]
        frames: u64,
        #[arg(long)]
        png: PathBuf,
        #[arg(long)]
        png_frame: u64,
    },
}

impl Common {
    pub(crate) fn dir(&self) -> PathBuf {
        self.runtime_dir
            .clone()
            .unwrap_or_else(gpushare_client::default_runtime_dir)
    }

    pub(crate) fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    fn args(&self, dir: &Path) -> Vec<String> {
        vec![
            "--runtime-dir".into(),
            dir.display().to_string(),
            "--width".into(),
            self.width.to_string(),
            "--height".into(),
            self.height.to_string(),
        ]
    }
}

// ---- The pipeline: streams, three processes, optionally a daemon ----

/// A child of ours, killed (by its own id) if still running when dropped.
struct Kid {
    name: &'static str,
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    forward: Option<std::thread::JoinHandle<()>>,
}

impl Kid {
    /// Starts `args` of this binary; its stdout lines are printed prefixed with its name and
    /// handed to [`Kid::wait_for`].
    fn start(name: &'static str, args: &[String]) -> Res<Kid> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        let forward = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line != "attached" {
                    say(&format!("[{name:8}] {line}"));
                }
                let _ = tx.send(line);
            }
        });
        Ok(Kid {
            name,
            child,
            lines,
            forward: Some(forward),
        })
    }

    /// Waits for the line `want`.
    fn wait_for(&mut self, want: &str) -> Res<()> {
        loop {
            match self.lines.recv_timeout(TIMEOUT) {
                Ok(l) if l == want => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!("the {} never printed {want:?}", self.name).into());
                }
            }
        }
    }

    fn wait(mut self) -> Res<()> {
        let status = self.child.wait()?;
        if let Some(f) = self.forward.take() {
            let _ = f.join();
        }
        if !status.success() {
            return Err(format!("the {} failed ({status})", self.name).into());
        }
        Ok(())
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A gpushared of our own in a temporary runtime directory.
struct OwnDaemon {
    child: Child,
    dir: PathBuf,
}

impl OwnDaemon {
    fn start(bin: Option<&Path>) -> Res<OwnDaemon> {
        let bin = match bin {
            Some(b) => b.to_owned(),
            None => std::env::current_exe()?
                .parent()
                .ok_or("no directory of this binary")?
                .join("gpushared"),
        };
        let dir = std::env::temp_dir().join(format!("gpushare-pipeline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("config.toml");
        std::fs::write(&config, "")?;
        let log = std::fs::File::create(dir.join("gpushared.log"))?;
        let run = dir.join("run");
        let mut child = Command::new(&bin)
            .arg("--runtime-dir")
            .arg(&run)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("gpushared.log")).unwrap_or_default();
                return Err(format!("gpushared exited with {status}:\n{log}").into());
            }
            let serving = std::fs::read_to_string(dir.join("gpushared.log"))
                .is_ok_and(|l| l.contains("serving"));
            if serving && run.join("control.sock").exists() && run.join("fd.sock").exists() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("gpushared did not start within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(OwnDaemon { child, dir })
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn pipeline(args: &RunArgs) -> Res<()> {
    let own = if args.own_daemon {
        let d = OwnDaemon::start(args.daemon_bin.as_deref())?;
        say(&format!(
            "pipeline: started gpushared in {}",
            d.runtime_dir().display()
        ));
        Some(d)
    } else {
        None
    };
    let dir = match &own {
        Some(d) => d.runtime_dir(),
        None => args.common.dir(),
    };
    let client = Client::connect_with_session(&dir, "gpushare-pipeline")
        .await
        .map_err(|e| format!("connecting to gpushared at {}: {e}", dir.display()))?;
    let size = args.common.pixels() * 4;
    if size == 0 {
        return Err("empty frames".into());
    }
    // The streams are held by this session; the roles attach from their own processes.
    let kind = SlotKind::Buffer(size);
    let opts = StreamOptions::default();
    let frames_stream = client
        .create_stream_unproduced(args.slots, &kind, &opts)
        .await?;
    let filtered_stream = client
        .create_stream_unproduced(args.slots, &kind, &opts)
        .await?;
    say(&format!(
        "pipeline: {} frames of {}x{} RGBA8 ({} bytes), {} slots per stream; streams {} -> {}; {}",
        args.frames,
        args.common.width,
        args.common.height,
        size,
        args.slots,
        frames_stream.id,
        filtered_stream.id,
        points_name(frames_stream.points == v1::StreamPoints::Gpu as i32)
    ));
    let common = args.common.args(&dir);
    let with = |role: &str, extra: &[String]| {
        let mut v = vec![role.to_owned()];
        v.extend(common.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    };
    let png_frame = args.png_frame.unwrap_or((args.frames / 2).max(1));
    // Consumers first: a consumer receives the frames presented after it attached.
    let mut sink = Kid::start(
        "sink",
        &with(
            "sink",
            &[
                "--stream".into(),
                filtered_stream.id.clone(),
                "--frames".into(),
                args.frames.to_string(),
                "--png".into(),
                args.png.display().to_string(),
                "--png-frame".into(),
                png_frame.to_string(),
            ],
        ),
    )?;
    sink.wait_for("attached")?;
    let api = match args.filter_api {
        FilterApi::Auto => "auto",
        FilterApi::Cuda => "cuda",
        FilterApi::Vulkan => "vulkan",
    };
    let mut filter = Kid::start(
        "filter",
        &with(
            "filter",
            &[
                "--input".into(),
                frames_stream.id.clone(),
                "--output".into(),
                filtered_stream.id.clone(),
                "--api".into(),
                api.into(),
            ],
        ),
    )?;
    filter.wait_for("attached")?;
    let start = Instant::now();
    let producer = Kid::start(
        "producer",
        &with(
            "producer",
            &[
                "--stream".into(),
                frames_stream.id.clone(),
                "--frames".into(),
                args.frames.to_string(),
            ],
        ),
    )?;
    // Wait in order; the first failure drops (kills) the rest.
    let result = tokio::task::spawn_blocking(move || -> Res<()> {
        producer.wait()?;
        filter.wait()?;
        sink.wait()
    })
    .await?;
    result?;
    say(&format!(
        "pipeline: done in {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    drop(client);
    drop(own);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (what, result) = match &cli.role {
        None => ("pipeline", pipeline(&cli.run).await),
        Some(Role::Producer {
            common,
            stream,
            frames,
        }) => (
            "producer",
            roles::producer::run(common, stream, *frames).await,
        ),
        Some(Role::Filter {
            common,
            input,
            output,
            api,
        }) => (
            "filter",
            roles::filter::run(common, input, output, *api).await,
        ),
        Some(Role::Sink {
            common,
            stream,
            frames,
            png,
            png_frame,
        }) => (
            "sink",
            roles::sink::run(common, stream, *frames, png, *png_frame).await,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpushare-pipeline {what}: {e}");
            ExitCode::FAILURE
        }
    }
}
