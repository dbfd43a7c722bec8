//! The daemon's shared state: configuration, devices, registry, tickets and the wait service,
//! with the checks every handler shares (caller identity, session, lookups by kind).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gpushare_interop::vulkan::TimelineSemaphore;
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
use crate::tickets::Tickets;
use crate::waiter::WaitService;

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

/// Signal points reserved for a daemon operation's device-ordered signals
/// ([`Daemon::reserve_signals`]); dropping it ends the reservation. The executor holds it until
/// its stream has passed the signals (or it gave up before enqueuing them), whatever became of
/// the call.
///
/// It holds the signal lock and the wait service, not the daemon: the executor thread that
/// drops it must never be the one to drop the daemon (and with it, its own thread).
pub struct GpuSignals {
    lock: Arc<Mutex<()>>,
    waits: Arc<WaitService>,
    points: Vec<(Arc<Resource>, Arc<TimelineSemaphore>, u64)>,
}

impl std::fmt::Debug for GpuSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.points.iter().map(|(r, _, v)| (&r.id, v)))
            .finish()
    }
}

impl GpuSignals {
    /// The semaphores and the values to signal them to.
    pub fn points(&self) -> impl Iterator<Item = (&Arc<Resource>, u64)> {
        self.points.iter().map(|(r, _, v)| (r, *v))
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

impl Drop for GpuSignals {
    /// The reservation ended: the pending counts go down, a semaphore abandoned meanwhile is
    /// poisoned now, and waiters are woken.
    fn drop(&mut self) {
        if self.points.is_empty() {
            return;
        }
        {
            let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            for (res, sem, _) in &self.points {
                let pending = &res.gpu_signals;
                if pending.count.fetch_sub(1, Ordering::AcqRel) > 1 {
                    continue;
                }
                pending.max.store(0, Ordering::Release);
                if pending.poison_deferred.swap(false, Ordering::AcqRel) {
                    if let Err(e) = sem.signal_max() {
                        tracing::warn!(id = %res.id, error = %e, "cannot signal a semaphore's poison value");
                    }
                }
            }
        }
        self.waits.notify();
    }
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
    /// Serializes host signals, so that the value check and the signal are one step.
    pub signal_lock: Arc<Mutex<()>>,
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
            signal_lock: Arc::new(Mutex::new(())),
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
    pub fn semaphore(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<(Arc<Resource>, Arc<TimelineSemaphore>)> {
        self.typed(id, caller, "sem", "semaphore", |o| match o {
            Object::Semaphore(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// Host-signals semaphore `res` (`sem`) to `value`, refusing non-increasing values and
    /// abandoned semaphores, and wakes its waiters.
    pub fn signal(&self, res: &Resource, sem: &TimelineSemaphore, value: u64) -> Result<u64> {
        let id = &res.id;
        {
            let _serial = self.signal_lock.lock().unwrap_or_else(|p| p.into_inner());
            if res.abandoned.load(Ordering::Acquire) {
                return Err(Error::Abandoned(id.clone()));
            }
            let pending = &res.gpu_signals;
            if pending.count.load(Ordering::Acquire) > 0 {
                return Err(Error::SignalPending {
                    id: ids::shown(id),
                    value: pending.max.load(Ordering::Acquire),
                });
            }
            let current = sem
                .value()
                .map_err(Error::gpu("reading a semaphore value"))?;
            if value <= current {
                return Err(Error::NotIncreasing {
                    id: ids::shown(id),
                    current,
                    requested: value,
                });
            }
            sem.signal(value)
                .map_err(Error::gpu("signaling a semaphore"))?;
        }
        self.waits.notify();
        Ok(value)
    }

    /// Reserves signal points that a daemon operation will signal on its device's stream, after
    /// its work and in stream order: under the signal lock, each semaphore must not be
    /// abandoned and its value must exceed both its current value and every signal already
    /// pending on the GPU (operations on one device's stream run in order, so pending values
    /// only increase). Until the returned [`GpuSignals`] is dropped (by the executor, once the
    /// stream has passed the signals), host signals of those semaphores are refused and
    /// poisoning them is deferred: the GPU's signal would otherwise move a value backwards.
    pub fn reserve_signals(
        &self,
        points: Vec<(Arc<Resource>, Arc<TimelineSemaphore>, u64)>,
    ) -> Result<GpuSignals> {
        let _serial = self.signal_lock.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (res, sem, value)) in points.iter().enumerate() {
            if res.abandoned.load(Ordering::Acquire) {
                return Err(Error::Abandoned(res.id.clone()));
            }
            let current = sem
                .value()
                .map_err(Error::gpu("reading a semaphore value"))?;
            let earlier = points[..i]
                .iter()
                .filter(|(r, _, _)| r.id == res.id)
                .map(|&(_, _, v)| v);
            let floor = earlier
                .chain([current, res.gpu_signals.max.load(Ordering::Acquire)])
                .max()
                .unwrap_or(current);
            if *value <= floor {
                return Err(Error::NotIncreasing {
                    id: ids::shown(&res.id),
                    current: floor,
                    requested: *value,
                });
            }
        }
        for (res, _, value) in &points {
            let pending = &res.gpu_signals;
            pending.count.fetch_add(1, Ordering::AcqRel);
            pending.max.fetch_max(*value, Ordering::AcqRel);
        }
        Ok(GpuSignals {
            lock: self.signal_lock.clone(),
            waits: self.waits.clone(),
            points,
        })
    }

    /// Called with what a release or a session end freed. A semaphore on its way out is
    /// signaled to its poison value first: other processes may have imported it, and their GPU
    /// waits on it must not hang.
    pub fn freed(&self, freed: impl IntoIterator<Item = Arc<Resource>>) {
        for r in freed {
            tracing::debug!(id = %r.id, "resource freed");
            if let Object::Semaphore(sem) = &r.object {
                self.waits.forget(&r.id);
                self.poison(&r, sem);
            }
        }
    }

    /// What a session end left: frees what it freed, and abandons the semaphores it created
    /// that live on (pinned, or held by other sessions). Their signaler is gone, so they are
    /// signaled to their poison value and every wait on them ends with ABORTED.
    pub fn session_ended(&self, ended: EndedSession) {
        for r in ended.orphaned {
            if let Object::Semaphore(sem) = &r.object {
                self.waits.abandon(&r.id);
                if let Some(value) = self.poison(&r, sem) {
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

    /// Marks `res` abandoned and signals its poison value (as far as the device allows), under
    /// the signal lock. Returns the value, or `None` when it was poisoned before or the driver
    /// refused (logged).
    fn poison(&self, res: &Resource, sem: &TimelineSemaphore) -> Option<u64> {
        let _serial = self.signal_lock.lock().unwrap_or_else(|p| p.into_inner());
        if res.abandoned.swap(true, Ordering::AcqRel) {
            return None;
        }
        if res.gpu_signals.count.load(Ordering::Acquire) > 0 {
            // A signal is pending on the GPU: poisoning now would let it move the value back.
            // The last one to complete poisons (`GpuSignals`'s drop).
            res.gpu_signals
                .poison_deferred
                .store(true, Ordering::Release);
            tracing::debug!(id = %res.id, "poison deferred until the GPU signals pending on it complete");
            return None;
        }
        match sem.signal_max() {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::warn!(id = %res.id, error = %e, "cannot signal a semaphore's poison value");
                None
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon on the default Vulkan device with one semaphore at 5, or `None` (SKIP) without
    /// a device, unless GPUSHARE_REQUIRE_VULKAN=1.
    fn daemon_with_semaphore() -> Option<(Arc<Daemon>, Arc<Resource>, Arc<TimelineSemaphore>)> {
        let opened = match crate::devices::open("auto", "vulkan", false) {
            Ok(o) => o,
            Err(e) if std::env::var("GPUSHARE_REQUIRE_VULKAN").as_deref() != Ok("1") => {
                println!("SKIP: no Vulkan device: {e}");
                return None;
            }
            Err(e) => panic!("GPUSHARE_REQUIRE_VULKAN=1 but {e}"),
        };
        let waits = WaitService::start(false).unwrap();
        let d = Arc::new(Daemon::new(Config::default(), opened, waits));
        let sem = Arc::new(
            d.devices[0]
                .device
                .create_timeline_semaphore(5, false)
                .unwrap(),
        );
        let res = Arc::new(Resource::new(
            ids::new_id("sem"),
            String::new(),
            0,
            1000,
            Object::Semaphore(sem.clone()),
        ));
        Some((d, res, sem))
    }

    /// Reserved device-ordered signals keep host signals out and values increasing; poisoning
    /// waits for the last of them.
    #[test]
    fn reserved_gpu_signals_fence_host_signals_and_defer_poison() {
        let Some((d, res, sem)) = daemon_with_semaphore() else {
            return;
        };
        let point = |v| vec![(res.clone(), sem.clone(), v)];
        assert!(matches!(
            d.reserve_signals(point(5)),
            Err(Error::NotIncreasing { current: 5, .. })
        ));
        let first = d.reserve_signals(point(7)).unwrap();
        // A second operation queued behind the first must signal above it.
        assert!(matches!(
            d.reserve_signals(point(7)),
            Err(Error::NotIncreasing { current: 7, .. })
        ));
        let second = d.reserve_signals(point(9)).unwrap();
        assert!(matches!(
            d.signal(&res, &sem, 100),
            Err(Error::SignalPending { value: 9, .. })
        ));
        // The GPU signals 7 (here, the host stands in for the stream), then the first ends.
        sem.signal(7).unwrap();
        drop(first);
        assert!(matches!(
            d.signal(&res, &sem, 100),
            Err(Error::SignalPending { .. })
        ));
        // Abandoned meanwhile: the poison waits for the pending signal.
        assert_eq!(d.poison(&res, &sem), None);
        assert_eq!(
            sem.value().unwrap(),
            7,
            "not poisoned under a pending signal"
        );
        sem.signal(9).unwrap();
        drop(second);
        assert!(
            sem.value().unwrap() > 1_000_000,
            "poisoned once the last signal completed"
        );
        assert_eq!(res.gpu_signals.count.load(Ordering::Acquire), 0);
        assert!(matches!(
            d.reserve_signals(point(u64::MAX)),
            Err(Error::Abandoned(_))
        ));
    }

    /// Without anything pending, host signals behave as before; a reservation of several
    /// points on one semaphore must increase within itself.
    #[test]
    fn host_signals_and_multi_point_reservations() {
        let Some((d, res, sem)) = daemon_with_semaphore() else {
            return;
        };
        assert_eq!(d.signal(&res, &sem, 6).unwrap(), 6);
        assert!(matches!(
            d.signal(&res, &sem, 6),
            Err(Error::NotIncreasing { .. })
        ));
        let twice = vec![(res.clone(), sem.clone(), 8), (res.clone(), sem.clone(), 8)];
        assert!(matches!(
            d.reserve_signals(twice),
            Err(Error::NotIncreasing { current: 8, .. })
        ));
        assert_eq!(
            res.gpu_signals.count.load(Ordering::Acquire),
            0,
            "a refused reservation holds nothing"
        );
        let ok = d
            .reserve_signals(vec![
                (res.clone(), sem.clone(), 8),
                (res.clone(), sem.clone(), 10),
            ])
            .unwrap();
        assert_eq!(res.gpu_signals.count.load(Ordering::Acquire), 2);
        drop(ok);
        assert_eq!(res.gpu_signals.count.load(Ordering::Acquire), 0);
        assert_eq!(d.signal(&res, &sem, 11).unwrap(), 11);
    }
}
