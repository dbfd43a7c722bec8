//! Tracking what a stream still has to do with an imported object: an event recorded after
//! each operation enqueued on it, so that the object is destroyed only once every operation
//! completed, or leaked (never destroyed under the GPU) when some never complete (a wait for a
//! value nobody signals). Used by [`ExternalSemaphore`](super::ExternalSemaphore) and
//! [`SharedWord`](super::memops::SharedWord).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaEvent, CudaStream};

use super::device::CudaDevice;
use super::error::{driver, Result};

/// How long [`Uses::settle`] waits for enqueued operations before giving up.
const DROP_WAIT: Duration = Duration::from_secs(2);

/// The events recorded after an object's enqueued operations.
#[derive(Debug)]
pub(crate) struct Uses {
    device: Arc<CudaDevice>,
    /// Events recorded after the enqueued operations; completed ones are reused.
    events: Mutex<Vec<CudaEvent>>,
    /// Set when an operation was enqueued but its event could not be recorded.
    untracked: AtomicBool,
}

impl Uses {
    /// None yet, on `device`.
    pub(crate) fn new(device: &Arc<CudaDevice>) -> Uses {
        Uses {
            device: Arc::clone(device),
            events: Mutex::new(Vec::new()),
            untracked: AtomicBool::new(false),
        }
    }

    /// An event to record after the next operation: a completed one, or a new one.
    pub(crate) fn event(&self) -> Result<CudaEvent> {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        match events
            .iter()
            .position(|e| matches!(e.try_is_complete(), Ok(true)))
        {
            Some(i) => Ok(events.swap_remove(i)),
            None => self
                .device
                .context()
                .new_event(None)
                .map_err(driver("cuEventCreate")),
        }
    }

    /// Records `event` on `stream` after an enqueued operation and keeps it.
    pub(crate) fn track(&self, event: CudaEvent, stream: &CudaStream) -> Result<()> {
        if let Err(e) = event.record(stream) {
            self.untracked.store(true, Ordering::Relaxed);
            return Err(driver("cuEventRecord")(e));
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        Ok(())
    }

    /// Waits (at most two seconds) until every tracked operation completed. Returns how many
    /// did not, counting an untracked one: nonzero means the object must be leaked.
    pub(crate) fn settle(&mut self) -> usize {
        let mut pending = std::mem::take(self.events.get_mut().unwrap_or_else(|e| e.into_inner()));
        let deadline = Instant::now() + DROP_WAIT;
        loop {
            // An error (a broken context) will not complete later either: stop waiting for it.
            pending.retain(|e| matches!(e.try_is_complete(), Ok(false)));
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        pending.len() + usize::from(*self.untracked.get_mut())
    }
}
