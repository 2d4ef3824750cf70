//! HTM-style anomaly likelihood (after NuPIC's `anomaly_likelihood.py`, as in the memory spec
//! §5): raw scores are smoothed over a short moving average, a normal distribution is fitted to
//! the recent smoothed scores, and the likelihood is one minus the *upper* tail probability of
//! the current smoothed score. Unlike NuPIC, unusually low scores are not mirrored into alarms.
//!
//! During warm-up (`learning_period` windows ignored, then, except on the raw scale, which
//! fits nothing, `estimation_samples` collected) the likelihood is `None`: the caller reports
//! warm-up, never an anomaly.
//!
//! With `scale = "raw"` (the default) the output is the averaged raw score itself, after the
//! same warm-up: the right choice for a raw score that is already calibrated, like the
//! baseline's. With `scale = "log"` it is on NuPIC's *log* scale: with `tail` the upper
//! tail probability, `ℓ = ln(tail + 1e-10) / ln(1e-10)`, which is NuPIC's
//! `ln(1.0000000001 − L) / ln(1e-10)` computed from the tail directly so it keeps its
//! resolution where `L = 1 − tail` would round to 1.0. ℓ = 0.5 is L = 0.99999, ℓ = 0.4 is
//! L = 0.9999; it stays graded up to tails of 1e-12 and beyond, so a threshold swept over it
//! (as NAB does) can separate "unusual" from "never seen". `scale = "linear"` gives L itself.

use serde::{Deserialize, Serialize};

use super::special::normal_upper_tail;
use crate::params::{check_range, ParamError};

/// Likelihood parameters; counts are in windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LikelihoodParams {
    /// Raw scores averaged before fitting. NuPIC averages 10 samples; at the default hop of 4
    /// samples, 4 windows are 16 samples: long enough to damp single-window noise, short
    /// enough that a spike or the onset of a change is not diluted (30 windows, the earlier
    /// default, hid NAB's short anomalies and delayed every detection). Range 1..=1000,
    /// default 4.
    pub averaging_window: usize,
    /// Smoothed scores kept for the fit (NuPIC: 8640). Range 10..=100000, default 2048.
    pub history: usize,
    /// Windows ignored at the start while the scorer learns. Range 0..=100000, default 64
    /// (288 samples at hop 4 and window 32 on the raw scale, inside NAB's probation of 15 % of
    /// a 2 000-row file and before SKAB's faults at ~570 rows; 544 with the 64 estimation
    /// windows of the other scales). 32 scored NAB's short files earlier but raised false
    /// alarms on SKAB from a baseline history that was still too short (BENCHMARKS.md).
    pub learning_period: usize,
    /// Windows collected after that before the first fit (not on the raw scale, which fits
    /// nothing). Range 10..=100000, default 64.
    pub estimation_samples: usize,
    /// Windows between refits. Range 1..=100000, default 16.
    pub reestimation_period: usize,
    /// Output scale: `raw` (default: the averaged raw score, no Gaussian fit), `log` (NuPIC's
    /// log form, graded near 1) or `linear` (1 − tail). The default detector's raw score is
    /// already a calibrated surprise (−log10 of a Bonferroni p-value, /10), and a normal fitted
    /// to its heavy upper tail under-estimates that tail: on stationary noise the log scale at
    /// 0.5 raised 6–10 false alarms per 12 000 samples where `raw` at 0.5 raised none, and it
    /// scored lower on NAB (BENCHMARKS.md, ablation). Use `log` for the `residual` and
    /// `memory` detectors, whose raw scores are not calibrated.
    pub scale: LikelihoodScale,
}

/// The scale the likelihood is reported on (and the alert thresholds are set in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LikelihoodScale {
    /// `ln(tail + 1e-10) / ln(1e-10)`: 0.4 ↔ L = 0.9999, 0.5 ↔ L = 0.99999.
    Log,
    /// `L = 1 − tail`; saturates at 1.0 for tails below 1e-16.
    Linear,
    /// No calibration: the averaged raw score itself (after the same warm-up).
    #[default]
    Raw,
}

impl Default for LikelihoodParams {
    fn default() -> Self {
        Self {
            averaging_window: 4,
            history: 2048,
            learning_period: 64,
            estimation_samples: 64,
            reestimation_period: 16,
            scale: LikelihoodScale::Raw,
        }
    }
}

