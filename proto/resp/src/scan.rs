//! The resumable measuring pass: [`frame_len_resume`] with its [`FrameScan`] state.
//!
//! [`frame_len`](crate::parse::frame_len) walks a frame from its first byte on every call,
//! so a large reply arriving over many reads would be scanned once per read (quadratic).
//! [`FrameScan`] remembers where the last call stopped, like hiredis's reader stack: the
//! offset reached, one small record per open aggregate (elements left, or elements seen for
//! a streamed one), what is expected next (a value, a payload, a streamed-string chunk) and
//! how much of an incomplete line is known to hold no line ending. Each call then examines
//! only the bytes it has not seen, and answers exactly as `frame_len` on the same bytes
//! (same lengths, same errors, same limits).

use smallvec::SmallVec;

use crate::parse::{length_of, validate_line, Len, Limits};
use crate::ParseError;

/// What is expected at [`FrameScan::pos`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A value (its type byte) or, between the elements of a streamed aggregate, its `.` end.
    Value,
    /// The `n` payload bytes and CRLF of a `$`, `!` or `=` (`t`).
    Payload { t: u8, n: u64 },
    /// The `;` header of a streamed string's next chunk; `total` payload bytes so far.
    Chunk { total: u64 },
    /// The payload of a streamed string's chunk.
    ChunkPayload { n: u64, total: u64 },
    /// The frame is complete; it is `pos` bytes long.
    Done,
}

/// One open aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Open {
    /// Sized: values still expected (a pair counts two, an attribute's value one more).
    /// Streamed: elements (pairs) complete so far.
    n: u64,
    streamed: bool,
    /// Streamed map: the key of a pair was read, its value comes next.
    half: bool,
    pairs: bool,
}

/// Aggregates open at once without allocating (deeper nesting spills to the heap, up to
/// [`Limits::max_depth`]).
const INLINE_DEPTH: usize = 8;

/// Where a measuring pass over an incomplete frame stopped; see [`frame_len_resume`].
///
/// Small (no allocation unless more than 8 aggregates are open at once) and cheap to
/// [`reset`](FrameScan::reset).
#[derive(Clone, Debug)]
pub struct FrameScan {
    /// Offset of the first byte not yet settled (the start of the pending token).
    pos: usize,
    /// Bytes after `pos + 1` known to hold no CR or LF (an incomplete line).
    hint: usize,
    expect: Expect,
    stack: SmallVec<[Open; INLINE_DEPTH]>,
    /// Input length and first byte at the last call: a shorter input or another first byte
    /// means the caller did not only append, and the scan starts over.
    seen: usize,
    first: u8,
    examined: u64,
}

impl Default for FrameScan {
    fn default() -> Self {
        FrameScan::new()
    }
}

impl FrameScan {
    /// A scan at the start of a frame.
    pub fn new() -> Self {
        FrameScan {
            pos: 0,
            hint: 0,
            expect: Expect::Value,
            stack: SmallVec::new(),
            seen: 0,
            first: 0,
            examined: 0,
        }
    }

    /// Forget the frame in progress: call it whenever the front of the input is consumed,
    /// dropped or replaced. Keeps [`examined`](FrameScan::examined) and the stack's storage.
    #[inline]
    pub fn reset(&mut self) {
        self.pos = 0;
        self.hint = 0;
        self.expect = Expect::Value;
        self.stack.clear();
        self.seen = 0;
    }

    /// Bytes of the frame in progress already measured (its complete tokens).
    pub fn measured(&self) -> usize {
        self.pos
    }

    /// Bytes examined by every call on this scan since it was created (type bytes, bytes
    /// searched for line ends, payload terminators; payloads themselves are skipped): a
    /// measure of the work done, which stays close to the input's length however it is cut.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// A value ended: pops every aggregate it completes. `true` when the frame is complete.
    #[inline]
    fn value_done(&mut self) -> bool {
        while let Some(top) = self.stack.last_mut() {
            if top.streamed {
                if top.pairs && !top.half {
                    top.half = true;
                } else {
                    top.half = false;
                    top.n = top.n.saturating_add(1);
                }
                return false;
            }
            top.n = top.n.saturating_sub(1);
            if top.n > 0 {
                return false;
            }
            self.stack.pop();
        }
        true
    }

