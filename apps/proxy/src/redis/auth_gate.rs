//! The socket-free part of client authentication in the Redis proxy (see
//! [`auth`](super::auth)): credentials and their constant-time comparison, the byte-level
//! gate in front of a client that has not authenticated, and the verdict on each of its
//! commands; and [`Feed`], how a client's input is handed to its `ServerConnection` on the
//! slow path. It uses only `std`, `bytes`, `ferry_resp` and the scanner (`scan.rs`), so the
//! `redis_proxy_auth` fuzz target includes it (and `scan.rs`) by path and runs the proxy's
//! own code.

use bytes::{Buf, Bytes, BytesMut};
use ferry_resp::{Command, Value};

use super::scan::{scan_command, Scan};

/// An incomplete command this large (or an inline command without its end) sends its
/// client to the slow path for good (the fast path only forwards complete commands).
pub(super) const BIG_COMMAND: usize = 128 * 1024;

/// Redis's reply to a command of a client that has not authenticated.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
/// Redis 7's reply to `HELLO` without `AUTH` from a client that has not authenticated.
pub const NOAUTH_HELLO: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";
/// Redis's reply to a wrong user name or password.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// Most arguments of a multibulk from a client that has not authenticated (as Redis).
const UNAUTH_MAX_ARGS: i64 = 10;
/// Longest bulk from a client that has not authenticated (as Redis).
const UNAUTH_MAX_BULK: i64 = 16 * 1024;

/// A user name and a password. `Debug` never shows the password; equality is constant-time.
#[derive(Clone)]
pub struct Credentials {
    pub(super) user: Option<String>,
    pub(super) password: Bytes,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Credentials) -> bool {
        self.user == other.user && ct_eq(&self.password, &other.password)
    }
}

impl Eq for Credentials {}

impl Credentials {
    /// `user: None` means Redis's `default` user (`AUTH password`, as with `requirepass`).
    pub fn new(user: Option<&str>, password: impl AsRef<[u8]>) -> Credentials {
        Credentials {
            user: user.map(str::to_string),
            password: Bytes::copy_from_slice(password.as_ref()),
        }
    }

    /// The user name, if one was given.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether a client's `AUTH [user] password` matches (`user: None` is `default`, as in
    /// Redis). Both parts are always compared, in time that depends only on their lengths.
    pub fn matches(&self, user: Option<&[u8]>, password: &[u8]) -> bool {
        let want = self.user.as_deref().map_or(&b"default"[..], str::as_bytes);
        let u = ct_eq(want, user.unwrap_or(b"default"));
        let p = ct_eq(&self.password, password);
        u & p
    }
}

/// Equality of two byte strings in time that depends only on their lengths.
#[inline(never)]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// What the front of a not-yet-authenticated client's input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Not complete yet.
    Wait,
    /// Leave it to the usual path (the command is answered `-NOAUTH` there, or is allowed;
    /// or the input is malformed and the protocol parser reports it).
    Pass,
    /// A complete command of this length that the client connection would answer itself
    /// (the pub/sub family): answer `-NOAUTH` here instead.
    Refuse(usize),
    /// Redis's limits for unauthenticated clients.
    TooManyArgs,
    TooLongBulk,
    /// An empty multibulk (`*0`, `*-1`) of this length, which Redis ignores: consumed here,
    /// no reply. (Past the gate the scanner does not delimit it, and the client would hand
    /// everything after it to the connection unchecked.)
    Skip(usize),
}

