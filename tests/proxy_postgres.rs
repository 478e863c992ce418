//! End-to-end tests of `ferry proxy --protocol postgres` (a PgBouncer-class pooling proxy)
//! against a real PostgreSQL 15: the wire protocol's surfaces (SSLRequest, simple and
//! extended queries, pipelining, COPY, large results, CancelRequest), transaction pooling
//! (many clients on a few server connections, a transaction on one connection) and session
//! state (pinned to its client, never leaked to another, reset before reuse). Clients are
//! psql, pgbench, psycopg 3 and a raw socket.
//!
//! `FERRY_PG_POOLER=pgbouncer` runs the same tests against PgBouncer 1.18 in transaction
//! mode to check the tests themselves. There the `state_*` tests and `pgbench_modes`
//! (`-M prepared`) fail by design: PgBouncer's transaction mode hands a client's `SET`,
//! `PREPARE`, named statements, `LISTEN`, temp tables and advisory locks to whichever client
//! gets the connection next, and loses them for their owner. That is what this proxy must
//! get right. Everything else passes there.
//!
//! `FERRY_BIN=PATH` runs them against another `ferry` build.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::Write;
use std::time::Duration;

mod common;
use common::postgres::{
    opts, output, pg_bin, psql_cmd, psql_ok, psycopg_available, py_case, py_ok, setup, show,
    PoolOpts, Pooler, Postgres, Raw, TIMED_OUT,
};
use common::tmp_dir;

/// An SSLRequest is answered `N` (no TLS at the proxy); psql's default `sslmode=prefer` then
/// carries on in plaintext, and `sslmode=require` fails with a message about SSL.
#[test]
fn ssl_request_answered_n() {
    let Some((_pg, p)) = setup(opts(2)) else {
        return;
    };
    let mut raw = Raw::connect(p.port());
    raw.s
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .unwrap();
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut raw.s, &mut b).unwrap();
    assert_eq!(&b, b"N");
    // The same connection goes on with a plaintext startup.
    raw.startup("tester");
    let msgs = raw.until_ready(Duration::from_secs(20));
    assert_eq!(
        msgs.last().map(|m| m.0),
        Some(b'Z'),
        "no ReadyForQuery after SSLRequest+startup: {msgs:?}"
    );

    let out = output(
        psql_cmd(p.port(), "tester", None, &["-c", "SELECT 40 + 2"]).env("PGSSLMODE", "prefer"),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    let out =
        output(psql_cmd(p.port(), "tester", None, &["-c", "SELECT 1"]).env("PGSSLMODE", "require"));
    assert!(
        !out.status.success(),
        "sslmode=require succeeded: {}",
        show(&out)
    );
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SSL"), "{err}");
}

/// Simple queries (psql) and the extended protocol with parameters (psycopg's unnamed
/// statements), text and binary results, NULLs, many rows, errors that leave the
/// connection usable, a 10 MiB message each way, NOTICEs and ParameterStatus.
#[test]
fn simple_and_extended_queries() {
    let Some((pg, p)) = setup(opts(2)) else {
        return;
    };
    assert_eq!(psql_ok(p.port(), "tester", None, "SELECT 40 + 2"), "42");
    assert_eq!(
        psql_ok(
            p.port(),
            "tester",
            None,
            "SELECT current_user, current_database()"
        ),
        "tester|postgres"
    );
    let out = py_ok(
        60,
        p.port(),
        pg.port,
        r#"
c = connect(PROXY)
assert c.execute('SELECT %s::int + %s', (40, 2)).fetchone()[0] == 42
assert c.execute('SELECT %s, %s::text IS NULL', ('héllo', None)).fetchone() == ('héllo', True)
cur = c.cursor(binary=True)
assert cur.execute('SELECT %s::bigint * 2', (2**40,)).fetchone()[0] == 2**41
rows = c.execute('SELECT g, md5(g::text) FROM generate_series(1, %s) g', (5000,)).fetchall()
assert len(rows) == 5000 and rows[-1][0] == 5000
try:
    c.execute('SELECT %s::int', ('not a number',))
    raise SystemExit('no error')
except errors.InvalidTextRepresentation as e:
    assert e.sqlstate == '22P02'
try:
    c.execute('SELECT * FROM no_such_table')
    raise SystemExit('no error')
except errors.UndefinedTable:
    pass
# Several statements in one simple Query.
cur = c.cursor()
cur.execute('SELECT 1; SELECT 2')
assert cur.fetchone()[0] == 1 and cur.nextset() and cur.fetchone()[0] == 2
assert c.execute('SELECT 7').fetchone()[0] == 7
# One 10 MiB message each way (a Bind parameter, a DataRow).
blob = os.urandom(10 << 20)
got = c.execute('SELECT %s::bytea', (blob,)).fetchone()[0]
assert got == blob
# Notices and ParameterStatus changes reach the client.
notices = []
c.add_notice_handler(lambda d: notices.append(d.message_primary))
c.execute("DO $$ BEGIN RAISE NOTICE 'hello-notice'; END $$")
assert notices == ['hello-notice'], notices
c.execute("SET TimeZone = 'Asia/Tokyo'")
assert c.info.parameter_status('TimeZone') == 'Asia/Tokyo', c.info.parameter_status('TimeZone')
print('ok')
"#,
    );
    assert_eq!(out.trim(), "ok");
}

