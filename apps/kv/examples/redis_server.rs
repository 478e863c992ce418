//! A blocking Redis-compatible server: std sockets, one thread per connection, one shared
//! `Store` behind a mutex, and `ferry_resp::ServerConnection` doing all the protocol work. It
//! is the smallest complete run loop over the sans-IO API with pub/sub routing, and the peer
//! the interop tests drive with redis-cli, redis-benchmark and redis-py.
//!
//! ```sh
//! cargo run -p ferry-kv --example redis_server -- 127.0.0.1:6380
//! ```

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use ferry_kv::{ClientState, Delivery, Store, StoreConfig};
use ferry_proto::{Connection, Instant};
use ferry_resp::server::Event;
use ferry_resp::{ServerConfig, ServerConnection, SubKind};

/// One connection's protocol state and the write half of its socket.
struct Conn {
    conn: ServerConnection,
    out: TcpStream,
}

impl Conn {
    fn flush(&mut self) -> io::Result<()> {
        while let Some(b) = self.conn.poll_transmit() {
            self.out.write_all(&b)?;
        }
        Ok(())
    }
}

type Registry = Arc<Mutex<HashMap<u64, Arc<Mutex<Conn>>>>>;

struct Shared {
    store: Mutex<Store>,
    conns: Registry,
    config: Arc<ServerConfig>,
    start: std::time::Instant,
}

impl Shared {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.start.elapsed().as_nanos() as u64)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accept connections forever, one thread each; a background thread expires keys.
pub fn serve(listener: TcpListener) {
    let start = std::time::Instant::now();
    let port = listener.local_addr().map_or(0, |a| a.port());
    let mut cfg = StoreConfig::default();
    cfg.unix_ms_at_zero = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    cfg.port = port;
    cfg.inline_own_messages = true;
    let shared = Arc::new(Shared {
        store: Mutex::new(Store::new(cfg, Instant::ZERO)),
        conns: Arc::default(),
        config: Arc::new({
            let mut c = ServerConfig::default();
            c.queue_pubsub_in_multi = true;
            c.pushes_before_reply = true;
            c
        }),
        start,
    });
    let bg = shared.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = bg.now();
        lock(&bg.store).active_expire(now, 1000);
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(stream, &shared) {
                if !matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
                    eprintln!("connection error: {e}");
                }
            }
        });
    }
}

/// Route published messages to their subscribers (never while holding another lock).
fn deliver(shared: &Shared, deliveries: Vec<Delivery>) {
    for d in deliveries {
        let target = lock(&shared.conns).get(&d.client).cloned();
        let Some(target) = target else { continue };
        let mut t = lock(&target);
        let sent = match d.kind {
            SubKind::Channel => t.conn.send_message(&d.channel, &d.payload),
            SubKind::Pattern => t.conn.send_pmessage(
                d.pattern.as_ref().unwrap_or(&d.channel),
                &d.channel,
                &d.payload,
            ),
            SubKind::Shard => t.conn.send_smessage(&d.channel, &d.payload),
        };
        if sent {
            let _ = t.flush();
        }
    }
}

/// Execute every pending event; returns whether there were any.
fn pump(
    shared: &Shared,
    c: &mut Conn,
    client: &mut ClientState,
    deliveries: &mut Vec<Delivery>,
) -> bool {
    let mut any = false;
    let mut store: Option<MutexGuard<'_, Store>> = None;
    while let Some(ev) = c.conn.poll_event() {
        any = true;
        let st = store.get_or_insert_with(|| lock(&shared.store));
        match ev {
            Event::Command(cmd) => {
                let reply = st.execute(shared.now(), client, &cmd.args);
                let _ = c.conn.send_reply(cmd.id, &reply);
            }
            Event::Subscribe { kind, channels } => st.subscribe(client.id, kind, &channels),
            Event::Unsubscribe { kind, channels } => st.unsubscribe(client.id, kind, &channels),
            Event::Reset => st.reset_client(client),
            Event::Error(_) => {}
            _ => {}
        }
    }
    if let Some(mut st) = store {
        deliveries.extend(st.take_deliveries());
    }
    any
}

fn handle(stream: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = stream.try_clone()?;
    let mut client = lock(&shared.store).new_client();
    let conn = Arc::new(Mutex::new(Conn {
        conn: ServerConnection::new(shared.config.clone(), shared.now()),
        out: stream,
    }));
    lock(&shared.conns).insert(client.id, conn.clone());
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let result = (|| -> io::Result<()> {
        loop {
            let mut deliveries = Vec::new();
            let closed = {
                let mut c = lock(&conn);
                let now = shared.now();
                // Feed, execute, and feed again while the connection paused (HELLO, pipeline).
                let _ = c.conn.handle_input(now, &mut input);
                while pump(shared, &mut c, &mut client, &mut deliveries) {
                    if c.conn.wants_read() && !input.is_empty() {
                        let _ = c.conn.handle_input(shared.now(), &mut input);
                    }
                }
                c.flush()?;
                c.conn.is_closed()
            };
            deliver(shared, deliveries);
            if closed {
                return Ok(());
            }
            match reader.read(&mut chunk) {
                Ok(0) => {
                    let mut c = lock(&conn);
                    c.conn.handle_eof(shared.now());
                    let mut d = Vec::new();
                    pump(shared, &mut c, &mut client, &mut d);
                    let _ = c.flush();
                    return Ok(());
                }
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    })();
    lock(&shared.conns).remove(&client.id);
    lock(&shared.store).remove_client(&client);
    let _ = lock(&conn).out.shutdown(std::net::Shutdown::Both);
    result
}

#[allow(dead_code)]
fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6380".into());
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
