use super::*;
use crate::server::{self, ServerConfig, ServerConnection};
use crate::CommandId;
use alloc::vec;
use ferry_proto::testing::Pair;

fn client() -> ClientConnection {
    ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO)
}

fn pair(chunk: usize) -> Pair<ClientConnection, ServerConnection> {
    Pair::new(
        client(),
        ServerConnection::new(Arc::new(ServerConfig::default()), Instant::ZERO),
    )
    .with_max_chunk(chunk)
}

/// A tiny application: a few commands over a map, enough to exercise the client.
fn app(
    s: &mut ServerConnection,
    ev: server::Event,
    store: &mut Vec<(Bytes, Bytes)>,
    multi: &mut Option<Vec<Value>>,
) {
    let server::Event::Command(cmd) = ev else {
        return;
    };
    let reply = |cmd: &crate::Command, store: &mut Vec<(Bytes, Bytes)>| -> Value {
        if cmd.is("set") {
            store.retain(|(k, _)| k != &cmd.args[1]);
            store.push((cmd.args[1].clone(), cmd.args[2].clone()));
            Value::ok()
        } else if cmd.is("get") {
            store
                .iter()
                .find(|(k, _)| k == &cmd.args[1])
                .map_or(Value::NullBulkString, |(_, v)| Value::BulkString(v.clone()))
        } else if cmd.is("ping") {
            Value::simple("PONG")
        } else if let Some(h) = cmd.hello() {
            match h.auth {
                Some((u, p)) if u != "default" || p != "secret" => {
                    Value::error("WRONGPASS invalid username-password pair or user is disabled.")
                }
                _ => Value::Map(vec![
                    (Value::bulk("server"), Value::bulk("ferry")),
                    (
                        Value::bulk("proto"),
                        Value::Integer(h.protover.map_or(2, |p| p.version())),
                    ),
                ]),
            }
        } else if cmd.is("hgetall") {
            Value::Map(vec![(Value::bulk("f"), Value::bulk("v"))])
        } else {
            Value::error("ERR unknown command")
        }
    };
    let v = if cmd.is("multi") {
        *multi = Some(Vec::new());
        Value::ok()
    } else if cmd.is("exec") {
        Value::Array(multi.take().unwrap_or_default())
    } else if let Some(q) = multi.as_mut() {
        q.push(reply(&cmd, store));
        Value::simple("QUEUED")
    } else {
        reply(&cmd, store)
    };
    s.send_reply(cmd.id, &v).unwrap();
}

fn run(p: &mut Pair<ClientConnection, ServerConnection>) -> Vec<Event> {
    let mut store = Vec::new();
    let mut multi = None;
    let mut out = Vec::new();
    p.drive_with(|_, e| out.push(e), |s, e| app(s, e, &mut store, &mut multi))
        .unwrap();
    out
}

#[test]
fn pipelining_correlates_replies_at_every_chunk_size() {
    for chunk in [1, 2, 3, 7, 64, usize::MAX] {
        let mut p = pair(chunk);
        let a = p
            .client
            .send_command(Instant::ZERO, &["SET", "k", "v"])
            .unwrap();
        let b = p.client.send_command(Instant::ZERO, &["GET", "k"]).unwrap();
        let c = p
            .client
            .send_command(Instant::ZERO, &["GET", "nope"])
            .unwrap();
        let d = p.client.send_command(Instant::ZERO, &["PING"]).unwrap();
        let evs = run(&mut p);
        assert_eq!(
            evs,
            vec![
                Event::Reply {
                    id: a,
                    value: Value::ok()
                },
                Event::Reply {
                    id: b,
                    value: Value::bulk("v")
                },
                Event::Reply {
                    id: c,
                    value: Value::NullBulkString
                },
                Event::Reply {
                    id: d,
                    value: Value::simple("PONG")
                },
            ],
            "chunk {chunk}"
        );
        assert_eq!(p.client.in_flight(), 0);
    }
}

