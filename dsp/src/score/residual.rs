//! The residual detector: how much of a window the learned dictionary cannot explain, relative
//! to how much it usually cannot explain.
//!
//! The residual ‖y − D·x_k‖²/‖y‖² is in [0, 1] but its typical level depends entirely on the
//! signal: near 0 for a clean periodic sensor, 0.5 for a noisy one. A fixed mapping would make
//! a 5 % residual invisible on the first and a false alarm on the second, so the raw score is
//! scale-free: `1 − exp(−r / (4·m))`, with m a running mean of the residual of learned windows.
//! A window as unexplained as usual scores ≈ 0.22, ten times worse ≈ 0.92.

use serde::{Deserialize, Serialize};

use crate::params::{check_range, ParamError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResidualParams {
    /// Half-life of the running mean residual, in learned windows. Range 1..=1e6, default 256.
    pub half_life: f64,
}

impl Default for ResidualParams {
    fn default() -> Self {
        Self { half_life: 256.0 }
    }
}

impl ResidualParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("half_life", "in 1..=1e6", self.half_life, 1.0, 1e6)
    }
}

/// Floor on the typical residual, so a dictionary that explains everything exactly does not
/// turn rounding noise into alarms.
const MIN_TYPICAL: f64 = 1e-4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResidualScorer {
    params: ResidualParams,
    mean: f64,
    learned: u64,
    current: f64,
}

impl ResidualScorer {
    pub fn new(params: ResidualParams) -> Self {
        params.check().expect("ResidualParams must be checked");
        Self {
            params,
            mean: 0.0,
            learned: 0,
            current: 0.0,
        }
    }

    /// Raw score of a window whose code has residual `r` (0 until a window was learned).
    pub fn score(&mut self, r: f64) -> f64 {
        self.current = r;
        if self.learned == 0 {
            return 0.0;
        }
        1.0 - (-r / (4.0 * self.mean.max(MIN_TYPICAL))).exp()
    }

    /// Folds the residual of the window scored last into the running mean.
    pub fn learn(&mut self) {
        self.learned += 1;
        let decay = 1.0 - 0.5f64.powf(1.0 / self.params.half_life);
        let alpha = decay.max(1.0 / self.learned as f64);
        self.mean += alpha * (self.current - self.mean);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_relative_to_the_usual_residual() {
        let mut s = ResidualScorer::new(ResidualParams::default());
        assert_eq!(s.score(0.3), 0.0);
        for _ in 0..100 {
            s.score(0.01);
            s.learn();
        }
        let usual = s.score(0.01);
        let ten_times = s.score(0.1);
        assert!((usual - 0.221).abs() < 0.01, "{usual}");
        assert!(ten_times > 0.9, "{ten_times}");
        assert!(s.score(0.0) == 0.0);
    }
}
