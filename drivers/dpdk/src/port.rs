//! Ethernet ports with one RX and one TX queue.

use crate::config::PortConfig;
use crate::eal::{check, rte_error};
use crate::error::{Error, Result};
use crate::mbuf::{Mbuf, Mempool};
use crate::sys;
use std::ptr::NonNull;
use std::sync::Mutex;

/// Ports some `Port` value currently owns (queues are single-owner: two owners would race).
static CLAIMED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Claim `id`; `false` if it is already owned.
fn claim(id: u16) -> bool {
    let mut c = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    if c.contains(&id) {
        return false;
    }
    c.push(id);
    true
}

fn release(id: u16) {
    let mut c = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    c.retain(|x| *x != id);
}

/// Releases a claim on early return.
struct Claim(Option<u16>);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            release(id);
        }
    }
}

/// Most mbufs moved by one burst call.
pub const MAX_BURST: usize = 64;

/// Link state of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkInfo {
    /// Link is up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Basic port counters (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames dropped by the device because the RX queue was full.
    pub rx_missed: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A configured and started Ethernet port with RX queue 0 and TX queue 0.
///
/// Burst calls take `&mut self`: DPDK queues are not thread-safe, one thread polls a queue.
/// The port is stopped and closed on drop.
pub struct Port {
    id: u16,
    name: String,
    pool: Mempool,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

impl Port {
    /// Configure port `id` with one RX queue (filled from `pool`) and one TX queue, set its MTU
    /// and promiscuous mode as asked, and start it. A port has one owner at a time: starting it
    /// again while a `Port` for it is alive fails with [`Error::PortBusy`].
    pub fn start(id: u16, pool: &Mempool, cfg: &PortConfig) -> Result<Port> {
        // SAFETY: EAL running (pool holds it); any id may be asked about.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            return Err(Error::PortNotFound(format!("port {id}")));
        }
        if !claim(id) {
            return Err(Error::PortBusy(id));
        }
        let mut claimed = Claim(Some(id));
        let mut name_buf = [0 as std::ffi::c_char; 64];
        // SAFETY: the buffer holds RTE_ETH_NAME_MAX_LEN (64) bytes as the API requires.
        let name = if unsafe { sys::rte_eth_dev_get_name_by_port(id, name_buf.as_mut_ptr()) } == 0 {
            // SAFETY: DPDK wrote a NUL-terminated name into the buffer.
            unsafe { std::ffi::CStr::from_ptr(name_buf.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        } else {
            format!("port{id}")
        };
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid port, valid out-pointer.
        check("rte_eth_dev_info_get", unsafe {
            sys::rte_eth_dev_info_get(id, &mut info)
        })?;
        let clamp = |want: u16, lim: &sys::rte_eth_desc_lim| {
            let max = if lim.nb_max == 0 {
                u16::MAX
            } else {
                lim.nb_max
            };
            want.clamp(lim.nb_min.max(1), max.max(1))
        };
        let nb_rx = clamp(cfg.rx_desc, &info.rx_desc_lim);
        let nb_tx = clamp(cfg.tx_desc, &info.tx_desc_lim);
        let conf = sys::rte_eth_conf::default();
        // SAFETY: valid port; conf is a zeroed (all-defaults) rte_eth_conf that DPDK copies.
        check("rte_eth_dev_configure", unsafe {
            sys::rte_eth_dev_configure(id, 1, 1, &conf)
        })?;
        // SAFETY: valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        // SAFETY: port configured with one RX queue; NULL rxconf means the driver default; the
        // pool outlives the queue because this Port holds a clone until after close.
        check("rte_eth_rx_queue_setup", unsafe {
            sys::rte_eth_rx_queue_setup(id, 0, nb_rx, socket, std::ptr::null(), pool.as_ptr())
        })?;
        // SAFETY: port configured with one TX queue; NULL txconf means the driver default.
        check("rte_eth_tx_queue_setup", unsafe {
            sys::rte_eth_tx_queue_setup(id, 0, nb_tx, socket, std::ptr::null())
        })?;
        if let Some(mtu) = cfg.mtu {
            // SAFETY: valid, configured port.
            check("rte_eth_dev_set_mtu", unsafe {
                sys::rte_eth_dev_set_mtu(id, mtu)
            })?;
        }
        // SAFETY: valid port with its queues set up.
        check("rte_eth_dev_start", unsafe { sys::rte_eth_dev_start(id) })?;
        claimed.0 = None; // from here on Port's Drop releases the claim
        let port = Port {
            id,
            name,
            pool: pool.clone(),
        };
        if cfg.promiscuous {
            // SAFETY: started port. Drivers without the notion (ring) return -ENOTSUP: fine.
            let rc = unsafe { sys::rte_eth_promiscuous_enable(id) };
            if rc < 0 && rc != -libc::ENOTSUP {
                return Err(rte_error("rte_eth_promiscuous_enable", rc));
            }
        }
        Ok(port)
    }

    /// The DPDK port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The ethdev name (for a vdev, its name before the first comma).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool RX buffers come from (also fine for TX).
    pub fn pool(&self) -> &Mempool {
        &self.pool
    }

    /// The port's MAC address.
    pub fn mac(&self) -> Result<[u8; 6]> {
        let mut a = sys::rte_ether_addr::default();
        // SAFETY: valid port, valid out-pointer.
        check("rte_eth_macaddr_get", unsafe {
            sys::rte_eth_macaddr_get(self.id, &mut a)
        })?;
        Ok(a.addr_bytes)
    }

    /// The MTU the device reports.
    pub fn mtu(&self) -> Result<u16> {
        let mut mtu = 0u16;
        // SAFETY: valid port, valid out-pointer.
        check("rte_eth_dev_get_mtu", unsafe {
            sys::rte_eth_dev_get_mtu(self.id, &mut mtu)
        })?;
        Ok(mtu)
    }

    /// Link state, without waiting.
    pub fn link(&self) -> Result<LinkInfo> {
        let mut l = sys::rte_eth_link::default();
        // SAFETY: valid port, valid out-pointer.
        check("rte_eth_link_get_nowait", unsafe {
            sys::rte_eth_link_get_nowait(self.id, &mut l)
        })?;
        Ok(LinkInfo {
            up: u32::from(l.link_status()) == sys::RTE_ETH_LINK_UP,
            speed_mbps: l.link_speed,
            full_duplex: u32::from(l.link_duplex()) == sys::RTE_ETH_LINK_FULL_DUPLEX,
        })
    }

    /// Port counters.
    pub fn stats(&self) -> Result<PortStats> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: valid port, valid out-pointer.
        check("rte_eth_stats_get", unsafe {
            sys::rte_eth_stats_get(self.id, &mut s)
        })?;
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Receive up to `max` (at most [`MAX_BURST`]) frames, appending them to `out`. Returns how
    /// many arrived; 0 when none are waiting (this never blocks).
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut raw = [std::ptr::null_mut::<sys::rte_mbuf>(); MAX_BURST];
        let max = max.min(MAX_BURST) as u16;
        // SAFETY: started port with RX queue 0, polled only through &mut self; `raw` has room
        // for `max` pointers.
        let n = unsafe { sys::rte_eth_rx_burst(self.id, 0, raw.as_mut_ptr(), max) };
        out.reserve(usize::from(n));
        for p in &raw[..usize::from(n)] {
            if let Some(p) = NonNull::new(*p) {
                // SAFETY: rx_burst hands us ownership of each returned mbuf, from our pool.
                out.push(unsafe { Mbuf::from_raw(p) });
            }
        }
        usize::from(n)
    }

