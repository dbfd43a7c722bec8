//! Memory helpers over raw device pointers (the seed's `memcpy*` / `memset` on imported memory),
//! and [`PinnedBuffer`], page-locked host memory for staging.
//!
//! For memory CUDA allocates itself, use cudarc: `CudaStream::alloc_zeros`, `memcpy_htod`,
//! `memcpy_dtoh`, `memcpy_dtod`, `memset_zeros` (the seed's `mallocDevice`, `freeDevice`,
//! `memcpy*`, `memset`), and [`CudaDevice::synchronize`] for `deviceSynchronize`. The helpers
//! here exist for pointers cudarc does not own: [`ExternalMemory`](super::ExternalMemory)
//! mappings, and [`DeviceAllocation`], plain `cuMemAlloc` memory. cudarc allocates from the
//! stream-ordered pool (`cuMemAllocAsync`) where the device has one, and stream memory operations
//! reject pool memory (`CUDA_ERROR_INVALID_VALUE` from `cuStreamWaitValue64`, seen on the H100).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::{sys, CudaStream};

use super::device::{bind, CudaDevice};
use super::error::{check, Error, Result};

/// Enqueues on `stream` a copy of `src` to device address `dst`.
///
/// From pageable memory the driver stages `src` before returning; from pinned memory (a
/// [`PinnedBuffer`]) the copy reads it asynchronously.
///
/// # Safety
///
/// `dst..dst + src.len()` is device memory accessible to `stream`'s context, valid until the
/// copy has executed; if `src` is pinned, it stays valid and unmodified until then.
pub unsafe fn copy_htod(stream: &CudaStream, dst: u64, src: &[u8]) -> Result<()> {
    // SAFETY: `src` is readable for its length; the caller's guarantees carry over.
    unsafe { copy_htod_ptr(stream, dst, src.as_ptr(), src.len()) }
}

/// [`copy_htod`] from a raw host address, for memory no Rust slice may cover (host memory
/// shared with another process, [`crate::host::HostMemory`]).
///
/// # Safety
///
/// `src..src + len` is readable host memory and `dst..dst + len` device memory accessible to
/// `stream`'s context, both valid until the copy has executed.
pub unsafe fn copy_htod_ptr(
    stream: &CudaStream,
    dst: u64,
    src: *const u8,
    len: usize,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    bind(stream.context())?;
    // SAFETY: the context is current, the stream live; the caller guarantees both ranges.
    check("cuMemcpyHtoDAsync", unsafe {
        sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), len, stream.cu_stream())
    })
}

/// Enqueues on `stream` a copy of `dst.len()` bytes from device address `src` into `dst`.
///
/// # Safety
///
/// `src..src + dst.len()` is device memory accessible to `stream`'s context, valid until the
/// copy has executed; `dst` stays valid, and is neither read nor written, until the stream has
/// passed the copy (synchronize it first).
pub unsafe fn copy_dtoh(stream: &CudaStream, src: u64, dst: &mut [u8]) -> Result<()> {
    // SAFETY: `dst` is writable for its length; the caller's guarantees carry over.
    unsafe { copy_dtoh_ptr(stream, src, dst.as_mut_ptr(), dst.len()) }
}

/// [`copy_dtoh`] into a raw host address (see [`copy_htod_ptr`]).
///
/// # Safety
///
/// `dst..dst + len` is writable host memory and `src..src + len` device memory accessible to
/// `stream`'s context, both valid until the copy has executed; nothing reads `dst` before the
/// stream has passed the copy.
pub unsafe fn copy_dtoh_ptr(stream: &CudaStream, src: u64, dst: *mut u8, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    bind(stream.context())?;
    // SAFETY: the context is current, the stream live; the caller guarantees both ranges.
    check("cuMemcpyDtoHAsync", unsafe {
        sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, len, stream.cu_stream())
    })
}

/// Enqueues on `stream` a copy of `len` bytes from device address `src` to `dst`.
///
/// # Safety
///
/// Both ranges are device memory accessible to `stream`'s context, valid until the copy has
/// executed, and do not overlap.
pub unsafe fn copy_dtod(stream: &CudaStream, dst: u64, src: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    bind(stream.context())?;
    // SAFETY: the context is current, the stream live; the caller guarantees the ranges.
    check("cuMemcpyDtoDAsync", unsafe {
        sys::cuMemcpyDtoDAsync_v2(dst, src, len as usize, stream.cu_stream())
    })
}

