//! End-to-end tests of h2c on `ferry serve`'s HTTP listener under each driver: prior knowledge
//! and `Upgrade: h2c`, driven by curl, nghttp, h2load and `ferry bench --h2` (also against
//! nginx's h2c).
//!
//! Nothing here asserts timing; every wait is bounded; loopback only.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, run, sha256, Server, BIN};

fn curl(args: &[&str]) -> String {
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn tmp_dir(name: &str) -> PathBuf {
    common::tmp_dir("h2", name)
}

fn prior_knowledge_routes(driver: &str, extra: &[&str]) {
    let s = Server::start_http(driver, extra);
    let out = curl(&[
        "--http2-prior-knowledge",
        "-w",
        " %{http_version} %{response_code}",
        &s.url("/"),
    ]);
    assert_eq!(out, "hello world\n 2 200");
    let health = curl(&["--http2-prior-knowledge", &s.url("/health")]);
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let metrics = curl(&["--http2-prior-knowledge", &s.url("/metrics")]);
    assert!(metrics.contains("ferry_requests_total"), "{metrics}");
    let nf = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{response_code}",
        &s.url("/nope"),
    ]);
    assert_eq!(nf, "404");
    // HTTP/1.1 still works on the same listener.
    assert_eq!(curl(&["--http1.1", &s.url("/")]), "hello world\n");
}

fn echo_5mb_sha256(driver: &str, extra: &[&str]) {
    let s = Server::start_http(driver, extra);
    let d = tmp_dir(&format!("echo-{driver}-{}", extra.len()));
    let input = d.join("in");
    let output = d.join("out");
    let data: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    let code = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        &format!("@{}", input.display()),
        "-o",
        output.to_str().unwrap(),
        "-w",
        "%{http_version} %{response_code}",
        &s.url("/echo"),
    ]);
    assert_eq!(code, "2 200");
    assert_eq!(sha256(&input), sha256(&output));
    let _ = std::fs::remove_dir_all(&d);
}

fn upgrade(driver: &str, extra: &[&str]) {
    let s = Server::start_http(driver, extra);
    let out = curl(&[
        "--http2",
        "-w",
        " %{http_version} %{response_code}",
        &s.url("/"),
    ]);
    assert_eq!(out, "hello world\n 2 200");
    let out = curl(&["--http2", &s.url("/health"), &s.url("/")]);
    assert!(
        out.contains("\"status\":\"ok\"") && out.ends_with("hello world\n"),
        "{out}"
    );
    // A request with a body is not upgraded (curl does not offer it): plain HTTP/1.1 echo.
    let out = curl(&["--http2", "--data-binary", "abc", &s.url("/echo")]);
    assert_eq!(out, "abc");
}

fn nghttp(driver: &str, extra: &[&str]) {
    let s = Server::start_http(driver, extra);
    for upgrade in [false, true] {
        let mut cmd = Command::new("nghttp");
        cmd.args(["-v", "-t", "30"]);
        if upgrade {
            cmd.arg("-u");
        }
        let out = run(cmd.arg(s.url("/")));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(":status: 200"), "{text}");
        assert!(text.contains("hello world"), "{text}");
        assert!(
            text.contains("GOAWAY") || text.contains("send GOAWAY"),
            "{text}"
        );
    }
}

fn h2load(driver: &str, extra: &[&str]) {
    let s = Server::start_http(driver, extra);
    let out = run(Command::new("timeout").args([
        "120",
        "h2load",
        "-c4",
        "-m32",
        "-n",
        "20000",
        &s.url("/"),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored"
        ),
        "{text}"
    );
    assert!(text.contains("status codes: 20000 2xx"), "{text}");
}

fn bench_h2_json(url: &str) {
    let out = run(Command::new(BIN).args([
        "bench", "--h2", "-m", "8", url, "-c", "4", "-n", "4000", "--json",
    ]));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.trim();
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"errors\":0,"), "{line}");
    let requests: u64 = line
        .strip_prefix("{\"requests\":")
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(requests > 0, "{line}");
    for k in [
        "\"duration_s\":",
        "\"rps\":",
        "\"latency_us\":{\"p50\":",
        "\"p999\":",
    ] {
        assert!(line.contains(k), "{k} in {line}");
    }
}

fn ferry_bench_h2(driver: &str, extra: &[&str]) {
    let s = Server::start_http(driver, extra);
    bench_h2_json(&s.url("/"));
}

/// Python's `h2` (hyper-h2) as the client, prior knowledge: many concurrent streams over every
/// route, two large `/echo` bodies at once (sha256 of what went and what came back), and
/// request trailers (accepted: the body is echoed, the stream ends normally, no reset).
const PY_H2_CLIENT: &str = r#"
import hashlib
from h2_client import *

# The server's SETTINGS first (its stream limit).
first = start('GET', '/')
run([first])
assert status[first] == b'200' and bodies[first] == b'hello world\n'
limit = min(c.remote_settings.max_concurrent_streams, 100)
assert limit >= 10, limit

