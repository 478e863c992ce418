//! Value types of the keyspace.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;

/// A key's value and deadline.
#[derive(Debug)]
pub struct Entry {
    /// The value.
    pub data: Data,
    /// When the key expires, in Unix milliseconds (Redis's resolution and range: deadlines
    /// up to `i64::MAX` ms), if ever. Expired once the clock is past it.
    pub expire: Option<u64>,
}

/// The value of a key.
#[derive(Debug)]
#[non_exhaustive]
pub enum Data {
    /// A string (binary-safe).
    Str(Bytes),
    /// A list.
    List(VecDeque<Bytes>),
    /// A set.
    Set(IndexedSet),
    /// A hash.
    Hash(HashMap<Bytes, Bytes>),
    /// A sorted set.
    ZSet(ZSet),
    /// A stream.
    Stream(Stream),
}

impl Data {
    /// The name TYPE reports.
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::Str(_) => "string",
            Data::List(_) => "list",
            Data::Set(_) => "set",
            Data::Hash(_) => "hash",
            Data::ZSet(_) => "zset",
            Data::Stream(_) => "stream",
        }
    }
}

/// A set with O(1) insert, remove and random pick (SPOP).
#[derive(Debug, Default)]
pub struct IndexedSet {
    items: Vec<Bytes>,
    index: HashMap<Bytes, usize>,
}

impl IndexedSet {
    /// Add; returns whether it was new.
    pub fn insert(&mut self, b: Bytes) -> bool {
        if self.index.contains_key(&b) {
            return false;
        }
        self.index.insert(b.clone(), self.items.len());
        self.items.push(b);
        true
    }

    /// Remove; returns whether it was there.
    pub fn remove(&mut self, b: &[u8]) -> bool {
        let Some(i) = self.index.remove(b) else {
            return false;
        };
        self.items.swap_remove(i);
        if i < self.items.len() {
            self.index.insert(self.items[i].clone(), i);
        }
        true
    }

    /// Remove and return the member at `r % len`.
    pub fn pop_at(&mut self, r: u64) -> Option<Bytes> {
        if self.items.is_empty() {
            return None;
        }
        let i = (r % self.items.len() as u64) as usize;
        let b = self.items[i].clone();
        self.remove(&b);
        Some(b)
    }

    /// Members.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.items.iter()
    }

    /// Cardinality.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A score with a total order (scores are never NaN).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score(pub f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A sorted set: members ordered by (score, member).
#[derive(Debug, Default)]
pub struct ZSet {
    scores: HashMap<Bytes, f64>,
    order: BTreeSet<(Score, Bytes)>,
}

impl ZSet {
    /// The score of `m`.
    pub fn score(&self, m: &[u8]) -> Option<f64> {
        self.scores.get(m).copied()
    }

    /// Set the score of `m`; returns whether `m` was new.
    pub fn insert(&mut self, m: Bytes, s: f64) -> bool {
        // -0.0 and 0.0 are the same score.
        let s = if s == 0.0 { 0.0 } else { s };
        match self.scores.insert(m.clone(), s) {
            Some(old) => {
                self.order.remove(&(Score(old), m.clone()));
                self.order.insert((Score(s), m));
                false
            }
            None => {
                self.order.insert((Score(s), m));
                true
            }
        }
    }

    /// Remove the lowest member.
    pub fn pop_min(&mut self) -> Option<(Bytes, f64)> {
        let (s, m) = self.order.pop_first()?;
        self.scores.remove(&m);
        Some((m, s.0))
    }

    /// Members in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Bytes, f64)> + ExactSizeIterator {
        self.order.iter().map(|(s, m)| (m, s.0))
    }

    /// Cardinality.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// A stream ID `ms-seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

/// A stream (XADD appends; MAXLEN/MINID trim).
#[derive(Debug, Default)]
pub struct Stream {
    /// Entries in ID order.
    pub entries: VecDeque<(StreamId, Vec<Bytes>)>,
    /// The last ID ever added.
    pub last_id: StreamId,
}
