//! CUDA devices: enumeration ([`devices`]) and [`CudaDevice`], one device's retained primary
//! context with one stream of its own.
//!
//! Not here: pairing with Vulkan devices (`matching.rs`), imports (`external_*.rs`).

use std::ffi::CStr;
use std::fmt;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaStream};

use super::error::{check, driver, uuid_string, Error, Result};
use super::loader;

/// What the driver reports about one CUDA device.
#[derive(Clone, Debug)]
pub struct CudaDeviceInfo {
    /// The device ordinal (as `CUDA_VISIBLE_DEVICES` numbers them for this process).
    pub ordinal: i32,
    /// The device name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// The device UUID (`cuDeviceGetUuid`); equal to Vulkan's `deviceUUID` for the same GPU.
    pub uuid: [u8; 16],
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Device memory in bytes.
    pub total_memory: u64,
}

/// Initializes the driver and lists its devices. An empty list where the driver is loaded but
/// sees no device (`CUDA_ERROR_NO_DEVICE`, `CUDA_VISIBLE_DEVICES=""`).
pub fn devices() -> Result<Vec<CudaDeviceInfo>> {
    match loader::init() {
        Err(Error::Call { code, .. }) if code == sys::CUresult::CUDA_ERROR_NO_DEVICE as i32 => {
            return Ok(Vec::new())
        }
        other => other?,
    }
    let mut count = 0;
    // SAFETY: the driver is initialized; `count` is a valid out-pointer.
    check("cuDeviceGetCount", unsafe {
        sys::cuDeviceGetCount(&mut count)
    })?;
    (0..count).map(query).collect()
}

/// The info of device `ordinal`. The driver must be initialized.
fn query(ordinal: i32) -> Result<CudaDeviceInfo> {
    let mut dev: sys::CUdevice = 0;
    // SAFETY: the driver is initialized (callers); `dev` is a valid out-pointer.
    check("cuDeviceGet", unsafe {
        sys::cuDeviceGet(&mut dev, ordinal)
    })?;
    let mut name = [0 as std::ffi::c_char; 256];
    // SAFETY: `dev` is a device handle from cuDeviceGet; the buffer holds `len` bytes and the
    // driver NUL-terminates within it.
    check("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, dev)
    })?;
    // SAFETY: the buffer is NUL-terminated (above) and lives through this statement.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mut uuid = sys::CUuuid { bytes: [0; 16] };
    // SAFETY: `dev` is valid; `uuid` is a valid out-pointer. (CUDA 13's cuDeviceGetUuid is the
    // `_v2` entry point.)
    check("cuDeviceGetUuid", unsafe {
        sys::cuDeviceGetUuid_v2(&mut uuid, dev)
    })?;
    let attribute = |attr: sys::CUdevice_attribute| -> Result<i32> {
        let mut v = 0;
        // SAFETY: `dev` is valid; `v` is a valid out-pointer.
        check("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(&mut v, attr, dev)
        })?;
        Ok(v)
    };
    let major = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let mut total = 0usize;
    // SAFETY: `dev` is valid; `total` is a valid out-pointer.
    check("cuDeviceTotalMem", unsafe {
        sys::cuDeviceTotalMem_v2(&mut total, dev)
    })?;
    Ok(CudaDeviceInfo {
        ordinal,
        name,
        uuid: uuid.bytes.map(|b| b as u8),
        compute_capability: (major, minor),
        total_memory: total as u64,
    })
}

/// One CUDA device: its primary context (retained while this lives, released in `Drop` by
/// cudarc) and a non-blocking stream owned by this object.
///
/// Children (imports, pinned buffers) hold an `Arc` of it, so the context outlives them.
pub struct CudaDevice {
    info: CudaDeviceInfo,
    // Declared before `context`: dropped first (it holds the context too).
    stream: Arc<CudaStream>,
    context: Arc<CudaContext>,
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", &self.info)
            .field("stream", &self.stream.cu_stream())
            .finish()
    }
}

impl CudaDevice {
    /// Opens device `ordinal`: retains its primary context and creates a stream.
    pub fn open(ordinal: i32) -> Result<Arc<CudaDevice>> {
        let all = devices()?;
        if all.is_empty() {
            return Err(Error::NoDevice);
        }
        let Some(info) = all.into_iter().find(|d| d.ordinal == ordinal) else {
            return Err(Error::InvalidValue {
                what: "CUDA device ordinal",
                value: ordinal as u64,
                reason: "no such device",
            });
        };
        Self::open_info(info)
    }

    /// Opens the device whose UUID is `uuid` (the client path: the UUID comes with the fd
    /// metadata). [`Error::NoMatch`] naming the UUID when no visible device has it.
    pub fn by_uuid(uuid: &[u8; 16]) -> Result<Arc<CudaDevice>> {
        let all = devices()?;
        if all.is_empty() {
            return Err(Error::NoDevice);
        }
        let visible = all
            .iter()
            .map(|d| format!("{} ({})", d.name, uuid_string(&d.uuid)))
            .collect::<Vec<_>>()
            .join(", ");
        match all.into_iter().find(|d| d.uuid == *uuid) {
            Some(info) => Self::open_info(info),
            None => Err(Error::NoMatch {
                uuid: *uuid,
                name: format!("the requested device (visible: {visible})"),
            }),
        }
    }

