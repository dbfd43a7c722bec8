//! Shared host memory: a sealed memfd mapped `MAP_SHARED`, the bulk path for uploads and
//! downloads between a client and the daemon.
//!
//! The daemon creates the memfd ([`HostMemory::create`]), sized once and sealed against
//! shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), so a client that holds
//! the descriptor can write its bytes but can never truncate the file under the daemon's mapping
//! (which would turn the daemon's next read into a `SIGBUS`). A client maps the descriptor it
//! received ([`HostMemory::map`]), which checks the size and the seals first.
//!
//! Both processes see the same pages. Nothing orders their accesses: the API above this (the
//! daemon's Write and Read calls) defines when the daemon reads or writes a range, and bytes a
//! process changes while the other copies them arrive in an unspecified mix. That is why the
//! accessors copy through raw pointers and hand out no long-lived slices.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// What failed, for [`HostMemory`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// The errno.
        source: Errno,
    },
    /// A size of zero, or one that does not fit the address space.
    #[error("invalid host memory size {0}: must be positive and fit in the address space")]
    InvalidSize(u64),
    /// The descriptor is not what its metadata promised.
    #[error("the host memory descriptor is {found} bytes, expected {expected}")]
    SizeMismatch {
        /// The size the metadata gave.
        expected: u64,
        /// `fstat`'s size.
        found: u64,
    },
    /// The descriptor can still be shrunk: mapping it would risk `SIGBUS`.
    #[error("the host memory descriptor is not sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed,
    /// A range outside the memory.
    #[error("range {offset}+{len} is outside host memory of {size} bytes")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The memory's size.
        size: u64,
    },
}

fn sys(call: &'static str) -> impl FnOnce(Errno) -> HostError {
    move |source| HostError::Sys { call, source }
}

/// A sealed memfd and its shared mapping. Unmapped in `Drop`; the descriptor closes with it.
pub struct HostMemory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access copies through
// raw pointers (see the module documentation), none relies on exclusive access.
unsafe impl Send for HostMemory {}
// SAFETY: as for `Send`.
unsafe impl Sync for HostMemory {}

impl fmt::Debug for HostMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMemory")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

impl HostMemory {
    /// A new zero-filled memfd of `len` bytes named `name` (shown in `/proc/<pid>/fd`), sealed
    /// against resizing, mapped read-write. Pages are allocated when first touched.
    pub fn create(name: &str, len: u64) -> Result<Self, HostError> {
        let size = checked_len(len)?;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(sys("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len).map_err(sys("ftruncate"))?;
        rustix::fs::fcntl_add_seals(&fd, SEALS).map_err(sys("fcntl(F_ADD_SEALS)"))?;
        Self::mmap(fd, size)
    }

    /// Maps a descriptor received from the daemon, after checking that it is `len` bytes and
    /// sealed against shrinking. Takes ownership of `fd` (closed on failure too).
    pub fn map(fd: OwnedFd, len: u64) -> Result<Self, HostError> {
        let size = checked_len(len)?;
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(sys("fcntl(F_GET_SEALS)"))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(HostError::NotSealed);
        }
        let found = rustix::fs::fstat(&fd).map_err(sys("fstat"))?.st_size;
        let found = u64::try_from(found).unwrap_or(0);
        if found != len {
            return Err(HostError::SizeMismatch {
                expected: len,
                found,
            });
        }
        Self::mmap(fd, size)
    }

    fn mmap(fd: OwnedFd, len: usize) -> Result<Self, HostError> {
        // SAFETY: a fresh shared mapping chosen by the kernel (null hint), so it aliases no Rust
        // object; the file is at least `len` bytes and cannot shrink (sealed), so every page of
        // the mapping stays backed.
        let raw = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(sys("mmap"))?;
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or(HostError::Sys {
            call: "mmap",
            source: Errno::NOMEM,
        })?;
        Ok(Self { fd, ptr, len })
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Never: host memory is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the mapping (for DMA registration and copies through raw pointers).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new descriptor for the same memory (close-on-exec), to send to a client.
    pub fn dup_fd(&self) -> Result<OwnedFd, HostError> {
        rustix::io::fcntl_dupfd_cloexec(&self.fd, 3).map_err(sys("fcntl(F_DUPFD_CLOEXEC)"))
    }

    /// Checks `offset..offset + len` and returns the address of `offset`.
    pub fn range(&self, offset: u64, len: u64) -> Result<*mut u8, HostError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len as u64 => {
                // SAFETY: `offset <= end <= len`, so the result lies within (or one past the end
                // of) the mapping.
                Ok(unsafe { self.ptr.as_ptr().add(offset as usize) })
            }
            _ => Err(HostError::OutOfRange {
                offset,
                len,
                size: self.len as u64,
            }),
        }
    }

