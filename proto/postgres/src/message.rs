//! Framing of PostgreSQL v3 messages and the untagged startup-phase packets.
//!
//! Every message after startup is `tag: u8, length: i32 (big endian, counts itself and the
//! body, not the tag), body`. Startup-phase packets (StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest) have no tag: `length: i32, code: i32, body`.
//! ([protocol-message-formats](https://www.postgresql.org/docs/15/protocol-message-formats.html))
//!
//! [`frame`] and [`startup_frame`] only find where a message ends, so a proxy can forward
//! whole messages without decoding them; [`crate::backend::parse`],
//! [`crate::frontend::parse`] and [`parse_startup`] decode one when it matters.

use bytes::{BufMut, BytesMut};

/// A complete tagged message at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte (`b'Q'`, `b'Z'`, ...).
    pub tag: u8,
    /// The whole message's length: tag (1) + length field (4) + body.
    pub len: usize,
}

/// A length field that cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Longer than the caller's limit.
    TooLong {
        /// The message's whole length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Less than the length field itself (or, for startup packets, than length and code).
    BadLength(i32),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLong { len, max } => {
                write!(
                    f,
                    "message of {len} bytes is longer than the limit of {max}"
                )
            }
            FrameError::BadLength(n) => write!(f, "invalid message length {n}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Finds the tagged message at the start of `buf`: `Ok(None)` until all of it is there.
/// A length over `max_len` is an error as soon as the header is read, before the body
/// arrives, so memory stays bounded.
#[inline]
pub fn frame(buf: &[u8], max_len: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let n = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if n < 4 {
        return Err(FrameError::BadLength(n));
    }
    let len = n as usize + 1;
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    Ok((buf.len() >= len).then_some(Frame { tag: buf[0], len }))
}

/// Finds the untagged startup-phase packet at the start of `buf`; returns its whole length
/// (including the length field), or `Ok(None)` until all of it is there.
pub fn startup_frame(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if n < 8 {
        return Err(FrameError::BadLength(n));
    }
    let len = n as usize;
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    Ok((buf.len() >= len).then_some(len))
}

/// Walks the tagged messages of a stream that is forwarded as it arrives (a proxy's view):
/// only headers are read, and a body is passed over as its bytes come, possibly across
/// several reads. Holds how much of the current body is still to come.
///
/// ```
/// use ferry_postgres::message::{Step, Walker};
///
/// // A DataRow whose body has not all arrived, after a complete CommandComplete.
/// let buf = b"C\0\0\0\x0dSELECT 1\0D\0\0\0\x10\0\x01";
/// let (mut w, mut pos) = (Walker::default(), 0);
/// assert_eq!(w.next(buf, &mut pos), Step::Header { tag: b'C', total: 14 });
/// w.pass(buf, &mut pos, 14);
/// assert_eq!(w.next(buf, &mut pos), Step::Header { tag: b'D', total: 17 });
/// w.pass(buf, &mut pos, 17); // forwards the 7 bytes here, 10 are still to come
/// assert_eq!((pos, w.rest()), (21, 10));
/// assert_eq!(w.next(buf, &mut pos), Step::More);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walker {
    rest: usize,
}

/// What [`Walker::next`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A message header at `pos`: its tag and whole length (its bytes may not all be here).
    Header {
        /// Message type byte.
        tag: u8,
        /// Tag + length field + body.
        total: usize,
    },
    /// The rest of a body or a whole header is not here yet.
    More,
    /// A length field below 4.
    BadLength(i32),
}

impl Walker {
    /// Bytes of the current message's body still to come.
    pub fn rest(&self) -> usize {
        self.rest
    }

    /// Forgets the message in progress (the stream starts over).
    pub fn clear(&mut self) {
        self.rest = 0;
    }

    /// Moves `pos` over what `buf` holds of a body in progress; `false` while more of it is
    /// still to come.
    #[inline]
    pub fn pass_rest(&mut self, buf: &[u8], pos: &mut usize) -> bool {
        if self.rest > 0 {
            let n = self.rest.min(buf.len() - *pos);
            *pos += n;
            self.rest -= n;
        }
        self.rest == 0
    }

    /// Passes over what is left of a body in progress, then reads the header at `pos`
    /// (without moving over it).
    #[inline]
    pub fn next(&mut self, buf: &[u8], pos: &mut usize) -> Step {
        if !self.pass_rest(buf, pos) {
            return Step::More;
        }
        header(buf, *pos)
    }

