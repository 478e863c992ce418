//! A scripted raw-TCP HTTP upstream for the proxy's end-to-end tests: it records each
//! request head that reaches it (the fields the proxy forwarded) and answers with exact bytes,
//! closes, or stays silent. Shared by `proxy_http_edge.rs` and `proxy_config.rs`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the scripted upstream does with a request.
#[derive(Clone)]
pub enum Reply {
    /// Send these bytes and keep the connection for the next request.
    Bytes(&'static [u8]),
    /// Close the connection without answering.
    Close,
    /// Never answer; read (and drop) until the peer closes.
    Silent,
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which accepted connection (0, 1, …) and which request on it (0, 1, …).
    pub conn: usize,
    pub nth: usize,
    /// The head as received (request line and fields).
    pub head: String,
}

/// A raw loopback upstream: one thread per connection, each request's head recorded and
/// answered by `script(conn, nth, head)`. Health checks (`ferry-proxy-health`) get a plain
/// `200` and are not recorded. Stopped on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

type Script = dyn Fn(usize, usize, &str) -> Reply + Send + Sync;

impl Upstream {
    pub fn start(script: impl Fn(usize, usize, &str) -> Reply + Send + Sync + 'static) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut conns = 0;
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (seen, script, stop) = (seen2.clone(), script.clone(), stop2.clone());
                        let conn = conns;
                        conns += 1;
                        std::thread::spawn(move || serve(s, conn, &*script, &seen, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Upstream { addr, seen, stop }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serve one upstream connection: heads, bodies skipped by `Content-Length` (the requests
/// here have no chunked bodies), replies as scripted.
fn serve(
    mut s: TcpStream,
    conn: usize,
    script: &Script,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = Vec::new();
    let mut nth = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                if !read_more(&mut s, &mut buf) {
                    return;
                }
                continue;
            }
            buf.drain(..end + 4 + len);
            if head.contains("ferry-proxy-health") {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
            seen.lock().unwrap().push(Seen {
                conn,
                nth,
                head: head.clone(),
            });
            match script(conn, nth, &head) {
                Reply::Bytes(b) => {
                    if s.write_all(b).is_err() {
                        return;
                    }
                }
                Reply::Close => return,
                Reply::Silent => {
                    while !stop.load(Ordering::Relaxed) && read_more(&mut s, &mut buf) {
                        buf.clear();
                    }
                    return;
                }
            }
            nth += 1;
        } else if !read_more(&mut s, &mut buf) {
            return;
        }
    }
}

/// Read what is there (false: the peer closed or the socket failed).
pub fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 16384];
    match s.read(&mut tmp) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The values of field `name` in a recorded head.
pub fn fields<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}
