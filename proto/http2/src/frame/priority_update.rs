//! PRIORITY_UPDATE (RFC 9218 §7.1): re-prioritizes a request after its HEADERS.
//!
//! ```text
//! HTTP/2 PRIORITY_UPDATE Frame {
//!   Length (24),
//!   Type (8) = 0x10,
//!   Unused Flags (8),
//!   Reserved (1),
//!   Stream Identifier (31) = 0,
//!   Reserved (1),
//!   Prioritized Stream ID (31),
//!   Priority Field Value (..),
//! }
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::{FrameHeader, Kind, StreamId, HEADER_LEN};
use crate::FrameError;

/// A PRIORITY_UPDATE frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityUpdate {
    /// The request stream being re-prioritized.
    pub prioritized_id: StreamId,
    /// The `priority` field value (RFC 9218 structured-field dictionary, e.g. `u=1, i`).
    pub field_value: Bytes,
}

impl PriorityUpdate {
    /// Parse. Non-zero stream: PROTOCOL_ERROR; shorter than 4: FRAME_SIZE_ERROR.
    pub fn parse(head: &FrameHeader, payload: Bytes) -> Result<PriorityUpdate, FrameError> {
        if !head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        if payload.len() < 4 {
            return Err(FrameError::BadLength);
        }
        let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        Ok(PriorityUpdate {
            prioritized_id: StreamId::new(id),
            field_value: payload.slice(4..),
        })
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 4 + self.field_value.len()
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        FrameHeader::new(
            Kind::PriorityUpdate,
            0,
            StreamId::ZERO,
            4 + self.field_value.len() as u32,
        )
        .emit(dst);
        dst.put_u32(self.prioritized_id.get());
        dst.put_slice(&self.field_value);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in 0u32..=0x7fff_ffff, v in "[a-z0-9=, ]{0,20}") {
            let f = PriorityUpdate { prioritized_id: StreamId::new(id), field_value: Bytes::from(v.into_bytes()) };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::PriorityUpdate(f));
        }
    }
}
