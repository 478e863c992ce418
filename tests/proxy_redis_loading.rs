//! `ferry proxy --protocol redis` and upstreams that answer `-LOADING` on connections that
//! were answering before (a restarted Redis still loading its data, `DEBUG RELOAD`, a
//! replica during a full resync): the command did not run, so the proxy sends it to
//! another upstream, in order with the client's other replies — pipelined chunks (what
//! is left of them), single commands — and the client never sees `-LOADING` while another
//! upstream answers; with every upstream loading it gets the error after a bounded
//! number of attempts (`--retries`). Also: more than 64 upstreams.
//!
//! The loading upstream is a real redis-server in `DEBUG RELOAD`, or a small fake written
//! here (it switches to `-LOADING` after a given number of commands); the healthy one a
//! real redis-server. Nothing here asserts timing; every loop is bounded in count and
//! time; loopback only.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::resp::RespConn as Conn;
use common::{admin_metrics, python, tmp_dir, Redis, Server};

/// A fake Redis on `argv[1]` ports (one process): `PING`, `ECHO`, `INFO`, `HELLO` (RESP3
/// reply), anything else `+OK`; after `argv[2]` commands in all (`-1`: never) it answers
/// `-LOADING …` to everything but what Redis answers while loading (`ECHO`, `INFO`,
/// `HELLO`, not counted) and `FAKECOUNT` (which answers `*2 :served :refused`, the
/// commands answered and refused so far).
const FAKE_PY: &str = r#"
import socket, sys, threading
ports, after = int(sys.argv[1]), int(sys.argv[2])
served, refused = [0], [0]
lock = threading.Lock()
def commands(buf):
    """Complete commands at the front of buf: (their arguments, bytes used)."""
    cmds, pos = [], 0
    while pos < len(buf):
        if buf[pos:pos+1] == b'*':
            end = buf.find(b'\r\n', pos)
            if end < 0: break
            k, p, ok, args = int(buf[pos+1:end]), end + 2, True, []
            for j in range(max(k, 0)):
                e = buf.find(b'\r\n', p)
                if e < 0: ok = False; break
                n = int(buf[p+1:e])
                if e + 2 + n + 2 > len(buf): ok = False; break
                args.append(buf[e+2:e+2+n])
                p = e + 2 + n + 2
            if not ok: break
            pos = p
        else:
            end = buf.find(b'\n', pos)
            if end < 0: break
            args = buf[pos:end].split()
            pos = end + 1
            if not args: continue
        cmds.append(args)
    return cmds, pos
def answer(args):
    name = args[0].upper()
    if name == b'HELLO':
        return b'%1\r\n+proto\r\n:3\r\n'
    if name == b'FAKECOUNT':
        with lock:
            return b'*2\r\n:%d\r\n:%d\r\n' % (served[0], refused[0])
    if name == b'ECHO':
        return b'$%d\r\n%s\r\n' % (len(args[1]), args[1])
    if name == b'INFO':
        return b'$4\r\ninfo\r\n'
    with lock:
        if after < 0 or served[0] < after:
            served[0] += 1
        else:
            refused[0] += 1
            return b'-LOADING Redis is loading the dataset in memory\r\n'
    if name == b'PING':
        return b'+PONG\r\n'
    return b'+OK\r\n'
def serve(c):
    buf = b''
    while True:
        d = c.recv(65536)
        if not d: return
        buf += d
        cmds, used = commands(buf)
        buf = buf[used:]
        out = b''.join(answer(a) for a in cmds)
        if out: c.sendall(out)
