//! The rules every host wait follows, whichever way it is asked for (a Wait call, an fd.sock
//! wait, a daemon operation's wait points): the semaphores are looked up with the caller's
//! access (NOT_FOUND otherwise); the wait holds one slot of the pending-waits quotas (per uid,
//! and per session when the call names one) for as long as it waits; a call in flight is
//! *parked* meanwhile (it does not count against the calls-in-flight quotas); the time it may
//! take is capped by `limits.max_wait_timeout_ms` and the call's own deadline; a semaphore that
//! ends meanwhile ends the wait with ABORTED, saying why (abandoned or freed); shutdown ends it
//! with UNAVAILABLE.
//!
//! Watch streams follow the same lookup and count against their own quotas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Daemon;
use crate::access::Caller;
use crate::error::Result;
use crate::quota::{Counted, Held};
use crate::semaphore::Semaphore;
use crate::waits::{DirectReply, WatchState};

/// How much earlier than a call's deadline a wait gives up, so that the caller gets
/// DEADLINE_EXCEEDED from the wait rather than its transport's own cancellation.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// How a wait was asked for, which decides how it counts and how it is answered.
pub(crate) enum Asked {
    /// By a call in flight (gRPC Wait, an operation's wait points): parked while it waits.
    Call,
    /// A frame-stream acquire's `host_wait`: the poller reads the counters continuously for
    /// `spin` first; `parked` when it is a call in flight (gRPC; fd.sock's calls are not).
    Spinning {
        /// How long to read continuously first.
        spin: Duration,
        /// Whether it is a call in flight, to park.
        parked: bool,
    },
    /// On fd.sock (not a call in flight): the poller spins for `spin` first, and the thread
    /// that sees the value sends `reply` itself.
    Socket {
        /// How long to read the counter continuously first (capped: [`Daemon::spin`]).
        spin: Duration,
        /// The answer, sent by the thread that saw the value.
        reply: DirectReply,
    },
}

/// A point to wait for: a semaphore and the value it must reach.
#[derive(Debug, Clone)]
pub(crate) struct WaitPoint {
    /// The semaphore.
    pub(crate) sem: Arc<Semaphore>,
    /// The daemon device it lives on.
    pub(crate) device: u32,
    /// The value.
    pub(crate) value: u64,
}

/// How a wait ended well.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waited {
    /// The value seen on the last point.
    pub(crate) value: u64,
    /// Whether the wait service's thread already sent the answer ([`Asked::Socket`]).
    pub(crate) replied: bool,
}

impl Daemon {
    /// The time a wait may take: `asked` (`None`: as long as allowed), capped by the daemon's
    /// `limits.max_wait_timeout_ms` and by the call's `deadline` less a margin.
    pub(crate) fn wait_timeout(
        &self,
        asked: Option<Duration>,
        deadline: Option<Duration>,
    ) -> Duration {
        let max = Duration::from_millis(self.config.limits.max_wait_timeout_ms.into());
        let t = asked.map_or(max, |a| a.min(max));
        match deadline {
            Some(d) => t.min(d.saturating_sub(DEADLINE_MARGIN)),
            None => t,
        }
    }

    /// The spin an fd.sock wait may have: what it asked for, capped by `limits.max_spin_us`.
    pub(crate) fn spin(&self, asked_us: u32) -> Duration {
        Duration::from_micros(asked_us.min(self.config.limits.max_spin_us).into())
    }

    /// Semaphore `id` at `value`, looked up with `caller`'s access.
    pub(crate) fn wait_point(&self, caller: &Caller, id: &str, value: u64) -> Result<WaitPoint> {
        let (res, sem) = self.semaphore(id, caller)?;
        Ok(WaitPoint {
            sem,
            device: res.device,
            value,
        })
    }

    /// Waits until every point in `points` is reached, in order, within `timeout` in all (see
    /// the module docs for the rules). With [`Asked::Socket`], `points` has one point.
    pub(crate) async fn wait_for(
        &self,
        caller: &Caller,
        points: &[WaitPoint],
        timeout: Duration,
        asked: Asked,
    ) -> Result<Waited> {
        let mut waited = Waited {
            value: 0,
            replied: false,
        };
        if points.is_empty() {
            return Ok(waited);
        }
        let _pending = self.hold(
            caller.uid(),
            caller.session.as_deref(),
            Counted::PendingWaits,
        )?;
        let (_parked, mut spin, mut reply) = match asked {
            Asked::Call => (
                Some(self.in_flight.park(caller.uid())),
                Duration::ZERO,
                None,
            ),
            Asked::Spinning { spin, parked } => (
                parked.then(|| self.in_flight.park(caller.uid())),
                spin,
                None,
            ),
            Asked::Socket { spin, reply } => (None, spin, Some(reply)),
        };
        let deadline = Instant::now() + timeout;
        for (i, p) in points.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            // The direct reply answers the last point.
            let direct = if i + 1 == points.len() {
                reply.take()
            } else {
                None
            };
            let (value, replied) = self
                .waits
                .wait_direct(&p.sem, p.value, left, std::mem::take(&mut spin), direct)
                .await?;
            waited = Waited { value, replied };
        }
        Ok(waited)
    }

    /// Watch: a receiver of semaphore `id`'s values, and the quota slot it holds for as long
    /// as the stream lives (`quotas.watches_per_uid`, `watches_per_session`).
    pub(crate) fn watch(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(Arc<Semaphore>, watch::Receiver<WatchState>, Held)> {
        let (_, sem) = self.semaphore(id, caller)?;
        let held = self.hold(caller.uid(), caller.session.as_deref(), Counted::Watches)?;
        let rx = self.waits.watch(&sem)?;
        Ok((sem, rx, held))
    }
}
