//! End-to-end tests of gRPC through `ferry proxy --protocol http --upstream-http2` under
//! each driver: Python `grpcio` clients (HTTP/2, prior knowledge) through the proxy to
//! `grpcio` servers (h2c upstreams, tests/support/grpc_echo.py): unary, server streaming,
//! client streaming and bidi streaming calls, 1 MiB+ messages, an error status with its
//! message, trailing metadata, a deadline; two upstreams with one killed mid-load; curl
//! (HTTP/2 and HTTP/1.1 clients) through the proxy to an h2c nginx; and a scripted h2c
//! upstream (Python `h2`) that resets, refuses and GOAWAYs streams.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;
use common::{python, PyServer, Server};

#[path = "support/nginx.rs"]
mod support;
use support::Nginx;

const ECHO: &str = include_str!("support/grpc_echo.py");

fn echo(name: &str) -> PyServer {
    PyServer::start(ECHO, &[name])
}

fn proxy(driver: &str, upstreams: &str) -> Server {
    Server::start_proxy(
        "http",
        driver,
        upstreams,
        &["--health-interval", "0", "--upstream-http2"],
        &[],
    )
    .0
}

/// Run the Python client `script` against the proxy on `port` (argv[1]); its stdout.
fn client(script: &str, port: &str) -> String {
    let out = Command::new(python())
        .args(["-c", script, port])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

const CALLS: &str = r#"
import sys, grpc
MAX = 16 * 1024 * 1024
ch = grpc.insecure_channel('127.0.0.1:' + sys.argv[1], options=[
    ('grpc.max_receive_message_length', MAX), ('grpc.max_send_message_length', MAX)])
unary = ch.unary_unary('/ferry.Echo/Unary')
sstream = ch.unary_stream('/ferry.Echo/ServerStream')
cstream = ch.stream_unary('/ferry.Echo/ClientStream')
bidi = ch.stream_stream('/ferry.Echo/Bidi')

# Unary, with trailing metadata.
resp, call = unary.with_call(b'hello', timeout=30)
assert resp == b'hello', resp
assert dict(call.trailing_metadata()).get('x-served-by') == 'one', call.trailing_metadata()
print('unary ok')

# A 1.5 MiB message each way.
big = bytes(range(256)) * (6 * 1024)
assert unary(big, timeout=60) == big
print('big unary ok')

# Server streaming: 50 messages of 64 KiB (3.2 MiB).
msgs = list(sstream(b'50:65536', timeout=60))
assert len(msgs) == 50 and all(m == bytes([i % 251]) * 65536 for i, m in enumerate(msgs))
print('server stream ok')

# Client streaming: 40 messages, one of them 1 MiB.
def gen():
    for i in range(40):
        yield (b'x' * (1 << 20)) if i == 7 else (b'y' * 1000)
assert cstream(gen(), timeout=60) == b'40:%d' % ((1 << 20) + 39 * 1000)
print('client stream ok')

# Bidi: each message comes back before the next goes.
import queue, threading
q = queue.Queue()
def feed():
    while True:
        m = q.get()
        if m is None:
            return
        yield m
it = bidi(feed(), timeout=60)
for i in range(20):
    m = bytes([i]) * (1000 * (i + 1))
    q.put(m)
    assert next(it) == m
q.put(None)
assert list(it) == []
print('bidi ok')

# An error status with its message.
try:
    unary(b'fail:no such thing', timeout=30)
    raise SystemExit('no error')
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
    assert e.details() == 'no such thing', e.details()
print('error ok')

# A deadline.
try:
    unary(b'sleep:5', timeout=1)
    raise SystemExit('no deadline')
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
print('deadline ok')

# The channel still works.
assert unary(b'again', timeout=30) == b'again'
print('OK')
"#;

/// Every kind of call, big messages, an error status, a deadline, trailing metadata.
fn grpc_calls(driver: &str) {
    let up = echo("one");
    let p = proxy(driver, &up.addr());
    let out = client(CALLS, &p.port());
    assert!(out.contains("OK"), "{out}");
}

const LOAD: &str = r#"
import sys, grpc
from collections import Counter
ch = grpc.insecure_channel('127.0.0.1:' + sys.argv[1])
unary = ch.unary_unary('/ferry.Echo/Unary')
codes, after, served = Counter(), [], Counter()
def code(f):
    try:
        assert f.result() == b'x' * 1000
        served[dict(f.trailing_metadata())['x-served-by']] += 1
        return 'OK'
    except grpc.RpcError as e:
        return e.code().name
# 30 batches of 10 concurrent calls; upstream b is killed while batch 10 is in flight.
for batch in range(30):
    fs = [unary.future(b'x' * 1000, timeout=30) for _ in range(10)]
    if batch == 10:
        print('kill', flush=True)
        sys.stdin.readline()
    got = [code(f) for f in fs]
    codes.update(got)
    if batch == 9:
        assert served['a'] > 0 and served['b'] > 0, served
    if batch >= 12:
        after.extend(got)
print(dict(codes), dict(served), flush=True)
assert set(codes) <= {'OK', 'UNAVAILABLE'}, codes
assert all(c == 'OK' for c in after), after
print('OK', flush=True)
"#;

/// Two upstreams, one killed while 10 concurrent calls are in flight (after 100 calls):
/// each call either succeeds or fails UNAVAILABLE (a call the dead upstream never got goes
/// to the other one), and the calls after it all succeed.
fn upstream_killed_mid_load(driver: &str) {
    let a = echo("a");
    let mut b = Some(echo("b"));
    let addrs = format!("{},{}", a.addr(), b.as_ref().unwrap().addr());
    let p = proxy(driver, &addrs);
    let mut child = Command::new(python())
        .args(["-c", LOAD, &p.port()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "kill");
    drop(b.take());
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{rest:?}");
    assert!(rest.iter().any(|l| l == "OK"), "{rest:?}");
}

/// curl with prior knowledge (and over HTTP/1.1) through the proxy to nginx listening h2c.
fn curl_to_h2c_nginx(driver: &str) {
    let up = Nginx::start(
        "proxy-grpc",
        |port, d| {
            format!(
                " server {{\n  listen 127.0.0.1:{port} http2;\n  root {d}/html;\n\
                  location = /hello {{ return 200 \"proto=$server_protocol te=$http_te via=$http_via\\n\"; }}\n }}"
            )
        },
        |d| {
            std::fs::create_dir_all(d.join("html")).unwrap();
            let body: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 253) as u8).collect();
            std::fs::write(d.join("html/big.bin"), body).unwrap();
        },
    );
    let p = proxy(driver, &format!("127.0.0.1:{}", up.port));
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let h2 = curl(&["--http2-prior-knowledge", &p.url("/hello")]);
    assert_eq!(
        String::from_utf8_lossy(&h2),
        "proto=HTTP/2.0 te= via=2 ferry\n"
    );
    let h1 = curl(&["--http1.1", &p.url("/hello")]);
    assert_eq!(
        String::from_utf8_lossy(&h1),
        "proto=HTTP/2.0 te= via=1.1 ferry\n"
    );
    for flag in ["--http2-prior-knowledge", "--http1.1"] {
        let big = curl(&[flag, &p.url("/big.bin")]);
        assert_eq!(big.len(), 3 << 20, "{flag}");
        assert!(
            big.iter()
                .enumerate()
                .all(|(i, &b)| b == (i as u32 * 7 % 253) as u8),
            "{flag}"
        );
    }
}

