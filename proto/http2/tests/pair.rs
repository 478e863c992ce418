//! Our client against our server through `ferry_proto::testing::Pair`, with the byte streams
//! delivered one byte at a time, in 7-byte pieces and whole: many concurrent streams, large
//! bodies both ways under flow control, trailers, server push, priorities, graceful shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_http2::{
    Body, ClientConnection, Config, Event, Priority, Reason, RequestHead, SendError,
    ServerConnection, StreamId,
};
use ferry_proto::testing::Pair;
use ferry_proto::{Connection, Instant, State};

fn body(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[derive(Default)]
struct ServerApp {
    routes: HashMap<StreamId, String>,
    trailers: HashMap<StreamId, Vec<(String, Vec<u8>)>>,
    pending: HashMap<StreamId, Vec<Bytes>>,
    pushes: Vec<StreamId>,
    ended: std::collections::HashSet<StreamId>,
}

impl ServerApp {
    fn on_event(&mut self, s: &mut ServerConnection, ev: Event) {
        match ev {
            Event::Request { id, request } => {
                let path = request.path().to_string();
                if path == "/echo" {
                    s.send_response(id, 200, &[("x-route", b"echo")], Body::Streaming)
                        .unwrap();
                }
                if path == "/push" {
                    let p = s.push_promise(id, "http", "localhost", "/pushed.css", &[]);
                    if let Ok(p) = p {
                        self.pushes.push(p);
                        s.send_response(
                            p,
                            200,
                            &[("content-type", b"text/css")],
                            Body::Full(Bytes::from_static(b"body{}")),
                        )
                        .unwrap();
                    }
                }
                self.routes.insert(id, path);
            }
            Event::Data { id, data }
                if self.routes.get(&id).map(String::as_str) == Some("/echo") =>
            {
                let q = self.pending.entry(id).or_default();
                if !q.is_empty()
                    || s.send_data(id, data.clone(), false) == Err(SendError::BufferFull)
                {
                    q.push(data);
                }
            }
            Event::SendReady { id } => self.flush(s, id),
            Event::Trailers { id, trailers } => {
                self.trailers.insert(
                    id,
                    trailers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_vec()))
                        .collect(),
                );
            }
            Event::End { id } => match self.routes.get(&id).map(String::as_str) {
                Some("/echo") => {
                    self.ended.insert(id);
                    self.flush(s, id)
                }
                Some("/") | Some("/push") => {
                    s.send_response(
                        id,
                        200,
                        &[("content-type", b"text/plain")],
                        Body::Full(Bytes::from_static(b"hello world\n")),
                    )
                    .unwrap();
                }
                _ => s.send_response(id, 404, &[], Body::Empty).unwrap(),
            },
            _ => {}
        }
    }

    fn flush(&mut self, s: &mut ServerConnection, id: StreamId) {
        let q = self.pending.entry(id).or_default();
        while !q.is_empty() {
            if s.send_data(id, q[0].clone(), false).is_err() {
                return;
            }
            q.remove(0);
        }
        // Finished only once the request ended (the End event calls flush too).
        if !self.ended.remove(&id) {
            return;
        }
        if let Some(t) = self.trailers.remove(&id) {
            let pairs: Vec<(&str, &[u8])> = t.iter().map(|(n, v)| (n.as_str(), &v[..])).collect();
            s.send_trailers(id, &pairs).unwrap();
        } else {
            s.send_data(id, Bytes::new(), true).unwrap();
        }
        self.routes.remove(&id);
    }
}

type Upload = (
    std::collections::VecDeque<Bytes>,
    Vec<(&'static str, &'static [u8])>,
);

#[derive(Default, Debug)]
struct ClientView {
    status: HashMap<StreamId, u16>,
    bodies: HashMap<StreamId, Vec<u8>>,
    trailers: HashMap<StreamId, Vec<(String, Vec<u8>)>>,
    ended: Vec<StreamId>,
    promised: Vec<(StreamId, StreamId, String)>,
    resets: Vec<(StreamId, Reason)>,
    /// Request bodies still to send (pieces, then trailers), pushed as the queue drains.
    uploads: HashMap<StreamId, Upload>,
}

