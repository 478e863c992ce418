//! The backend side of a PostgreSQL login (`ferry_postgres::server::Login`) fed arbitrary
//! client bytes.
//!
//! Input: a byte of settings (trust, SCRAM or SCRAM refused; SSL accepted or not; the caller
//! refusing the startup), a byte choosing where to split the stream, then the client's
//! bytes.
//! Invariants: no panic; the bytes fed in two pieces give the same events, the same bytes
//! sent and the same bytes left over as fed whole; a refused SCRAM login never
//! authenticates; a failure other than EOF sends a FATAL ErrorResponse last; nothing is
//! read after the login ended.
#![no_main]

use bytes::BytesMut;
use ferry_postgres::auth::{ScramSecret, ScramServer};
use ferry_postgres::message::frame;
use ferry_postgres::server::{Auth, Event, Login};
use libfuzzer_sys::fuzz_target;

fn run(settings: u8, pieces: &[&[u8]]) -> (Vec<Event>, Vec<u8>, Vec<u8>) {
    let mut l = Login::new();
    let mut events = Vec::new();
    let mut sent = Vec::new();
    let mut input = BytesMut::new();
    for piece in pieces {
        input.extend_from_slice(piece);
        if l.is_finished() {
            // Nothing is read after the login: the rest stays for the caller.
            assert!(l.handle_input(&mut input).is_none());
            continue;
        }
        while let Some(ev) = l.handle_input(&mut input) {
            match &ev {
                Event::SslRequested => l.answer_ssl(settings & 4 != 0),
                Event::Startup(p) => {
                    assert!(!p.user.is_empty() && !p.database.is_empty());
                    let secret = ScramSecret::from_password(b"pencil", b"salt", 1);
                    let server = Box::new(ScramServer::new(secret, &[6; 18]));
                    match settings & 3 {
                        0 => l.authenticate(Auth::Trust),
                        1 => l.authenticate(Auth::Scram(server)),
                        2 => l.authenticate(Auth::ScramRefused(server)),
                        _ => l.refuse("53300", "too many"),
                    }
                }
                Event::Authenticated => assert!(settings & 3 < 2, "a refused login passed"),
                Event::Failed(_) | Event::Cancel { .. } => assert!(l.is_finished()),
                _ => {}
            }
            events.push(ev);
        }
        while let Some(b) = l.poll_transmit() {
            sent.extend_from_slice(&b);
        }
    }
    if let Some(Event::Failed(e)) = events.last() {
        if *e != ferry_postgres::server::LoginError::Eof {
            let at = sent.len() - last_message_len(&sent);
            assert_eq!(sent[at], b'E', "a FATAL last");
        }
    }
    (events, sent, input.to_vec())
}

/// The length of the last tagged message in `sent` (after single-byte SSL/GSS answers).
fn last_message_len(mut sent: &[u8]) -> usize {
    let mut last = 0;
    while let Some(b'N' | b'S') = sent.first() {
        sent = &sent[1..];
    }
    while let Ok(Some(f)) = frame(sent, 1 << 20) {
        last = f.len;
        sent = &sent[f.len..];
    }
    assert!(sent.is_empty(), "whole messages only");
    last
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (settings, split, bytes) = (data[0], data[1] as usize, &data[2..]);
    let whole = run(settings, &[bytes]);
    let at = split.min(bytes.len());
    let parts = run(settings, &[&bytes[..at], &bytes[at..]]);
    assert_eq!(whole, parts);
});
