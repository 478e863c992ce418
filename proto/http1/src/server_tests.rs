use super::*;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use ferry_proto::testing::for_each_split;

fn conn() -> ServerConnection {
    ServerConnection::new(Arc::new(ServerConfig::default()), Instant::ZERO)
}

fn conn_with(f: impl FnOnce(&mut ServerConfig)) -> ServerConnection {
    let mut c = ServerConfig::default();
    f(&mut c);
    ServerConnection::new(Arc::new(c), Instant::ZERO)
}

fn feed(c: &mut ServerConnection, bytes: &[u8]) -> Result<BytesMut, Error> {
    let mut b = BytesMut::from(bytes);
    c.handle_input(Instant::ZERO, &mut b).map(|_| b)
}

fn events(c: &mut ServerConnection) -> Vec<Event> {
    core::iter::from_fn(|| c.poll_event()).collect()
}

fn output(c: &mut ServerConnection) -> String {
    let mut v = Vec::new();
    while let Some(b) = c.poll_transmit() {
        v.extend_from_slice(&b);
    }
    String::from_utf8(v).unwrap()
}

/// Answer every request whose body ended with a body naming its id and path.
fn answer_all(c: &mut ServerConnection) -> Vec<Event> {
    let evs = events(c);
    let mut paths = Vec::new();
    for e in &evs {
        match e {
            Event::Request(r) => paths.push((r.id(), String::from(r.target()))),
            Event::End { id } => {
                let p = &paths.iter().find(|(i, _)| i == id).unwrap().1;
                let body = alloc::format!("{}:{}", id.get(), p);
                c.send_response(*id, 200, &[], Body::Full(Bytes::from(body)))
                    .unwrap();
            }
            _ => {}
        }
    }
    evs
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn simple_get_keep_alive() {
    let mut c = conn();
    let rest = feed(&mut c, GET).unwrap();
    assert!(rest.is_empty());
    let evs = answer_all(&mut c);
    assert!(matches!(&evs[0], Event::Request(r) if r.path() == "/a" && r.method() == Method::Get));
    assert!(matches!(evs[1], Event::End { .. }));
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n0:/a"
    );
    assert!(!c.is_closed());
    assert!(c.wants_read());
    assert!(c.is_idle());
}

