//! Per-uid counts of things that live as long as a call or a stream (pending waits, Watch
//! streams, connections), each held by an RAII [`Held`] that gives its slot back when dropped,
//! however the call or stream ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Refusals per quota since the daemon started (the `gpushare_quota_refusals_total` metric).
static REFUSALS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// The error for quota `what` (value `limit`, `scope` such as `, uid 1000`), counted.
pub fn refused(what: &'static str, limit: u64, scope: String) -> Error {
    *REFUSALS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(what)
        .or_default() += 1;
    tracing::debug!(quota = what, limit, scope = %scope, "refused by quota");
    Error::Quota { what, limit, scope }
}

/// Refusals so far, per quota.
pub fn refusals() -> Vec<(&'static str, u64)> {
    REFUSALS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(w, n)| (*w, *n))
        .collect()
}

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counted {
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
    pub fn what(self) -> &'static str {
        match self {
            Counted::PendingWaits => "pending waits per uid",
            Counted::Watches => "Watch streams per uid",
            Counted::ControlConnections => "control.sock connections per uid",
            Counted::FdConnections => "fd.sock connections per uid",
        }
    }
}

/// The counts, per uid and kind, plus totals per kind.
#[derive(Debug, Default)]
pub struct Counters {
    map: Mutex<HashMap<(u32, Counted), u64>>,
    totals: Mutex<HashMap<Counted, u64>>,
}

/// One counted slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct Held {
    counters: Arc<Counters>,
    uid: u32,
    kind: Counted,
}

impl Counters {
    /// Takes a slot of `kind` for `uid`, refusing past `per_uid` for the uid or `total` for
    /// everybody (0: no total).
    pub fn acquire(
        self: &Arc<Self>,
        uid: u32,
        kind: Counted,
        per_uid: u64,
        total: u64,
    ) -> Result<Held> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry((uid, kind)).or_default();
        if *n >= per_uid {
            return Err(crate::quota::refused(
                kind.what(),
                per_uid,
                format!(", uid {uid}"),
            ));
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
        *n += 1;
        *t += 1;
        Ok(Held {
            counters: self.clone(),
            uid,
            kind,
        })
    }

    /// Slots of `kind` held by `uid` now.
    pub fn held(&self, uid: u32, kind: Counted) -> u64 {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(uid, kind)).copied().unwrap_or(0)
    }

    /// Slots of `kind` held by everybody now.
    pub fn total(&self, kind: Counted) -> u64 {
        let totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        totals.get(&kind).copied().unwrap_or(0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self.counters.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&(self.uid, self.kind)) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&(self.uid, self.kind));
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
        let a1 = c.acquire(1, k, 2, 3).unwrap();
        let _a2 = c.acquire(1, k, 2, 3).unwrap();
        assert!(matches!(
            c.acquire(1, k, 2, 3),
            Err(Error::Quota { limit: 2, .. })
        ));
        let _b1 = c.acquire(2, k, 2, 3).unwrap();
        // The total is reached: uid 3 is refused although it holds nothing.
        assert!(matches!(
            c.acquire(3, k, 2, 3),
            Err(Error::Quota { limit: 3, .. })
        ));
        assert_eq!((c.held(1, k), c.total(k)), (2, 3));
        drop(a1);
        assert_eq!((c.held(1, k), c.total(k)), (1, 2));
        let _a3 = c.acquire(1, k, 2, 3).unwrap();
        // Another kind is counted apart.
        let _w = c.acquire(1, Counted::Watches, 1, 0).unwrap();
        assert!(c.acquire(1, Counted::Watches, 1, 0).is_err());
    }
}
