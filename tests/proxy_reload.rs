//! End-to-end tests of reloading `ferry proxy --config FILE` in place (SIGHUP, and `RELOAD`
//! on the PostgreSQL console): an HTTP upstream list swapped under steady keep-alive load
//! with no request failing and every request sent after the reload going to the new
//! upstream; a broken file and an unchangeable key refused with one log line, the running
//! configuration kept and the error counted; the listener's TLS certificate rotated (a new
//! handshake sees the new certificate, a connection made before keeps working); a Redis
//! upstream replaced; a PostgreSQL upstream replaced through the console's `RELOAD`.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{admin_metrics, bin, free_port, read_h1, redis_cli, tmp_dir, Redis, Server};

#[path = "support/upstream.rs"]
mod upstream;
use upstream::{Reply, Upstream};

#[path = "support/tls.rs"]
mod tls;

const A: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
const B: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb";

/// A directory with `ferry.toml` and the proxy's log (removed on drop).
struct Dir {
    dir: PathBuf,
}

impl Dir {
    fn new(name: &str) -> Dir {
        Dir {
            dir: tmp_dir("proxy-reload", &format!("{name}-{}", free_port())),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("ferry.toml")
    }

    fn write(&self, text: &str) {
        // Written whole then renamed: a reload never reads half a file.
        let tmp = self.dir.join("ferry.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config()).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ferry proxy --config DIR/ferry.toml EXTRA…` with its standard error in `DIR/stderr.log`;
/// the proxy and its admin address (the file must say `admin = "127.0.0.1:0"`).
fn launch(proto: &str, d: &Dir, extra: &[&str]) -> (Server, SocketAddr) {
    let log = std::fs::File::create(d.dir.join("stderr.log")).unwrap();
    let mut child = Command::new(bin())
        .arg("proxy")
        .arg("--config")
        .arg(d.config())
        .args(extra)
        .env_remove("FERRY_DRIVER")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn ferry");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let rest = line
        .trim()
        .strip_prefix(&format!("ferry: listening {proto} "))
        .unwrap_or_else(|| panic!("unexpected line {line:?}; log: {}", d.log()));
    let (addr, drv) = rest.split_once(' ').unwrap();
    let mut admin = String::new();
    out.read_line(&mut admin).unwrap();
    let admin = admin
        .trim()
        .strip_prefix("ferry: admin http ")
        .unwrap_or_else(|| panic!("unexpected admin line {admin:?}"))
        .parse()
        .unwrap();
    let server = Server {
        child,
        addr: addr.parse().unwrap(),
        driver: drv.trim_start_matches("driver=").to_string(),
    };
    (server, admin)
}

/// The value of the sample `series` (name and labels, exactly) in `/metrics`.
fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    admin_metrics(admin).lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok())?
    })
}

/// Wait (bounded) until `series` reads `want`.
fn wait_metric(admin: SocketAddr, series: &str, want: f64, d: &Dir) {
    let start = Instant::now();
    loop {
        let got = metric(admin, series);
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{series} is {got:?}, not {want}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn generation(proto: &str, n: u64) -> (String, f64) {
    (
        format!("ferry_proxy_config_generation{{protocol=\"{proto}\"}}"),
        n as f64,
    )
}

fn reloads(proto: &str, result: &str) -> String {
    format!("ferry_proxy_config_reloads_total{{protocol=\"{proto}\",result=\"{result}\"}}")
}

/// SIGHUP, then wait for the generation `n`.
fn reload_to(s: &Server, admin: SocketAddr, proto: &str, n: u64, d: &Dir) {
    s.signal(libc::SIGHUP);
    let (series, want) = generation(proto, n);
    wait_metric(admin, &series, want, d);
}

fn http_file(driver: &str, upstreams: &[String], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = [{}]\n\
         protocol = \"http\"\ndriver = \"{driver}\"\nworkers = 2\nconnect_timeout = \"2s\"\n\
         response_timeout = \"10s\"\nhealth_interval = \"200ms\"\nlog_format = \"text\"\n{extra}",
        list.join(", ")
    )
}

/// One keep-alive client sending GETs until `stop`: each answer's body (or `ERR …`) and
/// whether `after` was set when the request was sent.
fn load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    after: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<(bool, String)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) && n < 200_000 {
            n += 1;
            if conn.is_none() || n % 50 == 0 {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                conn = Some((s.try_clone().unwrap(), BufReader::new(s)));
            }
            let (w, r) = conn.as_mut().unwrap();
            let sent_after = after.load(Ordering::SeqCst);
            let got = match w.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n") {
                Err(e) => format!("ERR write {e}"),
                Ok(()) => {
                    let (status, _, body) = read_h1(r);
                    if status.contains(" 200 ") {
                        String::from_utf8_lossy(&body).into_owned()
                    } else {
                        format!("ERR {status}")
                    }
                }
            };
            out.lock().unwrap().push((sent_after, got));
        }
    })
}

