//! Physical devices: what each one is (name, ids, UUIDs, heaps, capabilities) and how a caller
//! picks one ([`DeviceSelector`]).
//!
//! Not here: the logical device (`device.rs`) and how capabilities are probed (`caps.rs`).

use std::ffi::{CStr, CString};
use std::fmt;

use ash::vk;

use super::caps::{self, Capabilities};
use super::error::{Check, Result};
use super::instance::Instance;

/// The kind of a physical device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// Anything else.
    Other,
    /// A GPU sharing memory with the host.
    IntegratedGpu,
    /// A GPU with its own memory.
    DiscreteGpu,
    /// A GPU in a virtual machine.
    VirtualGpu,
    /// A driver running on the CPU (lavapipe).
    Cpu,
}

impl From<vk::PhysicalDeviceType> for DeviceType {
    fn from(t: vk::PhysicalDeviceType) -> Self {
        match t {
            vk::PhysicalDeviceType::INTEGRATED_GPU => DeviceType::IntegratedGpu,
            vk::PhysicalDeviceType::DISCRETE_GPU => DeviceType::DiscreteGpu,
            vk::PhysicalDeviceType::VIRTUAL_GPU => DeviceType::VirtualGpu,
            vk::PhysicalDeviceType::CPU => DeviceType::Cpu,
            _ => DeviceType::Other,
        }
    }
}

/// One memory heap of a physical device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryHeap {
    /// Size in bytes.
    pub size: u64,
    /// Whether the heap is device-local.
    pub device_local: bool,
}

/// Everything gpushare reports about a physical device.
#[derive(Clone, Debug)]
pub struct PhysicalDeviceInfo {
    /// Position in the instance's enumeration order.
    pub index: u32,
    /// `deviceName`.
    pub name: String,
    /// PCI vendor id (or a Khronos vendor id).
    pub vendor_id: u32,
    /// Vendor-specific device id.
    pub device_id: u32,
    /// What kind of device it is.
    pub device_type: DeviceType,
    /// `driverName` (empty before Vulkan 1.2).
    pub driver_name: String,
    /// `driverInfo` (empty before Vulkan 1.2).
    pub driver_info: String,
    /// `deviceUUID`: the key to match processes and CUDA devices on.
    pub device_uuid: [u8; 16],
    /// `driverUUID`: opaque handles are only importable where this matches too.
    pub driver_uuid: [u8; 16],
    /// The device's Vulkan version (major, minor, patch).
    pub api_version: (u32, u32, u32),
    /// The memory heaps.
    pub heaps: Vec<MemoryHeap>,
    /// What it can export and import.
    pub caps: Capabilities,
}

/// How to pick a physical device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSelector {
    /// The device at this enumeration index.
    Index(u32),
    /// The device with this `deviceUUID`.
    Uuid([u8; 16]),
    /// The first device that is not a CPU driver, else the first device (devices without
    /// timeline semaphores, which cannot be opened, come last).
    #[default]
    Default,
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelector::Index(i) => write!(f, "index {i}"),
            DeviceSelector::Uuid(u) => {
                f.write_str("uuid ")?;
                u.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            DeviceSelector::Default => f.write_str("default"),
        }
    }
}

impl DeviceSelector {
    /// The position in `infos` this selector picks, if any.
    pub fn pick(&self, infos: &[&PhysicalDeviceInfo]) -> Option<usize> {
        match self {
            DeviceSelector::Index(i) => infos.iter().position(|d| d.index == *i),
            DeviceSelector::Uuid(u) => infos.iter().position(|d| d.device_uuid == *u),
            DeviceSelector::Default => {
                let usable = |d: &PhysicalDeviceInfo| d.caps.timeline_semaphore;
                infos
                    .iter()
                    .position(|d| usable(d) && d.device_type != DeviceType::Cpu)
                    .or_else(|| infos.iter().position(|d| usable(d)))
                    .or(if infos.is_empty() { None } else { Some(0) })
            }
        }
    }
}

/// A physical device with what opening it needs.
#[derive(Clone, Debug)]
pub(crate) struct PhysicalDevice {
    pub handle: vk::PhysicalDevice,
    pub info: PhysicalDeviceInfo,
    pub extensions: Vec<CString>,
    pub memory: vk::PhysicalDeviceMemoryProperties,
    /// `maxTimelineSemaphoreValueDifference` (0 without timeline semaphores).
    pub max_timeline_difference: u64,
    /// Exported buffer memory must be a dedicated allocation.
    pub export_dedicated_only: bool,
}

impl PhysicalDevice {
    /// Whether the device has extension `name`.
    pub fn has_extension(&self, name: &CStr) -> bool {
        self.extensions.iter().any(|e| e.as_c_str() == name)
    }

