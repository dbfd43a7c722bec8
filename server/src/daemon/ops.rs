//! Daemon-executed operations (Write, Read, Fill, Copy, WriteImage, ReadImage, ClearImage,
//! GenerateMips): validation, then wait points, then the executor, then signal points.
//!
//! Wait points are awaited on the host, by the rules every host wait follows
//! ([`Daemon::wait_for`]), not on the GPU queue, so a wait point that is never reached holds
//! only its own call (bounded by its timeout), never the queue that serves every client. Signal
//! values are checked before any work starts, and again when signaled
//! (`Semaphore::signal`, `Semaphore::reserve`).
//!
//! Each operation takes the call's deadline (`None`: none) for its wait points' timeout.

use std::sync::Arc;
use std::time::Duration;

use gpushare_proto::v1;

use super::wait::{Asked, WaitPoint};
use super::Daemon;
use crate::access::Caller;
use crate::buffer::SharedBuffer;
use crate::error::{at_most, Error, Result};
use crate::executor::{chunks, DeviceSync, Op, Source};
use crate::host_buffer::HostBuffer;
use crate::requests;
use crate::resource::Resource;
use crate::semaphore::Semaphore;

type Point = WaitPoint;

/// The resolved wait and signal points of one call.
struct Sequenced {
    /// The caller (the pending-waits quotas).
    caller: Caller,
    wait: Vec<Point>,
    signal: Vec<Point>,
    timeout: Duration,
}

/// Most wait or signal points in one call.
const MAX_POINTS: usize = 64;

/// Looks up the points of `sync` with the caller's access, checks the signal values, and
/// bounds the wait points' time (`sync.timeout_ms`, 0 meaning as long as allowed; the daemon's
/// limit; the call's `deadline`).
fn resolve(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    sync: Option<v1::Sync>,
) -> Result<Sequenced> {
    let sync = sync.unwrap_or_default();
    for (what, points) in [("wait points", &sync.wait), ("signal points", &sync.signal)] {
        if points.len() > MAX_POINTS {
            return Err(Error::TooLarge {
                what,
                value: points.len() as u64,
                limit: MAX_POINTS as u64,
            });
        }
    }
    let points = |list: Vec<v1::SemaphorePoint>| -> Result<Vec<Point>> {
        list.iter()
            .map(|p| d.wait_point(caller, &p.semaphore_id, p.value))
            .collect()
    };
    let wait = points(sync.wait)?;
    let signal = points(sync.signal)?;
    for p in &signal {
        p.sem.check_signal(p.value)?;
    }
    let asked = (sync.timeout_ms > 0).then(|| Duration::from_millis(sync.timeout_ms.into()));
    Ok(Sequenced {
        caller: caller.clone(),
        wait,
        signal,
        timeout: d.wait_timeout(asked, deadline),
    })
}

/// Runs `op` on `device`'s executor between the wait points and the signal points.
///
/// Where the executor orders semaphores on the device (CUDA), the points on semaphores of the
/// same device that it can import (exportable ones) go to it: after the host saw the wait
/// points reached, it waits for them again on its stream (ordering the work after the
/// producer's GPU work) and signals the signal points on its stream after the work, reserved
/// here first (`Semaphore::reserve`). Other points are waited for and signaled from the
/// host, as with the Vulkan executor.
async fn sequenced(d: &Daemon, seq: Sequenced, device: u32, op: Op) -> Result<Vec<u8>> {
    let slot = d.device(device)?;
    let executor = &slot.executor;
    sequenced_work(d, seq, |seq| {
        if !executor.orders_on_device() {
            return Ok(executor.run(op));
        }
        let on_device = |p: &Point| p.device == device && p.sem.exportable();
        let (ordered, host): (Vec<Point>, Vec<Point>) =
            seq.signal.drain(..).partition(|p| on_device(p));
        seq.signal = host;
        let wait = seq
            .wait
            .iter()
            .filter(|p| on_device(p))
            .map(|p| (p.sem.clone(), p.value))
            .collect();
        let signal = Semaphore::reserve(ordered.into_iter().map(|p| (p.sem, p.value)).collect())?;
        Ok(executor.run_ordered(
            op,
            DeviceSync {
                wait,
                signal: Some(signal),
            },
        ))
    })
    .await
}

