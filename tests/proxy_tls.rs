//! End-to-end tests of `ferry proxy --tls-cert/--tls-key` (TLS for clients) under each
//! driver: curl over HTTPS to an nginx and a `ferry serve` upstream, a plain-text client on
//! the TLS port, psql and psycopg with `sslmode=require`/`verify-full` through the
//! PostgreSQL proxy to a real PostgreSQL, and `redis-cli --tls` through the Redis proxy.
//! Certificates are made in the test (rcgen, self-signed for `localhost` and `127.0.0.1`).
//!
//! Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

mod common;
use common::postgres::{bounded, output, pg_bin, psql_cmd, psycopg_available, show, Postgres};
use common::{python, tmp_dir, Redis, Server};

#[path = "support/nginx.rs"]
mod support;
use support::Nginx;

#[path = "support/tls.rs"]
mod tls;
use tls::Cert;

/// An nginx upstream answering with the forwarded fields it saw.
fn nginx() -> Nginx {
    Nginx::start(
        "proxy-tls",
        |port, _| {
            format!(
                " server {{\n  listen 127.0.0.1:{port};\n\
                  location / {{ return 200 \"xfp=$http_x_forwarded_proto xff=$http_x_forwarded_for\\n\"; }}\n }}"
            )
        },
        |_| {},
    )
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap()
}

