//! `ferry bench URL`: an HTTP/1.1 load generator on our own client state machine
//! (`ferry_http1::ClientConnection`) and an edge-triggered mio loop per thread.
//!
//! Each thread owns a share of the connections; each connection keeps `pipeline` requests in
//! flight. Latency is measured per request from the moment its bytes are queued to the end of
//! its response, into an HDR histogram (µs, 3 significant digits) merged across threads. A
//! duration run stops sending at the deadline and counts only completed responses (like wrk).

use std::collections::VecDeque;
use std::io::{self, IoSlice, IsTerminal, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_http1::{client::Event, Body, ClientConfig, ClientConnection, Method};
use ferry_proto::Connection;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub pipeline: usize,
    /// HTTP/2 (h2c, prior knowledge) with `pipeline` concurrent streams per connection.
    pub h2: bool,
}

/// What a run measured.
pub struct BenchResult {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            format!("{url}: only http:// is available yet")
        } else {
            format!("{url}: expected an http:// URL")
        }
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: missing host"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {authority} has no address"))?;
    Ok(Target {
        addr,
        host: authority.to_string(),
        path: path.to_string(),
    })
}

struct Shared {
    target: Target,
    cfg: BenchConfig,
    /// Requests that may still be started (count mode).
    budget: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

/// The client state machine of one connection: HTTP/1.1 or HTTP/2 (one per connection, so
/// the size difference does not matter).
#[allow(clippy::large_enum_variant)]
enum Proto {
    H1(ClientConnection),
    H2(ferry_http2::ClientConnection),
}

/// What a response did, as far as the load loop cares.
enum Outcome {
    /// A response ended (key: stream id for HTTP/2, 0 for HTTP/1.1 which is FIFO).
    Done(u64),
    /// A response status of 400 or more.
    BadStatus,
    /// The connection failed.
    Failed,
    /// The server is closing the connection gracefully (HTTP/2 GOAWAY NO_ERROR, e.g. nginx's
    /// `http2_max_requests`): send nothing more on it, reconnect once it closed.
    Draining,
    /// The server refused a stream before processing it (REFUSED_STREAM): retry it.
    Refused(u64),
}

impl Proto {
    fn can_send(&self) -> bool {
        match self {
            Proto::H1(c) => c.can_send_request(),
            Proto::H2(c) => c.can_send_request(),
        }
    }

