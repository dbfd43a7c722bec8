//! The CUDA executor: operations on the daemon's CUDA stream over its own buffers imported into
//! CUDA (Falcor's `memcpy*`/`memset` helpers across processes). Uploads and downloads of bytes
//! in messages are staged through pinned host memory; those from and to host buffers copy
//! directly, as DMA, from the host buffer's page-locked memory (registered at creation). One
//! thread owns the stream and the staging buffer; every operation is complete (stream
//! synchronized) before its future resolves.
//!
//! Semaphore points are in stream order (Falcor's `waitForCuda` / `waitForFalcor`): each
//! operation's wait points, already reached on the host, are waited for on the stream before
//! its work, and its signal points (reserved by the daemon, see `Semaphore::reserve`) are
//! signaled on the stream after it, with the semaphores imported into this context once.
//!
//! GenerateMips is the one operation that is not CUDA work: it runs the Vulkan executor's blit
//! chain (`Transfer::generate_mips`, on a transfer engine of the device's Vulkan side that this
//! thread owns), so both executors produce the same levels from one implementation, filter and
//! sRGB handling included, where a CUDA kernel would be a second implementation to keep in
//! agreement. It keeps stream order: after the stream's waits are enqueued, the thread
//! synchronizes the stream (those waits and all earlier work on it are complete), submits the
//! blits and waits for their fence, and only then enqueues the signal points on the stream.
//! The thread is blocked meanwhile, as it is in every operation's synchronize.

use std::sync::Arc;
use std::time::Duration;

use gpushare_interop::cuda::{self, CudaDevice, PinnedBuffer};
use gpushare_interop::vulkan::{self, SyncPoints, Transfer};

use gpushare_interop::image::ImageRegion;

use super::{image_pieces, DeviceSync, Executor, Op, OpFuture, Source, Worker};
use crate::buffer::CudaViewError;
use crate::error::Error;

/// Executes operations on a CUDA device's stream, on one thread.
#[derive(Debug)]
pub(crate) struct CudaExecutor {
    worker: Worker,
}

/// Pinned staging memory, grown on demand and kept between operations.
struct Staging {
    device: Arc<CudaDevice>,
    buffer: Option<PinnedBuffer>,
}

impl Staging {
    fn get(&mut self, len: usize) -> std::result::Result<&mut PinnedBuffer, cuda::Error> {
        if self.buffer.as_ref().is_none_or(|b| b.len() < len) {
            // Drop the old one first: its copies completed (every op synchronizes).
            self.buffer = None;
            let size = len.next_power_of_two().max(1 << 20);
            self.buffer = Some(PinnedBuffer::new(&self.device, size)?);
        }
        // Just set above when missing.
        self.buffer.as_mut().ok_or(cuda::Error::NoDevice)
    }
}

/// Longest the blits of one GenerateMips may run before the operation is reported as failed
/// (the Vulkan executor's limit).
const BLIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The Vulkan side of the device, for the work that is Vulkan's (GenerateMips): a transfer
/// engine made on first use, owned by the executor thread.
struct Blits {
    device: Arc<vulkan::Device>,
    engine: Option<Transfer>,
}

impl Blits {
    fn engine(&mut self) -> std::result::Result<&mut Transfer, vulkan::Error> {
        match &mut self.engine {
            Some(t) => Ok(t),
            slot @ None => Ok(slot.insert(Transfer::new(&self.device)?)),
        }
    }
}

impl CudaExecutor {
    /// Starts the executor thread for `device`, whose Vulkan side is `vulkan`.
    pub(crate) fn start(
        device: Arc<CudaDevice>,
        vulkan: Arc<vulkan::Device>,
    ) -> std::io::Result<Self> {
        let mut staging = Staging {
            device: device.clone(),
            buffer: None,
        };
        let mut blits = Blits {
            device: vulkan,
            engine: None,
        };
        let worker = Worker::start("gpushare-cuda-exec", move |op, sync| {
            let label = op.label();
            execute(&device, &mut staging, &mut blits, op, sync).map_err(|e| match e {
                CudaViewError::Export(source) | CudaViewError::Vulkan(source) => {
                    Error::Gpu { op: label, source }
                }
                CudaViewError::Cuda(source) => Error::Cuda { op: label, source },
            })
        })?;
        Ok(Self { worker })
    }
}