    /// The line whose text starts at `start` (after a type, `.` or `;` byte): its span
    /// without CRLF. Answers as `Parser::line` in `parse.rs` (the same errors for the same
    /// bytes) but searches only what `hint` does not already cover, in one pass for CR or LF.
    #[inline]
    fn line(
        &mut self,
        input: &[u8],
        start: usize,
        limits: &Limits,
    ) -> Result<Option<(usize, usize)>, ParseError> {
        let rest = input.get(start..).unwrap_or_default();
        let max_line = limits.max_line;
        let from = self.hint.min(rest.len());
        let end = rest.len().min(max_line.saturating_add(1));
        if let Some(w) = rest.get(from..end) {
            let found = memchr::memchr2(b'\r', b'\n', w);
            self.examined += found.map_or(w.len(), |j| j + 1) as u64;
            if let Some(j) = found {
                let i = from + j;
                if rest[i] == b'\n' {
                    // A LF before any CR: the line is too long if its CR (or its end, when
                    // there is no CR) lies beyond the limit, else the ending is invalid.
                    let cr = memchr::memchr(b'\r', &rest[i..end]).is_some();
                    return Err(if cr || rest.len() <= max_line {
                        ParseError::InvalidLineEnding
                    } else {
                        ParseError::LineTooLong
                    });
                }
                return match rest.get(i + 1) {
                    None => {
                        self.hint = i;
                        Ok(None)
                    }
                    Some(b'\n') => Ok(Some((start, start + i))),
                    Some(_) => Err(ParseError::InvalidLineEnding),
                };
            }
        }
        if rest.len() > max_line {
            return Err(ParseError::LineTooLong);
        }
        self.hint = rest.len();
        Ok(None)
    }

    /// A token ended at `end`: the next one starts there.
    #[inline]
    fn advance(&mut self, end: usize) {
        self.pos = end;
        self.hint = 0;
    }

    fn run(&mut self, input: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
        loop {
            match self.expect {
                Expect::Done => return Ok(Some(self.pos)),
                Expect::Value => {
                    if let Some(&top) = self.stack.last() {
                        if top.streamed && !top.half {
                            let Some(&c) = input.get(self.pos) else {
                                return Ok(None);
                            };
                            if c == b'.' {
                                self.examined += 1;
                                let Some((a, b)) = self.line(input, self.pos + 1, limits)? else {
                                    return Ok(None);
                                };
                                if a != b {
                                    return Err(ParseError::InvalidLength);
                                }
                                self.advance(b + 2);
                                self.stack.pop();
                                if self.value_done() {
                                    self.expect = Expect::Done;
                                }
                                continue;
                            }
                            if top.n >= limits.max_aggregate_len {
                                return Err(ParseError::AggregateTooLong);
                            }
                        }
                    }
                    let Some(&t) = input.get(self.pos) else {
                        return Ok(None);
                    };
                    self.examined += 1;
                    match t {
                        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                            let Some((a, b)) = self.line(input, self.pos + 1, limits)? else {
                                return Ok(None);
                            };
                            validate_line(t, &input[a..b])?;
                            self.advance(b + 2);
                        }
                        b'$' | b'!' | b'=' => {
                            let Some((a, b)) = self.line(input, self.pos + 1, limits)? else {
                                return Ok(None);
                            };
                            let len = length_of(
                                &input[a..b],
                                limits.max_bulk_len,
                                ParseError::BulkTooLong,
                            )?;
                            match len {
                                Len::Null if t == b'$' => self.advance(b + 2),
                                Len::Streamed if t == b'$' => {
                                    self.advance(b + 2);
                                    self.expect = Expect::Chunk { total: 0 };
                                    continue;
                                }
                                Len::Null | Len::Streamed => return Err(ParseError::InvalidLength),
                                Len::N(n) => {
                                    self.advance(b + 2);
                                    self.expect = Expect::Payload { t, n };
                                    continue;
                                }
                            }
                        }
                        b'*' | b'~' | b'>' | b'%' | b'|' => {
                            if self.stack.len() >= limits.max_depth {
                                return Err(ParseError::TooDeep);
                            }
                            let Some((a, b)) = self.line(input, self.pos + 1, limits)? else {
                                return Ok(None);
                            };
                            let len = length_of(
                                &input[a..b],
                                limits.max_aggregate_len,
                                ParseError::AggregateTooLong,
                            )?;
                            let pairs = matches!(t, b'%' | b'|');
                            match len {
                                Len::Null if t == b'*' => self.advance(b + 2),
                                Len::Null => return Err(ParseError::InvalidLength),
                                Len::Streamed if t == b'|' => {
                                    return Err(ParseError::InvalidLength)
                                }
                                Len::Streamed => {
                                    self.advance(b + 2);
                                    self.stack.push(Open {
                                        n: 0,
                                        streamed: true,
                                        half: false,
                                        pairs,
                                    });
                                    continue;
                                }
                                Len::N(n) => {
                                    self.advance(b + 2);
                                    let n = if pairs { n.saturating_mul(2) } else { n }
                                        .saturating_add(u64::from(t == b'|'));
                                    if n > 0 {
                                        self.stack.push(Open {
                                            n,
                                            streamed: false,
                                            half: false,
                                            pairs,
                                        });
                                        continue;
                                    }
                                }
                            }
                        }
                        other => return Err(ParseError::InvalidType(other)),
                    }
                    if self.value_done() {
                        self.expect = Expect::Done;
                    }
                }
                Expect::Payload { t, n } => {
                    let Some((a, b)) = self.payload(input, n)? else {
                        return Ok(None);
                    };
                    if t == b'=' && (b - a < 4 || input[a + 3] != b':') {
                        return Err(ParseError::InvalidVerbatim);
                    }
                    self.advance(b + 2);
                    self.expect = if self.value_done() {
                        Expect::Done
                    } else {
                        Expect::Value
                    };
                }
                Expect::Chunk { total } => {
                    match input.get(self.pos) {
                        None => return Ok(None),
                        Some(b';') => self.examined += 1,
                        Some(_) => return Err(ParseError::InvalidStreamChunk),
                    }
                    let Some((a, b)) = self.line(input, self.pos + 1, limits)? else {
                        return Ok(None);
                    };
                    let n = match length_of(
                        &input[a..b],
                        limits.max_bulk_len,
                        ParseError::BulkTooLong,
                    )? {
                        Len::N(n) => n,
                        _ => return Err(ParseError::InvalidStreamChunk),
                    };
                    self.advance(b + 2);
                    if n == 0 {
                        self.expect = if self.value_done() {
                            Expect::Done
                        } else {
                            Expect::Value
                        };
                        continue;
                    }
                    let total = total.saturating_add(n);
                    if total > limits.max_bulk_len {
                        return Err(ParseError::BulkTooLong);
                    }
                    self.expect = Expect::ChunkPayload { n, total };
                }
                Expect::ChunkPayload { n, total } => {
                    let Some((_, b)) = self.payload(input, n)? else {
                        return Ok(None);
                    };
                    self.advance(b + 2);
                    self.expect = Expect::Chunk { total };
                }
            }
        }
    }

    /// `n` payload bytes and CRLF at `pos`: their span, once all there.
    #[inline]
    fn payload(&mut self, input: &[u8], n: u64) -> Result<Option<(usize, usize)>, ParseError> {
        let avail = input.len().saturating_sub(self.pos) as u64;
        if avail < n.saturating_add(2) {
            return Ok(None);
        }
        let a = self.pos;
        let b = a + n as usize;
        self.examined += 2;
        if input.get(b..b + 2) != Some(b"\r\n") {
            return Err(ParseError::InvalidLineEnding);
        }
        Ok(Some((a, b)))
    }
}

