//! The two login machines, `client::Login` (frontend) and `server::Login` (backend), against
//! byte vectors (RFC 7677's SCRAM-SHA-256 exchange, PostgreSQL 15's MD5 and error texts),
//! against each other, and split at every byte boundary.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::BytesMut;
use ferry_postgres::auth::{AuthError, DerivedKeys, ScramSecret, ScramServer};
use ferry_postgres::backend::{self, TxStatus};
use ferry_postgres::client::{self, LoggedIn, LoginError, LoginEvent};
use ferry_postgres::frontend;
use ferry_postgres::message::{encode_ssl_request, encode_startup, frame};
use ferry_postgres::server::{self, Auth, Event};
use proptest::prelude::*;

/// RFC 7677 §3.
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
const SALT: &[u8] = b"\x5b\x6d\x99\x68\x9d\x12\x35\x8e\xec\xa0\x4b\x14\x12\x36\xfa\x81";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

fn rfc_nonce() -> Vec<u8> {
    BASE64.decode("rOprNGfwEbeRWgbNEkqO").unwrap()
}

/// The RFC's secret (PBKDF2 runs once per test binary).
fn rfc_secret() -> ScramSecret {
    static S: OnceLock<ScramSecret> = OnceLock::new();
    S.get_or_init(|| ScramSecret::from_password(b"pencil", SALT, 4096))
        .clone()
}

/// The keys the RFC's client derives (PBKDF2 runs once per test binary).
fn rfc_keys() -> DerivedKeys {
    static K: OnceLock<DerivedKeys> = OnceLock::new();
    K.get_or_init(|| {
        let (done, _) = run_client(rfc_client(), &rfc_transcript(), &[]);
        done.unwrap().scram_keys.unwrap()
    })
    .clone()
}

fn rfc_client() -> client::Login {
    client::Login::new("user", Some("db"), &[], Some(b"pencil"), &rfc_nonce()).with_scram_username()
}

/// What PostgreSQL sends after a login: parameters, key, ReadyForQuery.
fn login_tail(b: &mut BytesMut) {
    backend::parameter_status(b, "server_version", "15.8");
    backend::parameter_status(b, "TimeZone", "UTC");
    backend::parameter_status(b, "TimeZone", "Asia/Tokyo");
    backend::backend_key_data(b, 4242, -99);
    backend::ready_for_query(b, TxStatus::Idle);
}

/// The server's side of the RFC 7677 exchange, then a login tail and one more message.
fn rfc_transcript() -> Vec<u8> {
    let mut b = BytesMut::new();
    backend::authentication_sasl(&mut b, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    backend::authentication_sasl_continue(&mut b, SERVER_FIRST.as_bytes());
    backend::authentication_sasl_final(&mut b, SERVER_FINAL.as_bytes());
    backend::authentication_ok(&mut b);
    backend::notice_response(&mut b, "NOTICE", "00000", "hello");
    login_tail(&mut b);
    b.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
    b.to_vec()
}

/// The frontend messages in `bytes` as (tag, body); the first may be the startup packet
/// (tag 0).
fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut v = Vec::new();
    if bytes.first() == Some(&0) {
        let n = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        v.push((0, bytes[4..n].to_vec()));
        bytes = &bytes[n..];
    }
    while let Some(f) = frame(bytes, 1 << 20).unwrap() {
        v.push((bytes[0], bytes[5..f.len].to_vec()));
        bytes = &bytes[f.len..];
    }
    assert!(bytes.is_empty());
    v
}

/// Feeds `input` cut at `cuts` (offsets) to the client login; the outcome, everything it
/// sent, and what stayed in the input.
fn run_client(
    mut l: client::Login,
    input: &[u8],
    cuts: &[usize],
) -> (Result<LoggedIn, LoginError>, Vec<u8>) {
    let mut sent = Vec::new();
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    ends.sort();
    ends.push(input.len());
    let mut outcome = None;
    for end in ends {
        if end < at {
            continue;
        }
        buf.extend_from_slice(&input[at..end]);
        at = end;
        let r = l.handle_input(&mut buf);
        while let Some(b) = l.poll_transmit() {
            sent.extend_from_slice(&b);
        }
        match r {
            Ok(None) => {}
            Ok(Some(done)) => {
                outcome = Some(Ok(done));
                break;
            }
            Err(e) => {
                outcome = Some(Err(e));
                break;
            }
        }
    }
    buf.extend_from_slice(&input[at..]);
    if let Some(Ok(_)) = &outcome {
        assert_eq!(
            &buf[..],
            b"C\0\0\0\x0dSELECT 1\0",
            "the rest stays in the input"
        );
    }
    (
        outcome.unwrap_or(Err(LoginError::Protocol("no outcome"))),
        sent,
    )
}

