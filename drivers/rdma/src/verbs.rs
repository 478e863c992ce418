//! The small verbs surface the stream needs, a buffer ring over registered memory, and an
//! in-memory fake backend that runs two endpoints against each other without a device.
//!
//! A backend owns one registered memory region split into `send_slots + recv_slots` buffers
//! of `slot_size` bytes, and one RC queue pair with one completion queue. The stream decides
//! which slot to post; the backend only moves bytes and reports completions.
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// The send from `slot` finished; the slot may be reused.
    Send {
        /// Send slot.
        slot: usize,
    },
    /// A message of `len` bytes arrived in receive slot `slot`.
    Recv {
        /// Receive slot.
        slot: usize,
        /// Bytes received.
        len: usize,
    },
    /// A work request failed (`status` is the backend's code, e.g. `ibv_wc_status`).
    Failed {
        /// Work request id.
        wr_id: u64,
        /// Status code.
        status: u32,
    },
}

/// A verbs operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum VerbsError {
    /// A slot index outside the ring, or a length over the slot size.
    BadSlot,
    /// The connection is gone.
    Disconnected,
    /// The device call failed.
    Io {
        /// Which verb.
        op: &'static str,
        /// OS error.
        source: std::io::Error,
    },
}

impl fmt::Display for VerbsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerbsError::BadSlot => f.write_str("bad buffer slot or length"),
            VerbsError::Disconnected => f.write_str("queue pair disconnected"),
            VerbsError::Io { op, source } => write!(f, "{op}: {source}"),
        }
    }
}

impl std::error::Error for VerbsError {}

/// What the stream needs from a verbs backend.
pub trait Verbs {
    /// Bytes per buffer slot.
    fn slot_size(&self) -> usize;
    /// Number of send slots.
    fn send_slots(&self) -> usize;
    /// Number of receive slots.
    fn recv_slots(&self) -> usize;
    /// Fill send slot `slot` through `f` (which gets the whole slot).
    fn with_send_buf<R>(&mut self, slot: usize, f: impl FnOnce(&mut [u8]) -> R) -> R;
    /// Read receive slot `slot` through `f`.
    fn with_recv_buf<R>(&self, slot: usize, f: impl FnOnce(&[u8]) -> R) -> R;
    /// Post a `SEND` of `len` bytes from send slot `slot`.
    fn post_send(&mut self, slot: usize, len: usize) -> Result<(), VerbsError>;
    /// Post receive slot `slot`.
    fn post_recv(&mut self, slot: usize) -> Result<(), VerbsError>;
    /// Append available completions to `out` (never blocks).
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), VerbsError>;
}

/// Free-list of send slots: a slot is busy from post until its send completion.
#[derive(Clone, Debug)]
pub struct SlotRing {
    free: VecDeque<usize>,
    busy: Vec<bool>,
}

impl SlotRing {
    /// `n` free slots.
    pub fn new(n: usize) -> SlotRing {
        SlotRing {
            free: (0..n).collect(),
            busy: vec![false; n],
        }
    }

    /// Take a free slot.
    pub fn acquire(&mut self) -> Option<usize> {
        let s = self.free.pop_front()?;
        self.busy[s] = true;
        Some(s)
    }

    /// Return a slot; `false` if it was not busy (a duplicate or foreign completion).
    pub fn release(&mut self, slot: usize) -> bool {
        match self.busy.get_mut(slot) {
            Some(b) if *b => {
                *b = false;
                self.free.push_back(slot);
                true
            }
            _ => false,
        }
    }

    /// Free slots.
    pub fn free(&self) -> usize {
        self.free.len()
    }
}

#[derive(Debug)]
struct Side {
    send: Vec<Vec<u8>>,
    recv: Vec<Vec<u8>>,
    posted: VecDeque<usize>,
    cq: VecDeque<Completion>,
}

#[derive(Debug)]
struct Wire {
    sides: [Side; 2],
    /// Sends posted and not yet delivered, per sender: (send slot, len).
    in_flight: [VecDeque<(usize, usize)>; 2],
    connected: bool,
}

/// `IBV_WC_RNR_RETRY_EXC_ERR`: the status a real adapter reports when the peer never posted a
/// receive.
pub const RNR_RETRY_EXCEEDED: u32 = 13;

impl Wire {
    /// Deliver every send in flight, reading the send slot *now* (as a real adapter may, any
    /// time before the send completion), so reusing a slot early corrupts data visibly.
    fn deliver(&mut self) {
        for from in 0..2 {
            let to = 1 - from;
            while let Some((slot, len)) = self.in_flight[from].pop_front() {
                let Some(dst) = self.sides[to].posted.pop_front() else {
                    self.sides[from].cq.push_back(Completion::Failed {
                        wr_id: slot as u64,
                        status: RNR_RETRY_EXCEEDED,
                    });
                    self.connected = false;
                    continue;
                };
                let data = self.sides[from].send[slot][..len].to_vec();
                self.sides[to].recv[dst][..len].copy_from_slice(&data);
                self.sides[to]
                    .cq
                    .push_back(Completion::Recv { slot: dst, len });
                self.sides[from].cq.push_back(Completion::Send { slot });
            }
        }
    }
}

