//! The kv differential test against the real server binary: the same script (every command of
//! the contract, ≥ 200 commands; apps/kv/tests/differential.rs, included below, not copied)
//! sent to `ferry serve --redis` and to a real redis-server, reply by reply, on epoll, on
//! io_uring and with application workers.
//!
//! (The included file's own test, against the blocking example server, runs here too, as
//! `differential::same_replies_as_redis_server`.)
//!
//! Cases that need two clients or raw bytes (WATCH against another client's writes, RESP2's
//! `*-1` and RESP3's `_`, pub/sub queued by MULTI, a RESP3 client's own PUBLISH messages)
//! run as `*_two_clients_same_bytes_as_redis_server`: every reply byte for byte.
//!
//! Nothing here asserts timing; loopback only.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;
use common::Server;

#[path = "../apps/kv/tests/differential.rs"]
mod differential;

fn same_replies_as_redis_server(driver: &str, extra: &[&str]) {
    let mut args = vec![
        "serve",
        "--redis",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--driver",
        driver,
    ];
    args.extend_from_slice(extra);
    let s = Server::launch("redis", &args, &[], None);
    // Really on this driver (no silent fallback from io_uring to epoll).
    assert_eq!(s.driver, driver);
    differential::assert_same_replies_as_redis(s.addr);
}

#[test]
fn epoll_same_replies_as_redis_server() {
    same_replies_as_redis_server("epoll", &[]);
}

#[test]
fn uring_same_replies_as_redis_server() {
    same_replies_as_redis_server("uring", &[]);
}

#[test]
fn app_workers_same_replies_as_redis_server() {
    same_replies_as_redis_server("uring", &["--app-workers", "2"]);
}

// ----- Two clients, raw bytes ------------------------------------------------------------------

/// Each line: `<client>[<frames>] <command>`: client `a` or `b` sends the command, then
/// `frames` reply frames (default 1) are read. Client `~a` sends without comparing (HELLO's
/// map carries the client id). Every reply's bytes must equal redis-server's.
const TWO_CLIENTS: &str = r#"
a FLUSHALL
a SET k 1
a WATCH k
b SET k 2
a MULTI
a GET k
a EXEC
a WATCH k
a SET k 3
a MULTI
a GET k
a EXEC
a WATCH k
b SET k 9 NX
b DEL nokey
b GET k
b EXPIRE nokey 10
a MULTI
a GET k
a EXEC
a WATCH nokey
b SET nokey 1
a MULTI
a EXEC
a WATCH k
b SET k 2
a UNWATCH
a MULTI
a GET k
a EXEC
a WATCH k
b SET k 3
a MULTI
a UNWATCH
a EXEC
a WATCH k
a MULTI
a DISCARD
b SET k 4
a MULTI
a EXEC
a WATCH k
a EXEC
b SET k 5
a MULTI
a EXEC
a WATCH k
b SET k 6
a MULTI
a NOSUCH
a EXEC
a MULTI
a EXEC
a WATCH k nokey2
b FLUSHALL
a MULTI
a EXEC
a WATCH nokey3
b FLUSHDB
a MULTI
a EXEC
a HSET h f v
a WATCH h
b HSET h f v
a MULTI
a EXEC
a WATCH h
b HDEL h nof
b HGET h f
a MULTI
a EXEC
a HSET h n 1
a WATCH h
b HINCRBY h n 0
a MULTI
a EXEC
a ZADD z 1 m
a WATCH z
b ZADD z 1 m
b ZADD z INCR 0 m
b ZADD z XX 5 nom
b ZADD z NX 7 m
a MULTI
a EXEC
a WATCH z
b ZADD z 2 m
a MULTI
a EXEC
a WATCH z
b ZPOPMIN nz
a MULTI
a EXEC
a WATCH z
b ZPOPMIN z
a MULTI
a EXEC
a SADD st m
a WATCH st
b SADD st m
b SREM st zz
a MULTI
a EXEC
a WATCH st
b SPOP st
a MULTI
a EXEC
a WATCH st
b SREM st m n
a MULTI
a EXEC
a RPUSH l x y
a WATCH l
b LPOP nol
b LLEN l
b LRANGE l 0 -1
a MULTI
a EXEC
a WATCH l
b RPOP l
a MULTI
a EXEC
a WATCH l
b LPUSH l z
a MULTI
a EXEC
a SET k 1
a WATCH k
b APPEND k ""
a MULTI
a EXEC
a WATCH k
b EXPIRE k 100
a MULTI
a EXEC
a WATCH k
b EXPIRE k 10 NX
b PERSIST nokey
a MULTI
a EXEC
a WATCH k
b PERSIST k
a MULTI
a EXEC
a WATCH k
b EXPIRE k -1
a MULTI
a EXEC
a WATCH xs
b XADD xs NOMKSTREAM 1-1 f v
a MULTI
a EXEC
a WATCH xs
b XADD xs 1-1 f v
a MULTI
a EXEC
a WATCH m2
b MSET m1 a m2 b
a MULTI
a EXEC
a WATCH f
b INCRBYFLOAT f 1.5
a MULTI
a EXEC
a WATCH s
b SETRANGE s 0 ""
b GETRANGE s 0 1
a MULTI
a EXEC
a WATCH s
b SETRANGE s 3 x
a MULTI
a EXEC
a WATCH c
b INCR c
a MULTI
a EXEC
a WATCH c
a MULTI
a INCR c
a EXEC
a MULTI
a EXEC
a WATCH g
b GETSET g 1
a MULTI
a EXEC
a WATCH g
b SET g 2 KEEPTTL
a MULTI
a EXEC
a WATCH g
b SETNX g 3
a MULTI
a EXEC
a WATCH g
b DEL g
a MULTI
a EXEC
a MULTI
a WATCH k
a GET k
a EXEC
~a HELLO 3
a WATCH k
b SET k 7
a MULTI
a EXEC
a WATCH k
a RESET
b SET k 8
a MULTI
a EXEC
a MULTI
a SUBSCRIBE ch1 ch2
a PSUBSCRIBE p*
a UNSUBSCRIBE ch1
a SSUBSCRIBE s1
a SUNSUBSCRIBE
a SET x 1
a2 EXEC
a PING
a GET x
a UNSUBSCRIBE
a PUNSUBSCRIBE
a PING
a MULTI
a PUNSUBSCRIBE
a UNSUBSCRIBE
a EXEC
a MULTI
a SUBSCRIBE
a EXEC
~a HELLO 3
a MULTI
a SUBSCRIBE c3 c4
a PUNSUBSCRIBE
a UNSUBSCRIBE c3
a GET x
a2 EXEC
a PING
a2 PUBLISH c4 hello
a GET x
a UNSUBSCRIBE
a SUBSCRIBE c5
a2 PUBLISH c5 again
a UNSUBSCRIBE
a MULTI
a SUBSCRIBE c6
a PUBLISH c6 in-exec
a SET x 2
a2 EXEC
a SUBSCRIBE c7
a MULTI
a PUBLISH c7 m7
a PUBLISH nobody m
a EXEC
a2 UNSUBSCRIBE c6 c7
a RESET
a MULTI
a SUBSCRIBE c8
a PUBLISH c8 resp2
a2 EXEC
a UNSUBSCRIBE
"#;

