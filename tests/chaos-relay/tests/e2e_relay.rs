//! Every fault of the relay, end to end with std sockets on loopback. Timing assertions are
//! generous lower bounds (a fault delays at least this much) and loose upper bounds.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_chaos_relay::{Dir, Faults, Relay};

const LOOP: &str = "127.0.0.1:0";

/// An echo server: every connection echoes until EOF. Counts bytes received.
fn echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind(LOOP).unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let seen = s2.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 16 * 1024];
                loop {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            seen.fetch_add(n, Ordering::Relaxed);
                            if c.write_all(&b[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A server that sends `body` to each connection, then closes.
fn sender(body: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind(LOOP).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let body = body.clone();
            std::thread::spawn(move || {
                let _ = c.write_all(&body);
                // Wait for the client to go, so our close is not the cause of anything.
                let mut b = [0u8; 64];
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                while matches!(c.read(&mut b), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn start(up: SocketAddr, f: Faults) -> Relay {
    Relay::start(LOOP.parse().unwrap(), up, f).unwrap()
}

fn client(r: &Relay) -> TcpStream {
    let c = TcpStream::connect(r.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Poll `cond` for up to 5 s (counters are bumped just after the socket operation a client
/// sees).
fn wait_for(cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "condition not reached"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn relays_a_megabyte_both_ways_unchanged() {
    let (up, seen) = echo();
    let r = start(up, Faults::none());
    let mut c = client(&r);
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let d2 = data.clone();
    let t = std::thread::spawn(move || w.write_all(&d2).unwrap());
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    t.join().unwrap();
    assert!(got == data);
    assert_eq!(seen.load(Ordering::Relaxed), data.len());
    let s = r.stats();
    assert_eq!(
        (s.accepted, s.bytes_to_upstream, s.bytes_to_downstream),
        (1, 1 << 20, 1 << 20)
    );
}

#[test]
fn latency_with_jitter_delays_and_keeps_order() {
    let (up, _) = echo();
    let r = start(up, Faults::none().with_latency(ms(50), ms(20)).with_seed(1));
    let mut c = client(&r);
    let t0 = Instant::now();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    let rtt = t0.elapsed();
    assert!(
        rtt >= ms(55),
        "two one-way delays of at least 30 ms each: {rtt:?}"
    );
    assert!(rtt < ms(5000));
    // Many small writes, jittered: still in order.
    let mut w = c.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        for i in 0..200u32 {
            w.write_all(&i.to_be_bytes()).unwrap();
            if i % 20 == 0 {
                std::thread::sleep(ms(3));
            }
        }
    });
    for i in 0..200u32 {
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert_eq!(u32::from_be_bytes(b), i);
    }
    t.join().unwrap();
}

#[test]
fn stall_for_holds_bytes_then_releases_them() {
    let (up, _) = echo();
    let r = start(up, Faults::none());
    let mut c = client(&r);
    c.write_all(b"a").unwrap();
    c.read_exact(&mut [0u8; 1]).unwrap();
    r.stall_for(ms(400));
    let t0 = Instant::now();
    c.write_all(b"bc").unwrap();
    let mut b = [0u8; 2];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"bc");
    assert!(t0.elapsed() >= ms(300), "{:?}", t0.elapsed());
}

#[test]
fn stall_forever_until_unstalled() {
    let (up, seen) = echo();
    let r = start(up, Faults::none());
    let mut c = client(&r);
    r.stall_forever();
    c.write_all(b"xyz").unwrap();
    c.set_read_timeout(Some(ms(400))).unwrap();
    let e = c.read(&mut [0u8; 3]).unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    assert_eq!(
        seen.load(Ordering::Relaxed),
        0,
        "nothing reached the upstream"
    );
    r.unstall();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 3];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"xyz");
}

#[test]
fn reset_after_n_bytes_sends_exactly_n_then_rst() {
    let up = sender(vec![b'z'; 10_000]);
    let r = start(up, Faults::none().with_reset(100, 1.0, Dir::ToDownstream));
    let mut c = client(&r);
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    let err = loop {
        match c.read(&mut b) {
            Ok(0) => panic!("clean EOF instead of a reset after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(got.len(), 100);
    wait_for(|| r.stats().resets == 1);
}

#[test]
fn reset_at_accept() {
    let (up, _) = echo();
    let r = start(up, Faults::none().with_reset(0, 1.0, Dir::ToUpstream));
    let mut c = client(&r);
    let _ = c.write_all(b"hello");
    let e = c.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
}

#[test]
fn reset_probability_is_seeded() {
    let (up, _) = echo();
    let pattern = |seed| {
        let r = start(
            up,
            Faults::none()
                .with_reset(0, 0.5, Dir::ToUpstream)
                .with_seed(seed),
        );
        let v: Vec<bool> = (0..16)
            .map(|_| {
                let mut c = client(&r);
                // The relay may reset before our write lands: a failed
                // write is the same outcome as a failed read.
                let mut b = [0u8; 1];
                c.write_all(b"x").is_err() || c.read_exact(&mut b).is_err()
            })
            .collect();
        let n = v.iter().filter(|x| **x).count() as u64;
        let t0 = Instant::now();
        while r.stats().resets < n && t0.elapsed() < ms(3000) {
            std::thread::sleep(ms(10));
        }
        (v, r.stats().resets)
    };
    let (a, resets) = pattern(11);
    let (b, _) = pattern(11);
    assert_eq!(a, b, "same seed, same connections reset");
    let n = a.iter().filter(|x| **x).count() as u64;
    assert_eq!(n, resets);
    assert!((2..=14).contains(&n), "{n} of 16 reset at p=0.5");
}

#[test]
fn half_open_drops_responses_and_keeps_the_socket() {
    let (up, seen) = echo();
    let r = start(up, Faults::none().with_half_open(Dir::ToDownstream));
    let mut c = client(&r);
    c.write_all(b"hello").unwrap();
    c.set_read_timeout(Some(ms(400))).unwrap();
    let e = c.read(&mut [0u8; 5]).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    assert_eq!(seen.load(Ordering::Relaxed), 5, "the request went through");
    c.write_all(b"more").unwrap();
    let e = c.read(&mut [0u8; 5]).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    assert!(r.stats().bytes_dropped >= 5);
}

#[test]
fn half_open_drops_requests() {
    let (up, seen) = echo();
    let r = start(up, Faults::none().with_half_open(Dir::ToUpstream));
    let mut c = client(&r);
    c.write_all(b"hello").unwrap();
    c.set_read_timeout(Some(ms(400))).unwrap();
    assert!(c.read(&mut [0u8; 5]).is_err());
    assert_eq!(seen.load(Ordering::Relaxed), 0);
    assert_eq!(r.stats().bytes_dropped, 5);
}

#[test]
fn refuse_closes_at_once_and_can_be_lifted() {
    let (up, _) = echo();
    let r = start(up, Faults::none().with_refuse());
    let mut c = client(&r);
    let _ = c.write_all(b"x");
    match c.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(r.stats().refused, 1);
    r.update(|f| f.refuse = false);
    let mut c = client(&r);
    c.write_all(b"y").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
}

#[test]
fn bandwidth_limits_throughput() {
    let up = sender(vec![7u8; 20_000]);
    let r = start(up, Faults::none().with_bandwidth(40_000));
    let mut c = client(&r);
    let t0 = Instant::now();
    let mut b = vec![0u8; 20_000];
    c.read_exact(&mut b).unwrap();
    let took = t0.elapsed();
    assert!(
        took >= ms(300),
        "20 kB at 40 kB/s takes about 0.5 s: {took:?}"
    );
    assert!(took < ms(10_000));
}

#[test]
fn upstream_down_closes_the_client() {
    let dead = {
        let l = TcpListener::bind(LOOP).unwrap();
        l.local_addr().unwrap()
    };
    let r = start(dead, Faults::none());
    let mut c = client(&r);
    assert!(matches!(c.read(&mut [0u8; 1]), Ok(0) | Err(_)));
    let t0 = Instant::now();
    while r.stats().connect_failures == 0 && t0.elapsed() < ms(5000) {
        std::thread::sleep(ms(10));
    }
    assert_eq!(r.stats().connect_failures, 1);
}

#[test]
fn upstream_close_reaches_the_client_after_delayed_data() {
    let up = sender(b"bye".to_vec());
    let r = start(up, Faults::none().with_latency(ms(30), ms(0)));
    let mut c = client(&r);
    let mut b = [0u8; 3];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"bye");
    // The sender waits for us; closing our side makes it close, and the relay follows.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
    let t0 = Instant::now();
    while r.stats().active > 0 && t0.elapsed() < ms(5000) {
        std::thread::sleep(ms(10));
    }
    assert_eq!(r.stats().active, 0, "no connection left behind");
}

#[test]
fn binary_takes_faults_and_control_commands() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let (up, _) = echo();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-chaos-relay"))
        .args([
            "--listen",
            LOOP,
            "--upstream",
            &up.to_string(),
            "--control",
            LOOP,
        ])
        .args(["--fault", "latency 40", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let rest = line
        .trim()
        .strip_prefix("ferry-chaos-relay: listening ")
        .unwrap();
    let (addr, ctl) = rest.split_once(" control=").unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    c.write_all(b"a").unwrap();
    c.read_exact(&mut [0u8; 1]).unwrap();
    assert!(t0.elapsed() >= ms(70), "{:?}", t0.elapsed());

    let ctl = TcpStream::connect(ctl).unwrap();
    let mut w = ctl.try_clone().unwrap();
    let mut rd = BufReader::new(ctl);
    let mut ask = |cmd: &str| {
        writeln!(w, "{cmd}").unwrap();
        let mut l = String::new();
        rd.read_line(&mut l).unwrap();
        l.trim().to_string()
    };
    assert_eq!(ask("latency 0"), "ok");
    assert!(ask("explode").starts_with("error: "));
    assert_eq!(ask("refuse on"), "ok");
    let mut c2 = TcpStream::connect(addr).unwrap();
    c2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(c2.read(&mut [0u8; 1]), Ok(0) | Err(_)));
    let stats = ask("stats");
    assert!(
        stats.contains("accepted=2") && stats.contains("refused=1"),
        "{stats}"
    );
    drop(child.stdin.take());
    let st = child.wait().unwrap();
    assert!(st.success());
}

#[test]
fn half_open_upstream_direction_closes_when_the_client_leaves() {
    let (up, _) = echo();
    let r = start(up, Faults::none().with_half_open(Dir::ToUpstream));
    let c = client(&r);
    c.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c);
    wait_for(|| r.stats().active == 0);
}
