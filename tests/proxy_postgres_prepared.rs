//! End-to-end tests of protocol-level named prepared statements through `ferry proxy
//! --protocol postgres` in transaction mode (`--max-prepared-statements`, as PgBouncer
//! 1.21's `max_prepared_statements`): clients that name statements share a few server
//! connections instead of pinning one each. pgbench `-M prepared`, psycopg `prepare=True`
//! and a raw wire client (exact names, pipelines, errors) against a real PostgreSQL 15.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::time::Duration;

mod common;
use common::postgres::{
    error_fields, opts, output, pg_bin, py_ok, setup, show, Msg, PoolOpts, Pooler, Postgres, Raw,
};

const LIMIT: Duration = Duration::from_secs(20);

/// A raw extended-protocol client.
struct Ext(Raw);

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl Ext {
    fn connect(port: u16) -> Ext {
        let mut r = Raw::connect(port);
        r.startup("tester");
        let got = r.until_ready(LIMIT);
        assert_eq!(got.last().map(|m| m.0), Some(b'Z'), "login: {got:?}");
        Ext(r)
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.0.s.write_all(bytes).unwrap();
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = cstr(name);
        b.extend(cstr(sql));
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(b'P', &b)
    }

    /// Bind (unnamed portal, no parameters, text results) + Execute.
    fn bind_exec(name: &str) -> Vec<u8> {
        let mut b = cstr("");
        b.extend(cstr(name));
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut m = msg(b'B', &b);
        let mut e = cstr("");
        e.extend_from_slice(&0i32.to_be_bytes());
        m.extend(msg(b'E', &e));
        m
    }

    fn close(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend(cstr(name));
        msg(b'C', &b)
    }

    fn describe(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend(cstr(name));
        msg(b'D', &b)
    }

    fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    /// Messages up to ReadyForQuery (errors included).
    fn until_z(&mut self) -> Vec<Msg> {
        let mut v = Vec::new();
        loop {
            let m = self.0.read_msg(LIMIT).expect("connection closed");
            let z = m.0 == b'Z';
            v.push(m);
            if z {
                return v;
            }
        }
    }

    /// Send `bytes` (ending with a Sync) and return the replies' tags and the text of the
    /// single-column DataRows.
    fn run(&mut self, bytes: &[u8]) -> (String, Vec<String>) {
        self.send(bytes);
        let got = self.until_z();
        let tags: String = got.iter().map(|m| m.0 as char).collect();
        let rows = got
            .iter()
            .filter(|m| m.0 == b'D')
            .map(|m| String::from_utf8_lossy(&m.1[6..]).into_owned())
            .collect();
        (tags, rows)
    }

    fn error(&mut self, bytes: &[u8]) -> std::collections::HashMap<char, String> {
        self.send(bytes);
        let got = self.until_z();
        let e = got
            .iter()
            .find(|m| m.0 == b'E')
            .unwrap_or_else(|| panic!("no error in {got:?}"));
        error_fields(&e.1)
    }
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn prepared_pool(size: u32, extra: &[&str]) -> Option<(Postgres, Pooler)> {
    setup(PoolOpts {
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..opts(size)
    })
}

/// `pgbench -M prepared -c 16 -t 200` through 2 server connections: every transaction
/// commits, none fails, PostgreSQL sees at most 2 backends.
#[test]
fn pgbench_prepared_through_a_pool_of_2() {
    let Some((pg, p)) = prepared_pool(2, &[]) else {
        return;
    };
    pg.pgbench_init();
    let out = output(
        common::postgres::bounded(240, pg_bin("pgbench"))
            // A thread per client: pgbench prepares with a blocking PQprepare, which would
            // stall a thread's other clients (holding the 2 connections mid-transaction).
            .args(["-n", "-c", "16", "-j", "16", "-t", "200", "-M", "prepared"])
            .args(["-h", "127.0.0.1", "-p", &p.port().to_string()])
            .args(["-U", "tester", "postgres"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "pgbench: {}", show(&out));
    assert!(
        text.contains("number of transactions actually processed: 3200/3200"),
        "{}",
        show(&out)
    );
    assert!(
        text.contains("number of failed transactions: 0 "),
        "{}",
        show(&out)
    );
    assert!(pg.backends("tester") <= 2);
}

/// psycopg with `prepare=True` (named statements from the first execution) from 20
/// threads on 2 server connections, all 20 sessions open at once.
#[test]
fn psycopg_prepared_from_20_clients_on_2_connections() {
    let Some((pg, p)) = prepared_pool(2, &[]) else {
        return;
    };
    let out = py_ok(
        120,
        p.port(),
        pg.port,
        r#"
errs = []
# Every client keeps its session (and statements) while the others run: with pinning the
# third would wait for a connection forever.
bar = threading.Barrier(20, timeout=60)
def work(k):
    try:
        # prepare=True needs a threshold (the prelude's None turns it off).
        c = connect(PROXY, prepare_threshold=1000)
        for i in range(30):
            if i == 1:
                bar.wait()
            r = c.execute("SELECT %s::int + %s::int", [k, i], prepare=True).fetchone()[0]
            assert r == k + i, (r, k, i)
            r = c.execute("SELECT %s::text || 'x'", [str(i)], prepare=True).fetchone()[0]
            assert r == str(i) + 'x', r
        assert len(c._prepared._names) == 2, c._prepared._names
        c.close()
    except Exception as e:
        errs.append(repr(e))
ts = [threading.Thread(target=work, args=(k,)) for k in range(20)]
for t in ts: t.start()
for t in ts: t.join(100)
assert not errs, errs[:3]
print("ok")
"#,
    );
    assert!(out.contains("ok"), "{out}");
    assert!(pg.backends("tester") <= 2);
}

/// Two clients name different statements `s1` on the one server connection: each gets
/// its own result, again and again.
#[test]
fn the_same_name_in_two_clients_is_two_statements() {
    let Some((_pg, p)) = prepared_pool(1, &[]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let mut b = Ext::connect(p.port());
    let (t, _) = a.run(&cat(&[Ext::parse("s1", "SELECT 'a'"), Ext::sync()]));
    assert_eq!(t, "1Z");
    let (t, _) = b.run(&cat(&[Ext::parse("s1", "SELECT 'b'"), Ext::sync()]));
    assert_eq!(t, "1Z");
    for _ in 0..5 {
        let (t, rows) = a.run(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
        assert_eq!((t.as_str(), rows), ("2DCZ", vec!["a".to_string()]));
        let (t, rows) = b.run(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
        assert_eq!((t.as_str(), rows), ("2DCZ", vec!["b".to_string()]));
    }
    // Describe answers with the parameter and row descriptions.
    let (t, _) = a.run(&cat(&[Ext::describe("s1"), Ext::sync()]));
    assert_eq!(t, "tTZ");
}

/// Close forgets the client's statement (CloseComplete in order); the name then does not
/// exist for it, and a new Parse of the name takes the new text. All in one pipeline too.
#[test]
fn close_then_parse_again() {
    let Some((_pg, p)) = prepared_pool(1, &[]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let (t, rows) = a.run(&cat(&[
        Ext::parse("s1", "SELECT 1"),
        Ext::bind_exec("s1"),
        Ext::close("s1"),
        Ext::sync(),
    ]));
    assert_eq!((t.as_str(), rows), ("12DC3Z", vec!["1".to_string()]));
    let e = a.error(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!(e[&'C'], "26000", "{e:?}");
    let (t, rows) = a.run(&cat(&[
        Ext::parse("s1", "SELECT 2"),
        Ext::bind_exec("s1"),
        Ext::sync(),
    ]));
    assert_eq!((t.as_str(), rows), ("12DCZ", vec!["2".to_string()]));
    // The same text as another client's: made ParseComplete, in order in a pipeline.
    let mut b = Ext::connect(p.port());
    let (t, rows) = b.run(&cat(&[
        Ext::bind_exec("nope"),
        Ext::sync(),
        Ext::parse("x", "SELECT 2"),
        Ext::bind_exec("x"),
        Ext::close("x"),
        Ext::parse("x", "SELECT 2"),
        Ext::sync(),
    ]));
    assert_eq!(t, "EZ", "{rows:?}");
    let (t, rows) = b.run(&[]);
    assert_eq!((t.as_str(), rows), ("12DC31Z", vec!["2".to_string()]));
}

/// The statement must be prepared again on another server connection, after its table
/// was dropped: the client gets the error for its Bind, the session goes on, and once the
/// table is back the statement works.
#[test]
fn a_failing_injected_parse_is_the_clients_error() {
    let Some((pg, p)) = prepared_pool(2, &[]) else {
        return;
    };
    pg.sql("CREATE TABLE gone (x int); INSERT INTO gone VALUES (7); GRANT ALL ON gone TO tester");
    let mut a = Ext::connect(p.port());
    let (t, rows) = a.run(&cat(&[
        Ext::parse("s", "SELECT x FROM gone"),
        Ext::bind_exec("s"),
        Ext::sync(),
    ]));
    assert_eq!((t.as_str(), rows), ("12DCZ", vec!["7".to_string()]));
    // Another client holds that (only) server connection in a transaction: the next Bind
    // goes to a new one, where the statement must be parsed again.
    let mut b = Ext::connect(p.port());
    b.0.query("BEGIN");
    b.until_z();
    pg.sql("DROP TABLE gone");
    let e = a.error(&cat(&[Ext::bind_exec("s"), Ext::sync()]));
    assert_eq!(e[&'C'], "42P01", "{e:?}");
    // In a pipeline with more after the Sync: the reply stream stays in order.
    let (t, rows) = a.run(&cat(&[
        Ext::bind_exec("s"),
        Ext::sync(),
        Ext::parse("", "SELECT 5"),
        Ext::bind_exec(""),
        Ext::sync(),
    ]));
    assert_eq!(t, "EZ", "{rows:?}");
    let (t, rows) = a.run(&[]);
    assert_eq!((t.as_str(), rows), ("12DCZ", vec!["5".to_string()]));
    pg.sql("CREATE TABLE gone (x int); INSERT INTO gone VALUES (8); GRANT ALL ON gone TO tester");
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["8".to_string()]));
    b.0.query("COMMIT");
    b.until_z();
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["8".to_string()]));
    assert!(pg.backends("tester") <= 2);
}

/// `--max-prepared-statements 2`: five statements from five clients on one server
/// connection (closed and parsed again as they take turns), and five from one client
/// (beyond two it pins): every result is right.
#[test]
fn eviction_keeps_results_right() {
    let Some((pg, p)) = prepared_pool(1, &["--max-prepared-statements", "2"]) else {
        return;
    };
    let mut cs: Vec<Ext> = (0..5).map(|_| Ext::connect(p.port())).collect();
    for (k, c) in cs.iter_mut().enumerate() {
        let (t, _) = c.run(&cat(&[
            Ext::parse("q", &format!("SELECT {k}")),
            Ext::sync(),
        ]));
        assert_eq!(t, "1Z");
    }
    for round in 0..4 {
        for (k, c) in cs.iter_mut().enumerate().rev() {
            let (t, rows) = c.run(&cat(&[Ext::bind_exec("q"), Ext::sync()]));
            assert_eq!((t.as_str(), rows), ("2DCZ", vec![k.to_string()]), "{round}");
        }
    }
    drop(cs);
    let mut one = Ext::connect(p.port());
    let mut all = Vec::new();
    for k in 0..5 {
        all.push(Ext::parse(&format!("s{k}"), &format!("SELECT {k} + 100")));
    }
    for k in [4, 0, 3, 1, 2, 0] {
        all.push(Ext::bind_exec(&format!("s{k}")));
    }
    all.push(Ext::sync());
    let (t, rows) = one.run(&all.concat());
    assert_eq!(t, "11111".to_string() + &"2DC".repeat(6) + "Z");
    assert_eq!(rows, ["104", "100", "103", "101", "102", "100"]);
    assert!(pg.backends("tester") <= 1);
}

/// `--max-prepared-statements 0`: a named statement pins its client (today's behaviour):
/// with one server connection another client waits and gets 53300.
#[test]
fn zero_keeps_pinning() {
    let Some((_pg, p)) = prepared_pool(
        1,
        &[
            "--max-prepared-statements",
            "0",
            "--pool-wait-timeout",
            "1s",
        ],
    ) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let (t, _) = a.run(&cat(&[Ext::parse("s1", "SELECT 1"), Ext::sync()]));
    assert_eq!(t, "1Z");
    let mut b = Ext::connect(p.port());
    b.0.query("SELECT 1");
    let got = b.until_z();
    let e = got.iter().find(|m| m.0 == b'E').expect("an error");
    assert_eq!(error_fields(&e.1)[&'C'], "53300");
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["1".to_string()]));
}

/// With named statements on (the default) the same two clients share the connection.
#[test]
fn named_statements_do_not_pin() {
    let Some((_pg, p)) = prepared_pool(1, &["--pool-wait-timeout", "5s"]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let (t, _) = a.run(&cat(&[Ext::parse("s1", "SELECT 1"), Ext::sync()]));
    assert_eq!(t, "1Z");
    let mut b = Ext::connect(p.port());
    let (t, rows) = b.run(&cat(&[
        Ext::parse("s1", "SELECT 2"),
        Ext::bind_exec("s1"),
        Ext::sync(),
    ]));
    assert_eq!((t.as_str(), rows), ("12DCZ", vec!["2".to_string()]));
    // DEALLOCATE ALL clears the client's names (and pins it, as SQL-level statements do).
    a.0.query("DEALLOCATE ALL");
    a.until_z();
    let e = a.error(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!(e[&'C'], "26000", "{e:?}");
}

/// The tags of `got` and the fields of its first ErrorResponse.
fn with_error(got: &[Msg]) -> (String, std::collections::HashMap<char, String>) {
    let tags = got.iter().map(|m| m.0 as char).collect();
    let e = got
        .iter()
        .find(|m| m.0 == b'E')
        .map(|m| error_fields(&m.1))
        .unwrap_or_default();
    (tags, e)
}

/// A Parse of a name the client has is PostgreSQL's 42P05 `prepared statement "s1"
/// already exists`, in order with the other replies; the rest up to the Sync is skipped
/// (the Bind does not run) and the old statement stays.
#[test]
fn a_parse_of_a_name_the_client_has_is_42p05() {
    let Some((_pg, p)) = prepared_pool(1, &[]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let (t, _) = a.run(&cat(&[Ext::parse("s1", "SELECT 1"), Ext::sync()]));
    assert_eq!(t, "1Z");
    a.send(&cat(&[
        Ext::parse("", "SELECT 0"),
        Ext::parse("s1", "SELECT 2"),
        Ext::bind_exec("s1"),
        Ext::parse("s9", "SELECT 9"),
        Ext::sync(),
    ]));
    let (t, e) = with_error(&a.until_z());
    assert_eq!(t, "1EZ");
    assert_eq!(e[&'C'], "42P05", "{e:?}");
    assert_eq!(e[&'M'], "prepared statement \"s1\" already exists");
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["1".to_string()]));
    let e = a.error(&cat(&[Ext::bind_exec("s9"), Ext::sync()]));
    assert_eq!(e[&'C'], "26000", "skipped after the error: {e:?}");
    // Parsed in the same group: the first stays, the second is the error.
    let (t, _) = a.run(&cat(&[
        Ext::parse("s2", "SELECT 3"),
        Ext::parse("s2", "SELECT 4"),
        Ext::sync(),
    ]));
    assert_eq!(t, "1EZ");
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s2"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["3".to_string()]));
}

/// A Parse the server rejects (a syntax error, an unknown table) leaves no name: a Bind of
/// it is 26000, as PostgreSQL says, also in the same pipeline after a Sync; a Close
/// skipped after an error leaves the statement; a Parse skipped after one leaves no name.
#[test]
fn a_rejected_parse_leaves_no_name() {
    let Some((_pg, p)) = prepared_pool(1, &[]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let e = a.error(&cat(&[Ext::parse("bad", "SELEC 1"), Ext::sync()]));
    assert_eq!(e[&'C'], "42601", "{e:?}");
    let e = a.error(&cat(&[Ext::bind_exec("bad"), Ext::sync()]));
    assert_eq!(e[&'C'], "26000", "{e:?}");
    let e = a.error(&cat(&[
        Ext::parse("t", "SELECT * FROM no_such_table"),
        Ext::sync(),
    ]));
    assert_eq!(e[&'C'], "42P01", "{e:?}");
    // Pipelined: the Bind after the Sync waits for the Parse's outcome.
    a.send(&cat(&[
        Ext::parse("t", "SELECT * FROM no_such_table"),
        Ext::sync(),
        Ext::bind_exec("t"),
        Ext::sync(),
    ]));
    let (t, e) = with_error(&a.until_z());
    assert_eq!((t.as_str(), e[&'C'].as_str()), ("EZ", "42P01"));
    let (t, e) = with_error(&a.until_z());
    assert_eq!((t.as_str(), e[&'C'].as_str()), ("EZ", "26000"));
    // The name is free: a good Parse takes it.
    let (t, rows) = a.run(&cat(&[
        Ext::parse("bad", "SELECT 9"),
        Ext::bind_exec("bad"),
        Ext::sync(),
    ]));
    assert_eq!((t.as_str(), rows), ("12DCZ", vec!["9".to_string()]));
    // Skipped after an error: the Close (the statement stays), the Parse (no name).
    let (t, _) = a.run(&cat(&[
        Ext::bind_exec("nope"),
        Ext::close("bad"),
        Ext::parse("later", "SELECT 10"),
        Ext::sync(),
    ]));
    assert_eq!(t, "EZ");
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("bad"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["9".to_string()]));
    let e = a.error(&cat(&[Ext::bind_exec("later"), Ext::sync()]));
    assert_eq!(e[&'C'], "26000", "{e:?}");
}

/// The proxy's server names are not `ferry_s<N>`: another client's SQL-level `EXECUTE` or
/// `DEALLOCATE` of such a name finds nothing. A client that reads the real name in
/// `pg_prepared_statements` and deallocates it there only makes the proxy prepare it again.
#[test]
fn server_statement_names_are_unguessable() {
    let Some((_pg, p)) = prepared_pool(1, &[]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let (t, rows) = a.run(&cat(&[
        Ext::parse("s1", "SELECT 41"),
        Ext::bind_exec("s1"),
        Ext::sync(),
    ]));
    assert_eq!((t.as_str(), rows), ("12DCZ", vec!["41".to_string()]));
    let mut b = Ext::connect(p.port());
    for sql in [
        "EXECUTE ferry_s1",
        "DEALLOCATE ferry_s1",
        "EXECUTE \"ferry_s1\"",
    ] {
        b.0.query(sql);
        let (t, e) = with_error(&b.until_z());
        assert_eq!((t.as_str(), e[&'C'].as_str()), ("EZ", "26000"), "{sql}");
    }
    drop(b);
    // b's DEALLOCATE pinned it: its server connection was reset when it left. Prepared
    // again, the client that holds the server connection may see the name.
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["41".to_string()]));
    a.0.query("SELECT name FROM pg_prepared_statements");
    let got = a.until_z();
    let names: Vec<String> = got
        .iter()
        .filter(|m| m.0 == b'D')
        .map(|m| String::from_utf8_lossy(&m.1[6..]).into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let n = &names[0];
    let parts: Vec<&str> = n.split('_').collect();
    assert!(
        parts.len() == 4
            && parts[0] == "ferry"
            && parts[1].len() == 16
            && parts[1].bytes().all(|c| c.is_ascii_hexdigit())
            && parts[2..].iter().all(|p| p.parse::<u64>().is_ok()),
        "{n}"
    );
    a.0.query(&format!("DEALLOCATE {n}"));
    let (t, _) = with_error(&a.until_z());
    assert_eq!(t, "CZ");
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["41".to_string()]));
}

/// `DEALLOCATE name` and `DEALLOCATE ALL` of a client's own statements affect only its
/// names (another client's identical statement goes on), are answered as PostgreSQL does
/// (`DEALLOCATE` / `DEALLOCATE ALL`; 25P02 in a failed transaction) and do not pin; an
/// SQL-level `DEALLOCATE` of another name leaves them; a `DEALLOCATE ALL` in a Parse text
/// makes the proxy prepare its statements again.
#[test]
fn deallocate_affects_only_the_clients_names() {
    let Some((_pg, p)) = prepared_pool(1, &["--pool-wait-timeout", "5s"]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let mut b = Ext::connect(p.port());
    for c in [&mut a, &mut b] {
        let (t, _) = c.run(&cat(&[Ext::parse("s1", "SELECT 1"), Ext::sync()]));
        assert_eq!(t, "1Z");
    }
    a.0.query("DEALLOCATE S1");
    let got = a.until_z();
    assert_eq!(got.iter().map(|m| m.0 as char).collect::<String>(), "CZ");
    assert_eq!(&got[0].1[..], b"DEALLOCATE\0");
    let e = a.error(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!(e[&'C'], "26000", "{e:?}");
    let (t, rows) = b.run(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["1".to_string()]));
    let (t, _) = a.run(&cat(&[
        Ext::parse("s2", "SELECT 1"),
        Ext::parse("s3", "SELECT 3"),
        Ext::sync(),
    ]));
    assert_eq!(t, "11Z");
    a.0.query("deallocate prepare all;");
    let got = a.until_z();
    assert_eq!(&got[0].1[..], b"DEALLOCATE ALL\0", "{got:?}");
    for n in ["s2", "s3"] {
        let e = a.error(&cat(&[Ext::bind_exec(n), Ext::sync()]));
        assert_eq!(e[&'C'], "26000", "{n}: {e:?}");
    }
    // Not pinned: b gets the one server connection.
    let (t, rows) = b.run(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["1".to_string()]));
    // In a failed transaction: 25P02, and the statement stays.
    let (t, _) = a.run(&cat(&[Ext::parse("s4", "SELECT 4"), Ext::sync()]));
    assert_eq!(t, "1Z");
    a.0.query("BEGIN");
    a.until_z();
    a.0.query("SELECT 1/0");
    a.until_z();
    a.0.query("DEALLOCATE s4");
    let (t, e) = with_error(&a.until_z());
    assert_eq!((t.as_str(), e[&'C'].as_str()), ("EZ", "25P02"));
    a.0.query("ROLLBACK");
    a.until_z();
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s4"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["4".to_string()]));
    // An SQL-level statement of its own (it pins a), deallocated by name: a's protocol
    // statements stay (the proxy closes and parses them again, in case).
    a.0.query("PREPARE foo AS SELECT 7");
    a.until_z();
    a.0.query("DEALLOCATE foo");
    let (t, _) = with_error(&a.until_z());
    assert_eq!(t, "CZ");
    let (t, rows) = a.run(&cat(&[Ext::bind_exec("s4"), Ext::sync()]));
    assert_eq!((t.as_str(), rows), ("2DCZ", vec!["4".to_string()]));
    // DEALLOCATE ALL in a Parse text: the server's statements are gone, the proxy
    // prepares them again.
    let (t, _) = a.run(&cat(&[
        Ext::parse("", "DEALLOCATE ALL"),
        Ext::bind_exec(""),
        Ext::sync(),
    ]));
    assert_eq!(t, "12CZ");
    let e = a.error(&cat(&[Ext::bind_exec("s4"), Ext::sync()]));
    assert_eq!(e[&'C'], "26000", "{e:?}");
    let (t, rows) = a.run(&cat(&[
        Ext::parse("s5", "SELECT 1"),
        Ext::bind_exec("s5"),
        Ext::sync(),
    ]));
    assert_eq!((t.as_str(), rows), ("12DCZ", vec!["1".to_string()]));
}

/// A named Parse without the NUL after its name (malformed) goes to the server as it is
/// (and pins, as a named Parse the proxy does not keep), which refuses it; the proxy (which
/// once panicked on it) serves this client and others on.
#[test]
fn a_malformed_named_parse_is_the_servers_error() {
    let Some((_pg, p)) = prepared_pool(2, &[]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    a.send(&cat(&[msg(b'P', b"s1"), Ext::sync()]));
    let (t, e) = with_error(&a.until_z());
    assert_eq!((t.as_str(), e[&'C'].as_str()), ("EZ", "08P01"), "{e:?}");
    let (t, rows) = a.run(&cat(&[
        Ext::parse("s1", "SELECT 1"),
        Ext::bind_exec("s1"),
        Ext::sync(),
    ]));
    assert_eq!((t.as_str(), rows), ("12DCZ", vec!["1".to_string()]));
    let mut b = Ext::connect(p.port());
    b.send(&cat(&[Ext::parse("s1", "SELECT 2"), Ext::sync()]));
    let (t, e) = with_error(&b.until_z());
    assert_eq!(t, "1Z", "{e:?}");
}

/// One pipeline, two Sync groups: the first fails before the Parse the proxy injects for
/// its Bind (so the server skips it), the second binds the same statement, sent before the
/// error came back. The proxy does not count on the skipped Parse: the second group's
/// result is right (it once got `26000` for the proxy's own statement name); the statement
/// it evicted, whose Close was skipped too, works for its client after.
#[test]
fn a_later_group_does_not_count_on_a_skipped_injected_parse() {
    let Some((_pg, p)) = prepared_pool(1, &["--max-prepared-statements", "1"]) else {
        return;
    };
    let mut a = Ext::connect(p.port());
    let mut b = Ext::connect(p.port());
    let (t, _) = a.run(&cat(&[Ext::parse("s1", "SELECT 11"), Ext::sync()]));
    assert_eq!(t, "1Z");
    // b's statement takes the server connection's only place: a's is closed there.
    let (t, _) = b.run(&cat(&[Ext::parse("t", "SELECT 12"), Ext::sync()]));
    assert_eq!(t, "1Z");
    a.send(&cat(&[
        Ext::bind_exec("nope"),
        Ext::bind_exec("s1"),
        Ext::sync(),
        Ext::bind_exec("s1"),
        Ext::sync(),
    ]));
    let (t, e) = with_error(&a.until_z());
    assert_eq!((t.as_str(), e[&'C'].as_str()), ("EZ", "26000"));
    let got = a.until_z();
    let (t, e) = with_error(&got);
    assert_eq!(t, "2DCZ", "{e:?}");
    for _ in 0..2 {
        let (t, rows) = b.run(&cat(&[Ext::bind_exec("t"), Ext::sync()]));
        assert_eq!((t.as_str(), rows), ("2DCZ", vec!["12".to_string()]));
        a.send(&cat(&[Ext::bind_exec("s1"), Ext::sync()]));
        let (t, e) = with_error(&a.until_z());
        assert_eq!(t, "2DCZ", "{e:?}");
    }
}
