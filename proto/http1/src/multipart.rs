//! Streaming, sans-IO, zero-copy `multipart/form-data` parser (RFC 7578; body syntax of
//! RFC 2046 §5.1.1).
//!
//! # Model
//!
//! [`MultipartParser`] owns no socket, buffer or clock. The caller reads the (already de-chunked,
//! decoded) request body into a [`BytesMut`], hands it to [`MultipartParser::feed`], then drains
//! [`MultipartParser::poll_event`]. `feed` removes from the buffer everything it could parse and
//! leaves an incomplete tail behind; the caller appends the next bytes behind that tail and calls
//! `feed` again. When the body has ended, the caller calls [`MultipartParser::finish`].
//!
//! Polling order: after each `feed` (and after `finish`), call `poll_event` until it returns
//! `None`. Events arrive as `PartStart`, zero or more `Data`, `PartEnd` for each part, then one
//! `End` once the close delimiter has been seen.
//!
//! Caller duties:
//! - The caller MUST keep the bytes `feed` left in the buffer and append new bytes after them.
//! - The caller MUST call `finish` when the body ends; only then is a missing close delimiter
//!   reported ([`MultipartError::UnexpectedEnd`]).
//! - The caller SHOULD bound the total body size itself: the epilogue after the close delimiter
//!   is discarded without limit.
//! - After an error, every later `feed` and `finish` returns the same error; events queued before
//!   it can still be polled.
//!
//! Buffering is bounded: `feed` leaves at most `"\r\n--".len() + boundary.len() - 1` bytes in the
//! buffer while looking for a delimiter, and less than `max_part_head_bytes` while a part's header
//! block is incomplete. `Data` events are [`Bytes`] slices split off the caller's buffer (no copy).
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use ferry_http1::multipart::{
//!     boundary_from_content_type, MultipartConfig, MultipartEvent, MultipartParser,
//! };
//!
//! let boundary = boundary_from_content_type(b"multipart/form-data; boundary=XyZ")?;
//! let mut parser = MultipartParser::new(boundary, MultipartConfig::default());
//! let mut input = BytesMut::new();
//! let mut value = Vec::new();
//! // The body as it arrives, here in two pieces.
//! let pieces: [&[u8]; 2] = [
//!     b"--XyZ\r\nContent-Disposition: form-data; name=\"greeting\"\r\n\r\nhel",
//!     b"lo\r\n--XyZ--\r\n",
//! ];
//! for piece in pieces {
//!     input.extend_from_slice(piece);
//!     parser.feed(&mut input)?;
//!     while let Some(event) = parser.poll_event() {
//!         match event {
//!             MultipartEvent::PartStart(head) => assert_eq!(head.name(), Some("greeting")),
//!             MultipartEvent::Data(bytes) => value.extend_from_slice(&bytes),
//!             MultipartEvent::PartEnd | MultipartEvent::End => {}
//!             _ => {}
//!         }
//!     }
//! }
//! parser.finish()?;
//! assert_eq!(value, b"hello");
//! # Ok::<(), ferry_http1::multipart::MultipartError>(())
//! ```
//!
//! # Grammar (RFC 2046 §5.1.1)
//!
//! ```text
//! boundary := 0*69<bchars> bcharsnospace
//! bchars := bcharsnospace / " "
//! bcharsnospace := DIGIT / ALPHA / "'" / "(" / ")" / "+" / "_" / "," / "-" / "." / "/" / ":"
//!                  / "=" / "?"
//! body-part := MIME-part-headers [CRLF *OCTET]
//! close-delimiter := delimiter "--"
//! dash-boundary := "--" boundary
//! delimiter := CRLF dash-boundary
//! encapsulation := delimiter transport-padding CRLF body-part
//! multipart-body := [preamble CRLF] dash-boundary transport-padding CRLF body-part
//!                   *encapsulation close-delimiter transport-padding [CRLF epilogue]
//! transport-padding := *LWSP-char
//! ```
//!
//! The header block of a part always ends with a blank line (a part without header fields
//! starts with CRLF), as every form encoder writes it.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;
use smallvec::SmallVec;

use crate::parse::{ParseError, Status};

/// Errors from parsing a `Content-Type` or a `multipart/form-data` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MultipartError {
    /// The `boundary` parameter is missing, duplicated, malformed, or not 1..=70 `bchars`
    /// (also: the parameter list of the `Content-Type` is malformed).
    InvalidBoundary,
    /// The media type is not `multipart/form-data`.
    NotMultipart,
    /// A boundary is not followed by transport padding and CRLF, nor by `--`.
    MalformedDelimiter,
    /// A part's header block is malformed, or its `Content-Disposition` is malformed, duplicated
    /// or carries a non-UTF-8 `name`/`filename`.
    MalformedPartHeaders,
    /// A part's header block (or a delimiter's transport padding) exceeds `max_part_head_bytes`.
    PartHeadTooLarge,
    /// A part has more than `max_part_headers` header fields.
    TooManyHeaders,
    /// The body has more than `max_parts` parts.
    TooManyParts,
    /// The preamble exceeds `max_preamble_bytes`.
    PreambleTooLarge,
    /// A part lacks `Content-Disposition: form-data` with a `name` parameter (RFC 7578 §4.2).
    MissingContentDisposition,
    /// The body ended before the close delimiter.
    UnexpectedEnd,
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidBoundary => "invalid multipart boundary",
            Self::NotMultipart => "media type is not multipart/form-data",
            Self::MalformedDelimiter => "malformed multipart delimiter line",
            Self::MalformedPartHeaders => "malformed multipart part headers",
            Self::PartHeadTooLarge => "multipart part header block too large",
            Self::TooManyHeaders => "too many multipart part headers",
            Self::TooManyParts => "too many multipart parts",
            Self::PreambleTooLarge => "multipart preamble too large",
            Self::MissingContentDisposition => "multipart part lacks a form-data name",
            Self::UnexpectedEnd => "multipart body ended before the close delimiter",
        })
    }
}

impl core::error::Error for MultipartError {}

/// Limits applied by [`MultipartParser`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultipartConfig {
    /// Largest header block of one part, blank line included (default 8 KiB).
    pub max_part_head_bytes: usize,
    /// Most header fields in one part (default 32).
    pub max_part_headers: usize,
    /// Most parts in one body (default 1024).
    pub max_parts: usize,
    /// Most preamble bytes discarded before the first delimiter (default 64 KiB).
    pub max_preamble_bytes: usize,
    /// Require each part to carry `Content-Disposition: form-data; name=...` (default `true`,
    /// as RFC 7578 §4.2 says MUST).
    pub require_content_disposition: bool,
}

impl Default for MultipartConfig {
    fn default() -> Self {
        Self {
            max_part_head_bytes: 8 * 1024,
            max_part_headers: 32,
            max_parts: 1024,
            max_preamble_bytes: 64 * 1024,
            require_content_disposition: true,
        }
    }
}

