//! Frame streams on the wire: attachments, slot grants, frames, stream descriptions.
//!
//! Not here: what stream requests ask for (`requests`).

use gpushare_proto::v1;

use super::{image, millis};
use crate::daemon::stream::Attachment;
use crate::daemon::Daemon;
use crate::registry::Snapshot;
use crate::resource::Object;
use crate::stream::book::{FrameMeta, Mode};
use crate::stream::{Delivered, Granted, Point, SlotSpec, Stream};

fn point(p: &Point) -> v1::SemaphorePoint {
    v1::SemaphorePoint {
        semaphore_id: p.timeline.id.clone(),
        value: p.value,
    }
}

fn part((id, ticket): &(String, Option<[u8; 16]>)) -> v1::StreamPart {
    v1::StreamPart {
        resource_id: id.clone(),
        ticket: ticket.map(|t| t.to_vec()).unwrap_or_default(),
    }
}

/// The wire value of a delivery mode.
pub(crate) fn mode_msg(mode: Mode) -> i32 {
    match mode {
        Mode::Fifo => v1::DeliveryMode::Fifo as i32,
        Mode::Mailbox => v1::DeliveryMode::Mailbox as i32,
    }
}

/// The reply to CreateStream, AttachProducer and AttachConsumer.
pub(crate) fn attachment(d: &Daemon, a: &Attachment, stream: &Stream) -> v1::StreamAttachment {
    v1::StreamAttachment {
        handle: a.handle.clone(),
        role: if a.handle.is_empty() {
            v1::StreamRole::Unspecified
        } else if a.producer {
            v1::StreamRole::Producer
        } else {
            v1::StreamRole::Consumer
        } as i32,
        stream: Some(info(d, &a.stream, stream)),
        slots: a.slots.iter().map(part).collect(),
        ready: Some(part(&a.ready)),
        release: a.release.as_ref().map(part),
    }
}

/// A stream's description (DescribeStream, ListStreams, Detach).
pub(crate) fn info(d: &Daemon, snap: &Snapshot, stream: &Stream) -> v1::StreamInfo {
    let r = &snap.resource;
    let view = stream.view();
    let slot = match stream.spec() {
        SlotSpec::Buffer(size) => Some(v1::stream_info::Slot::BufferSize(*size)),
        SlotSpec::Image(..) => stream
            .slot_ids()
            .first()
            .and_then(|id| d.registry.get_unchecked(id).ok())
            .and_then(|s| match &s.resource.object {
                Object::Image(i) => Some(v1::stream_info::Slot::Image(image::details_msg(i.vk()))),
                _ => None,
            }),
    };
    v1::StreamInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        device: r.device,
        owner_uid: r.owner_uid,
        slot_count: u32::try_from(stream.slot_ids().len()).unwrap_or(u32::MAX),
        slot,
        points: if stream.gpu_points() {
            v1::StreamPoints::Gpu
        } else {
            v1::StreamPoints::Host
        } as i32,
        ready_timeline_id: stream.ready().id.clone(),
        ended: view.ended.unwrap_or_default(),
        has_producer: view.producer.is_some(),
        producer_pid: view.producer.map_or(0, |p| p.pid),
        slots: view
            .slots
            .into_iter()
            .map(|(state, pids)| v1::StreamSlot {
                state: state.to_owned(),
                held_by_pids: pids,
            })
            .collect(),
        consumers: view
            .consumers
            .into_iter()
            .map(|c| v1::StreamConsumer {
                pid: c.holder.pid,
                uid: c.holder.uid,
                mode: mode_msg(c.view.mode),
                limit: c.view.limit,
                queued: c.view.queued,
                held: u32::try_from(c.view.held.len()).unwrap_or(u32::MAX),
                acquired: c.view.acquired,
                dropped: c.view.dropped,
                oldest_held_ms: millis(c.oldest_held),
                release_timeline_id: c.release_id,
            })
            .collect(),
        frames_presented: view.presented,
        producer_stalls: view.stalls,
        fps: view.fps,
    }
}

/// A slot granted to the producer.
pub(crate) fn slot_grant(g: &Granted) -> v1::SlotGrant {
    v1::SlotGrant {
        slot: g.slot,
        wait: g.wait.iter().map(point).collect(),
    }
}

/// Frame metadata on the wire.
pub(crate) fn meta_msg(m: &FrameMeta) -> v1::FrameMetadata {
    v1::FrameMetadata {
        number: m.number,
        timestamp_ns: m.timestamp_ns,
        user_data: m.user_data.clone(),
    }
}

/// A frame for a consumer.
pub(crate) fn frame(f: &Delivered) -> v1::Frame {
    v1::Frame {
        slot: f.slot,
        ready: Some(point(&f.ready)),
        metadata: Some(meta_msg(&f.meta)),
        sequence: f.seq,
    }
}

/// An fd.sock reply carrying a stream call's answer.
pub(crate) fn fd_stream(reply: v1::stream_reply::Reply) -> v1::FdReply {
    v1::FdReply {
        reply: Some(v1::fd_reply::Reply::Stream(v1::StreamReply {
            reply: Some(reply),
        })),
    }
}
