//! The HPACK encoder.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
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

/// One entry of the encoder's table: where its octets are in [`EncTable::buf`].
#[derive(Clone, Copy, Debug)]
struct Slot {
    start: u32,
    name_len: u32,
    value_len: u32,
    /// Low bits of the name and field hashes, checked before the octets.
    name_hash: u32,
    field_hash: u32,
    /// Sequence numbers of the next older entries in the same hash buckets (chains, as in
    /// zlib: newest first, so a chain ends at the first entry that is no longer live).
    prev_name: u32,
    prev_field: u32,
}

impl Slot {
    fn size(&self) -> usize {
        (self.name_len + self.value_len) as usize + super::ENTRY_OVERHEAD
    }
    fn end(&self) -> usize {
        (self.start + self.name_len + self.value_len) as usize
    }
}

/// The encoder's copy of the dynamic table. The encoder never hands entries out, so instead of
/// two `Bytes` allocations per inserted field the entries' octets live back to back in one
/// growable buffer (oldest first, evicted entries left behind and compacted away once they are
/// more than half of it): inserting is a copy, evicting is arithmetic.
#[derive(Debug, Default)]
struct EncTable {
    buf: Vec<u8>,
    /// Offset of the oldest live entry in `buf`.
    head: usize,
    /// Newest first (HPACK index 62 is `slots[0]`).
    slots: VecDeque<Slot>,
    size: usize,
    max_size: usize,
    /// Sequence number the next inserted entry gets (the newest live entry is `next - 1`).
    next: u32,
    /// Hash buckets by name and value (first half), and by name alone (second half): the
    /// sequence number of the newest entry that hashed there, chained to older ones through
    /// [`Slot`]. One bucket of each kind per 32 octets of table when the first entry goes in
    /// (real entries are larger, so chains stay shorter than one on average; a table grown
    /// later only makes them longer).
    index: Vec<u32>,
}

/// Hashes of a field for [`EncTable`]'s lookups.
#[derive(Clone, Copy, Debug)]
struct FieldHash {
    name: u64,
    field: u64,
}

impl FieldHash {
    fn of(name: &[u8], value: &[u8]) -> FieldHash {
        let n = hash_bytes(0, name);
        FieldHash {
            name: n,
            field: hash_bytes(n ^ 0x9e37_79b9_7f4a_7c15, value),
        }
    }
}

/// A fast non-cryptographic hash (FxHash's mixing, eight octets per step) of at most five
/// words: all of a string up to 32 octets, else its first 16, middle 8 and last 16 octets
/// (with the length). Lookups verify the octets, so strings that differ only elsewhere just
/// share a chain (a lookup then compares at most every live entry, like a plain scan); in
/// exchange a 300-octet cookie costs five multiplies instead of forty.
#[inline]
fn hash_bytes(seed: u64, b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    #[inline]
    fn word(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        let end = b.len().min(at + 8);
        if at < end {
            w[..end - at].copy_from_slice(&b[at..end]);
        }
        u64::from_le_bytes(w)
    }
    let mut h = seed ^ b.len() as u64;
    let mut step = |w: u64| h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    if b.len() <= 32 {
        let mut at = 0;
        while at < b.len() {
            step(word(b, at));
            at += 8;
        }
    } else {
        let n = b.len();
        for at in [0, 8, n / 2 - 4, n - 16, n - 8] {
            step(word(b, at));
        }
    }
    h
}

/// Slice equality without a `memcmp` call for short strings (most names and many values):
/// two overlapping word loads per side.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    #[inline]
    fn w8(s: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    }
    #[inline]
    fn w4(s: &[u8], at: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_le_bytes(w)
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0..=3 => a == b,
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        _ => a == b,
    }
}

impl EncTable {
    fn new(max_size: usize) -> EncTable {
        EncTable {
            max_size,
            next: 1,
            ..EncTable::default()
        }
    }

    /// Position of `h`'s bucket in the first half of `index` (add the half for names).
    fn bucket(&self, h: u64) -> usize {
        (h >> 32) as usize & (self.index.len() / 2).wrapping_sub(1)
    }

    /// The slot position of the entry with sequence number `seq`, if it is still live.
    fn live(&self, seq: u32) -> Option<usize> {
        let age = self.next.wrapping_sub(1).wrapping_sub(seq) as usize;
        (age < self.slots.len()).then_some(age)
    }

