//! `ferry proxy`: the HTTP reverse proxy / Redis and PostgreSQL pooling proxy (see CONTRACT.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ferry_driver::select::{resolve, DriverKind};
use ferry_driver::{ListenAddr, ServerOptions};
use ferry_proxy::config::TrustedProxies;
use ferry_proxy::postgres::PoolMode;
use ferry_proxy::redis::auth::Credentials;
use ferry_proxy::{
    AccessFormat, AccessLogSpec, Balance, HealthConfig, Protocol, ProxyConfig, ProxyOptions,
    Upstream,
};
use serde::Deserialize;

use crate::config_file::{fill, in_range};
use crate::{config_file, init_logs, parse_duration, usage_error, LogFormat};

fn parse_upstreams(s: &str) -> Result<Vec<Upstream>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.parse::<Upstream>())
        .collect()
}

/// `--health-path`: an origin-form target (`/` then visible ASCII), as it goes on the probe's
/// request line; anything else would make every probe a bad request, every upstream "down".
fn parse_health_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        Err("use a path starting with `/`, without spaces or control characters".into())
    }
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ProxyArgs {
    /// TOML file with every flag's setting (`listen`, `upstream = ["ADDR", …]`,
    /// `connect_timeout = "1s"`, …: the flag's name in snake_case). Flags win over the file.
    /// SIGHUP (or RELOAD on the postgres console) re-reads it in place: upstreams, balance,
    /// timeouts, retries, breaker, pool limits, health checks, trusted proxies, the rate
    /// limit's rate and the TLS certificate change without a restart, and the access log is
    /// reopened (logrotate); a bad file or a change of listen, protocol, driver, workers (and
    /// the other start-only keys) is refused and the running configuration kept.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where clients connect: IP:PORT, [IPv6]:PORT or unix:PATH (required, here or in --config).
    #[arg(long, value_name = "ADDR")]
    listen: Option<ListenAddr>,
    /// Upstream servers, comma-separated IP:PORT or HOST:PORT (repeatable; required, here or
    /// in --config). Names are resolved off the I/O workers, at start and at every
    /// health-check round.
    #[arg(long, value_name = "ADDR[,ADDR…]", value_parser = parse_upstreams)]
    upstream: Vec<Vec<Upstream>>,
    /// http (reverse proxy / L7 load balancer), redis or postgres (pooling proxies)
    /// [default: http].
    #[arg(long, value_name = "PROTO")]
    protocol: Option<Protocol>,
    /// Admin listener serving /metrics (Prometheus text) and /health (503 once draining).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// round-robin, least-requests or hash (consistent hashing of the request target; for
    /// redis, of each key or its {hash tag}: multi-key commands whose keys are on different
    /// upstreams are split (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) or refused with CROSSSLOT)
    /// [default: round-robin].
    #[arg(long, value_name = "POLICY")]
    balance: Option<Balance>,
    /// Event loop: auto, epoll or uring (FERRY_DRIVER overrides auto) [default: auto].
    #[arg(long, value_name = "DRIVER")]
    driver: Option<DriverKind>,
    /// I/O workers, pinned one per allowed CPU [default: allowed CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: Option<u32>,
    /// Upstream connect timeout (postgres: a server login gets at least 5s) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    connect_timeout: Option<Duration>,
    /// Time allowed for an upstream's response head, and for a body in either direction to
    /// make progress (a client stalling mid-body gets 408) [default: 30s; postgres: none,
    /// given: the longest a server may stay silent while a client waits for its reply].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    response_timeout: Option<Duration>,
    /// How long an idle upstream connection stays pooled [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// HTTP: how long a tunnel (WebSocket, CONNECT) may carry no byte either way before both
    /// its connections close (0: no limit) [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    tunnel_idle_timeout: Option<Duration>,
    /// Most connections per upstream per I/O worker; further requests wait for one [default: 512].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_upstream_connections: Option<u32>,
    /// How long a request waits for a connection at that limit before a 503 [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pool_wait_timeout: Option<Duration>,
    /// Extra attempts for idempotent requests whose upstream failed before answering (and
    /// for any request none of which was sent); Redis: for commands answered `-LOADING`
    /// [default: 2].
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Consecutive failures that open an upstream's circuit breaker (0: never). It also opens
    /// at 50% failures over the last 100 requests (at least 20) [default: 5].
    #[arg(long, value_name = "N")]
    breaker_failures: Option<u32>,
    /// How long an open breaker refuses requests before admitting probes (doubling on each
    /// re-open, up to 60 s or this) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    breaker_open: Option<Duration>,
    /// Active health check period (0 disables active checks) [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    health_interval: Option<Duration>,
    /// Path of the HTTP health check (GET, 2xx/3xx is healthy) [default: /].
    #[arg(long, value_name = "PATH", value_parser = parse_health_path)]
    health_path: Option<String>,
    /// Postgres: most server connections per pool key (user, database, startup parameters)
    /// per upstream per I/O worker [default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100000))]
    pool_size: Option<u32>,
    /// Postgres: transaction (a server connection per transaction; named prepared
    /// statements, session SET, LISTEN... pin the client to its connection) or session (one
    /// per client session) [default: transaction].
    #[arg(long, value_name = "MODE")]
    pool_mode: Option<PoolMode>,
    /// Postgres: longest client message in bytes, else FATAL 08P01 [default: 67108864].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    max_message_bytes: Option<u64>,
    /// Postgres, transaction mode: named prepared statements (protocol level) kept per
    /// client and prepared on server connections as needed, at most N per server
    /// connection (least recently used closed first) and per client; 0: a named statement
    /// pins the client to its server connection [default: 200].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100000))]
    max_prepared_statements: Option<u32>,
    /// Redis: shared upstream connections per upstream per worker [default: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    redis_connections: Option<u32>,
    /// HTTP: most pipelined requests (bodyless GET/HEAD/OPTIONS from one client) sent
    /// back-to-back on one upstream connection (1: off) [default: 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pipeline_depth: Option<u32>,
    /// HTTP: largest request body in bytes, else 413 (as `max_body` in serve's --config)
    /// [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    max_body: Option<u64>,
    /// HTTP: largest request head (request line and fields) in bytes, else 431 (as
    /// `max_head_bytes` in serve's --config) [default: 32768].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(64..=(1 << 30)))]
    max_head_bytes: Option<u64>,
    /// HTTP: most header fields per request, else 431 (as `max_headers` in serve's
    /// --config) [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=ferry_http1::MAX_HEADERS_CAP as i64))]
    max_headers: Option<u32>,
    /// HTTP/2 clients (h2c with prior knowledge, ALPN h2): most concurrent streams per
    /// connection, more are refused (REFUSED_STREAM) [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    http2_max_streams: Option<u32>,
    /// HTTP/2 clients: largest decoded request header list in bytes, else 431
    /// [default: 65536].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1024..=(1 << 24)))]
    http2_max_header_list: Option<u32>,
    /// HTTP: longest request line in bytes, else 414 [default: 8192].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(16..=(1 << 30)))]
    max_request_line: Option<u64>,
    /// HTTP: clients (a TLS terminator, a load balancer) whose X-Forwarded-Proto is kept,
    /// comma-separated CIDR ranges or addresses (e.g. 10.0.0.0/8,::1). X-Forwarded-For is
    /// appended to either way [default: none: every client's X-Forwarded-Proto is replaced].
    #[arg(long, value_name = "CIDR[,CIDR…]", value_parser = boxed_trusted)]
    trusted_proxies: Option<Box<TrustedProxies>>,
    /// How long in-flight requests may finish after SIGINT/SIGTERM [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// Busy polling: after activity an I/O worker polls without sleeping for this long before
    /// it blocks (e.g. 50us; 0: off). Lower latency across cores for CPU time [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    busy_poll: Option<Duration>,
    /// Log format on stderr: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// HTTP: append one line per exchange to this file (`-`: standard output), buffered per
    /// I/O worker and written at least every 100 ms [default: none].
    #[arg(long, value_name = "PATH", value_parser = boxed_path)]
    access_log: Option<Box<Path>>,
    /// HTTP: requests admitted per client address, `N` per second or `N/s`, `N/m`, `N/h`
    /// (the client: the connection's peer, or for a trusted proxy the last X-Forwarded-For
    /// address); beyond it 429 with Retry-After [default: none].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    rate_limit: Option<(u32, Duration)>,
    /// HTTP: requests a client may send at once before --rate-limit applies [default: the
    /// rate].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_burst: Option<u32>,
    /// The access log's format: text (nginx `combined` plus `upstream=`, `rt=`, `trace=`) or
    /// json (one object per line) [default: text].
    #[arg(long, value_name = "FORMAT")]
    access_log_format: Option<LogFormat>,
    /// Redis: the user the proxy authenticates to upstreams as (`AUTH user password`; without
    /// it `AUTH password`, Redis's `default` user / `requirepass`). Needs a password.
    /// Postgres: the user server connections log in as [default: the client's user].
    #[arg(long, value_name = "NAME", value_parser = boxed_str)]
    upstream_user: Option<Box<str>>,
    /// Redis, postgres: file holding the password the proxy authenticates to upstreams with,
    /// on every connection it opens (redis: and in health checks; postgres: SCRAM-SHA-256,
    /// MD5 or cleartext, as the server asks) (one trailing newline is ignored; else from
    /// FERRY_UPSTREAM_PASSWORD; never a plain flag, which `ps` would show).
    #[arg(long, value_name = "PATH", value_parser = boxed_path)]
    upstream_password_file: Option<Box<Path>>,
    /// Redis: clients must authenticate to the proxy (AUTH, or HELLO … AUTH) with the
    /// password in this file (else FERRY_CLIENT_PASSWORD) before any other command; the
    /// proxy answers AUTH itself and the client keeps using the shared connections.
    /// Postgres: clients log in with this password (SCRAM-SHA-256); without one every
    /// client is trusted (bind to loopback).
    #[arg(long, value_name = "PATH", value_parser = boxed_path)]
    client_password_file: Option<Box<Path>>,
    /// Redis: the user name clients authenticate as (`AUTH user password`; without it
    /// `default`, so `AUTH password` works). Postgres: the only user clients may log in as.
    /// Needs a client password.
    #[arg(long, value_name = "NAME", value_parser = boxed_str)]
    client_user: Option<Box<str>>,
    /// TLS for clients: the listener's certificate chain (PEM, leaf first); needs --tls-key.
    /// http and redis: TLS from the first byte (HTTPS; ALPN h2 and http/1.1); postgres: SSLRequest
    /// is answered `S` and TLS starts (without these flags: `N`).
    #[arg(long, value_name = "FILE", value_parser = boxed_path)]
    tls_cert: Option<Box<Path>>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", value_parser = boxed_path)]
    tls_key: Option<Box<Path>>,
    /// With --tls-cert: mutual TLS, every client must present a certificate chained to one
    /// of these CA certificates (PEM), or its handshake fails. http: the verified subject
    /// goes upstream as `x-forwarded-client-cert: Subject="..."` (a client's own is dropped).
    #[arg(long, value_name = "FILE", value_parser = boxed_path)]
    tls_client_ca: Option<Box<Path>>,
    /// TLS to the upstreams, certificates checked against --upstream-ca for each upstream's
    /// host name or IP address (or --upstream-server-name); health checks too. http: HTTPS;
    /// postgres: SSLRequest, then TLS (a server answering N is refused: sslmode=verify-full);
    /// redis: TLS from the first byte.
    #[arg(long)]
    upstream_tls: bool,
    /// http: the upstreams speak HTTP/2 over plain TCP (h2c with prior knowledge; not with
    /// --upstream-tls): every request goes as a stream on a pooled HTTP/2 connection (one
    /// stream per connection at a time), trailers and `te: trailers` included, so gRPC
    /// passes through. Active health checks still probe with HTTP/1.1.
    #[arg(long)]
    upstream_http2: bool,
    /// With --upstream-tls: the CA certificates (PEM) to trust [default:
    /// /etc/ssl/certs/ca-certificates.crt].
    #[arg(long, value_name = "FILE", value_parser = boxed_path)]
    upstream_ca: Option<Box<Path>>,
    /// With --upstream-tls: the name sent as SNI and checked against every upstream's
    /// certificate [default: the upstream's own host name or IP address].
    #[arg(long, value_name = "NAME", value_parser = boxed_str)]
    upstream_server_name: Option<Box<str>>,
    /// With --upstream-tls: a client certificate chain (PEM, leaf first) presented to
    /// upstreams that ask for one (mutual TLS); needs --upstream-key.
    #[arg(long, value_name = "FILE", value_parser = boxed_path)]
    upstream_cert: Option<Box<Path>>,
    /// The private key of --upstream-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", value_parser = boxed_path)]
    upstream_key: Option<Box<Path>>,
}

