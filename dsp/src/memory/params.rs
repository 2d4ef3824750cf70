//! Parameters of the associative memory ([`SdrMemory`](super::SdrMemory)).

use serde::{Deserialize, Serialize};

use crate::params::{check_range, ParamError};

/// What the memory does as its weights fill up. Every stored distinct state sets weights and
/// nothing ever clears them, so without a policy the share of set weights p1 climbs until
/// unrelated inputs look familiar (spec §3c: G_novel → 1). The budget is in *distinct* states,
/// ≈ 0.35·N·K/s per bank; repeats cost nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaturationPolicy {
    /// Two banks (spec §6, our variant). The older bank scores; both learn the code the older
    /// one chooses, the younger from the moment the older passes half its life (half the
    /// distinct-state budget, p1 ≥ 1 − √(1 − p1_max), or `rotate_every / 2` learned
    /// windows). When the older reaches `max_fill` (or `rotate_every` learned windows), it is
    /// cleared and becomes the younger. So the scoring bank always holds the last half-budget
    /// of states and never more than `max_fill`; learning shows up in scores at once (no
    /// lag of a period); stored codes stay valid across a swap because both banks store the
    /// same code; costs a second U matrix. The default.
    #[default]
    Rotate,
    /// One bank that stops learning at `max_fill`: what was learned stays familiar, nothing
    /// new is learned. For streams whose normal repertoire is learned early and fixed.
    Freeze,
    /// One bank, never bounded. For experiments only: saturates.
    Unbounded,
}

/// Parameters of [`SdrMemory`](super::SdrMemory): the mac's shape, the code selection
/// algorithm (spec §2; defaults are the spec's [OURS] column), the input band and the
/// saturation policy. Deserialises with defaults for missing fields; unknown fields are
/// errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryParams {
    /// Q, competitive modules; a code is one winner per module. Q buys a lower variance of
    /// the familiarity G, not capacity. Range 1..=256, default 32.
    pub modules: usize,
    /// K, cells per module. Capacity grows with K (≈ 0.35·N·K/s distinct states); chance
    /// overlap of unrelated codes is 1/K. Range 2..=256, default 16.
    pub cells: usize,
    /// G⁻, the familiarity floor: at or below it the winner choice is uniform, so a novel
    /// input gets a fresh random code. 0.5 rather than the 0.1 of the original code keeps
    /// novel inputs off already-used cells for longer as the memory fills (spec §3c table).
    /// Range 0..=0.99, default 0.5.
    pub familiarity_floor: f64,
    /// γ, expansion exponent in η = 1 + χ·K·((G − G⁻)/(1 − G⁻))^γ. Range 0.1..=16, default 2.
    pub expansion_exponent: f64,
    /// χ, expansion factor: η_max = 1 + χ·K. Range 0..=1e6, default 100.
    pub expansion_factor: f64,
    /// σ1 of the Form A sigmoid μ = 1 + (η − 1)/(1 + σ1·e^(−σ2·(V − σ3)))^σ4.
    /// Range 1e-6..=1e6, default 0.1.
    pub sigmoid_scale: f64,
    /// σ2, the sigmoid's slope in V. Range 0..=1000, default 4.
    pub sigmoid_slope: f64,
    /// σ3, the sigmoid's centre in V. Range 0..=1, default 1.
    pub sigmoid_center: f64,
    /// σ4, the sigmoid's power. Range 0.1..=64, default 8.
    pub sigmoid_power: f64,
    /// λU, evidence exponent: V = (u/π)^λ. 1 keeps graded similarity (similar inputs →
    /// similar codes); 10 makes codes all-or-nothing (spec §2 [SIM]). Range 0.1..=16, default 1.
    pub evidence_exponent: f64,
    /// Share of the Q winners whose weight rows must hold bit j for the recalled input x̂ to
    /// have it (spec §3a, two-sided score). The spec's majority (0.5) is
    /// not clean: a stored item's winner rows are correlated through the other items they
    /// share, and we measured R = 0.84 at p1 = 0.18 and R = 0.30 at p1 = 0.3 for *stored*
    /// inputs (N = 1024, s = 32, Q = 32, K = 16), i.e. familiar inputs scoring as anomalies.
    /// 0.9 gives R = 1.00 for stored inputs at both fills and R ≈ o for inputs sharing a
    /// fraction o with a stored one, while tolerating a few wrong winners. Range 0.01..=1,
    /// default 0.9.
    pub recall_quorum: f64,
    /// Half-width b of the input band as a share of the encoder's active count s: inputs with
    /// π outside [s·(1 − b), s·(1 + b)] get no code (reported as out of band). Fixed-count
    /// encoders never leave it; the band guards against a mis-wired input. Range 0..=1,
    /// default 0.5.
    pub active_band: f64,
    /// Saturation policy. Default [`SaturationPolicy::Rotate`].
    pub policy: SaturationPolicy,
    /// p1_max, the fill (share of set weights) that triggers rotation or freezing. 0.3 is where
    /// the CSA still behaves like random codes for novel inputs (spec §3c). Range 0.01..=1,
    /// default 0.3.
    pub max_fill: f64,
    /// Rotate also after this many learned windows of the scoring bank, so a stream that
    /// drifts forgets old states even before the fill budget is reached. 0 = only on fill.
    /// Range 0..=1e9, default 0.
    pub rotate_every: u64,
    /// Stored codes kept in the best-match index (least recently learned evicted first).
    /// About the distinct-state budget is enough; 0 turns best-match reporting off.
    /// Range 0..=65536, default 256.
    pub index_capacity: usize,
    /// Seed of the winner-choice RNG. Any value; default 0x5EED_03E3.
    pub seed: u64,
    /// Temporal context (spec §1–2, the horizontal weights W_H): a cell's evidence also
    /// needs the previous window's code, V = U^λU · H^λH with H_i the share of the
    /// previous code's Q cells that connect to cell i, so a familiar window in an
    /// unfamiliar order is novel. Costs (Q·K)² bits per bank (32 KiB at Q = 32, K = 16,
    /// twice under [`SaturationPolicy::Rotate`]); the fill monitor then takes the fuller of
    /// U and W_H. The first window of a sequence (after a gap, a restart, or a window
    /// without a code) skips H. Default false (the baseline detector).
    pub temporal: bool,
    /// λH, temporal evidence exponent in V = U^λU · H^λH. Range 0.1..=16, default 1.
    pub temporal_exponent: f64,
}

