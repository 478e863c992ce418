//! Chaos tests of `ferry proxy --protocol postgres` (the transaction pooler) in front of real
//! PostgreSQL 15 clusters (tests/common/postgres.rs: one cluster per test, killed and removed
//! on drop).
//!
//! Worlds: packet loss and DNS failure run in a network namespace pair of their own
//! (`chaos::world`: PostgreSQL, the proxy and the clients all in namespace `a`, loss from an
//! nftables `numgen random` rule on the PostgreSQL port there, deleted with the namespace);
//! the others on loopback, with an in-process `ferry-chaos-relay` between the proxy and
//! PostgreSQL where a test needs delay, resets or half-open connections.
//!
//! The workload that checks data ("the ledger", [`LEDGER`]): psycopg clients each insert
//! their own unique ids, two per transaction (`BEGIN`, `SET LOCAL`, `INSERT`, `COMMIT`),
//! reconnecting after an error, and report which transactions were acknowledged (COMMIT
//! answered), which may or may not have committed (an error at COMMIT), and which certainly
//! did not (an error before COMMIT was sent). The table has no unique key: afterwards every
//! acknowledged id is there exactly once, no id is there twice, and no id of a transaction
//! that never sent COMMIT is there (a server connection left mid-transaction and handed to
//! another client would commit it). pgbench (`-c 8`, simple and extended protocol) inserts
//! one row per transaction tagged with its client id: each client's rows number exactly its
//! transactions.
//!
//! Asserted: behaviour (errors only where a fault hits a transaction in flight, never a
//! wrong result, never a hang past generous bounds, recovery after the fault, gauges back
//! to consistent values, breakers open and close), never timing beyond generous bounds; the
//! proxy's peak RSS (`VmHWM`) stays under 256 MiB in each test.
//!
//! Without `--response-timeout`, a query on a PostgreSQL that hangs (SIGSTOP) waits as
//! long as it hangs, as with PgBouncer's default `query_timeout = 0`
//! ([`chaos_postgres_sigstop_without_response_timeout_waits`]).
//!
//! Needs PostgreSQL 15, pgbench, psycopg in the test venv; root, `ip` and `nft` for the
//! namespace tests. Skips (with the reason printed) otherwise. Every loop is bounded in
//! count and time.

#[path = "common/chaos.rs"]
mod chaos;
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::postgres::{
    bounded, output, pg_bin, psql, psql_ok, psycopg_available, py_ok, show, PoolOpts, Pooler,
    Postgres,
};
use ferry_chaos_relay::{Dir, Faults, Relay};
use netns::NetnsPair;

/// The proxy's FATAL for a server connection that broke under a client.
const LOST: &str = "ferry proxy: server connection lost";
/// Bound on the proxy's peak resident memory.
const HWM_LIMIT_KIB: u64 = 256 * 1024;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Peak RSS (`VmHWM`, KiB) of process `pid`.
fn hwm(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn memory_bounded(pid: u32) {
    let h = hwm(pid);
    assert!(h > 0, "the proxy died under chaos");
    assert!(h < HWM_LIMIT_KIB, "proxy VmHWM {h} KiB");
}

/// Sum of every sample of metric `name` (any labels).
fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `f` every 100 ms until it is true; false after `limit`.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(ms(100));
    }
    f()
}

const TABLES: &str = "CREATE TABLE chaos_ids (id bigint NOT NULL, client int NOT NULL); \
                      CREATE TABLE chaos_pgb (client int NOT NULL, v int NOT NULL)";