/// `N`, `N/s`, `N/m` or `N/h` (as nginx's `limit_req` rates): requests and their period.
fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let (n, per) = match s.split_once('/') {
        None => (s, Duration::from_secs(1)),
        Some((n, "s")) => (n, Duration::from_secs(1)),
        Some((n, "m")) => (n, Duration::from_secs(60)),
        Some((n, "h")) => (n, Duration::from_secs(3600)),
        Some(_) => return Err(format!("invalid rate `{s}` (use N, N/s, N/m or N/h)")),
    };
    match n.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok((n, per)),
        _ => Err(format!(
            "invalid rate `{s}` (use N, N/s, N/m or N/h, N at least 1)"
        )),
    }
}

/// The credential flags are boxed: they are rarely given, and `ProxyArgs` sits in an enum.
fn boxed_str(s: &str) -> Result<Box<str>, String> {
    Ok(s.into())
}

fn boxed_path(s: &str) -> Result<Box<Path>, String> {
    Ok(Path::new(s).into())
}

fn boxed_trusted(s: &str) -> Result<Box<TrustedProxies>, String> {
    s.parse().map(Box::new)
}

/// `--config FILE`: a key for every flag (its name in snake_case). Flags win over the file.
/// Passwords only ever come from files (`*_password_file`) or the environment.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    listen: Option<String>,
    upstream: Option<Vec<String>>,
    protocol: Option<String>,
    admin: Option<String>,
    balance: Option<String>,
    driver: Option<String>,
    workers: Option<u32>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    idle_timeout: Option<String>,
    tunnel_idle_timeout: Option<String>,
    max_upstream_connections: Option<u32>,
    pool_wait_timeout: Option<String>,
    retries: Option<u32>,
    breaker_failures: Option<u32>,
    breaker_open: Option<String>,
    health_interval: Option<String>,
    health_path: Option<String>,
    redis_connections: Option<u32>,
    pool_size: Option<u32>,
    pool_mode: Option<String>,
    max_message_bytes: Option<u64>,
    max_prepared_statements: Option<u32>,
    pipeline_depth: Option<u32>,
    max_body: Option<u64>,
    max_head_bytes: Option<u64>,
    max_headers: Option<u32>,
    http2_max_streams: Option<u32>,
    http2_max_header_list: Option<u32>,
    max_request_line: Option<u64>,
    trusted_proxies: Option<Vec<String>>,
    drain_timeout: Option<String>,
    busy_poll: Option<String>,
    log_format: Option<LogFormat>,
    access_log: Option<PathBuf>,
    access_log_format: Option<LogFormat>,
    rate_limit: Option<String>,
    rate_limit_burst: Option<u32>,
    upstream_user: Option<String>,
    upstream_password_file: Option<PathBuf>,
    client_password_file: Option<PathBuf>,
    client_user: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    upstream_tls: Option<bool>,
    upstream_http2: Option<bool>,
    upstream_ca: Option<PathBuf>,
    upstream_server_name: Option<String>,
    upstream_cert: Option<PathBuf>,
    upstream_key: Option<PathBuf>,
}

