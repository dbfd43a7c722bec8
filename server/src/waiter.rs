//! The host-wait service: Wait calls, Watch streams and daemon-executed operations' wait points
//! all wait here, on one poller thread, never a thread per wait.
//!
//! Why polling: on NVIDIA a host blocked in `vkWaitSemaphores` on a semaphore that another
//! process signals wakes about 10 ms late, while reading the counter costs well under a
//! microsecond (`../shared/GPU.md`). So the poller reads the counters of the semaphores that have
//! waiters, tightly while waits are young and backing off as they age (see [`poll_interval`]),
//! and signals that come through the daemon itself wake it at once ([`WaitService::notify`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gpushare_interop::vulkan::TimelineSemaphore;
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};

/// Why a wait or a watch ended without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The semaphore was freed.
    Freed,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The semaphore was abandoned (its signaler's session ended).
    Abandoned,
}

/// What Watch streams see: the latest value, and why the stream ends once it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchState {
    /// The latest value read.
    pub value: u64,
    /// Set once the stream must end.
    pub end: Option<End>,
}

/// A wait that has not been satisfied yet ([`WaitService::pending_by_semaphore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingWait {
    /// The value waited for.
    pub target: u64,
    /// How long it has been waiting.
    pub age: Duration,
}

struct Waiter {
    target: u64,
    since: Instant,
    tx: oneshot::Sender<std::result::Result<u64, End>>,
}

struct Watched {
    sem: Arc<TimelineSemaphore>,
    last: u64,
    waiters: Vec<Waiter>,
    watch: Option<watch::Sender<WatchState>>,
}

#[derive(Default)]
struct State {
    sems: HashMap<String, Watched>,
    /// Abandoned semaphores: waits on them end with ABORTED, whatever their value.
    abandoned: HashSet<String>,
    /// Poll now instead of sleeping out the interval.
    kick: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the state is still consistent (every
        // mutation is a single insert/remove), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The wait service. Dropping it (or [`WaitService::shutdown`]) ends every wait with
/// `UNAVAILABLE` and joins the poller thread.
pub struct WaitService {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for WaitService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitService").finish_non_exhaustive()
    }
}

/// How long the poller sleeps, given the age of its youngest pending wait (None: only watches).
///
/// Reading a counter costs well under a microsecond; what polling costs is the poller's
/// wake-ups. Young waits (a pipeline's next frame) get a 20 µs cadence; a wait that has gone
/// on for seconds costs one wake-up per millisecond.
pub fn poll_interval(youngest_wait: Option<Duration>) -> Duration {
    match youngest_wait {
        None => Duration::from_millis(1),
        Some(age) if age < Duration::from_millis(2) => Duration::from_micros(20),
        Some(age) if age < Duration::from_millis(20) => Duration::from_micros(50),
        Some(age) if age < Duration::from_millis(200) => Duration::from_micros(100),
        Some(age) if age < Duration::from_secs(2) => Duration::from_micros(250),
        Some(_) => Duration::from_millis(1),
    }
}

impl WaitService {
    /// Starts the poller thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("gpushare-waits".into())
            .spawn({
                let shared = shared.clone();
                move || poll_loop(&shared)
            })?;
        Ok(Arc::new(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Waits until semaphore `id` reaches `target`, at most `timeout`. Returns the value seen.
    pub async fn wait(
        &self,
        id: &str,
        sem: &Arc<TimelineSemaphore>,
        target: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let abandoned = || Err(Error::Abandoned(id.to_owned()));
        let value = sem
            .value()
            .map_err(Error::gpu("reading a semaphore value"))?;
        // `abandon` marks before the poison is signaled, so a value the poison reached is seen
        // together with the mark.
        if self.shared.lock().abandoned.contains(id) {
            return abandoned();
        }
        if value >= target {
            return Ok(value);
        }
        let timed_out = || Error::WaitTimeout {
            id: id.to_owned(),
            value: target,
            timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
        };
        if timeout.is_zero() {
            return Err(timed_out());
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.shutdown {
                return Err(Error::ShuttingDown);
            }
            if st.abandoned.contains(id) {
                return abandoned();
            }
            st.sems
                .entry(id.to_owned())
                .or_insert_with(|| Watched {
                    sem: sem.clone(),
                    last: value,
                    waiters: Vec::new(),
                    watch: None,
                })
                .waiters
                .push(Waiter {
                    target,
                    since: Instant::now(),
                    tx,
                });
            st.kick = true;
        }
        self.shared.wake.notify_one();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(End::Freed))) => Err(Error::SemaphoreFreed(id.to_owned())),
            Ok(Ok(Err(End::Abandoned))) => abandoned(),
            Ok(Ok(Err(End::ShuttingDown))) | Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(timed_out()),
        }
    }