    /// Passes over the message of `total` bytes at `pos` as far as `buf` reaches; the rest
    /// of it is passed over by later calls, as it arrives.
    #[inline]
    pub fn pass(&mut self, buf: &[u8], pos: &mut usize, total: usize) {
        let n = total.min(buf.len() - *pos);
        *pos += n;
        self.rest = total - n;
    }
}

/// The header at `pos` (see [`Walker::next`]).
#[inline]
pub fn header(buf: &[u8], pos: usize) -> Step {
    let Some(h) = buf.get(pos..pos + 5) else {
        return Step::More;
    };
    let n = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if n < 4 {
        return Step::BadLength(n);
    }
    Step::Header {
        tag: h[0],
        total: n as usize + 1,
    }
}

/// A message whose body does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// The body ends before a field it must hold.
    Truncated,
    /// A string field is not UTF-8.
    BadUtf8,
    /// A StartupMessage of another major version than 3.
    UnsupportedVersion {
        /// Major protocol version asked for.
        major: u16,
        /// Minor protocol version asked for.
        minor: u16,
    },
    /// Anything else that breaks the format (the text says what).
    Invalid(&'static str),
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::Truncated => f.write_str("message is truncated"),
            MessageError::BadUtf8 => f.write_str("message holds a string that is not UTF-8"),
            MessageError::UnsupportedVersion { major, minor } => write!(
                f,
                "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
            ),
            MessageError::Invalid(what) => write!(f, "invalid message: {what}"),
        }
    }
}

impl std::error::Error for MessageError {}

/// The code of an SSLRequest (`1234.5679`).
pub const SSL_REQUEST_CODE: i32 = 80877103;
/// The code of a GSSENCRequest (`1234.5680`).
pub const GSSENC_REQUEST_CODE: i32 = 80877104;
/// The code of a CancelRequest (`1234.5678`).
pub const CANCEL_REQUEST_CODE: i32 = 80877102;

/// An untagged startup-phase packet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Startup<'a> {
    /// Protocol 3.x StartupMessage.
    Startup {
        /// The minor version asked for (a server speaking 3.0 answers a higher one with
        /// NegotiateProtocolVersion).
        minor: u16,
        /// Its parameters (`user`, `database`, `options`, `application_name`...).
        params: Params<'a>,
    },
    /// Asks for TLS: answer `S` or `N`.
    SslRequest,
    /// Asks for GSSAPI encryption: answer `G` or `N`.
    GssEncRequest,
    /// Cancels the query running on the backend with this key (sent on a new connection).
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
}

/// A StartupMessage's parameters: NUL-terminated names and values, checked to be UTF-8 pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params<'a> {
    raw: &'a [u8],
}

impl<'a> Params<'a> {
    /// The raw list (pairs of NUL-terminated strings, without the final NUL).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut parts = self.raw.split(|&b| b == 0);
        let raw = self.raw;
        std::iter::from_fn(move || {
            if raw.is_empty() {
                return None;
            }
            let k = parts.next()?;
            let v = parts.next()?;
            // Checked in `parse_startup`.
            Some((
                std::str::from_utf8(k).unwrap_or(""),
                std::str::from_utf8(v).unwrap_or(""),
            ))
        })
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

/// Decodes a whole startup-phase packet (as delimited by [`startup_frame`]).
pub fn parse_startup(packet: &[u8]) -> Result<Startup<'_>, MessageError> {
    if packet.len() < 8 {
        return Err(MessageError::Truncated);
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !body.is_empty() => {
            Err(MessageError::Invalid("encryption request with a body"))
        }
        SSL_REQUEST_CODE => Ok(Startup::SslRequest),
        GSSENC_REQUEST_CODE => Ok(Startup::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if body.len() != 8 {
                return Err(MessageError::Invalid("cancel request of the wrong length"));
            }
            Ok(Startup::Cancel {
                pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, code as u16);
            if major != 3 {
                return Err(MessageError::UnsupportedVersion { major, minor });
            }
            // Pairs of NUL-terminated strings, then a final NUL.
            let Some((&0, list)) = body.split_last() else {
                return Err(MessageError::Invalid("startup parameters not terminated"));
            };
            let mut strings = 0usize;
            if !list.is_empty() {
                if list.last() != Some(&0) {
                    return Err(MessageError::Invalid("startup parameters not terminated"));
                }
                for s in list[..list.len() - 1].split(|&b| b == 0) {
                    std::str::from_utf8(s).map_err(|_| MessageError::BadUtf8)?;
                    if strings % 2 == 0 && s.is_empty() {
                        return Err(MessageError::Invalid("empty startup parameter name"));
                    }
                    strings += 1;
                }
                if strings % 2 != 0 {
                    return Err(MessageError::Invalid("startup parameter without a value"));
                }
            }
            let raw = if list.is_empty() {
                list
            } else {
                &list[..list.len() - 1]
            };
            Ok(Startup::Startup {
                minor,
                params: Params { raw },
            })
        }
    }
}

/// Appends a protocol 3.0 StartupMessage with these parameters.
pub fn encode_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let body: usize = params.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    out.reserve(9 + body);
    out.put_i32((9 + body) as i32);
    out.put_i32(3 << 16);
    for (k, v) in params {
        put_cstr(out, k.as_bytes());
        put_cstr(out, v.as_bytes());
    }
    out.put_u8(0);
}

