//! `ferry-kv`'s `Store` driven through its embedding API (`Store::execute`,
//! `active_expire`, `next_expiry`) by two interleaved clients and a virtual clock, with
//! commands from a small structured vocabulary (derived with `arbitrary`) that favours the
//! newest ones: WATCH/UNWATCH/MULTI/EXEC/DISCARD, INCRBYFLOAT, GETRANGE/SETRANGE with huge
//! offsets, SCAN cursors, EXPIRETIME/PEXPIRETIME, SET PXAT/EXAT and EXPIRE* with extreme
//! values, plus raw commands with arbitrary arguments.
//!
//! Memory stays bounded: `proto_max_bulk_len` is small (SETRANGE past it must be refused
//! before allocating; with the default 512 MiB one SETRANGE at offset 512 MiB - 1 would
//! allocate it all), and arguments are short.
//!
//! Invariants: no panic (debug assertions on: no overflow); after active expiry DBSIZE
//! equals both `Store::len` and the number of keys KEYS * returns, and a full SCAN
//! (cursor 0 back to 0) returns every one of them; an EXEC whose client watched a key the
//! other client wrote since (a SET, DEL, INCR, APPEND, SETRANGE or INCRBYFLOAT that
//! succeeded, directly or inside its own EXEC) returns a null array; EXPIRETIME and
//! PEXPIRETIME agree and PTTL is set exactly when PEXPIRETIME is; no string outgrows
//! `proto_max_bulk_len` (SETRANGE, APPEND).
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use ferry_kv::{ClientState, Store, StoreConfig};
use ferry_proto::Instant;
use ferry_resp::Value;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::time::Duration;

const MAX_BULK: u64 = 64 * 1024;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Key {
    A,
    B,
    C,
    D,
}

impl Key {
    fn name(self) -> &'static [u8] {
        match self {
            Key::A => b"a",
            Key::B => b"b",
            Key::C => b"{t}c",
            Key::D => b"d:1",
        }
    }
}

/// Interesting integers, or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Int {
    Small(i8),
    Any(i64),
    Max,
    Min,
    MaxDiv1000,
    HalfGiB,
    NowMs(i16),
}

