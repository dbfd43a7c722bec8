//! The CUDA fast path's word: a 64-bit word of device memory that mirrors a timeline
//! semaphore's value, for CUDA users on both ends of a hand-off. A CUDA signaler writes it with
//! `cuStreamWriteValue64`, a CUDA waiter waits on it with `cuStreamWaitValue64` (GEQ): ~10 µs
//! per hand-off between processes on the H100, where the external semaphore costs ~135 µs
//! (GPU.md). The rules the word follows are in `docs/ARCHITECTURE.md` ("The CUDA fast path"):
//! every signal of the semaphore reaches the word, the daemon's writes only raise it
//! ([`WordMax`]), and a semaphore that ends raises its word to `u64::MAX`, which releases every
//! waiter in any process.
//!
//! A word lives in a small exportable buffer of its own (so that whoever may use one semaphore
//! reaches no other's word), imported into the daemon's CUDA context once. The daemon writes
//! it on its device's [`WordWriter`] stream (host signals, poison, the bridge from Vulkan
//! signalers), or on the CUDA executor's stream after an operation's work.
//!
//! Not here: which semaphores get a word (creation, `daemon/create.rs`), the bridge
//! (`daemon/bridge.rs`), its export (`daemon/export.rs`).

use std::sync::Arc;

use gpushare_interop::cuda::cudarc::driver::CudaStream;
use gpushare_interop::cuda::memops::{self, Support, WordMax};
use gpushare_interop::cuda::{self, CudaDevice};
use gpushare_interop::vulkan::Device;

use crate::buffer::{CudaViewError, SharedBuffer};

/// Bytes of a word's buffer: the word is its first 8; 4 KiB is what drivers allocate at least,
/// and the size stream memory operations were measured on across processes (GPU.md).
pub(crate) const WORD_BUFFER_BYTES: u64 = 4096;

/// The value a semaphore's word is raised to when the semaphore ends.
pub(crate) const WORD_POISON: u64 = u64::MAX;

/// Where a device stands on the fast path.
#[derive(Debug, Clone)]
pub(crate) enum FastPath {
    /// Offered: words are made and written with this.
    Offered(Arc<WordWriter>),
    /// Not offered, and why (shown in GetInfo and logged at start).
    Unavailable(String),
}

impl FastPath {
    /// The verdict for a device: `cuda` is its CUDA device (None: the daemon has none for it);
    /// `enabled` is the `fast_path` setting.
    pub(crate) fn of(cuda: Option<&Arc<CudaDevice>>, enabled: bool) -> FastPath {
        if !enabled {
            return FastPath::Unavailable("turned off by the daemon's configuration".into());
        }
        let Some(device) = cuda else {
            return FastPath::Unavailable(
                "the daemon has no CUDA device for this GPU (no CUDA driver, no match, or \
                 executor = \"vulkan\")"
                    .into(),
            );
        };
        match memops::support(device) {
            Ok(Support::Yes) => {}
            Ok(Support::No(why)) => return FastPath::Unavailable(why),
            Err(e) => {
                return FastPath::Unavailable(format!(
                    "reading the memory-operation attributes failed: {e}"
                ))
            }
        }
        match WordWriter::start(device) {
            Ok(w) => FastPath::Offered(Arc::new(w)),
            Err(e) => FastPath::Unavailable(format!(
                "loading the word kernel or its stream failed: {}",
                crate::error::chain(&e)
            )),
        }
    }

    /// The writer, when the fast path is offered.
    pub(crate) fn writer(&self) -> Option<&Arc<WordWriter>> {
        match self {
            FastPath::Offered(w) => Some(w),
            FastPath::Unavailable(_) => None,
        }
    }

    /// Why it is not offered (None when it is).
    pub(crate) fn unavailable(&self) -> Option<&str> {
        match self {
            FastPath::Offered(_) => None,
            FastPath::Unavailable(why) => Some(why),
        }
    }
}

/// Writes a device's words: the word kernel and a stream of its own, which never waits on
/// anything (so a write is never stuck behind other work, and synchronizing it is quick).
#[derive(Debug)]
pub(crate) struct WordWriter {
    // Declared first: dropped (after its stream synchronized, see `Drop`) before the module.
    stream: Arc<CudaStream>,
    max: WordMax,
}

impl WordWriter {
    /// Loads the kernel on `device` and makes the stream.
    fn start(device: &Arc<CudaDevice>) -> Result<WordWriter, cuda::Error> {
        let max = WordMax::load(device)?;
        let stream = device.new_stream()?;
        Ok(WordWriter { stream, max })
    }

    /// The CUDA device.
    pub(crate) fn device(&self) -> &Arc<CudaDevice> {
        self.max.device()
    }

