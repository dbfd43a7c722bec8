//! fd.sock: redeems export tickets (and direct exports of the caller's own resources) and sends
//! each resource's descriptor with its import metadata as `SCM_RIGHTS`; and serves host waits
//! whose reply the wait service's thread writes to the socket itself, the daemon's
//! lowest-latency reply path (no async runtime hop, no HTTP/2).
//!
//! One request message in, one reply out, any number of times per connection. Malformed,
//! empty, oversized or truncated requests, and requests that carry descriptors (closed at
//! once), get an `FdError` reply with INVALID_ARGUMENT and the connection stays usable. A
//! connection that sends nothing for `fd_idle_timeout_ms` is closed, and so is one past the
//! connection quotas (after an `FdError` with RESOURCE_EXHAUSTED). Exports and redeems are
//! calls in flight (`quotas.calls_in_flight` and `calls_in_flight_per_uid`, shared with gRPC
//! calls): past them they get RESOURCE_EXHAUSTED at once.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use gpushare_proto::fdpass::{self, FdPassError, Received, SeqPacket, SeqPacketListener};
use gpushare_proto::v1;
use prost::Message;
use tokio_util::task::TaskTracker;

use crate::daemon::Daemon;
use crate::error::{chain, Error, Result};
use crate::peer::Peer;
use crate::registry::Object;

/// Accepts connections until shutdown; each is served on its own task, tracked by `tasks`.
pub async fn serve(d: Arc<Daemon>, listener: SeqPacketListener, tasks: TaskTracker) {
    loop {
        let conn = tokio::select! {
            _ = d.shutdown.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok(conn) => {
                let d = d.clone();
                tasks.spawn(async move { serve_connection(d, conn).await });
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "fd.sock accept failed");
                // EMFILE and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(d: Arc<Daemon>, conn: SeqPacket) {
    let peer = match Peer::of(conn.as_fd()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "fd.sock: no peer credentials");
            return;
        }
    };
    let uid = peer.uid;
    // Over the connection quota: one FdError (RESOURCE_EXHAUSTED, naming the quota) as the
    // answer to whatever the client sends first, then the connection closes.
    let _held = match d.hold(uid, None, crate::quota::Counted::FdConnections) {
        Ok(held) => held,
        Err(e) => {
            // Read the request first (at most 1 s): closing with it unread would reset the
            // connection and lose the reply.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.recv()).await;
            let _ = conn.send(&error_reply(&e).encode_to_vec(), &[]).await;
            return;
        }
    };
    let idle = Duration::from_millis(d.config.limits.fd_idle_timeout_ms.into());
    let calls = d.in_flight.uid(uid);
    // A message that arrived while a wait was pending: answered next.
    let mut early: Option<std::result::Result<Received, FdPassError>> = None;
    loop {
        let received = match early.take() {
            Some(r) => r,
            None => tokio::select! {
                _ = d.shutdown.cancelled() => return,
                r = tokio::time::timeout(idle, conn.recv()) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!(uid, "fd.sock: idle connection closed");
                        return;
                    }
                },
            },
        };
        // An export or redeem counts as a call in flight until its reply is sent.
        let mut admitted = None;
        let (reply, fd) = match received {
            Err(FdPassError::Closed) => return,
            Err(FdPassError::Io { call, source }) => {
                tracing::debug!(uid, call, error = %source, "fd.sock: connection failed");
                return;
            }
            Err(FdPassError::DataTruncated { .. }) => {
                (error_reply(&Error::BadFdRequest("message too large")), None)
            }
            Err(FdPassError::ControlTruncated { max })
            | Err(FdPassError::TooLarge { fds: max, .. }) => {
                (error_reply(&Error::FdsRefused(max)), None)
            }
            Ok(msg) if !msg.fds.is_empty() => {
                let n = msg.fds.len();
                drop(msg.fds);
                (error_reply(&Error::FdsRefused(n)), None)
            }
            Ok(msg) => match parse_request(&msg.bytes) {
                Ok(FdRequest::Wait(w)) => match wait(&d, &peer, &conn, w, &mut early).await {
                    Waited::Answered => continue,
                    Waited::Reply(reply) => (reply, None),
                    Waited::Gone => return,
                },
                Ok(req) => match d.in_flight.admit(Some(&calls)) {
                    Err(refused) => (error_reply(&refused), None),
                    Ok(guard) => {
                        admitted = Some(guard);
                        match handle(&d, &peer, req).await {
                            Ok((exported, fd)) => (
                                v1::FdReply {
                                    reply: Some(v1::fd_reply::Reply::Exported(exported)),
                                },
                                Some(fd),
                            ),
                            Err(e) => (error_reply(&e), None),
                        }
                    }
                },
                Err(e) => (error_reply(&e), None),
            },
        };
        let bytes = reply.encode_to_vec();
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = conn.send(&bytes, &fds).await {
            tracing::debug!(uid, error = %chain(&e), "fd.sock: reply not delivered");
            return;
        }
        drop(admitted);
        if !fds.is_empty() {
            d.descriptors_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // `fd` (the daemon's copy) closes here; the client holds its own.
    }
}

