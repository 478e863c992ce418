//! `ferry-client` against a real nginx started by the test on a loopback ephemeral port:
//! keep-alive reuse counted by nginx's own `$connection` serial, nginx's
//! `keepalive_requests` close honoured, a 1 MB file, HEAD, 404, a chunked gzip body, and
//! concurrent requests — on every driver this host has.

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use ferry_client::Client;
use ferry_driver::DriverKind;

struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn start_nginx() -> Nginx {
    for attempt in 0..10 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "ferry-client-nginx-{}-{attempt}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("html")).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("html/big.bin"), &big).unwrap();
        std::fs::write(dir.join("html/text.txt"), "line of text\n".repeat(2000)).unwrap();
        let conf = format!(
            r#"
worker_processes 1;
error_log {d}/logs/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 5;
    gzip on;
    gzip_types text/plain;
    gzip_min_length 0;
    server {{
        listen 127.0.0.1:{port};
        root {d}/html;
        location = /conn {{ return 200 "$connection\n"; }}
    }}
}}
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx_bin())
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &dir.join("nginx.conf").display().to_string(),
                "-g",
                "daemon off;",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed by scripts/test");
        let mut n = Nginx { child, port, dir };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return n;
            }
            if let Ok(Some(_)) = n.child.try_wait() {
                break; // failed to bind: try another port
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = n.child.kill();
    }
    panic!("could not start nginx");
}

fn drivers() -> Vec<DriverKind> {
    let mut d = vec![DriverKind::Epoll];
    if ferry_uring::probe().is_ok() {
        d.push(DriverKind::Uring);
    }
    d
}

#[test]
fn nginx_keep_alive_and_its_close() {
    let n = start_nginx();
    for d in drivers() {
        let c = Client::builder().driver(d).build().unwrap();
        let url = format!("http://127.0.0.1:{}/conn", n.port);
        let mut serials = Vec::new();
        for _ in 0..12 {
            let r = c.get(&url).wait().unwrap();
            assert_eq!(r.status(), 200);
            serials.push(String::from_utf8(r.body().to_vec()).unwrap());
        }
        let distinct: HashSet<_> = serials.iter().collect();
        // keepalive_requests 5: nginx closes after every 5th response (Connection: close).
        assert_eq!(distinct.len(), 3, "{d}: {serials:?}");
        for w in serials.chunks(5) {
            assert!(w.iter().all(|s| s == &w[0]), "{d}: {serials:?}");
        }
        let st = c.stats();
        assert_eq!(
            (st.connects, st.reused, st.retries),
            (3, 9, 0),
            "{d}: {st:?}"
        );
    }
}

#[test]
fn nginx_files_head_404_and_chunked() {
    let n = start_nginx();
    for d in drivers() {
        let c = Client::builder().driver(d).build().unwrap();
        let base = format!("http://localhost:{}", n.port);
        let r = c.get(&format!("{base}/big.bin")).wait().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().len(), 1_000_000);
        assert!(r
            .body()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8));

        let head = http::Request::head(format!("{base}/big.bin"))
            .body(Bytes::new())
            .unwrap();
        let r = c.request(head).wait().unwrap();
        assert_eq!(r.headers()["content-length"], "1000000");
        assert!(r.body().is_empty());

        assert_eq!(c.get(&format!("{base}/nope")).wait().unwrap().status(), 404);

        let gz = http::Request::get(format!("{base}/text.txt"))
            .header("accept-encoding", "gzip")
            .body(Bytes::new())
            .unwrap();
        let r = c.request(gz).wait().unwrap();
        assert_eq!(r.headers()["content-encoding"], "gzip");
        assert_eq!(r.headers()["transfer-encoding"], "chunked");
        assert_eq!(&r.body()[..2], &[0x1f, 0x8b]);
    }
}

#[test]
fn nginx_concurrent() {
    let n = start_nginx();
    for d in drivers() {
        let c = Client::builder().driver(d).workers(2).build().unwrap();
        let url = format!("http://127.0.0.1:{}/big.bin", n.port);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                std::thread::spawn(move || {
                    let hs: Vec<_> = (0..10).map(|_| c.get(&url)).collect();
                    for h in hs {
                        assert_eq!(h.wait().unwrap().body().len(), 1_000_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.stats().requests, 40, "{d}");
    }
}
