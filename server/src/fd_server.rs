//! fd.sock: redeems export tickets (and direct exports of the caller's own resources) and sends
//! each resource's descriptor with its import metadata as `SCM_RIGHTS`.
//!
//! One request message in, one reply out, any number of times per connection. Malformed,
//! empty, oversized or truncated requests, and requests that carry descriptors (closed at
//! once), get an `FdError` reply with INVALID_ARGUMENT and the connection stays usable. A
//! connection that sends nothing for `fd_idle_timeout_ms` is closed, and so is one past the
//! connection quotas (after an `FdError` with RESOURCE_EXHAUSTED).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use gpushare_proto::fdpass::{FdPassError, SeqPacket, SeqPacketListener};
use gpushare_proto::v1;
use prost::Message;
use tokio_util::task::TaskTracker;

use crate::daemon::Daemon;
use crate::error::{chain, Error, Result};
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
    let cred = match conn.peer_credentials() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "fd.sock: no peer credentials");
            return;
        }
    };
    let uid = cred.uid.as_raw();
    let gid = cred.gid.as_raw();
    // Over the connection quota: one FdError (RESOURCE_EXHAUSTED, naming the quota) as the
    // answer to whatever the client sends first, then the connection closes.
    let _held = match d.hold(uid, crate::quota::Counted::FdConnections) {
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
    loop {
        let received = tokio::select! {
            _ = d.shutdown.cancelled() => return,
            r = tokio::time::timeout(idle, conn.recv()) => match r {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(uid, "fd.sock: idle connection closed");
                    return;
                }
            },
        };
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
            Ok(msg) => match handle(&d, uid, gid, &msg.bytes) {
                Ok((exported, fd)) => (
                    v1::FdReply {
                        reply: Some(v1::fd_reply::Reply::Exported(exported)),
                    },
                    Some(fd),
                ),
                Err(e) => (error_reply(&e), None),
            },
        };
        let bytes = reply.encode_to_vec();
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = conn.send(&bytes, &fds).await {
            tracing::debug!(uid, error = %chain(&e), "fd.sock: reply not delivered");
            return;
        }
        if !fds.is_empty() {
            d.descriptors_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // `fd` (the daemon's copy) closes here; the client holds its own.
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
        None => Err(Error::BadFdRequest("no request set")),
    }
}

/// Redeems one request: the import metadata and a fresh descriptor.
fn handle(d: &Daemon, uid: u32, gid: u32, bytes: &[u8]) -> Result<(v1::ExportedFd, OwnedFd)> {
    let snap = match parse_request(bytes)? {
        FdRequest::Redeem(ticket) => {
            let id = d.tickets.redeem(&ticket, uid)?;
            // The ticket is the authorization: issued to this uid after an access check.
            d.registry.get_unchecked(&id)?
        }
        FdRequest::Export(id) => {
            let caller = d.caller(uid, gid, 0, None)?;
            let snap = d.resource(&id, &caller)?;
            if let Object::Semaphore(s) = &snap.resource.object {
                if !s.exportable() {
                    return Err(Error::NotExportable(id));
                }
            }
            snap
        }
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
            r.take_fd()?,
        ),
        Object::Image(i) => (
            v1::ResourceKind::Image,
            v1::exported_fd::Details::Image(crate::image::import_msg(i.vk())),
            r.take_fd()?,
        ),
        Object::HostBuffer(h) => {
            handle_type = v1::HandleType::Memfd as i32;
            (
                v1::ResourceKind::HostBuffer,
                v1::exported_fd::Details::HostBuffer(v1::HostBufferImport { size: h.size() }),
                r.take_fd()?,
            )
        }
        Object::Semaphore(s) => {
            let fd = r.take_fd()?;
            let value = s.value().map_err(Error::gpu("reading a semaphore value"))?;
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
        for bad in [
            Vec::new(),
            b"\xff\xff garbage".to_vec(),
            encode(v1::fd_request::Request::Redeem(vec![7; 15])),
            encode(v1::fd_request::Request::Export("buf-nothex".into())),
            v1::FdRequest { request: None }.encode_to_vec(),
            vec![0x0a; gpushare_proto::fdpass::MAX_MESSAGE + 1],
        ] {
            let e = parse_request(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e}");
        }
    }
}
