//! `ferry bench redis://HOST:PORT`: a Redis load generator on our own RESP client state
//! machine (`ferry_resp::ClientConnection`) and the same edge-triggered mio loop shape as the
//! HTTP bench. Tests run one after the other (like redis-benchmark `-t`); each sends
//! `--requests` commands (or runs for `--duration`) over `-c` connections with `-P` commands
//! in flight per connection. An error reply (`-ERR …`) or a broken connection counts as an
//! error.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_proto::Connection;
use ferry_resp::client::Event;
use ferry_resp::{ClientConfig, ClientConnection};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::bench::{self, now, result_json, BenchResult};

/// The tests `-t` accepts (redis-benchmark's names).
pub const TESTS: &[&str] = &[
    "ping", "set", "get", "incr", "lpush", "rpush", "lpop", "rpop", "sadd", "hset", "spop", "mset",
];

/// The default `-t` list.
pub const DEFAULT_TESTS: &str = "ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,mset";

/// What to run.
#[derive(Clone, Debug)]
pub struct RedisBenchConfig {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub pipeline: usize,
    pub tests: Vec<String>,
    pub data_size: usize,
}

/// Parse `redis://HOST[:PORT][/DB]`.
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url}: expected a redis:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url}: missing host"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:6379")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {authority} has no address"))
}

/// Parse and check a `-t` list.
pub fn parse_tests(list: &str) -> Result<Vec<String>, String> {
    let mut v = Vec::new();
    for t in list.split(',').map(|t| t.trim().to_ascii_lowercase()) {
        if t.is_empty() {
            continue;
        }
        if !TESTS.contains(&t.as_str()) {
            return Err(format!(
                "--tests: unknown test `{t}` (known: {})",
                TESTS.join(",")
            ));
        }
        v.push(t);
    }
    if v.is_empty() {
        return Err("--tests: empty list".into());
    }
    Ok(v)
}

/// The command one test sends (`n` varies the key and element where it matters).
fn command(test: &str, value: &Bytes) -> Vec<Bytes> {
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    match test {
        "ping" => vec![b("PING")],
        "set" => vec![b("SET"), b("key:__rand_int__"), value.clone()],
        "get" => vec![b("GET"), b("key:__rand_int__")],
        "incr" => vec![b("INCR"), b("counter:__rand_int__")],
        "lpush" => vec![b("LPUSH"), b("mylist"), value.clone()],
        "rpush" => vec![b("RPUSH"), b("mylist"), value.clone()],
        "lpop" => vec![b("LPOP"), b("mylist")],
        "rpop" => vec![b("RPOP"), b("mylist")],
        "sadd" => vec![b("SADD"), b("myset"), b("element:__rand_int__")],
        "hset" => vec![
            b("HSET"),
            b("myhash"),
            b("element:__rand_int__"),
            value.clone(),
        ],
        "spop" => vec![b("SPOP"), b("myset")],
        _ => {
            let mut v = vec![b("MSET")];
            for _ in 0..10 {
                v.push(b("key:__rand_int__"));
                v.push(value.clone());
            }
            v
        }
    }
}

struct Shared {
    addr: SocketAddr,
    cfg: RedisBenchConfig,
    cmd: Vec<Bytes>,
    budget: AtomicU64,
    stop: AtomicBool,
}

struct Client {
    stream: TcpStream,
    conn: ClientConnection,
    input: BytesMut,
    out: VecDeque<Bytes>,
    started: VecDeque<Instant>,
    readable: bool,
    writable: bool,
    dead: bool,
}

fn take_budget(s: &Shared) -> bool {
    bench::take_budget_from(&s.stop, &s.budget, s.cfg.requests.is_some())
}

