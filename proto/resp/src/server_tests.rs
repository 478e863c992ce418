use super::*;
use alloc::string::String;
use alloc::vec;
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
    String::from_utf8_lossy(&v).into_owned()
}

/// Answer PING with PONG, ECHO with its argument, HELLO with a map, anything else with +OK.
fn answer_all(c: &mut ServerConnection) -> Vec<Event> {
    let evs = events(c);
    for e in &evs {
        if let Event::Command(cmd) = e {
            let v = if cmd.is("ping") {
                Value::simple("PONG")
            } else if cmd.is("echo") {
                Value::BulkString(cmd.args[1].clone())
            } else if let Some(h) = cmd.hello() {
                if h.auth.as_ref().is_some_and(|(u, _)| u != "default") {
                    Value::error("WRONGPASS invalid username-password pair or user is disabled.")
                } else {
                    let p = h.protover.unwrap_or(c.protocol()).version();
                    Value::Map(vec![(Value::bulk("proto"), Value::Integer(p))])
                }
            } else {
                Value::ok()
            };
            c.send_reply(cmd.id, &v).unwrap();
        }
    }
    evs
}

#[test]
fn pipelined_commands_answered_in_order() {
    let mut c = conn();
    feed(
        &mut c,
        b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n",
    )
    .unwrap();
    answer_all(&mut c);
    assert_eq!(output(&mut c), "+PONG\r\n$2\r\nhi\r\n+PONG\r\n");
    assert!(c.wants_read());
    assert!(!c.is_closed());
}

#[test]
fn out_of_order_replies_are_buffered() {
    let mut c = conn();
    feed(&mut c, b"PING\r\nPING\r\nPING\r\n").unwrap();
    let ids: Vec<CommandId> = events(&mut c)
        .into_iter()
        .filter_map(|e| {
            if let Event::Command(c) = e {
                Some(c.id)
            } else {
                None
            }
        })
        .collect();
    c.send_reply(ids[2], &Value::Integer(3)).unwrap();
    c.send_reply(ids[1], &Value::Integer(2)).unwrap();
    assert_eq!(output(&mut c), "");
    assert_eq!(
        c.send_reply(ids[1], &Value::Integer(2)),
        Err(SendError::UnknownId)
    );
    c.send_reply(ids[0], &Value::Integer(1)).unwrap();
    assert_eq!(output(&mut c), ":1\r\n:2\r\n:3\r\n");
    assert_eq!(
        c.send_reply(ids[0], &Value::Integer(1)),
        Err(SendError::UnknownId)
    );
}

#[test]
fn out_of_order_buffer_is_bounded() {
    let mut c = conn_with(|c| c.max_buffered_out_of_order = 10);
    feed(&mut c, b"PING\r\nPING\r\nPING\r\n").unwrap();
    let ids: Vec<CommandId> = events(&mut c)
        .into_iter()
        .filter_map(|e| {
            if let Event::Command(c) = e {
                Some(c.id)
            } else {
                None
            }
        })
        .collect();
    c.send_reply(ids[1], &Value::bulk([b'x'; 20])).unwrap();
    assert_eq!(
        c.send_reply(ids[2], &Value::ok()),
        Err(SendError::BufferFull)
    );
    c.send_reply(ids[0], &Value::ok()).unwrap();
    c.send_reply(ids[2], &Value::ok()).unwrap();
}

#[test]
fn every_split_point() {
    let data =
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\n";
    for_each_split(data, Instant::ZERO, conn, |at, mut c, r| {
        r.unwrap();
        answer_all(&mut c);
        assert_eq!(
            output(&mut c),
            "+OK\r\n+PONG\r\n$3\r\nabc\r\n",
            "split at {at}"
        );
    });
}

#[test]
fn arguments_are_zero_copy() {
    let mut c = conn();
    let mut b = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n"[..]);
    let base = b.as_ptr() as usize;
    c.handle_input(Instant::ZERO, &mut b).unwrap();
    let Some(Event::Command(cmd)) = c.poll_event() else {
        panic!()
    };
    assert_eq!(cmd.args[1], "hello");
    assert_eq!(cmd.args[1].as_ptr() as usize, base + 17);
}

