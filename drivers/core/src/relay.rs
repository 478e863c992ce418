//! Two-sided sessions: a proxy or relay written as its two halves, [`Downstream`] (an
//! accepted client connection) and [`Upstream`] (an outbound connection it opened with
//! [`WorkerCtx::connect`]), run by drivers as one [`Session`] type, [`Relay<D, U>`].
//!
//! Both halves of a relayed connection live on the same I/O worker and talk through
//! worker-local mail ([`WorkerCtx::post`]), addressed with a [`Peer`] (token and generation).
//! `Relay` owns what every such proxy repeated around its own logic:
//!
//! - the per-socket I/O state, [`Io`]: input buffer, output queue ([`OutQueue`]), EOF seen,
//!   abort asked, and for an upstream its connect state and deadline;
//! - the delegation of every [`Session`] method to the right half, with the shared rules:
//!   an upstream neither reads nor writes before its connect completed; reading stops after
//!   EOF or an abort; `on_eof` runs once; a connect that fails or passes its deadline
//!   ([`Io::set_connect_deadline`]) is reported once through [`Upstream::connect_failed`]
//!   and the connection is closed;
//! - mail envelopes ([`Envelope`]) carrying the receiver's generation: mail for an earlier
//!   connection that had the same token goes to [`Downstream::drop_mail`], never to the
//!   connection that reuses the token;
//! - worker metrics: connections accepted and closed (downstream), bytes in and out;
//! - resets: when the peer resets the connection (or a write fails), what it sent before
//!   is still read and processed, then the half's [`Half::close`] runs without
//!   [`Half::on_eof`] (see [`Session::close`]): a reset is not a clean end;
//! - aborts: [`Io::abort`] makes the driver close that socket with an RST
//!   ([`Session::wants_abort`]); half-closes: [`Io::shutdown_write`] sends a FIN after the
//!   queued output and keeps reading ([`Session::poll_shutdown_write`]).
//! - TLS, optional per connection and startable mid-connection ([`Io::start_tls`], a
//!   `ferry_tls::Tls` session): the half keeps seeing plaintext in [`Io::input`] and
//!   [`Io::out`] while the driver reads and writes ciphertext; `close_notify` goes out before
//!   the FIN. The relay's third parameter, `TLS`, says whether [`Io::start_tls`] may be
//!   used at all: `Relay<D, U>` (`TLS = true`) tests `Io::tls` (a pointer) in each driver
//!   call; `Relay<D, U, false>`, for a server configured without TLS, compiles those tests
//!   out (about 220 of 9,520 instructions per proxied HTTP request, callgrind), and there
//!   `start_tls` aborts the connection instead.
//!
//! Generations are 24 bits (`gen & 0xFF_FFFF`) so that a [`Peer`] packs into a connect tag
//! with room to spare ([`Peer::pack`]).
//!
//! # Writing a proxy on it
//!
//! 1. Two structs, each holding an [`Io`] (given to `open`) and returning it from
//!    [`Half::io`]/[`Half::io_mut`], plus the shared state from [`Half::shared`]
//!    ([`half_io!`](crate::half_io) writes the three).
//! 2. `impl Half` for both (same `Shared` and `Mail`): `wants_read` (only the half's own
//!    conditions: flow control, protocol), `is_finished`, `process` (parse `io.input`, queue
//!    on `io.out`, post to the peer), `on_eof`, `on_timeout`, `on_mail`, `close`...
//! 3. `impl Downstream` (`open`, optionally `drop_mail`, `tick`) and `impl Upstream` (`open`
//!    from the connect tag, `on_connected`, `connect_failed`).
//! 4. Run `ferry_epoll::start_with::<Relay<MyDown, MyUp>>(launch, shared)` (or uring).
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use ferry_driver::relay::{Downstream, Half, Io, Peer, Relay, Upstream};
//! use ferry_driver::{Session, WorkerCtx};
//! use ferry_proto::Instant;
//!
//! /// Where to relay to.
//! struct Cfg { upstream: std::net::SocketAddr }
//! /// Mail between the halves.
//! enum Msg { Hello(Peer), Data(Bytes), Gone }
//!
//! struct Client { io: Io, cfg: Arc<Cfg>, up: Option<Peer>, held: Vec<Bytes>, done: bool }
//! struct Server { io: Io, cfg: Arc<Cfg>, owner: Peer, done: bool }
//!
//! impl Half for Client {
//!     type Shared = Cfg;
//!     type Mail = Msg;
//!     ferry_driver::half_io!(io, cfg);
//!     fn wants_read(&self, _: &WorkerCtx) -> bool { !self.done }
//!     fn is_finished(&self) -> bool { self.done && self.io.out.is_empty() }
//!     fn process(&mut self, ctx: &mut WorkerCtx, _: Instant) {
//!         if self.io.input.is_empty() { return }
//!         let b = self.io.input.split().freeze();
//!         match self.up {
//!             Some(up) => { let _ = up.post(ctx, Msg::Data(b)); }
//!             None => self.held.push(b),
//!         }
//!     }
//!     fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
//!         self.process(ctx, now);
//!         self.done = true;
//!         if let Some(up) = self.up { let _ = up.post(ctx, Msg::Gone); }
//!     }
//!     fn begin_shutdown(&mut self, _: &mut WorkerCtx, _: Instant) { self.done = true }
//!     fn on_mail(&mut self, ctx: &mut WorkerCtx, m: Msg, _: Instant) {
//!         match m {
//!             Msg::Hello(up) => {
//!                 self.up = Some(up);
//!                 for b in self.held.drain(..) { let _ = up.post(ctx, Msg::Data(b)); }
//!             }
//!             Msg::Data(b) => self.io.out.push(b),
//!             Msg::Gone => self.done = true,
//!         }
//!     }
//!     fn close(self, ctx: &mut WorkerCtx) {
//!         if let Some(up) = self.up { let _ = up.post(ctx, Msg::Gone); }
//!     }
//! }
//! impl Downstream for Client {
//!     fn open(ctx: &mut WorkerCtx, cfg: &Arc<Cfg>, io: Io, _: Instant) -> Option<Self> {
//!         // The tag tells the upstream half whom to greet.
//!         ctx.connect(cfg.upstream, io.me().pack()).then_some(())?;
//!         Some(Client { io, cfg: cfg.clone(), up: None, held: Vec::new(), done: false })
//!     }
//! }
//! impl Half for Server {
//!     type Shared = Cfg;
//!     type Mail = Msg;
//!     ferry_driver::half_io!(io, cfg);
//!     fn wants_read(&self, _: &WorkerCtx) -> bool { !self.done }
//!     fn is_finished(&self) -> bool { self.done && self.io.out.is_empty() }
//!     fn process(&mut self, ctx: &mut WorkerCtx, _: Instant) {
//!         if !self.io.input.is_empty() {
//!             let _ = self.owner.post(ctx, Msg::Data(self.io.input.split().freeze()));
//!         }
//!     }
//!     fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
//!         self.process(ctx, now);
//!         self.done = true;
//!         let _ = self.owner.post(ctx, Msg::Gone);
//!     }
//!     fn begin_shutdown(&mut self, _: &mut WorkerCtx, _: Instant) { self.done = true }
//!     fn on_mail(&mut self, _: &mut WorkerCtx, m: Msg, _: Instant) {
//!         match m {
//!             Msg::Data(b) => self.io.out.push(b),
//!             _ => self.done = true,
//!         }
//!     }
//!     fn close(self, ctx: &mut WorkerCtx) { let _ = self.owner.post(ctx, Msg::Gone); }
//! }
//! impl Upstream for Server {
//!     fn open(_: &mut WorkerCtx, cfg: &Arc<Cfg>, io: Io, tag: u64, _: Instant) -> Option<Self> {
//!         Some(Server { io, cfg: cfg.clone(), owner: Peer::unpack(tag), done: false })
//!     }
//!     fn on_connected(&mut self, ctx: &mut WorkerCtx, _: Instant) {
//!         let _ = self.owner.post(ctx, Msg::Hello(self.io.me()));
//!     }
//!     fn connect_failed(&mut self, ctx: &mut WorkerCtx, _: std::io::Error, _: Instant) {
//!         let _ = self.owner.post(ctx, Msg::Gone);
//!     }
//! }
//!
//! // One session type for the driver: `ferry_epoll::start_with::<Tcp>(launch, cfg)`.
//! type Tcp = Relay<Client, Server>;
//! fn assert_session<S: Session>() {}
//! assert_session::<Tcp>();
//! ```

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_proto::Instant;

