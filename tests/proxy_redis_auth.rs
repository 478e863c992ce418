//! End-to-end tests of authentication in `ferry proxy --protocol redis` under each driver:
//! a real redis-server with `requirepass` or an ACL user upstream, the proxy's upstream
//! credentials (`--upstream-password-file`, `FERRY_UPSTREAM_PASSWORD`, `--upstream-user`),
//! client authentication at the proxy (`--client-password-file`, `FERRY_CLIENT_PASSWORD`,
//! `--client-user`), and `CLIENT ID` / `CLIENT TRACKING` through the proxy; clients are
//! raw sockets (exact bytes, as redis-server 7 answers), redis-cli and redis-py.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::resp::RespConn as Conn;
use common::{free_port, python, run, tmp_dir, Redis, Server};

const UP_PW: &str = "up-secret";
const CLIENT_PW: &str = "client-secret";
const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";

struct Proxy {
    server: Server,
    admin: SocketAddr,
    _dir: PathBuf,
}

impl Proxy {
    /// A proxy to `upstream`; `up_pw` / `client_pw` go to password files (`Some`), and `env`
    /// to the environment.
    fn start(
        driver: &str,
        upstream: &str,
        up_pw: Option<&str>,
        client_pw: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let dir = tmp_dir("proxy-auth", &format!("{}", free_port()));
        let up_file = dir.join("upstream.pw");
        let client_file = dir.join("client.pw");
        let up_s = up_file.to_string_lossy().into_owned();
        let client_s = client_file.to_string_lossy().into_owned();
        let mut args = Vec::new();
        if let Some(pw) = up_pw {
            write_secret(&up_file, format!("{pw}\n").as_bytes());
            args.extend(["--upstream-password-file", &up_s]);
        }
        if let Some(pw) = client_pw {
            write_secret(&client_file, pw.as_bytes());
            args.extend(["--client-password-file", &client_s]);
        }
        args.extend_from_slice(extra);
        let (server, admin) = Server::start_proxy("redis", driver, upstream, &args, env);
        Proxy {
            server,
            admin,
            _dir: dir,
        }
    }

    fn port(&self) -> String {
        self.server.port()
    }

    fn metrics(&self) -> String {
        common::admin_metrics(self.admin)
    }

    /// Open upstream connections (the `ferry_proxy_upstream_connections` gauge).
    fn upstream_connections(&self) -> i64 {
        let m = self.metrics();
        m.lines()
            .find(|l| l.starts_with("ferry_proxy_upstream_connections{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no upstream_connections in {m}"))
    }

    fn connect(&self) -> Conn {
        Conn::new(self.server.addr)
    }
}

/// A password file only its owner reads.
fn write_secret(path: &std::path::Path, pw: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(pw).unwrap();
}

