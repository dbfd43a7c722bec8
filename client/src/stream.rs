//! Frame streams: a [`Producer`] acquires free slots and presents frames, a [`Consumer`]
//! acquires frames and releases them (see the proto's "Frame streams" section for the model).
//!
//! Creating and attaching are gRPC calls; the frame calls (acquire, present, release) go over
//! `fd.sock`, one message each, answered by the daemon thread that decided them. They are
//! blocking calls on the calling thread, like [`crate::HostWaiter`]: from async code run them
//! on a blocking thread. Each role keeps its own `fd.sock` connection.
//!
//! The slots and timelines come as tickets in the attachment: redeem them once per process
//! ([`Producer::import_slots`], [`Consumer::import_slots`], `import_ready`, `import_release`)
//! and import the descriptors with [`crate::import`] (Vulkan) or [`crate::cuda`] (CUDA).
//! With GPU points (`StreamInfo.points`), wait for a grant's or frame's points and signal your
//! present's and release's points on your GPU queue or stream; with HOST points the daemon
//! signals them at the call and there is nothing to import but the slots.

use std::time::Duration;

use gpushare_proto::v1;
use prost::Message;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::export::Exported;
use crate::host_wait::{HostWaiter, Received};
use crate::image::ImageSpec;

/// What every slot of a new stream is.
#[derive(Debug, Clone)]
pub enum SlotKind {
    /// A buffer of this many bytes.
    Buffer(u64),
    /// An image.
    Image(ImageSpec),
}

/// How a new stream is made.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// The daemon's device index.
    pub device: u32,
    /// Optional name.
    pub name: String,
    /// Keep it alive beyond the session (see [`crate::CreateOptions::pin`]).
    pub pin: bool,
    /// Mirror the timelines in memop words (the CUDA fast path; see
    /// [`crate::CreateOptions::word`]).
    pub word: bool,
    /// How this session signals the ready timeline when it produces (see
    /// [`crate::CreateOptions::signal_path`]).
    pub signal_path: v1::SignalPath,
}

/// A frame's metadata.
pub type FrameMetadata = v1::FrameMetadata;

/// The fd.sock connection and the handle of one role.
#[derive(Debug)]
struct Role {
    client: Client,
    attachment: v1::StreamAttachment,
    conn: HostWaiter,
}

impl Role {
    fn new(client: &Client, attachment: v1::StreamAttachment) -> Result<Role> {
        if attachment.handle.is_empty() {
            return Err(Error::MissingField("StreamAttachment.handle"));
        }
        Ok(Role {
            conn: HostWaiter::connect(client.runtime_dir())?,
            client: client.clone(),
            attachment,
        })
    }

    fn info(&self) -> &v1::StreamInfo {
        static EMPTY: std::sync::OnceLock<v1::StreamInfo> = std::sync::OnceLock::new();
        self.attachment
            .stream
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(v1::StreamInfo::default))
    }

    fn call(
        &self,
        call: v1::stream_call::Call,
        timeout: Duration,
    ) -> Result<v1::stream_reply::Reply> {
        let request = v1::FdRequest {
            request: Some(v1::fd_request::Request::Stream(v1::StreamCall {
                call: Some(call),
            })),
            word: false,
        }
        .encode_to_vec();
        parse_reply(self.conn.call(&request, timeout, Duration::ZERO)?)
    }

    /// Redeems a part's ticket (`None` without one); `word`: a timeline's memop word too, when
    /// it has one.
    async fn redeem(&self, part: Option<&v1::StreamPart>, word: bool) -> Result<Option<Exported>> {
        match part {
            Some(p) if !p.ticket.is_empty() && word => {
                Ok(Some(self.client.redeem_with_word(&p.ticket).await?))
            }
            Some(p) if !p.ticket.is_empty() => Ok(Some(self.client.redeem(&p.ticket).await?)),
            _ => Ok(None),
        }
    }

    async fn import_slots(&self) -> Result<Vec<Exported>> {
        let mut out = Vec::with_capacity(self.attachment.slots.len());
        for p in &self.attachment.slots {
            out.push(
                self.redeem(Some(p), false)
                    .await?
                    .ok_or(Error::MissingField("StreamPart.ticket"))?,
            );
        }
        Ok(out)
    }

    async fn detach(&self) -> Result<v1::StreamInfo> {
        let r = self
            .client
            .grpc()
            .detach(self.client.request(v1::StreamHandle {
                handle: self.attachment.handle.clone(),
            }))
            .await?;
        Ok(r.into_inner())
    }
}

