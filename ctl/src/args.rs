//! The command line: clap definitions of every command and its arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gpushare_client::{ImageFormat, ImageKind, Sync};

use crate::exit;
use crate::parse::{
    parse_format, parse_point, parse_size, parse_u32, parse_u64, parse_usage, Point,
};

/// Control the gpushare daemon: GPU buffers, images and timeline semaphores shared between
/// processes.
#[derive(Debug, Parser)]
#[command(name = "gpusharectl", version, after_long_help = exit::EXIT_CODES_HELP)]
pub(crate) struct Cli {
    /// The daemon's runtime directory (holds control.sock and fd.sock). Default:
    /// $GPUSHARE_RUNTIME_DIR if set, else $XDG_RUNTIME_DIR/gpushare if XDG_RUNTIME_DIR is set,
    /// else /run/gpushare.
    // Not clap's `env`: clap shows an argument taken from the environment as required in the
    // usage line of every error. `gpushare_client::default_runtime_dir` reads the variable.
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) runtime_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show the daemon's version, limits and devices.
    Info,
    /// List your resources.
    Ls,
    /// Show one resource.
    Describe {
        /// Resource id.
        id: String,
    },
    /// Create and operate on buffers.
    #[command(subcommand)]
    Buffer(BufferCommand),
    /// Create, list, upload to and download from images (PNG or raw texels).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Create and operate on timeline semaphores.
    #[command(subcommand)]
    Sem(SemCommand),
    /// Create, list, show, watch and consume frame streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Show the daemon's counters, your sessions and your semaphores with their pending waits.
    Stats,
    /// `stats`, refreshed every --interval until interrupted (or --count refreshes).
    Top {
        /// Milliseconds between refreshes.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        interval: u64,
        /// Exit after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Export a resource, redeem its descriptor and print the import metadata (the descriptor
    /// is closed: this is for debugging).
    Export {
        /// Resource id.
        id: String,
    },
    /// Let another uid, or every process in a group, use one of your resources.
    Grant {
        /// Resource id.
        id: String,
        /// The uid to grant.
        #[arg(long, conflicts_with = "gid", required_unless_present = "gid")]
        uid: Option<u32>,
        /// The gid to grant (its members, primary or supplementary).
        #[arg(long)]
        gid: Option<u32>,
    },
    /// Take a grant back (descriptors already imported stay valid).
    Revoke {
        /// Resource id.
        id: String,
        /// The uid to revoke.
        #[arg(long, conflicts_with = "gid", required_unless_present = "gid")]
        uid: Option<u32>,
        /// The gid to revoke.
        #[arg(long)]
        gid: Option<u32>,
    },
    /// Mint a capability token for one of your resources (prints it as hex), or with --revoke
    /// invalidate every token of it.
    Token {
        /// Resource id.
        id: String,
        /// Invalidate the resource's tokens instead.
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StreamCommand {
    /// Create a stream of buffer slots with no producer (pinned: it outlives this command;
    /// a producer attaches with AttachProducer); prints its id.
    Create {
        /// How many slots (2 to 64).
        #[arg(long, default_value_t = 3, value_parser = parse_u32)]
        slots: u32,
        /// Each slot's size in bytes; K, M, G, T suffixes are powers of 1024.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Optional name.
        #[arg(long, default_value = "")]
        name: String,
        /// The daemon's device index.
        #[arg(long, default_value_t = 0, value_parser = parse_u32)]
        device: u32,
        /// Mirror its timelines in memop words for CUDA producers and consumers (the CUDA fast
        /// path), where the device offers it.
        #[arg(long)]
        word: bool,
    },
    /// List your streams.
    Ls,
    /// Show a stream: its slots and who holds each, its consumers (mode, queued, held,
    /// dropped frames, oldest held frame), frames per second and producer stalls.
    Show {
        /// Stream id.
        id: String,
    },
    /// `show`, refreshed every --interval until interrupted (or --count refreshes).
    Watch {
        /// Stream id.
        id: String,
        /// Milliseconds between refreshes.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        interval: u64,
        /// Exit after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Attach as a consumer and print each frame as it comes (its ready point waited for on
    /// the host, then released at once), until the stream ends or --count frames.
    Attach {
        /// Stream id.
        id: String,
        /// The newest frame only (default: every frame, FIFO).
        #[arg(long)]
        mailbox: bool,
        /// How many frames it may hold at once.
        #[arg(long, default_value_t = 1, value_parser = parse_u32)]
        limit: u32,
        /// Exit after this many frames.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// How long to wait for each frame, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 60_000)]
        timeout: u64,
    },
    /// Release a stream (drop the pin `create` made).
    Rm {
        /// Stream id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BufferCommand {
    /// Allocate a buffer (pinned: it outlives this command); prints its id.
    Create {
        /// Size in bytes; K, M, G, T suffixes are powers of 1024.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Optional name.
        #[arg(long, default_value = "")]
        name: String,
        /// Device index (see `info`).
        #[arg(long, default_value_t = 0)]
        device: u32,
    },
    /// Write bytes from a file, hex, or stdin (the default).
    Write {
        /// Buffer id.
        id: String,
        /// Byte offset to write at.
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Read the data from this file.
        #[arg(long, value_name = "PATH", conflicts_with = "hex")]
        file: Option<PathBuf>,
        /// The data as hex digits (whitespace ignored).
        #[arg(long)]
        hex: Option<String>,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Read bytes into a file or as a hex dump on stdout.
    Read {
        /// Buffer id.
        id: String,
        /// Byte offset to read at.
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Bytes to read.
        #[arg(long, value_parser = parse_size)]
        length: u64,
        /// Write the bytes to this file instead of a hex dump.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Fill a range with a repeated 32-bit word (offset and length multiples of 4).
    Fill {
        /// Buffer id.
        id: String,
        /// The 32-bit word (decimal or 0x hex).
        #[arg(long, value_parser = parse_u32)]
        value: u32,
        /// Byte offset of the range.
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Bytes to fill [default: the rest of the buffer].
        #[arg(long, value_parser = parse_size)]
        length: Option<u64>,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Copy a range from one buffer to another (or within one).
    Copy {
        /// Source buffer id.
        src: String,
        /// Destination buffer id.
        dst: String,
        /// Byte offset in the source.
        #[arg(long, value_parser = parse_size, default_value = "0")]
        src_offset: u64,
        /// Byte offset in the destination.
        #[arg(long, value_parser = parse_size, default_value = "0")]
        dst_offset: u64,
        /// Bytes to copy.
        #[arg(long, value_parser = parse_size)]
        length: u64,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Release the buffer (drops the pin; the daemon frees it when nothing else holds it).
    Rm {
        /// Buffer id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Allocate an image (pinned: it outlives this command); prints its id.
    Create {
        /// Texel format: r8unorm, rg8unorm, rgba8unorm, r8uint, rg8uint, rgba8uint, r16float,
        /// rg16float, rgba16float, r32float, rg32float, rgba32float, r32uint, rg32uint,
        /// rgba32uint, rgba8srgb (`info` lists what each device supports).
        #[arg(long, value_parser = parse_format)]
        format: ImageFormat,
        /// Level 0's width in texels.
        #[arg(long)]
        width: u32,
        /// Level 0's height in texels.
        #[arg(long)]
        height: u32,
        /// Level 0's depth in texels (3D images).
        #[arg(long, default_value_t = 1)]
        depth: u32,
        /// 2d (with array layers) or 3d [default: 3d when --depth is above 1, else 2d].
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Mip levels [default: 1].
        #[arg(long, value_name = "N", conflicts_with = "full_mip_chain")]
        mip_levels: Option<u32>,
        /// Every mip level, down to 1 texel.
        #[arg(long)]
        full_mip_chain: bool,
        /// Array layers (2D images).
        #[arg(long, value_name = "L", default_value_t = 1)]
        layers: u32,
        /// Usage: sampled, storage, color_attachment, comma-separated (or a VkImageUsageFlags
        /// number) [default: sampled,storage]. Transfer usage is always added.
        #[arg(long, value_parser = parse_usage)]
        usage: Option<u32>,
        /// Device index (see `info`).
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// Optional name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List your images: format, kind, extent, mip levels, layers and allocation size.
    Ls,
    /// Upload a PNG file (converted to the image's format) or, with --raw, the file's bytes
    /// as they are (tightly packed texels) into one level.
    Upload {
        /// Image id.
        id: String,
        /// The file: a PNG (by its content) of exactly the level's width x height, unless --raw.
        file: PathBuf,
        /// The mip level.
        #[arg(long, default_value_t = 0)]
        level: u32,
        /// One array layer [default: every layer; a PNG needs it when the image has several].
        #[arg(long, value_name = "N")]
        layer: Option<u32>,
        /// Upload the file's bytes as they are: exactly the level's (or the layer's) size.
        #[arg(long)]
        raw: bool,
        /// Then generate every level after the uploaded one from it, in the layers uploaded (as
        /// `image mips` does). Wait points hold the upload, signal points follow the mips.
        #[arg(long)]
        mips: bool,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Generate mip levels on the GPU, each filtered from the one before: linear (sRGB formats
    /// in linear light), nearest for uint formats.
    Mips {
        /// Image id.
        id: String,
        /// The level the others are made from.
        #[arg(long, value_name = "N", default_value_t = 0)]
        base_level: u32,
        /// How many levels to generate after it [default: every level to the last].
        #[arg(long, value_name = "N")]
        levels: Option<u32>,
        /// One array layer [default: every layer].
        #[arg(long, value_name = "N")]
        layer: Option<u32>,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Download one level into a PNG file (FILE must end in .png; unorm and float formats, 2D)
    /// or, with --raw, its tightly packed texels.
    Download {
        /// Image id.
        id: String,
        /// The file to write (replaced).
        file: PathBuf,
        /// The mip level.
        #[arg(long, default_value_t = 0)]
        level: u32,
        /// One array layer [default: every layer; a PNG needs it when the image has several].
        #[arg(long, value_name = "N")]
        layer: Option<u32>,
        /// Write the texels as they are.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Release the image (drops the pin; the daemon frees it when nothing else holds it).
    Rm {
        /// Image id.
        id: String,
    },
}

/// An image kind on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum KindArg {
    /// 2D, with array layers.
    #[value(name = "2d")]
    D2,
    /// 3D.
    #[value(name = "3d")]
    D3,
}

impl From<KindArg> for ImageKind {
    fn from(kind: KindArg) -> ImageKind {
        match kind {
            KindArg::D2 => ImageKind::D2,
            KindArg::D3 => ImageKind::D3,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum SemCommand {
    /// Create a timeline semaphore (pinned: it outlives this command); prints its id.
    Create {
        /// Initial value.
        #[arg(long, value_parser = parse_u64, default_value = "0")]
        initial: u64,
        /// Optional name.
        #[arg(long, default_value = "")]
        name: String,
        /// Device index (see `info`).
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// Mirror it in a memop word for CUDA users (the CUDA fast path), where the device
        /// offers it (`info` shows whether; `show` says why a semaphore has none).
        #[arg(long)]
        word: bool,
    },
    /// Signal to a value (must exceed the current value); prints the new value.
    Signal {
        /// Semaphore id.
        id: String,
        /// The value to signal.
        #[arg(value_parser = parse_u64)]
        value: u64,
    },
    /// Wait until the value reaches VALUE; prints the value seen. Exit code 4 on timeout.
    Wait {
        /// Semaphore id.
        id: String,
        /// The value to wait for.
        #[arg(value_parser = parse_u64)]
        value: u64,
        /// Give up after this many milliseconds (0 checks once) [default: wait indefinitely].
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
        /// Wait on fd.sock, the daemon's low-latency path, with the daemon and this process
        /// spinning for the first US microseconds (0: no spinning; the daemon caps it at its
        /// `limits.max_spin_us`) [default: a gRPC Wait call].
        #[arg(long, value_name = "US")]
        spin_us: Option<u64>,
    },
    /// Print the current value.
    Get {
        /// Semaphore id.
        id: String,
    },
    /// Print the value, then every change, one per line.
    Watch {
        /// Semaphore id.
        id: String,
        /// Exit after printing this many values.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Release the semaphore (drops the pin).
    Rm {
        /// Semaphore id.
        id: String,
    },
}

/// Wait and signal points of a daemon-executed buffer operation.
#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    /// Wait until semaphore SEM reaches VALUE before running (repeatable).
    #[arg(long = "wait", value_name = "SEM=VALUE", value_parser = parse_point)]
    pub(crate) wait: Vec<Point>,
    /// Signal semaphore SEM to VALUE after completing (repeatable).
    #[arg(long = "signal", value_name = "SEM=VALUE", value_parser = parse_point)]
    pub(crate) signal: Vec<Point>,
    /// Give up waiting for the wait points after this many milliseconds [default: the daemon's
    /// max_wait_timeout_ms].
    #[arg(long, value_name = "MS")]
    pub(crate) timeout: Option<u64>,
}

impl SyncArgs {
    pub(crate) fn to_sync(&self) -> Sync {
        let points = |list: &[Point]| {
            list.iter()
                .map(|p| (p.semaphore.clone(), p.value))
                .collect()
        };
        Sync {
            wait: points(&self.wait),
            signal: points(&self.signal),
            timeout: self.timeout.map(Duration::from_millis),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_ops_with_sync_points() {
        let cli = Cli::try_parse_from([
            "gpusharectl",
            "buffer",
            "fill",
            "b1",
            "--value",
            "0xff",
            "--length",
            "4K",
            "--wait",
            "s1=3",
            "--signal",
            "s2=4",
            "--signal",
            "s3=5",
            "--timeout",
            "250",
            "--json",
        ])
        .expect("valid command line");
        assert!(cli.json);
        let Command::Buffer(BufferCommand::Fill {
            value,
            length,
            sync,
            ..
        }) = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(value, 255);
        assert_eq!(length, Some(4096));
        let sync = sync.to_sync();
        assert_eq!(sync.wait, vec![("s1".to_owned(), 3)]);
        assert_eq!(sync.signal.len(), 2);
        assert_eq!(sync.timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn parses_image_commands() {
        let cli = Cli::try_parse_from([
            "gpusharectl",
            "image",
            "create",
            "--format",
            "RGBA8Unorm",
            "--width",
            "37",
            "--height",
            "21",
            "--full-mip-chain",
            "--layers",
            "2",
            "--usage",
            "sampled,color_attachment",
        ])
        .expect("valid command line");
        let Command::Image(ImageCommand::Create {
            format,
            width,
            depth,
            kind,
            mip_levels,
            full_mip_chain,
            layers,
            usage,
            ..
        }) = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(format, ImageFormat::Rgba8Unorm);
        assert_eq!((width, depth, kind, mip_levels), (37, 1, None, None));
        assert!(full_mip_chain);
        assert_eq!((layers, usage), (2, Some(0x14)));
        let cli = Cli::try_parse_from([
            "gpusharectl",
            "image",
            "download",
            "img-1",
            "out.png",
            "--level",
            "2",
            "--layer",
            "1",
            "--signal",
            "s=1",
        ])
        .expect("valid command line");
        let Command::Image(ImageCommand::Download {
            id,
            file,
            level,
            layer,
            raw,
            sync,
        }) = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(
            (id.as_str(), level, layer, raw),
            ("img-1", 2, Some(1), false)
        );
        assert_eq!(file, PathBuf::from("out.png"));
        assert_eq!(sync.to_sync().signal, vec![("s".to_owned(), 1)]);
        let cli = Cli::try_parse_from([
            "gpusharectl",
            "image",
            "upload",
            "img-1",
            "in.png",
            "--mips",
            "--wait",
            "s=1",
        ])
        .expect("valid command line");
        assert!(matches!(
            cli.command,
            Command::Image(ImageCommand::Upload {
                mips: true,
                level: 0,
                ..
            })
        ));
        let cli = Cli::try_parse_from([
            "gpusharectl",
            "image",
            "mips",
            "img-1",
            "--base-level",
            "1",
            "--levels",
            "2",
            "--layer",
            "3",
        ])
        .expect("valid command line");
        let Command::Image(ImageCommand::Mips {
            id,
            base_level,
            levels,
            layer,
            ..
        }) = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(
            (id.as_str(), base_level, levels, layer),
            ("img-1", 1, Some(2), Some(3))
        );
        let cli = Cli::try_parse_from([
            "gpusharectl",
            "image",
            "create",
            "--format",
            "r8uint",
            "--width",
            "4",
            "--height",
            "4",
            "--depth",
            "4",
            "--kind",
            "3d",
        ])
        .expect("valid command line");
        assert!(matches!(
            cli.command,
            Command::Image(ImageCommand::Create {
                kind: Some(KindArg::D3),
                depth: 4,
                ..
            })
        ));
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &["gpusharectl", "buffer", "create"][..],
            &["gpusharectl", "buffer", "create", "--size", "12Q"],
            &[
                "gpusharectl",
                "buffer",
                "read",
                "b",
                "--length",
                "1",
                "--wait",
                "s",
            ],
            &[
                "gpusharectl",
                "buffer",
                "write",
                "b",
                "--file",
                "f",
                "--hex",
                "00",
            ],
            &[
                "gpusharectl",
                "image",
                "create",
                "--format",
                "rgb8unorm",
                "--width",
                "1",
                "--height",
                "1",
            ],
            &[
                "gpusharectl",
                "image",
                "create",
                "--format",
                "r8unorm",
                "--width",
                "4",
                "--height",
                "4",
                "--mip-levels",
                "2",
                "--full-mip-chain",
            ],
            &[
                "gpusharectl",
                "image",
                "create",
                "--format",
                "r8unorm",
                "--width",
                "4",
                "--height",
                "4",
                "--kind",
                "1d",
            ],
            &["gpusharectl", "image", "upload", "img-1"],
            &["gpusharectl", "image", "mips"],
            &["gpusharectl", "image", "mips", "img-1", "--levels", "-1"],
        ] {
            let err = Cli::try_parse_from(args).expect_err("usage error");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
