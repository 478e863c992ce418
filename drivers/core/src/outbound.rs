//! Outbound connections and worker-local mail: what a [`Session`](crate::Session) uses to
//! open client connections on its own I/O worker and to talk to other connections of the
//! same worker (a proxy's downstream and upstream halves, a load generator, a relay).
//!
//! - [`WorkerCtx::connect`] queues a non-blocking TCP connect. Within the same loop turn the
//!   driver creates the socket, registers it and calls
//!   [`Session::open_outbound`](crate::Session::open_outbound) with the new connection's
//!   token and the caller's `tag`; then [`Session::on_connected`](crate::Session::on_connected)
//!   or [`Session::connect_failed`](crate::Session::connect_failed) (after which the driver
//!   closes it). A connect timeout is the session's own deadline: it reports it from
//!   `poll_timeout` and finishes itself in `on_timeout`, like any other timeout.
//! - [`WorkerCtx::post`] queues mail for another connection of the same worker. The driver
//!   delivers it through [`Session::apply_mail`](crate::Session::apply_mail) in the same loop
//!   turn (no doorbell, no lock, no allocation per message: one reused queue per worker).
//!
//! The queues live in thread-local storage of the I/O worker's thread (each worker is one
//! thread), installed by the driver when the worker starts; this keeps `WorkerCtx`'s fields
//! unchanged. Calls from a thread that runs no worker fail softly (`post` hands the mail back,
//! `connect` returns `false`).

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;

use ferry_proto::Instant;

use crate::driven::Session;
use crate::runtime::WorkerCtx;

/// A queued outbound connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The caller's tag, handed to `open_outbound` (e.g. which upstream, which owner).
    pub tag: u64,
}

struct Local {
    installed: bool,
    connects: Vec<ConnectRequest>,
    /// `VecDeque<(usize, M)>` for the worker's session mail type `M`, oldest first.
    mail: Option<Box<dyn Any>>,
    /// The type of the queue in `mail` (compared inline: no virtual `type_id` call per mail).
    mail_type: Option<TypeId>,
}

impl Local {
    /// This worker's mail queue, if its mail type is `M`.
    #[inline]
    fn queue<M: 'static>(&mut self) -> Option<&mut VecDeque<(usize, M)>> {
        if self.mail_type != Some(TypeId::of::<VecDeque<(usize, M)>>()) {
            return None;
        }
        let q: *mut dyn Any = &mut **self.mail.as_mut()?;
        // SAFETY: `mail_type` is the type id of the value in `mail` (both set together in
        // `install`), checked equal to the type we cast to just above.
        Some(unsafe { &mut *q.cast::<VecDeque<(usize, M)>>() })
    }
}

thread_local! {
    // A `const` initializer: no lazy-initialisation check on every access.
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            installed: false,
            connects: Vec::new(),
            mail: None,
            mail_type: None,
        })
    };
    // How many connects and mails are queued, outside `LOCAL`: a value with no destructor is
    // read without the thread-local's registration check, and most looks find both zero.
    static CONNECTS_LEN: Cell<usize> = const { Cell::new(0) };
    static MAIL_LEN: Cell<usize> = const { Cell::new(0) };
}

/// Install this thread's queues for a worker whose sessions use mail type `M` (drivers call
/// this once when a worker thread starts; calling it again resets the queues).
pub fn install<M: 'static>() {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.installed = true;
        l.connects.clear();
        l.mail = Some(Box::new(VecDeque::<(usize, M)>::with_capacity(64)));
        l.mail_type = Some(TypeId::of::<VecDeque<(usize, M)>>());
    });
    CONNECTS_LEN.set(0);
    MAIL_LEN.set(0);
}

/// Whether connects or mail wait to be handled (drivers then poll without blocking).
pub fn has_work() -> bool {
    CONNECTS_LEN.get() > 0 || MAIL_LEN.get() > 0
}

