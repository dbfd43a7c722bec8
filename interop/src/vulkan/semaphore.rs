//! Timeline semaphores: creation (optionally exportable as `OPAQUE_FD`), host signal, wait and
//! counter reads, export.
//!
//! Not here: importing one (`import.rs`), GPU-side waits and signals (`transfer.rs`).

use std::any::Any;
use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use ash::vk;

use super::caps::HandleType;
use super::device::Device;
use super::error::{Check, Error, Result};

/// A timeline semaphore: a 64-bit counter that only grows. Destroyed in `Drop`.
///
/// `Send + Sync`: host signal, wait and counter reads need no external synchronization.
pub struct TimelineSemaphore {
    inner: Arc<Inner>,
    exportable: bool,
}

/// The owned handle; shared with transfer submissions still in flight, so that dropping the
/// semaphore never destroys it under the GPU.
struct Inner {
    device: Arc<Device>,
    raw: vk::Semaphore,
}

impl fmt::Debug for TimelineSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimelineSemaphore")
            .field("raw", &self.inner.raw)
            .field("exportable", &self.exportable)
            .finish()
    }
}

impl Device {
    /// Creates a timeline semaphore starting at `initial`. With `exportable`, it can be exported
    /// as an `OPAQUE_FD`; that fails with [`Error::Unsupported`] unless the device's capabilities
    /// list it.
    pub fn create_timeline_semaphore(
        self: &Arc<Self>,
        initial: u64,
        exportable: bool,
    ) -> Result<TimelineSemaphore> {
        TimelineSemaphore::create(self, initial, exportable)
    }
}

