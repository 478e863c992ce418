//! Active health checks and name resolution: one thread per proxy re-resolves host-name
//! upstreams and checks each upstream every interval with a
//! bounded blocking probe (HTTP `GET path` expecting 2xx/3xx, PostgreSQL `SSLRequest`
//! expecting the one byte `S` or `N`, or Redis `PING` expecting
//! `+PONG`, or `-NOAUTH` from a server that requires AUTH; with upstream credentials,
//! `AUTH` first and `+OK` `+PONG`) and flips its `healthy` flag after `fall` failures or `rise` successes in a row.
//! With upstream TLS every probe goes over TLS, the certificate checked as connections' are:
//! HTTP's and Redis's from the first byte; PostgreSQL's `SSLRequest` must get `S` alone,
//! then the handshake must succeed (that is the probe).
//! Workers read the flag when they pick an upstream; a probe never runs on an I/O worker.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{HealthConfig, Protocol, Upstream, UpstreamTls};
use crate::metrics::ProxyStats;

/// One probe: whether `addr` answers well within `cfg.timeout`.
pub fn probe(addr: SocketAddr, protocol: Protocol, cfg: &HealthConfig) -> bool {
    probe_as(addr, &addr.to_string(), protocol, cfg)
}

/// [`probe`] with `host` as the HTTP check's `Host` (an upstream given by name is asked by
/// that name, as requests without a `Host` of their own are: a name-based virtual host
/// answers for it, where the address alone may get a 404 and take the upstream out).
pub fn probe_as(addr: SocketAddr, host: &str, protocol: Protocol, cfg: &HealthConfig) -> bool {
    let deadline = Instant::now() + cfg.timeout;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, cfg.timeout) else {
        return false;
    };
    let _ = s.set_nodelay(true);
    if let (Protocol::Redis, Some(tls)) = (protocol, cfg.tls.as_ref()) {
        let Some(mut t) = TlsStream::connect(&mut s, tls, &tls_name(tls, host), deadline) else {
            return false;
        };
        return match cfg.redis_auth.as_ref() {
            Some(c) => crate::redis::auth::health_probe(&mut t, addr, c, deadline),
            None => exchange(&mut t, protocol, b"*1\r\n$4\r\nPING\r\n", deadline),
        };
    }
    if let (Protocol::Redis, Some(c)) = (protocol, cfg.redis_auth.as_ref()) {
        return crate::redis::auth::health_probe(&mut s, addr, c, deadline);
    }
    if protocol == Protocol::Http && cfg.http2 {
        return h2_get(&mut s, host, &cfg.path, deadline);
    }
    let req = match protocol {
        Protocol::Redis => b"*1\r\n$4\r\nPING\r\n".to_vec(),
        // SSLRequest: a PostgreSQL server answers one byte, `S` or `N`, without any login.
        Protocol::Postgres => vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
        _ => format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferry-proxy-health\r\nConnection: close\r\n\r\n",
            cfg.path
        )
        .into_bytes(),
    };
    if s.set_write_timeout(Some(cfg.timeout)).is_err() {
        return false;
    }
    if let (Protocol::Http, Some(tls)) = (protocol, cfg.tls.as_ref()) {
        let head = tls_exchange(&mut s, tls, &tls_name(tls, host), &req, deadline, 12);
        return head.len() >= 12 && head.starts_with(b"HTTP/1.") && matches!(head[9], b'2' | b'3');
    }
    if let (Protocol::Postgres, Some(tls)) = (protocol, cfg.tls.as_ref()) {
        // `S` alone (`N` is down: TLS is required), then a handshake that verifies.
        if s.write_all(&req).is_err() || read_some(&mut s, deadline).as_deref() != Some(&b"S"[..]) {
            return false;
        }
        return TlsStream::connect(&mut s, tls, &tls_name(tls, host), deadline).is_some();
    }
    exchange(&mut s, protocol, &req, deadline)
}

