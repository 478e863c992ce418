//! A blocking h2c server: one thread per connection, std sockets, and `ServerConnection` doing
//! all the protocol work. It is the smallest complete run loop over the sans-IO API (input,
//! events, transmits, timeouts, EOF, flow-control backpressure) and the peer that the
//! end-to-end tests drive with curl, nghttp, h2load and Python's `h2`.
//!
//! Routes: `GET /` → `hello world\n`; `POST|PUT /echo` → the body streamed back as it arrives
//! (request trailers are echoed as response trailers); anything else → 404.
//!
//! Connections start with the HTTP/2 preface (prior knowledge, `curl --http2-prior-knowledge`)
//! or with an HTTP/1.1 `Upgrade: h2c` request (`curl --http2`).
//!
//! ```sh
//! cargo run -p ferry-http2 --example h2c_server -- 127.0.0.1:8080
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_http2::{sniff, Body, Config, Event, ServerConnection, Sniff, StreamId};
use ferry_proto::{Connection, Instant};

/// Accept connections forever, one thread each.
pub fn serve(listener: TcpListener) {
    let start = std::time::Instant::now();
    let mut config = Config::default();
    // The echo route gives credit back only once the echoed bytes are queued: end-to-end
    // backpressure, bounded memory per stream.
    config.auto_release = false;
    let config = Arc::new(config);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let config = config.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(stream, config, start) {
                if e.kind() != ErrorKind::ConnectionReset && e.kind() != ErrorKind::BrokenPipe {
                    eprintln!("connection error: {e}");
                }
            }
        });
    }
}

#[derive(Default)]
struct Echo {
    /// Body chunks `send_data` refused (queue full), oldest first.
    pending: VecDeque<Bytes>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    ended: bool,
}

enum Route {
    Hello,
    Echo(Echo),
    NotFound,
}

/// An HTTP/1.1 request head: method, path, fields.
type Http1Head = (String, String, Vec<(String, Vec<u8>)>);

/// Read an HTTP/1.1 head (for `Upgrade: h2c`); what follows it stays in `input`.
fn read_http1_head(stream: &mut TcpStream, input: &mut BytesMut) -> io::Result<Option<Http1Head>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = input.split_to(end + 4);
            let text = String::from_utf8_lossy(&head);
            let mut lines = text.split("\r\n");
            let mut first = lines.next().unwrap_or("").split(' ');
            let method = first.next().unwrap_or("").to_string();
            let path = first.next().unwrap_or("/").to_string();
            let fields = lines
                .filter(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().as_bytes().to_vec()))
                .collect();
            return Ok(Some((method, path, fields)));
        }
        if input.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        input.extend_from_slice(&chunk[..n]);
    }
}

