//! End-to-end tests of the admin console of `ferry proxy --protocol postgres` (PgBouncer's:
//! the database `ferry` or `pgbouncer`) against a real PostgreSQL 15: `SHOW POOLS`,
//! `SHOW CLIENTS` and `SHOW SERVERS` while psycopg clients hold transactions open (and one
//! waits), `SHOW STATS` counters, errors that leave the session usable, and client
//! authentication. Clients are psql and psycopg 3 (`ClientCursor`: the simple query
//! protocol).
//!
//! Ferry only: under `FERRY_PG_POOLER=pgbouncer` these tests return at once.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

mod common;
use common::postgres::{opts, output, psql_cmd, py_ok, setup, show, PoolOpts, TIMED_OUT};

const CLIENT_PW: &str = "client-secret";

/// psycopg helpers for the console: `console(user, password, db)` and `show(conn, what)`
/// (rows as dicts of text values).
const CONSOLE: &str = r#"
def console(user='tester', password=None, db='ferry'):
    return psycopg.connect(host='127.0.0.1', port=PROXY, user=user, password=password,
                           dbname=db, sslmode='disable', autocommit=True, connect_timeout=10,
                           cursor_factory=psycopg.ClientCursor)
def show(c, what):
    cur = c.execute('SHOW ' + what)
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]
def pool(c):
    rows = [r for r in show(c, 'POOLS') if r['database'] == 'postgres' and r['user'] == 'tester']
    assert len(rows) <= 1, rows
    return rows[0] if rows else None
"#;

fn psql_console(port: u16, db: &str, password: Option<&str>, sql: &str) -> std::process::Output {
    output(&mut psql_cmd(
        port,
        "tester",
        password,
        &["-d", db, "-c", sql],
    ))
}

/// Two clients hold transactions open on a pool of 2 and a third waits: `SHOW POOLS`
/// counts 2 active and 1 waiting client and 2 active servers; `SHOW CLIENTS` and
/// `SHOW SERVERS` list them, linked to each other, with the backends' pids; once the
/// transactions end, the servers are idle and every client active.
#[test]
fn pools_clients_servers_while_transactions_held() {
    let Some((pg, p)) = setup(opts(2)) else {
        return;
    };
    if !p.is_ferry() {
        return;
    }
    let script = format!(
        "{CONSOLE}\n{}",
        r#"
adm = console()
holders = [connect(PROXY) for _ in range(3)]
pids = []
for h in holders[:2]:
    h.execute('BEGIN')
    pids.append(h.execute('SELECT pg_backend_pid()').fetchone()[0])
done = threading.Event()
def third():
    holders[2].execute('SELECT 1')
    done.set()
t = threading.Thread(target=third)
t.start()
p = None
for _ in range(400):
    p = pool(adm)
    if p and p['cl_waiting'] == '1':
        break
    time.sleep(0.05)
assert p is not None, show(adm, 'POOLS')
assert (p['cl_active'], p['cl_waiting'], p['sv_active'], p['sv_idle'], p['sv_used'], p['sv_login']) == ('2', '1', '2', '0', '0', '0'), p
assert p['pool_mode'] == 'transaction', p
assert int(p['maxwait']) >= 0 and 0 <= int(p['maxwait_us']) < 1000000, p
clients = [r for r in show(adm, 'CLIENTS') if r['database'] == 'postgres']
assert sorted(r['state'] for r in clients) == ['active', 'active', 'waiting'], clients
assert all(r['type'] == 'C' and r['user'] == 'tester' and r['addr'] == '127.0.0.1' for r in clients), clients
assert any(r['database'] == 'ferry' and r['state'] == 'active' for r in show(adm, 'CLIENTS'))
servers = show(adm, 'SERVERS')
assert sorted(int(r['remote_pid']) for r in servers if r['state'] == 'active') == sorted(pids), (servers, pids)
assert all(r['type'] == 'S' and r['user'] == 'tester' and r['database'] == 'postgres' for r in servers), servers
assert all(r['addr'] == '127.0.0.1' and r['port'] == str(PG) for r in servers), servers
by_ptr = {r['ptr']: r for r in servers}
linked = [c for c in clients if c['state'] == 'active']
for c in linked:
    s = by_ptr[c['link']]
    assert s['link'] == c['ptr'] and s['state'] == 'active', (c, servers)
for h in holders[:2]:
    h.execute('COMMIT')
t.join(30)
assert done.is_set()
for _ in range(400):
    p = pool(adm)
    if p['sv_active'] == '0':
        break
    time.sleep(0.05)
assert (p['cl_active'], p['cl_waiting'], p['sv_active'], p['sv_idle']) == ('3', '0', '0', '2'), p
assert all(r['state'] == 'idle' and r['link'] == '' for r in show(adm, 'SERVERS'))
for h in holders:
    h.close()
print('ok')
"#
    );
    assert_eq!(py_ok(90, p.port(), pg.port, &script).trim(), "ok");
}

