//! The shard's block cache: recently read SSTable data blocks, kept in memory because
//! direct I/O bypasses the kernel page cache (docs/design.md §5.3).
//!
//! One cache per shard, owned by that shard's thread: interior mutability through
//! `RefCell`/`Cell`, no locks, never shared between cores. Entries are keyed by
//! (SSTable id, block offset) and evicted least-recently-used first by their weight in
//! bytes, so memory stays under `capacity_bytes`. It holds only verified blocks (the
//! reader checks the CRC before inserting) and never does I/O itself.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::storage::sstable::block::Block;

/// How much memory a cached value accounts for.
pub trait CacheWeight {
    fn weight_bytes(&self) -> usize;
}

impl CacheWeight for Vec<u8> {
    fn weight_bytes(&self) -> usize {
        self.len()
    }
}

/// Cache key: SSTable id and the block's file offset.
pub type BlockKey = (u64, u64);

/// Counters of one cache, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    /// Values heavier than the whole capacity, not cached.
    pub rejected: u64,
    pub entries: usize,
    pub used_bytes: usize,
    pub capacity_bytes: usize,
}

/// End of the recency list.
const NIL: usize = usize::MAX;

struct Slot<V> {
    key: BlockKey,
    value: Option<Rc<V>>,
    weight_bytes: usize,
    /// Toward the most recently used end.
    newer: usize,
    /// Toward the least recently used end.
    older: usize,
}

/// LRU list over a slab of slots: O(1) lookup, touch, insert and evict.
struct Lru<V> {
    map: ahash::AHashMap<BlockKey, usize>,
    slots: Vec<Slot<V>>,
    free: Vec<usize>,
    newest: usize,
    oldest: usize,
    used_bytes: usize,
}

impl<V> Lru<V> {
    fn unlink(&mut self, i: usize) {
        let (newer, older) = (self.slots[i].newer, self.slots[i].older);
        if newer == NIL {
            self.newest = older;
        } else {
            self.slots[newer].older = older;
        }
        if older == NIL {
            self.oldest = newer;
        } else {
            self.slots[older].newer = newer;
        }
    }

    fn push_newest(&mut self, i: usize) {
        self.slots[i].newer = NIL;
        self.slots[i].older = self.newest;
        if self.newest == NIL {
            self.oldest = i;
        } else {
            self.slots[self.newest].newer = i;
        }
        self.newest = i;
    }

    fn remove_slot(&mut self, i: usize) {
        self.unlink(i);
        let key = self.slots[i].key;
        self.map.remove(&key);
        self.slots[i].value = None;
        self.used_bytes -= self.slots[i].weight_bytes;
        self.slots[i].weight_bytes = 0;
        self.free.push(i);
    }
}

/// A byte-bounded LRU cache of verified SSTable blocks for one shard.
pub struct BlockCache<V: CacheWeight = Block> {
    capacity_bytes: usize,
    lru: RefCell<Lru<V>>,
    hits: Cell<u64>,
    misses: Cell<u64>,
    inserts: Cell<u64>,
    evictions: Cell<u64>,
    rejected: Cell<u64>,
}

