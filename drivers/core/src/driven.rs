//! The protocol-generic face of a connection, as an I/O worker drives it.
//!
//! Drivers (`ferry-epoll`, `ferry-uring`) are generic over [`Session`] and monomorphised per
//! protocol, so the hot path has no dynamic dispatch and the driver code knows nothing about
//! HTTP or RESP: it appends what it read to [`Session::input`], calls [`Session::process`],
//! writes [`Session::fill_iov`] (or hands [`Session::take_out`] chunks to the kernel) and
//! reports how much went out. Messages from outside the worker (application workers' replies,
//! pub/sub deliveries from other connections) arrive as [`Session::Mail`], collected once per
//! loop turn with [`Session::take_mail`] after the worker's doorbell rang. Messages between
//! connections of the same worker go through [`WorkerCtx::post`] and outbound connections
//! start with [`WorkerCtx::connect`] (see [`crate::outbound`]).

use std::io::IoSlice;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_proto::Instant;

use crate::pool::Reply;
use crate::runtime::WorkerCtx;
use crate::service::ConnInfo;
use crate::session::HttpSession;

/// One connection's protocol state, buffers and application glue.
pub trait Session: Sized + Send + 'static {
    /// Server-wide state shared by every worker (the application, routing tables).
    type Shared: Send + Sync + 'static;
    /// A message for one connection from outside its worker's loop.
    type Mail: Send + 'static;

    /// A connection was accepted; `None` refuses it (the driver closes the socket).
    fn open(
        ctx: &mut WorkerCtx,
        shared: &Arc<Self::Shared>,
        info: ConnInfo,
        gen: u32,
        now: Instant,
    ) -> Option<Self>;
    /// Bytes read and not yet consumed by the protocol. Drivers append here.
    fn input(&mut self) -> &mut BytesMut;
    /// Whether the driver should read from the socket now.
    fn wants_read(&self, ctx: &WorkerCtx) -> bool;
    /// Whether the socket can be closed (the protocol is done and every byte went out).
    fn is_finished(&self) -> bool;
    /// Whether the connection must be aborted now: the driver then closes the socket at once
    /// with an RST instead of a FIN (`SO_LINGER {1, 0}` then `close`, see [`linger_zero`];
    /// smoltcp's `abort()` on userspace stacks), discarding unsent output and unread input,
    /// and calls [`close`](Session::close). Drivers check it wherever they check
    /// [`is_finished`](Session::is_finished) (after every callback that may change it), and it
    /// wins over a graceful finish. Default: never (relays and fault injectors use it).
    fn wants_abort(&self) -> bool {
        false
    }
    /// Whether to shut down the write side now (a FIN after the output, TCP half-close)
    /// while still reading: drivers ask when no output is queued or in flight, and do it once
    /// when this returns `true`, which it does once (the session clears its request). For
    /// tunnels relaying a half-close. Default: never.
    fn poll_shutdown_write(&mut self) -> bool {
        false
    }
    /// The connection holds no unconsumed input at the drivers' idle sweep (every few
    /// seconds): give back buffers that are empty now (the driver gives the empty input back
    /// itself). Must change nothing observable. Default: nothing.
    fn release_idle(&mut self) {}
    /// Whether the peer closed its side.
    fn saw_eof(&self) -> bool;
    /// Whether work waits for room in an application channel (retry soon).
    fn has_pending(&self) -> bool;
    /// The protocol's next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Whether output is waiting to be written (or confirmed).
    fn has_output(&self) -> bool;
    /// Fill `iov` with slices of queued output, oldest first; returns how many were filled.
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize;
    /// `n` bytes of the queued output were written (epoll style).
    fn written(&mut self, ctx: &WorkerCtx, n: usize);
    /// Take up to `max` queued chunks to hand to the kernel (io_uring style).
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>);
    /// A completion wrote `n` bytes of the chunks taken; the rest goes back to the queue.
    fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>);
    /// `n` bytes were appended to the input.
    fn on_read(&mut self, ctx: &WorkerCtx, n: usize);
    /// The peer closed its side (a FIN: every byte it sent was read before). Never called
    /// for a reset (see [`close`](Session::close)).
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant);
    /// The connection's timer fired.
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant);
    /// Graceful shutdown: finish what was received, read nothing new, then close.
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant);
    /// Feed the input to the protocol, run the application, queue output.
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant);
    /// Whether [`process`](Session::process) could do anything now. Drivers call `process`
    /// after every read and event, and again while bytes move; when this returns `false`
    /// they skip the call (and the pass that would only repeat it). Return `false` only
    /// when a `process` call now would certainly change nothing (e.g. no unparsed input
    /// and nothing else waiting inside the session). Default: `true` (always call).
    fn wants_process(&self) -> bool {
        true
    }
    /// Retry work an application channel refused. Returns whether all of it went through.
    fn retry_pending(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool;
    /// Collect this worker's mail as `(connection token, mail)` pairs.
    fn take_mail(ctx: &mut WorkerCtx, shared: &Self::Shared, into: &mut Vec<(usize, Self::Mail)>);
    /// Apply mail addressed to this connection.
    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: Self::Mail, now: Instant);
    /// Mail for a connection that no longer exists.
    fn drop_mail(_ctx: &mut WorkerCtx, _shared: &Self::Shared, _mail: Self::Mail) {}
    /// Worker-level periodic work (called every loop turn); returns when to be called next.
    fn tick(_ctx: &mut WorkerCtx, _shared: &Self::Shared, _now: Instant) -> Option<Instant> {
        None
    }
    /// The socket is being closed. Without [`saw_eof`](Session::saw_eof) or a finish of the
    /// session's own, the connection broke: the peer reset it, or a write failed (`EPIPE`,
    /// `ECONNRESET`). Drivers first hand over every byte the peer sent before that — read
    /// until the error, [`on_read`](Session::on_read) and [`process`](Session::process), as
    /// far as [`wants_read`](Session::wants_read) lets them — and write nothing more; there
    /// is no [`on_eof`](Session::on_eof) (a reset is not a clean end: e.g. a body read until
    /// the close is cut short).
    fn close(self, ctx: &mut WorkerCtx);

    /// An outbound connection queued with [`WorkerCtx::connect`] has a socket (the connect is
    /// in progress): build its session. `info.token` is its token (for mail), `info.peer` the
    /// address, `tag` the caller's. `None` closes the socket. Until
    /// [`on_connected`](Session::on_connected) the driver reads and writes nothing (output
    /// may be queued meanwhile); a connect timeout is the session's own deadline. Default:
    /// refuse (sessions that never call `connect`).
    fn open_outbound(
        _ctx: &mut WorkerCtx,
        _shared: &Arc<Self::Shared>,
        _info: ConnInfo,
        _tag: u64,
        _gen: u32,
        _now: Instant,
    ) -> Option<Self> {
        None
    }
    /// The outbound connect completed; reading and writing start.
    fn on_connected(&mut self, _ctx: &mut WorkerCtx, _now: Instant) {}
    /// The outbound connect failed (refused, unreachable, reset); the driver closes the
    /// connection right after (then [`close`](Session::close) runs).
    fn connect_failed(&mut self, _ctx: &mut WorkerCtx, _error: std::io::Error, _now: Instant) {}
}

