//! What `ferry serve` does the same way on every userspace TCP/IP stack (ferry-netstack under
//! `--driver xdp` and `--driver dpdk`): check the listener addresses against the stack's,
//! prepare the HTTP and RESP ports, and hand out one `ServerHandle` per listener once the
//! driver's I/O thread runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;

use ferry_driver::h2::HttpAuto;
use ferry_driver::resp::{RespSession, RespShared};
use ferry_driver::{DriverKind, ListenAddr, ServerHandle, ServerOptions};
use ferry_netstack::{Cidr, Port, SessionPort};

use crate::{demo, redis};

/// Check a listener address against the stack's: its IP must be `--ip`'s or unspecified.
fn stack_addr(
    driver: DriverKind,
    what: &str,
    addr: SocketAddr,
    ip: Cidr,
) -> Result<SocketAddr, String> {
    match addr.ip() {
        IpAddr::V4(a) if a == ip.addr || a.is_unspecified() => {
            Ok(SocketAddr::new(ip.addr.into(), addr.port()))
        }
        other => Err(format!(
            "--{what} {addr}: with --driver {driver} the listener is on the stack's address {} (got {other})",
            ip.addr
        )),
    }
}

/// One listener on the stack, waiting for the I/O thread.
pub struct Part {
    proto: &'static str,
    addr: SocketAddr,
    metrics: Vec<Arc<ferry_driver::WorkerMetrics>>,
    shutdown: ferry_driver::Shutdown,
    pool: Option<ferry_driver::pool::AppPool>,
}

/// The listeners of one userspace stack: its ports (for the driver's I/O thread), the listeners'
/// bookkeeping, and the CPU the thread should be pinned to.
pub struct Stack {
    pub ports: Vec<Box<dyn Port>>,
    pub parts: Vec<Part>,
    pub cpu: Option<usize>,
}

/// Prepare the `--http` and `--redis` listeners of `driver` on the stack's address `ip`.
pub fn prepare(
    driver: DriverKind,
    ip: Cidr,
    http: Option<ListenAddr>,
    redis_addr: Option<SocketAddr>,
    opts: &ServerOptions,
    app: &Arc<demo::Demo>,
) -> Result<Stack, String> {
    let mut ports = Vec::new();
    let mut parts = Vec::new();
    let mut cpu = None;
    let name = driver.name();
    if let Some(addr) = http {
        let ListenAddr::Inet(addr) = addr else {
            return Err(format!(
                "--http: a unix: socket cannot be served by --driver {name}"
            ));
        };
        let addr = stack_addr(driver, "http", addr, ip)?;
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
            driver: name,
            metrics: metrics.clone(),
        });
        parts.push(Part {
            proto: "http",
            addr,
            metrics,
            shutdown,
            pool,
        });
    }
    if let Some(addr) = redis_addr {
        let addr = stack_addr(driver, "redis", addr, ip)?;
        let mut ropts = opts.clone();
        ropts.app_workers = 0;
        let launch = ferry_netstack::prepare(addr, ropts, app.clone())
            .map_err(|e| format!("cannot prepare the redis listener: {e}"))?;
        let unix_ms = launch
            .workers
            .first()
            .map_or(0, |w| w.clock.unix_origin_nanos() / 1_000_000);
        let kv = redis::Kv::new(unix_ms, addr.port());
        let shared = RespShared::new(kv, redis::server_config(), &launch, opts.app_workers);
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
            driver: name,
            metrics: metrics.clone(),
        });
        parts.push(Part {
            proto: "redis",
            addr,
            metrics,
            shutdown,
            pool,
        });
    }
    Ok(Stack { ports, parts, cpu })
}

/// The I/O thread runs: one handle per listener (the first owns the thread), after printing
/// the `listening` lines.
pub fn started(driver: DriverKind, parts: Vec<Part>, thread: JoinHandle<()>) -> Vec<ServerHandle> {
    let mut thread = Some(thread);
    let mut handles = Vec::new();
    for p in parts {
        let threads = thread.take().into_iter().collect();
        let h = ServerHandle::new(
            driver,
            ListenAddr::Inet(p.addr),
            p.metrics,
            p.shutdown,
            threads,
            p.pool,
        );
        println!("ferry: listening {} {} driver={driver}", p.proto, p.addr);
        handles.push(h);
    }
    handles
}
