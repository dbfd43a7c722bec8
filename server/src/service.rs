//! The `gpushare.v1.GpuShare` gRPC service: each handler reads the caller (its connection's
//! peer credentials and session header) and the call's deadline, calls one daemon method, and
//! maps the result to the wire ([`crate::wire`]); errors map in one place
//! (`From<Error> for Status`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use gpushare_proto::v1::{self, gpu_share_server::GpuShare};
use gpushare_proto::SESSION_HEADER;
use tonic::{Request, Response, Status};

use crate::access::Caller;
use crate::connections::ControlInfo;
use crate::daemon::create::Placement;
use crate::daemon::stream::{AcquireAsk, Answer, Attachment};
use crate::daemon::wait::Asked;
use crate::daemon::{ops, Daemon};
use crate::error::{Error, Result};
use crate::waits::End;
use crate::{requests, wire};

/// The gRPC service over the daemon.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    d: Arc<Daemon>,
}

impl Service {
    /// A service over `daemon`.
    pub(crate) fn new(daemon: Arc<Daemon>) -> Self {
        Self { d: daemon }
    }

    /// The caller of `req`: peer credentials of its connection and its session header.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller> {
        let peer = &req
            .extensions()
            .get::<ControlInfo>()
            .ok_or(Error::NoPeerCredentials)?
            .peer;
        let session = match req.metadata().get(SESSION_HEADER) {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| Error::UnknownSession("(not ASCII)".into()))?,
            ),
            None => None,
        };
        self.d.caller(peer, session)
    }
}

impl Service {
    /// The reply of an attach call.
    fn attached(&self, a: &Attachment) -> v1::StreamAttachment {
        match &a.stream.resource.object {
            crate::resource::Object::Stream(s) => wire::stream::attachment(&self.d, a, s),
            _ => v1::StreamAttachment::default(),
        }
    }

    /// An acquire's timeout and host wait, capped by the call's deadline.
    fn acquire_ask(&self, req: &Request<v1::AcquireRequest>) -> AcquireAsk {
        let r = req.get_ref();
        AcquireAsk {
            timeout: self.d.wait_timeout(
                Some(Duration::from_millis(r.timeout_ms.into())),
                deadline(req),
            ),
            host_wait: r.host_wait,
            spin: self.d.spin(r.spin_us),
            in_flight: true,
        }
    }
}

