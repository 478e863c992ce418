//! Ping-pong latency and one-way throughput of ferry-raw between two hosts or namespaces, for
//! `scripts/bench transports`. Run one side per namespace (needs `CAP_NET_RAW`):
//!
//! ```text
//! ip netns exec B raw_bench echo  <iface> <peer-mac> [seconds] [flags]
//! ip netns exec A raw_bench ping  <iface> <peer-mac> [rounds] [size] [flags]
//! ip netns exec B raw_bench sink  <iface> <peer-mac> [seconds] [flags]
//! ip netns exec A raw_bench flood <iface> <peer-mac> [messages] [size] [flags]
//! ```
//!
//! Flags, anywhere after the MAC: `ring` (TX ring instead of `sendmmsg`), `v2` (TPACKET_V2
//! rings, per-frame wake-ups: use it on both sides for latency).
//!
//! `ping` and `sink` print one JSON line. Every loop is bounded by a count and a deadline.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferry_raw::frame::Limits;
use ferry_raw::{RawConfig, RawTransport, RingVersion, TxMode};

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn run(args: &[String]) -> Result<(), String> {
    let (Some(mode), Some(iface), Some(mac)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: raw_bench echo|ping|sink|flood <iface> <peer-mac> [..]".into());
    };
    let peer = parse_mac(mac).ok_or_else(|| format!("bad MAC {mac:?}"))?;
    let flag = |f: &str| args.iter().skip(4).any(|a| a == f);
    let tx = if flag("ring") {
        TxMode::Ring { frames: 256 }
    } else {
        TxMode::Sendmmsg
    };
    let version = if flag("v2") {
        RingVersion::V2
    } else {
        RingVersion::V3
    };
    let cfg = RawConfig {
        tx,
        version,
        block_count: 64,
        ..RawConfig::default()
    };
    let stream = if mode == "ping" || mode == "flood" {
        1
    } else {
        2
    };
    let mut t = RawTransport::open(iface, peer, stream, cfg, Limits::default())
        .map_err(|e| format!("open {iface}: {e}"))?;
    let io = |e: std::io::Error| e.to_string();
    match mode.as_str() {
        "echo" => {
            let deadline = Instant::now() + Duration::from_secs(arg(args, 4, 60));
            while Instant::now() < deadline {
                if let Some(m) = t
                    .recv_message(Some(Duration::from_millis(100)))
                    .map_err(io)?
                {
                    if &m[..] == b"bye" {
                        break;
                    }
                    t.send_message(&m).map_err(io)?;
                }
            }
        }
        "ping" => {
            let rounds: usize = arg(args, 4, 1000);
            let msg = vec![0x42u8; arg(args, 5, 64)];
            let mut up = false;
            for _ in 0..100 {
                t.send_message(&msg).map_err(io)?;
                if t.recv_message(Some(Duration::from_millis(100)))
                    .map_err(io)?
                    .is_some()
                {
                    up = true;
                    break;
                }
            }
            if !up {
                return Err("no echo".into());
            }
            std::thread::sleep(Duration::from_millis(100));
            while t.recv_message(Some(Duration::ZERO)).map_err(io)?.is_some() {}
            let mut rtt = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let s = Instant::now();
                t.send_message(&msg).map_err(io)?;
                if t.recv_message(Some(Duration::from_secs(2)))
                    .map_err(io)?
                    .is_none()
                {
                    return Err("echo lost".into());
                }
                rtt.push(s.elapsed().as_secs_f64() * 1e6);
            }
            t.send_message(b"bye").map_err(io)?;
            rtt.sort_by(f64::total_cmp);
            let p = |q: f64| rtt[((rtt.len() as f64 * q) as usize).min(rtt.len() - 1)];
            println!(
                "{{\"transport\":\"raw\",\"ring\":\"{version:?}\",\"rounds\":{rounds},\"size\":{},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
                msg.len(),
                p(0.50),
                p(0.99)
            );
        }
        "sink" => {
            let deadline = Instant::now() + Duration::from_secs(arg(args, 4, 60));
            let (mut msgs, mut bytes, mut first, mut last) = (0u64, 0u64, None, Instant::now());
            while Instant::now() < deadline {
                match t
                    .recv_message(Some(Duration::from_millis(500)))
                    .map_err(io)?
                {
                    Some(m) if &m[..] == b"bye" => break,
                    Some(m) => {
                        first.get_or_insert_with(Instant::now);
                        last = Instant::now();
                        msgs += 1;
                        bytes += m.len() as u64;
                    }
                    None if first.is_some() => break,
                    None => {}
                }
            }
            let secs = first.map_or(0.0, |f| (last - f).as_secs_f64()).max(1e-9);
            let st = t.stats();
            let k = t.socket_mut().stats().map_err(io)?;
            println!(
                "{{\"transport\":\"raw\",\"messages\":{msgs},\"bytes\":{bytes},\"secs\":{secs:.3},\
                 \"msgs_per_s\":{:.0},\"mb_per_s\":{:.1},\"lost_frames\":{},\"ring_drops\":{}}}",
                msgs as f64 / secs,
                bytes as f64 / secs / 1e6,
                st.lost_frames,
                k.drops
            );
        }
        "flood" => {
            let n: usize = arg(args, 4, 100_000);
            let msg = vec![0x5au8; arg(args, 5, 1400)];
            for _ in 0..n {
                t.send_message(&msg).map_err(io)?;
            }
            std::thread::sleep(Duration::from_millis(50));
            t.send_message(b"bye").map_err(io)?;
        }
        other => return Err(format!("unknown mode {other:?}")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
