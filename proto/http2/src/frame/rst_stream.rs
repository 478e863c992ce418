//! RST_STREAM (RFC 9113 §6.4).
//!
//! ```text
//! RST_STREAM Frame {
//!   Length (24) = 0x04,
//!   Type (8) = 0x03,
//!   Unused Flags (8),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   Error Code (32),
//! }
//! ```

use bytes::{BufMut, BytesMut};

use super::{FrameHeader, Kind, StreamId, HEADER_LEN};
use crate::{FrameError, Reason};

/// A RST_STREAM frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstStream {
    /// The stream (never 0).
    pub stream_id: StreamId,
    /// Why.
    pub error: Reason,
}

impl RstStream {
    /// Parse. Stream 0: PROTOCOL_ERROR; length ≠ 4: FRAME_SIZE_ERROR (connection errors).
    pub fn parse(head: &FrameHeader, payload: &[u8]) -> Result<RstStream, FrameError> {
        if head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        let b: [u8; 4] = payload.try_into().map_err(|_| FrameError::BadLength)?;
        Ok(RstStream {
            stream_id: head.stream_id,
            error: Reason(u32::from_be_bytes(b)),
        })
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 4
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        FrameHeader::new(Kind::RstStream, 0, self.stream_id, 4).emit(dst);
        dst.put_u32(self.error.0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in 1u32..=0x7fff_ffff, code: u32) {
            let f = RstStream { stream_id: StreamId::new(id), error: Reason(code) };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::RstStream(f));
        }
    }

    #[test]
    fn bad_length() {
        let h = FrameHeader::new(Kind::RstStream, 0, StreamId::new(1), 3);
        assert_eq!(RstStream::parse(&h, &[0; 3]), Err(FrameError::BadLength));
    }
}