impl Default for MemoryParams {
    fn default() -> Self {
        Self {
            modules: 32,
            cells: 16,
            familiarity_floor: 0.5,
            expansion_exponent: 2.0,
            expansion_factor: 100.0,
            sigmoid_scale: 0.1,
            sigmoid_slope: 4.0,
            sigmoid_center: 1.0,
            sigmoid_power: 8.0,
            evidence_exponent: 1.0,
            recall_quorum: 0.9,
            active_band: 0.5,
            policy: SaturationPolicy::default(),
            max_fill: 0.3,
            rotate_every: 0,
            index_capacity: 256,
            seed: 0x5EED_03E3,
            temporal: false,
            temporal_exponent: 1.0,
        }
    }
}

impl MemoryParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("modules", "in 1..=256", self.modules, 1, 256)?;
        check_range("cells", "in 2..=256", self.cells, 2, 256)?;
        // `check_range` is false for NaN, so these also reject non-finite values.
        let f = |field, expected, v: f64, lo, hi| check_range(field, expected, v, lo, hi);
        f(
            "familiarity_floor",
            "in 0..=0.99",
            self.familiarity_floor,
            0.0,
            0.99,
        )?;
        f(
            "expansion_exponent",
            "in 0.1..=16",
            self.expansion_exponent,
            0.1,
            16.0,
        )?;
        f(
            "expansion_factor",
            "in 0..=1e6",
            self.expansion_factor,
            0.0,
            1e6,
        )?;
        f(
            "sigmoid_scale",
            "in 1e-6..=1e6",
            self.sigmoid_scale,
            1e-6,
            1e6,
        )?;
        f(
            "sigmoid_slope",
            "in 0..=1000",
            self.sigmoid_slope,
            0.0,
            1000.0,
        )?;
        f("sigmoid_center", "in 0..=1", self.sigmoid_center, 0.0, 1.0)?;
        f(
            "sigmoid_power",
            "in 0.1..=64",
            self.sigmoid_power,
            0.1,
            64.0,
        )?;
        f(
            "evidence_exponent",
            "in 0.1..=16",
            self.evidence_exponent,
            0.1,
            16.0,
        )?;
        f(
            "recall_quorum",
            "in 0.01..=1",
            self.recall_quorum,
            0.01,
            1.0,
        )?;
        f("active_band", "in 0..=1", self.active_band, 0.0, 1.0)?;
        f("max_fill", "in 0.01..=1", self.max_fill, 0.01, 1.0)?;
        f(
            "temporal_exponent",
            "in 0.1..=16",
            self.temporal_exponent,
            0.1,
            16.0,
        )?;
        check_range(
            "rotate_every",
            "in 0..=1e9",
            self.rotate_every,
            0,
            1_000_000_000,
        )?;
        check_range(
            "index_capacity",
            "in 0..=65536",
            self.index_capacity,
            0,
            65_536,
        )
    }

    /// Fill at which the younger bank starts learning under [`SaturationPolicy::Rotate`]:
    /// half the distinct-state budget, since p1(M) = 1 − e^(−aM) gives p1(M/2) = 1 − √(1 − p1(M)).
    pub fn half_fill(&self) -> f64 {
        1.0 - (1.0 - self.max_fill).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_check_and_bad_values_are_named() {
        assert!(MemoryParams::default().check().is_ok());
        let p = MemoryParams {
            familiarity_floor: f64::NAN,
            ..MemoryParams::default()
        };
        assert_eq!(p.check().unwrap_err().field, "familiarity_floor");
        let p = MemoryParams {
            cells: 1,
            ..MemoryParams::default()
        };
        assert_eq!(
            p.check().unwrap_err().to_string(),
            "cells must be in 2..=256, got 1"
        );
        let p: MemoryParams = serde_json::from_str(r#"{"modules":8,"policy":"freeze"}"#).unwrap();
        assert_eq!(
            (p.modules, p.policy, p.cells),
            (8, SaturationPolicy::Freeze, 16)
        );
        assert!(serde_json::from_str::<MemoryParams>(r#"{"modulez":8}"#).is_err());
        assert!((MemoryParams::default().half_fill() - 0.1633).abs() < 1e-3);
    }
}
