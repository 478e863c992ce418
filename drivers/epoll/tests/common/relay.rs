//! A TCP relay session over the drivers' outbound connections and worker-local mail, run by
//! the same tests on every driver: each accepted (downstream) connection opens an upstream
//! connection on its worker and the two exchange bytes as mail.

#![allow(dead_code)]

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_driver::{
    ConnInfo, Launch, ListenAddr, OutQueue, Request, Response, ServerHandle, ServerOptions,
    Service, Session, WorkerCtx,
};
use ferry_proto::Instant;

pub struct Cfg {
    pub upstream: SocketAddr,
    pub connect_timeout: Duration,
}

pub enum Mail {
    /// From an upstream to its owner: my token.
    Ready(usize),
    /// From an upstream to its owner: the connect failed or timed out.
    Failed(String),
    /// Bytes for the other side.
    Data(Bytes),
    /// The other side is gone.
    Gone,
}

pub struct Half {
    input: BytesMut,
    out: OutQueue,
    /// The other half's token, once known.
    peer: Option<usize>,
    /// Bytes read before the peer was known.
    held: Vec<Bytes>,
    eof: bool,
    done: bool,
}

pub enum Relay {
    Down(Half),
    Up {
        half: Half,
        connected: bool,
        deadline: Option<Instant>,
    },
}

impl Half {
    fn new(peer: Option<usize>) -> Half {
        Half {
            input: BytesMut::with_capacity(16 * 1024),
            out: OutQueue::default(),
            peer,
            held: Vec::new(),
            eof: false,
            done: false,
        }
    }
    fn forward(&mut self, ctx: &WorkerCtx) {
        if !self.input.is_empty() {
            let b = self.input.split().freeze();
            match self.peer {
                Some(p) => {
                    let _ = ctx.post(p, Mail::Data(b));
                }
                None => self.held.push(b),
            }
        }
    }
    fn finish(&mut self, ctx: &WorkerCtx) {
        if !self.done {
            self.done = true;
            if let Some(p) = self.peer.take() {
                let _ = ctx.post(p, Mail::Gone);
            }
        }
    }
}

impl Relay {
    fn half(&self) -> &Half {
        match self {
            Relay::Down(h) | Relay::Up { half: h, .. } => h,
        }
    }
    fn half_mut(&mut self) -> &mut Half {
        match self {
            Relay::Down(h) | Relay::Up { half: h, .. } => h,
        }
    }
}

impl Session for Relay {
    type Shared = Cfg;
    type Mail = Mail;

    fn open(
        ctx: &mut WorkerCtx,
        s: &Arc<Cfg>,
        info: ConnInfo,
        _g: u32,
        _n: Instant,
    ) -> Option<Self> {
        ctx.connect(s.upstream, info.token as u64)
            .then(|| Relay::Down(Half::new(None)))
    }
    fn open_outbound(
        ctx: &mut WorkerCtx,
        s: &Arc<Cfg>,
        info: ConnInfo,
        tag: u64,
        _gen: u32,
        now: Instant,
    ) -> Option<Self> {
        let owner = tag as usize;
        ctx.post(owner, Mail::Ready(info.token)).ok()?;
        Some(Relay::Up {
            half: Half::new(Some(owner)),
            connected: false,
            deadline: Some(now + s.connect_timeout),
        })
    }
    fn on_connected(&mut self, _ctx: &mut WorkerCtx, _now: Instant) {
        if let Relay::Up {
            connected,
            deadline,
            ..
        } = self
        {
            *connected = true;
            *deadline = None;
        }
    }
    fn connect_failed(&mut self, ctx: &mut WorkerCtx, error: io::Error, _now: Instant) {
        let h = self.half_mut();
        if let Some(p) = h.peer.take() {
            let _ = ctx.post(p, Mail::Failed(error.to_string()));
        }
        h.done = true;
    }
    fn input(&mut self) -> &mut BytesMut {
        &mut self.half_mut().input
    }
    fn wants_read(&self, _ctx: &WorkerCtx) -> bool {
        !self.half().done && self.half().input.len() < 1 << 20
    }
    fn is_finished(&self) -> bool {
        self.half().done && self.half().out.is_empty()
    }
    fn saw_eof(&self) -> bool {
        self.half().eof
    }
    fn has_pending(&self) -> bool {
        false
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Relay::Up { deadline, .. } => *deadline,
            Relay::Down(_) => None,
        }
    }
    fn has_output(&self) -> bool {
        !self.half().out.is_empty()
    }
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        self.half().out.fill_iov(iov)
    }
    fn written(&mut self, _ctx: &WorkerCtx, n: usize) {
        self.half_mut().out.written(n)
    }
    fn take_out(&mut self, max: usize, into: &mut Vec<Bytes>) {
        self.half_mut().out.take_out(max, into)
    }
    fn sent(&mut self, _ctx: &WorkerCtx, n: usize, chunks: &mut Vec<Bytes>) {
        self.half_mut().out.sent(n, chunks)
    }
    fn on_read(&mut self, _ctx: &WorkerCtx, _n: usize) {}
    fn on_eof(&mut self, ctx: &mut WorkerCtx, _now: Instant) {
        let h = self.half_mut();
        h.eof = true;
        h.forward(ctx);
        h.finish(ctx);
    }
    fn on_timeout(&mut self, ctx: &mut WorkerCtx, now: Instant) {
        if let Relay::Up {
            half,
            connected: false,
            deadline: Some(d),
        } = self
        {
            if now >= *d {
                if let Some(p) = half.peer.take() {
                    let _ = ctx.post(p, Mail::Failed("connect timed out".into()));
                }
                half.done = true;
            }
        }
    }
    fn begin_shutdown(&mut self, ctx: &mut WorkerCtx, _now: Instant) {
        self.half_mut().finish(ctx);
    }
    fn process(&mut self, ctx: &mut WorkerCtx, _now: Instant) {
        self.half_mut().forward(ctx);
    }
    fn retry_pending(&mut self, _ctx: &mut WorkerCtx, _now: Instant) -> bool {
        true
    }
    fn take_mail(_ctx: &mut WorkerCtx, _s: &Cfg, _into: &mut Vec<(usize, Mail)>) {}
    fn apply_mail(&mut self, ctx: &mut WorkerCtx, mail: Mail, _now: Instant) {
        let h = self.half_mut();
        match mail {
            Mail::Ready(t) => {
                h.peer = Some(t);
                for b in std::mem::take(&mut h.held) {
                    let _ = ctx.post(t, Mail::Data(b));
                }
                if h.done {
                    let _ = ctx.post(t, Mail::Gone);
                    h.peer = None;
                }
            }
            Mail::Failed(e) => {
                h.peer = None;
                h.out.push(Bytes::from(format!("ERR {e}\n")));
                h.done = true;
            }
            Mail::Data(b) => h.out.push(b),
            Mail::Gone => {
                h.peer = None;
                h.done = true;
            }
        }
    }
    fn close(mut self, ctx: &mut WorkerCtx) {
        self.half_mut().finish(ctx);
    }
}