/// Transaction pooling: 50 concurrent psycopg clients, 5 transactions each, through
/// `--pool-size 2` (one worker): all succeed, every transaction runs on one backend, and
/// PostgreSQL never sees more than 2 backends for the user.
fn transaction_pooling_caps_backends(driver: &str) {
    let o = PoolOpts {
        driver: Some(driver.to_string()),
        ..opts(2)
    };
    let Some((pg, p)) = setup(o) else {
        return;
    };
    pg.sql("CREATE TABLE pool_t (client int, round int)");
    let out = py_ok(
        240,
        p.port(),
        pg.port,
        r#"
N, ROUNDS = 50, 5
errs, pids, lock = [], set(), threading.Lock()
barrier = threading.Barrier(N, timeout=60)
def client(i):
    try:
        with connect(PROXY) as c:
            barrier.wait()
            for r in range(ROUNDS):
                with c.transaction():
                    p1 = c.execute('SELECT pg_backend_pid()').fetchone()[0]
                    c.execute('INSERT INTO pool_t VALUES (%s, %s)', (i, r))
                    p2 = c.execute('SELECT pg_backend_pid()').fetchone()[0]
                    assert p1 == p2, (p1, p2)
                with lock:
                    pids.add(p1)
    except Exception as e:
        errs.append(repr(e))
stop = threading.Event()
seen = [0]
def monitor():
    with direct() as d:
        for _ in range(100000):
            if stop.is_set():
                break
            n = d.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'tester' "
                          "AND backend_type = 'client backend'").fetchone()[0]
            seen[0] = max(seen[0], n)
            time.sleep(0.005)
m = threading.Thread(target=monitor); m.start()
ts = [threading.Thread(target=client, args=(i,)) for i in range(N)]
for t in ts: t.start()
for t in ts: t.join(180)
stop.set(); m.join(30)
assert not any(t.is_alive() for t in ts), 'clients stuck'
assert not errs, errs[:5]
with direct() as d:
    assert d.execute('SELECT count(*) FROM pool_t').fetchone()[0] == N * ROUNDS
assert len(pids) <= 2, pids
assert seen[0] <= 2, seen[0]
print(len(pids), seen[0])
"#,
    );
    eprintln!("backends used, most seen: {}", out.trim());
    assert!(pg.backends("tester") <= 2);
}

/// `pgbench -c 8 -t 200` in each query mode completes with no failed transaction: simple
/// and extended through 3 server connections, prepared (named statements, which pin their
/// client) through 8.
fn pgbench_modes(driver: &str) {
    let Some(pg) = Postgres::start() else {
        return;
    };
    pg.pgbench_init();
    for (mode, size) in [("simple", 3), ("extended", 3), ("prepared", 8)] {
        let p = Pooler::start(
            &pg.addr(),
            &PoolOpts {
                driver: Some(driver.to_string()),
                ..opts(size)
            },
        );
        let out = output(
            common::postgres::bounded(180, pg_bin("pgbench"))
                .args(["-n", "-c", "8", "-j", "2", "-t", "200", "-M", mode])
                .args(["-h", "127.0.0.1", "-p", &p.port().to_string()])
                .args(["-U", "tester", "postgres"]),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "pgbench -M {mode}: {}", show(&out));
        assert!(
            text.contains("number of transactions actually processed: 1600/1600"),
            "pgbench -M {mode}: {}",
            show(&out)
        );
        assert!(
            text.contains("number of failed transactions: 0 "),
            "pgbench -M {mode}: {}",
            show(&out)
        );
        assert!(pg.backends("tester") <= size as usize);
    }
}

per_driver!(transaction_pooling_caps_backends, pgbench_modes);

/// BEGIN … COMMIT over several round trips stays on one server connection (same backend
/// pid and txid inside) while other clients interleave on the same 2 connections; a rolled
/// back transaction leaves nothing.
#[test]
fn transaction_stays_on_one_connection() {
    py_case(
        opts(2),
        120,
        &["CREATE TABLE tx_t (r int)"],
        r#"
stop, errs = threading.Event(), []
def noise():
    try:
        with connect(PROXY) as c:
            for _ in range(5000):
                if stop.is_set():
                    break
                c.execute('SELECT pg_backend_pid(), txid_current()').fetchone()
    except Exception as e:
        errs.append(repr(e))
ns = [threading.Thread(target=noise) for _ in range(4)]
for t in ns: t.start()
a = connect(PROXY)
for r in range(5):
    with a.transaction():
        t1 = a.execute('SELECT txid_current(), pg_backend_pid()').fetchone()
        a.execute('INSERT INTO tx_t VALUES (%s)', (r,))
        time.sleep(0.05)
        t2 = a.execute('SELECT txid_current(), pg_backend_pid()').fetchone()
        n = a.execute('SELECT count(*) FROM tx_t WHERE r = %s', (r,)).fetchone()[0]
        assert t1 == t2, (t1, t2)
        assert n == 1
class Undo(Exception): pass
try:
    with a.transaction():
        a.execute('INSERT INTO tx_t VALUES (99)')
        assert a.execute('SELECT count(*) FROM tx_t WHERE r = 99').fetchone()[0] == 1
        raise Undo()
except Undo:
    pass
stop.set()
for t in ns: t.join(30)
assert not errs, errs
with direct() as d:
    assert d.execute('SELECT count(*) FROM tx_t').fetchone()[0] == 5
    assert d.execute('SELECT count(*) FROM tx_t WHERE r = 99').fetchone()[0] == 0
print('ok')
"#,
    );
}

