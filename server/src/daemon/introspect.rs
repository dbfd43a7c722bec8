//! Introspection: who is connected (sessions) and which semaphores have host waits pending, on
//! what, for `ListSessions` and `ListSemaphores`.
//!
//! A listing is assembled from three places, one after another and never under two locks at
//! once: the registry (sessions, semaphores and their signalers), the semaphores' counters
//! (read after the registry's lock is released), and the wait service (pending waits, copied
//! out under its lock). Visibility: a caller sees its own uid's sessions and the semaphores it
//! reaches; the admin group sees every one of both.

use super::Daemon;
use crate::access::Caller;
use crate::registry::Snapshot;
use crate::resource::Object;
use crate::session::SessionView;
use crate::waits::PendingWait;

/// One semaphore as `ListSemaphores` shows it.
#[derive(Debug)]
pub(crate) struct SemaphoreView {
    /// The resource and its references.
    pub(crate) snap: Snapshot,
    /// Its value (0 when the driver failed to read it, as in resource listings).
    pub(crate) value: u64,
    /// A live session that signals it, if any.
    pub(crate) signaler: Option<String>,
    /// Whether it ended (abandoned; a freed one is not listed).
    pub(crate) ended: bool,
    /// The host waits pending on it, oldest first.
    pub(crate) waits: Vec<PendingWait>,
}

impl Daemon {
    /// ListSessions: the sessions `caller` may see, oldest first.
    pub(crate) fn sessions(&self, caller: &Caller) -> Vec<SessionView> {
        self.registry.sessions(caller)
    }

    /// ListSemaphores: the semaphores `caller` reaches (every one for the admin group), oldest
    /// first.
    pub(crate) fn semaphores(&self, caller: &Caller) -> Vec<SemaphoreView> {
        let listed = self.registry.semaphores(caller);
        let mut pending = self.waits.pending_by_semaphore();
        listed
            .into_iter()
            .filter_map(|(snap, signaler)| {
                let Object::Semaphore(sem) = &snap.resource.object else {
                    return None;
                };
                Some(SemaphoreView {
                    value: sem.value().unwrap_or(0),
                    ended: sem.ended().is_some(),
                    waits: pending.remove(sem.id()).unwrap_or_default(),
                    signaler,
                    snap,
                })
            })
            .collect()
    }
}
