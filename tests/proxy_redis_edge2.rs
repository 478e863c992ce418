//! `ferry proxy --protocol redis --balance hash` over several upstreams, as a demanding
//! client sees it: a key is where a single-key command looks for it whichever command
//! wrote it. `MGET`/`MSET`/`DEL`/`UNLINK`/`EXISTS`/`TOUCH` split by key and merge;
//! `DBSIZE`/`KEYS`/`FLUSHALL`, `SCRIPT LOAD` and `FUNCTION LOAD` reach every upstream; other
//! commands whose keys are on different upstreams get `-CROSSSLOT`; hash tags `{…}` as in
//! Redis Cluster; transactions run on the upstream of their first key and give the
//! connection back after `EXEC`. Real redis-server upstreams, redis-py and raw sockets.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{python, run, Redis, Server};

fn proxy(driver: &str, upstreams: &[&Redis], extra: &[&str]) -> Server {
    let list = upstreams
        .iter()
        .map(|r| r.addr())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["--health-interval", "0"];
    if !extra.contains(&"--balance") {
        args.extend_from_slice(&["--balance", "hash"]);
    }
    args.extend_from_slice(extra);
    Server::start_proxy("redis", driver, &list, &args, &[]).0
}

/// Run a redis-py script (`P`: the proxy's port, `U`: the upstreams' ports); it prints `ok`.
fn py(port: &str, ups: &[&Redis], body: &str) {
    let ports: Vec<String> = ups.iter().map(|r| r.port.to_string()).collect();
    let script = format!(
        "import redis\n\
         P = {port}\n\
         U = [{}]\n\
         r = redis.Redis(host='127.0.0.1', port=P, socket_timeout=20, decode_responses=True)\n\
         direct = [redis.Redis(host='127.0.0.1', port=u, socket_timeout=20, decode_responses=True) for u in U]\n\
         def home(k):\n    \
             '''The upstream holding k (written through the proxy).'''\n    \
             h = [i for i, d in enumerate(direct) if d.exists(k)]\n    \
             assert len(h) == 1, (k, h)\n    \
             return h[0]\n\
         {body}\n\
         print('ok')\n",
        ports.join(",")
    );
    let out = run(Command::new("timeout").args(["90", &python(), "-c", &script]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `MSET` then `GET`: each key is where `GET` looks for it; `MGET`, `EXISTS`, `DEL`,
/// `UNLINK`, `TOUCH`, `DBSIZE` and `KEYS` see every upstream.
fn multi_key_commands_split_by_key(driver: &str) {
    let (a, b) = (Redis::start(), Redis::start());
    let p = proxy(driver, &[&a, &b], &[]);
    py(
        &p.port(),
        &[&a, &b],
        r#"
keys = ['k%d' % i for i in range(40)]
assert r.mset({k: 'v' + k for k in keys}) is True
for k in keys:
    assert r.get(k) == 'v' + k, k
homes = [home(k) for k in keys]
assert 0 < sum(homes) < len(keys), homes  # both upstreams hold some
# The same key layout a single-key SET gives.
for k in keys:
    r.delete(k)
    r.set(k, 'x')
assert [home(k) for k in keys] == homes
assert r.mget(keys + ['nope']) == ['x'] * 40 + [None]
assert r.exists(*keys, 'nope', keys[0]) == 41
assert r.touch(*keys) == 40
assert r.dbsize() == 40
assert sorted(r.keys('*')) == sorted(keys)
assert r.delete(*keys[:20]) == 20
assert r.unlink(*keys) == 20
assert r.dbsize() == 0
# An error from any part is the reply.
r.set('k1', 'x'); r.lpush('k2', 'l')
assert r.mget('k1', 'k2', 'k3') == ['x', None, None]
try:
    r.execute_command('MSET', 'k1', 'a', 'k2')
    raise Exception('odd MSET accepted')
except redis.ResponseError as e:
    assert 'wrong number of arguments' in str(e), e
assert r.flushall() is True
assert r.dbsize() == 0
"#,
    );
}

/// `SCAN` walks every upstream, one after another, with cursors the proxy makes global.
fn scan_walks_every_upstream(driver: &str) {
    let (a, b, c) = (Redis::start(), Redis::start(), Redis::start());
    let p = proxy(driver, &[&a, &b, &c], &[]);
    py(
        &p.port(),
        &[&a, &b, &c],
        r#"
keys = ['sc%d' % i for i in range(300)]
r.mset({k: 1 for k in keys})
r.hset('h', mapping={'f%d' % i: i for i in range(50)})
assert all(d.dbsize() > 0 for d in direct)
seen = list(r.scan_iter(count=17))
assert sorted(seen) == sorted(keys + ['h']), len(seen)
assert sorted(r.scan_iter(match='sc1*', count=1000)) == sorted(k for k in keys if k.startswith('sc1'))
assert sorted(r.scan_iter(_type='hash')) == ['h']
assert len(dict(r.hscan_iter('h'))) == 50
try:
    r.scan(cursor='nope')
    raise Exception('bad cursor accepted')
except redis.ResponseError as e:
    assert 'invalid cursor' in str(e), e
"#,
    );
}

/// Other multi-key commands run where their keys are, or are refused with `-CROSSSLOT`
/// when those are on different upstreams; hash tags keep keys together.
fn cross_upstream_keys_are_refused(driver: &str) {
    let (a, b) = (Redis::start(), Redis::start());
    let p = proxy(driver, &[&a, &b], &[]);
    py(
        &p.port(),
        &[&a, &b],
        r#"
keys = ['c%d' % i for i in range(20)]
for k in keys:
    r.set(k, k)
x = keys[0]
y = next(k for k in keys if home(k) != home(x))
z = next(k for k in keys[1:] if home(k) == home(x))
for cmd in [('RENAME', x, y), ('SUNIONSTORE', x, y), ('SMOVE', x, y, 'm'),
            ('EVAL', 'return 1', 2, x, y), ('MSETNX', x, 1, y, 2),
            ('ZUNIONSTORE', 'd', 2, x, y), ('BITOP', 'AND', x, y)]:
    try:
        r.execute_command(*cmd)
        raise Exception('accepted: %r' % (cmd,))
    except redis.ResponseError as e:
        assert str(e).startswith('CROSSSLOT'), (cmd, e)
assert r.get(x) == x and r.get(y) == y
# Keys on one upstream: the command runs there.
assert r.rename(x, z) is True
assert r.get(z) == x and r.get(x) is None
# EVAL goes to the upstream of its first key (not of the script).
for k in keys[1:]:
    assert r.eval("return redis.call('get', KEYS[1])", 1, k) in (k, x), k
# Hash tags: one upstream for the whole family.
for i in range(20):
    r.set('{user7}:f%d' % i, i)
assert len({home('{user7}:f%d' % i) for i in range(20)}) == 1
assert r.rename('{user7}:f1', '{user7}:g1') is True
r.sadd('{user7}:a', 1); r.sadd('{user7}:b', 2)
assert r.sunionstore('{user7}:s', '{user7}:a', '{user7}:b') == 2
"#,
    );
}

/// `SCRIPT LOAD` reaches every upstream: `EVALSHA` works whatever its key (redis-py's
/// `Script` retries `NOSCRIPT` once with `SCRIPT LOAD`, which must make it stick).
fn scripts_and_functions_reach_every_upstream(driver: &str) {
    let (a, b) = (Redis::start(), Redis::start());
    let p = proxy(driver, &[&a, &b], &[]);
    py(
        &p.port(),
        &[&a, &b],
        r##"
incr = r.register_script("return redis.call('incr', KEYS[1])")
keys = ['s%d' % i for i in range(20)]
for k in keys:
    assert incr(keys=[k]) == 1, k
assert len({home(k) for k in keys}) == 2
sha = r.script_load("return 'hi'")
assert all(d.script_exists(sha) == [True] for d in direct)
lib = "#!lua name=mylib\nredis.register_function('myget', function(keys, args) return redis.call('get', keys[1]) end)"
assert r.function_load(lib) == 'mylib'
for k in keys:
    assert r.fcall('myget', 1, k) == '1', k
assert r.function_delete('mylib') is True
assert r.script_flush() is True
assert all(d.script_exists(sha) == [False] for d in direct)
"##,
    );
}

/// Round robin over several upstreams too: `SCRIPT LOAD` reaches each, so `EVALSHA`
/// (wherever it goes) finds the script.
fn scripts_reach_every_upstream_round_robin(driver: &str) {
    let (a, b) = (Redis::start(), Redis::start());
    let p = proxy(driver, &[&a, &b], &["--balance", "round-robin"]);
    py(
        &p.port(),
        &[&a, &b],
        r#"
one = r.register_script("return 1")
for i in range(20):
    assert one() == 1, i
sha = r.script_load("return 2")
assert all(d.script_exists(sha) == [True] for d in direct)
for i in range(10):
    assert r.evalsha(sha, 0) == 2, i
assert r.script_flush() is True
assert all(d.script_exists(sha) == [False] for d in direct)
"#,
    );
}

/// A transaction runs on the upstream of its first key; a command for another upstream is
/// refused and the transaction aborted; after `EXEC` the client's keys are anywhere again.
fn transactions_follow_their_keys(driver: &str) {
    let (a, b) = (Redis::start(), Redis::start());
    let p = proxy(driver, &[&a, &b], &[]);
    py(
        &p.port(),
        &[&a, &b],
        r#"
keys = ['t%d' % i for i in range(20)]
for k in keys:
    r.set(k, 0)
homes = {k: home(k) for k in keys}
x = keys[0]
same = [k for k in keys if homes[k] == homes[x]]
other = [k for k in keys if homes[k] != homes[x]]
assert len(same) > 1 and other
# A pipeline with transaction=True, twice on one pooled connection.
for n in (1, 2):
    pipe = r.pipeline()
    for k in same:
        pipe.incr(k)
    assert pipe.execute() == [n] * len(same)
    assert all(homes[k] == home(k) for k in keys)
assert [r.get(k) for k in same] == ['2'] * len(same)
# Keys on another upstream inside MULTI: refused, EXEC aborts, nothing written.
pipe = r.pipeline()
pipe.incr(x); pipe.incr(other[0])
try:
    pipe.execute()
    raise Exception('cross-upstream transaction ran')
except redis.ResponseError as e:
    assert 'CROSSSLOT' in str(e), e
assert r.get(x) == '2' and r.get(other[0]) == '0'
# WATCH / MULTI / EXEC, then the same connection reaches every upstream.
c = redis.Redis(host='127.0.0.1', port=P, socket_timeout=20, decode_responses=True, single_connection_client=True)
c.watch(x)
v = int(c.get(x))
t = c.pipeline()
t.multi(); t.set(x, v + 10); t.execute()
assert c.get(x) == '12'
assert [c.get(k) for k in other] == ['0'] * len(other)
c.execute_command('MULTI')
assert c.execute_command('EXEC') == []
assert [c.get(k) for k in other] == ['0'] * len(other)
# Commands pipelined behind EXEC (then a half-close): they run where their keys are.
import socket
for shut in (False, True):
    s = socket.create_connection(('127.0.0.1', P)); s.settimeout(20)
    y = other[0]
    s.sendall(('MULTI\r\nINCR %s\r\nEXEC\r\nINCR %s\r\nGET %s\r\nDISCARD\r\nGET %s\r\n' % (x, y, x, y)).encode())
    if shut:
        s.shutdown(socket.SHUT_WR)
    want = ('+OK\r\n+QUEUED\r\n*1\r\n:%d\r\n:%d\r\n$2\r\n%d\r\n-ERR DISCARD without MULTI\r\n$1\r\n%d\r\n'
            % (13 + shut, 1 + shut, 13 + shut, 1 + shut)).encode()
    got = b''
    while len(got) < len(want):
        d = s.recv(65536)
        if not d:
            break
        got += d
    assert got == want, (got, want)
    s.close()
"#,
    );
}

/// Raw bytes: `MULTI` is answered at once (clients wait for it before queueing); a client
/// that hangs up inside `MULTI` leaves nothing queued on any upstream.
fn multi_reply_and_hang_up_mid_transaction(driver: &str) {
    let (a, b) = (Redis::start(), Redis::start());
    let p = proxy(driver, &[&a, &b], &[]);
    let port: u16 = p.port().parse().unwrap();
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    let read = |s: &mut TcpStream, want: &[u8]| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want.len() {
            let n = s.read(&mut buf).expect("reply in time");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    };
    for i in 0..3 {
        let mut s = connect();
        s.write_all(b"MULTI\r\n").unwrap();
        read(&mut s, b"+OK\r\n");
        s.write_all(format!("SET h{i} 1\r\nSET h{i}x 2\r\n").as_bytes())
            .unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap(); // the first reply started: the MULTI is upstream
        drop(s);
    }
    let mut s = connect();
    s.write_all(b"EXISTS h0 h1 h2\r\nMULTI\r\nEXEC\r\nDBSIZE\r\n")
        .unwrap();
    read(&mut s, b":0\r\n+OK\r\n*0\r\n:0\r\n");
}

/// The proxy's peak RSS (`VmHWM`) and current RSS, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// A 64 MiB `SET` (read whole by the slow path) is held once by the proxy, not copied
/// again to go upstream (that cost twice its size); large arguments arrive intact.
fn large_argument_is_held_once(driver: &str) {
    let r = Redis::start();
    let p = Server::launch(
        "redis",
        &[
            "proxy",
            "--protocol",
            "redis",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &r.addr(),
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--driver",
            driver,
            "--health-interval",
            "0",
        ],
        &[],
        None,
    );
    let port: u16 = p.port().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let reply = |s: &mut TcpStream, want: &[u8]| {
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    };
    // Warm up (the worker's first allocations), and a few arguments around the size
    // that goes out uncopied, in one command: they arrive as sent.
    s.write_all(b"PING\r\n").unwrap();
    reply(&mut s, b"+PONG\r\n");
    let mut cmd = b"*8\r\n$4\r\nHSET\r\n$1\r\nh\r\n".to_vec();
    for (f, n) in [("a", 65535usize), ("b", 65536), ("c", 300_000)] {
        let v = f.repeat(n);
        cmd.extend_from_slice(format!("$1\r\n{f}\r\n${n}\r\n{v}\r\n").as_bytes());
    }
    s.write_all(&cmd).unwrap();
    reply(&mut s, b":3\r\n");
    s.write_all(b"HSTRLEN h a\r\nHSTRLEN h b\r\nHSTRLEN h c\r\nEVAL \"return redis.call('hget', 'h', 'c') == string.rep('c', 300000) and 1 or 0\" 0\r\n").unwrap();
    reply(&mut s, b":65535\r\n:65536\r\n:300000\r\n:1\r\n");
    std::thread::sleep(Duration::from_millis(200));
    let (_, base) = memory_kib(p.child.id());
    const BIG: usize = 64 << 20;
    s.write_all(format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${BIG}\r\n").as_bytes())
        .unwrap();
    let chunk = vec![b'v'; 1 << 20];
    for _ in 0..BIG / chunk.len() {
        s.write_all(&chunk).unwrap();
    }
    s.write_all(b"\r\nSTRLEN big\r\n").unwrap();
    reply(&mut s, format!("+OK\r\n:{BIG}\r\n").as_bytes());
    let (peak, _) = memory_kib(p.child.id());
    let cost = peak.saturating_sub(base);
    // Once (64 MiB) plus buffers; twice was 128 MiB and more.
    assert!(
        cost < 100 << 10,
        "peak {peak} KiB, {cost} KiB over the base {base} KiB"
    );
}

per_driver!(
    multi_key_commands_split_by_key,
    cross_upstream_keys_are_refused,
    scan_walks_every_upstream,
    scripts_and_functions_reach_every_upstream,
    scripts_reach_every_upstream_round_robin,
    transactions_follow_their_keys,
    multi_reply_and_hang_up_mid_transaction,
    large_argument_is_held_once,
);
