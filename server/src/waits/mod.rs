//! The host-wait service: Wait calls, Watch streams, fd.sock waits and daemon-executed
//! operations' wait points all wait here, on a fixed set of threads (one poller, plus one
//! driver-wait thread per device), never a thread per wait. This file is the bookkeeping: who
//! waits for what, and one [`scan`] that completes what is due; [`poller`] and [`driver`] are
//! the two threads that call it.
//!
//! What can change a semaphore decides how it is watched:
//! - **Semaphores that never leave the daemon** (not exportable: lavapipe cannot export
//!   semaphores) change only through the daemon itself: host signals, its operations' signal
//!   points, the poison value. Each of those wakes the poller ([`Observer::changed`], from
//!   `semaphore.rs`), so these are read on those wake-ups only, plus a slow backstop
//!   ([`poller::UNEXPORTED_BACKSTOP`]): a pending wait on one costs no CPU.
//! - **Exportable semaphores** may be signaled by any process that imported them, on its GPU
//!   or its host, without the daemon hearing of it. Two mechanisms watch them, each a backstop
//!   for the other:
//!   - **Driver waits** ([`driver`]): one thread per device blocks in `vkWaitSemaphores` over
//!     them. On the H100 this wakes within microseconds of a signal from another process and
//!     costs no CPU while nothing happens (`bench/README.md`). A driver whose wait-any
//!     busy-loops instead of blocking is caught by the thread's own CPU clock and its waits
//!     are polled instead.
//!   - **Polling** ([`poller`]): one thread reads their counters, tightly while a wait is young,
//!     backing off as it ages. A driver may wake late (`../shared/GPU.md` recorded
//!     `vkWaitSemaphores` waking ~10 ms late on NVIDIA for a semaphore another process
//!     signals), while reading a counter costs well under a microsecond.
//!
//! A semaphore that ends (abandoned or freed: [`Semaphore::end`]) ends its waits and watches
//! with why ([`End`]): every scan reads a semaphore's value, then whether it ended, so the
//! poison value that ending signals is never mistaken for the value waited for.
//!
//! Which mechanism completed each wait is counted ([`WaitService::wakeups`], the
//! `gpushare_wait_wakeups_total` metric).

mod driver;
mod poller;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::log_budget::LogBudget;
use crate::semaphore::{Ended, Observer, Semaphore};

use poller::Backing;

/// Why a wait or a watch ended without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The semaphore ended: abandoned or freed.
    Ended(Ended),
    /// The daemon is shutting down.
    ShuttingDown,
}

/// What Watch streams see: the latest value, and why the stream ends once it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WatchState {
    /// The latest value read.
    pub(crate) value: u64,
    /// Set once the stream must end.
    pub(crate) end: Option<End>,
}

/// A wait that has not been satisfied yet ([`WaitService::pending_by_semaphore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingWait {
    /// The value waited for.
    pub(crate) target: u64,
    /// How long it has been waiting.
    pub(crate) age: Duration,
}

/// How a wait ends: the value and whether its direct reply was sent ([`WaitService::wait_direct`]),
/// or why it ended without the value.
type Outcome = std::result::Result<(u64, bool), End>;

/// Sends a wait's answer from the thread that saw its value; returns whether it was delivered.
pub(crate) type DirectReply = Box<dyn FnOnce(u64) -> bool + Send>;

struct Waiter {
    target: u64,
    since: Instant,
    /// Until then the poller reads counters without sleeping (the wait asked to spin).
    spin_until: Option<Instant>,
    tx: oneshot::Sender<Outcome>,
    direct: Option<Direct>,
}

/// A direct reply and the flag that makes sending it and the waiter's timeout exclusive:
/// whoever sets `claimed` first (the thread that saw the value, or the timed-out caller)
/// answers.
struct Direct {
    claimed: Arc<AtomicBool>,
    reply: DirectReply,
}

struct Watched {
    sem: Arc<Semaphore>,
    /// Whether the value can change without the daemon: the semaphore is exportable, so other
    /// processes may signal it. Only these are polled on a timer and waited on by the driver.
    external: bool,
    last: u64,
    /// When `last` last changed (or the entry was made): a watched semaphore that moved
    /// recently is polled as tightly as a young wait.
    changed: Instant,
    waiters: Vec<Waiter>,
    watch: Option<watch::Sender<WatchState>>,
}

