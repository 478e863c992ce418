//! Property tests of the SCRAM state machines: no panic on any input in any step, and a client
//! and a server that share a password always agree (and never when they do not).

use ferry_postgres::auth::{saslprep, AuthError, ScramClient, ScramSecret, ScramServer};
use proptest::prelude::*;

/// A client and a server (iteration count 2: PBKDF2 is slow in debug builds) after their
/// first messages, with the messages exchanged.
fn mid_exchange() -> (ScramClient, ScramServer, Vec<u8>, Vec<u8>, Vec<u8>) {
    let secret = ScramSecret::from_password(b"pw", b"salt", 2);
    let mut server = ScramServer::new(secret, &[3; 18]);
    let mut client = ScramClient::new(b"pw", &[4; 18]);
    let client_first = client.client_first();
    let server_first = server.handle_client_first(&client_first).unwrap();
    let client_final = client.handle_server_first(&server_first).unwrap();
    (client, server, client_first, server_first, client_final)
}

/// An edit of a valid message: replace, insert or delete one byte.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Mostly bytes of the SCRAM alphabet, so edits make near-valid messages.
    let byte = prop_oneof![
        3 => proptest::sample::select(b",=nyprscivmae0123456789+/AZaz".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn apply(msg: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut m = msg.to_vec();
    for e in edits {
        match *e {
            Edit::Replace(i, b) if !m.is_empty() => {
                let n = m.len();
                m[i % n] = b;
            }
            Edit::Insert(i, b) => m.insert(i % (m.len() + 1), b),
            Edit::Delete(i) if !m.is_empty() => {
                let n = m.len();
                m.remove(i % n);
            }
            _ => {}
        }
    }
    m
}

/// After an error, the server's exchange is over.
fn server_is_over(server: &mut ScramServer) {
    assert_eq!(
        server.handle_client_final(b"c=biws"),
        Err(AuthError::OutOfOrder)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (mut client, mut server, ..) = mid_exchange();
        let _ = client.handle_server_final(&data);
        let _ = server.handle_client_final(&data);
        let mut client = ScramClient::new(b"pw", &[4; 18]);
        let _ = client.handle_server_first(&data);
        let _ = client.handle_server_final(&data);
        let mut server = ScramServer::new(ScramSecret::from_password(b"pw", b"s", 1), &[1; 18]);
        let _ = server.handle_client_first(&data);
        let _ = server.handle_client_final(&data);
        let _ = ScramSecret::parse(&String::from_utf8_lossy(&data));
        let _ = saslprep(&data);
    }

    #[test]
    fn edited_messages_never_panic_nor_pass(edits in proptest::collection::vec(edit(), 1..4)) {
        let (_, _, client_first, server_first, client_final) = mid_exchange();

        // client-first → server.
        let m = apply(&client_first, &edits);
        let mut server = ScramServer::new(ScramSecret::from_password(b"pw", b"salt", 2), &[3; 18]);
        if server.handle_client_first(&m).is_err() {
            prop_assert_eq!(server.handle_client_first(&client_first), Err(AuthError::OutOfOrder));
        }

        // server-first → client; iteration counts stay small (at most 3 inserted digits).
        let m = apply(&server_first, &edits);
        let mut client = ScramClient::new(b"pw", &[4; 18]);
        if client.handle_server_first(&m).is_err() {
            prop_assert_eq!(client.handle_server_final(b"v="), Err(AuthError::OutOfOrder));
        }

        // client-final → server: only the genuine message may pass.
        let m = apply(&client_final, &edits);
        let (mut client, mut server, ..) = mid_exchange();
        match server.handle_client_final(&m) {
            Ok(server_final) => {
                prop_assert_eq!(&m, &client_final);
                prop_assert_eq!(client.handle_server_final(&server_final), Ok(()));
            }
            Err(_) => server_is_over(&mut server),
        }

        // server-final → client: only the genuine signature may pass.
        let (mut client, mut server, _, _, client_final) = mid_exchange();
        let server_final = server.handle_client_final(&client_final).unwrap();
        let m = apply(&server_final, &edits);
        if client.handle_server_final(&m).is_ok() {
            prop_assert_eq!(&m, &server_final);
        }
    }
}

proptest! {
    // PBKDF2 makes every case cost two derivations: fewer cases, few iterations.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn client_and_server_agree(
        password in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<String>().prop_map(String::into_bytes),
        ],
        other in proptest::collection::vec(any::<u8>(), 0..40),
        client_nonce in proptest::collection::vec(any::<u8>(), 18..48),
        server_nonce in proptest::collection::vec(any::<u8>(), 18..48),
        salt in proptest::collection::vec(any::<u8>(), 1..32),
        iterations in 1u32..6,
    ) {
        let secret = ScramSecret::from_password(&password, &salt, iterations);
        prop_assert_eq!(ScramSecret::parse(&secret.to_string()), Ok(secret.clone()));

        let mut server = ScramServer::new(secret.clone(), &server_nonce);
        let mut client = ScramClient::new(&password, &client_nonce);
        let server_first = server.handle_client_first(&client.client_first()).unwrap();
        let client_final = client.handle_server_first(&server_first).unwrap();
        let server_final = server.handle_client_final(&client_final).unwrap();
        prop_assert_eq!(client.handle_server_final(&server_final), Ok(()));
        prop_assert!(client.is_authenticated() && server.is_authenticated());

        // Another password fails on both sides (the server rejects the proof; the client,
        // facing a server that had the other password's secret, rejects its signature).
        prop_assume!(saslprep(&other) != saslprep(&password));
        let mut server = ScramServer::new(secret, &server_nonce);
        let mut client = ScramClient::new(&other, &client_nonce);
        let server_first = server.handle_client_first(&client.client_first()).unwrap();
        let client_final = client.handle_server_first(&server_first).unwrap();
        prop_assert_eq!(server.handle_client_final(&client_final), Err(AuthError::WrongPassword));
    }
}

proptest! {
    /// The secret format is canonical: whatever parses prints back exactly as it was read.
    #[test]
    fn secret_text_is_canonical(
        text in "SCRAM-SHA-256\\$[0-9+]{1,6}:[A-Za-z0-9+/=]{2,14}\\$[A-Za-z0-9+/=]{42,45}:[A-Za-z0-9+/=]{42,45}",
    ) {
        if let Ok(secret) = ScramSecret::parse(&text) {
            prop_assert_eq!(secret.to_string(), text);
        }
    }

    #[test]
    fn secret_round_trip(
        salt in proptest::collection::vec(any::<u8>(), 1..40),
        iterations in 1u32..,
        stored_key in any::<[u8; 32]>(),
        server_key in any::<[u8; 32]>(),
    ) {
        let secret = ScramSecret { iterations, salt, stored_key, server_key };
        prop_assert_eq!(ScramSecret::parse(&secret.to_string()), Ok(secret));
    }
}
