//! Sans-IO TLS for Ferry: a thin adapter over [rustls]'s connection types that moves bytes,
//! never sockets.
//!
//! A [`Tls`] is one end of a TLS session, server ([`Tls::server`]) or client
//! ([`Tls::client`]). The caller owns the socket and the buffers:
//!
//! - ciphertext read from the socket goes to [`Tls::handle_input`], which consumes all of it
//!   (a partial record is kept inside) and appends the plaintext it decrypted to the caller's
//!   buffer;
//! - plaintext to send goes to [`Tls::send`] (it takes what fits under the
//!   [`SEND_LIMIT`] and says how much);
//! - ciphertext to write to the socket comes out of [`Tls::poll_transmit`] as owned [`Bytes`]
//!   (handshake messages, records, alerts), which a driver may keep across an in-flight
//!   io_uring send;
//! - [`Tls::close`] queues a `close_notify` alert; [`Input::peer_closed`] tells that the peer
//!   sent one.
//!
//! Every failure is a typed [`Error`]; after one, the alert rustls queued for the peer (if any)
//! still comes out of [`poll_transmit`](Tls::poll_transmit), and every later
//! [`handle_input`](Tls::handle_input) returns the same error again.
//!
//! Configuration comes from PEM bytes ([`ServerConfig::from_pem`],
//! [`ClientConfig::from_ca_pem`]) with the `ring` crypto provider; reading the files is the
//! caller's business (this crate does no I/O). Mutual TLS: a server that requires client
//! certificates chained to a CA ([`ServerConfig::from_pem_requiring_client_certs`], the
//! verified chain then in [`Tls::peer_certificates`]), a client that presents one
//! ([`ClientConfig::with_client_cert_pem`]).
//!
//! # Example: a run loop over a std socket
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use bytes::BytesMut;
//! use ferry_tls::{ServerConfig, Tls};
//!
//! let cert = std::fs::read("cert.pem").unwrap();
//! let key = std::fs::read("key.pem").unwrap();
//! let cfg = ServerConfig::from_pem(&cert, &key, &[b"http/1.1"]).unwrap();
//! let (mut sock, _) = std::net::TcpListener::bind("127.0.0.1:8443").unwrap().accept().unwrap();
//! let mut tls = Tls::server(&cfg).unwrap();
//! let (mut cipher, mut plain) = (BytesMut::new(), BytesMut::new());
//! let mut buf = [0u8; 16384];
//! loop {
//!     while let Some(out) = tls.poll_transmit() {
//!         sock.write_all(&out).unwrap();
//!     }
//!     let n = sock.read(&mut buf).unwrap();
//!     if n == 0 { break }
//!     cipher.extend_from_slice(&buf[..n]);
//!     match tls.handle_input(&mut cipher, &mut plain) {
//!         Ok(input) if input.peer_closed => { tls.close(); }
//!         Ok(_) => {
//!             // Echo what came in.
//!             let p = plain.split();
//!             tls.send(&p);
//!         }
//!         Err(e) => { eprintln!("tls: {e}"); break }
//!     }
//! }
//! // The alert for a failure, or the close_notify, goes out before the socket closes.
//! while let Some(out) = tls.poll_transmit() { let _ = sock.write_all(&out); }
//! ```
#![deny(missing_docs)]

use std::io::{BufRead, Write};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use rustls;

/// Plaintext [`Tls::send`] accepts beyond what [`Tls::poll_transmit`] has taken (before the
/// handshake completes, or while records wait): what a peer that does not read costs.
pub const SEND_LIMIT: usize = 64 * 1024;

/// Why a configuration could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The certificate PEM holds no `CERTIFICATE` block (or a malformed one).
    NoCertificate,
    /// The key PEM holds no private key (PKCS#8, PKCS#1 or SEC1), or a malformed one.
    NoKey,
    /// The CA PEM holds no usable certificate.
    NoCaCertificate,
    /// rustls refused the combination (e.g. the key does not match the certificate).
    Rustls(rustls::Error),
    /// The client certificate verifier could not be built from the client CA.
    ClientVerifier(rustls::server::VerifierBuilderError),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::NoCertificate => f.write_str("no PEM certificate found"),
            ConfigError::NoKey => f.write_str("no PEM private key found"),
            ConfigError::NoCaCertificate => f.write_str("no usable PEM CA certificate found"),
            ConfigError::Rustls(e) => write!(f, "{e}"),
            ConfigError::ClientVerifier(e) => write!(f, "client CA: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| ConfigError::NoCertificate)?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificate);
    }
    Ok(certs)
}

