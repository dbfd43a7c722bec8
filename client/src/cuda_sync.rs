//! Stream-ordered signal and wait on a gpushare semaphore from CUDA ([`CudaSemaphore`]), on the
//! CUDA fast path where the semaphore has a memop word, or through the timeline semaphore.
//!
//! On the fast path a signal of `v` is a `cuStreamWriteValue64` of the word on the caller's
//! stream, and a wait is a `cuStreamWaitValue64` (GEQ) on it: one driver call each, ~10 µs per
//! hand-off between processes on the H100, where the semaphore costs ~135 µs. The semaphore is
//! signaled too, on a stream of the import's own that first waits for the word, enqueued by the
//! process's mirror thread (`mirror.rs`): Vulkan and host waiters see the value there, shortly
//! after CUDA waiters on the word, and neither the caller's stream nor its thread waits for
//! it. The path is chosen at import ([`SyncPath`]) and reported
//! ([`CudaSemaphore::path`], [`CudaSemaphore::fallback`]): never silently.
//!
//! Not here: Vulkan imports ([`import`](crate::import)), which always use the semaphore.

use std::fmt;
use std::sync::Arc;

use gpushare_interop::cuda::cudarc::driver::CudaStream;
use gpushare_interop::cuda::memops::{self, SharedWord, Support};
use gpushare_interop::cuda::{CudaDevice, ExternalSemaphore};
use gpushare_proto::v1;

use crate::mirror::{self, Mirrored};
use crate::{Error, Exported, Result};

/// Which path [`CudaSemaphore::import`] should take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPath {
    /// The word where the semaphore has one (exported with it) and this device runs 64-bit
    /// stream memory operations; the semaphore otherwise ([`CudaSemaphore::fallback`] says why).
    #[default]
    Auto,
    /// The timeline semaphore, always.
    Semaphore,
    /// The word, or an error ([`Error::FastPathUnavailable`]) saying why it cannot be used.
    Word,
}

/// The path an import uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Through the timeline semaphore (external-semaphore signal and wait).
    Semaphore,
    /// Through the memop word (the fast path).
    Word,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Semaphore => "semaphore",
            Path::Word => "word",
        })
    }
}

/// The path for `choice`, given whether the fast path can be used here (`Err`: why not).
/// Returns the path and, when `Auto` fell back to the semaphore, why.
fn choose(
    choice: SyncPath,
    usable: std::result::Result<(), String>,
) -> std::result::Result<(Path, Option<String>), String> {
    match (choice, usable) {
        (SyncPath::Semaphore, _) => Ok((Path::Semaphore, None)),
        (SyncPath::Auto | SyncPath::Word, Ok(())) => Ok((Path::Word, None)),
        (SyncPath::Auto, Err(why)) => Ok((Path::Semaphore, Some(why))),
        (SyncPath::Word, Err(why)) => Err(why),
    }
}

/// Whether the fast path can be used for `details` exported with `word` (the second
/// descriptor) on a device whose memory-operation support is `support`.
fn usable(
    details: &v1::SemaphoreImport,
    word: bool,
    support: impl FnOnce() -> std::result::Result<Support, String>,
) -> std::result::Result<(), String> {
    if !details.word_exists {
        return Err(
            "the semaphore has no memop word (create it with word = true on a device \
                    whose FastPath is offered: see GetInfo)"
                .into(),
        );
    }
    if !word || details.word.is_none() {
        return Err(
            "it was exported without its word (export_with_word / redeem_with_word)".into(),
        );
    }
    match support()? {
        Support::Yes => Ok(()),
        Support::No(why) => Err(format!("this process's CUDA device: {why}")),
    }
}

/// A gpushare timeline semaphore imported into CUDA, signaled and waited for in stream order on
/// the path chosen at import.
pub struct CudaSemaphore {
    id: String,
    /// On the fast path: the word, and what mirrors it into the semaphore.
    word: Option<Arc<Mirrored>>,
    semaphore: Arc<ExternalSemaphore>,
    fallback: Option<String>,
}

