//! The `gpushare.v1.GpuShare` gRPC service: request parsing, the caller's identity, and
//! conversion to and from the wire types. Policy lives in [`crate::daemon`], the registry and
//! the wait service; daemon-executed operations in [`crate::ops`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use gpushare_interop::cuda::MatchMethod;
use gpushare_interop::vulkan::{vk, DeviceType, HandleType};
use gpushare_proto::v1::{self, gpu_share_server::GpuShare};
use gpushare_proto::SESSION_HEADER;
use tonic::{Request, Response, Status};

use crate::buffer::SharedBuffer;
use crate::daemon::{Caller, Daemon};
use crate::devices::DeviceSlot;
use crate::error::{Error, Result};
use crate::executor::Op;
use crate::host_buffer::HostBuffer;
use crate::ids;
use crate::image::SharedImage;
use crate::quota::Counted;
use crate::registry::{Object, Resource, Snapshot, Usage};
use crate::semaphore::{Semaphore, SEMAPHORE_PREFIX};
use crate::waits::End;

/// The gRPC service over the daemon's state.
#[derive(Debug, Clone)]
pub struct Service {
    pub(crate) d: Arc<Daemon>,
}

impl Service {
    /// A service over `daemon`.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { d: daemon }
    }

    /// The caller of `req`: peer credentials of its connection and its session header.
    pub(crate) fn caller<T>(&self, req: &Request<T>) -> Result<Caller> {
        let peer = &req
            .extensions()
            .get::<crate::connections::ControlInfo>()
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

    /// The time a wait may take: the call's `timeout_ms`, capped by the daemon's limit and by
    /// the call's own gRPC deadline (less a margin, so that the caller gets DEADLINE_EXCEEDED
    /// from the wait rather than tonic's CANCELLED).
    fn wait_timeout<T>(&self, req: &Request<T>, timeout_ms: u32) -> Duration {
        let mut t = Duration::from_millis(
            timeout_ms
                .min(self.d.config.limits.max_wait_timeout_ms)
                .into(),
        );
        if let Some(deadline) = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            t = t.min(deadline.saturating_sub(DEADLINE_MARGIN));
        }
        t
    }
}

/// How much earlier than the gRPC deadline a wait gives up.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
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

pub(crate) fn handle_type(h: HandleType) -> i32 {
    match h {
        HandleType::OpaqueFd => v1::HandleType::OpaqueFd as i32,
        HandleType::DmaBuf => v1::HandleType::DmaBuf as i32,
    }
}

fn device_type(t: DeviceType) -> i32 {
    (match t {
        DeviceType::Other => v1::DeviceType::Other,
        DeviceType::IntegratedGpu => v1::DeviceType::IntegratedGpu,
        DeviceType::DiscreteGpu => v1::DeviceType::DiscreteGpu,
        DeviceType::VirtualGpu => v1::DeviceType::VirtualGpu,
        DeviceType::Cpu => v1::DeviceType::Cpu,
    }) as i32
}

fn device_info(slot: &DeviceSlot) -> v1::DeviceInfo {
    let (index, i) = (slot.index, slot.info());
    let handles = |v: &[HandleType]| v.iter().copied().map(handle_type).collect();
    v1::DeviceInfo {
        index,
        vulkan_index: i.index,
        executor: slot.executor.name().into(),
        image_formats: slot
            .image_formats
            .iter()
            .map(|&f| crate::image::format_msg(f))
            .collect(),
        name: i.name.clone(),
        vendor_id: i.vendor_id,
        device_id: i.device_id,
        device_type: device_type(i.device_type),
        driver_name: i.driver_name.clone(),
        driver_info: i.driver_info.clone(),
        device_uuid: i.device_uuid.to_vec(),
        driver_uuid: i.driver_uuid.to_vec(),
        api_version: format!(
            "{}.{}.{}",
            i.api_version.0, i.api_version.1, i.api_version.2
        ),
        memory_heaps: i
            .heaps
            .iter()
            .map(|h| v1::MemoryHeap {
                size: h.size,
                device_local: h.device_local,
            })
            .collect(),
        capabilities: Some(v1::Capabilities {
            buffer_export: handles(&i.caps.buffer_export),
            buffer_import: handles(&i.caps.buffer_import),
            timeline_semaphore_export: handles(&i.caps.timeline_semaphore_export),
            timeline_semaphore_import: handles(&i.caps.timeline_semaphore_import),
        }),
        cuda: slot.cuda.as_ref().map(|c| {
            let info = c.device.info();
            v1::CudaDevice {
                ordinal: info.ordinal,
                name: info.name.clone(),
                compute_capability_major: info.compute_capability.0.try_into().unwrap_or(0),
                compute_capability_minor: info.compute_capability.1.try_into().unwrap_or(0),
                match_method: (match c.method {
                    MatchMethod::Uuid => v1::MatchMethod::Uuid,
                    MatchMethod::Name => v1::MatchMethod::Name,
                    MatchMethod::FirstCapable => v1::MatchMethod::FirstCapable,
                }) as i32,
            }
        }),
    }
}