/// The upstream list swapped under load: nothing fails, and every request sent after the
/// reload took effect goes to the new upstream; the old upstream's series leave /metrics.
fn http_upstreams_swap_under_load(driver: &str) {
    let a = Upstream::start(|_, _, _| Reply::Bytes(A));
    let b = Upstream::start(|_, _, _| Reply::Bytes(B));
    let d = Dir::new("swap");
    d.write(&http_file(driver, &[a.addr.to_string()], ""));
    let (s, admin) = launch("http", &d, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2)
        .map(|_| load(s.addr, stop.clone(), after.clone(), out.clone()))
        .collect();
    let until = |n: usize| {
        let start = Instant::now();
        while out.lock().unwrap().len() < n && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    until(300);
    d.write(&http_file(driver, &[b.addr.to_string()], ""));
    reload_to(&s, admin, "http", 2, &d);
    after.store(true, Ordering::SeqCst);
    let before = out.lock().unwrap().len();
    until(before + 300);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let out = out.lock().unwrap();
    let bad: Vec<_> = out.iter().filter(|(_, g)| g != "a" && g != "b").collect();
    assert!(
        bad.is_empty(),
        "failed requests: {:?}",
        &bad[..bad.len().min(5)]
    );
    assert!(out.iter().any(|(_, g)| g == "a"));
    let late: Vec<_> = out.iter().filter(|(after, _)| *after).collect();
    assert!(
        late.len() >= 300,
        "{} requests after the reload",
        late.len()
    );
    assert!(
        late.iter().all(|(_, g)| g == "b"),
        "a request sent after the reload went to the old upstream"
    );
    let text = admin_metrics(admin);
    assert!(text.contains(&format!("upstream=\"{}\"", b.addr)), "{text}");
    assert!(
        !text.contains(&format!("upstream=\"{}\"", a.addr)),
        "{text}"
    );
    assert_eq!(metric(admin, &reloads("http", "ok")), Some(1.0));
    assert_eq!(metric(admin, &reloads("http", "error")), Some(0.0));
    assert!(d.log().contains("ferry: reload: --config"), "{}", d.log());
}

/// A broken file, then a change of `listen`: both refused with one log line naming the
/// problem, counted as errors; the proxy keeps serving with the running configuration.
fn http_bad_reloads_keep_the_config(driver: &str) {
    let a = Upstream::start(|_, _, _| Reply::Bytes(A));
    let b = Upstream::start(|_, _, _| Reply::Bytes(B));
    let d = Dir::new("bad");
    d.write(&http_file(driver, &[a.addr.to_string()], ""));
    let (s, admin) = launch("http", &d, &[]);
    let get = || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", &s.url("/")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get(), "a");
    let errors = reloads("http", "error");
    // Not TOML / a bad value / an unknown key: nothing applied.
    for (i, text) in [
        http_file(driver, &[b.addr.to_string()], "retries = \"many\"\n"),
        http_file(driver, &[b.addr.to_string()], "no_such_key = 1\n"),
        format!("{}[", http_file(driver, &[b.addr.to_string()], "")),
        http_file(driver, &[], ""),
    ]
    .iter()
    .enumerate()
    {
        d.write(text);
        s.signal(libc::SIGHUP);
        wait_metric(admin, &errors, (i + 1) as f64, &d);
        assert_eq!(get(), "a", "after bad file {i}");
    }
    // An unchangeable key.
    let moved = http_file(driver, &[b.addr.to_string()], "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{}\"", free_port()),
    );
    d.write(&moved);
    s.signal(libc::SIGHUP);
    wait_metric(admin, &errors, 5.0, &d);
    assert_eq!(get(), "a");
    let (g, one) = generation("http", 1);
    assert_eq!(metric(admin, &g), Some(one));
    assert_eq!(metric(admin, &reloads("http", "ok")), Some(0.0));
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ferry: reload:"))
        .collect();
    assert_eq!(lines.len(), 5, "one line per refused reload:\n{log}");
    let path = d.config().display().to_string();
    assert!(
        lines
            .iter()
            .all(|l| l.contains(&format!("ferry: reload: --config {path}: "))),
        "{log}"
    );
    assert!(lines[0].contains("retries"), "{}", lines[0]);
    assert!(lines[1].contains("no_such_key"), "{}", lines[1]);
    assert!(lines[3].contains("at least one"), "{}", lines[3]);
    assert!(lines[4].contains("`listen` cannot change"), "{}", lines[4]);
    // A good file still applies afterwards.
    d.write(&http_file(driver, &[b.addr.to_string()], ""));
    reload_to(&s, admin, "http", 2, &d);
    assert_eq!(get(), "b");
}

