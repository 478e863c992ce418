//! The design's request/response patterns as small sans-IO building blocks.
//!
//! - [`RequestReply`]: a correlation table — register a request with a deadline, match the
//!   reply by its [`CorrelationId`], expire the ones that time out.
//! - [`Outbox`]: fire-and-forget — a bounded queue that drops (and counts) on overflow rather
//!   than blocking the producer.
//! - [`StreamFlow`]: streaming with credit-based flow control — the consumer grants credit,
//!   the producer is told to back off when the buffer is full.
//! - [`FanOut`]: scatter/gather — collect replies from N destinations until `All`, a
//!   `Quorum(k)` or the `First` success, a failure that makes success impossible, or the
//!   deadline.

use std::collections::{BTreeSet, HashMap, VecDeque};

use ferry_proto::Instant;

use crate::deadline::Deadline;
use crate::trace::{CorrelationId, CorrelationIds};

/// Why a request could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// The table holds `capacity` pending requests.
    Full,
    /// The id is already pending.
    DuplicateId,
}

/// Counters of a [`RequestReply`] table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyMetrics {
    /// Replies matched to a pending request.
    pub completed: u64,
    /// Requests expired by their deadline.
    pub timed_out: u64,
    /// Replies whose id was unknown (late after a timeout, duplicated or bogus).
    pub unmatched: u64,
}

/// A correlation table for request-reply over a multiplexed connection.
///
/// `T` is the caller's context for the request (who to answer, a start time...).
/// Polling order: `register`/`complete` as traffic flows; arm a timer at `poll_timeout`; on
/// expiry call `handle_timeout` and drain `poll_expired`.
#[derive(Debug)]
pub struct RequestReply<T> {
    pending: HashMap<CorrelationId, (Deadline, T)>,
    timers: BTreeSet<(Deadline, CorrelationId)>,
    expired: VecDeque<(CorrelationId, T)>,
    ids: CorrelationIds,
    capacity: usize,
    metrics: ReplyMetrics,
}

impl<T> RequestReply<T> {
    /// A table of at most `capacity` pending requests, generating ids with `ids`.
    pub fn new(capacity: usize, ids: CorrelationIds) -> Self {
        RequestReply {
            pending: HashMap::new(),
            timers: BTreeSet::new(),
            expired: VecDeque::new(),
            ids,
            capacity,
            metrics: ReplyMetrics::default(),
        }
    }

    /// Registers a request with a fresh id (put the id in the outgoing message).
    pub fn register(&mut self, deadline: Deadline, ctx: T) -> Result<CorrelationId, RegisterError> {
        let mut id = self.ids.next_id();
        while self.pending.contains_key(&id) {
            id = self.ids.next_id();
        }
        self.register_with_id(id, deadline, ctx)?;
        Ok(id)
    }

    /// Registers a request under an id the protocol chose (e.g. an HTTP/2 stream id).
    pub fn register_with_id(
        &mut self,
        id: CorrelationId,
        deadline: Deadline,
        ctx: T,
    ) -> Result<(), RegisterError> {
        if self.pending.len() >= self.capacity {
            return Err(RegisterError::Full);
        }
        if self.pending.contains_key(&id) {
            return Err(RegisterError::DuplicateId);
        }
        self.pending.insert(id, (deadline, ctx));
        if !deadline.is_none() {
            self.timers.insert((deadline, id));
        }
        Ok(())
    }

    /// A reply with `id` arrived: returns the request's context, or `None` if unknown.
    pub fn complete(&mut self, id: CorrelationId) -> Option<T> {
        match self.remove(id) {
            Some(ctx) => {
                self.metrics.completed += 1;
                Some(ctx)
            }
            None => {
                self.metrics.unmatched += 1;
                None
            }
        }
    }

    /// Forgets a request without a reply (caller cancelled it).
    pub fn cancel(&mut self, id: CorrelationId) -> Option<T> {
        self.remove(id)
    }

    fn remove(&mut self, id: CorrelationId) -> Option<T> {
        let (deadline, ctx) = self.pending.remove(&id)?;
        self.timers.remove(&(deadline, id));
        Some(ctx)
    }