/// Enqueues on `stream` a copy of `len` bytes from `src` in `src_device`'s context to `dst` in
/// `dst_device`'s (`cuMemcpyPeerAsync`): GPU to GPU where peer access was enabled
/// ([`CudaDevice::enable_peer_access`]), staged through the host by the driver otherwise.
///
/// # Safety
///
/// `src..src + len` is device memory of `src_device`'s context and `dst..dst + len` of
/// `dst_device`'s, both valid until the copy has executed; `stream` belongs to one of the two.
pub unsafe fn copy_peer(
    stream: &CudaStream,
    dst: u64,
    dst_device: &CudaDevice,
    src: u64,
    src_device: &CudaDevice,
    len: u64,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    bind(stream.context())?;
    // SAFETY: the context is current, the stream live, both contexts retained by their
    // devices; the caller guarantees the ranges.
    check("cuMemcpyPeerAsync", unsafe {
        sys::cuMemcpyPeerAsync(
            dst,
            dst_device.context().cu_ctx(),
            src,
            src_device.context().cu_ctx(),
            len as usize,
            stream.cu_stream(),
        )
    })
}

/// Enqueues on `stream` a fill of `count` 32-bit words from device address `ptr` with `value`.
/// [`Error::InvalidValue`] unless `ptr` is 4-byte aligned.
///
/// # Safety
///
/// `ptr..ptr + 4 * count` is device memory accessible to `stream`'s context, valid until the
/// fill has executed.
pub unsafe fn memset_d32(stream: &CudaStream, ptr: u64, value: u32, count: usize) -> Result<()> {
    if ptr % 4 != 0 {
        return Err(Error::InvalidValue {
            what: "memset address",
            value: ptr,
            reason: "must be 4-byte aligned",
        });
    }
    if count == 0 {
        return Ok(());
    }
    bind(stream.context())?;
    // SAFETY: the context is current, the stream live, `ptr` aligned; the caller guarantees the
    // range.
    check("cuMemsetD32Async", unsafe {
        sys::cuMemsetD32Async(ptr, value, count, stream.cu_stream())
    })
}

/// Device memory from `cuMemAlloc` (not from a pool), freed with `cuMemFree` in `Drop`. Its
/// contents start undefined. Use it where pool memory does not do: stream memory operations.
pub struct DeviceAllocation {
    device: Arc<CudaDevice>,
    ptr: sys::CUdeviceptr,
    len: u64,
}

impl fmt::Debug for DeviceAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAllocation")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .finish()
    }
}

