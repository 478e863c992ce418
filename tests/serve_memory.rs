//! What a connection may cost `ferry serve --http`, under both drivers: the unread request
//! body it reads and drops after an early answer (`max_discard_body`, a `--config` key), and
//! the memory an idle keep-alive connection holds.
//!
//! Nothing here asserts timing; every wait is bounded; loopback only.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

mod common;
use common::{read_h1, Server};

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

/// `ferry serve` with `settings` written to a config file.
fn start_with(driver: &str, name: &str, settings: &str) -> (Server, std::path::PathBuf) {
    let dir = common::tmp_dir("mem", &format!("{name}-{driver}"));
    let config = dir.join("ferry.toml");
    std::fs::write(&config, settings).unwrap();
    let s = Server::start_http(driver, &["--config", config.to_str().unwrap()]);
    (s, dir)
}

/// An early 413 (the body-buffering limit, answered at the head) to a request with `unread`
/// body bytes behind it: whether the connection stays open (the rest read and dropped, the
/// next request served) or closes after the answer.
fn early_413_keeps_connection(addr: SocketAddr, unread: usize) -> bool {
    let mut c = connect(addr);
    let head = format!("POST /nope HTTP/1.1\r\nhost: a\r\ncontent-length: {unread}\r\n\r\n");
    c.write_all(head.as_bytes()).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let (status, headers, _) = read_h1(&mut r);
    assert_eq!(status, "HTTP/1.1 413 Content Too Large");
    let close = headers.contains(&("connection".into(), "close".into()));
    // The body, then a request behind it (a closing server may reset these writes).
    let mut rest = vec![b'x'; unread];
    rest.extend_from_slice(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
    let w = std::thread::spawn(move || {
        let _ = c.write_all(&rest);
    });
    if close {
        let mut tail = Vec::new();
        let _ = r.read_to_end(&mut tail);
        assert!(tail.is_empty(), "{:?}", String::from_utf8_lossy(&tail));
    } else {
        let (status, _, body) = read_h1(&mut r);
        assert_eq!(
            (status.as_str(), &body[..]),
            ("HTTP/1.1 200 OK", &b"hello world\n"[..])
        );
    }
    w.join().unwrap();
    !close
}

/// `max_discard_body` (config key) sets how much unread body the server reads and drops to
/// keep a connection after an early answer: either side of the 64 KiB default.
fn max_discard_body_is_configurable(driver: &str) {
    // Lower than the default: 3000 unread octets close the connection.
    let (s, dir) = start_with(
        driver,
        "discard-low",
        "max_buffered_body = 100\nmax_discard_body = 2000\n",
    );
    assert!(early_413_keeps_connection(s.addr, 1000));
    assert!(!early_413_keeps_connection(s.addr, 3000));
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
    // Higher than the default: 200 000 unread octets are read and dropped.
    let (s, dir) = start_with(
        driver,
        "discard-high",
        "max_buffered_body = 100\nmax_discard_body = 300000\n",
    );
    assert!(early_413_keeps_connection(s.addr, 200_000));
    assert!(!early_413_keeps_connection(s.addr, 400_000));
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Enough descriptors for this test's connections (the soft limit up to the hard one).
fn raise_nofile(need: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the valid local `rlimit` we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < need {
            r.rlim_cur = need.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// `n` keep-alive connections, each having made `requests` requests (answered), left open.
fn idle_connections(addr: SocketAddr, n: usize, requests: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let c = connect(addr);
            let mut r = BufReader::new(c.try_clone().unwrap());
            for _ in 0..requests {
                (&c).write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                    .unwrap();
                let (status, _, _) = read_h1(&mut r);
                assert_eq!(status, "HTTP/1.1 200 OK");
            }
            c
        })
        .collect()
}

/// Connections measured: fewer than the 1024 the drivers' tables start with (growing one
/// would be counted as the connections' cost).
const IDLE: usize = 500;

/// An idle keep-alive connection that made one request holds a few KiB, not a read chunk:
/// its first read keeps only its bytes. (That a connection idle for a while gives its
/// buffers back is the drivers' `idle` test.)
fn idle_connections_cost_little(driver: &str) {
    raise_nofile(IDLE as u64 + 200);
    let s = Server::start_http(driver, &[]);
    let pid = s.child.id();
    // Warm up the allocator, and io_uring's buffer ring (its 256 buffers are used in turn,
    // each page faulted in on first use): 400 reads on 20 connections.
    drop(idle_connections(s.addr, 20, 20));
    std::thread::sleep(Duration::from_millis(300));
    let base = rss_kib(pid);
    let idle = idle_connections(s.addr, IDLE, 1);
    std::thread::sleep(Duration::from_millis(300));
    let per_conn = rss_kib(pid).saturating_sub(base) * 1024 / IDLE as u64;
    eprintln!("{driver}: {per_conn} bytes per idle connection");
    // About 5.5-6 KiB here (mostly the 4 KiB output buffer of the first response, given
    // back at the next idle sweep), where epoll's 16 KiB input buffer cost 9.7 KiB; nginx:
    // 0.5 KiB.
    assert!(per_conn < 8 * 1024, "{per_conn} bytes per idle connection");
    drop(idle);
}

per_driver!(
    max_discard_body_is_configurable,
    idle_connections_cost_little
);
