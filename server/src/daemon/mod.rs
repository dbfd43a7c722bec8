//! The daemon: its state (configuration, devices, registry, tickets, wait service, quotas) and
//! its use cases, one method each, called by the adapters (`service` for gRPC, `fd_server` for
//! fd.sock) with what they parsed:
//! - here: who is calling, lookups by kind (NOT_FOUND for what the caller cannot reach),
//!   quota slots;
//! - [`create`]: resource creation (admission, allocation, registration);
//! - [`lifetime`]: sessions, releases, grants and tokens, what ends when;
//! - [`wait`]: the one set of rules every host wait follows;
//! - [`export`]: descriptors for export requests and tickets;
//! - [`ops`]: daemon-executed GPU operations between wait and signal points;
//! - [`stream`]: frame streams (creation, roles, the frame calls, dead peers);
//! - [`introspect`]: what listings show.
//!
//! Not here: wire formats (`wire`), transport (`service`, `fd_server`, `server`).

pub(crate) mod bridge;
pub(crate) mod create;
pub(crate) mod export;
pub(crate) mod introspect;
pub(crate) mod lifetime;
pub(crate) mod ops;
pub(crate) mod stream;
pub(crate) mod wait;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::buffer::{SharedBuffer, BUFFER_PREFIX};
use crate::config::Config;
use crate::devices::{DeviceSlot, Opened};
use crate::error::{Error, Result};
use crate::host_buffer::{HostBuffer, HOST_BUFFER_PREFIX};
use crate::ids;
use crate::image::{SharedImage, IMAGE_PREFIX};
use crate::inflight::InFlight;
use crate::peer::Peer;
use crate::quota::{Counted, Counters, Held};
use crate::registry::{Registry, Snapshot};
use crate::resource::{check_resource_id, Object, Resource};
use crate::semaphore::{Semaphore, SEMAPHORE_PREFIX};
use crate::stream::roles::Roles;
use crate::tickets::Tickets;
use crate::waits::WaitService;

/// Longest client-chosen text (resource names, client names), in bytes.
pub(crate) const MAX_NAME: usize = 128;

/// The daemon's state, shared by every connection.
#[derive(Debug)]
pub(crate) struct Daemon {
    /// The configuration in force.
    pub(crate) config: Config,
    /// Served devices, by index.
    pub(crate) devices: Vec<DeviceSlot>,
    /// `(major, minor)` of the host's CUDA driver, if it has one.
    pub(crate) cuda_version: Option<(u32, u32)>,
    /// Resources and sessions.
    pub(crate) registry: Arc<Registry>,
    /// Export tickets.
    pub(crate) tickets: Tickets,
    /// Host waits.
    pub(crate) waits: Arc<WaitService>,
    /// Cancelled when the daemon starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled once the calls in flight at shutdown have finished: then the session streams
    /// end and their references go (a call in flight keeps its session until it is done).
    pub(crate) sessions_end: CancellationToken,
    /// Effective largest buffer size.
    pub(crate) max_buffer_size: u64,
    /// Descriptors sent on fd.sock (redeemed tickets and direct exports).
    pub(crate) descriptors_sent: AtomicU64,
    /// Per-uid counts of pending waits, watches and connections (`[quotas]`).
    held: Arc<Counters>,
    /// Calls in flight (`quotas.calls_in_flight`; the server's tower layer counts gRPC calls,
    /// fd.sock its exports and redeems, host waits park theirs).
    pub(crate) in_flight: Arc<InFlight>,
    /// Frame streams' role handles.
    roles: Roles,
    /// The semaphores whose word the daemon bridges.
    pub(crate) bridges: Arc<bridge::Bridges>,
}

impl Daemon {
    /// Builds the state. `max_buffer_size` 0 in the config means the largest heap.
    pub(crate) fn new(config: Config, opened: Opened, waits: Arc<WaitService>) -> Self {
        let Opened {
            slots: devices,
            cuda_version,
        } = opened;
        let largest_heap = devices
            .iter()
            .flat_map(|d| d.info().heaps.iter().map(|h| h.size))
            .max()
            .unwrap_or(0);
        let max_buffer_size = match config.limits.max_buffer_size {
            0 => largest_heap,
            n => n,
        };
        let tickets = Tickets::new(std::time::Duration::from_millis(
            config.limits.ticket_ttl_ms.into(),
        ));
        let registry = Arc::new(Registry::new(config.quotas.clone()));
        let in_flight = Arc::new(InFlight::with_limits(
            usize::try_from(config.quotas.calls_in_flight).unwrap_or(usize::MAX),
            usize::try_from(config.quotas.calls_in_flight_per_uid).unwrap_or(usize::MAX),
        ));
        Self {
            config,
            devices,
            cuda_version,
            registry,
            tickets,
            waits,
            shutdown: CancellationToken::new(),
            sessions_end: CancellationToken::new(),
            max_buffer_size,
            descriptors_sent: AtomicU64::new(0),
            held: Arc::new(Counters::default()),
            in_flight,
            roles: Roles::default(),
            bridges: Arc::default(),
        }
    }

