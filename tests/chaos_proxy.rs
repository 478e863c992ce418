//! Chaos tests of `ferry proxy --protocol http` in front of real nginx upstreams.
//!
//! Every test builds its own world: two network namespaces joined by a veth pair (unique,
//! pid-based names, deleted on drop), the proxy and the test's clients in namespace `a`
//! (loopback), three single-process nginx upstreams in namespace `b` at `10.77.0.2:8001..3`,
//! and, where a test needs latency, stalls, resets or half-open connections, a
//! `ferry-chaos-relay` per upstream inside namespace `a` between the proxy and the upstream.
//! Packet loss comes from an nftables `numgen random` rule inside namespace `b` (`tc netem` is
//! not in this kernel).
//!
//! Assertions, per the issue: no idempotent request is lost or answered wrongly (every GET
//! gets 200 with the body of the URL it asked, from some upstream); a POST is never retried
//! (each POST id appears at most once in all upstreams' access logs, exactly once when the
//! client got its 200); breakers open (and close again) as configured, read from the proxy's
//! `/metrics`; healthy upstreams keep answering (generous latency bounds only); the proxy's
//! RSS stays bounded. Every loop is bounded in count and time.
//!
//! The Redis proxy's chaos tests are in `chaos_redis.rs`; both share `common/chaos.rs`.
//!
//! Needs root, `ip`, `nft` and nginx; skips (with the reason
//! printed) otherwise. `CHAOS_PROXY_LOG=debug` sets the proxy's `RUST_LOG`; `CHAOS_VERBOSE=1`
//! prints every request of the stall test with the relays' counters and `/metrics`.

#[path = "common/chaos.rs"]
mod chaos;
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chaos::{median, metric, metrics, ms, Client, Outcome, Proxy, ADMIN, PROXY};
use ferry_chaos_relay::{Dir, Faults, Relay};
use netns::NetnsPair;

/// The world of one test, or the reason it cannot run here.
fn world() -> Option<NetnsPair> {
    chaos::world("nginx", "-v")
}

/// A single-process nginx (`master_process off`) in a namespace, killed on drop.
struct Nginx {
    name: String,
    ns: String,
    addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
    mode503: bool,
}

