//! HTM-style anomaly likelihood (after NuPIC's `anomaly_likelihood.py`, as in the memory spec
//! §5): raw scores are smoothed over a short moving average, a normal distribution is fitted to
//! the recent smoothed scores, and the likelihood is one minus the *upper* tail probability of
//! the current smoothed score. Unlike NuPIC, unusually low scores are not mirrored into alarms.
//!
//! During warm-up (`learning_period` windows ignored, then `estimation_samples` collected) the
//! likelihood is `None`: the caller reports warm-up, never an anomaly.

use serde::{Deserialize, Serialize};

use super::special::normal_upper_tail;
use crate::params::{check_range, ParamError};

/// Likelihood parameters; counts are in windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LikelihoodParams {
    /// Raw scores averaged before fitting. NuPIC uses 10 samples; windows overlap (hop < L),
    /// so neighbouring raw scores are correlated and a longer average is needed for the
    /// smoothed score to be near-normal. Range 1..=1000, default 30.
    pub averaging_window: usize,
    /// Smoothed scores kept for the fit (NuPIC: 8640). Range 10..=100000, default 2048.
    pub history: usize,
    /// Windows ignored at the start while the scorer learns. Range 0..=100000, default 64.
    pub learning_period: usize,
    /// Windows collected after that before the first fit. Range 10..=100000, default 64.
    pub estimation_samples: usize,
    /// Windows between refits. Range 1..=100000, default 16.
    pub reestimation_period: usize,
}

impl Default for LikelihoodParams {
    fn default() -> Self {
        Self {
            averaging_window: 30,
            history: 2048,
            learning_period: 64,
            estimation_samples: 64,
            reestimation_period: 16,
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
    /// Ring of the last `history` smoothed scores (filled after the learning period).
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
            history: vec![0.0; params.history],
            stored: 0,
            seen: 0,
            since_fit: 0,
            mean: 0.5,
            std: 1000.0,
            fitted: false,
            params,
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
        Some(1.0 - normal_upper_tail((smoothed - self.mean) / self.std))
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
        for _ in 0..3000 {
            if let Some(v) = l.update(rng.random::<f64>(), true) {
                max_quiet = max_quiet.max(v);
            }
        }
        assert!(max_quiet < 0.9999, "stationary noise reached {max_quiet}");
        let mut fired = 0.0f64;
        for _ in 0..20 {
            fired = fired.max(l.update(0.98 + 0.02 * rng.random::<f64>(), false).unwrap());
        }
        assert!(fired > 0.9999, "change only reached {fired}");
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
    fn log_form_is_in_unit_range() {
        assert_eq!(log_likelihood(0.0), 0.0);
        assert!((log_likelihood(1.0) - 1.0).abs() < 1e-6);
        assert!(log_likelihood(0.99999) > 0.49);
    }
}
