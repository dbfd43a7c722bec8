//! What a physical device can share: which external handle types it exports and imports for
//! buffers and for timeline semaphores.
//!
//! Answers come from the driver (`vkGetPhysicalDeviceExternalBufferProperties`,
//! `vkGetPhysicalDeviceExternalSemaphoreProperties` with a timeline type chained) and from the
//! device's extension list; a capability is reported only when both agree. Every export and import
//! checks these before calling the driver.

use std::ffi::CStr;

use ash::vk;

/// A kind of external handle, as passed between processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandleType {
    /// `VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT` (or the semaphore equivalent): an fd only
    /// the same driver on the same device can import.
    OpaqueFd,
    /// `VK_EXTERNAL_MEMORY_HANDLE_TYPE_DMA_BUF_BIT_EXT`: a Linux dma-buf (memory only).
    DmaBuf,
}

impl HandleType {
    /// The Vulkan memory handle type bit.
    pub fn memory_handle_type(self) -> vk::ExternalMemoryHandleTypeFlags {
        match self {
            HandleType::OpaqueFd => vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD,
            HandleType::DmaBuf => vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT,
        }
    }
}

/// What a physical device can export and import (see the module docs for how it is decided).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Handle types exportable buffers can be exported as.
    pub buffer_export: Vec<HandleType>,
    /// Handle types buffers can be imported from.
    pub buffer_import: Vec<HandleType>,
    /// Handle types timeline semaphores can be exported as (empty on lavapipe).
    pub timeline_semaphore_export: Vec<HandleType>,
    /// Handle types timeline semaphores can be imported from.
    pub timeline_semaphore_import: Vec<HandleType>,
    /// Whether the device supports timeline semaphores at all (the `timelineSemaphore` feature).
    pub timeline_semaphore: bool,
}

/// The capabilities plus the allocation constraints that go with them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Probe {
    pub caps: Capabilities,
    /// Exported OPAQUE_FD buffer memory must be a dedicated allocation.
    pub export_dedicated_only: bool,
}

/// Usage flags of every buffer this crate creates for export.
pub(crate) const EXPORT_USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::TRANSFER_SRC.as_raw()
        | vk::BufferUsageFlags::TRANSFER_DST.as_raw()
        | vk::BufferUsageFlags::STORAGE_BUFFER.as_raw(),
);

/// External memory features of a buffer with `usage` shared as `handle_type`.
pub(crate) fn buffer_features(
    instance: &ash::Instance,
    physical: vk::PhysicalDevice,
    usage: vk::BufferUsageFlags,
    handle_type: HandleType,
) -> vk::ExternalMemoryFeatureFlags {
    let info = vk::PhysicalDeviceExternalBufferInfo::default()
        .usage(usage)
        .handle_type(handle_type.memory_handle_type());
    let mut props = vk::ExternalBufferProperties::default();
    // SAFETY: `physical` comes from this instance; `info` is a valid structure with a single
    // handle type bit and valid usage, `props` a valid output structure.
    unsafe { instance.get_physical_device_external_buffer_properties(physical, &info, &mut props) };
    props.external_memory_properties.external_memory_features
}

/// Asks the driver what `physical` can share. `has_extension` tells which device extensions
/// exist; `timeline` whether the `timelineSemaphore` feature does (the device is then 1.2+).
pub(crate) fn probe(
    instance: &ash::Instance,
    physical: vk::PhysicalDevice,
    has_extension: impl Fn(&CStr) -> bool,
    timeline: bool,
) -> Probe {
    let mut probe = Probe::default();
    probe.caps.timeline_semaphore = timeline;
    let memory_fd = has_extension(ash::khr::external_memory_fd::NAME);
    let dma_buf = memory_fd && has_extension(ash::ext::external_memory_dma_buf::NAME);
    for (handle_type, present) in [
        (HandleType::OpaqueFd, memory_fd),
        (HandleType::DmaBuf, dma_buf),
    ] {
        if !present {
            continue;
        }
        let features = buffer_features(instance, physical, EXPORT_USAGE, handle_type);
        if features.contains(vk::ExternalMemoryFeatureFlags::EXPORTABLE) {
            probe.caps.buffer_export.push(handle_type);
            if handle_type == HandleType::OpaqueFd {
                probe.export_dedicated_only =
                    features.contains(vk::ExternalMemoryFeatureFlags::DEDICATED_ONLY);
            }
        }
        if features.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE) {
            probe.caps.buffer_import.push(handle_type);
        }
    }
    if timeline && has_extension(ash::khr::external_semaphore_fd::NAME) {
        let mut type_info =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        let info = vk::PhysicalDeviceExternalSemaphoreInfo::default()
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD)
            .push_next(&mut type_info);
        let mut props = vk::ExternalSemaphoreProperties::default();
        // SAFETY: `physical` comes from this instance and supports Vulkan 1.2 (timeline
        // semaphores), so chaining `VkSemaphoreTypeCreateInfo` is valid; `info` and `props` are
        // valid structures that outlive the call.
        unsafe {
            instance.get_physical_device_external_semaphore_properties(physical, &info, &mut props)
        };
        let features = props.external_semaphore_features;
        if features.contains(vk::ExternalSemaphoreFeatureFlags::EXPORTABLE) {
            probe
                .caps
                .timeline_semaphore_export
                .push(HandleType::OpaqueFd);
        }
        if features.contains(vk::ExternalSemaphoreFeatureFlags::IMPORTABLE) {
            probe
                .caps
                .timeline_semaphore_import
                .push(HandleType::OpaqueFd);
        }
    }
    probe
}