/// Runs `work` between the wait points and the signal points. `work` is called only once every
/// wait point was reached (an executor queues its operation as soon as `run` is called, before
/// the future is awaited); it may take signal points out of the list to signal them itself.
async fn sequenced_work<F>(
    d: &Daemon,
    mut seq: Sequenced,
    work: impl FnOnce(&mut Sequenced) -> Result<F>,
) -> Result<Vec<u8>>
where
    F: std::future::Future<Output = Result<Vec<u8>>>,
{
    d.wait_for(&seq.caller, &seq.wait, seq.timeout, Asked::Call)
        .await?;
    let out = work(&mut seq)?.await?;
    for p in &seq.signal {
        p.sem.signal(p.value)?;
    }
    Ok(out)
}

/// Copies between buffers of two devices: GPU to GPU with `cuMemcpyPeerAsync` on the
/// destination's CUDA executor when both devices have CUDA (through the host by the driver where
/// peer access is off), otherwise staged through the daemon in [`chunks`]: a Read on the
/// source's executor, then a Write on the destination's.
async fn copy_across(
    d: &Daemon,
    (src_device, src, src_offset): (u32, Arc<SharedBuffer>, u64),
    (dst_device, dst, dst_offset): (u32, Arc<SharedBuffer>, u64),
    length: u64,
) -> Result<Vec<u8>> {
    let from = d.device(src_device)?;
    let to = d.device(dst_device)?;
    if let (Some(f), Some(_)) = (&from.cuda, &to.cuda) {
        return to
            .executor
            .run(Op::CopyPeer {
                src,
                src_device: f.device.clone(),
                src_offset,
                dst,
                dst_offset,
                length,
            })
            .await;
    }
    for (pos, n) in chunks(length) {
        let bytes = from
            .executor
            .run(Op::Read {
                src: src.clone(),
                offset: src_offset + pos,
                length: n,
                into: None,
            })
            .await?;
        to.executor
            .run(Op::Write {
                dst: dst.clone(),
                offset: dst_offset + pos,
                src: Source::Bytes(bytes),
            })
            .await?;
    }
    Ok(Vec::new())
}

/// Checks `[offset, offset + length)` against a buffer of `size` bytes.
pub(crate) fn check_range(what: &'static str, offset: u64, length: u64, size: u64) -> Result<()> {
    if length == 0 {
        return Err(Error::Zero { what: "length" });
    }
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            what,
            offset,
            length,
            size,
        }),
    }
}

fn check_transfer(d: &Daemon, length: u64) -> Result<()> {
    at_most("transfer length", length, d.config.limits.max_transfer_size)
}

fn buffer(d: &Daemon, caller: &Caller, id: &str) -> Result<(Arc<Resource>, Arc<SharedBuffer>)> {
    d.buffer(id, caller)
}

/// Where a Write's or WriteImage's bytes come from: the request's `data` or a host buffer range
/// (never both), `length` bytes either way (`None`: whatever `data` holds, for Write).
fn write_source(
    d: &Daemon,
    caller: &Caller,
    data: Vec<u8>,
    from_host: Option<v1::HostRange>,
) -> Result<Source> {
    match from_host {
        Some(h) => {
            if !data.is_empty() {
                return Err(Error::BadHostRange(
                    "a write got both data and from_host: send one of them",
                ));
            }
            let (_, host) = d.host_buffer(&h.host_buffer_id, caller)?;
            check_range("host buffer", h.offset, h.length, host.size())?;
            Ok(Source::Host {
                host,
                offset: h.offset,
                length: h.length,
            })
        }
        None => {
            check_transfer(d, data.len() as u64)?;
            Ok(Source::Bytes(data))
        }
    }
}

