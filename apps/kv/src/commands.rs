//! Command implementations, with Redis 7.0's arities, replies and error texts.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_proto::Instant;
use ferry_resp::{Protocol, Value};

use crate::types::{Data, IndexedSet, Stream, StreamId, ZSet};
use crate::{glob, longdouble, ClientState, Store};

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const SYNTAX: &str = "ERR syntax error";
const NOT_FLOAT: &str = "ERR value is not a valid float";
const POSITIVE: &str = "ERR value is out of range, must be positive";

/// (name, arity, group, summary): Redis's arity convention (negative: at least).
pub(crate) const TABLE: &[(&str, i32, &str, &str)] = &[
    (
        "ping",
        -1,
        "connection",
        "Returns the server's liveliness response.",
    ),
    ("echo", 2, "connection", "Returns the given string."),
    (
        "hello",
        -1,
        "connection",
        "Handshakes with the Redis server.",
    ),
    ("select", 2, "connection", "Changes the selected database."),
    (
        "client",
        -2,
        "connection",
        "A container for client connection commands.",
    ),
    ("auth", -2, "connection", "Authenticates the connection."),
    ("quit", -1, "connection", "Closes the connection."),
    ("reset", 1, "connection", "Resets the connection."),
    ("set", -3, "string", "Sets the string value of a key."),
    ("get", 2, "string", "Returns the string value of a key."),
    (
        "getset",
        3,
        "string",
        "Returns the previous string value of a key after setting it to a new value.",
    ),
    (
        "setnx",
        3,
        "string",
        "Set the string value of a key only when the key doesn't exist.",
    ),
    (
        "incr",
        2,
        "string",
        "Increments the integer value of a key by one.",
    ),
    (
        "incrby",
        3,
        "string",
        "Increments the integer value of a key by a number.",
    ),
    (
        "decr",
        2,
        "string",
        "Decrements the integer value of a key by one.",
    ),
    (
        "decrby",
        3,
        "string",
        "Decrements a number from the integer value of a key.",
    ),
    (
        "mget",
        -2,
        "string",
        "Atomically returns the string values of one or more keys.",
    ),
    (
        "mset",
        -3,
        "string",
        "Atomically creates or modifies the string values of one or more keys.",
    ),
    (
        "append",
        3,
        "string",
        "Appends a string to the value of a key.",
    ),
    (
        "strlen",
        2,
        "string",
        "Returns the length of a string value.",
    ),
    ("del", -2, "generic", "Deletes one or more keys."),
    (
        "exists",
        -2,
        "generic",
        "Determines whether one or more keys exist.",
    ),
    (
        "expire",
        -3,
        "generic",
        "Sets the expiration time of a key in seconds.",
    ),
    (
        "pexpire",
        -3,
        "generic",
        "Sets the expiration time of a key in milliseconds.",
    ),
    (
        "expireat",
        -3,
        "generic",
        "Sets the expiration time of a key to a Unix timestamp.",
    ),
    (
        "pexpireat",
        -3,
        "generic",
        "Sets the expiration time of a key to a Unix milliseconds timestamp.",
    ),
    (
        "ttl",
        2,
        "generic",
        "Returns the expiration time in seconds of a key.",
    ),
    (
        "pttl",
        2,
        "generic",
        "Returns the expiration time in milliseconds of a key.",
    ),
    (
        "persist",
        2,
        "generic",
        "Removes the expiration time of a key.",
    ),
    (
        "keys",
        2,
        "generic",
        "Returns all key names that match a pattern.",
    ),
    (
        "scan",
        -2,
        "generic",
        "Iterates over the key names in the database.",
    ),
    (
        "type",
        2,
        "generic",
        "Determines the type of value stored at a key.",
    ),
    (
        "dbsize",
        1,
        "server",
        "Returns the number of keys in the database.",
    ),
    (
        "flushdb",
        -1,
        "server",
        "Remove all keys from the current database.",
    ),
    (
        "flushall",
        -1,
        "server",
        "Removes all keys from all databases.",
    ),
    (
        "info",
        -1,
        "server",
        "Returns information and statistics about the server.",
    ),
    (
        "config",
        -2,
        "server",
        "A container for server configuration commands.",
    ),
    (
        "command",
        -1,
        "server",
        "Returns detailed information about all commands.",
    ),
    ("time", 1, "server", "Returns the server time."),
    (
        "lpush",
        -3,
        "list",
        "Prepends one or more elements to a list.",
    ),
    (
        "rpush",
        -3,
        "list",
        "Appends one or more elements to a list.",
    ),
    (
        "lpop",
        -2,
        "list",
        "Returns the first elements in a list after removing it.",
    ),
    (
        "rpop",
        -2,
        "list",
        "Returns and removes the last elements of a list.",
    ),
    ("llen", 2, "list", "Returns the length of a list."),
    (
        "lrange",
        4,
        "list",
        "Returns a range of elements from a list.",
    ),
    ("sadd", -3, "set", "Adds one or more members to a set."),
    ("srem", -3, "set", "Removes one or more members from a set."),
    ("smembers", 2, "set", "Returns all members of a set."),
    ("scard", 2, "set", "Returns the number of members in a set."),
    (
        "sismember",
        3,
        "set",
        "Determines whether a member belongs to a set.",
    ),
    (
        "spop",
        -2,
        "set",
        "Returns one or more random members from a set after removing them.",
    ),
    (
        "hset",
        -4,
        "hash",
        "Creates or modifies the value of a field in a hash.",
    ),
    ("hget", 3, "hash", "Returns the value of a field in a hash."),
    (
        "hdel",
        -3,
        "hash",
        "Deletes one or more fields and their values from a hash.",
    ),
    (
        "hgetall",
        2,
        "hash",
        "Returns all fields and values in a hash.",
    ),
    ("hlen", 2, "hash", "Returns the number of fields in a hash."),
    (
        "hincrby",
        4,
        "hash",
        "Increments the integer value of a field in a hash by a number.",
    ),
    (
        "zadd",
        -4,
        "sorted-set",
        "Adds one or more members to a sorted set, or updates their scores.",
    ),
    (
        "zrange",
        -4,
        "sorted-set",
        "Returns members in a sorted set within a range of indexes.",
    ),
    (
        "zpopmin",
        -2,
        "sorted-set",
        "Returns the lowest-scoring members from a sorted set after removing them.",
    ),
    (
        "zcard",
        2,
        "sorted-set",
        "Returns the number of members in a sorted set.",
    ),
    (
        "zscore",
        3,
        "sorted-set",
        "Returns the score of a member in a sorted set.",
    ),
    ("xadd", -5, "stream", "Appends a new message to a stream."),
    (
        "xlen",
        2,
        "stream",
        "Return the number of messages in a stream.",
    ),
    ("publish", 3, "pubsub", "Posts a message to a channel."),
    (
        "spublish",
        3,
        "pubsub",
        "Post a message to a shard channel.",
    ),
    (
        "subscribe",
        -2,
        "pubsub",
        "Listens for messages published to channels.",
    ),
    (
        "unsubscribe",
        -1,
        "pubsub",
        "Stops listening to messages posted to channels.",
    ),
    (
        "psubscribe",
        -2,
        "pubsub",
        "Listens for messages published to channels that match one or more patterns.",
    ),
    (
        "punsubscribe",
        -1,
        "pubsub",
        "Stops listening to messages published to channels that match one or more patterns.",
    ),
    (
        "ssubscribe",
        -2,
        "pubsub",
        "Listens for messages published to shard channels.",
    ),
    (
        "sunsubscribe",
        -1,
        "pubsub",
        "Stops listening to messages posted to shard channels.",
    ),
    ("multi", 1, "transactions", "Starts a transaction."),
    (
        "watch",
        -2,
        "transactions",
        "Monitors changes to keys to determine the execution of a transaction.",
    ),
    (
        "unwatch",
        1,
        "transactions",
        "Forgets about watched keys of a transaction.",
    ),
    (
        "expiretime",
        2,
        "generic",
        "Returns the expiration time of a key as a Unix timestamp.",
    ),
    (
        "pexpiretime",
        2,
        "generic",
        "Returns the expiration time of a key as a Unix milliseconds timestamp.",
    ),
    (
        "incrbyfloat",
        3,
        "string",
        "Increment the floating point value of a key by a number.",
    ),
    (
        "getrange",
        4,
        "string",
        "Returns a substring of the string stored at a key.",
    ),
    (
        "substr",
        4,
        "string",
        "Returns a substring from a string value.",
    ),
    (
        "setrange",
        4,
        "string",
        "Overwrites a part of a string value with another by an offset.",
    ),
    (
        "exec",
        1,
        "transactions",
        "Executes all commands in a transaction.",
    ),
    ("discard", 1, "transactions", "Discards a transaction."),
];

