//! Network namespaces for the tests that need a real wire: a pair of namespaces joined by a
//! veth pair, with unique (pid-based) names, deleted on drop (also when the test fails), and
//! leftovers of killed runs removed on the next create. Addresses exist only inside the two
//! namespaces. Code runs inside a namespace either as a process ([`NetnsPair::command`],
//! `ip netns exec`) or on a thread that entered it with `setns` ([`NetnsPair::in_netns`],
//! [`NetnsPair::spawn_in`], [`enter`]; threads it spawns inherit the namespace, so an
//! in-process server started there stays there).
//!
//! One module for every such test: the chaos tests, `netns_xdp`, `netns_dpdk`, `netns_raw`
//! and ferry-dpdk's own tests (which include this file with `#[path]`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[path = "skip.rs"]
#[allow(clippy::duplicate_mod)] // also loaded by common/{mod,netns}.rs in one test binary
mod skip;
#[allow(unused_imports)]
pub use skip::skip_or_fail;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Prefix of every namespace this module creates (`ferry-<tag>-<pid>-<n>-a|b`).
const NS_PREFIX: &str = "ferry-";

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

/// Run a program to completion; `Err` carries the command line and its stderr.
pub fn run(args: &[&str]) -> Result<Output, String> {
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

/// Run `args` inside namespace `ns` (`ip netns exec NS …`).
pub fn exec(ns: &str, args: &[&str]) -> Result<Output, String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// Move the calling thread into namespace `ns` (threads it spawns afterwards start there too).
pub fn enter(ns: &str) -> Result<(), String> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: setns on a namespace fd we hold open, affecting only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Delete namespaces that runs killed before their `Drop` left behind (their pid is gone).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
}

/// How to build a [`NetnsPair`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Short tag in the names (a few letters: interface names are at most 15 bytes).
    pub tag: &'static str,
    /// Addresses of the two ends (a /24); assigned only where `kernel_addr` says so.
    pub ips: (Ipv4Addr, Ipv4Addr),
    /// Whether the kernel gets the address on each end. An end without one is for a
    /// userspace stack (AF_XDP, DPDK, raw frames): IPv6 is disabled there too, so the
    /// kernel sends nothing on it by itself.
    pub kernel_addr: (bool, bool),
    /// Fixed MAC addresses for the two ends.
    pub macs: Option<([u8; 6], [u8; 6])>,
    /// Turn TX checksum offload off on both ends (userspace stacks verify checksums that
    /// veth would otherwise leave unfilled).
    pub tx_checksum_off: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tag: "c",
            ips: (Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)),
            kernel_addr: (true, true),
            macs: None,
            tx_checksum_off: false,
        }
    }
}

/// Two namespaces `a` and `b` joined by a veth pair, loopback up in both. Deleted on drop.
pub struct NetnsPair {
    /// First namespace (e.g. the proxy and its clients, or the userspace stack).
    pub a: String,
    /// Second namespace (e.g. the upstreams, or the kernel peer).
    pub b: String,
    /// Address of the veth end in `a` (assigned to the kernel only if asked).
    pub a_ip: Ipv4Addr,
    /// Address of the veth end in `b`.
    pub b_ip: Ipv4Addr,
    /// Interface names (in `a`, in `b`).
    pub ifaces: (String, String),
}

impl NetnsPair {
    /// A pair with kernel addresses 10.77.0.1 (`a`) and 10.77.0.2 (`b`).
    pub fn create() -> Result<NetnsPair, String> {
        Self::create_with(Options::default())
    }

