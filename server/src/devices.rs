//! The GPUs the daemon serves: the Vulkan instance, the selected device, its CUDA device
//! (paired by UUID, with Falcor's fallbacks unless `strict_device_match`), and its executor.

use std::sync::Arc;

use gpushare_interop::cuda::{self, CudaDevice, MatchMethod};
use gpushare_interop::vulkan::{self, Device, DeviceSelector, Instance, PhysicalDeviceInfo};

use crate::executor::{CudaExecutor, Executor, VulkanExecutor};

/// The CUDA device paired with a served Vulkan device.
#[derive(Debug)]
pub struct CudaSlot {
    /// The device (primary context and the executor's stream).
    pub device: Arc<CudaDevice>,
    /// How it was matched.
    pub method: MatchMethod,
}

/// One served device.
#[derive(Debug)]
pub struct DeviceSlot {
    /// The daemon's index for it (resources name it).
    pub index: u32,
    /// The Vulkan logical device.
    pub device: Arc<Device>,
    /// Its CUDA device, when the daemon uses CUDA for it.
    pub cuda: Option<CudaSlot>,
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
    /// `executor = "cuda"` and CUDA cannot serve the device.
    #[error("executor = \"cuda\" but CUDA cannot serve device {device:?}")]
    CudaRequired {
        /// The Vulkan device's name.
        device: String,
        /// Why.
        #[source]
        source: cuda::Error,
    },
    /// An executor thread could not start.
    #[error("cannot start the executor thread")]
    Thread(#[source] std::io::Error),
}

/// Pairs `info` with its CUDA device (Falcor's CudaDevice matching) and opens it.
fn open_cuda(info: &PhysicalDeviceInfo, strict: bool) -> Result<CudaSlot, cuda::Error> {
    if !cuda::is_present() {
        return Err(cuda::Error::NotPresent);
    }
    let all = cuda::devices()?;
    let (i, method) = cuda::match_device(&info.device_uuid, &info.name, &all, strict)?;
    let device = cuda::CudaDevice::open(all[i].ordinal)?;
    Ok(CudaSlot { device, method })
}

/// What [`open`] found: the served devices and the CUDA driver's version, if any.
#[derive(Debug)]
pub struct Opened {
    /// The served devices.
    pub slots: Vec<DeviceSlot>,
    /// `(major, minor)` of the CUDA driver, when the host has one.
    pub cuda_version: Option<(u32, u32)>,
}

/// Opens the Vulkan instance, the selected device, its CUDA match (per `executor`: "auto",
/// "cuda" or "vulkan") and its executor.
pub fn open(selector: &str, executor: &str, strict: bool) -> Result<Opened, DevicesError> {
    let selector = parse_selector(selector)?;
    let instance = Instance::new("gpushared")?;
    let device = Device::open(&instance, &selector)?;
    let info = device.info();
    let cuda_version = if cuda::is_present() {
        cuda::driver_version().ok()
    } else {
        None
    };
    let cuda = match executor {
        "vulkan" => None,
        _ => match open_cuda(info, strict) {
            Ok(slot) => Some(slot),
            Err(source) if executor == "cuda" => {
                return Err(DevicesError::CudaRequired {
                    device: info.name.clone(),
                    source,
                })
            }
            Err(cuda::Error::NotPresent) => {
                tracing::info!("no CUDA driver on this host: Vulkan executor");
                None
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), device = %info.name, "no CUDA device for this GPU: Vulkan executor");
                None
            }
        },
    };
    let executor: Arc<dyn Executor> = match &cuda {
        Some(slot) => {
            Arc::new(CudaExecutor::start(slot.device.clone()).map_err(DevicesError::Thread)?)
        }
        None => Arc::new(VulkanExecutor::start(&device)?),
    };
    tracing::info!(
        name = %info.name,
        driver = %info.driver_name,
        uuid = %hex::encode(info.device_uuid),
        cuda_ordinal = cuda.as_ref().map(|c| c.device.info().ordinal),
        cuda_match = ?cuda.as_ref().map(|c| c.method),
        executor = executor.name(),
        "serving device 0"
    );
    Ok(Opened {
        slots: vec![DeviceSlot {
            index: 0,
            device,
            cuda,
            executor,
        }],
        cuda_version,
    })
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
