//! The frontend side of a PostgreSQL login (`ferry_postgres::client::Login`) fed arbitrary
//! server bytes.
//!
//! Input: a byte of settings (password or not, SCRAM user name or not, SSLRequest first or
//! not), a byte choosing where to split the stream, then the server's bytes (with an
//! SSLRequest, the first is its answer, fed alone; TLS is taken to start after an `S`).
//! Invariants: no panic; the bytes fed in two pieces give the same outcome and the same
//! bytes sent as fed whole; a login that ended stays ended (an error is returned again);
//! a success never follows a SCRAM exchange whose server did not prove the password; with
//! an SSLRequest, nothing but it goes out before `S` and TLS, and `S` with any byte after it
//! in the same read is refused.
#![no_main]

use bytes::BytesMut;
use ferry_postgres::client::{LoggedIn, Login, LoginError};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A login as the settings say.
fn login(settings: u8) -> Login {
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
    if settings & 4 != 0 {
        l = l.with_ssl_request();
    }
    l
}

/// The SSLRequest exchange with `answer`: `Ok` when TLS started (the StartupMessage then
/// waits to be polled), else the login's error.
fn ssl(l: &mut Login, answer: u8) -> Result<(), LoginError> {
    assert_eq!(l.poll_transmit().as_deref(), Some(&SSL_REQUEST[..]));
    let mut input = BytesMut::new();
    assert_eq!(l.handle_input(&mut input), Ok(None));
    input.extend_from_slice(&[answer]);
    let r = l.handle_input(&mut input);
    assert!(
        l.poll_transmit().is_none(),
        "nothing in clear after the SSLRequest"
    );
    match r {
        Ok(None) => {
            assert!(answer == b'S' && l.wants_tls() && input.is_empty());
            l.tls_started();
            Ok(())
        }
        Ok(Some(_)) => panic!("logged in by one byte"),
        Err(e) => {
            assert!(answer != b'S' && l.is_finished() && !l.wants_tls());
            l.tls_started();
            assert!(
                l.poll_transmit().is_none(),
                "no StartupMessage after a refusal"
            );
            Err(e)
        }
    }
}
use libfuzzer_sys::fuzz_target;

fn run(
    settings: u8,
    answer: u8,
    pieces: &[&[u8]],
) -> (Option<Result<LoggedIn, LoginError>>, Vec<u8>) {
    let mut l = login(settings);
    if settings & 4 != 0 {
        if let Err(e) = ssl(&mut l, answer) {
            return (Some(Err(e)), Vec::new());
        }
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
    let (settings, split, mut bytes) = (data[0], data[1] as usize, &data[2..]);
    let mut answer = 0;
    if settings & 4 != 0 {
        let Some((&a, rest)) = bytes.split_first() else {
            return;
        };
        (answer, bytes) = (a, rest);
        if a == b'S' && !rest.is_empty() {
            // `S` and more in one read: refused, whatever follows.
            let mut l = login(settings);
            let _ = l.poll_transmit();
            let mut input = BytesMut::from(&[&[a][..], rest].concat()[..]);
            assert_eq!(
                l.handle_input(&mut input),
                Err(LoginError::DataAfterSslResponse)
            );
        }
    }
    let whole = run(settings, answer, &[bytes]);
    let at = split.min(bytes.len());
    let parts = run(settings, answer, &[&bytes[..at], &bytes[at..]]);
    assert_eq!(whole, parts);
});
