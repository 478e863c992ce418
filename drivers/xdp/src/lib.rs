//! # ferry-xdp: Ferry's protocols over AF_XDP, with smoltcp as the TCP/IP stack
//!
//! The driver owns one queue of one network interface: frames the interface receives are
//! redirected by a tiny XDP program (`bpf/ferry_xdp.c`, compiled object checked in, loaded and
//! attached with aya) into an AF_XDP socket (xdpilone: UMEM, fill/completion/RX/TX rings),
//! lent in place to a smoltcp interface ([`ferry_netstack`]), whose TCP connections carry the
//! same [`Session`](ferry_driver::Session)s as the kernel drivers (HTTP/1.1 + h2c, RESP). The
//! kernel never sees the frames of the owned queue (ARP included: the stack answers ARP and
//! ICMP echo itself), so give the interface **no kernel IP address**: the kernel could not
//! use it anyway, and a raw-socket design (AF_PACKET) would even see its TCP reset our
//! connections.
//!
//! One AF_XDP socket serves queue `XdpConfig::queue` (0 by default) on one pinned I/O thread;
//! the program passes frames of other queues to the kernel, so on a multi-queue NIC steer the
//! traffic to that queue (ethtool `-N`/`-X`) or give the interface a single queue. Setup
//! errors (missing interface, no AF_XDP, attach refused) come back from [`spawn`] before any
//! traffic flows; the attachment is a bpf_link, released by the kernel even if the process
//! is killed.
//!
//! On veth (and most virtual devices) only copy mode works: attach in SKB (generic) mode and
//! bind with `XDP_COPY`; zero-copy needs a NIC driver with AF_XDP support. The peer must not
//! leave checksums to offload (`ethtool -K <peer> tx off`): smoltcp verifies them in software.
//!
//! ## Embedding
//!
//! ```no_run
//! use std::sync::Arc;
//! use ferry_driver::{HttpSession, Request, Response, ServerOptions, Service};
//! use ferry_netstack::SessionPort;
//! use ferry_xdp::XdpConfig;
//!
//! struct Hello;
//! impl Service for Hello {
//!     fn call(&self, _req: Request) -> Response {
//!         Response::text(200, "hello over AF_XDP\n")
//!     }
//! }
//!
//! let ip = "10.0.0.1/24".parse().unwrap();
//! let launch = ferry_netstack::prepare(
//!     "10.0.0.1:80".parse().unwrap(),
//!     ServerOptions::default(),
//!     Arc::new(Hello),
//! )
//! .unwrap();
//! let shutdown = launch.shutdown.clone();
//! let ctx = launch.workers.into_iter().next().unwrap();
//! let cpu = ctx.cpu;
//! let port = SessionPort::<HttpSession>::boxed(80, ctx, Arc::new(()));
//! let cfg = XdpConfig::new("veth-srv");
//! let thread = ferry_xdp::spawn(cfg, ferry_xdp::StackSpec::new(ip), vec![port], cpu).unwrap();
//! // ... later:
//! shutdown.trigger();
//! thread.join().unwrap();
//! ```
#![deny(missing_docs)]

mod device;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::thread::JoinHandle;

pub use device::{XdpDevice, XdpRx, XdpStats, XdpTx};
use ferry_netstack::{Cidr, NetStack, Port, SocketConfig, StackConfig};

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachMode {
    /// Generic (SKB) mode and a copy-mode socket: works on every interface (veth included).
    #[default]
    Skb,
    /// Driver (native) mode; the socket lets the kernel pick copy or zero-copy.
    Native,
}

/// Which interface queue to own and how to size the UMEM and rings.
#[derive(Clone, Debug)]
pub struct XdpConfig {
    /// Interface name.
    pub iface: String,
    /// Queue index (veth has one RX queue unless created with `numrxqueues`).
    pub queue: u32,
    /// UMEM frames in total (half receive, half transmit at least). Default 4096.
    pub frames: u32,
    /// Bytes per UMEM frame: 2048 or 4096. Default 2048.
    pub frame_size: u32,
    /// Entries of each ring (rounded up to a power of two). Default 2048.
    pub ring_size: u32,
    /// Attach mode. Default [`AttachMode::Skb`].
    pub mode: AttachMode,
}