/// The reply of a frame call: its answer, or the daemon's refusal as [`Error::FdRefused`].
/// Descriptors have no place in it: any that came are closed.
fn parse_reply(received: Received) -> Result<v1::stream_reply::Reply> {
    let reply = v1::FdReply::decode(received.bytes.as_slice())?;
    match reply.reply {
        Some(v1::fd_reply::Reply::Stream(v1::StreamReply { reply: Some(r) })) => Ok(r),
        Some(v1::fd_reply::Reply::Error(e)) => Err(Error::FdRefused {
            code: tonic::Code::from_i32(e.code),
            message: e.message,
        }),
        _ => Err(Error::MissingField("FdReply.stream")),
    }
}

fn acquire(handle: &str, timeout: Duration, host_wait: bool) -> v1::AcquireRequest {
    v1::AcquireRequest {
        handle: handle.to_owned(),
        timeout_ms: timeout.as_millis().try_into().unwrap_or(u32::MAX),
        host_wait,
        spin_us: 0,
    }
}

/// The producer of a stream.
#[derive(Debug)]
pub struct Producer {
    role: Role,
}

impl Producer {
    /// The stream as it was at attach.
    pub fn info(&self) -> &v1::StreamInfo {
        self.role.info()
    }

    /// The attachment (handle, slots' and timelines' ids and tickets).
    pub fn attachment(&self) -> &v1::StreamAttachment {
        &self.role.attachment
    }

    /// Whether points are signaled on GPUs (else by the daemon at each call).
    pub fn gpu_points(&self) -> bool {
        self.info().points == v1::StreamPoints::Gpu as i32
    }

    /// Redeems the slots' tickets: one descriptor per slot, in slot order (once per process).
    pub async fn import_slots(&self) -> Result<Vec<Exported>> {
        self.role.import_slots().await
    }

    /// Redeems the ready timeline's ticket (`None` with HOST points), with its memop word when
    /// it has one ([`Exported::word`]): `import_semaphore_cuda` then takes the CUDA fast path
    /// (`CudaSemaphore::import` forces either path; a Vulkan import ignores the word).
    pub async fn import_ready(&self) -> Result<Option<Exported>> {
        self.role
            .redeem(self.role.attachment.ready.as_ref(), true)
            .await
    }

    /// A free slot, waiting up to `timeout` for one; with `host_wait` the daemon also waits
    /// for its release points. Blocking.
    pub fn acquire_slot(&self, timeout: Duration, host_wait: bool) -> Result<v1::SlotGrant> {
        let r = acquire(&self.role.attachment.handle, timeout, host_wait);
        match self
            .role
            .call(v1::stream_call::Call::AcquireSlot(r), timeout)?
        {
            v1::stream_reply::Reply::Slot(g) => Ok(g),
            _ => Err(Error::MissingField("StreamReply.slot")),
        }
    }

    /// Presents the frame in `slot`, ready at `ready_value` on the ready timeline (your GPU
    /// work signals it with GPU points; the daemon does with HOST points). 0: ready now, the
    /// daemon signals the next value itself and returns it (for frames written on the host or
    /// through the daemon's Write). Blocking.
    pub fn present(
        &self,
        slot: u32,
        ready_value: u64,
        metadata: FrameMetadata,
    ) -> Result<v1::Presented> {
        let r = v1::PresentRequest {
            handle: self.role.attachment.handle.clone(),
            slot,
            ready_value,
            metadata: Some(metadata),
        };
        match self
            .role
            .call(v1::stream_call::Call::Present(r), Duration::ZERO)?
        {
            v1::stream_reply::Reply::Presented(p) => Ok(p),
            _ => Err(Error::MissingField("StreamReply.presented")),
        }
    }

