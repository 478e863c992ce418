//! The backend side of a login, sans-IO: what a PostgreSQL server (or a pooler standing in
//! for one) does with a new connection's first packets.
//!
//! [`Login`] reads the startup-phase packets and the authentication messages from the
//! caller's buffer ([`Login::handle_input`]) and tells the caller what needs deciding with an
//! [`Event`]; its answers to the client come out of [`Login::poll_transmit`].
//!
//! ```text
//! client                                   Login                          caller
//! SSLRequest ───────────────────────────>  Event::SslRequested  ───────>  answer_ssl(false)
//!            <─────────────────────────── 'N'   ('S' with answer_ssl(true): start TLS)
//! GSSENCRequest ────────────────────────>  'N' (no event)
//! StartupMessage ───────────────────────>  checks; NegotiateProtocolVersion if needed
//!                                          Event::Startup(params) ───>  authenticate(..)
//!            <─────────────────────────── AuthenticationSASL [SCRAM-SHA-256]
//! SASLInitialResponse / SASLResponse ───>  AuthenticationSASLContinue, ..SASLFinal
//!                                          Event::Authenticated ─────>  greet(..)
//! ```
//!
//! Every refusal is a FATAL ErrorResponse with PostgreSQL 15's own SQLSTATE and text
//! ([`LoginError::code`], [`LoginError::message`]), queued for the client, then
//! [`Event::Failed`]: the caller writes the output and closes. A CancelRequest ends the login
//! with [`Event::Cancel`] (nothing is sent back, as PostgreSQL does).
//!
//! After [`Event::Authenticated`] the caller sends AuthenticationOk, its ParameterStatus set,
//! BackendKeyData and ReadyForQuery, all of which [`greet`] writes.
//!
//! ```
//! use bytes::BytesMut;
//! use ferry_postgres::message::encode_startup;
//! use ferry_postgres::server::{Auth, Event, Login};
//!
//! let mut login = Login::new();
//! let mut input = BytesMut::new();
//! encode_startup(&mut input, &[("user", "alice"), ("application_name", "psql")]);
//! let Some(Event::Startup(s)) = login.handle_input(&mut input) else { panic!() };
//! assert_eq!((s.user.as_str(), s.database.as_str()), ("alice", "alice"));
//! login.authenticate(Auth::Trust);
//! assert_eq!(login.handle_input(&mut input), Some(Event::Authenticated));
//! let mut out = BytesMut::new();
//! ferry_postgres::server::greet(&mut out, [("server_version", "15.8")], Some((1, 2)));
//! ```
//!
//! Caller duties: after `answer_ssl(true)` it MUST start TLS before it reads anything more
//! from the socket, and MUST refuse plaintext bytes already buffered behind the SSLRequest
//! (PostgreSQL closes with `received unencrypted data after SSL request`).

use bytes::{Bytes, BytesMut};

use crate::auth::{AuthError, ScramServer, SCRAM_SHA_256};
use crate::backend::{self, sqlstate, TxStatus};
use crate::frontend;
use crate::message::{frame, parse_startup, startup_frame, MessageError, Startup as Packet};

/// PostgreSQL's limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// PostgreSQL's limit on an authentication message (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub const MAX_AUTH_MESSAGE: usize = 65_535;

/// A valid StartupMessage, as the caller needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartupParams {
    /// The role (`user`), never empty.
    pub user: String,
    /// The database (`database`; the user when missing or empty, as PostgreSQL does).
    pub database: String,
    /// Every other parameter in the order sent (`application_name`, `options`,
    /// `client_encoding`...), without `user`, `database`, `replication` and `_pq_.*`.
    pub params: Vec<(String, String)>,
    /// The minor protocol version asked for (3.x).
    pub minor: u16,
    /// Protocol options (`_pq_.*`) asked for; none is known, so each was listed in the
    /// NegotiateProtocolVersion sent.
    pub unrecognized: Vec<String>,
}