/// The call's own gRPC deadline (`grpc-timeout`), if it sent one.
fn deadline<T>(req: &Request<T>) -> Option<Duration> {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

type Reply<T> = std::result::Result<Response<T>, Status>;

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

#[tonic::async_trait]
impl GpuShare for Service {
    async fn get_info(&self, _req: Request<v1::GetInfoRequest>) -> Reply<v1::GetInfoResponse> {
        ok(wire::info(&self.d))
    }

    type SessionStream = BoxStream<v1::SessionEvent>;

    async fn session(&self, req: Request<v1::SessionRequest>) -> Reply<Self::SessionStream> {
        let caller = self.caller(&req)?;
        let guard = self
            .d
            .start_session(&caller, &req.into_inner().client_name)?;
        let started = v1::SessionEvent {
            event: Some(v1::session_event::Event::Started(v1::SessionStarted {
                session_id: guard.id().to_owned(),
            })),
        };
        // The stream owns the session: it ends however the stream goes.
        let shutdown = self.d.sessions_end.clone();
        let end = futures_util::stream::once(async move {
            shutdown.cancelled().await;
            drop(guard);
            Err(Status::from(Error::ShuttingDown))
        });
        let stream = futures_util::stream::iter([Ok(started)]).chain(end);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_buffer(&self, req: Request<v1::CreateBufferRequest>) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let at = Placement {
            device: r.device,
            name: r.name,
            pin: r.pin,
        };
        ok(wire::resource(&self.d.create_buffer(&caller, at, r.size)?))
    }

    async fn create_semaphore(
        &self,
        req: Request<v1::CreateSemaphoreRequest>,
    ) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let at = Placement {
            device: r.device,
            name: r.name,
            pin: r.pin,
        };
        let path = requests::signal_path(r.signal_path)?;
        ok(wire::resource(&self.d.create_semaphore(
            &caller,
            at,
            r.initial_value,
            r.word,
            path,
        )?))
    }

    async fn create_host_buffer(
        &self,
        req: Request<v1::CreateHostBufferRequest>,
    ) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let at = Placement {
            device: 0,
            name: r.name,
            pin: r.pin,
        };
        ok(wire::resource(
            &self.d.create_host_buffer(&caller, at, r.size).await?,
        ))
    }

    async fn create_image(&self, req: Request<v1::CreateImageRequest>) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let desc = requests::image_desc(&r)?;
        let usage = requests::image_usage(r.usage, &desc);
        let at = Placement {
            device: r.device,
            name: r.name,
            pin: r.pin,
        };
        ok(wire::resource(
            &self.d.create_image(&caller, at, &desc, usage)?,
        ))
    }

    async fn list_resources(
        &self,
        req: Request<v1::ListResourcesRequest>,
    ) -> Reply<v1::ListResourcesResponse> {
        let caller = self.caller(&req)?;
        ok(wire::resources(&self.d.registry.list(&caller)))
    }

    async fn describe_resource(&self, req: Request<v1::ResourceRef>) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        ok(wire::resource(
            &self.d.resource_visible(&req.get_ref().id, &caller)?,
        ))
    }

    async fn list_sessions(
        &self,
        req: Request<v1::ListSessionsRequest>,
    ) -> Reply<v1::ListSessionsResponse> {
        let caller = self.caller(&req)?;
        ok(wire::sessions(self.d.sessions(&caller)))
    }

    async fn list_semaphores(
        &self,
        req: Request<v1::ListSemaphoresRequest>,
    ) -> Reply<v1::ListSemaphoresResponse> {
        let caller = self.caller(&req)?;
        ok(wire::semaphores(self.d.semaphores(&caller)))
    }

    async fn grant(&self, req: Request<v1::GrantRequest>) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let who = requests::grantee(r.grantee)?;
        ok(wire::resource(
            &self.d.set_grant(&caller, &r.id, who, true)?,
        ))
    }

    async fn revoke(&self, req: Request<v1::GrantRequest>) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let who = requests::grantee(r.grantee)?;
        ok(wire::resource(
            &self.d.set_grant(&caller, &r.id, who, false)?,
        ))
    }

    async fn create_token(&self, req: Request<v1::ResourceRef>) -> Reply<v1::TokenResponse> {
        let caller = self.caller(&req)?;
        let token = self.d.create_token(&caller, &req.get_ref().id)?;
        ok(v1::TokenResponse {
            token: token.to_vec(),
        })
    }

    async fn revoke_tokens(&self, req: Request<v1::ResourceRef>) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        ok(wire::resource(
            &self.d.revoke_tokens(&caller, &req.get_ref().id)?,
        ))
    }

    async fn open(&self, req: Request<v1::OpenRequest>) -> Reply<v1::Resource> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let target = requests::open_target(r.target)?;
        let path = requests::signal_path(r.signal_path)?;
        ok(wire::resource(
            &self.d.open(&caller, &target, r.signal, path)?,
        ))
    }

    async fn release_resource(
        &self,
        req: Request<v1::ResourceRef>,
    ) -> Reply<v1::ReleaseResourceResponse> {
        let caller = self.caller(&req)?;
        let freed = self.d.release(&caller, &req.get_ref().id)?;
        ok(v1::ReleaseResourceResponse { freed })
    }

    async fn export(&self, req: Request<v1::ResourceRef>) -> Reply<v1::ExportResponse> {
        let caller = self.caller(&req)?;
        let ticket = self.d.issue_ticket(&caller, &req.get_ref().id)?;
        ok(v1::ExportResponse {
            ticket: ticket.to_vec(),
            ttl_ms: self.d.config.limits.ticket_ttl_ms,
        })
    }

    async fn signal(&self, req: Request<v1::SignalRequest>) -> Reply<v1::SemaphoreValue> {
        let caller = self.caller(&req)?;
        let r = req.get_ref();
        let (_, sem) = self.d.semaphore(&r.id, &caller)?;
        ok(v1::SemaphoreValue {
            value: sem.signal(r.value)?,
        })
    }

    async fn wait(&self, req: Request<v1::WaitRequest>) -> Reply<v1::SemaphoreValue> {
        let caller = self.caller(&req)?;
        let asked = Duration::from_millis(req.get_ref().timeout_ms.into());
        let timeout = self.d.wait_timeout(Some(asked), deadline(&req));
        let r = req.into_inner();
        let point = self.d.wait_point(&caller, &r.id, r.value)?;
        let waited = self
            .d
            .wait_for(&caller, &[point], timeout, Asked::Call)
            .await?;
        ok(v1::SemaphoreValue {
            value: waited.value,
        })
    }

    async fn get_value(&self, req: Request<v1::ResourceRef>) -> Reply<v1::SemaphoreValue> {
        let caller = self.caller(&req)?;
        let (_, sem) = self.d.semaphore(&req.get_ref().id, &caller)?;
        ok(v1::SemaphoreValue {
            value: sem.value()?,
        })
    }

    type WatchStream = BoxStream<v1::SemaphoreValue>;

    async fn watch(&self, req: Request<v1::ResourceRef>) -> Reply<Self::WatchStream> {
        let caller = self.caller(&req)?;
        let (sem, rx, held) = self.d.watch(&caller, &req.get_ref().id)?;
        // State: the receiver and the last value sent; `None` once the stream has ended. The
        // quota slot lives as long as the stream.
        let stream = futures_util::stream::unfold(Some((rx, None::<u64>)), move |state| {
            let sem = sem.clone();
            let _held = &held;
            async move {
                let (mut rx, last) = state?;
                loop {
                    let s = *rx.borrow_and_update();
                    if let Some(end) = s.end {
                        let err = match end {
                            End::Ended(why) => sem.ended_error(why),
                            End::ShuttingDown => Error::ShuttingDown,
                        };
                        return Some((Err(Status::from(err)), None));
                    }
                    if last != Some(s.value) {
                        return Some((
                            Ok(v1::SemaphoreValue { value: s.value }),
                            Some((rx, Some(s.value))),
                        ));
                    }
                    if rx.changed().await.is_err() {
                        return Some((Err(Status::from(Error::ShuttingDown)), None));
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write(&self, req: Request<v1::WriteRequest>) -> Reply<v1::OpResponse> {
        let (caller, deadline) = (self.caller(&req)?, deadline(&req));
        ops::write(&self.d, &caller, deadline, req.into_inner()).await?;
        ok(v1::OpResponse {})
    }

    async fn read(&self, req: Request<v1::ReadRequest>) -> Reply<v1::ReadResponse> {
        let (caller, deadline) = (self.caller(&req)?, deadline(&req));
        let data = ops::read(&self.d, &caller, deadline, req.into_inner()).await?;
        ok(v1::ReadResponse { data })
    }

    async fn write_image(&self, req: Request<v1::WriteImageRequest>) -> Reply<v1::OpResponse> {
        let (caller, deadline) = (self.caller(&req)?, deadline(&req));
        ops::write_image(&self.d, &caller, deadline, req.into_inner()).await?;
        ok(v1::OpResponse {})
    }

    async fn read_image(&self, req: Request<v1::ReadImageRequest>) -> Reply<v1::ReadResponse> {
        let (caller, deadline) = (self.caller(&req)?, deadline(&req));
        let data = ops::read_image(&self.d, &caller, deadline, req.into_inner()).await?;
        ok(v1::ReadResponse { data })
    }

    async fn clear_image(&self, req: Request<v1::ClearImageRequest>) -> Reply<v1::OpResponse> {
        let (caller, deadline) = (self.caller(&req)?, deadline(&req));
        ops::clear_image(&self.d, &caller, deadline, req.into_inner()).await?;
        ok(v1::OpResponse {})
    }

    async fn generate_mips(&self, req: Request<v1::GenerateMipsRequest>) -> Reply<v1::OpResponse> {
        let (caller, deadline) = (self.caller(&req)?, deadline(&req));
        ops::generate_mips(&self.d, &caller, deadline, req.into_inner()).await?;
        ok(v1::OpResponse {})
    }

    async fn fill(&self, req: Request<v1::FillRequest>) -> Reply<v1::OpResponse> {
        let (caller, deadline) = (self.caller(&req)?, deadline(&req));
        ops::fill(&self.d, &caller, deadline, req.into_inner()).await?;
        ok(v1::OpResponse {})
    }

    async fn copy(&self, req: Request<v1::CopyRequest>) -> Reply<v1::OpResponse> {
        let (caller, deadline) = (self.caller(&req)?, deadline(&req));
        ops::copy(&self.d, &caller, deadline, req.into_inner()).await?;
        ok(v1::OpResponse {})
    }
    async fn create_stream(
        &self,
        req: Request<v1::CreateStreamRequest>,
    ) -> Reply<v1::StreamAttachment> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let spec = requests::slot_spec(&r)?;
        let path = requests::signal_path(r.signal_path)?;
        let at = Placement {
            device: r.device,
            name: r.name,
            pin: r.pin,
        };
        let a = self
            .d
            .create_stream(&caller, at, r.slots, spec, !r.no_producer, r.word, path)?;
        ok(self.attached(&a))
    }

    async fn attach_producer(
        &self,
        req: Request<v1::AttachProducerRequest>,
    ) -> Reply<v1::StreamAttachment> {
        let caller = self.caller(&req)?;
        let r = req.get_ref();
        let path = requests::signal_path(r.signal_path)?;
        let a = self.d.attach_producer(&caller, &r.stream_id, path)?;
        ok(self.attached(&a))
    }

    async fn attach_consumer(
        &self,
        req: Request<v1::AttachConsumerRequest>,
    ) -> Reply<v1::StreamAttachment> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let mode = requests::delivery_mode(r.mode)?;
        let path = requests::signal_path(r.signal_path)?;
        let a = self
            .d
            .attach_consumer(&caller, &r.stream_id, mode, r.limit, path)?;
        ok(self.attached(&a))
    }

    async fn detach(&self, req: Request<v1::StreamHandle>) -> Reply<v1::StreamInfo> {
        let caller = self.caller(&req)?;
        let stream = self.d.detach(&caller, &req.get_ref().handle)?;
        let (snap, stream) = self.d.stream_visible(&caller, stream.id())?;
        ok(wire::stream::info(&self.d, &snap, &stream))
    }

    async fn acquire_slot(&self, req: Request<v1::AcquireRequest>) -> Reply<v1::SlotGrant> {
        let caller = self.caller(&req)?;
        let ask = self.acquire_ask(&req);
        match self
            .d
            .acquire_slot(&caller, &req.get_ref().handle, ask, None)
            .await?
        {
            Answer::Reply(g) => ok(wire::stream::slot_grant(&g)),
            Answer::Sent => Err(Status::internal("answered twice")),
        }
    }

    async fn present(&self, req: Request<v1::PresentRequest>) -> Reply<v1::Presented> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let (ready_value, sequence) = self.d.present(
            &caller,
            &r.handle,
            r.slot,
            r.ready_value,
            requests::frame_meta(r.metadata),
        )?;
        ok(v1::Presented {
            ready_value,
            sequence,
        })
    }

    async fn acquire_frame(&self, req: Request<v1::AcquireRequest>) -> Reply<v1::Frame> {
        let caller = self.caller(&req)?;
        let ask = self.acquire_ask(&req);
        match self
            .d
            .acquire_frame(&caller, &req.get_ref().handle, ask, None)
            .await?
        {
            Answer::Reply(f) => ok(wire::stream::frame(&f)),
            Answer::Sent => Err(Status::internal("answered twice")),
        }
    }

    async fn release_frame(&self, req: Request<v1::ReleaseFrameRequest>) -> Reply<v1::Released> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let release_value = self
            .d
            .release_frame(&caller, &r.handle, r.slot, r.release_value)?;
        ok(v1::Released { release_value })
    }

    async fn describe_stream(&self, req: Request<v1::ResourceRef>) -> Reply<v1::StreamInfo> {
        let caller = self.caller(&req)?;
        let (snap, stream) = self.d.stream_visible(&caller, &req.get_ref().id)?;
        ok(wire::stream::info(&self.d, &snap, &stream))
    }

    async fn list_streams(
        &self,
        req: Request<v1::ListStreamsRequest>,
    ) -> Reply<v1::ListStreamsResponse> {
        let caller = self.caller(&req)?;
        let streams = self
            .d
            .streams(Some(&caller))
            .iter()
            .map(|(snap, s)| wire::stream::info(&self.d, snap, s))
            .collect();
        ok(v1::ListStreamsResponse { streams })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}