impl Nginx {
    fn start(ns: &str, name: &str, addr: SocketAddr, mode503: bool) -> Nginx {
        // Unique per test (namespace) and upstream: tests of one process run in parallel.
        let dir = common::tmp_dir("chaos-nginx", &format!("{ns}-{name}"));
        let mut n = Nginx {
            name: name.into(),
            ns: ns.into(),
            addr,
            dir,
            child: None,
            mode503,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let d = self.dir.display();
        let body = if self.mode503 {
            format!("return 503 \"u={} down\\n\";", self.name)
        } else {
            format!("return 200 \"u={} uri=$request_uri\\n\";", self.name)
        };
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  log_format c '$request_method $request_uri $status';\n\
               access_log {d}/access.log c;\n  client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               keepalive_requests 1000000;\n  keepalive_timeout 120s;\n\
               server {{\n    listen {addr};\n    location / {{ default_type text/plain; {body} }}\n  }}\n}}\n",
            addr = self.addr
        );
        std::fs::write(self.dir.join("nginx.conf"), conf).unwrap();
        let child = NetnsPair::command(&self.ns, "nginx")
            .args(["-p", &self.dir.display().to_string(), "-c"])
            .arg(self.dir.join("nginx.conf"))
            .args(["-e", &format!("{d}/error.log")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        self.child = Some(child);
        // Ready when it accepts (checked from inside the namespace).
        let addr = self.addr;
        let ok = NetnsPair::in_netns(&self.ns, move || {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if TcpStream::connect_timeout(&addr, ms(200)).is_ok() {
                    return true;
                }
                std::thread::sleep(ms(20));
            }
            false
        })
        .unwrap();
        assert!(
            ok,
            "nginx {} did not start: {}",
            self.name,
            self.error_log()
        );
    }

    fn pid(&self) -> i32 {
        chaos::child_pid(&self.child)
    }

    fn signal(&self, sig: i32) {
        chaos::child_signal(&self.child, sig);
    }

    fn kill(&mut self) {
        chaos::child_kill(&mut self.child);
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Access-log lines `METHOD URI STATUS`.
    fn access(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run a bounded mixed load from namespace `a`: `gets` GETs and, every `post_every`th request,
/// a POST; `during(i)` is called before request `i` (to inject a fault mid-load). Stops early
/// (and the caller's assertions fail) after `limit`.
fn load(
    ns: &str,
    tag: &'static str,
    gets: usize,
    post_every: usize,
    limit: Duration,
    during: impl FnMut(usize) + Send + 'static,
) -> Vec<Outcome> {
    let mut during = during;
    NetnsPair::in_netns(ns, move || {
        let mut c = Client::new(PROXY.parse().unwrap());
        let mut out = Vec::new();
        let t0 = Instant::now();
        let mut posts = 0;
        for i in 0..gets {
            if t0.elapsed() > limit {
                break;
            }
            during(i);
            out.push(c.request("GET", &format!("/k/{tag}/{i}"), b""));
            if post_every > 0 && i % post_every == post_every - 1 {
                out.push(c.request("POST", &format!("/p/{tag}/{posts}"), b"hello"));
                posts += 1;
            }
        }
        out
    })
    .unwrap()
}

/// Every GET got 200 with the body for its own URI from one of `healthy`; returns how many
/// each upstream served.
fn assert_gets_correct(out: &[Outcome], healthy: &[&str]) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    let gets: Vec<&Outcome> = out.iter().filter(|o| o.method == "GET").collect();
    assert!(!gets.is_empty());
    for o in &gets {
        let (status, body) = match &o.result {
            Ok(r) => r,
            Err(e) => panic!("GET {} lost: {e} (after {:?})", o.uri, o.took),
        };
        assert_eq!(*status, 200, "GET {} answered {status}: {body:?}", o.uri);
        let (who, uri) = body
            .trim_end()
            .strip_prefix("u=")
            .and_then(|r| r.split_once(" uri="))
            .unwrap_or_else(|| panic!("GET {}: unexpected body {body:?}", o.uri));
        assert_eq!(uri, o.uri, "GET {} answered with another URI's body", o.uri);
        assert!(healthy.contains(&who), "GET {} served by {who}", o.uri);
        *by.entry(who.to_string()).or_insert(0) += 1;
    }
    by
}

/// No POST was sent upstream twice; every POST the client saw answered 200 reached exactly
/// one upstream. Returns (posts, answered 200).
fn assert_posts_never_retried(out: &[Outcome], upstreams: &[&Nginx]) -> (usize, usize) {
    let posts: Vec<&Outcome> = out.iter().filter(|o| o.method == "POST").collect();
    // nginx writes its access log line after the response went out, so the last requests may
    // reach the log a moment after the client saw them: re-read (bounded) until every POST
    // answered 200 is there.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..100 {
        seen.clear();
        for u in upstreams {
            for l in u.access() {
                let mut w = l.split_whitespace();
                if let (Some("POST"), Some(uri)) = (w.next(), w.next()) {
                    *seen.entry(uri.to_string()).or_insert(0) += 1;
                }
            }
        }
        let all_logged = posts
            .iter()
            .filter(|p| matches!(p.result, Ok((200, _))))
            .all(|p| seen.contains_key(&p.uri));
        if all_logged {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ok = 0;
    for p in &posts {
        let n = seen.get(&p.uri).copied().unwrap_or(0);
        assert!(
            n <= 1,
            "POST {} reached upstreams {n} times (retried)",
            p.uri
        );
        if matches!(p.result, Ok((200, _))) {
            ok += 1;
            assert_eq!(
                n, 1,
                "POST {} answered 200 but no upstream logged it",
                p.uri
            );
        }
    }
    (posts.len(), ok)
}

/// Three nginx upstreams in namespace `b`.
fn upstreams(w: &NetnsPair, mode503: [bool; 3]) -> Vec<Nginx> {
    (0..3)
        .map(|i| {
            let addr = SocketAddr::from((w.b_ip, 8001 + i as u16));
            Nginx::start(&w.b, &format!("u{}", i + 1), addr, mode503[i])
        })
        .collect()
}

/// A relay per upstream in namespace `a` (listening on 127.0.0.1:7001..), with `faults[i]`.
fn relays(w: &NetnsPair, ups: &[Nginx], faults: Vec<Faults>) -> Vec<Relay> {
    ups.iter()
        .zip(faults)
        .enumerate()
        .map(|(i, (u, f))| {
            let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7001 + i as u16));
            let up = u.addr;
            NetnsPair::in_netns(&w.a, move || Relay::start(listen, up, f).expect("relay")).unwrap()
        })
        .collect()
}