fn usize_len(len: u64) -> std::result::Result<usize, cuda::Error> {
    usize::try_from(len).map_err(|_| cuda::Error::InvalidValue {
        what: "transfer length",
        value: len,
        reason: "larger than the address space",
    })
}

/// A host range the caller should have checked (`daemon/ops.rs` does): reported, not trusted.
fn host_range_error(offset: u64, length: u64) -> CudaViewError {
    CudaViewError::Cuda(cuda::Error::InvalidValue {
        what: "host buffer range",
        value: offset.saturating_add(length),
        reason: "outside the host buffer",
    })
}

/// What is left to do once the stream has run an operation.
enum After {
    /// Nothing: the result is on the device or in a host buffer.
    Nothing,
    /// The first bytes of the staging buffer, this many, are the operation's result.
    Staged(usize),
}

/// Runs `op` with `sync`: on the stream, the wait points (already reached on the host: this
/// orders the operation after the producer's GPU work), the operation, the signal points; then
/// one synchronize, which always runs once anything may have been enqueued (the staging memory
/// and the reservation outlive what the stream does with them).
fn execute(
    device: &Arc<CudaDevice>,
    staging: &mut Staging,
    blits: &mut Blits,
    op: Op,
    sync: &DeviceSync,
) -> std::result::Result<Vec<u8>, CudaViewError> {
    // What the stream uses stays alive until it is done, even if the resource is freed
    // meanwhile (the op's own references go when `enqueue` returns).
    let keep = op.retain();
    let enqueued = enqueue_ordered(device, staging, blits, op, sync);
    let synced = device.synchronize_stream();
    drop(keep);
    let after = enqueued?;
    synced?;
    Ok(match after {
        After::Nothing => Vec::new(),
        After::Staged(len) => staging
            .buffer
            .as_ref()
            .map(|b| b.as_slice()[..len].to_vec())
            .unwrap_or_default(),
    })
}

fn enqueue_ordered(
    device: &Arc<CudaDevice>,
    staging: &mut Staging,
    blits: &mut Blits,
    op: Op,
    sync: &DeviceSync,
) -> std::result::Result<After, CudaViewError> {
    let stream = device.stream();
    for (sem, value) in &sync.wait {
        sem.cuda(device)?.wait(*value, stream)?;
    }
    let after = enqueue(device, staging, blits, op)?;
    if let Some(signals) = &sync.signal {
        for (sem, value) in signals.points() {
            sem.cuda(device)?.signal(value, stream)?;
            if let Some(word) = sem.word() {
                // SAFETY: the word's writer is this device's (a semaphore's word lives on its
                // own device, whose executor this is); the reservation holds the semaphore
                // until the stream has passed the raise.
                unsafe { word.raise_on(stream, value) }?;
            }
        }
    }
    Ok(after)
}

