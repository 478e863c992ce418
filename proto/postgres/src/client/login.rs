//! The frontend side of a login, sans-IO: StartupMessage out, authentication answered,
//! backend messages read up to the first ReadyForQuery.
//!
//! ```text
//! Login::new ── StartupMessage ──>                              (poll_transmit)
//!            <── AuthenticationSASL / MD5Password / CleartextPassword
//!            ── SASLInitialResponse / PasswordMessage ──>       (poll_transmit)
//!            <── AuthenticationSASLContinue ── SASLResponse ──>
//!            <── AuthenticationSASLFinal (server signature checked)
//!            <── AuthenticationOk, ParameterStatus*, BackendKeyData, ReadyForQuery
//!            => LoginEvent::Ready(LoggedIn)
//! ```
//!
//! Feed it whole backend messages ([`Login::handle_message`]) or raw input
//! ([`Login::handle_input`], which stops right after the ReadyForQuery and leaves what
//! follows in the buffer); after each call, write what [`Login::poll_transmit`] gives. The
//! first error is final: every later call returns it again.
//!
//! ## TLS (`SSLRequest`)
//!
//! [`Login::with_ssl_request`] asks for TLS first, with libpq's `sslmode=verify-full`
//! semantics on this side of the exchange: the SSLRequest goes out instead of the
//! StartupMessage, and the server's one-byte answer must be `S`. `N` (no TLS) is
//! [`LoginError::TlsRefused`], any other byte [`LoginError::SslResponse`], and any byte
//! after the `S` (sent before the TLS handshake, so not protected by it: CVE-2021-23222
//! style injection) is [`LoginError::DataAfterSslResponse`]. After the `S`,
//! [`Login::wants_tls`] says so: the caller MUST start TLS on the transport (input and
//! output are plaintext inside it from then on), then call [`Login::tls_started`], which
//! queues the StartupMessage; the login goes on as above. Checking the server's
//! certificate is the TLS layer's business.
//!
//! ```text
//! Login::new(..).with_ssl_request() ── SSLRequest ──>  <── `S`   => wants_tls()
//! (caller starts TLS) tls_started() ── StartupMessage ──> (inside TLS) ...
//! ```
//!
//! A server that sends AuthenticationOk before its SCRAM server-final-message (so without
//! proving that it knows the password) is refused with [`LoginError::Protocol`]. An
//! ErrorResponse ends the login with [`LoginError::Server`], which keeps every field of it
//! (a proxy can hand the server's own words to its clients with [`Refusal::encode`]).
//!
//! ```
//! use bytes::BytesMut;
//! use ferry_postgres::backend::{self, TxStatus};
//! use ferry_postgres::client::{Login, LoginEvent};
//!
//! let mut login = Login::new("app", Some("shop"), &[], Some(b"secret"), &[7; 18]);
//! let startup = login.poll_transmit().expect("the StartupMessage");
//! assert_eq!(&startup[4..8], &[0, 3, 0, 0]); // protocol 3.0
//!
//! // A trusting server: AuthenticationOk and the session's start.
//! let mut input = BytesMut::new();
//! backend::authentication_ok(&mut input);
//! backend::parameter_status(&mut input, "server_version", "15.8");
//! backend::backend_key_data(&mut input, 42, 7);
//! backend::ready_for_query(&mut input, TxStatus::Idle);
//! input.extend_from_slice(b"N\0\0\0\x04"); // a message after the login: left in `input`
//! let done = login.handle_input(&mut input)?.expect("logged in");
//! assert_eq!(done.parameter("server_version"), Some("15.8"));
//! assert_eq!(done.cancel_key, Some((42, 7)));
//! assert_eq!(&input[..], b"N\0\0\0\x04");
//! # Ok::<(), ferry_postgres::client::LoginError>(())
//! ```

use bytes::{Bytes, BytesMut};

use super::DbError;
use crate::auth::{md5_password, AuthError, DerivedKeys, ScramClient, SCRAM_SHA_256};
use crate::backend::{self, Message, TxStatus};
use crate::frontend;
use crate::message::{encode_ssl_request, encode_startup, frame, FrameError, MessageError};