fn connect(
    s: &Shared,
    poll: &Poll,
    token: usize,
    config: &Arc<ClientConfig>,
    clock: Instant,
) -> io::Result<Client> {
    let std = std::net::TcpStream::connect_timeout(&s.addr, Duration::from_secs(5))?;
    std.set_nodelay(true)?;
    std.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(std);
    poll.registry().register(
        &mut stream,
        Token(token),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(Client {
        stream,
        conn: ClientConnection::new(config.clone(), now(clock)),
        input: BytesMut::with_capacity(16 * 1024),
        out: VecDeque::new(),
        started: VecDeque::new(),
        readable: true,
        writable: true,
        dead: false,
    })
}

/// Run every test of `cfg`; returns one result per test, in order.
pub fn run(cfg: &RedisBenchConfig) -> Result<Vec<(String, BenchResult)>, String> {
    let addr = parse_url(&cfg.url)?;
    let value = Bytes::from(vec![b'x'; cfg.data_size]);
    let mut out = Vec::new();
    for test in &cfg.tests {
        let shared = Arc::new(Shared {
            addr,
            cfg: cfg.clone(),
            cmd: command(test, &value),
            budget: AtomicU64::new(cfg.requests.unwrap_or(u64::MAX)),
            stop: AtomicBool::new(false),
        });
        out.push((test.clone(), run_one(&shared)?));
    }
    Ok(out)
}

fn run_one(shared: &Arc<Shared>) -> Result<BenchResult, String> {
    let cfg = &shared.cfg;
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = cfg.connections / threads + usize::from(t < cfg.connections % threads);
        let s = shared.clone();
        handles.push(std::thread::spawn(move || worker(&s, n, start)));
    }
    if cfg.requests.is_none() {
        let deadline = start + cfg.duration;
        while !handles.iter().all(|h| h.is_finished()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                shared.stop.store(true, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(5)));
        }
    }
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut requests, mut errors, mut bytes) = (0, 0, 0);
    for h in handles {
        let r = h
            .join()
            .map_err(|_| "a bench thread panicked".to_string())??;
        requests += r.requests;
        errors += r.errors;
        bytes += r.bytes;
        hist.add(&r.hist).map_err(|e| e.to_string())?;
    }
    Ok(BenchResult {
        requests,
        errors,
        bytes,
        elapsed: start.elapsed(),
        hist,
    })
}

