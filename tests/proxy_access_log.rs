//! End-to-end tests of `ferry proxy --access-log`: one line per exchange (answered by the
//! upstream, answered by the proxy itself, refused by the parser, or left by its client),
//! in nginx's `combined` layout plus the proxy's fields, or as JSON lines that Python's
//! `json` reads; the lines buffered per worker are all written when the proxy drains.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{python, tmp_dir, Server};

#[path = "support/upstream.rs"]
mod upstream;
use upstream::{Reply, Upstream};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// `ok` for most paths; `/close` closes unanswered; `/silent` never answers.
fn upstream() -> Upstream {
    Upstream::start(|_, _, head| {
        if head.starts_with("GET /close ") {
            Reply::Close
        } else if head.contains(" /silent ") {
            Reply::Silent
        } else {
            Reply::Bytes(OK)
        }
    })
}

/// Send `req` on a new connection and read until the proxy closes it (bounded).
fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The four kinds of line, through a proxy that logs to `log` in `format`; the proxy is
/// drained (SIGTERM) before the file is read.
fn run_exchanges(driver: &str, up: &Upstream, log: &Path, format: &str) {
    let log_s = log.to_str().unwrap();
    let (mut p, _admin) = Server::start_proxy(
        "http",
        driver,
        &up.addr.to_string(),
        &[
            "--health-interval",
            "0",
            "--retries",
            "0",
            "--access-log",
            log_s,
            "--access-log-format",
            format,
        ],
        &[],
    );
    // 1: answered by the upstream (curl: its user agent and referer are logged).
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "20",
            "-A",
            "ua \"test\"",
            "-e",
            "https://ref.example/",
        ])
        .arg(p.url("/a?b=1"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
    // 2: the upstream closed without answering: the proxy's 502.
    let r = exchange(
        p.addr,
        b"GET /close HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 502 "), "{r}");
    // 3: not HTTP: the parser's 400, no request.
    let r = exchange(p.addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    // 4: the client leaves mid-body: 499.
    {
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(b"POST /silent HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    // Drained: every buffered line is written before the process exits.
    std::thread::sleep(Duration::from_millis(300));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).success());
}

fn text_lines(driver: &str) {
    let up = upstream();
    let dir = tmp_dir("access-log", driver);
    let log = dir.join("access.log");
    run_exchanges(driver, &up, &log, "text");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let ua = format!("upstream={} rt=", up.addr);
    let l = lines[0];
    assert!(l.starts_with("127.0.0.1 - - ["), "{l}");
    assert!(
        l.contains(
            "] \"GET /a?b=1 HTTP/1.1\" 200 2 \"https://ref.example/\" \"ua \\x22test\\x22\" "
        ),
        "{l}"
    );
    assert!(l.contains(&ua), "{l}");
    let trace = l.rsplit_once(" trace=").unwrap().1;
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{l}"
    );
    assert!(
        lines[1].contains("\"GET /close HTTP/1.1\" 502 "),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains(&ua), "{}", lines[1]);
    assert!(
        lines[2].contains("] \"-\" 400 0 \"-\" \"-\" upstream=- "),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("\"POST /silent HTTP/1.1\" 499 0 "),
        "{}",
        lines[3]
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn json_lines(driver: &str) {
    let up = upstream();
    let dir = tmp_dir("access-log-json", driver);
    let log = dir.join("access.log");
    run_exchanges(driver, &up, &log, "json");
    // Python's json reads every line; print the fields the test checks.
    let script = "import json,sys\n\
        for l in open(sys.argv[1]):\n\
        \x20   o = json.loads(l)\n\
        \x20   assert o['time'].endswith('Z') and len(o['time']) == 24, o\n\
        \x20   print(o['method'], o['target'], o['status'], o['bytes'], o['user_agent'], \
        o['referer'], o['upstream'], len(o['trace_id']), type(o['duration']).__name__)\n";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    let a = up.addr;
    let want = format!(
        "GET /a?b=1 200 2 ua \"test\" https://ref.example/ {a} 32 float\n\
         GET /close 502 N   {a} 32 float\n\
         \x20 400 0   None 0 float\n\
         POST /silent 499 0   {a} 32 float\n"
    );
    // The 502's body length is whatever the proxy's text is: compare the rest.
    let norm = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| {
                let mut w: Vec<&str> = l.split(' ').collect();
                if w.len() > 3 && w[2] == "502" {
                    w[3] = "N";
                }
                w.join(" ")
            })
            .collect()
    };
    assert_eq!(norm(&got), norm(&want), "{got}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A log that cannot be opened, or a protocol without access logs: a one-line usage error
/// naming the flag (exit 2), before anything listens.
#[test]
fn bad_access_log_is_a_usage_error() {
    for (proto, path, want) in [
        (
            "http",
            "/nonexistent-dir/x/access.log",
            "--access-log /nonexistent-dir/x/access.log:",
        ),
        (
            "redis",
            "/tmp/ferry-never-written.log",
            "--access-log: only with --protocol http",
        ),
    ] {
        let out = Command::new(common::BIN)
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
            ])
            .args(["--protocol", proto, "--access-log", path])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

per_driver!(text_lines, json_lines);