/// The longest backend message [`Login::handle_input`] reads during a login by default.
pub const DEFAULT_MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// Why a login failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginError {
    /// A server message's length was unacceptable.
    Frame(FrameError),
    /// A server message did not decode.
    Message(MessageError),
    /// The SCRAM exchange failed on our side: a malformed server message, or
    /// [`AuthError::BadServerSignature`] (the server does not know the password).
    Auth(AuthError),
    /// The server asked for a password and none was given.
    PasswordRequired,
    /// The server offered only SASL mechanisms other than SCRAM-SHA-256 (listed).
    UnsupportedMechanisms(String),
    /// The server asked for an authentication method not spoken here (its request code:
    /// 2 Kerberos, 7 GSSAPI, 9 SSPI...).
    UnsupportedMethod(i32),
    /// The server refused the login with this ErrorResponse.
    Server(Box<Refusal>),
    /// The server broke the protocol (the text says how).
    Protocol(&'static str),
    /// A message was given after the login ended.
    Finished,
    /// The server answered the SSLRequest `N`: it does not accept TLS (refused, as libpq's
    /// `sslmode=verify-full` does).
    TlsRefused,
    /// The server answered the SSLRequest with this byte, neither `S` nor `N`.
    SslResponse(u8),
    /// Bytes came after the server's `S`, before the TLS handshake: they are not protected
    /// by TLS (a man in the middle may have injected them), so the login is refused.
    DataAfterSslResponse,
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::Frame(e) => write!(f, "{e}"),
            LoginError::Message(e) => write!(f, "{e}"),
            LoginError::Auth(e) => write!(f, "authentication: {e}"),
            LoginError::PasswordRequired => f.write_str("the server asks for a password"),
            LoginError::UnsupportedMechanisms(m) => {
                write!(f, "no supported SASL mechanism offered: {m}")
            }
            LoginError::UnsupportedMethod(n) => {
                write!(f, "unsupported authentication request {n}")
            }
            LoginError::Server(r) => write!(f, "{}", r.error),
            LoginError::Protocol(m) => write!(f, "protocol violation: {m}"),
            LoginError::Finished => f.write_str("the login is over"),
            LoginError::TlsRefused => {
                f.write_str("the server does not accept TLS (it answered N to SSLRequest)")
            }
            LoginError::SslResponse(b) => {
                write!(
                    f,
                    "the server answered SSLRequest with byte 0x{b:02x}, not S or N"
                )
            }
            LoginError::DataAfterSslResponse => f.write_str(
                "the server sent data after accepting TLS, before the handshake (refused)",
            ),
        }
    }
}

impl std::error::Error for LoginError {}

/// The ErrorResponse that ended a login.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// What the server said.
    pub error: DbError,
    /// Every field as sent, `(code, value)` in order.
    fields: Vec<(u8, String)>,
}

impl Refusal {
    /// Every field as sent, `(code, value)` in order (`b'S'`, `b'V'`, `b'C'`, `b'M'`,
    /// `b'D'`, `b'F'`...).
    pub fn fields(&self) -> impl Iterator<Item = (u8, &str)> + '_ {
        self.fields.iter().map(|(c, v)| (*c, v.as_str()))
    }

    /// Appends the ErrorResponse as the server sent it (every field, in order).
    pub fn encode(&self, out: &mut BytesMut) {
        backend::error_response_fields(out, self.fields());
    }
}

/// A successful login: what the server said about the session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoggedIn {
    /// ParameterStatus values, in the order first reported (a later report of a name
    /// replaces its value).
    pub parameters: Vec<(String, String)>,
    /// BackendKeyData `(pid, secret)`, for a CancelRequest.
    pub cancel_key: Option<(i32, i32)>,
    /// The status of the first ReadyForQuery (`Idle` from a real server).
    pub tx_status: TxStatus,
    /// After a SCRAM login whose server proved the password: the keys it used, to give to
    /// the next login with the same password ([`Login::with_cached_keys`]).
    pub scram_keys: Option<DerivedKeys>,
}

