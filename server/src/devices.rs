//! The GPUs the daemon serves: the Vulkan instance, the selected device(s) and each device's
//! executor.

use std::sync::Arc;

use gpushare_interop::vulkan::{self, Device, DeviceSelector, Instance, PhysicalDeviceInfo};

use crate::executor::{Executor, VulkanExecutor};

/// One served device.
#[derive(Debug)]
pub struct DeviceSlot {
    /// The daemon's index for it (resources name it).
    pub index: u32,
    /// The Vulkan logical device.
    pub device: Arc<Device>,
    /// Runs Write/Read/Fill/Copy on it.
    pub executor: Arc<dyn Executor>,
}

impl DeviceSlot {
    /// What the driver reports about it.
    pub fn info(&self) -> &PhysicalDeviceInfo {
        self.device.info()
    }
}

/// Why a device selector string is invalid.
#[derive(Debug, thiserror::Error)]
#[error("invalid device selector {0:?}: expected \"auto\", an index, or a 32-hex-digit UUID")]
pub struct BadSelector(pub String);

/// Parses the `device` setting: `auto`, an index, or a UUID (dashes allowed).
pub fn parse_selector(s: &str) -> Result<DeviceSelector, BadSelector> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("auto") {
        return Ok(DeviceSelector::Default);
    }
    if let Ok(index) = s.parse::<u32>() {
        return Ok(DeviceSelector::Index(index));
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut uuid = [0u8; 16];
    match hex::decode_to_slice(&hex, &mut uuid) {
        Ok(()) => Ok(DeviceSelector::Uuid(uuid)),
        Err(_) => Err(BadSelector(s.to_owned())),
    }
}

/// Why the devices could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// The selector is malformed.
    #[error(transparent)]
    Selector(#[from] BadSelector),
    /// Vulkan failed.
    #[error("cannot open the GPU")]
    Vulkan(#[from] vulkan::Error),
}

/// Opens the Vulkan instance and the selected device with its executor.
pub fn open(selector: &str) -> Result<Vec<DeviceSlot>, DevicesError> {
    let selector = parse_selector(selector)?;
    let instance = Instance::new("gpushared")?;
    let device = Device::open(&instance, &selector)?;
    let info = device.info();
    tracing::info!(
        name = %info.name,
        driver = %info.driver_name,
        uuid = %hex::encode(info.device_uuid),
        "serving device 0"
    );
    let executor: Arc<dyn Executor> = Arc::new(VulkanExecutor::start(&device)?);
    Ok(vec![DeviceSlot {
        index: 0,
        device,
        executor,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse() {
        assert!(matches!(
            parse_selector("auto"),
            Ok(DeviceSelector::Default)
        ));
        assert!(matches!(parse_selector("2"), Ok(DeviceSelector::Index(2))));
        let u = parse_selector("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert!(matches!(u, DeviceSelector::Uuid(b) if b[0] == 0 && b[15] == 0xff));
        assert!(parse_selector("gpu0").is_err());
        assert!(parse_selector("00aa11").is_err());
    }
}