/// The file's settings into `args` where no flag gave one. Relative password file paths are
/// relative to the config file's directory `dir`.
fn merge(args: &mut ProxyArgs, f: ProxyFile, dir: &Path) -> Result<(), String> {
    fn parse<T: std::str::FromStr>(s: String) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        s.parse::<T>().map_err(|e| e.to_string())
    }
    let duration = |s: String| parse_duration(&s);
    let path = |p: PathBuf| Ok::<_, String>(dir.join(p).into_boxed_path());
    fill(&mut args.listen, "listen", f.listen, parse)?;
    if args.upstream.is_empty() {
        for u in f.upstream.into_iter().flatten() {
            let u = parse_upstreams(&u).map_err(|e| format!("--config: upstream: {e}"))?;
            args.upstream.push(u);
        }
    }
    fill(&mut args.protocol, "protocol", f.protocol, parse)?;
    fill(&mut args.admin, "admin", f.admin, parse)?;
    fill(&mut args.balance, "balance", f.balance, parse)?;
    fill(&mut args.driver, "driver", f.driver, parse)?;
    fill(&mut args.workers, "workers", f.workers, in_range(1, 4096))?;
    fill(
        &mut args.connect_timeout,
        "connect_timeout",
        f.connect_timeout,
        duration,
    )?;
    fill(
        &mut args.response_timeout,
        "response_timeout",
        f.response_timeout,
        duration,
    )?;
    fill(
        &mut args.idle_timeout,
        "idle_timeout",
        f.idle_timeout,
        duration,
    )?;
    fill(
        &mut args.tunnel_idle_timeout,
        "tunnel_idle_timeout",
        f.tunnel_idle_timeout,
        duration,
    )?;
    fill(
        &mut args.max_upstream_connections,
        "max_upstream_connections",
        f.max_upstream_connections,
        in_range(1, u32::MAX),
    )?;
    fill(
        &mut args.pool_wait_timeout,
        "pool_wait_timeout",
        f.pool_wait_timeout,
        duration,
    )?;
    fill(&mut args.retries, "retries", f.retries, Ok)?;
    fill(
        &mut args.breaker_failures,
        "breaker_failures",
        f.breaker_failures,
        Ok,
    )?;
    fill(
        &mut args.breaker_open,
        "breaker_open",
        f.breaker_open,
        duration,
    )?;
    fill(
        &mut args.health_interval,
        "health_interval",
        f.health_interval,
        duration,
    )?;
    fill(&mut args.health_path, "health_path", f.health_path, |s| {
        parse_health_path(&s)
    })?;
    fill(
        &mut args.redis_connections,
        "redis_connections",
        f.redis_connections,
        in_range(1, 1024),
    )?;
    fill(
        &mut args.pool_size,
        "pool_size",
        f.pool_size,
        in_range(1, 100000),
    )?;
    fill(&mut args.pool_mode, "pool_mode", f.pool_mode, parse)?;
    fill(
        &mut args.max_prepared_statements,
        "max_prepared_statements",
        f.max_prepared_statements,
        in_range(0, 100000),
    )?;
    fill(
        &mut args.max_message_bytes,
        "max_message_bytes",
        f.max_message_bytes,
        |v: u64| {
            if (1024..=1 << 30).contains(&v) {
                Ok(v)
            } else {
                Err(format!("{v} is not in 1024..=1073741824"))
            }
        },
    )?;
    fill(
        &mut args.pipeline_depth,
        "pipeline_depth",
        f.pipeline_depth,
        in_range(1, 1024),
    )?;
    fill(&mut args.max_body, "max_body", f.max_body, Ok)?;
    fill(
        &mut args.max_head_bytes,
        "max_head_bytes",
        f.max_head_bytes,
        in_range(64, 1 << 30),
    )?;
    fill(
        &mut args.max_headers,
        "max_headers",
        f.max_headers,
        in_range(1, ferry_http1::MAX_HEADERS_CAP as u32),
    )?;
    fill(
        &mut args.http2_max_streams,
        "http2_max_streams",
        f.http2_max_streams,
        in_range(1, 10000),
    )?;
    fill(
        &mut args.http2_max_header_list,
        "http2_max_header_list",
        f.http2_max_header_list,
        in_range(1024, 1 << 24),
    )?;
    fill(
        &mut args.max_request_line,
        "max_request_line",
        f.max_request_line,
        in_range(16, 1 << 30),
    )?;
    fill(
        &mut args.trusted_proxies,
        "trusted_proxies",
        f.trusted_proxies,
        |v| {
            let mut t = TrustedProxies::default();
            v.iter().try_for_each(|c| t.add(c))?;
            Ok(Box::new(t))
        },
    )?;
    fill(
        &mut args.drain_timeout,
        "drain_timeout",
        f.drain_timeout,
        duration,
    )?;
    fill(&mut args.busy_poll, "busy_poll", f.busy_poll, duration)?;
    fill(&mut args.log_format, "log_format", f.log_format, Ok)?;
    fill(&mut args.access_log, "access_log", f.access_log, path)?;
    fill(&mut args.rate_limit, "rate_limit", f.rate_limit, |s| {
        parse_rate(&s)
    })?;
    fill(
        &mut args.rate_limit_burst,
        "rate_limit_burst",
        f.rate_limit_burst,
        in_range(1, u32::MAX),
    )?;
    fill(
        &mut args.access_log_format,
        "access_log_format",
        f.access_log_format,
        Ok,
    )?;
    fill(
        &mut args.upstream_user,
        "upstream_user",
        f.upstream_user,
        |u| Ok(u.into()),
    )?;
    fill(&mut args.client_user, "client_user", f.client_user, |u| {
        Ok(u.into())
    })?;
    fill(
        &mut args.upstream_password_file,
        "upstream_password_file",
        f.upstream_password_file,
        path,
    )?;
    fill(
        &mut args.client_password_file,
        "client_password_file",
        f.client_password_file,
        path,
    )?;
    fill(&mut args.tls_cert, "tls_cert", f.tls_cert, path)?;
    fill(&mut args.tls_key, "tls_key", f.tls_key, path)?;
    fill(
        &mut args.tls_client_ca,
        "tls_client_ca",
        f.tls_client_ca,
        path,
    )?;
    if f.upstream_tls == Some(true) {
        args.upstream_tls = true;
    }
    if f.upstream_http2 == Some(true) {
        args.upstream_http2 = true;
    }
    fill(&mut args.upstream_ca, "upstream_ca", f.upstream_ca, path)?;
    fill(
        &mut args.upstream_server_name,
        "upstream_server_name",
        f.upstream_server_name,
        |s| Ok(s.into()),
    )?;
    fill(
        &mut args.upstream_cert,
        "upstream_cert",
        f.upstream_cert,
        path,
    )?;
    fill(&mut args.upstream_key, "upstream_key", f.upstream_key, path)?;
    Ok(())
}

