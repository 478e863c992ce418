//! The sans-IO PostgreSQL client connection (`ferry_postgres::client`) fed arbitrary server
//! bytes.
//!
//! Input: a byte of settings (password or not, queries issued before or after login, a
//! small event limit), a byte choosing where to split the stream, then the server's bytes.
//! Invariants: no panic; never more `Done` events than queries issued, and in issue order;
//! never more events held than `max_events` plus the one message being handled (a DataRow
//! is one event); once closed, no more output and no new queries; the bytes fed in two
//! pieces give the same events as fed whole.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use ferry_postgres::client::{ClientConfig, ClientConnection, ClientError, Event};
use ferry_proto::{Connection, Instant};
use libfuzzer_sys::fuzz_target;

fn run(cfg: &Arc<ClientConfig>, pieces: &[&[u8]], early: bool) -> Vec<String> {
    let mut c = ClientConnection::new(cfg.clone(), [3; 24]);
    let mut issued = 0u64;
    if early {
        for sql in ["SELECT 1", "SELECT 2"] {
            c.query(sql).unwrap();
            issued += 1;
        }
    }
    let mut log = Vec::new();
    let mut done = 0u64;
    let mut input = BytesMut::new();
    for piece in pieces {
        input.extend_from_slice(piece);
        loop {
            let r = c.handle_input(Instant::ZERO, &mut input);
            let mut n = 0;
            while let Some(ev) = c.poll_event() {
                n += 1;
                match &ev {
                    Event::Done { id, .. } => {
                        assert_eq!(id.0, done, "answers come in issue order");
                        done += 1;
                        assert!(done <= issued);
                    }
                    Event::Ready if !early => {
                        c.execute("SELECT $1", &[Some(b"x"), None]).unwrap();
                        issued += 1;
                    }
                    _ => {}
                }
                log.push(format!("{ev:?}"));
            }
            assert!(n <= cfg.max_events + 1);
            while c.poll_transmit().is_some() {}
            // Events drained: a connection that stopped reading takes the rest now.
            if r.is_err() || n == 0 {
                break;
            }
        }
        if c.is_closed() {
            assert!(c.poll_transmit().is_none());
            assert_eq!(c.query("x"), Err(ClientError::Closed));
            break;
        }
    }
    log
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (settings, split, bytes) = (data[0], data[1] as usize, &data[2..]);
    let mut cfg = ClientConfig::new("app");
    if settings & 1 != 0 {
        cfg = cfg.password("pencil");
    }
    if settings & 4 != 0 {
        cfg.max_events = 2;
    }
    cfg.max_message_bytes = 4096;
    let cfg = Arc::new(cfg);
    let early = settings & 2 != 0;
    let whole = run(&cfg, &[bytes], early);
    let at = split.min(bytes.len());
    let split = run(&cfg, &[&bytes[..at], &bytes[at..]], early);
    assert_eq!(whole, split);
});