/// Output of [`MultipartParser::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MultipartEvent {
    /// A part begins; its header block.
    PartStart(PartHead),
    /// Next bytes of the current part's body (never empty; a slice of the fed buffer).
    Data(Bytes),
    /// The current part's body is complete.
    PartEnd,
    /// The close delimiter was seen; no more events follow.
    End,
}

/// Byte range into [`PartHead::raw`], as `u32` to keep headers small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(range: Range<usize>) -> Result<Self, MultipartError> {
        let start = u32::try_from(range.start).map_err(|_| MultipartError::PartHeadTooLarge)?;
        let end = u32::try_from(range.end).map_err(|_| MultipartError::PartHeadTooLarge)?;
        Ok(Self { start, end })
    }

    fn get<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        raw.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// One header field: name and value as ranges into the head block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeaderSpan {
    name: Span,
    value: Span,
}

/// A parameter value: a range of the head block, or decoded text when it had escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Text {
    Span(Span),
    Owned(String),
}

/// The header block of one part: one frozen [`Bytes`], headers kept as ranges into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartHead {
    raw: Bytes,
    headers: SmallVec<[HeaderSpan; 8]>,
    name: Option<Text>,
    filename: Option<Text>,
}

impl PartHead {
    /// The header block as received, blank line included.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Header fields in order of appearance, as `(name, value)`.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|h| {
            let name = core::str::from_utf8(h.name.get(&self.raw)).unwrap_or_default();
            (name, h.value.get(&self.raw))
        })
    }

    /// Value of the first header field called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The form field name: the `name` parameter of `Content-Disposition`.
    pub fn name(&self) -> Option<&str> {
        self.text(self.name.as_ref())
    }

    /// The file name: the `filename*` (RFC 8187, UTF-8 or ISO-8859-1) parameter of
    /// `Content-Disposition` when decodable, else its `filename` parameter.
    pub fn filename(&self) -> Option<&str> {
        self.text(self.filename.as_ref())
    }

    /// Value of the part's `Content-Type` header field.
    pub fn content_type(&self) -> Option<&[u8]> {
        self.header("content-type")
    }

    fn text<'a>(&'a self, text: Option<&'a Text>) -> Option<&'a str> {
        match text? {
            Text::Span(span) => core::str::from_utf8(span.get(&self.raw)).ok(),
            Text::Owned(s) => Some(s),
        }
    }
}

/// Streaming `multipart/form-data` body parser.
///
/// Polling order: `feed` body bytes, then `poll_event` until it returns `None`; repeat; call
/// `finish` when the body ends and drain `poll_event` once more. See the [module docs](self).
#[derive(Debug)]
pub struct MultipartParser {
    config: MultipartConfig,
    /// `CRLF "--" boundary`.
    delimiter: Vec<u8>,
    state: State,
    events: VecDeque<MultipartEvent>,
    parts: usize,
    preamble_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Discarding the preamble; `at_start`: no byte seen yet, so a dash-boundary without the
    /// leading CRLF may still open the body.
    Preamble { at_start: bool },
    /// A boundary was matched; reading transport padding then CRLF, or `--`.
    AfterDelimiter { padding: usize, in_part: bool },
    /// Reading a part's header block; `scanned` bytes hold no `CRLF CRLF`.
    PartHead { scanned: usize },
    /// Emitting a part's body until the next delimiter.
    PartBody,
    /// After the close delimiter: everything is discarded.
    Epilogue,
    /// A fatal error; returned again by every later call.
    Failed(MultipartError),
}

/// What a state handler tells the run loop.
enum Step {
    /// State changed or bytes were consumed: run the next state.
    Continue,
    /// Nothing more can be done with the buffered bytes.
    NeedMore,
}

impl MultipartParser {
    /// A parser for a body delimited by `boundary` (the value from
    /// [`boundary_from_content_type`]). An invalid boundary makes every `feed` and `finish`
    /// return [`MultipartError::InvalidBoundary`].
    pub fn new(boundary: Bytes, config: MultipartConfig) -> Self {
        let mut delimiter = Vec::with_capacity(4 + boundary.len());
        delimiter.extend_from_slice(b"\r\n--");
        delimiter.extend_from_slice(&boundary);
        let state = if is_valid_boundary(&boundary) {
            State::Preamble { at_start: true }
        } else {
            State::Failed(MultipartError::InvalidBoundary)
        };
        Self {
            config,
            delimiter,
            state,
            events: VecDeque::new(),
            parts: 0,
            preamble_len: 0,
        }
    }

    /// The boundary this parser looks for.
    pub fn boundary(&self) -> &[u8] {
        self.delimiter.get(4..).unwrap_or_default()
    }

    /// Whether the close delimiter has been seen.
    pub fn is_complete(&self) -> bool {
        self.state == State::Epilogue
    }

    /// Feeds body bytes: consumes from `input` what could be parsed and queues the events.
    /// An incomplete tail stays in `input` (less than `4 + boundary.len()` bytes, or less than
    /// `max_part_head_bytes` of an unfinished header block).
    pub fn feed(&mut self, input: &mut BytesMut) -> Result<(), MultipartError> {
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        self.run(input)
            .inspect_err(|&e| self.state = State::Failed(e))
    }

    /// The body ended (no more bytes); errors with [`MultipartError::UnexpectedEnd`] unless the
    /// close delimiter was seen.
    pub fn finish(&mut self) -> Result<(), MultipartError> {
        match self.state {
            State::Epilogue => Ok(()),
            State::Failed(e) => Err(e),
            _ => {
                self.state = State::Failed(MultipartError::UnexpectedEnd);
                Err(MultipartError::UnexpectedEnd)
            }
        }
    }

