//! Large nested replies through the Redis proxy (embedded through its library API, both
//! drivers) from a real redis-server: a 50k-entry `XRANGE` (arrays of arrays), a 50k-element
//! array of arrays built by `EVAL`, and a RESP3 `HGETALL` map (after `HELLO 3`) arrive
//! byte for byte as redis-server sends them directly, alone and pipelined between small
//! commands. They span hundreds of reads, which the proxy measures resumably.
//!
//! Skips (passes with a note) when `redis-server` is not installed. Loopback only; every
//! loop is bounded in count and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_driver::DriverKind;
use ferry_proxy::{Protocol, ProxyOptions};
use ferry_resp::parse::{frame_len_resume, FrameScan};
use ferry_resp::{encode_command, Limits};

mod common;
use common::config;

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    fn start() -> Option<Redis> {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .ok()?
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if TcpStream::connect(addr).is_ok() {
                    return Some(Redis { child, addr });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis proxy with one unpinned I/O worker on `driver` in front of `upstream`.
fn redis_proxy(driver: DriverKind, upstream: SocketAddr) -> (ferry_proxy::Proxy, SocketAddr) {
    let mut opts = ProxyOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        Protocol::Redis,
        config(vec![upstream]),
    );
    opts.driver = driver;
    opts.server.workers = 1;
    opts.server.pin = false;
    let p = ferry_proxy::start(opts).unwrap();
    let addr = match &p.handle.local_addr {
        ferry_driver::ListenAddr::Inet(a) => *a,
        other => panic!("{other:?}"),
    };
    (p, addr)
}

/// A blocking RESP connection that returns raw reply frames.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    scan: FrameScan,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            s,
            buf: Vec::new(),
            scan: FrameScan::new(),
        }
    }

    /// Sends the commands in one write, then reads one raw reply per command.
    fn pipeline(&mut self, cmds: &[Vec<String>]) -> Vec<Vec<u8>> {
        let mut out = bytes::BytesMut::new();
        for c in cmds {
            encode_command(c, &mut out);
        }
        self.s.write_all(&out).unwrap();
        (0..cmds.len()).map(|_| self.reply()).collect()
    }

    fn reply(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(n) =
                frame_len_resume(&self.buf, &Limits::default(), &mut self.scan).unwrap()
            {
                self.scan.reset();
                return self.buf.drain(..n).collect();
            }
            assert!(Instant::now() < deadline, "no complete reply in time");
            let n = match self.s.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.unwrap(),
            };
            assert!(n > 0, "connection closed mid-reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

const ENTRIES: usize = 50_000;

fn large_nested_replies_arrive_intact(driver: DriverKind) {
    let Some(redis) = Redis::start() else {
        eprintln!("skipped: redis-server not available");
        return;
    };
    // Data, loaded straight into redis-server: a stream, a hash.
    let mut direct = Conn::new(redis.addr);
    for batch in 0..(ENTRIES / 1000) {
        let mut cmds = Vec::new();
        for i in batch * 1000..(batch + 1) * 1000 {
            let id = format!("{}-1", i + 1);
            let v = format!("value-{i}");
            cmds.push(cmd(&["XADD", "stream", &id, "field", &v, "other", "x"]));
            cmds.push(cmd(&["HSET", "hash", &format!("f{i}"), &v]));
        }
        for r in direct.pipeline(&cmds) {
            assert!(r.starts_with(b"$") || r.starts_with(b":"), "{r:?}");
        }
    }
    let eval = cmd(&[
        "EVAL",
        "local t = {} for i = 1, tonumber(ARGV[1]) do t[i] = {i, tostring(i), {'a', i}} end return t",
        "0",
        &ENTRIES.to_string(),
    ]);
    let xrange = cmd(&["XRANGE", "stream", "-", "+"]);
    let queries = vec![
        xrange.clone(),
        cmd(&["PING"]),
        eval.clone(),
        cmd(&["XRANGE", "stream", "-", "+", "COUNT", "3"]),
        xrange,
        cmd(&["GET", "missing"]),
    ];
    let want = direct.pipeline(&queries);
    assert!(want[0].len() > 2_000_000, "{}", want[0].len());
    assert!(want[2].len() > 1_000_000, "{}", want[2].len());

    let (proxy, addr) = redis_proxy(driver, redis.addr);
    let mut c = Conn::new(addr);
    // Alone, then pipelined with small commands around them.
    assert_eq!(c.pipeline(&queries[..1]), want[..1]);
    assert_eq!(c.pipeline(&queries[2..3]), want[2..3]);
    assert_eq!(c.pipeline(&queries), want);

    // RESP3: HGETALL is a map of 50k pairs.
    let mut d3 = Conn::new(redis.addr);
    let hello = cmd(&["HELLO", "3"]);
    let hgetall = cmd(&["HGETALL", "hash"]);
    d3.pipeline(std::slice::from_ref(&hello));
    let want3 = d3.pipeline(&[hgetall.clone(), cmd(&["PING"])]);
    assert!(want3[0].starts_with(b"%50000\r\n"));
    let mut c3 = Conn::new(addr);
    let h = c3.pipeline(&[hello]);
    assert!(
        h[0].starts_with(b"%"),
        "{:?}",
        String::from_utf8_lossy(&h[0])
    );
    let got3 = c3.pipeline(&[hgetall, cmd(&["PING"])]);
    // Field order is redis-server's; the same server answers both.
    assert_eq!(got3, want3);

    proxy.handle.shutdown.trigger();
    proxy.wait();
}

#[test]
fn large_nested_replies_arrive_intact_epoll() {
    large_nested_replies_arrive_intact(DriverKind::Epoll);
}

#[test]
fn large_nested_replies_arrive_intact_uring() {
    if ferry_uring::probe().is_err() {
        eprintln!("skipped: io_uring not available");
        return;
    }
    large_nested_replies_arrive_intact(DriverKind::Uring);
}
