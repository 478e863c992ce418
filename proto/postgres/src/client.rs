//! A sans-IO PostgreSQL client connection: startup, authentication (SCRAM-SHA-256, MD5,
//! cleartext), simple and extended queries, pipelined.
//!
//! [`ClientConnection`] writes the StartupMessage when created; feed it what the socket
//! reads ([`handle_input`](ClientConnection::handle_input)), write what
//! [`poll_transmit`](ClientConnection::poll_transmit) gives, and read
//! [`Event`]s. Queries may be issued at once: they wait until the login is done, then go out
//! back to back (pipelining); each one's results end with [`Event::Done`].
//!
//! Rows arrive as [`Row`]s holding the DataRow message itself (one `Bytes` slice of the
//! input, no copy per column), values in the text format.
//!
//! The login alone is [`Login`] (see [`login`]): the connection runs one until the first
//! ReadyForQuery, and a pooler can run it for its server connections (`ferry proxy` does).
//!
//! Not covered: COPY (a COPY statement's CopyIn/CopyOut answer fails the connection), TLS
//! (wrap the socket yourself and speak this over it: PostgreSQL's SSLRequest is the
//! caller's, see [`crate::message::encode_ssl_request`]), GSSAPI, SCRAM channel binding.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_proto::{Connection, ErrorKind, Instant, ProtoError, ProtocolInfo, State};

use crate::auth::AuthError;
use crate::backend::{self, Fields, Message, TxStatus};
use crate::frontend;
use crate::message::{frame, FrameError, MessageError, Reader};

pub mod login;
pub use login::{LoggedIn, Login, LoginError, LoginEvent, Refusal, DEFAULT_MAX_LOGIN_MESSAGE};

/// Protocol metadata.
pub static POSTGRES_INFO: ProtocolInfo = ProtocolInfo {
    name: "PostgreSQL",
    default_port: 5432,
    binary: true,
    streaming: true,
    tls: ferry_proto::TlsRequirement::Optional,
    multiplexing: ferry_proto::Multiplexing::None,
};

/// Who to log in as, and limits.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Role name.
    pub user: String,
    /// Database (PostgreSQL defaults it to the user name).
    pub database: Option<String>,
    /// Password, if the server asks for one.
    pub password: Option<Vec<u8>>,
    /// Other startup parameters (`application_name`, `client_encoding`, `options`...).
    pub params: Vec<(String, String)>,
    /// Longest server message accepted (a DataRow holds a whole row) [default: 64 MiB].
    pub max_message_bytes: usize,
    /// Most queries issued and not yet done [default: 1024].
    pub max_pending: usize,
    /// Most events held before reading stops (backpressure) [default: 4096].
    pub max_events: usize,
}

impl ClientConfig {
    /// Defaults for `user`.
    pub fn new(user: impl Into<String>) -> ClientConfig {
        ClientConfig {
            user: user.into(),
            database: None,
            password: None,
            params: Vec::new(),
            max_message_bytes: 64 << 20,
            max_pending: 1024,
            max_events: 4096,
        }
    }

    /// Sets the database.
    pub fn database(mut self, db: impl Into<String>) -> ClientConfig {
        self.database = Some(db.into());
        self
    }

    /// Sets the password.
    pub fn password(mut self, pw: impl Into<Vec<u8>>) -> ClientConfig {
        self.password = Some(pw.into());
        self
    }

    /// Adds a startup parameter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> ClientConfig {
        self.params.push((name.into(), value.into()));
        self
    }
}

/// Names a query issued on a connection (in issue order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryId(pub u64);

/// An error or notice the server sent, with its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbError {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`...
    pub severity: String,
    /// SQLSTATE (e.g. `42P01`).
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Detail, if any.
    pub detail: Option<String>,
    /// Hint, if any.
    pub hint: Option<String>,
}

impl DbError {
    /// The error or notice these fields describe.
    pub fn from_fields(f: &Fields<'_>) -> DbError {
        DbError {
            severity: f.severity().to_owned(),
            code: f.code().to_owned(),
            message: f.message().to_owned(),
            detail: f.get(b'D').map(str::to_owned),
            hint: f.get(b'H').map(str::to_owned),
        }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.severity, self.message, self.code)
    }
}

