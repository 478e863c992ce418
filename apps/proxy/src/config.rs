//! What a proxy is told: upstreams, policies, timeouts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::balance::Balance;
use crate::redis::auth::Credentials;
use ferry_reliability::BreakerConfig;

/// The protocol a proxy speaks (`--protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 reverse proxy / L7 load balancer.
    Http,
    /// Redis (RESP) pooling proxy.
    Redis,
    /// PostgreSQL pooling proxy (PgBouncer-class: transaction or session pooling).
    Postgres,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(Protocol::Http),
            "redis" => Ok(Protocol::Redis),
            "postgres" | "postgresql" => Ok(Protocol::Postgres),
            _ => Err(format!(
                "unknown protocol `{s}` (use http, redis or postgres)"
            )),
        }
    }
}

/// One upstream: an address, or a host name resolved off the I/O workers (at start, then
/// again at every health-check round) so that a name that stops resolving only takes that
/// upstream out of rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upstream {
    /// `IP:PORT`.
    Addr(SocketAddr),
    /// `HOST:PORT`.
    Name {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
    },
}

impl From<SocketAddr> for Upstream {
    fn from(a: SocketAddr) -> Upstream {
        Upstream::Addr(a)
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Addr(a) => write!(f, "{a}"),
            Upstream::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Upstream, String> {
        let s = s.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Upstream::Addr(a));
        }
        let bad = || format!("invalid upstream address `{s}` (use IP:PORT or HOST:PORT)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !ok || port == 0 {
            return Err(bad());
        }
        Ok(Upstream::Name {
            host: host.to_string(),
            port,
        })
    }
}

impl Upstream {
    /// Resolve (blocking: call it off the I/O workers). The first IPv4 address wins, else
    /// the first address.
    pub fn resolve(&self) -> Option<SocketAddr> {
        preferred(&self.resolve_all())
    }

    /// Every address (blocking: call it off the I/O workers), without repeats, in the
    /// resolver's order; none when the name does not resolve.
    pub fn resolve_all(&self) -> Vec<SocketAddr> {
        match self {
            Upstream::Addr(a) => vec![*a],
            Upstream::Name { host, port } => {
                use std::net::ToSocketAddrs;
                let mut all: Vec<SocketAddr> = Vec::new();
                for a in (host.as_str(), *port)
                    .to_socket_addrs()
                    .into_iter()
                    .flatten()
                {
                    if !all.contains(&a) {
                        all.push(a);
                    }
                }
                all
            }
        }
    }
}

/// The address a name's connections go to by default: the first IPv4 one, else the first.
pub fn preferred(all: &[SocketAddr]) -> Option<SocketAddr> {
    all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse() {
        assert_eq!(
            "10.0.0.1:80".parse::<Upstream>(),
            Ok(Upstream::Addr("10.0.0.1:80".parse().unwrap()))
        );
        assert!(matches!(
            "[::1]:6379".parse::<Upstream>(),
            Ok(Upstream::Addr(_))
        ));
        assert_eq!(
            "backend-1.internal:8080".parse::<Upstream>(),
            Ok(Upstream::Name {
                host: "backend-1.internal".into(),
                port: 8080
            })
        );
        for bad in [
            "nope",
            "host:",
            ":80",
            "host:0",
            "host:99999",
            "a b:80",
            "x/y:80",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
        assert_eq!(
            "localhost:1".parse::<Upstream>().unwrap().to_string(),
            "localhost:1"
        );
    }
}

/// Active health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between checks of one upstream. Default 2 s.
    pub interval: Duration,
    /// Time allowed for one check. Default 1 s.
    pub timeout: Duration,
    /// HTTP path asked for (`GET`, any 2xx/3xx is healthy); Redis checks send `PING`.
    /// Default `/`.
    pub path: String,
    /// Consecutive failed checks that mark an upstream down. Default 2.
    pub fall: u32,
    /// Consecutive good checks that mark it up again. Default 2.
    pub rise: u32,
    /// Redis: credentials the check authenticates with (`AUTH`, then `PING`; healthy is
    /// `+OK` then `+PONG`). Without them `-NOAUTH` counts as healthy (clients authenticate
    /// themselves). [`start`](crate::start) copies [`ProxyConfig::redis_upstream_auth`] here.
    pub redis_auth: Option<Credentials>,
    /// Probe over TLS, as connections go (HTTP: the request over TLS; PostgreSQL:
    /// `SSLRequest`, `S`, then a TLS handshake; Redis: `PING` over TLS).
    /// [`start`](crate::start) copies [`ProxyConfig::upstream_tls`] here.
    pub tls: Option<UpstreamTls>,
    /// HTTP: probe over HTTP/2 with prior knowledge (h2c), as connections go with
    /// `--upstream-http2`. [`start`](crate::start) copies [`ProxyConfig::upstream_http2`] here.
    pub http2: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            path: "/".into(),
            fall: 2,
            rise: 2,
            redis_auth: None,
            http2: false,
            tls: None,
        }
    }
}

