//! Upstream pipelining of the HTTP proxy, embedded through its library API on both drivers:
//! a client's pipelined GETs go down one upstream connection back-to-back and come back in
//! order; an upstream that closes after answering some of them has the rest retried; a POST
//! in a pipeline waits for the responses before it, goes alone and is never retried; real
//! nginx as upstream (its `keepalive_requests` closes connections mid-pipeline).
//!
//! Loopback only; every loop is bounded in count and time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_driver::DriverKind;

mod common;
use common::{config, proxy};

/// A request as the test upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    /// Which accepted connection (0, 1, …).
    conn: usize,
    method: String,
    path: String,
    /// Requests this one arrived together with (read before any of them was answered).
    batch: usize,
}

/// How the test upstream behaves.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// On its first connection only: answer this many requests of the first batch, then
    /// close (no `Connection: close`: the rest were read and silently dropped).
    close_after: Option<usize>,
    /// On every connection: the n-th response says `Connection: close`, then it closes.
    close_header_at: Option<usize>,
    /// Close the connection, unanswered, when a POST arrives.
    drop_on_post: bool,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicUsize>,
}

/// A complete request at the front of `buf`: (method, path, bytes it takes).
fn parse_request(buf: &[u8]) -> Option<(String, String, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.trim().parse().unwrap_or(0));
    (buf.len() >= end + len).then_some((method, path, end + len))
}

/// An upstream on a std listener: it reads requests in batches (whatever arrives before it
/// is idle for 300 ms), records them, then answers each with its path as the body.
fn upstream(b: Behaviour) -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(AtomicUsize::new(0));
    let (seen2, conns2) = (seen.clone(), conns.clone());
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(s) = s else { continue };
            let conn = conns2.fetch_add(1, Ordering::SeqCst);
            let seen = seen2.clone();
            std::thread::spawn(move || serve_conn(s, conn, b, &seen));
        }
    });
    Upstream { addr, seen, conns }
}

fn serve_conn(mut s: TcpStream, conn: usize, b: Behaviour, seen: &Mutex<Vec<Seen>>) {
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut answered = 0usize;
    let mut first_batch = true;
    while started.elapsed() < Duration::from_secs(20) {
        // A batch: everything that arrives until 300 ms without a byte (after the first).
        let mut batch: Vec<(String, String)> = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            while let Some((m, p, n)) = parse_request(&buf) {
                buf.drain(..n);
                batch.push((m, p));
            }
            let wait = if batch.is_empty() { 20_000 } else { 300 };
            s.set_read_timeout(Some(Duration::from_millis(wait)))
                .unwrap();
            match s.read(&mut chunk) {
                Ok(0) => {
                    if batch.is_empty() {
                        return;
                    }
                    break;
                }
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                Err(_) if !batch.is_empty() => break,
                Err(_) => return,
            }
        }
        {
            let mut seen = seen.lock().unwrap();
            for (m, p) in &batch {
                seen.push(Seen {
                    conn,
                    method: m.clone(),
                    path: p.clone(),
                    batch: batch.len(),
                });
            }
        }
        let mut out = Vec::new();
        for (k, (m, p)) in batch.iter().enumerate() {
            if m == "POST" && b.drop_on_post {
                let _ = s.write_all(&out);
                return;
            }
            if first_batch && conn == 0 && b.close_after == Some(k) {
                let _ = s.write_all(&out);
                return;
            }
            answered += 1;
            let close = b.close_header_at == Some(answered);
            let body = format!("{m} {p}");
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
                    body.len(),
                    if close { "Connection: close\r\n" } else { "" }
                )
                .as_bytes(),
            );
            if close {
                let _ = s.write_all(&out);
                return;
            }
        }
        first_batch = false;
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// One response from `r`: (status, body; none after a HEAD).
fn read_response(r: &mut BufReader<TcpStream>, head: bool) -> Option<(u16, String)> {
    let mut status = 0;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if status == 0 {
            status = line.split(' ').nth(1)?.parse().ok()?;
        } else if line == "\r\n" {
            break;
        } else if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; if head { 0 } else { len }];
    r.read_exact(&mut body).ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Send `requests` in one write; read as many responses.
fn pipeline(addr: SocketAddr, requests: &[String]) -> Vec<(u16, String)> {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let all: String = requests.concat();
    (&c).write_all(all.as_bytes()).unwrap();
    let mut r = BufReader::new(c);
    let mut got = Vec::new();
    for req in requests {
        match read_response(&mut r, req.starts_with("HEAD ")) {
            Some(x) => got.push(x),
            None => break,
        }
    }
    got
}

