//! Frame streams' use cases: creation (the slots, the ready timeline and the stream, admitted
//! against the owner's quotas together), attaching producers and consumers (access as Open; a
//! consumer's release timeline is made here), the frame calls (acquire, present, release:
//! parked acquires answered by the call that decides them), detaching, and what a session's
//! end does to the roles it held (a dead consumer's frames are released and its timeline
//! poisoned; a dead producer ends the stream).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::create::Placement;
use super::wait::{Asked, WaitPoint};
use super::Daemon;
use crate::access::{Caller, OpenTarget};
use crate::buffer::{SharedBuffer, BUFFER_PREFIX};
use crate::error::{at_most, Error, Result};
use crate::ids;
use crate::image::{SharedImage, IMAGE_PREFIX};
use crate::registry::Snapshot;
use crate::resource::{Object, Resource};
use crate::session::SignalPath;
use crate::stream::book::{FrameMeta, Mode};
use crate::stream::{
    self, Acquired, Delivered, Granted, Holder, Served, SlotSpec, Stream, Timeline, Waiter,
    HANDLE_PREFIX, MAX_SLOTS, MIN_SLOTS, STREAM_PREFIX,
};
use crate::usage::Usage;

/// A role in a stream, as its attach call answers.
#[derive(Debug)]
pub(crate) struct Attachment {
    /// The role's handle.
    pub(crate) handle: String,
    /// Producer (true) or consumer.
    pub(crate) producer: bool,
    /// The stream's resource.
    pub(crate) stream: Snapshot,
    /// Per slot: its id and a ticket.
    pub(crate) slots: Vec<(String, Option<[u8; ids::ID_BYTES]>)>,
    /// The ready timeline: its id and a ticket (none where it cannot be exported).
    pub(crate) ready: (String, Option<[u8; ids::ID_BYTES]>),
    /// A consumer's release timeline.
    pub(crate) release: Option<(String, Option<[u8; ids::ID_BYTES]>)>,
}

/// How long an acquire may wait, and whether (and how) the daemon waits for its points too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AcquireAsk {
    /// For a slot or frame (0: answer at once).
    pub(crate) timeout: Duration,
    /// Wait on the host for the points as well.
    pub(crate) host_wait: bool,
    /// With `host_wait`: spin this long first.
    pub(crate) spin: Duration,
    /// Whether the acquire is a call in flight (gRPC), parked while it waits on the host.
    pub(crate) in_flight: bool,
}

/// A reply sent by the thread that decided a parked acquire (fd.sock's direct path): true
/// when it went out.
pub(crate) type Direct<T> = Box<dyn FnOnce(&Result<T>) -> bool + Send>;

/// Gives back what an acquire was handed but never delivered.
type Undo<T> = Arc<dyn Fn(T) + Send + Sync>;

/// How a parked acquire's answer is handed over: converted from what the booking served, sent
/// directly by the deciding thread (fd.sock) or not, given back if it never arrives.
struct Handover<T> {
    convert: fn(Served) -> Result<T>,
    direct: Option<Direct<T>>,
    undo: Undo<T>,
}

/// The error a waiter records when its direct reply could not be sent (the connection went):
/// what it carried was given back.
fn reply_lost() -> Error {
    Error::Io {
        op: "sending a stream reply",
        source: std::io::Error::other("the connection is gone"),
    }
}

/// A parked acquire. Dropped before it was answered (the call went away), it takes its waiter
/// back, or gives back what the waiter already received.
struct Parked<T> {
    stream: Arc<Stream>,
    token: u64,
    rx: oneshot::Receiver<(Result<T>, bool)>,
    undo: Undo<T>,
    done: bool,
}

impl<T> Drop for Parked<T> {
    fn drop(&mut self) {
        if self.done || self.stream.cancel(self.token).is_some() {
            return;
        }
        // Served: the answer is here, or the waiter, finding this closed, gives it back.
        self.rx.close();
        if let Ok((Ok(t), false)) = self.rx.try_recv() {
            (self.undo)(t);
        }
    }
}

/// An acquire's answer for the caller's transport.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    /// The transport sends this.
    Reply(T),
    /// The deciding thread sent it already.
    Sent,
}

fn session_of(caller: &Caller) -> Result<&str> {
    caller.session.as_deref().ok_or(Error::NoSession {
        header: gpushare_proto::SESSION_HEADER,
    })
}