    /// Send a GET; returns its key.
    fn send(&mut self, host: &str, path: &str) -> Option<u64> {
        match self {
            Proto::H1(c) => {
                let fields: [(&str, &[u8]); 1] = [("host", host.as_bytes())];
                c.send_request(Method::Get, path, &fields, Body::Empty)
                    .ok()
                    .map(|_| 0)
            }
            Proto::H2(c) => {
                let head = ferry_http2::RequestHead::new("GET", "http", host, path);
                c.send_request(&head, ferry_http2::Body::Empty)
                    .ok()
                    .map(|id| u64::from(id.get()))
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        match self {
            Proto::H1(c) => c.poll_transmit(),
            Proto::H2(c) => c.poll_transmit(),
        }
    }

    fn handle_input(&mut self, now: ferry_proto::Instant, input: &mut BytesMut) {
        let _ = match self {
            Proto::H1(c) => c.handle_input(now, input).map_err(|_| ()),
            Proto::H2(c) => c.handle_input(now, input).map_err(|_| ()),
        };
    }

    fn handle_eof(&mut self, now: ferry_proto::Instant) {
        match self {
            Proto::H1(c) => c.handle_eof(now),
            Proto::H2(c) => c.handle_eof(now),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Proto::H1(c) => c.is_closed(),
            Proto::H2(c) => c.is_closed(),
        }
    }

    fn poll_outcome(&mut self) -> Option<Option<Outcome>> {
        match self {
            Proto::H1(c) => c.poll_event().map(|ev| match ev {
                Event::Response(r) if r.status() >= 400 => Some(Outcome::BadStatus),
                Event::End { .. } => Some(Outcome::Done(0)),
                Event::Error { .. } => Some(Outcome::Failed),
                _ => None,
            }),
            Proto::H2(c) => c.poll_event().map(|ev| {
                use ferry_http2::Event as E;
                match ev {
                    E::Response { response, .. } if response.status() >= 400 => {
                        Some(Outcome::BadStatus)
                    }
                    E::Data { id, data } => {
                        c.release_capacity(id, data.len());
                        None
                    }
                    E::End { id } => Some(Outcome::Done(u64::from(id.get()))),
                    E::GoAway { reason, .. } if reason == ferry_http2::Reason::NO_ERROR => {
                        Some(Outcome::Draining)
                    }
                    E::Reset { id, reason, .. }
                        if reason == ferry_http2::Reason::REFUSED_STREAM =>
                    {
                        Some(Outcome::Refused(u64::from(id.get())))
                    }
                    E::Reset { .. } | E::Error { .. } | E::GoAway { .. } => Some(Outcome::Failed),
                    _ => None,
                }
            }),
        }
    }
}

struct Client {
    stream: TcpStream,
    conn: Proto,
    input: BytesMut,
    out: VecDeque<Bytes>,
    started: VecDeque<(u64, Instant)>,
    readable: bool,
    writable: bool,
    dead: bool,
    draining: bool,
}

/// Run the benchmark; `progress` prints a line per second on stderr when it is a terminal.
pub fn run(cfg: BenchConfig) -> Result<BenchResult, String> {
    let target = parse_url(&cfg.url)?;
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let shared = Arc::new(Shared {
        target,
        budget: AtomicU64::new(cfg.requests.unwrap_or(u64::MAX)),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        cfg,
    });
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let n =
            shared.cfg.connections / threads + usize::from(t < shared.cfg.connections % threads);
        let s = shared.clone();
        handles.push(std::thread::spawn(move || worker(&s, n, start)));
    }
    let tty = io::stderr().is_terminal();
    let deadline = start + shared.cfg.duration;
    let mut last = (start, 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if shared.cfg.requests.is_none() && now >= deadline {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if tty && now.duration_since(last.0) >= Duration::from_secs(1) {
            let done = shared.done.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            eprint!(
                "\r{:>5.1}s {:>10} requests {:>12.0} req/s ",
                now.duration_since(start).as_secs_f64(),
                done,
                rate
            );
            last = (now, done);
        }
    }
    if tty {
        eprintln!();
    }
    let elapsed = start.elapsed();
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
        elapsed,
        hist,
    })
}

fn take_budget(s: &Shared) -> bool {
    take_budget_from(&s.stop, &s.budget, s.cfg.requests.is_some())
}

/// Take one request from a shared budget: always granted without a request limit (`limited`
/// false), never once `stop` is set. Shared by the HTTP and Redis load loops.
pub(crate) fn take_budget_from(stop: &AtomicBool, budget: &AtomicU64, limited: bool) -> bool {
    if stop.load(Ordering::Relaxed) {
        return false;
    }
    if !limited {
        return true;
    }
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
        .is_ok()
}

fn connect(
    s: &Shared,
    poll: &Poll,
    token: usize,
    config: &Arc<ClientConfig>,
    h2config: &Arc<ferry_http2::Config>,
    clock: Instant,
) -> io::Result<Client> {
    let std = std::net::TcpStream::connect_timeout(&s.target.addr, Duration::from_secs(5))?;
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
        conn: if s.cfg.h2 {
            Proto::H2(ferry_http2::ClientConnection::new(
                h2config.clone(),
                now(clock),
            ))
        } else {
            Proto::H1(ClientConnection::new(config.clone(), now(clock)))
        },
        input: BytesMut::with_capacity(16 * 1024),
        out: VecDeque::new(),
        started: VecDeque::new(),
        readable: true,
        writable: true,
        dead: false,
        draining: false,
    })
}

/// Our clock for the client state machines: time since the bench started.
pub(crate) fn now(clock: Instant) -> ferry_proto::Instant {
    ferry_proto::Instant::from_nanos(clock.elapsed().as_nanos() as u64)
}

