//! A raw RESP (Redis protocol) connection shared by the proxy's Redis tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A raw RESP connection for end-to-end tests: bounded reads (20 s at most per call).
pub struct RespConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RespConn {
    pub fn new(addr: SocketAddr) -> RespConn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        RespConn { s, buf: Vec::new() }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// Read until `n` bytes are buffered (or 20 s passed, or EOF); take them.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let start = Instant::now();
        let mut chunk = [0u8; 65536];
        while self.buf.len() < n && start.elapsed() < Duration::from_secs(20) {
            match self.s.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(_) => {}
            }
        }
        let n = n.min(self.buf.len());
        self.buf.drain(..n).collect()
    }

    /// Expect exactly `want` next.
    pub fn expect(&mut self, want: &[u8]) {
        let got = self.take(want.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "reply"
        );
    }

    /// Send `cmd`, expect `want`.
    pub fn ask(&mut self, cmd: &[u8], want: &[u8]) {
        self.send(cmd);
        self.expect(want);
    }

    /// Read one `\r\n`-terminated line.
    pub fn line(&mut self) -> String {
        let start = Instant::now();
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..p + 2).collect();
                return String::from_utf8_lossy(&l[..p]).into_owned();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no line");
            match self.s.read(&mut chunk) {
                Ok(0) => panic!("EOF"),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(_) => {}
            }
        }
    }

    /// Send a `HELLO 3 …`, expect the proxy's RESP3 map (up to its last field, `modules`).
    pub fn hello(&mut self, cmd: &[u8]) {
        self.send(cmd);
        assert_eq!(self.line(), "%7");
        for _ in 0..64 {
            if self.line() == "modules" {
                assert_eq!(self.line(), "*0");
                return;
            }
        }
        panic!("no modules field in the HELLO reply");
    }

    /// Whether the peer closed the connection (within 20 s).
    pub fn closed(&mut self) -> bool {
        let start = Instant::now();
        let mut chunk = [0u8; 65536];
        while start.elapsed() < Duration::from_secs(20) {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }

    /// Send `cmd`, read until `lines` CRLF-ended lines came (or 20 s passed); all of it.
    pub fn read_reply(&mut self, cmd: &[u8], lines: usize) -> String {
        self.send(cmd);
        let start = Instant::now();
        let mut chunk = [0u8; 65536];
        let count = |b: &[u8]| b.windows(2).filter(|w| w == b"\r\n").count();
        while count(&self.buf) < lines + usize::from(lines > 1)
            && start.elapsed() < Duration::from_secs(20)
        {
            match self.s.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }
}
