//! A buffer as the daemon holds it: the exportable Vulkan buffer, and its CUDA import when the
//! CUDA executor has used it (imported once, on first use, and released with the buffer).

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use gpushare_interop::cuda::{self, CudaDevice, ExternalMemory};
use gpushare_interop::vulkan::ExportableBuffer;

/// Why the CUDA view of a buffer or image could not be made, or the CUDA executor's work
/// failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CudaViewError {
    /// Exporting the Vulkan memory failed.
    #[error("exporting the buffer's memory for CUDA failed")]
    Export(#[source] gpushare_interop::vulkan::Error),
    /// Importing or mapping it in CUDA failed.
    #[error(transparent)]
    Cuda(#[from] cuda::Error),
    /// Vulkan work that the CUDA executor runs itself (GenerateMips' blit chain) failed.
    #[error("the Vulkan part of the operation failed")]
    Vulkan(#[source] gpushare_interop::vulkan::Error),
}

/// The id prefix of buffers (`buf-…`).
pub(crate) const BUFFER_PREFIX: &str = "buf";

/// The daemon's buffer.
#[derive(Debug)]
pub(crate) struct SharedBuffer {
    // Declared first: dropped before the Vulkan memory it imports.
    cuda: OnceLock<Arc<ExternalMemory>>,
    vk: ExportableBuffer,
}

impl SharedBuffer {
    /// Wraps a freshly allocated buffer.
    pub(crate) fn new(vk: ExportableBuffer) -> Self {
        Self {
            cuda: OnceLock::new(),
            vk,
        }
    }

    /// The Vulkan buffer.
    pub(crate) fn vk(&self) -> &ExportableBuffer {
        &self.vk
    }

    /// The buffer's device pointer in `device`'s CUDA context: the memory is exported from
    /// Vulkan and imported into CUDA on first use (with its allocation size and dedicated flag),
    /// then kept until the buffer is freed. Called by CUDA executor threads only, always with
    /// the buffer's own device (a copy between devices imports the source into its own device
    /// from the destination's executor thread).
    pub(crate) fn cuda_ptr(&self, device: &Arc<CudaDevice>) -> Result<u64, CudaViewError> {
        if let Some(mem) = self.cuda.get() {
            return Ok(mem.device_ptr()?);
        }
        let fd = self.vk.export_fd().map_err(CudaViewError::Export)?;
        let mem = ExternalMemory::import_opaque_fd(
            device,
            fd,
            self.vk.allocation_size(),
            self.vk.dedicated(),
        )?;
        let mem = self.cuda.get_or_init(|| mem);
        Ok(mem.device_ptr()?)
    }
}

impl Deref for SharedBuffer {
    type Target = ExportableBuffer;
    fn deref(&self) -> &ExportableBuffer {
        &self.vk
    }
}
