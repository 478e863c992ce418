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
use common::postgres::{
    opts, output, psql_cmd, py_ok, setup, show, PoolOpts, Pooler, Postgres, TIMED_OUT,
};

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
def to(db, **kw):
    return psycopg.connect(host='127.0.0.1', port=PROXY, user='tester', dbname=db,
                           sslmode='disable', autocommit=True, connect_timeout=10,
                           prepare_threshold=None, **kw)
def console_error(c, sql):
    try:
        c.execute(sql)
    except psycopg.Error as e:
        return e
    raise SystemExit('no error for ' + sql)
def database(c, name):
    rows = [r for r in show(c, 'DATABASES') if r['name'] == name]
    assert len(rows) == 1, show(c, 'DATABASES')
    return rows[0]
def backends(db):
    with direct() as d:
        return {r[0] for r in d.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'tester' AND datname = %s", (db,))}
def read_msg(s):
    head = b''
    while len(head) < 5:
        b = s.recv(5 - len(head))
        if not b:
            return None
        head += b
    n = int.from_bytes(head[1:], 'big') - 4
    data = b''
    while len(data) < n:
        b = s.recv(n - len(data))
        if not b:
            return None
        data += b
    return head[:1], data
def fields(data):
    return {f[:1].decode(): f[1:].decode() for f in data.split(b'\0') if f}
def raw(db):
    # A raw protocol client of `db` logged in (trust): its socket, or the login's
    # ErrorResponse fields.
    import socket
    s = socket.create_connection(('127.0.0.1', PROXY), timeout=20)
    body = (196608).to_bytes(4, 'big') + b'user\0tester\0database\0' + db.encode() + b'\0\0'
    s.sendall((len(body) + 4).to_bytes(4, 'big') + body)
    while True:
        m = read_msg(s)
        assert m is not None, 'EOF during login'
        if m[0] == b'E':
            return fields(m[1])
        if m[0] == b'Z':
            return s
def raw_query(s, sql):
    q = sql.encode() + b'\0'
    s.sendall(b'Q' + (len(q) + 4).to_bytes(4, 'big') + q)
    msgs = []
    while True:
        m = read_msg(s)
        msgs.append(m)
        if m is None or m[0] == b'Z':
            return msgs
def until(f, what):
    for _ in range(600):
        if f():
            return
        time.sleep(0.05)
    raise SystemExit('timed out waiting for ' + what)
"#;

/// The pooler of `o` in front of a fresh PostgreSQL, when the pooler under test is ferry
/// (the console is ferry's; `None`, a skip, for PgBouncer runs or without PostgreSQL).
fn ferry_setup(o: PoolOpts) -> Option<(Postgres, Pooler)> {
    setup(o).filter(|(_, p)| p.is_ferry())
}

/// `opts(size)` with a pool wait long enough that a held query does not time out on a
/// loaded machine.
fn patient(size: u32) -> PoolOpts {
    PoolOpts {
        extra: vec!["--pool-wait-timeout".into(), "60s".into()],
        ..opts(size)
    }
}

/// Run `body` after the [`CONSOLE`] helpers (bounded to `secs`); it must print `ok`.
fn console_script(pg: &Postgres, p: &Pooler, secs: u64, body: &str) {
    let script = format!("{CONSOLE}\n{body}");
    assert_eq!(py_ok(secs, p.port(), pg.port, &script).trim(), "ok");
}

/// The second database of the per-database tests.
const DB2: &str = "CREATE DATABASE db2";

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
    let Some((pg, p)) = ferry_setup(opts(2)) else {
        return;
    };
    console_script(
        &pg,
        &p,
        90,
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
"#,
    );
}

/// `SHOW STATS` counts every query answered and every transaction ended for the database,
/// and the bytes both ways.
#[test]
fn stats_count_queries_and_transactions() {
    let Some((pg, p)) = ferry_setup(opts(2)) else {
        return;
    };
    console_script(
        &pg,
        &p,
        60,
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
"#,
    );
}

