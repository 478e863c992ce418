//! The admin console, PgBouncer's: a client of the database `ferry` (or `pgbouncer`, for
//! existing tooling) is not pooled; the proxy answers its simple-query commands itself
//! (`SHOW POOLS`, `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW STATS`, `SHOW CONFIG`,
//! `SHOW VERSION`, `SHOW STATE`, `SHOW HELP`), every value a text column, and `PAUSE` /
//! `RESUME`.
//!
//! `PAUSE` (for every database) holds every client that needs a server connection from
//! then on (listed as waiting; `pool_wait_timeout` still applies) and answers once no server
//! connection serves a client (checked every [`TICK`], from one `TICK` on: whatever took a
//! server connection before `PAUSE` has published it by then). `RESUME` lets the held
//! clients go on (within a `TICK`). Server connections stay open meanwhile.
//!
//! What the console shows comes from a [`Registry`]: every client and server connection
//! keeps a [`Handle`] (an entry in its worker's shard, removed when it is dropped) whose
//! state, link and times it publishes in atomics after each event it handles; the
//! per-database counters are atomics too. A console query locks each shard only to clone
//! its list of entries, so the I/O path never waits on it for long, and memory is one entry
//! per open connection plus one counter set per database seen (at most [`MAX_DBS`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use ferry_driver::relay::Peer;
use ferry_driver::WorkerCtx;
use ferry_postgres::auth::ScramServer;
use ferry_postgres::backend::{self, sqlstate, TxStatus};
use ferry_postgres::{message, server};
use ferry_proto::Instant;

use super::{PgDown, PgShared, PgUp, Phase, PoolMode, SPhase};

/// Database names that reach the console instead of a pool.
pub(super) const DATABASES: [&str; 2] = ["ferry", "pgbouncer"];
/// Databases with their own counters for `SHOW STATS`; more share the entry `*`.
pub(super) const MAX_DBS: usize = 10_000;
/// Longest console message (a `Query` longer than this is a protocol violation).
pub(super) const MAX_MESSAGE: usize = 64 * 1024;
/// SQLSTATE `syntax_error`, PgBouncer's console's code for commands it does not know.
const SYNTAX_ERROR: &str = "42601";
/// How often a held client checks for `RESUME`, and a console session waiting on `PAUSE`
/// for server connections to be released.
pub(super) const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether a startup's database is the console.
pub(super) fn is_console(database: &str) -> bool {
    DATABASES.contains(&database)
}

/// What a connection is doing, as `SHOW CLIENTS`/`SHOW SERVERS` say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum State {
    /// Logging in (a client: startup and authentication; a server: its login).
    Login = 0,
    /// A client logged in (holding a server connection or not); a server linked to a client.
    Active = 1,
    /// A client waiting for a server connection.
    Waiting = 2,
    /// A server connection idle in its pool.
    Idle = 3,
    /// A server connection being reset (`DISCARD ALL`) before it goes back to its pool.
    Used = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Active,
            2 => State::Waiting,
            3 => State::Idle,
            4 => State::Used,
            _ => State::Login,
        }
    }

    fn name(self) -> &'static str {
        match self {
            State::Login => "login",
            State::Active => "active",
            State::Waiting => "waiting",
            State::Idle => "idle",
            State::Used => "used",
        }
    }
}

/// Counters of one database (`SHOW STATS`).
#[derive(Debug, Default)]
pub(super) struct DbStats {
    /// Transactions ended (ReadyForQuery `I` from a server to a client).
    xacts: AtomicU64,
    /// Queries answered (every ReadyForQuery from a server to a client).
    queries: AtomicU64,
    /// Bytes read from clients.
    received: AtomicU64,
    /// Bytes written to clients.
    sent: AtomicU64,
    /// Microseconds clients waited for a server connection.
    wait_us: AtomicU64,
}

/// A pool as `SHOW POOLS` groups it: user and database.
type PoolName = (Box<str>, Box<str>);

/// One connection as the console sees it.
#[derive(Debug)]
struct Conn {
    client: bool,
    /// Its worker (peers are per worker).
    worker: usize,
    /// The proxy's id of the connection (`ptr`, and `link` of its peer).
    id: u64,
    user: Box<str>,
    database: Box<str>,
    /// The pool it belongs to (`SHOW POOLS`): the client's user and database.
    pool: PoolName,
    addr: Option<SocketAddr>,
    app: Box<str>,
    /// Unix microseconds.
    connect_time: u64,
    state: AtomicU8,
    /// Unix microseconds of the last change of state or link.
    since: AtomicU64,
    /// The id of the connection linked to it, plus one (0: none).
    link: AtomicU64,
    pid: AtomicI32,
}

