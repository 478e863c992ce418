//! HEADERS (RFC 9113 §6.2).
//!
//! ```text
//! HEADERS Frame {
//!   Length (24),
//!   Type (8) = 0x01,
//!   Unused Flags (2),
//!   PRIORITY Flag (1),
//!   Unused Flag (1),
//!   PADDED Flag (1),
//!   END_HEADERS Flag (1),
//!   Unused Flag (1),
//!   END_STREAM Flag (1),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   [Pad Length (8)],
//!   [Exclusive (1)],
//!   [Stream Dependency (31)],
//!   [Weight (8)],
//!   Field Block Fragment (..),
//!   Padding (..2040),
//! }
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{flags, put_padding, strip_padding, FrameHeader, Kind, StreamId, HEADER_LEN};
use crate::FrameError;

/// RFC 7540 priority fields (parsed and ignored: RFC 9113 deprecates them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrioritySpec {
    /// Exclusive flag.
    pub exclusive: bool,
    /// The stream depended on.
    pub dependency: StreamId,
    /// Weight minus one (0..=255 means 1..=256).
    pub weight: u8,
}

impl PrioritySpec {
    pub(crate) fn parse(b: &[u8]) -> PrioritySpec {
        let dep = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        PrioritySpec {
            exclusive: dep & 0x8000_0000 != 0,
            dependency: StreamId::new(dep),
            weight: b[4],
        }
    }

    pub(crate) fn emit(&self, dst: &mut BytesMut) {
        dst.put_u32(self.dependency.get() | if self.exclusive { 0x8000_0000 } else { 0 });
        dst.put_u8(self.weight);
    }
}

/// A HEADERS frame. `block` is a fragment of the field block (continued by CONTINUATION frames
/// unless `end_headers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headers {
    /// The stream (never 0).
    pub stream_id: StreamId,
    /// RFC 7540 priority fields, when the PRIORITY flag is set.
    pub priority: Option<PrioritySpec>,
    /// Field block fragment (zero-copy slice of the input).
    pub block: Bytes,
    /// END_STREAM.
    pub end_stream: bool,
    /// END_HEADERS.
    pub end_headers: bool,
    /// Padding octets, if PADDED.
    pub pad_len: Option<u8>,
}

impl Headers {
    /// Parse the payload. Stream 0 and bad padding are connection errors PROTOCOL_ERROR. A
    /// self-dependency (a stream error PROTOCOL_ERROR) is *not* rejected here: the field block
    /// must still be decoded to keep HPACK in sync; see [`Headers::is_self_dependent`].
    pub fn parse(head: &FrameHeader, mut payload: Bytes) -> Result<Headers, FrameError> {
        if head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        let prio = head.has(flags::PRIORITY);
        let pad_len = strip_padding(head, &mut payload, if prio { 5 } else { 0 })?;
        let priority = if prio {
            let p = PrioritySpec::parse(&payload[..5]);
            payload.advance(5);
            Some(p)
        } else {
            None
        };
        let f = Headers {
            stream_id: head.stream_id,
            priority,
            block: payload,
            end_stream: head.has(flags::END_STREAM),
            end_headers: head.has(flags::END_HEADERS),
            pad_len,
        };
        Ok(f)
    }

    /// Whether the priority fields make the stream depend on itself.
    pub fn is_self_dependent(&self) -> bool {
        matches!(self.priority, Some(p) if p.dependency == self.stream_id)
    }

    fn payload_len(&self) -> usize {
        self.block.len()
            + self.pad_len.map_or(0, |p| p as usize + 1)
            + if self.priority.is_some() { 5 } else { 0 }
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        let mut f = 0;
        if self.end_stream {
            f |= flags::END_STREAM;
        }
        if self.end_headers {
            f |= flags::END_HEADERS;
        }
        if self.pad_len.is_some() {
            f |= flags::PADDED;
        }
        if self.priority.is_some() {
            f |= flags::PRIORITY;
        }
        FrameHeader::new(Kind::Headers, f, self.stream_id, self.payload_len() as u32).emit(dst);
        if let Some(p) = self.pad_len {
            dst.put_u8(p);
        }
        if let Some(p) = &self.priority {
            p.emit(dst);
        }
        dst.put_slice(&self.block);
        put_padding(dst, self.pad_len);
    }
}

