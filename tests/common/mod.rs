//! Shared pieces of the `ferry` binary's end-to-end tests: a spawned server that is killed on
//! drop, and small helpers for temp files, hashes and commands.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "skip.rs"]
#[allow(clippy::duplicate_mod)] // also loaded by common/{mod,netns}.rs in one test binary
mod skip;
#[allow(unused_imports)]
pub use skip::skip_or_fail;

pub mod postgres;
pub mod resp;

/// `per_driver!(a, b, …)`: each `fn a(driver: &str)` of the test file runs as the tests
/// `epoll::a` and `uring::a`.
#[macro_export]
macro_rules! per_driver {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll"); } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name("uring"); } )*
        }
    };
}

/// The `ferry` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// The binary [`Server::launch`] runs: `FERRY_BIN` when set (to run the tests against
/// another build), else [`BIN`].
pub fn bin() -> String {
    std::env::var("FERRY_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// A running `ferry serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub driver: String,
}

impl Server {
    /// `ferry serve --http 127.0.0.1:0 --workers 1 --driver DRIVER EXTRA…`, checked to really
    /// run on that driver (no silent fallback from io_uring to epoll).
    pub fn start_http(driver: &str, extra: &[&str]) -> Server {
        let mut args = vec![
            "serve",
            "--http",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--driver",
            driver,
        ];
        args.extend_from_slice(extra);
        let s = Server::launch("http", &args, &[], None);
        assert_eq!(s.driver, driver);
        s
    }

    /// Spawn `ferry ARGS` (with `env`, and `RLIMIT_NOFILE` lowered to `nofile` to provoke
    /// EMFILE) and wait for the stable `ferry: listening <proto> <addr> driver=<name>` line.
    pub fn launch(proto: &str, args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Server {
        Server::launch_lines(proto, args, env, nofile, false).0
    }

    /// [`launch`](Server::launch) of a `ferry proxy` given `--admin 127.0.0.1:0`: also reads
    /// the `ferry: admin http <addr>` line that follows, for the port the system chose (no
    /// free-port race with other tests).
    pub fn launch_with_admin(
        proto: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, SocketAddr) {
        let (s, admin) = Server::launch_lines(proto, args, env, None, true);
        (s, admin.expect("admin line"))
    }

    fn launch_lines(
        proto: &str,
        args: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
        admin: bool,
    ) -> (Server, Option<SocketAddr>) {
        let mut cmd = Command::new(bin());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only calls
            // setrlimit, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(args)
            .env_remove("FERRY_DRIVER")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ferry");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).expect("read listening line");
        let prefix = format!("ferry: listening {proto} ");
        let rest = line
            .trim()
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        let (addr, drv) = rest.split_once(' ').expect("driver field");
        let driver = drv.strip_prefix("driver=").expect("driver=").to_string();
        let admin = admin.then(|| {
            let mut line = String::new();
            out.read_line(&mut line).expect("read admin line");
            line.trim()
                .strip_prefix("ferry: admin http ")
                .unwrap_or_else(|| panic!("unexpected admin line {line:?}"))
                .parse()
                .expect("admin address")
        });
        let server = Server {
            child,
            addr: addr.parse().expect("address"),
            driver,
        };
        (server, admin)
    }

    /// `http://ADDR/PATH`.
    /// `ferry proxy --protocol PROTO --listen 127.0.0.1:0 --upstream UPSTREAM --admin
    /// 127.0.0.1:0 --workers 1 --driver DRIVER EXTRA…` with `env`, and its admin address.
    pub fn start_proxy(
        proto: &str,
        driver: &str,
        upstream: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, SocketAddr) {
        let mut args = vec![
            "proxy",
            "--protocol",
            proto,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--driver",
            driver,
        ];
        args.extend_from_slice(extra);
        let (s, admin) = Server::launch_with_admin(proto, &args, env);
        // No silent fallback from io_uring where io_uring works.
        if driver == "epoll" || (driver == "uring" && uring_works()) {
            assert_eq!(s.driver, driver);
        }
        (s, admin)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The port as a string (for command lines).
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Send `sig` to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process by its pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    /// Wait (bounded) for the server to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `cmd` to completion and insist on success.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// A fresh, empty temp directory for one test.
pub fn tmp_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `sha256sum` of a file.
pub fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `ferry probe` finds io_uring usable here (else its uring driver falls back to
/// epoll); asked once per test binary.
pub fn uring_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let out = Command::new(bin()).arg("probe").output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("auto: uring")
    })
}

/// Close `s` with a reset (`SO_LINGER {on, 0}`), as a client that crashed or gave up does.
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `s` owns a valid socket; the option value is a live `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(s);
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS…` (plain, bounded to 20 s): its trimmed stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args([
            "20",
            "redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `ferry proxy --protocol PROTO --listen 127.0.0.1:0 --upstream 127.0.0.1:1 ARGS…` must
/// refuse to start as a usage error: exit 2, one line naming `flag`, no panic. Its stderr.
pub fn proxy_usage_error(proto: &str, args: &[&str], flag: &str) -> String {
    let out = Command::new(bin())
        .args(["proxy", "--protocol", proto, "--listen", "127.0.0.1:0"])
        .args(["--upstream", "127.0.0.1:1"])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{proto} {args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{proto} {args:?}: {err}");
    assert!(err.contains(flag), "{proto} {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `n` different loopback addresses with nothing listening (the ports are held together
/// while chosen, so none repeats; `ferry proxy` refuses an upstream listed twice).
pub fn closed_addrs(n: usize) -> Vec<String> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

/// The Python with the pinned test packages (`scripts/test` creates `.venv`).
pub fn python() -> String {
    std::env::var("FERRY_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string())
}

/// A `redis-server` on a free loopback port (no persistence), killed when dropped.
pub struct Redis {
    pub child: Child,
    pub port: u16,
}

impl Redis {
    /// Start one (retrying on another port if the one picked was taken meanwhile).
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// [`start`](Self::start) with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Redis {
        for _attempt in 0..5 {
            if let Some(r) = Redis::start_on(free_port(), extra) {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// Start one on `port`; `None` if it did not come up.
    pub fn start_on(port: u16, extra: &[&str]) -> Option<Redis> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Redis { child, port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Prometheus text an admin listener serves on `/metrics` (curl, bounded).
pub fn admin_metrics(admin: SocketAddr) -> String {
    let out = run(Command::new("curl").args([
        "-s",
        "--max-time",
        "10",
        &format!("http://{admin}/metrics"),
    ]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `/metrics` text parsed with `prometheus_client`'s parser: every family must have HELP and a
/// counter, gauge or histogram TYPE; one `type name{labels} value` line per sample, sorted.
pub fn parse_metrics(text: &str) -> Vec<String> {
    use std::io::Write;
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as f\n\
        out = []\n\
        for fam in f(sys.stdin.read()):\n\
        \x20   assert fam.documentation, 'no HELP for ' + fam.name\n\
        \x20   assert fam.type in ('counter', 'gauge', 'histogram'), fam.type\n\
        \x20   for s in fam.samples:\n\
        \x20       labels = ','.join('%s=%s' % kv for kv in sorted(s.labels.items()))\n\
        \x20       out.append('%s %s{%s} %r' % (fam.type, s.name, labels, s.value))\n\
        print('\\n'.join(sorted(out)))\n";
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejects /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A Python server started with `python -c SCRIPT ARGS…` that prints its port on its first
/// line of stdout; killed on drop.
pub struct PyServer {
    child: Child,
    /// The port it printed.
    pub port: u16,
}

impl PyServer {
    /// Start `script` with `args` and wait for its port line.
    pub fn start(script: &str, args: &[&str]) -> PyServer {
        let mut child = Command::new(python())
            .args(["-c", script])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("python server did not start: {line:?}"));
        PyServer { child, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 response: status line, lowercased field names and trimmed values, and the
/// content-length body.
pub fn read_h1(r: &mut impl BufRead) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header line");
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    std::io::Read::read_exact(r, &mut body).unwrap();
    (status.trim_end().to_string(), headers, body)
}
