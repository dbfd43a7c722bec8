//! A timeline semaphore as the daemon shares it, and every rule about its value: host signals
//! only move it forward, signals a daemon operation enqueued on a device stream are reserved
//! ([`GpuSignals`]) so that nothing moves it backwards meanwhile, and a semaphore that ends
//! (abandoned by its last signaler, or freed) is signaled to its *poison* value, so that no
//! waiter in any process hangs, and takes no signal after that.
//!
//! The state lives behind one lock per semaphore; nothing outside this module touches it. The
//! wait service hears of every change made here through [`Observer`] (it rescans), and learns
//! why a semaphore ended from [`Semaphore::ended`], read after its value (see there).
//!
//! A semaphore may carry a memop [`Word`] (the CUDA fast path): every value this type signals
//! (host signals, poison) raises the word too, after the semaphore.
//!
//! Not here: waiting (`waits`), who may signal (`access`, `session`), where the semaphore is
//! listed (`registry`), the word itself (`word`).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use gpushare_interop::cuda::{CudaDevice, ExternalSemaphore};
use gpushare_interop::vulkan::{Device, TimelineSemaphore};

use crate::buffer::CudaViewError;
use crate::error::{Error, Result};
use crate::ids;
use crate::word::{Mirror, Word, WORD_POISON};

/// The id prefix of semaphores (`sem-…`).
pub(crate) const SEMAPHORE_PREFIX: &str = "sem";

/// Why a semaphore ended. Every wait and watch on it ends with ABORTED, naming this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Its last signaler session ended while it lived on.
    Abandoned,
    /// It was freed.
    Freed,
}

/// Who hears of the changes the daemon makes to a semaphore's value (host signals, completed
/// device signals, poison): the wait service, which then reads the semaphores it watches.
pub(crate) trait Observer: Send + Sync + std::fmt::Debug {
    /// A semaphore's value may have changed, or it ended.
    fn changed(&self);
}

/// The daemon's semaphore.
#[derive(Debug)]
pub(crate) struct Semaphore {
    id: String,
    timeline: Arc<TimelineSemaphore>,
    state: Mutex<SignalState>,
    /// The semaphore imported into its device's CUDA context, made by the CUDA executor on
    /// first use (stream-ordered waits and signals); dropped with the semaphore.
    cuda: OnceLock<Arc<ExternalSemaphore>>,
    /// Its memop word, for a semaphore created with one on a device that offers the fast path.
    word: Mirror,
    /// Weak: the wait service holds semaphores while they have waiters, and must never be
    /// dropped by one of its own threads.
    observer: Weak<dyn Observer>,
}

#[derive(Debug, Default)]
struct SignalState {
    /// Signals enqueued on a device stream by daemon operations and not complete.
    pending: u32,
    /// The highest value among them (0 when none is pending).
    pending_max: u64,
    /// Set once, when the semaphore ends.
    ended: Option<Ended>,
    /// It ended while signals were pending: poison it once the last one completed.
    poison_deferred: bool,
}

impl Semaphore {
    /// Wraps `timeline` as the semaphore `id`, without a word; `observer` hears of its changes
    /// while it lives. (The daemon makes its semaphores with `DeviceSlot::new_semaphore`.)
    #[cfg(test)]
    pub(crate) fn new(
        id: String,
        timeline: TimelineSemaphore,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self::with_word(id, timeline, Mirror::None, observer)
    }

