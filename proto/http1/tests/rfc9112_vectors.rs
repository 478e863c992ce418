//! Byte-level examples from RFC 9112 (and RFC 9110 where they concern the wire format), fed
//! to the server connection whole and one byte at a time.

use std::sync::Arc;

use bytes::BytesMut;
use ferry_http1::{server::Event, BodyKind, Method, ServerConfig, ServerConnection, Version};
use ferry_proto::{Connection, Instant};

fn parse_all(raw: &[u8], piece: usize) -> Vec<Event> {
    let mut c = ServerConnection::new(Arc::new(ServerConfig::default()), Instant::ZERO);
    let mut buf = BytesMut::new();
    for part in raw.chunks(piece) {
        buf.extend_from_slice(part);
        c.handle_input(Instant::ZERO, &mut buf).unwrap();
    }
    assert!(buf.is_empty());
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn both(raw: &[u8], check: impl Fn(&[Event])) {
    check(&parse_all(raw, raw.len()));
    check(&parse_all(raw, 1));
}

fn request(evs: &[Event]) -> &ferry_http1::Request {
    match &evs[0] {
        Event::Request(r) => r,
        e => panic!("not a request: {e:?}"),
    }
}

/// RFC 9112 §3.2.1 origin-form.
#[test]
fn origin_form() {
    both(
        b"GET /where?q=now HTTP/1.1\r\nHost: www.example.org\r\n\r\n",
        |evs| {
            let r = request(evs);
            assert_eq!(
                (r.method(), r.path(), r.query()),
                (Method::Get, "/where", Some("q=now"))
            );
            assert_eq!(r.headers().get("host"), Some(&b"www.example.org"[..]));
        },
    );
}

/// RFC 9112 §3.2.2 absolute-form.
#[test]
fn absolute_form() {
    both(b"GET http://www.example.org/pub/WWW/TheProject.html HTTP/1.1\r\nHost: www.example.org\r\n\r\n", |evs| {
        assert_eq!(request(evs).target(), "http://www.example.org/pub/WWW/TheProject.html");
    });
}

/// RFC 9112 §3.2.3 authority-form.
#[test]
fn authority_form() {
    both(
        b"CONNECT www.example.com:80 HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
        |evs| {
            let r = request(evs);
            assert_eq!(
                (r.method(), r.target()),
                (Method::Connect, "www.example.com:80")
            );
            assert!(r.is_upgrade());
        },
    );
}

/// RFC 9112 §3.2.4 asterisk-form.
#[test]
fn asterisk_form() {
    both(
        b"OPTIONS * HTTP/1.1\r\nHost: www.example.org:8001\r\n\r\n",
        |evs| {
            assert_eq!(
                (request(evs).method(), request(evs).target()),
                (Method::Options, "*")
            );
        },
    );
}

/// RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
#[test]
fn leading_empty_lines_are_ignored() {
    both(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", |evs| {
        assert_eq!(request(evs).target(), "/")
    });
}

/// RFC 9110 §15 / RFC 9112 §9.3: HTTP/1.0 defaults to close, 1.1 to persistent.
#[test]
fn persistence_defaults() {
    both(b"GET / HTTP/1.0\r\n\r\n", |evs| {
        assert_eq!(request(evs).version(), Version::Http10);
        assert!(!request(evs).keep_alive());
    });
    both(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
        |evs| {
            assert!(!request(evs).keep_alive());
        },
    );
}

/// RFC 9112 §7.1 chunked body with an extension and a trailer field (§7.1.2).
#[test]
fn chunked_with_extension_and_trailer() {
    let raw = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: Expires\r\n\r\n\
1a; ieof=0\r\nabcdefghijklmnopqrstuvwxyz\r\n10\r\n1234567890abcdef\r\n0\r\nExpires: Sat, 27 Mar 2004 21:12:00 GMT\r\n\r\n";
    both(raw, |evs| {
        assert_eq!(request(evs).body_kind(), BodyKind::Chunked);
        let body: Vec<u8> = evs
            .iter()
            .filter_map(|e| {
                if let Event::Data { data, .. } = e {
                    Some(data.to_vec())
                } else {
                    None
                }
            })
            .flatten()
            .collect();
        assert_eq!(body, b"abcdefghijklmnopqrstuvwxyz1234567890abcdef");
        let t = evs
            .iter()
            .find_map(|e| {
                if let Event::Trailers { trailers, .. } = e {
                    Some(trailers)
                } else {
                    None
                }
            })
            .unwrap();
        assert_eq!(
            t.get("expires"),
            Some(&b"Sat, 27 Mar 2004 21:12:00 GMT"[..])
        );
        assert!(matches!(evs.last(), Some(Event::End { .. })));
    });
}

/// RFC 9110 §10.1.1: Expect: 100-continue.
#[test]
fn expect_continue_example() {
    let raw = b"PUT /somewhere/fun HTTP/1.1\r\nHost: origin.example.com\r\nContent-Type: video/h264\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
    both(raw, |evs| {
        assert!(request(evs).expects_continue());
        assert_eq!(request(evs).body_kind(), BodyKind::Length(4));
    });
}

/// RFC 9110 §7.8: Upgrade example.
#[test]
fn upgrade_example() {
    both(b"GET /hello HTTP/1.1\r\nHost: www.example.com\r\nConnection: upgrade\r\nUpgrade: websocket, IRC/6.9, RTA/x11\r\n\r\n", |evs| {
        assert!(request(evs).is_upgrade());
        assert!(request(evs).headers().has_token("upgrade", "websocket"));
    });
}
