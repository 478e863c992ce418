//! The demo "custom binary framing" protocol: sans-IO, length-prefixed frames with stream ids,
//! fragmentation of large messages, reassembly, and per-stream sequence numbers so loss and
//! reordering are detected.
//!
//! This module does no I/O, reads no clock and spawns nothing: the raw driver (or anything else
//! that moves bytes: a pipe, a TCP stream, a fuzzer) hands it buffers.
//!
//! ## Wire format
//!
//! Every frame is a 20-byte header followed by `frag_len` payload bytes, all integers big-endian:
//!
//! ```text
//!  0       2       3       4               8               12              16      18      20
//! +-------+-------+-------+---------------+---------------+---------------+-------+-------+----
//! | magic |version| flags |   stream id   |      seq      |    msg_len    |frag_len|frag_ix| payload
//! +-------+-------+-------+---------------+---------------+---------------+-------+-------+----
//! magic    = 0xF3 0x77
//! version  = 1
//! flags    = FIRST (0x01) | LAST (0x02); the other bits MUST be zero
//! seq      = per-stream frame counter, wrapping; consecutive frames of a stream differ by one
//! msg_len  = length of the whole message this frame is a fragment of
//! frag_len = payload bytes in this frame
//! frag_ix  = 0-based index of this fragment in its message; 0 exactly when FIRST is set
//! ```
//!
//! A message of `msg_len` bytes travels as `ceil(msg_len / max_payload)` frames (one frame for an
//! empty message). Bytes after a frame's payload (Ethernet padding) are not part of it: the
//! length prefix is what delimits frames, so the same codec also works over a byte stream, where
//! [`parse_frame`] answers [`Status::Partial`] until a whole frame is buffered.
//!
//! ## Receiving
//!
//! [`parse_frame`] validates one frame (limits, flag/index consistency) and borrows its payload;
//! [`Reassembler::handle_frame`] tracks each stream's next expected sequence number, joins
//! fragments, and queues [`Event`]s: whole messages, gaps (lost frames), stale frames (duplicates
//! or reordered ones that arrived after their successors) and dropped frames. Callers MUST drain
//! [`Reassembler::poll_event`] after each call. Loss is detected, not repaired: a message with a
//! missing fragment is discarded and reported.
use std::collections::{HashMap, VecDeque};
use std::fmt;

use bytes::{Bytes, BytesMut};

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = [0xF3, 0x77];
/// The wire version this module speaks.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 20;
/// Flag: first fragment of a message.
pub const FLAG_FIRST: u8 = 0x01;
/// Flag: last fragment of a message.
pub const FLAG_LAST: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_FIRST | FLAG_LAST;

/// Result of parsing possibly incomplete input (httparse style).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status<T> {
    /// A whole item was parsed.
    Complete(T),
    /// More bytes are needed; not an error.
    Partial,
}

/// Limits enforced by the parser and the reassembler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload in one frame (`frag_len`). Default 65 535 (the field's maximum).
    pub max_frame_payload: usize,
    /// Largest message (`msg_len`). Default 1 MiB.
    pub max_message: usize,
    /// Most streams the reassembler tracks at once. Default 1024.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame_payload: u16::MAX as usize,
            max_message: 1 << 20,
            max_streams: 1024,
        }
    }
}