    /// The earliest pending deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(d, _)| d.instant())
    }

    /// Expires every request whose deadline is `<= now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(d, id)) = self.timers.first() {
            if !d.is_expired(now) {
                break;
            }
            self.timers.pop_first();
            if let Some((_, ctx)) = self.pending.remove(&id) {
                self.metrics.timed_out += 1;
                self.expired.push_back((id, ctx));
            }
        }
    }

    /// The next expired request (answer it with a timeout error).
    #[must_use]
    pub fn poll_expired(&mut self) -> Option<(CorrelationId, T)> {
        self.expired.pop_front()
    }

    /// Requests pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Counters.
    pub fn metrics(&self) -> ReplyMetrics {
        self.metrics
    }
}

/// What [`Outbox`] does when full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Refuse the new message (keeps the oldest).
    DropNewest,
    /// Evict the oldest queued message to make room (keeps the freshest, e.g. metrics).
    DropOldest,
}

/// A message was dropped by [`Outbox::send`]; carries it back when it was the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dropped<M> {
    /// The new message was refused.
    Refused(M),
    /// The new message was queued and this old one evicted.
    Evicted(M),
}

/// Fire-and-forget: a bounded outbox that never blocks the producer.
#[derive(Clone, Debug)]
pub struct Outbox<M> {
    queue: VecDeque<M>,
    capacity: usize,
    overflow: Overflow,
    dropped: u64,
}

impl<M> Outbox<M> {
    /// An outbox of `capacity` (at least 1) messages.
    pub fn new(capacity: usize, overflow: Overflow) -> Self {
        Outbox {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            overflow,
            dropped: 0,
        }
    }

    /// Queues `msg`; on overflow one message is dropped per the policy.
    pub fn send(&mut self, msg: M) -> Result<(), Dropped<M>> {
        if self.queue.len() < self.capacity {
            self.queue.push_back(msg);
            return Ok(());
        }
        self.dropped += 1;
        match self.overflow {
            Overflow::DropNewest => Err(Dropped::Refused(msg)),
            Overflow::DropOldest => {
                let old = self.queue.pop_front();
                self.queue.push_back(msg);
                match old {
                    Some(old) => Err(Dropped::Evicted(old)),
                    None => Ok(()),
                }
            }
        }
    }

    /// The next message to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<M> {
        self.queue.pop_front()
    }

    /// Puts back a message whose write failed, at the front (for at-least-once delivery).
    pub fn requeue(&mut self, msg: M) {
        self.queue.push_front(msg);
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Why a stream refused an item.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError<T> {
    /// Buffer full: retry after the consumer drained some.
    Backpressure(T),
    /// The stream was finished.
    Finished(T),
}

/// What the consumer gets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamItem<T> {
    /// One item.
    Item(T),
    /// The producer finished and everything was delivered.
    End,
}

/// One direction of a stream with credit-based flow control (like HTTP/2 windows, counted in
/// items): the consumer [`grant`](StreamFlow::grant)s credit, each delivered item uses one,
/// and the producer gets [`PushError::Backpressure`] once `max_buffered` items wait.
#[derive(Clone, Debug)]
pub struct StreamFlow<T> {
    buffer: VecDeque<T>,
    credit: u64,
    max_buffered: usize,
    finished: bool,
    end_delivered: bool,
}

impl<T> StreamFlow<T> {
    /// A stream with `initial_credit` and a buffer of `max_buffered` (at least 1) items.
    pub fn new(initial_credit: u64, max_buffered: usize) -> Self {
        StreamFlow {
            buffer: VecDeque::new(),
            credit: initial_credit,
            max_buffered: max_buffered.max(1),
            finished: false,
            end_delivered: false,
        }
    }

    /// Producer side: offers one item.
    pub fn push(&mut self, item: T) -> Result<(), PushError<T>> {
        if self.finished {
            return Err(PushError::Finished(item));
        }
        if self.buffer.len() >= self.max_buffered {
            return Err(PushError::Backpressure(item));
        }
        self.buffer.push_back(item);
        Ok(())
    }