    /// A pair built as `opts` says, with names unique to this process and call.
    pub fn create_with(opts: Options) -> Result<NetnsPair, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (network namespaces)".into());
        }
        remove_stale_namespaces();
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = opts.tag;
        let iface = |side: char| {
            let name = format!("f{tag}{}v{n}{side}", pid % 1_000_000);
            assert!(name.len() <= 15, "interface name too long: {name}");
            name
        };
        let pair = NetnsPair {
            a: format!("{NS_PREFIX}{tag}-{pid}-{n}-a"),
            b: format!("{NS_PREFIX}{tag}-{pid}-{n}-b"),
            a_ip: opts.ips.0,
            b_ip: opts.ips.1,
            ifaces: (iface('a'), iface('b')),
        };
        // From here on, Drop cleans up whatever was created.
        run(&["ip", "netns", "add", &pair.a])
            .map_err(|e| format!("network namespaces unavailable: {e}"))?;
        run(&["ip", "netns", "add", &pair.b])?;
        let (ia, ib) = (&pair.ifaces.0, &pair.ifaces.1);
        run(&[
            "ip", "-n", &pair.a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns",
            &pair.b,
        ])
        .map_err(|e| format!("veth unavailable: {e}"))?;
        let sides = [
            (
                &pair.a,
                ia,
                pair.a_ip,
                opts.kernel_addr.0,
                opts.macs.map(|m| m.0),
            ),
            (
                &pair.b,
                ib,
                pair.b_ip,
                opts.kernel_addr.1,
                opts.macs.map(|m| m.1),
            ),
        ];
        for (ns, ifc, ip, kernel_addr, mac) in sides {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            if let Some(mac) = mac {
                run(&[
                    "ip",
                    "-n",
                    ns,
                    "link",
                    "set",
                    ifc,
                    "address",
                    &mac_string(mac),
                ])?;
            }
            if kernel_addr {
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
            } else {
                let _ = exec(
                    ns,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{ifc}.disable_ipv6=1"),
                    ],
                );
            }
            run(&["ip", "-n", ns, "link", "set", ifc, "up"])?;
            if opts.tx_checksum_off {
                exec(ns, &["ethtool", "-K", ifc, "tx", "off"])?;
            }
        }
        Ok(pair)
    }

    /// A command run inside namespace `ns` (`ip netns exec NS PROGRAM …`; the child's pid is
    /// the program's, since `ip netns exec` execs it).
    pub fn command(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c.stdin(Stdio::null());
        c
    }

    /// The MAC address of the veth end in `a` (`side_b == false`) or `b`.
    pub fn mac(&self, side_b: bool) -> Result<[u8; 6], String> {
        let (ns, ifc) = if side_b {
            (&self.b, &self.ifaces.1)
        } else {
            (&self.a, &self.ifaces.0)
        };
        let out = exec(ns, &["cat", &format!("/sys/class/net/{ifc}/address")])?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut m = [0u8; 6];
        let mut parts = text.split(':');
        for b in m.iter_mut() {
            let h = parts.next().ok_or_else(|| format!("no MAC in {text:?}"))?;
            *b = u8::from_str_radix(h, 16).map_err(|e| format!("MAC {text:?}: {e}"))?;
        }
        Ok(m)
    }

    /// The MAC that `ns`'s neighbour table holds for `ip` (after ARP), if any.
    pub fn neighbour(ns: &str, ip: &str) -> Option<String> {
        let out = run(&["ip", "-n", ns, "neigh", "show", ip]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_owned)
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
        exec(ns, &["nft", "delete", "table", "inet", "chaos"]).map(|_| ())
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
    /// Run `f` to completion on a new thread that entered namespace `ns` (threads and
    /// sockets it creates belong to that namespace).
    pub fn in_netns<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        Self::spawn_in(ns, f)
            .join()
            .map_err(|_| "thread in namespace panicked".to_string())?
    }

    /// Start `f` on a new thread inside namespace `ns`; join it for the result.
    pub fn spawn_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, String>> {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            enter(&ns)?;
            Ok(f())
        })
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the pair.
        let _ = run(&["ip", "netns", "del", &self.a]);
        let _ = run(&["ip", "netns", "del", &self.b]);
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

/// Start `ferry ARGS…` (`bin` is the binary) inside namespace `ns` and wait for its first
/// `lines` lines on stdout (the `listening` lines of `serve`). Both pipes are drained
/// afterwards (stderr copied to ours), so the server never blocks on a full pipe.
pub fn spawn_ferry(
    ns: &str,
    bin: &str,
    args: &[&str],
    lines: usize,
) -> Result<(ChildGuard, Vec<String>), String> {
    let mut child = ChildGuard(
        NetnsPair::command(ns, bin)
            .args(args)
            .env_remove("FERRY_DRIVER")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn ferry: {e}"))?,
    );
    let mut out = BufReader::new(child.0.stdout.take().expect("piped stdout"));
    let mut got = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!(
                "`ferry {}` did not start: {}",
                args.join(" "),
                err.trim()
            ));
        }
        got.push(line.trim().to_string());
    }
    if let Some(mut e) = child.0.stderr.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut e, &mut std::io::stderr());
        });
    }
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    Ok((child, got))
}

/// Format a MAC like iproute2 does.
pub fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
