//! End-to-end tests of `ferry proxy` with upstreams that answer and reset the connection at
//! once (`SO_LINGER {1, 0}`): what the upstream sent before its RST still reaches the client.
//! The proxy is stopped (`SIGSTOP`) while the upstream writes and resets, so both are in the
//! proxy's socket before it reads any of it — the case where the driver learns of the reset
//! from the same read that brings the bytes (before the fix it dropped them: PostgreSQL's
//! FATAL `57P05` became the proxy's `08006`, a Redis reply an error, an HTTP response a 502).
//!
//! Nothing here asserts timing; every wait is bounded; loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::Server;

/// A scripted upstream: `serve` runs on each accepted connection (its own thread) and hands
/// the stream to the test when the request to answer-and-reset came.
fn upstream(serve: fn(TcpStream) -> Option<TcpStream>) -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                if let Some(s) = serve(s) {
                    let _ = tx.send(s);
                }
            });
        }
    });
    (addr, rx)
}

/// Whether every thread of process `pid` is stopped.
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    })
}

/// With the proxy stopped: the upstream sends `bytes` on `s`, then an RST. Then the proxy
/// goes on.
fn answer_and_reset(proxy: &Server, mut s: TcpStream, bytes: &[u8]) {
    proxy.signal(libc::SIGSTOP);
    let t0 = Instant::now();
    while !all_stopped(proxy.child.id()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "proxy not stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    s.write_all(bytes).unwrap();
    common::reset(s);
    // Loopback delivers within the close; a little slack all the same.
    std::thread::sleep(Duration::from_millis(50));
    proxy.signal(libc::SIGCONT);
}

/// Read from `s` until EOF, an error or `limit` bytes.
fn read_all(s: &mut TcpStream, limit: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < limit {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

// --- PostgreSQL ---------------------------------------------------------------------------

/// One backend message: type and body.
fn pg_read(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 5];
    s.read_exact(&mut h).ok()?;
    let n = i32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let mut body = vec![0u8; n.checked_sub(4)?];
    s.read_exact(&mut body).ok()?;
    Some((h[0], body))
}

fn pg_msg(out: &mut Vec<u8>, ty: u8, body: &[u8]) {
    out.push(ty);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

fn pg_error(severity: &str, code: &str, msg: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (f, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', msg),
    ] {
        body.push(f);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::new();
    pg_msg(&mut out, b'E', &body);
    out
}

/// A PostgreSQL 15 lookalike: trusts the login, answers other queries with `SET`, and hands
/// the connection over at the query naming `ferry_reset_probe`.
fn fake_postgres(mut s: TcpStream) -> Option<TcpStream> {
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).ok()?;
        let mut rest = vec![0u8; (i32::from_be_bytes(len) as usize).checked_sub(4)?];
        s.read_exact(&mut rest).ok()?;
        if rest[..4] == 80877103i32.to_be_bytes() {
            s.write_all(b"N").ok()?; // SSLRequest: no
            continue;
        }
        break;
    }
    let mut out = Vec::new();
    pg_msg(&mut out, b'R', &0i32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        pg_msg(&mut out, b'S', format!("{k}\0{v}\0").as_bytes());
    }
    let mut key = 4242i32.to_be_bytes().to_vec();
    key.extend_from_slice(&77i32.to_be_bytes());
    pg_msg(&mut out, b'K', &key);
    pg_msg(&mut out, b'Z', b"I");
    s.write_all(&out).ok()?;
    loop {
        let (ty, body) = pg_read(&mut s)?;
        match ty {
            b'Q' if body.windows(17).any(|w| w == b"ferry_reset_probe") => return Some(s),
            b'Q' => {
                let mut out = Vec::new();
                pg_msg(&mut out, b'C', b"SET\0");
                pg_msg(&mut out, b'Z', b"I");
                s.write_all(&out).ok()?;
            }
            b'X' => return None,
            _ => {}
        }
    }
}

/// A client connection to the proxy with its StartupMessage sent (user and database
/// `tester`).
fn pg_connect(proxy: &Server) -> TcpStream {
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(b"user\0tester\0database\0tester\0\0");
    let mut msg = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    c.write_all(&msg).unwrap();
    c
}

/// A PostgreSQL proxy (`extra` flags) in front of [`fake_postgres`], a client logged in
/// through it that sent `SELECT 'ferry_reset_probe'`, and the upstream's end of the server
/// connection that query reached: (proxy, admin address, client, server side).
fn pg_probe(driver: &str, extra: &[&str]) -> (Server, SocketAddr, TcpStream, TcpStream) {
    let (up, handed) = upstream(fake_postgres);
    let flags = [&["--health-interval", "0"][..], extra].concat();
    let (proxy, admin) = Server::start_proxy("postgres", driver, &up.to_string(), &flags, &[]);
    let mut c = pg_connect(&proxy);
    loop {
        let (ty, body) = pg_read(&mut c).expect("login through the proxy");
        assert_ne!(ty, b'E', "login: {}", String::from_utf8_lossy(&body));
        if ty == b'Z' {
            break;
        }
    }
    let mut q = Vec::new();
    pg_msg(&mut q, b'Q', b"SELECT 'ferry_reset_probe'\0");
    c.write_all(&q).unwrap();
    let s = handed
        .recv_timeout(Duration::from_secs(20))
        .expect("the query reached the upstream");
    (proxy, admin, c, s)
}

/// A server's last answer (`SELECT 1`, `ReadyForQuery 'I'`) and then its FATAL `57P01`
/// (an administrator's `pg_terminate_backend`), as one write.
fn answer_then_terminated() -> Vec<u8> {
    let mut answer = Vec::new();
    pg_msg(&mut answer, b'C', b"SELECT 1\0");
    pg_msg(&mut answer, b'Z', b"I");
    answer.extend_from_slice(&pg_error(
        "FATAL",
        "57P01",
        "terminating connection due to administrator command",
    ));
    answer
}

/// Everything the client `c` gets until the proxy closes it: its first error is `code`.
fn assert_first_error(c: &mut TcpStream, code: &str) {
    let got = read_all(c, 1 << 20);
    let codes = pg_error_codes(&got);
    assert_eq!(
        codes.first().map(String::as_str),
        Some(code),
        "errors: {codes:?}"
    );
}

/// The SQLSTATE codes of the ErrorResponses among `bytes` (backend messages), in order.
fn pg_error_codes(mut bytes: &[u8]) -> Vec<String> {
    let mut codes = Vec::new();
    while bytes.len() >= 5 {
        let n = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let Some(body) = bytes.get(5..1 + n) else {
            break;
        };
        if bytes[0] == b'E' {
            for f in body.split(|&b| b == 0) {
                if let Some(c) = f.strip_prefix(b"C") {
                    codes.push(String::from_utf8_lossy(c).into_owned());
                }
            }
        }
        bytes = &bytes[1 + n..];
    }
    codes
}

/// PostgreSQL's `idle_session_timeout` FATAL, sent just before its backend exits with the
/// client's query unread (which makes the close an RST), reaches the client — not the
/// proxy's `08006` "server connection lost".
fn postgres_fatal_before_reset(driver: &str) {
    let (proxy, _admin, mut c, s) = pg_probe(driver, &[]);
    let fatal = pg_error(
        "FATAL",
        "57P05",
        "terminating connection due to idle-session timeout",
    );
    answer_and_reset(&proxy, s, &fatal);
    assert_first_error(&mut c, "57P05");
}

/// The same in session pooling: the client owns the server, so the FATAL behind the answer
/// is its own (then the connection ends).
fn postgres_answer_then_death_in_session_mode_is_told(driver: &str) {
    let (proxy, _admin, mut c, s) = pg_probe(driver, &["--pool-mode", "session"]);
    answer_and_reset(&proxy, s, &answer_then_terminated());
    assert_first_error(&mut c, "57P01");
}

/// The value of the first metric line starting with `name` (labels included in `name` or
/// not), or 0 when there is none.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// A server that answers a query and dies in the same breath (`ReadyForQuery`, then a
/// FATAL and a reset, read by the proxy in one go): the client gets its answer and gives
/// the server back before it hears the server is gone. The dead server must not be pooled:
/// the gauges come back exact (no idle connection that is not open, nothing counted
/// active), and the next query is answered on a new server connection. Before, the dead
/// server was put in the idle list (idle 1, open 0) and the gauges stayed wrong. The
/// server's FATAL is not the client's (transaction pooling): it never sees it (before, it
/// was forwarded behind the answer).
fn postgres_answer_then_death_is_not_pooled(driver: &str) {
    let (proxy, admin, mut c, s) = pg_probe(driver, &[]);
    let until_ready = |c: &mut TcpStream| {
        let mut codes = Vec::new();
        loop {
            let (ty, body) = pg_read(c).expect("an answer through the proxy");
            if ty == b'E' {
                codes.extend(pg_error_codes(
                    &[&[ty][..], &((body.len() + 4) as i32).to_be_bytes(), &body].concat(),
                ));
            }
            if ty == b'Z' {
                return codes;
            }
        }
    };
    answer_and_reset(&proxy, s, &answer_then_terminated());
    assert_eq!(until_ready(&mut c), Vec::<String>::new(), "the answer");
    // The server is gone: nothing idle or active may be left of it.
    let t0 = Instant::now();
    loop {
        let m = common::admin_metrics(admin);
        let idle = metric(&m, "ferry_proxy_pool_idle_connections");
        let active = metric(&m, "ferry_proxy_pool_active_connections");
        let open = metric(&m, "ferry_proxy_upstream_connections");
        if idle == open && active == 0.0 && open == 0.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "gauges: idle {idle}, active {active}, open {open}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And the client goes on, on a new server connection: the dying server's FATAL came in
    // the same read as the answer to its last query, and is not the client's (PgBouncer
    // drops what a server says while no client query is outstanding).
    let mut q = Vec::new();
    pg_msg(&mut q, b'Q', b"SET x = 1\0");
    c.write_all(&q).unwrap();
    let mut answer = Vec::new();
    loop {
        let (ty, body) = pg_read(&mut c).expect("the next query is answered");
        answer.push((ty, body));
        if ty == b'Z' {
            break;
        }
    }
    assert_eq!(
        answer,
        vec![(b'C', b"SET\0".to_vec()), (b'Z', b"I".to_vec())],
        "a query after: the FATAL never reached the client"
    );
}

// --- Redis --------------------------------------------------------------------------------

/// One RESP command (an array of bulk strings) from `s`.
fn resp_command(s: &mut TcpStream) -> Option<Vec<Vec<u8>>> {
    fn line(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut l = Vec::new();
        let mut b = [0u8; 1];
        while !l.ends_with(b"\r\n") {
            s.read_exact(&mut b).ok()?;
            l.push(b[0]);
        }
        l.truncate(l.len() - 2);
        Some(l)
    }
    let head = line(s)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let len: usize = std::str::from_utf8(line(s)?.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let mut a = vec![0u8; len + 2];
        s.read_exact(&mut a).ok()?;
        a.truncate(len);
        args.push(a);
    }
    Some(args)
}

/// A Redis lookalike: `+OK` to everything but `GET probe`, where it hands the connection over.
fn fake_redis(mut s: TcpStream) -> Option<TcpStream> {
    loop {
        let cmd = resp_command(&mut s)?;
        if cmd.len() == 2 && cmd[0].eq_ignore_ascii_case(b"get") && cmd[1] == b"probe" {
            return Some(s);
        }
        s.write_all(b"+OK\r\n").ok()?;
    }
}

/// A reply the upstream sent just before resetting its connection reaches the client.
fn redis_reply_before_reset(driver: &str) {
    let (up, handed) = upstream(fake_redis);
    let (proxy, _admin) = Server::start_proxy(
        "redis",
        driver,
        &up.to_string(),
        &["--health-interval", "0"],
        &[],
    );
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.write_all(b"*2\r\n$3\r\nGET\r\n$5\r\nprobe\r\n").unwrap();
    let s = handed
        .recv_timeout(Duration::from_secs(20))
        .expect("the command reached the upstream");
    answer_and_reset(&proxy, s, b"$5\r\nhello\r\n");
    let got = read_all(&mut c, 11);
    assert_eq!(String::from_utf8_lossy(&got), "$5\r\nhello\r\n");
}

// --- HTTP ---------------------------------------------------------------------------------

/// An HTTP upstream: hands the connection over at the first request head.
fn fake_http(mut s: TcpStream) -> Option<TcpStream> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).ok()?;
        head.push(b[0]);
    }
    Some(s)
}