impl Session for HttpSession {
    type Shared = ();
    type Mail = Reply;

    fn open(
        ctx: &mut WorkerCtx,
        _shared: &Arc<()>,
        info: ConnInfo,
        gen: u32,
        now: Instant,
    ) -> Option<Self> {
        let svc = ctx.service.clone();
        let ok = catch_unwind(AssertUnwindSafe(|| svc.on_connect(&info))).unwrap_or(false);
        ok.then(|| HttpSession::new(ctx, info, gen, now))
    }
    fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }
    fn release_idle(&mut self) {
        HttpSession::release_idle(self)
    }
    fn wants_read(&self, ctx: &WorkerCtx) -> bool {
        HttpSession::wants_read(self, ctx)
    }
    fn is_finished(&self) -> bool {
        HttpSession::is_finished(self)
    }
    fn saw_eof(&self) -> bool {
        HttpSession::saw_eof(self)
    }
    fn has_pending(&self) -> bool {
        HttpSession::has_pending(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        HttpSession::poll_timeout(self)
    }
    fn has_output(&self) -> bool {
        HttpSession::has_output(self)
    }
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        HttpSession::fill_iov(self, iov)
    }
    fn written(&mut self, ctx: &WorkerCtx, n: usize) {
        HttpSession::written(self, ctx, n)
    }
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        HttpSession::take_out(self, max, into)
    }
    fn sent(&mut self, ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        HttpSession::sent(self, ctx, n, chunks)
    }
    fn on_read(&mut self, ctx: &WorkerCtx, n: usize) {
        HttpSession::on_read(self, ctx, n)
    }
    fn on_eof(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        HttpSession::on_eof(self, ctx, now)
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        HttpSession::on_timeout(self, ctx, now)
    }
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        HttpSession::begin_shutdown(self, ctx, now)
    }
    fn process(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        HttpSession::process(self, ctx, now)
    }
    fn retry_pending(&mut self, ctx: &mut WorkerCtx, now: Instant) -> bool {
        HttpSession::retry_pending(self, ctx, now)
    }
    fn take_mail(ctx: &mut WorkerCtx, _shared: &(), into: &mut Vec<(usize, Reply)>) {
        if let Some(rx) = ctx.replies.as_ref() {
            into.extend(rx.try_iter().map(|r| (r.token, r)));
        }
    }
    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: Reply, now: Instant) {
        self.apply_reply(ctx, mail, now)
    }
    fn close(self, ctx: &mut WorkerCtx) {
        HttpSession::close(self, ctx)
    }
}