/// [`frame_len`](crate::parse::frame_len), resumable: the length of the complete frame at
/// the start of `input`, `Ok(None)` while it is incomplete, remembering in `state` how far
/// it got so that the next call examines only the bytes appended since.
///
/// Every answer equals `frame_len(input, limits)` (same length, same error) provided that,
/// between calls with the same `state`, the caller only appends to `input`, and calls
/// [`FrameScan::reset`] whenever it consumes, drops or replaces the front of `input` (e.g.
/// after splitting off the complete frame). Limits must not change mid-frame. After an
/// answer other than `Ok(None)` the state is reset (errors) or keeps answering the same
/// length (complete). As a safety net a shorter input, or one with another first byte,
/// starts the scan over. Allocates nothing unless more than 8 aggregates are open at once;
/// never panics.
///
/// ```
/// use ferry_resp::parse::{frame_len_resume, FrameScan};
/// use ferry_resp::Limits;
///
/// let reply = b"*2\r\n*2\r\n:1\r\n:2\r\n$5\r\nhello\r\n";
/// let (mut scan, limits) = (FrameScan::new(), Limits::default());
/// let mut input = Vec::new();
/// for chunk in reply.chunks(3) {
///     input.extend_from_slice(chunk);
///     if let Some(len) = frame_len_resume(&input, &limits, &mut scan).unwrap() {
///         assert_eq!(len, reply.len());
///     }
/// }
/// assert!(scan.examined() < 2 * reply.len() as u64);
/// ```
pub fn frame_len_resume(
    input: &[u8],
    limits: &Limits,
    state: &mut FrameScan,
) -> Result<Option<usize>, ParseError> {
    if state.seen != 0 && (input.len() < state.seen || input.first() != Some(&state.first)) {
        state.reset();
    }
    match state.run(input, limits) {
        Ok(r) => {
            state.seen = input.len();
            if let Some(&f) = input.first() {
                state.first = f;
            }
            Ok(r)
        }
        Err(e) => {
            state.reset();
            Err(e)
        }
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
pub(crate) mod tests;