/// Send `GET /probe` through the proxy; the upstream answers `response` and resets. What
/// the client read, until the proxy closed the connection (or 64 KiB).
fn http_through_reset(driver: &str, response: &[u8]) -> String {
    let (up, handed) = upstream(fake_http);
    let (proxy, _admin) = Server::start_proxy(
        "http",
        driver,
        &up.to_string(),
        &["--health-interval", "0"],
        &[],
    );
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.write_all(b"GET /probe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let s = handed
        .recv_timeout(Duration::from_secs(20))
        .expect("the request reached the upstream");
    answer_and_reset(&proxy, s, response);
    String::from_utf8_lossy(&read_all(&mut c, 64 << 10)).into_owned()
}

/// A whole response (its length known) the upstream sent before its RST is the client's.
fn http_response_before_reset(driver: &str) {
    let got = http_through_reset(driver, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert!(got.ends_with("\r\n\r\nhello"), "{got:?}");
}

/// A body read until the upstream closes is cut short by a reset: the client is not told it
/// is whole (no last chunk; the head reached it, so the connection just ends).
fn http_close_delimited_body_reset_is_not_whole(driver: &str) {
    let got = http_through_reset(driver, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello");
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert!(got.contains("hello"), "{got:?}");
    assert!(
        !got.ends_with("0\r\n\r\n"),
        "a reset passed for the end: {got:?}"
    );
}

per_driver!(
    postgres_fatal_before_reset,
    postgres_answer_then_death_is_not_pooled,
    postgres_answer_then_death_in_session_mode_is_told,
    redis_reply_before_reset,
    http_response_before_reset,
    http_close_delimited_body_reset_is_not_whole,
);