impl LikelihoodParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range(
            "averaging_window",
            "in 1..=1000",
            self.averaging_window,
            1,
            1000,
        )?;
        check_range("history", "in 10..=100000", self.history, 10, 100_000)?;
        check_range(
            "learning_period",
            "in 0..=100000",
            self.learning_period,
            0,
            100_000,
        )?;
        check_range(
            "estimation_samples",
            "in 10..=history",
            self.estimation_samples,
            10,
            self.history,
        )?;
        check_range(
            "reestimation_period",
            "in 1..=100000",
            self.reestimation_period,
            1,
            100_000,
        )
    }
}

/// Floors from NuPIC: a fitted mean below 0.03 or variance below 3e-4 is raised to them, and a
/// history whose variance is below 1.5e-5 gets a "null" fit (mean 0.5, sd 1000) so a signal that
/// never varied cannot alarm on a rounding difference.
const MIN_MEAN: f64 = 0.03;
const MIN_VARIANCE: f64 = 3e-4;
const NULL_VARIANCE: f64 = 1.5e-5;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnomalyLikelihood {
    params: LikelihoodParams,
    /// Ring of the last `averaging_window` raw scores and their sum.
    recent: Vec<f64>,
    recent_sum: f64,
    /// Ring of the last `history` smoothed scores (filled after the learning period). Empty
    /// on the raw scale, which fits nothing (2048 × 8 B of allocation per stream; never written
    /// there, so it was not resident either way).
    history: Vec<f64>,
    stored: usize,
    seen: u64,
    since_fit: usize,
    mean: f64,
    std: f64,
    fitted: bool,
}

impl AnomalyLikelihood {
    pub fn new(params: LikelihoodParams) -> Self {
        params.check().expect("LikelihoodParams must be checked");
        Self {
            recent: vec![0.0; params.averaging_window],
            recent_sum: 0.0,
            history: Self::ring(&params),
            stored: 0,
            seen: 0,
            since_fit: 0,
            mean: 0.5,
            std: 1000.0,
            fitted: false,
            params,
        }
    }

    fn ring(params: &LikelihoodParams) -> Vec<f64> {
        match params.scale {
            LikelihoodScale::Raw => Vec::new(),
            LikelihoodScale::Log | LikelihoodScale::Linear => vec![0.0; params.history],
        }
    }

    /// Takes the next raw score in [0, 1]; returns the likelihood in [0, 1], or `None` during
    /// warm-up. `learn = false` scores without adding the score to the fitted history (used
    /// while an incident is alerting, so the fault does not widen its own distribution).
    pub fn update(&mut self, raw: f64, learn: bool) -> Option<f64> {
        let w = self.params.averaging_window;
        let slot = (self.seen % w as u64) as usize;
        self.recent_sum += raw - self.recent[slot];
        self.recent[slot] = raw;
        self.seen += 1;
        let filled = (self.seen as usize).min(w);
        let smoothed = (self.recent_sum / filled as f64).clamp(0.0, 1.0);
        if self.seen as usize <= self.params.learning_period {
            return None;
        }
        if self.params.scale == LikelihoodScale::Raw {
            // Nothing to fit: the raw score is reported as soon as the detector has learned.
            if !self.history.is_empty() {
                // Restored from a state that still carried the unused ring: freed, once.
                self.history = Vec::new();
            }
            self.fitted = true;
            return Some(smoothed);
        }
        if self.history.len() != self.params.history {
            // Restored from a state saved on the raw scale (no ring): once.
            self.history = vec![0.0; self.params.history];
        }
        if learn || !self.fitted {
            let cap = self.params.history;
            let idx = self.stored % cap;
            self.history[idx] = smoothed;
            self.stored += 1;
            self.since_fit += 1;
        }
        let have = self.stored.min(self.params.history);
        if have < self.params.estimation_samples {
            return None;
        }
        if !self.fitted || self.since_fit >= self.params.reestimation_period {
            self.fit();
        }
        let tail = normal_upper_tail((smoothed - self.mean) / self.std);
        Some(match self.params.scale {
            LikelihoodScale::Log => log_scale(tail),
            LikelihoodScale::Linear => 1.0 - tail,
            LikelihoodScale::Raw => smoothed,
        })
    }