/// The CA certificates in `ca_pem` as a root store (at least one usable).
fn roots(ca_pem: &[u8]) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(certs(ca_pem).map_err(|_| ConfigError::NoCaCertificate)?);
    if added == 0 {
        return Err(ConfigError::NoCaCertificate);
    }
    Ok(roots)
}

/// A server's settings (certificate chain, key, ALPN, client certificates), shared by its
/// connections.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    cfg: Arc<rustls::ServerConfig>,
    client_certs: bool,
}

impl ServerConfig {
    /// From a PEM certificate chain (leaf first), a PEM private key and the ALPN protocols
    /// to offer, most preferred first (empty: no ALPN; a client that offers only others is
    /// refused with `no_application_protocol`). TLS 1.2 and 1.3, `ring` provider.
    pub fn from_pem(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, ConfigError> {
        ServerConfig::build(cert_chain_pem, key_pem, None, alpn)
    }

    /// As [`from_pem`](ServerConfig::from_pem), and every client must present a
    /// certificate chained to one of the CA certificates in `client_ca_pem` (mutual TLS,
    /// rustls' `WebPkiClientVerifier`): a client without one, or with one the CA did not
    /// sign (or expired, or not for client authentication), fails the handshake
    /// ([`Error::Certificate`] or [`Error::AlertReceived`] on the server's side, an alert to
    /// the client). The verified chain is then in [`Tls::peer_certificates`].
    pub fn from_pem_requiring_client_certs(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: &[u8],
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, ConfigError> {
        ServerConfig::build(cert_chain_pem, key_pem, Some(client_ca_pem), alpn)
    }

    fn build(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, ConfigError> {
        let chain = certs(cert_chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| ConfigError::NoKey)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(ConfigError::Rustls)?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(ConfigError::ClientVerifier)?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut cfg = builder
            .with_single_cert(chain, key)
            .map_err(ConfigError::Rustls)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ServerConfig {
            cfg: Arc::new(cfg),
            client_certs: client_ca_pem.is_some(),
        })
    }

    /// Whether clients must present a verified certificate
    /// ([`from_pem_requiring_client_certs`](ServerConfig::from_pem_requiring_client_certs)):
    /// a protocol that also takes plain-text clients (PostgreSQL without `SSLRequest`) must
    /// refuse them then.
    pub fn requires_client_certs(&self) -> bool {
        self.client_certs
    }

    /// Wrap a rustls configuration built elsewhere; `client_certs`: its verifier requires
    /// client certificates (what [`requires_client_certs`](ServerConfig::requires_client_certs)
    /// says).
    pub fn from_rustls(cfg: Arc<rustls::ServerConfig>, client_certs: bool) -> ServerConfig {
        ServerConfig { cfg, client_certs }
    }
}

/// Equal when both are clones of one configuration.
impl PartialEq for ServerConfig {
    fn eq(&self, other: &ServerConfig) -> bool {
        Arc::ptr_eq(&self.cfg, &other.cfg)
    }
}

impl Eq for ServerConfig {}

/// A client's settings (trusted roots, ALPN), shared by its connections.
#[derive(Clone, Debug)]
pub struct ClientConfig(Arc<rustls::ClientConfig>);

impl ClientConfig {
    /// Trusting the CA certificates in `ca_pem`, offering `alpn` (empty: no ALPN). Server
    /// certificates are verified against the name given to [`Tls::client`].
    pub fn from_ca_pem(ca_pem: &[u8], alpn: &[&[u8]]) -> Result<ClientConfig, ConfigError> {
        ClientConfig::build(ca_pem, None, alpn)
    }

    /// As [`from_ca_pem`](ClientConfig::from_ca_pem), and presenting the certificate chain
    /// in `cert_chain_pem` (leaf first) with its private key `key_pem` to servers that ask
    /// for one (mutual TLS).
    pub fn with_client_cert_pem(
        ca_pem: &[u8],
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        alpn: &[&[u8]],
    ) -> Result<ClientConfig, ConfigError> {
        ClientConfig::build(ca_pem, Some((cert_chain_pem, key_pem)), alpn)
    }

    fn build(
        ca_pem: &[u8],
        client_cert: Option<(&[u8], &[u8])>,
        alpn: &[&[u8]],
    ) -> Result<ClientConfig, ConfigError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(ConfigError::Rustls)?
            .with_root_certificates(roots(ca_pem)?);
        let mut cfg = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certs(cert)?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| ConfigError::NoKey)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(ConfigError::Rustls)?
            }
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ClientConfig(Arc::new(cfg)))
    }

    /// Wrap a rustls configuration built elsewhere.
    pub fn from_rustls(cfg: Arc<rustls::ClientConfig>) -> ClientConfig {
        ClientConfig(cfg)
    }
}

