//! Creating resources: every kind goes the same way. The caller must name a session or ask for
//! a pin; the name is checked; the uid's (and session's) quotas are asked before anything is
//! allocated, with an estimate, so that a doomed allocation is never made; then the object is
//! allocated on its device; then the registry inserts it, checking the quotas again with the
//! real sizes.

use std::sync::Arc;
use std::time::Instant;

use gpushare_interop::image::ImageDesc;
use gpushare_interop::vulkan::vk;
use gpushare_proto::SESSION_HEADER;

use super::Daemon;
use crate::access::Caller;
use crate::buffer::{SharedBuffer, BUFFER_PREFIX};
use crate::devices::DeviceSlot;
use crate::error::{at_most, Error, Result};
use crate::executor::Op;
use crate::host_buffer::{HostBuffer, HOST_BUFFER_PREFIX};
use crate::ids;
use crate::image::{SharedImage, IMAGE_PREFIX};
use crate::registry::Snapshot;
use crate::resource::{Object, Resource};
use crate::session::SignalPath;
use crate::usage::Usage;

/// Where a new resource goes and what holds it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Placement {
    /// Daemon device index (ignored for host buffers, which belong to no device).
    pub(crate) device: u32,
    /// Optional name, unique among the owner's live resources.
    pub(crate) name: String,
    /// Held by a pin of the owner uid too (required without a session).
    pub(crate) pin: bool,
}

impl Daemon {
    /// The checks before a device allocation, in this order: a session or a pin, the name,
    /// the device, the quotas for `estimate`. Returns the device.
    fn admit_new(&self, caller: &Caller, at: &Placement, estimate: &Usage) -> Result<&DeviceSlot> {
        Self::check_holder(caller, at)?;
        let slot = self.device(at.device)?;
        self.registry
            .admit(caller.uid(), caller.session.as_deref(), estimate)?;
        Ok(slot)
    }

    /// A new resource needs a holder (a session or a pin) and a valid name.
    fn check_holder(caller: &Caller, at: &Placement) -> Result<()> {
        if caller.session.is_none() && !at.pin {
            return Err(Error::NoSession {
                header: SESSION_HEADER,
            });
        }
        Self::check_name("name", &at.name)
    }

    /// Registers a new object as resource `id`.
    fn register(
        &self,
        caller: &Caller,
        at: Placement,
        id: String,
        object: Object,
    ) -> Result<Snapshot> {
        let device = if matches!(object, Object::HostBuffer(_)) {
            0
        } else {
            at.device
        };
        let resource = Resource::new(id, at.name, device, caller.uid(), object);
        tracing::debug!(id = %resource.id, uid = caller.uid(), kind = resource.object.kind(), "resource created");
        self.registry
            .insert(resource, caller.session.as_deref(), at.pin)
    }

    /// CreateBuffer: an exportable device buffer of `size` bytes.
    pub(crate) fn create_buffer(
        &self,
        caller: &Caller,
        at: Placement,
        size: u64,
    ) -> Result<Snapshot> {
        let estimate = Usage {
            buffers: 1,
            buffer_bytes: size,
            ..Usage::default()
        };
        let slot = self.admit_new(caller, &at, &estimate)?;
        if size == 0 {
            return Err(Error::Zero { what: "size" });
        }
        at_most("size", size, self.max_buffer_size)?;
        let b = slot
            .device
            .create_exportable_buffer(size)
            .map_err(Error::gpu("allocating a buffer"))?;
        let object = Object::Buffer(Arc::new(SharedBuffer::new(b)));
        self.register(caller, at, ids::new_id(BUFFER_PREFIX), object)
    }

    /// CreateSemaphore: a timeline semaphore at `initial`, exportable where the device can
    /// export timeline semaphores, with a memop word when `word` is asked and the device offers
    /// the fast path; the caller's session signals it by `path`.
    pub(crate) fn create_semaphore(
        &self,
        caller: &Caller,
        at: Placement,
        initial: u64,
        word: bool,
        path: SignalPath,
    ) -> Result<Snapshot> {
        let estimate = Usage {
            semaphores: 1,
            ..Usage::default()
        };
        let slot = self.admit_new(caller, &at, &estimate)?;
        let sem = Arc::new(slot.new_semaphore(
            initial,
            word,
            self.waits.clone(),
            "creating a timeline semaphore",
        )?);
        let id = sem.id().to_owned();
        let snap = self.register(caller, at, id, Object::Semaphore(sem.clone()))?;
        self.declare_signal_path(caller, &sem, path)?;
        Ok(snap)
    }

    /// CreateImage: an exportable image of `desc` with `usage`, prepared (zeros, resting
    /// layout) before anyone sees it.
    pub(crate) fn create_image(
        &self,
        caller: &Caller,
        at: Placement,
        desc: &ImageDesc,
        usage: vk::ImageUsageFlags,
    ) -> Result<Snapshot> {
        // The tightly packed size bounds the allocation's from below: refuse the absurd before
        // asking the driver (the allocation size itself is checked after).
        let limit = self.max_buffer_size;
        at_most("image size", desc.total_size(), limit)?;
        let estimate = Usage {
            buffers: 1,
            buffer_bytes: desc.total_size(),
            ..Usage::default()
        };
        let slot = self.admit_new(caller, &at, &estimate)?;
        let image = slot
            .device
            .create_exportable_image(desc, usage)
            .map_err(Error::gpu("creating an image"))?;
        at_most("image allocation size", image.allocation_size(), limit)?;
        blocking(|| slot.prepare_image(&image)).map_err(Error::gpu("preparing a new image"))?;
        let object = Object::Image(Arc::new(SharedImage::new(image)));
        self.register(caller, at, ids::new_id(IMAGE_PREFIX), object)
    }

    /// CreateHostBuffer: the memfd, then its page-locking by the executor (CUDA; the Vulkan
    /// executor copies through its own staging and needs none), then the registry entry.
    pub(crate) async fn create_host_buffer(
        &self,
        caller: &Caller,
        at: Placement,
        size: u64,
    ) -> Result<Snapshot> {
        let estimate = Usage {
            host_buffers: 1,
            host_buffer_bytes: size,
            ..Usage::default()
        };
        Self::check_holder(caller, &at)?;
        if size == 0 {
            return Err(Error::Zero { what: "size" });
        }
        at_most(
            "host buffer size",
            size,
            self.config.limits.max_host_buffer_size,
        )?;
        self.registry
            .admit(caller.uid(), caller.session.as_deref(), &estimate)?;
        let started = Instant::now();
        let host = tokio::task::spawn_blocking(move || HostBuffer::create(size))
            .await
            .map_err(|_| Error::ExecutorGone)?
            .map_err(Error::host("creating a host buffer"))?;
        let host = Arc::new(host);
        // Page-locked once (portable: for every CUDA context) by the first CUDA executor; the
        // Vulkan executors need nothing.
        for slot in &self.devices {
            slot.executor
                .run(Op::Register { host: host.clone() })
                .await?;
            if host.registered() {
                break;
            }
        }
        tracing::debug!(
            uid = caller.uid(),
            size,
            us = started.elapsed().as_micros() as u64,
            "host buffer made"
        );
        self.register(
            caller,
            at,
            ids::new_id(HOST_BUFFER_PREFIX),
            Object::HostBuffer(host),
        )
    }
}

/// Runs short blocking GPU work from an async caller: off the async worker where the runtime
/// allows it (multi-threaded), in place otherwise.
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