#[test]
fn client_rfc7677_scram_login() {
    let (done, sent) = run_client(rfc_client(), &rfc_transcript(), &[]);
    let done = done.unwrap();
    let m = messages(&sent);
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m[0].0, 0);
    assert_eq!(&m[0].1[..4], &[0, 3, 0, 0]);
    assert_eq!(&m[0].1[4..], b"user\0user\0database\0db\0\0");
    let (mech, data) = frontend::parse_sasl_initial(&m[1].1).unwrap();
    assert_eq!(
        (m[1].0, mech, data),
        (b'p', "SCRAM-SHA-256", Some(CLIENT_FIRST.as_bytes()))
    );
    assert_eq!((m[2].0, &m[2].1[..]), (b'p', CLIENT_FINAL.as_bytes()));
    assert_eq!(done.parameter("server_version"), Some("15.8"));
    assert_eq!(
        done.parameter("TimeZone"),
        Some("Asia/Tokyo"),
        "the last report wins"
    );
    assert_eq!(done.parameters.len(), 2);
    assert_eq!(done.cancel_key, Some((4242, -99)));
    assert_eq!(done.tx_status, TxStatus::Idle);
    assert!(done.scram_keys.is_some());
}

#[test]
fn client_events_one_message_at_a_time() {
    let mut l = rfc_client();
    let t = rfc_transcript();
    let mut rest = &t[..];
    let mut events = Vec::new();
    while let Some(f) = frame(rest, 1 << 20).unwrap() {
        let ev = l.handle_message(&rest[..f.len]).unwrap();
        rest = &rest[f.len..];
        if let Some(ev) = ev {
            let ready = matches!(ev, LoginEvent::Ready(_));
            events.push(ev);
            if ready {
                break;
            }
        }
    }
    assert!(matches!(&events[0], LoginEvent::Notice(n) if n.message == "hello"));
    assert!(
        matches!(&events[1], LoginEvent::Parameter { name, value } if name == "server_version" && value == "15.8")
    );
    assert!(matches!(events.last(), Some(LoginEvent::Ready(_))));
    assert!(l.is_finished());
    assert_eq!(l.handle_message(rest), Err(LoginError::Finished));
}

#[test]
fn client_cached_keys_give_the_same_exchange() {
    let (a, sent_a) = run_client(rfc_client(), &rfc_transcript(), &[]);
    let keys = a.unwrap().scram_keys.unwrap();
    let (b, sent_b) = run_client(
        rfc_client().with_cached_keys(keys.clone()),
        &rfc_transcript(),
        &[],
    );
    assert_eq!(sent_a, sent_b);
    assert_eq!(b.unwrap().scram_keys, Some(keys));
}

#[test]
fn client_refuses_a_server_that_skips_its_proof() {
    // AuthenticationOk right after the client's final message: no server-final-message.
    let mut b = BytesMut::new();
    backend::authentication_sasl(&mut b, &["SCRAM-SHA-256"]);
    backend::authentication_sasl_continue(&mut b, SERVER_FIRST.as_bytes());
    backend::authentication_ok(&mut b);
    login_tail(&mut b);
    let (r, _) = run_client(rfc_client().with_cached_keys(rfc_keys()), &b, &[]);
    assert!(matches!(r, Err(LoginError::Protocol(_))), "{r:?}");
    // Or at once after AuthenticationSASL.
    let mut b = BytesMut::new();
    backend::authentication_sasl(&mut b, &["SCRAM-SHA-256"]);
    backend::authentication_ok(&mut b);
    let (r, _) = run_client(rfc_client(), &b, &[]);
    assert!(matches!(r, Err(LoginError::Protocol(_))), "{r:?}");
}