/// How an fd.sock wait ended for its connection.
enum Waited {
    /// The wait service's thread sent the reply.
    Answered,
    /// The connection task sends this reply.
    Reply(v1::FdReply),
    /// The client hung up: close the connection.
    Gone,
}

/// The reply to a wait that reached `value`.
fn waited_reply(value: u64) -> v1::FdReply {
    v1::FdReply {
        reply: Some(v1::fd_reply::Reply::Waited(v1::SemaphoreValue { value })),
    }
}

/// Serves one fd.sock wait: the same access rule, quota and timeout cap as the Wait call.
/// While it is pending the connection is watched: a hang-up cancels the wait, and a message
/// that arrives early is kept in `early` and answered after the wait's reply.
async fn wait(
    d: &Daemon,
    peer: &Peer,
    conn: &SeqPacket,
    w: v1::FdWait,
    early: &mut Option<std::result::Result<Received, FdPassError>>,
) -> Waited {
    let err = |e: Error| Waited::Reply(error_reply(&e));
    let caller = match d.caller(peer, None) {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    let (_, sem) = match d.semaphore(&w.id, &caller) {
        Ok(found) => found,
        Err(e) => return err(e),
    };
    let _pending = match d.hold(peer.uid, None, crate::quota::Counted::PendingWaits) {
        Ok(held) => held,
        Err(e) => return err(e),
    };
    let limits = &d.config.limits;
    let timeout = Duration::from_millis(w.timeout_ms.min(limits.max_wait_timeout_ms).into());
    let spin = Duration::from_micros(w.spin_us.min(limits.max_spin_us).into());
    // The reply goes out on a duplicate of the socket, from the thread that saw the value.
    let reply: crate::waits::DirectReply = match conn.as_fd().try_clone_to_owned() {
        Ok(socket) => Box::new(move |value| {
            let bytes = waited_reply(value).encode_to_vec();
            fdpass::send(socket.as_fd(), &bytes, &[]).is_ok()
        }),
        Err(source) => {
            return err(Error::Io {
                op: "duplicating the fd.sock connection",
                source,
            })
        }
    };
    let waiting = d
        .waits
        .wait_direct(&sem, w.value, timeout, spin, Some(reply));
    tokio::pin!(waiting);
    let done = loop {
        tokio::select! {
            biased;
            done = &mut waiting => break done,
            // Shutting down: the wait service ends every wait (UNAVAILABLE) before the token
            // is cancelled, so the wait resolves at once; its reply goes out before the
            // connection closes. Dropping it instead would close the connection under a
            // request, and could race a direct reply already claimed.
            _ = d.shutdown.cancelled() => break waiting.await,
            r = conn.recv(), if early.is_none() => match r {
                Err(FdPassError::Closed) | Err(FdPassError::Io { .. }) => return Waited::Gone,
                other => *early = Some(other),
            },
        }
    };
    match done {
        Ok((_, true)) => Waited::Answered,
        Ok((value, false)) => Waited::Reply(waited_reply(value)),
        Err(e) => err(e),
    }
}

fn error_reply(e: &Error) -> v1::FdReply {
    v1::FdReply {
        reply: Some(v1::fd_reply::Reply::Error(v1::FdError {
            code: e.code() as i32,
            message: chain(e),
        })),
    }
}

/// A well-formed fd.sock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdRequest {
    /// Redeem this ticket.
    Redeem([u8; crate::ids::ID_BYTES]),
    /// Export this resource id (well formed, not yet looked up).
    Export(String),
    /// Wait for a semaphore value (the id well formed, not yet looked up).
    Wait(v1::FdWait),
}

/// Decodes and validates one fd.sock message, before anything is looked up: every malformed
/// input is an INVALID_ARGUMENT error, never a panic (a fuzz target drives this: `fuzz/`).
pub fn parse_request(bytes: &[u8]) -> Result<FdRequest> {
    if bytes.is_empty() {
        return Err(Error::BadFdRequest("empty message"));
    }
    if bytes.len() > gpushare_proto::fdpass::MAX_MESSAGE {
        return Err(Error::BadFdRequest("message too large"));
    }
    let req = v1::FdRequest::decode(bytes).map_err(|_| Error::BadFdRequest("not an FdRequest"))?;
    match req.request {
        Some(v1::fd_request::Request::Redeem(ticket)) => {
            Ok(FdRequest::Redeem(ticket.as_slice().try_into().map_err(
                |_| Error::BadFdRequest("a ticket is 16 bytes"),
            )?))
        }
        Some(v1::fd_request::Request::Export(id)) => {
            crate::daemon::check_resource_id(&id)?;
            Ok(FdRequest::Export(id))
        }
        Some(v1::fd_request::Request::Wait(w)) => {
            crate::daemon::check_resource_id(&w.id)?;
            Ok(FdRequest::Wait(w))
        }
        None => Err(Error::BadFdRequest("no request set")),
    }
}

