//! Real peers against the state machine: curl (prior knowledge and `Upgrade: h2c`), nghttp,
//! h2load and Python's `h2` library against the blocking example server
//! (examples/h2c_server.rs) on a loopback ephemeral port.
//!
//! Needs `curl`, `nghttp` and `h2load` (Debian `nghttp2-client`) and `h2==4.1.0` in the Python
//! at `$FERRY_PYTHON` (default `/work/main/.venv/bin/python`); `scripts/install-test-deps`
//! installs them.

#[path = "../examples/h2c_server.rs"]
#[allow(dead_code)]
mod example;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};

fn start() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || example::serve(l));
    addr
}

fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is installed by scripts/install-test-deps: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn temp_file(name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let path = std::env::temp_dir().join(format!("ferry-h2-{}-{name}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    (path, data)
}

#[test]
fn curl_prior_knowledge_routes() {
    let addr = start();
    let out = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            "--http2-prior-knowledge",
            &format!("http://{addr}/"),
        ],
    );
    assert_eq!(out.stdout, b"hello world\n");
    let out = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &format!("http://{addr}/nope"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404 2");
}

#[test]
fn curl_upgrade_h2c() {
    let addr = start();
    let out = run(
        "curl",
        &[
            "-sS",
            "-v",
            "--max-time",
            "30",
            "--http2",
            &format!("http://{addr}/"),
        ],
    );
    assert_eq!(out.stdout, b"hello world\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("101 Switching Protocols"), "{err}");
    assert!(err.contains("HTTP/2 200"), "{err}");
}

#[test]
fn curl_large_echo_both_ways() {
    let addr = start();
    let (path, data) = temp_file("curl-echo", 8_000_000);
    let out = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "60",
            "--http2-prior-knowledge",
            "--data-binary",
            &format!("@{}", path.display()),
            &format!("http://{addr}/echo"),
        ],
    );
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data);
    let _ = std::fs::remove_file(path);
}

/// Over the upgraded connection: curl 7.88.1 cannot reuse a prior-knowledge connection ("Error
/// in the HTTP2 framing layer" on the second request, against any server, Python `h2` included).
#[test]
fn curl_many_concurrent_streams() {
    let addr = start();
    let url = format!("http://{addr}/");
    let mut args = vec![
        "-sS",
        "--max-time",
        "60",
        "--http2",
        "--parallel",
        "--parallel-max",
        "64",
    ];
    let urls: Vec<String> = (0..200).map(|_| url.clone()).collect();
    args.extend(urls.iter().map(String::as_str));
    let out = run("curl", &args);
    assert_eq!(out.stdout, "hello world\n".repeat(200).into_bytes());
}

#[test]
fn nghttp_get_and_upload() {
    let addr = start();
    let out = run("nghttp", &["-v", &format!("http://{addr}/")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello world"), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
    let (path, data) = temp_file("nghttp-echo", 3_000_000);
    let out = run(
        "nghttp",
        &[
            "-d",
            &path.display().to_string(),
            &format!("http://{addr}/echo"),
        ],
    );
    assert!(
        out.stdout == data,
        "echo mismatch: {} vs {}",
        out.stdout.len(),
        data.len()
    );
    // Upgrade path too.
    let out = run("nghttp", &["-u", &format!("http://{addr}/")]);
    assert_eq!(out.stdout, b"hello world\n");
    let _ = std::fs::remove_file(path);
}

#[test]
fn nghttp_multiplexed() {
    let addr = start();
    let out = run(
        "nghttp",
        &["-n", "-s", "-m", "100", &format!("http://{addr}/")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(" 200 ").count(), 100, "{text}");
}

fn h2load_ok(out: &Output, n: usize) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("requests: {n} total, {n} started, {n} done, {n} succeeded, 0 failed, 0 errored, 0 timeout")), "{text}");
    assert!(text.contains(&format!("status codes: {n} 2xx")), "{text}");
}

