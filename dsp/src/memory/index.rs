//! The best-match index (spec §3b): the stored codes, so a recalled code c* can be named as
//! "closest to stored item k, sharing |c* ∩ c_k| of Q cells".
//!
//! Bounded at `capacity` codes (least recently learned evicted first). For each of the Q·K
//! cells a bitset of the slots whose code uses that cell (a posting list as bits): a query
//! counts votes over the Q posting sets of its cells, costing about Q·M/K increments plus
//! one pass over the M vote counters, and the count of a slot is exactly the overlap.

use serde::{Deserialize, Serialize};

use super::bitset::words_for;

/// The stored item most similar to a recalled code.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestMatch {
    /// Id of the stored item: the number of distinct codes stored before it, from 0.
    /// Re-learning the same code keeps the id.
    pub item: u64,
    /// |c* ∩ c_k|, modules where the codes agree.
    pub shared: usize,
    /// shared / Q in [0, 1]; ≈ 1/K by chance.
    pub overlap: f64,
}

const FREE: u64 = u64::MAX;

/// Vote counter planes: counts reach Q ≤ 256, 9 bits.
const VOTE_PLANES: usize = 9;

/// Posting words counted together in [`CodeIndex::nearest`].
const GROUP: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CodeIndex {
    capacity: usize,
    modules: usize,
    cells: usize,
    slot_words: usize,
    /// Slot s's code at `codes[s·Q..]`.
    codes: Vec<u16>,
    /// Item id per slot, FREE if empty.
    ids: Vec<u64>,
    /// Global learn count at the slot's last store.
    stamps: Vec<u64>,
    /// Cell c's slots: bits of `postings[c·slot_words..]`.
    postings: Vec<u64>,
    /// Answer of the latest query, for [`store`](Self::store) to reuse while `last_valid`
    /// (no slot was filled or emptied since).
    last: Option<(usize, usize)>,
    last_valid: bool,
    next_id: u64,
}

impl CodeIndex {
    /// Nothing is allocated until the first [`store`](Self::store): a memory that never
    /// learns (most channels of the gated detector) holds no index.
    pub(crate) fn new(capacity: usize, modules: usize, cells: usize) -> Self {
        let slot_words = words_for(capacity);
        Self {
            capacity,
            modules,
            cells,
            slot_words,
            codes: Vec::new(),
            ids: Vec::new(),
            stamps: Vec::new(),
            postings: Vec::new(),
            last: None,
            last_valid: false,
            next_id: 0,
        }
    }

    /// Allocates the slots (all free) unless they are: once, at the first store.
    fn allocate(&mut self) {
        if !self.ids.is_empty() {
            return;
        }
        let (q, k) = (self.modules, self.cells);
        self.codes = vec![0; self.capacity * q];
        self.ids = vec![FREE; self.capacity];
        self.stamps = vec![0; self.capacity];
        self.postings = vec![0; q * k * self.slot_words];
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.codes.len() * 2 + (self.ids.len() + self.stamps.len() + self.postings.len()) * 8
    }

    /// Heap bytes once allocated.
    pub(crate) fn full_heap_bytes(&self) -> usize {
        let postings = self.modules * self.cells * self.slot_words;
        self.capacity * self.modules * 2 + (2 * self.capacity + postings) * 8
    }

    /// Stored codes.
    pub(crate) fn len(&self) -> usize {
        self.ids.iter().filter(|&&id| id != FREE).count()
    }

    fn posting(&mut self, q: usize, k: u16) -> &mut [u64] {
        let cell = q * self.cells + k as usize;
        &mut self.postings[cell * self.slot_words..(cell + 1) * self.slot_words]
    }

