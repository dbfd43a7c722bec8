//! Introspection: the `ListSessions` and `ListSemaphores` calls, which show operators who is
//! connected and which semaphores have host waits pending, and on what.
//!
//! Both calls assemble a snapshot from three places, one after another and never under two
//! locks at once: the [`Registry`](crate::registry::Registry) (sessions, semaphores and their
//! signalers), the semaphores' counters (read after the registry's lock is released), and the
//! [`WaitService`](crate::waiter::WaitService) (pending waits, copied out under the poller's lock).
//!
//! Visibility: a caller sees its own uid's sessions and the semaphores it reaches (its own,
//! granted, or opened by its sessions); the admin group (`admin_gid`) sees every one of both.
//!
//! A pending wait is flagged `unsatisfiable` when its semaphore has no live signaler session:
//! it was created without a session (a pinned, session-less create), so no session-bound
//! producer exists. A host `Signal` (or an importer's GPU signal) can still satisfy such a wait;
//! the flag is a warning for operators, not a prediction. (A semaphore whose signaler session
//! ended is abandoned: its waits end with ABORTED at once and are never listed.)

use std::time::Duration;

use gpushare_proto::v1;

use crate::daemon::{Caller, Daemon};
use crate::registry::Object;

/// One live session, as introspection shows it ([`Registry::sessions`]).
///
/// [`Registry::sessions`]: crate::registry::Registry::sessions
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// The opening connection's uid.
    pub uid: u32,
    /// Its pid (0 when unknown).
    pub pid: i32,
    /// The client's name for itself.
    pub client_name: String,
    /// Time since it started.
    pub age: Duration,
    /// Resources it holds a reference to.
    pub references: u32,
    /// Live semaphores it created (it is their signaler).
    pub semaphores_signaled: u32,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `ListSessions` for `caller`.
pub fn list_sessions(d: &Daemon, caller: &Caller) -> v1::ListSessionsResponse {
    let sessions = d
        .registry
        .sessions(caller)
        .into_iter()
        .map(|s| v1::SessionInfo {
            id: s.id,
            uid: s.uid,
            pid: s.pid,
            client_name: s.client_name,
            age_ms: millis(s.age),
            references: s.references,
            semaphores_signaled: s.semaphores_signaled,
        })
        .collect();
    v1::ListSessionsResponse { sessions }
}

/// `ListSemaphores` for `caller`.
pub fn list_semaphores(d: &Daemon, caller: &Caller) -> v1::ListSemaphoresResponse {
    let listed = d.registry.semaphores(caller);
    let mut pending = d.waits.pending_by_semaphore();
    let semaphores = listed
        .into_iter()
        .filter_map(|(snap, signaler)| {
            let r = &snap.resource;
            let Object::Semaphore(sem) = &r.object else {
                return None;
            };
            let unsatisfiable = signaler.is_none();
            let waits = pending
                .remove(&r.id)
                .unwrap_or_default()
                .into_iter()
                .map(|w| v1::PendingWait {
                    value: w.target,
                    age_ms: millis(w.age),
                    unsatisfiable,
                })
                .collect();
            Some(v1::SemaphoreInfo {
                id: r.id.clone(),
                name: r.name.clone(),
                device: r.device,
                // A failed read shows 0, as in resource listings.
                value: sem.value().unwrap_or(0),
                signaler_session: signaler.unwrap_or_default(),
                abandoned: sem.ended().is_some(),
                references: snap.references,
                pinned: snap.pinned,
                waits,
            })
        })
        .collect();
    v1::ListSemaphoresResponse { semaphores }
}
