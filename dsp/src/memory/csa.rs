//! One bank of bottom-up weights U and the steps of the code selection algorithm (spec §2)
//! that work on it.
//!
//! U is stored cell-major: cell i's afferent weights are the `words` u64s at
//! `rows[i·words..]`, so the raw input sum u_i = |U_i ∩ x| is one AND + popcount per word and
//! learning is one OR per winner. Cells are numbered module-major, i = q·K + k.
//!
//! Because u_i is an integer in 0..=π, V and μ depend on u only: [`Csa`] fills lookup tables
//! of π + 1 entries per sample (one `powf`/`exp` each) instead of calling them per cell.

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use super::bitset::{column_counts, ones, words_for};
use super::params::MemoryParams;

/// The U matrix of one bank, with its fill counters.
///
/// Held twice: cell-major `rows` (the state that serialises, and what the recalled input x̂
/// reads: the Q winners' rows) and input-major `cols`, its transpose (column j: bit i set iff
/// cell i holds input bit j), which recognition reads: an input has only π ≈ s of its N bits
/// set, so summing those π columns touches π·Q·K bits instead of the Q·K·N of a pass over
/// the rows. `cols` is derived from `rows` (rebuilt when a state is deserialised), so the
/// serialised form is unchanged.
///
/// The weights are allocated at the bank's first write, not at construction: a bank that
/// never stores anything (the younger bank until the older passes half its life; every
/// channel of the gated detector that never sees a rare state) holds no weights, and an
/// empty bank answers every query as "nothing stored" (u = 0, x̂ empty). Once, never per
/// sample; a cleared bank keeps its allocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "BankState", into = "BankState")]
pub(crate) struct Bank {
    /// Q·K, the cells (rows) once allocated.
    cells: usize,
    /// Whether the bank has temporal weights W_H (allocated with the rest).
    temporal: bool,
    /// Empty until the first write.
    rows: Vec<u64>,
    words: usize,
    /// The transpose: input bit j's cells at `cols[j·cell_words..(j + 1)·cell_words]`, for
    /// all 64·`words` input positions.
    cols: Vec<u64>,
    cell_words: usize,
    /// Set weights, Σ popcount(rows); maintained on write.
    set_bits: u64,
    /// Windows learned since the bank was last cleared.
    pub(crate) learned: u64,
    /// Global learn count at this bank's first write since it was cleared (index entries
    /// stored before it are not in this bank).
    pub(crate) born: Option<u64>,
    /// The horizontal (temporal) weights W_H, source-cell-major: cell j's bits to every
    /// cell at `horizontal[j·cell_words..(j + 1)·cell_words]`. Empty when the memory has no
    /// temporal context.
    horizontal: Vec<u64>,
    /// Set weights of W_H.
    horizontal_set: u64,
}

/// The serialised form of a [`Bank`]: the fields it had before the transpose was added
/// (which is derived), plus `cells` and `temporal` for a bank that holds nothing: its
/// weights are written as empty `rows` (and no `horizontal`), so its size must be said.
/// Checkpoint format 2; format 1 always wrote the rows in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BankState {
    /// Empty when the bank was never written or holds nothing (then `cells` says its size).
    rows: Vec<u64>,
    words: usize,
    /// Absent in states saved before banks were allocated lazily (their `rows` were full).
    #[serde(default, skip_serializing_if = "is_zero")]
    cells: usize,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    temporal: bool,
    set_bits: u64,
    learned: u64,
    born: Option<u64>,
    /// Absent in states saved before the temporal context existed (no W_H then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    horizontal: Vec<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    horizontal_set: u64,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Two banks are equal when they hold the same weights and counts: an empty bank equals one
/// whose weights are allocated but all clear (what a cleared bank is, and how a restored
/// one that held nothing comes back).
impl PartialEq for Bank {
    fn eq(&self, o: &Self) -> bool {
        let empty = |b: &Bank| b.set_bits == 0 && b.horizontal_set == 0;
        self.cells == o.cells
            && self.words == o.words
            && self.temporal == o.temporal
            && self.set_bits == o.set_bits
            && self.horizontal_set == o.horizontal_set
            && self.learned == o.learned
            && self.born == o.born
            && ((empty(self) && empty(o))
                || (self.rows == o.rows && self.horizontal == o.horizontal))
    }
}

