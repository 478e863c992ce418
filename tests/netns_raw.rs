//! ferry-raw between two network namespaces joined by a veth pair: framed messages both ways,
//! including messages far larger than the MTU, with both TX methods; and a burst that measures
//! the two TX methods (figures printed, not asserted).
//!
//! Needs root (netns, AF_PACKET). Skips with a printed reason only where the kernel lacks
//! network namespaces/veth or AF_PACKET.

#[path = "common/netns.rs"]
mod netns;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ferry_driver::transport::{Readiness, Transport, TransportKind};
use ferry_raw::frame::Limits;
use ferry_raw::{RawConfig, RawTransport, RingVersion, TxMode};
use netns::{mac_string as mac_str, NetnsPair, Options};

const MAC_A: [u8; 6] = [0x02, 0xfe, 0x77, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0xfe, 0x77, 0, 0, 0x0b];

/// Run `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<Result<T, String>> {
    NetnsPair::spawn_in(ns, f)
}

fn setup(test: &str) -> Option<NetnsPair> {
    match NetnsPair::create_with(Options {
        tag: "r",
        kernel_addr: (false, false),
        macs: Some((MAC_A, MAC_B)),
        ..Options::default()
    }) {
        Ok(p) => {
            // AF_PACKET available?
            // SAFETY: plain syscall; the descriptor is closed right away.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                netns::skip_or_fail(&format!(
                    "{test}: AF_PACKET unavailable: {}",
                    std::io::Error::last_os_error()
                ));
                return None;
            }
            // SAFETY: we own fd.
            unsafe { libc::close(fd) };
            Some(p)
        }
        Err(e) => {
            netns::skip_or_fail(&format!("{test}: cannot create netns/veth: {e}"));
            None
        }
    }
}

/// Deterministic message `i`: sizes from empty to far beyond the MTU.
fn message(i: usize) -> Vec<u8> {
    let sizes = [
        0usize, 1, 100, 1400, 1479, 1480, 1481, 3000, 9000, 65_536, 200_000,
    ];
    let len = sizes[i % sizes.len()] + i;
    (0..len).map(|k| (k * 31 + i * 7) as u8).collect()
}

fn cfg(tx: TxMode) -> RawConfig {
    cfg_v(tx, RingVersion::V3)
}

fn cfg_v(tx: TxMode, version: RingVersion) -> RawConfig {
    RawConfig {
        tx,
        version,
        ..RawConfig::default()
    }
}