use crate::driven::{OutQueue, Session};
use crate::metrics::{add, bump};
use crate::relay_tls::{pump, TlsLayer};
use crate::runtime::WorkerCtx;
use crate::service::ConnInfo;

/// Generations are kept to 24 bits (see the [module docs](self)).
pub const GEN_MASK: u32 = 0xFF_FFFF;

/// A connection of this worker, as mail addresses it: its token and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The connection's token.
    pub token: usize,
    /// Its generation (24 bits): mail for an earlier connection with the same token is not
    /// delivered to it.
    pub gen: u32,
}

impl Peer {
    /// Queue `mail` for this connection (delivered in this loop turn, see
    /// [`WorkerCtx::post`]); handed back when no worker of mail type `Envelope<M>` runs here.
    #[inline]
    pub fn post<M: Send + 'static>(self, _ctx: &WorkerCtx, mail: M) -> Result<(), M> {
        self.send(mail)
    }

    #[inline]
    fn send<M: Send + 'static>(self, mail: M) -> Result<(), M> {
        crate::outbound::post(
            self.token,
            Envelope {
                gen: self.gen,
                mail,
            },
        )
        .map_err(|e| e.mail)
    }

    /// Token and generation in one `u64` (token in the high 40 bits), e.g. a connect tag.
    pub fn pack(self) -> u64 {
        ((self.token as u64) << 24) | u64::from(self.gen & GEN_MASK)
    }

    /// The inverse of [`pack`](Peer::pack).
    pub fn unpack(v: u64) -> Peer {
        Peer {
            token: (v >> 24) as usize,
            gen: (v as u32) & GEN_MASK,
        }
    }
}