    /// Takes a slot of `kind` for `uid`, and for `session` when the call names one, under their
    /// quotas (`[quotas]`), held until dropped.
    pub(crate) fn hold(&self, uid: u32, session: Option<&str>, kind: Counted) -> Result<Held> {
        let q = &self.config.quotas;
        // Connections are counted per uid only.
        let (per_uid, per_session, total) = match kind {
            Counted::PendingWaits => (
                q.pending_waits_per_uid,
                Some(q.pending_waits_per_session),
                0,
            ),
            Counted::Watches => (q.watches_per_uid, Some(q.watches_per_session), 0),
            Counted::ControlConnections | Counted::FdConnections => {
                (q.connections_per_uid, None, q.connections)
            }
        };
        let session = session.zip(per_session);
        self.held.acquire(uid, session, kind, per_uid, total)
    }

    /// The device with daemon index `index`.
    pub(crate) fn device(&self, index: u32) -> Result<&DeviceSlot> {
        self.devices.get(index as usize).ok_or(Error::NoDevice {
            index,
            count: self.devices.len(),
        })
    }

    /// Who calls, from its connection's `peer` and the session its call names (checked: live,
    /// and of the peer's uid).
    pub(crate) fn caller(&self, peer: &Peer, session: Option<&str>) -> Result<Caller> {
        if let Some(s) = session {
            self.registry.check_session(s, peer.uid)?;
        }
        Ok(Caller {
            peer: peer.clone(),
            session: session.map(str::to_owned),
            admin: self.config.admin_gid.is_some_and(|g| peer.in_group(g)),
        })
    }

    /// Looks up a resource for describing or releasing it: as [`Daemon::resource`], and the
    /// admin group sees every resource.
    pub(crate) fn resource_visible(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        check_resource_id(id)?;
        self.registry.get_visible(id, caller)
    }

    /// Looks up a resource the caller may use, validating the id's shape first.
    pub(crate) fn resource(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        check_resource_id(id)?;
        self.registry.get(id, caller)
    }

    /// Looks up a resource of the caller's of one kind: `prefix` is its ids' prefix, `what` its
    /// name in errors, `pick` takes the object out (`None` for another kind).
    fn typed<T>(
        &self,
        id: &str,
        caller: &Caller,
        prefix: &str,
        what: &'static str,
        pick: impl FnOnce(&Object) -> Option<Arc<T>>,
    ) -> Result<(Arc<Resource>, Arc<T>)> {
        if !ids::is_well_formed(id, prefix) {
            return Err(Error::MalformedId {
                what,
                id: ids::shown(id),
            });
        }
        let snap = self.registry.get(id, caller)?;
        match pick(&snap.resource.object) {
            Some(object) => Ok((snap.resource.clone(), object)),
            None => Err(Error::NotFound {
                what,
                id: ids::shown(id),
            }),
        }
    }

    /// Looks up a buffer the caller may use.
    pub(crate) fn buffer(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<(Arc<Resource>, Arc<SharedBuffer>)> {
        self.typed(id, caller, BUFFER_PREFIX, "buffer", |o| match o {
            Object::Buffer(b) => Some(b.clone()),
            _ => None,
        })
    }

    /// Looks up a host buffer the caller may use.
    pub(crate) fn host_buffer(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<(Arc<Resource>, Arc<HostBuffer>)> {
        self.typed(id, caller, HOST_BUFFER_PREFIX, "host buffer", |o| match o {
            Object::HostBuffer(h) => Some(h.clone()),
            _ => None,
        })
    }

    /// Looks up an image the caller may use.
    pub(crate) fn image(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<(Arc<Resource>, Arc<SharedImage>)> {
        self.typed(id, caller, IMAGE_PREFIX, "image", |o| match o {
            Object::Image(i) => Some(i.clone()),
            _ => None,
        })
    }

    /// Looks up a semaphore the caller may use.
    pub(crate) fn semaphore(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<(Arc<Resource>, Arc<Semaphore>)> {
        self.typed(id, caller, SEMAPHORE_PREFIX, "semaphore", |o| match o {
            Object::Semaphore(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// Checks a client-chosen name.
    pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
        if name.len() > MAX_NAME {
            return Err(Error::TextTooLong {
                what,
                limit: MAX_NAME,
            });
        }
        Ok(())
    }
}
