//! Edge cases of `ferry serve --http` a production client runs into, under both drivers (and
//! with application workers): h2c upgrades HTTP/2 cannot take, HEAD over an upgraded
//! connection, absolute-form request targets, and an HTTP/2 client with a tiny flow-control
//! window. Raw sockets with hand-built frames, so each test pins down the bytes on the wire.
//!
//! Nothing here asserts timing; every wait is bounded; loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod common;
use common::{read_h1, Server};

fn start(driver: &str, extra: &[&str]) -> Server {
    Server::start_http(driver, extra)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

// ---- minimal HTTP/2 framing (RFC 9113 §4.1) ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ACK: u8 = 1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn read_frame(r: &mut impl Read) -> Frame {
    let mut h = [0u8; 9];
    r.read_exact(&mut h).expect("frame header");
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).expect("frame payload");
    Frame {
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        payload,
    }
}

/// An HPACK block (static-table indexes and literals without indexing) for `METHOD PATH`.
fn request_block(method: &str, path: &str) -> Vec<u8> {
    let mut b = vec![
        match method {
            "GET" => 0x82,
            "POST" => 0x83,
            m => panic!("no static entry for {m}"),
        },
        0x86, // :scheme http
        0x04, // :path, literal without indexing
        path.len() as u8,
    ];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 0x01, b'a']); // :authority a
    b
}

/// An `Upgrade: h2c` request whose `HTTP2-Settings` HTTP/2 cannot take (or which HTTP/1.0
/// must ignore) is served over HTTP/1.1: no 101 followed by a GOAWAY that drops the request.
fn unusable_upgrade_is_served_over_http1(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    for (version, settings) in [
        ("1.1", "!!!"),      // not base64url
        ("1.1", "AAMA"),     // not a whole setting
        ("1.1", "AAIAAAAC"), // SETTINGS_ENABLE_PUSH = 2
        ("1.0", "AAMAAABk"), // valid, but Upgrade is ignored in HTTP/1.0 (RFC 9110 §7.8)
    ] {
        let mut c = connect(s.addr);
        let req = format!(
            "GET / HTTP/{version}\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings\r\n\
             upgrade: h2c\r\nhttp2-settings: {settings}\r\n\r\n"
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        let (status, _, body) = read_h1(&mut r);
        assert_eq!(status, "HTTP/1.1 200 OK", "HTTP/{version} {settings}");
        assert_eq!(body, b"hello world\n", "HTTP/{version} {settings}");
    }
}

/// HEAD sent as an `Upgrade: h2c` request: stream 1's response is a HEADERS frame that ends
/// the stream, with no DATA (which clients answer with RST_STREAM PROTOCOL_ERROR).
fn upgraded_head_has_no_content(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    let mut c = connect(s.addr);
    c.write_all(
        b"HEAD / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings\r\n\
          upgrade: h2c\r\nhttp2-settings: AAMAAABk\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let (status, _, _) = read_h1(&mut r);
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    c.write_all(&hello).unwrap();
    // Every frame of stream 1 up to its end, then up to the ACK of a PING sent after it (so
    // anything the server still had queued for stream 1 shows up too).
    let mut stream1 = Vec::new();
    let mut pinged = false;
    loop {
        let f = read_frame(&mut r);
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => c.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap(),
            PING if f.flags & ACK != 0 => break,
            GOAWAY => panic!("GOAWAY {:?}", f.payload),
            _ if f.stream == 1 => {
                stream1.push((f.kind, f.flags, f.payload.len()));
                if f.flags & END_STREAM != 0 && !pinged {
                    pinged = true;
                    c.write_all(&frame(PING, 0, 0, b"flushed!")).unwrap();
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        stream1,
        [(HEADERS, END_STREAM | END_HEADERS, stream1[0].2)],
        "stream 1 frames (kind, flags, length)"
    );
}

/// RFC 9112 §3.2.2: a server must accept absolute-form targets; they route by their path.
fn absolute_form_routes_by_path(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    let mut c = connect(s.addr);
    c.write_all(
        b"GET http://example.com/health HTTP/1.1\r\nhost: example.com\r\n\r\n\
          GET http://example.com HTTP/1.1\r\nhost: example.com\r\n\r\n\
          POST http://example.com/echo?x=1 HTTP/1.1\r\nhost: example.com\r\ncontent-length: 2\r\n\r\nhi",
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let (status, _, body) = read_h1(&mut r);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.starts_with(b"{\"status\":\"ok\""), "{body:?}");
    let (status, _, body) = read_h1(&mut r);
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"hello world\n"[..])
    );
    let (status, _, body) = read_h1(&mut r);
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"hi"[..])
    );
}

