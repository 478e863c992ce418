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

use netns::{ChildGuard, NetPair};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn in_b(n: &NetPair, args: &[&str]) -> Output {
    let out = n
        .in_b(args[0])
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
fn start_server(n: &NetPair, vdev: &str, ip: &str) -> (ChildGuard, Vec<String>) {
    let mut child = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", &n.ns_a, BIN, "serve", "--driver", "dpdk"])
            .args(["--vdev", vdev])
            .args(["--ip", &format!("{ip}/{}", NetPair::PREFIX)])
            .args([
                "--http",
                &format!("{ip}:8080"),
                "--redis",
                &format!("{ip}:6379"),
            ])
            .args(["--drain-timeout", "2s"])
            .env_remove("FERRY_DRIVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry"),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("ferry serve --driver dpdk did not start: {}", err.trim());
        }
        lines.push(line.trim().to_string());
    }
    // Keep draining both pipes so the server never blocks on a full one.
    if let Some(mut e) = child.0.stderr.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut e, &mut std::io::stderr());
        });
    }
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    (child, lines)
}

#[test]
fn dpdk_serves_http_and_redis_across_namespaces() {
    let n = match NetPair::create("c") {
        Ok(n) => n,
        Err(why) => {
            eprintln!("netns_dpdk: skipped: {why}");
            return;
        }
    };
    let ip = NetPair::OUR_IP;
    let vdev = format!("net_af_packet0,iface={}", n.veth_a);
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
    let out = n
        .in_b("curl")
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
    let n = match NetPair::create("t") {
        Ok(n) => n,
        Err(why) => {
            eprintln!("netns_dpdk: skipped: {why}");
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
        .args(["-n", &n.ns_a, "addr", "add", "10.78.0.1/24", "dev", &tap])
        .status()
        .expect("ip addr add");
    assert!(st.success(), "no tap interface {tap} in {}", n.ns_a);
    let out = Command::new("ip")
        .args(["netns", "exec", &n.ns_a, "curl", "-sS", "--max-time", "20"])
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
