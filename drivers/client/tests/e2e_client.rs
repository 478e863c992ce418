//! `ferry-client` end to end against Ferry's own HTTP/1.1 server (the `ferry serve` engine,
//! in-process on a loopback ephemeral port): keep-alive reuse (connections counted on the
//! server), `Connection: close`, large responses and the size limit, concurrency from
//! several threads, refused and timed-out connects, `localhost`, request timeouts, callbacks
//! — on every driver this host has (epoll, and io_uring when it works).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_client::{Client, Error};
use ferry_driver::{
    Body, ConnInfo, DriverKind, Launch, Request, Response, ServerHandle, ServerOptions, Service,
};

/// Counts connections; routes: `/` hello, `/close` answers with `Connection: close`,
/// `/big?n=N` N bytes, `/echo` the method and body back, `/slow` waits 1.5 s.
#[derive(Default)]
struct App {
    conns: AtomicUsize,
}

impl Service for App {
    fn call(&self, req: Request) -> Response {
        match req.path() {
            "/" => Response::text(200, "hello\n"),
            "/close" => Response::text(200, "bye\n").header("connection", "close"),
            "/big" => {
                let n: usize = req
                    .query()
                    .and_then(|q| q.strip_prefix("n="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                Response::new(200).body(Body::Full(body.into()))
            }
            "/echo" => {
                let mut b = req.method_str().as_bytes().to_vec();
                b.push(b' ');
                b.extend_from_slice(req.body());
                Response::new(200)
                    .header(
                        "x-host",
                        Bytes::copy_from_slice(req.header("host").unwrap_or(b"")),
                    )
                    .body(Body::Full(b.into()))
            }
            "/slow" => {
                std::thread::sleep(Duration::from_millis(1500));
                Response::text(200, "late\n")
            }
            _ => Response::text(404, "no\n"),
        }
    }
    fn on_connect(&self, _conn: &ConnInfo) -> bool {
        self.conns.fetch_add(1, Ordering::SeqCst);
        true
    }
}

struct Server {
    addr: SocketAddr,
    app: Arc<App>,
    handle: Option<ServerHandle>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown.trigger();
            h.wait();
        }
    }
}

fn serve(app_workers: usize) -> Server {
    let app = Arc::new(App::default());
    let opts = ServerOptions {
        workers: 1,
        pin: false,
        app_workers,
        drain_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let launch = Launch::prepare(
        "127.0.0.1:0".parse::<ferry_driver::ListenAddr>().unwrap(),
        opts,
        app.clone(),
    )
    .unwrap();
    let addr = match &launch.local_addr {
        ferry_driver::ListenAddr::Inet(a) => *a,
        other => panic!("{other}"),
    };
    let handle = ferry_epoll::start(launch).unwrap();
    Server {
        addr,
        app,
        handle: Some(handle),
    }
}

fn drivers() -> Vec<DriverKind> {
    let mut d = vec![DriverKind::Epoll];
    if ferry_uring::probe().is_ok() {
        d.push(DriverKind::Uring);
    }
    d
}

fn client(d: DriverKind) -> ferry_client::ClientBuilder {
    Client::builder()
        .driver(d)
        .request_timeout(Some(Duration::from_secs(20)))
}

#[test]
fn keep_alive_reuses_one_connection() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d).build().unwrap();
        assert_eq!(c.driver(), d);
        for _ in 0..20 {
            let r = c.get(&format!("http://{}/", s.addr)).wait().unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(&r.body()[..], b"hello\n");
        }
        assert_eq!(s.app.conns.load(Ordering::SeqCst), 1, "{d}: one connection");
        let st = c.stats();
        assert_eq!((st.connects, st.reused, st.requests), (1, 19, 20), "{d}");
    }
}

