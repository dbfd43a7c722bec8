//! Memory another API exported (a Vulkan `OPAQUE_FD`), imported into CUDA: [`ExternalMemory`],
//! and [`MappedBuffer`], a device pointer onto a range of it.
//!
//! cudarc's `ExternalMemory` has no dedicated flag (Vulkan dedicated allocations must be imported
//! with `CUDA_EXTERNAL_MEMORY_DEDICATED`) and maps one range at a time; this one wraps the calls
//! over `cudarc::driver::sys` (`raw` below) with the same shape.
//!
//! Not here: images (mipmapped arrays), semaphores (`external_semaphore.rs`).

use std::fmt;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys;

use super::device::CudaDevice;
use super::error::{check_range, Error, Result};

/// Thin wrappers, one per driver call.
mod raw {
    use std::os::fd::RawFd;

    use cudarc::driver::sys;

    use super::super::error::{check, Result};

    /// `cuImportExternalMemory` of an `OPAQUE_FD`.
    ///
    /// # Safety
    ///
    /// A context is current; `fd` is an open `OPAQUE_FD` memory descriptor and `size` the size
    /// of its memory object; `dedicated` says whether it is a dedicated allocation. On success
    /// the driver owns `fd`: the caller must not use or close it afterwards.
    pub unsafe fn import_opaque_fd(
        fd: RawFd,
        size: u64,
        dedicated: bool,
    ) -> Result<sys::CUexternalMemory> {
        let desc = sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC {
            type_: sys::CUexternalMemoryHandleType::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD,
            handle: sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC_st__bindgen_ty_1 { fd },
            size,
            flags: if dedicated {
                sys::CUDA_EXTERNAL_MEMORY_DEDICATED
            } else {
                0
            },
            reserved: [0; 16],
        };
        let mut mem: sys::CUexternalMemory = std::ptr::null_mut();
        // SAFETY: the caller guarantees the context and the descriptor; `desc` and `mem` are
        // valid for the call.
        check("cuImportExternalMemory", unsafe {
            sys::cuImportExternalMemory(&mut mem, &desc)
        })?;
        Ok(mem)
    }

    /// `cuExternalMemoryGetMappedBuffer`: a device pointer onto `offset..offset + size`.
    ///
    /// # Safety
    ///
    /// `mem`'s context is current; `mem` is live and the range lies within its size. The
    /// pointer must be freed with [`mem_free`] before `mem` is destroyed.
    pub unsafe fn get_mapped_buffer(
        mem: sys::CUexternalMemory,
        offset: u64,
        size: u64,
    ) -> Result<sys::CUdeviceptr> {
        let desc = sys::CUDA_EXTERNAL_MEMORY_BUFFER_DESC {
            offset,
            size,
            flags: 0,
            reserved: [0; 16],
        };
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: the caller guarantees `mem` and the range; `desc`, `ptr` valid for the call.
        check("cuExternalMemoryGetMappedBuffer", unsafe {
            sys::cuExternalMemoryGetMappedBuffer(&mut ptr, mem, &desc)
        })?;
        Ok(ptr)
    }

    /// `cuMemFree` of a mapped buffer.
    ///
    /// # Safety
    ///
    /// Its context is current; `ptr` came from [`get_mapped_buffer`], is freed once, and no
    /// pending GPU work uses it.
    pub unsafe fn mem_free(ptr: sys::CUdeviceptr) -> Result<()> {
        // SAFETY: guaranteed by the caller.
        check("cuMemFree", unsafe { sys::cuMemFree_v2(ptr) })
    }

    /// `cuDestroyExternalMemory`.
    ///
    /// # Safety
    ///
    /// Its context is current; every buffer mapped from `mem` is freed; destroyed once.
    pub unsafe fn destroy(mem: sys::CUexternalMemory) -> Result<()> {
        // SAFETY: guaranteed by the caller.
        check("cuDestroyExternalMemory", unsafe {
            sys::cuDestroyExternalMemory(mem)
        })
    }
}

/// Memory imported into CUDA from a descriptor. Destroyed in `Drop`, after its whole-allocation
/// mapping (if any) is freed; every [`MappedBuffer`] holds an `Arc` of it, so ranges are freed
/// first.
///
/// GPU work that uses the memory must be complete before the last reference goes (synchronize the
/// stream that used it).
pub struct ExternalMemory {
    device: Arc<CudaDevice>,
    raw: sys::CUexternalMemory,
    size: u64,
    dedicated: bool,
    /// The lazily created mapping of the whole allocation.
    whole: Mutex<Option<sys::CUdeviceptr>>,
}

// SAFETY: `raw` is a driver handle, not memory: the driver API is thread-safe, every call here
// makes the device's context current first, and the lazy mapping is behind a mutex.
unsafe impl Send for ExternalMemory {}
// SAFETY: as for `Send`; `&self` methods only read `raw` or lock `whole`.
unsafe impl Sync for ExternalMemory {}

impl fmt::Debug for ExternalMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalMemory")
            .field("raw", &self.raw)
            .field("size", &self.size)
            .field("dedicated", &self.dedicated)
            .field("device", &self.device.info().ordinal)
            .finish()
    }
}