/// Make the next `close` of socket `fd` abort the connection with an RST (`SO_LINGER` with
/// `l_onoff = 1, l_linger = 0`), as [`Session::wants_abort`] asks; errors (not a TCP socket)
/// are returned and leave a plain close.
pub fn linger_zero(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a valid `linger` value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An output queue of owned chunks, shared by sessions that do not need anything fancier.
#[derive(Debug, Default)]
pub struct OutQueue {
    out: std::collections::VecDeque<Bytes>,
    /// Bytes queued plus bytes handed to the kernel and not yet confirmed.
    bytes: usize,
}

impl OutQueue {
    /// A queue holding `out`, with `bytes` queued or in flight.
    pub fn from_parts(out: std::collections::VecDeque<Bytes>, bytes: usize) -> OutQueue {
        OutQueue { out, bytes }
    }

    /// Queue a chunk.
    #[inline]
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.out.push_back(b);
        }
    }
    /// Bytes queued or in flight.
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes
    }
    /// Whether nothing is queued or in flight.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
    /// Take the oldest queued chunk (a chunk handed out with [`take_out`](Self::take_out)
    /// and not yet [`sent`](Self::sent) is not in the queue).
    pub fn pop_front(&mut self) -> Option<Bytes> {
        let b = self.out.pop_front()?;
        self.bytes -= b.len();
        Some(b)
    }
    /// Put a chunk back at the front (e.g. the part of [`pop_front`](Self::pop_front)'s
    /// chunk that could not be used).
    pub fn push_front(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.out.push_front(b);
        }
    }
    /// See [`Session::fill_iov`].
    #[inline]
    pub fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, b) in iov.iter_mut().zip(self.out.iter()) {
            *slot = IoSlice::new(b);
            n += 1;
        }
        n
    }
    /// See [`Session::written`].
    #[inline]
    pub fn written(&mut self, mut n: usize) {
        self.bytes -= n;
        if self.bytes == 0 {
            // Everything queued went out (the usual case: one chunk).
            if self.out.len() == 1 {
                self.out.pop_front();
            } else {
                while self.out.pop_front().is_some() {}
            }
            return;
        }
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.out.pop_front();
            } else {
                let _ = front.split_to(n);
                n = 0;
            }
        }
    }
    /// See [`Session::take_out`].
    #[inline]
    pub fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        for _ in 0..max {
            match self.out.pop_front() {
                Some(b) => into.push(b),
                None => break,
            }
        }
    }
    /// See [`Session::sent`].
    #[inline]
    pub fn sent(&mut self, n: usize, chunks: &mut Vec<Bytes>) {
        self.bytes -= n;
        if let [one] = chunks.as_mut_slice() {
            // One chunk in flight (the usual case): no list of leftovers to build.
            if n < one.len() {
                let mut b = chunks.pop().expect("one chunk");
                let _ = b.split_to(n);
                self.out.push_front(b);
            } else {
                chunks.clear();
            }
            return;
        }
        let mut skip = n;
        let mut rest = Vec::new();
        for mut b in chunks.drain(..) {
            if skip >= b.len() {
                skip -= b.len();
            } else {
                let _ = b.split_to(skip);
                skip = 0;
                rest.push(b);
            }
        }
        for b in rest.into_iter().rev() {
            self.out.push_front(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(chunks: &[&'static str]) -> OutQueue {
        let mut q = OutQueue::default();
        for c in chunks {
            q.push(Bytes::from_static(c.as_bytes()));
        }
        q
    }

    fn contents(q: &OutQueue) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = q.fill_iov(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn pop_front_and_push_front_keep_the_count() {
        let mut q = queue(&["ab", "cde"]);
        let b = q.pop_front().unwrap();
        assert_eq!((&b[..], q.len()), (&b"ab"[..], 3));
        q.push_front(b.slice(1..));
        q.push_front(Bytes::new());
        assert_eq!(q.len(), 4);
        assert_eq!(contents(&q), b"bcde");
        while q.pop_front().is_some() {}
        assert!(q.is_empty());
    }

    #[test]
    fn written_drops_what_went_out() {
        let mut q = queue(&["hello ", "world"]);
        q.written(3);
        assert_eq!((q.len(), contents(&q)), (8, b"lo world".to_vec()));
        q.written(5);
        assert_eq!((q.len(), contents(&q)), (3, b"rld".to_vec()));
        q.written(3);
        assert!(q.is_empty());
        assert_eq!(contents(&q), b"");
        // All of it at once (the fast path), several chunks.
        let mut q = queue(&["a", "bc", "def"]);
        q.written(6);
        assert!(q.is_empty());
        assert_eq!(q.fill_iov(&mut [IoSlice::new(&[])]), 0);
    }

    #[test]
    fn sent_puts_the_rest_back_in_order() {
        // One chunk in flight: all sent, part sent, nothing sent.
        for (n, left) in [(5, ""), (2, "llo"), (0, "hello")] {
            let mut q = queue(&["hello", "next"]);
            let mut taken = Vec::new();
            q.take_out(1, &mut taken);
            assert_eq!(taken.len(), 1);
            q.sent(n, &mut taken);
            assert!(taken.is_empty());
            assert_eq!(contents(&q), format!("{left}next").into_bytes());
            assert_eq!(q.len(), 9 - n);
        }
        // Several chunks in flight, a short write in the second one.
        let mut q = queue(&["ab", "cd", "ef"]);
        let mut taken = Vec::new();
        q.take_out(8, &mut taken);
        assert_eq!(taken.len(), 3);
        q.sent(3, &mut taken);
        assert_eq!((q.len(), contents(&q)), (3, b"def".to_vec()));
    }
}
