//! A tiny blocking `psql -c`: the sans-IO client over a std `TcpStream`.
//!
//! ```text
//! cargo run -p ferry-postgres --example query -- 127.0.0.1:5432 USER DATABASE "SELECT 1"
//! ```
//! The password comes from `PGPASSWORD`. Prints rows tab-separated, then the command tags.
//! `COPY ... TO STDOUT` prints the data as it comes; `COPY ... FROM STDIN` sends this
//! program's standard input:
//!
//! ```text
//! cargo run -p ferry-postgres --example query -- 127.0.0.1:5432 app db "COPY t FROM STDIN" < t.tsv
//! ```
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_postgres::client::{ClientConfig, ClientConnection, Event};
use ferry_proto::{Connection, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, user, db, sql] = &args[..] else {
        eprintln!("usage: query ADDR USER DATABASE SQL");
        std::process::exit(2);
    };
    let mut cfg = ClientConfig::new(user.as_str()).database(db.as_str());
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        cfg = cfg.password(pw);
    }
    // Randomness for SCRAM: the connection has no source of its own.
    let mut nonce = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    let mut conn = ClientConnection::new(Arc::new(cfg), nonce);
    conn.query(sql)?;
    let mut stream = TcpStream::connect(addr.as_str())?;
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(bytes) = conn.poll_transmit() {
            stream.write_all(&bytes)?;
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Row { row, .. } => {
                    let cols: Vec<&str> = (0..row.len())
                        .map(|i| row.text(i).unwrap_or("NULL"))
                        .collect();
                    println!("{}", cols.join("\t"));
                }
                Event::CopyData { data, .. } => std::io::stdout().write_all(&data)?,
                Event::CopyIn { .. } => {
                    // Standard input, in chunks; each goes out as it is (no copy).
                    let mut stdin = std::io::stdin().lock();
                    loop {
                        let mut chunk = vec![0u8; 64 * 1024];
                        let n = stdin.read(&mut chunk)?;
                        if n == 0 {
                            break;
                        }
                        chunk.truncate(n);
                        conn.copy_data(Bytes::from(chunk))?;
                        while let Some(bytes) = conn.poll_transmit() {
                            stream.write_all(&bytes)?;
                        }
                    }
                    conn.copy_done()?;
                }
                Event::Complete { tag, .. } => eprintln!("{tag}"),
                Event::Error { error, .. } => eprintln!("{error}"),
                Event::Done { .. } if conn.pending() == 0 => conn.close(),
                Event::Closed(None) => return Ok(()),
                Event::Closed(Some(e)) => return Err(e.into()),
                _ => {}
            }
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            conn.handle_eof(Instant::ZERO);
        } else {
            input.extend_from_slice(&buf[..n]);
            // Errors also arrive as Event::Closed, handled above.
            let _ = conn.handle_input(Instant::ZERO, &mut input);
        }
    }
}
