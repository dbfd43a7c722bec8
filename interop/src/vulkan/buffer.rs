//! Buffers whose memory can cross process boundaries: the [`DeviceBuffer`] trait the transfer
//! engine works on, and [`ExportableBuffer`], a buffer with its own exportable allocation.
//!
//! Not here: importing memory another process exported (`import.rs`).

use std::any::Any;
use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use ash::vk;

use super::caps::{HandleType, EXPORT_USAGE};
use super::device::Device;
use super::error::{Check, Error, Result};
use super::import::BufferImportDesc;
use super::memory::select_memory_type;

mod sealed {
    use std::any::Any;
    use std::sync::Arc;

    /// Only this crate's buffer types implement [`super::DeviceBuffer`]: their handles are valid
    /// for as long as they live, which the transfer engine relies on.
    pub trait Sealed {
        /// Keeps the buffer and its memory alive (for a submission that may outlive `self`).
        fn retain(&self) -> Arc<dyn Any + Send + Sync>;
    }
}

/// A buffer on a [`Device`] that transfer operations can read and write. Sealed: implemented by
/// [`ExportableBuffer`] and [`ImportedBuffer`](super::ImportedBuffer).
pub trait DeviceBuffer: sealed::Sealed + Send + Sync {
    /// The Vulkan handle, valid while `self` lives.
    fn raw(&self) -> vk::Buffer;
    /// The buffer's size in bytes (as created, not the allocation size).
    fn size(&self) -> u64;
    /// The device it lives on.
    fn device(&self) -> &Arc<Device>;
    /// Its usage flags.
    fn usage(&self) -> vk::BufferUsageFlags;
}

/// A buffer bound to memory it owns. Destroys both in `Drop`.
pub(crate) struct Allocation {
    pub device: Arc<Device>,
    pub buffer: vk::Buffer,
    pub memory: vk::DeviceMemory,
    pub size: u64,
    pub allocation_size: u64,
    pub dedicated: bool,
    pub memory_type_index: u32,
    pub usage: vk::BufferUsageFlags,
}

impl fmt::Debug for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("buffer", &self.buffer)
            .field("memory", &self.memory)
            .field("size", &self.size)
            .field("allocation_size", &self.allocation_size)
            .field("dedicated", &self.dedicated)
            .field("memory_type_index", &self.memory_type_index)
            .field("usage", &self.usage)
            .finish()
    }
}

/// What the driver requires of a buffer's memory.
pub(crate) struct Requirements {
    pub size: u64,
    pub type_bits: u32,
    pub prefers_dedicated: bool,
    pub requires_dedicated: bool,
}

impl Allocation {
    /// Creates a buffer with no memory yet; `external` chains `VkExternalMemoryBufferCreateInfo`.
    /// The caller has validated `size > 0`, `usage`, and that `external` is supported.
    pub fn create_buffer(
        device: &Arc<Device>,
        size: u64,
        usage: vk::BufferUsageFlags,
        external: Option<HandleType>,
    ) -> Result<Allocation> {
        if size == 0 {
            return Err(Error::InvalidSize {
                what: "buffer size",
                size,
                minimum: 1,
            });
        }
        let mut external_info = vk::ExternalMemoryBufferCreateInfo::default().handle_types(
            external
                .map(HandleType::memory_handle_type)
                .unwrap_or_default(),
        );
        let mut info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        if external.is_some() {
            info = info.push_next(&mut external_info);
        }
        // SAFETY: size is non-zero, usage non-empty and known (checked by callers), the external
        // handle type supported for it (checked by callers); all structures outlive the call.
        let buffer = unsafe { device.raw().create_buffer(&info, None) }.check("vkCreateBuffer")?;
        Ok(Allocation {
            device: Arc::clone(device),
            buffer,
            memory: vk::DeviceMemory::null(),
            size,
            allocation_size: 0,
            dedicated: false,
            memory_type_index: 0,
            usage,
        })
    }

