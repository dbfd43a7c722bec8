//! Vulkan: instance and device selection, exportable buffers and timeline semaphores, imports,
//! and transfer submissions.
//!
//! Requires Vulkan 1.2 (timeline semaphores). Works with GPUs (device-local, non-host-visible
//! memory) and CPU drivers (lavapipe) alike; capabilities are probed, never assumed.

mod buffer;
mod caps;
mod device;
mod error;
mod import;
mod instance;
mod memory;
mod physical;
mod range;
mod semaphore;
mod staging;
mod transfer;

pub use buffer::{DeviceBuffer, ExportableBuffer};
pub use caps::{Capabilities, HandleType};
pub use device::Device;
pub use error::{Error, Result};
pub use import::{BufferImportDesc, ImportedBuffer};
pub use instance::Instance;
pub use physical::{DeviceSelector, DeviceType, MemoryHeap, PhysicalDeviceInfo};
pub use semaphore::TimelineSemaphore;
pub use transfer::{SyncPoints, Transfer};

/// Re-exported so callers can name raw handles and flags without their own `ash` dependency.
pub use ash::vk;
