use super::*;
use crate::StoreConfig;
use std::time::Duration;

fn args(s: &str) -> Vec<Bytes> {
    s.split(' ')
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect()
}

struct T {
    store: Store,
    client: ClientState,
    now: Instant,
}

impl T {
    fn new() -> T {
        let mut store = Store::new(StoreConfig::default(), Instant::ZERO);
        let client = store.new_client();
        T {
            store,
            client,
            now: Instant::ZERO,
        }
    }
    fn run(&mut self, s: &str) -> Value {
        self.store.execute(self.now, &mut self.client, &args(s))
    }
}

fn int(i: i64) -> Value {
    Value::Integer(i)
}

#[test]
fn strings_and_counters() {
    let mut t = T::new();
    assert_eq!(t.run("SET k v"), Value::ok());
    assert_eq!(t.run("GET k"), Value::bulk("v"));
    assert_eq!(t.run("SET k w NX"), Value::NullBulkString);
    assert_eq!(t.run("SET k w XX GET"), Value::bulk("v"));
    assert_eq!(t.run("APPEND k xyz"), int(4));
    assert_eq!(t.run("STRLEN k"), int(4));
    assert_eq!(t.run("GETSET k 10"), Value::bulk("wxyz"));
    assert_eq!(t.run("INCR k"), int(11));
    assert_eq!(t.run("DECRBY k 20"), int(-9));
    assert_eq!(t.run("INCR k k"), wrong_args("incr"));
    assert_eq!(t.run("SET big 9223372036854775807"), Value::ok());
    assert_eq!(t.run("INCR big"), err(OVERFLOW));
    assert_eq!(t.run("SET s abc"), Value::ok());
    assert_eq!(t.run("INCR s"), err(NOT_INT));
    assert_eq!(t.run("MSET a 1 b 2"), Value::ok());
    assert_eq!(
        t.run("MGET a b nope"),
        Value::Array(vec![
            Value::bulk("1"),
            Value::bulk("2"),
            Value::NullBulkString
        ])
    );
    assert_eq!(t.run("MSET a"), wrong_args("mset"));
    assert_eq!(t.run("DEL a b nope"), int(2));
    assert_eq!(t.run("EXISTS k k nope"), int(2));
    assert_eq!(t.run("LPUSH k x"), err(WRONGTYPE));
    assert_eq!(t.run("TYPE k"), Value::simple("string"));
    assert_eq!(
        t.run("FOO a b"),
        Value::error_fmt(format_args!(
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        ))
    );
}

#[test]
fn expiry_lazy_and_active() {
    let mut t = T::new();
    t.run("SET a 1 EX 10");
    t.run("SET b 1 PX 500");
    t.run("SET c 1");
    assert_eq!(t.run("TTL a"), int(10));
    assert_eq!(t.run("PTTL b"), int(500));
    assert_eq!(t.run("TTL c"), int(-1));
    assert_eq!(t.run("TTL nope"), int(-2));
    assert_eq!(
        t.run("SET x 1 EX 0"),
        err("ERR invalid expire time in 'set' command")
    );
    t.now += Duration::from_millis(600);
    assert_eq!(t.run("GET b"), Value::NullBulkString);
    assert_eq!(t.run("EXPIRE c 5"), int(1));
    assert_eq!(t.run("PERSIST c"), int(1));
    assert_eq!(t.run("PERSIST c"), int(0));
    assert_eq!(t.run("EXPIRE c 5 XX"), int(0));
    t.now += Duration::from_secs(20);
    assert_eq!(t.store.active_expire(t.now, 100), 1);
    assert_eq!(t.run("DBSIZE"), int(1));
    assert_eq!(t.run("PEXPIRE c -1"), int(1));
    assert_eq!(t.run("EXISTS c"), int(0));
}

