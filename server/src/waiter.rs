//! The host-wait service: Wait calls, Watch streams and daemon-executed operations' wait points
//! all wait here, on a fixed set of threads (one poller, plus one driver-wait thread per device),
//! never a thread per wait.
//!
//! What can change a semaphore decides how it is watched:
//! - **Semaphores that never leave the daemon** (not exportable: lavapipe cannot export
//!   semaphores) change only through the daemon itself: host signals, its operations' signal
//!   points, the poison value. Each of those wakes the poller ([`WaitService::notify`]), so
//!   these are read on those wake-ups only, plus a slow backstop ([`UNEXPORTED_BACKSTOP`]): a
//!   pending wait on one costs no CPU.
//! - **Exportable semaphores** may be signaled by any process that imported them, on its GPU
//!   or its host, without the daemon hearing of it. Two mechanisms watch them, each a backstop
//!   for the other:
//!   - **Driver waits.** One thread per device blocks in `vkWaitSemaphores` with
//!     `VK_SEMAPHORE_WAIT_ANY_BIT` over every exportable semaphore of that device that has
//!     waiters (or watches), plus an internal *kick* semaphore that the service signals from the
//!     host whenever the set changes. On the H100 this wakes within microseconds of a signal
//!     from another process, CUDA included, and costs no CPU while nothing happens
//!     (`bench/README.md`). A driver whose wait-any busy-loops instead of blocking (Mesa's
//!     common code does, for emulated timelines over several semaphores) is caught by the
//!     thread's own CPU clock ([`BUSY_WAIT_SHARE`]): its driver waits stop and the device's
//!     waits are polled.
//!   - **Polling.** One poller thread reads the counters of the semaphores that have waiters.
//!     It exists because a driver may wake late: `../shared/GPU.md` recorded `vkWaitSemaphores`
//!     waking ~10 ms late on NVIDIA for a semaphore another process signals, and on the H100
//!     the daemon's own driver waits did not wake before the poller (`bench/README.md`), while
//!     reading a counter costs well under a microsecond. Its cadence ([`poll_interval`]) is
//!     tight while a wait is young (a pipeline's next frame) and backs off as the wait ages, so
//!     that a wait pending all day costs a fraction of a percent of a core: further while
//!     driver waits run, further still while they prove faster than the poller
//!     ([`TRUSTED`]). If the driver call fails, its thread stops.
//!
//! Signals that come through the daemon itself wake the poller at once ([`WaitService::notify`]).
//! Which mechanism completed each wait is counted ([`WaitService::wakeups`], the
//! `gpushare_wait_wakeups_total` metric).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gpushare_interop::vulkan::{Device, TimelineSemaphore};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::log_budget::LogBudget;

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

/// How a wait ends: the value and whether its direct reply was sent ([`WaitService::wait_direct`]),
/// or why it ended without the value.
type Outcome = std::result::Result<(u64, bool), End>;

/// Sends a wait's answer from the thread that saw its value; returns whether it was delivered.
pub type DirectReply = Box<dyn FnOnce(u64) -> bool + Send>;

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
    sem: Arc<TimelineSemaphore>,
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
    /// Abandoned semaphores: waits on them end with ABORTED, whatever their value.
    abandoned: HashSet<String>,
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
pub enum Wakeup {
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
    pub const ALL: [Wakeup; 4] = [Wakeup::Driver, Wakeup::Poll, Wakeup::Notify, Wakeup::Spin];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Wakeup::Driver => "driver",
            Wakeup::Poll => "poll",
            Wakeup::Notify => "notify",
            Wakeup::Spin => "spin",
        }
    }
}

/// One device's driver-wait thread and its kick semaphore.
struct Blocker {
    /// Signaled from the host (to the next value) to make the thread re-read the wait set.
    kick: TimelineSemaphore,
    /// The last kick value signaled; the lock orders kicks.
    kicked: Mutex<u64>,
    /// Cleared when the thread stopped (driver error): kicks are skipped then.
    alive: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Blocker {
    fn kick(&self) {
        if !self.alive.load(Ordering::Acquire) {
            return;
        }
        let mut kicked = self.kicked.lock().unwrap_or_else(|p| p.into_inner());
        *kicked += 1;
        if let Err(e) = self.kick.signal(*kicked) {
            tracing::warn!(error = %e, "cannot kick the driver-wait thread");
        }
    }

    fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("a driver-wait thread panicked");
            }
        }
    }
}

