//! `ferry_dpdk::start`: ferry-netstack's HTTP sessions over DPDK `net_af_packet` on a veth in
//! one network namespace, answering `curl` from the kernel in the other.
#![cfg(feature = "dpdk")]

mod netns;

use ferry_dpdk::{Cidr, Error, ServeConfig};
use ferry_driver::{HttpSession, Request, Response, ServerOptions, Service};
use ferry_netstack::SessionPort;
use netns::NetnsPair;
use std::sync::Arc;
use std::time::Duration;

struct App;
impl Service for App {
    fn call(&self, req: Request) -> Response {
        match req.path() {
            "/" => Response::text(200, "hello over dpdk\n"),
            "/big" => Response::text(200, vec![b'x'; 1 << 20]),
            "/echo" => Response::text(200, req.body().clone()),
            _ => Response::text(404, "not found\n"),
        }
    }
}

fn curl(pair: &NetnsPair, args: &[&str]) -> (bool, String) {
    let out = NetnsPair::command(&pair.b, "curl")
        .args(["-sS", "--max-time", "20", "--connect-timeout", "10"])
        .args(args)
        .output()
        .expect("spawn curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn curl_from_the_other_namespace() {
    let pair = match netns::create("s") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    netns::enter(&pair.a).unwrap();

    let ip: Cidr = format!("{}/{}", netns::OUR_IP, netns::PREFIX)
        .parse()
        .unwrap();
    let mut cfg = ServeConfig::new(format!("net_af_packet0,iface={}", pair.ifaces.0), ip);
    cfg.pool.size = 4095;
    // Sleep a little when idle: this machine's cores are shared.
    cfg.busy_poll = Duration::from_micros(200);
    let launch = ferry_netstack::prepare(
        (ip.addr, 80).into(),
        ServerOptions {
            pin: false,
            ..ServerOptions::default()
        },
        Arc::new(App),
    )
    .expect("prepare");
    let shutdown = launch.shutdown.clone();
    let ctx = launch.workers.into_iter().next().unwrap();
    let port = SessionPort::<HttpSession>::boxed(80, ctx, Arc::new(()));
    let server = ferry_dpdk::start(cfg.clone(), vec![port]).expect("start");
    assert_eq!(server.info().port_name, "net_af_packet0");
    assert_eq!(server.info().mac, pair.mac(false).unwrap());

    let url = format!("http://{}/", netns::OUR_IP);
    let (ok, out) = curl(&pair, &[&url]);
    assert!(ok, "curl failed: {out}");
    assert_eq!(out, "hello over dpdk\n");

    // Keep-alive: several requests on one connection.
    let (ok, out) = curl(&pair, &[&url, &url, &url]);
    assert!(ok, "curl failed: {out}");
    assert_eq!(out, "hello over dpdk\n".repeat(3));

    // A 1 MiB response (many segments, windows, ACKs) arrives whole.
    let big = format!("http://{}/big", netns::OUR_IP);
    let (ok, out) = curl(
        &pair,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{http_code}",
            &big,
        ],
    );
    assert!(ok, "curl failed: {out}");
    assert_eq!(out, format!("{} 200", 1 << 20));

    // A request body goes up.
    let echo = format!("http://{}/echo", netns::OUR_IP);
    let body = "y".repeat(200_000);
    let file = std::env::temp_dir().join(format!("ferry-dpdk-body-{}", std::process::id()));
    std::fs::write(&file, &body).expect("write body");
    let arg = format!("@{}", file.display());
    let (ok, out) = curl(&pair, &["--data-binary", &arg, &echo]);
    let _ = std::fs::remove_file(&file);
    assert!(ok, "curl failed: {}", &out[..out.len().min(300)]);
    assert!(out == body, "echoed {} bytes", out.len());

    // Nothing listens on 81: the stack resets the SYN.
    let (ok, out) = curl(&pair, &[&format!("http://{}:81/", netns::OUR_IP)]);
    assert!(!ok);
    assert!(out.contains("(7)"), "expected a refused connection: {out}");

    // One EAL per process.
    let again = ferry_dpdk::start(cfg, Vec::new());
    assert!(matches!(again, Err(Error::AlreadyInitialized)), "{again:?}");

    shutdown.trigger();
    server.wait().expect("clean shutdown");
}
