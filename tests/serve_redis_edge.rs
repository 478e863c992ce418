//! Edge cases of `ferry serve --redis` a production user hits, end to end over raw sockets
//! (on the epoll and io_uring drivers, inline and with application workers).
//!
//! Nothing here asserts timing; every wait is bounded; loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;
use common::Server;

fn start(driver: &str, extra: &[&str]) -> Server {
    let mut args = vec!["serve", "--redis", "127.0.0.1:0", "--driver", driver];
    if !extra.contains(&"--workers") {
        args.extend_from_slice(&["--workers", "1"]);
    }
    args.extend_from_slice(extra);
    let s = Server::launch("redis", &args, &[], None);
    assert_eq!(s.driver, driver);
    s
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One reply line (the first line of a reply: enough for simple replies and integers).
fn line(r: &mut impl BufRead) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

/// Read one bulk-string reply whole.
fn bulk(r: &mut impl BufRead) -> Vec<u8> {
    let head = line(r);
    let n: usize = head
        .strip_prefix('$')
        .and_then(|h| h.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not a bulk reply: {head:?}"));
    let mut v = vec![0u8; n + 2];
    r.read_exact(&mut v).unwrap();
    v.truncate(n);
    v
}

/// Bulk arguments larger than the driver's input high-water mark (256 KiB) are read whole:
/// `SET k <1 MiB>` used to hang forever (reading paused with the argument incomplete).
fn bulk_arguments_over_the_read_limit(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    let c = connect(&s);
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    for (i, size) in [300_000usize, 1 << 20, 5 << 20].into_iter().enumerate() {
        let value: Vec<u8> = (0..size).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        w.write_all(&command(&[b"SET", b"big", &value])).unwrap();
        assert_eq!(line(&mut r), "+OK\r\n", "SET of {size} bytes");
        w.write_all(&command(&[b"GET", b"big"])).unwrap();
        assert!(bulk(&mut r) == value, "GET of {size} bytes");
    }
    // Several big arguments in one command, pipelined behind a small one.
    let a = vec![b'a'; 700_000];
    let b = vec![b'b'; 900_000];
    let mut p = command(&[b"PING"]);
    p.extend(command(&[b"MSET", b"a", &a, b"b", &b]));
    p.extend(command(&[b"STRLEN", b"b"]));
    w.write_all(&p).unwrap();
    assert_eq!(line(&mut r), "+PONG\r\n");
    assert_eq!(line(&mut r), "+OK\r\n");
    assert_eq!(line(&mut r), ":900000\r\n");
}

/// A subscriber that never reads while 1 MiB messages are published to it is dropped once
/// about 32 MiB wait for it (Redis's `client-output-buffer-limit pubsub` hard limit) instead
/// of the server buffering every message (memory grew without bound).
fn slow_subscriber_is_dropped(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    let mut sub = connect(&s);
    sub.write_all(&command(&[b"SUBSCRIBE", b"ch"])).unwrap();
    let mut confirm = [0u8; 64];
    let n = sub.read(&mut confirm).unwrap();
    assert!(confirm[..n].starts_with(b"*3\r\n$9\r\nsubscribe"), "{n}");
    let publisher = connect(&s);
    let mut r = BufReader::new(publisher.try_clone().unwrap());
    let mut w = publisher;
    let payload = vec![b'x'; 1 << 20];
    let publish = command(&[b"PUBLISH", b"ch", &payload]);
    let mut receivers = Vec::new();
    for _ in 0..160 {
        w.write_all(&publish).unwrap();
        let got = line(&mut r);
        receivers.push(got.clone());
        if got == ":0\r\n" {
            break;
        }
        assert_eq!(got, ":1\r\n");
    }
    assert_eq!(
        receivers.last().map(String::as_str),
        Some(":0\r\n"),
        "the subscriber was never dropped after {} MiB",
        receivers.len()
    );
    // The subscriber's connection ends (reset or closed) after what was already sent.
    let mut sink = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match sub.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(total < 200 << 20, "the subscriber's connection never ended");
    }
}

/// A client that pipelines more commands than one batch holds (1024) and then half-closes
/// (`shutdown(SHUT_WR)`) gets every reply, up to QUIT's, then EOF. With application workers
/// the commands behind the first batch were dropped (the connection stopped reading at the
/// EOF while they still waited in the input).
fn half_close_with_a_long_pipeline_owed(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    let mut c = connect(&s);
    let mut p = command(&[b"DEL", b"n"]);
    for _ in 0..5000 {
        p.extend(command(&[b"INCR", b"n"]));
    }
    p.extend_from_slice(b"QUIT\r\nINCR n\r\n");
    c.write_all(&p).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    let mut expected = String::from(":0\r\n");
    for i in 1..=5000 {
        expected.push_str(&format!(":{i}\r\n"));
    }
    expected.push_str("+OK\r\n");
    assert!(
        text == expected,
        "{} replies, ending {:?}",
        text.lines().count(),
        &text[text.len().saturating_sub(20)..]
    );
}

/// A client that pipelines commands with big replies and never reads them: the server stops
/// reading from it (the writer blocks) instead of reading and buffering without bound. With
/// application workers each batch's replies stayed inside the connection until a turn with
/// no batch away, so the output high-water mark never tripped.
fn client_that_never_reads_is_not_read_without_bound(driver: &str, extra: &[&str]) {
    let s = start(driver, extra);
    let c = connect(&s);
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    w.write_all(&command(&[b"SET", b"v", &vec![b'v'; 1 << 20]]))
        .unwrap();
    assert_eq!(line(&mut r), "+OK\r\n");
    // 7 bytes asked, 1 MiB owed.
    let chunk = b"GET v\r\n".repeat(4096);
    let mut hog = connect(&s);
    hog.set_nonblocking(true).unwrap();
    let limit = 24usize << 20;
    let (mut sent, mut off) = (0usize, 0usize);
    let mut blocked_since: Option<std::time::Instant> = None;
    let start = std::time::Instant::now();
    while sent < limit && start.elapsed() < Duration::from_secs(60) {
        match hog.write(&chunk[off..]) {
            Ok(n) => {
                sent += n;
                off = (off + n) % chunk.len();
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        sent < limit,
        "the server read {sent} bytes of commands from a client that never reads"
    );
    // The server still serves others.
    let o = connect(&s);
    let mut or = BufReader::new(o.try_clone().unwrap());
    let mut ow = o;
    ow.write_all(&command(&[b"PING"])).unwrap();
    assert_eq!(line(&mut or), "+PONG\r\n");
}

/// Optimistic locking holds across connections, workers and application workers: clients
/// racing `WATCH n; GET n; MULTI; SET n <n+1>; EXEC` never lose an update (the final value is
/// the number of EXECs that succeeded; the others got nil).
fn watch_multi_exec_counter_never_loses_an_update(driver: &str, extra: &[&str]) {
    let mut extra = extra.to_vec();
    extra.extend_from_slice(&["--workers", "2"]);
    let s = start(driver, &extra);
    let clients = 4;
    let per_client = 100;
    let results: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let c = connect(&s);
                scope.spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut w = c;
                    let (mut ok, mut failed) = (0u64, 0u64);
                    let deadline = std::time::Instant::now() + Duration::from_secs(120);
                    while ok < per_client && std::time::Instant::now() < deadline {
                        w.write_all(&command(&[b"WATCH", b"n"])).unwrap();
                        assert_eq!(line(&mut r), "+OK\r\n");
                        w.write_all(&command(&[b"GET", b"n"])).unwrap();
                        let head = line(&mut r);
                        let cur: u64 = if head.starts_with("$-1") {
                            0
                        } else {
                            let n: usize = head[1..].trim_end().parse().unwrap();
                            let mut v = vec![0u8; n + 2];
                            r.read_exact(&mut v).unwrap();
                            std::str::from_utf8(&v[..n]).unwrap().parse().unwrap()
                        };
                        let next = (cur + 1).to_string();
                        let mut p = command(&[b"MULTI"]);
                        p.extend(command(&[b"SET", b"n", next.as_bytes()]));
                        p.extend(command(&[b"EXEC"]));
                        w.write_all(&p).unwrap();
                        assert_eq!(line(&mut r), "+OK\r\n");
                        assert_eq!(line(&mut r), "+QUEUED\r\n");
                        match line(&mut r).as_str() {
                            "*1\r\n" => {
                                assert_eq!(line(&mut r), "+OK\r\n");
                                ok += 1;
                            }
                            "*-1\r\n" => failed += 1,
                            other => panic!("EXEC replied {other:?}"),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let c = connect(&s);
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    w.write_all(&command(&[b"GET", b"n"])).unwrap();
    let value: u64 = String::from_utf8(bulk(&mut r)).unwrap().parse().unwrap();
    assert_eq!(value, ok, "lost updates: {results:?}");
    assert_eq!(ok, clients * per_client, "{results:?}");
}

macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll", &[]); } )*
        }
        mod epoll_app_workers {
            $( #[test] fn $name() { super::$name("epoll", &["--app-workers", "2"]); } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name("uring", &[]); } )*
        }
    };
}

both_drivers!(
    bulk_arguments_over_the_read_limit,
    client_that_never_reads_is_not_read_without_bound,
    half_close_with_a_long_pipeline_owed,
    slow_subscriber_is_dropped,
    watch_multi_exec_counter_never_loses_an_update,
);
