//! End-to-end tests of `ferry serve --redis` under each driver (inline and with application
//! workers), driven by redis-cli, redis-py, redis-benchmark and `ferry bench redis://`, plus
//! `ferry bench` against a real redis-server.
//!
//! Nothing here asserts timing; every wait is bounded; loopback only.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, python, run, Server, BIN};

impl Server {
    fn start(driver: &str, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--redis", "127.0.0.1:0", "--driver", driver];
        if !extra.contains(&"--workers") {
            args.extend_from_slice(&["--workers", "1"]);
        }
        args.extend_from_slice(extra);
        let s = Server::launch("redis", &args, &[], None);
        assert_eq!(s.driver, driver);
        s
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = run(Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port()])
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    }
}

fn tmp_dir(name: &str) -> PathBuf {
    common::tmp_dir("redis", name)
}

fn redis_cli_commands(driver: &str, extra: &[&str]) {
    let s = Server::start(driver, extra);
    assert_eq!(s.cli(&["PING"]).trim(), "PONG");
    assert_eq!(s.cli(&["SET", "k", "v"]).trim(), "OK");
    assert_eq!(s.cli(&["GET", "k"]).trim(), "v");
    assert_eq!(s.cli(&["INCRBY", "n", "5"]).trim(), "5");
    assert_eq!(s.cli(&["RPUSH", "l", "a", "b", "c"]).trim(), "3");
    assert_eq!(s.cli(&["LRANGE", "l", "0", "-1"]), "a\nb\nc\n");
    assert_eq!(s.cli(&["HSET", "h", "f", "1"]).trim(), "1");
    assert_eq!(s.cli(&["HGET", "h", "f"]).trim(), "1");
    assert_eq!(s.cli(&["MSET", "a", "1", "b", "2"]).trim(), "OK");
    assert_eq!(s.cli(&["MGET", "a", "b", "zz"]), "1\n2\n\n");
    assert_eq!(s.cli(&["TYPE", "l"]).trim(), "list");
    assert!(s.cli(&["GET", "l"]).contains("WRONGTYPE"));
    assert!(s.cli(&["NOSUCH"]).contains("ERR unknown command"));
    // Active expiry (driven by the server's timer) removes a key nobody reads. DBSIZE counts
    // expired keys until they are removed, so it falls back to its count from before the SET
    // only once the timer has removed the key (which may already have happened by the first
    // DBSIZE after the SET on a slow machine: that count is not the baseline).
    let before: u64 = s.cli(&["DBSIZE"]).trim().parse().unwrap();
    assert_eq!(s.cli(&["SET", "gone", "x", "PX", "50"]).trim(), "OK");
    let mut after = before + 1;
    for _ in 0..200 {
        after = s.cli(&["DBSIZE"]).trim().parse().unwrap();
        if after == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(after, before, "the expired key was never removed");
    // RESP3.
    let hello = s.cli(&["-3", "HELLO", "3"]);
    assert!(hello.contains("proto") && hello.contains('3'), "{hello}");
    let map = s.cli(&["-3", "--no-raw", "HGETALL", "h"]);
    assert!(map.contains("\"f\" => \"1\""), "{map}");
    assert_eq!(s.cli(&["-3", "--no-raw", "GET", "k"]).trim(), "\"v\"");
    let d = s.cli(&["-3", "--no-raw", "HELLO", "3"]);
    assert!(d.contains("\"proto\" => (integer) 3"), "{d}");
}

fn pipe_mass_insert(driver: &str, extra: &[&str]) {
    let s = Server::start(driver, extra);
    // The issue's mass insertion: one million keys through `redis-cli --pipe`.
    let n = 1_000_000;
    let mut data = Vec::with_capacity(n * 56);
    for i in 0..n {
        let k = format!("key:{i}");
        let v = format!("value:{i}");
        write!(
            data,
            "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
            k.len(),
            v.len()
        )
        .unwrap();
    }
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &s.port(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("errors: 0, replies: {n}")), "{text}");
    assert_eq!(s.cli(&["DBSIZE"]).trim(), n.to_string());
    assert_eq!(s.cli(&["GET", "key:999999"]).trim(), "value:999999");
}