impl StartupParams {
    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the client authenticates (the caller's answer to [`Event::Startup`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Auth {
    /// No password asked: [`Event::Authenticated`] at once.
    Trust,
    /// SCRAM-SHA-256 against this verifier (and server nonce).
    Scram(Box<ScramServer>),
    /// The SCRAM exchange runs as for [`Auth::Scram`] but ends as a wrong password would,
    /// whatever the proof: for a role that may not log in, without revealing it (use
    /// [`ScramSecret::mock`](crate::auth::ScramSecret::mock) for unknown roles, as
    /// PostgreSQL does, or the secret of another role).
    ScramRefused(Box<ScramServer>),
}

/// Why a login failed; the FATAL sent says the same.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginError {
    /// A startup packet's length is below 8 or above [`MAX_STARTUP_PACKET`].
    StartupLength,
    /// A startup packet does not decode.
    StartupLayout(MessageError),
    /// Not protocol 3 (or a second SSLRequest / GSSENCRequest).
    UnsupportedProtocol {
        /// Major version asked for.
        major: u16,
        /// Minor version asked for.
        minor: u16,
    },
    /// No `user` in the StartupMessage.
    NoUser,
    /// A replication connection (`replication` not false).
    Replication,
    /// An authentication message too long (over [`MAX_AUTH_MESSAGE`]).
    MessageLength,
    /// Not a SASL message where one is expected (the message type).
    ExpectedSasl(u8),
    /// A SASL message that does not decode.
    MessageFormat,
    /// The client chose another mechanism than SCRAM-SHA-256.
    Mechanism,
    /// The SCRAM exchange failed before the proof (malformed message, channel binding,
    /// nonce...).
    Scram(AuthError),
    /// Wrong password (or [`Auth::ScramRefused`]).
    Password,
    /// The caller refused the login ([`Login::refuse`]).
    Refused {
        /// SQLSTATE.
        code: &'static str,
        /// Message.
        message: String,
    },
    /// The client closed the connection during the login (nothing is sent).
    Eof,
}

impl LoginError {
    /// The SQLSTATE sent.
    pub fn code(&self) -> &'static str {
        match self {
            LoginError::NoUser => sqlstate::INVALID_AUTHORIZATION,
            LoginError::UnsupportedProtocol { .. } | LoginError::Replication => {
                sqlstate::FEATURE_NOT_SUPPORTED
            }
            LoginError::Scram(AuthError::Unsupported(_)) => sqlstate::FEATURE_NOT_SUPPORTED,
            LoginError::Password => sqlstate::INVALID_PASSWORD,
            LoginError::Refused { code, .. } => code,
            LoginError::Eof => sqlstate::CONNECTION_FAILURE,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }

    /// The message sent, as PostgreSQL 15 words it (`user`: the role, for 28P01).
    pub fn message(&self, user: &str) -> String {
        match self {
            LoginError::StartupLength => "invalid length of startup packet".into(),
            LoginError::StartupLayout(_) => {
                "invalid startup packet layout: expected terminator as last byte".into()
            }
            LoginError::UnsupportedProtocol { major, minor } => {
                format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")
            }
            LoginError::NoUser => "no PostgreSQL user name specified in startup packet".into(),
            LoginError::Replication => "replication connections are not supported".into(),
            LoginError::MessageLength => "invalid message length".into(),
            LoginError::ExpectedSasl(t) => {
                format!("expected SASL response, got message type {t}")
            }
            LoginError::MessageFormat => "invalid message format".into(),
            LoginError::Mechanism => {
                "client selected an invalid SASL authentication mechanism".into()
            }
            LoginError::Scram(AuthError::Unsupported(what)) if what.contains("a=") => {
                "client uses authorization identity, but it is not supported".into()
            }
            LoginError::Scram(AuthError::Unsupported(_)) => {
                "client requires an unsupported SCRAM extension".into()
            }
            LoginError::Scram(AuthError::NonceMismatch) => "invalid SCRAM response".into(),
            LoginError::Scram(_) => "malformed SCRAM message".into(),
            LoginError::Password => format!("password authentication failed for user \"{user}\""),
            LoginError::Refused { message, .. } => message.clone(),
            LoginError::Eof => "the client closed the connection".into(),
        }
    }

