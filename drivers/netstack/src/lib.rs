//! # ferry-netstack: smoltcp TCP/IP over any `smoltcp::phy::Device`, pumping Ferry sessions
//!
//! Kernel-bypass drivers (AF_XDP in `ferry-xdp`, DPDK in `ferry-dpdk`) receive and send raw
//! Ethernet frames; the kernel's TCP never sees them. This crate is the rest of the way up:
//! a [smoltcp](https://docs.rs/smoltcp/0.14) [`Interface`] (ARP, IPv4, ICMP echo, TCP) over a
//! device, listening TCP ports, and a loop that drives the same protocol-generic
//! [`Session`](ferry_driver::Session) the epoll and io_uring drivers drive, so `ferry serve`'s
//! HTTP/1.1 (+h2c) and RESP sessions work unchanged.
//!
//! ## API for a driver (what `ferry-xdp` does; `ferry-dpdk` does the same)
//!
//! 1. Implement [`smoltcp::phy::Device`] over your rings (lend frames through the tokens'
//!    `consume` closures, no copies), and [`DeviceIo`] on it: `rx_fd` (a descriptor that polls
//!    readable when frames wait, or `None` to busy-poll) and `flush` (kick the NIC/kernel after
//!    smoltcp queued frames: called after every `Interface::poll`).
//! 2. Per listener, build a worker context without a kernel socket with [`prepare`]
//!    (a [`Launch`](ferry_driver::Launch) with no listeners), and turn its `WorkerCtx` into a
//!    [`Port`] with [`SessionPort::boxed::<S>`](SessionPort::boxed) for the protocol `S`.
//! 3. On the pinned I/O thread: [`NetStack::new`] (device + [`StackConfig`]: MAC, IPv4/prefix,
//!    gateway, socket sizes), [`NetStack::add_port`] for each port, then [`NetStack::run`]
//!    until every port drained after shutdown (or call [`NetStack::poll`] from your own loop;
//!    it returns how long the stack may sleep).
//!
//! ## The loop
//!
//! One turn: `Interface::poll` (ingress one frame at a time, then egress) → `DeviceIo::flush`
//! → each port's `pump`. Accepting: each port keeps `backlog` sockets in `LISTEN`; after any
//! frame that changed a socket's state, one that took a SYN moves to the port's accept queue
//! and a fresh socket listens in its place, so a burst of SYNs larger than the backlog is not
//! reset and connections keep being accepted while others are busy. Readiness: every
//! connection registers a waker with its smoltcp socket (receive and send side); smoltcp
//! wakes it on new data, freed send space or a state change, and `pump` drives only the
//! connections woken, given mail (application replies), whose timer fired or which wait on
//! a full application channel, so idle connections cost nothing per turn. Per connection
//! driven: socket receive buffer → `session.input()` → `process()` → queued output
//! (`fill_iov`) into the socket's send buffer as far as it has room (`written(n)`), EOF once the
//! peer's FIN was read, `close()` (FIN after the queued bytes) when the session finishes,
//! lingering until the peer closes or `linger` passes (then a reset). Timers come from each
//! session's `poll_timeout` (a [`TimerWheel`](ferry_driver::TimerWheel) per port); the loop
//! sleeps until the earliest of smoltcp's `poll_delay`, those timers, or a doorbell
//! (application replies, shutdown) — or until the device's descriptor is readable.
//!
//! ## Embedding
//!
//! ```
//! use std::sync::Arc;
//! use ferry_driver::{HttpSession, Request, Response, ServerOptions, Service};
//! use ferry_netstack::{mem, NetStack, SessionPort, StackConfig};
//!
//! struct Hello;
//! impl Service for Hello {
//!     fn call(&self, _req: Request) -> Response {
//!         Response::text(200, "hello over smoltcp\n")
//!     }
//! }
//!
//! let (dev, _peer) = mem::pair(1514); // an AF_XDP or DPDK device in real life
//! let cfg = StackConfig::new([2, 0, 0, 0, 0, 1], "10.9.0.1/24".parse().unwrap());
//! let mut stack = NetStack::new(dev, cfg);
//! let launch = ferry_netstack::prepare(
//!     "10.9.0.1:80".parse().unwrap(),
//!     ServerOptions { pin: false, ..ServerOptions::default() },
//!     Arc::new(Hello),
//! )
//! .unwrap();
//! let ctx = launch.workers.into_iter().next().unwrap();
//! stack.add_port(SessionPort::<HttpSession>::boxed(80, ctx, Arc::new(())));
//! let _sleep = stack.poll(); // or stack.run() on a pinned I/O thread
//! ```
#![deny(missing_docs)]

mod launch;
pub mod mem;
mod port;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::time::Duration;

pub use launch::prepare;
pub use port::{Port, SessionPort};
pub use smoltcp;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

