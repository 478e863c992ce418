//! A server and a client [`Tls`] driven against each other in memory.

use super::*;

struct Certs {
    cert: String,
    key: String,
}

fn certs() -> Certs {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Certs {
        cert: ck.cert.pem(),
        key: ck.key_pair.serialize_pem(),
    }
}

/// Both ends and what each has received.
struct Pair {
    server: Tls,
    client: Tls,
    at_server: BytesMut,
    at_client: BytesMut,
    server_closed: bool,
    client_closed: bool,
}

impl Pair {
    fn new(alpn_server: &[&[u8]], alpn_client: &[&[u8]]) -> Pair {
        let c = certs();
        let scfg =
            ServerConfig::from_pem(c.cert.as_bytes(), c.key.as_bytes(), alpn_server).unwrap();
        let ccfg = ClientConfig::from_ca_pem(c.cert.as_bytes(), alpn_client).unwrap();
        Pair {
            server: Tls::server(&scfg).unwrap(),
            client: Tls::client(&ccfg, "localhost").unwrap(),
            at_server: BytesMut::new(),
            at_client: BytesMut::new(),
            server_closed: false,
            client_closed: false,
        }
    }

    /// Move ciphertext both ways until neither side has any; `chop` splits every transmit
    /// into pieces of at most that many bytes.
    fn run(&mut self, chop: usize) -> Result<(), Error> {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(b) = self.client.poll_transmit() {
                moved = true;
                for piece in b.chunks(chop) {
                    let mut c = BytesMut::from(piece);
                    let i = self.server.handle_input(&mut c, &mut self.at_server)?;
                    assert!(c.is_empty(), "all ciphertext consumed");
                    self.server_closed |= i.peer_closed;
                }
            }
            while let Some(b) = self.server.poll_transmit() {
                moved = true;
                for piece in b.chunks(chop) {
                    let mut c = BytesMut::from(piece);
                    let i = self.client.handle_input(&mut c, &mut self.at_client)?;
                    self.client_closed |= i.peer_closed;
                }
            }
            if !moved {
                return Ok(());
            }
        }
        panic!("no quiescence");
    }
}