    /// Subscribes to semaphore `id`'s values. The receiver starts at the current value.
    pub fn watch(
        &self,
        id: &str,
        sem: &Arc<TimelineSemaphore>,
    ) -> Result<watch::Receiver<WatchState>> {
        let value = sem
            .value()
            .map_err(Error::gpu("reading a semaphore value"))?;
        let rx = {
            let mut st = self.shared.lock();
            if st.shutdown {
                return Err(Error::ShuttingDown);
            }
            let w = st.sems.entry(id.to_owned()).or_insert_with(|| Watched {
                sem: sem.clone(),
                last: value,
                waiters: Vec::new(),
                watch: None,
            });
            match &w.watch {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(WatchState {
                        value: w.last.max(value),
                        end: None,
                    });
                    w.watch = Some(tx);
                    rx
                }
            }
        };
        self.notify();
        Ok(rx)
    }

    /// Polls now: a semaphore may have changed (the daemon just signaled it).
    pub fn notify(&self) {
        self.shared.lock().kick = true;
        self.shared.wake.notify_one();
    }

    /// Semaphore `id` is abandoned: its waits and watches end with ABORTED now, and so does every
    /// later wait on it. Call before signaling its poison value.
    pub fn abandon(&self, id: &str) {
        let removed = {
            let mut st = self.shared.lock();
            st.abandoned.insert(id.to_owned());
            st.sems.remove(id)
        };
        if let Some(w) = removed {
            end_all(w, End::Abandoned);
        }
    }

    /// Semaphore `id` was freed: its waits end with ABORTED and its watches with NOT_FOUND.
    pub fn forget(&self, id: &str) {
        let removed = {
            let mut st = self.shared.lock();
            st.abandoned.remove(id);
            st.sems.remove(id)
        };
        if let Some(w) = removed {
            end_all(w, End::Freed);
        }
    }

    /// Number of pending waits (for introspection and tests).
    pub fn pending_waits(&self) -> usize {
        self.shared
            .lock()
            .sems
            .values()
            .map(|w| w.waiters.len())
            .sum()
    }

    /// The pending waits per semaphore id: each wait's target and age, oldest first (for
    /// introspection). Waits whose caller already gave up (timed out, cancelled) are left out.
    /// Holds the poller's lock only to copy the targets and start times out.
    pub fn pending_by_semaphore(&self) -> HashMap<String, Vec<PendingWait>> {
        let copied: Vec<(String, Vec<(u64, Instant)>)> = {
            let st = self.shared.lock();
            st.sems
                .iter()
                .filter(|(_, w)| !w.waiters.is_empty())
                .map(|(id, w)| {
                    let waits = w
                        .waiters
                        .iter()
                        .filter(|x| !x.tx.is_closed())
                        .map(|x| (x.target, x.since))
                        .collect();
                    (id.clone(), waits)
                })
                .collect()
        };
        let now = Instant::now();
        copied
            .into_iter()
            .filter(|(_, waits)| !waits.is_empty())
            .map(|(id, mut waits)| {
                waits.sort_by_key(|&(_, since)| since);
                let waits = waits
                    .into_iter()
                    .map(|(target, since)| PendingWait {
                        target,
                        age: now.saturating_duration_since(since),
                    })
                    .collect();
                (id, waits)
            })
            .collect()
    }

    /// Ends every wait and watch with UNAVAILABLE and stops the poller thread.
    pub fn shutdown(&self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
        }
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the wait poller thread panicked");
            }
        }
    }
}

impl Drop for WaitService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn end_all(w: Watched, end: End) {
    for waiter in w.waiters {
        let _ = waiter.tx.send(Err(end));
    }
    if let Some(tx) = w.watch {
        tx.send_modify(|s| s.end = Some(end));
    }
}

fn poll_loop(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        if st.shutdown {
            for (_, w) in st.sems.drain() {
                end_all(w, End::ShuttingDown);
            }
            return;
        }
        if st.sems.is_empty() {
            st.kick = false;
            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let now = Instant::now();
        let mut youngest: Option<Duration> = None;
        for (id, w) in st.sems.iter_mut() {
            w.waiters.retain(|x| !x.tx.is_closed());
            if w.watch.as_ref().is_some_and(|tx| tx.receiver_count() == 0) {
                w.watch = None;
            }
            let value = match w.sem.value() {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(semaphore = %id, error = %e, "cannot read semaphore value");
                    continue;
                }
            };
            if value != w.last {
                w.last = value;
                if let Some(tx) = &w.watch {
                    tx.send_modify(|s| s.value = value);
                }
            }
            let mut i = 0;
            while i < w.waiters.len() {
                if w.waiters[i].target <= value {
                    let _ = w.waiters.swap_remove(i).tx.send(Ok(value));
                } else {
                    let age = now.saturating_duration_since(w.waiters[i].since);
                    youngest = Some(youngest.map_or(age, |y| y.min(age)));
                    i += 1;
                }
            }
        }
        st.sems
            .retain(|_, w| !w.waiters.is_empty() || w.watch.is_some());
        if st.kick {
            st.kick = false;
            continue;
        }
        let interval = poll_interval(youngest);
        st = shared
            .wake
            .wait_timeout_while(st, interval, |s| !s.kick && !s.shutdown)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_backs_off_with_age() {
        let young = poll_interval(Some(Duration::from_micros(100)));
        let old = poll_interval(Some(Duration::from_secs(5)));
        assert!(young < old);
        assert!(young <= Duration::from_micros(50));
        assert!(old <= Duration::from_millis(10));
        let mut last = Duration::ZERO;
        for ms in [0, 2, 20, 200, 2000] {
            let i = poll_interval(Some(Duration::from_millis(ms)));
            assert!(i >= last, "interval shrank at {ms} ms");
            last = i;
        }
    }
}
