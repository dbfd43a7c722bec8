//! A Vulkan timeline semaphore imported into CUDA ([`ExternalSemaphore`]): signal and wait for
//! timeline values in stream order, without a host round trip.
//!
//! cudarc has only raw bindings here; `raw` below wraps them, one function per call.
//!
//! Not here: host-side waits (CUDA has none for external semaphores: the Vulkan side or the
//! daemon reads the counter).

use std::fmt;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use cudarc::driver::{sys, CudaStream};

use super::device::CudaDevice;
use super::error::{Error, Result};
use super::uses::Uses;

/// Thin wrappers, one per driver call.
mod raw {
    use std::os::fd::RawFd;

    use cudarc::driver::sys;

    use super::super::error::{check, Result};

    /// `cuImportExternalSemaphore` of a `TIMELINE_SEMAPHORE_FD`.
    ///
    /// # Safety
    ///
    /// A context is current; `fd` is an open `OPAQUE_FD` of a Vulkan timeline semaphore. On
    /// success the driver owns `fd`: the caller must not use or close it afterwards.
    pub unsafe fn import_timeline_fd(fd: RawFd) -> Result<sys::CUexternalSemaphore> {
        let desc = sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC {
            type_: sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD,
            handle: sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC_st__bindgen_ty_1 { fd },
            flags: 0,
            reserved: [0; 16],
        };
        let mut sem: sys::CUexternalSemaphore = std::ptr::null_mut();
        // SAFETY: guaranteed by the caller; `desc` and `sem` are valid for the call.
        check("cuImportExternalSemaphore", unsafe {
            sys::cuImportExternalSemaphore(&mut sem, &desc)
        })?;
        Ok(sem)
    }

    /// `cuSignalExternalSemaphoresAsync` of one timeline semaphore to `value`.
    ///
    /// # Safety
    ///
    /// `stream`'s context is current, `stream` and `sem` are live and of that context.
    pub unsafe fn signal(
        sem: sys::CUexternalSemaphore,
        value: u64,
        stream: sys::CUstream,
    ) -> Result<()> {
        // SAFETY: a C struct of integers, unions of integers and pointers: all-zero is valid
        // (and what the driver expects of fields it does not use).
        let mut params: sys::CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS = unsafe { std::mem::zeroed() };
        params.params.fence.value = value;
        // SAFETY: guaranteed by the caller; one semaphore and one parameter block, both valid
        // for the call (the driver copies them).
        check("cuSignalExternalSemaphoresAsync", unsafe {
            sys::cuSignalExternalSemaphoresAsync(&sem, &params, 1, stream)
        })
    }

    /// `cuWaitExternalSemaphoresAsync` for one timeline semaphore to reach `value`.
    ///
    /// # Safety
    ///
    /// As [`signal`].
    pub unsafe fn wait(
        sem: sys::CUexternalSemaphore,
        value: u64,
        stream: sys::CUstream,
    ) -> Result<()> {
        // SAFETY: as in `signal`.
        let mut params: sys::CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS = unsafe { std::mem::zeroed() };
        params.params.fence.value = value;
        // SAFETY: as in `signal`.
        check("cuWaitExternalSemaphoresAsync", unsafe {
            sys::cuWaitExternalSemaphoresAsync(&sem, &params, 1, stream)
        })
    }

    /// `cuDestroyExternalSemaphore`.
    ///
    /// # Safety
    ///
    /// Its context is current; destroyed once; every signal and wait enqueued on it has
    /// completed (the CUDA docs require it).
    pub unsafe fn destroy(sem: sys::CUexternalSemaphore) -> Result<()> {
        // SAFETY: guaranteed by the caller.
        check("cuDestroyExternalSemaphore", unsafe {
            sys::cuDestroyExternalSemaphore(sem)
        })
    }
}

/// A timeline semaphore imported into CUDA. Destroyed in `Drop` once every signal and wait
/// enqueued on it has completed (each one is followed by an event); if some are still pending
/// after a grace period (a wait for a value nobody signals), the handle is leaked, not destroyed
/// under the GPU.
pub struct ExternalSemaphore {
    device: Arc<CudaDevice>,
    raw: sys::CUexternalSemaphore,
    /// Events recorded after the enqueued signals and waits.
    uses: Uses,
}

