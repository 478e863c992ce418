//! The stream state machine (RFC 9113 §5.1) and flow-control windows (§5.2, §6.9).
//!
//! ```text
//!                          +--------+
//!                  send PP |        | recv PP
//!                 ,--------+  idle  +--------.
//!                /         |        |         \
//!               v          +--------+          v
//!        +----------+          |           +----------+
//!        |          |          | send H /  |          |
//! ,------+ reserved |          | recv H    | reserved +------.
//! |      | (local)  |          |           | (remote) |      |
//! |      +---+------+          v           +------+---+      |
//! |          |             +--------+             |          |
//! |          |     recv ES |        | send ES     |          |
//! |   send H |     ,-------+  open  +-------.     | recv H   |
//! |          |    /        |        |        \    |          |
//! |          v   v         +---+----+         v   v          |
//! |      +----------+          |           +----------+      |
//! |      |   half-  |          |           |   half-  |      |
//! |      |  closed  |          | send R /  |  closed  |      |
//! |      | (remote) |          | recv R    | (local)  |      |
//! |      +----+-----+          |           +-----+----+      |
//! |           |                |                 |           |
//! |           | send ES /      |       recv ES / |           |
//! |           |  send R /      v        send R / |           |
//! |           |  recv R    +--------+   recv R   |           |
//! | send R /  `----------->|        |<-----------'  send R / |
//! | recv R                 | closed |               recv R   |
//! `----------------------->|        |<-----------------------'
//!                          +--------+
//! ```
//! Closed streams are dropped from the connection's map; frames for them are judged from the
//! identifier alone (see the connection).

use crate::frame::MAX_WINDOW;
use crate::Reason;

/// A stream's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Not yet used.
    Idle,
    /// We promised it (PUSH_PROMISE sent).
    ReservedLocal,
    /// The peer promised it (PUSH_PROMISE received).
    ReservedRemote,
    /// Both sides may send.
    Open,
    /// We sent END_STREAM.
    HalfClosedLocal,
    /// The peer sent END_STREAM.
    HalfClosedRemote,
    /// Done.
    Closed,
}

/// A transition the RFC forbids, and how it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// RST_STREAM with this code.
    Stream(Reason),
    /// GOAWAY with this code.
    Connection(Reason),
}

/// What kind of frame arrived, for [`State::recv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// HEADERS (`end_stream`).
    Headers(bool),
    /// DATA (`end_stream`).
    Data(bool),
    /// RST_STREAM.
    Reset,
    /// WINDOW_UPDATE.
    WindowUpdate,
    /// PRIORITY / PRIORITY_UPDATE.
    Priority,
}

/// What we send, for [`State::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Send {
    /// HEADERS (`end_stream`).
    Headers(bool),
    /// DATA (`end_stream`).
    Data(bool),
    /// RST_STREAM.
    Reset,
    /// PUSH_PROMISE reserving this stream.
    PushPromise,
}

impl State {
    /// The state after receiving `frame`, or the error the RFC names.
    pub fn recv(self, frame: Recv) -> Result<State, Violation> {
        use State::*;
        const PROTOCOL: Violation = Violation::Connection(Reason::PROTOCOL_ERROR);
        const CLOSED: Violation = Violation::Stream(Reason::STREAM_CLOSED);
        match (self, frame) {
            (_, Recv::Priority) => Ok(self),
            (Idle, Recv::Headers(es)) => Ok(if es { HalfClosedRemote } else { Open }),
            (Idle, _) => Err(PROTOCOL),
            (ReservedLocal, Recv::Reset) | (ReservedRemote, Recv::Reset) => Ok(Closed),
            (ReservedLocal, Recv::WindowUpdate) => Ok(self),
            (ReservedLocal, _) => Err(PROTOCOL),
            (ReservedRemote, Recv::Headers(es)) => Ok(if es { Closed } else { HalfClosedLocal }),
            (ReservedRemote, _) => Err(PROTOCOL),
            (Open, Recv::Headers(es)) | (Open, Recv::Data(es)) => {
                Ok(if es { HalfClosedRemote } else { Open })
            }
            (HalfClosedLocal, Recv::Headers(es)) | (HalfClosedLocal, Recv::Data(es)) => {
                Ok(if es { Closed } else { HalfClosedLocal })
            }
            (Open | HalfClosedLocal | HalfClosedRemote, Recv::Reset) => Ok(Closed),
            (Open | HalfClosedLocal | HalfClosedRemote, Recv::WindowUpdate) => Ok(self),
            (HalfClosedRemote, _) => Err(CLOSED),
            (Closed, Recv::WindowUpdate | Recv::Reset) => Ok(Closed),
            (Closed, _) => Err(CLOSED),
        }
    }

