//! End-to-end tests of `ferry serve` under each driver, driven by curl, wrk and raw sockets.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::{sha256, Server, BIN};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

impl Server {
    fn start(driver: &str, extra: &[&str]) -> Server {
        Server::start_env(driver, extra, &[])
    }

    fn start_env(driver: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = vec![
            "serve",
            "--http",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--driver",
            driver,
        ];
        args.extend_from_slice(extra);
        Server::spawn(&args, env)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_limited(args, env, None)
    }

    fn spawn_limited(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Server {
        let s = Server::launch("http", args, env, nofile);
        s.assert_driver(args);
        s
    }

    /// A server started with `--driver D` (not `auto`) really runs on D: its listening line
    /// and `/health` say so, so a silent fallback (say, from io_uring to epoll) fails the test.
    fn assert_driver(&self, args: &[&str]) {
        let Some(want) = args
            .windows(2)
            .find(|w| w[0] == "--driver")
            .map(|w| w[1])
            .filter(|d| *d != "auto")
        else {
            return;
        };
        assert_eq!(self.driver, want, "the listening line names another driver");
        let mut c = connect(self.addr);
        c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200") && text.contains(&format!("\"driver\":\"{want}\"")),
            "/health must report driver {want}: {text:?}"
        );
    }
}

fn curl(args: &[&str]) -> Output {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tmp_dir(name: &str) -> PathBuf {
    common::tmp_dir("e2e", name)
}

/// Deterministic pseudo-random bytes.
fn write_data(path: &Path, len: usize) {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ len as u64;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).unwrap();
}

/// Read one HTTP/1.1 response (content-length or chunked body) from `r`.
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    read_response_to(r, false)
}

