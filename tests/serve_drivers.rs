//! `ferry serve` with a driver per listener: `--http-driver`, `--redis-driver` and their
//! config-file keys override `--driver` for one listener; kernel-bypass drivers are refused
//! per listener with one clear line and exit code 2.
//!
//! Nothing here asserts timing; loopback only; every child is killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// A running `ferry serve`, killed on drop (also when a test fails).
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this host runs io_uring (else the uring driver falls back to epoll).
fn uring_works() -> bool {
    // On a scratch thread: a ring torn down here could interrupt this thread's reads (EINTR).
    std::thread::spawn(|| ferry_uring::probe().is_ok())
        .join()
        .unwrap_or(false)
}

/// Start `ferry serve ARGS` and read its two listening lines: (protocol, address, driver).
fn start(args: &[&str]) -> (Serve, Vec<(String, String, String)>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("FERRY_DRIVER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry");
    let out = child.stdout.take().unwrap();
    let serve = Serve(child);
    let mut r = BufReader::new(out);
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let rest = line
            .trim_end()
            .strip_prefix("ferry: listening ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        let mut it = rest.split(' ');
        let proto = it.next().unwrap().to_string();
        let addr = it.next().unwrap().to_string();
        let driver = it.next().unwrap().trim_start_matches("driver=").to_string();
        lines.push((proto, addr, driver));
    }
    (serve, lines)
}

fn exchange(addr: &str, send: &[u8], expect_prefix: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(send).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < expect_prefix.len() {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            // A signal for the test harness may interrupt the read: read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        };
        assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(expect_prefix),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

fn check_both_serve(lines: &[(String, String, String)]) {
    for (proto, addr, _) in lines {
        match proto.as_str() {
            "http" => exchange(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b"HTTP/1.1 200"),
            "redis" => exchange(addr, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
            p => panic!("unexpected listener {p}"),
        }
    }
}

#[test]
fn per_listener_flags_override_the_server_driver() {
    let uring = if uring_works() { "uring" } else { "epoll" };
    let (_s, lines) = start(&[
        "serve",
        "--http",
        "127.0.0.1:0",
        "--redis",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--driver",
        "epoll",
        "--redis-driver",
        "uring",
    ]);
    assert_eq!(lines[0].0, "http");
    assert_eq!(lines[0].2, "epoll");
    assert_eq!(lines[1].0, "redis");
    assert_eq!(lines[1].2, uring);
    check_both_serve(&lines);

    let (_s, lines) = start(&[
        "serve",
        "--http",
        "127.0.0.1:0",
        "--redis",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--driver",
        "uring",
        "--http-driver",
        "epoll",
    ]);
    assert_eq!(lines[0].2, "epoll");
    assert_eq!(lines[1].2, uring);
    check_both_serve(&lines);
}

#[test]
fn per_listener_config_keys_and_flag_precedence() {
    let uring = if uring_works() { "uring" } else { "epoll" };
    let dir = std::env::temp_dir().join(format!("ferry-serve-drivers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ferry.toml");
    std::fs::write(
        &cfg,
        "driver = \"epoll\"\nhttp_driver = \"uring\"\nredis_driver = \"uring\"\n",
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    // The file's per-listener keys win over its `driver`; a flag wins over the file.
    let (_s, lines) = start(&[
        "serve",
        "--http",
        "127.0.0.1:0",
        "--redis",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--config",
        cfg_s,
        "--redis-driver",
        "epoll",
    ]);
    assert_eq!(lines[0].2, uring);
    assert_eq!(lines[1].2, "epoll");
    check_both_serve(&lines);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kernel_bypass_drivers_are_refused_per_listener() {
    for (flag, driver) in [("--http-driver", "xdp"), ("--redis-driver", "dpdk")] {
        let out = Command::new(BIN)
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--workers",
                "1",
                flag,
                driver,
            ])
            .env_remove("FERRY_DRIVER")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {driver}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(flag) && err.contains("auto, epoll or uring"),
            "{err}"
        );
    }
    let out = Command::new(BIN)
        .args(["serve", "--http-driver", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// CPU time (user + system) process `pid` has used, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of the file: the 12th and 13th after the command name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// `--busy-poll`: after activity an I/O worker polls without sleeping for the window, then
/// blocks again, so an idle server costs nothing. Bounds are generous (CPU ticks over a
/// second), not timing.
#[test]
fn busy_poll_spins_after_activity_and_sleeps_when_idle() {
    let mut drivers = vec!["epoll"];
    if uring_works() {
        drivers.push("uring");
    }
    for driver in drivers {
        let (s, lines) = start(&[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--redis",
            "127.0.0.1:0",
            "--driver",
            driver,
            "--workers",
            "1",
            "--busy-poll",
            "1s",
        ]);
        let pid = s.0.id();
        check_both_serve(&lines);
        check_both_serve(&lines);
        // Within the window after that activity the worker spins: it uses CPU while idle.
        let t0 = cpu_ticks(pid);
        std::thread::sleep(Duration::from_millis(700));
        let spun = cpu_ticks(pid) - t0;
        assert!(
            spun >= 10,
            "{driver}: {spun} ticks in 0.7 s of a 1 s window"
        );
        // Past the window it blocks: (almost) no CPU while nothing happens.
        std::thread::sleep(Duration::from_millis(800));
        let t0 = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(1));
        let idle = cpu_ticks(pid) - t0;
        assert!(
            idle <= 20,
            "{driver}: {idle} ticks in 1 s idle past the window"
        );
        // And it still serves after sleeping.
        check_both_serve(&lines);
    }
    // The config key: a good value serves, a bad one is a usage error naming the key.
    let dir = std::env::temp_dir().join(format!("ferry-busy-poll-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ferry.toml");
    std::fs::write(&cfg, "busy_poll = \"200us\"\n").unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let args = ["serve", "--http", "127.0.0.1:0", "--redis", "127.0.0.1:0"];
    let (_s, lines) = start(&[&args[..], &["--workers", "1", "--config", cfg_s]].concat());
    check_both_serve(&lines);
    std::fs::write(&cfg, "busy_poll = \"soon\"\n").unwrap();
    let out = Command::new(BIN)
        .args(args)
        .args(["--config", cfg_s])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("busy_poll"));
    let _ = std::fs::remove_dir_all(&dir);
}