    /// As [`Semaphore::new`], mirrored in `word` (set to the timeline's value by its maker).
    pub(crate) fn with_word(
        id: String,
        timeline: TimelineSemaphore,
        word: Mirror,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            id,
            timeline: Arc::new(timeline),
            state: Mutex::new(SignalState::default()),
            cuda: OnceLock::new(),
            word,
            observer: Arc::downgrade(&observer),
        }
    }

    /// Its memop word, if it has one.
    pub(crate) fn word(&self) -> Option<&Word> {
        match &self.word {
            Mirror::Word(w) => Some(w),
            Mirror::None | Mirror::Unavailable(_) => None,
        }
    }

    /// Why it has no word although one was asked for.
    pub(crate) fn word_unavailable(&self) -> Option<&str> {
        match &self.word {
            Mirror::Unavailable(why) => Some(why),
            Mirror::None | Mirror::Word(_) => None,
        }
    }

    /// Tells the observer that the value may have changed.
    fn changed(&self) {
        if let Some(o) = self.observer.upgrade() {
            o.changed();
        }
    }

    fn lock(&self) -> MutexGuard<'_, SignalState> {
        // Every update below leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The Vulkan timeline semaphore (for driver waits; signal it only through this type).
    pub(crate) fn timeline(&self) -> &Arc<TimelineSemaphore> {
        &self.timeline
    }

    /// The Vulkan device it lives on.
    pub(crate) fn device(&self) -> &Arc<Device> {
        self.timeline.device()
    }

    /// Whether other processes may import it (its device exports timeline semaphores): then
    /// they may signal it too, on their GPU or host, without the daemon hearing of it.
    pub(crate) fn exportable(&self) -> bool {
        self.timeline.exportable()
    }

    /// A fresh descriptor for it (`vkGetSemaphoreFdKHR`).
    pub(crate) fn export_fd(&self) -> Result<OwnedFd> {
        if !self.exportable() {
            return Err(Error::NotExportable(ids::shown(&self.id)));
        }
        self.timeline
            .export_fd()
            .map_err(Error::gpu("exporting a semaphore"))
    }

    /// Its value now.
    pub(crate) fn value(&self) -> Result<u64> {
        self.timeline
            .value()
            .map_err(Error::gpu("reading a semaphore value"))
    }

    /// Why it ended, if it did. A reader that saw the poison value in [`Semaphore::value`] and
    /// asks this afterwards sees why: the mark is set before the poison is signaled, under the
    /// lock this takes.
    pub(crate) fn ended(&self) -> Option<Ended> {
        self.lock().ended
    }

    /// The error for a call on it after it ended `why`: ABORTED either way.
    pub(crate) fn ended_error(&self, why: Ended) -> Error {
        match why {
            Ended::Abandoned => Error::Abandoned(ids::shown(&self.id)),
            Ended::Freed => Error::SemaphoreFreed(ids::shown(&self.id)),
        }
    }

    /// Checks, without signaling, that `value` may be signaled now: the semaphore has not
    /// ended and `value` exceeds its current value (a daemon operation's signal point, checked
    /// before its work).
    pub(crate) fn check_signal(&self, value: u64) -> Result<()> {
        let state = self.lock();
        self.refuse_ended(&state)?;
        self.refuse_not_increasing(value)
    }

    /// The error for a signal once the semaphore ended; called with the state locked.
    fn refuse_ended(&self, state: &SignalState) -> Result<()> {
        match state.ended {
            Some(why) => Err(self.ended_error(why)),
            None => Ok(()),
        }
    }

    /// The error for a signal of `value` unless it exceeds the current value; called with the
    /// state locked.
    fn refuse_not_increasing(&self, value: u64) -> Result<()> {
        let current = self.value()?;
        if value <= current {
            return Err(Error::NotIncreasing {
                id: ids::shown(&self.id),
                current,
                requested: value,
            });
        }
        Ok(())
    }

    /// Signals `value` from the host: refused after it ended, while a daemon operation's
    /// signal of it is pending on a device (the device's signal would otherwise move the value
    /// backwards), and unless `value` exceeds the current value (an invalid value never reaches
    /// the driver). Wakes the waiters.
    pub(crate) fn signal(&self, value: u64) -> Result<u64> {
        {
            let state = self.lock();
            self.refuse_ended(&state)?;
            if state.pending > 0 {
                return Err(Error::SignalPending {
                    id: ids::shown(&self.id),
                    value: state.pending_max,
                });
            }
            self.refuse_not_increasing(value)?;
            self.timeline
                .signal(value)
                .map_err(Error::gpu("signaling a semaphore"))?;
            if let Some(word) = self.word() {
                word.raise(value);
            }
        }
        self.changed();
        Ok(value)
    }

    /// Reserves signal points that a daemon operation will signal on its device's stream,
    /// after its work and in stream order: each semaphore must not have ended, and each value
    /// must exceed both the semaphore's value and every signal of it already pending
    /// (operations on one device's stream run in order, so pending values only increase; two
    /// points on one semaphore must increase too). Until the returned [`GpuSignals`] is
    /// dropped (by the executor, once the stream passed the signals), host signals of those
    /// semaphores are refused and poisoning them waits. A refused reservation holds nothing.
    pub(crate) fn reserve(points: Vec<(Arc<Semaphore>, u64)>) -> Result<GpuSignals> {
        let mut reserved = GpuSignals { points: Vec::new() };
        for (sem, value) in points {
            {
                let mut state = sem.lock();
                sem.refuse_ended(&state)?;
                let floor = sem.value()?.max(state.pending_max);
                if value <= floor {
                    return Err(Error::NotIncreasing {
                        id: ids::shown(&sem.id),
                        current: floor,
                        requested: value,
                    });
                }
                state.pending += 1;
                state.pending_max = state.pending_max.max(value);
            }
            reserved.points.push((sem, value));
        }
        Ok(reserved)
    }

    /// Ends the semaphore (`why`; the first reason sticks) and signals its poison value, the
    /// current value plus the device's `maxTimelineSemaphoreValueDifference`, so that every
    /// wait on it in any process is released; unless a daemon operation's signal of it is
    /// pending on a device, which would then move the value back: the last such signal to
    /// complete poisons it ([`GpuSignals`]). Wakes the waiters, who end with ABORTED. Returns
    /// the poison value when it was signaled now (`None`: ended before, deferred, or the driver
    /// refused, which is logged).
    pub(crate) fn end(&self, why: Ended) -> Option<u64> {
        let poisoned = {
            let mut state = self.lock();
            if state.ended.is_some() {
                return None;
            }
            state.ended = Some(why);
            if state.pending > 0 {
                state.poison_deferred = true;
                tracing::debug!(id = %self.id, "poison deferred until the GPU signals pending on it complete");
                None
            } else {
                self.poison()
            }
        };
        self.changed();
        poisoned
    }

    /// Raises the word of a semaphore that ended to [`WORD_POISON`] once more: a word write a
    /// dead signaler had enqueued may have landed after the first raise and lowered it. Does
    /// nothing for a semaphore that lives, or has no word.
    pub(crate) fn raise_poison_again(&self) {
        let state = self.lock();
        if state.ended.is_some() && !state.poison_deferred {
            if let Some(word) = self.word() {
                word.raise(WORD_POISON);
            }
        }
    }

    /// Signals the poison value, and raises the word to [`WORD_POISON`]; called with the
    /// state locked.
    fn poison(&self) -> Option<u64> {
        if let Some(word) = self.word() {
            word.raise(WORD_POISON);
        }
        match self.timeline.signal_max() {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::warn!(id = %self.id, error = %e, "cannot signal a semaphore's poison value");
                None
            }
        }
    }

    /// The semaphore imported into `device`'s CUDA context: exported and imported on first
    /// use, then kept with the semaphore. Called by its device's CUDA executor thread only.
    pub(crate) fn cuda(
        &self,
        device: &Arc<CudaDevice>,
    ) -> std::result::Result<Arc<ExternalSemaphore>, CudaViewError> {
        if let Some(s) = self.cuda.get() {
            return Ok(s.clone());
        }
        let fd = self.timeline.export_fd().map_err(CudaViewError::Export)?;
        let imported = Arc::new(ExternalSemaphore::import_timeline_fd(device, fd)?);
        Ok(self.cuda.get_or_init(|| imported).clone())
    }
}