impl XdpConfig {
    /// Queue 0 of `iface`, default sizes, SKB mode.
    pub fn new(iface: impl Into<String>) -> XdpConfig {
        XdpConfig {
            iface: iface.into(),
            queue: 0,
            frames: 4096,
            frame_size: 2048,
            ring_size: 2048,
            mode: AttachMode::Skb,
        }
    }
}

/// The userspace stack's identity on the owned interface.
#[derive(Clone, Debug)]
pub struct StackSpec {
    /// Our IPv4 address and subnet.
    pub ip: Cidr,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Our MAC; default: the interface's own.
    pub mac: Option<[u8; 6]>,
    /// TCP socket settings.
    pub sockets: SocketConfig,
}

impl StackSpec {
    /// `ip`, no gateway, the interface's MAC, default sockets.
    pub fn new(ip: Cidr) -> StackSpec {
        StackSpec {
            ip,
            gateway: None,
            mac: None,
            sockets: SocketConfig::default(),
        }
    }
}

/// Errors setting up the driver.
#[derive(Debug)]
#[non_exhaustive]
pub enum XdpError {
    /// A bad setting.
    Config(String),
    /// The interface is missing or unusable.
    Interface {
        /// Interface name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Allocating or registering the UMEM failed.
    Umem(String),
    /// Creating, mapping or binding the AF_XDP socket failed.
    Socket(String),
    /// Loading or attaching the XDP program failed.
    Program(String),
    /// Spawning the I/O thread failed.
    Io(io::Error),
}

impl fmt::Display for XdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XdpError::Config(s) => write!(f, "AF_XDP configuration: {s}"),
            XdpError::Interface { name, reason } => write!(f, "interface {name}: {reason}"),
            XdpError::Umem(s) => write!(f, "AF_XDP UMEM: {s}"),
            XdpError::Socket(s) => write!(f, "AF_XDP socket: {s}"),
            XdpError::Program(s) => write!(f, "XDP program: {s}"),
            XdpError::Io(e) => write!(f, "AF_XDP I/O thread: {e}"),
        }
    }
}

impl std::error::Error for XdpError {}

/// `ioctl(SIOCGIF*)` on `iface`, answered in the calling thread's network namespace (unlike
/// `/sys/class/net`, which shows the namespace sysfs was mounted in).
fn ifreq_ioctl(iface: &str, request: libc::c_ulong) -> Result<libc::ifreq, XdpError> {
    let bad = |reason: String| XdpError::Interface {
        name: iface.into(),
        reason,
    };
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(bad("invalid interface name".into()));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(bad(format!("socket: {}", io::Error::last_os_error())));
    }
    // SAFETY: SIOCGIFHWADDR/SIOCGIFMTU read the NUL-terminated name from and write one union
    // member of the `ifreq` we own, which lives across the call.
    let r = unsafe { libc::ioctl(fd, request as _, &mut req as *mut libc::ifreq) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the descriptor created above.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(bad(if err.raw_os_error() == Some(libc::ENODEV) {
            "no such interface in this network namespace".into()
        } else {
            err.to_string()
        }));
    }
    Ok(req)
}

/// The interface's MAC address.
pub fn interface_mac(iface: &str) -> Result<[u8; 6], XdpError> {
    let req = ifreq_ioctl(iface, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled the `ifru_hwaddr` member.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        return Err(XdpError::Interface {
            name: iface.into(),
            reason: format!("not an Ethernet device (ARPHRD {})", sa.sa_family),
        });
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// The interface's MTU.
pub fn interface_mtu(iface: &str) -> Result<usize, XdpError> {
    let req = ifreq_ioctl(iface, libc::SIOCGIFMTU)?;
    // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).map_err(|_| XdpError::Interface {
        name: iface.into(),
        reason: format!("bad MTU {mtu}"),
    })
}

