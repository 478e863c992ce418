//! The frontend side of a PostgreSQL login (`ferry_postgres::client::Login`) fed arbitrary
//! server bytes.
//!
//! Input: a byte of settings (password or not, SCRAM user name or not), a byte choosing
//! where to split the stream, then the server's bytes.
//! Invariants: no panic; the bytes fed in two pieces give the same outcome and the same
//! bytes sent as fed whole; a login that ended stays ended (an error is returned again);
//! a success never follows a SCRAM exchange whose server did not prove the password.
#![no_main]

use bytes::BytesMut;
use ferry_postgres::client::{LoggedIn, Login, LoginError};
use libfuzzer_sys::fuzz_target;

fn run(settings: u8, pieces: &[&[u8]]) -> (Option<Result<LoggedIn, LoginError>>, Vec<u8>) {
    let password: Option<&[u8]> = (settings & 1 != 0).then_some(b"pencil");
    let mut l = Login::new(
        "app",
        Some("db"),
        &[("application_name", "f")],
        password,
        &[5; 18],
    );
    if settings & 2 != 0 {
        l = l.with_scram_username();
    }
    let mut sent = Vec::new();
    let mut input = BytesMut::new();
    let mut outcome = None;
    for piece in pieces {
        input.extend_from_slice(piece);
        let r = l.handle_input(&mut input);
        while let Some(b) = l.poll_transmit() {
            sent.extend_from_slice(&b);
        }
        match r {
            Ok(None) => assert!(!l.is_finished()),
            Ok(Some(done)) => {
                assert!(l.is_finished() && l.is_authenticated());
                assert_eq!(l.handle_input(&mut input), Err(LoginError::Finished));
                outcome = Some(Ok(done));
                break;
            }
            Err(e) => {
                assert!(l.is_finished());
                assert_eq!(l.handle_input(&mut input), Err(e.clone()));
                assert!(l.poll_transmit().is_none());
                outcome = Some(Err(e));
                break;
            }
        }
    }
    (outcome, sent)
}

/// An iteration count of 5 digits or more: PBKDF2 would take long (the client accepts up
/// to 10 million); not what this target is about.
fn slow(bytes: &[u8]) -> bool {
    bytes
        .windows(7)
        .any(|w| &w[..2] == b"i=" && w[2..].iter().all(u8::is_ascii_digit))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 || slow(data) {
        return;
    }
    let (settings, split, bytes) = (data[0], data[1] as usize, &data[2..]);
    let whole = run(settings, &[bytes]);
    let at = split.min(bytes.len());
    let parts = run(settings, &[&bytes[..at], &bytes[at..]]);
    assert_eq!(whole, parts);
});
