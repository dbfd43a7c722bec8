//! Async Rust client for the gpushare daemon (`gpushared`), and the `gpusharectl` CLI beside it.
//!
//! A [`Client`] speaks to the two sockets in the daemon's runtime directory: gRPC on
//! `control.sock` for every control call, and `fd.sock` (`SOCK_SEQPACKET` + `SCM_RIGHTS`) to
//! redeem export tickets for file descriptors. Typed handles ([`Buffer`], [`Image`],
//! [`Semaphore`], [`HostBuffer`]) name a resource by id and carry the client with them;
//! [`import`] turns an [`Exported`] descriptor into a Vulkan import on the same physical device,
//! and [`cuda`] into a CUDA import (a device pointer, a mipmapped array with surface and texture
//! objects, an external semaphore) on the same GPU.
//!
//! # Sessions
//!
//! [`Client::connect_with_session`] opens a client session: the daemon's `Session` stream is held
//! by a background task for as long as any clone of the [`Client`] (or a handle made from it)
//! lives, and every call carries the session's id. Resources created in the session are released
//! when the last clone is dropped or the process dies. [`Client::connect`] opens no session:
//! resources created through it must be pinned ([`CreateOptions::pin`]) and live until released.
//!
//! What this crate is not: it holds no GPU state of its own and does no retries; every call is one
//! request to the daemon.

mod buffer;
mod client;
pub mod cuda;
mod cuda_sync;
mod error;
mod export;
mod host;
mod host_wait;
mod image;
pub mod import;
mod mirror;
mod semaphore;
mod stream;
mod sync;
mod timelines;

use std::path::PathBuf;

pub use buffer::Buffer;
pub use client::{Client, CreateOptions, Grantee, OpenTarget};
pub use error::{Error, Result};
pub use export::Exported;
pub use gpushare_interop::image::{ImageDesc, ImageFormat, ImageKind, ImageRegion};
pub use gpushare_proto::v1;
pub use host::HostBuffer;
pub use host_wait::HostWaiter;
pub use image::{image_desc, ClearValue, Image, ImageSpec};
pub use semaphore::{Semaphore, Watch};
pub use stream::{Consumer, FrameMetadata, Producer, SlotKind, StreamOptions};
pub use sync::Sync;
pub use timelines::{Points, Timelines};

/// Environment variable naming the daemon's runtime directory.
pub const RUNTIME_DIR_ENV: &str = "GPUSHARE_RUNTIME_DIR";

/// The runtime directory to use when none is given: `$GPUSHARE_RUNTIME_DIR` if set, else
/// `$XDG_RUNTIME_DIR/gpushare` if `XDG_RUNTIME_DIR` is set, else `/run/gpushare`.
pub fn default_runtime_dir() -> PathBuf {
    runtime_dir_from(
        std::env::var_os(RUNTIME_DIR_ENV),
        std::env::var_os("XDG_RUNTIME_DIR"),
    )
}

/// [`default_runtime_dir`] with the environment passed in. Empty variables count as unset.
fn runtime_dir_from(
    gpushare: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(dir) = gpushare.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = xdg.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("gpushare");
    }
    PathBuf::from("/run/gpushare")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_precedence() {
        assert_eq!(
            runtime_dir_from(Some("/a".into()), Some("/x".into())),
            PathBuf::from("/a")
        );
        assert_eq!(
            runtime_dir_from(None, Some("/run/user/1000".into())),
            PathBuf::from("/run/user/1000/gpushare")
        );
        assert_eq!(
            runtime_dir_from(Some("".into()), Some("".into())),
            PathBuf::from("/run/gpushare")
        );
        assert_eq!(runtime_dir_from(None, None), PathBuf::from("/run/gpushare"));
    }
}
