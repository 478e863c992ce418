//! More edges of `ferry proxy --protocol http` as a gateway operator meets them: tunnels
//! (half-close, a peer vanishing mid-tunnel, many WebSocket tunnels at once), graceful drain
//! on SIGTERM, `/metrics` read by the Prometheus client library's own parser, consistent
//! hashing as upstreams die and come back, least-requests around a slow upstream, IPv6 and
//! unix listeners, and what an upstream's response head and framing may look like.
//!
//! The upstream is one Python script ([`UPSTREAM`]) whose behaviour the request picks;
//! clients are raw TCP, curl and Python (`websockets`, `prometheus_client`).
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, parse_metrics, python, run, tmp_dir, PyServer, Server, BIN};

/// A loopback upstream. Every answer names the port it came from (`port=P path`), so tests
/// see which upstream served. Per request:
/// - `ferry-proxy-health` checks: `200`, connection closed;
/// - `Upgrade: echo`: `101`, then an echo until EOF; `Upgrade: count`: `101`, then it reads
///   until the client's EOF and only then answers `got N` and closes (a half-close must carry
///   that back; `late-count` the same after half a second); `Upgrade: reset`: `101` and `hi`, then on the first tunnel bytes a reset;
/// - `GET /slow/S`: the answer after S seconds; `/cookies`: 30 `Set-Cookie` fields;
///   `/huge`: a 100 KB field; `/eof`: a 100000-byte body delimited by the close; `/close`:
///   `Connection: close`; `/trailers`: a chunked body with a trailer; `/status/N`: status N;
///   anything else: 200.
///
/// argv[1]: the port to bind (0: any); argv[2], if given, a virtual host name: the first
/// three health checks get a 503, then those for `Host: NAME:…` a 200 and others a 404.
/// Prints the port, then serves until killed.
const UPSTREAM: &str = r#"
import socket, struct, sys, threading, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(128)
port = l.getsockname()[1]
vhost = sys.argv[2].encode() + b":" if len(sys.argv) > 2 else None
checks = [0]
print(port, flush=True)
def answer(c, status, body, extra=b""):
    c.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), extra) + body)
def serve(c):
    c.settimeout(60)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            low = head.lower()
            path = head.split(b" ")[1]
            if b"ferry-proxy-health" in low:
                checks[0] += 1
                status = 200
                if vhost is not None:
                    host = low.split(b"\r\nhost: ")[1].split(b"\r\n")[0]
                    status = 503 if checks[0] <= 3 else 200 if host.startswith(vhost) else 404
                answer(c, status, b"", b"Connection: close\r\n")
                return
            if b"\r\nupgrade: " in low:
                kind = low.split(b"\r\nupgrade: ")[1].split(b"\r\n")[0]
                if kind == b"late-count":
                    time.sleep(0.5)
                    kind = b"count"
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n" % kind)
                if kind == b"echo":
                    if buf:
                        c.sendall(buf)
                    while True:
                        d = c.recv(65536)
                        if not d:
                            return
                        c.sendall(d)
                if kind == b"count":
                    n = len(buf)
                    while True:
                        d = c.recv(65536)
                        if not d:
                            break
                        n += len(d)
                    c.sendall(b"got %d\n" % n)
                    return
                if kind == b"reset":
                    c.sendall(b"hi\n")
                    if not buf:
                        c.recv(65536)
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                return
            me = b"port=%d %s" % (port, path)
            if path.startswith(b"/slow/"):
                time.sleep(float(path[6:]))
                answer(c, 200, me)
            elif path == b"/cookies":
                answer(c, 200, me, b"".join(b"Set-Cookie: c%d=v%d; Path=/\r\n" % (i, i) for i in range(30)))
            elif path == b"/huge":
                answer(c, 200, me, b"X-Huge: " + b"h" * 100000 + b"\r\n")
            elif path == b"/eof":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + bytes(i % 251 for i in range(100000)))
                return
            elif path == b"/close":
                answer(c, 200, me, b"Connection: close\r\n")
                return
            elif path == b"/trailers":
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                          b"%x\r\n%s\r\n0\r\nX-Sum: 42\r\n\r\n" % (len(me), me))
            elif path.startswith(b"/status/"):
                answer(c, int(path[8:].split(b"?")[0]), me)
            else:
                answer(c, 200, me)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
/// A running [`UPSTREAM`] on `port` (0: any, or where an earlier one was), killed on drop.
fn up(port: u16) -> PyServer {
    PyServer::start(UPSTREAM, &[&port.to_string()])
}

/// A helper process, killed on drop (also when a test fails).
struct Kid(Child);

