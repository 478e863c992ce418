//! `ferry serve --driver xdp --iface IFACE --ip CIDR`: the demo routes (`--http`) and the RESP
//! store (`--redis`) on a smoltcp stack over AF_XDP, one pinned I/O thread owning the
//! interface's queue 0. The interface must carry no kernel address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ferry_driver::h2::HttpAuto;
use ferry_driver::resp::{RespSession, RespShared};
use ferry_driver::{DriverKind, ListenAddr, ServerHandle, ServerOptions};
use ferry_netstack::{Cidr, SessionPort};

use crate::{demo, redis};

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

/// Check a listener address against the stack's: its IP must be `--ip`'s or unspecified.
fn stack_addr(what: &str, addr: SocketAddr, ip: Cidr) -> Result<SocketAddr, String> {
    match addr.ip() {
        IpAddr::V4(a) if a == ip.addr || a.is_unspecified() => {
            Ok(SocketAddr::new(ip.addr.into(), addr.port()))
        }
        other => Err(format!(
            "--{what} {addr}: with --driver xdp the listener is on the stack's address {} (got {other})",
            ip.addr
        )),
    }
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
    let mut ports = Vec::new();
    let mut parts = Vec::new();
    let mut cpu = None;
    if let Some(addr) = http {
        let ListenAddr::Inet(addr) = addr else {
            return Err("--http: a unix: socket cannot be served by --driver xdp".into());
        };
        let addr = stack_addr("http", addr, x.ip)?;
        let launch = ferry_netstack::prepare(addr, opts.clone(), app.clone())
            .map_err(|e| format!("cannot prepare the http listener: {e}"))?;
        let ferry_driver::Launch {
            workers,
            metrics,
            shutdown,
            app: pool,
            ..
        } = launch;
        let ctx = workers.into_iter().next().ok_or("no worker context")?;
        cpu = cpu.or(ctx.cpu);
        ports.push(SessionPort::<HttpAuto>::boxed(
            addr.port(),
            ctx,
            Arc::new(()),
        ));
        app.add_stats(demo::Stats {
            protocol: "http",
            driver: DriverKind::Xdp.name(),
            metrics: metrics.clone(),
        });
        parts.push(("http", addr, metrics, shutdown, pool));
    }
    if let Some(addr) = redis_addr {
        let addr = stack_addr("redis", addr, x.ip)?;
        let mut ropts = opts.clone();
        ropts.app_workers = 0;
        let launch = ferry_netstack::prepare(addr, ropts, app.clone())
            .map_err(|e| format!("cannot prepare the redis listener: {e}"))?;
        let unix_ms = launch
            .workers
            .first()
            .map_or(0, |w| w.clock.unix_origin_nanos() / 1_000_000);
        let kv = redis::Kv::new(unix_ms, addr.port());
        let shared = RespShared::new(
            kv,
            ferry_resp::ServerConfig::default(),
            &launch,
            opts.app_workers,
        );
        let ferry_driver::Launch {
            workers,
            metrics,
            shutdown,
            app: pool,
            ..
        } = launch;
        let ctx = workers.into_iter().next().ok_or("no worker context")?;
        cpu = cpu.or(ctx.cpu);
        ports.push(SessionPort::<RespSession<redis::Kv>>::boxed(
            addr.port(),
            ctx,
            shared,
        ));
        app.add_stats(demo::Stats {
            protocol: "redis",
            driver: DriverKind::Xdp.name(),
            metrics: metrics.clone(),
        });
        parts.push(("redis", addr, metrics, shutdown, pool));
    }
    let cfg = ferry_xdp::XdpConfig::new(x.iface.clone());
    let mut spec = ferry_xdp::StackSpec::new(x.ip);
    spec.gateway = x.gateway;
    spec.mac = x.mac;
    let thread = ferry_xdp::spawn(cfg, spec, ports, cpu).map_err(|e| e.to_string())?;
    let mut thread = Some(thread);
    let mut handles = Vec::new();
    for (proto, addr, metrics, shutdown, pool) in parts {
        let threads = thread.take().into_iter().collect();
        let h = ServerHandle::new(
            DriverKind::Xdp,
            ListenAddr::Inet(addr),
            metrics,
            shutdown,
            threads,
            pool,
        );
        println!("ferry: listening {proto} {addr} driver=xdp");
        handles.push(h);
    }
    Ok(handles)
}
