//! Importing what another process (usually the daemon) exported: buffer memory and timeline
//! semaphores, as `OPAQUE_FD`.
//!
//! Ownership: an import takes its `OwnedFd` by value. On success the driver owns the descriptor
//! (it is released from Rust without closing); on any failure, before or inside the driver call,
//! the descriptor was not consumed and is closed by dropping the `OwnedFd` — exactly once.

use std::any::Any;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use ash::vk;

use super::buffer::{Allocation, DeviceBuffer, Sealed};
use super::caps::{self, HandleType};
use super::device::Device;
use super::error::{Check, Error, Result};
use super::semaphore::TimelineSemaphore;

/// Everything needed, besides the descriptor, to import an exported buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferImportDesc {
    /// The buffer's size in bytes.
    pub size: u64,
    /// The memory object's size (`VkMemoryRequirements::size` at export).
    pub allocation_size: u64,
    /// Whether the exported memory is a dedicated allocation.
    pub dedicated: bool,
    /// The memory type index the exporter allocated from.
    pub memory_type_index: u32,
    /// The buffer's `VkBufferUsageFlags`.
    pub usage: u32,
    /// The exporting physical device's `deviceUUID`.
    pub device_uuid: [u8; 16],
}

/// Buffer usage bits an import may ask for: the core Vulkan 1.0 ones.
const KNOWN_USAGE: u32 = 0x1ff;

/// A buffer bound to memory imported from a descriptor. Frees both in `Drop` (the exporter's
/// memory lives on while any process still holds it).
#[derive(Debug)]
pub struct ImportedBuffer {
    alloc: Arc<Allocation>,
}

impl ImportedBuffer {
    /// The imported memory object's size.
    pub fn allocation_size(&self) -> u64 {
        self.alloc.allocation_size
    }

    /// Whether the import is a dedicated allocation.
    pub fn dedicated(&self) -> bool {
        self.alloc.dedicated
    }
}

impl Sealed for ImportedBuffer {
    fn retain(&self) -> Arc<dyn Any + Send + Sync> {
        self.alloc.clone()
    }
}

impl DeviceBuffer for ImportedBuffer {
    fn raw(&self) -> vk::Buffer {
        self.alloc.buffer
    }
    fn size(&self) -> u64 {
        self.alloc.size
    }
    fn device(&self) -> &Arc<Device> {
        &self.alloc.device
    }
    fn usage(&self) -> vk::BufferUsageFlags {
        self.alloc.usage
    }
}

/// An import's memory type must be one the device has and the object allows (`type_bits`), and
/// its allocation size at least what the object requires (`required`).
pub(crate) fn check_import_memory(
    device: &Device,
    (type_bits, required): (u32, u64),
    memory_type_index: u32,
    allocation_size: u64,
) -> Result<()> {
    let type_count = device.physical().memory.memory_type_count;
    if memory_type_index >= type_count.min(32) || type_bits & (1 << memory_type_index) == 0 {
        return Err(Error::InvalidMemoryType {
            index: memory_type_index,
            type_bits,
        });
    }
    if allocation_size < required {
        return Err(Error::InvalidSize {
            what: "allocation size",
            size: allocation_size,
            minimum: required,
        });
    }
    Ok(())
}

/// After an import's `vkAllocateMemory`: if it made `memory`, the driver owns the descriptor
/// now (even if binding then failed: freeing the memory frees the descriptor too), so it is
/// released without closing; otherwise it is still ours and is closed here, once.
pub(crate) fn settle_import_fd(fd: OwnedFd, memory: vk::DeviceMemory) {
    if memory != vk::DeviceMemory::null() {
        let _ = fd.into_raw_fd();
    } else {
        drop(fd);
    }
}

