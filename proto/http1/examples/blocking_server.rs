//! A minimal blocking HTTP/1.1 server: one thread per connection, std sockets, and
//! `ServerConnection` doing all the protocol work. It is the smallest complete run loop over the
//! sans-IO API (input, events, transmits, timeouts, EOF) and the peer that the end-to-end tests
//! drive with curl and Python.
//!
//! Routes: `GET /` → `hello world\n`; `POST|PUT /echo` → the body streamed back as it arrives;
//! anything else → 404.
//!
//! ```sh
//! cargo run -p ferry-http1 --example blocking_server -- 127.0.0.1:8080
//! ```

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use ferry_http1::{
    server::Event, Body, BodyKind, Method, RequestId, ServerConfig, ServerConnection,
};
use ferry_proto::{Connection, Instant};

/// Accept connections forever, one thread each.
pub fn serve(listener: TcpListener) {
    let start = std::time::Instant::now();
    let mut config = ServerConfig::default();
    // Wall clock at our `Instant::ZERO`, so responses carry a correct `Date`.
    config.date_origin_unix_nanos = Some(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let config = Arc::new(config);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let config = config.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(stream, config, start) {
                eprintln!("connection error: {e}");
            }
        });
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Hello,
    Echo,
    NotFound,
}

fn handle(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
    start: std::time::Instant,
) -> io::Result<()> {
    let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
    stream.set_nodelay(true)?;
    let mut conn = ServerConnection::new(config, now());
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut routes: HashMap<RequestId, Route> = HashMap::new();
    loop {
        // 1. Application: react to every event.
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Request(req) => {
                    let route = match (req.method(), req.path()) {
                        (Method::Get | Method::Head, "/") => Route::Hello,
                        (Method::Post | Method::Put, "/echo") => Route::Echo,
                        _ => Route::NotFound,
                    };
                    if route == Route::Echo {
                        // Stream the body back as it arrives.
                        let body = match req.body_kind() {
                            BodyKind::Length(n) => Body::Length(n),
                            BodyKind::Empty => Body::Empty,
                            _ => Body::Chunked,
                        };
                        let _ = conn.send_response(
                            req.id(),
                            200,
                            &[("content-type", b"application/octet-stream")],
                            body,
                        );
                    }
                    routes.insert(req.id(), route);
                }
                Event::Data { id, data } if routes.get(&id) == Some(&Route::Echo) => {
                    let _ = conn.send_data(id, data, false);
                }
                Event::End { id } => match routes.remove(&id) {
                    Some(Route::Hello) => {
                        let _ = conn.send_response(
                            id,
                            200,
                            &[("content-type", b"text/plain")],
                            Body::Full(Bytes::from_static(b"hello world\n")),
                        );
                    }
                    // A Length body completes by itself; a chunked one needs its last chunk.
                    Some(Route::Echo) => {
                        let _ = conn.send_data(id, Bytes::new(), true);
                    }
                    _ => {
                        let _ = conn.send_response(
                            id,
                            404,
                            &[("content-type", b"text/plain")],
                            Body::Full(Bytes::from_static(b"not found\n")),
                        );
                    }
                },
                Event::Error { error, .. } => eprintln!("bad request: {error}"),
                _ => {}
            }
        }
        // 2. Write everything queued.
        while let Some(bytes) = conn.poll_transmit() {
            stream.write_all(&bytes)?;
        }
        if conn.is_closed() || conn.is_upgraded() {
            return Ok(());
        }
        // 3. Wait for input or the connection's next deadline.
        let timeout = conn
            .poll_timeout()
            .map(|t| (t - now()).max(Duration::from_millis(1)));
        stream.set_read_timeout(timeout)?;
        if !conn.wants_read() {
            // Only possible here while closing: nothing more to read.
            conn.handle_eof(now());
            continue;
        }
        match stream.read(&mut chunk) {
            Ok(0) => conn.handle_eof(now()),
            Ok(n) => {
                input.extend_from_slice(&chunk[..n]);
                // Errors are answered on the wire (400, 413, ...); keep pumping.
                let _ = conn.handle_input(now(), &mut input);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                conn.handle_timeout(now())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
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
