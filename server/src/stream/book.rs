//! A frame stream's booking: which slot is free, which frames are queued for which consumer,
//! who holds what, and who waits for what. Pure state, no GPU and no I/O: the stream
//! (`stream::Stream`) keeps one behind its lock, turns points into semaphores, and delivers
//! what the operations here hand back ([`Delivery`]) after the lock is released.
//!
//! The rules:
//! - A slot is **free**, **producing** (acquired by the producer), or **presented** (a frame
//!   in it). A presented slot returns to the pool when no consumer queue holds its frame and
//!   no consumer holds it; it remembers the release points of the consumers that read it,
//!   which are the points the producer's next acquire of it must wait for.
//! - Present queues the frame for every consumer: a **FIFO** consumer gets every frame, in
//!   order; a **mailbox** consumer's queue holds only the newest frame, the older one it had
//!   not acquired is dropped (and its slot recycled if nobody else needs it).
//! - A consumer holds at most its `limit` frames at once.
//! - The producer waits (parks) when no slot is free; a consumer waits when its queue is
//!   empty. Waiters are served in order as slots free up and frames arrive.
//! - A detached consumer's held frames are released at its last release point and its queue
//!   is dropped. An ended stream (its producer gone) refuses the producer at once, a mailbox
//!   consumer at once, and a FIFO consumer once it has drained its queue.
//!
//! A property test (`tests` below) drives random operations against a simple model and checks
//! that a slot is never handed to the producer while a consumer holds or awaits its frame,
//! and that no slot is ever lost.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// A consumer's key within its stream.
pub(crate) type ConsumerKey = u64;

/// How a consumer receives frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every frame, in order; the producer waits for it when no slot is free.
    Fifo,
    /// The newest frame only; the producer never waits for it.
    Mailbox,
}

/// What the producer says of a frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FrameMeta {
    /// The producer's frame number.
    pub(crate) number: u64,
    /// The producer's timestamp, in nanoseconds.
    pub(crate) timestamp_ns: u64,
    /// Up to `MAX_USER_DATA` bytes.
    pub(crate) user_data: Vec<u8>,
}

/// A presented frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Its slot.
    pub(crate) slot: u32,
    /// Its place in the stream: 1, 2, 3, ... in present order.
    pub(crate) seq: u64,
    /// The ready timeline's value at which it is ready.
    pub(crate) ready: u64,
    /// What the producer said of it.
    pub(crate) meta: Arc<FrameMeta>,
}

/// A slot granted to the producer, and the release points to wait for before writing it: per
/// consumer that read its last frame, the value of that consumer's release timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotGrant {
    /// The slot.
    pub(crate) slot: u32,
    /// `(consumer, release value)` points.
    pub(crate) wait: Vec<(ConsumerKey, u64)>,
}

/// What a parked waiter gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The producer's slot.
    Slot(SlotGrant),
    /// A consumer's frame.
    Frame(Frame),
    /// The stream ended (or the consumer was detached): why.
    Ended(String),
}

/// A waiter and what it gets, to deliver once the lock is released.
pub(crate) type Delivery<W> = (W, Outcome);

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not in the state the operation needs (FAILED_PRECONDITION), saying why.
    State(String),
    /// The stream ended (ABORTED), saying why.
    Ended(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Producing,
    Presented,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    /// Consumer queues that hold its frame.
    queued: u32,
    /// Consumers that hold its frame.
    readers: BTreeSet<ConsumerKey>,
    /// Release points of the consumers that read its last frame.
    release: Vec<(ConsumerKey, u64)>,
    /// When it last became free (least recently freed goes first).
    freed_at: u64,
}

#[derive(Debug)]
struct Consumer<W> {
    mode: Mode,
    limit: u32,
    queue: VecDeque<Frame>,
    held: BTreeMap<u32, Frame>,
    waiters: VecDeque<(u64, W)>,
    /// The highest release value it gave.
    last_release: u64,
    acquired: u64,
    dropped: u64,
}

/// Counters for introspection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Frames presented.
    pub(crate) presented: u64,
    /// Producer acquires that found no free slot and waited.
    pub(crate) stalls: u64,
}

