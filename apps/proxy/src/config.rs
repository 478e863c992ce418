//! What a proxy is told: upstreams, policies, timeouts.

use std::net::SocketAddr;
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
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(Protocol::Http),
            "redis" => Ok(Protocol::Redis),
            _ => Err(format!("unknown protocol `{s}` (use http or redis)")),
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
    /// connect, a pooled connection found closed). Default 2.
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
        }
    }
}
