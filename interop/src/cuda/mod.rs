//! CUDA: loading the driver, device enumeration and matching with Vulkan devices, external
//! memory and timeline semaphore imports, stream memory operations, and memory helpers over
//! imported memory (Falcor's `CudaUtils`).
//!
//! Driver API only, loaded at run time (cudarc with `dynamic-loading`): a host without CUDA
//! builds and runs, and every entry point returns [`Error::NotPresent`] there. Three layers, as
//! in cudarc: `cudarc::driver::sys` → thin `unsafe fn`s returning [`Result`] (one per call,
//! through one checked path) → safe types that release their handle in `Drop`.
//!
//! Not here: the daemon's executor, client helpers.

mod array;
mod array_copy;
mod device;
mod error;
mod external_memory;
mod external_semaphore;
#[cfg(feature = "test-kernels")]
pub mod kernels;
mod loader;
mod matching;
pub mod memops;
mod memory;
pub mod module;
mod texture;
mod uses;

pub use array::{array3d_descriptor, ArrayLevel, MipmappedArray};
pub use array_copy::{
    copy_array_to_device, copy_array_to_host, copy_device_to_array, copy_host_to_array,
};
pub use device::{devices, synchronize_stream, CudaDevice, CudaDeviceInfo};
pub use error::{Error, Result};
pub use external_memory::{ExternalMemory, MappedBuffer};
pub use external_semaphore::ExternalSemaphore;
pub use loader::{driver_version, is_present};
pub use matching::{match_device, match_devices, MatchMethod, VulkanCandidate};
pub use memory::{
    copy_dtod, copy_dtoh, copy_dtoh_ptr, copy_htod, copy_htod_ptr, copy_peer, memset_d32,
    DeviceAllocation, HostRegistration, PinnedBuffer,
};
pub use texture::{SurfaceObject, TextureObject, TextureOptions};

/// Re-exported so callers can use cudarc's safe API (streams, allocations, copies) and raw
/// handles without a cudarc dependency of their own, at the same version.
pub use cudarc;