#[test]
fn chaos_packet_loss_5_percent() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [false; 3]);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut proxy = Proxy::start(
        &w.a,
        &addrs,
        &[
            "--connect-timeout",
            "3s",
            "--response-timeout",
            "10s",
            "--breaker-failures",
            "0",
        ],
    );
    NetnsPair::random_loss(&w.b, 5).expect("nft loss rule");
    let out = load(&w.a, "loss", 300, 10, Duration::from_secs(120), |_| {});
    let dropped = NetnsPair::dropped_packets(&w.b);
    let by = assert_gets_correct(&out, &["u1", "u2", "u3"]);
    let refs: Vec<&Nginx> = ups.iter().collect();
    let (posts, ok) = assert_posts_never_retried(&out, &refs);
    eprintln!("loss: served {by:?}, {ok}/{posts} POSTs answered 200, {dropped} packets dropped");
    assert!(dropped > 0, "the loss rule dropped nothing");
    assert_eq!(by.len(), 3, "every upstream kept serving: {by:?}");
    proxy.assert_alive_and_bounded();
}

#[test]
fn chaos_latency_jitter_via_relay() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [false; 3]);
    let lat = || Faults::none().with_latency(ms(50), ms(20)).with_seed(7);
    let rel = relays(&w, &ups, vec![lat(), lat(), lat()]);
    let addrs: Vec<SocketAddr> = rel.iter().map(|r| r.local_addr()).collect();
    let mut proxy = Proxy::start(&w.a, &addrs, &["--response-timeout", "5s"]);
    let out = load(&w.a, "lat", 60, 6, Duration::from_secs(60), |_| {});
    let by = assert_gets_correct(&out, &["u1", "u2", "u3"]);
    let refs: Vec<&Nginx> = ups.iter().collect();
    let (posts, ok) = assert_posts_never_retried(&out, &refs);
    assert_eq!(ok, posts, "latency alone fails no POST");
    let m = median(out.iter().map(|o| o.took).collect());
    eprintln!("latency: served {by:?}, median {m:?}");
    // Request and response each cross a relay adding 50 ± 20 ms.
    assert!(m >= ms(55), "median {m:?}");
    assert!(m < ms(3000), "median {m:?}");
    proxy.assert_alive_and_bounded();
}