/// One worker's connections.
#[derive(Debug, Default)]
struct Shard {
    conns: HashMap<u64, Arc<Conn>>,
}

type ShardRef = Arc<Mutex<Shard>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `now` of the worker's clock as Unix time in µs (no clock read).
fn unix_micros(ctx: &WorkerCtx, now: Instant) -> u64 {
    ctx.clock.unix_origin_nanos().saturating_add(now.as_nanos()) / 1000
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Every connection of the proxy and the per-database counters.
#[derive(Debug)]
pub(super) struct Registry {
    shards: Vec<ShardRef>,
    dbs: Mutex<HashMap<Box<str>, Arc<DbStats>>>,
    /// `PAUSE` is in effect.
    paused: AtomicBool,
}

/// Who a connection is, when it registers.
#[derive(Debug)]
pub(super) struct Entry<'a> {
    pub client: bool,
    pub me: Peer,
    pub user: &'a str,
    pub database: &'a str,
    /// The client's user and database (for a server: its pool's).
    pub pool: (&'a str, &'a str),
    pub addr: Option<SocketAddr>,
    pub app: &'a str,
}

impl Registry {
    /// A registry for `workers` I/O workers.
    pub(super) fn new(workers: usize) -> Registry {
        Registry {
            shards: (0..workers.max(1)).map(|_| ShardRef::default()).collect(),
            dbs: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
        }
    }

    /// Whether `PAUSE` is in effect.
    pub(super) fn paused(&self) -> bool {
        self.paused.load(SeqCst)
    }

    /// Whether some server connection serves a client (or is being reset).
    fn busy(&self) -> bool {
        self.snapshot().iter().any(|c| {
            let st = State::from_u8(c.state.load(Relaxed));
            if c.client {
                c.link.load(Relaxed) != 0
            } else {
                matches!(st, State::Active | State::Used)
            }
        })
    }

    fn db(&self, name: &str) -> Arc<DbStats> {
        let mut dbs = lock(&self.dbs);
        if let Some(s) = dbs.get(name) {
            return s.clone();
        }
        let name = if dbs.len() >= MAX_DBS { "*" } else { name };
        dbs.entry(name.into()).or_default().clone()
    }

    /// Register a connection of worker `worker`; it is listed until the handle drops.
    pub(super) fn register(&self, worker: usize, e: Entry<'_>) -> Handle {
        let now = unix_us();
        let id = e.me.pack();
        let conn = Arc::new(Conn {
            client: e.client,
            worker,
            id,
            user: e.user.into(),
            database: e.database.into(),
            pool: (e.pool.0.into(), e.pool.1.into()),
            addr: e.addr,
            app: e.app.into(),
            connect_time: now,
            state: AtomicU8::new(State::Login as u8),
            since: AtomicU64::new(now),
            link: AtomicU64::new(0),
            pid: AtomicI32::new(0),
        });
        let shard = self.shards[worker % self.shards.len()].clone();
        lock(&shard).conns.insert(id, conn.clone());
        let db = self.db(e.pool.1);
        Handle { shard, conn, db }
    }

    /// Every connection now.
    fn snapshot(&self) -> Vec<Arc<Conn>> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(lock(s).conns.values().cloned());
        }
        all.sort_by_key(|c| (c.connect_time, c.id));
        all
    }
}

/// A connection's entry in the [`Registry`] (removed on drop).
#[derive(Debug)]
pub(super) struct Handle {
    shard: ShardRef,
    conn: Arc<Conn>,
    db: Arc<DbStats>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.shard).conns.remove(&self.conn.id);
    }
}

impl Handle {
    /// Publish the connection's state, the peer it is linked to and (a server) the
    /// backend's pid, at `now_us` (Unix time, µs). Cheap when nothing changed (a few
    /// relaxed loads).
    pub(super) fn set(&self, state: State, link: Option<Peer>, pid: i32, now_us: u64) {
        let c = &self.conn;
        let link = link.map_or(0, |p| p.pack() + 1);
        let old = c.state.load(Relaxed);
        if old == state as u8 && c.link.load(Relaxed) == link {
            return;
        }
        let now = now_us;
        if old == State::Waiting as u8 && state != State::Waiting {
            let waited = now.saturating_sub(c.since.load(Relaxed));
            self.db.wait_us.fetch_add(waited, Relaxed);
        }
        c.state.store(state as u8, Relaxed);
        c.link.store(link, Relaxed);
        c.since.store(now, Relaxed);
        if pid != 0 {
            c.pid.store(pid, Relaxed);
        }
    }