/// Why a frame could not be parsed. Small and `Copy`, as every parse error in Ferry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The first two bytes are not [`MAGIC`].
    BadMagic,
    /// A version other than [`VERSION`].
    UnsupportedVersion(u8),
    /// Reserved flag bits are set.
    ReservedFlags(u8),
    /// `frag_len` exceeds [`Limits::max_frame_payload`].
    FrameTooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `msg_len` exceeds [`Limits::max_message`].
    MessageTooLarge {
        /// Announced message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Flags, index and lengths contradict each other (FIRST without index 0, a fragment longer
    /// than its message, a single-frame message whose lengths differ).
    Inconsistent,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::BadMagic => f.write_str("bad frame magic"),
            ParseError::UnsupportedVersion(v) => write!(f, "unsupported frame version {v}"),
            ParseError::ReservedFlags(b) => write!(f, "reserved frame flags set: {b:#04x}"),
            ParseError::FrameTooLarge { len, max } => {
                write!(f, "frame payload of {len} bytes exceeds the limit of {max}")
            }
            ParseError::MessageTooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max}")
            }
            ParseError::Inconsistent => f.write_str("inconsistent fragment header"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message is longer than [`Limits::max_message`] or than 65 535 fragments allow.
    MessageTooLarge {
        /// Message length.
        len: usize,
        /// The largest length this encoder accepts.
        max: usize,
    },
    /// The output buffer cannot hold the frame; nothing was written.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::MessageTooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max}")
            }
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: {needed} bytes needed")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// The header of one frame (the `Repr` of the wire layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// [`FLAG_FIRST`] / [`FLAG_LAST`].
    pub flags: u8,
    /// Stream the message belongs to.
    pub stream_id: u32,
    /// Per-stream frame sequence number.
    pub seq: u32,
    /// Length of the whole message.
    pub msg_len: u32,
    /// Payload bytes in this frame.
    pub frag_len: u16,
    /// Index of this fragment in its message.
    pub frag_index: u16,
}

impl FrameHeader {
    /// Whether this is the first fragment.
    pub fn is_first(&self) -> bool {
        self.flags & FLAG_FIRST != 0
    }

    /// Whether this is the last fragment.
    pub fn is_last(&self) -> bool {
        self.flags & FLAG_LAST != 0
    }

    /// Bytes this frame occupies on the wire (header plus payload).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.frag_len as usize
    }

    /// Write the 20-byte header into `out[..HEADER_LEN]`.
    pub fn emit(&self, out: &mut [u8]) -> Result<(), EncodeError> {
        let Some(h) = out.get_mut(..HEADER_LEN) else {
            return Err(EncodeError::BufferTooSmall { needed: HEADER_LEN });
        };
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        h[3] = self.flags;
        h[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        h[8..12].copy_from_slice(&self.seq.to_be_bytes());
        h[12..16].copy_from_slice(&self.msg_len.to_be_bytes());
        h[16..18].copy_from_slice(&self.frag_len.to_be_bytes());
        h[18..20].copy_from_slice(&self.frag_index.to_be_bytes());
        Ok(())
    }

    /// Parse and validate a header (not its payload).
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Status<FrameHeader>, ParseError> {
        // Reject garbage as early as the bytes allow, even before a whole header is buffered.
        if buf.len() >= 2 && buf[..2] != MAGIC || buf.len() == 1 && buf[0] != MAGIC[0] {
            return Err(ParseError::BadMagic);
        }
        if buf.len() < HEADER_LEN {
            return Ok(Status::Partial);
        }
        if buf[2] != VERSION {
            return Err(ParseError::UnsupportedVersion(buf[2]));
        }
        let flags = buf[3];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(ParseError::ReservedFlags(flags));
        }
        let be32 = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let be16 = |i: usize| u16::from_be_bytes([buf[i], buf[i + 1]]);
        let h = FrameHeader {
            flags,
            stream_id: be32(4),
            seq: be32(8),
            msg_len: be32(12),
            frag_len: be16(16),
            frag_index: be16(18),
        };
        if h.frag_len as usize > limits.max_frame_payload {
            return Err(ParseError::FrameTooLarge {
                len: h.frag_len as usize,
                max: limits.max_frame_payload,
            });
        }
        if h.msg_len as usize > limits.max_message {
            return Err(ParseError::MessageTooLarge {
                len: h.msg_len as usize,
                max: limits.max_message,
            });
        }
        let first_ok = h.is_first() == (h.frag_index == 0);
        let single_ok = !(h.is_first() && h.is_last()) || h.frag_len as u32 == h.msg_len;
        let empty_ok = h.frag_len > 0 || h.msg_len == 0 && h.is_first() && h.is_last();
        if !first_ok || !single_ok || !empty_ok || h.frag_len as u32 > h.msg_len {
            return Err(ParseError::Inconsistent);
        }
        Ok(Status::Complete(h))
    }
}