/// `SHOW STATS` counts every query answered and every transaction ended for the database,
/// and the bytes both ways.
#[test]
fn stats_count_queries_and_transactions() {
    let Some((pg, p)) = setup(opts(2)) else {
        return;
    };
    if !p.is_ferry() {
        return;
    }
    let script = format!(
        "{CONSOLE}\n{}",
        r#"
adm = console()
c = connect(PROXY)
c.execute('SELECT 1')
def stats():
    rows = [r for r in show(adm, 'STATS') if r['database'] == 'postgres']
    assert len(rows) == 1, show(adm, 'STATS')
    return {k: int(v) for k, v in rows[0].items() if k != 'database'}
a = stats()
for i in range(5):
    c.execute('SELECT %s::int', (i,))
c.execute('BEGIN')
c.execute('SELECT 2')
c.execute('COMMIT')
b = stats()
assert b['total_query_count'] - a['total_query_count'] == 8, (a, b)
assert b['total_xact_count'] - a['total_xact_count'] == 6, (a, b)
assert b['total_received'] > a['total_received'], (a, b)
assert b['total_sent'] > a['total_sent'], (a, b)
c.close()
print('ok')
"#
    );
    assert_eq!(py_ok(60, p.port(), pg.port, &script).trim(), "ok");
}

/// psql reaches the console as `-d ferry` and `-d pgbouncer`; an unknown command is an
/// ERROR 42601 and the session goes on; so is an extended-protocol query (0A000);
/// `SHOW CONFIG` has the proxy's settings.
#[test]
fn commands_and_errors() {
    let Some((pg, p)) = setup(opts(3)) else {
        return;
    };
    if !p.is_ferry() {
        return;
    }
    for db in ["ferry", "pgbouncer"] {
        let out = psql_console(p.port(), db, None, "SHOW VERSION");
        assert!(out.status.success(), "{}", show(&out));
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(v.trim().starts_with("ferry proxy "), "{v}");
    }
    let out = psql_console(p.port(), "ferry", None, "SHOW HELP");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHOW HELP|POOLS"),
        "{}",
        show(&out)
    );
    let out = psql_console(p.port(), "ferry", None, "SHOW NONSENSE");
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid command 'SHOW NONSENSE'"),
        "{}",
        show(&out)
    );
    let script = format!(
        "{CONSOLE}\n{}",
        r#"
adm = console()
try:
    adm.execute('SHOW NONSENSE')
    raise SystemExit('no error')
except errors.SyntaxError as e:
    assert 'SHOW HELP' in str(e), e
try:
    adm.execute('RELOAD')
    raise SystemExit('no error')
except errors.SyntaxError as e:
    assert 'not supported' in str(e), e
try:
    adm.execute('RESUME')
    raise SystemExit('no error')
except errors.SyntaxError as e:
    assert 'not paused' in str(e), e
# The extended protocol (psycopg's binary results force it) is refused; the session
# goes on.
try:
    psycopg.Cursor(adm).execute('SHOW POOLS', binary=True)
    raise SystemExit('no error')
except errors.FeatureNotSupported as e:
    assert 'simple query' in str(e), e
cfg = {r['key']: (r['value'], r['changeable']) for r in show(adm, 'CONFIG')}
assert cfg['pool_size'] == ('3', 'no'), cfg
assert cfg['pool_mode'] == ('transaction', 'no'), cfg
assert cfg['auth_type'] == ('trust', 'no'), cfg
assert cfg['upstreams'][0] == '127.0.0.1:%d' % PG, cfg
assert show(adm, 'VERSION')[0]['version'].startswith('ferry proxy ')
# Two commands in one query.
cur = adm.execute('SHOW VERSION; SHOW VERSION')
assert cur.fetchone()[0].startswith('ferry proxy ')
adm.close()
print('ok')
"#
    );
    assert_eq!(py_ok(60, p.port(), pg.port, &script).trim(), "ok");
}

