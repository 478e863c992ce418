//! Network namespaces for chaos tests: a pair of namespaces joined by a veth pair, with unique
//! (pid-based) names, deleted on drop (also when the test fails). Addresses exist only inside
//! the two namespaces. Code runs inside a namespace either as a process (`ip netns exec`) or
//! on a thread that entered it with `setns` (threads it spawns inherit the namespace, so an
//! in-process server started there stays there).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether this process may create namespaces (root) and has the tools (`ip`, `nft`).
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces)".into());
    }
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!("needs `{tool}`"));
        }
    }
    Ok(())
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces `a` and `b` joined by a veth pair (`a_ip` in `a`, `b_ip` in `b`, a /24),
/// loopback up in both. Deleted on drop.
pub struct NetnsPair {
    /// First namespace (e.g. the proxy and its clients).
    pub a: String,
    /// Second namespace (e.g. the upstreams).
    pub b: String,
    /// Address of the veth end in `a`.
    pub a_ip: Ipv4Addr,
    /// Address of the veth end in `b`.
    pub b_ip: Ipv4Addr,
    /// Interface names (in `a`, in `b`).
    pub ifaces: (String, String),
}

impl NetnsPair {
    /// Create a pair with names unique to this process and call.
    pub fn create() -> Result<NetnsPair, String> {
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pair = NetnsPair {
            a: format!("fchaos{pid}x{n}a"),
            b: format!("fchaos{pid}x{n}b"),
            a_ip: Ipv4Addr::new(10, 77, 0, 1),
            b_ip: Ipv4Addr::new(10, 77, 0, 2),
            // Interface names: at most 15 bytes.
            ifaces: (
                format!("fc{}v{n}a", pid % 1_000_000),
                format!("fc{}v{n}b", pid % 1_000_000),
            ),
        };
        // From here on, Drop cleans up whatever was created.
        run(&["ip", "netns", "add", &pair.a])?;
        run(&["ip", "netns", "add", &pair.b])?;
        let (ia, ib) = (&pair.ifaces.0, &pair.ifaces.1);
        run(&[
            "ip", "-n", &pair.a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns",
            &pair.b,
        ])?;
        for (ns, ifc, ip) in [(&pair.a, ia, pair.a_ip), (&pair.b, ib, pair.b_ip)] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                ifc,
            ])?;
            run(&["ip", "-n", ns, "link", "set", ifc, "up"])?;
        }
        Ok(pair)
    }

    /// A command run inside namespace `ns` (`ip netns exec NS PROGRAM …`; the child's pid is
    /// the program's, since `ip netns exec` execs it).
    pub fn command(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Load an nftables ruleset inside namespace `ns` (gone with the namespace).
    pub fn nft(ns: &str, ruleset: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Self::command(ns, "nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Drop `percent`% of the packets entering and leaving namespace `ns` at random
    /// (`numgen random mod 100 < percent drop`; `tc netem` is not in this kernel).
    pub fn random_loss(ns: &str, percent: u32) -> Result<(), String> {
        Self::nft(
            ns,
            &format!(
                "table inet chaos {{\n\
                 chain in {{ type filter hook input priority 0; policy accept; \
                 iifname != \"lo\" numgen random mod 100 < {percent} counter drop; }}\n\
                 chain out {{ type filter hook output priority 0; policy accept; \
                 oifname != \"lo\" numgen random mod 100 < {percent} counter drop; }}\n\
                 }}\n"
            ),
        )
    }

    /// Remove the loss rules of [`random_loss`](Self::random_loss).
    pub fn clear_loss(ns: &str) -> Result<(), String> {
        run(&[
            "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "chaos",
        ])
    }

    /// Packets dropped so far by the loss rules in `ns` (sum of the rule counters).
    pub fn dropped_packets(ns: &str) -> u64 {
        let Ok(out) = Self::command(ns, "nft")
            .args(["list", "table", "inet", "chaos"])
            .output()
        else {
            return 0;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut total = 0;
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "packets" {
                total += words
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    /// Run `f` on a new thread that entered namespace `ns` (threads and sockets it creates
    /// belong to that namespace).
    pub fn in_netns<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let path = format!("/var/run/netns/{ns}");
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd we own, affecting only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| "thread in namespace panicked".to_string())?
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the pair.
        let _ = run(&["ip", "netns", "del", &self.a]);
        let _ = run(&["ip", "netns", "del", &self.b]);
    }
}