#[test]
fn replies_produced_backwards_by_workers_still_correlate() {
    for chunk in [1, 3, usize::MAX] {
        let mut p = pair(chunk);
        let ids: Vec<RequestId> = (0..20)
            .map(|i| {
                p.client
                    .send_command(
                        Instant::ZERO,
                        &[alloc::string::String::from("ECHO"), alloc::format!("m{i}")],
                    )
                    .unwrap()
            })
            .collect();
        // The "workers" collect every command first, then answer them in reverse order.
        let mut pending = Vec::new();
        let mut out = Vec::new();
        p.drive_with(
            |_, e| out.push(e),
            |_, e| {
                if let server::Event::Command(c) = e {
                    pending.push(c);
                }
            },
        )
        .unwrap();
        for c in pending.into_iter().rev() {
            let v = Value::BulkString(c.args[1].clone());
            p.server.send_reply(c.id, &v).unwrap();
        }
        p.drive_with(|_, e| out.push(e), |_, _| {}).unwrap();
        let want: Vec<Event> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Event::Reply {
                id: *id,
                value: Value::bulk(alloc::format!("m{i}")),
            })
            .collect();
        assert_eq!(out, want, "chunk {chunk}");
    }
}

#[test]
fn hello_negotiates_resp3_with_auth() {
    let mut p = pair(1);
    let bad = p
        .client
        .hello(
            Instant::ZERO,
            Some(Protocol::Resp3),
            Some((b"default", b"wrong")),
            None,
        )
        .unwrap();
    let evs = run(&mut p);
    assert!(matches!(&evs[0], Event::Reply { id, value: Value::Error(_) } if *id == bad));
    assert_eq!(p.client.protocol(), Protocol::Resp2);
    let good = p
        .client
        .hello(
            Instant::ZERO,
            Some(Protocol::Resp3),
            Some((b"default", b"secret")),
            Some(b"me"),
        )
        .unwrap();
    let h = p
        .client
        .send_command(Instant::ZERO, &["HGETALL", "h"])
        .unwrap();
    let evs = run(&mut p);
    assert!(matches!(&evs[0], Event::Reply { id, value: Value::Map(_) } if *id == good));
    assert_eq!(
        evs[1],
        Event::Reply {
            id: h,
            value: Value::Map(vec![(Value::bulk("f"), Value::bulk("v"))])
        }
    );
    assert_eq!(p.client.protocol(), Protocol::Resp3);
    assert_eq!(p.server.protocol(), Protocol::Resp3);
    assert_eq!(p.client.state(), State::Ready);
}

#[test]
fn pubsub_resp2_and_resp3_separate_pushes() {
    for (resp3, chunk) in [
        (false, 1),
        (true, 1),
        (false, 5),
        (true, 7),
        (true, usize::MAX),
    ] {
        let mut p = pair(chunk);
        if resp3 {
            p.client
                .hello(Instant::ZERO, Some(Protocol::Resp3), None, None)
                .unwrap();
            run(&mut p);
        }
        let sub = p
            .client
            .send_command(Instant::ZERO, &["SUBSCRIBE", "a", "b"])
            .unwrap();
        let evs = run(&mut p);
        let Event::Reply {
            id,
            value: Value::Array(frames),
        } = &evs[0]
        else {
            panic!("{evs:?}")
        };
        assert_eq!(*id, sub);
        assert_eq!(frames.len(), 2);
        assert!(p.client.is_subscribed());
        p.server
            .send_message(&Bytes::from_static(b"a"), &Bytes::from_static(b"hello"));
        let ping = p.client.send_command(Instant::ZERO, &["PING"]).unwrap();
        let evs = run(&mut p);
        let Event::Push(msg) = &evs[0] else {
            panic!("{evs:?}")
        };
        assert_eq!(msg.as_slice().unwrap()[2], Value::bulk("hello"));
        assert!(matches!(&evs[1], Event::Reply { id, .. } if *id == ping));
        let unsub = p
            .client
            .send_command(Instant::ZERO, &["UNSUBSCRIBE"])
            .unwrap();
        let evs = run(&mut p);
        let Event::Reply {
            id,
            value: Value::Array(frames),
        } = &evs[0]
        else {
            panic!("{evs:?}")
        };
        assert_eq!((*id, frames.len()), (unsub, 2));
        assert!(!p.client.is_subscribed());
    }
}

#[test]
fn transaction_reports_only_exec() {
    let mut p = pair(4);
    let id = p
        .client
        .send_transaction(Instant::ZERO, &[&["SET", "a", "1"][..], &["GET", "a"][..]])
        .unwrap();
    let evs = run(&mut p);
    assert_eq!(
        evs,
        vec![Event::Reply {
            id,
            value: Value::Array(vec![Value::ok(), Value::bulk("1")])
        }]
    );
}

