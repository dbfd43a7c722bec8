//! Descriptor passing over `SOCK_SEQPACKET` Unix sockets: one message (bytes) plus up to
//! [`MAX_FDS`] descriptors as `SCM_RIGHTS`, shared by the daemon and every Rust client.
//!
//! Receive rules, on both sides: descriptors always arrive with `MSG_CMSG_CLOEXEC`; a message
//! whose data or control part was truncated (`MSG_TRUNC`, `MSG_CTRUNC`) is a protocol error and
//! every descriptor that did arrive is closed (they are [`OwnedFd`]s dropped before returning);
//! at most [`MAX_FDS`] descriptors are accepted per message. Nothing here leaks a descriptor on
//! any path: descriptors are `OwnedFd` from the moment the kernel hands them over.
//!
//! What this module is not: it knows nothing of tickets, protobuf or policy.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 4;

/// Largest message, in bytes, either side sends or accepts.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// What went wrong receiving or sending a message.
#[derive(Debug, thiserror::Error)]
pub enum FdPassError {
    /// The socket call failed.
    #[error("{call} on a seqpacket socket failed")]
    Io {
        /// The system call.
        call: &'static str,
        /// The error it returned.
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection. (An empty message is not this: it arrives as a
    /// [`Received`] with no bytes and no descriptors.)
    #[error("connection closed by peer")]
    Closed,
    /// The message did not fit ([`MAX_MESSAGE`]); what arrived was discarded.
    #[error("message truncated: larger than {max} bytes")]
    DataTruncated {
        /// The limit.
        max: usize,
    },
    /// More descriptors arrived than the control buffer holds; those that arrived were closed.
    #[error("control data truncated: more than {max} descriptors")]
    ControlTruncated {
        /// The limit.
        max: usize,
    },
    /// A message to send is larger than [`MAX_MESSAGE`] or carries more than [`MAX_FDS`].
    #[error("outgoing message too large: {bytes} bytes, {fds} descriptors")]
    TooLarge {
        /// Bytes in the message.
        bytes: usize,
        /// Descriptors with it.
        fds: usize,
    },
}

impl FdPassError {
    fn io(call: &'static str, source: impl Into<io::Error>) -> Self {
        Self::Io {
            call,
            source: source.into(),
        }
    }

    /// Whether this is [`FdPassError::Io`] with `WouldBlock`.
    pub fn would_block(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
    }
}

/// One received message.
#[derive(Debug)]
pub struct Received {
    /// The message bytes.
    pub bytes: Vec<u8>,
    /// The descriptors that came with it, close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Registers an owned descriptor with the tokio reactor.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, so the descriptor stays open and names
    // the same file description for the `AsyncFd`'s whole lifetime, and `OwnedFd::as_raw_fd`
    // always returns that same descriptor.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// Creates a non-blocking, close-on-exec `SOCK_SEQPACKET` Unix socket.
fn seqpacket_socket() -> Result<OwnedFd, FdPassError> {
    net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| FdPassError::io("socket", e))
}

/// Sends one message with `fds` attached. Never raises `SIGPIPE`.
pub fn send(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FdPassError> {
    if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(FdPassError::TooLarge {
            bytes: bytes.len(),
            fds: fds.len(),
        });
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(FdPassError::TooLarge {
            bytes: bytes.len(),
            fds: fds.len(),
        });
    }
    let sent = net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )
    .map_err(|e| FdPassError::io("sendmsg", e))?;
    if sent != bytes.len() {
        // SEQPACKET sends whole records; a short count would be a kernel contract violation.
        return Err(FdPassError::io(
            "sendmsg",
            io::Error::new(io::ErrorKind::WriteZero, "short seqpacket send"),
        ));
    }
    Ok(())
}

/// Connects a non-blocking, close-on-exec seqpacket socket to `path`, without a runtime.
pub fn connect(path: &Path) -> Result<OwnedFd, FdPassError> {
    let fd = seqpacket_socket()?;
    let addr = SocketAddrUnix::new(path).map_err(|e| FdPassError::io("connect", e))?;
    // Unix sockets complete connect() at once or fail; EAGAIN means the backlog is full.
    net::connect(&fd, &addr).map_err(|e| FdPassError::io("connect", e))?;
    Ok(fd)
}

/// Blocks until `socket` has a message or was hung up, at most `timeout`. Returns whether it
/// has (a following [`recv`] then does not block).
pub fn poll_readable(
    socket: BorrowedFd<'_>,
    timeout: std::time::Duration,
) -> Result<bool, FdPassError> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&socket, PollFlags::IN)];
    let timeout = rustix::time::Timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    loop {
        match poll(&mut fds, Some(&timeout)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(FdPassError::io("poll", e)),
        }
    }
}

