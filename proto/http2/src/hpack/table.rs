//! The static table (RFC 7541 Appendix A) and the dynamic table (§2.3.2, §4).

use alloc::collections::VecDeque;
use bytes::Bytes;

/// Per-entry overhead counted in table sizes (RFC 7541 §4.1).
pub const ENTRY_OVERHEAD: usize = 32;

/// RFC 7541 Appendix A, index 1..=61 at positions 0..=60.
pub static STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Number of static entries.
pub const STATIC_LEN: usize = 61;

/// Static lookup: `(index of an exact match, index of a name match)`, 1-based.
pub fn static_find(name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
    let (first, count) = match name {
        b":authority" => (1, 1),
        b":method" => (2, 2),
        b":path" => (4, 2),
        b":scheme" => (6, 2),
        b":status" => (8, 7),
        b"accept-charset" => (15, 1),
        b"accept-encoding" => (16, 1),
        b"accept-language" => (17, 1),
        b"accept-ranges" => (18, 1),
        b"accept" => (19, 1),
        b"access-control-allow-origin" => (20, 1),
        b"age" => (21, 1),
        b"allow" => (22, 1),
        b"authorization" => (23, 1),
        b"cache-control" => (24, 1),
        b"content-disposition" => (25, 1),
        b"content-encoding" => (26, 1),
        b"content-language" => (27, 1),
        b"content-length" => (28, 1),
        b"content-location" => (29, 1),
        b"content-range" => (30, 1),
        b"content-type" => (31, 1),
        b"cookie" => (32, 1),
        b"date" => (33, 1),
        b"etag" => (34, 1),
        b"expect" => (35, 1),
        b"expires" => (36, 1),
        b"from" => (37, 1),
        b"host" => (38, 1),
        b"if-match" => (39, 1),
        b"if-modified-since" => (40, 1),
        b"if-none-match" => (41, 1),
        b"if-range" => (42, 1),
        b"if-unmodified-since" => (43, 1),
        b"last-modified" => (44, 1),
        b"link" => (45, 1),
        b"location" => (46, 1),
        b"max-forwards" => (47, 1),
        b"proxy-authenticate" => (48, 1),
        b"proxy-authorization" => (49, 1),
        b"range" => (50, 1),
        b"referer" => (51, 1),
        b"refresh" => (52, 1),
        b"retry-after" => (53, 1),
        b"server" => (54, 1),
        b"set-cookie" => (55, 1),
        b"strict-transport-security" => (56, 1),
        b"transfer-encoding" => (57, 1),
        b"user-agent" => (58, 1),
        b"vary" => (59, 1),
        b"via" => (60, 1),
        b"www-authenticate" => (61, 1),
        _ => return (None, None),
    };
    for i in first..first + count {
        let v = STATIC_TABLE[i - 1].1.as_bytes();
        if !v.is_empty() && v == value {
            return (Some(i), Some(first));
        }
    }
    (None, Some(first))
}

/// One dynamic table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Field name.
    pub name: Bytes,
    /// Field value.
    pub value: Bytes,
}

impl Entry {
    /// The entry's size (RFC 7541 §4.1).
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// The dynamic table: newest entry first (index 62), evicted from the back (RFC 7541 §4.4).
#[derive(Clone, Debug, Default)]
pub struct DynamicTable {
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    /// An empty table of capacity `max_size`.
    pub fn new(max_size: usize) -> DynamicTable {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// Sum of entry sizes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Current capacity.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry at dynamic position `i` (0 = newest).
    pub fn get(&self, i: usize) -> Option<&Entry> {
        self.entries.get(i)
    }

    /// Iterate newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Change the capacity, evicting from the oldest end until the size fits (§4.3).
    pub fn set_max_size(&mut self, max: usize) {
        self.max_size = max;
        self.evict_to(max);
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size(),
                None => break,
            }
        }
    }

    /// Add an entry (§4.4): evict until it fits; an entry larger than the capacity empties the
    /// table and is not added.
    pub fn insert(&mut self, entry: Entry) {
        let s = entry.size();
        if s > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - s);
        self.size += s;
        self.entries.push_front(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_lookup() {
        assert_eq!(static_find(b":method", b"POST"), (Some(3), Some(2)));
        assert_eq!(static_find(b":status", b"418"), (None, Some(8)));
        assert_eq!(static_find(b":authority", b""), (None, Some(1)));
        assert_eq!(static_find(b"x-nope", b""), (None, None));
        for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
            let (exact, name) = static_find(n.as_bytes(), v.as_bytes());
            assert!(name.is_some());
            if !v.is_empty() {
                assert_eq!(exact, Some(i + 1));
            }
        }
    }

    #[test]
    fn eviction_rules() {
        let e = |n: &'static str, v: &'static str| Entry {
            name: Bytes::from_static(n.as_bytes()),
            value: Bytes::from_static(v.as_bytes()),
        };
        let mut t = DynamicTable::new(100);
        t.insert(e("aaaa", "bbbb")); // 40
        t.insert(e("cccc", "dddd")); // 80
        assert_eq!((t.len(), t.size()), (2, 80));
        t.insert(e("eeee", "ffff")); // evicts the oldest
        assert_eq!((t.len(), t.size()), (2, 80));
        assert_eq!(t.get(0).unwrap().name, "eeee");
        assert_eq!(t.get(1).unwrap().name, "cccc");
        t.set_max_size(50);
        assert_eq!((t.len(), t.size()), (1, 40));
        // Larger than the capacity: table emptied, entry not added.
        t.insert(e("0123456789", "0123456789"));
        assert!(t.is_empty());
        assert_eq!(t.size(), 0);
        t.set_max_size(0);
        t.insert(e("", ""));
        assert!(t.is_empty());
    }
}