/// A config file's error, with a hint when a password was written in it.
fn config_error(e: String) -> String {
    for key in ["upstream_password", "client_password"] {
        if e.contains(&format!("unknown field `{key}`")) {
            return format!(
                "{}: unknown key `{key}`: a password never goes in the config; use `{key}_file` (or FERRY_{})",
                e.split(": unknown field").next().unwrap_or("--config"),
                key.to_ascii_uppercase()
            );
        }
    }
    e
}

/// A password from `file` (one trailing newline dropped), else from the environment
/// variable `env`; `Ok(None)` if neither is set.
fn load_secret(file: Option<&Path>, env: &str, flag: &str) -> Result<Option<Vec<u8>>, String> {
    let mut secret = match file {
        Some(path) => {
            let meta =
                std::fs::metadata(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))?;
            if meta.len() > 1 << 20 {
                return Err(format!("--{flag} {}: larger than 1 MiB", path.display()));
            }
            {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o004 != 0 {
                    tracing::warn!(
                        "--{flag} {}: the file is readable by every user",
                        path.display()
                    );
                }
            }
            std::fs::read(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))?
        }
        None => match std::env::var_os(env) {
            Some(v) => {
                use std::os::unix::ffi::OsStringExt;
                v.into_vec()
            }
            None => return Ok(None),
        },
    };
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.is_empty() {
        let from = match file {
            Some(p) => format!("--{flag} {}", p.display()),
            None => env.to_string(),
        };
        return Err(format!("{from}: the password is empty"));
    }
    Ok(Some(secret))
}

/// `--upstream-user`/`--upstream-password-file` and `--client-user`/`--client-password-file`.
fn redis_credentials(args: &ProxyArgs, cfg: &mut ProxyConfig) -> Result<(), String> {
    let postgres = args.protocol == Some(Protocol::Postgres);
    if args.protocol != Some(Protocol::Redis) && !postgres {
        if args.upstream_user.is_some()
            || args.upstream_password_file.is_some()
            || args.client_user.is_some()
            || args.client_password_file.is_some()
        {
            return Err("--upstream-user, --upstream-password-file, --client-user and --client-password-file: only with --protocol redis or postgres".into());
        }
        return Ok(());
    }
    let upstream = load_secret(
        args.upstream_password_file.as_deref(),
        "FERRY_UPSTREAM_PASSWORD",
        "upstream-password-file",
    )?;
    let client = load_secret(
        args.client_password_file.as_deref(),
        "FERRY_CLIENT_PASSWORD",
        "client-password-file",
    )?;
    let user_ok = |u: &str| {
        !u.is_empty()
            && !u
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    };
    for (flag, user) in [
        ("upstream-user", &args.upstream_user),
        ("client-user", &args.client_user),
    ] {
        if user.as_deref().is_some_and(|u| !user_ok(u)) {
            return Err(format!(
                "--{flag}: empty, or contains spaces or control characters"
            ));
        }
    }
    if postgres {
        let pg = &mut cfg.postgres;
        pg.upstream_user = args.upstream_user.as_deref().map(str::to_string);
        pg.upstream_password = upstream;
        if client.is_none() && args.client_user.is_some() {
            return Err(
                "--client-user needs a password (--client-password-file or FERRY_CLIENT_PASSWORD)"
                    .into(),
            );
        }
        pg.client_user = args.client_user.as_deref().map(str::to_string);
        pg.client_password = client;
        return Ok(());
    }
    match (upstream, &args.upstream_user) {
        (Some(p), u) => {
            cfg.redis_upstream_auth = Some(Credentials::new(u.as_deref(), p));
        }
        (None, Some(_)) => {
            return Err("--upstream-user needs a password (--upstream-password-file or FERRY_UPSTREAM_PASSWORD)".into())
        }
        (None, None) => {}
    }
    match (client, &args.client_user) {
        (Some(p), u) => {
            cfg.redis_client_auth = Some(Credentials::new(u.as_deref(), p));
        }
        (None, Some(_)) => {
            return Err(
                "--client-user needs a password (--client-password-file or FERRY_CLIENT_PASSWORD)"
                    .into(),
            )
        }
        (None, None) => {}
    }
    Ok(())
}

