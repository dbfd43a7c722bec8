//! Copies between a region of one level of an imported image ([`ArrayLevel`]) and tightly
//! packed linear memory, host or device ([`copy_host_to_array`] and friends), enqueued on a
//! stream (`cuMemcpy3DAsync`).
//!
//! The copy CUDA is given is built by a pure function (`memcpy3d`) tested without a GPU; shape,
//! format and length are checked before the driver sees them.
//!
//! Not here: importing the image (`array.rs`), surfaces and textures (`texture.rs`), copies
//! between linear allocations (`memory.rs`).

use cudarc::driver::{sys, CudaStream};

use super::array::{invalid, ArrayLevel};
use super::error::{Error, Result};
use crate::image::{ImageFormat, ImageRegion};

/// Thin wrappers, one per driver call.
mod raw {
    use cudarc::driver::sys;

    use super::super::error::{check, Result};

    /// `cuMemcpy3DAsync`.
    ///
    /// # Safety
    ///
    /// `stream`'s context is current; every address, array and range in `copy` is valid for
    /// that context until the copy has executed.
    pub unsafe fn memcpy_3d_async(copy: &sys::CUDA_MEMCPY3D, stream: sys::CUstream) -> Result<()> {
        // SAFETY: guaranteed by the caller; `copy` is read during the call only.
        check("cuMemcpy3DAsync", unsafe {
            sys::cuMemcpy3DAsync_v2(copy, stream)
        })
    }
}

/// The linear side of a copy.
#[derive(Clone, Copy, Debug)]
enum Linear {
    /// Host memory (read or written).
    Host(*mut u8),
    /// A device address.
    Device(u64),
}

/// Which way a copy goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToArray,
    FromArray,
}

/// The copy between `region` of the level `array` and tightly packed linear memory (rows of
/// `region.width` texels, `region.height` rows a slice, then slices or layers). The array side
/// starts at x in bytes, y, and z (3D) or the first layer (layered 2D); depth counts slices or
/// layers.
fn memcpy3d(
    array: sys::CUarray,
    region: &ImageRegion,
    texel: u32,
    linear: Linear,
    direction: Direction,
) -> sys::CUDA_MEMCPY3D {
    let texel = texel as usize;
    let row = region.width as usize * texel;
    let (linear_type, host, device) = match linear {
        Linear::Host(p) => (sys::CUmemorytype::CU_MEMORYTYPE_HOST, p, 0),
        Linear::Device(d) => (
            sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            std::ptr::null_mut(),
            d,
        ),
    };
    // One of `z` and `base_layer` is 0 (a 3D image has one layer, a 2D image depth 1); so is
    // one of `depth - 1` and `layers - 1`.
    let (z, depth) = (
        (region.z + region.base_layer) as usize,
        region.depth as usize * region.layers as usize,
    );
    let array_type = sys::CUmemorytype::CU_MEMORYTYPE_ARRAY;
    let mut copy = sys::CUDA_MEMCPY3D {
        srcXInBytes: 0,
        srcY: 0,
        srcZ: 0,
        srcLOD: 0,
        srcMemoryType: linear_type,
        srcHost: host.cast_const().cast(),
        srcDevice: device,
        srcArray: std::ptr::null_mut(),
        reserved0: std::ptr::null_mut(),
        srcPitch: row,
        srcHeight: region.height as usize,
        dstXInBytes: 0,
        dstY: 0,
        dstZ: 0,
        dstLOD: 0,
        dstMemoryType: linear_type,
        dstHost: host.cast(),
        dstDevice: device,
        dstArray: std::ptr::null_mut(),
        reserved1: std::ptr::null_mut(),
        dstPitch: row,
        dstHeight: region.height as usize,
        WidthInBytes: row,
        Height: region.height as usize,
        Depth: depth,
    };
    let x = region.x as usize * texel;
    let y = region.y as usize;
    match direction {
        Direction::ToArray => {
            copy.dstMemoryType = array_type;
            copy.dstHost = std::ptr::null_mut();
            copy.dstDevice = 0;
            copy.dstArray = array;
            copy.dstPitch = 0;
            copy.dstHeight = 0;
            (copy.dstXInBytes, copy.dstY, copy.dstZ) = (x, y, z);
        }
        Direction::FromArray => {
            copy.srcMemoryType = array_type;
            copy.srcHost = std::ptr::null();
            copy.srcDevice = 0;
            copy.srcArray = array;
            copy.srcPitch = 0;
            copy.srcHeight = 0;
            (copy.srcXInBytes, copy.srcY, copy.srcZ) = (x, y, z);
        }
    }
    copy
}

