//! `ferry-client` against a real nginx started by the test on a loopback ephemeral port:
//! keep-alive reuse counted by nginx's own `$connection` serial, nginx's
//! `keepalive_requests` close honoured, a 1 MB file, HEAD, 404, a chunked gzip body, and
//! concurrent requests — on every driver this host has.

use std::collections::HashSet;

use bytes::Bytes;
use ferry_client::Client;
use ferry_driver::DriverKind;

#[path = "../../../tests/support/nginx.rs"]
mod support;
use support::Nginx;

/// nginx serving a 1 MB binary, a gzip-able text file and `/conn` (its connection serial),
/// closing each connection after 5 requests (`keepalive_requests 5`).
fn start_nginx() -> Nginx {
    Nginx::start(
        "client",
        |port, d| {
            format!(
                "    keepalive_requests 5;\n    gzip on;\n    gzip_types text/plain;\n    \
                 gzip_min_length 0;\n    server {{\n        listen 127.0.0.1:{port};\n        \
                 root {d}/html;\n        location = /conn {{ return 200 \"$connection\\n\"; }}\n    }}"
            )
        },
        |dir| {
            std::fs::create_dir_all(dir.join("html")).unwrap();
            let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.join("html/big.bin"), &big).unwrap();
            std::fs::write(dir.join("html/text.txt"), "line of text\n".repeat(2000)).unwrap();
        },
    )
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