    /// Producer side: no more items.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether the producer may push now.
    pub fn is_writable(&self) -> bool {
        !self.finished && self.buffer.len() < self.max_buffered
    }

    /// Consumer side: allows `n` more items.
    pub fn grant(&mut self, n: u64) {
        self.credit = self.credit.saturating_add(n);
    }

    /// Consumer side: the next item if credit allows, then `End` once.
    #[must_use]
    pub fn poll_item(&mut self) -> Option<StreamItem<T>> {
        if self.credit > 0 {
            if let Some(item) = self.buffer.pop_front() {
                self.credit -= 1;
                return Some(StreamItem::Item(item));
            }
        }
        if self.finished && self.buffer.is_empty() && !self.end_delivered {
            self.end_delivered = true;
            return Some(StreamItem::End);
        }
        None
    }

    /// Items buffered.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

/// How many successful replies a [`FanOut`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Gather {
    /// Every destination must succeed.
    All,
    /// At least `k` must succeed (with fewer than `k` destinations the fan-out fails at
    /// once; `Quorum(0)` is done at once).
    Quorum(usize),
    /// The first success wins (with no destination the fan-out fails at once).
    First,
}

/// The result of a [`FanOut`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FanOutOutcome<T, E> {
    /// Enough successes. `cancel` lists destinations still outstanding (cancel them).
    Done {
        /// Successful replies, in arrival order, with their destination index.
        replies: Vec<(usize, T)>,
        /// Destinations still in flight.
        cancel: Vec<usize>,
    },
    /// Too many failures for the goal to be reachable.
    Failed {
        /// Successful replies so far.
        replies: Vec<(usize, T)>,
        /// Failures, in arrival order.
        errors: Vec<(usize, E)>,
        /// Destinations still in flight.
        cancel: Vec<usize>,
    },
    /// The deadline passed first.
    TimedOut {
        /// Successful replies so far (partial results).
        replies: Vec<(usize, T)>,
        /// Destinations that had not answered.
        missing: Vec<usize>,
    },
}

/// Scatter/gather over `n` destinations with a goal and a deadline.
#[derive(Clone, Debug)]
pub struct FanOut<T, E> {
    need: usize,
    deadline: Deadline,
    answered: Vec<bool>,
    replies: Vec<(usize, T)>,
    errors: Vec<(usize, E)>,
    outcome: Option<FanOutOutcome<T, E>>,
    decided: bool,
}

impl<T, E> FanOut<T, E> {
    /// Starts gathering from destinations `0..n` (send to all of them now).
    pub fn new(n: usize, gather: Gather, deadline: Deadline) -> Self {
        // A goal beyond `n` is unreachable and fails at once; it is not lowered to `n`
        // (a write quorum of 3 must not pass on 2 replicas).
        let need = match gather {
            Gather::All => n,
            Gather::Quorum(k) => k,
            Gather::First => 1,
        };
        let mut f = FanOut {
            need,
            deadline,
            answered: vec![false; n],
            replies: Vec::new(),
            errors: Vec::new(),
            outcome: None,
            decided: false,
        };
        f.evaluate();
        f
    }

    fn outstanding(&self) -> Vec<usize> {
        (0..self.answered.len())
            .filter(|&i| !self.answered[i])
            .collect()
    }

    fn evaluate(&mut self) {
        if self.decided {
            return;
        }
        let n = self.answered.len();
        if self.replies.len() >= self.need {
            self.decided = true;
            self.outcome = Some(FanOutOutcome::Done {
                cancel: self.outstanding(),
                replies: core::mem::take(&mut self.replies),
            });
        } else if n - self.errors.len() < self.need {
            self.decided = true;
            self.outcome = Some(FanOutOutcome::Failed {
                cancel: self.outstanding(),
                replies: core::mem::take(&mut self.replies),
                errors: core::mem::take(&mut self.errors),
            });
        }
    }

