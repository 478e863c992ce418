//! Request-smuggling defenses (RFC 9112 §6.1, §6.3, §7.1, §2.2, §5): each vector is answered
//! with `400 Bad Request` and `Connection: close`, no request event reaches the application,
//! and nothing after the bad message is parsed.

use std::sync::Arc;

use bytes::BytesMut;
use ferry_http1::{server::Event, Error, HeadError, ServerConfig, ServerConnection};
use ferry_proto::{Connection, Instant};

/// Feed `raw`, expect `want`, a 400 on the wire, a closed connection and no request event.
fn rejects(raw: &[u8], want: Error) {
    let mut c = ServerConnection::new(Arc::new(ServerConfig::default()), Instant::ZERO);
    let mut buf = BytesMut::from(raw);
    let got = c.handle_input(Instant::ZERO, &mut buf);
    assert_eq!(got, Err(want), "input {:?}", String::from_utf8_lossy(raw));
    let mut out = Vec::new();
    while let Some(b) = c.poll_transmit() {
        out.extend_from_slice(&b);
    }
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
    assert!(c.is_closed());
    let mut saw_request = false;
    while let Some(e) = c.poll_event() {
        saw_request |= matches!(e, Event::Request(_));
    }
    // Body errors come after the (valid) head was reported; head errors report no request.
    let body_error = matches!(
        want,
        Error::InvalidChunkSize | Error::InvalidChunkTerminator
    );
    assert_eq!(saw_request, body_error, "request events for {want:?}");
    // A second call returns the stored error; nothing else is parsed.
    assert_eq!(
        c.handle_input(
            Instant::ZERO,
            &mut BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..])
        ),
        Err(want)
    );
}

#[test]
fn content_length_with_transfer_encoding() {
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Error::ContentLengthWithTransferEncoding,
    );
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        Error::ContentLengthWithTransferEncoding,
    );
}

#[test]
fn differing_duplicate_content_length() {
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
        Error::InvalidContentLength,
    );
}

#[test]
fn differing_content_length_list() {
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 5\r\n\r\n",
        Error::InvalidContentLength,
    );
}

#[test]
fn non_numeric_content_length() {
    for v in ["+4", "-1", "4a", "0x4", "4 4", "", "99999999999999999999"] {
        rejects(
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n").as_bytes(),
            Error::InvalidContentLength,
        );
    }
}

#[test]
fn unknown_transfer_coding() {
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        Error::InvalidTransferEncoding,
    );
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
        Error::InvalidTransferEncoding,
    );
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        Error::InvalidTransferEncoding,
    );
}

#[test]
fn chunked_not_final() {
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        Error::InvalidTransferEncoding,
    );
}

#[test]
fn chunked_duplicated() {
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        Error::InvalidTransferEncoding,
    );
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        Error::InvalidTransferEncoding,
    );
}

#[test]
fn empty_transfer_encoding() {
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n",
        Error::InvalidTransferEncoding,
    );
}

#[test]
fn transfer_encoding_in_http10() {
    rejects(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        Error::TransferEncodingInHttp10,
    );
}

#[test]
fn obs_fold() {
    rejects(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: a\r\n b\r\n\r\n",
        Error::InvalidHead(HeadError::HeaderName),
    );
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        Error::InvalidHead(HeadError::HeaderName),
    );
}

#[test]
fn whitespace_before_colon() {
    rejects(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        Error::InvalidHead(HeadError::HeaderName),
    );
    rejects(
        b"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n",
        Error::InvalidHead(HeadError::HeaderName),
    );
}

#[test]
fn bare_lf_line_endings() {
    rejects(b"GET / HTTP/1.1\nHost: x\n\n", Error::BareLineFeed);
    rejects(
        b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
        Error::BareLineFeed,
    );
}

#[test]
fn bare_cr_in_field_value() {
    rejects(
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
        Error::InvalidHead(HeadError::HeaderValue),
    );
}

#[test]
fn nul_in_field_value() {
    rejects(
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n",
        Error::InvalidHead(HeadError::HeaderValue),
    );
}

#[test]
fn invalid_request_line() {
    rejects(
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        Error::InvalidHead(HeadError::Token),
    );
    rejects(
        b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        Error::InvalidHead(HeadError::NewLine),
    );
    rejects(
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        Error::InvalidHead(HeadError::Version),
    );
}

#[test]
fn missing_or_repeated_host() {
    rejects(b"GET / HTTP/1.1\r\n\r\n", Error::InvalidHost);
    rejects(
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        Error::InvalidHost,
    );
}

fn chunked(body: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
}

#[test]
fn invalid_chunk_size() {
    rejects(&chunked("g\r\n"), Error::InvalidChunkSize);
    rejects(&chunked("-5\r\nhello\r\n"), Error::InvalidChunkSize);
    rejects(&chunked("0x5\r\nhello\r\n"), Error::InvalidChunkSize);
    rejects(&chunked("\r\n"), Error::InvalidChunkSize);
}

#[test]
fn chunk_size_overflow() {
    rejects(&chunked("1ffffffffffffffff\r\n"), Error::InvalidChunkSize);
    rejects(
        &chunked("00000000000000000001\r\n"),
        Error::InvalidChunkSize,
    );
}

#[test]
fn chunk_size_whitespace_without_extension() {
    rejects(
        &chunked("5 \r\nhello\r\n0\r\n\r\n"),
        Error::InvalidChunkSize,
    );
}

#[test]
fn chunk_size_bare_lf() {
    rejects(&chunked("5\nhello\r\n0\r\n\r\n"), Error::InvalidChunkSize);
    rejects(
        &chunked("5;ext\nhello\r\n0\r\n\r\n"),
        Error::InvalidChunkSize,
    );
}

#[test]
fn chunk_data_overrun() {
    rejects(
        &chunked("3\r\nhello\r\n0\r\n\r\n"),
        Error::InvalidChunkTerminator,
    );
    rejects(
        &chunked("5\r\nhello\n0\r\n\r\n"),
        Error::InvalidChunkTerminator,
    );
}

#[test]
fn smuggled_request_after_valid_one_is_not_parsed() {
    let raw = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut c = ServerConnection::new(Arc::new(ServerConfig::default()), Instant::ZERO);
    let mut buf = BytesMut::from(&raw[..]);
    assert_eq!(
        c.handle_input(Instant::ZERO, &mut buf),
        Err(Error::ContentLengthWithTransferEncoding)
    );
    let mut targets = Vec::new();
    let mut ids = Vec::new();
    while let Some(e) = c.poll_event() {
        if let Event::Request(r) = e {
            targets.push(r.target().to_string());
            ids.push(r.id());
        }
    }
    assert_eq!(targets, ["/ok"]);
    c.send_response(ids[0], 200, &[], ferry_http1::Body::Full("ok".into()))
        .unwrap();
    let mut out = Vec::new();
    while let Some(b) = c.poll_transmit() {
        out.extend_from_slice(&b);
    }
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(out.matches("HTTP/1.1 ").count(), 2, "{out}");
    assert!(out.contains("HTTP/1.1 400 Bad Request"));
    assert!(c.is_closed());
}