fn worker(s: &Shared, n: usize, start: Instant) -> Result<BenchResult, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let config = Arc::new(ClientConfig::default());
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut requests, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        match connect(s, &poll, i, &config, start) {
            Ok(c) => clients.push(c),
            Err(e) => return Err(format!("cannot connect to {}: {e}", s.addr)),
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        if !first {
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .map_err(|e| e.to_string())?;
            for ev in events.iter() {
                if let Some(c) = clients.get_mut(ev.token().0) {
                    c.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    c.writable |= ev.is_writable();
                }
            }
        }
        first = false;
        let stopping = s.stop.load(Ordering::Relaxed);
        let mut active = 0;
        for (i, c) in clients.iter_mut().enumerate() {
            if c.dead {
                if stopping || (s.cfg.requests.is_some() && s.budget.load(Ordering::Relaxed) == 0) {
                    continue;
                }
                match connect(s, &poll, i, &config, start) {
                    Ok(nc) => *c = nc,
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                }
            }
            while c.started.len() < s.cfg.pipeline.max(1) && take_budget(s) {
                match c.conn.send_command(&s.cmd) {
                    Ok(_) => c.started.push_back(Instant::now()),
                    Err(_) => {
                        s.budget
                            .fetch_add(u64::from(s.cfg.requests.is_some()), Ordering::Relaxed);
                        break;
                    }
                }
            }
            while let Some(b) = c.conn.poll_transmit() {
                c.out.push_back(b);
            }
            while c.writable && !c.out.is_empty() {
                let mut iov = [IoSlice::new(&[]); 32];
                let k = c.out.len().min(32);
                for (slot, b) in iov.iter_mut().zip(c.out.iter()) {
                    *slot = IoSlice::new(b);
                }
                match c.stream.write_vectored(&iov[..k]) {
                    Ok(mut w) => {
                        while w > 0 {
                            let Some(f) = c.out.front_mut() else { break };
                            if f.len() <= w {
                                w -= f.len();
                                c.out.pop_front();
                            } else {
                                let _ = f.split_to(w);
                                w = 0;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.dead = true;
                        break;
                    }
                }
            }
            while c.readable && !c.dead {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.conn.handle_eof(now(start));
                        c.dead = true;
                    }
                    Ok(k) => {
                        bytes += k as u64;
                        c.input.extend_from_slice(&buf[..k]);
                        if c.conn.handle_input(now(start), &mut c.input).is_err() {
                            c.dead = true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => c.dead = true,
                }
                while let Some(ev) = c.conn.poll_event() {
                    match ev {
                        Event::Reply { value, .. } => {
                            if value.is_error() {
                                errors += 1;
                            }
                            if let Some(t) = c.started.pop_front() {
                                let us = t.elapsed().as_micros() as u64;
                                let _ = hist.record(us.max(1));
                                requests += 1;
                            }
                        }
                        Event::Error(_) => {
                            errors += 1;
                            c.dead = true;
                        }
                        _ => {}
                    }
                }
            }
            if c.dead {
                if s.cfg.requests.is_some() {
                    s.budget
                        .fetch_add(c.started.len() as u64, Ordering::Relaxed);
                }
                if !c.started.is_empty() {
                    errors += 1;
                }
                c.started.clear();
                let _ = poll.registry().deregister(&mut c.stream);
            }
            active += usize::from(!c.started.is_empty());
        }
        let all_sent = s.cfg.requests.is_some() && s.budget.load(Ordering::Relaxed) == 0;
        if stopping || (all_sent && active == 0) {
            break;
        }
    }
    Ok(BenchResult {
        requests,
        errors,
        bytes,
        elapsed: start.elapsed(),
        hist,
    })
}

/// Print the results: per test a line (or, with `json`, one object whose top-level stable
/// keys cover all tests together and whose `tests` object holds the same keys per test).
pub fn report(
    cfg: &RedisBenchConfig,
    results: &[(String, BenchResult)],
    json: bool,
) -> Result<(), String> {
    if json {
        let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        let (mut requests, mut errors, mut bytes) = (0, 0, 0);
        let mut elapsed = Duration::ZERO;
        let mut per = Vec::new();
        for (name, r) in results {
            requests += r.requests;
            errors += r.errors;
            bytes += r.bytes;
            elapsed += r.elapsed;
            hist.add(&r.hist).map_err(|e| e.to_string())?;
            per.push(format!("\"{name}\":{}", result_json(r, "")));
        }
        let total = BenchResult {
            requests,
            errors,
            bytes,
            elapsed,
            hist,
        };
        println!(
            "{}",
            result_json(&total, &format!(",\"tests\":{{{}}}", per.join(",")))
        );
    } else {
        println!(
            "ferry bench {} ({} connections, pipeline {})",
            cfg.url, cfg.connections, cfg.pipeline
        );
        for (name, r) in results {
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            let q = |p: f64| {
                if r.hist.is_empty() {
                    0
                } else {
                    r.hist.value_at_quantile(p)
                }
            };
            println!(
                "  {:<6} {:>10.0} requests/s  {} requests, errors {}  latency µs p50 {} p99 {} max {}",
                name.to_ascii_uppercase(),
                r.requests as f64 / secs,
                r.requests,
                r.errors,
                q(0.5),
                q(0.99),
                if r.hist.is_empty() { 0 } else { r.hist.max() }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_tests() {
        assert_eq!(parse_url("redis://127.0.0.1:7000").unwrap().port(), 7000);
        assert_eq!(parse_url("redis://127.0.0.1/0").unwrap().port(), 6379);
        assert!(parse_url("http://x").is_err());
        assert_eq!(parse_tests("SET, get").unwrap(), vec!["set", "get"]);
        assert!(parse_tests("set,nope").is_err());
        for t in TESTS {
            assert!(!command(t, &Bytes::from_static(b"v")).is_empty());
        }
    }
}
