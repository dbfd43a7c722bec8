//! The host-wait service: Wait calls, Watch streams and daemon-executed operations' wait points
//! all wait here, on a fixed set of threads (one poller, plus one driver-wait thread per device),
//! never a thread per wait.
//!
//! Two mechanisms, each a backstop for the other:
//! - **Driver waits.** One thread per device blocks in `vkWaitSemaphores` with
//!   `VK_SEMAPHORE_WAIT_ANY_BIT` over every semaphore of that device that has waiters (or
//!   watches), plus an internal *kick* semaphore that the service signals from the host whenever
//!   the set changes. On the H100 this wakes within microseconds of a signal from another
//!   process, CUDA included, and costs no CPU while nothing happens (`bench/README.md`).
//! - **Polling.** One poller thread reads the counters of the semaphores that have waiters. It
//!   exists because a driver may wake late: `../shared/GPU.md` recorded `vkWaitSemaphores`
//!   waking ~10 ms late on NVIDIA for a semaphore another process signals, and on the H100 the
//!   daemon's own driver waits did not wake before the poller (`bench/README.md`), while
//!   reading a counter costs well under a microsecond. The poller relaxes its cadence
//!   ([`poll_interval`]) only while the driver waits prove faster: while they, not the poller,
//!   have been completing the waits ([`TRUSTED`]). If the driver call fails, the thread stops.
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

    /// Whether the poller may relax: driver waits run and have been noticing values first.
    fn relaxed(&self) -> bool {
        self.driver_waits.load(Ordering::Acquire)
            && self.driver_trust.load(Ordering::Relaxed) > TRUSTED
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

/// How long the poller sleeps, given the age of its youngest pending wait or watched value
/// (`None`: nothing pending) and whether driver waits have proven faster than polling
/// ([`TRUSTED`]).
///
/// Reading a counter costs well under a microsecond; what polling costs is the poller's
/// wake-ups. On its own, the poller gives young waits (a pipeline's next frame) a 20 µs cadence
/// and a wait that has gone on for seconds one wake-up per millisecond. Behind driver waits it
/// only bounds the damage of a driver that wakes late, at a tenth of the wake-ups.
pub fn poll_interval(youngest_wait: Option<Duration>, driver_waits: bool) -> Duration {
    let alone = match youngest_wait {
        None => Duration::from_millis(1),
        Some(age) if age < Duration::from_millis(2) => Duration::from_micros(20),
        Some(age) if age < Duration::from_millis(20) => Duration::from_micros(50),
        Some(age) if age < Duration::from_millis(200) => Duration::from_micros(100),
        Some(age) if age < Duration::from_secs(2) => Duration::from_micros(250),
        Some(_) => Duration::from_millis(1),
    };
    if driver_waits {
        alone * 10
    } else {
        alone
    }
}

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
        self.shared.relaxed()
    }

    /// Kicks the driver-wait thread of `sem`'s device, starting it on the device's first wait.
    fn kick_device(&self, sem: &TimelineSemaphore) {
        if !self.use_driver_waits {
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
                .or_insert_with(|| Watched {
                    sem: sem.clone(),
                    last: value,
                    changed: Instant::now(),
                    waiters: Vec::new(),
                    watch: None,
                })
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
            let w = st.sems.entry(id.to_owned()).or_insert_with(|| Watched {
                sem: sem.clone(),
                last: value,
                changed: Instant::now(),
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

/// What a [`scan`] found still pending.
struct Scanned {
    /// The age of the youngest pending wait or recently moved watch.
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
                tracing::warn!(semaphore = %id, error = %e, "cannot read semaphore value");
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
        if w.watch.is_some() {
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
                let age = now.saturating_duration_since(x.since);
                youngest = Some(youngest.map_or(age, |y| y.min(age)));
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
        let interval = poll_interval(scanned.youngest, shared.relaxed());
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
                .filter(|w| device_key(w.sem.device()) == key)
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
        match TimelineSemaphore::wait_any(&list, DRIVER_WAIT_SLICE) {
            Ok(_) => {}
            Err(e) => return stop_blocker(shared, blocker, &e),
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
        for driver in [false, true] {
            let young = poll_interval(Some(Duration::from_micros(100)), driver);
            let old = poll_interval(Some(Duration::from_secs(5)), driver);
            assert!(young < old);
            assert!(old <= Duration::from_millis(10));
            let mut last = Duration::ZERO;
            for ms in [0, 2, 20, 200, 2000] {
                let i = poll_interval(Some(Duration::from_millis(ms)), driver);
                assert!(i >= last, "interval shrank at {ms} ms");
                last = i;
            }
        }
        assert!(poll_interval(Some(Duration::ZERO), false) <= Duration::from_micros(50));
        assert!(
            poll_interval(Some(Duration::ZERO), true) > poll_interval(Some(Duration::ZERO), false)
        );
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
}
