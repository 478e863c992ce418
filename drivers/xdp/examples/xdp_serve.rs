//! Serve HTTP/1.1 over AF_XDP + smoltcp on an interface this process owns.
//!
//! ```text
//! xdp_serve IFACE CIDR [PORT] [SECONDS]
//! e.g. (inside a netns whose veth end has no address):
//! xdp_serve veth-srv 10.77.0.1/24 8080 30
//! ```
//! `GET /` answers `hello world`, `POST /echo` echoes the body. Stops after SECONDS (default 60).

use std::sync::Arc;
use std::time::Duration;

use ferry_driver::{HttpSession, Request, Response, ServerOptions, Service};
use ferry_netstack::SessionPort;
use ferry_xdp::{StackSpec, XdpConfig};

struct Demo;

impl Service for Demo {
    fn call(&self, req: Request) -> Response {
        match req.path() {
            "/" => Response::text(200, "hello world\n"),
            "/echo" => Response::text(200, req.body().clone()),
            _ => Response::text(404, "not found\n"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: xdp_serve IFACE CIDR [PORT] [SECONDS]");
        std::process::exit(2);
    }
    let ip: ferry_netstack::Cidr = match args[2].parse() {
        Ok(ip) => ip,
        Err(e) => {
            eprintln!("xdp_serve: {e}");
            std::process::exit(2);
        }
    };
    let port: u16 = args.get(3).and_then(|p| p.parse().ok()).unwrap_or(8080);
    let secs: u64 = args.get(4).and_then(|p| p.parse().ok()).unwrap_or(60);
    let opts = ServerOptions {
        pin: false,
        ..ServerOptions::default()
    };
    let launch =
        ferry_netstack::prepare((ip.addr, port).into(), opts, Arc::new(Demo)).expect("prepare");
    let shutdown = launch.shutdown.clone();
    let ctx = launch.workers.into_iter().next().expect("one worker");
    let ports = vec![SessionPort::<HttpSession>::boxed(port, ctx, Arc::new(()))];
    let thread = match ferry_xdp::spawn(XdpConfig::new(&args[1]), StackSpec::new(ip), ports, None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("xdp_serve: {e}");
            std::process::exit(1);
        }
    };
    println!("xdp_serve: listening {}:{port} on {}", ip.addr, args[1]);
    std::thread::sleep(Duration::from_secs(secs));
    shutdown.trigger();
    let _ = thread.join();
}