    /// Detaches: the stream ends (frames presented stay valid; consumers drain them).
    pub async fn detach(self) -> Result<v1::StreamInfo> {
        self.role.detach().await
    }
}

/// A consumer of a stream.
#[derive(Debug)]
pub struct Consumer {
    role: Role,
}

impl Consumer {
    /// The stream as it was at attach.
    pub fn info(&self) -> &v1::StreamInfo {
        self.role.info()
    }

    /// The attachment (handle, slots' and timelines' ids and tickets).
    pub fn attachment(&self) -> &v1::StreamAttachment {
        &self.role.attachment
    }

    /// Whether points are signaled on GPUs (else by the daemon at each call).
    pub fn gpu_points(&self) -> bool {
        self.info().points == v1::StreamPoints::Gpu as i32
    }

    /// Redeems the slots' tickets: one descriptor per slot, in slot order (once per process).
    pub async fn import_slots(&self) -> Result<Vec<Exported>> {
        self.role.import_slots().await
    }

    /// Redeems the ready timeline's ticket (`None` with HOST points), with its memop word when
    /// it has one ([`Exported::word`]): `import_semaphore_cuda` then takes the CUDA fast path
    /// (`CudaSemaphore::import` forces either path; a Vulkan import ignores the word).
    pub async fn import_ready(&self) -> Result<Option<Exported>> {
        self.role
            .redeem(self.role.attachment.ready.as_ref(), true)
            .await
    }

    /// Redeems its release timeline's ticket (`None` with HOST points), with its memop word
    /// when it has one (see [`Producer::import_ready`]).
    pub async fn import_release(&self) -> Result<Option<Exported>> {
        self.role
            .redeem(self.role.attachment.release.as_ref(), true)
            .await
    }

    /// The next frame by its mode, waiting up to `timeout`; with `host_wait` the daemon also
    /// waits for its ready point. Blocking.
    pub fn acquire_frame(&self, timeout: Duration, host_wait: bool) -> Result<v1::Frame> {
        let r = acquire(&self.role.attachment.handle, timeout, host_wait);
        match self
            .role
            .call(v1::stream_call::Call::AcquireFrame(r), timeout)?
        {
            v1::stream_reply::Reply::Frame(f) => Ok(f),
            _ => Err(Error::MissingField("StreamReply.frame")),
        }
    }

    /// Done with the frame in `slot` at `release_value` on its release timeline (your GPU work
    /// signals it with GPU points). 0: done now, the daemon signals the next value itself and
    /// returns it. Blocking.
    pub fn release_frame(&self, slot: u32, release_value: u64) -> Result<u64> {
        let r = v1::ReleaseFrameRequest {
            handle: self.role.attachment.handle.clone(),
            slot,
            release_value,
        };
        match self
            .role
            .call(v1::stream_call::Call::Release(r), Duration::ZERO)?
        {
            v1::stream_reply::Reply::Released(r) => Ok(r.release_value),
            _ => Err(Error::MissingField("StreamReply.released")),
        }
    }

    /// Detaches: frames it holds are released at its last release point and its release
    /// timeline is poisoned. With GPU points, let your GPU work reach your last release point
    /// first.
    pub async fn detach(self) -> Result<v1::StreamInfo> {
        self.role.detach().await
    }
}

impl Client {
    /// Creates a stream of `slots` slots, all `kind`, with this session as its producer.
    pub async fn create_stream(
        &self,
        slots: u32,
        kind: &SlotKind,
        opts: &StreamOptions,
    ) -> Result<Producer> {
        let a = self.create_stream_raw(slots, kind, opts, false).await?;
        Ok(Producer {
            role: Role::new(self, a)?,
        })
    }

