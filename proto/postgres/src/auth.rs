//! Password authentication: SCRAM-SHA-256 (client and server sides) and MD5, sans-IO.
//!
//! These types compute the *payloads* of the authentication messages; framing them is the job
//! of [`crate::message`]. The SCRAM exchange, as PostgreSQL runs it (RFC 5802 with SHA-256,
//! RFC 7677; no channel binding, so the mechanism is [`SCRAM_SHA_256`], never `-PLUS`):
//!
//! ```text
//! client (ScramClient)                               server (ScramServer)
//!                                  <- AuthenticationSASL ["SCRAM-SHA-256"]
//! SASLInitialResponse("SCRAM-SHA-256", client_first())  ->
//!                                  <- AuthenticationSASLContinue(handle_client_first(..))
//! SASLResponse(handle_server_first(..))  ->
//!                                  <- AuthenticationSASLFinal(handle_client_final(..)), AuthenticationOk
//! handle_server_final(..)
//! ```
//!
//! Nothing here performs I/O or draws random numbers: callers pass the nonce bytes, at least
//! [`MIN_NONCE_BYTES`] from a cryptographically secure generator (PostgreSQL uses 18).
//!
//! Every `handle_*` method takes untrusted peer bytes: it never panics, rejects messages over
//! [`MAX_MESSAGE_LEN`] bytes, and allocates at most a small multiple of the input. The first
//! error ends the exchange: any later call returns [`AuthError::OutOfOrder`]. A call in the
//! wrong step (e.g. a second `handle_client_first`) returns [`AuthError::OutOfOrder`] too and
//! changes nothing.
//!
//! # Passwords and SASLprep
//!
//! Passwords are normalized with SASLprep (RFC 4013) as PostgreSQL's `pg_saslprep` does:
//! an ASCII password (every byte < 0x80, control characters included) is used unchanged; a
//! valid UTF-8 password is mapped (non-ASCII spaces to U+0020, "commonly mapped to nothing"
//! characters dropped), NFKC-normalized and checked for prohibited, unassigned (Unicode 3.2)
//! and badly mixed bidirectional characters; when any check fails, when the result would be
//! empty, or when the bytes are not UTF-8, the raw bytes are used, exactly as PostgreSQL does.
//! See [`saslprep`].
//!
//! # Strictness
//!
//! Messages must follow RFC 5802's grammar exactly, with PostgreSQL's choices: attributes in
//! order, none missing, none repeated, nothing trailing (PostgreSQL's server ignores extensions
//! after the nonce of client-first-message and before the proof of client-final-message; this
//! module rejects them, and no known client sends any), canonical padded base64, iteration
//! counts without sign or leading zeros. `m=` (mandatory extensions) and `a=` (authorization
//! identity) are refused with [`AuthError::Unsupported`], a `p=` channel-binding flag with
//! [`AuthError::ChannelBindingUnsupported`].
//!
//! # Example
//!
//! ```
//! use ferry_postgres::auth::{md5_password, ScramClient, ScramSecret, ScramServer};
//!
//! // MD5: the PasswordMessage payload for AuthenticationMD5Password's salt.
//! let hashed = md5_password(b"alice", b"secret", [1, 2, 3, 4]);
//! assert!(hashed.starts_with(b"md5"));
//!
//! // SCRAM: the server keeps only the secret (pg_authid's format).
//! let secret = ScramSecret::from_password(b"secret", b"0123456789abcdef", 4096);
//! let secret: ScramSecret = secret.to_string().parse()?;
//! let mut server = ScramServer::new(secret, &[7; 18]);
//! let mut client = ScramClient::new(b"secret", &[9; 18]);
//! let server_first = server.handle_client_first(&client.client_first())?;
//! let client_final = client.handle_server_first(&server_first)?;
//! let server_final = server.handle_client_final(&client_final)?;
//! client.handle_server_final(&server_final)?;
//! assert!(client.is_authenticated() && server.is_authenticated());
//! # Ok::<(), ferry_postgres::auth::AuthError>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SASL mechanism name this module implements.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// PostgreSQL's default iteration count (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The highest iteration count [`ScramClient`] accepts from a server: a hostile server could
/// otherwise make the client burn CPU for minutes (PBKDF2 runs `i` HMACs).
pub const MAX_CLIENT_ITERATIONS: u32 = 10_000_000;

/// The least number of random bytes a caller should give as nonce (PostgreSQL's
/// `SCRAM_RAW_NONCE_LEN`). Fewer still work but weaken the exchange's replay protection.
pub const MIN_NONCE_BYTES: usize = 18;

/// The longest SCRAM message accepted from a peer. Real messages are about 100 bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// The length of SCRAM-SHA-256's keys, signatures and proofs.
const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why an authentication step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's message does not follow the SCRAM grammar; says what is wrong.
    Malformed(&'static str),
    /// The nonce is not the one of this exchange (server-first's does not extend the
    /// client's, or client-final's is not client's + server's).
    NonceMismatch,
    /// The client's proof is wrong: wrong password (server side).
    WrongPassword,
    /// The server's signature is wrong: the server does not know the password (client side).
    BadServerSignature,
    /// The server ended the exchange with `e=<value>`; the value.
    Server(String),
    /// The client asked for channel binding (`p=` flag, or a `c=` that does not match
    /// its gs2 header); only `SCRAM-SHA-256` without channel binding is offered.
    ChannelBindingUnsupported,
    /// The peer requires a feature that is not supported: a mandatory extension (`m=`) or an
    /// authorization identity (`a=`).
    Unsupported(&'static str),
    /// The server's iteration count is 0 or above [`MAX_CLIENT_ITERATIONS`].
    IterationCount(u64),
    /// A method was called in the wrong step, or after the exchange ended or failed.
    OutOfOrder,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed(what) => write!(f, "malformed SCRAM message ({what})"),
            AuthError::NonceMismatch => f.write_str("invalid SCRAM response (nonce mismatch)"),
            AuthError::WrongPassword => {
                f.write_str("password authentication failed (bad SCRAM proof)")
            }
            AuthError::BadServerSignature => f.write_str("incorrect SCRAM server signature"),
            AuthError::Server(e) => write!(f, "error received from server in SCRAM exchange: {e}"),
            AuthError::ChannelBindingUnsupported => {
                f.write_str("SCRAM channel binding requested, but it is not supported")
            }
            AuthError::Unsupported(what) => write!(f, "unsupported SCRAM feature: {what}"),
            AuthError::IterationCount(i) => write!(
                f,
                "SCRAM iteration count {i} out of range (1..={MAX_CLIENT_ITERATIONS})"
            ),
            AuthError::OutOfOrder => f.write_str("SCRAM message out of order"),
        }
    }
}

impl std::error::Error for AuthError {}

// ---------------------------------------------------------------------------------------------
// MD5

