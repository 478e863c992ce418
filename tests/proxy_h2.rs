//! End-to-end tests of HTTP/2 clients of `ferry proxy --protocol http` under each driver:
//! curl with prior knowledge (h2c) and over TLS (ALPN `h2`) through the proxy to a real nginx
//! (and `ferry serve` for echoed bodies), multi-MiB bodies both ways, h2load with many
//! concurrent streams, Python's `h2` for streams that fail on their own, a client
//! RST_STREAM mid-response, and GOAWAY at shutdown; HTTP/1.1 clients on the same port.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{python, sha256, tmp_dir, Server};

#[path = "support/nginx.rs"]
mod support;
use support::Nginx;

#[path = "support/tls.rs"]
mod tls;
use tls::Cert;

/// nginx: `/hello` says which of its connections served it and what it saw; `/close`
/// closes the connection without an answer; `/sink` reads the request body first (then
/// answers as `/hello`); `/big.bin` is a 5 MiB file (with the connection number in
/// `X-Conn`).
fn nginx() -> Nginx {
    Nginx::start(
        "proxy-h2",
        |port, d| {
            format!(
                " server {{\n  listen 127.0.0.1:{port};\n  root {d}/html;\n\
                  location = /hello {{ return 200 \"conn=$connection host=$host cookie=$http_cookie xff=$http_x_forwarded_for via=$http_via\\n\"; }}\n\
                  location = /close {{ return 444; }}\n\
                  location = /sink {{ proxy_pass http://127.0.0.1:{port}/hello; }}\n\
                  location = /big.bin {{ add_header X-Conn $connection; }}\n }}"
            )
        },
        |d| {
            std::fs::create_dir_all(d.join("html")).unwrap();
            std::fs::write(d.join("html/big.bin"), pattern(5 * 1024 * 1024)).unwrap();
        },
    )
}

