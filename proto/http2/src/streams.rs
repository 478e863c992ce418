//! The connection's stream table: streams live in a slab (a `Vec` of slots reused through a
//! free list, so opening and closing a stream moves no other stream), found through a small
//! id-sorted index of `(id, slot)` pairs. Stream ids only grow, so a new stream is appended to
//! the index and lookups are a binary search over the open streams (typically a few dozen).
//! Iteration is in id order, like the `BTreeMap` this replaces.

use alloc::vec::Vec;

/// Streams keyed by id (see the module docs).
#[derive(Debug)]
pub(crate) struct StreamMap<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    /// `(id, slot)`, sorted by id.
    index: Vec<(u32, u32)>,
}

impl<T> Default for StreamMap<T> {
    fn default() -> Self {
        StreamMap {
            slots: Vec::new(),
            free: Vec::new(),
            index: Vec::new(),
        }
    }
}

impl<T> StreamMap<T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn position(&self, id: u32) -> Result<usize, usize> {
        // The newest stream is the most likely target.
        match self.index.last() {
            Some(&(last, _)) if last == id => Ok(self.index.len() - 1),
            Some(&(last, _)) if last < id => Err(self.index.len()),
            None => Err(0),
            _ => self.index.binary_search_by_key(&id, |&(k, _)| k),
        }
    }

    #[inline]
    pub(crate) fn get(&self, id: &u32) -> Option<&T> {
        let i = self.position(*id).ok()?;
        self.slots[self.index[i].1 as usize].as_ref()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: &u32) -> Option<&mut T> {
        let i = self.position(*id).ok()?;
        self.slots[self.index[i].1 as usize].as_mut()
    }

    pub(crate) fn contains_key(&self, id: &u32) -> bool {
        self.position(*id).is_ok()
    }

    /// Insert (or replace) the stream `id`; returns the one it replaced.
    pub(crate) fn insert(&mut self, id: u32, value: T) -> Option<T> {
        match self.position(id) {
            Ok(i) => self.slots[self.index[i].1 as usize].replace(value),
            Err(i) => {
                let slot = match self.free.pop() {
                    Some(s) => {
                        self.slots[s as usize] = Some(value);
                        s
                    }
                    None => {
                        self.slots.push(Some(value));
                        (self.slots.len() - 1) as u32
                    }
                };
                self.index.insert(i, (id, slot));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &u32) -> Option<T> {
        let i = self.position(*id).ok()?;
        let (_, slot) = self.index.remove(i);
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.index.clear();
    }

    /// `(id, stream)` in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u32, &T)> + '_ {
        self.index
            .iter()
            .filter_map(move |(id, s)| self.slots[*s as usize].as_ref().map(|v| (id, v)))
    }

    /// Ids in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &u32> + '_ {
        self.index.iter().map(|(id, _)| id)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.iter().map(|(_, v)| v)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        // Slot order, not id order: callers only adjust every stream alike.
        self.slots.iter_mut().filter_map(Option::as_mut)
    }
}

impl<T> core::ops::Index<&u32> for StreamMap<T> {
    type Output = T;

    fn index(&self, id: &u32) -> &T {
        match self.get(id) {
            Some(v) => v,
            None => panic!("no stream {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of inserts and removes leaves the map agreeing with a `BTreeMap`.
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u32..64), 0..300)) {
            let mut m = StreamMap::new();
            let mut b = BTreeMap::new();
            for (n, (ins, id)) in ops.into_iter().enumerate() {
                if ins {
                    prop_assert_eq!(m.insert(id, n), b.insert(id, n));
                } else {
                    prop_assert_eq!(m.remove(&id), b.remove(&id));
                }
                prop_assert_eq!(m.len(), b.len());
                prop_assert_eq!(m.get(&id), b.get(&id));
                prop_assert_eq!(m.contains_key(&id), b.contains_key(&id));
            }
            let ours: Vec<(u32, usize)> = m.iter().map(|(k, v)| (*k, *v)).collect();
            let theirs: Vec<(u32, usize)> = b.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(ours, theirs);
            prop_assert!(m.keys().copied().eq(b.keys().copied()));
            let mut vs: Vec<usize> = m.values_mut().map(|v| *v).collect();
            vs.sort_unstable();
            let mut bs: Vec<usize> = b.values().copied().collect();
            bs.sort_unstable();
            prop_assert_eq!(vs, bs);
            m.clear();
            prop_assert!(m.is_empty() && m.get(&1).is_none());
        }
    }

    #[test]
    fn slots_are_reused() {
        let mut m = StreamMap::new();
        for round in 0..10u32 {
            for i in 0..32 {
                m.insert(round * 64 + 2 * i + 1, i);
            }
            for i in 0..32 {
                assert_eq!(m.remove(&(round * 64 + 2 * i + 1)), Some(i));
            }
        }
        assert!(m.slots.len() <= 32);
        m.insert(7, 70);
        assert_eq!(m[&7], 70);
    }
}
