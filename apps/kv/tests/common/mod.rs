//! Shared helpers of the interop tests: our example server on an ephemeral port, a real
//! redis-server on a free port, and a blocking client over `ferry_resp::ClientConnection`.
#![allow(dead_code)]

#[path = "../../examples/redis_server.rs"]
#[allow(dead_code)]
mod example;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::BytesMut;
use ferry_proto::{Connection, Instant};
use ferry_resp::client::Event;
use ferry_resp::{ClientConfig, ClientConnection, RequestId, Value};

/// Start the example server (examples/redis_server.rs) on a loopback ephemeral port.
pub fn start_ferry() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || example::serve(l));
    addr
}

/// A real redis-server, killed on drop.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Start `redis-server` on a free loopback port (bind 0, read, close; retry if it loses the
/// race for the port).
pub fn start_redis() -> RedisServer {
    for _ in 0..10 {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/test (apt: redis-server)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = StdInstant::now() + Duration::from_secs(10);
        while StdInstant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if TcpStream::connect(addr).is_ok() {
                return RedisServer { child, addr };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("redis-server did not start");
}

/// The Python with redis-py ≥ 5: `$FERRY_PYTHON`, else this checkout's `.venv` (created by
/// `scripts/test`), else `/work/main/.venv`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("FERRY_PYTHON") {
        return p;
    }
    let local = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python");
    if std::path::Path::new(local).exists() {
        return local.to_string();
    }
    "/work/main/.venv/bin/python".to_string()
}

/// A blocking client over `ClientConnection`.
pub struct Client {
    stream: TcpStream,
    pub conn: ClientConnection,
    input: BytesMut,
    events: std::collections::VecDeque<Event>,
    start: StdInstant,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            stream,
            conn: ClientConnection::new(Arc::new(ClientConfig::default()), Instant::ZERO),
            input: BytesMut::with_capacity(64 * 1024),
            events: Default::default(),
            start: StdInstant::now(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    pub fn flush(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.stream.write_all(&b).unwrap();
        }
    }

    /// Read until at least one event is available.
    pub fn next_event(&mut self) -> Event {
        loop {
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            while let Some(e) = self.conn.poll_event() {
                self.events.push_back(e);
            }
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            let mut buf = [0u8; 64 * 1024];
            let n = self.stream.read(&mut buf).expect("read");
            let now = self.now();
            if n == 0 {
                self.conn.handle_eof(now);
            } else {
                self.input.extend_from_slice(&buf[..n]);
                self.conn
                    .handle_input(now, &mut self.input)
                    .expect("valid RESP");
            }
        }
    }

    /// Wait for the reply to `id`, keeping pushes for `next_push`.
    pub fn reply(&mut self, id: RequestId) -> Value {
        let mut kept = Vec::new();
        loop {
            match self.next_event() {
                Event::Reply { id: got, value } if got == id => {
                    for k in kept.into_iter().rev() {
                        self.events.push_front(k);
                    }
                    return value;
                }
                Event::Error(e) => panic!("connection failed: {e}"),
                other => kept.push(other),
            }
        }
    }

    /// Send a command and wait for its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Value {
        let now = self.now();
        let id = self.conn.send_command(now, args).unwrap();
        self.flush();
        self.reply(id)
    }

    /// `cmd` with whitespace-separated arguments.
    pub fn run(&mut self, line: &str) -> Value {
        let args: Vec<&str> = line.split_whitespace().collect();
        self.cmd(&args)
    }

    /// The next push frame (message), skipping nothing else.
    pub fn next_push(&mut self) -> Value {
        match self.next_event() {
            Event::Push(v) => v,
            other => panic!("expected a push, got {other:?}"),
        }
    }
}

/// Run a program and return (status ok, stdout, stderr).
pub fn run_cmd(prog: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{prog} is installed by scripts/test: {e}"));
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
