//! PostgreSQL SCRAM-SHA-256 (`proto/postgres/src/auth.rs`): a `ScramClient` and a
//! `ScramServer` run an exchange in which the fuzzer may replace or edit any message, and
//! `ScramSecret::parse` reads arbitrary text.
//!
//! Invariants: no panic; a side authenticates only if both sides share the password (after
//! SASLprep, as an HMAC key): no edited or forged message gets past a proof or signature check; an untouched
//! exchange between sides sharing the password succeeds on both; after an error every
//! further call is `OutOfOrder`; a secret that parses prints back exactly as it was read.
#![no_main]

use arbitrary::Arbitrary;
use ferry_postgres::auth::{saslprep, AuthError, ScramClient, ScramSecret, ScramServer};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Tamper {
    Keep,
    Replace(Vec<u8>),
    /// Replace, insert (when `Some`) or delete (when `None`) the byte at an index.
    Edit(usize, Option<u8>, bool),
    Truncate(usize),
    Append(Vec<u8>),
}

impl Tamper {
    fn apply(&self, msg: Vec<u8>) -> Vec<u8> {
        let mut m = msg;
        match self {
            Tamper::Keep => {}
            Tamper::Replace(v) => m = v.clone(),
            Tamper::Edit(i, b, insert) => match (b, *insert) {
                (Some(b), true) => m.insert(i % (m.len() + 1), *b),
                (Some(b), false) if !m.is_empty() => {
                    let n = m.len();
                    m[i % n] = *b;
                }
                (None, _) if !m.is_empty() => {
                    let n = m.len();
                    m.remove(i % n);
                }
                _ => {}
            },
            Tamper::Truncate(n) => m.truncate(*n),
            Tamper::Append(v) => m.extend_from_slice(v),
        }
        m
    }

    fn kept(&self, before: &[u8], after: &[u8]) -> bool {
        matches!(self, Tamper::Keep) || before == after
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    client_password: Vec<u8>,
    server_password: Vec<u8>,
    same_password: bool,
    salt: Vec<u8>,
    iterations: u8,
    client_nonce: [u8; 18],
    server_nonce: [u8; 18],
    client_first: Tamper,
    server_first: Tamper,
    client_final: Tamper,
    server_final: Tamper,
    secret_text: String,
}

/// Whether a server-first-message could make the client run a long PBKDF2 (5+ digits in a
/// row: up to MAX_CLIENT_ITERATIONS is legal, but too slow for a fuzzing run).
fn costly(msg: &[u8]) -> bool {
    msg.split(|b| !b.is_ascii_digit()).any(|run| run.len() >= 5)
}

/// The password as PBKDF2's HMAC key: HMAC pads keys of up to 64 bytes with zeros, so
/// passwords that differ only in trailing NULs are the same key (PostgreSQL's passwords have
/// no NUL). Longer keys are hashed first; telling those apart would need a SHA-256 preimage.
fn hmac_key(password: &[u8]) -> Vec<u8> {
    let mut key = saslprep(password).into_owned();
    if key.len() <= 64 {
        while key.last() == Some(&0) {
            key.pop();
        }
    }
    key
}

fuzz_target!(|input: Input| {
    if let Ok(secret) = ScramSecret::parse(&input.secret_text) {
        assert_eq!(secret.to_string(), input.secret_text);
    }

    let server_password = if input.same_password {
        &input.client_password
    } else {
        &input.server_password
    };
    let same = hmac_key(&input.client_password) == hmac_key(server_password);
    let mut salt = input.salt.clone();
    salt.truncate(64);
    if salt.is_empty() {
        salt.push(0);
    }
    let iterations = u32::from(input.iterations % 4) + 1;
    let secret = ScramSecret::from_password(server_password, &salt, iterations);
    let mut server = ScramServer::new(secret, &input.server_nonce);
    let mut client = ScramClient::new(&input.client_password, &input.client_nonce);
    let mut untouched = true;

    let genuine = client.client_first();
    let client_first = input.client_first.apply(genuine.clone());
    untouched &= input.client_first.kept(&genuine, &client_first);
    let server_first = match server.handle_client_first(&client_first) {
        Ok(m) => m,
        Err(_) => {
            assert!(!untouched);
            assert_eq!(
                server.handle_client_first(&genuine),
                Err(AuthError::OutOfOrder)
            );
            return;
        }
    };

    let tampered = input.server_first.apply(server_first.clone());
    untouched &= input.server_first.kept(&server_first, &tampered);
    if costly(&tampered) {
        return;
    }
    let client_final = match client.handle_server_first(&tampered) {
        Ok(m) => m,
        Err(_) => {
            assert!(!untouched);
            assert_eq!(
                client.handle_server_first(&tampered),
                Err(AuthError::OutOfOrder)
            );
            assert_eq!(
                client.handle_server_final(b"v="),
                Err(AuthError::OutOfOrder)
            );
            return;
        }
    };

    let tampered = input.client_final.apply(client_final.clone());
    untouched &= input.client_final.kept(&client_final, &tampered);
    let server_final = match server.handle_client_final(&tampered) {
        Ok(m) => {
            assert!(same, "server accepted a client without the password");
            assert!(server.is_authenticated());
            m
        }
        Err(e) => {
            assert!(
                !untouched || (!same && e == AuthError::WrongPassword),
                "{e:?}"
            );
            assert!(!server.is_authenticated());
            assert_eq!(
                server.handle_client_final(&tampered),
                Err(AuthError::OutOfOrder)
            );
            // The client can still be fed a forged server-final: it must not pass.
            let forged = input.server_final.apply(b"v=".to_vec());
            assert!(client.handle_server_final(&forged).is_err());
            return;
        }
    };

    let tampered = input.server_final.apply(server_final.clone());
    untouched &= input.server_final.kept(&server_final, &tampered);
    match client.handle_server_final(&tampered) {
        Ok(()) => {
            assert!(same, "client accepted a server without the password");
            assert!(client.is_authenticated());
        }
        Err(_) => {
            assert!(!untouched);
            assert!(!client.is_authenticated());
            assert_eq!(
                client.handle_server_final(&server_final),
                Err(AuthError::OutOfOrder)
            );
        }
    }
});