/// Mail for one connection, with the generation it is meant for.
#[derive(Debug)]
pub struct Envelope<M> {
    gen: u32,
    mail: M,
}

/// One socket's I/O state, owned by its half (see [`Half::io`]).
#[derive(Debug)]
pub struct Io {
    /// Bytes read and not yet consumed (the driver appends here).
    pub input: BytesMut,
    /// Output waiting to be written (or confirmed).
    pub out: OutQueue,
    me: Peer,
    pub(crate) peer_addr: Option<SocketAddr>,
    pub(crate) eof: bool,
    pub(crate) abort: bool,
    pub(crate) shutdown_write: bool,
    connected: bool,
    connect_deadline: Option<Instant>,
    connect_failed: bool,
    /// The TLS layer, once [`start_tls`](Io::start_tls) ran (boxed: one pointer on plain
    /// connections, tested once per driver call when the relay may use TLS).
    pub(crate) tls: Option<Box<TlsLayer>>,
    /// The relay runs with `TLS = true` (see [`start_tls`](Io::start_tls)).
    tls_allowed: bool,
}

impl Io {
    fn new(_ctx: &WorkerCtx, info: &ConnInfo, gen: u32, connected: bool, tls_allowed: bool) -> Io {
        Io {
            // Allocated by the driver's first read (sized to it: an idle connection stays
            // cheap), then a read chunk at a time.
            input: BytesMut::new(),
            out: OutQueue::default(),
            me: Peer {
                token: info.token,
                gen: gen & GEN_MASK,
            },
            peer_addr: info.peer,
            eof: false,
            abort: false,
            shutdown_write: false,
            connected,
            connect_deadline: None,
            connect_failed: false,
            tls: None,
            tls_allowed,
        }
    }