/// What `ferry proxy` runs, from the flags (the config file merged in).
fn options(args: &ProxyArgs) -> Result<ProxyOptions, String> {
    let env = std::env::var("FERRY_DRIVER").ok();
    let driver = match resolve(args.driver.unwrap_or(DriverKind::Auto), env.as_deref()) {
        Ok(d @ (DriverKind::Epoll | DriverKind::Uring | DriverKind::Auto)) => d,
        Ok(d) => return Err(format!("--driver {d}: not supported by ferry proxy")),
        Err(e) => return Err(format!("FERRY_DRIVER: {e}")),
    };
    let Some(listen) = args.listen.clone() else {
        return Err("--listen: required (the flag, or `listen` in --config)".into());
    };
    let upstreams: Vec<Upstream> = args.upstream.iter().flatten().cloned().collect();
    if upstreams.is_empty() {
        return Err(
            "--upstream: at least one address (the flag, or `upstream` in --config)".into(),
        );
    }
    // Metrics, breakers, health and pools are per upstream: a repeat would split one server's
    // figures across two series and count it twice in every balancer.
    if let Some(dup) = upstreams
        .iter()
        .enumerate()
        .find_map(|(i, u)| upstreams[..i].contains(u).then_some(u))
    {
        return Err(format!(
            "--upstream: `{dup}` is listed twice (list each upstream once)"
        ));
    }
    let protocol = args.protocol.unwrap_or(Protocol::Http);
    let mut cfg = ProxyConfig::new(upstreams);
    cfg.balance = args.balance.unwrap_or_default();
    cfg.connect_timeout = args.connect_timeout.unwrap_or(cfg.connect_timeout);
    cfg.response_timeout = args.response_timeout.unwrap_or(cfg.response_timeout);
    cfg.idle_timeout = args.idle_timeout.unwrap_or(cfg.idle_timeout);
    cfg.tunnel_idle_timeout = args.tunnel_idle_timeout.unwrap_or(cfg.tunnel_idle_timeout);
    cfg.retries = args.retries.unwrap_or(cfg.retries);
    cfg.max_connections_per_upstream = args
        .max_upstream_connections
        .map_or(cfg.max_connections_per_upstream, |n| n as usize);
    cfg.pool_wait_timeout = args.pool_wait_timeout.unwrap_or(cfg.pool_wait_timeout);
    match args.breaker_failures.unwrap_or(5) {
        0 => {
            cfg.breaker.consecutive_failures = None;
            cfg.breaker.failure_rate = None;
        }
        n => cfg.breaker.consecutive_failures = Some(n),
    }
    let breaker_open = args.breaker_open.unwrap_or(Duration::from_secs(5));
    cfg.breaker.open_duration = breaker_open;
    cfg.breaker.max_open_duration = Some(breaker_open.max(Duration::from_secs(60)));
    cfg.redis_connections = args
        .redis_connections
        .map_or(cfg.redis_connections, |n| n as usize);
    cfg.pipeline_depth = args
        .pipeline_depth
        .map_or(cfg.pipeline_depth, |n| n as usize);
    cfg.http2_max_streams = args.http2_max_streams.unwrap_or(cfg.http2_max_streams);
    cfg.http2_max_header_list = args
        .http2_max_header_list
        .unwrap_or(cfg.http2_max_header_list);
    redis_credentials(args, &mut cfg)?;
    cfg.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(
            ferry_proxy::tls_server_config(protocol, c, k, args.tls_client_ca.as_deref())
                .map_err(|e| e.to_string())?,
        ),
        (None, None) if args.tls_client_ca.is_some() => {
            return Err("--tls-client-ca: only with --tls-cert and --tls-key".into())
        }
        (None, None) => None,
        (Some(_), None) => return Err("--tls-cert: needs --tls-key".into()),
        (None, Some(_)) => return Err("--tls-key: needs --tls-cert".into()),
    };
    let upstream_cert = match (&args.upstream_cert, &args.upstream_key) {
        (Some(c), Some(k)) => Some((&**c, &**k)),
        (None, None) => None,
        (Some(_), None) => return Err("--upstream-cert: needs --upstream-key".into()),
        (None, Some(_)) => return Err("--upstream-key: needs --upstream-cert".into()),
    };
    if args.upstream_tls {
        cfg.upstream_tls = Some(
            ferry_proxy::upstream_tls_config(
                protocol,
                args.upstream_ca.as_deref(),
                args.upstream_server_name.as_deref(),
                upstream_cert,
            )
            .map_err(|e| e.to_string())?,
        );
    } else if upstream_cert.is_some() {
        return Err("--upstream-cert, --upstream-key: only with --upstream-tls".into());
    } else if args.upstream_ca.is_some() || args.upstream_server_name.is_some() {
        return Err("--upstream-ca, --upstream-server-name: only with --upstream-tls".into());
    }
    if protocol == Protocol::Postgres {
        if cfg.balance != Balance::RoundRobin {
            return Err(
                "--balance: postgres picks upstreams round robin (for new server connections)"
                    .into(),
            );
        }
        let pg = &mut cfg.postgres;
        pg.pool_size = args.pool_size.map_or(pg.pool_size, |n| n as usize);
        pg.pool_mode = args.pool_mode.unwrap_or(pg.pool_mode);
        pg.max_message_bytes = args
            .max_message_bytes
            .map_or(pg.max_message_bytes, |n| n as usize);
        pg.max_prepared_statements = args
            .max_prepared_statements
            .map_or(pg.max_prepared_statements, |n| n as usize);
        // Queries may run long: a reply timeout only when asked for.
        pg.response_timeout = args.response_timeout;
    } else if args.pool_size.is_some()
        || args.pool_mode.is_some()
        || args.max_message_bytes.is_some()
        || args.max_prepared_statements.is_some()
    {
        return Err(
            "--pool-size, --pool-mode, --max-message-bytes and --max-prepared-statements: only \
             with --protocol postgres"
                .into(),
        );
    }
    if args.upstream_http2 {
        if protocol != Protocol::Http {
            return Err("--upstream-http2: only with --protocol http".into());
        }
        if args.upstream_tls {
            return Err("--upstream-http2: h2c only (not with --upstream-tls)".into());
        }
        cfg.upstream_http2 = true;
    }
    if let Some(t) = &args.trusted_proxies {
        if protocol != Protocol::Http {
            return Err("--trusted-proxies: only with --protocol http".into());
        }
        cfg.trusted_proxies = (**t).clone();
    }
    match (&args.access_log, args.access_log_format) {
        (Some(_), _) if protocol != Protocol::Http => {
            return Err("--access-log: only with --protocol http".into());
        }
        (Some(path), format) => {
            cfg.access_log = Some(AccessLogSpec {
                path: path.to_path_buf(),
                format: match format {
                    Some(LogFormat::Json) => AccessFormat::Json,
                    _ => AccessFormat::Text,
                },
            });
        }
        (None, Some(_)) => return Err("--access-log-format: needs --access-log".into()),
        (None, None) => {}
    }
    match (args.rate_limit, args.rate_limit_burst) {
        (Some(_), _) if protocol != Protocol::Http => {
            return Err("--rate-limit: only with --protocol http".into());
        }
        (Some((n, per)), burst) => {
            let q = ferry_reliability::Quota::new(n, per);
            cfg.rate_limit = Some(burst.map_or(q, |b| q.with_burst(b)));
        }
        (None, Some(_)) => return Err("--rate-limit-burst: needs --rate-limit".into()),
        (None, None) => {}
    }
    let health_interval = args.health_interval.unwrap_or(Duration::from_secs(2));
    cfg.health = (!health_interval.is_zero()).then(|| HealthConfig {
        interval: health_interval,
        timeout: health_interval.min(Duration::from_secs(1)),
        path: args.health_path.clone().unwrap_or_else(|| "/".into()),
        ..HealthConfig::default()
    });
    let mut server = ServerOptions::default();
    if let Some(n) = args.workers {
        server.workers = n as usize;
    }
    server.drain_timeout = args.drain_timeout.unwrap_or(Duration::from_secs(30));
    if let Some(v) = args.max_body {
        server.http.max_body = v;
    }
    if let Some(v) = args.max_head_bytes {
        server.http.max_head_bytes = v as usize;
    }
    if let Some(v) = args.max_headers {
        server.http.max_headers = v as usize;
    }
    if let Some(v) = args.max_request_line {
        server.http.max_request_line = v as usize;
    }
    server.busy_poll = args.busy_poll.filter(|d| !d.is_zero());
    let mut opts = ProxyOptions::new(listen, protocol, cfg);
    opts.admin = args.admin;
    opts.driver = driver;
    opts.server = server;
    Ok(opts)
}

/// The options `flags` and the `--config` file at `path` give (flags win, as at start).
fn load_options(flags: &ProxyArgs, path: &Path) -> Result<ProxyOptions, String> {
    let file = config_file::load::<ProxyFile>(path).map_err(config_error)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut args = flags.clone();
    merge(&mut args, file, dir)?;
    options(&args)
}

/// Reload from `path` (SIGHUP, `RELOAD`): re-read and check the whole file, merge the flags
/// over it, and apply it or keep the running configuration. Logs one line either way.
fn reload(flags: &ProxyArgs, path: &Path, proxy: &ferry_proxy::Reloader) -> Result<u64, String> {
    let shown = path.display();
    let r = match load_options(flags, path) {
        Ok(opts) => proxy.reload(opts).map_err(|e| e.to_string()),
        Err(e) => {
            // Counted as a refused reload too (the file is the reload's input).
            proxy.count_error();
            Err(format!("{e} (kept the running configuration)"))
        }
    };
    match &r {
        Ok(g) => tracing::info!("ferry: reload: --config {shown}: applied (generation {g})"),
        Err(e) => {
            // The loader's errors name the file already.
            let e = e
                .strip_prefix(&format!("--config {shown}: "))
                .or_else(|| e.strip_prefix("--config: "))
                .unwrap_or(e);
            tracing::warn!("ferry: reload: --config {shown}: {e}");
        }
    }
    r
}

