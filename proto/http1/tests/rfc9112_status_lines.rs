//! Status lines (RFC 9112 §4) and response heads, valid and invalid, byte for byte, read by a
//! `ClientConnection` that sent a GET: fed whole and one byte at a time, with the same result.
use std::sync::Arc;

use bytes::BytesMut;
use ferry_http1::client::Event;
use ferry_http1::{Body, BodyKind, ClientConfig, ClientConnection, Error, HeadError, Method};
use ferry_http1::{Response, Version};
use ferry_proto::{Connection, Instant};

const NOW: Instant = Instant::from_nanos(1_000_000_000);

/// The events of a connection that sent one GET and then read `raw` in pieces of `piece` bytes.
fn read(raw: &[u8], piece: usize) -> Vec<Event> {
    let mut conn = ClientConnection::new(Arc::new(ClientConfig::default()), NOW);
    conn.send_request(
        NOW,
        Method::Get,
        "/",
        &[("host", b"example.com")],
        Body::Empty,
    )
    .unwrap();
    while conn.poll_transmit().is_some() {}
    let mut input = BytesMut::new();
    let mut evs = Vec::new();
    for chunk in raw.chunks(piece) {
        input.extend_from_slice(chunk);
        if conn.handle_input(NOW, &mut input).is_err() {
            break;
        }
    }
    while let Some(ev) = conn.poll_event() {
        evs.push(ev);
    }
    evs
}

/// The final response (after any 1xx) or the error, the same whole and byte by byte.
fn outcome(raw: &[u8]) -> Result<Response, Error> {
    let mut results = [1, raw.len().max(1)].map(|piece| {
        read(raw, piece)
            .into_iter()
            .find_map(|ev| match ev {
                Event::Response(r) => Some(Ok(r)),
                Event::Error { error, .. } => Some(Err(error)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no response or error for {raw:?}"))
    });
    let [whole, bytewise] = &mut results;
    match (&*whole, &*bytewise) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                (
                    a.status(),
                    a.reason(),
                    a.version(),
                    a.headers(),
                    a.body_kind()
                ),
                (
                    b.status(),
                    b.reason(),
                    b.version(),
                    b.headers(),
                    b.body_kind()
                ),
                "{raw:?}"
            );
        }
        (a, b) => assert_eq!(a.as_ref().err(), b.as_ref().err(), "{raw:?}"),
    }
    results[0].clone()
}

#[track_caller]
fn ok(raw: &[u8], status: u16, reason: &str, version: Version) -> Response {
    let r = outcome(raw).unwrap_or_else(|e| panic!("{raw:?}: {e:?}"));
    assert_eq!(
        (r.status(), r.reason(), r.version()),
        (status, reason, version)
    );
    r
}

#[track_caller]
fn err(raw: &[u8], want: Error) {
    assert_eq!(outcome(raw).err(), Some(want), "{raw:?}");
}

#[test]
fn valid_status_lines() {
    // §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
    ok(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        200,
        "OK",
        Version::Http11,
    );
    ok(
        b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        404,
        "Not Found",
        Version::Http10,
    );
    // An empty reason (SP kept), or none at all (accepted, as most clients do).
    ok(b"HTTP/1.1 204 \r\n\r\n", 204, "", Version::Http11);
    ok(b"HTTP/1.1 204\r\n\r\n", 204, "", Version::Http11);
    // reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ); obs-text is not exposed.
    ok(
        b"HTTP/1.1 204 A\tB  c \r\n\r\n",
        204,
        "A\tB  c ",
        Version::Http11,
    );
    ok(
        b"HTTP/1.1 204 Caf\xc3\xa9\r\n\r\n",
        204,
        "",
        Version::Http11,
    );
    // Any three digits from 100 (RFC 9110 §15 defines 1xx-5xx; clients treat unknown codes by
    // class).
    ok(
        b"HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n",
        599,
        "Whatever",
        Version::Http11,
    );
    ok(
        b"HTTP/1.1 999 X\r\nContent-Length: 0\r\n\r\n",
        999,
        "X",
        Version::Http11,
    );
}