fn echo_both_ways(tx: TxMode, version: RingVersion) {
    let name = format!("echo_both_ways({tx:?}, {version:?})");
    let Some(pair) = setup(&name) else { return };
    const N: usize = 33;
    let if_b = pair.ifaces.1.clone();
    let server = in_netns(&pair.b, move || -> Result<usize, String> {
        let mut t = RawTransport::open(&if_b, MAC_A, 2, cfg_v(tx, version), Limits::default())
            .map_err(|e| format!("open B: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut echoed = 0;
        while Instant::now() < deadline {
            match t.recv_message(Some(Duration::from_millis(200))) {
                Ok(Some(m)) if &m[..] == b"bye" => break,
                Ok(Some(m)) => {
                    t.send_message(&m).map_err(|e| format!("B send: {e}"))?;
                    echoed += 1;
                }
                Ok(None) => {}
                Err(e) => return Err(format!("B recv: {e}")),
            }
        }
        Ok(echoed)
    });
    let if_a = pair.ifaces.0.clone();
    let client = in_netns(&pair.a, move || -> Result<(), String> {
        let mut t = RawTransport::open(&if_a, MAC_B, 1, cfg_v(tx, version), Limits::default())
            .map_err(|e| format!("open A: {e}"))?;
        assert_eq!(t.kind(), TransportKind::Datagram);
        assert_eq!(t.mtu(), Some(1500 - 20));
        assert_eq!(t.local_mac(), MAC_A);
        // Give B's socket time to open: resend the first probe until it echoes (bounded).
        let mut up = false;
        for _ in 0..50 {
            t.send_message(b"probe").map_err(|e| e.to_string())?;
            if let Some(m) = t
                .recv_message(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?
            {
                assert_eq!(&m[..], b"probe");
                up = true;
                break;
            }
        }
        if !up {
            return Err("peer never answered the probe".into());
        }
        for i in 0..N - 1 {
            let msg = message(i);
            t.send_message(&msg)
                .map_err(|e| format!("A send {i}: {e}"))?;
            let back = t
                .recv_message(Some(Duration::from_secs(5)))
                .map_err(|e| format!("A recv {i}: {e}"))?
                .ok_or_else(|| format!("no echo of message {i} ({} bytes)", msg.len()))?;
            if back[..] != msg[..] {
                return Err(format!("message {i} corrupted ({} bytes)", msg.len()));
            }
        }
        // Through the Transport trait too.
        let dynt: &mut dyn Transport = &mut t;
        assert_eq!(dynt.send(b"via trait").unwrap(), 9);
        let r = dynt
            .poll(
                Readiness {
                    readable: true,
                    writable: false,
                },
                Some(Duration::from_secs(5)),
            )
            .unwrap();
        assert!(r.readable);
        let mut small = [0u8; 4];
        assert_eq!(
            dynt.recv(&mut small).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        let mut buf = [0u8; 64];
        let n = dynt.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"via trait");
        let st = t.stats();
        assert_eq!(st.gaps, 0, "{st:?}");
        assert_eq!(st.malformed_frames, 0, "{st:?}");
        eprintln!("{name}: A stats {st:?}");
        t.send_message(b"bye").map_err(|e| e.to_string())?;
        Ok(())
    });
    let c = client.join().expect("client thread");
    let s = server.join().expect("server thread");
    drop(pair);
    c.expect("client netns").expect("client");
    // The probe may be echoed more than once; the server saw at least every message.
    assert!(s.expect("server netns").expect("server") >= N);
}

#[test]
fn echo_both_ways_tx_ring() {
    echo_both_ways(TxMode::Ring { frames: 256 }, RingVersion::V3);
}

#[test]
fn echo_both_ways_sendmmsg() {
    echo_both_ways(TxMode::Sendmmsg, RingVersion::V3);
}

#[test]
fn echo_both_ways_v2_rings() {
    echo_both_ways(TxMode::Ring { frames: 256 }, RingVersion::V2);
}

/// One-way bursts per TX method, with single-frame messages (one frame per send call) and
/// 60 000-byte messages (41 frames per call, batched); prints rates and loss, asserts delivery.
#[test]
fn tx_methods_burst() {
    let Some(pair) = setup("tx_methods_burst") else {
        return;
    };
    const FRAMES: usize = 20_000;
    let mut run = 0u32;
    for tx in [TxMode::Sendmmsg, TxMode::Ring { frames: 256 }] {
        for msg_len in [1400usize, 60_000] {
            run += 1;
            let per_msg = msg_len.div_ceil(1480);
            let msgs = FRAMES / per_msg;
            let stream = 100 + run;
            let if_b = pair.ifaces.1.clone();
            let rx = in_netns(&pair.b, move || -> Result<(usize, String), String> {
                let big = RawConfig {
                    block_count: 64,
                    ..RawConfig::default()
                };
                let mut t = RawTransport::open(&if_b, MAC_A, 9, big, Limits::default())
                    .map_err(|e| e.to_string())?;
                let mut got = 0;
                let mut started = false;
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut idle = 0;
                while got < msgs && Instant::now() < deadline && idle < 10 {
                    match t.recv_message(Some(Duration::from_millis(100))) {
                        Ok(Some(m)) => {
                            assert_eq!(m.len(), msg_len);
                            started = true;
                            got += 1;
                            idle = 0;
                        }
                        Ok(None) if started => idle += 1,
                        Ok(None) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                let k = t.socket_mut().stats().map_err(|e| e.to_string())?;
                Ok((got, format!("{:?}; kernel {k:?}", t.stats())))
            });
            let if_a = pair.ifaces.0.clone();
            let txh = in_netns(&pair.a, move || -> Result<f64, String> {
                let mut t = RawTransport::open(&if_a, MAC_B, stream, cfg(tx), Limits::default())
                    .map_err(|e| e.to_string())?;
                thread::sleep(Duration::from_millis(300)); // let the receiver open its ring
                let msg = vec![0x5a; msg_len];
                let start = Instant::now();
                for _ in 0..msgs {
                    t.send_message(&msg).map_err(|e| e.to_string())?;
                }
                Ok(start.elapsed().as_secs_f64())
            });
            let send_secs = txh.join().unwrap().unwrap().unwrap();
            let (got, detail) = rx.join().unwrap().unwrap().unwrap();
            let frames = msgs * per_msg;
            eprintln!(
                "tx_methods_burst {tx:?} msg {msg_len} B ({per_msg} frames/call): {frames} frames \
                 in {send_secs:.3} s = {:.0} frames/s, {:.0} MB/s payload; received {got}/{msgs} \
                 messages; rx {detail}",
                frames as f64 / send_secs,
                (msgs * msg_len) as f64 / send_secs / 1e6,
            );
            assert!(got > 0, "{tx:?}: nothing received");
        }
    }
}

/// nftables drops 10% of our EtherType at B's ingress: B reports gaps, and every message it
/// does deliver is intact (a message missing a fragment is discarded, never delivered short).
#[test]
fn loss_is_detected_never_corrupts() {
    let Some(pair) = setup("loss_is_detected_never_corrupts") else {
        return;
    };
    let rules = format!(
        "table netdev ferryloss {{\n chain c {{\n  type filter hook ingress device \"{}\" \
         priority 0;\n  ether type 0x88b5 numgen random mod 10 == 0 drop\n }}\n}}\n",
        pair.ifaces.1
    );
    let mut child = match Command::new("ip")
        .args(["netns", "exec", &pair.b, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            netns::skip_or_fail(&format!(
                "loss_is_detected_never_corrupts: cannot run nft: {e}"
            ));
            return;
        }
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(rules.as_bytes()).expect("write rules");
    }
    let out = child.wait_with_output().expect("nft");
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Only a kernel without netdev-family nftables is a reason to skip.
        if err.contains("not supported") || err.contains("No such file") {
            netns::skip_or_fail(&format!(
                "loss_is_detected_never_corrupts: no nftables netdev ingress: {err}"
            ));
            return;
        }
        panic!("nft rejected the loss rule: {err}");
    }
    const MSGS: usize = 300;
    const LEN: usize = 4000; // 3 frames each
    let if_b = pair.ifaces.1.clone();
    let rx = in_netns(&pair.b, move || -> Result<_, String> {
        let mut t = RawTransport::open(&if_b, MAC_A, 9, RawConfig::default(), Limits::default())
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut idle = 0;
        while Instant::now() < deadline && idle < 10 && got.len() < MSGS {
            match t.recv_message(Some(Duration::from_millis(100))) {
                Ok(Some(m)) => {
                    got.push(m);
                    idle = 0;
                }
                Ok(None) if !got.is_empty() => idle += 1,
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok((got, t.stats()))
    });
    let if_a = pair.ifaces.0.clone();
    let tx = in_netns(&pair.a, move || -> Result<(), String> {
        let mut t = RawTransport::open(&if_a, MAC_B, 5, RawConfig::default(), Limits::default())
            .map_err(|e| e.to_string())?;
        thread::sleep(Duration::from_millis(300));
        for i in 0..MSGS {
            let mut m = vec![(i % 251) as u8; LEN];
            m[..4].copy_from_slice(&(i as u32).to_be_bytes());
            t.send_message(&m).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    tx.join().unwrap().unwrap().unwrap();
    let (got, stats) = rx.join().unwrap().unwrap().unwrap();
    drop(pair);
    eprintln!(
        "loss_is_detected_never_corrupts: {} of {MSGS} messages delivered; {stats:?}",
        got.len()
    );
    for m in &got {
        assert_eq!(m.len(), LEN);
        let i = u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize;
        assert!(
            m[4..].iter().all(|&b| b == (i % 251) as u8),
            "message {i} corrupted"
        );
    }
    assert!(got.len() < MSGS, "10% frame loss must cost messages");
    assert!(!got.is_empty());
    assert!(stats.gaps > 0 && stats.lost_frames > 0, "{stats:?}");
    // In order: delivered indices strictly increase.
    let idx: Vec<u32> = got
        .iter()
        .map(|m| u32::from_be_bytes([m[0], m[1], m[2], m[3]]))
        .collect();
    assert!(idx.windows(2).all(|w| w[0] < w[1]));
}

/// Ping-pong of 64-byte messages: prints p50/p99 round-trip times (not asserted). TPACKET_V3
/// hands blocks over on its retire timer (milliseconds); V2 wakes the reader per frame.
#[test]
fn ping_pong_latency_v3() {
    ping_pong_latency(RingVersion::V3);
}

#[test]
fn ping_pong_latency_v2() {
    ping_pong_latency(RingVersion::V2);
}

fn ping_pong_latency(version: RingVersion) {
    let Some(pair) = setup("ping_pong_latency") else {
        return;
    };
    let conf = cfg_v(TxMode::Sendmmsg, version);
    const ROUNDS: usize = 200;
    let if_b = pair.ifaces.1.clone();
    let echo = in_netns(&pair.b, move || -> Result<(), String> {
        let mut t = RawTransport::open(&if_b, MAC_A, 2, conf, Limits::default())
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(m) = t
                .recv_message(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?
            {
                if &m[..] == b"bye" {
                    break;
                }
                t.send_message(&m).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    });
    let if_a = pair.ifaces.0.clone();
    let ping = in_netns(&pair.a, move || -> Result<Vec<Duration>, String> {
        let mut t = RawTransport::open(&if_a, MAC_B, 1, conf, Limits::default())
            .map_err(|e| e.to_string())?;
        let msg = [0x42u8; 64];
        // Wait for the echo side (bounded).
        let mut up = false;
        for _ in 0..50 {
            t.send_message(&msg).map_err(|e| e.to_string())?;
            if t.recv_message(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?
                .is_some()
            {
                up = true;
                break;
            }
        }
        if !up {
            return Err("echo side never answered".into());
        }
        thread::sleep(Duration::from_millis(200));
        while t
            .recv_message(Some(Duration::ZERO))
            .map_err(|e| e.to_string())?
            .is_some()
        {}
        let mut rtts = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            t.send_message(&msg).map_err(|e| e.to_string())?;
            t.recv_message(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?
                .ok_or("echo lost")?;
            rtts.push(start.elapsed());
        }
        t.send_message(b"bye").map_err(|e| e.to_string())?;
        Ok(rtts)
    });
    let mut rtts = ping.join().unwrap().unwrap().expect("ping");
    echo.join().unwrap().unwrap().expect("echo");
    rtts.sort();
    let pct = |p: usize| rtts[(rtts.len() * p / 100).min(rtts.len() - 1)];
    eprintln!(
        "ping_pong_latency {version:?}: {ROUNDS} round trips of 64 B: p50 {:?} p99 {:?} max {:?}",
        pct(50),
        pct(99),
        rtts[rtts.len() - 1]
    );
    assert_eq!(rtts.len(), ROUNDS);
}

/// `ferry serve --driver raw --iface IF` in namespace B (the CLI's framed echo service, found by
/// its listening line); a `RawTransport` in namespace A sends messages from empty to far beyond
/// the MTU and gets each back intact; SIGTERM ends the server with exit 0.
#[test]
fn ferry_serve_driver_raw_echoes_framed_messages() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let Some(pair) = setup("ferry_serve_driver_raw_echoes_framed_messages") else {
        return;
    };
    let mut server = Command::new("ip")
        .args(["netns", "exec", &pair.b, env!("CARGO_BIN_EXE_ferry")])
        .args(["serve", "--driver", "raw", "--iface", &pair.ifaces.1])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with(&format!(
            "ferry: listening raw {} driver=raw mac={}",
            pair.ifaces.1,
            mac_str(MAC_B)
        )),
        "{line:?}"
    );
    let if_a = pair.ifaces.0.clone();
    let client = in_netns(&pair.a, move || -> Result<usize, String> {
        let mut t = RawTransport::open(&if_a, MAC_B, 1, cfg(TxMode::Sendmmsg), Limits::default())
            .map_err(|e| format!("open A: {e}"))?;
        let mut ok = 0;
        for i in 0..22 {
            let m = message(i);
            t.send_message(&m).map_err(|e| format!("send {i}: {e}"))?;
            match t.recv_message(Some(Duration::from_secs(10))) {
                Ok(Some(back)) if back[..] == m[..] => ok += 1,
                Ok(Some(back)) => {
                    return Err(format!(
                        "message {i}: {} bytes came back, sent {}",
                        back.len(),
                        m.len()
                    ))
                }
                Ok(None) => return Err(format!("message {i} ({} bytes): no echo", m.len())),
                Err(e) => return Err(format!("recv {i}: {e}")),
            }
        }
        Ok(ok)
    });
    let echoed = client.join().unwrap().unwrap();
    let result = echoed.map(|n| assert_eq!(n, 22));
    // SAFETY: signalling the child we spawned (ip exec's the server in place).
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = server.wait().unwrap();
    result.unwrap();
    assert!(status.success(), "{status:?}");
}