    /// Speak TLS on this connection from now on (a server session for an accepted client,
    /// a client session for an upstream). The half goes on reading plaintext from
    /// [`input`](Io::input) and queueing plaintext on [`out`](Io::out); the relay
    /// decrypts and encrypts in between, and the driver moves ciphertext. Output queued
    /// before the call still goes out in clear, first (PostgreSQL's `S` answer to
    /// `SSLRequest`); input not consumed yet is taken as the peer's first ciphertext. Once
    /// the half is finished (or [`shutdown_write`](Io::shutdown_write) was asked) a
    /// `close_notify` goes out before the FIN. A TLS failure (a plain-text client, a bad
    /// record) sends the alert, stops reading and closes the connection (the half's
    /// [`close`](Half::close) runs; its `on_eof` does not). Calling it again replaces
    /// nothing: the first session stays. On a [`Relay`] built without TLS (`Relay<D, U,
    /// false>`) the connection is aborted instead (a server configured without TLS never
    /// asks for it).
    pub fn start_tls(&mut self, tls: ferry_tls::Tls) {
        if !self.tls_allowed {
            debug_assert!(false, "start_tls on a Relay<_, _, false>");
            tracing::error!(peer = ?self.peer_addr, "start_tls on a relay without TLS: aborted");
            self.abort = true;
            return;
        }
        if self.tls.is_none() {
            let layer = TlsLayer::start(self, tls);
            self.tls = Some(Box::new(layer));
        }
    }

    /// The TLS session, when [`start_tls`](Io::start_tls) ran (ALPN, SNI, handshake state).
    pub fn tls(&self) -> Option<&ferry_tls::Tls> {
        self.tls.as_deref().map(|t| &t.tls)
    }

    /// The queue the driver writes from: [`out`](Io::out), or with TLS the ciphertext.
    #[inline(always)]
    fn wire_out(&self) -> &OutQueue {
        match &self.tls {
            None => &self.out,
            Some(t) => &t.out,
        }
    }

    #[inline(always)]
    fn wire_out_mut(&mut self) -> &mut OutQueue {
        match &mut self.tls {
            None => &mut self.out,
            Some(t) => &mut t.out,
        }
    }

    /// This connection's address for mail.
    pub fn me(&self) -> Peer {
        self.me
    }

    /// The remote address (the client's, or the upstream's), when known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// Whether the remote side closed its sending side (EOF read).
    pub fn saw_eof(&self) -> bool {
        self.eof
    }

    /// Close this connection with an RST, now: unsent output and unread input are
    /// discarded (see [`Session::wants_abort`]). Reading stops at once.
    pub fn abort(&mut self) {
        self.abort = true;
    }

    /// Send a FIN once the queued output went out, and keep reading (TCP half-close, e.g. a
    /// tunnel relaying its other side's EOF; see [`Session::poll_shutdown_write`]). The half
    /// MUST NOT queue output afterwards.
    pub fn shutdown_write(&mut self) {
        self.shutdown_write = true;
    }

    /// Whether [`abort`](Io::abort) was called.
    pub fn is_aborting(&self) -> bool {
        self.abort
    }

    /// Whether the connection is established (always for a downstream; for an upstream once
    /// its connect completed).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The upstream's connect deadline: if the connect has not completed by then,
    /// [`Upstream::connect_failed`] runs with [`std::io::ErrorKind::TimedOut`] and the
    /// connection closes. No effect once connected.
    pub fn set_connect_deadline(&mut self, at: Option<Instant>) {
        self.connect_deadline = at;
    }

    /// The pending connect deadline.
    pub fn connect_deadline(&self) -> Option<Instant> {
        if self.connected {
            None
        } else {
            self.connect_deadline
        }
    }
}