/// The DER certificate a new TLS handshake with `addr` sees, and whether a connection
/// opened before `between` ran still answers after it (python's ssl, bounded).
fn tls_probe(addr: SocketAddr, between: impl FnOnce()) -> (Vec<u8>, Vec<u8>, String) {
    let script = r#"
import ssl, socket, sys, hashlib
host, port = sys.argv[1], int(sys.argv[2])
def conn():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=20), server_hostname='localhost')
    return s
def get(s):
    s.sendall(b'GET / HTTP/1.1\r\nHost: t\r\n\r\n')
    data = b''
    while not data.endswith(b'\r\n\r\na'):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b'\r\n')[0].decode()
old = conn()
print(old.getpeercert(binary_form=True).hex(), get(old), flush=True)
sys.stdin.readline()
new = conn()
print(new.getpeercert(binary_form=True).hex(), get(old), flush=True)
"#;
    let mut child = Command::new(common::python())
        .args(["-c", script, "127.0.0.1", &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    between();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    let _ = child.wait();
    let parse = |l: &str| {
        let (hex, status) = l.trim().split_once(' ').unwrap_or_else(|| panic!("{l:?}"));
        let der: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        (der, status.to_string())
    };
    let (before, s1) = parse(&first);
    let (after, s2) = parse(&second);
    assert!(s1.contains("200"), "{s1}");
    (before, after, s2)
}

/// The DER bytes of the first certificate in a PEM file.
fn der(pem: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(pem).unwrap();
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let out = Command::new(common::python())
        .args([
            "-c",
            "import base64,sys; print(base64.b64decode(sys.argv[1]).hex())",
            &b64,
        ])
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Certificate rotation: new handshakes get the new certificate after SIGHUP; a connection
/// made before keeps working on its own.
fn tls_certificate_rotation(driver: &str) {
    let a = Upstream::start(|_, _, _| Reply::Bytes(A));
    let d = Dir::new("tls");
    let one = tls::Cert::make(&d.dir.join("one"));
    let two = tls::Cert::make(&d.dir.join("two"));
    let file = |c: &tls::Cert| {
        http_file(
            driver,
            &[a.addr.to_string()],
            &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                c.cert.display(),
                c.key.display()
            ),
        )
    };
    d.write(&file(&one));
    let (s, admin) = launch("http", &d, &[]);
    let (before, after, old_status) = tls_probe(s.addr, || {
        d.write(&file(&two));
        reload_to(&s, admin, "http", 2, &d);
    });
    assert_eq!(before, der(&one.cert), "the first certificate at start");
    assert_eq!(after, der(&two.cert), "a new handshake sees the new one");
    assert!(
        old_status.contains("200"),
        "the old connection: {old_status}"
    );
    // A key that does not match: refused, the second certificate stays.
    d.write(&http_file(
        driver,
        &[a.addr.to_string()],
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            one.cert.display(),
            d.dir.join("missing.pem").display()
        ),
    ));
    s.signal(libc::SIGHUP);
    wait_metric(admin, &reloads("http", "error"), 1.0, &d);
    let (again, _, _) = tls_probe(s.addr, || {});
    assert_eq!(again, der(&two.cert));
}