/// Checks a copy's arguments and enqueues it on `stream`.
///
/// # Safety
///
/// As for the public copies: the linear side covers `len` bytes, valid until the copy has
/// executed.
unsafe fn copy(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    linear: Linear,
    len: usize,
    direction: Direction,
) -> Result<()> {
    let desc = level.desc();
    if format != desc.format {
        return Err(Error::InvalidValue {
            what: "copy format (code)",
            value: format.code().into(),
            reason: "not the image's format",
        });
    }
    if region.level != level.level() {
        return Err(Error::InvalidValue {
            what: "copy region level",
            value: region.level.into(),
            reason: "not the level copied",
        });
    }
    region.validate(desc).map_err(invalid)?;
    if len as u64 != region.size(format) {
        return Err(Error::InvalidValue {
            what: "copy length",
            value: len as u64,
            reason: "must be the region's tightly packed size",
        });
    }
    let device = level.array().memory().device();
    device.check_stream("copy stream", stream)?;
    device.bind()?;
    let copy = memcpy3d(level.raw(), region, format.texel_size(), linear, direction);
    // SAFETY: the context is current and the stream is of it (checked above); the level is
    // live while borrowed and the caller keeps it until the copy has executed; the region lies
    // within the level (validated); the caller guarantees the linear side for `len` bytes,
    // which is the region's packed size (checked).
    unsafe { raw::memcpy_3d_async(&copy, stream.cu_stream()) }
}

/// Enqueues on `stream` a copy of `len` bytes of tightly packed texels (rows, then slices, then
/// layers: [`ImageRegion::size`]) from host address `src` into `region` of `level`.
/// Asynchronous: the caller synchronizes `stream` before relying on the result.
///
/// [`Error::InvalidValue`] unless `format` is the image's, `region` is on `level` and within it,
/// and `len` is `region.size(format)`; [`Error::WrongContext`] for a stream of another context.
///
/// # Safety
///
/// `src..src + len` is readable host memory, valid and unmodified until the copy has executed
/// (pageable memory is staged before this returns); `level` (its array) stays alive until then.
pub unsafe fn copy_host_to_array(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    src: *const u8,
    len: usize,
) -> Result<()> {
    let linear = Linear::Host(src.cast_mut());
    // SAFETY: the caller's guarantees carry over; the host side is only read.
    unsafe {
        copy(
            stream,
            level,
            region,
            format,
            linear,
            len,
            Direction::ToArray,
        )
    }
}

/// Enqueues on `stream` a copy of `region` of `level` into `len` bytes at host address `dst`,
/// tightly packed (see [`copy_host_to_array`], with its errors). Asynchronous: `dst` holds the
/// texels once the caller has synchronized `stream`.
///
/// # Safety
///
/// `dst..dst + len` is writable host memory, valid until the copy has executed and neither read
/// nor written before then; `level` (its array) stays alive until then.
pub unsafe fn copy_array_to_host(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    dst: *mut u8,
    len: usize,
) -> Result<()> {
    // SAFETY: the caller's guarantees carry over.
    unsafe {
        copy(
            stream,
            level,
            region,
            format,
            Linear::Host(dst),
            len,
            Direction::FromArray,
        )
    }
}

/// Enqueues on `stream` a copy of `len` tightly packed bytes at device address `src` into
/// `region` of `level` (see [`copy_host_to_array`], with its errors).
///
/// # Safety
///
/// `src..src + len` is device memory accessible to `stream`'s context, valid until the copy has
/// executed; `level` (its array) stays alive until then.
pub unsafe fn copy_device_to_array(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    src: u64,
    len: usize,
) -> Result<()> {
    // SAFETY: the caller's guarantees carry over.
    unsafe {
        copy(
            stream,
            level,
            region,
            format,
            Linear::Device(src),
            len,
            Direction::ToArray,
        )
    }
}

