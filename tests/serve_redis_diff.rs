//! The kv differential test against the real server binary: the same script (every command of
//! the contract, ≥ 200 commands; apps/kv/tests/differential.rs, included below, not copied)
//! sent to `ferry serve --redis` and to a real redis-server, reply by reply, on epoll, on
//! io_uring and with application workers.
//!
//! (The included file's own test, against the blocking example server, runs here too, as
//! `differential::same_replies_as_redis_server`.)
//!
//! Nothing here asserts timing; loopback only.

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