    /// Next queued event, in body order.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<MultipartEvent> {
        self.events.pop_front()
    }

    fn run(&mut self, input: &mut BytesMut) -> Result<(), MultipartError> {
        loop {
            let step = match self.state {
                State::Preamble { at_start } => self.preamble(input, at_start)?,
                State::AfterDelimiter { padding, in_part } => {
                    self.after_delimiter(input, padding, in_part)?
                }
                State::PartHead { scanned } => self.part_head(input, scanned)?,
                State::PartBody => self.part_body(input),
                State::Epilogue => {
                    input.clear();
                    Step::NeedMore
                }
                State::Failed(e) => return Err(e),
            };
            if let Step::NeedMore = step {
                return Ok(());
            }
        }
    }

    /// `[preamble CRLF] dash-boundary`
    fn preamble(&mut self, input: &mut BytesMut, at_start: bool) -> Result<Step, MultipartError> {
        if at_start {
            let dash_boundary = self.delimiter.get(2..).unwrap_or_default();
            match prefix_match(input, dash_boundary) {
                Prefix::Full => {
                    input.advance(dash_boundary.len());
                    self.state = State::AfterDelimiter {
                        padding: 0,
                        in_part: false,
                    };
                    return Ok(Step::Continue);
                }
                Prefix::Partial => return Ok(Step::NeedMore),
                Prefix::No => self.state = State::Preamble { at_start: false },
            }
        }
        match memmem::find(input, &self.delimiter) {
            Some(i) => {
                self.discard_preamble(i)?;
                input.advance(i + self.delimiter.len());
                self.state = State::AfterDelimiter {
                    padding: 0,
                    in_part: false,
                };
                Ok(Step::Continue)
            }
            None => {
                let discard = input.len() - partial_delimiter_len(input, &self.delimiter);
                self.discard_preamble(discard)?;
                input.advance(discard);
                Ok(Step::NeedMore)
            }
        }
    }

    fn discard_preamble(&mut self, n: usize) -> Result<(), MultipartError> {
        self.preamble_len = self.preamble_len.saturating_add(n);
        if self.preamble_len > self.config.max_preamble_bytes {
            return Err(MultipartError::PreambleTooLarge);
        }
        Ok(())
    }

    /// `transport-padding CRLF` (another part follows) or `"--"` (close delimiter).
    fn after_delimiter(
        &mut self,
        input: &mut BytesMut,
        padding: usize,
        in_part: bool,
    ) -> Result<Step, MultipartError> {
        let Some(&first) = input.first() else {
            return Ok(Step::NeedMore);
        };
        match first {
            b'-' if padding == 0 => match input.get(1) {
                None => Ok(Step::NeedMore),
                Some(b'-') => {
                    input.advance(2);
                    if in_part {
                        self.events.push_back(MultipartEvent::PartEnd);
                    }
                    self.events.push_back(MultipartEvent::End);
                    self.state = State::Epilogue;
                    Ok(Step::Continue)
                }
                Some(_) => Err(MultipartError::MalformedDelimiter),
            },
            b' ' | b'\t' => {
                let n = input
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count();
                let padding = padding.saturating_add(n);
                if padding > self.config.max_part_head_bytes {
                    return Err(MultipartError::PartHeadTooLarge);
                }
                input.advance(n);
                self.state = State::AfterDelimiter { padding, in_part };
                Ok(Step::Continue)
            }
            b'\r' => match input.get(1) {
                None => Ok(Step::NeedMore),
                Some(b'\n') => {
                    input.advance(2);
                    if in_part {
                        self.events.push_back(MultipartEvent::PartEnd);
                    }
                    if self.parts >= self.config.max_parts {
                        return Err(MultipartError::TooManyParts);
                    }
                    self.parts += 1;
                    self.state = State::PartHead { scanned: 0 };
                    Ok(Step::Continue)
                }
                Some(_) => Err(MultipartError::MalformedDelimiter),
            },
            _ => Err(MultipartError::MalformedDelimiter),
        }
    }

    /// `MIME-part-headers CRLF`: header fields, each ending in CRLF, then a blank line.
    fn part_head(&mut self, input: &mut BytesMut, scanned: usize) -> Result<Step, MultipartError> {
        let max = self.config.max_part_head_bytes;
        let head_len = if input.starts_with(b"\r\n") {
            2
        } else {
            let rest = input.get(scanned..).unwrap_or_default();
            match memmem::find(rest, b"\r\n\r\n") {
                Some(i) => scanned + i + 4,
                None => {
                    // A complete head would be longer than what is buffered.
                    if input.len() >= max {
                        return Err(MultipartError::PartHeadTooLarge);
                    }
                    self.state = State::PartHead {
                        scanned: input.len().saturating_sub(3),
                    };
                    return Ok(Step::NeedMore);
                }
            }
        };
        if head_len > max {
            return Err(MultipartError::PartHeadTooLarge);
        }
        let head = parse_part_head(input.split_to(head_len).freeze(), &self.config)?;
        self.events.push_back(MultipartEvent::PartStart(head));
        self.state = State::PartBody;
        Ok(Step::Continue)
    }

    /// `*OCTET` up to the next `delimiter`.
    fn part_body(&mut self, input: &mut BytesMut) -> Step {
        match memmem::find(input, &self.delimiter) {
            Some(i) => {
                if i > 0 {
                    let data = input.split_to(i).freeze();
                    self.events.push_back(MultipartEvent::Data(data));
                }
                input.advance(self.delimiter.len());
                self.state = State::AfterDelimiter {
                    padding: 0,
                    in_part: true,
                };
                Step::Continue
            }
            None => {
                let emit = input.len() - partial_delimiter_len(input, &self.delimiter);
                if emit > 0 {
                    let data = input.split_to(emit).freeze();
                    self.events.push_back(MultipartEvent::Data(data));
                }
                Step::NeedMore
            }
        }
    }
}

enum Prefix {
    Full,
    Partial,
    No,
}

/// Whether `hay` starts with `needle`, or is a proper prefix of it.
fn prefix_match(hay: &[u8], needle: &[u8]) -> Prefix {
    if !hay.iter().zip(needle).all(|(a, b)| a == b) {
        Prefix::No
    } else if hay.len() >= needle.len() {
        Prefix::Full
    } else {
        Prefix::Partial
    }
}

/// Length of the longest suffix of `hay` that is a proper prefix of `delimiter`, given that
/// `hay` does not contain `delimiter` and that its only CR is its first byte (bchars have no
/// CR): only a suffix starting at the last CR can qualify.
fn partial_delimiter_len(hay: &[u8], delimiter: &[u8]) -> usize {
    let from = hay.len().saturating_sub(delimiter.len().saturating_sub(1));
    let tail = hay.get(from..).unwrap_or_default();
    let Some(cr) = memchr::memrchr(b'\r', tail) else {
        return 0;
    };
    let candidate = tail.get(cr..).unwrap_or_default();
    if delimiter.starts_with(candidate) {
        candidate.len()
    } else {
        0
    }
}

/// Parses a complete header block (ending in the blank line) into a [`PartHead`].
fn parse_part_head(raw: Bytes, config: &MultipartConfig) -> Result<PartHead, MultipartError> {
    let mut headers: SmallVec<[HeaderSpan; 8]> = SmallVec::new();
    {
        // The crate's head parser (`crate::parse`: httparse's `parse_headers` verdicts).
        let base = raw.as_ptr() as usize;
        let mut bad = false;
        let mut sink = |_: usize, _: usize, name: &[u8], value: &[u8]| match (
            span_within(base, name),
            span_within(base, value),
        ) {
            (Ok(name), Ok(value)) => headers.push(HeaderSpan { name, value }),
            _ => bad = true,
        };
        match crate::parse::parse_field_section(&raw, config.max_part_headers, &mut sink) {
            Ok(Status::Complete((len, _, _))) if len == raw.len() && !bad => {}
            Err(ParseError::TooManyHeaders) => return Err(MultipartError::TooManyHeaders),
            _ => return Err(MultipartError::MalformedPartHeaders),
        }
    }
    let mut disposition = None;
    for h in &headers {
        if h.name
            .get(&raw)
            .eq_ignore_ascii_case(b"content-disposition")
        {
            if disposition.is_some() {
                return Err(MultipartError::MalformedPartHeaders);
            }
            disposition = Some(parse_disposition(&raw, h.value)?);
        }
    }
    let disposition = disposition.unwrap_or_default();
    if config.require_content_disposition && !(disposition.form_data && disposition.name.is_some())
    {
        return Err(MultipartError::MissingContentDisposition);
    }
    Ok(PartHead {
        raw,
        headers,
        name: disposition.name,
        filename: disposition.filename,
    })
}