    fn name(&self, s: &Slot) -> &[u8] {
        &self.buf[s.start as usize..s.start as usize + s.name_len as usize]
    }

    fn value(&self, s: &Slot) -> &[u8] {
        &self.buf[s.start as usize + s.name_len as usize..s.end()]
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.slots.pop_back() {
                Some(s) => {
                    self.size -= s.size();
                    self.head = s.end();
                }
                None => break,
            }
        }
        if self.slots.is_empty() {
            self.buf.clear();
            self.head = 0;
        }
    }

    fn set_max_size(&mut self, max: usize) {
        self.max_size = max;
        self.evict_to(max);
    }

    #[cfg(test)]
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        self.insert_hashed(name, value, FieldHash::of(name, value));
    }

    fn insert_hashed(&mut self, name: &[u8], value: &[u8], h: FieldHash) {
        let s = name.len() + value.len() + super::ENTRY_OVERHEAD;
        if s > self.max_size {
            self.slots.clear();
            self.size = 0;
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max_size - s);
        if self.head > 0 && self.head >= self.buf.len() / 2 {
            let head = self.head as u32;
            self.buf.drain(..self.head);
            for slot in self.slots.iter_mut() {
                slot.start -= head;
            }
            self.head = 0;
        }
        if self.buf.capacity() == 0 {
            // Once per connection: room for a full table plus as much evicted space again
            // (compaction keeps it below that), so inserting never reallocates.
            self.buf.reserve((2 * self.max_size).clamp(s, 2 * 16384));
            self.slots.reserve((self.max_size / 64).clamp(8, 128));
        }
        if self.index.is_empty() {
            let buckets = (self.max_size / super::ENTRY_OVERHEAD)
                .clamp(16, 1 << 14)
                .next_power_of_two();
            self.index = alloc::vec![0; 2 * buckets];
        }
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        let bf = self.bucket(h.field);
        let prev_field = core::mem::replace(&mut self.index[bf], seq);
        let bn = self.bucket(h.name) + self.index.len() / 2;
        let prev_name = core::mem::replace(&mut self.index[bn], seq);
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(value);
        self.size += s;
        self.slots.push_front(Slot {
            start,
            name_len: name.len() as u32,
            value_len: value.len() as u32,
            name_hash: h.name as u32,
            field_hash: h.field as u32,
            prev_name,
            prev_field,
        });
    }

    /// `(index of an exact match, index of a name match)`, HPACK indices (62 = newest).
    fn find(&self, name: &[u8], value: &[u8], h: FieldHash) -> (Option<usize>, Option<usize>) {
        if self.slots.is_empty() {
            return (None, None);
        }
        let mut seq = self.index[self.bucket(h.field)];
        while let Some(i) = self.live(seq) {
            let s = &self.slots[i];
            if s.field_hash == h.field as u32
                && s.name_len as usize == name.len()
                && s.value_len as usize == value.len()
                && same(self.name(s), name)
                && same(self.value(s), value)
            {
                return (Some(i + STATIC_LEN + 1), Some(i + STATIC_LEN + 1));
            }
            seq = s.prev_field;
        }
        let mut seq = self.index[self.bucket(h.name) + self.index.len() / 2];
        while let Some(i) = self.live(seq) {
            let s = &self.slots[i];
            if s.name_hash == h.name as u32
                && s.name_len as usize == name.len()
                && same(self.name(s), name)
            {
                return (None, Some(i + STATIC_LEN + 1));
            }
            seq = s.prev_name;
        }
        (None, None)
    }
}

/// Encodes field blocks; one per connection direction.
#[derive(Debug)]
pub struct Encoder {
    table: EncTable,
    /// The largest table we are willing to keep, whatever the peer allows.
    cap: usize,
    /// Smallest size set since the last block, and the final one (§4.2: both are signalled).
    pending: Option<(usize, usize)>,
    huffman: bool,
    memo: Memo,
}

/// The last block [`Encoder::encode_memo`] produced without touching the table, and its input.
#[derive(Debug, Default)]
struct Memo {
    /// `table.next` when it was made: any insertion since renumbers or evicts entries.
    next: u32,
    valid: bool,
    /// Name and value lengths and the sensitive flag of each field.
    lens: Vec<(u32, u32, bool)>,
    /// The fields' names and values back to back.
    octets: Vec<u8>,
    block: Vec<u8>,
}

