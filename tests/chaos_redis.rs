//! Chaos tests of `ferry proxy --protocol redis` in front of real redis-server upstreams.
//!
//! Every test builds its own world: two network namespaces joined by a veth pair (unique,
//! pid-based names, deleted on drop, also when the test fails), the proxy and the test's
//! clients in namespace `a` (loopback), three redis-server upstreams in namespace `b` at
//! `10.77.0.2:6381..3`, and, where a test needs latency, stalls, resets or half-open
//! connections, a `ferry-chaos-relay` per upstream inside namespace `a` between the proxy and
//! the upstream. Packet loss comes from an nftables `numgen random` rule inside namespace `b`
//! (`tc netem` is not in this kernel). Shared helpers: `common/chaos.rs` (with
//! `chaos_proxy.rs`), `common/netns.rs`.
//!
//! The proxy runs with `--balance hash` (one kill test also round robin, two workers and a
//! RESP3 client), so a key's `SET` and `GET` go to the same upstream while its breaker is
//! closed. Clients pipeline batches of `SET k v`, `GET k`, `INCR n`,
//! `ECHO e` with a fresh key, value, counter and message per group, and check every reply
//! against what they sent, in order: a reply shifted by one command, or sent to another
//! client, has another command's value (or type) and fails the test.
//!
//! What the proxy promises (apps/proxy/src/redis.rs) and what is asserted:
//! - It never retries a Redis command (the reply to a command already sent cannot be told
//!   apart from a lost one, and most commands are not idempotent): a command in flight on an
//!   upstream that breaks, times out or cannot be reached is answered
//!   `-ERR ferry proxy: upstream connection lost` (or `… no upstream available` while every
//!   breaker is open), in its place in the pipeline. So the tests allow exactly those two
//!   errors under faults (none under loss or latency alone; and Redis's own `-LOADING` from
//!   an upstream just restarted), never another reply, never no reply (the client's
//!   connection stays up, nothing hangs past `--response-timeout`; `BLPOP q 0.2` past its
//!   own timeout plus `--response-timeout`).
//! - Transactions (`MULTI` … `EXEC`, on a connection of the client's own) are applied whole
//!   or not at all, never twice; nothing a client pipelined behind a `MULTI` that failed
//!   runs outside the transaction (the proxy closes such a client after its errors, as a
//!   lost Redis connection would end it).
//! - `INCR` of a fresh counter answers `:1`; at the end every counter is read straight from
//!   every upstream: each is `1` and on one upstream at most (never applied twice), and each
//!   the client saw acknowledged is there (never lost: the kill test restarts its upstream
//!   from an `appendfsync always` AOF). A counter whose `INCR` got an error may or may not be
//!   applied (it may have reached Redis before the connection broke).
//! - A `GET` answers its own `SET`'s value; `nil` only where the key may have moved to
//!   another upstream (a breaker opened between the two) or its `SET` failed.
//! - Breakers open and close as configured (`/metrics` on `--admin`; no retries counted);
//!   healthy upstreams keep answering quickly while one hangs (SIGSTOP, or its port
//!   blackholed: generous bounds only); the proxy's RSS stays under 256 MiB and grows by
//!   less than 64 MiB in each test.
//!
//! Needs root, `ip`, `nft` and redis-server; skips (with the reason printed) otherwise.
//! `CHAOS_PROXY_LOG=debug` sets the proxy's `RUST_LOG`. Every loop is bounded in count and
//! time.

#[path = "common/chaos.rs"]
mod chaos;
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::{median, metric, metrics, ms, read_resp, resp_cmd, Proxy, Resp, PROXY};
use ferry_chaos_relay::{Dir, Faults, Relay};
use netns::NetnsPair;

/// The only errors the proxy may answer in a command's place.
const LOST: &str = "ERR ferry proxy: upstream connection lost";
const NONE_LEFT: &str = "ERR ferry proxy: no upstream available";
/// The proxy still runs, its RSS is under the shared bound (256 MiB) and grew by less than
/// [`RSS_GROWTH_LIMIT_KB`] since `rss0` (KiB, read after it started).
fn memory_bounded(proxy: &mut Proxy, rss0: u64) {
    proxy.assert_alive_and_bounded();
    let rss = proxy.rss_kb();
    eprintln!("proxy RSS {rss0} KiB at the start, {rss} KiB at the end");
    assert!(
        rss < rss0 + RSS_GROWTH_LIMIT_KB,
        "proxy RSS grew from {rss0} to {rss} KiB"
    );
}

/// Redis's own answer while it loads its data after a restart (the command did not run; the
/// proxy may reach a restarted upstream before the test does).
fn loading(e: &str) -> bool {
    e.starts_with("LOADING ")
}

/// Most the proxy's RSS may grow over a test (generous: it holds a few MiB).
const RSS_GROWTH_LIMIT_KB: u64 = 64 * 1024;

/// The world of one test, or the reason it cannot run here.
fn world() -> Option<NetnsPair> {
    chaos::world("redis-server", "--version")
}

/// A redis-server in namespace `b`, killed (after a SIGCONT) on drop.
struct RedisUp {
    ns: String,
    addr: SocketAddr,
    dir: PathBuf,
    /// Persist every write (`appendfsync always`) so a restart after SIGKILL keeps what it
    /// acknowledged.
    aof: bool,
    child: Option<Child>,
}

impl RedisUp {
    fn start(ns: &str, name: &str, addr: SocketAddr, aof: bool) -> RedisUp {
        // Unique per test (namespace) and upstream: tests of one process run in parallel.
        // In memory where there is a tmpfs: `appendfsync always` then costs no disk flush
        // (a shared disk's fsync stalls must not look like a hung upstream), and a SIGKILL
        // loses nothing written.
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            let d = PathBuf::from(format!(
                "/dev/shm/ferry-chaos-redis-{}-{ns}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        } else {
            common::tmp_dir("chaos-redis", &format!("{ns}-{name}"))
        };
        let mut r = RedisUp {
            ns: ns.into(),
            addr,
            dir,
            aof,
            child: None,
        };
        r.spawn();
        r
    }

    /// Start (or restart) the server, on the same address and directory.
    fn spawn(&mut self) {
        let child = NetnsPair::command(&self.ns, "redis-server")
            .args(["--bind", &self.addr.ip().to_string()])
            .args(["--port", &self.addr.port().to_string()])
            .args(["--save", "", "--protected-mode", "no"])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        // Ready when it answers PING (after loading its AOF), checked from namespace `a`.
        let addr = self.addr;
        let ns = self.ns.clone();
        let ok = NetnsPair::in_netns(&ns, move || {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(r) = direct_at(addr, &[vec!["PING".into()]]) {
                    if r == [Resp::Simple("PONG".into())] {
                        return true;
                    }
                }
                std::thread::sleep(ms(20));
            }
            false
        })
        .unwrap();
        assert!(ok, "redis-server at {} did not start", self.addr);
    }

    fn pid(&self) -> i32 {
        chaos::child_pid(&self.child)
    }

    fn signal(&self, sig: i32) {
        chaos::child_signal(&self.child, sig);
    }

    fn kill(&mut self) {
        chaos::child_kill(&mut self.child);
    }
}

