//! End-to-end tests of `ferry proxy --rate-limit N --rate-limit-burst B` (HTTP): a client
//! gets its burst, then `429 Too Many Requests` with `Retry-After`, in order behind the
//! responses before it when it pipelines; clients behind a trusted proxy are told apart by
//! `X-Forwarded-For`; the refusals are counted in `/metrics`.
//!
//! The rate is 1 an hour, so nothing refills during a test: the counts are exact without
//! depending on timing. Every loop is bounded; loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod common;
use common::{admin_metrics, Server};

#[path = "support/upstream.rs"]
mod upstream;
use upstream::{Reply, Upstream};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A proxy admitting `burst` requests per client, then one an hour.
fn proxy(driver: &str, up: &Upstream, burst: &str, extra: &[&str]) -> (Server, SocketAddr) {
    let mut args = vec!["--health-interval", "0", "--rate-limit", "1/h"];
    args.extend_from_slice(&["--rate-limit-burst", burst]);
    args.extend_from_slice(extra);
    Server::start_proxy("http", driver, &up.addr.to_string(), &args, &[])
}

/// Write `req` and read `n` responses (each `Content-Length` framed), bounded.
fn responses(s: &mut TcpStream, req: &[u8], n: usize) -> Vec<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(req).unwrap();
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut chunk = [0u8; 8192];
    while out.len() < n && start.elapsed() < Duration::from_secs(20) {
        if let Ok(k) = s.read(&mut chunk) {
            if k == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let status = head[9..12].parse().unwrap();
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            out.push((status, format!("{head}\r\n\r\n{body}")));
            buf.drain(..end + 4 + len);
        }
    }
    out
}

fn get(xff: Option<&str>) -> String {
    let xff = xff.map_or(String::new(), |x| format!("X-Forwarded-For: {x}\r\n"));
    format!("GET / HTTP/1.1\r\nHost: a\r\n{xff}\r\n")
}

/// Three admitted one at a time, then `429` with `Retry-After` and a reason; counted.
fn burst_then_429(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let (p, admin) = proxy(driver, &up, "3", &[]);
    let mut s = TcpStream::connect(p.addr).unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.extend(responses(&mut s, get(None).as_bytes(), 1));
    }
    let codes: Vec<u16> = got.iter().map(|r| r.0).collect();
    assert_eq!(codes, [200, 200, 200, 429, 429], "{got:?}");
    let refused = &got[3].1;
    assert!(refused.contains("\r\nretry-after: "), "{refused}");
    assert!(
        refused.ends_with("429 Too Many Requests: GET rate limit for this client\n"),
        "{refused}"
    );
    assert_eq!(up.seen().len(), 3);
    let m = admin_metrics(admin);
    assert!(
        m.contains("ferry_proxy_local_responses_total{protocol=\"http\",code=\"429\"} 2"),
        "{m}"
    );
}

/// Six pipelined requests: the first two admitted, the rest answered `429` in order after
/// them; the connection stays usable.
fn pipelined_refusals_keep_order(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let (p, _admin) = proxy(driver, &up, "2", &[]);
    let mut s = TcpStream::connect(p.addr).unwrap();
    let six = get(None).repeat(6);
    let got = responses(&mut s, six.as_bytes(), 6);
    let codes: Vec<u16> = got.iter().map(|r| r.0).collect();
    assert_eq!(codes, [200, 200, 429, 429, 429, 429], "{got:?}");
    assert!(got[0].1.ends_with("ok") && got[1].1.ends_with("ok"));
    assert_eq!(up.seen().len(), 2);
}

/// Behind a trusted proxy each forwarded client has its own burst; an untrusted client's
/// `X-Forwarded-For` does not buy it another.
fn forwarded_clients_are_told_apart(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let (p, _admin) = proxy(driver, &up, "1", &["--trusted-proxies", "127.0.0.1/32"]);
    let mut s = TcpStream::connect(p.addr).unwrap();
    let mut codes = Vec::new();
    for xff in [
        "10.0.0.1",
        "10.0.0.1",
        "10.0.0.2",
        "9.9.9.9, 10.0.0.3",
        "10.0.0.3",
    ] {
        codes.extend(
            responses(&mut s, get(Some(xff)).as_bytes(), 1)
                .iter()
                .map(|r| r.0),
        );
    }
    assert_eq!(codes, [200, 429, 200, 200, 429]);
    // Not trusted: the peer (127.0.0.1) is the client, whatever it forwards.
    let (p, _admin) = proxy(driver, &up, "1", &[]);
    let mut s = TcpStream::connect(p.addr).unwrap();
    let mut codes = Vec::new();
    for xff in ["10.0.0.1", "10.0.0.2"] {
        codes.extend(
            responses(&mut s, get(Some(xff)).as_bytes(), 1)
                .iter()
                .map(|r| r.0),
        );
    }
    assert_eq!(codes, [200, 429]);
}

per_driver!(
    burst_then_429,
    pipelined_refusals_keep_order,
    forwarded_clients_are_told_apart
);