/// psql reaches the console as `-d ferry` and `-d pgbouncer`; an unknown command is an
/// ERROR 42601 and the session goes on; so is an extended-protocol query (0A000);
/// `SHOW CONFIG` has the proxy's settings.
#[test]
fn commands_and_errors() {
    let Some((pg, p)) = ferry_setup(opts(3)) else {
        return;
    };
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
    console_script(
        &pg,
        &p,
        60,
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
    assert 'without --config' in str(e), e
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
"#,
    );
}

/// `PAUSE` answers only once the transaction in progress has ended, and holds a new
/// client's query until `RESUME`; `SHOW STATE` says paused meanwhile.
#[test]
fn pause_waits_for_transactions_and_holds_queries_until_resume() {
    // The held query must not run into the pool wait timeout on a loaded machine.
    let Some((pg, p)) = ferry_setup(patient(2)) else {
        return;
    };
    console_script(
        &pg,
        &p,
        90,
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
"#,
    );
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

/// `SHOW DATABASES`, `SHOW USERS` and `SHOW LISTS` (PgBouncer's columns) list the databases
/// and users clients used, with the upstream, the server connections and the switches.
#[test]
fn databases_users_and_lists() {
    let Some((pg, p)) = ferry_setup(opts(2)) else {
        return;
    };
    pg.sql(DB2);
    console_script(
        &pg,
        &p,
        60,
        r#"
adm = console()
a = to('postgres')
b = to('db2')
a.execute('SELECT 1')
b.execute('SELECT 1')
for name in ['postgres', 'db2']:
    d = database(adm, name)
    assert (d['host'], d['port'], d['database']) == ('127.0.0.1', str(PG), name), d
    assert (d['pool_size'], d['pool_mode'], d['paused'], d['disabled']) == ('2', 'transaction', '0', '0'), d
    assert int(d['current_connections']) >= 1, d
assert not [r for r in show(adm, 'DATABASES') if r['name'] in ('ferry', 'pgbouncer')]
users = show(adm, 'USERS')
assert [u['name'] for u in users] == ['tester'], users
lists = {r['list']: int(r['items']) for r in show(adm, 'LISTS')}
assert lists['databases'] >= 3, lists  # postgres, db2 and the console's
assert lists['users'] == 1, lists
assert lists['used_clients'] == 3, lists
assert lists['login_clients'] == 0, lists
assert lists['used_servers'] >= 2, lists
assert lists['pools'] >= 3, lists
print('ok')
"#,
    );
}

/// `PAUSE db` waits for that database's transaction in progress only, holds that
/// database's new queries until `RESUME db`, and leaves the other database alone; its errors
/// are PgBouncer's and leave the session usable.
#[test]
fn pause_and_resume_one_database() {
    let Some((pg, p)) = ferry_setup(patient(2)) else {
        return;
    };
    pg.sql(DB2);
    console_script(
        &pg,
        &p,
        90,
        r#"
adm = console()
adm2 = console(db='pgbouncer')
other = to('postgres')
h = to('db2')
h.execute('BEGIN')
h.execute('SELECT 1')
e = console_error(adm2, 'PAUSE ferry')
assert isinstance(e, errors.SyntaxError) and 'cannot pause admin db: ferry' in str(e), e
e = console_error(adm2, 'RESUME db2')
assert 'database db2 is not paused' in str(e), e
e = console_error(adm2, 'RESUME nosuchdb')
assert 'no such database: nosuchdb' in str(e), e
e = console_error(adm2, 'PAUSE db2 postgres')
assert "invalid command 'PAUSE db2 postgres'" in str(e), e
paused = threading.Event()
def do_pause():
    adm.execute('PAUSE db2')
    paused.set()
tp = threading.Thread(target=do_pause)
tp.start()
until(lambda: database(adm2, 'db2')['paused'] == '1', 'db2 paused')
assert database(adm2, 'postgres')['paused'] == '0'
assert {r['key']: r['value'] for r in show(adm2, 'STATE')}['paused'] == 'no'
# The other database goes on; db2's open transaction holds PAUSE back.
assert other.execute('SELECT 7').fetchone()[0] == 7
assert not paused.is_set()
c2 = to('db2')
got = []
def query():
    got.append(c2.execute('SELECT 42').fetchone()[0])
tq = threading.Thread(target=query)
tq.start()
until(lambda: [r for r in show(adm2, 'CLIENTS') if r['state'] == 'waiting'], 'a waiting client')
assert [r['database'] for r in show(adm2, 'CLIENTS') if r['state'] == 'waiting'] == ['db2']
h.execute('COMMIT')
tp.join(30)
assert paused.is_set()
assert got == []
assert other.execute('SELECT 8').fetchone()[0] == 8
adm2.execute('RESUME db2')
tq.join(30)
assert got == [42], got
assert database(adm2, 'db2')['paused'] == '0'
h.execute('SELECT 1')
print('ok')
"#,
    );
}

/// `DISABLE db` refuses new logins to that database with PgBouncer's error (08P01) while
/// its open sessions and other databases go on; `ENABLE db` lets them in again.
#[test]
fn disable_refuses_new_logins_until_enable() {
    let Some((pg, p)) = ferry_setup(opts(2)) else {
        return;
    };
    pg.sql(DB2);
    console_script(
        &pg,
        &p,
        60,
        r#"
adm = console()
e = console_error(adm, 'DISABLE')
assert 'a database is required' in str(e), e
e = console_error(adm, 'ENABLE nosuchdb')
assert 'no such database: nosuchdb' in str(e), e
e = console_error(adm, 'DISABLE pgbouncer')
assert 'cannot disable admin db: pgbouncer' in str(e), e
old = to('db2')
old.execute('SELECT 1')
adm.execute('DISABLE db2')
assert database(adm, 'db2')['disabled'] == '1'
try:
    to('db2')
    raise SystemExit('login let in')
except psycopg.OperationalError as e:
    assert 'database does not allow connections: db2' in str(e), e
assert old.execute('SELECT 5').fetchone()[0] == 5
assert to('postgres').execute('SELECT 6').fetchone()[0] == 6
# PgBouncer's FATAL, SQLSTATE 08P01.
f = raw('db2')
assert (f['S'], f['C'], f['M']) == ('FATAL', '08P01', 'database does not allow connections: db2'), f
adm.execute('ENABLE db2')
assert database(adm, 'db2')['disabled'] == '0'
assert to('db2').execute('SELECT 9').fetchone()[0] == 9
print('ok')
"#,
    );
    // psql shows the refusal.
    let out = psql_console(p.port(), "ferry", None, "DISABLE db2");
    assert!(out.status.success(), "{}", show(&out));
    let out = output(&mut psql_cmd(
        p.port(),
        "tester",
        None,
        &["-d", "db2", "-c", "SELECT 1"],
    ));
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(TIMED_OUT), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("database does not allow connections: db2"),
        "{}",
        show(&out)
    );
}

