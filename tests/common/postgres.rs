//! Real PostgreSQL peers for the end-to-end tests of `ferry proxy --protocol postgres`: a
//! PostgreSQL 15 cluster per test (copied from a template initdb'd once per machine and
//! version, started on a free loopback port, killed and removed on drop), a PgBouncer with
//! the same shape, the proxy under test (`ferry`, or PgBouncer when `FERRY_PG_POOLER=pgbouncer`
//! to check the tests themselves against a well-known pooler), and bounded runs of psql,
//! pgbench, Python (psycopg 3) and a raw protocol client.
//!
//! The cluster's roles (all in database `postgres`, whose `public` schema everyone may
//! create in, and may use the superuser's new tables): `postgres` (superuser; trust),
//! `tester` and `other` (trust over TCP; `tester` may `SET ROLE reader`), `app`
//! (SCRAM-SHA-256, password [`APP_PW`]) and `app_md5` (an MD5 hash, password [`MD5_PW`]).
//!
//! As root (CI), PostgreSQL and PgBouncer refuse to run: their processes run as the
//! `postgres` user (created by Debian's `postgresql` package) and their directories belong
//! to it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{free_port, python, skip_or_fail, tmp_dir, Server};

/// The SCRAM-SHA-256 user's password.
pub const APP_PW: &str = "app-secret";
/// The MD5 user's password.
pub const MD5_PW: &str = "md5-secret";
/// Bump when the template's contents change (users, pg_hba.conf).
const TEMPLATE_VERSION: u32 = 3;

/// The directory of PostgreSQL's programs (`FERRY_PG_BIN`, else Debian 12's PostgreSQL 15).
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("FERRY_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// One PostgreSQL program (`initdb`, `postgres`, `psql`, `pgbench`, `pg_isready`).
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bin_dir().join(name)
}

/// Whether PostgreSQL is installed (else the caller skips).
pub fn available() -> bool {
    ["initdb", "postgres", "psql", "pgbench", "pg_isready"]
        .iter()
        .all(|b| pg_bin(b).exists())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The `postgres` user's uid and gid (only needed as root).
fn pg_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    panic!("running as root and there is no `postgres` user (apt-get install postgresql)");
}