    /// The detail sent, if any.
    fn detail(&self) -> Option<&'static str> {
        match self {
            LoginError::Scram(AuthError::NonceMismatch) => Some("Nonce does not match."),
            LoginError::Scram(AuthError::ChannelBindingUnsupported) => Some(
                "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.",
            ),
            LoginError::Scram(AuthError::Malformed(what)) => Some(what),
            _ => None,
        }
    }
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message("?"), self.code())
    }
}

impl std::error::Error for LoginError {}

/// What the caller must know or decide.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An SSLRequest: answer with [`Login::answer_ssl`] before feeding more input.
    SslRequested,
    /// A CancelRequest: the login is over; act on the key and close.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
    /// A valid StartupMessage: answer with [`Login::authenticate`] or [`Login::refuse`].
    Startup(StartupParams),
    /// The client authenticated; the caller greets it ([`greet`]).
    Authenticated,
    /// The login failed; the FATAL (if any) is queued: write it and close.
    Failed(LoginError),
}

#[derive(Debug)]
enum State {
    /// Reading startup-phase packets.
    Startup {
        ssl_done: bool,
        gss_done: bool,
    },
    /// Told the caller of an SSLRequest; waiting for `answer_ssl`.
    SslAsked {
        gss_done: bool,
    },
    /// Told the caller of the StartupMessage; waiting for `authenticate` or `refuse`.
    StartupAsked,
    /// Trusted: `Authenticated` is next.
    Trusted,
    /// SCRAM: waiting for SASLInitialResponse (`None`) or SASLResponse.
    Sasl {
        server: Box<ScramServer>,
        refuse: bool,
        started: bool,
    },
    Done,
    /// Failed; the event still to give (once).
    Failed(Option<LoginError>),
}

/// The backend side of a login (see the [module docs](self)).
#[derive(Debug)]
pub struct Login {
    state: State,
    user: String,
    allow_replication: bool,
    out: BytesMut,
}

impl Default for Login {
    fn default() -> Self {
        Login::new()
    }
}

impl Login {
    /// A login waiting for the client's first packet. Replication connections are refused.
    pub fn new() -> Login {
        Login {
            state: State::Startup {
                ssl_done: false,
                gss_done: false,
            },
            user: String::new(),
            allow_replication: false,
            out: BytesMut::new(),
        }
    }

    /// Lets `replication=true|database` connections through (the parameter is then in
    /// [`StartupParams::params`]).
    pub fn allow_replication(mut self) -> Login {
        self.allow_replication = true;
        self
    }

