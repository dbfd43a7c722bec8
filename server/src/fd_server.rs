//! fd.sock: redeems export tickets (and direct exports of resources the caller may use) and
//! sends each resource's descriptor with its import metadata as `SCM_RIGHTS`; and serves host
//! waits whose reply the wait service's thread writes to the socket itself, the daemon's
//! lowest-latency reply path (no async runtime hop, no HTTP/2).
//!
//! One request message in, one reply out, any number of times per connection. Malformed,
//! empty, oversized or truncated requests, and requests that carry descriptors (closed at
//! once), get an `FdError` reply with INVALID_ARGUMENT and the connection stays usable. A
//! connection that sends nothing for `fd_idle_timeout_ms` is closed, and so is one past the
//! connection quotas (after an `FdError` with RESOURCE_EXHAUSTED). Exports and redeems are
//! calls in flight (`quotas.calls_in_flight` and `calls_in_flight_per_uid`, shared with gRPC
//! calls): past them they get RESOURCE_EXHAUSTED at once. Every request read gets its reply
//! before the connection closes, at shutdown too.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use gpushare_proto::fdpass::{self, FdPassError, Received, SeqPacket, SeqPacketListener};
use gpushare_proto::v1;
use prost::Message;
use tokio_util::task::TaskTracker;

use crate::access::Caller;
use crate::daemon::export::ExportAsk;
use crate::daemon::stream::{AcquireAsk, Answer, Direct};
use crate::daemon::wait::Asked;
use crate::daemon::Daemon;
use crate::error::{chain, Error, Result};
use crate::peer::Peer;
use crate::requests;
use crate::resource::check_resource_id;
use crate::stream::HANDLE_PREFIX;
use crate::wire;

/// Accepts connections until shutdown; each is served on its own task, tracked by `tasks`.
pub(crate) async fn serve(d: Arc<Daemon>, listener: SeqPacketListener, tasks: TaskTracker) {
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
            let _ = conn.send(&wire::fd_error(&e).encode_to_vec(), &[]).await;
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
        let (reply, exported) = match received {
            Err(FdPassError::Closed) => return,
            Err(FdPassError::Io { call, source }) => {
                tracing::debug!(uid, call, error = %source, "fd.sock: connection failed");
                return;
            }
            Err(FdPassError::DataTruncated { .. }) => (
                wire::fd_error(&Error::BadFdRequest("message too large")),
                None,
            ),
            Err(FdPassError::ControlTruncated { max })
            | Err(FdPassError::TooLarge { fds: max, .. }) => {
                (wire::fd_error(&Error::FdsRefused(max)), None)
            }
            Ok(msg) if !msg.fds.is_empty() => {
                let n = msg.fds.len();
                drop(msg.fds);
                (wire::fd_error(&Error::FdsRefused(n)), None)
            }
            Ok(msg) => match parse_request(&msg.bytes) {
                Ok(FdRequest::Wait(w)) => match wait(&d, &peer, &conn, w, &mut early).await {
                    Waited::Answered => continue,
                    Waited::Reply(reply) => (reply, None),
                    Waited::Gone => return,
                },
                Ok(FdRequest::Stream(call)) => {
                    match stream_call(&d, &peer, &conn, call, &mut early).await {
                        Waited::Answered => continue,
                        Waited::Reply(reply) => (reply, None),
                        Waited::Gone => return,
                    }
                }
                Ok(FdRequest::Export { ask, word }) => match d.in_flight.admit(Some(&calls)) {
                    Err(refused) => (wire::fd_error(&refused), None),
                    Ok(guard) => {
                        admitted = Some(guard);
                        match export(&d, &peer, ask, word).await {
                            Ok(e) => (wire::fd_exported(&e), Some(e)),
                            Err(e) => (wire::fd_error(&e), None),
                        }
                    }
                },
                Err(e) => (wire::fd_error(&e), None),
            },
        };
        let bytes = reply.encode_to_vec();
        let fds: Vec<_> = exported
            .iter()
            .flat_map(|e| std::iter::once(&e.fd).chain(e.word.as_ref()))
            .map(|fd| fd.as_fd())
            .collect();
        if let Err(e) = conn.send(&bytes, &fds).await {
            tracing::debug!(uid, error = %chain(&e), "fd.sock: reply not delivered");
            return;
        }
        drop(admitted);
        // A semaphore's word buffer counts as a descriptor of its own.
        d.descriptors_sent
            .fetch_add(fds.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // The daemon's copies of the descriptors close here; the client holds its own.
    }
}