/// An error inside a transaction puts it in the failed state ('E': further statements get
/// 25P02) until ROLLBACK; after that the client, and the next client on the same single
/// server connection, work normally.
#[test]
fn error_in_transaction_then_rollback() {
    py_case(
        opts(1),
        60,
        &[],
        r#"
from psycopg.pq import TransactionStatus as TS
a = connect(PROXY)
a.execute('BEGIN')
try:
    a.execute('SELECT 1/0')
    raise SystemExit('no error')
except errors.DivisionByZero:
    pass
assert a.info.transaction_status == TS.INERROR, a.info.transaction_status
try:
    a.execute('SELECT 1')
    raise SystemExit('no error')
except errors.InFailedSqlTransaction as e:
    assert e.sqlstate == '25P02'
a.execute('ROLLBACK')
assert a.info.transaction_status == TS.IDLE
assert a.execute('SELECT 1').fetchone()[0] == 1
# The same with the extended protocol's error (Bind of a bad parameter).
a.execute('BEGIN')
try:
    a.execute('SELECT %s::int', ('x',))
    raise SystemExit('no error')
except errors.InvalidTextRepresentation:
    pass
assert a.info.transaction_status == TS.INERROR
a.execute('ROLLBACK')
b = connect(PROXY)
assert b.execute('SELECT txid_current_if_assigned() IS NULL, now() = statement_timestamp()').fetchone() == (True, True)
assert a.execute('SELECT 2').fetchone()[0] == 2
print('ok')
"#,
    );
}

/// psycopg pipeline mode (many Parse/Bind/Execute and Syncs in flight) through a single
/// server connection shared with another busy client: results in order, a failed
/// pipelined transaction rolls back entirely, the connection stays usable.
#[test]
fn pipeline_mode() {
    py_case(
        opts(1),
        120,
        &["CREATE TABLE pipe_t (x int)"],
        r#"
stop, errs = threading.Event(), []
def noise():
    try:
        with connect(PROXY) as c:
            for i in range(5000):
                if stop.is_set():
                    break
                assert c.execute('SELECT %s::int', (i,)).fetchone()[0] == i
    except Exception as e:
        errs.append(repr(e))
n = threading.Thread(target=noise); n.start()
a = connect(PROXY)
for rnd in range(3):
    with a.pipeline():
        curs = []
        for i in range(50):
            a.execute('INSERT INTO pipe_t VALUES (%s)', (i,))
            curs.append(a.execute('SELECT %s::int * 2', (i,)))
    assert [c.fetchone()[0] for c in curs] == [2 * i for i in range(50)]
assert a.execute('SELECT count(*), sum(x) FROM pipe_t').fetchone() == (150, 3 * sum(range(50)))
try:
    with a.transaction():
        with a.pipeline():
            a.execute('INSERT INTO pipe_t VALUES (1000)')
            a.execute('SELECT 1/0')
            a.execute('INSERT INTO pipe_t VALUES (1001)')
    raise SystemExit('no error')
except errors.DivisionByZero:
    pass
assert a.execute('SELECT count(*) FROM pipe_t WHERE x >= 1000').fetchone()[0] == 0
assert a.execute('SELECT 5').fetchone()[0] == 5
stop.set(); n.join(30)
assert not errs, errs
print('ok')
"#,
    );
}

/// One session-state case: client A runs `setup` (outside a transaction), then over several
/// transactions `a_check` keeps answering `a_expect` (A is pinned to its server
/// connection); meanwhile client B and fresh clients evaluate `b_check` to `b_during`
/// (never A's state); after A disconnects, two concurrent transactions (so, with B idle,
/// every server connection of the pool is used, A's former one included) evaluate it to
/// `b_after`.
struct StateCase<'a> {
    /// Server connections in the pool.
    pool: u32,
    /// SQL statements A runs first, outside a transaction.
    setup: &'a [&'a str],
    /// A Python expression over A's connection `a`, and what it must give.
    a_check: &'a str,
    a_expect: &'a str,
    /// A Python expression over another client's connection `c`, and what it must give
    /// while A is connected and after A has disconnected.
    b_check: &'a str,
    b_during: &'a str,
    b_after: &'a str,
    /// Python run after the rounds, before A disconnects.
    extra: &'a str,
    /// psycopg connection arguments of every client (`key=value, …`).
    conn_kw: &'a str,
}

/// `c.execute(SQL).fetchone()[0]`: the Python [`StateCase::b_check`] of a query.
fn sql1(sql: &str) -> String {
    format!("c.execute({sql:?}).fetchone()[0]")
}

fn state_case(t: StateCase) {
    let StateCase {
        pool,
        setup: setup_sql,
        a_check,
        a_expect,
        b_check,
        b_during,
        b_after,
        extra,
        conn_kw,
    } = t;
    let Some((pg, p)) = setup(opts(pool)) else {
        return;
    };
    let setup_py: String = setup_sql
        .iter()
        .map(|s| format!("a.execute({s:?})\n"))
        .collect();
    let script = format!(
        r#"
KW = dict({conn_kw})
def pconnect():
    return connect(PROXY, **KW)
a = pconnect()
{setup_py}
def a_check():
    return {a_check}
def b_check(c):
    return {b_check}
b = pconnect()
for rnd in range(5):
    with a.transaction():
        v = a_check()
        assert v == {a_expect}, ('A lost its state', rnd, v)
    v = a_check()
    assert v == {a_expect}, ('A lost its state outside a transaction', rnd, v)
    for i in range(4):
        v = b_check(b)
        assert v == {b_during}, ('B sees A state', rnd, i, v)
    with pconnect() as c:
        v = b_check(c)
        assert v == {b_during}, ('a new client sees A state', rnd, v)
{extra}
a.close()
for rnd in range(5):
    c1, c2 = pconnect(), pconnect()
    with c1.transaction(), c2.transaction():
        v1, v2 = b_check(c1), b_check(c2)
    c1.close(); c2.close()
    assert v1 == {b_after} and v2 == {b_after}, ('state left after A disconnected', rnd, v1, v2)
    v = b_check(b)
    assert v == {b_after}, ('B sees state after A disconnected', rnd, v)
print('ok')
"#
    );
    let out = py_ok(120, p.port(), pg.port, &script);
    assert_eq!(out.trim(), "ok");
}