/// Run `cmd` as the `postgres` user when we are root.
fn as_pg(cmd: &mut Command) -> &mut Command {
    if is_root() {
        let (uid, gid) = pg_ids();
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    cmd
}

/// Give `path` to the `postgres` user when we are root.
fn give_to_pg(path: &Path) {
    if is_root() {
        let (uid, gid) = pg_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

/// `timeout -k 5 SECS PROGRAM`: every child program runs bounded.
pub fn bounded(secs: u64, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", &secs.to_string()]).arg(program);
    c
}

/// Exit code of `timeout` when it had to stop the program.
pub const TIMED_OUT: i32 = 124;

/// Run `cmd` (stdin closed) and collect its output.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// Stdout and stderr of `out`, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The template data directory (initdb'd once, users and pg_hba.conf in place), made on the
/// first call in this machine (atomically: a rename).
fn template() -> PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let uid = unsafe { libc::geteuid() }; // SAFETY: no preconditions, cannot fail.
    let root = std::env::temp_dir();
    // One template per PostgreSQL installation (FERRY_PG_BIN may name another version).
    let bin: String = pg_bin_dir()
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = root.join(format!("ferry-pg-template-v{TEMPLATE_VERSION}-{uid}{bin}"));
    if dir.join("ferry-ready").exists() {
        return dir;
    }
    let tmp = root.join(format!(
        "ferry-pg-template-v{TEMPLATE_VERSION}-{uid}{bin}.tmp{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    give_to_pg(&tmp);
    let data = tmp.join("data");
    let out = output(
        as_pg(&mut bounded(120, pg_bin("initdb")))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale", "C"]),
    );
    assert!(out.status.success(), "initdb failed: {}", show(&out));
    // Who may log in how (first match wins).
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all tester 127.0.0.1/32 trust\n\
         host all other 127.0.0.1/32 trust\n\
         host all app_md5 127.0.0.1/32 md5\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    // Roles, created in single-user mode (no server needed).
    let sql = format!(
        "CREATE ROLE tester LOGIN;\n\
         CREATE ROLE other LOGIN;\n\
         CREATE ROLE reader NOLOGIN;\n\
         GRANT reader TO tester;\n\
         CREATE ROLE app LOGIN PASSWORD '{APP_PW}';\n\
         SET password_encryption = 'md5';\n\
         CREATE ROLE app_md5 LOGIN PASSWORD '{MD5_PW}';\n\
         GRANT CREATE ON SCHEMA public TO PUBLIC;\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON TABLES TO PUBLIC;\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON SEQUENCES TO PUBLIC;\n"
    );
    let mut child = as_pg(&mut bounded(60, pg_bin("postgres")))
        .arg("--single")
        .arg("-D")
        .arg(&data)
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postgres --single");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("ERROR"),
        "postgres --single: {}",
        show(&out)
    );
    std::fs::write(tmp.join("ferry-ready"), "").unwrap();
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test made it meanwhile.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(dir.join("ferry-ready").exists(), "no template at {dir:?}");
    dir
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A PostgreSQL cluster of its own on a free loopback port; stopped and removed on drop.
pub struct Postgres {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl Postgres {
    /// Start one, or `None` (after reporting a skip) when PostgreSQL is not installed.
    pub fn start() -> Option<Postgres> {
        if !available() {
            skip_or_fail(&format!(
                "PostgreSQL not installed ({:?}; scripts/install-test-deps)",
                pg_bin_dir()
            ));
            return None;
        }
        let template = template();
        let dir = tmp_dir("pg", &SEQ.fetch_add(1, Ordering::Relaxed).to_string());
        give_to_pg(&dir);
        let out = output(
            Command::new("cp")
                .arg("-a")
                .arg(template.join("data"))
                .arg(dir.join("data")),
        );
        assert!(out.status.success(), "copy template: {}", show(&out));
        let sock = dir.join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        give_to_pg(&sock);
        for _attempt in 0..5 {
            let mut pg = Postgres {
                child: None,
                port: free_port(),
                dir: dir.clone(),
            };
            if pg.launch() {
                return Some(pg);
            }
            pg.dir = PathBuf::new(); // keep the directory for the next attempt
        }
        panic!("postgres did not start; see {:?}", dir.join("log"));
    }

    /// Start the postmaster on `self.port` and wait (bounded) until it accepts; false if it
    /// exited (the port was taken meanwhile).
    fn launch(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = as_pg(&mut Command::new(pg_bin("postgres")))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(["-c", "shared_buffers=16MB", "-c", "logging_collector=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            let ready = output(
                bounded(10, pg_bin("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(["-U", "postgres", "-d", "postgres", "-t", "2"]),
            );
            if ready.status.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres on port {} not ready within 30 s; log:\n{}",
            self.port,
            self.log()
        );
    }

    /// Its server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("postgres running").id()
    }

    /// Stop it (fast shutdown: sessions are terminated with 57P01) and wait (bounded).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Start it again on the same port after [`stop`](Self::stop).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running postgres");
        assert!(
            self.launch(),
            "postgres did not restart on port {}: {}",
            self.port,
            self.log()
        );
    }

    /// Run `sql` directly as the superuser (psql, bounded) and return its trimmed output
    /// (unaligned, tuples only); panics on any error.
    pub fn sql(&self, sql: &str) -> String {
        psql_ok(self.port, "postgres", None, sql)
    }

    /// Client backends PostgreSQL has for `user` right now.
    pub fn backends(&self, user: &str) -> usize {
        self.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' \
             AND backend_type = 'client backend'"
        ))
        .parse()
        .unwrap()
    }

    /// `pgbench -i -s 1 -q` as `tester`, directly.
    pub fn pgbench_init(&self) {
        let out = output(
            bounded(120, pg_bin("pgbench"))
                .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1"])
                .args(["-p", &self.port.to_string(), "-U", "tester", "postgres"]),
        );
        assert!(out.status.success(), "pgbench -i: {}", show(&out));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Immediate shutdown: the postmaster stops its backends and exits.
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGQUIT) };
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if std::thread::panicking() {
            // The data directory is large: show the log's end rather than keep it.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "postgres log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings of the pooler under test (either implementation).
#[derive(Clone, Default)]
pub struct PoolOpts {
    /// `session` or `transaction` (`None`: the default, transaction).
    pub mode: Option<&'static str>,
    /// Server connections per (user, database) (per worker).
    pub size: Option<u32>,
    /// The user and password the pooler logs in to PostgreSQL as.
    pub upstream: Option<(&'static str, &'static str)>,
    /// The user and password clients must present to the pooler.
    pub client: Option<(&'static str, &'static str)>,
    /// Further `ferry proxy` flags (ignored for PgBouncer).
    pub extra: Vec<String>,
    /// The proxy's driver (`None`: epoll).
    pub driver: Option<String>,
}

/// [`PoolOpts`] with `size` server connections and the rest default.
pub fn opts(size: u32) -> PoolOpts {
    PoolOpts {
        size: Some(size),
        ..PoolOpts::default()
    }
}

/// A PostgreSQL and the pooler under test in front of it; `None` (a skip, reported) without
/// PostgreSQL or psycopg.
pub fn setup(o: PoolOpts) -> Option<(Postgres, Pooler)> {
    let pg = Postgres::start()?;
    if !psycopg_available() {
        return None;
    }
    let p = Pooler::start(&pg.addr(), &o);
    Some((pg, p))
}

/// Which pooler the tests run against: `ferry` (default) or `pgbouncer`
/// (`FERRY_PG_POOLER=pgbouncer`, to check the tests themselves).
pub fn pooler_kind() -> String {
    std::env::var("FERRY_PG_POOLER").unwrap_or_else(|_| "ferry".into())
}

/// The pooler under test, in front of a [`Postgres`]; stopped on drop.
pub enum Pooler {
    /// `ferry proxy --protocol postgres`.
    Ferry {
        /// The proxy process.
        server: Server,
        /// Its admin listener.
        admin: SocketAddr,
        /// Password files.
        dir: PathBuf,
    },
    /// PgBouncer.
    Bouncer(PgBouncer),
}

fn secret_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Pooler {
    /// Start the pooler [`pooler_kind`] names in front of `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str, o: &PoolOpts) -> Pooler {
        if pooler_kind() == "pgbouncer" {
            return Pooler::Bouncer(PgBouncer::start(upstream, o));
        }
        let dir = tmp_dir("pgproxy", &SEQ.fetch_add(1, Ordering::Relaxed).to_string());
        let mut args: Vec<String> = Vec::new();
        if let Some(m) = o.mode {
            args.extend(["--pool-mode".into(), m.into()]);
        }
        if let Some(n) = o.size {
            args.extend(["--pool-size".into(), n.to_string()]);
        }
        if let Some((u, pw)) = o.upstream {
            let f = dir.join("upstream.pw");
            secret_file(&f, &format!("{pw}\n"));
            args.extend(["--upstream-user".into(), u.into()]);
            args.extend([
                "--upstream-password-file".into(),
                f.to_string_lossy().into(),
            ]);
        }
        if let Some((u, pw)) = o.client {
            let f = dir.join("client.pw");
            secret_file(&f, pw);
            args.extend(["--client-user".into(), u.into()]);
            args.extend(["--client-password-file".into(), f.to_string_lossy().into()]);
        }
        args.extend(o.extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (server, admin) = Server::start_proxy(
            "postgres",
            o.driver.as_deref().unwrap_or("epoll"),
            upstream,
            &refs,
            &[],
        );
        Pooler::Ferry { server, admin, dir }
    }

    /// Whether this is `ferry` (tests of ferry-only surfaces, `/metrics` and exit codes,
    /// check this).
    pub fn is_ferry(&self) -> bool {
        matches!(self, Pooler::Ferry { .. })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        match self {
            Pooler::Ferry { server, .. } => server.addr.port(),
            Pooler::Bouncer(b) => b.port,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// The pooler's pid.
    pub fn pid(&self) -> u32 {
        match self {
            Pooler::Ferry { server, .. } => server.child.id(),
            Pooler::Bouncer(b) => b.child.id(),
        }
    }

    /// Peak resident memory (`VmHWM`) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// The `ferry` proxy (panics for PgBouncer).
    pub fn ferry(&mut self) -> &mut Server {
        match self {
            Pooler::Ferry { server, .. } => server,
            Pooler::Bouncer(_) => panic!("not ferry"),
        }
    }

    /// The admin listener (ferry only).
    pub fn admin(&self) -> Option<SocketAddr> {
        match self {
            Pooler::Ferry { admin, .. } => Some(*admin),
            Pooler::Bouncer(_) => None,
        }
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        if let Pooler::Ferry { dir, .. } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A PgBouncer (1.18 on Debian 12) in front of a [`Postgres`]; killed on drop. Every user of
/// the cluster is in its auth file; `pool_mode`, `default_pool_size`, a forced upstream user
/// and SCRAM client authentication follow [`PoolOpts`].
pub struct PgBouncer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl PgBouncer {
    /// Start one (panics if `pgbouncer` is not installed).
    pub fn start(upstream: &str, o: &PoolOpts) -> PgBouncer {
        let (host, pg_port) = upstream.rsplit_once(':').expect("HOST:PORT");
        let dir = tmp_dir(
            "pgbouncer",
            &SEQ.fetch_add(1, Ordering::Relaxed).to_string(),
        );
        give_to_pg(&dir);
        let mut db = format!("* = host={host} port={pg_port}");
        if let Some((u, pw)) = o.upstream {
            db.push_str(&format!(" user={u} password={pw}"));
        }
        let users: Vec<(&str, &str)> = match o.client {
            Some(c) => vec![c],
            None => vec![
                ("postgres", ""),
                ("tester", ""),
                ("other", ""),
                ("app", APP_PW),
                ("app_md5", MD5_PW),
            ],
        };
        let auth: String = users
            .iter()
            .map(|(u, p)| format!("\"{u}\" \"{p}\"\n"))
            .collect();
        let auth_file = dir.join("userlist.txt");
        std::fs::write(&auth_file, auth).unwrap();
        give_to_pg(&auth_file);
        for _attempt in 0..5 {
            let port = free_port();
            let ini = format!(
                "[databases]\n{db}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = {}\nauth_file = {}\n\
                 pool_mode = {}\ndefault_pool_size = {}\nmax_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 server_login_retry = 1\nquery_wait_timeout = 15\n\
                 server_connect_timeout = 5\n\
                 logfile = {}\npidfile = {}\n",
                if o.client.is_some() {
                    "scram-sha-256"
                } else {
                    "trust"
                },
                auth_file.display(),
                o.mode.unwrap_or("transaction"),
                o.size.unwrap_or(20),
                dir.join("log").display(),
                dir.join("pid").display(),
            );
            let ini_path = dir.join("pgbouncer.ini");
            std::fs::write(&ini_path, ini).unwrap();
            give_to_pg(&ini_path);
            let mut child = as_pg(&mut Command::new("pgbouncer"))
                .arg(&ini_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn pgbouncer (apt-get install pgbouncer)");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return PgBouncer { child, port, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "pgbouncer did not start: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "pgbouncer log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `psql -X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p PORT -U USER -d postgres -c SQL`
/// (never prompting; `PGPASSWORD` when given; 60 s at most) with `extra` arguments.
pub fn psql_cmd(port: u16, user: &str, password: Option<&str>, extra: &[&str]) -> Command {
    let mut c = bounded(60, pg_bin("psql"));
    c.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(["-d", "postgres"])
        .args(extra)
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(pw) = password {
        c.env("PGPASSWORD", pw);
    }
    c
}

/// Run `sql` with psql (see [`psql_cmd`]); the whole output.
pub fn psql(port: u16, user: &str, password: Option<&str>, sql: &str) -> Output {
    output(&mut psql_cmd(port, user, password, &["-c", sql]))
}

/// [`psql`] that must succeed; its trimmed stdout.
pub fn psql_ok(port: u16, user: &str, password: Option<&str>, sql: &str) -> String {
    let out = psql(port, user, password, sql);
    assert!(out.status.success(), "psql {sql:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Helpers every psycopg script gets: `connect(port, user='tester', password=None, **kw)`
/// (autocommit, 10 s connect timeout, TLS off, and no automatic server-side prepared
/// statements: a test that wants them says `prepare=True`), `direct()` (the superuser, not
/// through the pooler), `PROXY` and `PG` (ports from argv[1] and argv[2]).
const PY_PRELUDE: &str = r#"
import sys, os, time, threading
import psycopg
from psycopg import errors
PROXY = int(sys.argv[1])
PG = int(sys.argv[2])
def connect(port, user='tester', password=None, **kw):
    kw.setdefault('autocommit', True)
    kw.setdefault('connect_timeout', 10)
    kw.setdefault('prepare_threshold', None)
    return psycopg.connect(host='127.0.0.1', port=port, user=user, password=password,
                           dbname='postgres', sslmode='disable', **kw)
def direct():
    return connect(PG, user='postgres')
"#;

/// Run a psycopg script (after [`PY_PRELUDE`]'s helpers) with the proxy's and PostgreSQL's
/// ports as argv[1] and argv[2], bounded by `secs`.
pub fn py(secs: u64, proxy_port: u16, pg_port: u16, script: &str) -> Output {
    let code = format!("{PY_PRELUDE}\n{script}");
    output(
        bounded(secs, python())
            .args(["-c", &code])
            .arg(proxy_port.to_string())
            .arg(pg_port.to_string())
            .env("PYTHONUNBUFFERED", "1"),
    )
}

/// [`py`] that must exit 0; its stdout.
pub fn py_ok(secs: u64, proxy_port: u16, pg_port: u16, script: &str) -> String {
    let out = py(secs, proxy_port, pg_port, script);
    assert!(out.status.success(), "python script failed: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The common shape of a test: a cluster and a pooler with `o`, the `prep` statements run on
/// the cluster, then a psycopg `script` (see [`py`]) that must print `ok`.
pub fn py_case(o: PoolOpts, secs: u64, prep: &[&str], script: &str) {
    let Some((pg, p)) = setup(o) else {
        return;
    };
    for sql in prep {
        pg.sql(sql);
    }
    let out = py_ok(secs, p.port(), pg.port, script);
    assert_eq!(out.trim(), "ok");
}

/// Whether psycopg is importable from the test venv (else the caller skips).
pub fn psycopg_available() -> bool {
    let out = output(bounded(30, python()).args(["-c", "import psycopg"]));
    if !out.status.success() {
        skip_or_fail("psycopg not in the test venv (scripts/install-test-deps)");
    }
    out.status.success()
}

/// A PostgreSQL wire-protocol client over a raw socket (startup phase and simple queries),
/// for what libpq hides: exact startup errors, garbage, SSLRequest.
pub struct Raw {
    /// The socket (5 s read timeout).
    pub s: TcpStream,
}

/// One backend message: tag and body.
pub type Msg = (u8, Vec<u8>);

impl Raw {
    /// Connect to `127.0.0.1:port`.
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { s }
    }

    /// Send a StartupMessage (protocol 3.0) for `user` to database `postgres`.
    pub fn startup(&mut self, user: &str) {
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [("user", user), ("database", "postgres")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        pkt.extend_from_slice(&body);
        self.s.write_all(&pkt).unwrap();
    }

    /// Send a simple Query.
    pub fn query(&mut self, sql: &str) {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        self.s.write_all(&m).unwrap();
    }

    /// The next message; `None` at EOF or a reset (or after `limit` without one).
    pub fn read_msg(&mut self, limit: Duration) -> Option<Msg> {
        let start = Instant::now();
        let mut head = [0u8; 5];
        if !self.read_full(&mut head, start, limit) {
            return None;
        }
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap());
        assert!(
            (4..=(1 << 26)).contains(&len),
            "bad length {len} (tag {})",
            head[0]
        );
        let mut body = vec![0u8; len as usize - 4];
        if !self.read_full(&mut body, start, limit) {
            return None;
        }
        Some((head[0], body))
    }

    fn read_full(&mut self, buf: &mut [u8], start: Instant, limit: Duration) -> bool {
        let mut got = 0;
        while got < buf.len() {
            match self.s.read(&mut buf[got..]) {
                Ok(0) => return false,
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(start.elapsed() < limit, "no message within {limit:?}");
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Messages up to and including ReadyForQuery or an ErrorResponse, or up to EOF.
    pub fn until_ready(&mut self, limit: Duration) -> Vec<Msg> {
        let mut v = Vec::new();
        while let Some(m) = self.read_msg(limit) {
            let stop = m.0 == b'Z' || m.0 == b'E';
            v.push(m);
            if stop {
                break;
            }
        }
        v
    }
}

/// The fields of an ErrorResponse/NoticeResponse body (`C` SQLSTATE, `M` message, `S`…).
pub fn error_fields(body: &[u8]) -> HashMap<char, String> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}
