//! The Vulkan executor: operations as Vulkan transfer submissions on one thread that owns the
//! device's transfer engine. Used where the host has no CUDA, or by configuration.

use std::sync::Arc;
use std::time::Duration;

use gpushare_interop::vulkan::{self, Device, SyncPoints, Transfer};

use super::{Executor, Op, OpFuture, Worker};
use crate::error::Error;

/// Longest a single transfer may run on the GPU before it is reported as failed.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Executes operations as Vulkan transfer submissions on one thread that owns the device's
/// [`Transfer`] engine.
#[derive(Debug)]
pub struct VulkanExecutor {
    worker: Worker,
}

impl VulkanExecutor {
    /// Starts the executor thread for `device`.
    pub fn start(device: &Arc<Device>) -> std::result::Result<Self, vulkan::Error> {
        let mut transfer = Transfer::new(device)?;
        let worker = Worker::start("gpushare-vk-exec", move |op| {
            let label = op.label();
            execute(&mut transfer, op).map_err(|source| Error::Gpu { op: label, source })
        })
        .map_err(|_| vulkan::Error::Unsupported("cannot start the executor thread".into()))?;
        Ok(Self { worker })
    }
}

fn execute(t: &mut Transfer, op: Op) -> std::result::Result<Vec<u8>, vulkan::Error> {
    let sync = SyncPoints {
        timeout: Some(TRANSFER_TIMEOUT),
        ..Default::default()
    };
    match op {
        Op::Write { dst, offset, data } => t
            .upload(dst.vk(), offset, &data, &sync)
            .map(|()| Vec::new()),
        Op::Read {
            src,
            offset,
            length,
        } => t.download(src.vk(), offset, length, &sync),
        Op::Fill {
            dst,
            offset,
            length,
            value,
        } => t
            .fill(dst.vk(), offset, length, value, &sync)
            .map(|()| Vec::new()),
        Op::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            length,
        } => t
            .copy(src.vk(), src_offset, dst.vk(), dst_offset, length, &sync)
            .map(|()| Vec::new()),
    }
}

impl Executor for VulkanExecutor {
    fn name(&self) -> &'static str {
        "vulkan"
    }

    fn run(&self, op: Op) -> OpFuture {
        self.worker.run(op)
    }
}
