//! The Vulkan executor: operations as Vulkan transfer submissions (mip generation as a blit
//! chain) on one thread that owns the device's transfer engine. Image transfers through host buffers go in pieces of at most
//! `HOST_CHUNK` bytes (whole layers, slices or rows), like buffer transfers. Used where the host
//! has no CUDA, or by configuration.

use std::sync::Arc;
use std::time::Duration;

use gpushare_interop::vulkan::{self, Device, SyncPoints, Transfer};

use super::{chunks, image_pieces, DeviceSync, Executor, Op, OpFuture, Source, Worker};
use crate::error::Error;
use crate::host_buffer::HostBuffer;

/// Longest a single transfer may run on the GPU before it is reported as failed.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Executes operations as Vulkan transfer submissions on one thread that owns the device's
/// [`Transfer`] engine.
#[derive(Debug)]
pub(crate) struct VulkanExecutor {
    worker: Worker,
}

impl VulkanExecutor {
    /// Starts the executor thread for `device`.
    pub(crate) fn start(device: &Arc<Device>) -> std::result::Result<Self, vulkan::Error> {
        let mut transfer = Transfer::new(device)?;
        let worker = Worker::start("gpushare-vk-exec", move |op, sync| {
            let label = op.label();
            if !sync.is_empty() {
                // `orders_on_device` is false: the caller signals from the host.
                return Err(Error::Gpu {
                    op: label,
                    source: vulkan::Error::Unsupported(
                        "device-ordered waits and signals on the Vulkan executor".into(),
                    ),
                });
            }
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
        Op::Write {
            dst,
            offset,
            src: Source::Bytes(data),
        } => t
            .upload(dst.vk(), offset, &data, &sync)
            .map(|()| Vec::new()),
        Op::Write {
            dst,
            offset,
            src:
                Source::Host {
                    host,
                    offset: from,
                    length,
                },
        } => {
            for (pos, n) in chunks(length) {
                let bytes = host_slice(&host, from + pos, n)?;
                t.upload(dst.vk(), offset + pos, bytes, &sync)?;
            }
            Ok(Vec::new())
        }
        Op::Read {
            src,
            offset,
            length,
            into: None,
        } => t.download(src.vk(), offset, length, &sync),
        Op::Read {
            src,
            offset,
            length,
            into: Some((host, to)),
        } => {
            for (pos, n) in chunks(length) {
                let bytes = t.download(src.vk(), offset + pos, n, &sync)?;
                host.mem()
                    .write_at(to + pos, &bytes)
                    .map_err(|_| host_range_error())?;
            }
            Ok(Vec::new())
        }
        Op::Register { .. } => Ok(Vec::new()),
        Op::WriteImage {
            dst,
            region,
            src: Source::Bytes(data),
        } => t
            .upload_image(dst.vk(), &region, &data, &sync)
            .map(|()| Vec::new()),
        Op::WriteImage {
            dst,
            region,
            src: Source::Host { host, offset, .. },
        } => {
            let texel = dst.desc().format.texel_size();
            for (piece, at) in image_pieces(&region, texel) {
                let bytes = host_slice(&host, offset + at, piece.size_bytes(texel))?;
                t.upload_image(dst.vk(), &piece, bytes, &sync)?;
            }
            Ok(Vec::new())
        }
        Op::ReadImage {
            src,
            region,
            into: None,
        } => t.download_image(src.vk(), &region, &sync),
        Op::ReadImage {
            src,
            region,
            into: Some((host, to)),
        } => {
            for (piece, at) in image_pieces(&region, src.desc().format.texel_size()) {
                let bytes = t.download_image(src.vk(), &piece, &sync)?;
                host.mem()
                    .write_at(to + at, &bytes)
                    .map_err(|_| host_range_error())?;
            }
            Ok(Vec::new())
        }
        Op::ClearImage {
            dst,
            base_level,
            levels,
            base_layer,
            layers,
            color,
        } => t
            .clear_image(
                dst.vk(),
                base_level,
                levels,
                base_layer,
                layers,
                color,
                &sync,
            )
            .map(|()| Vec::new()),
        Op::GenerateMips { image, range } => t
            .generate_mips(image.vk(), &range, &sync)
            .map(|()| Vec::new()),
        Op::CopyPeer { .. } => Err(vulkan::Error::Unsupported(
            "a CUDA peer copy on the Vulkan executor".into(),
        )),
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

fn host_range_error() -> vulkan::Error {
    vulkan::Error::Unsupported("a host buffer range outside the host buffer".into())
}

/// `len` bytes of `host` at `offset` as a slice, for the staging copy.
fn host_slice(host: &HostBuffer, offset: u64, len: u64) -> Result<&[u8], vulkan::Error> {
    let ptr = host
        .mem()
        .range(offset, len)
        .map_err(|_| host_range_error())?;
    // SAFETY: `ptr..ptr + len` lies in the host buffer's live mapping (range checked), which
    // `host` keeps mapped for the borrow. The client process may write these bytes while we
    // copy them; the API forbids it (WriteRequest.from_host), bytes have no invalid values, and
    // the slice is only read once, by the staging copy, so a violation gives unspecified bytes,
    // nothing worse.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len as usize) })
}

impl Executor for VulkanExecutor {
    fn name(&self) -> &'static str {
        "vulkan"
    }

    fn orders_on_device(&self) -> bool {
        false
    }

    fn run_ordered(&self, op: Op, sync: DeviceSync) -> OpFuture {
        self.worker.run(op, sync)
    }
}
