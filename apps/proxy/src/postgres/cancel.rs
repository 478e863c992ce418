//! Cancel keys: every client gets a proxy-made `BackendKeyData` (pid, secret), registered in
//! one process-wide table. A client updates its entry's [`CancelCell`] when it attaches to a
//! server connection (two relaxed stores, only when the server changed), so a
//! `CancelRequest` arriving on any worker finds which upstream and which server backend to
//! cancel.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;
const NONE: u32 = u32::MAX;

/// Where a client's queries run now: an upstream index and the server's own key.
#[derive(Debug)]
pub(crate) struct CancelCell {
    up: AtomicU32,
    key: AtomicU64,
}

impl CancelCell {
    fn new() -> CancelCell {
        CancelCell {
            up: AtomicU32::new(NONE),
            key: AtomicU64::new(0),
        }
    }

    /// The client now runs on upstream `up`, server backend (`pid`, `secret`).
    #[inline]
    pub fn set(&self, up: usize, pid: i32, secret: i32) {
        let key = (u64::from(pid as u32) << 32) | u64::from(secret as u32);
        self.key.store(key, Relaxed);
        self.up.store(up as u32, Relaxed);
    }

    /// The client has no server connection now: a cancel has nothing to cancel (and must not
    /// reach the server connection it gave back, now another client's).
    #[inline]
    pub fn clear(&self) {
        self.up.store(NONE, Relaxed);
    }

    /// Upstream index and server key, while the client has a server connection.
    pub fn get(&self) -> Option<(usize, i32, i32)> {
        let up = self.up.load(Relaxed);
        if up == NONE {
            return None;
        }
        let key = self.key.load(Relaxed);
        Some((up as usize, (key >> 32) as u32 as i32, key as u32 as i32))
    }
}

/// Unpredictable numbers without a dependency: SipHash (std's `RandomState`, keyed from the
/// OS's randomness) of a counter, mixed with bytes of `/dev/urandom` when it can be read.
#[derive(Debug)]
pub(crate) struct Rng {
    keys: RandomState,
    seed: u64,
    ctr: AtomicU64,
}

impl Rng {
    pub fn new() -> Rng {
        let mut seed = [0u8; 8];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut seed);
        }
        Rng {
            keys: RandomState::new(),
            seed: u64::from_le_bytes(seed),
            ctr: AtomicU64::new(0),
        }
    }

    pub fn u64(&self) -> u64 {
        self.keys
            .hash_one((self.seed, self.ctr.fetch_add(1, Relaxed)))
    }

    pub fn fill(&self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

type Shard = Mutex<HashMap<i32, (i32, Arc<CancelCell>)>>;

/// The process-wide table of proxy-made cancel keys.
#[derive(Debug)]
pub(crate) struct CancelTable {
    shards: Vec<Shard>,
}

impl CancelTable {
    pub fn new() -> CancelTable {
        CancelTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, pid: i32) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, Arc<CancelCell>)>> {
        self.shards[(pid as u32 as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A new key (unique pid, random secret) and its cell.
    pub fn register(&self, rng: &Rng) -> (i32, i32, Arc<CancelCell>) {
        let cell = Arc::new(CancelCell::new());
        loop {
            let v = rng.u64();
            // Positive pids, as a server's.
            let pid = ((v >> 32) as u32 & 0x7FFF_FFFF) as i32;
            let secret = v as u32 as i32;
            if pid == 0 {
                continue;
            }
            let mut s = self.shard(pid);
            if let std::collections::hash_map::Entry::Vacant(e) = s.entry(pid) {
                e.insert((secret, cell.clone()));
                return (pid, secret, cell);
            }
        }
    }

    /// The client with this key is gone.
    pub fn remove(&self, pid: i32) {
        self.shard(pid).remove(&pid);
    }

    /// The cell of the client with this key (the secret must match).
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<Arc<CancelCell>> {
        let s = self.shard(pid);
        let (sec, cell) = s.get(&pid)?;
        // Compare without an early exit on the first differing bit.
        ((*sec ^ secret) == 0).then(|| cell.clone())
    }

    /// Keys registered (tests, metrics).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_found_only_with_their_secret() {
        let t = CancelTable::new();
        let rng = Rng::new();
        let mut keys = Vec::new();
        for _ in 0..1000 {
            let (pid, secret, cell) = t.register(&rng);
            assert!(pid > 0);
            keys.push((pid, secret, cell));
        }
        assert_eq!(t.len(), 1000);
        let (pid, secret, cell) = &keys[7];
        assert!(t.lookup(*pid, *secret).is_some());
        assert!(t.lookup(*pid, secret.wrapping_add(1)).is_none());
        assert_eq!(cell.get(), None, "never attached");
        cell.set(3, -5, i32::MIN);
        let found = t.lookup(*pid, *secret).unwrap();
        assert_eq!(found.get(), Some((3, -5, i32::MIN)));
        cell.clear();
        assert_eq!(found.get(), None, "between transactions");
        t.remove(*pid);
        assert!(t.lookup(*pid, *secret).is_none());
        assert_eq!(t.len(), 999);
    }

    #[test]
    fn the_rng_does_not_repeat() {
        let rng = Rng::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(rng.u64()));
        }
        let mut b = [0u8; 13];
        rng.fill(&mut b);
        assert!(b.iter().any(|&x| x != 0));
    }
}