/// `/metrics` on the HTTP listener counts the RESP listener's commands too.
fn metrics_count_resp(driver: &str, extra: &[&str]) {
    let mut args = vec![
        "serve",
        "--http",
        "127.0.0.1:0",
        "--redis",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--driver",
        driver,
    ];
    args.extend_from_slice(extra);
    // Both listening lines are printed; the HTTP one comes first.
    let s = Server::launch("http", &args, &[], None);
    let redis_port = {
        let out = run(Command::new("curl").args(["-sS", &s.url("/health")]));
        assert!(out.status.success());
        // The RESP port is not printed on the HTTP line: find it through the process's sockets.
        listening_ports(s.child.id())
            .into_iter()
            .find(|p| *p != s.addr.port())
            .expect("a second listener")
    };
    for i in 0..25 {
        let out = run(Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis_port.to_string()])
            .args(["SET", &format!("k{i}"), "v"]));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
    let out = run(Command::new("curl").args(["-sS", &s.url("/metrics")]));
    let text = String::from_utf8(out.stdout).unwrap();
    let count: u64 = text
        .lines()
        .filter(|l| l.starts_with("ferry_requests_total{protocol=\"redis\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(count >= 25, "{text}");
    assert!(
        text.contains("ferry_connections_accepted_total{protocol=\"redis\""),
        "{text}"
    );
}

/// TCP ports `pid` listens on (from /proc/net/tcp and the process's socket inodes).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // state 0A = LISTEN; field 9 = inode.
            (f.get(3) == Some(&"0A") && inodes.iter().any(|i| Some(&i.as_str()) == f.get(9)))
                .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
                .flatten()
        })
        .collect()
}

const PY: &str = r#"
import sys, time, redis
port = int(sys.argv[1])
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=port, protocol=proto, decode_responses=True)
    assert r.ping()
    assert r.set(f"p{proto}", "v")
    assert r.get(f"p{proto}") == "v"
    r.delete("hh")
    r.hset("hh", mapping={"a": "1", "b": "2"})
    assert r.hgetall("hh") == {"a": "1", "b": "2"}, r.hgetall("hh")
    p = r.pipeline(transaction=False)
    for i in range(200):
        p.set(f"k{proto}:{i}", i)
    for i in range(200):
        p.incr(f"k{proto}:{i}")
    res = p.execute()
    assert res[:200] == [True] * 200 and res[200:] == list(range(1, 201)), res[:5]
    t = r.pipeline(transaction=True)
    t.set("tx", "1").incr("tx").get("tx")
    assert t.execute() == [True, 2, "2"]
    sub = redis.Redis(host="127.0.0.1", port=port, protocol=proto, decode_responses=True)
    ps = sub.pubsub()
    ps.subscribe(f"chan{proto}")
    ps.psubscribe("pat.*")
    got = []
    deadline = time.time() + 10
    while len(got) < 2 and time.time() < deadline:
        m = ps.get_message(timeout=0.2)
        if m:
            got.append(m["type"])
    assert got == ["subscribe", "psubscribe"], got
    assert r.publish(f"chan{proto}", "hello") == 1
    assert r.publish("pat.x", "world") == 1
    msgs = []
    deadline = time.time() + 10
    while len(msgs) < 2 and time.time() < deadline:
        m = ps.get_message(timeout=0.2)
        if m and m["type"] in ("message", "pmessage"):
            msgs.append((m["type"], m["channel"], m["data"]))
    assert msgs == [("message", f"chan{proto}", "hello"), ("pmessage", "pat.x", "world")], msgs
    ps.close()
    sub.close()
    r.close()
print("ok")
"#;