/// The HTTP/2 probe (`--upstream-http2`: h2c with prior knowledge): `GET path` on stream 1
/// (ferry-http2's client connection), healthy on a 2xx/3xx `:status`; a GOAWAY, a reset, EOF
/// or the deadline is down.
fn h2_get(s: &mut TcpStream, host: &str, path: &str, deadline: Instant) -> bool {
    use ferry_http2::{Body, ClientConnection, Config, Event, RequestHead};
    use ferry_proto::Connection;
    let start = Instant::now();
    let now = || ferry_proto::Instant::from_nanos(start.elapsed().as_nanos() as u64);
    let mut c = ClientConnection::new(Arc::new(Config::default()), now());
    let fields = [("user-agent", &b"ferry-proxy-health"[..])];
    let head = RequestHead::new("GET", "http", host, path).fields(&fields);
    if c.send_request(&head, Body::Empty).is_err() {
        return false;
    }
    let mut input = bytes::BytesMut::with_capacity(16 * 1024);
    let mut buf = [0u8; 16 * 1024];
    loop {
        while let Some(out) = c.poll_transmit() {
            if s.write_all(&out).is_err() {
                return false;
            }
        }
        while let Some(ev) = c.poll_event() {
            match ev {
                Event::Response { response, .. } => {
                    return (200..400).contains(&response.status());
                }
                Event::Reset { .. } | Event::GoAway { .. } => return false,
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if c.is_closed() || left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                input.extend_from_slice(&buf[..n]);
                if c.handle_input(now(), &mut input).is_err() {
                    return false;
                }
            }
        }
    }
}

/// Up to 64 bytes read from `s` (one read) before `deadline`; `None` on EOF or an error.
fn read_some(s: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
        return None;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(buf[..n].to_vec()),
    }
}

/// A probe's request on `s` and its answer checked (the plain probes, and Redis's `PING`
/// over TLS).
fn exchange<S: ProbeStream>(s: &mut S, protocol: Protocol, req: &[u8], deadline: Instant) -> bool {
    if s.write_all(req).is_err() || s.flush().is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_timeouts(left).is_err() {
            return false;
        }
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        if protocol == Protocol::Redis && buf[..got].contains(&b'\n') {
            break; // the whole reply line (Redis keeps the connection open)
        }
        if protocol == Protocol::Postgres && got > 0 {
            break; // the one-byte answer
        }
    }
    let head = &buf[..got];
    match protocol {
        // A server that requires AUTH (`requirepass`, ACLs) is up too; clients authenticate.
        Protocol::Redis => head.starts_with(b"+PONG") || head.starts_with(b"-NOAUTH"),
        Protocol::Postgres => head == b"S" || head == b"N",
        _ => head.len() >= 12 && head.starts_with(b"HTTP/1.") && matches!(head[9], b'2' | b'3'),
    }
}

/// A blocking stream a probe talks over: a socket, or TLS over one.
pub(crate) trait ProbeStream: Read + Write {
    /// Read and write timeouts for the next calls.
    fn set_timeouts(&mut self, t: Duration) -> std::io::Result<()>;
}

impl ProbeStream for TcpStream {
    fn set_timeouts(&mut self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

/// TLS over a blocking socket for the probes: [`ferry_tls::Tls`] pumped by hand.
pub(crate) struct TlsStream<'a> {
    s: &'a mut TcpStream,
    t: ferry_tls::Tls,
    plain: bytes::BytesMut,
    deadline: Instant,
}

impl<'a> TlsStream<'a> {
    /// A client session for `name` on `s`, its handshake done (certificate verified)
    /// before `deadline`; `None` when it fails.
    pub(crate) fn connect(
        s: &'a mut TcpStream,
        tls: &UpstreamTls,
        name: &str,
        deadline: Instant,
    ) -> Option<TlsStream<'a>> {
        let t = ferry_tls::Tls::client(&tls.config, name).ok()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_write_timeout(Some(left)).is_err() {
            return None;
        }
        let mut me = TlsStream {
            s,
            t,
            plain: bytes::BytesMut::new(),
            deadline,
        };
        while me.t.is_handshaking() {
            me.flush_out().ok()?;
            me.read_more().ok()?;
        }
        me.flush_out().ok()?;
        Some(me)
    }

    fn flush_out(&mut self) -> std::io::Result<()> {
        while let Some(b) = self.t.poll_transmit() {
            self.s.write_all(&b)?;
        }
        Ok(())
    }

    /// One read of ciphertext, decrypted into `plain`.
    fn read_more(&mut self) -> std::io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.s.set_read_timeout(Some(left))?;
        let mut buf = [0u8; 4096];
        let n = self.s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut c = bytes::BytesMut::from(&buf[..n]);
        let r = self.t.handle_input(&mut c, &mut self.plain);
        self.flush_out()?; // handshake replies, alerts
        r.map(|_| ())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }
}

