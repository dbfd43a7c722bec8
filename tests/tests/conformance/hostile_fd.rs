//! The hostile fd.sock server of the conformance suite's `extra-fds` scenario: a
//! `SOCK_SEQPACKET` listener that answers every request with an `FdReply { exported }` for a
//! plausible buffer, carrying the wrong descriptors. Per connection the 1st request gets 3
//! memfds, the 2nd none, the 3rd 64 (more than any client's control buffer holds:
//! `MSG_CTRUNC`), and so on in turn. It closes everything it opens: the memfds once sent,
//! each connection when its peer hangs up or the server stops.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gpushare_proto::v1;
use prost::Message;
use rustix::io::Errno;
use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// Descriptors in the 3rd reply.
const MANY: usize = 64;

/// A running hostile server; dropping it stops it and joins its threads.
#[derive(Debug)]
pub struct HostileFdServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl HostileFdServer {
    /// Listens on `path` (which must not exist).
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let listener = net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        net::bind(&listener, &SocketAddrUnix::new(path)?)?;
        net::listen(&listener, 16)?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = std::thread::Builder::new()
            .name("hostile-fd-accept".into())
            .spawn({
                let stop = Arc::clone(&stop);
                let connections = Arc::clone(&connections);
                move || accept_loop(listener, &stop, &connections)
            })?;
        Ok(Self {
            path: path.to_owned(),
            stop,
            accept: Some(accept),
            connections,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostileFdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept with a connection of our own.
        if let Ok(waker) = net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        ) {
            if let Ok(addr) = SocketAddrUnix::new(&self.path) {
                let _ = net::connect(&waker, &addr);
            }
            if let Some(accept) = self.accept.take() {
                let _ = accept.join();
            }
        }
        let handles: Vec<_> = self
            .connections
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        for handle in handles {
            let _ = handle.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: OwnedFd,
    stop: &Arc<AtomicBool>,
    connections: &Mutex<Vec<JoinHandle<()>>>,
) {
    loop {
        let conn = match net::accept_with(&listener, SocketFlags::CLOEXEC) {
            Ok(c) => c,
            Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
            Err(e) => {
                eprintln!("hostile fd.sock server: accept failed: {e}");
                return;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stop = Arc::clone(stop);
        let spawned = std::thread::Builder::new()
            .name("hostile-fd-conn".into())
            .spawn(move || serve(conn, &stop));
        match spawned {
            Ok(handle) => {
                if let Ok(mut list) = connections.lock() {
                    list.push(handle);
                }
            }
            Err(e) => eprintln!("hostile fd.sock server: cannot start a thread: {e}"),
        }
    }
}

/// Answers one connection's requests until its peer hangs up or the server stops.
fn serve(conn: OwnedFd, stop: &AtomicBool) {
    // A receive timeout, so that a stop is noticed even while a peer keeps the connection open.
    if let Err(e) = net::sockopt::set_socket_timeout(
        &conn,
        net::sockopt::Timeout::Recv,
        Some(Duration::from_millis(100)),
    ) {
        eprintln!("hostile fd.sock server: SO_RCVTIMEO: {e}");
        return;
    }
    let mut served = 0usize;
    loop {
        match receive(conn.as_fd()) {
            Ok(true) => {}
            Ok(false) => return,
            Err(Errno::AGAIN) | Err(Errno::INTR) if !stop.load(Ordering::SeqCst) => continue,
            Err(_) => return,
        }
        if let Err(e) = reply(conn.as_fd(), served % 3) {
            eprintln!("hostile fd.sock server: send failed: {e}");
            return;
        }
        served += 1;
    }
}

/// Receives one request (its content does not matter); any descriptors with it are closed.
/// `false` at the end of the connection.
fn receive(conn: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut bytes = [0u8; 4096];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = net::recvmsg(
        conn,
        &mut [std::io::IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = 0;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            // Dropping each `OwnedFd` closes it.
            fds += received.count();
        }
    }
    // No client sends an empty request: zero bytes is the peer's hang-up.
    Ok(msg.bytes > 0 || fds > 0)
}

/// The reply's message: a plausible 4096-byte OPAQUE_FD buffer.
fn exported_reply() -> Vec<u8> {
    v1::FdReply {
        reply: Some(v1::fd_reply::Reply::Exported(v1::ExportedFd {
            resource_id: format!("buf-{}", "5a".repeat(16)),
            kind: v1::ResourceKind::Buffer as i32,
            handle_type: v1::HandleType::OpaqueFd as i32,
            device_uuid: vec![0x11; 16],
            driver_uuid: vec![0x22; 16],
            details: Some(v1::exported_fd::Details::Buffer(v1::BufferImport {
                size: 4096,
                allocation_size: 4096,
                dedicated: true,
                memory_type_index: 0,
                usage: 0x3,
            })),
        })),
    }
    .encode_to_vec()
}

/// A 4096-byte memfd.
fn memfd() -> Result<OwnedFd, Errno> {
    let fd = rustix::fs::memfd_create("gpushare-hostile", rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, 4096)?;
    Ok(fd)
}

/// Sends reply number `turn` (0: 3 memfds, 1: none, 2: [`MANY`] copies of one memfd).
fn reply(conn: BorrowedFd<'_>, turn: usize) -> Result<(), Errno> {
    let owned: Vec<OwnedFd> = match turn {
        0 => (0..3).map(|_| memfd()).collect::<Result<_, _>>()?,
        1 => Vec::new(),
        _ => vec![memfd()?],
    };
    let fds: Vec<BorrowedFd<'_>> = match turn {
        2 => vec![owned[0].as_fd(); MANY],
        _ => owned.iter().map(|f| f.as_fd()).collect(),
    };
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MANY))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Errno::NOBUFS);
    }
    let bytes = exported_reply();
    net::sendmsg(
        conn,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // `owned` drops here: this side's copies close; the peer's are its own to close.
    Ok(())
}
