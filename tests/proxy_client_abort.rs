//! `ferry proxy --protocol http`: an HTTP/1.x client that goes away (reset, or EOF with a
//! complete request in flight) aborts its upstream work, as nginx
//! (`proxy_ignore_client_abort off`) and Envoy do: the upstream connection carrying the
//! request is closed (never pooled mid-response), the exchange is logged 499 and counted in
//! `ferry_proxy_client_aborts_total`, nothing is retried, and the pool's figures on
//! `/metrics` come back to what the live connections are.
//!
//! The upstream is this file's [`Up`]: raw TCP, it records every request line per accepted
//! connection and whether the proxy closed that connection; `/hold…` is never answered,
//! `/stream` gets a head and the first part of a large body, then nothing more; anything
//! else gets `ok` and `Connection: close` (so no connection is ever pooled idle: each
//! upstream connection carries one exchange, and a reused one would show).
//! Nothing here asserts timing; every wait is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{admin_metrics, reset, tmp_dir, Server};

/// Bytes of `/stream`'s body the upstream sends before it holds (of [`STREAM_LEN`]).
const STREAM_FIRST: usize = 64 * 1024;
const STREAM_LEN: usize = 4 << 20;

/// What the upstream saw on one connection.
#[derive(Debug, Default, Clone)]
struct Conn {
    /// Request lines, in order (each once its body is complete).
    requests: Vec<String>,
    /// Bytes received.
    bytes: usize,
    /// The proxy closed (or reset) the connection.
    closed: bool,
}

type Seen = Arc<(Mutex<Vec<Conn>>, Condvar)>;

/// The recording upstream; stopped on drop.
struct Up {
    addr: SocketAddr,
    seen: Seen,
    stop: Arc<AtomicBool>,
}

impl Up {
    fn start() -> Up {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let i = {
                            let mut v = seen2.0.lock().unwrap();
                            v.push(Conn::default());
                            v.len() - 1
                        };
                        seen2.1.notify_all();
                        let (seen, stop) = (seen2.clone(), stop2.clone());
                        std::thread::spawn(move || serve(s, i, &seen, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Up { addr, seen, stop }
    }

    /// Waits (bounded) until `ok` holds for what the upstream saw; panics with it if not.
    fn wait(&self, what: &str, ok: impl Fn(&[Conn]) -> bool) -> Vec<Conn> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut v = self.seen.0.lock().unwrap();
        while !ok(&v) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let got = v.clone();
                drop(v);
                panic!("upstream: {what}: {got:?}");
            }
            v = self.seen.1.wait_timeout(v, left).unwrap().0;
        }
        v.clone()
    }

    fn snapshot(&self) -> Vec<Conn> {
        self.seen.0.lock().unwrap().clone()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream, i: usize, seen: &Seen, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let record = |f: &dyn Fn(&mut Conn)| {
        f(&mut seen.0.lock().unwrap_or_else(|p| p.into_inner())[i]);
        seen.1.notify_all();
    };
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                let line = head.lines().next().unwrap_or_default().to_string();
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                record(&|c| c.requests.push(line.clone()));
                let reply: Vec<u8> = if path.starts_with("/hold") {
                    Vec::new()
                } else if path == "/stream" {
                    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {STREAM_LEN}\r\n\r\n")
                        .into_bytes();
                    r.extend((0..STREAM_FIRST).map(|k| (k % 251) as u8));
                    r
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
                };
                if s.write_all(&reply).is_err() || reply.ends_with(b"ok") {
                    break;
                }
                continue;
            }
        }
        let mut tmp = [0u8; 16384];
        match s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                record(&|c| c.bytes += n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    record(&|c| c.closed = true);
}

/// A proxy with an access log and an admin listener, no health checks.
struct Proxy {
    server: Server,
    admin: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
}