    /// Bytes read from (`received`) and written to (`sent`) a client.
    pub(super) fn bytes(&self, received: usize, sent: usize) {
        if received > 0 {
            self.db.received.fetch_add(received as u64, Relaxed);
        }
        if sent > 0 {
            self.db.sent.fetch_add(sent as u64, Relaxed);
        }
    }

    /// Replies a server passed to its client: `queries` ReadyForQuery, `xacts` of them `I`.
    pub(super) fn replies(&self, queries: u32, xacts: u32) {
        if queries > 0 {
            self.db.queries.fetch_add(u64::from(queries), Relaxed);
        }
        if xacts > 0 {
            self.db.xacts.fetch_add(u64::from(xacts), Relaxed);
        }
    }
}

/// A console session's protocol state.
#[derive(Debug, Default)]
pub(super) struct Console {
    /// An extended-protocol message was refused: drop messages up to the next `Sync`.
    skipping: bool,
    /// A `PAUSE` waits for server connections to be released (checked first at the next
    /// tick); nothing more is read meanwhile.
    pausing: bool,
}

/// What a console session's input gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// Everything complete was answered; more bytes are needed.
    More,
    /// A `PAUSE` waits: call again at the next [`TICK`].
    Pausing,
    /// The client sent `Terminate`.
    Terminate,
    /// A protocol violation (the FATAL's message).
    Bad(String),
}

impl Console {
    /// Answer the complete messages in `input` into `out`.
    pub(super) fn serve(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        sh: &PgShared,
    ) -> Served {
        if self.pausing {
            if !sh.admin.paused() {
                backend::error_response(
                    out,
                    "ERROR",
                    SYNTAX_ERROR,
                    "ferry console: RESUME came before every server connection was released",
                );
            } else if sh.admin.busy() {
                return Served::Pausing;
            } else {
                command_complete(out, "PAUSE");
            }
            self.pausing = false;
            backend::ready_for_query(out, TxStatus::Idle);
        }
        loop {
            let f = match message::frame(input, MAX_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => return Served::More,
                Err(e) => return Served::Bad(format!("ferry console: {e}")),
            };
            let m = input.split_to(f.len);
            match f.tag {
                b'X' => return Served::Terminate,
                b'Q' => {
                    self.skipping = false;
                    let body = &m[5..];
                    let text = body.strip_suffix(&[0]).unwrap_or(body);
                    let text = String::from_utf8_lossy(text);
                    if query(out, &text, sh) {
                        self.pausing = true;
                        return Served::Pausing;
                    }
                    backend::ready_for_query(out, TxStatus::Idle);
                }
                b'S' => {
                    self.skipping = false;
                    backend::ready_for_query(out, TxStatus::Idle);
                }
                b'H' => {}
                _ => {
                    if !self.skipping {
                        self.skipping = true;
                        backend::error_response(
                            out,
                            "ERROR",
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "ferry console: only the simple query protocol is supported (use psql, or simple queries)",
                        );
                    }
                }
            }
        }
    }
}