/// Enqueues `op`'s work on the stream, without synchronizing: [`execute`] synchronizes, and
/// keeps everything the work uses alive until then (`Op::retain`); "lives past the synchronize"
/// below means that. GenerateMips, Vulkan work, is the exception: it synchronizes the stream
/// first and returns once its blits completed (see the module docs).
fn enqueue(
    device: &Arc<CudaDevice>,
    staging: &mut Staging,
    blits: &mut Blits,
    op: Op,
) -> std::result::Result<After, CudaViewError> {
    let stream = device.stream();
    // Ranges were validated against the buffers' sizes by the caller (`daemon/ops.rs`); the pointers
    // below are the buffers' whole mappings plus in-range offsets.
    match op {
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
            let ptr = dst.cuda_ptr(device)? + offset;
            host.register(device)?;
            let len = usize_len(length)?;
            let src = host
                .mem()
                .range(from, length)
                .map_err(|_| host_range_error(from, length))?;
            // SAFETY: the destination lies in `dst`'s mapping and the source in the host
            // buffer's page-locked mapping (both ranges checked); both live until this function
            // returns, and `execute` keeps them (`Op::retain`) until its synchronize.
            unsafe { cuda::copy_htod_ptr(stream, ptr, src, len) }?;
            Ok(After::Nothing)
        }
        Op::Write {
            dst,
            offset,
            src: Source::Bytes(data),
        } => {
            let ptr = dst.cuda_ptr(device)? + offset;
            let pinned = staging.get(data.len())?;
            pinned.as_mut_slice()[..data.len()].copy_from_slice(&data);
            // SAFETY: `ptr..ptr + len` lies in `dst`'s mapping (range checked by the caller),
            // which lives while `dst` does (held until this function returns); the pinned
            // source is not touched again until the stream is synchronized (in `execute`).
            unsafe { cuda::copy_htod(stream, ptr, &pinned.as_slice()[..data.len()]) }?;
            Ok(After::Nothing)
        }
        Op::Read {
            src,
            offset,
            length,
            into: Some((host, to)),
        } => {
            let len = usize_len(length)?;
            let ptr = src.cuda_ptr(device)? + offset;
            host.register(device)?;
            let dst = host
                .mem()
                .range(to, length)
                .map_err(|_| host_range_error(to, length))?;
            // SAFETY: the source lies in `src`'s mapping and the destination in the host
            // buffer's page-locked mapping (both checked); both live past the synchronize.
            unsafe { cuda::copy_dtoh_ptr(stream, ptr, dst, len) }?;
            Ok(After::Nothing)
        }
        Op::CopyPeer {
            src,
            src_device,
            src_offset,
            dst,
            dst_offset,
            length,
        } => {
            let from = src.cuda_ptr(&src_device)? + src_offset;
            let to = dst.cuda_ptr(device)? + dst_offset;
            // SAFETY: the source range lies in `src`'s mapping in its own device's context, the
            // destination in `dst`'s in this one (both checked by the caller); both buffers live
            // past the synchronize in `execute`.
            unsafe { cuda::copy_peer(stream, to, device, from, &src_device, length) }?;
            Ok(After::Nothing)
        }
        Op::WriteImage { dst, region, src } => {
            let array = dst.cuda_array(device)?;
            let level = array.level(region.level)?;
            let format = dst.desc().format;
            match src {
                Source::Bytes(data) => {
                    let pinned = staging.get(data.len())?;
                    pinned.as_mut_slice()[..data.len()].copy_from_slice(&data);
                    let src = &pinned.as_slice()[..data.len()];
                    // SAFETY: the pinned source holds the region's bytes (the length was checked
                    // by the caller and again by the call) and is not touched again before the
                    // synchronize in `execute`; the level's array lives past it.
                    unsafe {
                        cuda::copy_host_to_array(
                            stream,
                            &level,
                            &region,
                            format,
                            src.as_ptr(),
                            src.len(),
                        )
                    }?;
                }
                Source::Host {
                    host,
                    offset,
                    length,
                } => {
                    host.register(device)?;
                    let len = usize_len(length)?;
                    let src = host
                        .mem()
                        .range(offset, length)
                        .map_err(|_| host_range_error(offset, length))?;
                    // SAFETY: the source lies in the host buffer's page-locked mapping (range
                    // checked), which lives past the synchronize in `execute`, as does the level.
                    unsafe { cuda::copy_host_to_array(stream, &level, &region, format, src, len) }?;
                }
            }
            Ok(After::Nothing)
        }
        Op::ReadImage { src, region, into } => {
            let array = src.cuda_array(device)?;
            let level = array.level(region.level)?;
            let format = src.desc().format;
            let length = region.size(format);
            let len = usize_len(length)?;
            match into {
                Some((host, to)) => {
                    host.register(device)?;
                    let dst = host
                        .mem()
                        .range(to, length)
                        .map_err(|_| host_range_error(to, length))?;
                    // SAFETY: the destination lies in the host buffer's page-locked mapping
                    // (checked), which lives past the synchronize in `execute`, as does the level.
                    unsafe { cuda::copy_array_to_host(stream, &level, &region, format, dst, len) }?;
                    Ok(After::Nothing)
                }
                None => {
                    let pinned = staging.get(len)?;
                    let dst = pinned.as_mut_slice()[..len].as_mut_ptr();
                    // SAFETY: the pinned destination holds `len` bytes and is neither read nor
                    // dropped before the synchronize in `execute`; the level lives past it.
                    unsafe { cuda::copy_array_to_host(stream, &level, &region, format, dst, len) }?;
                    Ok(After::Staged(len))
                }
            }
        }
        Op::ClearImage {
            dst,
            base_level,
            levels,
            base_layer,
            layers,
            color,
        } => {
            // CUDA has no clear for arrays: copy the color, one texel repeated, from pinned
            // memory, in pieces of at most HOST_CHUNK bytes (each starts on a texel, so each is
            // a prefix of the repeated pattern).
            let desc = *dst.desc();
            let texel = crate::image::texel_bytes(desc.format, color);
            let array = dst.cuda_array(device)?;
            let texel_size = desc.format.texel_size();
            let pieces: Vec<ImageRegion> = (base_level..base_level + levels)
                .flat_map(|l| {
                    let whole = ImageRegion {
                        base_layer,
                        layers,
                        ..ImageRegion::level(&desc, l)
                    };
                    image_pieces(&whole, texel_size).into_iter().map(|(p, _)| p)
                })
                .collect();
            let longest = pieces
                .iter()
                .map(|p| p.size(desc.format))
                .max()
                .unwrap_or(0);
            let longest = usize_len(longest)?;
            let pinned = staging.get(longest)?;
            for (i, b) in pinned.as_mut_slice()[..longest].iter_mut().enumerate() {
                *b = texel[i % texel.len()];
            }
            for piece in pieces {
                let level = array.level(piece.level)?;
                let len = usize_len(piece.size(desc.format))?;
                let src = pinned.as_slice()[..len].as_ptr();
                // SAFETY: the pinned source holds `len` bytes of the pattern and is not written
                // again before the synchronize in `execute`; the level lives past it.
                unsafe { cuda::copy_host_to_array(stream, &level, &piece, desc.format, src, len) }?;
            }
            Ok(After::Nothing)
        }
        Op::Register { host } => {
            host.register(device)?;
            Ok(After::Nothing)
        }
        Op::GenerateMips { image, range } => {
            // Vulkan work, in stream order (see the module docs): the waits enqueued before
            // this and everything before them complete first; the signals that follow are
            // enqueued only once the blits' fence signaled.
            device.synchronize_stream()?;
            let done = SyncPoints {
                timeout: Some(BLIT_TIMEOUT),
                ..Default::default()
            };
            blits
                .engine()
                .and_then(|t| t.generate_mips(image.vk(), &range, &done))
                .map_err(CudaViewError::Vulkan)?;
            Ok(After::Nothing)
        }
        Op::Read {
            src,
            offset,
            length,
            into: None,
        } => {
            let len = usize_len(length)?;
            let ptr = src.cuda_ptr(device)? + offset;
            let pinned = staging.get(len)?;
            // SAFETY: the source range lies in `src`'s mapping (checked by the caller); the
            // pinned destination is neither read nor dropped before the synchronize in `execute`.
            unsafe { cuda::copy_dtoh(stream, ptr, &mut pinned.as_mut_slice()[..len]) }?;
            Ok(After::Staged(len))
        }
        Op::Fill {
            dst,
            offset,
            length,
            value,
        } => {
            let ptr = dst.cuda_ptr(device)? + offset;
            let words = usize_len(length / 4)?;
            // SAFETY: offset and length are multiples of 4 and in range (checked by the
            // caller); the mapping outlives the synchronize in `execute`.
            unsafe { cuda::memset_d32(stream, ptr, value, words) }?;
            Ok(After::Nothing)
        }
        Op::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            length,
        } => {
            let from = src.cuda_ptr(device)? + src_offset;
            let to = dst.cuda_ptr(device)? + dst_offset;
            // SAFETY: both ranges are in their buffers' mappings and do not overlap (the caller
            // refuses overlapping copies within one buffer); both live past the synchronize.
            unsafe { cuda::copy_dtod(stream, to, from, length) }?;
            Ok(After::Nothing)
        }
    }
}

impl Executor for CudaExecutor {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn orders_on_device(&self) -> bool {
        true
    }

    fn run_ordered(&self, op: Op, sync: DeviceSync) -> OpFuture {
        self.worker.run(op, sync)
    }
}