/// What the run loop needs from a device beyond [`smoltcp::phy::Device`].
pub trait DeviceIo: Device {
    /// A descriptor that polls readable when frames wait; `None` makes [`NetStack::run`]
    /// busy-poll (sleeping at most [`StackConfig::busy_poll`]).
    fn rx_fd(&self) -> Option<RawFd> {
        None
    }
    /// Push the frames smoltcp just queued to the wire (wake the kernel or NIC). Called after
    /// every `Interface::poll`.
    fn flush(&mut self) {}
    /// Whether the device wants another turn soon even without a readable descriptor (frames
    /// already taken from its ring, transmit buffers all in flight): the loop then sleeps at
    /// most [`NEEDS_POLL_SLEEP`].
    fn needs_poll(&self) -> bool {
        false
    }
}

/// Longest sleep while [`DeviceIo::needs_poll`] holds.
pub const NEEDS_POLL_SLEEP: Duration = Duration::from_micros(50);

/// Errors configuring a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    /// Not `A.B.C.D/N` with N ≤ 32.
    BadCidr(String),
    /// Not six `:`-separated hex octets.
    BadMac(String),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::BadCidr(s) => write!(f, "invalid IPv4 CIDR `{s}` (expected A.B.C.D/N)"),
            NetError::BadMac(s) => {
                write!(f, "invalid MAC address `{s}` (expected aa:bb:cc:dd:ee:ff)")
            }
        }
    }
}

impl std::error::Error for NetError {}

/// An IPv4 address with its prefix length (`10.0.0.1/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length (0..=32).
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Cidr, NetError> {
        let bad = || NetError::BadCidr(s.to_string());
        let (a, p) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        let p = parts
            .next()
            .ok_or_else(|| NetError::BadMac(s.to_string()))?;
        if p.is_empty() || p.len() > 2 {
            return Err(NetError::BadMac(s.to_string()));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| NetError::BadMac(s.to_string()))?;
    }
    if parts.next().is_some() {
        return Err(NetError::BadMac(s.to_string()));
    }
    Ok(mac)
}

/// Per-connection TCP socket settings.
#[derive(Clone, Debug)]
pub struct SocketConfig {
    /// Receive buffer per socket (the advertised window; > 64 KiB uses window scaling).
    /// Default 128 KiB. smoltcp allocates both buffers up front for every connection and
    /// listening socket (zeroed pages become resident as data flows through the ring): 10 000
    /// busy connections at the defaults hold up to 2.5 GiB.
    pub rx_buffer: usize,
    /// Send buffer per socket. Default 128 KiB.
    pub tx_buffer: usize,
    /// Sockets kept listening per port: how many handshakes can be in flight at once.
    /// Default 16.
    pub backlog: usize,
    /// Nagle's algorithm (off by default, like `TCP_NODELAY` on the kernel drivers).
    pub nagle: bool,
    /// Delayed-ACK timeout (smoltcp's default 10 ms).
    pub ack_delay: Option<Duration>,
    /// TCP keep-alive interval. Default none.
    pub keep_alive: Option<Duration>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            rx_buffer: 128 * 1024,
            tx_buffer: 128 * 1024,
            backlog: 16,
            nagle: false,
            ack_delay: Some(Duration::from_millis(10)),
            keep_alive: None,
        }
    }
}

impl SocketConfig {
    pub(crate) fn socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0; self.rx_buffer.max(1024)]);
        let tx = tcp::SocketBuffer::new(vec![0; self.tx_buffer.max(1024)]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(self.nagle);
        s.set_ack_delay(self.ack_delay.map(to_smol_duration));
        s.set_keep_alive(self.keep_alive.map(to_smol_duration));
        s
    }
}

/// The interface's identity and the sockets' settings.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Our Ethernet address (use the owned interface's own, so frames for it reach us).
    pub mac: [u8; 6],
    /// Our IPv4 address and subnet.
    pub ip: Cidr,
    /// Default route, if any.
    pub gateway: Option<Ipv4Addr>,
    /// TCP socket settings.
    pub sockets: SocketConfig,
    /// Seed for smoltcp (initial sequence numbers, ephemeral ports). Default: from the clock.
    pub seed: u64,
    /// Longest sleep between polls for devices without a descriptor (`rx_fd` = `None`).
    /// Default 0 (spin, as DPDK does).
    pub busy_poll: Duration,
}

impl StackConfig {
    /// A stack at `mac` with address `ip`, no gateway, default sockets.
    pub fn new(mac: [u8; 6], ip: Cidr) -> StackConfig {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        StackConfig {
            mac,
            ip,
            gateway: None,
            sockets: SocketConfig::default(),
            seed,
            busy_poll: Duration::ZERO,
        }
    }
}

/// Frames taken from the device per `Interface` poll before the sessions get a turn.
const INGRESS_BUDGET: usize = 1024;
/// Egress rounds per `Interface` poll.
const EGRESS_BUDGET: usize = 64;

