//! End-to-end tests of `ferry proxy --protocol postgres` against a real PostgreSQL 15:
//! authentication (upstream SCRAM and MD5 users with the proxy's credentials, client
//! SCRAM authentication at the proxy), failures (upstream down, PostgreSQL restarted,
//! a backend terminated, garbage from a client, clients vanishing mid-transaction,
//! mid-query and mid-COPY), `/metrics` and a graceful stop. Clients are psql, psycopg 3
//! and a raw socket.
//!
//! `FERRY_PG_POOLER=pgbouncer` runs them against PgBouncer 1.18 to check the tests
//! (ferry-only surfaces, `/metrics`, flags and the exit on SIGTERM, are skipped there).
//! Two fail there by design: `client_password_scram` (PgBouncer says "SASL authentication
//! failed", not PostgreSQL's `password authentication failed for user "tester"`) and
//! `upstream_down_at_start` (PgBouncer keeps the client waiting, then FATAL 08P01
//! query_wait_timeout, where this proxy must answer 08006 or 57P03).
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::postgres::{
    error_fields, opts, psql, psql_ok, py, py_case, py_ok, setup, show, PoolOpts, Pooler, Postgres,
    Raw, APP_PW, MD5_PW, TIMED_OUT,
};
use common::{free_port, parse_metrics};

const CLIENT_PW: &str = "client-secret";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first ErrorResponse's fields among `msgs`, if any.
fn first_error(msgs: &[(u8, Vec<u8>)]) -> Option<std::collections::HashMap<char, String>> {
    msgs.iter()
        .find(|m| m.0 == b'E')
        .map(|m| error_fields(&m.1))
}

// ---------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------

/// `--upstream-user app --upstream-password-file F` (a SCRAM-SHA-256 role): a client that
/// presents no password works as `app`, with simple and extended queries, across several
/// pooled connections.
#[test]
fn upstream_scram_user() {
    let Some((pg, p)) = setup(PoolOpts {
        upstream: Some(("app", APP_PW)),
        ..opts(2)
    }) else {
        return;
    };
    assert_eq!(
        psql_ok(p.port(), "app", None, "SELECT current_user, 6 * 7"),
        "app|42"
    );
    let out = py_ok(
        60,
        p.port(),
        pg.port,
        r#"
cs = [connect(PROXY, user='app') for _ in range(4)]
for i, c in enumerate(cs):
    with c.transaction():
        assert c.execute('SELECT current_user, %s::int', (i,)).fetchone() == ('app', i)
# Two transactions open at once hold two server connections: the second SCRAM login
# reuses the keys the first derived (a wrong cache would make it fail).
a, b = cs[0], cs[1]
with a.transaction(), b.transaction():
    pids = {c.execute('SELECT pg_backend_pid()').fetchone()[0] for c in (a, b)}
assert len(pids) == 2, pids
print('ok')
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert!(pg.backends("app") >= 1);
}

/// A wrong upstream password: the client gets a FATAL error about authentication (in
/// bounded time, not a hang), and the proxy keeps running.
#[test]
fn upstream_wrong_password_is_fatal() {
    let Some((_pg, mut p)) = setup(PoolOpts {
        upstream: Some(("app", "wrong-password")),
        ..opts(2)
    }) else {
        return;
    };
    let out = psql(p.port(), "app", None, "SELECT 1");
    assert!(!out.status.success(), "{}", show(&out));
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.to_lowercase().contains("authentication"), "{err}");

    let mut raw = Raw::connect(p.port());
    raw.startup("app");
    let msgs = raw.until_ready(Duration::from_secs(30));
    let e = first_error(&msgs).unwrap_or_else(|| panic!("no ErrorResponse: {msgs:?}"));
    assert_eq!(e.get(&'S').map(String::as_str), Some("FATAL"), "{e:?}");
    assert!(e[&'M'].to_lowercase().contains("authentication"), "{e:?}");
    if p.is_ferry() {
        assert!(p.ferry().child.try_wait().unwrap().is_none(), "proxy died");
    }
}

/// An MD5 role upstream (`password_encryption = md5` when it was created) works with the
/// proxy's credentials.
#[test]
fn upstream_md5_user() {
    let Some((_pg, p)) = setup(PoolOpts {
        upstream: Some(("app_md5", MD5_PW)),
        ..opts(2)
    }) else {
        return;
    };
    assert_eq!(
        psql_ok(p.port(), "app_md5", None, "SELECT current_user"),
        "app_md5"
    );
    assert_ne!(
        psql_ok(p.port(), "app_md5", None, "SELECT count(*) FROM pg_class"),
        "0"
    );
}