#[test]
fn handshake_completes_and_agrees_on_alpn() {
    let mut p = Pair::new(&[b"http/1.1"], &[b"h2", b"http/1.1"]);
    assert!(p.client.is_handshaking() && p.server.is_handshaking());
    p.run(usize::MAX).unwrap();
    assert!(!p.client.is_handshaking());
    assert!(!p.server.is_handshaking());
    assert_eq!(p.server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(p.client.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(p.server.server_name(), Some("localhost"));
}

#[test]
fn handshake_survives_one_byte_pieces() {
    let mut p = Pair::new(&[], &[]);
    p.run(1).unwrap();
    assert!(!p.server.is_handshaking() && !p.client.is_handshaking());
    assert_eq!(p.client.send(b"ping"), 4);
    p.run(1).unwrap();
    assert_eq!(&p.at_server[..], b"ping");
}

#[test]
fn data_flows_both_ways_even_before_the_handshake_ends() {
    let mut p = Pair::new(&[], &[]);
    // Queued before the handshake: held until it completes.
    assert_eq!(p.client.send(b"hello server"), 12);
    p.run(usize::MAX).unwrap();
    assert_eq!(&p.at_server[..], b"hello server");
    assert_eq!(p.server.send(b"hello client"), 12);
    p.run(usize::MAX).unwrap();
    assert_eq!(&p.at_client[..], b"hello client");
}

#[test]
fn large_data_respects_the_send_limit() {
    let mut p = Pair::new(&[], &[]);
    p.run(usize::MAX).unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for (from_client, expect) in [(true, &data), (false, &data)] {
        let mut off = 0;
        while off < data.len() {
            let tls = if from_client {
                &mut p.client
            } else {
                &mut p.server
            };
            let n = tls.send(&data[off..]);
            assert!(n <= SEND_LIMIT, "took {n}");
            off += n;
            p.run(4096).unwrap();
        }
        let got = if from_client {
            p.at_server.split()
        } else {
            p.at_client.split()
        };
        assert_eq!(&got[..], &expect[..]);
    }
}

#[test]
fn corrupt_record_is_a_typed_error_and_sticks() {
    let mut p = Pair::new(&[], &[]);
    p.run(usize::MAX).unwrap();
    p.client.send(b"some secret");
    let mut rec = BytesMut::from(&p.client.poll_transmit().unwrap()[..]);
    let last = rec.len() - 1;
    rec[last] ^= 0x55;
    let e = p
        .server
        .handle_input(&mut rec, &mut p.at_server)
        .unwrap_err();
    assert_eq!(e, Error::Decrypt);
    assert!(p.at_server.is_empty());
    assert_eq!(p.server.error(), Some(&Error::Decrypt));
    // An alert for the peer, and the same error again.
    assert!(p.server.poll_transmit().is_some());
    let mut more = BytesMut::from(&b"\x17\x03\x03\x00\x01x"[..]);
    assert_eq!(
        p.server.handle_input(&mut more, &mut p.at_server),
        Err(Error::Decrypt)
    );
    assert!(more.is_empty());
    assert_eq!(p.server.send(b"x"), 0);
}

#[test]
fn plain_text_on_a_tls_port_is_malformed_with_an_alert() {
    let c = certs();
    let cfg = ServerConfig::from_pem(c.cert.as_bytes(), c.key.as_bytes(), &[]).unwrap();
    let mut s = Tls::server(&cfg).unwrap();
    let mut plain = BytesMut::new();
    let mut req = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
    let e = s.handle_input(&mut req, &mut plain).unwrap_err();
    assert!(matches!(e, Error::Malformed(_)), "{e:?}");
    let alert = s.poll_transmit().expect("an alert");
    assert_eq!(alert[0], 0x15, "alert record");
}

#[test]
fn close_notify_reaches_the_peer() {
    let mut p = Pair::new(&[], &[]);
    p.run(usize::MAX).unwrap();
    p.client.send(b"last words");
    p.client.close();
    assert!(p.client.is_closed());
    assert_eq!(p.client.send(b"more"), 0, "nothing after close");
    p.run(usize::MAX).unwrap();
    assert_eq!(&p.at_server[..], b"last words");
    assert!(p.server_closed);
    assert!(!p.client_closed);
    p.server.close();
    p.run(usize::MAX).unwrap();
    assert!(p.client_closed);
}

#[test]
fn wrong_name_or_unknown_ca_is_a_certificate_error() {
    let c = certs();
    let scfg = ServerConfig::from_pem(c.cert.as_bytes(), c.key.as_bytes(), &[]).unwrap();
    let other = certs();
    for (ca, name) in [(&c.cert, "example.com"), (&other.cert, "localhost")] {
        let ccfg = ClientConfig::from_ca_pem(ca.as_bytes(), &[]).unwrap();
        let mut p = Pair {
            server: Tls::server(&scfg).unwrap(),
            client: Tls::client(&ccfg, name).unwrap(),
            at_server: BytesMut::new(),
            at_client: BytesMut::new(),
            server_closed: false,
            client_closed: false,
        };
        let e = p.run(usize::MAX).unwrap_err();
        assert!(matches!(e, Error::Certificate(_)), "{name}: {e:?}");
    }
}

#[test]
fn no_common_alpn_is_incompatible() {
    let mut p = Pair::new(&[b"postgresql"], &[b"h2"]);
    assert_eq!(p.run(usize::MAX), Err(Error::Incompatible));
}

#[test]
fn config_errors_are_typed() {
    let c = certs();
    assert!(matches!(
        ServerConfig::from_pem(b"", c.key.as_bytes(), &[]),
        Err(ConfigError::NoCertificate)
    ));
    assert!(matches!(
        ServerConfig::from_pem(c.cert.as_bytes(), b"junk", &[]),
        Err(ConfigError::NoKey)
    ));
    // The key of another certificate.
    let other = certs();
    assert!(matches!(
        ServerConfig::from_pem(c.cert.as_bytes(), other.key.as_bytes(), &[]),
        Err(ConfigError::Rustls(_))
    ));
    assert!(matches!(
        ClientConfig::from_ca_pem(b"nothing", &[]),
        Err(ConfigError::NoCaCertificate)
    ));
    let ccfg = ClientConfig::from_ca_pem(c.cert.as_bytes(), &[]).unwrap();
    assert_eq!(
        Tls::client(&ccfg, "not a name!").unwrap_err(),
        Error::InvalidServerName
    );
}

/// A CA and a leaf it signed (`client`: for client authentication, else for `localhost`).
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(leaf_cn: &str, client: bool) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{leaf_cn} CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, leaf_cn);
    leaf.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca: ca.pem(),
        cert: leaf.pem(),
        key: key.serialize_pem(),
    }
}