/// `SET application_name` stays with its client and never reaches another.
#[test]
fn state_set_application_name() {
    state_case(StateCase {
        pool: 2,
        setup: &["SET application_name = 'client-a'"],
        a_check: "a.execute('SHOW application_name').fetchone()[0]",
        a_expect: "'client-a'",
        b_check: &sql1("SELECT current_setting('application_name') = 'client-a'"),
        b_during: "False",
        b_after: "False",
        extra: "",
        conn_kw: "",
    });
}

/// `SET search_path` (PgBouncer's transaction mode leaks it to whichever client gets the
/// connection next, and loses it for its owner).
#[test]
fn state_set_search_path() {
    state_case(StateCase {
        pool: 2,
        setup: &["SET search_path = a_schema, public"],
        a_check: "a.execute('SHOW search_path').fetchone()[0]",
        a_expect: "'a_schema, public'",
        b_check: &sql1("SELECT current_setting('search_path') = 'a_schema, public'"),
        b_during: "False",
        b_after: "False",
        extra: "",
        conn_kw: "",
    });
}

/// SQL `PREPARE`: the statement keeps working for its client, and no other client (during
/// or after) finds it.
#[test]
fn state_sql_prepare() {
    state_case(StateCase {
        pool: 2,
        setup: &["PREPARE a_stmt AS SELECT 42"],
        a_check: "a.execute('EXECUTE a_stmt').fetchone()[0]",
        a_expect: "42",
        b_check: &sql1("SELECT count(*) FROM pg_prepared_statements WHERE name = 'a_stmt'"),
        b_during: "0",
        b_after: "0",
        extra: "",
        conn_kw: "",
    });
}

/// Protocol-level named prepared statements (psycopg `prepare=True`: a Parse named
/// `_pg3_0` on its first use, then only Bind/Execute of that name in later transactions):
/// A's keeps working; other clients, which name theirs `_pg3_0` too, neither collide with
/// it ("already exists") nor run it, during or after A's session.
#[test]
fn state_protocol_prepared_statement() {
    state_case(StateCase {
        pool: 3,
        setup: &[],
        // (and psycopg really uses a named statement: the test's own sanity check)
        a_check: "(a.execute('SELECT %s::int + 1', (41,), prepare=True).fetchone()[0], \
                  len(a._prepared._names) >= 1)",
        a_expect: "(42, True)",
        b_check: "c.execute('SELECT %s::int * 2', (21,), prepare=True).fetchone()[0]",
        b_during: "42",
        b_after: "42",
        extra: "",
        // `prepare=True` is ignored with prepare_threshold=None (the default of these
        // scripts); a high threshold prepares nothing else.
        conn_kw: "prepare_threshold=1000",
    });
}

/// `LISTEN`: A keeps listening (and gets B's NOTIFY, forwarded while A is idle or busy),
/// B is never listening.
#[test]
fn state_listen_notify() {
    state_case(StateCase {
        pool: 2,
        setup: &["LISTEN a_chan"],
        a_check: "a.execute('SELECT count(*) FROM pg_listening_channels()').fetchone()[0]",
        a_expect: "1",
        b_check: &sql1("SELECT count(*) FROM pg_listening_channels()"),
        b_during: "0",
        b_after: "0",
        // psycopg hands notifications that arrive during execute() to handlers only.
        extra: r#"
got = []
a.add_notify_handler(got.append)
b.execute("NOTIFY a_chan, 'hi'")
for _ in range(100):
    if got:
        break
    a.execute('SELECT 1')
    time.sleep(0.05)
assert got and got[0].channel == 'a_chan' and got[0].payload == 'hi', got
"#,
        conn_kw: "",
    });
}

/// `CREATE TEMP TABLE`: A keeps its table and rows, nobody else sees it, and it is gone
/// once A disconnects.
#[test]
fn state_temp_table() {
    state_case(StateCase {
        pool: 2,
        setup: &[
            "CREATE TEMP TABLE tmp_a (x int)",
            "INSERT INTO tmp_a VALUES (7)",
        ],
        a_check: "a.execute('SELECT sum(x) FROM tmp_a').fetchone()[0]",
        a_expect: "7",
        b_check: &sql1("SELECT to_regclass('pg_temp.tmp_a') IS NULL"),
        b_during: "True",
        b_after: "True",
        extra: "",
        conn_kw: "",
    });
}

/// A session advisory lock: A holds it throughout; no other client is ever on the session
/// that holds it; once A has disconnected nobody holds it (released, not left on a pooled
/// connection).
#[test]
fn state_advisory_lock() {
    state_case(StateCase {
        pool: 2,
        setup: &["SELECT pg_advisory_lock(4242)"],
        a_check: "a.execute(\"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 \
         AND pid = pg_backend_pid() AND granted\").fetchone()[0]",
        a_expect: "1",
        // (held by this session, held by anyone)
        b_check: "c.execute(\"SELECT count(*) FILTER (WHERE pid = pg_backend_pid()), count(*) \
                  FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242\").fetchone()",
        b_during: "(0, 1)",
        b_after: "(0, 0)",
        extra: "",
        conn_kw: "",
    });
}

