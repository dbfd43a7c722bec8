//! A frame stream: a pool of alike slots (buffers or images, each a resource of its own), one
//! producer and any number of consumers, and the timelines their hand-offs are points of.
//!
//! Sync design: one **ready timeline** per stream, signaled by the producer (each present
//! names a value above every earlier one), and one **release timeline** per consumer,
//! signaled by that consumer (each release names a value above its earlier ones). A frame's
//! ready point is `(ready timeline, value)`; a slot's wait points for the producer are, per
//! consumer that read its last frame, `(that consumer's release timeline, value)`. So a
//! consumer's releases, like the producer's presents, must be signaled in the order they were
//! made (one queue or stream per role, as timeline semaphores want anyway). With HOST points
//! (the device cannot export timeline semaphores) the daemon signals each point at the call;
//! with GPU points it signals those given as 0 ("ready now", "done now": a host-side client),
//! and the clients' GPU work signals the others.
//!
//! The booking is [`book`]'s; this module resolves its consumer keys to timelines, checks
//! point values, keeps roles and counters, and hands what the booking decided to the parked
//! waiters *after* its lock is released: a waiter is a closure (a gRPC call's channel, or
//! fd.sock's direct reply written by the thread whose call decided it).
//!
//! Not here: the registry entries of the stream and its parts, sessions, access (`daemon`).

pub(crate) mod book;
pub(crate) mod roles;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gpushare_interop::image::ImageDesc;
use gpushare_interop::vulkan::vk;

use crate::error::{Error, Result};
use crate::ids;
use crate::semaphore::Semaphore;
use book::{Book, ConsumerKey, FrameMeta, Mode, Outcome, Refused};

/// The id prefix of streams (`str-…`).
pub(crate) const STREAM_PREFIX: &str = "str";
/// The prefix of role handles (`role-…`).
pub(crate) const HANDLE_PREFIX: &str = "role";
/// Fewest slots a stream has.
pub(crate) const MIN_SLOTS: u32 = 2;
/// Most slots a stream has.
pub(crate) const MAX_SLOTS: u32 = 64;
/// Most bytes of user data a frame carries.
pub(crate) const MAX_USER_DATA: usize = 256;

/// What every slot of a stream is.
#[derive(Debug, Clone)]
pub(crate) enum SlotSpec {
    /// A buffer of this many bytes.
    Buffer(u64),
    /// An image.
    Image(ImageDesc, vk::ImageUsageFlags),
}

/// A timeline of the stream: its resource id and the semaphore.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    /// The semaphore's resource id.
    pub(crate) id: String,
    /// The semaphore.
    pub(crate) sem: Arc<Semaphore>,
}

/// Who holds a role.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    /// The role's handle.
    pub(crate) handle: String,
    /// Its uid.
    pub(crate) uid: u32,
    /// Its pid (introspection).
    pub(crate) pid: i32,
}

#[derive(Debug)]
struct ConsumerRole {
    holder: Holder,
    release: Timeline,
    held_since: HashMap<u32, Instant>,
}

/// A point resolved to its timeline.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    /// The timeline.
    pub(crate) timeline: Timeline,
    /// The value.
    pub(crate) value: u64,
}

/// A slot granted to the producer.
#[derive(Debug, Clone)]
pub(crate) struct Granted {
    /// The slot.
    pub(crate) slot: u32,
    /// Points to wait for before writing it (release points of live consumers' timelines;
    /// a detached consumer's timeline was poisoned, so its points are reached).
    pub(crate) wait: Vec<Point>,
}

/// A frame delivered to a consumer.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    /// The slot.
    pub(crate) slot: u32,
    /// Its sequence number in the stream.
    pub(crate) seq: u64,
    /// The ready point.
    pub(crate) ready: Point,
    /// The producer's metadata.
    pub(crate) meta: Arc<FrameMeta>,
}

/// What a parked acquire gets.
#[derive(Debug)]
pub(crate) enum Served {
    /// The producer's slot.
    Slot(Granted),
    /// A consumer's frame.
    Frame(Delivered),
    /// The stream ended or the consumer was detached (ABORTED).
    Ended(Error),
}

/// A parked acquire: called once, without the stream's lock held.
pub(crate) type Waiter = Box<dyn FnOnce(Served) + Send>;

/// An acquire's immediate answer.
pub(crate) enum Acquired<T> {
    /// There it is.
    Now(T),
    /// Parked: the waiter will be called; the token cancels it.
    Parked(u64),
}

