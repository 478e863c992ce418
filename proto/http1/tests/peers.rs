//! Real peers against the state machines: curl and Python's `http.client` against the blocking
//! example server (examples/blocking_server.rs) on a loopback ephemeral port.

#[path = "../examples/blocking_server.rs"]
#[allow(dead_code)]
mod example;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;

fn start() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || example::serve(l));
    addr
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl is installed by scripts/test");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let path = std::env::temp_dir().join(format!("ferry-{}-{name}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    (path, data)
}

#[test]
fn curl_keep_alive_reuses_the_connection() {
    let addr = start();
    let url = format!("http://{addr}/");
    let (out, err) = curl(&["-v", &url, &url, &url]);
    assert_eq!(out, "hello world\n".repeat(3));
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "{err}"
    );
    assert_eq!(err.matches("Connected to").count(), 1, "{err}");
}

#[test]
fn curl_not_found_and_head() {
    let addr = start();
    let (out, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{addr}/nope"),
    ]);
    assert_eq!(out, "404");
    let (out, _) = curl(&["-I", &format!("http://{addr}/")]);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("content-length: 12"),
        "{out}"
    );
    assert!(out.to_ascii_lowercase().contains("date: "), "{out}");
}

#[test]
fn curl_chunked_upload_is_echoed() {
    let addr = start();
    let (path, data) = temp_file("chunked", 300_000);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
        ])
        .arg(format!("@{}", path.display()))
        .arg(format!("http://{addr}/echo"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data);
    let _ = std::fs::remove_file(path);
}

#[test]
fn curl_expect_100_continue() {
    let addr = start();
    let (path, data) = temp_file("expect", 2_000_000);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "30",
            "-H",
            "Expect: 100-continue",
            "-X",
            "PUT",
            "--data-binary",
        ])
        .arg(format!("@{}", path.display()))
        .arg(format!("http://{addr}/echo"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP/1.1 100 Continue"), "{err}");
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data);
    let _ = std::fs::remove_file(path);
}

#[test]
fn python_http_client() {
    let addr = start();
    let py = std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import http.client, sys
host, port = sys.argv[1], int(sys.argv[2])
c = http.client.HTTPConnection(host, port, timeout=30)
for _ in range(3):
    c.request("GET", "/")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"hello world\n"
sock = c.sock
c.request("POST", "/echo", body=b"x" * 100000)
r = c.getresponse()
assert r.status == 200 and r.read() == b"x" * 100000
def gen():
    for i in range(50):
        yield (str(i) * 1000).encode()
c.request("PUT", "/echo", body=gen(), encode_chunked=True)
r = c.getresponse()
assert r.status == 200
assert r.read() == b"".join((str(i) * 1000).encode() for i in range(50))
c.request("HEAD", "/")
r = c.getresponse()
assert r.status == 200 and r.read() == b"" and r.getheader("content-length") == "12"
c.request("GET", "/missing")
r = c.getresponse()
assert r.status == 404
r.read()
assert c.sock is sock, "connection was not kept alive"
print("OK")
"#;
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

#[test]
fn raw_bad_request_gets_400_and_close() {
    use std::io::Read;
    let addr = start();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("hello world\n"));
    assert!(out.contains("HTTP/1.1 400 Bad Request\r\n"), "{out}");
}