/// Read one HTTP/1.1 response; `head`: the answer to a HEAD request (never a body).
fn read_response_to(
    r: &mut BufReader<TcpStream>,
    head: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head {
        // The answer to HEAD has headers only.
    } else if let Some(n) = get("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut sz = String::new();
            r.read_line(&mut sz).unwrap();
            let n = usize::from_str_radix(sz.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    (status, headers, body)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

// ---- the suite, run once per driver ---------------------------------------------------------

fn routes(driver: &str) {
    let s = Server::start(driver, &[]);
    assert_eq!(s.driver, driver);
    let out = curl(&["-i", &s.url("/")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello world\n"), "{text}");
    let health = curl(&[&s.url("/health")]);
    assert!(String::from_utf8_lossy(&health.stdout).starts_with("{\"status\":\"ok\""));
    let nf = curl(&["-o", "/dev/null", "-w", "%{http_code}", &s.url("/nope")]);
    assert_eq!(String::from_utf8_lossy(&nf.stdout), "404");
}

fn keep_alive(driver: &str) {
    let s = Server::start(driver, &[]);
    let out = curl(&[
        "-w",
        "[%{http_code} %{num_connects}]",
        &s.url("/"),
        &s.url("/health"),
        &s.url("/"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[200 1]"), "{text}");
    assert_eq!(
        text.matches("[200 0]").count(),
        2,
        "the later requests must reuse the connection: {text}"
    );
}

fn chunked_upload(driver: &str) {
    let s = Server::start(driver, &[]);
    let d = tmp_dir(&format!("chunked-{driver}"));
    let (src, dst) = (d.join("in"), d.join("out"));
    write_data(&src, 3 * 1024 * 1024 + 17);
    let body = format!("@{}", src.display());
    let out = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &body,
        "-o",
        dst.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &s.url("/echo"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(sha256(&src), sha256(&dst));
    let _ = std::fs::remove_dir_all(d);
}

fn expect_continue(driver: &str) {
    let s = Server::start(driver, &[]);
    let d = tmp_dir(&format!("continue-{driver}"));
    let (src, dst) = (d.join("in"), d.join("out"));
    write_data(&src, 100_000);
    let body = format!("@{}", src.display());
    let out = curl(&[
        "-v",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &body,
        "-X",
        "PUT",
        "-o",
        dst.to_str().unwrap(),
        &s.url("/echo"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP/1.1 100 Continue"), "{err}");
    assert!(err.contains("HTTP/1.1 200"), "{err}");
    assert_eq!(sha256(&src), sha256(&dst));
    let _ = std::fs::remove_dir_all(d);
}

fn echo_20mb(driver: &str, extra: &[&str]) {
    let s = Server::start(driver, extra);
    let d = tmp_dir(&format!("echo20-{driver}-{}", extra.len()));
    let (src, dst) = (d.join("in"), d.join("out"));
    write_data(&src, 20 * 1024 * 1024);
    let body = format!("@{}", src.display());
    let out = curl(&[
        "--data-binary",
        &body,
        "-o",
        dst.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &s.url("/echo"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(sha256(&src), sha256(&dst));
    let _ = std::fs::remove_dir_all(d);
}

/// One request of the pipelining test and the response it must get.
struct Pipelined {
    request: Vec<u8>,
    head: bool,
    status: u16,
    body: Option<Vec<u8>>,
    body_prefix: &'static [u8],
}

/// Request `i` of the pipelining test: GET, HEAD, POST /echo (content-length and chunked
/// bodies of varying size), 404s, /health, in a fixed rotation.
fn pipelined(i: usize) -> Pipelined {
    let payload: Vec<u8> = format!("body {i}:")
        .into_bytes()
        .into_iter()
        .chain((0..i * 37).map(|k| b'a' + ((k + i) % 26) as u8))
        .collect();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").into_bytes();
    let (request, head, status, body, body_prefix): (Vec<u8>, bool, u16, Option<Vec<u8>>, &[u8]) =
        match i % 7 {
            0 => (get("/"), false, 200, Some(b"hello world\n".to_vec()), b""),
            1 => (
                b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
                true,
                200,
                Some(Vec::new()),
                b"",
            ),
            2 => {
                let mut r = format!(
                    "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
                    payload.len()
                )
                .into_bytes();
                r.extend_from_slice(&payload);
                (r, false, 200, Some(payload.clone()), b"")
            }
            3 => (get(&format!("/nope/{i}")), false, 404, None, b""),
            4 => (get("/health"), false, 200, None, b"{\"status\":\"ok\""),
            5 => {
                // Chunked, in two chunks.
                let (a, b) = payload.split_at(payload.len() / 2);
                let mut r = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec();
                for c in [a, b] {
                    r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    r.extend_from_slice(c);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\n\r\n");
                (r, false, 200, Some(payload.clone()), b"")
            }
            _ => (
                b"HEAD /nope HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
                true,
                404,
                Some(Vec::new()),
                b"",
            ),
        };
    Pipelined {
        request,
        head,
        status,
        body,
        body_prefix,
    }
}

/// 100 mixed requests in one write on one raw socket: every response comes back, in order,
/// with the right status and body.
fn pipelining(driver: &str, extra: &[&str]) {
    const N: usize = 100;
    let s = Server::start(driver, extra);
    let c = connect(s.addr);
    let reqs: Vec<Pipelined> = (0..N).map(pipelined).collect();
    let all: Vec<u8> = reqs.iter().flat_map(|r| r.request.clone()).collect();
    // Write from another thread: the server may answer before it has read everything.
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&all));
    let mut r = BufReader::new(c);
    for (i, want) in reqs.iter().enumerate() {
        let (status, headers, body) = read_response_to(&mut r, want.head);
        assert_eq!(status, want.status, "response {i}: {headers:?}");
        if let Some(b) = &want.body {
            assert!(
                body == *b,
                "response {i}: body {:?}",
                String::from_utf8_lossy(&body)
            );
        }
        assert!(body.starts_with(want.body_prefix), "response {i}");
        if want.head {
            let len = headers.iter().find(|(k, _)| k == "content-length");
            assert!(
                len.is_some(),
                "HEAD response {i} names its length: {headers:?}"
            );
        }
    }
    writer.join().unwrap().unwrap();
    // Nothing beyond the 100 responses, and the connection is still usable.
    let mut c = r.into_inner();
    assert_eq!(get_ok(&mut c), 200);
}

fn metrics_count(driver: &str) {
    let s = Server::start(driver, &[]);
    for _ in 0..5 {
        curl(&["-o", "/dev/null", &s.url("/")]);
    }
    let text = String::from_utf8(curl(&[&s.url("/metrics")]).stdout).unwrap();
    assert!(metric(&text, "ferry_requests_total{") >= 6, "{text}");
    assert!(metric(&text, "ferry_responses_total{") >= 5, "{text}");
    assert!(
        metric(&text, "ferry_connections_accepted_total{") >= 6,
        "{text}"
    );
    assert!(
        metric(&text, "ferry_request_duration_seconds_count{") >= 5,
        "{text}"
    );
    assert!(text.contains(&format!("driver=\"{driver}\"")), "{text}");
    assert!(
        text.contains("ferry_request_duration_seconds_bucket{"),
        "{text}"
    );
    // The latency quantiles p50, p90, p99 and p999 of the http listener, each with a value.
    for q in ["0.5", "0.9", "0.99", "0.999"] {
        let prefix = format!(
            "ferry_request_duration_quantile_seconds{{protocol=\"http\",driver=\"{driver}\",quantile=\"{q}\"}} "
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no p{q} line: {text}"));
        let v = &line[prefix.len()..];
        assert!(
            v == "+Inf" || v.parse::<f64>().is_ok_and(|x| x > 0.0),
            "{line}"
        );
    }
}

fn sigterm_drains(driver: &str) {
    sigterm_drains_with(driver, &[]);
}

fn sigterm_drains_app_workers(driver: &str) {
    sigterm_drains_with(driver, &["--app-workers", "2"]);
}

fn sigterm_drains_with(driver: &str, extra: &[&str]) {
    let mut args = vec!["--drain-timeout", "20s"];
    args.extend_from_slice(extra);
    let mut s = Server::start(driver, &args);
    // An idle keep-alive connection: closed at shutdown.
    let mut idle = connect(s.addr);
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut idle_r = BufReader::new(idle.try_clone().unwrap());
    assert_eq!(read_response(&mut idle_r).0, 200);
    // An upload in flight.
    let mut busy = connect(s.addr);
    busy.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n01234")
        .unwrap();
    let mut busy_r = BufReader::new(busy.try_clone().unwrap());
    // The echo head and the first half come back before the signal: the request is in flight.
    let mut line = String::new();
    busy_r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    s.signal(libc::SIGTERM);
    // The idle connection is closed by the server.
    let mut buf = [0u8; 64];
    assert_eq!(idle_r.read(&mut buf).unwrap(), 0);
    // The upload still completes.
    busy.write_all(b"56789").unwrap();
    let mut rest = Vec::new();
    busy_r.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.ends_with("\r\n\r\n0123456789"), "{rest:?}");
    // (read_to_end returned: the server closed the connection after the last response.)
    let status = s.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

fn panic_is_contained(driver: &str, extra: &[&str]) {
    let s = Server::start_env(driver, extra, &[("FERRY_DEMO_PANIC", "1")]);
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &s.url("/__panic")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "500");
    let out = curl(&["-w", "%{http_code}", &s.url("/")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n200");
    let text = String::from_utf8(curl(&[&s.url("/metrics")]).stdout).unwrap();
    assert_eq!(metric(&text, "ferry_panics_total{"), 1, "{text}");
}

fn wrk_smoke(driver: &str, extra: &[&str]) {
    let s = Server::start(driver, extra);
    let out = Command::new("wrk")
        .args(["-t1", "-c16", "-d2s", "--timeout", "5s", &s.url("/")])
        .output()
        .expect("run wrk");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    let n: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(n > 0, "{text}");
}

fn drain_deadline_ends_a_stuck_upload(driver: &str) {
    let mut s = Server::start(driver, &["--drain-timeout", "1s"]);
    let mut stuck = connect(s.addr);
    stuck
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab")
        .unwrap();
    let mut r = BufReader::new(stuck.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    s.signal(libc::SIGINT);
    // The client never finishes: the server gives up at the drain deadline and exits 0.
    let status = s.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
}

fn bench_json(driver: &str) {
    let s = Server::start(driver, &[]);
    let url = s.url("/");
    let out = Command::new(BIN)
        .args(["bench", &url, "-c", "4", "-n", "2000", "-P", "4", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.trim();
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"requests\":2000,"), "{line}");
    assert!(line.contains("\"errors\":0,"), "{line}");
    for k in [
        "\"duration_s\":",
        "\"rps\":",
        "\"latency_us\":{\"p50\":",
        "\"p90\":",
        "\"p99\":",
        "\"p999\":",
        "\"max\":",
    ] {
        assert!(line.contains(k), "{k} in {line}");
    }
    // A short duration run completes some requests and reports no errors.
    let out = Command::new(BIN)
        .args(["bench", &url, "-c", "8", "-d", "1s"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("errors 0"), "{text}");
}

/// Whether `c` has nothing to read yet (no byte, no EOF, no error).
fn nothing_to_read(c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let r = c.peek(&mut b);
    c.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A client trickling its header one byte at a time gets 408 and a close at the header
/// deadline; other clients are served while it trickles.
fn slowloris_gets_408_while_others_are_served(driver: &str) {
    let d = tmp_dir(&format!("slow-{driver}"));
    let f = d.join("ferry.toml");
    std::fs::write(&f, "header_read_timeout = \"2s\"\n").unwrap();
    let s = Server::start(driver, &["--config", f.to_str().unwrap()]);
    let mut slow = connect(s.addr);
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Trickle (bounded), serving another client at every step, until the server answers.
    let mut got = Vec::new();
    let mut served_during = 0;
    for _ in 0..100 {
        if slow.write_all(b"a").is_err() {
            break;
        }
        let mut c = connect(s.addr);
        assert_eq!(get_ok(&mut c), 200);
        // Served while the trickler still waits for its answer: its header is still open.
        if nothing_to_read(&slow) {
            served_during += 1;
        }
        let mut b = [0u8; 256];
        match slow.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    eprintln!("{driver}: {served_during} clients served while the header trickled");
    assert!(
        served_during >= 1,
        "no other client was served while the header trickled"
    );
    // Then the server closes the connection: EOF after the (complete) 408 response. (A reset
    // instead means a trickled byte crossed the close: closed too.)
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    let mut closed = false;
    for _ in 0..1000 {
        let mut b = [0u8; 256];
        match slow.read(&mut b) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => rest.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(e) => panic!("the connection stays open after 408: {e}"),
        }
    }
    assert!(closed, "the connection stays open after 408");
    got.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "one response, then the close: {text:?}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// A loopback address of its own for a test that opens thousands of connections, so their
/// 4-tuples (and the server's TIME_WAIT entries) never collide with other tests' ports.
fn private_loopback(salt: u8) -> String {
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}:0",
        100 + (pid % 100) as u8,
        salt,
        1 + (pid / 100 % 250) as u8
    )
}

fn start_on(driver: &str, listen: &str) -> Server {
    Server::spawn(
        &[
            "serve",
            "--http",
            listen,
            "--workers",
            "1",
            "--driver",
            driver,
        ],
        &[],
    )
}

fn garbage_gets_400_and_close(driver: &str) {
    let s = start_on(
        driver,
        &private_loopback(if driver == "epoll" { 1 } else { 2 }),
    );
    // 10k connections of garbage, four clients at a time: each gets 400 and a close.
    const N: usize = 10_000;
    const THREADS: usize = 4;
    let addr = s.addr;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                for i in 0..N / THREADS {
                    let mut c = connect(addr);
                    c.write_all(b"\x00\x01garbage garbage\r\n\r\n").unwrap();
                    let mut out = Vec::new();
                    c.read_to_end(&mut out).unwrap();
                    assert!(
                        out.starts_with(b"HTTP/1.1 400"),
                        "connection {i}: {:?}",
                        String::from_utf8_lossy(&out)
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let text = String::from_utf8(curl(&[&s.url("/metrics")]).stdout).unwrap();
    assert!(
        metric(&text, "ferry_protocol_errors_total{") >= N as u64,
        "{text}"
    );
    // No leak: every garbage connection was closed (only the metrics one is open).
    assert!(metric(&text, "ferry_connections_active{") <= 1, "{text}");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", s.child.id()))
        .unwrap()
        .count();
    assert!(
        fds < 64,
        "{fds} file descriptors open after {N} garbage connections"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

fn idle_connections_are_cheap(driver: &str) {
    let s = start_on(
        driver,
        &private_loopback(if driver == "epoll" { 3 } else { 4 }),
    );
    let mut warm = connect(s.addr);
    assert_eq!(get_ok(&mut warm), 200);
    let before = rss_kib(s.child.id());
    // 10k idle connections (the test process's and the server's fd limits are 20k here).
    let n = 10_000;
    let conns: Vec<TcpStream> = (0..n).map(|_| connect(s.addr)).collect();
    // Wait (bounded) until the server accepted them all.
    let mut active = 0;
    for _ in 0..400 {
        let text = String::from_utf8(curl(&[&s.url("/metrics")]).stdout).unwrap();
        active = metric(&text, "ferry_connections_active{");
        if active > n as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(active > n as u64, "{active}");
    let after = rss_kib(s.child.id());
    let per_conn = (after.saturating_sub(before)) * 1024 / n as u64;
    eprintln!("{driver}: {per_conn} bytes of RSS per idle connection ({n} connections)");
    assert!(per_conn < 8 * 1024, "{per_conn} bytes per idle connection");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", s.child.id()))
        .unwrap()
        .count();
    assert!(fds < n + 64, "{fds} fds for {n} connections");
    // Still serving while they sit there, and they are all usable.
    assert_eq!(get_ok(&mut warm), 200);
    let mut some = conns.into_iter().step_by(1000).collect::<Vec<_>>();
    for c in &mut some {
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert_eq!(get_ok(c), 200);
    }
}

/// Python's `http.client` (keep-alive, a chunked upload, HEAD, 404) against `ferry serve`.
fn python_http_client(driver: &str) {
    let s = Server::start(driver, &[]);
    let script = r#"
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20)
c.request("GET", "/")
r = c.getresponse(); body = r.read()
assert r.status == 200 and body == b"hello world\n", (r.status, body)
for i in range(50):
    c.request("POST", "/echo", body=b"x" * (i * 1000))
    r = c.getresponse(); body = r.read()
    assert r.status == 200 and body == b"x" * (i * 1000), (i, r.status, len(body))
def chunks():
    for i in range(20):
        yield bytes([65 + i]) * 5000
c.request("POST", "/echo", body=chunks(), encode_chunked=True)
r = c.getresponse(); body = r.read()
assert r.status == 200 and body == b"".join(chunks()), (r.status, len(body))
c.request("HEAD", "/")
r = c.getresponse(); body = r.read()
assert r.status == 200 and body == b"" and r.getheader("content-length") == "12", r.getheaders()
c.request("GET", "/nope")
r = c.getresponse(); r.read()
assert r.status == 404, r.status
print("ok")
"#;
    let out = common::run(Command::new(common::python()).args([
        "-c",
        script,
        &s.addr.ip().to_string(),
        &s.port(),
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

fn ipv6_listener(driver: &str) {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        common::skip_or_fail("no IPv6 loopback here");
        return;
    }
    let s = Server::spawn(
        &[
            "serve",
            "--http",
            "[::1]:0",
            "--workers",
            "1",
            "--driver",
            driver,
        ],
        &[],
    );
    assert!(s.addr.is_ipv6());
    let out = curl(&["-g", &s.url("/")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
}

fn two_workers_share_the_port(driver: &str) {
    let s = Server::spawn(
        &[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--driver",
            driver,
        ],
        &[],
    );
    for _ in 0..20 {
        let mut c = connect(s.addr);
        assert_eq!(get_ok(&mut c), 200);
    }
    let text = String::from_utf8(curl(&[&s.url("/metrics")]).stdout).unwrap();
    assert!(
        text.contains("ferry_requests_total{protocol=\"http\",driver=\"")
            && text.contains("worker=\"1\"}"),
        "{text}"
    );
    assert!(metric(&text, "ferry_requests_total{") >= 21, "{text}");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

fn streamed_upload_memory_is_bounded(driver: &str) {
    let s = Server::start(driver, &[]);
    // 1 GiB streamed chunked through /echo; the server must not buffer it.
    let script = format!(
        "head -c 1073741824 /dev/zero | curl -sS --max-time 300 -T - -H 'Transfer-Encoding: chunked' -o /dev/null -w '%{{http_code}} %{{size_download}}' {}",
        s.url("/echo")
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1073741824");
    let peak = vm_hwm_kib(s.child.id());
    eprintln!("{driver}: peak RSS {peak} KiB after a 1 GiB streamed echo");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

fn unix_socket_listener(driver: &str) {
    let d = tmp_dir(&format!("unix-{driver}"));
    let path = d.join("ferry.sock");
    let http = format!("unix:{}", path.display());
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--http",
        &http,
        "--workers",
        "2",
        "--driver",
        driver,
    ])
    .env_remove("FERRY_DRIVER")
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim_end(),
        format!("ferry: listening http {http} driver={driver}")
    );
    let sock = path.to_str().unwrap();
    let out = curl(&[
        "--unix-socket",
        sock,
        "http://localhost/",
        "http://localhost/health",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("hello world\n{\"status\":\"ok\""),
        "{text}"
    );
    let src = d.join("in");
    write_data(&src, 1 << 20);
    let dst = d.join("out");
    let body = format!("@{}", src.display());
    curl(&[
        "--unix-socket",
        sock,
        "--data-binary",
        &body,
        "-o",
        dst.to_str().unwrap(),
        "http://localhost/echo",
    ]);
    assert_eq!(sha256(&src), sha256(&dst));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!path.exists(), "the socket file is removed at exit");
    let _ = std::fs::remove_dir_all(d);
}

fn get_ok(c: &mut TcpStream) -> u16 {
    c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    read_response(&mut r).0
}

fn accept_backoff_on_emfile(driver: &str) {
    let args = [
        "serve",
        "--http",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--driver",
        driver,
    ];
    let s = Server::spawn_limited(&args, &[], Some(24));
    // More connections than descriptors: the kernel queues them, the server hits EMFILE.
    let mut conns: Vec<TcpStream> = (0..40).map(|_| connect(s.addr)).collect();
    assert_eq!(get_ok(&mut conns[0]), 200);
    std::thread::sleep(Duration::from_millis(500));
    // Free descriptors: the server accepts again once its back-off ends.
    conns.truncate(2);
    let mut extra = connect(s.addr);
    assert_eq!(get_ok(&mut extra), 200);
    let text = String::from_utf8(curl(&[&s.url("/metrics")]).stdout).unwrap();
    assert!(metric(&text, "ferry_accept_errors_total{") >= 1, "{text}");
    // Not a busy loop: a spinning accept would wake the loop millions of times.
    let loops = metric(&text, "ferry_event_loop_iterations_total{");
    assert!(loops < 100_000, "{loops} loop iterations");
}

fn max_connections_limit(driver: &str) {
    let d = tmp_dir(&format!("maxconn-{driver}"));
    let f = d.join("ferry.toml");
    std::fs::write(&f, "max_connections = 3\n").unwrap();
    let s = Server::start(driver, &["--config", f.to_str().unwrap()]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(s.addr)).collect();
    for c in held.iter_mut() {
        assert_eq!(get_ok(c), 200);
    }
    // The fourth waits in the backlog until one of the first three closes.
    let mut fourth = connect(s.addr);
    fourth
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let r = fourth.read(&mut b);
    assert!(r.is_err(), "served beyond the limit: {r:?}");
    held.pop();
    fourth.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut r = BufReader::new(fourth);
    assert_eq!(read_response(&mut r).0, 200);
    let _ = std::fs::remove_dir_all(d);
}

per_driver!(
    routes,
    keep_alive,
    chunked_upload,
    expect_continue,
    metrics_count,
    sigterm_drains,
    sigterm_drains_app_workers,
    drain_deadline_ends_a_stuck_upload,
    slowloris_gets_408_while_others_are_served,
    garbage_gets_400_and_close,
    idle_connections_are_cheap,
    python_http_client,
    ipv6_listener,
    two_workers_share_the_port,
    unix_socket_listener,
    streamed_upload_memory_is_bounded,
    bench_json,
    accept_backoff_on_emfile,
    max_connections_limit,
);

#[test]
fn epoll_echo_20mb_sha256() {
    echo_20mb("epoll", &[]);
}
#[test]
fn uring_echo_20mb_sha256() {
    echo_20mb("uring", &[]);
}
#[test]
fn epoll_echo_20mb_app_workers() {
    echo_20mb("epoll", &["--app-workers", "2"]);
}
#[test]
fn uring_echo_20mb_app_workers() {
    echo_20mb("uring", &["--app-workers", "2"]);
}
#[test]
fn epoll_pipelining_100() {
    pipelining("epoll", &[]);
}
#[test]
fn uring_pipelining_100() {
    pipelining("uring", &[]);
}
#[test]
fn epoll_pipelining_100_app_workers() {
    pipelining("epoll", &["--app-workers", "2"]);
}
#[test]
fn uring_pipelining_100_app_workers() {
    pipelining("uring", &["--app-workers", "2"]);
}
#[test]
fn epoll_panic_is_contained() {
    panic_is_contained("epoll", &[]);
}
#[test]
fn uring_panic_is_contained_on_app_workers() {
    panic_is_contained("uring", &["--app-workers", "1"]);
}
#[test]
fn epoll_wrk_smoke() {
    wrk_smoke("epoll", &[]);
}
#[test]
fn uring_wrk_smoke() {
    wrk_smoke("uring", &[]);
}
#[test]
fn uring_wrk_smoke_app_workers() {
    wrk_smoke("uring", &["--app-workers", "1"]);
}

// ---- CLI contract -------------------------------------------------------------------------

#[test]
fn bad_flag_exits_2_with_one_line() {
    for (args, flag) in [
        (&["serve", "--bogus"][..], "--bogus"),
        (&["serve", "--workers", "0"][..], "--workers"),
        (&["serve", "--driver", "nope"][..], "--driver"),
        (&["serve", "--http", "not-an-address"][..], "--http"),
        (
            &["serve", "--drain-timeout", "forever"][..],
            "--drain-timeout",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn port_in_use_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--http", &addr, "--workers", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A second `ferry serve` on a port the first one holds is refused too (both set
/// `SO_REUSEPORT`, which alone would let the second silently take half the connections).
#[test]
fn second_ferry_on_the_same_port_exits_1() {
    let first = Server::start("epoll", &[]);
    let addr = first.addr.to_string();
    let out = Command::new(BIN)
        .args(["serve", "--http", &addr, "--workers", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&addr) && err.contains("already in use"),
        "{err}"
    );
    drop(first);
}

#[test]
fn config_file_is_read() {
    let d = tmp_dir("config");
    let f = d.join("ferry.toml");
    std::fs::write(
        &f,
        "driver = \"epoll\"\nworkers = 1\ndrain_timeout = \"2s\"\nmax_connections = 100\n",
    )
    .unwrap();
    let mut s = Server::spawn(
        &[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--config",
            f.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(s.driver, "epoll");
    s.signal(libc::SIGINT);
    assert_eq!(s.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "wrokers = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrokers"));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn ferry_driver_env_overrides_auto() {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--http", "127.0.0.1:0", "--workers", "1"])
        .env("FERRY_DRIVER", "epoll")
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.trim_end().ends_with("driver=epoll"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bench_reports_an_unreachable_target_in_one_line() {
    for (args, flag) in [
        (&["bench", "http://127.0.0.1:1/", "--h2"][..], "127.0.0.1:1"),
        (&["bench", "redis://127.0.0.1:1/"][..], "127.0.0.1:1"),
        (&["bench", "http://127.0.0.1:1/", "-m", "4"][..], "--h2"),
        (
            &["bench", "redis://127.0.0.1:1/", "-t", "nope"][..],
            "--tests",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(flag), "{err}");
    }
}

/// A seccomp filter that makes `io_uring_setup` fail with ENOSYS, as some container runtimes do.
fn deny_io_uring() -> std::io::Result<()> {
    // Classic BPF: load the syscall number, return ERRNO(ENOSYS) for io_uring_setup (425 on
    // every architecture since Linux 5.1), allow everything else.
    let filter = [
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        }, // ld [nr]
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: 425,
        }, // jeq io_uring_setup
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        }, // allow
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: prctl with plain integer arguments; then PR_SET_SECCOMP reads `prog`, which
    // points at `filter`, both alive for the duration of the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, 2, &prog as *const libc::sock_fprog) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn uring_falls_back_to_epoll_when_blocked() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--http",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--driver",
        "uring",
        "--log-format",
        "json",
    ])
    .env_remove("FERRY_DRIVER")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec; only prctl calls.
    unsafe {
        cmd.pre_exec(deny_io_uring);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let rest = line
        .trim()
        .strip_prefix("ferry: listening http ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let (addr, drv) = rest.split_once(' ').unwrap();
    assert_eq!(drv, "driver=epoll");
    let out = curl(&[&format!("http://{addr}/")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("io_uring unavailable") && err.contains("epoll"),
        "{err}"
    );
    assert!(
        err.starts_with('{') && err.contains("\"level\":\"WARN\""),
        "{err}"
    );
}

#[test]
fn probe_lists_transports_and_auto() {
    let out = Command::new(BIN).arg("probe").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for t in ["io_uring", "epoll", "AF_XDP", "DPDK", "RDMA", "raw", "std"] {
        assert!(text.lines().any(|l| l.starts_with(t)), "{t}: {text}");
    }
    // The raw and RDMA rows are really probed and explain their verdict.
    let line = |t: &str| text.lines().find(|l| l.starts_with(t)).unwrap().to_string();
    let raw = line("raw ");
    assert!(raw.contains("AF_PACKET"), "{raw}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(raw.split_whitespace().nth(1) == Some("yes"), "{raw}");
    }
    // io_uring: the kernel's opcode table was asked, not just a ring set up.
    let uring = line("io_uring ");
    if uring.split_whitespace().nth(1) == Some("yes") {
        assert!(uring.contains("opcodes probed"), "{uring}");
    }
    let rdma = line("RDMA ");
    assert!(rdma.contains("RDMA") && rdma.len() > 40, "{rdma}");
    if !std::path::Path::new("/sys/class/infiniband").exists() {
        assert!(
            rdma.contains("no RDMA devices: the kernel has no InfiniBand support"),
            "{rdma}"
        );
        assert!(rdma.split_whitespace().nth(1) == Some("no"), "{rdma}");
    }
    let last = text.trim_end().lines().last().unwrap();
    assert!(last == "auto: uring" || last == "auto: epoll", "{last}");
}