/// `--client-user tester --client-password-file F`: the proxy asks for SCRAM-SHA-256;
/// psql and psycopg with the right password work; a wrong one gets
/// `password authentication failed for user "tester"` (28P01); none fails cleanly, and so
/// does another user with the right password.
#[test]
fn client_password_scram() {
    let Some((pg, p)) = setup(PoolOpts {
        client: Some(("tester", CLIENT_PW)),
        ..opts(2)
    }) else {
        return;
    };
    // The proxy offers SASL with SCRAM-SHA-256.
    let mut raw = Raw::connect(p.port());
    raw.startup("tester");
    let m = raw.read_msg(Duration::from_secs(20)).expect("auth request");
    assert_eq!(m.0, b'R', "{m:?}");
    assert_eq!(&m.1[..4], &10i32.to_be_bytes(), "not SASL: {m:?}");
    assert!(
        m.1.windows(13).any(|w| w == b"SCRAM-SHA-256"),
        "{:?}",
        String::from_utf8_lossy(&m.1)
    );
    drop(raw);

    assert_eq!(
        psql_ok(p.port(), "tester", Some(CLIENT_PW), "SELECT current_user"),
        "tester"
    );
    let out = psql(p.port(), "tester", Some("wrong"), "SELECT 1");
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    assert!(
        stderr(&out).contains("password authentication failed for user \"tester\""),
        "{}",
        show(&out)
    );
    let out = psql(p.port(), "tester", None, "SELECT 1");
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    assert!(stderr(&out).contains("password"), "{}", show(&out));
    // Another user, even with the right password, is refused.
    let out = psql(p.port(), "other", Some(CLIENT_PW), "SELECT current_user");
    assert!(!out.status.success(), "{}", show(&out));
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));

    let out = py_ok(
        60,
        p.port(),
        pg.port,
        &format!(
            r#"
c = connect(PROXY, password={CLIENT_PW:?})
assert c.execute('SELECT %s::int', (5,)).fetchone()[0] == 5
try:
    connect(PROXY, password='wrong')
    raise SystemExit('wrong password accepted')
except psycopg.OperationalError as e:
    assert 'password authentication failed for user "tester"' in str(e), str(e)
print('ok')
"#
        ),
    );
    assert_eq!(out.trim(), "ok");

    // The SQLSTATE of a failed SCRAM exchange, from a raw client (libpq does not expose it
    // for connection errors): answer the SASL request with a wrong proof.
    let mut raw = Raw::connect(p.port());
    raw.startup("tester");
    let _ = raw.read_msg(Duration::from_secs(20)).expect("auth request");
    let nonce = "rOprNGfwEbeRWgbNEkqO";
    let first = format!("n,,n=,r={nonce}");
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first.as_bytes());
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(&body);
    raw.s.write_all(&msg).unwrap();
    let cont = raw.read_msg(Duration::from_secs(20)).expect("SASLContinue");
    assert_eq!(cont.0, b'R');
    assert_eq!(&cont.1[..4], &11i32.to_be_bytes(), "not SASLContinue");
    let server_first = String::from_utf8_lossy(&cont.1[4..]).into_owned();
    let r = server_first
        .split(',')
        .find_map(|f| f.strip_prefix("r="))
        .expect("server nonce");
    let fin = format!("c=biws,r={r},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((fin.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(fin.as_bytes());
    raw.s.write_all(&msg).unwrap();
    let msgs = raw.until_ready(Duration::from_secs(20));
    let e = first_error(&msgs).unwrap_or_else(|| panic!("no ErrorResponse: {msgs:?}"));
    assert_eq!(e.get(&'C').map(String::as_str), Some("28P01"), "{e:?}");
    assert_eq!(
        e.get(&'M').map(String::as_str),
        Some("password authentication failed for user \"tester\""),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------

/// No PostgreSQL at the upstream address when clients arrive: each gets an ErrorResponse
/// with 08006 or 57P03 (or, from psql, an error message) in bounded time, not a hang.
#[test]
fn upstream_down_at_start() {
    if Postgres::start().is_none() {
        return; // only to skip consistently when PostgreSQL is absent
    }
    let dead = format!("127.0.0.1:{}", free_port());
    let p = Pooler::start(&dead, &opts(2));
    let mut raw = Raw::connect(p.port());
    raw.startup("tester");
    let msgs = raw.until_ready(Duration::from_secs(40));
    let e = first_error(&msgs).unwrap_or_else(|| panic!("no ErrorResponse: {msgs:?}"));
    let code = e.get(&'C').cloned().unwrap_or_default();
    assert!(
        ["08006", "57P03"].contains(&code.as_str()),
        "unexpected error {e:?}"
    );
    let out = psql(p.port(), "tester", None, "SELECT 1");
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    assert!(!stderr(&out).is_empty());
}

/// An upstream that accepts TCP but never answers the startup (`--connect-timeout 1s`):
/// clients get an ErrorResponse in bounded time, not a hang, and the proxy goes on.
#[test]
fn upstream_silent_at_login() {
    if Postgres::start().is_none() {
        return; // only to skip consistently when PostgreSQL is absent
    }
    let silent = common::PyServer::start(
        "import socket, time\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', 0)); s.listen(64)\n\
         print(s.getsockname()[1], flush=True)\n\
         conns = []\n\
         for _ in range(1000):\n\
         \x20   c, _ = s.accept(); conns.append(c)\n",
        &[],
    );
    let mut p = Pooler::start(
        &silent.addr(),
        &PoolOpts {
            extra: vec!["--connect-timeout".into(), "1s".into()],
            ..opts(2)
        },
    );
    let mut raw = Raw::connect(p.port());
    raw.startup("tester");
    let msgs = raw.until_ready(Duration::from_secs(60));
    let e = first_error(&msgs).unwrap_or_else(|| panic!("no ErrorResponse: {msgs:?}"));
    let code = e.get(&'C').cloned().unwrap_or_default();
    assert!(
        // A failed server login (08xxx, 57P03) or the client's wait for a server
        // connection running out first (53300): either way an answer, not a hang.
        code.starts_with("08") || code == "57P03" || code == "53300",
        "unexpected error {e:?}"
    );
    let out = psql(p.port(), "tester", None, "SELECT 1");
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    if p.is_ferry() {
        assert!(p.ferry().child.try_wait().unwrap().is_none(), "proxy died");
    }
}

/// A client message longer than `--max-message-bytes` (a 2 MiB query against 1 MiB) gets
/// FATAL 08P01 (or 54000) and its connection closed; other clients go on.
#[test]
fn oversized_message_is_refused() {
    let Some((pg, p)) = setup(PoolOpts {
        extra: vec!["--max-message-bytes".into(), "1048576".into()],
        ..opts(2)
    }) else {
        return;
    };
    if !p.is_ferry() {
        return; // a ferry flag
    }
    let other = py_ok(
        60,
        p.port(),
        pg.port,
        r#"
keep = connect(PROXY)
big = connect(PROXY)
try:
    big.execute("SELECT length(%s)", ('x' * (2 << 20),))
    raise SystemExit('a 2 MiB message went through')
except psycopg.Error as e:
    print('big:', type(e).__name__, e.sqlstate)
assert keep.execute("SELECT length(%s)", ('y' * (512 << 10),)).fetchone()[0] == 512 << 10
print('ok')
"#,
    );
    assert!(other.trim().ends_with("ok"), "{other}");
    let mut raw = Raw::connect(p.port());
    raw.startup("tester");
    let msgs = raw.until_ready(Duration::from_secs(20));
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "{msgs:?}");
    let sql = format!("SELECT '{}'", "z".repeat(2 << 20));
    raw.query(&sql);
    let msgs = raw.until_ready(Duration::from_secs(20));
    let e = first_error(&msgs).unwrap_or_else(|| panic!("no ErrorResponse: {msgs:?}"));
    let code = e.get(&'C').cloned().unwrap_or_default();
    assert!(code == "08P01" || code == "54000", "{e:?}");
    assert_eq!(psql_ok(p.port(), "tester", None, "SELECT 1"), "1");
}

/// PostgreSQL stopped while a client's query runs: that client gets an error (not a hang);
/// after PostgreSQL is back on the same port, new transactions work (the breaker closes
/// again) and keep working.
#[test]
fn postgres_restart_mid_run() {
    let Some((mut pg, p)) = setup(PoolOpts {
        extra: vec!["--breaker-open".into(), "1s".into()],
        ..opts(2)
    }) else {
        return;
    };
    assert_eq!(psql_ok(p.port(), "tester", None, "SELECT 1"), "1");
    let inflight: Child =
        common::postgres::psql_cmd(p.port(), "tester", None, &["-c", "SELECT pg_sleep(20)"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let start = Instant::now();
    while pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)'") != "1"
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "query never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.stop();
    let out = inflight.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "in-flight query survived: {}",
        show(&out)
    );
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));

    // Down: a clear error, not a hang.
    let out = psql(p.port(), "tester", None, "SELECT 1");
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));

    pg.restart();
    let start = Instant::now();
    loop {
        let out = psql(p.port(), "tester", None, "SELECT 2");
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "proxy did not recover after the restart: {}",
            show(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..10 {
        assert_eq!(
            psql_ok(
                p.port(),
                "tester",
                None,
                &format!("BEGIN; SELECT {i}; COMMIT")
            ),
            i.to_string()
        );
    }
    let out = py_ok(
        60,
        p.port(),
        pg.port,
        r#"
cs = [connect(PROXY) for _ in range(4)]
for r in range(5):
    for c in cs:
        with c.transaction():
            assert c.execute('SELECT %s::int', (r,)).fetchone()[0] == r
print('ok')
"#,
    );
    assert_eq!(out.trim(), "ok");
}

/// `pg_terminate_backend` of the server connection one client's transaction runs on: that
/// client gets an error; another client's transaction on the other connection commits;
/// new clients work.
#[test]
fn terminate_backend_affects_only_its_client() {
    let Some((pg, p)) = setup(opts(2)) else {
        return;
    };
    pg.sql("CREATE TABLE term_t (x int)");
    let out = py_ok(
        60,
        p.port(),
        pg.port,
        r#"
a, b = connect(PROXY), connect(PROXY)
a.execute('BEGIN'); pa = a.execute('SELECT pg_backend_pid()').fetchone()[0]
b.execute('BEGIN'); pb = b.execute('SELECT pg_backend_pid()').fetchone()[0]
assert pa != pb
b.execute('INSERT INTO term_t VALUES (1)')
with direct() as d:
    assert d.execute('SELECT pg_terminate_backend(%s)', (pa,)).fetchone()[0]
    for _ in range(200):
        if not d.execute('SELECT count(*) FROM pg_stat_activity WHERE pid = %s', (pa,)).fetchone()[0]:
            break
        time.sleep(0.05)
try:
    a.execute('SELECT 1')
    raise SystemExit('the terminated client went on')
except psycopg.Error as e:
    print('a got', type(e).__name__, e.sqlstate)
b.execute('INSERT INTO term_t VALUES (2)')
b.execute('COMMIT')
with direct() as d:
    assert d.execute('SELECT count(*) FROM term_t').fetchone()[0] == 2
for i in range(5):
    with connect(PROXY) as c:
        assert c.execute('SELECT %s::int', (i,)).fetchone()[0] == i
assert b.execute('SELECT 3').fetchone()[0] == 3
print('ok')
"#,
    );
    assert!(out.trim().ends_with("ok"), "{out}");
}

/// Garbage instead of a startup packet (an HTTP request, a too-short or absurd length, an
/// unknown protocol version, a startup without a user, half a packet then EOF): the client
/// gets FATAL 08P01 (or 28000 for the missing user) or a closed connection, and the proxy
/// keeps serving.
#[test]
fn garbage_startup_packet() {
    let Some((_pg, mut p)) = setup(opts(2)) else {
        return;
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("short length", vec![0, 0, 0, 2, 0, 0, 0, 0]),
        ("huge length", vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]),
        ("version 9.9", {
            let mut v = vec![0, 0, 0, 9, 0, 9, 0, 9, 0];
            v[3] = 9;
            v
        }),
        ("no user", {
            let body = b"\0\x03\0\0database\0postgres\0\0";
            let mut v = ((body.len() + 4) as i32).to_be_bytes().to_vec();
            v.extend_from_slice(body);
            v
        }),
        ("half", vec![0, 0, 0, 40, 0, 3, 0, 0, b'u', b's']),
    ];
    for (name, bytes) in cases {
        let mut raw = Raw::connect(p.port());
        raw.s.write_all(&bytes).unwrap();
        if name == "half" {
            raw.s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        if let Some(m) = raw.read_msg(Duration::from_secs(20)) {
            assert_eq!(m.0, b'E', "{name}: {m:?}");
            let e = error_fields(&m.1);
            assert_eq!(
                e.get(&'S').map(String::as_str),
                Some("FATAL"),
                "{name}: {e:?}"
            );
            let code = e.get(&'C').cloned().unwrap_or_default();
            assert!(
                ["08P01", "28000", "0A000"].contains(&code.as_str()),
                "{name}: {e:?}"
            );
            // Then the connection closes.
            assert!(raw.read_msg(Duration::from_secs(20)).is_none(), "{name}");
        }
        assert_eq!(
            psql_ok(p.port(), "tester", None, "SELECT 1"),
            "1",
            "after {name}"
        );
    }
    if p.is_ferry() {
        assert!(p.ferry().child.try_wait().unwrap().is_none(), "proxy died");
    }
}

/// A client that vanishes (process exit) in the middle of something, then the next client
/// on the same single server connection: it sees no open transaction, no leftover of the
/// dead client's work, and its own results.
fn vanish_case(script: &str) {
    let Some((pg, p)) = setup(opts(1)) else {
        return;
    };
    pg.sql("CREATE TABLE dirty_t (x int)");
    let (pg, p) = (&pg, &p);
    let out = py(60, p.port(), pg.port, script);
    // The script ends with os._exit(0) at the point where it vanishes.
    assert!(out.status.success(), "{}", show(&out));
    let out = py_ok(
        60,
        p.port(),
        pg.port,
        r#"
b = connect(PROXY)
for i in range(3):
    # A simple query (no parameters: a Bind would move statement_timestamp()).
    r = b.execute("SELECT txid_current_if_assigned() IS NULL, now() = statement_timestamp(), "
                  "(SELECT count(*) FROM dirty_t)").fetchone()
    assert r == (True, True, 0), r
    assert b.execute('SELECT %s::text', ('b-%d' % i,)).fetchone()[0] == 'b-%d' % i
    with b.transaction():
        assert b.execute('SELECT count(*) FROM dirty_t').fetchone()[0] == 0
print('ok')
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(pg.sql("SELECT count(*) FROM dirty_t"), "0");
    // ferry: no server connection is left counted as busy.
    if let Some(admin) = p.admin() {
        let start = Instant::now();
        loop {
            let active = metric_sum(
                &common::admin_metrics(admin),
                "ferry_proxy_pool_active_connections",
            );
            if active == 0.0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{active} server connections still counted active"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // At most the pool's one connection remains (a server connection closed rather than
    // cleaned lingers until its backend notices, e.g. after a running pg_sleep).
    let start = Instant::now();
    while pg.backends("tester") > 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "more backends than the pool size stay"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of a metric's samples (every label set) in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Vanishing with a transaction open (after an INSERT): rolled back, not handed on.
#[test]
fn vanish_mid_transaction() {
    vanish_case(
        r#"
a = connect(PROXY)
a.execute('BEGIN')
a.execute('INSERT INTO dirty_t VALUES (1)')
os._exit(0)
"#,
    );
}

/// Vanishing while a query runs: the next client gets its own result, not the stale one.
#[test]
fn vanish_mid_query() {
    vanish_case(
        r#"
a = connect(PROXY)
a.execute('BEGIN')
a.execute('INSERT INTO dirty_t VALUES (1)')
threading.Timer(0.5, lambda: os._exit(0)).start()
a.execute("SELECT pg_sleep(3), 'stale'")
os._exit(3)
"#,
    );
}

/// Vanishing in the middle of COPY FROM STDIN: the COPY is abandoned, nothing lands.
#[test]
fn vanish_mid_copy() {
    vanish_case(
        r#"
a = connect(PROXY)
cur = a.cursor()
cm = cur.copy('COPY dirty_t FROM STDIN')
cp = cm.__enter__()
for i in range(1000):
    cp.write('%d\n' % i)
a.pgconn.flush()
os._exit(0)
"#,
    );
}

/// Closing (Terminate) with a transaction open: rolled back, not handed on.
#[test]
fn close_mid_transaction() {
    vanish_case(
        r#"
a = connect(PROXY)
a.execute('BEGIN')
a.execute('INSERT INTO dirty_t VALUES (1)')
a.close()
"#,
    );
}

// ---------------------------------------------------------------------------------------
// Admin and lifecycle (ferry only)
// ---------------------------------------------------------------------------------------

/// `/metrics` parses with prometheus_client and, after 20 one-query psql sessions, counts
/// at least 20 requests and some connections for the PostgreSQL upstream.
#[test]
fn metrics_parse_and_count() {
    let Some((pg, p)) = setup(opts(2)) else {
        return;
    };
    let Some(admin) = p.admin() else {
        return; // PgBouncer: no /metrics
    };
    for i in 0..20 {
        psql_ok(p.port(), "tester", None, &format!("SELECT {i}"));
    }
    let text = common::admin_metrics(admin);
    let parsed = parse_metrics(&text);
    let up = format!("upstream={}", pg.addr());
    let find = |name: &str| -> f64 {
        parsed
            .iter()
            .filter(|l| {
                let nl = l.split(' ').nth(1).unwrap_or("");
                nl.starts_with(&format!("{name}{{"))
                    && nl.contains(&up)
                    && nl.contains("protocol=postgres")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let requests = find("ferry_proxy_upstream_requests_total");
    assert!(
        requests >= 20.0,
        "requests {requests}:\n{}",
        parsed.join("\n")
    );
    let conns = find("ferry_proxy_upstream_connections");
    assert!(
        (1.0..=2.0).contains(&conns),
        "upstream connections {conns}:\n{}",
        parsed.join("\n")
    );
}

/// SIGTERM with an idle client and one whose query is running: the running query
/// completes, the idle client sees FATAL 57P01 or its connection closed, and the proxy
/// exits 0 within the drain timeout.
#[test]
fn sigterm_drains() {
    let Some((pg, mut p)) = setup(PoolOpts {
        extra: vec!["--drain-timeout".into(), "5s".into()],
        ..opts(2)
    }) else {
        return;
    };
    if !p.is_ferry() {
        return; // PgBouncer's shutdown is another story (SIGINT = safe shutdown)
    }
    let mut idle = Raw::connect(p.port());
    idle.startup("tester");
    let msgs = idle.until_ready(Duration::from_secs(20));
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "{msgs:?}");
    let busy = common::postgres::psql_cmd(
        p.port(),
        "tester",
        None,
        &["-c", "SELECT pg_sleep(1), 'done'"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let start = Instant::now();
    while pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(1)%'")
        != "1"
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "query never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.ferry().signal(libc::SIGTERM);
    let out = busy.wait_with_output().unwrap();
    assert!(out.status.success(), "in-flight query cut: {}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    if let Some(m) = idle.read_msg(Duration::from_secs(30)) {
        assert_eq!(m.0, b'E', "{m:?}");
        let e = error_fields(&m.1);
        assert_eq!(e.get(&'C').map(String::as_str), Some("57P01"), "{e:?}");
    }
    let status = p.ferry().wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// Pools are per (user, database): 6 clients of each of two users through `--pool-size 2`
/// all succeed as their own user, and neither user ever has more than 2 backends.
#[test]
fn pools_are_per_user() {
    py_case(
        opts(2),
        120,
        &[],
        r#"
errs, seen = [], {'tester': 0, 'other': 0}
def client(user):
    try:
        with connect(PROXY, user=user) as c:
            for r in range(10):
                with c.transaction():
                    assert c.execute('SELECT current_user').fetchone()[0] == user
    except Exception as e:
        errs.append(repr(e))
stop = threading.Event()
def monitor():
    with direct() as d:
        for _ in range(100000):
            if stop.is_set():
                break
            for u in seen:
                n = d.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                              "AND backend_type = 'client backend'", (u,)).fetchone()[0]
                seen[u] = max(seen[u], n)
            time.sleep(0.005)
m = threading.Thread(target=monitor); m.start()
ts = [threading.Thread(target=client, args=(u,)) for u in ['tester', 'other'] * 6]
for t in ts: t.start()
for t in ts: t.join(60)
stop.set(); m.join(30)
assert not errs, errs
assert seen['tester'] <= 2 and seen['other'] <= 2, seen
assert seen['tester'] >= 1 and seen['other'] >= 1, seen
print('ok')
"#,
    );
}
