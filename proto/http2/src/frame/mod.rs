//! The wire layer: one module per frame type (RFC 9113 §6), each a `Repr`-style struct with
//! `parse` (from a [`FrameHeader`] and its payload, a zero-copy `Bytes` slice of the input),
//! `emit` (header + payload into a `BytesMut`) and `buffer_len`.
//!
//! RFC 9113 §4.1:
//! ```text
//! HTTP Frame {
//!   Length (24),
//!   Type (8),
//!   Flags (8),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   Frame Payload (..),
//! }
//! ```
//! Unknown frame types are returned as [`Frame::Unknown`] (the connection ignores them);
//! undefined flags and the reserved bit are ignored.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::FrameError;

mod continuation;
mod data;
mod goaway;
mod headers;
mod ping;
mod priority;
mod priority_update;
mod push_promise;
mod rst_stream;
mod settings;
mod window_update;

pub use continuation::Continuation;
pub use data::Data;
pub use goaway::GoAway;
pub(crate) use headers::emit_block;
pub use headers::{Headers, PrioritySpec};
pub use ping::Ping;
pub use priority::Priority;
pub use priority_update::PriorityUpdate;
pub use push_promise::PushPromise;
pub use rst_stream::RstStream;
pub use settings::Settings;
pub use window_update::WindowUpdate;

/// Length of the frame header.
pub const HEADER_LEN: usize = 9;
/// The smallest value of SETTINGS_MAX_FRAME_SIZE (and its initial value).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1 << 14;
/// The largest value of SETTINGS_MAX_FRAME_SIZE.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Flag bits (their meaning depends on the frame type).
pub mod flags {
    /// DATA, HEADERS: last frame of the stream from this sender.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, PUSH_PROMISE, CONTINUATION: the field block ends here.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS, PUSH_PROMISE: a Pad Length field is present.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: Exclusive, Stream Dependency and Weight fields are present.
    pub const PRIORITY: u8 = 0x20;
}

/// A 31-bit stream identifier (the reserved bit is dropped on parse).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(u32);

impl StreamId {
    /// Stream 0: the connection itself.
    pub const ZERO: StreamId = StreamId(0);
    /// The largest stream identifier.
    pub const MAX: StreamId = StreamId(MAX_WINDOW);

    /// From a number, dropping the reserved high bit.
    pub const fn new(id: u32) -> StreamId {
        StreamId(id & MAX_WINDOW)
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether this is stream 0.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Odd identifiers are opened by clients.
    pub const fn is_client_initiated(self) -> bool {
        self.0 & 1 == 1
    }

    /// Even, non-zero identifiers are opened by servers (push).
    pub const fn is_server_initiated(self) -> bool {
        self.0 != 0 && self.0 & 1 == 0
    }
}

impl core::fmt::Display for StreamId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Frame type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// 0x0
    Data,
    /// 0x1
    Headers,
    /// 0x2
    Priority,
    /// 0x3
    RstStream,
    /// 0x4
    Settings,
    /// 0x5
    PushPromise,
    /// 0x6
    Ping,
    /// 0x7
    GoAway,
    /// 0x8
    WindowUpdate,
    /// 0x9
    Continuation,
    /// 0x10 (RFC 9218)
    PriorityUpdate,
    /// Any other type: ignored.
    Unknown(u8),
}

impl Kind {
    /// From the type octet.
    pub const fn from_u8(b: u8) -> Kind {
        match b {
            0 => Kind::Data,
            1 => Kind::Headers,
            2 => Kind::Priority,
            3 => Kind::RstStream,
            4 => Kind::Settings,
            5 => Kind::PushPromise,
            6 => Kind::Ping,
            7 => Kind::GoAway,
            8 => Kind::WindowUpdate,
            9 => Kind::Continuation,
            0x10 => Kind::PriorityUpdate,
            b => Kind::Unknown(b),
        }
    }

    /// The type octet.
    pub const fn to_u8(self) -> u8 {
        match self {
            Kind::Data => 0,
            Kind::Headers => 1,
            Kind::Priority => 2,
            Kind::RstStream => 3,
            Kind::Settings => 4,
            Kind::PushPromise => 5,
            Kind::Ping => 6,
            Kind::GoAway => 7,
            Kind::WindowUpdate => 8,
            Kind::Continuation => 9,
            Kind::PriorityUpdate => 0x10,
            Kind::Unknown(b) => b,
        }
    }
}

/// The 9-octet frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length (24 bits).
    pub length: u32,
    /// Frame type.
    pub kind: Kind,
    /// Flags (undefined ones are kept but ignored).
    pub flags: u8,
    /// Stream identifier (reserved bit dropped).
    pub stream_id: StreamId,
}

