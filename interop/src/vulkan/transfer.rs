//! The transfer engine: copy, fill, upload and download on a device's queue, each one a single
//! submission that waits on and signals timeline points, completed before the call returns.
//!
//! One engine per thread: every operation takes `&mut self` (the engine owns its command pool,
//! which Vulkan requires to be externally synchronized). Engines on different threads share the
//! device's queue safely (the device locks it per submission).
//!
//! On timeout (or a failed wait) the submission may still run: its command buffer, fence, the
//! staging buffer and every buffer and semaphore it uses stay alive in a pending list, reclaimed
//! by later operations or in `Drop`.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ash::vk;

use super::buffer::DeviceBuffer;
use super::device::Device;
use super::error::{Check, Error, Result};
use super::range::{check_aligned, check_range, overlaps};
use super::semaphore::TimelineSemaphore;
use super::staging::Staging;

/// How long `Drop` waits for submissions still in flight before leaking them.
const DROP_WAIT: Duration = Duration::from_secs(5);

/// Timeline points a GPU operation waits for before it runs and signals when it is done, and how
/// long the host waits for it.
#[derive(Debug, Default)]
pub struct SyncPoints<'a> {
    /// The operation starts once each semaphore reaches its value.
    pub wait: Vec<(&'a TimelineSemaphore, u64)>,
    /// Each semaphore is set to its value when the operation completes.
    pub signal: Vec<(&'a TimelineSemaphore, u64)>,
    /// How long the host waits for completion; `None` waits without limit.
    pub timeout: Option<Duration>,
}

/// A submission that may still be running.
struct Pending {
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    keep: Vec<Arc<dyn Any + Send + Sync>>,
}

/// Runs transfer operations on a device's queue (see the module docs).
pub struct Transfer {
    device: Arc<Device>,
    pool: vk::CommandPool,
    staging: Option<Staging>,
    pending: Vec<Pending>,
}

impl fmt::Debug for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transfer")
            .field("pool", &self.pool)
            .field("staging", &self.staging.as_ref().map(Staging::capacity))
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// Which of the engine's staging buffer an operation uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum StagingUse {
    None,
    Used,
}

impl Transfer {
    /// A transfer engine on `device`'s queue.
    pub fn new(device: &Arc<Device>) -> Result<Transfer> {
        let info = vk::CommandPoolCreateInfo::default()
            .flags(vk::CommandPoolCreateFlags::TRANSIENT)
            .queue_family_index(device.queue_family_index());
        // SAFETY: the queue family is the device's own queue's; the info outlives the call.
        let pool = unsafe { device.raw().create_command_pool(&info, None) }
            .check("vkCreateCommandPool")?;
        Ok(Transfer {
            device: Arc::clone(device),
            pool,
            staging: None,
            pending: Vec::new(),
        })
    }

    /// Copies `len` bytes from `src` at `src_offset` to `dst` at `dst_offset`. Ranges in the same
    /// buffer must not overlap.
    pub fn copy(
        &mut self,
        src: &dyn DeviceBuffer,
        src_offset: u64,
        dst: &dyn DeviceBuffer,
        dst_offset: u64,
        len: u64,
        sync: &SyncPoints<'_>,
    ) -> Result<()> {
        self.check_buffer("copy source", src, vk::BufferUsageFlags::TRANSFER_SRC)?;
        self.check_buffer("copy destination", dst, vk::BufferUsageFlags::TRANSFER_DST)?;
        check_range("copy source", src_offset, len, src.size())?;
        check_range("copy destination", dst_offset, len, dst.size())?;
        if src.raw() == dst.raw() && overlaps(src_offset, dst_offset, len) {
            return Err(Error::Overlap);
        }
        let region = vk::BufferCopy {
            src_offset,
            dst_offset,
            size: len,
        };
        let (s, d) = (src.raw(), dst.raw());
        self.run(
            sync,
            vec![src.retain(), dst.retain()],
            StagingUse::None,
            |dev, cmd| {
                // SAFETY: `cmd` is recording; both buffers are live, have the transfer usages, and
                // the region lies within both (checked above) without overlapping.
                unsafe { dev.cmd_copy_buffer(cmd, s, d, &[region]) }
            },
        )
    }

