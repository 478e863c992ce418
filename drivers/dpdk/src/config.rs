//! Configuration types. They are plain data, compiled with or without the `dpdk` feature, so a
//! CLI can parse and validate its flags on machines without DPDK.

use crate::error::{Error, Result};
pub use ferry_netstack::{Cidr, SocketConfig};
use std::net::Ipv4Addr;
use std::time::Duration;

/// How to start DPDK's Environment Abstraction Layer (EAL) for this process.
///
/// The defaults suit a container or VM without hugepages or PCI devices: `--no-huge`
/// (anonymous memory) with `--no-shconf` (no shared config files, no multi-process), or
/// `--in-memory` when hugepages are used; `--no-pci`, `--no-telemetry`, one lcore. Devices are virtual (`--vdev`), e.g. `net_af_packet0,iface=veth0`,
/// `net_tap0,iface=dtap0`, `net_ring0`, `net_af_xdp0,iface=veth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EalConfig {
    /// Program name passed as `argv[0]` (appears in DPDK logs).
    pub program: String,
    /// The lcore (CPU) the EAL main thread is pinned to (`-l CORE`). `None`: the first CPU this
    /// process may run on.
    pub core: Option<usize>,
    /// Virtual devices to create at init (`--vdev` each).
    pub vdevs: Vec<String>,
    /// Memory in MiB (`-m`); with `--no-huge` DPDK otherwise takes 64 MiB.
    pub memory_mb: Option<u32>,
    /// Use anonymous memory instead of hugepages (`--no-huge`) [default: true].
    pub no_huge: bool,
    /// DPDK log level (`--log-level`), e.g. `notice`, `info`, `debug` [default: `warning`].
    pub log_level: Option<String>,
    /// Further EAL arguments, appended verbatim.
    pub extra_args: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        Self {
            program: "ferry".into(),
            core: None,
            vdevs: Vec::new(),
            memory_mb: None,
            no_huge: true,
            log_level: Some("warning".into()),
            extra_args: Vec::new(),
        }
    }
}

impl EalConfig {
    /// A default configuration with one `--vdev`.
    pub fn with_vdev(vdev: impl Into<String>) -> Self {
        Self {
            vdevs: vec![vdev.into()],
            ..Self::default()
        }
    }

    /// The `argv` handed to `rte_eal_init` (including `argv[0]`). `core` is the lcore to use
    /// when [`EalConfig::core`] is `None`.
    pub fn args(&self, default_core: usize) -> Result<Vec<String>> {
        let mut a = vec![self.program.clone()];
        a.push("-l".into());
        a.push(self.core.unwrap_or(default_core).to_string());
        if self.no_huge {
            // --no-huge implies legacy memory, which --in-memory refuses; --no-shconf is the
            // part of --in-memory that still applies (no shared config files).
            a.push("--no-huge".into());
            a.push("--no-shconf".into());
        } else {
            a.push("--in-memory".into());
        }
        a.push("--no-pci".into());
        a.push("--no-telemetry".into());
        if let Some(m) = self.memory_mb {
            if m == 0 {
                return Err(Error::InvalidConfig("memory_mb must be > 0".into()));
            }
            a.push("-m".into());
            a.push(m.to_string());
        }
        if let Some(l) = &self.log_level {
            a.push(format!("--log-level={l}"));
        }
        for v in &self.vdevs {
            if v.is_empty() {
                return Err(Error::InvalidConfig("empty --vdev".into()));
            }
            a.push("--vdev".into());
            a.push(v.clone());
        }
        a.extend(self.extra_args.iter().cloned());
        if let Some(bad) = a.iter().find(|s| s.contains('\0')) {
            return Err(Error::InvalidConfig(format!(
                "argument contains NUL: {bad:?}"
            )));
        }
        Ok(a)
    }
}

/// The DPDK device name of a `--vdev` argument: the part before the first comma
/// (`net_af_packet0,iface=veth0` → `net_af_packet0`). This is the ethdev port name.
pub fn vdev_name(vdev: &str) -> &str {
    vdev.split(',').next().unwrap_or("").trim()
}

/// An mbuf pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Unique name (DPDK memzones are named).
    pub name: String,
    /// Number of mbufs; DPDK recommends 2^n - 1.
    pub size: u32,
    /// Per-lcore cache size (0 disables the cache).
    pub cache: u32,
    /// Data room per mbuf, headroom included [default: 2048 + 128].
    pub data_room: u16,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            name: "ferry_mbufs".into(),
            size: 8191,
            cache: 256,
            data_room: 2048 + 128,
        }
    }
}