    fn open_info(info: CudaDeviceInfo) -> Result<Arc<CudaDevice>> {
        let ordinal = usize::try_from(info.ordinal).map_err(|_| Error::InvalidValue {
            what: "CUDA device ordinal",
            value: info.ordinal as u64,
            reason: "negative",
        })?;
        let context = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain"))?;
        let stream = context.new_stream().map_err(driver("cuStreamCreate"))?;
        Ok(Arc::new(CudaDevice {
            info,
            stream,
            context,
        }))
    }

    /// What the driver reports about the device.
    pub fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }

    /// The device's primary context (cudarc's safe API works on it).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// The device's own stream (non-blocking).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits until all work on the device has completed (`cuCtxSynchronize`: the seed's
    /// `deviceSynchronize`).
    pub fn synchronize(&self) -> Result<()> {
        bind(&self.context)?;
        // SAFETY: the context is current on this thread (above).
        check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
    }

    /// Waits until all work on the device's own stream has completed.
    pub fn synchronize_stream(&self) -> Result<()> {
        synchronize_stream(&self.stream)
    }

    /// A new stream of the device's primary context (`cuStreamCreate`, non-blocking with
    /// respect to the legacy default stream).
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        bind(&self.context)?;
        self.context.new_stream().map_err(driver("cuStreamCreate"))
    }

    /// A device attribute (`cuDeviceGetAttribute`).
    pub fn attribute(&self, attr: sys::CUdevice_attribute) -> Result<i32> {
        let mut v = 0;
        // SAFETY: `cu_device` is the context's valid device handle; `v` is a valid out-pointer.
        check("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(&mut v, attr, self.context.cu_device())
        })?;
        Ok(v)
    }

    /// Lets this device's context access `peer`'s memory (`cuDeviceCanAccessPeer`, then
    /// `cuCtxEnablePeerAccess`), so that [`copy_peer`](super::copy_peer) from or to `peer` runs
    /// GPU to GPU. `Ok(false)` when the hardware cannot (the copy then goes through the host);
    /// enabling twice is not an error.
    pub fn enable_peer_access(&self, peer: &CudaDevice) -> Result<bool> {
        let mut can = 0;
        // SAFETY: both device handles are valid (their contexts are retained); `can` is a valid
        // out-pointer.
        check("cuDeviceCanAccessPeer", unsafe {
            sys::cuDeviceCanAccessPeer(&mut can, self.context.cu_device(), peer.context.cu_device())
        })?;
        if can == 0 {
            return Ok(false);
        }
        self.bind()?;
        // SAFETY: this context is current; `peer`'s context is live (retained by `peer`); the
        // flags must be 0.
        let r = unsafe { sys::cuCtxEnablePeerAccess(peer.context.cu_ctx(), 0) };
        if r == sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED {
            return Ok(true);
        }
        check("cuCtxEnablePeerAccess", r)?;
        Ok(true)
    }

    /// Makes the device's context current on this thread.
    pub(crate) fn bind(&self) -> Result<()> {
        bind(&self.context)
    }

    /// [`Error::WrongContext`] unless `stream` belongs to this device's context.
    pub(crate) fn check_stream(&self, what: &'static str, stream: &CudaStream) -> Result<()> {
        if stream.context().cu_ctx() == self.context.cu_ctx() {
            Ok(())
        } else {
            Err(Error::WrongContext { what })
        }
    }
}

/// Makes `context` current on the calling thread (`cuCtxSetCurrent`, skipped when it already
/// is). Unlike cudarc's `bind_to_thread`, it does not report errors cudarc recorded earlier.
pub(crate) fn bind(context: &CudaContext) -> Result<()> {
    let mut current: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: the driver is initialized (a context exists); `current` is a valid out-pointer.
    check("cuCtxGetCurrent", unsafe {
        sys::cuCtxGetCurrent(&mut current)
    })?;
    if current != context.cu_ctx() {
        // SAFETY: `cu_ctx` is a live context, retained by `context` while it lives.
        check("cuCtxSetCurrent", unsafe {
            sys::cuCtxSetCurrent(context.cu_ctx())
        })?;
    }
    Ok(())
}

/// Waits until all work on `stream` has completed (`cuStreamSynchronize`).
pub fn synchronize_stream(stream: &CudaStream) -> Result<()> {
    bind(stream.context())?;
    // SAFETY: the stream is live (borrowed) and its context current.
    check("cuStreamSynchronize", unsafe {
        sys::cuStreamSynchronize(stream.cu_stream())
    })
}