/// A session `SET` issued inside a transaction block outlives the COMMIT: it pins too.
#[test]
fn state_set_inside_transaction() {
    state_case(StateCase {
        pool: 2,
        setup: &["BEGIN", "SET search_path = in_tx, public", "COMMIT"],
        a_check: "a.execute('SHOW search_path').fetchone()[0]",
        a_expect: "'in_tx, public'",
        b_check: &sql1("SELECT current_setting('search_path') = 'in_tx, public'"),
        b_during: "False",
        b_after: "False",
        extra: "",
        conn_kw: "",
    });
}

/// A session setting changed by a function, `set_config(..., false)`, not a SET statement
/// (what some ORMs and row-level-security setups do).
#[test]
fn state_set_config_function() {
    state_case(StateCase {
        pool: 2,
        setup: &["SELECT set_config('search_path', 'by_func, public', false)"],
        a_check: "a.execute('SHOW search_path').fetchone()[0]",
        a_expect: "'by_func, public'",
        b_check: &sql1("SELECT current_setting('search_path') = 'by_func, public'"),
        b_during: "False",
        b_after: "False",
        extra: "",
        conn_kw: "",
    });
}

/// `SET ROLE`: a leak would run other clients' queries as another role.
#[test]
fn state_set_role() {
    state_case(StateCase {
        pool: 2,
        setup: &["SET ROLE reader"],
        a_check: "a.execute('SELECT current_user').fetchone()[0]",
        a_expect: "'reader'",
        b_check: &sql1("SELECT current_user"),
        b_during: "'tester'",
        b_after: "'tester'",
        extra: "",
        conn_kw: "",
    });
}

/// A temp table made by `SELECT … INTO TEMP` (no CREATE TEMP in the text).
#[test]
fn state_select_into_temp() {
    state_case(StateCase {
        pool: 2,
        setup: &["SELECT 7 AS x INTO TEMP tmp_into"],
        a_check: "a.execute('SELECT sum(x) FROM tmp_into').fetchone()[0]",
        a_expect: "7",
        b_check: &sql1("SELECT to_regclass('pg_temp.tmp_into') IS NULL"),
        b_during: "True",
        b_after: "True",
        extra: "",
        conn_kw: "",
    });
}

/// A cursor `WITH HOLD` outlives its transaction: A keeps fetching from it, nobody else
/// sees it.
#[test]
fn state_cursor_with_hold() {
    state_case(StateCase {
        pool: 2,
        setup: &["DECLARE a_cur CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 1000) g"],
        a_check: "(a.execute('FETCH 1 FROM a_cur').fetchone()[0] > 0, \
                  a.execute(\"SELECT count(*) FROM pg_cursors WHERE name = 'a_cur'\").fetchone()[0])",
        a_expect: "(True, 1)",
        b_check: &sql1("SELECT count(*) FROM pg_cursors WHERE name = 'a_cur'"),
        b_during: "0",
        b_after: "0",
        extra: "",
        conn_kw: "",
    });
}

