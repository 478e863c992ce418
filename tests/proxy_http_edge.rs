//! Edge cases of `ferry proxy --protocol http` that a production user hits, each with a
//! scripted raw-TCP upstream (this file's [`Upstream`]) that records what reaches it and
//! answers with exact bytes (or closes), and raw-TCP clients: forwarded fields the client may
//! not set, absolute-form targets, the keep-alive race on a pooled connection, transfer
//! codings the proxy cannot re-frame.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

mod common;
use common::Server;

#[path = "support/upstream.rs"]
mod upstream;
use upstream::{fields, read_more, Reply, Upstream};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn proxy(driver: &str, up: &Upstream) -> Server {
    proxy_with(driver, up, &[])
}

fn proxy_with(driver: &str, up: &Upstream, extra: &[&str]) -> Server {
    let ups = up.addr.to_string();
    let mut args = vec![
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &ups,
        "--workers",
        "1",
        "--driver",
        driver,
    ];
    args.extend_from_slice(extra);
    Server::launch("http", &args, &[], None)
}

/// Send `req` on a new connection and read until the proxy closes it (the requests here say
/// `Connection: close`); bounded.
fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    exchange_eof(addr, req).0
}

/// [`exchange`], and whether the proxy closed the connection (false: the read timed out).
fn exchange_eof(addr: SocketAddr, req: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let eof = s.read_to_end(&mut out).is_ok();
    (String::from_utf8_lossy(&out).into_owned(), eof)
}

fn status_of(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

/// A client's `X-Forwarded-Proto: https` on a plain-HTTP connection must not reach the
/// upstream next to the proxy's own `http` (frameworks take either value as the scheme):
/// the proxy's replaces it, as for `X-Forwarded-For`'s value of record.
fn client_x_forwarded_proto_is_replaced(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let p = proxy(driver, &up);
    let r = exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nx-forwarded-proto: wss\r\n\
          Connection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        fields(&seen[0].head, "x-forwarded-proto"),
        ["http"],
        "{}",
        seen[0].head
    );
    // With an `X-Forwarded-For` too (the other way the proxy writes its fields).
    let r = exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
          Connection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
    let seen = up.seen();
    assert_eq!(
        fields(&seen[1].head, "x-forwarded-proto"),
        ["http"],
        "{}",
        seen[1].head
    );
    assert_eq!(
        fields(&seen[1].head, "x-forwarded-for"),
        ["10.0.0.1, 127.0.0.1"],
        "{}",
        seen[1].head
    );
}

