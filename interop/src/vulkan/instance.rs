//! The Vulkan instance: loading the loader, creating a Vulkan 1.2 instance, and enumerating the
//! physical devices it sees.
//!
//! Not here: device selection and logical devices (`device.rs`), what a physical device can do
//! (`physical.rs`, `caps.rs`).

use std::ffi::CString;
use std::fmt;
use std::sync::Arc;

use ash::vk;

use super::error::{Check, Error, Result};
use super::physical::{PhysicalDevice, PhysicalDeviceInfo};

/// The Vulkan API version the instance asks for: timeline semaphores are core from 1.2.
pub(crate) const API_VERSION: u32 = vk::API_VERSION_1_2;

/// A Vulkan instance. Shared through `Arc`; every [`Device`](super::Device) holds one.
///
/// `Send + Sync`: the instance-level calls made here need no external synchronization.
pub struct Instance {
    raw: ash::Instance,
    /// Keeps the loader library loaded while `raw` lives (fields drop after `Drop::drop`).
    _entry: ash::Entry,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("handle", &self.raw.handle())
            .finish()
    }
}

impl Instance {
    /// Loads the Vulkan loader and creates an instance for Vulkan 1.2.
    ///
    /// Fails with [`Error::Loader`] when there is no loader, and with [`Error::Unsupported`] when
    /// the loader is older than 1.2. Enables `VK_KHR_portability_enumeration` where it exists so
    /// that portability drivers are listed too.
    pub fn new(app_name: &str) -> Result<Arc<Instance>> {
        // SAFETY: loading the system Vulkan loader runs its initialisers; that is the documented
        // way to use it, and nothing else in this process depends on it being unloaded.
        let entry = unsafe { ash::Entry::load() }.map_err(Error::Loader)?;
        // SAFETY: `entry` holds a valid loader; the call has no preconditions.
        let version = unsafe { entry.try_enumerate_instance_version() }
            .check("vkEnumerateInstanceVersion")?
            .unwrap_or(vk::API_VERSION_1_0);
        if version < API_VERSION {
            return Err(Error::Unsupported(format!(
                "Vulkan loader version {}.{} is older than 1.2",
                vk::api_version_major(version),
                vk::api_version_minor(version)
            )));
        }
        // SAFETY: `entry` holds a valid loader; no layer name is passed.
        let available = unsafe { entry.enumerate_instance_extension_properties(None) }
            .check("vkEnumerateInstanceExtensionProperties")?;
        let portability = available.iter().any(|e| {
            e.extension_name_as_c_str().ok() == Some(ash::khr::portability_enumeration::NAME)
        });
        let mut extensions = Vec::new();
        let mut flags = vk::InstanceCreateFlags::empty();
        if portability {
            extensions.push(ash::khr::portability_enumeration::NAME.as_ptr());
            flags |= vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR;
        }
        let app_name = CString::new(app_name.replace('\0', "")).unwrap_or_default();
        let app = vk::ApplicationInfo::default()
            .application_name(&app_name)
            .engine_name(c"gpushare")
            .api_version(API_VERSION);
        let info = vk::InstanceCreateInfo::default()
            .application_info(&app)
            .enabled_extension_names(&extensions)
            .flags(flags);
        // SAFETY: `info` and everything it points to (`app`, `app_name`, `extensions`, whose
        // names are 'static) live across the call; the extension was checked to exist.
        let raw = unsafe { entry.create_instance(&info, None) }.check("vkCreateInstance")?;
        Ok(Arc::new(Instance { raw, _entry: entry }))
    }

    /// Every physical device, in enumeration order, with what it can do.
    pub fn devices(&self) -> Result<Vec<PhysicalDeviceInfo>> {
        Ok(self
            .physical_devices()?
            .into_iter()
            .map(|pd| pd.info)
            .collect())
    }

    /// Every physical device with what the crate needs to open it.
    pub(crate) fn physical_devices(&self) -> Result<Vec<PhysicalDevice>> {
        // SAFETY: `raw` is a live instance.
        let handles =
            unsafe { self.raw.enumerate_physical_devices() }.check("vkEnumeratePhysicalDevices")?;
        handles
            .into_iter()
            .zip(0u32..)
            .map(|(handle, index)| PhysicalDevice::probe(self, handle, index))
            .collect()
    }

    /// The instance-level function table.
    pub(crate) fn raw(&self) -> &ash::Instance {
        &self.raw
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every child (each `Device`) holds an `Arc<Instance>`, so none is alive here;
        // the instance is destroyed exactly once.
        unsafe { self.raw.destroy_instance(None) };
    }
}