impl Read for TlsStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.plain.is_empty() {
            self.read_more()?;
        }
        let n = buf.len().min(self.plain.len());
        buf[..n].copy_from_slice(&self.plain.split_to(n));
        Ok(n)
    }
}

impl Write for TlsStream<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.t.send(buf);
        self.flush_out()?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_out()
    }
}

/// A `close_notify` before the socket closes (a server then sees a clean end, not an
/// unexpected EOF to log).
impl Drop for TlsStream<'_> {
    fn drop(&mut self) {
        self.t.close();
        let _ = self.flush_out();
    }
}

impl ProbeStream for TlsStream<'_> {
    fn set_timeouts(&mut self, t: Duration) -> std::io::Result<()> {
        self.s.set_write_timeout(Some(t))
    }
}

/// The name an upstream's certificate is checked against: the fixed one, else the host of
/// `host` (`NAME:PORT` or `IP:PORT`).
fn tls_name(tls: &UpstreamTls, host: &str) -> String {
    if let Some(n) = &tls.server_name {
        return n.clone();
    }
    match host.parse::<SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => host.rsplit_once(':').map_or(host, |(h, _)| h).to_string(),
    }
}

/// `req` over TLS on `s` (blocking, until `deadline`): the first `want` bytes (or fewer) of
/// the plaintext answer; nothing when the handshake fails.
fn tls_exchange(
    s: &mut TcpStream,
    tls: &UpstreamTls,
    name: &str,
    req: &[u8],
    deadline: Instant,
    want: usize,
) -> Vec<u8> {
    let Ok(mut t) = ferry_tls::Tls::client(&tls.config, name) else {
        return Vec::new();
    };
    // Held inside the session until the handshake completes.
    t.send(req);
    let mut plain = bytes::BytesMut::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(b) = t.poll_transmit() {
            if s.write_all(&b).is_err() {
                return plain.to_vec();
            }
        }
        if plain.len() >= want {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut c = bytes::BytesMut::from(&buf[..n]);
                if t.handle_input(&mut c, &mut plain).is_err() {
                    break;
                }
            }
        }
    }
    plain.to_vec()
}

/// Which of a name's addresses `all` to use, and whether it answers: the one in use (or
/// else the preferred one, IPv4 first) if `probe` passes, else the first other address that
/// passes (a `localhost` whose service listens on `::1` only, or on `127.0.0.1` only), else
/// the one in use, failing.
pub fn answering(
    all: &[SocketAddr],
    current: Option<SocketAddr>,
    mut probe: impl FnMut(SocketAddr) -> bool,
) -> (Option<SocketAddr>, bool) {
    let Some(first) = current
        .filter(|c| all.contains(c))
        .or_else(|| crate::config::preferred(all))
    else {
        return (None, false);
    };
    if probe(first) {
        return (Some(first), true);
    }
    match all.iter().copied().find(|&a| a != first && probe(a)) {
        Some(a) => (Some(a), true),
        None => (Some(first), false),
    }
}