/// An in-memory backend: two of them ([`FakeVerbs::pair`]) behave like the two ends of an RC
/// queue pair. Posted sends are delivered when either side polls, reading the send slot at
/// that moment (so a slot reused before its completion shows up as corrupt data). A send
/// that finds no receive posted on the peer completes with [`RNR_RETRY_EXCEEDED`] and breaks
/// the connection, as a real queue pair does once its RNR retries run out, so tests catch
/// flow-control bugs.
#[derive(Debug, Clone)]
pub struct FakeVerbs {
    wire: Arc<Mutex<Wire>>,
    me: usize,
    slot_size: usize,
    send_slots: usize,
    recv_slots: usize,
}

impl FakeVerbs {
    /// Two connected ends with the given geometry.
    pub fn pair(slot_size: usize, send_slots: usize, recv_slots: usize) -> (FakeVerbs, FakeVerbs) {
        let side = || Side {
            send: vec![vec![0; slot_size]; send_slots],
            recv: vec![vec![0; slot_size]; recv_slots],
            posted: VecDeque::new(),
            cq: VecDeque::new(),
        };
        let wire = Arc::new(Mutex::new(Wire {
            sides: [side(), side()],
            in_flight: [VecDeque::new(), VecDeque::new()],
            connected: true,
        }));
        let mk = |me| FakeVerbs {
            wire: wire.clone(),
            me,
            slot_size,
            send_slots,
            recv_slots,
        };
        (mk(0), mk(1))
    }

    /// Break the connection (both ends see [`VerbsError::Disconnected`]).
    pub fn disconnect(&self) {
        self.lock().connected = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wire> {
        self.wire.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Verbs for FakeVerbs {
    fn slot_size(&self) -> usize {
        self.slot_size
    }
    fn send_slots(&self) -> usize {
        self.send_slots
    }
    fn recv_slots(&self) -> usize {
        self.recv_slots
    }
    fn with_send_buf<R>(&mut self, slot: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut w = self.lock();
        let me = self.me;
        f(&mut w.sides[me].send[slot])
    }
    fn with_recv_buf<R>(&self, slot: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let w = self.lock();
        f(&w.sides[self.me].recv[slot])
    }
    fn post_send(&mut self, slot: usize, len: usize) -> Result<(), VerbsError> {
        if slot >= self.send_slots || len > self.slot_size {
            return Err(VerbsError::BadSlot);
        }
        let mut w = self.lock();
        if !w.connected {
            return Err(VerbsError::Disconnected);
        }
        let me = self.me;
        w.in_flight[me].push_back((slot, len));
        Ok(())
    }
    fn post_recv(&mut self, slot: usize) -> Result<(), VerbsError> {
        if slot >= self.recv_slots {
            return Err(VerbsError::BadSlot);
        }
        let mut w = self.lock();
        if !w.connected {
            return Err(VerbsError::Disconnected);
        }
        let me = self.me;
        w.sides[me].posted.push_back(slot);
        Ok(())
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), VerbsError> {
        let mut w = self.lock();
        w.deliver();
        let me = self.me;
        out.extend(w.sides[me].cq.drain(..));
        if !w.connected && out.is_empty() {
            return Err(VerbsError::Disconnected);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ring() {
        let mut r = SlotRing::new(2);
        let a = r.acquire().unwrap();
        let b = r.acquire().unwrap();
        assert_eq!(r.acquire(), None);
        assert!(r.release(a));
        assert!(!r.release(a));
        assert!(!r.release(9));
        assert_eq!(r.free(), 1);
        assert!(r.release(b));
    }

    #[test]
    fn fake_rnr_and_delivery() {
        let (mut a, mut b) = FakeVerbs::pair(16, 2, 2);
        b.post_recv(1).unwrap();
        a.with_send_buf(0, |s| s[..3].copy_from_slice(b"abc"));
        a.post_send(0, 3).unwrap();
        // Delivery reads the slot late: the last write before a poll wins.
        a.with_send_buf(0, |s| s[..3].copy_from_slice(b"xyz"));
        let mut out = Vec::new();
        b.poll(&mut out).unwrap();
        assert_eq!(out, vec![Completion::Recv { slot: 1, len: 3 }]);
        assert_eq!(b.with_recv_buf(1, |r| r[..3].to_vec()), b"xyz");
        out.clear();
        a.poll(&mut out).unwrap();
        assert_eq!(out, vec![Completion::Send { slot: 0 }]);
        assert!(matches!(a.post_send(5, 1), Err(VerbsError::BadSlot)));
        // No receive posted: RNR, connection broken.
        a.post_send(1, 1).unwrap();
        out.clear();
        a.poll(&mut out).unwrap();
        assert_eq!(
            out,
            vec![Completion::Failed {
                wr_id: 1,
                status: RNR_RETRY_EXCEEDED
            }]
        );
        assert!(matches!(b.post_recv(0), Err(VerbsError::Disconnected)));
    }

    #[test]
    fn fake_disconnect() {
        let (a, mut b) = FakeVerbs::pair(16, 2, 2);
        a.disconnect();
        assert!(matches!(b.post_recv(0), Err(VerbsError::Disconnected)));
        assert!(matches!(
            b.poll(&mut Vec::new()),
            Err(VerbsError::Disconnected)
        ));
    }
}