/// A proxy's configuration.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Upstreams (at most 255).
    pub upstreams: Vec<Upstream>,
    /// Load-balancing policy (HTTP).
    pub balance: Balance,
    /// Time allowed for an upstream TCP connect. Default 1 s.
    pub connect_timeout: Duration,
    /// Time allowed for an upstream's response head once the request is sent, and the longest
    /// an exchange may make no progress while a body moves (the client sending the request
    /// body: `408`; the upstream taking it or sending the response). Default 30 s.
    pub response_timeout: Duration,
    /// How long an idle upstream connection stays in a worker's pool. Default 60 s.
    pub idle_timeout: Duration,
    /// HTTP: how long a tunnel (after a `101` or a CONNECT) may carry no byte either way
    /// before both its connections close (a client that vanished without a FIN must not hold
    /// an upstream connection, and its pool slot, forever; HAProxy's `timeout tunnel`).
    /// Zero: no limit. Default 1 h.
    pub tunnel_idle_timeout: Duration,
    /// Most connections (busy, idle or connecting) per upstream per worker; requests beyond
    /// wait for one (`pool_wait_timeout`, at most `max_waiters` queued, then 503). Default 512.
    pub max_connections_per_upstream: usize,
    /// How long a request waits for a pooled connection at the limit. Default 5 s.
    pub pool_wait_timeout: Duration,
    /// Requests queued per upstream per worker at the connection limit. Default 4096.
    pub max_waiters: usize,
    /// Extra attempts for an idempotent request whose upstream failed before answering
    /// (connect failure, reset, EOF), or for any request none of which was sent (a failed
    /// connect, a pooled connection found closed); Redis: for a command an upstream
    /// answered `-LOADING` (not run), each time on another upstream. Default 2.
    pub retries: u32,
    /// Retries allowed per 10 s window as a share of requests (plus the minimum below), so
    /// retries cannot multiply load when an upstream fails. Default 0.2.
    pub retry_budget_ratio: f64,
    /// Retries per second always allowed by the budget. Default 10.
    pub retry_budget_min_per_sec: u32,
    /// Largest request body kept to replay on a retry; bigger bodies are not retried.
    /// Default 64 KiB.
    pub max_replay_body: usize,
    /// Circuit breaker per upstream (per worker): by default 5 failures in a row or 50% of
    /// the last 100 calls open it for 5 s (doubling up to 60 s), then 3 probes decide.
    pub breaker: BreakerConfig,
    /// Active health checks (`None`: passive only, through the breakers).
    pub health: Option<HealthConfig>,
    /// Redis: shared upstream connections per upstream per worker. Default 2.
    pub redis_connections: usize,
    /// HTTP: most requests a client pipelined that go down one upstream connection
    /// back-to-back (only bodyless GET/HEAD/OPTIONS; anything else waits for the
    /// responses before it and goes alone). `0` or `1`: one request at a time. Not used
    /// with the `hash` balancer (each request picks its own upstream). Default 16.
    pub pipeline_depth: usize,
    /// Redis: the proxy's credentials, sent as `AUTH [user] password` first on every
    /// upstream connection (and health check). Default none.
    pub redis_upstream_auth: Option<Credentials>,
    /// Redis: clients must authenticate to the proxy with these (`AUTH`, `HELLO … AUTH`),
    /// answered by the proxy; they then share the pooled connections. Default none (a
    /// client's `AUTH` goes to a dedicated upstream connection of its own).
    pub redis_client_auth: Option<Credentials>,
    /// HTTP: clients whose forwarded fields are kept (a TLS terminator or load balancer in
    /// front). A request from one of these addresses keeps its `X-Forwarded-Proto` (ours is
    /// added only when it has none); `X-Forwarded-For` is appended to either way. Default
    /// none: every client's `X-Forwarded-Proto` is replaced.
    pub trusted_proxies: TrustedProxies,
    /// PostgreSQL: pool size and mode, message limit, credentials.
    pub postgres: crate::postgres::PostgresConfig,
    /// HTTP: where and how to write the access log (one line per exchange). Default none.
    pub access_log: Option<AccessLogSpec>,
    /// HTTP: requests admitted per client address (its burst, then its rate; beyond it `429`
    /// with `Retry-After`). The client is the connection's peer, or for a trusted proxy
    /// (`trusted_proxies`) the last `X-Forwarded-For` address. Default none.
    pub rate_limit: Option<ferry_reliability::Quota>,
    /// The listener's TLS certificate and key (`--tls-cert`/`--tls-key`): HTTP and Redis
    /// clients speak TLS from the first byte; PostgreSQL clients get `S` to `SSLRequest`
    /// and TLS from there (without it, `N`). With `--tls-client-ca`, clients must present a
    /// certificate that CA signed (mutual TLS). Build it with [`tls_server_config`].
    /// Default none: plain TCP.
    pub tls: Option<ferry_tls::ServerConfig>,
    /// TLS to the upstreams (`--upstream-tls`), for every upstream connection and health
    /// check: HTTPS; PostgreSQL `SSLRequest` then TLS (an upstream answering `N` is refused,
    /// as libpq's `sslmode=verify-full`); Redis TLS from the first byte. Build it with
    /// [`upstream_tls_config`]. Default none: plain TCP.
    pub upstream_tls: Option<UpstreamTls>,
    /// HTTP: the upstreams speak HTTP/2 over plain TCP (`--upstream-http2`; h2c with prior
    /// knowledge): each exchange is a stream on a pooled HTTP/2 connection, one at a time
    /// per connection. Default false: HTTP/1.1.
    pub upstream_http2: bool,
    /// HTTP/2 clients (h2c with prior knowledge, h2 over TLS): most concurrent streams per
    /// client connection (SETTINGS_MAX_CONCURRENT_STREAMS; more are refused with
    /// REFUSED_STREAM). Default 100.
    pub http2_max_streams: u32,
    /// HTTP/2 clients: largest decoded request header list in bytes
    /// (SETTINGS_MAX_HEADER_LIST_SIZE; a bigger one is answered `431`). Default 65536.
    pub http2_max_header_list: u32,
}

