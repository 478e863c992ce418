//! Our `ClientConnection` against a real `redis-server`: every contract command (with Redis's
//! known replies), pipelining, HELLO with AUTH, MULTI/EXEC, pub/sub in RESP2 and RESP3 pushes.
//! (The differential test sends a longer script through the same client.)

mod common;

use common::{start_redis, Client};
use ferry_proto::Connection;
use ferry_resp::client::Event;
use ferry_resp::{Protocol, Value};

fn int(i: i64) -> Value {
    Value::Integer(i)
}

#[test]
fn every_contract_command() {
    let redis = start_redis();
    let mut c = Client::connect(redis.addr);
    let ok = Value::ok();
    let cases: &[(&str, Value)] = &[
        ("FLUSHALL", ok.clone()),
        ("PING", Value::simple("PONG")),
        ("ECHO hi", Value::bulk("hi")),
        ("SET k v", ok.clone()),
        ("SET k w NX", Value::NullBulkString),
        ("SET k w XX GET", Value::bulk("v")),
        ("SET e 1 EX 100", ok.clone()),
        ("SET p 1 PX 100000", ok.clone()),
        ("GET k", Value::bulk("w")),
        ("GETSET k z", Value::bulk("w")),
        ("DEL p nokey", int(1)),
        ("EXISTS k e nokey", int(2)),
        ("INCR n", int(1)),
        ("INCRBY n 9", int(10)),
        ("DECR n", int(9)),
        ("DECRBY n 4", int(5)),
        ("MSET a 1 b 2", ok.clone()),
        (
            "MGET a b nokey",
            Value::Array(vec![
                Value::bulk("1"),
                Value::bulk("2"),
                Value::NullBulkString,
            ]),
        ),
        ("APPEND a 23", int(3)),
        ("STRLEN a", int(3)),
        ("EXPIRE a 100", int(1)),
        ("PEXPIRE b 100000", int(1)),
        ("PERSIST a", int(1)),
        ("TTL a", int(-1)),
        ("PTTL nokey", int(-2)),
        ("TYPE k", Value::simple("string")),
        ("LPUSH l b a", int(2)),
        ("RPUSH l c", int(3)),
        ("LLEN l", int(3)),
        (
            "LRANGE l 0 -1",
            Value::Array(vec![Value::bulk("a"), Value::bulk("b"), Value::bulk("c")]),
        ),
        ("LPOP l", Value::bulk("a")),
        ("RPOP l", Value::bulk("c")),
        ("SADD s x y", int(2)),
        ("SREM s y", int(1)),
        ("SMEMBERS s", Value::Array(vec![Value::bulk("x")])),
        ("SCARD s", int(1)),
        ("SPOP s", Value::bulk("x")),
        ("HSET h f 1", int(1)),
        ("HGET h f", Value::bulk("1")),
        ("HINCRBY h f 2", int(3)),
        (
            "HGETALL h",
            Value::Array(vec![Value::bulk("f"), Value::bulk("3")]),
        ),
        ("HDEL h f", int(1)),
        ("ZADD z 2 b 1 a", int(2)),
        (
            "ZRANGE z 0 -1",
            Value::Array(vec![Value::bulk("a"), Value::bulk("b")]),
        ),
        (
            "ZPOPMIN z",
            Value::Array(vec![Value::bulk("a"), Value::bulk("1")]),
        ),
        ("ZCARD z", int(1)),
        ("XADD st 1-1 f v", Value::bulk("1-1")),
        ("PUBLISH nobody msg", int(0)),
        ("SELECT 0", ok.clone()),
        ("CLIENT SETNAME me", ok.clone()),
        ("CLIENT GETNAME", Value::bulk("me")),
        (
            "CONFIG GET appendonly",
            Value::Array(vec![Value::bulk("appendonly"), Value::bulk("no")]),
        ),
        (
            "INCR k",
            Value::error("ERR value is not an integer or out of range"),
        ),
        (
            "LPUSH k x",
            Value::error("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(&c.run(line), want, "{line}");
    }
    // Replies whose content Redis decides.
    assert!(matches!(c.run("DBSIZE"), Value::Integer(n) if n > 5));
    assert!(matches!(c.run("KEYS *"), Value::Array(k) if k.len() > 5));
    assert!(matches!(c.run("SCAN 0 COUNT 100"), Value::Array(v) if v.len() == 2));
    assert!(matches!(c.run("CLIENT ID"), Value::Integer(_)));
    assert!(matches!(c.run("INFO server"), Value::BulkString(b) if b.starts_with(b"# Server")));
    assert!(matches!(c.run("COMMAND COUNT"), Value::Integer(n) if n > 100));
    assert!(matches!(c.run("COMMAND DOCS get"), Value::Array(_)));
    assert!(matches!(c.run("TTL e"), Value::Integer(n) if n > 0));
    assert_eq!(c.run("FLUSHDB"), ok);
    assert_eq!(c.run("RESET"), Value::simple("RESET"));
    assert_eq!(c.run("QUIT"), ok);
}

#[test]
fn deep_pipeline_correlates() {
    let redis = start_redis();
    let mut c = Client::connect(redis.addr);
    let ids: Vec<_> = (0..5000)
        .map(|i| {
            c.conn
                .send_command(
                    ferry_proto::Instant::ZERO,
                    &["INCR".to_string(), format!("k{}", i % 10)],
                )
                .unwrap()
        })
        .collect();
    c.flush();
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(c.reply(id), int(i as i64 / 10 + 1));
    }
}

#[test]
fn hello_auth_and_resp3_types() {
    let redis = start_redis();
    let mut c = Client::connect(redis.addr);
    let id = c
        .conn
        .hello(
            ferry_proto::Instant::ZERO,
            Some(Protocol::Resp3),
            Some((b"nobody", b"pw")),
            None,
        )
        .unwrap();
    c.flush();
    assert!(matches!(c.reply(id), Value::Error(e) if e.starts_with(b"WRONGPASS")));
    assert_eq!(c.conn.protocol(), Protocol::Resp2);
    // The default user has no password: any password authenticates it.
    let id = c
        .conn
        .hello(
            ferry_proto::Instant::ZERO,
            Some(Protocol::Resp3),
            Some((b"default", b"anything")),
            Some(b"ferry"),
        )
        .unwrap();
    c.flush();
    let Value::Map(info) = c.reply(id) else {
        panic!("HELLO 3 replies with a map")
    };
    assert!(info.contains(&(Value::bulk("proto"), int(3))));
    assert_eq!(c.conn.protocol(), Protocol::Resp3);
    c.run("HSET h f v");
    assert_eq!(
        c.run("HGETALL h"),
        Value::Map(vec![(Value::bulk("f"), Value::bulk("v"))])
    );
    c.run("ZADD z 1.5 a");
    assert_eq!(
        c.run("ZRANGE z 0 -1 WITHSCORES"),
        Value::Array(vec![Value::Array(vec![
            Value::bulk("a"),
            Value::Double(1.5)
        ])])
    );
    assert_eq!(c.run("GET nokey"), Value::Null);
    assert_eq!(c.run("CLIENT GETNAME"), Value::bulk("ferry"));
    assert_eq!(c.run("RESET"), Value::simple("RESET"));
    assert_eq!(c.conn.protocol(), Protocol::Resp2);
    assert_eq!(c.run("GET nokey"), Value::NullBulkString);
}

#[test]
fn multi_exec_transaction() {
    let redis = start_redis();
    let mut c = Client::connect(redis.addr);
    let id = c
        .conn
        .send_transaction(
            ferry_proto::Instant::ZERO,
            &[
                &["SET", "t", "1"][..],
                &["INCR", "t"][..],
                &["GET", "t"][..],
            ],
        )
        .unwrap();
    c.flush();
    assert_eq!(
        c.reply(id),
        Value::Array(vec![Value::ok(), int(2), Value::bulk("2")])
    );
    let id = c
        .conn
        .send_transaction(
            ferry_proto::Instant::ZERO,
            &[&["SET", "t", "1"][..], &["NOSUCH"][..]],
        )
        .unwrap();
    c.flush();
    assert!(matches!(c.reply(id), Value::Error(e) if e.starts_with(b"EXECABORT")));
}

fn pubsub(resp3: bool) {
    let redis = start_redis();
    let mut sub = Client::connect(redis.addr);
    let mut publ = Client::connect(redis.addr);
    if resp3 {
        let id = sub
            .conn
            .hello(
                ferry_proto::Instant::ZERO,
                Some(Protocol::Resp3),
                None,
                None,
            )
            .unwrap();
        sub.flush();
        sub.reply(id);
    }
    let Value::Array(frames) = sub.run("SUBSCRIBE a b") else {
        panic!()
    };
    assert_eq!(frames.len(), 2);
    let Value::Array(frames) = sub.run("PSUBSCRIBE p*") else {
        panic!()
    };
    assert_eq!(frames.len(), 1);
    assert!(sub.conn.is_subscribed());
    assert_eq!(publ.run("PUBLISH a hello"), int(1));
    assert_eq!(publ.run("PUBLISH px pat"), int(1));
    let m = sub.next_push();
    assert_eq!(
        m.as_slice().unwrap(),
        [
            Value::bulk("message"),
            Value::bulk("a"),
            Value::bulk("hello")
        ]
    );
    assert_eq!(matches!(m, Value::Push(_)), resp3);
    let m = sub.next_push();
    assert_eq!(m.as_slice().unwrap()[0], Value::bulk("pmessage"));
    if resp3 {
        // RESP3 allows any command while subscribed; replies and pushes stay apart.
        assert_eq!(sub.run("SET x 1"), Value::ok());
    } else {
        assert_eq!(
            sub.run("GET x"),
            Value::error("ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
        );
        assert_eq!(
            sub.run("PING"),
            Value::Array(vec![Value::bulk("pong"), Value::bulk("")])
        );
    }
    let Value::Array(frames) = sub.run("UNSUBSCRIBE") else {
        panic!()
    };
    assert_eq!(frames.len(), 2);
    let Value::Array(frames) = sub.run("PUNSUBSCRIBE") else {
        panic!()
    };
    assert_eq!(frames[0].as_slice().unwrap()[2], int(0));
    assert!(!sub.conn.is_subscribed());
    assert_eq!(sub.run("PING"), Value::simple("PONG"));
    assert!(sub
        .conn
        .poll_event()
        .is_none_or(|e| !matches!(e, Event::Error(_))));
}

#[test]
fn pubsub_resp2() {
    pubsub(false);
}

#[test]
fn pubsub_resp3_push() {
    pubsub(true);
}

#[test]
fn client_tracking_push_is_separated() {
    let redis = start_redis();
    let mut c = Client::connect(redis.addr);
    let id = c
        .conn
        .hello(
            ferry_proto::Instant::ZERO,
            Some(Protocol::Resp3),
            None,
            None,
        )
        .unwrap();
    c.flush();
    c.reply(id);
    assert_eq!(c.run("CLIENT TRACKING on"), Value::ok());
    c.run("SET tracked 1");
    c.run("GET tracked");
    let mut other = Client::connect(redis.addr);
    other.run("SET tracked 2");
    // The invalidation push arrives out of band; the next reply still correlates.
    let id = c
        .conn
        .send_command(ferry_proto::Instant::ZERO, &["PING"])
        .unwrap();
    c.flush();
    let mut saw_push = false;
    loop {
        match c.next_event() {
            Event::Push(v) => {
                assert_eq!(v.as_slice().unwrap()[0], Value::bulk("invalidate"));
                saw_push = true;
            }
            Event::Reply { id: got, value } => {
                assert_eq!((got, value), (id, Value::simple("PONG")));
                break;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    if !saw_push {
        // The push may trail the PONG; wait for it.
        assert_eq!(
            c.next_push().as_slice().unwrap()[0],
            Value::bulk("invalidate")
        );
    }
}
