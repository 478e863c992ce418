//! A throwaway nginx on a loopback ephemeral port, for the tests that use it as a peer
//! (ferry-http1's and ferry-http2's clients, ferry-client, `ferry proxy`): one process
//! (`master_process off`, so killing it on drop leaves no orphaned worker), its own prefix
//! directory with logs and temp paths, removed on drop. Crates include this file with
//! `#[path]`.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running nginx; killed and its directory removed on drop.
pub struct Nginx {
    /// The nginx process.
    pub child: Child,
    /// Its loopback port.
    pub port: u16,
    /// Its prefix directory (conf, logs, temp paths, anything `prepare` put there).
    pub dir: PathBuf,
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

impl Nginx {
    /// Start nginx whose `http { }` block holds `http(port, dir)` after the common settings
    /// (access log off, temp paths in `dir`); `prepare(dir)` fills the directory first (e.g.
    /// `dir/html`). Retries on another port if the chosen one was taken meanwhile.
    pub fn start(tag: &str, http: impl Fn(u16, &str) -> String, prepare: impl Fn(&Path)) -> Nginx {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        for _attempt in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "ferry-nginx-{tag}-{}-{n}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(dir.join("logs")).unwrap();
            prepare(&dir);
            let d = dir.display().to_string();
            let conf = format!(
                "master_process off;\nworker_processes 1;\nerror_log {d}/logs/error.log;\n\
                 pid {d}/nginx.pid;\nevents {{ worker_connections 256; }}\n\
                 http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{}\n}}\n",
                http(port, &d)
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let child = Command::new(nginx_bin())
                .args(["-p", &d, "-c", &conf_path.display().to_string()])
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx is installed by scripts/install-test-deps");
            let mut nginx = Nginx { child, port, dir };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return nginx;
                }
                if let Ok(Some(_)) = nginx.child.try_wait() {
                    break; // failed to bind: try another port
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            nginx.kill();
        }
        panic!("could not start nginx");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop it now (also done on drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
