//! The sans-IO PostgreSQL client connection (`ferry_postgres::client`) fed arbitrary server
//! bytes.
//!
//! Input: a byte of settings (password or not, queries issued before or after login, a
//! small event limit, which COPY actions the client takes), a byte choosing where to split
//! the stream, then the server's bytes.
//! COPY actions: the second early query is a `copy_in` (or a plain query, an extended COPY
//! with nothing behind it, or a COPY TO STDOUT);
//! on `Event::CopyIn` the client sends data then `copy_done` or `copy_fail`; optionally it
//! pokes `copy_data`/`copy_done` after every event, wanted or not.
//! Invariants: no panic; never more `Done` events than queries issued, and in issue order;
//! never more events held than `max_events` plus the one message being handled (a DataRow
//! or CopyData is one event); once closed, no more output and no new queries; a COPY call
//! succeeds exactly when `in_copy_in()` said so, else fails with a typed error; the bytes
//! fed in two pieces give the same events as fed whole (both cut after the login's
//! ReadyForQuery, where the client reacts to `Event::Ready`).
#![no_main]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_postgres::client::{ClientConfig, ClientConnection, ClientError, Event};
use ferry_postgres::message::frame;
use ferry_proto::{Connection, Instant};
use libfuzzer_sys::fuzz_target;

/// A COPY call, checked against `in_copy_in()`.
fn copy_call(c: &mut ClientConnection, what: u8) {
    let open = c.in_copy_in();
    let r = match what % 4 {
        0 => c.copy_data(Bytes::from_static(b"1\tx\n")),
        1 => c.copy_data(Bytes::from(vec![b'7'; 9000])),
        2 => c.copy_done(),
        _ => c.copy_fail("fuzz"),
    };
    match r {
        Ok(()) => assert!(open, "a COPY call succeeded with no COPY IN"),
        Err(ClientError::NotInCopyIn | ClientError::Closed) => assert!(!open),
        Err(e) => panic!("unexpected COPY call error {e:?}"),
    }
    if what % 4 >= 2 {
        assert!(!c.in_copy_in());
    }
}

fn run(cfg: &Arc<ClientConfig>, pieces: &[&[u8]], settings: u8) -> Vec<String> {
    let early = settings & 2 != 0;
    let mut c = ClientConnection::new(cfg.clone(), [3; 24]);
    let mut issued = 0u64;
    if early {
        c.query("SELECT 1").unwrap();
        let mode = settings >> 3 & 3;
        match mode {
            0 => c.query("SELECT 2"),
            1 => c.copy_in("COPY t FROM STDIN"),
            2 => c.execute("COPY t FROM STDIN", &[]),
            _ => c.query("COPY t TO STDOUT"),
        }
        .unwrap();
        issued += 2;
        // Behind a COPY FROM STDIN issued without `copy_in`, a query would be refused.
        if mode != 2 {
            c.query("SELECT 3").unwrap();
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
                    // (Messages after the login's in the same input may have closed it.)
                    Event::Ready if !early => match c.execute("SELECT $1", &[Some(b"x"), None]) {
                        Ok(_) => issued += 1,
                        Err(e) => assert!(e == ClientError::Closed && c.is_closed()),
                    },
                    Event::CopyIn { .. } => {
                        copy_call(&mut c, 0);
                        copy_call(&mut c, 1);
                        copy_call(&mut c, if settings & 32 != 0 { 3 } else { 2 });
                    }
                    _ => {}
                }
                if settings & 64 != 0 {
                    copy_call(&mut c, settings >> 7 | (n as u8) << 1);
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
            assert_eq!(c.copy_done(), Err(ClientError::Closed));
            break;
        }
    }
    log
}

/// Where the first ReadyForQuery (the login's end) ends in `bytes`, or their length.
fn login_end(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Ok(Some(f)) = frame(&bytes[at..], 1 << 20) {
        at += f.len;
        if f.tag == b'Z' {
            return at;
        }
    }
    bytes.len()
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
    // A query issued on `Event::Ready` goes out before what follows the login's
    // ReadyForQuery is read only if the input is cut there: both runs are.
    let gate = login_end(bytes);
    let whole = run(&cfg, &[&bytes[..gate], &bytes[gate..]], settings);
    let at = split.min(bytes.len());
    let (a, b) = (at.min(gate), at.max(gate));
    let split = run(&cfg, &[&bytes[..a], &bytes[a..b], &bytes[b..]], settings);
    assert_eq!(whole, split);
});