/// The payload of the `PasswordMessage` answering `AuthenticationMD5Password` with `salt`:
/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`, as libpq computes it.
pub fn md5_password(user: &[u8], password: &[u8], salt: [u8; 4]) -> [u8; 35] {
    md5_password_from_secret(&md5_secret(user, password), salt)
}

/// The MD5 secret PostgreSQL stores in `pg_authid.rolpassword`: `"md5" + hex(md5(password +
/// user))`.
pub fn md5_secret(user: &[u8], password: &[u8]) -> [u8; 35] {
    let mut h = Md5::new();
    h.update(password);
    h.update(user);
    md5_hex(&h.finalize())
}

/// [`md5_password`] from a stored secret ([`md5_secret`]) instead of the password, as the
/// server computes the expected answer. Only bytes 3.. (the hex digest) of `secret` are used.
pub fn md5_password_from_secret(secret: &[u8; 35], salt: [u8; 4]) -> [u8; 35] {
    let mut h = Md5::new();
    h.update(&secret[3..]);
    h.update(salt);
    md5_hex(&h.finalize())
}

/// Whether a client's MD5 `PasswordMessage` payload (without its NUL terminator) equals the
/// expected one, in constant time.
pub fn md5_verify(expected: &[u8; 35], response: &[u8]) -> bool {
    bool::from(expected[..].ct_eq(response))
}

fn md5_hex(digest: &[u8]) -> [u8; 35] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 35];
    out[..3].copy_from_slice(b"md5");
    for (i, b) in digest.iter().take(16).enumerate() {
        out[3 + 2 * i] = HEX[usize::from(b >> 4)];
        out[4 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// SASLprep and key derivation

/// SASLprep (RFC 4013) of a password as PostgreSQL's `pg_saslprep` and libpq use it: ASCII
/// passwords unchanged; valid UTF-8 normalized; the raw bytes whenever normalization fails
/// (prohibited or unassigned characters, bad bidirectional text, an empty result, not UTF-8).
pub fn saslprep(password: &[u8]) -> Cow<'_, [u8]> {
    if password.is_ascii() {
        return Cow::Borrowed(password);
    }
    let Ok(s) = std::str::from_utf8(password) else {
        return Cow::Borrowed(password);
    };
    match stringprep::saslprep(s) {
        Ok(prepped) if !prepped.is_empty() => match prepped {
            Cow::Borrowed(p) => Cow::Borrowed(p.as_bytes()),
            Cow::Owned(p) => Cow::Owned(p.into_bytes()),
        },
        _ => Cow::Borrowed(password),
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC accepts keys of any length: this never fails.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// SaltedPassword, ClientKey and ServerKey of a (SASLprepped) password.
fn derive_keys(password: &[u8], salt: &[u8], iterations: u32) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    let mut salted = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations.max(1), &mut salted);
    let client_key = hmac(&salted, &[b"Client Key"]);
    let server_key = hmac(&salted, &[b"Server Key"]);
    salted.fill(0);
    (client_key, server_key)
}

// ---------------------------------------------------------------------------------------------
// Parsing helpers

/// RFC 5802 `printable`: %x21-2B / %x2D-7E.
fn is_printable(s: &[u8]) -> bool {
    s.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn check_len(data: &[u8]) -> Result<(), AuthError> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(AuthError::Malformed("message too long"));
    }
    Ok(())
}

/// The value of `part` if it is `<name>=<value>`, else `Malformed(err)`.
fn attr<'a>(part: Option<&'a [u8]>, name: u8, err: &'static str) -> Result<&'a [u8], AuthError> {
    match part {
        Some([n, b'=', value @ ..]) if *n == name => Ok(value),
        _ => Err(AuthError::Malformed(err)),
    }
}

fn no_more(mut parts: impl Iterator, err: &'static str) -> Result<(), AuthError> {
    match parts.next() {
        None => Ok(()),
        Some(_) => Err(AuthError::Malformed(err)),
    }
}

fn b64_decode(value: &[u8], err: &'static str) -> Result<Vec<u8>, AuthError> {
    BASE64.decode(value).map_err(|_| AuthError::Malformed(err))
}

fn b64_key(value: &[u8], err: &'static str) -> Result<[u8; KEY_LEN], AuthError> {
    // 44 characters encode 32 bytes; refuse longer input before decoding it.
    if value.len() != 44 {
        return Err(AuthError::Malformed(err));
    }
    let mut out = [0u8; KEY_LEN];
    match BASE64.decode_slice(value, &mut out) {
        Ok(KEY_LEN) => Ok(out),
        _ => Err(AuthError::Malformed(err)),
    }
}

/// RFC 5802 `posit-number` (no sign, no leading zero) as u64, saturating on overflow.
fn posit_number(value: &[u8]) -> Option<u64> {
    match value {
        [b'1'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => {
            Some(value.iter().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            }))
        }
        _ => None,
    }
}

