//! Low-latency host waits on `fd.sock` ([`HostWaiter`]).
//!
//! A gRPC `Wait` answers through the daemon's async runtime and HTTP/2, and the reply wakes the
//! caller's runtime: each of those hops wakes an idle thread, which costs tens of microseconds
//! on a virtual machine. An `fd.sock` wait is answered by the daemon thread that saw the value,
//! with one `SOCK_SEQPACKET` message, and is received here by the calling thread itself, which
//! may spin on the socket for a while before it blocks. The call is blocking: from async code,
//! run it on a blocking thread (`tokio::task::spawn_blocking`).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) use gpushare_proto::fdpass::Received;
use gpushare_proto::fdpass::{self, FdPassError};
use gpushare_proto::{v1, FD_SOCKET};
use prost::Message;

use crate::error::{Error, Result};

/// How much longer than the wait's timeout to wait for the daemon's answer (which it sends at
/// the timeout) before giving up on the connection.
const REPLY_GRACE: Duration = Duration::from_secs(10);

/// A connection to `fd.sock` for host waits, one at a time (calls from several threads take
/// turns). Make one per waiting thread for concurrent waits.
#[derive(Debug)]
pub struct HostWaiter {
    path: PathBuf,
    conn: Mutex<Option<OwnedFd>>,
}

impl HostWaiter {
    /// Connects to the `fd.sock` of the daemon in `runtime_dir`.
    pub fn connect(runtime_dir: impl AsRef<Path>) -> Result<HostWaiter> {
        let path = runtime_dir.as_ref().join(FD_SOCKET);
        let conn = connect(&path)?;
        Ok(HostWaiter {
            path,
            conn: Mutex::new(Some(conn)),
        })
    }

    /// Blocks until semaphore `semaphore_id` reaches `value`, at most `timeout`; returns the
    /// value the daemon saw. For the first `spin` the daemon reads the counter continuously
    /// (capped by its `limits.max_spin_us`) and this thread polls the socket without sleeping:
    /// both cost a busy CPU for that long, and buy the lowest wake-up latency. With a zero
    /// `spin` the daemon polls at its usual cadence and this thread blocks at once.
    ///
    /// Errors: the daemon's (`Error::code`: NOT_FOUND, DEADLINE_EXCEEDED at the timeout,
    /// ABORTED when the semaphore is abandoned or freed, RESOURCE_EXHAUSTED past the pending
    /// waits quota), or the socket's.
    pub fn wait(
        &self,
        semaphore_id: &str,
        value: u64,
        timeout: Duration,
        spin: Duration,
    ) -> Result<u64> {
        let request = v1::FdRequest {
            request: Some(v1::fd_request::Request::Wait(v1::FdWait {
                id: semaphore_id.to_owned(),
                value,
                timeout_ms: timeout.as_millis().try_into().unwrap_or(u32::MAX),
                spin_us: spin.as_micros().try_into().unwrap_or(u32::MAX),
            })),
            word: false,
        }
        .encode_to_vec();
        parse_waited(self.call(&request, timeout, spin)?)
    }

    /// Sends one request and returns its reply, on the kept connection (or a new one).
    pub(crate) fn call(
        &self,
        request: &[u8],
        timeout: Duration,
        spin: Duration,
    ) -> Result<Received> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let socket = match conn.take() {
            Some(s) => s,
            None => connect(&self.path)?,
        };
        // A kept connection the daemon closed meanwhile (its idle timeout) fails at the send
        // or with a hang-up before any reply: the request was never read, so it is sent again
        // once on a new connection.
        let (socket, received) = match exchange(&socket, request, timeout, spin) {
            Err(Error::FdSocket(e)) if is_stale(&e) => {
                drop(socket);
                let fresh = connect(&self.path)?;
                let r = exchange(&fresh, request, timeout, spin)?;
                (fresh, r)
            }
            other => (socket, other?),
        };
        // Only a connection whose exchange completed is kept: its replies are in step.
        *conn = Some(socket);
        Ok(received)
    }
}

fn connect(path: &Path) -> Result<OwnedFd> {
    fdpass::connect(path).map_err(|source| Error::fd_connect(path.to_owned(), source))
}

fn is_stale(e: &FdPassError) -> bool {
    matches!(e, FdPassError::Closed | FdPassError::Io { .. })
}

/// Sends `request` and receives its reply: polling without sleeping for `spin`, then blocking.
fn exchange(
    socket: &OwnedFd,
    request: &[u8],
    timeout: Duration,
    spin: Duration,
) -> Result<Received> {
    fdpass::send(socket.as_fd(), request, &[])?;
    let start = Instant::now();
    while start.elapsed() < spin {
        match fdpass::recv(socket.as_fd()) {
            // The recvmsg call itself paces the loop: no `PAUSE`, which on a VM can make the
            // hypervisor deschedule the vCPU (pause-loop exiting).
            Err(e) if e.would_block() => {}
            other => return Ok(other?),
        }
    }
    let give_up = start + timeout + REPLY_GRACE;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::NoWaitReply(timeout + REPLY_GRACE));
        }
        if fdpass::poll_readable(socket.as_fd(), left)? {
            match fdpass::recv(socket.as_fd()) {
                Err(e) if e.would_block() => continue,
                other => return Ok(other?),
            }
        }
    }
}

/// Interprets the reply to a wait. Descriptors have no place in it: any that came are closed.
fn parse_waited(received: Received) -> Result<u64> {
    let reply = v1::FdReply::decode(received.bytes.as_slice())?;
    match reply.reply {
        Some(v1::fd_reply::Reply::Waited(v)) => Ok(v.value),
        Some(v1::fd_reply::Reply::Error(e)) => Err(Error::FdRefused {
            code: tonic::Code::from_i32(e.code),
            message: e.message,
        }),
        Some(v1::fd_reply::Reply::Exported(_) | v1::fd_reply::Reply::Stream(_)) => {
            Err(Error::MissingField("FdReply.waited"))
        }
        None => Err(Error::MissingField("FdReply.reply")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(r: v1::fd_reply::Reply) -> Received {
        Received {
            bytes: v1::FdReply { reply: Some(r) }.encode_to_vec(),
            fds: Vec::new(),
        }
    }

    #[test]
    fn replies_parse_to_values_or_coded_errors() {
        let v = parse_waited(reply(v1::fd_reply::Reply::Waited(v1::SemaphoreValue {
            value: 7,
        })));
        assert_eq!(v.unwrap(), 7);
        let e = parse_waited(reply(v1::fd_reply::Reply::Error(v1::FdError {
            code: tonic::Code::DeadlineExceeded as i32,
            message: "semaphore sem-1 did not reach 3 within 5 ms".into(),
        })))
        .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::DeadlineExceeded));
        assert!(e.to_string().contains("did not reach 3"), "{e}");
        let e = parse_waited(reply(v1::fd_reply::Reply::Exported(
            v1::ExportedFd::default(),
        )))
        .unwrap_err();
        assert!(matches!(e, Error::MissingField(_)), "{e}");
        let garbage = Received {
            bytes: b"\xff\xff".to_vec(),
            fds: Vec::new(),
        };
        assert!(matches!(parse_waited(garbage), Err(Error::Decode(_))));
    }

    #[test]
    fn a_missing_socket_is_unreachable() {
        let e = HostWaiter::connect("/nonexistent/gpushare").unwrap_err();
        assert!(e.is_unreachable(), "{e}");
    }
}