impl ClientView {
    fn pump(&mut self, c: &mut ClientConnection, id: StreamId) {
        let Some((pieces, trailers)) = self.uploads.get_mut(&id) else {
            return;
        };
        while let Some(b) = pieces.pop_front() {
            match c.send_data(id, b.clone(), false) {
                Ok(()) => {}
                Err(SendError::BufferFull) => {
                    pieces.push_front(b);
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
        c.send_trailers(id, trailers).unwrap();
        self.uploads.remove(&id);
    }

    fn on_event(&mut self, c: &mut ClientConnection, ev: Event) {
        match ev {
            Event::SendReady { id } => self.pump(c, id),
            Event::Response { id, response } => {
                self.status.insert(id, response.status());
            }
            Event::Data { id, data } => self.bodies.entry(id).or_default().extend_from_slice(&data),
            Event::Trailers { id, trailers } => {
                self.trailers.insert(
                    id,
                    trailers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_vec()))
                        .collect(),
                );
            }
            Event::End { id } => self.ended.push(id),
            Event::PushPromise {
                id,
                promised,
                request,
            } => self
                .promised
                .push((id, promised, request.path().to_string())),
            Event::Reset { id, reason, .. } => self.resets.push((id, reason)),
            _ => {}
        }
    }
}

fn pair(max_chunk: usize, config: Config) -> Pair<ClientConnection, ServerConnection> {
    let config = Arc::new(config);
    Pair::new(
        ClientConnection::new(config.clone(), Instant::ZERO),
        ServerConnection::new(config, Instant::ZERO),
    )
    .with_max_chunk(max_chunk)
}

fn drive(
    p: &mut Pair<ClientConnection, ServerConnection>,
    server: &mut ServerApp,
    client: &mut ClientView,
) {
    p.drive_with(|c, e| client.on_event(c, e), |s, e| server.on_event(s, e))
        .unwrap();
}

/// 30 GETs, two echoes (one with trailers, one streamed in pieces), all concurrent.
fn exchange(max_chunk: usize, big: usize, config: Config) {
    let mut p = pair(max_chunk, config);
    let mut server = ServerApp::default();
    let mut client = ClientView::default();
    let gets: Vec<StreamId> = (0..30)
        .map(|_| {
            p.client
                .send_request(
                    &RequestHead::new("GET", "http", "localhost", "/"),
                    Body::Empty,
                )
                .unwrap()
        })
        .collect();
    let b1 = body(big, 1);
    let b2 = body(big / 2 + 17, 2);
    let e1 = p
        .client
        .send_request(
            &RequestHead::new("POST", "http", "localhost", "/echo"),
            Body::Full(b1.clone()),
        )
        .unwrap();
    let e2 = p
        .client
        .send_request(
            &RequestHead::new("PUT", "http", "localhost", "/echo"),
            Body::Streaming,
        )
        .unwrap();
    let pieces = b2.chunks(10_000).map(Bytes::copy_from_slice).collect();
    client.uploads.insert(e2, (pieces, vec![("x-sum", b"42")]));
    client.pump(&mut p.client, e2);
    let missing = p
        .client
        .send_request(
            &RequestHead::new("GET", "http", "localhost", "/missing"),
            Body::Empty,
        )
        .unwrap();
    drive(&mut p, &mut server, &mut client);
    for id in &gets {
        assert_eq!(client.status.get(id), Some(&200), "stream {id}");
        assert_eq!(
            client.bodies.get(id).map(Vec::as_slice),
            Some(&b"hello world\n"[..])
        );
        assert!(client.ended.contains(id));
    }
    assert_eq!(client.status.get(&missing), Some(&404));
    assert!(
        client.bodies.get(&e1).map(Vec::as_slice) == Some(&b1[..]),
        "echo 1 differs"
    );
    assert!(
        client.bodies.get(&e2).map(Vec::as_slice) == Some(&b2[..]),
        "echo 2 differs"
    );
    assert_eq!(
        client.trailers.get(&e2),
        Some(&vec![("x-sum".to_string(), b"42".to_vec())])
    );
    assert!(client.ended.contains(&e1) && client.ended.contains(&e2));
    assert!(client.resets.is_empty(), "{:?}", client.resets);
    assert_eq!(p.client.open_streams(), 0);
    assert_eq!(p.server.open_streams(), 0);
    assert!(p.client.error().is_none() && p.server.error().is_none());
}

#[test]
fn exchange_one_byte_at_a_time() {
    exchange(1, 100_000, Config::default());
}

#[test]
fn exchange_seven_byte_pieces() {
    exchange(7, 300_000, Config::default());
}

#[test]
fn exchange_whole_buffers() {
    exchange(usize::MAX, 3_000_000, Config::default());
}

#[test]
fn exchange_with_small_windows_needs_many_window_updates() {
    let mut c = Config::default();
    c.initial_stream_window = 65_535;
    c.initial_connection_window = 65_535;
    c.max_send_buffer = 64 * 1024;
    exchange(usize::MAX, 2_000_000, c);
    let mut c = Config::default();
    c.initial_stream_window = 1000;
    c.initial_connection_window = 70_000;
    exchange(7, 50_000, c);
}

#[test]
fn many_concurrent_streams_up_to_the_limit() {
    let mut c = Config::default();
    c.max_concurrent_streams = 50;
    let mut p = pair(usize::MAX, c);
    let mut server = ServerApp::default();
    let mut client = ClientView::default();
    // Learn the server's limit first.
    drive(&mut p, &mut server, &mut client);
    let mut ids = Vec::new();
    while p.client.can_send_request() {
        ids.push(
            p.client
                .send_request(
                    &RequestHead::new("GET", "http", "localhost", "/"),
                    Body::Empty,
                )
                .unwrap(),
        );
    }
    assert_eq!(ids.len(), 50);
    assert_eq!(
        p.client.send_request(
            &RequestHead::new("GET", "http", "localhost", "/"),
            Body::Empty
        ),
        Err(SendError::ConcurrencyLimit)
    );
    drive(&mut p, &mut server, &mut client);
    assert_eq!(client.ended.len(), 50);
    // Capacity is back.
    for _ in 0..50 {
        ids.push(
            p.client
                .send_request(
                    &RequestHead::new("GET", "http", "localhost", "/"),
                    Body::Empty,
                )
                .unwrap(),
        );
    }
    drive(&mut p, &mut server, &mut client);
    assert_eq!(client.ended.len(), 100);
}

#[test]
fn server_push_is_delivered_and_can_be_refused() {
    for chunk in [1, 7, usize::MAX] {
        let mut p = pair(chunk, Config::default());
        let mut server = ServerApp::default();
        let mut client = ClientView::default();
        drive(&mut p, &mut server, &mut client);
        let id = p
            .client
            .send_request(
                &RequestHead::new("GET", "http", "localhost", "/push"),
                Body::Empty,
            )
            .unwrap();
        drive(&mut p, &mut server, &mut client);
        assert_eq!(client.promised.len(), 1);
        let (assoc, promised, path) = client.promised[0].clone();
        assert_eq!((assoc, path.as_str()), (id, "/pushed.css"));
        assert_eq!(client.status.get(&promised), Some(&200));
        assert_eq!(
            client.bodies.get(&promised).map(Vec::as_slice),
            Some(&b"body{}"[..])
        );
        assert!(client.ended.contains(&promised) && client.ended.contains(&id));
    }
    // ENABLE_PUSH = 0: the server may not push.
    let mut c = Config::default();
    c.enable_push = false;
    let config = Arc::new(c);
    let mut p = Pair::new(
        ClientConnection::new(config, Instant::ZERO),
        ServerConnection::new(Arc::new(Config::default()), Instant::ZERO),
    );
    let mut server = ServerApp::default();
    let mut client = ClientView::default();
    drive(&mut p, &mut server, &mut client);
    let id = p
        .client
        .send_request(
            &RequestHead::new("GET", "http", "localhost", "/push"),
            Body::Empty,
        )
        .unwrap();
    drive(&mut p, &mut server, &mut client);
    assert!(server.pushes.is_empty() && client.promised.is_empty());
    assert_eq!(client.status.get(&id), Some(&200));
}

fn data_order(p: &mut Pair<ClientConnection, ServerConnection>) -> Vec<StreamId> {
    let mut order = Vec::new();
    p.drive_with(
        |_, e| {
            if let Event::Data { id, .. } = &e {
                if order.last() != Some(id) {
                    order.push(*id);
                }
            }
        },
        |_, _| {},
    )
    .unwrap();
    order
}

#[test]
fn priorities_schedule_urgent_streams_first() {
    let mut p = pair(usize::MAX, Config::default());
    p.drive().unwrap();
    let low = p
        .client
        .send_request(
            &RequestHead::new("GET", "http", "localhost", "/low").priority(Priority {
                urgency: 6,
                incremental: false,
            }),
            Body::Empty,
        )
        .unwrap();
    let high = p
        .client
        .send_request(
            &RequestHead::new("GET", "http", "localhost", "/high").priority(Priority {
                urgency: 0,
                incremental: false,
            }),
            Body::Empty,
        )
        .unwrap();
    let (_, server_events) = p.drive().unwrap();
    let prios: Vec<Priority> = server_events
        .iter()
        .filter_map(|e| {
            if let Event::Request { request, .. } = e {
                Some(request.priority())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        prios,
        [
            Priority {
                urgency: 6,
                incremental: false
            },
            Priority {
                urgency: 0,
                incremental: false
            }
        ]
    );
    // Both answers queued at once (larger than one flush), the low one first.
    p.server
        .send_response(low, 200, &[], Body::Full(body(600_000, 3)))
        .unwrap();
    p.server
        .send_response(high, 200, &[], Body::Full(body(600_000, 4)))
        .unwrap();
    assert_eq!(
        data_order(&mut p),
        [high, low],
        "urgent stream first, non-incremental streams one at a time"
    );

    // PRIORITY_UPDATE (RFC 9218 §7) re-prioritizes a waiting request.
    let a = p
        .client
        .send_request(
            &RequestHead::new("GET", "http", "localhost", "/a"),
            Body::Empty,
        )
        .unwrap();
    let b = p
        .client
        .send_request(
            &RequestHead::new("GET", "http", "localhost", "/b"),
            Body::Empty,
        )
        .unwrap();
    p.drive().unwrap();
    p.client
        .set_priority(
            b,
            Priority {
                urgency: 1,
                incremental: false,
            },
        )
        .unwrap();
    p.drive().unwrap();
    p.server
        .send_response(a, 200, &[], Body::Full(body(600_000, 5)))
        .unwrap();
    p.server
        .send_response(b, 200, &[], Body::Full(body(600_000, 6)))
        .unwrap();
    assert_eq!(data_order(&mut p), [b, a]);
    assert_eq!(
        p.client.set_priority(a, Priority::default()),
        Err(SendError::UnknownStream)
    );
}

#[test]
fn graceful_shutdown_is_two_phase() {
    let mut p = pair(usize::MAX, Config::default());
    let mut server = ServerApp::default();
    let mut client = ClientView::default();
    let id = p
        .client
        .send_request(
            &RequestHead::new("POST", "http", "localhost", "/echo"),
            Body::Streaming,
        )
        .unwrap();
    drive(&mut p, &mut server, &mut client);
    p.server.close();
    drive(&mut p, &mut server, &mut client);
    // After the PING round trip the final GOAWAY names stream 1: it may finish.
    assert!(p.server.is_closing());
    assert_eq!(
        p.client.send_request(
            &RequestHead::new("GET", "http", "localhost", "/"),
            Body::Empty
        ),
        Err(SendError::Closed)
    );
    p.client
        .send_data(id, Bytes::from_static(b"last words"), true)
        .unwrap();
    drive(&mut p, &mut server, &mut client);
    assert_eq!(
        client.bodies.get(&id).map(Vec::as_slice),
        Some(&b"last words"[..])
    );
    assert!(p.server.is_closed(), "server closes after its last stream");
    assert!(p.client.is_closed());
    assert_eq!(p.server.state(), State::Closed);
}

#[test]
fn settings_timeout_and_idle_timeout() {
    // A server whose SETTINGS are never acknowledged.
    let mut s = ServerConnection::new(Arc::new(Config::default()), Instant::ZERO);
    let deadline = s.poll_timeout().unwrap();
    assert!(deadline <= Instant::ZERO + Duration::from_secs(10));
    s.handle_timeout(Instant::ZERO + Duration::from_secs(11));
    assert!(s.error().is_some());
    // An idle pair closes gracefully after the idle timeout.
    let mut c = Config::default();
    c.idle_timeout = Some(Duration::from_secs(5));
    let mut p = pair(usize::MAX, c);
    p.drive().unwrap();
    p.advance(Duration::from_secs(6));
    p.drive().unwrap();
    assert!(p.server.is_closed());
    assert!(p.server.error().is_none());
}

#[test]
fn extended_connect_for_websocket() {
    let mut p = pair(7, Config::default());
    let mut seen = None;
    p.drive_with(|_, _| {}, |_, _| {}).unwrap();
    assert!(p.client.peer_supports_extended_connect());
    let id = p
        .client
        .send_request(
            &RequestHead::new("GET", "http", "localhost", "/chat").protocol("websocket"),
            Body::Streaming,
        )
        .unwrap();
    p.drive_with(
        |_, _| {},
        |s, e| {
            if let Event::Request { id, request } = e {
                seen = Some((
                    request.method().to_string(),
                    request.protocol().map(str::to_string),
                ));
                s.send_response(id, 200, &[], Body::Streaming).unwrap();
            }
        },
    )
    .unwrap();
    assert_eq!(
        seen,
        Some(("CONNECT".to_string(), Some("websocket".to_string())))
    );
    p.client
        .send_data(id, Bytes::from_static(b"frame"), false)
        .unwrap();
    p.drive().unwrap();
}

#[test]
fn reset_both_ways() {
    let mut p = pair(usize::MAX, Config::default());
    let mut events = Vec::new();
    let id = p
        .client
        .send_request(
            &RequestHead::new("POST", "http", "localhost", "/x"),
            Body::Streaming,
        )
        .unwrap();
    p.drive_with(|_, _| {}, |_, e| events.push(e)).unwrap();
    p.client.reset(id, Reason::CANCEL).unwrap();
    let mut server_events = Vec::new();
    p.drive_with(|_, _| {}, |_, e| server_events.push(e))
        .unwrap();
    assert!(
        matches!(
            server_events.as_slice(),
            [Event::Reset {
                reason: Reason::CANCEL,
                remote: true,
                ..
            }]
        ),
        "{server_events:?}"
    );
    let id2 = p
        .client
        .send_request(
            &RequestHead::new("POST", "http", "localhost", "/x"),
            Body::Streaming,
        )
        .unwrap();
    let mut client_events = Vec::new();
    p.drive_with(
        |_, e| client_events.push(e),
        |s, e| {
            if let Event::Request { id, .. } = e {
                s.reset(id, Reason::REFUSED_STREAM).unwrap();
            }
        },
    )
    .unwrap();
    assert!(client_events.iter().any(|e| matches!(e, Event::Reset { id, reason: Reason::REFUSED_STREAM, remote: true } if *id == id2)), "{client_events:?}");
}

/// A recorded client transcript (preface, SETTINGS, WINDOW_UPDATE, requests, a body, trailers,
/// PING) fed to a server split in two at every byte boundary: the events are the same wherever
/// the split falls. (CONTINUATION splits are covered by `exchange_one_byte_at_a_time`-style
/// delivery in h2spec 6.10 and the hardening tests.)
#[test]
fn server_sees_the_same_events_at_every_split_point() {
    let mut cfg = Config::default();
    cfg.max_frame_size = 16_384;
    let config = Arc::new(cfg);
    let mut client = ClientConnection::new(config.clone(), Instant::ZERO);
    let big = "v".repeat(200);
    let fields: [(&str, &[u8]); 1] = [("x-big", big.as_bytes())];
    client
        .send_request(
            &RequestHead::new("GET", "http", "x", "/a").fields(&fields),
            Body::Empty,
        )
        .unwrap();
    let post = client
        .send_request(
            &RequestHead::new("POST", "http", "x", "/b"),
            Body::Streaming,
        )
        .unwrap();
    client.send_data(post, body(1000, 9), false).unwrap();
    client.send_trailers(post, &[("x-t", b"1")]).unwrap();
    client.ping(*b"pingpong");
    let mut wire = Vec::new();
    while let Some(b) = client.poll_transmit() {
        wire.extend_from_slice(&b);
    }
    let summary = |s: &mut ServerConnection| {
        let mut v = Vec::new();
        while let Some(e) = s.poll_event() {
            v.push(match e {
                Event::Request { id, request } => {
                    format!("req {id} {} {}", request.path(), request.fields().len())
                }
                Event::Data { id, data } => format!("data {id} {}", data.len()),
                Event::Trailers { id, trailers } => format!("trailers {id} {}", trailers.len()),
                Event::End { id } => format!("end {id}"),
                other => format!("{other:?}"),
            });
        }
        // Data may arrive in more pieces when split: merge consecutive data events.
        let mut merged: Vec<String> = Vec::new();
        for e in v {
            if let (Some(last), true) = (merged.last_mut(), e.starts_with("data ")) {
                if last.starts_with("data ") {
                    let a: usize = last.rsplit(' ').next().unwrap().parse().unwrap();
                    let b: usize = e.rsplit(' ').next().unwrap().parse().unwrap();
                    let id = e.split(' ').nth(1).unwrap().to_string();
                    *last = format!("data {id} {}", a + b);
                    continue;
                }
            }
            merged.push(e);
        }
        merged
    };
    let mut whole = ServerConnection::new(config.clone(), Instant::ZERO);
    whole
        .handle_input(Instant::ZERO, &mut bytes::BytesMut::from(&wire[..]))
        .unwrap();
    let expected = summary(&mut whole);
    assert_eq!(
        expected,
        [
            "req 1 /a 1",
            "end 1",
            "req 3 /b 0",
            "data 3 1000",
            "trailers 3 1",
            "end 3"
        ]
    );
    let mut checked = 0;
    ferry_proto::testing::for_each_split(
        &wire,
        Instant::ZERO,
        || ServerConnection::new(config.clone(), Instant::ZERO),
        |at, mut s, r| {
            assert!(r.is_ok(), "split at {at}: {r:?}");
            assert_eq!(summary(&mut s), expected, "split at {at}");
            checked += 1;
        },
    );
    assert_eq!(checked, wire.len() - 1);
}

/// Field blocks larger than a frame travel as HEADERS + CONTINUATION, both ways, delivered one
/// byte at a time.
#[test]
fn large_headers_use_continuation_frames() {
    let mut p = pair(1, Config::default());
    let big = "c".repeat(40_000);
    let fields: [(&str, &[u8]); 1] = [("x-big", big.as_bytes())];
    let id = p
        .client
        .send_request(
            &RequestHead::new("GET", "http", "x", "/").fields(&fields),
            Body::Empty,
        )
        .unwrap();
    let mut got = None;
    p.drive_with(
        |_, e| {
            if let Event::Response { response, .. } = e {
                got = response.fields().get("x-echo").map(<[u8]>::len);
            }
        },
        |s, e| {
            if let Event::Request { id, request } = e {
                let v = request.fields().get("x-big").unwrap().to_vec();
                s.send_response(id, 200, &[("x-echo", &v)], Body::Empty)
                    .unwrap();
            }
        },
    )
    .unwrap();
    assert_eq!(got, Some(40_000));
    // The encoded block (Huffman: 25 000 octets) does not fit one 16 384-octet frame.
    assert!(p.server_sent.len() > 20_000 && p.client_sent.len() > 20_000);
    assert_eq!(p.server.open_streams() + p.client.open_streams(), 0);
    let _ = id;
}
