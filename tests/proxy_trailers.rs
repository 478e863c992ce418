//! End-to-end tests of trailers through `ferry proxy --protocol http` under each driver: a
//! chunked HTTP/1.1 request's trailer section reaches the upstream, the upstream's response
//! trailers reach the client, from an HTTP/1.1 client (raw socket) and an HTTP/2 one
//! (Python's `h2`: trailers as a HEADERS frame with END_STREAM), with the fields a trailer
//! must not carry (RFC 9110 §6.5.1) and hop-by-hop ones removed; the body framing stays
//! right (the connections carry more requests after).
//!
//! The upstream is a raw loopback HTTP/1.1 server in this file that decodes chunked bodies
//! with their trailer sections and answers with a chunked response that has trailers.
//! Nothing here asserts timing; every loop is bounded; loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{python, Server};

/// One request as the upstream decoded it.
#[derive(Clone, Debug, Default)]
struct Got {
    head: String,
    body: Vec<u8>,
    /// The trailer section's lines (as received).
    trailers: Vec<String>,
}

/// The response to a request with a body: chunked, with trailers (some of which must not
/// go on).
const CHUNKED_WITH_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
    Trailer: grpc-status, grpc-message\r\n\r\n\
    3\r\nabc\r\n4\r\ndefg\r\n0\r\n\
    Grpc-Status: 7\r\ngrpc-message: no%20way\r\nSet-Cookie: a=1\r\nContent-Length: 99\r\n\
    Content-Type: text/evil\r\nConnection: close\r\n\r\n";

/// The response to a request without a body.
const PLAIN: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain";

/// A raw HTTP/1.1 upstream: one thread per connection (the threads end with the process or
/// on EOF), every request recorded with its body and trailers.
fn upstream() -> (SocketAddr, Arc<Mutex<Vec<Got>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(64).flatten() {
            let g = g.clone();
            std::thread::spawn(move || serve(s, &g));
        }
    });
    (addr, got)
}

fn line(r: &mut impl BufRead) -> Option<String> {
    let mut l = String::new();
    match r.read_line(&mut l) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(l.trim_end().to_string()),
    }
}

fn serve(s: TcpStream, got: &Mutex<Vec<Got>>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut g = Got::default();
        let Some(first) = line(&mut r) else { return };
        g.head.push_str(&first);
        g.head.push('\n');
        let (mut chunked, mut len) = (false, 0usize);
        loop {
            let Some(l) = line(&mut r) else { return };
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            g.head.push_str(&l);
            g.head.push('\n');
        }
        if chunked {
            loop {
                let Some(size) = line(&mut r) else { return };
                let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
                if n == 0 {
                    break;
                }
                let mut b = vec![0; n + 2];
                r.read_exact(&mut b).unwrap();
                g.body.extend_from_slice(&b[..n]);
            }
            loop {
                let Some(l) = line(&mut r) else { return };
                if l.is_empty() {
                    break;
                }
                g.trailers.push(l);
            }
        } else {
            let mut b = vec![0; len];
            r.read_exact(&mut b).unwrap();
            g.body = b;
        }
        let has_body = chunked || len > 0;
        got.lock().unwrap().push(g);
        let reply = if has_body {
            CHUNKED_WITH_TRAILERS
        } else {
            PLAIN
        };
        if w.write_all(reply).is_err() {
            return;
        }
    }
}

fn proxy(driver: &str, up: SocketAddr) -> Server {
    Server::start_proxy(
        "http",
        driver,
        &up.to_string(),
        &["--health-interval", "0"],
        &[],
    )
    .0
}

/// The trailer lines that reached the upstream, lower-cased.
fn lowered(g: &Got) -> Vec<String> {
    g.trailers.iter().map(|t| t.to_ascii_lowercase()).collect()
}