/// One consumer, as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerView {
    /// Its key.
    pub(crate) key: ConsumerKey,
    /// FIFO or mailbox.
    pub(crate) mode: Mode,
    /// Its limit.
    pub(crate) limit: u32,
    /// Frames queued for it.
    pub(crate) queued: u32,
    /// Slots it holds.
    pub(crate) held: Vec<u32>,
    /// The oldest frame it holds (its sequence number), if any.
    pub(crate) oldest_held: Option<u64>,
    /// Frames it acquired.
    pub(crate) acquired: u64,
    /// Frames dropped for it (mailbox).
    pub(crate) dropped: u64,
}

/// A stream's booking; `W` is what a parked waiter is (a reply to send).
#[derive(Debug)]
pub(crate) struct Book<W> {
    slots: Vec<Slot>,
    consumers: BTreeMap<ConsumerKey, Consumer<W>>,
    producer_waiters: VecDeque<(u64, W)>,
    next_key: ConsumerKey,
    next_token: u64,
    seq: u64,
    clock: u64,
    ended: Option<String>,
    counts: Counts,
}

impl<W> Book<W> {
    /// `slots` free slots, no consumer.
    pub(crate) fn new(slots: u32) -> Self {
        Self {
            slots: (0..slots)
                .map(|i| Slot {
                    state: SlotState::Free,
                    queued: 0,
                    readers: BTreeSet::new(),
                    release: Vec::new(),
                    freed_at: u64::from(i),
                })
                .collect(),
            consumers: BTreeMap::new(),
            producer_waiters: VecDeque::new(),
            next_key: 1,
            next_token: 1,
            seq: 0,
            clock: u64::from(slots),
            ended: None,
            counts: Counts::default(),
        }
    }

    /// Why it ended, if it did.
    pub(crate) fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// Counters.
    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    /// Slots as introspection shows them: per slot, "free", "producing" or "presented", and
    /// the consumers holding it.
    pub(crate) fn slot_views(&self) -> Vec<(&'static str, Vec<ConsumerKey>)> {
        self.slots
            .iter()
            .map(|s| {
                let state = match s.state {
                    SlotState::Free => "free",
                    SlotState::Producing => "producing",
                    SlotState::Presented => "presented",
                };
                (state, s.readers.iter().copied().collect())
            })
            .collect()
    }

    /// The consumers, as introspection shows them.
    pub(crate) fn consumer_views(&self) -> Vec<ConsumerView> {
        self.consumers
            .iter()
            .map(|(key, c)| ConsumerView {
                key: *key,
                mode: c.mode,
                limit: c.limit,
                queued: u32::try_from(c.queue.len()).unwrap_or(u32::MAX),
                held: c.held.keys().copied().collect(),
                oldest_held: c.held.values().map(|f| f.seq).min(),
                acquired: c.acquired,
                dropped: c.dropped,
            })
            .collect()
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn slot(&self, slot: u32) -> Result<&Slot, Refused> {
        self.slots.get(slot as usize).ok_or_else(|| {
            Refused::State(format!(
                "slot {slot} does not exist (the stream has {})",
                self.slots.len()
            ))
        })
    }

    fn consumer(&mut self, key: ConsumerKey) -> Result<&mut Consumer<W>, Refused> {
        self.consumers
            .get_mut(&key)
            .ok_or_else(|| Refused::State("the consumer is detached".into()))
    }

    /// Attaches a consumer; it sees the frames presented from now on.
    pub(crate) fn attach(&mut self, mode: Mode, limit: u32) -> ConsumerKey {
        let key = self.next_key;
        self.next_key += 1;
        self.consumers.insert(
            key,
            Consumer {
                mode,
                limit,
                queue: VecDeque::new(),
                held: BTreeMap::new(),
                waiters: VecDeque::new(),
                last_release: 0,
                acquired: 0,
                dropped: 0,
            },
        );
        key
    }

    /// A free slot for the producer (the least recently freed), or `None` when none is free
    /// (then park with [`Book::park_producer`]).
    pub(crate) fn acquire_slot(&mut self) -> Result<Option<SlotGrant>, Refused> {
        if let Some(why) = &self.ended {
            return Err(Refused::Ended(why.clone()));
        }
        let free = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SlotState::Free)
            .min_by_key(|(_, s)| s.freed_at)
            .map(|(i, _)| i);
        Ok(free.map(|i| self.grant(i)))
    }