/// `KILL db` drops that database's clients (idle or mid-transaction: FATAL 08P01
/// "database removed") and server connections at once, pauses it until `RESUME db`, and
/// leaves the other database alone.
#[test]
fn kill_drops_a_databases_clients_and_servers() {
    let Some((pg, p)) = ferry_setup(patient(2)) else {
        return;
    };
    pg.sql(DB2);
    console_script(
        &pg,
        &p,
        90,
        r#"
adm = console()
other = to('postgres')
other.execute('SELECT 1')
idle = to('db2')
idle.execute('SELECT 1')
busy = to('db2')
busy.execute('BEGIN')
busy.execute('SELECT 1')
r = raw('db2')
assert raw_query(r, 'SELECT 1')[-1][0] == b'Z'
assert backends('db2'), 'no db2 backends'
keep = backends('postgres')
e = console_error(adm, 'KILL ferry')
assert 'cannot kill admin db: ferry' in str(e), e
adm.execute('KILL db2')
assert not [r for r in show(adm, 'CLIENTS') if r['database'] == 'db2'], show(adm, 'CLIENTS')
assert not [r for r in show(adm, 'SERVERS') if r['database'] == 'db2'], show(adm, 'SERVERS')
# An idle client gets PgBouncer's FATAL at once, then EOF.
m = read_msg(r)
assert m is not None and m[0] == b'E', m
f = fields(m[1])
assert (f['S'], f['C'], f['M']) == ('FATAL', '08P01', 'database removed'), f
assert read_msg(r) is None
for c in (idle, busy):
    try:
        c.execute('SELECT 1')
        raise SystemExit('still connected')
    except psycopg.OperationalError:
        pass
# PostgreSQL's db2 backends end (the proxy closed them).
until(lambda: not backends('db2'), 'db2 backends gone')
assert backends('postgres') >= keep
assert other.execute('SELECT 2').fetchone()[0] == 2
assert database(adm, 'db2')['paused'] == '1'
# A new client's query waits for RESUME.
late = to('db2')
got = []
def query():
    got.append(late.execute('SELECT 3').fetchone()[0])
t = threading.Thread(target=query)
t.start()
until(lambda: [r for r in show(adm, 'CLIENTS') if r['state'] == 'waiting'], 'a waiting client')
assert got == []
adm.execute('RESUME db2')
t.join(30)
assert got == [3], got
print('ok')
"#,
    );
}

