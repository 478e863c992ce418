//! `ferry-chaos-relay --listen ADDR --upstream ADDR [--control ADDR] [--fault CMD]…`: a
//! fault-injecting TCP relay. Prints `ferry-chaos-relay: listening ADDR control=ADDR` once
//! ready; faults are given with `--fault` in the control language (see the library's
//! `control` module) and changed at runtime over the control socket. Stops on stdin EOF or
//! SIGTERM/SIGINT (default action).

use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use ferry_chaos_relay::control::{self, Command};
use ferry_chaos_relay::{Faults, Relay};

const USAGE: &str = "usage: ferry-chaos-relay --listen ADDR --upstream ADDR [--control ADDR] \
                     [--fault CMD]... [--exit-on-stdin-eof]";

fn main() -> ExitCode {
    let mut listen: Option<SocketAddr> = None;
    let mut upstream: Option<SocketAddr> = None;
    let mut control_addr: Option<SocketAddr> = None;
    let mut faults = Faults::none();
    let mut stdin_eof = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name}: value missing"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--listen" => listen = Some(parse_addr("--listen", &value("--listen")?)?),
                "--upstream" => upstream = Some(parse_addr("--upstream", &value("--upstream")?)?),
                "--control" => control_addr = Some(parse_addr("--control", &value("--control")?)?),
                "--fault" => {
                    let v = value("--fault")?;
                    match control::parse(&v) {
                        Ok(Command::Set(c)) => c.apply(&mut faults, std::time::Instant::now()),
                        Ok(_) => return Err(format!("--fault {v}: not a fault")),
                        Err(e) => return Err(format!("--fault {v}: {e}")),
                    }
                }
                "--exit-on-stdin-eof" => stdin_eof = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("ferry-chaos-relay: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        eprintln!("ferry-chaos-relay: --listen and --upstream are required\n{USAGE}");
        return ExitCode::from(2);
    };
    let relay = match Relay::start(listen, upstream, faults) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("ferry-chaos-relay: {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    let ctl = match control_addr {
        Some(a) => match control::serve(relay.clone(), a) {
            Ok(b) => b.to_string(),
            Err(e) => {
                eprintln!("ferry-chaos-relay: control {a}: {e}");
                return ExitCode::from(1);
            }
        },
        None => "none".into(),
    };
    println!(
        "ferry-chaos-relay: listening {} control={ctl}",
        relay.local_addr()
    );
    if stdin_eof {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    } else {
        loop {
            std::thread::park();
        }
    }
    ExitCode::SUCCESS
}

fn parse_addr(flag: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{flag}: invalid address `{v}` (use IP:PORT)"))
}