impl Proxy {
    fn start(driver: &str, up: &Up, name: &str, extra: &[&str]) -> Proxy {
        let dir = tmp_dir("client-abort", &format!("{name}-{driver}"));
        let log = dir.join("access.log");
        let log_s = log.to_str().unwrap().to_string();
        let mut args = vec!["--health-interval", "0", "--access-log", &log_s];
        args.extend_from_slice(extra);
        let (server, admin) = Server::start_proxy("http", driver, &up.addr.to_string(), &args, &[]);
        assert_eq!(server.driver, driver);
        Proxy {
            server,
            admin,
            log,
            dir,
        }
    }

    /// The sum of the samples of metric family `name` (every label set).
    fn metric(&self, name: &str) -> i64 {
        sum(&admin_metrics(self.admin), name)
    }

    /// Waits (bounded) until `/metrics` shows `want` for each `(name, want)`.
    fn wait_metrics(&self, want: &[(&str, i64)]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = admin_metrics(self.admin);
            if want.iter().all(|(n, v)| sum(&text, n) == *v) {
                return;
            }
            assert!(Instant::now() < deadline, "want {want:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the access log has `n` lines with `needle` (lines are flushed
    /// every 100 ms), and returns the log.
    fn wait_log(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = read(&self.log);
            if text.lines().filter(|l| l.contains(needle)).count() >= n {
                return text;
            }
            assert!(Instant::now() < deadline, "want {n}× {needle:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new client's `GET /ok` is answered `200 ok`.
    fn next_client_works(&self) {
        let mut s = TcpStream::connect(self.server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        assert!(out.ends_with("\r\n\r\nok"), "{out}");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn sum(text: &str, name: &str) -> i64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) || l.split(' ').next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
        .sum()
}

/// The pool and connection figures once every client is gone and no upstream connection
/// is left (each one that carried an aborted request was closed, not pooled).
const SETTLED: [(&str, i64); 6] = [
    ("ferry_proxy_pool_active_connections", 0),
    ("ferry_proxy_pool_waiting_requests", 0),
    ("ferry_proxy_pool_connecting", 0),
    ("ferry_proxy_upstream_active_requests", 0),
    ("ferry_proxy_upstream_connections", 0),
    ("ferry_proxy_downstream_connections", 0),
];

/// The proxy closes a client connection it gave up on (read to EOF or error; bounded).
fn closed_by_proxy(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// A client resets its connection while its request waits for a slow upstream. The request
/// said `Connection: close`, so the proxy reads nothing more from it: the reset must still
/// be seen. The upstream's connection is closed, the exchange logged 499 and counted, the
/// pool back to nothing, and the next client is served (on a new upstream connection).
fn reset_aborts_the_request_in_flight(driver: &str) {
    let up = Up::start();
    let p = Proxy::start(driver, &up, "reset", &[]);
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    up.wait("request arrives", |c| {
        c.len() == 1 && c[0].requests.len() == 1
    });
    reset(s);
    up.wait("connection closed", |c| c[0].closed);
    p.wait_log("\"GET /hold HTTP/1.1\" 499 0 ", 1);
    p.wait_metrics(&SETTLED);
    assert_eq!(p.metric("ferry_proxy_client_aborts_total"), 1);
    p.next_client_works();
    let seen = up.snapshot();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].requests, ["GET /ok HTTP/1.1"], "{seen:?}");
    assert_eq!(p.metric("ferry_proxy_client_aborts_total"), 1);
}

/// A client half-closes (FIN) with two requests pipelined and in flight: taken as gone (as
/// nginx does). Both are aborted: the upstream connection carrying them is closed, each is
/// logged 499 and counted, and the client's connection is closed.
fn half_close_aborts_the_requests_in_flight(driver: &str) {
    let up = Up::start();
    let p = Proxy::start(driver, &up, "fin", &[]);
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.write_all(b"GET /hold/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /hold/2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    up.wait("both requests arrive", |c| {
        c.iter().map(|c| c.requests.len()).sum::<usize>() == 2
    });
    s.shutdown(Shutdown::Write).unwrap();
    let seen = up.wait("connections closed", |c| c.iter().all(|c| c.closed));
    assert!(closed_by_proxy(&mut s));
    let log = p.wait_log("\" 499 0 ", 2);
    assert!(log.contains("\"GET /hold/1 HTTP/1.1\" 499 0 "), "{log}");
    assert!(log.contains("\"GET /hold/2 HTTP/1.1\" 499 0 "), "{log}");
    p.wait_metrics(&SETTLED);
    assert_eq!(p.metric("ferry_proxy_client_aborts_total"), 2);
    p.next_client_works();
    assert_eq!(up.snapshot().len(), seen.len() + 1, "{:?}", up.snapshot());
}

/// A client leaves while a large response streams to it (the upstream sent part of the body
/// and holds the rest): by EOF, then (second round) by reset. Each time the upstream
/// connection is closed, not pooled: the next request reaches the upstream on a new one.
fn leaving_mid_stream_closes_the_upstream_connection(driver: &str) {
    let up = Up::start();
    let p = Proxy::start(driver, &up, "stream", &[]);
    for (round, by_reset) in [(0, false), (1, true)] {
        let mut s = TcpStream::connect(p.server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        // The head and some of the body arrive.
        let mut got = Vec::new();
        let mut b = [0u8; 16384];
        while got.len() < 2048 {
            match s.read(&mut b) {
                Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                r => panic!("response cut: {r:?} after {} bytes", got.len()),
            }
        }
        assert!(got.starts_with(b"HTTP/1.1 200 "));
        if by_reset {
            reset(s);
        } else {
            s.shutdown(Shutdown::Write).unwrap();
            assert!(closed_by_proxy(&mut s));
        }
        up.wait("stream connection closed", |c| {
            c.len() == round * 2 + 1 && c[round * 2].closed
        });
        p.wait_log("\"GET /stream HTTP/1.1\" 499 ", round + 1);
        p.wait_metrics(&SETTLED);
        assert_eq!(
            p.metric("ferry_proxy_client_aborts_total"),
            round as i64 + 1
        );
        p.next_client_works();
        let seen = up.snapshot();
        assert_eq!(seen.len(), round * 2 + 2, "{seen:?}");
        assert_eq!(seen[round * 2].requests, ["GET /stream HTTP/1.1"]);
        assert_eq!(seen[round * 2 + 1].requests, ["GET /ok HTTP/1.1"]);
    }
}

/// A POST the upstream already has (its body complete) when the client resets: aborted,
/// never sent again, even with retries allowed. Then a POST whose client leaves mid-body.
fn post_in_flight_is_not_retried(driver: &str) {
    let up = Up::start();
    let p = Proxy::start(driver, &up, "post", &["--retries", "3"]);
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.write_all(
        b"POST /hold HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .unwrap();
    up.wait("POST arrives", |c| c.len() == 1 && c[0].requests.len() == 1);
    reset(s);
    up.wait("connection closed", |c| c[0].closed);
    p.wait_log("\"POST /hold HTTP/1.1\" 499 0 ", 1);
    p.wait_metrics(&SETTLED);
    p.next_client_works();
    let seen = up.snapshot();
    let posts = seen
        .iter()
        .flat_map(|c| &c.requests)
        .filter(|r| r.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(p.metric("ferry_proxy_upstream_retries_total"), 0);
    assert_eq!(p.metric("ferry_proxy_client_aborts_total"), 1);
    // A client that leaves (EOF) before its body is complete: the upstream connection that
    // has the head and the first bytes is closed, the exchange logged 499 and counted.
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.write_all(b"POST /hold HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    up.wait("partial POST arrives", |c| c.len() == 3 && c[2].bytes > 0);
    s.shutdown(Shutdown::Write).unwrap();
    up.wait("connection closed", |c| {
        c[2].closed && c[2].requests.is_empty()
    });
    p.wait_log("\"POST /hold HTTP/1.1\" 499 0 ", 2);
    p.wait_metrics(&SETTLED);
    assert_eq!(p.metric("ferry_proxy_client_aborts_total"), 2);
    assert_eq!(up.snapshot().len(), 3, "{:?}", up.snapshot());
}

per_driver!(
    reset_aborts_the_request_in_flight,
    half_close_aborts_the_requests_in_flight,
    leaving_mid_stream_closes_the_upstream_connection,
    post_in_flight_is_not_retried,
);