/// `PAUSE` answers only once the transaction in progress has ended, and holds a new
/// client's query until `RESUME`; `SHOW STATE` says paused meanwhile.
#[test]
fn pause_waits_for_transactions_and_holds_queries_until_resume() {
    // The held query must not run into the pool wait timeout on a loaded machine.
    let Some((pg, p)) = setup(PoolOpts {
        extra: vec!["--pool-wait-timeout".into(), "60s".into()],
        ..opts(2)
    }) else {
        return;
    };
    if !p.is_ferry() {
        return;
    }
    let script = format!(
        "{CONSOLE}\n{}",
        r#"
def state(c):
    return {r['key']: r['value'] for r in show(c, 'STATE')}
adm = console()
adm2 = console(db='pgbouncer')
assert state(adm2)['paused'] == 'no'
h = connect(PROXY)
h.execute('BEGIN')
h.execute('SELECT 1')
paused = threading.Event()
def do_pause():
    adm.execute('PAUSE')
    paused.set()
tp = threading.Thread(target=do_pause)
tp.start()
for _ in range(400):
    if state(adm2)['paused'] == 'yes':
        break
    time.sleep(0.05)
assert state(adm2)['paused'] == 'yes'
# The transaction in progress holds PAUSE back.
assert not paused.is_set()
c2 = connect(PROXY)
got = []
def query():
    got.append(c2.execute('SELECT 42').fetchone()[0])
tq = threading.Thread(target=query)
tq.start()
for _ in range(400):
    if any(r['state'] == 'waiting' for r in show(adm2, 'CLIENTS')):
        break
    time.sleep(0.05)
assert [r['state'] for r in show(adm2, 'CLIENTS') if r['state'] == 'waiting'] == ['waiting']
h.execute('COMMIT')
tp.join(30)
assert paused.is_set()
# Still held: no RESUME yet.
assert got == []
assert [r['state'] for r in show(adm2, 'CLIENTS') if r['state'] == 'waiting'] == ['waiting']
adm2.execute('RESUME')
tq.join(30)
assert got == [42], got
assert state(adm)['paused'] == 'no'
h.execute('SELECT 1')
print('ok')
"#
    );
    assert_eq!(py_ok(90, p.port(), pg.port, &script).trim(), "ok");
}

/// With a client password the console asks for it (SCRAM), refuses a wrong one and
/// another user than `--client-user`.
#[test]
fn console_authenticates() {
    let Some((_pg, p)) = setup(PoolOpts {
        client: Some(("tester", CLIENT_PW)),
        ..opts(2)
    }) else {
        return;
    };
    if !p.is_ferry() {
        return;
    }
    let out = psql_console(p.port(), "ferry", Some(CLIENT_PW), "SHOW VERSION");
    assert!(out.status.success(), "{}", show(&out));
    let out = psql_console(p.port(), "ferry", Some("wrong"), "SHOW VERSION");
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("password authentication failed for user \"tester\""),
        "{}",
        show(&out)
    );
    let out = psql_console(p.port(), "ferry", None, "SHOW VERSION");
    assert!(!out.status.success(), "{}", show(&out));
    let out = output(&mut psql_cmd(
        p.port(),
        "other",
        Some(CLIENT_PW),
        &["-d", "ferry", "-c", "SHOW VERSION"],
    ));
    assert!(!out.status.success(), "{}", show(&out));
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
}