#[test]
fn connection_close_is_not_reused() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d).build().unwrap();
        for _ in 0..3 {
            let r = c.get(&format!("http://{}/close", s.addr)).wait().unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["connection"], "close");
        }
        assert_eq!(s.app.conns.load(Ordering::SeqCst), 3, "{d}");
        assert_eq!(c.stats().reused, 0);
        // A request asking for close is honoured too.
        let r = http::Request::get(format!("http://{}/", s.addr))
            .header("connection", "close")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(c.request(r).wait().unwrap().status(), 200);
        assert_eq!(
            c.get(&format!("http://{}/", s.addr))
                .wait()
                .unwrap()
                .status(),
            200
        );
        assert_eq!(s.app.conns.load(Ordering::SeqCst), 5, "{d}");
    }
}

#[test]
fn large_responses_and_the_limit() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d).max_response_bytes(4 << 20).build().unwrap();
        let n = 3 << 20;
        let r = c
            .get(&format!("http://{}/big?n={n}", s.addr))
            .wait()
            .unwrap();
        assert_eq!(r.body().len(), n);
        assert!(r
            .body()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8));
        let e = c
            .get(&format!("http://{}/big?n={}", s.addr, 5 << 20))
            .wait()
            .unwrap_err();
        assert_eq!(e, Error::Protocol(ferry_http1::Error::BodyTooLarge), "{d}");
        // The client goes on working.
        assert_eq!(
            c.get(&format!("http://{}/", s.addr))
                .wait()
                .unwrap()
                .status(),
            200
        );
    }
}

#[test]
fn post_bodies_headers_and_host() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d).build().unwrap();
        let r = http::Request::post(format!("http://{}/echo", s.addr))
            .header("x-a", "1")
            .body(Bytes::from_static(b"payload"))
            .unwrap();
        let r = c.request(r).wait().unwrap();
        assert_eq!(&r.body()[..], b"POST payload");
        assert_eq!(r.headers()["x-host"], s.addr.to_string());
        assert_eq!(r.version(), http::Version::HTTP_11);
    }
}

#[test]
fn concurrent_requests_from_several_threads() {
    for d in drivers() {
        let s = serve(2);
        let c = client(d).workers(2).build().unwrap();
        let url = format!("http://{}/echo", s.addr);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (c, url) = (c.clone(), url.clone());
                std::thread::spawn(move || {
                    // Several in flight at once per thread, then wait for all.
                    let hs: Vec<_> = (0..25)
                        .map(|i| {
                            let r = http::Request::put(url.as_str())
                                .body(Bytes::from(format!("{t}-{i}")))
                                .unwrap();
                            (i, c.request(r))
                        })
                        .collect();
                    for (i, h) in hs {
                        let r = h.wait().unwrap();
                        assert_eq!(r.body(), &Bytes::from(format!("PUT {t}-{i}")));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = c.stats();
        assert_eq!(st.requests, 100, "{d}");
        assert!(st.connects <= 2 * 64, "{st:?}");
        assert_eq!(st.connects as usize, s.app.conns.load(Ordering::SeqCst));
    }
}

#[test]
fn callbacks_run_without_waiting() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d).build().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..10 {
            let tx = tx.clone();
            c.get(&format!("http://{}/", s.addr))
                .on_complete(move |o| tx.send(o.map(|r| r.status())).unwrap());
        }
        for _ in 0..10 {
            let got = rx.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(got.unwrap(), 200, "{d}");
        }
    }
}

#[test]
fn refused_connect() {
    for d in drivers() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // closed again: nobody listens there now
        let c = client(d).build().unwrap();
        let e = c
            .get(&format!("http://127.0.0.1:{port}/"))
            .wait()
            .unwrap_err();
        assert_eq!(
            e,
            Error::Connect(std::io::ErrorKind::ConnectionRefused),
            "{d}"
        );
        assert_eq!(c.stats().connect_failures, 1);
    }
}

#[test]
fn connect_timeout_on_a_full_backlog() {
    use socket2::{Domain, Socket, Type};
    for d in drivers() {
        // A listener that never accepts, with the smallest backlog: once its queue is full
        // the kernel drops further SYNs, so a connect neither succeeds nor fails.
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut held = Vec::new();
        let mut full = false;
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "the backlog never filled up");
        let c = client(d)
            .connect_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let t0 = std::time::Instant::now();
        let e = c.get(&format!("http://{addr}/")).wait().unwrap_err();
        assert_eq!(e, Error::ConnectTimeout, "{d}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        drop(held);
    }
}

