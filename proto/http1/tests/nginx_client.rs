//! `ClientConnection` against a real nginx started by the test on a loopback ephemeral port:
//! keep-alive, pipelining, chunked (gzip) responses, large bodies, HEAD, 404, and nginx's
//! `keepalive_requests` close honoured by the reuse rules.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_http1::{client::Event, Body, ClientConfig, ClientConnection, Method, RequestId};
use ferry_proto::{Connection, Instant};

#[path = "../../../tests/support/nginx.rs"]
mod support;
use support::Nginx;

/// nginx serving a 1 MB binary, a gzip-able text file and `/hello`, closing each connection
/// after 5 requests (`keepalive_requests 5`).
fn start_nginx() -> Nginx {
    Nginx::start(
        "h1",
        |port, d| {
            format!(
                "    keepalive_requests 5;\n    gzip on;\n    gzip_types text/plain;\n    \
                 gzip_min_length 0;\n    server {{\n        listen 127.0.0.1:{port};\n        \
                 root {d}/html;\n        location = /hello {{ return 200 \"hello from nginx\\n\"; }}\n    }}"
            )
        },
        |dir| {
            std::fs::create_dir_all(dir.join("html")).unwrap();
            let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.join("html/big.bin"), &big).unwrap();
            std::fs::write(dir.join("html/text.txt"), "line of text\n".repeat(2000)).unwrap();
        },
    )
}

/// What one response looked like.
#[derive(Debug, Default)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

/// A blocking pump: write transmits, read until `want` responses ended.
fn run(conn: &mut ClientConnection, sock: &mut TcpStream, want: usize) -> Vec<Got> {
    let start = std::time::Instant::now();
    let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
    let mut input = BytesMut::new();
    let mut buf = vec![0u8; 65536];
    let mut got: Vec<Got> = Vec::new();
    let mut ended = 0;
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    loop {
        while let Some(b) = conn.poll_transmit() {
            sock.write_all(&b).unwrap();
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Response(r) => got.push(Got {
                    status: r.status(),
                    headers: r
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.to_ascii_lowercase(),
                                String::from_utf8_lossy(v).into_owned(),
                            )
                        })
                        .collect(),
                    body: Vec::new(),
                    keep_alive: r.keep_alive(),
                }),
                Event::Data { data, .. } => got.last_mut().unwrap().body.extend_from_slice(&data),
                Event::End { .. } => ended += 1,
                Event::Error { error, .. } => panic!("client error: {error}"),
                _ => {}
            }
        }
        if ended == want {
            return got;
        }
        let n = sock.read(&mut buf).unwrap();
        if n == 0 {
            conn.handle_eof(now());
        } else {
            input.extend_from_slice(&buf[..n]);
            conn.handle_input(now(), &mut input).unwrap();
        }
    }
}

fn client() -> ClientConnection {
    ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO)
}

fn header<'a>(g: &'a Got, name: &str) -> Option<&'a str> {
    g.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn keep_alive_and_pipelining_against_nginx() {
    let nginx = start_nginx();
    let mut sock = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let mut c = client();
    let host: &[u8] = b"127.0.0.1";
    // Three pipelined requests in one write.
    for path in ["/hello", "/missing", "/hello"] {
        c.send_request(
            Instant::ZERO,
            Method::Get,
            path,
            &[("Host", host)],
            Body::Empty,
        )
        .unwrap();
    }
    let got = run(&mut c, &mut sock, 3);
    assert_eq!(
        got.iter().map(|g| g.status).collect::<Vec<_>>(),
        [200, 404, 200]
    );
    assert_eq!(got[0].body, b"hello from nginx\n");
    assert_eq!(got[2].body, b"hello from nginx\n");
    assert!(got.iter().all(|g| g.keep_alive));
    assert!(c.is_reusable());

    // HEAD has a Content-Length but no body.
    c.send_request(
        Instant::ZERO,
        Method::Head,
        "/big.bin",
        &[("Host", host)],
        Body::Empty,
    )
    .unwrap();
    let got = run(&mut c, &mut sock, 1);
    assert_eq!(header(&got[0], "content-length"), Some("1000000"));
    assert!(got[0].body.is_empty());

    // The fifth request reaches nginx's keepalive_requests: it answers with Connection: close.
    c.send_request(
        Instant::ZERO,
        Method::Get,
        "/big.bin",
        &[("Host", host)],
        Body::Empty,
    )
    .unwrap();
    let got = run(&mut c, &mut sock, 1);
    let expect: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(got[0].body.len(), expect.len());
    assert!(got[0].body == expect);
    assert!(!got[0].keep_alive);
    assert!(!c.can_send_request());
    assert!(!c.is_reusable());
}

#[test]
fn chunked_gzip_response_from_nginx() {
    let nginx = start_nginx();
    let mut sock = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let mut c = client();
    let id: RequestId = c
        .send_request(
            Instant::ZERO,
            Method::Get,
            "/text.txt",
            &[("Host", b"127.0.0.1"), ("Accept-Encoding", b"gzip")],
            Body::Empty,
        )
        .unwrap();
    let _ = id;
    let got = run(&mut c, &mut sock, 1);
    assert_eq!(got[0].status, 200);
    assert_eq!(header(&got[0], "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&got[0], "content-encoding"), Some("gzip"));
    assert!(!got[0].body.is_empty() && got[0].body.len() < 26_000);
    assert_eq!(&got[0].body[..2], &[0x1f, 0x8b], "gzip magic");
    // The connection is reusable after a chunked response.
    c.send_request(
        Instant::ZERO,
        Method::Get,
        "/hello",
        &[("Host", b"127.0.0.1")],
        Body::Empty,
    )
    .unwrap();
    let got = run(&mut c, &mut sock, 1);
    assert_eq!(got[0].body, b"hello from nginx\n");
}

#[test]
fn post_with_body_to_nginx() {
    let nginx = start_nginx();
    let mut sock = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let mut c = client();
    // nginx answers POST to a static file with 405 after reading the body; the connection
    // stays usable only if our framing was right.
    c.send_request(
        Instant::ZERO,
        Method::Post,
        "/text.txt",
        &[("Host", b"127.0.0.1")],
        Body::Full(Bytes::from_static(b"x=1")),
    )
    .unwrap();
    let id = c
        .send_request(
            Instant::ZERO,
            Method::Put,
            "/text.txt",
            &[("Host", b"127.0.0.1")],
            Body::Chunked,
        )
        .unwrap();
    c.send_data(Instant::ZERO, id, Bytes::from_static(b"hello"), false)
        .unwrap();
    c.send_data(Instant::ZERO, id, Bytes::from_static(b" world"), true)
        .unwrap();
    c.send_request(
        Instant::ZERO,
        Method::Get,
        "/hello",
        &[("Host", b"127.0.0.1")],
        Body::Empty,
    )
    .unwrap();
    let got = run(&mut c, &mut sock, 3);
    assert_eq!(got[0].status, 405);
    assert_eq!(got[1].status, 405);
    assert_eq!(got[2].status, 200);
    assert_eq!(got[2].body, b"hello from nginx\n");
}