fn assert_limit(c: &mut ServerConnection, input: &[u8], text: &str, err: ParseError) {
    let r = feed(c, input);
    assert_eq!(r.err(), Some(Error::Protocol(err)));
    assert_eq!(output(c), alloc::format!("-{text}\r\n"));
    assert!(c.is_closed());
    assert_eq!(
        c.handle_input(Instant::ZERO, &mut BytesMut::from(&b"PING\r\n"[..])),
        Err(Error::Protocol(err))
    );
    assert_eq!(c.state(), State::Error);
}

#[test]
fn limit_proto_max_bulk_len() {
    let mut c = conn_with(|c| c.proto_max_bulk_len = 100);
    assert_limit(
        &mut c,
        b"*1\r\n$101\r\n",
        "ERR Protocol error: invalid bulk length",
        ParseError::InvalidBulkLength,
    );
    let mut c = conn();
    assert_limit(
        &mut c,
        b"*1\r\n$536870913\r\n",
        "ERR Protocol error: invalid bulk length",
        ParseError::InvalidBulkLength,
    );
    let mut c = conn_with(|c| c.proto_max_bulk_len = 100);
    feed(&mut c, b"*1\r\n$100\r\n").unwrap();
}

#[test]
fn limit_max_multibulk_len() {
    let mut c = conn();
    assert_limit(
        &mut c,
        b"*2147483648\r\n",
        "ERR Protocol error: invalid multibulk length",
        ParseError::InvalidMultibulkLength,
    );
    let mut c = conn_with(|c| c.max_multibulk_len = 3);
    assert_limit(
        &mut c,
        b"*4\r\n",
        "ERR Protocol error: invalid multibulk length",
        ParseError::InvalidMultibulkLength,
    );
}

#[test]
fn limit_inline_size() {
    let mut c = conn();
    assert_limit(
        &mut c,
        &[b'x'; 65 * 1024],
        "ERR Protocol error: too big inline request",
        ParseError::TooBigInlineRequest,
    );
    let mut c = conn();
    let mut big = vec![b'*'];
    big.extend_from_slice(&[b'1'; 65 * 1024]);
    assert_limit(
        &mut c,
        &big,
        "ERR Protocol error: too big mbulk count string",
        ParseError::TooBigMultibulkCountString,
    );
    let mut c = conn();
    let mut big = b"*1\r\n$".to_vec();
    big.extend_from_slice(&[b'1'; 65 * 1024]);
    assert_limit(
        &mut c,
        &big,
        "ERR Protocol error: too big bulk count string",
        ParseError::TooBigBulkCountString,
    );
    let mut c = conn();
    feed(&mut c, &[b'x'; 64 * 1024]).unwrap();
}

#[test]
fn limit_query_buffer_closes_silently() {
    let mut c = conn_with(|c| c.max_query_buffer = 1000);
    let r = feed(&mut c, b"*2\r\n$3\r\nSET\r\n$2000\r\n");
    assert_eq!(r.err(), Some(Error::Protocol(ParseError::QueryBufferLimit)));
    assert_eq!(output(&mut c), "");
    assert!(c.is_closed());
}

#[test]
fn limit_max_pipelined_applies_backpressure() {
    let mut c = conn_with(|c| c.max_pipelined = 2);
    let rest = feed(&mut c, b"PING\r\nPING\r\nPING\r\n").unwrap();
    assert_eq!(&rest[..], b"PING\r\n");
    assert!(!c.wants_read());
    answer_all(&mut c);
    assert!(c.wants_read());
}

#[test]
fn unpolled_events_apply_backpressure_too() {
    let mut c = conn_with(|c| c.max_pipelined = 2);
    let rest = feed(&mut c, b"SUBSCRIBE a\r\nSUBSCRIBE b\r\nSUBSCRIBE c\r\n").unwrap();
    assert_eq!(&rest[..], b"SUBSCRIBE c\r\n");
    assert!(!c.wants_read());
    assert_eq!(events(&mut c).len(), 2);
    assert!(c.wants_read());
}

