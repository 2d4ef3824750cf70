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

use super::bitset::and_counts;
use super::params::MemoryParams;

/// The U matrix of one bank, with its fill counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Bank {
    rows: Vec<u64>,
    words: usize,
    /// Set weights, Σ popcount(rows); maintained on write.
    set_bits: u64,
    /// Windows learned since the bank was last cleared.
    pub(crate) learned: u64,
    /// Global learn count at this bank's first write since it was cleared (index entries
    /// stored before it are not in this bank).
    pub(crate) born: Option<u64>,
}

impl Bank {
    pub(crate) fn new(cells: usize, words: usize) -> Self {
        Self {
            rows: vec![0; cells * words],
            words,
            set_bits: 0,
            learned: 0,
            born: None,
        }
    }

    pub(crate) fn row(&self, cell: usize) -> &[u64] {
        &self.rows[cell * self.words..(cell + 1) * self.words]
    }

    /// u_i = |U_i ∩ x| for every cell. The hot loop of the memory.
    pub(crate) fn overlaps(&self, x: &[u64], u: &mut [u16]) {
        and_counts(&self.rows, &x[..self.words], u);
    }

    /// U_i |= x for the winner of each module; returns the weights newly set.
    pub(crate) fn write(&mut self, x: &[u64], code: &[u16], cells: usize) -> u64 {
        let words = self.words;
        let mut new = 0u64;
        for (q, &k) in code.iter().enumerate() {
            let cell = q * cells + k as usize;
            let row = &mut self.rows[cell * words..(cell + 1) * words];
            for (w, &xw) in row.iter_mut().zip(&x[..words]) {
                new += (xw & !*w).count_ones() as u64;
                *w |= xw;
            }
        }
        self.set_bits += new;
        self.learned += 1;
        new
    }

    pub(crate) fn clear(&mut self) {
        self.rows.fill(0);
        self.set_bits = 0;
        self.learned = 0;
        self.born = None;
    }

    /// p1, the share of set weights among the `weights` = Q·K·N.
    pub(crate) fn fill(&self, weights: f64) -> f64 {
        self.set_bits as f64 / weights
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.rows.len() * 8
    }
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
        let sum: f64 = u
            .chunks_exact(self.cells)
            .map(|cm| self.v[*cm.iter().max().expect("K ≥ 2") as usize])
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