/// Runs short blocking GPU work from a request handler: off the async worker where the runtime
/// allows it (multi-threaded), in place otherwise.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The wire form of a resource.
pub(crate) fn resource_msg(s: &Snapshot) -> v1::Resource {
    let r = &s.resource;
    let (kind, details) = match &r.object {
        Object::Buffer(b) => (
            v1::ResourceKind::Buffer,
            v1::resource::Details::Buffer(v1::BufferDetails {
                size: b.size(),
                allocation_size: b.allocation_size(),
                dedicated: b.dedicated(),
            }),
        ),
        Object::Semaphore(sem) => (
            v1::ResourceKind::Semaphore,
            v1::resource::Details::Semaphore(v1::SemaphoreDetails {
                // A failed read shows 0; GetValue reports the error itself.
                value: sem.value().unwrap_or(0),
                exportable: sem.exportable(),
            }),
        ),
        Object::Image(i) => (
            v1::ResourceKind::Image,
            v1::resource::Details::Image(crate::image::details_msg(i.vk())),
        ),
        Object::HostBuffer(h) => (
            v1::ResourceKind::HostBuffer,
            v1::resource::Details::HostBuffer(v1::HostBufferDetails {
                size: h.size(),
                registered: h.registered(),
            }),
        ),
    };
    v1::Resource {
        id: r.id.clone(),
        kind: kind as i32,
        name: r.name.clone(),
        device: r.device,
        owner_uid: r.owner_uid,
        references: s.references,
        pinned: s.pinned,
        granted_uids: s.granted_uids.clone(),
        granted_gids: s.granted_gids.clone(),
        details: Some(details),
    }
}

