//! HPACK (RFC 7541): header compression for HTTP/2.
//!
//! - [`Decoder`]: static + dynamic table, size updates (only at the start of a block and never
//!   above the limit we advertised), table-driven Huffman decoding, never-indexed literals
//!   reported as `sensitive`, and a header-list size limit that defends against HPACK bombs (a
//!   small block referencing a large table entry many times): once the limit is passed the
//!   block is still decoded, to keep the table in sync, but no more fields are kept.
//! - [`Encoder`]: static/dynamic lookups, incremental indexing (never for sensitive fields),
//!   Huffman when shorter, table size updates signalled at the start of the next block.
//!
//! Decoded names and values are `Bytes`: static names are `'static`, dynamic-table hits share
//! the table's buffer, raw literals are slices of the block, Huffman literals are slices of one
//! buffer per block: no allocation per field.

mod decoder;
mod encoder;
mod huffman;
mod huffman_codes;
mod table;

pub use decoder::Decoder;
pub use encoder::Encoder;
pub use table::{DynamicTable, Entry, ENTRY_OVERHEAD, STATIC_TABLE};

use bytes::{BufMut, Bytes, BytesMut};

use crate::HpackError;

/// Huffman coding of string literals.
pub mod huffman_coding {
    pub use super::huffman::{decode, encode, encoded_len};
}

/// One header field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    /// Name (lowercase in HTTP/2).
    pub name: Bytes,
    /// Value.
    pub value: Bytes,
    /// Sent (or to be sent) as a never-indexed literal (RFC 7541 §6.2.3).
    pub sensitive: bool,
}

impl Field {
    /// A field from static strings.
    pub const fn from_static(name: &'static str, value: &'static str) -> Field {
        Field {
            name: Bytes::from_static(name.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
            sensitive: false,
        }
    }

    /// Size counted against SETTINGS_MAX_HEADER_LIST_SIZE (name + value + 32).
    pub fn list_size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// Encode `value` with an `n`-bit prefix (RFC 7541 §5.1), OR-ing `first` into the first octet.
///
/// ```text
/// if I < 2^N - 1, encode I on N bits
/// else
///     encode (2^N - 1) on N bits
///     I = I - (2^N - 1)
///     while I >= 128
///          encode (I % 128 + 128) on 8 bits
///          I = I / 128
///     encode I on 8 bits
/// ```
#[inline]
pub fn encode_int(value: usize, n: u8, first: u8, dst: &mut BytesMut) {
    let max = (1usize << n) - 1;
    if value < max {
        dst.put_u8(first | value as u8);
        return;
    }
    encode_int_long(value - max, first | max as u8, dst);
}

/// The multi-octet form of [`encode_int`], built on the stack and appended in one copy.
fn encode_int_long(value: usize, first: u8, dst: &mut BytesMut) {
    let (buf, n) = int_tail(value, first);
    dst.put_slice(&buf[..n]);
}

/// `first` (the prefix, all ones) followed by `value` in 7-bit groups: `(octets, length)`.
#[inline]
fn int_tail(mut value: usize, first: u8) -> ([u8; 12], usize) {
    let mut buf = [0u8; 12];
    buf[0] = first;
    let mut n = 1;
    while value >= 128 {
        buf[n] = (value % 128 + 128) as u8;
        value /= 128;
        n += 1;
    }
    buf[n] = value as u8;
    (buf, n + 1)
}

/// [`encode_int`] into a stack buffer: `(octets, length)`.
#[inline]
fn int_bytes(value: usize, n: u8, first: u8) -> ([u8; 12], usize) {
    let max = (1usize << n) - 1;
    if value < max {
        let mut buf = [0u8; 12];
        buf[0] = first | value as u8;
        return (buf, 1);
    }
    int_tail(value - max, first | max as u8)
}

/// Decode an `n`-bit-prefix integer from `src` at `*pos`, advancing it.
pub fn decode_int(src: &[u8], pos: &mut usize, n: u8) -> Result<usize, HpackError> {
    let max = (1usize << n) - 1;
    let first = *src.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mut value = (first as usize) & max;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let b = *src.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    if value > u32::MAX as usize {
        return Err(HpackError::IntegerOverflow);
    }
    Ok(value)
}

/// Octets [`encode_int`] writes for `value` with an `n`-bit prefix.
#[inline]
fn int_len(mut value: usize, n: u8) -> usize {
    let max = (1usize << n) - 1;
    if value < max {
        return 1;
    }
    value -= max;
    let mut len = 2;
    while value >= 128 {
        value /= 128;
        len += 1;
    }
    len
}

/// Encode a string literal (RFC 7541 §5.2), Huffman-coded when that is shorter.
///
/// One pass: the Huffman code is written straight after room for the longest length prefix
/// it may need, and abandoned for the raw string as soon as it grows past the raw length; a
/// shorter prefix than reserved (only for strings of 127 octets or more) moves the code down.
pub fn encode_string(s: &[u8], allow_huffman: bool, dst: &mut BytesMut) {
    if allow_huffman && !s.is_empty() {
        let room = int_len(s.len(), 7);
        let start = dst.len();
        dst.resize(start + room + s.len() + 4, 0);
        if let Some(h) = huffman::encode_bounded(s, &mut dst[start + room..]) {
            let (prefix, used) = int_bytes(h, 7, 0x80);
            if used < room {
                dst.copy_within(start + room..start + room + h, start + used);
            }
            dst[start..start + used].copy_from_slice(&prefix[..used]);
            dst.truncate(start + used + h);
            return;
        }
        dst.truncate(start);
    }
    encode_int(s.len(), 7, 0, dst);
    dst.put_slice(s);
}

#[cfg(test)]
mod tests;
