//! End-to-end tests of `ferry proxy --upstream-tls` for PostgreSQL and Redis, under each
//! driver: a PostgreSQL 15 with `ssl=on` whose `pg_hba.conf` has only `hostssl` lines (a
//! plain connection is refused, so a working one proves TLS), and a redis-server 7 listening
//! on its `tls-port` only. Certificates are made in the test (rcgen, self-signed for
//! `localhost` and `127.0.0.1`).
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::postgres::{bounded, output, pg_bin, psycopg_available, show, Postgres};
use common::{free_port, python, redis_cli, tmp_dir, Redis, Server};

#[path = "support/tls.rs"]
mod tls;
use tls::Cert;

/// `ferry proxy` on `driver`, checked to run there (no silent fallback from io_uring where
/// io_uring works).
fn proxy(proto: &str, driver: &str, upstream: &str, flags: &[&str]) -> Server {
    proxy_env(proto, driver, upstream, flags, &[])
}

fn proxy_env(
    proto: &str,
    driver: &str,
    upstream: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Server {
    Server::start_proxy(proto, driver, upstream, flags, env).0
}

/// Give `path` to the `postgres` user (PostgreSQL runs as it when the tests run as root).
fn chown_pg(path: &Path) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let out = output(Command::new("chown").arg("postgres:postgres").arg(path));
        assert!(out.status.success(), "chown: {}", show(&out));
    }
}

