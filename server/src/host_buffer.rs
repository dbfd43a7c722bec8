//! A host buffer as the daemon holds it: shared host memory (a sealed memfd, see
//! [`gpushare_interop::host`]) that clients map, and its CUDA registration when the CUDA
//! executor serves (page-locked once, at creation, so that transfers from and to it are DMA).

use std::sync::{Arc, OnceLock};

use gpushare_interop::cuda::{self, CudaDevice, HostRegistration};
use gpushare_interop::host::{HostError, HostMemory};

/// The id prefix of host buffers (`host-…`).
pub(crate) const HOST_BUFFER_PREFIX: &str = "host";

/// The daemon's host buffer.
#[derive(Debug)]
pub(crate) struct HostBuffer {
    // Declared first: unregistered before the memory is unmapped.
    registration: OnceLock<HostRegistration>,
    mem: HostMemory,
}

impl HostBuffer {
    /// A new zero-filled host buffer of `size` bytes.
    pub(crate) fn create(size: u64) -> Result<Self, HostError> {
        Ok(Self {
            registration: OnceLock::new(),
            mem: HostMemory::create("gpushare-host-buffer", size)?,
        })
    }

    /// The shared memory.
    pub(crate) fn mem(&self) -> &HostMemory {
        &self.mem
    }

    /// Its size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.mem.len()
    }

    /// Whether the CUDA executor page-locked it.
    pub(crate) fn registered(&self) -> bool {
        self.registration.get().is_some()
    }

    /// Page-locks the memory for `device`'s copies (usable by every context), once. Only the
    /// CUDA executor's thread calls this.
    pub(crate) fn register(&self, device: &Arc<CudaDevice>) -> Result<(), cuda::Error> {
        if self.registration.get().is_some() {
            return Ok(());
        }
        let len = usize::try_from(self.mem.len()).map_err(|_| cuda::Error::InvalidValue {
            what: "host buffer size",
            value: self.mem.len(),
            reason: "larger than the address space",
        })?;
        // SAFETY: the whole mapping of `mem`, which outlives the registration: the field order
        // drops the registration first.
        let reg = unsafe { HostRegistration::new(device, self.mem.as_ptr(), len) }?;
        let _ = self.registration.set(reg);
        Ok(())
    }
}