/// Receives one message. See the module docs for the truncation and descriptor rules.
pub fn recv(socket: BorrowedFd<'_>) -> Result<Received, FdPassError> {
    let mut bytes = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )
    .map_err(|e| FdPassError::io("recvmsg", e))?;
    // Take ownership of every descriptor first, so that each error path below closes them.
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_FDS {
        return Err(FdPassError::ControlTruncated { max: MAX_FDS });
    }
    if msg.flags.contains(ReturnFlags::TRUNC) {
        return Err(FdPassError::DataTruncated { max: MAX_MESSAGE });
    }
    if msg.bytes == 0 && fds.is_empty() && peer_hung_up(socket) {
        return Err(FdPassError::Closed);
    }
    bytes.truncate(msg.bytes);
    Ok(Received { bytes, fds })
}

/// Whether the peer closed its end. `recvmsg` returns 0 both for an empty message and at end of
/// stream on `SOCK_SEQPACKET`; only the poll flags tell them apart.
fn peer_hung_up(socket: BorrowedFd<'_>) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&socket, PollFlags::RDHUP)];
    match poll(
        &mut fds,
        Some(&rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    ) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        // If we cannot tell, treat it as closed: the caller stops reading.
        Err(_) => true,
    }
}

/// An async `SOCK_SEQPACKET` connection, driven by tokio readiness.
#[derive(Debug)]
pub struct SeqPacket {
    inner: AsyncFd<OwnedFd>,
}

impl SeqPacket {
    /// Wraps a connected, non-blocking seqpacket socket. Must be called inside a tokio runtime.
    pub fn from_owned(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            inner: register(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Connects to the seqpacket socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, FdPassError> {
        let fd = connect(path)?;
        Self::from_owned(fd).map_err(|e| FdPassError::io("epoll_ctl", e))
    }

    /// Sends one message with descriptors.
    pub async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), FdPassError> {
        loop {
            let mut guard = self
                .inner
                .writable()
                .await
                .map_err(|e| FdPassError::io("epoll_wait", e))?;
            match send(self.inner.get_ref().as_fd(), bytes, fds) {
                Err(e) if e.would_block() => guard.clear_ready(),
                other => return other,
            }
        }
    }

    /// Receives one message.
    pub async fn recv(&self) -> Result<Received, FdPassError> {
        loop {
            let mut guard = self
                .inner
                .readable()
                .await
                .map_err(|e| FdPassError::io("epoll_wait", e))?;
            match recv(self.inner.get_ref().as_fd()) {
                Err(e) if e.would_block() => guard.clear_ready(),
                other => return other,
            }
        }
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }
}

/// A listening `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacketListener {
    inner: AsyncFd<OwnedFd>,
}

impl SeqPacketListener {
    /// Binds and listens on `path`. The caller removes a stale socket first and sets the umask.
    pub fn bind(path: &Path, backlog: i32) -> Result<Self, FdPassError> {
        let fd = seqpacket_socket()?;
        let addr = SocketAddrUnix::new(path).map_err(|e| FdPassError::io("bind", e))?;
        net::bind(&fd, &addr).map_err(|e| FdPassError::io("bind", e))?;
        net::listen(&fd, backlog).map_err(|e| FdPassError::io("listen", e))?;
        Self::from_owned(fd).map_err(|e| FdPassError::io("epoll_ctl", e))
    }

    /// Wraps an already listening socket (socket activation). It is switched to non-blocking.
    pub fn from_owned(fd: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Self {
            inner: register(fd, Interest::READABLE)?,
        })
    }

    /// Accepts one connection, non-blocking and close-on-exec.
    pub async fn accept(&self) -> Result<SeqPacket, FdPassError> {
        loop {
            let mut guard = self
                .inner
                .readable()
                .await
                .map_err(|e| FdPassError::io("epoll_wait", e))?;
            match net::accept_with(
                self.inner.get_ref(),
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => {
                    return SeqPacket::from_owned(fd).map_err(|e| FdPassError::io("epoll_ctl", e))
                }
                Err(e) if e == rustix::io::Errno::AGAIN => guard.clear_ready(),
                Err(e) => return Err(FdPassError::io("accept4", e)),
            }
        }
    }
}

