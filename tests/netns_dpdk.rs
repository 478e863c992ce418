//! `ferry serve --driver dpdk` across a veth pair between two network namespaces this test
//! creates (and deletes, also on failure): DPDK's `net_af_packet` owns the server's veth end,
//! which carries no kernel address (the smoltcp stack answers ARP, ICMP and TCP itself); ping,
//! curl and redis-cli in the other namespace talk to it through the kernel's TCP. A second test
//! serves over `net_tap`: DPDK creates a tap interface in the server's namespace, the kernel
//! there gets an address on it and curls the stack through it.
//!
//! Built only with `--features dpdk` (Debian's libdpdk-dev). Needs root and network
//! namespaces; without them the test prints why and returns.
#![cfg(feature = "dpdk")]

#[path = "../drivers/dpdk/tests/netns/mod.rs"]
mod netns;

use netns::{ChildGuard, NetnsPair};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn in_b(n: &NetnsPair, args: &[&str]) -> Output {
    let out = NetnsPair::command(&n.b, args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "`{}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ferry serve --driver dpdk --vdev VDEV` at `ip`/24 in `ns_a`; returns the child and its two
/// `listening` lines.
fn start_server(n: &NetnsPair, vdev: &str, ip: &str) -> (ChildGuard, Vec<String>) {
    let cidr = format!("{ip}/{}", netns::PREFIX);
    let (http, redis) = (format!("{ip}:8080"), format!("{ip}:6379"));
    let args = [
        "serve",
        "--driver",
        "dpdk",
        "--vdev",
        vdev,
        "--ip",
        &cidr,
        "--http",
        &http,
        "--redis",
        &redis,
        "--drain-timeout",
        "2s",
    ];
    netns::spawn_ferry(&n.a, BIN, &args, 2).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn dpdk_serves_http_and_redis_across_namespaces() {
    let n = match netns::create("c") {
        Ok(n) => n,
        Err(why) => {
            netns::skip_or_fail(&format!("netns_dpdk: {why}"));
            return;
        }
    };
    let ip = netns::OUR_IP;
    let vdev = format!("net_af_packet0,iface={}", n.ifaces.0);
    let (mut server, lines) = start_server(&n, &vdev, ip);
    assert_eq!(
        lines,
        [
            format!("ferry: listening http {ip}:8080 driver=dpdk"),
            format!("ferry: listening redis {ip}:6379 driver=dpdk"),
        ]
    );
    let url = |p: &str| format!("http://{ip}:8080{p}");

    // ICMP echo and ARP, answered by smoltcp.
    in_b(&n, &["ping", "-c", "3", "-i", "0.2", "-W", "5", ip]);

    // GET / twice on one connection (keep-alive: the second transfer opens no connection).
    let out = in_b(
        &n,
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-w",
            "|%{http_code}|%{num_connects}\n",
            &url("/"),
            &url("/"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello world\n|200|1\nhello world\n|200|0\n"
    );

    // POST /echo with a few hundred KB, streamed back byte for byte.
    let body: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = std::env::temp_dir().join(format!("ferry-netns-dpdk-{}", std::process::id()));
    std::fs::write(&file, &body).unwrap();
    let at = format!("@{}", file.display());
    let out = NetnsPair::command(&n.b, "curl")
        .args(["-sS", "--max-time", "30", "--data-binary", &at])
        .args([
            "-H",
            "Content-Type: application/octet-stream",
            &url("/echo"),
        ])
        .output()
        .expect("curl");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), body.len(), "echoed length");
    assert!(out.stdout == body, "echoed bytes differ");

    // /health names the driver.
    let out = in_b(&n, &["curl", "-sS", "--max-time", "20", &url("/health")]);
    let health = String::from_utf8_lossy(&out.stdout);
    assert!(health.contains("\"driver\":\"dpdk\""), "{health}");

    // RESP over the same stack.
    let cli = |args: &[&str]| -> String {
        let mut v = vec!["redis-cli", "-h", ip, "-p", "6379"];
        v.extend_from_slice(args);
        String::from_utf8_lossy(&in_b(&n, &v).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "ferry:dpdk", "over-dpdk"]), "OK");
    assert_eq!(cli(&["GET", "ferry:dpdk"]), "over-dpdk");
    assert_eq!(cli(&["INCR", "ferry:n"]), "1");

    // Graceful stop on SIGTERM (`ip netns exec` execs ferry in place).
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let status = server
        .wait_for(Duration::from_secs(20))
        .expect("ferry did not stop within 20 s of SIGTERM");
    assert!(status.success(), "ferry exited with {status}");
}

#[test]
fn dpdk_serves_over_net_tap() {
    let n = match netns::create("t") {
        Ok(n) => n,
        Err(why) => {
            netns::skip_or_fail(&format!("netns_dpdk: {why}"));
            return;
        }
    };
    let tap = format!("dft{}", std::process::id());
    let ip = "10.78.0.2";
    let (mut server, lines) = start_server(&n, &format!("net_tap0,iface={tap}"), ip);
    assert_eq!(
        lines[0],
        format!("ferry: listening http {ip}:8080 driver=dpdk")
    );
    // The tap interface exists once the server printed its listening lines.
    let st = Command::new("ip")
        .args(["-n", &n.a, "addr", "add", "10.78.0.1/24", "dev", &tap])
        .status()
        .expect("ip addr add");
    assert!(st.success(), "no tap interface {tap} in {}", n.a);
    let out = Command::new("ip")
        .args(["netns", "exec", &n.a, "curl", "-sS", "--max-time", "20"])
        .args(["--retry", "3", "--retry-connrefused", "--retry-delay", "1"])
        .arg(format!("http://{ip}:8080/"))
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let status = server
        .wait_for(Duration::from_secs(20))
        .expect("ferry did not stop within 20 s of SIGTERM");
    assert!(status.success(), "ferry exited with {status}");
}