impl From<BankState> for Bank {
    fn from(s: BankState) -> Self {
        let cells = match s.rows.len().checked_div(s.words) {
            Some(n) if n > 0 => n,
            _ => s.cells,
        };
        let temporal = s.temporal || !s.horizontal.is_empty();
        let mut bank = Bank::new(cells, s.words, temporal);
        bank.horizontal_set = s.horizontal_set;
        bank.set_bits = s.set_bits;
        bank.learned = s.learned;
        bank.born = s.born;
        if s.set_bits == 0 && s.horizontal_set == 0 {
            // Nothing stored (older states wrote the empty weights out in full): stays
            // unallocated until the next write.
            return bank;
        }
        bank.allocate();
        if !s.horizontal.is_empty() {
            bank.horizontal = s.horizontal;
        }
        bank.rows = s.rows;
        let (words, cw) = (bank.words, bank.cell_words);
        for (cell, row) in bank.rows.chunks_exact(words.max(1)).enumerate() {
            for j in ones(row) {
                bank.cols[j * cw + cell / 64] |= 1 << (cell % 64);
            }
        }
        bank
    }
}

impl From<Bank> for BankState {
    fn from(b: Bank) -> Self {
        let empty = b.set_bits == 0 && b.horizontal_set == 0;
        Self {
            rows: if empty { Vec::new() } else { b.rows },
            words: b.words,
            cells: b.cells,
            temporal: b.temporal,
            set_bits: b.set_bits,
            learned: b.learned,
            born: b.born,
            horizontal: if empty { Vec::new() } else { b.horizontal },
            horizontal_set: b.horizontal_set,
        }
    }
}

impl Bank {
    /// A bank of `cells` cells for inputs of `words` words, with W_H if `temporal`.
    /// Nothing is allocated until [`allocate`](Self::allocate) (the first write).
    pub(crate) fn new(cells: usize, words: usize, temporal: bool) -> Self {
        Self {
            cells,
            temporal,
            horizontal: Vec::new(),
            horizontal_set: 0,
            rows: Vec::new(),
            words,
            cols: Vec::new(),
            cell_words: words_for(cells),
            set_bits: 0,
            learned: 0,
            born: None,
        }
    }

    /// Allocates the weights (all clear) unless they are: once per bank.
    pub(crate) fn allocate(&mut self) {
        if self.is_allocated() {
            return;
        }
        self.rows = vec![0; self.cells * self.words];
        self.cols = vec![0; self.words * 64 * self.cell_words];
        if self.temporal {
            self.horizontal = vec![0; self.cells * self.cell_words];
        }
    }

    pub(crate) fn is_allocated(&self) -> bool {
        !self.rows.is_empty()
    }

    #[cfg(test)]
    fn row(&self, cell: usize) -> &[u64] {
        &self.rows[cell * self.words..(cell + 1) * self.words]
    }

    /// u_i = |U_i ∩ x| for every cell, from `active`, the set bits of x. The hot loop of the
    /// memory. `scratch`: 8 words per 64 cells.
    pub(crate) fn overlaps(&self, active: &[u16], scratch: &mut [u64], u: &mut [u16]) {
        if !self.is_allocated() {
            u.fill(0);
            return;
        }
        column_counts(&self.cols, self.cell_words, active, scratch, u);
    }

