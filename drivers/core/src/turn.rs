//! Loop-turn bookkeeping shared by the kernel-socket drivers (`ferry-epoll`, `ferry-uring`):
//! the parts of an event loop turn that do not depend on how bytes move. Each driver keeps
//! its connections in a [`Slab`] of its own connection type `C`; `parts` hands out a
//! connection's [`Session`] and its "already in `touched`" flag, as
//! [`outbound::deliver_mail`] does.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ferry_proto::Instant;
use slab::Slab;

use crate::driven::Session;
use crate::listen::Listener;
use crate::metrics::add;
use crate::outbound::{self, ConnectRequest};
use crate::runtime::{Launch, ServerHandle, WorkerCtx};
use crate::select::DriverKind;
use crate::timer::TimerWheel;

/// A connection's session and its queued flag (`true` once it is in `touched`).
pub type Parts<S, C> = fn(&mut C) -> (&mut S, &mut bool);

/// Queue connection `t` for this turn's drive round, once.
#[inline]
pub fn touch(queued: &mut bool, t: usize, touched: &mut Vec<usize>) {
    if !*queued {
        *queued = true;
        touched.push(t);
    }
}

/// Collect the mail from outside the worker (application workers' replies, other workers'
/// messages) through `scratch` and apply it; mail for a closed connection goes to
/// [`Session::drop_mail`].
#[allow(clippy::too_many_arguments)]
pub fn apply_outside_mail<S: Session, C>(
    scratch: &mut Vec<(usize, S::Mail)>,
    conns: &mut Slab<C>,
    parts: Parts<S, C>,
    ctx: &mut WorkerCtx,
    shared: &S::Shared,
    now: Instant,
    touched: &mut Vec<usize>,
) {
    S::take_mail(ctx, shared, scratch);
    if scratch.is_empty() {
        return;
    }
    for (t, m) in scratch.drain(..) {
        if let Some(c) = conns.get_mut(t) {
            let (session, queued) = parts(c);
            session.apply_mail(ctx, m, now);
            touch(queued, t, touched);
        } else {
            S::drop_mail(ctx, shared, m);
        }
    }
}

/// The work of a loop turn between collecting events and driving connections: apply the
/// mail from outside the worker, run the session type's periodic [`Session::tick`] when due
/// (`tick_at` is its next time), and, while `any_pending`, retry what full application
/// channels refused (`any_pending` then says whether some still waits).
#[allow(clippy::too_many_arguments)]
pub fn between_events<S: Session, C>(
    scratch: &mut Vec<(usize, S::Mail)>,
    conns: &mut Slab<C>,
    parts: Parts<S, C>,
    ctx: &mut WorkerCtx,
    shared: &S::Shared,
    now: Instant,
    touched: &mut Vec<usize>,
    tick_at: &mut Option<Instant>,
    any_pending: &mut bool,
) {
    apply_outside_mail(scratch, conns, parts, ctx, shared, now, touched);
    if tick_at.is_some_and(|t| now >= t) {
        *tick_at = S::tick(ctx, shared, now);
    }
    if *any_pending {
        *any_pending = retry_pending(conns, parts, ctx, now, touched);
    }
}

/// Retry the work application channels refused, for every connection that has some (and
/// queue those connections). Returns whether some is still pending.
pub fn retry_pending<S: Session, C>(
    conns: &mut Slab<C>,
    parts: Parts<S, C>,
    ctx: &mut WorkerCtx,
    now: Instant,
    touched: &mut Vec<usize>,
) -> bool {
    let mut still = false;
    for (t, c) in conns.iter_mut() {
        let (session, queued) = parts(c);
        if session.has_pending() {
            if !session.retry_pending(ctx, now) {
                still = true;
            }
            touch(queued, t, touched);
        }
    }
    still
}

/// Graceful shutdown reached the worker: tell every session and queue it.
pub fn begin_shutdown<S: Session, C>(
    conns: &mut Slab<C>,
    parts: Parts<S, C>,
    ctx: &mut WorkerCtx,
    now: Instant,
    touched: &mut Vec<usize>,
) {
    for (t, c) in conns.iter_mut() {
        let (session, queued) = parts(c);
        session.begin_shutdown(ctx, now);
        touch(queued, t, touched);
    }
}

/// How long the next wait for events may block: until the earliest of the timer wheel and
/// the other `deadlines`, at most 1 ms while work waits for a full application channel, and
/// not at all while `busy` (connections queued or local work left over).
pub fn wait_timeout(
    now: Instant,
    next_timer: Option<Instant>,
    deadlines: &[Option<Instant>],
    any_pending: bool,
    busy: bool,
) -> Option<Duration> {
    if busy {
        return Some(Duration::ZERO);
    }
    let mut deadline = next_timer;
    for d in deadlines.iter().flatten() {
        deadline = Some(deadline.map_or(*d, |x| x.min(*d)));
    }
    let timeout = deadline.map(|d| d.saturating_duration_since(now));
    if any_pending {
        // Application channel full: look again soon (bounded retry, not a spin).
        let ms = Duration::from_millis(1);
        return Some(timeout.map_or(ms, |t| t.min(ms)));
    }
    timeout
}