impl Memo {
    fn matches(&self, fields: &[(&[u8], &[u8], bool)], next: u32) -> bool {
        if !self.valid || self.next != next || self.lens.len() != fields.len() {
            return false;
        }
        let mut at = 0;
        for (&(nl, vl, sens), &(n, v, s)) in self.lens.iter().zip(fields) {
            let (nl, vl) = (nl as usize, vl as usize);
            if nl != n.len() || vl != v.len() || sens != s {
                return false;
            }
            if !same(&self.octets[at..at + nl], n) || !same(&self.octets[at + nl..at + nl + vl], v)
            {
                return false;
            }
            at += nl + vl;
        }
        true
    }

    fn store(&mut self, fields: &[(&[u8], &[u8], bool)], next: u32, block: &[u8]) {
        self.lens.clear();
        self.octets.clear();
        for &(n, v, s) in fields {
            self.lens.push((n.len() as u32, v.len() as u32, s));
            self.octets.extend_from_slice(n);
            self.octets.extend_from_slice(v);
        }
        self.block.clear();
        self.block.extend_from_slice(block);
        self.next = next;
        self.valid = true;
    }
}

/// Inputs larger than this are not remembered by [`Encoder::encode_memo`].
const MEMO_MAX: usize = 512;

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
            table: EncTable::new(size),
            cap,
            pending,
            huffman: true,
            memo: Memo::default(),
        }
    }

    /// Use Huffman coding when it is shorter (default), or never.
    pub fn set_huffman(&mut self, on: bool) {
        self.huffman = on;
        self.memo.valid = false;
    }

    /// [`encode`](Self::encode), remembering the last block whose encoding left the table as
    /// it was (every field found in it, never indexed, or too large to index): the same
    /// fields again, with no entry inserted since by any block and no size change, are copied
    /// from that memo instead of encoded. A server answering with the same head (status,
    /// content type, length) encodes it once per connection.
    pub fn encode_memo(&mut self, fields: &[(&[u8], &[u8], bool)], dst: &mut BytesMut) {
        let next = self.table.next;
        if self.pending.is_none() && self.memo.matches(fields, next) {
            dst.extend_from_slice(&self.memo.block);
            return;
        }
        let cacheable = self.pending.is_none();
        let start = dst.len();
        self.encode(fields.iter().copied(), dst);
        let size: usize = fields.iter().map(|(n, v, _)| n.len() + v.len()).sum();
        if cacheable && self.table.next == next && size <= MEMO_MAX {
            self.memo.store(fields, next, &dst[start..]);
        } else {
            self.memo.valid = false;
        }
    }

    /// A copy of the dynamic table as the peer's decoder will hold it (for tests and metrics;
    /// the encoder keeps its entries in a compact form of its own).
    pub fn table(&self) -> DynamicTable {
        let mut t = DynamicTable::new(self.table.max_size);
        for s in self.table.slots.iter().rev() {
            t.insert(Entry {
                name: Bytes::copy_from_slice(self.table.name(s)),
                value: Bytes::copy_from_slice(self.table.value(s)),
            });
        }
        t
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed: use `min(max, cap)` and signal it at the
    /// start of the next block.
    pub fn set_max_table_size(&mut self, max: usize) {
        let size = max.min(self.cap);
        if size == self.table.max_size && self.pending.is_none() {
            return;
        }
        self.table.set_max_size(size);
        self.memo.valid = false;
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

    fn encode_field(&mut self, name: &[u8], value: &[u8], sensitive: bool, dst: &mut BytesMut) {
        let (s_exact, s_name) = static_find(name, value);
        if !sensitive {
            if let Some(i) = s_exact {
                encode_int(i, 7, 0x80, dst);
                return;
            }
        }
        // Names never indexed are never in the dynamic table (and all have a static name).
        let volatile = never_worth_indexing(name);
        let (h, (d_exact, d_name)) = if volatile || self.table.slots.is_empty() && sensitive {
            (FieldHash { name: 0, field: 0 }, (None, None))
        } else {
            let h = FieldHash::of(name, value);
            (h, self.table.find(name, value, h))
        };
        if !sensitive {
            if let Some(i) = d_exact {
                encode_int(i, 7, 0x80, dst);
                return;
            }
        }
        let name_idx = s_name.or(d_name);
        let size = name.len() + value.len() + super::ENTRY_OVERHEAD;
        let index = !sensitive && !volatile && size <= self.table.max_size * 3 / 4;
        let (prefix, first) = if index {
            (6, 0x40)
        } else if sensitive {
            (4, 0x10)
        } else {
            (4, 0x00)
        };
        // Room for the representation's integer and both string headers.
        dst.reserve(name.len() + value.len() + 16);
        match name_idx {
            Some(i) => encode_int(i, prefix, first, dst),
            None => {
                dst.put_u8(first);
                encode_string(name, self.huffman, dst);
            }
        }
        encode_string(value, self.huffman, dst);
        if index {
            self.table.insert_hashed(name, value, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapshot(t: &DynamicTable) -> alloc::vec::Vec<(alloc::vec::Vec<u8>, alloc::vec::Vec<u8>)> {
        t.iter()
            .map(|e| (e.name.to_vec(), e.value.to_vec()))
            .collect()
    }

    proptest! {
        #[test]
        fn same_is_slice_equality(a in proptest::collection::vec(0u8..3, 0..24), b in proptest::collection::vec(0u8..3, 0..24)) {
            prop_assert_eq!(same(&a, &b), a == b);
            prop_assert!(same(&a, &a));
        }
    }

    #[test]
    fn repeated_fields_are_found_in_a_full_table() {
        let mut e = Encoder::new(4096);
        let mut dst = BytesMut::new();
        let fields: alloc::vec::Vec<(alloc::string::String, alloc::string::String)> = (0..60)
            .map(|i| {
                (
                    alloc::format!("x-name-{}", i % 7),
                    alloc::format!("value-{i}"),
                )
            })
            .collect();
        let list = || {
            fields
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes(), false))
        };
        e.encode(list(), &mut dst);
        dst.clear();
        // The second time every field is in the table: one octet each (index < 127).
        e.encode(list(), &mut dst);
        assert_eq!(dst.len(), fields.len(), "{dst:?}");
        assert!(dst.iter().all(|b| b & 0x80 != 0));
    }

    proptest! {
        /// The compact table evicts and compacts exactly like the decoder's `DynamicTable`.
        #[test]
        fn enc_table_matches_dynamic_table(
            ops in proptest::collection::vec((0usize..40, 0usize..120, 0usize..8), 1..200),
            max in 0usize..600,
        ) {
            let mut a = EncTable::new(max);
            let mut b = DynamicTable::new(max);
            for (i, (nl, vl, resize)) in ops.into_iter().enumerate() {
                if resize == 0 {
                    let m = (nl * 17 + vl) % 700;
                    a.set_max_size(m);
                    b.set_max_size(m);
                } else {
                    let name: alloc::vec::Vec<u8> = (0..nl).map(|k| (i + k) as u8).collect();
                    let value: alloc::vec::Vec<u8> = (0..vl).map(|k| (i * 3 + k) as u8).collect();
                    a.insert(&name, &value);
                    b.insert(Entry { name: Bytes::from(name), value: Bytes::from(value) });
                }
                let e = Encoder { table: core::mem::replace(&mut a, EncTable::new(0)), cap: 4096, pending: None, huffman: true, memo: Memo::default() };
                prop_assert_eq!(snapshot(&e.table()), snapshot(&b));
                prop_assert_eq!(e.table.size, b.size());
                a = e.table;
                for entry in b.iter() {
                    let h = FieldHash::of(&entry.name, &entry.value);
                    // The newest entry with these octets is found, and the newest with the name.
                    let (exact, by_name) = a.find(&entry.name, &entry.value, h);
                    let want = b.iter().position(|e| e == entry).map(|i| i + STATIC_LEN + 1);
                    prop_assert_eq!(exact, want);
                    let want = b.iter().position(|e| e.name == entry.name).map(|i| i + STATIC_LEN + 1);
                    // (With an exact match the name index is that entry's.)
                    prop_assert_eq!(by_name, if exact.is_some() { exact } else { want });
                    // A value no entry has: only the name is found, the newest such entry.
                    let other = [0xffu8; 200];
                    let (exact, by_name) = a.find(&entry.name, &other, FieldHash::of(&entry.name, &other));
                    prop_assert_eq!(exact, None);
                    prop_assert_eq!(by_name, want);
                }
            }
        }
    }
}