/// A column of a result (RowDescription).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type OID (`pg_type.oid`: 23 int4, 25 text...).
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// One row (DataRow): values are slices of the message, `None` for NULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    msg: Bytes,
    /// (start, len) per column in `msg`; len `u32::MAX` is NULL.
    cols: Vec<(u32, u32)>,
}

impl Row {
    fn parse(msg: Bytes) -> Result<Row, MessageError> {
        let mut r = Reader::new(&msg[5..]);
        let n = r.i16()?;
        if n < 0 {
            return Err(MessageError::Invalid("negative column count"));
        }
        let mut cols = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let len = r.i32()?;
            let start = (msg.len() - r.buf.len()) as u32;
            if len == -1 {
                cols.push((start, u32::MAX));
            } else if len < 0 {
                return Err(MessageError::Invalid("negative value length"));
            } else {
                r.take(len as usize)?;
                cols.push((start, len as u32));
            }
        }
        r.end()?;
        Ok(Row { msg, cols })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// Column `i`'s raw value (`None`: NULL or no such column).
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let &(start, len) = self.cols.get(i)?;
        (len != u32::MAX).then(|| &self.msg[start as usize..(start + len) as usize])
    }

    /// Column `i` as text (`None`: NULL, no such column, or not UTF-8).
    pub fn text(&self, i: usize) -> Option<&str> {
        std::str::from_utf8(self.get(i)?).ok()
    }
}

/// What the connection tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Logged in: the server's parameters and key are known, queries go out.
    Ready,
    /// The columns of the rows that follow (RowDescription).
    Columns {
        /// The query.
        id: QueryId,
        /// Its columns.
        columns: Vec<Column>,
    },
    /// A row.
    Row {
        /// The query.
        id: QueryId,
        /// Its values.
        row: Row,
    },
    /// A statement finished (CommandComplete), e.g. `SELECT 3`, `INSERT 0 1`.
    Complete {
        /// The query.
        id: QueryId,
        /// The command tag.
        tag: String,
    },
    /// The query string was empty.
    EmptyQuery {
        /// The query.
        id: QueryId,
    },
    /// The query failed; its remaining statements were skipped. [`Event::Done`] follows.
    Error {
        /// The query.
        id: QueryId,
        /// What the server said.
        error: DbError,
    },
    /// The query is over (ReadyForQuery): `status` says whether a transaction is open.
    Done {
        /// The query.
        id: QueryId,
        /// Transaction status after it.
        status: TxStatus,
    },
    /// A notice (not an error).
    Notice(DbError),
    /// A NOTIFY on a channel this session LISTENs on.
    Notification {
        /// Notifying backend's pid.
        pid: i32,
        /// Channel.
        channel: String,
        /// Payload.
        payload: String,
    },
    /// A run-time parameter changed (or was reported at login).
    ParameterStatus {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// The connection is over: with the reason unless it was closed cleanly; queries not
    /// [`Done`](Event::Done) were not answered (they may or may not have run).
    Closed(Option<ClientError>),
}