    fn fit(&mut self) {
        let have = self.stored.min(self.params.history);
        let data = &self.history[..have];
        let mean = data.iter().sum::<f64>() / have as f64;
        let var = data.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / have as f64;
        if var < NULL_VARIANCE {
            self.mean = 0.5;
            self.std = 1000.0;
        } else {
            self.mean = mean.max(MIN_MEAN);
            self.std = var.max(MIN_VARIANCE).sqrt();
        }
        self.fitted = true;
        self.since_fit = 0;
    }

    /// True once the first fit has been made.
    pub fn is_warm(&self) -> bool {
        self.fitted
    }
}

/// NuPIC's log form of an upper tail probability: `ln(tail + 1e-10) / ln(1e-10)` in [0, 1].
pub fn log_scale(tail: f64) -> f64 {
    ((tail.clamp(0.0, 1.0) + 1e-10).ln() / (1e-10f64).ln()).clamp(0.0, 1.0)
}

/// NuPIC's log form of a likelihood, for display and NAB scoring: 0 for L ≤ 0.5-ish, 1 at
/// L = 1 − 1e-10. `ℓ = ln(1.0000000001 − L) / ln(1e−10)`.
pub fn log_likelihood(l: f64) -> f64 {
    ((1.000_000_000_1 - l).ln() / (1e-10f64).ln()).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn params() -> LikelihoodParams {
        LikelihoodParams {
            learning_period: 20,
            estimation_samples: 50,
            scale: LikelihoodScale::Log,
            ..Default::default()
        }
    }

    #[test]
    fn warm_up_is_none_then_values_appear() {
        let mut l = AnomalyLikelihood::new(params());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let outs: Vec<_> = (0..200)
            .map(|_| l.update(rng.random::<f64>(), true))
            .collect();
        assert!(outs[..69].iter().all(Option::is_none));
        assert!(outs[70..].iter().all(Option::is_some));
    }

    #[test]
    fn quiet_on_stationary_noise_fires_on_a_change() {
        let mut l = AnomalyLikelihood::new(params());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut max_quiet: f64 = 0.0;
        // Raw scores of a quiet stream: small and noisy (uniform on [0, 0.3]).
        for _ in 0..3000 {
            if let Some(v) = l.update(0.3 * rng.random::<f64>(), true) {
                max_quiet = max_quiet.max(v);
            }
        }
        // 0.4 on the log scale is L = 0.9999.
        assert!(max_quiet < 0.4, "stationary noise reached {max_quiet}");
        let mut fired = 0.0f64;
        for _ in 0..20 {
            fired = fired.max(l.update(0.98 + 0.02 * rng.random::<f64>(), false).unwrap());
        }
        assert!(fired > 0.5, "change only reached {fired}");
    }

    #[test]
    fn a_flat_signal_never_alarms() {
        let mut l = AnomalyLikelihood::new(params());
        for _ in 0..500 {
            l.update(0.0, true);
        }
        let v = l.update(0.2, true).unwrap();
        assert!(v < 0.6, "{v}");
    }

    #[test]
    fn log_scale_stays_graded_where_linear_saturates() {
        // Tails of 1e-17 and 1e-20: L rounds to 1.0 for both, ℓ keeps them apart.
        assert_eq!(1.0 - 1e-17, 1.0);
        let (a, b) = (log_scale(1e-17), log_scale(1e-20));
        assert!(a < 1.0 && b < 1.0 && a != b, "{a} {b}");
        assert!((log_scale(1e-5) - 0.5).abs() < 1e-4);
        assert_eq!(log_scale(1.0), 0.0);
        let mut lin = AnomalyLikelihood::new(LikelihoodParams {
            scale: LikelihoodScale::Linear,
            ..params()
        });
        let mut log = AnomalyLikelihood::new(params());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        for _ in 0..400 {
            let x = 0.1 * rng.random::<f64>();
            lin.update(x, true);
            log.update(x, true);
        }
        let (l, g) = (
            lin.update(1.0, false).unwrap(),
            log.update(1.0, false).unwrap(),
        );
        assert!(l > 0.99 && g > 0.5 && g <= 1.0, "{l} {g}");
    }

    #[test]
    fn log_form_is_in_unit_range() {
        assert_eq!(log_likelihood(0.0), 0.0);
        assert!((log_likelihood(1.0) - 1.0).abs() < 1e-6);
        assert!(log_likelihood(0.99999) > 0.49);
    }
}