impl DeviceAllocation {
    /// Allocates `len` bytes (`len > 0`) of device memory.
    pub fn new(device: &Arc<CudaDevice>, len: u64) -> Result<DeviceAllocation> {
        let bytes = usize::try_from(len)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(Error::InvalidValue {
                what: "device allocation length",
                value: len,
                reason: "must be positive and fit in usize",
            })?;
        device.bind()?;
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: the context is current; `ptr` is a valid out-pointer.
        check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) })?;
        Ok(DeviceAllocation {
            device: Arc::clone(device),
            ptr,
            len,
        })
    }

    /// The device pointer, valid while `self` lives.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: an allocation is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DeviceAllocation {
    fn drop(&mut self) {
        if let Err(e) = self.device.bind() {
            tracing::error!(error = %e, "leaking device memory: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; `ptr` came from cuMemAlloc and is freed once (cuMemFree
        // waits for work in flight that uses it).
        if let Err(e) = check("cuMemFree", unsafe { sys::cuMemFree_v2(self.ptr) }) {
            tracing::warn!(error = %e, "freeing device memory");
        }
    }
}

/// Page-locked host memory (`cuMemHostAlloc`, freed with `cuMemFreeHost` in `Drop`), for
/// staging uploads and downloads at full bandwidth. Zeroed on creation.
///
/// Asynchronous copies from or to it must have completed before it is written, read or dropped.
pub struct PinnedBuffer {
    device: Arc<CudaDevice>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its host memory exclusively (like a `Box<[u8]>`); `&self` gives only
// shared reads, `&mut self` exclusive access; freeing makes the context current first.
unsafe impl Send for PinnedBuffer {}
// SAFETY: as for `Send`.
unsafe impl Sync for PinnedBuffer {}

impl fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedBuffer")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl PinnedBuffer {
    /// Allocates `len` bytes (`len > 0`) of pinned memory, usable by all contexts (PORTABLE).
    pub fn new(device: &Arc<CudaDevice>, len: usize) -> Result<PinnedBuffer> {
        if len == 0 || len > isize::MAX as usize {
            return Err(Error::InvalidValue {
                what: "pinned buffer length",
                value: len as u64,
                reason: "must be positive and fit in isize",
            });
        }
        device.bind()?;
        let mut raw: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: the context is current; `raw` is a valid out-pointer; the flags are documented.
        check("cuMemHostAlloc", unsafe {
            sys::cuMemHostAlloc(&mut raw, len, sys::CU_MEMHOSTALLOC_PORTABLE)
        })?;
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| Error::Call {
            call: "cuMemHostAlloc",
            code: sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY as i32,
            name: "CUDA_ERROR_OUT_OF_MEMORY".to_owned(),
            description: "the driver returned a null pointer".to_owned(),
        })?;
        // SAFETY: `ptr` points to `len` writable bytes just allocated for us alone.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Ok(PinnedBuffer {
            device: Arc::clone(device),
            ptr,
            len,
        })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: a pinned buffer is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address (for asynchronous copies).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Its bytes (no asynchronous copy into it may be pending).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialized bytes (zeroed at creation) owned by `self`;
        // the shared borrow of `self` prevents writes through `as_mut_slice`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Its bytes, writable (no asynchronous copy from or into it may be pending).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if let Err(e) = self.device.bind() {
            tracing::error!(error = %e, "leaking pinned host memory: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; `ptr` came from cuMemHostAlloc and is freed once.
        if let Err(e) = check("cuMemFreeHost", unsafe {
            sys::cuMemFreeHost(self.ptr.as_ptr().cast())
        }) {
            tracing::warn!(error = %e, "freeing pinned host memory");
        }
    }
}

/// Host memory the process already has, page-locked and registered with CUDA
/// (`cuMemHostRegister`, PORTABLE: usable by every context), so that asynchronous copies
/// from and to it run as DMA at full speed, like a [`PinnedBuffer`]'s. Unregistered in `Drop`.
///
/// Registering pins every page (tens of milliseconds for hundreds of MiB): do it once per
/// region, not per copy.
pub struct HostRegistration {
    device: Arc<CudaDevice>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the value only records a registered range; registering and unregistering make the
// context current on the calling thread first.
unsafe impl Send for HostRegistration {}
// SAFETY: as for `Send`; `&self` gives no access to the memory.
unsafe impl Sync for HostRegistration {}

impl fmt::Debug for HostRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostRegistration")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl HostRegistration {
    /// Registers `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` is mapped host memory that stays mapped until the registration is
    /// dropped.
    pub unsafe fn new(device: &Arc<CudaDevice>, ptr: *mut u8, len: usize) -> Result<Self> {
        let ptr = NonNull::new(ptr)
            .filter(|_| len > 0)
            .ok_or(Error::InvalidValue {
                what: "host registration",
                value: len as u64,
                reason: "needs a non-null address and a positive length",
            })?;
        device.bind()?;
        // SAFETY: the context is current; the caller guarantees the range is mapped for the
        // registration's lifetime; the flag is documented.
        check("cuMemHostRegister", unsafe {
            sys::cuMemHostRegister_v2(ptr.as_ptr().cast(), len, sys::CU_MEMHOSTREGISTER_PORTABLE)
        })?;
        Ok(Self {
            device: Arc::clone(device),
            ptr,
            len,
        })
    }

    /// The registered address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The registered length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: a registration is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        if let Err(e) = self.device.bind() {
            tracing::error!(error = %e, "leaving host memory registered: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; `ptr` was registered by `new` and is unregistered once.
        if let Err(e) = check("cuMemHostUnregister", unsafe {
            sys::cuMemHostUnregister(self.ptr.as_ptr().cast())
        }) {
            tracing::warn!(error = %e, "unregistering host memory");
        }
    }
}
