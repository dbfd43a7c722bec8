//! Daemon-executed GPU operations (Write, Read, Fill, Copy, their image forms, and mip
//! generation) behind one trait, with two implementations: [`CudaExecutor`] (the daemon's CUDA
//! stream over its imported memory) and [`VulkanExecutor`] (Vulkan transfer submissions).
//! Configuration chooses (`executor`). Mip generation is a Vulkan blit chain on both: the CUDA
//! executor runs it on its own thread, in order with its stream (see `cuda.rs`).
//!
//! Sequencing starts in the caller (`daemon/ops.rs`): wait points are awaited on the host through the
//! wait service *before* an operation is handed to an executor, so a client that never signals
//! a wait point never stalls the daemon's stream or queue for everybody else; it only holds its
//! own call, bounded by its timeout. The CUDA executor then also waits for the reached points
//! and signals the signal points on its stream, in order with the work ([`DeviceSync`]); with
//! the Vulkan executor the caller signals from the host once the operation completed.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::buffer::SharedBuffer;
use crate::error::{Error, Result};
use crate::host_buffer::HostBuffer;
use crate::image::SharedImage;
use crate::semaphore::{GpuSignals, Semaphore};
use gpushare_interop::image::ImageRegion;
use gpushare_interop::vulkan::{ClearColor, MipRange};

mod cuda;
mod vulkan;

pub(crate) use cuda::CudaExecutor;
pub(crate) use vulkan::VulkanExecutor;

/// Where a Write's bytes come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Bytes that came in the request.
    Bytes(Vec<u8>),
    /// A range of a host buffer.
    Host {
        /// The host buffer.
        host: Arc<HostBuffer>,
        /// Byte offset in it.
        offset: u64,
        /// Bytes.
        length: u64,
    },
}

impl Source {
    /// The number of bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::Host { length, .. } => *length,
        }
    }
}

/// Transfers through host memory are cut into pieces this large: host-buffer transfers on the
/// Vulkan executor (whose staging would otherwise grow to the whole transfer) and staged copies
/// between devices.
pub(crate) const HOST_CHUNK: u64 = 32 << 20;

/// `(offset, length)` pieces of at most [`HOST_CHUNK`] bytes covering `0..length`.
pub(crate) fn chunks(length: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..length)
        .step_by(HOST_CHUNK as usize)
        .map(move |pos| (pos, HOST_CHUNK.min(length - pos)))
}

/// Pieces of `region` (of a format with `texel` bytes per texel) of at most [`HOST_CHUNK`]
/// bytes each where a row allows, with each piece's byte offset in the region's tightly packed
/// bytes: whole layers, else slices of one layer, else rows of one slice (the packing order, so
/// every piece is one contiguous byte range).
pub(crate) fn image_pieces(region: &ImageRegion, texel: u32) -> Vec<(ImageRegion, u64)> {
    let row = u64::from(region.width) * u64::from(texel);
    let slice = row * u64::from(region.height);
    let layer = slice * u64::from(region.depth);
    let per = |unit: u64| (HOST_CHUNK / unit.max(1)).max(1) as u32;
    let mut out = Vec::new();
    let mut push = |r: ImageRegion, at: u64| out.push((r, at));
    if layer <= HOST_CHUNK {
        let n = per(layer);
        let mut l = 0;
        while l < region.layers {
            let count = n.min(region.layers - l);
            let r = ImageRegion {
                base_layer: region.base_layer + l,
                layers: count,
                ..*region
            };
            push(r, u64::from(l) * layer);
            l += count;
        }
        return out;
    }
    for l in 0..region.layers {
        let base = u64::from(l) * layer;
        let one = ImageRegion {
            base_layer: region.base_layer + l,
            layers: 1,
            ..*region
        };
        if slice <= HOST_CHUNK {
            let n = per(slice);
            let mut z = 0;
            while z < region.depth {
                let count = n.min(region.depth - z);
                push(
                    ImageRegion {
                        z: region.z + z,
                        depth: count,
                        ..one
                    },
                    base + u64::from(z) * slice,
                );
                z += count;
            }
        } else {
            let n = per(row);
            for z in 0..region.depth {
                let mut y = 0;
                while y < region.height {
                    let count = n.min(region.height - y);
                    push(
                        ImageRegion {
                            z: region.z + z,
                            depth: 1,
                            y: region.y + y,
                            height: count,
                            ..one
                        },
                        base + u64::from(z) * slice + u64::from(y) * row,
                    );
                    y += count;
                }
            }
        }
    }
    out
}