impl FrameHeader {
    /// A header for a payload of `length` octets.
    pub const fn new(kind: Kind, flags: u8, stream_id: StreamId, length: u32) -> FrameHeader {
        FrameHeader {
            length,
            kind,
            flags,
            stream_id,
        }
    }

    /// Parse the first 9 octets of `buf` (`None` if shorter).
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: Kind::from_u8(b[3]),
            flags: b[4],
            stream_id: StreamId::new(u32::from_be_bytes([b[5], b[6], b[7], b[8]])),
        })
    }

    /// Write the 9 octets.
    pub fn emit(&self, dst: &mut BytesMut) {
        let l = self.length.to_be_bytes();
        dst.put_slice(&[l[1], l[2], l[3], self.kind.to_u8(), self.flags]);
        dst.put_u32(self.stream_id.get());
    }

    /// Whether `flag` is set.
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Result of a parser that may need more input (never an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// More bytes are needed.
    Partial,
    /// A complete item.
    Complete(T),
}

/// Split one complete frame (header and payload) off the front of `input`. The payload is a
/// zero-copy `Bytes`. A frame longer than `max_frame_size` is an error as soon as its header
/// is complete, before the payload is buffered.
pub fn decode(
    input: &mut BytesMut,
    max_frame_size: u32,
) -> Result<Status<(FrameHeader, Bytes)>, FrameError> {
    let Some(head) = FrameHeader::parse(input) else {
        return Ok(Status::Partial);
    };
    if head.length > max_frame_size {
        return Err(FrameError::TooLarge);
    }
    let total = HEADER_LEN + head.length as usize;
    if input.len() < total {
        return Ok(Status::Partial);
    }
    input.advance(HEADER_LEN);
    let payload = input.split_to(head.length as usize).freeze();
    Ok(Status::Complete((head, payload)))
}

/// Any frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// DATA
    Data(Data),
    /// HEADERS
    Headers(Headers),
    /// PRIORITY (RFC 7540 priorities: parsed, then ignored)
    Priority(Priority),
    /// RST_STREAM
    RstStream(RstStream),
    /// SETTINGS
    Settings(Settings),
    /// PUSH_PROMISE
    PushPromise(PushPromise),
    /// PING
    Ping(Ping),
    /// GOAWAY
    GoAway(GoAway),
    /// WINDOW_UPDATE
    WindowUpdate(WindowUpdate),
    /// CONTINUATION
    Continuation(Continuation),
    /// PRIORITY_UPDATE (RFC 9218)
    PriorityUpdate(PriorityUpdate),
    /// A frame of unknown type, to be ignored.
    Unknown {
        /// The type octet.
        kind: u8,
        /// The stream it was sent on.
        stream_id: StreamId,
    },
}

impl Frame {
    /// Parse a frame's payload according to its header.
    pub fn parse(head: &FrameHeader, payload: Bytes) -> Result<Frame, FrameError> {
        Ok(match head.kind {
            Kind::Data => Frame::Data(Data::parse(head, payload)?),
            Kind::Headers => Frame::Headers(Headers::parse(head, payload)?),
            Kind::Priority => Frame::Priority(Priority::parse(head, &payload)?),
            Kind::RstStream => Frame::RstStream(RstStream::parse(head, &payload)?),
            Kind::Settings => Frame::Settings(Settings::parse(head, &payload)?),
            Kind::PushPromise => Frame::PushPromise(PushPromise::parse(head, payload)?),
            Kind::Ping => Frame::Ping(Ping::parse(head, &payload)?),
            Kind::GoAway => Frame::GoAway(GoAway::parse(head, payload)?),
            Kind::WindowUpdate => Frame::WindowUpdate(WindowUpdate::parse(head, &payload)?),
            Kind::Continuation => Frame::Continuation(Continuation::parse(head, payload)?),
            Kind::PriorityUpdate => Frame::PriorityUpdate(PriorityUpdate::parse(head, payload)?),
            Kind::Unknown(kind) => Frame::Unknown {
                kind,
                stream_id: head.stream_id,
            },
        })
    }

    /// Write the frame (header and payload). Unknown frames write nothing.
    pub fn emit(&self, dst: &mut BytesMut) {
        match self {
            Frame::Data(f) => f.emit(dst),
            Frame::Headers(f) => f.emit(dst),
            Frame::Priority(f) => f.emit(dst),
            Frame::RstStream(f) => f.emit(dst),
            Frame::Settings(f) => f.emit(dst),
            Frame::PushPromise(f) => f.emit(dst),
            Frame::Ping(f) => f.emit(dst),
            Frame::GoAway(f) => f.emit(dst),
            Frame::WindowUpdate(f) => f.emit(dst),
            Frame::Continuation(f) => f.emit(dst),
            Frame::PriorityUpdate(f) => f.emit(dst),
            Frame::Unknown { .. } => {}
        }
    }
}