#[derive(Default)]
struct State {
    sems: HashMap<String, Watched>,
    /// Poll now instead of sleeping out the interval.
    kick: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Waits completed per [`Wakeup`] source.
    wakeups: [AtomicU64; 4],
    /// Set while at least one driver-wait thread runs and none has failed.
    driver_waits: AtomicBool,
    /// How often the driver-wait threads, rather than the poller, noticed a value first: an
    /// exponential average over the waits completed by either, in thousandths. The poller
    /// relaxes its cadence only while this stays above [`TRUSTED`]: a driver that wakes late
    /// lets the poller complete waits, which brings it back to the tight cadence at once.
    driver_trust: AtomicU32,
    /// Tests signal semaphores behind the service's back, as another process would; lavapipe
    /// cannot export semaphores, so there they mark every semaphore external.
    #[cfg(test)]
    all_external: AtomicBool,
}

/// [`Shared::driver_trust`] above which the poller only backstops the driver waits (about 18
/// driver completions in a row from zero; one poller completion drops it below).
const TRUSTED: u32 = 880;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the state is still consistent (every
        // mutation is a single insert/remove), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `sem`'s value can change without the daemon (see the module docs).
    fn external(&self, sem: &Semaphore) -> bool {
        #[cfg(test)]
        if self.all_external.load(Ordering::Relaxed) {
            return true;
        }
        sem.exportable()
    }

    /// A new entry for `sem`, last seen at `value`.
    fn watched(&self, sem: &Arc<Semaphore>, value: u64) -> Watched {
        Watched {
            sem: sem.clone(),
            external: self.external(sem),
            last: value,
            changed: Instant::now(),
            waiters: Vec::new(),
            watch: None,
        }
    }

    /// Updates the trust in driver waits after a wait completed by `by`.
    fn trust(&self, by: Wakeup) {
        let hit = match by {
            Wakeup::Driver => 125,
            Wakeup::Poll | Wakeup::Spin => 0,
            // The daemon's own signals say nothing about the driver.
            Wakeup::Notify => return,
        };
        let _ = self
            .driver_trust
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t - t / 8 + hit)
            });
    }

    /// How the poller stands behind the driver waits now.
    fn backing(&self) -> Backing {
        if !self.driver_waits.load(Ordering::Acquire) {
            Backing::Alone
        } else if self.driver_trust.load(Ordering::Relaxed) > TRUSTED {
            Backing::Trusted
        } else {
            Backing::Driver
        }
    }
}

/// What completed a wait (counted per source: [`WaitService::wakeups`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wakeup {
    /// A driver-wait thread woke in `vkWaitSemaphores`.
    Driver = 0,
    /// The poller's periodic counter read.
    Poll = 1,
    /// A poll the daemon asked for: it signaled the semaphore itself, or a wait was added.
    Notify = 2,
    /// The poller's continuous reads while a wait that asked to spin is young.
    Spin = 3,
}

impl Wakeup {
    /// All sources, in counter order.
    pub(crate) const ALL: [Wakeup; 4] =
        [Wakeup::Driver, Wakeup::Poll, Wakeup::Notify, Wakeup::Spin];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Wakeup::Driver => "driver",
            Wakeup::Poll => "poll",
            Wakeup::Notify => "notify",
            Wakeup::Spin => "spin",
        }
    }
}

/// The wait service. Dropping it (or [`WaitService::shutdown`]) ends every wait with
/// `UNAVAILABLE` and joins its threads.
pub(crate) struct WaitService {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    drivers: driver::Drivers,
}

impl std::fmt::Debug for WaitService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitService").finish_non_exhaustive()
    }
}

impl Observer for WaitService {
    fn changed(&self) {
        self.notify();
    }
}

