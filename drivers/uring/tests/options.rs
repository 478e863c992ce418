//! The io_uring options that are off by default (registered files, `SEND_ZC`) serve HTTP the
//! same as the defaults: keep-alive, pipelining, large multi-chunk responses, many
//! connections opened and closed (registered slots reused).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use ferry_driver::{Launch, ListenAddr, Request, Response, ServerOptions, Service, UringOptions};

const BIG: usize = 256 * 1024;

struct App;
impl Service for App {
    fn call(&self, req: Request) -> Response {
        if req.path() == "/big" {
            Response::text(200, vec![b'x'; BIG])
        } else {
            Response::text(200, "hello\n")
        }
    }
}

/// Read one response with a `content-length` body; returns the body length.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap();
            while buf.len() < end + 4 + len {
                let mut tmp = [0u8; 65536];
                let n = s.read(&mut tmp).unwrap();
                assert!(n > 0, "EOF inside a body");
                buf.extend_from_slice(&tmp[..n]);
            }
            buf.drain(..end + 4 + len);
            return len;
        }
        let mut tmp = [0u8; 65536];
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "EOF before a response");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn exercise(uring: UringOptions) {
    let opts = ServerOptions {
        workers: 1,
        pin: false,
        uring,
        ..ServerOptions::default()
    };
    let addr: ListenAddr = "127.0.0.1:0".parse().unwrap();
    let h = ferry_uring::start(Launch::prepare(addr, opts, Arc::new(App)).unwrap()).unwrap();
    let ListenAddr::Inet(a) = h.local_addr.clone() else {
        unreachable!()
    };
    // Many short connections: slots are registered and freed again.
    for _ in 0..200 {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf), 6);
    }
    // Keep-alive, a pipelined burst, and large (multi-chunk) bodies.
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    for _ in 0..50 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, &mut buf), 6);
    }
    let burst = "GET /big HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n".repeat(8);
    s.write_all(burst.as_bytes()).unwrap();
    for _ in 0..8 {
        assert_eq!(read_response(&mut s, &mut buf), BIG);
        assert_eq!(read_response(&mut s, &mut buf), 6);
    }
    drop(s);
    h.shutdown.trigger();
    assert_eq!(h.wait(), 0);
}

#[test]
fn registered_files_serve_like_descriptors() {
    exercise(UringOptions {
        registered_files: true,
        ..UringOptions::default()
    });
}

#[test]
fn send_zc_serves_like_send() {
    exercise(UringOptions {
        send_zc: true,
        ..UringOptions::default()
    });
}

#[test]
fn both_options_together() {
    exercise(UringOptions {
        registered_files: true,
        send_zc: true,
    });
}