    fn grant(&mut self, i: usize) -> SlotGrant {
        let s = &mut self.slots[i];
        s.state = SlotState::Producing;
        SlotGrant {
            slot: i as u32,
            wait: std::mem::take(&mut s.release),
        }
    }

    /// Parks the producer until a slot frees up; returns the token that cancels it.
    pub(crate) fn park_producer(&mut self, w: W) -> u64 {
        let t = self.token();
        self.counts.stalls += 1;
        self.producer_waiters.push_back((t, w));
        t
    }

    /// Parks consumer `key` until a frame arrives; returns the token that cancels it.
    pub(crate) fn park_consumer(&mut self, key: ConsumerKey, w: W) -> Result<u64, Refused> {
        let t = self.token();
        self.consumer(key)?.waiters.push_back((t, w));
        Ok(t)
    }

    /// Takes back a parked waiter (its time ran out). `None`: it was served already.
    pub(crate) fn cancel(&mut self, token: u64) -> Option<W> {
        if let Some(i) = self.producer_waiters.iter().position(|(t, _)| *t == token) {
            return self.producer_waiters.remove(i).map(|(_, w)| w);
        }
        for c in self.consumers.values_mut() {
            if let Some(i) = c.waiters.iter().position(|(t, _)| *t == token) {
                return c.waiters.remove(i).map(|(_, w)| w);
            }
        }
        None
    }

    /// Undoes a slot grant that never reached the producer (its connection went while the
    /// grant was on its way): the slot is free again, with its release points, and served to
    /// the next waiter.
    pub(crate) fn return_slot(&mut self, grant: SlotGrant) -> Vec<Delivery<W>> {
        let mut out = Vec::new();
        if let Some(s) = self.slots.get_mut(grant.slot as usize) {
            if s.state == SlotState::Producing {
                s.state = SlotState::Free;
                s.release = grant.wait;
                self.settle(&mut out);
            }
        }
        out
    }

    /// Undoes a frame delivery that never reached consumer `key`: the frame goes back to the
    /// front of its queue (a FIFO consumer still gets every frame; a mailbox consumer's newer
    /// frame, if one came meanwhile, stays the only one and this one is dropped).
    pub(crate) fn return_frame(&mut self, key: ConsumerKey, frame: Frame) -> Vec<Delivery<W>> {
        let mut out = Vec::new();
        let Some(c) = self.consumers.get_mut(&key) else {
            return out;
        };
        if c.held.remove(&frame.slot).is_none() {
            return out;
        }
        c.acquired = c.acquired.saturating_sub(1);
        let requeue = c.mode == Mode::Fifo || c.queue.is_empty();
        if requeue {
            c.queue.push_front(frame.clone());
        } else {
            c.dropped += 1;
        }
        let s = &mut self.slots[frame.slot as usize];
        s.readers.remove(&key);
        if requeue {
            s.queued += 1;
        }
        self.settle(&mut out);
        out
    }

    /// Whether the producer may present into `slot` now.
    pub(crate) fn check_present(&self, slot: u32) -> Result<(), Refused> {
        if let Some(why) = &self.ended {
            return Err(Refused::Ended(why.clone()));
        }
        match self.slot(slot)?.state {
            SlotState::Producing => Ok(()),
            _ => Err(Refused::State(format!(
                "slot {slot} is not acquired by the producer (present it once, after AcquireSlot)"
            ))),
        }
    }

    /// Presents a frame in `slot` (checked with [`Book::check_present`]), ready at `ready`.
    /// Returns its sequence number and what to deliver.
    pub(crate) fn present(
        &mut self,
        slot: u32,
        ready: u64,
        meta: FrameMeta,
    ) -> Result<(u64, Vec<Delivery<W>>), Refused> {
        self.check_present(slot)?;
        self.seq += 1;
        self.counts.presented += 1;
        let frame = Frame {
            slot,
            seq: self.seq,
            ready,
            meta: Arc::new(meta),
        };
        self.slots[slot as usize].state = SlotState::Presented;
        let mut dropped_slots = Vec::new();
        for c in self.consumers.values_mut() {
            if c.mode == Mode::Mailbox {
                for old in c.queue.drain(..) {
                    c.dropped += 1;
                    dropped_slots.push(old.slot);
                }
            }
            c.queue.push_back(frame.clone());
            self.slots[slot as usize].queued += 1;
        }
        for s in dropped_slots {
            self.slots[s as usize].queued -= 1;
        }
        let mut out = Vec::new();
        self.settle(&mut out);
        Ok((frame.seq, out))
    }

