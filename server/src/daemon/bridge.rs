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
//!
//! Also here: raising a dead signaler's words once more when its process is gone
//! ([`Daemon::raise_after_exit`]).

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

/// How long [`Daemon::raise_after_exit`] waits for a process to exit.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Daemon {
    /// A signaler session of the worded semaphores `sems` ended and they were poisoned (their
    /// words raised to the poison). A word write its process had enqueued and its GPU not run
    /// yet may still land and lower a word: the driver stops a process's GPU work only as the
    /// process exits, which can be after its sockets closed. So each word is raised once more
    /// when process `pid` has exited (its pidfd turns readable; at once when it is gone
    /// already, and after 30 s at most). The semaphores (their words' mappings) are kept until
    /// then.
    pub(crate) fn raise_after_exit(&self, pid: i32, sems: Vec<Arc<Semaphore>>) {
        if sems.is_empty() {
            return;
        }
        let again = move || {
            for s in &sems {
                s.raise_poison_again();
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            again();
            return;
        };
        // None when the process is gone already (ESRCH), or the pid is unknown (0).
        let pidfd = rustix::process::Pid::from_raw(pid).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).ok()
        });
        runtime.spawn(async move {
            if let Some(fd) = pidfd {
                // SAFETY: the `OwnedFd` moves into the `AsyncFd`, so the descriptor stays open
                // and names the same pidfd for the `AsyncFd`'s whole lifetime, and
                // `OwnedFd::as_raw_fd` always returns it.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                };
                match registered {
                    Ok(fd) => {
                        let _ = tokio::time::timeout(EXIT_WAIT, fd.readable()).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot poll a pidfd"),
                }
            }
            again();
        });
    }
}
