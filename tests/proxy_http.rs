//! End-to-end tests of `ferry proxy --protocol http` under each driver: real nginx (and
//! `ferry serve` for streamed bodies) as upstreams, curl and Python as clients; Python
//! upstreams for protocol switches (a raw `Upgrade`/CONNECT echo, and `websockets` on both
//! sides).
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, python, run, sha256, tmp_dir, PyServer, Server};

#[path = "support/nginx.rs"]
mod support;
use support::Nginx;

/// An nginx upstream answering every request with what it saw (its port and the forwarded
/// fields).
fn upstream(name: &str) -> Nginx {
    Nginx::start(
        &format!("proxy-{name}"),
        |port, _| {
            format!(
                " keepalive_requests 100000;\n client_max_body_size 0;\n\
                 server {{\n  listen 127.0.0.1:{port};\n\
                  location / {{ return 200 \"port=$server_port xff=$http_x_forwarded_for \
                 tp=$http_traceparent secret=$http_x_secret via=$http_via\\n\"; }}\n }}"
            )
        },
        |_| {},
    )
}

struct Proxy {
    server: Server,
    admin: SocketAddr,
}

impl Proxy {
    fn start(driver: &str, upstreams: &[String], extra: &[&str]) -> Proxy {
        let (server, admin) = Server::start_proxy("http", driver, &upstreams.join(","), extra, &[]);
        if driver == "uring" && ferry_uring_works() {
            assert_eq!(server.driver, "uring");
        }
        Proxy { server, admin }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn metrics(&self) -> String {
        common::admin_metrics(self.admin)
    }
}

fn ferry_uring_works() -> bool {
    let out = Command::new(common::BIN).arg("probe").output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("auto: uring")
}

/// `curl -s` with a bound, returning (status, body) per URL (keep-alive across URLs).
fn curl(args: &[&str]) -> String {
    let mut all = vec!["-s", "--max-time", "20"];
    all.extend_from_slice(args);
    let out = Command::new("curl").args(&all).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(url: &str, extra: &[&str]) -> String {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args)
}

fn metric(text: &str, prefix: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn get_keepalive_headers_round_robin(driver: &str) {
    let (a, b) = (upstream("a"), upstream("b"));
    let p = Proxy::start(driver, &[a.addr(), b.addr()], &[]);
    // Six requests on one kept-alive client connection.
    let url = p.url("/x");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 6).collect();
    let mut args = vec![
        "-H",
        "Connection: keep-alive, X-Secret",
        "-H",
        "X-Secret: hidden",
        "-H",
        "X-Forwarded-For: 10.1.2.3",
        "-H",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ];
    args.extend(urls.iter().copied());
    let body = curl(&args);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 6, "{body}");
    let on_a = lines
        .iter()
        .filter(|l| l.starts_with(&format!("port={} ", a.port)))
        .count();
    assert_eq!(on_a, 3, "round robin across two upstreams: {body}");
    for l in &lines {
        assert!(l.contains("xff=10.1.2.3, 127.0.0.1 "), "{l}");
        assert!(l.contains("secret= "), "hop-by-hop field forwarded: {l}");
        assert!(
            l.contains("tp=00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "trace id kept: {l}"
        );
        assert!(!l.contains("00f067aa0ba902b7"), "new parent id: {l}");
        assert!(l.contains("via=1.1 ferry"), "{l}");
    }
    // No traceparent: the proxy starts one.
    let l = curl(&[&url]);
    let tp = l.split("tp=").nth(1).unwrap().split(' ').next().unwrap();
    assert_eq!(tp.len(), 55, "{l}");
    // Upstream keep-alive: a handful of connections, not one per request.
    let m = p.metrics();
    let ua = format!(
        "ferry_proxy_upstream_connects_total{{protocol=\"http\",upstream=\"{}\"}}",
        a.addr()
    );
    assert!(metric(&m, &ua).unwrap() <= 2, "{m}");
    assert!(
        m.contains("class=\"2xx\"} 4") || m.contains("class=\"2xx\"} 3"),
        "{m}"
    );
}

fn post_large_streamed_body(driver: &str) {
    let up = Server::launch(
        "http",
        &[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--driver",
            driver,
        ],
        &[],
        None,
    );
    let p = Proxy::start(driver, &[up.addr.to_string()], &[]);
    let d = tmp_dir("proxy-post", driver);
    let f = d.join("big.bin");
    {
        let mut w = std::fs::File::create(&f).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..48 {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
            w.write_all(&buf).unwrap();
        }
    }
    let want = sha256(&f);
    for framing in [
        &[
            "-T",
            f.to_str().unwrap(),
            "-H",
            "Transfer-Encoding: chunked",
        ][..],
        &["--data-binary", &format!("@{}", f.display())],
    ] {
        let got = d.join("got.bin");
        let mut args = vec!["-s", "--max-time", "60", "-o", got.to_str().unwrap()];
        args.extend_from_slice(framing);
        let url = p.url("/echo");
        args.push(&url);
        run(Command::new("curl").args(&args));
        assert_eq!(sha256(&got), want, "{framing:?}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

fn killed_upstream_get_retried_post_resent_unsent(driver: &str) {
    let (a, mut b) = (upstream("ka"), upstream("kb"));
    let p = Proxy::start(
        driver,
        &[a.addr(), b.addr()],
        &["--health-interval", "0", "--breaker-failures", "0"],
    );
    assert_eq!(status(&p.url("/warm"), &[]), "200");
    b.kill();
    for i in 0..6 {
        assert_eq!(status(&p.url(&format!("/get{i}")), &[]), "200", "GET {i}");
    }
    let m = p.metrics();
    let retries = format!(
        "ferry_proxy_upstream_retries_total{{protocol=\"http\",upstream=\"{}\"}}",
        a.addr()
    );
    assert!(metric(&m, &retries).unwrap() >= 1, "{m}");
    // Round robin sends every other POST to the dead upstream: its connect fails, so none
    // of it was sent and it goes to the live one (a POST some bytes of which went out is
    // never sent again: tests/proxy_http_edge.rs).
    let mut codes = Vec::new();
    for _ in 0..4 {
        let out = curl(&[
            "-X",
            "POST",
            "-d",
            "k=v",
            "-w",
            " %{http_code}",
            &p.url("/post"),
        ]);
        codes.push(out);
    }
    assert_eq!(
        codes.iter().filter(|c| c.ends_with(" 200")).count(),
        4,
        "{codes:?}"
    );
}

fn breaker_opens_and_metrics_show_it(driver: &str) {
    let dead = format!("127.0.0.1:{}", free_port());
    let p = Proxy::start(
        driver,
        std::slice::from_ref(&dead),
        &[
            "--health-interval",
            "0",
            "--breaker-failures",
            "3",
            "--breaker-open",
            "60s",
            "--retries",
            "0",
        ],
    );
    for _ in 0..3 {
        assert_eq!(status(&p.url("/"), &[]), "502");
    }
    let body = curl(&["-w", " %{http_code}", &p.url("/")]);
    assert!(body.ends_with(" 503"), "{body}");
    assert!(body.contains("circuit open"), "{body}");
    let m = p.metrics();
    let st =
        format!("ferry_proxy_breaker_state{{protocol=\"http\",upstream=\"{dead}\",worker=\"0\"}}");
    assert_eq!(metric(&m, &st), Some(1), "{m}");
    let opened =
        format!("ferry_proxy_breaker_opened_total{{protocol=\"http\",upstream=\"{dead}\"}}");
    assert_eq!(metric(&m, &opened), Some(1), "{m}");
    assert_eq!(
        metric(
            &m,
            "ferry_proxy_local_responses_total{protocol=\"http\",code=\"503\"}"
        ),
        Some(1),
        "{m}"
    );
}

fn health_checks_take_a_dead_upstream_out(driver: &str) {
    let (a, mut b) = (upstream("ha"), upstream("hb"));
    let p = Proxy::start(
        driver,
        &[a.addr(), b.addr()],
        &["--health-interval", "100ms"],
    );
    b.kill();
    let key = format!(
        "ferry_proxy_upstream_healthy{{protocol=\"http\",upstream=\"{}\"}}",
        b.addr()
    );
    let start = Instant::now();
    loop {
        if metric(&p.metrics(), &key) == Some(0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never marked down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everything goes to the live one now, without retries.
    for _ in 0..4 {
        let body = curl(&[&p.url("/")]);
        assert!(body.starts_with(&format!("port={} ", a.port)), "{body}");
    }
}

fn hash_balance_is_sticky(driver: &str) {
    let (a, b) = (upstream("sa"), upstream("sb"));
    let p = Proxy::start(driver, &[a.addr(), b.addr()], &["--balance", "hash"]);
    let mut seen = std::collections::HashSet::new();
    for k in 0..12 {
        let url = p.url(&format!("/item/{k}"));
        let first = curl(&[&url]);
        let port = first.split(' ').next().unwrap().to_string();
        for _ in 0..2 {
            assert!(curl(&[&url]).starts_with(&port), "key {k} moved");
        }
        seen.insert(port);
    }
    assert_eq!(seen.len(), 2, "keys spread over both upstreams");
}

fn python_client_keepalive(driver: &str) {
    let a = upstream("py");
    let p = Proxy::start(driver, &[a.addr()], &[]);
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=20)\n\
         for i in range(20):\n\
         \x20   if i % 3 == 0:\n\
         \x20       c.request('POST', '/p', body=b'x' * (i * 1000))\n\
         \x20   else:\n\
         \x20       c.request('GET', '/g')\n\
         \x20   r = c.getresponse(); b = r.read()\n\
         \x20   assert r.status == 200, r.status\n\
         \x20   assert b.startswith(b'port='), b\n\
         r = c.sock is not None\n\
         print('ok', r)\n",
        port = p.server.addr.port()
    );
    let out = run(Command::new(python()).args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok True");
}

fn bad_upstream_config_is_a_usage_error(_driver: &str) {
    let out = Command::new(common::BIN)
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid upstream address"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // The same upstream twice (in one list or across repeated flags) would split its metrics
    // and breaker across two series.
    for args in [
        &["--upstream", "127.0.0.1:9,127.0.0.1:9"][..],
        &["--upstream", "localhost:9", "--upstream", "localhost:9"][..],
    ] {
        let out = Command::new(common::BIN)
            .args(["proxy", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("listed twice"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// A client's pipeline through the proxy, sent upstream back-to-back (the default) and one
/// at a time (`--pipeline-depth 1`); depth 0 is a usage error.
fn raw_pipelined_requests(driver: &str) {
    let a = upstream("pipe");
    for extra in [&[][..], &["--pipeline-depth", "1"][..]] {
        let p = Proxy::start(driver, &[a.addr()], extra);
        let mut s = TcpStream::connect(p.server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = Vec::new();
        for i in 0..20 {
            req.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
        req.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(&req).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert_eq!(
            all.matches("HTTP/1.1 200 OK").count(),
            21,
            "{extra:?}: {all}"
        );
    }
    let out = Command::new(common::BIN)
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream", &a.addr()])
        .args(["--pipeline-depth", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A raw upstream: `Upgrade: echo` gets a 101 and CONNECT a 200, each with a greeting in
/// the same write, then an echo until EOF; `Upgrade: refuse` gets a 400 and anything else
/// a 200 naming the request line (keep-alive). Each connection lives at most 30 s.
const RAW_UPSTREAM: &str = r#"
import socket, threading
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(16)
print(l.getsockname()[1], flush=True)
def serve(c):
    c.settimeout(30)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            line = head.split(b"\r\n")[0]
            low = head.lower()
            if line.startswith(b"CONNECT "):
                c.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\nhello-from-upstream\n" + buf)
                break
            if b"\r\nupgrade: echo" in low:
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello-from-upstream\n" + buf)
                break
            if b"\r\nupgrade: refuse" in low:
                body = b"refused\n"
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                continue
            body = b"plain:" + line + b"\n"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Read one response head (through the blank line); the rest read so far is returned too.
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "EOF before a response head: {buf:?}");
        buf.extend_from_slice(&b[..n]);
    }
}

/// Read until `want` bytes are in `have`.
fn read_to(s: &mut TcpStream, have: &mut Vec<u8>, want: usize) {
    let mut b = vec![0u8; 64 * 1024];
    while have.len() < want {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "EOF after {} of {want} bytes", have.len());
        have.extend_from_slice(&b[..n]);
    }
}

/// `Upgrade` passthrough: the 101 comes back with its `Upgrade`/`Connection` fields, then
/// both sides are a raw byte relay (bytes the client sent right behind its request and the
/// upstream right behind its 101 included; 2 MiB each way under flow control); the
/// client's EOF closes the tunnel.
fn upgrade_tunnel(driver: &str) {
    let up = PyServer::start(RAW_UPSTREAM, &[]);
    let p = Proxy::start(driver, &[up.addr()], &[]);
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        b"GET /t HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nearly\n",
    )
    .unwrap();
    let (head, mut got) = read_head(&mut s);
    let low = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(low.contains("\r\nupgrade: echo"), "{head}");
    assert!(low.contains("\r\nconnection: upgrade"), "{head}");
    assert!(!low.contains("content-length"), "{head}");
    let greeting = b"hello-from-upstream\nearly\n";
    read_to(&mut s, &mut got, greeting.len());
    assert_eq!(&got[..], &greeting[..]);
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        for c in sent.chunks(100_000) {
            w.write_all(c).unwrap();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    read_to(&mut s, &mut back, data.len());
    writer.join().unwrap();
    assert!(back == data, "tunnel bytes differ");
    let mut tail = Vec::new();
    s.read_to_end(&mut tail).unwrap();
    assert!(tail.is_empty(), "{} bytes after the echo", tail.len());
    let m = p.metrics();
    assert_eq!(
        metric(&m, "ferry_proxy_upgrades_total{protocol=\"http\"}"),
        Some(1),
        "{m}"
    );
}

/// CONNECT through the proxy: a 2xx switches to a tunnel like a 101 does.
fn connect_tunnel(driver: &str) {
    let up = PyServer::start(RAW_UPSTREAM, &[]);
    let p = Proxy::start(driver, &[up.addr()], &[]);
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .unwrap();
    let (head, mut got) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let greeting = b"hello-from-upstream\n";
    read_to(&mut s, &mut got, greeting.len());
    assert_eq!(&got[..], &greeting[..]);
    s.write_all(b"ping\n").unwrap();
    let mut back = Vec::new();
    read_to(&mut s, &mut back, 5);
    assert_eq!(&back[..], b"ping\n");
}

/// An upgrade the upstream refuses (400) or ignores (200) is an ordinary response: the
/// client connection carries on with HTTP.
fn upgrade_refused_is_a_normal_response(driver: &str) {
    let up = PyServer::start(RAW_UPSTREAM, &[]);
    let p = Proxy::start(driver, &[up.addr()], &[]);
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for (upgrade, status, body) in [
        ("refuse", "400", "refused\n"),
        ("ignore", "200", "plain:GET /u HTTP/1.1\n"),
    ] {
        let req = format!(
            "GET /u HTTP/1.1\r\nHost: x\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let (head, mut got) = read_head(&mut s);
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(!head.to_ascii_lowercase().contains("upgrade:"), "{head}");
        read_to(&mut s, &mut got, body.len());
        assert_eq!(String::from_utf8_lossy(&got), body);
    }
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 "), "{all}");
    assert!(all.ends_with("plain:GET /after HTTP/1.1\n"), "{all}");
    let m = p.metrics();
    assert_eq!(
        metric(&m, "ferry_proxy_upgrades_total{protocol=\"http\"}"),
        Some(0),
        "{m}"
    );
}

/// A real WebSocket peer on each side (Python `websockets`): server greeting, echoes of
/// growing messages and of a 1 MiB one, and a clean close handshake, through the proxy.
fn websocket_echo(driver: &str) {
    let up = PyServer::start(
        "import asyncio, websockets\n\
         async def echo(ws):\n\
         \x20   await ws.send('hello')\n\
         \x20   async for m in ws:\n\
         \x20       await ws.send(m)\n\
         async def main():\n\
         \x20   async with websockets.serve(echo, '127.0.0.1', 0, max_size=None) as srv:\n\
         \x20       print(srv.sockets[0].getsockname()[1], flush=True)\n\
         \x20       await asyncio.sleep(60)\n\
         asyncio.run(main())\n",
        &[],
    );
    let p = Proxy::start(driver, &[up.addr()], &[]);
    let script = format!(
        "import asyncio, websockets\n\
         async def main():\n\
         \x20   async with websockets.connect('ws://127.0.0.1:{port}/chat', max_size=None, open_timeout=10, close_timeout=10) as ws:\n\
         \x20       assert await asyncio.wait_for(ws.recv(), 10) == 'hello'\n\
         \x20       for i in range(30):\n\
         \x20           m = ('m%d-' % i) * (i * 50 + 1)\n\
         \x20           await ws.send(m)\n\
         \x20           assert await asyncio.wait_for(ws.recv(), 10) == m\n\
         \x20       big = bytes(range(256)) * 4096\n\
         \x20       await ws.send(big)\n\
         \x20       assert await asyncio.wait_for(ws.recv(), 20) == big\n\
         \x20   print('ok', ws.close_code)\n\
         asyncio.run(asyncio.wait_for(main(), 60))\n",
        port = p.server.addr.port()
    );
    let out = run(Command::new(python()).args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 1000");
}

per_driver!(
    get_keepalive_headers_round_robin,
    post_large_streamed_body,
    killed_upstream_get_retried_post_resent_unsent,
    breaker_opens_and_metrics_show_it,
    health_checks_take_a_dead_upstream_out,
    hash_balance_is_sticky,
    python_client_keepalive,
    bad_upstream_config_is_a_usage_error,
    raw_pipelined_requests,
    hostname_upstreams,
    head_keeps_content_length,
    upgrade_tunnel,
    connect_tunnel,
    upgrade_refused_is_a_normal_response,
    websocket_echo,
);

/// SIGTERM with pooled upstream connections and an exchange in flight: the exchange
/// finishes, then the proxy exits 0 without waiting for the drain deadline.
#[test]
fn sigterm_drains_and_exits() {
    let up = Server::launch(
        "http",
        &["serve", "--http", "127.0.0.1:0", "--workers", "1"],
        &[],
        None,
    );
    let mut p = Proxy::start("epoll", &[up.addr.to_string()], &["--drain-timeout", "20s"]);
    assert_eq!(status(&p.url("/"), &[]), "200");
    let mut slow = TcpStream::connect(p.server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    p.server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    slow.write_all(b"world").unwrap();
    let mut got = String::new();
    let _ = slow.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("helloworld"), "{got}");
    let status = p.server.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(15));
}

/// Host-name upstreams: `localhost` resolves and serves; a name that does not resolve is
/// taken out of rotation (and shown in `/metrics`) while the other keeps serving.
fn hostname_upstreams(driver: &str) {
    let a = upstream("name");
    let p = Proxy::start(
        driver,
        &[
            format!("localhost:{}", a.port),
            "nonexistent.invalid:80".into(),
        ],
        &["--health-interval", "200ms"],
    );
    for _ in 0..6 {
        let body = curl(&[&p.url("/")]);
        assert!(body.starts_with(&format!("port={} ", a.port)), "{body}");
    }
    let m = p.metrics();
    let bad =
        "ferry_proxy_upstream_resolved{protocol=\"http\",upstream=\"nonexistent.invalid:80\"}";
    assert_eq!(metric(&m, bad), Some(0), "{m}");
    let good = format!(
        "ferry_proxy_upstream_resolved{{protocol=\"http\",upstream=\"localhost:{}\"}}",
        a.port
    );
    assert_eq!(metric(&m, &good), Some(1), "{m}");
}

/// HEAD keeps the upstream's Content-Length and carries no body; the connection stays usable.
fn head_keeps_content_length(driver: &str) {
    let a = upstream("head");
    let p = Proxy::start(driver, &[a.addr()], &[]);
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, rest) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{all}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length on HEAD");
    assert!(len > 20, "{all}");
    // Straight after the HEAD's head: the GET's response.
    assert!(rest.starts_with("HTTP/1.1 200"), "{all}");
    assert!(rest.contains("port="), "{all}");
}