/// Remove the Pad Length octet and the padding from a PADDED payload, leaving `reserved`
/// octets of fixed fields (priority, promised id) that the padding may not cover.
pub(crate) fn strip_padding(
    head: &FrameHeader,
    payload: &mut Bytes,
    reserved: usize,
) -> Result<Option<u8>, FrameError> {
    if !head.has(flags::PADDED) {
        if payload.len() < reserved {
            return Err(FrameError::BadLength);
        }
        return Ok(None);
    }
    if payload.is_empty() {
        return Err(FrameError::BadLength);
    }
    let pad = payload[0];
    payload.advance(1);
    if payload.len() < reserved {
        return Err(FrameError::BadLength);
    }
    if pad as usize > payload.len() - reserved {
        return Err(FrameError::BadPadding);
    }
    payload.truncate(payload.len() - pad as usize);
    Ok(Some(pad))
}

/// Write `pad` zero octets.
pub(crate) fn put_padding(dst: &mut BytesMut, pad: Option<u8>) {
    if let Some(p) = pad {
        dst.put_bytes(0, p as usize);
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Emit, check the length, re-parse.
    pub fn reparse(emit: impl Fn(&mut BytesMut), len: usize) -> Frame {
        let mut buf = BytesMut::new();
        emit(&mut buf);
        assert_eq!(buf.len(), len, "buffer_len disagrees with emit");
        match decode(&mut buf, MAX_MAX_FRAME_SIZE).unwrap() {
            Status::Complete((h, p)) => {
                assert!(buf.is_empty());
                Frame::parse(&h, p).unwrap()
            }
            Status::Partial => panic!("partial"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_reserved_bit() {
        let h = FrameHeader::new(Kind::Headers, 0x25, StreamId::new(7), 0x12345);
        let mut b = BytesMut::new();
        h.emit(&mut b);
        assert_eq!(&b[..], &[0x01, 0x23, 0x45, 1, 0x25, 0, 0, 0, 7]);
        assert_eq!(FrameHeader::parse(&b), Some(h));
        // Reserved bit set: ignored.
        let raw = [0, 0, 0, 8, 0, 0x80, 0, 0, 1];
        assert_eq!(
            FrameHeader::parse(&raw).unwrap().stream_id,
            StreamId::new(1)
        );
        assert_eq!(FrameHeader::parse(&raw[..8]), None);
    }

    #[test]
    fn decode_is_partial_until_complete_and_rejects_oversize_early() {
        let mut b = BytesMut::from(&[0u8, 0, 3, 0, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut b, 16384), Ok(Status::Partial));
        b.extend_from_slice(&[1, b'a', b'b']);
        assert_eq!(decode(&mut b, 16384), Ok(Status::Partial));
        b.extend_from_slice(b"c");
        let Status::Complete((h, p)) = decode(&mut b, 16384).unwrap() else {
            panic!()
        };
        assert_eq!((h.length, &p[..]), (3, &b"abc"[..]));
        let mut big = BytesMut::from(&[0u8, 0x40, 0x01, 0, 0, 0, 0, 0, 1][..]);
        assert_eq!(decode(&mut big, 16384), Err(FrameError::TooLarge));
    }

    #[test]
    fn unknown_type_is_kept_for_ignoring() {
        let h = FrameHeader::new(Kind::from_u8(0xfa), 0xff, StreamId::new(3), 2);
        let f = Frame::parse(&h, Bytes::from_static(b"xx")).unwrap();
        assert_eq!(
            f,
            Frame::Unknown {
                kind: 0xfa,
                stream_id: StreamId::new(3)
            }
        );
    }

    #[test]
    fn padding_rules() {
        let h = FrameHeader::new(Kind::Data, flags::PADDED, StreamId::new(1), 4);
        let mut p = Bytes::from_static(&[2, b'a', 0, 0]);
        assert_eq!(strip_padding(&h, &mut p, 0), Ok(Some(2)));
        assert_eq!(&p[..], b"a");
        let mut p = Bytes::from_static(&[3, b'a', 0, 0]);
        assert_eq!(strip_padding(&h, &mut p, 0), Ok(Some(3)));
        assert!(p.is_empty());
        let mut p = Bytes::from_static(&[4, b'a', 0, 0]);
        assert_eq!(strip_padding(&h, &mut p, 0), Err(FrameError::BadPadding));
        let mut p = Bytes::new();
        assert_eq!(strip_padding(&h, &mut p, 0), Err(FrameError::BadLength));
    }
}