/// Active health checks speak the upstreams' protocol: with `--upstream-http2` an nginx
/// that listens h2c only (an HTTP/1.1 `GET` there is refused) stays in service, while a
/// closed port beside it is taken out, which shows the checks ran.
fn health_checks_over_h2c(driver: &str) {
    let up = Nginx::start(
        "proxy-grpc-health",
        |port, _| {
            format!(
                " server {{\n  listen 127.0.0.1:{port} http2;\n  location / {{ return 200 \"ok\\n\"; }}\n }}"
            )
        },
        |_| {},
    );
    let dead = common::closed_addrs(1).remove(0);
    let good = format!("127.0.0.1:{}", up.port);
    let (_p, admin) = Server::start_proxy(
        "http",
        driver,
        &format!("{good},{dead}"),
        &["--health-interval", "100ms", "--upstream-http2"],
        &[],
    );
    let healthy = |addr: &str| {
        let key = format!("ferry_proxy_upstream_healthy{{protocol=\"http\",upstream=\"{addr}\"}} ");
        let m = common::admin_metrics(admin);
        m.lines()
            .find_map(|l| l.strip_prefix(&key).map(|v| v.trim() == "1"))
            .unwrap_or_else(|| panic!("no {key} in\n{m}"))
    };
    let start = std::time::Instant::now();
    while healthy(&dead) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the closed port never marked down"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Each round probes the h2c one first: it had as many checks as the dead one needed
    // to fall.
    assert!(healthy(&good), "the h2c upstream failed its health checks");
}

