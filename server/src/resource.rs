//! A resource: what the daemon shares (a buffer, an image, a semaphore or a host buffer), its
//! fixed description (id, name, owner, device), and the descriptors it hands out.
//!
//! Descriptors: each export is a distinct descriptor of its own (`vkGetMemoryFdKHR`, which
//! costs tens of microseconds on NVIDIA, ~43 µs in `bench/results`). After the first export of
//! a resource the daemon keeps [`SPARE_FDS`] exported ahead, so that a request takes one at once
//! and a blocking task makes the next, off the request path; the spares close with the
//! resource. A host buffer's descriptor is a `dup` of its memfd: cheap, none is kept ahead.
//!
//! Not here: who holds a resource and who may use it (`registry`, `access`, `session`).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::buffer::{SharedBuffer, BUFFER_PREFIX};
use crate::error::{Error, Result};
use crate::host_buffer::{HostBuffer, HOST_BUFFER_PREFIX};
use crate::ids;
use crate::image::{SharedImage, IMAGE_PREFIX};
use crate::semaphore::{Semaphore, SEMAPHORE_PREFIX};
use crate::stream::{Stream, STREAM_PREFIX};

/// MALFORMED_ID (INVALID_ARGUMENT) unless `id` has the shape of a resource id of some kind.
pub(crate) fn check_resource_id(id: &str) -> Result<()> {
    if [
        BUFFER_PREFIX,
        SEMAPHORE_PREFIX,
        HOST_BUFFER_PREFIX,
        IMAGE_PREFIX,
        STREAM_PREFIX,
    ]
    .iter()
    .any(|prefix| ids::is_well_formed(id, prefix))
    {
        return Ok(());
    }
    Err(Error::MalformedId {
        what: "resource",
        id: ids::shown(id),
    })
}

/// The GPU object behind a resource.
#[derive(Debug, Clone)]
pub(crate) enum Object {
    /// An exportable buffer.
    Buffer(Arc<SharedBuffer>),
    /// A timeline semaphore.
    Semaphore(Arc<Semaphore>),
    /// Shared host memory for bulk transfers.
    HostBuffer(Arc<HostBuffer>),
    /// An exportable image.
    Image(Arc<SharedImage>),
    /// A frame stream (its slots and timelines are resources of their own).
    Stream(Arc<Stream>),
}

impl Object {
    /// A fresh descriptor for the object (`vkGetMemoryFdKHR` / `vkGetSemaphoreFdKHR`, or a
    /// duplicate of a host buffer's memfd).
    fn export_fd(&self) -> Result<OwnedFd> {
        match self {
            Object::Buffer(b) => b.export_fd().map_err(Error::gpu("exporting buffer memory")),
            Object::Semaphore(s) => s.export_fd(),
            Object::HostBuffer(h) => h
                .mem()
                .dup_fd()
                .map_err(Error::host("duplicating a host buffer's descriptor")),
            Object::Image(i) => i
                .vk()
                .export_fd()
                .map_err(Error::gpu("exporting image memory")),
            Object::Stream(_) => Err(Error::BadStream(
                "a stream has no descriptor of its own: export its slots and timelines".into(),
            )),
        }
    }

    /// What kind of object it is, for errors ("buffer", "semaphore", "host buffer", "image").
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Object::Buffer(_) => "buffer",
            Object::Semaphore(_) => "semaphore",
            Object::HostBuffer(_) => "host buffer",
            Object::Image(_) => "image",
            Object::Stream(_) => "stream",
        }
    }
}

/// Descriptors kept exported ahead per exported resource (see the module docs): two, so that
/// back-to-back exports find one while the next is being made.
pub(crate) const SPARE_FDS: usize = 2;

/// One resource.
#[derive(Debug)]
pub(crate) struct Resource {
    /// Random id, `buf-…`, `sem-…`, `host-…` or `img-…`.
    pub(crate) id: String,
    /// Optional name, unique among the owner's live resources.
    pub(crate) name: String,
    /// Daemon device index (0 for host buffers, which belong to no device).
    pub(crate) device: u32,
    /// Owner uid.
    pub(crate) owner_uid: u32,
    /// When it was created.
    pub(crate) created: Instant,
    /// The GPU object.
    pub(crate) object: Object,
    /// Descriptors exported ahead of the next export requests.
    spare_fds: Mutex<Vec<OwnedFd>>,
    /// Whether a task is exporting spare descriptors now (one at a time).
    refilling: AtomicBool,
}

impl Resource {
    /// A new resource with no spare descriptor.
    pub(crate) fn new(
        id: String,
        name: String,
        device: u32,
        owner_uid: u32,
        object: Object,
    ) -> Self {
        Self {
            id,
            name,
            device,
            owner_uid,
            created: Instant::now(),
            object,
            spare_fds: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
        }
    }

    /// A descriptor for an export request: a spare one, or a host buffer's `dup`, at once;
    /// otherwise the driver call that makes one runs on a blocking thread, not on the async
    /// worker (NVIDIA's driver serializes them: exports made on the workers under a flood of
    /// exports stalled every other call). Either way the spares are topped up behind it.
    pub(crate) async fn descriptor(self: &Arc<Self>) -> Result<OwnedFd> {
        if let Some(fd) = self.descriptor_now() {
            return fd;
        }
        let this = self.clone();
        let made = tokio::task::spawn_blocking(move || {
            let fd = this.object.export_fd();
            this.refill_spares();
            fd
        })
        .await;
        made.map_err(|e| {
            if e.is_cancelled() {
                // Only a runtime that is shutting down drops a blocking task.
                Error::ShuttingDown
            } else {
                Error::ExecutorGone
            }
        })?
    }

    /// [`Resource::descriptor`] where it needs no driver call: a spare descriptor, or a host
    /// buffer's `dup`. `None` when the next descriptor must be exported by the driver.
    fn descriptor_now(self: &Arc<Self>) -> Option<Result<OwnedFd>> {
        if matches!(self.object, Object::HostBuffer(_)) {
            return Some(self.object.export_fd());
        }
        let spare = self
            .spare_fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        self.refill_spares();
        Some(Ok(spare))
    }

    /// Tops the spare descriptors up to [`SPARE_FDS`] on a blocking task, unless one is at it.
    fn refill_spares(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let refill = move || {
            let lock = || this.spare_fds.lock().unwrap_or_else(|p| p.into_inner());
            while lock().len() < SPARE_FDS {
                match this.object.export_fd() {
                    Ok(fd) => lock().push(fd),
                    Err(e) => {
                        tracing::warn!(id = %this.id, error = %e, "cannot export a spare descriptor");
                        break;
                    }
                }
            }
            this.refilling.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(refill)),
            Err(_) => refill(),
        }
    }
}
