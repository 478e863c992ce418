//! Heap allocations per proxied request of the HTTP proxy in the steady state: a keep-alive
//! client sends plain GETs one at a time through the proxy (one I/O worker) to a keep-alive
//! upstream; after a warm-up, every allocation the process makes outside the test's own
//! client and upstream threads is counted over a bounded run, on both drivers.
//!
//! The client and the upstream mark their threads as not counted; what remains is the
//! proxy's I/O worker (the whole request path: the driver, `ferry-http1`, `ferry-pool`,
//! the proxy) and anything else the proxy runs meanwhile (its 100 ms tick). To find where
//! allocations come from: `valgrind --tool=callgrind` on the proxy, then
//! `callgrind_annotate --tree=caller` on `malloc`.
//!
//! Loopback only; the run is bounded in count and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ferry_driver::DriverKind;

mod common;
use common::{config, proxy};

#[path = "../../../tests/support/count_alloc.rs"]
mod count_alloc;

#[global_allocator]
static GLOBAL: count_alloc::CountingAlloc = count_alloc::CountingAlloc;

/// What the upstream answers (nginx-like, keep-alive).
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 16:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n";

/// What the client sends (wrk-like).
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// Read from `s` until what was read ends with `end` (no allocation: a fixed buffer).
fn read_until(s: &mut TcpStream, buf: &mut [u8; 4096], end: &[u8]) -> bool {
    let mut n = 0;
    loop {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
        if buf[..n].ends_with(end) {
            return true;
        }
        if n == buf.len() {
            return false;
        }
    }
}

/// An upstream answering every request on its first connection with [`RESPONSE`].
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        count_alloc::exclude_this_thread();
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                count_alloc::exclude_this_thread();
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut buf = [0u8; 4096];
                while read_until(&mut s, &mut buf, b"\r\n\r\n") {
                    if s.write_all(RESPONSE).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Allocations per request (counted over `n` requests after `warm` of warm-up).
fn per_request(driver: DriverKind, warm: usize, n: usize) -> f64 {
    let (p, addr) = proxy(driver, config(vec![upstream()]));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        count_alloc::exclude_this_thread();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        for k in 0..warm + n {
            if k == warm {
                count_alloc::start_process_wide();
            }
            s.write_all(REQUEST).unwrap();
            assert!(
                read_until(&mut s, &mut buf, b"hello world\n"),
                "response {k}"
            );
            assert!(started.elapsed() < Duration::from_secs(120), "bounded");
        }
        tx.send(count_alloc::stop_process_wide()).unwrap();
    });
    let count = rx
        .recv_timeout(Duration::from_secs(150))
        .expect("the client finished");
    p.handle.shutdown.trigger();
    count as f64 / n as f64
}

/// The most allocations per proxied request allowed (measured: 0.000-0.002 for both
/// drivers, i.e. none per request, a handful per run from timers; before the mails' boxes
/// were reused: 2.000). The bound leaves room for rare timer-driven allocations, never for
/// one per request.
const MAX_PER_REQUEST: f64 = 0.05;

/// One run at a time (the counter is process-wide; `cargo test` runs tests in threads).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn steady_state(driver: DriverKind) {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    count_alloc::assert_counting_process_wide();
    let per = per_request(driver, 300, 3000);
    eprintln!("{driver:?}: {per:.3} allocations per proxied request");
    assert!(
        per <= MAX_PER_REQUEST,
        "{driver:?}: {per:.3} allocations per proxied request (at most {MAX_PER_REQUEST})"
    );
}

#[test]
fn steady_state_allocations_epoll() {
    steady_state(DriverKind::Epoll);
}

#[test]
fn steady_state_allocations_uring() {
    steady_state(DriverKind::Uring);
}
