//! What the three roles share: the frames' contents ([`pixel`], [`filtered`]), the frame
//! calls with their timeout, the frames' timestamps and the processes' output lines.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpushare_client::{v1, Consumer, Producer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Res<T> = std::result::Result<T, BoxError>;

/// How long a frame call waits (a process may take a while to start on a loaded machine).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// Frame `n`'s pixel as the producer writes it: `n` (24 bits) in R, G, B, alpha 255, as the
/// little-endian word `vkCmdFillBuffer` repeats.
pub(crate) fn pixel(n: u64) -> u32 {
    0xff00_0000 | (n as u32 & 0x00ff_ffff)
}

/// The filter's transform of one pixel: its colour inverted, alpha kept.
pub(crate) fn filtered(p: u32) -> u32 {
    p ^ 0x00ff_ffff
}

/// Nanoseconds since the Unix epoch: the frames' timestamps, comparable across processes.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the pipeline gone) is no reason to stop moving frames.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub(crate) fn points_name(gpu: bool) -> &'static str {
    if gpu {
        "GPU points: hand-offs wait and signal on the imported timelines, on the GPU"
    } else {
        "HOST points: the daemon signals each hand-off at the call (point 0)"
    }
}

pub(crate) async fn acquire_slot(p: &Arc<Producer>) -> Res<v1::SlotGrant> {
    let p = p.clone();
    Ok(tokio::task::spawn_blocking(move || p.acquire_slot(TIMEOUT, false)).await??)
}

/// The next frame, or `None` once the stream ended and is drained.
pub(crate) async fn acquire_frame(c: &Arc<Consumer>) -> Res<Option<v1::Frame>> {
    let c = c.clone();
    match tokio::task::spawn_blocking(move || c.acquire_frame(TIMEOUT, false)).await? {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.code() == Some(tonic::Code::Aborted) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