/// One whole reply frame, raw (nested aggregates included).
fn frame(r: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    out.extend_from_slice(&line);
    let n: i64 = std::str::from_utf8(&line[1..])
        .ok()
        .and_then(|s| s.trim_end().parse().ok())
        .unwrap_or(0);
    match line[0] {
        b'$' | b'=' | b'!' if n >= 0 => {
            let mut v = vec![0u8; n as usize + 2];
            r.read_exact(&mut v)?;
            out.extend_from_slice(&v);
        }
        b'*' | b'~' | b'>' => {
            for _ in 0..n.max(0) {
                frame(r, out)?;
            }
        }
        b'%' | b'|' => {
            for _ in 0..2 * n.max(0) {
                frame(r, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw {
            r: BufReader::new(c.try_clone().unwrap()),
            w: c,
        }
    }

    fn cmd(&mut self, args: &[String], frames: usize) -> Result<Vec<u8>, String> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        self.w.write_all(&out).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        for _ in 0..frames {
            frame(&mut self.r, &mut got).map_err(|e| format!("{e} after {got:?}"))?;
        }
        Ok(got)
    }
}

fn two_clients_same_bytes_as_redis_server(driver: &str, extra: &[&str]) {
    let mut args = vec!["serve", "--redis", "127.0.0.1:0", "--workers", "1"];
    args.extend_from_slice(&["--driver", driver]);
    args.extend_from_slice(extra);
    let s = Server::launch("redis", &args, &[], None);
    assert_eq!(s.driver, driver);
    let redis = common::Redis::start();
    let ferry_addr = s.addr.to_string();
    let mut ours = [Raw::connect(&ferry_addr), Raw::connect(&ferry_addr)];
    let mut theirs = [Raw::connect(&redis.addr()), Raw::connect(&redis.addr())];
    let mut mismatches = Vec::new();
    for line in TWO_CLIENTS.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (who, cmd) = line.split_once(' ').unwrap();
        let compare = !who.starts_with('~');
        let who = who.trim_start_matches('~');
        let i = usize::from(who.as_bytes()[0] - b'a');
        let frames: usize = who[1..].parse().unwrap_or(1);
        let args: Vec<String> = cmd
            .split(' ')
            .map(|w| {
                if w == "\"\"" {
                    String::new()
                } else {
                    w.to_string()
                }
            })
            .collect();
        let a = ours[i].cmd(&args, frames);
        let b = theirs[i].cmd(&args, frames);
        if compare && a != b {
            let show = |r: &Result<Vec<u8>, String>| match r {
                Ok(v) => format!("{:?}", String::from_utf8_lossy(v)),
                Err(e) => format!("error: {e}"),
            };
            mismatches.push(format!(
                "{line}\n   ferry {}\n   redis {}",
                show(&a),
                show(&b)
            ));
            if a.is_err() || b.is_err() {
                break;
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} replies differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn epoll_two_clients_same_bytes_as_redis_server() {
    two_clients_same_bytes_as_redis_server("epoll", &[]);
}

#[test]
fn uring_two_clients_same_bytes_as_redis_server() {
    two_clients_same_bytes_as_redis_server("uring", &[]);
}

#[test]
fn app_workers_two_clients_same_bytes_as_redis_server() {
    two_clients_same_bytes_as_redis_server("epoll", &["--app-workers", "2"]);
}