/// Signal points reserved for a daemon operation's device-ordered signals
/// ([`Semaphore::reserve`]); dropping it ends the reservation. The executor holds it until its
/// stream has passed the signals (or it gave up before enqueuing them), whatever became of the
/// call.
#[derive(Debug)]
pub(crate) struct GpuSignals {
    points: Vec<(Arc<Semaphore>, u64)>,
}

impl GpuSignals {
    /// The semaphores and the values to signal them to.
    pub(crate) fn points(&self) -> impl Iterator<Item = (&Arc<Semaphore>, u64)> {
        self.points.iter().map(|(s, v)| (s, *v))
    }

    /// Whether there is none.
    pub(crate) fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

impl Drop for GpuSignals {
    /// The reservation ended: the pending counts go down, a semaphore that ended meanwhile is
    /// poisoned now, and the waiters are woken.
    fn drop(&mut self) {
        for (sem, _) in &self.points {
            {
                let mut state = sem.lock();
                state.pending = state.pending.saturating_sub(1);
                if state.pending > 0 {
                    continue;
                }
                state.pending_max = 0;
                if std::mem::take(&mut state.poison_deferred) {
                    sem.poison();
                }
            }
            sem.changed();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the changes it hears of.
    #[derive(Debug, Default)]
    pub(crate) struct Counting(pub(crate) AtomicUsize);

    impl Observer for Counting {
        fn changed(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The default Vulkan device (lavapipe in CI), or `None` after a SKIP line unless
    /// GPUSHARE_REQUIRE_VULKAN=1 or GPUSHARE_REQUIRE_GPU=1.
    pub(crate) fn device() -> Option<Arc<Device>> {
        use gpushare_interop::vulkan::{DeviceSelector, Instance};
        let required = ["GPUSHARE_REQUIRE_VULKAN", "GPUSHARE_REQUIRE_GPU"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|s| s == "1"));
        let opened = Instance::new("gpushare-server-tests")
            .and_then(|i| Device::open(&i, &DeviceSelector::Default));
        match opened {
            Ok(d) => Some(d),
            Err(e) if !required => {
                println!("SKIP: no Vulkan device: {e}");
                None
            }
            Err(e) => panic!("a Vulkan device is required but {e}"),
        }
    }

    fn semaphore_at(initial: u64) -> Option<(Arc<Semaphore>, Arc<Counting>)> {
        let device = device()?;
        let counting = Arc::new(Counting::default());
        let timeline = device.create_timeline_semaphore(initial, false).unwrap();
        let sem = Arc::new(Semaphore::new(
            ids::new_id(SEMAPHORE_PREFIX),
            timeline,
            counting.clone(),
        ));
        Some((sem, counting))
    }

    /// Reserved device-ordered signals keep host signals out and values increasing; poisoning
    /// waits for the last of them.
    #[test]
    fn reserved_gpu_signals_fence_host_signals_and_defer_poison() {
        let Some((sem, counting)) = semaphore_at(5) else {
            return;
        };
        let point = |v| vec![(sem.clone(), v)];
        assert!(matches!(
            Semaphore::reserve(point(5)),
            Err(Error::NotIncreasing { current: 5, .. })
        ));
        let first = Semaphore::reserve(point(7)).unwrap();
        // A second operation queued behind the first must signal above it.
        assert!(matches!(
            Semaphore::reserve(point(7)),
            Err(Error::NotIncreasing { current: 7, .. })
        ));
        let second = Semaphore::reserve(point(9)).unwrap();
        assert!(matches!(
            sem.signal(100),
            Err(Error::SignalPending { value: 9, .. })
        ));
        // The GPU signals 7 (here, the host stands in for the stream), then the first ends.
        sem.timeline().signal(7).unwrap();
        drop(first);
        assert!(matches!(sem.signal(100), Err(Error::SignalPending { .. })));
        // Abandoned meanwhile: the poison waits for the pending signal.
        assert_eq!(sem.end(Ended::Abandoned), None);
        assert_eq!(
            sem.value().unwrap(),
            7,
            "not poisoned under a pending signal"
        );
        assert_eq!(sem.ended(), Some(Ended::Abandoned));
        sem.timeline().signal(9).unwrap();
        let heard = counting.0.load(Ordering::Relaxed);
        drop(second);
        assert!(
            sem.value().unwrap() > 1_000_000,
            "poisoned once the last signal completed"
        );
        assert!(counting.0.load(Ordering::Relaxed) > heard, "waiters woken");
        assert!(matches!(
            Semaphore::reserve(point(u64::MAX)),
            Err(Error::Abandoned(_))
        ));
        assert!(matches!(sem.signal(u64::MAX), Err(Error::Abandoned(_))));
        // The first reason sticks.
        assert_eq!(sem.end(Ended::Freed), None);
        assert_eq!(sem.ended(), Some(Ended::Abandoned));
    }

    /// Without anything pending, host signals behave as before; a reservation of several
    /// points on one semaphore must increase within itself, and a refused one holds nothing.
    #[test]
    fn host_signals_and_multi_point_reservations() {
        let Some((sem, counting)) = semaphore_at(5) else {
            return;
        };
        assert_eq!(sem.signal(6).unwrap(), 6);
        assert_eq!(counting.0.load(Ordering::Relaxed), 1);
        assert!(matches!(sem.signal(6), Err(Error::NotIncreasing { .. })));
        let twice = vec![(sem.clone(), 8), (sem.clone(), 8)];
        assert!(matches!(
            Semaphore::reserve(twice),
            Err(Error::NotIncreasing { current: 8, .. })
        ));
        assert_eq!(
            sem.signal(7).unwrap(),
            7,
            "a refused reservation holds nothing"
        );
        let ok = Semaphore::reserve(vec![(sem.clone(), 8), (sem.clone(), 10)]).unwrap();
        assert!(matches!(
            sem.signal(11),
            Err(Error::SignalPending { value: 10, .. })
        ));
        drop(ok);
        assert_eq!(sem.signal(11).unwrap(), 11);
        // Freed: poisoned at once, ABORTED naming why.
        let poison = sem.end(Ended::Freed).unwrap();
        assert!(poison > 11);
        assert!(matches!(
            sem.check_signal(12),
            Err(Error::SemaphoreFreed(_))
        ));
    }
}
