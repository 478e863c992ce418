//! # ferry-dpdk: Ferry over DPDK
//!
//! Our own bindings to Debian's DPDK 22.11 (bindgen over the installed headers, found with
//! `pkg-config libdpdk`; DPDK's `static inline` burst and mbuf functions reach Rust through
//! C wrappers bindgen generates and `cc` compiles), safe wrappers over the parts a userspace
//! TCP/IP stack needs, a [`smoltcp::phy::Device`] over a DPDK port, and [`start`]: the
//! [ferry-netstack](ferry_netstack) loop serving Ferry sessions (HTTP/1.1, h2c, RESP) over it.
//!
//! Everything that touches DPDK sits behind the cargo feature **`dpdk`** (off by default, so the
//! workspace builds where DPDK is not installed). Without it the crate still exposes its
//! configuration types, and [`start`] returns [`Error::NotBuilt`].
//!
//! ## Pieces (feature `dpdk`)
//!
//! - `Eal`: `rte_eal_init` with [`EalConfig`] (`--no-huge --no-shconf --no-pci
//!   --no-telemetry -l CORE --vdev ...`, or `--in-memory` with hugepages), once per process; `rte_eal_cleanup` when the last
//!   handle (and every port and pool, which hold one) is dropped. Hot-plug with
//!   `Eal::probe`, in-memory port pairs with `Eal::ring_pair`.
//! - `Mempool` / `Mbuf`: `rte_pktmbuf_pool_create`; owned mbufs returned to the pool on
//!   drop. A pool dropped while mbufs are alive is leaked (and EAL cleanup skipped) rather than
//!   freed under them.
//! - `Port`: one RX and one TX queue, burst RX/TX, MAC, link, MTU and counters; stopped and
//!   closed on drop.
//! - `DpdkDevice`: the smoltcp device. RX tokens own an mbuf and lend its bytes in place; TX
//!   tokens allocate an mbuf for smoltcp to write into.
//!
//! Virtual devices that work without hardware: `net_af_packet0,iface=IF` (a kernel interface,
//! e.g. one end of a veth pair that has no kernel address), `net_tap0,iface=NAME`,
//! `net_af_xdp0,iface=IF`, `net_ring0`. Each DPDK call's failure is an [`Error::Rte`] with
//! `rte_strerror`'s text.
//!
//! ## Serving (the call `ferry serve --driver dpdk` makes)
//!
//! ```no_run
//! use std::sync::Arc;
//! use ferry_driver::{HttpSession, Request, Response, ServerOptions, Service};
//! use ferry_netstack::SessionPort;
//!
//! struct Hello;
//! impl Service for Hello {
//!     fn call(&self, _req: Request) -> Response {
//!         Response::text(200, "hello over DPDK\n")
//!     }
//! }
//!
//! let ip: ferry_dpdk::Cidr = "10.9.0.2/24".parse().unwrap();
//! let cfg = ferry_dpdk::ServeConfig::new("net_af_packet0,iface=veth0", ip);
//! let launch = ferry_netstack::prepare(
//!     (ip.addr, 80).into(),
//!     ServerOptions::default(),
//!     Arc::new(Hello),
//! )?;
//! let shutdown = launch.shutdown.clone();
//! let ctx = launch.workers.into_iter().next().unwrap();
//! let port = SessionPort::<HttpSession>::boxed(80, ctx, Arc::new(()));
//! let server = ferry_dpdk::start(cfg, vec![port])?;
//! println!("serving on {} ({:02x?})", server.info().port_name, server.info().mac);
//! // ... later (on SIGTERM):
//! shutdown.trigger();
//! server.wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Configuration is plain data and works without DPDK:
//!
//! ```
//! let cfg = ferry_dpdk::EalConfig::with_vdev("net_ring0");
//! let args = cfg.args(0).unwrap();
//! assert_eq!(&args[..3], ["ferry", "-l", "0"]);
//! assert!(args.iter().any(|a| a == "--no-huge"));
//! assert_eq!(ferry_dpdk::BUILT, cfg!(feature = "dpdk"));
//! ```
//!
//! ## Running it
//!
//! Needs root (or `CAP_NET_RAW` + `CAP_SYS_ADMIN` for af_packet), and with af_packet on a veth
//! the peer must send full checksums (`ethtool -K <peer> tx off`), because smoltcp verifies
//! them in software and veth leaves them to an offload that never happens.
#![deny(missing_docs)]

mod config;
mod error;
mod serve;

#[cfg(feature = "dpdk")]
mod device;
#[cfg(feature = "dpdk")]
mod eal;
#[cfg(feature = "dpdk")]
mod mbuf;
#[cfg(feature = "dpdk")]
mod port;
/// Raw bindgen output (feature `dpdk`). Everything here is `unsafe`; prefer the wrappers.
#[cfg(feature = "dpdk")]
pub mod sys;

pub use config::{vdev_name, Cidr, EalConfig, PoolConfig, PortConfig, ServeConfig, SocketConfig};
pub use error::{Error, Result};
pub use serve::{start, DpdkServer, ServeInfo};

#[cfg(feature = "dpdk")]
pub use device::{DeviceStats, DpdkDevice, RxToken, TxToken};
#[cfg(feature = "dpdk")]
pub use eal::Eal;
#[cfg(feature = "dpdk")]
pub use mbuf::{Mbuf, Mempool};
#[cfg(feature = "dpdk")]
pub use port::{LinkInfo, Port, PortStats, MAX_BURST};

/// Whether this build has DPDK in it (the `dpdk` feature).
pub const BUILT: bool = cfg!(feature = "dpdk");

/// For `ferry probe`: really start and stop an EAL (`--no-huge`, no devices) and say what
/// happened. `Err` explains why DPDK cannot run (not built in, EAL init failure). This uses
/// up the process's one EAL: call it only from a process that will not serve over DPDK.
pub fn probe() -> std::result::Result<String, String> {
    #[cfg(feature = "dpdk")]
    {
        let cfg = EalConfig {
            program: "ferry-probe".into(),
            memory_mb: Some(64),
            log_level: Some("error".into()),
            ..EalConfig::default()
        };
        match Eal::init(&cfg) {
            Ok(eal) => {
                let lcore = eal.main_lcore();
                drop(eal);
                Ok(format!(
                    "EAL starts (--no-huge, lcore {lcore}); --driver dpdk --vdev DEV --ip CIDR \
                     owns DEV (net_af_packet, net_tap, net_af_xdp, net_ring; smoltcp TCP)"
                ))
            }
            Err(Error::AlreadyInitialized) => {
                Ok("EAL already used by this process (DPDK starts once per process)".into())
            }
            Err(e) => Err(format!("DPDK EAL cannot start: {e}")),
        }
    }
    #[cfg(not(feature = "dpdk"))]
    {
        Err(Error::NotBuilt.to_string())
    }
}

#[cfg(all(test, not(feature = "dpdk")))]
mod tests {
    #[test]
    fn without_the_feature_everything_says_not_built() {
        const { assert!(!crate::BUILT) };
        assert!(crate::probe().unwrap_err().contains("--features dpdk"));
        let cfg = crate::ServeConfig::new("net_ring0", "10.0.0.2/24".parse().unwrap());
        assert!(matches!(
            crate::start(cfg, Vec::new()),
            Err(crate::Error::NotBuilt)
        ));
    }
}