/// A parsed frame whose payload borrows from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// `header.frag_len` payload bytes.
    pub payload: &'a [u8],
}

/// Parse one frame from the front of `buf`: `Complete((frame, consumed))` or `Partial`.
pub fn parse_frame<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Status<(Frame<'a>, usize)>, ParseError> {
    let header = match FrameHeader::parse(buf, limits)? {
        Status::Complete(h) => h,
        Status::Partial => return Ok(Status::Partial),
    };
    let end = header.buffer_len();
    match buf.get(HEADER_LEN..end) {
        Some(payload) => Ok(Status::Complete((Frame { header, payload }, end))),
        None => Ok(Status::Partial),
    }
}

/// Splits messages into frames for one stream and numbers them.
#[derive(Clone, Debug)]
pub struct Encoder {
    stream_id: u32,
    next_seq: u32,
    max_payload: usize,
    max_message: usize,
}

impl Encoder {
    /// An encoder for `stream_id` whose frames carry at most `max_payload` bytes (clamped to
    /// 1..=65 535), for messages up to `limits.max_message`.
    pub fn new(stream_id: u32, max_payload: usize, limits: &Limits) -> Encoder {
        Encoder {
            stream_id,
            next_seq: 0,
            max_payload: max_payload.clamp(1, u16::MAX as usize),
            max_message: limits.max_message.min(u32::MAX as usize),
        }
    }

    /// Start sequence numbers at `seq` (a random start makes stale frames of an earlier
    /// session unlikely to look current).
    pub fn with_initial_seq(mut self, seq: u32) -> Encoder {
        self.next_seq = seq;
        self
    }

    /// The stream id.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// The sequence number of the next frame.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Payload bytes per frame.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Number of frames `len` bytes take.
    pub fn frame_count(&self, len: usize) -> usize {
        len.div_ceil(self.max_payload).max(1)
    }

    /// Plan the frames of `msg`, reserving their sequence numbers. Every planned frame MUST be
    /// sent (in order), or the peer reports a gap.
    pub fn encode<'m>(&mut self, msg: &'m [u8]) -> Result<Fragments<'m>, EncodeError> {
        let max = self.max_message.min(self.max_payload * u16::MAX as usize);
        if msg.len() > max {
            return Err(EncodeError::MessageTooLarge {
                len: msg.len(),
                max,
            });
        }
        let count = self.frame_count(msg.len());
        let base = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(count as u32);
        Ok(Fragments {
            msg,
            stream_id: self.stream_id,
            base_seq: base,
            max_payload: self.max_payload,
            index: 0,
            count,
        })
    }
}

/// Iterator over the frames of one message (from [`Encoder::encode`]).
#[derive(Clone, Debug)]
pub struct Fragments<'m> {
    msg: &'m [u8],
    stream_id: u32,
    base_seq: u32,
    max_payload: usize,
    index: usize,
    count: usize,
}

impl Fragments<'_> {
    /// Frames left.
    pub fn remaining(&self) -> usize {
        self.count - self.index
    }
}

impl<'m> Iterator for Fragments<'m> {
    type Item = Fragment<'m>;