/// One daemon-executed operation. Ranges were validated by the caller.
#[derive(Debug)]
pub(crate) enum Op {
    /// Upload `src` at `offset`.
    Write {
        /// Destination.
        dst: Arc<SharedBuffer>,
        /// Byte offset.
        offset: u64,
        /// The bytes.
        src: Source,
    },
    /// Download `length` bytes at `offset`: into the reply, or into a host buffer at an offset.
    Read {
        /// Source.
        src: Arc<SharedBuffer>,
        /// Byte offset.
        offset: u64,
        /// Bytes to read.
        length: u64,
        /// The host buffer and offset to read into; `None`: the bytes are returned.
        into: Option<(Arc<HostBuffer>, u64)>,
    },
    /// Copy from a buffer of another CUDA device (`cuMemcpyPeerAsync`; CUDA executor only).
    CopyPeer {
        /// Source, on `src_device`.
        src: Arc<SharedBuffer>,
        /// The source's CUDA device.
        src_device: Arc<gpushare_interop::cuda::CudaDevice>,
        /// Source offset.
        src_offset: u64,
        /// Destination, on this executor's device.
        dst: Arc<SharedBuffer>,
        /// Destination offset.
        dst_offset: u64,
        /// Bytes.
        length: u64,
    },
    /// Prepare a new host buffer for transfers (the CUDA executor page-locks it).
    Register {
        /// The host buffer.
        host: Arc<HostBuffer>,
    },
    /// Repeat a 32-bit word over a range.
    Fill {
        /// Destination.
        dst: Arc<SharedBuffer>,
        /// Byte offset (multiple of 4).
        offset: u64,
        /// Bytes (multiple of 4).
        length: u64,
        /// The word.
        value: u32,
    },
    /// Upload `src` (the region's tightly packed bytes) into a region of an image.
    WriteImage {
        /// Destination.
        dst: Arc<SharedImage>,
        /// Where (checked against the image).
        region: ImageRegion,
        /// The bytes: exactly the region's size.
        src: Source,
    },
    /// Download a region of an image: into the reply, or into a host buffer at an offset.
    ReadImage {
        /// Source.
        src: Arc<SharedImage>,
        /// Where (checked against the image).
        region: ImageRegion,
        /// The host buffer and offset to read into; `None`: the bytes are returned.
        into: Option<(Arc<HostBuffer>, u64)>,
    },
    /// Set levels and layers of an image to one color.
    ClearImage {
        /// Destination.
        dst: Arc<SharedImage>,
        /// First level.
        base_level: u32,
        /// Levels (at least 1, within the image).
        levels: u32,
        /// First layer.
        base_layer: u32,
        /// Layers (at least 1, within the image).
        layers: u32,
        /// The color, of the format's kind.
        color: ClearColor,
    },
    /// Generate mip levels, each filtered from the one before (a Vulkan blit chain).
    GenerateMips {
        /// The image.
        image: Arc<SharedImage>,
        /// Which levels and layers (checked against the image).
        range: MipRange,
    },
    /// Copy between buffers of one device.
    Copy {
        /// Source.
        src: Arc<SharedBuffer>,
        /// Source offset.
        src_offset: u64,
        /// Destination.
        dst: Arc<SharedBuffer>,
        /// Destination offset.
        dst_offset: u64,
        /// Bytes.
        length: u64,
    },
}