/// RFC 9112 §3.2: a Host value that is not `uri-host [":" port]` gets 400 and a close; a
/// valid one with a port is served.
fn invalid_host_is_400(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    for (host, want) in [
        ("example.com:8080", "HTTP/1.1 200 OK"),
        ("a b", "HTTP/1.1 400 Bad Request"),
        ("evil.example/x", "HTTP/1.1 400 Bad Request"),
        ("user@example.com", "HTTP/1.1 400 Bad Request"),
    ] {
        let mut c = connect(s.addr);
        let req = format!("GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n");
        c.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        let (status, headers, _) = read_h1(&mut r);
        assert_eq!(status, want, "{host}");
        if want.contains("400") {
            assert!(headers.contains(&("connection".into(), "close".into())));
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{host}: closed after the 400");
        }
    }
}

/// The listener's `keep_alive_timeout` closes idle h2c connections too (GOAWAY NO_ERROR,
/// then EOF), as it does HTTP/1.1 ones, instead of HTTP/2's own 5-minute default.
fn h2_idle_connection_honours_keep_alive_timeout(driver: &str, extra: &[&str]) {
    let dir = common::tmp_dir("edge", &format!("idle-{driver}"));
    let config = dir.join("ferry.toml");
    std::fs::write(&config, "keep_alive_timeout = \"1s\"\n").unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let s = start(driver, &args);
    let mut c = connect(s.addr);
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("GET", "/"),
    ));
    c.write_all(&out).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let started = Instant::now();
    let mut answered = false;
    let goaway = loop {
        let f = read_frame(&mut r);
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => c.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap(),
            DATA if f.stream == 1 && f.flags & END_STREAM != 0 => answered = true,
            GOAWAY => break f.payload,
            _ => {}
        }
    };
    assert!(answered, "the request was answered before the GOAWAY");
    assert_eq!(
        &goaway[..8],
        &[0, 0, 0, 1, 0, 0, 0, 0],
        "GOAWAY last=1 NO_ERROR"
    );
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    // Generous: the point is "not HTTP/2's five minutes".
    assert!(started.elapsed() < Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(dir);
}

/// The listener's `max_body` holds for HTTP/2 requests as for HTTP/1.1 ones: a
/// `content-length` over it is answered 413 before the application sees the request; a body
/// that grows past it after the application started answering has its stream reset
/// (CANCEL); the connection carries on.
fn h2_max_body_is_enforced(driver: &str, extra: &[&str]) {
    let dir = common::tmp_dir("edge", &format!("maxbody-{driver}"));
    let config = dir.join("ferry.toml");
    std::fs::write(&config, "max_body = 1000\n").unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let s = start(driver, &args);
    let mut c = connect(s.addr);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // Stream 1: content-length 5000 (literal field, name index 28).
    let mut block = request_block("POST", "/echo");
    block.extend_from_slice(&[0x0f, 0x0d, 4]);
    block.extend_from_slice(b"5000");
    out.extend(frame(HEADERS, END_HEADERS, 1, &block));
    // Stream 3: no content-length; 600 octets now, 600 more once the echo has begun.
    out.extend(frame(
        HEADERS,
        END_HEADERS,
        3,
        &request_block("POST", "/echo"),
    ));
    out.extend(frame(DATA, 0, 3, &[b'x'; 600]));
    c.write_all(&out).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut body1 = Vec::new();
    let mut echoed3 = 0;
    let mut reset3 = None;
    let mut body5 = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(body1.ends_with(b"\n") && reset3.is_some() && body5.ends_with(b"\n")) {
        assert!(Instant::now() < deadline, "stalled");
        let f = read_frame(&mut r);
        match (f.kind, f.stream) {
            (SETTINGS, 0) if f.flags & ACK == 0 => {
                c.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap()
            }
            (DATA, 1) => body1.extend_from_slice(&f.payload),
            (RST_STREAM, 1) => panic!("stream 1 reset: {:?}", f.payload),
            (DATA, 3) => {
                echoed3 += f.payload.len();
                if echoed3 == 600 {
                    let mut more = frame(DATA, END_STREAM, 3, &[b'y'; 600]);
                    more.extend(frame(
                        HEADERS,
                        END_HEADERS | END_STREAM,
                        5,
                        &request_block("GET", "/"),
                    ));
                    c.write_all(&more).unwrap();
                }
            }
            (RST_STREAM, 3) => reset3 = Some(f.payload),
            (DATA, 5) => body5.extend_from_slice(&f.payload),
            (GOAWAY, _) => panic!("GOAWAY {:?}", f.payload),
            _ => {}
        }
    }
    assert_eq!(body1, b"content too large\n");
    assert_eq!(echoed3, 600);
    assert_eq!(reset3.unwrap(), 8u32.to_be_bytes(), "RST_STREAM CANCEL");
    assert_eq!(body5, b"hello world\n");
    let _ = std::fs::remove_dir_all(dir);
}