impl Kid {
    /// `python -c script`, which prints its port first.
    fn python(script: &str) -> (Kid, u16) {
        let mut child = Command::new(python())
            .args(["-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let kid = Kid(child);
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("python helper did not start: {line:?}"));
        (kid, port)
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A proxy with an admin listener.
struct Proxy {
    server: Server,
    admin: SocketAddr,
}

impl Proxy {
    fn start(driver: &str, upstreams: &[String], extra: &[&str]) -> Proxy {
        let ups = upstreams.join(",");
        let mut args = vec![
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &ups,
            "--admin",
            "127.0.0.1:0",
            "--driver",
            driver,
        ];
        if !extra.contains(&"--workers") {
            args.extend(["--workers", "1"]);
        }
        args.extend_from_slice(extra);
        let (server, admin) = Server::launch_with_admin("http", &args, &[]);
        Proxy { server, admin }
    }

    /// The `/metrics` body.
    fn metrics(&self) -> String {
        let all = admin_get(self.admin, "/metrics");
        assert!(all.starts_with("HTTP/1.1 200 "), "{all}");
        let (head, body) = all.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        body.to_string()
    }

    /// The value of the sample line that starts with `prefix` (a name and labels).
    fn metric(&self, prefix: &str) -> Option<f64> {
        metric(&self.metrics(), prefix)
    }

    /// Wait (bounded) until the sample `prefix` reads `want`.
    fn wait_metric(&self, prefix: &str, want: f64) {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.metrics();
            if metric(&m, prefix) == Some(want) {
                return;
            }
            assert!(Instant::now() < end, "{prefix} never became {want}:\n{m}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    all
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Read one response head (through the blank line); the bytes read after it come too.
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = s.read(&mut b).unwrap();
        assert!(
            n > 0,
            "EOF before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&b[..n]);
    }
}

/// Read until EOF (bounded by the socket's read timeout, which fails the test).
fn read_to_eof(s: &mut TcpStream, mut have: Vec<u8>) -> Vec<u8> {
    s.read_to_end(&mut have)
        .expect("EOF within the read timeout");
    have
}

/// Read until the connection ends, by EOF or by a reset (a timeout fails the test).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut have = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        match s.read(&mut b) {
            Ok(0) => return have,
            Ok(n) => have.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return have,
            Err(e) => panic!("the connection did not end: {e}"),
        }
    }
}

/// Send `req` on a new connection and read until the proxy closes it.
fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req).unwrap();
    String::from_utf8_lossy(&read_to_eof(&mut s, Vec::new())).into_owned()
}

/// `GET path` on a new connection (`Connection: close`): (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let all = exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The port named in an upstream's answer (`port=P …`).
fn port_of(body: &str) -> u16 {
    body.strip_prefix("port=")
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not an upstream answer: {body:?}"))
}

/// Open a tunnel with `Upgrade: kind`; returns the socket and the bytes after the 101.
fn upgrade(addr: SocketAddr, kind: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /t HTTP/1.1\r\nHost: x\r\nUpgrade: {kind}\r\nConnection: Upgrade\r\n\r\n"
    )
    .unwrap();
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (s, rest)
}

// ---------------------------------------------------------------------------------------
// Tunnels
// ---------------------------------------------------------------------------------------

/// The upstream resets its side of a tunnel: what it sent before reaches the client, then
/// the client's connection ends (it used to stay open forever, the proxy never told), and
/// the proxy holds neither connection any more.
fn tunnel_upstream_reset_ends_the_client_side(driver: &str) {
    let up = up(0);
    let p = Proxy::start(driver, &[up.addr()], &["--health-interval", "0"]);
    let (mut s, mut got) = upgrade(p.server.addr, "reset");
    while got.len() < 3 {
        let mut b = [0u8; 64];
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "EOF before the greeting");
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(&got[..], b"hi\n");
    s.write_all(b"boom").unwrap(); // the upstream resets on these
    let rest = read_until_closed(&mut s);
    assert!(rest.is_empty(), "{rest:?}");
    p.wait_metric("ferry_proxy_downstream_connections{protocol=\"http\"}", 0.0);
    let up_conns = format!(
        "ferry_proxy_upstream_connections{{protocol=\"http\",upstream=\"{}\"}}",
        up.addr()
    );
    p.wait_metric(&up_conns, 0.0);
}

/// A half-close goes through a tunnel: the client shuts its sending side, the upstream
/// sees the EOF after every byte, answers only then, and that answer still reaches the
/// client before its EOF.
fn tunnel_half_close_carries_the_answer_back(driver: &str) {
    let up = up(0);
    let p = Proxy::start(driver, &[up.addr()], &["--health-interval", "0"]);
    let (mut s, got) = upgrade(p.server.addr, "count");
    assert!(got.is_empty());
    let data = vec![7u8; 300_000]; // more than the proxy's flow-control window
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let back = read_to_eof(&mut s, got);
    assert_eq!(String::from_utf8_lossy(&back), "got 300000\n");
}