pub(crate) fn proxy(mut args: ProxyArgs) -> ExitCode {
    // The command line alone: a reload merges it over the file again.
    let flags = args.clone();
    if let Some(path) = args.config.clone() {
        let file = match config_file::load::<ProxyFile>(&path) {
            Ok(f) => f,
            Err(e) => return usage_error(config_error(e)),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Err(e) = merge(&mut args, file, dir) {
            return usage_error(e);
        }
    }
    init_logs(args.log_format.unwrap_or_default());
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => return usage_error(e),
    };
    let protocol = opts.protocol;

    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let proxy = match ferry_proxy::start(opts) {
        Ok(p) => p,
        Err(ferry_proxy::StartError::Config(e)) => return usage_error(e),
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(1);
        }
    };
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let proto = match protocol {
            Protocol::Redis => "redis",
            Protocol::Postgres => "postgres",
            _ => "http",
        };
        let _ = writeln!(
            out,
            "ferry: listening {proto} {} driver={}",
            proxy.handle.local_addr,
            proxy.handle.driver.name()
        );
        if let Some(a) = proxy.admin_addr() {
            let _ = writeln!(out, "ferry: admin http {a}");
        }
        let _ = out.flush();
    }
    // SIGHUP and the PostgreSQL console's RELOAD re-read --config (without one, SIGHUP is
    // logged and ignored).
    let reloader = proxy.reloader();
    let reload_now: Option<std::sync::Arc<dyn Fn() -> Result<u64, String> + Send + Sync>> =
        flags.config.clone().map(|path| {
            let r = reloader.clone();
            let f = move || reload(&flags, &path, &r);
            std::sync::Arc::new(f) as std::sync::Arc<dyn Fn() -> Result<u64, String> + Send + Sync>
        });
    if let Some(f) = &reload_now {
        let f = f.clone();
        proxy.live().set_hook(Box::new(move || f()));
    }
    let stop = proxy.handle.shutdown.clone();
    let mut signals = signals;
    let sig_handle = signals.handle();
    std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    match &reload_now {
                        Some(f) => {
                            let _ = f();
                        }
                        None => {
                            tracing::warn!(
                                "ferry: reload: no --config file to re-read (SIGHUP ignored)"
                            )
                        }
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    stop.trigger();
                } else {
                    eprintln!("ferry: second signal, exiting without draining");
                    std::process::exit(1);
                }
            }
        })
        .ok();
    let bad = proxy.wait();
    sig_handle.close();
    if bad > 0 {
        eprintln!("ferry: {bad} thread(s) failed");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_as_nginx_writes_them() {
        assert_eq!(parse_rate("10"), Ok((10, Duration::from_secs(1))));
        assert_eq!(parse_rate("10/s"), Ok((10, Duration::from_secs(1))));
        assert_eq!(parse_rate("5/m"), Ok((5, Duration::from_secs(60))));
        assert_eq!(parse_rate("1/h"), Ok((1, Duration::from_secs(3600))));
        for bad in ["0", "-1", "x/s", "10/d", "", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    /// `ferry proxy FLAGS` with the config `toml` (relative paths from /etc/ferry).
    fn resolve(flags: &[&str], toml: &str) -> Result<(ProxyArgs, ProxyOptions), String> {
        let mut args = Cli::try_parse_from(std::iter::once("proxy").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?
            .args;
        let file: ProxyFile = toml::from_str(toml).map_err(|e| e.message().to_string())?;
        merge(&mut args, file, Path::new("/etc/ferry"))?;
        let opts = options(&args)?;
        Ok((args, opts))
    }

    const FULL: &str = r#"
        listen = "127.0.0.1:7000"
        upstream = ["10.0.0.1:80", "10.0.0.2:80,backend.internal:8080"]
        protocol = "http"
        admin = "127.0.0.1:9000"
        balance = "least-requests"
        driver = "epoll"
        workers = 3
        connect_timeout = "250ms"
        response_timeout = "7s"
        idle_timeout = "2m"
        max_upstream_connections = 64
        pool_wait_timeout = "1500ms"
        retries = 0
        breaker_failures = 0
        breaker_open = "90s"
        health_interval = "0"
        health_path = "/healthz"
        redis_connections = 4
        pipeline_depth = 1
        max_body = 1000
        max_head_bytes = 4096
        max_headers = 50
        http2_max_streams = 16
        http2_max_header_list = 8192
        max_request_line = 2048
        trusted_proxies = ["10.0.0.0/8", "::1"]
        drain_timeout = "3s"
        busy_poll = "50us"
        log_format = "json"
    "#;

    #[test]
    fn a_whole_proxy_in_one_file() {
        let (args, o) = resolve(&[], FULL).unwrap();
        assert_eq!(o.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(o.config.upstreams.len(), 3);
        assert_eq!(o.config.upstreams[2].to_string(), "backend.internal:8080");
        assert_eq!(o.protocol, Protocol::Http);
        assert_eq!(o.admin, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(o.config.balance, Balance::LeastRequests);
        assert_eq!(o.driver, DriverKind::Epoll);
        assert_eq!(o.server.workers, 3);
        assert_eq!(o.config.connect_timeout, Duration::from_millis(250));
        assert_eq!(o.config.response_timeout, Duration::from_secs(7));
        assert_eq!(o.config.idle_timeout, Duration::from_secs(120));
        assert_eq!(o.config.max_connections_per_upstream, 64);
        assert_eq!(o.config.pool_wait_timeout, Duration::from_millis(1500));
        assert_eq!(o.config.retries, 0);
        assert_eq!(o.config.breaker.consecutive_failures, None);
        assert_eq!(o.config.breaker.open_duration, Duration::from_secs(90));
        assert_eq!(o.config.health, None);
        assert_eq!(o.config.redis_connections, 4);
        assert_eq!(o.config.pipeline_depth, 1);
        assert_eq!(o.server.http.max_body, 1000);
        assert_eq!(o.server.http.max_head_bytes, 4096);
        assert_eq!(o.server.http.max_headers, 50);
        assert_eq!(o.config.http2_max_streams, 16);
        assert_eq!(o.config.http2_max_header_list, 8192);
        assert_eq!(o.server.http.max_request_line, 2048);
        assert!(o
            .config
            .trusted_proxies
            .contains("10.1.2.3".parse().unwrap()));
        assert!(o.config.trusted_proxies.contains("::1".parse().unwrap()));
        assert!(!o
            .config
            .trusted_proxies
            .contains("127.0.0.1".parse().unwrap()));
        assert_eq!(o.server.drain_timeout, Duration::from_secs(3));
        assert_eq!(o.server.busy_poll, Some(Duration::from_micros(50)));
        assert_eq!(args.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_stay() {
        let (_, o) = resolve(
            &[
                "--listen",
                "127.0.0.1:7001",
                "--upstream",
                "10.9.9.9:80",
                "--connect-timeout",
                "2s",
                "--retries",
                "5",
                "--health-path",
                "/up",
                "--trusted-proxies",
                "127.0.0.0/8",
            ],
            FULL,
        )
        .unwrap();
        assert_eq!(o.listen.to_string(), "127.0.0.1:7001");
        // The flag's upstreams replace the file's (not added to them).
        assert_eq!(o.config.upstreams, vec!["10.9.9.9:80".parse().unwrap()]);
        assert_eq!(o.config.connect_timeout, Duration::from_secs(2));
        assert_eq!(o.config.retries, 5);
        // Given only by the file.
        assert_eq!(o.config.response_timeout, Duration::from_secs(7));
        assert!(o
            .config
            .trusted_proxies
            .contains("127.0.0.1".parse().unwrap()));
        assert!(!o
            .config
            .trusted_proxies
            .contains("10.1.2.3".parse().unwrap()));
        // Neither: the defaults, as without --config.
        let (_, d) = resolve(
            &["--listen", "127.0.0.1:1", "--upstream", "10.0.0.1:80"],
            "",
        )
        .unwrap();
        let plain = ProxyConfig::new(["10.0.0.1:80".parse::<SocketAddr>().unwrap()]);
        assert_eq!(d.protocol, Protocol::Http);
        assert_eq!(d.config.connect_timeout, plain.connect_timeout);
        assert_eq!(d.config.response_timeout, plain.response_timeout);
        assert_eq!(d.config.idle_timeout, plain.idle_timeout);
        assert_eq!(d.config.retries, plain.retries);
        assert_eq!(d.config.pipeline_depth, plain.pipeline_depth);
        assert_eq!(d.config.health, plain.health);
        assert_eq!(d.config.breaker.consecutive_failures, Some(5));
        assert_eq!(d.config.breaker.open_duration, Duration::from_secs(5));
        assert!(d.config.trusted_proxies.is_empty());
        assert_eq!(d.server.drain_timeout, Duration::from_secs(30));
        assert_eq!(d.server.busy_poll, None);
    }

    #[test]
    fn redis_credentials_from_the_file() {
        let dir = std::env::temp_dir().join(format!("ferry-proxy-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("up.pw"), "s3cret\n").unwrap();
        std::fs::write(dir.join("client.pw"), "hunter2").unwrap();
        let file: ProxyFile = toml::from_str(
            r#"
            listen = "127.0.0.1:6380"
            upstream = ["127.0.0.1:6379"]
            protocol = "redis"
            upstream_user = "proxy"
            upstream_password_file = "up.pw"
            client_user = "app"
            client_password_file = "client.pw"
            "#,
        )
        .unwrap();
        let mut args = Cli::try_parse_from(["proxy"]).unwrap().args;
        merge(&mut args, file, &dir).unwrap();
        // Relative to the config file's directory.
        assert_eq!(
            args.upstream_password_file.as_deref(),
            Some(&*dir.join("up.pw"))
        );
        let o = options(&args).unwrap();
        assert_eq!(o.protocol, Protocol::Redis);
        assert!(o.config.redis_upstream_auth.is_some());
        assert!(o.config.redis_client_auth.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_files_from_the_config_file() {
        let dir = std::env::temp_dir().join(format!("ferry-proxy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        let toml = r#"
            listen = "127.0.0.1:5433"
            upstream = ["127.0.0.1:5432"]
            protocol = "postgres"
            tls_cert = "cert.pem"
            tls_key = "key.pem"
        "#;
        let file: ProxyFile = toml::from_str(toml).unwrap();
        let mut args = Cli::try_parse_from(["proxy"]).unwrap().args;
        merge(&mut args, file, &dir).unwrap();
        assert_eq!(args.tls_cert.as_deref(), Some(&*dir.join("cert.pem")));
        assert!(options(&args).unwrap().config.tls.is_some());
        // Without: plain.
        let (_, o) = resolve(&[], FULL).unwrap();
        assert!(o.config.tls.is_none());
        // One of the two: the flag that is missing its partner is named.
        let file: ProxyFile = toml::from_str(&toml.replace("tls_key = \"key.pem\"", "")).unwrap();
        let mut args = Cli::try_parse_from(["proxy"]).unwrap().args;
        merge(&mut args, file, &dir).unwrap();
        let e = options(&args).unwrap_err();
        assert!(e.starts_with("--tls-cert"), "{e}");
        // Upstream TLS, the CA relative to the file too.
        let up = r#"
            listen = "127.0.0.1:8443"
            upstream = ["127.0.0.1:443"]
            upstream_tls = true
            upstream_ca = "cert.pem"
            upstream_server_name = "localhost"
        "#;
        let file: ProxyFile = toml::from_str(up).unwrap();
        let mut args = Cli::try_parse_from(["proxy"]).unwrap().args;
        merge(&mut args, file, &dir).unwrap();
        let t = options(&args).unwrap().config.upstream_tls.unwrap();
        assert_eq!(t.server_name.as_deref(), Some("localhost"));
        // Every protocol: with upstream_tls, and without it the CA and name are errors.
        for proto in ["http", "redis", "postgres"] {
            let file: ProxyFile = toml::from_str(&format!("{up}\nprotocol = \"{proto}\"")).unwrap();
            let mut args = Cli::try_parse_from(["proxy"]).unwrap().args;
            merge(&mut args, file, &dir).unwrap();
            let t = options(&args).unwrap().config.upstream_tls.unwrap();
            assert_eq!(t.server_name.as_deref(), Some("localhost"), "{proto}");
            let plain = up.replace("upstream_tls = true", "");
            let file: ProxyFile =
                toml::from_str(&format!("{plain}\nprotocol = \"{proto}\"")).unwrap();
            let mut args = Cli::try_parse_from(["proxy"]).unwrap().args;
            merge(&mut args, file, &dir).unwrap();
            let e = options(&args).unwrap_err();
            assert!(e.starts_with("--upstream-ca"), "{proto}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mtls_files_from_the_config_file_and_flag_errors() {
        let dir = std::env::temp_dir().join(format!("ferry-proxy-mtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        let parse = |toml: &str| {
            let file: ProxyFile = toml::from_str(toml).unwrap();
            let mut args = Cli::try_parse_from(["proxy"]).unwrap().args;
            merge(&mut args, file, &dir).unwrap();
            args
        };
        let base = "listen = \"127.0.0.1:8443\"\nupstream = [\"127.0.0.1:443\"]\n";
        let listener = "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n";
        let client_ca = "tls_client_ca = \"cert.pem\"\n";
        let upstream = "upstream_tls = true\nupstream_ca = \"cert.pem\"\n";
        let up_cert = "upstream_cert = \"cert.pem\"\n";
        let up_key = "upstream_key = \"key.pem\"\n";
        for proto in ["http", "redis", "postgres"] {
            let p = format!("protocol = \"{proto}\"\n");
            let args = parse(&format!(
                "{base}{p}{listener}{client_ca}{upstream}{up_cert}{up_key}"
            ));
            assert_eq!(args.tls_client_ca.as_deref(), Some(&*dir.join("cert.pem")));
            assert_eq!(args.upstream_key.as_deref(), Some(&*dir.join("key.pem")));
            let o = options(&args).unwrap();
            assert!(
                o.config.tls.is_some() && o.config.upstream_tls.is_some(),
                "{proto}"
            );
            // Each flag without what it needs: an error naming it.
            for (toml, flag) in [
                (format!("{base}{p}{client_ca}"), "--tls-client-ca"),
                (format!("{base}{p}{up_cert}{up_key}"), "--upstream-cert"),
                (format!("{base}{p}{upstream}{up_cert}"), "--upstream-cert"),
                (format!("{base}{p}{upstream}{up_key}"), "--upstream-key"),
            ] {
                let e = options(&parse(&toml)).unwrap_err();
                assert!(e.starts_with(flag), "{proto} {toml}: {e}");
                assert!(!e.contains('\n'), "{e}");
            }
            // An unreadable or empty file: the flag is named.
            let e = options(&parse(&format!(
                "{base}{p}{listener}tls_client_ca = \"missing.pem\"\n"
            )))
            .unwrap_err();
            assert!(e.starts_with("--tls-client-ca"), "{e}");
            let e = options(&parse(&format!(
                "{base}{p}{upstream}{up_key}upstream_cert = \"key.pem\"\n"
            )))
            .unwrap_err();
            assert!(e.starts_with("--upstream-cert"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn postgres_flags_and_file_keys() {
        let (_, o) = resolve(
            &["--pool-size", "3", "--pool-mode", "session"],
            r#"
            listen = "127.0.0.1:6432"
            upstream = ["127.0.0.1:5432"]
            protocol = "postgres"
            max_message_bytes = 4096
            max_prepared_statements = 7
            upstream_user = "app"
            "#,
        )
        .unwrap();
        assert_eq!(o.protocol, Protocol::Postgres);
        let pg = &o.config.postgres;
        assert_eq!(pg.pool_size, 3);
        assert_eq!(pg.pool_mode, PoolMode::Session);
        assert_eq!(pg.max_message_bytes, 4096);
        assert_eq!(pg.max_prepared_statements, 7);
        assert_eq!(pg.upstream_user.as_deref(), Some("app"));
        assert_eq!(pg.response_timeout, None, "none unless given");
        let (_, d) = resolve(
            &[
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "10.0.0.1:5432",
                "--protocol",
                "postgres",
                "--response-timeout",
                "9s",
            ],
            "",
        )
        .unwrap();
        assert_eq!(d.config.postgres.pool_size, 10);
        assert_eq!(d.config.postgres.pool_mode, PoolMode::Transaction);
        assert_eq!(
            d.config.postgres.response_timeout,
            Some(Duration::from_secs(9))
        );
        let e = resolve(
            &[
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "10.0.0.1:80",
                "--pool-size",
                "2",
            ],
            "",
        )
        .err()
        .unwrap();
        assert!(e.contains("only with --protocol postgres"), "{e}");
        assert!(resolve(&["--pool-mode", "statement"], "").is_err());
        let e = resolve(
            &[
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "10.0.0.1:5432",
                "--protocol",
                "postgres",
                "--balance",
                "hash",
            ],
            "",
        )
        .err()
        .unwrap();
        assert!(e.starts_with("--balance: postgres"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let base = "listen = \"127.0.0.1:1\"\nupstream = [\"10.0.0.1:80\"]\n";
        for (extra, key) in [
            ("connect_timeout = \"5x\"", "--config: connect_timeout: "),
            ("busy_poll = \"soon\"", "--config: busy_poll: "),
            ("workers = 0", "--config: workers: "),
            ("pipeline_depth = 5000", "--config: pipeline_depth: "),
            ("max_head_bytes = 1", "--config: max_head_bytes: "),
            ("protocol = \"ftp\"", "--config: protocol: "),
            ("balance = \"random\"", "--config: balance: "),
            ("driver = \"nope\"", "--config: driver: "),
            ("admin = \"nowhere\"", "--config: admin: "),
            (
                "trusted_proxies = [\"10.0.0.1/8\"]",
                "--config: trusted_proxies: ",
            ),
        ] {
            let e = resolve(&[], &format!("{base}{extra}\n")).err().unwrap();
            assert!(e.starts_with(key), "{extra}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = resolve(&[], "listen = \"x\"\n").err().unwrap();
        assert!(e.starts_with("--config: listen: "), "{e}");
        let e = resolve(&[], "upstream = [\"nope\"]\n").err().unwrap();
        assert!(e.starts_with("--config: upstream: "), "{e}");
        let e = resolve(&[], "listen = \"127.0.0.1:1\"\n").err().unwrap();
        assert!(e.starts_with("--upstream: "), "{e}");
        let e = resolve(&[], "upstream = [\"10.0.0.1:80\"]\n")
            .err()
            .unwrap();
        assert!(e.starts_with("--listen: "), "{e}");
        let e = resolve(&[], &format!("{base}upstream_user = \"u\"\n"))
            .err()
            .unwrap();
        assert!(e.contains("only with --protocol redis or postgres"), "{e}");
        let e = resolve(
            &[],
            &format!("{base}protocol = \"redis\"\ntrusted_proxies = [\"::1\"]\n"),
        )
        .err()
        .unwrap();
        assert!(
            e.starts_with("--trusted-proxies: only with --protocol http"),
            "{e}"
        );
    }

    #[test]
    fn a_password_in_the_file_is_refused_with_a_hint() {
        let e = config_error(
            "--config /x.toml: unknown field `upstream_password`, expected one of `listen`".into(),
        );
        assert!(
            e.starts_with("--config /x.toml: unknown key `upstream_password`"),
            "{e}"
        );
        assert!(e.contains("upstream_password_file"), "{e}");
        assert!(e.contains("FERRY_UPSTREAM_PASSWORD"), "{e}");
        let other = "--config /x.toml: unknown field `bogus`".to_string();
        assert_eq!(config_error(other.clone()), other);
    }

    #[test]
    fn upstream_http2_from_flag_or_file_and_only_for_plain_http() {
        let base = "listen = \"127.0.0.1:8080\"\nupstream = [\"127.0.0.1:9\"]\n";
        let (_, o) = resolve(&[], base).unwrap();
        assert!(!o.config.upstream_http2);
        let (_, o) = resolve(&["--upstream-http2"], base).unwrap();
        assert!(o.config.upstream_http2);
        let (_, o) = resolve(&[], &format!("{base}upstream_http2 = true\n")).unwrap();
        assert!(o.config.upstream_http2);
        let e = resolve(&["--upstream-http2", "--protocol", "redis"], base).unwrap_err();
        assert!(
            e.contains("--upstream-http2: only with --protocol http"),
            "{e}"
        );
        let e = resolve(&["--upstream-http2", "--upstream-tls"], base).unwrap_err();
        assert!(e.contains("--upstream-http2: h2c only"), "{e}");
    }

    #[test]
    fn a_reload_merges_the_flags_over_the_new_file() {
        let dir = std::env::temp_dir().join(format!("ferry-reload-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.toml");
        let flags = Cli::try_parse_from(["proxy", "--retries", "5", "--config", "x"])
            .unwrap()
            .args;
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nupstream = [\"10.0.0.1:80\"]\nretries = 1\n",
        )
        .unwrap();
        let a = load_options(&flags, &path).unwrap();
        assert_eq!(a.config.retries, 5, "the flag wins");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nupstream = [\"10.0.0.2:80\", \"10.0.0.3:80\"]\n\
             retries = 0\nconnect_timeout = \"3s\"\n",
        )
        .unwrap();
        let b = load_options(&flags, &path).unwrap();
        assert_eq!(b.config.retries, 5, "still the flag's");
        assert_eq!(b.config.upstreams.len(), 2);
        assert_eq!(b.config.connect_timeout, Duration::from_secs(3));
        std::fs::write(&path, "listen = \"127.0.0.1:7000\"\nupstream = 5\n").unwrap();
        let e = load_options(&flags, &path).unwrap_err();
        assert!(
            e.starts_with(&format!("--config {}: upstream", path.display())),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