fn start(proto: &str, driver: &str, upstream: &str, cert: &Cert, extra: &[&str]) -> Server {
    let mut flags = cert.flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags.extend(["--health-interval".into(), "0".into()]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    proxy(proto, driver, upstream, &refs)
}

/// `ferry proxy` on `driver` (checked to run there by `start_proxy`).
fn proxy(proto: &str, driver: &str, upstream: &str, flags: &[&str]) -> Server {
    Server::start_proxy(proto, driver, upstream, flags, &[]).0
}

/// HTTPS from the first byte: curl trusting the test CA gets the upstream's answer with
/// `X-Forwarded-Proto: https`, ALPN `http/1.1`, keep-alive across requests, a 3 MiB body
/// echoed through `ferry serve`; a client trusting another CA is refused.
fn https_through_the_proxy(driver: &str) {
    let dir = tmp_dir("tls-http", driver);
    let cert = Cert::make(&dir);
    let up = nginx();
    let p = start(
        "http",
        driver,
        &format!("127.0.0.1:{}", up.port),
        &cert,
        &[],
    );
    let url = format!("https://localhost:{}/x", p.addr.port());
    let ca = cert.cert.display().to_string();
    // HTTP/1.1 (ALPN offers `h2` first: tests/proxy_h2.rs).
    let out = curl(&["-v", "--http1.1", "--cacert", &ca, &url, &url]);
    let body = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(body.matches("xfp=https xff=127.0.0.1").count(), 2, "{body}");
    assert!(err.contains("ALPN: server accepted http/1.1"), "{err}");
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing"),
        "{err}"
    );
    let other = cert.other_ca.display().to_string();
    let out = curl(&["--cacert", &other, &url]);
    assert!(!out.status.success(), "untrusted certificate accepted");

    // Large bodies both ways.
    let serve = Server::start_http(driver, &[]);
    let p2 = start("http", driver, &serve.addr.to_string(), &cert, &[]);
    let big = dir.join("big.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let url = format!("https://localhost:{}/echo", p2.addr.port());
    let got = dir.join("got.bin");
    let out = curl(&[
        "--cacert",
        &ca,
        "--data-binary",
        &format!("@{}", big.display()),
        "-o",
        &got.display().to_string(),
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&got).unwrap() == data, "echoed body differs");
    drop((p, p2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain-HTTP client on the TLS port gets a TLS alert and the connection closes: no hang,
/// no crash (the proxy then still serves HTTPS).
fn plain_client_gets_a_clean_close(driver: &str) {
    let dir = tmp_dir("tls-plain", driver);
    let cert = Cert::make(&dir);
    let up = nginx();
    let p = start(
        "http",
        driver,
        &format!("127.0.0.1:{}", up.port),
        &cert,
        &[],
    );
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the proxy closes the connection (no timeout, no reset)");
    assert_eq!(got.first(), Some(&0x15), "a TLS alert record: {got:?}");
    // Garbage that looks like a record header, then a close: same.
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("closed");
    let ca = cert.cert.display().to_string();
    let out = curl(&[
        "--cacert",
        &ca,
        &format!("https://localhost:{}/", p.addr.port()),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("xfp=https"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `redis-cli --tls` through the Redis proxy (TLS from the first byte).
fn redis_over_tls(driver: &str) {
    let dir = tmp_dir("tls-redis", driver);
    let cert = Cert::make(&dir);
    let r = Redis::start();
    let p = start("redis", driver, &r.addr(), &cert, &[]);
    let ca = cert.cert.display().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("timeout")
            .args([
                "20",
                "redis-cli",
                "--tls",
                "--cacert",
                &ca,
                "-h",
                "localhost",
            ])
            .args(["-p", &p.addr.port().to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    let big = "v".repeat(100_000);
    assert_eq!(cli(&["SET", "tls:k", &big]), "OK");
    assert_eq!(cli(&["GET", "tls:k"]), big);
    assert_eq!(cli(&["STRLEN", "tls:k"]), "100000");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An nginx speaking HTTPS with `cert`, answering with the scheme and forwarded proto it saw;
/// `/big` is a 2 MiB file.
fn nginx_tls(cert: &Cert) -> Nginx {
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    Nginx::start(
        "proxy-tls-up",
        move |port, d| {
            format!(
                " server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {c};\n\
                  ssl_certificate_key {k};\n  keepalive_requests 100000;\n\
                  location = /big {{ alias {d}/big.bin; }}\n\
                  location / {{ return 200 \"scheme=$scheme xfp=$http_x_forwarded_proto\\n\"; }}\n }}"
            )
        },
        |d| std::fs::write(d.join("big.bin"), big_data()).unwrap(),
    )
}

fn big_data() -> Vec<u8> {
    (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

/// `--upstream-tls`: requests reach an HTTPS nginx (its certificate checked against
/// `--upstream-ca` for `127.0.0.1`), over pooled connections, with a 2 MiB response; with
/// TLS on the client side too; an upstream whose certificate is not trusted gets a 5xx, not
/// a hang.
fn https_upstreams(driver: &str) {
    let dir = tmp_dir("tls-up", driver);
    let cert = Cert::make(&dir);
    let up = nginx_tls(&cert);
    let upstream = format!("127.0.0.1:{}", up.port);
    let ca = cert.cert.display().to_string();
    let flags = [
        "--upstream-tls",
        "--upstream-ca",
        &ca,
        "--health-interval",
        "0",
    ];
    let p = proxy("http", driver, &upstream, &flags);
    let url = p.url("/x");
    let out = curl(&[&url, &url, &url]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert_eq!(body.matches("scheme=https xfp=http\n").count(), 3, "{body}");
    let got = dir.join("big.out");
    let out = curl(&["-o", &got.display().to_string(), &p.url("/big")]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::read(&got).unwrap() == big_data(),
        "big body differs"
    );

    // TLS on both sides.
    let mut both = cert.flags();
    both.extend(flags.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = both.iter().map(String::as_str).collect();
    let p2 = proxy("http", driver, &upstream, &refs);
    let url = format!("https://localhost:{}/x", p2.addr.port());
    let out = curl(&["--cacert", &ca, &url]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "scheme=https xfp=https\n"
    );

    // An upstream certificate from another CA: refused, answered 5xx.
    let other = cert.other_ca.display().to_string();
    let bad = [
        "--upstream-tls",
        "--upstream-ca",
        &other,
        "--health-interval",
        "0",
    ];
    let p3 = proxy("http", driver, &upstream, &bad);
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &p3.url("/x")]);
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(code.starts_with('5'), "status {code}");
    drop((p, p2, p3));
    let _ = std::fs::remove_dir_all(&dir);
}

per_driver!(
    https_upstreams,
    https_through_the_proxy,
    plain_client_gets_a_clean_close,
    redis_over_tls,
    postgres_over_tls
);

/// Health checks go over TLS too: with the right CA the upstream stays up, with another it
/// is taken down.
#[test]
fn upstream_health_checks_over_tls() {
    let dir = tmp_dir("tls-health", "x");
    let cert = Cert::make(&dir);
    let up = nginx_tls(&cert);
    let upstream = format!("127.0.0.1:{}", up.port);
    let start = |ca: &std::path::Path| {
        let ca = ca.display().to_string();
        let flags = [
            "--upstream-tls",
            "--upstream-ca",
            &ca,
            "--health-interval",
            "100ms",
        ];
        Server::start_proxy("http", "epoll", &upstream, &flags, &[])
    };
    let (_good, good_admin) = start(&cert.cert);
    let (_bad, bad_admin) = start(&cert.other_ca);
    let gauge = |admin| {
        common::admin_metrics(admin)
            .lines()
            .find(|l| l.starts_with("ferry_proxy_upstream_healthy{"))
            .map(|l| l.trim().ends_with(" 1"))
            .expect("healthy gauge")
    };
    let mut down = false;
    for _ in 0..200 {
        if !gauge(bad_admin) {
            down = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(down, "an untrusted upstream stays up");
    assert!(gauge(good_admin), "a trusted upstream went down");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad TLS flags: one line naming the flag, exit 2.
#[test]
fn bad_tls_flags_exit_2() {
    let dir = tmp_dir("tls-flags", "x");
    let cert = Cert::make(&dir);
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a pem\n").unwrap();
    let (c, k, j) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
        junk.display().to_string(),
    );
    let missing = dir.join("missing.pem").display().to_string();
    for (args, flag) in [
        (vec!["--tls-cert", &c], "--tls-cert"),
        (vec!["--tls-key", &k], "--tls-key"),
        (vec!["--tls-cert", &missing, "--tls-key", &k], "--tls-cert"),
        (vec!["--tls-cert", &j, "--tls-key", &k], "--tls-cert"),
        (vec!["--tls-cert", &c, "--tls-key", &j], "--tls-key"),
        (vec!["--tls-cert", &c, "--tls-key", &c], "--tls-key"),
        (vec!["--upstream-tls", "--upstream-ca", &j], "--upstream-ca"),
        (
            vec!["--upstream-tls", "--upstream-ca", &missing],
            "--upstream-ca",
        ),
        (
            vec![
                "--upstream-tls",
                "--upstream-ca",
                &c,
                "--upstream-server-name",
                "a b",
            ],
            "--upstream-server-name",
        ),
        (vec!["--upstream-ca", &c], "--upstream-ca"),
    ] {
        common::proxy_usage_error("http", &args, flag);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// PostgreSQL: `SSLRequest` is answered `S` and TLS starts on the same connection; psql with
/// `sslmode=require` and `verify-full`, psycopg with `verify-full`, run queries (a large
/// result, errors, a transaction) through it; `sslmode=disable` still works, and a client
/// trusting another CA is refused.
fn postgres_over_tls(driver: &str) {
    let Some(pg) = Postgres::start() else {
        return;
    };
    if !psycopg_available() {
        return;
    }
    let dir = tmp_dir("tls-pg", driver);
    let cert = Cert::make(&dir);
    let p = start("postgres", driver, &pg.addr(), &cert, &["--pool-size", "2"]);
    let port = p.addr.port();
    let ca = cert.cert.display().to_string();

    // Raw: `S`, then the server's handshake bytes on the same socket.
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"S");
    drop(s);

    let psql = |mode: &str, host: &str, root: &str, sql: &str| {
        let conn = format!(
            "host={host} port={port} user=tester dbname=postgres sslmode={mode} sslrootcert={root}"
        );
        output(
            bounded(60, pg_bin("psql"))
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-q",
                    "-w",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    &conn,
                ])
                .args(["-c", sql])
                .env_remove("PGSSLMODE")
                .env("PGCONNECT_TIMEOUT", "10"),
        )
    };
    for (mode, host) in [("require", "127.0.0.1"), ("verify-full", "localhost")] {
        let out = psql(
            mode,
            host,
            &ca,
            "SELECT ssl FROM pg_stat_ssl LIMIT 0; SELECT 40 + 2",
        );
        assert!(out.status.success(), "{mode}: {}", show(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{mode}");
    }
    let out = psql(
        "verify-full",
        "localhost",
        &ca,
        "SELECT count(*), sum(length(repeat('x', g))) FROM generate_series(1, 3000) g",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3000|4501500");
    // Another CA: refused by the client.
    let other = cert.other_ca.display().to_string();
    let out = psql("verify-full", "localhost", &other, "SELECT 1");
    assert!(!out.status.success(), "{}", show(&out));
    // Without TLS: still fine.
    let out =
        output(psql_cmd(port, "tester", None, &["-c", "SELECT 7"]).env("PGSSLMODE", "disable"));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");

    // psycopg (libpq 17) with verify-full: the extended protocol, a transaction, an error
    // that leaves the connection usable, 2 MB each way.
    let script = format!(
        r#"
import psycopg
c = psycopg.connect(host='localhost', port={port}, user='tester', dbname='postgres',
                    sslmode='verify-full', sslrootcert={ca:?}, connect_timeout=10,
                    autocommit=True, prepare_threshold=None)
assert c.pgconn.ssl_in_use, 'no TLS'
assert c.execute('SELECT %s::int + 1', (41,)).fetchone()[0] == 42
big = 'y' * 2_000_000
assert c.execute('SELECT length(%s::text)', (big,)).fetchone()[0] == 2_000_000
assert len(c.execute("SELECT repeat('z', 2000000)").fetchone()[0]) == 2_000_000
try:
    c.execute('SELECT 1/0')
    raise SystemExit('no error')
except psycopg.errors.DivisionByZero:
    pass
with c.transaction():
    c.execute('CREATE TEMP TABLE IF NOT EXISTS t_tls (v int)')
    c.execute('INSERT INTO t_tls SELECT generate_series(1, 100)')
    assert c.execute('SELECT count(*) FROM t_tls').fetchone()[0] == 100
c.close()
print('ok')
"#
    );
    let out = output(
        bounded(60, python())
            .args(["-c", &script])
            .env("PYTHONUNBUFFERED", "1"),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}
