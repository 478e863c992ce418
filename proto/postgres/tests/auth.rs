//! SCRAM-SHA-256 and MD5 against published test vectors and PostgreSQL 15's own output.

use ferry_postgres::auth::{
    md5_password, md5_secret, AuthError, ScramClient, ScramSecret, ScramServer, DEFAULT_ITERATIONS,
    SCRAM_SHA_256,
};

/// RFC 7677 §3.
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
const SALT: &[u8] = b"\x5b\x6d\x99\x68\x9d\x12\x35\x8e\xec\xa0\x4b\x14\x12\x36\xfa\x81";

fn rfc_client() -> ScramClient {
    ScramClient::with_nonce(b"pencil", "rOprNGfwEbeRWgbNEkqO")
        .unwrap()
        .with_username("user")
}

fn rfc_server() -> ScramServer {
    let secret = ScramSecret::from_password(b"pencil", SALT, 4096);
    ScramServer::with_nonce(secret, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0").unwrap()
}

#[test]
fn rfc7677_client() {
    let mut client = rfc_client();
    assert_eq!(client.client_first(), CLIENT_FIRST.as_bytes());
    let client_final = client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(client_final).unwrap(), CLIENT_FINAL);
    client.handle_server_final(SERVER_FINAL.as_bytes()).unwrap();
    assert!(client.is_authenticated());
}

#[test]
fn rfc7677_server() {
    let mut server = rfc_server();
    let server_first = server.handle_client_first(CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(server_first).unwrap(), SERVER_FIRST);
    let server_final = server.handle_client_final(CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(server_final).unwrap(), SERVER_FINAL);
    assert!(server.is_authenticated());
}

#[test]
fn rfc7677_tampered_server_signature() {
    let mut client = rfc_client();
    client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
    let tampered = SERVER_FINAL.replace("v=6", "v=7");
    assert_eq!(
        client.handle_server_final(tampered.as_bytes()),
        Err(AuthError::BadServerSignature)
    );
    assert!(!client.is_authenticated());
}