/// RFC 5802 `saslname`, possibly empty (libpq sends `n=`): UTF-8 without NUL or `,`, with `=`
/// only in the escapes `=2C` and `=3D`.
fn is_saslname(name: &[u8]) -> bool {
    if std::str::from_utf8(name).is_err() || name.contains(&0) {
        return false;
    }
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'=' {
            match name.get(i + 1..i + 3) {
                Some(b"2C") | Some(b"3D") => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

fn escape_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn validate_nonce(nonce: &str) -> Result<(), AuthError> {
    if nonce.is_empty() || !is_printable(nonce.as_bytes()) {
        return Err(AuthError::Malformed(
            "nonce must be non-empty printable ASCII without ','",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Client

enum Credential {
    /// The SASLprepped password.
    Password(Vec<u8>),
    /// ClientKey and ServerKey, from [`ScramServer::client_key`] and a secret.
    Keys([u8; KEY_LEN], [u8; KEY_LEN]),
    /// Used.
    Gone,
}

enum ClientState {
    /// `client_first` sent (or about to be); waiting for server-first-message.
    Start,
    /// client-final-message sent; waiting for server-final-message.
    Final { server_signature: [u8; KEY_LEN] },
    /// The server's signature checked out.
    Done,
    /// An error ended the exchange.
    Failed,
}

/// The client side of a SCRAM-SHA-256 exchange (what libpq does), without channel binding.
///
/// ```
/// use ferry_postgres::auth::{AuthError, ScramClient, ScramSecret, ScramServer};
///
/// // Nonce bytes come from the caller's CSPRNG (fixed here for the example).
/// let mut client = ScramClient::new(b"pencil", &[0x42; 18]);
/// let secret = ScramSecret::from_password(b"pencil", b"salt-from-pg_authid", 4096);
/// let mut server = ScramServer::new(secret, &[0x17; 18]);
///
/// // SASLInitialResponse payload, mechanism "SCRAM-SHA-256".
/// let client_first = client.client_first();
/// assert!(client_first.starts_with(b"n,,n=,r="));
/// // AuthenticationSASLContinue payload.
/// let server_first = server.handle_client_first(&client_first)?;
/// // SASLResponse payload.
/// let client_final = client.handle_server_first(&server_first)?;
/// assert!(client_final.starts_with(b"c=biws,r="));
/// // AuthenticationSASLFinal payload: the client checks the server knew the password.
/// let server_final = server.handle_client_final(&client_final)?;
/// client.handle_server_final(&server_final)?;
/// assert!(client.is_authenticated());
///
/// // A wrong password fails on the server side.
/// let mut client = ScramClient::new(b"wrong", &[0x42; 18]);
/// let secret = ScramSecret::from_password(b"pencil", b"salt-from-pg_authid", 4096);
/// let mut server = ScramServer::new(secret, &[0x17; 18]);
/// let server_first = server.handle_client_first(&client.client_first())?;
/// let client_final = client.handle_server_first(&server_first)?;
/// assert_eq!(server.handle_client_final(&client_final), Err(AuthError::WrongPassword));
/// # Ok::<(), AuthError>(())
/// ```
pub struct ScramClient {
    /// The SASLprepped password or the keys; cleared once used.
    credential: Credential,
    nonce: String,
    /// The escaped SCRAM user name (`n=`); PostgreSQL ignores it, libpq sends it empty.
    username: String,
    state: ClientState,
    /// Keys of an earlier login with the same password (see [`ScramClient::with_cached_keys`]),
    /// then the keys this exchange used.
    keys: Option<DerivedKeys>,
}

/// What PBKDF2 made of a password for one salt and iteration count: ClientKey and ServerKey.
///
/// Deriving them costs `2 × iterations` HMACs (about 10 ms of CPU for PostgreSQL's 4096 on a
/// core without SHA extensions), on every login. A client that logs in again with the same
/// password (a pooler opening server connections) can keep them from
/// [`ScramClient::derived_keys`] and hand them to the next login with
/// [`ScramClient::with_cached_keys`]. They are as secret as the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedKeys {
    salt: Vec<u8>,
    iterations: u32,
    client_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("nonce", &self.nonce)
            .field("authenticated", &self.is_authenticated())
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A client for `password`, its nonce the base64 of `nonce_bytes` (give at least
    /// [`MIN_NONCE_BYTES`] random bytes; an empty slice makes a nonce servers reject).
    pub fn new(password: &[u8], nonce_bytes: &[u8]) -> ScramClient {
        ScramClient::from_parts(password, BASE64.encode(nonce_bytes))
    }

    /// A client with the nonce string itself (for test vectors and deterministic tests): it
    /// must be non-empty printable ASCII without `,`.
    pub fn with_nonce(password: &[u8], nonce: &str) -> Result<ScramClient, AuthError> {
        validate_nonce(nonce)?;
        Ok(ScramClient::from_parts(password, nonce.to_owned()))
    }

    fn from_parts(password: &[u8], nonce: String) -> ScramClient {
        ScramClient {
            credential: Credential::Password(saslprep(password).into_owned()),
            nonce,
            username: String::new(),
            state: ClientState::Start,
            keys: None,
        }
    }

    /// A client that knows the keys instead of the password: `client_key` recovered by
    /// [`ScramServer::client_key`] from a client that authenticated against a secret, and that
    /// secret's `server_key`. This is SCRAM pass-through (as PgBouncer does): a proxy holding
    /// only the secret logs its clients in to an upstream server that stores the *same* secret
    /// (same salt and iterations; otherwise the upstream rejects the proof). The salt and
    /// iteration count the server sends are checked for syntax but not used: no PBKDF2 runs.
    pub fn from_keys(
        client_key: [u8; 32],
        server_key: [u8; 32],
        nonce_bytes: &[u8],
    ) -> ScramClient {
        ScramClient {
            credential: Credential::Keys(client_key, server_key),
            nonce: BASE64.encode(nonce_bytes),
            username: String::new(),
            state: ClientState::Start,
            keys: None,
        }
    }

    /// Reuses the keys an earlier login with the same password derived: when the server's
    /// salt and iteration count are the ones they were derived for, no PBKDF2 runs (else it
    /// runs as usual). Keys of another password make the server refuse the proof.
    pub fn with_cached_keys(mut self, keys: DerivedKeys) -> ScramClient {
        self.keys = Some(keys);
        self
    }

    /// The keys this exchange used (derived or reused), once the server-first-message was
    /// handled; keep them for [`with_cached_keys`](Self::with_cached_keys) after the login
    /// succeeded. `None` for a client made [`from_keys`](Self::from_keys).
    pub fn derived_keys(&self) -> Option<&DerivedKeys> {
        self.keys
            .as_ref()
            .filter(|_| !matches!(self.state, ClientState::Start))
    }

    /// Sends `user` as the SCRAM user name (`n=`, escaped) instead of an empty one. PostgreSQL
    /// ignores it (the user is the startup packet's); other SCRAM servers may not.
    pub fn with_username(mut self, user: &str) -> ScramClient {
        self.username = escape_saslname(user);
        self
    }

    /// The client-first-message: the `SASLInitialResponse` payload, `n,,n=,r=<nonce>`.
    pub fn client_first(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.bare_len());
        out.extend_from_slice(b"n,,");
        self.push_bare(&mut out);
        out
    }

    fn bare_len(&self) -> usize {
        5 + self.username.len() + self.nonce.len()
    }

    /// client-first-message-bare: `n=<user>,r=<nonce>`.
    fn push_bare(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"n=");
        out.extend_from_slice(self.username.as_bytes());
        out.extend_from_slice(b",r=");
        out.extend_from_slice(self.nonce.as_bytes());
    }

    /// Takes the server-first-message (the `AuthenticationSASLContinue` payload) and returns
    /// the client-final-message (the `SASLResponse` payload), `c=biws,r=<nonce>,p=<proof>`.
    ///
    /// Runs PBKDF2 with the server's iteration count, at most [`MAX_CLIENT_ITERATIONS`].
    pub fn handle_server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, ClientState::Start) {
            return Err(AuthError::OutOfOrder);
        }
        self.state = ClientState::Failed;
        check_len(data)?;
        let mut parts = data.split(|&b| b == b',');
        let first = parts.next();
        if let Some([b'm', b'=', ..]) = first {
            return Err(AuthError::Unsupported("mandatory extension (m=)"));
        }
        let nonce = attr(first, b'r', "expected r= in server-first-message")?;
        if nonce.len() <= self.nonce.len()
            || !nonce.starts_with(self.nonce.as_bytes())
            || !is_printable(nonce)
        {
            return Err(AuthError::NonceMismatch);
        }
        let salt = attr(parts.next(), b's', "expected s= in server-first-message")?;
        let salt = b64_decode(salt, "invalid salt")?;
        if salt.is_empty() {
            return Err(AuthError::Malformed("empty salt"));
        }
        let iterations = attr(parts.next(), b'i', "expected i= in server-first-message")?;
        let iterations = match iterations {
            b"0" => 0,
            _ => posit_number(iterations).ok_or(AuthError::Malformed("invalid iteration count"))?,
        };
        no_more(parts, "garbage at end of server-first-message")?;
        let iterations = match u32::try_from(iterations) {
            Ok(i) if (1..=MAX_CLIENT_ITERATIONS).contains(&i) => i,
            _ => return Err(AuthError::IterationCount(iterations)),
        };

        let (client_key, server_key) =
            match std::mem::replace(&mut self.credential, Credential::Gone) {
                Credential::Password(mut password) => {
                    let cached = self
                        .keys
                        .as_ref()
                        .filter(|k| k.iterations == iterations && k.salt == salt);
                    let keys = match cached {
                        Some(k) => (k.client_key, k.server_key),
                        None => derive_keys(&password, &salt, iterations),
                    };
                    password.fill(0);
                    self.keys = Some(DerivedKeys {
                        salt,
                        iterations,
                        client_key: keys.0,
                        server_key: keys.1,
                    });
                    keys
                }
                Credential::Keys(client_key, server_key) => (client_key, server_key),
                // The state machine runs this once (state Start → Final or Failed).
                Credential::Gone => return Err(AuthError::OutOfOrder),
            };
        let stored_key = sha256(&client_key);

        let mut out = Vec::with_capacity(9 + nonce.len() + 3 + 44);
        out.extend_from_slice(b"c=biws,r=");
        out.extend_from_slice(nonce);
        let mut bare = Vec::with_capacity(self.bare_len());
        self.push_bare(&mut bare);
        let auth_message: [&[u8]; 5] = [&bare, b",", data, b",", &out];
        let client_signature = hmac(&stored_key, &auth_message);
        let server_signature = hmac(&server_key, &auth_message);
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature) {
            *p ^= s;
        }
        out.extend_from_slice(b",p=");
        let len = out.len();
        out.resize(len + 44, 0);
        // 32 bytes always encode to exactly 44 characters.
        let _ = BASE64.encode_slice(proof, &mut out[len..]);
        self.state = ClientState::Final { server_signature };
        Ok(out)
    }

    /// Takes the server-final-message (the `AuthenticationSASLFinal` payload) and checks the
    /// server's signature (`v=`), which proves the server knows the password. `e=<error>`
    /// gives [`AuthError::Server`].
    pub fn handle_server_final(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let ClientState::Final { server_signature } = self.state else {
            return Err(AuthError::OutOfOrder);
        };
        self.state = ClientState::Failed;
        check_len(data)?;
        let mut parts = data.split(|&b| b == b',');
        let first = parts.next();
        if let Some([b'e', b'=', error @ ..]) = first {
            return Err(AuthError::Server(
                String::from_utf8_lossy(error).into_owned(),
            ));
        }
        let verifier = attr(first, b'v', "expected v= or e= in server-final-message")?;
        let verifier = b64_key(verifier, "malformed server signature")?;
        no_more(parts, "garbage at end of server-final-message")?;
        if !bool::from(verifier.ct_eq(&server_signature)) {
            return Err(AuthError::BadServerSignature);
        }
        self.state = ClientState::Done;
        Ok(())
    }

    /// Whether the exchange completed and the server proved it knows the password.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }
}

// ---------------------------------------------------------------------------------------------
// Secret

/// A SCRAM-SHA-256 verifier, as PostgreSQL stores it in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64). It lets a server check
/// a client's proof without knowing the password. `Display` and [`FromStr`] use that format.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count (at least 1).
    pub iterations: u32,
    /// The salt (PostgreSQL makes 16 random bytes).
    pub salt: Vec<u8>,
    /// StoredKey: `SHA-256(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// ServerKey: `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// The secret of `password` (SASLprepped first, as PostgreSQL does) with `salt` and
    /// `iterations` (0 is taken as 1, as PostgreSQL's PBKDF2 loop does). PostgreSQL draws 16
    /// random bytes of salt and [`DEFAULT_ITERATIONS`].
    ///
    /// As with any PBKDF2-HMAC, passwords that differ only in trailing NUL bytes (up to 64
    /// bytes long) give the same keys; PostgreSQL's passwords cannot contain NUL.
    pub fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> ScramSecret {
        let iterations = iterations.max(1);
        let (client_key, server_key) = derive_keys(&saslprep(password), salt, iterations);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        }
    }

    /// A secret for a user that does not exist, so that the exchange runs as for a real user
    /// and fails only at the proof ([`AuthError::WrongPassword`]), as PostgreSQL's "mock"
    /// authentication does: the salt is derived from `user` and `installation_secret` (random
    /// bytes drawn once per installation), so it stays the same across attempts without
    /// revealing that the user is unknown; the keys are zero, which no password produces.
    pub fn mock(user: &[u8], installation_secret: &[u8]) -> ScramSecret {
        let mut h = Sha256::new();
        h.update(user);
        h.update(installation_secret);
        let digest = h.finalize();
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..16].to_vec(),
            stored_key: [0; KEY_LEN],
            server_key: [0; KEY_LEN],
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. Rejects an
    /// iteration count of 0 or above `u32::MAX`, an empty salt, keys that are not 32 bytes, and
    /// anything non-canonical (extra separators, whitespace, unpadded base64).
    pub fn parse(s: &str) -> Result<ScramSecret, AuthError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(AuthError::Malformed(
                "secret must start with SCRAM-SHA-256$",
            ))?;
        let (iter_salt, keys) = rest
            .split_once('$')
            .ok_or(AuthError::Malformed("secret: expected $ before keys"))?;
        let (iterations, salt) = iter_salt
            .split_once(':')
            .ok_or(AuthError::Malformed("secret: expected <iterations>:<salt>"))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(AuthError::Malformed(
            "secret: expected <StoredKey>:<ServerKey>",
        ))?;
        let iterations = posit_number(iterations.as_bytes())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or(AuthError::Malformed("secret: invalid iteration count"))?;
        let salt = b64_decode(salt.as_bytes(), "secret: invalid salt")?;
        if salt.is_empty() {
            return Err(AuthError::Malformed("secret: empty salt"));
        }
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: b64_key(stored_key.as_bytes(), "secret: invalid StoredKey")?,
            server_key: b64_key(server_key.as_bytes(), "secret: invalid ServerKey")?,
        })
    }
}

impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCRAM_SHA_256}${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

impl FromStr for ScramSecret {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<ScramSecret, AuthError> {
        ScramSecret::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Server

enum ServerState {
    /// Waiting for client-first-message.
    Start,
    /// server-first-message sent; waiting for client-final-message.
    Final {
        /// client-first-message-bare, as received.
        client_first_bare: Vec<u8>,
        /// server-first-message, as sent.
        server_first: Vec<u8>,
        /// The expected `c=` value: base64 of the client's gs2 header (`n,,` or `y,,`).
        cbind: &'static [u8],
        /// Length of the combined nonce `client + server` (its bytes are in `server_first`
        /// after `r=`).
        nonce_len: usize,
    },
    /// The client's proof checked out; the ClientKey it revealed.
    Done { client_key: [u8; KEY_LEN] },
    /// An error ended the exchange.
    Failed,
}

/// The server side of a SCRAM-SHA-256 exchange (what PostgreSQL's backend does), without
/// channel binding, checking the client against a [`ScramSecret`].
///
/// To not reveal which users exist, run the exchange for an unknown user too, with
/// [`ScramSecret::mock`]: it fails in [`ScramServer::handle_client_final`] with
/// [`AuthError::WrongPassword`] like a wrong password.
pub struct ScramServer {
    secret: ScramSecret,
    nonce: String,
    state: ServerState,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("secret", &self.secret)
            .field("nonce", &self.nonce)
            .field("authenticated", &self.is_authenticated())
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// A server checking clients against `secret`, its nonce part the base64 of `nonce_bytes`
    /// (give at least [`MIN_NONCE_BYTES`] random bytes).
    pub fn new(secret: ScramSecret, nonce_bytes: &[u8]) -> ScramServer {
        ScramServer {
            secret,
            nonce: BASE64.encode(nonce_bytes),
            state: ServerState::Start,
        }
    }

    /// A server with its nonce part given as a string (for test vectors and deterministic
    /// tests): non-empty printable ASCII without `,`.
    pub fn with_nonce(secret: ScramSecret, nonce: &str) -> Result<ScramServer, AuthError> {
        validate_nonce(nonce)?;
        Ok(ScramServer {
            secret,
            nonce: nonce.to_owned(),
            state: ServerState::Start,
        })
    }

    /// Takes the client-first-message (the `SASLInitialResponse` data) and returns the
    /// server-first-message (the `AuthenticationSASLContinue` payload),
    /// `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`.
    ///
    /// Accepts the gs2 headers `n,,` and `y,,`; refuses `p=` (channel binding), `a=`
    /// (authorization identity) and `m=` (mandatory extension). The user name (`n=`) is
    /// checked for syntax and otherwise ignored, as PostgreSQL does (the user is the startup
    /// packet's).
    pub fn handle_client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, ServerState::Start) {
            return Err(AuthError::OutOfOrder);
        }
        self.state = ServerState::Failed;
        check_len(data)?;
        let mut parts = data.split(|&b| b == b',');
        let cbind: &'static [u8] = match parts.next() {
            Some(b"n") => b"biws",
            Some(b"y") => b"eSws",
            Some([b'p', b'=', ..]) => return Err(AuthError::ChannelBindingUnsupported),
            _ => return Err(AuthError::Malformed("unexpected channel-binding flag")),
        };
        match parts.next() {
            Some([]) => {}
            Some([b'a', b'=', ..]) => {
                return Err(AuthError::Unsupported("authorization identity (a=)"))
            }
            _ => {
                return Err(AuthError::Malformed(
                    "expected , after the channel-binding flag",
                ))
            }
        }
        let Some(bare) = data.get(3..) else {
            return Err(AuthError::Malformed("missing client-first-message-bare"));
        };
        let user = parts.next();
        if let Some([b'm', b'=', ..]) = user {
            return Err(AuthError::Unsupported("mandatory extension (m=)"));
        }
        let user = attr(user, b'n', "expected n= in client-first-message")?;
        if !is_saslname(user) {
            return Err(AuthError::Malformed("invalid user name"));
        }
        let client_nonce = attr(parts.next(), b'r', "expected r= in client-first-message")?;
        if client_nonce.is_empty() || !is_printable(client_nonce) {
            return Err(AuthError::Malformed(
                "non-printable characters in SCRAM nonce",
            ));
        }
        no_more(parts, "garbage at end of client-first-message")?;

        let salt = BASE64.encode(&self.secret.salt);
        let iterations = self.secret.iterations.to_string();
        let nonce_len = client_nonce.len() + self.nonce.len();
        let mut server_first =
            Vec::with_capacity(2 + nonce_len + 3 + salt.len() + 3 + iterations.len());
        server_first.extend_from_slice(b"r=");
        server_first.extend_from_slice(client_nonce);
        server_first.extend_from_slice(self.nonce.as_bytes());
        server_first.extend_from_slice(b",s=");
        server_first.extend_from_slice(salt.as_bytes());
        server_first.extend_from_slice(b",i=");
        server_first.extend_from_slice(iterations.as_bytes());
        let out = server_first.clone();
        self.state = ServerState::Final {
            client_first_bare: bare.to_vec(),
            server_first,
            cbind,
            nonce_len,
        };
        Ok(out)
    }

    /// Takes the client-final-message (the `SASLResponse` data), checks its channel binding
    /// (`c=`, base64 of the gs2 header sent first), nonce and proof (in constant time), and
    /// returns the server-final-message (the `AuthenticationSASLFinal` payload), `v=<signature>`.
    /// A wrong proof gives [`AuthError::WrongPassword`].
    pub fn handle_client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let (client_first_bare, server_first, cbind, nonce_len) =
            match std::mem::replace(&mut self.state, ServerState::Failed) {
                ServerState::Final {
                    client_first_bare,
                    server_first,
                    cbind,
                    nonce_len,
                } => (client_first_bare, server_first, cbind, nonce_len),
                other => {
                    self.state = other;
                    return Err(AuthError::OutOfOrder);
                }
            };
        check_len(data)?;
        let mut parts = data.split(|&b| b == b',');
        let channel_binding = attr(parts.next(), b'c', "expected c= in client-final-message")?;
        if channel_binding != cbind {
            return Err(AuthError::ChannelBindingUnsupported);
        }
        let nonce = attr(parts.next(), b'r', "expected r= in client-final-message")?;
        if nonce != &server_first[2..2 + nonce_len] {
            return Err(AuthError::NonceMismatch);
        }
        let proof_part = parts.next();
        let proof = attr(proof_part, b'p', "expected p= in client-final-message")?;
        let proof = b64_key(proof, "malformed proof in client-final-message")?;
        no_more(parts, "garbage at end of client-final-message")?;
        // c=...,r=... without ",p=<proof>" (the proof is 2 + 44 bytes plus its comma).
        let without_proof = &data[..data.len() - 47];

        let auth_message: [&[u8]; 5] =
            [&client_first_bare, b",", &server_first, b",", without_proof];
        let client_signature = hmac(&self.secret.stored_key, &auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        if !bool::from(sha256(&client_key).ct_eq(&self.secret.stored_key)) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.secret.server_key, &auth_message);
        let mut out = Vec::with_capacity(46);
        out.extend_from_slice(b"v=");
        out.extend_from_slice(BASE64.encode(server_signature).as_bytes());
        self.state = ServerState::Done { client_key };
        Ok(out)
    }

    /// Whether the client proved it knows the password.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, ServerState::Done { .. })
    }

    /// After a successful exchange, the client's ClientKey (`HMAC(SaltedPassword, "Client
    /// Key")`), which the proof reveals to the server: with the secret's `server_key` it lets
    /// [`ScramClient::from_keys`] authenticate as this user to a server holding the same
    /// secret. Treat it like a password. `None` before success.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Done { client_key } => Some(client_key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT_B64: &str = "c2FsdHNhbHQ="; // "saltsalt"

    fn client() -> ScramClient {
        ScramClient::with_nonce(b"pencil", "abc").unwrap()
    }

    fn server() -> ScramServer {
        let secret = ScramSecret::from_password(b"pencil", b"saltsalt", 2);
        ScramServer::with_nonce(secret, "XYZ").unwrap()
    }

    fn server_first_err(msg: &str) -> AuthError {
        let mut c = client();
        let err = c.handle_server_first(msg.as_bytes()).unwrap_err();
        // The first error ends the exchange.
        assert_eq!(
            c.handle_server_first(msg.as_bytes()),
            Err(AuthError::OutOfOrder)
        );
        assert_eq!(c.handle_server_final(b"v=x"), Err(AuthError::OutOfOrder));
        err
    }

    #[test]
    fn server_first_strict() {
        use AuthError::*;
        let ok = format!("r=abcXYZ,s={SALT_B64},i=2");
        assert!(client().handle_server_first(ok.as_bytes()).is_ok());
        for (msg, want) in [
            ("", Malformed("expected r= in server-first-message")),
            (
                "m=ext,r=abcd,s=c2FsdHNhbHQ=,i=1",
                Unsupported("mandatory extension (m=)"),
            ),
            ("r=abc,s=c2FsdHNhbHQ=,i=1", NonceMismatch),
            ("r=abdX,s=c2FsdHNhbHQ=,i=1", NonceMismatch),
            ("r=ab,s=c2FsdHNhbHQ=,i=1", NonceMismatch),
            ("r=abc X,s=c2FsdHNhbHQ=,i=1", NonceMismatch),
            ("r=abc\u{e9},s=c2FsdHNhbHQ=,i=1", NonceMismatch),
            (
                "s=c2FsdHNhbHQ=,r=abcd,i=1",
                Malformed("expected r= in server-first-message"),
            ),
            (
                "r=abcd,i=1,s=c2FsdHNhbHQ=",
                Malformed("expected s= in server-first-message"),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=",
                Malformed("expected i= in server-first-message"),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=1,x=y",
                Malformed("garbage at end of server-first-message"),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=1,",
                Malformed("garbage at end of server-first-message"),
            ),
            ("r=abcd,s=c2FsdHNhbHQ,i=1", Malformed("invalid salt")),
            ("r=abcd,s=c2Fs dHNhbHQ=,i=1", Malformed("invalid salt")),
            ("r=abcd,s=,i=1", Malformed("empty salt")),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=",
                Malformed("invalid iteration count"),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=+1",
                Malformed("invalid iteration count"),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=01",
                Malformed("invalid iteration count"),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=1a",
                Malformed("invalid iteration count"),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=-1",
                Malformed("invalid iteration count"),
            ),
            ("r=abcd,s=c2FsdHNhbHQ=,i=0", IterationCount(0)),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=10000001",
                IterationCount(10_000_001),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=4294967296",
                IterationCount(4_294_967_296),
            ),
            (
                "r=abcd,s=c2FsdHNhbHQ=,i=99999999999999999999999",
                IterationCount(u64::MAX),
            ),
            (
                "R=abcd,s=c2FsdHNhbHQ=,i=1",
                Malformed("expected r= in server-first-message"),
            ),
            (
                "r:abcd,s=c2FsdHNhbHQ=,i=1",
                Malformed("expected r= in server-first-message"),
            ),
        ] {
            assert_eq!(server_first_err(msg), want, "{msg:?}");
        }
        let long = format!("r=abc{},s={SALT_B64},i=1", "x".repeat(MAX_MESSAGE_LEN));
        assert_eq!(server_first_err(&long), Malformed("message too long"));
    }

    #[test]
    fn server_final_strict() {
        use AuthError::*;
        let mut s = server();
        let mut c = client();
        let sf = s.handle_client_first(&c.client_first()).unwrap();
        let cf = c.handle_server_first(&sf).unwrap();
        let good = s.handle_client_final(&cf).unwrap();
        let good = std::str::from_utf8(&good).unwrap().to_owned();
        let mut flipped = good.clone().into_bytes();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for (msg, want) in [
            ("", Malformed("expected v= or e= in server-final-message")),
            ("e=invalid-proof", Server("invalid-proof".into())),
            ("e=other-error,x=y", Server("other-error".into())),
            (&flipped, BadServerSignature),
            (
                &good[..good.len() - 1],
                Malformed("malformed server signature"),
            ),
            (&format!("{good}A"), Malformed("malformed server signature")),
            (
                &format!("{good},x=y"),
                Malformed("garbage at end of server-final-message"),
            ),
            (
                &format!("{good},"),
                Malformed("garbage at end of server-final-message"),
            ),
            ("v=", Malformed("malformed server signature")),
            (
                &good.replace("v=", "V="),
                Malformed("expected v= or e= in server-final-message"),
            ),
        ] {
            let mut c2 = client();
            c2.handle_server_first(&sf).unwrap();
            assert_eq!(c2.handle_server_final(msg.as_bytes()), Err(want), "{msg:?}");
            assert_eq!(c2.handle_server_final(good.as_bytes()), Err(OutOfOrder));
            assert!(!c2.is_authenticated());
        }
        assert_eq!(c.handle_server_final(good.as_bytes()), Ok(()));
        assert!(c.is_authenticated());
        assert_eq!(c.handle_server_final(good.as_bytes()), Err(OutOfOrder));
        assert_eq!(c.handle_server_first(&sf), Err(OutOfOrder));
    }

    #[test]
    fn calls_in_the_wrong_step_change_nothing() {
        let mut c = client();
        assert_eq!(c.handle_server_final(b"v=x"), Err(AuthError::OutOfOrder));
        let mut s = server();
        assert_eq!(s.handle_client_final(b"c=biws"), Err(AuthError::OutOfOrder));
        let server_first = s.handle_client_first(&c.client_first()).unwrap();
        let client_final = c.handle_server_first(&server_first).unwrap();
        assert_eq!(
            s.handle_client_first(b"n,,n=,r=abc"),
            Err(AuthError::OutOfOrder)
        );
        assert_eq!(
            c.handle_server_first(&server_first),
            Err(AuthError::OutOfOrder)
        );
        let server_final = s.handle_client_final(&client_final).unwrap();
        c.handle_server_final(&server_final).unwrap();
        assert_eq!(
            s.handle_client_final(&client_final),
            Err(AuthError::OutOfOrder)
        );
        assert_eq!(
            c.handle_server_final(&server_final),
            Err(AuthError::OutOfOrder)
        );
        assert!(c.is_authenticated() && s.is_authenticated());
        assert!(s.client_key().is_some());
    }

    fn client_first_err(msg: &str) -> AuthError {
        let mut s = server();
        let err = s.handle_client_first(msg.as_bytes()).unwrap_err();
        assert_eq!(
            s.handle_client_first(b"n,,n=,r=abc"),
            Err(AuthError::OutOfOrder)
        );
        err
    }

    #[test]
    fn client_first_strict() {
        use AuthError::*;
        for ok in [
            "n,,n=,r=abc",
            "y,,n=,r=abc",
            "n,,n=user,r=abc",
            "n,,n=a=2Cb=3D,r=abc",
            "n,,n=\u{e9},r=!~",
        ] {
            let sf = server().handle_client_first(ok.as_bytes()).unwrap();
            let nonce = &ok[ok.find(",r=").unwrap() + 3..];
            assert_eq!(
                sf,
                format!("r={nonce}XYZ,s={SALT_B64},i=2").into_bytes(),
                "{ok:?}"
            );
        }
        for (msg, want) in [
            ("", Malformed("unexpected channel-binding flag")),
            ("n", Malformed("expected , after the channel-binding flag")),
            ("n,", Malformed("missing client-first-message-bare")),
            ("n,,", Malformed("expected n= in client-first-message")),
            ("x,,n=,r=abc", Malformed("unexpected channel-binding flag")),
            ("nn,,n=,r=abc", Malformed("unexpected channel-binding flag")),
            (" n,,n=,r=abc", Malformed("unexpected channel-binding flag")),
            (
                "p=tls-server-end-point,,n=,r=abc",
                ChannelBindingUnsupported,
            ),
            ("p,,n=,r=abc", Malformed("unexpected channel-binding flag")),
            (
                "n,a=bob,n=,r=abc",
                Unsupported("authorization identity (a=)"),
            ),
            (
                "n,x,n=,r=abc",
                Malformed("expected , after the channel-binding flag"),
            ),
            ("n,,m=ext,n=,r=abc", Unsupported("mandatory extension (m=)")),
            ("n,,r=abc", Malformed("expected n= in client-first-message")),
            (
                "n,,r=abc,n=",
                Malformed("expected n= in client-first-message"),
            ),
            ("n,,n=", Malformed("expected r= in client-first-message")),
            ("n,,n=,", Malformed("expected r= in client-first-message")),
            (
                "n,,n=,r=",
                Malformed("non-printable characters in SCRAM nonce"),
            ),
            (
                "n,,n=,r=a b",
                Malformed("non-printable characters in SCRAM nonce"),
            ),
            (
                "n,,n=,r=a\u{e9}",
                Malformed("non-printable characters in SCRAM nonce"),
            ),
            (
                "n,,n=,r=abc,x=y",
                Malformed("garbage at end of client-first-message"),
            ),
            (
                "n,,n=,r=abc,",
                Malformed("garbage at end of client-first-message"),
            ),
            (
                "n,,n=,r=abc,r=abc",
                Malformed("garbage at end of client-first-message"),
            ),
            ("n,,n=a=b,r=abc", Malformed("invalid user name")),
            ("n,,n=a=2,r=abc", Malformed("invalid user name")),
            ("n,,n=a\0,r=abc", Malformed("invalid user name")),
        ] {
            assert_eq!(client_first_err(msg), want, "{msg:?}");
        }
        let mut s = server();
        assert_eq!(
            s.handle_client_first(b"n,,n=\xff,r=abc"),
            Err(Malformed("invalid user name"))
        );
        let long = format!("n,,n=,r={}", "x".repeat(MAX_MESSAGE_LEN));
        assert_eq!(client_first_err(&long), Malformed("message too long"));
    }

    /// A server after a good client-first, and the client-final a correct client sends.
    fn after_first(gs2: &str) -> (ScramServer, String) {
        let mut s = server();
        let sf = s
            .handle_client_first(format!("{gs2}n=,r=abc").as_bytes())
            .unwrap();
        let mut c = client();
        let cf = c.handle_server_first(&sf).unwrap();
        (s, String::from_utf8(cf).unwrap())
    }

    #[test]
    fn client_final_strict() {
        use AuthError::*;
        let (_, good) = after_first("n,,");
        let proof = &good[good.find(",p=").unwrap()..];
        for (gs2, msg, want) in [
            (
                "n,,",
                "".to_owned(),
                Malformed("expected c= in client-final-message"),
            ),
            (
                "n,,",
                good.replace("c=biws", "c=eSws"),
                ChannelBindingUnsupported,
            ),
            ("y,,", good.clone(), ChannelBindingUnsupported),
            (
                "n,,",
                good.replace("c=biws", "c=biws="),
                ChannelBindingUnsupported,
            ),
            ("n,,", good.replace("r=abcXYZ", "r=abcXY"), NonceMismatch),
            ("n,,", good.replace("r=abcXYZ", "r=abcXYZW"), NonceMismatch),
            ("n,,", good.replace("r=abcXYZ", "r=abc"), NonceMismatch),
            (
                "n,,",
                good.replace(",r=abcXYZ", ""),
                Malformed("expected r= in client-final-message"),
            ),
            (
                "n,,",
                good.replace(proof, ""),
                Malformed("expected p= in client-final-message"),
            ),
            (
                "n,,",
                good.replace(proof, &format!(",x=y{proof}")),
                Malformed("expected p= in client-final-message"),
            ),
            (
                "n,,",
                format!("{good},x=y"),
                Malformed("garbage at end of client-final-message"),
            ),
            (
                "n,,",
                format!("{good},"),
                Malformed("garbage at end of client-final-message"),
            ),
            (
                "n,,",
                good.replace(proof, ",p=AAAA"),
                Malformed("malformed proof in client-final-message"),
            ),
            (
                "n,,",
                good[..good.len() - 1].to_owned(),
                Malformed("malformed proof in client-final-message"),
            ),
            (
                "n,,",
                good.replace(proof, &format!(",p={}", "A".repeat(44))),
                Malformed("malformed proof in client-final-message"),
            ),
            (
                "n,,",
                good.replace(proof, &format!(",p={}=", "A".repeat(43))),
                WrongPassword,
            ),
            (
                "n,,",
                good.replace("c=biws,", ""),
                Malformed("expected c= in client-final-message"),
            ),
        ] {
            let (mut s, _) = after_first(gs2);
            assert_eq!(
                s.handle_client_final(msg.as_bytes()),
                Err(want),
                "{gs2} {msg:?}"
            );
            assert!(!s.is_authenticated());
            assert_eq!(s.handle_client_final(good.as_bytes()), Err(OutOfOrder));
        }
        // "y,," binds "eSws" (PostgreSQL checks that c= matches the flag sent first).
        let (mut s, _) = after_first("y,,");
        assert!(s
            .handle_client_final(good.replace("c=biws", "c=eSws").as_bytes())
            .is_err());
        let (mut s, good) = after_first("n,,");
        assert!(s.handle_client_final(good.as_bytes()).is_ok());
        assert!(s.is_authenticated());
        assert_eq!(s.handle_client_final(good.as_bytes()), Err(OutOfOrder));
        assert_eq!(s.handle_client_first(b"n,,n=,r=abc"), Err(OutOfOrder));
        assert_eq!(
            server().handle_client_final(good.as_bytes()),
            Err(OutOfOrder)
        );
    }

    #[test]
    fn y_flag_round_trip() {
        // A client sending "y,," must bind "eSws"; compute what such a client would send.
        let secret = ScramSecret::from_password(b"pw", b"salt", 1);
        let mut s = ScramServer::with_nonce(secret, "S").unwrap();
        let sf = s.handle_client_first(b"y,,n=,r=C").unwrap();
        assert_eq!(sf, b"r=CS,s=c2FsdA==,i=1");
        let (client_key, server_key) = derive_keys(b"pw", b"salt", 1);
        let without_proof = b"c=eSws,r=CS";
        let am: [&[u8]; 5] = [b"n=,r=C", b",", &sf, b",", without_proof];
        let sig = hmac(&sha256(&client_key), &am);
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(k, s)| k ^ s).collect();
        let cf = format!("c=eSws,r=CS,p={}", BASE64.encode(proof));
        let v = s.handle_client_final(cf.as_bytes()).unwrap();
        assert_eq!(
            v,
            format!("v={}", BASE64.encode(hmac(&server_key, &am))).into_bytes()
        );
    }

    #[test]
    fn nonces() {
        assert!(ScramClient::with_nonce(b"p", "").is_err());
        assert!(ScramClient::with_nonce(b"p", "a,b").is_err());
        assert!(ScramClient::with_nonce(b"p", "a b").is_err());
        assert!(
            ScramServer::with_nonce(ScramSecret::from_password(b"p", b"s", 1), "\u{e9}").is_err()
        );
        let c = ScramClient::new(b"p", &[0; 18]);
        assert_eq!(c.client_first(), b"n,,n=,r=AAAAAAAAAAAAAAAAAAAAAAAA");
        let c = ScramClient::with_nonce(b"p", "xyz")
            .unwrap()
            .with_username("a=b,c");
        assert_eq!(c.client_first(), b"n,,n=a=3Db=2Cc,r=xyz");
    }

    #[test]
    fn secret_parse_strict() {
        let s = ScramSecret::from_password(b"pencil", b"saltsalt", 4096);
        let text = s.to_string();
        assert_eq!(ScramSecret::parse(&text), Ok(s.clone()));
        let (head, keys) = text.rsplit_once('$').unwrap();
        let (sk, svk) = keys.split_once(':').unwrap();
        for bad in [
            "".to_owned(),
            text.replace("SCRAM-SHA-256$", "scram-sha-256$"),
            text.replace("SCRAM-SHA-256$", "SCRAM-SHA-1$"),
            text.replace("$4096:", "$0:"),
            text.replace("$4096:", "$04096:"),
            text.replace("$4096:", "$+4096:"),
            text.replace("$4096:", "$4294967296:"),
            text.replace("$4096:", "$:"),
            text.replace("$4096:", "$4096"),
            text.replace(SALT_B64, ""),
            text.replace(SALT_B64, "c2FsdHNhbHQ"),
            format!("{head}${sk}"),
            format!("{head}${sk}:{svk}:"),
            format!("{head}${sk}:{svk}$"),
            format!("{head}${sk}:{svk} "),
            format!("{head}${sk}:{}", &svk[..40]),
            format!("{head}$:{svk}"),
            format!("{head}${sk}:{}", BASE64.encode([0u8; 33])),
        ] {
            assert!(ScramSecret::parse(&bad).is_err(), "{bad:?}");
        }
        let big = text.replace("$4096:", "$4294967295:");
        assert_eq!(ScramSecret::parse(&big).unwrap().iterations, u32::MAX);
        assert_eq!(
            ScramSecret::from_password(b"x", b"s", 0),
            ScramSecret::from_password(b"x", b"s", 1)
        );
        // Debug does not print the keys.
        assert!(!format!("{s:?}").contains(sk));
    }

    #[test]
    fn saslprep_cases() {
        assert_eq!(&*saslprep(b"pencil"), b"pencil");
        assert_eq!(&*saslprep(b"a\x01b"), b"a\x01b"); // ASCII: unchanged, controls too
        assert_eq!(&*saslprep(b""), b"");
        assert_eq!(&*saslprep(b"\xff\xfe"), b"\xff\xfe"); // not UTF-8: raw
        assert_eq!(
            &*saslprep("\u{ff50}\u{ff41}\u{ff53}\u{ff53}".as_bytes()),
            b"pass"
        );
        assert_eq!(&*saslprep("a\u{a0}b".as_bytes()), b"a b");
        assert_eq!(&*saslprep("x\u{200b}y".as_bytes()), b"x y"); // C.1.2 wins over B.1
        assert_eq!(&*saslprep("\u{2168}".as_bytes()), b"IX");
        assert_eq!(&*saslprep("\u{ad}".as_bytes()), "\u{ad}".as_bytes()); // empty: raw
        assert_eq!(&*saslprep("\u{627}a".as_bytes()), "\u{627}a".as_bytes()); // bidi: raw
        assert_eq!(&*saslprep("a\u{e000}".as_bytes()), "a\u{e000}".as_bytes()); // private use
    }

    #[test]
    fn md5() {
        assert_eq!(
            &md5_secret(b"u_md5", b"pencil"),
            b"md56520b9e6d1360465923cccaa4a18e5f0"
        );
        assert_eq!(
            &md5_password(b"u_md5", b"pencil", [1, 2, 3, 4]),
            b"md57e9b31d35ec4b9a238581e1a6109e467"
        );
        let expected = md5_password(b"postgres", b"secret", [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&expected, b"md5c546d0bbed2af888b328536b45c76348");
        assert_eq!(
            &md5_password(b"", b"", [0; 4]),
            b"md591b86670dcd47857d222fa05653500aa"
        );
        assert!(md5_verify(
            &expected,
            b"md5c546d0bbed2af888b328536b45c76348"
        ));
        assert!(!md5_verify(
            &expected,
            b"md5c546d0bbed2af888b328536b45c76349"
        ));
        assert!(!md5_verify(
            &expected,
            b"md5c546d0bbed2af888b328536b45c7634"
        ));
        assert!(!md5_verify(&expected, b""));
    }

    #[test]
    fn errors_display() {
        for e in [
            AuthError::Malformed("x"),
            AuthError::NonceMismatch,
            AuthError::WrongPassword,
            AuthError::BadServerSignature,
            AuthError::Server("invalid-proof".into()),
            AuthError::ChannelBindingUnsupported,
            AuthError::Unsupported("m="),
            AuthError::IterationCount(0),
            AuthError::OutOfOrder,
        ] {
            assert!(!e.to_string().is_empty());
            let _: &dyn std::error::Error = &e;
        }
    }
}
