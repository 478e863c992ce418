//! End-to-end tests of mutual TLS in `ferry proxy`, both directions:
//!
//! - `--tls-client-ca` (listener side): curl with and without `--cert/--key` through the
//!   HTTPS proxy (the scripted upstream sees `x-forwarded-client-cert: Hash=…;Subject="…";URI=…`, never
//!   a client's own), a certificate from another CA refused; psql with `sslcert/sslkey`
//!   through the PostgreSQL proxy, refused without one (also in the clear); `redis-cli
//!   --tls --cert/--key` through the Redis proxy;
//! - `--upstream-cert/--upstream-key` (upstream side): a PostgreSQL 15 whose `pg_hba.conf`
//!   has `hostssl ... cert` (the proxy's certificate is its login) and a redis-server with
//!   `--tls-auth-clients yes`, working with the proxy's certificate and refusing it without.
//!
//! Certificates are made in the test (rcgen): the server's is self-signed for `localhost`
//! and `127.0.0.1` (tests/support/tls.rs), client certificates are signed by a CA of their
//! own. Nothing here asserts timing; every loop is bounded in count and time; loopback only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::postgres::{bounded, output, pg_bin, show, Postgres};
use common::{free_port, redis_cli, tmp_dir, Redis, Server};

#[path = "support/tls.rs"]
mod tls;
use tls::Cert;

#[path = "support/upstream.rs"]
mod upstream;
use upstream::{fields, Reply, Upstream};

/// A CA and a client certificate it signed (subject `O=Ferry Tests, CN=<cn>`), as PEM files.
struct ClientCert {
    ca: String,
    cert: String,
    key: String,
    /// The `x-forwarded-client-cert` the proxy should send for this certificate (its SHA-256
    /// as openssl computes it, its subject and its URI subjectAltName).
    xfcc: String,
}

impl ClientCert {
    /// Make them in `dir` under the names `<name>-ca.pem`, `<name>.pem`, `<name>.key`.
    fn make(dir: &Path, name: &str, cn: &str) -> ClientCert {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        use std::os::unix::fs::PermissionsExt;
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} client CA"));
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.distinguished_name = DistinguishedName::new();
        leaf.distinguished_name
            .push(DnType::OrganizationName, "Ferry Tests");
        leaf.distinguished_name.push(DnType::CommonName, cn);
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let spiffe = format!("spiffe://ferry.test/{cn}");
        leaf.subject_alt_names = vec![rcgen::SanType::URI(spiffe.clone().try_into().unwrap())];
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let path = |f: String| dir.join(f).display().to_string();
        let mut c = ClientCert {
            ca: path(format!("{name}-ca.pem")),
            cert: path(format!("{name}.pem")),
            key: path(format!("{name}.key")),
            xfcc: String::new(),
        };
        std::fs::write(&c.ca, ca.pem()).unwrap();
        std::fs::write(&c.cert, leaf.pem()).unwrap();
        let fp = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", &c.cert])
            .output()
            .unwrap();
        assert!(fp.status.success(), "{fp:?}");
        // "sha256 Fingerprint=AB:CD:..." -> "abcd..."
        let fp = String::from_utf8(fp.stdout).unwrap();
        let hash = fp.trim().rsplit('=').next().unwrap().replace(':', "");
        c.xfcc = format!(
            "Hash={};Subject=\"CN={cn},O=Ferry Tests\";URI={spiffe}",
            hash.to_ascii_lowercase()
        );
        std::fs::write(&c.key, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        c
    }
}

/// `ferry proxy` on `driver`, checked to run there (no silent fallback from io_uring where
/// io_uring works).
fn proxy(proto: &str, driver: &str, upstream: &str, flags: &[&str]) -> Server {
    let s = Server::start_proxy(proto, driver, upstream, flags, &[]).0;
    if driver == "epoll" || uring_works() {
        assert_eq!(s.driver, driver);
    }
    s
}