/// What both halves implement.
pub trait Half: Sized + Send + 'static {
    /// Server-wide state shared by every worker (same type for both halves).
    type Shared: Send + Sync + 'static;
    /// Mail between connections of a worker (same type for both halves).
    type Mail: Send + 'static;

    /// This half's I/O state.
    fn io(&self) -> &Io;
    /// This half's I/O state.
    fn io_mut(&mut self) -> &mut Io;
    /// The shared state (for [`Downstream::drop_mail`] of stale mail).
    fn shared(&self) -> &Arc<Self::Shared>;

    /// Whether to read now, as far as this half is concerned (the relay already stops
    /// reading after EOF, an abort, or before an upstream connected).
    fn wants_read(&self, ctx: &WorkerCtx) -> bool;
    /// Whether the socket can be closed gracefully (every byte went out).
    fn is_finished(&self) -> bool;
    /// This half's next deadline (an upstream's connect deadline is added by the relay).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Consume [`Io::input`], queue output on [`Io::out`], post to the peer.
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant);
    /// Whether [`process`](Half::process) could do anything now: when `false`, drivers skip
    /// the call (see [`Session::wants_process`]); they make several per event, most of them
    /// with nothing new. Return `false` only when a call now would certainly change nothing
    /// (e.g. [`Io::input`] holds nothing this half would parse now, and no event or output is
    /// waiting inside it). Default: `true` (always called).
    fn wants_process(&self) -> bool {
        true
    }
    /// `n` bytes were appended to the input (before `process`).
    fn on_read(&mut self, _ctx: &WorkerCtx, _n: usize) {}
    /// No unconsumed input at the drivers' idle sweep: give back buffers that are empty now
    /// (see [`Session::release_idle`]). Default: nothing.
    fn release_idle(&mut self) {}
    /// `n` bytes of output left the queue (written, or confirmed sent): e.g. acknowledge them
    /// to the peer for flow control.
    fn on_written(&mut self, _ctx: &WorkerCtx, _n: usize) {}
    /// The remote side closed its sending side (called once; [`Io::saw_eof`] is already set).
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant);
    /// This half's deadline passed (the upstream connect deadline is handled by the relay).
    fn on_timeout(&mut self, _ctx: &mut WorkerCtx, _now: Instant) {}
    /// Graceful shutdown of the server: finish what is in progress, then close.
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant);
    /// Mail for this connection (its generation checked).
    fn on_mail(&mut self, ctx: &mut WorkerCtx, mail: Self::Mail, now: Instant);
    /// The socket is being closed (tell the peer, give leases back, count).
    fn close(self, ctx: &mut WorkerCtx);
}

/// Writes the three accessors every [`Half`] has — [`io`](Half::io),
/// [`io_mut`](Half::io_mut) and [`shared`](Half::shared) — from two fields of the half, in
/// one line inside its `impl Half`: `half_io!()` for fields named `io` and `shared`, or
/// `half_io!(io_field, shared_field)`. The shared field is an `Arc<Self::Shared>`.
///
/// ```
/// use std::sync::Arc;
/// use ferry_driver::relay::{Half, Io};
/// use ferry_driver::WorkerCtx;
/// use ferry_proto::Instant;
///
/// struct Cfg;
/// struct Echo { io: Io, cfg: Arc<Cfg> }
///
/// impl Half for Echo {
///     type Shared = Cfg;
///     type Mail = ();
///     ferry_driver::half_io!(io, cfg);
///     fn wants_read(&self, _: &WorkerCtx) -> bool { true }
///     fn is_finished(&self) -> bool { self.io.out.is_empty() }
///     fn process(&mut self, _: &mut WorkerCtx, _: Instant) {
///         let b = self.io.input.split().freeze();
///         self.io.out.push(b);
///     }
///     fn on_eof(&mut self, _: &mut WorkerCtx, _: Instant) {}
///     fn begin_shutdown(&mut self, _: &mut WorkerCtx, _: Instant) {}
///     fn on_mail(&mut self, _: &mut WorkerCtx, _: (), _: Instant) {}
///     fn close(self, _: &mut WorkerCtx) {}
/// }
/// ```
#[macro_export]
macro_rules! half_io {
    () => {
        $crate::half_io!(io, shared);
    };
    ($io:ident, $shared:ident) => {
        fn io(&self) -> &$crate::relay::Io {
            &self.$io
        }
        fn io_mut(&mut self) -> &mut $crate::relay::Io {
            &mut self.$io
        }
        fn shared(&self) -> &::std::sync::Arc<Self::Shared> {
            &self.$shared
        }
    };
}

