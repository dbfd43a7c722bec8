//! Per-uid and per-session counts of things that live as long as a call or a stream (pending
//! waits, Watch streams, connections), each held by an RAII [`Held`] that gives its slot back
//! when dropped, however the call or stream ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Refusals per quota since the daemon started (the `gpushare_quota_refusals_total` metric).
static REFUSALS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// The error for quota `what` (value `limit`, `scope` such as `, uid 1000`), counted.
pub(crate) fn refused(what: &'static str, limit: u64, scope: String) -> Error {
    *REFUSALS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(what)
        .or_default() += 1;
    tracing::debug!(quota = what, limit, scope = %scope, "refused by quota");
    Error::Quota { what, limit, scope }
}

/// Refusals so far, per quota.
pub(crate) fn refusals() -> Vec<(&'static str, u64)> {
    REFUSALS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(w, n)| (*w, *n))
        .collect()
}

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Counted {
    /// Wait calls and daemon operations waiting for their wait points.
    PendingWaits,
    /// Open Watch streams.
    Watches,
    /// Connections on control.sock.
    ControlConnections,
    /// Connections on fd.sock.
    FdConnections,
}

impl Counted {
    /// The quota's name in errors and logs.
    pub(crate) fn what(self) -> &'static str {
        match self {
            Counted::PendingWaits => "pending waits per uid",
            Counted::Watches => "Watch streams per uid",
            Counted::ControlConnections => "control.sock connections per uid",
            Counted::FdConnections => "fd.sock connections per uid",
        }
    }

    /// The per-session quota's name.
    fn what_per_session(self) -> &'static str {
        match self {
            Counted::PendingWaits => "pending waits per session",
            Counted::Watches => "Watch streams per session",
            Counted::ControlConnections => "control.sock connections per session",
            Counted::FdConnections => "fd.sock connections per session",
        }
    }
}

/// Whose slots a count is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    Uid(u32),
    /// A client session (also counted in its uid's).
    Session(String),
}

/// The counts, per uid or session and kind, plus totals per kind.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    map: Mutex<HashMap<(Scope, Counted), u64>>,
    totals: Mutex<HashMap<Counted, u64>>,
}

/// One counted slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct Held {
    counters: Arc<Counters>,
    uid: u32,
    session: Option<String>,
    kind: Counted,
}

impl Counters {
    /// Takes a slot of `kind` for `uid`, refusing past `per_uid` for the uid or `total` for
    /// everybody (0: no total). With `session` (its id and quota), the slot counts against the
    /// session too.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        uid: u32,
        session: Option<(&str, u64)>,
        kind: Counted,
        per_uid: u64,
        total: u64,
    ) -> Result<Held> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&(Scope::Uid(uid), kind)).copied().unwrap_or(0) >= per_uid {
            return Err(crate::quota::refused(
                kind.what(),
                per_uid,
                format!(", uid {uid}"),
            ));
        }
        if let Some((sid, per_session)) = session {
            let key = (Scope::Session(sid.to_owned()), kind);
            if map.get(&key).copied().unwrap_or(0) >= per_session {
                return Err(crate::quota::refused(
                    kind.what_per_session(),
                    per_session,
                    format!(", uid {uid}"),
                ));
            }
        }
        let t = totals.entry(kind).or_default();
        if total > 0 && *t >= total {
            return Err(crate::quota::refused(
                match kind {
                    Counted::ControlConnections => "control.sock connections",
                    Counted::FdConnections => "fd.sock connections",
                    other => other.what(),
                },
                total,
                String::new(),
            ));
        }
        *t += 1;
        *map.entry((Scope::Uid(uid), kind)).or_default() += 1;
        let session = session.map(|(sid, _)| sid.to_owned());
        if let Some(sid) = &session {
            *map.entry((Scope::Session(sid.clone()), kind)).or_default() += 1;
        }
        Ok(Held {
            counters: self.clone(),
            uid,
            session,
            kind,
        })
    }

    /// Slots of `kind` held by `uid` now.
    #[cfg(test)]
    fn held(&self, uid: u32, kind: Counted) -> u64 {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(Scope::Uid(uid), kind)).copied().unwrap_or(0)
    }

    /// Slots of `kind` held by session `sid` now.
    #[cfg(test)]
    fn held_by_session(&self, sid: &str, kind: Counted) -> u64 {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(Scope::Session(sid.to_owned()), kind))
            .copied()
            .unwrap_or(0)
    }

    /// Slots of `kind` held by everybody now.
    #[cfg(test)]
    fn total(&self, kind: Counted) -> u64 {
        let totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        totals.get(&kind).copied().unwrap_or(0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self.counters.map.lock().unwrap_or_else(|p| p.into_inner());
        let session = self.session.take().map(Scope::Session);
        for scope in std::iter::once(Scope::Uid(self.uid)).chain(session) {
            let key = (scope, self.kind);
            if let Some(n) = map.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        drop(map);
        let mut totals = self
            .counters
            .totals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(t) = totals.get_mut(&self.kind) {
            *t = t.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_uid_and_in_total_and_given_back() {
        let c = Arc::new(Counters::default());
        let k = Counted::PendingWaits;
        let a1 = c.acquire(1, None, k, 2, 3).unwrap();
        let _a2 = c.acquire(1, None, k, 2, 3).unwrap();
        assert!(matches!(
            c.acquire(1, None, k, 2, 3),
            Err(Error::Quota { limit: 2, .. })
        ));
        let _b1 = c.acquire(2, None, k, 2, 3).unwrap();
        // The total is reached: uid 3 is refused although it holds nothing.
        assert!(matches!(
            c.acquire(3, None, k, 2, 3),
            Err(Error::Quota { limit: 3, .. })
        ));
        assert_eq!((c.held(1, k), c.total(k)), (2, 3));
        drop(a1);
        assert_eq!((c.held(1, k), c.total(k)), (1, 2));
        let _a3 = c.acquire(1, None, k, 2, 3).unwrap();
        // Another kind is counted apart.
        let _w = c.acquire(1, None, Counted::Watches, 1, 0).unwrap();
        assert!(c.acquire(1, None, Counted::Watches, 1, 0).is_err());
    }

    #[test]
    fn a_session_is_counted_apart_and_within_its_uid() {
        let c = Arc::new(Counters::default());
        let k = Counted::PendingWaits;
        let a1 = c.acquire(1, Some(("a", 2)), k, 3, 0).unwrap();
        let _a2 = c.acquire(1, Some(("a", 2)), k, 3, 0).unwrap();
        // Session a is full; session b of the same uid is not, until the uid is.
        let e = c.acquire(1, Some(("a", 2)), k, 3, 0).unwrap_err();
        assert!(
            e.to_string().contains("pending waits per session (limit 2"),
            "{e}"
        );
        let _b1 = c.acquire(1, Some(("b", 2)), k, 3, 0).unwrap();
        let e = c.acquire(1, Some(("b", 2)), k, 3, 0).unwrap_err();
        assert!(
            e.to_string().contains("pending waits per uid (limit 3"),
            "{e}"
        );
        assert_eq!((c.held(1, k), c.held_by_session("a", k)), (3, 2));
        // A slot given back is given back to both.
        drop(a1);
        assert_eq!((c.held(1, k), c.held_by_session("a", k)), (2, 1));
        let _a3 = c.acquire(1, Some(("a", 2)), k, 3, 0).unwrap();
        assert_eq!(c.held_by_session("b", k), 1);
    }
}
