//! Real Redis clients against the example server (examples/redis_server.rs): redis-cli
//! (commands, `--pipe` mass insertion, RESP3 with `-3`), redis-benchmark (default tests and
//! `-P 16`) and redis-py ≥ 5 (protocol 2 and 3, pipelines, pub/sub).

mod common;

use common::{python, run_cmd, start_ferry, Client};
use ferry_resp::Value;

fn cli(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let port = addr.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    let (ok, out, err) = run_cmd("redis-cli", &all, None);
    assert!(ok, "redis-cli {args:?} failed: {err}");
    out
}

#[test]
fn redis_cli_commands() {
    let addr = start_ferry();
    assert_eq!(cli(addr, &["PING"]), "PONG\n");
    assert_eq!(cli(addr, &["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(cli(addr, &["GET", "greeting"]), "hello world\n");
    assert_eq!(cli(addr, &["INCRBY", "n", "41"]), "41\n");
    assert_eq!(cli(addr, &["RPUSH", "l", "a", "b"]), "2\n");
    assert_eq!(cli(addr, &["LRANGE", "l", "0", "-1"]), "a\nb\n");
    assert_eq!(cli(addr, &["HSET", "h", "f", "v"]), "1\n");
    assert_eq!(cli(addr, &["TYPE", "h"]), "hash\n");
    assert_eq!(cli(addr, &["DBSIZE"]), "4\n");
    let out = cli(addr, &["NOSUCHCMD", "x"]);
    assert!(
        out.contains("ERR unknown command 'NOSUCHCMD', with args beginning with: 'x'"),
        "{out}"
    );
    assert!(cli(addr, &["INFO", "server"]).contains("redis_version:"));
    assert!(
        cli(addr, &["COMMAND", "COUNT"])
            .trim()
            .parse::<u32>()
            .unwrap()
            > 40
    );
    // Inline commands, as typed into a terminal.
    let (ok, out, _) = run_cmd(
        "redis-cli",
        &["-p", &addr.port().to_string()],
        Some(b"SET \"a b\" 'c d'\nGET \"a b\"\n"),
    );
    assert!(ok);
    assert_eq!(out, "OK\nc d\n");
}

#[test]
fn redis_cli_resp3() {
    let addr = start_ferry();
    cli(addr, &["HSET", "h", "f", "v"]);
    cli(addr, &["ZADD", "z", "1.5", "m"]);
    let out = cli(addr, &["-3", "HELLO", "3"]);
    assert!(out.contains("proto") && out.contains('3'), "{out}");
    assert_eq!(cli(addr, &["-3", "HGETALL", "h"]), "f v\n");
    assert_eq!(
        cli(addr, &["-3", "ZRANGE", "z", "0", "-1", "WITHSCORES"]),
        "m\n1.5\n"
    );
    assert_eq!(cli(addr, &["-3", "GET", "nope"]), "\n");
}

#[test]
fn redis_cli_pipe_mass_insertion() {
    const N: usize = 1_000_000;
    let addr = start_ferry();
    let mut data = Vec::with_capacity(N * 40);
    for i in 0..N {
        let k = format!("key:{i}");
        let v = format!("val:{i}");
        data.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
                k.len(),
                v.len()
            )
            .as_bytes(),
        );
    }
    let port = addr.port().to_string();
    let (ok, out, err) = run_cmd(
        "redis-cli",
        &["-p", &port, "--pipe", "--pipe-timeout", "120"],
        Some(&data),
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("errors: 0, replies: {N}")),
        "{out}{err}"
    );
    let mut c = Client::connect(addr);
    assert_eq!(c.run("DBSIZE"), Value::Integer(N as i64));
    assert_eq!(c.run("GET key:999999"), Value::bulk("val:999999"));
}

fn bench(args: &[&str]) {
    let addr = start_ferry();
    let port = addr.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-q"];
    all.extend_from_slice(args);
    let (ok, out, err) = run_cmd("redis-benchmark", &all, None);
    let text = format!("{out}{err}");
    assert!(ok, "redis-benchmark failed: {text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        !lower.contains("error") && !lower.contains("warning"),
        "{text}"
    );
    // Every test reported a final line.
    for t in ["SET", "GET", "INCR", "LPUSH", "SPOP", "ZPOPMIN", "MSET"] {
        if args.contains(&"-t") && !args.iter().any(|a| a.to_ascii_uppercase().contains(t)) {
            continue;
        }
        let done = text
            .split(['\r', '\n'])
            .any(|l| l.trim_start().starts_with(t) && l.contains("requests per second"));
        assert!(done, "no result for {t}: {text}");
    }
}

#[test]
fn redis_benchmark_default_tests_without_errors() {
    bench(&["-n", "20000"]);
}

#[test]
fn redis_benchmark_pipelined_without_errors() {
    bench(&["-n", "20000", "-P", "16"]);
}

#[test]
fn redis_py_protocol_2_and_3() {
    let addr = start_ferry();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/redis_py_check.py");
    let py = python();
    let (ok, out, err) = run_cmd(&py, &[script, &addr.port().to_string()], None);
    assert!(ok, "redis-py check failed ({py}):\n{out}\n{err}");
    assert!(out.contains("redis-py ok"), "{out}");
}
