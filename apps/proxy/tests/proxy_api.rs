//! The proxy embedded through its library API, on both drivers, against small std-socket
//! upstreams: streaming with backpressure (memory stays bounded while a slow client reads a
//! large response), and a request answered while its body is still arriving.
//!
//! Loopback only; every loop is bounded in count and time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ferry_driver::DriverKind;

mod common;
use common::{config, proxy};

fn read_head(r: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    head
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

const BIG: u64 = 128 << 20;

fn slow_client_bounded_memory(driver: DriverKind) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let _ = read_head(&mut r);
        let mut w = s;
        w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").as_bytes())
            .unwrap();
        let chunk = vec![b'z'; 64 * 1024];
        let mut sent = 0;
        while sent < BIG {
            if w.write_all(&chunk).is_err() {
                return;
            }
            sent += chunk.len() as u64;
        }
    });
    let (p, addr) = proxy(driver, config(vec![up]));
    let base = rss_kib();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Let the upstream push as much as it can while nobody reads.
    std::thread::sleep(Duration::from_millis(500));
    let stalled = rss_kib();
    let mut r = BufReader::new(c);
    let head = read_head(&mut r);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut peak = stalled;
    while got < BIG {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {got}");
        got += n as u64;
        if got % (16 << 20) < n as u64 {
            peak = peak.max(rss_kib());
        }
    }
    assert_eq!(got, BIG);
    // The response is 128 MiB; the proxy holds at most a window of it.
    assert!(
        stalled.saturating_sub(base) < 32 * 1024,
        "stalled: {base} -> {stalled} KiB"
    );
    assert!(
        peak.saturating_sub(base) < 48 * 1024,
        "peak: {base} -> {peak} KiB"
    );
    p.handle.shutdown.trigger();
    assert_eq!(p.wait(), 0);
}

fn early_answer_while_body_streams(driver: DriverKind) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(4) {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let _ = read_head(&mut r);
                let mut w = s;
                // Refuse at once, without reading the body.
                let _ = w.write_all(
                    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
                );
                std::thread::sleep(Duration::from_millis(300));
            });
        }
    });
    let (p, addr) = proxy(driver, config(vec![up]));
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    let _ = c.write_all(&[b'a'; 4096]);
    let mut r = BufReader::new(c);
    let head = read_head(&mut r);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let mut body = [0u8; 4];
    r.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"nope");
    p.handle.shutdown.trigger();
    assert_eq!(p.wait(), 0);
}

#[test]
fn epoll_slow_client_bounded_memory() {
    slow_client_bounded_memory(DriverKind::Epoll);
}

#[test]
fn uring_slow_client_bounded_memory() {
    slow_client_bounded_memory(DriverKind::Uring);
}

#[test]
fn epoll_early_answer_while_body_streams() {
    early_answer_while_body_streams(DriverKind::Epoll);
}

#[test]
fn uring_early_answer_while_body_streams() {
    early_answer_while_body_streams(DriverKind::Uring);
}

/// An upstream that answers each request on a kept-alive connection after `delay`,
/// counting the connections it accepted.
fn slow_upstream(delay: Duration) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(s) = s else { continue };
            c2.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                for _ in 0..1000 {
                    if read_head(&mut r).is_empty() {
                        return;
                    }
                    std::thread::sleep(delay);
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

fn get(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

fn connection_limit_queues_requests(driver: DriverKind) {
    let (up, conns) = slow_upstream(Duration::from_millis(50));
    let mut cfg = config(vec![up]);
    cfg.max_connections_per_upstream = 1;
    let (p, addr) = proxy(driver, cfg);
    let clients: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || get(addr)))
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Pool figures are published by the worker's periodic tick.
    let want = "ferry_proxy_pool_created_total{protocol=\"http\",worker=\"0\"} 1";
    let t0 = std::time::Instant::now();
    while !p.stats.render().contains(want) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{}",
            p.stats.render()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.handle.shutdown.trigger();
    assert_eq!(p.wait(), 0);
}

fn full_wait_queue_is_503(driver: DriverKind) {
    let (up, _) = slow_upstream(Duration::from_millis(300));
    let mut cfg = config(vec![up]);
    cfg.max_connections_per_upstream = 1;
    cfg.max_waiters = 1;
    cfg.retries = 0;
    let (p, addr) = proxy(driver, cfg);
    let clients: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr)))
        .collect();
    let answers: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = answers
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 200"))
        .count();
    let busy = answers
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 503"))
        .count();
    assert_eq!(ok + busy, 5, "{answers:?}");
    assert!(ok >= 2 && busy >= 1, "{answers:?}");
    assert!(
        answers.iter().any(|r| r.contains("connection limit")),
        "{answers:?}"
    );
    p.handle.shutdown.trigger();
    assert_eq!(p.wait(), 0);
}