    /// U_i |= x for the winner of each module; returns the weights newly set. `active`: the
    /// set bits of x; `winners`: scratch of `cell_words` words.
    pub(crate) fn write(
        &mut self,
        x: &[u64],
        active: &[u16],
        code: &[u16],
        cells: usize,
        winners: &mut [u64],
    ) -> u64 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("popcnt")
            {
                // SAFETY: the features were checked just above; the body is safe code.
                return unsafe { self.write_avx2(x, active, code, cells, winners) };
            }
        }
        self.write_body(x, active, code, cells, winners)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn write_avx2(
        &mut self,
        x: &[u64],
        active: &[u16],
        code: &[u16],
        cells: usize,
        winners: &mut [u64],
    ) -> u64 {
        self.write_body(x, active, code, cells, winners)
    }

    /// The rows take x with one OR per word; the new weights are counted on the columns,
    /// π·Q·K/64 words rather than Q·N/64 (each new weight is one (winner, input bit) pair
    /// either way).
    #[inline(always)]
    fn write_body(
        &mut self,
        x: &[u64],
        active: &[u16],
        code: &[u16],
        cells: usize,
        winners: &mut [u64],
    ) -> u64 {
        self.allocate();
        let words = self.words;
        winners.fill(0);
        for (q, &k) in code.iter().enumerate() {
            let cell = q * cells + k as usize;
            winners[cell / 64] |= 1 << (cell % 64);
            let row = &mut self.rows[cell * words..(cell + 1) * words];
            for (w, &xw) in row.iter_mut().zip(&x[..words]) {
                *w |= xw;
            }
        }
        let cw = self.cell_words;
        let mut new = 0u64;
        for &j in active {
            let col = &mut self.cols[j as usize * cw..(j as usize + 1) * cw];
            for (c, &w) in col.iter_mut().zip(winners.iter()) {
                new += (w & !*c).count_ones() as u64;
                *c |= w;
            }
        }
        self.set_bits += new;
        self.learned += 1;
        new
    }

    /// `h_i = #{ j ∈ sources : W_H[j][i] = 1 }` for every cell (spec §2, the temporal sum);
    /// `sources` lists the previous code's cells (q·K + winner). W_H is laid out like the
    /// transpose of U (source j's targets as one bit column), so this is the same column-sum
    /// kernel as the bottom-up pass. `scratch`: 8 words per 64 cells.
    pub(crate) fn temporal_sums(&self, sources: &[u16], scratch: &mut [u64], h: &mut [u16]) {
        if !self.is_allocated() {
            h.fill(0);
            return;
        }
        column_counts(&self.horizontal, self.cell_words, sources, scratch, h);
    }

    /// `W_H[j][winner] = 1` for every source j in `prev` and every winner in `winners` (the
    /// bitset [`write`](Self::write) leaves); returns the weights newly set.
    pub(crate) fn write_temporal(&mut self, prev: &[u16], cells: usize, winners: &[u64]) -> u64 {
        self.allocate();
        let cw = self.cell_words;
        let mut new = 0u64;
        for (q, &k) in prev.iter().enumerate() {
            let j = q * cells + k as usize;
            for (w, &win) in self.horizontal[j * cw..(j + 1) * cw]
                .iter_mut()
                .zip(winners)
            {
                new += (win & !*w).count_ones() as u64;
                *w |= win;
            }
        }
        self.horizontal_set += new;
        new
    }

    /// x̂ into `out` (`words` words): bit j set iff at least `need` (1..=Q) of the rows of
    /// the winners `code` (one per module of `cells` cells) have bit j.
    pub(crate) fn at_least(&self, code: &[u16], cells: usize, need: usize, out: &mut [u64]) {
        if !self.is_allocated() {
            out.fill(0);
            return;
        }
        // Counts reach Q, so ⌊log2 Q⌋ + 1 planes; Q ≤ 256 (checked parameters) needs ≤ 9.
        let planes = (usize::BITS - code.len().leading_zeros()) as usize;
        let f = match planes {
            0 | 1 => at_least_planes::<1>,
            2 => at_least_planes::<2>,
            3 => at_least_planes::<3>,
            4 => at_least_planes::<4>,
            5 => at_least_planes::<5>,
            6 => at_least_planes::<6>,
            7 => at_least_planes::<7>,
            8 => at_least_planes::<8>,
            9 => at_least_planes::<9>,
            _ => panic!("at most 511 modules"),
        };
        f(&self.rows, self.words, code, cells, need, out);
    }

    pub(crate) fn clear(&mut self) {
        self.rows.fill(0);
        self.cols.fill(0);
        self.horizontal.fill(0);
        self.horizontal_set = 0;
        self.set_bits = 0;
        self.learned = 0;
        self.born = None;
    }

    /// p1, the share of set weights among the `weights` = Q·K·N of U, or that of W_H among
    /// its (Q·K)² if larger (W_H fills about N/(K·s) times faster per distinct state).
    pub(crate) fn fill(&self, weights: f64) -> f64 {
        let u = self.set_bits as f64 / weights;
        match self.temporal_fill() {
            Some(h) if h > u => h,
            _ => u,
        }
    }

    /// The share of set weights of W_H, None without temporal context.
    pub(crate) fn temporal_fill(&self) -> Option<f64> {
        if !self.temporal {
            return None;
        }
        let cells = self.cells as f64;
        Some(self.horizontal_set as f64 / (cells * cells))
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.rows.len() + self.cols.len() + self.horizontal.len()) * 8
    }

    /// Heap bytes once allocated.
    pub(crate) fn full_heap_bytes(&self) -> usize {
        let horizontal = if self.temporal { self.cells } else { 0 };
        (self.cells * self.words + (self.words * 64 + horizontal) * self.cell_words) * 8
    }

    /// The transpose matches the rows (tests).
    #[cfg(test)]
    fn transpose_is_consistent(&self) -> bool {
        if !self.is_allocated() {
            return self.cols.is_empty() && self.set_bits == 0;
        }
        (0..self.cells).all(|cell| {
            (0..self.words * 64).all(|j| {
                let in_row = self.row(cell)[j / 64] >> (j % 64) & 1 == 1;
                let in_col = self.cols[j * self.cell_words + cell / 64] >> (cell % 64) & 1 == 1;
                in_row == in_col
            })
        })
    }
}