/// `RECONNECT db` closes that database's idle server connections at once and a busy one
/// when its transaction ends; new server connections replace them; the other database's
/// stay.
#[test]
fn reconnect_replaces_a_databases_server_connections() {
    let Some((pg, p)) = ferry_setup(opts(2)) else {
        return;
    };
    pg.sql(DB2);
    console_script(
        &pg,
        &p,
        90,
        r#"
adm = console()
other = to('postgres')
other.execute('SELECT 1')
keep = backends('postgres')
busy = to('db2')
busy.execute('BEGIN')
busy_pid = busy.execute('SELECT pg_backend_pid()').fetchone()[0]
# Another server connection, idle once its query is answered.
a = to('db2')
a.execute('SELECT 1')
old = backends('db2')
assert busy_pid in old and len(old) == 2, old
e = console_error(adm, 'RECONNECT pgbouncer')
assert 'cannot reconnect admin db: pgbouncer' in str(e), e
adm.execute('RECONNECT db2')
# The idle ones go now; the busy one stays until its transaction ends.
until(lambda: backends('db2') & old == {busy_pid}, 'idle db2 servers closed')
assert busy.execute('SELECT pg_backend_pid()').fetchone()[0] == busy_pid
busy.execute('COMMIT')
until(lambda: busy_pid not in backends('db2'), 'the busy server closed once released')
pid = a.execute('SELECT pg_backend_pid()').fetchone()[0]
assert pid not in old, (pid, old)
assert busy.execute('SELECT 4').fetchone()[0] == 4
assert keep <= backends('postgres'), 'the other database kept its servers'
assert other.execute('SELECT pg_backend_pid()').fetchone()[0] in keep
print('ok')
"#,
    );
}

/// What happened before any console session was open (connections then publish nothing)
/// is exact in the first session's first answers: transactions held, a client waiting,
/// the servers' pids and links, and the queries counted.
#[test]
fn the_first_console_session_sees_what_happened_before() {
    let Some((pg, p)) = ferry_setup(patient(2)) else {
        return;
    };
    console_script(
        &pg,
        &p,
        90,
        r#"
holders = [connect(PROXY) for _ in range(3)]
pids = []
for h in holders[:2]:
    h.execute('BEGIN')
    pids.append(h.execute('SELECT pg_backend_pid()').fetchone()[0])
for i in range(5):
    holders[0].execute('SELECT %s::int', (i,))
done = threading.Event()
def third():
    holders[2].execute('SELECT 1')
    done.set()
t = threading.Thread(target=third)
t.start()
# The third client's query reaches the proxy (it waits: both servers are taken).
time.sleep(1)
assert not done.is_set()
adm = console()
p = first = pool(adm)
for _ in range(400):
    # (On a loaded machine the query may come after the console session opened.)
    if p['cl_waiting'] == '1':
        break
    time.sleep(0.05)
    p = pool(adm)
assert (p['cl_active'], p['cl_waiting'], p['sv_active'], p['sv_idle']) == ('2', '1', '2', '0'), p
if first['cl_waiting'] == '1':
    # Waiting since before the session opened.
    assert int(p['maxwait']) * 1000000 + int(p['maxwait_us']) >= 500000, p
servers = show(adm, 'SERVERS')
assert sorted(int(r['remote_pid']) for r in servers) == sorted(pids), (servers, pids)
clients = [r for r in show(adm, 'CLIENTS') if r['database'] == 'postgres']
by_ptr = {r['ptr']: r for r in servers}
assert sorted(r['state'] for r in clients) == ['active', 'active', 'waiting'], clients
for c in clients:
    if c['state'] == 'active':
        assert by_ptr[c['link']]['link'] == c['ptr'], (c, servers)
st = [r for r in show(adm, 'STATS') if r['database'] == 'postgres'][0]
# BEGIN and pg_backend_pid twice, five SELECTs.
assert int(st['total_query_count']) >= 9, st
for h in holders[:2]:
    h.execute('COMMIT')
t.join(30)
assert done.is_set()
st2 = [r for r in show(adm, 'STATS') if r['database'] == 'postgres'][0]
assert int(st2['total_query_count']) == int(st['total_query_count']) + 3, (st, st2)
assert int(st2['total_wait_time']) >= 500000, st2
print('ok')
"#,
    );
}

