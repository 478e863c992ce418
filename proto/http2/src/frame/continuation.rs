//! CONTINUATION (RFC 9113 §6.10).
//!
//! ```text
//! CONTINUATION Frame {
//!   Length (24),
//!   Type (8) = 0x09,
//!   Unused Flags (5),
//!   END_HEADERS Flag (1),
//!   Unused Flags (2),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   Field Block Fragment (..),
//! }
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::{flags, FrameHeader, Kind, StreamId, HEADER_LEN};
use crate::FrameError;

/// A CONTINUATION frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continuation {
    /// The stream (never 0).
    pub stream_id: StreamId,
    /// Field block fragment.
    pub block: Bytes,
    /// END_HEADERS.
    pub end_headers: bool,
}

impl Continuation {
    /// Parse. Stream 0: connection error PROTOCOL_ERROR.
    pub fn parse(head: &FrameHeader, payload: Bytes) -> Result<Continuation, FrameError> {
        if head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        Ok(Continuation {
            stream_id: head.stream_id,
            block: payload,
            end_headers: head.has(flags::END_HEADERS),
        })
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.block.len()
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        let f = if self.end_headers {
            flags::END_HEADERS
        } else {
            0
        };
        FrameHeader::new(
            Kind::Continuation,
            f,
            self.stream_id,
            self.block.len() as u32,
        )
        .emit(dst);
        dst.put_slice(&self.block);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in 1u32..=0x7fff_ffff, block in proptest::collection::vec(any::<u8>(), 0..300), end_headers: bool) {
            let f = Continuation { stream_id: StreamId::new(id), block: block.into(), end_headers };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::Continuation(f));
        }
    }
}
