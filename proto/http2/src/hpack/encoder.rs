//! The HPACK encoder.

use bytes::{BufMut, Bytes, BytesMut};

use super::table::{static_find, DynamicTable, Entry, STATIC_LEN};
use super::{encode_int, encode_string};

/// Names whose values change too often to be worth a table slot.
fn never_worth_indexing(name: &[u8]) -> bool {
    matches!(
        name,
        b":path"
            | b"content-length"
            | b"etag"
            | b"if-modified-since"
            | b"if-none-match"
            | b"last-modified"
            | b"age"
            | b"content-range"
            | b"authorization"
            | b"proxy-authorization"
    )
}

/// Encodes field blocks; one per connection direction.
#[derive(Debug)]
pub struct Encoder {
    table: DynamicTable,
    /// The largest table we are willing to keep, whatever the peer allows.
    cap: usize,
    /// Smallest size set since the last block, and the final one (§4.2: both are signalled).
    pending: Option<(usize, usize)>,
    huffman: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new(4096)
    }
}

impl Encoder {
    /// An encoder keeping a table of at most `cap` octets (the peer's limit starts at 4096).
    pub fn new(cap: usize) -> Encoder {
        let size = cap.min(4096);
        let pending = (size != 4096).then_some((size, size));
        Encoder {
            table: DynamicTable::new(size),
            cap,
            pending,
            huffman: true,
        }
    }

    /// Use Huffman coding when it is shorter (default), or never.
    pub fn set_huffman(&mut self, on: bool) {
        self.huffman = on;
    }

    /// The dynamic table.
    pub fn table(&self) -> &DynamicTable {
        &self.table
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed: use `min(max, cap)` and signal it at the
    /// start of the next block.
    pub fn set_max_table_size(&mut self, max: usize) {
        let size = max.min(self.cap);
        if size == self.table.max_size() && self.pending.is_none() {
            return;
        }
        self.table.set_max_size(size);
        self.pending = Some(match self.pending {
            Some((lo, _)) => (lo.min(size), size),
            None => (size, size),
        });
    }

    /// Encode a field block. `sensitive` fields are sent as never-indexed literals.
    pub fn encode<'a>(
        &mut self,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8], bool)>,
        dst: &mut BytesMut,
    ) {
        if let Some((lo, size)) = self.pending.take() {
            if lo < size {
                encode_int(lo, 5, 0x20, dst);
            }
            encode_int(size, 5, 0x20, dst);
        }
        for (name, value, sensitive) in fields {
            self.encode_field(name, value, sensitive, dst);
        }
    }

    fn find_dynamic(&self, name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
        let mut name_idx = None;
        for (i, e) in self.table.iter().enumerate() {
            if e.name == name {
                if e.value == value {
                    return (Some(i + STATIC_LEN + 1), Some(i + STATIC_LEN + 1));
                }
                name_idx.get_or_insert(i + STATIC_LEN + 1);
            }
        }
        (None, name_idx)
    }

    fn encode_field(&mut self, name: &[u8], value: &[u8], sensitive: bool, dst: &mut BytesMut) {
        let (s_exact, s_name) = static_find(name, value);
        if !sensitive {
            if let Some(i) = s_exact {
                encode_int(i, 7, 0x80, dst);
                return;
            }
        }
        let (d_exact, d_name) = if self.table.is_empty() {
            (None, None)
        } else {
            self.find_dynamic(name, value)
        };
        if !sensitive {
            if let Some(i) = d_exact {
                encode_int(i, 7, 0x80, dst);
                return;
            }
        }
        let name_idx = s_name.or(d_name);
        let size = name.len() + value.len() + super::ENTRY_OVERHEAD;
        let index =
            !sensitive && !never_worth_indexing(name) && size <= self.table.max_size() * 3 / 4;
        let (prefix, first) = if index {
            (6, 0x40)
        } else if sensitive {
            (4, 0x10)
        } else {
            (4, 0x00)
        };
        match name_idx {
            Some(i) => encode_int(i, prefix, first, dst),
            None => {
                dst.put_u8(first);
                encode_string(name, self.huffman, dst);
            }
        }
        encode_string(value, self.huffman, dst);
        if index {
            self.table.insert(Entry {
                name: Bytes::copy_from_slice(name),
                value: Bytes::copy_from_slice(value),
            });
        }
    }
}
