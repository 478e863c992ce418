//! Differential test: one script of commands covering every command of the contract, sent by
//! our `ClientConnection` to both our example server and a real `redis-server`; the replies
//! must be identical. Replies whose order Redis leaves open (KEYS, SMEMBERS, HGETALL, SPOP
//! with a count, SCAN) are compared as sorted sets; INFO, CLIENT ID, TTL and friends by shape.

mod common;

use common::{start_ferry, start_redis, Client};
use ferry_resp::Value;

/// `mode command`: `=` exact, `s` sorted elements, `i` any integer, `t` TTL class (-2, -1,
/// positive), `b` any string, `m` any map/array, `S` a full SCAN iteration with these options,
/// `n` any string or null, `~` integers within a minute's worth of milliseconds of each other
/// (PTTL of far deadlines).
const SCRIPT: &str = r#"
= FLUSHALL
= PING
= PING hello
= ECHO message
= ECHO
= SELECT 0
= SELECT 16
= SELECT x
= DBSIZE
= SET k1 v1
= GET k1
= SET k1 v2 NX
= SET k1 v2 XX
= GET k1
= SET k1 v3 GET
= SET k2 v NX GET
= SET k1 v EX 100
t TTL k1
t PTTL k1
= SET k1 v PX 100000
t PTTL k1
= SET k1 v KEEPTTL
t TTL k1
= SET k1 v EX 0
= SET k1 v EX -5
= SET k1 v EX notanumber
= SET k1 v EX
= SET k1 v NX XX
= SET k1 v EX 10 PX 100
= SET k1 v FOO
= GET nokey
= GETSET k1 new
= GETSET nokey2 x
= GET nokey2
= GETSET
= DEL nokey2
= DEL k1 k2 k3
= EXISTS k1
= SET counter 10
= INCR counter
= INCRBY counter 5
= DECR counter
= DECRBY counter 3
= INCRBY counter -100
= INCR newcounter
= DECR newcounter2
= INCRBY counter notint
= INCRBY counter 1.5
= SET big 9223372036854775807
= INCR big
= INCRBY big 1
= SET small -9223372036854775808
= DECR small
= DECRBY small 1
= SET notnum hello
= INCR notnum
= SET spaced " 12"
= INCR spaced
= MSET a 1 b 2 c 3
= MGET a b c nokey
= MSET a
= MSET a 1 b
= APPEND a xyz
= APPEND newappend abc
= GET a
= STRLEN a
= STRLEN nokey
= EXISTS a b c nokey a
= DEL a
= EXISTS a
= EXPIRE b 100
t TTL b
= EXPIRE nokey 100
= EXPIRE b notint
= PEXPIRE b 50000
t PTTL b
= PERSIST b
= PERSIST b
= TTL b
= TTL nokey
= PTTL nokey
= EXPIRE b 100 NX
= EXPIRE b 100 NX
= EXPIRE b 200 XX
= EXPIRE b 50 GT
= EXPIRE b 500 GT
t TTL b
= EXPIRE b 100 NX XX
= PEXPIRE c -1
= EXISTS c
= TYPE b
= TYPE nokey
= RPUSH list a b c
= LPUSH list z y
= LLEN list
= LRANGE list 0 -1
= LRANGE list 1 2
= LRANGE list -2 -1
= LRANGE list 5 10
= LRANGE list 0 100
= LRANGE list x 1
= TYPE list
= LPOP list
= RPOP list
= LPOP list 2
= RPOP list 0
= LPOP list -1
= LPOP list 1 2
= LLEN list
= RPOP list 5
= EXISTS list
= LPOP nolist
= LPOP nolist 3
= LLEN nolist
= LPUSH b x
= LRANGE b 0 -1
= GET list
= SADD set a b c a
= SADD set d
= SCARD set
s SMEMBERS set
= SREM set a z
= SCARD set
= SADD b x
= SMEMBERS nokey
= SCARD nokey
= TYPE set
= SPOP noset
= SPOP noset 2
= SPOP set 0
= SPOP set -1
= SADD one x
= SPOP one
= EXISTS one
= SCARD set
s SPOP set 10
= EXISTS set
= HSET hash f1 v1 f2 v2
= HSET hash f1 v1b f3 v3
= HSET hash f1
= HGET hash f1
= HGET hash nofield
= HGET nohash f
s HGETALL hash
= HGETALL nohash
= HDEL hash f2 nofield
= HINCRBY hash counter 5
= HINCRBY hash counter -2
= HINCRBY hash f1 1
= HINCRBY hash counter x
= HSET hash big 9223372036854775807
= HINCRBY hash big 1
= TYPE hash
= HGET b f
= HDEL hash f1 f3 counter big
= EXISTS hash
= ZADD zs 1 a 2 b 3 c
= ZADD zs 1.5 a
= ZADD zs NX 10 a 4 d
= ZADD zs XX 20 d 5 e
= ZADD zs CH 21 d 6 f
= ZADD zs INCR 1 a
= ZADD zs GT 1 a
= ZADD zs LT 1 a
= ZADD zs NX XX 1 a
= ZADD zs GT LT 1 a
= ZADD zs INCR 1 a 2 b
= ZADD zs notfloat a
= ZADD zs 1
= ZCARD zs
= ZRANGE zs 0 -1
= ZRANGE zs 0 -1 WITHSCORES
= ZRANGE zs 0 1 REV
= ZRANGE zs -2 -1 WITHSCORES
= ZRANGE zs 1 3 BYSCORE
= ZRANGE zs (1 +inf BYSCORE WITHSCORES
= ZRANGE zs -inf +inf BYSCORE LIMIT 1 2
= ZRANGE zs 0 -1 LIMIT 0 1
= ZRANGE nozs 0 -1
= ZADD zf 0.1 x 1e3 y -inf z
= ZRANGE zf 0 -1 WITHSCORES
= ZPOPMIN zs
= ZPOPMIN zs 2
= ZPOPMIN zs 0
= ZPOPMIN zs -1
= ZPOPMIN nozs
= ZCARD zs
= ZCARD nozs
= ZADD b 1 x
= ZCARD b
= TYPE zs
= XADD stream 1-1 field value
= XADD stream 1-1 field value
= XADD stream 1-2 a 1 b 2
= XADD stream 0-1 f v
= XADD stream 2-* f v
= XADD stream 2-* f v
= XADD nostream NOMKSTREAM 1-1 f v
= XADD stream MAXLEN 2 3-0 f v
= XADD stream 4-0 f
= XADD stream bad-id f v
= XADD stream2 0-0 f v
b XADD stream3 * f v
= TYPE stream
= EXISTS stream stream3
= XADD b 1-1 f v
s KEYS *
s KEYS z*
s KEYS ?s
s KEYS [hx]*
= KEYS nomatch*
S SCAN 0
S SCAN 0 COUNT 3
S SCAN 0 MATCH z*
S SCAN 0 TYPE zset
= SCAN x
= SCAN 0 COUNT 0
= SCAN 0 FOO bar
= CLIENT SETNAME myname
= CLIENT GETNAME
= CLIENT SETNAME "bad name"
i CLIENT ID
= CLIENT NOSUCH
= CLIENT SETNAME
= CONFIG GET appendonly
= CONFIG GET save
= CONFIG GET nosuchparam
= CONFIG SET nosuchparam x
= CONFIG SET appendonly no
= CONFIG GET
i COMMAND COUNT
b INFO
b INFO server
b INFO keyspace
= PUBLISH chan msg
= SUBSCRIBE
= NOSUCHCOMMAND a b
= nosuchcommand
= GET
= GET a b
= LRANGE list 0
= SET o1 v NX EX 100
t TTL o1
= SET o1 v XX PX 1000000
t PTTL o1
= SET o1 v GET EX 5
t TTL o1
= SET o1 v EX 5 KEEPTTL
= SET o1 v KEEPTTL EX 5
= SET o1 v EX 1.5
= SET o1 v PX 9223372036854775807
= SET o1 v EX 9223372036854775807
= SET o1 v GET GET
= SET o1 v nx
= SET o1 v xx
= EXPIRE o1 100 LT
t TTL o1
= EXPIRE o1 100 GT LT
= EXPIRE o1 100 FOO
= EXPIRE o1 9223372036854775807
= PEXPIRE o1 9223372036854775807
= EXPIREAT o1 1
= EXISTS o1
= SET o2 v
= PEXPIREAT o2 99999999999999
t PTTL o2
= LPUSH pl a b c d e
= LPOP pl 0
= LPOP pl 2
= RPOP pl 10
= LPOP pl abc
= SADD sp a b c
= SPOP sp 0
= SPOP sp abc
= SPOP sp 1 2
s SPOP sp 3
= SPOP sp
= HSET hh f 1
= HINCRBY hh f 9223372036854775807
= HINCRBY hh f -9223372036854775808
= HINCRBY hh g notint
= INCRBY c2 9223372036854775807
= INCRBY c2 1
= DECRBY c3 -9223372036854775808
= DECRBY c3 9223372036854775807
= DECRBY c3 2
= SET lead 007
= INCR lead
= SET plus +5
= INCR plus
= SET neg0 -0
= INCR neg0
= SET huge 99999999999999999999
= INCR huge
= MSET m1 1 m1 2
= GET m1
= DEL m1 m1
= EXISTS nokey1 nokey2
= SELECT -1
= SELECT 00
= HELLO 3 AUTH
= HELLO 3 AUTH default
= HELLO 2 SETNAME
= CLIENT SETNAME ""
= CLIENT GETNAME
= CLIENT SETNAME a\nb
= MULTI
= SET tx 1
= INCR tx
= LPUSH tx x
= EXEC
= GET tx
= MULTI
= SET tx 2
= NOSUCHCOMMAND
= EXEC
= GET tx
= EXEC
= DISCARD
= MULTI
= MULTI
= DISCARD
= SUBSCRIBE ch1 ch2
= PSUBSCRIBE p*
= UNSUBSCRIBE ch1
= PUNSUBSCRIBE
= UNSUBSCRIBE
= DBSIZE
m HELLO 3
= HELLO 4
= HELLO x
= HELLO 3 BOGUS
= PING
= GET k1
= HSET h3 a 1
s HGETALL h3
= ZRANGE zf 0 -1 WITHSCORES
= ZADD zr 1 a 2 b
= ZPOPMIN zr 2
= ZPOPMIN zr
= SMEMBERS nokey
= SPOP noset 2
= LPOP nolist 2
= CONFIG GET appendonly
= SADD r3set a
= SMEMBERS r3set
= SPOP r3set 5
= LPOP r3nolist 1
= RPUSH r3l a b c
= LPOP r3l 2
= RPOP r3l 0
= ZADD r3z 1 a 2 b 3 c
= ZRANGE r3z 0 1 WITHSCORES
= ZPOPMIN r3z 1
= ZPOPMIN r3z 5
= ZPOPMIN r3z 5
= ZADD r3z INCR 2.5 q
= ZADD r3z XX INCR 1 nosuch
s CONFIG GET save appendonly
= HGETALL nohash
= MGET a nokey
= TTL nokey
= SET r3 v GET
= SET r3 w NX GET
= GETSET nope x
= TYPE r3
= ECHO r3
= CLIENT GETNAME
m HELLO 2
= SMEMBERS r3set
m HELLO
m HELLO 3 SETNAME r3name
= CLIENT GETNAME
= SUBSCRIBE ch3
= GET k1
= UNSUBSCRIBE ch3
= RESET
= PING
= FLUSHDB
= DBSIZE
= PING a b
= ECHO a b
= SET exat v EXAT 1
= EXISTS exat
= SET exat v PXAT 99999999999999
t TTL exat
= SET exat v EXAT 99999999999 KEEPTTL
= GETSET list x
= SET wt v
= LRANGE wt 0 -1
= SADD wt x
= HSET wt f v
= ZADD wt 1 x
= XADD wt 1-1 f v
= SMEMBERS wt
= HGETALL wt
= ZRANGE wt 0 -1
= LLEN wt
= SCARD wt
= ZCARD wt
= HGET wt f
= HDEL wt f
= HINCRBY wt f 1
= SREM wt x
= SPOP wt
= LPOP wt
= ZPOPMIN wt
= APPEND zs x
= STRLEN zs
= GET zs
= MGET zs wt
= INCR zs
= HSET odd f
= HSET odd f v g
= EXPIRE
= EXPIRE a 1 2
= TTL a b
= CLIENT GETNAME x
= CLIENT ID x
s CONFIG GET save appendonly
= CONFIG
= CONFIG NOSUCH
= COMMAND NOSUCH
= ZADD inf +inf a -inf b
= ZRANGE inf 0 -1 WITHSCORES
= ZADD inf INCR -inf a
= ZRANGE inf 0 -1 WITHSCORES
= ZADD inf 1e400 c
= ZADD inf nan d
= ZRANGE inf 100 200
= ZRANGE inf -100 -50
= ZRANGE inf 2 1
= XADD capped MAXLEN ~ 1 1-1 f v
= XADD capped MAXLEN = 1 2-1 f v
= XADD capped MINID 2-0 3-1 f v
= XADD capped LIMIT 1 4-1 f v
= SET "key with space" v
s KEYS key*
= KEYS \*
= SET k[1] v
s KEYS k\[1\]
= LRANGE nolist 0 -1
= SCAN 0 COUNT
m SCAN 18446744073709551615
= DBSIZE extra
= FLUSHDB SYNC
= DBSIZE
= FLUSHALL ASYNC
= FLUSHALL BOGUS
= SET f 10.5
= INCRBYFLOAT f 0.1
= INCRBYFLOAT f 1e308
= INCRBYFLOAT f 1e400
= INCRBYFLOAT f -1e400
= SET f 0.1
= INCRBYFLOAT f 0.2
= INCRBYFLOAT f 3.14159265358979323846
= INCRBYFLOAT f -0.00000000000000001
= INCRBYFLOAT f 123456789012345678901234567890
= INCRBYFLOAT f -123456789012345678901234567890
= INCRBYFLOAT f abc
= INCRBYFLOAT f inf
= INCRBYFLOAT f -inf
= INCRBYFLOAT f nan
= INCRBYFLOAT f 0x10
= INCRBYFLOAT f 0x1.8p1
= INCRBYFLOAT f " 1"
= INCRBYFLOAT f "1 "
= INCRBYFLOAT f ""
= INCRBYFLOAT f 1e
= INCRBYFLOAT f .5
= INCRBYFLOAT f 1.
= INCRBYFLOAT f +5
= INCRBYFLOAT f 1e-5000
= INCRBYFLOAT f 1e5000
= INCRBYFLOAT f 1.18e4932
= INCRBYFLOAT f 1.18e4932
= GET f
= INCRBYFLOAT nof 1.5
= INCRBYFLOAT nof2 -0
= INCRBYFLOAT f
= INCRBYFLOAT f 1 2
= SET f abc
= INCRBYFLOAT f 1
= SET f " 1"
= INCRBYFLOAT f 1
= SET f 1e
= INCRBYFLOAT f 1
= SET f 7.0e-1
= INCRBYFLOAT f 0
= LPUSH fl x
= INCRBYFLOAT fl 1
= INCRBYFLOAT fl x
= SET f 1
= EXPIRE f 100
= INCRBYFLOAT f 1
t TTL f
= SET s "Hello World"
= GETRANGE s 0 3
= GETRANGE s -3 -1
= GETRANGE s 0 -1
= GETRANGE s 10 100
= GETRANGE s 5 3
= GETRANGE s -100 -50
= GETRANGE s -100 2
= GETRANGE s 100 200
= GETRANGE s -1 -100
= GETRANGE s 11 11
= GETRANGE s 9223372036854775807 1
= GETRANGE s -9223372036854775808 -1
= GETRANGE s x 1
= GETRANGE s 0 y
= GETRANGE s 0
= GETRANGE nokey 0 1
= GETRANGE nokey x 1
= GETRANGE fl 0 1
= SUBSTR s 0 4
= SUBSTR s 0
= SET empty ""
= GETRANGE empty 0 -1
= GETRANGE empty -1 -1
= SETRANGE s 6 Redis
= GET s
= SETRANGE s 20 x
= GET s
= SETRANGE nk 2 ab
= GET nk
= SETRANGE nk2 5 ""
= EXISTS nk2
= SETRANGE s 100 ""
= STRLEN s
= SETRANGE s -1 x
= SETRANGE s x x
= SETRANGE fl 0 x
= SETRANGE fl 1 ""
= SETRANGE s 536870912 x
= SETRANGE nk4 536870912 x
= SETRANGE nk4 536870912 ""
= SETRANGE s 1
= SET n 10
= SETRANGE n 0 9
= GET n
= INCR n
= SET f 1
= EXPIRE f 100
= SETRANGE f 0 2
t TTL f
= SET k v PXAT 9223372036854775807
= PEXPIRETIME k
= EXPIRETIME k
~ PTTL k
~ TTL k
= SET k v PXAT 18446744073709551
= PEXPIRETIME k
= SET k v PXAT 25340230080000000
= PEXPIRETIME k
~ PTTL k
= SET k v EXAT 9223372036854775
= EXPIRETIME k
= PEXPIRETIME k
~ PTTL k
= SET k v EXAT 9223372036854776
= SET k v EXAT 18446744073709551
= SET k v PX 9223372036854775807
= SET k v EX 9223372036854775
= SET k v PXAT 0
= SET k v EXAT -1
= PEXPIRETIME k
= PEXPIREAT k 9223372036854775807
= PEXPIRETIME k
= EXPIREAT k 9223372036854775
= EXPIRETIME k
= EXPIREAT k 9223372036854776
= PEXPIRE k 9223372036854775807
= PERSIST k
= PEXPIRETIME k
= EXPIRETIME nokey
= PEXPIRETIME nokey
= EXPIRETIME
= AUTH a b
= AUTH default x
= AUTH default ""
= AUTH x
= AUTH a b c
= AUTH
= INFO nosuch
= INFO nosuch other
= WATCH
= UNWATCH x
= WATCH k k nokey
= MULTI
= WATCH k
= UNWATCH
= GET k
= EXEC
= WATCH k
= SET k changed
= MULTI
= GET k
= EXEC
= WATCH k
= SET k v NX
= DEL nokey
= GET k
= MULTI
= GET k
= EXEC
= WATCH nokey
= SET nokey v
= UNWATCH
= MULTI
= GET nokey
= EXEC
= WATCH k
= EXEC
= SET k again
= MULTI
= EXEC
= WATCH k
= SET k x
= MULTI
= NOSUCHCOMMAND
= EXEC
= MULTI
= EXEC
= WATCH k
= MULTI
= DISCARD
= SET k y
= MULTI
= EXEC
= MULTI
= WATCH
= EXEC
= FLUSHDB
= SCAN -1
= SCAN -0
= SCAN +0
= SCAN 00
= SCAN ""
= SCAN -18446744073709551615
= SCAN 18446744073709551616
= SCAN " 1"
= SCAN "1 "
= SCAN -
= SCAN +
= SCAN 0x1
m HELLO 3
= INFO nosuch
= INCRBYFLOAT f3 2.5
= WATCH k
= SET k z
= MULTI
= EXEC
m HELLO 2
= QUIT
"#;

fn sorted(v: Value) -> Value {
    match v {
        Value::Array(mut a) | Value::Set(mut a) => {
            a.sort_by_key(|x| format!("{x:?}"));
            Value::Array(a)
        }
        Value::Map(mut m) => {
            m.sort_by_key(|x| format!("{x:?}"));
            Value::Map(m)
        }
        v => v,
    }
}

fn ttl_class(v: &Value) -> String {
    match v {
        Value::Integer(i) if *i >= 0 => "positive".into(),
        other => format!("{other:?}"),
    }
}

fn shape(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "integer",
        Value::BulkString(_) | Value::VerbatimString { .. } | Value::SimpleString(_) => "string",
        Value::Map(_) | Value::Array(_) => "aggregate",
        Value::Error(_) => "error",
        v if v.is_null() => "null",
        _ => "other",
    }
}