/// Appends an SSLRequest.
pub fn encode_ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(SSL_REQUEST_CODE);
}

/// Appends a CancelRequest.
pub fn encode_cancel(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST_CODE);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// A NUL-terminated string (without a NUL inside: one is cut there, as C would read it).
pub(crate) fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    let end = memchr::memchr(0, s).unwrap_or(s.len());
    out.put_slice(&s[..end]);
    out.put_u8(0);
}

/// Starts a tagged message; returns where its length goes, for [`end_msg`].
pub(crate) fn begin_msg(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

/// Writes the length of the message begun at `at`.
pub(crate) fn end_msg(out: &mut BytesMut, at: usize) {
    let n = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&n.to_be_bytes());
}

/// A cursor over a message body.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub(crate) fn i32(&mut self) -> Result<i32, MessageError> {
        let (a, rest) = self
            .buf
            .split_first_chunk::<4>()
            .ok_or(MessageError::Truncated)?;
        self.buf = rest;
        Ok(i32::from_be_bytes(*a))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, MessageError> {
        let (a, rest) = self
            .buf
            .split_first_chunk::<2>()
            .ok_or(MessageError::Truncated)?;
        self.buf = rest;
        Ok(i16::from_be_bytes(*a))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MessageError> {
        let (&a, rest) = self.buf.split_first().ok_or(MessageError::Truncated)?;
        self.buf = rest;
        Ok(a)
    }

    pub(crate) fn cstr(&mut self) -> Result<&'a [u8], MessageError> {
        let end = memchr::memchr(0, self.buf).ok_or(MessageError::Truncated)?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, MessageError> {
        std::str::from_utf8(self.cstr()?).map_err(|_| MessageError::BadUtf8)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if self.buf.len() < n {
            return Err(MessageError::Truncated);
        }
        let (a, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(a)
    }

    pub(crate) fn end(&self) -> Result<(), MessageError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MessageError::Invalid("trailing bytes after the message"))
        }
    }
}