    /// Whether the login ended (authenticated, cancelled or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed(_))
    }

    /// The role of the StartupMessage (empty before it).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Bytes to write to the client.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Answers the SSLRequest: `S` (`accept`: the caller starts TLS once it is written,
    /// and feeds decrypted bytes from then on) or `N` (the client goes on in the clear).
    /// Ignored when no SSLRequest is waiting for an answer.
    pub fn answer_ssl(&mut self, accept: bool) {
        if let State::SslAsked { gss_done } = self.state {
            self.out.extend_from_slice(if accept { b"S" } else { b"N" });
            self.state = State::Startup {
                ssl_done: true,
                gss_done,
            };
        }
    }

    /// Answers the StartupMessage: how the client authenticates. Ignored when no
    /// StartupMessage is waiting for an answer.
    pub fn authenticate(&mut self, auth: Auth) {
        if !matches!(self.state, State::StartupAsked) {
            return;
        }
        self.state = match auth {
            Auth::Trust => State::Trusted,
            Auth::Scram(server) => self.sasl(server, false),
            Auth::ScramRefused(server) => self.sasl(server, true),
        };
    }

    fn sasl(&mut self, server: Box<ScramServer>, refuse: bool) -> State {
        backend::authentication_sasl(&mut self.out, &[SCRAM_SHA_256]);
        State::Sasl {
            server,
            refuse,
            started: false,
        }
    }

    /// Refuses the StartupMessage with a FATAL of the caller's (too many connections, no
    /// such database...): [`Event::Failed`] comes next. Ignored when no StartupMessage is
    /// waiting for an answer.
    pub fn refuse(&mut self, code: &'static str, message: impl Into<String>) {
        if matches!(self.state, State::StartupAsked) {
            let e = LoginError::Refused {
                code,
                message: message.into(),
            };
            self.fail(e);
        }
    }

    /// The client closed its side: the login fails ([`LoginError::Eof`], nothing sent).
    pub fn handle_eof(&mut self) {
        if !self.is_finished() {
            self.state = State::Failed(Some(LoginError::Eof));
        }
    }

    /// Reads packets from `input` until something needs the caller: the next [`Event`], or
    /// `None` when more bytes are needed (or an answer to the last event is due). Consumes
    /// only what it acted on: after the login the rest stays in `input` (messages the
    /// client pipelined behind its login). [`Event::Authenticated`], [`Event::Cancel`] and
    /// [`Event::Failed`] end the login and come once; later calls return `None`.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Option<Event> {
        loop {
            match &mut self.state {
                State::Startup { ssl_done, gss_done } => {
                    let (ssl_done, gss_done) = (*ssl_done, *gss_done);
                    if let Some(ev) = self.startup(input, ssl_done, gss_done)? {
                        return Some(ev);
                    }
                }
                State::SslAsked { .. } | State::StartupAsked | State::Done => return None,
                State::Trusted => {
                    self.state = State::Done;
                    return Some(Event::Authenticated);
                }
                State::Sasl { .. } => {
                    if let Some(ev) = self.sasl_message(input)? {
                        return Some(ev);
                    }
                }
                State::Failed(e) => return e.take().map(Event::Failed),
            }
        }
    }

    fn fail(&mut self, e: LoginError) {
        let mut fields = vec![
            (b'S', "FATAL".to_string()),
            (b'V', "FATAL".to_string()),
            (b'C', e.code().to_string()),
            (b'M', e.message(&self.user)),
        ];
        if let Some(d) = e.detail() {
            fields.push((b'D', d.to_string()));
        }
        backend::error_response_fields(&mut self.out, fields.iter().map(|(c, v)| (*c, v.as_str())));
        self.state = State::Failed(Some(e));
    }

    /// One startup-phase packet: `None` for more bytes, `Some(None)` to go on.
    fn startup(
        &mut self,
        input: &mut BytesMut,
        ssl_done: bool,
        gss_done: bool,
    ) -> Option<Option<Event>> {
        let len = match startup_frame(input, MAX_STARTUP_PACKET) {
            Ok(Some(n)) => n,
            Ok(None) => return None,
            Err(_) => {
                self.fail(LoginError::StartupLength);
                return Some(None);
            }
        };
        let packet = input.split_to(len);
        let parsed = match parse_startup(&packet) {
            Ok(p) => p,
            Err(MessageError::UnsupportedVersion { major, minor }) => {
                self.fail(LoginError::UnsupportedProtocol { major, minor });
                return Some(None);
            }
            Err(e) => {
                self.fail(LoginError::StartupLayout(e));
                return Some(None);
            }
        };
        let again = |code: u32| LoginError::UnsupportedProtocol {
            major: (code >> 16) as u16,
            minor: code as u16,
        };
        match parsed {
            Packet::SslRequest if ssl_done => self.fail(again(80877103)),
            Packet::GssEncRequest if gss_done => self.fail(again(80877104)),
            Packet::SslRequest => {
                self.state = State::SslAsked { gss_done };
                return Some(Some(Event::SslRequested));
            }
            Packet::GssEncRequest => {
                self.out.extend_from_slice(b"N");
                self.state = State::Startup {
                    ssl_done,
                    gss_done: true,
                };
            }
            Packet::Cancel { pid, secret } => {
                self.state = State::Done;
                return Some(Some(Event::Cancel { pid, secret }));
            }
            Packet::Startup { params, minor } => {
                let mut user = None;
                let mut database = None;
                let mut rest = Vec::new();
                let mut unrecognized = Vec::new();
                for (k, v) in params.iter() {
                    match k {
                        "user" => user = Some(v),
                        "database" => database = Some(v),
                        // `replication=false|off|no|0` is a normal connection.
                        "replication" if matches!(v, "false" | "off" | "no" | "0") => {}
                        "replication" if !self.allow_replication => {
                            self.fail(LoginError::Replication);
                            return Some(None);
                        }
                        k if k.starts_with("_pq_.") => unrecognized.push(k.to_owned()),
                        k => rest.push((k.to_owned(), v.to_owned())),
                    }
                }
                let Some(user) = user.filter(|u| !u.is_empty()) else {
                    self.fail(LoginError::NoUser);
                    return Some(None);
                };
                let database = database.filter(|d| !d.is_empty()).unwrap_or(user);
                self.user = user.to_owned();
                if minor > 0 || !unrecognized.is_empty() {
                    // As PostgreSQL, before authentication: the newest minor we speak (0)
                    // and the options we ignore.
                    backend::negotiate_protocol_version(
                        &mut self.out,
                        0,
                        unrecognized.iter().map(String::as_str),
                    );
                }
                self.state = State::StartupAsked;
                return Some(Some(Event::Startup(StartupParams {
                    user: user.to_owned(),
                    database: database.to_owned(),
                    params: rest,
                    minor,
                    unrecognized,
                })));
            }
        }
        Some(None)
    }

    /// One SASL message: `None` for more bytes, `Some(None)` to go on.
    fn sasl_message(&mut self, input: &mut BytesMut) -> Option<Option<Event>> {
        let f = match frame(input, MAX_AUTH_MESSAGE) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(_) => {
                self.fail(LoginError::MessageLength);
                return Some(None);
            }
        };
        let msg = input.split_to(f.len);
        if f.tag != b'p' {
            self.fail(LoginError::ExpectedSasl(f.tag));
            return Some(None);
        }
        let body = &msg[5..];
        let State::Sasl {
            server,
            refuse,
            started,
        } = &mut self.state
        else {
            return Some(None);
        };
        let refuse = *refuse;
        if !*started {
            *started = true;
            let (mech, data) = match frontend::parse_sasl_initial(body) {
                Ok(x) => x,
                Err(_) => {
                    self.fail(LoginError::MessageFormat);
                    return Some(None);
                }
            };
            if mech != SCRAM_SHA_256 {
                self.fail(LoginError::Mechanism);
                return Some(None);
            }
            let Some(data) = data else {
                self.fail(LoginError::Scram(AuthError::Malformed(
                    "The message is empty.",
                )));
                return Some(None);
            };
            match server.handle_client_first(data) {
                Ok(first) => backend::authentication_sasl_continue(&mut self.out, &first),
                Err(e) => self.fail(LoginError::Scram(e)),
            }
            return Some(None);
        }
        match server.handle_client_final(body) {
            Ok(fin) if !refuse => {
                backend::authentication_sasl_final(&mut self.out, &fin);
                self.state = State::Done;
                Some(Some(Event::Authenticated))
            }
            Ok(_) | Err(AuthError::WrongPassword) => {
                self.fail(LoginError::Password);
                Some(None)
            }
            Err(e) => {
                self.fail(LoginError::Scram(e));
                Some(None)
            }
        }
    }
}

/// Writes what follows a successful authentication: AuthenticationOk, a ParameterStatus
/// per parameter, BackendKeyData (when given) and ReadyForQuery (idle).
pub fn greet<'a>(
    out: &mut BytesMut,
    parameters: impl IntoIterator<Item = (&'a str, &'a str)>,
    cancel_key: Option<(i32, i32)>,
) {
    backend::authentication_ok(out);
    for (k, v) in parameters {
        backend::parameter_status(out, k, v);
    }
    if let Some((pid, secret)) = cancel_key {
        backend::backend_key_data(out, pid, secret);
    }
    backend::ready_for_query(out, TxStatus::Idle);
}