impl Int {
    fn value(self, now_ms: i64) -> i64 {
        match self {
            Int::Small(v) => i64::from(v),
            Int::Any(v) => v,
            Int::Max => i64::MAX,
            Int::Min => i64::MIN,
            Int::MaxDiv1000 => i64::MAX / 1000,
            Int::HalfGiB => (512 << 20) - 1,
            Int::NowMs(d) => now_ms + i64::from(d),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SetTtl {
    None,
    Ex,
    Px,
    Exat,
    Pxat,
    KeepTtl,
    Nx,
    Xx,
    Get,
}

#[derive(Arbitrary, Debug, Clone)]
enum Float {
    Text(u8),
    Bytes(Vec<u8>),
    Int(i32),
    Half(i32),
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Set(Key, Vec<u8>, SetTtl, Int),
    Get(Key),
    Del(Key),
    Incr(Key),
    Append(Key, Vec<u8>),
    IncrByFloat(Key, Float),
    GetRange(Key, Int, Int),
    SetRange(Key, Int, Vec<u8>),
    Expire(u8, Key, Int, u8),
    ExpireTime(Key),
    Ttl(Key),
    Persist(Key),
    Watch(Vec<Key>),
    Unwatch,
    Multi,
    Exec,
    Discard,
    Scan(Int, Option<u8>, Option<Vec<u8>>),
    Keys(Vec<u8>),
    DbSize,
    Flush,
    Push(Key, Vec<u8>),
    SAdd(Key, u8),
    HSet(Key, u8, Vec<u8>),
    ZAdd(Key, Float, u8),
    XAdd(Key, u8),
    Hello(u8),
    Reset,
    Raw(Vec<Vec<u8>>),
    /// Advance the clock by this many ms.
    Tick(u16),
    /// Advance the clock a lot.
    Jump(u32),
    ActiveExpire(u8),
    Check,
}

#[derive(Arbitrary, Debug)]
struct Input {
    unix_at_zero: bool,
    ops: Vec<(bool, Op)>,
}

/// What the harness knows of a client for the WATCH invariant.
#[derive(Default)]
struct Model {
    in_multi: bool,
    watched: HashSet<&'static [u8]>,
    /// A watched key was written by the other client since.
    dirty: bool,
    /// For each queued command: the key it writes when it succeeds.
    queued: Vec<Option<&'static [u8]>>,
}

fn arg(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

fn short(mut v: Vec<u8>) -> Vec<u8> {
    v.truncate(64);
    v
}

fn float_text(f: &Float) -> Vec<u8> {
    match f {
        Float::Text(i) => {
            const T: &[&str] = &[
                "1.5",
                "-0",
                "inf",
                "1e4932",
                "1.19e4932",
                "0x1p-16445",
                "1e-5000",
                "5.0e3",
                "nan",
                " 1",
                "0.1",
                "-1e4932",
                "0x1.fffffffffffffffep16383",
            ];
            T[usize::from(*i) % T.len()].as_bytes().to_vec()
        }
        Float::Bytes(b) => short(b.clone()),
        Float::Int(i) => i.to_string().into_bytes(),
        Float::Half(h) => format!("{}.5", h).into_bytes(),
    }
}

struct Harness {
    store: Store,
    clients: [ClientState; 2],
    models: [Model; 2],
    now: Instant,
    checker: ClientState,
}

impl Harness {
    fn now_ms(&self, unix_at_zero: u64) -> i64 {
        (unix_at_zero + self.now.as_nanos() / 1_000_000) as i64
    }

    fn exec(&mut self, c: usize, args: Vec<Bytes>) -> Value {
        self.store.execute(self.now, &mut self.clients[c], &args)
    }

    /// Client `c` wrote `key` (outside a transaction, or in its EXEC).
    fn wrote(&mut self, c: usize, key: &'static [u8]) {
        let other = &mut self.models[1 - c];
        if other.watched.contains(key) {
            other.dirty = true;
        }
    }

    fn check(&mut self) {
        self.store.active_expire(self.now, usize::MAX);
        let now = self.now;
        let n = match self
            .store
            .execute(now, &mut self.checker, &[arg(b"DBSIZE")])
        {
            Value::Integer(n) => n as usize,
            v => panic!("DBSIZE: {v:?}"),
        };
        assert_eq!(n, self.store.len());
        let keys: HashSet<Bytes> =
            match self
                .store
                .execute(now, &mut self.checker, &[arg(b"KEYS"), arg(b"*")])
            {
                Value::Array(v) => v
                    .into_iter()
                    .map(|k| match k {
                        Value::BulkString(b) => b,
                        v => panic!("KEYS element {v:?}"),
                    })
                    .collect(),
                v => panic!("KEYS: {v:?}"),
            };
        assert_eq!(keys.len(), n, "DBSIZE {n} vs KEYS * {keys:?}");
        let mut seen = HashSet::new();
        let mut cursor = Bytes::from_static(b"0");
        for _ in 0..1000 {
            let v = self.store.execute(
                now,
                &mut self.checker,
                &[arg(b"SCAN"), cursor.clone(), arg(b"COUNT"), arg(b"3")],
            );
            let Value::Array(mut parts) = v else {
                panic!("SCAN: {v:?}");
            };
            let Some(Value::Array(found)) = parts.pop() else {
                panic!("SCAN keys");
            };
            let Some(Value::BulkString(next)) = parts.pop() else {
                panic!("SCAN cursor");
            };
            for k in found {
                if let Value::BulkString(k) = k {
                    seen.insert(k);
                }
            }
            cursor = next;
            if &cursor[..] == b"0" {
                break;
            }
        }
        assert_eq!(&cursor[..], b"0", "SCAN did not finish");
        assert!(
            seen.is_superset(&keys),
            "SCAN missed keys: {seen:?} vs {keys:?}"
        );
        for k in [Key::A, Key::B, Key::C, Key::D] {
            let k = arg(k.name());
            let s = self
                .store
                .execute(now, &mut self.checker, &[arg(b"EXPIRETIME"), k.clone()]);
            let ms = self
                .store
                .execute(now, &mut self.checker, &[arg(b"PEXPIRETIME"), k.clone()]);
            let ttl = self
                .store
                .execute(now, &mut self.checker, &[arg(b"PTTL"), k.clone()]);
            if let Value::Integer(n) =
                self.store
                    .execute(now, &mut self.checker, &[arg(b"STRLEN"), k.clone()])
            {
                assert!(n as u64 <= MAX_BULK, "a string of {n} bytes");
            }
            match (s, ms, ttl) {
                (Value::Integer(s), Value::Integer(ms), Value::Integer(ttl)) => {
                    if ms < 0 {
                        assert_eq!(s, ms);
                        assert_eq!(ttl, ms);
                    } else {
                        assert_eq!(s, ((i128::from(ms) + 500) / 1000) as i64);
                        assert!(ttl >= 0);
                    }
                }
                v => panic!("EXPIRETIME/PEXPIRETIME/PTTL: {v:?}"),
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let unix_at_zero = if input.unix_at_zero {
        1_700_000_000_000
    } else {
        0
    };
    let mut config = StoreConfig::default();
    config.unix_ms_at_zero = unix_at_zero;
    config.proto_max_bulk_len = MAX_BULK;
    let mut store = Store::new(config, Instant::ZERO);
    let clients = [store.new_client(), store.new_client()];
    let checker = store.new_client();
    let mut h = Harness {
        store,
        clients,
        models: [Model::default(), Model::default()],
        now: Instant::ZERO,
        checker,
    };
    for (second, op) in input.ops.into_iter().take(256) {
        let c = usize::from(second);
        let now_ms = h.now_ms(unix_at_zero);
        // The key a successful command writes, for the WATCH model.
        let mut writes: Option<&'static [u8]> = None;
        let args: Vec<Bytes> = match op {
            Op::Set(k, v, ttl, n) => {
                let mut a = vec![arg(b"SET"), arg(k.name()), arg(&short(v))];
                let n = n.value(now_ms).to_string();
                match ttl {
                    SetTtl::None => writes = Some(k.name()),
                    SetTtl::Ex => a.extend([arg(b"EX"), arg(n.as_bytes())]),
                    SetTtl::Px => a.extend([arg(b"PX"), arg(n.as_bytes())]),
                    SetTtl::Exat => a.extend([arg(b"EXAT"), arg(n.as_bytes())]),
                    SetTtl::Pxat => a.extend([arg(b"PXAT"), arg(n.as_bytes())]),
                    SetTtl::KeepTtl => a.push(arg(b"KEEPTTL")),
                    SetTtl::Nx => a.push(arg(b"NX")),
                    SetTtl::Xx => a.push(arg(b"XX")),
                    SetTtl::Get => a.push(arg(b"GET")),
                }
                a
            }
            Op::Get(k) => vec![arg(b"GET"), arg(k.name())],
            Op::Del(k) => {
                writes = Some(k.name());
                vec![arg(b"DEL"), arg(k.name())]
            }
            Op::Incr(k) => {
                writes = Some(k.name());
                vec![arg(b"INCR"), arg(k.name())]
            }
            Op::Append(k, v) => {
                writes = Some(k.name());
                vec![arg(b"APPEND"), arg(k.name()), arg(&short(v))]
            }
            Op::IncrByFloat(k, f) => {
                writes = Some(k.name());
                vec![arg(b"INCRBYFLOAT"), arg(k.name()), arg(&float_text(&f))]
            }
            Op::GetRange(k, s, e) => vec![
                arg(b"GETRANGE"),
                arg(k.name()),
                arg(s.value(now_ms).to_string().as_bytes()),
                arg(e.value(now_ms).to_string().as_bytes()),
            ],
            Op::SetRange(k, off, v) => {
                let v = short(v);
                if !v.is_empty() {
                    writes = Some(k.name());
                }
                vec![
                    arg(b"SETRANGE"),
                    arg(k.name()),
                    arg(off.value(now_ms).to_string().as_bytes()),
                    arg(&v),
                ]
            }
            Op::Expire(which, k, n, flag) => {
                let name: &[u8] = match which % 4 {
                    0 => b"EXPIRE",
                    1 => b"PEXPIRE",
                    2 => b"EXPIREAT",
                    _ => b"PEXPIREAT",
                };
                let mut a = vec![
                    arg(name),
                    arg(k.name()),
                    arg(n.value(now_ms).to_string().as_bytes()),
                ];
                match flag % 6 {
                    0 => a.push(arg(b"NX")),
                    1 => a.push(arg(b"XX")),
                    2 => a.push(arg(b"GT")),
                    3 => a.push(arg(b"LT")),
                    _ => {}
                }
                a
            }
            Op::ExpireTime(k) => vec![arg(b"PEXPIRETIME"), arg(k.name())],
            Op::Ttl(k) => vec![arg(b"TTL"), arg(k.name())],
            Op::Persist(k) => vec![arg(b"PERSIST"), arg(k.name())],
            Op::Watch(keys) => {
                let mut a = vec![arg(b"WATCH")];
                a.extend(keys.iter().take(4).map(|k| arg(k.name())));
                a
            }
            Op::Unwatch => vec![arg(b"UNWATCH")],
            Op::Multi => vec![arg(b"MULTI")],
            Op::Exec => vec![arg(b"EXEC")],
            Op::Discard => vec![arg(b"DISCARD")],
            Op::Scan(cursor, count, pattern) => {
                let cur = match cursor {
                    Int::Small(v) if v < 0 => v.to_string(),
                    Int::Any(v) => (v as u64).to_string(),
                    other => other.value(now_ms).to_string(),
                };
                let mut a = vec![arg(b"SCAN"), arg(cur.as_bytes())];
                if let Some(n) = count {
                    a.extend([arg(b"COUNT"), arg(n.to_string().as_bytes())]);
                }
                if let Some(p) = pattern {
                    a.extend([arg(b"MATCH"), arg(&short(p))]);
                }
                a
            }
            Op::Keys(p) => vec![arg(b"KEYS"), arg(&short(p))],
            Op::DbSize => vec![arg(b"DBSIZE")],
            Op::Flush => vec![arg(b"FLUSHDB")],
            Op::Push(k, v) => vec![arg(b"RPUSH"), arg(k.name()), arg(&short(v))],
            Op::SAdd(k, m) => vec![arg(b"SADD"), arg(k.name()), arg(&[m])],
            Op::HSet(k, f, v) => vec![arg(b"HSET"), arg(k.name()), arg(&[f]), arg(&short(v))],
            Op::ZAdd(k, s, m) => vec![arg(b"ZADD"), arg(k.name()), arg(&float_text(&s)), arg(&[m])],
            Op::XAdd(k, id) => {
                const IDS: &[&str] = &[
                    "*",
                    "5-*",
                    "5-18446744073709551615",
                    "18446744073709551615-18446744073709551615",
                    "18446744073709551615-*",
                    "0-1",
                    "0-*",
                    "7",
                ];
                vec![
                    arg(b"XADD"),
                    arg(k.name()),
                    arg(IDS[usize::from(id) % IDS.len()].as_bytes()),
                    arg(b"f"),
                    arg(b"v"),
                ]
            }
            Op::Hello(v) => vec![arg(b"HELLO"), arg(if v % 2 == 0 { b"2" } else { b"3" })],
            Op::Reset => vec![arg(b"RESET")],
            Op::Raw(a) => {
                let a: Vec<Bytes> = a.into_iter().take(8).map(|x| arg(&short(x))).collect();
                if a.is_empty() {
                    continue;
                }
                a
            }
            Op::Tick(ms) => {
                h.now = h.now.saturating_add(Duration::from_millis(u64::from(ms)));
                continue;
            }
            Op::Jump(s) => {
                h.now = h.now.saturating_add(Duration::from_secs(u64::from(s)));
                continue;
            }
            Op::ActiveExpire(n) => {
                h.store.active_expire(h.now, usize::from(n));
                let _ = h.store.next_expiry();
                continue;
            }
            Op::Check => {
                h.check();
                continue;
            }
        };
        let name = args[0].to_ascii_lowercase();
        let in_multi = h.models[c].in_multi;
        let v = h.exec(c, args.clone());
        let ok = !matches!(v, Value::Error(_));
        match &name[..] {
            b"multi" if ok && !in_multi => {
                h.models[c].in_multi = true;
                h.models[c].queued.clear();
            }
            b"watch" if ok => {
                for k in [Key::A, Key::B, Key::C, Key::D] {
                    if args[1..].iter().any(|a| &a[..] == k.name()) {
                        h.models[c].watched.insert(k.name());
                    }
                }
            }
            b"exec" | b"discard" | b"unwatch" | b"reset" => {
                let real_exec = in_multi && args.len() == 1 && &name[..] == b"exec";
                if real_exec && h.models[c].dirty {
                    assert!(
                        matches!(v, Value::NullArray)
                            || matches!(&v, Value::Error(e) if e.starts_with(b"EXECABORT")),
                        "EXEC after a watched key was written by the other client: {v:?}"
                    );
                }
                if real_exec {
                    if let Value::Array(results) = &v {
                        let queued = std::mem::take(&mut h.models[c].queued);
                        for (w, r) in queued.into_iter().zip(results) {
                            if let (Some(k), false) = (w, matches!(r, Value::Error(_))) {
                                h.wrote(c, k);
                            }
                        }
                    }
                }
                // EXEC and DISCARD end a transaction (and its watches) whatever the outcome;
                // UNWATCH and RESET forget the watches when they run.
                let ends = if matches!(&name[..], b"exec" | b"discard") {
                    in_multi && args.len() == 1
                } else {
                    ok
                };
                if ends {
                    let m = &mut h.models[c];
                    m.watched.clear();
                    m.dirty = false;
                    m.in_multi = false;
                    m.queued.clear();
                }
            }
            _ => {
                if in_multi {
                    if matches!(&v, Value::SimpleString(s) if &s[..] == b"QUEUED") {
                        h.models[c].queued.push(writes);
                    }
                } else if ok {
                    if let Some(k) = writes {
                        // DEL of a missing key writes nothing.
                        if !matches!(v, Value::Integer(0)) || &name[..] != b"del" {
                            h.wrote(c, k);
                        }
                    }
                }
            }
        }
    }
    h.check();
});