/// Why a client connection failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// A server message's length was unacceptable.
    Frame(FrameError),
    /// A server message did not decode.
    Message(MessageError),
    /// Authentication failed on our side (bad SCRAM proof from the server...).
    Auth(AuthError),
    /// The server asked for a password and none is configured.
    PasswordRequired,
    /// The server asked for an authentication method we do not speak.
    UnsupportedAuth(String),
    /// The server sent a FATAL error (during login: wrong password, no such database...).
    Server(DbError),
    /// The server broke the protocol (the text says how).
    Protocol(&'static str),
    /// The server closed the connection.
    Eof,
    /// The connection is closed or closing.
    Closed,
    /// `max_pending` queries are already waiting.
    TooManyPending,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Frame(e) => write!(f, "{e}"),
            ClientError::Message(e) => write!(f, "{e}"),
            ClientError::Auth(e) => write!(f, "authentication: {e}"),
            ClientError::PasswordRequired => f.write_str("the server asks for a password"),
            ClientError::UnsupportedAuth(m) => write!(f, "unsupported authentication: {m}"),
            ClientError::Server(e) => write!(f, "{e}"),
            ClientError::Protocol(m) => write!(f, "protocol violation: {m}"),
            ClientError::Eof => f.write_str("server closed the connection"),
            ClientError::Closed => f.write_str("connection closed"),
            ClientError::TooManyPending => f.write_str("too many queries pending"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<LoginError> for ClientError {
    fn from(e: LoginError) -> ClientError {
        match e {
            LoginError::Frame(e) => ClientError::Frame(e),
            LoginError::Message(e) => ClientError::Message(e),
            LoginError::Auth(e) => ClientError::Auth(e),
            LoginError::PasswordRequired => ClientError::PasswordRequired,
            LoginError::UnsupportedMechanisms(m) => ClientError::UnsupportedAuth(m),
            LoginError::UnsupportedMethod(n) => {
                ClientError::UnsupportedAuth(format!("request {n}"))
            }
            LoginError::Server(r) => ClientError::Server(r.error),
            LoginError::Protocol(m) => ClientError::Protocol(m),
            LoginError::Finished => ClientError::Closed,
        }
    }
}

impl ProtoError for ClientError {
    fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Frame(_) | ClientError::TooManyPending => ErrorKind::LimitExceeded,
            ClientError::Message(_) | ClientError::Protocol(_) => ErrorKind::Malformed,
            ClientError::UnsupportedAuth(_) => ErrorKind::Unsupported,
            ClientError::Auth(_) | ClientError::PasswordRequired | ClientError::Server(_) => {
                ErrorKind::InvalidState
            }
            ClientError::Eof | ClientError::Closed => ErrorKind::Closed,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Startup sent; the [`Login`] runs until ReadyForQuery.
    Login,
    Ready,
    Closing,
    Closed,
}

/// A sans-IO PostgreSQL client connection (see the [module docs](self)).
pub struct ClientConnection {
    config: Arc<ClientConfig>,
    phase: Phase,
    /// The login, until it is done.
    login: Option<Box<Login>>,
    out: BytesMut,
    /// Queries issued before the login finished.
    deferred: BytesMut,
    pending: VecDeque<QueryId>,
    next_id: u64,
    events: VecDeque<Event>,
    params: Vec<(String, String)>,
    key: Option<(i32, i32)>,
    status: TxStatus,
}

impl std::fmt::Debug for ClientConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConnection")
            .field("phase", &self.phase)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl ClientConnection {
    /// A connection that starts by sending the StartupMessage. `nonce` is fresh randomness
    /// (for SCRAM; the connection has no random source of its own).
    pub fn new(config: Arc<ClientConfig>, nonce: [u8; 24]) -> ClientConnection {
        let params: Vec<(&str, &str)> = config
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut login = Login::new(
            &config.user,
            config.database.as_deref(),
            &params,
            config.password.as_deref(),
            &nonce,
        );
        let mut out = BytesMut::new();
        while let Some(b) = login.poll_transmit() {
            out.extend_from_slice(&b);
        }
        ClientConnection {
            config,
            phase: Phase::Login,
            login: Some(Box::new(login)),
            out,
            deferred: BytesMut::new(),
            pending: VecDeque::new(),
            next_id: 0,
            events: VecDeque::new(),
            params: Vec::new(),
            key: None,
            status: TxStatus::Idle,
        }
    }

    /// A run-time parameter the server reported (`server_version`, `client_encoding`...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The key a CancelRequest for this session must name: `(pid, secret)`.
    pub fn cancel_key(&self) -> Option<(i32, i32)> {
        self.key
    }

    /// Transaction status after the last finished query.
    pub fn tx_status(&self) -> TxStatus {
        self.status
    }

    /// Queries issued and not yet done.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn issue(&mut self, write: impl FnOnce(&mut BytesMut)) -> Result<QueryId, ClientError> {
        match self.phase {
            Phase::Closing | Phase::Closed => return Err(ClientError::Closed),
            _ if self.pending.len() >= self.config.max_pending => {
                return Err(ClientError::TooManyPending)
            }
            Phase::Ready => write(&mut self.out),
            _ => write(&mut self.deferred),
        }
        let id = QueryId(self.next_id);
        self.next_id += 1;
        self.pending.push_back(id);
        Ok(id)
    }

    /// A simple query: one or more statements separated by `;`, results in text.
    pub fn query(&mut self, sql: &str) -> Result<QueryId, ClientError> {
        self.issue(|out| frontend::query(out, sql.as_bytes()))
    }

    /// One statement with parameters (`$1`, `$2`...), through the extended protocol and the
    /// unnamed statement: parameters and results in text, `None` is NULL.
    pub fn execute(&mut self, sql: &str, params: &[Option<&[u8]>]) -> Result<QueryId, ClientError> {
        self.issue(|out| {
            frontend::parse_message(out, b"", sql.as_bytes());
            frontend::bind(out, b"", b"", params);
            frontend::describe_portal(out, b"");
            frontend::execute(out, b"", 0);
            frontend::sync(out);
        })
    }

    /// Prepares a named statement (done when its [`Event::Done`] comes).
    pub fn prepare(&mut self, name: &str, sql: &str) -> Result<QueryId, ClientError> {
        self.issue(|out| {
            frontend::parse_message(out, name.as_bytes(), sql.as_bytes());
            frontend::sync(out);
        })
    }

    /// Runs a statement prepared with [`prepare`](Self::prepare).
    pub fn execute_prepared(
        &mut self,
        name: &str,
        params: &[Option<&[u8]>],
    ) -> Result<QueryId, ClientError> {
        self.issue(|out| {
            frontend::bind(out, b"", name.as_bytes(), params);
            frontend::describe_portal(out, b"");
            frontend::execute(out, b"", 0);
            frontend::sync(out);
        })
    }

    /// Ends the session politely (Terminate); pending queries still get their answers if
    /// the server sends them before it closes.
    pub fn close(&mut self) {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        frontend::terminate(&mut self.out);
        self.phase = Phase::Closing;
    }

    fn fail(&mut self, e: ClientError) -> ClientError {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.events.push_back(Event::Closed(Some(e.clone())));
        }
        e
    }

    /// A server message while logging in.
    fn on_login(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        let Some(login) = self.login.as_mut() else {
            return Err(ClientError::Closed);
        };
        let ev = login.handle_message(msg);
        while let Some(b) = login.poll_transmit() {
            self.out.extend_from_slice(&b);
        }
        match ev? {
            None => {}
            Some(LoginEvent::Parameter { name, value }) => self.set_parameter(name, value),
            Some(LoginEvent::Notice(n)) => self.events.push_back(Event::Notice(n)),
            Some(LoginEvent::Ready(done)) => {
                self.login = None;
                self.key = done.cancel_key;
                self.status = done.tx_status;
                self.phase = Phase::Ready;
                self.events.push_back(Event::Ready);
                let deferred = self.deferred.split();
                self.out.unsplit(deferred);
            }
        }
        Ok(())
    }

    fn set_parameter(&mut self, name: String, value: String) {
        match self.params.iter_mut().find(|(k, _)| *k == name) {
            Some(p) => p.1.clone_from(&value),
            None => self.params.push((name.clone(), value.clone())),
        }
        self.events
            .push_back(Event::ParameterStatus { name, value });
    }

    fn on_message(&mut self, msg: Bytes) -> Result<(), ClientError> {
        if self.phase == Phase::Login {
            return self.on_login(&msg);
        }
        let tag = msg[0];
        // Row data first: the hot path, decoded here without `backend::parse`.
        if self.phase == Phase::Ready || self.phase == Phase::Closing {
            let id = self.pending.front().copied();
            match (tag, id) {
                (b'D', Some(id)) => {
                    let row = Row::parse(msg).map_err(ClientError::Message)?;
                    self.events.push_back(Event::Row { id, row });
                    return Ok(());
                }
                (b'T', Some(id)) => {
                    let columns = parse_columns(&msg[5..]).map_err(ClientError::Message)?;
                    self.events.push_back(Event::Columns { id, columns });
                    return Ok(());
                }
                (b'C', Some(id)) => {
                    let mut r = Reader::new(&msg[5..]);
                    let tag = r.str().map_err(ClientError::Message)?.to_owned();
                    self.events.push_back(Event::Complete { id, tag });
                    return Ok(());
                }
                (b'I', Some(id)) => {
                    self.events.push_back(Event::EmptyQuery { id });
                    return Ok(());
                }
                // ParseComplete, BindComplete, NoData, PortalSuspended, ParameterDescription,
                // CloseComplete: nothing to tell.
                (b'1' | b'2' | b'n' | b's' | b't' | b'3', Some(_)) => return Ok(()),
                (b'G' | b'H' | b'W', _) => {
                    return Err(ClientError::Protocol(
                        "COPY is not supported by this client",
                    ))
                }
                _ => {}
            }
        }
        let m = backend::parse(&msg).map_err(ClientError::Message)?;
        match m {
            Message::ErrorResponse(f) => {
                let error = DbError::from_fields(&f);
                if f.is_fatal() {
                    return Err(ClientError::Server(error));
                }
                let id = *self
                    .pending
                    .front()
                    .ok_or(ClientError::Protocol("error with no query pending"))?;
                self.events.push_back(Event::Error { id, error });
            }
            Message::NoticeResponse(f) => self
                .events
                .push_back(Event::Notice(DbError::from_fields(&f))),
            Message::NotificationResponse {
                pid,
                channel,
                payload,
            } => self.events.push_back(Event::Notification {
                pid,
                channel: channel.to_owned(),
                payload: payload.to_owned(),
            }),
            Message::ParameterStatus { name, value } => {
                self.set_parameter(name.to_owned(), value.to_owned())
            }
            Message::NegotiateProtocolVersion { .. } => {}
            Message::ReadyForQuery(status) => {
                self.status = status;
                let id = self
                    .pending
                    .pop_front()
                    .ok_or(ClientError::Protocol("ReadyForQuery with no query pending"))?;
                self.events.push_back(Event::Done { id, status });
            }
            _ => return Err(ClientError::Protocol("unexpected message")),
        }
        Ok(())
    }
}