    /// The buffer's memory requirements, dedicated-allocation hints included.
    pub fn requirements(&self) -> Requirements {
        let info = vk::BufferMemoryRequirementsInfo2::default().buffer(self.buffer);
        let mut dedicated = vk::MemoryDedicatedRequirements::default();
        let mut reqs = vk::MemoryRequirements2::default().push_next(&mut dedicated);
        // SAFETY: `self.buffer` is a live buffer of this device; the structures are valid and
        // outlive the call (get_memory_requirements2 is core in 1.1).
        unsafe {
            self.device
                .raw()
                .get_buffer_memory_requirements2(&info, &mut reqs)
        };
        let base = reqs.memory_requirements;
        Requirements {
            size: base.size,
            type_bits: base.memory_type_bits,
            prefers_dedicated: dedicated.prefers_dedicated_allocation == vk::TRUE,
            requires_dedicated: dedicated.requires_dedicated_allocation == vk::TRUE,
        }
    }

    /// Allocates memory for the buffer and binds it. `extra`, if any, is chained into the
    /// allocate info (export or import info); `dedicated` chains `VkMemoryDedicatedAllocateInfo`.
    ///
    /// Whatever happens, the memory, once allocated, is owned by `self` (freed in `Drop`).
    ///
    /// # Safety
    ///
    /// `extra`, if any, must be a valid extension of `VkMemoryAllocateInfo` for this device with
    /// a null `pNext`, and `memory_type_index`/`allocation_size` valid for the buffer and `extra`.
    pub unsafe fn allocate_and_bind(
        &mut self,
        allocation_size: u64,
        memory_type_index: u32,
        dedicated: bool,
        extra: Option<&mut dyn vk::ExtendsMemoryAllocateInfo>,
    ) -> Result<()> {
        let mut dedicated_info = vk::MemoryDedicatedAllocateInfo::default().buffer(self.buffer);
        let mut info = vk::MemoryAllocateInfo::default()
            .allocation_size(allocation_size)
            .memory_type_index(memory_type_index);
        if let Some(extra) = extra {
            info = info.push_next(extra);
        }
        if dedicated {
            info = info.push_next(&mut dedicated_info);
        }
        // SAFETY: the caller guarantees `extra` and the size/type; the dedicated info names this
        // buffer, which has no memory bound yet; all structures outlive the call.
        let memory =
            unsafe { self.device.raw().allocate_memory(&info, None) }.check("vkAllocateMemory")?;
        self.memory = memory;
        self.allocation_size = allocation_size;
        self.memory_type_index = memory_type_index;
        self.dedicated = dedicated;
        // SAFETY: buffer and memory belong to this device; the memory was allocated from a type
        // in the buffer's `memoryTypeBits` with at least its required size, offset 0 satisfies
        // any alignment; the buffer has no memory bound.
        unsafe {
            self.device
                .raw()
                .bind_buffer_memory(self.buffer, self.memory, 0)
        }
        .check("vkBindBufferMemory")
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: the handles belong to `self.device` and are destroyed once, when the last
        // holder goes: transfer submissions in flight hold the allocation too.
        unsafe {
            self.device.raw().destroy_buffer(self.buffer, None);
            if self.memory != vk::DeviceMemory::null() {
                self.device.raw().free_memory(self.memory, None);
            }
        }
    }
}

/// A buffer with its own exportable (`OPAQUE_FD`) allocation, device-local where the device has
/// such memory. Usage: transfer source, transfer destination, storage buffer.
///
/// `Send + Sync`: its methods call nothing Vulkan requires external synchronization for.
#[derive(Debug)]
pub struct ExportableBuffer {
    alloc: Arc<Allocation>,
}