fn lower(name: &[u8]) -> String {
    name.iter()
        .map(|c| c.to_ascii_lowercase() as char)
        .collect()
}

fn err(s: &'static str) -> Value {
    Value::error(s)
}

fn wrong_args(name: &str) -> Value {
    Value::error_fmt(format_args!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// Redis's `string2ll`: optional `-`, no `+`, no leading zeros, no overflow.
pub(crate) fn parse_int(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty()
        || digits.len() > 19
        || (digits[0] == b'0' && s.len() > 1)
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Redis's `getDoubleFromObject`: strtod semantics, no leading space, no NaN.
pub(crate) fn parse_float(s: &[u8]) -> Option<f64> {
    let t = std::str::from_utf8(s).ok()?;
    if t.is_empty()
        || t.starts_with(|c: char| c.is_whitespace())
        || t.ends_with(|c: char| c.is_whitespace())
    {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    let v: f64 = match lower.trim_start_matches(['+', '-']) {
        "inf" | "infinity" => {
            if lower.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }
        }
        _ => {
            if lower.contains("inf") || lower.contains("nan") {
                return None;
            }
            let v: f64 = lower.parse().ok()?;
            // strtod reports ERANGE for overflow; Redis rejects it.
            if v.is_infinite() {
                return None;
            }
            v
        }
    };
    (!v.is_nan()).then_some(v)
}

fn int_arg(s: &[u8]) -> Result<i64, Value> {
    parse_int(s).ok_or_else(|| err(NOT_INT))
}

/// Redis's `getPositiveLongFromObjectOrReply`: one message for "not a number" and "< 0".
fn positive_arg(s: &[u8]) -> Result<i64, Value> {
    match parse_int(s) {
        Some(n) if n >= 0 => Ok(n),
        _ => Err(err(POSITIVE)),
    }
}

fn fmt_int(i: i64) -> Bytes {
    Bytes::from(i.to_string())
}

/// The value at `key` if its type passes `check` (WRONGTYPE otherwise), created with `make`
/// when missing.
fn get_or_create<'a>(
    store: &'a mut Store,
    now: Instant,
    key: &Bytes,
    check: fn(&Data) -> bool,
    make: fn() -> Data,
) -> Result<&'a mut Data, Value> {
    let exists = match store.lookup(now, key) {
        None => false,
        Some(e) if check(&e.data) => true,
        Some(_) => return Err(err(WRONGTYPE)),
    };
    if !exists {
        store.store(key, make(), false);
    }
    store
        .db
        .get_mut(key)
        .map(|e| &mut e.data)
        .ok_or_else(|| err("ERR internal"))
}

fn bulk(b: &Bytes) -> Value {
    Value::BulkString(b.clone())
}

fn null_bulk() -> Value {
    Value::NullBulkString
}

type R = Result<Value, Value>;

/// A command name folded to lower case in a `u128` (little-endian, zero-padded): names are
/// at most 15 bytes. `None` for longer names or a NUL byte (no command has either).
fn name_key(name: &[u8]) -> Option<u128> {
    if name.len() > 15 {
        return None;
    }
    let mut b = [0u8; 16];
    for (d, &c) in b.iter_mut().zip(name) {
        if c == 0 {
            return None;
        }
        *d = c.to_ascii_lowercase();
    }
    Some(u128::from_le_bytes(b))
}

/// The [`TABLE`] entry for `raw` (any case), by binary search on [`name_key`]s: no
/// allocation, no scan of the table.
fn find_command(raw: &[u8]) -> Option<&'static (&'static str, i32, &'static str, &'static str)> {
    static INDEX: std::sync::OnceLock<Vec<(u128, u16)>> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let mut v: Vec<(u128, u16)> = TABLE
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((name_key(t.0.as_bytes())?, i as u16)))
            .collect();
        v.sort_unstable();
        v
    });
    let key = name_key(raw)?;
    let i = index.binary_search_by_key(&key, |e| e.0).ok()?;
    TABLE.get(usize::from(index[i].1))
}

pub(crate) fn execute(
    store: &mut Store,
    now: Instant,
    client: &mut ClientState,
    args: &[Bytes],
) -> Value {
    // No allocation: the table's own lower-case name is used from here on.
    let raw = &args[0];
    let Some(&(name, arity, _, _)) = find_command(raw) else {
        let mut rest = String::new();
        for a in &args[1..] {
            if rest.len() >= 128 {
                break;
            }
            let room = 128 - rest.len();
            let s = String::from_utf8_lossy(a);
            let s: String = s.chars().take(room).collect();
            rest.push_str(&format!("'{s}' "));
        }
        let shown: String = String::from_utf8_lossy(&args[0])
            .chars()
            .take(128)
            .collect();
        if client.multi.is_some() {
            client.multi_dirty = true;
        }
        return Value::error_fmt(format_args!(
            "ERR unknown command '{shown}', with args beginning with: {rest}"
        ));
    };
    let argc = args.len() as i32;
    if (arity > 0 && argc != arity) || argc < -arity {
        if client.multi.is_some() {
            client.multi_dirty = true;
        }
        return wrong_args(name);
    }
    if client.multi.is_some()
        && !matches!(
            name,
            "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
        )
    {
        if let Some(q) = client.multi.as_mut() {
            q.push(args.to_vec());
        }
        return Value::simple("QUEUED");
    }
    match run(store, now, client, name, args) {
        Ok(v) | Err(v) => v,
    }
}