/// The identity of a device (its `Arc`'s address), keying the driver-wait threads.
fn device_key(device: &Arc<Device>) -> usize {
    Arc::as_ptr(device) as usize
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the state is still consistent (every
        // mutation is a single insert/remove), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `sem`'s value can change without the daemon (see the module docs).
    fn external(&self, sem: &TimelineSemaphore) -> bool {
        #[cfg(test)]
        if self.all_external.load(Ordering::Relaxed) {
            return true;
        }
        sem.exportable()
    }

    /// A new entry for `sem`, last seen at `value`.
    fn watched(&self, sem: &Arc<TimelineSemaphore>, value: u64) -> Watched {
        Watched {
            sem: sem.clone(),
            external: self.external(sem),
            last: value,
            changed: Instant::now(),
            waiters: Vec::new(),
            watch: None,
        }
    }
}

/// The wait service. Dropping it (or [`WaitService::shutdown`]) ends every wait with
/// `UNAVAILABLE` and joins the poller thread.
pub struct WaitService {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Driver-wait threads by device ([`device_key`]), started on the first wait on a device;
    /// `None` where starting one failed.
    blockers: Mutex<HashMap<usize, Option<Arc<Blocker>>>>,
    /// Whether to start driver-wait threads (configuration `waits.driver_waits`).
    use_driver_waits: bool,
}

impl std::fmt::Debug for WaitService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitService").finish_non_exhaustive()
    }
}

/// How the poller stands behind the driver waits ([`poll_interval`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// No driver waits: the poller alone notices values.
    Alone,
    /// Driver-wait threads run: the poller backstops them.
    Driver,
    /// Driver waits run and have been noticing values before the poller ([`TRUSTED`]).
    Trusted,
}

/// How long the poller sleeps, given the age of its youngest pending wait or watched value on
/// an external semaphore, and how it stands behind the driver waits.
///
/// Reading a counter costs well under a microsecond; what polling costs is the poller's
/// wake-ups (about 10 µs of CPU each on the H100 machine). Young waits, a pipeline's next
/// frames, get a 20-100 µs cadence; a wait that has gone on for a second is not one whose
/// microseconds matter, and is read every millisecond, then every 2 ms (about 0.2% of a core
/// on its own). Behind running driver waits, which wake within microseconds where they work,
/// the poller only bounds the damage of a driver that wakes late: 5 ms from one second on.
/// Behind driver waits that have been noticing values first, a tenth of the wake-ups at any
/// age.
pub fn poll_interval(youngest: Duration, backing: Backing) -> Duration {
    let ms = Duration::from_millis;
    let alone = match youngest {
        age if age < ms(2) => Duration::from_micros(20),
        age if age < ms(20) => Duration::from_micros(50),
        age if age < ms(200) => Duration::from_micros(100),
        age if age < ms(1000) => Duration::from_micros(500),
        age if age < ms(10_000) => ms(1),
        _ => ms(2),
    };
    match backing {
        Backing::Alone => alone,
        Backing::Driver if youngest >= ms(1000) => ms(5),
        Backing::Driver => alone,
        Backing::Trusted => alone * 10,
    }
}

/// How long the poller sleeps when only semaphores that never leave the daemon are pending:
/// every change of theirs wakes it ([`WaitService::notify`]), so this only bounds what a missed
/// wake-up could cost.
pub const UNEXPORTED_BACKSTOP: Duration = Duration::from_secs(1);