/// The ledger workload (after a line setting `N` clients, `T` transactions each, ids from
/// `BASE`, `PAUSE` seconds between transactions, `LIMIT` seconds at most). Prints lines
/// `ack ID…`, `maybe ID…`, `never ID…`, `err TEXT`, `lat SECONDS…`.
const LEDGER: &str = r#"
t_end = time.time() + LIMIT
lock = threading.Lock()
ack, maybe, never, errs, lats = [], [], [], [], []
def client(c):
    conn = None
    for i in range(T):
        if time.time() > t_end:
            break
        a = BASE + (c * T + i) * 2
        stage = 'connect'
        t0 = time.time()
        try:
            if conn is None:
                conn = connect(PROXY)
            cur = conn.cursor()
            stage = 'begin'
            cur.execute("BEGIN")
            cur.execute("SET LOCAL chaos.mark = 'mid'")
            cur.execute("INSERT INTO chaos_ids (id, client) VALUES (%s, %s), (%s, %s)",
                        (a, c, a + 1, c))
            stage = 'commit'
            cur.execute("COMMIT")
            with lock:
                ack.extend([a, a + 1])
                lats.append(time.time() - t0)
        except Exception as e:
            with lock:
                errs.append(f"{stage}: {type(e).__name__}: {' '.join(str(e).split())[:160]}")
                if stage == 'commit':
                    maybe.extend([a, a + 1])
                elif stage == 'begin':
                    never.extend([a, a + 1])
            try:
                conn.close()
            except Exception:
                pass
            conn = None
            time.sleep(0.05)
        if PAUSE:
            time.sleep(PAUSE)
    if conn is not None:
        conn.close()
ths = [threading.Thread(target=client, args=(c,)) for c in range(N)]
for t in ths: t.start()
for t in ths: t.join()
print('ack', *ack)
print('maybe', *maybe)
print('never', *never)
for e in errs: print('err', e)
print('lat', *lats)
"#;

/// What the ledger's clients saw.
#[derive(Debug, Default)]
struct Ledger {
    ack: Vec<i64>,
    maybe: HashSet<i64>,
    never: HashSet<i64>,
    errors: Vec<String>,
    lat: Vec<f64>,
}

impl Ledger {
    fn parse(text: &str) -> Ledger {
        let mut l = Ledger::default();
        for line in text.lines() {
            let (k, rest) = line.split_once(' ').unwrap_or((line, ""));
            let ids = || rest.split_whitespace().map(|x| x.parse::<i64>().unwrap());
            match k {
                "ack" => l.ack.extend(ids()),
                "maybe" => l.maybe.extend(ids()),
                "never" => l.never.extend(ids()),
                "err" => l.errors.push(rest.to_string()),
                "lat" => l
                    .lat
                    .extend(rest.split_whitespace().map(|x| x.parse::<f64>().unwrap())),
                _ => {}
            }
        }
        l
    }

