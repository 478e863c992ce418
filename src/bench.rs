//! `ferry bench URL`: an HTTP/1.1 load generator on our own client state machine
//! (`ferry_http1::ClientConnection`) on Ferry's own I/O workers (see [`crate::load`]).
//!
//! Each thread owns a share of the connections; each connection keeps `pipeline` requests in
//! flight. Latency is measured per request from the moment its bytes are queued to the end of
//! its response, into an HDR histogram (µs, 3 significant digits) merged across threads. A
//! duration run stops sending at the deadline and counts only completed responses (like wrk).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_http1::{client::Event, Body, ClientConfig, ClientConnection, Method};
use ferry_proto::Connection;

use crate::load::{self, LoadPlan, LoadProto, Outcome};
pub use crate::load::{result_json, BenchResult};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub pipeline: usize,
    /// HTTP/2 (h2c, prior knowledge) with `pipeline` concurrent streams per connection.
    pub h2: bool,
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            format!("{url}: only http:// is available yet")
        } else {
            format!("{url}: expected an http:// URL")
        }
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: missing host"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {authority} has no address"))?;
    Ok(Target {
        addr,
        host: authority.to_string(),
        path: path.to_string(),
    })
}

/// The client state machine of one connection: HTTP/1.1 or HTTP/2 (one per connection, so
/// the size difference does not matter).
#[allow(clippy::large_enum_variant)]
enum Proto {
    H1(ClientConnection),
    H2(ferry_http2::ClientConnection),
}

/// One connection of an HTTP run: the state machine and the GET it repeats.
struct HttpLoad {
    conn: Proto,
    host: Arc<str>,
    path: Arc<str>,
    /// HTTP/1.1: the response in progress had a status of 400 or more.
    failed_status: bool,
    /// HTTP/2: streams whose response had a status of 400 or more, until they end.
    failed_streams: Vec<u64>,
}

impl LoadProto for HttpLoad {
    fn can_send(&self) -> bool {
        match &self.conn {
            Proto::H1(c) => c.can_send_request(),
            Proto::H2(c) => c.can_send_request(),
        }
    }