    /// Copies `data` into the memory at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), HostError> {
        let dst = self.range(offset, data.len() as u64)?;
        // SAFETY: `dst..dst + data.len()` is inside the live mapping (checked); `data` is a
        // separate Rust allocation, so the ranges do not overlap; bytes have no invalid values.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Copies the memory at `offset` into `out`.
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), HostError> {
        let src = self.range(offset, out.len() as u64)?;
        // SAFETY: `src..src + out.len()` is inside the live mapping (checked) and `out` is a
        // separate Rust allocation; any byte value is valid.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr + len` is the mapping made in `mmap`, unmapped once; no reference
        // into it outlives `self` (accessors copy).
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
            tracing::warn!(error = %e, "munmap of host memory failed");
        }
    }
}

fn checked_len(len: u64) -> Result<usize, HostError> {
    match usize::try_from(len) {
        Ok(n) if n > 0 && n <= isize::MAX as usize => Ok(n),
        _ => Err(HostError::InvalidSize(len)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that open descriptors run one at a time, so that counting them is exact.
    static FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn created_memory_is_shared_sealed_and_bounded() {
        let _one = FDS.lock().unwrap_or_else(|p| p.into_inner());
        let a = HostMemory::create("gpushare-test", 8192).unwrap();
        assert_eq!(a.len(), 8192);
        a.write_at(4000, b"hello").unwrap();
        let b = HostMemory::map(a.dup_fd().unwrap(), 8192).unwrap();
        let mut out = [0u8; 5];
        b.read_at(4000, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        b.write_at(0, &[7; 3]).unwrap();
        let mut out = [0u8; 4];
        a.read_at(0, &mut out).unwrap();
        assert_eq!(out, [7, 7, 7, 0]);
        // Sealed: neither side can resize it.
        assert!(rustix::fs::ftruncate(b.fd(), 4096).is_err());
        assert!(rustix::fs::ftruncate(b.fd(), 16384).is_err());
        assert!(matches!(
            a.write_at(8190, &[0; 3]),
            Err(HostError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.read_at(u64::MAX, &mut [0; 1]),
            Err(HostError::OutOfRange { .. })
        ));
        assert!(matches!(
            HostMemory::create("x", 0),
            Err(HostError::InvalidSize(0))
        ));
    }

    #[test]
    fn map_refuses_unsealed_or_mis_sized_descriptors_and_closes_them() {
        let _one = FDS.lock().unwrap_or_else(|p| p.into_inner());
        let before = fds();
        let a = HostMemory::create("gpushare-test", 4096).unwrap();
        assert!(matches!(
            HostMemory::map(a.dup_fd().unwrap(), 8192),
            Err(HostError::SizeMismatch {
                expected: 8192,
                found: 4096
            })
        ));
        let unsealed = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        assert!(matches!(
            HostMemory::map(unsealed, 4096),
            Err(HostError::NotSealed)
        ));
        drop(a);
        assert_eq!(fds(), before, "a descriptor leaked");
    }
}