/// A frame stream.
#[derive(Debug)]
pub(crate) struct Stream {
    id: String,
    device: u32,
    spec: SlotSpec,
    slot_ids: Vec<String>,
    ready: Timeline,
    gpu_points: bool,
    state: Mutex<State>,
}

struct State {
    book: Book<Waiter>,
    producer: Option<Holder>,
    consumers: HashMap<ConsumerKey, ConsumerRole>,
    /// The highest ready value presented.
    last_ready: u64,
    /// When recent frames were presented (fps).
    recent: VecDeque<Instant>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("producer", &self.producer)
            .field("consumers", &self.consumers.len())
            .field("last_ready", &self.last_ready)
            .finish_non_exhaustive()
    }
}

/// What introspection shows of a stream's live state.
#[derive(Debug, Clone)]
pub(crate) struct StreamView {
    /// Why it ended, if it did.
    pub(crate) ended: Option<String>,
    /// The producer.
    pub(crate) producer: Option<Holder>,
    /// Per slot: its state and the pids of the consumers holding it.
    pub(crate) slots: Vec<(&'static str, Vec<i32>)>,
    /// The consumers.
    pub(crate) consumers: Vec<ConsumerInfo>,
    /// Frames presented.
    pub(crate) presented: u64,
    /// Producer stalls.
    pub(crate) stalls: u64,
    /// Frames per second lately.
    pub(crate) fps: f64,
}

/// One consumer, as introspection shows it.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerInfo {
    /// Who.
    pub(crate) holder: Holder,
    /// Its booking.
    pub(crate) view: book::ConsumerView,
    /// How long it has held its oldest frame.
    pub(crate) oldest_held: Duration,
    /// Its release timeline's id.
    pub(crate) release_id: String,
}

/// The error for a refusal of the booking.
fn refused(id: &str, r: Refused) -> Error {
    match r {
        Refused::State(why) => Error::StreamState {
            id: ids::shown(id),
            why,
        },
        Refused::Ended(why) => Error::StreamEnded {
            id: ids::shown(id),
            why,
        },
    }
}

/// How many recent presents the fps figure looks at.
const FPS_WINDOW: usize = 120;