/// Words of x̂ counted together (one 256-bit register per counter plane).
const LANES: usize = 4;

/// [`Bank::at_least`] with P counter planes: an AVX2 kernel when the CPU has it (checked at
/// run time, cached by std), the portable loop otherwise; exact either way.
fn at_least_planes<const P: usize>(
    rows: &[u64],
    words: usize,
    code: &[u16],
    cells: usize,
    need: usize,
    out: &mut [u64],
) {
    assert!(rows.len() >= code.len() * cells * words && out.len() >= words);
    assert!(code.iter().all(|&c| (c as usize) < cells), "winner past K");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 checked just above; the row and output bounds just above.
            done = unsafe { at_least_avx2::<P>(rows, words, code, cells, need, out) };
        }
    }
    at_least_body::<P>(rows, words, done, code, cells, need, out);
}

/// Bit-sliced counters in 256-bit registers, four words of x̂ at a time; returns the words
/// done (the whole groups of four).
///
/// # Safety
/// AVX2; `rows` holds Q·K rows of `words` words, every winner < K, `out` ≥ `words` words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn at_least_avx2<const P: usize>(
    rows: &[u64],
    words: usize,
    code: &[u16],
    cells: usize,
    need: usize,
    out: &mut [u64],
) -> usize {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_andnot_si256, _mm256_loadu_si256, _mm256_or_si256,
        _mm256_set1_epi64x, _mm256_setzero_si256, _mm256_storeu_si256, _mm256_xor_si256,
    };
    let groups = words / LANES;
    for g in 0..groups {
        let w0 = g * LANES;
        let mut planes = [_mm256_setzero_si256(); P];
        for (m, &c) in code.iter().enumerate() {
            let start = (m * cells + c as usize) * words + w0;
            // SAFETY: start + 4 ≤ (m·K + c + 1)·words ≤ rows.len() (w0 + 4 ≤ words).
            let mut carry = _mm256_loadu_si256(rows.as_ptr().add(start) as *const __m256i);
            for plane in planes.iter_mut() {
                let next = _mm256_and_si256(*plane, carry);
                *plane = _mm256_xor_si256(*plane, carry);
                carry = next;
            }
        }
        let mut gt = _mm256_setzero_si256();
        let mut eq = _mm256_set1_epi64x(-1);
        for b in (0..P).rev() {
            if need >> b & 1 == 1 {
                eq = _mm256_and_si256(eq, planes[b]);
            } else {
                gt = _mm256_or_si256(gt, _mm256_and_si256(eq, planes[b]));
                eq = _mm256_andnot_si256(planes[b], eq);
            }
        }
        // SAFETY: w0 + 4 ≤ words ≤ out.len().
        _mm256_storeu_si256(
            out.as_mut_ptr().add(w0) as *mut __m256i,
            _mm256_or_si256(gt, eq),
        );
    }
    groups * LANES
}

