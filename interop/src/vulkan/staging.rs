//! The host-visible, host-coherent staging buffer that uploads and downloads go through,
//! persistently mapped. Owned by one [`Transfer`](super::Transfer) engine.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;

use super::buffer::Allocation;
use super::device::Device;
use super::error::{Check, Error, Result};
use super::memory::select_memory_type;

/// Smallest staging buffer created, so small transfers do not reallocate each time.
const MIN_CAPACITY: u64 = 64 * 1024;

/// A mapped staging buffer.
#[derive(Debug)]
pub(crate) struct Staging {
    alloc: Arc<Allocation>,
    ptr: NonNull<u8>,
}

// SAFETY: `ptr` points into memory owned by `alloc` (mapped for its whole life, freed with it),
// which is only accessed through `&mut Staging` or `&Staging` on the owning thread: the
// pointer carries no thread affinity.
unsafe impl Send for Staging {}

impl Staging {
    /// A staging buffer of at least `len` bytes.
    pub fn new(device: &Arc<Device>, len: u64) -> Result<Staging> {
        let capacity = len
            .max(MIN_CAPACITY)
            .checked_next_power_of_two()
            .unwrap_or(len);
        let usage = vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST;
        let mut alloc = Allocation::create_buffer(device, capacity, usage, None)?;
        let reqs = alloc.requirements();
        let required =
            vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let memory_type = select_memory_type(
            &device.physical().memory,
            reqs.type_bits,
            required,
            vk::MemoryPropertyFlags::HOST_CACHED,
        )
        .ok_or(Error::NoMemoryType {
            flags: required.as_raw(),
            type_bits: reqs.type_bits,
        })?;
        let dedicated = reqs.prefers_dedicated || reqs.requires_dedicated;
        // SAFETY: no extension is chained; the type is in the buffer's type bits and the size its
        // requirement.
        unsafe { alloc.allocate_and_bind(reqs.size, memory_type, dedicated, None)? };
        // SAFETY: the memory is host-visible, not mapped yet, and the whole range is mapped.
        let ptr = unsafe {
            device
                .raw()
                .map_memory(alloc.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
        }
        .check("vkMapMemory")?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Call {
            call: "vkMapMemory",
            result: vk::Result::ERROR_MEMORY_MAP_FAILED,
        })?;
        Ok(Staging {
            alloc: Arc::new(alloc),
            ptr,
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.alloc.size
    }

    /// The buffer handle.
    pub fn buffer(&self) -> vk::Buffer {
        self.alloc.buffer
    }

    /// Copies `data` to the start of the buffer. The caller ensures no GPU work uses it now.
    pub fn write(&mut self, data: &[u8]) {
        debug_assert!(data.len() as u64 <= self.capacity());
        let len = data
            .len()
            .min(usize::try_from(self.capacity()).unwrap_or(usize::MAX));
        // SAFETY: the mapping covers `capacity` bytes, `len` does not exceed it, the source is
        // a distinct host slice; coherent memory needs no flush.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr(), len) };
    }

    /// The first `len` bytes. The caller ensures GPU writes completed and were made visible to
    /// the host (fence wait after a barrier to `HOST_READ`).
    pub fn read(&self, len: u64) -> Vec<u8> {
        let len = usize::try_from(len.min(self.capacity())).unwrap_or(0);
        // SAFETY: the mapping covers `capacity` bytes and `len` does not exceed it; no GPU work
        // writes to it now (caller's contract).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }.to_vec()
    }

    /// Keeps the buffer and memory alive for a submission that may outlive `self`.
    pub fn retain(&self) -> Arc<dyn Any + Send + Sync> {
        self.alloc.clone()
    }
}