/// Ends its session when dropped: the Session stream owns one, so the session ends however the
/// stream goes (client close, connection reset by a dead process, daemon shutdown).
struct SessionGuard {
    d: Arc<Daemon>,
    id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let ended = self.d.registry.end_session(&self.id);
        let revoked = self.d.tickets.revoke_session(&self.id);
        if revoked > 0 {
            tracing::debug!(session = %self.id, revoked, "unredeemed tickets of an ended session revoked");
        }
        self.d.session_ended(ended);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GpuShare for Service {
    async fn get_info(
        &self,
        _req: Request<v1::GetInfoRequest>,
    ) -> std::result::Result<Response<v1::GetInfoResponse>, Status> {
        let d = &self.d;
        let l = &d.config.limits;
        let (resources, sessions) = d.registry.counts();
        Ok(Response::new(v1::GetInfoResponse {
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            devices: d.devices.iter().map(device_info).collect(),
            cuda_driver_version: d
                .cuda_version
                .map(|(major, minor)| format!("{major}.{minor}"))
                .unwrap_or_default(),
            limits: Some(v1::Limits {
                max_buffer_size: d.max_buffer_size,
                max_transfer_size: l.max_transfer_size,
                ticket_ttl_ms: l.ticket_ttl_ms,
                max_wait_timeout_ms: l.max_wait_timeout_ms,
                max_host_buffer_size: l.max_host_buffer_size,
            }),
            executor: d
                .devices
                .first()
                .map(|s| s.executor.name())
                .unwrap_or("none")
                .into(),
            stats: Some(v1::DaemonStats {
                live_resources: resources as u64,
                live_sessions: sessions as u64,
                pending_waits: d.waits.pending_waits() as u64,
                outstanding_tickets: d.tickets.len() as u64,
            }),
        }))
    }

    type SessionStream = BoxStream<v1::SessionEvent>;

    async fn session(
        &self,
        req: Request<v1::SessionRequest>,
    ) -> std::result::Result<Response<Self::SessionStream>, Status> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().client_name;
        Daemon::check_name("client_name", &name)?;
        if self.d.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        let id = self
            .d
            .registry
            .open_session(caller.uid, caller.peer.pid, &name)?;
        tracing::debug!(session = %id, uid = caller.uid, pid = caller.peer.pid, client = %name, "session started");
        let guard = SessionGuard {
            d: self.d.clone(),
            id: id.clone(),
        };
        let started = v1::SessionEvent {
            event: Some(v1::session_event::Event::Started(v1::SessionStarted {
                session_id: id,
            })),
        };
        let shutdown = self.d.sessions_end.clone();
        let end = futures_util::stream::once(async move {
            shutdown.cancelled().await;
            drop(guard);
            Err(Status::from(Error::ShuttingDown))
        });
        let stream = futures_util::stream::iter([Ok(started)]).chain(end);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_buffer(
        &self,
        req: Request<v1::CreateBufferRequest>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let estimate = Usage {
            buffers: 1,
            buffer_bytes: r.size,
            ..Usage::default()
        };
        Ok(Response::new(self.create(
            &caller,
            r.device,
            r.name,
            r.pin,
            &estimate,
            |slot| {
                if r.size == 0 {
                    return Err(Error::Zero { what: "size" });
                }
                if r.size > self.d.max_buffer_size {
                    return Err(Error::TooLarge {
                        what: "size",
                        value: r.size,
                        limit: self.d.max_buffer_size,
                    });
                }
                let b = slot
                    .device
                    .create_exportable_buffer(r.size)
                    .map_err(Error::gpu("allocating a buffer"))?;
                Ok((
                    ids::new_id("buf"),
                    Object::Buffer(Arc::new(SharedBuffer::new(b))),
                ))
            },
        )?))
    }

    async fn create_semaphore(
        &self,
        req: Request<v1::CreateSemaphoreRequest>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let estimate = Usage {
            semaphores: 1,
            ..Usage::default()
        };
        Ok(Response::new(self.create(
            &caller,
            r.device,
            r.name,
            r.pin,
            &estimate,
            |slot| {
                let exportable = slot
                    .info()
                    .caps
                    .timeline_semaphore_export
                    .contains(&HandleType::OpaqueFd);
                let s = slot
                    .device
                    .create_timeline_semaphore(r.initial_value, exportable)
                    .map_err(Error::gpu("creating a timeline semaphore"))?;
                let id = ids::new_id(SEMAPHORE_PREFIX);
                let sem = Semaphore::new(id.clone(), s, self.d.waits.clone());
                Ok((id, Object::Semaphore(Arc::new(sem))))
            },
        )?))
    }

    async fn create_host_buffer(
        &self,
        req: Request<v1::CreateHostBufferRequest>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.create_host(&caller, r).await?))
    }

    async fn create_image(
        &self,
        req: Request<v1::CreateImageRequest>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let desc = crate::image::requested_desc(&r)?;
        let usage = match r.usage {
            0 => crate::devices::default_image_usage(desc.format),
            u => vk::ImageUsageFlags::from_raw(u),
        };
        // The tightly packed size bounds the allocation's from below: refuse the absurd before
        // asking the driver (the allocation size itself is checked after).
        let limit = self.d.max_buffer_size;
        if desc.total_size() > limit {
            return Err(Error::TooLarge {
                what: "image size",
                value: desc.total_size(),
                limit,
            }
            .into());
        }
        let estimate = Usage {
            buffers: 1,
            buffer_bytes: desc.total_size(),
            ..Usage::default()
        };
        Ok(Response::new(self.create(
            &caller,
            r.device,
            r.name,
            r.pin,
            &estimate,
            |slot| {
                let image = slot
                    .device
                    .create_exportable_image(&desc, usage)
                    .map_err(Error::gpu("creating an image"))?;
                if image.allocation_size() > limit {
                    return Err(Error::TooLarge {
                        what: "image allocation size",
                        value: image.allocation_size(),
                        limit,
                    });
                }
                blocking(|| slot.prepare_image(&image))
                    .map_err(Error::gpu("preparing a new image"))?;
                Ok((
                    ids::new_id(crate::image::IMAGE_PREFIX),
                    Object::Image(Arc::new(SharedImage::new(image))),
                ))
            },
        )?))
    }

    async fn list_resources(
        &self,
        req: Request<v1::ListResourcesRequest>,
    ) -> std::result::Result<Response<v1::ListResourcesResponse>, Status> {
        let caller = self.caller(&req)?;
        let resources = self
            .d
            .registry
            .list(&caller)
            .iter()
            .map(resource_msg)
            .collect();
        Ok(Response::new(v1::ListResourcesResponse { resources }))
    }

    async fn describe_resource(
        &self,
        req: Request<v1::ResourceRef>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        let caller = self.caller(&req)?;
        let snap = self.d.resource_visible(&req.get_ref().id, &caller)?;
        Ok(Response::new(resource_msg(&snap)))
    }

    async fn list_sessions(
        &self,
        req: Request<v1::ListSessionsRequest>,
    ) -> std::result::Result<Response<v1::ListSessionsResponse>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(crate::introspect::list_sessions(
            &self.d, &caller,
        )))
    }

    async fn list_semaphores(
        &self,
        req: Request<v1::ListSemaphoresRequest>,
    ) -> std::result::Result<Response<v1::ListSemaphoresResponse>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(crate::introspect::list_semaphores(
            &self.d, &caller,
        )))
    }

    async fn grant(
        &self,
        req: Request<v1::GrantRequest>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.set_grant(&caller, r, true)?))
    }

    async fn revoke(
        &self,
        req: Request<v1::GrantRequest>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.set_grant(&caller, r, false)?))
    }

    async fn create_token(
        &self,
        req: Request<v1::ResourceRef>,
    ) -> std::result::Result<Response<v1::TokenResponse>, Status> {
        let caller = self.caller(&req)?;
        let id = &req.get_ref().id;
        crate::daemon::check_resource_id(id)?;
        let token = self.d.registry.mint_token(id, &caller)?;
        tracing::debug!(id = %id, uid = caller.uid, "capability token minted");
        Ok(Response::new(v1::TokenResponse {
            token: token.to_vec(),
        }))
    }

    async fn revoke_tokens(
        &self,
        req: Request<v1::ResourceRef>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        let caller = self.caller(&req)?;
        let id = &req.get_ref().id;
        crate::daemon::check_resource_id(id)?;
        let snap = self.d.registry.revoke_tokens(id, &caller)?;
        Ok(Response::new(resource_msg(&snap)))
    }

    async fn open(
        &self,
        req: Request<v1::OpenRequest>,
    ) -> std::result::Result<Response<v1::Resource>, Status> {
        use crate::registry::OpenTarget;
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let target = match r.target {
            Some(v1::open_request::Target::Id(id)) => {
                crate::daemon::check_resource_id(&id)?;
                OpenTarget::Id(id)
            }
            Some(v1::open_request::Target::Token(t)) => OpenTarget::Token(t),
            Some(v1::open_request::Target::Named(n)) => {
                Daemon::check_name("name", &n.name)?;
                OpenTarget::Named {
                    owner_uid: n.owner_uid,
                    name: n.name,
                }
            }
            None => return Err(Error::BadOpen.into()),
        };
        let snap = self.d.registry.open(&target, r.signal, &caller)?;
        tracing::debug!(id = %snap.resource.id, uid = caller.uid, "opened");
        Ok(Response::new(resource_msg(&snap)))
    }

    async fn release_resource(
        &self,
        req: Request<v1::ResourceRef>,
    ) -> std::result::Result<Response<v1::ReleaseResourceResponse>, Status> {
        let caller = self.caller(&req)?;
        let id = &req.get_ref().id;
        self.d.resource_visible(id, &caller)?;
        let freed = self.d.registry.release(id, &caller)?;
        let was_freed = freed.is_some();
        self.d.freed(freed);
        Ok(Response::new(v1::ReleaseResourceResponse {
            freed: was_freed,
        }))
    }

    async fn export(
        &self,
        req: Request<v1::ResourceRef>,
    ) -> std::result::Result<Response<v1::ExportResponse>, Status> {
        let caller = self.caller(&req)?;
        let id = &req.get_ref().id;
        let snap = self.d.resource(id, &caller)?;
        if let Object::Semaphore(s) = &snap.resource.object {
            if !s.exportable() {
                return Err(Error::NotExportable(id.clone()).into());
            }
        }
        let ticket = self.d.tickets.issue(
            id,
            caller.uid,
            caller.session.as_deref(),
            self.d.config.quotas.tickets_per_uid,
            self.d.config.quotas.tickets_per_session,
        )?;
        Ok(Response::new(v1::ExportResponse {
            ticket: ticket.to_vec(),
            ttl_ms: self.d.config.limits.ticket_ttl_ms,
        }))
    }

    async fn signal(
        &self,
        req: Request<v1::SignalRequest>,
    ) -> std::result::Result<Response<v1::SemaphoreValue>, Status> {
        let caller = self.caller(&req)?;
        let r = req.get_ref();
        let (_, sem) = self.d.semaphore(&r.id, &caller)?;
        let value = sem.signal(r.value)?;
        Ok(Response::new(v1::SemaphoreValue { value }))
    }

    async fn wait(
        &self,
        req: Request<v1::WaitRequest>,
    ) -> std::result::Result<Response<v1::SemaphoreValue>, Status> {
        let caller = self.caller(&req)?;
        let timeout = self.wait_timeout(&req, req.get_ref().timeout_ms);
        let r = req.into_inner();
        let (_, sem) = self.d.semaphore(&r.id, &caller)?;
        let _pending = self
            .d
            .hold(caller.uid, caller.session.as_deref(), Counted::PendingWaits)?;
        let _parked = self.d.in_flight.park(caller.uid);
        let value = self.d.waits.wait(&sem, r.value, timeout).await?;
        Ok(Response::new(v1::SemaphoreValue { value }))
    }

    async fn get_value(
        &self,
        req: Request<v1::ResourceRef>,
    ) -> std::result::Result<Response<v1::SemaphoreValue>, Status> {
        let caller = self.caller(&req)?;
        let (_, sem) = self.d.semaphore(&req.get_ref().id, &caller)?;
        let value = sem.value()?;
        Ok(Response::new(v1::SemaphoreValue { value }))
    }

    type WatchStream = BoxStream<v1::SemaphoreValue>;

    async fn watch(
        &self,
        req: Request<v1::ResourceRef>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        let caller = self.caller(&req)?;
        let id = req.into_inner().id;
        let (_, sem) = self.d.semaphore(&id, &caller)?;
        let held = self
            .d
            .hold(caller.uid, caller.session.as_deref(), Counted::Watches)?;
        let rx = self.d.waits.watch(&sem)?;
        // State: the receiver, the last value sent, and whether the stream has ended. The
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

    async fn write(
        &self,
        req: Request<v1::WriteRequest>,
    ) -> std::result::Result<Response<v1::OpResponse>, Status> {
        let caller = self.caller(&req)?;
        let cap = self.wait_timeout(&req, u32::MAX);
        crate::ops::write(self, &caller, cap, req.into_inner()).await?;
        Ok(Response::new(v1::OpResponse {}))
    }

    async fn read(
        &self,
        req: Request<v1::ReadRequest>,
    ) -> std::result::Result<Response<v1::ReadResponse>, Status> {
        let caller = self.caller(&req)?;
        let cap = self.wait_timeout(&req, u32::MAX);
        let data = crate::ops::read(self, &caller, cap, req.into_inner()).await?;
        Ok(Response::new(v1::ReadResponse { data }))
    }

    async fn write_image(
        &self,
        req: Request<v1::WriteImageRequest>,
    ) -> std::result::Result<Response<v1::OpResponse>, Status> {
        let caller = self.caller(&req)?;
        let cap = self.wait_timeout(&req, u32::MAX);
        crate::ops::write_image(self, &caller, cap, req.into_inner()).await?;
        Ok(Response::new(v1::OpResponse {}))
    }

    async fn read_image(
        &self,
        req: Request<v1::ReadImageRequest>,
    ) -> std::result::Result<Response<v1::ReadResponse>, Status> {
        let caller = self.caller(&req)?;
        let cap = self.wait_timeout(&req, u32::MAX);
        let data = crate::ops::read_image(self, &caller, cap, req.into_inner()).await?;
        Ok(Response::new(v1::ReadResponse { data }))
    }

    async fn clear_image(
        &self,
        req: Request<v1::ClearImageRequest>,
    ) -> std::result::Result<Response<v1::OpResponse>, Status> {
        let caller = self.caller(&req)?;
        let cap = self.wait_timeout(&req, u32::MAX);
        crate::ops::clear_image(self, &caller, cap, req.into_inner()).await?;
        Ok(Response::new(v1::OpResponse {}))
    }

    async fn generate_mips(
        &self,
        req: Request<v1::GenerateMipsRequest>,
    ) -> std::result::Result<Response<v1::OpResponse>, Status> {
        let caller = self.caller(&req)?;
        let cap = self.wait_timeout(&req, u32::MAX);
        crate::ops::generate_mips(self, &caller, cap, req.into_inner()).await?;
        Ok(Response::new(v1::OpResponse {}))
    }

    async fn fill(
        &self,
        req: Request<v1::FillRequest>,
    ) -> std::result::Result<Response<v1::OpResponse>, Status> {
        let caller = self.caller(&req)?;
        let cap = self.wait_timeout(&req, u32::MAX);
        crate::ops::fill(self, &caller, cap, req.into_inner()).await?;
        Ok(Response::new(v1::OpResponse {}))
    }

    async fn copy(
        &self,
        req: Request<v1::CopyRequest>,
    ) -> std::result::Result<Response<v1::OpResponse>, Status> {
        let caller = self.caller(&req)?;
        let cap = self.wait_timeout(&req, u32::MAX);
        crate::ops::copy(self, &caller, cap, req.into_inner()).await?;
        Ok(Response::new(v1::OpResponse {}))
    }
}