#[test]
fn chaos_stall_and_half_open_upstreams() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [false; 3]);
    let rel = relays(
        &w,
        &ups,
        vec![
            Faults::none().with_stall(ferry_chaos_relay::Stall::Forever),
            Faults::none().with_half_open(Dir::ToDownstream),
            Faults::none(),
        ],
    );
    let addrs: Vec<SocketAddr> = rel.iter().map(|r| r.local_addr()).collect();
    let mut proxy = Proxy::start(
        &w.a,
        &addrs,
        &[
            "--response-timeout",
            "1s",
            "--breaker-failures",
            "2",
            "--breaker-open",
            "30s",
            "--health-interval",
            "0",
            "--retries",
            "2",
        ],
    );
    let out = load(&w.a, "hang", 60, 5, Duration::from_secs(90), |_| {});
    if std::env::var("CHAOS_VERBOSE").is_ok() {
        for o in &out {
            eprintln!("{} {} {:?} {:?}", o.method, o.uri, o.took, o.result);
        }
        for r in &rel {
            eprintln!("relay {}: {}", r.local_addr(), r.stats());
        }
        eprintln!("{}", metrics(&w.a));
    }
    let by = assert_gets_correct(&out, &["u3"]);
    let refs: Vec<&Nginx> = ups.iter().collect();
    let (posts, ok) = assert_posts_never_retried(&out, &refs);
    let text = metrics(&w.a);
    for a in &addrs[..2] {
        assert!(
            metric(&text, "ferry_proxy_breaker_opened_total", *a) >= 1.0,
            "breaker of hanging upstream {a} never opened:\n{text}"
        );
    }
    // No cascade: once the breakers are open, requests go straight to the healthy upstream.
    let tail: Vec<Duration> = out.iter().rev().take(20).map(|o| o.took).collect();
    let m = median(tail);
    eprintln!("hang: served {by:?}, {ok}/{posts} POSTs ok, late median {m:?}");
    assert!(m < ms(500), "healthy upstream slowed down: {m:?}");
    assert_eq!(
        rel[0].stats().bytes_to_upstream,
        0,
        "stalled relay forwarded nothing"
    );
    proxy.assert_alive_and_bounded();
}

/// One upstream stalls for 1.5 s in the middle of the load, then recovers: no GET is lost,
/// its breaker opens, and once the stall is over a probe succeeds, the breaker closes and the
/// upstream serves again.
#[test]
fn chaos_stall_for_a_while_then_recover() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [false; 3]);
    let mut rel = relays(
        &w,
        &ups,
        vec![Faults::none(), Faults::none(), Faults::none()],
    );
    let addrs: Vec<SocketAddr> = rel.iter().map(|r| r.local_addr()).collect();
    let r0 = std::sync::Arc::new(rel.remove(0));
    let mut proxy = Proxy::start(
        &w.a,
        &addrs,
        &[
            "--response-timeout",
            "500ms",
            "--breaker-failures",
            "2",
            "--breaker-open",
            "500ms",
            "--health-interval",
            "0",
            "--retries",
            "2",
        ],
    );
    let r = r0.clone();
    let out = load(&w.a, "pause", 400, 10, Duration::from_secs(90), move |i| {
        if i == 30 {
            r.stall_for(ms(1500));
        }
        std::thread::sleep(ms(8)); // about 3.5 s of load: before, during and after the stall
    });
    let text = metrics(&w.a);
    let by = assert_gets_correct(&out, &["u1", "u2", "u3"]);
    let refs: Vec<&Nginx> = ups.iter().collect();
    let (posts, ok) = assert_posts_never_retried(&out, &refs);
    assert!(
        metric(&text, "ferry_proxy_breaker_opened_total", addrs[0]) >= 1.0,
        "breaker of the stalled upstream never opened:\n{text}"
    );
    let late_u1 = out
        .iter()
        .rev()
        .take(60)
        .filter(|o| matches!(&o.result, Ok((200, b)) if b.starts_with("u=u1 ")))
        .count();
    eprintln!("pause: served {by:?}, {ok}/{posts} POSTs ok, u1 served {late_u1} of the last 60");
    assert!(
        late_u1 > 0,
        "the recovered upstream never served again:\n{text}"
    );
    assert_eq!(
        metric(&text, "ferry_proxy_breaker_state", addrs[0]),
        0.0,
        "{text}"
    );
    proxy.assert_alive_and_bounded();
}