/// An HTTP/2 client with SETTINGS_INITIAL_WINDOW_SIZE = 16 that acknowledges every DATA
/// frame (stream and connection WINDOW_UPDATE) downloads thousands of frames: a legitimate
/// slow reader, not a WINDOW_UPDATE flood to be cut off with ENHANCE_YOUR_CALM.
fn tiny_window_download_completes(driver: &str, extra: &[&str]) {
    const STREAMS: u32 = 8;
    const LEN: usize = 8000;
    let s = start(driver, extra);
    let mut c = connect(s.addr);
    let mut out = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 16.
    out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 16]));
    let body = vec![b'z'; LEN];
    for i in 0..STREAMS {
        let id = 1 + 2 * i;
        out.extend(frame(
            HEADERS,
            END_HEADERS,
            id,
            &request_block("POST", "/echo"),
        ));
        out.extend(frame(DATA, END_STREAM, id, &body));
    }
    c.write_all(&out).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut got = [0usize; STREAMS as usize];
    let mut ended = 0;
    let mut data_frames = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended < STREAMS {
        assert!(Instant::now() < deadline, "download stalled: {got:?}");
        let f = read_frame(&mut r);
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => c.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap(),
            DATA => {
                got[(f.stream as usize - 1) / 2] += f.payload.len();
                if !f.payload.is_empty() {
                    data_frames += 1;
                    let inc = (f.payload.len() as u32).to_be_bytes();
                    let mut acks = frame(WINDOW_UPDATE, 0, f.stream, &inc);
                    acks.extend(frame(WINDOW_UPDATE, 0, 0, &inc));
                    c.write_all(&acks).unwrap();
                }
                if f.flags & END_STREAM != 0 {
                    ended += 1;
                }
            }
            RST_STREAM => panic!("RST_STREAM on {}: {:?}", f.stream, f.payload),
            GOAWAY => panic!("GOAWAY {:?} after {data_frames} DATA frames", f.payload),
            _ => {}
        }
    }
    assert_eq!(got, [LEN; STREAMS as usize]);
    assert!(data_frames >= STREAMS as usize * LEN / 16);
}

#[test]
fn epoll_unusable_upgrade_is_served_over_http1() {
    unusable_upgrade_is_served_over_http1("epoll", &[]);
}

#[test]
fn uring_unusable_upgrade_is_served_over_http1_app_workers() {
    unusable_upgrade_is_served_over_http1("uring", &["--app-workers", "2"]);
}

#[test]
fn epoll_upgraded_head_has_no_content() {
    upgraded_head_has_no_content("epoll", &[]);
}

#[test]
fn uring_upgraded_head_has_no_content_app_workers() {
    upgraded_head_has_no_content("uring", &["--app-workers", "2"]);
}

#[test]
fn epoll_absolute_form_routes_by_path_app_workers() {
    absolute_form_routes_by_path("epoll", &["--app-workers", "2"]);
}

#[test]
fn uring_absolute_form_routes_by_path() {
    absolute_form_routes_by_path("uring", &[]);
}

#[test]
fn epoll_h2_tiny_window_download_completes() {
    tiny_window_download_completes("epoll", &[]);
}

#[test]
fn uring_h2_tiny_window_download_completes_app_workers() {
    tiny_window_download_completes("uring", &["--app-workers", "2"]);
}

#[test]
fn epoll_invalid_host_is_400() {
    invalid_host_is_400("epoll", &[]);
}

#[test]
fn uring_invalid_host_is_400_app_workers() {
    invalid_host_is_400("uring", &["--app-workers", "2"]);
}

#[test]
fn epoll_h2_idle_connection_honours_keep_alive_timeout() {
    h2_idle_connection_honours_keep_alive_timeout("epoll", &[]);
}

#[test]
fn uring_h2_idle_connection_honours_keep_alive_timeout_app_workers() {
    h2_idle_connection_honours_keep_alive_timeout("uring", &["--app-workers", "2"]);
}

#[test]
fn epoll_h2_max_body_is_enforced() {
    h2_max_body_is_enforced("epoll", &[]);
}