/// Start the checker: every round it reads the loaded configuration (`live`), re-resolves
/// host-name upstreams and, when health checks are on, probes each upstream; it runs until
/// `stop` is set (then unpark it).
pub fn spawn(
    live: Arc<crate::reload::Live>,
    protocol: Protocol,
    stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let live2 = live.clone();
    let h = std::thread::Builder::new()
        .name("ferry-proxy-health".into())
        .spawn(move || {
            // Per slot: >0 good in a row, <0 bad in a row.
            let mut streak = vec![0i64; crate::metrics::MAX_UPSTREAM_SLOTS];
            while !stop.load(Relaxed) {
                // The loaded configuration, read again every round (a reload may change the
                // upstreams and the checks).
                let snap = live.snapshot();
                let cfg = crate::health_checks(&snap.cfg, protocol);
                let interval = cfg.as_ref().map_or(Duration::from_secs(5), |c| c.interval);
                for (&i, up) in snap.slots.iter().zip(&snap.cfg.upstreams) {
                    if stop.load(Relaxed) {
                        return;
                    }
                    let Some(u) = stats.upstreams.get(i) else {
                        continue;
                    };
                    let ok = match (up, cfg.as_ref()) {
                        (Upstream::Name { .. }, Some(cfg)) => {
                            let all = up.resolve_all();
                            let (a, ok) = answering(&all, u.current(), |a| {
                                probe_as(a, &u.addr, protocol, cfg)
                            });
                            u.set_resolved(a);
                            ok
                        }
                        (Upstream::Name { .. }, None) => {
                            u.set_resolved(up.resolve());
                            continue;
                        }
                        (_, None) => {
                            // Checks turned off: nothing takes it out of rotation.
                            u.healthy.store(true, Relaxed);
                            continue;
                        }
                        (_, Some(cfg)) => u.current().is_some_and(|a| probe(a, protocol, cfg)),
                    };
                    let Some(cfg) = cfg.as_ref() else { continue };
                    streak[i] = match (ok, streak[i]) {
                        (true, s) if s > 0 => s + 1,
                        (true, _) => 1,
                        (false, s) if s < 0 => s - 1,
                        (false, _) => -1,
                    };
                    let was = u.healthy.load(Relaxed);
                    if was && streak[i] <= -(cfg.fall.max(1) as i64) {
                        u.healthy.store(false, Relaxed);
                        tracing::warn!("upstream {} is down (health check)", u.addr);
                    } else if !was && streak[i] >= cfg.rise.max(1) as i64 {
                        u.healthy.store(true, Relaxed);
                        tracing::info!("upstream {} is up again (health check)", u.addr);
                    }
                }
                // Until the next round, the stop (`Proxy::wait` unparks) or a reload
                // (`Live::apply` unparks): no polling.
                let until = Instant::now() + interval;
                while !stop.load(Relaxed) && live.generation() == snap.generation {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::park_timeout(left);
                }
            }
        })?;
    live2.set_health_thread(h.thread().clone());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot Redis-like server answering `reply` to the first read, then keeping the
    /// connection open until the client closes it (as Redis does).
    fn serve(reply: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut b = [0u8; 64];
                let _ = s.read(&mut b);
                let _ = s.write_all(reply);
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            }
        });
        addr
    }

    /// A name with two addresses whose service listens on the second only (IPv6 here):
    /// the checks find it and keep it; with neither answering, the one in use stays.
    #[test]
    fn health_checks_find_the_address_that_answers() {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 loopback on this host
        };
        let v6 = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().take(2) {
                let Ok(mut s) = s else { continue };
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let all = [closed, v6];
        let cfg = HealthConfig {
            timeout: Duration::from_secs(10),
            ..HealthConfig::default()
        };
        let tried = std::cell::RefCell::new(Vec::new());
        let p = |a| {
            tried.borrow_mut().push(a);
            probe(a, Protocol::Http, &cfg)
        };
        assert_eq!(answering(&all, None, p), (Some(v6), true));
        assert_eq!(*tried.borrow(), [closed, v6]); // IPv4 first, then the other
        tried.borrow_mut().clear();
        // Once found it is tried first.
        assert_eq!(answering(&all, Some(v6), p), (Some(v6), true));
        assert_eq!(*tried.borrow(), [v6]);
        assert_eq!(
            answering(&[closed], Some(closed), |_| false),
            (Some(closed), false)
        );
        assert_eq!(answering(&[], Some(closed), |_| true), (None, false));
    }

    #[test]
    fn postgres_probe_wants_one_byte_s_or_n() {
        let cfg = HealthConfig {
            timeout: Duration::from_secs(10),
            ..HealthConfig::default()
        };
        for (reply, up) in [
            (&b"N"[..], true),
            (b"S", true),
            (b"E", false),
            (b"NN", false),
        ] {
            assert_eq!(
                probe(serve(reply), Protocol::Postgres, &cfg),
                up,
                "{reply:?}"
            );
        }
    }

    #[test]
    fn redis_probe_accepts_pong_and_noauth() {
        let cfg = HealthConfig {
            timeout: Duration::from_secs(10),
            ..HealthConfig::default()
        };
        for (reply, up) in [
            (&b"+PONG\r\n"[..], true),
            (b"-NOAUTH Authentication required.\r\n", true),
            (
                b"-LOADING Redis is loading the dataset in memory\r\n",
                false,
            ),
        ] {
            let start = Instant::now();
            assert_eq!(probe(serve(reply), Protocol::Redis, &cfg), up, "{reply:?}");
            // The reply line ends the probe; it does not wait out its timeout.
            assert!(start.elapsed() < Duration::from_secs(5), "{reply:?}");
        }
    }
}