#[test]
fn h2load_get_and_post() {
    let addr = start();
    let out = run(
        "h2load",
        &[
            "-n",
            "20000",
            "-c",
            "4",
            "-m",
            "32",
            &format!("http://{addr}/"),
        ],
    );
    h2load_ok(&out, 20000);
    let (path, _) = temp_file("h2load-post", 100_000);
    let out = run(
        "h2load",
        &[
            "-n",
            "400",
            "-c",
            "2",
            "-m",
            "8",
            "-d",
            &path.display().to_string(),
            &format!("http://{addr}/echo"),
        ],
    );
    h2load_ok(&out, 400);
    let _ = std::fs::remove_file(path);
}

const PY_CLIENT: &str = r#"
from h2_client import *

# Many concurrent streams.
ids = [start('GET', '/') for _ in range(80)]
run(ids)
assert all(status[i] == b'200' and bodies[i] == b'hello world\n' for i in ids)
# Large bodies both ways, two at once.
big1 = bytes(range(256)) * 12000
big2 = bytes(reversed(range(256))) * 9000
a, b = start('POST', '/echo', big1), start('PUT', '/echo', big2)
run([a, b])
assert bodies[a] == big1 and bodies[b] == big2
# Trailers are echoed.
t = start('POST', '/echo', b'with trailers', [('x-checksum', 'abc'), ('grpc-status', '0')])
run([t])
assert bodies[t] == b'with trailers', bodies[t]
assert trailers[t] == {b'x-checksum': b'abc', b'grpc-status': b'0'}, trailers
# 404.
n = start('GET', '/missing')
run([n])
assert status[n] == b'404'
finish()
print("OK")
"#;

#[test]
fn python_h2_client() {
    let addr = start();
    let py = std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "/work/main/.venv/bin/python".into());
    let out = Command::new(py)
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/support"),
        )
        .arg("-c")
        .arg(PY_CLIENT)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

const PY_SERVER: &str = r#"
import socket, sys
import h2.connection, h2.events, h2.config

s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen()
print(s.getsockname()[1], flush=True)
conn, _ = s.accept()
conn.settimeout(60)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
c.initiate_connection()
conn.sendall(c.data_to_send())
bodies, paths, out = {}, {}, {}

def pump():
    for sid in list(out):
        buf, tr = out[sid]
        while len(buf):
            w = min(c.local_flow_control_window(sid), c.max_outbound_frame_size, len(buf))
            if w <= 0:
                break
            c.send_data(sid, bytes(buf[:w]))
            buf = buf[w:]
        out[sid][0] = buf
        if not len(buf):
            if tr:
                c.send_headers(sid, tr, end_stream=True)
            else:
                c.end_stream(sid)
            del out[sid]

while True:
    try:
        d = conn.recv(1 << 16)
    except OSError:
        break
    if not d:
        break
    for ev in c.receive_data(d):
        if isinstance(ev, h2.events.RequestReceived):
            paths[ev.stream_id] = dict(ev.headers)[b':path']
            bodies[ev.stream_id] = bytearray()
        elif isinstance(ev, h2.events.DataReceived):
            bodies[ev.stream_id] += ev.data
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            sid = ev.stream_id
            if paths[sid] == b'/echo':
                c.send_headers(sid, [(':status', '200')])
                out[sid] = [memoryview(bytes(bodies[sid])), [('x-len', str(len(bodies[sid])))]]
            elif paths[sid] == b'/push':
                p = c.get_next_available_stream_id()
                c.push_stream(sid, p, [(':method', 'GET'), (':scheme', 'http'), (':authority', 'x'), (':path', '/pushed')])
                c.send_headers(p, [(':status', '200')])
                c.send_data(p, b'pushed', end_stream=True)
                c.send_headers(sid, [(':status', '200')])
                c.send_data(sid, b'hello world\n', end_stream=True)
            else:
                c.send_headers(sid, [(':status', '200'), ('content-length', '12')])
                c.send_data(sid, b'hello world\n', end_stream=True)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            conn.close()
            sys.exit(0)
    pump()
    conn.sendall(c.data_to_send())