/// A server requiring certificates from `client_ca`'s clients, and a client presenting
/// `client` (if any).
fn mtls_pair(client_ca: &str, client: Option<&Pki>) -> Pair {
    let server = pki("server", false);
    let scfg = ServerConfig::from_pem_requiring_client_certs(
        server.cert.as_bytes(),
        server.key.as_bytes(),
        client_ca.as_bytes(),
        &[],
    )
    .unwrap();
    assert!(scfg.requires_client_certs());
    let ccfg = match client {
        Some(c) => ClientConfig::with_client_cert_pem(
            server.ca.as_bytes(),
            c.cert.as_bytes(),
            c.key.as_bytes(),
            &[],
        ),
        None => ClientConfig::from_ca_pem(server.ca.as_bytes(), &[]),
    }
    .unwrap();
    Pair {
        server: Tls::server(&scfg).unwrap(),
        client: Tls::client(&ccfg, "localhost").unwrap(),
        at_server: BytesMut::new(),
        at_client: BytesMut::new(),
        server_closed: false,
        client_closed: false,
    }
}

#[test]
fn client_cert_from_the_client_ca_is_verified_and_visible() {
    let client = pki("client-1", true);
    let mut p = mtls_pair(&client.ca, Some(&client));
    p.run(usize::MAX).unwrap();
    assert!(!p.server.is_handshaking() && !p.client.is_handshaking());
    let chain = p.server.peer_certificates().expect("the client's chain");
    let leaf = CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap();
    assert_eq!(chain[0], leaf);
    // Data flows once verified.
    assert_eq!(p.client.send(b"hello"), 5);
    p.run(usize::MAX).unwrap();
    assert_eq!(&p.at_server[..], b"hello");
}

#[test]
fn client_without_a_cert_is_refused_when_one_is_required() {
    let ca = pki("unused", true).ca;
    let mut p = mtls_pair(&ca, None);
    let e = p.run(usize::MAX).unwrap_err();
    assert!(p.server.error().is_some(), "the server refused: {e:?}");
    assert!(p.server.peer_certificates().is_none());
    assert_eq!(p.at_server.len(), 0);
}

#[test]
fn client_cert_from_another_ca_is_a_certificate_error() {
    let trusted = pki("trusted", true);
    let stranger = pki("stranger", true);
    let mut p = mtls_pair(&trusted.ca, Some(&stranger));
    let e = p.run(usize::MAX).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Certificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{e:?}"
    );
    assert!(p.server.error().is_some());
}

#[test]
fn server_without_client_auth_ignores_the_client_cert() {
    // A client cert offered to a server that does not ask: the handshake works, no chain.
    let client = pki("client-1", true);
    let server = pki("server", false);
    let scfg = ServerConfig::from_pem(server.cert.as_bytes(), server.key.as_bytes(), &[]).unwrap();
    assert!(!scfg.requires_client_certs());
    let ccfg = ClientConfig::with_client_cert_pem(
        server.ca.as_bytes(),
        client.cert.as_bytes(),
        client.key.as_bytes(),
        &[],
    )
    .unwrap();
    let mut p = Pair {
        server: Tls::server(&scfg).unwrap(),
        client: Tls::client(&ccfg, "localhost").unwrap(),
        at_server: BytesMut::new(),
        at_client: BytesMut::new(),
        server_closed: false,
        client_closed: false,
    };
    p.run(usize::MAX).unwrap();
    assert!(p.server.peer_certificates().is_none());
    assert!(p.client.peer_certificates().is_some(), "the server's chain");
}

#[test]
fn mtls_config_errors_are_typed() {
    let c = pki("client", true);
    assert!(matches!(
        ServerConfig::from_pem_requiring_client_certs(
            c.cert.as_bytes(),
            c.key.as_bytes(),
            b"no CA here",
            &[]
        ),
        Err(ConfigError::NoCaCertificate)
    ));
    assert!(matches!(
        ClientConfig::with_client_cert_pem(c.ca.as_bytes(), b"", c.key.as_bytes(), &[]),
        Err(ConfigError::NoCertificate)
    ));
    assert!(matches!(
        ClientConfig::with_client_cert_pem(c.ca.as_bytes(), c.cert.as_bytes(), b"junk", &[]),
        Err(ConfigError::NoKey)
    ));
    // The key of another certificate.
    let other = pki("other", true);
    assert!(matches!(
        ClientConfig::with_client_cert_pem(
            c.ca.as_bytes(),
            c.cert.as_bytes(),
            other.key.as_bytes(),
            &[]
        ),
        Err(ConfigError::Rustls(_))
    ));
}