impl Device {
    /// Imports buffer memory exported as an `OPAQUE_FD`, creating a buffer of the same size and
    /// usage bound to it. Takes ownership of `fd` only on success (see the module docs).
    ///
    /// Checks before calling the driver: the device UUID ([`Error::DeviceMismatch`]), import
    /// support for the usage ([`Error::Unsupported`]), the usage bits ([`Error::InvalidUsage`]),
    /// the memory type ([`Error::InvalidMemoryType`]), the allocation size
    /// ([`Error::InvalidSize`]) and the dedicated-allocation requirement.
    pub fn import_buffer(
        self: &Arc<Self>,
        fd: OwnedFd,
        desc: &BufferImportDesc,
    ) -> Result<ImportedBuffer> {
        let physical = self.physical();
        if desc.device_uuid != physical.info.device_uuid {
            return Err(Error::DeviceMismatch {
                expected: desc.device_uuid,
                found: physical.info.device_uuid,
            });
        }
        if desc.usage == 0 || desc.usage & !KNOWN_USAGE != 0 {
            return Err(Error::InvalidUsage { usage: desc.usage });
        }
        let usage = vk::BufferUsageFlags::from_raw(desc.usage);
        if self.memory_fd().is_none()
            || !physical
                .info
                .caps
                .buffer_import
                .contains(&HandleType::OpaqueFd)
            || !caps::buffer_features(
                self.instance().raw(),
                physical.handle,
                usage,
                HandleType::OpaqueFd,
            )
            .contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE)
        {
            return Err(Error::Unsupported(format!(
                "OPAQUE_FD buffer import with usage {:#x} on {}",
                desc.usage, physical.info.name
            )));
        }
        let mut alloc =
            Allocation::create_buffer(self, desc.size, usage, Some(HandleType::OpaqueFd))?;
        let reqs = alloc.requirements();
        check_import_memory(
            self,
            (reqs.type_bits, reqs.size),
            desc.memory_type_index,
            desc.allocation_size,
        )?;
        if reqs.requires_dedicated && !desc.dedicated {
            return Err(Error::Unsupported(
                "a non-dedicated import of memory that requires a dedicated allocation".to_owned(),
            ));
        }
        let mut import = vk::ImportMemoryFdInfoKHR::default()
            .handle_type(HandleType::OpaqueFd.memory_handle_type())
            .fd(fd.as_raw_fd());
        // SAFETY: the import info names a descriptor we own, of a handle type the device can
        // import for this usage; the memory type is in the buffer's type bits and the size at
        // least its requirement; their match with the exporter is the descriptor's contract.
        let result = unsafe {
            alloc.allocate_and_bind(
                desc.allocation_size,
                desc.memory_type_index,
                desc.dedicated,
                Some(&mut import),
            )
        };
        settle_import_fd(fd, alloc.memory);
        result?;
        Ok(ImportedBuffer {
            alloc: Arc::new(alloc),
        })
    }

    /// Imports a timeline semaphore exported as an `OPAQUE_FD`. Takes ownership of `fd` only on
    /// success (see the module docs). The imported semaphore is not exportable again.
    pub fn import_timeline_semaphore(self: &Arc<Self>, fd: OwnedFd) -> Result<TimelineSemaphore> {
        let caps = &self.info().caps;
        let Some(loader) = self.semaphore_fd().filter(|_| {
            caps.timeline_semaphore_import
                .contains(&HandleType::OpaqueFd)
        }) else {
            return Err(Error::Unsupported(format!(
                "OPAQUE_FD timeline semaphore import on {}",
                self.info().name
            )));
        };
        let semaphore = TimelineSemaphore::create(self, 0, false)?;
        let info = vk::ImportSemaphoreFdInfoKHR::default()
            .semaphore(semaphore.raw())
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD)
            .fd(fd.as_raw_fd());
        // SAFETY: the semaphore is a fresh timeline semaphore of this device, not in use; the
        // descriptor is ours, of a handle type the device imports for timeline semaphores;
        // permanent import (no TEMPORARY flag), as OPAQUE_FD timeline semaphores require.
        unsafe { loader.import_semaphore_fd(&info) }.check("vkImportSemaphoreFdKHR")?;
        // Success: the driver owns the descriptor. (On failure `fd` was dropped above by `?`.)
        let _ = fd.into_raw_fd();
        Ok(semaphore)
    }
}