impl Drop for RedisUp {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three upstreams in namespace `b`.
fn upstreams(w: &NetnsPair, aof: bool) -> Vec<RedisUp> {
    (0..3)
        .map(|i| {
            let addr = SocketAddr::from((w.b_ip, 6381 + i as u16));
            RedisUp::start(&w.b, &format!("r{}", i + 1), addr, aof)
        })
        .collect()
}

/// A relay per upstream in namespace `a` (listening on 127.0.0.1:7001..), with `faults[i]`.
fn relays(w: &NetnsPair, ups: &[RedisUp], faults: Vec<Faults>) -> Vec<Relay> {
    ups.iter()
        .zip(faults)
        .enumerate()
        .map(|(i, (u, f))| {
            let listen = SocketAddr::from(([127, 0, 0, 1], 7001 + i as u16));
            let up = u.addr;
            NetnsPair::in_netns(&w.a, move || Relay::start(listen, up, f).expect("relay")).unwrap()
        })
        .collect()
}

/// `ferry proxy --protocol redis` in namespace `a` with its health checks off (breakers
/// only: what they do is what the tests check) and `--balance hash`, unless `extra` says.
fn proxy(w: &NetnsPair, upstreams: &[SocketAddr], extra: &[&str]) -> Proxy {
    let ups: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
    proxy_named(w, &ups, extra)
}

fn proxy_named(w: &NetnsPair, upstreams: &[String], extra: &[&str]) -> Proxy {
    let mut args = Vec::new();
    if !extra.contains(&"--health-interval") {
        args.extend_from_slice(&["--health-interval", "0"]);
    }
    if !extra.contains(&"--balance") {
        args.extend_from_slice(&["--balance", "hash"]);
    }
    args.extend_from_slice(extra);
    Proxy::start_named(&w.a, "redis", upstreams, &args)
}

/// Run `cmds` pipelined on a fresh connection to `addr` (from the calling thread's
/// namespace); one reply per command.
fn direct_at(addr: SocketAddr, cmds: &[Vec<String>]) -> Result<Vec<Resp>, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    for c in cmds {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        out.extend(resp_cmd(&args));
    }
    r.get_mut()
        .write_all(&out)
        .map_err(|e| format!("write: {e}"))?;
    cmds.iter().map(|_| read_resp(&mut r)).collect()
}

