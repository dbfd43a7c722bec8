//! The logical device: opening one on a selected physical device with timeline semaphores, one
//! queue, and the external memory/semaphore fd extensions the device has.
//!
//! Not here: what is created on it (`buffer.rs`, `semaphore.rs`, `import.rs`) and GPU work
//! (`transfer.rs`).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use ash::vk;

use super::error::{Check, Error, Result};
use super::instance::Instance;
use super::physical::{DeviceSelector, DeviceType, PhysicalDevice, PhysicalDeviceInfo};

/// A Vulkan logical device with one queue. Shared through `Arc`; every buffer, semaphore and
/// transfer engine holds one, so the device outlives them.
///
/// `Send + Sync`: the queue, the only object here that Vulkan requires external synchronization
/// for, sits behind a mutex that every submission takes.
pub struct Device {
    raw: ash::Device,
    physical: PhysicalDevice,
    queue_family: u32,
    queue_flags: vk::QueueFlags,
    queue: Mutex<vk::Queue>,
    memory_fd: Option<ash::khr::external_memory_fd::Device>,
    semaphore_fd: Option<ash::khr::external_semaphore_fd::Device>,
    // Dropped after `Drop::drop` destroyed the device.
    instance: Arc<Instance>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("handle", &self.raw.handle())
            .field("name", &self.physical.info.name)
            .field("queue_family", &self.queue_family)
            .finish()
    }
}

/// The queue family to use: the first general one (graphics or compute), else a transfer-only
/// one. Every such family supports transfer commands.
fn pick_queue_family(families: &[vk::QueueFamilyProperties]) -> Option<u32> {
    let with = |flags: vk::QueueFlags| {
        families
            .iter()
            .zip(0u32..)
            .find(|(f, _)| f.queue_count > 0 && f.queue_flags.intersects(flags))
            .map(|(_, i)| i)
    };
    with(vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE)
        .or_else(|| with(vk::QueueFlags::TRANSFER))
}

