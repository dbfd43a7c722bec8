//! The command line: clap definitions of every command and its arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use gpushare_client::Sync;

use crate::exit;
use crate::parse::{parse_point, parse_size, parse_u32, parse_u64, Point};

/// Control the gpushare daemon: GPU buffers and timeline semaphores shared between processes.
#[derive(Debug, Parser)]
#[command(name = "gpusharectl", version, after_long_help = exit::EXIT_CODES_HELP)]
pub(crate) struct Cli {
    /// The daemon's runtime directory (holds control.sock and fd.sock). Default:
    /// $XDG_RUNTIME_DIR/gpushare if XDG_RUNTIME_DIR is set, else /run/gpushare.
    #[arg(long, global = true, env = "GPUSHARE_RUNTIME_DIR", value_name = "DIR")]
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
    /// Create and operate on timeline semaphores.
    #[command(subcommand)]
    Sem(SemCommand),
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
    /// Let another uid, or every process of a primary gid, use one of your resources.
    Grant {
        /// Resource id.
        id: String,
        /// The uid to grant.
        #[arg(long, conflicts_with = "gid", required_unless_present = "gid")]
        uid: Option<u32>,
        /// The primary gid to grant.
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
        /// The primary gid to revoke.
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
        ] {
            let err = Cli::try_parse_from(args).expect_err("usage error");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