impl Daemon {
    /// Stream `id` the caller may use (its resource and object).
    pub(crate) fn stream(&self, id: &str, caller: &Caller) -> Result<(Snapshot, Arc<Stream>)> {
        if !ids::is_well_formed(id, STREAM_PREFIX) {
            return Err(Error::MalformedId {
                what: "stream",
                id: ids::shown(id),
            });
        }
        let snap = self.registry.get(id, caller)?;
        match &snap.resource.object {
            Object::Stream(s) => {
                let s = s.clone();
                Ok((snap, s))
            }
            _ => Err(Error::NotFound {
                what: "stream",
                id: ids::shown(id),
            }),
        }
    }

    /// CreateStream: `slots` slots like `spec`, the ready timeline, the stream; with
    /// `produce`, the caller's session is its producer, signaling by `path`. With `word`, the
    /// timelines get memop words where the device offers the fast path.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_stream(
        &self,
        caller: &Caller,
        at: Placement,
        slots: u32,
        spec: SlotSpec,
        produce: bool,
        word: bool,
        path: SignalPath,
    ) -> Result<Attachment> {
        if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) {
            return Err(Error::BadStream(format!(
                "a stream has {MIN_SLOTS} to {MAX_SLOTS} slots, not {slots}"
            )));
        }
        if produce {
            session_of(caller)?;
        } else if caller.session.is_none() && !at.pin {
            return Err(Error::NoSession {
                header: gpushare_proto::SESSION_HEADER,
            });
        }
        Self::check_name("name", &at.name)?;
        let slot = self.device(at.device)?;
        let per_slot = match &spec {
            SlotSpec::Buffer(size) => {
                if *size == 0 {
                    return Err(Error::Zero {
                        what: "buffer_size",
                    });
                }
                at_most("buffer_size", *size, self.max_buffer_size)?;
                *size
            }
            SlotSpec::Image(desc, _) => {
                at_most("image size", desc.total_size(), self.max_buffer_size)?;
                desc.total_size()
            }
        };
        let estimate = Usage {
            buffers: u64::from(slots),
            buffer_bytes: per_slot.saturating_mul(u64::from(slots)),
            semaphores: 1,
            ..Usage::default()
        };
        self.registry
            .admit(caller.uid(), caller.session.as_deref(), &estimate)?;
        let uid = caller.uid();
        let mut parts = Vec::with_capacity(slots as usize + 1);
        let mut slot_ids = Vec::with_capacity(slots as usize);
        for _ in 0..slots {
            let (id, object) = match &spec {
                SlotSpec::Buffer(size) => {
                    let b = slot
                        .device
                        .create_exportable_buffer(*size)
                        .map_err(Error::gpu("allocating a stream slot"))?;
                    (
                        ids::new_id(BUFFER_PREFIX),
                        Object::Buffer(Arc::new(SharedBuffer::new(b))),
                    )
                }
                SlotSpec::Image(desc, usage) => {
                    let image = slot
                        .device
                        .create_exportable_image(desc, *usage)
                        .map_err(Error::gpu("creating a stream slot image"))?;
                    at_most(
                        "image allocation size",
                        image.allocation_size(),
                        self.max_buffer_size,
                    )?;
                    super::create::blocking(|| slot.prepare_image(&image))
                        .map_err(Error::gpu("preparing a stream slot image"))?;
                    (
                        ids::new_id(IMAGE_PREFIX),
                        Object::Image(Arc::new(SharedImage::new(image))),
                    )
                }
            };
            slot_ids.push(id.clone());
            parts.push(Resource::new(id, String::new(), at.device, uid, object));
        }
        let ready = self.new_timeline(at.device, word)?;
        parts.push(Resource::new(
            ready.id.clone(),
            String::new(),
            at.device,
            uid,
            Object::Semaphore(ready.sem.clone()),
        ));
        let id = ids::new_id(STREAM_PREFIX);
        let stream = Arc::new(Stream::new(
            id.clone(),
            at.device,
            spec,
            slot_ids,
            ready.clone(),
        ));
        let resource = Resource::new(
            id.clone(),
            at.name.clone(),
            at.device,
            uid,
            Object::Stream(stream.clone()),
        );
        let producer = if produce {
            Some((session_of(caller)?, ready.id.as_str()))
        } else {
            None
        };
        let snap = self.registry.insert_stream(
            resource,
            parts,
            caller.session.as_deref(),
            at.pin,
            producer,
        )?;
        tracing::debug!(id = %id, uid, slots, gpu_points = stream.gpu_points(), "stream created");
        let handle = if produce {
            self.declare_signal_path(caller, &ready.sem, path)?;
            Some(self.attach_role(caller, &stream, None)?)
        } else {
            None
        };
        self.attachment(caller, snap, &stream, handle, None)
    }

    /// A new timeline semaphore at 0 on `device`, exportable where the device can, with a
    /// memop word when `word` is asked and the device offers the fast path.
    fn new_timeline(&self, device: u32, word: bool) -> Result<Timeline> {
        let sem = Arc::new(self.device(device)?.new_semaphore(
            0,
            word,
            self.waits.clone(),
            "creating a stream timeline",
        )?);
        Ok(Timeline {
            id: sem.id().to_owned(),
            sem,
        })
    }

    /// Records the caller's session in a role of `stream`: the producer (`consumer` None) or a
    /// consumer. Returns the handle.
    fn attach_role(
        &self,
        caller: &Caller,
        stream: &Arc<Stream>,
        consumer: Option<(Mode, u32, Timeline)>,
    ) -> Result<String> {
        let session = session_of(caller)?;
        let handle = ids::new_id(HANDLE_PREFIX);
        let holder = Holder {
            handle: handle.clone(),
            uid: caller.uid(),
            pid: caller.peer.pid,
        };
        match consumer {
            None => stream.attach_producer(holder)?,
            Some((mode, limit, release)) => stream.attach_consumer(holder, mode, limit, release)?,
        }
        self.roles
            .insert(&handle, stream.clone(), session, caller.uid());
        Ok(handle)
    }

    /// The attach reply: tickets for the slots and timelines.
    fn attachment(
        &self,
        caller: &Caller,
        snap: Snapshot,
        stream: &Arc<Stream>,
        handle: Option<String>,
        release: Option<&Timeline>,
    ) -> Result<Attachment> {
        let ticket = |id: &str| -> Result<Option<[u8; ids::ID_BYTES]>> {
            match self.issue_ticket(caller, id) {
                Ok(t) => Ok(Some(t)),
                Err(Error::NotExportable(_)) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let want = handle.is_some();
        let slots = stream
            .slot_ids()
            .iter()
            .map(|id| Ok((id.clone(), if want { ticket(id)? } else { None })))
            .collect::<Result<Vec<_>>>()?;
        let ready_id = stream.ready().id.clone();
        let ready_ticket = if want { ticket(&ready_id)? } else { None };
        let release = match release {
            Some(t) => Some((t.id.clone(), ticket(&t.id)?)),
            None => None,
        };
        Ok(Attachment {
            producer: release.is_none(),
            handle: handle.unwrap_or_default(),
            stream: snap,
            slots,
            ready: (ready_id, ready_ticket),
            release,
        })
    }

    /// AttachProducer: the caller's session signals the ready timeline by `path`.
    pub(crate) fn attach_producer(
        &self,
        caller: &Caller,
        id: &str,
        path: SignalPath,
    ) -> Result<Attachment> {
        let session = session_of(caller)?.to_owned();
        let (_, stream) = self.stream(id, caller)?;
        let snap = self
            .registry
            .open(&OpenTarget::Id(id.to_owned()), false, caller)?;
        let handle = self.attach_role(caller, &stream, None)?;
        self.registry.add_signaler(&session, &stream.ready().id)?;
        self.declare_signal_path(caller, &stream.ready().sem, path)?;
        tracing::debug!(id, uid = caller.uid(), "stream producer attached");
        self.attachment(caller, snap, &stream, Some(handle), None)
    }

    /// AttachConsumer: its release timeline is made here (with a word when the stream's ready
    /// timeline was asked for one), signaled by the caller's session by `path`.
    pub(crate) fn attach_consumer(
        &self,
        caller: &Caller,
        id: &str,
        mode: Mode,
        limit: u32,
        path: SignalPath,
    ) -> Result<Attachment> {
        let session = session_of(caller)?.to_owned();
        if limit == 0 {
            return Err(Error::BadStream("a consumer's limit is at least 1".into()));
        }
        let (_, stream) = self.stream(id, caller)?;
        let snap = self
            .registry
            .open(&OpenTarget::Id(id.to_owned()), false, caller)?;
        let ready = &stream.ready().sem;
        let word = ready.word().is_some() || ready.word_unavailable().is_some();
        let release = self.new_timeline(stream.device(), word)?;
        self.registry.insert_part(
            Resource::new(
                release.id.clone(),
                String::new(),
                stream.device(),
                caller.uid(),
                Object::Semaphore(release.sem.clone()),
            ),
            id,
            &session,
        )?;
        let handle = match self.attach_role(caller, &stream, Some((mode, limit, release.clone()))) {
            Ok(h) => h,
            Err(e) => {
                let freed = self.registry.drop_part(id, &release.id);
                self.freed(freed);
                return Err(e);
            }
        };
        self.declare_signal_path(caller, &release.sem, path)?;
        tracing::debug!(
            id,
            uid = caller.uid(),
            ?mode,
            limit,
            "stream consumer attached"
        );
        self.attachment(caller, snap, &stream, Some(handle), Some(&release))
    }

    /// Detach: the role `handle` leaves its stream (see the proto for what that does).
    pub(crate) fn detach(&self, caller: &Caller, handle: &str) -> Result<Arc<Stream>> {
        let stream = self.roles.stream(handle, caller.uid())?;
        self.detach_role(&stream, handle, "the producer detached");
        Ok(stream)
    }

    /// Removes role `handle` from `stream`; a consumer's release timeline is freed (poisoned).
    fn detach_role(&self, stream: &Arc<Stream>, handle: &str, producer_why: &str) {
        self.roles.remove(handle);
        if let Some(release) = stream.detach(handle, producer_why) {
            let freed = self.registry.drop_part(stream.id(), &release.id);
            self.freed(freed);
            // Still held (it cannot be: a part is held by its stream alone): end it anyway.
            release.sem.end(crate::semaphore::Ended::Freed);
        }
    }

    /// What the end of `session` does to the roles it held: called after its semaphores were
    /// abandoned (poisoned), so a dead consumer's release points and a dead producer's ready
    /// points are reached already.
    pub(crate) fn streams_session_ended(&self, session: &str) {
        for (handle, stream) in self.roles.take_session(session) {
            self.detach_role(&stream, &handle, "the producer's session ended");
            tracing::debug!(id = %stream.id(), session, "stream role ended with its session");
        }
    }

    /// A freed stream: every waiter is told, its roles forgotten.
    pub(crate) fn stream_freed(&self, stream: &Stream) {
        stream.end("the stream was freed");
        self.roles.forget_stream(stream.id());
    }

    /// Parks an acquire until `start`'s waiter is called, the timeout, or shutdown. `direct`
    /// (fd.sock) sends the answer from the deciding thread. What was handed over but never
    /// reached the caller (its connection went, the call was dropped while parked) is given
    /// back with `undo`: the slot to the pool, the frame to the front of its queue.
    async fn parked<T: Send + 'static>(
        &self,
        stream: &Arc<Stream>,
        timeout: Duration,
        what: &'static str,
        start: impl FnOnce(Option<Waiter>) -> Result<Acquired<T>>,
        hand: Handover<T>,
    ) -> Result<Answer<T>> {
        let Handover {
            convert,
            direct,
            undo,
        } = hand;
        if timeout.is_zero() {
            return match start(None)? {
                Acquired::Now(t) => Ok(Answer::Reply(t)),
                // Not parked without a waiter.
                Acquired::Parked(_) => Err(Error::StreamTimeout {
                    id: ids::shown(stream.id()),
                    what,
                    timeout_ms: 0,
                }),
            };
        }
        let (tx, rx) = oneshot::channel::<(Result<T>, bool)>();
        let undo_lost = undo.clone();
        let waiter: Waiter = Box::new(move |served| {
            let r = convert(served);
            let (r, sent) = match direct {
                Some(d) => {
                    let sent = d(&r);
                    match r {
                        Ok(t) if !sent => {
                            undo_lost(t);
                            (Err(reply_lost()), false)
                        }
                        r => (r, sent),
                    }
                }
                None => (r, false),
            };
            // The call is gone (dropped while parked): give back what it would have had.
            if let Err((Ok(t), false)) = tx.send((r, sent)) {
                undo_lost(t);
            }
        });
        let token = match start(Some(waiter))? {
            Acquired::Now(t) => return Ok(Answer::Reply(t)),
            Acquired::Parked(token) => token,
        };
        let mut parked = Parked {
            stream: stream.clone(),
            token,
            rx,
            undo,
            done: false,
        };
        let answered =
            |got: std::result::Result<(Result<T>, bool), oneshot::error::RecvError>| match got {
                Ok((_, true)) => Ok(Answer::Sent),
                Ok((r, false)) => r.map(Answer::Reply),
                Err(_) => Err(Error::ShuttingDown),
            };
        let got = tokio::select! {
            got = &mut parked.rx => answered(got),
            _ = tokio::time::sleep(timeout) => match stream.cancel(token) {
                Some(_) => Err(Error::StreamTimeout {
                    id: ids::shown(stream.id()),
                    what,
                    timeout_ms: timeout.as_millis() as u64,
                }),
                None => answered((&mut parked.rx).await),
            },
            _ = self.shutdown.cancelled() => match stream.cancel(token) {
                Some(_) => Err(Error::ShuttingDown),
                None => answered((&mut parked.rx).await),
            },
        };
        parked.done = true;
        got
    }

    /// Waits on the host for `points` (AcquireRequest.host_wait).
    async fn host_wait(
        &self,
        caller: &Caller,
        stream: &Stream,
        points: &[stream::Point],
        ask: &AcquireAsk,
    ) -> Result<()> {
        let points: Vec<WaitPoint> = points
            .iter()
            .filter(|p| p.timeline.sem.ended().is_none())
            .map(|p| WaitPoint {
                sem: p.timeline.sem.clone(),
                device: stream.device(),
                value: p.value,
            })
            .collect();
        let timeout = self.wait_timeout(Some(ask.timeout), None);
        self.wait_for(
            caller,
            &points,
            timeout,
            Asked::Spinning {
                spin: ask.spin,
                parked: ask.in_flight,
            },
        )
        .await
        .map(drop)
    }

    /// AcquireSlot.
    pub(crate) async fn acquire_slot(
        &self,
        caller: &Caller,
        handle: &str,
        ask: AcquireAsk,
        direct: Option<Direct<Granted>>,
    ) -> Result<Answer<Granted>> {
        let stream = self.roles.stream(handle, caller.uid())?;
        let timeout = self.wait_timeout(Some(ask.timeout), None);
        let direct = if ask.host_wait { None } else { direct };
        let back = stream.clone();
        let answer = self
            .parked(
                &stream,
                timeout,
                "free slot",
                |w| stream.acquire_slot(handle, w),
                Handover {
                    convert: stream::into_slot,
                    direct,
                    undo: Arc::new(move |g| back.return_slot(g)),
                },
            )
            .await?;
        if let (Answer::Reply(g), true) = (&answer, ask.host_wait) {
            self.host_wait(caller, &stream, &g.wait, &ask).await?;
        }
        Ok(answer)
    }

    /// AcquireFrame.
    pub(crate) async fn acquire_frame(
        &self,
        caller: &Caller,
        handle: &str,
        ask: AcquireAsk,
        direct: Option<Direct<Delivered>>,
    ) -> Result<Answer<Delivered>> {
        let stream = self.roles.stream(handle, caller.uid())?;
        let timeout = self.wait_timeout(Some(ask.timeout), None);
        let direct = if ask.host_wait { None } else { direct };
        let (back, owner) = (stream.clone(), handle.to_owned());
        let answer = self
            .parked(
                &stream,
                timeout,
                "frame",
                |w| stream.acquire_frame(handle, w),
                Handover {
                    convert: stream::into_frame,
                    direct,
                    undo: Arc::new(move |f| back.return_frame(&owner, f)),
                },
            )
            .await?;
        if let (Answer::Reply(f), true) = (&answer, ask.host_wait) {
            self.host_wait(caller, &stream, std::slice::from_ref(&f.ready), &ask)
                .await?;
        }
        Ok(answer)
    }

    /// Present: returns (ready value, sequence).
    pub(crate) fn present(
        &self,
        caller: &Caller,
        handle: &str,
        slot: u32,
        ready: u64,
        meta: FrameMeta,
    ) -> Result<(u64, u64)> {
        let stream = self.roles.stream(handle, caller.uid())?;
        stream.present(handle, slot, ready, meta)
    }

    /// ReleaseFrame: returns the release value.
    pub(crate) fn release_frame(
        &self,
        caller: &Caller,
        handle: &str,
        slot: u32,
        value: u64,
    ) -> Result<u64> {
        let stream = self.roles.stream(handle, caller.uid())?;
        stream.release(handle, slot, value)
    }

    /// The streams `caller` sees (`None`: every stream, for the metrics), oldest first.
    pub(crate) fn streams(&self, caller: Option<&Caller>) -> Vec<(Snapshot, Arc<Stream>)> {
        let all = match caller {
            Some(c) => self.registry.list(c),
            None => self.registry.all(),
        };
        all.into_iter()
            .filter_map(|snap| match &snap.resource.object {
                Object::Stream(s) => {
                    let s = s.clone();
                    Some((snap, s))
                }
                _ => None,
            })
            .collect()
    }

    /// A stream the caller sees (DescribeStream: the admin group sees all).
    pub(crate) fn stream_visible(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(Snapshot, Arc<Stream>)> {
        if !ids::is_well_formed(id, STREAM_PREFIX) {
            return Err(Error::MalformedId {
                what: "stream",
                id: ids::shown(id),
            });
        }
        let snap = self.registry.get_visible(id, caller)?;
        match &snap.resource.object {
            Object::Stream(s) => {
                let s = s.clone();
                Ok((snap, s))
            }
            _ => Err(Error::NotFound {
                what: "stream",
                id: ids::shown(id),
            }),
        }
    }
}
