//! Shared pieces of the chaos tests of `ferry proxy` (`chaos_proxy`, `chaos_redis`): the proxy
//! run inside a test's namespace (killed on drop, RSS checked), a small HTTP/1.1 client (also
//! for the admin listener's `/metrics`), metric lookup, and a RESP reply reader.
//!
//! Included by each chaos test binary with `#[path = "common/chaos.rs"] mod chaos;`, next to
//! `mod common;` and `#[path = "common/netns.rs"] mod netns;` (this module uses both).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::netns::NetnsPair;

/// Where the proxy listens (inside the test's namespace).
pub const PROXY: &str = "127.0.0.1:8080";
/// The proxy's admin listener (`/metrics`).
pub const ADMIN: &str = "127.0.0.1:9901";
/// Generous bound on the proxy's resident memory at the end of a test.
pub const RSS_LIMIT_KB: u64 = 256 * 1024;

/// The world of one chaos test (a fresh namespace pair), or `None` after reporting why it
/// cannot run here: no namespaces, or no `peer` (checked by running `peer` with `arg`).
pub fn world(peer: &str, arg: &str) -> Option<NetnsPair> {
    if let Err(why) = crate::netns::available() {
        crate::netns::skip_or_fail(&why);
        return None;
    }
    if std::process::Command::new(peer).arg(arg).output().is_err() {
        crate::netns::skip_or_fail(&format!("needs {peer}"));
        return None;
    }
    match NetnsPair::create() {
        Ok(p) => Some(p),
        Err(e) => panic!("cannot create namespaces: {e}"),
    }
}

/// The pid of a peer process a chaos test spawned (0 once it is gone).
pub fn child_pid(child: &Option<Child>) -> i32 {
    child.as_ref().map_or(0, |c| c.id() as i32)
}

/// Send `sig` to a peer process the test spawned, if it still runs.
pub fn child_signal(child: &Option<Child>, sig: i32) {
    let pid = child_pid(child);
    if pid > 0 {
        // SAFETY: kill with the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Kill and reap a peer process the test spawned.
pub fn child_kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `ferry proxy` running in namespace `a`, killed on drop.
pub struct Proxy {
    /// The `ferry proxy` process (its pid is the proxy's: `ip netns exec` execs it).
    pub child: Child,
}

impl Proxy {
    /// `ferry proxy --protocol http` in front of `upstreams`, listening on [`PROXY`] with
    /// its admin listener on [`ADMIN`], one worker (unless `extra` says `--workers`).
    pub fn start(ns: &str, upstreams: &[SocketAddr], extra: &[&str]) -> Proxy {
        Proxy::start_protocol(ns, "http", upstreams, extra)
    }

    /// The same for `protocol` (`http` or `redis`).
    pub fn start_protocol(
        ns: &str,
        protocol: &str,
        upstreams: &[SocketAddr],
        extra: &[&str],
    ) -> Proxy {
        let ups: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
        Proxy::start_named(ns, protocol, &ups, extra)
    }

    /// The same with upstreams given as `--upstream` takes them (`HOST:PORT` too).
    pub fn start_named(ns: &str, protocol: &str, ups: &[String], extra: &[&str]) -> Proxy {
        let mut child = NetnsPair::command(ns, common::BIN)
            .args([
                "proxy",
                "--protocol",
                protocol,
                "--listen",
                PROXY,
                "--admin",
                ADMIN,
            ])
            .args(["--upstream", &ups.join(",")])
            .args(if extra.contains(&"--workers") {
                &[][..]
            } else {
                &["--workers", "1"][..]
            })
            .args(extra)
            .env_remove("FERRY_DRIVER")
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_PROXY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ferry proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with(&format!("ferry: listening {protocol} ")),
            "unexpected first line {line:?}"
        );
        Proxy { child }
    }

    /// Resident set size in KiB.
    pub fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The proxy still runs and its RSS is under [`RSS_LIMIT_KB`].
    pub fn assert_alive_and_bounded(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the proxy died under chaos"
        );
        let rss = self.rss_kb();
        assert!(rss > 0 && rss < RSS_LIMIT_KB, "proxy RSS {rss} KiB");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client saw for one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub method: &'static str,
    pub uri: String,
    /// Status and body, or the I/O error.
    pub result: Result<(u16, String), String>,
    pub took: Duration,
}

/// A keep-alive HTTP/1.1 client on std sockets (reconnects after errors or `close`).
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    pub fn request(&mut self, method: &'static str, uri: &str, body: &[u8]) -> Outcome {
        let t0 = Instant::now();
        let result = self.try_request(method, uri, body);
        if result.is_err() {
            self.conn = None;
        }
        Outcome {
            method,
            uri: uri.to_string(),
            result,
            took: t0.elapsed(),
        }
    }

    pub fn try_request(
        &mut self,
        method: &str,
        uri: &str,
        body: &[u8],
    ) -> Result<(u16, String), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_nodelay(true).unwrap();
            self.conn = Some(BufReader::new(s));
        }
        let r = self.conn.as_mut().unwrap();
        let mut req = format!("{method} {uri} HTTP/1.1\r\nHost: chaos\r\n").into_bytes();
        if !body.is_empty() || method == "POST" {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        r.get_mut()
            .write_all(&req)
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        if line.is_empty() {
            return Err("EOF before the status line".into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).map_err(|e| format!("read head: {e}"))?;
            if h.is_empty() {
                return Err("EOF in the head".into());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().map_err(|_| format!("bad length {v}"))?;
                } else if k == "connection" && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                } else if k == "transfer-encoding" {
                    return Err("chunked response (not expected from these upstreams)".into());
                }
            }
        }
        let mut b = vec![0u8; len];
        r.read_exact(&mut b)
            .map_err(|e| format!("read body: {e}"))?;
        if close {
            self.conn = None;
        }
        Ok((status, String::from_utf8_lossy(&b).into_owned()))
    }
}