/// A connected pair, for tests and in-process use.
pub fn pair() -> Result<(SeqPacket, SeqPacket), FdPassError> {
    let (a, b) = net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| FdPassError::io("socketpair", e))?;
    let wrap = |fd| SeqPacket::from_owned(fd).map_err(|e| FdPassError::io("epoll_ctl", e));
    Ok((wrap(a)?, wrap(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn temp_file(contents: &[u8]) -> std::fs::File {
        let path =
            std::env::temp_dir().join(format!("fdpass-{}-{}", std::process::id(), contents.len()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(contents).unwrap();
        f
    }

    #[tokio::test]
    async fn message_and_fd_arrive_cloexec() {
        let (a, b) = pair().unwrap();
        let file = temp_file(b"hello fd");
        a.send(b"payload", &[file.as_fd()]).await.unwrap();
        let got = b.recv().await.unwrap();
        assert_eq!(got.bytes, b"payload");
        assert_eq!(got.fds.len(), 1);
        let flags = rustix::io::fcntl_getfd(&got.fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let mut f = std::fs::File::from(got.fds.into_iter().next().unwrap());
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello fd");
    }

    #[tokio::test]
    async fn too_many_fds_is_truncation_and_closes_what_arrived() {
        let (a, b) = pair().unwrap();
        // Send MAX_FDS + 2 copies of a pipe's write end; once every copy is closed, the read end
        // reads end-of-file. That proves the receiver closed what arrived, without counting the
        // process's descriptors (other tests run concurrently).
        let (read_end, write_end) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let copies: Vec<OwnedFd> = (0..MAX_FDS + 2)
            .map(|_| rustix::io::dup(&write_end).unwrap())
            .collect();
        drop(write_end);
        let borrowed: Vec<_> = copies.iter().map(|f| f.as_fd()).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS + 2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        net::sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::empty()).unwrap();
        drop(borrowed);
        drop(copies);
        let err = b.recv().await.unwrap_err();
        assert!(
            matches!(err, FdPassError::ControlTruncated { .. }),
            "{err:?}"
        );
        let mut buf = [0u8; 1];
        assert_eq!(
            rustix::io::read(&read_end, &mut buf).unwrap(),
            0,
            "a write end is still open"
        );
    }

    #[tokio::test]
    async fn oversized_message_is_truncation() {
        let (a, b) = pair().unwrap();
        let big = vec![7u8; MAX_MESSAGE + 1];
        net::sendmsg(
            &a,
            &[IoSlice::new(&big)],
            &mut SendAncillaryBuffer::default(),
            SendFlags::empty(),
        )
        .unwrap();
        let err = b.recv().await.unwrap_err();
        assert!(matches!(err, FdPassError::DataTruncated { .. }), "{err:?}");
        // The connection stays usable for the next message.
        a.send(b"next", &[]).await.unwrap();
        assert_eq!(b.recv().await.unwrap().bytes, b"next");
    }

    #[tokio::test]
    async fn sender_refuses_oversized() {
        let (a, _b) = pair().unwrap();
        let err = a.send(&vec![0; MAX_MESSAGE + 1], &[]).await.unwrap_err();
        assert!(matches!(err, FdPassError::TooLarge { .. }));
    }

    #[tokio::test]
    async fn empty_message_is_not_end_of_stream() {
        let (a, b) = pair().unwrap();
        a.send(b"", &[]).await.unwrap();
        let got = b.recv().await.unwrap();
        assert!(got.bytes.is_empty() && got.fds.is_empty());
        a.send(b"after", &[]).await.unwrap();
        assert_eq!(b.recv().await.unwrap().bytes, b"after");
    }

    #[tokio::test]
    async fn peer_close_reads_closed() {
        let (a, b) = pair().unwrap();
        drop(a);
        assert!(matches!(b.recv().await.unwrap_err(), FdPassError::Closed));
    }

    #[tokio::test]
    async fn listener_accepts() {
        let dir = std::env::temp_dir().join(format!("fdpass-l-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = SeqPacketListener::bind(&path, 16).unwrap();
        let client = SeqPacket::connect(&path).await.unwrap();
        let server = listener.accept().await.unwrap();
        client.send(b"ping", &[]).await.unwrap();
        assert_eq!(server.recv().await.unwrap().bytes, b"ping");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