/// The pub/sub family, which `ferry_resp::ServerConnection` answers itself.
fn is_pubsub(name: &[u8]) -> bool {
    [
        &b"subscribe"[..],
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// A `\r\n`-terminated decimal at `b[pos..]` (after its type byte): (value, next position).
fn line_int(b: &[u8], pos: usize) -> Option<Result<(i64, usize), ()>> {
    let rest = b.get(pos..)?;
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let digits = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
    let s = std::str::from_utf8(digits).map_err(|_| ());
    Some(
        s.and_then(|s| s.parse::<i64>().map_err(|_| ()))
            .map(|v| (v, pos + nl + 1)),
    )
}

/// Look at the first command of an unauthenticated client (see [`Gate`]).
pub(super) fn gate(b: &[u8]) -> Gate {
    let Some(&first) = b.first() else {
        return Gate::Wait;
    };
    if first != b'*' {
        // Inline: the first word, quotes stripped.
        let Some(nl) = b.iter().position(|&c| c == b'\n') else {
            return Gate::Pass;
        };
        let word = b[..nl]
            .split(|c| c.is_ascii_whitespace())
            .find(|w| !w.is_empty())
            .unwrap_or(b"");
        let word = word
            .strip_prefix(b"\"")
            .and_then(|w| w.strip_suffix(b"\""))
            .or_else(|| word.strip_prefix(b"'").and_then(|w| w.strip_suffix(b"'")))
            .unwrap_or(word);
        return if is_pubsub(word) {
            Gate::Refuse(nl + 1)
        } else {
            Gate::Pass
        };
    }
    let (n, mut pos) = match line_int(b, 1) {
        None => return Gate::Wait,
        Some(Err(())) => return Gate::Pass,
        Some(Ok(v)) => v,
    };
    if n <= 0 {
        return Gate::Skip(pos);
    }
    if n > UNAUTH_MAX_ARGS {
        return Gate::TooManyArgs;
    }
    let mut name: Option<(usize, usize)> = None;
    for _ in 0..n {
        match b.get(pos) {
            None => return Gate::Wait,
            Some(b'$') => {}
            Some(_) => return Gate::Pass,
        }
        let (len, at) = match line_int(b, pos + 1) {
            None => return Gate::Wait,
            Some(Err(())) => return Gate::Pass,
            Some(Ok(v)) => v,
        };
        if len > UNAUTH_MAX_BULK {
            return Gate::TooLongBulk;
        }
        if len < 0 {
            return Gate::Pass;
        }
        let end = at + len as usize;
        if b.len() < end + 2 {
            return Gate::Wait;
        }
        name.get_or_insert((at, end));
        pos = end + 2;
    }
    match name {
        Some((a, z)) if is_pubsub(&b[a..z]) => Gate::Refuse(pos),
        _ => Gate::Pass,
    }
}

/// What [`gate_step`] did with the front of a locked client's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing: go on as usual (the command meets `verdict` past the connection).
    Go,
    /// Wait for more input, or for the replies owed first.
    Wait,
    /// An empty multibulk was consumed (no reply).
    Skipped,
    /// A pub/sub command was consumed: answer `-NOAUTH` (after the replies owed).
    Refused,
    /// Over Redis's limits for unauthenticated clients ([`Gate::TooManyArgs`] or
    /// [`Gate::TooLongBulk`]): a protocol error, then close.
    Fatal(Gate),
}

/// The gate in front of a locked client's connection: looks at the front of `input`
/// when the connection holds nothing unread (`sin` empty); `in_flight`: commands of the
/// client not answered yet (a refusal waits for them, to keep order).
pub(super) fn gate_step(input: &mut BytesMut, sin: &BytesMut, in_flight: usize) -> Step {
    if !sin.is_empty() || input.is_empty() {
        return Step::Go;
    }
    match gate(input) {
        Gate::Pass => Step::Go,
        Gate::Wait => Step::Wait,
        Gate::Skip(len) => {
            input.advance(len);
            Step::Skipped
        }
        _ if in_flight > 0 => Step::Wait,
        Gate::Refuse(len) => {
            input.advance(len);
            Step::Refused
        }
        g => Step::Fatal(g),
    }
}

/// What client authentication does with one command (see [`verdict`]).
#[derive(Debug)]
pub(super) enum Verdict {
    /// Answer it with this (the proxy's own reply), nothing more.
    Reply(Value),
    /// Not the proxy's business: go on with the command as it is.
    Pass,
    /// A `HELLO` that authenticated or named the client: keep `setname`, then answer what is
    /// left, `HELLO [protover]` (`protover`: the version argument stays).
    Hello {
        /// `SETNAME`'s argument.
        setname: Option<Bytes>,
        /// The command has a version argument.
        protover: bool,
    },
    /// Drop it (a `HELLO` the connection should have refused).
    Drop,
}

/// Client authentication at the proxy: answers `AUTH`, checks `HELLO … AUTH`, refuses
/// everything else while `locked` (the client has not authenticated); a right password
/// unlocks, a wrong one leaves `locked` as it was.
pub(super) fn verdict(creds: &Credentials, locked: &mut bool, cmd: &Command) -> Verdict {
    if cmd.is("auth") {
        let v = match cmd.args.len() {
            1 => Value::error("ERR wrong number of arguments for 'auth' command"),
            n @ (2 | 3) => {
                let (user, pass) = if n == 2 {
                    (None, &cmd.args[1])
                } else {
                    (Some(&cmd.args[1][..]), &cmd.args[2])
                };
                if creds.matches(user, pass) {
                    *locked = false;
                    Value::ok()
                } else {
                    Value::error(WRONGPASS)
                }
            }
            _ => Value::error("ERR syntax error"),
        };
        return Verdict::Reply(v);
    }
    if cmd.is("hello") {
        // The connection validated it: it parses.
        let Some(h) = cmd.hello() else {
            return Verdict::Drop;
        };
        if let Some((u, p)) = &h.auth {
            if !creds.matches(Some(u), p) {
                return Verdict::Reply(Value::error(WRONGPASS));
            }
            *locked = false;
        } else if *locked {
            return Verdict::Reply(Value::error(NOAUTH_HELLO));
        }
        if h.auth.is_none() && h.setname.is_none() {
            return Verdict::Pass;
        }
        return Verdict::Hello {
            setname: h.setname,
            protover: h.protover.is_some(),
        };
    }
    if *locked {
        return Verdict::Reply(Value::error(NOAUTH));
    }
    Verdict::Pass
}

/// How a client's input reaches its `ServerConnection` on the slow path: one complete
/// command at a time while the scanner delimits it; once it could not ("sticky": an
/// incomplete command of [`BIG_COMMAND`] bytes or more, an empty multibulk, an odd
/// header), everything as it comes — or, with client authentication (`careful`), still
/// one command at a time ([`Delim`]), so that the command after a `RESET` (which locks the
/// client again) meets the [`gate`] instead of being run by the connection at once
/// (fuzz/regressions/redis_proxy_auth/sticky-reset-then-ssubscribe).
#[derive(Debug, Default)]
pub(super) struct Feed {
    /// Slow path only, for good.
    pub(super) sticky: bool,
    delim: Delim,
}

impl Feed {
    /// Move what the connection may read next from `input` to `sin` (`sin`: what it was
    /// handed and has not read yet).
    pub(super) fn step(
        &mut self,
        input: &mut BytesMut,
        sin: &mut BytesMut,
        careful: bool,
        max_bulk: u64,
        max_inline: usize,
    ) {
        if input.is_empty() {
            return;
        }
        if !self.sticky {
            if !sin.is_empty() {
                return;
            }
            match first_command_len(input, max_bulk, max_inline) {
                Some(Some(k)) => {
                    *sin = input.split_to(k);
                    return;
                }
                Some(None) => self.sticky = true,
                None => return,
            }
        }
        if careful {
            return self.careful(input, sin, max_inline);
        }
        let rest = input.split();
        if sin.is_empty() {
            *sin = rest;
        } else {
            sin.unsplit(rest);
        }
    }

    /// Sticky with client authentication: the next piece of the current command only
    /// (and nothing while the connection still holds a complete one unread).
    #[cold]
    fn careful(&mut self, input: &mut BytesMut, sin: &mut BytesMut, max_inline: usize) {
        if !sin.is_empty() && !self.delim.mid() {
            return;
        }
        let piece = match self.delim.next(input, max_inline) {
            Piece::Wait => return,
            Piece::Part(n) | Piece::Whole(n) => input.split_to(n),
            Piece::Rest => input.split(),
        };
        if sin.is_empty() {
            *sin = piece;
        } else {
            sin.unsplit(piece);
        }
    }
}

/// Length of the complete command at the front of `b`: `None`: incomplete;
/// `Some(None)`: the scanner cannot delimit it (the client goes sticky).
fn first_command_len(b: &[u8], max_bulk: u64, max_inline: usize) -> Option<Option<usize>> {
    if b.first() == Some(&b'*') {
        match scan_command(b, max_bulk) {
            Scan::Complete { len, .. } => return Some(Some(len)),
            Scan::Incomplete if b.len() < BIG_COMMAND => return None,
            _ => {}
        }
    } else if let Some(p) = b.iter().position(|&c| c == b'\n') {
        return Some(Some(p + 1));
    } else if b.len() <= max_inline {
        return None;
    }
    Some(None)
}

/// A piece of a sticky client's input ([`Delim::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Piece {
    /// Nothing to hand over yet.
    Wait,
    /// These first bytes belong to the current command, which goes on after them.
    Part(usize),
    /// The current command ends after these first bytes.
    Whole(usize),
    /// Everything: the connection fails on this input (see [`Delim`]).
    Rest,
}

