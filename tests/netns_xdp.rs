//! `ferry serve --driver xdp` across a veth pair between two network namespaces this test
//! creates (and deletes, also on failure): the server's end carries no kernel address (the
//! smoltcp stack on AF_XDP answers ARP, ICMP and TCP itself); curl, redis-cli and ping in the
//! other namespace talk to it through the kernel's TCP.
//!
//! Needs root, network namespaces and AF_XDP; without them the test prints why and returns.

#[path = "common/netns.rs"]
mod netns;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns::{exec, ChildGuard, NetnsPair, Options};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");
const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";

/// The server's namespace `a` (veth end up, no kernel address) and the client's `b` (a kernel
/// address, and a permanent neighbour entry for the server: smoltcp answers ARP, but the
/// first SYN need not wait for it). Checksum offload is off on both ends (smoltcp checks).
fn create_namespaces() -> Result<NetnsPair, String> {
    let n = NetnsPair::create_with(Options {
        tag: "x",
        ips: (
            SERVER_IP.parse::<Ipv4Addr>().unwrap(),
            CLIENT_IP.parse::<Ipv4Addr>().unwrap(),
        ),
        kernel_addr: (false, true),
        macs: None,
        tx_checksum_off: true,
    })?;
    let mac = netns::mac_string(n.mac(false)?);
    exec(
        &n.b,
        &[
            "ip",
            "neigh",
            "replace",
            SERVER_IP,
            "lladdr",
            &mac,
            "dev",
            &n.ifaces.1,
            "nud",
            "permanent",
        ],
    )?;
    Ok(n)
}

/// `ferry serve --driver xdp` on the server's veth end; the child and its `listening` lines.
fn start_server(n: &NetnsPair) -> Result<(ChildGuard, Vec<String>), String> {
    let ip = format!("{SERVER_IP}/24");
    let http = format!("{SERVER_IP}:8080");
    let redis = format!("{SERVER_IP}:6379");
    let args = [
        "serve",
        "--driver",
        "xdp",
        "--iface",
        &n.ifaces.0,
        "--ip",
        &ip,
        "--http",
        &http,
        "--redis",
        &redis,
        "--drain-timeout",
        "2s",
    ];
    netns::spawn_ferry(&n.a, BIN, &args, 2)
}

fn tmp_file(name: &str, data: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ferry-netns-xdp-{}-{name}", std::process::id()));
    std::fs::write(&p, data).unwrap();
    p
}

fn skip(why: &str) {
    netns::skip_or_fail(&format!("netns_xdp: {why}"));
}