/// psql to `port` with a libpq connection string's extra words (`sslmode=…`), `sql` run;
/// bounded.
fn psql_conn(port: u16, extra: &str, sql: &str) -> std::process::Output {
    let conn = format!("host=127.0.0.1 port={port} user=tester dbname=postgres {extra}");
    output(
        bounded(60, pg_bin("psql"))
            .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&conn)
            .args(["-c", sql])
            .env_remove("PGSSLMODE")
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10"),
    )
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A PostgreSQL 15 speaking TLS with `cert` and taking only `hostssl` logins; checked: a
/// plain connection is refused, a TLS one works.
fn tls_postgres(cert: &Cert) -> Option<Postgres> {
    let pg = Postgres::start()?;
    let data = PathBuf::from(pg.sql("SHOW data_directory"));
    let (crt, key) = (data.join("ferry-server.crt"), data.join("ferry-server.key"));
    std::fs::copy(&cert.cert, &crt).unwrap();
    std::fs::copy(&cert.key, &key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let hba = data.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    for f in [&crt, &key, &hba] {
        chown_pg(f);
    }
    pg.sql("ALTER SYSTEM SET ssl_cert_file = 'ferry-server.crt'");
    pg.sql("ALTER SYSTEM SET ssl_key_file = 'ferry-server.key'");
    pg.sql("ALTER SYSTEM SET ssl = on");
    pg.sql("SELECT pg_reload_conf()");
    for _ in 0..200 {
        let plain = psql_conn(pg.port, "sslmode=disable", "SELECT 1");
        let tls = psql_conn(pg.port, "sslmode=require", "SELECT 1");
        if !plain.status.success() && tls.status.success() {
            assert!(show(&plain).contains("no encryption"), "{}", show(&plain));
            return Some(pg);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("postgres did not switch to TLS only: {}", pg.log());
}

/// A psycopg script (`PROXY`, `PG` and `CA` given), bounded; must print `ok`.
fn py_ok(proxy: u16, pg: u16, ca: &Path, script: &str) {
    let code = format!(
        "import sys, threading, time\nimport psycopg\nfrom psycopg import errors\n\
         PROXY, PG, CA = {proxy}, {pg}, {ca:?}\n{script}",
        ca = ca.display().to_string()
    );
    let out = output(
        bounded(90, python())
            .args(["-c", &code])
            .env("PYTHONUNBUFFERED", "1"),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "ok", "{}", show(&out));
}

/// Through the proxy (plain on the client side) to a TLS-only PostgreSQL: queries run on
/// a TLS server session (`pg_stat_ssl`), 1.5 MB each way, a transaction, an error, and a
/// cancel (psycopg's, the proxy's CancelRequest going over TLS too) ends a running query.
fn postgres_through_tls(driver: &str) {
    if !psycopg_available() {
        return;
    }
    let dir = tmp_dir("uptls-pg", driver);
    let cert = Cert::make(&dir);
    let Some(pg) = tls_postgres(&cert) else {
        return;
    };
    let ca = cert.cert.display().to_string();
    let p = proxy(
        "postgres",
        driver,
        &pg.addr(),
        &[
            "--upstream-tls",
            "--upstream-ca",
            &ca,
            "--pool-size",
            "2",
            "--health-interval",
            "0",
        ],
    );
    let port = p.addr.port();
    let out = psql_conn(
        port,
        "sslmode=disable",
        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).starts_with("t|TLSv1."), "{}", stdout(&out));
    let out = psql_conn(
        port,
        "sslmode=disable",
        "SELECT count(*), sum(length(repeat('x', g))) FROM generate_series(1, 3000) g",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "3000|4501500");

    py_ok(
        port,
        pg.port,
        &cert.cert,
        r#"
c = psycopg.connect(host='127.0.0.1', port=PROXY, user='tester', dbname='postgres',
                    sslmode='disable', connect_timeout=10, autocommit=True,
                    prepare_threshold=None)
assert c.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()').fetchone()[0]
big = 'y' * 1_500_000
assert c.execute('SELECT length(%s::text)', (big,)).fetchone()[0] == 1_500_000
assert c.execute("SELECT md5(%s::text) = md5(repeat('y', 1500000))", (big,)).fetchone()[0]
got = c.execute("SELECT repeat('z', 1500000)").fetchone()[0]
assert got == 'z' * 1_500_000
try:
    c.execute('SELECT 1/0')
    raise SystemExit('no error')
except errors.DivisionByZero:
    pass
with c.transaction():
    c.execute('CREATE TEMP TABLE IF NOT EXISTS t_up (v int)')
    c.execute('INSERT INTO t_up SELECT generate_series(1, 100)')
    assert c.execute('SELECT count(*) FROM t_up').fetchone()[0] == 100

# Cancel: once the query runs (seen directly, over TLS), cancel it through the proxy.
d = psycopg.connect(host='127.0.0.1', port=PG, user='postgres', dbname='postgres',
                    sslmode='verify-ca', sslrootcert=CA, connect_timeout=10, autocommit=True)
err = []
def run():
    try:
        c.execute('SELECT pg_sleep(60)')
        err.append('not cancelled')
    except errors.QueryCanceled:
        err.append(None)
    except Exception as e:
        err.append(repr(e))
t = threading.Thread(target=run)
t.start()
for _ in range(400):
    n = d.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                  "AND query = 'SELECT pg_sleep(60)'").fetchone()[0]
    if n == 1:
        break
    time.sleep(0.05)
assert n == 1, 'the query never ran'
for _ in range(3):
    getattr(c, 'cancel_safe', c.cancel)()
    t.join(10)
    if not t.is_alive():
        break
assert not t.is_alive(), 'not cancelled'
assert err == [None], err
assert c.execute('SELECT 41 + 1').fetchone()[0] == 42
c.close()
print('ok')
"#,
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A redis-server on its TLS port only (`--port 0`), with `cert`; `extra` arguments.
fn tls_redis(cert: &Cert, extra: &[&str]) -> Redis {
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    for _attempt in 0..5 {
        let port = free_port().to_string();
        let mut args = vec![
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &c,
            "--tls-key-file",
            &k,
            "--tls-ca-cert-file",
            &c,
            "--tls-auth-clients",
            "no",
        ];
        args.extend_from_slice(extra);
        if let Some(r) = Redis::start_on(port.parse().unwrap(), &args) {
            // TLS only: a plain PING gets no answer but a close.
            return r;
        }
    }
    panic!("redis-server with TLS did not start (built without TLS?)");
}

/// Through the proxy (plain on the client side) to a TLS-only redis-server: commands,
/// a 1 MB value both ways, pipelined commands, MULTI/EXEC and pub/sub (dedicated
/// connections), with the proxy's AUTH going over TLS too.
fn redis_through_tls(driver: &str) {
    let dir = tmp_dir("uptls-redis", driver);
    let cert = Cert::make(&dir);
    let r = tls_redis(&cert, &["--requirepass", "up-secret"]);
    // The server is TLS only: plain clients get nothing.
    assert_ne!(redis_cli(r.port, &["PING"]), "PONG");
    let ca = cert.cert.display().to_string();
    let p = proxy_env(
        "redis",
        driver,
        &r.addr(),
        &[
            "--upstream-tls",
            "--upstream-ca",
            &ca,
            "--health-interval",
            "0",
        ],
        &[("FERRY_UPSTREAM_PASSWORD", "up-secret")],
    );
    let port = p.addr.port();
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
    let script = format!(
        r#"
import redis, time
r = redis.Redis(host='127.0.0.1', port={port}, socket_timeout=20)
assert r.ping()
big = bytes(range(256)) * 4096
assert r.set('up:big', big)
assert r.get('up:big') == big
p = r.pipeline(transaction=False)
for i in range(200):
    p.set(f'up:k{{i}}', i)
    p.get(f'up:k{{i}}')
res = p.execute()
assert res[1::2] == [str(i).encode() for i in range(200)], res[:6]
tx = r.pipeline(transaction=True)
tx.delete('up:c')
tx.incr('up:c')
tx.incr('up:c')
assert tx.execute()[1:] == [1, 2]
ps = r.pubsub()
ps.subscribe('up:ch')
m = ps.get_message(timeout=10)
assert m and m['type'] == 'subscribe', m
got = None
for _ in range(100):
    if r.publish('up:ch', 'hi') == 1:
        got = ps.get_message(timeout=10)
        break
    time.sleep(0.05)
assert got and got['data'] == b'hi', got
ps.close()
print('ok')
"#
    );
    let out = output(
        bounded(90, python())
            .args(["-c", &script])
            .env("PYTHONUNBUFFERED", "1"),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "ok");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

per_driver!(postgres_through_tls, redis_through_tls);

/// `verify-full`: an upstream certificate from another CA, or for another name, is refused:
/// the client gets an error naming TLS, and the proxy goes on (it answers again); a
/// PostgreSQL without SSL (`N`) is refused too.
#[test]
fn postgres_verify_full_refusals() {
    let dir = tmp_dir("uptls-pg-bad", "x");
    let cert = Cert::make(&dir);
    let Some(pg) = tls_postgres(&cert) else {
        return;
    };
    let (ca, other) = (
        cert.cert.display().to_string(),
        cert.other_ca.display().to_string(),
    );
    let cases: [(&[&str], &str); 2] = [
        (&["--upstream-ca", &other], "TLS with the server failed"),
        (
            &["--upstream-ca", &ca, "--upstream-server-name", "db.example"],
            "TLS with the server failed",
        ),
    ];
    for (flags, want) in cases {
        let mut all = vec!["--upstream-tls", "--health-interval", "0"];
        all.extend_from_slice(flags);
        let mut p = proxy("postgres", "epoll", &pg.addr(), &all);
        for _ in 0..2 {
            let out = psql_conn(p.addr.port(), "sslmode=disable", "SELECT 1");
            assert!(!out.status.success(), "{flags:?}: {}", show(&out));
            assert!(show(&out).contains(want), "{flags:?}: {}", show(&out));
        }
        assert!(p.child.try_wait().unwrap().is_none(), "the proxy exited");
    }
    // The right CA and name: fine (the control).
    let p = proxy(
        "postgres",
        "epoll",
        &pg.addr(),
        &[
            "--upstream-tls",
            "--upstream-ca",
            &ca,
            "--upstream-server-name",
            "localhost",
            "--health-interval",
            "0",
        ],
    );
    let out = psql_conn(p.addr.port(), "sslmode=disable", "SELECT 7");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "7");
    drop((p, pg));

    // A server without TLS answers `N`: refused, not downgraded.
    let Some(plain) = Postgres::start() else {
        return;
    };
    let mut p = proxy(
        "postgres",
        "epoll",
        &plain.addr(),
        &[
            "--upstream-tls",
            "--upstream-ca",
            &ca,
            "--health-interval",
            "0",
        ],
    );
    for _ in 0..2 {
        let out = psql_conn(p.addr.port(), "sslmode=disable", "SELECT 1");
        assert!(!out.status.success(), "{}", show(&out));
        assert!(show(&out).contains("does not accept TLS"), "{}", show(&out));
    }
    assert!(p.child.try_wait().unwrap().is_none(), "the proxy exited");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis: an upstream certificate from another CA is refused (the client gets an error,
/// never a reply from the server), and the proxy goes on.
#[test]
fn redis_wrong_ca_is_refused() {
    let dir = tmp_dir("uptls-redis-bad", "x");
    let cert = Cert::make(&dir);
    let r = tls_redis(&cert, &[]);
    let other = cert.other_ca.display().to_string();
    let mut p = proxy(
        "redis",
        "epoll",
        &r.addr(),
        &[
            "--upstream-tls",
            "--upstream-ca",
            &other,
            "--health-interval",
            "0",
        ],
    );
    for _ in 0..2 {
        let got = redis_cli(p.addr.port(), &["PING"]);
        assert!(got.contains("ERR"), "{got}");
    }
    assert!(p.child.try_wait().unwrap().is_none(), "the proxy exited");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Health checks go over TLS for PostgreSQL (`SSLRequest`, `S`, handshake) and Redis (with
/// the proxy's AUTH): trusted upstreams stay up, untrusted ones are taken down.
#[test]
fn health_checks_over_tls() {
    let dir = tmp_dir("uptls-health", "x");
    let cert = Cert::make(&dir);
    let r = tls_redis(&cert, &["--requirepass", "up-secret"]);
    let pg = tls_postgres(&cert);
    let gauge = |admin| {
        common::admin_metrics(admin)
            .lines()
            .find(|l| l.starts_with("ferry_proxy_upstream_healthy{"))
            .map(|l| l.trim().ends_with(" 1"))
            .expect("healthy gauge")
    };
    let mut ups = vec![("redis", r.addr())];
    if let Some(pg) = &pg {
        ups.push(("postgres", pg.addr()));
    }
    for (proto, addr) in ups {
        let start = |ca: &Path| {
            let ca = ca.display().to_string();
            let flags = [
                "--upstream-tls",
                "--upstream-ca",
                &ca,
                "--health-interval",
                "100ms",
            ];
            let env = [("FERRY_UPSTREAM_PASSWORD", "up-secret")];
            let env: &[(&str, &str)] = if proto == "redis" { &env } else { &[] };
            Server::start_proxy(proto, "epoll", &addr, &flags, env)
        };
        let (_good, good_admin) = start(&cert.cert);
        let (_bad, bad_admin) = start(&cert.other_ca);
        let mut down = false;
        for _ in 0..200 {
            if !gauge(bad_admin) {
                down = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(down, "{proto}: an untrusted upstream stays up");
        // Several rounds later the trusted one is still up.
        std::thread::sleep(Duration::from_millis(500));
        assert!(gauge(good_admin), "{proto}: a trusted upstream went down");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The upstream TLS flags for every protocol: `--upstream-ca`/`--upstream-server-name`
/// without `--upstream-tls`, or an unusable CA file, are one line naming the flag, exit 2.
#[test]
fn upstream_tls_flags_for_every_protocol() {
    let dir = tmp_dir("uptls-flags", "x");
    let cert = Cert::make(&dir);
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a pem\n").unwrap();
    let (c, j) = (cert.cert.display().to_string(), junk.display().to_string());
    for proto in ["http", "redis", "postgres"] {
        for (args, flag) in [
            (vec!["--upstream-ca", &c], "--upstream-ca"),
            (vec!["--upstream-server-name", "db.example"], "--upstream-"),
            (vec!["--upstream-tls", "--upstream-ca", &j], "--upstream-ca"),
            (
                vec!["--upstream-tls", "--upstream-server-name", "a b"],
                "--upstream-server-name",
            ),
        ] {
            let err = common::proxy_usage_error(proto, &args, flag);
            assert!(!err.contains("only with --protocol"), "{proto}: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