#[test]
fn pipelined_answers_in_order_even_when_answered_backwards() {
    let mut c = conn();
    let mut raw = Vec::new();
    for p in ["/1", "/2", "/3"] {
        raw.extend_from_slice(alloc::format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    feed(&mut c, &raw).unwrap();
    let ids: Vec<RequestId> = events(&mut c)
        .into_iter()
        .filter_map(|e| {
            if let Event::End { id } = e {
                Some(id)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(ids.len(), 3);
    c.send_response(ids[2], 200, &[], Body::Full("c".into()))
        .unwrap();
    c.send_response(ids[1], 200, &[], Body::Full("b".into()))
        .unwrap();
    assert_eq!(output(&mut c), "");
    c.send_response(ids[0], 200, &[], Body::Full("a".into()))
        .unwrap();
    let out = output(&mut c);
    let a = out.find("\r\n\r\na").unwrap();
    let b = out.find("\r\n\r\nb").unwrap();
    let cc = out.find("\r\n\r\nc").unwrap();
    assert!(a < b && b < cc, "{out}");
    assert_eq!(
        c.send_response(ids[0], 200, &[], Body::Empty),
        Err(SendError::UnknownId)
    );
}

#[test]
fn every_split_point_gives_the_same_requests() {
    let raw = b"POST /u?x=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\nGET /g HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
    for_each_split(raw, Instant::ZERO, conn, |at, mut c, r| {
        r.unwrap();
        let evs = events(&mut c);
        let mut body = Vec::new();
        let mut targets = Vec::new();
        let mut trailers = 0;
        let mut ends = 0;
        for e in evs {
            match e {
                Event::Request(r) => targets.push(String::from(r.target())),
                Event::Data { data, .. } => body.extend_from_slice(&data),
                Event::Trailers { trailers: t, .. } => {
                    assert_eq!(t.get("t"), Some(&b"v"[..]));
                    trailers += 1
                }
                Event::End { .. } => ends += 1,
                Event::Error { error, .. } => panic!("{error} at {at}"),
            }
        }
        assert_eq!(targets, ["/u?x=1", "/g"], "split at {at}");
        assert_eq!(body, b"helloabc", "split at {at}");
        assert_eq!((trailers, ends), (1, 2), "split at {at}");
    });
}

#[test]
fn one_byte_at_a_time() {
    let raw = b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nwxyz";
    let mut c = conn();
    let mut buf = BytesMut::new();
    for &b in raw.iter() {
        buf.extend_from_slice(&[b]);
        c.handle_input(Instant::ZERO, &mut buf).unwrap();
    }
    let evs = events(&mut c);
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
    assert_eq!(body, b"wxyz");
    assert!(matches!(evs.last(), Some(Event::End { .. })));
}

#[test]
fn streaming_chunked_response_with_trailers() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    let _ = events(&mut c);
    let id = RequestId(0);
    c.send_response(id, 200, &[("x-a", b"1")], Body::Chunked)
        .unwrap();
    c.send_data(id, "hello".into(), false).unwrap();
    c.send_data(id, Bytes::new(), false).unwrap();
    c.send_trailers(id, &[("checksum", b"abc")]).unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nchecksum: abc\r\n\r\n"
    );
    assert!(c.is_idle());
}

#[test]
fn length_body_mismatch_is_refused() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    let id = RequestId(0);
    c.send_response(id, 200, &[], Body::Length(3)).unwrap();
    assert_eq!(
        c.send_data(id, "abcd".into(), false),
        Err(SendError::LengthMismatch)
    );
    assert_eq!(
        c.send_data(id, "ab".into(), true),
        Err(SendError::LengthMismatch)
    );
    c.send_data(id, "ab".into(), false).unwrap();
    c.send_data(id, "c".into(), true).unwrap();
    assert!(output(&mut c).ends_with("\r\n\r\nabc"));
}

#[test]
fn head_response_has_length_but_no_body() {
    let mut c = conn();
    feed(&mut c, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Full("hello".into()))
        .unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    );
}

/// RFC 9110 §9.3.2: a HEAD response carries the fields a GET's would, so a chunked one
/// says `transfer-encoding: chunked` (no body, no terminator); to an HTTP/1.0 client that
/// asked for keep-alive it stays open (nothing to delimit).
#[test]
fn head_response_chunked_keeps_its_framing_field() {
    let mut c = conn();
    feed(
        &mut c,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Chunked)
        .unwrap();
    c.send_data(RequestId(0), "dropped".into(), true).unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert!(!c.is_closed());
    c.send_response(RequestId(1), 200, &[], Body::Full("ok".into()))
        .unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    );

    let mut c = conn();
    feed(&mut c, b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Chunked)
        .unwrap();
    c.send_data(RequestId(0), Bytes::new(), true).unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\n\r\n"
    );
    assert!(!c.is_closed());
}

#[test]
fn no_body_statuses() {
    for (status, expect) in [
        (204u16, "HTTP/1.1 204 No Content\r\n\r\n"),
        (304, "HTTP/1.1 304 Not Modified\r\n\r\n"),
    ] {
        let mut c = conn();
        feed(&mut c, GET).unwrap();
        c.send_response(RequestId(0), status, &[], Body::Empty)
            .unwrap();
        assert_eq!(output(&mut c), expect);
    }
}

#[test]
fn http10_close_and_keep_alive() {
    let mut c = conn();
    feed(&mut c, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Full("x".into()))
        .unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx"
    );
    assert!(c.is_closed());

    let mut c = conn();
    feed(&mut c, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Full("x".into()))
        .unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\nx"
    );
    assert!(!c.is_closed());

    // Chunked to an HTTP/1.0 client becomes close-delimited.
    let mut c = conn();
    feed(&mut c, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Chunked)
        .unwrap();
    c.send_data(RequestId(0), "abc".into(), true).unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc"
    );
    assert!(c.is_closed());
}

