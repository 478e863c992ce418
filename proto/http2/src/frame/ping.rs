//! PING (RFC 9113 §6.7).
//!
//! ```text
//! PING Frame {
//!   Length (24) = 0x08,
//!   Type (8) = 0x06,
//!   Unused Flags (7),
//!   ACK Flag (1),
//!   Reserved (1),
//!   Stream Identifier (31) = 0,
//!   Opaque Data (64),
//! }
//! ```

use bytes::{BufMut, BytesMut};

use super::{flags, FrameHeader, Kind, StreamId, HEADER_LEN};
use crate::FrameError;

/// A PING frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// ACK flag.
    pub ack: bool,
    /// Opaque data, echoed in the ACK.
    pub payload: [u8; 8],
}

impl Ping {
    /// Parse. Non-zero stream: PROTOCOL_ERROR; length ≠ 8: FRAME_SIZE_ERROR.
    pub fn parse(head: &FrameHeader, payload: &[u8]) -> Result<Ping, FrameError> {
        if !head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        let payload = payload.try_into().map_err(|_| FrameError::BadLength)?;
        Ok(Ping {
            ack: head.has(flags::ACK),
            payload,
        })
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 8
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        FrameHeader::new(
            Kind::Ping,
            if self.ack { flags::ACK } else { 0 },
            StreamId::ZERO,
            8,
        )
        .emit(dst);
        dst.put_slice(&self.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(ack: bool, payload: [u8; 8]) {
            let f = Ping { ack, payload };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::Ping(f));
        }
    }

    #[test]
    fn rules() {
        let h = FrameHeader::new(Kind::Ping, 0, StreamId::new(1), 8);
        assert_eq!(Ping::parse(&h, &[0; 8]), Err(FrameError::BadStreamId));
        let h = FrameHeader::new(Kind::Ping, 0, StreamId::ZERO, 6);
        assert_eq!(Ping::parse(&h, &[0; 6]), Err(FrameError::BadLength));
    }
}