#[test]
fn lists_sets_hashes() {
    let mut t = T::new();
    assert_eq!(t.run("RPUSH l a b c"), int(3));
    assert_eq!(t.run("LPUSH l z"), int(4));
    assert_eq!(t.run("LRANGE l 0 -1").as_slice().unwrap().len(), 4);
    assert_eq!(
        t.run("LRANGE l -2 100"),
        Value::Array(vec![Value::bulk("b"), Value::bulk("c")])
    );
    assert_eq!(t.run("LPOP l"), Value::bulk("z"));
    assert_eq!(
        t.run("RPOP l 2"),
        Value::Array(vec![Value::bulk("c"), Value::bulk("b")])
    );
    assert_eq!(t.run("LPOP l -1"), err(POSITIVE));
    assert_eq!(t.run("LPOP l"), Value::bulk("a"));
    assert_eq!(t.run("EXISTS l"), int(0));
    assert_eq!(t.run("LPOP l 2"), Value::NullArray);
    assert_eq!(t.run("SADD s a b a"), int(2));
    assert_eq!(t.run("SREM s a x"), int(1));
    assert_eq!(t.run("SCARD s"), int(1));
    assert_eq!(t.run("SPOP s"), Value::bulk("b"));
    assert_eq!(t.run("SPOP s 3"), Value::Set(vec![]));
    assert_eq!(t.run("HSET h f 1 g 2"), int(2));
    assert_eq!(t.run("HGET h f"), Value::bulk("1"));
    assert_eq!(t.run("HINCRBY h f 5"), int(6));
    assert_eq!(t.run("HSET h t x"), int(1));
    assert_eq!(
        t.run("HINCRBY h t 1"),
        err("ERR hash value is not an integer")
    );
    assert_eq!(t.run("HDEL h f g t"), int(3));
    assert_eq!(t.run("HGETALL h"), Value::Map(vec![]));
}

#[test]
fn sorted_sets_and_streams() {
    let mut t = T::new();
    assert_eq!(t.run("ZADD z 1 a 2 b 1.5 c"), int(3));
    assert_eq!(
        t.run("ZADD z NX XX 1 a"),
        err("ERR XX and NX options at the same time are not compatible")
    );
    assert_eq!(t.run("ZADD z x a"), err(NOT_FLOAT));
    assert_eq!(
        t.run("ZRANGE z 0 -1 WITHSCORES"),
        Value::Array(vec![
            Value::bulk("a"),
            Value::Double(1.0),
            Value::bulk("c"),
            Value::Double(1.5),
            Value::bulk("b"),
            Value::Double(2.0)
        ])
    );
    assert_eq!(
        t.run("ZRANGE z 0 0 REV"),
        Value::Array(vec![Value::bulk("b")])
    );
    assert_eq!(
        t.run("ZRANGE z (1 2 BYSCORE"),
        Value::Array(vec![Value::bulk("c"), Value::bulk("b")])
    );
    assert_eq!(t.run("ZADD z INCR 3 a"), Value::Double(4.0));
    assert_eq!(
        t.run("ZPOPMIN z"),
        Value::Array(vec![Value::bulk("c"), Value::Double(1.5)])
    );
    assert_eq!(t.run("ZCARD z"), int(2));
    assert_eq!(t.run("XADD st 1-1 f v"), Value::bulk("1-1"));
    assert_eq!(
        t.run("XADD st 1-1 f v"),
        err("ERR The ID specified in XADD is equal or smaller than the target stream top item")
    );
    assert_eq!(
        t.run("XADD st 0-0 f v"),
        err("ERR The ID specified in XADD must be greater than 0-0")
    );
    assert_eq!(t.run("XADD st MAXLEN 1 1-* f v"), Value::bulk("1-2"));
    assert_eq!(t.run("XLEN st"), int(1));
    assert_eq!(t.run("TYPE st"), Value::simple("stream"));
}

