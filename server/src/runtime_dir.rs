//! The runtime directory: created if missing, locked so that two daemons never share it, and
//! the two sockets bound inside it with the configured mode (the umask is narrowed before
//! `bind`, so a socket is never reachable with wider permissions, even for a moment). A stale
//! socket left by a crashed daemon is removed only while holding the lock.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gpushare_proto::fdpass::SeqPacketListener;
use gpushare_proto::{CONTROL_SOCKET, FD_SOCKET};
use rustix::fs::{FlockOperation, Mode, OFlags};

/// Name of the lock file inside the runtime directory.
pub(crate) const LOCK_FILE: &str = "gpushared.lock";

/// Why the runtime directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeDirError {
    /// Another daemon holds the lock.
    #[error("another gpushared is running on {dir} (lock held{holder})")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// ", pid N" when the lock file names one.
        holder: String,
    },
    /// A filesystem or socket call failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RuntimeDirError + 'a {
    move |source| RuntimeDirError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The locked runtime directory. Dropping it removes the sockets (the lock file stays, so that
/// a daemon starting meanwhile never locks a file that is being unlinked).
#[derive(Debug)]
pub(crate) struct RuntimeDir {
    dir: PathBuf,
    _lock: OwnedFd,
}

impl RuntimeDir {
    /// Creates (mode 0755) and locks `dir`.
    pub(crate) fn lock(dir: &Path) -> Result<Self, RuntimeDirError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io("cannot create runtime directory", dir))?;
        let path = dir.join(LOCK_FILE);
        let lock = rustix::fs::open(
            &path,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| io("cannot open lock file", &path)(e.into()))?;
        if let Err(e) = rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .map(|pid| format!(", pid {pid}"))
                    .unwrap_or_default();
                return Err(RuntimeDirError::Locked {
                    dir: dir.to_owned(),
                    holder,
                });
            }
            return Err(io("cannot lock", &path)(e.into()));
        }
        let mut file = std::fs::File::from(lock);
        file.set_len(0)
            .map_err(io("cannot write lock file", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io("cannot write lock file", &path))?;
        Ok(Self {
            dir: dir.to_owned(),
            _lock: file.into(),
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of control.sock.
    pub(crate) fn control_path(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }

    /// Path of fd.sock.
    pub(crate) fn fd_path(&self) -> PathBuf {
        self.dir.join(FD_SOCKET)
    }

    /// Binds both sockets with permission bits `mode`, removing stale ones first.
    pub(crate) fn bind(
        &self,
        mode: u32,
    ) -> Result<(tokio::net::UnixListener, SeqPacketListener), RuntimeDirError> {
        let control = self.control_path();
        let fd = self.fd_path();
        for path in [&control, &fd] {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed stale socket"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot remove stale socket", path)(e)),
            }
        }
        let old = rustix::process::umask(Mode::from_raw_mode(!mode & 0o777));
        let bound = (|| {
            let c =
                tokio::net::UnixListener::bind(&control).map_err(io("cannot bind", &control))?;
            let f = SeqPacketListener::bind(&fd, 1024).map_err(|e| RuntimeDirError::Io {
                what: "cannot bind",
                path: fd.clone(),
                source: std::io::Error::other(e),
            })?;
            Ok((c, f))
        })();
        rustix::process::umask(old);
        let (c, f) = bound?;
        // Make the mode exact whatever the umask allowed (e.g. a group bit it had masked).
        for path in [&control, &fd] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io("cannot chmod", path))?;
        }
        Ok((c, f))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        for path in [self.control_path(), self.fd_path()] {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove socket");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("gpushare-rd-{}", std::process::id()));
        let first = RuntimeDir::lock(&dir).unwrap();
        let err = RuntimeDir::lock(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RuntimeDirError::Locked { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        let again = RuntimeDir::lock(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn bind_replaces_stale_sockets_with_the_mode_and_drop_removes_them() {
        let dir = std::env::temp_dir().join(format!("gpushare-rb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CONTROL_SOCKET), b"stale").unwrap();
        let rd = RuntimeDir::lock(&dir).unwrap();
        let (_c, _f) = rd.bind(0o660).unwrap();
        for name in [CONTROL_SOCKET, FD_SOCKET] {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o660, "{name}");
        }
        drop(rd);
        assert!(!dir.join(CONTROL_SOCKET).exists());
        assert!(!dir.join(FD_SOCKET).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
