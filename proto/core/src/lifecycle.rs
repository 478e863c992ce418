//! The design's eight-state connection lifecycle.
//!
//! ```text
//!  Disconnected ──► Connecting ──► Connected ──► Authenticating ──► Ready
//!        ▲               │             │  └──────────────────────────►│
//!        │               ▼             ▼                              ▼
//!        └────────── Closed ◄──── Closing ◄───────────────────────────┘
//!   (any state except Closed may go to Error; Error and Closed may restart at Disconnected)
//! ```

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

/// A connection's lifecycle state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum State {
    /// No connection.
    #[default]
    Disconnected = 0,
    /// Establishment in progress (TCP connect, TLS handshake).
    Connecting = 1,
    /// Transport established; the protocol has not yet done its handshake.
    Connected = 2,
    /// Authentication or protocol handshake in progress (SETTINGS, HELLO, startup).
    Authenticating = 3,
    /// Can send and receive application messages.
    Ready = 4,
    /// Graceful shutdown in progress (GOAWAY sent, `Connection: close`, draining).
    Closing = 5,
    /// Closed cleanly.
    Closed = 6,
    /// Failed; the error was reported.
    Error = 7,
}

impl State {
    /// Every state, in declaration order (index = `state as usize`).
    pub const ALL: [State; 8] = [
        State::Disconnected,
        State::Connecting,
        State::Connected,
        State::Authenticating,
        State::Ready,
        State::Closing,
        State::Closed,
        State::Error,
    ];

    /// Lower-case name, for metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            State::Disconnected => "disconnected",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Authenticating => "authenticating",
            State::Ready => "ready",
            State::Closing => "closing",
            State::Closed => "closed",
            State::Error => "error",
        }
    }

    /// Whether the lifecycle allows going from `self` to `to`.
    pub const fn can_transition_to(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Disconnected, Connecting)
                | (Disconnected, Connected)
                | (Connecting, Connected)
                | (Connecting, Closed)
                | (Connected, Authenticating)
                | (Connected, Ready)
                | (Connected, Closing)
                | (Connected, Closed)
                | (Authenticating, Ready)
                | (Authenticating, Closing)
                | (Authenticating, Closed)
                | (Ready, Closing)
                | (Ready, Closed)
                | (Closing, Closed)
                | (Closed, Disconnected)
                | (Error, Disconnected)
        ) || (matches!(to, Error) && !matches!(self, Closed | Error))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A transition the lifecycle does not allow; the state is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidTransition {
    /// State before the attempt.
    pub from: State,
    /// Requested state.
    pub to: State,
}

impl fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid lifecycle transition {} -> {}",
            self.from, self.to
        )
    }
}

impl core::error::Error for InvalidTransition {}

/// Told about every transition of a [`Lifecycle`] it is attached to.
pub trait LifecycleObserver: Send {
    /// Called after the state changed from `from` to `to`.
    fn on_transition(&mut self, from: State, to: State);
}

impl<F: FnMut(State, State) + Send> LifecycleObserver for F {
    fn on_transition(&mut self, from: State, to: State) {
        self(from, to)
    }
}

/// The lifecycle state machine a connection reports, with per-transition counters.
///
/// Counters count entries into each state, so a metrics exporter can sum them across
/// connections (`entered(State::Error)` is the number of failures seen).
pub struct Lifecycle {
    state: State,
    entered: [u64; 8],
    observers: Vec<Box<dyn LifecycleObserver>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new(State::Disconnected)
    }
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("state", &self.state)
            .field("entered", &self.entered)
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl Lifecycle {
    /// A lifecycle starting in `state` (counted as entered once).
    pub fn new(state: State) -> Self {
        let mut entered = [0; 8];
        entered[state as usize] = 1;
        Lifecycle {
            state,
            entered,
            observers: Vec::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// How many times `state` was entered.
    pub fn entered(&self, state: State) -> u64 {
        self.entered[state as usize]
    }

    /// Attach an observer, told of every later transition.
    pub fn observe(&mut self, observer: Box<dyn LifecycleObserver>) {
        self.observers.push(observer);
    }

    /// Move to `to`. Going to the current state is a no-op returning `Ok(false)`; a transition
    /// the lifecycle forbids returns an error and leaves the state unchanged.
    pub fn transition(&mut self, to: State) -> Result<bool, InvalidTransition> {
        let from = self.state;
        if from == to {
            return Ok(false);
        }
        if !from.can_transition_to(to) {
            return Err(InvalidTransition { from, to });
        }
        self.state = to;
        self.entered[to as usize] += 1;
        for o in &mut self.observers {
            o.on_transition(from, to);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn happy_path_counts_and_observes() {
        let seen = Arc::new(AtomicU32::new(0));
        let s2 = seen.clone();
        let mut l = Lifecycle::new(State::Disconnected);
        l.observe(Box::new(move |_from: State, _to: State| {
            s2.fetch_add(1, Ordering::Relaxed);
        }));
        for s in [
            State::Connecting,
            State::Connected,
            State::Authenticating,
            State::Ready,
            State::Closing,
            State::Closed,
        ] {
            assert_eq!(l.transition(s), Ok(true));
        }
        assert_eq!(l.state(), State::Closed);
        assert_eq!(seen.load(Ordering::Relaxed), 6);
        assert_eq!(l.entered(State::Ready), 1);
        assert_eq!(l.transition(State::Closed), Ok(false));
    }

    #[test]
    fn forbidden_transitions_leave_state() {
        let mut l = Lifecycle::new(State::Ready);
        assert_eq!(
            l.transition(State::Connecting),
            Err(InvalidTransition {
                from: State::Ready,
                to: State::Connecting
            })
        );
        assert_eq!(l.state(), State::Ready);
        assert_eq!(l.transition(State::Error), Ok(true));
        assert!(l.transition(State::Ready).is_err());
        assert_eq!(l.transition(State::Disconnected), Ok(true));
    }

    #[test]
    fn every_state_but_closed_and_error_can_fail() {
        for s in State::ALL {
            assert_eq!(
                s.can_transition_to(State::Error),
                !matches!(s, State::Closed | State::Error)
            );
        }
    }
}
