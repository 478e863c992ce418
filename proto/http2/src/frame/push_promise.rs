//! PUSH_PROMISE (RFC 9113 §6.6).
//!
//! ```text
//! PUSH_PROMISE Frame {
//!   Length (24),
//!   Type (8) = 0x05,
//!   Unused Flags (4),
//!   PADDED Flag (1),
//!   END_HEADERS Flag (1),
//!   Unused Flags (2),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   [Pad Length (8)],
//!   Reserved (1),
//!   Promised Stream ID (31),
//!   Field Block Fragment (..),
//!   Padding (..2040),
//! }
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{flags, put_padding, strip_padding, FrameHeader, Kind, StreamId, HEADER_LEN};
use crate::FrameError;

/// A PUSH_PROMISE frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushPromise {
    /// The associated (client-initiated) stream.
    pub stream_id: StreamId,
    /// The reserved stream the response will arrive on.
    pub promised_id: StreamId,
    /// Field block fragment (the promised request).
    pub block: Bytes,
    /// END_HEADERS.
    pub end_headers: bool,
    /// Padding octets, if PADDED.
    pub pad_len: Option<u8>,
}

impl PushPromise {
    /// Parse. Stream 0 and bad padding: connection errors PROTOCOL_ERROR.
    pub fn parse(head: &FrameHeader, mut payload: Bytes) -> Result<PushPromise, FrameError> {
        if head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        let pad_len = strip_padding(head, &mut payload, 4)?;
        let promised_id = StreamId::new(payload.get_u32());
        Ok(PushPromise {
            stream_id: head.stream_id,
            promised_id,
            block: payload,
            end_headers: head.has(flags::END_HEADERS),
            pad_len,
        })
    }

    fn payload_len(&self) -> usize {
        4 + self.block.len() + self.pad_len.map_or(0, |p| p as usize + 1)
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        let mut f = if self.end_headers {
            flags::END_HEADERS
        } else {
            0
        };
        if self.pad_len.is_some() {
            f |= flags::PADDED;
        }
        FrameHeader::new(
            Kind::PushPromise,
            f,
            self.stream_id,
            self.payload_len() as u32,
        )
        .emit(dst);
        if let Some(p) = self.pad_len {
            dst.put_u8(p);
        }
        dst.put_u32(self.promised_id.get());
        dst.put_slice(&self.block);
        put_padding(dst, self.pad_len);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in 1u32..=0x7fff_ffff, promised in 0u32..=0x7fff_ffff,
                      block in proptest::collection::vec(any::<u8>(), 0..300), end_headers: bool, pad_len: Option<u8>) {
            let f = PushPromise { stream_id: StreamId::new(id), promised_id: StreamId::new(promised), block: block.into(), end_headers, pad_len };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::PushPromise(f));
        }
    }

    #[test]
    fn too_short() {
        let h = FrameHeader::new(Kind::PushPromise, 0, StreamId::new(1), 3);
        assert_eq!(
            PushPromise::parse(&h, Bytes::from_static(&[0; 3])),
            Err(FrameError::BadLength)
        );
    }
}