    /// The next frame for consumer `key`, or `None` when none is queued (then park with
    /// [`Book::park_consumer`]).
    pub(crate) fn acquire_frame(&mut self, key: ConsumerKey) -> Result<Option<Frame>, Refused> {
        let ended = self.ended.clone();
        let c = self.consumer(key)?;
        if c.held.len() as u64 >= u64::from(c.limit) {
            return Err(Refused::State(format!(
                "the consumer holds its limit of {} frame(s): release one first",
                c.limit
            )));
        }
        match c.queue.pop_front() {
            Some(f) => {
                c.acquired += 1;
                c.held.insert(f.slot, f.clone());
                let s = &mut self.slots[f.slot as usize];
                s.queued -= 1;
                s.readers.insert(key);
                Ok(Some(f))
            }
            None => match ended {
                Some(why) => Err(Refused::Ended(why)),
                None => Ok(None),
            },
        }
    }

    /// Whether consumer `key` holds the frame in `slot`.
    pub(crate) fn check_release(&mut self, key: ConsumerKey, slot: u32) -> Result<(), Refused> {
        if self.consumer(key)?.held.contains_key(&slot) {
            Ok(())
        } else {
            Err(Refused::State(format!(
                "the consumer holds no frame in slot {slot}"
            )))
        }
    }

    /// The highest release value consumer `key` gave.
    pub(crate) fn last_release(&mut self, key: ConsumerKey) -> Result<u64, Refused> {
        Ok(self.consumer(key)?.last_release)
    }

    /// Consumer `key` is done with the frame in `slot` at release value `value` (0: no GPU
    /// point to wait for).
    pub(crate) fn release(
        &mut self,
        key: ConsumerKey,
        slot: u32,
        value: u64,
    ) -> Result<Vec<Delivery<W>>, Refused> {
        self.check_release(key, slot)?;
        let c = self.consumer(key)?;
        c.held.remove(&slot);
        c.last_release = c.last_release.max(value);
        let s = &mut self.slots[slot as usize];
        s.readers.remove(&key);
        if value > 0 {
            s.release.retain(|(k, _)| *k != key);
            s.release.push((key, value));
        }
        let mut out = Vec::new();
        self.settle(&mut out);
        Ok(out)
    }

    /// Detaches consumer `key`: its held frames are released at its last release value, its
    /// queue dropped, its waiters told `why`.
    pub(crate) fn detach(&mut self, key: ConsumerKey, why: &str) -> Vec<Delivery<W>> {
        let Some(c) = self.consumers.remove(&key) else {
            return Vec::new();
        };
        let mut out: Vec<Delivery<W>> = c
            .waiters
            .into_iter()
            .map(|(_, w)| (w, Outcome::Ended(why.to_owned())))
            .collect();
        for f in c.queue {
            self.slots[f.slot as usize].queued -= 1;
        }
        for slot in c.held.into_keys() {
            let s = &mut self.slots[slot as usize];
            s.readers.remove(&key);
            if c.last_release > 0 {
                s.release.retain(|(k, _)| *k != key);
                s.release.push((key, c.last_release));
            }
        }
        self.settle(&mut out);
        out
    }

    /// Ends the stream (its producer is gone) for `why`: the producer's waiters and every
    /// mailbox consumer are told at once (their queues dropped), FIFO consumers once they
    /// drained their queue. Slots the producer was writing go back to the pool.
    pub(crate) fn end(&mut self, why: &str) -> Vec<Delivery<W>> {
        if self.ended.is_some() {
            return Vec::new();
        }
        self.ended = Some(why.to_owned());
        let mut out: Vec<Delivery<W>> = self
            .producer_waiters
            .drain(..)
            .map(|(_, w)| (w, Outcome::Ended(why.to_owned())))
            .collect();
        for s in &mut self.slots {
            if s.state == SlotState::Producing {
                s.state = SlotState::Presented;
            }
        }
        for c in self.consumers.values_mut() {
            if c.mode == Mode::Mailbox {
                for f in c.queue.drain(..) {
                    self.slots[f.slot as usize].queued -= 1;
                }
            }
        }
        self.settle(&mut out);
        out
    }