    /// Queries everything about `handle`, a device of `instance`.
    pub fn probe(instance: &Instance, handle: vk::PhysicalDevice, index: u32) -> Result<Self> {
        let raw = instance.raw();
        // SAFETY: `handle` was enumerated from this live instance.
        let base = unsafe { raw.get_physical_device_properties(handle) };
        let is_1_2 = base.api_version >= vk::API_VERSION_1_2;

        let mut id = vk::PhysicalDeviceIDProperties::default();
        let mut driver = vk::PhysicalDeviceDriverProperties::default();
        let mut timeline_props = vk::PhysicalDeviceTimelineSemaphoreProperties::default();
        let mut timeline_features = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
        {
            let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut id);
            if is_1_2 {
                props = props.push_next(&mut driver).push_next(&mut timeline_props);
            }
            // SAFETY: the instance is 1.2, so properties2 and IDProperties (1.1) are core; the
            // 1.2 structures are chained only for devices that report 1.2. All outlive the call.
            unsafe { raw.get_physical_device_properties2(handle, &mut props) };
            if is_1_2 {
                let mut features =
                    vk::PhysicalDeviceFeatures2::default().push_next(&mut timeline_features);
                // SAFETY: as above; the device reports Vulkan 1.2.
                unsafe { raw.get_physical_device_features2(handle, &mut features) };
            }
        }
        let timeline = is_1_2 && timeline_features.timeline_semaphore == vk::TRUE;

        // SAFETY: `handle` was enumerated from this live instance; no layer name is passed.
        let extensions = unsafe { raw.enumerate_device_extension_properties(handle) }
            .check("vkEnumerateDeviceExtensionProperties")?
            .iter()
            .filter_map(|e| e.extension_name_as_c_str().ok().map(CStr::to_owned))
            .collect::<Vec<_>>();
        // SAFETY: `handle` was enumerated from this live instance.
        let memory = unsafe { raw.get_physical_device_memory_properties(handle) };

        let has = |name: &CStr| extensions.iter().any(|e| e.as_c_str() == name);
        let probe = caps::probe(raw, handle, has, timeline);

        let text = |s: std::result::Result<&CStr, _>| {
            s.map(|s: &CStr| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let heaps = memory
            .memory_heaps_as_slice()
            .iter()
            .map(|h| MemoryHeap {
                size: h.size,
                device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
            })
            .collect();
        let info = PhysicalDeviceInfo {
            index,
            name: text(base.device_name_as_c_str()),
            vendor_id: base.vendor_id,
            device_id: base.device_id,
            device_type: base.device_type.into(),
            driver_name: if is_1_2 {
                text(driver.driver_name_as_c_str())
            } else {
                String::new()
            },
            driver_info: if is_1_2 {
                text(driver.driver_info_as_c_str())
            } else {
                String::new()
            },
            device_uuid: id.device_uuid,
            driver_uuid: id.driver_uuid,
            api_version: (
                vk::api_version_major(base.api_version),
                vk::api_version_minor(base.api_version),
                vk::api_version_patch(base.api_version),
            ),
            heaps,
            caps: probe.caps,
        };
        Ok(PhysicalDevice {
            handle,
            info,
            extensions,
            memory,
            max_timeline_difference: if timeline {
                timeline_props.max_timeline_semaphore_value_difference
            } else {
                0
            },
            export_dedicated_only: probe.export_dedicated_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(index: u32, device_type: DeviceType, uuid: u8) -> PhysicalDeviceInfo {
        PhysicalDeviceInfo {
            index,
            name: String::new(),
            vendor_id: 0,
            device_id: 0,
            device_type,
            driver_name: String::new(),
            driver_info: String::new(),
            device_uuid: [uuid; 16],
            driver_uuid: [0; 16],
            api_version: (1, 3, 0),
            heaps: Vec::new(),
            caps: Capabilities {
                timeline_semaphore: true,
                ..Default::default()
            },
        }
    }

    #[test]
    fn selector_picks() {
        let cpu = info(0, DeviceType::Cpu, 1);
        let gpu = info(1, DeviceType::DiscreteGpu, 2);
        let both = [&cpu, &gpu];
        assert_eq!(DeviceSelector::Default.pick(&both), Some(1));
        assert_eq!(DeviceSelector::Default.pick(&[&cpu]), Some(0));
        assert_eq!(DeviceSelector::Default.pick(&[]), None);
        let mut old_gpu = info(2, DeviceType::DiscreteGpu, 3);
        old_gpu.caps.timeline_semaphore = false;
        assert_eq!(DeviceSelector::Default.pick(&[&old_gpu, &cpu]), Some(1));
        assert_eq!(DeviceSelector::Default.pick(&[&old_gpu]), Some(0));
        assert_eq!(DeviceSelector::Index(1).pick(&both), Some(1));
        assert_eq!(DeviceSelector::Index(7).pick(&both), None);
        assert_eq!(DeviceSelector::Uuid([1; 16]).pick(&both), Some(0));
        assert_eq!(
            DeviceSelector::Uuid([0xab; 16]).to_string(),
            format!("uuid {}", "ab".repeat(16))
        );
    }
}
