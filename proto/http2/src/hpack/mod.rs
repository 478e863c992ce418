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
pub fn encode_int(mut value: usize, n: u8, first: u8, dst: &mut BytesMut) {
    let max = (1usize << n) - 1;
    if value < max {
        dst.put_u8(first | value as u8);
        return;
    }
    dst.put_u8(first | max as u8);
    value -= max;
    while value >= 128 {
        dst.put_u8((value % 128 + 128) as u8);
        value /= 128;
    }
    dst.put_u8(value as u8);
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

/// Encode a string literal (RFC 7541 §5.2), Huffman-coded when that is shorter.
pub fn encode_string(s: &[u8], allow_huffman: bool, dst: &mut BytesMut) {
    let h = if allow_huffman {
        huffman::encoded_len(s)
    } else {
        usize::MAX
    };
    if h <= s.len() {
        encode_int(h, 7, 0x80, dst);
        huffman::encode(s, dst);
    } else {
        encode_int(s.len(), 7, 0, dst);
        dst.put_slice(s);
    }
}

#[cfg(test)]
mod tests;