impl Stream {
    /// A stream `id` of `slot_ids` (resources made by the caller) on `device`, whose ready
    /// timeline is `ready`; its points are GPU points when the timeline is exportable.
    pub(crate) fn new(
        id: String,
        device: u32,
        spec: SlotSpec,
        slot_ids: Vec<String>,
        ready: Timeline,
    ) -> Self {
        let gpu_points = ready.sem.exportable();
        let n = u32::try_from(slot_ids.len()).unwrap_or(MAX_SLOTS);
        Self {
            id,
            device,
            spec,
            slot_ids,
            ready,
            gpu_points,
            state: Mutex::new(State {
                book: Book::new(n),
                producer: None,
                consumers: HashMap::new(),
                last_ready: 0,
                recent: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Its device.
    pub(crate) fn device(&self) -> u32 {
        self.device
    }

    /// What its slots are.
    pub(crate) fn spec(&self) -> &SlotSpec {
        &self.spec
    }

    /// Its slots' resource ids, in slot order.
    pub(crate) fn slot_ids(&self) -> &[String] {
        &self.slot_ids
    }

    /// Its ready timeline.
    pub(crate) fn ready(&self) -> &Timeline {
        &self.ready
    }

    /// Whether its points are signaled on GPUs (else by the daemon: HOST points).
    pub(crate) fn gpu_points(&self) -> bool {
        self.gpu_points
    }

    /// Sets the producer; FAILED_PRECONDITION when it has one, ABORTED when it ended.
    pub(crate) fn attach_producer(&self, holder: Holder) -> Result<()> {
        let mut s = self.lock();
        if let Some(why) = s.book.ended() {
            return Err(refused(&self.id, Refused::Ended(why.to_owned())));
        }
        if let Some(p) = &s.producer {
            return Err(Error::StreamState {
                id: ids::shown(&self.id),
                why: format!(
                    "it has a producer already (pid {}): one producer at a time",
                    p.pid
                ),
            });
        }
        s.producer = Some(holder);
        Ok(())
    }

    /// Adds a consumer whose release timeline is `release`; ABORTED when it ended.
    pub(crate) fn attach_consumer(
        &self,
        holder: Holder,
        mode: Mode,
        limit: u32,
        release: Timeline,
    ) -> Result<()> {
        let mut s = self.lock();
        if let Some(why) = s.book.ended() {
            return Err(refused(&self.id, Refused::Ended(why.to_owned())));
        }
        let key = s.book.attach(mode, limit);
        s.consumers.insert(
            key,
            ConsumerRole {
                holder,
                release,
                held_since: HashMap::new(),
            },
        );
        Ok(())
    }

    fn consumer_key(s: &State, handle: &str) -> Option<ConsumerKey> {
        s.consumers
            .iter()
            .find(|(_, c)| c.holder.handle == handle)
            .map(|(k, _)| *k)
    }

    /// Removes the role `handle`: a producer ends the stream for `why`; a consumer is
    /// detached (its release timeline is returned: the caller ends and frees it). Returns the
    /// consumer's timeline, if it was one.
    pub(crate) fn detach(&self, handle: &str, why: &str) -> Option<Timeline> {
        let (out, timeline) = {
            let mut s = self.lock();
            if s.producer.as_ref().is_some_and(|p| p.handle == handle) {
                s.producer = None;
                let out = s.book.end(why);
                (self.finish(&mut s, out), None)
            } else if let Some(key) = Self::consumer_key(&s, handle) {
                let role = s.consumers.remove(&key);
                let out = s.book.detach(key, why);
                (self.finish(&mut s, out), role.map(|r| r.release))
            } else {
                return None;
            }
        };
        deliver(out);
        timeline
    }

    /// Ends the stream for `why` (it was freed): every waiter is told, consumers drain.
    pub(crate) fn end(&self, why: &str) {
        let out = {
            let mut s = self.lock();
            s.producer = None;
            let out = s.book.end(why);
            self.finish(&mut s, out)
        };
        deliver(out);
    }

    /// Turns the booking's deliveries into answers (consumer keys into timelines).
    fn resolve(&self, s: &State, out: Vec<book::Delivery<Waiter>>) -> Vec<(Waiter, Served)> {
        out.into_iter()
            .map(|(w, o)| {
                let served = match o {
                    Outcome::Slot(g) => Served::Slot(self.granted(s, g)),
                    Outcome::Frame(f) => Served::Frame(self.delivered(f)),
                    Outcome::Ended(why) => Served::Ended(refused(&self.id, Refused::Ended(why))),
                };
                (w, served)
            })
            .collect()
    }

    /// [`Stream::resolve`], noting when consumers began holding the frames delivered.
    fn finish(&self, s: &mut State, out: Vec<book::Delivery<Waiter>>) -> Vec<(Waiter, Served)> {
        let out = self.resolve(s, out);
        let now = Instant::now();
        for (_, served) in &out {
            if let Served::Frame(f) = served {
                Self::mark_held(s, f.slot, now);
            }
        }
        out
    }

    fn granted(&self, s: &State, g: book::SlotGrant) -> Granted {
        let wait = g
            .wait
            .into_iter()
            .filter_map(|(key, value)| {
                let c = s.consumers.get(&key)?;
                Some(Point {
                    timeline: c.release.clone(),
                    value,
                })
            })
            .collect();
        Granted { slot: g.slot, wait }
    }

    fn delivered(&self, f: book::Frame) -> Delivered {
        Delivered {
            slot: f.slot,
            seq: f.seq,
            ready: Point {
                timeline: self.ready.clone(),
                value: f.ready,
            },
            meta: f.meta,
        }
    }

    fn producer_checked(&self, s: &State, handle: &str) -> Result<()> {
        match &s.producer {
            Some(p) if p.handle == handle => Ok(()),
            _ => Err(Error::NotFound {
                what: "producer handle",
                id: ids::shown(handle),
            }),
        }
    }

    /// AcquireSlot: a free slot now, or `park` is parked for one.
    pub(crate) fn acquire_slot(
        &self,
        handle: &str,
        park: Option<Waiter>,
    ) -> Result<Acquired<Granted>> {
        let mut s = self.lock();
        self.producer_checked(&s, handle)?;
        match s.book.acquire_slot().map_err(|r| refused(&self.id, r))? {
            Some(g) => Ok(Acquired::Now(self.granted(&s, g))),
            None => match park {
                Some(w) => Ok(Acquired::Parked(s.book.park_producer(w))),
                None => Err(Error::StreamTimeout {
                    id: ids::shown(&self.id),
                    what: "a free slot",
                    timeout_ms: 0,
                }),
            },
        }
    }

    /// Present: the frame in `slot` is ready at `ready`; 0: ready now, the daemon signals the
    /// next value itself (as it does every HOST point). Returns the ready value and the
    /// frame's sequence.
    pub(crate) fn present(
        &self,
        handle: &str,
        slot: u32,
        ready: u64,
        meta: FrameMeta,
    ) -> Result<(u64, u64)> {
        if meta.user_data.len() > MAX_USER_DATA {
            return Err(Error::TextTooLong {
                what: "user_data",
                limit: MAX_USER_DATA,
            });
        }
        let (value, seq, out) = {
            let mut s = self.lock();
            self.producer_checked(&s, handle)?;
            s.book
                .check_present(slot)
                .map_err(|r| refused(&self.id, r))?;
            // The daemon signals HOST points, and "ready now" (0) with GPU points too.
            let daemon_signals = !self.gpu_points || ready == 0;
            let value = next_point(&self.ready, s.last_ready, ready, daemon_signals)?;
            if daemon_signals {
                self.ready.sem.signal(value)?;
            }
            s.last_ready = value;
            let (seq, out) = s
                .book
                .present(slot, value, meta)
                .map_err(|r| refused(&self.id, r))?;
            let now = Instant::now();
            s.recent.push_back(now);
            if s.recent.len() > FPS_WINDOW {
                s.recent.pop_front();
            }
            let out = self.finish(&mut s, out);
            (value, seq, out)
        };
        deliver(out);
        Ok((value, seq))
    }

    /// Notes when consumers began holding `slot` (those that hold it and had not).
    fn mark_held(s: &mut State, slot: u32, now: Instant) {
        let holders: Vec<ConsumerKey> = s
            .book
            .consumer_views()
            .into_iter()
            .filter(|c| c.held.contains(&slot))
            .map(|c| c.key)
            .collect();
        for key in holders {
            if let Some(c) = s.consumers.get_mut(&key) {
                c.held_since.entry(slot).or_insert(now);
            }
        }
    }

    /// AcquireFrame: the next frame now, or `park` is parked for one.
    pub(crate) fn acquire_frame(
        &self,
        handle: &str,
        park: Option<Waiter>,
    ) -> Result<Acquired<Delivered>> {
        let mut s = self.lock();
        let key = Self::consumer_key(&s, handle).ok_or_else(|| Error::NotFound {
            what: "consumer handle",
            id: ids::shown(handle),
        })?;
        match s
            .book
            .acquire_frame(key)
            .map_err(|r| refused(&self.id, r))?
        {
            Some(f) => {
                Self::mark_held(&mut s, f.slot, Instant::now());
                Ok(Acquired::Now(self.delivered(f)))
            }
            None => match park {
                Some(w) => Ok(Acquired::Parked(
                    s.book
                        .park_consumer(key, w)
                        .map_err(|r| refused(&self.id, r))?,
                )),
                None => Err(Error::StreamTimeout {
                    id: ids::shown(&self.id),
                    what: "a frame",
                    timeout_ms: 0,
                }),
            },
        }
    }

    /// ReleaseFrame: consumer `handle` is done with `slot` at `value`; 0: done now, the daemon
    /// signals the next value itself (as it does every HOST point). Returns the value.
    pub(crate) fn release(&self, handle: &str, slot: u32, value: u64) -> Result<u64> {
        let (value, out) = {
            let mut s = self.lock();
            let key = Self::consumer_key(&s, handle).ok_or_else(|| Error::NotFound {
                what: "consumer handle",
                id: ids::shown(handle),
            })?;
            s.book
                .check_release(key, slot)
                .map_err(|r| refused(&self.id, r))?;
            let last = s.book.last_release(key).map_err(|r| refused(&self.id, r))?;
            let release = match s.consumers.get(&key) {
                Some(c) => c.release.clone(),
                None => {
                    return Err(Error::NotFound {
                        what: "consumer handle",
                        id: ids::shown(handle),
                    })
                }
            };
            let daemon_signals = !self.gpu_points || value == 0;
            let value = next_point(&release, last, value, daemon_signals)?;
            if daemon_signals {
                release.sem.signal(value)?;
            }
            let out = s
                .book
                .release(key, slot, value)
                .map_err(|r| refused(&self.id, r))?;
            if let Some(c) = s.consumers.get_mut(&key) {
                c.held_since.remove(&slot);
            }
            (value, self.finish(&mut s, out))
        };
        deliver(out);
        Ok(value)
    }

    /// Gives back a slot granted to the producer that never reached it (see
    /// [`book::Book::return_slot`]).
    pub(crate) fn return_slot(&self, g: Granted) {
        let out = {
            let mut s = self.lock();
            let wait = g
                .wait
                .iter()
                .filter_map(|p| {
                    s.consumers
                        .iter()
                        .find(|(_, c)| c.release.id == p.timeline.id)
                        .map(|(k, _)| (*k, p.value))
                })
                .collect();
            let out = s.book.return_slot(book::SlotGrant { slot: g.slot, wait });
            self.finish(&mut s, out)
        };
        deliver(out);
    }

    /// Gives back a frame delivered to consumer `handle` that never reached it (see
    /// [`book::Book::return_frame`]).
    pub(crate) fn return_frame(&self, handle: &str, f: Delivered) {
        let out = {
            let mut s = self.lock();
            let Some(key) = Self::consumer_key(&s, handle) else {
                return;
            };
            if let Some(c) = s.consumers.get_mut(&key) {
                c.held_since.remove(&f.slot);
            }
            let frame = book::Frame {
                slot: f.slot,
                seq: f.seq,
                ready: f.ready.value,
                meta: f.meta,
            };
            let out = s.book.return_frame(key, frame);
            self.finish(&mut s, out)
        };
        deliver(out);
    }

    /// Takes back a parked acquire whose time ran out; `None` when it was answered already
    /// (its waiter has been or is being called).
    pub(crate) fn cancel(&self, token: u64) -> Option<Waiter> {
        self.lock().book.cancel(token)
    }

    /// Introspection.
    pub(crate) fn view(&self) -> StreamView {
        let s = self.lock();
        let now = Instant::now();
        let pid_of = |key: ConsumerKey| s.consumers.get(&key).map_or(0, |c| c.holder.pid);
        let consumers = s
            .book
            .consumer_views()
            .into_iter()
            .filter_map(|view| {
                let c = s.consumers.get(&view.key)?;
                let oldest = c
                    .held_since
                    .values()
                    .min()
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t));
                Some(ConsumerInfo {
                    holder: c.holder.clone(),
                    view,
                    oldest_held: oldest,
                    release_id: c.release.id.clone(),
                })
            })
            .collect();
        let fps = match (s.recent.front(), s.recent.back()) {
            (Some(first), Some(last))
                if s.recent.len() > 1 && now.duration_since(*last) < Duration::from_secs(2) =>
            {
                let span = last.duration_since(*first).as_secs_f64();
                if span > 0.0 {
                    (s.recent.len() - 1) as f64 / span
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        StreamView {
            ended: s.book.ended().map(str::to_owned),
            producer: s.producer.clone(),
            slots: s
                .book
                .slot_views()
                .into_iter()
                .map(|(state, keys)| (state, keys.into_iter().map(pid_of).collect()))
                .collect(),
            consumers,
            presented: s.book.counts().presented,
            stalls: s.book.counts().stalls,
            fps,
        }
    }
}

/// The value of a new point on `timeline` whose last point given was `last`: `asked`, or the
/// next one when 0. Points only grow: FAILED_PRECONDITION unless it exceeds `last`, and, for a
/// timeline the daemon signals itself (`host`: HOST points), its value too. With GPU points a
/// value the GPU reached already is fine: the client may enqueue its signal before the call.
/// ABORTED when the timeline ended.
fn next_point(timeline: &Timeline, last: u64, asked: u64, host: bool) -> Result<u64> {
    if let Some(why) = timeline.sem.ended() {
        return Err(timeline.sem.ended_error(why));
    }
    let floor = if host {
        timeline.sem.value()?.max(last)
    } else {
        last
    };
    if asked == 0 {
        return Ok(floor.saturating_add(1));
    }
    if asked <= floor {
        return Err(Error::NotIncreasing {
            id: ids::shown(&timeline.id),
            current: floor,
            requested: asked,
        });
    }
    Ok(asked)
}

/// Calls the waiters, outside the stream's lock.
fn deliver(out: Vec<(Waiter, Served)>) {
    for (w, served) in out {
        w(served);
    }
}

/// A waiter's converter: `Served` for a producer into its result.
pub(crate) fn into_slot(s: Served) -> Result<Granted> {
    match s {
        Served::Slot(g) => Ok(g),
        Served::Ended(e) => Err(e),
        Served::Frame(_) => Err(Error::StreamState {
            id: String::new(),
            why: "a frame was delivered to the producer".into(),
        }),
    }
}

/// A waiter's converter: `Served` for a consumer into its result.
pub(crate) fn into_frame(s: Served) -> Result<Delivered> {
    match s {
        Served::Frame(f) => Ok(f),
        Served::Ended(e) => Err(e),
        Served::Slot(_) => Err(Error::StreamState {
            id: String::new(),
            why: "a slot was delivered to a consumer".into(),
        }),
    }
}