#[test]
fn interim_responses_precede_the_final_one() {
    let evs = read(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        usize::MAX,
    );
    let kinds: Vec<_> = evs
        .iter()
        .map(|ev| match ev {
            Event::Informational(r) => format!("info {}", r.status()),
            Event::Response(r) => format!("resp {} {:?}", r.status(), r.body_kind()),
            Event::Data { data, .. } => format!("data {data:?}"),
            Event::End { .. } => "end".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "info 100",
            "info 103",
            "resp 200 Length(2)",
            "data b\"hi\"",
            "end"
        ]
    );
}

#[test]
fn framing_fields_are_read_with_the_head() {
    let r = ok(
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 16:00:00 GMT\r\n\
          Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n",
        200,
        "OK",
        Version::Http11,
    );
    assert_eq!(r.body_kind(), BodyKind::Length(12));
    assert!(r.keep_alive());
    assert_eq!(r.headers().get("server"), Some(&b"nginx/1.22.1"[..]));
    assert_eq!(r.headers().len(), 5);
    let r = ok(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        200,
        "OK",
        Version::Http11,
    );
    assert_eq!(r.body_kind(), BodyKind::Chunked);
    assert!(!r.keep_alive());
    let r = ok(b"HTTP/1.0 200 OK\r\n\r\n", 200, "OK", Version::Http10);
    assert_eq!(r.body_kind(), BodyKind::UntilClose);
}

#[test]
fn invalid_status_lines() {
    let head = |e| Error::InvalidHead(e);
    // HTTP-version = HTTP-name "/" DIGIT "." DIGIT, case-sensitive; only 1.0 and 1.1 here.
    err(b"HTTP/1.2 200 OK\r\n\r\n", head(HeadError::Version));
    err(b"HTTP/2 200 OK\r\n\r\n", head(HeadError::Version));
    err(b"http/1.1 200 OK\r\n\r\n", head(HeadError::Version));
    err(b"ICY 200 OK\r\n\r\n", head(HeadError::Version));
    // Exactly one SP after the version, and status-code = 3DIGIT.
    err(b"HTTP/1.1\t200 OK\r\n\r\n", head(HeadError::Version));
    err(b"HTTP/1.1  200 OK\r\n\r\n", head(HeadError::Status));
    err(b"HTTP/1.1 20 OK\r\n\r\n", head(HeadError::Status));
    err(b"HTTP/1.1 2000 OK\r\n\r\n", head(HeadError::Status));
    err(b"HTTP/1.1 +20 OK\r\n\r\n", head(HeadError::Status));
    // Below 100 is not a status code (RFC 9110 §15); 101 only answers an upgrade.
    err(b"HTTP/1.1 099 Odd\r\n\r\n", head(HeadError::Status));
    err(
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        head(HeadError::Status),
    );
    // Control bytes in the reason; a CR not before LF.
    err(b"HTTP/1.1 200 O\x00K\r\n\r\n", head(HeadError::Status));
    err(b"HTTP/1.1 200 O\x7fK\r\n\r\n", head(HeadError::Status));
    err(b"HTTP/1.1 200 O\rK\r\n\r\n", head(HeadError::Status));
    // §2.2: a bare LF ending any line is rejected (a smuggling vector behind lenient peers).
    err(b"HTTP/1.1 200 OK\n\r\n", Error::BareLineFeed);
    err(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
        Error::BareLineFeed,
    );
    err(b"HTTP/1.1 200 OK\r\n\n", Error::BareLineFeed);
    // §5.1: no whitespace between a field name and the colon; §5.2: obs-fold is rejected.
    err(
        b"HTTP/1.1 200 OK\r\nServer : x\r\n\r\n",
        head(HeadError::HeaderName),
    );
    err(
        b"HTTP/1.1 200 OK\r\nServer: x\r\n y\r\n\r\n",
        head(HeadError::HeaderName),
    );
    // §6.3: Content-Length with Transfer-Encoding, conflicting lengths.
    err(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        Error::ContentLengthWithTransferEncoding,
    );
    err(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        Error::InvalidContentLength,
    );
    err(
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        Error::TransferEncodingInHttp10,
    );
}