/// Move the queued connects into `into` (drivers).
pub fn take_connects(into: &mut Vec<ConnectRequest>) {
    if CONNECTS_LEN.get() == 0 {
        return;
    }
    LOCAL.with(|l| into.append(&mut l.borrow_mut().connects));
    CONNECTS_LEN.set(0);
}

/// Move the queued connects into `into` and say whether mail waits (drivers, once per drive
/// round: one look at the queues instead of two when there is nothing to do).
pub fn take_connects_peek_mail(into: &mut Vec<ConnectRequest>) -> bool {
    take_connects(into);
    MAIL_LEN.get() > 0
}

/// Deliver up to `max` queued mails of this worker to their connections in `conns` (drivers),
/// through `scratch`: each connection's `apply_mail` runs, and a connection not yet in
/// `touched` is marked (`parts` gives its session and its queued flag) and pushed there. Mail
/// for a connection that is gone goes to [`Session::drop_mail`].
#[allow(clippy::too_many_arguments)]
pub fn deliver_mail<S: Session, C>(
    scratch: &mut Vec<(usize, S::Mail)>,
    max: usize,
    conns: &mut slab::Slab<C>,
    parts: fn(&mut C) -> (&mut S, &mut bool),
    ctx: &mut WorkerCtx,
    shared: &S::Shared,
    now: Instant,
    touched: &mut Vec<usize>,
) {
    take_mail::<S::Mail>(scratch, max);
    if scratch.is_empty() {
        return;
    }
    for (t, m) in scratch.drain(..) {
        if let Some(c) = conns.get_mut(t) {
            let (session, queued) = parts(c);
            session.apply_mail(ctx, m, now);
            if !*queued {
                *queued = true;
                touched.push(t);
            }
        } else {
            S::drop_mail(ctx, shared, m);
        }
    }
}

/// Start a queued outbound connection for a driver: `connect` starts the non-blocking
/// connect (its socket type is the driver's), then the session is built with
/// [`Session::open_outbound`] for connection `token`. `None` when the session refused it
/// (the socket is dropped) or the connect failed at once (the session heard `connect_failed`
/// and was closed).
#[allow(clippy::too_many_arguments)]
pub fn open_session<S: Session, T>(
    ctx: &mut WorkerCtx,
    shared: &std::sync::Arc<S::Shared>,
    req: &ConnectRequest,
    token: usize,
    gen: u32,
    now: Instant,
    connect: impl FnOnce(SocketAddr) -> std::io::Result<T>,
) -> Option<(S, T)> {
    let info = crate::ConnInfo {
        worker: ctx.index,
        token,
        peer: Some(req.addr),
    };
    let started = connect(req.addr);
    let mut session = S::open_outbound(ctx, shared, info, req.tag, gen, now)?;
    match started {
        Ok(sock) => Some((session, sock)),
        Err(e) => {
            session.connect_failed(ctx, e, now);
            session.close(ctx);
            None
        }
    }
}

/// Move up to `max` queued mails into `into`, oldest first (drivers).
pub fn take_mail<M: 'static>(into: &mut Vec<(usize, M)>, max: usize) {
    if MAIL_LEN.get() == 0 {
        return;
    }
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let Some(q) = l.queue::<M>() else {
            return;
        };
        if into.is_empty() && q.len() <= max {
            // The usual case: hand the whole queue over; the buffers trade places. Nothing
            // is copied while the queue starts at the front of its buffer, as it does when it
            // was last emptied this way (it is only pushed at the back).
            let full = std::mem::take(q);
            let spare = std::mem::replace(into, Vec::from(full));
            // What `q` holds now is the empty queue `take` left: nothing to drop (no elements,
            // no allocation), so skip the drop glue.
            std::mem::forget(std::mem::replace(q, VecDeque::from(spare)));
        } else {
            let n = q.len().min(max);
            into.extend(q.drain(..n));
        }
        MAIL_LEN.set(q.len());
    });
}

/// Queue a connect on this thread's worker (see [`WorkerCtx::connect`]).
pub fn connect(addr: SocketAddr, tag: u64) -> bool {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        if !l.installed {
            return false;
        }
        l.connects.push(ConnectRequest { addr, tag });
        CONNECTS_LEN.set(l.connects.len());
        true
    })
}

