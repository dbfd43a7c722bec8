//! Counts calls in flight (gRPC calls, and export and redeem requests on fd.sock), so that
//! shutdown can wait for them to finish without waiting for idle client connections to go away
//! (an HTTP/2 graceful close needs the client's help).
//!
//! A gRPC call counts from its arrival until its handler returned a response (for streaming
//! calls, until the stream started: streams end on their own at shutdown); an fd.sock request
//! until its reply is sent.
//!
//! The same count sheds load: past `quotas.calls_in_flight` a call is answered at once with
//! RESOURCE_EXHAUSTED, naming the quota, instead of queueing behind the others. A call parked
//! in a host wait (a Wait call, or an operation waiting for its wait points: [`InFlight::park`])
//! does not count against that quota while it waits, so that parked waits, bounded per uid by
//! `quotas.pending_waits_per_uid`, cannot starve every other uid of calls. (fd.sock waits are
//! not counted at all: `pending_waits_per_uid` bounds them.) A refusal touches only this
//! counter's atomics: under a flood of calls, refusing must not contend on a lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

/// The shared counter.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
    /// Calls refused for load (`calls_in_flight`).
    shed: AtomicUsize,
    /// Calls in flight that are parked in a host wait (not counted against `limit`).
    parked: AtomicUsize,
    limit: usize,
}

/// A parked call ([`InFlight::park`]); counts again when dropped.
#[derive(Debug)]
pub struct Parked(Arc<InFlight>);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl InFlight {
    /// A counter that refuses calls past `limit` in flight.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            idle: Notify::new(),
            shed: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            limit,
        }
    }

    /// Marks a call in flight as parked in a host wait until the guard drops: it then does not
    /// count against the calls-in-flight quota (it still counts for the shutdown drain).
    pub fn park(self: &Arc<Self>) -> Parked {
        self.parked.fetch_add(1, Ordering::AcqRel);
        Parked(self.clone())
    }

    /// Calls parked in host waits now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Admits one call, or refuses it (RESOURCE_EXHAUSTED, naming the quota) when `limit`
    /// calls are in flight and not parked. The call counts until the guard drops.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, crate::error::Error> {
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self.clone());
        let active = before.saturating_sub(self.parked.load(Ordering::Acquire));
        if active >= self.limit {
            drop(admitted);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Err(crate::error::Error::Quota {
                what: SHED_QUOTA,
                limit: self.limit as u64,
                scope: String::new(),
            });
        }
        Ok(admitted)
    }

    /// Calls refused so far because `limit` calls were in flight.
    pub fn shed(&self) -> usize {
        self.shed.load(Ordering::Relaxed)
    }

    /// Calls in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no call is in flight, or after `timeout`. Returns whether it drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// The quota's name in refusals and in `gpushare_quota_refusals_total`.
pub const SHED_QUOTA: &str = "calls in flight";

/// An admitted call ([`InFlight::admit`]); it stops counting when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<InFlight>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Tower layer that counts calls in an [`InFlight`].
#[derive(Debug, Clone)]
pub struct InFlightLayer(pub Arc<InFlight>);

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
pub struct InFlightService<S> {
    inner: S,
    counter: Arc<InFlight>,
}

impl<S, R, B> tower::Service<R> for InFlightService<S>
where
    S: tower::Service<R, Response = tonic::codegen::http::Response<B>>,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let guard = match self.counter.admit() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn admits_up_to_the_limit_and_parked_calls_make_room() {
        let f = Arc::new(InFlight::with_limit(1));
        let first = f.admit().expect("the first call fits");
        let refused = f.admit().expect_err("past the limit");
        assert!(
            matches!(
                refused,
                Error::Quota {
                    what: SHED_QUOTA,
                    limit: 1,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!((f.count(), f.shed()), (1, 1));
        // A parked call leaves room for another.
        let parked = f.park();
        let second = f.admit().expect("the first call is parked");
        drop(parked);
        assert!(f.admit().is_err());
        assert_eq!((f.count(), f.shed()), (2, 2));
        drop((first, second));
        assert_eq!(f.count(), 0);
        f.admit().expect("room again");
    }
}