/// The connection's peer as a caller: fd.sock requests name no session.
fn caller(d: &Daemon, peer: &Peer) -> Result<Caller> {
    d.caller(peer, None)
}

async fn export(
    d: &Daemon,
    peer: &Peer,
    ask: ExportAsk,
    word: bool,
) -> Result<crate::daemon::export::Exported> {
    d.export(&caller(d, peer)?, ask, word).await
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

/// Serves one fd.sock wait, by the rules every host wait follows (`daemon::wait`). While it is
/// pending the connection is watched: a hang-up cancels the wait, and a message that arrives
/// early is kept in `early` and answered after the wait's reply.
async fn wait(
    d: &Daemon,
    peer: &Peer,
    conn: &SeqPacket,
    w: v1::FdWait,
    early: &mut Option<std::result::Result<Received, FdPassError>>,
) -> Waited {
    let refused = |e: Error| Waited::Reply(wire::fd_error(&e));
    let caller = match caller(d, peer) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let point = match d.wait_point(&caller, &w.id, w.value) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let timeout = d.wait_timeout(Some(Duration::from_millis(w.timeout_ms.into())), None);
    // The reply goes out on a duplicate of the socket, from the thread that saw the value.
    let reply: crate::waits::DirectReply = match conn.as_fd().try_clone_to_owned() {
        Ok(socket) => Box::new(move |value| {
            let bytes = wire::fd_waited(value).encode_to_vec();
            fdpass::send(socket.as_fd(), &bytes, &[]).is_ok()
        }),
        Err(source) => {
            return refused(Error::Io {
                op: "duplicating the fd.sock connection",
                source,
            })
        }
    };
    let asked = Asked::Socket {
        spin: d.spin(w.spin_us),
        reply,
    };
    let waiting = d.wait_for(&caller, std::slice::from_ref(&point), timeout, asked);
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
        Ok(w) if w.replied => Waited::Answered,
        Ok(w) => Waited::Reply(wire::fd_waited(w.value)),
        Err(e) => refused(e),
    }
}

/// Serves one frame-stream call. An acquire that parks is answered by the thread whose call
/// decided it, on a duplicate of the socket; meanwhile the connection is watched as for a wait.
async fn stream_call(
    d: &Daemon,
    peer: &Peer,
    conn: &SeqPacket,
    call: v1::stream_call::Call,
    early: &mut Option<std::result::Result<Received, FdPassError>>,
) -> Waited {
    use v1::stream_call::Call;
    use v1::stream_reply::Reply;
    let refused = |e: Error| Waited::Reply(wire::fd_error(&e));
    let caller = match caller(d, peer) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let answer = |r: Result<Reply>| match r {
        Ok(reply) => Waited::Reply(wire::stream::fd_stream(reply)),
        Err(e) => refused(e),
    };
    let ask = |r: &v1::AcquireRequest| AcquireAsk {
        timeout: d.wait_timeout(Some(Duration::from_millis(r.timeout_ms.into())), None),
        host_wait: r.host_wait,
        spin: d.spin(r.spin_us),
        in_flight: false,
    };
    let socket = match conn.as_fd().try_clone_to_owned() {
        Ok(s) => Arc::new(s),
        Err(source) => {
            return refused(Error::Io {
                op: "duplicating the fd.sock connection",
                source,
            })
        }
    };
    // The direct reply: the deciding thread encodes and sends it.
    fn direct<T: 'static>(socket: Arc<std::os::fd::OwnedFd>, encode: fn(&T) -> Reply) -> Direct<T> {
        Box::new(move |r: &Result<T>| {
            let reply = match r {
                Ok(t) => wire::stream::fd_stream(encode(t)),
                Err(e) => wire::fd_error(e),
            };
            fdpass::send(socket.as_fd(), &reply.encode_to_vec(), &[]).is_ok()
        })
    }
    let pending = async {
        match call {
            Call::AcquireSlot(r) => {
                let dr = direct(socket, |g| Reply::Slot(wire::stream::slot_grant(g)));
                match d.acquire_slot(&caller, &r.handle, ask(&r), Some(dr)).await {
                    Ok(Answer::Sent) => Waited::Answered,
                    Ok(Answer::Reply(g)) => answer(Ok(Reply::Slot(wire::stream::slot_grant(&g)))),
                    Err(e) => refused(e),
                }
            }
            Call::AcquireFrame(r) => {
                let dr = direct(socket, |f| Reply::Frame(wire::stream::frame(f)));
                match d.acquire_frame(&caller, &r.handle, ask(&r), Some(dr)).await {
                    Ok(Answer::Sent) => Waited::Answered,
                    Ok(Answer::Reply(f)) => answer(Ok(Reply::Frame(wire::stream::frame(&f)))),
                    Err(e) => refused(e),
                }
            }
            Call::Present(r) => answer(
                d.present(
                    &caller,
                    &r.handle,
                    r.slot,
                    r.ready_value,
                    requests::frame_meta(r.metadata),
                )
                .map(|(ready_value, sequence)| {
                    Reply::Presented(v1::Presented {
                        ready_value,
                        sequence,
                    })
                }),
            ),
            Call::Release(r) => answer(
                d.release_frame(&caller, &r.handle, r.slot, r.release_value)
                    .map(|release_value| Reply::Released(v1::Released { release_value })),
            ),
        }
    };
    tokio::pin!(pending);
    loop {
        tokio::select! {
            biased;
            done = &mut pending => return done,
            r = conn.recv(), if early.is_none() => match r {
                Err(FdPassError::Closed) | Err(FdPassError::Io { .. }) => return Waited::Gone,
                other => *early = Some(other),
            },
        }
    }
}

