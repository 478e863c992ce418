//! End-to-end tests of `ferry proxy --protocol redis` under each driver: a real
//! redis-server upstream, redis-cli, redis-py and redis-benchmark as clients.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{python, run, Redis, Server};

struct Proxy {
    server: Server,
    admin: SocketAddr,
}

impl Proxy {
    fn start(driver: &str, upstream: &str, extra: &[&str]) -> Proxy {
        let (server, admin) = Server::start_proxy("redis", driver, upstream, extra, &[]);
        Proxy { server, admin }
    }

    fn port(&self) -> String {
        self.server.port()
    }

    fn metrics(&self) -> String {
        common::admin_metrics(self.admin)
    }
}

fn cli(port: &str, args: &[&str]) -> String {
    let mut all = vec!["-p", port];
    all.extend_from_slice(args);
    let out = Command::new("timeout")
        .arg("20")
        .arg("redis-cli")
        .args(&all)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn py(script: &str) -> String {
    let out = run(Command::new("timeout").args(["60", &python(), "-c", script]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn metric(text: &str, prefix: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn commands_pipelines_transactions(driver: &str) {
    let r = Redis::start();
    let p = Proxy::start(driver, &r.addr(), &[]);
    assert_eq!(cli(&p.port(), &["set", "k", "v"]), "OK");
    assert_eq!(cli(&p.port(), &["get", "k"]), "v");
    assert_eq!(cli(&p.port(), &["incr", "n"]), "1");
    // Seen directly on the upstream.
    assert_eq!(cli(&r.port.to_string(), &["get", "k"]), "v");
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)\n\
         p = r.pipeline(transaction=False)\n\
         for i in range(500):\n\
         \x20   p.set(f'key{{i}}', i)\n\
         \x20   p.get(f'key{{i}}')\n\
         out = p.execute()\n\
         assert all(out[2*i] is True and out[2*i+1] == str(i).encode() for i in range(500)), out[:6]\n\
         t = r.pipeline(transaction=True)\n\
         t.incr('tx'); t.incr('tx'); t.get('tx')\n\
         assert t.execute() == [1, 2, b'2']\n\
         assert r.get('n') == b'1'\n\
         r3 = redis.Redis(host='127.0.0.1', port={port}, protocol=3, socket_timeout=20)\n\
         r3.hset('h', mapping={{'a': '1'}})\n\
         assert r3.hgetall('h') in ({{b'a': b'1'}},), r3.hgetall('h')\n\
         print('ok')\n",
        port = p.port()
    );
    assert_eq!(py(&script), "ok");
}

fn many_clients_few_upstream_connections(driver: &str) {
    let r = Redis::start();
    let p = Proxy::start(driver, &r.addr(), &["--redis-connections", "2"]);
    let script = format!(
        "import redis, threading\n\
         errs = []\n\
         def work(i):\n\
         \x20   try:\n\
         \x20       c = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)\n\
         \x20       for j in range(50):\n\
         \x20           c.incr('total')\n\
         \x20           assert c.set(f'c{{i}}', j) and c.get(f'c{{i}}') == str(j).encode()\n\
         \x20   except Exception as e:\n\
         \x20       errs.append(repr(e))\n\
         ts = [threading.Thread(target=work, args=(i,)) for i in range(40)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         assert not errs, errs[:3]\n\
         print(redis.Redis(host='127.0.0.1', port={port}).get('total').decode())\n",
        port = p.port()
    );
    assert_eq!(py(&script), "2000");
    let m = p.metrics();
    let key = format!(
        "ferry_proxy_upstream_connections{{protocol=\"redis\",upstream=\"{}\"}}",
        r.addr()
    );
    let open = metric(&m, &key).unwrap();
    assert!((1..=2).contains(&open), "{m}");
}

fn pubsub_passthrough(driver: &str) {
    let r = Redis::start();
    let p = Proxy::start(driver, &r.addr(), &[]);
    let script = format!(
        "import redis, time\n\
         r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)\n\
         ps = r.pubsub()\n\
         ps.subscribe('news'); ps.psubscribe('n*')\n\
         got = []\n\
         deadline = time.time() + 20\n\
         while len(got) < 2 and time.time() < deadline:\n\
         \x20   m = ps.get_message(timeout=0.2)\n\
         \x20   if m and m['type'] in ('subscribe', 'psubscribe'): got.append(m['type'])\n\
         assert sorted(got) == ['psubscribe', 'subscribe'], got\n\
         n = r.publish('news', 'hello')\n\
         assert n == 2, n\n\
         msgs = []\n\
         while len(msgs) < 2 and time.time() < deadline:\n\
         \x20   m = ps.get_message(timeout=0.2)\n\
         \x20   if m: msgs.append((m['type'], m['data']))\n\
         assert sorted(msgs) == [('message', b'hello'), ('pmessage', b'hello')], msgs\n\
         ps.unsubscribe('news')\n\
         assert r.set('after', 1) and r.get('after') == b'1'\n\
         print('ok')\n",
        port = p.port()
    );
    assert_eq!(py(&script), "ok");
}

/// redis-benchmark -P 16 through the proxy, as is and with `--busy-poll` (the worker polls
/// without sleeping after activity): every command answered, no errors.
fn redis_benchmark_pipelined(driver: &str) {
    let r = Redis::start();
    for extra in [&[][..], &["--busy-poll", "50us"][..]] {
        let p = Proxy::start(driver, &r.addr(), extra);
        let out = run(Command::new("timeout").args([
            "120",
            "redis-benchmark",
            "-p",
            &p.port(),
            "-P",
            "16",
            "-n",
            "20000",
            "-q",
            "-t",
            "set,get,incr,lpush,lpop,mset,ping_inline",
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        let last: Vec<&str> = text
            .split(['\r', '\n'])
            .filter(|l| l.contains("requests per second"))
            .collect();
        assert_eq!(last.len(), 7, "{extra:?}: {text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("ERR") && !err.contains("rror"),
            "{extra:?}: {text}\n{err}"
        );
        // Every command went through.
        let m = p.metrics();
        let key = format!(
            "ferry_proxy_upstream_requests_total{{protocol=\"redis\",upstream=\"{}\"}}",
            r.addr()
        );
        assert!(metric(&m, &key).unwrap() >= 140_000, "{extra:?}: {m}");
    }
}

/// Inline commands (the fast path forwards plain ones as they are; quoted ones and blank
/// lines go through the full parser) mixed with multibulk ones in one pipelined write,
/// then split across writes at awkward places: replies come back complete and in order.
fn inline_commands_mixed_with_multibulk(driver: &str) {
    use std::io::{Read, Write};
    let r = Redis::start();
    let p = Proxy::start(driver, &r.addr(), &["--health-interval", "0"]);
    let port: u16 = p.port().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    fn expect_reply(s: &mut TcpStream, want: &[u8]) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want.len() {
            let n = s.read(&mut buf).expect("reply in time");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    }
    let pipeline: &[u8] = b"PING\r\nSET a 1\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\nGET a\n\r\n  \r\n\
        SET q \"x y\"\r\nGET q\r\nincr   n\r\n*1\r\n$4\r\nPING\r\nECHO 'a b'\r\nGET a\r\n";
    let replies: &[u8] = b"+PONG\r\n+OK\r\n$1\r\n1\r\n$1\r\n1\r\n+OK\r\n$3\r\nx y\r\n:1\r\n\
        +PONG\r\n$3\r\na b\r\n$1\r\n1\r\n";
    s.write_all(pipeline).unwrap();
    expect_reply(&mut s, replies);
    // The same bytes again, a few at a time.
    for piece in pipeline.chunks(3) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let replies2 = String::from_utf8_lossy(replies).replace(":1\r\n", ":2\r\n");
    expect_reply(&mut s, replies2.as_bytes());
}

fn upstream_restart_is_survived(driver: &str) {
    let mut r = Redis::start();
    let port = r.port;
    let p = Proxy::start(driver, &r.addr(), &["--health-interval", "0"]);
    let script = format!(
        "import redis, time, sys\n\
         r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)\n\
         assert r.set('a', 1)\n\
         print('ready', flush=True)\n\
         sys.stdin.readline()\n\
         errors = 0\n\
         deadline = time.time() + 20\n\
         while time.time() < deadline:\n\
         \x20   try:\n\
         \x20       if r.set('b', 2) and r.get('b') == b'2': break\n\
         \x20   except redis.exceptions.ResponseError as e:\n\
         \x20       assert 'ferry proxy' in str(e), e\n\
         \x20       errors += 1\n\
         \x20   time.sleep(0.05)\n\
         else:\n\
         \x20   raise SystemExit('never recovered')\n\
         print('ok')\n",
        port = p.port()
    );
    let mut child = Command::new("timeout")
        .args(["60", &python(), "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Restart the upstream on the same port.
    let _ = r.child.kill();
    let _ = r.child.wait();
    let mut again = None;
    for _ in 0..50 {
        again = Redis::start_on(port, &[]);
        if again.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = again.expect("redis-server restarted");
    let _again = again;
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    assert_eq!(rest.trim(), "ok");
}

per_driver!(
    commands_pipelines_transactions,
    many_clients_few_upstream_connections,
    pubsub_passthrough,
    redis_benchmark_pipelined,
    upstream_restart_is_survived,
    hung_upstream_times_out,
    hash_balance_keeps_each_key_on_one_upstream,
    round_robin_uses_every_upstream,
    dead_upstream_opens_its_breaker,
    stopped_upstream_opens_its_breaker,
    big_values_pass_both_ways,
    inline_commands_mixed_with_multibulk,
);

/// A hung (SIGSTOPped) upstream: commands on the shared connection fail after
/// `--response-timeout` with the proxy's error instead of hanging; after SIGCONT the proxy
/// reconnects and serves again.
fn hung_upstream_times_out(driver: &str) {
    let r = Redis::start();
    let p = Proxy::start(
        driver,
        &r.addr(),
        &["--health-interval", "0", "--response-timeout", "1s"],
    );
    assert_eq!(cli(&p.port(), &["set", "k", "v"]), "OK");
    // SAFETY: signalling our own child process by its pid.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGSTOP) };
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=15)\n\
         try:\n\
         \x20   r.get('k'); print('answered')\n\
         except redis.exceptions.ResponseError as e:\n\
         \x20   print('error', 'ferry proxy' in str(e))\n",
        port = p.port()
    );
    let out = py(&script);
    // SAFETY: as above.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGCONT) };
    assert_eq!(out, "error True");
    let start = Instant::now();
    loop {
        if cli(&p.port(), &["get", "k"]) == "v" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dbsize(r: &Redis) -> i64 {
    cli(&r.port.to_string(), &["dbsize"]).parse().unwrap()
}

/// `--balance hash`: every key lives on exactly one of two upstreams (both get some), and
/// reads through the proxy (pipelined and one by one) find every key.
fn hash_balance_keeps_each_key_on_one_upstream(driver: &str) {
    let (a, b) = (Redis::start(), Redis::start());
    let ups = format!("{},{}", a.addr(), b.addr());
    let p = Proxy::start(
        driver,
        &ups,
        &["--balance", "hash", "--health-interval", "0"],
    );
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)\n\
         p = r.pipeline(transaction=False)\n\
         for i in range(300): p.set(f'key:{{i}}', i)\n\
         assert all(p.execute())\n\
         for i in range(300): assert r.get(f'key:{{i}}') == str(i).encode(), i\n\
         p = r.pipeline(transaction=False)\n\
         for i in range(300): p.incr(f'key:{{i}}')\n\
         assert p.execute() == [i + 1 for i in range(300)]\n\
         print('ok')\n",
        port = p.port()
    );
    assert_eq!(py(&script), "ok");
    let (na, nb) = (dbsize(&a), dbsize(&b));
    assert_eq!(na + nb, 300, "each key on exactly one upstream");
    assert!(na > 30 && nb > 30, "{na} {nb}");
    // Seen directly: the value is where the proxy put it, nowhere else.
    for i in [0, 7, 150, 299] {
        let k = format!("key:{i}");
        let va = cli(&a.port.to_string(), &["get", &k]);
        let vb = cli(&b.port.to_string(), &["get", &k]);
        assert!(
            (va == (i + 1).to_string() && vb.is_empty())
                || (vb == (i + 1).to_string() && va.is_empty()),
            "{k}: {va:?} {vb:?}"
        );
    }
}

/// `--balance round-robin` and `least-requests`: commands from one client spread over both
/// upstreams.
fn round_robin_uses_every_upstream(driver: &str) {
    for policy in ["round-robin", "least-requests"] {
        let (a, b) = (Redis::start(), Redis::start());
        let ups = format!("{},{}", a.addr(), b.addr());
        let p = Proxy::start(
            driver,
            &ups,
            &["--balance", policy, "--health-interval", "0"],
        );
        let script = format!(
            "import redis\n\
             r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)\n\
             for i in range(100): assert r.set(f'rr:{{i}}', i)\n\
             print('ok')\n",
            port = p.port()
        );
        assert_eq!(py(&script), "ok");
        let (na, nb) = (dbsize(&a), dbsize(&b));
        assert_eq!(na + nb, 100, "{policy}");
        assert!(na > 10 && nb > 10, "{policy}: {na} {nb}");
    }
}

/// A client loop for the breaker tests: SETs one by one for up to `secs`, printing
/// `errors,ok_after_last_error` and stopping after 100 successes in a row.
fn breaker_loop(port: &str, secs: u32) -> String {
    format!(
        "import redis, time\n\
         r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)\n\
         errors, run, deadline = 0, 0, time.time() + {secs}\n\
         i = 0\n\
         while run < 100 and time.time() < deadline:\n\
         \x20   i += 1\n\
         \x20   try:\n\
         \x20       assert r.set(f'b:{{i}}', i)\n\
         \x20       run += 1\n\
         \x20   except redis.exceptions.ResponseError as e:\n\
         \x20       assert 'ferry proxy' in str(e), e\n\
         \x20       errors += 1; run = 0\n\
         print(f'{{errors}},{{run}}')\n"
    )
}

/// One of two upstreams dies: a few commands fail, its breaker opens and traffic goes to
/// the other; with both dead clients get the proxy's error at once; a restarted upstream
/// gets traffic again once its breaker lets probes through.
fn dead_upstream_opens_its_breaker(driver: &str) {
    let a = Redis::start();
    let mut b = Redis::start();
    let b_port = b.port;
    let ups = format!("{},{}", a.addr(), b.addr());
    let p = Proxy::start(
        driver,
        &ups,
        &[
            "--health-interval",
            "0",
            "--breaker-failures",
            "3",
            "--breaker-open",
            "1s",
        ],
    );
    assert_eq!(cli(&p.port(), &["set", "x", "1"]), "OK");
    let _ = b.child.kill();
    let _ = b.child.wait();
    let out = py(&breaker_loop(&p.port(), 30));
    let (errors, run) = out.split_once(',').expect("errors,run");
    let errors: u32 = errors.parse().unwrap();
    assert_eq!(run, "100", "{out}");
    assert!((1..=20).contains(&errors), "{out}");
    let m = p.metrics();
    let key = format!(
        "ferry_proxy_breaker_opened_total{{protocol=\"redis\",upstream=\"{}\"}}",
        b.addr()
    );
    assert!(metric(&m, &key).unwrap_or(0) >= 1, "{m}");
    // B comes back on its port: after the open period, probes succeed and it gets keys.
    let b2 = (0..50)
        .find_map(|_| {
            let r = Redis::start_on(b_port, &[]);
            if r.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            r
        })
        .expect("redis-server restarted");
    let start = Instant::now();
    let mut i = 0;
    while dbsize(&b2) == 0 {
        i += 1;
        let _ = cli(&p.port(), &["set", &format!("again:{i}"), "1"]);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never used again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Now both die: every command gets the proxy's error.
    drop(b2);
    drop(a);
    let mut refused = 0;
    for k in 0..40 {
        let got = cli(&p.port(), &["set", &format!("dead:{k}"), "1"]);
        assert!(got.contains("ferry proxy"), "{got}");
        refused += usize::from(got.contains("no upstream available"));
    }
    // A few fail on the wire until both breakers open; then the proxy refuses at once
    // (bar an occasional half-open probe).
    assert!(refused >= 20, "{refused}");
}

/// One of two upstreams hangs (SIGSTOP): its commands time out, its breaker opens and the
/// other one serves everything.
fn stopped_upstream_opens_its_breaker(driver: &str) {
    let a = Redis::start();
    let b = Redis::start();
    let ups = format!("{},{}", a.addr(), b.addr());
    let p = Proxy::start(
        driver,
        &ups,
        &[
            "--health-interval",
            "0",
            "--breaker-failures",
            "3",
            "--breaker-open",
            "30s",
            "--response-timeout",
            "500ms",
        ],
    );
    assert_eq!(cli(&p.port(), &["set", "x", "1"]), "OK");
    let before = dbsize(&a);
    // SAFETY: signalling our own child process by its pid.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGSTOP) };
    let out = py(&breaker_loop(&p.port(), 40));
    // SAFETY: as above.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGCONT) };
    let (errors, run) = out.split_once(',').expect("errors,run");
    let errors: u32 = errors.parse().unwrap();
    assert_eq!(run, "100", "{out}");
    assert!((1..=20).contains(&errors), "{out}");
    assert!(dbsize(&a) >= before + 100);
}

/// Values far over the read high-water mark (256 KiB) go up and come back whole, alone and
/// in a pipeline with small commands; so does an array reply of 30000 elements (measured
/// across many reads).
fn big_values_pass_both_ways(driver: &str) {
    let r = Redis::start();
    let p = Proxy::start(driver, &r.addr(), &["--health-interval", "0"]);
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=30)\n\
         big = bytes(range(256)) * (3 * 4096)\n\
         assert r.set('big', big) and r.get('big') == big\n\
         p = r.pipeline(transaction=False)\n\
         p.set('a', 1); p.get('big'); p.get('a'); p.set('big2', big[::-1]); p.get('big2')\n\
         assert p.execute() == [True, big, b'1', True, big[::-1]]\n\
         items = [str(i).encode() * 3 for i in range(30000)]\n\
         r.rpush('list', *items)\n\
         p = r.pipeline(transaction=False)\n\
         p.lrange('list', 0, -1); p.get('a'); p.lrange('list', 5, 7)\n\
         assert p.execute() == [items, b'1', items[5:8]]\n\
         print('ok')\n",
        port = p.port()
    );
    assert_eq!(py(&script), "ok");
}
