//! gpushare's GPU layer: Vulkan devices, exportable buffers and timeline semaphores, their import
//! in other processes, and transfer submissions over them; CUDA devices matched to them, and
//! imports of that memory and those semaphores into CUDA.
//!
//! No async and no gRPC here: this crate only wraps the GPU APIs. Every foreign call goes through a
//! thin layer that returns [`vulkan::Result`] or [`cuda::Result`]; every handle is owned by a safe
//! type that releases it in `Drop` and holds an `Arc` of its parent. Descriptors are `OwnedFd`s; an import takes
//! ownership of its descriptor only when it succeeds.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cuda;
pub mod host;
pub mod image;
pub mod vulkan;

pub use vulkan::{
    BufferImportDesc, Capabilities, Device, DeviceBuffer, DeviceSelector, DeviceType,
    ExportableBuffer, HandleType, ImportedBuffer, Instance, MemoryHeap, PhysicalDeviceInfo,
    SyncPoints, TimelineSemaphore, Transfer,
};