impl PgDown {
    /// A console login: authenticate as other clients do; `--client-user`, when set, is
    /// the only user let in (also without a client password).
    pub(super) fn console_auth(&mut self, user: &str) {
        let sh = self.shared.clone();
        let Phase::Auth(l) = &mut self.phase else {
            return;
        };
        let other_user = sh
            .cfg
            .postgres
            .client_user
            .as_deref()
            .is_some_and(|u| u != user);
        match sh.scram.clone() {
            Some(secret) => {
                let server = Box::new(ScramServer::new(secret, &sh.nonce()));
                l.authenticate(if other_user {
                    server::Auth::ScramRefused(server)
                } else {
                    server::Auth::Scram(server)
                });
            }
            None if other_user => l.refuse(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "ferry proxy: the console is for user \"{}\" only",
                    sh.cfg.postgres.client_user.as_deref().unwrap_or_default()
                ),
            ),
            None => l.authenticate(server::Auth::Trust),
        }
        self.flush_login();
    }

    /// A console client authenticated: greet it as a server would.
    pub(super) fn console_greet(&mut self) {
        let mut b = BytesMut::with_capacity(256);
        let app = [("application_name", self.app.as_deref().unwrap_or(""))];
        server::greet(&mut b, PARAMETERS.into_iter().chain(app), None);
        self.io.out.push(b.freeze());
        self.phase = Phase::Admin(Box::default());
        self.login_deadline = None;
    }

    /// Answer the console commands read.
    pub(super) fn console(&mut self, now: Instant) {
        let Phase::Admin(c) = &mut self.phase else {
            return;
        };
        let mut out = BytesMut::new();
        let r = c.serve(&mut self.io.input, &mut out, &self.shared);
        if !out.is_empty() {
            self.io.out.push(out.freeze());
        }
        match r {
            Served::More => {}
            Served::Pausing => self.tick = Some(now + TICK),
            Served::Terminate => self.finish(),
            Served::Bad(m) => self.fatal(sqlstate::PROTOCOL_VIOLATION, &m),
        }
    }

    /// `PAUSE` is in effect: hold the client (instead of asking for a server connection)
    /// until `RESUME` or its `pool_wait_timeout`. `false`: not paused.
    pub(super) fn hold(&mut self, now: Instant) -> bool {
        if !self.shared.admin.paused() {
            return false;
        }
        self.held = true;
        if self.waiting.is_none() {
            self.waiting = Some(now + self.shared.cfg.pool_wait_timeout);
        }
        self.tick = Some(now + TICK);
        true
    }

    /// [`TICK`]: a console session's `PAUSE` may be done, a held client may go on.
    pub(super) fn on_tick(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if matches!(self.phase, Phase::Admin(_)) {
            self.console(now);
            return;
        }
        if !self.held || self.done {
            return;
        }
        if self.waiting.is_none() {
            // Its wait ran out (the client got its error).
            self.held = false;
        } else if self.shared.admin.paused() {
            self.tick = Some(now + TICK);
        } else {
            self.held = false;
            self.waiting = None;
            self.acquire(ctx, now);
        }
    }

    /// Publish the client's state for the console; `before`: the input's length before the
    /// event (what it consumed was received).
    pub(super) fn show(&self, ctx: &WorkerCtx, now: Instant, before: usize) {
        let Some(a) = &self.adm else { return };
        a.bytes(before.saturating_sub(self.io.input.len()), 0);
        let (st, link) = match self.phase {
            Phase::Auth(_) | Phase::Login => (State::Login, None),
            Phase::Admin(_) => (State::Active, None),
            Phase::Ready if self.waiting.is_some() => (State::Waiting, None),
            Phase::Ready => (State::Active, self.srv.map(|s| s.peer)),
        };
        a.set(st, link, 0, unix_micros(ctx, now));
    }
}

impl PgUp {
    /// List this server connection (logging in as `user`) for the console.
    pub(super) fn register(&mut self, ctx: &WorkerCtx, user: &str) {
        let addr = self.shared.stats.upstreams[self.up].current();
        let k = self.key.clone();
        self.adm = Some(self.shared.admin.register(
            ctx.index,
            Entry {
                client: false,
                me: self.io.me(),
                user,
                database: &k.database,
                pool: (&k.user, &k.database),
                addr,
                app: "",
            },
        ));
    }

    /// Publish the server connection's state for the console.
    pub(super) fn show(&self, ctx: &WorkerCtx, now: Instant) {
        let Some(a) = &self.adm else { return };
        let (st, link) = match self.phase {
            SPhase::Cancel => return,
            SPhase::Login => (State::Login, None),
            SPhase::Ready => match self.owner {
                Some(o) => (State::Active, Some(o)),
                None => (State::Idle, None),
            },
            SPhase::Resetting => (State::Used, None),
        };
        a.set(st, link, self.pid, unix_micros(ctx, now));
    }
}

