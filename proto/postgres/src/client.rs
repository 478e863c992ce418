//! A sans-IO PostgreSQL client connection: startup, authentication (SCRAM-SHA-256, MD5,
//! cleartext), simple and extended queries, pipelined, COPY in both directions.
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
//! ## COPY
//!
//! - `COPY ... TO STDOUT` (through [`query`](ClientConnection::query) or
//!   [`execute`](ClientConnection::execute)): [`Event::CopyOut`] (the format), then one
//!   [`Event::CopyData`] per CopyData message (a `Bytes` slice of the input, no copy), then
//!   [`Event::CopyDone`], [`Event::Complete`] (`COPY n`) and [`Event::Done`]. Each is an event
//!   like a row: `max_events` bounds them (backpressure). Queries pipelined behind it run after.
//! - `COPY ... FROM STDIN`: issue it with [`copy_in`](ClientConnection::copy_in), wait for
//!   [`Event::CopyIn`] (the server wants data, in the format it says), then send
//!   [`copy_data`](ClientConnection::copy_data) chunks (any split; big ones go out as the
//!   caller's `Bytes`, not copied) and end with [`copy_done`](ClientConnection::copy_done) or
//!   [`copy_fail`](ClientConnection::copy_fail) (the server answers ERROR 57014
//!   `COPY from stdin failed: ...`); [`Event::Complete`]/[`Event::Error`] and
//!   [`Event::Done`] follow as for any query. Queries issued after `copy_in` wait until it is
//!   done, then go out in order: PostgreSQL ends the session if any other message arrives in
//!   the middle of COPY data. A COPY FROM STDIN sent with `query` or `execute` (extended
//!   protocol: the client sends the Sync the COPY swallowed) works the same way when nothing
//!   was pipelined behind it; otherwise the connection fails with
//!   [`ClientError::CopyInPipelined`]. Calls at the wrong time get
//!   [`ClientError::NotInCopyIn`] (the connection goes on).
//! - CopyBothResponse (streaming replication) fails the connection with
//!   [`ClientError::CopyBoth`].
//!
//! The login alone is [`Login`] (see [`login`]): the connection runs one until the first
//! ReadyForQuery, and a pooler can run it for its server connections (`ferry proxy` does).
//!
//! ## TLS
//!
//! With [`ClientConfig::ssl_request`] the connection sends an SSLRequest instead of the
//! StartupMessage and reads the server's one-byte answer (`sslmode=verify-full` semantics:
//! `N`, another byte, or bytes after the `S` close it with an error). After each
//! [`handle_input`](ClientConnection::handle_input), check
//! [`wants_tls`](ClientConnection::wants_tls): once it is true the caller MUST start TLS on
//! its socket (verifying the server's certificate; input and output are plaintext inside it
//! from then on) and call [`tls_started`](ClientConnection::tls_started), which queues the
//! StartupMessage. The TLS layer itself is the caller's (e.g. `ferry-tls`).
//!
//! Not covered: replication (CopyBoth), GSSAPI, SCRAM channel binding.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_proto::{Connection, ErrorKind, Instant, ProtoError, ProtocolInfo, State};

use crate::auth::AuthError;
use crate::backend::{self, Fields, Message, TxStatus};
use crate::frontend;
use crate::message::{frame, FrameError, MessageError, Reader};

pub mod login;
pub use login::{
    ssl_response, LoggedIn, Login, LoginError, LoginEvent, Refusal, DEFAULT_MAX_LOGIN_MESSAGE,
};

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
    /// Ask for TLS first (`SSLRequest`, libpq's `sslmode=verify-full` semantics: see
    /// [`ClientConnection::wants_tls`]) [default: false].
    pub ssl_request: bool,
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
            ssl_request: false,
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

    /// Asks for TLS first (see [`ClientConnection::wants_tls`]).
    pub fn ssl_request(mut self) -> ClientConfig {
        self.ssl_request = true;
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

/// The overall format of a COPY's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFormat {
    /// Text (or CSV): rows as lines.
    Text,
    /// PostgreSQL's binary COPY format (header, tuples, trailer).
    Binary,
}

/// What a CopyInResponse or CopyOutResponse says: the format of the data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyInfo {
    /// Overall format.
    pub format: CopyFormat,
    /// Per column: 0 text, 1 binary (all equal to the overall format today).
    pub column_formats: Vec<i16>,
}