    /// Waits until every write enqueued on the writer's stream has run.
    fn synchronize(&self) -> Result<(), cuda::Error> {
        cuda::synchronize_stream(&self.stream)
    }
}

impl Drop for WordWriter {
    fn drop(&mut self) {
        if let Err(e) = self.synchronize() {
            tracing::warn!(error = %e, "synchronizing the word writer's stream at its end");
        }
    }
}

/// A semaphore's word, or why it has none.
#[derive(Debug, Default)]
pub(crate) enum Mirror {
    /// None was asked for.
    #[default]
    None,
    /// The word.
    Word(Word),
    /// One was asked for, but the device does not offer the fast path: why.
    Unavailable(String),
}

/// Why a word could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WordError {
    /// Allocating its buffer failed.
    #[error("allocating a word's buffer failed")]
    Allocate(#[source] gpushare_interop::vulkan::Error),
    /// Importing it into the daemon's CUDA context, or setting it, failed.
    #[error(transparent)]
    Cuda(#[from] CudaViewError),
}

/// A semaphore's word.
#[derive(Debug)]
pub(crate) struct Word {
    buffer: SharedBuffer,
    /// Its device address in the daemon's CUDA context.
    ptr: u64,
    writer: Arc<WordWriter>,
}

impl Word {
    /// A new word on `device` (the Vulkan device of `writer`'s CUDA device) at `initial`.
    pub(crate) fn new(
        device: &Arc<Device>,
        writer: &Arc<WordWriter>,
        initial: u64,
    ) -> Result<Word, WordError> {
        let vk = device
            .create_exportable_buffer(WORD_BUFFER_BYTES)
            .map_err(WordError::Allocate)?;
        let buffer = SharedBuffer::new(vk);
        let ptr = buffer.cuda_ptr(writer.device())?;
        let word = Word {
            buffer,
            ptr,
            writer: writer.clone(),
        };
        // New memory holds anything: zero the word's 8 bytes, then raise it to `initial`.
        // SAFETY: the mapping holds WORD_BUFFER_BYTES >= 8 bytes at `ptr` and lives with `word`,
        // whose drop synchronizes the writer's stream first.
        unsafe { cuda::memset_d32(&word.writer.stream, ptr, 0, 2) }.map_err(CudaViewError::Cuda)?;
        word.raise_on_writer(initial).map_err(CudaViewError::Cuda)?;
        word.writer.synchronize().map_err(CudaViewError::Cuda)?;
        Ok(word)
    }

    /// The buffer that holds it (what clients import; the word is at offset 0).
    pub(crate) fn buffer(&self) -> &SharedBuffer {
        &self.buffer
    }

    /// Raises the word to at least `value` on the writer's stream (returns once enqueued). A
    /// failure is logged: the semaphore itself was signaled, and a CUDA waiter on the word
    /// would then wait for the next raise.
    pub(crate) fn raise(&self, value: u64) {
        if let Err(e) = self.raise_on_writer(value) {
            tracing::warn!(error = %e, value, "raising a semaphore's word");
        }
    }

    fn raise_on_writer(&self, value: u64) -> Result<(), cuda::Error> {
        // SAFETY: the word is 8 aligned bytes of a mapping that outlives the launch (dropping
        // the word synchronizes this stream first); the writer (and its module) lives as long.
        unsafe { self.writer.max.raise(&self.writer.stream, self.ptr, value) }
    }

    /// Raises the word to at least `value` on `stream` (the CUDA executor's), in order with
    /// its work.
    ///
    /// # Safety
    ///
    /// `stream` belongs to the writer's CUDA context, and the word (its semaphore) lives until
    /// the stream has passed the raise.
    pub(crate) unsafe fn raise_on(
        &self,
        stream: &CudaStream,
        value: u64,
    ) -> Result<(), cuda::Error> {
        // SAFETY: the caller keeps the word alive until the stream passed the launch.
        unsafe { self.writer.max.raise(stream, self.ptr, value) }
    }
}

impl Drop for Word {
    /// The mapping goes with the buffer: first let every raise enqueued on the writer's stream
    /// run. Raises on the executor's stream hold the semaphore until they ran.
    fn drop(&mut self) {
        if let Err(e) = self.writer.synchronize() {
            tracing::warn!(error = %e, "synchronizing the word writer before freeing a word");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without CUDA, or turned off, the device says why; never silently.
    #[test]
    fn the_fast_path_says_why_it_is_not_offered() {
        let off = FastPath::of(None, false);
        assert!(off.writer().is_none());
        assert!(off.unavailable().unwrap().contains("configuration"));
        let none = FastPath::of(None, true);
        assert!(none.unavailable().unwrap().contains("no CUDA device"));
    }
}
