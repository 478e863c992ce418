//! The AF_XDP device and the smoltcp stack in a network namespace this test creates (the I/O
//! thread enters it with `setns`), answering curl from a second namespace over a veth pair.
//! Also: `probe` on the interface attaches and detaches cleanly (the server attaches after it).
//!
//! Needs root, network namespaces and AF_XDP; without them the test prints why and returns.

use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use ferry_driver::{HttpSession, Request, Response, ServerOptions, Service};
use ferry_netstack::SessionPort;
use ferry_xdp::{StackSpec, XdpConfig};

const SERVER_IP: &str = "10.78.0.1";
const CLIENT_IP: &str = "10.78.0.2";

struct Netns {
    server_ns: String,
    client_ns: String,
    server_if: String,
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
        for prefix in ["fxd-s-", "fxd-c-"] {
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

fn in_ns(ns: &str, args: &[&str]) -> Result<Output, String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn create() -> Result<Netns, String> {
    remove_stale_namespaces();
    let pid = std::process::id();
    let n = Netns {
        server_ns: format!("fxd-s-{pid}"),
        client_ns: format!("fxd-c-{pid}"),
        server_if: format!("fds{pid}"),
    };
    let client_if = format!("fdc{pid}");
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
        &client_if,
    ])?;
    sh(&["ip", "link", "set", &n.server_if, "netns", &n.server_ns])?;
    sh(&["ip", "link", "set", &client_if, "netns", &n.client_ns])?;
    let (s, c) = (n.server_ns.as_str(), n.client_ns.as_str());
    in_ns(s, &["ip", "link", "set", &n.server_if, "up"])?;
    in_ns(s, &["ethtool", "-K", &n.server_if, "tx", "off"])?;
    in_ns(c, &["ip", "link", "set", "lo", "up"])?;
    in_ns(
        c,
        &[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            &client_if,
        ],
    )?;
    in_ns(c, &["ip", "link", "set", &client_if, "up"])?;
    in_ns(c, &["ethtool", "-K", &client_if, "tx", "off"])?;
    Ok(n)
}

struct Echo;

impl Service for Echo {
    fn call(&self, req: Request) -> Response {
        match req.path() {
            "/" => Response::text(200, "hello over af_xdp\n"),
            "/echo" => Response::text(200, req.body().clone()),
            _ => Response::text(404, "not found\n"),
        }
    }
}

fn skip(why: &str) {
    eprintln!("netns_device: skipped: {why}");
}

#[test]
fn device_and_stack_answer_curl_across_namespaces() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root");
    }
    if let Err(e) = ferry_xdp::probe(None) {
        return skip(&e);
    }
    let n = match create() {
        Ok(n) => n,
        Err(e) => return skip(&format!("cannot build the namespaces: {e}")),
    };

    let opts = ServerOptions {
        pin: false,
        ..ServerOptions::default()
    };
    let launch = ferry_netstack::prepare(
        format!("{SERVER_IP}:8080").parse().unwrap(),
        opts,
        Arc::new(Echo),
    )
    .unwrap();
    let shutdown = launch.shutdown.clone();
    let ctx = launch.workers.into_iter().next().unwrap();
    let port = SessionPort::<HttpSession>::boxed(8080, ctx, Arc::new(()));

    // Enter the server namespace on a helper thread (setns affects only the calling thread, and
    // threads it spawns inherit it), probe, then start the stack there.
    let ns_path = format!("/run/netns/{}", n.server_ns);
    let iface = n.server_if.clone();
    let started = std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
        // SAFETY: setns on a namespace descriptor we opened; affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let probe = ferry_xdp::probe(Some(&iface))?;
        let spec = StackSpec::new(format!("{SERVER_IP}/24").parse().unwrap());
        let t = ferry_xdp::spawn(XdpConfig::new(&iface), spec, vec![port], None)
            .map_err(|e| e.to_string())?;
        Ok((probe, t))
    })
    .join()
    .unwrap();
    let (probe, thread) = match started {
        Ok(x) => x,
        Err(e) if e.contains("attach") => return skip(&format!("XDP attach failed: {e}")),
        Err(e) => panic!("{e}"),
    };
    assert!(probe.contains("attached"), "{probe}");

    let url = |p: &str| format!("http://{SERVER_IP}:8080{p}");
    let c = n.client_ns.as_str();
    // The stack answers ARP itself (no static entry on this side).
    let out = in_ns(c, &["curl", "-sS", "--max-time", "20", &url("/")]).expect("curl /");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over af_xdp\n");

    // 40 requests, 10 connections at a time.
    let urls: Vec<String> = (0..40).map(|i| url(&format!("/missing/{i}"))).collect();
    let mut args = vec![
        "curl",
        "-sS",
        "--max-time",
        "30",
        "--parallel",
        "--parallel-max",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
    ];
    for u in &urls {
        args.push(u);
    }
    let out = in_ns(c, &args).expect("parallel curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| *l == "404").count(), 40, "{text}");

    // A body larger than the socket buffers, echoed back intact.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let path = std::env::temp_dir().join(format!("ferry-xdp-dev-{}", std::process::id()));
    std::fs::write(&path, &body).unwrap();
    let out = in_ns(
        c,
        &[
            "curl",
            "-sS",
            "--max-time",
            "30",
            "--data-binary",
            &format!("@{}", path.display()),
            &url("/echo"),
        ],
    )
    .expect("curl /echo");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.stdout == body,
        "echo differs ({} bytes back)",
        out.stdout.len()
    );

    shutdown.trigger();
    thread.join().expect("the xdp thread ended cleanly");
}