impl Service {
    /// Shared part of CreateBuffer and CreateSemaphore: checks, allocation, registration.
    /// CreateHostBuffer: the memfd, then its page-locking by the executor (CUDA; the Vulkan
    /// executor copies through its own staging and needs none), then the registry entry.
    async fn create_host(
        &self,
        caller: &Caller,
        r: v1::CreateHostBufferRequest,
    ) -> Result<v1::Resource> {
        if caller.session.is_none() && !r.pin {
            return Err(Error::NoSession {
                header: SESSION_HEADER,
            });
        }
        Daemon::check_name("name", &r.name)?;
        if r.size == 0 {
            return Err(Error::Zero { what: "size" });
        }
        let limit = self.d.config.limits.max_host_buffer_size;
        if r.size > limit {
            return Err(Error::TooLarge {
                what: "host buffer size",
                value: r.size,
                limit,
            });
        }
        self.d.registry.admit(
            caller.uid,
            caller.session.as_deref(),
            &Usage {
                host_buffers: 1,
                host_buffer_bytes: r.size,
                ..Usage::default()
            },
        )?;
        let started = Instant::now();
        let size = r.size;
        let host = tokio::task::spawn_blocking(move || HostBuffer::create(size))
            .await
            .map_err(|_| Error::ExecutorGone)?
            .map_err(Error::host("creating a host buffer"))?;
        let host = Arc::new(host);
        // Page-locked once (portable: for every CUDA context) by the first CUDA executor; the
        // Vulkan executors need nothing.
        for slot in &self.d.devices {
            slot.executor
                .run(Op::Register { host: host.clone() })
                .await?;
            if host.registered() {
                break;
            }
        }
        let resource = Resource::new(
            ids::new_id(crate::daemon::HOST_BUFFER_PREFIX),
            r.name,
            0,
            caller.uid,
            Object::HostBuffer(host),
        );
        tracing::debug!(id = %resource.id, uid = caller.uid, size, us = started.elapsed().as_micros() as u64, "host buffer created");
        let snap = self
            .d
            .registry
            .insert(resource, caller.session.as_deref(), r.pin)?;
        Ok(resource_msg(&snap))
    }