#[test]
fn expected_dollar_and_unbalanced_quotes() {
    let mut c = conn();
    assert_limit(
        &mut c,
        b"*1\r\n:5\r\n",
        "ERR Protocol error: expected '$', got ':'",
        ParseError::ExpectedBulk(b':'),
    );
    let mut c = conn();
    assert_limit(
        &mut c,
        b"SET \"a\r\n",
        "ERR Protocol error: unbalanced quotes in request",
        ParseError::UnbalancedQuotes,
    );
}

#[test]
fn protocol_error_comes_after_earlier_replies() {
    let mut c = conn();
    let _ = feed(&mut c, b"PING\r\n*x\r\n");
    assert_eq!(output(&mut c), "");
    answer_all(&mut c);
    assert_eq!(
        output(&mut c),
        "+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert!(c.is_closed());
}

#[test]
fn quit_answers_ok_and_closes() {
    let mut c = conn();
    feed(&mut c, b"PING\r\nQUIT\r\nPING\r\n").unwrap();
    answer_all(&mut c);
    assert_eq!(output(&mut c), "+PONG\r\n+OK\r\n");
    assert!(c.is_closed());
}

#[test]
fn hello_switches_protocol_when_answered() {
    let mut c = conn();
    let rest = feed(&mut c, b"HELLO 3\r\nPING\r\n").unwrap();
    assert_eq!(&rest[..], b"PING\r\n", "commands behind HELLO wait");
    assert!(!c.wants_read());
    answer_all(&mut c);
    assert_eq!(c.protocol(), Protocol::Resp3);
    assert_eq!(output(&mut c), "%1\r\n$5\r\nproto\r\n:3\r\n");
    let mut rest = rest;
    c.handle_input(Instant::ZERO, &mut rest).unwrap();
    answer_all(&mut c);
    assert_eq!(output(&mut c), "+PONG\r\n");
}

#[test]
fn hello_errors() {
    let mut c = conn();
    feed(
        &mut c,
        b"HELLO 4\r\nHELLO x\r\nHELLO 3 FOO\r\nHELLO 3 AUTH bob pw\r\n",
    )
    .unwrap();
    answer_all(&mut c);
    assert_eq!(
        output(&mut c),
        "-NOPROTO unsupported protocol version\r\n-ERR Protocol version is not an integer or out of range\r\n\
         -ERR Syntax error in HELLO option 'FOO'\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(c.protocol(), Protocol::Resp2);
}

#[test]
fn pubsub_mode_resp2() {
    let mut c = conn();
    feed(
        &mut c,
        b"SUBSCRIBE a b\r\nGET x\r\nPING\r\nPSUBSCRIBE p*\r\n",
    )
    .unwrap();
    let evs = answer_all(&mut c);
    assert!(
        matches!(&evs[0], Event::Subscribe { kind: SubKind::Channel, channels } if channels.len() == 2)
    );
    assert_eq!(
        output(&mut c),
        "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n\
         -ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n\
         *2\r\n$4\r\npong\r\n$0\r\n\r\n*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:3\r\n"
    );
    assert!(c.send_message(&Bytes::from_static(b"a"), &Bytes::from_static(b"hi")));
    assert!(!c.send_message(&Bytes::from_static(b"zz"), &Bytes::from_static(b"hi")));
    assert!(c.send_pmessage(
        &Bytes::from_static(b"p*"),
        &Bytes::from_static(b"px"),
        &Bytes::from_static(b"m")
    ));
    assert_eq!(
        output(&mut c),
        "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n*4\r\n$8\r\npmessage\r\n$2\r\np*\r\n$2\r\npx\r\n$1\r\nm\r\n"
    );
    feed(&mut c, b"UNSUBSCRIBE\r\nPUNSUBSCRIBE\r\nUNSUBSCRIBE\r\n").unwrap();
    let evs = answer_all(&mut c);
    assert!(
        matches!(&evs[0], Event::Unsubscribe { kind: SubKind::Channel, channels } if channels.len() == 2)
    );
    assert_eq!(
        output(&mut c),
        "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:2\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n\
         *3\r\n$12\r\npunsubscribe\r\n$2\r\np*\r\n:0\r\n*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
    );
    assert!(!c.is_subscribed());
    assert!(!c.send_message(&Bytes::from_static(b"a"), &Bytes::from_static(b"late")));
}

#[test]
fn pubsub_resp3_uses_push_and_allows_commands() {
    let mut c = conn();
    feed(&mut c, b"HELLO 3\r\n").unwrap();
    answer_all(&mut c);
    output(&mut c);
    feed(&mut c, b"SUBSCRIBE a\r\nGET x\r\n").unwrap();
    answer_all(&mut c);
    assert_eq!(
        output(&mut c),
        ">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n+OK\r\n"
    );
    c.send_message(&Bytes::from_static(b"a"), &Bytes::from_static(b"x"));
    assert_eq!(
        output(&mut c),
        ">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n"
    );
    c.send_push(&Value::Push(vec![Value::bulk("invalidate")]))
        .unwrap();
    assert_eq!(output(&mut c), ">1\r\n$10\r\ninvalidate\r\n");
}

#[test]
fn message_never_precedes_its_subscription_confirmation() {
    let mut c = conn();
    feed(&mut c, b"GET x\r\nSUBSCRIBE a\r\n").unwrap();
    let evs = events(&mut c);
    let Event::Command(get) = &evs[0] else {
        panic!()
    };
    // The broker learned about the subscription before GET was answered.
    assert!(c.send_message(&Bytes::from_static(b"a"), &Bytes::from_static(b"m")));
    c.send_reply(get.id, &Value::NullBulkString).unwrap();
    assert_eq!(
        output(&mut c),
        "$-1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nm\r\n"
    );
}

/// With `queue_pubsub_in_multi`, SUBSCRIBE inside MULTI is the application's to queue; the
/// EXEC reply's pushes become Redis's confirmations (array header = commands), the sets
/// follow, and what comes after the EXEC is read under RESP2's pub/sub rules.
#[test]
fn pubsub_inside_multi_is_queued_and_applied_at_exec() {
    let mut c = conn_with(|c| c.queue_pubsub_in_multi = true);
    feed(
        &mut c,
        b"MULTI\r\nSUBSCRIBE a b\r\nPUNSUBSCRIBE\r\nSET k v\r\nEXEC\r\nGET k\r\n",
    )
    .unwrap();
    let evs = events(&mut c);
    // MULTI, SUBSCRIBE, PUNSUBSCRIBE, SET, EXEC: GET waits behind the EXEC.
    let ids: Vec<CommandId> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Command(cmd) => Some(cmd.id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 5, "{evs:?}");
    assert!(!c.wants_read());
    for id in &ids[..4] {
        let v = if id == &ids[0] {
            Value::ok()
        } else {
            Value::simple("QUEUED")
        };
        c.send_reply(*id, &v).unwrap();
    }
    let exec = Value::Array(vec![
        Value::Push(vec![
            Value::bulk("subscribe"),
            Value::bulk("a"),
            Value::bulk("b"),
        ]),
        Value::Push(vec![Value::bulk("punsubscribe")]),
        Value::ok(),
    ]);
    c.send_reply(ids[4], &exec).unwrap();
    assert_eq!(
        output(&mut c),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n\
         *3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n\
         *3\r\n$12\r\npunsubscribe\r\n$-1\r\n:2\r\n+OK\r\n"
    );
    assert!(c.is_subscribed_to(SubKind::Channel, b"b"));
    assert!(c.wants_read());
    // The GET behind the EXEC is refused: the client is in pub/sub mode now.
    let mut rest = BytesMut::from(&b"GET k\r\n"[..]);
    c.handle_input(Instant::ZERO, &mut rest).unwrap();
    assert!(output(&mut c).starts_with("-ERR Can't execute 'get'"));
    // DISCARD ends MULTI too; outside MULTI the connection answers SUBSCRIBE itself.
    let mut c = conn_with(|c| c.queue_pubsub_in_multi = true);
    feed(&mut c, b"MULTI\r\nDISCARD\r\nSUBSCRIBE x\r\n").unwrap();
    answer_all(&mut c);
    assert_eq!(
        output(&mut c),
        "+OK\r\n+OK\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n"
    );
    // Off (the default): answered at once, even inside MULTI.
    let mut c = conn();
    feed(&mut c, b"MULTI\r\nSUBSCRIBE x\r\n").unwrap();
    answer_all(&mut c);
    assert!(output(&mut c).ends_with("*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n"));
}

/// With `pushes_before_reply`, `Value::Push([frame…, reply])` writes the frames, then the
/// reply; without it a push reply is written as it is.
#[test]
fn pushes_before_reply() {
    let msg = Value::Push(vec![
        Value::bulk("message"),
        Value::bulk("c"),
        Value::bulk("m"),
    ]);
    let reply = Value::Push(vec![msg.clone(), Value::Integer(1)]);
    let mut c = conn_with(|c| c.pushes_before_reply = true);
    feed(&mut c, b"HELLO 3\r\n").unwrap();
    answer_all(&mut c);
    let _ = output(&mut c);
    feed(&mut c, b"PUBLISH c m\r\n").unwrap();
    let evs = events(&mut c);
    let Some(Event::Command(cmd)) = evs.first() else {
        panic!("{evs:?}")
    };
    c.send_reply(cmd.id, &reply).unwrap();
    assert_eq!(
        output(&mut c),
        ">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n:1\r\n"
    );
    // Inside an EXEC array: the header counts the PUBLISH once, the message comes first.
    feed(&mut c, b"EXEC\r\n").unwrap();
    let evs = events(&mut c);
    let Some(Event::Command(cmd)) = evs.first() else {
        panic!("{evs:?}")
    };
    let exec = Value::Push(vec![Value::Array(vec![reply.clone(), Value::ok()])]);
    c.send_reply(cmd.id, &exec).unwrap();
    assert_eq!(
        output(&mut c),
        "*2\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n:1\r\n+OK\r\n"
    );
    let mut c = conn();
    feed(&mut c, b"PUBLISH c m\r\n").unwrap();
    let evs = events(&mut c);
    let Some(Event::Command(cmd)) = evs.first() else {
        panic!("{evs:?}")
    };
    c.send_reply(cmd.id, &Value::Push(vec![Value::Integer(1)]))
        .unwrap();
    assert_eq!(output(&mut c), "*1\r\n:1\r\n");
}

#[test]
fn reset_returns_to_resp2() {
    let mut c = conn();
    feed(&mut c, b"HELLO 3\r\n").unwrap();
    answer_all(&mut c);
    feed(&mut c, b"SUBSCRIBE a\r\nRESET\r\n").unwrap();
    let evs = answer_all(&mut c);
    assert!(evs.iter().any(|e| matches!(e, Event::Reset)));
    assert_eq!(c.protocol(), Protocol::Resp2);
    assert!(!c.is_subscribed());
    assert!(output(&mut c).ends_with("+RESET\r\n"));
}

#[test]
fn big_bulk_reply_is_not_copied() {
    let mut c = conn();
    feed(&mut c, b"GET k\r\n").unwrap();
    let Some(Event::Command(cmd)) = c.poll_event() else {
        panic!()
    };
    let big = Bytes::from(vec![7u8; 100_000]);
    c.send_reply(cmd.id, &Value::BulkString(big.clone()))
        .unwrap();
    let chunks: Vec<Bytes> = core::iter::from_fn(|| c.poll_transmit()).collect();
    assert!(chunks.iter().any(|ch| ch.as_ptr() == big.as_ptr()));
}

#[test]
fn idle_timeout() {
    let mut c = conn_with(|c| c.idle_timeout = Some(Duration::from_secs(5)));
    assert_eq!(
        c.poll_timeout(),
        Some(Instant::ZERO + Duration::from_secs(5))
    );
    c.handle_timeout(Instant::from_nanos(1));
    assert!(!c.is_closed());
    c.handle_timeout(Instant::ZERO + Duration::from_secs(5));
    assert!(c.is_closed());
}

#[test]
fn eof_answers_what_was_read_then_closes() {
    let mut c = conn();
    feed(&mut c, b"PING\r\n").unwrap();
    c.handle_eof(Instant::ZERO);
    assert!(!c.is_closed());
    answer_all(&mut c);
    assert_eq!(output(&mut c), "+PONG\r\n");
    assert!(c.is_closed());
    assert_eq!(c.state(), State::Closed);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Action {
        Raw(Vec<u8>),
        Cmd(Vec<Vec<u8>>),
        Answer(u8),
        Eof,
    }

    fn action() -> impl Strategy<Value = Action> {
        let name = prop::sample::select(vec![
            &b"GET"[..],
            b"SUBSCRIBE",
            b"UNSUBSCRIBE",
            b"PSUBSCRIBE",
            b"PING",
            b"QUIT",
            b"RESET",
            b"HELLO",
            b"ECHO",
        ]);
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Action::Raw),
            2 => "[*$:+?0-9\r\n a-z\"]{0,24}".prop_map(|s| Action::Raw(s.into_bytes())),
            6 => (name, proptest::collection::vec(proptest::collection::vec(b'0'..b'4', 0..3), 0..3)).prop_map(|(n, mut a)| {
                a.insert(0, n.to_vec());
                Action::Cmd(a)
            }),
            5 => any::<u8>().prop_map(Action::Answer),
            1 => Just(Action::Eof),
        ]
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256), chunk in 1usize..32) {
            let mut c = conn();
            let mut buf = BytesMut::new();
            for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                if c.handle_input(Instant::ZERO, &mut buf).is_err() {
                    break;
                }
                answer_all(&mut c);
            }
            let _ = output(&mut c);
        }

        #[test]
        fn resp_alphabet_garbage_never_panics(data in "[*$:+\\-?0-9\r\n a\"'\\\\x]{0,64}") {
            let mut c = conn();
            let mut buf = BytesMut::from(data.as_bytes());
            let _ = c.handle_input(Instant::ZERO, &mut buf);
            answer_all(&mut c);
            let _ = output(&mut c);
        }

        #[test]
        fn arbitrary_actions_keep_invariants(actions in proptest::collection::vec(action(), 0..40)) {
            let mut c = conn_with(|c| {
                c.max_pipelined = 4;
                c.proto_max_bulk_len = 64;
                c.max_inline_size = 64;
            });
            let mut buf = BytesMut::new();
            let mut open: Vec<CommandId> = Vec::new();
            let mut wire = Vec::new();
            let mut failed: Option<Error> = None;
            for a in actions {
                match a {
                    Action::Raw(b) => buf.extend_from_slice(&b),
                    Action::Cmd(args) => crate::encode_command(&args, &mut buf),
                    Action::Answer(i) => {
                        if !open.is_empty() {
                            let id = open.remove(i as usize % open.len());
                            let _ = c.send_reply(id, &Value::Integer(id.get() as i64));
                        }
                    }
                    Action::Eof => c.handle_eof(Instant::ZERO),
                }
                match c.handle_input(Instant::ZERO, &mut buf) {
                    Ok(()) => prop_assert!(failed.is_none()),
                    Err(e) => {
                        if let Some(f) = failed {
                            prop_assert_eq!(f, e);
                        }
                        failed = Some(e);
                    }
                }
                for e in events(&mut c) {
                    if let Event::Command(cmd) = e {
                        open.push(cmd.id);
                    }
                }
                prop_assert!(c.in_flight() <= 4 + 1);
                while let Some(b) = c.poll_transmit() {
                    wire.extend_from_slice(&b);
                }
            }
            // Answer everything left; the output is a sequence of complete RESP frames.
            for id in open.drain(..) {
                let _ = c.send_reply(id, &Value::ok());
            }
            while let Some(b) = c.poll_transmit() {
                wire.extend_from_slice(&b);
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let n = crate::parse::frame_len(rest, &crate::Limits::default()).unwrap().expect("complete frame");
                rest = &rest[n..];
            }
            if c.is_closed() {
                prop_assert!(c.poll_transmit().is_none());
            }
        }

        #[test]
        fn pipelines_parse_the_same_at_any_chunking(
            cmds in proptest::collection::vec(proptest::collection::vec("[a-z0-9 ]{0,6}", 1..4), 1..8),
            chunks in proptest::collection::vec(1usize..9, 1..50),
        ) {
            let mut wire = BytesMut::new();
            for c in &cmds {
                let mut args = c.clone();
                args.insert(0, alloc::string::String::from("ECHO"));
                crate::encode_command(&args, &mut wire);
            }
            let run = |sizes: &[usize]| -> (Vec<Vec<Bytes>>, String) {
                let mut c = conn();
                let mut buf = BytesMut::new();
                let mut rest = &wire[..];
                let mut k = 0;
                let mut got = Vec::new();
                while !rest.is_empty() {
                    let n = sizes.get(k % sizes.len().max(1)).copied().unwrap_or(usize::MAX).min(rest.len());
                    k += 1;
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    c.handle_input(Instant::ZERO, &mut buf).unwrap();
                    for e in events(&mut c) {
                        if let Event::Command(cmd) = e {
                            c.send_reply(cmd.id, &Value::Integer(cmd.args.len() as i64)).unwrap();
                            got.push(cmd.args.to_vec());
                        }
                    }
                }
                (got, output(&mut c))
            };
            let whole = run(&[usize::MAX]);
            prop_assert_eq!(whole.0.len(), cmds.len());
            prop_assert_eq!(run(&chunks), whole);
        }

        #[test]
        fn any_command_round_trips(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..6)) {
            let mut wire = BytesMut::new();
            crate::encode_command(&args, &mut wire);
            let mut c = conn();
            c.handle_input(Instant::ZERO, &mut wire).unwrap();
            let name = args[0].to_ascii_lowercase();
            let special = [&b"subscribe"[..], b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe", b"sunsubscribe", b"quit", b"reset", b"hello"];
            if !special.contains(&&name[..]) {
                let Some(Event::Command(cmd)) = c.poll_event() else { panic!("no command") };
                let got: Vec<Vec<u8>> = cmd.args.iter().map(|a| a.to_vec()).collect();
                prop_assert_eq!(got, args);
            }
        }
    }
}