/// The upstream got the request trailers it may: `x-checksum` and `grpc-timeout`, not the
/// forbidden `content-length`, `host`, `authorization`, nor the hop-by-hop `connection`.
fn assert_request_trailers(g: &Got) {
    let t = lowered(g);
    assert!(t.iter().any(|l| l == "x-checksum: abc"), "{g:?}");
    assert!(t.iter().any(|l| l == "grpc-timeout: 1s"), "{g:?}");
    for bad in ["content-length", "host", "authorization", "connection"] {
        assert!(
            !t.iter().any(|l| l.starts_with(&format!("{bad}:"))),
            "{bad} in {g:?}"
        );
    }
    assert_eq!(t.len(), 2, "{g:?}");
}

/// HTTP/1.1 client: a chunked request with trailers, its chunked response with trailers
/// (`grpc-status`, `grpc-message` kept; `set-cookie`, `content-length`, `content-type`,
/// `connection` removed), then a plain request on the same connection.
fn http1_trailers_both_ways(driver: &str) {
    let (addr, got) = upstream();
    let p = proxy(driver, addr);
    let s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nContent-Length: 99\r\nHost: evil\r\n\
          Authorization: x\r\nConnection: close\r\nGrpc-Timeout: 1s\r\n\r\n",
    )
    .unwrap();
    let status = line(&mut r).unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut chunked = false;
    loop {
        let l = line(&mut r).unwrap().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        chunked |= l == "transfer-encoding: chunked";
    }
    assert!(chunked, "the response stays chunked");
    let mut body = Vec::new();
    loop {
        let n = usize::from_str_radix(&line(&mut r).unwrap(), 16).unwrap();
        if n == 0 {
            break;
        }
        let mut b = vec![0; n + 2];
        r.read_exact(&mut b).unwrap();
        body.extend_from_slice(&b[..n]);
    }
    let mut trailers = Vec::new();
    loop {
        let l = line(&mut r).unwrap();
        if l.is_empty() {
            break;
        }
        trailers.push(l.to_ascii_lowercase());
    }
    assert_eq!(body, b"abcdefg");
    assert_eq!(
        trailers,
        ["grpc-status: 7", "grpc-message: no%20way"],
        "response trailers"
    );
    let g = got.lock().unwrap()[0].clone();
    assert_eq!(g.body, b"hello world");
    assert_request_trailers(&g);
    // The framing is intact: the connection serves the next request.
    w.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (st, _, b) = common::read_h1(&mut r);
    assert_eq!(st, "HTTP/1.1 200 OK");
    assert_eq!(b, b"plain");
}

/// HTTP/2 client (h2c): request trailers (a HEADERS frame with END_STREAM after the DATA)
/// reach the HTTP/1.1 upstream as the chunked body's trailer section; the upstream's
/// trailers come back as a trailing HEADERS frame, filtered; a stream without trailers and
/// one with a body of known length (whose trailers cannot go on) are served too.
fn http2_trailers_both_ways(driver: &str) {
    let (addr, got) = upstream();
    let p = proxy(driver, addr);
    let script = r#"
from h2_client import *
a = start('POST', '/grpc', body=b'hello world', trailer=[('x-checksum', 'abc'), ('grpc-timeout', '1s'), ('authorization', 'x'), ('host', 'evil')], headers=[('te', 'trailers')])
run([a])
assert status[a] == b'200', status
assert bytes(bodies[a]) == b'abcdefg', bodies[a]
print("A", sorted(trailers[a].items()))
b = start('GET', '/plain')
run([b])
assert bytes(bodies[b]) == b'plain' and b not in trailers
finish()
print("OK")
"#;
    let out = Command::new(python())
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support"),
        )
        .args(["-c", script, "127.0.0.1", &p.port()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("A [(b'grpc-message', b'no%20way'), (b'grpc-status', b'7')]"),
        "{text}"
    );
    assert!(text.contains("OK"), "{text}");
    let g = got.lock().unwrap()[0].clone();
    assert!(
        g.head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{g:?}"
    );
    assert_eq!(g.body, b"hello world");
    assert_request_trailers(&g);
}

per_driver!(http1_trailers_both_ways, http2_trailers_both_ways);
