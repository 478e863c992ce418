//! End-to-end tests of `ferry proxy --config FILE` and `--trusted-proxies`, under each driver:
//! a whole proxy described by one TOML file in front of a real upstream (`ferry serve` for
//! HTTP, redis-server with `requirepass` for Redis), flags winning over the file, the
//! one-line usage errors (exit 2) naming the key, and which `X-Forwarded-*` fields a scripted
//! upstream receives from curl on 127.0.0.1, trusted or not by configuration.
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, tmp_dir, Redis, Server, BIN};

#[path = "support/upstream.rs"]
mod upstream;
use upstream::{fields, Reply, Upstream};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A config file `ferry.toml` with `text` in a fresh directory (removed on drop).
struct Config {
    dir: PathBuf,
    path: PathBuf,
}

impl Config {
    fn new(name: &str, text: &str) -> Config {
        let dir = tmp_dir("proxy-config", &format!("{name}-{}", free_port()));
        let path = dir.join("ferry.toml");
        std::fs::write(&path, text).unwrap();
        Config { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ferry proxy --config FILE EXTRA…` (its listening line says `proto`).
fn proxy(proto: &str, cfg: &Config, extra: &[&str]) -> Server {
    let mut args = vec!["proxy", "--config", cfg.path()];
    args.extend_from_slice(extra);
    Server::launch(proto, &args, &[], None)
}

/// `curl -s` (bounded): the body, or with `-w` what it writes.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The common part of an HTTP proxy's config.
fn http_config(driver: &str, upstream: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nupstream = [\"{upstream}\"]\nprotocol = \"http\"\n\
         driver = \"{driver}\"\nworkers = 1\nconnect_timeout = \"2s\"\n\
         response_timeout = \"10s\"\nhealth_interval = \"0\"\nlog_format = \"text\"\n"
    )
}

/// A whole HTTP proxy from one file, in front of `ferry serve`; a flag wins over the
/// file's value (`--max-body`: the file's smaller limit would refuse the body).
fn http_proxy_from_a_file(driver: &str) {
    let up = Server::start_http("epoll", &[]);
    let cfg = Config::new(
        "http",
        &format!(
            "{}max_body = 10\nadmin = \"127.0.0.1:{}\"\n",
            http_config(driver, &up.addr.to_string()),
            free_port()
        ),
    );
    let p = proxy("http", &cfg, &[]);
    assert_eq!(p.driver, driver);
    let body = curl(&[&p.url("/")]);
    assert!(!body.is_empty(), "no body through the proxy");
    let code = |p: &Server| {
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--data-binary",
            "0123456789abcdef",
            &p.url("/echo"),
        ])
    };
    // The file's max_body (10) refuses a 16-byte body...
    assert_eq!(code(&p), "413");
    drop(p);
    // ...and the flag wins over it.
    let p = proxy("http", &cfg, &["--max-body", "1000"]);
    assert_eq!(code(&p), "200");
}

/// A whole Redis proxy from one file: protocol, upstream credentials from a password file
/// named relative to the config file, client authentication at the proxy.
fn redis_proxy_from_a_file(driver: &str) {
    let r = Redis::start_with(&["--requirepass", "up-secret"]);
    let cfg = Config::new(
        "redis",
        &format!(
            "listen = \"127.0.0.1:0\"\nupstream = [\"{}\"]\nprotocol = \"redis\"\n\
             driver = \"{driver}\"\nworkers = 1\nredis_connections = 1\n\
             upstream_password_file = \"upstream.pw\"\n\
             client_user = \"default\"\nclient_password_file = \"client.pw\"\n",
            r.addr()
        ),
    );
    std::fs::write(cfg.file("upstream.pw"), "up-secret\n").unwrap();
    std::fs::write(cfg.file("client.pw"), "client-secret\n").unwrap();
    let p = proxy("redis", &cfg, &[]);
    assert_eq!(p.driver, driver);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ask = |s: &mut TcpStream, req: &[u8], want: &[u8]| {
        s.write_all(req).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 1024];
        while got.len() < want.len() && Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    };
    ask(
        &mut s,
        b"*1\r\n$4\r\nPING\r\n",
        b"-NOAUTH Authentication required.\r\n",
    );
    ask(
        &mut s,
        b"*2\r\n$4\r\nAUTH\r\n$13\r\nclient-secret\r\n",
        b"+OK\r\n",
    );
    // Upstream work goes through the proxy's own authenticated connection.
    ask(
        &mut s,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"+OK\r\n$2\r\nv1\r\n",
    );
}

/// `ferry proxy ARGS`: its exit code and stderr (it must not start).
fn fails(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("FERRY_DRIVER")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Mistakes in the file: exit 2, one line naming the key, and nothing listens.
#[test]
fn config_errors_are_one_line_usage_errors_naming_the_key() {
    let base = "listen = \"127.0.0.1:0\"\nupstream = [\"127.0.0.1:9\"]\n";
    for (text, key) in [
        (format!("{base}conect_timeout = \"1s\"\n"), "conect_timeout"),
        (
            format!("{base}connect_timeout = \"5 parsecs\"\n"),
            "connect_timeout",
        ),
        (format!("{base}connect_timeout = 5\n"), "connect_timeout"),
        (format!("{base}workers = 0\n"), "workers"),
        (format!("{base}balance = \"random\"\n"), "balance"),
        (
            format!("{base}trusted_proxies = [\"10.0.0.1/8\"]\n"),
            "trusted_proxies",
        ),
        (
            format!("{base}upstream_password = \"hunter2\"\n"),
            "upstream_password_file",
        ),
        ("listen = \"127.0.0.1:0\"\n".to_string(), "upstream"),
        ("upstream = [\"127.0.0.1:9\"]\n".to_string(), "listen"),
        (
            "listen = \"127.0.0.1:0\"\nupstream = []\n".to_string(),
            "upstream",
        ),
        (
            "listen = \"127.0.0.1:0\"\nupstream = [\"nowhere\"]\n".to_string(),
            "upstream",
        ),
        ("listen = [\n".to_string(), "--config"),
    ] {
        let cfg = Config::new("bad", &text);
        let (code, err) = fails(&["proxy", "--config", cfg.path()]);
        assert_eq!(code, Some(2), "{text}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{text}: {err}");
        assert!(err.starts_with("ferry: "), "{text}: {err}");
        assert!(err.contains(key), "{text}: want {key} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Without a file, the flags are still required, by name.
    let (code, err) = fails(&["proxy", "--upstream", "127.0.0.1:9"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--listen"), "{err}");
    let (code, err) = fails(&["proxy", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--upstream"), "{err}");
    // A missing file.
    let (code, err) = fails(&["proxy", "--config", "/nonexistent/ferry.toml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/ferry.toml"), "{err}");
    // A bad flag value is still clap's one-line error.
    let (code, err) = fails(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
        "--trusted-proxies",
        "10.0.0.0/40",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--trusted-proxies"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// The forwarded fields an upstream saw for one curl request through a proxy started with
/// `cfg` and `extra` flags: (X-Forwarded-Proto values, X-Forwarded-For values).
type Fwd = (Vec<String>, Vec<String>);

fn forwarded(p: &Server, up: &Upstream, headers: &[&str]) -> Fwd {
    let before = up.seen().len();
    let mut args = Vec::new();
    for h in headers {
        args.extend(["-H", h]);
    }
    let url = p.url("/");
    args.push(&url);
    assert_eq!(curl(&args), "ok");
    let seen = up.seen();
    assert_eq!(seen.len(), before + 1, "{seen:?}");
    let head = &seen[before].head;
    let all = |name| -> Vec<String> { fields(head, name).into_iter().map(String::from).collect() };
    (all("x-forwarded-proto"), all("x-forwarded-for"))
}

fn v(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// Not trusted (no `trusted_proxies`, or ranges without 127.0.0.1): the client's
/// `X-Forwarded-Proto` is replaced; `X-Forwarded-For` is appended to.
fn untrusted_client_forwarded_proto_is_replaced(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    for extra in [
        String::new(),
        "trusted_proxies = [\"10.0.0.0/8\", \"::1\", \"127.0.0.2/32\"]\n".to_string(),
    ] {
        let cfg = Config::new(
            "untrusted",
            &(http_config(driver, &up.addr.to_string()) + &extra),
        );
        let p = proxy("http", &cfg, &[]);
        assert_eq!(
            forwarded(&p, &up, &["X-Forwarded-Proto: https"]),
            (v(&["http"]), v(&["127.0.0.1"])),
            "{extra}"
        );
        assert_eq!(
            forwarded(
                &p,
                &up,
                &["X-Forwarded-Proto: https", "X-Forwarded-For: 203.0.113.9"]
            ),
            (v(&["http"]), v(&["203.0.113.9, 127.0.0.1"])),
            "{extra}"
        );
        assert_eq!(
            forwarded(&p, &up, &[]),
            (v(&["http"]), v(&["127.0.0.1"])),
            "{extra}"
        );
    }
}

/// Trusted (127.0.0.1 in a range, from the file or the flag): the client's
/// `X-Forwarded-Proto` goes through as it came; ours is added only when it sent none;
/// `X-Forwarded-For` is appended to as usual. A flag's ranges replace the file's.
fn trusted_proxy_forwarded_proto_is_kept(driver: &str) {
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let base = http_config(driver, &up.addr.to_string());
    let trusting = Config::new(
        "trusted",
        &(base.clone() + "trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.0/8\"]\n"),
    );
    let plain = Config::new("flag", &base);
    for (cfg, extra) in [
        (&trusting, &[][..]),
        (&plain, &["--trusted-proxies", "::1,127.0.0.1"][..]),
    ] {
        let p = proxy("http", cfg, extra);
        assert_eq!(
            forwarded(&p, &up, &["X-Forwarded-Proto: https"]),
            (v(&["https"]), v(&["127.0.0.1"])),
            "{extra:?}"
        );
        assert_eq!(
            forwarded(
                &p,
                &up,
                &["X-Forwarded-Proto: https", "X-Forwarded-For: 203.0.113.9"]
            ),
            (v(&["https"]), v(&["203.0.113.9, 127.0.0.1"])),
            "{extra:?}"
        );
        // None sent: the proxy's own.
        assert_eq!(
            forwarded(&p, &up, &["X-Forwarded-For: 203.0.113.9"]),
            (v(&["http"]), v(&["203.0.113.9, 127.0.0.1"])),
            "{extra:?}"
        );
        assert_eq!(
            forwarded(&p, &up, &[]),
            (v(&["http"]), v(&["127.0.0.1"])),
            "{extra:?}"
        );
        // A field the client's `Connection` names is hop-by-hop: as if not sent.
        assert_eq!(
            forwarded(
                &p,
                &up,
                &[
                    "X-Forwarded-Proto: https",
                    "Connection: keep-alive, X-Forwarded-Proto"
                ]
            ),
            (v(&["http"]), v(&["127.0.0.1"])),
            "{extra:?}"
        );
        pipelined_requests_keep_their_own(&p, &up);
    }
    // The flag's ranges win over the file's: 127.0.0.1 is no longer trusted.
    let p = proxy("http", &trusting, &["--trusted-proxies", "10.0.0.0/8"]);
    assert_eq!(
        forwarded(&p, &up, &["X-Forwarded-Proto: https"]),
        (v(&["http"]), v(&["127.0.0.1"]))
    );
}

/// Pipelined requests (one write, on one kept-alive connection) each keep their own
/// `X-Forwarded-Proto`, or get the proxy's.
fn pipelined_requests_keep_their_own(p: &Server, up: &Upstream) {
    let before = up.seen().len();
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n\
          GET /2 HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /3 HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: wss\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let seen = up.seen();
    let mut got: Vec<(String, Vec<&str>)> = seen[before..]
        .iter()
        .map(|s| {
            let target = s.head.split(' ').nth(1).unwrap_or("").to_string();
            (target, fields(&s.head, "x-forwarded-proto"))
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("/1".to_string(), vec!["https"]),
            ("/2".to_string(), vec!["http"]),
            ("/3".to_string(), vec!["wss"]),
        ]
    );
}

per_driver!(
    http_proxy_from_a_file,
    redis_proxy_from_a_file,
    untrusted_client_forwarded_proto_is_replaced,
    trusted_proxy_forwarded_proto_is_kept,
);