/// The portable kernel, from word `from` on: per group of [`LANES`] words, the winners' rows
/// are added into P bit-sliced counters (plane b holds bit b of every position's count) with
/// a ripple carry, then count ≥ need is decided plane by plane from the top bit.
fn at_least_body<const P: usize>(
    rows: &[u64],
    words: usize,
    from: usize,
    code: &[u16],
    cells: usize,
    need: usize,
    out: &mut [u64],
) {
    for w0 in (from..words).step_by(LANES) {
        let len = (words - w0).min(LANES);
        let mut planes = [[0u64; LANES]; P];
        for (m, &c) in code.iter().enumerate() {
            let start = (m * cells + c as usize) * words + w0;
            let mut carry = [0u64; LANES];
            carry[..len].copy_from_slice(&rows[start..start + len]);
            for plane in planes.iter_mut() {
                for (p, c) in plane.iter_mut().zip(carry.iter_mut()) {
                    let next = *p & *c;
                    *p ^= *c;
                    *c = next;
                }
            }
        }
        for (l, o) in out[w0..w0 + len].iter_mut().enumerate() {
            let (mut gt, mut eq) = (0u64, u64::MAX);
            for b in (0..P).rev() {
                let plane = planes[b][l];
                if need >> b & 1 == 1 {
                    eq &= plane;
                } else {
                    gt |= eq & plane;
                    eq &= !plane;
                }
            }
            *o = gt | eq;
        }
    }
}

/// The maximum of 16 cells and the mask of the cells equal to it, two bits per cell (bits
/// 2i and 2i + 1 for cell i). Panics unless `cm` has 16 entries.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn max_of_16(cm: &[u16]) -> (u16, u32) {
    use std::arch::x86_64::{
        __m256i, _mm256_castsi256_si128, _mm256_cmpeq_epi16, _mm256_loadu_si256, _mm256_max_epu16,
        _mm256_movemask_epi8, _mm256_permute2x128_si256, _mm256_set1_epi16, _mm256_shuffle_epi32,
        _mm256_srli_epi32, _mm_cvtsi128_si32,
    };
    assert_eq!(cm.len(), 16);
    // SAFETY: 16 u16 are 32 bytes, checked just above.
    let v = _mm256_loadu_si256(cm.as_ptr() as *const __m256i);
    // Fold halves until every dword's low half holds the maximum of all 16.
    let m = _mm256_max_epu16(v, _mm256_permute2x128_si256(v, v, 1));
    let m = _mm256_max_epu16(m, _mm256_shuffle_epi32(m, 0b01_00_11_10));
    let m = _mm256_max_epu16(m, _mm256_shuffle_epi32(m, 0b10_11_00_01));
    let m = _mm256_max_epu16(m, _mm256_srli_epi32(m, 16));
    let best = _mm_cvtsi128_si32(_mm256_castsi256_si128(m)) as u16;
    let eq = _mm256_cmpeq_epi16(v, _mm256_set1_epi16(best as i16));
    (best, _mm256_movemask_epi8(eq) as u32)
}

/// The CSA's constants and per-sample tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Csa {
    modules: usize,
    cells: usize,
    floor: f64,
    gamma: f64,
    chi: f64,
    sigma: [f64; 4],
    lambda: f64,
    /// V(u) = (u/π)^λ for u in 0..=π of the current sample.
    v: Vec<f64>,
    /// μ(u) for the current sample (learn mode only).
    mu: Vec<f64>,
}

impl Csa {
    pub(crate) fn new(p: &MemoryParams, max_active: usize) -> Self {
        Self {
            modules: p.modules,
            cells: p.cells,
            floor: p.familiarity_floor,
            gamma: p.expansion_exponent,
            chi: p.expansion_factor,
            sigma: [
                p.sigmoid_scale,
                p.sigmoid_slope,
                p.sigmoid_center,
                p.sigmoid_power,
            ],
            lambda: p.evidence_exponent,
            v: vec![0.0; max_active + 1],
            mu: vec![0.0; max_active + 1],
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.v.len() + self.mu.len()) * 8
    }