/// `KILL_CLIENT id` (the `id` of `SHOW CLIENTS`) closes that client at once (FATAL 08P01
/// "admin forced disconnect", PgBouncer's) and no other; PgBouncer's errors for a bad or
/// unknown id; `SUSPEND` (no socket handover here) is PgBouncer's unknown command.
#[test]
fn kill_client_closes_that_client_only() {
    let Some((pg, p)) = ferry_setup(opts(2)) else {
        return;
    };
    console_script(
        &pg,
        &p,
        90,
        r#"
adm = console()
other = to('postgres')
other.execute('SELECT 1')
r = raw('postgres')
assert raw_query(r, 'SELECT 1')[-1][0] == b'Z'
port = str(r.getsockname()[1])
mine = [c for c in show(adm, 'CLIENTS') if c['port'] == port]
assert len(mine) == 1, show(adm, 'CLIENTS')
ids = [c['id'] for c in show(adm, 'CLIENTS')]
assert len(set(ids)) == len(ids), ids
e = console_error(adm, 'KILL_CLIENT nonsense')
assert 'invalid client pointer supplied' in str(e), e
e = console_error(adm, 'KILL_CLIENT 999999999')
assert 'client not found' in str(e), e
e = console_error(adm, 'SUSPEND')
assert "invalid command 'SUSPEND', use SHOW HELP;" in str(e), e
adm.execute('KILL_CLIENT ' + mine[0]['id'])
m = read_msg(r)
assert m is not None and m[0] == b'E', m
f = fields(m[1])
assert (f['S'], f['C'], f['M']) == ('FATAL', '08P01', 'admin forced disconnect'), f
assert read_msg(r) is None
until(lambda: not [c for c in show(adm, 'CLIENTS') if c['port'] == port], 'the client gone')
assert other.execute('SELECT 2').fetchone()[0] == 2
print('ok')
"#,
    );
}

/// `PAUSE db` closes that database's server connections as PgBouncer does: an idle one at
/// once, a busy one when its transaction ends, and answers once none is left; after
/// `RESUME db` new ones serve the clients.
#[test]
fn pause_closes_a_databases_server_connections() {
    let Some((pg, p)) = ferry_setup(patient(2)) else {
        return;
    };
    pg.sql(DB2);
    console_script(
        &pg,
        &p,
        90,
        r#"
adm = console()
busy = to('db2')
busy.execute('BEGIN')
busy_pid = busy.execute('SELECT pg_backend_pid()').fetchone()[0]
a = to('db2')
a.execute('SELECT 1')
old = backends('db2')
assert busy_pid in old and len(old) == 2, old
paused = threading.Event()
def do_pause():
    adm.execute('PAUSE db2')
    paused.set()
tp = threading.Thread(target=do_pause)
tp.start()
# The idle server connection closes at once; the busy one holds PAUSE back.
until(lambda: backends('db2') == {busy_pid}, 'the idle db2 server closed')
assert not paused.is_set()
busy.execute('COMMIT')
tp.join(30)
assert paused.is_set()
until(lambda: not backends('db2'), 'every db2 server closed')
adm2 = console()
assert not [s for s in show(adm2, 'SERVERS') if s['database'] == 'db2'], show(adm2, 'SERVERS')
adm2.execute('RESUME db2')
pid = a.execute('SELECT pg_backend_pid()').fetchone()[0]
assert pid not in old, (pid, old)
print('ok')
"#,
    );
}

