//! hyper 1.x hello-world server, a peer for `scripts/bench http` and `scripts/bench h2`.
//! tokio current_thread runtime; hyper-util's auto builder serves HTTP/1.1 and h2c (prior
//! knowledge) on the same port. Usage: hyper-hello --addr 127.0.0.1:PORT

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"hello world\n")));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

fn parse_args() -> SocketAddr {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                let v = args.next().expect("--addr needs a value");
                addr = v.parse().expect("--addr: bad socket address");
            }
            _ => {
                eprintln!("usage: hyper-hello [--addr 127.0.0.1:PORT]");
                std::process::exit(2);
            }
        }
    }
    addr
}

fn main() {
    let addr = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await.expect("bind");
        println!("listening {}", listener.local_addr().expect("local_addr"));
        let builder = Builder::new(TokioExecutor::new());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service_fn(hello))
                    .await;
            });
        }
    });
}