fn uring_works() -> bool {
    let out = Command::new(common::BIN).arg("probe").output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("auto: uring")
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const SPOOF: &str = r#"X-Forwarded-Client-Cert: Subject="CN=admin""#;

/// HTTPS with `--tls-client-ca`: curl with a certificate of that CA gets the upstream's
/// answer (HTTP/1.1, with its own `X-Forwarded-For`, HTTP/2), and every request reaches the
/// upstream with our `x-forwarded-client-cert` only (the client's spoofed one dropped);
/// without a certificate, or with one from another CA, the handshake fails and nothing
/// reaches the upstream.
fn https_client_certs(driver: &str) {
    let dir = tmp_dir("mtls-http", driver);
    let cert = Cert::make(&dir);
    let good = ClientCert::make(&dir, "good", "client-1");
    let stranger = ClientCert::make(&dir, "stranger", "client-1");
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let mut flags = cert.flags();
    flags.extend(["--tls-client-ca", &good.ca, "--health-interval", "0"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let p = proxy("http", driver, &up.addr.to_string(), &flags);
    let url = format!("https://localhost:{}/x", p.addr.port());
    let ca = cert.cert.display().to_string();
    let with = ["--cacert", &ca, "--cert", &good.cert, "--key", &good.key];
    for extra in [
        &["--http1.1", "-H", SPOOF][..],
        &["--http1.1", "-H", SPOOF, "-H", "X-Forwarded-For: 10.1.2.3"],
        &["--http2", "-H", SPOOF],
    ] {
        let out = curl(&[&with[..], extra, &[url.as_str()]].concat());
        assert!(out.status.success(), "{extra:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok", "{extra:?}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for s in &seen {
        assert_eq!(
            fields(&s.head, "x-forwarded-client-cert"),
            [good.xfcc.as_str()],
            "{}",
            s.head
        );
    }
    assert_eq!(
        fields(&seen[1].head, "x-forwarded-for"),
        ["10.1.2.3, 127.0.0.1"]
    );

    // No certificate, or one from another CA: refused, nothing reaches the upstream.
    let without = ["--http1.1", "--cacert", &ca, &url];
    let other = [
        "--http1.1",
        "--cacert",
        &ca,
        "--cert",
        &stranger.cert,
        "--key",
        &stranger.key,
        &url,
    ];
    for args in [&without[..], &other[..]] {
        let out = curl(args);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        assert_ne!(String::from_utf8_lossy(&out.stdout), "ok");
    }
    assert_eq!(up.seen().len(), 3);
    // The proxy still serves certified clients.
    let out = curl(&[&with[..], &[url.as_str()]].concat());
    assert!(out.status.success(), "{out:?}");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client's own `X-Forwarded-Client-Cert` never reaches the upstream: through a plain
/// HTTP proxy and an HTTPS one without `--tls-client-ca`, with and without its own
/// `X-Forwarded-For`.
fn spoofed_client_cert_field_is_dropped(driver: &str) {
    let dir = tmp_dir("mtls-spoof", driver);
    let cert = Cert::make(&dir);
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let upstream = up.addr.to_string();
    let plain = proxy("http", driver, &upstream, &["--health-interval", "0"]);
    let mut flags = cert.flags();
    flags.extend(["--health-interval", "0"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tls = proxy("http", driver, &upstream, &flags);
    let ca = cert.cert.display().to_string();
    let urls = [
        plain.url("/x"),
        format!("https://localhost:{}/x", tls.addr.port()),
    ];
    for url in &urls {
        for xff in [&[][..], &["-H", "X-Forwarded-For: 10.1.2.3"]] {
            let args = [
                &[
                    "--cacert",
                    &ca,
                    "-H",
                    SPOOF,
                    "-H",
                    "x-forwarded-client-cert: By=x",
                ][..],
                xff,
                &[url.as_str()],
            ]
            .concat();
            let out = curl(&args);
            assert!(out.status.success(), "{args:?}: {out:?}");
        }
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for s in &seen {
        assert!(
            fields(&s.head, "x-forwarded-client-cert").is_empty(),
            "{}",
            s.head
        );
    }
    drop((plain, tls));
    let _ = std::fs::remove_dir_all(&dir);
}

/// psql to `port` with a libpq connection string's extra words, `sql` run; bounded.
fn psql_conn(port: u16, host: &str, extra: &str, sql: &str) -> std::process::Output {
    let conn = format!("host={host} port={port} user=tester dbname=postgres {extra}");
    output(
        bounded(60, pg_bin("psql"))
            .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&conn)
            .args(["-c", sql])
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLCERT")
            .env_remove("PGSSLKEY")
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10"),
    )
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// PostgreSQL with `--tls-client-ca`: psql with `sslcert/sslkey` of that CA runs queries;
/// without a certificate, with another CA's, or in the clear, it is refused.
fn postgres_client_certs(driver: &str) {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let dir = tmp_dir("mtls-pg", driver);
    let cert = Cert::make(&dir);
    let good = ClientCert::make(&dir, "good", "client-1");
    let stranger = ClientCert::make(&dir, "stranger", "client-1");
    let mut flags = cert.flags();
    flags.extend(
        [
            "--tls-client-ca",
            &good.ca,
            "--pool-size",
            "2",
            "--health-interval",
            "0",
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let p = proxy("postgres", driver, &pg.addr(), &flags);
    let port = p.addr.port();
    let ca = cert.cert.display().to_string();
    let tls = |c: &ClientCert| {
        format!(
            "sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
            c.cert, c.key
        )
    };
    let out = psql_conn(port, "localhost", &tls(&good), "SELECT 40 + 2");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "42");
    let out = psql_conn(
        port,
        "localhost",
        &tls(&good),
        "SELECT count(*), sum(length(repeat('x', g))) FROM generate_series(1, 3000) g",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "3000|4501500");
    // No certificate (files that do not exist: libpq sends none), another CA's, none at all
    // in the clear: refused.
    let none = dir.join("none").display().to_string();
    for extra in [
        format!("sslmode=verify-full sslrootcert={ca} sslcert={none}.crt sslkey={none}.key"),
        tls(&stranger),
        "sslmode=disable".to_string(),
    ] {
        let out = psql_conn(port, "localhost", &extra, "SELECT 1");
        assert!(!out.status.success(), "{extra}: {}", show(&out));
    }
    let out = psql_conn(port, "localhost", "sslmode=disable", "SELECT 1");
    assert!(
        show(&out).contains("client certificate is required"),
        "{}",
        show(&out)
    );
    let out = psql_conn(port, "localhost", &tls(&good), "SELECT 7");
    assert_eq!(stdout(&out), "7", "{}", show(&out));
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis with `--tls-client-ca`: `redis-cli --tls --cert/--key` of that CA gets answers;
/// without a certificate, or with another CA's, it gets none.
fn redis_client_certs(driver: &str) {
    let dir = tmp_dir("mtls-redis", driver);
    let cert = Cert::make(&dir);
    let good = ClientCert::make(&dir, "good", "client-1");
    let stranger = ClientCert::make(&dir, "stranger", "client-1");
    let r = Redis::start();
    let mut flags = cert.flags();
    flags.extend(["--tls-client-ca", &good.ca, "--health-interval", "0"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let p = proxy("redis", driver, &r.addr(), &flags);
    let ca = cert.cert.display().to_string();
    let port = p.addr.port().to_string();
    let tls_cli = |certs: &[&str], args: &[&str]| {
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
            .args(["-p", &port])
            .args(certs)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let with = ["--cert", &good.cert, "--key", &good.key];
    assert_eq!(tls_cli(&with, &["SET", "mtls:c", "v"]), "OK");
    assert_eq!(tls_cli(&with, &["GET", "mtls:c"]), "v");
    let other = ["--cert", &stranger.cert, "--key", &stranger.key];
    for certs in [&[][..], &other[..]] {
        assert_eq!(tls_cli(certs, &["GET", "mtls:c"]), "", "{certs:?}");
    }
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Give `path` to the `postgres` user (PostgreSQL runs as it when the tests run as root).
fn chown_pg(path: &Path) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let out = output(Command::new("chown").arg("postgres:postgres").arg(path));
        assert!(out.status.success(), "chown: {}", show(&out));
    }
}

/// A PostgreSQL 15 speaking TLS with `cert`, trusting client certificates of `client_ca`
/// (`ssl_ca_file`) and logging `tester` in only with one (`hostssl ... cert`: its CN is
/// the user name); the superuser keeps a trusted login for the test's own psql. Checked:
/// a TLS login without a certificate is refused.
fn mtls_postgres(cert: &Cert, client_ca: &str) -> Option<Postgres> {
    let pg = Postgres::start()?;
    let data = PathBuf::from(pg.sql("SHOW data_directory"));
    let (crt, key, ca) = (
        data.join("ferry-server.crt"),
        data.join("ferry-server.key"),
        data.join("ferry-client-ca.crt"),
    );
    std::fs::copy(&cert.cert, &crt).unwrap();
    std::fs::copy(&cert.key, &key).unwrap();
    std::fs::copy(client_ca, &ca).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let hba = data.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\n\
         hostssl all postgres 127.0.0.1/32 trust\n\
         hostssl all all 127.0.0.1/32 cert\n",
    )
    .unwrap();
    for f in [&crt, &key, &ca, &hba] {
        chown_pg(f);
    }
    pg.sql("ALTER SYSTEM SET ssl_cert_file = 'ferry-server.crt'");
    pg.sql("ALTER SYSTEM SET ssl_key_file = 'ferry-server.key'");
    pg.sql("ALTER SYSTEM SET ssl_ca_file = 'ferry-client-ca.crt'");
    pg.sql("ALTER SYSTEM SET ssl = on");
    pg.sql("SELECT pg_reload_conf()");
    for _ in 0..200 {
        let out = psql_conn(pg.port, "127.0.0.1", "sslmode=require", "SELECT 1");
        if show(&out).contains("certificate") {
            return Some(pg);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "postgres did not start requiring certificates: {}",
        pg.log()
    );
}

/// Upstream mTLS to PostgreSQL: with `--upstream-cert/--upstream-key` (CN `tester`) the
/// proxy logs in by certificate and queries run on a TLS session whose client certificate
/// PostgreSQL verified (`pg_stat_ssl.client_dn`); without them the login is refused.
fn postgres_upstream_cert(driver: &str) {
    let dir = tmp_dir("mtls-uppg", driver);
    let cert = Cert::make(&dir);
    let client = ClientCert::make(&dir, "proxy", "tester");
    let Some(pg) = mtls_postgres(&cert, &client.ca) else {
        return;
    };
    let ca = cert.cert.display().to_string();
    let base = [
        "--upstream-tls",
        "--upstream-ca",
        &ca,
        "--pool-size",
        "2",
        "--health-interval",
        "0",
    ];
    let with = [
        &base[..],
        &[
            "--upstream-cert",
            &client.cert,
            "--upstream-key",
            &client.key,
        ],
    ]
    .concat();
    let p = proxy("postgres", driver, &pg.addr(), &with);
    let out = psql_conn(
        p.addr.port(),
        "127.0.0.1",
        "sslmode=disable",
        "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "t|/O=Ferry Tests/CN=tester");
    drop(p);
    let p = proxy("postgres", driver, &pg.addr(), &base);
    let out = psql_conn(p.addr.port(), "127.0.0.1", "sslmode=disable", "SELECT 1");
    assert!(!out.status.success(), "{}", show(&out));
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A redis-server on its TLS port only, requiring client certificates of `client_ca`.
fn mtls_redis(cert: &Cert, client_ca: &str) -> Redis {
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    for _attempt in 0..5 {
        let port = free_port().to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &c,
            "--tls-key-file",
            &k,
            "--tls-ca-cert-file",
            client_ca,
            "--tls-auth-clients",
            "yes",
        ];
        if let Some(r) = Redis::start_on(port.parse().unwrap(), &args) {
            return r;
        }
    }
    panic!("redis-server with TLS did not start (built without TLS?)");
}

/// Upstream mTLS to Redis (`--tls-auth-clients yes`): with `--upstream-cert/--upstream-key`
/// commands go through; without them the server refuses the proxy's handshake.
fn redis_upstream_cert(driver: &str) {
    let dir = tmp_dir("mtls-upredis", driver);
    let cert = Cert::make(&dir);
    let client = ClientCert::make(&dir, "proxy", "ferry-proxy");
    let r = mtls_redis(&cert, &client.ca);
    let ca = cert.cert.display().to_string();
    let base = [
        "--upstream-tls",
        "--upstream-ca",
        &ca,
        "--health-interval",
        "0",
    ];
    let with = [
        &base[..],
        &[
            "--upstream-cert",
            &client.cert,
            "--upstream-key",
            &client.key,
        ],
    ]
    .concat();
    let p = proxy("redis", driver, &r.addr(), &with);
    assert_eq!(redis_cli(p.addr.port(), &["PING"]), "PONG");
    let big = "v".repeat(100_000);
    assert_eq!(redis_cli(p.addr.port(), &["SET", "mtls:k", &big]), "OK");
    assert_eq!(redis_cli(p.addr.port(), &["GET", "mtls:k"]), big);
    drop(p);
    let p = proxy("redis", driver, &r.addr(), &base);
    let got = redis_cli(p.addr.port(), &["PING"]);
    assert_ne!(got, "PONG");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A trusted proxy's `x-forwarded-client-cert` (`--trusted-proxies`) is kept, and the
/// proxy's own element list follows it when it verified a client certificate itself
/// (Envoy's APPEND_FORWARD: the upstream sees the chain in order); named by `Connection`
/// it is hop-by-hop and dropped.
fn trusted_proxy_client_cert_field_is_kept(driver: &str) {
    let dir = tmp_dir("mtls-trusted", driver);
    let cert = Cert::make(&dir);
    let good = ClientCert::make(&dir, "good", "client-1");
    let up = Upstream::start(|_, _, _| Reply::Bytes(OK));
    let upstream = up.addr.to_string();
    let trust = [
        "--trusted-proxies",
        "127.0.0.1/32",
        "--health-interval",
        "0",
    ];
    let plain = proxy("http", driver, &upstream, &trust);
    let mut flags = cert.flags();
    flags.extend(["--tls-client-ca", &good.ca].map(String::from));
    flags.extend(trust.map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tls = proxy("http", driver, &upstream, &flags);
    let edge = r#"By=spiffe://edge;Hash=ab12;Subject="CN=user-9""#;
    let header = format!("x-forwarded-client-cert: {edge}");
    let ca = cert.cert.display().to_string();
    let tls_url = format!("https://localhost:{}/x", tls.addr.port());
    let plain_url = plain.url("/x");
    let with = ["--cacert", &ca, "--cert", &good.cert, "--key", &good.key];
    for args in [
        vec!["-H", &header, &plain_url],
        vec![
            "-H",
            &header,
            "-H",
            "Connection: x-forwarded-client-cert",
            &plain_url,
        ],
        [&with[..], &["--http1.1", "-H", &header, &tls_url]].concat(),
        [&with[..], &["--http2", "-H", &header, &tls_url]].concat(),
    ] {
        let out = curl(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let got: Vec<Vec<String>> = seen
        .iter()
        .map(|s| {
            fields(&s.head, "x-forwarded-client-cert")
                .into_iter()
                .map(String::from)
                .collect()
        })
        .collect();
    assert_eq!(
        got,
        [
            vec![edge.to_string()],
            vec![],
            vec![edge.to_string(), good.xfcc.clone()],
            vec![edge.to_string(), good.xfcc.clone()],
        ]
    );
    drop((plain, tls));
    let _ = std::fs::remove_dir_all(&dir);
}

per_driver!(
    https_client_certs,
    spoofed_client_cert_field_is_dropped,
    trusted_proxy_client_cert_field_is_kept,
    postgres_client_certs,
    redis_client_certs,
    postgres_upstream_cert,
    redis_upstream_cert
);

/// The mTLS flags without what they need: exit 2, one line naming the flag.
#[test]
fn bad_mtls_flags_exit_2() {
    let dir = tmp_dir("mtls-flags", "x");
    let cert = Cert::make(&dir);
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a pem\n").unwrap();
    let (c, k, j) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
        junk.display().to_string(),
    );
    let missing = dir.join("missing.pem").display().to_string();
    let listener = ["--tls-cert", &c, "--tls-key", &k];
    let up = ["--upstream-tls", "--upstream-ca", &c];
    for (args, flag) in [
        (vec!["--tls-client-ca", &c], "--tls-client-ca"),
        (
            [&listener[..], &["--tls-client-ca", &j]].concat(),
            "--tls-client-ca",
        ),
        (
            [&listener[..], &["--tls-client-ca", &missing]].concat(),
            "--tls-client-ca",
        ),
        (
            vec!["--upstream-cert", &c, "--upstream-key", &k],
            "--upstream-cert",
        ),
        (
            [&up[..], &["--upstream-cert", &c]].concat(),
            "--upstream-cert",
        ),
        (
            [&up[..], &["--upstream-key", &k]].concat(),
            "--upstream-key",
        ),
        (
            [&up[..], &["--upstream-cert", &j, "--upstream-key", &k]].concat(),
            "--upstream-cert",
        ),
        (
            [&up[..], &["--upstream-cert", &c, "--upstream-key", &j]].concat(),
            "--upstream-key",
        ),
        (
            [
                &up[..],
                &["--upstream-cert", &missing, "--upstream-key", &k],
            ]
            .concat(),
            "--upstream-cert",
        ),
    ] {
        for proto in ["http", "postgres", "redis"] {
            common::proxy_usage_error(proto, &args, flag);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