fn handle(mut stream: TcpStream, config: Arc<Config>, start: std::time::Instant) -> io::Result<()> {
    let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
    stream.set_nodelay(true)?;
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];

    // Prior knowledge, or an HTTP/1.1 request asking to upgrade?
    while sniff(&input) == Sniff::NeedMore {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&chunk[..n]);
    }
    let mut conn = if sniff(&input) == Sniff::Http2 {
        ServerConnection::new(config, now())
    } else {
        let Some((method, path, fields)) = read_http1_head(&mut stream, &mut input)? else {
            return Ok(());
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let upgrade = get("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"h2c"));
        let settings = get("http2-settings");
        let (true, Some(settings)) = (upgrade, settings) else {
            stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 9\r\nconnection: close\r\n\r\nh2c only\n")?;
            return Ok(());
        };
        let pairs: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (n.as_str(), &v[..])).collect();
        match ServerConnection::from_upgrade(config, now(), &settings, &method, &path, &pairs) {
            Ok(c) => {
                stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n")?;
                c
            }
            Err(e) => {
                eprintln!("bad upgrade: {e}");
                stream.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )?;
                return Ok(());
            }
        }
    };
    if !input.is_empty() {
        let _ = conn.handle_input(now(), &mut input);
    }

    let mut routes: HashMap<StreamId, Route> = HashMap::new();
    loop {
        // 1. Application: react to every event.
        while let Some(ev) = conn.poll_event() {
            on_event(&mut conn, &mut routes, ev);
        }
        // 2. Write everything queued (this is also where DATA frames are cut).
        while let Some(bytes) = conn.poll_transmit() {
            stream.write_all(&bytes)?;
        }
        if conn.is_closed() {
            return Ok(());
        }
        // 3. Wait for input or the connection's next deadline.
        let timeout = conn
            .poll_timeout()
            .map(|t| (t - now()).max(Duration::from_millis(1)));
        stream.set_read_timeout(timeout)?;
        if !conn.wants_read() {
            // Our event queue is full: process it before reading more.
            continue;
        }
        match stream.read(&mut chunk) {
            Ok(0) => conn.handle_eof(now()),
            Ok(n) => {
                input.extend_from_slice(&chunk[..n]);
                // Errors are answered on the wire (GOAWAY); keep pumping until closed.
                let _ = conn.handle_input(now(), &mut input);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                conn.handle_timeout(now())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if !input.is_empty() && conn.wants_read() {
            let _ = conn.handle_input(now(), &mut input);
        }
    }
}

fn on_event(conn: &mut ServerConnection, routes: &mut HashMap<StreamId, Route>, ev: Event) {
    match ev {
        Event::Request { id, request } => {
            let route = match (request.method(), request.path()) {
                ("GET" | "HEAD", "/") => Route::Hello,
                ("POST" | "PUT", "/echo") => {
                    let _ = conn.send_response(
                        id,
                        200,
                        &[("content-type", b"application/octet-stream")],
                        Body::Streaming,
                    );
                    Route::Echo(Echo::default())
                }
                _ => Route::NotFound,
            };
            routes.insert(id, route);
        }
        Event::Data { id, data } => {
            let n = data.len();
            match routes.get_mut(&id) {
                Some(Route::Echo(e)) => {
                    if e.pending.is_empty() && conn.send_data(id, data.clone(), false).is_ok() {
                        conn.release_capacity(id, n);
                    } else {
                        e.pending.push_back(data);
                    }
                }
                // Bodies we do not use are consumed at once.
                _ => conn.release_capacity(id, n),
            }
        }
        Event::Trailers { id, trailers } => {
            if let Some(Route::Echo(e)) = routes.get_mut(&id) {
                e.trailers = Some(
                    trailers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_vec()))
                        .collect(),
                );
            }
        }
        Event::End { id } => match routes.get_mut(&id) {
            Some(Route::Hello) => {
                let _ = conn.send_response(
                    id,
                    200,
                    &[("content-type", b"text/plain")],
                    Body::Full(Bytes::from_static(b"hello world\n")),
                );
                routes.remove(&id);
            }
            Some(Route::Echo(e)) => {
                e.ended = true;
                flush_echo(conn, id, e);
                if e.pending.is_empty() {
                    routes.remove(&id);
                }
            }
            _ => {
                let _ = conn.send_response(
                    id,
                    404,
                    &[("content-type", b"text/plain")],
                    Body::Full(Bytes::from_static(b"not found\n")),
                );
                routes.remove(&id);
            }
        },
        Event::SendReady { id } => {
            if let Some(Route::Echo(e)) = routes.get_mut(&id) {
                flush_echo(conn, id, e);
                if e.ended && e.pending.is_empty() {
                    routes.remove(&id);
                }
            }
        }
        Event::Reset { id, .. } => {
            routes.remove(&id);
        }
        Event::Error { error } => eprintln!("connection error: {error}"),
        _ => {}
    }
}

/// Queue what the echo has pending; finish the stream once the request ended.
fn flush_echo(conn: &mut ServerConnection, id: StreamId, e: &mut Echo) {
    while let Some(b) = e.pending.pop_front() {
        let n = b.len();
        if conn.send_data(id, b.clone(), false).is_err() {
            e.pending.push_front(b);
            return;
        }
        conn.release_capacity(id, n);
    }
    if e.ended {
        match e.trailers.take() {
            Some(t) => {
                let pairs: Vec<(&str, &[u8])> =
                    t.iter().map(|(n, v)| (n.as_str(), &v[..])).collect();
                let _ = conn.send_trailers(id, &pairs);
            }
            None => {
                let _ = conn.send_data(id, Bytes::new(), true);
            }
        }
    }
}

#[allow(dead_code)]
fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", listener.local_addr().expect("bound"));
    serve(listener);
}