/// Equal when both are clones of one configuration.
impl PartialEq for ClientConfig {
    fn eq(&self, other: &ClientConfig) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClientConfig {}

/// A TLS failure. Fatal: the session is over (send what
/// [`poll_transmit`](Tls::poll_transmit) still gives, the alert, then close).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not TLS records, or a message is malformed (e.g. a plain-text client
    /// on a TLS port).
    Malformed(rustls::InvalidMessage),
    /// A record failed to decrypt or authenticate (corrupted or forged in transit).
    Decrypt,
    /// The peer sent a fatal alert.
    AlertReceived(rustls::AlertDescription),
    /// The peer's certificate was refused.
    Certificate(rustls::CertificateError),
    /// Nothing in common: protocol versions, cipher suites, ALPN protocols.
    Incompatible,
    /// The peer broke the protocol (an unexpected message, an oversized record...).
    Misbehaved,
    /// The server name given to [`Tls::client`] is neither a DNS name nor an IP address.
    InvalidServerName,
    /// Any other rustls error.
    Other(rustls::Error),
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Error {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(m) => Error::Malformed(m),
            E::DecryptError => Error::Decrypt,
            E::AlertReceived(a) => Error::AlertReceived(a),
            E::InvalidCertificate(c) => Error::Certificate(c),
            E::PeerIncompatible(_) | E::NoApplicationProtocol => Error::Incompatible,
            E::PeerMisbehaved(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerSentOversizedRecord => Error::Misbehaved,
            other => Error::Other(other),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Malformed(m) => write!(f, "not TLS, or a malformed message: {m:?}"),
            Error::Decrypt => f.write_str("a record failed to decrypt"),
            Error::AlertReceived(a) => write!(f, "the peer sent the alert {a:?}"),
            Error::Certificate(c) => write!(f, "certificate refused: {c:?}"),
            Error::Incompatible => f.write_str("no protocol version, suite or ALPN in common"),
            Error::Misbehaved => f.write_str("the peer broke the TLS protocol"),
            Error::InvalidServerName => f.write_str("invalid server name"),
            Error::Other(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// What one [`Tls::handle_input`] call brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Input {
    /// Plaintext bytes appended to the caller's buffer.
    pub plaintext: usize,
    /// The peer sent `close_notify`: it sends nothing more (later ciphertext is discarded).
    pub peer_closed: bool,
}

/// One end of a TLS session (see the [crate docs](crate)).
///
/// Polling order, after any input or command: [`handle_input`](Tls::handle_input) and
/// [`send`](Tls::send) in any order, then [`poll_transmit`](Tls::poll_transmit) until `None`.
pub struct Tls {
    conn: rustls::Connection,
    /// The first fatal error, returned again by later calls.
    error: Option<Error>,
    /// Ciphertext written by rustls, split off as `Bytes` (its spare room is reused).
    out: BytesMut,
    closed: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field(
                "server",
                &matches!(self.conn, rustls::Connection::Server(_)),
            )
            .field("handshaking", &self.conn.is_handshaking())
            .field("error", &self.error)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Tls {
    fn new(conn: rustls::Connection) -> Tls {
        let mut t = Tls {
            conn,
            error: None,
            out: BytesMut::new(),
            closed: false,
        };
        t.conn.set_buffer_limit(Some(SEND_LIMIT));
        t
    }

    /// A server session (it waits for the client's hello). Fails only for a rustls
    /// configuration with an invalid `max_fragment_size` (see [`ServerConfig::from_rustls`]).
    pub fn server(cfg: &ServerConfig) -> Result<Tls, Error> {
        let conn = rustls::ServerConnection::new(cfg.cfg.clone())?;
        Ok(Tls::new(conn.into()))
    }

    /// A client session for `server_name` (a DNS name, checked against the server's
    /// certificate, and sent as SNI; or an IP address). Its hello is ready to
    /// [`poll_transmit`](Tls::poll_transmit) at once.
    pub fn client(cfg: &ClientConfig, server_name: &str) -> Result<Tls, Error> {
        let name =
            ServerName::try_from(server_name.to_string()).map_err(|_| Error::InvalidServerName)?;
        let conn = rustls::ClientConnection::new(cfg.0.clone(), name)?;
        Ok(Tls::new(conn.into()))
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The ALPN protocol agreed on, once the handshake got that far.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The server name the client asked for (SNI), on a server session.
    pub fn server_name(&self) -> Option<&str> {
        match &self.conn {
            rustls::Connection::Server(s) => s.server_name(),
            rustls::Connection::Client(_) => None,
        }
    }

    /// The certificate chain the peer presented (leaf first), once the handshake got that
    /// far: on a server requiring client certificates, the client's verified chain; on a
    /// client, the server's. `None` before, or when the peer sent none.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The fatal error this session ended with, if any.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// Consume all of `cipher` (ciphertext from the peer; a partial record stays inside) and
    /// append the plaintext it carried to `plain`. Handshake replies and alerts are queued
    /// for [`poll_transmit`](Tls::poll_transmit). After an error, returns it again and
    /// discards `cipher`.
    pub fn handle_input(
        &mut self,
        cipher: &mut BytesMut,
        plain: &mut BytesMut,
    ) -> Result<Input, Error> {
        if let Some(e) = &self.error {
            cipher.clear();
            return Err(e.clone());
        }
        let mut input = Input::default();
        let mut rest: &[u8] = cipher;
        // An empty read would tell rustls "EOF": only feed what there is.
        while !rest.is_empty() && !input.peer_closed {
            match self.conn.read_tls(&mut rest) {
                Ok(0) => input.peer_closed = true,
                Ok(_) => {}
                // The plaintext buffer is drained after every record batch, so it is never
                // full; treat it as the peer flooding us anyway.
                Err(_) => {
                    cipher.clear();
                    return Err(self.fail(Error::Misbehaved));
                }
            }
            match self.conn.process_new_packets() {
                Ok(state) => input.peer_closed |= state.peer_has_closed(),
                Err(e) => {
                    // Hand out what decrypted before the failure? No: a session that failed
                    // cannot be trusted to have framed the rest; stop here.
                    cipher.clear();
                    return Err(self.fail(e.into()));
                }
            }
            input.plaintext += self.drain_plaintext(plain);
        }
        cipher.clear();
        Ok(input)
    }

    fn drain_plaintext(&mut self, plain: &mut BytesMut) -> usize {
        let mut n = 0;
        let mut reader = self.conn.reader();
        while let Ok(chunk) = reader.fill_buf() {
            if chunk.is_empty() {
                break;
            }
            let len = chunk.len();
            plain.extend_from_slice(chunk);
            reader.consume(len);
            n += len;
        }
        n
    }

    fn fail(&mut self, e: Error) -> Error {
        self.error = Some(e.clone());
        e
    }

    /// Queue plaintext to send: encrypted at once after the handshake, buffered before it.
    /// Returns how many bytes were taken: fewer than `data.len()` (maybe 0) once
    /// [`SEND_LIMIT`] bytes wait (take [`poll_transmit`](Tls::poll_transmit) output, then
    /// offer the rest again), and 0 after [`close`](Tls::close) or an error.
    pub fn send(&mut self, data: &[u8]) -> usize {
        if self.closed || self.error.is_some() || data.is_empty() {
            return 0;
        }
        self.conn.writer().write(data).unwrap_or(0)
    }

    /// Queue a `close_notify` alert: this side sends nothing more. Idempotent.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.conn.send_close_notify();
        }
    }

    /// Whether [`close`](Tls::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether [`poll_transmit`](Tls::poll_transmit) has bytes to give.
    pub fn wants_transmit(&self) -> bool {
        self.conn.wants_write()
    }

    /// Ciphertext to write to the peer, all that is queued in one chunk; `None` when nothing
    /// is.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if !self.conn.wants_write() {
            return None;
        }
        let mut w = (&mut self.out).writer();
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut w) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }
}

#[cfg(test)]
mod tests;