/// The range `part` occupies in the buffer starting at address `base`.
fn span_within(base: usize, part: &[u8]) -> Result<Span, MultipartError> {
    let start = (part.as_ptr() as usize)
        .checked_sub(base)
        .ok_or(MultipartError::MalformedPartHeaders)?;
    Span::new(start..start.saturating_add(part.len()))
}

#[derive(Default)]
struct Disposition {
    form_data: bool,
    name: Option<Text>,
    filename: Option<Text>,
}

/// RFC 7578 §4.2 and RFC 6266 §4.1:
///
/// ```text
/// content-disposition = disposition-type *( OWS ";" OWS disposition-parm )
/// disposition-parm    = filename-parm / disp-ext-parm
/// filename-parm       = "filename" "=" value / "filename*" "=" ext-value
/// value               = token / quoted-string
/// ```
fn parse_disposition(raw: &Bytes, value: Span) -> Result<Disposition, MultipartError> {
    const MALFORMED: MultipartError = MultipartError::MalformedPartHeaders;
    let v = value.get(raw);
    let type_end = memchr::memchr(b';', v).unwrap_or(v.len());
    let ty = trim_ows(v.get(..type_end).unwrap_or_default());
    if ty.is_empty() || !ty.iter().all(|&b| is_tchar(b)) {
        return Err(MALFORMED);
    }
    let mut out = Disposition {
        form_data: ty.eq_ignore_ascii_case(b"form-data"),
        ..Disposition::default()
    };
    let mut filename_ext: Option<Option<String>> = None;
    let offset = value.start as usize;
    for param in Params::new(v, type_end) {
        let param = param.map_err(|()| MALFORMED)?;
        let name = v.get(param.name.clone()).unwrap_or_default();
        let text = || -> Result<Text, MultipartError> {
            let bytes = v.get(param.value.clone()).unwrap_or_default();
            if param.escaped {
                String::from_utf8(unescape(bytes))
                    .map(Text::Owned)
                    .map_err(|_| MALFORMED)
            } else {
                core::str::from_utf8(bytes).map_err(|_| MALFORMED)?;
                Span::new(offset + param.value.start..offset + param.value.end).map(Text::Span)
            }
        };
        if name.eq_ignore_ascii_case(b"name") {
            if out.name.is_some() {
                return Err(MALFORMED);
            }
            out.name = Some(text()?);
        } else if name.eq_ignore_ascii_case(b"filename") {
            if out.filename.is_some() {
                return Err(MALFORMED);
            }
            out.filename = Some(text()?);
        } else if name.eq_ignore_ascii_case(b"filename*") {
            if filename_ext.is_some() {
                return Err(MALFORMED);
            }
            // An ext-value is never a quoted-string; an undecodable one is ignored (RFC 6266).
            let decoded = if param.quoted {
                None
            } else {
                decode_ext_value(v.get(param.value.clone()).unwrap_or_default())
            };
            filename_ext = Some(decoded);
        }
    }
    if let Some(Some(decoded)) = filename_ext {
        out.filename = Some(Text::Owned(decoded));
    }
    Ok(out)
}

/// RFC 8187 §3.2: `ext-value = charset "'" [ language ] "'" value-chars`, for the UTF-8 and
/// ISO-8859-1 charsets.
fn decode_ext_value(v: &[u8]) -> Option<String> {
    let mut fields = v.splitn(3, |&b| b == b'\'');
    let charset = fields.next()?;
    let _language = fields.next()?;
    let encoded = fields.next()?;
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let (hi, lo) = match tail {
                [hi, lo, ..] => (hex_value(*hi)?, hex_value(*lo)?),
                _ => return None,
            };
            bytes.push((hi << 4) | lo);
            rest = tail.get(2..).unwrap_or_default();
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    if charset.eq_ignore_ascii_case(b"utf-8") {
        String::from_utf8(bytes).ok()
    } else if charset.eq_ignore_ascii_case(b"iso-8859-1") {
        Some(bytes.iter().map(|&b| char::from(b)).collect())
    } else {
        None
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses a `Content-Type` value such as `multipart/form-data; boundary="abc"` and returns the
/// validated boundary. The media type and parameter names are matched case-insensitively; the
/// boundary may be a token or a quoted-string.
pub fn boundary_from_content_type(value: &[u8]) -> Result<Bytes, MultipartError> {
    let type_end = memchr::memchr(b';', value).unwrap_or(value.len());
    let media_type = trim_ows(value.get(..type_end).unwrap_or_default());
    if !media_type.eq_ignore_ascii_case(b"multipart/form-data") {
        return Err(MultipartError::NotMultipart);
    }
    let mut boundary = None;
    for param in Params::new(value, type_end) {
        let param = param.map_err(|()| MultipartError::InvalidBoundary)?;
        let name = value.get(param.name).unwrap_or_default();
        if name.eq_ignore_ascii_case(b"boundary") {
            if boundary.is_some() {
                return Err(MultipartError::InvalidBoundary);
            }
            boundary = Some(unescape(value.get(param.value).unwrap_or_default()));
        }
    }
    let boundary = boundary.ok_or(MultipartError::InvalidBoundary)?;
    if !is_valid_boundary(&boundary) {
        return Err(MultipartError::InvalidBoundary);
    }
    Ok(Bytes::from(boundary))
}

/// `boundary := 0*69<bchars> bcharsnospace`
fn is_valid_boundary(b: &[u8]) -> bool {
    fn is_bcharsnospace(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&c)
    }
    b.len() <= 70
        && b.last().is_some_and(|&c| is_bcharsnospace(c))
        && b.iter().all(|&c| c == b' ' || is_bcharsnospace(c))
}

/// One `parameter-name "=" parameter-value`; ranges index the parsed string. For a
/// quoted-string, `value` excludes the quotes.
struct Param {
    name: Range<usize>,
    value: Range<usize>,
    quoted: bool,
    escaped: bool,
}

/// RFC 9110 §5.6.6: `parameters = *( OWS ";" OWS [ parameter ] )`, leniently allowing OWS
/// around `=` and any visible byte but `;` and `"` in an unquoted value. A backslash escapes
/// only `"` and `\`, so Windows paths in file names survive (as Go's `mime` package does).
struct Params<'a> {
    s: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Params<'a> {
    fn new(s: &'a [u8], pos: usize) -> Self {
        Self {
            s,
            pos,
            failed: false,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        self.skip_while(|b| b == b' ' || b == b'\t');
    }

    fn param(&mut self) -> Option<Result<Param, ()>> {
        loop {
            self.skip_ows();
            match self.peek() {
                None => return None,
                Some(b';') => self.pos += 1,
                Some(_) => return Some(Err(())),
            }
            self.skip_ows();
            match self.peek() {
                None => return None,
                Some(b';') => continue,
                Some(_) => break,
            }
        }
        let name_start = self.pos;
        self.skip_while(is_tchar);
        let name = name_start..self.pos;
        self.skip_ows();
        if name.is_empty() || self.peek() != Some(b'=') {
            return Some(Err(()));
        }
        self.pos += 1;
        self.skip_ows();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let start = self.pos;
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => return Some(Err(())),
                    Some(b'"') => break,
                    Some(b'\\') if matches!(self.s.get(self.pos + 1), Some(b'"' | b'\\')) => {
                        escaped = true;
                        self.pos += 2;
                    }
                    Some(b) if b == b'\t' || b == b'\\' || (b >= 0x20 && b != 0x7f) => {
                        self.pos += 1
                    }
                    Some(_) => return Some(Err(())),
                }
            }
            let value = start..self.pos;
            self.pos += 1;
            Some(Ok(Param {
                name,
                value,
                quoted: true,
                escaped,
            }))
        } else {
            let start = self.pos;
            self.skip_while(|b| b > 0x20 && b != 0x7f && b != b';' && b != b'"');
            if start == self.pos {
                return Some(Err(()));
            }
            Some(Ok(Param {
                name,
                value: start..self.pos,
                quoted: false,
                escaped: false,
            }))
        }
    }
}