/// Whether AF_XDP can run here, and on `iface` if given: `Ok(explanation)` or `Err(why not)`.
///
/// Without an interface it only checks that the kernel creates AF_XDP sockets. With one it
/// really sets up the driver there (UMEM, rings, bind in copy mode, the XDP program loaded,
/// attached in SKB mode and given the socket) and tears it all down again: for those few
/// milliseconds frames on queue 0 of `iface` go to the probe's socket, so do not point it at
/// an interface carrying traffic you care about.
pub fn probe(iface: Option<&str>) -> Result<String, String> {
    // SAFETY: socket(2) takes no pointers; the descriptor is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_XDP) failed: {} (kernel without CONFIG_XDP_SOCKETS, or not permitted)",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the descriptor we just created.
    unsafe { libc::close(fd) };
    let Some(name) = iface else {
        return Ok("AF_XDP sockets work (needs --iface to own; copy mode on veth)".into());
    };
    let cfg = XdpConfig {
        frames: 256,
        ring_size: 64,
        ..XdpConfig::new(name)
    };
    match XdpDevice::open(&cfg) {
        Ok(dev) => {
            drop(dev);
            Ok(format!(
                "attached the XDP program (SKB mode) and bound an AF_XDP socket (copy mode) on {name} queue 0; detached again"
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Open the device on a new thread (pinned to `cpu` if given), build the stack on it with
/// `ports`, and run until every port drained after shutdown. Returns once the device is set
/// up (setup errors are returned here, not logged on the thread).
pub fn spawn(
    cfg: XdpConfig,
    spec: StackSpec,
    ports: Vec<Box<dyn Port>>,
    cpu: Option<usize>,
) -> Result<JoinHandle<()>, XdpError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), XdpError>>(1);
    let name = format!("ferry-xdp-{}", cfg.iface);
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Some(cpu) = cpu {
                if let Err(e) = ferry_driver::affinity::pin_current_thread(cpu) {
                    tracing::warn!("xdp worker: cannot pin to cpu {cpu}: {e}");
                }
            }
            let dev = match XdpDevice::open(&cfg) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut sc = StackConfig::new(spec.mac.unwrap_or(dev.mac()), spec.ip);
            sc.gateway = spec.gateway;
            sc.sockets = spec.sockets;
            let mut stack = NetStack::new(dev, sc);
            for p in ports {
                stack.add_port(p);
            }
            let _ = tx.send(Ok(()));
            if let Err(e) = stack.run() {
                tracing::error!("xdp worker on {} failed: {e}", cfg.iface);
            }
            let stats = stack.device_mut().stats();
            tracing::debug!("xdp worker on {} stopped: {stats:?}", cfg.iface);
        })
        .map_err(XdpError::Io)?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(XdpError::Io(io::Error::other(
                "the xdp worker thread died during setup",
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let c = XdpConfig::new("veth0");
        assert_eq!(c.queue, 0);
        assert_eq!(c.frame_size, 2048);
        assert_eq!(c.mode, AttachMode::Skb);
    }

    #[test]
    fn missing_interface_is_a_clear_error() {
        let e = interface_mac("ferry-no-such-if0").unwrap_err();
        assert!(e.to_string().contains("ferry-no-such-if0"), "{e}");
        let e = XdpDevice::open(&XdpConfig::new("ferry-no-such-if0")).unwrap_err();
        assert!(matches!(e, XdpError::Interface { .. }), "{e}");
        assert!(interface_mac("").is_err());
        assert!(interface_mac("a-name-longer-than-ifnamsiz").is_err());
        // Loopback has no Ethernet address for the stack to answer ARP with.
        let e = interface_mac("lo").unwrap_err();
        assert!(e.to_string().contains("not an Ethernet device"), "{e}");
        assert!(interface_mtu("lo").unwrap() > 0);
    }

    #[test]
    fn bad_frame_size_is_refused() {
        let mut c = XdpConfig::new("lo");
        c.frame_size = 3000;
        assert!(matches!(XdpDevice::open(&c), Err(XdpError::Config(_))));
    }

    #[test]
    fn the_checked_in_program_parses() {
        // Parsing needs no privileges; loading does.
        let obj = aya_obj_check();
        assert!(obj, "bpf/ferry_xdp.o has no {} section", "xdp");
    }

    fn aya_obj_check() -> bool {
        let bytes = include_bytes!("../bpf/ferry_xdp.o");
        bytes.starts_with(b"\x7fELF") && bytes.windows(8).any(|w| w == b"xsks_map")
    }
}