    fn send(&mut self, now: ferry_proto::Instant) -> Option<u64> {
        match &mut self.conn {
            Proto::H1(c) => {
                let fields: [(&str, &[u8]); 1] = [("host", self.host.as_bytes())];
                c.send_request(now, Method::Get, &self.path, &fields, Body::Empty)
                    .ok()
                    .map(|_| 0)
            }
            Proto::H2(c) => {
                let head = ferry_http2::RequestHead::new("GET", "http", &self.host, &self.path);
                c.send_request(&head, ferry_http2::Body::Empty)
                    .ok()
                    .map(|id| u64::from(id.get()))
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        match &mut self.conn {
            Proto::H1(c) => c.poll_transmit(),
            Proto::H2(c) => c.poll_transmit(),
        }
    }

    fn handle_input(&mut self, now: ferry_proto::Instant, input: &mut BytesMut) -> bool {
        // A protocol error surfaces as an event (counted there); keep reading until it does.
        match &mut self.conn {
            Proto::H1(c) => c.handle_input(now, input).is_ok() || !c.is_closed(),
            Proto::H2(c) => c.handle_input(now, input).is_ok() || !c.is_closed(),
        }
    }

    fn handle_eof(&mut self, now: ferry_proto::Instant) {
        match &mut self.conn {
            Proto::H1(c) => c.handle_eof(now),
            Proto::H2(c) => c.handle_eof(now),
        }
    }

    fn is_closed(&self) -> bool {
        match &self.conn {
            Proto::H1(c) => c.is_closed(),
            Proto::H2(c) => c.is_closed(),
        }
    }

    fn poll_outcome(&mut self) -> Option<Option<Outcome>> {
        let HttpLoad {
            conn,
            failed_status,
            failed_streams,
            ..
        } = self;
        match conn {
            Proto::H1(c) => c.poll_event().map(|ev| match ev {
                Event::Response(r) => {
                    *failed_status = r.status() >= 400;
                    None
                }
                Event::End { .. } => Some(Outcome::Done {
                    key: 0,
                    failed: std::mem::take(failed_status),
                }),
                Event::Error { .. } => Some(Outcome::Failed),
                _ => None,
            }),
            Proto::H2(c) => c.poll_event().map(|ev| {
                use ferry_http2::Event as E;
                match ev {
                    E::Response { id, response } => {
                        if response.status() >= 400 {
                            failed_streams.push(u64::from(id.get()));
                        }
                        None
                    }
                    E::Data { id, data } => {
                        c.release_capacity(id, data.len());
                        None
                    }
                    E::End { id } => {
                        let key = u64::from(id.get());
                        let before = failed_streams.len();
                        failed_streams.retain(|k| *k != key);
                        let failed = failed_streams.len() != before;
                        Some(Outcome::Done { key, failed })
                    }
                    E::GoAway { reason, .. } if reason == ferry_http2::Reason::NO_ERROR => {
                        Some(Outcome::Draining)
                    }
                    E::Reset { id, reason, .. }
                        if reason == ferry_http2::Reason::REFUSED_STREAM =>
                    {
                        Some(Outcome::Refused(u64::from(id.get())))
                    }
                    E::Reset { .. } | E::Error { .. } | E::GoAway { .. } => Some(Outcome::Failed),
                    _ => None,
                }
            }),
        }
    }
}

/// Run the benchmark; prints a progress line per second on stderr when it is a terminal.
pub fn run(cfg: BenchConfig) -> Result<BenchResult, String> {
    let target = parse_url(&cfg.url)?;
    let plan = LoadPlan {
        addr: target.addr,
        connections: cfg.connections,
        threads: cfg.threads,
        duration: cfg.duration,
        requests: cfg.requests,
        pipeline: cfg.pipeline,
        progress: true,
    };
    let mut h1 = ClientConfig::default();
    h1.max_pipelined = cfg.pipeline.max(1);
    let (h1, h2) = (Arc::new(h1), Arc::new(ferry_http2::Config::default()));
    let (host, path) = (Arc::<str>::from(target.host), Arc::<str>::from(target.path));
    let h2_on = cfg.h2;
    load::run(plan, move |now| HttpLoad {
        conn: if h2_on {
            Proto::H2(ferry_http2::ClientConnection::new(h2.clone(), now))
        } else {
            Proto::H1(ClientConnection::new(h1.clone(), now))
        },
        host: host.clone(),
        path: path.clone(),
        failed_status: false,
        failed_streams: Vec::new(),
    })
}

/// Print the result, human-readable or as the stable JSON object.
pub fn report(cfg: &BenchConfig, r: &BenchResult, json: bool) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let rps = r.requests as f64 / secs;
    let q = |p: f64| {
        if r.hist.is_empty() {
            0
        } else {
            r.hist.value_at_quantile(p)
        }
    };
    let max = if r.hist.is_empty() { 0 } else { r.hist.max() };
    if json {
        println!("{}", result_json(r, ""));
    } else {
        println!("ferry bench {}", cfg.url);
        println!(
            "  {} connections, {} thread(s), {} {}",
            cfg.connections,
            cfg.threads,
            if cfg.h2 { "h2 streams" } else { "pipeline" },
            cfg.pipeline
        );
        println!(
            "  requests    {} in {:.2}s, errors {}",
            r.requests, secs, r.errors
        );
        println!("  requests/s  {rps:.0}");
        println!("  throughput  {:.2} MB/s", r.bytes as f64 / secs / 1e6);
        println!(
            "  latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/x?y").unwrap();
        assert_eq!(
            (t.addr.port(), t.host.as_str(), t.path.as_str()),
            (8080, "127.0.0.1:8080", "/x?y")
        );
        let t = parse_url("http://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        assert!(parse_url("redis://127.0.0.1").is_err());
        assert!(parse_url("ftp://x").is_err());
    }
}