    /// Frees the slots nobody needs, serves the producer's waiters with free slots and the
    /// consumers' waiters with queued frames (or the end).
    fn settle(&mut self, out: &mut Vec<Delivery<W>>) {
        for s in &mut self.slots {
            if s.state == SlotState::Presented && s.queued == 0 && s.readers.is_empty() {
                s.state = SlotState::Free;
                self.clock += 1;
                s.freed_at = self.clock;
            }
        }
        while !self.producer_waiters.is_empty() {
            match self.acquire_slot() {
                Ok(Some(g)) => {
                    if let Some((_, w)) = self.producer_waiters.pop_front() {
                        out.push((w, Outcome::Slot(g)));
                    }
                }
                _ => break,
            }
        }
        let keys: Vec<ConsumerKey> = self.consumers.keys().copied().collect();
        for key in keys {
            while self
                .consumers
                .get(&key)
                .is_some_and(|c| !c.waiters.is_empty())
            {
                match self.acquire_frame(key) {
                    Ok(Some(f)) => {
                        if let Some((_, w)) =
                            self.consumer(key).ok().and_then(|c| c.waiters.pop_front())
                        {
                            out.push((w, Outcome::Frame(f)));
                        }
                    }
                    Ok(None) => break,
                    Err(Refused::Ended(why)) => {
                        if let Ok(c) = self.consumer(key) {
                            out.extend(
                                c.waiters
                                    .drain(..)
                                    .map(|(_, w)| (w, Outcome::Ended(why.clone()))),
                            );
                        }
                        break;
                    }
                    // At its limit: its waiters wait for its own release.
                    Err(Refused::State(_)) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(n: u64) -> FrameMeta {
        FrameMeta {
            number: n,
            ..FrameMeta::default()
        }
    }

    #[test]
    fn fifo_backpressure_and_release_points() {
        let mut b: Book<u32> = Book::new(2);
        let c = b.attach(Mode::Fifo, 2);
        let g0 = b.acquire_slot().unwrap().unwrap();
        assert!(g0.wait.is_empty());
        b.present(g0.slot, 1, meta(1)).unwrap();
        let g1 = b.acquire_slot().unwrap().unwrap();
        b.present(g1.slot, 2, meta(2)).unwrap();
        // No slot free: the producer parks, and the consumer's release serves it.
        assert_eq!(b.acquire_slot().unwrap(), None);
        b.park_producer(7);
        let f = b.acquire_frame(c).unwrap().unwrap();
        assert_eq!((f.slot, f.meta.number), (g0.slot, 1));
        let out = b.release(c, f.slot, 10).unwrap();
        assert_eq!(
            out,
            vec![(
                7,
                Outcome::Slot(SlotGrant {
                    slot: g0.slot,
                    wait: vec![(c, 10)]
                })
            )]
        );
        assert_eq!(b.counts().stalls, 1);
    }

    #[test]
    fn mailbox_drops_and_never_blocks() {
        let mut b: Book<u32> = Book::new(2);
        let m = b.attach(Mode::Mailbox, 1);
        for n in 1..=10 {
            let g = b
                .acquire_slot()
                .unwrap()
                .expect("a mailbox never blocks the producer");
            b.present(g.slot, n, meta(n)).unwrap();
        }
        let f = b.acquire_frame(m).unwrap().unwrap();
        assert_eq!(f.meta.number, 10);
        assert_eq!(b.consumer_views()[0].dropped, 9);
        // At its limit.
        assert!(matches!(b.acquire_frame(m), Err(Refused::State(_))));
    }

    #[test]
    fn end_drains_fifo_and_stops_mailbox() {
        let mut b: Book<u32> = Book::new(3);
        let f = b.attach(Mode::Fifo, 3);
        let m = b.attach(Mode::Mailbox, 3);
        let g = b.acquire_slot().unwrap().unwrap();
        b.present(g.slot, 1, meta(1)).unwrap();
        b.end("producer gone");
        assert!(matches!(b.acquire_frame(m), Err(Refused::Ended(_))));
        assert_eq!(b.acquire_frame(f).unwrap().unwrap().meta.number, 1);
        assert!(matches!(b.acquire_frame(f), Err(Refused::Ended(_))));
        assert!(matches!(b.acquire_slot(), Err(Refused::Ended(_))));
    }

    /// The model: which slots each party holds or awaits, checked after every step.
    #[derive(Debug, Clone)]
    enum Step {
        Acquire,
        Present(usize),
        Attach(bool, u32),
        Detach(usize),
        Take(usize),
        Release(usize, usize),
        End,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Acquire),
            3 => any::<usize>().prop_map(Step::Present),
            1 => (any::<bool>(), 1u32..4).prop_map(|(m, l)| Step::Attach(m, l)),
            1 => any::<usize>().prop_map(Step::Detach),
            4 => any::<usize>().prop_map(Step::Take),
            4 => (any::<usize>(), any::<usize>()).prop_map(|(c, s)| Step::Release(c, s)),
            1 => Just(Step::End),
        ]
    }

    proptest! {
        #[test]
        fn slots_are_never_shared_or_lost(slots in 2u32..6, steps in proptest::collection::vec(step(), 1..120)) {
            let mut b: Book<u32> = Book::new(slots);
            let mut producing: Vec<u32> = Vec::new();
            let mut consumers: Vec<ConsumerKey> = Vec::new();
            // consumer -> (slot, seq) held, in the model
            let mut held: BTreeMap<ConsumerKey, Vec<(u32, u64)>> = BTreeMap::new();
            let mut last_seq: BTreeMap<ConsumerKey, u64> = BTreeMap::new();
            let mut ready = 0;
            for s in steps {
                match s {
                    Step::Acquire => {
                        let parked = b.producer_waiters.len();
                        match b.acquire_slot() {
                            Ok(Some(g)) => {
                                prop_assert_eq!(parked, 0);
                                // Nobody holds it or awaits its frame.
                                for h in held.values() {
                                    prop_assert!(h.iter().all(|(s, _)| *s != g.slot));
                                }
                                prop_assert!(!producing.contains(&g.slot));
                                producing.push(g.slot);
                            }
                            Ok(None) => {}
                            Err(_) => prop_assert!(b.ended().is_some()),
                        }
                    }
                    Step::Present(i) if !producing.is_empty() => {
                        let slot = producing.remove(i % producing.len());
                        ready += 1;
                        b.present(slot, ready, meta(ready)).unwrap();
                    }
                    Step::Present(_) => {
                        prop_assert!(b.present(0, ready + 1, meta(0)).is_err());
                    }
                    Step::Attach(fifo, limit) => {
                        let k = b.attach(if fifo { Mode::Fifo } else { Mode::Mailbox }, limit);
                        consumers.push(k);
                        held.insert(k, Vec::new());
                    }
                    Step::Detach(i) if !consumers.is_empty() => {
                        let k = consumers.remove(i % consumers.len());
                        b.detach(k, "detached");
                        held.remove(&k);
                    }
                    Step::Take(i) if !consumers.is_empty() => {
                        let k = consumers[i % consumers.len()];
                        if let Ok(Some(f)) = b.acquire_frame(k) {
                            prop_assert!(!producing.contains(&f.slot));
                            let last = last_seq.entry(k).or_insert(0);
                            prop_assert!(f.seq > *last, "frames in order");
                            *last = f.seq;
                            let h = held.get_mut(&k).unwrap();
                            prop_assert!(h.iter().all(|(s, _)| *s != f.slot));
                            h.push((f.slot, f.seq));
                        }
                    }
                    Step::Release(i, j) if !consumers.is_empty() => {
                        let k = consumers[i % consumers.len()];
                        let h = held.get_mut(&k).unwrap();
                        if h.is_empty() {
                            prop_assert!(b.release(k, 0, 1).is_err());
                        } else {
                            let (slot, _) = h.remove(j % h.len());
                            b.release(k, slot, 1).unwrap();
                        }
                    }
                    Step::End => {
                        b.end("ended");
                        producing.clear();
                    }
                    _ => {}
                }
                // No slot is lost: every slot is free, being produced, queued or held.
                for (i, s) in b.slots.iter().enumerate() {
                    let i = i as u32;
                    let holders = held.values().filter(|h| h.iter().any(|(x, _)| *x == i)).count();
                    prop_assert_eq!(s.readers.len(), holders);
                    match s.state {
                        SlotState::Free => prop_assert!(holders == 0 && s.queued == 0),
                        SlotState::Producing => prop_assert!(producing.contains(&i)),
                        SlotState::Presented => prop_assert!(s.queued > 0 || holders > 0),
                    }
                }
            }
        }
    }
}