    /// Send frames from the front of `pkts` (at most [`MAX_BURST`]); those the device took are
    /// removed from `pkts`, the rest stay for a later retry. Returns how many were taken.
    pub fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        let k = pkts.len().min(MAX_BURST);
        if k == 0 {
            return 0;
        }
        let mut raw = [std::ptr::null_mut::<sys::rte_mbuf>(); MAX_BURST];
        for (slot, m) in raw.iter_mut().zip(pkts.iter()) {
            *slot = m.as_raw();
        }
        // SAFETY: started port with TX queue 0, used only through &mut self; raw holds k valid
        // mbufs we own. The driver takes ownership of the first n.
        let n =
            usize::from(unsafe { sys::rte_eth_tx_burst(self.id, 0, raw.as_mut_ptr(), k as u16) });
        for m in pkts.drain(..n) {
            let _ = m.into_raw();
        }
        n
    }

    /// Send one frame; gives it back if the TX queue is full.
    pub fn tx_one(&mut self, m: Mbuf) -> std::result::Result<(), Mbuf> {
        let mut raw = [m.as_raw()];
        // SAFETY: as in tx_burst, with one mbuf.
        let n = unsafe { sys::rte_eth_tx_burst(self.id, 0, raw.as_mut_ptr(), 1) };
        if n == 1 {
            let _ = m.into_raw();
            Ok(())
        } else {
            Err(m)
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: valid port we configured; stopping then closing releases its queues (and the
        // mbufs they hold) before our pool clone is dropped.
        unsafe {
            sys::rte_eth_dev_stop(self.id);
            sys::rte_eth_dev_close(self.id);
        }
        release(self.id);
    }
}