# Many concurrent streams over every route, `limit` at a time, 600 in all.
def expect(i):
    k = i % 6
    if k == 0: return ('GET', '/', None, b'200', b'hello world\n')
    if k == 1: return ('HEAD', '/', None, b'200', b'')
    if k == 2: return ('GET', '/health', None, b'200', None)
    if k == 3: return ('GET', '/metrics', None, b'200', None)
    if k == 4: return ('GET', '/nope/%d' % i, None, b'404', None)
    body = b'stream %d ' % i + bytes(range(256)) * (i % 9)
    return ('POST', '/echo', body, b'200', body)

total = 600
done = 0
while done < total:
    batch = list(range(done, min(done + limit, total)))
    ids = {}
    for i in batch:
        m, p, b, _, _ = expect(i)
        ids[i] = start(m, p, b)
    run(list(ids.values()))
    for i, sid in ids.items():
        _, p, _, st, want = expect(i)
        assert status[sid] == st, (i, p, status[sid])
        if want is not None:
            assert bytes(bodies[sid]) == want, (i, p, len(bodies[sid]))
        if p == '/health':
            assert bodies[sid].startswith(b'{"status":"ok"'), bodies[sid]
        if p == '/metrics':
            assert b'ferry_requests_total' in bodies[sid]
    done += len(batch)
print("streams", done)

# Two large bodies both ways at once, one with a content-length, one without.
big1 = hashlib.sha256(b'one').digest() * (8 * 1024 * 1024 // 32 + 7)
big2 = bytes(reversed(range(256))) * (3 * 1024 * 1024 // 256 + 3)
a = start('POST', '/echo', big1, headers=[('content-length', str(len(big1)))])
b = start('PUT', '/echo', big2)
run([a, b])
for sid, sent in ((a, big1), (b, big2)):
    assert status[sid] == b'200', status[sid]
    print("echo", len(sent), hashlib.sha256(sent).hexdigest(), len(bodies[sid]),
          hashlib.sha256(bytes(bodies[sid])).hexdigest())

# Request trailers: accepted, the body echoed, the stream ends normally.
t = start('POST', '/echo', b'with trailers', [('x-checksum', 'abc'), ('grpc-status', '0')])
t2 = start('POST', '/echo', b'x' * 70000, [('x-end', '1')], headers=[('content-length', '70000')])
run([t, t2])
assert status[t] == b'200' and bytes(bodies[t]) == b'with trailers', (status[t], bodies[t])
assert status[t2] == b'200' and bytes(bodies[t2]) == b'x' * 70000, (status[t2], len(bodies[t2]))
# The connection still serves after them.
n = start('GET', '/')
run([n])
assert status[n] == b'200' and bodies[n] == b'hello world\n'
finish()
print("OK")
"#;

fn python_h2_client(driver: &str, extra: &[&str]) {
    let s = Server::start_http(driver, extra);
    let out = run(Command::new(common::python())
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support"),
        )
        .args(["-c", PY_H2_CLIENT, &s.addr.ip().to_string(), &s.port()]));
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}");
    assert_eq!(text.lines().last(), Some("OK"), "{text}");
    assert!(text.contains("streams 600\n"), "{text}");
    let echoes: Vec<&str> = text.lines().filter(|l| l.starts_with("echo ")).collect();
    assert_eq!(echoes.len(), 2, "{text}");
    for l in echoes {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 5, "{l}");
        assert!(f[1].parse::<usize>().unwrap() > 1_000_000, "{l}");
        assert_eq!((f[1], f[2]), (f[3], f[4]), "the echo differs: {l}");
    }
}

macro_rules! per_driver {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name("epoll", &[]); } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name("uring", &[]); } )*
        }
        mod app_workers {
            $( #[test] fn $name() { super::$name("uring", &["--app-workers", "2"]); } )*
        }
    };
}

per_driver!(
    prior_knowledge_routes,
    echo_5mb_sha256,
    upgrade,
    nghttp,
    h2load,
    ferry_bench_h2,
    python_h2_client,
);

/// `ferry bench --h2` against nginx's h2c (`listen … http2` without TLS: prior knowledge).
#[test]
fn ferry_bench_h2_against_nginx() {
    let d = tmp_dir("nginx");
    std::fs::write(d.join("index.html"), "hello world\n").unwrap();
    for _attempt in 0..5 {
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {dir}/body;\n\
             proxy_temp_path {dir}/proxy;\n fastcgi_temp_path {dir}/fastcgi;\n\
             uwsgi_temp_path {dir}/uwsgi;\n scgi_temp_path {dir}/scgi;\n\
             server {{\n  listen 127.0.0.1:{port} http2;\n  http2_max_requests 1000000;\n  root {dir};\n }}\n}}\n",
            dir = d.display()
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new("nginx")
            .args(["-p", d.to_str().unwrap(), "-c", conf_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let start = Instant::now();
        let mut up = false;
        while start.elapsed() < Duration::from_secs(10) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        bench_h2_json(&format!("http://127.0.0.1:{port}/index.html"));
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&d);
        return;
    }
    panic!("nginx did not start");
}
