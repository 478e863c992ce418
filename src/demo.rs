//! The demo application behind `ferry serve`: hello world, health, metrics, streaming echo.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ferry_driver::metrics::{quantile_us, LATENCY_BOUNDS_US};
use ferry_driver::{
    BodyStream, HeadBody, Method, Request, Responder, Response, Service, WorkerMetrics,
};

/// One listener's workers, as `/metrics` and `/health` report them.
pub struct Stats {
    /// `http` or `redis`: the `protocol` label.
    pub protocol: &'static str,
    pub driver: &'static str,
    pub metrics: Vec<Arc<WorkerMetrics>>,
}

/// The demo routes.
pub struct Demo {
    /// Every listener of this process, added as each one starts.
    stats: RwLock<Vec<Stats>>,
    /// `GET /__panic` panics (only when `FERRY_DEMO_PANIC=1`), to show panics are contained.
    pub panic_route: bool,
}

impl Demo {
    pub fn new() -> Demo {
        Demo {
            stats: RwLock::new(Vec::new()),
            panic_route: std::env::var("FERRY_DEMO_PANIC").is_ok_and(|v| v == "1"),
        }
    }

    /// A listener started: report its workers too.
    pub fn add_stats(&self, stats: Stats) {
        self.stats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(stats);
    }

    fn health(&self) -> Response {
        let groups = self.stats.read().unwrap_or_else(|e| e.into_inner());
        let (driver, workers, active) = match groups.first() {
            Some(s) => (
                s.driver,
                s.metrics.len(),
                groups
                    .iter()
                    .flat_map(|g| &g.metrics)
                    .map(|m| m.active())
                    .sum::<u64>(),
            ),
            None => ("unknown", 0, 0),
        };
        let body = format!("{{\"status\":\"ok\",\"driver\":\"{driver}\",\"workers\":{workers},\"connections\":{active}}}\n");
        Response::new(200)
            .header("content-type", Bytes::from_static(b"application/json"))
            .body(ferry_driver::Body::Full(body.into()))
    }

    fn metrics(&self) -> Response {
        let mut out = String::with_capacity(4096);
        let groups = self.stats.read().unwrap_or_else(|e| e.into_inner());
        render_metrics(&mut out, &groups);
        Response::new(200)
            .header(
                "content-type",
                Bytes::from_static(b"text/plain; version=0.0.4"),
            )
            .body(ferry_driver::Body::Full(out.into()))
    }
}