impl CopyInfo {
    fn parse(body: &[u8]) -> Result<CopyInfo, MessageError> {
        let mut r = Reader::new(body);
        let format = match r.u8()? {
            0 => CopyFormat::Text,
            1 => CopyFormat::Binary,
            _ => return Err(MessageError::Invalid("COPY format")),
        };
        let n = r.i16()?;
        if n < 0 {
            return Err(MessageError::Invalid("negative column count"));
        }
        let mut column_formats = Vec::with_capacity((n as usize).min(body.len() / 2));
        for _ in 0..n {
            column_formats.push(r.i16()?);
        }
        r.end()?;
        Ok(CopyInfo {
            format,
            column_formats,
        })
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
    /// `COPY ... TO STDOUT`: data follows ([`Event::CopyData`], then [`Event::CopyDone`]).
    CopyOut {
        /// The query.
        id: QueryId,
        /// Its format.
        info: CopyInfo,
    },
    /// A chunk of COPY TO STDOUT data (PostgreSQL sends one row per message): a slice of the
    /// input, not copied.
    CopyData {
        /// The query.
        id: QueryId,
        /// The bytes.
        data: Bytes,
    },
    /// The end of COPY TO STDOUT data; [`Event::Complete`] (`COPY n`) follows.
    CopyDone {
        /// The query.
        id: QueryId,
    },
    /// `COPY ... FROM STDIN`: the server waits for [`ClientConnection::copy_data`], then
    /// [`ClientConnection::copy_done`] or [`ClientConnection::copy_fail`].
    CopyIn {
        /// The query.
        id: QueryId,
        /// The format it expects.
        info: CopyInfo,
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
    /// [`copy_data`](ClientConnection::copy_data), [`copy_done`](ClientConnection::copy_done)
    /// or [`copy_fail`](ClientConnection::copy_fail) while no COPY FROM STDIN waits for data
    /// (none began, it already ended, or the server failed it). The connection goes on.
    NotInCopyIn,
    /// The server asked for COPY FROM STDIN data for a statement that other queries were
    /// pipelined behind (issue it with [`copy_in`](ClientConnection::copy_in)): PostgreSQL
    /// ends a session whose COPY data is interrupted by another message.
    CopyInPipelined,
    /// The server began a CopyBoth exchange (streaming replication), which this client does
    /// not speak.
    CopyBoth,
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
            ClientError::NotInCopyIn => f.write_str("no COPY FROM STDIN is waiting for data"),
            ClientError::CopyInPipelined => {
                f.write_str("COPY FROM STDIN with queries pipelined behind it (use copy_in)")
            }
            ClientError::CopyBoth => f.write_str("CopyBoth (replication) is not supported"),
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
            LoginError::TlsRefused => {
                ClientError::Protocol("the server does not accept TLS (it answered N)")
            }
            LoginError::SslResponse(_) => ClientError::Protocol("a bad answer to SSLRequest"),
            LoginError::DataAfterSslResponse => {
                ClientError::Protocol("data after the server's S, before the TLS handshake")
            }
        }
    }
}

impl ProtoError for ClientError {
    fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Frame(_) | ClientError::TooManyPending => ErrorKind::LimitExceeded,
            ClientError::Message(_) | ClientError::Protocol(_) => ErrorKind::Malformed,
            ClientError::UnsupportedAuth(_) | ClientError::CopyBoth => ErrorKind::Unsupported,
            ClientError::Auth(_)
            | ClientError::PasswordRequired
            | ClientError::Server(_)
            | ClientError::NotInCopyIn
            | ClientError::CopyInPipelined => ErrorKind::InvalidState,
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

/// A query issued and not yet done.
#[derive(Clone, Copy, Debug)]
struct Pending {
    id: QueryId,
    /// Sent with the extended protocol (its Sync is eaten by a COPY FROM STDIN).
    extended: bool,
}

/// A query's messages held back (login not done, or a COPY FROM STDIN ahead).
#[derive(Debug)]
struct Held {
    id: QueryId,
    msgs: Bytes,
    /// Issued with [`ClientConnection::copy_in`]: what follows waits for it.
    copy_in: bool,
}

/// Where a COPY stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyState {
    None,
    /// COPY TO STDOUT data is coming.
    Out,
    /// The server waits for COPY FROM STDIN data; `sync_owed`: an extended query's Sync was
    /// read (and ignored) by the COPY, so one must follow the end of the data.
    In {
        sync_owed: bool,
    },
}

/// Payloads from this size on are queued as the caller's `Bytes`, not copied.
const COPY_NO_COPY_FROM: usize = 8 << 10;
/// Largest CopyData payload sent in one message (PostgreSQL takes up to 1 GiB).
const COPY_MAX_MESSAGE: usize = 256 << 20;

