//! Graceful shutdown: a shared stop flag plus wakers, and the `eventfd` that wakes a worker.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Something that interrupts a worker's wait (an `eventfd` it polls).
pub trait Wake: Send + Sync {
    /// Wake the worker. Cheap and idempotent; MAY be called from any thread.
    fn wake(&self);
}

/// A non-blocking `eventfd`: the I/O workers' doorbell, polled by epoll and io_uring alike.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
    /// Set while a wake is pending, so a burst of wakes costs one `write`.
    armed: AtomicBool,
}

impl EventFd {
    /// A new eventfd (non-blocking, close-on-exec).
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; we check the result before using it.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: AtomicBool::new(false),
        })
    }

    /// Reset the counter after a wake-up (call before looking at what the wakers posted).
    pub fn drain(&self) {
        self.armed.store(false, Ordering::SeqCst);
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a valid, writable u64 from a descriptor we own; a
        // non-blocking eventfd with a zero counter returns EAGAIN, which we ignore.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        if self.armed.swap(true, Ordering::SeqCst) {
            return;
        }
        let v = 1u64;
        // SAFETY: writes 8 bytes from a valid u64 to a descriptor we own.
        unsafe { libc::write(self.fd.as_raw_fd(), (&v as *const u64).cast(), 8) };
    }
}

#[derive(Default)]
struct Inner {
    stop: AtomicBool,
    wakers: Mutex<Vec<Arc<dyn Wake>>>,
}

/// A shared stop flag: [`trigger`](Shutdown::trigger) sets it and wakes every registered
/// worker, which then stops accepting, closes idle connections and drains the rest.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Shutdown {
    /// A flag that is not set.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Register a worker to wake on trigger.
    pub fn register(&self, w: Arc<dyn Wake>) {
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w);
        if self.is_triggered() {
            // Triggered before we registered: make sure this worker sees it.
            self.wake_all();
        }
    }

    /// Set the flag and wake every worker.
    pub fn trigger(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    fn wake_all(&self) {
        for w in self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            w.wake();
        }
    }

    /// Whether the flag is set.
    pub fn is_triggered(&self) -> bool {
        self.inner.stop.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn trigger_wakes_registered_eventfds() {
        let s = Shutdown::new();
        let e = Arc::new(EventFd::new().unwrap());
        s.register(e.clone());
        assert!(!readable(e.as_raw_fd()));
        assert!(!s.is_triggered());
        s.clone().trigger();
        assert!(s.is_triggered());
        assert!(readable(e.as_raw_fd()));
        e.drain();
        assert!(!readable(e.as_raw_fd()));
        e.wake();
        e.wake();
        assert!(readable(e.as_raw_fd()));
    }
}
