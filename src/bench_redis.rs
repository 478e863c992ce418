//! `ferry bench redis://HOST:PORT`: a Redis load generator on our own RESP client state
//! machine (`ferry_resp::ClientConnection`) on the same load loop as the HTTP bench
//! ([`crate::load`]). Tests run one after the other (like redis-benchmark `-t`); each sends
//! `--requests` commands (or runs for `--duration`) over `-c` connections with `-P` commands
//! in flight per connection. An error reply (`-ERR …`) or a broken connection counts as an
//! error.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_proto::Connection;
use ferry_resp::client::Event;
use ferry_resp::{ClientConfig, ClientConnection};
use hdrhistogram::Histogram;

use crate::load::{self, result_json, BenchResult, LoadPlan, LoadProto, Outcome};

/// The tests `-t` accepts (redis-benchmark's names).
pub const TESTS: &[&str] = &[
    "ping", "set", "get", "incr", "lpush", "rpush", "lpop", "rpop", "sadd", "hset", "spop", "mset",
];

/// The default `-t` list.
pub const DEFAULT_TESTS: &str = "ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,mset";

/// What to run.
#[derive(Clone, Debug)]
pub struct RedisBenchConfig {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub pipeline: usize,
    pub tests: Vec<String>,
    pub data_size: usize,
}

/// Parse `redis://HOST[:PORT][/DB]`.
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url}: expected a redis:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url}: missing host"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:6379")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {authority} has no address"))
}

/// Parse and check a `-t` list.
pub fn parse_tests(list: &str) -> Result<Vec<String>, String> {
    let mut v = Vec::new();
    for t in list.split(',').map(|t| t.trim().to_ascii_lowercase()) {
        if t.is_empty() {
            continue;
        }
        if !TESTS.contains(&t.as_str()) {
            return Err(format!(
                "--tests: unknown test `{t}` (known: {})",
                TESTS.join(",")
            ));
        }
        v.push(t);
    }
    if v.is_empty() {
        return Err("--tests: empty list".into());
    }
    Ok(v)
}

/// The command one test sends (`n` varies the key and element where it matters).
fn command(test: &str, value: &Bytes) -> Vec<Bytes> {
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    match test {
        "ping" => vec![b("PING")],
        "set" => vec![b("SET"), b("key:__rand_int__"), value.clone()],
        "get" => vec![b("GET"), b("key:__rand_int__")],
        "incr" => vec![b("INCR"), b("counter:__rand_int__")],
        "lpush" => vec![b("LPUSH"), b("mylist"), value.clone()],
        "rpush" => vec![b("RPUSH"), b("mylist"), value.clone()],
        "lpop" => vec![b("LPOP"), b("mylist")],
        "rpop" => vec![b("RPOP"), b("mylist")],
        "sadd" => vec![b("SADD"), b("myset"), b("element:__rand_int__")],
        "hset" => vec![
            b("HSET"),
            b("myhash"),
            b("element:__rand_int__"),
            value.clone(),
        ],
        "spop" => vec![b("SPOP"), b("myset")],
        _ => {
            let mut v = vec![b("MSET")];
            for _ in 0..10 {
                v.push(b("key:__rand_int__"));
                v.push(value.clone());
            }
            v
        }
    }
}

/// One connection of a Redis run: the state machine and the command it repeats.
struct RespLoad {
    conn: ClientConnection,
    cmd: Arc<Vec<Bytes>>,
}

impl LoadProto for RespLoad {
    fn can_send(&self) -> bool {
        !self.conn.is_closed()
    }

    fn send(&mut self, now: ferry_proto::Instant) -> Option<u64> {
        self.conn.send_command(now, &self.cmd).ok().map(|_| 0)
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.conn.poll_transmit()
    }

    fn handle_input(&mut self, now: ferry_proto::Instant, input: &mut BytesMut) -> bool {
        self.conn.handle_input(now, input).is_ok()
    }

    fn handle_eof(&mut self, now: ferry_proto::Instant) {
        self.conn.handle_eof(now);
    }

    fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    fn poll_outcome(&mut self) -> Option<Option<Outcome>> {
        self.conn.poll_event().map(|ev| match ev {
            Event::Reply { value, .. } => Some(Outcome::Done {
                key: 0,
                failed: value.is_error(),
            }),
            Event::Error(_) => Some(Outcome::Failed),
            _ => None,
        })
    }
}

/// Run every test of `cfg`; returns one result per test, in order.
pub fn run(cfg: &RedisBenchConfig) -> Result<Vec<(String, BenchResult)>, String> {
    let addr = parse_url(&cfg.url)?;
    let value = Bytes::from(vec![b'x'; cfg.data_size]);
    let config = Arc::new(ClientConfig::default());
    let mut out = Vec::new();
    for test in &cfg.tests {
        let plan = LoadPlan {
            addr,
            connections: cfg.connections,
            threads: cfg.threads,
            duration: cfg.duration,
            requests: cfg.requests,
            pipeline: cfg.pipeline,
            progress: false,
        };
        let cmd = Arc::new(command(test, &value));
        let config = config.clone();
        let r = load::run(plan, move |now| RespLoad {
            conn: ClientConnection::new(config.clone(), now),
            cmd: cmd.clone(),
        })?;
        out.push((test.clone(), r));
    }
    Ok(out)
}

/// Print the results: per test a line (or, with `json`, one object whose top-level stable
/// keys cover all tests together and whose `tests` object holds the same keys per test).
pub fn report(
    cfg: &RedisBenchConfig,
    results: &[(String, BenchResult)],
    json: bool,
) -> Result<(), String> {
    if json {
        let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        let (mut requests, mut errors, mut bytes) = (0, 0, 0);
        let mut elapsed = Duration::ZERO;
        let mut per = Vec::new();
        for (name, r) in results {
            requests += r.requests;
            errors += r.errors;
            bytes += r.bytes;
            elapsed += r.elapsed;
            hist.add(&r.hist).map_err(|e| e.to_string())?;
            per.push(format!("\"{name}\":{}", result_json(r, "")));
        }
        let total = BenchResult {
            requests,
            errors,
            bytes,
            elapsed,
            hist,
        };
        println!(
            "{}",
            result_json(&total, &format!(",\"tests\":{{{}}}", per.join(",")))
        );
    } else {
        println!(
            "ferry bench {} ({} connections, pipeline {})",
            cfg.url, cfg.connections, cfg.pipeline
        );
        for (name, r) in results {
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            let q = |p: f64| {
                if r.hist.is_empty() {
                    0
                } else {
                    r.hist.value_at_quantile(p)
                }
            };
            println!(
                "  {:<6} {:>10.0} requests/s  {} requests, errors {}  latency µs p50 {} p99 {} max {}",
                name.to_ascii_uppercase(),
                r.requests as f64 / secs,
                r.requests,
                r.errors,
                q(0.5),
                q(0.99),
                if r.hist.is_empty() { 0 } else { r.hist.max() }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_tests() {
        assert_eq!(parse_url("redis://127.0.0.1:7000").unwrap().port(), 7000);
        assert_eq!(parse_url("redis://127.0.0.1/0").unwrap().port(), 6379);
        assert!(parse_url("http://x").is_err());
        assert_eq!(parse_tests("SET, get").unwrap(), vec!["set", "get"]);
        assert!(parse_tests("set,nope").is_err());
        for t in TESTS {
            assert!(!command(t, &Bytes::from_static(b"v")).is_empty());
        }
    }
}
