//! `ferry serve --driver dpdk --vdev DEV --ip CIDR`: the demo routes (`--http`) and the RESP
//! store (`--redis`) on a smoltcp stack (ferry-netstack) over a DPDK port, one pinned I/O
//! thread owning the EAL and the port. DEV is a DPDK vdev such as
//! `net_af_packet0,iface=veth0` (the interface must carry no kernel address) or
//! `net_tap0,iface=dtap0`. Needs a build with `--features dpdk`; otherwise it says so.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ferry_driver::h2::HttpAuto;
use ferry_driver::resp::{RespSession, RespShared};
use ferry_driver::{DriverKind, ListenAddr, ServerHandle, ServerOptions};
use ferry_netstack::{Cidr, SessionPort};

use crate::{demo, redis};

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

/// Check a listener address against the stack's: its IP must be `--ip`'s or unspecified.
fn stack_addr(what: &str, addr: SocketAddr, ip: Cidr) -> Result<SocketAddr, String> {
    match addr.ip() {
        IpAddr::V4(a) if a == ip.addr || a.is_unspecified() => {
            Ok(SocketAddr::new(ip.addr.into(), addr.port()))
        }
        other => Err(format!(
            "--{what} {addr}: with --driver dpdk the listener is on the stack's address {} (got {other})",
            ip.addr
        )),
    }
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
    let mut ports = Vec::new();
    let mut parts = Vec::new();
    let mut cpu = None;
    if let Some(addr) = http {
        let ListenAddr::Inet(addr) = addr else {
            return Err("--http: a unix: socket cannot be served by --driver dpdk".into());
        };
        let addr = stack_addr("http", addr, d.ip)?;
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
            driver: DriverKind::Dpdk.name(),
            metrics: metrics.clone(),
        });
        parts.push(("http", addr, metrics, shutdown, pool));
    }
    if let Some(addr) = redis_addr {
        let addr = stack_addr("redis", addr, d.ip)?;
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
            driver: DriverKind::Dpdk.name(),
            metrics: metrics.clone(),
        });
        parts.push(("redis", addr, metrics, shutdown, pool));
    }
    let mut cfg = ferry_dpdk::ServeConfig::new(d.vdev.clone(), d.ip);
    cfg.gateway = d.gateway;
    cfg.mac = d.mac;
    cfg.eal.core = cpu;
    let server = ferry_dpdk::start(cfg, ports).map_err(|e| e.to_string())?;
    let info = server.info().clone();
    let mut thread = Some(server.into_thread());
    let mut handles = Vec::new();
    for (proto, addr, metrics, shutdown, pool) in parts {
        let threads = thread.take().into_iter().collect();
        let h = ServerHandle::new(
            DriverKind::Dpdk,
            ListenAddr::Inet(addr),
            metrics,
            shutdown,
            threads,
            pool,
        );
        println!("ferry: listening {proto} {addr} driver=dpdk");
        handles.push(h);
    }
    let mac: Vec<String> = info.mac.iter().map(|b| format!("{b:02x}")).collect();
    tracing::info!(
        port = %info.port_name,
        mac = %mac.join(":"),
        lcore = info.lcore,
        "dpdk stack up"
    );
    Ok(handles)
}