    /// Fills `len` bytes of `dst` from `offset` with the 32-bit `value` repeated. `offset` and
    /// `len` must be multiples of 4.
    pub fn fill(
        &mut self,
        dst: &dyn DeviceBuffer,
        offset: u64,
        len: u64,
        value: u32,
        sync: &SyncPoints<'_>,
    ) -> Result<()> {
        self.check_buffer("fill destination", dst, vk::BufferUsageFlags::TRANSFER_DST)?;
        check_range("fill destination", offset, len, dst.size())?;
        check_aligned("fill offset", offset, 4)?;
        check_aligned("fill length", len, 4)?;
        let d = dst.raw();
        self.run(sync, vec![dst.retain()], StagingUse::None, |dev, cmd| {
            // SAFETY: `cmd` is recording; the buffer is live with TRANSFER_DST usage; the range
            // lies within it, offset and size are multiples of 4 (checked above).
            unsafe { dev.cmd_fill_buffer(cmd, d, offset, len, value) }
        })
    }

    /// Writes `data` into `dst` at `offset`, through the staging buffer.
    pub fn upload(
        &mut self,
        dst: &dyn DeviceBuffer,
        offset: u64,
        data: &[u8],
        sync: &SyncPoints<'_>,
    ) -> Result<()> {
        let len = data.len() as u64;
        self.check_buffer(
            "upload destination",
            dst,
            vk::BufferUsageFlags::TRANSFER_DST,
        )?;
        check_range("upload destination", offset, len, dst.size())?;
        let staging = self.staging(len)?;
        staging.write(data);
        let s = staging.buffer();
        let d = dst.raw();
        let region = vk::BufferCopy {
            src_offset: 0,
            dst_offset: offset,
            size: len,
        };
        self.run(sync, vec![dst.retain()], StagingUse::Used, |dev, cmd| {
            // SAFETY: `cmd` is recording; the staging buffer holds `len` bytes written by the
            // host before submission (made visible by the submission itself); `dst` is live with
            // TRANSFER_DST usage and the range lies within it.
            unsafe { dev.cmd_copy_buffer(cmd, s, d, &[region]) }
        })
    }