impl LoggedIn {
    /// A parameter's value.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What one backend message did (see [`Login::handle_message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginEvent {
    /// The server reported a parameter (also kept for [`LoggedIn::parameters`]).
    Parameter {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// A NoticeResponse.
    Notice(DbError),
    /// Logged in (the ReadyForQuery came).
    Ready(LoggedIn),
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// SSLRequest sent: the server's one-byte answer expected.
    SslResponse,
    /// `S` read: the caller starts TLS, then calls [`Login::tls_started`].
    StartTls,
    /// Authentication requests expected.
    Auth,
    /// AuthenticationOk seen: parameters, key and ReadyForQuery expected.
    Starting,
    Done,
    Failed,
}

/// The frontend side of a login (see the [module docs](self)).
pub struct Login {
    user: String,
    password: Option<Vec<u8>>,
    nonce: Vec<u8>,
    cached: Option<DerivedKeys>,
    scram_username: bool,
    max_message: usize,
    phase: Phase,
    scram: Option<Box<ScramClient>>,
    scram_keys: Option<DerivedKeys>,
    out: BytesMut,
    /// With an SSLRequest: the StartupMessage, until TLS started.
    startup: Option<Bytes>,
    /// Nothing polled or handled yet ([`Login::with_ssl_request`] may still apply).
    fresh: bool,
    parameters: Vec<(String, String)>,
    cancel_key: Option<(i32, i32)>,
    error: Option<LoginError>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// A login as `user` to `database` (PostgreSQL defaults it to the user) with further
    /// startup `params`; `password` answers the server's password or SCRAM request;
    /// `nonce` is fresh randomness for SCRAM (at least
    /// [`MIN_NONCE_BYTES`](crate::auth::MIN_NONCE_BYTES) from a secure generator). The
    /// StartupMessage is queued at once.
    pub fn new(
        user: &str,
        database: Option<&str>,
        params: &[(&str, &str)],
        password: Option<&[u8]>,
        nonce: &[u8],
    ) -> Login {
        let mut out = BytesMut::new();
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(2 + params.len());
        all.push(("user", user));
        if let Some(db) = database {
            all.push(("database", db));
        }
        all.extend_from_slice(params);
        encode_startup(&mut out, &all);
        Login {
            user: user.to_owned(),
            password: password.map(<[u8]>::to_vec),
            nonce: nonce.to_vec(),
            cached: None,
            scram_username: false,
            max_message: DEFAULT_MAX_LOGIN_MESSAGE,
            phase: Phase::Auth,
            scram: None,
            scram_keys: None,
            out,
            startup: None,
            fresh: true,
            parameters: Vec::new(),
            cancel_key: None,
            error: None,
        }
    }

    /// Reuses SCRAM keys of an earlier login with the same password
    /// ([`LoggedIn::scram_keys`]): no PBKDF2 runs when the server's salt and iteration count
    /// are theirs (see [`ScramClient::with_cached_keys`]).
    pub fn with_cached_keys(mut self, keys: DerivedKeys) -> Login {
        self.cached = Some(keys);
        self
    }

    /// Sends the user name in the SCRAM client-first-message (`n=user`) instead of an empty
    /// one, as RFC 5802 servers other than PostgreSQL may want.
    pub fn with_scram_username(mut self) -> Login {
        self.scram_username = true;
        self
    }

    /// Asks for TLS first (see the [module docs](self#tls-sslrequest)): an SSLRequest is
    /// queued instead of the StartupMessage, which waits for [`tls_started`](Self::tls_started).
    /// Call it on a new login: once anything was polled or handled it changes nothing.
    pub fn with_ssl_request(mut self) -> Login {
        if self.fresh && self.phase == Phase::Auth {
            self.startup = Some(self.out.split().freeze());
            encode_ssl_request(&mut self.out);
            self.phase = Phase::SslResponse;
        }
        self
    }

    /// Whether the server accepted TLS (`S`) and the caller must start it now, then call
    /// [`tls_started`](Self::tls_started).
    pub fn wants_tls(&self) -> bool {
        self.phase == Phase::StartTls
    }

    /// The caller started TLS on the transport (after [`wants_tls`](Self::wants_tls)): the
    /// StartupMessage is queued, to go out inside TLS. Does nothing at any other time.
    pub fn tls_started(&mut self) {
        if self.phase == Phase::StartTls {
            if let Some(s) = self.startup.take() {
                self.out.extend_from_slice(&s);
            }
            self.phase = Phase::Auth;
        }
    }

    /// The longest message [`handle_input`](Self::handle_input) accepts.
    pub fn with_max_message(mut self, bytes: usize) -> Login {
        self.max_message = bytes;
        self
    }

    /// Whether the login ended (successfully or not).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }

    /// Whether AuthenticationOk came (the server accepted the credentials).
    pub fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Done)
    }

    /// Bytes to write to the server (the StartupMessage first, then authentication answers).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.fresh = false;
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Reads whole messages from `input` up to the ReadyForQuery that ends the login: `Some`
    /// then (bytes after it stay in `input`), `None` while more are needed. Parameter
    /// reports and notices are not returned one by one here (the parameters are in the
    /// outcome); use [`handle_message`](Self::handle_message) to see them.
    ///
    /// After [`with_ssl_request`](Self::with_ssl_request) it first reads the one-byte
    /// answer: `None` then, with [`wants_tls`](Self::wants_tls) set after an `S`.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<Option<LoggedIn>, LoginError> {
        self.fresh = false;
        loop {
            if let Some(e) = &self.error {
                return Err(e.clone());
            }
            match self.phase {
                Phase::Done => return Err(LoginError::Finished),
                Phase::SslResponse => {
                    return match ssl_response(input) {
                        Ok(true) => {
                            self.phase = Phase::StartTls;
                            Ok(None)
                        }
                        Ok(false) => Ok(None),
                        Err(e) => Err(self.fail(e)),
                    };
                }
                // Nothing may come before the handshake.
                Phase::StartTls if !input.is_empty() => {
                    return Err(self.fail(LoginError::DataAfterSslResponse))
                }
                Phase::StartTls => return Ok(None),
                _ => {}
            }
            let f = match frame(input, self.max_message) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(LoginError::Frame(e))),
            };
            let msg = input.split_to(f.len);
            if let Some(LoginEvent::Ready(done)) = self.handle_message(&msg)? {
                return Ok(Some(done));
            }
        }
    }

    /// One whole backend message (as delimited by [`crate::message::frame`]).
    /// During the SSLRequest exchange (before [`tls_started`](Self::tls_started)) a message
    /// is an error: the answer is one byte, for [`handle_input`](Self::handle_input).
    pub fn handle_message(&mut self, msg: &[u8]) -> Result<Option<LoginEvent>, LoginError> {
        self.fresh = false;
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.phase {
            Phase::Done => return Err(LoginError::Finished),
            Phase::SslResponse => {
                return Err(self.fail(LoginError::Protocol(
                    "a message where the one-byte SSLRequest answer was expected",
                )))
            }
            Phase::StartTls => return Err(self.fail(LoginError::DataAfterSslResponse)),
            _ => {}
        }
        match self.on_message(msg) {
            Ok(ev) => Ok(ev),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: LoginError) -> LoginError {
        self.phase = Phase::Failed;
        self.scram = None;
        self.startup = None;
        self.error = Some(e.clone());
        e
    }

    fn on_message(&mut self, msg: &[u8]) -> Result<Option<LoginEvent>, LoginError> {
        let m = backend::parse(msg).map_err(LoginError::Message)?;
        match m {
            Message::ErrorResponse(f) => Err(LoginError::Server(Box::new(Refusal {
                error: DbError::from_fields(&f),
                fields: f.iter().map(|(c, v)| (c, v.to_owned())).collect(),
            }))),
            Message::NoticeResponse(f) => Ok(Some(LoginEvent::Notice(DbError::from_fields(&f)))),
            Message::ParameterStatus { name, value } => {
                match self.parameters.iter_mut().find(|(k, _)| k == name) {
                    Some(p) => value.clone_into(&mut p.1),
                    None => self.parameters.push((name.to_owned(), value.to_owned())),
                }
                Ok(Some(LoginEvent::Parameter {
                    name: name.to_owned(),
                    value: value.to_owned(),
                }))
            }
            // We ask for 3.0 and no `_pq_.` options: nothing to adapt.
            Message::NegotiateProtocolVersion { .. } => Ok(None),
            m if self.phase == Phase::Auth => self.on_auth(m).map(|()| None),
            Message::BackendKeyData { pid, secret } => {
                self.cancel_key = Some((pid, secret));
                Ok(None)
            }
            Message::ReadyForQuery(tx_status) => {
                self.phase = Phase::Done;
                Ok(Some(LoginEvent::Ready(LoggedIn {
                    parameters: std::mem::take(&mut self.parameters),
                    cancel_key: self.cancel_key,
                    tx_status,
                    scram_keys: self.scram_keys.take(),
                })))
            }
            _ => Err(LoginError::Protocol("unexpected message during login")),
        }
    }

    fn password(&self) -> Result<&[u8], LoginError> {
        self.password.as_deref().ok_or(LoginError::PasswordRequired)
    }

    fn on_auth(&mut self, m: Message<'_>) -> Result<(), LoginError> {
        match m {
            Message::AuthenticationOk => {
                if let Some(s) = self.scram.take() {
                    if !s.is_authenticated() {
                        // The server skipped proving it knows the password.
                        return Err(LoginError::Protocol(
                            "AuthenticationOk before the SCRAM exchange completed",
                        ));
                    }
                    self.scram_keys = s.derived_keys().cloned();
                }
                self.phase = Phase::Starting;
            }
            Message::AuthenticationCleartextPassword => {
                let pw = self.password()?.to_vec();
                frontend::password(&mut self.out, &pw);
            }
            Message::AuthenticationMd5Password { salt } => {
                let pw = md5_password(self.user.as_bytes(), self.password()?, salt);
                frontend::password(&mut self.out, &pw);
            }
            Message::AuthenticationSasl { mechanisms } => {
                if self.scram.is_some() {
                    return Err(LoginError::Protocol("a second AuthenticationSASL"));
                }
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(LoginError::UnsupportedMechanisms(mechanisms.join(", ")));
                }
                let mut scram = ScramClient::new(self.password()?, &self.nonce);
                if let Some(keys) = self.cached.take() {
                    scram = scram.with_cached_keys(keys);
                }
                if self.scram_username {
                    scram = scram.with_username(&self.user);
                }
                frontend::sasl_initial_response(
                    &mut self.out,
                    SCRAM_SHA_256,
                    &scram.client_first(),
                );
                self.scram = Some(Box::new(scram));
            }
            Message::AuthenticationSaslContinue(data) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(LoginError::Protocol("SASL continue without SASL"))?;
                let reply = scram.handle_server_first(data).map_err(LoginError::Auth)?;
                frontend::sasl_response(&mut self.out, &reply);
            }
            Message::AuthenticationSaslFinal(data) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(LoginError::Protocol("SASL final without SASL"))?;
                scram.handle_server_final(data).map_err(LoginError::Auth)?;
            }
            Message::AuthenticationOther(n) => return Err(LoginError::UnsupportedMethod(n)),
            _ => {
                return Err(LoginError::Protocol(
                    "unexpected message during authentication",
                ))
            }
        }
        Ok(())
    }
}