fn redis_file(upstreams: &[String]) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = [{}]\n\
         protocol = \"redis\"\ndriver = \"epoll\"\nworkers = 1\nhealth_interval = \"200ms\"\n",
        list.join(", ")
    )
}

/// Redis: one upstream replaced by another (a new primary); a list of two is refused.
#[test]
fn redis_upstream_replaced() {
    let r1 = Redis::start();
    let r2 = Redis::start();
    redis_cli(r1.port, &["SET", "who", "one"]);
    redis_cli(r2.port, &["SET", "who", "two"]);
    let d = Dir::new("redis");
    d.write(&redis_file(&[r1.addr()]));
    let (s, admin) = launch("redis", &d, &[]);
    let port = s.addr.port();
    assert_eq!(redis_cli(port, &["GET", "who"]), "one");
    d.write(&redis_file(&[r2.addr()]));
    reload_to(&s, admin, "redis", 2, &d);
    assert_eq!(redis_cli(port, &["GET", "who"]), "two");
    assert_eq!(redis_cli(port, &["SET", "k", "v"]), "OK");
    assert_eq!(redis_cli(r2.port, &["GET", "k"]), "v");
    d.write(&redis_file(&[r1.addr(), r2.addr()]));
    s.signal(libc::SIGHUP);
    wait_metric(admin, &reloads("redis", "error"), 1.0, &d);
    assert_eq!(redis_cli(port, &["GET", "who"]), "two");
    assert!(d.log().contains("several upstreams"), "{}", d.log());
}

/// PostgreSQL: the upstream replaced with the console's RELOAD (as PgBouncer's); queries go
/// to the new server; RELOAD of a bad file is an ERROR on the console.
#[test]
fn postgres_upstream_replaced_by_console_reload() {
    use common::postgres::{psql_cmd, psql_ok, Postgres};
    let Some(pg1) = Postgres::start() else { return };
    let Some(pg2) = Postgres::start() else { return };
    let file = |pg: &Postgres| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = [\"{}\"]\n\
             protocol = \"postgres\"\ndriver = \"epoll\"\nworkers = 1\nhealth_interval = \"200ms\"\n\
             pool_size = 2\n",
            pg.addr()
        )
    };
    let d = Dir::new("pg");
    d.write(&file(&pg1));
    let (s, admin) = launch("postgres", &d, &[]);
    let port = s.addr.port();
    let server_port = || psql_ok(port, "tester", None, "SELECT inet_server_port()");
    assert_eq!(server_port(), pg1.port.to_string());
    d.write(&file(&pg2));
    let console = |sql: &str| {
        common::postgres::output(&mut psql_cmd(
            port,
            "tester",
            None,
            &["-d", "ferry", "-c", sql],
        ))
    };
    let out = console("RELOAD");
    assert!(out.status.success(), "{}", common::postgres::show(&out));
    let (g, two) = generation("postgres", 2);
    assert_eq!(metric(admin, &g), Some(two));
    for _ in 0..3 {
        assert_eq!(server_port(), pg2.port.to_string());
    }
    // A bad file: the console says why, nothing changes.
    d.write(&format!("{}[", file(&pg1)));
    let out = console("RELOAD");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--config"),
        "{}",
        common::postgres::show(&out)
    );
    assert_eq!(metric(admin, &reloads("postgres", "error")), Some(1.0));
    assert_eq!(server_port(), pg2.port.to_string());
    // SIGHUP works the same.
    d.write(&file(&pg1));
    reload_to(&s, admin, "postgres", 3, &d);
    assert_eq!(server_port(), pg1.port.to_string());
}