/// Where the command being read ends, the way `ferry_resp`'s command reader reads
/// (resumable: the state covers the bytes already handed over). It is at least as lenient
/// as the reader (any decimal header parses), so a boundary it reports is the reader's, or
/// the reader fails there; it gives up ([`Piece::Rest`], for good) only on input the reader
/// refuses (a bulk header not starting with `$`, a header that is no number, a header line
/// longer than the inline limit).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delim {
    /// At a command boundary.
    #[default]
    Start,
    /// Before the header of one of these many remaining arguments.
    Args(u64),
    /// In an argument's payload: (arguments left after it, bytes left of it with its `\r\n`).
    Bulk(u64, u64),
    /// Gave up.
    Lost,
}

/// A header's number, leniently (sign, leading zeros).
fn lenient_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

impl Delim {
    /// Inside a command (some of it was handed over).
    pub(super) fn mid(&self) -> bool {
        matches!(self, Delim::Args(_) | Delim::Bulk(..))
    }

    /// The next piece of `b` (the input after what was handed over).
    pub(super) fn next(&mut self, b: &[u8], max_inline: usize) -> Piece {
        let mut pos = 0;
        let some = |pos: usize| {
            if pos > 0 {
                Piece::Part(pos)
            } else {
                Piece::Wait
            }
        };
        loop {
            match *self {
                Delim::Lost => return Piece::Rest,
                Delim::Start => {
                    let Some(&first) = b.first() else {
                        return Piece::Wait;
                    };
                    if first != b'*' {
                        return match b.iter().position(|&c| c == b'\n') {
                            Some(p) => Piece::Whole(p + 1),
                            None if b.len() > max_inline => self.lose(),
                            None => Piece::Wait,
                        };
                    }
                    let Some(cr) = b.iter().position(|&c| c == b'\r') else {
                        return if b.len() > max_inline {
                            self.lose()
                        } else {
                            Piece::Wait
                        };
                    };
                    if cr + 2 > b.len() {
                        return Piece::Wait;
                    }
                    let Some(n) = lenient_int(&b[1..cr]) else {
                        return self.lose();
                    };
                    if n <= 0 {
                        return Piece::Whole(cr + 2);
                    }
                    *self = Delim::Args(n as u64);
                    pos = cr + 2;
                }
                Delim::Args(left) => {
                    let rest = &b[pos..];
                    let Some(cr) = rest.iter().position(|&c| c == b'\r') else {
                        return if rest.len() > max_inline {
                            self.lose()
                        } else {
                            some(pos)
                        };
                    };
                    if cr + 2 > rest.len() {
                        return some(pos);
                    }
                    if rest[0] != b'$' {
                        return self.lose();
                    }
                    let Some(len) = lenient_int(&rest[1..cr]).filter(|&n| n >= 0) else {
                        return self.lose();
                    };
                    *self = Delim::Bulk(left - 1, (len as u64).saturating_add(2));
                    pos += cr + 2;
                }
                Delim::Bulk(after, need) => {
                    let have = (b.len() - pos) as u64;
                    if have < need {
                        *self = Delim::Bulk(after, need - have);
                        return some(b.len());
                    }
                    pos += need as usize;
                    if after == 0 {
                        *self = Delim::Start;
                        return Piece::Whole(pos);
                    }
                    *self = Delim::Args(after);
                }
            }
        }
    }

    fn lose(&mut self) -> Piece {
        *self = Delim::Lost;
        Piece::Rest
    }
}
