//! The bridge: for a semaphore with a memop word, while some live session signals it through the
//! semaphore alone (`SignalPath::Semaphore`: a Vulkan queue, a CUDA external-semaphore signal,
//! `vkSignalSemaphore`), the daemon watches the semaphore and raises the word to each value it
//! reads, so that CUDA waiters on the word see those signals too (a host hop, tens of
//! microseconds, instead of the word's ~5). Raises only ever raise (`word.rs`), so the bridge
//! never moves the word back past a fast-path signaler's value.
//!
//! One bridge per semaphore at most. It stops when the semaphore ends (its poison raised the
//! word already), at shutdown, or at the first value it reads once no session signals the
//! semaphore through the semaphore alone any more.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Daemon;
use crate::access::Caller;
use crate::error::Result;
use crate::registry::Registry;
use crate::semaphore::Semaphore;
use crate::session::SignalPath;

/// The semaphores being bridged.
#[derive(Debug, Default)]
pub(crate) struct Bridges {
    running: Mutex<HashSet<String>>,
}

impl Bridges {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever panicked while holding it.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many run.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Daemon {
    /// Records that the caller's session signals `sem` by `path` (it is one of its signalers),
    /// and starts the bridge if `sem` now needs one.
    pub(crate) fn declare_signal_path(
        &self,
        caller: &Caller,
        sem: &Arc<Semaphore>,
        path: SignalPath,
    ) -> Result<()> {
        if let Some(session) = caller.session.as_deref() {
            self.registry.set_signal_path(session, sem.id(), path)?;
        }
        self.bridge(sem);
        Ok(())
    }

    /// Starts the bridge of `sem` when it has a word, a live session signals it through the
    /// semaphore alone, and no bridge runs for it yet.
    pub(crate) fn bridge(&self, sem: &Arc<Semaphore>) {
        if sem.word().is_none() || !self.registry.signaled_without_word(sem.id()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(id = %sem.id(), "no runtime to bridge a semaphore's word on");
            return;
        };
        if !self.bridges.lock().insert(sem.id().to_owned()) {
            return;
        }
        let rx = match self.waits.watch(sem) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(id = %sem.id(), error = %e, "cannot watch a semaphore to bridge its word");
                self.bridges.lock().remove(sem.id());
                return;
            }
        };
        tracing::debug!(id = %sem.id(), "bridging a semaphore's word");
        runtime.spawn(run(
            sem.clone(),
            rx,
            self.registry.clone(),
            self.bridges.clone(),
            self.shutdown.clone(),
        ));
    }
}

/// One bridge: raise the word to every value read, until it is not needed any more.
async fn run(
    sem: Arc<Semaphore>,
    mut rx: tokio::sync::watch::Receiver<crate::waits::WatchState>,
    registry: Arc<Registry>,
    bridges: Arc<Bridges>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let (value, ended) = {
            let state = rx.borrow_and_update();
            (state.value, state.end.is_some())
        };
        if ended {
            break;
        }
        if let Some(word) = sem.word() {
            word.raise(value);
        }
        {
            // Checked and dropped under the set's lock: a session that declares a semaphore
            // path meanwhile either is seen here or finds no bridge running and starts one.
            let mut running = bridges.lock();
            if !registry.signaled_without_word(sem.id()) {
                running.remove(sem.id());
                tracing::debug!(id = %sem.id(), "bridge stopped: no semaphore-path signaler left");
                return;
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    bridges.lock().remove(sem.id());
    tracing::debug!(id = %sem.id(), "bridge stopped");
}
