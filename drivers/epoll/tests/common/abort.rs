//! `Session::wants_abort` and `Session::poll_shutdown_write`, run by the same tests on every
//! driver: a session that closes its connection gracefully on `fin`, with an RST on `rst` (or
//! on `big`, after queueing 8 MiB that must not all arrive first: the abort discards unsent
//! output), and half-closes on `half` (FIN after `half\n`, then counts what it still reads);
//! it also records what its input buffer holds after the first read and when the driver finds
//! it idle (`release_idle`). On `wait` (and `waitw`, which then queues a reply) it blocks in
//! `process` until the test says go, and afterwards only counts the bytes of the lines it
//! processes: the test sends bytes and resets the connection meanwhile.

#![allow(dead_code)]

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_driver::{
    ConnInfo, Launch, ListenAddr, OutQueue, Request, Response, ServerHandle, ServerOptions,
    Service, Session, WorkerCtx,
};
use ferry_proto::Instant;

/// What the sessions of one server saw.
#[derive(Default)]
pub struct Seen {
    /// Bytes read after a half-close.
    pub after_half: AtomicUsize,
    /// The input buffer's capacity after a connection's first read (plus one: 0 is unseen).
    pub first_read_capacity: AtomicUsize,
    /// `release_idle` calls.
    pub released: AtomicUsize,
    /// The input buffer's capacity at the last `release_idle` (plus one).
    pub released_capacity: AtomicUsize,
    /// A session blocks in `process` on `wait`/`waitw`.
    pub waiting: AtomicBool,
    /// The test lets it go on.
    pub go: AtomicBool,
    /// Bytes of the lines processed after `wait`/`waitw`.
    pub after_wait: AtomicUsize,
    /// Sessions closed.
    pub closed: AtomicUsize,
}

pub struct Conn {
    seen: Arc<Seen>,
    input: BytesMut,
    out: OutQueue,
    eof: bool,
    finished: bool,
    abort: bool,
    /// `None`: no half-close asked; `Some(false)`: asked, not yet taken by the driver.
    half: Option<bool>,
    /// After `wait`/`waitw`: lines are only counted.
    counting: bool,
}

impl Session for Conn {
    type Shared = Seen;
    type Mail = ();

    fn open(_: &mut WorkerCtx, seen: &Arc<Seen>, _: ConnInfo, _: u32, _: Instant) -> Option<Self> {
        Some(Conn {
            seen: seen.clone(),
            half: None,
            input: BytesMut::new(),
            out: OutQueue::default(),
            eof: false,
            finished: false,
            abort: false,
            counting: false,
        })
    }
    fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }
    fn wants_read(&self, _: &WorkerCtx) -> bool {
        !self.eof && !self.finished && !self.abort
    }
    fn is_finished(&self) -> bool {
        self.finished && self.out.is_empty()
    }
    fn wants_abort(&self) -> bool {
        self.abort
    }
    fn poll_shutdown_write(&mut self) -> bool {
        if self.half == Some(false) {
            self.half = Some(true);
            return true;
        }
        false
    }
    fn saw_eof(&self) -> bool {
        self.eof
    }
    fn has_pending(&self) -> bool {
        false
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn has_output(&self) -> bool {
        !self.out.is_empty()
    }
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        self.out.fill_iov(iov)
    }
    fn written(&mut self, _: &WorkerCtx, n: usize) {
        self.out.written(n)
    }
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        self.out.take_out(max, into)
    }
    fn sent(&mut self, _: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        self.out.sent(n, chunks)
    }
    fn release_idle(&mut self) {
        let cap = self.input.capacity() + 1;
        self.seen.released_capacity.store(cap, Ordering::Relaxed);
        self.seen.released.fetch_add(1, Ordering::Relaxed);
    }
    fn on_read(&mut self, _: &WorkerCtx, n: usize) {
        let cap = self.input.capacity() + 1;
        let _ = self.seen.first_read_capacity.compare_exchange(
            0,
            cap,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if self.half.is_some() {
            self.seen.after_half.fetch_add(n, Ordering::Relaxed);
        }
    }
    fn on_eof(&mut self, _: &mut WorkerCtx, _: Instant) {
        self.eof = true;
        self.finished = true;
    }
    fn on_timeout(&mut self, _: &mut WorkerCtx, _: Instant) {}
    fn begin_shutdown(&mut self, _: &mut WorkerCtx, _: Instant) {
        self.finished = true;
    }
    fn process(&mut self, _: &mut WorkerCtx, _: Instant) {
        // Lines: `fin`, `rst`, `big` (queue 8 MiB, then abort), `half`; others echo.
        while let Some(i) = self.input.iter().position(|&b| b == b'\n') {
            let line = self.input.split_to(i + 1);
            if self.counting {
                self.seen
                    .after_wait
                    .fetch_add(line.len(), Ordering::Relaxed);
                continue;
            }
            if self.half.is_some() {
                if &line[..i] == b"rst" {
                    self.abort = true;
                }
                continue; // nothing may be written after the half-close
            }
            match &line[..i] {
                b"half" => {
                    self.out.push(line.freeze());
                    self.half = Some(false);
                }
                b"fin" => {
                    self.out.push(Bytes::from_static(b"bye\n"));
                    self.finished = true;
                }
                b"rst" => self.abort = true,
                b"wait" | b"waitw" => {
                    self.seen.waiting.store(true, Ordering::Relaxed);
                    let t0 = std::time::Instant::now();
                    while !self.seen.go.load(Ordering::Relaxed)
                        && t0.elapsed() < Duration::from_secs(10)
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if &line[..i] == b"waitw" {
                        self.out.push(Bytes::from_static(b"reply\n"));
                    }
                    self.counting = true;
                }
                b"big" => {
                    self.out.push(Bytes::from(vec![b'x'; 8 << 20]));
                    self.abort = true;
                }
                _ => self.out.push(line.freeze()),
            }
        }
    }
    fn retry_pending(&mut self, _: &mut WorkerCtx, _: Instant) -> bool {
        true
    }
    fn take_mail(_: &mut WorkerCtx, _: &Seen, _: &mut Vec<(usize, ())>) {}
    fn apply_mail(&mut self, _: &mut WorkerCtx, _: (), _: Instant) {}
    fn close(self, _: &mut WorkerCtx) {
        self.seen.closed.fetch_add(1, Ordering::Relaxed);
    }
}