/// Queue mail on this thread's worker (see [`WorkerCtx::post`]).
#[inline]
pub fn post<M: 'static>(token: usize, mail: M) -> Result<(), M> {
    // Only the queue's address is looked up under the borrow: the mail is moved once, straight
    // into the queue, instead of into the closure, then the queue, then back out as a result.
    let q = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let q: *mut VecDeque<(usize, M)> = l.queue::<M>()?;
        Some(q)
    });
    match q {
        Some(q) => {
            // SAFETY: `q` points at this thread's queue, boxed in `LOCAL`: it stays where it is
            // until `install` replaces it, which cannot run during this call. Nothing else
            // refers to the queue now: it is only reached from this thread, by `post`,
            // `take_mail` and `install`, none of which is running, and `push_back` calls no
            // code of ours (moving `mail` runs none either).
            unsafe { (*q).push_back((token, mail)) };
            MAIL_LEN.set(MAIL_LEN.get() + 1);
            Ok(())
        }
        None => Err(mail),
    }
}

impl WorkerCtx {
    /// Queue a non-blocking TCP connect to `addr` from this worker; see the [module
    /// docs](crate::outbound). Returns `false` when the calling thread runs no driver worker
    /// with outbound support.
    pub fn connect(&self, addr: SocketAddr, tag: u64) -> bool {
        connect(addr, tag)
    }

    /// Queue `mail` for connection `token` of this worker, delivered in this loop turn. The
    /// mail comes back when `M` is not this worker's session mail type or no worker runs
    /// here. Tokens are reused after close: carry a generation in `M` if that matters (mail
    /// for a token with no connection goes to `Session::drop_mail`).
    pub fn post<M: 'static>(&self, token: usize, mail: M) -> Result<(), M> {
        post(token, mail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_round_trips_in_order_and_type_checked() {
        std::thread::spawn(|| {
            assert_eq!(post(1, 7u32), Err(7), "no worker here yet");
            install::<u32>();
            assert!(!has_work());
            for i in 0..5u32 {
                post(i as usize, i).unwrap();
            }
            assert_eq!(post(9, 1u8), Err(1u8), "wrong mail type handed back");
            assert!(has_work());
            let mut out = Vec::new();
            take_mail::<u32>(&mut out, 3);
            assert_eq!(out, vec![(0, 0), (1, 1), (2, 2)]);
            out.clear();
            take_mail::<u32>(&mut out, 100);
            assert_eq!(out, vec![(3, 3), (4, 4)]);
            assert!(!has_work());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_round_takes_connects_and_sees_waiting_mail() {
        std::thread::spawn(|| {
            let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
            install::<u8>();
            let mut v = Vec::new();
            assert!(!take_connects_peek_mail(&mut v), "nothing queued");
            assert!(v.is_empty());
            assert!(connect(a, 2));
            assert!(!take_connects_peek_mail(&mut v), "a connect, no mail");
            assert_eq!(v, vec![ConnectRequest { addr: a, tag: 2 }]);
            post(4, 7u8).unwrap();
            v.clear();
            assert!(take_connects_peek_mail(&mut v), "mail waits");
            assert!(v.is_empty());
            assert!(
                take_connects_peek_mail(&mut v),
                "peeking leaves the mail queued"
            );
            let mut m = Vec::new();
            take_mail::<u8>(&mut m, 10);
            assert_eq!(m, vec![(4, 7)]);
            assert!(!take_connects_peek_mail(&mut v));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn connects_queue_only_when_installed() {
        std::thread::spawn(|| {
            let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
            assert!(!connect(a, 1));
            install::<()>();
            assert!(connect(a, 2));
            assert!(has_work());
            let mut v = Vec::new();
            take_connects(&mut v);
            assert_eq!(v, vec![ConnectRequest { addr: a, tag: 2 }]);
            assert!(!has_work());
        })
        .join()
        .unwrap();
    }
}
