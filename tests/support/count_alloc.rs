//! A counting global allocator for allocation tests and benches, shared by `#[path]`:
//!
//! ```ignore
//! #[path = "../../../tests/support/count_alloc.rs"]
//! mod count_alloc;
//! #[global_allocator]
//! static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;
//!
//! let (_, allocations) = count_alloc::counted(|| work());
//! ```
//!
//! Only allocations (`alloc`, `alloc_zeroed`, `realloc`) made by the calling thread inside
//! [`counted`] are counted, so a test harness's own threads do not disturb the figure. For
//! work on threads the test does not own (a server's I/O workers), [`start_process_wide`] …
//! [`stop_process_wide`] counts every thread's allocations except those of threads marked
//! with [`exclude_this_thread`] (the test's own clients and peers). With
//! `FERRY_ALLOC_TRACE=1` a backtrace is printed for each of the first 20 counted allocations,
//! to find where they come from.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Forwards everything to the system allocator, counting allocations of threads inside
/// [`counted`].
pub struct CountingAlloc;

static TRACED: AtomicUsize = AtomicUsize::new(0);
/// Process-wide counting is on.
static PROCESS_WIDE: AtomicBool = AtomicBool::new(false);
/// Allocations counted process-wide.
static PROCESS_COUNT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Count allocations of this thread.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// This thread's counted allocations (per thread: tests running in parallel threads do
    /// not disturb each other).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    /// Set while a backtrace is being captured, whose own allocations must not recurse.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
    /// Left out of process-wide counting.
    static EXCLUDED: Cell<bool> = const { Cell::new(false) };
}

/// Leave the calling thread out of process-wide counting (a test's own client or peer).
pub fn exclude_this_thread() {
    EXCLUDED.with(|e| e.set(true));
}

/// Start counting the allocations of every thread not excluded, from zero.
pub fn start_process_wide() {
    PROCESS_COUNT.store(0, Ordering::SeqCst);
    PROCESS_WIDE.store(true, Ordering::SeqCst);
}

/// Check that process-wide counting sees another thread's allocation.
pub fn assert_counting_process_wide() {
    start_process_wide();
    std::thread::spawn(|| drop(std::hint::black_box(Box::new(7u64))))
        .join()
        .unwrap();
    assert!(stop_process_wide() >= 1, "process-wide counting counts");
}

/// Stop process-wide counting; what it counted.
pub fn stop_process_wide() -> usize {
    PROCESS_WIDE.store(false, Ordering::SeqCst);
    PROCESS_COUNT.load(Ordering::SeqCst)
}

/// Run `f`, returning its result and how many allocations it made on this thread.
pub fn counted<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let was = COUNTING.with(|c| c.replace(true));
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    let n = ALLOCATIONS.with(Cell::get) - before;
    COUNTING.with(|c| c.set(was));
    (r, n)
}

/// Check that the allocator really is installed and counting (one `Box`, one allocation).
pub fn assert_counting() {
    let ((), n) = counted(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(n, 1, "the counting allocator counts");
}

fn record() {
    if PROCESS_WIDE.load(Ordering::Relaxed) && !EXCLUDED.try_with(Cell::get).unwrap_or(true) {
        PROCESS_COUNT.fetch_add(1, Ordering::Relaxed);
    }
    // `try_with`: thread-locals may be gone while a thread exits; then nothing is counted.
    if !COUNTING.try_with(Cell::get).unwrap_or(false)
        || IN_TRACE.try_with(Cell::get).unwrap_or(true)
    {
        return;
    }
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    if std::env::var_os("FERRY_ALLOC_TRACE").is_some()
        && TRACED.fetch_add(1, Ordering::Relaxed) < 20
    {
        IN_TRACE.with(|t| t.set(true));
        eprintln!(
            "allocation:\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        IN_TRACE.with(|t| t.set(false));
    }
}

// SAFETY: every method forwards to `System` with the arguments it was given, so the
// `GlobalAlloc` contract (valid layouts, pointers from this allocator, matching layouts on
// dealloc/realloc) carries over unchanged; the bookkeeping around it touches only atomics and
// `const`-initialised thread-locals without destructors, which never allocate themselves
// (the backtrace's allocations are made with `IN_TRACE` set, so they do not recurse).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record();
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the
        // `new_size` requirements of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