fn py(script: &str) -> String {
    let out = run(Command::new("timeout").args(["60", &python(), "-c", script]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cli(port: &str, args: &[&str]) -> String {
    let mut all = vec!["-p", port, "--no-auth-warning"];
    all.extend_from_slice(args);
    let out = Command::new("timeout")
        .arg("20")
        .arg("redis-cli")
        .args(&all)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Poll `f` (bounded: 15 s) until it is true.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not within 15 s: {what}");
}

/// redis-py against a `requirepass` upstream through a proxy holding the password: plain
/// commands, a pipeline, MULTI, a blocking pop, pub/sub, RESP3; the health check (which
/// authenticates) keeps the upstream in service.
fn upstream_requirepass_works_through_the_proxy(driver: &str) {
    let r = Redis::start_with(&["--requirepass", UP_PW]);
    let p = Proxy::start(
        driver,
        &r.addr(),
        Some(UP_PW),
        None,
        &["--health-interval", "200ms"],
        &[],
    );
    // Without the proxy's credentials these would all be -NOAUTH.
    let script = format!(
        "import redis, threading, time\n\
         r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)\n\
         assert r.set('k', 'v') is True\n\
         assert r.get('k') == b'v'\n\
         p = r.pipeline(transaction=False)\n\
         for i in range(300):\n\
         \x20   p.set(f'key{{i}}', i)\n\
         \x20   p.get(f'key{{i}}')\n\
         out = p.execute()\n\
         assert all(out[2*i] is True and out[2*i+1] == str(i).encode() for i in range(300)), out[:6]\n\
         t = r.pipeline(transaction=True)\n\
         t.incr('tx'); t.incr('tx'); t.get('tx')\n\
         assert t.execute() == [1, 2, b'2']\n\
         def push():\n\
         \x20   time.sleep(0.3)\n\
         \x20   redis.Redis(host='127.0.0.1', port={port}).rpush('q', 'job')\n\
         threading.Thread(target=push).start()\n\
         assert r.blpop('q', timeout=10) == (b'q', b'job')\n\
         ps = r.pubsub()\n\
         ps.subscribe('news')\n\
         assert ps.get_message(timeout=10)['type'] == 'subscribe'\n\
         got = None\n\
         for _ in range(50):\n\
         \x20   r.publish('news', 'hello')\n\
         \x20   got = ps.get_message(timeout=0.2)\n\
         \x20   if got: break\n\
         assert got and got['data'] == b'hello', got\n\
         r3 = redis.Redis(host='127.0.0.1', port={port}, protocol=3, socket_timeout=20)\n\
         r3.hset('h', mapping={{'a': '1'}})\n\
         assert r3.hgetall('h') == {{b'a': b'1'}}, r3.hgetall('h')\n\
         print('ok')\n",
        port = p.port()
    );
    assert_eq!(py(&script), "ok");
    assert_eq!(cli(&r.port.to_string(), &["-a", UP_PW, "get", "k"]), "v");
    // Several health-check rounds later the upstream is still in service.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        p.metrics()
            .contains("ferry_proxy_upstream_healthy{protocol=\"redis\",upstream=\""),
        "metrics"
    );
    assert!(
        p.metrics()
            .lines()
            .any(|l| l.starts_with("ferry_proxy_upstream_healthy{") && l.ends_with(" 1")),
        "{}",
        p.metrics()
    );
    assert_eq!(cli(&p.port(), &["get", "k"]), "v");
}

/// An ACL user upstream (`default` disabled): `--upstream-user` with the password from
/// `FERRY_UPSTREAM_PASSWORD`; dedicated connections authenticate too, also again after a
/// `RESET` (which makes Redis forget the authentication).
fn upstream_acl_user_from_env(driver: &str) {
    let r = Redis::start_with(&[
        "--user",
        "app",
        "on",
        ">app-secret",
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let p = Proxy::start(
        driver,
        &r.addr(),
        None,
        None,
        &["--upstream-user", "app"],
        &[("FERRY_UPSTREAM_PASSWORD", "app-secret")],
    );
    let mut c = p.connect();
    c.ask(b"SET a 1\r\nGET a\r\n", b"+OK\r\n$1\r\n1\r\n");
    // MULTI takes a dedicated connection: authenticated as app as well.
    c.ask(
        b"MULTI\r\nINCR n\r\nEXEC\r\nACL WHOAMI\r\n",
        b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n$3\r\napp\r\n",
    );
    c.ask(b"RESET\r\n", b"+RESET\r\n");
    c.ask(b"GET a\r\nACL WHOAMI\r\n", b"$1\r\n1\r\n$3\r\napp\r\n");
}

/// A wrong upstream password: clients get a clear error at once (no hang), the error names
/// no password, the proxy stays up; with health checks the upstream is marked down.
fn wrong_upstream_password(driver: &str) {
    let r = Redis::start_with(&["--requirepass", UP_PW]);
    let p = Proxy::start(
        driver,
        &r.addr(),
        Some("not-the-password"),
        None,
        &["--health-interval", "0"],
        &[],
    );
    let refused = b"-ERR ferry proxy: upstream authentication failed (WRONGPASS invalid username-password pair or user is disabled.)\r\n";
    let mut c = p.connect();
    c.send(b"SET a 1\r\nGET a\r\n");
    c.expect(refused);
    c.expect(refused);
    // A dedicated connection (MULTI) is refused the same way.
    let mut d = p.connect();
    d.ask(b"MULTI\r\n", refused);
    // Never the password, in replies or metrics.
    let m = p.metrics();
    assert!(!m.contains("not-the-password"));
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferry_proxy_upstream_failures_total{") && !l.ends_with(" 0")),
        "{m}"
    );
    // Later commands: still an answer (the error, or "no upstream" once the breaker opened).
    for _ in 0..8 {
        let mut e = p.connect();
        e.send(b"PING\r\n");
        let l = e.line();
        assert!(
            l.starts_with("-ERR ferry proxy: upstream authentication failed")
                || l == "-ERR ferry proxy: no upstream available",
            "{l}"
        );
    }

    // The proxy is still up and serving its admin listener.
    let mut p = p;
    assert!(p.server.child.try_wait().unwrap().is_none(), "proxy exited");
    assert!(p.metrics().contains("ferry_proxy_requests_total"));

    // With health checks (which authenticate): the upstream goes out of service.
    let p2 = Proxy::start(
        driver,
        &r.addr(),
        Some("not-the-password"),
        None,
        &["--health-interval", "100ms"],
        &[],
    );
    eventually("upstream marked down", || {
        p2.metrics()
            .lines()
            .any(|l| l.starts_with("ferry_proxy_upstream_healthy{") && l.ends_with(" 0"))
    });
    let mut e = p2.connect();
    e.ask(b"PING\r\n", b"-ERR ferry proxy: no upstream available\r\n");
}

/// With `--client-password-file`: exactly redis-server 7's answers with `requirepass`
/// before and after AUTH; the proxy answers AUTH itself.
fn client_auth_required(driver: &str) {
    let r = Redis::start_with(&["--requirepass", UP_PW]);
    let p = Proxy::start(driver, &r.addr(), Some(UP_PW), Some(CLIENT_PW), &[], &[]);
    let mut c = p.connect();
    c.ask(b"GET a\r\n", NOAUTH);
    c.ask(b"PING\r\n", NOAUTH);
    c.ask(b"SUBSCRIBE news\r\n", NOAUTH);
    c.ask(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n", NOAUTH);
    c.ask(b"MULTI\r\n", NOAUTH);
    c.ask(b"CLIENT ID\r\n", NOAUTH);
    // Empty multibulks are ignored (as by Redis) and open no way past the gate: the
    // PSUBSCRIBE behind them in the same read is refused too (fuzz finding).
    c.ask(
        b"*-1\r\n*0\r\nPSUBSCRIBE *\r\nGET a\r\n",
        b"-NOAUTH Authentication required.\r\n-NOAUTH Authentication required.\r\n",
    );
    c.ask(b"HELLO 3\r\n", b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n");
    c.ask(
        b"AUTH\r\n",
        b"-ERR wrong number of arguments for 'auth' command\r\n",
    );
    c.ask(b"AUTH a b c\r\n", b"-ERR syntax error\r\n");
    c.ask(b"AUTH wrong\r\n", WRONGPASS);
    c.ask(b"AUTH someone client-secret\r\n", WRONGPASS);
    c.ask(b"HELLO 3 AUTH default wrong\r\n", WRONGPASS);
    // Pipelined: refused, accepted, then served.
    c.ask(
        b"SET a 1\r\nAUTH client-secret\r\nSET a 2\r\nGET a\r\n",
        b"-NOAUTH Authentication required.\r\n+OK\r\n+OK\r\n$1\r\n2\r\n",
    );
    // A failed AUTH leaves the client authenticated (as Redis).
    c.ask(
        b"AUTH wrong\r\nGET a\r\n",
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n$1\r\n2\r\n",
    );
    // RESET un-authenticates.
    c.ask(
        b"RESET\r\nGET a\r\n",
        b"+RESET\r\n-NOAUTH Authentication required.\r\n",
    );
    // HELLO … AUTH … SETNAME authenticates, switches protocol, keeps the name.
    c.hello(b"HELLO 3 AUTH default client-secret SETNAME app1\r\n");
    c.ask(b"CLIENT GETNAME\r\nGET a\r\n", b"$4\r\napp1\r\n$1\r\n2\r\n");
    c.ask(b"QUIT\r\n", b"+OK\r\n");

    // QUIT before authenticating.
    let mut q = p.connect();
    q.ask(b"QUIT\r\n", b"+OK\r\n");
    assert!(q.closed());
    // Redis's limits for unauthenticated clients: a protocol error, then the close.
    let mut big = p.connect();
    big.ask(
        b"*11\r\n",
        b"-ERR Protocol error: unauthenticated multibulk length\r\n",
    );
    assert!(big.closed());
    let mut big = p.connect();
    big.ask(
        b"*2\r\n$3\r\nGET\r\n$20000\r\n",
        b"-ERR Protocol error: unauthenticated bulk length\r\n",
    );
    assert!(big.closed());

    // redis-cli and redis-py with the password; redis-py with a wrong one.
    assert_eq!(cli(&p.port(), &["-a", CLIENT_PW, "get", "a"]), "2");
    assert!(cli(&p.port(), &["get", "a"]).contains("NOAUTH"));
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, password='{pw}', socket_timeout=20)\n\
         assert r.get('a') == b'2'\n\
         r3 = redis.Redis(host='127.0.0.1', port={port}, password='{pw}', protocol=3, socket_timeout=20)\n\
         assert r3.get('a') == b'2'\n\
         ps = r.pubsub()\n\
         ps.subscribe('news')\n\
         assert ps.get_message(timeout=10)['type'] == 'subscribe'\n\
         got = None\n\
         for _ in range(50):\n\
         \x20   r3.publish('news', 'hi')\n\
         \x20   got = ps.get_message(timeout=0.2)\n\
         \x20   if got: break\n\
         assert got and got['data'] == b'hi', got\n\
         r.rpush('q', 'x')\n\
         assert r.blpop('q', timeout=10) == (b'q', b'x')\n\
         try:\n\
         \x20   redis.Redis(host='127.0.0.1', port={port}, password='bad', socket_timeout=20).get('a')\n\
         \x20   print('accepted')\n\
         except redis.exceptions.AuthenticationError as e:\n\
         \x20   print('refused')\n",
        port = p.port(),
        pw = CLIENT_PW
    );
    assert_eq!(py(&script), "refused");
}

/// `--client-user`: `AUTH user password` (or HELLO … AUTH user password); `AUTH password`
/// is user `default`, refused as with Redis. Password from `FERRY_CLIENT_PASSWORD`.
fn client_user(driver: &str) {
    let r = Redis::start();
    let p = Proxy::start(
        driver,
        &r.addr(),
        None,
        None,
        &["--client-user", "app"],
        &[("FERRY_CLIENT_PASSWORD", "pw-from-env")],
    );
    let mut c = p.connect();
    c.ask(b"AUTH pw-from-env\r\n", WRONGPASS);
    c.ask(b"AUTH default pw-from-env\r\n", WRONGPASS);
    c.ask(b"AUTH app pw-from-env\r\nSET u 1\r\n", b"+OK\r\n+OK\r\n");
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, username='app', password='pw-from-env', protocol=3, socket_timeout=20)\n\
         assert r.get('u') == b'1'\n\
         print('ok')\n",
        port = p.port()
    );
    assert_eq!(py(&script), "ok");
}

/// After a proxy-side AUTH clients stay on the shared connections: 20 authenticated
/// clients, one upstream connection. Without client authentication a client's AUTH takes a
/// connection of its own (per-user ACLs keep working): the trade-off.
fn proxy_auth_takes_no_dedicated_connection(driver: &str) {
    let r = Redis::start_with(&["--requirepass", UP_PW]);
    let p = Proxy::start(
        driver,
        &r.addr(),
        Some(UP_PW),
        Some(CLIENT_PW),
        &["--redis-connections", "1", "--health-interval", "0"],
        &[],
    );
    let mut clients: Vec<Conn> = (0..20).map(|_| p.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.ask(b"AUTH client-secret\r\n", b"+OK\r\n");
        let cmd = format!("SET c{i} {i}\r\nGET c{i}\r\n");
        let v = i.to_string();
        let want = format!("+OK\r\n${}\r\n{v}\r\n", v.len());
        c.ask(cmd.as_bytes(), want.as_bytes());
    }
    assert_eq!(p.upstream_connections(), 1, "{}", p.metrics());
    // Seen from the upstream: the proxy's one connection (and redis-cli's own).
    let list = cli(&r.port.to_string(), &["-a", UP_PW, "client", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    drop(clients);

    // No client authentication at the proxy: a client's AUTH goes upstream, on a connection
    // of its own.
    let p2 = Proxy::start(
        driver,
        &r.addr(),
        None,
        None,
        &["--redis-connections", "1", "--health-interval", "0"],
        &[],
    );
    let mut c = p2.connect();
    c.ask(b"AUTH up-secret\r\nSET x 1\r\n", b"+OK\r\n+OK\r\n");
    let mut c2 = p2.connect();
    c2.ask(b"AUTH up-secret\r\nGET x\r\n", b"+OK\r\n$1\r\n1\r\n");
    assert_eq!(p2.upstream_connections(), 2, "{}", p2.metrics());
}

/// CLIENT TRACKING through the proxy: RESP3 (invalidation pushes on the tracking client's
/// own dedicated connection) and RESP2 with REDIRECT to the id `CLIENT ID` gave another
/// client (the upstream's id); a client on the shared connections has no tracking and is
/// answered as Redis answers such a client.
fn client_tracking(driver: &str) {
    let r = Redis::start_with(&["--requirepass", UP_PW]);
    let p = Proxy::start(driver, &r.addr(), Some(UP_PW), None, &[], &[]);
    let mut w = p.connect();
    // On the shared connections.
    w.ask(b"CLIENT GETREDIR\r\n", b":-1\r\n");
    w.ask(
        b"CLIENT TRACKINGINFO\r\n",
        b"*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n",
    );
    w.ask(b"CLIENT CACHING yes\r\n", b"-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n");
    w.ask(b"SET k1 a\r\nSET k2 a\r\n", b"+OK\r\n+OK\r\n");

    // RESP3: pushes on the same connection.
    let mut t = p.connect();
    t.hello(b"HELLO 3\r\n");
    t.ask(b"CLIENT TRACKING on\r\n", b"+OK\r\n");
    t.ask(b"GET k1\r\n", b"$1\r\na\r\n");
    t.ask(b"CLIENT GETREDIR\r\n", b":0\r\n");
    w.ask(b"SET k1 b\r\n", b"+OK\r\n");
    t.expect(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\nk1\r\n");
    t.ask(b"GET k1\r\n", b"$1\r\nb\r\n");

    // RESP2 with REDIRECT: CLIENT ID is the upstream's id.
    let mut a = p.connect();
    a.send(b"CLIENT ID\r\n");
    let id_line = a.line();
    let id: i64 = id_line
        .strip_prefix(':')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{id_line}"));
    a.ask(
        b"SUBSCRIBE __redis__:invalidate\r\n",
        b"*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n",
    );
    // The id is that of the upstream connection now subscribed for this client.
    eventually("the subscriber's id upstream", || {
        let list = cli(&r.port.to_string(), &["-a", UP_PW, "client", "list"]);
        list.lines()
            .any(|l| l.starts_with(&format!("id={id} ")) && l.contains(" sub=1 "))
    });
    let mut b = p.connect();
    b.ask(
        format!("CLIENT TRACKING on REDIRECT {id}\r\n").as_bytes(),
        b"+OK\r\n",
    );
    b.ask(b"GET k2\r\n", b"$1\r\na\r\n");
    w.ask(b"SET k2 b\r\n", b"+OK\r\n");
    a.expect(b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$2\r\nk2\r\n");
    b.ask(b"CLIENT GETREDIR\r\n", format!(":{id}\r\n").as_bytes());
}

/// An authenticated client whose input went "sticky" (the proxy's scanner could not
/// delimit it: an empty multibulk, or a command of 128 KiB and more arriving in pieces)
/// sends `RESET` then (S)SUBSCRIBE in one read: `RESET` un-authenticates it, so the
/// subscriptions get `-NOAUTH` (as from Redis) and nothing subscribes upstream
/// (fuzz/regressions/redis_proxy_auth/sticky-reset-then-ssubscribe).
fn sticky_client_reset_locks_again(driver: &str) {
    let r = Redis::start_with(&["--requirepass", UP_PW]);
    let p = Proxy::start(driver, &r.addr(), Some(UP_PW), Some(CLIENT_PW), &[], &[]);
    let upstream_subs = || {
        let port = r.addr().rsplit(':').next().unwrap().to_string();
        let a = cli(&port, &["-a", UP_PW, "PUBSUB", "NUMSUB", "news"]);
        let b = cli(&port, &["-a", UP_PW, "PUBSUB", "SHARDNUMSUB", "shard"]);
        format!("{a} {b}").replace('\n', " ")
    };
    let noauth3 = [NOAUTH, NOAUTH, NOAUTH].concat();
    let mut c = p.connect();
    c.ask(b"AUTH client-secret\r\n", b"+OK\r\n");
    // `*-1` is ignored (no reply) and makes the client sticky.
    c.ask(b"*-1\r\nSET a 1\r\n", b"+OK\r\n");
    let mut all = b"+RESET\r\n".to_vec();
    all.extend_from_slice(&noauth3);
    c.ask(
        b"RESET\r\n*2\r\n$10\r\nSSUBSCRIBE\r\n$5\r\nshard\r\nSUBSCRIBE news\r\nGET a\r\n",
        &all,
    );
    c.ask(b"AUTH client-secret\r\nGET a\r\n", b"+OK\r\n$1\r\n1\r\n");

    // Sticky by a big command in pieces; its end, RESET and SUBSCRIBE in one write.
    let mut c = p.connect();
    c.ask(b"AUTH client-secret\r\n", b"+OK\r\n");
    let value = vec![b'v'; 200_000];
    let mut big = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$200000\r\n".to_vec();
    big.extend_from_slice(&value);
    big.extend_from_slice(b"\r\n");
    let (head, tail) = big.split_at(150_000);
    c.send(head);
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = tail.to_vec();
    rest.extend_from_slice(
        b"RESET\r\nSUBSCRIBE news\r\n*2\r\n$10\r\nssubscribe\r\n$5\r\nshard\r\nSTRLEN big\r\n",
    );
    c.send(&rest);
    let mut all = b"+OK\r\n+RESET\r\n".to_vec();
    all.extend_from_slice(&noauth3);
    c.expect(&all);
    c.ask(
        b"AUTH client-secret\r\nSTRLEN big\r\n",
        b"+OK\r\n:200000\r\n",
    );
    assert_eq!(upstream_subs(), "news 0 shard 0");
}

per_driver!(
    upstream_requirepass_works_through_the_proxy,
    sticky_client_reset_locks_again,
    upstream_acl_user_from_env,
    wrong_upstream_password,
    client_auth_required,
    client_user,
    proxy_auth_takes_no_dedicated_connection,
    client_tracking,
);

/// One bad command line: extra flags, environment, what the error must say.
type FlagCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// Bad flags are usage errors (exit 2) that name the problem and never echo a password.
#[test]
fn credential_flags_are_checked() {
    let dir = tmp_dir("proxy-auth", "flags");
    let empty = dir.join("empty.pw");
    write_secret(&empty, b"\n");
    let empty_s = empty.to_string_lossy().into_owned();
    let cases: [FlagCase; 5] = [
        (
            &["--upstream-user", "app"],
            &[],
            "--upstream-user needs a password",
        ),
        (
            &["--client-user", "app"],
            &[],
            "--client-user needs a password",
        ),
        (
            &["--upstream-password-file", &empty_s],
            &[],
            "the password is empty",
        ),
        (
            &["--upstream-password-file", "/nonexistent/pw"],
            &[],
            "/nonexistent/pw",
        ),
        (
            &["--protocol", "http", "--client-user", "x"],
            &[("FERRY_CLIENT_PASSWORD", "hunter2")],
            "only with --protocol redis",
        ),
    ];
    for (extra, env, want) in cases {
        let mut cmd = Command::new("timeout");
        cmd.args(["20", common::BIN, "proxy", "--listen", "127.0.0.1:0"])
            .args(["--upstream", "127.0.0.1:1"])
            .env_remove("FERRY_UPSTREAM_PASSWORD")
            .env_remove("FERRY_CLIENT_PASSWORD");
        if !extra.contains(&"http") {
            cmd.args(["--protocol", "redis"]);
        }
        cmd.args(extra).envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
