//! `ferry serve --driver dpdk --vdev DEV --ip CIDR`: the demo routes (`--http`) and the RESP
//! store (`--redis`) on a smoltcp stack (ferry-netstack) over a DPDK port, one pinned I/O
//! thread owning the EAL and the port. DEV is a DPDK vdev such as
//! `net_af_packet0,iface=veth0` (the interface must carry no kernel address) or
//! `net_tap0,iface=dtap0`. Needs a build with `--features dpdk`; otherwise it says so.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ferry_driver::{DriverKind, ListenAddr, ServerHandle, ServerOptions};
use ferry_netstack::Cidr;

use crate::{demo, serve_stack};

/// The userspace stack's settings from the command line.
pub struct DpdkArgs {
    /// The DPDK device to own (`--vdev`).
    pub vdev: String,
    /// Our address on it.
    pub ip: Cidr,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// MAC override (default: the port's).
    pub mac: Option<[u8; 6]>,
}

/// Start both listeners on one stack; returns their handles (the first owns the I/O thread)
/// after printing the `listening` lines.
pub fn start(
    d: &DpdkArgs,
    http: Option<ListenAddr>,
    redis_addr: Option<SocketAddr>,
    opts: &ServerOptions,
    app: &Arc<demo::Demo>,
) -> Result<Vec<ServerHandle>, String> {
    if !ferry_dpdk::BUILT {
        return Err(ferry_dpdk::Error::NotBuilt.to_string());
    }
    let stack = serve_stack::prepare(DriverKind::Dpdk, d.ip, http, redis_addr, opts, app)?;
    let (ports, cpu) = (stack.ports, stack.cpu);
    let mut cfg = ferry_dpdk::ServeConfig::new(d.vdev.clone(), d.ip);
    cfg.gateway = d.gateway;
    cfg.mac = d.mac;
    cfg.eal.core = cpu;
    let server = ferry_dpdk::start(cfg, ports).map_err(|e| e.to_string())?;
    let info = server.info().clone();
    let handles = serve_stack::started(DriverKind::Dpdk, stack.parts, server.into_thread());
    let mac: Vec<String> = info.mac.iter().map(|b| format!("{b:02x}")).collect();
    tracing::info!(
        port = %info.port_name,
        mac = %mac.join(":"),
        lcore = info.lcore,
        "dpdk stack up"
    );
    Ok(handles)
}