/// Where a Read or ReadImage of `length` bytes goes: a host buffer range (whose length must be
/// 0 or `length`), or the reply.
fn read_target(
    d: &Daemon,
    caller: &Caller,
    length: u64,
    to_host: Option<v1::HostRange>,
) -> Result<Option<(Arc<HostBuffer>, u64)>> {
    match to_host {
        Some(h) => {
            if h.length != 0 && h.length != length {
                return Err(Error::BadHostRange(
                    "a read's to_host.length must be 0 or the length read",
                ));
            }
            let (_, host) = d.host_buffer(&h.host_buffer_id, caller)?;
            check_range("host buffer", h.offset, length, host.size())?;
            Ok(Some((host, h.offset)))
        }
        None => {
            check_transfer(d, length)?;
            Ok(None)
        }
    }
}

/// Write.
pub(crate) async fn write(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    r: v1::WriteRequest,
) -> Result<()> {
    let (res, dst) = buffer(d, caller, &r.buffer_id)?;
    let src = write_source(d, caller, r.data, r.from_host)?;
    check_range("buffer", r.offset, src.len(), dst.size())?;
    let seq = resolve(d, caller, deadline, r.sync)?;
    sequenced(
        d,
        seq,
        res.device,
        Op::Write {
            dst,
            offset: r.offset,
            src,
        },
    )
    .await
    .map(drop)
}

/// Read.
pub(crate) async fn read(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    r: v1::ReadRequest,
) -> Result<Vec<u8>> {
    let (res, src) = buffer(d, caller, &r.buffer_id)?;
    let into = read_target(d, caller, r.length, r.to_host)?;
    check_range("buffer", r.offset, r.length, src.size())?;
    let seq = resolve(d, caller, deadline, r.sync)?;
    sequenced(
        d,
        seq,
        res.device,
        Op::Read {
            src,
            offset: r.offset,
            length: r.length,
            into,
        },
    )
    .await
}

/// WriteImage.
pub(crate) async fn write_image(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    r: v1::WriteImageRequest,
) -> Result<()> {
    let (res, dst) = d.image(&r.image_id, caller)?;
    let region = requests::region(dst.desc(), r.region.as_ref())?;
    let src = write_source(d, caller, r.data, r.from_host)?;
    let expected = region.size(dst.desc().format);
    if src.len() != expected {
        return Err(Error::BadImage(format!(
            "the region {}x{}x{} x {} layers of {} takes {expected} bytes, not {}",
            region.width,
            region.height,
            region.depth,
            region.layers,
            dst.desc().format,
            src.len()
        )));
    }
    let seq = resolve(d, caller, deadline, r.sync)?;
    sequenced(d, seq, res.device, Op::WriteImage { dst, region, src })
        .await
        .map(drop)
}

/// ReadImage.
pub(crate) async fn read_image(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    r: v1::ReadImageRequest,
) -> Result<Vec<u8>> {
    let (res, src) = d.image(&r.image_id, caller)?;
    let region = requests::region(src.desc(), r.region.as_ref())?;
    let into = read_target(d, caller, region.size(src.desc().format), r.to_host)?;
    let seq = resolve(d, caller, deadline, r.sync)?;
    sequenced(d, seq, res.device, Op::ReadImage { src, region, into }).await
}

