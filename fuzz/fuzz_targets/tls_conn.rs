//! The sans-IO TLS adapter (`proto/tls`, ferry-tls over rustls): a server `Tls` fed arbitrary
//! ciphertext in arbitrary pieces, and a client/server pair whose traffic the fuzzer may
//! edit, drop or split in flight.
//!
//! Invariants: no panic; all ciphertext given is consumed; after an error every later
//! `handle_input` returns the same error and `send` takes nothing; plaintext reaches a side
//! only after its handshake, and what a side receives is always a prefix of what the other
//! sent (an edited record is an error, never different plaintext); an untouched exchange
//! completes the handshake and delivers everything.
//!
//! The certificate (`tls/cert.pem`, for `localhost`) is a fixed test certificate.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::BytesMut;
use ferry_tls::{ClientConfig, ServerConfig, Tls};
use libfuzzer_sys::fuzz_target;

const CERT: &[u8] = include_bytes!("tls/cert.pem");
const KEY: &[u8] = include_bytes!("tls/key.pem");

fn configs() -> &'static (ServerConfig, ClientConfig) {
    static C: OnceLock<(ServerConfig, ClientConfig)> = OnceLock::new();
    C.get_or_init(|| {
        (
            ServerConfig::from_pem(CERT, KEY, &[b"http/1.1"]).unwrap(),
            ClientConfig::from_ca_pem(CERT, &[b"http/1.1"]).unwrap(),
        )
    })
}

#[derive(Arbitrary, Debug)]
enum Tamper {
    Keep,
    Drop,
    Flip(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Case {
    /// Raw ciphertext pieces to a fresh server.
    Raw(Vec<Vec<u8>>),
    /// A pair: application data each way, and what happens to each transmit in flight.
    Pair {
        to_server: Vec<u8>,
        to_client: Vec<u8>,
        tampers: Vec<Tamper>,
        piece: u8,
        close: bool,
    },
}

fn feed(t: &mut Tls, data: &[u8], plain: &mut BytesMut, sticky: &mut Option<ferry_tls::Error>) {
    let mut c = BytesMut::from(data);
    let before = plain.len();
    let r = t.handle_input(&mut c, plain);
    assert!(c.is_empty(), "ciphertext not consumed");
    match (r, sticky.as_ref()) {
        (Ok(_), None) => {
            if plain.len() > before {
                assert!(!t.is_handshaking(), "plaintext during the handshake");
            }
        }
        (Ok(_), Some(e)) => panic!("ok after error {e:?}"),
        (Err(e), Some(prev)) => assert_eq!(&e, prev, "error changed"),
        (Err(e), None) => {
            assert_eq!(plain.len(), before, "plaintext with an error");
            *sticky = Some(e);
        }
    }
    if sticky.is_some() {
        assert_eq!(t.send(b"x"), 0, "send after an error");
    }
}

fuzz_target!(|case: Case| {
    let (scfg, ccfg) = configs();
    match case {
        Case::Raw(pieces) => {
            let mut s = Tls::server(scfg).unwrap();
            let mut plain = BytesMut::new();
            let mut err = None;
            for p in pieces.iter().take(64) {
                feed(&mut s, p, &mut plain, &mut err);
                while s.poll_transmit().is_some() {}
            }
            // A fresh server never completes a handshake with bytes made up without keys.
            assert!(plain.is_empty() || !s.is_handshaking());
        }
        Case::Pair {
            to_server,
            to_client,
            tampers,
            piece,
            close,
        } => {
            let mut s = Tls::server(scfg).unwrap();
            let mut c = Tls::client(ccfg, "localhost").unwrap();
            let (mut at_s, mut at_c) = (BytesMut::new(), BytesMut::new());
            let (mut es, mut ec) = (None, None);
            let mut sent_c = 0;
            let mut sent_s = 0;
            let mut tampered = false;
            let mut k = 0;
            let piece = usize::from(piece.max(1)) * 16;
            for _round in 0..200 {
                sent_c += c.send(&to_server[sent_c..]);
                sent_s += s.send(&to_client[sent_s..]);
                if close && sent_c == to_server.len() && !c.is_handshaking() {
                    c.close();
                }
                let mut moved = false;
                for from_client in [true, false] {
                    let (tx, rx, at, err) = if from_client {
                        (&mut c, &mut s, &mut at_s, &mut es)
                    } else {
                        (&mut s, &mut c, &mut at_c, &mut ec)
                    };
                    let Some(b) = tx.poll_transmit() else {
                        continue;
                    };
                    moved = true;
                    let mut b = b.to_vec();
                    let t = tampers.get(k).unwrap_or(&Tamper::Keep);
                    k += 1;
                    match t {
                        Tamper::Keep => {}
                        Tamper::Drop => b.clear(),
                        Tamper::Flip(i, x) if !b.is_empty() && *x != 0 => {
                            let n = b.len();
                            b[i % n] ^= x;
                        }
                        Tamper::Flip(..) => {}
                        Tamper::Truncate(n) => b.truncate(n % (b.len() + 1)),
                        Tamper::Append(v) => b.extend_from_slice(v),
                    }
                    tampered |= !matches!(t, Tamper::Keep | Tamper::Flip(_, 0));
                    for p in b.chunks(piece) {
                        feed(rx, p, at, err);
                    }
                }
                assert!(to_server.starts_with(&at_s), "server got other plaintext");
                assert!(to_client.starts_with(&at_c), "client got other plaintext");
                if !moved && sent_c == to_server.len() && sent_s == to_client.len() {
                    break;
                }
            }
            if !tampered {
                assert!(es.is_none() && ec.is_none(), "{es:?} {ec:?}");
                assert!(!s.is_handshaking() && !c.is_handshaking());
                assert_eq!(&at_s[..], &to_server[..]);
                assert_eq!(&at_c[..], &to_client[..]);
            }
        }
    }
});
