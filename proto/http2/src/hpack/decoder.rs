//! The HPACK decoder (RFC 7541 §3, §6).
//!
//! ```text
//!   0   1   2   3   4   5   6   7
//! +---+---+---+---+---+---+---+---+
//! | 1 |        Index (7+)         |   indexed field (§6.1)
//! | 0 | 1 |      Index (6+)       |   literal with incremental indexing (§6.2.1)
//! | 0 | 0 | 0 | 0 |  Index (4+)   |   literal without indexing (§6.2.2)
//! | 0 | 0 | 0 | 1 |  Index (4+)   |   literal never indexed (§6.2.3)
//! | 0 | 0 | 1 |   Max size (5+)   |   dynamic table size update (§6.3)
//! +---+---+---+---+---+---+---+---+
//! ```

use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

use super::table::{DynamicTable, Entry, STATIC_LEN, STATIC_TABLE};
use super::{decode_int, huffman, Field};
use crate::HpackError;

/// Decodes field blocks; one per connection direction.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The largest size the peer may set (our SETTINGS_HEADER_TABLE_SIZE).
    max_allowed: usize,
    scratch: BytesMut,
    memo: Memo,
}

/// The last block that held indexed fields only, and what it decoded to: while the table is
/// unchanged the same octets decode to the same fields (clients repeat their request heads, and
/// after the first request most of them are fully indexed).
#[derive(Debug, Default)]
struct Memo {
    valid: bool,
    block: Vec<u8>,
    fields: Vec<Field>,
    list: usize,
}

/// Blocks longer than this are not remembered.
const MEMO_MAX: usize = 64;

impl Decoder {
    /// A decoder whose table may grow to `max_allowed` octets (SETTINGS_HEADER_TABLE_SIZE we
    /// advertise; 4096 by default).
    pub fn new(max_allowed: usize) -> Decoder {
        Decoder {
            table: DynamicTable::new(max_allowed),
            max_allowed,
            scratch: BytesMut::new(),
            memo: Memo::default(),
        }
    }

    /// The dynamic table (for tests and metrics).
    pub fn table(&self) -> &DynamicTable {
        &self.table
    }

    /// Change the limit we advertise (takes effect when the peer acknowledges it; the peer then
    /// signals a size update).
    pub fn set_max_allowed(&mut self, max: usize) {
        self.max_allowed = max;
        self.memo.valid = false;
        if self.table.max_size() > max {
            self.table.set_max_size(max);
        }
    }

    /// Decode one complete field block, calling `emit` for each field in order.
    ///
    /// Fields are passed to `emit` until their list size (name + value + 32 each) passes
    /// `max_list_size`; the rest of the block is still decoded (so the dynamic table stays in
    /// sync) and the call returns [`HpackError::HeaderListTooLarge`]. Any other error is a
    /// connection error COMPRESSION_ERROR.
    pub fn decode(
        &mut self,
        block: &Bytes,
        max_list_size: usize,
        mut emit: impl FnMut(Field),
    ) -> Result<(), HpackError> {
        let src = &block[..];
        if self.memo.valid && self.memo.block[..] == *src && self.memo.list <= max_list_size {
            for f in &self.memo.fields {
                emit(f.clone());
            }
            return Ok(());
        }
        let mut all_indexed = src.len() <= MEMO_MAX;
        let mut pos = 0;
        let mut list = 0usize;
        let mut over = false;
        let mut fields_seen = false;
        // Whether `memo.fields` was reset for this block (it collects the block's fields while
        // every representation so far is indexed).
        let mut stored = false;
        // One allocation per block for every Huffman-coded string in it (they expand by at
        // most 8/5); each decoded string is then split off this buffer.
        self.scratch.reserve(src.len() * 2);
        while pos < src.len() {
            let b = src[pos];
            let field = if b & 0x80 != 0 {
                let idx = decode_int(src, &mut pos, 7)?;
                self.get(idx)?
            } else if b & 0x40 != 0 {
                all_indexed = false;
                self.memo.valid = false;
                let f = self.literal(block, &mut pos, 6, false)?;
                self.table.insert(Entry {
                    name: f.name.clone(),
                    value: f.value.clone(),
                });
                f
            } else if b & 0x20 != 0 {
                if fields_seen {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = decode_int(src, &mut pos, 5)?;
                if size > self.max_allowed {
                    return Err(HpackError::InvalidSizeUpdate);
                }
                all_indexed = false;
                self.memo.valid = false;
                self.table.set_max_size(size);
                continue;
            } else {
                all_indexed = false;
                let never = b & 0x10 != 0;
                self.literal(block, &mut pos, 4, never)?
            };
            fields_seen = true;
            if !over {
                list += field.list_size();
                if list > max_list_size {
                    over = true;
                } else {
                    if all_indexed {
                        if !stored {
                            self.memo.valid = false;
                            self.memo.fields.clear();
                            stored = true;
                        }
                        self.memo.fields.push(field.clone());
                    }
                    emit(field);
                }
            }
        }
        if over {
            return Err(HpackError::HeaderListTooLarge);
        }
        if all_indexed && fields_seen {
            self.memo.block.clear();
            self.memo.block.extend_from_slice(src);
            self.memo.list = list;
            self.memo.valid = true;
        }
        Ok(())
    }

    fn get(&self, idx: usize) -> Result<Field, HpackError> {
        match idx {
            0 => Err(HpackError::InvalidIndex),
            1..=STATIC_LEN => {
                let (n, v) = STATIC_TABLE[idx - 1];
                Ok(Field::from_static(n, v))
            }
            _ => {
                let e = self
                    .table
                    .get(idx - STATIC_LEN - 1)
                    .ok_or(HpackError::InvalidIndex)?;
                Ok(Field {
                    name: e.name.clone(),
                    value: e.value.clone(),
                    sensitive: false,
                })
            }
        }
    }

    fn literal(
        &mut self,
        block: &Bytes,
        pos: &mut usize,
        prefix: u8,
        sensitive: bool,
    ) -> Result<Field, HpackError> {
        let idx = decode_int(block, pos, prefix)?;
        let name = if idx == 0 {
            self.string(block, pos)?
        } else {
            self.get(idx)?.name
        };
        let value = self.string(block, pos)?;
        Ok(Field {
            name,
            value,
            sensitive,
        })
    }

    fn string(&mut self, block: &Bytes, pos: &mut usize) -> Result<Bytes, HpackError> {
        let huff = *block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = decode_int(block, pos, 7)?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= block.len())
            .ok_or(HpackError::Truncated)?;
        let raw = &block[*pos..end];
        let out = if huff {
            huffman::decode(raw, &mut self.scratch)?;
            self.scratch.split().freeze()
        } else {
            block.slice(*pos..end)
        };
        *pos = end;
        Ok(out)
    }
}