impl ExternalMemory {
    /// Imports an `OPAQUE_FD` memory descriptor of `allocation_size` bytes (the memory object's
    /// size, `VkMemoryRequirements::size` at export, from the fd metadata); `dedicated` as the
    /// metadata says (a Vulkan dedicated allocation must be imported as dedicated).
    ///
    /// Ownership of `fd` passes to the driver only on success. From the [CUDA docs]:
    ///
    /// > Ownership of the file descriptor is transferred to the CUDA driver when the handle is
    /// > imported successfully. Performing any operations on the file descriptor after it is
    /// > imported results in undefined behavior.
    ///
    /// So on success the descriptor is released without closing; on any failure it is closed
    /// here, once, by dropping the `OwnedFd`.
    ///
    /// [CUDA docs]: https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__EXTRES__INTEROP.html#group__CUDA__EXTRES__INTEROP_1g52aba3a7f780157d8ba12972b2481735
    pub fn import_opaque_fd(
        device: &Arc<CudaDevice>,
        fd: OwnedFd,
        allocation_size: u64,
        dedicated: bool,
    ) -> Result<Arc<ExternalMemory>> {
        if allocation_size == 0 {
            return Err(Error::InvalidValue {
                what: "allocation size",
                value: 0,
                reason: "must be the exported memory object's size",
            });
        }
        device.bind()?;
        // SAFETY: the device's context is current; `fd` is an open descriptor we own, described
        // by the caller's metadata (a wrong size or flag makes the driver fail, not corrupt);
        // ownership is released below only once the import succeeded.
        let raw = unsafe { raw::import_opaque_fd(fd.as_raw_fd(), allocation_size, dedicated) }?;
        // The driver owns the descriptor now: release it without closing.
        let _ = fd.into_raw_fd();
        Ok(Arc::new(ExternalMemory {
            device: Arc::clone(device),
            raw,
            size: allocation_size,
            dedicated,
            whole: Mutex::new(None),
        }))
    }

    /// The imported memory object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it was imported as a dedicated allocation.
    pub fn dedicated(&self) -> bool {
        self.dedicated
    }

    /// The device it was imported into.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// The driver handle, valid while `self` lives (for the mappings in sibling modules).
    pub(super) fn raw(&self) -> sys::CUexternalMemory {
        self.raw
    }

    /// A device pointer to the whole allocation, mapped on first use and kept until `Drop`
    /// (valid while `self` lives).
    pub fn device_ptr(&self) -> Result<u64> {
        let mut whole = self.whole.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ptr) = *whole {
            return Ok(ptr);
        }
        self.device.bind()?;
        // SAFETY: the context is current; `raw` is live; the whole range is within the size; the
        // pointer is freed in `Drop` before `raw` is destroyed.
        let ptr = unsafe { raw::get_mapped_buffer(self.raw, 0, self.size) }?;
        *whole = Some(ptr);
        Ok(ptr)
    }

    /// Maps `len` bytes from `offset` as a buffer of its own (freed when the [`MappedBuffer`]
    /// drops; it keeps this memory alive). [`Error::OutOfRange`] unless the range is non-empty
    /// and within [`size`](Self::size).
    pub fn map_range(self: &Arc<Self>, offset: u64, len: u64) -> Result<MappedBuffer> {
        check_range("mapped range", offset, len, self.size)?;
        self.device.bind()?;
        // SAFETY: the context is current; `raw` is live; the range was checked above; the
        // MappedBuffer frees the pointer and holds `self` until then.
        let ptr = unsafe { raw::get_mapped_buffer(self.raw, offset, len) }?;
        Ok(MappedBuffer {
            ptr,
            len,
            offset,
            mem: Arc::clone(self),
        })
    }
}

impl Drop for ExternalMemory {
    fn drop(&mut self) {
        if let Err(e) = self.device.bind() {
            tracing::error!(error = %e, "leaking imported CUDA memory: cannot bind its context");
            return;
        }
        let whole = self.whole.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(ptr) = whole.take() {
            // SAFETY: the context is current; `ptr` was mapped from `raw` and is freed once.
            if let Err(e) = unsafe { raw::mem_free(ptr) } {
                tracing::warn!(error = %e, "freeing the mapping of imported CUDA memory");
            }
        }
        // SAFETY: the context is current; the whole mapping is freed above and every range
        // mapping is freed by its MappedBuffer, which holds `self` alive until it is; destroyed
        // once, here.
        if let Err(e) = unsafe { raw::destroy(self.raw) } {
            tracing::warn!(error = %e, "destroying imported CUDA memory");
        }
    }
}

/// A device pointer onto a range of an [`ExternalMemory`]; frees its mapping in `Drop` and keeps
/// the memory alive until then.
pub struct MappedBuffer {
    ptr: sys::CUdeviceptr,
    len: u64,
    offset: u64,
    mem: Arc<ExternalMemory>,
}

impl fmt::Debug for MappedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl MappedBuffer {
    /// The device pointer (`CUdeviceptr`), valid while `self` lives.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: a mapping is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the range starts in the memory object.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The memory it maps.
    pub fn memory(&self) -> &Arc<ExternalMemory> {
        &self.mem
    }
}

impl Drop for MappedBuffer {
    fn drop(&mut self) {
        if let Err(e) = self.mem.device.bind() {
            tracing::error!(error = %e, "leaking a CUDA mapping: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; `ptr` was mapped from the memory this holds alive, and
        // is freed once, here.
        if let Err(e) = unsafe { raw::mem_free(self.ptr) } {
            tracing::warn!(error = %e, "freeing a mapping of imported CUDA memory");
        }
    }
}
