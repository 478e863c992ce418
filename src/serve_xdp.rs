//! `ferry serve --driver xdp --iface IFACE --ip CIDR`: the demo routes (`--http`) and the RESP
//! store (`--redis`) on a smoltcp stack over AF_XDP, one pinned I/O thread owning the
//! interface's queue 0. The interface must carry no kernel address.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ferry_driver::{DriverKind, ListenAddr, ServerHandle, ServerOptions};
use ferry_netstack::Cidr;

use crate::{demo, serve_stack};

/// The userspace stack's settings from the command line.
pub struct XdpArgs {
    /// Interface to own.
    pub iface: String,
    /// Our address on it.
    pub ip: Cidr,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// MAC override (default: the interface's).
    pub mac: Option<[u8; 6]>,
}

/// Start both listeners on one stack; returns their handles (the first owns the I/O thread)
/// after printing the `listening` lines.
pub fn start(
    x: &XdpArgs,
    http: Option<ListenAddr>,
    redis_addr: Option<SocketAddr>,
    opts: &ServerOptions,
    app: &Arc<demo::Demo>,
) -> Result<Vec<ServerHandle>, String> {
    let stack = serve_stack::prepare(DriverKind::Xdp, x.ip, http, redis_addr, opts, app)?;
    let cfg = ferry_xdp::XdpConfig::new(x.iface.clone());
    let mut spec = ferry_xdp::StackSpec::new(x.ip);
    spec.gateway = x.gateway;
    spec.mac = x.mac;
    let thread = ferry_xdp::spawn(cfg, spec, stack.ports, stack.cpu).map_err(|e| e.to_string())?;
    Ok(serve_stack::started(DriverKind::Xdp, stack.parts, thread))
}
