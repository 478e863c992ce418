//! `ferry proxy`: the HTTP reverse proxy / Redis pooling proxy (see CONTRACT.md).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use ferry_driver::select::{resolve, DriverKind};
use ferry_driver::{ListenAddr, ServerOptions};
use ferry_proxy::redis::auth::Credentials;
use ferry_proxy::{Balance, HealthConfig, Protocol, ProxyConfig, ProxyOptions, Upstream};

use crate::{init_logs, parse_duration, usage_error, LogFormat};

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

#[derive(clap::Args, Debug)]
pub(crate) struct ProxyArgs {
    /// Where clients connect: IP:PORT, [IPv6]:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    listen: ListenAddr,
    /// Upstream servers, comma-separated IP:PORT or HOST:PORT (repeatable). Names are
    /// resolved off the I/O workers, at start and at every health-check round.
    #[arg(long, value_name = "ADDR[,ADDR…]", value_parser = parse_upstreams, required = true)]
    upstream: Vec<Vec<Upstream>>,
    /// http (reverse proxy / L7 load balancer) or redis (pooling proxy).
    #[arg(long, value_name = "PROTO", default_value = "http")]
    protocol: Protocol,
    /// Admin listener serving /metrics (Prometheus text) and /health (503 once draining).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// round-robin, least-requests or hash (consistent hashing of the request target; for
    /// redis, of each command's first argument, its key).
    #[arg(long, value_name = "POLICY", default_value = "round-robin")]
    balance: Balance,
    /// Event loop: auto, epoll or uring (FERRY_DRIVER overrides auto) [default: auto].
    #[arg(long, value_name = "DRIVER")]
    driver: Option<DriverKind>,
    /// I/O workers, pinned one per allowed CPU [default: allowed CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: Option<u32>,
    /// Upstream connect timeout.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Time allowed for an upstream's response head, and for a body in either direction to
    /// make progress (a client stalling mid-body gets 408).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    response_timeout: Duration,
    /// How long an idle upstream connection stays pooled.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// HTTP: how long a tunnel (WebSocket, CONNECT) may carry no byte either way before both
    /// its connections close (0: no limit).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    tunnel_idle_timeout: Duration,
    /// Most connections per upstream per I/O worker; further requests wait for one.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_upstream_connections: u32,
    /// How long a request waits for a connection at that limit before a 503.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pool_wait_timeout: Duration,
    /// Extra attempts for idempotent requests whose upstream failed before answering (and
    /// for any request none of which was sent).
    #[arg(long, value_name = "N", default_value_t = 2)]
    retries: u32,
    /// Consecutive failures that open an upstream's circuit breaker (0: never). It also opens
    /// at 50% failures over the last 100 requests (at least 20).
    #[arg(long, value_name = "N", default_value_t = 5)]
    breaker_failures: u32,
    /// How long an open breaker refuses requests before admitting probes (doubling on each
    /// re-open, up to 60 s or this).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    breaker_open: Duration,
    /// Active health check period (0 disables active checks).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    health_interval: Duration,
    /// Path of the HTTP health check (GET, 2xx/3xx is healthy).
    #[arg(long, value_name = "PATH", default_value = "/", value_parser = parse_health_path)]
    health_path: String,
    /// Redis: shared upstream connections per upstream per worker.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    redis_connections: u32,
    /// HTTP: most pipelined requests (bodyless GET/HEAD/OPTIONS from one client) sent
    /// back-to-back on one upstream connection (1: off).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pipeline_depth: u32,
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
    /// HTTP: longest request line in bytes, else 414 [default: 8192].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(16..=(1 << 30)))]
    max_request_line: Option<u64>,
    /// How long in-flight requests may finish after SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Busy polling: after activity an I/O worker polls without sleeping for this long before
    /// it blocks (e.g. 50us; 0: off). Lower latency across cores for CPU time.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    busy_poll: Duration,
    /// Log format on stderr: text or json.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Redis: the user the proxy authenticates to upstreams as (`AUTH user password`; without
    /// it `AUTH password`, Redis's `default` user / `requirepass`). Needs a password.
    #[arg(long, value_name = "NAME", value_parser = boxed_str)]
    upstream_user: Option<Box<str>>,
    /// Redis: file holding the password the proxy authenticates to upstreams with, on every
    /// connection it opens and in health checks (one trailing newline is ignored; else from
    /// FERRY_UPSTREAM_PASSWORD; never a plain flag, which `ps` would show).
    #[arg(long, value_name = "PATH", value_parser = boxed_path)]
    upstream_password_file: Option<Box<Path>>,
    /// Redis: clients must authenticate to the proxy (AUTH, or HELLO … AUTH) with the
    /// password in this file (else FERRY_CLIENT_PASSWORD) before any other command; the
    /// proxy answers AUTH itself and the client keeps using the shared connections.
    #[arg(long, value_name = "PATH", value_parser = boxed_path)]
    client_password_file: Option<Box<Path>>,
    /// Redis: the user name clients authenticate as (`AUTH user password`; without it
    /// `default`, so `AUTH password` works). Needs a client password.
    #[arg(long, value_name = "NAME", value_parser = boxed_str)]
    client_user: Option<Box<str>>,
}