def listen(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
got = []
for _ in range(ports):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', 0))
    s.listen(64)
    got.append(s.getsockname()[1])
    threading.Thread(target=listen, args=(s,), daemon=True).start()
print(' '.join(map(str, got)), flush=True)
threading.Event().wait()
"#;

/// A running [`FAKE_PY`], killed when dropped.
struct Fake {
    child: Child,
    ports: Vec<u16>,
}

impl Fake {
    /// `ports` listening ports; `-LOADING` after `after` commands (`-1`: never).
    fn start(ports: usize, after: i64) -> Fake {
        let mut child = Command::new(python())
            .args(["-c", FAKE_PY, &ports.to_string(), &after.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|p| p.parse().expect("a port"))
            .collect();
        assert!(!ports.is_empty(), "fake did not start: {line:?}");
        Fake { child, ports }
    }

    fn addrs(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// (commands answered, commands refused with `-LOADING`), asked directly.
    fn count(&self) -> (u64, u64) {
        let mut c = Conn::new(SocketAddr::from(([127, 0, 0, 1], self.ports[0])));
        let reply = c.read_reply(b"FAKECOUNT\r\n", 2);
        let nums: Vec<u64> = reply
            .split("\r\n")
            .filter_map(|l| l.strip_prefix(':'))
            .map(|n| n.parse().unwrap())
            .collect();
        (nums[0], nums[1])
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the `ferry_proxy_upstream_<name>_total` counter of `upstream`.
fn counter(admin: SocketAddr, name: &str, upstream: &str) -> u64 {
    let m = admin_metrics(admin);
    let prefix = format!("ferry_proxy_upstream_{name}_total{{");
    m.lines()
        .find(|l| l.starts_with(&prefix) && l.contains(&format!("\"{upstream}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} for {upstream}: {m}"))
}

/// `n` pipelined commands tagged `tag` and their replies: `SET`, `PING` and `ECHO` in
/// turn (Redis answers `ECHO` while loading, the others `-LOADING`).
fn pipeline(tag: &str, n: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut cmd, mut want) = (Vec::new(), Vec::new());
    for j in 0..n {
        let v = format!("{tag}-{j}");
        let (c, w) = match j % 3 {
            0 => (format!("SET {v} x\r\n"), "+OK\r\n".to_string()),
            1 => ("PING\r\n".to_string(), "+PONG\r\n".to_string()),
            _ => (format!("ECHO {v}\r\n"), format!("${}\r\n{v}\r\n", v.len())),
        };
        cmd.extend_from_slice(c.as_bytes());
        want.extend_from_slice(w.as_bytes());
    }
    (cmd, want)
}

const LOADING: &[u8] = b"-LOADING Redis is loading the dataset in memory\r\n";

/// An upstream that answered 5 commands and then starts loading, beside a healthy one:
/// the rest of the pipelined chunk it refused (from its first `-LOADING`; its earlier
/// replies delivered already, `ECHO`s among the rest answered by it and run again),
/// later chunks, single commands and slow-path commands all go to the healthy one, in
/// order; no client sees `-LOADING`, concurrent pipelining clients included. Its
/// failures are counted, the healthy one's retries too.
fn loading_mid_connection_is_retried(driver: &str) {
    let fake = Fake::start(1, 5);
    let r = Redis::start();
    let a = fake.addrs().remove(0);
    let list = format!("{a},{}", r.addr());
    // (No breaker opens on failures in a row: the loading upstream keeps getting work
    // until half of it failed.)
    let (p, admin) = Server::start_proxy(
        "redis",
        driver,
        &list,
        &[
            "--health-interval",
            "0",
            "--balance",
            "round-robin",
            "--breaker-failures",
            "0",
        ],
        &[],
    );
    let mut c = Conn::new(p.addr);
    for turn in 0..6 {
        // Fast path: a pipelined chunk (goes to one upstream), then a single command.
        let (cmd, want) = pipeline(&format!("t{turn}"), 20);
        c.ask(&cmd, &want);
        c.ask(b"PING\r\n", b"+PONG\r\n");
        // Slow path (quoted inline argument), one command at a time.
        c.ask(format!("SET \"y {turn}\" x\r\n").as_bytes(), b"+OK\r\n");
    }
    let (served, refused) = fake.count();
    assert_eq!(served, 5);
    assert!(refused > 0);
    // Many clients pipelining at once (more commands in flight on each connection).
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let addr = p.addr;
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                for round in 0..15 {
                    let (cmd, want) = pipeline(&format!("c{t}r{round}"), 50);
                    c.ask(&cmd, &want);
                    c.ask(b"SET \"a b\" x\r\n", b"+OK\r\n");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert!(counter(admin, "failures", &a) > 0);
    assert!(counter(admin, "retries", &r.addr()) > 0);
    // With none else to go to, the loading upstream's answer reaches the client.
    let (p, _admin) = Server::start_proxy("redis", driver, &a, &["--health-interval", "0"], &[]);
    let mut c = Conn::new(p.addr);
    c.ask(
        b"GET a\r\nECHO b\r\nGET c\r\n",
        &[LOADING, b"$1\r\nb\r\n", LOADING].concat(),
    );
    c.ask(b"GET \"a b\"\r\n", LOADING);
}

/// Every upstream loading: the client gets `-LOADING`, after one attempt on each upstream
/// (never the same twice) and at most `--retries` more in all.
fn every_upstream_loading_gives_the_error(driver: &str) {
    let fake = Fake::start(3, 0);
    let list = fake.addrs().join(",");
    // (Four units of work, so no breaker opens: 5 failures in a row open one.)
    let ask_all = |c: &mut Conn| {
        c.ask(b"GET a\r\n", LOADING);
        c.ask(b"GET b\r\nGET c\r\n", &LOADING.repeat(2));
        c.ask(b"GET \"d e\"\r\n", LOADING);
        c.ask(b"PING\r\n", LOADING);
    };
    for (retries, attempts) in [("2", 3), ("1", 2), ("9", 3)] {
        let (p, _admin) = Server::start_proxy(
            "redis",
            driver,
            &list,
            &["--health-interval", "0", "--retries", retries],
            &[],
        );
        let before = fake.count().1;
        let mut c = Conn::new(p.addr);
        ask_all(&mut c);
        // Five commands, each refused once per attempt.
        assert_eq!(fake.count().1 - before, 5 * attempts, "--retries {retries}");
    }
}

/// 70 upstreams, 69 of them loading, round robin: a command is retried on each in turn
/// until the last (healthy) one answers (the upstreams tried used to be tracked modulo
/// 64: with the first 64 tried, nothing was left).
fn loading_over_more_than_64_upstreams(driver: &str) {
    let fake = Fake::start(69, 0);
    let r = Redis::start();
    let mut list = fake.addrs();
    list.push(r.addr());
    let (p, _admin) = Server::start_proxy(
        "redis",
        driver,
        &list.join(","),
        &[
            "--health-interval",
            "0",
            "--retries",
            "80",
            "--balance",
            "round-robin",
        ],
        &[],
    );
    let mut c = Conn::new(p.addr);
    c.ask(b"PING\r\n", b"+PONG\r\n");
    c.ask(b"SET \"a b\" x\r\n", b"+OK\r\n");
    let (cmd, want) = pipeline("p", 10);
    c.ask(&cmd, &want);
    assert!(fake.count().1 >= 69);
}

/// A real redis-server reloading its data (`DEBUG RELOAD` of 300 000 keys, answering other
/// clients `-LOADING` while it loads them) beside a healthy one, under clients pipelining
/// through the proxy: none of them sees `-LOADING`, every reply is right and in order.
fn real_redis_reloading_mid_connection(driver: &str) {
    /// Removes the directory (the RDB file) when the test ends, passed or not.
    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = Scratch(tmp_dir("redis-reload", driver));
    let dir_s = dir.0.to_string_lossy().into_owned();
    let r1 = Redis::start_with(&[
        "--enable-debug-command",
        "yes",
        "--loading-process-events-interval-bytes",
        "1024",
        "--dir",
        &dir_s,
    ]);
    let r2 = Redis::start();
    let mut direct = Conn::new(SocketAddr::from(([127, 0, 0, 1], r1.port)));
    direct.ask(b"DEBUG POPULATE 300000 key 100\r\n", b"+OK\r\n");
    let list = format!("{},{}", r1.addr(), r2.addr());
    let (p, admin) = Server::start_proxy(
        "redis",
        driver,
        &list,
        &["--health-interval", "0", "--balance", "round-robin"],
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (addr, stop) = (p.addr, stop.clone());
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let start = Instant::now();
                let mut round = 0;
                while !stop.load(Relaxed) && start.elapsed() < Duration::from_secs(60) {
                    let (cmd, want) = pipeline(&format!("c{t}r{round}"), 20);
                    c.ask(&cmd, &want);
                    c.ask(b"SET \"a b\" x\r\n", b"+OK\r\n");
                    round += 1;
                }
                round
            })
        })
        .collect();
    // Reload until the proxy saw `-LOADING` from it (once is nearly always enough).
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        direct.ask(b"DEBUG RELOAD\r\n", b"+OK\r\n");
        if counter(admin, "failures", &r1.addr()) > 0 {
            break;
        }
    }
    stop.store(true, Relaxed);
    for t in threads {
        assert!(t.join().expect("client thread") > 0);
    }
    assert!(
        counter(admin, "failures", &r1.addr()) > 0,
        "{}",
        admin_metrics(admin)
    );
    assert!(counter(admin, "retries", &r2.addr()) > 0);
    drop(r1);
    drop(dir);
}

per_driver!(
    real_redis_reloading_mid_connection,
    loading_mid_connection_is_retried,
    every_upstream_loading_gives_the_error,
    loading_over_more_than_64_upstreams,
);