#[test]
fn client_refuses_a_wrong_server_signature_and_stays_failed() {
    let mut b = BytesMut::new();
    backend::authentication_sasl(&mut b, &["SCRAM-SHA-256"]);
    backend::authentication_sasl_continue(&mut b, SERVER_FIRST.as_bytes());
    backend::authentication_sasl_final(&mut b, b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    backend::authentication_ok(&mut b);
    let mut l = rfc_client().with_cached_keys(rfc_keys());
    let mut input = BytesMut::from(&b[..]);
    let e = l.handle_input(&mut input).unwrap_err();
    assert_eq!(e, LoginError::Auth(AuthError::BadServerSignature));
    assert_eq!(
        l.handle_input(&mut input),
        Err(e.clone()),
        "the error stays"
    );
    assert_eq!(l.handle_message(b"Z\0\0\0\x05I"), Err(e));
}

#[test]
fn client_md5_and_cleartext() {
    // PostgreSQL 15's answer for user u_md5, password pencil, salt 01020304.
    let mut b = BytesMut::new();
    backend::authentication_md5(&mut b, [1, 2, 3, 4]);
    backend::authentication_ok(&mut b);
    login_tail(&mut b);
    b.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
    let l = client::Login::new("u_md5", None, &[], Some(b"pencil"), &[0; 18]);
    let (r, sent) = run_client(l, &b, &[]);
    assert!(r.unwrap().scram_keys.is_none());
    assert_eq!(
        messages(&sent)[1],
        (b'p', b"md57e9b31d35ec4b9a238581e1a6109e467\0".to_vec())
    );

    let mut b = BytesMut::new();
    backend::authentication_cleartext(&mut b);
    let l = client::Login::new("u", None, &[], Some(b"pencil"), &[0; 18]);
    let (_, sent) = run_client(l, &b, &[]);
    assert_eq!(messages(&sent)[1], (b'p', b"pencil\0".to_vec()));

    let l = client::Login::new("u", None, &[("application_name", "x")], None, &[0; 18]);
    let (r, sent) = run_client(l, &b, &[]);
    assert_eq!(r, Err(LoginError::PasswordRequired));
    assert_eq!(messages(&sent).len(), 1, "only the startup packet");
}

#[test]
fn client_unsupported_methods() {
    let mut b = BytesMut::new();
    backend::authentication_sasl(&mut b, &["SCRAM-SHA-256-PLUS", "OAUTHBEARER"]);
    let (r, _) = run_client(rfc_client(), &b, &[]);
    assert_eq!(
        r,
        Err(LoginError::UnsupportedMechanisms(
            "SCRAM-SHA-256-PLUS, OAUTHBEARER".into()
        ))
    );
    // AuthenticationGSS.
    let (r, _) = run_client(rfc_client(), b"R\0\0\0\x08\0\0\0\x07", &[]);
    assert_eq!(r, Err(LoginError::UnsupportedMethod(7)));
    // A query result before the login ended.
    let (r, _) = run_client(rfc_client(), b"C\0\0\0\x0dSELECT 1\0", &[]);
    assert!(matches!(r, Err(LoginError::Protocol(_))), "{r:?}");
}

/// PostgreSQL 15's answer to a wrong password, with all its fields.
fn pg15_password_failed() -> Vec<u8> {
    let mut b = BytesMut::new();
    backend::error_response_fields(
        &mut b,
        [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"user\""),
            (b'F', "auth.c"),
            (b'L', "330"),
            (b'R', "auth_failed"),
        ],
    );
    b.to_vec()
}