fn parse_columns(body: &[u8]) -> Result<Vec<Column>, MessageError> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    if n < 0 {
        return Err(MessageError::Invalid("negative column count"));
    }
    let mut cols = Vec::with_capacity((n as usize).min(body.len() / 19 + 1));
    for _ in 0..n {
        let name = r.str()?.to_owned();
        let _table = r.i32()?;
        let _attr = r.i16()?;
        let type_oid = r.i32()? as u32;
        let _len = r.i16()?;
        let _mod = r.i32()?;
        let format = r.i16()?;
        cols.push(Column {
            name,
            type_oid,
            format,
        });
    }
    r.end()?;
    Ok(cols)
}

impl Connection for ClientConnection {
    type Event = Event;
    type Error = ClientError;

    fn info(&self) -> &'static ProtocolInfo {
        &POSTGRES_INFO
    }

    fn handle_input(&mut self, _now: Instant, input: &mut BytesMut) -> Result<(), ClientError> {
        while self.phase != Phase::Closed && self.events.len() < self.config.max_events {
            let f = match frame(input, self.config.max_message_bytes) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(self.fail(ClientError::Frame(e))),
            };
            let msg = input.split_to(f.len).freeze();
            if let Err(e) = self.on_message(msg) {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    fn handle_eof(&mut self, _now: Instant) {
        if self.phase == Phase::Closing {
            self.phase = Phase::Closed;
            self.events.push_back(Event::Closed(None));
        } else {
            self.fail(ClientError::Eof);
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() || self.phase == Phase::Closed {
            return None;
        }
        Some(self.out.split().freeze())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn wants_read(&self) -> bool {
        self.phase != Phase::Closed && self.events.len() < self.config.max_events
    }

    fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    fn state(&self) -> State {
        match self.phase {
            Phase::Login => State::Authenticating,
            Phase::Ready => State::Ready,
            Phase::Closing => State::Closing,
            Phase::Closed => State::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{md5_password, ScramSecret, ScramServer};
    use crate::message::{parse_startup, startup_frame, Startup};
    use proptest::prelude::*;

    fn conn(cfg: ClientConfig) -> ClientConnection {
        ClientConnection::new(Arc::new(cfg), [7; 24])
    }

    fn feed(c: &mut ClientConnection, bytes: &[u8]) -> Result<Vec<Event>, ClientError> {
        let mut input = BytesMut::from(bytes);
        c.handle_input(Instant::ZERO, &mut input)?;
        assert!(input.is_empty(), "all consumed");
        Ok(std::iter::from_fn(|| c.poll_event()).collect())
    }

    fn sent(c: &mut ClientConnection) -> Vec<u8> {
        std::iter::from_fn(|| c.poll_transmit())
            .flat_map(|b| b.to_vec())
            .collect()
    }

    /// The frontend messages in `bytes` as (tag, body).
    fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(f) = frame(bytes, 1 << 20).unwrap() {
            v.push((bytes[0], bytes[5..f.len].to_vec()));
            bytes = &bytes[f.len..];
        }
        assert!(bytes.is_empty());
        v
    }

    fn login_tail() -> BytesMut {
        let mut b = BytesMut::new();
        backend::authentication_ok(&mut b);
        backend::parameter_status(&mut b, "server_version", "15.8");
        backend::parameter_status(&mut b, "client_encoding", "UTF8");
        backend::backend_key_data(&mut b, 4242, 99);
        backend::ready_for_query(&mut b, TxStatus::Idle);
        b
    }

    #[test]
    fn scram_login_against_our_server_side() {
        let mut c = conn(
            ClientConfig::new("app")
                .database("shop")
                .password("pencil")
                .param("application_name", "t"),
        );
        let startup = sent(&mut c);
        let n = startup_frame(&startup, 1 << 20).unwrap().unwrap();
        let Ok(Startup::Startup { params, .. }) = parse_startup(&startup[..n]) else {
            panic!("no startup")
        };
        assert_eq!(params.get("user"), Some("app"));
        assert_eq!(params.get("database"), Some("shop"));
        assert_eq!(params.get("application_name"), Some("t"));
        // Queries issued now wait for the login.
        let q = c.query("SELECT 1").unwrap();
        assert!(sent(&mut c).is_empty());

        let secret = ScramSecret::from_password(b"pencil", b"0123456789abcdef", 4096);
        let mut server = ScramServer::new(secret, &[9; 18]);
        let mut b = BytesMut::new();
        backend::authentication_sasl(&mut b, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert!(feed(&mut c, &b).unwrap().is_empty());
        let m = messages(&sent(&mut c));
        let (mech, data) = frontend::parse_sasl_initial(&m[0].1).unwrap();
        assert_eq!(mech, "SCRAM-SHA-256");
        let first = server.handle_client_first(data.unwrap()).unwrap();
        b.clear();
        backend::authentication_sasl_continue(&mut b, &first);
        feed(&mut c, &b).unwrap();
        let m = messages(&sent(&mut c));
        let fin = server.handle_client_final(&m[0].1).unwrap();
        b.clear();
        backend::authentication_sasl_final(&mut b, &fin);
        b.unsplit(login_tail());
        let ev = feed(&mut c, &b).unwrap();
        assert_eq!(ev.last(), Some(&Event::Ready));
        assert_eq!(c.parameter("server_version"), Some("15.8"));
        assert_eq!(c.cancel_key(), Some((4242, 99)));
        assert_eq!(c.state(), State::Ready);
        // The deferred query goes out now.
        assert_eq!(
            messages(&sent(&mut c)),
            vec![(b'Q', b"SELECT 1\0".to_vec())]
        );
        assert_eq!(c.pending(), 1);
        let _ = q;
    }

    #[test]
    fn a_server_that_skips_the_scram_proof_is_refused() {
        let mut c = conn(ClientConfig::new("app").password("pencil"));
        let mut b = BytesMut::new();
        backend::authentication_sasl(&mut b, &["SCRAM-SHA-256"]);
        backend::authentication_ok(&mut b);
        let mut input = BytesMut::from(&b[..]);
        let e = c.handle_input(Instant::ZERO, &mut input).unwrap_err();
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
        assert!(c.is_closed());
        assert_eq!(c.poll_event(), Some(Event::Closed(Some(e))));
    }

    #[test]
    fn md5_and_cleartext_logins() {
        let mut c = conn(ClientConfig::new("app").password("secret"));
        sent(&mut c);
        let mut b = BytesMut::new();
        backend::authentication_md5(&mut b, [1, 2, 3, 4]);
        feed(&mut c, &b).unwrap();
        let m = messages(&sent(&mut c));
        assert_eq!(m[0].0, b'p');
        assert_eq!(
            &m[0].1[..35],
            &md5_password(b"app", b"secret", [1, 2, 3, 4])[..]
        );
        assert_eq!(
            feed(&mut c, &login_tail()).unwrap().last(),
            Some(&Event::Ready)
        );

        let mut c = conn(ClientConfig::new("app").password("secret"));
        sent(&mut c);
        b.clear();
        backend::authentication_cleartext(&mut b);
        feed(&mut c, &b).unwrap();
        assert_eq!(messages(&sent(&mut c))[0], (b'p', b"secret\0".to_vec()));

        let mut c = conn(ClientConfig::new("app"));
        let mut input = BytesMut::from(&b[..]);
        assert_eq!(
            c.handle_input(Instant::ZERO, &mut input),
            Err(ClientError::PasswordRequired)
        );
    }

    #[test]
    fn a_fatal_login_error_closes_with_the_servers_words() {
        let mut c = conn(ClientConfig::new("app").password("x"));
        let mut b = BytesMut::new();
        backend::error_response(
            &mut b,
            "FATAL",
            "28P01",
            "password authentication failed for user \"app\"",
        );
        let mut input = BytesMut::from(&b[..]);
        let Err(ClientError::Server(e)) = c.handle_input(Instant::ZERO, &mut input) else {
            panic!("expected the server's error")
        };
        assert_eq!(e.code, "28P01");
        assert!(c.is_closed());
    }

    /// Bytes PostgreSQL 15 sends for `SELECT 1 AS a, NULL AS b; SELECT 2 AS a, 'x' AS b`.
    fn two_results() -> Vec<u8> {
        let mut v = Vec::new();
        let row_desc = |v: &mut Vec<u8>| {
            v.extend_from_slice(b"T\0\0\0\x2e\0\x02");
            v.extend_from_slice(b"a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
            v.extend_from_slice(b"b\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0");
        };
        row_desc(&mut v);
        v.extend_from_slice(b"D\0\0\0\x0f\0\x02\0\0\0\x011\xff\xff\xff\xff");
        v.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
        row_desc(&mut v);
        v.extend_from_slice(b"D\0\0\0\x10\0\x02\0\0\0\x012\0\0\0\x01x");
        v.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
        v.extend_from_slice(b"Z\0\0\0\x05I");
        v
    }

    fn ready() -> ClientConnection {
        let mut c = conn(ClientConfig::new("app"));
        feed(&mut c, &login_tail()).unwrap();
        sent(&mut c);
        c
    }

    #[test]
    fn results_rows_and_pipelined_queries() {
        let mut c = ready();
        let q1 = c
            .query("SELECT 1 AS a, NULL AS b; SELECT 2 AS a, 'x' AS b")
            .unwrap();
        let q2 = c.execute("SELECT $1::int", &[Some(b"5")]).unwrap();
        let out = messages(&sent(&mut c));
        let tags: Vec<u8> = out.iter().map(|m| m.0).collect();
        assert_eq!(tags, b"QPBDES");
        let ev = feed(&mut c, &two_results()).unwrap();
        let rows: Vec<(Option<String>, Option<String>)> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Row { id, row } if *id == q1 => Some((
                    row.text(0).map(str::to_owned),
                    row.text(1).map(str::to_owned),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (Some("1".into()), None),
                (Some("2".into()), Some("x".into()))
            ]
        );
        let Event::Columns { columns, .. } = &ev[0] else {
            panic!("columns first")
        };
        assert_eq!((columns[0].name.as_str(), columns[0].type_oid), ("a", 23));
        assert_eq!(
            ev.last(),
            Some(&Event::Done {
                id: q1,
                status: TxStatus::Idle
            })
        );
        // q2 fails: an error, then its ReadyForQuery.
        let mut b = BytesMut::from(&b"1\0\0\0\x04"[..]);
        backend::error_response(&mut b, "ERROR", "22P02", "invalid input syntax");
        backend::ready_for_query(&mut b, TxStatus::Idle);
        let ev = feed(&mut c, &b).unwrap();
        assert!(matches!(&ev[0], Event::Error { id, error } if *id == q2 && error.code == "22P02"));
        assert!(matches!(ev[1], Event::Done { id, .. } if id == q2));
        assert_eq!(c.pending(), 0);
        assert!(!c.is_closed(), "an ERROR does not end the session");
    }

    #[test]
    fn limits_hold() {
        let mut cfg = ClientConfig::new("app");
        cfg.max_pending = 2;
        cfg.max_events = 3;
        cfg.max_message_bytes = 64;
        let mut c = conn(cfg);
        feed(&mut c, &login_tail()[..]).ok();
        let mut input = BytesMut::new();
        let mut c2 = conn({
            let mut cfg = ClientConfig::new("app");
            cfg.max_events = 2;
            cfg
        });
        input.extend_from_slice(&login_tail());
        // 3 events in the login tail but at most 2 held: the rest stays in the input.
        c2.handle_input(Instant::ZERO, &mut input).unwrap();
        assert!(!c2.wants_read() && !input.is_empty());
        while c2.poll_event().is_some() {}
        c2.handle_input(Instant::ZERO, &mut input).unwrap();
        assert!(input.is_empty());

        c.query("a").unwrap();
        c.query("b").unwrap();
        assert_eq!(c.query("c"), Err(ClientError::TooManyPending));
        let mut big = BytesMut::from(&b"D\0\0\x10\0"[..]);
        assert!(matches!(
            c.handle_input(Instant::ZERO, &mut big),
            Err(ClientError::Frame(FrameError::TooLong { .. }))
        ));
        assert_eq!(c.query("d"), Err(ClientError::Closed));
    }

    #[test]
    fn eof_and_close() {
        let mut c = ready();
        c.close();
        assert_eq!(messages(&sent(&mut c)), vec![(b'X', vec![])]);
        c.handle_eof(Instant::ZERO);
        assert_eq!(c.poll_event(), Some(Event::Closed(None)));
        let mut c = ready();
        c.query("SELECT 1").unwrap();
        c.handle_eof(Instant::ZERO);
        assert_eq!(c.poll_event(), Some(Event::Closed(Some(ClientError::Eof))));
    }

    proptest! {
        #[test]
        fn arbitrary_server_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6)) {
            let mut c = conn(ClientConfig::new("app").password("pw"));
            let _ = c.query("SELECT 1");
            let mut input = BytesMut::new();
            for ch in chunks {
                input.extend_from_slice(&ch);
                if c.handle_input(Instant::ZERO, &mut input).is_err() {
                    break;
                }
                while c.poll_event().is_some() {}
                while c.poll_transmit().is_some() {}
            }
        }

        #[test]
        fn rows_survive_any_split(cut in 0usize..200) {
            let bytes = two_results();
            let cut = cut.min(bytes.len());
            let mut c = ready();
            c.query("q").unwrap();
            let mut input = BytesMut::from(&bytes[..cut]);
            c.handle_input(Instant::ZERO, &mut input).unwrap();
            input.extend_from_slice(&bytes[cut..]);
            c.handle_input(Instant::ZERO, &mut input).unwrap();
            let n = std::iter::from_fn(|| c.poll_event()).filter(|e| matches!(e, Event::Row { .. })).count();
            prop_assert_eq!(n, 2);
        }
    }
}