    /// Destination `index` answered. Duplicate or out-of-range answers are ignored.
    pub fn on_reply(&mut self, index: usize, reply: Result<T, E>) {
        if self.decided || self.answered.get(index) != Some(&false) {
            return;
        }
        self.answered[index] = true;
        match reply {
            Ok(v) => self.replies.push((index, v)),
            Err(e) => self.errors.push((index, e)),
        }
        self.evaluate();
    }

    /// The deadline, while undecided.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.decided && !self.deadline.is_none()).then(|| self.deadline.instant())
    }

    /// Times out if the deadline passed (early calls are no-ops).
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.decided && self.deadline.is_expired(now) {
            self.decided = true;
            self.outcome = Some(FanOutOutcome::TimedOut {
                missing: self.outstanding(),
                replies: core::mem::take(&mut self.replies),
            });
        }
    }

    /// The outcome, once (then `None`).
    #[must_use]
    pub fn poll_outcome(&mut self) -> Option<FanOutOutcome<T, E>> {
        self.outcome.take()
    }

    /// Whether the fan-out is decided.
    pub fn is_decided(&self) -> bool {
        self.decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use core::time::Duration;
    use proptest::prelude::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    #[test]
    fn request_reply_matches_and_expires() {
        let mut t = RequestReply::new(2, CorrelationIds::new(&mut Rng::new(1)));
        let a = t.register(Deadline::at(ms(100)), "a").unwrap();
        let b = t.register(Deadline::at(ms(50)), "b").unwrap();
        assert_eq!(t.register(Deadline::NONE, "c"), Err(RegisterError::Full));
        assert_eq!(t.poll_timeout(), Some(ms(50)));
        t.handle_timeout(ms(49));
        assert_eq!(t.poll_expired(), None);
        t.handle_timeout(ms(50));
        assert_eq!(t.poll_expired(), Some((b, "b")));
        assert_eq!(t.complete(b), None, "late reply");
        assert_eq!(t.complete(a), Some("a"));
        assert!(t.is_empty());
        assert_eq!(t.poll_timeout(), None);
        let m = t.metrics();
        assert_eq!((m.completed, m.timed_out, m.unmatched), (1, 1, 1));
        let id = CorrelationId::new(7).unwrap();
        t.register_with_id(id, Deadline::NONE, "x").unwrap();
        assert_eq!(
            t.register_with_id(id, Deadline::NONE, "y"),
            Err(RegisterError::DuplicateId)
        );
        assert_eq!(t.cancel(id), Some("x"));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn outbox_overflow_policies() {
        let mut o = Outbox::new(2, Overflow::DropNewest);
        o.send(1).unwrap();
        o.send(2).unwrap();
        assert_eq!(o.send(3), Err(Dropped::Refused(3)));
        let mut o2 = Outbox::new(2, Overflow::DropOldest);
        o2.send(1).unwrap();
        o2.send(2).unwrap();
        assert_eq!(o2.send(3), Err(Dropped::Evicted(1)));
        assert_eq!(o2.poll_transmit(), Some(2));
        o2.requeue(2);
        assert_eq!(o2.len(), 2);
        assert_eq!(o2.dropped(), 1);
        assert_eq!(o.poll_transmit(), Some(1));
        assert!(!o.is_empty());
    }

    #[test]
    fn stream_credit_and_backpressure() {
        let mut s = StreamFlow::new(1, 2);
        s.push('a').unwrap();
        s.push('b').unwrap();
        assert!(!s.is_writable());
        assert_eq!(s.push('c'), Err(PushError::Backpressure('c')));
        assert_eq!(s.poll_item(), Some(StreamItem::Item('a')));
        assert_eq!(s.poll_item(), None, "out of credit");
        s.grant(5);
        s.finish();
        assert_eq!(s.push('d'), Err(PushError::Finished('d')));
        assert_eq!(s.poll_item(), Some(StreamItem::Item('b')));
        assert_eq!(s.poll_item(), Some(StreamItem::End));
        assert_eq!(s.poll_item(), None);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn fan_out_quorum_first_all_and_timeout() {
        let mut f: FanOut<u32, &str> = FanOut::new(3, Gather::Quorum(2), Deadline::at(ms(100)));
        f.on_reply(1, Ok(10));
        f.on_reply(1, Ok(11)); // duplicate ignored
        assert!(!f.is_decided());
        f.on_reply(2, Ok(20));
        assert_eq!(
            f.poll_outcome(),
            Some(FanOutOutcome::Done {
                replies: vec![(1, 10), (2, 20)],
                cancel: vec![0]
            })
        );
        assert_eq!(f.poll_timeout(), None);

        let mut f: FanOut<u32, &str> = FanOut::new(3, Gather::All, Deadline::at(ms(100)));
        f.on_reply(0, Ok(1));
        f.on_reply(2, Err("boom"));
        assert_eq!(
            f.poll_outcome(),
            Some(FanOutOutcome::Failed {
                replies: vec![(0, 1)],
                errors: vec![(2, "boom")],
                cancel: vec![1]
            })
        );

        let mut f: FanOut<u32, &str> = FanOut::new(3, Gather::First, Deadline::at(ms(100)));
        f.on_reply(0, Err("x"));
        f.on_reply(7, Ok(1)); // out of range
        assert_eq!(f.poll_timeout(), Some(ms(100)));
        f.handle_timeout(ms(99));
        assert!(!f.is_decided());
        f.handle_timeout(ms(100));
        assert_eq!(
            f.poll_outcome(),
            Some(FanOutOutcome::TimedOut {
                replies: vec![],
                missing: vec![1, 2]
            })
        );
        assert_eq!(f.poll_outcome(), None);

        // An unreachable goal fails at once instead of being lowered to what is there.
        let mut short: FanOut<u32, ()> = FanOut::new(2, Gather::Quorum(3), Deadline::NONE);
        assert!(matches!(
            short.poll_outcome(),
            Some(FanOutOutcome::Failed { ref cancel, .. }) if cancel == &[0, 1]
        ));
        let mut none: FanOut<u32, ()> = FanOut::new(0, Gather::First, Deadline::NONE);
        assert!(matches!(
            none.poll_outcome(),
            Some(FanOutOutcome::Failed { .. })
        ));
        let mut empty: FanOut<u32, ()> = FanOut::new(0, Gather::All, Deadline::NONE);
        assert!(matches!(
            empty.poll_outcome(),
            Some(FanOutOutcome::Done { .. })
        ));
    }

    proptest! {
        #[test]
        fn request_reply_every_request_resolves_once(
            ops in proptest::collection::vec((0u8..3, 0usize..20, 1u64..100), 1..200))
        {
            let mut t = RequestReply::new(16, CorrelationIds::new(&mut Rng::new(3)));
            let mut ids = Vec::new();
            let mut resolved = 0u64;
            let mut registered = 0u64;
            let mut now = 0;
            for (op, which, dt) in ops {
                match op {
                    0 => if let Ok(id) = t.register(Deadline::after(ms(now), Duration::from_millis(dt)), ()) {
                        ids.push(id);
                        registered += 1;
                    },
                    1 => if let Some(id) = ids.get(which) {
                        resolved += u64::from(t.complete(*id).is_some());
                    },
                    _ => {
                        now += dt;
                        t.handle_timeout(ms(now));
                        while t.poll_expired().is_some() {
                            resolved += 1;
                        }
                    }
                }
                prop_assert_eq!(registered, resolved + t.len() as u64);
            }
        }

        #[test]
        fn fan_out_decides_exactly_once(n in 0usize..8, k in 0usize..10,
                                        replies in proptest::collection::vec((0usize..10, any::<bool>()), 0..30)) {
            let mut f: FanOut<(), ()> = FanOut::new(n, Gather::Quorum(k), Deadline::at(ms(10)));
            let mut outcomes = usize::from(f.poll_outcome().is_some());
            for (i, ok) in replies {
                f.on_reply(i, if ok { Ok(()) } else { Err(()) });
                outcomes += usize::from(f.poll_outcome().is_some());
            }
            f.handle_timeout(ms(10));
            outcomes += usize::from(f.poll_outcome().is_some());
            prop_assert_eq!(outcomes, 1);
        }
    }
}
