//! Counts calls in flight (gRPC calls, and export and redeem requests on fd.sock), so that
//! shutdown can wait for them to finish without waiting for idle client connections to go away
//! (an HTTP/2 graceful close needs the client's help).
//!
//! A gRPC call counts from its arrival until its handler returned a response (for streaming
//! calls, until the stream started: streams end on their own at shutdown); an fd.sock request
//! until its reply is sent.
//!
//! The same count sheds load: past `quotas.calls_in_flight` a call is answered at once with
//! RESOURCE_EXHAUSTED, naming the quota, instead of queueing behind the others. A call parked
//! in a host wait (a Wait call, or an operation waiting for its wait points: [`InFlight::park`])
//! does not count against that quota while it waits, so that parked waits, bounded per uid by
//! `quotas.pending_waits_per_uid`, cannot starve every other uid of calls. (fd.sock waits are
//! not counted at all: `pending_waits_per_uid` bounds them.)
//!
//! Each uid has its own count too, bounded by `quotas.calls_in_flight_per_uid`, so that one uid
//! flooding the daemon is refused before it takes every slot of the others. A connection looks
//! its uid's count up once, when it is accepted ([`InFlight::uid`]); admitting or refusing a
//! call then touches only atomics: under a flood of calls, refusing must not contend on a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

/// The shared counter.
#[derive(Debug)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
    /// Calls refused for load (`calls_in_flight`).
    shed: AtomicUsize,
    /// Of those, refused by a uid's own limit (`calls_in_flight_per_uid`).
    shed_per_uid: AtomicUsize,
    /// Calls in flight that are parked in a host wait (not counted against `limit`).
    parked: AtomicUsize,
    limit: usize,
    per_uid: usize,
    /// Each uid's count, while a connection of the uid holds it.
    uids: Mutex<HashMap<u32, Weak<UidCalls>>>,
}

/// One uid's calls in flight, shared by the uid's connections ([`InFlight::uid`]).
#[derive(Debug)]
pub(crate) struct UidCalls {
    uid: u32,
    count: AtomicUsize,
    parked: AtomicUsize,
}

/// A parked call ([`InFlight::park`]); counts again when dropped.
#[derive(Debug)]
pub(crate) struct Parked(Arc<InFlight>, Option<Arc<UidCalls>>);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::AcqRel);
        if let Some(u) = &self.1 {
            u.parked.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::with_limits(usize::MAX, usize::MAX)
    }
}

impl InFlight {
    /// A counter that refuses calls past `limit` in flight, or past `per_uid` of one uid.
    pub(crate) fn with_limits(limit: usize, per_uid: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            idle: Notify::new(),
            shed: AtomicUsize::new(0),
            shed_per_uid: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            limit,
            per_uid,
            uids: Mutex::new(HashMap::new()),
        }
    }

    /// `uid`'s count, for a connection of the uid to admit its calls with. Counts live as long
    /// as a connection holds them.
    pub(crate) fn uid(&self, uid: u32) -> Arc<UidCalls> {
        let mut uids = self.uids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(calls) = uids.get(&uid).and_then(Weak::upgrade) {
            return calls;
        }
        uids.retain(|_, w| w.strong_count() > 0);
        let calls = Arc::new(UidCalls {
            uid,
            count: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
        });
        uids.insert(uid, Arc::downgrade(&calls));
        calls
    }

    /// Marks a call of `uid` in flight as parked in a host wait until the guard drops: it then
    /// does not count against the calls-in-flight quotas (it still counts for the shutdown
    /// drain).
    pub(crate) fn park(self: &Arc<Self>, uid: u32) -> Parked {
        self.parked.fetch_add(1, Ordering::AcqRel);
        let calls = self
            .uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&uid)
            .and_then(Weak::upgrade);
        if let Some(u) = &calls {
            u.parked.fetch_add(1, Ordering::AcqRel);
        }
        Parked(self.clone(), calls)
    }

    /// Calls parked in host waits now.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Admits one call of `uid` (its count from [`InFlight::uid`]; `None` counts the call for
    /// no uid), or refuses it (RESOURCE_EXHAUSTED, naming the quota) when the uid has
    /// `per_uid` calls in flight, or everybody `limit`, not parked. The call counts until the
    /// guard drops.
    pub(crate) fn admit(
        self: &Arc<Self>,
        uid: Option<&Arc<UidCalls>>,
    ) -> Result<Admitted, crate::error::Error> {
        // The uid's own limit first: a call it refuses never counts against the total, even
        // for an instant, so that a flooding uid cannot get another uid's call refused.
        if let Some(u) = uid {
            let mine = u.count.fetch_add(1, Ordering::AcqRel);
            if mine.saturating_sub(u.parked.load(Ordering::Acquire)) >= self.per_uid {
                u.count.fetch_sub(1, Ordering::AcqRel);
                self.shed.fetch_add(1, Ordering::Relaxed);
                self.shed_per_uid.fetch_add(1, Ordering::Relaxed);
                return Err(crate::error::Error::Quota {
                    what: SHED_PER_UID_QUOTA,
                    limit: self.per_uid as u64,
                    scope: format!(", uid {}", u.uid),
                });
            }
        }
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self.clone(), uid.cloned());
        let active = before.saturating_sub(self.parked.load(Ordering::Acquire));
        if active >= self.limit {
            drop(admitted);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(crate::error::Error::Quota {
                what: SHED_QUOTA,
                limit: self.limit as u64,
                scope: String::new(),
            });
        }
        Ok(admitted)
    }

    /// Calls refused so far because `limit` calls, or `per_uid` of the caller's uid, were in
    /// flight.
    pub(crate) fn shed(&self) -> usize {
        self.shed.load(Ordering::Relaxed)
    }

    /// Of [`InFlight::shed`], those refused by the caller's uid's own limit.
    pub(crate) fn shed_per_uid(&self) -> usize {
        self.shed_per_uid.load(Ordering::Relaxed)
    }

    /// Calls in flight now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no call is in flight, or after `timeout`. Returns whether it drained.
    pub(crate) async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// The quotas' names in refusals and in `gpushare_quota_refusals_total`.