#[test]
fn uring_h2_max_body_is_enforced_app_workers() {
    h2_max_body_is_enforced("uring", &["--app-workers", "2"]);
}

/// `ferry serve` with `settings` written to a config file.
fn start_with(
    driver: &str,
    extra: &[&str],
    name: &str,
    settings: &str,
) -> (Server, std::path::PathBuf) {
    let dir = common::tmp_dir("edge", &format!("{name}-{driver}"));
    let config = dir.join("ferry.toml");
    std::fs::write(&config, settings).unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    (start(driver, &args), dir)
}

/// A 413 from the body-buffering limit, sent before the body was read, closes the connection
/// (`connection: close`) instead of reading a huge body to its end, and the close does not
/// reset the answer away; a small unread rest is read and dropped and the connection stays.
fn early_413_closes_unless_little_is_left(driver: &str, extra: &[&str]) {
    let (s, dir) = start_with(driver, extra, "early413", "max_buffered_body = 100\n");
    let mut c = connect(s.addr);
    c.write_all(b"POST /nope HTTP/1.1\r\nhost: a\r\ncontent-length: 100000000\r\n\r\n")
        .unwrap();
    // 256 KiB of the body right behind the head (partly unread when the server closes).
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&vec![b'x'; 256 * 1024]);
    });
    let mut r = BufReader::new(c);
    let (status, headers, body) = read_h1(&mut r);
    assert_eq!(status, "HTTP/1.1 413 Content Too Large");
    assert_eq!(body, b"content too large\n");
    assert!(
        headers.contains(&("connection".into(), "close".into())),
        "{headers:?}"
    );
    // The server closes without waiting for the other 99.7 MB (the read would time out).
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)
        .expect("closed cleanly, not reset or left open");
    assert!(rest.is_empty());
    writer.join().unwrap();

    // 1000 unread octets: read and dropped, and the connection serves the next request.
    let mut c = connect(s.addr);
    let mut req = b"POST /nope HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\n".to_vec();
    c.write_all(&req).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let (status, headers, _) = read_h1(&mut r);
    assert_eq!(status, "HTTP/1.1 413 Content Too Large");
    assert!(
        !headers.iter().any(|(n, _)| n == "connection"),
        "{headers:?}"
    );
    req = vec![b'x'; 1000];
    req.extend_from_slice(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
    c.write_all(&req).unwrap();
    let (status, _, body) = read_h1(&mut r);
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"hello world\n"[..])
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `Expect: 100-continue` on a request refused by its size (over the buffering limit, or
/// over `max_body`) gets the 413 and no `100 Continue`; one the application takes gets
/// `100 Continue`, then its answer.
fn expect_continue_refused_by_size_gets_413(driver: &str, extra: &[&str]) {
    let (s, dir) = start_with(
        driver,
        extra,
        "expect413",
        "max_buffered_body = 1000\nmax_body = 100000\n",
    );
    for len in [5000, 200000] {
        let mut c = connect(s.addr);
        let req = format!(
            "POST /nope HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: {len}\r\n\r\n"
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        let (status, headers, _) = read_h1(&mut r);
        assert_eq!(status, "HTTP/1.1 413 Content Too Large", "{len}");
        assert!(
            headers.contains(&("connection".into(), "close".into())),
            "{len}"
        );
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(
            rest.is_empty(),
            "{len}: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    let mut c = connect(s.addr);
    c.write_all(
        b"POST /echo HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    r.read_line(&mut line).unwrap();
    c.write_all(b"hi").unwrap();
    let (status, _, body) = read_h1(&mut r);
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"hi"[..])
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn epoll_early_413_closes_unless_little_is_left() {
    early_413_closes_unless_little_is_left("epoll", &[]);
}

#[test]
fn epoll_early_413_closes_unless_little_is_left_app_workers() {
    early_413_closes_unless_little_is_left("epoll", &["--app-workers", "2"]);
}

#[test]
fn uring_early_413_closes_unless_little_is_left() {
    early_413_closes_unless_little_is_left("uring", &[]);
}

#[test]
fn uring_early_413_closes_unless_little_is_left_app_workers() {
    early_413_closes_unless_little_is_left("uring", &["--app-workers", "2"]);
}

#[test]
fn epoll_expect_continue_refused_by_size_gets_413() {
    expect_continue_refused_by_size_gets_413("epoll", &[]);
}

#[test]
fn epoll_expect_continue_refused_by_size_gets_413_app_workers() {
    expect_continue_refused_by_size_gets_413("epoll", &["--app-workers", "2"]);
}

#[test]
fn uring_expect_continue_refused_by_size_gets_413() {
    expect_continue_refused_by_size_gets_413("uring", &[]);
}

#[test]
fn uring_expect_continue_refused_by_size_gets_413_app_workers() {
    expect_continue_refused_by_size_gets_413("uring", &["--app-workers", "2"]);
}

/// An HPACK literal field without indexing, new name (RFC 7541 §6.2.2).
fn literal(block: &mut Vec<u8>, name: &str, value: &[u8]) {
    fn int(b: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            b.push(n as u8);
            return;
        }
        b.push(127);
        n -= 127;
        while n >= 128 {
            b.push((n % 128 + 128) as u8);
            n /= 128;
        }
        b.push(n as u8);
    }
    block.push(0);
    int(block, name.len());
    block.extend_from_slice(name.as_bytes());
    int(block, value.len());
    block.extend_from_slice(value);
}

/// The listener's `max_head_bytes` and `max_headers` hold for HTTP/2 as for HTTP/1.1: the
/// server advertises SETTINGS_MAX_HEADER_LIST_SIZE = `max_head_bytes`, and a request with a
/// longer header list or more fields gets 431 (the connection carries on).
fn head_limits_apply_to_http2(driver: &str, extra: &[&str]) {
    let (s, dir) = start_with(
        driver,
        extra,
        "headlimits",
        "max_head_bytes = 2048\nmax_headers = 5\n",
    );
    let big = vec![b'v'; 3000];
    // HTTP/1.1, for reference.
    let mut c = connect(s.addr);
    let req = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        String::from_utf8_lossy(&big)
    );
    c.write_all(req.as_bytes()).unwrap();
    let (status, _, _) = read_h1(&mut BufReader::new(c));
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");

    let mut c = connect(s.addr);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let mut block = request_block("GET", "/");
    literal(&mut block, "x-big", &big);
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    let mut block = request_block("GET", "/");
    for i in 0..6 {
        literal(&mut block, &format!("x-f{i}"), b"v");
    }
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block));
    let mut block = request_block("GET", "/");
    for i in 0..5 {
        literal(&mut block, &format!("x-f{i}"), b"v");
    }
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &block));
    c.write_all(&out).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut list_size = None;
    let mut dec = ferry_http2::hpack::Decoder::new(4096);
    let mut status: [Option<String>; 3] = [None, None, None];
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "stalled");
        let f = read_frame(&mut r);
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => {
                for p in f.payload.chunks(6) {
                    if p[..2] == [0, 6] {
                        list_size = Some(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                    }
                }
                c.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap();
            }
            HEADERS => {
                let mut st = None;
                dec.decode(&bytes::Bytes::from(f.payload), usize::MAX, |h| {
                    if &h.name[..] == b":status" {
                        st = Some(String::from_utf8_lossy(&h.value).into_owned());
                    }
                })
                .unwrap();
                status[(f.stream as usize - 1) / 2] = st;
            }
            GOAWAY => panic!("GOAWAY {:?}", f.payload),
            _ => {}
        }
    }
    assert_eq!(list_size, Some(2048), "SETTINGS_MAX_HEADER_LIST_SIZE");
    assert_eq!(
        status.map(Option::unwrap),
        ["431".to_string(), "431".to_string(), "200".to_string()]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn epoll_head_limits_apply_to_http2() {
    head_limits_apply_to_http2("epoll", &[]);
}

#[test]
fn uring_head_limits_apply_to_http2_app_workers() {
    head_limits_apply_to_http2("uring", &["--app-workers", "2"]);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` is 400 even with an absolute-form target
/// (which names the host, §3.2.2); HTTP/1.0 may omit it.
fn hostless_absolute_form(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    let mut c = connect(s.addr);
    c.write_all(b"GET http://a/ HTTP/1.1\r\n\r\n").unwrap();
    let mut r = BufReader::new(c);
    let (status, headers, _) = read_h1(&mut r);
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert!(headers.contains(&("connection".into(), "close".into())));
    let mut c = connect(s.addr);
    c.write_all(b"GET http://a/ HTTP/1.0\r\n\r\n").unwrap();
    let (status, _, body) = read_h1(&mut BufReader::new(c));
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"hello world\n"[..])
    );
}

#[test]
fn epoll_hostless_absolute_form() {
    hostless_absolute_form("epoll", &[]);
}

#[test]
fn uring_hostless_absolute_form_app_workers() {
    hostless_absolute_form("uring", &["--app-workers", "2"]);
}
