//! The client's one error type: what failed talking to the daemon, what the daemon refused (with
//! its gRPC code), and what a reply broke of the protocol.

use std::path::PathBuf;

use gpushare_proto::fdpass::FdPassError;

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control socket could not be reached (no daemon, wrong runtime directory, no access).
    #[error("cannot connect to {}", path.display())]
    Connect {
        /// The control socket's path.
        path: PathBuf,
        /// What the transport reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// The socket (or its directory) refuses this user: it is not in the group the daemon's
    /// sockets belong to (`socket_mode` allows the owner and the group by default).
    #[error("permission denied on {}: ask to be added to {group}", path.display())]
    NoAccess {
        /// The socket's path.
        path: PathBuf,
        /// The group to ask for: `group <name>`, or `the group with gid <n>`, or `the socket's
        /// group` when even that cannot be read.
        group: String,
    },
    /// The descriptor socket could not be reached.
    #[error("cannot connect to {}", path.display())]
    FdConnect {
        /// The descriptor socket's path.
        path: PathBuf,
        /// What the socket layer reported.
        #[source]
        source: FdPassError,
    },
    /// The daemon (or the gRPC transport) answered a call with an error status.
    /// (Not a `#[source]`: the status's message is the whole story, and its `Display` repeats
    /// metadata no user needs.)
    #[error("{}", status_text(.0))]
    Status(tonic::Status),
    /// Sending or receiving on the descriptor socket failed.
    #[error("descriptor socket")]
    FdSocket(#[from] FdPassError),
    /// The daemon refused to redeem an export ticket.
    #[error("{}", if message.is_empty() { code.description() } else { message.as_str() })]
    Redeem {
        /// The daemon's code (`NOT_FOUND` for an unknown or used ticket, `DEADLINE_EXCEEDED`
        /// for an expired one).
        code: tonic::Code,
        /// The daemon's message.
        message: String,
    },
    /// The daemon refused an fd.sock wait ([`crate::HostWaiter`]), or it timed out.
    #[error("{}", if message.is_empty() { code.description() } else { message.as_str() })]
    FdRefused {
        /// The daemon's code (`DEADLINE_EXCEEDED` at the timeout, `ABORTED` for an abandoned
        /// or freed semaphore, `NOT_FOUND`, `RESOURCE_EXHAUSTED`).
        code: tonic::Code,
        /// The daemon's message.
        message: String,
    },
    /// The daemon did not answer an fd.sock wait this long after it was sent (its timeout plus
    /// a grace period); the connection was dropped.
    #[error("no answer to a wait from the daemon within {0:?}")]
    NoWaitReply(std::time::Duration),
    /// A message from the daemon could not be decoded.
    #[error("malformed message from the daemon")]
    Decode(#[from] prost::DecodeError),
    /// A reply lacks a field the protocol requires.
    #[error("daemon reply lacks {0}")]
    MissingField(&'static str),
    /// A descriptor reply carried another number of descriptors than its metadata announces
    /// (one, or two with a semaphore's word; all were closed).
    #[error("descriptor reply carried {got} descriptors instead of {expected}")]
    FdCount {
        /// How many arrived.
        got: usize,
        /// How many the metadata announces.
        expected: usize,
    },
    /// A stream point names a timeline this process has not imported
    /// ([`Timelines`](crate::Timelines)).
    #[error("timeline {0} is not imported here")]
    NotImported(String),
    /// The CUDA fast path was required ([`SyncPath::Word`](crate::cuda::SyncPath::Word)) but
    /// cannot be used for this semaphore: why.
    #[error("the CUDA fast path cannot be used for semaphore {id:?}: {why}")]
    FastPathUnavailable {
        /// The semaphore.
        id: String,
        /// Why.
        why: String,
    },
    /// A reply is about another resource than the one asked for.
    #[error("daemon replied about resource {found:?} instead of {expected:?}")]
    WrongResource {
        /// The id asked for.
        expected: String,
        /// The id in the reply.
        found: String,
    },
    /// A read returned another number of bytes than asked for.
    #[error("read returned {got} bytes instead of {expected}")]
    ShortRead {
        /// Bytes asked for.
        expected: u64,
        /// Bytes received.
        got: usize,
    },
    /// The session id is not valid in a metadata header.
    #[error("daemon sent a session id that is not a valid header value")]
    InvalidSessionId,
    /// An exported descriptor is not of the kind the operation needs.
    #[error("exported resource is a {found:?}, not a {expected:?}")]
    WrongKind {
        /// The kind needed.
        expected: gpushare_proto::v1::ResourceKind,
        /// The kind in the metadata (raw value: it may be one this client does not know).
        found: i32,
    },
    /// An exported descriptor has a handle type the importer cannot use.
    #[error("unsupported handle type {0} for this import")]
    HandleType(i32),
    /// A UUID in the metadata is not 16 bytes long.
    #[error("{what} is {len} bytes long, not 16")]
    BadUuid {
        /// Which UUID.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// Importing a descriptor into Vulkan failed (the descriptor was closed).
    #[error("Vulkan import failed")]
    Import(#[from] gpushare_interop::vulkan::Error),
    /// The CUDA device that is the exporting GPU cannot be opened in this process: no CUDA, no
    /// device, or `CUDA_VISIBLE_DEVICES` hides it.
    #[error("cannot open the CUDA device with UUID {uuid} (the GPU that exported the descriptor)")]
    CudaDevice {
        /// The exporting GPU's UUID, from the descriptor's metadata.
        uuid: crate::cuda::Uuid,
        /// What the CUDA layer reported.
        #[source]
        source: gpushare_interop::cuda::Error,
    },
    /// A descriptor was about to be imported into a Vulkan device of another driver than the
    /// exporter's (an `OPAQUE_FD` import needs the same driver, `VkPhysicalDeviceIDProperties`).
    #[error("descriptor exported by driver {exported} cannot be imported by driver {device}")]
    WrongDriver {
        /// The exporting driver's UUID.
        exported: crate::cuda::Uuid,
        /// The importing Vulkan device's driver UUID.
        device: crate::cuda::Uuid,
    },
    /// A descriptor was about to be imported into a CUDA device other than the exporting GPU.
    #[error("descriptor exported by GPU {exported} cannot be imported into CUDA device {device}")]
    WrongDevice {
        /// The exporting GPU's UUID.
        exported: crate::cuda::Uuid,
        /// The UUID of the CUDA device asked to import it.
        device: crate::cuda::Uuid,
    },
    /// A buffer's metadata gives a size that is zero or larger than its allocation.
    #[error("buffer size {size} does not fit its allocation of {allocation_size} bytes")]
    BufferSize {
        /// The buffer's size.
        size: u64,
        /// The memory object's size.
        allocation_size: u64,
    },
    /// An image's metadata names an impossible shape.
    #[error("bad image metadata: {0}")]
    BadImage(String),
    /// Mapping a host buffer's descriptor failed, or a range was outside it.
    #[error("host buffer")]
    Host(#[from] gpushare_interop::host::HostError),
    /// A CUDA call failed: an import (the descriptor was closed), a mapping, a stream operation.
    #[error("CUDA call failed")]
    Cuda(#[from] gpushare_interop::cuda::Error),
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A status's message, or its code's description when the message is empty.
fn status_text(status: &tonic::Status) -> &str {
    if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    }
}

impl Error {
    /// The gRPC code the daemon answered with, for errors the daemon reported ([`Error::Status`],
    /// [`Error::Redeem`]); `None` for local and protocol errors.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            Error::Redeem { code, .. } | Error::FdRefused { code, .. } => Some(*code),
            Error::NoAccess { .. } => Some(tonic::Code::PermissionDenied),
            _ => None,
        }
    }

    /// A failed connection to the control socket at `path`: [`Error::NoAccess`] when the
    /// socket refused this user, else [`Error::Connect`].
    pub(crate) fn connect(path: PathBuf, source: tonic::transport::Error) -> Error {
        if permission_denied(&source) {
            let group = socket_group(&path);
            return Error::NoAccess { path, group };
        }
        Error::Connect { path, source }
    }

    /// A failed connection to the descriptor socket at `path`: [`Error::NoAccess`] when the
    /// socket refused this user, else [`Error::FdConnect`].
    pub(crate) fn fd_connect(path: PathBuf, source: FdPassError) -> Error {
        if permission_denied(&source) {
            let group = socket_group(&path);
            return Error::NoAccess { path, group };
        }
        Error::FdConnect { path, source }
    }

    /// Whether the daemon could not be reached at all (no socket, nobody listening, refused).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::FdConnect { .. })
    }
}

/// Whether `e` or one of its sources is an I/O error of kind `PermissionDenied` (EACCES,
/// EPERM).
fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The group that owns the socket at `path` (or, when the socket cannot be read, its
/// directory), as [`Error::NoAccess`] names it.
fn socket_group(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).or_else(|_| std::fs::metadata(path.parent().unwrap_or(path)));
    match meta {
        Ok(m) => match group_name(m.gid()) {
            Some(name) => format!("group {name}"),
            None => format!("the group with gid {}", m.gid()),
        },
        Err(_) => "the socket's group".to_owned(),
    }
}

/// The name of group `gid` in `/etc/group` (groups known only to other NSS sources are shown
/// by number).
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == gid && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_is_found_in_the_chain_and_names_the_group() {
        let denied = FdPassError::Io {
            call: "connect",
            source: std::io::Error::from_raw_os_error(libc_eacces()),
        };
        let e = Error::fd_connect("/nonexistent-dir/fd.sock".into(), denied);
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied));
        assert!(!e.is_unreachable());
        assert_eq!(
            e.to_string(),
            "permission denied on /nonexistent-dir/fd.sock: ask to be added to the socket's group"
        );
        let refused = FdPassError::Io {
            call: "connect",
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(Error::fd_connect("/x/fd.sock".into(), refused).is_unreachable());
        // /etc exists and belongs to root almost everywhere.
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(
            socket_group(std::path::Path::new("/etc/nonexistent-socket")),
            "group root"
        );
    }

    /// EACCES on Linux.
    fn libc_eacces() -> i32 {
        13
    }

    #[test]
    fn status_shows_message_or_code() {
        let e = Error::from(tonic::Status::not_found("no resource abc"));
        assert_eq!(e.to_string(), "no resource abc");
        assert_eq!(e.code(), Some(tonic::Code::NotFound));
        let e = Error::from(tonic::Status::new(tonic::Code::DeadlineExceeded, ""));
        assert_eq!(e.to_string(), tonic::Code::DeadlineExceeded.description());
    }

    #[test]
    fn redeem_code_is_exposed() {
        let e = Error::Redeem {
            code: tonic::Code::from_i32(5),
            message: "ticket expired".into(),
        };
        assert_eq!(e.code(), Some(tonic::Code::NotFound));
        assert_eq!(e.to_string(), "ticket expired");
        assert_eq!(Error::MissingField("FdReply.reply").code(), None);
    }
}
