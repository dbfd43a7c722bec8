//! control.sock connections under the connection quotas (`quotas.connections_per_uid`,
//! `quotas.connections`): each accepted connection holds a slot for its uid until it closes; one
//! past a quota is closed at once (the client sees the connection end), logged and counted
//! (`gpushare_quota_refusals_total`). And the calls on them: each counts in flight
//! ([`InFlightLayer`], `quotas.calls_in_flight`, `calls_in_flight_per_uid`) until its handler
//! answered, and is refused at once with RESOURCE_EXHAUSTED past those quotas.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Connected;

use crate::daemon::Daemon;
use crate::inflight::{InFlight, UidCalls};
use crate::peer::Peer;
use crate::quota::{Counted, Held};

/// An accepted control.sock connection, its quota slot and its uid's calls in flight.
#[derive(Debug)]
pub(crate) struct Admitted {
    io: UnixStream,
    peer: Peer,
    calls: Arc<UidCalls>,
    _held: Held,
}

/// What a request on a control.sock connection knows of it (request extensions): the peer's
/// credentials, and the uid's calls in flight (`quotas.calls_in_flight_per_uid`).
#[derive(Debug, Clone)]
pub(crate) struct ControlInfo {
    /// The peer's credentials, read once when it connected.
    pub(crate) peer: Peer,
    /// The uid's calls in flight.
    pub(crate) calls: Arc<UidCalls>,
}

/// The accepted connections that fit the quotas.
pub(crate) fn admitted(
    d: Arc<Daemon>,
    listener: UnixListener,
) -> impl Stream<Item = io::Result<Admitted>> {
    UnixListenerStream::new(listener).filter_map(move |conn| {
        let d = d.clone();
        async move {
            let io = match conn {
                Ok(io) => io,
                Err(e) => return Some(Err(e)),
            };
            let peer = match Peer::of(io.as_fd()) {
                Ok(peer) => peer,
                Err(e) => {
                    tracing::warn!(error = %e, "control.sock: no peer credentials; connection closed");
                    return None;
                }
            };
            let uid = peer.uid;
            match d.hold(uid, None, Counted::ControlConnections) {
                Ok(held) => Some(Ok(Admitted {
                    io,
                    peer,
                    calls: d.in_flight.uid(uid),
                    _held: held,
                })),
                Err(e) => {
                    // Debug, not warn: a flood would flood the journal. Refusals are counted
                    // in gpushare_quota_refusals_total.
                    tracing::debug!(uid, error = %e, "control.sock: connection refused");
                    None
                }
            }
        }
    })
}

impl Connected for Admitted {
    type ConnectInfo = ControlInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ControlInfo {
            peer: self.peer.clone(),
            calls: self.calls.clone(),
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Tower layer that counts calls in an [`InFlight`].
#[derive(Debug, Clone)]
pub(crate) struct InFlightLayer(pub Arc<InFlight>);

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = InFlightService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InFlightService {
            inner,
            counter: self.0.clone(),
        }
    }
}

/// The service [`InFlightLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub(crate) struct InFlightService<S> {
    inner: S,
    counter: Arc<InFlight>,
}

impl<S, ReqB, B> tower::Service<tonic::codegen::http::Request<ReqB>> for InFlightService<S>
where
    S: tower::Service<
        tonic::codegen::http::Request<ReqB>,
        Response = tonic::codegen::http::Response<B>,
    >,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<ReqB>) -> Self::Future {
        // The connection's uid count ([`ControlInfo`]).
        let uid = req
            .extensions()
            .get::<ControlInfo>()
            .map(|info| info.calls.clone());
        let guard = match self.counter.admit(uid.as_ref()) {
            Ok(guard) => guard,
            Err(refused) => {
                let response = tonic::Status::from(refused).into_http::<B>();
                return Box::pin(async move { Ok(response) });
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            drop(guard);
            out
        })
    }
}