#[test]
fn epoll_connection_limit_queues_requests() {
    connection_limit_queues_requests(DriverKind::Epoll);
}

#[test]
fn uring_connection_limit_queues_requests() {
    connection_limit_queues_requests(DriverKind::Uring);
}

#[test]
fn epoll_full_wait_queue_is_503() {
    full_wait_queue_is_503(DriverKind::Epoll);
}

#[test]
fn uring_full_wait_queue_is_503() {
    full_wait_queue_is_503(DriverKind::Uring);
}

/// An upstream that answers every request `503` (keep-alive); `split`: the head first, the
/// body a moment later (two reads for the proxy, so the breaker hears the head alone).
fn failing_upstream(split: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                for _ in 0..100 {
                    if read_head(&mut r).is_empty() {
                        return;
                    }
                    let head = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\n";
                    let ok = if split {
                        w.write_all(head.as_bytes()).is_ok() && {
                            std::thread::sleep(Duration::from_millis(30));
                            w.write_all(b"busy").is_ok()
                        }
                    } else {
                        w.write_all(format!("{head}busy").as_bytes()).is_ok()
                    };
                    if !ok {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// 5xx answers count as failures for the upstream's breaker, whether the head and the end
/// of the response arrive together or apart: after three the circuit opens and the proxy
/// answers 503 itself.
fn upstream_5xx_opens_the_breaker(driver: DriverKind, split: bool) {
    let up = failing_upstream(split);
    let mut cfg = config(vec![up]);
    cfg.retries = 0;
    cfg.breaker.consecutive_failures = Some(3);
    let (p, addr) = proxy(driver, cfg);
    for _ in 0..3 {
        let r = get(addr);
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable"), "{r}");
        assert!(r.ends_with("busy"), "forwarded as it came: {r}");
    }
    let r = get(addr);
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("circuit open"), "answered by the proxy: {r}");
    let want = format!("ferry_proxy_breaker_opened_total{{protocol=\"http\",upstream=\"{up}\"}} 1");
    assert!(p.stats.render().contains(&want), "{}", p.stats.render());
    p.handle.shutdown.trigger();
    assert_eq!(p.wait(), 0);
}

#[test]
fn epoll_upstream_5xx_opens_the_breaker() {
    upstream_5xx_opens_the_breaker(DriverKind::Epoll, false);
    upstream_5xx_opens_the_breaker(DriverKind::Epoll, true);
}

#[test]
fn uring_upstream_5xx_opens_the_breaker() {
    upstream_5xx_opens_the_breaker(DriverKind::Uring, false);
    upstream_5xx_opens_the_breaker(DriverKind::Uring, true);
}

fn silent_upstream_is_504(driver: DriverKind) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(8) {
            // Accept, read nothing, answer nothing (kept open until the test ends).
            held.push(s);
        }
    });
    let mut cfg = config(vec![up]);
    cfg.response_timeout = Duration::from_millis(300);
    let (p, addr) = proxy(driver, cfg);
    let r = get(addr);
    assert!(r.starts_with("HTTP/1.1 504"), "{r}");
    assert!(r.contains("no response in time"), "{r}");
    assert!(r.contains(&up.to_string()), "{r}");
    p.handle.shutdown.trigger();
    assert_eq!(p.wait(), 0);
}

#[test]
fn epoll_silent_upstream_is_504() {
    silent_upstream_is_504(DriverKind::Epoll);
}

#[test]
fn uring_silent_upstream_is_504() {
    silent_upstream_is_504(DriverKind::Uring);
}

/// A pooled connection idle longer than the response timeout still gets the whole timeout
/// for its next request (the connection's clock is brought up to date before sending).
fn idle_pooled_connection_gets_a_full_timeout(driver: DriverKind) {
    let (up, conns) = slow_upstream(Duration::from_millis(100));
    let mut cfg = config(vec![up]);
    cfg.response_timeout = Duration::from_millis(400);
    let (p, addr) = proxy(driver, cfg);
    assert!(get(addr).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(900));
    let r = get(addr);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1, "pooled");
    p.handle.shutdown.trigger();
    assert_eq!(p.wait(), 0);
}

#[test]
fn epoll_idle_pooled_connection_gets_a_full_timeout() {
    idle_pooled_connection_gets_a_full_timeout(DriverKind::Epoll);
}

#[test]
fn uring_idle_pooled_connection_gets_a_full_timeout() {
    idle_pooled_connection_gets_a_full_timeout(DriverKind::Uring);
}