/// `--access-log PATH` and its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogSpec {
    /// The file appended to (`-`: standard output).
    pub path: std::path::PathBuf,
    /// Text (nginx `combined` plus the proxy's fields) or JSON lines.
    pub format: crate::access_log::AccessFormat,
}

/// TLS to the upstreams: whom to trust, and the name to check their certificates against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Trusted CA certificates (`--upstream-ca`, else the system bundle).
    pub config: ferry_tls::ClientConfig,
    /// The name sent as SNI and checked against every upstream's certificate
    /// (`--upstream-server-name`); `None`: each upstream's own host name, or its IP address.
    pub server_name: Option<String>,
}

impl UpstreamTls {
    /// The name to verify `up`'s certificate against.
    pub fn name_for(&self, up: &Upstream) -> String {
        match (&self.server_name, up) {
            (Some(n), _) => n.clone(),
            (None, Upstream::Name { host, .. }) => host.clone(),
            (None, Upstream::Addr(a)) => a.ip().to_string(),
        }
    }
}

/// The system's CA bundle (Debian's `ca-certificates`), the default of `--upstream-ca`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// [`UpstreamTls`] for `protocol`'s upstreams (ALPN `http/1.1` for HTTP, `postgresql` for
/// PostgreSQL, none for Redis) from a PEM CA file (`None`: [`SYSTEM_CA_BUNDLE`]), an
/// optional fixed server name and an optional client certificate chain and key (PEM files)
/// presented to upstreams that ask for one (mutual TLS); errors name the flag
/// (`--upstream-ca`, `--upstream-server-name`, `--upstream-cert`, `--upstream-key`).
pub fn upstream_tls_config(
    protocol: Protocol,
    ca: Option<&std::path::Path>,
    server_name: Option<&str>,
    client_cert: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<UpstreamTls, TlsConfigError> {
    let path = ca.unwrap_or(std::path::Path::new(SYSTEM_CA_BUNDLE));
    let pem = read_pem("upstream-ca", path)?;
    let config = match client_cert {
        None => ferry_tls::ClientConfig::from_ca_pem(&pem, alpn(protocol)),
        Some((cert, key)) => {
            let (c, k) = (
                read_pem("upstream-cert", cert)?,
                read_pem("upstream-key", key)?,
            );
            ferry_tls::ClientConfig::with_client_cert_pem(&pem, &c, &k, alpn(protocol))
        }
    };
    let config = config.map_err(|e| {
        let (flag, what) = match (&e, client_cert) {
            (ferry_tls::ConfigError::NoCertificate, Some((c, _))) => ("upstream-cert", c),
            (ferry_tls::ConfigError::NoKey | ferry_tls::ConfigError::Rustls(_), Some((_, k))) => {
                ("upstream-key", k)
            }
            _ => ("upstream-ca", path),
        };
        TlsConfigError {
            flag,
            message: format!("{}: {e}", what.display()),
        }
    })?;
    if let Some(n) = server_name {
        if ferry_tls::Tls::client(&config, n).is_err() {
            return Err(TlsConfigError {
                flag: "upstream-server-name",
                message: format!("`{n}` is neither a DNS name nor an IP address"),
            });
        }
    }
    Ok(UpstreamTls {
        config,
        server_name: server_name.map(str::to_string),
    })
}

/// The bytes of the PEM file `p`, or an error naming `flag`.
fn read_pem(flag: &'static str, p: &std::path::Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(p).map_err(|e| TlsConfigError {
        flag,
        message: format!("cannot read {}: {e}", p.display()),
    })
}

