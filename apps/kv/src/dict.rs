//! The keyspace: a chained hash table whose `scan` uses Redis's reverse-binary cursor, so a
//! full SCAN returns every key present for its whole duration at least once, across resizes.

use bytes::Bytes;
use std::hash::BuildHasher;

/// foldhash (seeded per table, with its stronger `quality` finish): several times cheaper
/// than SipHash on short keys, still randomized against collision floods.
type RandomState = foldhash::quality::RandomState;

const NIL: u32 = u32::MAX;

struct Node<V> {
    key: Bytes,
    val: V,
    next: u32,
}

/// A hash map from keys to `V` with stable SCAN cursors.
pub struct Dict<V> {
    nodes: Vec<Option<Node<V>>>,
    free: Vec<u32>,
    buckets: Vec<u32>,
    len: usize,
    hasher: RandomState,
}

impl<V> Default for Dict<V> {
    fn default() -> Self {
        Dict {
            nodes: Vec::new(),
            free: Vec::new(),
            buckets: vec![NIL; 4],
            len: 0,
            hasher: RandomState::default(),
        }
    }
}

impl<V> Dict<V> {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bucket(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) & (self.buckets.len() - 1)
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        let mut i = self.buckets[self.bucket(key)];
        while i != NIL {
            let n = self.nodes[i as usize].as_ref()?;
            if n.key[..] == *key {
                return Some(i);
            }
            i = n.next;
        }
        None
    }

    /// The slot of `key`, for [`at_mut`](Self::at_mut) (one hash for check-then-modify).
    pub fn slot(&self, key: &[u8]) -> Option<u32> {
        self.find(key)
    }

    /// The value in `slot` (valid until the next insert or remove).
    pub fn at_mut(&mut self, slot: u32) -> Option<&mut V> {
        self.nodes
            .get_mut(slot as usize)?
            .as_mut()
            .map(|n| &mut n.val)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.find(key)
            .and_then(|i| self.nodes[i as usize].as_ref())
            .map(|n| &n.val)
    }

    /// The value of `key`, mutably.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let i = self.find(key)?;
        self.nodes[i as usize].as_mut().map(|n| &mut n.val)
    }

    /// Insert or replace; returns the old value.
    pub fn insert(&mut self, key: Bytes, val: V) -> Option<V> {
        if let Some(i) = self.find(&key) {
            let n = self.nodes[i as usize].as_mut()?;
            return Some(std::mem::replace(&mut n.val, val));
        }
        let b = self.bucket(&key);
        let node = Node {
            key,
            val,
            next: self.buckets[b],
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = Some(node);
                i
            }
            None => {
                self.nodes.push(Some(node));
                (self.nodes.len() - 1) as u32
            }
        };
        self.buckets[b] = idx;
        self.len += 1;
        if self.len > self.buckets.len() {
            self.resize(self.buckets.len() * 2);
        }
        None
    }

    /// Remove `key`, returning its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let b = self.bucket(key);
        let mut prev = NIL;
        let mut i = self.buckets[b];
        while i != NIL {
            let (matches, next) = {
                let n = self.nodes[i as usize].as_ref()?;
                (n.key[..] == *key, n.next)
            };
            if matches {
                if prev == NIL {
                    self.buckets[b] = next;
                } else if let Some(p) = self.nodes[prev as usize].as_mut() {
                    p.next = next;
                }
                let node = self.nodes[i as usize].take()?;
                self.free.push(i);
                self.len -= 1;
                if self.buckets.len() > 4 && self.len * 10 < self.buckets.len() {
                    self.resize((self.len.next_power_of_two()).max(4));
                }
                return Some(node.val);
            }
            prev = i;
            i = next;
        }
        None
    }

    fn resize(&mut self, size: usize) {
        self.buckets = vec![NIL; size];
        let mask = size - 1;
        for idx in 0..self.nodes.len() {
            let Some(n) = self.nodes[idx].as_ref() else {
                continue;
            };
            let b = (self.hasher.hash_one(&n.key[..]) as usize) & mask;
            let head = self.buckets[b];
            if let Some(n) = self.nodes[idx].as_mut() {
                n.next = head;
            }
            self.buckets[b] = idx as u32;
        }
        if self.len == 0 {
            self.nodes.clear();
            self.free.clear();
        }
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        *self = Dict {
            hasher: std::mem::take(&mut self.hasher),
            ..Dict::default()
        };
    }

    /// Every key and value (in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &V)> {
        self.nodes.iter().flatten().map(|n| (&n.key, &n.val))
    }

    /// Visit the bucket at `cursor`, calling `f` for each key there; returns the next cursor
    /// (0 when the scan is complete). Redis's `dictScan` on one table.
    pub fn scan_step(&self, cursor: u64, mut f: impl FnMut(&Bytes, &V)) -> u64 {
        let mask = (self.buckets.len() - 1) as u64;
        let mut i = self.buckets[(cursor & mask) as usize];
        while i != NIL {
            let Some(n) = self.nodes[i as usize].as_ref() else {
                break;
            };
            f(&n.key, &n.val);
            i = n.next;
        }
        let mut v = cursor | !mask;
        v = v.reverse_bits();
        v = v.wrapping_add(1);
        v.reverse_bits()
    }

    /// A key picked by `r` (any `u64`), for RANDOMKEY-style sampling.
    pub fn key_at(&self, r: u64) -> Option<&Bytes> {
        if self.len == 0 {
            return None;
        }
        let n = self.nodes.len();
        let start = (r % n as u64) as usize;
        (0..n)
            .map(|k| (start + k) % n)
            .find_map(|i| self.nodes[i].as_ref().map(|n| &n.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn insert_get_remove_resize() {
        let mut d = Dict::default();
        for i in 0..1000 {
            assert!(d.insert(Bytes::from(format!("k{i}")), i).is_none());
        }
        assert_eq!(d.len(), 1000);
        assert_eq!(d.get(b"k500"), Some(&500));
        for i in 0..990 {
            assert_eq!(d.remove(format!("k{i}").as_bytes()), Some(i));
        }
        assert_eq!(d.len(), 10);
        assert_eq!(d.get(b"k995"), Some(&995));
        assert_eq!(d.get(b"k5"), None);
    }

    #[test]
    fn scan_sees_every_stable_key_across_resizes() {
        let mut d = Dict::default();
        for i in 0..200 {
            d.insert(Bytes::from(format!("stable{i}")), ());
        }
        let mut seen = HashSet::new();
        let mut cursor = 0;
        let mut step = 0;
        loop {
            cursor = d.scan_step(cursor, |k, _| {
                seen.insert(k.clone());
            });
            // Churn: grow and shrink the table mid-scan.
            step += 1;
            if step % 3 == 0 {
                for j in 0..50 {
                    d.insert(Bytes::from(format!("tmp{step}-{j}")), ());
                }
            } else if step % 3 == 1 {
                let tmp: Vec<Bytes> = d
                    .iter()
                    .map(|(k, _)| k.clone())
                    .filter(|k| k.starts_with(b"tmp"))
                    .collect();
                for k in tmp {
                    d.remove(&k);
                }
            }
            if cursor == 0 {
                break;
            }
        }
        for i in 0..200 {
            assert!(
                seen.contains(format!("stable{i}").as_bytes()),
                "missed stable{i}"
            );
        }
    }
}