#[test]
fn connection_close_stops_reading() {
    let mut c = conn();
    let rest = feed(
        &mut c,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /next HTTP/1.1\r\n",
    )
    .unwrap();
    assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n");
    assert!(!c.wants_read());
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    assert!(output(&mut c).contains("connection: close\r\n"));
    assert!(c.is_closed());
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn expect_continue_auto() {
    let mut c = conn();
    feed(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .unwrap();
    // Owed once the application saw the head (the next poll).
    assert_eq!(output(&mut c), "");
    events(&mut c);
    assert_eq!(output(&mut c), "HTTP/1.1 100 Continue\r\n\r\n");
    feed(&mut c, b"abc").unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    );
    assert!(!c.is_closed());
}

#[test]
fn expect_continue_refused_at_its_head_gets_only_the_final_answer() {
    let mut c = conn();
    feed(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9000000\r\n\r\n",
    )
    .unwrap();
    // The application refuses the request as soon as it sees the head.
    let Some(Event::Request(r)) = c.poll_event() else {
        panic!("no request");
    };
    c.send_response(r.id(), 413, &[], Body::Empty).unwrap();
    assert!(events(&mut c).is_empty());
    let out = output(&mut c);
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(!out.contains("100 Continue"), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(c.is_closed());
}

#[test]
fn early_answer_with_a_large_body_left_closes_without_reading_it() {
    let mut c = conn();
    let rest = feed(
        &mut c,
        b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nabc",
    )
    .unwrap();
    assert!(rest.is_empty());
    events(&mut c);
    c.send_response(RequestId(0), 413, &[], Body::Empty)
        .unwrap();
    let out = output(&mut c);
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(out.contains("connection: close\r\n"), "{out}");
    assert!(c.is_closed());
    assert!(!c.wants_read());
    // The rest of the body is not read.
    let rest = feed(&mut c, &[b'x'; 1000]).unwrap();
    assert_eq!(rest.len(), 1000);
}

#[test]
fn early_answer_to_a_chunked_body_closes() {
    let mut c = conn();
    feed(
        &mut c,
        b"POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .unwrap();
    events(&mut c);
    c.send_response(RequestId(0), 404, &[], Body::Empty)
        .unwrap();
    assert!(output(&mut c).contains("connection: close\r\n"));
    assert!(c.is_closed());
}

#[test]
fn early_answer_with_a_small_body_left_reads_and_drops_it() {
    let mut c = conn();
    let len = ServerConfig::default().max_discard_body;
    let head = alloc::format!("POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
    feed(&mut c, head.as_bytes()).unwrap();
    events(&mut c);
    c.send_response(RequestId(0), 404, &[], Body::Empty)
        .unwrap();
    let out = output(&mut c);
    assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
    assert!(!out.contains("connection: close"), "{out}");
    let mut more = alloc::vec![b'x'; len as usize];
    more.extend_from_slice(GET);
    let rest = feed(&mut c, &more).unwrap();
    assert!(rest.is_empty());
    assert!(events(&mut c)
        .iter()
        .any(|e| matches!(e, Event::Request(r) if r.id() == RequestId(1))));
    c.send_response(RequestId(1), 200, &[], Body::Empty)
        .unwrap();
    assert!(output(&mut c).starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(!c.is_closed());
}

#[test]
fn streamed_answer_complete_before_a_large_body_closes_after_it() {
    let mut c = conn();
    feed(
        &mut c,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc",
    )
    .unwrap();
    events(&mut c);
    c.send_response(RequestId(0), 200, &[], Body::Length(2))
        .unwrap();
    assert!(c.wants_read(), "a streaming answer reads on");
    c.send_data(RequestId(0), Bytes::from_static(b"ok"), true)
        .unwrap();
    let out = output(&mut c);
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    // Done with 999 997 octets unread: closed, the rest not read.
    assert!(c.is_closed());
    let rest = feed(&mut c, &[b'x'; 100]).unwrap();
    assert_eq!(rest.len(), 100);
}

#[test]
fn held_continue_waits_for_send_continue() {
    let mut c = conn();
    feed(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .unwrap();
    let Some(Event::Request(r)) = c.poll_event() else {
        panic!("no request");
    };
    c.hold_continue(r.id());
    events(&mut c);
    assert_eq!(output(&mut c), "");
    c.send_continue(r.id()).unwrap();
    assert_eq!(output(&mut c), "HTTP/1.1 100 Continue\r\n\r\n");
}

#[test]
fn streamed_answer_before_the_body_sends_the_continue_first() {
    let mut c = conn();
    feed(
        &mut c,
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .unwrap();
    let Some(Event::Request(r)) = c.poll_event() else {
        panic!("no request");
    };
    c.send_response(r.id(), 200, &[], Body::Length(3)).unwrap();
    let out = output(&mut c);
    assert!(
        out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{out}"
    );
    assert!(!out.contains("connection: close"), "{out}");
    feed(&mut c, b"abc").unwrap();
    for e in events(&mut c) {
        if let Event::Data { id, data } = e {
            c.send_data(id, data, false).unwrap();
        }
    }
    assert_eq!(output(&mut c), "abc");
    assert!(!c.is_closed());
}

#[test]
fn expect_continue_rejected_closes() {
    let mut c = conn_with(|c| c.auto_continue = false);
    feed(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .unwrap();
    assert_eq!(output(&mut c), "");
    c.send_response(RequestId(0), 417, &[], Body::Empty)
        .unwrap();
    let out = output(&mut c);
    assert!(
        out.starts_with("HTTP/1.1 417 Expectation Failed\r\n"),
        "{out}"
    );
    assert!(out.contains("connection: close"));
    assert!(c.is_closed());
}

#[test]
fn expect_continue_manual() {
    let mut c = conn_with(|c| c.auto_continue = false);
    feed(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .unwrap();
    c.send_continue(RequestId(0)).unwrap();
    assert_eq!(c.send_continue(RequestId(0)), Err(SendError::InvalidState));
    assert_eq!(output(&mut c), "HTTP/1.1 100 Continue\r\n\r\n");
}

#[test]
fn upgrade_leaves_remaining_bytes() {
    let mut c = conn();
    let rest =
        feed(&mut c, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello").unwrap();
    assert_eq!(&rest[..], b"\x81\x05hello");
    let evs = events(&mut c);
    assert!(matches!(&evs[0], Event::Request(r) if r.is_upgrade()));
    assert!(!c.wants_read());
    c.send_response(
        RequestId(0),
        101,
        &[("Upgrade", b"websocket"), ("Connection", b"Upgrade")],
        Body::Empty,
    )
    .unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    );
    assert!(c.is_upgraded());
    assert!(!c.is_closed());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn upgrade_declined_continues_http() {
    let mut c = conn();
    let mut b = BytesMut::from(
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    );
    c.handle_input(Instant::ZERO, &mut b).unwrap();
    assert_eq!(events(&mut c).len(), 2);
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    c.handle_input(Instant::ZERO, &mut b).unwrap();
    assert!(b.is_empty());
    assert!(matches!(&events(&mut c)[0], Event::Request(r) if r.target() == "/2"));
}

#[test]
fn connect_tunnel() {
    let mut c = conn();
    feed(
        &mut c,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .unwrap();
    let evs = events(&mut c);
    assert!(matches!(&evs[0], Event::Request(r) if r.target() == "example.com:443"));
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    assert_eq!(output(&mut c), "HTTP/1.1 200 OK\r\n\r\n");
    assert!(c.is_upgraded());
}

#[test]
fn status_101_without_upgrade_is_refused() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    assert_eq!(
        c.send_response(RequestId(0), 101, &[], Body::Empty),
        Err(SendError::InvalidStatus)
    );
    assert_eq!(
        c.send_response(RequestId(0), 99, &[], Body::Empty),
        Err(SendError::InvalidStatus)
    );
    c.send_response(RequestId(0), 103, &[("link", b"</s.css>")], Body::Empty)
        .unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    );
}

#[test]
fn invalid_response_fields_leave_connection_unchanged() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    assert_eq!(
        c.send_response(RequestId(0), 200, &[("a", b"\r\nx: y")], Body::Empty),
        Err(SendError::InvalidHeader)
    );
    assert_eq!(
        c.send_response(RequestId(0), 200, &[("content-length", b"1")], Body::Empty),
        Err(SendError::FramingHeader)
    );
    assert_eq!(output(&mut c), "");
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    );
}

#[test]
fn date_header_from_now() {
    let mut c = conn_with(|c| c.date_origin_unix_nanos = Some(784_111_777_000_000_000));
    let mut b = BytesMut::from(GET);
    c.handle_input(Instant::from_nanos(2_000_000_000), &mut b)
        .unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    assert!(output(&mut c).contains("date: Sun, 06 Nov 1994 08:49:39 GMT\r\n"));
}

#[test]
fn pipelining_limit_is_backpressure() {
    let mut c = conn_with(|c| c.max_pipelined = 2);
    let mut raw = Vec::new();
    for _ in 0..4 {
        raw.extend_from_slice(GET);
    }
    let mut b = BytesMut::from(&raw[..]);
    c.handle_input(Instant::ZERO, &mut b).unwrap();
    assert_eq!(b.len(), 2 * GET.len());
    assert!(!c.wants_read());
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    assert!(c.wants_read());
    c.handle_input(Instant::ZERO, &mut b).unwrap();
    assert_eq!(b.len(), GET.len());
    assert_eq!(c.in_flight(), 2);
}

#[test]
fn header_timeout_answers_408() {
    let mut c = conn();
    feed(&mut c, b"GET / HTTP/1.1\r\nHost").unwrap();
    let t = c.poll_timeout().unwrap();
    assert_eq!(t, Instant::ZERO + Duration::from_secs(30));
    c.handle_timeout(Instant::ZERO + Duration::from_secs(29));
    assert!(!c.is_closed());
    c.handle_timeout(t);
    let out = output(&mut c);
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    assert!(c.is_closed());
    assert!(matches!(
        events(&mut c)[..],
        [Event::Error {
            error: Error::HeaderTimeout,
            ..
        }]
    ));
    assert_eq!(
        c.handle_input(t, &mut BytesMut::from(&b"x"[..])),
        Err(Error::HeaderTimeout)
    );
}

#[test]
fn idle_keep_alive_closes_silently() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    let _ = output(&mut c);
    let t = c.poll_timeout().unwrap();
    assert_eq!(t, Instant::ZERO + Duration::from_secs(75));
    c.handle_timeout(t);
    assert_eq!(output(&mut c), "");
    assert!(c.is_closed());
}

#[test]
fn no_timeout_while_request_outstanding() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn eof_between_requests_answers_then_closes() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    c.handle_eof(Instant::ZERO);
    assert!(!c.is_closed());
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    assert!(output(&mut c).contains("connection: close"));
    assert!(c.is_closed());
}

#[test]
fn eof_mid_body_is_an_error() {
    let mut c = conn();
    feed(
        &mut c,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    )
    .unwrap();
    c.handle_eof(Instant::ZERO);
    let evs = events(&mut c);
    assert!(matches!(
        evs.last(),
        Some(Event::Error {
            error: Error::UnexpectedEof,
            id: Some(_)
        })
    ));
    assert!(output(&mut c).starts_with("HTTP/1.1 400"));
    assert!(c.is_closed());
}

#[test]
fn error_waits_for_earlier_responses() {
    let mut c = conn();
    let mut raw = Vec::from(GET);
    raw.extend_from_slice(
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    let e = feed(&mut c, &raw).unwrap_err();
    assert_eq!(e, Error::InvalidContentLength);
    assert_eq!(output(&mut c), "");
    assert!(!c.is_closed());
    c.send_response(RequestId(0), 200, &[], Body::Full("first".into()))
        .unwrap();
    let out = output(&mut c);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(out.contains("first"));
    assert!(out.contains("HTTP/1.1 400 Bad Request\r\n"));
    assert!(c.is_closed());
    assert_eq!(c.state(), State::Error);
}

#[test]
fn limits_map_to_status_codes() {
    let long_uri = alloc::format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let mut c = conn();
    assert_eq!(
        feed(&mut c, long_uri.as_bytes()).unwrap_err(),
        Error::UriTooLong
    );
    assert!(output(&mut c).starts_with("HTTP/1.1 414 URI Too Long\r\n"));

    // Incomplete request line beyond the limit.
    let mut c = conn();
    assert_eq!(
        feed(&mut c, &long_uri.as_bytes()[..8500]).unwrap_err(),
        Error::UriTooLong
    );

    let big = alloc::format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(40000)
    );
    let mut c = conn();
    assert_eq!(
        feed(&mut c, big.as_bytes()).unwrap_err(),
        Error::HeadTooLarge
    );
    assert!(output(&mut c).starts_with("HTTP/1.1 431 "));

    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..101 {
        many.push_str(&alloc::format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut c = conn();
    assert_eq!(
        feed(&mut c, many.as_bytes()).unwrap_err(),
        Error::TooManyHeaders
    );
    assert!(output(&mut c).starts_with("HTTP/1.1 431 "));

    let mut c = conn_with(|c| c.max_body = 10);
    assert_eq!(
        feed(
            &mut c,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
        )
        .unwrap_err(),
        Error::BodyTooLarge
    );
    assert!(output(&mut c).starts_with("HTTP/1.1 413 "));

    let mut c = conn_with(|c| c.max_body = 10);
    assert_eq!(
        feed(&mut c, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n")
            .unwrap_err(),
        Error::BodyTooLarge
    );
    assert!(output(&mut c).starts_with("HTTP/1.1 413 "));
}

#[test]
fn missing_host_is_400() {
    let mut c = conn();
    assert_eq!(
        feed(&mut c, b"GET / HTTP/1.1\r\n\r\n").unwrap_err(),
        Error::InvalidHost
    );
    let mut c = conn();
    assert_eq!(
        feed(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_err(),
        Error::InvalidHost
    );
    let mut c = conn();
    assert!(feed(&mut c, b"GET / HTTP/1.0\r\n\r\n").is_ok());
}

/// RFC 9112 §3.2: a Host value that is not `uri-host [":" port]` is answered with 400, in
/// HTTP/1.0 too; valid forms (names, IPv4, IPv6 literals, ports, empty) pass.
#[test]
fn invalid_host_value_is_400() {
    for host in [
        &b"a b"[..],
        b"a/b",
        b"user@a",
        b"a\tb",
        b"a\"b",
        b"a<b>",
        b"\xc3\xa9.example",
        b"h?x",
        b"h#x",
        b"h\\x",
        b"\"h\"",
    ] {
        for version in [&b"1.1"[..], b"1.0"] {
            let mut c = conn();
            let mut raw = b"GET / HTTP/".to_vec();
            raw.extend_from_slice(version);
            raw.extend_from_slice(b"\r\nHost: ");
            raw.extend_from_slice(host);
            raw.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                feed(&mut c, &raw).unwrap_err(),
                Error::InvalidHost,
                "{host:?}"
            );
            assert!(output(&mut c).starts_with("HTTP/1.1 400 "));
        }
    }
    for host in [
        &b""[..],
        b"example.com",
        b"example.com:8080",
        b"127.0.0.1:80",
        b"[::1]:8080",
        b"my_host.local",
        b"xn--bcher-kva.example",
    ] {
        let mut c = conn();
        let mut raw = b"GET / HTTP/1.1\r\nHost: ".to_vec();
        raw.extend_from_slice(host);
        raw.extend_from_slice(b"\r\n\r\n");
        assert!(feed(&mut c, &raw).is_ok(), "{host:?}");
    }
    // Optional whitespace around the value is not part of it.
    let mut c = conn();
    assert!(feed(&mut c, b"GET / HTTP/1.1\r\nHost: \t a.example \t\r\n\r\n").is_ok());
}

/// A HEAD response declaring a huge length ends with `end`, without counting it down;
/// the connection goes on with the next request.
#[test]
fn head_response_with_huge_length_ends_at_once() {
    let mut c = conn();
    feed(
        &mut c,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let ids: Vec<RequestId> = core::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            Event::Request(r) => Some(r.id()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    c.send_response(ids[0], 200, &[], Body::Length(1 << 60))
        .unwrap();
    c.send_data(ids[0], Bytes::new(), true).unwrap();
    c.send_response(ids[1], 200, &[], Body::Full(Bytes::from_static(b"ok")))
        .unwrap();
    let out = output(&mut c);
    assert!(
        out.contains("content-length: 1152921504606846976\r\n"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    // A body that is sent keeps its length checked.
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    let id = core::iter::from_fn(|| c.poll_event())
        .find_map(|e| match e {
            Event::Request(r) => Some(r.id()),
            _ => None,
        })
        .unwrap();
    c.send_response(id, 200, &[], Body::Length(5)).unwrap();
    assert_eq!(
        c.send_data(id, Bytes::from_static(b"ab"), true),
        Err(SendError::LengthMismatch)
    );
}

/// The authority of an absolute-form target must hold a valid host too: a proxy makes the
/// forwarded `Host` from it (RFC 9112 §3.2.2).
#[test]
fn invalid_absolute_form_authority_is_400() {
    for bad in [&b"http://a\"b/x"[..], b"http://a<b>/", b"http://u@a{b/"] {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(bad);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut c = conn();
        assert_eq!(
            feed(&mut c, &raw).unwrap_err(),
            Error::InvalidHost,
            "{bad:?}"
        );
    }
    for good in [
        &b"http://u:p@a.example:80/x?y"[..],
        b"http://a",
        b"/x://y",
        b"*",
    ] {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(good);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut c = conn();
        assert!(feed(&mut c, &raw).is_ok(), "{good:?}");
    }
}

#[test]
fn graceful_close_finishes_outstanding() {
    let mut c = conn();
    let mut raw = Vec::from(GET);
    raw.extend_from_slice(GET);
    feed(&mut c, &raw).unwrap();
    c.close();
    assert!(!c.wants_read());
    c.send_response(RequestId(0), 200, &[], Body::Empty)
        .unwrap();
    c.send_response(RequestId(1), 200, &[], Body::Empty)
        .unwrap();
    let out = output(&mut c);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2);
    assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
    assert!(c.is_closed());
}

#[test]
fn large_body_zero_copy_chunks() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    let big = Bytes::from(alloc::vec![7u8; 100_000]);
    c.send_response(RequestId(0), 200, &[], Body::Full(big.clone()))
        .unwrap();
    let head = c.poll_transmit().unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200 OK"));
    let body = c.poll_transmit().unwrap();
    assert_eq!(
        body.as_ptr(),
        big.as_ptr(),
        "body handed over without copying"
    );
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..2000 {
        let mut c = conn();
        let mut buf = BytesMut::new();
        let len = (seed % 200) as usize;
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let alphabet = b"GET /HTP1.0\r\n:abcChunkedTransfer-EncodingContent-Length 0123456789;";
            buf.extend_from_slice(&[alphabet[(seed % alphabet.len() as u64) as usize]]);
        }
        let _ = c.handle_input(Instant::ZERO, &mut buf);
        let _ = events(&mut c);
        let _ = output(&mut c);
        c.handle_eof(Instant::ZERO);
        let _ = output(&mut c);
    }
}

#[test]
fn broken_body_cuts_streamed_response_and_closes() {
    let mut c = conn();
    feed(
        &mut c,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .unwrap();
    c.send_response(RequestId(0), 200, &[], Body::Chunked)
        .unwrap();
    c.send_data(RequestId(0), "abc".into(), false).unwrap();
    assert_eq!(
        feed(&mut c, b"zz\r\n").unwrap_err(),
        Error::InvalidChunkSize
    );
    assert_eq!(
        c.send_data(RequestId(0), "more".into(), false),
        Err(SendError::UnknownId)
    );
    let out = output(&mut c);
    assert!(out.ends_with("3\r\nabc\r\n"), "{out}");
    assert!(c.is_closed());
    assert!(matches!(
        events(&mut c).last(),
        Some(Event::Error {
            id: Some(_),
            error: Error::InvalidChunkSize
        })
    ));
}

/// Fuzz finding: the verdict on an over-long, malformed head must not depend on segmentation.
#[test]
fn limit_verdicts_do_not_depend_on_segmentation() {
    let cases: [(&[u8], usize, usize); 4] = [
        (b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1 x\r\nHost: a\r\n\r\n", 20, 1000),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nBad Name: 1\r\n\r\n", 100, 40),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\nX: aaaaaaaaaaaaaaaaaaaa\r\n\r\n", 100, 50),
        (b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n", 20, 1000),
    ];
    for (raw, line, head) in cases {
        let make = || {
            conn_with(|c| {
                c.max_request_line = line;
                c.max_head_bytes = head;
            })
        };
        let mut whole = make();
        let want = feed(&mut whole, raw).unwrap_err();
        let mut c = make();
        let mut buf = BytesMut::new();
        let mut got = None;
        for &b in raw {
            buf.extend_from_slice(&[b]);
            if let Err(e) = c.handle_input(Instant::ZERO, &mut buf) {
                got = Some(e);
                break;
            }
        }
        assert_eq!(got, Some(want), "{}", String::from_utf8_lossy(raw));
    }
}

/// Fuzz finding: the connection's own error answer to HEAD has no body.
#[test]
fn error_answer_to_head_has_no_body() {
    let mut c = conn();
    feed(
        &mut c,
        b"HEAD /p HTTP/1.0\r\nContent-Length: 168\r\n\r\nabc",
    )
    .unwrap();
    c.handle_eof(Instant::ZERO);
    let out = output(&mut c);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.ends_with("content-length: 12\r\n\r\n"), "{out}");
}

#[test]
fn early_answer_before_the_body_keeps_the_connection() {
    let mut c = conn();
    feed(
        &mut c,
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
    )
    .unwrap();
    let evs = events(&mut c);
    let Some(Event::Request(r)) = evs.first() else {
        panic!("{evs:?}")
    };
    // The application answers before the body arrived (e.g. a proxy relaying an upstream's
    // early response); the body is then read and discarded by the app.
    c.send_response(r.id(), 200, &[], Body::Full(Bytes::from_static(b"early")))
        .unwrap();
    let out = output(&mut c);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("connection: close"), "{out}");
    feed(&mut c, b"0123456789").unwrap();
    let evs = events(&mut c);
    assert!(matches!(evs.last(), Some(Event::End { .. })), "{evs:?}");
    // The connection is still usable for the next request.
    feed(&mut c, GET).unwrap();
    let evs = answer_all(&mut c);
    assert!(matches!(evs.first(), Some(Event::Request(_))), "{evs:?}");
    assert!(output(&mut c).starts_with("HTTP/1.1 200"));
    assert!(!c.is_closed());
}

/// An upstream response head as a proxy gets it: parsed by a `ClientConnection`.
fn upstream_response(raw: &[u8]) -> crate::Response {
    use crate::client::{ClientConnection, Event as CEvent};
    use crate::ClientConfig;
    let mut c = ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO);
    c.send_request(
        Instant::ZERO,
        Method::Get,
        "/",
        &[("host", b"up")],
        Body::Empty,
    )
    .unwrap();
    while c.poll_transmit().is_some() {}
    let mut input = BytesMut::from(raw);
    c.handle_input(Instant::ZERO, &mut input).unwrap();
    loop {
        match c.poll_event() {
            Some(CEvent::Response(r)) => return r,
            Some(_) => {}
            None => panic!("no response parsed"),
        }
    }
}

#[test]
fn forwarded_response_copies_kept_fields_and_checks_extras() {
    let up = upstream_response(
        b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nX-Drop: 1\r\n\
          Server: up\r\nContent-Length: 2\r\n\r\nhi",
    );
    let mut c = conn_with(|c| c.date_origin_unix_nanos = Some(0));
    feed(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let id = match events(&mut c).first() {
        Some(Event::Request(r)) => r.id(),
        other => panic!("{other:?}"),
    };
    // A bad extra field: refused, nothing written.
    let bad: [(&str, &[u8]); 1] = [("x", b"a\r\nInjected: 1")];
    let all = |_: &[u8]| true;
    assert_eq!(
        c.send_forwarded_response(id, &up, None, all, &bad, Body::Empty)
            .unwrap_err(),
        SendError::FramingHeader,
        "the upstream's Content-Length is refused before the extras are looked at"
    );
    let keep =
        |n: &[u8]| !n.eq_ignore_ascii_case(b"x-drop") && !n.eq_ignore_ascii_case(b"content-length");
    assert_eq!(
        c.send_forwarded_response(id, &up, None, keep, &bad, Body::Empty)
            .unwrap_err(),
        SendError::InvalidHeader
    );
    assert_eq!(output(&mut c), "");
    let extra: [(&str, &[u8]); 1] = [("via", b"1.1 p")];
    c.send_forwarded_response(id, &up, None, keep, &extra, Body::Full("hi".into()))
        .unwrap();
    // The upstream's Date is kept (ours is not added), X-Drop and its framing are not.
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nServer: up\r\n\
         via: 1.1 p\r\ncontent-length: 2\r\n\r\nhi"
    );
}

#[test]
fn forwarded_response_extra_writes_what_the_field_list_writes() {
    use crate::{Extra, FieldLines};
    let up = upstream_response(
        b"HTTP/1.1 200 OK\r\nServer:  up \r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi",
    );
    let keep = |n: &[u8]| !n.eq_ignore_ascii_case(b"content-length");
    let via = FieldLines::new(&[("via", "1.1 ferry")]).unwrap();
    let date = FieldLines::new(&[("date", "Tue, 01 Jan 2030 00:00:00 GMT")]).unwrap();
    let mut outs = Vec::new();
    for extra in [false, true] {
        let mut c = conn_with(|c| c.date_origin_unix_nanos = Some(0));
        feed(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let id = match events(&mut c).first() {
            Some(Event::Request(r)) => r.id(),
            other => panic!("{other:?}"),
        };
        if extra {
            let pieces = [
                Extra::Lines(&via),
                Extra::Field("connection", b"close"),
                Extra::Lines(&date),
            ];
            c.send_forwarded_response_extra(id, &up, None, keep, &pieces, Body::Length(2))
        } else {
            let list: [(&str, &[u8]); 3] = [
                ("via", b"1.1 ferry"),
                ("connection", b"close"),
                ("date", b"Tue, 01 Jan 2030 00:00:00 GMT"),
            ];
            c.send_forwarded_response(id, &up, None, keep, &list, Body::Length(2))
        }
        .unwrap();
        c.send_data(id, "hi".into(), true).unwrap();
        outs.push(output(&mut c));
        // `Connection: close` among the extras ends the connection either way.
        assert!(c.is_closed());
    }
    assert_eq!(outs[0], outs[1]);
    // The `date` of the lines counts: the connection adds none of its own.
    assert_eq!(outs[1].matches("date:").count(), 1, "{}", outs[1]);
}

#[test]
fn forwarded_response_connection_close_ends_the_connection() {
    let up = upstream_response(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    let mut c = conn();
    feed(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let id = match events(&mut c).first() {
        Some(Event::Request(r)) => r.id(),
        other => panic!("{other:?}"),
    };
    c.send_forwarded_response(id, &up, Some("No Content"), |_| true, &[], Body::Empty)
        .unwrap();
    let out = output(&mut c);
    assert!(
        out.starts_with("HTTP/1.1 204 No Content\r\nConnection: close\r\n"),
        "{out}"
    );
    assert!(
        c.is_closed(),
        "the forwarded Connection: close ends this connection"
    );
}

#[test]
fn idle_buffers_given_back_and_grown_again() {
    let mut c = conn();
    feed(&mut c, GET).unwrap();
    answer_all(&mut c);
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n0:/a"
    );
    assert!(c.wbuf.capacity() > 0);
    c.release_idle_buffers();
    assert_eq!(c.wbuf.capacity(), 0);
    assert_eq!((c.slots.capacity(), c.events.capacity()), (0, 0));
    // The next request is served as the first was.
    feed(&mut c, GET).unwrap();
    answer_all(&mut c);
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n1:/a"
    );
    assert!(c.is_idle());
    // Output not yet taken stays.
    feed(&mut c, GET).unwrap();
    answer_all(&mut c);
    c.release_idle_buffers();
    assert_eq!(
        output(&mut c),
        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n2:/a"
    );
}