struct NoHttp;
impl Service for NoHttp {
    fn call(&self, _req: Request) -> Response {
        Response::text(500, "unused\n")
    }
}

/// A driver's `start_with::<Relay>`.
pub type Start = fn(Launch, Arc<Cfg>) -> io::Result<ServerHandle>;

/// Start a relay to `upstream` on one worker of the driver `start`.
pub fn relay(start: Start, upstream: SocketAddr, connect_timeout: Duration) -> ServerHandle {
    let opts = ServerOptions {
        workers: 1,
        pin: false,
        ..ServerOptions::default()
    };
    let launch = Launch::prepare(
        "127.0.0.1:0".parse::<ListenAddr>().unwrap(),
        opts,
        Arc::new(NoHttp),
    )
    .unwrap();
    start(
        launch,
        Arc::new(Cfg {
            upstream,
            connect_timeout,
        }),
    )
    .unwrap()
}

pub fn addr(h: &ServerHandle) -> SocketAddr {
    match &h.local_addr {
        ListenAddr::Inet(a) => *a,
        other => panic!("not tcp: {other:?}"),
    }
}

/// An echo server on loopback serving connections until the test ends (threads per
/// connection, each bounded by a read timeout).
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    a
}

/// Send `data` through the relay at `relay` and read as many bytes back.
pub fn round_trip(relay: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(relay).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let writer = {
        let mut w = c.try_clone().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || w.write_all(&data).unwrap())
    };
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    got
}

/// Read everything until EOF (bounded by a timeout).
pub fn read_all(relay: SocketAddr) -> String {
    let mut c = TcpStream::connect(relay).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

/// A port nobody listens on (bound, then released).
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A loopback listener that never accepts, with its accept queue full: further SYNs are
/// dropped, so connects hang. Keep the returned guard alive for the test.
pub fn blackhole() -> (SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let a = l.local_addr().unwrap().as_socket().unwrap();
    let mut keep = vec![l];
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let _ = s.connect_timeout(&a.into(), Duration::from_millis(200));
        keep.push(s);
    }
    (a, keep)
}

/// The whole suite, run by each driver's test file.
pub fn echo_through_relay(start: Start) {
    let h = relay(start, echo_server(), Duration::from_secs(5));
    let a = addr(&h);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(a, &data), data);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let d = vec![b'a' + i as u8; 10_000 + i * 1000];
                assert_eq!(round_trip(a, &d), d);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    h.shutdown.trigger();
    assert_eq!(h.wait(), 0);
}

pub fn connect_refused(start: Start) {
    let h = relay(start, refused_addr(), Duration::from_secs(5));
    let got = read_all(addr(&h));
    assert!(got.starts_with("ERR "), "{got:?}");
    assert!(got.to_lowercase().contains("refused"), "{got:?}");
    h.shutdown.trigger();
    assert_eq!(h.wait(), 0);
}

pub fn connect_timeout(start: Start) {
    let (hole, _keep) = blackhole();
    let h = relay(start, hole, Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    let got = read_all(addr(&h));
    assert_eq!(got, "ERR connect timed out\n");
    assert!(t0.elapsed() < Duration::from_secs(8));
    h.shutdown.trigger();
    assert_eq!(h.wait(), 0);
}