#[test]
fn chaos_resets_mid_response() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [false; 3]);
    let rel = relays(
        &w,
        &ups,
        vec![
            // Every connection: RST after 5 bytes of the response ("HTTP/"), so the request
            // reached nginx but no response head reached the proxy.
            Faults::none().with_reset(5, 1.0, Dir::ToDownstream),
            // Every connection: RST right after accept.
            Faults::none().with_reset(0, 1.0, Dir::ToUpstream),
            Faults::none(),
        ],
    );
    let addrs: Vec<SocketAddr> = rel.iter().map(|r| r.local_addr()).collect();
    let mut proxy = Proxy::start(
        &w.a,
        &addrs,
        // Breakers keep the retry rate inside the retry budget (20% of requests + 10/s): with
        // them off, two dead upstreams out of three exhaust it by design. A short open period
        // makes the breakers probe (and hit more resets) during the run.
        &[
            "--response-timeout",
            "5s",
            "--breaker-failures",
            "3",
            "--breaker-open",
            "300ms",
            "--retries",
            "3",
            "--health-interval",
            "0",
        ],
    );
    let out = load(&w.a, "rst", 150, 5, Duration::from_secs(90), |i| {
        if i % 10 == 0 {
            std::thread::sleep(ms(30)); // spread the run over the breakers' probe periods
        }
    });
    let by = assert_gets_correct(&out, &["u3"]);
    let refs: Vec<&Nginx> = ups.iter().collect();
    let (posts, ok) = assert_posts_never_retried(&out, &refs);
    let (r1, r2) = (rel[0].stats().resets, rel[1].stats().resets);
    eprintln!("resets: served {by:?}, {ok}/{posts} POSTs ok, {r1} + {r2} connections reset");
    assert!(r1 > 0 && r2 > 0, "no reset happened: {r1} {r2}");
    // POSTs sent to u1 reached nginx and lost their response: answered 502, not retried;
    // u2 resets before reading anything.
    let posts_at = |i: usize| {
        ups[i]
            .access()
            .iter()
            .filter(|l| l.starts_with("POST "))
            .count()
    };
    assert!(ok + posts_at(0) <= posts);
    assert_eq!(posts_at(1), 0);
    assert_eq!(
        ok,
        posts_at(2),
        "every POST answered 200 came from u3, once"
    );
    proxy.assert_alive_and_bounded();
}

#[test]
fn chaos_post_reaching_a_resetting_upstream_is_never_retried() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [false; 3]);
    let rel = relays(
        &w,
        &ups[..2],
        // The request reaches nginx; the connection dies after 5 bytes of its response.
        vec![
            Faults::none().with_reset(5, 1.0, Dir::ToDownstream),
            Faults::none(),
        ],
    );
    let addrs: Vec<SocketAddr> = rel.iter().map(|r| r.local_addr()).collect();
    let mut proxy = Proxy::start(
        &w.a,
        &addrs,
        &[
            "--breaker-failures",
            "0",
            "--retries",
            "3",
            "--health-interval",
            "0",
        ],
    );
    let out = NetnsPair::in_netns(&w.a, || {
        let mut c = Client::new(PROXY.parse().unwrap());
        (0..20)
            .map(|i| c.request("POST", &format!("/p/once/{i}"), b"hello"))
            .collect::<Vec<_>>()
    })
    .unwrap();
    let refs: Vec<&Nginx> = ups.iter().collect();
    let (posts, ok) = assert_posts_never_retried(&out, &refs);
    let failed: Vec<&Outcome> = out
        .iter()
        .filter(|o| !matches!(o.result, Ok((200, _))))
        .collect();
    // u1 logs each request after its (reset) response, possibly a moment after the proxy's
    // 502: re-read (bounded) until every failed POST is there.
    let mut at_u1: Vec<String> = Vec::new();
    for _ in 0..100 {
        at_u1 = ups[0]
            .access()
            .into_iter()
            .filter(|l| l.starts_with("POST "))
            .collect();
        let logged = |uri: &str| {
            at_u1
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some(uri))
        };
        if failed.iter().all(|f| logged(&f.uri)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "posts: {ok}/{posts} ok, {} reached the resetting upstream",
        at_u1.len()
    );
    assert!(
        !failed.is_empty(),
        "no POST was sent to the resetting upstream"
    );
    for f in &failed {
        assert!(
            matches!(f.result, Ok((502, _))),
            "POST {} failed without a 502: {:?}",
            f.uri,
            f.result
        );
        assert!(
            at_u1
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some(f.uri.as_str())),
            "POST {} answered 502 never reached u1",
            f.uri
        );
    }
    assert_eq!(
        at_u1.len(),
        failed.len(),
        "each failed POST reached u1 exactly once"
    );
    assert!(rel[0].stats().resets >= failed.len() as u64);
    proxy.assert_alive_and_bounded();
}

