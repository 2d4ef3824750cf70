//! Encoder B (spec §4B): random projection, top-s (FlyHash / WTA-hash style). y = R·ĉ with
//! a fixed seeded sparse ±1 matrix R (each of the `bits` rows has `row_weight` non-zeros),
//! then the s largest y_i are set. Exactly s projection bits are active whatever the code,
//! N does not depend on the dictionary size, and the overlap of two inputs tracks the angle
//! between their shapes. The bits are opaque; use encoder A when they must be explained.
//!
//! R is kept column by column (the code is sparse, so y is a sum of k columns), and
//! the top-s select runs on a preallocated index buffer. Ties in y go to the lower row,
//! which is as good as random because the rows of R are i.i.d.
//!
//! Layout: `[projection bits][energy block][level block]`.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::params::{check_range, ParamError};

use super::super::bitset::{set_bit, words_for};
use super::scalar::{ScalarBlock, ScalarBlockParams};
use super::CodeInput;

/// Parameters of [`ProjectionEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionParams {
    /// Projection bits (rows of R). Range 64..=65536, default 1024.
    pub bits: usize,
    /// Active projection bits s. The memory's π scale: larger s lowers the variance of the
    /// overlap but fills the memory faster (p1 ≈ 1 − exp(−M·s/(N·K))). Range 1..=bits/2,
    /// default 32.
    pub active: usize,
    /// Non-zeros per row of R, capped at the dictionary size. Range 1..=256, default 8.
    pub row_weight: usize,
    /// Seed of R. Any value; default 0x5EED_000B.
    pub seed: u64,
    /// Energy block, log scale over ‖y‖². Default [`ScalarBlockParams::energy`].
    pub energy: ScalarBlockParams,
    /// Level block, linear over the window level. Default [`ScalarBlockParams::level`].
    pub level: ScalarBlockParams,
}

impl Default for ProjectionParams {
    fn default() -> Self {
        Self {
            bits: 1024,
            active: 32,
            row_weight: 8,
            seed: 0x5EED_000B,
            energy: ScalarBlockParams::energy(),
            level: ScalarBlockParams::level(),
        }
    }
}

impl ProjectionParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("bits", "in 64..=65536", self.bits, 64, 65_536)?;
        check_range("active", "in 1..=bits/2", self.active, 1, self.bits / 2)?;
        check_range("row_weight", "in 1..=256", self.row_weight, 1, 256)?;
        self.energy
            .check(true)
            .map_err(|e| e.in_section("energy"))?;
        self.level.check(false).map_err(|e| e.in_section("level"))
    }
}

/// Encoder B. R and the scratch buffers are allocated at construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectionEncoder {
    params: ProjectionParams,
    dictionary_size: usize,
    /// Column j of R: entries `col_start[j]..col_start[j+1]` of `rows` / `negative`.
    col_start: Vec<u32>,
    rows: Vec<u32>,
    negative: Vec<bool>,
    energy: ScalarBlock,
    level: ScalarBlock,
    y: Vec<f64>,
    order: Vec<u32>,
}

impl ProjectionEncoder {
    /// An encoder for codes over `dictionary_size` atoms (n). Panics unless `params` pass
    /// [`ProjectionParams::check`] and n ≥ 1.
    pub fn new(params: ProjectionParams, dictionary_size: usize) -> Self {
        params.check().expect("ProjectionParams must be checked");
        assert!(dictionary_size >= 1, "dictionary_size must be at least 1");
        let n = dictionary_size;
        let d = params.row_weight.min(n);
        // Draw each row's d distinct columns (partial Fisher–Yates) and signs, then regroup
        // the entries by column.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
        let mut perm: Vec<usize> = (0..n).collect();
        let mut entries: Vec<(usize, u32, bool)> = Vec::with_capacity(params.bits * d);
        for row in 0..params.bits {
            for t in 0..d {
                let pick = rng.random_range(t..n);
                perm.swap(t, pick);
                entries.push((perm[t], row as u32, rng.random::<bool>()));
            }
        }
        entries.sort_unstable();
        let mut col_start = vec![0u32; n + 1];
        for &(col, _, _) in &entries {
            col_start[col + 1] += 1;
        }
        for j in 0..n {
            col_start[j + 1] += col_start[j];
        }
        let energy = ScalarBlock::new(params.energy.clone(), true, params.bits);
        let level = ScalarBlock::new(params.level.clone(), false, params.bits + energy.bits());
        Self {
            rows: entries.iter().map(|e| e.1).collect(),
            negative: entries.iter().map(|e| e.2).collect(),
            col_start,
            energy,
            level,
            y: vec![0.0; params.bits],
            order: vec![0; params.bits],
            dictionary_size: n,
            params,
        }
    }

    /// N: bits of the encoded input.
    pub fn input_bits(&self) -> usize {
        self.params.bits + self.energy.bits() + self.level.bits()
    }

    /// s: active bits of every encoded input (fixed).
    pub fn active_bits(&self) -> usize {
        self.params.active + self.energy.active() + self.level.active()
    }

    /// Active bits of the energy and level blocks alone (an input without atoms).
    pub fn scalar_active_bits(&self) -> usize {
        self.energy.active() + self.level.active()
    }

    /// Writes the binary input for `code` into `out` (cleared first) and returns the number
    /// of active bits, always [`active_bits`](Self::active_bits). Non-finite coefficients
    /// count as 0. Panics if `out` has fewer than ⌈N/64⌉ words or an atom index is ≥ n.
    pub fn encode(&mut self, code: &CodeInput<'_>, out: &mut [u64]) -> usize {
        let words = words_for(self.input_bits());
        assert!(out.len() >= words, "output needs {words} words");
        out.fill(0);
        self.y.fill(0.0);
        let norm = code.energy.sqrt();
        if norm.is_finite() && norm > 0.0 {
            for (&j, &c) in code.indices.iter().zip(code.values) {
                assert!(j < self.dictionary_size, "atom index {j} out of range");
                let shape = c / norm;
                if !shape.is_finite() {
                    continue;
                }
                let range = self.col_start[j] as usize..self.col_start[j + 1] as usize;
                for (&row, &neg) in self.rows[range.clone()].iter().zip(&self.negative[range]) {
                    self.y[row as usize] += if neg { -shape } else { shape };
                }
            }
        }
        for (i, o) in self.order.iter_mut().enumerate() {
            *o = i as u32;
        }
        let y = &self.y;
        let s = self.params.active;
        self.order.select_nth_unstable_by(s - 1, |&a, &b| {
            y[b as usize].total_cmp(&y[a as usize]).then(a.cmp(&b))
        });
        for &row in &self.order[..s] {
            set_bit(out, row as usize);
        }
        s + self.energy.encode(code.energy, out) + self.level.encode(code.level, out)
    }
}
