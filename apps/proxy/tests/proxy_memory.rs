//! What a client that stops reading its response costs the proxy: the body it does not take
//! waits in the kernel's socket buffers and, in user space, at most one flow-control window
//! (`ferry_proxy::http::WINDOW`) plus the connections' small buffers, so many such clients
//! stay cheap (nginx holds about 64 KiB of proxy buffers for each), on every driver: io_uring's
//! multishot receive must stop as promptly as epoll's reads when the window is full.
//!
//! The proxy runs in this process (its RSS is the test's). Loopback only; every loop is
//! bounded in count and time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use ferry_driver::DriverKind;

mod common;
use common::{config, proxy};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

const CLIENTS: usize = 40;
/// Far more than the socket buffers of both hops take.
const BIG: u64 = 256 << 20;

/// `limit_kib`: the most a stalled client may cost.
fn stalled_clients_cost_little(driver: DriverKind, limit_kib: u64) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    // One thread per upstream connection, writing until its peer goes (one shared chunk).
    let chunk: &'static [u8] = Box::leak(vec![b'z'; 64 * 1024].into_boxed_slice());
    std::thread::spawn(move || {
        for s in l.incoming().take(CLIENTS + 4) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
                let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                if s.write_all(h.as_bytes()).is_err() {
                    return;
                }
                let mut sent = 0;
                while sent < BIG && s.write_all(chunk).is_ok() {
                    sent += chunk.len() as u64;
                }
            });
        }
    });
    let mut cfg = config(vec![up]);
    cfg.health = None;
    let (p, addr) = proxy(driver, cfg);
    // Warm up: one exchange, so that the worker's first allocations are in the base.
    {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut b = [0u8; 65536];
        // (A ring torn down nearby may interrupt a blocking call once.)
        while let Err(e) = c.read(&mut b) {
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "{e}");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let base = rss_kib();
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    // Let every exchange fill what it may (RSS only grows meanwhile: take the largest).
    let mut stalled = base;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        stalled = stalled.max(rss_kib());
    }
    let per_client = stalled.saturating_sub(base) / CLIENTS as u64;
    eprintln!("{driver:?}: {per_client} KiB per stalled client ({base} -> {stalled} KiB)");
    assert!(
        per_client < limit_kib,
        "{per_client} KiB per stalled client ({base} -> {stalled} KiB)"
    );
    drop(clients);
    p.handle.shutdown.trigger();
    assert_eq!(p.wait(), 0);
}

/// The most a stalled client may cost on any driver: the window, plus about 64 KiB of
/// buffers and this test's upstream thread (its stack), plus what a driver receives after
/// the session stopped wanting input (epoll: one read; io_uring: one capped multishot recv).
const LIMIT_KIB: u64 = (ferry_proxy::http::WINDOW as u64 >> 10) + 192;

#[test]
fn epoll_stalled_clients_cost_little() {
    // About 320 KiB (a 256 KiB window); the former 1 MiB window cost about 1.1 MiB.
    stalled_clients_cost_little(DriverKind::Epoll, LIMIT_KIB);
}

#[test]
fn uring_stalled_clients_cost_little() {
    // About 350 KiB. An uncapped multishot recv went on copying from the upstream socket
    // into the connection until its cancellation landed, and a burst of its completions piled
    // up in one input buffer that every byte cut from it kept alive: 1.5 MiB per stalled
    // client (600 KiB with the burst consumed as it comes, 490 KiB with the cap alone).
    stalled_clients_cost_little(DriverKind::Uring, LIMIT_KIB);
}