#[test]
fn rfc7677_wrong_password_and_tampered_proof() {
    // The server rejects a client that does not know "pencil".
    let mut client = ScramClient::with_nonce(b"pencil2", "rOprNGfwEbeRWgbNEkqO")
        .unwrap()
        .with_username("user");
    let mut server = rfc_server();
    let server_first = server.handle_client_first(&client.client_first()).unwrap();
    let client_final = client.handle_server_first(&server_first).unwrap();
    assert_eq!(
        server.handle_client_final(&client_final),
        Err(AuthError::WrongPassword)
    );
    assert!(!server.is_authenticated());

    // A proof for another message (its nonce changed by one character) is wrong too.
    let mut server = rfc_server();
    server.handle_client_first(CLIENT_FIRST.as_bytes()).unwrap();
    let other = CLIENT_FINAL.replace("p=dHz", "p=dHy");
    assert_eq!(
        server.handle_client_final(other.as_bytes()),
        Err(AuthError::WrongPassword)
    );

    // A client whose password is right but whose server does not know it: the client notices.
    let secret = ScramSecret::from_password(b"not pencil", SALT, 4096);
    let mut server = ScramServer::with_nonce(secret, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0").unwrap();
    let mut client = rfc_client();
    server.handle_client_first(CLIENT_FIRST.as_bytes()).unwrap();
    let client_final = client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(
        server.handle_client_final(&client_final),
        Err(AuthError::WrongPassword)
    );
    // A lying server that answers with the signature it would have made (its ServerKey).
    assert_eq!(
        client.handle_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        Err(AuthError::BadServerSignature)
    );
}

#[test]
fn round_trip_libpq_style() {
    let secret = ScramSecret::from_password(b"s3cr3t", b"0123456789abcdef", DEFAULT_ITERATIONS);
    let mut server = ScramServer::new(secret, &[0xa5; 18]);
    let mut client = ScramClient::new(b"s3cr3t", &[0x5a; 18]);
    let client_first = client.client_first();
    assert_eq!(client_first, b"n,,n=,r=WlpaWlpaWlpaWlpaWlpaWlpa");
    let server_first = server.handle_client_first(&client_first).unwrap();
    assert_eq!(
        server_first,
        b"r=WlpaWlpaWlpaWlpaWlpaWlpapaWlpaWlpaWlpaWlpaWlpaWl,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096"
    );
    let client_final = client.handle_server_first(&server_first).unwrap();
    let server_final = server.handle_client_final(&client_final).unwrap();
    client.handle_server_final(&server_final).unwrap();
    assert!(client.is_authenticated() && server.is_authenticated());
    assert_eq!(SCRAM_SHA_256, "SCRAM-SHA-256");
}

/// `SELECT rolname, rolpassword FROM pg_authid` on PostgreSQL 15.14 after
/// `SET password_encryption = 'scram-sha-256'; CREATE ROLE <name> LOGIN PASSWORD <password>`
/// (and 'md5' for u_md5). PostgreSQL drew the salts; from_password must reproduce the keys,
/// which also checks SASLprep against PostgreSQL's on non-ASCII passwords.
const PG15: &[(&str, &str, &str)] = &[
    (
        "u_pencil",
        "pencil",
        "SCRAM-SHA-256$4096:f5L8G/u+bu/KsFi457mTYw==$ElqD9ZtewntE9V9ql/sDM5FzByes1kkZ2qHkJLedtCs=:S2rXZ8Fxj8BaQ2Z0qYisWCpP+ZGR9M5b05aaus1Koa4=",
    ),
    // Fullwidth "ｐａｓｓ": NFKC makes it "pass".
    (
        "u_fullwidth",
        "\u{ff50}\u{ff41}\u{ff53}\u{ff53}",
        "SCRAM-SHA-256$4096:VwD7jlO0yumMfCuF7ooU0g==$3b05u61aE9yVWmTvpnPDMHnNjsF6+QZBFl3iK5aSbs0=:zFhL7j8+m2/toKz7pCWt7C/7alJnUNwRjxIMM+bMKzE=",
    ),
    // No-break space: mapped to a space.
    (
        "u_nbsp",
        "a\u{a0}b",
        "SCRAM-SHA-256$4096:MuAVuxR3fFtCaDiK14DPyw==$zKc0fzWS0RnIfqPpV2qEuABrCPKfjXfg5Ousg7KKALM=:KKta3l96VYBEidtFbvgqsGm9xbI1VLbE/s1CJtKk+1A=",
    ),
    // Soft hyphen only: mapped to nothing, empty result, so the raw bytes are used.
    (
        "u_shy",
        "\u{ad}",
        "SCRAM-SHA-256$4096:6gPlXWQ9Ga44eM9XZF20eQ==$zdTFiy2QYvE3MRst4+nc98DMQl+VIOQrqNNcVLOdel4=:SJb80O1MG9M563nlveHyGcPqkEblFsgllAU7XmcGU98=",
    ),
    // ASCII with a control character: unchanged.
    (
        "u_ctl",
        "a\u{1}b",
        "SCRAM-SHA-256$4096:UVl4hax0qf9cMsAyqzzgRw==$coZgcvMTiBjvTc+o5phJR/fPBkGsdcPHSL+mldTWPL8=:IVOpSqFB1HK/EXyeXhjnY6cKMKUuVf488feBsHzcYs4=",
    ),
    // Roman numeral nine: NFKC "IX".
    (
        "u_roman",
        "\u{2168}x",
        "SCRAM-SHA-256$4096:DGmNrWo+RdqG1Uas9HOx1A==$d2won3O9IUmBhNP5KrnDnn7d1kqwYKNts9g8xizSPqA=:XuM78Arw1tn6TByd0HTcQFiyoA0osDPF9WePQmKu3K4=",
    ),
    // Arabic letter then Latin: prohibited bidirectional text, raw bytes.
    (
        "u_bidi",
        "\u{627}a",
        "SCRAM-SHA-256$4096:9zhzjzto6MUDSxaFjSKhmQ==$C9BOgupajMfHg0zrF6sgV9IOcGosS5m9lv6QuqQXebQ=:M23TyvynE9+guHUsnA4LbdRs8ztIqZeR5vYpKu6eBi4=",
    ),
    // Combining acute accent: composed by NFKC.
    (
        "u_e",
        "e\u{301}t\u{e9}",
        "SCRAM-SHA-256$4096:jtJXG/Obh2E+uv2MfE80bQ==$I8fiEgGk0wO9/BcnK9jTJySQbrADMQk5ENLTtdRIoxk=:snf9Tk0+Gg1rEbkfLnawrGlQEbKVDMzlWHBGf8I0DMA=",
    ),
    // Zero-width space: a non-ASCII space (C.1.2), mapped to U+0020.
    (
        "u_zwsp",
        "x\u{200b}y",
        "SCRAM-SHA-256$4096:3CsG68wZYLRV/QTjcchc+A==$Sx55aMOUU0U9GgbdjGfVx0krpjsw41NbBHNkNbBfU28=:3cBubfLGi7Vk1ozT9p6OUQgjh9VADJIgrPg6kry3GOQ=",
    ),
];

#[test]
fn postgres15_verifiers() {
    for &(role, password, verifier) in PG15 {
        let parsed = ScramSecret::parse(verifier).unwrap();
        assert_eq!(parsed.to_string(), verifier, "{role}");
        let computed =
            ScramSecret::from_password(password.as_bytes(), &parsed.salt, parsed.iterations);
        assert_eq!(computed, parsed, "{role}");
        assert_eq!(computed.to_string(), verifier, "{role}");

        // And a client with that password authenticates against that secret.
        let mut server = ScramServer::new(parsed, &[1; 18]);
        let mut client = ScramClient::new(password.as_bytes(), &[2; 18]);
        let server_first = server.handle_client_first(&client.client_first()).unwrap();
        let client_final = client.handle_server_first(&server_first).unwrap();
        let server_final = server.handle_client_final(&client_final).unwrap();
        client.handle_server_final(&server_final).unwrap();
    }
    // SASLprep equivalences PostgreSQL shows above.
    let salt = |i: usize| ScramSecret::parse(PG15[i].2).unwrap().salt;
    assert_eq!(
        ScramSecret::from_password(b"pass", &salt(1), 4096).to_string(),
        PG15[1].2
    );
    assert_eq!(
        ScramSecret::from_password(b"a b", &salt(2), 4096).to_string(),
        PG15[2].2
    );
    assert_eq!(
        ScramSecret::from_password(b"IXx", &salt(5), 4096).to_string(),
        PG15[5].2
    );
    assert_eq!(
        ScramSecret::from_password("\u{e9}t\u{e9}".as_bytes(), &salt(7), 4096).to_string(),
        PG15[7].2
    );
    assert_eq!(
        ScramSecret::from_password(b"x y", &salt(8), 4096).to_string(),
        PG15[8].2
    );
    assert_ne!(
        ScramSecret::from_password(b"", &salt(3), 4096).to_string(),
        PG15[3].2
    );
}

#[test]
fn postgres15_md5() {
    // rolpassword of u_md5 (password "pencil").
    assert_eq!(
        &md5_secret(b"u_md5", b"pencil"),
        b"md56520b9e6d1360465923cccaa4a18e5f0"
    );
    // python3: "md5" + md5(md5(password + user).hexdigest() + salt).hexdigest()
    assert_eq!(
        &md5_password(b"u_md5", b"pencil", [1, 2, 3, 4]),
        b"md57e9b31d35ec4b9a238581e1a6109e467"
    );
    assert_eq!(
        &md5_password(b"postgres", b"secret", [0xde, 0xad, 0xbe, 0xef]),
        b"md5c546d0bbed2af888b328536b45c76348"
    );
}

#[test]
fn scram_pass_through() {
    // The proxy holds only the secret (as in pg_authid); the upstream holds the same one.
    let secret = ScramSecret::parse(PG15[0].2).unwrap();
    let mut proxy = ScramServer::new(secret.clone(), &[1; 18]);
    assert_eq!(proxy.client_key(), None);
    let mut client = ScramClient::new(b"pencil", &[2; 18]);
    let server_first = proxy.handle_client_first(&client.client_first()).unwrap();
    let client_final = client.handle_server_first(&server_first).unwrap();
    assert_eq!(proxy.client_key(), None);
    let server_final = proxy.handle_client_final(&client_final).unwrap();
    client.handle_server_final(&server_final).unwrap();
    let client_key = proxy.client_key().unwrap();

    // The proxy logs in upstream without the password.
    let mut upstream = ScramServer::new(secret.clone(), &[3; 18]);
    let mut proxy_client = ScramClient::from_keys(client_key, secret.server_key, &[4; 18]);
    let server_first = upstream
        .handle_client_first(&proxy_client.client_first())
        .unwrap();
    let client_final = proxy_client.handle_server_first(&server_first).unwrap();
    let server_final = upstream.handle_client_final(&client_final).unwrap();
    proxy_client.handle_server_final(&server_final).unwrap();
    assert!(proxy_client.is_authenticated() && upstream.is_authenticated());

    // An upstream with another secret for the same password (another salt) refuses it.
    let other = ScramSecret::from_password(b"pencil", b"another salt", 4096);
    let mut upstream = ScramServer::new(other, &[3; 18]);
    let mut proxy_client = ScramClient::from_keys(client_key, secret.server_key, &[4; 18]);
    let server_first = upstream
        .handle_client_first(&proxy_client.client_first())
        .unwrap();
    let client_final = proxy_client.handle_server_first(&server_first).unwrap();
    assert_eq!(
        upstream.handle_client_final(&client_final),
        Err(AuthError::WrongPassword)
    );

    // A failed exchange reveals no key.
    let mut proxy = ScramServer::new(secret, &[1; 18]);
    let mut client = ScramClient::new(b"wrong", &[2; 18]);
    let server_first = proxy.handle_client_first(&client.client_first()).unwrap();
    let client_final = client.handle_server_first(&server_first).unwrap();
    assert!(proxy.handle_client_final(&client_final).is_err());
    assert_eq!(proxy.client_key(), None);
}

#[test]
fn mock_secret_for_unknown_users() {
    let a = ScramSecret::mock(b"nobody", b"installation secret");
    assert_eq!(a, ScramSecret::mock(b"nobody", b"installation secret"));
    assert_ne!(
        a.salt,
        ScramSecret::mock(b"nobody2", b"installation secret").salt
    );
    assert_ne!(
        a.salt,
        ScramSecret::mock(b"nobody", b"other installation").salt
    );
    assert_eq!((a.salt.len(), a.iterations), (16, DEFAULT_ITERATIONS));
    assert_eq!(ScramSecret::parse(&a.to_string()), Ok(a.clone()));
    for password in [&b""[..], b"pencil", b"\0"] {
        let mut server = ScramServer::new(a.clone(), &[1; 18]);
        let mut client = ScramClient::new(password, &[2; 18]);
        let server_first = server.handle_client_first(&client.client_first()).unwrap();
        let client_final = client.handle_server_first(&server_first).unwrap();
        assert_eq!(
            server.handle_client_final(&client_final),
            Err(AuthError::WrongPassword)
        );
    }
}

/// A second login with the keys the first one derived: no PBKDF2, same proof; keys for
/// another salt are ignored; keys of another password are refused by the server.
#[test]
fn cached_keys_skip_pbkdf2_only_when_they_fit() {
    use ferry_postgres::auth::{ScramClient, ScramSecret, ScramServer};
    let login = |client: &mut ScramClient, secret: &ScramSecret| {
        let mut server = ScramServer::new(secret.clone(), &[5; 18]);
        let first = server.handle_client_first(&client.client_first()).unwrap();
        let fin = client.handle_server_first(&first).unwrap();
        server
            .handle_client_final(&fin)
            .map(|v| client.handle_server_final(&v))
    };
    let secret = ScramSecret::from_password(b"pencil", b"salt-one", 4096);
    let mut first = ScramClient::new(b"pencil", &[1; 18]);
    assert!(
        first.derived_keys().is_none(),
        "nothing derived before the exchange"
    );
    login(&mut first, &secret).unwrap().unwrap();
    let keys = first.derived_keys().unwrap().clone();

    let mut again = ScramClient::new(b"pencil", &[2; 18]).with_cached_keys(keys.clone());
    login(&mut again, &secret).unwrap().unwrap();
    assert_eq!(again.derived_keys(), Some(&keys));

    // Another salt (the role's password was set again): the cache does not fit, PBKDF2 runs.
    let other = ScramSecret::from_password(b"pencil", b"salt-two", 4096);
    let mut moved = ScramClient::new(b"pencil", &[3; 18]).with_cached_keys(keys.clone());
    login(&mut moved, &other).unwrap().unwrap();
    assert_ne!(moved.derived_keys(), Some(&keys));

    // Keys of another password with the same salt: the server refuses the proof.
    let mut wrong = ScramClient::new(b"wrong", &[4; 18]);
    let _ = login(&mut wrong, &secret);
    let wrong_keys = wrong.derived_keys().unwrap().clone();
    let mut c = ScramClient::new(b"pencil", &[6; 18]).with_cached_keys(wrong_keys);
    assert!(login(&mut c, &secret).is_err());
}