// SAFETY: `raw` is a driver handle; the driver API is thread-safe and every call here makes the
// device's context current first.
unsafe impl Send for ExternalSemaphore {}
// SAFETY: as for `Send`; `&self` methods only enqueue work referring to `raw`.
unsafe impl Sync for ExternalSemaphore {}

impl fmt::Debug for ExternalSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalSemaphore")
            .field("raw", &self.raw)
            .field("device", &self.device.info().ordinal)
            .finish()
    }
}

impl ExternalSemaphore {
    /// Imports a timeline semaphore exported as `OPAQUE_FD`. [`Error::Unsupported`] when the
    /// device lacks timeline semaphore interop.
    ///
    /// Ownership of `fd` passes to the driver only on success (the [CUDA docs] rule:
    /// "Ownership of the file descriptor is transferred to the CUDA driver when the handle is
    /// imported successfully. Performing any operations on the file descriptor after it is
    /// imported results in undefined behavior."); on any failure it is closed here, once.
    ///
    /// [CUDA docs]: https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__EXTRES__INTEROP.html
    pub fn import_timeline_fd(device: &Arc<CudaDevice>, fd: OwnedFd) -> Result<ExternalSemaphore> {
        let supported = device.attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_TIMELINE_SEMAPHORE_INTEROP_SUPPORTED,
        )?;
        if supported == 0 {
            return Err(Error::Unsupported(format!(
                "timeline semaphore interop on CUDA device {} ({})",
                device.info().ordinal,
                device.info().name
            )));
        }
        device.bind()?;
        // SAFETY: the context is current; `fd` is an open descriptor we own (a descriptor of
        // anything else makes the driver fail); ownership is released only after success.
        let raw = unsafe { raw::import_timeline_fd(fd.as_raw_fd()) }?;
        // The driver owns the descriptor now: release it without closing.
        let _ = fd.into_raw_fd();
        Ok(ExternalSemaphore {
            device: Arc::clone(device),
            raw,
            uses: Uses::new(device),
        })
    }

    /// Enqueues on `stream` a signal of the semaphore to `value`. `value` must exceed the
    /// semaphore's value when the signal executes (Vulkan's rule; CUDA cannot check it): 0 is
    /// refused with [`Error::InvalidValue`].
    pub fn signal(&self, value: u64, stream: &CudaStream) -> Result<()> {
        if value == 0 {
            return Err(Error::InvalidValue {
                what: "timeline signal value",
                value,
                reason: "a signal must exceed the current value",
            });
        }
        self.device.check_stream("signal stream", stream)?;
        let event = self.uses.event()?;
        self.device.bind()?;
        // SAFETY: the context is current; the stream is live (borrowed) and of this context
        // (checked); `raw` is live.
        unsafe { raw::signal(self.raw, value, stream.cu_stream()) }?;
        self.uses.track(event, stream)
    }

    /// Enqueues on `stream` a wait until the semaphore reaches `value`: later work on the stream
    /// starts only then.
    pub fn wait(&self, value: u64, stream: &CudaStream) -> Result<()> {
        self.device.check_stream("wait stream", stream)?;
        let event = self.uses.event()?;
        self.device.bind()?;
        // SAFETY: as in `signal`.
        unsafe { raw::wait(self.raw, value, stream.cu_stream()) }?;
        self.uses.track(event, stream)
    }

    /// The device it was imported into.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }
}

impl Drop for ExternalSemaphore {
    fn drop(&mut self) {
        let pending = self.uses.settle();
        if pending > 0 {
            tracing::error!(
                pending,
                "leaking a CUDA external semaphore: signals or waits on it have not completed"
            );
            return;
        }
        if let Err(e) = self.device.bind() {
            tracing::error!(error = %e, "leaking a CUDA external semaphore: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; `raw` is destroyed once, here.
        if let Err(e) = unsafe { raw::destroy(self.raw) } {
            tracing::warn!(error = %e, "destroying a CUDA external semaphore");
        }
    }
}