/// COPY FROM STDIN and COPY TO STDOUT of a few MB (psycopg, and psql's `\copy`), a COPY
/// that fails on bad data, and one the client aborts (CopyFail): the table holds exactly
/// the good rows and the connection stays usable.
#[test]
fn copy_in_and_out() {
    let Some((pg, p)) = setup(opts(1)) else {
        return;
    };
    pg.sql("CREATE TABLE copy_t (id int, t text)");
    let out = py_ok(
        120,
        p.port(),
        pg.port,
        r#"
import hashlib
ROWS = 60000
a = connect(PROXY)
with a.cursor() as cur:
    with cur.copy('COPY copy_t FROM STDIN') as cp:
        for i in range(ROWS):
            cp.write_row((i, 'r%06d-' % i + 'y' * 50))
assert a.execute('SELECT count(*), sum(length(t)) FROM copy_t').fetchone() == (ROWS, ROWS * 58)
def dump(conn):
    out = bytearray()
    with conn.cursor() as cur:
        with cur.copy('COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT') as cp:
            for data in cp:
                out += data
    return bytes(out)
via = dump(a)
with direct() as d:
    ref = dump(d)
assert len(via) > 3_000_000 and via == ref, (len(via), len(ref))
try:
    with a.cursor() as cur:
        with cur.copy('COPY copy_t FROM STDIN') as cp:
            cp.write('1\tgood\n')
            cp.write('not-a-number\tbad\n')
    raise SystemExit('no error')
except errors.InvalidTextRepresentation:
    pass
class Abort(Exception): pass
try:
    with a.cursor() as cur:
        with cur.copy('COPY copy_t FROM STDIN') as cp:
            cp.write('2\tgood\n')
            raise Abort()
except Abort:
    pass
except errors.QueryCanceled:
    pass
assert a.execute('SELECT count(*) FROM copy_t').fetchone()[0] == ROWS
assert a.execute('SELECT 3').fetchone()[0] == 3
print('ok')
"#,
    );
    assert_eq!(out.trim(), "ok");

    // psql's \copy (CopyData from a file, then back out to another).
    let dir = tmp_dir("pgcopy", &p.port().to_string());
    let src = dir.join("in.tsv");
    let mut data = String::new();
    for i in 0..40_000 {
        data.push_str(&format!("{i}\tline-{i:08}-{}\n", "z".repeat(40)));
    }
    std::fs::write(&src, &data).unwrap();
    let dst = dir.join("out.tsv");
    psql_ok(
        p.port(),
        "tester",
        None,
        "CREATE TABLE copy2 (id int, t text)",
    );
    psql_ok(
        p.port(),
        "tester",
        None,
        &format!("\\copy copy2 FROM '{}'", src.display()),
    );
    psql_ok(
        p.port(),
        "tester",
        None,
        &format!(
            "\\copy (SELECT * FROM copy2 ORDER BY id) TO '{}'",
            dst.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), data);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 64 MB result streams through (psycopg single-row mode, a client slower than
/// PostgreSQL) while the proxy's peak RSS grows far less than the result.
#[test]
fn large_select_bounded_memory() {
    let Some((pg, p)) = setup(opts(1)) else {
        return;
    };
    // Warm up (pools, buffers) before the baseline.
    psql_ok(p.port(), "tester", None, "SELECT 1");
    let before = p.peak_rss_kib();
    let out = py_ok(
        180,
        p.port(),
        pg.port,
        r#"
a = connect(PROXY)
rows = size = 0
for row in a.cursor().stream("SELECT repeat('x', 1000) || g FROM generate_series(1, 64000) g"):
    rows += 1
    size += len(row[0])
assert rows == 64000, rows
assert a.execute('SELECT 1').fetchone()[0] == 1
print(size)
"#,
    );
    let size: u64 = out.trim().parse().unwrap();
    assert!(size > 64_000_000);
    let after = p.peak_rss_kib();
    eprintln!("proxy VmHWM {before} KiB -> {after} KiB for a {size}-byte result");
    assert!(
        after.saturating_sub(before) < 24 * 1024,
        "proxy peak RSS grew {before} -> {after} KiB for a {size}-byte result"
    );
}

/// A CancelRequest through the proxy (psycopg `conn.cancel()`) stops `pg_sleep(30)` with
/// 57014 well before it would end, cancels only that client's query (another client's
/// concurrent query completes), and the connection stays usable, in and out of a
/// transaction.
#[test]
fn cancel_request() {
    py_case(
        opts(2),
        120,
        &[],
        r#"
from psycopg.pq import TransactionStatus as TS
a, b = connect(PROXY), connect(PROXY)
res = {}
def run_a():
    try:
        a.execute('SELECT pg_sleep(30)')
        res['a'] = 'finished'
    except errors.QueryCanceled as e:
        res['a'] = e.sqlstate
    except Exception as e:
        res['a'] = repr(e)
def run_b():
    try:
        res['b'] = b.execute('SELECT pg_sleep(2), 7').fetchone()[1]
    except Exception as e:
        res['b'] = repr(e)
def wait_active(q):
    with direct() as d:
        for _ in range(400):
            if d.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'", (q,)).fetchone()[0]:
                return
            time.sleep(0.05)
    raise SystemExit('query never started: ' + q)
for in_tx in (False, True):
    if in_tx:
        a.execute('BEGIN')
    ta, tb = threading.Thread(target=run_a), threading.Thread(target=run_b)
    ta.start(); tb.start()
    wait_active('SELECT pg_sleep(30)')
    a.cancel()
    ta.join(20)
    assert not ta.is_alive(), 'cancel did not stop the query within 20 s'
    assert res['a'] == '57014', res
    tb.join(20)
    assert res['b'] == 7, res
    if in_tx:
        assert a.info.transaction_status == TS.INERROR
        a.execute('ROLLBACK')
    assert a.execute('SELECT 1').fetchone()[0] == 1
print('ok')
"#,
    );
}

/// A psql session of several statements (`-f`), meta-commands included, works as through
/// PostgreSQL directly: a smoke test of what interactive users do.
#[test]
fn psql_script_session() {
    let Some((pg, p)) = setup(opts(2)) else {
        return;
    };
    let sql = "CREATE TABLE s (id serial PRIMARY KEY, v text);\n\
               INSERT INTO s (v) SELECT 'v' || g FROM generate_series(1, 100) g;\n\
               BEGIN;\n\
               UPDATE s SET v = 'changed' WHERE id <= 10;\n\
               SAVEPOINT sp;\n\
               DELETE FROM s;\n\
               ROLLBACK TO SAVEPOINT sp;\n\
               COMMIT;\n\
               SELECT count(*) FILTER (WHERE v = 'changed'), count(*) FROM s;\n\
               \\d s\n";
    let dir = tmp_dir("pgscript", &p.port().to_string());
    let f = dir.join("s.sql");
    std::fs::write(&f, sql).unwrap();
    let out = output(&mut psql_cmd(
        p.port(),
        "tester",
        None,
        &["-f", &f.to_string_lossy()],
    ));
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10|100"), "{text}");
    assert!(text.contains("integer"), "{text}");
    assert_eq!(pg.sql("SELECT count(*) FROM s"), "100");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Startup parameters follow their client: clients with different `application_name` and
/// `client_encoding` (LATIN1 vs UTF8) alternate transactions through the proxy, each sees
/// its own settings, and non-ASCII text round-trips in each encoding.
#[test]
fn startup_parameters_follow_their_client() {
    py_case(
        opts(1),
        60,
        &[],
        r#"
a = connect(PROXY, application_name='app-a', client_encoding='LATIN1')
b = connect(PROXY, application_name='app-b')
for r in range(5):
    for c, name, enc in ((a, 'app-a', 'LATIN1'), (b, 'app-b', 'UTF8')):
        with c.transaction():
            got = c.execute("SELECT current_setting('application_name'), "
                            "current_setting('client_encoding'), %s::text, length(%s::text)",
                            ('héllo', 'héllo')).fetchone()
            assert got == (name, enc, 'héllo', 5), (name, got)
        assert c.info.encoding.lower().replace('-', '') in ('latin1', 'iso88591', 'utf8'), c.info.encoding
print('ok')
"#,
    );
}

/// Databases: a client of another database gets that database (its own pool); a client
/// of a database that does not exist gets PostgreSQL's FATAL 3D000 and the proxy goes on.
#[test]
fn database_routing() {
    py_case(
        opts(2),
        60,
        &["CREATE DATABASE otherdb"],
        r#"
o = psycopg.connect(host='127.0.0.1', port=PROXY, user='tester', dbname='otherdb',
                    autocommit=True, connect_timeout=10, sslmode='disable', prepare_threshold=None)
m = connect(PROXY)
for r in range(3):
    assert o.execute('SELECT current_database()').fetchone()[0] == 'otherdb'
    assert m.execute('SELECT current_database()').fetchone()[0] == 'postgres'
try:
    psycopg.connect(host='127.0.0.1', port=PROXY, user='tester', dbname='nope',
                    connect_timeout=10, sslmode='disable')
    raise SystemExit('connected to a database that does not exist')
except psycopg.OperationalError as e:
    assert 'database "nope" does not exist' in str(e), str(e)
assert m.execute('SELECT 1').fetchone()[0] == 1
print('ok')
"#,
    );
}

/// More clients than PostgreSQL's max_connections (250 > 200), all connected at once,
/// each runs queries through `--pool-size 2`: PostgreSQL sees at most 2 backends.
#[test]
fn many_clients_beyond_max_connections() {
    py_case(
        opts(2),
        180,
        &[],
        r#"
cs = [connect(PROXY) for _ in range(250)]
for r in range(2):
    for i, c in enumerate(cs):
        assert c.execute('SELECT %s::int', (i,)).fetchone()[0] == i
with direct() as d:
    n = d.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'tester'").fetchone()[0]
assert n <= 2, n
for c in cs:
    c.close()
print('ok')
"#,
    );
}

/// `--pool-mode session`: a client keeps one server connection (same backend, its SET
/// kept) for its whole session; after it leaves, the next client gets a reset connection.
#[test]
fn session_mode_keeps_connection() {
    py_case(
        PoolOpts {
            mode: Some("session"),
            ..opts(1)
        },
        60,
        &[],
        r#"
a = connect(PROXY)
a.execute("SET search_path = a_schema, public")
a.execute('CREATE TEMP TABLE tmp_s (x int)')
pid = a.execute('SELECT pg_backend_pid()').fetchone()[0]
for r in range(5):
    with a.transaction():
        assert a.execute('SELECT pg_backend_pid()').fetchone()[0] == pid
        assert a.execute('SHOW search_path').fetchone()[0] == 'a_schema, public'
        a.execute('INSERT INTO tmp_s VALUES (%s)', (r,))
a.close()
for r in range(3):
    with connect(PROXY) as b:
        got = b.execute("SELECT current_setting('search_path'), to_regclass('pg_temp.tmp_s') IS NULL").fetchone()
        assert got == ('"$user", public', True), got
print('ok')
"#,
    );
}

/// `--pool-wait-timeout`: with the only server connection held by an open transaction,
/// another client's query fails with an error in bounded time (not a hang); the holder is
/// unaffected, and once it commits new clients work.
#[test]
fn pool_wait_timeout_errors_cleanly() {
    let Some((pg, p)) = setup(PoolOpts {
        extra: vec!["--pool-wait-timeout".into(), "1s".into()],
        ..opts(1)
    }) else {
        return;
    };
    let out = py_ok(
        60,
        p.port(),
        pg.port,
        r#"
a = connect(PROXY)
a.execute('BEGIN')
a.execute('SELECT 1')
b = connect(PROXY)
t0 = time.time()
try:
    b.execute('SELECT 2')
    raise SystemExit('b got a connection that a holds')
except psycopg.Error as e:
    print('b:', type(e).__name__, e.sqlstate, 'after %.1fs' % (time.time() - t0))
assert a.execute('SELECT 3').fetchone()[0] == 3
a.execute('COMMIT')
with connect(PROXY) as c:
    assert c.execute('SELECT 4').fetchone()[0] == 4
try:
    print('b after:', b.execute('SELECT 5').fetchone()[0])
except psycopg.Error as e:
    print('b after:', type(e).__name__)
print('ok')
"#,
    );
    eprintln!("{out}");
    assert!(out.trim().ends_with("ok"), "{out}");
}

/// `--idle-timeout`: pooled server connections idle longer than that are closed (PostgreSQL
/// sees the backends go), and the next query opens a new one.
#[test]
fn idle_server_connections_closed() {
    let Some((pg, p)) = setup(PoolOpts {
        extra: vec!["--idle-timeout".into(), "1s".into()],
        ..opts(2)
    }) else {
        return;
    };
    if !p.is_ferry() {
        return; // PgBouncer: server_idle_timeout, not configured here
    }
    assert_eq!(psql_ok(p.port(), "tester", None, "SELECT 1"), "1");
    assert!(pg.backends("tester") >= 1);
    let start = std::time::Instant::now();
    while pg.backends("tester") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "idle server connection still open after 30 s with --idle-timeout 1s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(psql_ok(p.port(), "tester", None, "SELECT 2"), "2");
}

/// A CancelRequest with a key the proxy never gave out (and one for an idle client) cancels
/// nothing: a running query of another client completes.
#[test]
fn cancel_with_wrong_key_is_ignored() {
    let Some((_pg, p)) = setup(opts(2)) else {
        return;
    };
    let busy = psql_cmd(
        p.port(),
        "tester",
        None,
        &["-c", "SELECT pg_sleep(2), 'survived'"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for (pid, secret) in [(1i32, 2i32), (0x7fff_ffff, -1), (12345, 67890)] {
        let mut raw = Raw::connect(p.port());
        let mut m = 16i32.to_be_bytes().to_vec();
        m.extend_from_slice(&80877102i32.to_be_bytes());
        m.extend_from_slice(&pid.to_be_bytes());
        m.extend_from_slice(&secret.to_be_bytes());
        raw.s.write_all(&m).unwrap();
        // The proxy answers nothing and closes.
        assert!(raw.read_msg(Duration::from_secs(10)).is_none());
    }
    let out = busy.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("survived"));
}

/// Transaction-scoped state (`SET LOCAL`, `set_config(..., true)`, an xact advisory lock)
/// ends with its transaction, so it must not pin its client: with one server connection
/// and a 2 s pool wait, another client is served right after.
#[test]
fn transaction_scoped_state_does_not_pin() {
    py_case(
        PoolOpts {
            extra: vec!["--pool-wait-timeout".into(), "2s".into()],
            ..opts(1)
        },
        60,
        &[],
        r#"
a, b = connect(PROXY), connect(PROXY)
for r in range(3):
    with a.transaction():
        a.execute("SET LOCAL search_path = a_schema, public")
        a.execute("SELECT set_config('application_name', 'local-a', true)")
        a.execute('SELECT pg_advisory_xact_lock(77)')
        assert a.execute('SHOW search_path').fetchone()[0] == 'a_schema, public'
    got = b.execute("SELECT current_setting('search_path'), current_setting('application_name')").fetchone()
    assert got == ('"$user", public', ''), got
    assert a.execute('SHOW search_path').fetchone()[0] == '"$user", public'
print('ok')
"#,
    );
}

/// A client's CancelRequest reaches only its own query: client A, idle after a query on the
/// pool's only server connection, cancels while B's `pg_sleep(3)` runs on that same
/// connection; B's query completes (a pooler that maps A's key to "A's last server
/// connection" would cancel B).
#[test]
fn cancel_of_idle_client_does_not_hit_another() {
    py_case(
        opts(1),
        60,
        &[],
        r#"
a, b = connect(PROXY), connect(PROXY)
assert a.execute('SELECT pg_backend_pid()').fetchone()
res = {}
def run_b():
    try:
        res['b'] = b.execute("SELECT pg_sleep(3), 'b-done'").fetchone()[1]
    except Exception as e:
        res['b'] = repr(e)
t = threading.Thread(target=run_b); t.start()
with direct() as d:
    for _ in range(400):
        if d.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%%' AND state = 'active'").fetchone()[0]:
            break
        time.sleep(0.02)
a.cancel()
t.join(30)
assert res.get('b') == 'b-done', res
assert a.execute('SELECT 1').fetchone()[0] == 1
print('ok')
"#,
    );
}

/// Transaction pooling over two upstreams configured differently (`TimeZone`, `DateStyle`
/// per role): a client moved to a server connection of the other upstream is first told the
/// values that differ from what it was told (ParameterStatus, as PgBouncer does), so what
/// libpq reports follows the server that answers its queries.
#[test]
fn parameter_status_follows_the_server() {
    let Some(pg1) = Postgres::start() else { return };
    let Some(pg2) = Postgres::start() else { return };
    if !psycopg_available() {
        return;
    }
    pg1.sql("ALTER ROLE tester SET TimeZone = 'America/New_York'");
    pg2.sql("ALTER ROLE tester SET TimeZone = 'Asia/Tokyo'");
    pg2.sql("ALTER ROLE tester SET DateStyle = 'SQL, DMY'");
    let p = Pooler::start(&format!("{},{}", pg1.addr(), pg2.addr()), &opts(1));
    let out = py_ok(
        60,
        p.port(),
        pg1.port,
        r#"
def server(c):
    return c.execute("SELECT current_setting('TimeZone'), current_setting('DateStyle')").fetchone()
def told(c):
    return (c.info.parameter_status('TimeZone'), c.info.parameter_status('DateStyle'))
def check(c):
    s = server(c)
    assert told(c) == s, ('told', told(c), 'server', s)
    return s
a = connect(PROXY)
b = connect(PROXY)
seen = {'a': set(), 'b': set()}
for _ in range(3):
    # b holds a server in a transaction: a's next query goes to the other one, and back.
    b.execute('BEGIN')
    sb = check(b)
    sa = check(a)
    assert sa != sb, (sa, sb)
    b.execute('COMMIT')
    a.execute('BEGIN')
    seen['a'].add(check(a))
    seen['b'].add(check(b))
    a.execute('COMMIT')
    seen['a'].add(sa)
    seen['b'].add(sb)
assert len(seen['a']) == 2 and len(seen['b']) == 2, seen
print('ok')
"#,
    );
    assert_eq!(out.trim(), "ok");
}