/// One Ethernet port with one RX and one TX queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// RX descriptors [default: 1024].
    pub rx_desc: u16,
    /// TX descriptors [default: 1024].
    pub tx_desc: u16,
    /// MTU to set, if the driver supports it (`None`: leave the device's).
    pub mtu: Option<u16>,
    /// Receive frames for every MAC address [default: true: a userspace stack owns the port].
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            rx_desc: 1024,
            tx_desc: 1024,
            mtu: None,
            promiscuous: true,
        }
    }
}

/// What `ferry serve --driver dpdk` needs: the device to own and the address the userspace
/// TCP/IP stack (ferry-netstack over smoltcp) answers on.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// EAL settings; `eal.vdevs[0]` is the device served (e.g. `net_af_packet0,iface=veth0`).
    pub eal: EalConfig,
    /// Our IPv4 address and subnet (the stack answers ARP and ping for it).
    pub ip: Cidr,
    /// Default gateway, if peers live outside the subnet.
    pub gateway: Option<Ipv4Addr>,
    /// Our MAC address [default: the port's].
    pub mac: Option<[u8; 6]>,
    /// The mbuf pool.
    pub pool: PoolConfig,
    /// The port's queues.
    pub port: PortConfig,
    /// TCP socket sizes, backlog, Nagle.
    pub sockets: SocketConfig,
    /// Longest sleep between polls when idle. DPDK has no RX interrupt on virtual devices, so
    /// the loop polls; zero spins a core like any DPDK application [default: 0].
    pub busy_poll: Duration,
}

impl ServeConfig {
    /// A configuration serving on `vdev` (e.g. `net_af_packet0,iface=veth0`) at `ip`.
    pub fn new(vdev: impl Into<String>, ip: Cidr) -> Self {
        Self {
            eal: EalConfig::with_vdev(vdev),
            ip,
            gateway: None,
            mac: None,
            pool: PoolConfig::default(),
            port: PortConfig::default(),
            sockets: SocketConfig::default(),
            busy_poll: Duration::ZERO,
        }
    }

    /// The served device's `--vdev` argument.
    pub fn vdev(&self) -> Result<&str> {
        self.eal
            .vdevs
            .first()
            .map(String::as_str)
            .ok_or_else(|| Error::InvalidConfig("no --vdev to serve on".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_args_default() {
        let c = EalConfig::with_vdev("net_af_packet0,iface=v0");
        let a = c.args(1).unwrap();
        assert_eq!(a[0], "ferry");
        assert_eq!(&a[1..3], ["-l", "1"]);
        for f in ["--no-shconf", "--no-huge", "--no-pci", "--no-telemetry"] {
            assert!(a.iter().any(|x| x == f), "{f} missing in {a:?}");
        }
        assert!(!a.iter().any(|x| x == "--in-memory"));
        let i = a.iter().position(|x| x == "--vdev").unwrap();
        assert_eq!(a[i + 1], "net_af_packet0,iface=v0");
        let huge = EalConfig {
            no_huge: false,
            ..EalConfig::default()
        };
        let a = huge.args(0).unwrap();
        assert!(a.iter().any(|x| x == "--in-memory"));
        assert!(!a.iter().any(|x| x == "--no-huge"));
    }

    #[test]
    fn eal_args_reject_nul_and_empty() {
        let mut c = EalConfig::with_vdev("net_ring0");
        c.extra_args.push("a\0b".into());
        assert!(matches!(c.args(0), Err(Error::InvalidConfig(_))));
        let c = EalConfig::with_vdev("");
        assert!(matches!(c.args(0), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn vdev_names() {
        assert_eq!(vdev_name("net_af_packet0,iface=veth0"), "net_af_packet0");
        assert_eq!(vdev_name("net_ring0"), "net_ring0");
        assert_eq!(vdev_name(""), "");
    }

    #[test]
    fn serve_config_needs_a_vdev() {
        let mut c = ServeConfig::new("net_af_packet0,iface=v0", "10.0.0.2/24".parse().unwrap());
        assert_eq!(c.vdev().unwrap(), "net_af_packet0,iface=v0");
        c.eal.vdevs.clear();
        assert!(matches!(c.vdev(), Err(Error::InvalidConfig(_))));
    }
}