impl Device {
    /// Opens a logical device on the physical device `selector` picks.
    ///
    /// Fails with [`Error::NoDevice`] when the instance sees none, [`Error::DeviceNotFound`] when
    /// none matches, and [`Error::Unsupported`] when the device lacks timeline semaphores or a
    /// usable queue. A CPU driver is accepted with a warning.
    pub fn open(instance: &Arc<Instance>, selector: &DeviceSelector) -> Result<Arc<Device>> {
        let mut physicals = instance.physical_devices()?;
        if physicals.is_empty() {
            return Err(Error::NoDevice);
        }
        let infos: Vec<_> = physicals.iter().map(|p| &p.info).collect();
        let pos = selector
            .pick(&infos)
            .ok_or_else(|| Error::DeviceNotFound(selector.to_string()))?;
        let physical = physicals.swap_remove(pos);
        let name = physical.info.name.clone();
        if !physical.info.caps.timeline_semaphore {
            return Err(Error::Unsupported(format!("timeline semaphores on {name}")));
        }
        // SAFETY: the handle was enumerated from this live instance.
        let families = unsafe {
            instance
                .raw()
                .get_physical_device_queue_family_properties(physical.handle)
        };
        let queue_family = pick_queue_family(&families)
            .ok_or_else(|| Error::Unsupported(format!("a transfer queue on {name}")))?;
        let queue_flags = families
            .get(queue_family as usize)
            .map_or(vk::QueueFlags::empty(), |f| f.queue_flags);
        if physical.info.device_type == DeviceType::Cpu {
            tracing::warn!(device = %name, "opening a CPU Vulkan driver: no GPU acceleration");
        }

        let memory_fd = physical.has_extension(ash::khr::external_memory_fd::NAME);
        let semaphore_fd = physical.has_extension(ash::khr::external_semaphore_fd::NAME);
        let mut extensions = Vec::new();
        if memory_fd {
            extensions.push(ash::khr::external_memory_fd::NAME.as_ptr());
            if physical.has_extension(ash::ext::external_memory_dma_buf::NAME) {
                extensions.push(ash::ext::external_memory_dma_buf::NAME.as_ptr());
            }
        }
        if semaphore_fd {
            extensions.push(ash::khr::external_semaphore_fd::NAME.as_ptr());
        }
        if physical.has_extension(ash::khr::portability_subset::NAME) {
            // Required by the spec whenever the device exposes it.
            extensions.push(ash::khr::portability_subset::NAME.as_ptr());
        }
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(queue_family)
            .queue_priorities(&priorities)];
        let mut features12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&extensions)
            .push_next(&mut features12);
        // SAFETY: the physical device belongs to `instance`; every extension enabled was checked
        // to exist, the timeline feature to be supported, the queue family to exist with a
        // non-zero count; all structures outlive the call.
        let raw = unsafe { instance.raw().create_device(physical.handle, &info, None) }
            .check("vkCreateDevice")?;
        // SAFETY: queue 0 of `queue_family` was requested at creation.
        let queue = unsafe { raw.get_device_queue(queue_family, 0) };
        let memory_fd =
            memory_fd.then(|| ash::khr::external_memory_fd::Device::new(instance.raw(), &raw));
        let semaphore_fd = semaphore_fd
            .then(|| ash::khr::external_semaphore_fd::Device::new(instance.raw(), &raw));
        tracing::debug!(device = %name, queue_family, "opened Vulkan device");
        Ok(Arc::new(Device {
            raw,
            physical,
            queue_family,
            queue_flags,
            queue: Mutex::new(queue),
            memory_fd,
            semaphore_fd,
            instance: Arc::clone(instance),
        }))
    }

    /// What the physical device is and can do.
    pub fn info(&self) -> &PhysicalDeviceInfo {
        &self.physical.info
    }

    /// The instance this device was opened on.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// The queue family index of the device's one queue.
    pub fn queue_family_index(&self) -> u32 {
        self.queue_family
    }

    /// What the device's one queue can do (`VkQueueFamilyProperties::queueFlags`): blits need
    /// `GRAPHICS`.
    pub fn queue_flags(&self) -> vk::QueueFlags {
        self.queue_flags
    }

    pub(crate) fn raw(&self) -> &ash::Device {
        &self.raw
    }

    pub(crate) fn physical(&self) -> &PhysicalDevice {
        &self.physical
    }

    pub(crate) fn memory_fd(&self) -> Option<&ash::khr::external_memory_fd::Device> {
        self.memory_fd.as_ref()
    }

    pub(crate) fn semaphore_fd(&self) -> Option<&ash::khr::external_semaphore_fd::Device> {
        self.semaphore_fd.as_ref()
    }

    /// Submits to the queue, holding the queue lock for the call.
    ///
    /// # Safety
    ///
    /// `submits` must be valid for this device's queue (command buffers in the executable
    /// state, from a pool of this queue family, not in use elsewhere; semaphores and `fence` of
    /// this device, `fence` unsignaled and not in use by another submission).
    pub(crate) unsafe fn submit(
        &self,
        submits: &[vk::SubmitInfo<'_>],
        fence: vk::Fence,
    ) -> Result<()> {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the queue is externally synchronized by the lock held; the caller guarantees
        // the rest.
        unsafe { self.raw.queue_submit(*queue, submits, fence) }.check("vkQueueSubmit")
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: `&mut self` means no other thread uses the queue; every child object holds an
        // `Arc<Device>`, so none is alive and none is used after this.
        unsafe {
            if let Err(e) = self.raw.device_wait_idle() {
                tracing::error!(error = ?e, "vkDeviceWaitIdle failed while dropping the device");
            }
            self.raw.destroy_device(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(flags: vk::QueueFlags, count: u32) -> vk::QueueFamilyProperties {
        vk::QueueFamilyProperties {
            queue_flags: flags,
            queue_count: count,
            ..Default::default()
        }
    }

    #[test]
    fn queue_family_choice() {
        let f = [
            family(vk::QueueFlags::TRANSFER, 2),
            family(vk::QueueFlags::GRAPHICS, 0),
            family(vk::QueueFlags::COMPUTE | vk::QueueFlags::TRANSFER, 1),
        ];
        assert_eq!(pick_queue_family(&f), Some(2));
        assert_eq!(pick_queue_family(&f[..2]), Some(0));
        assert_eq!(pick_queue_family(&f[1..2]), None);
    }

    #[test]
    fn send_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<Device>();
        assert::<Instance>();
    }
}