    /// The state after sending `frame`; `None` if we may not send it now.
    pub fn send(self, frame: Send) -> Option<State> {
        use State::*;
        Some(match (self, frame) {
            (Idle, Send::Headers(es)) => {
                if es {
                    HalfClosedLocal
                } else {
                    Open
                }
            }
            (Idle, Send::PushPromise) => ReservedLocal,
            (ReservedLocal, Send::Headers(es)) => {
                if es {
                    Closed
                } else {
                    HalfClosedRemote
                }
            }
            (Open, Send::Headers(es) | Send::Data(es)) => {
                if es {
                    HalfClosedLocal
                } else {
                    Open
                }
            }
            (HalfClosedRemote, Send::Headers(es) | Send::Data(es)) => {
                if es {
                    Closed
                } else {
                    HalfClosedRemote
                }
            }
            (Idle | Closed, Send::Reset) => return None,
            (_, Send::Reset) => Closed,
            _ => return None,
        })
    }

    /// Whether we may still send on this stream.
    pub fn can_send(self) -> bool {
        matches!(
            self,
            State::Open | State::HalfClosedRemote | State::ReservedLocal
        )
    }

    /// Whether the peer may still send DATA on this stream.
    pub fn can_recv(self) -> bool {
        matches!(self, State::Open | State::HalfClosedLocal)
    }
}

/// A flow-control violation: a window would pass 2^31-1, or the peer sent more than its
/// credit (FLOW_CONTROL_ERROR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowControlError;

/// A flow-control window: signed, because SETTINGS_INITIAL_WINDOW_SIZE changes may make it
/// negative (RFC 9113 §6.9.2), and never above 2^31-1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window(i64);

impl Window {
    /// A window of `n` octets.
    pub const fn new(n: u32) -> Window {
        Window(n as i64)
    }

    /// The available octets (0 when negative).
    pub fn available(self) -> usize {
        self.0.max(0) as usize
    }

    /// The signed value.
    pub fn get(self) -> i64 {
        self.0
    }

    /// Grow by a WINDOW_UPDATE increment or a settings delta; `Err` if it would pass 2^31-1
    /// (FLOW_CONTROL_ERROR).
    pub fn adjust(&mut self, delta: i64) -> Result<(), FlowControlError> {
        let n = self.0 + delta;
        if n > MAX_WINDOW as i64 {
            return Err(FlowControlError);
        }
        self.0 = n;
        Ok(())
    }

    /// Consume `n` octets we sent or received; `Err` if the window is smaller (receiving more
    /// than allowed is FLOW_CONTROL_ERROR).
    pub fn consume(&mut self, n: usize) -> Result<(), FlowControlError> {
        if (n as i64) > self.0 {
            return Err(FlowControlError);
        }
        self.0 -= n as i64;
        Ok(())
    }
}

/// Receive-side accounting with the replenish strategy: octets the application has consumed
/// are returned to the peer in one WINDOW_UPDATE once they reach half of the target window, so
/// a bulk transfer sees at most two updates per window and never stalls at line rate.
#[derive(Clone, Copy, Debug)]
pub struct RecvFlow {
    /// Credit the peer still has.
    pub window: Window,
    /// Consumed octets not yet returned.
    pub unacked: u32,
    /// The window we aim to keep open.
    pub target: u32,
}

impl RecvFlow {
    /// A window that starts at `initial` and is kept at `target`.
    pub fn new(initial: u32, target: u32) -> RecvFlow {
        RecvFlow {
            window: Window::new(initial),
            unacked: 0,
            target,
        }
    }

