//! The GPUs the daemon serves: the Vulkan instance, the selected devices (every GPU by
//! default), each one's CUDA device (paired by UUID, with Falcor's fallbacks unless
//! `strict_device_match`, each CUDA device at most once), and each one's executor.

use std::sync::{Arc, Mutex};

use gpushare_interop::cuda::{self, CudaDevice, MatchMethod, VulkanCandidate};
use gpushare_interop::image::{ImageDesc, ImageFormat, ImageKind};
use gpushare_interop::vulkan::{
    self, vk, Device, DeviceImage, DeviceSelector, DeviceType, Instance, PhysicalDeviceInfo,
    Transfer,
};

use crate::error::{Error, Result as DaemonResult};
use crate::executor::{CudaExecutor, Executor, VulkanExecutor};
use crate::ids;
use crate::selection::{parse_selection, BadSelector, Selection};
use crate::semaphore::{Observer, Semaphore, SEMAPHORE_PREFIX};
use crate::word::{FastPath, Mirror, Word};

/// The CUDA device paired with a served Vulkan device.
#[derive(Debug)]
pub(crate) struct CudaSlot {
    /// The device (primary context and the executor's stream).
    pub(crate) device: Arc<CudaDevice>,
    /// How it was matched.
    pub(crate) method: MatchMethod,
}

/// One served device.
#[derive(Debug)]
pub(crate) struct DeviceSlot {
    /// The daemon's index for it (resources name it).
    pub(crate) index: u32,
    /// The Vulkan logical device.
    pub(crate) device: Arc<Device>,
    /// Its CUDA device, when the daemon uses CUDA for it.
    pub(crate) cuda: Option<CudaSlot>,
    /// Runs Write/Read/Fill/Copy on it.
    pub(crate) executor: Arc<dyn Executor>,
    /// The image formats it creates and exports as 2D images with the default usage.
    pub(crate) image_formats: Vec<ImageFormat>,
    /// Whether it offers the CUDA fast path (memop words), and its word writer.
    pub(crate) fast_path: FastPath,
    /// The transfer engine that prepares new images (their first layout transition and
    /// zeroing: Vulkan work, whichever the executor), made on first use.
    prepare: Mutex<Option<Transfer>>,
}

/// The usage of images created without one: sampled and storage (CUDA surfaces need storage).
pub(crate) const DEFAULT_IMAGE_USAGE: vk::ImageUsageFlags = vk::ImageUsageFlags::from_raw(
    vk::ImageUsageFlags::SAMPLED.as_raw() | vk::ImageUsageFlags::STORAGE.as_raw(),
);

/// The usage an image of `format` gets when its request names none: [`DEFAULT_IMAGE_USAGE`],
/// but sampled alone for sRGB formats, which no driver offers as storage images (writes through
/// a storage image would skip the sRGB encoding).
pub(crate) fn default_image_usage(format: ImageFormat) -> vk::ImageUsageFlags {
    if format.info().srgb {
        vk::ImageUsageFlags::SAMPLED
    } else {
        DEFAULT_IMAGE_USAGE
    }
}

impl DeviceSlot {
    /// What the driver reports about it.
    /// Whether other processes can import its timeline semaphores.
    pub(crate) fn exports_semaphores(&self) -> bool {
        self.info()
            .caps
            .timeline_semaphore_export
            .contains(&vulkan::HandleType::OpaqueFd)
    }

    /// A new semaphore on the device at `initial` (exportable where the device can), with a
    /// memop word when `word` is asked and the device offers the fast path (otherwise without:
    /// the semaphore's details say why). `what` names it in errors.
    pub(crate) fn new_semaphore(
        &self,
        initial: u64,
        word: bool,
        observer: Arc<dyn Observer>,
        what: &'static str,
    ) -> DaemonResult<Semaphore> {
        let timeline = self
            .device
            .create_timeline_semaphore(initial, self.exports_semaphores())
            .map_err(Error::gpu(what))?;
        let word = match (word, &self.fast_path) {
            (false, _) => Mirror::None,
            (true, _) if !timeline.exportable() => Mirror::Unavailable(
                "the device cannot export timeline semaphores, so no other process signals \
                 or waits on the GPU"
                    .into(),
            ),
            (true, FastPath::Unavailable(why)) => Mirror::Unavailable(why.clone()),
            (true, FastPath::Offered(writer)) => Mirror::Word(
                Word::new(&self.device, writer, initial).map_err(|e| Error::Word {
                    what,
                    detail: crate::error::chain(&e),
                })?,
            ),
        };
        Ok(Semaphore::with_word(
            ids::new_id(SEMAPHORE_PREFIX),
            timeline,
            word,
            observer,
        ))
    }