impl WaitService {
    /// Starts the poller thread. With `driver_waits`, a driver-wait thread starts for each
    /// device on its first wait.
    pub fn start(driver_waits: bool) -> std::io::Result<Arc<Self>> {
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
                move || poll_loop(&shared)
            })?;
        Ok(Arc::new(Self {
            shared,
            thread: Mutex::new(Some(thread)),
            blockers: Mutex::new(HashMap::new()),
            use_driver_waits: driver_waits,
        }))
    }

    /// Waits completed so far, per source ([`Wakeup::ALL`] order).
    pub fn wakeups(&self) -> [(Wakeup, u64); 4] {
        Wakeup::ALL.map(|w| (w, self.shared.wakeups[w as usize].load(Ordering::Relaxed)))
    }

    /// Whether driver waits are in use (at least one thread runs and none has failed).
    pub fn driver_waits_active(&self) -> bool {
        self.shared.driver_waits.load(Ordering::Relaxed)
    }

    /// Whether the poller runs at the relaxed cadence now, because the driver waits have been
    /// noticing values before it ([`TRUSTED`]).
    pub fn poller_relaxed(&self) -> bool {
        self.shared.backing() == Backing::Trusted
    }

    /// Kicks the driver-wait thread of `sem`'s device, starting it on the device's first wait.
    /// Semaphores that never leave the daemon need none (see the module docs).
    fn kick_device(&self, sem: &TimelineSemaphore) {
        if !self.use_driver_waits || !self.shared.external(sem) {
            return;
        }
        let device = sem.device();
        let key = device_key(device);
        let blocker = {
            let mut blockers = self.blockers.lock().unwrap_or_else(|p| p.into_inner());
            match blockers.get(&key) {
                Some(b) => b.clone(),
                None => {
                    if self.shared.lock().shutdown {
                        return;
                    }
                    let started = start_blocker(&self.shared, device);
                    if let Err(e) = &started {
                        // Remembered as `None`, so that it is not retried on every wait.
                        tracing::warn!(
                            device = %device.info().name,
                            error = %e,
                            "cannot start a driver-wait thread; waits on this device are polled"
                        );
                    }
                    let b = started.ok();
                    blockers.insert(key, b.clone());
                    let healthy = blockers
                        .values()
                        .all(|b| b.as_ref().is_some_and(|b| b.alive.load(Ordering::Acquire)));
                    self.shared.driver_waits.store(healthy, Ordering::Release);
                    b
                }
            }
        };
        if let Some(blocker) = blocker {
            blocker.kick();
        }
    }

    /// Waits until semaphore `id` reaches `target`, at most `timeout`. Returns the value seen.
    pub async fn wait(
        &self,
        id: &str,
        sem: &Arc<TimelineSemaphore>,
        target: u64,
        timeout: Duration,
    ) -> Result<u64> {
        self.wait_direct(id, sem, target, timeout, Duration::ZERO, None)
            .await
            .map(|(value, _)| value)
    }

    /// fd.sock's wait: like [`WaitService::wait`], but for its first `spin` the poller reads
    /// counters without sleeping, and once the value is reached the thread that saw it calls
    /// `reply` (if any) with it at once, before this returns. Returns the value and whether
    /// `reply` was called and delivered; when not (the value was there already, or sending
    /// failed), the caller answers. Exactly one of the two answers: a timeout that races the
    /// value either wins (`reply` is never called) or waits for `reply`'s outcome.
    pub async fn wait_direct(
        &self,
        id: &str,
        sem: &Arc<TimelineSemaphore>,
        target: u64,
        timeout: Duration,
        spin: Duration,
        reply: Option<DirectReply>,
    ) -> Result<(u64, bool)> {
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
            return Ok((value, false));
        }
        let timed_out = || Error::WaitTimeout {
            id: id.to_owned(),
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
            if st.abandoned.contains(id) {
                return abandoned();
            }
            st.sems
                .entry(id.to_owned())
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
            Ok(Err(End::Freed)) => Err(Error::SemaphoreFreed(id.to_owned())),
            Ok(Err(End::Abandoned)) => abandoned(),
            Ok(Err(End::ShuttingDown)) | Err(_) => Err(Error::ShuttingDown),
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
            let w = st
                .sems
                .entry(id.to_owned())
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
            // The driver-wait thread holds the semaphore until it re-reads the wait set.
            self.kick_device(&w.sem);
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
        let blockers: Vec<Arc<Blocker>> = self
            .blockers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .filter_map(|(_, b)| b)
            .collect();
        for b in &blockers {
            b.kick();
            b.join();
        }
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

/// Reads the counter of every semaphore with waiters or watches, completes the waits whose
/// value was reached (counted as `by`), updates watches and drops entries nothing needs any
/// more. Waits with a direct reply are moved to `direct` with their value, to be answered by
/// [`deliver`] outside the lock.
fn scan(shared: &Shared, st: &mut State, by: Wakeup, direct: &mut Vec<(Waiter, u64)>) -> Scanned {
    let now = Instant::now();
    let mut youngest: Option<Duration> = None;
    let mut spin = false;
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

/// One pause between continuous reads while a wait spins: a `sched_yield`, which lets another
/// thread on this CPU run. No `PAUSE` loop: on a VM, a vCPU that loops on `PAUSE` triggers
/// pause-loop exiting, and a busy host may then run something else on its physical CPU.
fn spin_pause() {
    std::thread::yield_now();
}

fn poll_loop(shared: &Shared) {
    // The default 50 µs timer slack stays: a 20 µs sleep lasts ~70 µs. With a 1 µs slack the
    // H100 run at 76393d4 spent 680 µs of daemon CPU per 1-2 ms wait (300 µs before) without a
    // measurable gain, the gRPC reply being most of the latency (bench/README.md).
    let mut direct = Vec::new();
    let mut spinning = false;
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
        let by = if st.kick {
            Wakeup::Notify
        } else if spinning {
            Wakeup::Spin
        } else {
            Wakeup::Poll
        };
        st.kick = false;
        let scanned = scan(shared, &mut st, by, &mut direct);
        spinning = scanned.spin;
        if !direct.is_empty() || spinning {
            drop(st);
            deliver(&mut direct);
            if spinning {
                spin_pause();
            }
            st = shared.lock();
            continue;
        }
        if st.kick {
            continue;
        }
        let interval = match scanned.youngest {
            Some(age) => poll_interval(age, shared.backing()),
            None => UNEXPORTED_BACKSTOP,
        };
        st = shared
            .wake
            .wait_timeout_while(st, interval, |s| !s.kick && !s.shutdown)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// Most semaphores in one driver wait; beyond them the poller alone serves (it reads every
/// semaphore).
const MAX_DRIVER_WAIT: usize = 255;

/// How long one driver wait lasts at most before the thread re-reads the wait set anyway.
const DRIVER_WAIT_SLICE: Duration = Duration::from_secs(1);

/// The share of a driver wait's time that the thread may spend on a CPU before its driver
/// counts as busy-waiting: a wait that blocks costs next to nothing (tens of microseconds a
/// wake-up), while Mesa's common wait-any over several emulated timelines (lavapipe) loops
/// over zero-timeout waits and keeps a core at 100% ([`BusyCheck`]). Low enough to catch such
/// a loop on a host whose CPUs are oversubscribed four times over.
pub const BUSY_WAIT_SHARE: f64 = 0.25;

/// Driver waits shorter than this are not judged: a wait that returns at once (its value was
/// there, or a kick came) costs its own CPU time, whatever the driver.
const BUSY_MIN_WAIT: Duration = Duration::from_millis(5);

/// How much judged driver-wait time [`BusyCheck`] adds up before it decides.
const BUSY_WINDOW: Duration = Duration::from_millis(200);

/// Tells a driver whose host waits busy-loop from one whose waits block, by the driver-wait
/// thread's own CPU clock: over [`BUSY_WINDOW`] of waits that each lasted at least
/// [`BUSY_MIN_WAIT`], the thread may have run for at most [`BUSY_WAIT_SHARE`] of the time.
#[derive(Debug, Default)]
struct BusyCheck {
    wall: Duration,
    cpu: Duration,
}

impl BusyCheck {
    /// Adds one driver wait that took `wall` and cost the thread `cpu`; returns true once the
    /// judged waits show a busy loop.
    fn add(&mut self, wall: Duration, cpu: Duration) -> bool {
        if wall < BUSY_MIN_WAIT {
            return false;
        }
        self.wall += wall;
        self.cpu += cpu;
        if self.wall < BUSY_WINDOW {
            return false;
        }
        let busy = self.cpu.as_secs_f64() > BUSY_WAIT_SHARE * self.wall.as_secs_f64();
        *self = BusyCheck::default();
        busy
    }
}

/// CPU time the calling thread has used so far.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn start_blocker(
    shared: &Arc<Shared>,
    device: &Arc<Device>,
) -> std::result::Result<Arc<Blocker>, Box<dyn std::error::Error>> {
    let blocker = Arc::new(Blocker {
        kick: device.create_timeline_semaphore(0, false)?,
        kicked: Mutex::new(0),
        alive: AtomicBool::new(true),
        thread: Mutex::new(None),
    });
    let thread = std::thread::Builder::new()
        .name("gpushare-vkwait".into())
        .spawn({
            let shared = shared.clone();
            let blocker = blocker.clone();
            let device = device.clone();
            move || driver_wait_loop(&shared, &blocker, &device)
        })?;
    *blocker.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
    Ok(blocker)
}

/// One device's driver-wait thread: blocks until any semaphore of the device with a waiter
/// reaches its smallest pending target (or, with only watches, moves past its last value), or
/// the kick semaphore is signaled, then scans.
fn driver_wait_loop(shared: &Shared, blocker: &Blocker, device: &Arc<Device>) {
    let key = device_key(device);
    let mut busy = BusyCheck::default();
    loop {
        // Read the kick value before the wait set: a kick after this read wakes the wait below.
        let kicked = match blocker.kick.value() {
            Ok(v) => v,
            Err(e) => return stop_blocker(shared, blocker, &e),
        };
        let points: Vec<(Arc<TimelineSemaphore>, u64)> = {
            let st = shared.lock();
            if st.shutdown {
                return;
            }
            st.sems
                .values()
                .filter(|w| w.external && device_key(w.sem.device()) == key)
                .filter_map(|w| {
                    let target = w.waiters.iter().map(|x| x.target).min();
                    let target = match (target, &w.watch) {
                        (Some(t), _) => t,
                        (None, Some(_)) => w.last.checked_add(1)?,
                        (None, None) => return None,
                    };
                    Some((w.sem.clone(), target))
                })
                .take(MAX_DRIVER_WAIT)
                .collect()
        };
        let mut list: Vec<(&TimelineSemaphore, u64)> =
            points.iter().map(|(s, v)| (&**s, *v)).collect();
        list.push((&blocker.kick, kicked + 1));
        let (started, cpu) = (Instant::now(), thread_cpu_time());
        if let Err(e) = TimelineSemaphore::wait_any(&list, DRIVER_WAIT_SLICE) {
            return stop_blocker(shared, blocker, &e);
        }
        if busy.add(started.elapsed(), thread_cpu_time().saturating_sub(cpu)) {
            let name = &device.info().name;
            let why = format!(
                "vkWaitSemaphores busy-waits on {name} (its thread ran for more than {:.0}% of \
                 its waits)",
                BUSY_WAIT_SHARE * 100.0
            );
            return stop_blocker(shared, blocker, &why);
        }
        drop(list);
        if points.is_empty() {
            continue;
        }
        let mut st = shared.lock();
        if st.shutdown {
            return;
        }
        let mut direct = Vec::new();
        scan(shared, &mut st, Wakeup::Driver, &mut direct);
        drop(st);
        deliver(&mut direct);
        // The semaphores are released here, outside the lock: the last reference may destroy one.
        drop(points);
    }
}

fn stop_blocker(shared: &Shared, blocker: &Blocker, e: &dyn std::fmt::Display) {
    tracing::warn!(error = %e, "driver waits failed; waits on this device are polled from now on");
    blocker.alive.store(false, Ordering::Release);
    shared.driver_waits.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_backs_off_with_age() {
        let ms = Duration::from_millis;
        for backing in [Backing::Alone, Backing::Driver, Backing::Trusted] {
            let young = poll_interval(Duration::from_micros(100), backing);
            let old = poll_interval(Duration::from_secs(60), backing);
            assert!(young < old, "{backing:?}");
            assert!(old <= ms(20), "{backing:?}");
            let mut last = Duration::ZERO;
            for age in [0, 2, 20, 200, 1000, 2000, 10_000, 100_000] {
                let i = poll_interval(ms(age), backing);
                assert!(i >= last, "{backing:?}: interval shrank at {age} ms");
                last = i;
            }
        }
        // Young waits keep their cadence unless the driver waits proved faster.
        for backing in [Backing::Alone, Backing::Driver] {
            assert_eq!(poll_interval(ms(1), backing), Duration::from_micros(20));
            assert_eq!(poll_interval(ms(100), backing), Duration::from_micros(100));
        }
        assert!(poll_interval(ms(1), Backing::Trusted) > poll_interval(ms(1), Backing::Alone));
        // A wait pending for minutes costs at most 500 wake-ups a second, 200 behind driver
        // waits.
        assert!(poll_interval(ms(60_000), Backing::Alone) >= ms(2));
        assert!(poll_interval(ms(60_000), Backing::Driver) >= ms(5));
    }

    #[test]
    fn busy_check_judges_long_waits_only() {
        let ms = Duration::from_millis;
        let mut c = BusyCheck::default();
        // Waits that return at once spend their time on the CPU, whatever the driver.
        for _ in 0..10_000 {
            assert!(!c.add(Duration::from_micros(50), Duration::from_micros(50)));
        }
        // Blocking waits: a few microseconds of CPU each.
        for _ in 0..100 {
            assert!(!c.add(ms(10), Duration::from_micros(30)));
        }
        // A busy loop, even at a third of a core, is caught within the window.
        let caught = (0..100).any(|_| c.add(ms(10), ms(3)));
        assert!(caught);
    }

    /// A device on the machine's Vulkan driver (lavapipe in CI), or `None` after a SKIP line.
    fn device() -> Option<Arc<Device>> {
        use gpushare_interop::vulkan::{DeviceSelector, Instance};
        let skip = |why: String| {
            assert!(
                std::env::var_os("GPUSHARE_REQUIRE_GPU").is_none_or(|v| v != "1"),
                "GPUSHARE_REQUIRE_GPU=1 but {why}"
            );
            println!("SKIP: {why}");
            None
        };
        let instance = match Instance::new("gpushare-waiter-tests") {
            Ok(i) => i,
            Err(e) => return skip(format!("no Vulkan instance: {e}")),
        };
        match Device::open(&instance, &DeviceSelector::Default) {
            Ok(d) => Some(d),
            Err(e) => skip(format!("no Vulkan device: {e}")),
        }
    }

    /// Waits signaled behind the service's back (as another process would) complete, and the
    /// counters say which mechanism saw them: with driver waits on, the driver thread sees some
    /// of them first (it races the poller); with them off, only the poller does.
    #[test]
    fn direct_signals_wake_waits_through_the_driver_or_the_poller() {
        let Some(device) = device() else { return };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for driver in [true, false] {
            let svc = WaitService::start(driver).unwrap();
            svc.shared.all_external.store(true, Ordering::Relaxed);
            let sem = Arc::new(device.create_timeline_semaphore(0, false).unwrap());
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
                        sem.signal(round).unwrap();
                    }
                });
                let got = rt
                    .block_on(svc.wait("sem-t", &sem, round, Duration::from_secs(10)))
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
    /// the slow backstop, and a notified one at once, by the notify path.
    #[test]
    fn unexported_semaphores_are_read_on_notify_not_on_a_timer() {
        let Some(device) = device() else { return };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let svc = WaitService::start(true).unwrap();
        let sem = Arc::new(device.create_timeline_semaphore(0, false).unwrap());
        assert!(!sem.exportable());
        // Notified: completes at once, counted as the daemon's own signal.
        let notifier = std::thread::spawn({
            let (sem, svc) = (sem.clone(), svc.clone());
            move || {
                while svc.pending_waits() == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                }
                sem.signal(1).unwrap();
                svc.notify();
            }
        });
        let t = Instant::now();
        rt.block_on(svc.wait("sem-n", &sem, 1, Duration::from_secs(10)))
            .unwrap();
        notifier.join().unwrap();
        assert!(t.elapsed() < UNEXPORTED_BACKSTOP / 2, "{:?}", t.elapsed());
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
                sem.signal(2).unwrap();
            }
        });
        let early = rt.block_on(svc.wait("sem-n", &sem, 2, Duration::from_millis(300)));
        sneak.join().unwrap();
        assert!(matches!(early, Err(Error::WaitTimeout { .. })), "{early:?}");
        // ...and no driver-wait thread was started for it.
        assert!(svc.blockers.lock().unwrap().is_empty());
        svc.shutdown();
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let svc = WaitService::start(true).unwrap();
        svc.shared.all_external.store(true, Ordering::Relaxed);
        let sem = Arc::new(device.create_timeline_semaphore(0, false).unwrap());
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
                sem.signal(1).unwrap();
            }
        });
        let got = rt.block_on(svc.wait("sem-b", &sem, 1, Duration::from_secs(10)));
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
                    sem.signal(2).unwrap();
                }
            });
            rt.block_on(svc.wait("sem-b", &sem, 2, Duration::from_secs(10)))
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