impl Device {
    /// Creates a buffer of `size` bytes whose memory can be exported as an `OPAQUE_FD`.
    ///
    /// Fails with [`Error::Unsupported`] if the device cannot export such buffers, and with an
    /// out-of-memory error ([`Error::is_out_of_memory`]) when memory runs out.
    pub fn create_exportable_buffer(self: &Arc<Self>, size: u64) -> Result<ExportableBuffer> {
        let physical = self.physical();
        if !physical
            .info
            .caps
            .buffer_export
            .contains(&HandleType::OpaqueFd)
        {
            return Err(Error::Unsupported(format!(
                "OPAQUE_FD buffer export on {}",
                physical.info.name
            )));
        }
        let mut alloc =
            Allocation::create_buffer(self, size, EXPORT_USAGE, Some(HandleType::OpaqueFd))?;
        let reqs = alloc.requirements();
        let dedicated =
            reqs.prefers_dedicated || reqs.requires_dedicated || physical.export_dedicated_only;
        let memory_type_index = select_memory_type(
            &physical.memory,
            reqs.type_bits,
            vk::MemoryPropertyFlags::empty(),
            vk::MemoryPropertyFlags::DEVICE_LOCAL,
        )
        .ok_or(Error::NoMemoryType {
            flags: 0,
            type_bits: reqs.type_bits,
        })?;
        let mut export = vk::ExportMemoryAllocateInfo::default()
            .handle_types(HandleType::OpaqueFd.memory_handle_type());
        // SAFETY: the export info is valid (handle type exportable for this usage, checked via
        // caps); the memory type is in the buffer's type bits, the size its required size.
        unsafe {
            alloc.allocate_and_bind(reqs.size, memory_type_index, dedicated, Some(&mut export))?
        };
        Ok(ExportableBuffer {
            alloc: Arc::new(alloc),
        })
    }
}

impl ExportableBuffer {
    /// The buffer's size in bytes, as requested.
    pub fn size(&self) -> u64 {
        self.alloc.size
    }

    /// The memory object's size: what importers must pass (CUDA included).
    pub fn allocation_size(&self) -> u64 {
        self.alloc.allocation_size
    }

    /// Whether the memory is a dedicated allocation.
    pub fn dedicated(&self) -> bool {
        self.alloc.dedicated
    }

    /// The memory type the memory was allocated from.
    pub fn memory_type_index(&self) -> u32 {
        self.alloc.memory_type_index
    }

    /// The buffer's `VkBufferUsageFlags`.
    pub fn usage(&self) -> u32 {
        self.alloc.usage.as_raw()
    }

    /// Exports the memory as a new `OPAQUE_FD` (a new descriptor on every call).
    pub fn export_fd(&self) -> Result<OwnedFd> {
        // SAFETY: the memory was allocated on this device with OPAQUE_FD in its export handle
        // types, and lives as long as `self`.
        unsafe { export_opaque_fd(&self.alloc.device, self.alloc.memory) }
    }

    /// Everything an importer needs besides the descriptor.
    pub fn import_desc(&self) -> BufferImportDesc {
        BufferImportDesc {
            size: self.alloc.size,
            allocation_size: self.alloc.allocation_size,
            dedicated: self.alloc.dedicated,
            memory_type_index: self.alloc.memory_type_index,
            usage: self.alloc.usage.as_raw(),
            device_uuid: self.alloc.device.info().device_uuid,
        }
    }
}

/// Exports `memory` as a new `OPAQUE_FD` (a new descriptor on every call).
///
/// # Safety
///
/// `memory` is a live allocation of `device` made with `OPAQUE_FD` in its export handle types.
pub(crate) unsafe fn export_opaque_fd(
    device: &Device,
    memory: vk::DeviceMemory,
) -> Result<OwnedFd> {
    let loader = device
        .memory_fd()
        .ok_or_else(|| Error::Unsupported("VK_KHR_external_memory_fd on this device".to_owned()))?;
    let info = vk::MemoryGetFdInfoKHR::default()
        .memory(memory)
        .handle_type(HandleType::OpaqueFd.memory_handle_type());
    // SAFETY: the caller guarantees the memory and its export handle type; the device's
    // VK_KHR_external_memory_fd is enabled (its loader exists).
    let fd = unsafe { loader.get_memory_fd(&info) }.check("vkGetMemoryFdKHR")?;
    if fd < 0 {
        return Err(Error::Call {
            call: "vkGetMemoryFdKHR",
            result: vk::Result::ERROR_INVALID_EXTERNAL_HANDLE,
        });
    }
    // SAFETY: on success the driver returns a new descriptor that the caller owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl sealed::Sealed for ExportableBuffer {
    fn retain(&self) -> Arc<dyn Any + Send + Sync> {
        self.alloc.clone()
    }
}

impl DeviceBuffer for ExportableBuffer {
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

pub(crate) use sealed::Sealed;