/// RFC 9110 §7.8: an `Upgrade` in an HTTP/1.0 request is ignored; the request goes on as
/// a plain one (it used to be forwarded, and the upstream's 101 relayed to the 1.0 client).
fn http10_upgrade_is_ignored(driver: &str) {
    let up = up(0);
    let p = Proxy::start(driver, &[up.addr()], &["--health-interval", "0"]);
    let all = exchange(
        p.server.addr,
        b"GET /ten HTTP/1.0\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
    );
    assert!(all.starts_with("HTTP/1.1 200 "), "{all}");
    assert!(all.ends_with("/ten"), "{all}");
    assert_eq!(
        p.metric("ferry_proxy_upgrades_total{protocol=\"http\"}"),
        Some(0.0)
    );
}

/// `Upgrade: h2c` is not forwarded (as Envoy: HTTP/2 straight to the upstream past the
/// proxy, "h2c smuggling"); the request is answered as a plain one, and the connection
/// carries on with HTTP/1.1.
fn h2c_upgrade_is_not_forwarded(driver: &str) {
    let up = up(0);
    let p = Proxy::start(driver, &[up.addr()], &["--health-interval", "0"]);
    let all = exchange(
        p.server.addr,
        b"GET /h2c HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
          Connection: Upgrade, HTTP2-Settings\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(all.starts_with("HTTP/1.1 200 "), "{all}");
    assert!(all.contains("/h2c"), "{all}");
    assert!(all.ends_with("/after"), "{all}");
}

/// A client that sends its last bytes and its EOF right behind the upgrade request, before
/// the 101 comes: once the tunnel is up the upstream gets those bytes and then the EOF
/// (the EOF had been read before the switch and was never passed on: the tunnel hung).
fn tunnel_client_eof_before_the_switch(driver: &str) {
    let up = up(0);
    let p = Proxy::start(driver, &[up.addr()], &["--health-interval", "0"]);
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        b"GET /t HTTP/1.1\r\nHost: x\r\nUpgrade: late-count\r\nConnection: Upgrade\r\n\r\nearly",
    )
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let back = read_to_eof(&mut s, rest);
    assert_eq!(String::from_utf8_lossy(&back), "got 5\n");
}

/// A client that vanishes (reset) mid-tunnel: the upstream connection is closed too, and
/// the gauges come back to zero.
fn client_vanishing_mid_tunnel_frees_the_upstream(driver: &str) {
    let up = up(0);
    let p = Proxy::start(driver, &[up.addr()], &["--health-interval", "0"]);
    let (mut s, _) = upgrade(p.server.addr, "echo");
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    common::reset(s);
    p.wait_metric("ferry_proxy_downstream_connections{protocol=\"http\"}", 0.0);
    let up_conns = format!(
        "ferry_proxy_upstream_connections{{protocol=\"http\",upstream=\"{}\"}}",
        up.addr()
    );
    p.wait_metric(&up_conns, 0.0);
    assert_eq!(
        p.metric("ferry_proxy_upgrades_total{protocol=\"http\"}"),
        Some(1.0)
    );
}

/// `--tunnel-idle-timeout`: a tunnel that keeps carrying bytes stays open past it; once
/// idle that long both connections close (a client gone without a FIN held its upstream
/// connection, and a pool slot, forever).
fn idle_tunnel_is_closed(driver: &str) {
    let up = up(0);
    let p = Proxy::start(
        driver,
        &[up.addr()],
        &["--health-interval", "0", "--tunnel-idle-timeout", "1s"],
    );
    let (mut s, _) = upgrade(p.server.addr, "echo");
    for k in 0..15u8 {
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(&[b'a' + k]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b[0], b'a' + k);
    }
    // Idle from now: the proxy ends it (bounded by the read timeout).
    assert!(read_until_closed(&mut s).is_empty());
    p.wait_metric("ferry_proxy_downstream_connections{protocol=\"http\"}", 0.0);
    let up_conns = format!(
        "ferry_proxy_upstream_connections{{protocol=\"http\",upstream=\"{}\"}}",
        up.addr()
    );
    p.wait_metric(&up_conns, 0.0);
}