/// `WAIT_CLOSE` answers once the server connections `RECONNECT` is closing are gone (a
/// busy one: when its transaction ends); PgBouncer's error for the console's database.
#[test]
fn wait_close_waits_for_reconnected_servers() {
    let Some((pg, p)) = ferry_setup(patient(2)) else {
        return;
    };
    console_script(
        &pg,
        &p,
        90,
        r#"
adm = console()
adm2 = console()
e = console_error(adm, 'WAIT_CLOSE pgbouncer')
assert 'cannot wait in admin db: pgbouncer' in str(e), e
# Nothing to wait for: at once.
adm.execute('WAIT_CLOSE')
busy = to('postgres')
busy.execute('BEGIN')
busy_pid = busy.execute('SELECT pg_backend_pid()').fetchone()[0]
adm.execute('RECONNECT')
done = threading.Event()
def wait_close():
    adm.execute('WAIT_CLOSE postgres')
    done.set()
t = threading.Thread(target=wait_close)
t.start()
# The busy server stays until its transaction ends, and holds WAIT_CLOSE back.
until(lambda: [s for s in show(adm2, 'SERVERS') if s['remote_pid'] == str(busy_pid)],
      'the busy server listed')
time.sleep(0.3)
assert not done.is_set()
busy.execute('COMMIT')
t.join(30)
assert done.is_set()
assert not [s for s in show(adm2, 'SERVERS') if s['remote_pid'] == str(busy_pid)]
assert busy.execute('SELECT pg_backend_pid()').fetchone()[0] != busy_pid
print('ok')
"#,
    );
}

/// `SHUTDOWN` stops the proxy as SIGTERM does: the console session and an idle client get
/// FATAL 57P01, new connections are refused, and the process exits 0.
#[test]
fn shutdown_stops_the_proxy() {
    let Some((pg, mut p)) = ferry_setup(opts(2)) else {
        return;
    };
    console_script(
        &pg,
        &p,
        90,
        r#"
import socket
adm = console()
r = raw('postgres')
assert raw_query(r, 'SELECT 1')[-1][0] == b'Z'
try:
    adm.execute('SHUTDOWN')
    raise SystemExit('SHUTDOWN answered')
except psycopg.OperationalError as e:
    assert 'terminating connection due to administrator command' in str(e), e
m = read_msg(r)
assert m is not None and m[0] == b'E', m
f = fields(m[1])
assert (f['S'], f['C']) == ('FATAL', '57P01'), f
def refused():
    try:
        socket.create_connection(('127.0.0.1', PROXY), timeout=5).close()
        return False
    except OSError:
        return True
until(refused, 'the listener closed')
print('ok')
"#,
    );
    let status = p.ferry().wait_exit(std::time::Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// `SHUTDOWN WAIT_FOR_SERVERS` answers at once, lets the transaction in progress finish on
/// its server connection, then (no server connection left) stops the proxy: the client's
/// next query (held, as under `PAUSE`) ends with the session, and the process exits 0.
#[test]
fn shutdown_wait_for_servers_lets_the_transaction_end() {
    let Some((pg, mut p)) = ferry_setup(patient(2)) else {
        return;
    };
    console_script(
        &pg,
        &p,
        90,
        r#"
adm = console()
busy = to('postgres')
busy.execute('BEGIN')
pid = busy.execute('SELECT pg_backend_pid()').fetchone()[0]
e = console_error(adm, 'SHUTDOWN WAIT_FOR_CLIENTS')
assert 'not supported' in str(e), e
adm.execute('SHUTDOWN WAIT_FOR_SERVERS')
e = console_error(adm, 'RESUME')
assert 'pooler is shutting down' in str(e), e
# The transaction goes on, on its server connection.
assert busy.execute('SELECT pg_backend_pid()').fetchone()[0] == pid
time.sleep(0.3)
assert busy.execute('SELECT 5').fetchone()[0] == 5
busy.execute('COMMIT')
until(lambda: pid not in backends('postgres'), 'the server closed')
# Its next query is held (paused) until the stop, which ends the session.
try:
    busy.execute('SELECT 1')
    raise SystemExit('still served')
except psycopg.OperationalError:
    pass
print('ok')
"#,
    );
    let status = p.ferry().wait_exit(std::time::Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}