    /// Reads `len` bytes of `src` from `offset`, through the staging buffer.
    pub fn download(
        &mut self,
        src: &dyn DeviceBuffer,
        offset: u64,
        len: u64,
        sync: &SyncPoints<'_>,
    ) -> Result<Vec<u8>> {
        self.check_buffer("download source", src, vk::BufferUsageFlags::TRANSFER_SRC)?;
        check_range("download source", offset, len, src.size())?;
        let s = src.raw();
        let staging = self.staging(len)?.buffer();
        let region = vk::BufferCopy {
            src_offset: offset,
            dst_offset: 0,
            size: len,
        };
        self.run(sync, vec![src.retain()], StagingUse::Used, |dev, cmd| {
            let barrier = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ);
            // SAFETY: `cmd` is recording; `src` is live with TRANSFER_SRC usage, the range lies
            // within it and the staging buffer is at least `len` bytes; the barrier makes the
            // copy visible to host reads after the fence.
            unsafe {
                dev.cmd_copy_buffer(cmd, s, staging, &[region]);
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &[barrier],
                    &[],
                    &[],
                );
            }
        })?;
        Ok(self
            .staging
            .as_ref()
            .map(|s| s.read(len))
            .unwrap_or_default())
    }

    /// The first `len` bytes of the staging buffer (after an operation that filled them).
    pub(super) fn staged(&self, len: u64) -> Vec<u8> {
        self.staging
            .as_ref()
            .map(|s| s.read(len))
            .unwrap_or_default()
    }

    /// This engine's device.
    pub(super) fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The staging buffer, grown to at least `len` bytes.
    pub(super) fn staging(&mut self, len: u64) -> Result<&mut Staging> {
        if self.staging.as_ref().is_some_and(|s| s.capacity() < len) {
            self.staging = None;
        }
        match &mut self.staging {
            Some(s) => Ok(s),
            slot @ None => Ok(slot.insert(Staging::new(&self.device, len)?)),
        }
    }

    /// A buffer argument must live on this engine's device and have `usage`.
    fn check_buffer(
        &self,
        what: &'static str,
        buffer: &dyn DeviceBuffer,
        usage: vk::BufferUsageFlags,
    ) -> Result<()> {
        if !Arc::ptr_eq(buffer.device(), &self.device) {
            return Err(Error::WrongDevice { what });
        }
        if !buffer.usage().contains(usage) {
            return Err(Error::MissingUsage {
                usage: buffer.usage().as_raw(),
                needed: usage.as_raw(),
            });
        }
        Ok(())
    }

    /// Every wait and signal point must be valid now (see the module docs of `semaphore.rs`).
    fn check_sync(&self, sync: &SyncPoints<'_>) -> Result<()> {
        for (what, points) in [
            ("wait semaphore", &sync.wait),
            ("signal semaphore", &sync.signal),
        ] {
            if points
                .iter()
                .any(|(s, _)| !Arc::ptr_eq(s.device(), &self.device))
            {
                return Err(Error::WrongDevice { what });
            }
        }
        for &(semaphore, value) in &sync.wait {
            semaphore.check_wait(value)?;
        }
        for (i, &(semaphore, value)) in sync.signal.iter().enumerate() {
            semaphore.check_signal(value)?;
            // A signal must exceed any value the same submission waits for or signals before.
            let earlier = sync.wait.iter().chain(&sync.signal[..i]);
            if let Some(&(_, other)) = earlier
                .filter(|(s, _)| s.raw() == semaphore.raw())
                .find(|(_, v)| *v >= value)
            {
                return Err(Error::InvalidValue {
                    current: other,
                    requested: value,
                });
            }
            if sync.signal[..i]
                .iter()
                .any(|(s, _)| s.raw() == semaphore.raw())
            {
                return Err(Error::InvalidValue {
                    current: value,
                    requested: value,
                });
            }
        }
        Ok(())
    }

    /// Records one command buffer with `record`, submits it with `sync`'s points and waits for it.
    pub(super) fn run(
        &mut self,
        sync: &SyncPoints<'_>,
        mut keep: Vec<Arc<dyn Any + Send + Sync>>,
        staging: StagingUse,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        self.check_sync(sync)?;
        self.reclaim();
        let dev = self.device.raw();
        let alloc_info = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool belongs to this device and is used only through `&mut self`.
        let cmd = unsafe { dev.allocate_command_buffers(&alloc_info) }
            .check("vkAllocateCommandBuffers")?
            .first()
            .copied()
            .ok_or(Error::Call {
                call: "vkAllocateCommandBuffers",
                result: vk::Result::ERROR_UNKNOWN,
            })?;
        let free = |fence: vk::Fence| {
            // SAFETY: the command buffer and fence are not in use by the GPU (never submitted,
            // or the fence signaled); the pool is used only through `&mut self`.
            unsafe {
                dev.free_command_buffers(self.pool, &[cmd]);
                if fence != vk::Fence::null() {
                    dev.destroy_fence(fence, None);
                }
            }
        };
        let begin = vk::CommandBufferBeginInfo::default()
            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: `cmd` is freshly allocated (initial state).
        if let Err(e) = unsafe { dev.begin_command_buffer(cmd, &begin) } {
            free(vk::Fence::null());
            return Err(Error::call("vkBeginCommandBuffer", e));
        }
        record(dev, cmd);
        // SAFETY: `cmd` is in the recording state.
        if let Err(e) = unsafe { dev.end_command_buffer(cmd) } {
            free(vk::Fence::null());
            return Err(Error::call("vkEndCommandBuffer", e));
        }
        // SAFETY: plain fence creation on a live device.
        let fence = match unsafe { dev.create_fence(&vk::FenceCreateInfo::default(), None) } {
            Ok(f) => f,
            Err(e) => {
                free(vk::Fence::null());
                return Err(Error::call("vkCreateFence", e));
            }
        };

        let wait_semaphores: Vec<_> = sync.wait.iter().map(|(s, _)| s.raw()).collect();
        let wait_values: Vec<_> = sync.wait.iter().map(|&(_, v)| v).collect();
        let wait_stages = vec![vk::PipelineStageFlags::TRANSFER; sync.wait.len()];
        let signal_semaphores: Vec<_> = sync.signal.iter().map(|(s, _)| s.raw()).collect();
        let signal_values: Vec<_> = sync.signal.iter().map(|&(_, v)| v).collect();
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default()
            .wait_semaphore_values(&wait_values)
            .signal_semaphore_values(&signal_values);
        let cmds = [cmd];
        let mut submit = vk::SubmitInfo::default().command_buffers(&cmds);
        // Empty lists stay null pointers (ash would pass a dangling non-null one).
        if !wait_semaphores.is_empty() {
            submit = submit
                .wait_semaphores(&wait_semaphores)
                .wait_dst_stage_mask(&wait_stages);
        }
        if !signal_semaphores.is_empty() {
            submit = submit.signal_semaphores(&signal_semaphores);
        }
        if !wait_semaphores.is_empty() || !signal_semaphores.is_empty() {
            submit = submit.push_next(&mut timeline);
        }
        // SAFETY: `cmd` is executable, from a pool of the queue's family; the semaphores are
        // live timeline semaphores of this device with values checked just before; `fence` is
        // new and unsignaled. Everything outlives the call.
        if let Err(e) = unsafe { self.device.submit(&[submit], fence) } {
            // A failed submission leaves its resources untouched: free them now.
            free(fence);
            return Err(e);
        }

        let timeout = sync.timeout.map_or(u64::MAX, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
        });
        // SAFETY: `fence` is a live fence of this device.
        match unsafe { dev.wait_for_fences(&[fence], true, timeout) } {
            Ok(()) => {
                free(fence);
                wait_signaled(dev, &signal_semaphores, &signal_values, timeout)
            }
            Err(result) => {
                // The GPU may still run it: keep everything it touches alive.
                keep.extend(
                    sync.wait
                        .iter()
                        .chain(&sync.signal)
                        .map(|(s, _)| s.retain()),
                );
                if staging == StagingUse::Used {
                    keep.extend(self.staging.take().map(|s| s.retain()));
                }
                self.pending.push(Pending { cmd, fence, keep });
                if result == vk::Result::TIMEOUT {
                    Err(Error::Timeout)
                } else {
                    Err(Error::call("vkWaitForFences", result))
                }
            }
        }
    }

    /// Frees pending submissions that have completed.
    fn reclaim(&mut self) {
        let dev = self.device.raw();
        let pool = self.pool;
        self.pending.retain(|p| {
            // SAFETY: `p.fence` is a live fence of this device.
            let done = unsafe { dev.get_fence_status(p.fence) }.unwrap_or(false);
            if done {
                // SAFETY: the fence signaled: the GPU no longer uses the command buffer; the pool
                // is used only through `&mut self`.
                unsafe {
                    dev.free_command_buffers(pool, &[p.cmd]);
                    dev.destroy_fence(p.fence, None);
                }
            }
            !done
        });
    }

    /// Submissions still in flight (after reclaiming the completed ones).
    pub fn pending(&mut self) -> usize {
        self.reclaim();
        self.pending.len()
    }
}