/// Many WebSocket tunnels at once over two I/O workers (Python `websockets` on both
/// sides), each with large messages both ways.
fn many_websocket_tunnels(driver: &str) {
    let (_up, port) = Kid::python(
        "import asyncio, websockets\n\
             async def echo(ws):\n\
             \x20   async for m in ws:\n\
             \x20       await ws.send(m)\n\
             async def main():\n\
             \x20   async with websockets.serve(echo, '127.0.0.1', 0, max_size=None) as srv:\n\
             \x20       print(srv.sockets[0].getsockname()[1], flush=True)\n\
             \x20       await asyncio.sleep(120)\n\
             asyncio.run(main())\n",
    );
    let ups = format!("127.0.0.1:{port}");
    let p = Proxy::start(
        driver,
        &[ups],
        &["--health-interval", "0", "--workers", "2"],
    );
    let script = format!(
        "import asyncio, websockets\n\
         async def one(k):\n\
         \x20   async with websockets.connect('ws://127.0.0.1:{port}/c%d' % k, max_size=None, open_timeout=20, close_timeout=20) as ws:\n\
         \x20       for i in range(4):\n\
         \x20           m = bytes([(k + i) % 256]) * (100000 + k * 1000 + i)\n\
         \x20           await ws.send(m)\n\
         \x20           assert await ws.recv() == m\n\
         \x20   return 1\n\
         async def main():\n\
         \x20   print(sum(await asyncio.gather(*(one(k) for k in range(40)))))\n\
         asyncio.run(asyncio.wait_for(main(), 90))\n",
        port = p.server.addr.port()
    );
    let out = run(Command::new(python()).args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "40");
    assert_eq!(
        p.metric("ferry_proxy_upgrades_total{protocol=\"http\"}"),
        Some(40.0)
    );
}

// ---------------------------------------------------------------------------------------
// Graceful drain
// ---------------------------------------------------------------------------------------