    fn median_lat(&self) -> f64 {
        let mut v = self.lat.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// Compare with the ids the table holds (all clusters' together).
    fn check(&self, rows: &[i64]) {
        let mut seen: HashMap<i64, u32> = HashMap::new();
        for &r in rows {
            *seen.entry(r).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
        assert!(twice.is_empty(), "ids committed twice: {twice:?}");
        let lost: Vec<_> = self.ack.iter().filter(|i| !seen.contains_key(i)).collect();
        assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
        let ghosts: Vec<_> = self.never.iter().filter(|i| seen.contains_key(i)).collect();
        assert!(
            ghosts.is_empty(),
            "rows of transactions that never sent COMMIT: {ghosts:?}"
        );
        let acked: HashSet<i64> = self.ack.iter().copied().collect();
        let strangers: Vec<_> = seen
            .keys()
            .filter(|i| !acked.contains(i) && !self.maybe.contains(i))
            .collect();
        assert!(strangers.is_empty(), "rows nobody committed: {strangers:?}");
    }
}

/// The ledger's shape.
#[derive(Clone, Copy, Debug)]
struct Load {
    clients: u32,
    txns: u32,
    base: i64,
    pause: f64,
    limit: u64,
}

impl Load {
    fn new(clients: u32, txns: u32, base: i64) -> Load {
        Load {
            clients,
            txns,
            base,
            pause: 0.0,
            limit: 60,
        }
    }

    /// Run it through the proxy on `proxy_port` (in the calling thread's namespace).
    fn run(self, proxy_port: u16, pg_port: u16) -> Ledger {
        let script = format!(
            "N, T, BASE, PAUSE, LIMIT = {}, {}, {}, {}, {}\n{LEDGER}",
            self.clients, self.txns, self.base, self.pause, self.limit
        );
        Ledger::parse(&py_ok(self.limit + 60, proxy_port, pg_port, &script))
    }
}

/// Every id in `chaos_ids` of the cluster on `port` (in the calling thread's namespace).
fn ids(port: u16) -> Vec<i64> {
    psql_ok(port, "postgres", None, "SELECT id FROM chaos_ids")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect()
}

/// `pgbench -n -c CLIENTS -t TXNS -M MODE` through the pooler on `port`: one row per
/// transaction into `chaos_pgb`, tagged with pgbench's client id.
fn pgbench(port: u16, mode: &str, clients: u32, txns: u32, tag: &str) -> std::process::Output {
    let dir = common::tmp_dir("pgchaos", tag);
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "\\set v random(1, 1000000)\nBEGIN;\nINSERT INTO chaos_pgb (client, v) VALUES (:client_id, :v);\n\
         COMMIT;\n",
    )
    .unwrap();
    let out = output(
        bounded(180, pg_bin("pgbench"))
            .args(["-n", "-j", "2", "-M", mode])
            .args(["-c", &clients.to_string(), "-t", &txns.to_string()])
            .arg("-f")
            .arg(&script)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "tester"])
            .arg("postgres")
            .env("PGCONNECT_TIMEOUT", "20"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// pgbench's rows in the cluster on `pg_port`: each of `clients` has exactly `txns`; then
/// the table is emptied.
fn check_pgbench(pg_port: u16, clients: u32, txns: u32) {
    let per = psql_ok(
        pg_port,
        "postgres",
        None,
        "SELECT client, count(*) FROM chaos_pgb GROUP BY client ORDER BY client",
    );
    let want: Vec<String> = (0..clients).map(|c| format!("{c}|{txns}")).collect();
    assert_eq!(
        per.lines().collect::<Vec<_>>(),
        want,
        "pgbench rows per client"
    );
    psql_ok(pg_port, "postgres", None, "TRUNCATE chaos_pgb");
}

/// pgbench in both protocols, each must succeed with every row there once.
fn pgbench_both(port: u16, pg_port: u16, clients: u32, txns: u32) {
    for mode in ["simple", "extended"] {
        let out = pgbench(port, mode, clients, txns, mode);
        assert!(out.status.success(), "pgbench -M {mode}: {}", show(&out));
        check_pgbench(pg_port, clients, txns);
    }
}

/// nftables rules in a namespace: drop `percent`% of the loopback packets to or from
/// PostgreSQL's `port` (between the proxy and PostgreSQL only), counted.
fn pg_port_loss(port: u16, percent: u32) -> String {
    format!(
        "table inet chaos {{\n\
         chain out {{ type filter hook output priority 0; policy accept; \
         oifname \"lo\" tcp dport {port} numgen random mod 100 < {percent} counter drop; \
         oifname \"lo\" tcp sport {port} numgen random mod 100 < {percent} counter drop; }}\n\
         }}\n"
    )
}

/// A namespace pair with PostgreSQL started inside namespace `a` (its processes inherit
/// the namespace), or `None` after reporting a skip.
fn netns_world() -> Option<(NetnsPair, Postgres)> {
    let w = chaos::world(pg_bin("postgres").to_str().unwrap(), "--version")?;
    if !psycopg_available() {
        return None;
    }
    let pg = NetnsPair::in_netns(&w.a, Postgres::start).unwrap()?;
    let port = pg.port;
    NetnsPair::in_netns(&w.a, move || psql_ok(port, "postgres", None, TABLES)).unwrap();
    Some((w, pg))
}

/// Loopback: a PostgreSQL with the tables, or `None` after reporting a skip.
fn cluster() -> Option<Postgres> {
    let pg = Postgres::start()?;
    if !psycopg_available() {
        return None;
    }
    pg.sql(TABLES);
    Some(pg)
}

fn pool(upstream: &str, size: u32, extra: &[&str]) -> Pooler {
    Pooler::start(
        upstream,
        &PoolOpts {
            size: Some(size),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..PoolOpts::default()
        },
    )
}

fn proxy_metrics(p: &Pooler) -> String {
    common::admin_metrics(p.admin().expect("ferry"))
}

/// Once every client left: no server connection counted active, connecting or waited
/// for, and the idle ones are all the open ones (bounded wait for the last closes).
fn gauges_settle(p: &Pooler) {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(15), || {
        let m = proxy_metrics(p);
        let v = |n| gauge(&m, n);
        let ok = v("ferry_proxy_pool_active_connections") == 0.0
            && v("ferry_proxy_pool_connecting") == 0.0
            && v("ferry_proxy_pool_waiting_requests") == 0.0
            && v("ferry_proxy_pool_idle_connections") == v("ferry_proxy_upstream_connections");
        last = m;
        ok
    });
    let pick: Vec<&str> = last
        .lines()
        .filter(|l| {
            l.starts_with("ferry_proxy_pool_") || l.starts_with("ferry_proxy_upstream_connections")
        })
        .collect();
    assert!(ok, "gauges did not settle:\n{}", pick.join("\n"));
}

/// The postmaster `pid` and its children (the backends and auxiliary processes).
fn pg_family(pid: u32) -> Vec<i32> {
    let mut v = vec![pid as i32];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid …: the comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            v.push(n);
        }
    }
    v
}

