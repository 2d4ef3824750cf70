//! Encoder A (spec §4A): atom slots. Each dictionary atom owns a slot of `2·(B + w − 1)`
//! bits, one half per sign; within a half, the log-magnitude bucket b ∈ 0..B sets the `w`
//! bits b..b+w, so neighbouring buckets share w − 1 bits and similarity degrades smoothly
//! with the coefficient's size. Bits are interpretable: which atom, which sign, how big.
//!
//! The count of active bits is fixed: when fewer than k' atoms pass the magnitude floor, each
//! missing rank r sets its own w bits in an "absent" block (k'·w bits after the slots). A
//! fixed π keeps the memory's V = u/π on one scale, and "fewer atoms than usual" is itself
//! a feature the memory can notice.
//!
//! Layout: `[n atom slots][absent block][energy block][level block]`.

use serde::{Deserialize, Serialize};

use crate::params::{check_range, ParamError};

use super::super::bitset::{set_run, words_for};
use super::scalar::{ScalarBlock, ScalarBlockParams};
use super::CodeInput;

/// Parameters of [`AtomSlotEncoder`]. Defaults are the spec's example (n = 64 gives 1024
/// slot bits, s = 24 + 8 + 8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AtomSlotParams {
    /// Atoms kept (k'), largest |ĉ_j| first. Range 1..=64, default 8.
    pub atoms: usize,
    /// Log-magnitude buckets per sign (B). Range 1..=64, default 6.
    pub buckets: usize,
    /// Bits set per atom (w); neighbouring buckets share w − 1. Range 1..=16, default 3.
    pub window: usize,
    /// Floor τ on the shape magnitude |ĉ_j| = |c_j|/‖y‖: atoms below it are dropped (they are
    /// noise-level), and it is the bottom of the log scale (bucket 0 covers τ up to
    /// τ^(1−1/B)). Range 1e-6..=0.5, default 0.05.
    pub min_magnitude: f64,
    /// Energy block, log scale over ‖y‖². Default [`ScalarBlockParams::energy`].
    pub energy: ScalarBlockParams,
    /// Level block, linear over the window level. Default [`ScalarBlockParams::level`].
    pub level: ScalarBlockParams,
}

impl Default for AtomSlotParams {
    fn default() -> Self {
        Self {
            atoms: 8,
            buckets: 6,
            window: 3,
            min_magnitude: 0.05,
            energy: ScalarBlockParams::energy(),
            level: ScalarBlockParams::level(),
        }
    }
}

impl AtomSlotParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("atoms", "in 1..=64", self.atoms, 1, 64)?;
        check_range("buckets", "in 1..=64", self.buckets, 1, 64)?;
        check_range("window", "in 1..=16", self.window, 1, 16)?;
        check_range(
            "min_magnitude",
            "in 1e-6..=0.5",
            self.min_magnitude,
            1e-6,
            0.5,
        )?;
        self.energy
            .check(true)
            .map_err(|e| e.in_section("energy"))?;
        self.level.check(false).map_err(|e| e.in_section("level"))
    }
}

/// Encoder A. Holds its selection scratch, so encoding does not allocate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtomSlotEncoder {
    params: AtomSlotParams,
    dictionary_size: usize,
    energy: ScalarBlock,
    level: ScalarBlock,
    /// Kept atoms (index, ĉ), largest |ĉ| first; capacity `atoms`.
    kept: Vec<(usize, f64)>,
}

impl AtomSlotEncoder {
    /// An encoder for codes over `dictionary_size` atoms (n). Panics unless `params` pass
    /// [`AtomSlotParams::check`] and n ≥ 1.
    pub fn new(params: AtomSlotParams, dictionary_size: usize) -> Self {
        params.check().expect("AtomSlotParams must be checked");
        assert!(dictionary_size >= 1, "dictionary_size must be at least 1");
        let slots_end = dictionary_size * Self::slot_bits(&params) + params.atoms * params.window;
        let energy = ScalarBlock::new(params.energy.clone(), true, slots_end);
        let level = ScalarBlock::new(params.level.clone(), false, slots_end + energy.bits());
        Self {
            kept: Vec::with_capacity(params.atoms),
            params,
            dictionary_size,
            energy,
            level,
        }
    }

    fn slot_bits(p: &AtomSlotParams) -> usize {
        2 * (p.buckets + p.window - 1)
    }

    /// N: bits of the encoded input.
    pub fn input_bits(&self) -> usize {
        self.dictionary_size * Self::slot_bits(&self.params)
            + self.params.atoms * self.params.window
            + self.energy.bits()
            + self.level.bits()
    }

    /// s: active bits of every encoded input (fixed).
    pub fn active_bits(&self) -> usize {
        self.params.atoms * self.params.window + self.energy.active() + self.level.active()
    }

    /// Active bits of the energy and level blocks alone (an input without atoms).
    pub fn scalar_active_bits(&self) -> usize {
        self.energy.active() + self.level.active()
    }

    /// Bucket of a shape magnitude m ∈ [τ, 1] on the log scale.
    fn bucket(&self, magnitude: f64) -> usize {
        let tau = self.params.min_magnitude;
        let t = (magnitude / tau).ln() / (1.0 / tau).ln();
        ((t * self.params.buckets as f64) as usize).min(self.params.buckets - 1)
    }

    /// Keeps the top-k' atoms with |ĉ_j| ≥ τ, largest first, ties to the lower index.
    fn select(&mut self, code: &CodeInput<'_>) {
        self.kept.clear();
        let norm = code.energy.sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            return;
        }
        let cap = self.params.atoms;
        for (&j, &c) in code.indices.iter().zip(code.values) {
            assert!(j < self.dictionary_size, "atom index {j} out of range");
            let shape = (c / norm).clamp(-1.0, 1.0);
            if shape.is_nan() || shape.abs() < self.params.min_magnitude {
                continue;
            }
            let before =
                |&(i, v): &(usize, f64)| v.abs() > shape.abs() || (v.abs() == shape.abs() && i < j);
            let pos = self.kept.iter().take_while(|e| before(e)).count();
            if pos < cap {
                if self.kept.len() == cap {
                    self.kept.pop();
                }
                self.kept.insert(pos, (j, shape));
            }
        }
    }

    /// Writes the binary input for `code` into `out` (cleared first) and returns the number
    /// of active bits, always [`active_bits`](Self::active_bits). Panics if `out` has fewer
    /// than ⌈N/64⌉ words or an atom index is ≥ n.
    pub fn encode(&mut self, code: &CodeInput<'_>, out: &mut [u64]) -> usize {
        let words = words_for(self.input_bits());
        assert!(out.len() >= words, "output needs {words} words");
        out.fill(0);
        self.select(code);
        let p = &self.params;
        let (slot, half) = (Self::slot_bits(p), p.buckets + p.window - 1);
        for &(j, shape) in &self.kept {
            let sign = if shape < 0.0 { half } else { 0 };
            set_run(out, j * slot + sign + self.bucket(shape.abs()), p.window);
        }
        let absent = self.dictionary_size * slot;
        for r in self.kept.len()..p.atoms {
            set_run(out, absent + r * p.window, p.window);
        }
        let mut active = p.atoms * p.window;
        active += self.energy.encode(code.energy, out);
        active += self.level.encode(code.level, out);
        active
    }
}