fn pattern(n: u32) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// `ferry proxy --protocol http` on `driver` to `upstreams`, with its admin address.
fn proxy(driver: &str, upstreams: &str, extra: &[&str]) -> (Server, std::net::SocketAddr) {
    let mut flags = vec!["--health-interval", "0"];
    flags.extend_from_slice(extra);
    Server::start_proxy("http", driver, upstreams, &flags, &[])
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metrics(admin: std::net::SocketAddr) -> String {
    ok(&curl(&[&format!("http://{admin}/metrics")]))
}

fn metric(text: &str, prefix: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Wait (bounded) until the access log holds `needle`.
fn log_has(path: &Path, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || t0.elapsed() > Duration::from_secs(10) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// h2c with prior knowledge: GET with two `Cookie` fields (joined for the upstream), a
/// 5 MiB response, a 6 MiB upload echoed (`ferry serve`; with `Expect: 100-continue`,
/// answered `100` by the proxy), and a 3 MiB upload without a
/// `content-length` (chunked to the upstream); the access log says `HTTP/2.0`, the metrics
/// count the connections; an HTTP/1.1 client on the same port is served as before.
fn h2c_prior_knowledge(driver: &str) {
    let dir = tmp_dir("proxy-h2c", driver);
    let up = nginx();
    let log = dir.join("access.log");
    let log_s = log.display().to_string();
    let (p, admin) = proxy(
        driver,
        &format!("127.0.0.1:{}", up.port),
        &["--access-log", &log_s],
    );
    let url = p.url("/hello");
    let out = ok(&curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Cookie: a=1",
        "-H",
        "Cookie: b=2",
        "-w",
        "|%{http_version}",
        &url,
    ]));
    assert!(
        out.contains("cookie=a=1; b=2 xff=127.0.0.1 via=2 ferry"),
        "{out}"
    );
    assert!(out.ends_with("|2"), "{out}");
    // A big response.
    let got = dir.join("got.bin");
    let got_s = got.display().to_string();
    let out = ok(&curl(&[
        "--http2-prior-knowledge",
        "-o",
        &got_s,
        "-w",
        "%{http_version} %{http_code} %{size_download}",
        &p.url("/big.bin"),
    ]));
    assert_eq!(out, format!("2 200 {}", 5 * 1024 * 1024));
    assert_eq!(sha256(&got), sha256(&up.dir.join("html/big.bin")));
    // HTTP/1.1 on the same port.
    let out = ok(&curl(&["-w", "|%{http_version}", &url]));
    assert!(
        out.contains("xff=127.0.0.1 via=1.1 ferry") && out.ends_with("|1.1"),
        "{out}"
    );
    let text = log_has(&log, "\"GET /hello HTTP/1.1\" 200");
    assert!(text.contains("\"GET /hello HTTP/2.0\" 200"), "{text}");
    assert!(text.contains("\"GET /big.bin HTTP/2.0\" 200"), "{text}");
    assert!(text.contains("\"GET /hello HTTP/1.1\" 200"), "{text}");
    let m = metrics(admin);
    assert_eq!(
        metric(&m, "ferry_proxy_http2_connections_total{protocol=\"http\"}"),
        Some(2),
        "{m}"
    );

    // Uploads, echoed by `ferry serve`.
    let serve = Server::start_http(driver, &[]);
    let (p2, _) = proxy(driver, &serve.addr.to_string(), &[]);
    let big = dir.join("up.bin");
    std::fs::write(&big, pattern(6 * 1024 * 1024)).unwrap();
    let out = curl(&[
        "-v",
        "--http2-prior-knowledge",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", big.display()),
        "-o",
        &got_s,
        "-w",
        "%{http_version} %{http_code}",
        &p2.url("/echo"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(ok(&out), "2 200");
    assert_eq!(sha256(&got), sha256(&big));
    // `Expect` is answered by the proxy (the upstream never sees it).
    assert!(err.contains("< HTTP/2 100"), "{err}");
    let script = r#"
import hashlib
from h2_client import *
body = bytes(reversed(range(256))) * (3 * 1024 * 1024 // 256 + 3)
a = start('POST', '/echo', body)
run([a])
assert status[a] == b'200', status[a]
assert hashlib.sha256(bytes(bodies[a])).digest() == hashlib.sha256(body).digest(), len(bodies[a])
finish()
print("OK")
"#;
    let out = py(script, &p2.port());
    assert!(out.contains("OK"), "{out}");
}

/// The Python `h2` client script `script` against the proxy on `port`.
fn py(script: &str, port: &str) -> String {
    let out = Command::new(python())
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support"),
        )
        .args(["-c", script, "127.0.0.1", port])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TLS: ALPN offers `h2` first; curl `--http2` gets HTTP/2 (a 4 MiB upload echoed), curl
/// `--http1.1` HTTP/1.1, on the same port.
fn h2_over_tls_alpn(driver: &str) {
    let dir = tmp_dir("proxy-h2-tls", driver);
    let cert = Cert::make(&dir);
    let serve = Server::start_http(driver, &[]);
    let flags = cert.flags();
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (p, _) = proxy(driver, &serve.addr.to_string(), &refs);
    let ca = cert.cert.display().to_string();
    let url = format!("https://localhost:{}/echo", p.addr.port());
    let big = dir.join("up.bin");
    std::fs::write(&big, pattern(4 * 1024 * 1024)).unwrap();
    let got = dir.join("got.bin");
    let out = curl(&[
        "-v",
        "--http2",
        "--cacert",
        &ca,
        "--data-binary",
        &format!("@{}", big.display()),
        "-o",
        &got.display().to_string(),
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(ok(&out), "2 200", "{err}");
    assert!(err.contains("ALPN: server accepted h2"), "{err}");
    assert_eq!(sha256(&got), sha256(&big));
    let out = ok(&curl(&[
        "--http1.1",
        "--cacert",
        &ca,
        "-d",
        "hi",
        "-w",
        " %{http_version}",
        &url,
    ]));
    assert_eq!(out, "hi 1.1");
}

/// h2load, 4 connections × 32 concurrent streams, 20 000 requests: every one 2xx.
fn h2load_all_2xx(driver: &str) {
    let up = nginx();
    let (p, _) = proxy(driver, &format!("127.0.0.1:{}", up.port), &[]);
    let out = Command::new("timeout")
        .args([
            "120",
            "h2load",
            "-c4",
            "-m32",
            "-n",
            "20000",
            &p.url("/hello"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("status codes: 20000 2xx"), "{text}");
    assert!(text.contains("20000 succeeded"), "{text}");
}

/// Streams are independent, on one connection: with one of two upstreams down, 30 GETs and
/// POSTs all succeed (what went to the dead one was never sent: it goes again), 10
/// requests the upstream drops unanswered get `502` each, the others are unaffected; a
/// response the client resets (RST_STREAM) mid-body ends its exchange, and that upstream
/// connection is not reused; the connection serves on.
fn streams_fail_independently(driver: &str) {
    let up = nginx();
    let dead = common::free_port();
    let (p, admin) = proxy(
        driver,
        &format!("127.0.0.1:{},127.0.0.1:{dead}", up.port),
        &["--breaker-failures", "0"],
    );
    let script = r#"
import socket, sys
import h2.config, h2.connection, h2.events
from collections import Counter
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
c.initiate_connection()
s.sendall(c.data_to_send())
def hdrs(m, p):
    return [(':method', m), (':scheme', 'http'), (':authority', 'localhost'), (':path', p)]
status, bodies, ended, heads, resets = {}, {}, set(), {}, set()
def pump(until):
    for _ in range(100000):
        if until():
            return
        data = s.recv(65536)
        if not data:
            raise SystemExit("connection closed")
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                heads[ev.stream_id] = dict(ev.headers)
                status[ev.stream_id] = heads[ev.stream_id][b':status']
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] = bodies.get(ev.stream_id, b'') + ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                resets.add(ev.stream_id)
                ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise SystemExit("GOAWAY %r" % ev)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    raise SystemExit("never done")

# A big response, reset by the client after its first bytes.
big = c.get_next_available_stream_id()
c.send_headers(big, hdrs('GET', '/big.bin'), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: len(bodies.get(big, b'')) >= 20000)
c.reset_stream(big, 8)  # CANCEL
s.sendall(c.data_to_send())
big_conn = heads[big][b'x-conn']

# 40 streams at once: GET and POST /hello, and /close (no answer from the upstream).
ids = {}
for i in range(40):
    sid = c.get_next_available_stream_id()
    if i % 4 == 0:
        c.send_headers(sid, hdrs('GET', '/close'), end_stream=True)
    elif i % 4 == 1:
        c.send_headers(sid, hdrs('POST', '/hello') + [('content-length', '5')])
        c.send_data(sid, b'hello', end_stream=True)
    else:
        c.send_headers(sid, hdrs('GET', '/hello'), end_stream=True)
    ids[sid] = i
s.sendall(c.data_to_send())
pump(lambda: all(i in ended for i in ids))
by = Counter()
for sid, i in ids.items():
    want = b'502' if i % 4 == 0 else b'200'
    assert status.get(sid) == want, (i, status.get(sid), bodies.get(sid))
    assert sid not in resets
    if want == b'200':
        body = bodies[sid]
        assert body.startswith(b'conn=') and b'via=2 ferry' in body, body
        # Never on the connection of the reset response.
        assert body.split(b' ')[0] != b'conn=' + big_conn, (body, big_conn)
    by[want] += 1
print(dict(by))
# The connection still serves.
n = c.get_next_available_stream_id()
c.send_headers(n, hdrs('GET', '/hello'), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: n in ended)
assert status[n] == b'200'
c.close_connection()
s.sendall(c.data_to_send())
print("OK")
"#;
    let out = py(script, &p.port());
    assert!(out.contains("{b'502': 10, b'200': 30}"), "{out}");
    assert!(out.contains("OK"), "{out}");
    // The reset stream is the one client abort.
    let m = metrics(admin);
    assert_eq!(
        metric(&m, "ferry_proxy_client_aborts_total{protocol=\"http\"}"),
        Some(1),
        "{m}"
    );
}

/// `--http2-max-streams` and `--http2-max-header-list` are what the proxy advertises and
/// enforces: a stream beyond the limit is refused (REFUSED_STREAM, never sent upstream), a
/// header list over the size is answered `431`; the streams within the limits are served.
fn limits_apply(driver: &str) {
    let up = nginx();
    let (p, _) = proxy(
        driver,
        &format!("127.0.0.1:{}", up.port),
        &[
            "--http2-max-streams",
            "3",
            "--http2-max-header-list",
            "2048",
        ],
    );
    let script = r#"
import socket, sys
import h2.config, h2.connection, h2.events, h2.settings
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
c.initiate_connection()
s.sendall(c.data_to_send())
status, ended, resets = {}, set(), {}
acking, unacked = [False], []
def pump(until):
    for _ in range(100000):
        if until():
            return
        data = s.recv(65536)
        if not data:
            raise SystemExit("connection closed")
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status[ev.stream_id] = dict(ev.headers)[b':status']
            elif isinstance(ev, h2.events.DataReceived):
                if acking[0]:
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                else:
                    unacked.append((ev.flow_controlled_length, ev.stream_id))
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                resets[ev.stream_id] = ev.error_code
                ended.add(ev.stream_id)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    raise SystemExit("never done")
pump(lambda: c.remote_settings.max_concurrent_streams == 3)
print("max_concurrent_streams", c.remote_settings.max_concurrent_streams)
print("max_header_list_size", c.remote_settings.max_header_list_size)
def hdrs(p, extra=()):
    return [(':method', 'GET'), (':scheme', 'http'), (':authority', 'localhost'), (':path', p)] + list(extra)
# Three big responses the client does not take yet (their streams stay open), then a
# fourth stream, the client ignoring the limit (hyper-h2 checks it: lift it locally).
c.remote_settings.max_concurrent_streams = 100
c.remote_settings.acknowledge()
ids = []
for i in range(3):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, hdrs('/big.bin'), end_stream=True)
    ids.append(sid)
s.sendall(c.data_to_send())
pump(lambda: all(i in status for i in ids))
fourth = c.get_next_available_stream_id()
c.send_headers(fourth, hdrs('/hello'), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: fourth in ended)
acking[0] = True
for n, sid in unacked:
    c.acknowledge_received_data(n, sid)
s.sendall(c.data_to_send())
pump(lambda: all(i in ended for i in ids))
ids.append(fourth)
print("ok", sum(1 for i in ids if status.get(i) == b'200'), "refused", sum(1 for i in ids if resets.get(i) == 7))
# A header list over 2048 bytes.
big = c.get_next_available_stream_id()
c.send_headers(big, hdrs('/hello', [('x-big', 'a' * 3000)]), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: big in ended)
print("big", status.get(big), resets.get(big))
"#;
    let out = py(script, &p.port());
    assert!(out.contains("max_concurrent_streams 3"), "{out}");
    assert!(out.contains("max_header_list_size 2048"), "{out}");
    assert!(out.contains("ok 3 refused 1"), "{out}");
    assert!(out.contains("big b'431' None"), "{out}");
}

/// Per stream, on one connection: a request body that stops coming gets `408` after
/// `--response-timeout` while the streams beside it are served; past `--rate-limit` a
/// stream gets `429` with `Retry-After`.
fn stalled_stream_and_rate_limit(driver: &str) {
    let up = nginx();
    let (p, _) = proxy(
        driver,
        &format!("127.0.0.1:{}", up.port),
        &[
            "--response-timeout",
            "1s",
            "--rate-limit",
            "3/h",
            "--rate-limit-burst",
            "3",
        ],
    );
    let script = r#"
import socket, sys
import h2.config, h2.connection, h2.events
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
c.initiate_connection()
s.sendall(c.data_to_send())
status, heads, ended = {}, {}, set()
def pump(until):
    for _ in range(100000):
        if until():
            return
        data = s.recv(65536)
        if not data:
            raise SystemExit("connection closed")
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                heads[ev.stream_id] = dict(ev.headers)
                status[ev.stream_id] = heads[ev.stream_id][b':status']
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended.add(ev.stream_id)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    raise SystemExit("never done")
def hdrs(m, p, extra=()):
    return [(':method', m), (':scheme', 'http'), (':authority', 'localhost'), (':path', p)] + list(extra)
# A POST announcing 100 bytes that sends 10 and stops.
stuck = c.get_next_available_stream_id()
c.send_headers(stuck, hdrs('POST', '/sink', [('content-length', '100')]))
c.send_data(stuck, b'x' * 10)
ok = c.get_next_available_stream_id()
c.send_headers(ok, hdrs('GET', '/hello'), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: ok in ended)
print("beside", status[ok])
pump(lambda: stuck in ended)
print("stuck", status.get(stuck))
# The third request of this client passes, the fourth is over the limit.
third = c.get_next_available_stream_id()
c.send_headers(third, hdrs('GET', '/hello'), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: third in ended)
fourth = c.get_next_available_stream_id()
c.send_headers(fourth, hdrs('GET', '/hello'), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: fourth in ended)
print("third", status[third], "fourth", status[fourth], "retry-after" , b'retry-after' in heads[fourth])
"#;
    let out = py(script, &p.port());
    assert!(out.contains("beside b'200'"), "{out}");
    assert!(out.contains("stuck b'408'"), "{out}");
    assert!(
        out.contains("third b'200' fourth b'429' retry-after True"),
        "{out}"
    );
}

/// Proxy shutdown (SIGTERM) sends GOAWAY (NO_ERROR) to an HTTP/2 client.
fn goaway_on_shutdown(driver: &str) {
    let up = nginx();
    let (mut p, _) = proxy(
        driver,
        &format!("127.0.0.1:{}", up.port),
        &["--drain-timeout", "5s"],
    );
    let script = r#"
import sys
from h2_client import *
import h2.events
a = start('GET', '/hello')
run([a])
assert status[a] == b'200'
print("ready", flush=True)
# Raw frames from here (the h2 state machine refuses the PING that follows a GOAWAY).
buf = b''
for _ in range(1000):
    data = s.recv(65536)
    if not data:
        print("closed")
        break
    buf += data
    while len(buf) >= 9:
        n = int.from_bytes(buf[:3], 'big')
        if len(buf) < 9 + n:
            break
        kind, payload, buf = buf[3], buf[9:9 + n], buf[9 + n:]
        if kind == 7:
            print("goaway", int.from_bytes(payload[4:8], 'big'), flush=True)
"#;
    let mut child = Command::new(python())
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support"),
        )
        .args(["-c", script, "127.0.0.1", &p.port()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    p.signal(libc::SIGTERM);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = child.wait();
    assert!(rest.iter().any(|l| l == "goaway 0"), "{rest:?}");
    p.wait_exit(Duration::from_secs(20));
}

per_driver!(
    h2c_prior_knowledge,
    h2_over_tls_alpn,
    h2load_all_2xx,
    streams_fail_independently,
    limits_apply,
    stalled_stream_and_rate_limit,
    goaway_on_shutdown,
);
