//! The CUDA fast path's mirror: after a fast-path signal has written a semaphore's word on the
//! caller's stream, the semaphore itself must reach the value too (for Vulkan and host
//! waiters). That takes a `cuStreamWaitValue64` and an external-semaphore signal on a stream of
//! the import's own, a few driver calls the caller's thread need not pay: one thread per
//! process enqueues them, in the order the signals were made (one channel, one thread: each
//! semaphore's values reach its stream in order). Without that thread (it could not be
//! spawned) the caller's thread enqueues them itself.
//!
//! The queued work holds its target (`Arc<Mirrored>`): an import dropped meanwhile is released
//! once its last value has been enqueued.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use gpushare_interop::cuda::cudarc::driver::CudaStream;
use gpushare_interop::cuda::memops::SharedWord;
use gpushare_interop::cuda::ExternalSemaphore;

use crate::Result;

/// A fast-path import's word, its semaphore and the stream that mirrors one into the other.
#[derive(Debug)]
pub(crate) struct Mirrored {
    // Declared first: its drop waits for the mirror stream before the semaphore goes.
    pub(crate) word: SharedWord,
    pub(crate) semaphore: Arc<ExternalSemaphore>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) id: String,
}

impl Mirrored {
    /// Enqueues on the mirror stream: wait for the word to hold `value`, then signal the
    /// semaphore to it.
    fn mirror(&self, value: u64) -> Result<()> {
        self.word.wait_geq(&self.stream, value)?;
        self.semaphore.signal(value, &self.stream)?;
        Ok(())
    }

    /// [`Mirrored::mirror`], logging a failure: the semaphore then stays behind the word, and
    /// a Vulkan or host waiter for `value` waits for a later signal.
    fn mirror_or_log(&self, value: u64) {
        if let Err(e) = self.mirror(value) {
            tracing::error!(id = %self.id, value, error = %e, "mirroring a fast-path signal into the semaphore failed");
        }
    }
}

type Job = (Arc<Mirrored>, u64);

/// The mirror thread's queue (`None`: it could not be spawned).
fn queue() -> &'static Option<mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("gpushare-mirror".into())
            .spawn(move || {
                for (target, value) in rx {
                    target.mirror_or_log(value);
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "no mirror thread: fast-path signals mirror on the caller's thread");
                None
            }
        }
    })
}

/// Has `target`'s semaphore signaled to `value` once its word holds it (see the module).
pub(crate) fn post(target: &Arc<Mirrored>, value: u64) {
    let sent = match queue() {
        Some(tx) => tx.send((Arc::clone(target), value)).is_ok(),
        None => false,
    };
    if !sent {
        target.mirror_or_log(value);
    }
}