#[test]
fn client_a_refusal_keeps_the_servers_words() {
    let err = pg15_password_failed();
    let mut b = BytesMut::new();
    backend::authentication_sasl(&mut b, &["SCRAM-SHA-256"]);
    b.extend_from_slice(&err);
    let (r, _) = run_client(rfc_client(), &b, &[]);
    let Err(LoginError::Server(r)) = r else {
        panic!("{r:?}")
    };
    let e = &r.error;
    assert_eq!((e.severity.as_str(), e.code.as_str()), ("FATAL", "28P01"));
    assert_eq!(
        e.message,
        "password authentication failed for user \"user\""
    );
    assert_eq!(r.fields().nth(4), Some((b'F', "auth.c")));
    let mut again = BytesMut::new();
    r.encode(&mut again);
    assert_eq!(&again[..], &err[..], "re-encoded as sent");
}

#[test]
fn negotiate_protocol_version_bytes() {
    let mut b = BytesMut::new();
    backend::negotiate_protocol_version(&mut b, 0, ["_pq_.a"].into_iter());
    assert_eq!(&b[..], b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.a\0");
}

// ---------------------------------------------------------------------------------------------
// Server side

/// Feeds `input` cut at `cuts` to a server login, answering with `answer` (SSL: `N`); the
/// events and everything sent.
fn run_server(
    input: &[u8],
    cuts: &[usize],
    mut answer: impl FnMut(&mut server::Login, &Event),
) -> (Vec<Event>, Vec<u8>, BytesMut) {
    let mut l = server::Login::new();
    let mut events = Vec::new();
    let mut sent = Vec::new();
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    ends.sort();
    ends.push(input.len());
    for end in ends {
        if end < at {
            continue;
        }
        buf.extend_from_slice(&input[at..end]);
        at = end;
        while let Some(ev) = l.handle_input(&mut buf) {
            answer(&mut l, &ev);
            events.push(ev);
        }
        while let Some(b) = l.poll_transmit() {
            sent.extend_from_slice(&b);
        }
        if l.is_finished() {
            break;
        }
    }
    buf.extend_from_slice(&input[at..]);
    (events, sent, buf)
}

fn startup(params: &[(&str, &str)]) -> BytesMut {
    let mut b = BytesMut::new();
    encode_startup(&mut b, params);
    b
}

fn rfc_server() -> Box<ScramServer> {
    Box::new(ScramServer::with_nonce(rfc_secret(), SERVER_NONCE).unwrap())
}

/// What a libpq-like client sends for the RFC exchange: SSLRequest, startup, SCRAM, a query.
fn client_transcript() -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_ssl_request(&mut b);
    b.extend_from_slice(&startup(&[("user", "user"), ("application_name", "t")]));
    frontend::sasl_initial_response(&mut b, "SCRAM-SHA-256", CLIENT_FIRST.as_bytes());
    frontend::sasl_response(&mut b, CLIENT_FINAL.as_bytes());
    frontend::query(&mut b, b"SELECT 1");
    b.to_vec()
}

fn scram_answers(refuse: bool) -> impl FnMut(&mut server::Login, &Event) {
    move |l, ev| match ev {
        Event::SslRequested => l.answer_ssl(false),
        Event::Startup(_) if refuse => l.authenticate(Auth::ScramRefused(rfc_server())),
        Event::Startup(_) => l.authenticate(Auth::Scram(rfc_server())),
        _ => {}
    }
}

fn rfc_server_reply() -> Vec<u8> {
    let mut b = BytesMut::from(&b"N"[..]);
    backend::authentication_sasl(&mut b, &["SCRAM-SHA-256"]);
    backend::authentication_sasl_continue(&mut b, SERVER_FIRST.as_bytes());
    backend::authentication_sasl_final(&mut b, SERVER_FINAL.as_bytes());
    b.to_vec()
}

#[test]
fn server_rfc7677_scram_login() {
    let (events, sent, rest) = run_server(&client_transcript(), &[], scram_answers(false));
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0], Event::SslRequested);
    let Event::Startup(p) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!((p.user.as_str(), p.database.as_str()), ("user", "user"));
    assert_eq!(p.get("application_name"), Some("t"));
    assert_eq!(events[2], Event::Authenticated);
    assert_eq!(sent, rfc_server_reply());
    assert_eq!(&rest[..], b"Q\0\0\0\x0dSELECT 1\0", "pipelined bytes stay");
}

fn failed(events: &[Event]) -> &server::LoginError {
    match events.last() {
        Some(Event::Failed(e)) => e,
        e => panic!("not failed: {e:?}"),
    }
}