/// PostgreSQL frozen (SIGSTOP to all its processes); SIGCONT on drop.
struct Frozen(Vec<i32>);

impl Frozen {
    fn new(pg: &Postgres) -> Frozen {
        let f = Frozen(pg_family(pg.pid()));
        for &p in &f.0 {
            // SAFETY: signalling PostgreSQL processes this test started.
            unsafe { libc::kill(p, libc::SIGSTOP) };
        }
        f
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: as in `new`.
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
    }
}

/// Immediate shutdown (SIGQUIT: the postmaster stops its backends at once, no checkpoint),
/// then wait for it.
fn crash(pg: &mut Postgres) {
    // SAFETY: signalling the postmaster this test started.
    unsafe { libc::kill(pg.pid() as i32, libc::SIGQUIT) };
    pg.stop();
}

/// 5% packet loss between the proxy and PostgreSQL (both ways): pgbench `-c 8 -t 100` in
/// the simple and the extended protocol and the ledger complete without an error, every
/// committed row there exactly once.
#[test]
fn chaos_postgres_packet_loss_5_percent() {
    let Some((w, pg)) = netns_world() else { return };
    let port = pg.port;
    let proxy = chaos::Proxy::start_named(
        &w.a,
        "postgres",
        &[pg.addr()],
        &["--pool-size", "8", "--connect-timeout", "10s"],
    );
    let pid = proxy.child.id();
    NetnsPair::nft(&w.a, &pg_port_loss(port, 5)).expect("nft loss rule");
    NetnsPair::in_netns(&w.a, move || pgbench_both(8080, port, 8, 100)).unwrap();
    let l = NetnsPair::in_netns(&w.a, move || Load::new(4, 50, 0).run(8080, port)).unwrap();
    let dropped = NetnsPair::dropped_packets(&w.a);
    NetnsPair::clear_loss(&w.a).expect("clear loss");
    eprintln!(
        "loss: {} acked, {dropped} packets dropped, median {:.3}s",
        l.ack.len(),
        l.median_lat()
    );
    assert!(dropped > 0, "the loss rule dropped nothing");
    assert!(l.errors.is_empty(), "errors under loss: {:?}", l.errors);
    l.check(&NetnsPair::in_netns(&w.a, move || ids(port)).unwrap());
    memory_bounded(pid);
}

/// 50 ± 20 ms each way between the proxy and PostgreSQL (relay): still correct, no error;
/// a transaction (four round trips) takes longer than the delay.
#[test]
fn chaos_postgres_latency_jitter_via_relay() {
    let Some(pg) = cluster() else { return };
    let relay = Relay::start(
        "127.0.0.1:0".parse().unwrap(),
        pg.addr().parse().unwrap(),
        Faults::none().with_latency(ms(50), ms(20)),
    )
    .expect("relay");
    let p = pool(&relay.local_addr().to_string(), 8, &[]);
    pgbench_both(p.port(), pg.port, 8, 10);
    let l = Load::new(4, 10, 0).run(p.port(), pg.port);
    eprintln!("latency: median transaction {:.3}s", l.median_lat());
    assert!(l.errors.is_empty(), "errors under latency: {:?}", l.errors);
    assert_eq!(l.ack.len(), 80);
    assert!(l.median_lat() >= 0.1, "median {:.3}s", l.median_lat());
    l.check(&ids(pg.port));
    gauges_settle(&p);
    memory_bounded(p.pid());
}