/// The ParameterStatus set a console session is greeted with.
pub(super) const PARAMETERS: [(&str, &str); 6] = [
    ("server_version", "15.0 (ferry console)"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
];

/// One simple `Query` (commands separated by `;`), answered into `out` (without its
/// ReadyForQuery). The first error ends it. `true`: it ended with a `PAUSE` now in effect,
/// whose CommandComplete waits until no server connection serves a client.
fn query(out: &mut BytesMut, text: &str, sh: &PgShared) -> bool {
    let cmds: Vec<Vec<&str>> = text
        .split(';')
        .map(|c| c.split_whitespace().collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect();
    if cmds.is_empty() {
        out.put_u8(b'I');
        out.put_i32(4);
        return false;
    }
    let last = cmds.len() - 1;
    for (i, words) in cmds.iter().enumerate() {
        let r = if words[0].eq_ignore_ascii_case("PAUSE") {
            pause(words, i == last, sh)
        } else {
            command(out, words, sh).map(|()| false)
        };
        match r {
            Ok(true) => return true,
            Ok(false) => {}
            Err(msg) => {
                backend::error_response(out, "ERROR", SYNTAX_ERROR, &msg);
                return false;
            }
        }
    }
    false
}

/// `PAUSE` (`last`: the last command of its query): `Ok(true)`, now paused.
fn pause(words: &[&str], last: bool, sh: &PgShared) -> Result<bool, String> {
    if words.len() > 1 {
        return Err(
            "ferry console: PAUSE of one database is not supported (PAUSE alone pauses them all)"
                .into(),
        );
    }
    if !last {
        return Err("ferry console: PAUSE must be the last command of its query".into());
    }
    if sh.admin.paused.swap(true, SeqCst) {
        return Err("already suspended/paused".into());
    }
    Ok(true)
}

/// One command; `Err`: the ERROR's message.
fn command(out: &mut BytesMut, words: &[&str], sh: &PgShared) -> Result<(), String> {
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let u: Vec<&str> = upper.iter().map(String::as_str).collect();
    match u[..] {
        ["SHOW", "HELP"] => help(out),
        ["SHOW", "VERSION"] => {
            let v = format!("ferry proxy {}", env!("CARGO_PKG_VERSION"));
            table(out, &["version"], [vec![v]]);
        }
        ["SHOW", "POOLS"] => pools(out, sh),
        ["SHOW", "CLIENTS"] => conns(out, sh, true),
        ["SHOW", "SERVERS"] => conns(out, sh, false),
        ["SHOW", "STATS"] => stats(out, sh),
        ["SHOW", "CONFIG"] => config(out, sh),
        ["SHOW", "STATE"] => {
            let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
            let paused = sh.admin.paused();
            let rows = [
                vec!["active".to_string(), yes(!paused)],
                vec!["paused".to_string(), yes(paused)],
                vec!["suspended".to_string(), yes(false)],
            ];
            table(out, &["key", "value"], rows);
        }
        ["RESUME"] => {
            if !sh.admin.paused.swap(false, SeqCst) {
                return Err("pooler is not paused/suspended".into());
            }
            command_complete(out, "RESUME");
        }
        ["RESUME" | "RELOAD" | "SUSPEND" | "SHUTDOWN" | "KILL" | "DISABLE" | "ENABLE"
        | "RECONNECT" | "SET" | "WAIT_CLOSE", ..] => {
            return Err(format!(
                "ferry console: {} is not supported (SHOW HELP lists the commands)",
                u[0]
            ))
        }
        _ => {
            return Err(format!(
                "invalid command '{}', use SHOW HELP;",
                words.join(" ")
            ))
        }
    }
    Ok(())
}

fn help(out: &mut BytesMut) {
    backend::notice_response(
        out,
        "NOTICE",
        "00000",
        "Console usage\n\tSHOW HELP|POOLS|CLIENTS|SERVERS|STATS|CONFIG|STATE|VERSION\n\tPAUSE\n\tRESUME",
    );
    command_complete(out, "SHOW");
}

/// A whole result: RowDescription, a DataRow per row, CommandComplete `SHOW`.
fn table<R: AsRef<[String]>>(out: &mut BytesMut, cols: &[&str], rows: impl IntoIterator<Item = R>) {
    row_description(out, cols);
    for r in rows {
        data_row(out, r.as_ref().iter().map(|v| Some(v.as_str())));
    }
    command_complete(out, "SHOW");
}

/// `RowDescription` of text columns (type `text`, OID 25).
pub(super) fn row_description(out: &mut BytesMut, cols: &[&str]) {
    let start = out.len();
    out.put_u8(b'T');
    out.put_i32(0);
    out.put_i16(cols.len() as i16);
    for c in cols {
        out.put_slice(c.as_bytes());
        out.put_u8(0);
        out.put_i32(0); // table OID
        out.put_i16(0); // column number
        out.put_i32(25); // type: text
        out.put_i16(-1); // variable length
        out.put_i32(-1); // no type modifier
        out.put_i16(0); // text format
    }
    patch_len(out, start);
}

/// `DataRow` of text values (`None`: NULL).
pub(super) fn data_row<'a>(
    out: &mut BytesMut,
    vals: impl ExactSizeIterator<Item = Option<&'a str>>,
) {
    let start = out.len();
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(vals.len() as i16);
    for v in vals {
        match v {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    patch_len(out, start);
}

/// `CommandComplete` with `tag`.
pub(super) fn command_complete(out: &mut BytesMut, tag: &str) {
    let start = out.len();
    out.put_u8(b'C');
    out.put_i32(0);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
    patch_len(out, start);
}

fn patch_len(out: &mut BytesMut, start: usize) {
    let n = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&n.to_be_bytes());
}

fn mode(sh: &PgShared) -> &'static str {
    match sh.cfg.postgres.pool_mode {
        PoolMode::Session => "session",
        _ => "transaction",
    }
}

/// `SHOW POOLS`: one row per (database, user) with connections.
fn pools(out: &mut BytesMut, sh: &PgShared) {
    #[derive(Default)]
    struct Row {
        cl_active: u64,
        cl_waiting: u64,
        sv_active: u64,
        sv_idle: u64,
        sv_used: u64,
        sv_login: u64,
        maxwait_us: u64,
    }
    let now = unix_us();
    let mut rows: Vec<(PoolName, Row)> = Vec::new();
    for c in sh.admin.snapshot() {
        let i = match rows.iter().position(|(k, _)| *k == c.pool) {
            Some(i) => i,
            None => {
                rows.push((c.pool.clone(), Row::default()));
                rows.len() - 1
            }
        };
        let r = &mut rows[i].1;
        let st = State::from_u8(c.state.load(Relaxed));
        match (c.client, st) {
            (true, State::Active) => r.cl_active += 1,
            (true, State::Waiting) => {
                r.cl_waiting += 1;
                r.maxwait_us = r.maxwait_us.max(now.saturating_sub(c.since.load(Relaxed)));
            }
            (false, State::Active) => r.sv_active += 1,
            (false, State::Idle) => r.sv_idle += 1,
            (false, State::Used) => r.sv_used += 1,
            (false, State::Login) => r.sv_login += 1,
            _ => {}
        }
    }
    rows.sort_by(|a, b| (&a.0 .1, &a.0 .0).cmp(&(&b.0 .1, &b.0 .0)));
    let mode = mode(sh);
    let cols = [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
    ];
    table(
        out,
        &cols,
        rows.into_iter().map(|((user, db), r)| {
            vec![
                db.into(),
                user.into(),
                r.cl_active.to_string(),
                r.cl_waiting.to_string(),
                r.sv_active.to_string(),
                r.sv_idle.to_string(),
                r.sv_used.to_string(),
                r.sv_login.to_string(),
                (r.maxwait_us / 1_000_000).to_string(),
                (r.maxwait_us % 1_000_000).to_string(),
                mode.to_string(),
            ]
        }),
    );
}

/// `SHOW CLIENTS` (`clients`) or `SHOW SERVERS`.
fn conns(out: &mut BytesMut, sh: &PgShared, clients: bool) {
    let now = unix_us();
    let cols = [
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "request_time",
        "wait",
        "wait_us",
        "ptr",
        "link",
        "remote_pid",
        "application_name",
    ];
    let rows = sh
        .admin
        .snapshot()
        .into_iter()
        .filter(|c| c.client == clients)
        .map(|c| {
            let st = State::from_u8(c.state.load(Relaxed));
            let since = c.since.load(Relaxed);
            let wait = if st == State::Waiting {
                now.saturating_sub(since)
            } else {
                0
            };
            let link = c.link.load(Relaxed);
            vec![
                if c.client { "C" } else { "S" }.to_string(),
                c.user.to_string(),
                c.database.to_string(),
                st.name().to_string(),
                c.addr.map_or_else(String::new, |a| a.ip().to_string()),
                c.addr.map_or_else(String::new, |a| a.port().to_string()),
                timestamp(c.connect_time),
                timestamp(since),
                (wait / 1_000_000).to_string(),
                (wait % 1_000_000).to_string(),
                ptr(c.worker, c.id),
                if link == 0 {
                    String::new()
                } else {
                    ptr(c.worker, link - 1)
                },
                c.pid.load(Relaxed).to_string(),
                c.app.to_string(),
            ]
        });
    table(out, &cols, rows);
}

/// `SHOW STATS`: the counters kept per database (no timings: none are measured).
fn stats(out: &mut BytesMut, sh: &PgShared) {
    let mut dbs: Vec<(Box<str>, Arc<DbStats>)> = lock(&sh.admin.dbs)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    dbs.sort_by(|a, b| a.0.cmp(&b.0));
    let cols = [
        "database",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_wait_time",
    ];
    table(
        out,
        &cols,
        dbs.into_iter().map(|(name, s)| {
            vec![
                name.into(),
                s.xacts.load(Relaxed).to_string(),
                s.queries.load(Relaxed).to_string(),
                s.received.load(Relaxed).to_string(),
                s.sent.load(Relaxed).to_string(),
                s.wait_us.load(Relaxed).to_string(),
            ]
        }),
    );
}

/// `SHOW CONFIG`: the proxy's PostgreSQL settings (none changeable at run time).
fn config(out: &mut BytesMut, sh: &PgShared) {
    let c = &sh.cfg;
    let pg = &c.postgres;
    let secs = |d: std::time::Duration| format!("{}", d.as_secs_f64());
    let ups: Vec<String> = sh
        .stats
        .upstreams
        .iter()
        .map(|u| u.addr.to_string())
        .collect();
    let kv: Vec<(&str, String)> = vec![
        ("upstreams", ups.join(",")),
        ("pool_mode", mode(sh).into()),
        ("pool_size", pg.pool_size.to_string()),
        (
            "max_prepared_statements",
            pg.max_prepared_statements.to_string(),
        ),
        ("max_message_bytes", pg.max_message_bytes.to_string()),
        (
            "auth_type",
            if pg.client_password.is_some() {
                "scram-sha-256"
            } else {
                "trust"
            }
            .into(),
        ),
        ("client_user", pg.client_user.clone().unwrap_or_default()),
        (
            "upstream_user",
            pg.upstream_user.clone().unwrap_or_default(),
        ),
        ("connect_timeout", secs(c.connect_timeout)),
        ("idle_timeout", secs(c.idle_timeout)),
        ("pool_wait_timeout", secs(c.pool_wait_timeout)),
        (
            "response_timeout",
            pg.response_timeout.map(secs).unwrap_or_default(),
        ),
    ];
    table(
        out,
        &["key", "value", "changeable"],
        kv.into_iter()
            .map(|(k, v)| vec![k.to_string(), v, "no".to_string()]),
    );
}

/// A connection's id as `SHOW CLIENTS`/`SHOW SERVERS` show it (`ptr`, `link`): its
/// worker and its packed peer.
fn ptr(worker: usize, packed: u64) -> String {
    format!("{worker:x}.{packed:x}")
}

/// Unix microseconds as `YYYY-MM-DD HH:MM:SS UTC` (PgBouncer's format).
fn timestamp(us: u64) -> String {
    let c = ferry_http1::date::Civil::from_unix(us / 1_000_000);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a backend message stream into (tag, body) pairs.
    fn messages(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let n = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            v.push((b[0], b[5..1 + n].to_vec()));
            b = &b[1 + n..];
        }
        v
    }

    #[test]
    fn row_description_is_text_columns() {
        let mut b = BytesMut::new();
        row_description(&mut b, &["database", "cl_active"]);
        let m = messages(&b);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, b'T');
        let body = &m[0].1;
        assert_eq!(&body[..2], &[0, 2]);
        let mut p = &body[2..];
        for name in ["database", "cl_active"] {
            let z = p.iter().position(|&c| c == 0).unwrap();
            assert_eq!(&p[..z], name.as_bytes());
            p = &p[z + 1..];
            assert_eq!(&p[..4], &[0, 0, 0, 0]);
            assert_eq!(&p[6..10], &25i32.to_be_bytes());
            assert_eq!(&p[10..12], &(-1i16).to_be_bytes());
            assert_eq!(&p[16..18], &[0, 0]);
            p = &p[18..];
        }
        assert!(p.is_empty());
        // Its length field covers exactly the message.
        assert_eq!(
            b.len(),
            1 + i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize
        );
    }

    #[test]
    fn data_row_has_lengths_and_nulls() {
        let mut b = BytesMut::new();
        data_row(&mut b, [Some("ab"), None, Some("")].into_iter());
        assert_eq!(
            &b[..],
            &[b'D', 0, 0, 0, 20, 0, 3, 0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]
                [..]
        );
    }

    #[test]
    fn command_complete_is_nul_terminated() {
        let mut b = BytesMut::new();
        command_complete(&mut b, "SHOW");
        assert_eq!(&b[..], b"C\0\0\0\x09SHOW\0");
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(timestamp(1_709_210_096_000_000), "2024-02-29 12:34:56 UTC");
    }

    fn shared() -> Arc<PgShared> {
        let ups: Vec<crate::Upstream> = vec!["127.0.0.1:5432".parse().unwrap()];
        let stats = Arc::new(crate::metrics::ProxyStats::new("postgres", &ups, 1));
        let mut cfg = crate::config::ProxyConfig::new(ups);
        cfg.postgres.pool_size = 7;
        PgShared::new(cfg, 2, stats)
    }

    fn peer(token: usize) -> Peer {
        Peer { token, gen: 1 }
    }

    /// The text values of every DataRow.
    fn rows(m: &[(u8, Vec<u8>)]) -> Vec<Vec<String>> {
        m.iter()
            .filter(|m| m.0 == b'D')
            .map(|(_, b)| {
                let n = i16::from_be_bytes([b[0], b[1]]) as usize;
                let mut p = &b[2..];
                (0..n)
                    .map(|_| {
                        let l = i32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                        let v = String::from_utf8(p[4..4 + l].to_vec()).unwrap();
                        p = &p[4 + l..];
                        v
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn show_pools_counts_registered_connections() {
        let sh = shared();
        let e = |client, me, db| Entry {
            client,
            me: peer(me),
            user: "u",
            database: db,
            pool: ("u", db),
            addr: None,
            app: "",
        };
        let c1 = sh.admin.register(0, e(true, 1, "d"));
        let c2 = sh.admin.register(1, e(true, 2, "d"));
        let s1 = sh.admin.register(1, e(false, 3, "d"));
        c1.set(State::Active, Some(peer(3)), 0, 1);
        s1.set(State::Active, Some(peer(1)), 4242, 1);
        c2.set(State::Waiting, None, 0, 1);
        let mut out = BytesMut::new();
        query(&mut out, "show pools", &sh);
        let m = messages(&out);
        assert_eq!(m.iter().map(|m| m.0).collect::<Vec<_>>(), b"TDC");
        let r = &rows(&m)[0];
        assert_eq!(&r[..8], ["d", "u", "1", "1", "1", "0", "0", "0"]);
        assert_eq!(r[10], "transaction");
        // Gone from the lists once dropped.
        drop((c1, c2, s1));
        let mut out = BytesMut::new();
        query(&mut out, "SHOW SERVERS;", &sh);
        assert!(rows(&messages(&out)).is_empty());
    }

    #[test]
    fn unknown_commands_are_errors_and_empty_queries_empty() {
        let sh = shared();
        let mut out = BytesMut::new();
        query(&mut out, "SHOW VERSION; BOGUS 1; SHOW VERSION", &sh);
        let m = messages(&out);
        assert_eq!(m.iter().map(|m| m.0).collect::<Vec<_>>(), b"TDCE");
        let e = String::from_utf8_lossy(&m[3].1);
        assert!(e.contains("C42601\0"), "{e}");
        assert!(
            e.contains("invalid command 'BOGUS 1', use SHOW HELP;"),
            "{e}"
        );
        let mut out = BytesMut::new();
        query(&mut out, " ; ", &sh);
        assert_eq!(&out[..], b"I\0\0\0\x04");
    }

    #[test]
    fn extended_protocol_is_refused_until_sync() {
        let sh = shared();
        let mut c = Console::default();
        let mut input = BytesMut::new();
        for (tag, body) in [
            (b'P', &b"\0SHOW POOLS\0\0\0"[..]),
            (b'B', &b"\0\0\0\0\0\0\0\0"[..]),
            (b'S', &b""[..]),
            (b'Q', &b"SHOW CONFIG\0"[..]),
            (b'X', &b""[..]),
        ] {
            input.put_u8(tag);
            input.put_i32(4 + body.len() as i32);
            input.put_slice(body);
        }
        let mut out = BytesMut::new();
        assert_eq!(c.serve(&mut input, &mut out, &sh), Served::Terminate);
        let m = messages(&out);
        let tags: Vec<u8> = m.iter().map(|m| m.0).collect();
        assert_eq!(tags[..2], *b"EZ", "one ERROR, then ReadyForQuery at Sync");
        assert_eq!(tags[2], b'T');
        assert_eq!(*tags.last().unwrap(), b'Z');
        let cfg = rows(&m);
        assert!(
            cfg.contains(&vec!["pool_size".into(), "7".into(), "no".into()]),
            "{cfg:?}"
        );
    }

    #[test]
    fn console_databases() {
        assert!(is_console("ferry"));
        assert!(is_console("pgbouncer"));
        assert!(!is_console("postgres"));
        assert!(!is_console("Ferry"));
    }

    #[test]
    fn states_round_trip() {
        for s in [
            State::Login,
            State::Active,
            State::Waiting,
            State::Idle,
            State::Used,
        ] {
            assert_eq!(State::from_u8(s as u8), s);
        }
    }
}