#[test]
fn quit_closes_both_sides() {
    let mut p = pair(usize::MAX);
    let q = p.client.send_command(Instant::ZERO, &["QUIT"]).unwrap();
    let evs = run(&mut p);
    assert_eq!(
        evs,
        vec![Event::Reply {
            id: q,
            value: Value::ok()
        }]
    );
    assert!(p.server.is_closed());
    assert!(p.client.is_closed());
    assert_eq!(
        p.client.send_command(Instant::ZERO, &["PING"]),
        Err(SendError::Closed)
    );
}

#[test]
fn reset_returns_to_resp2() {
    let mut p = pair(usize::MAX);
    p.client
        .hello(Instant::ZERO, Some(Protocol::Resp3), None, None)
        .unwrap();
    p.client
        .send_command(Instant::ZERO, &["SUBSCRIBE", "x"])
        .unwrap();
    let r = p.client.send_command(Instant::ZERO, &["RESET"]).unwrap();
    let evs = run(&mut p);
    assert_eq!(
        evs.last(),
        Some(&Event::Reply {
            id: r,
            value: Value::simple("RESET")
        })
    );
    assert_eq!(p.client.protocol(), Protocol::Resp2);
    assert!(!p.client.is_subscribed());
}

#[test]
fn unexpected_reply_and_garbage_are_fatal() {
    let mut c = client();
    let mut b = BytesMut::from(&b"+OK\r\n"[..]);
    assert_eq!(
        c.handle_input(Instant::ZERO, &mut b),
        Err(Error::UnexpectedReply)
    );
    assert_eq!(
        c.handle_input(Instant::ZERO, &mut BytesMut::new()),
        Err(Error::UnexpectedReply)
    );
    let mut c = client();
    c.send_command(Instant::ZERO, &["PING"]).unwrap();
    let mut b = BytesMut::from(&b"?\r\n"[..]);
    assert_eq!(
        c.handle_input(Instant::ZERO, &mut b),
        Err(Error::Protocol(ParseError::InvalidType(b'?')))
    );
    assert!(c.is_closed());
}