/// The FATAL a login sent, as (code, message).
fn fatal(mut sent: &[u8]) -> (String, String) {
    while matches!(sent.first(), Some(b'N' | b'S')) {
        sent = &sent[1..]; // answers to SSLRequest / GSSENCRequest
    }
    while let Some(f) = frame(sent, 1 << 20).unwrap() {
        if let Ok(backend::Message::ErrorResponse(e)) = backend::parse(&sent[..f.len]) {
            assert_eq!(e.severity(), "FATAL");
            assert_eq!(f.len, sent.len(), "the FATAL comes last");
            return (e.code().into(), e.message().into());
        }
        sent = &sent[f.len..];
    }
    panic!("no ErrorResponse")
}

#[test]
fn server_wrong_password_and_refused_user_say_the_same() {
    let mut t = BytesMut::new();
    t.extend_from_slice(&startup(&[("user", "user")]));
    frontend::sasl_initial_response(&mut t, "SCRAM-SHA-256", CLIENT_FIRST.as_bytes());
    let bad = CLIENT_FINAL.replace("p=dHzb", "p=eHzb");
    frontend::sasl_response(&mut t, bad.as_bytes());
    let (events, sent, _) = run_server(&t, &[], scram_answers(false));
    assert_eq!(*failed(&events), server::LoginError::Password);
    let want = (
        "28P01".to_string(),
        "password authentication failed for user \"user\"".to_string(),
    );
    assert_eq!(fatal(&sent), want);
    // The right proof for a role that may not log in: the same words, no SASLFinal.
    let (events, sent, _) = run_server(&client_transcript(), &[], scram_answers(true));
    assert_eq!(*failed(&events), server::LoginError::Password);
    assert_eq!(fatal(&sent), want);
    assert!(
        !sent.windows(4).any(|w| w == b"v=6r"),
        "no server signature"
    );
}

#[test]
fn server_startup_refusals_as_postgres_15() {
    let trust = |l: &mut server::Login, ev: &Event| match ev {
        Event::SslRequested => l.answer_ssl(false),
        Event::Startup(_) => l.authenticate(Auth::Trust),
        _ => {}
    };
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            b"\0\0\0\x04".to_vec(),
            "08P01",
            "invalid length of startup packet",
        ),
        (
            b"\0\0\0\x09\0\x02\0\0\0".to_vec(),
            "0A000",
            "unsupported frontend protocol 2.0: server supports 3.0 to 3.0",
        ),
        (
            b"\0\0\0\x0e\0\x03\0\0user\0u\0".to_vec(),
            "08P01",
            "invalid startup packet layout: expected terminator as last byte",
        ),
        (
            startup(&[("database", "d")]).to_vec(),
            "28000",
            "no PostgreSQL user name specified in startup packet",
        ),
        (
            startup(&[("user", "u"), ("replication", "database")]).to_vec(),
            "0A000",
            "replication connections are not supported",
        ),
        (
            [
                &b"\0\0\0\x08\x04\xd2\x16\x2f"[..],
                b"\0\0\0\x08\x04\xd2\x16\x2f",
            ]
            .concat(),
            "0A000",
            "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0",
        ),
    ];
    for (input, code, msg) in cases {
        let (events, sent, _) = run_server(&input, &[], trust);
        failed(&events);
        assert_eq!(
            fatal(&sent),
            (code.to_string(), msg.to_string()),
            "{input:?}"
        );
    }
    // SASL-phase refusals.
    let mut t = startup(&[("user", "u")]);
    frontend::query(&mut t, b"SELECT 1");
    let (_, sent, _) = run_server(&t, &[], scram_answers(false));
    assert_eq!(
        fatal(&sent),
        (
            "08P01".into(),
            "expected SASL response, got message type 81".into()
        )
    );
    let mut t = startup(&[("user", "u")]);
    frontend::sasl_initial_response(&mut t, "SCRAM-SHA-256-PLUS", CLIENT_FIRST.as_bytes());
    let (_, sent, _) = run_server(&t, &[], scram_answers(false));
    assert_eq!(
        fatal(&sent),
        (
            "08P01".into(),
            "client selected an invalid SASL authentication mechanism".into()
        )
    );
    let mut t = startup(&[("user", "u")]);
    frontend::sasl_initial_response(&mut t, "SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=x");
    let (_, sent, _) = run_server(&t, &[], scram_answers(false));
    assert_eq!(
        fatal(&sent),
        ("08P01".into(), "malformed SCRAM message".into())
    );
}

