//! The `ferry` command: `serve`, `probe`, `bench` (see CONTRACT.md).

mod bench;
mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_driver::select::{resolve, DriverKind};
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
    Probe,
    /// HTTP/1.1 load generator on Ferry's own client state machine.
    Bench(BenchArgs),
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
    /// HTTP/2 (not available yet).
    #[arg(long)]
    h2: bool,
    /// Streams per connection with --h2 (not available yet).
    #[arg(short = 'm', long)]
    streams: Option<u32>,
    /// Redis tests, e.g. set,get (not available yet).
    #[arg(short = 't', long)]
    tests: Option<String>,
    /// Print one JSON object: requests, errors, duration_s, rps, latency_us{p50,p90,p99,p999,max}.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// Log format on stderr: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// HTTP listener: IP:PORT, [IPv6]:PORT or unix:PATH [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    http: Option<ListenAddr>,
    /// RESP listener address (not available yet).
    #[arg(long, value_name = "ADDR")]
    redis: Option<SocketAddr>,
    /// Event loop: auto, epoll or uring (FERRY_DRIVER overrides auto) [default: auto].
    #[arg(long, value_name = "DRIVER")]
    driver: Option<DriverKind>,
    /// I/O workers, pinned one per allowed CPU [default: allowed CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: Option<u32>,
    /// Application worker threads; 0 runs the application on the I/O workers [default: 0].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=4096))]
    app_workers: Option<u32>,
    /// How long in-flight requests may finish after SIGINT/SIGTERM (e.g. 30s, 500ms) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// TOML file with the same settings plus limits and timeouts.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `--config FILE`: the flags' settings plus limits and timeouts. Flags win over the file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http: Option<String>,
    driver: Option<String>,
    workers: Option<u32>,
    app_workers: Option<u32>,
    drain_timeout: Option<String>,
    max_connections: Option<usize>,
    max_body: Option<u64>,
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration `{s}`"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in `{s}` (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration `{s}`"));
    }
    Ok(Duration::from_secs_f64(secs))
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
        Command::Probe => probe(),
        Command::Bench(args) => bench(args),
        Command::Serve(args) => serve(args),
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    if args.h2 || args.streams.is_some() {
        return usage_error("--h2: HTTP/2 load is not available yet");
    }
    if args.tests.is_some() {
        return usage_error("--tests: Redis load is not available yet");
    }
    let cfg = bench::BenchConfig {
        url: args.url,
        connections: args.connections as usize,
        threads: args.threads as usize,
        duration: args.duration,
        requests: args.requests,
        pipeline: args.pipeline as usize,
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

fn probe() -> ExitCode {
    println!(
        "{:<10} {:<10} {:<28} reason",
        "transport", "available", "capabilities"
    );
    for row in ferry_driver::probe() {
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
            println!("auto: {k}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry: FERRY_DRIVER: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry: {msg}");
    ExitCode::from(2)
}

fn serve(args: ServeArgs) -> ExitCode {
    let file = match &args.config {
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => return usage_error(format_args!("--config {}: {e}", path.display())),
            };
            match toml::from_str::<FileConfig>(&text) {
                Ok(c) => c,
                Err(e) => {
                    let msg = e
                        .message()
                        .lines()
                        .next()
                        .unwrap_or("invalid TOML")
                        .to_string();
                    return usage_error(format_args!("--config {}: {msg}", path.display()));
                }
            }
        }
        None => FileConfig::default(),
    };
    init_logs(args.log_format.or(file.log_format).unwrap_or_default());
    if args.redis.is_some() {
        return usage_error("--redis: the RESP listener is not available yet");
    }
    let addr = match (args.http, &file.http) {
        (Some(a), _) => a,
        (None, Some(s)) => match s.parse::<ListenAddr>() {
            Ok(a) => a,
            Err(e) => return usage_error(format_args!("--config: http: {e}")),
        },
        (None, None) => ListenAddr::Inet(SocketAddr::from(([127, 0, 0, 1], 8080))),
    };
    let requested = match (args.driver, &file.driver) {
        (Some(d), _) => d,
        (None, Some(s)) => match s.parse() {
            Ok(d) => d,
            Err(e) => return usage_error(format_args!("--config: driver: {e}")),
        },
        (None, None) => DriverKind::Auto,
    };
    let env = std::env::var("FERRY_DRIVER").ok();
    let driver = match resolve(requested, env.as_deref()) {
        Ok(d) => d,
        Err(e) => return usage_error(format_args!("FERRY_DRIVER: {e}")),
    };

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
    let launch = match Launch::prepare(addr, opts, app.clone()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(1);
        }
    };
    let started: std::io::Result<ServerHandle> = match driver {
        DriverKind::Uring => ferry_uring::start(launch),
        _ => ferry_epoll::start(launch),
    };
    let handle = match started {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ferry: cannot start the {driver} driver: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = app.stats.set(demo::Stats {
        driver: handle.driver.name(),
        metrics: handle.metrics.clone(),
    });
    println!(
        "ferry: listening http {} driver={}",
        handle.local_addr,
        handle.driver.name()
    );

    let shutdown = handle.shutdown.clone();
    let mut signals = signals;
    let sig_handle = signals.handle();
    std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for _ in signals.forever() {
                seen += 1;
                if seen == 1 {
                    shutdown.trigger();
                } else {
                    eprintln!("ferry: second signal, exiting without draining");
                    std::process::exit(1);
                }
            }
        })
        .ok();
    let bad = handle.wait();
    sig_handle.close();
    if bad > 0 {
        eprintln!("ferry: {bad} worker thread(s) failed");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
