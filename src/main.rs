//! The `ferry` command: `serve`, `probe`, `bench` (see CONTRACT.md).

mod bench;
mod bench_redis;
mod config_file;
mod demo;
mod load;
mod proxy_cmd;
mod redis;
mod serve_dpdk;
mod serve_stack;
mod serve_xdp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_driver::h2::HttpAuto;
use ferry_driver::resp::{RespSession, RespShared};
use ferry_driver::select::{resolve, resolve_override, DriverKind};
use ferry_driver::{Launch, ListenAddr, ServerHandle, ServerOptions};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Application protocols over every fast Linux I/O path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the demo server.
    Serve(ServeArgs),
    /// Show which transports this host supports and which one `auto` picks.
    Probe(ProbeArgs),
    /// Load generator on Ferry's own client state machines (http://, redis://).
    Bench(BenchArgs),
    /// Reverse proxy / load balancer (HTTP) or pooling proxy (Redis) in front of upstreams.
    Proxy(Box<proxy_cmd::ProxyArgs>),
}

/// How `ferry serve` writes its logs (stderr).
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => b.json().try_init(),
    };
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        // One log line per panic (the application's panics are caught and answered 500).
        std::panic::set_hook(Box::new(|info| {
            let p = info.payload();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            tracing::error!("thread {thread} panicked at {at}: {msg}");
        }));
    }
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Target URL (http://HOST:PORT/PATH).
    url: String,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: u32,
    /// How long to run (e.g. 10s, 500ms); ignored with --requests.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many completed requests instead of after --duration.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Requests in flight per connection (HTTP/1.1 pipelining).
    #[arg(short = 'P', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pipeline: u32,
    /// Load threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// HTTP/2 over cleartext (h2c, prior knowledge) for http:// URLs.
    #[arg(long)]
    h2: bool,
    /// Concurrent streams per connection with --h2 [default: 1].
    #[arg(short = 'm', long)]
    streams: Option<u32>,
    /// Redis tests (redis:// URLs), comma-separated: ping,set,get,incr,lpush,rpush,lpop,rpop,
    /// sadd,hset,spop,mset [default: all of them].
    #[arg(short = 't', long)]
    tests: Option<String>,
    /// Value size in bytes for Redis SET/LPUSH/RPUSH/HSET/MSET.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    data_size: u32,
    /// Print one JSON object: requests, errors, duration_s, rps, latency_us{p50,p90,p99,p999,max}.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// Log format on stderr: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Interface a kernel-bypass driver owns (--driver xdp; implies it under auto). It must
    /// carry no kernel IP address: the userspace stack answers ARP and TCP itself.
    #[arg(long, value_name = "IFACE")]
    iface: Option<String>,
    /// The userspace stack's IPv4 address and subnet on --iface, e.g. 10.0.0.1/24.
    #[arg(long, value_name = "CIDR")]
    ip: Option<ferry_netstack::Cidr>,
    /// The userspace stack's default gateway.
    #[arg(long, value_name = "IP")]
    gateway: Option<std::net::Ipv4Addr>,
    /// The userspace stack's MAC address [default: the interface's].
    #[arg(long, value_name = "MAC", value_parser = parse_mac_arg)]
    mac: Option<[u8; 6]>,
    /// DPDK device --driver dpdk owns (implies it under auto), e.g. net_af_packet0,iface=veth0
    /// or net_tap0,iface=dtap0; the stack's address is --ip. Needs a build with --features dpdk.
    #[arg(long, value_name = "DEVARGS")]
    vdev: Option<String>,
    /// HTTP listener: IP:PORT, [IPv6]:PORT or unix:PATH [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    http: Option<ListenAddr>,
    /// RESP (Redis) listener: IP:PORT. Without --http (flag or config) only this listener runs.
    #[arg(long, value_name = "ADDR")]
    redis: Option<SocketAddr>,
    /// Event loop: auto, epoll or uring (FERRY_DRIVER overrides auto) [default: auto].
    #[arg(long, value_name = "DRIVER")]
    driver: Option<DriverKind>,
    /// Event loop of the HTTP listener only: auto, epoll or uring [default: --driver's].
    #[arg(long, value_name = "DRIVER")]
    http_driver: Option<DriverKind>,
    /// Event loop of the RESP listener only: auto, epoll or uring [default: --driver's].
    #[arg(long, value_name = "DRIVER")]
    redis_driver: Option<DriverKind>,
    /// I/O workers, pinned one per allowed CPU [default: allowed CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: Option<u32>,
    /// Application worker threads; 0 runs the application on the I/O workers [default: 0].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=4096))]
    app_workers: Option<u32>,
    /// How long in-flight requests may finish after SIGINT/SIGTERM (e.g. 30s, 500ms) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// Busy polling: after activity an I/O worker polls without sleeping for this long
    /// before it blocks (e.g. 50us; 0: off). Lower latency across cores for CPU time [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    busy_poll: Option<Duration>,
    /// TOML file with the same settings plus limits and timeouts.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `--config FILE`: the flags' settings plus limits and timeouts. Flags win over the file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http: Option<String>,
    redis: Option<String>,
    driver: Option<String>,
    http_driver: Option<String>,
    redis_driver: Option<String>,
    uring_registered_files: Option<bool>,
    uring_send_zc: Option<bool>,
    workers: Option<u32>,
    app_workers: Option<u32>,
    drain_timeout: Option<String>,
    busy_poll: Option<String>,
    max_connections: Option<usize>,
    max_body: Option<u64>,
    max_discard_body: Option<u64>,
    max_buffered_body: Option<usize>,
    max_head_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_pipelined: Option<usize>,
    header_read_timeout: Option<String>,
    keep_alive_timeout: Option<String>,
    channel_capacity: Option<usize>,
    nodelay: Option<bool>,
    backlog: Option<i32>,
    recv_buffer: Option<usize>,
    send_buffer: Option<usize>,
    pin: Option<bool>,
    log_format: Option<LogFormat>,
}

