//! A bounded table: entries in a dense vector, found through a hash index, with a capacity
//! past which the least recently seen of a few sampled entries is evicted (approximate
//! LRU, as Redis does it): bounded memory, constant work per insert, deterministic.

use hashbrown::HashTable;

/// What the table needs of an entry.
pub(crate) trait Seen {
    /// When the entry was last seen, ms since the Unix epoch.
    fn last_seen(&self) -> u64;
}

/// Entries sampled per eviction.
const SAMPLE: usize = 8;

#[derive(Debug)]
pub(crate) struct Table<V> {
    slots: Vec<V>,
    hashes: Vec<u64>,
    index: HashTable<u32>,
    cap: usize,
    cursor: usize,
}

// === impl Table ===

impl<V: Seen> Table<V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            slots: Vec::new(),
            hashes: Vec::new(),
            index: HashTable::new(),
            cap: cap.clamp(1, u32::MAX as usize),
            cursor: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn find(&self, hash: u64, eq: impl Fn(&V) -> bool) -> Option<usize> {
        let (slots, hashes) = (&self.slots, &self.hashes);
        self.index
            .find(hash, |&i| {
                let i = i as usize;
                hashes[i] == hash && eq(&slots[i])
            })
            .map(|&i| i as usize)
    }

    pub(crate) fn get(&self, i: usize) -> Option<&V> {
        self.slots.get(i)
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut V> {
        self.slots.get_mut(i)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &V> {
        self.slots.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots.iter_mut()
    }

    /// Inserts an entry not in the table; evicts one first when full. Returns its index.
    pub(crate) fn insert(&mut self, hash: u64, v: V) -> usize {
        let i = if self.slots.len() < self.cap {
            self.slots.push(v);
            self.hashes.push(hash);
            self.slots.len() - 1
        } else {
            let victim = self.victim();
            self.unindex(victim);
            self.slots[victim] = v;
            self.hashes[victim] = hash;
            victim
        };
        let hashes = &self.hashes;
        // The index holds u32 slot numbers; `cap` is clamped to fit.
        self.index
            .insert_unique(hash, i as u32, |&j| hashes[j as usize]);
        i
    }

    /// Removes entry `i`; the last entry moves into its place.
    pub(crate) fn remove(&mut self, i: usize) -> Option<V> {
        if i >= self.slots.len() {
            return None;
        }
        self.unindex(i);
        let last = self.slots.len() - 1;
        let v = self.slots.swap_remove(i);
        self.hashes.swap_remove(i);
        if i != last {
            let h = self.hashes[i];
            if let Some(slot) = self.index.find_mut(h, |&j| j as usize == last) {
                *slot = i as u32;
            }
        }
        Some(v)
    }

    fn unindex(&mut self, i: usize) {
        if let Ok(e) = self.index.find_entry(self.hashes[i], |&j| j as usize == i) {
            e.remove();
        }
    }

    fn victim(&mut self) -> usize {
        let n = self.slots.len();
        let mut best = self.cursor % n;
        for k in 0..SAMPLE.min(n) {
            let j = (self.cursor + k) % n;
            if self.slots[j].last_seen() < self.slots[best].last_seen() {
                best = j;
            }
        }
        self.cursor = (self.cursor + SAMPLE) % n;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct E(u64, u64);
    impl Seen for E {
        fn last_seen(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn stays_within_capacity_and_finds_what_it_keeps() {
        let mut t = Table::new(16);
        for k in 0..100u64 {
            let h = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            if t.find(h, |e: &E| e.0 == k).is_none() {
                t.insert(h, E(k, k));
            }
            assert!(t.len() <= 16);
            let i = t.find(h, |e: &E| e.0 == k).expect("just inserted");
            assert_eq!(t.get(i).map(|e| e.0), Some(k));
        }
        // Every kept entry is still found at its slot.
        for i in 0..t.len() {
            let k = t.get(i).expect("slot").0;
            let h = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(t.find(h, |e: &E| e.0 == k), Some(i));
        }
        // Removal keeps the index right for the moved entry.
        let k0 = t.get(0).expect("slot").0;
        t.remove(0);
        assert!(
            t.find(k0.wrapping_mul(0x9e37_79b9_7f4a_7c15), |e: &E| e.0 == k0)
                .is_none()
        );
        for i in 0..t.len() {
            let k = t.get(i).expect("slot").0;
            let h = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(t.find(h, |e: &E| e.0 == k), Some(i));
        }
    }

    #[test]
    fn evicts_old_entries_first() {
        let mut t = Table::new(16);
        for k in 0..16u64 {
            t.insert(k, E(k, if k == 3 { 0 } else { 1000 + k }));
        }
        t.insert(99, E(99, 5000));
        assert!(t.find(3, |e: &E| e.0 == 3).is_none());
        assert!(t.find(99, |e: &E| e.0 == 99).is_some());
    }
}