fn to_smol_duration(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A smoltcp interface over `D`, with Ferry ports on it. Single-threaded: run it on one
/// pinned I/O thread (it is `Send` when `D` is, so it can be built elsewhere and moved).
pub struct NetStack<D: Device> {
    device: D,
    iface: Interface,
    sockets: SocketSet<'static>,
    ports: Vec<Box<dyn Port>>,
    cfg: StackConfig,
    origin: std::time::Instant,
}

impl<D: Device> fmt::Debug for NetStack<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetStack")
            .field("ip", &self.cfg.ip)
            .field(
                "ports",
                &self.ports.iter().map(|p| p.port()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<D: DeviceIo> NetStack<D> {
    /// An interface on `device` configured by `cfg`.
    pub fn new(mut device: D, cfg: StackConfig) -> NetStack<D> {
        let origin = std::time::Instant::now();
        let mut c = Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac)));
        c.random_seed = cfg.seed;
        let mut iface = Interface::new(c, &mut device, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(cfg.ip.addr.into(), cfg.ip.prefix));
        });
        if let Some(gw) = cfg.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        NetStack {
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            ports: Vec::new(),
            cfg,
            origin,
        }
    }

    /// Listen on a port (its sockets are opened now).
    pub fn add_port(&mut self, mut port: Box<dyn Port>) {
        port.open(&mut self.sockets, &self.cfg.sockets);
        self.ports.push(port);
    }

    /// The device.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The smoltcp interface (routes, addresses).
    pub fn iface_mut(&mut self) -> &mut Interface {
        &mut self.iface
    }

    /// The configuration.
    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.origin.elapsed().as_micros() as i64)
    }

    /// `Interface::poll`, one frame at a time, so a listening socket that took a SYN is
    /// replaced before the next frame (a burst of SYNs larger than the backlog is not reset).
    fn iface_poll(&mut self) {
        use smoltcp::iface::{PollIngressSingleResult, PollResult};
        let ts = self.now();
        self.iface.poll_maintenance(ts);
        for _ in 0..INGRESS_BUDGET {
            match self
                .iface
                .poll_ingress_single(ts, &mut self.device, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => {
                    for p in &mut self.ports {
                        p.rearm(&mut self.sockets, &self.cfg.sockets);
                    }
                }
            }
        }
        for _ in 0..EGRESS_BUDGET {
            if self
                .iface
                .poll_egress(ts, &mut self.device, &mut self.sockets)
                == PollResult::None
            {
                break;
            }
        }
        self.device.flush();
    }

    /// One turn of the loop (see the crate docs). Returns how long the stack may sleep before
    /// the next turn if no frame and no doorbell arrives (`None`: until one does).
    pub fn poll(&mut self) -> Option<Duration> {
        for round in 0..8 {
            self.iface_poll();
            if round == 7 {
                break;
            }
            let mut wrote = false;
            for p in &mut self.ports {
                wrote |= p.pump(&mut self.sockets, &self.cfg.sockets);
            }
            if !wrote {
                break;
            }
        }
        let ts = self.now();
        let mut wait = self
            .iface
            .poll_delay(ts, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        for p in &self.ports {
            if let Some(w) = p.wait() {
                wait = Some(wait.map_or(w, |x| x.min(w)));
            }
        }
        wait
    }

    /// Whether every port finished draining after shutdown (false without ports).
    pub fn is_done(&self) -> bool {
        !self.ports.is_empty() && self.ports.iter().all(|p| p.is_done())
    }

    /// Run turns until [`is_done`](Self::is_done), sleeping in `ppoll` on the device's
    /// descriptor and the ports' doorbells in between.
    pub fn run(&mut self) -> io::Result<()> {
        let dev_fd = self.device.rx_fd();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        if let Some(fd) = dev_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let first_port = fds.len();
        for p in &self.ports {
            fds.push(libc::pollfd {
                fd: p.waker_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        loop {
            let mut wait = self.poll();
            if self.is_done() {
                return Ok(());
            }
            if dev_fd.is_none() || self.device.needs_poll() {
                let b = if dev_fd.is_none() {
                    self.cfg.busy_poll
                } else {
                    NEEDS_POLL_SLEEP
                };
                wait = Some(wait.map_or(b, |w| w.min(b)));
            }
            let ts = wait.map(|w| libc::timespec {
                tv_sec: w.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: libc::c_long::from(w.subsec_nanos() as i32),
            });
            let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
            for f in &mut fds {
                f.revents = 0;
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs we own; `tsp` is
            // null or points at a timespec that lives across the call; no signal mask.
            let r = unsafe {
                libc::ppoll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    tsp,
                    std::ptr::null(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
                continue;
            }
            for (i, p) in self.ports.iter_mut().enumerate() {
                if fds[first_port + i].revents != 0 {
                    p.wake();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