impl TimelineSemaphore {
    pub(crate) fn create(device: &Arc<Device>, initial: u64, exportable: bool) -> Result<Self> {
        let caps = &device.info().caps;
        if exportable
            && (device.semaphore_fd().is_none()
                || !caps
                    .timeline_semaphore_export
                    .contains(&HandleType::OpaqueFd))
        {
            return Err(Error::Unsupported(format!(
                "OPAQUE_FD timeline semaphore export on {}",
                device.info().name
            )));
        }
        let mut type_info = vk::SemaphoreTypeCreateInfo::default()
            .semaphore_type(vk::SemaphoreType::TIMELINE)
            .initial_value(initial);
        let mut export = vk::ExportSemaphoreCreateInfo::default()
            .handle_types(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        let mut info = vk::SemaphoreCreateInfo::default().push_next(&mut type_info);
        if exportable {
            info = info.push_next(&mut export);
        }
        // SAFETY: the device has the timelineSemaphore feature enabled (checked at open); export
        // is chained only when supported for timeline semaphores; structures outlive the call.
        let raw =
            unsafe { device.raw().create_semaphore(&info, None) }.check("vkCreateSemaphore")?;
        Ok(TimelineSemaphore {
            inner: Arc::new(Inner {
                device: Arc::clone(device),
                raw,
            }),
            exportable,
        })
    }

    /// The current counter value.
    pub fn value(&self) -> Result<u64> {
        // SAFETY: `raw` is a live timeline semaphore of this device.
        unsafe {
            self.inner
                .device
                .raw()
                .get_semaphore_counter_value(self.inner.raw)
        }
        .check("vkGetSemaphoreCounterValue")
    }

    /// Signals `value` from the host. Refused with [`Error::InvalidValue`] unless `value` exceeds
    /// the current value by at most the device's `maxTimelineSemaphoreValueDifference`.
    ///
    /// The check and the signal are not atomic: a concurrent signal from elsewhere can still race
    /// past it; whoever owns the semaphore must serialize its signalers.
    pub fn signal(&self, value: u64) -> Result<()> {
        self.check_signal(value)?;
        let info = vk::SemaphoreSignalInfo::default()
            .semaphore(self.inner.raw)
            .value(value);
        // SAFETY: `raw` is a live timeline semaphore; `value` was checked to exceed the current
        // value within the allowed difference.
        unsafe { self.inner.device.raw().signal_semaphore(&info) }.check("vkSignalSemaphore")
    }

    /// Signals the highest value allowed now (the current value plus the device's
    /// `maxTimelineSemaphoreValueDifference`) and returns it: every wait for a value up to it,
    /// in any process, is released. The daemon's poison for abandoned semaphores.
    pub fn signal_max(&self) -> Result<u64> {
        let current = self.value()?;
        let max = self.inner.device.physical().max_timeline_difference;
        let value = current.saturating_add(max);
        if value == current {
            return Ok(current);
        }
        self.signal(value)?;
        Ok(value)
    }

    /// Waits on the host until the counter reaches `value`. `Ok(false)` on timeout.
    pub fn wait(&self, value: u64, timeout: Duration) -> Result<bool> {
        let semaphores = [self.inner.raw];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default()
            .semaphores(&semaphores)
            .values(&values);
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: `raw` is a live timeline semaphore of this device; the arrays have one entry
        // each and outlive the call.
        match unsafe { self.inner.device.raw().wait_semaphores(&info, ns) } {
            Ok(()) => Ok(true),
            Err(vk::Result::TIMEOUT) => Ok(false),
            Err(e) => Err(Error::call("vkWaitSemaphores", e)),
        }
    }

    /// Waits on the host until *any* of `points` (semaphore, value) is reached: one
    /// `vkWaitSemaphores` with `VK_SEMAPHORE_WAIT_ANY_BIT`. `Ok(false)` on timeout; `Ok(true)`
    /// at once for an empty list. Every semaphore must belong to one device
    /// ([`Error::WrongDevice`] otherwise).
    pub fn wait_any(points: &[(&TimelineSemaphore, u64)], timeout: Duration) -> Result<bool> {
        let Some((first, _)) = points.first() else {
            return Ok(true);
        };
        let device = &first.inner.device;
        if points
            .iter()
            .any(|(s, _)| !Arc::ptr_eq(&s.inner.device, device))
        {
            return Err(Error::WrongDevice {
                what: "a semaphore of a wait-any",
            });
        }
        let semaphores: Vec<vk::Semaphore> = points.iter().map(|(s, _)| s.inner.raw).collect();
        let values: Vec<u64> = points.iter().map(|&(_, v)| v).collect();
        let info = vk::SemaphoreWaitInfo::default()
            .flags(vk::SemaphoreWaitFlags::ANY)
            .semaphores(&semaphores)
            .values(&values);
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: every handle is a live timeline semaphore of `device` (checked above; the
        // borrows keep them alive through the call); both arrays have one entry per point and
        // outlive the call.
        match unsafe { device.raw().wait_semaphores(&info, ns) } {
            Ok(()) => Ok(true),
            Err(vk::Result::TIMEOUT) => Ok(false),
            Err(e) => Err(Error::call("vkWaitSemaphores", e)),
        }
    }

    /// Whether it was created exportable.
    pub fn exportable(&self) -> bool {
        self.exportable
    }

    /// Exports it as a new `OPAQUE_FD`. [`Error::Unsupported`] unless created exportable.
    pub fn export_fd(&self) -> Result<OwnedFd> {
        let loader = self
            .inner
            .device
            .semaphore_fd()
            .filter(|_| self.exportable)
            .ok_or_else(|| Error::Unsupported("export of a non-exportable semaphore".to_owned()))?;
        let info = vk::SemaphoreGetFdInfoKHR::default()
            .semaphore(self.inner.raw)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD);
        // SAFETY: the semaphore was created with OPAQUE_FD in its export handle types on this
        // device, whose VK_KHR_external_semaphore_fd is enabled.
        let fd = unsafe { loader.get_semaphore_fd(&info) }.check("vkGetSemaphoreFdKHR")?;
        if fd < 0 {
            return Err(Error::Call {
                call: "vkGetSemaphoreFdKHR",
                result: vk::Result::ERROR_INVALID_EXTERNAL_HANDLE,
            });
        }
        // SAFETY: on success the driver returns a new descriptor that the caller owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The Vulkan handle, valid while `self` lives.
    pub fn raw(&self) -> vk::Semaphore {
        self.inner.raw
    }

    /// The device it lives on.
    pub fn device(&self) -> &Arc<Device> {
        &self.inner.device
    }

    /// Checks that signaling `value` is valid now (see [`TimelineSemaphore::signal`]).
    pub(crate) fn check_signal(&self, value: u64) -> Result<()> {
        let current = self.value()?;
        let max = self.inner.device.physical().max_timeline_difference;
        if value <= current || value - current > max {
            return Err(Error::InvalidValue {
                current,
                requested: value,
            });
        }
        Ok(())
    }

    /// Checks that a GPU wait for `value` is valid now: not further ahead of the current value
    /// than `maxTimelineSemaphoreValueDifference`.
    pub(crate) fn check_wait(&self, value: u64) -> Result<()> {
        let current = self.value()?;
        let max = self.inner.device.physical().max_timeline_difference;
        if value > current && value - current > max {
            return Err(Error::InvalidValue {
                current,
                requested: value,
            });
        }
        Ok(())
    }
}

impl TimelineSemaphore {
    /// Keeps the handle alive (for a submission that may outlive `self`).
    pub(crate) fn retain(&self) -> Arc<dyn Any + Send + Sync> {
        self.inner.clone()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: the semaphore belongs to this device and is destroyed once, when the last
        // holder goes: submissions in flight hold it too.
        unsafe { self.device.raw().destroy_semaphore(self.raw, None) };
    }
}