/// A sans-IO PostgreSQL client connection (see the [module docs](self)).
pub struct ClientConnection {
    config: Arc<ClientConfig>,
    phase: Phase,
    /// The login, until it is done.
    login: Option<Box<Login>>,
    /// Output: `out_chunks` first, then `out`.
    out: BytesMut,
    out_chunks: VecDeque<Bytes>,
    /// Queries not sent yet (login not done, or queued behind a COPY FROM STDIN).
    held: VecDeque<Held>,
    /// The query whose end the held ones wait for (a COPY FROM STDIN).
    hold: Option<QueryId>,
    copy: CopyState,
    pending: VecDeque<Pending>,
    next_id: u64,
    events: VecDeque<Event>,
    params: Vec<(String, String)>,
    key: Option<(i32, i32)>,
    status: TxStatus,
    /// SSLRequest sent and TLS not started yet: input goes to the login as it is.
    tls_pending: bool,
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
        let tls_pending = config.ssl_request;
        if tls_pending {
            login = login.with_ssl_request();
        }
        let mut out = BytesMut::new();
        while let Some(b) = login.poll_transmit() {
            out.extend_from_slice(&b);
        }
        ClientConnection {
            config,
            phase: Phase::Login,
            login: Some(Box::new(login)),
            out,
            out_chunks: VecDeque::new(),
            held: VecDeque::new(),
            hold: None,
            copy: CopyState::None,
            pending: VecDeque::new(),
            next_id: 0,
            events: VecDeque::new(),
            params: Vec::new(),
            key: None,
            status: TxStatus::Idle,
            tls_pending,
        }
    }

    /// Whether the server accepted TLS (`S`, with [`ClientConfig::ssl_request`]): start TLS
    /// on the socket now, then call [`tls_started`](Self::tls_started).
    pub fn wants_tls(&self) -> bool {
        self.login.as_ref().is_some_and(|l| l.wants_tls())
    }

    /// TLS is up (after [`wants_tls`](Self::wants_tls)): the StartupMessage is queued, to
    /// go out inside it. Does nothing at any other time.
    pub fn tls_started(&mut self) {
        if let Some(l) = self.login.as_mut().filter(|l| l.wants_tls()) {
            l.tls_started();
            self.tls_pending = false;
            while let Some(b) = l.poll_transmit() {
                self.out.extend_from_slice(&b);
            }
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

    fn issue(
        &mut self,
        extended: bool,
        copy_in: bool,
        write: impl FnOnce(&mut BytesMut),
    ) -> Result<QueryId, ClientError> {
        match self.phase {
            Phase::Closing | Phase::Closed => return Err(ClientError::Closed),
            _ if self.pending.len() >= self.config.max_pending => {
                return Err(ClientError::TooManyPending)
            }
            _ => {}
        }
        let id = QueryId(self.next_id);
        self.next_id += 1;
        self.pending.push_back(Pending { id, extended });
        if self.phase == Phase::Ready && self.hold.is_none() && self.held.is_empty() {
            write(&mut self.out);
            if copy_in {
                self.hold = Some(id);
            }
        } else {
            let mut msgs = BytesMut::new();
            write(&mut msgs);
            self.held.push_back(Held {
                id,
                msgs: msgs.freeze(),
                copy_in,
            });
        }
        Ok(id)
    }

    /// Sends held queries, up to and including the next COPY FROM STDIN.
    fn release(&mut self) {
        while self.phase == Phase::Ready && self.hold.is_none() {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.out.extend_from_slice(&h.msgs);
            if h.copy_in {
                self.hold = Some(h.id);
            }
        }
    }

    /// A simple query: one or more statements separated by `;`, results in text.
    pub fn query(&mut self, sql: &str) -> Result<QueryId, ClientError> {
        self.issue(false, false, |out| frontend::query(out, sql.as_bytes()))
    }

    /// A simple query that runs a `COPY ... FROM STDIN`: queries issued after it wait until
    /// it is [`Done`](Event::Done). Send the data once [`Event::CopyIn`] came (see the
    /// [module docs](self#copy)).
    pub fn copy_in(&mut self, sql: &str) -> Result<QueryId, ClientError> {
        self.issue(false, true, |out| frontend::query(out, sql.as_bytes()))
    }

    /// Whether a COPY FROM STDIN waits for data ([`Event::CopyIn`] came, the data is not
    /// ended yet, and the server did not fail it).
    pub fn in_copy_in(&self) -> bool {
        matches!(self.copy, CopyState::In { .. })
            && !matches!(self.phase, Phase::Closing | Phase::Closed)
    }

    fn check_copy_in(&self) -> Result<(), ClientError> {
        match (&self.phase, self.copy) {
            (Phase::Closing | Phase::Closed, _) => Err(ClientError::Closed),
            (_, CopyState::In { .. }) => Ok(()),
            _ => Err(ClientError::NotInCopyIn),
        }
    }

    /// Sends a chunk of COPY FROM STDIN data (any split of the stream: rows may straddle
    /// chunks). Chunks of 8 KiB and more are queued as they are, not copied.
    pub fn copy_data(&mut self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        self.check_copy_in()?;
        let mut data: Bytes = data.into();
        while !data.is_empty() {
            let part = data.split_to(data.len().min(COPY_MAX_MESSAGE));
            if part.len() < COPY_NO_COPY_FROM {
                frontend::copy_data(&mut self.out, &part);
            } else {
                frontend::copy_data_header(&mut self.out, part.len() as u32);
                self.out_chunks.push_back(self.out.split().freeze());
                self.out_chunks.push_back(part);
            }
        }
        Ok(())
    }

    /// Ends COPY FROM STDIN data: the server stores it and answers `COPY n` (or an error).
    pub fn copy_done(&mut self) -> Result<(), ClientError> {
        self.check_copy_in()?;
        frontend::copy_done(&mut self.out);
        self.leave_copy();
        Ok(())
    }

    /// Aborts COPY FROM STDIN: nothing is stored; the server answers ERROR 57014
    /// `COPY from stdin failed: {why}`.
    pub fn copy_fail(&mut self, why: &str) -> Result<(), ClientError> {
        self.check_copy_in()?;
        frontend::copy_fail(&mut self.out, why.as_bytes());
        self.leave_copy();
        Ok(())
    }

    /// The COPY is over for us (our CopyDone/CopyFail) or for the server (CommandComplete,
    /// an error, a new COPY...): an extended query's server then waits for (or skips to) a
    /// Sync, and the one sent with it was eaten by the COPY FROM STDIN.
    fn leave_copy(&mut self) {
        if let CopyState::In { sync_owed: true } = self.copy {
            frontend::sync(&mut self.out);
        }
        self.copy = CopyState::None;
    }

    /// One statement with parameters (`$1`, `$2`...), through the extended protocol and the
    /// unnamed statement: parameters and results in text, `None` is NULL.
    pub fn execute(&mut self, sql: &str, params: &[Option<&[u8]>]) -> Result<QueryId, ClientError> {
        self.issue(true, false, |out| {
            frontend::parse_message(out, b"", sql.as_bytes());
            frontend::bind(out, b"", b"", params);
            frontend::describe_portal(out, b"");
            frontend::execute(out, b"", 0);
            frontend::sync(out);
        })
    }

    /// Prepares a named statement (done when its [`Event::Done`] comes).
    pub fn prepare(&mut self, name: &str, sql: &str) -> Result<QueryId, ClientError> {
        self.issue(true, false, |out| {
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
        self.issue(true, false, |out| {
            frontend::bind(out, b"", name.as_bytes(), params);
            frontend::describe_portal(out, b"");
            frontend::execute(out, b"", 0);
            frontend::sync(out);
        })
    }

    /// Ends the session politely (Terminate, after a CopyFail if COPY FROM STDIN data was
    /// being sent); pending queries still get their answers if the server sends them before
    /// it closes. Queries held behind a COPY FROM STDIN are not sent.
    pub fn close(&mut self) {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return;
        }
        // In the middle of COPY data PostgreSQL would take a Terminate for a protocol
        // violation: end the COPY first.
        if self.in_copy_in() {
            frontend::copy_fail(&mut self.out, b"the client closed the connection");
            self.leave_copy();
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
                self.release();
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
            let id = self.pending.front().map(|p| p.id);
            match (tag, id) {
                (b'd', Some(id)) if self.copy == CopyState::Out => {
                    let data = msg.slice(5..);
                    self.events.push_back(Event::CopyData { id, data });
                    return Ok(());
                }
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
                    // Ends a COPY (PostgreSQL sends it after CopyDone, or once it has ours).
                    self.leave_copy();
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
                (b'c', Some(id)) if self.copy == CopyState::Out => {
                    self.copy = CopyState::None;
                    self.events.push_back(Event::CopyDone { id });
                    return Ok(());
                }
                (b'H', Some(id)) => {
                    let info = CopyInfo::parse(&msg[5..]).map_err(ClientError::Message)?;
                    self.leave_copy();
                    self.copy = CopyState::Out;
                    self.events.push_back(Event::CopyOut { id, info });
                    return Ok(());
                }
                (b'G', Some(id)) => {
                    let info = CopyInfo::parse(&msg[5..]).map_err(ClientError::Message)?;
                    // Queries sent behind this one would be read as COPY data.
                    if self.pending.len() - self.held.len() > 1 {
                        return Err(ClientError::CopyInPipelined);
                    }
                    let extended = self.pending.front().is_some_and(|p| p.extended);
                    self.leave_copy();
                    self.copy = CopyState::In {
                        sync_owed: extended,
                    };
                    self.hold.get_or_insert(id);
                    self.events.push_back(Event::CopyIn { id, info });
                    return Ok(());
                }
                (b'W', _) => return Err(ClientError::CopyBoth),
                (b'd' | b'c' | b'G' | b'H', _) => {
                    return Err(ClientError::Protocol("COPY message out of place"))
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
                let id = self
                    .pending
                    .front()
                    .ok_or(ClientError::Protocol("error with no query pending"))?
                    .id;
                // A COPY the server failed (a bad row...).
                self.leave_copy();
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
                    .ok_or(ClientError::Protocol("ReadyForQuery with no query pending"))?
                    .id;
                self.copy = CopyState::None;
                self.events.push_back(Event::Done { id, status });
                if self.hold == Some(id) {
                    self.hold = None;
                    self.release();
                }
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
        if self.tls_pending && self.phase == Phase::Login {
            // The one-byte answer to the SSLRequest (the login refuses anything else).
            let r = match self.login.as_mut() {
                Some(l) => l.handle_input(input).map(|_| ()),
                None => Ok(()),
            };
            return r.map_err(|e| self.fail(e.into()));
        }
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
        if self.phase == Phase::Closed {
            return None;
        }
        if let Some(b) = self.out_chunks.pop_front() {
            return Some(b);
        }
        if self.out.is_empty() {
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

    /// `ssl_request`: SSLRequest, `S`, the caller starts TLS, then the StartupMessage; `N`
    /// closes the connection with an error.
    #[test]
    fn ssl_request_then_tls_then_the_login() {
        let mut c = conn(ClientConfig::new("app").ssl_request());
        assert_eq!(sent(&mut c), [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        assert!(feed(&mut c, b"").unwrap().is_empty());
        assert!(!c.wants_tls());
        c.query("SELECT 1").unwrap();
        assert!(feed(&mut c, b"S").unwrap().is_empty());
        assert!(c.wants_tls());
        assert!(sent(&mut c).is_empty(), "nothing in clear after the S");
        c.tls_started();
        assert!(!c.wants_tls());
        let out = sent(&mut c);
        assert_eq!(&out[4..8], &[0, 3, 0, 0], "the StartupMessage");
        let evs = feed(&mut c, &login_tail()).unwrap();
        assert!(evs.contains(&Event::Ready), "{evs:?}");
        assert_eq!(
            messages(&sent(&mut c))[0].0,
            b'Q',
            "the held query goes out"
        );
        assert_eq!(c.pending(), 1);

        for answer in [&b"N"[..], b"S", b"E"] {
            let mut c = conn(ClientConfig::new("app").ssl_request());
            let _ = sent(&mut c);
            let mut input = BytesMut::from(answer);
            assert!(
                matches!(
                    c.handle_input(Instant::ZERO, &mut input),
                    Err(ClientError::Protocol(_))
                ),
                "{answer:?}"
            );
            assert!(c.is_closed() && !c.wants_tls());
            c.tls_started();
            assert!(sent(&mut c).is_empty(), "{answer:?}: nothing in clear");
        }
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

    /// PostgreSQL 15's answer to `COPY (VALUES (1, 'a'), (2, NULL)) TO STDOUT`.
    fn copy_out_bytes() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"H\0\0\0\x0b\0\0\x02\0\0\0\0");
        v.extend_from_slice(b"d\0\0\0\x081\ta\n");
        v.extend_from_slice(b"d\0\0\0\x092\t\\N\n");
        v.extend_from_slice(b"c\0\0\0\x04");
        v.extend_from_slice(b"C\0\0\0\x0bCOPY 2\0");
        v.extend_from_slice(b"Z\0\0\0\x05I");
        v
    }

    /// PostgreSQL 15's CopyInResponse for a two-column table, text format.
    const COPY_IN_TEXT: &[u8] = b"G\0\0\0\x0b\0\0\x02\0\0\0\0";
    const COPY_2_READY: &[u8] = b"C\0\0\0\x0bCOPY 2\0Z\0\0\0\x05I";

    fn copy_fail_answer(why: &str) -> BytesMut {
        let mut b = BytesMut::new();
        backend::error_response_fields(
            &mut b,
            [
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "57014"),
                (b'M', &format!("COPY from stdin failed: {why}")),
                (b'W', "COPY t, line 1"),
                (b'F', "copyfromparse.c"),
                (b'L', "278"),
                (b'R', "CopyGetData"),
            ],
        );
        backend::ready_for_query(&mut b, TxStatus::Idle);
        b
    }

    fn text_info() -> CopyInfo {
        CopyInfo {
            format: CopyFormat::Text,
            column_formats: vec![0, 0],
        }
    }

    #[test]
    fn copy_out_data_are_slices_of_the_input_and_pipelined_queries_follow() {
        let mut c = ready();
        let q1 = c
            .query("COPY (VALUES (1, 'a'), (2, NULL)) TO STDOUT")
            .unwrap();
        let q2 = c.query("SELECT 1 AS a, NULL AS b").unwrap();
        assert_eq!(messages(&sent(&mut c)).len(), 2, "both went out");
        let mut input = BytesMut::from(&copy_out_bytes()[..]);
        let two = two_results();
        input.extend_from_slice(&two[..47 + 16 + 14]);
        input.extend_from_slice(b"Z\0\0\0\x05I");
        let base = input.as_ptr() as usize;
        let end = base + input.len();
        c.handle_input(Instant::ZERO, &mut input).unwrap();
        let ev: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(
            ev[0],
            Event::CopyOut {
                id: q1,
                info: text_info()
            }
        );
        let Event::CopyData { data, .. } = &ev[1] else {
            panic!("{ev:?}")
        };
        let at = data.as_ptr() as usize;
        assert!(at >= base && at < end, "a slice of the input, not a copy");
        assert_eq!(
            &ev[1..6],
            &[
                Event::CopyData {
                    id: q1,
                    data: Bytes::from_static(b"1\ta\n")
                },
                Event::CopyData {
                    id: q1,
                    data: Bytes::from_static(b"2\t\\N\n")
                },
                Event::CopyDone { id: q1 },
                Event::Complete {
                    id: q1,
                    tag: "COPY 2".into()
                },
                Event::Done {
                    id: q1,
                    status: TxStatus::Idle
                },
            ]
        );
        assert!(matches!(ev[6], Event::Columns { id, .. } if id == q2));
        assert_eq!(
            ev.last(),
            Some(&Event::Done {
                id: q2,
                status: TxStatus::Idle
            })
        );
        // Binary format is reported as such.
        let q = c.query("COPY t TO STDOUT (FORMAT binary)").unwrap();
        let ev = feed(&mut c, b"H\0\0\0\x0b\x01\0\x02\0\x01\0\x01").unwrap();
        assert_eq!(
            ev,
            vec![Event::CopyOut {
                id: q,
                info: CopyInfo {
                    format: CopyFormat::Binary,
                    column_formats: vec![1, 1]
                }
            }]
        );
    }

    #[test]
    fn copy_out_data_are_bounded_events() {
        let mut cfg = ClientConfig::new("app");
        cfg.max_events = 2;
        let mut c = conn(cfg);
        let mut b = login_tail();
        c.handle_input(Instant::ZERO, &mut b).unwrap();
        while c.poll_event().is_some() {}
        while !b.is_empty() {
            c.handle_input(Instant::ZERO, &mut b).unwrap();
            while c.poll_event().is_some() {}
        }
        c.query("COPY t TO STDOUT").unwrap();
        let mut input = BytesMut::from(&copy_out_bytes()[..]);
        c.handle_input(Instant::ZERO, &mut input).unwrap();
        assert!(!c.wants_read() && !input.is_empty(), "stops at max_events");
        let mut n = 0;
        while !input.is_empty() || n == 0 {
            while c.poll_event().is_some() {
                n += 1;
            }
            c.handle_input(Instant::ZERO, &mut input).unwrap();
        }
        n += std::iter::from_fn(|| c.poll_event()).count();
        assert_eq!(n, 6);
    }

    #[test]
    fn copy_in_sends_data_and_holds_later_queries_until_it_is_done() {
        let mut c = ready();
        assert_eq!(c.copy_data(&b"x"[..]), Err(ClientError::NotInCopyIn));
        let q = c.copy_in("COPY t FROM STDIN").unwrap();
        let next = c.query("SELECT 1").unwrap();
        assert_eq!(
            messages(&sent(&mut c)),
            vec![(b'Q', b"COPY t FROM STDIN\0".to_vec())]
        );
        assert_eq!(
            c.copy_done(),
            Err(ClientError::NotInCopyIn),
            "not asked yet"
        );
        assert_eq!(
            feed(&mut c, COPY_IN_TEXT).unwrap(),
            vec![Event::CopyIn {
                id: q,
                info: text_info()
            }]
        );
        assert!(c.in_copy_in());
        c.copy_data(&b"1\ta\n2\t"[..]).unwrap();
        let big = Bytes::from(vec![b'7'; 100_000]);
        c.copy_data(big.clone()).unwrap();
        c.copy_data(&b"\\N\n"[..]).unwrap();
        c.copy_done().unwrap();
        assert!(!c.in_copy_in());
        assert_eq!(c.copy_data(&b"late"[..]), Err(ClientError::NotInCopyIn));
        assert_eq!(c.copy_fail("late"), Err(ClientError::NotInCopyIn));
        let chunks: Vec<Bytes> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert!(
            chunks
                .iter()
                .any(|b| b.as_ptr() == big.as_ptr() && b.len() == big.len()),
            "the big payload goes out as given"
        );
        let bytes: Vec<u8> = chunks.iter().flat_map(|b| b.to_vec()).collect();
        let m = messages(&bytes);
        let tags: Vec<u8> = m.iter().map(|m| m.0).collect();
        assert_eq!(tags, b"dddc", "the held query waits");
        assert_eq!(m[0].1, b"1\ta\n2\t");
        assert_eq!(m[1].1.len(), 100_000);
        let ev = feed(&mut c, COPY_2_READY).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::Complete {
                    id: q,
                    tag: "COPY 2".into()
                },
                Event::Done {
                    id: q,
                    status: TxStatus::Idle
                }
            ]
        );
        assert_eq!(
            messages(&sent(&mut c)),
            vec![(b'Q', b"SELECT 1\0".to_vec())]
        );
        assert_eq!(c.pending(), 1);
        let _ = next;
    }

    #[test]
    fn copy_fail_and_a_server_error_in_the_middle_end_the_copy_not_the_session() {
        let mut c = ready();
        let q = c.copy_in("COPY t FROM STDIN").unwrap();
        feed(&mut c, COPY_IN_TEXT).unwrap();
        c.copy_data(&b"1\ta\n"[..]).unwrap();
        c.copy_fail("nope\0ignored").unwrap();
        let m = messages(&sent(&mut c));
        assert_eq!(m[2], (b'f', b"nope\0".to_vec()));
        let ev = feed(&mut c, &copy_fail_answer("nope")).unwrap();
        assert!(
            matches!(&ev[0], Event::Error { id, error } if *id == q && error.code == "57014" && error.message == "COPY from stdin failed: nope")
        );
        assert_eq!(
            ev[1],
            Event::Done {
                id: q,
                status: TxStatus::Idle
            }
        );

        // A bad row: the server fails the COPY while data still flows.
        let q = c.copy_in("COPY t FROM STDIN").unwrap();
        feed(&mut c, COPY_IN_TEXT).unwrap();
        c.copy_data(&b"x\ty\n"[..]).unwrap();
        let mut b = BytesMut::new();
        backend::error_response(
            &mut b,
            "ERROR",
            "22P02",
            "invalid input syntax for type integer: \"x\"",
        );
        let ev = feed(&mut c, &b).unwrap();
        assert!(matches!(&ev[0], Event::Error { id, error } if *id == q && error.code == "22P02"));
        assert_eq!(c.copy_data(&b"more"[..]), Err(ClientError::NotInCopyIn));
        assert_eq!(
            messages(&sent(&mut c))
                .iter()
                .map(|m| m.0)
                .collect::<Vec<_>>(),
            b"Qd",
            "no Sync in the simple protocol"
        );
        feed(&mut c, b"Z\0\0\0\x05I").unwrap();
        let s = c.query("SELECT 1").unwrap();
        assert_eq!(messages(&sent(&mut c))[0].0, b'Q');
        assert!(!c.is_closed());
        let _ = s;
    }

    #[test]
    fn copy_in_through_the_extended_protocol_sends_the_sync_the_copy_ate() {
        let mut c = ready();
        let q = c.execute("COPY t FROM STDIN", &[]).unwrap();
        sent(&mut c);
        let mut b = BytesMut::from(&b"1\0\0\0\x042\0\0\0\x04n\0\0\0\x04"[..]);
        b.extend_from_slice(COPY_IN_TEXT);
        assert_eq!(
            feed(&mut c, &b).unwrap(),
            vec![Event::CopyIn {
                id: q,
                info: text_info()
            }]
        );
        c.copy_data(&b"1\ta\n"[..]).unwrap();
        c.copy_done().unwrap();
        let tags: Vec<u8> = messages(&sent(&mut c)).iter().map(|m| m.0).collect();
        assert_eq!(tags, b"dcS");
        let ev = feed(&mut c, COPY_2_READY).unwrap();
        assert_eq!(
            ev[1],
            Event::Done {
                id: q,
                status: TxStatus::Idle
            }
        );

        // The server fails it mid-stream: it skips to a Sync, which we send then.
        let q = c.execute("COPY t FROM STDIN", &[]).unwrap();
        sent(&mut c);
        feed(&mut c, &b).unwrap();
        c.copy_data(&b"x\n"[..]).unwrap();
        let mut e = BytesMut::new();
        backend::error_response(&mut e, "ERROR", "22P02", "bad");
        feed(&mut c, &e).unwrap();
        let tags: Vec<u8> = messages(&sent(&mut c)).iter().map(|m| m.0).collect();
        assert_eq!(tags, b"dS");
        let ev = feed(&mut c, b"Z\0\0\0\x05I").unwrap();
        assert_eq!(
            ev,
            vec![Event::Done {
                id: q,
                status: TxStatus::Idle
            }]
        );
        // Failed by us: CopyFail, then the Sync.
        c.execute("COPY t FROM STDIN", &[]).unwrap();
        sent(&mut c);
        feed(&mut c, &b).unwrap();
        c.copy_fail("stop").unwrap();
        let tags: Vec<u8> = messages(&sent(&mut c)).iter().map(|m| m.0).collect();
        assert_eq!(tags, b"fS");
    }

    #[test]
    fn closing_in_the_middle_of_copy_data_fails_the_copy_first() {
        let mut c = ready();
        c.copy_in("COPY t FROM STDIN").unwrap();
        c.query("SELECT 1").unwrap();
        feed(&mut c, COPY_IN_TEXT).unwrap();
        sent(&mut c);
        c.copy_data(&b"1\ta\n"[..]).unwrap();
        c.close();
        let tags: Vec<u8> = messages(&sent(&mut c)).iter().map(|m| m.0).collect();
        assert_eq!(tags, b"dfX", "the held query is not sent");
        assert_eq!(c.copy_done(), Err(ClientError::Closed));
    }

    #[test]
    fn copy_ins_queue_one_behind_the_other() {
        let mut c = conn(ClientConfig::new("app"));
        sent(&mut c);
        // Issued during the login: held, then released one COPY at a time.
        let a = c.copy_in("COPY a FROM STDIN").unwrap();
        let b = c.copy_in("COPY b FROM STDIN").unwrap();
        let s = c.query("SELECT 1").unwrap();
        feed(&mut c, &login_tail()).unwrap();
        assert_eq!(
            messages(&sent(&mut c)),
            vec![(b'Q', b"COPY a FROM STDIN\0".to_vec())]
        );
        // `a` fails before any data (no such table): `b` goes out after its Done.
        let mut e = BytesMut::new();
        backend::error_response(&mut e, "ERROR", "42P01", "relation \"a\" does not exist");
        assert!(sent(&mut c).is_empty());
        let ev = feed(&mut c, &e).unwrap();
        assert!(matches!(&ev[0], Event::Error { id, .. } if *id == a));
        assert!(sent(&mut c).is_empty());
        feed(&mut c, b"Z\0\0\0\x05I").unwrap();
        assert_eq!(
            messages(&sent(&mut c)),
            vec![(b'Q', b"COPY b FROM STDIN\0".to_vec())]
        );
        assert_eq!(
            feed(&mut c, COPY_IN_TEXT).unwrap(),
            vec![Event::CopyIn {
                id: b,
                info: text_info()
            }]
        );
        c.copy_done().unwrap();
        assert_eq!(messages(&sent(&mut c)), vec![(b'c', vec![])]);
        feed(&mut c, COPY_2_READY).unwrap();
        assert_eq!(
            messages(&sent(&mut c)),
            vec![(b'Q', b"SELECT 1\0".to_vec())]
        );
        let _ = s;
    }

    #[test]
    fn copy_in_with_queries_sent_behind_it_or_copy_both_fail_the_connection() {
        // Issued as plain queries: both sent, the second would be read as COPY data.
        let mut c = ready();
        c.query("COPY t FROM STDIN").unwrap();
        c.query("SELECT 1").unwrap();
        sent(&mut c);
        let mut input = BytesMut::from(COPY_IN_TEXT);
        assert_eq!(
            c.handle_input(Instant::ZERO, &mut input),
            Err(ClientError::CopyInPipelined)
        );
        assert!(c.is_closed());
        assert_eq!(c.copy_done(), Err(ClientError::Closed));
        // Alone, a plain query's COPY FROM STDIN works, and holds what comes after it.
        let mut c = ready();
        let q = c.query("COPY t FROM STDIN").unwrap();
        sent(&mut c);
        assert_eq!(
            feed(&mut c, COPY_IN_TEXT).unwrap(),
            vec![Event::CopyIn {
                id: q,
                info: text_info()
            }]
        );
        c.query("SELECT 1").unwrap();
        c.copy_done().unwrap();
        assert_eq!(messages(&sent(&mut c)), vec![(b'c', vec![])]);
        feed(&mut c, COPY_2_READY).unwrap();
        assert_eq!(messages(&sent(&mut c))[0].0, b'Q');

        let mut c = ready();
        c.query("START_REPLICATION 0/0").unwrap();
        let mut input = BytesMut::from(&b"W\0\0\0\x07\0\0\0"[..]);
        let e = c.handle_input(Instant::ZERO, &mut input).unwrap_err();
        assert_eq!(e, ClientError::CopyBoth);
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(
            c.poll_event(),
            Some(Event::Closed(Some(ClientError::CopyBoth)))
        );
        // COPY messages out of place are protocol errors.
        for bad in [&b"d\0\0\0\x05x"[..], b"c\0\0\0\x04", b"H\0\0\0\x07\x05\0\0"] {
            let mut c = ready();
            c.query("SELECT 1").unwrap();
            let mut input = BytesMut::from(bad);
            assert!(c.handle_input(Instant::ZERO, &mut input).is_err());
            assert!(c.is_closed());
        }
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
        fn copy_events_are_the_same_for_any_split(cuts in proptest::collection::vec(0usize..400, 0..5), small in any::<bool>()) {
            // The server sends what follows a CopyInResponse only once it has the data: the
            // stream is cut there too (`gates`), the cuts in between are arbitrary.
            let mut bytes = copy_out_bytes();
            bytes.extend_from_slice(COPY_IN_TEXT);
            let mut gates = vec![bytes.len()];
            bytes.extend_from_slice(COPY_2_READY);
            bytes.extend_from_slice(COPY_IN_TEXT);
            gates.push(bytes.len());
            bytes.extend_from_slice(&copy_fail_answer("stop"));
            bytes.extend_from_slice(&two_results());
            let run = |cuts: &[usize]| {
                let mut cfg = ClientConfig::new("app");
                if small {
                    cfg.max_events = 1;
                }
                let mut c = conn(cfg);
                let mut login = login_tail();
                while !login.is_empty() {
                    c.handle_input(Instant::ZERO, &mut login).unwrap();
                    while c.poll_event().is_some() {}
                }
                sent(&mut c);
                c.query("COPY x TO STDOUT").unwrap();
                c.copy_in("COPY t FROM STDIN").unwrap();
                c.copy_in("COPY t FROM STDIN").unwrap();
                c.query("q").unwrap();
                let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
                cuts.extend_from_slice(&gates);
                cuts.push(0);
                cuts.push(bytes.len());
                cuts.sort_unstable();
                let (mut ev, mut out) = (Vec::new(), Vec::new());
                let mut input = BytesMut::new();
                for w in cuts.windows(2) {
                    input.extend_from_slice(&bytes[w[0]..w[1]]);
                    loop {
                        c.handle_input(Instant::ZERO, &mut input).unwrap();
                        let mut n = 0;
                        while let Some(e) = c.poll_event() {
                            n += 1;
                            if let Event::CopyIn { id, .. } = e {
                                c.copy_data(Bytes::from(format!("{}\t{}\n", id.0, id.0))).unwrap();
                                if id.0 == 1 { c.copy_done().unwrap() } else { c.copy_fail("stop").unwrap() }
                            }
                            ev.push(e);
                        }
                        out.extend(sent(&mut c));
                        if n == 0 {
                            break;
                        }
                    }
                }
                assert!(input.is_empty());
                assert_eq!(c.pending(), 0);
                (ev, out)
            };
            let whole = run(&[]);
            prop_assert_eq!(whole.0.iter().filter(|e| matches!(e, Event::Done { .. })).count(), 4);
            prop_assert_eq!(run(&cuts), whole);
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
