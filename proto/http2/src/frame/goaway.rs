//! GOAWAY (RFC 9113 §6.8).
//!
//! ```text
//! GOAWAY Frame {
//!   Length (24),
//!   Type (8) = 0x07,
//!   Unused Flags (8),
//!   Reserved (1),
//!   Stream Identifier (31) = 0,
//!   Reserved (1),
//!   Last-Stream-ID (31),
//!   Error Code (32),
//!   Additional Debug Data (..),
//! }
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::{FrameHeader, Kind, StreamId, HEADER_LEN};
use crate::{FrameError, Reason};

/// A GOAWAY frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoAway {
    /// The highest peer-initiated stream that was or might be processed.
    pub last_stream_id: StreamId,
    /// Why.
    pub error: Reason,
    /// Opaque diagnostic data.
    pub debug: Bytes,
}

impl GoAway {
    /// Parse. Non-zero stream: PROTOCOL_ERROR; shorter than 8: FRAME_SIZE_ERROR.
    pub fn parse(head: &FrameHeader, payload: Bytes) -> Result<GoAway, FrameError> {
        if !head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        if payload.len() < 8 {
            return Err(FrameError::BadLength);
        }
        let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        Ok(GoAway {
            last_stream_id: StreamId::new(last),
            error: Reason(code),
            debug: payload.slice(8..),
        })
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 8 + self.debug.len()
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        FrameHeader::new(Kind::GoAway, 0, StreamId::ZERO, 8 + self.debug.len() as u32).emit(dst);
        dst.put_u32(self.last_stream_id.get());
        dst.put_u32(self.error.0);
        dst.put_slice(&self.debug);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(last in 0u32..=0x7fff_ffff, code: u32, debug in proptest::collection::vec(any::<u8>(), 0..64)) {
            let f = GoAway { last_stream_id: StreamId::new(last), error: Reason(code), debug: debug.into() };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::GoAway(f));
        }
    }

    #[test]
    fn rules() {
        let h = FrameHeader::new(Kind::GoAway, 0, StreamId::new(1), 8);
        assert_eq!(
            GoAway::parse(&h, Bytes::from_static(&[0; 8])),
            Err(FrameError::BadStreamId)
        );
        let h = FrameHeader::new(Kind::GoAway, 0, StreamId::ZERO, 7);
        assert_eq!(
            GoAway::parse(&h, Bytes::from_static(&[0; 7])),
            Err(FrameError::BadLength)
        );
    }
}