#[test]
fn scan_visits_everything() {
    let mut t = T::new();
    for i in 0..100 {
        t.run(&format!("SET key:{i} v"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor = "0".to_string();
    loop {
        let v = t.run(&format!("SCAN {cursor} COUNT 7 MATCH key:*"));
        let items = v.as_slice().unwrap();
        cursor = String::from_utf8(items[0].as_bytes().unwrap().to_vec()).unwrap();
        for k in items[1].as_slice().unwrap() {
            seen.insert(k.as_bytes().unwrap().clone());
        }
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 100);
    assert_eq!(t.run("SCAN x"), err("ERR invalid cursor"));
    assert_eq!(t.run("KEYS key:1?").as_slice().unwrap().len(), 10);
}

#[test]
fn multi_exec_and_client() {
    let mut t = T::new();
    assert_eq!(t.run("MULTI"), Value::ok());
    assert_eq!(t.run("SET a 1"), Value::simple("QUEUED"));
    assert_eq!(t.run("INCR a"), Value::simple("QUEUED"));
    assert_eq!(t.run("EXEC"), Value::Array(vec![Value::ok(), int(2)]));
    t.run("MULTI");
    t.run("NOPE");
    assert_eq!(
        t.run("EXEC"),
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(t.run("EXEC"), err("ERR EXEC without MULTI"));
    assert_eq!(t.run("CLIENT SETNAME bob"), Value::ok());
    assert_eq!(t.run("CLIENT GETNAME"), Value::bulk("bob"));
    assert_eq!(t.run("CLIENT ID"), int(1));
    assert_eq!(t.run("SELECT 0"), Value::ok());
    assert_eq!(t.run("SELECT 1"), err("ERR DB index is out of range"));
    assert!(matches!(t.run("HELLO 3"), Value::Map(_)));
    assert_eq!(t.client.proto, Protocol::Resp3);
    assert_eq!(t.run("COMMAND COUNT"), int(TABLE.len() as i64));
    assert!(matches!(t.run("CONFIG GET save"), Value::Map(m) if m.len() == 1));
}

/// WATCH: a write by anyone (the watcher included) before EXEC fails it; expiry deletions do
/// not count, a watched key that expired while still present does (Redis 7.0); EXEC,
/// DISCARD, UNWATCH, RESET and closing forget the watches; nothing is tracked for keys nobody
/// watches.
#[test]
fn watch_fails_exec_after_a_write() {
    let mut t = T::new();
    let mut other = t.store.new_client();
    let mut o = |t: &mut T, s: &str| t.store.execute(t.now, &mut other, &args(s));
    t.run("SET k 1");
    assert_eq!(t.run("WATCH k nokey"), Value::ok());
    assert_eq!(t.store.watched.len(), 2);
    o(&mut t, "GET k");
    o(&mut t, "SET nokey2 x");
    t.run("MULTI");
    assert_eq!(t.run("EXEC"), Value::Array(vec![]));
    assert!(t.store.watched.is_empty() && t.client.watching.is_empty());
    t.run("WATCH k");
    o(&mut t, "SET k 2");
    t.run("MULTI");
    t.run("GET k");
    assert_eq!(t.run("EXEC"), Value::NullArray);
    assert!(t.store.dirty_cas.is_empty());
    // The watcher's own write counts too.
    t.run("WATCH k");
    t.run("INCR k");
    t.run("MULTI");
    assert_eq!(t.run("EXEC"), Value::NullArray);
    // UNWATCH forgets.
    t.run("WATCH k");
    o(&mut t, "SET k 3");
    t.run("UNWATCH");
    t.run("MULTI");
    assert_eq!(t.run("EXEC"), Value::Array(vec![]));
    // WATCH inside MULTI is refused without aborting the transaction.
    t.run("MULTI");
    assert_eq!(
        t.run("WATCH k"),
        err("ERR WATCH inside MULTI is not allowed")
    );
    t.run("GET k");
    assert_eq!(t.run("EXEC"), Value::Array(vec![Value::bulk("3")]));
    // Lazy or active expiry is no write; a watched key past its deadline still fails EXEC.
    t.run("SET e 1 PX 100");
    t.run("WATCH e");
    t.now += Duration::from_millis(200);
    t.run("MULTI");
    assert_eq!(t.run("EXEC"), Value::NullArray);
    t.run("SET e 1 PX 100");
    t.run("WATCH e");
    t.now += Duration::from_millis(200);
    assert_eq!(t.store.active_expire(t.now, 10), 1);
    t.run("MULTI");
    assert_eq!(t.run("EXEC"), Value::Array(vec![]));
    // FLUSHDB touches the watched keys that existed only.
    t.run("SET f 1");
    t.run("WATCH f gone");
    o(&mut t, "FLUSHDB");
    t.run("MULTI");
    assert_eq!(t.run("EXEC"), Value::NullArray);
    t.run("WATCH gone");
    o(&mut t, "FLUSHALL");
    t.run("MULTI");
    assert_eq!(t.run("EXEC"), Value::Array(vec![]));
    // Closing or RESET drops the watches.
    t.run("WATCH a b");
    t.store.reset_client(&mut t.client);
    assert!(t.store.watched.is_empty());
    let mut gone = t.store.new_client();
    t.store.execute(t.now, &mut gone, &args("WATCH z"));
    o(&mut t, "SET z 1");
    t.store.remove_client(&gone);
    assert!(t.store.watched.is_empty() && t.store.dirty_cas.is_empty());
}

/// SUBSCRIBE queued by MULTI runs at EXEC: the broker learns it, the reply is the request as
/// a push for the connection to confirm.
#[test]
fn pubsub_queued_in_multi() {
    let mut t = T::new();
    t.run("MULTI");
    assert_eq!(t.run("SUBSCRIBE a b"), Value::simple("QUEUED"));
    t.run("SSUBSCRIBE s");
    t.run("UNSUBSCRIBE");
    let v = t.run("EXEC");
    assert_eq!(
        v,
        Value::Array(vec![
            Value::Push(vec![
                Value::bulk("subscribe"),
                Value::bulk("a"),
                Value::bulk("b")
            ]),
            err("ERR SSUBSCRIBE isn't allowed for a DENY BLOCKING client"),
            Value::Push(vec![Value::bulk("unsubscribe")]),
        ])
    );
    assert!(t.store.broker.channels.is_empty());
}

/// With `inline_own_messages`, a RESP3 client's own messages come in its PUBLISH reply, and
/// any client's inside its EXEC array; other clients' stay queued.
#[test]
fn own_messages_are_inlined() {
    let cfg = StoreConfig {
        inline_own_messages: true,
        ..Default::default()
    };
    let mut store = Store::new(cfg, Instant::ZERO);
    let mut me = store.new_client();
    let other = store.new_client();
    let ch = [Bytes::from_static(b"c")];
    store.subscribe(me.id, ferry_resp::SubKind::Channel, &ch);
    store.subscribe(other.id, ferry_resp::SubKind::Channel, &ch);
    let msg = Value::Push(vec![
        Value::bulk("message"),
        Value::bulk("c"),
        Value::bulk("m"),
    ]);
    let run = |s: &mut Store, me: &mut ClientState, c: &str| s.execute(Instant::ZERO, me, &args(c));
    // RESP2 outside EXEC: unchanged.
    assert_eq!(run(&mut store, &mut me, "PUBLISH c m"), int(2));
    assert_eq!(store.take_deliveries().len(), 2);
    run(&mut store, &mut me, "HELLO 3");
    assert_eq!(
        run(&mut store, &mut me, "PUBLISH c m"),
        Value::Push(vec![msg.clone(), int(2)])
    );
    assert_eq!(store.take_deliveries()[0].client, other.id);
    run(&mut store, &mut me, "MULTI");
    run(&mut store, &mut me, "PUBLISH c m");
    run(&mut store, &mut me, "PUBLISH nobody m");
    assert_eq!(
        run(&mut store, &mut me, "EXEC"),
        Value::Push(vec![Value::Array(vec![
            Value::Push(vec![msg, int(2)]),
            int(0)
        ])])
    );
    assert_eq!(store.take_deliveries().len(), 1);
}

#[test]
fn publish_fans_out() {
    let mut t = T::new();
    t.store.subscribe(
        7,
        ferry_resp::SubKind::Channel,
        &[Bytes::from_static(b"news")],
    );
    t.store.subscribe(
        8,
        ferry_resp::SubKind::Pattern,
        &[Bytes::from_static(b"n*")],
    );
    assert_eq!(t.run("PUBLISH news hi"), int(2));
    let d = t.store.take_deliveries();
    assert_eq!(d.len(), 2);
    assert!(d
        .iter()
        .any(|d| d.client == 8 && d.pattern.as_deref() == Some(&b"n*"[..])));
    t.store.unsubscribe(
        7,
        ferry_resp::SubKind::Channel,
        &[Bytes::from_static(b"news")],
    );
    assert_eq!(t.run("PUBLISH news hi"), int(1));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_commands_never_panic(cmds in proptest::collection::vec(
            (prop::sample::select(TABLE.iter().map(|t| t.0).collect::<Vec<_>>()),
             proptest::collection::vec("[a-c0-9*:\\-]{0,4}", 0..5)), 0..40)) {
            let mut t = T::new();
            for (name, rest) in cmds {
                let mut a = vec![Bytes::from(name.to_string())];
                a.extend(rest.into_iter().map(Bytes::from));
                let _ = t.store.execute(t.now, &mut t.client, &a);
            }
        }
    }
}

#[test]
fn store_and_client_state_are_send() {
    fn send<T: Send>() {}
    send::<Store>();
    send::<ClientState>();
}

#[test]
fn every_command_name_is_found_in_any_case() {
    for t in TABLE {
        let upper = t.0.to_ascii_uppercase();
        let mixed: String =
            t.0.chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
        for n in [t.0, upper.as_str(), mixed.as_str()] {
            assert_eq!(find_command(n.as_bytes()).map(|e| e.0), Some(t.0), "{n}");
        }
    }
    for n in [
        &b""[..],
        b"ge",
        b"gett",
        b"get\0",
        b"\0",
        b"averyverylongcommandname",
    ] {
        assert!(find_command(n).is_none(), "{n:?}");
    }
}

/// fuzz/regressions/kv_commands/xadd-seq-exhausted: `XADD k <ms>-*` after `<ms>-<u64::MAX>`
/// overflowed the sequence (a panic with debug assertions); Redis refuses it (EDOM).
#[test]
fn xadd_auto_sequence_exhausted() {
    let mut t = T::new();
    let top = "5-18446744073709551615";
    assert_eq!(t.run(&format!("XADD st {top} f v")), Value::bulk(top));
    assert_eq!(
        t.run("XADD st 5-* f v"),
        err("ERR The ID specified in XADD is equal or smaller than the target stream top item")
    );
    assert_eq!(t.run("XADD st 6-* f v"), Value::bulk("6-0"));
}

/// APPEND is bounded by `proto-max-bulk-len` like SETRANGE (Redis's `checkStringLength`):
/// the `kv_commands` fuzz target checks that no string outgrows it.
#[test]
fn append_respects_proto_max_bulk_len() {
    let config = StoreConfig {
        proto_max_bulk_len: 8,
        ..StoreConfig::default()
    };
    let mut store = Store::new(config, Instant::ZERO);
    let mut c = store.new_client();
    let mut run = |s: &str| store.execute(Instant::ZERO, &mut c, &args(s));
    assert_eq!(run("APPEND k 12345"), int(5));
    assert_eq!(run("APPEND k 678"), int(8));
    assert_eq!(
        run("APPEND k 9"),
        err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    );
    assert_eq!(
        run("SETRANGE k 8 x"),
        err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    );
    assert_eq!(run("STRLEN k"), int(8));
}
