//! Driver waits: per device, one thread blocked in `vkWaitSemaphores` with
//! `VK_SEMAPHORE_WAIT_ANY_BIT` over every exportable semaphore of that device that has waiters
//! (or watches), plus an internal *kick* semaphore that the service signals from the host
//! whenever that set changes. When the wait returns the thread [`scan`]s.
//!
//! Two ways its driver waits stop, after which the poller serves the device alone: the driver
//! call fails, or the thread's own CPU clock shows the driver busy-looping instead of blocking
//! ([`BusyCheck`]; Mesa's common wait-any over several emulated timelines does, lavapipe's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gpushare_interop::vulkan::{Device, TimelineSemaphore};

use super::{deliver, scan, Shared, Wakeup};

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
const BUSY_WAIT_SHARE: f64 = 0.25;

/// Driver waits shorter than this are not judged: a wait that returns at once (its value was
/// there, or a kick came) costs its own CPU time, whatever the driver.
const BUSY_MIN_WAIT: Duration = Duration::from_millis(5);

/// How much judged driver-wait time [`BusyCheck`] adds up before it decides.
const BUSY_WINDOW: Duration = Duration::from_millis(200);

/// The driver-wait threads, by device ([`device_key`]), started on the first wait on a device
/// (`None` where starting one failed).
pub(super) struct Drivers {
    enabled: bool,
    by_device: Mutex<HashMap<usize, Option<Arc<Blocker>>>>,
}

/// One device's driver-wait thread and its kick semaphore.
struct Blocker {
    /// Signaled from the host (to the next value) to make the thread re-read the wait set.
    kick: TimelineSemaphore,
    /// The last kick value signaled; the lock orders kicks.
    kicked: Mutex<u64>,
    /// Cleared when the thread stopped (driver error, busy loop): kicks are skipped then.
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

impl Drivers {
    /// Threads are started only when `enabled` (configuration `driver_waits`).
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            by_device: Mutex::new(HashMap::new()),
        }
    }

    /// Kicks `device`'s thread so that it re-reads the wait set, starting it on the device's
    /// first wait.
    pub(super) fn kick(&self, shared: &Arc<Shared>, device: &Arc<Device>) {
        if !self.enabled {
            return;
        }
        let key = device_key(device);
        let blocker = {
            let mut by_device = self.by_device.lock().unwrap_or_else(|p| p.into_inner());
            match by_device.get(&key) {
                Some(b) => b.clone(),
                None => {
                    if shared.lock().shutdown {
                        return;
                    }
                    let started = start(shared, device);
                    if let Err(e) = &started {
                        // Remembered as `None`, so that it is not retried on every wait.
                        tracing::warn!(
                            device = %device.info().name,
                            error = %e,
                            "cannot start a driver-wait thread; waits on this device are polled"
                        );
                    }
                    let b = started.ok();
                    by_device.insert(key, b.clone());
                    let healthy = by_device
                        .values()
                        .all(|b| b.as_ref().is_some_and(|b| b.alive.load(Ordering::Acquire)));
                    shared.driver_waits.store(healthy, Ordering::Release);
                    b
                }
            }
        };
        if let Some(blocker) = blocker {
            blocker.kick();
        }
    }

    /// How many devices a thread was started for (tests).
    #[cfg(test)]
    pub(super) fn started(&self) -> usize {
        self.by_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops and joins every thread (the service is shutting down: its state says so).
    pub(super) fn stop_all(&self) {
        let blockers: Vec<Arc<Blocker>> = self
            .by_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .filter_map(|(_, b)| b)
            .collect();
        for b in &blockers {
            b.kick();
            b.join();
        }
    }
}

fn start(
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
            move || wait_loop(&shared, &blocker, &device)
        })?;
    *blocker.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
    Ok(blocker)
}

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

/// One device's driver-wait thread: blocks until any exportable semaphore of the device with
/// a waiter reaches its smallest pending target (or, with only watches, moves past its last
/// value), or the kick semaphore is signaled, then scans.
fn wait_loop(shared: &Shared, blocker: &Blocker, device: &Arc<Device>) {
    let key = device_key(device);
    let mut busy = BusyCheck::default();
    loop {
        // Read the kick value before the wait set: a kick after this read wakes the wait below.
        let kicked = match blocker.kick.value() {
            Ok(v) => v,
            Err(e) => return stop(shared, blocker, &e),
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
                    Some((w.sem.timeline().clone(), target))
                })
                .take(MAX_DRIVER_WAIT)
                .collect()
        };
        let mut list: Vec<(&TimelineSemaphore, u64)> =
            points.iter().map(|(s, v)| (&**s, *v)).collect();
        list.push((&blocker.kick, kicked + 1));
        let (started, cpu) = (Instant::now(), thread_cpu_time());
        if let Err(e) = TimelineSemaphore::wait_any(&list, DRIVER_WAIT_SLICE) {
            return stop(shared, blocker, &e);
        }
        if busy.add(started.elapsed(), thread_cpu_time().saturating_sub(cpu)) {
            let name = &device.info().name;
            let why = format!(
                "vkWaitSemaphores busy-waits on {name} (its thread ran for more than {:.0}% of \
                 its waits)",
                BUSY_WAIT_SHARE * 100.0
            );
            return stop(shared, blocker, &why);
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

fn stop(shared: &Shared, blocker: &Blocker, e: &dyn std::fmt::Display) {
    tracing::warn!(error = %e, "driver waits failed; waits on this device are polled from now on");
    blocker.alive.store(false, Ordering::Release);
    shared.driver_waits.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
