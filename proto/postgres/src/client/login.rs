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
use crate::message::{encode_startup, frame, FrameError, MessageError};

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
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Reads whole messages from `input` up to the ReadyForQuery that ends the login: `Some`
    /// then (bytes after it stay in `input`), `None` while more are needed. Parameter
    /// reports and notices are not returned one by one here (the parameters are in the
    /// outcome); use [`handle_message`](Self::handle_message) to see them.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<Option<LoggedIn>, LoginError> {
        loop {
            if let Some(e) = &self.error {
                return Err(e.clone());
            }
            if self.phase == Phase::Done {
                return Err(LoginError::Finished);
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
    pub fn handle_message(&mut self, msg: &[u8]) -> Result<Option<LoginEvent>, LoginError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.phase == Phase::Done {
            return Err(LoginError::Finished);
        }
        match self.on_message(msg) {
            Ok(ev) => Ok(ev),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: LoginError) -> LoginError {
        self.phase = Phase::Failed;
        self.scram = None;
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