#[test]
fn server_gssenc_ssl_accept_cancel_and_negotiation() {
    // GSSENCRequest: `N` without asking; SSLRequest accepted: `S`.
    let mut t = BytesMut::from(&b"\0\0\0\x08\x04\xd2\x16\x30"[..]);
    encode_ssl_request(&mut t);
    t.extend_from_slice(&startup(&[
        ("user", "u"),
        ("database", ""),
        ("_pq_.compression", "on"),
    ]));
    let (events, sent, _) = run_server(&t, &[], |l, ev| match ev {
        Event::SslRequested => l.answer_ssl(true),
        Event::Startup(_) => l.authenticate(Auth::Trust),
        _ => {}
    });
    assert_eq!(&sent[..2], b"NS");
    assert_eq!(
        &sent[2..],
        b"v\0\0\0\x1d\0\0\0\0\0\0\0\x01_pq_.compression\0"
    );
    let Event::Startup(p) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(p.database, "u", "an empty database is the user's");
    assert_eq!(p.unrecognized, vec!["_pq_.compression".to_string()]);
    assert!(p.params.is_empty());
    assert_eq!(events[2], Event::Authenticated);
    // Protocol 3.2: NegotiateProtocolVersion with no options.
    let mut t = startup(&[("user", "u")]);
    t[7] = 2;
    let (_, sent, _) = run_server(&t, &[], |_, _| {});
    assert_eq!(&sent[..], b"v\0\0\0\x0c\0\0\0\0\0\0\0\0");
    // CancelRequest: the key, nothing sent.
    let mut t = BytesMut::new();
    ferry_postgres::message::encode_cancel(&mut t, 7, -8);
    let (events, sent, _) = run_server(&t, &[], |_, _| {});
    assert_eq!(events, vec![Event::Cancel { pid: 7, secret: -8 }]);
    assert!(sent.is_empty());
    // The caller's own refusal.
    let (events, sent, _) = run_server(&startup(&[("user", "u")]), &[], |l, ev| {
        if let Event::Startup(_) = ev {
            l.refuse("53300", "too many");
        }
    });
    assert!(matches!(
        failed(&events),
        server::LoginError::Refused { .. }
    ));
    assert_eq!(fatal(&sent), ("53300".into(), "too many".into()));
}

#[test]
fn greet_writes_the_session_start() {
    let mut b = BytesMut::new();
    server::greet(&mut b, [("a", "1")], Some((5, 6)));
    let mut want = BytesMut::new();
    backend::authentication_ok(&mut want);
    backend::parameter_status(&mut want, "a", "1");
    backend::backend_key_data(&mut want, 5, 6);
    backend::ready_for_query(&mut want, TxStatus::Idle);
    assert_eq!(b, want);
}

/// The two machines against each other, through every split of both directions.
fn pair(password: &[u8], cut: usize) -> (Result<LoggedIn, LoginError>, Vec<Event>) {
    let mut c = client::Login::new(
        "alice",
        None,
        &[("application_name", "p")],
        Some(password),
        &[3; 18],
    );
    let mut s = server::Login::new();
    let secret = ScramSecret::from_password(b"pw", b"salt", 2);
    let mut to_s = BytesMut::new();
    let mut to_c = BytesMut::new();
    let mut events = Vec::new();
    for _ in 0..20 {
        while let Some(b) = c.poll_transmit() {
            to_s.extend_from_slice(&b);
        }
        // The server sees the bytes in two pieces.
        let n = cut.min(to_s.len());
        let mut part = to_s.split_to(n);
        for _ in 0..2 {
            while let Some(ev) = s.handle_input(&mut part) {
                if let Event::Startup(_) = ev {
                    let sv = ScramServer::new(secret.clone(), &[4; 18]);
                    s.authenticate(Auth::Scram(Box::new(sv)));
                }
                if ev == Event::Authenticated {
                    // The login's last answer (SASLFinal) goes first.
                    while let Some(b) = s.poll_transmit() {
                        to_c.extend_from_slice(&b);
                    }
                    server::greet(&mut to_c, [("server_version", "15")], Some((1, 2)));
                }
                events.push(ev);
            }
            part.unsplit(std::mem::take(&mut to_s));
        }
        to_s = part;
        while let Some(b) = s.poll_transmit() {
            to_c.extend_from_slice(&b);
        }
        match c.handle_input(&mut to_c) {
            Ok(None) => {}
            r => return (r.map(Option::unwrap), events),
        }
    }
    (Err(LoginError::Protocol("no outcome")), events)
}