    /// Grant / Revoke.
    fn set_grant(&self, caller: &Caller, r: v1::GrantRequest, grant: bool) -> Result<v1::Resource> {
        use crate::registry::Grantee;
        crate::daemon::check_resource_id(&r.id)?;
        let who = match r.grantee {
            Some(v1::grant_request::Grantee::Uid(u)) => Grantee::Uid(u),
            Some(v1::grant_request::Grantee::Gid(g)) => Grantee::Gid(g),
            None => return Err(Error::BadGrant),
        };
        let snap = self.d.registry.set_grant(&r.id, caller, who, grant)?;
        tracing::debug!(id = %r.id, owner_uid = caller.uid, ?who, grant, "access changed");
        Ok(resource_msg(&snap))
    }

    fn create(
        &self,
        caller: &Caller,
        device: u32,
        name: String,
        pin: bool,
        estimate: &Usage,
        make: impl FnOnce(&crate::devices::DeviceSlot) -> Result<(String, Object)>,
    ) -> Result<v1::Resource> {
        if caller.session.is_none() && !pin {
            return Err(Error::NoSession {
                header: SESSION_HEADER,
            });
        }
        Daemon::check_name("name", &name)?;
        let slot = self.d.device(device)?;
        self.d
            .registry
            .admit(caller.uid, caller.session.as_deref(), estimate)?;
        let started = Instant::now();
        let (id, object) = make(slot)?;
        let resource = Resource::new(id, name, device, caller.uid, object);
        tracing::debug!(id = %resource.id, uid = caller.uid, us = started.elapsed().as_micros() as u64, "resource created");
        let snap = self
            .d
            .registry
            .insert(resource, caller.session.as_deref(), pin)?;
        Ok(resource_msg(&snap))
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