#[test]
fn limit_reply_nesting_depth() {
    let limits = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    let cfg = ClientConfig {
        limits,
        ..ClientConfig::default()
    };
    let mut c = ClientConnection::new(Arc::new(cfg), Instant::ZERO);
    c.send_command(Instant::ZERO, &["GET", "x"]).unwrap();
    let mut b = BytesMut::from(&b"*1\r\n*1\r\n*1\r\n:1\r\n"[..]);
    c.handle_input(Instant::ZERO, &mut b).unwrap();
    assert!(matches!(c.poll_event(), Some(Event::Reply { .. })));
    c.send_command(Instant::ZERO, &["GET", "x"]).unwrap();
    let mut b = BytesMut::from(&b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"[..]);
    assert_eq!(
        c.handle_input(Instant::ZERO, &mut b),
        Err(Error::Protocol(ParseError::TooDeep))
    );
}

#[test]
fn limit_reply_bulk_len() {
    let limits = Limits {
        max_bulk_len: 4,
        ..Limits::default()
    };
    let cfg = ClientConfig {
        limits,
        ..ClientConfig::default()
    };
    let mut c = ClientConnection::new(Arc::new(cfg), Instant::ZERO);
    c.send_command(Instant::ZERO, &["GET", "x"]).unwrap();
    let mut b = BytesMut::from(&b"$5\r\n"[..]);
    assert_eq!(
        c.handle_input(Instant::ZERO, &mut b),
        Err(Error::Protocol(ParseError::BulkTooLong))
    );
}

#[test]
fn eof_with_replies_owed_is_an_error() {
    let mut c = client();
    c.send_command(Instant::ZERO, &["PING"]).unwrap();
    c.handle_eof(Instant::ZERO);
    assert_eq!(c.poll_event(), Some(Event::Error(Error::UnexpectedEof)));
}

#[test]
fn response_timeout() {
    let cfg = ClientConfig {
        response_timeout: Some(Duration::from_secs(1)),
        ..ClientConfig::default()
    };
    let mut c = ClientConnection::new(Arc::new(cfg), Instant::ZERO);
    assert_eq!(c.poll_timeout(), None);
    c.send_command(Instant::ZERO, &["PING"]).unwrap();
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(Instant::from_nanos(5));
    assert!(c.error().is_none());
    c.handle_timeout(t);
    assert_eq!(c.error(), Some(Error::Timeout));
}

#[test]
fn response_timeout_counts_from_the_send_time() {
    let cfg = ClientConfig {
        response_timeout: Some(Duration::from_secs(1)),
        ..ClientConfig::default()
    };
    let secs = |s| Instant::ZERO + Duration::from_secs(s);
    let mut c = ClientConnection::new(Arc::new(cfg), Instant::ZERO);
    c.send_command(secs(100), &["PING"]).unwrap();
    assert_eq!(c.poll_timeout(), Some(secs(101)));
    c.handle_timeout(secs(100));
    assert!(
        c.error().is_none(),
        "stamped when sent, not at the last input"
    );
    c.handle_timeout(secs(101));
    assert_eq!(c.error(), Some(Error::Timeout));
}

#[test]
fn pipeline_limit() {
    let cfg = ClientConfig {
        max_pipelined: 1,
        ..ClientConfig::default()
    };
    let mut c = ClientConnection::new(Arc::new(cfg), Instant::ZERO);
    c.send_command(Instant::ZERO, &["PING"]).unwrap();
    assert_eq!(
        c.send_command(Instant::ZERO, &["PING"]),
        Err(SendError::PipelineFull)
    );
}

#[test]
fn resp3_push_interleaved_with_replies() {
    let mut c = client();
    let id = c.send_command(Instant::ZERO, &["GET", "k"]).unwrap();
    let mut b = BytesMut::from(&b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$1\r\nv\r\n"[..]);
    c.handle_input(Instant::ZERO, &mut b).unwrap();
    assert!(matches!(c.poll_event(), Some(Event::Push(_))));
    assert_eq!(
        c.poll_event(),
        Some(Event::Reply {
            id,
            value: Value::bulk("v")
        })
    );
}

#[test]
fn unused_id_type_is_distinct() {
    // RequestId (client) and CommandId (server) are different types on purpose.
    let _: Option<CommandId> = None;
    assert_eq!(RequestId(3).get(), 3);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256), n in 0usize..4) {
            let mut c = client();
            for _ in 0..n {
                let _ = c.send_command(Instant::ZERO, &["PING"]);
            }
            let mut b = BytesMut::from(&data[..]);
            let _ = c.handle_input(Instant::ZERO, &mut b);
        }
    }
}

/// Feeds `wire` to a fresh client that sent `XRANGE` and `PING`, `chunk` bytes per read.
fn replies_in_reads(wire: &[u8], chunk: usize) -> (Vec<Event>, u64) {
    let mut c = client();
    c.send_command(Instant::ZERO, &["XRANGE", "s", "-", "+"])
        .unwrap();
    c.send_command(Instant::ZERO, &["PING"]).unwrap();
    let mut input = BytesMut::new();
    let mut events = Vec::new();
    for part in wire.chunks(chunk) {
        input.extend_from_slice(part);
        c.handle_input(Instant::ZERO, &mut input).unwrap();
        while let Some(ev) = c.poll_event() {
            events.push(ev);
        }
    }
    assert!(input.is_empty());
    (events, c.scan.examined())
}

/// A 100k-entry nested reply arriving in 4 KiB reads gives the same events as arriving
/// whole, and is measured about once (not once per read).
#[test]
fn a_large_nested_reply_in_small_reads() {
    let mut wire = crate::scan::tests::nested_reply(100_000);
    wire.extend_from_slice(b"+PONG\r\n");
    let (whole, _) = replies_in_reads(&wire, wire.len());
    assert_eq!(whole.len(), 2);
    let Event::Reply {
        value: Value::Array(entries),
        ..
    } = &whole[0]
    else {
        panic!("{:?}", whole[0]);
    };
    assert_eq!(entries.len(), 100_000);
    let (chunked, examined) = replies_in_reads(&wire, 4096);
    assert_eq!(chunked, whole);
    assert!(
        examined <= 2 * wire.len() as u64,
        "examined {examined} bytes of {}",
        wire.len()
    );
    // Odd read sizes too.
    let (small, _) = replies_in_reads(&wire[..], 1000 + 7);
    assert_eq!(small, whole);
}