    /// (slot, shared) of the stored code closest to `code`; ties go to the most recently
    /// learned. None if the index is empty or nothing shares a cell.
    ///
    /// The votes are counted bit-sliced: for a group of [`GROUP`] posting words (256 slots)
    /// at a time, the Q posting sets of the code's cells are added into ⌊log2 Q⌋ + 1 counter
    /// planes (plane b holds bit b of every slot's count) with a ripple carry; the slots with
    /// the most votes are then narrowed from the top plane down, and the most recently
    /// learned among them wins. That is the slot with the largest (votes, stamp), the same
    /// answer as counting slot by slot (stamps are distinct: each learn stamps one slot), at
    /// a cost of Q·M/64 words per plane instead of one branchy increment per vote.
    fn nearest(&mut self, code: &[u16]) -> Option<(usize, usize)> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 checked just above; the body is safe code.
                return unsafe { self.nearest_avx2(code) };
            }
        }
        self.nearest_body(code)
    }

    /// The counter planes' word groups become single 256-bit operations.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn nearest_avx2(&mut self, code: &[u16]) -> Option<(usize, usize)> {
        self.nearest_body(code)
    }

    #[inline(always)]
    fn nearest_body(&mut self, code: &[u16]) -> Option<(usize, usize)> {
        if self.ids.is_empty() {
            // Never stored anything (or capacity 0).
            self.last = None;
            self.last_valid = true;
            return None;
        }
        let planes = (usize::BITS - self.modules.leading_zeros()) as usize;
        let sw = self.slot_words;
        let mut best: Option<(usize, usize)> = None;
        for g0 in (0..sw).step_by(GROUP) {
            let len = (sw - g0).min(GROUP);
            let mut count = [[0u64; GROUP]; VOTE_PLANES];
            for (q, &k) in code.iter().enumerate() {
                let base = (q * self.cells + k as usize) * sw + g0;
                let mut carry = [0u64; GROUP];
                carry[..len].copy_from_slice(&self.postings[base..base + len]);
                for plane in count[..planes].iter_mut() {
                    for (p, c) in plane.iter_mut().zip(carry.iter_mut()) {
                        let next = *p & *c;
                        *p ^= *c;
                        *c = next;
                    }
                }
            }
            let mut cand = [0u64; GROUP];
            for plane in &count[..planes] {
                for (c, p) in cand.iter_mut().zip(plane) {
                    *c |= p;
                }
            }
            if cand == [0; GROUP] {
                continue;
            }
            let mut votes = 0usize;
            for b in (0..planes).rev() {
                let mut top = [0u64; GROUP];
                for ((t, c), p) in top.iter_mut().zip(&cand).zip(&count[b]) {
                    *t = c & p;
                }
                if top != [0; GROUP] {
                    cand = top;
                    votes |= 1 << b;
                }
            }
            for (w, &bits) in cand.iter().enumerate() {
                let mut bits = bits;
                while bits != 0 {
                    let slot = (g0 + w) * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    debug_assert!(best.is_none_or(|(b, _)| self.stamps[b] != self.stamps[slot]));
                    if best.is_none_or(|(b, bv)| {
                        votes > bv || (votes == bv && self.stamps[slot] > self.stamps[b])
                    }) {
                        best = Some((slot, votes));
                    }
                }
            }
        }
        self.last = best;
        self.last_valid = true;
        self.last
    }

    pub(crate) fn best_match(&mut self, code: &[u16]) -> Option<BestMatch> {
        self.nearest(code).map(|(slot, shared)| BestMatch {
            item: self.ids[slot],
            shared,
            overlap: shared as f64 / self.modules as f64,
        })
    }

    /// Records that `code` was learned at `stamp`; returns true if it is a new distinct code.
    /// `same_as_last_query`: `code` is the code of the latest [`best_match`](Self::best_match)
    /// and nothing was stored since, so its answer is reused (the common familiar case).
    pub(crate) fn store(&mut self, code: &[u16], stamp: u64, same_as_last_query: bool) -> bool {
        if self.capacity == 0 {
            return false;
        }
        self.allocate();
        let nearest = if same_as_last_query && self.last_valid {
            self.last
        } else {
            self.nearest(code)
        };
        if let Some((slot, shared)) = nearest {
            if shared == self.modules {
                self.stamps[slot] = stamp;
                return false;
            }
        }
        let slot = match self.ids.iter().position(|&id| id == FREE) {
            Some(free) => free,
            None => {
                let lru = (0..self.capacity)
                    .min_by_key(|&s| self.stamps[s])
                    .expect("capacity > 0");
                self.remove(lru);
                lru
            }
        };
        let q = self.modules;
        self.codes[slot * q..(slot + 1) * q].copy_from_slice(code);
        for (m, &k) in code.iter().enumerate() {
            self.posting(m, k)[slot / 64] |= 1 << (slot % 64);
        }
        self.ids[slot] = self.next_id;
        self.stamps[slot] = stamp;
        self.next_id += 1;
        self.last_valid = false;
        true
    }

    fn remove(&mut self, slot: usize) {
        let q = self.modules;
        for m in 0..q {
            let k = self.codes[slot * q + m];
            self.posting(m, k)[slot / 64] &= !(1 << (slot % 64));
        }
        self.ids[slot] = FREE;
        self.last_valid = false;
    }

    /// Drops the codes last learned before `stamp` (they are not in the scoring bank).
    pub(crate) fn evict_before(&mut self, stamp: u64) {
        for slot in 0..self.ids.len() {
            if self.ids[slot] != FREE && self.stamps[slot] < stamp {
                self.remove(slot);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.evict_before(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bit-sliced vote gives what counting every stored code does: the most shared
    /// cells, ties to the most recently learned; across group boundaries (capacity 300:
    /// five posting words) and with evictions.
    #[test]
    fn nearest_is_the_brute_force_best() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(11);
        let (q, k, capacity) = (32, 4, 300);
        let mut ix = CodeIndex::new(capacity, q, k);
        let random_code = |rng: &mut rand_xoshiro::Xoshiro256PlusPlus| -> Vec<u16> {
            (0..q).map(|_| rng.random_range(0..k) as u16).collect()
        };
        for stamp in 0..700u64 {
            let probe = random_code(&mut rng);
            let brute = (0..ix.ids.len())
                .filter(|&s| ix.ids[s] != FREE)
                .map(|s| {
                    let shared = ix.codes[s * q..(s + 1) * q]
                        .iter()
                        .zip(&probe)
                        .filter(|(a, b)| a == b)
                        .count();
                    (shared, ix.stamps[s], s)
                })
                .filter(|&(shared, _, _)| shared > 0)
                .max()
                .map(|(shared, _, s)| (s, shared));
            assert_eq!(ix.nearest(&probe), brute, "stamp {stamp}");
            ix.store(&random_code(&mut rng), stamp, false);
        }
    }

    #[test]
    fn stores_dedups_matches_and_evicts_lru() {
        let mut ix = CodeIndex::new(2, 4, 8);
        assert_eq!(ix.best_match(&[0, 0, 0, 0]), None);
        assert!(ix.store(&[1, 2, 3, 4], 0, false));
        assert!(ix.best_match(&[1, 2, 3, 4]).is_some());
        assert!(!ix.store(&[1, 2, 3, 4], 1, true), "same code is not new");
        assert!(ix.store(&[1, 2, 0, 0], 2, false));
        let m = ix.best_match(&[1, 2, 3, 5]).unwrap();
        assert_eq!((m.item, m.shared, m.overlap), (0, 3, 0.75));
        // Full: the least recently learned ({1,2,3,4} at stamp 1) goes.
        assert!(ix.store(&[7, 7, 7, 7], 3, false));
        assert_eq!(ix.len(), 2);
        let m = ix.best_match(&[1, 2, 3, 4]).unwrap();
        assert_eq!((m.item, m.shared), (1, 2));
        ix.evict_before(3);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.best_match(&[7, 0, 0, 0]).unwrap().item, 2);
    }
}