/// Reads a server's one-byte answer to an SSLRequest, requiring TLS (libpq's
/// `sslmode=verify-full` semantics): `Ok(false)` while nothing came, `Ok(true)` once the
/// `S` was read and consumed (start TLS now; `input` is then empty). `N` is
/// [`LoginError::TlsRefused`], another byte [`LoginError::SslResponse`], and bytes after
/// the `S` [`LoginError::DataAfterSslResponse`] (nothing is consumed on an error). For
/// connections without a [`Login`], such as a CancelRequest's.
pub fn ssl_response(input: &mut BytesMut) -> Result<bool, LoginError> {
    match input.first() {
        None => Ok(false),
        Some(b'S') if input.len() > 1 => Err(LoginError::DataAfterSslResponse),
        Some(b'S') => {
            input.clear();
            Ok(true)
        }
        Some(b'N') => Err(LoginError::TlsRefused),
        Some(&b) => Err(LoginError::SslResponse(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    fn tls_login() -> Login {
        Login::new("app", Some("db"), &[], None, &[7; 18]).with_ssl_request()
    }

    fn input(b: &[u8]) -> BytesMut {
        BytesMut::from(b)
    }

    fn trusting_server() -> BytesMut {
        let mut b = BytesMut::new();
        backend::authentication_ok(&mut b);
        backend::backend_key_data(&mut b, 1, 2);
        backend::ready_for_query(&mut b, TxStatus::Idle);
        b
    }

    /// `S`: TLS starts, and only then does the StartupMessage go out; the login goes on.
    #[test]
    fn s_starts_tls_then_the_startup_message() {
        let mut l = tls_login();
        assert_eq!(l.poll_transmit().as_deref(), Some(&SSL_REQUEST[..]));
        assert!(l.poll_transmit().is_none());
        let mut i = BytesMut::new();
        assert_eq!(l.handle_input(&mut i), Ok(None), "nothing yet");
        assert!(!l.wants_tls());
        let mut i = input(b"S");
        assert_eq!(l.handle_input(&mut i), Ok(None));
        assert!(i.is_empty(), "the answer is consumed");
        assert!(l.wants_tls() && !l.is_finished());
        assert!(l.poll_transmit().is_none(), "nothing before the handshake");
        assert_eq!(l.handle_input(&mut BytesMut::new()), Ok(None));
        l.tls_started();
        assert!(!l.wants_tls());
        let startup = l.poll_transmit().expect("the StartupMessage");
        assert_eq!(&startup[4..8], &[0, 3, 0, 0]);
        let mut plain = Login::new("app", Some("db"), &[], None, &[7; 18]);
        assert_eq!(
            Some(startup),
            plain.poll_transmit(),
            "the same as without TLS"
        );
        l.tls_started(); // again: nothing
        assert!(l.poll_transmit().is_none());
        let done = l.handle_input(&mut trusting_server()).unwrap().unwrap();
        assert_eq!(done.cancel_key, Some((1, 2)));
    }

    /// `N`: refused (verify-full), final, nothing more sent.
    #[test]
    fn n_is_refused() {
        let mut l = tls_login();
        let _ = l.poll_transmit();
        let mut i = input(b"N");
        assert_eq!(l.handle_input(&mut i), Err(LoginError::TlsRefused));
        assert!(l.is_finished() && !l.wants_tls());
        assert!(l.poll_transmit().is_none());
        assert_eq!(
            l.handle_input(&mut trusting_server()),
            Err(LoginError::TlsRefused)
        );
        l.tls_started();
        assert!(l.poll_transmit().is_none(), "no StartupMessage in clear");
    }

    /// Bytes after the `S`, in the same read or a later one before TLS started: refused.
    #[test]
    fn bytes_after_s_are_refused() {
        for extra in [&b"S\x16\x03\x03"[..], b"SS", b"SN", b"S\0"] {
            let mut l = tls_login();
            let _ = l.poll_transmit();
            let mut i = input(extra);
            assert_eq!(
                l.handle_input(&mut i),
                Err(LoginError::DataAfterSslResponse),
                "{extra:?}"
            );
            assert!(l.is_finished() && !l.wants_tls());
            l.tls_started();
            assert!(l.poll_transmit().is_none());
        }
        let mut l = tls_login();
        assert_eq!(l.handle_input(&mut input(b"S")), Ok(None));
        let mut later = trusting_server();
        assert_eq!(
            l.handle_input(&mut later),
            Err(LoginError::DataAfterSslResponse)
        );
        assert!(l.is_finished());
        // A whole message handed in before TLS started: the same.
        let mut l = tls_login();
        assert_eq!(l.handle_input(&mut input(b"S")), Ok(None));
        assert_eq!(
            l.handle_message(&trusting_server()[..9]),
            Err(LoginError::DataAfterSslResponse)
        );
    }

    /// Anything but `S` or `N` (an old server's ErrorResponse, garbage): refused.
    #[test]
    fn other_answers_are_refused() {
        for (answer, byte) in [
            (&b"E\0\0\0\x08S"[..], b'E'),
            (b"\0", 0),
            (b"s", b's'),
            (b"\x16\x03\x01", 0x16),
        ] {
            let mut l = tls_login();
            assert_eq!(
                l.handle_input(&mut input(answer)),
                Err(LoginError::SslResponse(byte)),
                "{answer:?}"
            );
            assert!(l.is_finished());
        }
        let mut l = tls_login();
        assert!(matches!(
            l.handle_message(&trusting_server()[..9]),
            Err(LoginError::Protocol(_))
        ));
    }

    /// The helper for connections without a login (CancelRequest).
    #[test]
    fn ssl_response_reads_exactly_one_byte() {
        let mut i = BytesMut::new();
        assert_eq!(ssl_response(&mut i), Ok(false));
        let mut i = input(b"S");
        assert_eq!(ssl_response(&mut i), Ok(true));
        assert!(i.is_empty());
        let mut i = input(b"Sx");
        assert_eq!(ssl_response(&mut i), Err(LoginError::DataAfterSslResponse));
        assert_eq!(&i[..], b"Sx", "nothing consumed on an error");
        assert_eq!(ssl_response(&mut input(b"N")), Err(LoginError::TlsRefused));
        assert_eq!(
            ssl_response(&mut input(b"Q")),
            Err(LoginError::SslResponse(b'Q'))
        );
    }

    /// Asked for too late (the StartupMessage was taken): nothing changes.
    #[test]
    fn ssl_request_only_on_a_fresh_login() {
        let mut l = Login::new("app", None, &[], None, &[7; 18]);
        let startup = l.poll_transmit().unwrap();
        assert_eq!(&startup[4..8], &[0, 3, 0, 0]);
        let mut l = l.with_ssl_request();
        assert!(l.poll_transmit().is_none());
        assert!(l.handle_input(&mut trusting_server()).unwrap().is_some());
    }
}