fn run(store: &mut Store, now: Instant, client: &mut ClientState, name: &str, a: &[Bytes]) -> R {
    let r3 = client.proto == Protocol::Resp3;
    Ok(match name {
        "ping" if a.len() > 2 => return Err(wrong_args("ping")),
        "ping" => match a.get(1) {
            Some(m) => bulk(m),
            None => Value::simple("PONG"),
        },
        "echo" => bulk(&a[1]),
        "hello" => return hello(store, client, a),
        "select" => {
            let n = int_arg(&a[1]).map_err(|_| err(NOT_INT))?;
            if n != 0 {
                return Err(err("ERR DB index is out of range"));
            }
            Value::ok()
        }
        "auth" => return auth(a),
        "quit" => Value::ok(),
        "reset" => {
            store.reset_client(client);
            Value::simple("RESET")
        }
        "client" => return client_cmd(client, a),
        "multi" => {
            if client.multi.is_some() {
                return Err(err("ERR MULTI calls can not be nested"));
            }
            client.multi = Some(Vec::new());
            client.multi_dirty = false;
            Value::ok()
        }
        "discard" => {
            if client.multi.take().is_none() {
                return Err(err("ERR DISCARD without MULTI"));
            }
            store.unwatch_all(client);
            Value::ok()
        }
        "exec" => {
            let Some(q) = client.multi.take() else {
                return Err(err("ERR EXEC without MULTI"));
            };
            if std::mem::take(&mut client.multi_dirty) {
                store.unwatch_all(client);
                return Err(err(
                    "EXECABORT Transaction discarded because of previous errors.",
                ));
            }
            let failed = store.watch_failed(now, client);
            store.unwatch_all(client);
            if failed {
                // A null array: `*-1` in RESP2, `_` in RESP3.
                return Ok(Value::NullArray);
            }
            let mut out = Vec::with_capacity(q.len());
            let mut inlined = false;
            for cmd in q {
                let mut v = execute(store, now, client, &cmd);
                if store.has_deliveries() && store.config.inline_own_messages {
                    v = store.own_messages_first(client.id, v);
                    inlined |=
                        matches!(&v, Value::Push(p) if matches!(p.first(), Some(Value::Push(_))));
                }
                out.push(v);
            }
            if inlined {
                return Ok(Value::Push(vec![Value::Array(out)]));
            }
            Value::Array(out)
        }
        "set" => return set(store, now, a),
        "setnx" => {
            if store.lookup(now, &a[1]).is_some() {
                Value::Integer(0)
            } else {
                store.store(&a[1], Data::Str(Bytes::copy_from_slice(&a[2])), false);
                Value::Integer(1)
            }
        }
        "get" => match store.lookup(now, &a[1]) {
            None => {
                store.stats.misses += 1;
                null_bulk()
            }
            Some(e) => match &e.data {
                Data::Str(s) => {
                    let v = bulk(s);
                    store.stats.hits += 1;
                    v
                }
                _ => return Err(err(WRONGTYPE)),
            },
        },
        "getset" => {
            let old = match store.lookup(now, &a[1]).map(|e| &e.data) {
                None => null_bulk(),
                Some(Data::Str(s)) => bulk(s),
                Some(_) => return Err(err(WRONGTYPE)),
            };
            store.store(&a[1], Data::Str(Bytes::copy_from_slice(&a[2])), false);
            old
        }
        "incr" => incr_by(store, now, &a[1], 1)?,
        "decr" => incr_by(store, now, &a[1], -1)?,
        "incrby" => incr_by(store, now, &a[1], int_arg(&a[2])?)?,
        "decrby" => {
            let n = int_arg(&a[2])?;
            if n == i64::MIN {
                return Err(err("ERR decrement would overflow"));
            }
            incr_by(store, now, &a[1], -n)?
        }
        "mget" => {
            let mut out = Vec::with_capacity(a.len() - 1);
            for k in &a[1..] {
                out.push(match store.lookup(now, k).map(|e| &e.data) {
                    Some(Data::Str(s)) => bulk(s),
                    _ => null_bulk(),
                });
            }
            Value::Array(out)
        }
        "mset" => {
            if a.len() % 2 == 0 {
                return Err(wrong_args("mset"));
            }
            for kv in a[1..].chunks(2) {
                store.store(&kv[0], Data::Str(Bytes::copy_from_slice(&kv[1])), false);
            }
            Value::ok()
        }
        "append" => {
            let max = store.config.proto_max_bulk_len;
            let new = match store.lookup(now, &a[1]).map(|e| &mut e.data) {
                None => None,
                Some(Data::Str(s)) => {
                    // Redis's `checkStringLength`.
                    if (s.len() as u64).saturating_add(a[2].len() as u64) > max {
                        return Err(err(
                            "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                        ));
                    }
                    let mut b = BytesMut::with_capacity(s.len() + a[2].len());
                    b.put_slice(s);
                    b.put_slice(&a[2]);
                    let len = b.len();
                    *s = b.freeze();
                    Some(len)
                }
                Some(_) => return Err(err(WRONGTYPE)),
            };
            match new {
                Some(len) => {
                    store.touch(&a[1]);
                    Value::Integer(len as i64)
                }
                None => {
                    store.store(&a[1], Data::Str(Bytes::copy_from_slice(&a[2])), false);
                    Value::Integer(a[2].len() as i64)
                }
            }
        }
        "strlen" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Integer(0),
            Some(Data::Str(s)) => Value::Integer(s.len() as i64),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "del" => {
            let mut n = 0;
            for k in &a[1..] {
                if store.lookup(now, k).is_some() && store.delete(k) {
                    n += 1;
                }
            }
            Value::Integer(n)
        }
        "exists" => Value::Integer(
            a[1..]
                .iter()
                .filter(|k| store.lookup(now, k).is_some())
                .count() as i64,
        ),
        "expire" | "pexpire" | "expireat" | "pexpireat" => return expire(store, now, name, a),
        "ttl" | "pttl" => match store.lookup(now, &a[1]).map(|e| e.expire) {
            None => Value::Integer(-2),
            Some(e) => match e {
                None => Value::Integer(-1),
                Some(t) => {
                    let ms = t.saturating_sub(store.unix_ms(now)).min(i64::MAX as u64) as i64;
                    Value::Integer(if name == "ttl" {
                        ms.saturating_add(500) / 1000
                    } else {
                        ms
                    })
                }
            },
        },
        "persist" => match store.lookup(now, &a[1]).map(|e| e.expire) {
            Some(Some(_)) => {
                store.set_expire(&a[1], None);
                Value::Integer(1)
            }
            _ => Value::Integer(0),
        },
        "keys" => {
            let all = a[1][..] == b"*"[..];
            let now_ms = store.unix_ms(now);
            let keys: Vec<Value> = store
                .db
                .iter()
                .filter(|(k, e)| {
                    e.expire.is_none_or(|t| t >= now_ms) && (all || glob::matches(&a[1], k))
                })
                .map(|(k, _)| bulk(k))
                .collect();
            Value::Array(keys)
        }
        "scan" => return scan(store, now, a),
        "type" => Value::simple(
            store
                .lookup(now, &a[1])
                .map_or("none", |e| e.data.type_name()),
        ),
        "dbsize" => Value::Integer(store.db.len() as i64),
        "flushdb" | "flushall" => {
            if a.len() > 2
                || (a.len() == 2
                    && !a[1].eq_ignore_ascii_case(b"sync")
                    && !a[1].eq_ignore_ascii_case(b"async"))
            {
                return Err(err(SYNTAX));
            }
            store.flush();
            Value::ok()
        }
        "info" => info(store, now, a),
        "config" => return config(store, r3, a),
        "command" => return command(a),
        "time" => {
            let us = store.unix_ms(now) * 1000 + (now.as_nanos() / 1000) % 1000;
            Value::Array(vec![
                Value::BulkString(fmt_int((us / 1_000_000) as i64)),
                Value::BulkString(fmt_int((us % 1_000_000) as i64)),
            ])
        }
        "lpush" | "rpush" => {
            let left = name == "lpush";
            let Data::List(list) = get_or_create(
                store,
                now,
                &a[1],
                |d| matches!(d, Data::List(_)),
                || Data::List(VecDeque::new()),
            )?
            else {
                return Err(err(WRONGTYPE));
            };
            for v in &a[2..] {
                let v = Bytes::copy_from_slice(v);
                if left {
                    list.push_front(v)
                } else {
                    list.push_back(v)
                }
            }
            let n = list.len() as i64;
            store.touch(&a[1]);
            Value::Integer(n)
        }
        "lpop" | "rpop" => {
            if a.len() > 3 {
                return Err(wrong_args(name));
            }
            let count = match a.get(2) {
                Some(c) => Some(positive_arg(c)?),
                None => None,
            };
            let left = name == "lpop";
            let (out, empty) = match store.lookup(now, &a[1]).map(|e| &mut e.data) {
                None => {
                    return Ok(if count.is_some() {
                        Value::NullArray
                    } else {
                        null_bulk()
                    })
                }
                Some(Data::List(l)) => match count {
                    None => {
                        let v = if left { l.pop_front() } else { l.pop_back() };
                        (v.map_or(null_bulk(), Value::BulkString), l.is_empty())
                    }
                    Some(0) => return Ok(Value::Array(vec![])),
                    Some(n) => {
                        let mut out = Vec::new();
                        for _ in 0..n {
                            match if left { l.pop_front() } else { l.pop_back() } {
                                Some(v) => out.push(Value::BulkString(v)),
                                None => break,
                            }
                        }
                        (Value::Array(out), l.is_empty())
                    }
                },
                Some(_) => return Err(err(WRONGTYPE)),
            };
            // Lists are never empty: something was popped.
            store.touch(&a[1]);
            if empty {
                store.delete(&a[1]);
            }
            out
        }
        "llen" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Integer(0),
            Some(Data::List(l)) => Value::Integer(l.len() as i64),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "lrange" => {
            let (start, stop) = (int_arg(&a[2])?, int_arg(&a[3])?);
            match store.lookup(now, &a[1]).map(|e| &e.data) {
                None => Value::Array(vec![]),
                Some(Data::List(l)) => match range(start, stop, l.len()) {
                    None => Value::Array(vec![]),
                    Some((s, e)) => Value::Array(l.range(s..=e).map(bulk).collect()),
                },
                Some(_) => return Err(err(WRONGTYPE)),
            }
        }
        "sadd" => {
            let Data::Set(set) = get_or_create(
                store,
                now,
                &a[1],
                |d| matches!(d, Data::Set(_)),
                || Data::Set(IndexedSet::default()),
            )?
            else {
                return Err(err(WRONGTYPE));
            };
            let n = a[2..]
                .iter()
                .filter(|m| set.insert(Bytes::copy_from_slice(m)))
                .count() as i64;
            if n > 0 {
                store.touch(&a[1]);
            }
            Value::Integer(n)
        }
        "srem" => {
            let (n, empty) = match store.lookup(now, &a[1]).map(|e| &mut e.data) {
                None => (0, false),
                Some(Data::Set(s)) => (a[2..].iter().filter(|m| s.remove(m)).count(), s.is_empty()),
                Some(_) => return Err(err(WRONGTYPE)),
            };
            if n > 0 {
                store.touch(&a[1]);
            }
            if empty {
                store.delete(&a[1]);
            }
            Value::Integer(n as i64)
        }
        "smembers" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Set(vec![]),
            Some(Data::Set(s)) => Value::Set(s.iter().map(bulk).collect()),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "scard" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Integer(0),
            Some(Data::Set(s)) => Value::Integer(s.len() as i64),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "sismember" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Integer(0),
            Some(Data::Set(s)) => Value::Integer(s.iter().any(|m| m == &a[2]) as i64),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "spop" => {
            if a.len() > 3 {
                return Err(err(SYNTAX));
            }
            let count = match a.get(2) {
                Some(c) => Some(positive_arg(c)?),
                None => None,
            };
            let mut rnd: Vec<u64> = Vec::new();
            let n = count.unwrap_or(1).min(1 << 20) as usize;
            let (out, empty) = match store.lookup(now, &a[1]).map(|e| &e.data) {
                None => {
                    return Ok(if count.is_some() {
                        Value::Set(vec![])
                    } else {
                        null_bulk()
                    })
                }
                Some(Data::Set(s)) => (s.len().min(n), s.len() <= n),
                Some(_) => return Err(err(WRONGTYPE)),
            };
            for _ in 0..out {
                rnd.push(store.rand());
            }
            let mut popped = Vec::new();
            if let Some(Data::Set(s)) = store.db.get_mut(&a[1]).map(|e| &mut e.data) {
                for r in rnd {
                    if let Some(m) = s.pop_at(r) {
                        popped.push(Value::BulkString(m));
                    }
                }
            }
            if !popped.is_empty() {
                store.touch(&a[1]);
            }
            if empty {
                store.delete(&a[1]);
            }
            match count {
                None => popped.pop().unwrap_or(Value::NullBulkString),
                Some(_) => Value::Set(popped),
            }
        }
        "hset" => {
            if a.len() % 2 == 1 {
                return Err(wrong_args("hset"));
            }
            let Data::Hash(h) = get_or_create(
                store,
                now,
                &a[1],
                |d| matches!(d, Data::Hash(_)),
                || Data::Hash(Default::default()),
            )?
            else {
                return Err(err(WRONGTYPE));
            };
            let mut added = 0;
            for fv in a[2..].chunks(2) {
                if h.insert(
                    Bytes::copy_from_slice(&fv[0]),
                    Bytes::copy_from_slice(&fv[1]),
                )
                .is_none()
                {
                    added += 1;
                }
            }
            store.touch(&a[1]);
            Value::Integer(added)
        }
        "hget" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => null_bulk(),
            Some(Data::Hash(h)) => h.get(&a[2]).map_or(null_bulk(), bulk),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "hdel" => {
            let (n, empty) = match store.lookup(now, &a[1]).map(|e| &mut e.data) {
                None => (0, false),
                Some(Data::Hash(h)) => (
                    a[2..].iter().filter(|f| h.remove(&f[..]).is_some()).count(),
                    h.is_empty(),
                ),
                Some(_) => return Err(err(WRONGTYPE)),
            };
            if n > 0 {
                store.touch(&a[1]);
            }
            if empty {
                store.delete(&a[1]);
            }
            Value::Integer(n as i64)
        }
        "hgetall" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Map(vec![]),
            Some(Data::Hash(h)) => Value::Map(h.iter().map(|(k, v)| (bulk(k), bulk(v))).collect()),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "hlen" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Integer(0),
            Some(Data::Hash(h)) => Value::Integer(h.len() as i64),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "hincrby" => {
            let by = int_arg(&a[3])?;
            let Data::Hash(h) = get_or_create(
                store,
                now,
                &a[1],
                |d| matches!(d, Data::Hash(_)),
                || Data::Hash(Default::default()),
            )?
            else {
                return Err(err(WRONGTYPE));
            };
            let cur = match h.get(&a[2]) {
                None => 0,
                Some(v) => parse_int(v).ok_or_else(|| err("ERR hash value is not an integer"))?,
            };
            let new = cur.checked_add(by).ok_or_else(|| err(OVERFLOW))?;
            h.insert(Bytes::copy_from_slice(&a[2]), fmt_int(new));
            store.touch(&a[1]);
            Value::Integer(new)
        }
        "zadd" => return zadd(store, now, a),
        "zrange" => return zrange(store, now, r3, a),
        "zpopmin" => {
            if a.len() > 3 {
                return Err(err(SYNTAX));
            }
            let count = match a.get(2) {
                Some(c) => Some(positive_arg(c)?),
                None => None,
            };
            let (out, empty) = match store.lookup(now, &a[1]).map(|e| &mut e.data) {
                None => return Ok(Value::Array(vec![])),
                Some(Data::ZSet(z)) => {
                    let n = count.unwrap_or(1);
                    let nested = r3 && count.is_some();
                    let mut out = Vec::new();
                    for _ in 0..n {
                        let Some((m, s)) = z.pop_min() else { break };
                        if nested {
                            out.push(Value::Array(vec![Value::BulkString(m), Value::Double(s)]));
                        } else {
                            out.push(Value::BulkString(m));
                            out.push(Value::Double(s));
                        }
                    }
                    (Value::Array(out), z.is_empty())
                }
                Some(_) => return Err(err(WRONGTYPE)),
            };
            if !matches!(&out, Value::Array(v) if v.is_empty()) {
                store.touch(&a[1]);
            }
            if empty {
                store.delete(&a[1]);
            }
            out
        }
        "zcard" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Integer(0),
            Some(Data::ZSet(z)) => Value::Integer(z.len() as i64),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "zscore" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => null_bulk(),
            Some(Data::ZSet(z)) => z.score(&a[2]).map_or(null_bulk(), Value::Double),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "xadd" => return xadd(store, now, a),
        "xlen" => match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Value::Integer(0),
            Some(Data::Stream(s)) => Value::Integer(s.entries.len() as i64),
            Some(_) => return Err(err(WRONGTYPE)),
        },
        "publish" => Value::Integer(store.publish(&a[1], &a[2])),
        "spublish" => Value::Integer(store.spublish(&a[1], &a[2])),
        "watch" => {
            if client.multi.is_some() {
                return Err(err("ERR WATCH inside MULTI is not allowed"));
            }
            store.watch(now, client, &a[1..]);
            Value::ok()
        }
        "unwatch" => {
            store.unwatch_all(client);
            Value::ok()
        }
        "incrbyfloat" => return incr_by_float(store, now, a),
        "expiretime" | "pexpiretime" => match store.lookup(now, &a[1]).map(|e| e.expire) {
            None => Value::Integer(-2),
            Some(None) => Value::Integer(-1),
            Some(Some(t)) => {
                let t = t.min(i64::MAX as u64) as i64;
                Value::Integer(if name == "expiretime" {
                    ((i128::from(t) + 500) / 1000) as i64
                } else {
                    t
                })
            }
        },
        "getrange" | "substr" => return getrange(store, now, a),
        "setrange" => return setrange(store, now, a),
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ssubscribe"
        | "sunsubscribe" => return store.queued_pubsub(client, name, a),
        _ => {
            return Err(Value::error_fmt(format_args!(
                "ERR unknown command '{name}'"
            )))
        }
    })
}

/// Redis's index normalization for LRANGE/ZRANGE: inclusive `(start, end)` or `None` if empty.
fn range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if stop < 0 { len + stop } else { stop };
    if s < 0 {
        s = 0;
    }
    if s > e || s >= len {
        return None;
    }
    if e >= len {
        e = len - 1;
    }
    Some((s as usize, e as usize))
}