#[test]
fn client_and_server_logins_agree() {
    let (r, events) = pair(b"pw", 3);
    let done = r.unwrap();
    assert_eq!(done.parameter("server_version"), Some("15"));
    assert_eq!(done.cancel_key, Some((1, 2)));
    assert_eq!(events.last(), Some(&Event::Authenticated));
    let (r, events) = pair(b"nope", 1000);
    let Err(LoginError::Server(e)) = r else {
        panic!("{r:?}")
    };
    let e = &e.error;
    assert_eq!(e.code, "28P01");
    assert_eq!(
        e.message,
        "password authentication failed for user \"alice\""
    );
    assert_eq!(*failed(&events), server::LoginError::Password);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn client_outcome_survives_any_split(cuts in proptest::collection::vec(0usize..400, 0..6), which in 0usize..3) {
        let t = match which {
            0 => rfc_transcript(),
            1 => [&rfc_transcript()[..30], &pg15_password_failed()].concat(),
            _ => {
                let mut b = BytesMut::new();
                backend::authentication_md5(&mut b, [9, 9, 9, 9]);
                backend::authentication_ok(&mut b);
                login_tail(&mut b);
                b.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
                b.to_vec()
            }
        };
        let whole = run_client(rfc_client().with_cached_keys(rfc_keys()), &t, &[]);
        let split = run_client(rfc_client().with_cached_keys(rfc_keys()), &t, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn server_outcome_survives_any_split(cuts in proptest::collection::vec(0usize..300, 0..6), refuse in any::<bool>()) {
        let t = client_transcript();
        let whole = run_server(&t, &[], scram_answers(refuse));
        let split = run_server(&t, &cuts, scram_answers(refuse));
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn client_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut l = client::Login::new("u", None, &[], Some(b"pw"), &[1; 18]);
        let mut b = BytesMut::from(&bytes[..]);
        let _ = l.handle_input(&mut b);
        while l.poll_transmit().is_some() {}
    }

    #[test]
    fn server_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (_events, _sent, _rest) = run_server(&bytes, &[], |l, ev| match ev {
            Event::SslRequested => l.answer_ssl(false),
            Event::Startup(_) => l.authenticate(Auth::Scram(Box::new(ScramServer::new(ScramSecret::from_password(b"pw", b"s", 1), &[1; 18])))),
            _ => {}
        });
    }
}

#[test]
fn server_answers_out_of_turn_are_ignored_and_eof_ends_the_login() {
    let mut l = server::Login::new();
    l.answer_ssl(true);
    l.authenticate(Auth::Trust);
    l.refuse("53300", "x");
    assert!(l.poll_transmit().is_none(), "nothing asked yet");
    let mut input = startup(&[("user", "u")]);
    assert!(matches!(
        l.handle_input(&mut input),
        Some(Event::Startup(_))
    ));
    assert_eq!(l.user(), "u");
    l.answer_ssl(true);
    assert!(l.poll_transmit().is_none(), "no SSLRequest to answer");
    assert_eq!(l.handle_input(&mut input), None, "waits for the caller");
    l.handle_eof();
    assert_eq!(
        l.handle_input(&mut input),
        Some(Event::Failed(server::LoginError::Eof))
    );
    assert!(l.is_finished() && l.poll_transmit().is_none());
    assert_eq!(l.handle_input(&mut input), None, "reported once");
}