/// A well-formed fd.sock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FdRequest {
    /// Export a descriptor: redeem a ticket, or export a resource by id (well formed, not yet
    /// looked up); `word`: a semaphore's word buffer too.
    Export {
        /// What to export.
        ask: ExportAsk,
        /// Send a semaphore's word buffer as a second descriptor.
        word: bool,
    },
    /// Wait for a semaphore value (the id well formed, not yet looked up).
    Wait(v1::FdWait),
    /// A frame-stream call (its handle well formed, not yet looked up).
    Stream(v1::stream_call::Call),
}

/// Decodes and validates one fd.sock message, before anything is looked up: every malformed
/// input is an INVALID_ARGUMENT error, never a panic (a fuzz target drives this: `fuzz/`).
pub(crate) fn parse_request(bytes: &[u8]) -> Result<FdRequest> {
    if bytes.is_empty() {
        return Err(Error::BadFdRequest("empty message"));
    }
    if bytes.len() > gpushare_proto::fdpass::MAX_MESSAGE {
        return Err(Error::BadFdRequest("message too large"));
    }
    let req = v1::FdRequest::decode(bytes).map_err(|_| Error::BadFdRequest("not an FdRequest"))?;
    let word = req.word;
    match req.request {
        Some(v1::fd_request::Request::Redeem(ticket)) => Ok(FdRequest::Export {
            ask: ExportAsk::Ticket(
                ticket
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::BadFdRequest("a ticket is 16 bytes"))?,
            ),
            word,
        }),
        Some(v1::fd_request::Request::Export(id)) => {
            check_resource_id(&id)?;
            Ok(FdRequest::Export {
                ask: ExportAsk::Id(id),
                word,
            })
        }
        Some(v1::fd_request::Request::Wait(w)) => {
            check_resource_id(&w.id)?;
            Ok(FdRequest::Wait(w))
        }
        Some(v1::fd_request::Request::Stream(call)) => {
            use v1::stream_call::Call;
            let handle = match &call.call {
                Some(Call::AcquireSlot(r)) | Some(Call::AcquireFrame(r)) => &r.handle,
                Some(Call::Present(r)) => &r.handle,
                Some(Call::Release(r)) => &r.handle,
                None => return Err(Error::BadFdRequest("no stream call set")),
            };
            if !crate::ids::is_well_formed(handle, HANDLE_PREFIX) {
                return Err(Error::MalformedId {
                    what: "stream handle",
                    id: crate::ids::shown(handle),
                });
            }
            call.call
                .map(FdRequest::Stream)
                .ok_or(Error::BadFdRequest("no stream call set"))
        }
        None => Err(Error::BadFdRequest("no request set")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_are_refused_as_invalid() {
        let encode = |r: v1::fd_request::Request| {
            v1::FdRequest {
                request: Some(r),
                word: false,
            }
            .encode_to_vec()
        };
        let id = crate::ids::new_id("buf");
        assert_eq!(
            parse_request(&encode(v1::fd_request::Request::Export(id.clone()))).unwrap(),
            FdRequest::Export {
                ask: ExportAsk::Id(id),
                word: false
            }
        );
        assert_eq!(
            parse_request(&encode(v1::fd_request::Request::Redeem(vec![7; 16]))).unwrap(),
            FdRequest::Export {
                ask: ExportAsk::Ticket([7; 16]),
                word: false
            }
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
            v1::FdRequest {
                request: None,
                word: false,
            }
            .encode_to_vec(),
            vec![0x0a; gpushare_proto::fdpass::MAX_MESSAGE + 1],
        ] {
            let e = parse_request(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e}");
        }
    }
}