/// Something an operation uses, kept alive while the device may still use it.
pub(crate) type Keep = Arc<dyn std::any::Any + Send + Sync>;

impl Op {
    /// Everything the operation uses (buffers, images, host buffers, devices), to keep alive
    /// until the device is done with it: an executor that enqueues work and synchronizes later
    /// holds these until then, whatever the caller or the registry drops meanwhile.
    pub(crate) fn retain(&self) -> Vec<Keep> {
        fn source(src: &Source) -> Option<Keep> {
            match src {
                Source::Host { host, .. } => Some(host.clone()),
                Source::Bytes(_) => None,
            }
        }
        let into = |into: &Option<(Arc<HostBuffer>, u64)>| -> Option<Keep> {
            into.as_ref().map(|(h, _)| -> Keep { h.clone() })
        };
        match self {
            Op::Write { dst, src, .. } => [Some(dst.clone() as Keep), source(src)]
                .into_iter()
                .flatten()
                .collect(),
            Op::Read { src, into: i, .. } => [Some(src.clone() as Keep), into(i)]
                .into_iter()
                .flatten()
                .collect(),
            Op::CopyPeer {
                src,
                src_device,
                dst,
                ..
            } => vec![src.clone(), src_device.clone(), dst.clone()],
            Op::Register { host } => vec![host.clone()],
            Op::WriteImage { dst, src, .. } => [Some(dst.clone() as Keep), source(src)]
                .into_iter()
                .flatten()
                .collect(),
            Op::ReadImage { src, into: i, .. } => [Some(src.clone() as Keep), into(i)]
                .into_iter()
                .flatten()
                .collect(),
            Op::ClearImage { dst, .. } => vec![dst.clone()],
            Op::GenerateMips { image, .. } => vec![image.clone()],
            Op::Fill { dst, .. } => vec![dst.clone()],
            Op::Copy { src, dst, .. } => vec![src.clone(), dst.clone()],
        }
    }

    /// The operation's name, for errors and logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Op::Write { .. } => "write",
            Op::Read { .. } => "read",
            Op::Fill { .. } => "fill",
            Op::Copy { .. } => "copy",
            Op::Register { .. } => "host buffer registration",
            Op::CopyPeer { .. } => "copy between devices",
            Op::WriteImage { .. } => "image write",
            Op::ReadImage { .. } => "image read",
            Op::ClearImage { .. } => "image clear",
            Op::GenerateMips { .. } => "mip generation",
        }
    }
}

/// Future of an operation: the bytes read (empty for everything but Read).
pub(crate) type OpFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>>> + Send>>;

/// Semaphore points an operation waits for and signals on its device's stream, in order with
/// its work (Falcor's `waitForCuda` / `waitForFalcor`). The wait points were already reached on
/// the host (`daemon/ops.rs` gates them there, so an unsignaled point never stalls the stream that
/// every client shares): waiting for them again on the stream orders the operation after the
/// producer's GPU work. The signals were reserved (`Semaphore::reserve`).
#[derive(Debug, Default)]
pub(crate) struct DeviceSync {
    /// Semaphores of the operation's device, and the values already reached.
    pub(crate) wait: Vec<(Arc<Semaphore>, u64)>,
    /// Reserved signal points; dropped once the stream has passed them.
    pub(crate) signal: Option<GpuSignals>,
}

impl DeviceSync {
    /// Whether there is nothing to wait for or signal.
    pub(crate) fn is_empty(&self) -> bool {
        self.wait.is_empty() && self.signal.as_ref().is_none_or(GpuSignals::is_empty)
    }
}