/// ClearImage.
pub(crate) async fn clear_image(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    r: v1::ClearImageRequest,
) -> Result<()> {
    let (res, dst) = d.image(&r.image_id, caller)?;
    let desc = *dst.desc();
    let span = |what: &str, base: u32, n: u32, total: u32| -> Result<u32> {
        let n = if n == 0 {
            total.saturating_sub(base)
        } else {
            n
        };
        if n == 0 || u64::from(base) + u64::from(n) > u64::from(total) {
            return Err(Error::BadImage(format!(
                "{what} {base}..{} are outside the image's {total}",
                u64::from(base) + u64::from(n)
            )));
        }
        Ok(n)
    };
    let levels = span("levels", r.base_level, r.levels, desc.mip_levels)?;
    let layers = span("layers", r.base_layer, r.layers, desc.array_layers)?;
    let color = requests::clear_color(&desc, &r.float_color, &r.uint_color)?;
    let seq = resolve(d, caller, deadline, r.sync)?;
    sequenced(
        d,
        seq,
        res.device,
        Op::ClearImage {
            dst,
            base_level: r.base_level,
            levels,
            base_layer: r.base_layer,
            layers,
            color,
        },
    )
    .await
    .map(drop)
}

/// GenerateMips. What the device cannot do for the format is refused before the wait points
/// are awaited.
pub(crate) async fn generate_mips(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    r: v1::GenerateMipsRequest,
) -> Result<()> {
    let (res, image) = d.image(&r.image_id, caller)?;
    let range = requests::mip_range(image.desc(), &r)?;
    d.device(res.device)?
        .device
        .mip_filter(image.desc().format)
        .map_err(Error::gpu("generating mips"))?;
    let seq = resolve(d, caller, deadline, r.sync)?;
    sequenced(d, seq, res.device, Op::GenerateMips { image, range })
        .await
        .map(drop)
}

/// Fill.
pub(crate) async fn fill(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    r: v1::FillRequest,
) -> Result<()> {
    let (res, dst) = buffer(d, caller, &r.buffer_id)?;
    for (what, value) in [("offset", r.offset), ("length", r.length)] {
        if value % 4 != 0 {
            return Err(Error::Misaligned { what, value });
        }
    }
    check_range("buffer", r.offset, r.length, dst.size())?;
    let seq = resolve(d, caller, deadline, r.sync)?;
    sequenced(
        d,
        seq,
        res.device,
        Op::Fill {
            dst,
            offset: r.offset,
            length: r.length,
            value: r.value,
        },
    )
    .await
    .map(drop)
}

/// Copy.
pub(crate) async fn copy(
    d: &Daemon,
    caller: &Caller,
    deadline: Option<Duration>,
    r: v1::CopyRequest,
) -> Result<()> {
    let (src_res, src) = buffer(d, caller, &r.src_buffer_id)?;
    let (dst_res, dst) = buffer(d, caller, &r.dst_buffer_id)?;
    check_range("source", r.src_offset, r.length, src.size())?;
    check_range("destination", r.dst_offset, r.length, dst.size())?;
    let seq_across = src_res.device != dst_res.device;
    if src_res.id == dst_res.id {
        let (a, b) = (r.src_offset, r.dst_offset);
        if a < b + r.length && b < a + r.length {
            return Err(Error::Overlap(src_res.id.clone()));
        }
    }
    let seq = resolve(d, caller, deadline, r.sync)?;
    if seq_across {
        let work = |_: &mut Sequenced| {
            Ok(copy_across(
                d,
                (src_res.device, src, r.src_offset),
                (dst_res.device, dst, r.dst_offset),
                r.length,
            ))
        };
        return sequenced_work(d, seq, work).await.map(drop);
    }
    sequenced(
        d,
        seq,
        dst_res.device,
        Op::Copy {
            src,
            src_offset: r.src_offset,
            dst,
            dst_offset: r.dst_offset,
            length: r.length,
        },
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(check_range("b", 0, 16, 16).is_ok());
        assert!(check_range("b", 8, 8, 16).is_ok());
        assert!(matches!(
            check_range("b", 8, 9, 16),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            check_range("b", 0, 0, 16),
            Err(Error::Zero { .. })
        ));
        assert!(matches!(
            check_range("b", u64::MAX, 2, 16),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            check_range("b", 1, u64::MAX, u64::MAX),
            Err(Error::OutOfRange { .. })
        ));
    }
}