/// An accept failed with `e` (EMFILE/ENFILE/ENOBUFS/ENOMEM...): count it, warn on the first
/// one, and return until when accepting pauses (a timer, never a busy loop).
pub fn accept_failed(ctx: &WorkerCtx, e: &io::Error, now: Instant) -> Instant {
    add(&ctx.metrics.accept_errors, 1);
    if ctx.metrics.accept_errors.load(Ordering::Relaxed) == 1 {
        tracing::warn!("worker {}: accept failed ({e}); pausing accepts", ctx.index);
    }
    now + ctx.options.accept_backoff
}

/// Start one thread per prepared worker, named `{prefix}-{index}`, pinned, running `run`
/// with the worker's listener; a failing worker logs one error line.
pub fn spawn_workers<Sh: Send + Sync + 'static>(
    launch: Launch,
    kind: DriverKind,
    prefix: &str,
    shared: Arc<Sh>,
    run: fn(WorkerCtx, Option<Listener>, Arc<Sh>) -> io::Result<()>,
) -> io::Result<ServerHandle> {
    let Launch {
        local_addr,
        listeners,
        workers,
        metrics,
        shutdown,
        app,
    } = launch;
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    // Workers with no listener (`Launch::outbound_only`) only open outbound connections.
    let listeners = listeners
        .into_iter()
        .map(Some)
        .chain(std::iter::repeat_with(|| None));
    for (ctx, l) in workers.into_iter().zip(listeners) {
        let name = format!("{prefix}-{}", ctx.index);
        let shared = shared.clone();
        threads.push(std::thread::Builder::new().name(name).spawn(move || {
            ctx.pin();
            let index = ctx.index;
            if let Err(e) = run(ctx, l, shared) {
                tracing::error!("{kind} worker {index} failed: {e}");
            }
        })?);
    }
    Ok(ServerHandle::new(
        kind, local_addr, metrics, shutdown, threads, app,
    ))
}

/// The next connection generation after `gen`, masked to `mask` (io_uring keeps 24 bits in
/// its user data); called as `next_gen(&mut turn.gen, mask)` while other fields are borrowed.
pub fn next_gen(gen: &mut u32, mask: u32) -> u32 {
    *gen = gen.wrapping_add(1) & mask;
    *gen
}

/// Arm connection `t`'s timer in `wheel` for `next` unless an earlier deadline is armed
/// already (`armed` is the connection's record of it; a later one fires early and re-arms).
pub fn arm(wheel: &mut TimerWheel, t: usize, armed: &mut Option<Instant>, next: Option<Instant>) {
    if let Some(d) = next {
        if armed.is_none_or(|a| d < a) {
            wheel.insert(t, d);
            *armed = Some(d);
        }
    }
}

/// Local mails delivered per round of [`Turn::deliver_local`].
const MAIL_BATCH: usize = 1024;

/// One I/O worker's loop bookkeeping, whatever moves the bytes: the connections queued for
/// this turn's drive rounds, the timer wheel, the mail scratch space, the protocol's tick and
/// whether work waits for full application channels.
pub struct Turn<S: Session> {
    /// Connections to drive this round (each once: see [`touch`]).
    pub touched: Vec<usize>,
    /// Connection deadlines (from `Session::poll_timeout`, or a lingering close).
    pub wheel: TimerWheel,
    /// Scratch for the wheel's expired tokens.
    pub expired: Vec<usize>,
    /// Scratch for mail.
    pub mail: Vec<(usize, S::Mail)>,
    /// When [`Session::tick`] runs next.
    pub tick_at: Option<Instant>,
    /// Some session waits for room in an application channel.
    pub any_pending: bool,
    /// Scratch for outbound connects queued by sessions.
    pub connects: Vec<ConnectRequest>,
    /// The generation of the last connection opened (tokens are reused; generations tell
    /// stale completions and mail apart).
    pub gen: u32,
}

impl<S: Session> Turn<S> {
    /// Fresh bookkeeping for the worker running on this thread (installs its outbound queue).
    pub fn new(ctx: &mut WorkerCtx, shared: &S::Shared) -> Turn<S> {
        let now = ctx.clock.now();
        outbound::install::<S::Mail>();
        Turn {
            touched: Vec::new(),
            wheel: TimerWheel::new(now, Duration::from_millis(1)),
            expired: Vec::new(),
            mail: Vec::new(),
            tick_at: S::tick(ctx, shared, now),
            any_pending: false,
            connects: Vec::new(),
            gen: 0,
        }
    }

    /// How long the next wait may block (see [`wait_timeout`]), also waking for the tick and
    /// the driver's own `deadlines`.
    pub fn wait_timeout(&self, now: Instant, deadlines: &[Option<Instant>]) -> Option<Duration> {
        let mut next = self.wheel.next_expiration();
        for d in deadlines.iter().chain([&self.tick_at]).flatten() {
            next = Some(next.map_or(*d, |x| x.min(*d)));
        }
        let busy = !self.touched.is_empty() || outbound::has_work();
        wait_timeout(now, next, &[], self.any_pending, busy)
    }

