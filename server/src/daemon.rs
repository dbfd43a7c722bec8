//! The daemon's shared state: configuration, devices, registry, tickets and the wait service,
//! with the checks every handler shares (caller identity, session, lookups by kind).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::buffer::SharedBuffer;
use crate::config::Config;
use crate::devices::{DeviceSlot, Opened};
use crate::error::{Error, Result};
use crate::host_buffer::HostBuffer;
use crate::ids;
use crate::image::{SharedImage, IMAGE_PREFIX};
use crate::inflight::InFlight;
use crate::log_budget::LogBudget;
use crate::peer::Peer;
use crate::quota::{Counted, Counters, Held};
use crate::registry::{EndedSession, Object, Registry, Resource, Snapshot};
use crate::semaphore::{Ended, Semaphore};
use crate::tickets::Tickets;
use crate::waits::WaitService;

/// MALFORMED_ID (INVALID_ARGUMENT) unless `id` has the shape of a resource id.
pub(crate) fn check_resource_id(id: &str) -> Result<()> {
    if ["buf", "sem", HOST_BUFFER_PREFIX, IMAGE_PREFIX]
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

/// INFO lines for abandoned semaphores: a few a second (`left_out` counts the rest).
static ABANDONED_LOG: LogBudget = LogBudget::new(10);

/// The id prefix of host buffers (`host-…`).
pub const HOST_BUFFER_PREFIX: &str = "host";

/// Longest client-chosen text (resource names, client names), in bytes.
pub const MAX_NAME: usize = 128;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Daemon {
    /// The configuration in force.
    pub config: Config,
    /// Served devices, by index.
    pub devices: Vec<DeviceSlot>,
    /// `(major, minor)` of the host's CUDA driver, if it has one.
    pub cuda_version: Option<(u32, u32)>,
    /// Resources and sessions.
    pub registry: Registry,
    /// Export tickets.
    pub tickets: Tickets,
    /// Host waits.
    pub waits: Arc<WaitService>,
    /// Cancelled when the daemon starts shutting down.
    pub shutdown: CancellationToken,
    /// Cancelled once the calls in flight at shutdown have finished: then the session streams
    /// end and their references go (a call in flight keeps its session until it is done).
    pub sessions_end: CancellationToken,
    /// Effective largest buffer size.
    pub max_buffer_size: u64,
    /// Descriptors sent on fd.sock (redeemed tickets and direct exports).
    pub descriptors_sent: AtomicU64,
    /// Per-uid counts of pending waits, watches and connections (`[quotas]`).
    pub held: Arc<Counters>,
    /// Calls in flight (`quotas.calls_in_flight`; the server's tower layer counts gRPC calls,
    /// fd.sock its exports and redeems, host waits park theirs).
    pub in_flight: Arc<InFlight>,
}

/// Who is calling: from the connection's peer credentials, plus the session header.
#[derive(Debug, Clone)]
pub struct Caller {
    /// uid.
    pub uid: u32,
    /// The connection's peer: its uid, groups and pid.
    pub peer: Peer,
    /// The session named by the call, checked live and the caller's.
    pub session: Option<String>,
    /// Whether the caller is in the admin group (`admin_gid`, matched on the primary gid and
    /// the supplementary groups).
    pub admin: bool,
}

impl Caller {
    /// A caller known only by uid, with no session and no group (tests).
    pub fn of_uid(uid: u32) -> Self {
        Self {
            uid,
            peer: Peer {
                uid,
                gid: u32::MAX,
                pid: 0,
                groups: Arc::from([]),
            },
            session: None,
            admin: false,
        }
    }

    /// Whether the caller is a member of `gid` (primary or supplementary).
    pub fn in_group(&self, gid: u32) -> bool {
        self.peer.in_group(gid)
    }
}

impl Daemon {
    /// Builds the state. `max_buffer_size` 0 in the config means the largest heap.
    pub fn new(config: Config, opened: Opened, waits: Arc<WaitService>) -> Self {
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
        let registry = Registry::new(config.quotas.clone());
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
        }
    }

    /// Takes a slot of `kind` for `uid`, and for `session` when the call names one, under their
    /// quotas (`[quotas]`), held until dropped.
    pub fn hold(&self, uid: u32, session: Option<&str>, kind: Counted) -> Result<Held> {
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
    pub fn device(&self, index: u32) -> Result<&DeviceSlot> {
        self.devices.get(index as usize).ok_or(Error::NoDevice {
            index,
            count: self.devices.len(),
        })
    }

    /// Checks a session id from a call's header.
    pub fn caller(&self, peer: &Peer, session: Option<&str>) -> Result<Caller> {
        if let Some(s) = session {
            self.registry.check_session(s, peer.uid)?;
        }
        Ok(Caller {
            uid: peer.uid,
            peer: peer.clone(),
            session: session.map(str::to_owned),
            admin: self.config.admin_gid.is_some_and(|g| peer.in_group(g)),
        })
    }

    /// Looks up a resource for describing or releasing it: as [`Daemon::resource`], and the
    /// admin group sees every resource.
    pub fn resource_visible(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        check_resource_id(id)?;
        self.registry.get_visible(id, caller)
    }

    /// Looks up a resource the caller may use, validating the id's shape first.
    pub fn resource(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
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

    /// Looks up a buffer of the caller's.
    pub fn buffer(&self, id: &str, caller: &Caller) -> Result<(Arc<Resource>, Arc<SharedBuffer>)> {
        self.typed(id, caller, "buf", "buffer", |o| match o {
            Object::Buffer(b) => Some(b.clone()),
            _ => None,
        })
    }

    /// Looks up a host buffer of the caller's.
    pub fn host_buffer(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<(Arc<Resource>, Arc<HostBuffer>)> {
        self.typed(id, caller, HOST_BUFFER_PREFIX, "host buffer", |o| match o {
            Object::HostBuffer(h) => Some(h.clone()),
            _ => None,
        })
    }

    /// Looks up an image of the caller's.
    pub fn image(&self, id: &str, caller: &Caller) -> Result<(Arc<Resource>, Arc<SharedImage>)> {
        self.typed(id, caller, IMAGE_PREFIX, "image", |o| match o {
            Object::Image(i) => Some(i.clone()),
            _ => None,
        })
    }

    /// Looks up a semaphore of the caller's.
    pub(crate) fn semaphore(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<(Arc<Resource>, Arc<Semaphore>)> {
        self.typed(id, caller, "sem", "semaphore", |o| match o {
            Object::Semaphore(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// Called with what a release or a session end freed. A semaphore on its way out is
    /// signaled to its poison value first: other processes may have imported it, and their GPU
    /// waits on it must not hang.
    pub fn freed(&self, freed: impl IntoIterator<Item = Arc<Resource>>) {
        for r in freed {
            tracing::debug!(id = %r.id, "resource freed");
            if let Object::Semaphore(sem) = &r.object {
                sem.end(Ended::Freed);
            }
        }
    }

    /// What a session end left: frees what it freed, and abandons the semaphores it created
    /// that live on (pinned, or held by other sessions). Their signaler is gone, so they are
    /// signaled to their poison value and every wait on them ends with ABORTED.
    pub fn session_ended(&self, ended: EndedSession) {
        for r in ended.orphaned {
            if let Object::Semaphore(sem) = &r.object {
                if let Some(value) = sem.end(Ended::Abandoned) {
                    if let Some(left_out) = ABANDONED_LOG.admit() {
                        tracing::info!(id = %r.id, value, left_out, "semaphore abandoned: its last signaler session ended");
                    } else {
                        tracing::debug!(id = %r.id, value, "semaphore abandoned: its last signaler session ended");
                    }
                }
            }
        }
        self.freed(ended.freed);
    }

    /// Checks a client-chosen name.
    pub fn check_name(what: &'static str, name: &str) -> Result<()> {
        if name.len() > MAX_NAME {
            return Err(Error::TextTooLong {
                what,
                limit: MAX_NAME,
            });
        }
        Ok(())
    }
}