/// [`direct_at`] from namespace `a`, bypassing the proxy.
fn direct(w: &NetnsPair, addr: SocketAddr, cmds: Vec<Vec<String>>) -> Vec<Resp> {
    NetnsPair::in_netns(&w.a, move || direct_at(addr, &cmds))
        .unwrap()
        .unwrap_or_else(|e| panic!("direct to {addr}: {e}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The keys matching `pattern` on `addr`, with their string values.
fn dump(w: &NetnsPair, addr: SocketAddr, pattern: &str) -> Vec<(String, String)> {
    let keys = match &direct(w, addr, vec![strings(&["KEYS", pattern])])[0] {
        Resp::Array(v) => v
            .iter()
            .map(|k| match k {
                Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("KEYS gave {other:?}"),
            })
            .collect::<Vec<_>>(),
        other => panic!("KEYS gave {other:?}"),
    };
    if keys.is_empty() {
        return Vec::new();
    }
    let mut mget = vec!["MGET".to_string()];
    mget.extend(keys.iter().cloned());
    let Resp::Array(vals) = direct(w, addr, vec![mget]).remove(0) else {
        panic!("MGET failed");
    };
    keys.into_iter()
        .zip(vals)
        .map(|(k, v)| match v {
            Resp::Bulk(Some(b)) => (k, String::from_utf8_lossy(&b).into_owned()),
            other => panic!("{k} is {other:?}"),
        })
        .collect()
}

/// One command a client sent.
#[derive(Clone, Debug)]
enum Sent {
    Set { key: String, val: String },
    Get { key: String, val: String },
    Incr { key: String },
    Echo { msg: String },
}

impl Sent {
    fn args(&self) -> Vec<&str> {
        match self {
            Sent::Set { key, val } => vec!["SET", key, val],
            Sent::Get { key, .. } => vec!["GET", key],
            Sent::Incr { key } => vec!["INCR", key],
            Sent::Echo { msg } => vec!["ECHO", msg],
        }
    }
}

/// What a client got for one command.
#[derive(Clone, Debug)]
struct Reply {
    client: usize,
    sent: Sent,
    /// The reply, or the I/O error that left it unanswered.
    got: Result<Resp, String>,
    /// When its batch was written, since the load began.
    at: Duration,
    /// How long its batch took, from the write to its last reply.
    took: Duration,
}

/// A bounded pipelined load through the proxy.
#[derive(Clone)]
struct Load {
    tag: &'static str,
    /// Per client: `None` sends fresh keys, counters and messages (`SET`, `GET`, `INCR`,
    /// `ECHO` per group); `Some(keys)` only `SET`/`GET` of these keys (each client its own
    /// keys), with fresh values.
    clients: Vec<Option<Arc<Vec<String>>>>,
    batches: usize,
    /// Groups of commands per batch.
    groups: usize,
    /// Pause between batches.
    pause: Duration,
    /// Stop early after this long (the test's assertions then see fewer replies).
    limit: Duration,
    /// Make the first value of every batch this long (replies over many segments and reads).
    big: usize,
    /// The first this many clients speak RESP3 (`HELLO 3` on every connection: the proxy's
    /// RESP3 shared connections, opened with a `HELLO 3` of its own).
    resp3: usize,
}

impl Load {
    fn fresh(tag: &'static str, clients: usize, batches: usize) -> Load {
        Load {
            tag,
            clients: vec![None; clients],
            batches,
            groups: 5,
            pause: Duration::ZERO,
            limit: Duration::from_secs(60),
            big: 24,
            resp3: 0,
        }
    }

    fn resp3(mut self, n: usize) -> Load {
        self.resp3 = n;
        self
    }

    fn big(mut self, n: usize) -> Load {
        self.big = n;
        self
    }

    fn pause(mut self, d: Duration) -> Load {
        self.pause = d;
        self
    }

    /// Run it from namespace `a`, one thread per client; every reply, client by client.
    fn run(&self, w: &NetnsPair) -> Vec<Reply> {
        let spec = self.clone();
        NetnsPair::in_netns(&w.a, move || {
            let t0 = Instant::now();
            let threads: Vec<_> = spec
                .clients
                .iter()
                .enumerate()
                .map(|(c, keys)| {
                    let (spec, keys) = (spec.clone(), keys.clone());
                    std::thread::spawn(move || client(&spec, c, keys, t0))
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("client thread"))
                .collect::<Vec<_>>()
        })
        .unwrap()
    }
}

/// A connection to the proxy (after `HELLO 3` if `resp3`).
fn connect(resp3: bool) -> Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect(PROXY).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::new(s);
    if resp3 {
        r.get_mut()
            .write_all(&resp_cmd(&["HELLO", "3"]))
            .map_err(|e| format!("write: {e}"))?;
        match read_resp(&mut r)? {
            Resp::Array(m) if m.contains(&Resp::Int(3)) => {}
            other => return Err(format!("HELLO 3 answered {other:?}")),
        }
    }
    Ok(r)
}

fn client(spec: &Load, c: usize, keys: Option<Arc<Vec<String>>>, t0: Instant) -> Vec<Reply> {
    let tag = spec.tag;
    let mut out = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    for b in 0..spec.batches {
        if t0.elapsed() > spec.limit {
            break;
        }
        if b > 0 && !spec.pause.is_zero() {
            std::thread::sleep(spec.pause);
        }
        let mut sent = Vec::new();
        for j in 0..spec.groups {
            let id = format!("{tag}:{c}:{b}:{j}");
            let pad = if j == 0 { spec.big } else { 24 };
            let val = format!("v:{id}:{}", "x".repeat(pad));
            let key = match &keys {
                Some(k) => k[(b * spec.groups + j) % k.len()].clone(),
                None => format!("k:{id}"),
            };
            sent.push(Sent::Set {
                key: key.clone(),
                val: val.clone(),
            });
            sent.push(Sent::Get { key, val });
            if keys.is_none() {
                sent.push(Sent::Incr {
                    key: format!("n:{id}"),
                });
                sent.push(Sent::Echo {
                    msg: format!("e:{id}"),
                });
            }
        }
        let mut bytes = Vec::new();
        for s in &sent {
            bytes.extend(resp_cmd(&s.args()));
        }
        let at = t0.elapsed();
        let start = Instant::now();
        let mut got: Vec<Result<Resp, String>> = Vec::new();
        let mut failed = None;
        if conn.is_none() {
            match connect(c < spec.resp3) {
                Ok(r) => conn = Some(r),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(r) = conn.as_mut() {
            match r.get_mut().write_all(&bytes) {
                Err(e) => failed = Some(format!("write: {e}")),
                Ok(()) => {
                    for _ in &sent {
                        match read_resp(r) {
                            Ok(v) => got.push(Ok(v)),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
        }
        if failed.is_some() {
            conn = None;
        }
        let took = start.elapsed();
        let mut got = got.into_iter();
        for s in sent {
            out.push(Reply {
                client: c,
                sent: s,
                got: got
                    .next()
                    .unwrap_or_else(|| Err(failed.clone().unwrap_or_default())),
                at,
                took,
            });
        }
    }
    out
}

/// What the replies of a load add up to.
#[derive(Debug, Default)]
struct Tally {
    commands: usize,
    /// Commands answered with one of the proxy's own errors.
    errors: usize,
    /// `GET`s answered `nil` (their key moved, or their `SET` failed).
    nils: usize,
    /// Counters whose `INCR` was answered `:1`.
    acked: HashSet<String>,
    /// Counters whose `INCR` got an error (applied or not).
    unknown: HashSet<String>,
    /// Errors per client.
    errors_by_client: HashMap<usize, usize>,
}

/// Check every reply against its command; panics on a wrong reply, a missing one (the
/// client's connection broke or timed out), or an error where `errors_ok` is false. `GET`
/// may answer `nil` after a failed `SET`, or anywhere when `moved_ok`.
fn check(replies: &[Reply], errors_ok: bool, moved_ok: bool) -> Tally {
    let mut t = Tally::default();
    let mut set_failed = false;
    for r in replies {
        t.commands += 1;
        let v = match &r.got {
            Ok(v) => v,
            Err(e) => panic!(
                "client {}: {:?} got no reply: {e} (batch at {:?}, took {:?})",
                r.client, r.sent, r.at, r.took
            ),
        };
        if let Resp::Error(e) = v {
            assert!(
                e == LOST || e == NONE_LEFT || loading(e),
                "client {}: {:?} answered with someone else's error {e:?}",
                r.client,
                r.sent
            );
            assert!(
                errors_ok,
                "client {}: {:?} failed without a fault: {e}",
                r.client, r.sent
            );
            t.errors += 1;
            *t.errors_by_client.entry(r.client).or_insert(0) += 1;
            match &r.sent {
                Sent::Set { .. } => set_failed = true,
                Sent::Incr { key } => {
                    t.unknown.insert(key.clone());
                }
                _ => {}
            }
            continue;
        }
        let right = match (&r.sent, v) {
            (Sent::Set { .. }, Resp::Simple(s)) => {
                set_failed = false;
                s == "OK"
            }
            (Sent::Get { val, .. }, Resp::Bulk(Some(b))) => b == val.as_bytes(),
            (Sent::Get { .. }, Resp::Bulk(None)) if set_failed || moved_ok => {
                t.nils += 1;
                true
            }
            (Sent::Incr { key }, Resp::Int(1)) => {
                t.acked.insert(key.clone());
                true
            }
            (Sent::Echo { msg }, Resp::Bulk(Some(b))) => b == msg.as_bytes(),
            _ => false,
        };
        assert!(
            right,
            "client {}: {:?} answered {v:?} (another command's reply, or applied twice)",
            r.client, r.sent
        );
    }
    t
}

/// Every counter `n:TAG:*` read from every upstream: each is `1`, on one upstream at most
/// (never applied twice), was sent, and each acknowledged one is there (never lost).
/// Returns how many exist.
fn check_counters(w: &NetnsPair, addrs: &[SocketAddr], tags: &[&str], t: &Tally) -> usize {
    let mut seen: HashMap<String, SocketAddr> = HashMap::new();
    for &a in addrs {
        for tag in tags {
            for (k, v) in dump(w, a, &format!("n:{tag}:*")) {
                assert_eq!(v, "1", "counter {k} on {a} was incremented {v} times");
                if let Some(other) = seen.insert(k.clone(), a) {
                    panic!("counter {k} was applied on {other} and {a}");
                }
                assert!(
                    t.acked.contains(&k) || t.unknown.contains(&k),
                    "counter {k} exists but was never acknowledged or failed"
                );
            }
        }
    }
    for k in &t.acked {
        assert!(
            seen.contains_key(k),
            "INCR {k} was acknowledged but no upstream has it"
        );
    }
    seen.len()
}

/// How many keys `k:TAG:*` `addr` holds.
fn keys_on(w: &NetnsPair, addr: SocketAddr, tag: &str) -> usize {
    match &direct(w, addr, vec![strings(&["KEYS", &format!("k:{tag}:*")])])[0] {
        Resp::Array(v) => v.len(),
        other => panic!("KEYS gave {other:?}"),
    }
}

/// Which upstream each of `n` keys `place:TAG:i` goes to under `--balance hash` (set through
/// the proxy while all upstreams are healthy, then looked up on each).
fn placement(w: &NetnsPair, addrs: &[SocketAddr], tag: &str, n: usize) -> Vec<(String, usize)> {
    let keys: Vec<String> = (0..n).map(|i| format!("place:{tag}:{i}")).collect();
    let cmds: Vec<Vec<String>> = keys.iter().map(|k| strings(&["SET", k, "1"])).collect();
    let r = NetnsPair::in_netns(&w.a, move || direct_at(PROXY.parse().unwrap(), &cmds))
        .unwrap()
        .expect("placement SETs");
    assert!(r.iter().all(|v| *v == Resp::Simple("OK".into())), "{r:?}");
    let mut out = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let cmds = keys.iter().map(|k| strings(&["EXISTS", k])).collect();
        for (k, v) in keys.iter().zip(direct(w, *a, cmds)) {
            if v == Resp::Int(1) {
                out.push((k.clone(), i));
            }
        }
    }
    assert_eq!(out.len(), n, "every key is on exactly one upstream");
    out
}

fn breaker_opened(w: &NetnsPair, a: SocketAddr) -> f64 {
    metric(&metrics(&w.a), "ferry_proxy_breaker_opened_total", a)
}

/// Run `load` again (fresh tags) until the breaker of `addrs[i]` is closed and that upstream
/// got keys of the load (bounded); every reply is checked like the others.
fn wait_recovered(w: &NetnsPair, addrs: &[SocketAddr], i: usize, tags: &[&'static str]) -> Tally {
    let t0 = Instant::now();
    let mut all = Tally::default();
    for tag in tags {
        let out = Load::fresh(tag, 2, 10).pause(ms(20)).run(w);
        let t = check(&out, true, true);
        all.commands += t.commands;
        all.errors += t.errors;
        all.acked.extend(t.acked);
        all.unknown.extend(t.unknown);
        let text = metrics(&w.a);
        if metric(&text, "ferry_proxy_breaker_state", addrs[i]) == 0.0
            && keys_on(w, addrs[i], tag) > 0
        {
            return all;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "recovery took too long"
        );
        std::thread::sleep(ms(300));
    }
    panic!(
        "upstream {} did not serve again with its breaker closed:\n{}",
        addrs[i],
        metrics(&w.a)
    );
}

const RECOVER_TAGS: [&str; 12] = [
    "b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10", "b11",
];

/// 5% of the packets in and out of the upstreams' namespace are dropped: TCP retransmits,
/// and every command is answered right, none lost, none applied twice.
#[test]
fn chaos_redis_packet_loss_5_percent() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, false);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    // Generous timeouts: a SYN or SYN-ACK lost twice in a row (1% of connects here) is
    // retried after 1 s and 3 s; nothing here may fail.
    let mut proxy = proxy(
        &w,
        &addrs,
        &[
            "--connect-timeout",
            "10s",
            "--response-timeout",
            "10s",
            "--breaker-failures",
            "0",
        ],
    );
    let rss0 = proxy.rss_kb();
    NetnsPair::random_loss(&w.b, 5).expect("nft loss rule");
    let out = Load::fresh("loss", 3, 100).big(20_000).run(&w);
    let dropped = NetnsPair::dropped_packets(&w.b);
    NetnsPair::clear_loss(&w.b).expect("clear loss");
    let t = check(&out, false, false);
    assert_eq!(t.commands, 3 * 100 * 5 * 4, "the load ran out of time");
    let applied = check_counters(&w, &addrs, &["loss"], &t);
    let per: Vec<usize> = addrs.iter().map(|a| keys_on(&w, *a, "loss")).collect();
    let m = median(out.iter().map(|r| r.took).collect());
    eprintln!(
        "loss: {} commands, {dropped} packets dropped, keys per upstream {per:?}, \
         {applied} INCRs applied, median batch {m:?}",
        t.commands
    );
    assert!(dropped > 0, "the loss rule dropped nothing");
    assert_eq!(applied, t.acked.len());
    assert!(per.iter().all(|&n| n > 0), "every upstream served: {per:?}");
    memory_bounded(&mut proxy, rss0);
}

/// 50 ms ± 20 ms each way on every upstream connection: every command right, batch latency
/// at least a round trip through the relays and bounded.
#[test]
fn chaos_redis_latency_jitter_via_relay() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, false);
    let lat = |s| Faults::none().with_latency(ms(50), ms(20)).with_seed(s);
    let rel = relays(&w, &ups, vec![lat(1), lat(2), lat(3)]);
    let addrs: Vec<SocketAddr> = rel.iter().map(|r| r.local_addr()).collect();
    let mut proxy = proxy(&w, &addrs, &["--response-timeout", "5s"]);
    let rss0 = proxy.rss_kb();
    let out = Load::fresh("lat", 3, 20).run(&w);
    let t = check(&out, false, false);
    assert_eq!(t.commands, 3 * 20 * 5 * 4);
    let ups_addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let applied = check_counters(&w, &ups_addrs, &["lat"], &t);
    assert_eq!(applied, t.acked.len());
    let lat: Vec<Duration> = out.iter().map(|r| r.took).collect();
    let (m, max) = (median(lat.clone()), lat.iter().max().copied().unwrap());
    eprintln!("latency: median batch {m:?}, max {max:?}");
    // Commands and replies each cross a relay adding 50 ± 20 ms.
    assert!(m >= ms(55), "median {m:?}");
    assert!(max < ms(3000), "max {max:?}");
    memory_bounded(&mut proxy, rss0);
}

/// An upstream is SIGKILLed mid-load and restarted (from its AOF) later: commands in flight
/// on it get the proxy's error (never a wrong or shifted reply), the others keep being
/// served, its breaker opens and, once it is back, closes; no INCR is applied twice or lost
/// once acknowledged (nothing is retried: see the module docs). Keys by consistent hashing
/// (each command routed alone).
#[test]
fn chaos_redis_upstream_killed_mid_load() {
    killed_mid_load("hash", "1", "0");
}

/// The same with round robin (whole pipelined chunks routed together), two workers (each
/// with its own shared connections and breakers) and active health checks (`PING` every
/// 200 ms: the killed upstream is taken out of service and put back).
#[test]
fn chaos_redis_upstream_killed_mid_load_round_robin() {
    killed_mid_load("round-robin", "2", "200ms");
}

fn killed_mid_load(balance: &str, workers: &str, health: &str) {
    let Some(w) = world() else { return };
    let mut ups = upstreams(&w, true);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut proxy = proxy(
        &w,
        &addrs,
        &[
            "--balance",
            balance,
            "--workers",
            workers,
            "--health-interval",
            health,
            "--response-timeout",
            "2s",
            "--connect-timeout",
            "500ms",
            "--breaker-failures",
            "2",
            "--breaker-open",
            "1s",
        ],
    );
    let rss0 = proxy.rss_kb();
    let pid = ups[0].pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(ms(700));
        // SAFETY: kill of our own child's pid (reaped only by `RedisUp`, after the join).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let out = Load::fresh("kill", 3, 150)
        .resp3(1)
        .pause(ms(10))
        .big(20_000)
        .run(&w);
    killer.join().unwrap();
    let t = check(&out, true, true);
    let late: usize = out
        .iter()
        .filter(|r| r.at > ms(700) && matches!(r.got, Ok(Resp::Bulk(Some(_)))))
        .count();
    eprintln!(
        "kill: {} commands, {} errors, {} nils, {late} answered after the kill",
        t.commands, t.errors, t.nils
    );
    assert!(late > 0, "nothing was served after the kill");
    assert!(
        breaker_opened(&w, addrs[0]) >= 1.0,
        "breaker of the killed upstream never opened:\n{}",
        metrics(&w.a)
    );
    // Nothing is retried (module docs), and the others never failed: only commands that
    // went to the killed upstream got errors.
    let text = metrics(&w.a);
    for a in &addrs {
        assert_eq!(metric(&text, "ferry_proxy_upstream_retries_total", *a), 0.0);
    }
    for a in &addrs[1..] {
        assert_eq!(
            metric(&metrics(&w.a), "ferry_proxy_breaker_opened_total", *a),
            0.0
        );
    }
    // Bring it back (same AOF): after the open period a probe succeeds, the breaker closes.
    ups[0].kill();
    ups[0].spawn();
    let back = wait_recovered(&w, &addrs, 0, &RECOVER_TAGS);
    let mut tags = vec!["kill"];
    tags.extend(RECOVER_TAGS);
    let mut all = t;
    all.acked.extend(back.acked);
    all.unknown.extend(back.unknown);
    let applied = check_counters(&w, &addrs, &tags, &all);
    eprintln!(
        "kill: {} INCRs acknowledged, {} failed, {applied} applied",
        all.acked.len(),
        all.unknown.len()
    );
    memory_bounded(&mut proxy, rss0);
}

/// An upstream is SIGSTOPped mid-load for about 2.5 s: `--response-timeout` bounds every
/// wait (errors, no hangs), a client whose keys live on the healthy upstreams sees neither
/// errors nor slowdowns (no cascade), the breaker opens, and after SIGCONT it closes and the
/// upstream serves again.
#[test]
fn chaos_redis_upstream_sigstopped() {
    upstream_hangs(Hang::Stopped);
}

/// The same with the upstream's port blackholed (nftables drops its packets both ways, no
/// RST): established connections go silent, new connects time out (`--connect-timeout`).
#[test]
fn chaos_redis_upstream_blackholed() {
    upstream_hangs(Hang::Blackholed);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hang {
    Stopped,
    Blackholed,
}

fn upstream_hangs(how: Hang) {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, false);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut proxy = proxy(
        &w,
        &addrs,
        &[
            "--response-timeout",
            "1s",
            "--connect-timeout",
            "300ms",
            "--breaker-failures",
            "2",
            "--breaker-open",
            "1s",
        ],
    );
    let rss0 = proxy.rss_kb();
    let placed = placement(&w, &addrs, "stop", 120);
    let healthy: Vec<String> = placed
        .iter()
        .filter(|(_, u)| *u != 0)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(healthy.len() > 20);
    // A list on the upstream that hangs, for a client popping from it with a timeout.
    let queue = placed
        .iter()
        .find(|(_, u)| *u == 0)
        .expect("a key on r1")
        .0
        .clone();
    direct(&w, addrs[0], vec![strings(&["DEL", &queue])]);
    let popper = NetnsPair::spawn_in(&w.a, move || {
        blocking_client(&queue, Duration::from_secs(6))
    });
    let mut load = Load::fresh("stop", 3, 150).pause(ms(20));
    load.clients.push(Some(Arc::new(healthy)));
    load.limit = Duration::from_secs(30);
    let pid = ups[0].pid();
    let (ns, port) = (w.b.clone(), addrs[0].port());
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(ms(500));
        match how {
            // SAFETY: a signal to our own child's pid.
            Hang::Stopped => unsafe { libc::kill(pid, libc::SIGSTOP) },
            Hang::Blackholed => {
                let rules = format!(
                    "table inet hole {{\n\
                     chain in {{ type filter hook input priority 0; tcp dport {port} drop; }}\n\
                     chain out {{ type filter hook output priority 0; tcp sport {port} drop; }}\n\
                     }}\n"
                );
                NetnsPair::nft(&ns, &rules).expect("nft blackhole");
                0
            }
        };
        std::thread::sleep(ms(3500));
        match how {
            // SAFETY: as above.
            Hang::Stopped => unsafe { libc::kill(pid, libc::SIGCONT) },
            Hang::Blackholed => {
                netns::exec(&ns, &["nft", "delete", "table", "inet", "hole"]).expect("nft");
                0
            }
        };
    });
    let out = load.run(&w);
    stopper.join().unwrap();
    let pops = popper.join().unwrap().unwrap();
    let t = check(&out, true, true);
    // `BLPOP q 0.2` waits at most its own timeout and then the reply timeout (it used to
    // wait as long as the upstream hung: no reply deadline for blocking commands).
    let slowest_pop = pops.iter().map(|p| p.0).max().unwrap();
    for (took, got) in &pops {
        match got {
            Ok(Resp::Array(a)) if a.is_empty() => {}
            Ok(Resp::Error(e)) if e == LOST || e == NONE_LEFT => {}
            Err(_) => {} // closed after its connection broke (it had been answered)
            other => panic!("BLPOP answered {other:?} after {took:?}"),
        }
    }
    eprintln!("{how:?}: {} BLPOPs, slowest {slowest_pop:?}", pops.len());
    assert!(
        slowest_pop < ms(2200),
        "BLPOP with a 0.2 s timeout waited {slowest_pop:?}"
    );
    let healthy_client = 3;
    let hc: Vec<&Reply> = out.iter().filter(|r| r.client == healthy_client).collect();
    let during: Vec<Duration> = hc
        .iter()
        .filter(|r| r.at > ms(500) && r.at < ms(3000))
        .map(|r| r.took)
        .collect();
    let worst = out.iter().map(|r| r.took).max().unwrap();
    let hmed = median(during.clone());
    eprintln!(
        "{how:?}: {} commands, {} errors {:?}, healthy client median {hmed:?} over {} \
         batches while stopped, slowest batch {worst:?}",
        t.commands,
        t.errors,
        t.errors_by_client,
        during.len() / 10
    );
    assert!(t.errors > 0, "no command went to the stopped upstream");
    assert_eq!(
        t.errors_by_client.get(&healthy_client),
        None,
        "a client of the healthy upstreams got errors"
    );
    assert!(!during.is_empty());
    assert!(hmed < ms(300), "healthy upstreams slowed down: {hmed:?}");
    // Bounded by the reply timeout (1 s) and the breaker, never a hang.
    assert!(worst < ms(5000), "a batch took {worst:?}");
    assert!(
        breaker_opened(&w, addrs[0]) >= 1.0,
        "breaker of the stopped upstream never opened:\n{}",
        metrics(&w.a)
    );
    let back = wait_recovered(&w, &addrs, 0, &RECOVER_TAGS);
    let mut all = t;
    all.acked.extend(back.acked);
    all.unknown.extend(back.unknown);
    let mut tags = vec!["stop"];
    tags.extend(RECOVER_TAGS);
    check_counters(&w, &addrs, &tags, &all);
    memory_bounded(&mut proxy, rss0);
}

/// Through relays: one upstream's connections are reset (half of them, mid-reply), one's
/// replies vanish (half-open: commands reach Redis, nothing comes back), one stalls for
/// 1.5 s and recovers. Every reply right or the proxy's error, never missing; breakers of the
/// half-open and stalled upstreams open, the stalled one closes again; no INCR applied twice.
#[test]
fn chaos_redis_resets_half_open_and_stall() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, false);
    let mut rel = relays(
        &w,
        &ups,
        vec![
            Faults::none()
                .with_reset(1500, 0.5, Dir::ToDownstream)
                .with_seed(11),
            Faults::none().with_half_open(Dir::ToDownstream),
            Faults::none(),
        ],
    );
    let addrs: Vec<SocketAddr> = rel.iter().map(|r| r.local_addr()).collect();
    let mut proxy = proxy(
        &w,
        &addrs,
        &[
            "--response-timeout",
            "1s",
            "--breaker-failures",
            "3",
            "--breaker-open",
            "500ms",
        ],
    );
    let rss0 = proxy.rss_kb();
    let r3 = Arc::new(rel.pop().unwrap());
    let r = r3.clone();
    let staller = std::thread::spawn(move || {
        std::thread::sleep(ms(800));
        r.stall_for(ms(1500));
    });
    let out = Load::fresh("chaos", 3, 120)
        .pause(ms(20))
        .big(8_000)
        .run(&w);
    staller.join().unwrap();
    let t = check(&out, true, true);
    let resets = rel[0].stats().resets;
    eprintln!(
        "relays: {} commands, {} errors, {} nils, {resets} resets, dropped {} bytes",
        t.commands,
        t.errors,
        t.nils,
        rel[1].stats().bytes_dropped
    );
    assert!(resets > 0, "the relay reset nothing");
    assert!(rel[1].stats().bytes_dropped > 0);
    let text = metrics(&w.a);
    for a in &addrs[1..] {
        assert!(
            metric(&text, "ferry_proxy_breaker_opened_total", *a) >= 1.0,
            "breaker of {a} never opened:\n{text}"
        );
    }
    let back = wait_recovered(&w, &addrs, 2, &RECOVER_TAGS);
    let mut all = t;
    all.acked.extend(back.acked);
    all.unknown.extend(back.unknown);
    let mut tags = vec!["chaos"];
    tags.extend(RECOVER_TAGS);
    let ups_addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    check_counters(&w, &ups_addrs, &tags, &all);
    memory_bounded(&mut proxy, rss0);
}

/// An upstream given by a name that does not resolve (`.invalid` is reserved; the namespace
/// has no route out, so the lookup fails at once and no query leaves the machine): the proxy
/// starts, sends that upstream nothing, and the two others answer every command.
#[test]
fn chaos_redis_upstream_dns_failure() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, false);
    let mut list = vec!["nonexistent.invalid:6379".to_string()];
    list.extend(ups[1..].iter().map(|u| u.addr.to_string()));
    let mut proxy = proxy_named(&w, &list, &["--health-interval", "500ms"]);
    let rss0 = proxy.rss_kb();
    let out = Load::fresh("dns", 3, 20).run(&w);
    let t = check(&out, false, false);
    let addrs: Vec<SocketAddr> = ups[1..].iter().map(|u| u.addr).collect();
    assert_eq!(check_counters(&w, &addrs, &["dns"], &t), t.acked.len());
    let per: Vec<usize> = addrs.iter().map(|a| keys_on(&w, *a, "dns")).collect();
    eprintln!("dns: {} commands, keys per upstream {per:?}", t.commands);
    assert!(per.iter().all(|&n| n > 0), "both others served: {per:?}");
    assert_eq!(keys_on(&w, ups[0].addr, "dns"), 0);
    memory_bounded(&mut proxy, rss0);
}