/// The body of a whole tagged message (after tag and length); the caller framed it.
pub(crate) fn body(msg: &[u8]) -> Result<&[u8], MessageError> {
    if msg.len() < 5 {
        return Err(MessageError::Truncated);
    }
    let n = i32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]);
    if n < 4 || n as usize + 1 != msg.len() {
        return Err(MessageError::Invalid(
            "length field does not match the message",
        ));
    }
    Ok(&msg[5..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_wait_for_the_whole_message() {
        let msg = b"Q\0\0\0\x0dSELECT 1\0";
        for cut in 0..msg.len() {
            assert_eq!(frame(&msg[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        assert_eq!(frame(msg, 1 << 20), Ok(Some(Frame { tag: b'Q', len: 14 })));
        let mut two = msg.to_vec();
        two.extend_from_slice(b"X\0\0\0\x04");
        assert_eq!(frame(&two, 1 << 20).unwrap().unwrap().len, 14);
    }

    #[test]
    fn frame_limits_are_checked_from_the_header() {
        assert_eq!(
            frame(b"D\x7f\xff\xff\xff", 1 << 20),
            Err(FrameError::TooLong {
                len: 0x8000_0000,
                max: 1 << 20
            })
        );
        assert_eq!(frame(b"D\0\0\0\x03", 100), Err(FrameError::BadLength(3)));
        assert_eq!(
            frame(b"D\xff\xff\xff\xff", 100),
            Err(FrameError::BadLength(-1))
        );
        assert_eq!(
            startup_frame(b"\0\0\0\x07", 100),
            Err(FrameError::BadLength(7))
        );
        assert!(startup_frame(b"\0\x01\0\0", 100).is_err());
    }

    #[test]
    fn startup_message_vector() {
        // psql's StartupMessage, byte for byte (protocol 3.0, user, database, application_name).
        let mut out = BytesMut::new();
        encode_startup(
            &mut out,
            &[
                ("user", "app"),
                ("database", "shop"),
                ("application_name", "psql"),
            ],
        );
        let expect: &[u8] =
            b"\0\0\0\x36\0\x03\0\0user\0app\0database\0shop\0application_name\0psql\0\0";
        assert_eq!(&out[..], expect);
        assert_eq!(startup_frame(&out, 10_000), Ok(Some(out.len())));
        let Startup::Startup { minor, params } = parse_startup(&out).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(minor, 0);
        assert_eq!(params.get("user"), Some("app"));
        assert_eq!(params.get("database"), Some("shop"));
        assert_eq!(params.get("options"), None);
        assert_eq!(params.iter().count(), 3);
    }

    #[test]
    fn special_startup_packets() {
        let mut out = BytesMut::new();
        encode_ssl_request(&mut out);
        assert_eq!(&out[..], b"\0\0\0\x08\x04\xd2\x16\x2f");
        assert_eq!(parse_startup(&out), Ok(Startup::SslRequest));
        assert_eq!(
            parse_startup(b"\0\0\0\x08\x04\xd2\x16\x30"),
            Ok(Startup::GssEncRequest)
        );
        out.clear();
        encode_cancel(&mut out, 4242, -7);
        assert_eq!(
            parse_startup(&out),
            Ok(Startup::Cancel {
                pid: 4242,
                secret: -7
            })
        );
        assert_eq!(
            parse_startup(b"\0\0\0\x09\0\x02\0\0\0"),
            Err(MessageError::UnsupportedVersion { major: 2, minor: 0 })
        );
        // An empty parameter list is valid; a dangling name is not.
        assert!(parse_startup(b"\0\0\0\x09\0\x03\0\0\0").is_ok());
        assert!(parse_startup(b"\0\0\0\x0e\0\x03\0\0user\0\0").is_err());
        assert!(parse_startup(b"\0\0\0\x0c\0\x03\0\0\xff\0\0\0").is_err());
    }

    proptest! {
        #[test]
        fn framing_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..200) {
            if let Ok(Some(f)) = frame(&buf, max) {
                prop_assert!(f.len <= buf.len() && f.len <= max && f.len >= 5);
            }
            if let Ok(Some(n)) = startup_frame(&buf, max) {
                prop_assert!(n <= buf.len() && n <= max && n >= 8);
                let _ = parse_startup(&buf[..n]);
            }
        }

        #[test]
        fn walking_in_pieces_finds_the_frames(buf in proptest::collection::vec(any::<u8>(), 0..80), cut in 0usize..80) {
            // Whole-message framing, as the reference.
            let mut want = Vec::new();
            let mut at = 0;
            let mut bad = None;
            loop {
                match frame(&buf[at..], usize::MAX) {
                    Ok(Some(f)) => { want.push((f.tag, f.len)); at += f.len; }
                    Ok(None) => break,
                    Err(e) => { bad = Some(e); break; }
                }
            }
            // The walker over two reads, passing bodies as they come.
            let cut = cut.min(buf.len());
            let (mut w, mut got, mut seen_bad) = (Walker::default(), Vec::new(), None);
            let (mut read, mut pos) = (Vec::new(), 0);
            'reads: for piece in [&buf[..cut], &buf[cut..]] {
                read.extend_from_slice(piece);
                loop {
                    match w.next(&read, &mut pos) {
                        Step::Header { tag, total } => {
                            got.push((tag, total));
                            w.pass(&read, &mut pos, total);
                        }
                        Step::More => break,
                        Step::BadLength(n) => {
                            seen_bad = Some(n);
                            break 'reads;
                        }
                    }
                }
            }
            // The same frames, plus the header of an incomplete last one.
            prop_assert!(got.len() == want.len() || got.len() == want.len() + 1);
            prop_assert_eq!(&got[..want.len()], &want[..]);
            match bad {
                Some(FrameError::BadLength(n)) => prop_assert_eq!(seen_bad, Some(n)),
                _ => prop_assert_eq!(seen_bad, None),
            }
        }

        #[test]
        fn startup_round_trips(params in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..6)) {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut out = BytesMut::new();
            encode_startup(&mut out, &pairs);
            prop_assert_eq!(startup_frame(&out, 1 << 20), Ok(Some(out.len())));
            let Ok(Startup::Startup { params: p, .. }) = parse_startup(&out) else {
                return Err(TestCaseError::fail("not parsed"));
            };
            let back: Vec<(&str, &str)> = p.iter().collect();
            prop_assert_eq!(back, pairs);
        }
    }
}
