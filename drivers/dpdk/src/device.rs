//! `smoltcp::phy::Device` over a DPDK port.

use crate::mbuf::{Mbuf, Mempool};
use crate::port::{Port, MAX_BURST};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;

/// Frame counters, including what the device had to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStats {
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Outgoing frames dropped because the mbuf pool was empty.
    pub tx_no_mbuf: u64,
    /// Outgoing frames dropped because the TX queue stayed full.
    pub tx_queue_full: u64,
    /// Outgoing frames dropped because they did not fit one mbuf.
    pub tx_too_large: u64,
}

/// A DPDK port as a smoltcp Ethernet device.
///
/// `receive` pulls frames in bursts of up to `burst` and lends each mbuf to smoltcp through an
/// [`RxToken`] that owns it (the frame is read in place, never copied, unless the driver chained
/// segments). [`TxToken`] allocates an mbuf and lets smoltcp write the frame straight into it.
/// By default each frame is sent at once; with [`set_tx_batching`](Self::set_tx_batching) frames
/// queue until `burst` are waiting or [`flush`](Self::flush) is called (ferry-netstack calls it
/// after every interface poll through [`DeviceIo`](ferry_netstack::DeviceIo)).
///
/// Checksums are computed and verified in software: virtual devices (af_packet on veth) may
/// deliver frames whose checksum the sending kernel left to an offload, so turn TX checksum
/// offload off on the peer (`ethtool -K <peer> tx off`).
pub struct DpdkDevice {
    port: Port,
    pool: Mempool,
    rx: VecDeque<Mbuf>,
    rx_scratch: Vec<Mbuf>,
    tx_pending: Vec<Mbuf>,
    tx_scratch: Vec<u8>,
    batch_tx: bool,
    burst: usize,
    mtu: usize,
    stats: DeviceStats,
}

impl std::fmt::Debug for DpdkDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkDevice")
            .field("port", &self.port)
            .field("mtu", &self.mtu)
            .field("stats", &self.stats)
            .finish()
    }
}

impl DpdkDevice {
    /// Wrap a started port. The IP MTU is the port's (1500 when it does not say), capped to
    /// what one mbuf of the port's pool holds.
    pub fn new(port: Port) -> Self {
        let pool = port.pool().clone();
        let ip_mtu = port.mtu().ok().filter(|m| *m >= 576).unwrap_or(1500);
        let frame = (usize::from(ip_mtu) + 14).min(pool.room());
        Self {
            port,
            pool,
            rx: VecDeque::with_capacity(MAX_BURST),
            rx_scratch: Vec::with_capacity(MAX_BURST),
            tx_pending: Vec::with_capacity(MAX_BURST),
            tx_scratch: Vec::new(),
            batch_tx: false,
            burst: 32,
            mtu: frame,
            stats: DeviceStats::default(),
        }
    }

    /// Frames pulled per RX burst (1..=64) [default: 32].
    pub fn set_burst(&mut self, burst: usize) {
        self.burst = burst.clamp(1, MAX_BURST);
    }

    /// Queue outgoing frames and send them in bursts on [`flush`](Self::flush) (or when `burst`
    /// are waiting) instead of one by one. The caller MUST then call `flush` after each
    /// `Interface::poll`, or frames wait for the next burst.
    pub fn set_tx_batching(&mut self, on: bool) {
        self.batch_tx = on;
        if !on {
            self.flush();
        }
    }

    /// Send every queued frame. A TX queue that stays full after a bounded number of retries
    /// drops the rest (counted in [`DeviceStats::tx_queue_full`]; TCP retransmits).
    pub fn flush(&mut self) {
        let mut idle = 0;
        while !self.tx_pending.is_empty() && idle < 64 {
            let n = self.port.tx_burst(&mut self.tx_pending);
            self.stats.tx_frames += n as u64;
            if n == 0 {
                idle += 1;
                std::hint::spin_loop();
            } else {
                idle = 0;
            }
        }
        self.stats.tx_queue_full += self.tx_pending.len() as u64;
        self.tx_pending.clear();
    }

    /// The port underneath.
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// The port's MAC address as a smoltcp hardware address.
    pub fn hardware_addr(&self) -> crate::Result<smoltcp::wire::HardwareAddress> {
        Ok(smoltcp::wire::EthernetAddress(self.port.mac()?).into())
    }

    /// Drop counters.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// True if a frame is waiting (buffered or on the RX queue); pulls a burst if needed.
    pub fn poll_rx(&mut self) -> bool {
        if self.rx.is_empty() {
            self.fill();
        }
        !self.rx.is_empty()
    }

    fn fill(&mut self) {
        self.rx_scratch.clear();
        let n = self.port.rx_burst(&mut self.rx_scratch, self.burst);
        if n > 0 {
            self.rx.extend(self.rx_scratch.drain(..));
        }
    }
}

/// Receive token: owns one received mbuf; smoltcp reads the frame in place.
#[derive(Debug)]
pub struct RxToken {
    mbuf: Mbuf,
}

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        if self.mbuf.segments() <= 1 {
            f(self.mbuf.data())
        } else {
            let mut v = Vec::with_capacity(self.mbuf.pkt_len());
            f(self.mbuf.linear(&mut v))
        }
        // The mbuf returns to its pool here.
    }
}

/// Transmit token: allocates an mbuf, smoltcp writes the frame into it, and it is sent (or
/// queued, with TX batching on).
pub struct TxToken<'a> {
    dev: &'a mut DpdkDevice,
}

impl std::fmt::Debug for TxToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxToken")
            .field("port", &self.dev.port.id())
            .finish()
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let dev = self.dev;
        let mut m = match dev.pool.alloc() {
            Ok(m) => m,
            Err(_) => {
                // smoltcp needs its closure run; the frame goes nowhere (like a NIC out of
                // descriptors) and TCP retransmits it.
                dev.stats.tx_no_mbuf += 1;
                dev.tx_scratch.clear();
                dev.tx_scratch.resize(len, 0);
                return f(&mut dev.tx_scratch);
            }
        };
        let r = match m.append(len) {
            Ok(buf) => f(buf),
            Err(_) => {
                dev.stats.tx_too_large += 1;
                dev.tx_scratch.clear();
                dev.tx_scratch.resize(len, 0);
                return f(&mut dev.tx_scratch);
            }
        };
        dev.tx_pending.push(m);
        if !dev.batch_tx || dev.tx_pending.len() >= dev.burst {
            dev.flush();
        }
        r
    }
}

impl phy::Device for DpdkDevice {
    type RxToken<'a>
        = RxToken
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.rx.is_empty() {
            self.fill();
        }
        let mbuf = self.rx.pop_front()?;
        self.stats.rx_frames += 1;
        Some((RxToken { mbuf }, TxToken { dev: self }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = Some(self.burst);
        caps
    }
}

impl ferry_netstack::DeviceIo for DpdkDevice {
    // Virtual DPDK devices have no RX interrupt: `rx_fd` stays `None` and the stack polls.
    fn flush(&mut self) {
        DpdkDevice::flush(self);
    }
}

impl Drop for DpdkDevice {
    fn drop(&mut self) {
        self.flush();
    }
}
