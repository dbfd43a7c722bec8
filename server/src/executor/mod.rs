//! Daemon-executed GPU operations (Write, Read, Fill, Copy) behind one trait, so that a CUDA
//! executor can stand beside the Vulkan one.
//!
//! Sequencing is done by the caller (`ops.rs`): wait points are awaited on the host through the
//! wait service *before* an operation is handed to an executor, and signal points are signaled
//! after it completed. A client that never signals a wait point therefore never stalls the
//! daemon's queue for everybody else; it only holds its own call, bounded by its timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gpushare_interop::vulkan::{self, Device, ExportableBuffer, SyncPoints, Transfer};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// One daemon-executed operation. Ranges were validated by the caller.
#[derive(Debug)]
pub enum Op {
    /// Upload `data` at `offset`.
    Write {
        /// Destination.
        dst: Arc<ExportableBuffer>,
        /// Byte offset.
        offset: u64,
        /// Bytes to write.
        data: Vec<u8>,
    },
    /// Download `length` bytes at `offset`.
    Read {
        /// Source.
        src: Arc<ExportableBuffer>,
        /// Byte offset.
        offset: u64,
        /// Bytes to read.
        length: u64,
    },
    /// Repeat a 32-bit word over a range.
    Fill {
        /// Destination.
        dst: Arc<ExportableBuffer>,
        /// Byte offset (multiple of 4).
        offset: u64,
        /// Bytes (multiple of 4).
        length: u64,
        /// The word.
        value: u32,
    },
    /// Copy between buffers of one device.
    Copy {
        /// Source.
        src: Arc<ExportableBuffer>,
        /// Source offset.
        src_offset: u64,
        /// Destination.
        dst: Arc<ExportableBuffer>,
        /// Destination offset.
        dst_offset: u64,
        /// Bytes.
        length: u64,
    },
}

impl Op {
    fn label(&self) -> &'static str {
        match self {
            Op::Write { .. } => "write",
            Op::Read { .. } => "read",
            Op::Fill { .. } => "fill",
            Op::Copy { .. } => "copy",
        }
    }
}

/// Future of an operation: the bytes read (empty for everything but Read).
pub type OpFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>>> + Send>>;

/// Runs operations on a device, in submission order, each complete when its future resolves.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Name reported by GetInfo ("vulkan").
    fn name(&self) -> &'static str;
    /// Queues `op`.
    fn run(&self, op: Op) -> OpFuture;
}

/// Longest a single transfer may run on the GPU before it is reported as failed.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

type Job = (Op, oneshot::Sender<Result<Vec<u8>>>);

/// Executes operations as Vulkan transfer submissions on one thread that owns the device's
/// [`Transfer`] engine. Dropping it lets queued jobs finish, then joins the thread.
#[derive(Debug)]
pub struct VulkanExecutor {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl VulkanExecutor {
    /// Starts the executor thread for `device`.
    pub fn start(device: &Arc<Device>) -> std::result::Result<Self, vulkan::Error> {
        let mut transfer = Transfer::new(device)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("gpushare-vk-exec".into())
            .spawn(move || {
                for (op, reply) in rx {
                    let label = op.label();
                    let result = execute(&mut transfer, op)
                        .map_err(|source| Error::Gpu { op: label, source });
                    // The caller may have gone (client cancelled); the work is done regardless.
                    let _ = reply.send(result);
                }
            })
            .map_err(|_| vulkan::Error::Unsupported("cannot start the executor thread".into()))?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops accepting work, lets queued work finish and joins the thread.
    pub fn stop(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the Vulkan executor thread panicked");
            }
        }
    }
}

impl Drop for VulkanExecutor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn execute(t: &mut Transfer, op: Op) -> std::result::Result<Vec<u8>, vulkan::Error> {
    let sync = SyncPoints {
        timeout: Some(TRANSFER_TIMEOUT),
        ..Default::default()
    };
    match op {
        Op::Write { dst, offset, data } => {
            t.upload(&*dst, offset, &data, &sync).map(|()| Vec::new())
        }
        Op::Read {
            src,
            offset,
            length,
        } => t.download(&*src, offset, length, &sync),
        Op::Fill {
            dst,
            offset,
            length,
            value,
        } => t
            .fill(&*dst, offset, length, value, &sync)
            .map(|()| Vec::new()),
        Op::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            length,
        } => t
            .copy(&*src, src_offset, &*dst, dst_offset, length, &sync)
            .map(|()| Vec::new()),
    }
}

impl Executor for VulkanExecutor {
    fn name(&self) -> &'static str {
        "vulkan"
    }

    fn run(&self, op: Op) -> OpFuture {
        let (tx, rx) = oneshot::channel();
        let sent = match &*self.jobs.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(jobs) => jobs.send((op, tx)).is_ok(),
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(Error::ExecutorGone);
            }
            rx.await.unwrap_or(Err(Error::ExecutorGone))
        })
    }
}
