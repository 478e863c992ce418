//! End-to-end tests of `ferry proxy` corner cases: a Redis client's name follows it to
//! another upstream; a restarted Redis upstream's `-LOADING` is not passed on while another
//! upstream can answer; HTTP 502 wording for an invalid upstream response head;
//! `X-Forwarded-Host`; retries over more than 64 upstreams.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod common;
use common::resp::RespConn as Conn;
use common::{admin_metrics, free_port, PyServer, Redis, Server};

#[path = "support/upstream.rs"]
mod upstream;
use upstream::{fields, Reply, Upstream};

/// Poll `f` (bounded: 15 s) until it is true.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within 15 s: {what}");
}

/// The `ferry_proxy_upstream_healthy` gauge of `upstream`.
fn healthy(admin: SocketAddr, upstream: &str) -> Option<bool> {
    let m = admin_metrics(admin);
    let l = m.lines().find(|l| {
        l.starts_with("ferry_proxy_upstream_healthy{") && l.contains(&format!("\"{upstream}\""))
    })?;
    Some(l.ends_with(" 1"))
}

/// `--balance hash` over two upstreams, the first down at first: clients name themselves
/// and `BLPOP` (a dedicated connection, holding no state) with every key on the second.
/// Once the first is up, a `BLPOP` for a key that moved there follows it to a dedicated
/// connection there, and `CLIENT GETNAME` still answers the name (it is set again there).
fn client_name_follows_keys(driver: &str) {
    let b = Redis::start();
    let a_port = free_port();
    let a_addr = format!("127.0.0.1:{a_port}");
    let list = format!("{a_addr},{}", b.addr());
    let (p, admin) = Server::start_proxy(
        "redis",
        driver,
        &list,
        &["--balance", "hash", "--health-interval", "100ms"],
        &[],
    );
    eventually("first upstream marked down", || {
        healthy(admin, &a_addr) == Some(false)
    });
    let keys: Vec<String> = (0..16).map(|i| format!("q{i}")).collect();
    let mut clients: Vec<Conn> = keys
        .iter()
        .map(|k| {
            let mut c = Conn::new(p.addr);
            c.ask(b"CLIENT SETNAME worker-x\r\n", b"+OK\r\n");
            c.ask(format!("BLPOP {k} 0.01\r\n").as_bytes(), b"*-1\r\n");
            c.ask(b"CLIENT GETNAME\r\n", b"$8\r\nworker-x\r\n");
            c
        })
        .collect();
    let a = Redis::start_on(a_port, &[]).expect("redis-server on the first port");
    eventually("first upstream back", || {
        healthy(admin, &a_addr) == Some(true)
    });
    let mut followed = 0;
    for (k, c) in keys.iter().zip(clients.iter_mut()) {
        // Where the key lives now: pushed through the proxy, looked up on `a`.
        let mut w = Conn::new(p.addr);
        w.ask(format!("RPUSH {k} v\r\n").as_bytes(), b":1\r\n");
        let mut d = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        d.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        d.write_all(format!("EXISTS {k}\r\n").as_bytes()).unwrap();
        let mut r = [0u8; 16];
        let n = d.read(&mut r).unwrap_or(0);
        let moved = &r[..n] == b":1\r\n";
        c.ask(
            format!("BLPOP {k} 1\r\n").as_bytes(),
            format!("*2\r\n${}\r\n{k}\r\n$1\r\nv\r\n", k.len()).as_bytes(),
        );
        c.ask(b"CLIENT GETNAME\r\n", b"$8\r\nworker-x\r\n");
        followed += usize::from(moved);
    }
    assert!(followed > 0, "no key moved to the first upstream");
}

/// A fake Redis that answers every command with `-LOADING …` (as redis-server while it
/// loads its data after a restart) and, after `argv[1]` commands (if given), `+PONG`.
const LOADING_PY: &str = r#"
import socket, sys, threading
limit = int(sys.argv[1]) if len(sys.argv) > 1 else -1
count = [0]
lock = threading.Lock()
def commands(buf):
    """Complete commands at the front of buf: (their names, bytes used)."""
    names, pos = [], 0
    while pos < len(buf):
        if buf[pos:pos+1] == b'*':
            end = buf.find(b'\r\n', pos)
            if end < 0: break
            k, p, ok, name = int(buf[pos+1:end]), end + 2, True, b''
            for j in range(max(k, 0)):
                e = buf.find(b'\r\n', p)
                if e < 0: ok = False; break
                n = int(buf[p+1:e])
                if j == 0: name = buf[e+2:e+2+n]
                p = e + 2 + n + 2
                if p > len(buf): ok = False; break
            if not ok: break
            pos = p
        else:
            end = buf.find(b'\n', pos)
            if end < 0: break
            name = buf[pos:end].split()[0] if buf[pos:end].split() else b''
            pos = end + 1
        names.append(name.upper())
    return names, pos