fn incr_by(store: &mut Store, now: Instant, key: &Bytes, by: i64) -> R {
    let cur = match store.lookup(now, key).map(|e| &e.data) {
        None => 0,
        Some(Data::Str(s)) => parse_int(s).ok_or_else(|| err(NOT_INT))?,
        Some(_) => return Err(err(WRONGTYPE)),
    };
    let new = cur.checked_add(by).ok_or_else(|| err(OVERFLOW))?;
    store.store(key, Data::Str(fmt_int(new)), true);
    Ok(Value::Integer(new))
}

fn set(store: &mut Store, now: Instant, a: &[Bytes]) -> R {
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    // (value, unit ms multiplier, absolute)
    let mut exp: Option<(i64, i64, bool)> = None;
    let mut j = 3;
    while j < a.len() {
        let o = lower(&a[j]);
        let next = a.get(j + 1);
        match o.as_str() {
            "nx" if !xx => nx = true,
            "xx" if !nx => xx = true,
            "get" => get = true,
            "keepttl" if exp.is_none() => keepttl = true,
            "ex" | "px" | "exat" | "pxat" if !keepttl && next.is_some() => {
                let kind = (o.as_str(), exp.map(|e| (e.1, e.2)));
                let unit = if o == "ex" || o == "exat" { 1000 } else { 1 };
                let abs = o.ends_with("at");
                if let Some(prev) = kind.1 {
                    if prev != (unit, abs) {
                        return Err(err(SYNTAX));
                    }
                }
                let v = int_arg(&a[j + 1])?;
                exp = Some((v, unit, abs));
                j += 1;
            }
            _ => return Err(err(SYNTAX)),
        }
        j += 1;
    }
    // Redis: positive, seconds at most `LLONG_MAX / 1000`, and a relative time plus the
    // clock must not overflow; any other deadline (centuries away included) is kept exactly.
    // (A plain SET never reads the clock.)
    let now_ms = if exp.is_some() { store.unix_ms(now) } else { 0 };
    let deadline = match exp {
        None => None,
        Some((v, unit, abs)) => {
            if v <= 0 || (unit == 1000 && v > i64::MAX / 1000) {
                return Err(err("ERR invalid expire time in 'set' command"));
            }
            let ms = v * unit;
            let when = if abs {
                ms
            } else {
                ms.checked_add(now_ms as i64)
                    .ok_or_else(|| err("ERR invalid expire time in 'set' command"))?
            };
            Some(when as u64)
        }
    };
    let old = if get {
        match store.lookup(now, &a[1]).map(|e| &e.data) {
            None => Some(null_bulk()),
            Some(Data::Str(s)) => Some(bulk(s)),
            Some(_) => return Err(err(WRONGTYPE)),
        }
    } else {
        None
    };
    // The lookup also drops an expired key, so KEEPTTL never keeps a passed deadline.
    let found = (nx || xx || keepttl) && store.lookup(now, &a[1]).is_some();
    if (nx && found) || (xx && !found) {
        return Ok(old.unwrap_or(null_bulk()));
    }
    store.store(&a[1], Data::Str(Bytes::copy_from_slice(&a[2])), keepttl);
    if let Some(t) = deadline {
        if t <= now_ms {
            store.delete(&a[1]);
        } else {
            store.set_expire(&a[1], Some(t));
        }
    }
    Ok(old.unwrap_or(Value::ok()))
}