/// Runs operations on a device, in submission order, each complete when its future resolves.
pub(crate) trait Executor: Send + Sync + std::fmt::Debug {
    /// Name reported by GetInfo ("cuda" or "vulkan").
    fn name(&self) -> &'static str;
    /// Whether it waits for and signals semaphores of its device in order with its work
    /// ([`DeviceSync`]); otherwise the caller signals them from the host afterwards.
    fn orders_on_device(&self) -> bool;
    /// Queues `op` with device-ordered waits and signals (empty unless
    /// [`orders_on_device`](Self::orders_on_device)).
    fn run_ordered(&self, op: Op, sync: DeviceSync) -> OpFuture;
    /// Queues `op`.
    fn run(&self, op: Op) -> OpFuture {
        self.run_ordered(op, DeviceSync::default())
    }
}

type Job = (Op, DeviceSync, oneshot::Sender<Result<Vec<u8>>>);

/// The thread an executor runs its operations on, one at a time in submission order. Dropping
/// it (or [`Worker::stop`]) lets queued operations finish, then joins the thread.
#[derive(Debug)]
struct Worker {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Starts a thread that runs `exec` for each operation.
    fn start(
        name: &str,
        mut exec: impl FnMut(Op, &DeviceSync) -> Result<Vec<u8>> + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for (op, sync, reply) in rx {
                    // The caller may have gone (client cancelled); the work is done regardless.
                    let result = exec(op, &sync);
                    // The stream has passed the signals (or they were never enqueued): end
                    // the reservation before answering, so the caller sees it ended.
                    drop(sync);
                    let _ = reply.send(result);
                }
            })?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `op` with `sync`. If the thread is gone, `sync` is dropped here (its reservation
    /// ends: nothing was enqueued).
    fn run(&self, op: Op, sync: DeviceSync) -> OpFuture {
        let (tx, rx) = oneshot::channel();
        let sent = match &*self.jobs.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(jobs) => jobs.send((op, sync, tx)).is_ok(),
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(Error::ExecutorGone);
            }
            rx.await.unwrap_or(Err(Error::ExecutorGone))
        })
    }

    /// Stops accepting work, lets queued work finish and joins the thread.
    fn stop(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("an executor thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_exactly() {
        assert_eq!(chunks(0).count(), 0);
        assert_eq!(chunks(5).collect::<Vec<_>>(), vec![(0, 5)]);
        assert_eq!(
            chunks(HOST_CHUNK).collect::<Vec<_>>(),
            vec![(0, HOST_CHUNK)]
        );
        let n = 2 * HOST_CHUNK + 7;
        let parts: Vec<_> = chunks(n).collect();
        assert_eq!(
            parts,
            vec![
                (0, HOST_CHUNK),
                (HOST_CHUNK, HOST_CHUNK),
                (2 * HOST_CHUNK, 7)
            ]
        );
        assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), n);
    }

    #[test]
    fn image_pieces_tile_the_packed_bytes_in_order() {
        let region = |layers, w, h, d| ImageRegion {
            level: 0,
            base_layer: 2,
            layers,
            x: 3,
            y: 4,
            z: 5,
            width: w,
            height: h,
            depth: d,
        };
        for (r, texel) in [
            (region(1, 16, 16, 1), 4),
            (region(8, 2048, 2048, 1), 4),
            (region(3, 4096, 4096, 1), 16),
            (region(1, 512, 512, 64), 8),
            (region(2, 16384, 16384, 1), 16),
        ] {
            let pieces = image_pieces(&r, texel);
            let mut at = 0;
            for (p, offset) in &pieces {
                assert_eq!(*offset, at, "{r:?}: pieces follow one another");
                let size = p.size_bytes(texel);
                assert!(size <= HOST_CHUNK, "{r:?}: piece {p:?} of {size} bytes");
                assert_eq!((p.x, p.width), (r.x, r.width));
                at += size;
            }
            assert_eq!(at, r.size_bytes(texel), "{r:?}: every byte once");
        }
        assert_eq!(image_pieces(&region(4, 8, 8, 1), 4).len(), 1);
    }
}