#[test]
fn xdp_serves_http_and_redis_across_namespaces() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root (network namespaces, AF_XDP)");
    }
    // SAFETY: socket(2) takes no pointers; the descriptor is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return skip(&format!(
            "this kernel creates no AF_XDP socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the descriptor we created.
    unsafe { libc::close(fd) };
    let n = match create_namespaces() {
        Ok(n) => n,
        Err(e) => return skip(&format!("cannot build the namespaces: {e}")),
    };
    // `ferry probe --iface` really attaches and detaches (the server attaches after it).
    let probe = exec(&n.a, &[BIN, "probe", "--iface", &n.ifaces.0]).expect("ferry probe --iface");
    let probe = String::from_utf8_lossy(&probe.stdout).to_string();
    let row = probe
        .lines()
        .find(|l| l.starts_with("AF_XDP"))
        .unwrap_or_default();
    if !row.contains(" yes ") {
        return skip(&format!("AF_XDP cannot attach here: {row}"));
    }
    assert!(row.contains("attached"), "{probe}");
    assert!(probe.contains("auto: xdp"), "{probe}");

    let (mut server, lines) = match start_server(&n) {
        Ok(s) => s,
        Err(e) if e.contains("attaching") || e.contains("EOPNOTSUPP") => {
            return skip(&format!("XDP attach not supported here: {e}"))
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        lines,
        [
            format!("ferry: listening http {SERVER_IP}:8080 driver=xdp"),
            format!("ferry: listening redis {SERVER_IP}:6379 driver=xdp"),
        ]
    );
    let c = n.b.clone();
    let url = |p: &str| format!("http://{SERVER_IP}:8080{p}");

    // ICMP echo, answered by smoltcp.
    // (the first request may be lost while the stack resolves our MAC: ping succeeds on any reply)
    exec(&c, &["ping", "-c", "3", "-i", "0.2", "-W", "5", SERVER_IP])
        .expect("ping the userspace stack");

    // GET /, twice on one connection (keep-alive: the second transfer opens no connection).
    let out = exec(
        &c,
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
    )
    .expect("curl GET /");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text, "hello world\n|200|1\nhello world\n|200|0\n",
        "GET / twice with keep-alive"
    );

    // POST /echo with a few hundred KB, streamed back byte for byte.
    let body: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = tmp_file("body", &body);
    let out = exec(
        &c,
        &[
            "curl",
            "-sS",
            "--max-time",
            "30",
            "--data-binary",
            &format!("@{}", file.display()),
            "-H",
            "Content-Type: application/octet-stream",
            &url("/echo"),
        ],
    )
    .expect("curl POST /echo");
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.stdout.len(), body.len(), "echoed length");
    assert!(out.stdout == body, "echoed bytes differ");

    // Several echoes in a row on one connection.
    let small = tmp_file("small", &body[..50_000]);
    let at = format!("@{}", small.display());
    let out = exec(
        &c,
        &[
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}\n",
            "--data-binary",
            &at,
            &url("/echo"),
            "--next",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}\n",
            "--data-binary",
            &at,
            &url("/echo"),
        ],
    )
    .expect("curl POST /echo twice");
    let _ = std::fs::remove_file(&small);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 50000\n200 50000\n"
    );

    // A 404 and /health report the driver.
    let out =
        exec(&c, &["curl", "-sS", "--max-time", "20", &url("/health")]).expect("curl /health");
    let health = String::from_utf8_lossy(&out.stdout);
    assert!(health.contains("\"driver\":\"xdp\""), "{health}");

    // RESP over the same stack.
    let cli = |args: &[&str]| -> String {
        let mut v = vec!["redis-cli", "-h", SERVER_IP, "-p", "6379"];
        v.extend_from_slice(args);
        let out = exec(&c, &v).expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "ferry:xdp", "over-af-xdp"]), "OK");
    assert_eq!(cli(&["GET", "ferry:xdp"]), "over-af-xdp");
    assert_eq!(cli(&["INCR", "ferry:n"]), "1");

    // Pub/sub: a subscriber's connection gets another connection's PUBLISH (worker mail).
    // `ip netns exec` execs in place, so the child is redis-cli itself and `kill` ends it.
    let mut sub = Command::new("ip")
        .args(["netns", "exec", &c, "redis-cli", "-h", SERVER_IP])
        .args(["-p", "6379", "SUBSCRIBE", "ferry:ch"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli SUBSCRIBE");
    // The subscriber's output, read as it comes (a reader thread: bounded waits below).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let mut stdout = sub.stdout.take().expect("subscriber stdout");
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut delivered = false;
    for _ in 0..100 {
        if cli(&["PUBLISH", "ferry:ch", "hello-xdp"]) == "1" {
            delivered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(delivered, "PUBLISH never reached the subscriber");
    // PUBLISH counted the subscriber when the server queued the message: it may still be
    // on its way to redis-cli (bounded wait, not a timing assertion).
    for _ in 0..200 {
        if seen.lock().unwrap().contains("hello-xdp") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = sub.kill();
    let _ = sub.wait();
    let _ = reader.join();
    let out = seen.lock().unwrap().clone();
    assert!(out.contains("hello-xdp"), "{out}");

    // HTTP/2 over cleartext (prior knowledge) on the same port.
    let out = exec(
        &c,
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--http2-prior-knowledge",
            "-w",
            "|%{http_version}",
            &url("/"),
        ],
    )
    .expect("curl --http2-prior-knowledge");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n|2");

    // Graceful stop on SIGTERM.
    // SAFETY: signalling our own child (`ip netns exec` execs ferry in place).
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ferry did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "ferry exited with {status}");
}

#[test]
fn xdp_flags_are_checked() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("FERRY_DRIVER")
            .stdin(Stdio::null())
            .output()
            .expect("run ferry");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["serve", "--driver", "xdp", "--http", "10.0.0.1:80"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--iface"), "{err}");
    let (code, err) = run(&["serve", "--driver", "epoll", "--iface", "veth0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("only with --driver xdp"), "{err}");
    let (code, err) = run(&[
        "serve", "--driver", "xdp", "--iface", "x", "--ip", "10.0.0.1",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("CIDR"), "{err}");
    let (code, err) = run(&[
        "serve",
        "--iface",
        "ferry-no-such-if",
        "--ip",
        "10.0.0.1/24",
        "--http",
        "10.0.0.2:80",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stack's address 10.0.0.1"), "{err}");
    let (code, err) = run(&[
        "serve",
        "--iface",
        "ferry-no-such-if",
        "--ip",
        "10.0.0.1/24",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ferry-no-such-if"), "{err}");
}