impl<V: CacheWeight> BlockCache<V> {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            lru: RefCell::new(Lru {
                map: ahash::AHashMap::new(),
                slots: Vec::new(),
                free: Vec::new(),
                newest: NIL,
                oldest: NIL,
                used_bytes: 0,
            }),
            hits: Cell::new(0),
            misses: Cell::new(0),
            inserts: Cell::new(0),
            evictions: Cell::new(0),
            rejected: Cell::new(0),
        }
    }

    /// The cached block, marked most recently used; counts a hit or a miss.
    pub fn get(&self, table_id: u64, offset: u64) -> Option<Rc<V>> {
        let mut lru = self.lru.borrow_mut();
        let Some(&i) = lru.map.get(&(table_id, offset)) else {
            self.misses.set(self.misses.get() + 1);
            return None;
        };
        lru.unlink(i);
        lru.push_newest(i);
        self.hits.set(self.hits.get() + 1);
        lru.slots[i].value.clone()
    }

    /// Cache `value` as most recently used, evicting the least recently used entries
    /// until it fits. A value heavier than the whole cache is not cached.
    pub fn insert(&self, table_id: u64, offset: u64, value: Rc<V>) {
        let weight_bytes = value.weight_bytes();
        let key = (table_id, offset);
        let mut lru = self.lru.borrow_mut();
        if let Some(&i) = lru.map.get(&key) {
            lru.remove_slot(i);
        }
        if weight_bytes > self.capacity_bytes {
            self.rejected.set(self.rejected.get() + 1);
            return;
        }
        while lru.used_bytes + weight_bytes > self.capacity_bytes {
            let oldest = lru.oldest;
            assert!(oldest != NIL, "cache accounting: bytes used but no entries");
            lru.remove_slot(oldest);
            self.evictions.set(self.evictions.get() + 1);
        }
        let slot = Slot {
            key,
            value: Some(value),
            weight_bytes,
            newer: NIL,
            older: NIL,
        };
        let i = match lru.free.pop() {
            Some(i) => {
                lru.slots[i] = slot;
                i
            }
            None => {
                lru.slots.push(slot);
                lru.slots.len() - 1
            }
        };
        lru.map.insert(key, i);
        lru.push_newest(i);
        lru.used_bytes += weight_bytes;
        self.inserts.set(self.inserts.get() + 1);
        assert!(lru.used_bytes <= self.capacity_bytes);
    }

    /// Drop every block of a table (after compaction deleted it). O(entries).
    pub fn remove_table(&self, table_id: u64) {
        let mut lru = self.lru.borrow_mut();
        let doomed: Vec<usize> = lru
            .map
            .iter()
            .filter(|((id, _), _)| *id == table_id)
            .map(|(_, &i)| i)
            .collect();
        for i in doomed {
            lru.remove_slot(i);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let lru = self.lru.borrow();
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            inserts: self.inserts.get(),
            evictions: self.evictions.get(),
            rejected: self.rejected.get(),
            entries: lru.map.len(),
            used_bytes: lru.used_bytes,
            capacity_bytes: self.capacity_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(weight_bytes: usize) -> Rc<Vec<u8>> {
        Rc::new(vec![0; weight_bytes])
    }

    #[test]
    fn evicts_least_recently_used_first_by_bytes() {
        let cache = BlockCache::<Vec<u8>>::new(300);
        cache.insert(1, 0, value(100));
        cache.insert(1, 4096, value(100));
        cache.insert(2, 0, value(100));
        assert_eq!(cache.stats().used_bytes, 300);
        // Touch (1, 0) so (1, 4096) becomes the oldest.
        assert!(cache.get(1, 0).is_some());
        cache.insert(3, 0, value(150));
        assert!(cache.get(1, 4096).is_none(), "oldest evicted");
        assert!(
            cache.get(2, 0).is_none(),
            "second oldest evicted to fit 150 bytes"
        );
        assert!(cache.get(1, 0).is_some());
        assert!(cache.get(3, 0).is_some());
        let stats = cache.stats();
        assert_eq!(stats.evictions, 2);
        assert_eq!(stats.used_bytes, 250);
        assert_eq!(stats.entries, 2);
        assert_eq!((stats.hits, stats.misses), (3, 2));
    }

    #[test]
    fn oversized_values_are_not_cached() {
        let cache = BlockCache::<Vec<u8>>::new(100);
        cache.insert(1, 0, value(50));
        cache.insert(1, 1, value(101));
        assert!(cache.get(1, 1).is_none());
        assert!(cache.get(1, 0).is_some(), "small entry kept");
        assert_eq!(cache.stats().rejected, 1);
    }

    #[test]
    fn reinserting_a_key_replaces_it_and_remove_table_frees_bytes() {
        let cache = BlockCache::<Vec<u8>>::new(1000);
        cache.insert(1, 0, value(100));
        cache.insert(1, 0, value(200));
        assert_eq!(cache.stats().used_bytes, 200);
        assert_eq!(cache.get(1, 0).unwrap().len(), 200);
        cache.insert(1, 8192, value(10));
        cache.insert(2, 0, value(20));
        cache.remove_table(1);
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.used_bytes), (1, 20));
        assert!(cache.get(2, 0).is_some());
    }

    #[test]
    fn never_exceeds_capacity_under_random_use() {
        let cache = BlockCache::<Vec<u8>>::new(10_000);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (id, weight) = (x % 50, (x >> 8) % 3000 + 1);
            if x.is_multiple_of(3) {
                let _ = cache.get(id, 0);
            } else {
                cache.insert(id, 0, value(weight as usize));
            }
            let stats = cache.stats();
            assert!(stats.used_bytes <= stats.capacity_bytes);
        }
        let stats = cache.stats();
        // Accounting agrees with the entries actually held.
        let held: usize = (0..50)
            .filter_map(|id| cache.get(id, 0))
            .map(|v| v.len())
            .sum();
        assert_eq!(held, stats.used_bytes);
    }
}