    /// Fills the V table for an input of π active bits.
    pub(crate) fn set_active(&mut self, active: usize) {
        let pi = active as f64;
        for (u, v) in self.v[..=active].iter_mut().enumerate() {
            let ratio = (u as f64 / pi).min(1.0);
            *v = if self.lambda == 1.0 {
                ratio
            } else {
                ratio.powf(self.lambda)
            };
        }
    }

    /// G = mean over modules of max V (steps 2–4). Needs [`set_active`](Self::set_active).
    pub(crate) fn familiarity(&self, u: &[u16]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 checked just above; the body is safe code.
                return unsafe { self.familiarity_avx2(u) };
            }
        }
        self.familiarity_body(u)
    }

    /// The per-module maxima vectorise with AVX2 (unsigned 16-bit max is not in SSE2); at
    /// K = 16 (the default) a module is one register.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn familiarity_avx2(&self, u: &[u16]) -> f64 {
        if self.cells != 16 {
            return self.familiarity_body(u);
        }
        let mut sum = 0.0;
        for cm in u.chunks_exact(16) {
            sum += self.v[max_of_16(cm).0 as usize];
        }
        sum / self.modules as f64
    }

    #[inline(always)]
    fn familiarity_body(&self, u: &[u16]) -> f64 {
        let sum: f64 = u
            .chunks_exact(self.cells)
            .map(|cm| self.v[*cm.iter().max().expect("K ≥ 2") as usize])
            .sum();
        sum / self.modules as f64
    }

    /// V(u) of the current sample (needs [`set_active`](Self::set_active)).
    pub(crate) fn evidence(&self, u: u16) -> f64 {
        self.v[u as usize]
    }

    /// G from per-cell evidence `v` (the temporal path, where V depends on u and h).
    pub(crate) fn familiarity_of(&self, v: &[f64]) -> f64 {
        let sum: f64 = v
            .chunks_exact(self.cells)
            .map(|cm| cm.iter().copied().fold(0.0, f64::max))
            .sum();
        sum / self.modules as f64
    }

    /// η = 1 + χ·K·max(0, (G − G⁻)/(1 − G⁻))^γ (step 5).
    pub(crate) fn expansivity(&self, g: f64) -> f64 {
        let excess = ((g - self.floor) / (1.0 - self.floor)).max(0.0);
        if excess == 0.0 {
            1.0
        } else {
            1.0 + self.chi * self.cells as f64 * excess.powf(self.gamma)
        }
    }

    /// Recognize mode (step 8): per module the max-u cell, ties uniformly at random (one draw
    /// only when there is a tie).
    pub(crate) fn argmax(&self, u: &[u16], rng: &mut Xoshiro256PlusPlus, code: &mut [u16]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("popcnt")
            {
                // SAFETY: AVX2 checked just above; the body is safe code.
                unsafe { self.argmax_avx2(u, rng, code) };
                return;
            }
        }
        self.argmax_body(u, rng, code);
    }

    /// At K = 16 a module's maximum and the mask of the cells that reach it come from one
    /// register; the draw among ties is the portable one (same RNG calls, same pick).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn argmax_avx2(&self, u: &[u16], rng: &mut Xoshiro256PlusPlus, code: &mut [u16]) {
        if self.cells != 16 {
            return self.argmax_body(u, rng, code);
        }
        for (cm, winner) in u.chunks_exact(16).zip(code.iter_mut()) {
            // Two mask bits per cell.
            let (_, mut mask) = max_of_16(cm);
            let ties = (mask.count_ones() / 2) as usize;
            let pick = if ties == 1 {
                0
            } else {
                rng.random_range(0..ties)
            };
            for _ in 0..pick {
                mask &= mask - 1;
                mask &= mask - 1;
            }
            *winner = (mask.trailing_zeros() / 2) as u16;
        }
    }

    #[inline(always)]
    fn argmax_body(&self, u: &[u16], rng: &mut Xoshiro256PlusPlus, code: &mut [u16]) {
        for (cm, winner) in u.chunks_exact(self.cells).zip(code.iter_mut()) {
            let best = *cm.iter().max().expect("K ≥ 2");
            let ties = cm.iter().filter(|&&v| v == best).count();
            let pick = if ties == 1 {
                0
            } else {
                rng.random_range(0..ties)
            };
            let k = cm
                .iter()
                .enumerate()
                .filter(|&(_, &v)| v == best)
                .nth(pick)
                .expect("pick < ties")
                .0;
            *winner = k as u16;
        }
    }

    /// Learn mode (steps 5–8): per module a winner drawn with probability μ_i / Σ μ. With
    /// G ≤ G⁻ every μ is 1 and the draw is uniform.
    pub(crate) fn sample(
        &mut self,
        u: &[u16],
        active: usize,
        g: f64,
        rng: &mut Xoshiro256PlusPlus,
        code: &mut [u16],
    ) {
        let eta = self.expansivity(g);
        if eta == 1.0 {
            for winner in code.iter_mut() {
                *winner = rng.random_range(0..self.cells) as u16;
            }
            return;
        }
        let [s1, s2, s3, s4] = self.sigma;
        for (mu, &v) in self.mu[..=active].iter_mut().zip(&self.v) {
            *mu = 1.0 + (eta - 1.0) / (1.0 + s1 * (-s2 * (v - s3)).exp()).powf(s4);
        }
        for (cm, winner) in u.chunks_exact(self.cells).zip(code.iter_mut()) {
            let total: f64 = cm.iter().map(|&ui| self.mu[ui as usize]).sum();
            let mut r = rng.random::<f64>() * total;
            let mut k = self.cells - 1;
            for (i, &ui) in cm.iter().enumerate() {
                r -= self.mu[ui as usize];
                if r < 0.0 {
                    k = i;
                    break;
                }
            }
            *winner = k as u16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::bitset::{and_counts, ones};
    use rand::SeedableRng;

    /// The K = 16 register kernel finds the maximum and exactly the cells tied at it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn max_of_16_matches_scalar() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        for case in 0..2000 {
            // Small ranges give many ties; the last cases reach the top of u16.
            let top = if case < 1900 { 4 } else { u16::MAX };
            let cm: Vec<u16> = (0..16).map(|_| rng.random_range(0..=top)).collect();
            // SAFETY: AVX2 checked above.
            let (best, mask) = unsafe { max_of_16(&cm) };
            assert_eq!(best, *cm.iter().max().unwrap());
            for (i, &v) in cm.iter().enumerate() {
                assert_eq!(mask >> (2 * i) & 3, if v == best { 3 } else { 0 });
            }
        }
    }

    /// The portable kernels (what non-x86 targets run) agree with the dispatched ones: x̂ for
    /// every plane count's shape, argmax (same RNG draws) and the familiarity at K = 16.
    #[test]
    fn portable_kernels_match_the_dispatched_ones() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
        for (modules, cells, words) in [(32, 16, 16), (7, 5, 5), (256, 2, 9), (1, 3, 4)] {
            let rows: Vec<u64> = (0..modules * cells * words)
                .map(|_| rng.random::<u64>() & rng.random::<u64>())
                .collect();
            let code: Vec<u16> = (0..modules)
                .map(|_| rng.random_range(0..cells) as u16)
                .collect();
            let mut bank = Bank::new(modules * cells, words, false);
            bank.allocate();
            bank.rows.clone_from(&rows);
            for need in [1, modules.div_ceil(2), modules] {
                let mut fast = vec![0u64; words];
                bank.at_least(&code, cells, need, &mut fast);
                let mut portable = vec![0u64; words];
                let planes = (usize::BITS - modules.leading_zeros()) as usize;
                match planes {
                    1 => at_least_body::<1>(&rows, words, 0, &code, cells, need, &mut portable),
                    2 => at_least_body::<2>(&rows, words, 0, &code, cells, need, &mut portable),
                    3 => at_least_body::<3>(&rows, words, 0, &code, cells, need, &mut portable),
                    6 => at_least_body::<6>(&rows, words, 0, &code, cells, need, &mut portable),
                    9 => at_least_body::<9>(&rows, words, 0, &code, cells, need, &mut portable),
                    _ => unreachable!(),
                }
                for j in 0..words * 64 {
                    let votes = code
                        .iter()
                        .enumerate()
                        .filter(|&(m, &c)| {
                            rows[(m * cells + c as usize) * words + j / 64] >> (j % 64) & 1 == 1
                        })
                        .count();
                    assert_eq!(portable[j / 64] >> (j % 64) & 1 == 1, votes >= need);
                }
                assert_eq!(fast, portable, "Q {modules} K {cells} need {need}");
            }
        }
        let p = MemoryParams::default();
        let mut csa = Csa::new(&p, 40);
        csa.set_active(40);
        for case in 0..200u64 {
            let top = if case % 2 == 0 { 3 } else { 40 };
            let u: Vec<u16> = (0..512).map(|_| rng.random_range(0..=top)).collect();
            let (mut r1, mut r2) = (
                Xoshiro256PlusPlus::seed_from_u64(case),
                Xoshiro256PlusPlus::seed_from_u64(case),
            );
            let (mut c1, mut c2) = (vec![0u16; 32], vec![0u16; 32]);
            csa.argmax(&u, &mut r1, &mut c1);
            csa.argmax_body(&u, &mut r2, &mut c2);
            assert_eq!(c1, c2);
            assert_eq!(r1, r2, "same draws");
            assert_eq!(
                csa.familiarity(&u).to_bits(),
                csa.familiarity_body(&u).to_bits()
            );
        }
    }

    /// The transpose stays the transpose through writes, clears and a serde round trip (which
    /// rebuilds it), and column sums over x's bits equal the row-wise AND + popcount.
    #[test]
    fn columns_track_rows_and_give_the_row_overlaps() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        // 300 input bits (5 words, 20 unused bits), Q = 7 × K = 11 = 77 cells (2 cell words).
        let (words, modules, cells) = (5, 7, 11);
        let mut bank = Bank::new(modules * cells, words, false);
        let mut winners = vec![0u64; words_for(modules * cells)];
        let mut scratch = vec![0u64; bank.cell_words * 8];
        let random_x = |rng: &mut Xoshiro256PlusPlus, bits: usize| {
            let mut x = vec![0u64; words];
            for _ in 0..bits {
                let j = rng.random_range(0..300);
                x[j / 64] |= 1 << (j % 64);
            }
            x
        };
        for step in 0..60 {
            let x = random_x(&mut rng, 40);
            let active: Vec<u16> = ones(&x).map(|j| j as u16).collect();
            let code: Vec<u16> = (0..modules)
                .map(|_| rng.random_range(0..cells) as u16)
                .collect();
            let before = bank.set_bits;
            let new = bank.write(&x, &active, &code, cells, &mut winners);
            assert_eq!(bank.set_bits, before + new);
            // Every tenth probe has all 300 bits: more than 255 active, the counters' limit.
            let probe = if step % 10 == 0 {
                let mut all = vec![u64::MAX; words];
                all[4] = (1 << 44) - 1;
                all
            } else {
                random_x(&mut rng, 300)
            };
            let probe_active: Vec<u16> = ones(&probe).map(|j| j as u16).collect();
            let (mut by_rows, mut by_cols) = (vec![0u16; modules * cells], vec![0u16; 77]);
            and_counts(&bank.rows, &probe, &mut by_rows);
            bank.overlaps(&probe_active, &mut scratch, &mut by_cols);
            assert_eq!(by_rows, by_cols, "step {step}");
            let mut portable = vec![0u16; 77];
            crate::memory::bitset::column_counts_portable(
                &bank.cols,
                bank.cell_words,
                &probe_active,
                &mut scratch,
                &mut portable,
            );
            assert_eq!(by_rows, portable, "step {step}");
            if step == 30 {
                assert!(bank.transpose_is_consistent());
                let json = serde_json::to_string(&bank).unwrap();
                assert!(!json.contains("cols"), "the transpose is not serialised");
                let back: Bank = serde_json::from_str(&json).unwrap();
                assert_eq!(back, bank);
            }
        }
        assert!(bank.transpose_is_consistent());
        bank.clear();
        assert!(bank.cols.iter().all(|&w| w == 0));
    }
}