pub(crate) const SHED_QUOTA: &str = "calls in flight";
/// See [`SHED_QUOTA`].
pub(crate) const SHED_PER_UID_QUOTA: &str = "calls in flight per uid";

/// An admitted call ([`InFlight::admit`]); it stops counting when dropped.
#[derive(Debug)]
pub(crate) struct Admitted(Arc<InFlight>, Option<Arc<UidCalls>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        // The total first: while the uid still counts this call, no other call of the uid can
        // take its place in the total yet (the reverse of `admit`'s order).
        let last = self.0.count.fetch_sub(1, Ordering::AcqRel) == 1;
        if let Some(u) = &self.1 {
            u.count.fetch_sub(1, Ordering::AcqRel);
        }
        if last {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn admits_up_to_the_limit_and_parked_calls_make_room() {
        let f = Arc::new(InFlight::with_limits(1, usize::MAX));
        let first = f.admit(None).expect("the first call fits");
        let refused = f.admit(None).expect_err("past the limit");
        assert!(
            matches!(
                refused,
                Error::Quota {
                    what: SHED_QUOTA,
                    limit: 1,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!((f.count(), f.shed()), (1, 1));
        // A parked call leaves room for another.
        let parked = f.park(0);
        let second = f.admit(None).expect("the first call is parked");
        drop(parked);
        assert!(f.admit(None).is_err());
        assert_eq!((f.count(), f.shed()), (2, 2));
        drop((first, second));
        assert_eq!(f.count(), 0);
        f.admit(None).expect("room again");
    }

    #[test]
    fn each_uid_has_its_own_limit_under_the_total() {
        let f = Arc::new(InFlight::with_limits(3, 2));
        let (a, b) = (f.uid(1000), f.uid(1001));
        assert!(Arc::ptr_eq(&a, &f.uid(1000)), "one count per uid");
        let a1 = f.admit(Some(&a)).unwrap();
        let _a2 = f.admit(Some(&a)).unwrap();
        let refused = f.admit(Some(&a)).expect_err("uid 1000 is at its limit");
        assert!(
            matches!(&refused, Error::Quota { what: SHED_PER_UID_QUOTA, limit: 2, scope } if scope == ", uid 1000"),
            "{refused:?}"
        );
        // Another uid still gets the room uid 1000 could not take.
        let b1 = f.admit(Some(&b)).expect("uid 1001 has room");
        // Now the total is reached: anybody is refused, naming the total.
        let total = f.admit(Some(&b)).expect_err("the total is reached");
        assert!(
            matches!(
                total,
                Error::Quota {
                    what: SHED_QUOTA,
                    ..
                }
            ),
            "{total:?}"
        );
        assert_eq!((f.shed(), f.shed_per_uid()), (2, 1));
        // A parked call of uid 1000 makes room for that uid and for the total.
        drop(b1);
        let parked = f.park(1000);
        let _a3 = f
            .admit(Some(&a))
            .expect("uid 1000's parked call does not count");
        drop(parked);
        drop(a1);
        assert_eq!(f.count(), 2);
        // Counts of uids with no connection left are dropped.
        drop(b);
        let _c = f.uid(1002);
        assert_eq!(f.uids.lock().unwrap().len(), 2);
    }
}