/// Waits until the signal points are visible on the host. The fence signaling does not order the
/// batch's semaphore signal operations before it (some drivers and layers update the counter
/// later), and callers rely on the points having been reached once an operation returns.
fn wait_signaled(
    dev: &ash::Device,
    semaphores: &[vk::Semaphore],
    values: &[u64],
    timeout: u64,
) -> Result<()> {
    if semaphores.is_empty() {
        return Ok(());
    }
    let info = vk::SemaphoreWaitInfo::default()
        .semaphores(semaphores)
        .values(values);
    // SAFETY: live timeline semaphores of this device, one value each; the arrays outlive the
    // call.
    match unsafe { dev.wait_semaphores(&info, timeout) } {
        Ok(()) => Ok(()),
        Err(vk::Result::TIMEOUT) => Err(Error::Timeout),
        Err(e) => Err(Error::call("vkWaitSemaphores", e)),
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let device = Arc::clone(&self.device);
        let dev = device.raw();
        if !self.pending.is_empty() {
            let fences: Vec<_> = self.pending.iter().map(|p| p.fence).collect();
            let ns = u64::try_from(DROP_WAIT.as_nanos()).unwrap_or(u64::MAX);
            // SAFETY: the fences are live fences of this device.
            if let Err(e) = unsafe { dev.wait_for_fences(&fences, true, ns) } {
                tracing::error!(
                    error = ?e,
                    pending = self.pending.len(),
                    "transfer submissions still running at drop: leaking their resources"
                );
                // Freeing anything the GPU may still use would be unsound: leak it all, pool
                // included (the leaked handles keep the device alive too).
                for p in self.pending.drain(..) {
                    std::mem::forget(p.keep);
                }
                return;
            }
        }
        self.reclaim();
        // SAFETY: no command buffer of the pool is pending (all fences signaled); the pool is
        // destroyed once, freeing its command buffers.
        unsafe { dev.destroy_command_pool(self.pool, None) };
    }
}
