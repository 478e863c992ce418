//! What the proxy crate's end-to-end tests share: a one-worker HTTP proxy on a free
//! loopback port, embedded through the library API.
#![allow(dead_code)]

use std::net::SocketAddr;

use ferry_driver::{DriverKind, ListenAddr, ServerOptions};
use ferry_proxy::{start, Protocol, Proxy, ProxyConfig, ProxyOptions};

/// A configuration for `upstreams` without active health checks.
pub fn config(upstreams: Vec<SocketAddr>) -> ProxyConfig {
    let mut cfg = ProxyConfig::new(upstreams);
    cfg.health = None;
    cfg
}

/// An HTTP proxy with one unpinned I/O worker on `driver`, and its address.
pub fn proxy(driver: DriverKind, cfg: ProxyConfig) -> (Proxy, SocketAddr) {
    let mut opts = ProxyOptions::new(
        "127.0.0.1:0".parse::<ListenAddr>().unwrap(),
        Protocol::Http,
        cfg,
    );
    opts.driver = driver;
    opts.server = ServerOptions {
        workers: 1,
        pin: false,
        ..ServerOptions::default()
    };
    let p = start(opts).unwrap();
    let addr = match &p.handle.local_addr {
        ListenAddr::Inet(a) => *a,
        other => panic!("{other:?}"),
    };
    (p, addr)
}