fn full_scan(c: &mut Client, opts: &[&str]) -> Vec<Vec<u8>> {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    for _ in 0..10_000 {
        let mut args: Vec<&[u8]> = vec![b"SCAN", &cursor];
        args.extend(opts.iter().map(|o| o.as_bytes()));
        let v = c.cmd(&args);
        let items = v.as_slice().unwrap_or_else(|| panic!("SCAN reply {v:?}"));
        for k in items[1].as_slice().unwrap() {
            keys.push(k.as_bytes().unwrap().to_vec());
        }
        cursor = items[0].as_bytes().unwrap().to_vec();
        if cursor == b"0" {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Split like a shell: double quotes group words.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut q = false;
    let mut any = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                q = !q;
                any = true;
            }
            ' ' if !q => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn same_replies_as_redis_server() {
    assert_same_replies_as_redis(start_ferry());
}

/// Run [`SCRIPT`] against the server at `ferry` and a fresh real redis-server and insist on
/// the same replies. The root package's `tests/serve_redis_diff.rs` includes this file to run
/// it against `ferry serve --redis`.
pub fn assert_same_replies_as_redis(ferry: std::net::SocketAddr) {
    let redis = start_redis();
    let mut ours = Client::connect(ferry);
    let mut theirs = Client::connect(redis.addr);
    let mut mismatches = Vec::new();
    let mut count = 0;
    for line in SCRIPT.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (mode, cmd) = line.split_at(1);
        let args = words(cmd.trim());
        count += 1;
        if mode == "S" {
            let opts: Vec<&str> = args[2..].iter().map(String::as_str).collect();
            let (a, b) = (full_scan(&mut ours, &opts), full_scan(&mut theirs, &opts));
            if a != b {
                mismatches.push(format!("{cmd}: ferry {a:?} vs redis {b:?}"));
            }
            continue;
        }
        let a = ours.cmd(&args);
        let b = theirs.cmd(&args);
        let same = match mode {
            "=" => a == b,
            "s" => sorted(a.clone()) == sorted(b.clone()),
            "t" => ttl_class(&a) == ttl_class(&b),
            "i" | "b" | "m" => shape(&a) == shape(&b),
            "~" => match (&a, &b) {
                (Value::Integer(x), Value::Integer(y)) => x.abs_diff(*y) < 60_000,
                _ => a == b,
            },
            _ => panic!("bad mode {mode}"),
        };
        if !same {
            mismatches.push(format!("{cmd}:\n   ferry {a:?}\n   redis {b:?}"));
        }
    }
    assert!(count >= 200, "script has only {count} commands");
    assert!(
        mismatches.is_empty(),
        "{} of {count} replies differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