fn gets(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("GET /r{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect()
}

fn assert_in_order(got: &[(u16, String)], n: usize) {
    assert_eq!(got.len(), n, "{got:?}");
    for (i, (status, body)) in got.iter().enumerate() {
        assert_eq!(
            (*status, body.as_str()),
            (200, format!("GET /r{i}").as_str())
        );
    }
}

fn pipelined_gets_share_one_connection(driver: DriverKind) {
    let up = upstream(Behaviour::default());
    let (p, addr) = proxy(driver, config(vec![up.addr]));
    let got = pipeline(addr, &gets(8));
    assert_in_order(&got, 8);
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
    assert_eq!(p.stats.upstreams[0].active.load(Ordering::Relaxed), 0);
    assert_eq!(p.stats.upstreams[0].requests.load(Ordering::Relaxed), 8);
    assert_eq!(seen.len(), 8);
    // All eight arrived together, before any was answered.
    assert!(seen.iter().all(|s| s.conn == 0 && s.batch == 8), "{seen:?}");
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, (0..8).map(|i| format!("/r{i}")).collect::<Vec<_>>());
}

fn pipeline_depth_is_bounded(driver: DriverKind) {
    let up = upstream(Behaviour::default());
    let (_p, addr) = proxy(driver, config(vec![up.addr]));
    let got = pipeline(addr, &gets(40));
    assert_in_order(&got, 40);
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40);
    assert!(seen.iter().all(|s| s.batch <= 16), "{seen:?}");
    assert_eq!(seen[0].batch, 16, "{seen:?}");
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
}

fn depth_one_sends_one_at_a_time(driver: DriverKind) {
    let up = upstream(Behaviour::default());
    let mut cfg = config(vec![up.addr]);
    cfg.pipeline_depth = 1;
    let (_p, addr) = proxy(driver, cfg);
    let got = pipeline(addr, &gets(3));
    assert_in_order(&got, 3);
    let seen = up.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.batch == 1), "{seen:?}");
}

fn upstream_closing_midway_has_the_rest_retried(driver: DriverKind) {
    // Answers 3 of the first 10, then closes; the same upstream twice (a retry goes to
    // "another" upstream, a new connection here).
    let up = upstream(Behaviour {
        close_after: Some(3),
        ..Behaviour::default()
    });
    let (p, addr) = proxy(driver, config(vec![up.addr, up.addr]));
    let got = pipeline(addr, &gets(10));
    assert_in_order(&got, 10);
    let seen = up.seen.lock().unwrap().clone();
    // The first connection read all ten; the seven unanswered went again, once each.
    for i in 0..10 {
        let n = seen.iter().filter(|s| s.path == format!("/r{i}")).count();
        assert_eq!(n, if i < 3 { 1 } else { 2 }, "/r{i}: {seen:?}");
    }
    let stats = &p.stats;
    let retries: u64 = stats
        .upstreams
        .iter()
        .map(|u| u.retries.load(Ordering::Relaxed))
        .sum();
    assert_eq!(retries, 7);
}

fn connection_close_mid_pipeline_is_not_a_failure(driver: DriverKind) {
    // One upstream, which closes every connection after its 4th response (as nginx does
    // at `keepalive_requests`): the requests behind it were never processed and go again
    // on a new connection, without counting as retries.
    let up = upstream(Behaviour {
        close_header_at: Some(4),
        ..Behaviour::default()
    });
    let (p, addr) = proxy(driver, config(vec![up.addr]));
    let got = pipeline(addr, &gets(10));
    assert_in_order(&got, 10);
    assert!(up.conns.load(Ordering::SeqCst) >= 3);
    let u = &p.stats.upstreams[0];
    assert_eq!(u.failures.load(Ordering::Relaxed), 0);
    assert_eq!(u.retries.load(Ordering::Relaxed), 0);
}

fn post_waits_alone_and_is_never_retried(driver: DriverKind) {
    let up = upstream(Behaviour {
        drop_on_post: true,
        ..Behaviour::default()
    });
    let (_p, addr) = proxy(driver, config(vec![up.addr, up.addr]));
    let mut reqs = gets(2);
    reqs.push("POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc".into());
    reqs.extend(gets(5).into_iter().skip(3));
    let got = pipeline(addr, &reqs);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0], (200, "GET /r0".into()));
    assert_eq!(got[1], (200, "GET /r1".into()));
    assert_eq!(got[2].0, 502, "{got:?}");
    assert_eq!(got[3], (200, "GET /r3".into()));
    assert_eq!(got[4], (200, "GET /r4".into()));
    let seen = up.seen.lock().unwrap().clone();
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1, "{seen:?}");
    // Sent alone: after the responses before it, and nothing behind it.
    assert_eq!(posts[0].batch, 1, "{seen:?}");
    let first = seen.iter().find(|s| s.path == "/r0").unwrap();
    assert_eq!(first.batch, 2, "{seen:?}");
}