impl Iterator for Params<'_> {
    type Item = Result<Param, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let param = self.param();
        self.failed = matches!(param, Some(Err(())));
        param
    }
}

/// Undoes `quoted-pair` escapes of `"` and `\`.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail.first()) {
            (b'\\', Some(&next @ (b'"' | b'\\'))) => {
                out.push(next);
                rest = tail.get(1..).unwrap_or_default();
            }
            _ => {
                out.push(b);
                rest = tail;
            }
        }
    }
    out
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    crate::encode::TCHAR[b as usize]
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::format;
    use alloc::vec;
    use proptest::prelude::*;
    use std::string::ToString;

    /// A part as reassembled from the events.
    #[derive(Debug)]
    struct Part {
        head: PartHead,
        data: Vec<u8>,
    }

    #[derive(Default)]
    struct Collector {
        parts: Vec<Part>,
        open: bool,
        ended: bool,
    }

    impl Collector {
        fn drain(&mut self, p: &mut MultipartParser) {
            while let Some(ev) = p.poll_event() {
                assert!(!self.ended, "event after End: {ev:?}");
                match ev {
                    MultipartEvent::PartStart(head) => {
                        assert!(!self.open);
                        self.open = true;
                        self.parts.push(Part {
                            head,
                            data: Vec::new(),
                        });
                    }
                    MultipartEvent::Data(b) => {
                        assert!(self.open && !b.is_empty());
                        self.parts.last_mut().unwrap().data.extend_from_slice(&b);
                    }
                    MultipartEvent::PartEnd => {
                        assert!(self.open);
                        self.open = false;
                    }
                    MultipartEvent::End => {
                        assert!(!self.open);
                        self.ended = true;
                    }
                }
            }
        }
    }

    fn parse_chunks<'a>(
        boundary: &[u8],
        config: MultipartConfig,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Part>, MultipartError> {
        let mut p = MultipartParser::new(Bytes::copy_from_slice(boundary), config);
        let mut input = BytesMut::new();
        let mut c = Collector::default();
        let bound = config.max_part_head_bytes.max(4 + boundary.len());
        for chunk in chunks {
            input.extend_from_slice(chunk);
            let r = p.feed(&mut input);
            c.drain(&mut p);
            r?;
            assert!(input.len() < bound, "buffered {} bytes", input.len());
        }
        p.finish()?;
        c.drain(&mut p);
        assert!(c.ended && !c.open);
        Ok(c.parts)
    }

    fn parse(boundary: &[u8], body: &[u8]) -> Result<Vec<Part>, MultipartError> {
        parse_chunks(boundary, MultipartConfig::default(), [body])
    }

    /// Every split in two pieces, and one byte at a time, gives the same parts as one piece.
    fn check_all_splits(boundary: &[u8], body: &[u8], expected: &[Expected]) {
        let check = |parts: Vec<Part>| {
            assert_eq!(parts.len(), expected.len());
            for (part, exp) in parts.iter().zip(expected) {
                assert_eq!(part.head.name(), exp.name);
                assert_eq!(part.head.filename(), exp.filename);
                assert_eq!(part.head.content_type(), exp.content_type);
                assert_eq!(part.data, exp.data);
            }
        };
        check(parse(boundary, body).unwrap());
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            check(parse_chunks(boundary, MultipartConfig::default(), [a, b]).unwrap());
        }
        check(parse_chunks(boundary, MultipartConfig::default(), body.chunks(1)).unwrap());
    }

    struct Expected {
        name: Option<&'static str>,
        filename: Option<&'static str>,
        content_type: Option<&'static [u8]>,
        data: &'static [u8],
    }

    #[test]
    fn rfc7578_example() {
        // RFC 7578 §4.5 (content-transfer-encoding example), close delimiter added.
        let body = b"--AaB03x\r\n\
            content-disposition: form-data; name=\"field1\"\r\n\
            content-type: text/plain;charset=UTF-8\r\n\
            content-transfer-encoding: quoted-printable\r\n\
            \r\n\
            Joe owes =E2=82=AC100.\r\n\
            --AaB03x--\r\n";
        check_all_splits(
            b"AaB03x",
            body,
            &[Expected {
                name: Some("field1"),
                filename: None,
                content_type: Some(b"text/plain;charset=UTF-8"),
                data: b"Joe owes =E2=82=AC100.",
            }],
        );
        let parts = parse(b"AaB03x", body).unwrap();
        let head = &parts[0].head;
        assert_eq!(
            head.header("Content-Transfer-Encoding"),
            Some(&b"quoted-printable"[..])
        );
        let names: Vec<&str> = head.headers().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "content-disposition",
                "content-type",
                "content-transfer-encoding"
            ]
        );
    }

    const BROWSER_BOUNDARY: &[u8] = b"----WebKitFormBoundaryePkpFF7tjBAqx29L";
    const FILE_DATA: &[u8] =
        b"\x7fELF\x00\x01\r\n--\r\n-\r\r\n\n------WebKitFormBound\x00\xff\r\n------WebKitFormBoundaryePkpFF7tjBAqx29\r\n";

    fn browser_body() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(b"------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n");
        body.extend_from_slice(b"Content-Disposition: form-data; name=\"MAX_FILE_SIZE\"\r\n\r\n");
        body.extend_from_slice(b"100000\r\n------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n");
        body.extend_from_slice(
            b"Content-Disposition: form-data; name=\"uploadedfile\"; filename=\"hello.o\"\r\n",
        );
        body.extend_from_slice(b"Content-Type: application/x-object\r\n\r\n");
        body.extend_from_slice(FILE_DATA);
        body.extend_from_slice(b"\r\n------WebKitFormBoundaryePkpFF7tjBAqx29L\r\n");
        body.extend_from_slice(b"Content-Disposition: form-data; name=\"empty\"\r\n\r\n");
        body.extend_from_slice(b"\r\n------WebKitFormBoundaryePkpFF7tjBAqx29L--\r\n");
        body
    }

    #[test]
    fn browser_upload() {
        check_all_splits(
            BROWSER_BOUNDARY,
            &browser_body(),
            &[
                Expected {
                    name: Some("MAX_FILE_SIZE"),
                    filename: None,
                    content_type: None,
                    data: b"100000",
                },
                Expected {
                    name: Some("uploadedfile"),
                    filename: Some("hello.o"),
                    content_type: Some(b"application/x-object"),
                    data: FILE_DATA,
                },
                Expected {
                    name: Some("empty"),
                    filename: None,
                    content_type: None,
                    data: b"",
                },
            ],
        );
    }

    #[test]
    fn data_events_are_slices_of_input() {
        let body = browser_body();
        let mut input = BytesMut::from(&body[..]);
        let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
        let mut p = MultipartParser::new(Bytes::from_static(BROWSER_BOUNDARY), Default::default());
        p.feed(&mut input).unwrap();
        let mut data = 0;
        while let Some(ev) = p.poll_event() {
            if let MultipartEvent::Data(b) = ev {
                assert!(range.contains(&(b.as_ptr() as usize)));
                data += 1;
            }
        }
        assert_eq!(data, 2);
        assert!(p.is_complete());
        assert_eq!(p.boundary(), BROWSER_BOUNDARY);
    }

    #[test]
    fn boundary_lookalikes_are_data() {
        let data: &[u8] = b"a\r\n--bounda\r\n--boundarx--boundary\n--boundary\r--boundary\r\n-boundary\r\n--bound";
        let mut body = b"--boundary\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n".to_vec();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n--boundary--");
        let parts = parse(b"boundary", &body).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].data, data);
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            let parts = parse_chunks(b"boundary", Default::default(), [a, b]).unwrap();
            assert_eq!(parts[0].data, data);
        }
    }

    #[test]
    fn preamble_padding_and_epilogue() {
        let body = b"pre --b\r\n-b\r\n\r\n--b \t \r\n\
            Content-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--  \r\nepilogue --b\r\n--b\r\n";
        let parts = parse(b"b", body).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].head.name(), Some("a"));
        assert_eq!(parts[0].data, b"1");

        let body = b"\r\n--b \t\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--b--";
        let parts = parse(b"b", body).unwrap();
        assert_eq!(parts[0].head.name(), Some("a"));
        assert_eq!(parts[0].data, b"1");
    }

    #[test]
    fn zero_parts_and_empty_heads() {
        assert_eq!(parse(b"b", b"--b--").unwrap().len(), 0);
        let lenient = MultipartConfig {
            require_content_disposition: false,
            ..Default::default()
        };
        let body: &[u8] = b"--b\r\n\r\nno headers\r\n--b\r\n\r\n\r\n--b--";
        let parts = parse_chunks(b"b", lenient, [body]).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].head.headers().count(), 0);
        assert_eq!(parts[0].head.raw().as_ref(), b"\r\n");
        assert_eq!(parts[0].data, b"no headers");
        assert_eq!(parts[1].data, b"");
        assert_eq!(
            parse(b"b", body).unwrap_err(),
            MultipartError::MissingContentDisposition
        );
    }

    #[test]
    fn missing_close_delimiter() {
        for body in [
            &b""[..],
            b"--b",
            b"--b\r\n",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\ndata",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\ndata\r\n--b",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\ndata\r\n--b-",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\ndata\r\n--b\r\n",
            b"preamble only",
        ] {
            assert_eq!(
                parse(b"b", body).unwrap_err(),
                MultipartError::UnexpectedEnd
            );
        }
        // The error is sticky.
        let mut p = MultipartParser::new(Bytes::from_static(b"b"), Default::default());
        assert_eq!(p.finish(), Err(MultipartError::UnexpectedEnd));
        assert_eq!(
            p.feed(&mut BytesMut::from(&b"--b--"[..])),
            Err(MultipartError::UnexpectedEnd)
        );
        assert_eq!(p.finish(), Err(MultipartError::UnexpectedEnd));
    }

    #[test]
    fn malformed_delimiters() {
        for body in [
            &b"--bX\r\n"[..],
            b"--b-X",
            b"--b \t-- ",
            b"--b\rX",
            b"--b\n",
            b"x\r\n--bb\r\n",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--bb",
        ] {
            assert_eq!(
                parse(b"b", body).unwrap_err(),
                MultipartError::MalformedDelimiter
            );
        }
    }

    #[test]
    fn malformed_part_headers() {
        for head in [
            &b"bad header\r\n\r\n"[..],
            b"Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n\r\n",
            b"Content-Disposition: form-data; name=\"a\r\n\r\n",
            b"Content-Disposition: form-data; name=a; name=b\r\n\r\n",
            b"Content-Disposition: form-data; name=a b\r\n\r\n",
            b"Content-Disposition: form-data; =a\r\n\r\n",
            b"Content-Disposition: ; name=a\r\n\r\n",
            b"Content-Disposition: form-data; name=\"\xff\"\r\n\r\n",
            b"X: y\n\r\n\r\n",
        ] {
            let mut body = b"--b\r\n".to_vec();
            body.extend_from_slice(head);
            body.extend_from_slice(b"x\r\n--b--");
            assert_eq!(
                parse(b"b", &body).unwrap_err(),
                MultipartError::MalformedPartHeaders,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        for head in [
            &b"Content-Type: text/plain\r\n\r\n"[..],
            b"Content-Disposition: attachment; name=a\r\n\r\n",
            b"Content-Disposition: form-data; filename=a\r\n\r\n",
        ] {
            let mut body = b"--b\r\n".to_vec();
            body.extend_from_slice(head);
            body.extend_from_slice(b"x\r\n--b--");
            assert_eq!(
                parse(b"b", &body).unwrap_err(),
                MultipartError::MissingContentDisposition
            );
        }
    }

    fn head_of(disposition: &[u8]) -> PartHead {
        let mut body = b"--b\r\nContent-Disposition: ".to_vec();
        body.extend_from_slice(disposition);
        body.extend_from_slice(b"\r\n\r\n\r\n--b--");
        parse(b"b", &body).unwrap().remove(0).head
    }

    #[test]
    fn content_disposition_parameters() {
        let h = head_of(b"form-data; name=\"a\\\"b\\\\c\"; filename=\"C:\\dir\\f.txt\"");
        assert_eq!(h.name(), Some("a\"b\\c"));
        assert_eq!(h.filename(), Some("C:\\dir\\f.txt"));

        let h = head_of(b"Form-Data ;NAME=token ; FileName=plain.txt;");
        assert_eq!(h.name(), Some("token"));
        assert_eq!(h.filename(), Some("plain.txt"));

        let h = head_of(
            b"form-data; name=\"f\"; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt",
        );
        assert_eq!(h.filename(), Some("\u{20ac} rates.txt"));
        let h = head_of(b"form-data; name=f; filename*=iso-8859-1'en'%A3.txt");
        assert_eq!(h.filename(), Some("\u{a3}.txt"));
        // Undecodable filename* falls back to filename.
        let h = head_of(b"form-data; name=f; filename*=KOI8-R''%C1; filename=\"x\"");
        assert_eq!(h.filename(), Some("x"));
        let h = head_of(b"form-data; name=f; filename*=UTF-8''%ZZ");
        assert_eq!(h.filename(), None);
        let h = head_of(b"form-data; name=\"\xc3\xa9t\xc3\xa9\"; filename=\"\"");
        assert_eq!(h.name(), Some("\u{e9}t\u{e9}"));
        assert_eq!(h.filename(), Some(""));
        assert!(h
            .header("content-disposition")
            .unwrap()
            .starts_with(b"form-data; "));
    }

    #[test]
    fn boundary_from_content_type_cases() {
        let ok = |v: &[u8], b: &[u8]| assert_eq!(boundary_from_content_type(v).unwrap(), b);
        ok(b"multipart/form-data; boundary=AaB03x", b"AaB03x");
        ok(b"Multipart/Form-Data;BOUNDARY=\"a b:c\"", b"a b:c");
        ok(b" multipart/form-data ; charset=utf-8; boundary=x ", b"x");
        let long = [b'a'; 70];
        let mut v = b"multipart/form-data; boundary=".to_vec();
        v.extend_from_slice(&long);
        ok(&v, &long);
        v.push(b'a');
        let err = |v: &[u8], e| assert_eq!(boundary_from_content_type(v), Err(e));
        err(&v, MultipartError::InvalidBoundary);
        err(b"text/plain; boundary=x", MultipartError::NotMultipart);
        err(b"multipart/mixed; boundary=x", MultipartError::NotMultipart);
        err(b"multipart/form-data", MultipartError::InvalidBoundary);
        err(
            b"multipart/form-data; boundary=",
            MultipartError::InvalidBoundary,
        );
        err(
            b"multipart/form-data; boundary=\"\"",
            MultipartError::InvalidBoundary,
        );
        err(
            b"multipart/form-data; boundary=\"a \"",
            MultipartError::InvalidBoundary,
        );
        err(
            b"multipart/form-data; boundary=a; boundary=b",
            MultipartError::InvalidBoundary,
        );
        err(
            b"multipart/form-data; boundary=\"abc",
            MultipartError::InvalidBoundary,
        );
        err(
            b"multipart/form-data; boundary=a\x01",
            MultipartError::InvalidBoundary,
        );
        err(
            b"multipart/form-data; boundary=a*b",
            MultipartError::InvalidBoundary,
        );
        err(
            b"multipart/form-data boundary=a",
            MultipartError::NotMultipart,
        );
        // Escapes only produce `"` and `\`, which are not bchars.
        err(
            b"multipart/form-data; boundary=\"a\\\"b\"",
            MultipartError::InvalidBoundary,
        );
    }

    #[test]
    fn invalid_boundary_in_new() {
        for b in [&b""[..], b"a\r\n", b"trailing ", &[b'x'; 71]] {
            let mut p = MultipartParser::new(Bytes::copy_from_slice(b), Default::default());
            let mut input = BytesMut::from(&b"--x--"[..]);
            assert_eq!(p.feed(&mut input), Err(MultipartError::InvalidBoundary));
            assert_eq!(p.finish(), Err(MultipartError::InvalidBoundary));
        }
    }

    fn body_with_head(head: &[u8]) -> Vec<u8> {
        let mut body = b"--b\r\n".to_vec();
        body.extend_from_slice(head);
        body.extend_from_slice(b"data\r\n--b--");
        body
    }

    #[test]
    fn limit_part_head_bytes() {
        let head = b"Content-Disposition: form-data; name=a\r\n\r\n";
        let config = |n| MultipartConfig {
            max_part_head_bytes: n,
            ..Default::default()
        };
        let body = body_with_head(head);
        assert!(parse_chunks(b"b", config(head.len()), [&body[..]]).is_ok());
        assert_eq!(
            parse_chunks(b"b", config(head.len() - 1), [&body[..]]).unwrap_err(),
            MultipartError::PartHeadTooLarge
        );
        // An endless header block is refused once max bytes are buffered, before finish.
        let mut p = MultipartParser::new(Bytes::from_static(b"b"), config(100));
        let mut input = BytesMut::from(&b"--b\r\nX: "[..]);
        let mut result = Ok(());
        for _ in 0..100 {
            input.extend_from_slice(b"y");
            result = p.feed(&mut input);
            if result.is_err() {
                break;
            }
            assert!(input.len() < 100);
        }
        assert_eq!(result, Err(MultipartError::PartHeadTooLarge));
        // Transport padding is bounded by the same limit.
        let mut body = b"--b".to_vec();
        body.extend_from_slice(&[b' '; 101]);
        body.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_chunks(b"b", config(100), body.chunks(7)).unwrap_err(),
            MultipartError::PartHeadTooLarge
        );
    }

    #[test]
    fn limit_part_headers() {
        let mut head = b"Content-Disposition: form-data; name=a\r\n".to_vec();
        for i in 0..4 {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let config = |n| MultipartConfig {
            max_part_headers: n,
            ..Default::default()
        };
        let body = body_with_head(&head);
        let parts = parse_chunks(b"b", config(5), [&body[..]]).unwrap();
        assert_eq!(parts[0].head.headers().count(), 5);
        assert_eq!(parts[0].head.header("x-3"), Some(&b"v"[..]));
        assert_eq!(
            parse_chunks(b"b", config(4), [&body[..]]).unwrap_err(),
            MultipartError::TooManyHeaders
        );
    }

    #[test]
    fn limit_parts() {
        let mut body = Vec::new();
        for i in 0..5 {
            body.extend_from_slice(
                format!("--b\r\nContent-Disposition: form-data; name=p{i}\r\n\r\n{i}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"--b--");
        let config = |n| MultipartConfig {
            max_parts: n,
            ..Default::default()
        };
        assert_eq!(parse_chunks(b"b", config(5), [&body[..]]).unwrap().len(), 5);
        assert_eq!(
            parse_chunks(b"b", config(4), [&body[..]]).unwrap_err(),
            MultipartError::TooManyParts
        );
    }

    #[test]
    fn limit_preamble() {
        let config = |n| MultipartConfig {
            max_preamble_bytes: n,
            ..Default::default()
        };
        let body = b"0123456789\r\n--b\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--b--";
        assert!(parse_chunks(b"b", config(10), [&body[..]]).is_ok());
        assert!(parse_chunks(b"b", config(10), body.chunks(1)).is_ok());
        assert_eq!(
            parse_chunks(b"b", config(9), [&body[..]]).unwrap_err(),
            MultipartError::PreambleTooLarge
        );
        // Endless garbage is refused while streaming, and never buffered.
        let garbage = [b'g'; 1000];
        assert_eq!(
            parse_chunks(b"b", config(500), garbage.chunks(64)).unwrap_err(),
            MultipartError::PreambleTooLarge
        );
    }

    #[test]
    fn bounded_buffering_10mb() {
        let boundary = b"boundary";
        let mut p = MultipartParser::new(Bytes::from_static(boundary), Default::default());
        let mut input = BytesMut::new();
        let mut c = Collector::default();
        input.extend_from_slice(b"--boundary\r\nContent-Disposition: form-data; name=f\r\n\r\n");
        // Each 64 KiB piece ends in the longest possible partial delimiter.
        let mut piece = vec![b'x'; 64 * 1024];
        let tail = b"\r\n--boundar";
        let n = piece.len();
        piece[n - tail.len()..].copy_from_slice(tail);
        piece[100..111].copy_from_slice(tail);
        let pieces = 10 * 1024 * 1024 / n;
        for _ in 0..pieces {
            input.extend_from_slice(&piece);
            p.feed(&mut input).unwrap();
            assert!(input.len() < 200, "leftover {}", input.len());
            c.drain(&mut p);
        }
        input.extend_from_slice(b"\r\n--boundary--\r\n");
        p.feed(&mut input).unwrap();
        p.finish().unwrap();
        c.drain(&mut p);
        assert!(c.ended);
        assert_eq!(c.parts.len(), 1);
        assert!(c.parts[0].data == piece.repeat(pieces));
    }

    #[test]
    fn error_display() {
        assert_eq!(
            MultipartError::UnexpectedEnd.to_string(),
            "multipart body ended before the close delimiter"
        );
        let e: &dyn core::error::Error = &MultipartError::TooManyParts;
        assert!(!e.to_string().is_empty());
    }

    /// Splits `body` at the given (unsorted, arbitrary) indices.
    fn split_at_indices<'a>(body: &'a [u8], idx: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = idx.iter().map(|i| i.index(body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for cut in cuts {
            pieces.push(&body[start..cut]);
            start = cut;
        }
        pieces.push(&body[start..]);
        pieces
    }

    #[derive(Clone, Debug)]
    struct GenPart {
        name: String,
        filename: Option<String>,
        content_type: Option<String>,
        data: Vec<u8>,
    }

    fn tricky_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                3 => any::<u8>(),
                2 => Just(b'\r'),
                2 => Just(b'\n'),
                3 => Just(b'-'),
                1 => Just(b'a'),
                1 => Just(b'b'),
            ],
            0..max,
        )
    }

    fn gen_part() -> impl Strategy<Value = GenPart> {
        let text = "[a-zA-Z0-9_ .\"\\\\\u{e9}]{1,10}";
        (
            text,
            prop::option::of(text),
            prop::option::of("[a-z]{1,8}/[a-z0-9.+-]{1,10}"),
            tricky_bytes(300),
        )
            .prop_map(|(name, filename, content_type, data)| GenPart {
                name,
                filename,
                content_type,
                data,
            })
    }

    fn quote(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    fn serialize(
        boundary: &[u8],
        preamble: &[u8],
        padding: &str,
        parts: &[GenPart],
        epilogue: &[u8],
    ) -> Vec<u8> {
        let mut body = preamble.to_vec();
        if !preamble.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        for part in parts {
            body.extend_from_slice(b"--");
            body.extend_from_slice(boundary);
            body.extend_from_slice(padding.as_bytes());
            body.extend_from_slice(b"\r\nContent-Disposition: form-data; name=");
            body.extend_from_slice(quote(&part.name).as_bytes());
            if let Some(f) = &part.filename {
                body.extend_from_slice(b"; filename=");
                body.extend_from_slice(quote(f).as_bytes());
            }
            if let Some(ct) = &part.content_type {
                body.extend_from_slice(b"\r\nContent-Type: ");
                body.extend_from_slice(ct.as_bytes());
            }
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(&part.data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--");
        body.extend_from_slice(boundary);
        body.extend_from_slice(b"--");
        body.extend_from_slice(epilogue);
        body
    }

    proptest! {
        #[test]
        fn round_trip(
            boundary in prop_oneof![
                "[ab-]{1,4}",
                "[0-9A-Za-z'()+_,./:=? -]{0,20}[0-9A-Za-z'()+_,./:=?-]",
            ],
            preamble in tricky_bytes(40),
            padding in "[ \t]{0,3}",
            parts in prop::collection::vec(gen_part(), 0..5),
            epilogue in tricky_bytes(40),
            splits in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            // Like a real encoder: lengthen the boundary until the delimiter occurs nowhere else.
            let mut boundary = boundary.into_bytes();
            let clashes = |b: &[u8]| {
                let mut delimiter = b"\r\n--".to_vec();
                delimiter.extend_from_slice(b);
                parts.iter().any(|p| memmem::find(&p.data, &delimiter).is_some())
                    || memmem::find(&preamble, &delimiter).is_some()
                    || preamble.starts_with(&delimiter[2..])
            };
            while clashes(&boundary) {
                boundary.push(b'z');
            }
            prop_assume!(boundary.len() <= 70);
            let body = serialize(&boundary, &preamble, &padding, &parts, &epilogue);
            let pieces = split_at_indices(&body, &splits);
            let parsed = parse_chunks(&boundary, MultipartConfig::default(), pieces).unwrap();
            prop_assert_eq!(parsed.len(), parts.len());
            for (got, want) in parsed.iter().zip(&parts) {
                prop_assert_eq!(got.head.name(), Some(want.name.as_str()));
                prop_assert_eq!(got.head.filename(), want.filename.as_deref());
                prop_assert_eq!(
                    got.head.content_type(),
                    want.content_type.as_ref().map(|c| c.as_bytes())
                );
                prop_assert_eq!(&got.data, &want.data);
            }
        }

        #[test]
        fn garbage_never_panics(
            body in tricky_bytes(400),
            splits in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            limits in (0usize..64, 0usize..4, 0usize..4, 0usize..64, any::<bool>()),
        ) {
            let config = MultipartConfig {
                max_part_head_bytes: limits.0,
                max_part_headers: limits.1,
                max_parts: limits.2,
                max_preamble_bytes: limits.3,
                require_content_disposition: limits.4,
            };
            let _ = parse_chunks(b"ab", config, split_at_indices(&body, &splits));
            let _ = parse_chunks(b"ab", MultipartConfig::default(), split_at_indices(&body, &splits));
            let _ = boundary_from_content_type(&body);
        }

        #[test]
        fn mutated_bodies_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
            splits in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut body = browser_body();
            for (at, byte, op) in edits {
                let i = at.index(body.len());
                match op {
                    0 => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ => { body.remove(i); }
                }
            }
            let _ = parse_chunks(BROWSER_BOUNDARY, MultipartConfig::default(), split_at_indices(&body, &splits));
        }

        #[test]
        fn disposition_parameters_never_panic(value in prop::collection::vec(any::<u8>(), 0..80)) {
            let mut v = b"multipart/form-data;".to_vec();
            v.extend_from_slice(&value);
            let _ = boundary_from_content_type(&v);
            let raw = Bytes::from(value);
            let len = u32::try_from(raw.len()).unwrap();
            let _ = parse_disposition(&raw, Span { start: 0, end: len });
        }
    }
}