impl fmt::Debug for CudaSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaSemaphore")
            .field("id", &self.id)
            .field("path", &self.path())
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl CudaSemaphore {
    /// Imports `exported` (a timeline semaphore, with its word when exported with
    /// [`Client::export_with_word`](crate::Client::export_with_word) or
    /// [`Client::redeem_with_word`](crate::Client::redeem_with_word)) into `device` on the path
    /// `choice` allows. Both descriptors pass to the driver only on success; on any failure they
    /// are closed.
    pub fn import(
        device: &Arc<CudaDevice>,
        exported: Exported,
        choice: SyncPath,
    ) -> Result<CudaSemaphore> {
        exported.check_timeline_semaphore()?;
        super::cuda::check_exporter(&exported, device)?;
        let Exported { fd, info, word } = exported;
        let details = match &info.details {
            Some(v1::exported_fd::Details::Semaphore(s)) => *s,
            _ => return Err(Error::MissingField("ExportedFd.semaphore")),
        };
        let usable = usable(&details, word.is_some(), || {
            memops::support(device)
                .map_err(|e| format!("reading its memory-operation attributes: {e}"))
        });
        let (path, fallback) =
            choose(choice, usable).map_err(|why| Error::FastPathUnavailable {
                id: info.resource_id.clone(),
                why,
            })?;
        let word = match (path, word, &details.word) {
            (Path::Word, Some(fd), Some(b)) => Some((
                SharedWord::import(device, fd, b.allocation_size, b.dedicated)?,
                device.new_stream()?,
            )),
            // Not used: the descriptor closes here.
            _ => None,
        };
        let semaphore = Arc::new(ExternalSemaphore::import_timeline_fd(device, fd)?);
        let word = word.map(|(word, stream)| {
            Arc::new(Mirrored {
                word,
                semaphore: Arc::clone(&semaphore),
                stream,
                id: info.resource_id.clone(),
            })
        });
        Ok(CudaSemaphore {
            id: info.resource_id,
            word,
            semaphore,
            fallback,
        })
    }

    /// The semaphore's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The path this import uses.
    pub fn path(&self) -> Path {
        if self.word.is_some() {
            Path::Word
        } else {
            Path::Semaphore
        }
    }

    /// Why [`SyncPath::Auto`] fell back to the semaphore (None on the fast path, or when the
    /// semaphore path was asked for).
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The imported timeline semaphore (signal and wait through it bypass the word: a CUDA
    /// waiter on the word would not see such a signal unless the daemon bridges it).
    pub fn semaphore(&self) -> &ExternalSemaphore {
        &self.semaphore
    }

    /// The word's device address on the fast path (for kernels that poll or write it).
    pub fn word_ptr(&self) -> Option<u64> {
        self.word.as_ref().map(|m| m.word.ptr())
    }

    /// Enqueues on `stream` a signal of `value`, after the stream's earlier work: on the fast
    /// path a write of the word, and (by the mirror thread, on the import's own stream, once
    /// the word holds it) the semaphore's signal; otherwise the semaphore's signal. `value`
    /// must exceed the current value (Vulkan's rule).
    pub fn signal(&self, value: u64, stream: &Arc<CudaStream>) -> Result<()> {
        match &self.word {
            Some(mirrored) => {
                if value == 0 {
                    return Err(gpushare_interop::cuda::Error::InvalidValue {
                        what: "timeline signal value",
                        value,
                        reason: "a signal must exceed the current value",
                    }
                    .into());
                }
                mirrored.word.write(stream, value)?;
                mirror::post(mirrored, value);
            }
            None => self.semaphore.signal(value, stream)?,
        }
        Ok(())
    }

    /// Enqueues on `stream` a wait until the semaphore reaches `value`: later work on the
    /// stream starts only then (on the fast path, a wait on the word).
    pub fn wait(&self, value: u64, stream: &Arc<CudaStream>) -> Result<()> {
        match &self.word {
            Some(mirrored) => mirrored.word.wait_geq(stream, value)?,
            None => self.semaphore.wait(value, stream)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(has_word: bool, described: bool) -> v1::SemaphoreImport {
        v1::SemaphoreImport {
            timeline: true,
            word_exists: has_word,
            word: described.then(v1::BufferImport::default),
            ..Default::default()
        }
    }

    #[test]
    fn auto_takes_the_word_only_where_everything_offers_it() {
        let yes = || Ok(Support::Yes);
        assert_eq!(usable(&details(true, true), true, yes), Ok(()));
        let no_word = usable(&details(false, false), false, yes).unwrap_err();
        assert!(no_word.contains("no memop word"), "{no_word}");
        let not_exported = usable(&details(true, false), false, yes).unwrap_err();
        assert!(not_exported.contains("export_with_word"), "{not_exported}");
        let unsupported = usable(&details(true, true), true, || {
            Ok(Support::No("CAN_USE_64_BIT_STREAM_MEM_OPS = 0".into()))
        })
        .unwrap_err();
        assert!(
            unsupported.contains("this process's CUDA device"),
            "{unsupported}"
        );
        let no_cuda = usable(&details(true, true), true, || Err("no CUDA".into())).unwrap_err();
        assert_eq!(no_cuda, "no CUDA");
    }

    #[test]
    fn the_choice_falls_back_or_fails_but_never_silently() {
        assert_eq!(choose(SyncPath::Auto, Ok(())), Ok((Path::Word, None)));
        assert_eq!(choose(SyncPath::Word, Ok(())), Ok((Path::Word, None)));
        assert_eq!(
            choose(SyncPath::Semaphore, Ok(())),
            Ok((Path::Semaphore, None))
        );
        assert_eq!(
            choose(SyncPath::Auto, Err("why".into())),
            Ok((Path::Semaphore, Some("why".into())))
        );
        assert_eq!(choose(SyncPath::Word, Err("why".into())), Err("why".into()));
        assert_eq!(
            choose(SyncPath::Semaphore, Err("why".into())),
            Ok((Path::Semaphore, None))
        );
    }
}