fn worker(s: &Shared, n: usize, start: Instant) -> Result<BenchResult, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut config = ClientConfig::default();
    config.max_pipelined = s.cfg.pipeline.max(1);
    let config = Arc::new(config);
    let h2config = Arc::new(ferry_http2::Config::default());
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut requests, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        match connect(s, &poll, i, &config, &h2config, start) {
            Ok(c) => clients.push(c),
            Err(e) => return Err(format!("cannot connect to {}: {e}", s.target.addr)),
        }
    }
    let mut events = Events::with_capacity(1024);
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
                // Reconnect (counts as an error) unless the run is over.
                if stopping || (s.cfg.requests.is_some() && s.budget.load(Ordering::Relaxed) == 0) {
                    continue;
                }
                match connect(s, &poll, i, &config, &h2config, start) {
                    Ok(nc) => *c = nc,
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                }
            }
            // Fill the pipeline.
            while !c.draining
                && c.conn.can_send()
                && c.started.len() < s.cfg.pipeline.max(1)
                && take_budget(s)
            {
                match c.conn.send(&s.target.host, &s.target.path) {
                    Some(key) => c.started.push_back((key, Instant::now())),
                    None => {
                        s.budget
                            .fetch_add(u64::from(s.cfg.requests.is_some()), Ordering::Relaxed);
                        break;
                    }
                }
            }
            while let Some(b) = c.conn.poll_transmit() {
                c.out.push_back(b);
            }
            // Write.
            while c.writable && !c.out.is_empty() {
                let mut iov = [IoSlice::new(&[]); 32];
                let k = c.out.len().min(32);
                for (slot, b) in iov.iter_mut().zip(c.out.iter()) {
                    *slot = IoSlice::new(b);
                }
                match c.stream.write_vectored(&iov[..k]) {
                    Ok(mut w) => {
                        while w > 0 {
                            let f = c.out.front_mut().expect("queued");
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
            // Read.
            let mut buf = [0u8; 16 * 1024];
            while c.readable && !c.dead {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.conn.handle_eof(now(start));
                        c.dead = true;
                    }
                    Ok(k) => {
                        bytes += k as u64;
                        c.input.extend_from_slice(&buf[..k]);
                        c.conn.handle_input(now(start), &mut c.input);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => c.dead = true,
                }
                while let Some(ev) = c.conn.poll_outcome() {
                    match ev {
                        Some(Outcome::BadStatus) => errors += 1,
                        Some(Outcome::Done(key)) => {
                            let i = c.started.iter().position(|(k, _)| *k == key).unwrap_or(0);
                            if let Some((_, t)) = c.started.remove(i) {
                                let us = t.elapsed().as_micros() as u64;
                                let _ = hist.record(us.max(1));
                                requests += 1;
                                s.done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Outcome::Failed) => {
                            // Streams a draining server refused are retried elsewhere.
                            errors += u64::from(!c.draining);
                            c.dead = true;
                        }
                        Some(Outcome::Draining) => c.draining = true,
                        Some(Outcome::Refused(key)) => {
                            if let Some(i) = c.started.iter().position(|(k, _)| *k == key) {
                                c.started.remove(i);
                                if s.cfg.requests.is_some() {
                                    s.budget.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        None => {}
                    }
                }
            }
            if c.conn.is_closed() {
                c.dead = true;
            }
            if c.dead {
                // Requests in flight on a dead connection are lost: give them back.
                if s.cfg.requests.is_some() {
                    s.budget
                        .fetch_add(c.started.len() as u64, Ordering::Relaxed);
                }
                if !c.started.is_empty() && !c.draining {
                    errors += 1;
                }
                c.started.clear();
                let _ = poll.registry().deregister(&mut c.stream);
            }
            if !c.started.is_empty() || !c.dead {
                active += usize::from(!c.started.is_empty());
            }
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

fn latency_json(h: &Histogram<u64>) -> String {
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let max = if h.is_empty() { 0 } else { h.max() };
    format!(
        "{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        max
    )
}

/// The stable JSON object of CONTRACT.md (`requests`, `errors`, `duration_s`, `rps`,
/// `latency_us`), plus `bytes` and any `extra` members (starting with a comma).
pub(crate) fn result_json(r: &BenchResult, extra: &str) -> String {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    format!(
        "{{\"requests\":{},\"errors\":{},\"duration_s\":{:.3},\"rps\":{:.1},\"bytes\":{},\"latency_us\":{}{extra}}}",
        r.requests,
        r.errors,
        secs,
        r.requests as f64 / secs,
        r.bytes,
        latency_json(&r.hist)
    )
}

/// Print the result, human-readable or as the stable JSON object.
pub fn report(cfg: &BenchConfig, r: &BenchResult, json: bool) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let rps = r.requests as f64 / secs;
    let q = |p: f64| {
        if r.hist.is_empty() {
            0
        } else {
            r.hist.value_at_quantile(p)
        }
    };
    let max = if r.hist.is_empty() { 0 } else { r.hist.max() };
    if json {
        println!("{}", result_json(r, ""));
    } else {
        println!("ferry bench {}", cfg.url);
        println!(
            "  {} connections, {} thread(s), {} {}",
            cfg.connections,
            cfg.threads,
            if cfg.h2 { "h2 streams" } else { "pipeline" },
            cfg.pipeline
        );
        println!(
            "  requests    {} in {:.2}s, errors {}",
            r.requests, secs, r.errors
        );
        println!("  requests/s  {rps:.0}");
        println!("  throughput  {:.2} MB/s", r.bytes as f64 / secs / 1e6);
        println!(
            "  latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/x?y").unwrap();
        assert_eq!(
            (t.addr.port(), t.host.as_str(), t.path.as_str()),
            (8080, "127.0.0.1:8080", "/x?y")
        );
        let t = parse_url("http://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        assert!(parse_url("redis://127.0.0.1").is_err());
        assert!(parse_url("ftp://x").is_err());
    }
}