fn redis_py(driver: &str, extra: &[&str]) {
    let s = Server::start(driver, extra);
    let out = run(Command::new(python()).args(["-c", PY, &s.port()]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

fn pubsub_across_workers(driver: &str, extra: &[&str]) {
    // Two I/O workers: subscriber and publisher connections likely land on different ones;
    // either way, many connections make sure routing through the mailboxes is exercised.
    let mut args = vec!["--workers", "2"];
    args.extend_from_slice(extra);
    let s = Server::start(driver, &args);
    let code = r#"
import sys, time, redis
port = int(sys.argv[1])
subs = []
for i in range(8):
    c = redis.Redis(host="127.0.0.1", port=port)
    ps = c.pubsub()
    ps.subscribe("news")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    subs.append((c, ps))
pub = redis.Redis(host="127.0.0.1", port=port)
assert pub.publish("news", "x") == 8
for _, ps in subs:
    m = None
    deadline = time.time() + 10
    while m is None and time.time() < deadline:
        m = ps.get_message(timeout=0.2)
    assert m and m["data"] == b"x", m
print("ok")
"#;
    let out = run(Command::new(python()).args(["-c", code, &s.port()]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// The tests `redis-benchmark` 7.0 runs by default, in its `-q` spelling (7.2 adds XADD).
const BENCHMARK_TESTS: [&str; 20] = [
    "PING_INLINE",
    "PING_MBULK",
    "SET",
    "GET",
    "INCR",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "SADD",
    "HSET",
    "SPOP",
    "ZADD",
    "ZPOPMIN",
    "LPUSH (needed to benchmark LRANGE)",
    "LRANGE_100 (first 100 elements)",
    "LRANGE_300 (first 300 elements)",
    "LRANGE_500 (first 500 elements)",
    "LRANGE_600 (first 600 elements)",
    "MSET (10 keys)",
];

/// Every default test reported its `NAME: N requests per second` line (N > 0), and no error.
fn check_benchmark(text: &str) {
    assert!(!text.contains("rror"), "{text}");
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .filter(|l| l.contains(" requests per second"))
        .collect();
    for name in BENCHMARK_TESTS {
        let prefix = format!("{name}: ");
        let line = lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no result for {name}: {text}"));
        let rps: f64 = line[prefix.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(rps > 0.0, "{line}");
    }
    // One result per test (a newer redis-benchmark may add tests: more is fine).
    assert!(lines.len() >= BENCHMARK_TESTS.len(), "{lines:#?}");
}

fn redis_benchmark(driver: &str, extra: &[&str]) {
    let s = Server::start(driver, extra);
    for (p, n) in [("1", "10000"), ("16", "20000")] {
        // The default test set (no -t).
        let out = run(Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.port(),
            "-q",
            "-n",
            n,
            "-P",
            p,
        ]));
        let mut text = String::from_utf8_lossy(&out.stdout).to_string();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        check_benchmark(&text);
    }
}

fn bench_json_ok(url: &str) {
    let out =
        run(Command::new(BIN).args(["bench", url, "-c", "4", "-n", "2000", "-P", "4", "--json"]));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.trim();
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"errors\":0,"), "{line}");
    let requests: u64 = line
        .strip_prefix("{\"requests\":")
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(requests > 0, "{line}");
    for k in [
        "\"duration_s\":",
        "\"rps\":",
        "\"latency_us\":{\"p50\":",
        "\"p999\":",
        "\"tests\":{\"ping\":",
        "\"mset\":{\"requests\":",
    ] {
        assert!(line.contains(k), "{k} in {line}");
    }
    // Each per-test object reports no error either.
    assert_eq!(line.matches("\"errors\":0,").count(), 13, "{line}");
}

fn ferry_bench_against_ferry(driver: &str, extra: &[&str]) {
    let s = Server::start(driver, extra);
    bench_json_ok(&format!("redis://{}", s.addr));
}

fn sigterm_exits_0(driver: &str) {
    let mut s = Server::start(driver, &[]);
    assert_eq!(s.cli(&["SET", "a", "b"]).trim(), "OK");
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(s.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

macro_rules! per_driver {
    ($($name:ident: $extra:expr),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll", $extra); } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name("uring", $extra); } )*
        }
        mod app_workers {
            $( #[test] fn $name() { super::$name("uring", &["--app-workers", "2"]); } )*
        }
    };
}

per_driver!(
    redis_cli_commands: &[],
    pipe_mass_insert: &[],
    metrics_count_resp: &[],
    redis_py: &[],
    redis_benchmark: &[],
    ferry_bench_against_ferry: &[],
);

#[test]
fn epoll_app_workers_redis_py() {
    redis_py("epoll", &["--app-workers", "2"]);
}

#[test]
fn epoll_pubsub_across_workers() {
    pubsub_across_workers("epoll", &[]);
}

#[test]
fn uring_pubsub_across_workers() {
    pubsub_across_workers("uring", &[]);
}

#[test]
fn uring_pubsub_across_workers_app_workers() {
    pubsub_across_workers("uring", &["--app-workers", "2"]);
}

#[test]
fn epoll_sigterm_exits_0() {
    sigterm_exits_0("epoll");
}

#[test]
fn uring_sigterm_exits_0() {
    sigterm_exits_0("uring");
}

/// `ferry bench redis://` against a real redis-server on a free loopback port.
#[test]
fn ferry_bench_against_redis_server() {
    let dir = tmp_dir("server");
    for _attempt in 0..5 {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let start = Instant::now();
        let mut up = false;
        while start.elapsed() < Duration::from_secs(10) {
            if child.try_wait().unwrap().is_some() {
                break; // could not bind: try another port
            }
            let ping = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "PING"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&ping.stdout).trim() == "PONG" {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        bench_json_ok(&format!("redis://127.0.0.1:{port}"));
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    panic!("redis-server did not start");
}
