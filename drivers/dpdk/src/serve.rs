//! `ferry serve --driver dpdk`: ferry-netstack (smoltcp TCP/IP + Ferry sessions) over a DPDK
//! port, on one pinned thread.

use crate::config::{Cidr, ServeConfig};
use crate::error::{Error, Result};
use std::thread::JoinHandle;

/// What a started server runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeInfo {
    /// The ethdev name (e.g. `net_af_packet0`).
    pub port_name: String,
    /// The MAC address the stack answers ARP with.
    pub mac: [u8; 6],
    /// The stack's address.
    pub ip: Cidr,
    /// The lcore (CPU) the I/O thread is pinned to.
    pub lcore: u32,
}

/// A running DPDK server: one I/O thread owning the EAL, the port and the stack. Stop it with
/// the shutdown flag of the ports' `Launch` (`launch.shutdown.trigger()`), then
/// [`wait`](DpdkServer::wait): the thread returns once every port drained, and tears
/// down port, mempool and EAL in that order.
#[derive(Debug)]
pub struct DpdkServer {
    info: ServeInfo,
    thread: JoinHandle<Result<()>>,
}

impl DpdkServer {
    /// Device, MAC, address and lcore in use.
    pub fn info(&self) -> &ServeInfo {
        &self.info
    }

    /// Wait for the I/O thread (after shutdown was triggered).
    pub fn wait(self) -> Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(Error::Serve("the DPDK I/O thread panicked".into())))
    }

    /// The I/O thread as a plain `JoinHandle<()>` (for `ferry_driver::ServerHandle::new`); a
    /// failure is printed to stderr, a panic propagates through `join`.
    pub fn into_thread(self) -> JoinHandle<()> {
        let t = self.thread;
        std::thread::spawn(move || match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("ferry: dpdk: {e}"),
            Err(p) => std::panic::resume_unwind(p),
        })
    }
}

/// Start serving `ports` (from [`ferry_netstack::prepare`] + [`ferry_netstack::SessionPort`])
/// over the DPDK device `cfg.eal.vdevs[0]` at `cfg.ip`.
///
/// A new thread initialises the EAL (pinned to `cfg.eal.core`, default the first allowed CPU),
/// creates the mbuf pool, starts the port, builds the smoltcp interface with the port's MAC and
/// runs [`ferry_netstack::NetStack::run`]. Returns once the stack is up, or with the setup
/// error. DPDK allows one EAL per process: a second `start` fails with
/// [`Error::AlreadyInitialized`]. Without the `dpdk` feature this returns [`Error::NotBuilt`].
pub fn start(cfg: ServeConfig, ports: Vec<Box<dyn ferry_netstack::Port>>) -> Result<DpdkServer> {
    cfg.vdev()?;
    imp::start(cfg, ports)
}

#[cfg(not(feature = "dpdk"))]
mod imp {
    use super::*;

    pub(super) fn start(
        _cfg: ServeConfig,
        _ports: Vec<Box<dyn ferry_netstack::Port>>,
    ) -> Result<DpdkServer> {
        Err(Error::NotBuilt)
    }
}

#[cfg(feature = "dpdk")]
mod imp {
    use super::*;
    use crate::config::vdev_name;
    use crate::{DpdkDevice, Eal, Mempool, Port};
    use ferry_netstack::{NetStack, StackConfig};

    /// A locally administered unicast MAC (02:xx:xx:xx:xx:xx) from the pid and the clock.
    fn local_mac() -> [u8; 6] {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let x = (std::process::id() ^ t.rotate_left(16)).to_be_bytes();
        [0x02, 0x00, x[0], x[1], x[2], x[3]]
    }

    fn setup(
        cfg: &ServeConfig,
        ports: Vec<Box<dyn ferry_netstack::Port>>,
    ) -> Result<(NetStack<DpdkDevice>, ServeInfo)> {
        let eal = Eal::init(&cfg.eal)?;
        let vdev = cfg.vdev()?;
        let id = eal.port_by_name(vdev_name(vdev)).map_err(|_| {
            Error::PortNotFound(format!(
                "{} (the device `{vdev}` did not come up: see DPDK's messages above)",
                vdev_name(vdev)
            ))
        })?;
        let pool = Mempool::new(&eal, &cfg.pool)?;
        let port = Port::start(id, &pool, &cfg.port)?;
        let mac = match cfg.mac {
            Some(m) => m,
            // Some vdevs (net_ring) report 00:00:00:00:00:00: pick a locally administered one.
            None => match port.mac()? {
                [0, 0, 0, 0, 0, 0] => local_mac(),
                m => m,
            },
        };
        if mac[0] & 1 == 1 {
            return Err(Error::InvalidConfig(format!(
                "MAC {mac:02x?} is not unicast (set ServeConfig::mac)"
            )));
        }
        let info = ServeInfo {
            port_name: port.name().to_owned(),
            mac,
            ip: cfg.ip,
            lcore: eal.main_lcore(),
        };
        let mut dev = DpdkDevice::new(port);
        dev.set_tx_batching(true);
        let mut sc = StackConfig::new(mac, cfg.ip);
        sc.gateway = cfg.gateway;
        sc.sockets = cfg.sockets.clone();
        sc.busy_poll = cfg.busy_poll;
        let mut stack = NetStack::new(dev, sc);
        for p in ports {
            stack.add_port(p);
        }
        Ok((stack, info))
    }

    pub(super) fn start(
        cfg: ServeConfig,
        ports: Vec<Box<dyn ferry_netstack::Port>>,
    ) -> Result<DpdkServer> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("ferry-dpdk".into())
            .spawn(move || -> Result<()> {
                match setup(&cfg, ports) {
                    Ok((mut stack, info)) => {
                        let _ = tx.send(Ok(info));
                        let r = stack.run().map_err(|e| Error::Serve(e.to_string()));
                        // Drop order: stack (device → port stop/close → pool) → EAL cleanup.
                        drop(stack);
                        r
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.clone()));
                        Err(e)
                    }
                }
            })
            .map_err(|e| Error::Serve(format!("cannot spawn the I/O thread: {e}")))?;
        match rx.recv() {
            Ok(Ok(info)) => Ok(DpdkServer { info, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Serve("the DPDK I/O thread died during setup".into()))
            }
        }
    }
}