#[test]
fn request_timeout_then_recovery() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d).build().unwrap();
        let slow = http::Request::get(format!("http://{}/slow", s.addr))
            .body(Bytes::new())
            .unwrap();
        let e = c
            .request_with_timeout(slow, Some(Duration::from_millis(200)))
            .wait()
            .unwrap_err();
        assert_eq!(e, Error::Timeout, "{d}");
        // The timed-out connection is not reused; a new one serves the next request.
        let r = c.get(&format!("http://{}/", s.addr)).wait().unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn localhost_resolves_off_the_worker() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d).build().unwrap();
        let url = format!("http://localhost:{}/echo", s.addr.port());
        let r = c.get(&url).wait().unwrap();
        assert_eq!(&r.body()[..], b"GET ");
        assert_eq!(
            r.headers()["x-host"],
            format!("localhost:{}", s.addr.port())
        );
        // Cached the second time; still the same keep-alive connection.
        assert_eq!(c.get(&url).wait().unwrap().status(), 200);
        assert_eq!(s.app.conns.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn idle_connections_expire_and_invalid_requests_fail_fast() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d)
            .idle_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        assert_eq!(
            c.get(&format!("http://{}/", s.addr))
                .wait()
                .unwrap()
                .status(),
            200
        );
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            c.get(&format!("http://{}/", s.addr))
                .wait()
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            s.app.conns.load(Ordering::SeqCst),
            2,
            "{d}: the idle one was closed"
        );
        assert!(matches!(
            c.get("https://127.0.0.1/").wait(),
            Err(Error::InvalidRequest(_))
        ));
    }
}

#[test]
fn server_closing_idle_connections_is_survived() {
    for d in drivers() {
        let s = serve(0);
        let c = client(d).build().unwrap();
        let url = format!("http://{}/", s.addr);
        assert_eq!(c.get(&url).wait().unwrap().status(), 200);
        // The server goes away (closing the idle keep-alive connection) and comes back on
        // another port: the next request must not be lost on the dead connection.
        drop(s);
        let s2 = serve(0);
        std::thread::sleep(Duration::from_millis(200));
        let e = c.get(&url).wait();
        assert!(matches!(e, Err(Error::Connect(_))), "{d}: {e:?}");
        assert_eq!(
            c.get(&format!("http://{}/", s2.addr))
                .wait()
                .unwrap()
                .status(),
            200
        );
    }
}

#[test]
fn dropping_the_client_completes_what_is_in_flight() {
    let s = serve(0);
    let c = client(DriverKind::Epoll).build().unwrap();
    let h = c.get(&format!("http://{}/slow", s.addr));
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    assert_eq!(h.wait().unwrap_err(), Error::Closed);
}

/// Read one request head (and no body) from `s`.
fn read_head(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    true
}

#[test]
fn idempotent_requests_survive_the_keep_alive_race() {
    use std::io::Write;
    for d in drivers() {
        // A server that answers one request per connection with keep-alive, then reads the
        // next request and closes without answering (what a server closing an idle
        // connection at the wrong moment looks like to the client).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                if read_head(&mut s) {
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .unwrap();
                }
                read_head(&mut s);
            }
        });
        let c = client(d).build().unwrap();
        let url = format!("http://{addr}/");
        assert_eq!(&c.get(&url).wait().unwrap().body()[..], b"ok");
        // Reused connection dies under the GET: sent again on a new connection.
        assert_eq!(&c.get(&url).wait().unwrap().body()[..], b"ok");
        assert_eq!(c.stats().retries, 1, "{d}");
        // A POST is not sent twice.
        let post = http::Request::post(url.as_str())
            .body(Bytes::from_static(b"x"))
            .unwrap();
        assert_eq!(
            c.request(post).wait().unwrap_err(),
            Error::Protocol(ferry_http1::Error::UnexpectedEof),
            "{d}"
        );
        assert_eq!(c.stats().retries, 1);
        server.join().unwrap();
    }
}