"#;

/// Our `ClientConnection` against a Python `h2` server: concurrent GETs, a large upload echoed
/// back (flow control both ways), response trailers, server push.
#[test]
fn our_client_against_python_h2_server() {
    use bytes::{Bytes, BytesMut};
    use ferry_http2::{Body, ClientConnection, Config, Event, RequestHead, SendError, StreamId};
    use ferry_proto::{Connection, Instant};
    use std::collections::{HashMap, VecDeque};
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    let py = std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "/work/main/.venv/bin/python".into());
    let mut child = Command::new(py)
        .arg("-c")
        .arg(PY_SERVER)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();

    let start = std::time::Instant::now();
    let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
    let mut c = ClientConnection::new(std::sync::Arc::new(Config::default()), now());
    let gets: Vec<StreamId> = (0..20)
        .map(|_| {
            c.send_request(&RequestHead::new("GET", "http", "x", "/"), Body::Empty)
                .unwrap()
        })
        .collect();
    let push = c
        .send_request(&RequestHead::new("GET", "http", "x", "/push"), Body::Empty)
        .unwrap();
    let upload: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let echo = c
        .send_request(
            &RequestHead::new("POST", "http", "x", "/echo"),
            Body::Streaming,
        )
        .unwrap();
    let mut pieces: VecDeque<Bytes> = upload.chunks(100_000).map(Bytes::copy_from_slice).collect();
    let pump = |c: &mut ClientConnection, pieces: &mut VecDeque<Bytes>| {
        while let Some(p) = pieces.pop_front() {
            if c.send_data(echo, p.clone(), false) == Err(SendError::BufferFull) {
                pieces.push_front(p);
                return;
            }
        }
        let _ = c.send_data(echo, Bytes::new(), true);
    };
    pump(&mut c, &mut pieces);

    let mut bodies: HashMap<StreamId, Vec<u8>> = HashMap::new();
    let mut trailers = HashMap::new();
    let mut ended = Vec::new();
    let mut promised = None;
    let mut input = BytesMut::new();
    let mut buf = vec![0u8; 1 << 16];
    let all = 20 + 3;
    while ended.len() < all {
        while let Some(ev) = c.poll_event() {
            match ev {
                Event::Data { id, data } => bodies.entry(id).or_default().extend_from_slice(&data),
                Event::Trailers { id, trailers: t } => {
                    trailers.insert(id, t.get("x-len").map(<[u8]>::to_vec));
                }
                Event::End { id } => ended.push(id),
                Event::PushPromise {
                    promised: p,
                    request,
                    ..
                } => promised = Some((p, request.path().to_string())),
                Event::SendReady { .. } => pump(&mut c, &mut pieces),
                Event::Reset { .. } | Event::Error { .. } | Event::GoAway { .. } => {
                    panic!("{ev:?}")
                }
                _ => {}
            }
        }
        while let Some(b) = c.poll_transmit() {
            sock.write_all(&b).unwrap();
        }
        if ended.len() >= all {
            break;
        }
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "server closed early");
        input.extend_from_slice(&buf[..n]);
        c.handle_input(now(), &mut input).unwrap();
    }
    for id in &gets {
        assert_eq!(bodies[id], b"hello world\n");
    }
    assert_eq!(bodies[&push], b"hello world\n");
    let (p, path) = promised.expect("a push promise");
    assert_eq!(
        (path.as_str(), &bodies[&p][..]),
        ("/pushed", &b"pushed"[..])
    );
    assert!(bodies[&echo] == upload, "echo differs");
    assert_eq!(trailers[&echo], Some(upload.len().to_string().into_bytes()));
    c.close();
    while let Some(b) = c.poll_transmit() {
        sock.write_all(&b).unwrap();
    }
    assert!(c.is_closed());
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    let _ = child.wait();
}