    pub(crate) fn info(&self) -> &PhysicalDeviceInfo {
        self.device.info()
    }

    /// Moves a new image to its resting layout and zeroes it (blocking; one short submission).
    pub(crate) fn prepare_image(&self, image: &dyn DeviceImage) -> Result<(), vulkan::Error> {
        let mut engine = self.prepare.lock().unwrap_or_else(|p| p.into_inner());
        let engine = match &mut *engine {
            Some(t) => t,
            slot @ None => slot.insert(Transfer::new(&self.device)?),
        };
        engine.prepare_image(image)
    }
}

/// The formats `device` creates and exports as 2D images with their default usage
/// ([`default_image_usage`]).
fn image_formats(device: &Device) -> Vec<ImageFormat> {
    ImageFormat::all()
        .filter(|&format| {
            let desc = ImageDesc {
                format,
                kind: ImageKind::D2,
                width: 1,
                height: 1,
                depth: 1,
                mip_levels: 1,
                array_layers: 1,
            };
            device
                .image_support(
                    &desc,
                    default_image_usage(format) | vulkan::IMAGE_BASE_USAGE,
                )
                .is_ok_and(|s| s.exportable)
        })
        .collect()
}

/// The physical devices `selection` names, as positions into `infos`, in serving order.
/// Refuses a device named twice, and names that match nothing.
pub(crate) fn resolve(
    selection: &Selection,
    infos: &[PhysicalDeviceInfo],
) -> Result<Vec<usize>, DevicesError> {
    let usable = |d: &PhysicalDeviceInfo| d.caps.timeline_semaphore;
    let picked: Vec<usize> = match selection {
        Selection::Auto => {
            let gpus: Vec<usize> = (0..infos.len())
                .filter(|&i| usable(&infos[i]) && infos[i].device_type != DeviceType::Cpu)
                .collect();
            if gpus.is_empty() {
                let refs: Vec<&PhysicalDeviceInfo> = infos.iter().collect();
                DeviceSelector::Default.pick(&refs).into_iter().collect()
            } else {
                gpus
            }
        }
        Selection::All => (0..infos.len()).filter(|&i| usable(&infos[i])).collect(),
        Selection::List(list) => {
            let refs: Vec<&PhysicalDeviceInfo> = infos.iter().collect();
            let mut out = Vec::new();
            for sel in list {
                let i = sel
                    .pick(&refs)
                    .ok_or_else(|| vulkan::Error::DeviceNotFound(sel.to_string()))?;
                if out.contains(&i) {
                    return Err(DevicesError::Duplicate(sel.to_string()));
                }
                out.push(i);
            }
            out
        }
    };
    if picked.is_empty() {
        return Err(vulkan::Error::NoDevice.into());
    }
    Ok(picked)
}

/// Why the devices could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DevicesError {
    /// The selector is malformed.
    #[error(transparent)]
    Selector(#[from] BadSelector),
    /// The same device was named twice.
    #[error("device {0} is named twice in the device setting")]
    Duplicate(String),
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

/// Pairs every device of `infos` with its CUDA device (Falcor's CudaDevice matching, jointly:
/// each CUDA device at most once) and opens the matches.
fn open_cuda(
    infos: &[&PhysicalDeviceInfo],
    strict: bool,
) -> Result<Vec<Result<CudaSlot, cuda::Error>>, cuda::Error> {
    if !cuda::is_present() {
        return Err(cuda::Error::NotPresent);
    }
    let all = cuda::devices()?;
    let candidates: Vec<VulkanCandidate> = infos
        .iter()
        .map(|i| VulkanCandidate {
            uuid: i.device_uuid,
            name: i.name.clone(),
            cpu: i.device_type == DeviceType::Cpu,
        })
        .collect();
    Ok(cuda::match_devices(&candidates, &all, strict)
        .into_iter()
        .map(|m| {
            let (i, method) = m?;
            Ok(CudaSlot {
                device: cuda::CudaDevice::open(all[i].ordinal)?,
                method,
            })
        })
        .collect())
}

/// What [`open`] found: the served devices and the CUDA driver's version, if any.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The served devices.
    pub(crate) slots: Vec<DeviceSlot>,
    /// `(major, minor)` of the CUDA driver, when the host has one.
    pub(crate) cuda_version: Option<(u32, u32)>,
}