fn render_metrics(out: &mut String, groups: &[Stats]) {
    type Get = fn(&WorkerMetrics) -> u64;
    let counters: [(&str, &str, &str, Get); 12] = [
        (
            "ferry_requests_total",
            "counter",
            "Requests received.",
            |m| m.requests.load(Relaxed),
        ),
        (
            "ferry_responses_total",
            "counter",
            "Responses completed.",
            |m| m.responses.load(Relaxed),
        ),
        (
            "ferry_bytes_received_total",
            "counter",
            "Bytes read from sockets.",
            |m| m.bytes_in.load(Relaxed),
        ),
        (
            "ferry_bytes_sent_total",
            "counter",
            "Bytes written to sockets.",
            |m| m.bytes_out.load(Relaxed),
        ),
        (
            "ferry_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |m| m.accepted.load(Relaxed),
        ),
        (
            "ferry_connections_closed_total",
            "counter",
            "Connections closed.",
            |m| m.closed.load(Relaxed),
        ),
        (
            "ferry_connections_active",
            "gauge",
            "Open connections.",
            |m| m.active(),
        ),
        (
            "ferry_protocol_errors_total",
            "counter",
            "Protocol errors answered by the connection.",
            |m| m.protocol_errors.load(Relaxed),
        ),
        (
            "ferry_timeouts_total",
            "counter",
            "Header-read and keep-alive timeouts.",
            |m| m.timeouts.load(Relaxed),
        ),
        (
            "ferry_panics_total",
            "counter",
            "Panics caught in the application.",
            |m| m.panics.load(Relaxed),
        ),
        (
            "ferry_accept_errors_total",
            "counter",
            "Accept failures that paused accepting.",
            |m| m.accept_errors.load(Relaxed),
        ),
        (
            "ferry_backpressure_total",
            "counter",
            "Reads paused by a full application channel.",
            |m| m.backpressure.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in groups {
            let (p, d) = (s.protocol, s.driver);
            for (i, m) in s.metrics.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{protocol=\"{p}\",driver=\"{d}\",worker=\"{i}\"}} {}",
                    get(m)
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP ferry_event_loop_iterations_total Event loop wake-ups.\n# TYPE ferry_event_loop_iterations_total counter");
    for s in groups {
        let (p, d) = (s.protocol, s.driver);
        for (i, m) in s.metrics.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_event_loop_iterations_total{{protocol=\"{p}\",driver=\"{d}\",worker=\"{i}\"}} {}",
                m.loops.load(Relaxed)
            );
        }
    }
    for s in groups.iter().filter(|s| s.protocol == "http") {
        render_latency(out, s);
    }
}

/// The request latency histogram (over all of one listener's workers) and its quantiles.
fn render_latency(out: &mut String, s: &Stats) {
    let d = s.driver;
    // Latency: one histogram over all workers.
    let mut buckets = vec![0u64; LATENCY_BOUNDS_US.len() + 1];
    let mut sum_us = 0;
    for m in &s.metrics {
        let (b, sum) = m.latency();
        for (a, x) in buckets.iter_mut().zip(b) {
            *a += x;
        }
        sum_us += sum;
    }
    let name = "ferry_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from request head to complete response.\n# TYPE {name} histogram"
    );
    let mut acc = 0;
    for (i, c) in buckets.iter().enumerate() {
        acc += c;
        let le = LATENCY_BOUNDS_US
            .get(i)
            .map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
        let _ = writeln!(
            out,
            "{name}_bucket{{protocol=\"http\",driver=\"{d}\",le=\"{le}\"}} {acc}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_sum{{protocol=\"http\",driver=\"{d}\"}} {}",
        sum_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "{name}_count{{protocol=\"http\",driver=\"{d}\"}} {acc}"
    );
    let q = "ferry_request_duration_quantile_seconds";
    let _ = writeln!(out, "# HELP {q} Latency quantiles estimated from the histogram buckets (upper bounds).\n# TYPE {q} gauge");
    for (label, p) in [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99), ("0.999", 0.999)] {
        if let Some(us) = quantile_us(&buckets, p) {
            let v = if us == u64::MAX {
                "+Inf".to_string()
            } else {
                format!("{}", us as f64 / 1e6)
            };
            let _ = writeln!(
                out,
                "{q}{{protocol=\"http\",driver=\"{d}\",quantile=\"{label}\"}} {v}"
            );
        }
    }
}

impl Service for Demo {
    fn call(&self, req: Request) -> Response {
        match (req.method(), req.path()) {
            (Method::Get | Method::Head, "/") => {
                Response::text(200, Bytes::from_static(b"hello world\n"))
            }
            (Method::Get | Method::Head, "/health") => self.health(),
            (Method::Get | Method::Head, "/metrics") => self.metrics(),
            (Method::Get, "/__panic") if self.panic_route => panic!("demo panic requested"),
            _ => Response::text(404, Bytes::from_static(b"not found\n")),
        }
    }

    fn stream(&self, head: &Request, _out: &mut Responder) -> Option<Box<dyn BodyStream>> {
        if matches!(head.method(), Method::Post | Method::Put) && head.path() == "/echo" {
            Some(Box::new(Echo {
                length: head.content_length(),
                started: false,
            }))
            // (an empty Content-Length body answers `Length(0)` at the end)
        } else {
            None
        }
    }
}

/// Streams the request body back as it arrives. The head goes out with the first piece (or at
/// the end for an empty body), so `Expect: 100-continue` clients get their `100` first.
struct Echo {
    length: Option<u64>,
    started: bool,
}

impl Echo {
    fn start(&mut self, out: &mut Responder) {
        if !self.started {
            self.started = true;
            let body = match self.length {
                Some(n) => HeadBody::Length(n),
                None => HeadBody::Chunked,
            };
            let headers = [(
                "content-type".into(),
                Bytes::from_static(b"application/octet-stream"),
            )];
            out.head(200, headers.into_iter().collect(), body);
        }
    }
}

impl BodyStream for Echo {
    fn on_data(&mut self, chunk: Bytes, out: &mut Responder) {
        self.start(out);
        let end = match self.length.as_mut() {
            Some(left) => {
                *left = left.saturating_sub(chunk.len() as u64);
                *left == 0
            }
            None => false,
        };
        out.data(chunk, end);
    }

    fn on_end(&mut self, out: &mut Responder) {
        self.start(out);
        if self.length.is_none() {
            out.data(Bytes::new(), true);
        }
    }
}
