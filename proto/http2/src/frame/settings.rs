//! SETTINGS (RFC 9113 §6.5), with RFC 8441's SETTINGS_ENABLE_CONNECT_PROTOCOL and RFC 9218's
//! SETTINGS_NO_RFC7540_PRIORITIES.
//!
//! ```text
//! SETTINGS Frame {
//!   Length (24),
//!   Type (8) = 0x04,
//!   Unused Flags (7),
//!   ACK Flag (1),
//!   Reserved (1),
//!   Stream Identifier (31) = 0,
//!   Setting (48) ...,
//! }
//! Setting {
//!   Identifier (16),
//!   Value (32),
//! }
//! ```
//! Unknown identifiers are ignored. When an identifier repeats, the values are processed in
//! order, so the last one wins.

use bytes::{BufMut, BytesMut};

use super::{
    flags, FrameHeader, Kind, StreamId, DEFAULT_MAX_FRAME_SIZE, HEADER_LEN, MAX_MAX_FRAME_SIZE,
    MAX_WINDOW,
};
use crate::FrameError;

/// SETTINGS_HEADER_TABLE_SIZE
pub const HEADER_TABLE_SIZE: u16 = 0x1;
/// SETTINGS_ENABLE_PUSH
pub const ENABLE_PUSH: u16 = 0x2;
/// SETTINGS_MAX_CONCURRENT_STREAMS
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// SETTINGS_INITIAL_WINDOW_SIZE
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
/// SETTINGS_MAX_FRAME_SIZE
pub const MAX_FRAME_SIZE: u16 = 0x5;
/// SETTINGS_MAX_HEADER_LIST_SIZE
pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)
pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
/// SETTINGS_NO_RFC7540_PRIORITIES (RFC 9218)
pub const NO_RFC7540_PRIORITIES: u16 = 0x9;

/// A SETTINGS frame: each parameter that was present, or an ACK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// ACK flag (then every field is `None`).
    pub ack: bool,
    /// SETTINGS_HEADER_TABLE_SIZE
    pub header_table_size: Option<u32>,
    /// SETTINGS_ENABLE_PUSH (0 or 1)
    pub enable_push: Option<bool>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS
    pub max_concurrent_streams: Option<u32>,
    /// SETTINGS_INITIAL_WINDOW_SIZE (≤ 2^31-1)
    pub initial_window_size: Option<u32>,
    /// SETTINGS_MAX_FRAME_SIZE (2^14 ..= 2^24-1)
    pub max_frame_size: Option<u32>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE
    pub max_header_list_size: Option<u32>,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (0 or 1)
    pub enable_connect_protocol: Option<bool>,
    /// SETTINGS_NO_RFC7540_PRIORITIES (0 or 1)
    pub no_rfc7540_priorities: Option<bool>,
}

impl Settings {
    /// A SETTINGS ACK.
    pub const ACK: Settings = Settings {
        ack: true,
        header_table_size: None,
        enable_push: None,
        max_concurrent_streams: None,
        initial_window_size: None,
        max_frame_size: None,
        max_header_list_size: None,
        enable_connect_protocol: None,
        no_rfc7540_priorities: None,
    };

    /// Parse. Non-zero stream: PROTOCOL_ERROR; ACK with payload or a length not a multiple of
    /// 6: FRAME_SIZE_ERROR; out-of-range values: PROTOCOL_ERROR (FLOW_CONTROL_ERROR for the
    /// initial window). All connection errors.
    pub fn parse(head: &FrameHeader, payload: &[u8]) -> Result<Settings, FrameError> {
        if !head.stream_id.is_zero() {
            return Err(FrameError::BadStreamId);
        }
        if head.has(flags::ACK) {
            if !payload.is_empty() {
                return Err(FrameError::BadLength);
            }
            return Ok(Settings::ACK);
        }
        Settings::parse_params(payload)
    }