/// The half that was accepted from a client.
pub trait Downstream: Half {
    /// A connection was accepted (`io` is ready, connected); `None` refuses it.
    fn open(ctx: &mut WorkerCtx, shared: &Arc<Self::Shared>, io: Io, now: Instant) -> Option<Self>;
    /// Mail for a connection that is gone, or for an earlier connection with the same token
    /// (e.g. give back a lease it carried). Default: dropped.
    fn drop_mail(_ctx: &mut WorkerCtx, _shared: &Self::Shared, _mail: Self::Mail) {}
    /// Worker-level periodic work; returns when to be called next (see [`Session::tick`]).
    fn tick(_ctx: &mut WorkerCtx, _shared: &Self::Shared, _now: Instant) -> Option<Instant> {
        None
    }
}

/// The half opened by [`WorkerCtx::connect`].
pub trait Upstream: Half {
    /// The connect was started (`io` is not connected yet; output may be queued). `tag` is
    /// the caller's, from `connect`. `None` closes the socket. Set a connect deadline with
    /// [`Io::set_connect_deadline`].
    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<Self::Shared>,
        io: Io,
        tag: u64,
        now: Instant,
    ) -> Option<Self>;
    /// The connect completed: reading and writing start.
    fn on_connected(&mut self, _ctx: &mut WorkerCtx, _now: Instant) {}
    /// The connect failed (refused, unreachable, or the deadline passed:
    /// [`std::io::ErrorKind::TimedOut`]); the connection closes right after.
    fn connect_failed(&mut self, ctx: &mut WorkerCtx, error: std::io::Error, now: Instant);
}

/// A proxy's two halves as one [`Session`] (see the [module docs](self)). `TLS`: whether
/// [`Io::start_tls`] may be used on its connections (`false` compiles the relay's TLS tests
/// out of every driver call; `start_tls` then aborts the connection).
// An explicit tag byte: every `Session` call dispatches on it (several per event), and a
// tag stored in a niche of one half's fields costs more to test than a byte compare.
#[derive(Debug)]
#[repr(u8)]
pub enum Relay<D, U, const TLS: bool = true> {
    /// An accepted client connection.
    Down(D),
    /// An outbound connection.
    Up(U),
}

macro_rules! both {
    ($self:expr, $h:ident => $e:expr) => {
        match $self {
            Relay::Down($h) => $e,
            Relay::Up($h) => $e,
        }
    };
}

impl<D, U, const TLS: bool> Relay<D, U, TLS>
where
    D: Downstream,
    U: Upstream<Shared = D::Shared, Mail = D::Mail>,
{
    fn io(&self) -> &Io {
        both!(self, h => h.io())
    }

    fn io_mut(&mut self) -> &mut Io {
        both!(self, h => h.io_mut())
    }

    #[cold]
    #[inline(never)]
    fn tls_finished(&self) -> bool {
        let io = self.io();
        io.connect_failed
            || io
                .tls
                .as_deref()
                .is_some_and(|t| t.finished(|| both!(self, h => h.is_finished())))
    }

    /// Whether this connection speaks TLS (a pointer test; `false` at compile time on a
    /// relay without TLS).
    #[inline(always)]
    fn has_tls(&self) -> bool {
        TLS && self.io().tls.is_some()
    }

    /// The queue the driver writes from (see [`Io::wire_out`]).
    #[inline(always)]
    fn wire_out(&self) -> &OutQueue {
        let io = self.io();
        if TLS {
            io.wire_out()
        } else {
            &io.out
        }
    }

    #[inline(always)]
    fn wire_out_mut(&mut self) -> &mut OutQueue {
        let io = self.io_mut();
        if TLS {
            io.wire_out_mut()
        } else {
            &mut io.out
        }
    }

    /// After a callback that may have queued output or changed the half's state: the TLS
    /// layer's turn (a pointer test on plain connections).
    #[inline(always)]
    fn tls_pump(&mut self, ctx: &WorkerCtx) {
        if self.has_tls() {
            self.tls_pump_now(ctx)
        }
    }

    /// One out-of-line call for both halves, so the plain path inlines only the test.
    #[cold]
    #[inline(never)]
    fn tls_pump_now(&mut self, ctx: &WorkerCtx) {
        both!(self, h => pump(h, ctx))
    }

    fn fail_connect(&mut self, ctx: &mut WorkerCtx, e: std::io::Error, now: Instant) {
        if let Relay::Up(u) = self {
            let io = u.io_mut();
            if !io.connect_failed {
                io.connect_failed = true;
                io.connect_deadline = None;
                u.connect_failed(ctx, e, now);
            }
        }
    }
}