fn expire(store: &mut Store, now: Instant, name: &str, a: &[Bytes]) -> R {
    let v = int_arg(&a[2])?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &a[3..] {
        match lower(o).as_str() {
            "nx" => nx = true,
            "xx" => xx = true,
            "gt" => gt = true,
            "lt" => lt = true,
            _ => {
                return Err(Value::error_fmt(format_args!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(o)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(err(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let unit: i64 = if name == "expire" || name == "expireat" {
        1000
    } else {
        1
    };
    let invalid = || Value::error_fmt(format_args!("ERR invalid expire time in '{name}' command"));
    let ms = v.checked_mul(unit).ok_or_else(invalid)?;
    let abs = name.ends_with("at");
    let now_ms = store.unix_ms(now) as i64;
    let when_ms = if abs {
        ms
    } else {
        ms.checked_add(now_ms).ok_or_else(invalid)?
    };
    let Some(cur) = store.lookup(now, &a[1]).map(|e| e.expire) else {
        return Ok(Value::Integer(0));
    };
    let cur_ms = cur.map(|t| t.min(i64::MAX as u64) as i64);
    if (nx && cur.is_some()) || (xx && cur.is_none()) {
        return Ok(Value::Integer(0));
    }
    if gt && cur_ms.is_none_or(|c| when_ms <= c) {
        return Ok(Value::Integer(0));
    }
    if lt && cur_ms.is_some_and(|c| when_ms >= c) {
        return Ok(Value::Integer(0));
    }
    if when_ms <= now_ms {
        store.delete(&a[1]);
        return Ok(Value::Integer(1));
    }
    store.set_expire(&a[1], Some(when_ms as u64));
    Ok(Value::Integer(1))
}

/// Redis's SCAN cursor: `strtoul` (an optional sign, `-n` wrapping to `2^64 - n`, leading
/// zeros; no leading space, nothing after the digits, no overflow).
fn parse_cursor(s: &[u8]) -> Option<u64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if s.is_empty() {
        return Some(0);
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if neg { v.wrapping_neg() } else { v })
}

fn scan(store: &mut Store, now: Instant, a: &[Bytes]) -> R {
    let cursor = parse_cursor(&a[1]).ok_or_else(|| err("ERR invalid cursor"))?;
    let mut count = 10i64;
    let mut pattern: Option<&Bytes> = None;
    let mut typ: Option<String> = None;
    let mut j = 2;
    while j < a.len() {
        let o = lower(&a[j]);
        let next = a.get(j + 1).ok_or_else(|| err(SYNTAX))?;
        match o.as_str() {
            "count" => {
                count = int_arg(next)?;
                if count < 1 {
                    return Err(err(SYNTAX));
                }
            }
            "match" => pattern = Some(next),
            "type" => typ = Some(lower(next)),
            _ => return Err(err(SYNTAX)),
        }
        j += 2;
    }
    let mut keys: Vec<Bytes> = Vec::new();
    let mut cur = cursor;
    let mut iterations = count.saturating_mul(10);
    loop {
        cur = store.db.scan_step(cur, |k, _| keys.push(k.clone()));
        iterations -= 1;
        if cur == 0 || iterations <= 0 || keys.len() as i64 >= count {
            break;
        }
    }
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if pattern.is_some_and(|p| !glob::matches(p, &k)) {
            continue;
        }
        let Some(e) = store.lookup(now, &k) else {
            continue;
        };
        if typ.as_deref().is_some_and(|t| t != e.data.type_name()) {
            continue;
        }
        out.push(Value::BulkString(k));
    }
    Ok(Value::Array(vec![
        Value::BulkString(Bytes::from(cur.to_string())),
        Value::Array(out),
    ]))
}

fn zadd(store: &mut Store, now: Instant, a: &[Bytes]) -> R {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut j = 2;
    while j < a.len() {
        match lower(&a[j]).as_str() {
            "nx" => nx = true,
            "xx" => xx = true,
            "gt" => gt = true,
            "lt" => lt = true,
            "ch" => ch = true,
            "incr" => incr = true,
            _ => break,
        }
        j += 1;
    }
    let rest = &a[j..];
    if rest.is_empty() || rest.len() % 2 != 0 {
        return Err(err(SYNTAX));
    }
    if nx && xx {
        return Err(err(
            "ERR XX and NX options at the same time are not compatible",
        ));
    }
    if (nx && (gt || lt)) || (gt && lt) {
        return Err(err(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if incr && rest.len() > 2 {
        return Err(err(
            "ERR INCR option supports a single increment-element pair",
        ));
    }
    let mut pairs = Vec::with_capacity(rest.len() / 2);
    for p in rest.chunks(2) {
        pairs.push((
            parse_float(&p[0]).ok_or_else(|| err(NOT_FLOAT))?,
            p[1].clone(),
        ));
    }
    match store.lookup(now, &a[1]).map(|e| &e.data) {
        None if xx => return Ok(if incr { null_bulk() } else { Value::Integer(0) }),
        Some(d) if !matches!(d, Data::ZSet(_)) => return Err(err(WRONGTYPE)),
        _ => {}
    }
    let Data::ZSet(z) = get_or_create(
        store,
        now,
        &a[1],
        |d| matches!(d, Data::ZSet(_)),
        || Data::ZSet(ZSet::default()),
    )?
    else {
        return Err(err(WRONGTYPE));
    };
    let (mut added, mut changed) = (0, 0);
    let mut incr_result = None;
    for (score, m) in pairs {
        match z.score(&m) {
            Some(old) => {
                if nx {
                    continue;
                }
                let new = if incr { old + score } else { score };
                if new.is_nan() {
                    return Err(err("ERR resulting score is not a number (NaN)"));
                }
                if (gt && new <= old) || (lt && new >= old) {
                    continue;
                }
                incr_result = Some(new);
                if new != old {
                    z.insert(Bytes::copy_from_slice(&m), new);
                    changed += 1;
                }
            }
            None => {
                if xx {
                    continue;
                }
                z.insert(Bytes::copy_from_slice(&m), score);
                incr_result = Some(score);
                added += 1;
            }
        }
    }
    let empty = z.is_empty();
    if added + changed > 0 {
        store.touch(&a[1]);
    }
    if empty {
        store.delete(&a[1]);
    }
    if incr {
        return Ok(incr_result.map_or(null_bulk(), Value::Double));
    }
    Ok(Value::Integer(if ch { added + changed } else { added }))
}

fn zrange(store: &mut Store, now: Instant, r3: bool, a: &[Bytes]) -> R {
    let (mut withscores, mut rev, mut byscore, mut bylex) = (false, false, false, false);
    let mut limit: Option<(i64, i64)> = None;
    let mut j = 4;
    while j < a.len() {
        match lower(&a[j]).as_str() {
            "withscores" => withscores = true,
            "rev" => rev = true,
            "byscore" => byscore = true,
            "bylex" => bylex = true,
            "limit" if j + 2 < a.len() => {
                limit = Some((int_arg(&a[j + 1])?, int_arg(&a[j + 2])?));
                j += 2;
            }
            _ => return Err(err(SYNTAX)),
        }
        j += 1;
    }
    if bylex {
        return Err(err("ERR BYLEX is not supported by this server"));
    }
    if limit.is_some() && !byscore {
        return Err(err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    let items: Vec<(Bytes, f64)> = match store.lookup(now, &a[1]).map(|e| &e.data) {
        None => vec![],
        Some(Data::ZSet(z)) => {
            if byscore {
                let parse_bound = |b: &[u8]| -> Result<(f64, bool), Value> {
                    let (ex, s) = match b.strip_prefix(b"(") {
                        Some(s) => (true, s),
                        None => (false, b),
                    };
                    let v = match s {
                        b"-inf" => f64::NEG_INFINITY,
                        b"+inf" | b"inf" => f64::INFINITY,
                        _ => parse_float(s).ok_or_else(|| err("ERR min or max is not a float"))?,
                    };
                    Ok((v, ex))
                };
                let (lo, hi) = if rev { (&a[3], &a[2]) } else { (&a[2], &a[3]) };
                let ((min, minex), (max, maxex)) = (parse_bound(lo)?, parse_bound(hi)?);
                let inr = |s: f64| {
                    (if minex { s > min } else { s >= min })
                        && (if maxex { s < max } else { s <= max })
                };
                let mut v: Vec<(Bytes, f64)> = z
                    .iter()
                    .filter(|(_, s)| inr(*s))
                    .map(|(m, s)| (m.clone(), s))
                    .collect();
                if rev {
                    v.reverse();
                }
                if let Some((off, cnt)) = limit {
                    let off = off.max(0) as usize;
                    let it = v.into_iter().skip(off);
                    v = if cnt < 0 {
                        it.collect()
                    } else {
                        it.take(cnt as usize).collect()
                    };
                }
                v
            } else {
                let (start, stop) = (int_arg(&a[2])?, int_arg(&a[3])?);
                match range(start, stop, z.len()) {
                    None => vec![],
                    Some((s, e)) => {
                        if rev {
                            z.iter()
                                .rev()
                                .skip(s)
                                .take(e - s + 1)
                                .map(|(m, sc)| (m.clone(), sc))
                                .collect()
                        } else {
                            z.iter()
                                .skip(s)
                                .take(e - s + 1)
                                .map(|(m, sc)| (m.clone(), sc))
                                .collect()
                        }
                    }
                }
            }
        }
        Some(_) => return Err(err(WRONGTYPE)),
    };
    let mut out = Vec::with_capacity(items.len() * if withscores { 2 } else { 1 });
    for (m, s) in items {
        if withscores && r3 {
            out.push(Value::Array(vec![Value::BulkString(m), Value::Double(s)]));
        } else {
            out.push(Value::BulkString(m));
            if withscores {
                out.push(Value::Double(s));
            }
        }
    }
    Ok(Value::Array(out))
}

fn parse_stream_id(s: &[u8], seq_default: Option<u64>) -> Option<(StreamId, bool)> {
    let t = std::str::from_utf8(s).ok()?;
    match t.split_once('-') {
        None => Some((
            StreamId {
                ms: t.parse().ok()?,
                seq: seq_default?,
            },
            false,
        )),
        Some((ms, "*")) => Some((
            StreamId {
                ms: ms.parse().ok()?,
                seq: 0,
            },
            true,
        )),
        Some((ms, seq)) => Some((
            StreamId {
                ms: ms.parse().ok()?,
                seq: seq.parse().ok()?,
            },
            false,
        )),
    }
}

fn xadd(store: &mut Store, now: Instant, a: &[Bytes]) -> R {
    let mut j = 2;
    let mut nomkstream = false;
    let (mut approx, mut limit) = (false, false);
    let mut trim: Option<(bool, Bytes)> = None; // (maxlen?, threshold)
    loop {
        let Some(o) = a.get(j) else {
            return Err(wrong_args("xadd"));
        };
        match lower(o).as_str() {
            "nomkstream" => {
                nomkstream = true;
                j += 1;
            }
            "maxlen" | "minid" => {
                let maxlen = o.eq_ignore_ascii_case(b"maxlen");
                j += 1;
                if a.get(j).is_some_and(|x| &x[..] == b"~") {
                    approx = true;
                    j += 1;
                } else if a.get(j).is_some_and(|x| &x[..] == b"=") {
                    j += 1;
                }
                let t = a.get(j).ok_or_else(|| err(SYNTAX))?.clone();
                trim = Some((maxlen, t));
                j += 1;
            }
            "limit" if j + 1 < a.len() => {
                int_arg(&a[j + 1])?;
                limit = true;
                j += 2;
            }
            _ => break,
        }
    }
    if limit && trim.is_none() {
        return Err(err(
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ));
    }
    if limit && !approx {
        return Err(err(
            "ERR syntax error, LIMIT cannot be used without the special ~ option",
        ));
    }
    let id_arg = a.get(j).ok_or_else(|| err(SYNTAX))?;
    let fields = &a[j + 1..];
    if fields.is_empty() || fields.len() % 2 != 0 {
        return Err(wrong_args("xadd"));
    }
    let explicit = if &id_arg[..] == b"*" {
        None
    } else {
        Some(
            parse_stream_id(id_arg, Some(0))
                .ok_or_else(|| err("ERR Invalid stream ID specified as stream command argument"))?,
        )
    };
    if let Some((id, false)) = explicit {
        if id == (StreamId { ms: 0, seq: 0 }) {
            return Err(err("ERR The ID specified in XADD must be greater than 0-0"));
        }
    }
    let maxlen = match &trim {
        Some((true, t)) => Some(int_arg(t).and_then(|n| {
            if n < 0 {
                Err(err("ERR The MAXLEN argument must be >= 0."))
            } else {
                Ok(n)
            }
        })?),
        _ => None,
    };
    let minid = match &trim {
        Some((false, t)) => Some(
            parse_stream_id(t, Some(0))
                .ok_or_else(|| err("ERR Invalid stream ID specified as stream command argument"))?
                .0,
        ),
        _ => None,
    };
    let now_ms = store.unix_ms(now);
    match store.lookup(now, &a[1]).map(|e| &e.data) {
        None if nomkstream => return Ok(null_bulk()),
        Some(d) if !matches!(d, Data::Stream(_)) => return Err(err(WRONGTYPE)),
        _ => {}
    }
    let Data::Stream(s) = get_or_create(
        store,
        now,
        &a[1],
        |d| matches!(d, Data::Stream(_)),
        || Data::Stream(Stream::default()),
    )?
    else {
        return Err(err(WRONGTYPE));
    };
    let last = s.last_id;
    let id = match explicit {
        None => {
            if now_ms > last.ms {
                StreamId { ms: now_ms, seq: 0 }
            } else {
                StreamId { ms: last.ms, seq: last.seq.checked_add(1).ok_or_else(|| err("ERR The stream has exhausted the last possible ID, unable to add more items"))? }
            }
        }
        Some((id, true)) => {
            if id.ms == last.ms && (last.ms, last.seq) != (0, 0) {
                // Redis: the sequence is exhausted for this ms (EDOM).
                StreamId {
                    ms: id.ms,
                    seq: last.seq.checked_add(1).ok_or_else(|| err("ERR The ID specified in XADD is equal or smaller than the target stream top item"))?,
                }
            } else if id.ms > last.ms || (last.ms, last.seq) == (0, 0) {
                StreamId {
                    ms: id.ms,
                    seq: if id.ms == 0 { 1 } else { 0 },
                }
            } else {
                return Err(err("ERR The ID specified in XADD is equal or smaller than the target stream top item"));
            }
        }
        Some((id, false)) => {
            if id <= last {
                return Err(err("ERR The ID specified in XADD is equal or smaller than the target stream top item"));
            }
            id
        }
    };
    s.last_id = id;
    s.entries.push_back((
        id,
        fields.iter().map(|f| Bytes::copy_from_slice(f)).collect(),
    ));
    if let Some(n) = maxlen {
        while s.entries.len() as i64 > n {
            s.entries.pop_front();
        }
    }
    if let Some(min) = minid {
        while s.entries.front().is_some_and(|(i, _)| *i < min) {
            s.entries.pop_front();
        }
    }
    store.touch(&a[1]);
    Ok(Value::BulkString(Bytes::from(format!(
        "{}-{}",
        id.ms, id.seq
    ))))
}

/// AUTH with no password configured: the default user takes any password, other users do not
/// exist (Redis 7's replies).
fn auth(a: &[Bytes]) -> R {
    match a.len() {
        2 => Err(err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")),
        3 if &a[1][..] == b"default" => Ok(Value::ok()),
        3 => Err(err(
            "WRONGPASS invalid username-password pair or user is disabled.",
        )),
        _ => Err(err(SYNTAX)),
    }
}

/// INCRBYFLOAT: Redis's `long double` arithmetic and `%.17Lf` text, emulated exactly.
fn incr_by_float(store: &mut Store, now: Instant, a: &[Bytes]) -> R {
    let cur = match store.lookup(now, &a[1]).map(|e| &e.data) {
        None => longdouble::LongDouble::ZERO,
        Some(Data::Str(s)) => longdouble::LongDouble::parse(s).ok_or_else(|| err(NOT_FLOAT))?,
        Some(_) => return Err(err(WRONGTYPE)),
    };
    let by = longdouble::LongDouble::parse(&a[2]).ok_or_else(|| err(NOT_FLOAT))?;
    let sum = cur
        .add(&by)
        .ok_or_else(|| err("ERR increment would produce NaN or Infinity"))?;
    let text = Bytes::from(sum.to_human());
    store.store(&a[1], Data::Str(text.clone()), true);
    Ok(Value::BulkString(text))
}

fn getrange(store: &mut Store, now: Instant, a: &[Bytes]) -> R {
    let (start, end) = (int_arg(&a[2])?, int_arg(&a[3])?);
    let s = match store.lookup(now, &a[1]).map(|e| &e.data) {
        None => return Ok(Value::BulkString(Bytes::new())),
        Some(Data::Str(s)) => s,
        Some(_) => return Err(err(WRONGTYPE)),
    };
    // Redis's getrangeCommand, step by step.
    let len = s.len() as i64;
    if start < 0 && end < 0 && start > end {
        return Ok(Value::BulkString(Bytes::new()));
    }
    let mut start = if start < 0 {
        len.saturating_add(start)
    } else {
        start
    };
    let mut end = if end < 0 {
        len.saturating_add(end)
    } else {
        end
    };
    if start < 0 {
        start = 0;
    }
    if end < 0 {
        end = 0;
    }
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        return Ok(Value::BulkString(Bytes::new()));
    }
    Ok(Value::BulkString(s.slice(start as usize..=end as usize)))
}

/// Redis's `checkStringLength` against `proto-max-bulk-len`.
fn setrange(store: &mut Store, now: Instant, a: &[Bytes]) -> R {
    let offset = int_arg(&a[2])?;
    if offset < 0 {
        return Err(err("ERR offset is out of range"));
    }
    let value = &a[3];
    let max = store.config.proto_max_bulk_len;
    let too_big = |total: u64| total > max;
    let cur = match store.lookup(now, &a[1]).map(|e| &e.data) {
        None => None,
        Some(Data::Str(s)) => Some(s.clone()),
        Some(_) => return Err(err(WRONGTYPE)),
    };
    let Some(cur) = cur else {
        if value.is_empty() {
            return Ok(Value::Integer(0));
        }
        if too_big(offset as u64 + value.len() as u64) {
            return Err(err(
                "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
            ));
        }
        let mut b = BytesMut::zeroed(offset as usize);
        b.put_slice(value);
        let n = b.len() as i64;
        store.store(&a[1], Data::Str(b.freeze()), false);
        return Ok(Value::Integer(n));
    };
    if value.is_empty() {
        return Ok(Value::Integer(cur.len() as i64));
    }
    if too_big(offset as u64 + value.len() as u64) {
        return Err(err(
            "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
        ));
    }
    let off = offset as usize;
    let new_len = cur.len().max(off + value.len());
    let mut b = BytesMut::with_capacity(new_len);
    b.put_slice(&cur);
    b.resize(new_len, 0);
    b[off..off + value.len()].copy_from_slice(value);
    let n = b.len() as i64;
    store.store(&a[1], Data::Str(b.freeze()), true);
    Ok(Value::Integer(n))
}

fn hello(store: &mut Store, client: &mut ClientState, a: &[Bytes]) -> R {
    let mut proto = None;
    let mut j = 1;
    if a.len() >= 2 {
        let v = parse_int(&a[1])
            .ok_or_else(|| err("ERR Protocol version is not an integer or out of range"))?;
        proto = Some(
            Protocol::from_version(v).ok_or_else(|| err("NOPROTO unsupported protocol version"))?,
        );
        j = 2;
    }
    let mut name = None;
    while j < a.len() {
        let more = a.len() - 1 - j;
        if a[j].eq_ignore_ascii_case(b"auth") && more >= 2 {
            if &a[j + 1][..] != b"default" {
                return Err(err(
                    "WRONGPASS invalid username-password pair or user is disabled.",
                ));
            }
            j += 3;
        } else if a[j].eq_ignore_ascii_case(b"setname") && more >= 1 {
            name = Some(validate_name(&a[j + 1])?);
            j += 2;
        } else {
            return Err(Value::error_fmt(format_args!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&a[j])
            )));
        }
    }
    if let Some(n) = name {
        client.name = n;
    }
    if let Some(p) = proto {
        client.proto = p;
    }
    let _ = store;
    Ok(Value::Map(vec![
        (Value::bulk("server"), Value::bulk("redis")),
        (Value::bulk("version"), Value::bulk("7.0.15")),
        (Value::bulk("proto"), Value::Integer(client.proto.version())),
        (Value::bulk("id"), Value::Integer(client.id as i64)),
        (Value::bulk("mode"), Value::bulk("standalone")),
        (Value::bulk("role"), Value::bulk("master")),
        (Value::bulk("modules"), Value::Array(vec![])),
    ]))
}

fn validate_name(n: &Bytes) -> Result<Option<Bytes>, Value> {
    if n.is_empty() {
        return Ok(None);
    }
    if n.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(Some(Bytes::copy_from_slice(n)))
}

fn client_cmd(client: &mut ClientState, a: &[Bytes]) -> R {
    let sub = lower(&a[1]);
    let check = |n: usize| {
        if a.len() == n {
            Ok(())
        } else {
            Err(wrong_args(&format!("client|{sub}")))
        }
    };
    Ok(match sub.as_str() {
        "setname" => {
            check(3)?;
            client.name = validate_name(&a[2])?;
            Value::ok()
        }
        "getname" => {
            check(2)?;
            client.name.as_ref().map_or(null_bulk(), bulk)
        }
        "id" => {
            check(2)?;
            Value::Integer(client.id as i64)
        }
        "setinfo" => {
            check(4)?;
            Value::ok()
        }
        "info" => Value::BulkString(Bytes::from(format!(
            "id={} addr=? laddr=? fd=0 name={} db=0 resp={}\n",
            client.id,
            client
                .name
                .as_ref()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default(),
            client.proto.version()
        ))),
        _ => {
            return Err(Value::error_fmt(format_args!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&a[1])
                    .chars()
                    .take(128)
                    .collect::<String>()
            )))
        }
    })
}

fn info(store: &mut Store, now: Instant, a: &[Bytes]) -> Value {
    let uptime = (now - store.start).as_secs();
    let want = |s: &str| {
        a.len() < 2
            || a[1..].iter().any(|x| {
                x.eq_ignore_ascii_case(s.as_bytes())
                    || x.eq_ignore_ascii_case(b"all")
                    || x.eq_ignore_ascii_case(b"everything")
                    || x.eq_ignore_ascii_case(b"default")
            })
    };
    let mut s = String::new();
    if want("server") {
        s.push_str(&format!(
            "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nferry_version:{}\r\nos:{}\r\narch_bits:64\r\nmultiplexing_api:ferry\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\nhz:10\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            store.config.port,
            uptime,
            uptime / 86400
        ));
    }
    if want("clients") {
        s.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\n\r\n",
            store.clients
        ));
    }
    if want("memory") {
        s.push_str(
            "# Memory\r\nused_memory:0\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n\r\n",
        );
    }
    if want("persistence") {
        s.push_str(
            "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:0\r\naof_enabled:0\r\n\r\n",
        );
    }
    if want("stats") {
        s.push_str(&format!(
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nexpired_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\n\r\n",
            store.stats.connections, store.stats.commands, store.stats.expired, store.stats.hits, store.stats.misses
        ));
    }
    if want("replication") {
        s.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if want("cpu") {
        s.push_str("# CPU\r\nused_cpu_sys:0.000000\r\nused_cpu_user:0.000000\r\n\r\n");
    }
    if want("keyspace") {
        s.push_str("# Keyspace\r\n");
        if !store.db.is_empty() {
            s.push_str(&format!(
                "db0:keys={},expires={},avg_ttl=0\r\n",
                store.db.len(),
                store.expires.len()
            ));
        }
    }
    // No section matched: an empty string, as Redis answers.
    let s = if s.is_empty() {
        s
    } else {
        s.trim_end_matches("\r\n").to_string() + "\r\n"
    };
    Value::VerbatimString {
        format: *b"txt",
        text: Bytes::from(s),
    }
}

/// The parameters `CONFIG GET` reports (and `CONFIG SET` accepts), with their values.
fn config_params(store: &Store) -> Vec<(&'static str, String)> {
    vec![
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("port", store.config.port.to_string()),
        ("bind", "127.0.0.1".into()),
        ("databases", "1".into()),
        ("maxmemory", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        ("maxclients", "10000".into()),
        ("timeout", "0".into()),
        ("tcp-keepalive", "300".into()),
        ("hz", "10".into()),
        (
            "proto-max-bulk-len",
            store.config.proto_max_bulk_len.to_string(),
        ),
        ("client-query-buffer-limit", "1073741824".into()),
        ("cluster-enabled", "no".into()),
        ("protected-mode", "no".into()),
        ("loglevel", "notice".into()),
    ]
}

fn config(store: &mut Store, _r3: bool, a: &[Bytes]) -> R {
    let sub = lower(&a[1]);
    match sub.as_str() {
        "get" => {
            if a.len() < 3 {
                return Err(wrong_args("config|get"));
            }
            let params = config_params(store);
            let mut out = Vec::new();
            for (k, v) in &params {
                if a[2..]
                    .iter()
                    .any(|p| glob::matches(&p.to_ascii_lowercase(), k.as_bytes()))
                {
                    out.push((Value::bulk(k), Value::bulk(v)));
                }
            }
            Ok(Value::Map(out))
        }
        "set" => {
            if a.len() < 4 || a.len() % 2 != 0 {
                return Err(wrong_args("config|set"));
            }
            // Known parameters are accepted (and ignored: the store has nothing to tune);
            // an unknown one is an error, as with Redis, rather than a silent `+OK`.
            let params = config_params(store);
            for name in a[2..].iter().step_by(2) {
                if !params
                    .iter()
                    .any(|(k, _)| name.eq_ignore_ascii_case(k.as_bytes()))
                {
                    return Err(Value::error_fmt(format_args!(
                        "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                        String::from_utf8_lossy(name)
                            .chars()
                            .take(128)
                            .collect::<String>()
                    )));
                }
            }
            Ok(Value::ok())
        }
        "resetstat" => {
            store.stats = Default::default();
            Ok(Value::ok())
        }
        _ => Err(Value::error_fmt(format_args!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&a[1])
                .chars()
                .take(128)
                .collect::<String>()
        ))),
    }
}

fn command_info(name: &str, arity: i32) -> Value {
    let keyed = !matches!(
        name,
        "ping"
            | "echo"
            | "hello"
            | "select"
            | "client"
            | "auth"
            | "quit"
            | "reset"
            | "dbsize"
            | "flushdb"
            | "flushall"
            | "info"
            | "config"
            | "command"
            | "time"
            | "keys"
            | "scan"
            | "publish"
            | "subscribe"
            | "unsubscribe"
            | "psubscribe"
            | "punsubscribe"
            | "ssubscribe"
            | "sunsubscribe"
            | "multi"
            | "exec"
            | "discard"
            | "unwatch"
    );
    let last = if matches!(name, "del" | "exists" | "mget" | "mset" | "watch") {
        -1
    } else {
        1
    };
    let step = if name == "mset" { 2 } else { 1 };
    Value::Array(vec![
        Value::bulk(name),
        Value::Integer(arity as i64),
        Value::Set(vec![]),
        Value::Integer(if keyed { 1 } else { 0 }),
        Value::Integer(if keyed { last } else { 0 }),
        Value::Integer(if keyed { step } else { 0 }),
        Value::Set(vec![]),
        Value::Set(vec![]),
        Value::Array(vec![]),
        Value::Array(vec![]),
    ])
}

fn command(a: &[Bytes]) -> R {
    if a.len() == 1 {
        return Ok(Value::Array(
            TABLE
                .iter()
                .map(|(n, ar, ..)| command_info(n, *ar))
                .collect(),
        ));
    }
    let sub = lower(&a[1]);
    Ok(match sub.as_str() {
        "count" => Value::Integer(TABLE.len() as i64),
        "list" => Value::Array(TABLE.iter().map(|(n, ..)| Value::bulk(n)).collect()),
        "info" => {
            let names: Vec<String> = a[2..].iter().map(|n| lower(n)).collect();
            if names.is_empty() {
                Value::Array(
                    TABLE
                        .iter()
                        .map(|(n, ar, ..)| command_info(n, *ar))
                        .collect(),
                )
            } else {
                Value::Array(
                    names
                        .iter()
                        .map(|n| {
                            TABLE
                                .iter()
                                .find(|(t, ..)| t == n)
                                .map_or(Value::NullArray, |(t, ar, ..)| command_info(t, *ar))
                        })
                        .collect(),
                )
            }
        }
        "docs" => {
            let names: Vec<String> = a[2..].iter().map(|n| lower(n)).collect();
            let mut out = Vec::new();
            for (n, _, group, summary) in TABLE {
                if !names.is_empty() && !names.iter().any(|x| x == n) {
                    continue;
                }
                out.push((
                    Value::bulk(n),
                    Value::Map(vec![
                        (Value::bulk("summary"), Value::bulk(summary)),
                        (Value::bulk("since"), Value::bulk("1.0.0")),
                        (Value::bulk("group"), Value::bulk(group)),
                    ]),
                ));
            }
            Value::Map(out)
        }
        _ => {
            return Err(Value::error_fmt(format_args!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(&a[1])
                    .chars()
                    .take(128)
                    .collect::<String>()
            )))
        }
    })
}

#[cfg(test)]
#[path = "commands_tests.rs"]
mod tests;