    /// Between collecting events and driving connections: see [`between_events`].
    pub fn between_events<C>(
        &mut self,
        conns: &mut Slab<C>,
        parts: Parts<S, C>,
        ctx: &mut WorkerCtx,
        shared: &S::Shared,
        now: Instant,
    ) {
        between_events(
            &mut self.mail,
            conns,
            parts,
            ctx,
            shared,
            now,
            &mut self.touched,
            &mut self.tick_at,
            &mut self.any_pending,
        );
    }

    /// Advance the timer wheel: `fire` runs for every live connection whose deadline passed
    /// (the driver clears its armed mark and tells the session), which is then queued.
    pub fn expire<C>(
        &mut self,
        conns: &mut Slab<C>,
        parts: Parts<S, C>,
        ctx: &mut WorkerCtx,
        now: Instant,
        mut fire: impl FnMut(&mut C, &mut WorkerCtx),
    ) {
        self.wheel.advance(now, &mut self.expired);
        for t in self.expired.drain(..) {
            if let Some(c) = conns.get_mut(t) {
                fire(c, ctx);
                touch(parts(c).1, t, &mut self.touched);
            }
        }
    }

    /// Graceful shutdown reached the worker: see [`begin_shutdown`].
    pub fn begin_shutdown<C>(
        &mut self,
        conns: &mut Slab<C>,
        parts: Parts<S, C>,
        ctx: &mut WorkerCtx,
        now: Instant,
    ) {
        begin_shutdown(conns, parts, ctx, now, &mut self.touched);
    }

    /// Deliver a batch of the mail connections of this worker posted to each other
    /// ([`WorkerCtx::post`]) within this turn.
    pub fn deliver_local<C>(
        &mut self,
        conns: &mut Slab<C>,
        parts: Parts<S, C>,
        ctx: &mut WorkerCtx,
        shared: &S::Shared,
        now: Instant,
    ) {
        outbound::deliver_mail::<S, C>(
            &mut self.mail,
            MAIL_BATCH,
            conns,
            parts,
            ctx,
            shared,
            now,
            &mut self.touched,
        );
    }

    /// The end of a drive round: open the outbound connects sessions queued (`open` builds the
    /// connection for a request and a fresh generation masked to `gen_mask`, returning its
    /// token; `armed` reads its first deadline), queue each for the next round, then deliver a
    /// batch of local mail. Returns whether connections wait for another round.
    #[allow(clippy::too_many_arguments)]
    pub fn end_round<C>(
        &mut self,
        conns: &mut Slab<C>,
        parts: Parts<S, C>,
        ctx: &mut WorkerCtx,
        shared: &S::Shared,
        now: Instant,
        gen_mask: u32,
        armed: fn(&C) -> Option<Instant>,
        mut open: impl FnMut(&mut Slab<C>, &mut WorkerCtx, ConnectRequest, u32) -> Option<usize>,
    ) -> bool {
        // With no connect to open (they may post mail) and no mail waiting, nothing is left
        // to deliver this round.
        let mut mail = outbound::take_connects_peek_mail(&mut self.connects);
        mail |= !self.connects.is_empty();
        for req in self.connects.drain(..) {
            let gen = next_gen(&mut self.gen, gen_mask);
            if let Some(t) = open(conns, ctx, req, gen) {
                if let Some(d) = armed(&conns[t]) {
                    self.wheel.insert(t, d);
                }
                // New: not in `touched` yet, whatever its flag says.
                *parts(&mut conns[t]).1 = true;
                self.touched.push(t);
            }
        }
        if mail {
            self.deliver_local(conns, parts, ctx, shared, now);
        }
        !self.touched.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeout_takes_the_earliest_and_caps_pending() {
        let t0 = Instant::from_nanos(1_000_000_000);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(wait_timeout(t0, None, &[None, None], false, false), None);
        assert_eq!(
            wait_timeout(
                t0,
                Some(t0 + ms(50)),
                &[Some(t0 + ms(20)), None],
                false,
                false
            ),
            Some(ms(20))
        );
        assert_eq!(
            wait_timeout(t0, Some(t0 + ms(50)), &[], true, false),
            Some(ms(1))
        );
        assert_eq!(wait_timeout(t0, None, &[], true, false), Some(ms(1)));
        assert_eq!(
            wait_timeout(t0, Some(t0 + ms(50)), &[], true, true),
            Some(Duration::ZERO)
        );
        // A deadline already past: do not block.
        assert_eq!(
            wait_timeout(t0 + ms(5), Some(t0), &[], false, false),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn touch_queues_once() {
        let mut q = false;
        let mut touched = Vec::new();
        touch(&mut q, 3, &mut touched);
        touch(&mut q, 3, &mut touched);
        assert_eq!(touched, vec![3]);
        assert!(q);
    }
}