/// Opens the Vulkan instance, the devices the `device` setting selects, their CUDA matches
/// (per `executor`: "auto", "cuda" or "vulkan") and an executor for each.
pub(crate) fn open(
    selector: &str,
    executor: &str,
    strict: bool,
    fast_path: bool,
) -> Result<Opened, DevicesError> {
    let selection = parse_selection(selector)?;
    let instance = Instance::new("gpushared")?;
    let infos = instance.devices()?;
    if infos.is_empty() {
        return Err(vulkan::Error::NoDevice.into());
    }
    let picked = resolve(&selection, &infos)?;
    let mut devices = Vec::new();
    for &i in &picked {
        devices.push(Device::open(
            &instance,
            &DeviceSelector::Index(infos[i].index),
        )?);
    }
    let cuda_version = if cuda::is_present() {
        cuda::driver_version().ok()
    } else {
        None
    };
    let mut cudas: Vec<Option<CudaSlot>> = Vec::new();
    if executor != "vulkan" {
        let dev_infos: Vec<&PhysicalDeviceInfo> = devices.iter().map(|d| d.info()).collect();
        match open_cuda(&dev_infos, strict) {
            Ok(list) => {
                for (r, info) in list.into_iter().zip(&dev_infos) {
                    cudas.push(match r {
                        Ok(slot) => Some(slot),
                        Err(source) if executor == "cuda" => {
                            return Err(DevicesError::CudaRequired {
                                device: info.name.clone(),
                                source,
                            })
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::error::chain(&e), device = %info.name, "no CUDA device for this GPU: Vulkan executor");
                            None
                        }
                    });
                }
            }
            Err(source) if executor == "cuda" => {
                return Err(DevicesError::CudaRequired {
                    device: dev_infos[0].name.clone(),
                    source,
                })
            }
            Err(cuda::Error::NotPresent) => {
                tracing::info!("no CUDA driver on this host: Vulkan executor");
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "CUDA devices unavailable: Vulkan executor");
            }
        }
    }
    cudas.resize_with(devices.len(), || None);
    enable_peer_access(&cudas);
    let mut slots = Vec::new();
    for ((index, device), cuda) in (0u32..).zip(devices).zip(cudas) {
        let executor: Arc<dyn Executor> = match &cuda {
            Some(slot) => Arc::new(
                CudaExecutor::start(slot.device.clone(), device.clone())
                    .map_err(DevicesError::Thread)?,
            ),
            None => Arc::new(VulkanExecutor::start(&device)?),
        };
        let info = device.info();
        let fast = FastPath::of(cuda.as_ref().map(|c| &c.device), fast_path);
        tracing::info!(
            index,
            fast_path = fast.unavailable().unwrap_or("offered"),
            name = %info.name,
            driver = %info.driver_name,
            uuid = %hex::encode(info.device_uuid),
            cuda_ordinal = cuda.as_ref().map(|c| c.device.info().ordinal),
            cuda_match = ?cuda.as_ref().map(|c| c.method),
            executor = executor.name(),
            "serving device {index}"
        );
        slots.push(DeviceSlot {
            index,
            image_formats: image_formats(&device),
            fast_path: fast,
            device,
            cuda,
            executor,
            prepare: Mutex::new(None),
        });
    }
    Ok(Opened {
        slots,
        cuda_version,
    })
}