#[test]
fn connections_are_send_for_worker_threads() {
    fn send<T: Send>() {}
    send::<ServerConnection>();
    send::<crate::ClientConnection>();
    send::<Value>();
    send::<Event>();
}

/// The commands read from `wire` fed `chunk` bytes per read (their arguments).
fn commands_in_reads(wire: &[u8], chunk: usize) -> Vec<Vec<Bytes>> {
    let mut c = conn();
    let mut input = BytesMut::new();
    let mut out = Vec::new();
    for part in wire.chunks(chunk) {
        input.extend_from_slice(part);
        c.handle_input(Instant::ZERO, &mut input).unwrap();
        for ev in events(&mut c) {
            if let Event::Command(cmd) = ev {
                out.push(cmd.args.to_vec());
                c.send_reply(cmd.id, &Value::ok()).unwrap();
            }
        }
        output(&mut c);
    }
    assert!(input.is_empty());
    out
}

/// A 50k-argument command, a 1 MiB argument and a 60 KB inline command read in small
/// pieces give exactly the commands read whole.
#[test]
fn large_commands_in_small_reads() {
    let mut args: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), b"list".to_vec()];
    args.extend((0..50_000).map(|i| alloc::format!("item-{i}").into_bytes()));
    let mut wire = BytesMut::new();
    crate::encode_command(&args, &mut wire);
    crate::encode_command(&[&b"SET"[..], b"k", &vec![b'v'; 1 << 20]], &mut wire);
    wire.extend_from_slice(b"ECHO ");
    wire.extend_from_slice(&vec![b'a'; 60_000]);
    wire.extend_from_slice(b"\r\nPING\r\n");
    let whole = commands_in_reads(&wire, wire.len());
    assert_eq!(whole.len(), 4);
    assert_eq!(whole[0].len(), 50_002);
    assert_eq!(whole[2][1].len(), 60_000);
    assert_eq!(commands_in_reads(&wire, 4096), whole);
    assert_eq!(commands_in_reads(&wire, 1001), whole);
}

#[test]
fn input_wanted_is_the_rest_of_a_big_bulk() {
    let mut c = conn();
    assert_eq!(c.input_wanted(), 0);
    let mut rest = feed(&mut c, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\nabc").unwrap();
    assert!(events(&mut c).is_empty());
    // The whole payload and its CRLF, of which `rest` holds the first bytes.
    assert_eq!(c.input_wanted(), 1_000_002);
    assert_eq!(&rest[..], b"abc");
    rest.extend_from_slice(&vec![b'x'; 999_997]);
    rest.extend_from_slice(b"\r\n");
    c.handle_input(Instant::ZERO, &mut rest).unwrap();
    assert_eq!(c.input_wanted(), 0);
    assert_eq!(events(&mut c).len(), 1);
}