/// SIGTERM: the request in flight finishes and its response says `Connection: close`; an
/// idle keep-alive connection is closed; new connections are refused; exit 0.
fn sigterm_drains_in_flight_and_refuses_new(driver: &str) {
    let up = up(0);
    let mut p = Proxy::start(
        driver,
        &[up.addr()],
        &["--health-interval", "0", "--drain-timeout", "30s"],
    );
    let addr = p.server.addr;
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, _) = read_head(&mut idle);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut busy = TcpStream::connect(addr).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    busy.write_all(b"GET /slow/1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // it reaches the upstream
    p.server.signal(libc::SIGTERM);
    // The idle keep-alive connection is closed.
    assert!(read_until_closed(&mut idle).is_empty());
    // New connections are refused once the listener is closed (bounded wait).
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < end, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request in flight is answered, with `Connection: close`, then EOF.
    let all = String::from_utf8_lossy(&read_to_eof(&mut busy, Vec::new())).into_owned();
    assert!(all.starts_with("HTTP/1.1 200 "), "{all}");
    assert!(
        all.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{all}"
    );
    assert!(all.ends_with("/slow/1.5"), "{all}");
    assert_eq!(p.server.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

/// A tunnel open at SIGTERM carries on during the drain (both ways) and the proxy exits,
/// with 0, once it ends (well before the drain deadline). Meanwhile the admin listener's
/// `/health` says `503 draining` (a load balancer in front stops sending).
fn tunnel_carries_on_through_the_drain(driver: &str) {
    let up = up(0);
    let mut p = Proxy::start(
        driver,
        &[up.addr()],
        &["--health-interval", "0", "--drain-timeout", "60s"],
    );
    let (mut s, _) = upgrade(p.server.addr, "echo");
    let h = admin_get(p.admin, "/health");
    assert!(h.starts_with("HTTP/1.1 200 ") && h.ends_with("ok\n"), "{h}");
    p.server.signal(libc::SIGTERM);
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(p.server.addr).is_ok() {
        assert!(Instant::now() < end, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = admin_get(p.admin, "/health");
    assert!(h.starts_with("HTTP/1.1 503 "), "{h}");
    assert!(h.ends_with("draining\n"), "{h}");
    s.write_all(b"during the drain").unwrap();
    let mut b = [0u8; 16];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"during the drain");
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_until_closed(&mut s).is_empty());
    assert_eq!(p.server.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

/// The drain deadline cuts what is still in flight and the exit is still 0; a second
/// signal exits at once with 1.
fn drain_deadline_and_second_signal(driver: &str) {
    let up = up(0);
    for second in [false, true] {
        let mut p = Proxy::start(
            driver,
            &[up.addr()],
            &["--health-interval", "0", "--drain-timeout", "1s"],
        );
        let mut busy = TcpStream::connect(p.server.addr).unwrap();
        busy.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        busy.write_all(b"GET /slow/20 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        p.server.signal(libc::SIGTERM);
        if second {
            std::thread::sleep(Duration::from_millis(100));
            p.server.signal(libc::SIGINT);
        }
        let status = p.server.wait_exit(Duration::from_secs(15));
        assert_eq!(status.code(), Some(if second { 1 } else { 0 }));
        // The cut client sees its connection end (no response).
        let rest = read_until_closed(&mut busy);
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
}

// ---------------------------------------------------------------------------------------
// Admin listener
// ---------------------------------------------------------------------------------------

fn sample(parsed: &[String], name_labels: &str) -> f64 {
    parsed
        .iter()
        .find_map(|l| {
            let (_, rest) = l.split_once(' ')?;
            let (nl, v) = rest.rsplit_once(' ')?;
            (nl == name_labels).then(|| v.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no sample {name_labels} in {parsed:#?}"))
}

/// `/metrics` is valid Prometheus text (HELP and TYPE for every family, labels parsed back
/// as written, upstream names included); after a known mix of requests its values are
/// exact; counters never go down between scrapes; `/health` answers.
fn metrics_parse_and_count_exactly(driver: &str) {
    let up = up(0);
    let dead = format!("127.0.0.1:{}", free_port());
    // The dead upstream's breaker opens at its first failure: exactly one request tries it
    // (and goes again to the live one).
    let p = Proxy::start(
        driver,
        &[up.addr(), dead.clone()],
        &[
            "--health-interval",
            "0",
            "--breaker-failures",
            "1",
            "--breaker-open",
            "60s",
        ],
    );
    let first = parse_metrics(&p.metrics());
    // A known mix: 200s, 404s, a tunnel.
    let a = p.server.addr;
    let (mut ok, mut missing) = (0, 0);
    for k in 0..12 {
        let path = if k % 3 == 0 {
            format!("/status/404?{k}")
        } else {
            format!("/k{k}")
        };
        let (st, body) = get(a, &path);
        assert_eq!(port_of(&body), up.port);
        match st {
            200 => ok += 1,
            404 => missing += 1,
            s => panic!("{s} {body}"),
        }
    }
    let (mut t, _) = upgrade(a, "echo");
    t.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    t.read_exact(&mut b).unwrap();
    drop(t);
    let m = p.metrics();
    let second = parse_metrics(&m);
    let lbl = |u: &str| format!("protocol=http,upstream={u}");
    assert_eq!(
        sample(&second, "ferry_proxy_requests_total{protocol=http}"),
        13.0
    );
    assert_eq!(
        sample(&second, "ferry_proxy_upgrades_total{protocol=http}"),
        1.0
    );
    let live = up.addr();
    assert_eq!(
        sample(
            &second,
            &format!(
                "ferry_proxy_upstream_responses_total{{class=2xx,{}}}",
                lbl(&live)
            )
        ),
        f64::from(ok)
    );
    assert_eq!(
        sample(
            &second,
            &format!(
                "ferry_proxy_upstream_responses_total{{class=4xx,{}}}",
                lbl(&live)
            )
        ),
        f64::from(missing)
    );
    // One request tried the dead upstream, failed there and went again to the live one.
    let at = |name: &str, u: &str| sample(&second, &format!("{name}{{{}}}", lbl(u)));
    assert_eq!(at("ferry_proxy_upstream_failures_total", &dead), 1.0, "{m}");
    assert_eq!(at("ferry_proxy_upstream_requests_total", &dead), 1.0, "{m}");
    assert_eq!(at("ferry_proxy_breaker_opened_total", &dead), 1.0, "{m}");
    assert_eq!(at("ferry_proxy_upstream_retries_total", &live), 1.0, "{m}");
    assert_eq!(
        at("ferry_proxy_upstream_requests_total", &live),
        13.0, // 11 GETs, the retry of the twelfth, the upgrade
        "{m}"
    );
    assert_eq!(at("ferry_proxy_upstream_healthy", &dead), 1.0, "{m}"); // no active checks
                                                                       // Every exchange the live upstream answered has a duration (the tunnel's 101 does not:
                                                                       // its exchange never ends as one); the dead one answered none.
    let h = "ferry_proxy_request_duration_seconds";
    assert_eq!(at(&format!("{h}_count"), &live), 12.0, "{m}");
    assert_eq!(at(&format!("{h}_count"), &dead), 0.0, "{m}");
    let inf = format!("{h}_bucket{{le=+Inf,{}}}", lbl(&live));
    assert_eq!(sample(&second, &inf), 12.0, "{m}");
    // Each request the live upstream answered held a pooled connection (the pool's figures
    // are published at the workers' next tick: polled, bounded).
    let start = Instant::now();
    let waits = loop {
        let w = sample(
            &parse_metrics(&p.metrics()),
            "ferry_proxy_pool_wait_seconds_count{protocol=http}",
        );
        if w >= 12.0 || start.elapsed() > Duration::from_secs(10) {
            break w;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(waits >= 12.0, "{waits}");
    assert_eq!(
        sample(
            &second,
            "ferry_proxy_breaker_state{protocol=http,upstream=DEAD,worker=0}"
                .replace("DEAD", &dead)
                .as_str()
        ),
        1.0
    );
    // Counters only grow.
    for l in first.iter().filter(|l| l.starts_with("counter ")) {
        let (nl, v) = l[8..].rsplit_once(' ').unwrap();
        let before: f64 = v.parse().unwrap();
        assert!(sample(&second, nl) >= before, "{nl} went down");
    }
    let h = admin_get(p.admin, "/health");
    assert!(h.starts_with("HTTP/1.1 200 "), "{h}");
    assert!(h.ends_with("ok\n"), "{h}");
}

// ---------------------------------------------------------------------------------------
// Balancing and health
// ---------------------------------------------------------------------------------------

/// Which upstream port serves each of these paths (new connections, so both workers serve).
fn mapping(addr: SocketAddr, paths: &[String]) -> Vec<u16> {
    paths
        .iter()
        .map(|path| {
            let (st, body) = get(addr, path);
            assert_eq!(st, 200, "{path}: {body}");
            port_of(&body)
        })
        .collect()
}

/// `--balance hash` with two workers: keys spread over every upstream, both workers agree;
/// when one upstream dies only its keys move, and when it comes back (on the same port) they
/// all return. Flapping on the way (down, up, down, up) never fails a GET.
fn hash_remaps_only_the_dead_upstreams_keys(driver: &str) {
    let ups = [up(0), up(0), up(0)];
    let addrs: Vec<String> = ups.iter().map(PyServer::addr).collect();
    let p = Proxy::start(
        driver,
        &addrs,
        &[
            "--balance",
            "hash",
            "--workers",
            "2",
            "--health-interval",
            "100ms",
        ],
    );
    let paths: Vec<String> = (0..48).map(|k| format!("/item/{k}")).collect();
    let before = mapping(p.server.addr, &paths);
    for u in &ups {
        let n = before.iter().filter(|&&x| x == u.port).count();
        assert!(n >= 4, "upstream {} got {n} of 48 keys", u.port);
    }
    // Again, on other connections (and so, likely, the other worker): the same answers.
    assert_eq!(mapping(p.server.addr, &paths), before);
    let [a, mut b, c] = ups;
    let b_port = b.port;
    let healthy = format!(
        "ferry_proxy_upstream_healthy{{protocol=\"http\",upstream=\"127.0.0.1:{b_port}\"}}"
    );
    for round in 0..2 {
        drop(b);
        p.wait_metric(&healthy, 0.0);
        let during = mapping(p.server.addr, &paths);
        for (k, (&was, &now)) in before.iter().zip(&during).enumerate() {
            if was == b_port {
                assert!(now == a.port || now == c.port, "key {k} went to {now}");
            } else {
                assert_eq!(
                    now, was,
                    "round {round}: key {k} moved though its upstream lives"
                );
            }
        }
        b = up(b_port);
        p.wait_metric(&healthy, 1.0);
        assert_eq!(mapping(p.server.addr, &paths), before, "round {round}");
    }
}

/// `--balance least-requests`: while one upstream is busy with a slow request, the others
/// get the requests.
fn least_requests_avoids_the_busy_upstream(driver: &str) {
    let (a, b) = (up(0), up(0));
    let p = Proxy::start(
        driver,
        &[a.addr(), b.addr()],
        &["--balance", "least-requests", "--health-interval", "0"],
    );
    let addr = p.server.addr;
    let slow = std::thread::spawn(move || get(addr, "/slow/2"));
    // Wait until the slow request is in flight (the gauge shows it).
    let end = Instant::now() + Duration::from_secs(10);
    let busy = loop {
        let m = p.metrics();
        let on = |u: &PyServer| {
            metric(
                &m,
                &format!(
                    "ferry_proxy_upstream_active_requests{{protocol=\"http\",upstream=\"{}\"}}",
                    u.addr()
                ),
            )
        };
        if on(&a) == Some(1.0) {
            break a.port;
        }
        if on(&b) == Some(1.0) {
            break b.port;
        }
        assert!(Instant::now() < end, "slow request never in flight:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let other = if busy == a.port { b.port } else { a.port };
    for k in 0..6 {
        let (st, body) = get(addr, &format!("/quick{k}"));
        assert_eq!(st, 200);
        assert_eq!(
            port_of(&body),
            other,
            "request {k} went to the busy upstream"
        );
    }
    let (st, body) = slow.join().unwrap();
    assert_eq!((st, port_of(&body)), (200, busy));
}

/// A listener whose accept queue is full (nothing accepts): the kernel drops further SYNs,
/// so a connect to it neither succeeds nor fails, a black hole on loopback. Prints the port.
const BLACK_HOLE: &str = r#"
import socket, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(0)
port = l.getsockname()[1]
fill = []
for i in range(8):
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    fill.append(s)
time.sleep(0.5)
print(port, flush=True)
time.sleep(120)
"#;

/// An upstream connect that times out is a 504 (a gateway timeout, as nginx answers for
/// its connect timeout), counted as one; a refused connect stays a 502.
fn connect_timeout_is_a_504(driver: &str) {
    let (_hole, port) = Kid::python(BLACK_HOLE);
    let hole_addr = format!("127.0.0.1:{port}");
    let refused = format!("127.0.0.1:{}", free_port());
    for (up, status, why) in [
        (&hole_addr, 504, "connect timed out"),
        (&refused, 502, "connection refused"),
    ] {
        let p = Proxy::start(
            driver,
            std::slice::from_ref(up),
            &[
                "--health-interval",
                "0",
                "--connect-timeout",
                "300ms",
                "--retries",
                "0",
            ],
        );
        let (st, body) = get(p.server.addr, "/");
        assert_eq!(st, status, "{up}: {body}");
        assert!(body.contains(why), "{body}");
        let counted =
            format!("ferry_proxy_local_responses_total{{protocol=\"http\",code=\"{status}\"}}");
        assert_eq!(p.metric(&counted), Some(1.0));
    }
}

/// Every upstream down (health checks say so): each request gets a 503 at once, with a
/// body saying why, and the connection stays usable.
fn all_upstreams_down_is_a_503(driver: &str) {
    let dead = common::closed_addrs(2);
    let p = Proxy::start(
        driver,
        &dead,
        &["--health-interval", "100ms", "--connect-timeout", "30s"],
    );
    for d in &dead {
        p.wait_metric(
            &format!("ferry_proxy_upstream_healthy{{protocol=\"http\",upstream=\"{d}\"}}"),
            0.0,
        );
    }
    let mut s = TcpStream::connect(p.server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (head, body) = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")?
                    .parse()
                    .ok()
            })
            .unwrap();
        let mut body = body;
        while body.len() < len {
            let mut b = [0u8; 1024];
            let n = s.read(&mut b).unwrap();
            assert!(n > 0);
            body.extend_from_slice(&b[..n]);
        }
        assert!(
            String::from_utf8_lossy(&body).contains("no upstream available"),
            "{body:?}"
        );
    }
    assert_eq!(
        p.metric("ferry_proxy_local_responses_total{protocol=\"http\",code=\"503\"}"),
        Some(3.0)
    );
}

/// A `--health-path` that is not a path (a typo without the `/`, a space) is a usage error
/// naming the flag, not a proxy whose every probe is a bad request and every upstream down.
fn health_path_must_be_a_path(driver: &str) {
    for bad in ["healthz", "/a b", ""] {
        // An address that cannot be bound: were the flag accepted, the run ends there (1).
        let out = Command::new(BIN)
            .args([
                "proxy",
                "--listen",
                "192.0.2.1:1",
                "--upstream",
                "127.0.0.1:9",
                "--driver",
                driver,
                "--health-path",
                bad,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--health-path"), "{bad:?}: {err}");
    }
}

/// Health checks of an upstream given by name ask for that name (`Host: NAME:PORT`, as
/// requests without a `Host` of their own do), not its address: a name-based virtual host
/// that 404s unknown hosts is not taken out of rotation.
fn health_checks_ask_for_the_upstream_by_name(driver: &str) {
    let up = PyServer::start(UPSTREAM, &["0", "localhost"]);
    let name = format!("localhost:{}", up.port);
    let p = Proxy::start(
        driver,
        std::slice::from_ref(&name),
        &["--health-interval", "100ms"],
    );
    let healthy = format!("ferry_proxy_upstream_healthy{{protocol=\"http\",upstream=\"{name}\"}}");
    p.wait_metric(&healthy, 0.0); // the first checks get 503s
    p.wait_metric(&healthy, 1.0); // then the name is served
    let (st, body) = get(p.server.addr, "/by-name");
    assert_eq!((st, port_of(&body)), (200, up.port), "{body}");
}

// ---------------------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------------------

/// An IPv6 listener (`[::1]:0`) and a unix-socket listener, with the upstream given by host
/// name: requests go through; the socket file is gone after a clean exit.
fn ipv6_and_unix_listeners(driver: &str) {
    let up = up(0);
    let ups = format!("localhost:{}", up.port);
    let dir = tmp_dir("proxy-edge2", &format!("unix-{driver}"));
    let sock = dir.join("px.sock");
    let unix = format!("unix:{}", sock.display());
    for listen in ["[::1]:0", unix.as_str()] {
        let mut child = Command::new(BIN)
            .args([
                "proxy",
                "--listen",
                listen,
                "--upstream",
                &ups,
                "--workers",
                "1",
                "--driver",
                driver,
                "--health-interval",
                "0",
            ])
            .env_remove("FERRY_DRIVER")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let at = line
            .trim()
            .strip_prefix("ferry: listening http ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("{line:?}"))
            .to_string();
        let mut args = vec!["-s", "--max-time", "20"];
        let url = if let Some(path) = at.strip_prefix("unix:") {
            args.extend(["--unix-socket", path]);
            "http://x/over-unix".to_string()
        } else {
            assert!(at.starts_with("[::1]:"), "{at}");
            format!("http://{at}/over-v6")
        };
        args.push(&url);
        let out = Command::new("curl").args(&args).output().unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert_eq!(port_of(&body), up.port, "{listen}: {body}");
        assert!(
            body.ends_with("/over-unix") || body.ends_with("/over-v6"),
            "{body}"
        );
        assert_eq!(status.code(), Some(0), "{listen}");
    }
    assert!(!sock.exists(), "unix socket file left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Upstream response heads and framing
// ---------------------------------------------------------------------------------------

/// On one keep-alive client connection: 30 `Set-Cookie` fields arrive all and in order; a
/// response head larger than the proxy accepts is a 502 (never a hang); `Connection: close`
/// from the upstream does not end the client's connection; a chunked body with trailers
/// arrives whole. A close-delimited body goes out chunked to an HTTP/1.1 client and
/// close-delimited to an HTTP/1.0 one, byte for byte.
fn upstream_response_heads_and_framing(driver: &str) {
    let up = up(0);
    let p = Proxy::start(driver, &[up.addr()], &["--health-interval", "0"]);
    let addr = p.server.addr;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // Responses with a Content-Length (or chunked with trailers) read one at a time.
    let mut next = |path: &str| -> (String, String) {
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (head, mut body) = read_head(&mut s);
        let low = head.to_ascii_lowercase();
        if low.contains("\r\ntransfer-encoding: chunked") {
            while !body.ends_with(b"\r\n\r\n") || !body.windows(3).any(|w| w == b"\n0\r") {
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).unwrap();
                assert!(n > 0);
                body.extend_from_slice(&b[..n]);
            }
        } else {
            let len: usize = low
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{head}"));
            while body.len() < len {
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).unwrap();
                assert!(n > 0);
                body.extend_from_slice(&b[..n]);
            }
        }
        (head, String::from_utf8_lossy(&body).into_owned())
    };
    let (head, _) = next("/cookies");
    let cookies: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .collect();
    let want: Vec<String> = (0..30)
        .map(|i| format!("Set-Cookie: c{i}=v{i}; Path=/"))
        .collect();
    assert_eq!(cookies, want);
    let (head, body) = next("/huge");
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
    assert!(body.contains("upstream"), "{body}");
    for _ in 0..3 {
        let (head, body) = next("/close");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert!(body.ends_with("/close"), "{body}");
    }
    let (head, body) = next("/trailers");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.contains("/trailers"), "{body}");
    let (head, body) = next("/after");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.ends_with("/after"), "{body}");
    drop(s);

    let want: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    // HTTP/1.1: chunked, the connection stays open for the next request.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\nGET /then HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (head, rest) = read_head(&mut s);
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked"),
        "{head}"
    );
    let all = read_to_eof(&mut s, rest);
    let (body, after) = dechunk(&all);
    assert!(body == want, "chunked body differs ({} bytes)", body.len());
    let after = String::from_utf8_lossy(after);
    assert!(after.starts_with("HTTP/1.1 200 "), "{after}");
    assert!(after.ends_with("/then"), "{after}");
    // HTTP/1.0: delimited by the close.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /eof HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (head, rest) = read_head(&mut s);
    let low = head.to_ascii_lowercase();
    assert!(!low.contains("transfer-encoding"), "{head}");
    assert!(!low.contains("content-length"), "{head}");
    let body = read_to_eof(&mut s, rest);
    assert!(
        body == want,
        "close-delimited body differs ({} bytes)",
        body.len()
    );
}

/// A chunked body and what follows its end.
fn dechunk(mut b: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut out = Vec::new();
    loop {
        let i = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..i])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        b = &b[i + 2..];
        if size == 0 {
            let end = b.windows(4).position(|w| w == b"\r\n\r\n");
            // No trailers: the empty line follows at once.
            let skip = if b.starts_with(b"\r\n") {
                2
            } else {
                end.unwrap() + 4
            };
            return (out, &b[skip..]);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

per_driver!(
    tunnel_upstream_reset_ends_the_client_side,
    tunnel_half_close_carries_the_answer_back,
    tunnel_client_eof_before_the_switch,
    client_vanishing_mid_tunnel_frees_the_upstream,
    idle_tunnel_is_closed,
    http10_upgrade_is_ignored,
    h2c_upgrade_is_not_forwarded,
    many_websocket_tunnels,
    sigterm_drains_in_flight_and_refuses_new,
    drain_deadline_and_second_signal,
    tunnel_carries_on_through_the_drain,
    metrics_parse_and_count_exactly,
    hash_remaps_only_the_dead_upstreams_keys,
    least_requests_avoids_the_busy_upstream,
    all_upstreams_down_is_a_503,
    connect_timeout_is_a_504,
    health_path_must_be_a_path,
    health_checks_ask_for_the_upstream_by_name,
    ipv6_and_unix_listeners,
    upstream_response_heads_and_framing,
);
