//! The header every RDMA message starts with, and message segmentation into buffer-sized
//! pieces.
//!
//! ```text
//! kind u8 | flags u8 | credits u16 | len u32 | payload (len bytes)
//! kind:  1 DATA, 2 CREDIT (update only, len 0), 3 CLOSE (len 0)
//! flags: 0x01 END (last segment of an application message)
//! ```
use std::fmt;

/// Header length.
pub const HEADER_LEN: usize = 8;
/// Flag: last segment of a message.
pub const FLAG_END: u8 = 0x01;

/// Message kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Application bytes.
    Data,
    /// Credit update only.
    Credit,
    /// The sender closed its side.
    Close,
}

/// One message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Kind.
    pub kind: Kind,
    /// [`FLAG_END`].
    pub flags: u8,
    /// Credits returned to the receiver of this message.
    pub credits: u16,
    /// Payload length.
    pub len: u32,
}

/// Why a received buffer is not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentError {
    /// Shorter than the header.
    Short,
    /// Unknown kind byte.
    BadKind(u8),
    /// Unknown flag bits.
    BadFlags(u8),
    /// `len` disagrees with the bytes received, or a control message carries a payload.
    BadLength,
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentError::Short => f.write_str("message shorter than its header"),
            SegmentError::BadKind(k) => write!(f, "unknown message kind {k}"),
            SegmentError::BadFlags(b) => write!(f, "unknown message flags {b:#04x}"),
            SegmentError::BadLength => f.write_str("message length mismatch"),
        }
    }
}

impl std::error::Error for SegmentError {}

impl Header {
    /// Write the header into `out[..8]`; `false` (untouched) if `out` is shorter.
    pub fn emit(&self, out: &mut [u8]) -> bool {
        let Some(b) = out.get_mut(..HEADER_LEN) else {
            return false;
        };
        b[0] = match self.kind {
            Kind::Data => 1,
            Kind::Credit => 2,
            Kind::Close => 3,
        };
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.credits.to_be_bytes());
        b[4..8].copy_from_slice(&self.len.to_be_bytes());
        true
    }

    /// Parse a whole received message (`buf` is exactly what the completion reported).
    pub fn parse(buf: &[u8]) -> Result<(Header, &[u8]), SegmentError> {
        let b = buf.get(..HEADER_LEN).ok_or(SegmentError::Short)?;
        let kind = match b[0] {
            1 => Kind::Data,
            2 => Kind::Credit,
            3 => Kind::Close,
            k => return Err(SegmentError::BadKind(k)),
        };
        if b[1] & !FLAG_END != 0 {
            return Err(SegmentError::BadFlags(b[1]));
        }
        let h = Header {
            kind,
            flags: b[1],
            credits: u16::from_be_bytes([b[2], b[3]]),
            len: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        };
        let payload = &buf[HEADER_LEN..];
        if payload.len() != h.len as usize || kind != Kind::Data && h.len != 0 {
            return Err(SegmentError::BadLength);
        }
        Ok((h, payload))
    }
}

/// Split `len` bytes into `(offset, size, end)` segments of at most `max_payload` bytes;
/// an empty message is one empty segment.
pub fn segments(len: usize, max_payload: usize) -> impl Iterator<Item = (usize, usize, bool)> {
    let max = max_payload.max(1);
    let count = len.div_ceil(max).max(1);
    (0..count).map(move |i| {
        let off = i * max;
        let size = (len - off).min(max);
        (off, size, i + 1 == count)
    })
}

/// Joins DATA payloads into messages at `END` flags, bounded by `max_message`.
#[derive(Debug, Default)]
pub struct MessageAssembler {
    buf: Vec<u8>,
    max_message: usize,
    overflowed: bool,
}

impl MessageAssembler {
    /// An assembler refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> MessageAssembler {
        MessageAssembler {
            buf: Vec::new(),
            max_message,
            overflowed: false,
        }
    }

    /// Add one segment; returns a whole message at its end. A message over the limit is
    /// discarded and reported as `Err(len so far)` at its end.
    pub fn push(&mut self, payload: &[u8], end: bool) -> Result<Option<Vec<u8>>, usize> {
        if !self.overflowed {
            if self.buf.len() + payload.len() > self.max_message {
                self.overflowed = true;
            } else {
                self.buf.extend_from_slice(payload);
            }
        }
        if !end {
            return Ok(None);
        }
        let msg = std::mem::take(&mut self.buf);
        if std::mem::take(&mut self.overflowed) {
            return Err(msg.len() + payload.len());
        }
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_errors() {
        assert_eq!(Header::parse(&[1, 0, 0]), Err(SegmentError::Short));
        assert_eq!(
            Header::parse(&[9, 0, 0, 0, 0, 0, 0, 0]),
            Err(SegmentError::BadKind(9))
        );
        assert_eq!(
            Header::parse(&[1, 0x80, 0, 0, 0, 0, 0, 0]),
            Err(SegmentError::BadFlags(0x80))
        );
        assert_eq!(
            Header::parse(&[1, 0, 0, 0, 0, 0, 0, 2, 0]),
            Err(SegmentError::BadLength)
        );
        assert_eq!(
            Header::parse(&[2, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(SegmentError::BadLength)
        );
        assert!(!Header {
            kind: Kind::Data,
            flags: 0,
            credits: 0,
            len: 0
        }
        .emit(&mut [0; 7]));
    }

    proptest! {
        #[test]
        fn header_round_trip(kind in 0u8..3, flags in 0u8..2, credits in any::<u16>(),
                             payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let kind = [Kind::Data, Kind::Credit, Kind::Close][kind as usize];
            let len = if kind == Kind::Data { payload.len() } else { 0 };
            let h = Header { kind, flags, credits, len: len as u32 };
            let mut b = vec![0; HEADER_LEN + len];
            prop_assert!(h.emit(&mut b));
            b[HEADER_LEN..].copy_from_slice(&payload[..len]);
            let (h2, p) = Header::parse(&b).unwrap();
            prop_assert_eq!(h2, h);
            prop_assert_eq!(p, &payload[..len]);
        }

        #[test]
        fn segments_cover_and_reassemble(msg in proptest::collection::vec(any::<u8>(), 0..5000),
                                         max in 1usize..700) {
            let mut a = MessageAssembler::new(1 << 20);
            let mut out = None;
            for (off, size, end) in segments(msg.len(), max) {
                prop_assert!(size <= max);
                out = a.push(&msg[off..off + size], end).unwrap();
                prop_assert_eq!(out.is_some(), end);
            }
            prop_assert_eq!(out.unwrap(), msg);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = Header::parse(&b);
        }
    }

    #[test]
    fn assembler_limit() {
        let mut a = MessageAssembler::new(4);
        assert_eq!(a.push(b"abc", false), Ok(None));
        assert_eq!(a.push(b"de", true), Err(5));
        assert_eq!(a.push(b"ok", true), Ok(Some(b"ok".to_vec())));
    }
}