impl ProxyConfig {
    /// Defaults for these upstreams.
    pub fn new<U: Into<Upstream>>(upstreams: impl IntoIterator<Item = U>) -> ProxyConfig {
        ProxyConfig {
            upstreams: upstreams.into_iter().map(Into::into).collect(),
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            max_connections_per_upstream: 512,
            pool_wait_timeout: Duration::from_secs(5),
            max_waiters: 4096,
            retries: 2,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10,
            max_replay_body: 64 * 1024,
            breaker: BreakerConfig::default(),
            health: Some(HealthConfig::default()),
            redis_connections: 2,
            pipeline_depth: 16,
            redis_upstream_auth: None,
            redis_client_auth: None,
            trusted_proxies: TrustedProxies::default(),
            postgres: crate::postgres::PostgresConfig::default(),
            access_log: None,
            rate_limit: None,
            tls: None,
            upstream_tls: None,
            upstream_http2: false,
            http2_max_streams: 100,
            http2_max_header_list: 64 * 1024,
        }
    }
}

/// Address ranges (CIDR) of trusted proxies (`--trusted-proxies 10.0.0.0/8,::1`), as nginx's
/// `set_real_ip_from` or Envoy's trusted hops. Each range is kept as a network and a
/// precomputed prefix mask, so a check is an AND and a compare per range; an IPv4-mapped
/// IPv6 peer (`::ffff:10.1.2.3`) is checked as its IPv4 address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl TrustedProxies {
    /// No range: nobody is trusted.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
        }
    }

    /// Add one range: `IP/PREFIX`, or an address alone (`/32`, `/128`). Host bits set in
    /// `IP` are an error (`10.0.0.1/8` is a mistake for `10.0.0.0/8` or `10.0.0.1/32`).
    pub fn add(&mut self, cidr: &str) -> Result<(), String> {
        let cidr = cidr.trim();
        let bad = |why: &str| format!("invalid CIDR `{cidr}`{why}");
        let (ip, prefix) = match cidr.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (cidr, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| bad(" (use IP/PREFIX, e.g. 10.0.0.0/8)"))?;
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u32 = match prefix {
            Some(p) => match p.parse() {
                Ok(n) if n <= bits && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad(&format!(" (prefix 0 to {bits})"))),
            },
            None => bits,
        };
        let host_bits = || bad(" (address bits set past the prefix)");
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                // A mapped `::ffff:a.b.c.d/p` counts its prefix over 128 bits.
                let prefix = if ip.is_ipv6() {
                    prefix
                        .checked_sub(96)
                        .ok_or_else(|| bad(" (prefix 96 to 128)"))?
                } else {
                    prefix
                };
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                let a = u32::from(a);
                if a & !mask != 0 {
                    return Err(host_bits());
                }
                self.v4.push((a, mask));
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                let a = u128::from(a);
                if a & !mask != 0 {
                    return Err(host_bits());
                }
                self.v6.push((a, mask));
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;
    /// Comma-separated ranges.
    fn from_str(s: &str) -> Result<TrustedProxies, String> {
        let mut t = TrustedProxies::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            t.add(part)?;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod trusted_tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_match_by_prefix() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.1.7,fd00::/8,::1".parse().unwrap();
        assert!(!t.is_empty());
        for yes in [
            "10.0.0.1",
            "10.255.255.255",
            "192.168.1.7",
            "fd12::3",
            "::1",
        ] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.1",
            "9.255.255.255",
            "192.168.1.8",
            "fe00::1",
            "::2",
            "127.0.0.1",
        ] {
            assert!(!t.contains(ip(no)), "{no}");
        }
        // An IPv4 peer on an IPv6 socket.
        assert!(t.contains(ip("::ffff:10.9.8.7")));
        assert!(!t.contains(ip("::ffff:11.9.8.7")));
        let all: TrustedProxies = "0.0.0.0/0,::/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")) && all.contains(ip("2001:db8::1")));
        let mapped: TrustedProxies = "::ffff:127.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("127.0.0.1")) && !mapped.contains(ip("128.0.0.1")));
        assert!(TrustedProxies::default().is_empty());
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_ranges_are_errors() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "nope",
            "10.0.0/8",
            "::ffff:1.2.3.4/64",
            "fd00::1/8",
        ] {
            let e = bad.parse::<TrustedProxies>().unwrap_err();
            assert!(e.contains("invalid CIDR"), "{bad}: {e}");
        }
    }
}