impl<D, U, const TLS: bool> Session for Relay<D, U, TLS>
where
    D: Downstream,
    U: Upstream<Shared = D::Shared, Mail = D::Mail>,
{
    type Shared = D::Shared;
    type Mail = Envelope<D::Mail>;

    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<D::Shared>,
        info: ConnInfo,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        add(&ctx.metrics.accepted, 1);
        let io = Io::new(ctx, &info, gen, true, TLS);
        let mut r = D::open(ctx, shared, io, now).map(Relay::Down)?;
        r.tls_pump(ctx);
        Some(r)
    }

    fn open_outbound(
        ctx: &mut WorkerCtx,
        shared: &Arc<D::Shared>,
        info: ConnInfo,
        tag: u64,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        let io = Io::new(ctx, &info, gen, false, TLS);
        let mut r = U::open(ctx, shared, io, tag, now).map(Relay::Up)?;
        r.tls_pump(ctx);
        Some(r)
    }

    fn on_connected(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if let Relay::Up(u) = self {
            let io = u.io_mut();
            if io.connect_failed {
                return;
            }
            io.connected = true;
            io.connect_deadline = None;
            u.on_connected(ctx, now);
        }
        self.tls_pump(ctx);
    }

    fn connect_failed(&mut self, ctx: &mut WorkerCtx, error: std::io::Error, now: Instant) {
        self.fail_connect(ctx, error, now);
    }

    fn tick(ctx: &mut WorkerCtx, shared: &D::Shared, now: Instant) -> Option<Instant> {
        D::tick(ctx, shared, now)
    }

    #[inline]
    fn input(&mut self) -> &mut BytesMut {
        let io = self.io_mut();
        if !TLS {
            return &mut io.input;
        }
        match &mut io.tls {
            None => &mut io.input,
            Some(t) => &mut t.cipher_in,
        }
    }

    fn release_idle(&mut self) {
        both!(self, h => h.release_idle())
    }

    #[inline]
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        let io = self.io();
        io.connected && !io.eof && !io.abort && both!(self, h => h.wants_read(ctx))
    }

    #[inline]
    fn is_finished(&self) -> bool {
        if self.has_tls() {
            return self.tls_finished();
        }
        let io = self.io();
        io.connect_failed || both!(self, h => h.is_finished())
    }

    #[inline]
    fn wants_abort(&self) -> bool {
        self.io().abort
    }

    fn poll_shutdown_write(&mut self) -> bool {
        let io = self.io_mut();
        if !io.connected || !io.shutdown_write {
            return false;
        }
        // With TLS, the FIN follows the close_notify (queued by the pump once the half's
        // output went in).
        if let Some(t) = io.tls.as_ref().filter(|_| TLS) {
            if !t.tls.is_closed() || !t.out.is_empty() {
                return false;
            }
        }
        io.shutdown_write = false;
        true
    }

    fn saw_eof(&self) -> bool {
        self.io().eof
    }

    fn has_pending(&self) -> bool {
        false
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let own = both!(self, h => h.poll_timeout());
        match (self.io().connect_deadline(), own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    #[inline]
    fn has_output(&self) -> bool {
        let io = self.io();
        io.connected && !self.wire_out().is_empty()
    }

    #[inline]
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        self.wire_out().fill_iov(iov)
    }

    #[inline]
    fn written(&mut self, ctx: &WorkerCtx, n: usize) {
        bump(&ctx.metrics.bytes_out, n as u64);
        self.wire_out_mut().written(n);
        if self.has_tls() {
            // Ciphertext went out: room to encrypt more (the half hears of plaintext).
            return self.tls_pump_now(ctx);
        }
        both!(self, h => h.on_written(ctx, n))
    }

    #[inline]
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        self.wire_out_mut().take_out(max, into)
    }

    #[inline]
    fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        bump(&ctx.metrics.bytes_out, n as u64);
        self.wire_out_mut().sent(n, chunks);
        if self.has_tls() {
            return self.tls_pump_now(ctx);
        }
        both!(self, h => h.on_written(ctx, n))
    }

    #[inline]
    fn on_read(&mut self, ctx: &WorkerCtx, n: usize) {
        bump(&ctx.metrics.bytes_in, n as u64);
        if self.has_tls() {
            // Ciphertext: the pump decrypts it and tells the half the plaintext count.
            return self.tls_pump_now(ctx);
        }
        both!(self, h => h.on_read(ctx, n))
    }

    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        let io = self.io_mut();
        if io.eof {
            return;
        }
        io.eof = true;
        both!(self, h => h.on_eof(ctx, now));
        self.tls_pump(ctx);
    }

    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.io().connect_deadline().is_some_and(|d| now >= d) {
            self.fail_connect(ctx, std::io::ErrorKind::TimedOut.into(), now);
            return;
        }
        both!(self, h => h.on_timeout(ctx, now));
        self.tls_pump(ctx);
    }

    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        both!(self, h => h.begin_shutdown(ctx, now));
        self.tls_pump(ctx);
    }

    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if self.io().connect_failed {
            return;
        }
        both!(self, h => h.process(ctx, now));
        self.tls_pump(ctx);
    }

    #[inline]
    fn wants_process(&self) -> bool {
        !self.io().connect_failed && both!(self, h => h.wants_process())
    }

    fn retry_pending(&mut self, _ctx: &mut WorkerCtx, _now: Instant) -> bool {
        true
    }

    fn take_mail(
        _ctx: &mut WorkerCtx,
        _shared: &D::Shared,
        _into: &mut Vec<(usize, Envelope<D::Mail>)>,
    ) {
    }

    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: Envelope<D::Mail>, now: Instant) {
        if mail.gen != self.io().me.gen {
            let shared = both!(self, h => h.shared().clone());
            D::drop_mail(ctx, &shared, mail.mail);
            return;
        }
        both!(self, h => h.on_mail(ctx, mail.mail, now));
        self.tls_pump(ctx);
    }

    fn drop_mail(ctx: &mut WorkerCtx, shared: &D::Shared, mail: Envelope<D::Mail>) {
        D::drop_mail(ctx, shared, mail.mail)
    }

    fn close(self, ctx: &mut WorkerCtx) {
        match self {
            Relay::Down(d) => {
                add(&ctx.metrics.closed, 1);
                d.close(ctx)
            }
            Relay::Up(u) => u.close(ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_packs_into_a_tag() {
        for p in [
            Peer { token: 0, gen: 0 },
            Peer {
                token: 12345,
                gen: GEN_MASK,
            },
            Peer {
                token: (1 << 40) - 1,
                gen: 7,
            },
        ] {
            assert_eq!(Peer::unpack(p.pack()), p);
        }
    }

    #[test]
    fn post_needs_a_worker_with_the_envelope_type() {
        std::thread::spawn(|| {
            let p = Peer { token: 3, gen: 9 };
            assert_eq!(p.send(1u8), Err(1), "no worker here");
            crate::outbound::install::<Envelope<u8>>();
            assert!(p.send(1u8).is_ok());
            let mut out = Vec::new();
            crate::outbound::take_mail::<Envelope<u8>>(&mut out, 10);
            assert_eq!(out.len(), 1);
            assert_eq!((out[0].0, out[0].1.gen, out[0].1.mail), (3, 9, 1));
            assert_eq!(p.send(2u16), Err(2), "not this worker's mail type");
        })
        .join()
        .unwrap();
    }
}
