//! PRIORITY (RFC 9113 §6.3): parsed and validated, then ignored (RFC 9113 deprecates the RFC
//! 7540 priority scheme; RFC 9218 signals replace it).
//!
//! ```text
//! PRIORITY Frame {
//!   Length (24) = 0x05,
//!   Type (8) = 0x02,
//!   Unused Flags (8),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   Exclusive (1),
//!   Stream Dependency (31),
//!   Weight (8),
//! }
//! ```

use bytes::BytesMut;

use super::{FrameHeader, Kind, PrioritySpec, StreamId, HEADER_LEN};
use crate::FrameError;

/// A PRIORITY frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority {
    /// The stream (never 0).
    pub stream_id: StreamId,
    /// The priority fields.
    pub spec: PrioritySpec,
}

impl Priority {
    /// Parse. Stream 0: connection error PROTOCOL_ERROR; length ≠ 5: stream error
    /// FRAME_SIZE_ERROR; self-dependency: stream error PROTOCOL_ERROR.
    pub fn parse(head: &FrameHeader, payload: &[u8]) -> Result<Priority, FrameError> {
        if head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        if payload.len() != 5 {
            return Err(FrameError::PriorityLength);
        }
        let spec = PrioritySpec::parse(payload);
        if spec.dependency == head.stream_id {
            return Err(FrameError::SelfDependency);
        }
        Ok(Priority {
            stream_id: head.stream_id,
            spec,
        })
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 5
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        FrameHeader::new(Kind::Priority, 0, self.stream_id, 5).emit(dst);
        self.spec.emit(dst);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in 1u32..=0x7fff_ffff, dep in 0u32..=0x7fff_ffff, exclusive: bool, weight: u8) {
            prop_assume!(id != dep);
            let f = Priority { stream_id: StreamId::new(id), spec: PrioritySpec { exclusive, dependency: StreamId::new(dep), weight } };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::Priority(f));
        }
    }

    #[test]
    fn length_and_self_dependency() {
        let h = FrameHeader::new(Kind::Priority, 0, StreamId::new(1), 4);
        assert_eq!(
            Priority::parse(&h, &[0; 4]),
            Err(FrameError::PriorityLength)
        );
        let h = FrameHeader::new(Kind::Priority, 0, StreamId::new(1), 5);
        assert_eq!(
            Priority::parse(&h, &[0, 0, 0, 1, 0]),
            Err(FrameError::SelfDependency)
        );
        let h = FrameHeader::new(Kind::Priority, 0, StreamId::ZERO, 5);
        assert_eq!(
            Priority::parse(&h, &[0, 0, 0, 1, 0]),
            Err(FrameError::BadStreamId)
        );
    }
}