/// The Redis pooling proxy in front of a redis-server whose connections are reset after
/// every 3000 bytes of replies (mid-pipeline): every reply a client gets is its own command's
/// reply or the proxy's "upstream connection lost" error, never another command's; `INCR`
/// is never retried (the counter never exceeds the INCRs sent).
#[test]
fn chaos_redis_proxy_resets_never_misanswer() {
    let Some(w) = world() else { return };
    let up = RedisUp::start(&w.b, "r1", SocketAddr::from((w.b_ip, 6379)), false);
    let raddr = up.addr;
    let listen: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let relay = NetnsPair::in_netns(&w.a, move || {
        Relay::start(
            listen,
            raddr,
            Faults::none().with_reset(3000, 1.0, Dir::ToDownstream),
        )
        .expect("relay")
    })
    .unwrap();
    let mut proxy = Proxy::start_protocol(
        &w.a,
        "redis",
        &[listen],
        &["--health-interval", "0", "--breaker-failures", "0"],
    );
    let rss0 = proxy.rss_kb();

    const CLIENTS: usize = 3;
    const BATCHES: usize = 60;
    const PER_BATCH: usize = 5;
    let results = NetnsPair::in_netns(&w.a, || {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                std::thread::spawn(move || -> Result<(usize, usize, i64), String> {
                    let connect = || {
                        let s = TcpStream::connect(PROXY).map_err(|e| format!("connect: {e}"))?;
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        Ok::<_, String>(BufReader::new(s))
                    };
                    let mut r = connect()?;
                    let (mut errors, mut incr_ok, mut last_incr) = (0, 0, 0i64);
                    let t0 = Instant::now();
                    for b in 0..BATCHES {
                        if t0.elapsed() > Duration::from_secs(60) {
                            return Err("out of time".into());
                        }
                        let mut out = Vec::new();
                        let mut expect = Vec::new();
                        for k in 0..PER_BATCH {
                            let key = format!("c{c}:k{b}:{k}");
                            let val = format!("v{c}-{b}-{k}-{}", "x".repeat(40));
                            out.extend(resp_cmd(&["SET", &key, &val]));
                            out.extend(resp_cmd(&["GET", &key]));
                            out.extend(resp_cmd(&["INCR", &format!("c{c}:ctr")]));
                            expect.push(val);
                        }
                        if r.get_mut().write_all(&out).is_err() {
                            r = connect()?;
                            continue;
                        }
                        for val in &expect {
                            let set = read_resp(&mut r)?;
                            let get = read_resp(&mut r)?;
                            let incr = read_resp(&mut r)?;
                            let set_failed = match &set {
                                Resp::Simple(s) if s == "OK" => false,
                                Resp::Error(_) => true,
                                other => return Err(format!("SET answered {other:?}")),
                            };
                            match &get {
                                Resp::Bulk(Some(v)) if v == val.as_bytes() => {}
                                Resp::Bulk(None) if set_failed => {}
                                Resp::Error(_) => {}
                                other => return Err(format!("GET answered {other:?}, not {val}")),
                            }
                            match incr {
                                Resp::Int(n) => {
                                    if n <= last_incr {
                                        return Err(format!("INCR went from {last_incr} to {n}"));
                                    }
                                    last_incr = n;
                                    incr_ok += 1;
                                }
                                Resp::Error(_) => {}
                                other => return Err(format!("INCR answered {other:?}")),
                            }
                            errors += [&set, &get]
                                .iter()
                                .filter(|x| matches!(x, Resp::Error(_)))
                                .count();
                        }
                    }
                    Ok((errors, incr_ok, last_incr))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect::<Vec<_>>()
    })
    .unwrap();
    // The counters, read straight from redis-server.
    let finals = NetnsPair::in_netns(&w.a, move || {
        let s = TcpStream::connect(raddr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s);
        (0..CLIENTS)
            .map(|c| {
                r.get_mut()
                    .write_all(&resp_cmd(&["GET", &format!("c{c}:ctr")]))
                    .unwrap();
                match read_resp(&mut r).unwrap() {
                    Resp::Bulk(Some(v)) => String::from_utf8(v).unwrap().parse::<i64>().unwrap(),
                    other => panic!("{other:?}"),
                }
            })
            .collect::<Vec<_>>()
    })
    .unwrap();
    let resets = relay.stats().resets;
    for (c, res) in results.into_iter().enumerate() {
        let (errors, incr_ok, last) = res.unwrap_or_else(|e| panic!("client {c}: {e}"));
        let sent = (BATCHES * PER_BATCH) as i64;
        eprintln!(
            "redis client {c}: {errors} errors, {incr_ok} INCRs answered, counter {} of {sent} sent",
            finals[c]
        );
        assert!(
            finals[c] >= last && finals[c] <= sent,
            "INCR retried: {} > {sent}",
            finals[c]
        );
        assert!(finals[c] >= incr_ok as i64);
    }
    assert!(resets > 0, "the relay reset nothing");
    memory_bounded(&mut proxy, rss0);
}

/// `BLPOP queue 0.2` again and again for `run` (reconnecting when the proxy closes the
/// connection): how long each took and what it got.
fn blocking_client(queue: &str, run: Duration) -> Vec<(Duration, Result<Resp, String>)> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while t0.elapsed() < run && out.len() < 1000 {
        let start = Instant::now();
        if conn.is_none() {
            match connect(false) {
                Ok(r) => conn = Some(r),
                Err(e) => {
                    out.push((start.elapsed(), Err(e)));
                    std::thread::sleep(ms(50));
                    continue;
                }
            }
        }
        let r = conn.as_mut().unwrap();
        let got = r
            .get_mut()
            .write_all(&resp_cmd(&["BLPOP", queue, "0.2"]))
            .map_err(|e| format!("write: {e}"))
            .and_then(|()| read_resp(r));
        if got.is_err() {
            conn = None;
        }
        out.push((start.elapsed(), got));
    }
    out
}

/// What a transaction client got for one pipelined `MULTI; SET k v; INCR n; EXEC`.
#[derive(Debug)]
struct Tx {
    key: String,
    val: String,
    counter: String,
    /// One per command; `Err` where the connection ended first.
    got: Vec<Result<Resp, String>>,
}

/// `count` transactions on one connection (a new one after the proxy closes it: a client
/// whose dedicated connection broke after answering is disconnected). With `split`, each on
/// a new connection, written in two parts a moment apart (`MULTI; SET`, then `INCR; EXEC`,
/// still without waiting for replies: the proxy may have seen its dedicated connection fail
/// in between).
fn tx_client(
    tag: &str,
    c: usize,
    count: usize,
    split: bool,
    pause: Duration,
    limit: Duration,
) -> Vec<Tx> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    for i in 0..count {
        if t0.elapsed() > limit {
            break;
        }
        std::thread::sleep(pause);
        let id = format!("{tag}:{c}:{i}");
        let (key, val, counter) = (format!("k:{id}"), format!("v:{id}"), format!("n:{id}"));
        let mut first = resp_cmd(&["MULTI"]);
        first.extend(resp_cmd(&["SET", &key, &val]));
        let mut second = resp_cmd(&["INCR", &counter]);
        second.extend(resp_cmd(&["EXEC"]));
        let mut got = Vec::new();
        let mut failed = None;
        if split {
            conn = None;
        }
        if conn.is_none() {
            match connect(false) {
                Ok(r) => conn = Some(r),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(r) = conn.as_mut() {
            let sent = if split {
                r.get_mut().write_all(&first).and_then(|()| {
                    std::thread::sleep(ms(3));
                    r.get_mut().write_all(&second)
                })
            } else {
                first.extend(&second);
                r.get_mut().write_all(&first)
            };
            match sent {
                Err(e) => failed = Some(format!("write: {e}")),
                Ok(()) => {
                    for _ in 0..4 {
                        match read_resp(r) {
                            Ok(v) => got.push(Ok(v)),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
        }
        if let Some(e) = failed {
            conn = None;
            while got.len() < 4 {
                got.push(Err(e.clone()));
            }
        }
        out.push(Tx {
            key,
            val,
            counter,
            got,
        });
    }
    out
}

/// Transactions (on dedicated upstream connections) and plain pipelined commands (on shared
/// ones) while an upstream is SIGKILLed and restarted a second later: a transaction is
/// applied whole or not at all, never twice, and nothing a client pipelined behind a
/// `MULTI` that failed runs outside the transaction; the proxy may close a client whose
/// transaction connection broke (its state is gone, as with Redis) but never answers
/// wrongly.
#[test]
fn chaos_redis_transactions_upstream_killed() {
    transactions_under_kill(1);
}

/// The same with every upstream killed at once (a full outage: every breaker opens, clients
/// get `no upstream available`), then all restarted.
#[test]
fn chaos_redis_transactions_all_upstreams_killed() {
    transactions_under_kill(3);
}

fn transactions_under_kill(victims: usize) {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, true);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut proxy = proxy(
        &w,
        &addrs,
        &[
            "--balance",
            "round-robin",
            "--response-timeout",
            "2s",
            "--connect-timeout",
            "500ms",
            "--breaker-failures",
            "2",
            "--breaker-open",
            "1s",
        ],
    );
    let rss0 = proxy.rss_kb();
    let killer = std::thread::spawn(move || {
        let mut ups = ups;
        std::thread::sleep(ms(600));
        for u in &mut ups[..victims] {
            u.kill();
        }
        std::thread::sleep(ms(1000));
        for u in &mut ups[..victims] {
            u.spawn(); // from its AOF
        }
        ups
    });
    let txs = NetnsPair::spawn_in(&w.a, || {
        let threads: Vec<_> = (0..4)
            .map(|c| {
                std::thread::spawn(move || {
                    tx_client("tx", c, 300, c >= 2, ms(5), Duration::from_secs(30))
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("tx client"))
            .collect::<Vec<_>>()
    });
    let out = Load::fresh("txp", 2, 100).pause(ms(15)).run(&w);
    let txs = txs.join().unwrap().unwrap();
    let _ups = killer.join().unwrap(); // kept running to the end
    let mut t = check(&out, true, true);
    let (mut done, mut failed, mut cut) = (0, 0, 0);
    let mut loading_txs = HashSet::new();
    for tx in &txs {
        let err = |r: &Result<Resp, String>| match r {
            Ok(Resp::Error(e)) => {
                assert!(e == LOST || e == NONE_LEFT, "{tx:?}: error {e:?}");
                true
            }
            Err(_) => true,
            Ok(_) => false,
        };
        if tx.got.iter().all(|r| r.is_err()) {
            cut += 1;
        }
        let redis_said = |r: &Result<Resp, String>| matches!(r, Ok(Resp::Error(e)) if loading(e) || e.starts_with("EXECABORT "));
        if tx.got.iter().any(redis_said) {
            // Redis itself refused part of it (loading after its restart): what ran is
            // Redis's business, not the proxy's; counters are still checked.
            t.unknown.insert(tx.counter.clone());
            loading_txs.insert(tx.key.clone());
            failed += 1;
            continue;
        }
        if err(&tx.got[0]) {
            // MULTI failed: nothing behind it may run outside the transaction.
            for r in &tx.got[1..] {
                assert!(err(r), "{tx:?}: ran although its MULTI failed");
            }
            failed += 1;
            t.unknown.insert(tx.counter.clone()); // never applied, checked below
            continue;
        }
        assert_eq!(tx.got[0], Ok(Resp::Simple("OK".into())), "{tx:?}");
        for r in &tx.got[1..3] {
            assert!(
                err(r) || *r == Ok(Resp::Simple("QUEUED".into())),
                "{tx:?}: not queued"
            );
        }
        match &tx.got[3] {
            Ok(Resp::Array(a)) => {
                assert_eq!(
                    a,
                    &[Resp::Simple("OK".into()), Resp::Int(1)],
                    "{tx:?}: EXEC answered wrongly"
                );
                t.acked.insert(tx.counter.clone());
                done += 1;
            }
            r => {
                assert!(err(r), "{tx:?}: EXEC answered wrongly");
                t.unknown.insert(tx.counter.clone());
                failed += 1;
            }
        }
    }
    eprintln!(
        "transactions: {done} applied, {failed} failed ({cut} without any reply, {} \
         refused by a loading Redis); \
         plain: {} commands, {} errors",
        loading_txs.len(),
        t.commands,
        t.errors
    );
    assert!(done > 0);
    if victims == 3 {
        assert!(failed > 0, "no transaction met the outage");
    }
    check_counters(&w, &addrs, &["tx", "txp"], &t);
    // Whole or nothing: a transaction's key exists exactly where its counter does.
    let mut keys: HashMap<String, (SocketAddr, String)> = HashMap::new();
    let mut counters: HashMap<String, SocketAddr> = HashMap::new();
    for &a in &addrs {
        for (k, v) in dump(&w, a, "k:tx:*") {
            keys.insert(k, (a, v));
        }
        for (k, _) in dump(&w, a, "n:tx:*") {
            counters.insert(k, a);
        }
    }
    for tx in txs.iter().filter(|tx| !loading_txs.contains(&tx.key)) {
        let k = keys.get(&tx.key);
        let n = counters.get(&tx.counter);
        assert_eq!(
            k.map(|(a, _)| *a),
            n.copied(),
            "{tx:?}: applied in part (key on {k:?}, counter on {n:?})"
        );
        if let Some((_, v)) = k {
            assert_eq!(v, &tx.val);
        }
    }
    memory_bounded(&mut proxy, rss0);
}

/// Which of `addrs` holds `key` under `--balance hash` (pushed through the proxy, looked up
/// on each, then deleted).
fn owner_of(w: &NetnsPair, addrs: &[SocketAddr], key: &str) -> usize {
    let cmd = vec![strings(&["RPUSH", key, "probe"])];
    let r = NetnsPair::in_netns(&w.a, move || direct_at(PROXY.parse().unwrap(), &cmd))
        .unwrap()
        .expect("probe RPUSH");
    assert_eq!(r, [Resp::Int(1)]);
    let at: Vec<usize> = (0..addrs.len())
        .filter(|&i| direct(w, addrs[i], vec![strings(&["LLEN", key])])[0] == Resp::Int(1))
        .collect();
    assert_eq!(at.len(), 1, "{key} on {at:?}");
    direct(w, addrs[at[0]], vec![strings(&["DEL", key])]);
    at[0]
}

/// A job queue through the proxy while its upstream is SIGKILLed and restarted (from its
/// AOF): a producer `RPUSH`es numbered jobs (pipelined), two consumers `BLPOP` them (on
/// connections of their own). No job is popped twice or both popped and left in a list;
/// every job whose push was acknowledged is popped or still queued, except at most one per
/// `BLPOP` that got an error (Redis may have popped it before its connection broke: the
/// proxy cannot retry a pop, nor tell whether it happened).
#[test]
fn chaos_redis_job_queue_upstream_killed() {
    let Some(w) = world() else { return };
    let mut ups = upstreams(&w, true);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut proxy = proxy(
        &w,
        &addrs,
        &[
            "--response-timeout",
            "1s",
            "--connect-timeout",
            "300ms",
            "--breaker-failures",
            "2",
            "--breaker-open",
            "1s",
        ],
    );
    let rss0 = proxy.rss_kb();
    const Q: &str = "q:jobs";
    let victim = owner_of(&w, &addrs, Q);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(ms(500));
        ups[victim].kill();
        std::thread::sleep(ms(1000));
        ups[victim].spawn(); // from its AOF
        ups
    });
    const JOBS: usize = 400;
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let p = producing.clone();
    let producer = NetnsPair::spawn_in(&w.a, move || {
        let (mut acked, mut unknown) = (HashSet::new(), 0usize);
        let mut conn = None;
        for b in 0..JOBS / 4 {
            std::thread::sleep(ms(10));
            let jobs: Vec<String> = (0..4).map(|j| format!("job:{}", b * 4 + j)).collect();
            let mut bytes = Vec::new();
            for j in &jobs {
                bytes.extend(resp_cmd(&["RPUSH", Q, j]));
            }
            if conn.is_none() {
                conn = connect(false).ok();
            }
            let Some(r) = conn.as_mut() else {
                unknown += jobs.len();
                continue;
            };
            let mut ok = r.get_mut().write_all(&bytes).is_ok();
            for j in jobs {
                match ok.then(|| read_resp(r)) {
                    Some(Ok(Resp::Int(n))) if n > 0 => {
                        acked.insert(j);
                    }
                    Some(Ok(Resp::Error(e))) if e == LOST || e == NONE_LEFT || loading(&e) => {
                        unknown += 1;
                    }
                    Some(Err(_)) | None => {
                        ok = false;
                        unknown += 1;
                    }
                    Some(other) => panic!("RPUSH {j} answered {other:?}"),
                }
            }
            if !ok {
                conn = None;
            }
        }
        p.store(false, std::sync::atomic::Ordering::Relaxed);
        (acked, unknown)
    });
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let producing = producing.clone();
            NetnsPair::spawn_in(&w.a, move || {
                let (mut popped, mut failed) = (Vec::new(), 0usize);
                let mut conn = None;
                let mut idle = 0;
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(20) {
                    // Done when the producer is and the queue stayed empty a while, once the
                    // restarted upstream (with the jobs queued there) is likely back in
                    // service (leftovers are counted, not required to drain).
                    if !producing.load(std::sync::atomic::Ordering::Relaxed)
                        && idle >= 3
                        && t0.elapsed() > Duration::from_secs(4)
                    {
                        break;
                    }
                    if conn.is_none() {
                        conn = connect(false).ok();
                    }
                    let Some(r) = conn.as_mut() else {
                        std::thread::sleep(ms(50));
                        continue;
                    };
                    let got = r
                        .get_mut()
                        .write_all(&resp_cmd(&["BLPOP", Q, "0.3"]))
                        .map_err(|e| e.to_string())
                        .and_then(|()| read_resp(r));
                    match got {
                        Ok(Resp::Array(a)) if a.is_empty() => idle += 1,
                        Ok(Resp::Array(a))
                            if a.len() == 2 && a[0] == Resp::Bulk(Some(Q.into())) =>
                        {
                            idle = 0;
                            let Resp::Bulk(Some(v)) = &a[1] else {
                                panic!("BLPOP answered {a:?}");
                            };
                            popped.push(String::from_utf8_lossy(v).into_owned());
                        }
                        Ok(Resp::Error(e)) if e == LOST || e == NONE_LEFT || loading(&e) => {
                            failed += 1;
                        }
                        Err(_) => {
                            failed += 1; // closed after its connection broke
                            conn = None;
                        }
                        other => panic!("BLPOP answered {other:?}"),
                    }
                }
                (popped, failed)
            })
        })
        .collect();
    let (acked, unknown) = producer.join().unwrap().unwrap();
    let mut popped: Vec<String> = Vec::new();
    let mut failed_pops = 0;
    for c in consumers {
        let (p, f) = c.join().unwrap().unwrap();
        popped.extend(p);
        failed_pops += f;
    }
    let _ups = killer.join().unwrap(); // kept running to the end
    let mut seen = HashSet::new();
    for v in &popped {
        assert!(v.starts_with("job:"), "popped {v:?}");
        assert!(seen.insert(v.clone()), "{v} was popped twice");
    }
    let mut left = HashSet::new();
    for a in &addrs {
        let Resp::Array(items) = direct(&w, *a, vec![strings(&["LRANGE", Q, "0", "-1"])]).remove(0)
        else {
            panic!("LRANGE failed");
        };
        for i in items {
            let Resp::Bulk(Some(v)) = i else {
                panic!("LRANGE gave {i:?}")
            };
            let v = String::from_utf8_lossy(&v).into_owned();
            assert!(!seen.contains(&v), "{v} was popped and is still queued");
            assert!(left.insert(v.clone()), "{v} is queued twice");
        }
    }
    let missing = acked
        .iter()
        .filter(|j| !seen.contains(*j) && !left.contains(*j))
        .count();
    eprintln!(
        "jobs: {} pushes acknowledged, {unknown} failed; {} popped, {failed_pops} pops \
         failed, {} still queued, {missing} missing",
        acked.len(),
        popped.len(),
        left.len()
    );
    assert!(
        missing <= failed_pops,
        "{missing} acknowledged jobs vanished, only {failed_pops} pops failed"
    );
    assert!(popped.len() > JOBS / 2);
    memory_bounded(&mut proxy, rss0);
}
