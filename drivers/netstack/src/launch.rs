//! A [`Launch`] for a listener on a userspace stack: everything `Launch::prepare` builds (worker
//! context, doorbell, application workers, metrics) except the kernel listening socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use ferry_driver::pool::start_app_workers;
use ferry_driver::{
    affinity, Clock, EventFd, Launch, ListenAddr, ServerOptions, Service, Shutdown, WorkerCtx,
    WorkerMetrics,
};

/// Prepare one I/O worker context for a listener on `local` served by a userspace stack.
///
/// `options.workers` is ignored: one stack owns one device queue, so there is one I/O worker;
/// `options.app_workers` application workers are started as usual. The result's `listeners`
/// is empty; hand `launch.workers` to a [`SessionPort`](crate::SessionPort).
pub fn prepare(
    local: SocketAddr,
    options: ServerOptions,
    service: Arc<dyn Service>,
) -> io::Result<Launch> {
    let mut options = options;
    options.workers = 1;
    let clock = Clock::new();
    let mut http = options.http.clone();
    http.date_origin_unix_nanos = Some(clock.unix_origin_nanos());
    let http = Arc::new(http);
    let shutdown = Shutdown::new();
    let allowed = if options.pin {
        affinity::allowed_cpus().unwrap_or_default()
    } else {
        Vec::new()
    };
    let metrics = vec![Arc::new(WorkerMetrics::default())];
    let waker = Arc::new(EventFd::new()?);
    shutdown.register(waker.clone());
    let mut replies = None;
    let mut jobs = Vec::new();
    let mut app = None;
    if options.app_workers > 0 {
        let cap = options.channel_capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded(cap);
        replies = Some(rx);
        let (senders, pool) = start_app_workers(
            options.app_workers,
            cap,
            service.clone(),
            options.max_buffered_body,
            vec![(tx, waker.clone())],
            metrics.clone(),
        );
        jobs = senders;
        app = Some(pool);
    }
    let options = Arc::new(options);
    let ctx = WorkerCtx {
        index: 0,
        cpu: affinity::cpu_for_worker(&allowed, 0),
        service,
        http,
        options,
        metrics: metrics[0].clone(),
        jobs,
        replies,
        waker,
        shutdown: shutdown.clone(),
        clock,
    };
    Ok(Launch {
        local_addr: ListenAddr::Inet(local),
        listeners: Vec::new(),
        workers: vec![ctx],
        metrics,
        shutdown,
        app,
    })
}