#[test]
fn chaos_upstream_killed_mid_load_breaker_opens_and_closes() {
    let Some(w) = world() else { return };
    let mut ups = upstreams(&w, [false; 3]);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut proxy = Proxy::start(
        &w.a,
        &addrs,
        &[
            "--response-timeout",
            "2s",
            "--connect-timeout",
            "500ms",
            "--breaker-failures",
            "2",
            "--breaker-open",
            "1s",
            "--health-interval",
            "0",
            "--retries",
            "2",
        ],
    );
    let pid = ups[0].pid();
    let logs: Vec<PathBuf> = ups.iter().map(|u| u.dir.join("access.log")).collect();
    let out = load(&w.a, "kill", 200, 10, Duration::from_secs(60), move |i| {
        if i == 50 {
            // nginx logs a request after answering it: let the 55 requests answered so far
            // (50 GETs, 5 POSTs) reach the logs first (bounded), or a SIGKILL in between
            // loses a line and the POST check below would see an answered POST unlogged.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(2) {
                let lines: usize = logs
                    .iter()
                    .map(|l| std::fs::read_to_string(l).map_or(0, |t| t.lines().count()))
                    .sum();
                if lines >= 55 {
                    break;
                }
                std::thread::sleep(ms(10));
            }
            // SAFETY: kill of our own child's pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    assert_gets_correct(&out, &["u1", "u2", "u3"]);
    let text = metrics(&w.a);
    assert!(
        metric(&text, "ferry_proxy_breaker_opened_total", addrs[0]) >= 1.0,
        "breaker of the killed upstream never opened:\n{text}"
    );
    let refs: Vec<&Nginx> = ups.iter().collect();
    assert_posts_never_retried(&out, &refs);
    // Bring it back: after the open period a probe succeeds and the breaker closes.
    ups[0].kill();
    ups[0].spawn();
    std::thread::sleep(ms(1200));
    let t0 = Instant::now();
    let mut back = false;
    while t0.elapsed() < Duration::from_secs(20) && !back {
        let out = load(&w.a, "back", 30, 0, Duration::from_secs(20), |_| {});
        let by = assert_gets_correct(&out, &["u1", "u2", "u3"]);
        let text = metrics(&w.a);
        back = by.contains_key("u1") && metric(&text, "ferry_proxy_breaker_state", addrs[0]) == 0.0;
    }
    assert!(
        back,
        "breaker of the restarted upstream did not close:\n{}",
        metrics(&w.a)
    );
    proxy.assert_alive_and_bounded();
}

#[test]
fn chaos_upstream_sigstopped() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [false; 3]);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut proxy = Proxy::start(
        &w.a,
        &addrs,
        &[
            "--response-timeout",
            "1s",
            "--breaker-failures",
            "2",
            "--breaker-open",
            "30s",
            "--health-interval",
            "0",
            "--retries",
            "2",
        ],
    );
    let pid = ups[0].pid();
    let out = load(&w.a, "stop", 120, 10, Duration::from_secs(90), move |i| {
        if i == 20 {
            // SAFETY: a signal to our own child's pid.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
    });
    ups[0].signal(libc::SIGCONT);
    assert_gets_correct(&out, &["u1", "u2", "u3"]);
    let refs: Vec<&Nginx> = ups.iter().collect();
    let (posts, ok) = assert_posts_never_retried(&out, &refs);
    let text = metrics(&w.a);
    assert!(
        metric(&text, "ferry_proxy_breaker_opened_total", addrs[0]) >= 1.0,
        "breaker of the stopped upstream never opened:\n{text}"
    );
    let tail: Vec<Duration> = out.iter().rev().take(30).map(|o| o.took).collect();
    let m = median(tail);
    eprintln!("sigstop: {ok}/{posts} POSTs ok, late median {m:?}");
    assert!(m < ms(500), "healthy upstreams slowed down: {m:?}");
    proxy.assert_alive_and_bounded();
}

#[test]
fn chaos_upstream_answering_503() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [true, false, false]);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut proxy = Proxy::start(
        &w.a,
        &addrs,
        &[
            "--breaker-failures",
            "3",
            "--breaker-open",
            "30s",
            "--health-interval",
            "0",
        ],
    );
    let out = load(&w.a, "s503", 120, 0, Duration::from_secs(60), |_| {});
    // A 503 the upstream itself sent is passed through (it is an answer, not a lost request);
    // anything else must be right.
    let (relayed_503, rest): (Vec<Outcome>, Vec<Outcome>) = out
        .into_iter()
        .partition(|o| matches!(&o.result, Ok((503, b)) if b == "u=u1 down\n"));
    assert_gets_correct(&rest, &["u2", "u3"]);
    assert!(
        relayed_503.len() <= 10,
        "the breaker should stop traffic to the 503 upstream after 3 failures: {} 503s",
        relayed_503.len()
    );
    let text = metrics(&w.a);
    assert!(
        metric(&text, "ferry_proxy_breaker_opened_total", addrs[0]) >= 1.0,
        "breaker of the 503 upstream never opened:\n{text}"
    );
    assert_eq!(metric(&text, "ferry_proxy_breaker_state", addrs[1]), 0.0);
    proxy.assert_alive_and_bounded();
}

