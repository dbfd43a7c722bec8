//! Vulkan: instance and device selection, exportable buffers, images and timeline semaphores,
//! imports, and transfer submissions (mip generation included).
//!
//! Requires Vulkan 1.2 (timeline semaphores). Works with GPUs (device-local, non-host-visible
//! memory) and CPU drivers (lavapipe) alike; capabilities are probed, never assumed.

mod buffer;
mod caps;
mod device;
mod error;
mod image;
mod image_transfer;
mod import;
mod instance;
mod memory;
mod mips;
mod physical;
mod range;
mod semaphore;
mod staging;
mod transfer;

pub use buffer::{DeviceBuffer, ExportableBuffer};
pub use caps::{Capabilities, HandleType};
pub use device::Device;
pub use error::{Error, Result};
pub use image::{
    DeviceImage, ExportableImage, ImageImportDesc, ImageSupport, ImportedImage, IMAGE_BASE_USAGE,
    IMAGE_KNOWN_USAGE,
};
pub use image_transfer::ClearColor;
pub use import::{BufferImportDesc, ImportedBuffer};
pub use instance::Instance;
pub use mips::{MipFilter, MipRange};
pub use physical::{DeviceSelector, DeviceType, MemoryHeap, PhysicalDeviceInfo};
pub use semaphore::TimelineSemaphore;
pub use transfer::{SyncPoints, Transfer};

/// Re-exported so callers can name raw handles and flags without their own `ash` dependency.
pub use ash::vk;