/// `trusted_proxies` reloads: before, a client's `X-Forwarded-Proto: https` is replaced by
/// the scheme it used; after a reload that names loopback, a new connection's is kept.
fn http_trusted_proxies_reload(driver: &str) {
    let a = Upstream::start(|_, _, _| Reply::Bytes(A));
    let d = Dir::new("trusted");
    d.write(&http_file(driver, &[a.addr.to_string()], ""));
    let (s, admin) = launch("http", &d, &[]);
    let get = || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-H", "X-Forwarded-Proto: https"])
            .arg(s.url("/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get(), "a");
    d.write(&http_file(
        driver,
        &[a.addr.to_string()],
        "trusted_proxies = [\"127.0.0.1/32\"]\n",
    ));
    reload_to(&s, admin, "http", 2, &d);
    assert_eq!(get(), "a");
    let xfp: Vec<Vec<String>> = a
        .seen()
        .iter()
        .map(|r| {
            upstream::fields(&r.head, "x-forwarded-proto")
                .into_iter()
                .map(String::from)
                .collect()
        })
        .collect();
    assert_eq!(xfp, [vec!["http".to_string()], vec!["https".to_string()]]);
}

/// A rate limit's rate reloads: at one request a minute the second gets 429; after a reload
/// to 1000/s (burst 50) every client starts afresh and 20 requests in a row pass.
fn http_rate_limit_reload(driver: &str) {
    let a = Upstream::start(|_, _, _| Reply::Bytes(A));
    let d = Dir::new("rate");
    let file = |rate: &str| {
        http_file(
            driver,
            &[a.addr.to_string()],
            &format!(
                "rate_limit = \"{rate}\"\nrate_limit_burst = {}\n",
                if rate == "1/m" { 1 } else { 50 }
            ),
        )
    };
    d.write(&file("1/m"));
    let (s, admin) = launch("http", &d, &[]);
    let status = || {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .arg(s.url("/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status(), "200");
    assert_eq!(status(), "429");
    d.write(&file("1000/s"));
    reload_to(&s, admin, "http", 2, &d);
    for i in 0..20 {
        assert_eq!(status(), "200", "request {i} after the reload");
    }
}

/// Log rotation: `logrotate` moves the access log away and sends SIGHUP (the same file:
/// a reload that changes nothing else); the line before goes to the moved file, the line
/// after to a new one at the path.
fn http_access_log_reopened_on_reload(driver: &str) {
    let a = Upstream::start(|_, _, _| Reply::Bytes(A));
    let d = Dir::new("access");
    let path = d.dir.join("access.log");
    let rotated = d.dir.join("access.log.1");
    d.write(&http_file(
        driver,
        &[a.addr.to_string()],
        &format!("access_log = \"{}\"\n", path.display()),
    ));
    let (s, admin) = launch("http", &d, &[]);
    let get = |target: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .arg(s.url(target))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a");
    };
    // Bounded wait for `p` to hold exactly `want` (the workers write their lines at a tick).
    let lines_of = |p: &Path, want: &[&str]| {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let got: Vec<bool> = want.iter().map(|w| text.contains(w)).collect();
            if text.lines().count() == want.len() && got.iter().all(|&b| b) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}: {text:?}, want {want:?}",
                p.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    get("/before-rotation");
    lines_of(&path, &["/before-rotation"]);
    std::fs::rename(&path, &rotated).unwrap();
    reload_to(&s, admin, "http", 2, &d);
    get("/after-rotation");
    lines_of(&path, &["/after-rotation"]);
    lines_of(&rotated, &["/before-rotation"]);
}

per_driver!(
    http_upstreams_swap_under_load,
    http_access_log_reopened_on_reload,
    http_rate_limit_reload,
    http_trusted_proxies_reload,
    http_bad_reloads_keep_the_config,
    tls_certificate_rotation
);