fn parse_mac_arg(s: &str) -> Result<[u8; 6], String> {
    ferry_netstack::parse_mac(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration `{s}`"))?;
    let secs = match unit {
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in `{s}` (use us, ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration `{s}`"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `println!` that ignores a closed stdout (a supervisor that stopped reading must not make
/// the server panic).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line naming the flag.
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: invalid arguments");
            eprintln!("ferry: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Probe(args) => probe(args),
        Command::Bench(args) => bench(args),
        Command::Proxy(args) => proxy_cmd::proxy(*args),
        Command::Serve(args) => serve(args),
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    if args.streams.is_some() && !args.h2 {
        return usage_error("-m/--streams: only with --h2");
    }
    if args.url.starts_with("redis://") {
        let tests = match bench_redis::parse_tests(
            args.tests.as_deref().unwrap_or(bench_redis::DEFAULT_TESTS),
        ) {
            Ok(t) => t,
            Err(e) => return usage_error(e),
        };
        let cfg = bench_redis::RedisBenchConfig {
            url: args.url,
            connections: args.connections as usize,
            threads: args.threads as usize,
            duration: args.duration,
            requests: args.requests,
            pipeline: args.pipeline as usize,
            tests,
            data_size: args.data_size as usize,
        };
        return match bench_redis::run(&cfg).and_then(|r| bench_redis::report(&cfg, &r, args.json)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry: bench: {e}");
                ExitCode::from(1)
            }
        };
    }
    if args.tests.is_some() {
        return usage_error("--tests: only for redis:// URLs");
    }
    let cfg = bench::BenchConfig {
        url: args.url,
        connections: args.connections as usize,
        threads: args.threads as usize,
        duration: args.duration,
        requests: args.requests,
        pipeline: if args.h2 {
            args.streams.unwrap_or(1).max(1) as usize
        } else {
            args.pipeline as usize
        },
        h2: args.h2,
    };
    match bench::run(cfg.clone()) {
        Ok(r) => {
            bench::report(&cfg, &r, args.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry: bench: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(clap::Args, Debug, Default)]
struct ProbeArgs {
    /// Really set up AF_XDP on this interface (attach the XDP program, bind a socket to queue
    /// 0, then detach): needs root; frames on that queue go to the probe for a moment.
    #[arg(long, value_name = "IFACE")]
    iface: Option<String>,
}

fn probe(args: ProbeArgs) -> ExitCode {
    println!(
        "{:<10} {:<10} {:<28} reason",
        "transport", "available", "capabilities"
    );
    let mut xdp_ok = false;
    for mut row in ferry_driver::probe() {
        if row.name == "AF_XDP" {
            if let Some(iface) = &args.iface {
                match ferry_xdp::probe(Some(iface)) {
                    Ok(why) => (row.available, row.reason) = (true, why),
                    Err(why) => (row.available, row.reason) = (false, why),
                }
                xdp_ok = row.available;
            }
        }
        if row.name == "DPDK" {
            // Really starts and stops an EAL (--no-huge, no devices) when built with `dpdk`.
            match ferry_dpdk::probe() {
                Ok(why) => {
                    (row.available, row.reason) = (true, why);
                    row.capabilities = vec!["userspace-tcp", "poll-mode"];
                }
                Err(why) => (row.available, row.reason) = (false, why),
            }
        }
        if row.name == "io_uring" {
            // Really sets up a ring with a buffer ring and asks the kernel for its opcodes.
            match ferry_uring::probe_report() {
                Ok(why) => (row.available, row.reason) = (true, why),
                Err(why) => (row.available, row.reason) = (false, why),
            }
        }
        if row.name == "raw" {
            (row.available, row.reason, row.capabilities) = probe_raw();
        }
        if row.name == "RDMA" {
            (row.available, row.reason) = probe_rdma();
        }
        println!(
            "{:<10} {:<10} {:<28} {}",
            row.name,
            if row.available { "yes" } else { "no" },
            if row.capabilities.is_empty() {
                "-".to_string()
            } else {
                row.capabilities.join(",")
            },
            row.reason
        );
    }
    let env = std::env::var("FERRY_DRIVER").ok();
    match resolve(DriverKind::Auto, env.as_deref()) {
        Ok(k) => {
            match (&args.iface, xdp_ok) {
                (Some(iface), true) => {
                    println!("auto: xdp (--iface {iface}); {k} for kernel addresses")
                }
                _ => println!("auto: {k}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry: FERRY_DRIVER: {e}");
            ExitCode::from(2)
        }
    }
}

/// `ferry serve --driver raw --iface IF`: ferry-raw's framed echo service on IF until SIGINT or
/// SIGTERM (exit 0).
fn serve_raw(iface: &str) -> ExitCode {
    use std::sync::atomic::AtomicBool;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("ferry: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    let mut server = match ferry_raw::echo::EchoServer::open(iface, ferry_raw::RawConfig::default())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry: --driver raw: cannot open {iface}: {e}");
            return ExitCode::from(1);
        }
    };
    let mac: Vec<String> = server.mac().iter().map(|b| format!("{b:02x}")).collect();
    say!(
        "ferry: listening raw {iface} driver=raw mac={} ethertype=0x88b5",
        mac.join(":")
    );
    match server.run(&stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: --driver raw: {e}");
            ExitCode::from(1)
        }
    }
}

/// The raw AF_PACKET row: really opens a packet socket and selects TPACKET_V3 on it.
fn probe_raw() -> (bool, String, Vec<&'static str>) {
    match ferry_raw::socket::probe() {
        Ok(()) => (
            true,
            "AF_PACKET socket with a TPACKET_V3 ring works: ferry-raw carries framed messages \
             on an interface (`serve --driver raw --iface IF`: framed echo, not TCP)"
                .into(),
            vec!["tpacket-v3", "tpacket-v2", "framed"],
        ),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => (
            false,
            format!("socket(AF_PACKET) failed: {e} (needs CAP_NET_RAW: run as root)"),
            Vec::new(),
        ),
        Err(e) => (
            false,
            format!("AF_PACKET/TPACKET_V3 unavailable: {e} (kernel without CONFIG_PACKET?)"),
            Vec::new(),
        ),
    }
}

/// The RDMA row: the devices libibverbs sees (feature `rdma`), else what sysfs says.
fn probe_rdma() -> (bool, String) {
    use ferry_rdma::RdmaError;
    match ferry_rdma::device::device_names() {
        Ok(names) => (
            true,
            format!(
                "RDMA device(s) {} (ferry-rdma RC queue pairs; untested on hardware)",
                names.join(", ")
            ),
        ),
        Err(RdmaError::FeatureDisabled) => {
            let present: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if present.is_empty() {
                (false, ferry_rdma::device::no_devices_reason())
            } else {
                (
                    false,
                    format!(
                        "RDMA device(s) {} present, but this build lacks the `rdma` feature \
                         (cargo build --features rdma)",
                        present.join(", ")
                    ),
                )
            }
        }
        Err(e) => (false, e.to_string()),
    }
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry: {msg}");
    ExitCode::from(2)
}

fn serve(args: ServeArgs) -> ExitCode {
    let file = match &args.config {
        Some(path) => match config_file::load::<FileConfig>(path) {
            Ok(c) => c,
            Err(e) => return usage_error(e),
        },
        None => FileConfig::default(),
    };
    init_logs(args.log_format.or(file.log_format).unwrap_or_default());
    let listeners_given = args.http.is_some() || args.redis.is_some();
    let redis_addr = match (args.redis, &file.redis) {
        (Some(a), _) => Some(a),
        (None, Some(s)) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => return usage_error(format_args!("--config: redis: {e}")),
        },
        (None, None) => None,
    };
    let http_addr = match (args.http, &file.http) {
        (Some(a), _) => Some(a),
        (None, Some(s)) => match s.parse::<ListenAddr>() {
            Ok(a) => Some(a),
            Err(e) => return usage_error(format_args!("--config: http: {e}")),
        },
        (None, None) if redis_addr.is_some() => None,
        (None, None) => Some(ListenAddr::Inet(SocketAddr::new(
            args.ip
                .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.addr.into()),
            8080,
        ))),
    };
    let requested = match (args.driver, &file.driver) {
        (Some(d), _) => d,
        (None, Some(s)) => match s.parse() {
            Ok(d) => d,
            Err(e) => return usage_error(format_args!("--config: driver: {e}")),
        },
        (None, None) => DriverKind::Auto,
    };
    // An interface to own picks the kernel-bypass driver; a kernel address never does.
    let requested = match (requested, &args.iface) {
        (DriverKind::Auto, Some(_)) => DriverKind::Xdp,
        (DriverKind::Auto, None) if args.vdev.is_some() => DriverKind::Dpdk,
        (r, _) => r,
    };
    let env = std::env::var("FERRY_DRIVER").ok();
    let driver = match resolve(requested, env.as_deref()) {
        Ok(d) => d,
        Err(e) => return usage_error(format_args!("FERRY_DRIVER: {e}")),
    };
    // Per-listener overrides (flag, then config file) of the server's driver.
    let mut per_listener = [None, None];
    for (i, (name, flag, key)) in [
        ("http", args.http_driver, &file.http_driver),
        ("redis", args.redis_driver, &file.redis_driver),
    ]
    .into_iter()
    .enumerate()
    {
        let own = match (flag, key) {
            (Some(d), _) => Some(d),
            (None, Some(s)) => match s.parse() {
                Ok(d) => Some(d),
                Err(e) => return usage_error(format_args!("--config: {name}_driver: {e}")),
            },
            (None, None) => None,
        };
        per_listener[i] = match resolve_override(own, driver, env.as_deref()) {
            Ok(d) => Some(d),
            Err(e) => return usage_error(format_args!("--{name}-driver: {e}")),
        };
    }
    let [http_driver, redis_driver] = per_listener.map(|d| d.unwrap_or(driver));
    if driver == DriverKind::Raw {
        let Some(iface) = args.iface.as_deref() else {
            return usage_error("--driver raw: needs --iface IFACE");
        };
        if args.ip.is_some() || args.vdev.is_some() || listeners_given {
            return usage_error(
                "--driver raw: serves the framed echo protocol on --iface only (no --ip, --vdev, --http or --redis)",
            );
        }
        return serve_raw(iface);
    }
    if driver == DriverKind::Dpdk {
        if args.iface.is_some() {
            return usage_error("--iface: only with --driver xdp (dpdk takes --vdev)");
        }
    } else if args.vdev.is_some() {
        return usage_error("--vdev: only with --driver dpdk");
    } else if driver != DriverKind::Xdp && (args.iface.is_some() || args.ip.is_some()) {
        return usage_error("--iface/--ip: only with --driver xdp");
    }

    let mut opts = ServerOptions::default();
    if let Some(n) = args.workers.or(file.workers) {
        opts.workers = n.max(1) as usize;
    }
    if let Some(n) = args.app_workers.or(file.app_workers) {
        opts.app_workers = n as usize;
    }
    if let Some(d) = args.drain_timeout {
        opts.drain_timeout = d;
    } else if let Some(s) = &file.drain_timeout {
        match parse_duration(s) {
            Ok(d) => opts.drain_timeout = d,
            Err(e) => return usage_error(format_args!("--config: drain_timeout: {e}")),
        }
    }
    if let Some(d) = args.busy_poll {
        opts.busy_poll = Some(d);
    } else if let Some(s) = &file.busy_poll {
        match parse_duration(s) {
            Ok(d) => opts.busy_poll = Some(d),
            Err(e) => return usage_error(format_args!("--config: busy_poll: {e}")),
        }
    }
    opts.busy_poll = opts.busy_poll.filter(|d| !d.is_zero());
    for (name, v, slot) in [
        (
            "header_read_timeout",
            &file.header_read_timeout,
            &mut opts.http.header_read_timeout,
        ),
        (
            "keep_alive_timeout",
            &file.keep_alive_timeout,
            &mut opts.http.keep_alive_timeout,
        ),
    ] {
        if let Some(s) = v {
            match parse_duration(s) {
                Ok(d) => *slot = Some(d),
                Err(e) => return usage_error(format_args!("--config: {name}: {e}")),
            }
        }
    }
    if let Some(v) = file.max_connections {
        opts.max_connections = v.max(1);
    }
    if let Some(v) = file.max_body {
        opts.http.max_body = v;
    }
    if let Some(v) = file.max_discard_body {
        opts.http.max_discard_body = v;
    }
    if let Some(v) = file.max_buffered_body {
        opts.max_buffered_body = v;
    }
    if let Some(v) = file.max_head_bytes {
        opts.http.max_head_bytes = v;
    }
    if let Some(v) = file.max_headers {
        opts.http.max_headers = v.min(ferry_http1::MAX_HEADERS_CAP);
    }
    if let Some(v) = file.max_pipelined {
        opts.http.max_pipelined = v.max(1);
    }
    if let Some(v) = file.channel_capacity {
        opts.channel_capacity = v.max(1);
    }
    if let Some(v) = file.nodelay {
        opts.listen.nodelay = v;
    }
    if let Some(v) = file.backlog {
        opts.listen.backlog = v;
    }
    opts.listen.recv_buffer = file.recv_buffer.or(opts.listen.recv_buffer);
    opts.listen.send_buffer = file.send_buffer.or(opts.listen.send_buffer);
    if let Some(v) = file.pin {
        opts.pin = v;
    }
    opts.uring.registered_files = file.uring_registered_files.unwrap_or(false);
    opts.uring.send_zc = file.uring_send_zc.unwrap_or(false);

    // Signals first, so a SIGTERM right after the listening line is a graceful stop.
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };

    let app = Arc::new(demo::Demo::new());
    let mut handles: Vec<ServerHandle> = Vec::new();
    let (http_addr, redis_addr) = if driver == DriverKind::Xdp {
        let (Some(iface), Some(ip)) = (args.iface.clone(), args.ip) else {
            return usage_error("--driver xdp: needs --iface IFACE and --ip CIDR");
        };
        let x = serve_xdp::XdpArgs {
            iface,
            ip,
            gateway: args.gateway,
            mac: args.mac,
        };
        match serve_xdp::start(&x, http_addr, redis_addr, &opts, &app) {
            Ok(hs) => handles.extend(hs),
            Err(e) => {
                eprintln!("ferry: {e}");
                return ExitCode::from(1);
            }
        }
        (None, None)
    } else if driver == DriverKind::Dpdk {
        let (Some(vdev), Some(ip)) = (args.vdev.clone(), args.ip) else {
            return usage_error("--driver dpdk: needs --vdev DEVARGS and --ip CIDR");
        };
        let d = serve_dpdk::DpdkArgs {
            vdev,
            ip,
            gateway: args.gateway,
            mac: args.mac,
        };
        match serve_dpdk::start(&d, http_addr, redis_addr, &opts, &app) {
            Ok(hs) => handles.extend(hs),
            Err(e) => {
                eprintln!("ferry: {e}");
                return ExitCode::from(1);
            }
        }
        (None, None)
    } else {
        (http_addr, redis_addr)
    };
    if let Some(addr) = http_addr {
        let launch = match Launch::prepare(addr, opts.clone(), app.clone()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ferry: {e}");
                return ExitCode::from(1);
            }
        };
        let driver = http_driver;
        let started: std::io::Result<ServerHandle> = match driver {
            DriverKind::Uring => ferry_uring::start_with::<HttpAuto>(launch, Arc::new(())),
            _ => ferry_epoll::start_with::<HttpAuto>(launch, Arc::new(())),
        };
        let handle = match started {
            Ok(h) => h,
            Err(e) => {
                eprintln!("ferry: cannot start the {driver} driver: {e}");
                return ExitCode::from(1);
            }
        };
        app.add_stats(demo::Stats {
            protocol: "http",
            driver: handle.driver.name(),
            metrics: handle.metrics.clone(),
        });
        say!(
            "ferry: listening http {} driver={}",
            handle.local_addr,
            handle.driver.name()
        );
        handles.push(handle);
    }
    if let Some(addr) = redis_addr {
        let mut ropts = opts.clone();
        // The RESP application workers belong to the RESP server state, not the HTTP pool.
        ropts.app_workers = 0;
        let launch = match Launch::prepare(addr, ropts, app.clone()) {
            Ok(l) => l,
            Err(e) => {
                for h in handles {
                    h.shutdown.trigger();
                    h.wait();
                }
                eprintln!("ferry: {e}");
                return ExitCode::from(1);
            }
        };
        let unix_ms = launch
            .workers
            .first()
            .map_or(0, |w| w.clock.unix_origin_nanos() / 1_000_000);
        let port = match &launch.local_addr {
            ListenAddr::Inet(a) => a.port(),
            _ => 6379,
        };
        let kv = redis::Kv::new(unix_ms, port);
        let shared = RespShared::new(kv, redis::server_config(), &launch, opts.app_workers);
        type Resp = RespSession<redis::Kv>;
        let driver = redis_driver;
        let started: std::io::Result<ServerHandle> = match driver {
            DriverKind::Uring => ferry_uring::start_with::<Resp>(launch, shared),
            _ => ferry_epoll::start_with::<Resp>(launch, shared),
        };
        let handle = match started {
            Ok(h) => h,
            Err(e) => {
                eprintln!("ferry: cannot start the {driver} driver: {e}");
                return ExitCode::from(1);
            }
        };
        app.add_stats(demo::Stats {
            protocol: "redis",
            driver: handle.driver.name(),
            metrics: handle.metrics.clone(),
        });
        say!(
            "ferry: listening redis {} driver={}",
            handle.local_addr,
            handle.driver.name()
        );
        handles.push(handle);
    }
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }

    let stops: Vec<_> = handles.iter().map(|h| h.shutdown.clone()).collect();
    let mut signals = signals;
    let sig_handle = signals.handle();
    std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for _ in signals.forever() {
                seen += 1;
                if seen == 1 {
                    for s in &stops {
                        s.trigger();
                    }
                } else {
                    eprintln!("ferry: second signal, exiting without draining");
                    std::process::exit(1);
                }
            }
        })
        .ok();
    let bad: usize = handles.into_iter().map(|h| h.wait()).sum();
    sig_handle.close();
    if bad > 0 {
        eprintln!("ferry: {bad} worker thread(s) failed");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_every_unit_and_refuse_the_rest() {
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("50µs"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5ns").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("x").is_err());
    }
}
