//! WINDOW_UPDATE (RFC 9113 §6.9).
//!
//! ```text
//! WINDOW_UPDATE Frame {
//!   Length (24) = 0x04,
//!   Type (8) = 0x08,
//!   Unused Flags (8),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   Reserved (1),
//!   Window Size Increment (31),
//! }
//! ```

use bytes::{BufMut, BytesMut};

use super::{FrameHeader, Kind, StreamId, HEADER_LEN, MAX_WINDOW};
use crate::FrameError;

/// A WINDOW_UPDATE frame (stream 0: the connection window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowUpdate {
    /// The stream, or 0 for the connection.
    pub stream_id: StreamId,
    /// 1 ..= 2^31-1.
    pub increment: u32,
}

impl WindowUpdate {
    /// Parse. Length ≠ 4: FRAME_SIZE_ERROR (connection error); a zero increment: PROTOCOL_ERROR
    /// (a stream error on a stream, a connection error on stream 0).
    pub fn parse(head: &FrameHeader, payload: &[u8]) -> Result<WindowUpdate, FrameError> {
        let b: [u8; 4] = payload.try_into().map_err(|_| FrameError::BadLength)?;
        let increment = u32::from_be_bytes(b) & MAX_WINDOW;
        if increment == 0 {
            return Err(FrameError::ZeroIncrement);
        }
        Ok(WindowUpdate {
            stream_id: head.stream_id,
            increment,
        })
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 4
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        FrameHeader::new(Kind::WindowUpdate, 0, self.stream_id, 4).emit(dst);
        dst.put_u32(self.increment);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in 0u32..=0x7fff_ffff, increment in 1..=MAX_WINDOW) {
            let f = WindowUpdate { stream_id: StreamId::new(id), increment };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::WindowUpdate(f));
        }
    }

    #[test]
    fn rules() {
        let h = FrameHeader::new(Kind::WindowUpdate, 0, StreamId::new(1), 4);
        assert_eq!(
            WindowUpdate::parse(&h, &[0x80, 0, 0, 0]),
            Err(FrameError::ZeroIncrement)
        );
        assert_eq!(WindowUpdate::parse(&h, &[0; 3]), Err(FrameError::BadLength));
    }
}
