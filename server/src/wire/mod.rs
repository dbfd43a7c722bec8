//! The daemon's state in `gpushare.v1` messages, for gRPC and fd.sock alike: devices and
//! limits (GetInfo), resources, import metadata (ExportedFd; images: [`image`]),
//! introspection listings, fd.sock replies. Every domain-to-proto conversion is here, and only
//! here.
//!
//! Not here: what requests ask for (`requests`), what the values mean (`daemon` and below),
//! transport (`service`, `fd_server`).

pub(crate) mod image;
pub(crate) mod stream;

use std::time::Duration;

use gpushare_interop::cuda::MatchMethod;
use gpushare_interop::vulkan::{DeviceType, ExportableBuffer, HandleType};
use gpushare_proto::v1;

use crate::daemon::export::Exported;
use crate::daemon::introspect::SemaphoreView;
use crate::daemon::Daemon;
use crate::devices::DeviceSlot;
use crate::error::{chain, Error};
use crate::registry::Snapshot;
use crate::resource::Object;
use crate::session::SessionView;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The wire value of a handle type.
fn handle_type(h: HandleType) -> i32 {
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
        fast_path: Some(v1::FastPath {
            offered: slot.fast_path.writer().is_some(),
            unavailable: slot.fast_path.unavailable().unwrap_or_default().to_owned(),
        }),
        executor: slot.executor.name().into(),
        image_formats: slot
            .image_formats
            .iter()
            .map(|&f| image::format_msg(f))
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

/// GetInfo: the daemon's version, limits, devices and counters.
pub(crate) fn info(d: &Daemon) -> v1::GetInfoResponse {
    let l = &d.config.limits;
    let (resources, sessions) = d.registry.counts();
    v1::GetInfoResponse {
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
    }
}

/// A resource.
pub(crate) fn resource(s: &Snapshot) -> v1::Resource {
    let r = &s.resource;
    let (kind, details) = match &r.object {
        Object::Buffer(b) => (
            v1::ResourceKind::Buffer,
            Some(v1::resource::Details::Buffer(v1::BufferDetails {
                size: b.size(),
                allocation_size: b.allocation_size(),
                dedicated: b.dedicated(),
            })),
        ),
        Object::Semaphore(sem) => (
            v1::ResourceKind::Semaphore,
            Some(v1::resource::Details::Semaphore(v1::SemaphoreDetails {
                // A failed read shows 0; GetValue reports the error itself.
                value: sem.value().unwrap_or(0),
                exportable: sem.exportable(),
                word: sem.word().is_some(),
                word_unavailable: sem.word_unavailable().unwrap_or_default().to_owned(),
            })),
        ),
        Object::Image(i) => (
            v1::ResourceKind::Image,
            Some(v1::resource::Details::Image(image::details_msg(i.vk()))),
        ),
        Object::HostBuffer(h) => (
            v1::ResourceKind::HostBuffer,
            Some(v1::resource::Details::HostBuffer(v1::HostBufferDetails {
                size: h.size(),
                registered: h.registered(),
            })),
        ),
        // DescribeStream tells the rest.
        Object::Stream(_) => (v1::ResourceKind::Stream, None),
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
        details,
        stream_id: s.parent.clone().unwrap_or_default(),
    }
}

/// Resources.
pub(crate) fn resources(list: &[Snapshot]) -> v1::ListResourcesResponse {
    v1::ListResourcesResponse {
        resources: list.iter().map(resource).collect(),
    }
}

/// What an importer needs besides the descriptor: ExportedFd.
/// What an importer of a buffer needs besides its descriptor.
fn buffer_import(b: &ExportableBuffer) -> v1::BufferImport {
    v1::BufferImport {
        size: b.size(),
        allocation_size: b.allocation_size(),
        dedicated: b.dedicated(),
        memory_type_index: b.memory_type_index(),
        usage: b.usage(),
    }
}

pub(crate) fn exported(e: &Exported) -> v1::ExportedFd {
    let r = &e.resource;
    let mut handle_type = handle_type(HandleType::OpaqueFd);
    let (kind, details) = match &r.object {
        Object::Buffer(b) => (
            v1::ResourceKind::Buffer,
            v1::exported_fd::Details::Buffer(buffer_import(b)),
        ),
        Object::Image(i) => (
            v1::ResourceKind::Image,
            v1::exported_fd::Details::Image(image::import_msg(i.vk())),
        ),
        Object::HostBuffer(h) => {
            handle_type = v1::HandleType::Memfd as i32;
            (
                v1::ResourceKind::HostBuffer,
                v1::exported_fd::Details::HostBuffer(v1::HostBufferImport { size: h.size() }),
            )
        }
        Object::Semaphore(s) => (
            v1::ResourceKind::Semaphore,
            v1::exported_fd::Details::Semaphore(v1::SemaphoreImport {
                timeline: true,
                value: e.value.unwrap_or(0),
                word_exists: s.word().is_some(),
                word: s
                    .word()
                    .filter(|_| e.word.is_some())
                    .map(|w| buffer_import(w.buffer())),
            }),
        ),
        // Never exported (`Resource::descriptor` refuses it): nothing to describe.
        Object::Stream(_) => {
            return v1::ExportedFd {
                resource_id: r.id.clone(),
                kind: v1::ResourceKind::Stream as i32,
                ..v1::ExportedFd::default()
            }
        }
    };
    let (device_uuid, driver_uuid) = match e.uuids {
        Some((device, driver)) => (device.to_vec(), driver.to_vec()),
        // Host memory belongs to no device.
        None => (Vec::new(), Vec::new()),
    };
    v1::ExportedFd {
        resource_id: r.id.clone(),
        kind: kind as i32,
        handle_type,
        device_uuid,
        driver_uuid,
        details: Some(details),
    }
}

/// ListSessions.
pub(crate) fn sessions(list: Vec<SessionView>) -> v1::ListSessionsResponse {
    let sessions = list
        .into_iter()
        .map(|s| v1::SessionInfo {
            id: s.id,
            uid: s.uid,
            pid: s.pid,
            client_name: s.client_name,
            age_ms: millis(s.age),
            references: s.references,
            semaphores_signaled: s.semaphores_signaled,
        })
        .collect();
    v1::ListSessionsResponse { sessions }
}

/// ListSemaphores. A pending wait is flagged `unsatisfiable` when its semaphore has no live
/// signaler session (see `PendingWait` in the proto: a warning, not a verdict).
pub(crate) fn semaphores(list: Vec<SemaphoreView>) -> v1::ListSemaphoresResponse {
    let semaphores = list
        .into_iter()
        .map(|v| {
            let r = &v.snap.resource;
            let unsatisfiable = v.signaler.is_none();
            v1::SemaphoreInfo {
                id: r.id.clone(),
                name: r.name.clone(),
                device: r.device,
                value: v.value,
                signaler_session: v.signaler.unwrap_or_default(),
                abandoned: v.ended,
                references: v.snap.references,
                pinned: v.snap.pinned,
                waits: v
                    .waits
                    .into_iter()
                    .map(|w| v1::PendingWait {
                        value: w.target,
                        age_ms: millis(w.age),
                        unsatisfiable,
                    })
                    .collect(),
            }
        })
        .collect();
    v1::ListSemaphoresResponse { semaphores }
}

/// An fd.sock reply that refuses: the error's code and its whole message.
pub(crate) fn fd_error(e: &Error) -> v1::FdReply {
    v1::FdReply {
        reply: Some(v1::fd_reply::Reply::Error(v1::FdError {
            code: e.code() as i32,
            message: chain(e),
        })),
    }
}

/// The fd.sock reply to a wait that reached `value`.
pub(crate) fn fd_waited(value: u64) -> v1::FdReply {
    v1::FdReply {
        reply: Some(v1::fd_reply::Reply::Waited(v1::SemaphoreValue { value })),
    }
}

/// The fd.sock reply that comes with an exported descriptor.
pub(crate) fn fd_exported(e: &Exported) -> v1::FdReply {
    v1::FdReply {
        reply: Some(v1::fd_reply::Reply::Exported(exported(e))),
    }
}