/// A descriptor for `r`: a spare one or a host buffer's `dup` at once; otherwise the driver
/// call that makes one runs on a blocking thread, not on the async worker (it takes tens of
/// microseconds, and NVIDIA's driver serializes them: exports made on the workers under a flood
/// of exports stalled every other call).
async fn take_fd(r: &Arc<crate::registry::Resource>) -> Result<OwnedFd> {
    if let Some(fd) = r.take_fd_now() {
        return fd;
    }
    let r = r.clone();
    tokio::task::spawn_blocking(move || r.take_fd())
        .await
        .map_err(|e| {
            if e.is_cancelled() {
                // Only a runtime that is shutting down drops a blocking task.
                Error::ShuttingDown
            } else {
                Error::ExecutorGone
            }
        })?
}

/// Redeems one export or ticket: the import metadata and a fresh descriptor.
async fn handle(d: &Daemon, peer: &Peer, req: FdRequest) -> Result<(v1::ExportedFd, OwnedFd)> {
    let uid = peer.uid;
    let snap = match req {
        FdRequest::Redeem(ticket) => {
            let id = d.tickets.redeem(&ticket, uid)?;
            // The ticket is the authorization: issued to this uid after an access check.
            d.registry.get_unchecked(&id)?
        }
        FdRequest::Export(id) => {
            let caller = d.caller(peer, None)?;
            let snap = d.resource(&id, &caller)?;
            if let Object::Semaphore(s) = &snap.resource.object {
                if !s.exportable() {
                    return Err(Error::NotExportable(id));
                }
            }
            snap
        }
        FdRequest::Wait(_) => return Err(Error::BadFdRequest("a wait has no descriptor")),
    };
    let r = &snap.resource;
    let info = d.device(r.device)?.info();
    let mut handle_type =
        crate::service::handle_type(gpushare_interop::vulkan::HandleType::OpaqueFd);
    let (kind, details, fd) = match &r.object {
        Object::Buffer(b) => (
            v1::ResourceKind::Buffer,
            v1::exported_fd::Details::Buffer(v1::BufferImport {
                size: b.size(),
                allocation_size: b.allocation_size(),
                dedicated: b.dedicated(),
                memory_type_index: b.memory_type_index(),
                usage: b.usage(),
            }),
            take_fd(r).await?,
        ),
        Object::Image(i) => (
            v1::ResourceKind::Image,
            v1::exported_fd::Details::Image(crate::image::import_msg(i.vk())),
            take_fd(r).await?,
        ),
        Object::HostBuffer(h) => {
            handle_type = v1::HandleType::Memfd as i32;
            (
                v1::ResourceKind::HostBuffer,
                v1::exported_fd::Details::HostBuffer(v1::HostBufferImport { size: h.size() }),
                take_fd(r).await?,
            )
        }
        Object::Semaphore(s) => {
            let fd = take_fd(r).await?;
            let value = s.value()?;
            (
                v1::ResourceKind::Semaphore,
                v1::exported_fd::Details::Semaphore(v1::SemaphoreImport {
                    timeline: true,
                    value,
                }),
                fd,
            )
        }
    };
    let host = matches!(r.object, Object::HostBuffer(_));
    tracing::debug!(id = %r.id, uid, "descriptor exported");
    Ok((
        v1::ExportedFd {
            resource_id: r.id.clone(),
            kind: kind as i32,
            handle_type,
            // Host memory belongs to no device.
            device_uuid: if host {
                Vec::new()
            } else {
                info.device_uuid.to_vec()
            },
            driver_uuid: if host {
                Vec::new()
            } else {
                info.driver_uuid.to_vec()
            },
            details: Some(details),
        },
        fd,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_are_refused_as_invalid() {
        let encode =
            |r: v1::fd_request::Request| v1::FdRequest { request: Some(r) }.encode_to_vec();
        let id = crate::ids::new_id("buf");
        assert_eq!(
            parse_request(&encode(v1::fd_request::Request::Export(id.clone()))).unwrap(),
            FdRequest::Export(id)
        );
        assert_eq!(
            parse_request(&encode(v1::fd_request::Request::Redeem(vec![7; 16]))).unwrap(),
            FdRequest::Redeem([7; 16])
        );
        let wait = v1::FdWait {
            id: crate::ids::new_id("sem"),
            value: 3,
            timeout_ms: 10,
            spin_us: 50,
        };
        assert_eq!(
            parse_request(&encode(v1::fd_request::Request::Wait(wait.clone()))).unwrap(),
            FdRequest::Wait(wait)
        );
        for bad in [
            Vec::new(),
            b"\xff\xff garbage".to_vec(),
            encode(v1::fd_request::Request::Redeem(vec![7; 15])),
            encode(v1::fd_request::Request::Export("buf-nothex".into())),
            encode(v1::fd_request::Request::Wait(v1::FdWait {
                id: "sem-nothex".into(),
                ..Default::default()
            })),
            v1::FdRequest { request: None }.encode_to_vec(),
            vec![0x0a; gpushare_proto::fdpass::MAX_MESSAGE + 1],
        ] {
            let e = parse_request(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e}");
        }
    }
}