/// A scripted h2c upstream (Python `h2`): `/refuse-once` is refused (RST_STREAM
/// REFUSED_STREAM) the first time, `/goaway-once` gets GOAWAY (last stream 0) the first
/// time, `/reset` is always reset (INTERNAL_ERROR), `/silent` never answered; anything else is answered
/// `served PATH n=REQUESTS` with how many requests reached it.
const H2_UPSTREAM: &str = r#"
import socket, sys, threading
import h2.config, h2.connection, h2.events, h2.errors
lock = threading.Lock()
once = set()
count = [0]
def serve(s):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    paths = {}
    while True:
        data = s.recv(65536)
        if not data:
            return
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                paths[ev.stream_id] = dict(ev.headers)[b':path']
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                sid, p = ev.stream_id, paths.pop(ev.stream_id)
                with lock:
                    count[0] += 1
                    first = p.endswith(b'-once') and p not in once
                    once.add(p)
                    n = count[0]
                if first and p == b'/refuse-once':
                    c.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                elif first and p == b'/goaway-once':
                    c.close_connection(last_stream_id=0)
                elif p == b'/silent':
                    pass
                elif p == b'/reset':
                    c.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                else:
                    body = b'served %s n=%d' % (p, n)
                    c.send_headers(sid, [(':status', '200'), ('content-length', str(len(body)))])
                    c.send_data(sid, body, end_stream=True)
        out = c.data_to_send()
        if out:
            s.sendall(out)
l = socket.socket()
l.bind(('127.0.0.1', 0))
l.listen(64)
print(l.getsockname()[1], flush=True)
while True:
    s, _ = l.accept()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
"#;

/// An upstream's RST_STREAM fails that exchange only (502); a stream it refused
/// (REFUSED_STREAM) or left above a GOAWAY's last stream id was never processed: a POST
/// goes again and is answered; a response head that does not come within
/// `--response-timeout` is a 504; the proxy keeps serving.
fn upstream_resets_and_refusals(driver: &str) {
    let up = PyServer::start(H2_UPSTREAM, &[]);
    let p = Server::start_proxy(
        "http",
        driver,
        &up.addr(),
        &[
            "--health-interval",
            "0",
            "--upstream-http2",
            "--response-timeout",
            "1s",
        ],
        &[],
    )
    .0;
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-w", " %{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[&p.url("/ok")]), "served /ok n=1 200");
    // Refused on the connection that served /ok: sent again (a POST), answered.
    assert_eq!(
        curl(&["-d", "body", &p.url("/refuse-once")]),
        "served /refuse-once n=3 200"
    );
    let reset = curl(&["-d", "body", &p.url("/reset")]);
    assert!(reset.ends_with(" 502"), "{reset}");
    assert_eq!(curl(&[&p.url("/ok")]), "served /ok n=5 200");
    assert_eq!(
        curl(&[
            "--http2-prior-knowledge",
            "-d",
            "body",
            &p.url("/goaway-once")
        ]),
        "served /goaway-once n=7 200"
    );
    assert_eq!(curl(&[&p.url("/ok")]), "served /ok n=8 200");
    // No response head within --response-timeout: 504 (the stream is cancelled).
    let silent = curl(&[&p.url("/silent")]);
    assert!(silent.ends_with(" 504"), "{silent}");
    assert_eq!(curl(&[&p.url("/ok")]), "served /ok n=10 200");
}

per_driver!(
    grpc_calls,
    upstream_killed_mid_load,
    curl_to_h2c_nginx,
    upstream_resets_and_refusals,
    health_checks_over_h2c,
);