/// Write a whole field block as one HEADERS (or PUSH_PROMISE) frame followed by as many
/// CONTINUATION frames as `max_frame_size` requires. `first` writes the first frame's header
/// and fixed fields given the fragment length and whether it ends the block; it returns how
/// many payload octets it used for fixed fields.
pub(crate) fn emit_block(
    dst: &mut BytesMut,
    stream_id: StreamId,
    block: &[u8],
    max_frame_size: usize,
    fixed: usize,
    first: impl FnOnce(&mut BytesMut, usize, bool),
) {
    let room = max_frame_size.saturating_sub(fixed).max(1);
    let n = block.len().min(room);
    let end = n == block.len();
    first(dst, n, end);
    dst.put_slice(&block[..n]);
    let mut rest = &block[n..];
    while !rest.is_empty() {
        let n = rest.len().min(max_frame_size);
        let end = n == rest.len();
        FrameHeader::new(
            Kind::Continuation,
            if end { flags::END_HEADERS } else { 0 },
            stream_id,
            n as u32,
        )
        .emit(dst);
        dst.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

impl Headers {
    /// Write only the frame header (no padding, no priority) for a fragment of `len` octets
    /// that follows; used when the block is written separately.
    pub(crate) fn emit_header_only(&self, dst: &mut BytesMut, len: usize) {
        let mut f = 0;
        if self.end_stream {
            f |= flags::END_STREAM;
        }
        if self.end_headers {
            f |= flags::END_HEADERS;
        }
        FrameHeader::new(Kind::Headers, f, self.stream_id, len as u32).emit(dst);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    fn prio() -> impl Strategy<Value = Option<PrioritySpec>> {
        proptest::option::of((any::<bool>(), 0u32..0x7fff_ffff, any::<u8>()).prop_map(
            |(e, d, w)| PrioritySpec {
                exclusive: e,
                dependency: StreamId::new(d),
                weight: w,
            },
        ))
    }

    proptest! {
        #[test]
        fn round_trip(id in 1u32..=0x7fff_ffff, block in proptest::collection::vec(any::<u8>(), 0..300),
                      end_stream: bool, end_headers: bool, pad_len: Option<u8>, priority in prio()) {
            let f = Headers { stream_id: StreamId::new(id), priority, block: block.into(), end_stream, end_headers, pad_len };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::Headers(f));
        }
    }

    #[test]
    fn self_dependency_and_bad_padding() {
        let h = FrameHeader::new(Kind::Headers, flags::PRIORITY, StreamId::new(3), 5);
        assert!(Headers::parse(&h, Bytes::from_static(&[0, 0, 0, 3, 16]))
            .unwrap()
            .is_self_dependent());
        let h = FrameHeader::new(
            Kind::Headers,
            flags::PADDED | flags::PRIORITY,
            StreamId::new(3),
            7,
        );
        assert_eq!(
            Headers::parse(&h, Bytes::from_static(&[2, 0, 0, 0, 1, 16, 0])),
            Err(FrameError::BadPadding)
        );
        let h = FrameHeader::new(Kind::Headers, flags::PRIORITY, StreamId::new(3), 3);
        assert_eq!(
            Headers::parse(&h, Bytes::from_static(&[0, 0, 0])),
            Err(FrameError::BadLength)
        );
    }

    #[test]
    fn emit_block_splits_into_continuations() {
        let block: alloc::vec::Vec<u8> = (0..40u8).collect();
        let mut dst = BytesMut::new();
        emit_block(&mut dst, StreamId::new(1), &block, 16, 0, |d, n, end| {
            Headers {
                stream_id: StreamId::new(1),
                priority: None,
                block: Bytes::new(),
                end_stream: true,
                end_headers: end,
                pad_len: None,
            }
            .emit_header_only(d, n)
        });
        // 16 + 16 + 8 octets: HEADERS, CONTINUATION, CONTINUATION(END_HEADERS).
        assert_eq!(dst.len(), 3 * 9 + 40);
        assert_eq!(dst[4], flags::END_STREAM);
        assert_eq!(dst[9 + 16 + 3], 9);
        assert_eq!(dst[9 + 16 + 9 + 16 + 4], flags::END_HEADERS);
    }
}
