//! DATA (RFC 9113 §6.1).
//!
//! ```text
//! DATA Frame {
//!   Length (24),
//!   Type (8) = 0x00,
//!   Unused Flags (4),
//!   PADDED Flag (1),
//!   Unused Flags (2),
//!   END_STREAM Flag (1),
//!   Reserved (1),
//!   Stream Identifier (31),
//!   [Pad Length (8)],
//!   Data (..),
//!   Padding (..2040),
//! }
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::{flags, put_padding, strip_padding, FrameHeader, Kind, StreamId, HEADER_LEN};
use crate::FrameError;

/// A DATA frame. `data` is a zero-copy slice of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// The stream (never 0).
    pub stream_id: StreamId,
    /// The payload without padding.
    pub data: Bytes,
    /// END_STREAM.
    pub end_stream: bool,
    /// Padding octets (PADDED), if any.
    pub pad_len: Option<u8>,
}

impl Data {
    /// Parse the payload. Stream 0 is a connection error PROTOCOL_ERROR; padding not smaller
    /// than the payload is a connection error PROTOCOL_ERROR.
    pub fn parse(head: &FrameHeader, mut payload: Bytes) -> Result<Data, FrameError> {
        if head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        let pad_len = strip_padding(head, &mut payload, 0)?;
        Ok(Data {
            stream_id: head.stream_id,
            data: payload,
            end_stream: head.has(flags::END_STREAM),
            pad_len,
        })
    }

    /// Octets counted by flow control (the whole payload, padding included).
    pub fn flow_len(&self) -> usize {
        self.data.len() + self.pad_len.map_or(0, |p| p as usize + 1)
    }

    /// The frame header for this frame.
    pub fn header(&self) -> FrameHeader {
        let mut f = 0;
        if self.end_stream {
            f |= flags::END_STREAM;
        }
        if self.pad_len.is_some() {
            f |= flags::PADDED;
        }
        FrameHeader::new(Kind::Data, f, self.stream_id, self.flow_len() as u32)
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.flow_len()
    }

    /// Write header and payload (copying the data; the connection writes large payloads as
    /// separate `Bytes` chunks instead, after [`Data::header`]).
    pub fn emit(&self, dst: &mut BytesMut) {
        self.header().emit(dst);
        if let Some(p) = self.pad_len {
            dst.put_u8(p);
        }
        dst.put_slice(&self.data);
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
        fn round_trip(id in 1u32..=0x7fff_ffff, data in proptest::collection::vec(any::<u8>(), 0..300),
                      end_stream: bool, pad_len: Option<u8>) {
            let f = Data { stream_id: StreamId::new(id), data: data.into(), end_stream, pad_len };
            prop_assert_eq!(reparse(|b| f.emit(b), f.buffer_len()), Frame::Data(f));
        }
    }

    #[test]
    fn stream_zero_is_rejected() {
        let h = FrameHeader::new(Kind::Data, 0, StreamId::ZERO, 1);
        assert_eq!(
            Data::parse(&h, Bytes::from_static(b"x")),
            Err(FrameError::BadStreamId)
        );
    }
}