/// `GET /metrics` from the admin listener (inside namespace `a`).
pub fn metrics(ns: &str) -> String {
    NetnsPair::in_netns(ns, || {
        let mut c = Client::new(ADMIN.parse().unwrap());
        match c.request("GET", "/metrics", b"").result {
            Ok((200, body)) => body,
            other => panic!("/metrics: {other:?}"),
        }
    })
    .unwrap()
}

/// The value of metric `name` for `upstream` (summed over label sets, e.g. workers).
pub fn metric(text: &str, name: &str, upstream: SocketAddr) -> f64 {
    let label = format!("upstream=\"{upstream}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The median of `v` (zero when empty).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A RESP2 or RESP3 reply, as far as these tests need it.
#[derive(Clone, Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

/// Read one reply (blocking, as the socket's timeouts allow).
pub fn read_resp(r: &mut BufReader<TcpStream>) -> Result<Resp, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if line.is_empty() {
        return Err("EOF".into());
    }
    let body = line.trim_end_matches(['\r', '\n']);
    let (t, rest) = body.split_at(1);
    match t {
        "+" => Ok(Resp::Simple(rest.into())),
        "-" => Ok(Resp::Error(rest.into())),
        ":" => rest
            .parse()
            .map(Resp::Int)
            .map_err(|_| format!("bad int {line:?}")),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| format!("bad bulk {line:?}"))?;
            if n < 0 {
                return Ok(Resp::Bulk(None));
            }
            let mut b = vec![0u8; n as usize + 2];
            r.read_exact(&mut b)
                .map_err(|e| format!("read bulk: {e}"))?;
            b.truncate(n as usize);
            Ok(Resp::Bulk(Some(b)))
        }
        // RESP3 aggregates as arrays (a map's keys and values alternate); null as nil.
        "*" | "~" | "%" => {
            let n: i64 = rest.parse().map_err(|_| format!("bad array {line:?}"))?;
            let n = if t == "%" { n.max(0) * 2 } else { n.max(0) };
            (0..n)
                .map(|_| read_resp(r))
                .collect::<Result<_, _>>()
                .map(Resp::Array)
        }
        "_" => Ok(Resp::Bulk(None)),
        _ => Err(format!("bad reply {line:?}")),
    }
}

/// `args` as a RESP multibulk command.
pub fn resp_cmd(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}