/// PostgreSQL crashes (immediate shutdown) under load and comes back on the same port:
/// in-flight transactions get errors (the load finishes within its bound: no hang), the
/// breaker opens and closes again, new transactions work after the restart, and no
/// acknowledged commit is lost (`synchronous_commit = on` for the clients' role).
#[test]
fn chaos_postgres_killed_mid_load_and_restarted() {
    let Some(mut pg) = cluster() else { return };
    pg.sql("ALTER ROLE tester SET synchronous_commit = on");
    let p = pool(&pg.addr(), 4, &["--breaker-open", "1s"]);
    let (pp, pgp) = (p.port(), pg.port);
    let load = std::thread::spawn(move || {
        Load {
            clients: 8,
            txns: 100_000,
            base: 0,
            pause: 0.02,
            limit: 14,
        }
        .run(pp, pgp)
    });
    std::thread::sleep(Duration::from_secs(3));
    crash(&mut pg);
    assert!(
        wait_until(Duration::from_secs(20), || gauge(
            &proxy_metrics(&p),
            "ferry_proxy_breaker_opened_total"
        ) >= 1.0),
        "the breaker never opened"
    );
    std::thread::sleep(Duration::from_secs(1));
    pg.restart();
    assert!(
        wait_until(Duration::from_secs(30), || psql(
            pp, "tester", None, "SELECT 1"
        )
        .status
        .success()),
        "no transaction through the proxy after the restart"
    );
    assert!(
        wait_until(Duration::from_secs(30), || gauge(
            &proxy_metrics(&p),
            "ferry_proxy_breaker_state"
        ) == 0.0),
        "the breaker did not close"
    );
    let mut l = load.join().unwrap();
    eprintln!(
        "crash: {} acked, {} maybe, {} errors, e.g. {:?}",
        l.ack.len(),
        l.maybe.len(),
        l.errors.len(),
        l.errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(!l.errors.is_empty(), "nothing in flight failed?");
    assert!(!l.ack.is_empty());
    let after = Load::new(4, 20, 10_000_000).run(pp, pgp);
    assert!(
        after.errors.is_empty(),
        "after the restart: {:?}",
        after.errors
    );
    l.ack.extend(after.ack);
    l.check(&ids(pg.port));
    gauges_settle(&p);
    memory_bounded(p.pid());
}

/// PostgreSQL hangs (SIGSTOP) with `--response-timeout 1s`: a query gets an error within
/// bounds; after SIGCONT things recover.
#[test]
fn chaos_postgres_sigstop_with_response_timeout() {
    let Some(pg) = cluster() else { return };
    let p = pool(&pg.addr(), 2, &["--response-timeout", "1s"]);
    assert_eq!(psql_ok(p.port(), "tester", None, "SELECT 1"), "1");
    let frozen = Frozen::new(&pg);
    let t0 = Instant::now();
    let out = psql(p.port(), "tester", None, "SELECT 42");
    let took = t0.elapsed();
    eprintln!("sigstop: error after {took:?}: {}", show(&out));
    assert!(
        !out.status.success(),
        "answered while frozen: {}",
        show(&out)
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ferry proxy"), "the proxy's error: {err}");
    drop(frozen);
    assert!(
        wait_until(Duration::from_secs(30), || psql(
            p.port(),
            "tester",
            None,
            "SELECT 1"
        )
        .status
        .success()),
        "no recovery after SIGCONT"
    );
    let l = Load::new(2, 10, 0).run(p.port(), pg.port);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    l.check(&ids(pg.port));
    gauges_settle(&p);
    memory_bounded(p.pid());
}

/// Without `--response-timeout`, a query on a hung PostgreSQL waits (PgBouncer's default,
/// `query_timeout = 0`): still waiting after 3 s, answered correctly after SIGCONT.
#[test]
fn chaos_postgres_sigstop_without_response_timeout_waits() {
    let Some(pg) = cluster() else { return };
    let p = pool(&pg.addr(), 2, &[]);
    assert_eq!(psql_ok(p.port(), "tester", None, "SELECT 1"), "1");
    let frozen = Frozen::new(&pg);
    let port = p.port();
    let q = std::thread::spawn(move || psql(port, "tester", None, "SELECT 42"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!q.is_finished(), "the query did not wait for PostgreSQL");
    drop(frozen);
    let out = q.join().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    gauges_settle(&p);
    memory_bounded(p.pid());
}

/// Server connections reset mid-transaction (each after 3000 bytes of replies),
/// then all half-open (replies dropped) for 2 s, through a relay, under the ledger: clients
/// see errors; no transaction that never sent COMMIT is committed (a broken or
/// mid-transaction server connection is never handed to another client); afterwards fresh
/// clients find no transaction and no leftover state, and the gauges settle.
#[test]
fn chaos_postgres_resets_and_half_open_mid_transaction() {
    let Some(pg) = cluster() else { return };
    let relay = Relay::start(
        "127.0.0.1:0".parse().unwrap(),
        pg.addr().parse().unwrap(),
        Faults::none()
            .with_reset(3000, 1.0, Dir::ToDownstream)
            .with_seed(7),
    )
    .expect("relay");
    let p = pool(
        &relay.local_addr().to_string(),
        4,
        &["--response-timeout", "1s", "--breaker-failures", "0"],
    );
    let (pp, pgp) = (p.port(), pg.port);
    let load = std::thread::spawn(move || {
        Load {
            clients: 6,
            txns: 100_000,
            base: 0,
            pause: 0.01,
            limit: 10,
        }
        .run(pp, pgp)
    });
    std::thread::sleep(Duration::from_secs(4));
    relay.set_faults(Faults::none().with_half_open(Dir::ToDownstream));
    std::thread::sleep(Duration::from_secs(2));
    relay.set_faults(Faults::none());
    let l = load.join().unwrap();
    let st = relay.stats();
    eprintln!(
        "resets: {} acked, {} errors ({} resets, {} bytes dropped), e.g. {:?}",
        l.ack.len(),
        l.errors.len(),
        st.resets,
        st.bytes_dropped,
        l.errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(st.resets > 0, "the relay reset nothing");
    assert!(!l.errors.is_empty(), "no client saw the faults");
    assert!(!l.ack.is_empty());
    l.check(&ids(pg.port));
    let probe = py_ok(
        60,
        pp,
        pgp,
        r#"
bad = []
conns = [connect(PROXY) for _ in range(8)]
for r in range(5):
    for c in conns:
        row = c.execute("SELECT txid_current_if_assigned(), current_setting('chaos.mark', true), "
                        "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())").fetchone()
        if row[0] is not None or row[1] not in (None, '') or row[2] != 0:
            bad.append(row)
print('bad', bad)
"#,
    );
    assert_eq!(probe.trim(), "bad []", "leftover server state");
    gauges_settle(&p);
    memory_bounded(p.pid());
}

/// Two clusters behind the proxy; one crashes: new transactions go to the other, whose
/// clients keep sub-second latency (no cascading failure); no acknowledged commit is lost
/// on either (the crashed one is restarted to count its rows).
#[test]
fn chaos_postgres_two_upstreams_one_killed() {
    let Some(mut pg1) = cluster() else { return };
    let Some(pg2) = cluster() else { return };
    pg1.sql("ALTER ROLE tester SET synchronous_commit = on");
    let p = pool(
        &format!("{},{}", pg1.addr(), pg2.addr()),
        4,
        &["--breaker-open", "5s"],
    );
    let mut l = Load::new(4, 20, 0).run(p.port(), pg2.port);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert!(
        !ids(pg1.port).is_empty() && !ids(pg2.port).is_empty(),
        "both clusters served"
    );
    crash(&mut pg1);
    let after = Load {
        clients: 4,
        txns: 40,
        base: 1_000_000,
        pause: 0.02,
        limit: 60,
    }
    .run(p.port(), pg2.port);
    let mut lat = after.lat.clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let slow = lat.iter().filter(|&&x| x > 1.0).count();
    eprintln!(
        "one killed: {} acked, {} errors {:?}, median {:.3}s, {slow} over 1 s",
        after.ack.len(),
        after.errors.len(),
        after.errors.iter().take(3).collect::<Vec<_>>(),
        after.median_lat()
    );
    assert!(after.errors.len() <= 8, "errors: {:?}", after.errors);
    assert!(after.ack.len() >= 2 * 4 * 32, "acked {}", after.ack.len());
    assert!(
        after.median_lat() < 1.0,
        "median {:.3}s",
        after.median_lat()
    );
    assert!(slow <= lat.len() / 10, "{slow} of {} over 1 s", lat.len());
    pg1.restart();
    let mut rows = ids(pg1.port);
    rows.extend(ids(pg2.port));
    l.ack.extend(after.ack);
    l.maybe.extend(after.maybe);
    l.never.extend(after.never);
    l.check(&rows);
    memory_bounded(p.pid());
}

/// An upstream name that does not resolve (`.invalid`, inside a namespace with no route
/// out: the lookup fails at once): the proxy starts and sends every transaction to the
/// other upstream, without an error.
#[test]
fn chaos_postgres_upstream_dns_failure() {
    let Some((w, pg)) = netns_world() else { return };
    let port = pg.port;
    let proxy = chaos::Proxy::start_named(
        &w.a,
        "postgres",
        &["nonexistent.invalid:5432".to_string(), pg.addr()],
        &["--pool-size", "4"],
    );
    let l = NetnsPair::in_netns(&w.a, move || Load::new(4, 20, 0).run(8080, port)).unwrap();
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert_eq!(l.ack.len(), 160);
    l.check(&NetnsPair::in_netns(&w.a, move || ids(port)).unwrap());
    memory_bounded(proxy.child.id());
}

/// PostgreSQL ends idle sessions after 40 ms (`idle_session_timeout`), so pooled server
/// connections keep dying while clients take them from the idle list: a client whose
/// server died before it sent anything there is given another server connection — never
/// FATAL 08006 "server connection lost" — and the gauges stay exact. (PostgreSQL's own
/// FATAL 57P05 can reach a client whose query crossed the timeout on the wire.)
#[test]
fn chaos_postgres_idle_servers_die_clients_retried() {
    idle_servers_die(
        3,
        &[],
        "connect(PROXY)",
        r#"v = conn.execute(f"SELECT {i}").fetchone()[0]
            assert v == i, (v, i)"#,
    );
}

/// [`chaos_postgres_idle_servers_die_clients_retried`] with clients whose named prepared
/// statements the proxy keeps (psycopg `prepare=True`): they too are given another server
/// connection, where their statements are prepared again — never FATAL 08006. (No
/// breaker: each 57P05 of a query that crossed the timeout counts as a failure, and a
/// burst of five would open it, failing everything for a while.)
#[test]
fn chaos_postgres_idle_servers_die_tracked_clients_retried() {
    idle_servers_die(
        4,
        &["--breaker-failures", "0"],
        "connect(PROXY, prepare_threshold=1000)",
        r#"v = conn.execute("SELECT %s::int + %s::int", [i, c], prepare=True).fetchone()[0]
            assert v == i + c, (v, i, c)"#,
    );
}

/// What both idle-timeout tests do: 8 clients, 120 queries each 30-50 ms apart, through a
/// pool of 8; `connect` is the Python call that connects, `query` the lines that run and
/// check query `i` of client `c`. Only PostgreSQL's 57P05 may reach a client.
fn idle_servers_die(seed: u32, proxy_args: &[&str], connect: &str, query: &str) {
    let Some(pg) = cluster() else { return };
    pg.sql("ALTER ROLE tester SET idle_session_timeout = '40ms'");
    let p = pool(&pg.addr(), 8, proxy_args);
    let script = r#"
import random
random.seed(SEED)
errs, oks = [], [0]
lock = threading.Lock()
def client(c):
    conn = None
    for i in range(120):
        try:
            if conn is None:
                conn = CONNECT
            QUERY
            with lock:
                oks[0] += 1
        except psycopg.Error as e:
            with lock:
                errs.append(' '.join(str(e).split())[:160])
            try:
                conn.close()
            except Exception:
                pass
            conn = None
        time.sleep(random.uniform(0.030, 0.050))
ths = [threading.Thread(target=client, args=(c,)) for c in range(8)]
for t in ths: t.start()
for t in ths: t.join()
print('ok', oks[0])
for e in errs: print('err', e)
"#
    .replace("SEED", &seed.to_string())
    .replace("CONNECT", connect)
    .replace("QUERY", query);
    let out = py_ok(120, p.port(), pg.port, &script);
    let errs: Vec<&str> = out.lines().filter(|l| l.starts_with("err")).collect();
    eprintln!("{}", out.lines().next().unwrap_or(""));
    let lost: Vec<&&str> = errs
        .iter()
        .filter(|e| !e.contains("idle-session timeout"))
        .collect();
    eprintln!("{} errors ({} other than 57P05)", errs.len(), lost.len());
    assert!(lost.is_empty(), "{lost:?}");
    gauges_settle(&p);
    memory_bounded(p.pid());
}

/// Storms: PostgreSQL terminates every idle server connection of the pool
/// (`pg_terminate_backend`) and at once 24 clients send a query each, 30 rounds. Clients see
/// a right answer, PostgreSQL's FATAL 57P01 (their query reached a dying backend) or the
/// proxy's "server connection lost" (their query was written to a backend that died before
/// its FATAL could be read: a reset drops it; not retried, it may have run), nothing else;
/// afterwards the gauges are exact (before the fix, a server that died in the loop turn a
/// client took it from the idle list left `active` too high, here by 3 to 10). The share of
/// "server connection lost" fell from 21-36 to 0-9 of 720 queries in trial runs with the
/// retry of never-written bytes, but it is timing-dependent, so not asserted.
#[test]
fn chaos_postgres_idle_servers_terminated_in_storms() {
    let Some(pg) = cluster() else { return };
    let p = pool(&pg.addr(), 8, &["--breaker-failures", "0"]);
    let out = py_ok(
        180,
        p.port(),
        pg.port,
        r#"
import random
random.seed(5)
N, R = 24, 30
bar = threading.Barrier(N + 1)
errs, oks = [], [0]
lock = threading.Lock()
def client(c):
    conn = None
    for r in range(R):
        try:
            bar.wait(timeout=60)
            bar.wait(timeout=60)
        except threading.BrokenBarrierError:
            return
        time.sleep(random.uniform(0, 0.002))
        try:
            if conn is None:
                conn = connect(PROXY)
            v = conn.execute(f"SELECT {r}").fetchone()[0]
            assert v == r, (v, r)
            with lock:
                oks[0] += 1
        except psycopg.Error as e:
            with lock:
                errs.append(' '.join(str(e).split())[:160])
            try:
                conn.close()
            except Exception:
                pass
            conn = None
def killer():
    d = direct()
    for r in range(R):
        bar.wait(timeout=60)
        d.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE usename = 'tester' AND state = 'idle'")
        bar.wait(timeout=60)
        time.sleep(0.1)
ths = [threading.Thread(target=client, args=(c,)) for c in range(N)]
ths.append(threading.Thread(target=killer))
for t in ths: t.start()
for t in ths: t.join()
print('ok', oks[0])
for e in errs: print('err', e)
"#,
    );
    let errs: Vec<&str> = out.lines().filter(|l| l.starts_with("err")).collect();
    eprintln!("{}", out.lines().next().unwrap_or(""));
    let lost = errs.iter().filter(|e| e.contains(LOST)).count();
    let other: Vec<&&str> = errs
        .iter()
        .filter(|e| !e.contains("administrator command") && !e.contains(LOST))
        .collect();
    eprintln!("{} errors ({lost} server connection lost)", errs.len());
    assert!(other.is_empty(), "{other:?}");
    gauges_settle(&p);
    memory_bounded(p.pid());
}