    /// Parse a list of parameters (also the payload of an `HTTP2-Settings` upgrade header).
    pub fn parse_params(payload: &[u8]) -> Result<Settings, FrameError> {
        if payload.len() % 6 != 0 {
            return Err(FrameError::BadLength);
        }
        let mut s = Settings::default();
        for p in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([p[0], p[1]]);
            let v = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            let flag = |v: u32| {
                if v <= 1 {
                    Ok(v == 1)
                } else {
                    Err(FrameError::BadSetting)
                }
            };
            match id {
                HEADER_TABLE_SIZE => s.header_table_size = Some(v),
                ENABLE_PUSH => s.enable_push = Some(flag(v)?),
                MAX_CONCURRENT_STREAMS => s.max_concurrent_streams = Some(v),
                INITIAL_WINDOW_SIZE => {
                    if v > MAX_WINDOW {
                        return Err(FrameError::BadWindowSetting);
                    }
                    s.initial_window_size = Some(v);
                }
                MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&v) {
                        return Err(FrameError::BadSetting);
                    }
                    s.max_frame_size = Some(v);
                }
                MAX_HEADER_LIST_SIZE => s.max_header_list_size = Some(v),
                ENABLE_CONNECT_PROTOCOL => s.enable_connect_protocol = Some(flag(v)?),
                NO_RFC7540_PRIORITIES => s.no_rfc7540_priorities = Some(flag(v)?),
                _ => {}
            }
        }
        Ok(s)
    }

    fn params(&self) -> [(u16, Option<u32>); 8] {
        [
            (HEADER_TABLE_SIZE, self.header_table_size),
            (ENABLE_PUSH, self.enable_push.map(u32::from)),
            (MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (INITIAL_WINDOW_SIZE, self.initial_window_size),
            (MAX_FRAME_SIZE, self.max_frame_size),
            (MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            (
                ENABLE_CONNECT_PROTOCOL,
                self.enable_connect_protocol.map(u32::from),
            ),
            (
                NO_RFC7540_PRIORITIES,
                self.no_rfc7540_priorities.map(u32::from),
            ),
        ]
    }

    fn payload_len(&self) -> usize {
        self.params().iter().filter(|p| p.1.is_some()).count() * 6
    }

    /// Total encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Write the parameters only (the `HTTP2-Settings` header payload).
    pub fn emit_params(&self, dst: &mut BytesMut) {
        for (id, v) in self.params() {
            if let Some(v) = v {
                dst.put_u16(id);
                dst.put_u32(v);
            }
        }
    }

    /// Write the frame.
    pub fn emit(&self, dst: &mut BytesMut) {
        let f = if self.ack { flags::ACK } else { 0 };
        FrameHeader::new(Kind::Settings, f, StreamId::ZERO, self.payload_len() as u32).emit(dst);
        self.emit_params(dst);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_util::reparse, Frame};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(a: Option<u32>, b: Option<bool>, c: Option<u32>, d in proptest::option::of(0..=MAX_WINDOW),
                      e in proptest::option::of(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE), f: Option<u32>,
                      g: Option<bool>, h: Option<bool>, ack: bool) {
            let s = if ack { Settings::ACK } else { Settings {
                ack, header_table_size: a, enable_push: b, max_concurrent_streams: c, initial_window_size: d,
                max_frame_size: e, max_header_list_size: f, enable_connect_protocol: g, no_rfc7540_priorities: h } };
            prop_assert_eq!(reparse(|buf| s.emit(buf), s.buffer_len()), Frame::Settings(s));
        }
    }

    fn parse(flags: u8, sid: u32, p: &[u8]) -> Result<Settings, FrameError> {
        Settings::parse(
            &FrameHeader::new(Kind::Settings, flags, StreamId::new(sid), p.len() as u32),
            p,
        )
    }

    #[test]
    fn rules() {
        assert_eq!(parse(flags::ACK, 0, &[0; 6]), Err(FrameError::BadLength));
        assert_eq!(parse(0, 1, &[]), Err(FrameError::BadStreamId));
        assert_eq!(parse(0, 0, &[0; 5]), Err(FrameError::BadLength));
        assert_eq!(
            parse(0, 0, &[0, 2, 0, 0, 0, 2]),
            Err(FrameError::BadSetting)
        );
        assert_eq!(
            parse(0, 0, &[0, 4, 0x80, 0, 0, 0]),
            Err(FrameError::BadWindowSetting)
        );
        assert_eq!(
            parse(0, 0, &[0, 5, 0, 0, 0x3f, 0xff]),
            Err(FrameError::BadSetting)
        );
        assert_eq!(
            parse(0, 0, &[0, 5, 1, 0, 0, 0]),
            Err(FrameError::BadSetting)
        );
        // Unknown ignored; repeated: last wins.
        let s = parse(
            0,
            0,
            &[0xff, 0xff, 0, 0, 0, 1, 0, 4, 0, 0, 0, 1, 0, 4, 0, 0, 0, 2],
        )
        .unwrap();
        assert_eq!(s.initial_window_size, Some(2));
    }
}
