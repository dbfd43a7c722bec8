//! Who is at the other end of a Unix socket: the uid, gid, pid and supplementary groups that the
//! kernel recorded when the peer connected (`SO_PEERCRED`, `SO_PEERGROUPS`). Both are read from
//! the socket, not from `/proc`, so a peer that exits and whose pid is reused cannot lend its
//! credentials to another process; and a process that changes its ids after connecting keeps the
//! ones it connected with.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Once};

/// A connected peer's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// uid.
    pub(crate) uid: u32,
    /// Primary gid.
    pub(crate) gid: u32,
    /// pid (0 when the kernel did not report one: a peer in another pid namespace).
    pub(crate) pid: i32,
    /// Supplementary groups (empty where the kernel cannot report them: before Linux 4.13).
    pub(crate) groups: Arc<[u32]>,
}

impl Peer {
    /// The credentials of the peer of the connected Unix socket `socket`.
    pub(crate) fn of(socket: BorrowedFd<'_>) -> io::Result<Peer> {
        let cred = peer_cred(socket)?;
        let groups = match peer_groups(socket) {
            Ok(groups) => groups.into(),
            // A kernel without SO_PEERGROUPS (before 4.13; some sandboxes): no supplementary
            // groups is the safe side, as gid grants and the admin group then match the primary
            // gid only. Said once, not per connection.
            Err(e) => {
                static SAID: Once = Once::new();
                SAID.call_once(|| {
                    tracing::warn!(
                        error = %e,
                        "getsockopt(SO_PEERGROUPS) failed: gid grants and admin_gid match \
                         the primary gid only"
                    );
                });
                Arc::from([])
            }
        };
        Ok(Peer {
            uid: cred.uid,
            gid: cred.gid,
            pid: cred.pid,
            groups,
        })
    }

    /// Whether the peer is a member of `gid`: its primary gid or one of its supplementary
    /// groups.
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The peer's uid, gid and pid (`SO_PEERCRED`). Read with libc, not rustix, whose `UCred`
/// holds the pid as a non-zero type: the kernel reports 0 for a peer whose pid is not visible
/// in the daemon's pid namespace (a daemon in a container, a client on the host).
fn peer_cred(socket: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let (r, len) = socket_option(socket, libc::SO_PEERCRED, std::slice::from_mut(&mut cred));
    r?;
    if len != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("getsockopt(SO_PEERCRED) returned {len} bytes"),
        ));
    }
    Ok(cred)
}

/// The peer's supplementary groups (`SO_PEERGROUPS`).
fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    // Most users are in a handful of groups; the kernel says how many more room it needs.
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let (r, len) = socket_option(socket, libc::SO_PEERGROUPS, &mut groups);
        match r {
            Ok(()) => {
                groups.truncate(len / GID);
                return Ok(groups);
            }
            // ERANGE: the buffer was short, and `len` is what the list needs (bounded by the
            // kernel's NGROUPS_MAX, 65536 groups).
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && len / GID > groups.len() => {
                groups.resize(len / GID, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the kernel may fill with any bytes: integers, and structs of integers.
trait Plain: Copy {}
impl Plain for libc::ucred {}
impl Plain for libc::gid_t {}

/// `getsockopt(SOL_SOCKET, option)` into `out`, and the length the kernel reported in bytes:
/// what it wrote, or with ERANGE what it needs.
fn socket_option<T: Plain>(
    socket: BorrowedFd<'_>,
    option: libc::c_int,
    out: &mut [T],
) -> (io::Result<()>, usize) {
    let Ok(mut len) = libc::socklen_t::try_from(std::mem::size_of_val(out)) else {
        return (Err(io::Error::from_raw_os_error(libc::ERANGE)), 0);
    };
    // SAFETY: `out` is a live, writable buffer of `len` bytes for the call's duration, and `T`
    // is `Plain` (a `ucred` or `gid_t`: any bytes the kernel writes make a valid value); `len`
    // is a valid socklen_t the kernel may update, and `socket` is a borrowed open fd.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            out.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let result = if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    (result, usize::try_from(len).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socketpair_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = Peer::of(a.as_fd()).unwrap();
        assert_eq!(p.uid, rustix::process::getuid().as_raw());
        assert_eq!(p.gid, rustix::process::getgid().as_raw());
        assert_eq!(p.pid, std::process::id() as i32);
        // SO_PEERGROUPS reports this process's supplementary groups.
        let mut ours: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        ours.sort_unstable();
        let mut theirs = p.groups.to_vec();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
        assert!(p.in_group(p.gid));
        assert!(ours.iter().all(|g| p.in_group(*g)));
    }

    #[test]
    fn a_socket_that_is_not_unix_has_no_peer() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(Peer::of(file.as_fd()).is_err());
    }
}
