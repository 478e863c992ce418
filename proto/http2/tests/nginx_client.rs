//! Our `ClientConnection` against a real nginx (h2c: `listen ... http2`) started by the test on
//! a loopback ephemeral port: many concurrent streams, a 1 MB static file (our receive windows
//! and WINDOW_UPDATEs), a 1 MB upload (nginx's windows), HEAD and 404.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_http2::{
    Body, ClientConnection, Config, Event, Reason, RequestHead, SendError, StreamId,
};
use ferry_proto::{Connection, Instant};

#[path = "../../../tests/support/nginx.rs"]
mod support;
use support::Nginx;

/// nginx speaking h2c (`listen … http2`): a 1 MB static file, `/hello` and `/upload`.
fn start_nginx() -> Nginx {
    Nginx::start(
        "h2",
        |port, d| {
            format!(
                "    client_max_body_size 10m;\n    server {{\n        \
                 listen 127.0.0.1:{port} http2;\n        root {d}/html;\n        \
                 location = /hello {{ return 200 \"hello from nginx\\n\"; }}\n        \
                 location = /upload {{ client_body_buffer_size 2m; return 200 \"uploaded\\n\"; }}\n    }}"
            )
        },
        |dir| {
            std::fs::create_dir_all(dir.join("html")).unwrap();
            let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.join("html/big.bin"), &big).unwrap();
        },
    )
}

#[derive(Default, Debug)]
struct Got {
    status: HashMap<StreamId, u16>,
    bodies: HashMap<StreamId, Vec<u8>>,
    ended: Vec<StreamId>,
    reset_after_end: Vec<StreamId>,
}

/// Pump until `want` streams ended; `uploads` are fed as the send queue drains.
fn run(
    c: &mut ClientConnection,
    sock: &mut TcpStream,
    want: usize,
    uploads: &mut HashMap<StreamId, VecDeque<Bytes>>,
) -> Got {
    let start = std::time::Instant::now();
    let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
    let feed = |c: &mut ClientConnection, uploads: &mut HashMap<StreamId, VecDeque<Bytes>>| {
        for (id, q) in uploads.iter_mut() {
            while let Some(p) = q.pop_front() {
                if c.send_data(*id, p.clone(), q.is_empty()) == Err(SendError::BufferFull) {
                    q.push_front(p);
                    break;
                }
            }
        }
        uploads.retain(|_, q| !q.is_empty());
    };
    feed(c, uploads);
    let mut got = Got::default();
    let mut input = BytesMut::new();
    let mut buf = vec![0u8; 1 << 16];
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    loop {
        while let Some(ev) = c.poll_event() {
            match ev {
                Event::Response { id, response } => {
                    got.status.insert(id, response.status());
                }
                Event::Data { id, data } => {
                    got.bodies.entry(id).or_default().extend_from_slice(&data)
                }
                Event::End { id } => got.ended.push(id),
                Event::SendReady { .. } => feed(c, uploads),
                // RFC 9113 §8.1: a server may answer before reading the whole request body and
                // then stop it with RST_STREAM(NO_ERROR) (nginx does, for /upload).
                Event::Reset {
                    id,
                    reason: Reason::NO_ERROR,
                    remote: true,
                } if got.ended.contains(&id) => {
                    uploads.remove(&id);
                    got.reset_after_end.push(id);
                }
                Event::Reset { .. } | Event::Error { .. } => panic!("{ev:?}"),
                _ => {}
            }
        }
        while let Some(b) = c.poll_transmit() {
            sock.write_all(&b).unwrap();
        }
        if got.ended.len() >= want {
            return got;
        }
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "nginx closed the connection");
        input.extend_from_slice(&buf[..n]);
        c.handle_input(now(), &mut input).unwrap();
    }
}

#[test]
fn client_against_nginx_h2c() {
    let nginx = start_nginx();
    let mut sock = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let mut c = ClientConnection::new(Arc::new(Config::default()), Instant::ZERO);
    let authority = format!("127.0.0.1:{}", nginx.port);
    let get = |c: &mut ClientConnection, path: &str| {
        c.send_request(
            &RequestHead::new("GET", "http", &authority, path),
            Body::Empty,
        )
        .unwrap()
    };
    let hellos: Vec<StreamId> = (0..40).map(|_| get(&mut c, "/hello")).collect();
    let big = get(&mut c, "/big.bin");
    let missing = get(&mut c, "/missing");
    let head = c
        .send_request(
            &RequestHead::new("HEAD", "http", &authority, "/big.bin"),
            Body::Empty,
        )
        .unwrap();
    let upload = c
        .send_request(
            &RequestHead::new("POST", "http", &authority, "/upload")
                .fields(&[("content-length", b"1000000")]),
            Body::Streaming,
        )
        .unwrap();
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 7) as u8).collect();
    let mut uploads = HashMap::new();
    uploads.insert(
        upload,
        body.chunks(64 * 1024)
            .map(Bytes::copy_from_slice)
            .collect::<VecDeque<_>>(),
    );
    let got = run(&mut c, &mut sock, 44, &mut uploads);
    for id in &hellos {
        assert_eq!(got.status[id], 200);
        assert_eq!(got.bodies[id], b"hello from nginx\n");
    }
    assert_eq!(got.status[&big], 200);
    let expected: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert!(got.bodies[&big] == expected, "big.bin differs");
    assert_eq!(got.status[&missing], 404);
    assert_eq!(got.status[&head], 200);
    assert!(!got.bodies.contains_key(&head));
    assert_eq!(got.status[&upload], 200);
    assert_eq!(got.bodies[&upload], b"uploaded\n");
    c.close();
    while let Some(b) = c.poll_transmit() {
        sock.write_all(&b).unwrap();
    }
    assert!(c.is_closed());
}