/// Lets every pair of served CUDA devices that can reach each other's memory do so
/// (`cuCtxEnablePeerAccess`), so that cross-device copies run GPU to GPU; the others copy
/// through the host (the driver stages `cuMemcpyPeer` itself).
fn enable_peer_access(cudas: &[Option<CudaSlot>]) {
    let devices: Vec<&Arc<CudaDevice>> = cudas.iter().flatten().map(|c| &c.device).collect();
    for a in &devices {
        for b in &devices {
            if Arc::ptr_eq(a, b) {
                continue;
            }
            match a.enable_peer_access(b) {
                Ok(true) => tracing::info!(
                    from = a.info().ordinal,
                    to = b.info().ordinal,
                    "CUDA peer access enabled"
                ),
                Ok(false) => tracing::info!(
                    from = a.info().ordinal,
                    to = b.info().ordinal,
                    "no CUDA peer access: cross-device copies are staged"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, from = a.info().ordinal, to = b.info().ordinal, "enabling CUDA peer access failed: cross-device copies are staged")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpushare_interop::vulkan::{Capabilities, MemoryHeap};

    #[test]
    fn srgb_images_default_to_sampled_only() {
        assert_eq!(
            default_image_usage(ImageFormat::Rgba8Unorm),
            DEFAULT_IMAGE_USAGE
        );
        assert_eq!(
            default_image_usage(ImageFormat::Rgba8Srgb),
            vk::ImageUsageFlags::SAMPLED
        );
    }

    #[test]
    fn selections_parse() {
        assert_eq!(parse_selection("auto").unwrap(), Selection::Auto);
        assert_eq!(parse_selection(" ALL ").unwrap(), Selection::All);
        assert_eq!(
            parse_selection("2").unwrap(),
            Selection::List(vec![DeviceSelector::Index(2)])
        );
        match parse_selection("1, 00112233-4455-6677-8899-aabbccddeeff").unwrap() {
            Selection::List(l) => {
                assert_eq!(l[0], DeviceSelector::Index(1));
                assert!(matches!(l[1], DeviceSelector::Uuid(b) if b[0] == 0 && b[15] == 0xff));
            }
            other => panic!("{other:?}"),
        }
        for bad in ["gpu0", "00aa11", "", "1,,2", "auto,1"] {
            assert!(parse_selection(bad).is_err(), "{bad:?}");
        }
    }

    fn info(index: u32, uuid: u8, device_type: DeviceType) -> PhysicalDeviceInfo {
        PhysicalDeviceInfo {
            index,
            name: format!("device {index}"),
            vendor_id: 0x10de,
            device_id: 0,
            device_type,
            driver_name: "test".into(),
            driver_info: String::new(),
            api_version: (1, 3, 0),
            device_uuid: [uuid; 16],
            driver_uuid: [1; 16],
            heaps: vec![MemoryHeap {
                size: 1 << 30,
                device_local: true,
            }],
            caps: Capabilities {
                timeline_semaphore: true,
                ..Default::default()
            },
        }
    }

    #[test]
    fn auto_serves_every_gpu_and_falls_back_to_the_cpu_device() {
        let host = vec![
            info(0, 1, DeviceType::DiscreteGpu),
            info(1, 2, DeviceType::Cpu),
            info(2, 3, DeviceType::DiscreteGpu),
        ];
        assert_eq!(resolve(&Selection::Auto, &host).unwrap(), vec![0, 2]);
        assert_eq!(resolve(&Selection::All, &host).unwrap(), vec![0, 1, 2]);
        let cpu_only = vec![info(0, 9, DeviceType::Cpu)];
        assert_eq!(resolve(&Selection::Auto, &cpu_only).unwrap(), vec![0]);
        let mut no_timeline = host.clone();
        no_timeline[0].caps.timeline_semaphore = false;
        assert_eq!(resolve(&Selection::Auto, &no_timeline).unwrap(), vec![2]);
        assert!(matches!(
            resolve(&Selection::Auto, &[]),
            Err(DevicesError::Vulkan(vulkan::Error::NoDevice))
        ));
    }

    #[test]
    fn lists_keep_their_order_and_refuse_duplicates_and_unknowns() {
        let host = vec![
            info(0, 1, DeviceType::DiscreteGpu),
            info(1, 2, DeviceType::DiscreteGpu),
        ];
        let list = |v: Vec<DeviceSelector>| Selection::List(v);
        assert_eq!(
            resolve(
                &list(vec![
                    DeviceSelector::Uuid([2; 16]),
                    DeviceSelector::Index(0)
                ]),
                &host
            )
            .unwrap(),
            vec![1, 0]
        );
        assert!(matches!(
            resolve(
                &list(vec![
                    DeviceSelector::Index(1),
                    DeviceSelector::Uuid([2; 16])
                ]),
                &host
            ),
            Err(DevicesError::Duplicate(_))
        ));
        assert!(matches!(
            resolve(&list(vec![DeviceSelector::Index(5)]), &host),
            Err(DevicesError::Vulkan(vulkan::Error::DeviceNotFound(_)))
        ));
    }
}