/// An upstream given by a name that does not resolve (`.invalid` is reserved; the namespace
/// has no route out, so the lookup fails at once and no query leaves the machine): the proxy
/// starts, sends that upstream nothing, and the others keep serving.
#[test]
fn chaos_upstream_dns_failure() {
    let Some(w) = world() else { return };
    let ups = upstreams(&w, [false; 3]);
    let mut list: Vec<String> = vec!["nonexistent.invalid:80".into()];
    list.extend(ups.iter().skip(1).map(|u| u.addr.to_string()));
    let mut child = NetnsPair::command(&w.a, common::BIN)
        .args([
            "proxy",
            "--protocol",
            "http",
            "--listen",
            PROXY,
            "--admin",
            ADMIN,
        ])
        .args(["--upstream", &list.join(","), "--workers", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut proxy = Proxy { child };
    assert!(line.starts_with("ferry: listening http "), "{line:?}");
    let out = load(&w.a, "dns", 60, 10, Duration::from_secs(60), |_| {});
    let by = assert_gets_correct(&out, &["u2", "u3"]);
    let refs: Vec<&Nginx> = ups.iter().collect();
    let (posts, ok) = assert_posts_never_retried(&out, &refs);
    eprintln!("dns: served {by:?}, {ok}/{posts} POSTs ok");
    assert_eq!(
        by.len(),
        2,
        "both resolvable upstreams keep serving: {by:?}"
    );
    proxy.assert_alive_and_bounded();
}