fn client_leaving_mid_pipeline_releases_everything(driver: DriverKind) {
    let up = upstream(Behaviour::default());
    let (p, addr) = proxy(driver, config(vec![up.addr]));
    let deadline = Instant::now() + Duration::from_secs(10);
    {
        let c = TcpStream::connect(addr).unwrap();
        (&c).write_all(gets(12).concat().as_bytes()).unwrap();
        // Gone once all 12 went upstream, before the upstream (which waits 300 ms to batch)
        // answers. (Its EOF aborts what is in flight: leaving earlier, fewer would go.)
        let u = &p.stats.upstreams[0];
        while u.requests.load(Ordering::Relaxed) < 12 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    while up.seen.lock().unwrap().len() < 12 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.seen.lock().unwrap().len(), 12);
    let u = &p.stats.upstreams[0];
    while u.active.load(Ordering::Relaxed) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(u.active.load(Ordering::Relaxed), 0);
    // The proxy still serves, pipelined.
    let got = pipeline(addr, &gets(4));
    assert_in_order(&got, 4);
    assert_eq!(u.active.load(Ordering::Relaxed), 0);
}

fn silent_upstream_times_out_the_whole_pipeline(driver: DriverKind) {
    // Answers the first request after 100 ms, then nothing: the head's timeout runs from
    // the previous response, and every request behind it is answered 504, in order.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in l.incoming().take(8).flatten() {
            std::thread::sleep(Duration::from_millis(100));
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nGET /r0");
            held.push(s);
        }
    });
    let mut cfg = config(vec![up]);
    cfg.response_timeout = Duration::from_millis(300);
    let (p, addr) = proxy(driver, cfg);
    let started = Instant::now();
    let got = pipeline(addr, &gets(5));
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0], (200, "GET /r0".into()));
    for g in &got[1..] {
        assert_eq!(g.0, 504, "{got:?}");
        assert!(g.1.contains("no response in time"), "{got:?}");
    }
    // One timeout for the lot, not one per request.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(p.stats.upstreams[0].active.load(Ordering::Relaxed), 0);
}

/// nginx on a free port, killed on drop.
struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx(keepalive_requests: usize) -> Option<Nginx> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = std::env::temp_dir().join(format!("ferry-pipe-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).ok()?;
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/logs/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  keepalive_requests {keepalive_requests};
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 \"GET $request_uri $connection $connection_requests\"; }}
  }}
}}
",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = std::process::Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let n = Nginx { child, dir, addr };
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return Some(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn against_nginx(driver: DriverKind) {
    let Some(ngx) = nginx(7) else {
        eprintln!("nginx not available: skipped");
        return;
    };
    let (p, addr) = proxy(driver, config(vec![ngx.addr]));
    let got = pipeline(addr, &gets(30));
    assert_eq!(got.len(), 30, "{got:?}");
    let mut conns = Vec::new();
    for (i, (status, body)) in got.iter().enumerate() {
        // "GET /r<i> <connection> <connection_requests>"
        let f: Vec<&str> = body.split(' ').collect();
        assert_eq!(
            (*status, f[0], f[1]),
            (200, "GET", format!("/r{i}").as_str())
        );
        conns.push((f[2].to_string(), f[3].parse::<usize>().unwrap()));
    }
    // nginx closes each connection after 7 requests: 30 requests in at least 5 connections,
    // each carrying several of them; nothing failed or needed a retry.
    let distinct: std::collections::BTreeSet<&String> = conns.iter().map(|c| &c.0).collect();
    assert!(distinct.len() >= 5, "{conns:?}");
    assert!(conns.iter().all(|c| c.1 <= 7), "{conns:?}");
    let u = &p.stats.upstreams[0];
    assert_eq!(u.failures.load(Ordering::Relaxed), 0);
    // HEAD and OPTIONS pipelined between GETs: no body after the HEAD's Content-Length.
    let reqs: Vec<String> = ["GET /a", "HEAD /b", "GET /c", "OPTIONS /d", "GET /e"]
        .iter()
        .map(|r| format!("{r} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    let got = pipeline(addr, &reqs);
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got[0].1.starts_with("GET /a "), "{got:?}");
    assert_eq!(got[1], (200, String::new()));
    assert!(got[2].1.starts_with("GET /c "), "{got:?}");
    assert!(got[4].1.starts_with("GET /e "), "{got:?}");
    assert_eq!(u.active.load(Ordering::Relaxed), 0);
    // And with curl (it does not pipeline, but reuses its connection).
    let urls: Vec<String> = (0..3).map(|i| format!("http://{addr}/c{i}")).collect();
    if let Ok(out) = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(&urls)
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        for i in 0..3 {
            assert!(text.contains(&format!("GET /c{i} ")), "{text}");
        }
    }
}

macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $(#[test]
            fn $name() {
                super::$name(ferry_driver::DriverKind::Epoll);
            })*
        }
        mod uring {
            $(#[test]
            fn $name() {
                super::$name(ferry_driver::DriverKind::Uring);
            })*
        }
    };
}

both_drivers!(
    pipelined_gets_share_one_connection,
    pipeline_depth_is_bounded,
    depth_one_sends_one_at_a_time,
    upstream_closing_midway_has_the_rest_retried,
    connection_close_mid_pipeline_is_not_a_failure,
    post_waits_alone_and_is_never_retried,
    client_leaving_mid_pipeline_releases_everything,
    silent_upstream_times_out_the_whole_pipeline,
    against_nginx,
);
