//! The TLS layer of a relay connection ([`Io::start_tls`]): the half keeps reading plaintext
//! from [`Io::input`] and queueing plaintext on [`Io::out`]; the driver reads into and writes
//! from this layer's ciphertext buffers instead, and [`pump`] moves bytes between the two
//! after every callback that may have changed either side.
//!
//! Everything here runs only for TLS connections: [`Relay`](crate::relay::Relay) tests
//! `Io::tls` (one pointer compare) and calls in; a plain connection pays that compare and
//! nothing else, and not even that on a `Relay<D, U, false>` (a server without TLS).

use bytes::{Buf, BytesMut};

use crate::driven::OutQueue;
use crate::relay::{Half, Io};
use crate::runtime::WorkerCtx;

/// Ciphertext queued for the socket beyond which no more plaintext is encrypted: the half's
/// [`Io::out`] then keeps the rest, so its own backpressure (which looks at `io.out.len()`)
/// still works.
pub(crate) const SEAL_WINDOW: usize = 64 * 1024;

/// One connection's TLS session and ciphertext buffers.
#[derive(Debug)]
pub(crate) struct TlsLayer {
    pub(crate) tls: ferry_tls::Tls,
    /// Ciphertext read and not yet fed to the session (drivers append here).
    pub(crate) cipher_in: BytesMut,
    /// Ciphertext (and, first, clear bytes queued before the switch) for the socket.
    pub(crate) out: OutQueue,
    /// The session failed: its alert goes out, then the connection closes.
    pub(crate) failed: bool,
}

impl TlsLayer {
    /// Start TLS on `io`: what is queued goes out in clear first (PostgreSQL's `S`), and
    /// input not consumed yet is the peer's first ciphertext.
    pub(crate) fn start(io: &mut Io, tls: ferry_tls::Tls) -> TlsLayer {
        TlsLayer {
            tls,
            cipher_in: std::mem::take(&mut io.input),
            out: std::mem::take(&mut io.out),
            failed: false,
        }
    }

    fn transmit(&mut self) {
        while let Some(b) = self.tls.poll_transmit() {
            self.out.push(b);
        }
    }

    /// Whether the relay may close the connection: the ciphertext went out and either the
    /// session failed or the half is done.
    #[inline]
    pub(crate) fn finished(&self, half_finished: impl FnOnce() -> bool) -> bool {
        self.out.is_empty() && (self.failed || half_finished())
    }
}

/// Decrypt what was read, encrypt what the half queued (up to [`SEAL_WINDOW`] of ciphertext
/// waiting), send `close_notify` once the half is done or half-closes, and tell the half
/// what moved ([`Half::on_read`], [`Half::on_written`] with plaintext counts).
#[cold]
#[inline(never)]
pub(crate) fn pump<H: Half>(h: &mut H, ctx: &WorkerCtx) {
    let (read, sealed) = {
        let io = h.io_mut();
        let Some(t) = io.tls.as_deref_mut() else {
            return;
        };
        if t.failed {
            t.cipher_in.clear();
            return;
        }
        let before = io.input.len();
        if !t.cipher_in.is_empty() {
            if let Err(e) = t.tls.handle_input(&mut t.cipher_in, &mut io.input) {
                tracing::debug!(error = %e, peer = ?io.peer_addr, "tls failed");
                t.failed = true;
                // Read nothing more; the alert goes out, then the connection closes.
                io.eof = true;
                io.input.truncate(before);
                t.transmit();
                return;
            }
        }
        let read = io.input.len() - before;
        let mut sealed = 0;
        while t.out.len() < SEAL_WINDOW {
            let Some(mut b) = io.out.pop_front() else {
                break;
            };
            let n = t.tls.send(&b);
            sealed += n;
            if n < b.len() {
                b.advance(n);
                io.out.push_front(b);
                if n == 0 {
                    break;
                }
            }
            t.transmit();
        }
        t.transmit();
        (read, sealed)
    };
    if read > 0 {
        h.on_read(ctx, read);
    }
    if sealed > 0 {
        h.on_written(ctx, sealed);
    }
    let done = {
        let io = h.io();
        io.out.is_empty() && !io.tls.as_deref().is_some_and(|t| t.tls.is_closed()) && !io.abort
    } && (h.io().shutdown_write || h.is_finished());
    if done {
        if let Some(t) = h.io_mut().tls.as_deref_mut() {
            t.tls.close();
            t.transmit();
        }
    }
}