    /// Creates a stream with no producer (another session attaches with
    /// [`Client::attach_producer`]); returns its description.
    pub async fn create_stream_unproduced(
        &self,
        slots: u32,
        kind: &SlotKind,
        opts: &StreamOptions,
    ) -> Result<v1::StreamInfo> {
        let a = self.create_stream_raw(slots, kind, opts, true).await?;
        a.stream
            .ok_or(Error::MissingField("StreamAttachment.stream"))
    }

    async fn create_stream_raw(
        &self,
        slots: u32,
        kind: &SlotKind,
        opts: &StreamOptions,
        no_producer: bool,
    ) -> Result<v1::StreamAttachment> {
        let slot = match kind {
            SlotKind::Buffer(size) => v1::create_stream_request::Slot::BufferSize(*size),
            SlotKind::Image(spec) => {
                v1::create_stream_request::Slot::Image(crate::image::create_request(spec))
            }
        };
        let request = v1::CreateStreamRequest {
            device: opts.device,
            name: opts.name.clone(),
            pin: opts.pin,
            slots,
            slot: Some(slot),
            no_producer,
            word: opts.word,
            signal_path: opts.signal_path as i32,
        };
        Ok(self
            .grpc()
            .create_stream(self.request(request))
            .await?
            .into_inner())
    }

    /// Attaches this session as the producer of stream `id` (created with no producer).
    pub async fn attach_producer(&self, id: &str) -> Result<Producer> {
        self.attach_producer_with(id, v1::SignalPath::Unspecified)
            .await
    }

    /// As [`Client::attach_producer`], signaling the ready timeline by `path` (see
    /// [`crate::CreateOptions::signal_path`]).
    pub async fn attach_producer_with(&self, id: &str, path: v1::SignalPath) -> Result<Producer> {
        let a = self
            .grpc()
            .attach_producer(self.request(v1::AttachProducerRequest {
                stream_id: id.to_owned(),
                signal_path: path as i32,
            }))
            .await?
            .into_inner();
        Ok(Producer {
            role: Role::new(self, a)?,
        })
    }

    /// Attaches this session as a consumer of stream `id`, in `mode`, holding at most `limit`
    /// frames at once.
    pub async fn attach_consumer(
        &self,
        id: &str,
        mode: v1::DeliveryMode,
        limit: u32,
    ) -> Result<Consumer> {
        self.attach_consumer_with(id, mode, limit, v1::SignalPath::Unspecified)
            .await
    }

    /// As [`Client::attach_consumer`], signaling the release timeline by `path` (see
    /// [`crate::CreateOptions::signal_path`]).
    pub async fn attach_consumer_with(
        &self,
        id: &str,
        mode: v1::DeliveryMode,
        limit: u32,
        path: v1::SignalPath,
    ) -> Result<Consumer> {
        let a = self
            .grpc()
            .attach_consumer(self.request(v1::AttachConsumerRequest {
                stream_id: id.to_owned(),
                mode: mode as i32,
                limit,
                signal_path: path as i32,
            }))
            .await?
            .into_inner();
        Ok(Consumer {
            role: Role::new(self, a)?,
        })
    }

    /// Describes stream `id`.
    pub async fn describe_stream(&self, id: &str) -> Result<v1::StreamInfo> {
        Ok(self
            .grpc()
            .describe_stream(self.request(v1::ResourceRef { id: id.to_owned() }))
            .await?
            .into_inner())
    }

    /// Every stream this caller sees.
    pub async fn streams(&self) -> Result<Vec<v1::StreamInfo>> {
        Ok(self
            .grpc()
            .list_streams(self.request(v1::ListStreamsRequest {}))
            .await?
            .into_inner()
            .streams)
    }
}