    /// The peer sent `n` octets: `Err` if it exceeded its credit.
    pub fn recv(&mut self, n: usize) -> Result<(), FlowControlError> {
        self.window.consume(n)
    }

    /// The application consumed `n` octets; returns the increment to send now, if any.
    pub fn release(&mut self, n: u32) -> Option<u32> {
        self.unacked = self.unacked.saturating_add(n);
        // Return credit once half the target is consumed (or the window ran low).
        let low = self.window.get() < (self.target / 2) as i64;
        if self.unacked > 0
            && (self.unacked >= self.target / 2 || (low && self.unacked >= self.target / 4))
        {
            let inc = self
                .unacked
                .min(MAX_WINDOW - self.window.get().clamp(0, MAX_WINDOW as i64) as u32);
            if inc == 0 {
                return None;
            }
            self.unacked -= inc;
            self.window.0 += inc as i64;
            return Some(inc);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_request_lifecycle() {
        let s = State::Idle.recv(Recv::Headers(false)).unwrap();
        assert_eq!(s, State::Open);
        let s = s.recv(Recv::Data(true)).unwrap();
        assert_eq!(s, State::HalfClosedRemote);
        assert_eq!(
            s.recv(Recv::Data(false)),
            Err(Violation::Stream(Reason::STREAM_CLOSED))
        );
        assert_eq!(
            s.recv(Recv::Headers(true)),
            Err(Violation::Stream(Reason::STREAM_CLOSED))
        );
        assert_eq!(s.recv(Recv::WindowUpdate), Ok(s));
        let s = s.send(Send::Headers(false)).unwrap();
        assert_eq!(s.send(Send::Data(true)), Some(State::Closed));
    }

    #[test]
    fn idle_and_reserved_rules() {
        let p = Violation::Connection(Reason::PROTOCOL_ERROR);
        assert_eq!(State::Idle.recv(Recv::Data(false)), Err(p));
        assert_eq!(State::Idle.recv(Recv::Reset), Err(p));
        assert_eq!(State::Idle.recv(Recv::WindowUpdate), Err(p));
        assert_eq!(State::Idle.recv(Recv::Priority), Ok(State::Idle));
        assert_eq!(State::ReservedRemote.recv(Recv::Data(false)), Err(p));
        assert_eq!(
            State::ReservedRemote.recv(Recv::Headers(false)),
            Ok(State::HalfClosedLocal)
        );
        assert_eq!(State::ReservedLocal.recv(Recv::Headers(false)), Err(p));
        assert_eq!(
            State::Idle.send(Send::PushPromise),
            Some(State::ReservedLocal)
        );
        assert_eq!(
            State::ReservedLocal.send(Send::Headers(false)),
            Some(State::HalfClosedRemote)
        );
        assert_eq!(State::ReservedLocal.send(Send::Data(false)), None);
        assert_eq!(State::HalfClosedLocal.send(Send::Data(false)), None);
        assert_eq!(State::Open.send(Send::Reset), Some(State::Closed));
        assert_eq!(
            State::Closed.recv(Recv::Data(false)),
            Err(Violation::Stream(Reason::STREAM_CLOSED))
        );
    }

    #[test]
    fn windows_go_negative_and_cap() {
        let mut w = Window::new(10);
        w.consume(10).unwrap();
        assert!(w.consume(1).is_err());
        w.adjust(-5).unwrap();
        assert_eq!((w.get(), w.available()), (-5, 0));
        assert!(w.adjust(MAX_WINDOW as i64 + 6).is_err());
        w.adjust(MAX_WINDOW as i64 + 5).unwrap();
    }

    #[test]
    fn replenish_at_half_window() {
        let mut f = RecvFlow::new(100, 100);
        f.recv(40).unwrap();
        assert_eq!(f.release(40), None);
        f.recv(20).unwrap();
        assert_eq!(f.release(20), Some(60));
        assert_eq!(f.window.get(), 100);
        assert!(f.recv(101).is_err());
    }
}