/// Why [`tls_server_config`] or [`upstream_tls_config`] failed, naming the flag to blame.
#[derive(Debug)]
pub struct TlsConfigError {
    /// `tls-cert`, `tls-key`, `tls-client-ca`, `upstream-ca`, `upstream-server-name`,
    /// `upstream-cert` or `upstream-key`.
    pub flag: &'static str,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--{}: {}", self.flag, self.message)
    }
}

impl std::error::Error for TlsConfigError {}

/// The ALPN name of `protocol` (PostgreSQL 17 registered `postgresql`; Redis has none).
fn alpn(protocol: Protocol) -> &'static [&'static [u8]] {
    match protocol {
        Protocol::Http => &[b"http/1.1"],
        Protocol::Postgres => &[b"postgresql"],
        Protocol::Redis => &[],
    }
}

/// The listener's TLS settings from PEM files: `cert` (the chain, leaf first) and `key`,
/// with the protocol's ALPN names (`h2` and `http/1.1` for HTTP, `postgresql` for
/// PostgreSQL, none for Redis); with `client_ca` (`--tls-client-ca`), every client must
/// present a certificate chained to one of its CA certificates (mutual TLS).
pub fn tls_server_config(
    protocol: Protocol,
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<ferry_tls::ServerConfig, TlsConfigError> {
    let (c, k) = (read_pem("tls-cert", cert)?, read_pem("tls-key", key)?);
    let ca = client_ca
        .map(|p| read_pem("tls-client-ca", p))
        .transpose()?;
    let offered: &[&[u8]] = match protocol {
        // HTTP/2 first (RFC 9113 §3.2): the proxy serves both on the same listener; upstreams
        // are spoken to in HTTP/1.1 (`alpn`).
        Protocol::Http => &[b"h2", b"http/1.1"],
        p => alpn(p),
    };
    let built = match &ca {
        None => ferry_tls::ServerConfig::from_pem(&c, &k, offered),
        Some(ca) => ferry_tls::ServerConfig::from_pem_requiring_client_certs(&c, &k, ca, offered),
    };
    built.map_err(|e| {
        let (flag, what) = match (&e, client_ca) {
            (ferry_tls::ConfigError::NoCertificate, _) => ("tls-cert", cert),
            (
                ferry_tls::ConfigError::NoCaCertificate | ferry_tls::ConfigError::ClientVerifier(_),
                Some(ca),
            ) => ("tls-client-ca", ca),
            _ => ("tls-key", key),
        };
        TlsConfigError {
            flag,
            message: format!("{}: {e}", what.display()),
        }
    })
}