    fn next(&mut self) -> Option<Fragment<'m>> {
        if self.index >= self.count {
            return None;
        }
        let i = self.index;
        self.index += 1;
        let start = i * self.max_payload;
        let end = (start + self.max_payload).min(self.msg.len());
        let mut flags = 0;
        if i == 0 {
            flags |= FLAG_FIRST;
        }
        if i + 1 == self.count {
            flags |= FLAG_LAST;
        }
        Some(Fragment {
            header: FrameHeader {
                flags,
                stream_id: self.stream_id,
                seq: self.base_seq.wrapping_add(i as u32),
                msg_len: self.msg.len() as u32,
                frag_len: (end - start) as u16,
                frag_index: i as u16,
            },
            payload: &self.msg[start..end],
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl ExactSizeIterator for Fragments<'_> {}

/// One frame to send: header plus a slice of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment<'m> {
    /// The header.
    pub header: FrameHeader,
    /// The payload slice.
    pub payload: &'m [u8],
}

impl Fragment<'_> {
    /// Bytes on the wire.
    pub fn buffer_len(&self) -> usize {
        self.header.buffer_len()
    }

    /// Write header and payload to the front of `out`; returns the bytes written. A too-small
    /// buffer is left untouched.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let n = self.buffer_len();
        if out.len() < n {
            return Err(EncodeError::BufferTooSmall { needed: n });
        }
        self.header.emit(out)?;
        out[HEADER_LEN..n].copy_from_slice(self.payload);
        Ok(n)
    }
}

/// Why the reassembler dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A continuation fragment with no message in progress (its start was lost or the stream
    /// was joined mid-message).
    Orphan,
    /// The fragment does not continue the message in progress (length or index mismatch, or
    /// it overruns the announced message length).
    Mismatch,
    /// A new stream while [`Limits::max_streams`] are tracked.
    TooManyStreams,
    /// A FIRST fragment arrived, with no frame missing, while a message was unfinished: the
    /// unfinished message (not this frame) was discarded. The peer misbehaved or restarted.
    Superseded,
}

/// What the reassembler reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A whole message.
    Message {
        /// Its stream.
        stream_id: u32,
        /// Its bytes.
        data: Bytes,
    },
    /// Frames `expected..received` (wrapping) never arrived; any message in progress on the
    /// stream was discarded.
    Gap {
        /// Stream.
        stream_id: u32,
        /// First missing sequence number.
        expected: u32,
        /// Sequence number that arrived instead.
        received: u32,
    },
    /// A frame older than the stream's position (duplicate, or reordered after its successors)
    /// was dropped.
    Stale {
        /// Stream.
        stream_id: u32,
        /// Its sequence number.
        seq: u32,
    },
    /// A frame was dropped for `reason`.
    Dropped {
        /// Stream.
        stream_id: u32,
        /// Its sequence number.
        seq: u32,
        /// Why.
        reason: DropReason,
    },
}

#[derive(Debug, Default)]
struct StreamState {
    next_seq: Option<u32>,
    /// Message in progress: announced length, next index, bytes so far.
    partial: Option<(u32, u16, BytesMut)>,
}

/// Counters kept by a [`Reassembler`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages delivered.
    pub messages: u64,
    /// Frames accepted.
    pub frames: u64,
    /// Frames known lost (sum of gap sizes).
    pub lost_frames: u64,
    /// Stale frames dropped.
    pub stale_frames: u64,
    /// Frames dropped for another reason.
    pub dropped_frames: u64,
}