impl WaitService {
    /// Starts the poller thread. With `driver_waits`, a driver-wait thread starts for each
    /// device on its first wait on an exportable semaphore.
    pub(crate) fn start(driver_waits: bool) -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            wakeups: Default::default(),
            driver_waits: AtomicBool::new(false),
            driver_trust: AtomicU32::new(0),
            #[cfg(test)]
            all_external: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("gpushare-waits".into())
            .spawn({
                let shared = shared.clone();
                move || poller::poll_loop(&shared)
            })?;
        Ok(Arc::new(Self {
            drivers: driver::Drivers::new(driver_waits),
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Waits completed so far, per source ([`Wakeup::ALL`] order).
    pub(crate) fn wakeups(&self) -> [(Wakeup, u64); 4] {
        Wakeup::ALL.map(|w| (w, self.shared.wakeups[w as usize].load(Ordering::Relaxed)))
    }

    /// Whether driver waits are in use (at least one thread runs and none has failed).
    pub(crate) fn driver_waits_active(&self) -> bool {
        self.shared.driver_waits.load(Ordering::Relaxed)
    }

    /// Whether the poller runs at the relaxed cadence now, because the driver waits have been
    /// noticing values before it ([`TRUSTED`]).
    pub(crate) fn poller_relaxed(&self) -> bool {
        self.shared.backing() == Backing::Trusted
    }

    /// Kicks the driver-wait thread of `sem`'s device, starting it on the device's first wait.
    /// Semaphores that never leave the daemon need none (see the module docs).
    fn kick_device(&self, sem: &Semaphore) {
        if self.shared.external(sem) {
            self.drivers.kick(&self.shared, sem.device());
        }
    }

    /// Waits until `sem` reaches `target`, at most `timeout`. Returns the value seen. (The
    /// daemon's waits go through [`WaitService::wait_direct`]: `daemon::wait`.)
    #[cfg(test)]
    pub(crate) async fn wait(
        &self,
        sem: &Arc<Semaphore>,
        target: u64,
        timeout: Duration,
    ) -> Result<u64> {
        self.wait_direct(sem, target, timeout, Duration::ZERO, None)
            .await
            .map(|(value, _)| value)
    }

    /// fd.sock's wait: like [`WaitService::wait`], but for its first `spin` the poller reads
    /// counters without sleeping, and once the value is reached the thread that saw it calls
    /// `reply` (if any) with it at once, before this returns. Returns the value and whether
    /// `reply` was called and delivered; when not (the value was there already, or sending
    /// failed), the caller answers. Exactly one of the two answers: a timeout that races the
    /// value either wins (`reply` is never called) or waits for `reply`'s outcome.
    pub(crate) async fn wait_direct(
        &self,
        sem: &Arc<Semaphore>,
        target: u64,
        timeout: Duration,
        spin: Duration,
        reply: Option<DirectReply>,
    ) -> Result<(u64, bool)> {
        // The value first, then whether it ended: a poison value is seen with its reason.
        let value = sem.value()?;
        if let Some(why) = sem.ended() {
            return Err(sem.ended_error(why));
        }
        if value >= target {
            return Ok((value, false));
        }
        let timed_out = || Error::WaitTimeout {
            id: crate::ids::shown(sem.id()),
            value: target,
            timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
        };
        if timeout.is_zero() {
            return Err(timed_out());
        }
        let (tx, mut rx) = oneshot::channel();
        let claimed = reply.is_some().then(|| Arc::new(AtomicBool::new(false)));
        let direct = reply
            .zip(claimed.clone())
            .map(|(reply, claimed)| Direct { claimed, reply });
        let now = Instant::now();
        let spin_until = (!spin.is_zero()).then(|| now + spin);
        {
            let mut st = self.shared.lock();
            if st.shutdown {
                return Err(Error::ShuttingDown);
            }
            // Registering asks for a scan (`kick`), which ends the wait if the semaphore ended
            // meanwhile.
            st.sems
                .entry(sem.id().to_owned())
                .or_insert_with(|| self.shared.watched(sem, value))
                .waiters
                .push(Waiter {
                    target,
                    since: now,
                    spin_until,
                    tx,
                    direct,
                });
            st.kick = true;
        }
        self.shared.wake.notify_one();
        self.kick_device(sem);
        let outcome = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(outcome) => outcome,
            Err(_) => match &claimed {
                // The thread that saw the value claimed the wait first: its reply is on its way.
                Some(c) if c.swap(true, Ordering::AcqRel) => rx.await,
                _ => return Err(timed_out()),
            },
        };
        match outcome {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(End::Ended(why))) => Err(sem.ended_error(why)),
            Ok(Err(End::ShuttingDown)) | Err(_) => Err(Error::ShuttingDown),
        }
    }

    /// Subscribes to `sem`'s values. The receiver starts at the current value.
    pub(crate) fn watch(&self, sem: &Arc<Semaphore>) -> Result<watch::Receiver<WatchState>> {
        let value = sem.value()?;
        let rx = {
            let mut st = self.shared.lock();
            if st.shutdown {
                return Err(Error::ShuttingDown);
            }
            let w = st
                .sems
                .entry(sem.id().to_owned())
                .or_insert_with(|| self.shared.watched(sem, value));
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
        self.kick_device(sem);
        Ok(rx)
    }

    /// Scans now: a semaphore may have changed (the daemon just signaled it) or ended.
    pub(crate) fn notify(&self) {
        self.shared.lock().kick = true;
        self.shared.wake.notify_one();
    }

    /// Number of pending waits (for introspection and tests).
    pub(crate) fn pending_waits(&self) -> usize {
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
    pub(crate) fn pending_by_semaphore(&self) -> HashMap<String, Vec<PendingWait>> {
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

    /// Ends every wait and watch with UNAVAILABLE and stops the threads. Idempotent.
    pub(crate) fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        self.drivers.stop_all();
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

/// Warnings for failed counter reads: a few a second (`left_out` counts the rest).
static READ_FAILED_LOG: LogBudget = LogBudget::new(5);

/// What a [`scan`] found still pending.
struct Scanned {
    /// The age of the youngest pending wait or recently moved watch on an external semaphore
    /// (`None`: nothing needs a timer).
    youngest: Option<Duration>,
    /// Whether a pending wait asked to spin and is still young enough.
    spin: bool,
}

/// Reads the counter of every semaphore with waiters or watches, then whether it ended;
/// completes the waits whose value was reached (counted as `by`), ends those of semaphores
/// that ended, updates watches and drops entries nothing needs any more. Waits with a direct
/// reply are moved to `direct` with their value, to be answered by [`deliver`] outside the
/// lock.
fn scan(shared: &Shared, st: &mut State, by: Wakeup, direct: &mut Vec<(Waiter, u64)>) -> Scanned {
    let now = Instant::now();
    let mut youngest: Option<Duration> = None;
    let mut spin = false;
    let mut ended = Vec::new();
    for (id, w) in st.sems.iter_mut() {
        w.waiters.retain(|x| !x.tx.is_closed());
        if w.watch.as_ref().is_some_and(|tx| tx.receiver_count() == 0) {
            w.watch = None;
        }
        let value = match w.sem.value() {
            Ok(v) => v,
            Err(e) => {
                // Read at the poller's cadence: a driver that fails every read must not flood
                // the log.
                if let Some(left_out) = READ_FAILED_LOG.admit() {
                    tracing::warn!(semaphore = %id, error = %e, left_out, "cannot read semaphore value");
                }
                continue;
            }
        };
        // After the value: a poison value read above comes with its reason here.
        if let Some(why) = w.sem.ended() {
            ended.push((id.clone(), why));
            continue;
        }
        if value != w.last {
            w.last = value;
            w.changed = now;
            if let Some(tx) = &w.watch {
                tx.send_modify(|s| s.value = value);
            }
        }
        if w.watch.is_some() && w.external {
            let age = now.saturating_duration_since(w.changed);
            youngest = Some(youngest.map_or(age, |y| y.min(age)));
        }
        let mut i = 0;
        while i < w.waiters.len() {
            if w.waiters[i].target <= value {
                let waiter = w.waiters.swap_remove(i);
                if let Some(d) = &waiter.direct {
                    if d.claimed.swap(true, Ordering::AcqRel) {
                        // Its caller timed out first and answered.
                        continue;
                    }
                }
                // Counted before the waiter can see its value.
                shared.wakeups[by as usize].fetch_add(1, Ordering::Relaxed);
                shared.trust(by);
                if waiter.direct.is_some() {
                    direct.push((waiter, value));
                } else {
                    let _ = waiter.tx.send(Ok((value, false)));
                }
            } else {
                let x = &w.waiters[i];
                if w.external {
                    let age = now.saturating_duration_since(x.since);
                    youngest = Some(youngest.map_or(age, |y| y.min(age)));
                }
                spin |= x.spin_until.is_some_and(|until| until > now);
                i += 1;
            }
        }
    }
    for (id, why) in ended {
        if let Some(w) = st.sems.remove(&id) {
            end_all(w, End::Ended(why));
        }
    }
    st.sems
        .retain(|_, w| !w.waiters.is_empty() || w.watch.is_some());
    Scanned { youngest, spin }
}

/// Answers the waits [`scan`] moved out: each direct reply first, then its caller.
fn deliver(direct: &mut Vec<(Waiter, u64)>) {
    for (waiter, value) in direct.drain(..) {
        let sent = waiter.direct.is_some_and(|d| (d.reply)(value));
        let _ = waiter.tx.send(Ok((value, sent)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semaphore::tests::device;

    /// A semaphore of `device` at 0 in `svc`'s care, named `id`.
    fn semaphore(
        device: &Arc<gpushare_interop::vulkan::Device>,
        svc: &Arc<WaitService>,
        id: &str,
    ) -> Arc<Semaphore> {
        let timeline = device.create_timeline_semaphore(0, false).unwrap();
        Arc::new(Semaphore::new(id.into(), timeline, svc.clone()))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Waits signaled behind the service's back (as another process would) complete, and the
    /// counters say which mechanism saw them: with driver waits on, the driver thread sees some
    /// of them first (it races the poller); with them off, only the poller does.
    #[test]
    fn direct_signals_wake_waits_through_the_driver_or_the_poller() {
        let Some(device) = device() else { return };
        let rt = runtime();
        for driver in [true, false] {
            let svc = WaitService::start(driver).unwrap();
            svc.shared.all_external.store(true, Ordering::Relaxed);
            let sem = semaphore(&device, &svc, "sem-t");
            const ROUNDS: u64 = 20;
            for round in 1..=ROUNDS {
                let signaler = std::thread::spawn({
                    let sem = sem.clone();
                    let svc = svc.clone();
                    move || {
                        // Signal only once the wait is registered, then a little later.
                        while svc.pending_waits() == 0 {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                        sem.timeline().signal(round).unwrap();
                    }
                });
                let got = rt
                    .block_on(svc.wait(&sem, round, Duration::from_secs(10)))
                    .unwrap();
                assert!(got >= round);
                signaler.join().unwrap();
            }
            let counts = svc.wakeups();
            let by = |w: Wakeup| counts.iter().find(|(x, _)| *x == w).unwrap().1;
            assert_eq!(
                by(Wakeup::Driver) + by(Wakeup::Poll) + by(Wakeup::Notify) + by(Wakeup::Spin),
                ROUNDS,
                "{counts:?}"
            );
            assert_eq!(svc.driver_waits_active(), driver);
            if driver {
                // The driver thread and the tight poller race for each signal (the poller
                // relaxes only once the driver has won many in a row); on a loaded machine the
                // poller may win often, but the driver path must work.
                assert!(by(Wakeup::Driver) >= 1, "{counts:?}");
                if by(Wakeup::Driver) == ROUNDS {
                    assert!(svc.poller_relaxed(), "20 driver completions in a row");
                }
            } else {
                assert!(!svc.poller_relaxed());
                assert_eq!(by(Wakeup::Driver), 0, "{counts:?}");
            }
            svc.shutdown();
            assert_eq!(svc.pending_waits(), 0);
        }
    }

    /// A semaphore that never leaves the daemon is read when the daemon says it changed, not on
    /// a timer: a change behind the service's back (which cannot happen to it) is seen only by
    /// the slow backstop, and one through the semaphore's own signal at once, by the notify
    /// path.
    #[test]
    fn unexported_semaphores_are_read_on_notify_not_on_a_timer() {
        let Some(device) = device() else { return };
        let rt = runtime();
        let svc = WaitService::start(true).unwrap();
        let sem = semaphore(&device, &svc, "sem-n");
        assert!(!sem.exportable());
        let notifier = std::thread::spawn({
            let (sem, svc) = (sem.clone(), svc.clone());
            move || {
                while svc.pending_waits() == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                }
                sem.signal(1).unwrap();
            }
        });
        let t = Instant::now();
        rt.block_on(svc.wait(&sem, 1, Duration::from_secs(10)))
            .unwrap();
        notifier.join().unwrap();
        assert!(
            t.elapsed() < poller::UNEXPORTED_BACKSTOP / 2,
            "{:?}",
            t.elapsed()
        );
        let notify = svc.wakeups()[Wakeup::Notify as usize].1;
        assert_eq!(notify, 1, "{:?}", svc.wakeups());
        // Behind the service's back: nothing reads it for the next 300 ms...
        let sneak = std::thread::spawn({
            let (sem, svc) = (sem.clone(), svc.clone());
            move || {
                while svc.pending_waits() == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                }
                // After the scan that registering the wait asked for.
                std::thread::sleep(Duration::from_millis(50));
                sem.timeline().signal(2).unwrap();
            }
        });
        let early = rt.block_on(svc.wait(&sem, 2, Duration::from_millis(300)));
        sneak.join().unwrap();
        assert!(matches!(early, Err(Error::WaitTimeout { .. })), "{early:?}");
        // ...and no driver-wait thread was started for it.
        assert_eq!(svc.drivers.started(), 0);
        svc.shutdown();
    }

    /// A semaphore that ends ends its waits and watches with why, at once, and a later wait on
    /// it fails the same way; its poison value is never taken for the value waited for.
    #[test]
    fn an_ended_semaphore_ends_its_waits_and_watches() {
        let Some(device) = device() else { return };
        let rt = runtime();
        let svc = WaitService::start(false).unwrap();
        for why in [Ended::Abandoned, Ended::Freed] {
            let sem = semaphore(&device, &svc, &format!("sem-{why:?}"));
            let mut watch = svc.watch(&sem).unwrap();
            let ender = std::thread::spawn({
                let (sem, svc) = (sem.clone(), svc.clone());
                move || {
                    while svc.pending_waits() == 0 {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    assert!(sem.end(why).is_some());
                }
            });
            let got = rt.block_on(svc.wait(&sem, 5, Duration::from_secs(10)));
            ender.join().unwrap();
            let want = sem.ended_error(why).to_string();
            assert_eq!(got.unwrap_err().to_string(), want);
            rt.block_on(watch.wait_for(|s| s.end.is_some())).unwrap();
            assert_eq!(watch.borrow().end, Some(End::Ended(why)));
            let later = rt.block_on(svc.wait(&sem, u64::MAX, Duration::from_secs(1)));
            assert_eq!(later.unwrap_err().to_string(), want);
        }
    }

    /// A driver whose wait-any busy-loops is caught by the driver-wait thread's CPU clock, and
    /// its waits are polled from then on; a driver whose waits block keeps its driver waits.
    /// Lavapipe loops (Mesa's common wait-any over emulated timelines: the wait set is the
    /// semaphore plus the kick semaphore); GPU drivers block.
    #[test]
    fn a_busy_waiting_driver_is_caught_and_its_waits_polled() {
        let Some(device) = device() else { return };
        let loops = device
            .info()
            .driver_name
            .to_lowercase()
            .contains("llvmpipe")
            || device.info().name.to_lowercase().contains("llvmpipe");
        let rt = runtime();
        let svc = WaitService::start(true).unwrap();
        svc.shared.all_external.store(true, Ordering::Relaxed);
        let sem = semaphore(&device, &svc, "sem-b");
        let signaler = std::thread::spawn({
            let (sem, svc) = (sem.clone(), svc.clone());
            move || {
                while svc.pending_waits() == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                }
                // The driver-wait thread starts with the wait; give it 3 s to be caught.
                std::thread::sleep(Duration::from_millis(50));
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(3) && svc.driver_waits_active() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                sem.timeline().signal(1).unwrap();
            }
        });
        let got = rt.block_on(svc.wait(&sem, 1, Duration::from_secs(10)));
        signaler.join().unwrap();
        assert_eq!(got.unwrap(), 1);
        assert_eq!(
            svc.driver_waits_active(),
            !loops,
            "driver {:?}: driver waits active {}",
            device.info().driver_name,
            svc.driver_waits_active()
        );
        if loops {
            // Polled from now on: the next wait is noticed by the poller.
            let signaler = std::thread::spawn({
                let (sem, svc) = (sem.clone(), svc.clone());
                move || {
                    while svc.pending_waits() == 0 {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    sem.timeline().signal(2).unwrap();
                }
            });
            rt.block_on(svc.wait(&sem, 2, Duration::from_secs(10)))
                .unwrap();
            signaler.join().unwrap();
            assert!(
                svc.wakeups()[Wakeup::Poll as usize].1 >= 1,
                "{:?}",
                svc.wakeups()
            );
        }
        svc.shutdown();
    }
}