def serve(c):
    buf = b''
    while True:
        d = c.recv(65536)
        if not d: return
        buf += d
        names, used = commands(buf)
        buf = buf[used:]
        out = b''
        for name in names:
            if name == b'HELLO':
                # Allowed while loading, as in Redis.
                out += b'%1\r\n+proto\r\n:3\r\n'
                continue
            with lock:
                count[0] += 1
                loading = limit < 0 or count[0] <= limit
            out += b'-LOADING Redis is loading the dataset in memory\r\n' if loading else b'+PONG\r\n'
        c.sendall(out)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A restarted upstream that answers `-LOADING`: its commands (single ones on the slow
/// path, pipelined chunks on the fast path) are retried once on the other upstream, and
/// no client sees `-LOADING`; with no other upstream the error is passed on.
fn loading_upstream_is_skipped(driver: &str) {
    let fake = PyServer::start(LOADING_PY, &[]);
    let r = Redis::start();
    let list = format!("{},{}", fake.addr(), r.addr());
    let (p, admin) = Server::start_proxy(
        "redis",
        driver,
        &list,
        &["--health-interval", "0", "--balance", "round-robin"],
        &[],
    );
    let mut c = Conn::new(p.addr);
    for i in 0..20 {
        // Fast path: one command, then a pipelined chunk.
        c.ask(format!("SET k{i} v{i:02}\r\n").as_bytes(), b"+OK\r\n");
        c.ask(
            format!("GET k{i}\r\nPING\r\nECHO x{i:02}\r\n").as_bytes(),
            format!("$3\r\nv{i:02}\r\n+PONG\r\n$3\r\nx{i:02}\r\n").as_bytes(),
        );
        // Slow path (quoted inline arguments).
        let y = format!("y {i}");
        c.ask(
            format!("ECHO \"{y}\"\r\n").as_bytes(),
            format!("${}\r\n{y}\r\n", y.len()).as_bytes(),
        );
    }
    // A RESP3 client of a new proxy (shared connections in RESP3: our `HELLO 3`, which
    // Redis answers while loading, goes first on them and says nothing).
    let (p3, _admin3) = Server::start_proxy(
        "redis",
        driver,
        &list,
        &["--health-interval", "0", "--balance", "round-robin"],
        &[],
    );
    let mut c = Conn::new(p3.addr);
    c.hello(b"HELLO 3\r\n");
    for i in 0..10 {
        c.ask(format!("SET r{i} w{i}\r\n").as_bytes(), b"+OK\r\n");
        c.ask(
            format!("GET r{i}\r\n").as_bytes(),
            format!("$2\r\nw{i}\r\n").as_bytes(),
        );
    }
    let m = admin_metrics(admin);
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferry_proxy_upstream_failures")
                && l.contains(&fake.addr())
                && !l.ends_with(" 0")),
        "{m}"
    );

    // Alone, the loading upstream's answer reaches the client.
    let (p, _admin) = Server::start_proxy(
        "redis",
        driver,
        &fake.addr(),
        &["--health-interval", "0"],
        &[],
    );
    let mut c = Conn::new(p.addr);
    c.ask(
        b"GET a\r\nGET b\r\n",
        b"-LOADING Redis is loading the dataset in memory\r\n-LOADING Redis is loading the dataset in memory\r\n",
    );
    c.ask(
        b"ECHO \"a b\"\r\n",
        b"-LOADING Redis is loading the dataset in memory\r\n",
    );
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): the whole response.
fn http(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// An upstream whose response head does not parse: `502`, and the body says so (not
/// "connection broken").
fn invalid_response_head_is_named(driver: &str) {
    for bad in [
        &b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok"[..],
        b"SPDY/9 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
    ] {
        let up = Upstream::start(move |_, _, _| Reply::Bytes(bad));
        let (p, _admin) = Server::start_proxy("http", driver, &up.addr.to_string(), &[], &[]);
        let r = http(
            p.addr,
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        let want = format!(
            "502 Bad Gateway: GET upstream {}: invalid response head\n",
            up.addr
        );
        assert!(r.starts_with("HTTP/1.1 502 "), "{r}");
        assert!(r.ends_with(&want), "{}: {r}", String::from_utf8_lossy(bad));
    }
}

/// `X-Forwarded-Host`: the host the client asked for (its `Host`, or an absolute-form
/// target's authority), replacing any the client sent, unless the client is a trusted
/// proxy that sent one (kept, as `X-Forwarded-Proto`); none without a host (HTTP/1.0).
fn forwarded_host(driver: &str) {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let target = up.addr.to_string();
    let xfh = |p: &Server, req: &str| -> Vec<String> {
        let before = up.seen().len();
        let r = http(p.addr, req);
        assert!(r.ends_with("ok"), "{r}");
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1);
        fields(&seen[before].head, "x-forwarded-host")
            .into_iter()
            .map(String::from)
            .collect()
    };
    let cases = |p: &Server, trusted: bool| {
        assert_eq!(
            xfh(
                p,
                "GET / HTTP/1.1\r\nHost: shop.example:8080\r\nConnection: close\r\n\r\n"
            ),
            ["shop.example:8080"]
        );
        let claimed = xfh(
            p,
            "GET / HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            claimed,
            [if trusted {
                "evil.example"
            } else {
                "shop.example"
            }]
        );
        // Named by `Connection`: hop-by-hop, dropped; ours instead.
        assert_eq!(
            xfh(
                p,
                "GET / HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Host: evil.example\r\nConnection: close, X-Forwarded-Host\r\n\r\n",
            ),
            ["shop.example"]
        );
        assert_eq!(
            xfh(
                p,
                "GET http://abs.example:81/p HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
            ),
            ["abs.example:81"]
        );
        assert!(xfh(p, "GET / HTTP/1.0\r\n\r\n").is_empty());
        // One connection, several hosts (the first one's line is made once and reused).
        let before = up.seen().len();
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        for (k, h) in ["a.example", "b.example", "a.example", ""]
            .iter()
            .enumerate()
        {
            let host = if h.is_empty() {
                String::new()
            } else {
                format!("Host: {h}\r\n")
            };
            let version = if h.is_empty() { "1.0" } else { "1.1" };
            s.write_all(format!("GET /{k} HTTP/{version}\r\n{host}\r\n").as_bytes())
                .unwrap();
            let start = Instant::now();
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&got).ends_with("ok")
                && start.elapsed() < Duration::from_secs(10)
            {
                if let Ok(n) = s.read(&mut chunk) {
                    got.extend_from_slice(&chunk[..n]);
                }
            }
            got.clear();
        }
        let seen = up.seen();
        let hosts: Vec<Vec<&str>> = seen[before..]
            .iter()
            .map(|r| fields(&r.head, "x-forwarded-host"))
            .collect();
        let want: Vec<Vec<&str>> = vec![
            vec!["a.example"],
            vec!["b.example"],
            vec!["a.example"],
            vec![],
        ];
        assert_eq!(hosts, want);
    };
    let (p, _admin) = Server::start_proxy("http", driver, &target, &[], &[]);
    cases(&p, false);
    let (p, _admin) = Server::start_proxy(
        "http",
        driver,
        &target,
        &["--trusted-proxies", "127.0.0.0/8"],
        &[],
    );
    cases(&p, true);
}

/// 70 upstreams, all but the last refusing connections, round robin from the first: a
/// request with enough retries goes to each in turn and is answered by the last (the
/// upstreams a request tried used to be tracked modulo 64: the last looked tried).
fn retries_over_more_than_64_upstreams(driver: &str) {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let mut list = common::closed_addrs(69);
    list.push(up.addr.to_string());
    let (p, _admin) = Server::start_proxy(
        "http",
        driver,
        &list.join(","),
        &[
            "--health-interval",
            "0",
            "--retries",
            "80",
            "--balance",
            "round-robin",
        ],
        &[],
    );
    let r = http(
        p.addr,
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200 ") && r.ends_with("ok"), "{r}");
    assert_eq!(up.seen().len(), 1);
}

per_driver!(
    retries_over_more_than_64_upstreams,
    client_name_follows_keys,
    loading_upstream_is_skipped,
    invalid_response_head_is_named,
    forwarded_host,
);