/// RFC 9112 §3.2.2: for an absolute-form target the proxy ignores the client's `Host` and
/// sends one made from the target, so that it and the upstream (which routes by the target)
/// agree on the host; origin-form requests keep theirs.
fn absolute_form_target_sets_host(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let p = proxy(driver, &up);
    let r = exchange(
        p.addr,
        b"GET http://evil.example:8080/x?y HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
    let r = exchange(
        p.addr,
        b"GET /z HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        fields(&seen[0].head, "host"),
        ["evil.example:8080"],
        "{}",
        seen[0].head
    );
    assert_eq!(
        fields(&seen[1].head, "host"),
        ["good.example"],
        "{}",
        seen[1].head
    );
}

/// The keep-alive race: the upstream closes an idle pooled connection just as the proxy
/// sends it a request (here: it closes on any second request). With a single upstream, a
/// GET must still be answered (sent again on a new connection, not a 502); a POST is never
/// sent twice (502).
fn stale_pooled_connection_get_resent_post_not(driver: &str) {
    let up = Upstream::start(|_, nth, _| {
        if nth == 0 {
            Reply::Bytes(OK)
        } else {
            Reply::Close
        }
    });
    let p = proxy(driver, &up);
    for i in 0..4 {
        let r = exchange(
            p.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status_of(&r), "200", "GET {i}: {r}");
    }
    let seen = up.seen();
    assert!(
        seen.iter().any(|s| s.nth == 1),
        "no request went to a pooled connection: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.conn > 0 && s.nth == 0),
        "the GET was not sent again on a new connection: {seen:?}"
    );
    // A POST on the pooled connection left by the last GET: sent once, answered 502.
    let r = exchange(
        p.addr,
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    let posts = up
        .seen()
        .iter()
        .filter(|s| s.head.starts_with("POST "))
        .count();
    assert_eq!(posts, 1, "a POST must never be sent twice: {r}");
    assert_eq!(status_of(&r), "502", "{r}");
}

/// An upstream body in a transfer coding other than `chunked` (`gzip, chunked`, or `gzip`
/// until close) cannot go out re-chunked without that coding: the client would get gzip
/// bytes as the body. 502, as nginx answers; a plain chunked body still goes through.
fn upstream_transfer_coding_other_than_chunked_is_502(driver: &str) {
    let up = Upstream::start(|_, _, head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        Reply::Bytes(match path {
            "/gz-chunked" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            }
            "/gz" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nhello",
            _ => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        })
    });
    let p = proxy(driver, &up);
    for path in ["/gz-chunked", "/gz"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let r = exchange(p.addr, req.as_bytes());
        assert_eq!(status_of(&r), "502", "{path}: {r}");
        assert!(!r.contains("hello"), "{path}: {r}");
    }
    let r = exchange(
        p.addr,
        b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
    assert!(r.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{r}");
}

/// A client that stops sending its request body must not hold its connection and an
/// upstream connection forever: after the response timeout without a byte, `408` and close
/// (nginx: `client_body_timeout`); the upstream gets no complete request.
fn client_stalling_mid_body_gets_408(driver: &str) {
    // The chunked body is not parsed there: its head is seen, and never answered.
    let up = Upstream::start(|_, _, _| Reply::Silent);
    let p = proxy_with(driver, &up, &["--response-timeout", "1s"]);
    for req in [
        &b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab"[..],
        b"PUT /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
    ] {
        let (r, eof) = exchange_eof(p.addr, req);
        assert!(eof, "the connection stayed open: {r}");
        assert_eq!(status_of(&r), "408", "{r}");
        assert!(r.contains("connection: close"), "{r}");
    }
    let seen = up.seen();
    assert!(seen.iter().all(|s| s.head.starts_with("PUT ")), "{seen:?}");
}

/// An upstream that stops mid-body (head and part of the body sent, connection open) must
/// not hold the client forever: after the response timeout without a byte the client's
/// connection is cut (the body is short of its length: the client sees the truncation),
/// as when the upstream breaks mid-response. A slow but moving body is not cut.
fn upstream_stalling_mid_body_cuts_the_client(driver: &str) {
    let up = Upstream::start(|_, _, head| {
        Reply::Bytes(if head.starts_with("GET /chunked ") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok"
        })
    });
    // 3 s, not less: under CI load a 1 s timeout once fired before the head got through.
    let p = proxy_with(driver, &up, &["--response-timeout", "3s"]);
    for path in ["/length", "/chunked"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (r, eof) = exchange_eof(p.addr, req.as_bytes());
        assert!(eof, "{path}: the client was held: {r}");
        assert_eq!(status_of(&r), "200", "{path}: {r}");
        assert!(!r.ends_with("0\r\n\r\n"), "{path}: complete? {r}");
    }
}

/// RFC 9110 §15.2: a proxy forwards 1xx responses. `103 Early Hints` (and `102`) reach an
/// HTTP/1.1 client before the final response, hop-by-hop fields removed; the upstream's
/// `100 Continue` does not (the proxy answers `Expect` itself), and an HTTP/1.0 client gets
/// no 1xx at all.
fn interim_responses_are_forwarded(driver: &str) {
    let up = Upstream::start(|_, _, _| {
        Reply::Bytes(
            b"HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: x-hop\r\n\
              X-Hop: 1\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
    });
    let p = proxy(driver, &up);
    let r = exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(
        r.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"),
        "{r}"
    );
    let (hints, fin) = r.split_once("\r\n\r\n").unwrap();
    assert!(!hints.to_ascii_lowercase().contains("x-hop"), "{r}");
    assert!(
        fin.starts_with("HTTP/1.1 200 OK\r\n") && fin.ends_with("ok"),
        "{r}"
    );
    assert!(!r.contains("100 Continue"), "{r}");
    let r = exchange(p.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("ok"),
        "{r}"
    );
}

/// A `Host` that is no `host[:port]` (`a/b`, `u@h`, a space), or such an authority in an
/// absolute-form target, is a 400 at the proxy: never passed to an upstream that builds URLs
/// or routes from it (RFC 9112 §3.2).
fn invalid_host_is_400(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let p = proxy(driver, &up);
    for host in ["a/b", "u@h", "a b", "h?x"] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = exchange(p.addr, req.as_bytes());
        assert_eq!(status_of(&r), "400", "{host}: {r}");
    }
    // Nor from an absolute-form target's authority (the forwarded `host` is made from it).
    let r = exchange(
        p.addr,
        b"GET http://a<b>/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "400", "{r}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let r = exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
}

/// A HEAD response declaring a huge length (a multi-terabyte object, or a hostile upstream)
/// is forwarded with that length at once; the worker is not stalled counting it down, and
/// the next request is served.
fn head_with_huge_content_length(driver: &str) {
    let up = Upstream::start(|_, _, head| {
        Reply::Bytes(if head.starts_with("HEAD ") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n"
        } else {
            OK
        })
    });
    let p = proxy(driver, &up);
    let r = exchange(
        p.addr,
        b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
    assert!(r.contains("content-length: 1000000000000000\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\n"), "{r}");
    let r = exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
}

/// A request none of which reached an upstream (here: its connect was refused) goes to
/// another upstream whatever its method: a POST is answered by the live upstream, not 502,
/// and reaches it once.
fn unsent_post_goes_to_another_upstream(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    // A port nothing listens on (bound, then released).
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let p = proxy_with(
        driver,
        &up,
        &["--upstream", &dead, "--health-interval", "0"],
    );
    for i in 0..4 {
        let r = exchange(
            p.addr,
            format!(
                "POST /p{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            )
            .as_bytes(),
        );
        assert_eq!(status_of(&r), "200", "POST {i}: {r}");
    }
    let seen = up.seen();
    for i in 0..4 {
        let n = seen
            .iter()
            .filter(|s| s.head.starts_with(&format!("POST /p{i} ")))
            .count();
        assert_eq!(n, 1, "POST {i} reached the upstream {n} times: {seen:?}");
    }
}

/// RFC 9110 §9.3.2: a HEAD response carries the fields a GET's would: a chunked one keeps
/// `Transfer-Encoding: chunked`; to an HTTP/1.0 keep-alive client it needs no close.
fn head_response_keeps_transfer_encoding(driver: &str) {
    let up = Upstream::start(|_, _, head| {
        Reply::Bytes(if head.starts_with("HEAD ") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        } else {
            OK
        })
    });
    let p = proxy(driver, &up);
    let r = exchange(
        p.addr,
        b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
    assert!(r.contains("transfer-encoding: chunked\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\n"), "{r}");
    // HTTP/1.0 with keep-alive: the connection stays for the next request.
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"HEAD / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        if !read_more(&mut s, &mut got) {
            break;
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    assert_eq!(status_of(&head), "200", "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert_eq!(status_of(&rest), "200", "{rest}");
    assert!(rest.ends_with("ok"), "{rest}");
}

/// `ferry proxy`'s request limits are its flags: a head over `--max-head-bytes` is 431, one
/// with more fields than `--max-headers` too; the upstream never sees either.
fn request_limit_flags_apply(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let p = proxy_with(
        driver,
        &up,
        &["--max-head-bytes", "1024", "--max-headers", "8"],
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(2000)
    );
    let r = exchange(p.addr, big.as_bytes());
    assert_eq!(status_of(&r), "431", "{r}");
    let many: String = (0..10).map(|i| format!("X-{i}: v\r\n")).collect();
    let r = exchange(
        p.addr,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}Connection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&r), "431", "{r}");
    let r = exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), "200", "{r}");
    assert_eq!(up.seen().len(), 1, "{:?}", up.seen());
}

per_driver!(
    client_x_forwarded_proto_is_replaced,
    absolute_form_target_sets_host,
    stale_pooled_connection_get_resent_post_not,
    upstream_transfer_coding_other_than_chunked_is_502,
    client_stalling_mid_body_gets_408,
    upstream_stalling_mid_body_cuts_the_client,
    interim_responses_are_forwarded,
    invalid_host_is_400,
    head_with_huge_content_length,
    unsent_post_goes_to_another_upstream,
    head_response_keeps_transfer_encoding,
    request_limit_flags_apply,
);