/// Joins fragments per stream, detecting loss and reordering. See the module docs.
#[derive(Debug)]
pub struct Reassembler {
    limits: Limits,
    streams: HashMap<u32, StreamState>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Reassembler {
    /// A reassembler enforcing `limits`.
    pub fn new(limits: Limits) -> Reassembler {
        Reassembler {
            limits,
            streams: HashMap::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Forget a stream's state (its next frame is accepted as a fresh start).
    pub fn forget_stream(&mut self, stream_id: u32) {
        self.streams.remove(&stream_id);
    }

    /// Next event; callers MUST drain after each [`handle_frame`](Self::handle_frame).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Parse every frame in `buf` (e.g. one datagram) and feed it; returns the bytes consumed.
    /// Stops at the first incomplete frame; an invalid frame is an error and stops parsing.
    pub fn handle_input(&mut self, buf: &[u8]) -> Result<usize, ParseError> {
        let mut off = 0;
        while off < buf.len() {
            match parse_frame(&buf[off..], &self.limits)? {
                Status::Complete((frame, n)) => {
                    self.handle_frame(&frame);
                    off += n;
                }
                Status::Partial => break,
            }
        }
        Ok(off)
    }

    /// Feed one parsed frame.
    pub fn handle_frame(&mut self, frame: &Frame<'_>) {
        let h = frame.header;
        let sid = h.stream_id;
        if !self.streams.contains_key(&sid) && self.streams.len() >= self.limits.max_streams {
            self.drop_frame(sid, h.seq, DropReason::TooManyStreams);
            return;
        }
        let st = self.streams.entry(sid).or_default();
        if let Some(expected) = st.next_seq {
            let diff = h.seq.wrapping_sub(expected) as i32;
            if diff < 0 {
                self.stats.stale_frames += 1;
                self.events.push_back(Event::Stale {
                    stream_id: sid,
                    seq: h.seq,
                });
                return;
            }
            if diff > 0 {
                st.partial = None;
                self.stats.lost_frames += diff as u64;
                self.events.push_back(Event::Gap {
                    stream_id: sid,
                    expected,
                    received: h.seq,
                });
            }
        }
        st.next_seq = Some(h.seq.wrapping_add(1));
        if h.is_first() {
            // After a gap the partial message is already gone; an unfinished message followed
            // by a FIRST with no gap means the peer abandoned it.
            if st.partial.take().is_some() {
                self.stats.dropped_frames += 1;
                self.events.push_back(Event::Dropped {
                    stream_id: sid,
                    seq: h.seq,
                    reason: DropReason::Superseded,
                });
            }
            let cap = (h.msg_len as usize).min(64 * 1024);
            let mut buf = BytesMut::with_capacity(cap);
            buf.extend_from_slice(frame.payload);
            st.partial = Some((h.msg_len, 1, buf));
        } else {
            match st.partial.as_mut() {
                None => {
                    self.drop_frame(sid, h.seq, DropReason::Orphan);
                    return;
                }
                Some((len, next_ix, buf)) => {
                    if *len != h.msg_len
                        || *next_ix != h.frag_index
                        || buf.len() + frame.payload.len() > *len as usize
                    {
                        st.partial = None;
                        self.drop_frame(sid, h.seq, DropReason::Mismatch);
                        return;
                    }
                    buf.extend_from_slice(frame.payload);
                    *next_ix = next_ix.wrapping_add(1);
                }
            }
        }
        self.stats.frames += 1;
        let done = matches!(&st.partial, Some((len, _, buf)) if buf.len() == *len as usize);
        if h.is_last() || done {
            match st.partial.take() {
                Some((len, _, buf)) if h.is_last() && buf.len() == len as usize => {
                    self.stats.messages += 1;
                    self.events.push_back(Event::Message {
                        stream_id: sid,
                        data: buf.freeze(),
                    });
                }
                _ => self.drop_frame(sid, h.seq, DropReason::Mismatch),
            }
        }
    }

    fn drop_frame(&mut self, stream_id: u32, seq: u32, reason: DropReason) {
        self.stats.dropped_frames += 1;
        self.events.push_back(Event::Dropped {
            stream_id,
            seq,
            reason,
        });
    }
}

/// Fuzz entry point: parse every frame in `data` and reassemble, with small limits. Never
/// panics, whatever the input (that is what the fuzz target checks).
pub fn fuzz_parse(data: &[u8]) {
    let limits = Limits {
        max_frame_payload: 4096,
        max_message: 64 * 1024,
        max_streams: 8,
    };
    let mut r = Reassembler::new(limits);
    let mut rest = data;
    while !rest.is_empty() {
        match parse_frame(rest, &limits) {
            Ok(Status::Complete((frame, n))) => {
                assert!(n >= HEADER_LEN && n <= rest.len());
                r.handle_frame(&frame);
                rest = &rest[n..];
            }
            // Resynchronise one byte later, as a datagram receiver skipping garbage would.
            Ok(Status::Partial) | Err(_) => rest = &rest[1..],
        }
        while let Some(ev) = r.poll_event() {
            if let Event::Message { data, .. } = ev {
                assert!(data.len() <= limits.max_message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames_of(enc: &mut Encoder, msg: &[u8]) -> Vec<Vec<u8>> {
        enc.encode(msg)
            .unwrap()
            .map(|f| {
                let mut v = vec![0; f.buffer_len()];
                assert_eq!(f.emit(&mut v).unwrap(), v.len());
                v
            })
            .collect()
    }

    fn drain(r: &mut Reassembler) -> Vec<Event> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = FrameHeader {
            flags: FLAG_FIRST | FLAG_LAST,
            stream_id: 7,
            seq: 0x01020304,
            msg_len: 3,
            frag_len: 3,
            frag_index: 0,
        };
        let mut buf = [0u8; HEADER_LEN + 3];
        h.emit(&mut buf).unwrap();
        buf[HEADER_LEN..].copy_from_slice(b"abc");
        assert_eq!(&buf[..4], &[0xF3, 0x77, 1, 3]);
        assert_eq!(&buf[8..12], &[1, 2, 3, 4]);
        let (f, n) = match parse_frame(&buf, &Limits::default()).unwrap() {
            Status::Complete(x) => x,
            Status::Partial => panic!("partial"),
        };
        assert_eq!(n, buf.len());
        assert_eq!(f.header, h);
        assert_eq!(f.payload, b"abc");
        for cut in 0..buf.len() {
            assert_eq!(
                parse_frame(&buf[..cut], &Limits::default()),
                Ok(Status::Partial),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn typed_errors() {
        let l = Limits {
            max_frame_payload: 100,
            max_message: 1000,
            max_streams: 4,
        };
        let mk = |flags, msg_len, frag_len, ix| {
            let mut b = [0u8; HEADER_LEN];
            FrameHeader {
                flags,
                stream_id: 1,
                seq: 0,
                msg_len,
                frag_len,
                frag_index: ix,
            }
            .emit(&mut b)
            .unwrap();
            b
        };
        assert_eq!(parse_frame(b"GET /", &l), Err(ParseError::BadMagic));
        assert_eq!(parse_frame(b"x", &l), Err(ParseError::BadMagic));
        let mut b = mk(FLAG_FIRST, 500, 50, 0);
        b[2] = 9;
        assert_eq!(parse_frame(&b, &l), Err(ParseError::UnsupportedVersion(9)));
        assert_eq!(
            parse_frame(&mk(0x80 | FLAG_FIRST, 500, 50, 0), &l),
            Err(ParseError::ReservedFlags(0x81))
        );
        assert_eq!(
            parse_frame(&mk(FLAG_FIRST, 500, 101, 0), &l),
            Err(ParseError::FrameTooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            parse_frame(&mk(FLAG_FIRST, 1001, 100, 0), &l),
            Err(ParseError::MessageTooLarge {
                len: 1001,
                max: 1000
            })
        );
        for bad in [
            mk(FLAG_FIRST, 500, 50, 1),
            mk(0, 500, 50, 0),
            mk(FLAG_FIRST | FLAG_LAST, 500, 50, 0),
            mk(0, 10, 20, 3),
            mk(FLAG_LAST, 10, 0, 3),
        ] {
            assert_eq!(parse_frame(&bad, &l), Err(ParseError::Inconsistent));
        }
        // An empty message is one FIRST|LAST frame.
        assert!(matches!(
            parse_frame(&mk(FLAG_FIRST | FLAG_LAST, 0, 0, 0), &l),
            Ok(Status::Complete(_))
        ));
        let mut enc = Encoder::new(1, 10, &l);
        assert_eq!(
            enc.encode(&[0; 1001]).unwrap_err(),
            EncodeError::MessageTooLarge {
                len: 1001,
                max: 1000
            }
        );
        let f = enc.encode(b"hello").unwrap().next().unwrap();
        let mut small = [0xAAu8; 10];
        assert_eq!(
            f.emit(&mut small),
            Err(EncodeError::BufferTooSmall { needed: 25 })
        );
        assert_eq!(small, [0xAA; 10]);
    }

    #[test]
    fn loss_and_reorder_are_reported() {
        let l = Limits::default();
        let mut enc = Encoder::new(3, 4, &l);
        let a = frames_of(&mut enc, b"aaaaaaaaaa"); // 3 frames, seq 0..3
        let b = frames_of(&mut enc, b"bbbb"); // seq 3
        let c = frames_of(&mut enc, b"cccccc"); // seq 4..6
        let mut r = Reassembler::new(l);
        // Lose a's middle fragment.
        r.handle_input(&a[0]).unwrap();
        r.handle_input(&a[2]).unwrap();
        let ev = drain(&mut r);
        assert_eq!(
            ev,
            vec![
                Event::Gap {
                    stream_id: 3,
                    expected: 1,
                    received: 2
                },
                Event::Dropped {
                    stream_id: 3,
                    seq: 2,
                    reason: DropReason::Orphan
                }
            ]
        );
        // Deliver c before b: c is accepted (b becomes a gap), then b is stale.
        r.handle_input(&c[0]).unwrap();
        r.handle_input(&c[1]).unwrap();
        r.handle_input(&b[0]).unwrap();
        let ev = drain(&mut r);
        assert_eq!(
            ev,
            vec![
                Event::Gap {
                    stream_id: 3,
                    expected: 3,
                    received: 4
                },
                Event::Message {
                    stream_id: 3,
                    data: Bytes::from_static(b"cccccc")
                },
                Event::Stale {
                    stream_id: 3,
                    seq: 3
                },
            ]
        );
        // Duplicate is stale too.
        r.handle_input(&c[1]).unwrap();
        assert!(matches!(drain(&mut r)[..], [Event::Stale { seq: 5, .. }]));
        let s = r.stats();
        assert_eq!((s.messages, s.lost_frames, s.stale_frames), (1, 2, 2));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let l = Limits::default();
        let mut enc = Encoder::new(1, 2, &l).with_initial_seq(u32::MAX - 1);
        let mut r = Reassembler::new(l);
        for f in frames_of(&mut enc, b"abcdefg") {
            r.handle_input(&f).unwrap();
        }
        assert_eq!(
            drain(&mut r),
            vec![Event::Message {
                stream_id: 1,
                data: Bytes::from_static(b"abcdefg")
            }]
        );
        assert_eq!(enc.next_seq(), 2);
    }

    #[test]
    fn stream_limit_and_mismatch() {
        let l = Limits {
            max_streams: 1,
            ..Limits::default()
        };
        let mut r = Reassembler::new(l);
        let f1 = frames_of(&mut Encoder::new(1, 100, &l), b"x");
        let f2 = frames_of(&mut Encoder::new(2, 100, &l), b"y");
        r.handle_input(&f1[0]).unwrap();
        r.handle_input(&f2[0]).unwrap();
        let ev = drain(&mut r);
        assert!(matches!(
            ev[1],
            Event::Dropped {
                stream_id: 2,
                reason: DropReason::TooManyStreams,
                ..
            }
        ));
        // Two interleaved messages claiming the same stream: the continuation mismatches.
        let mut r = Reassembler::new(Limits::default());
        let a = frames_of(&mut Encoder::new(5, 2, &l), b"aaaa");
        let b = frames_of(&mut Encoder::new(5, 2, &l), b"bbbbbb");
        r.handle_input(&a[0]).unwrap();
        r.handle_input(&b[1]).unwrap();
        assert!(matches!(
            drain(&mut r)[..],
            [Event::Dropped {
                reason: DropReason::Mismatch,
                ..
            }]
        ));
    }

    #[test]
    fn unfinished_message_superseded() {
        let l = Limits::default();
        let mut enc = Encoder::new(4, 2, &l);
        let a = frames_of(&mut enc, b"aaaa");
        let b = frames_of(&mut enc.clone().with_initial_seq(1), b"bb");
        let mut r = Reassembler::new(l);
        r.handle_input(&a[0]).unwrap();
        r.handle_input(&b[0]).unwrap();
        assert_eq!(
            drain(&mut r),
            vec![
                Event::Dropped {
                    stream_id: 4,
                    seq: 1,
                    reason: DropReason::Superseded
                },
                Event::Message {
                    stream_id: 4,
                    data: Bytes::from_static(b"bb")
                }
            ]
        );
    }

    #[test]
    fn fuzz_parse_survives_samples() {
        let l = Limits::default();
        let mut enc = Encoder::new(1, 3, &l);
        let mut all = Vec::new();
        for f in frames_of(&mut enc, b"hello world") {
            all.extend_from_slice(&f);
        }
        fuzz_parse(&all);
        fuzz_parse(&[]);
        fuzz_parse(&[0xF3, 0x77, 1, 0xff, 0xff]);
        for i in 0..all.len() {
            let mut m = all.clone();
            m[i] ^= 0x5a;
            fuzz_parse(&m);
        }
    }

    proptest! {
        #[test]
        fn round_trip_any_split(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..6),
            max_payload in 1usize..1600,
            split in 1usize..64,
            stream in any::<u32>(),
            seq0 in any::<u32>(),
        ) {
            let l = Limits::default();
            let mut enc = Encoder::new(stream, max_payload, &l).with_initial_seq(seq0);
            let mut wire = Vec::new();
            for m in &msgs {
                let frames = enc.encode(m).unwrap();
                prop_assert_eq!(frames.len(), m.len().div_ceil(max_payload.min(65535)).max(1));
                for f in frames {
                    let start = wire.len();
                    wire.resize(start + f.buffer_len(), 0);
                    f.emit(&mut wire[start..]).unwrap();
                }
            }
            // Feed as a byte stream in chunks of `split` bytes: Partial until whole frames.
            let mut r = Reassembler::new(l);
            let mut buf = Vec::new();
            for chunk in wire.chunks(split) {
                buf.extend_from_slice(chunk);
                let n = r.handle_input(&buf).unwrap();
                buf.drain(..n);
            }
            prop_assert!(buf.is_empty());
            let got: Vec<Vec<u8>> = std::iter::from_fn(|| r.poll_event())
                .map(|e| match e {
                    Event::Message { stream_id, data } => { assert_eq!(stream_id, stream); data.to_vec() }
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn drops_never_corrupt(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 1..8),
            drop_mask in any::<u64>(),
            swap in any::<u8>(),
        ) {
            // Whatever frames are lost or swapped, every delivered message is one that was sent.
            let l = Limits::default();
            let mut enc = Encoder::new(9, 64, &l);
            let mut frames = Vec::new();
            for m in &msgs {
                frames.extend(frames_of(&mut enc, m));
            }
            if frames.len() > 1 {
                let i = swap as usize % (frames.len() - 1);
                frames.swap(i, i + 1);
            }
            let mut r = Reassembler::new(l);
            for (i, f) in frames.iter().enumerate() {
                if drop_mask & (1 << (i % 64)) == 0 {
                    r.handle_input(f).unwrap();
                }
            }
            while let Some(e) = r.poll_event() {
                if let Event::Message { data, .. } = e {
                    prop_assert!(msgs.iter().any(|m| m[..] == data[..]));
                }
            }
        }

        #[test]
        fn fuzz_parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzz_parse(&data);
        }
    }
}
