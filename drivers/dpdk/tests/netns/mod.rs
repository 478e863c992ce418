//! Test helper: two network namespaces joined by a veth pair, removed on drop.
//!
//! `a` is the side a userspace stack owns (no kernel address: the stack answers ARP itself);
//! `b` is a plain kernel side with [`NetPair::PEER_IP`] and TX checksum offload off (smoltcp
//! verifies checksums that veth would otherwise leave unfilled).
#![allow(dead_code)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Two namespaces and the veth pair between them.
pub struct NetPair {
    /// Namespace of the stack under test.
    pub ns_a: String,
    /// Namespace of the kernel peer.
    pub ns_b: String,
    /// Veth end in `ns_a` (no address).
    pub veth_a: String,
    /// Veth end in `ns_b` (with `PEER_IP`).
    pub veth_b: String,
}

fn run(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetPair {
    /// The stack's address.
    pub const OUR_IP: &'static str = "10.77.0.2";
    /// The kernel peer's address.
    pub const PEER_IP: &'static str = "10.77.0.1";
    /// Prefix length of both.
    pub const PREFIX: u8 = 24;

    /// Create the namespaces and the pair. `Err(reason)` when the machine cannot (not root,
    /// or no netns/veth support in the kernel): the caller prints it and skips.
    pub fn create(tag: &str) -> Result<NetPair, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)".into());
        }
        let pid = std::process::id();
        let p = NetPair {
            ns_a: format!("fdpdk-{tag}-{pid}-a"),
            ns_b: format!("fdpdk-{tag}-{pid}-b"),
            veth_a: format!("dp{tag}{pid}a"),
            veth_b: format!("dp{tag}{pid}b"),
        };
        assert!(
            p.veth_a.len() <= 15,
            "interface name too long: {}",
            p.veth_a
        );
        // From here on Drop cleans up whatever was created.
        run(&["ip", "netns", "add", &p.ns_a])
            .map_err(|e| format!("network namespaces unavailable: {e}"))?;
        run(&["ip", "netns", "add", &p.ns_b])
            .map_err(|e| format!("network namespaces unavailable: {e}"))?;
        run(&[
            "ip", "-n", &p.ns_a, "link", "add", &p.veth_a, "type", "veth", "peer", "name",
            &p.veth_b, "netns", &p.ns_b,
        ])
        .map_err(|e| format!("veth unavailable: {e}"))?;
        let peer = format!("{}/{}", Self::PEER_IP, Self::PREFIX);
        let setup: [&[&str]; 6] = [
            &["ip", "-n", &p.ns_a, "link", "set", "lo", "up"],
            &["ip", "-n", &p.ns_b, "link", "set", "lo", "up"],
            &["ip", "-n", &p.ns_a, "link", "set", &p.veth_a, "up"],
            &["ip", "-n", &p.ns_b, "addr", "add", &peer, "dev", &p.veth_b],
            &["ip", "-n", &p.ns_b, "link", "set", &p.veth_b, "up"],
            &[
                "ip", "netns", "exec", &p.ns_b, "ethtool", "-K", &p.veth_b, "tx", "off",
            ],
        ];
        for args in setup {
            // These are plain iproute2/ethtool steps on interfaces we just made: a failure is
            // a real error, not a missing kernel feature.
            run(args).unwrap_or_else(|e| panic!("{e}"));
        }
        // The stack's side must not answer for itself: no IPv6 autoconf chatter either.
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            &p.ns_a,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", p.veth_a),
        ]);
        Ok(p)
    }

    /// Move the calling thread into `ns_a` (threads it spawns afterwards start there too).
    pub fn enter_a(&self) {
        let path = format!("/run/netns/{}", self.ns_a);
        let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: f is an open netns file descriptor; setns only changes this thread's
        // network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// A command run inside `ns_b`.
    pub fn in_b(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_b, program]);
        c.stdin(Stdio::null());
        c
    }

    /// The MAC address of `veth_a`.
    pub fn mac_a(&self) -> [u8; 6] {
        let out = run(&["ip", "-n", &self.ns_a, "-br", "link", "show", &self.veth_a])
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mac = text
            .split_whitespace()
            .find(|w| w.len() == 17 && w.matches(':').count() == 5)
            .unwrap_or_else(|| panic!("no MAC in {text:?}"));
        let mut m = [0u8; 6];
        for (b, h) in m.iter_mut().zip(mac.split(':')) {
            *b = u8::from_str_radix(h, 16).unwrap();
        }
        m
    }

    /// The MAC `ns_b`'s neighbour table holds for `ip` (after ARP), if any.
    pub fn neighbour_in_b(&self, ip: &str) -> Option<String> {
        let out = run(&["ip", "-n", &self.ns_b, "neigh", "show", ip]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_owned)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and with it the pair.
        let _ = run(&["ip", "netns", "del", &self.ns_a]);
        let _ = run(&["ip", "netns", "del", &self.ns_b]);
    }
}

/// A child process killed on drop (bounded tests never leak peers).
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Wait up to `limit` for the child to exit; `None` if it is still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Format a MAC like iproute2 does.
pub fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
