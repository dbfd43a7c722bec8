//! A handle to a timeline semaphore and the host operations on it.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use gpushare_proto::v1;
use tokio_stream::Stream;

use crate::client::resource_ref;
use crate::sync::duration_to_ms;
use crate::{Client, Exported, Result};

/// A timeline semaphore, named by id. Holds a clone of its [`Client`] (and so keeps its session
/// alive).
#[derive(Clone, Debug)]
pub struct Semaphore {
    client: Client,
    id: String,
}

impl Semaphore {
    pub(crate) fn new(client: Client, id: &str) -> Self {
        Semaphore {
            client,
            id: id.to_owned(),
        }
    }

    /// The semaphore's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client this handle calls through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The semaphore's description (value, exportability, references).
    pub async fn describe(&self) -> Result<v1::Resource> {
        self.client.describe(&self.id).await
    }

    /// Host-signals the semaphore to `value`, which must exceed its current value
    /// (`FAILED_PRECONDITION` otherwise). Returns the value after the signal.
    pub async fn signal(&self, value: u64) -> Result<u64> {
        let request = v1::SignalRequest {
            id: self.id.clone(),
            value,
        };
        let reply = self
            .client
            .grpc()
            .signal(self.client.request(request))
            .await?;
        Ok(reply.into_inner().value)
    }

    /// Waits until the value is at least `value`, for at most `timeout` (rounded up to whole
    /// milliseconds; zero checks once). Returns the value seen. `DEADLINE_EXCEEDED` when the
    /// time ran out; the daemon caps `timeout` at its `max_wait_timeout_ms`.
    pub async fn wait(&self, value: u64, timeout: Duration) -> Result<u64> {
        let request = v1::WaitRequest {
            id: self.id.clone(),
            value,
            timeout_ms: duration_to_ms(timeout),
        };
        let reply = self
            .client
            .grpc()
            .wait(self.client.request(request))
            .await?;
        Ok(reply.into_inner().value)
    }

    /// The current value.
    pub async fn value(&self) -> Result<u64> {
        let reply = self
            .client
            .grpc()
            .get_value(self.client.request(resource_ref(&self.id)))
            .await?;
        Ok(reply.into_inner().value)
    }

    /// The value now, then every change the daemon sees (several changes between two polls
    /// arrive once, with the latest value). The call is made when the stream is first polled;
    /// the stream ends after its first error: `ABORTED` when the semaphore is freed or abandoned,
    /// `UNAVAILABLE` when the daemon shuts down. Dropping the stream cancels the call.
    pub fn watch(&self) -> Watch {
        let mut grpc = self.client.grpc();
        let request = self.client.request(resource_ref(&self.id));
        Watch {
            state: WatchState::Opening(Box::pin(async move {
                Ok(grpc.watch(request).await?.into_inner())
            })),
        }
    }

    /// Exports the semaphore and redeems the descriptor (`FAILED_PRECONDITION` where the device
    /// cannot export timeline semaphores).
    pub async fn export(&self) -> Result<Exported> {
        self.client.export(&self.id).await
    }

    /// Drops this session's reference (or the pin). Returns whether the daemon freed it.
    pub async fn release(&self) -> Result<bool> {
        self.client.release(&self.id).await
    }
}

/// The stream of a semaphore's values returned by [`Semaphore::watch`].
pub struct Watch {
    state: WatchState,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            WatchState::Opening(_) => "opening",
            WatchState::Open(_) => "open",
            WatchState::Done => "done",
        };
        f.debug_struct("Watch").field("state", &state).finish()
    }
}

type OpenWatch = Pin<Box<dyn Future<Output = Result<tonic::Streaming<v1::SemaphoreValue>>> + Send>>;

enum WatchState {
    /// The `Watch` call is under way.
    Opening(OpenWatch),
    /// Values are arriving.
    Open(Box<tonic::Streaming<v1::SemaphoreValue>>),
    /// The stream ended or failed.
    Done,
}

impl Stream for Watch {
    type Item = Result<u64>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let state = &mut self.get_mut().state;
        loop {
            match state {
                WatchState::Opening(open) => match ready!(open.as_mut().poll(cx)) {
                    Ok(stream) => *state = WatchState::Open(Box::new(stream)),
                    Err(e) => {
                        *state = WatchState::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                WatchState::Open(stream) => {
                    return match ready!(Pin::new(&mut **stream).poll_next(cx)) {
                        Some(Ok(v)) => Poll::Ready(Some(Ok(v.value))),
                        Some(Err(status)) => {
                            *state = WatchState::Done;
                            Poll::Ready(Some(Err(status.into())))
                        }
                        None => {
                            *state = WatchState::Done;
                            Poll::Ready(None)
                        }
                    }
                }
                WatchState::Done => return Poll::Ready(None),
            }
        }
    }
}
