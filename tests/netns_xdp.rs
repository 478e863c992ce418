//! `ferry serve --driver xdp` across a veth pair between two network namespaces this test
//! creates (and deletes, also on failure): the server's end carries no kernel address (the
//! smoltcp stack on AF_XDP answers ARP, ICMP and TCP itself); curl, redis-cli and ping in the
//! other namespace talk to it through the kernel's TCP.
//!
//! Needs root, network namespaces and AF_XDP; without them the test prints why and returns.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");
const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";

/// Two namespaces and a veth pair; deleted on drop (which also removes the veth).
struct Netns {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Delete namespaces an earlier, killed run of this test left behind (its pid is gone).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        for prefix in ["fxdp-s-", "fxdp-c-"] {
            let Some(pid) = name.strip_prefix(prefix) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

fn sh(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

impl Netns {
    fn exec(&self, ns: &str, args: &[&str]) -> Result<Output, String> {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Build the namespaces; `Err` = the machine cannot (a reason to skip).
    fn create() -> Result<Netns, String> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let n = Netns {
            server_ns: format!("fxdp-s-{pid}"),
            client_ns: format!("fxdp-c-{pid}"),
            server_if: format!("fxs{pid}"),
            client_if: format!("fxc{pid}"),
        };
        sh(&["ip", "netns", "add", &n.server_ns])?;
        sh(&["ip", "netns", "add", &n.client_ns])?;
        sh(&[
            "ip",
            "link",
            "add",
            &n.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &n.client_if,
        ])?;
        sh(&["ip", "link", "set", &n.server_if, "netns", &n.server_ns])?;
        sh(&["ip", "link", "set", &n.client_if, "netns", &n.client_ns])?;
        let (s, c) = (n.server_ns.clone(), n.client_ns.clone());
        n.exec(&s, &["ip", "link", "set", "lo", "up"])?;
        n.exec(&c, &["ip", "link", "set", "lo", "up"])?;
        // The server's end: up, no address, no IPv6 chatter, checksums computed in software.
        let _ = n.exec(
            &s,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", n.server_if),
            ],
        );
        n.exec(&s, &["ip", "link", "set", &n.server_if, "up"])?;
        n.exec(&s, &["ethtool", "-K", &n.server_if, "tx", "off"])?;
        // The client's end: a kernel address, no checksum offload (smoltcp checks them).
        n.exec(
            &c,
            &[
                "ip",
                "addr",
                "add",
                &format!("{CLIENT_IP}/24"),
                "dev",
                &n.client_if,
            ],
        )?;
        n.exec(&c, &["ip", "link", "set", &n.client_if, "up"])?;
        n.exec(&c, &["ethtool", "-K", &n.client_if, "tx", "off"])?;
        let mac = n.exec(
            &s,
            &["cat", &format!("/sys/class/net/{}/address", n.server_if)],
        )?;
        let mac = String::from_utf8_lossy(&mac.stdout).trim().to_string();
        n.exec(
            &c,
            &[
                "ip",
                "neigh",
                "replace",
                SERVER_IP,
                "lladdr",
                &mac,
                "dev",
                &n.client_if,
                "nud",
                "permanent",
            ],
        )?;
        Ok(n)
    }
}

struct Server {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(n: &Netns) -> Result<Server, String> {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &n.server_ns,
            BIN,
            "serve",
            "--driver",
            "xdp",
        ])
        .args(["--iface", &n.server_if, "--ip", &format!("{SERVER_IP}/24")])
        .args(["--http", &format!("{SERVER_IP}:8080")])
        .args(["--redis", &format!("{SERVER_IP}:6379")])
        .args(["--drain-timeout", "2s"])
        .env_remove("FERRY_DRIVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn ferry: {e}"))?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            return Err(format!(
                "ferry serve --driver xdp did not start: {}",
                err.trim()
            ));
        }
        lines.push(line.trim().to_string());
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    if let Some(mut e) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut e, &mut std::io::stderr());
        });
    }
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    Ok(Server { child, lines })
}

fn tmp_file(name: &str, data: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ferry-netns-xdp-{}-{name}", std::process::id()));
    std::fs::write(&p, data).unwrap();
    p
}

fn skip(why: &str) {
    eprintln!("netns_xdp: skipped: {why}");
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
    let n = match Netns::create() {
        Ok(n) => n,
        Err(e) => return skip(&format!("cannot build the namespaces: {e}")),
    };
    // `ferry probe --iface` really attaches and detaches (the server attaches after it).
    let probe = n
        .exec(&n.server_ns, &[BIN, "probe", "--iface", &n.server_if])
        .expect("ferry probe --iface");
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

    let server = match start_server(&n) {
        Ok(s) => s,
        Err(e) if e.contains("attaching") || e.contains("EOPNOTSUPP") => {
            return skip(&format!("XDP attach not supported here: {e}"))
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        server.lines,
        [
            format!("ferry: listening http {SERVER_IP}:8080 driver=xdp"),
            format!("ferry: listening redis {SERVER_IP}:6379 driver=xdp"),
        ]
    );
    let c = n.client_ns.clone();
    let url = |p: &str| format!("http://{SERVER_IP}:8080{p}");

    // ICMP echo, answered by smoltcp.
    // (the first request may be lost while the stack resolves our MAC: ping succeeds on any reply)
    n.exec(&c, &["ping", "-c", "3", "-i", "0.2", "-W", "5", SERVER_IP])
        .expect("ping the userspace stack");

    // GET /, twice on one connection (keep-alive: the second transfer opens no connection).
    let out = n
        .exec(
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
    let out = n
        .exec(
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
    let out = n
        .exec(
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
    let out = n
        .exec(&c, &["curl", "-sS", "--max-time", "20", &url("/health")])
        .expect("curl /health");
    let health = String::from_utf8_lossy(&out.stdout);
    assert!(health.contains("\"driver\":\"xdp\""), "{health}");

    // RESP over the same stack.
    let cli = |args: &[&str]| -> String {
        let mut v = vec!["redis-cli", "-h", SERVER_IP, "-p", "6379"];
        v.extend_from_slice(args);
        let out = n.exec(&c, &v).expect("redis-cli");
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
    let mut delivered = false;
    for _ in 0..100 {
        if cli(&["PUBLISH", "ferry:ch", "hello-xdp"]) == "1" {
            delivered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sub.kill();
    let out = sub.wait_with_output().expect("subscriber output");
    assert!(delivered, "PUBLISH never reached the subscriber");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-xdp"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // HTTP/2 over cleartext (prior knowledge) on the same port.
    let out = n
        .exec(
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
    let mut server = server;
    // SAFETY: signalling our own child (`ip netns exec` execs ferry in place).
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
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