struct NoHttp;
impl Service for NoHttp {
    fn call(&self, _: Request) -> Response {
        Response::text(500, "no\n")
    }
}

pub type Start = fn(Launch, Arc<Seen>) -> io::Result<ServerHandle>;

fn server(start: Start) -> (ServerHandle, SocketAddr, Arc<Seen>) {
    let opts = ServerOptions {
        workers: 1,
        pin: false,
        ..ServerOptions::default()
    };
    let launch = Launch::prepare(
        "127.0.0.1:0".parse::<ListenAddr>().unwrap(),
        opts,
        Arc::new(NoHttp),
    )
    .unwrap();
    let seen = Arc::new(Seen::default());
    let h = start(launch, seen.clone()).unwrap();
    let a = match &h.local_addr {
        ListenAddr::Inet(a) => *a,
        other => panic!("not tcp: {other:?}"),
    };
    (h, a, seen)
}

/// Send `line`, then read until EOF or an error: what arrived and how it ended.
fn exchange(a: SocketAddr, line: &[u8]) -> (Vec<u8>, io::Result<()>) {
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"echo\n").unwrap();
    let mut first = [0u8; 5];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"echo\n");
    s.write_all(line).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (got, Err(e)),
        }
    }
}

/// `fin` closes with a FIN after the queued bytes; `rst` with an RST the peer sees as
/// `ECONNRESET`; `big` too, before the 8 MiB queued ahead of it could all go out.
pub fn abort_sends_rst(start: Start) {
    let (h, a, _) = server(start);
    let (got, end) = exchange(a, b"fin\n");
    assert_eq!(got, b"bye\n");
    end.expect("graceful close");

    let (got, end) = exchange(a, b"rst\n");
    assert!(got.is_empty());
    assert_eq!(
        end.expect_err("reset").kind(),
        io::ErrorKind::ConnectionReset
    );

    let (got, end) = exchange(a, b"big\n");
    assert!(got.len() < 8 << 20, "all of it went out before the RST");
    assert_eq!(
        end.expect_err("reset").kind(),
        io::ErrorKind::ConnectionReset
    );

    h.shutdown.trigger();
    assert_eq!(h.wait(), 0);
}

/// `half`: the reply, then a FIN, while the session still reads (and counts) what comes.
pub fn half_close_keeps_reading(start: Start) {
    let (h, a, seen) = server(start);
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"half\n").unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"half\n");
    s.write_all(b"still here\n").unwrap();
    let t0 = std::time::Instant::now();
    while seen.after_half.load(Ordering::Relaxed) < 11 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen.after_half.load(Ordering::Relaxed), 11);
    h.shutdown.trigger();
    assert_eq!(h.wait(), 0);
}

/// Wait until `done`, bounded by `limit`.
fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection's first read keeps only its bytes (not a whole read chunk); once the
/// connection holds no unconsumed input at an idle sweep (every 2 s), the driver gives its
/// empty input back and calls `release_idle`, and the connection goes on working.
pub fn idle_buffers_given_back(start: Start) {
    let (h, a, seen) = server(start);
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut echo = |line: &[u8]| {
        s.write_all(line).unwrap();
        let mut got = vec![0u8; line.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, line);
    };
    echo(b"hello\n");
    let first = seen.first_read_capacity.load(Ordering::Relaxed);
    assert!(
        first > 0 && first - 1 < 1024,
        "first read: a {} byte buffer",
        first - 1
    );
    echo(b"again\n");
    wait_for("release_idle", Duration::from_secs(20), || {
        seen.released.load(Ordering::Relaxed) > 0
    });
    assert_eq!(
        seen.released_capacity.load(Ordering::Relaxed),
        1,
        "input given back"
    );
    echo(b"still here\n");
    h.shutdown.trigger();
    assert_eq!(h.wait(), 0);
}

/// A peer sends `wait` (or `waitw`: the session then queues a reply), then, while the
/// session is blocked in `process` (nothing more read yet), 1000 lines, and resets the
/// connection (`SO_LINGER {1, 0}`). The session must process every one of those bytes before
/// the connection is closed: the kernel hands queued bytes out before the reset, whether the
/// driver learns of it from a read or from a failed send (`waitw`).
pub fn bytes_before_reset_are_processed(start: Start, first: &[u8]) {
    let (h, a, seen) = server(start);
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(first).unwrap();
    wait_for("session blocked", Duration::from_secs(10), || {
        seen.waiting.load(Ordering::Relaxed)
    });
    let lines = b"0123456789abcdef\n".repeat(1000);
    s.write_all(&lines).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    ferry_driver::driven::linger_zero(fd).unwrap();
    drop(s);
    // The RST has reached the server's socket (loopback delivers it within the close).
    std::thread::sleep(Duration::from_millis(20));
    seen.go.store(true, Ordering::Relaxed);
    wait_for("closed", Duration::from_secs(10), || {
        seen.closed.load(Ordering::Relaxed) == 1
    });
    assert_eq!(seen.after_wait.load(Ordering::Relaxed), lines.len());
    h.shutdown.trigger();
    assert_eq!(h.wait(), 0);
}