/// Enqueues on `stream` a copy of `region` of `level` into `len` tightly packed bytes at device
/// address `dst` (see [`copy_host_to_array`], with its errors).
///
/// # Safety
///
/// `dst..dst + len` is device memory accessible to `stream`'s context, valid until the copy has
/// executed; `level` (its array) stays alive until then.
pub unsafe fn copy_array_to_device(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    dst: u64,
    len: usize,
) -> Result<()> {
    // SAFETY: the caller's guarantees carry over.
    unsafe {
        copy(
            stream,
            level,
            region,
            format,
            Linear::Device(dst),
            len,
            Direction::FromArray,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(
        level: u32,
        (x, y, z): (u32, u32, u32),
        (w, h, d): (u32, u32, u32),
        layers: (u32, u32),
    ) -> ImageRegion {
        ImageRegion {
            level,
            base_layer: layers.0,
            layers: layers.1,
            x,
            y,
            z,
            width: w,
            height: h,
            depth: d,
        }
    }

    #[test]
    fn host_to_array_copies_are_tightly_packed() {
        let arr = 0x10 as sys::CUarray;
        let host = 0x5000 as *mut u8;
        // 2D: depth 1, offsets in bytes.
        let r = region(2, (3, 4, 0), (10, 6, 1), (0, 1));
        let c = memcpy3d(arr, &r, 4, Linear::Host(host), Direction::ToArray);
        assert_eq!(c.srcMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_HOST);
        assert_eq!(c.srcHost, host.cast_const().cast());
        assert_eq!((c.srcXInBytes, c.srcY, c.srcZ), (0, 0, 0));
        assert_eq!((c.srcPitch, c.srcHeight), (40, 6));
        assert_eq!(c.dstMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_ARRAY);
        assert_eq!(c.dstArray, arr);
        assert!(c.dstHost.is_null() && c.srcArray.is_null());
        assert_eq!((c.dstXInBytes, c.dstY, c.dstZ), (12, 4, 0));
        assert_eq!((c.WidthInBytes, c.Height, c.Depth), (40, 6, 1));
        assert_eq!((c.srcLOD, c.dstLOD), (0, 0));
    }

    #[test]
    fn layered_and_3d_copies_put_layers_or_slices_in_z() {
        let arr = 0x10 as sys::CUarray;
        let host = 0x5000 as *mut u8;
        // Layered 2D: layers 1..3 as z.
        let r = region(0, (0, 0, 0), (8, 8, 1), (1, 2));
        let c = memcpy3d(arr, &r, 2, Linear::Host(host), Direction::FromArray);
        assert_eq!(c.srcMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_ARRAY);
        assert_eq!(c.srcArray, arr);
        assert_eq!((c.srcXInBytes, c.srcY, c.srcZ), (0, 0, 1));
        assert_eq!(c.dstMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_HOST);
        assert_eq!(c.dstHost, host.cast());
        assert_eq!((c.dstPitch, c.dstHeight), (16, 8));
        assert_eq!((c.dstXInBytes, c.dstY, c.dstZ), (0, 0, 0));
        assert_eq!((c.WidthInBytes, c.Height, c.Depth), (16, 8, 2));
        // 3D: slices 2..4.
        let r = region(1, (1, 2, 2), (3, 2, 2), (0, 1));
        let c = memcpy3d(arr, &r, 16, Linear::Device(0xdead_0000), Direction::ToArray);
        assert_eq!(c.srcMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_DEVICE);
        assert_eq!(c.srcDevice, 0xdead_0000);
        assert!(c.srcHost.is_null());
        assert_eq!((c.srcPitch, c.srcHeight), (48, 2));
        assert_eq!((c.dstXInBytes, c.dstY, c.dstZ), (16, 2, 2));
        assert_eq!((c.WidthInBytes, c.Height, c.Depth), (48, 2, 2));
    }
}