/// The credential flags are boxed: they are rarely given, and `ProxyArgs` sits in an enum.
fn boxed_str(s: &str) -> Result<Box<str>, String> {
    Ok(s.into())
}

fn boxed_path(s: &str) -> Result<Box<Path>, String> {
    Ok(Path::new(s).into())
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
    if args.protocol != Protocol::Redis {
        if args.upstream_user.is_some()
            || args.upstream_password_file.is_some()
            || args.client_user.is_some()
            || args.client_password_file.is_some()
        {
            return Err("--upstream-user, --upstream-password-file, --client-user and --client-password-file: only with --protocol redis".into());
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

pub(crate) fn proxy(args: ProxyArgs) -> ExitCode {
    init_logs(args.log_format);
    let env = std::env::var("FERRY_DRIVER").ok();
    let driver = match resolve(args.driver.unwrap_or(DriverKind::Auto), env.as_deref()) {
        Ok(d @ (DriverKind::Epoll | DriverKind::Uring | DriverKind::Auto)) => d,
        Ok(d) => return usage_error(format_args!("--driver {d}: not supported by ferry proxy")),
        Err(e) => return usage_error(format_args!("FERRY_DRIVER: {e}")),
    };
    let upstreams: Vec<Upstream> = args.upstream.iter().flatten().cloned().collect();
    if upstreams.is_empty() {
        return usage_error("--upstream: at least one address");
    }
    let mut cfg = ProxyConfig::new(upstreams);
    cfg.balance = args.balance;
    cfg.connect_timeout = args.connect_timeout;
    cfg.response_timeout = args.response_timeout;
    cfg.idle_timeout = args.idle_timeout;
    cfg.tunnel_idle_timeout = args.tunnel_idle_timeout;
    cfg.retries = args.retries;
    cfg.max_connections_per_upstream = args.max_upstream_connections as usize;
    cfg.pool_wait_timeout = args.pool_wait_timeout;
    if args.breaker_failures == 0 {
        cfg.breaker.consecutive_failures = None;
        cfg.breaker.failure_rate = None;
    } else {
        cfg.breaker.consecutive_failures = Some(args.breaker_failures);
    }
    cfg.breaker.open_duration = args.breaker_open;
    cfg.breaker.max_open_duration = Some(args.breaker_open.max(Duration::from_secs(60)));
    cfg.redis_connections = args.redis_connections as usize;
    cfg.pipeline_depth = args.pipeline_depth as usize;
    if let Err(e) = redis_credentials(&args, &mut cfg) {
        return usage_error(e);
    }
    cfg.health = (!args.health_interval.is_zero()).then(|| HealthConfig {
        interval: args.health_interval,
        timeout: args.health_interval.min(Duration::from_secs(1)),
        path: args.health_path.clone(),
        ..HealthConfig::default()
    });
    let mut server = ServerOptions::default();
    if let Some(n) = args.workers {
        server.workers = n as usize;
    }
    server.drain_timeout = args.drain_timeout;
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
    server.busy_poll = (!args.busy_poll.is_zero()).then_some(args.busy_poll);
    let mut opts = ProxyOptions::new(args.listen, args.protocol, cfg);
    opts.admin = args.admin;
    opts.driver = driver;
    opts.server = server;

    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
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
        let proto = match args.protocol {
            Protocol::Redis => "redis",
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
    let stop = proxy.handle.shutdown.clone();
    let mut signals = signals;
    let sig_handle = signals.handle();
    std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for _ in signals.forever() {
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
