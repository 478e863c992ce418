//! The caller's side of a request in flight: a one-shot slot, waited on or given a callback.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::Error;

/// What a request ends with.
pub type Outcome = Result<http::Response<Bytes>, Error>;

type Callback = Box<dyn FnOnce(Outcome) + Send + 'static>;

enum State {
    Waiting,
    Callback(Callback),
    Done(Outcome),
    Taken,
}

struct Slot {
    state: Mutex<State>,
    ready: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The I/O side's end: completes the slot once. Dropped without completing (the request was
/// lost in a shutdown), it completes with [`Error::Closed`], so no waiter hangs.
pub(crate) struct Completer {
    slot: Option<Arc<Slot>>,
}

impl Completer {
    pub(crate) fn complete(mut self, outcome: Outcome) {
        if let Some(slot) = self.slot.take() {
            finish(&slot, outcome);
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            finish(&slot, Err(Error::Closed));
        }
    }
}

fn finish(slot: &Slot, outcome: Outcome) {
    let mut st = slot.lock();
    match std::mem::replace(&mut *st, State::Taken) {
        State::Callback(f) => {
            drop(st);
            // A panicking callback must not take the I/O worker down with it.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(outcome)));
            if r.is_err() {
                tracing::error!("ferry-client: a response callback panicked");
            }
        }
        State::Waiting => {
            *st = State::Done(outcome);
            drop(st);
            slot.ready.notify_all();
        }
        // Completed twice cannot happen (the completer is consumed); keep the first.
        other => *st = other,
    }
}

/// A pair: the handle for the caller, the completer for the I/O side.
pub(crate) fn pair() -> (ResponseHandle, Completer) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting),
        ready: Condvar::new(),
    });
    (
        ResponseHandle { slot: slot.clone() },
        Completer { slot: Some(slot) },
    )
}

/// A request in flight, returned by [`Client::request`](crate::Client::request).
///
/// Wait for it ([`wait`](Self::wait), [`wait_timeout`](Self::wait_timeout)), poll it
/// ([`try_take`](Self::try_take)), or hand it a callback ([`on_complete`](Self::on_complete)).
/// Dropping it does not cancel the request; its outcome is discarded.
pub struct ResponseHandle {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for ResponseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseHandle")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl ResponseHandle {
    /// A handle already completed with `outcome` (requests refused before they were queued).
    pub(crate) fn ready(outcome: Outcome) -> ResponseHandle {
        let (h, c) = pair();
        c.complete(outcome);
        h
    }

    /// Whether the outcome is there (and not taken yet).
    pub fn is_ready(&self) -> bool {
        matches!(*self.slot.lock(), State::Done(_))
    }

    /// Block until the request completes.
    pub fn wait(self) -> Outcome {
        let mut st = self.slot.lock();
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Done(o) => return o,
                State::Taken => return Err(Error::Closed),
                other => *st = other,
            }
            st = self.slot.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Block at most `timeout`: `Some(outcome)` once complete, `None` if it is not yet (the
    /// request goes on; ask again later). After the outcome was taken, always `None`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Outcome> {
        let until = Instant::now() + timeout;
        let mut st = self.slot.lock();
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Done(o) => return Some(o),
                State::Taken => return None,
                other => *st = other,
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .slot
                .ready
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The outcome if the request completed, without blocking (taken once).
    pub fn try_take(&mut self) -> Option<Outcome> {
        self.wait_timeout(Duration::ZERO)
    }

    /// Run `f` with the outcome: right now on this thread if it is already there, else on the
    /// thread that completes the request (usually the client's I/O worker). `f` MUST NOT
    /// block (it holds up every connection of that worker); it MAY issue new requests.
    pub fn on_complete<F>(self, f: F)
    where
        F: FnOnce(Outcome) + Send + 'static,
    {
        let mut st = self.slot.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Done(o) => {
                drop(st);
                f(o);
            }
            State::Waiting => *st = State::Callback(Box::new(f)),
            State::Taken | State::Callback(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn ok(status: u16) -> Outcome {
        let mut r = http::Response::new(Bytes::new());
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(r)
    }

    #[test]
    fn wait_across_threads() {
        let (h, c) = pair();
        let t = std::thread::spawn(move || c.complete(ok(204)));
        assert_eq!(h.wait().unwrap().status(), 204);
        t.join().unwrap();
    }

    #[test]
    fn wait_timeout_then_take_once() {
        let (mut h, c) = pair();
        assert!(h.wait_timeout(Duration::from_millis(1)).is_none());
        assert!(!h.is_ready());
        c.complete(ok(200));
        assert!(h.is_ready());
        assert_eq!(h.try_take().unwrap().unwrap().status(), 200);
        assert!(h.try_take().is_none(), "taken once");
    }

    #[test]
    fn dropped_completer_means_closed() {
        let (h, c) = pair();
        drop(c);
        assert_eq!(h.wait().unwrap_err(), Error::Closed);
    }

    #[test]
    fn callback_before_and_after_completion() {
        let hit = Arc::new(AtomicBool::new(false));
        let (h, c) = pair();
        let h2 = hit.clone();
        h.on_complete(move |o| h2.store(o.unwrap().status() == 201, Ordering::SeqCst));
        assert!(!hit.load(Ordering::SeqCst));
        c.complete(ok(201));
        assert!(hit.load(Ordering::SeqCst));

        let h = ResponseHandle::ready(Err(Error::Busy));
        let (tx, rx) = std::sync::mpsc::channel();
        h.on_complete(move |o| tx.send(o).unwrap());
        assert_eq!(rx.try_recv().unwrap().unwrap_err(), Error::Busy);
    }

    #[test]
    fn panicking_callback_is_contained() {
        let (h, c) = pair();
        h.on_complete(|_| panic!("boom"));
        c.complete(ok(200)); // must not unwind into the completing thread
    }
}
