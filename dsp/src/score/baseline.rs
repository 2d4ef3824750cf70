//! The baseline detector: a rolling-window Gaussian on per-window features.
//!
//! For each channel the features of a window are its mean, its standard deviation (a level
//! shift moves the first, a stuck-at fault or a vibration change moves the second) and the
//! mean of its newest eighth (at least one sample): a spike or the first samples of a level
//! shift move that one at once, where the whole window's mean moves by an eighth as much and
//! only reaches its full change a window later. Each
//! feature is compared with a normal fitted to the same feature over the last `history`
//! learned windows, giving a two-sided tail probability per feature: by default the tail of
//! the Student-t predictive distribution (n − 1 degrees of freedom for n = learned windows / `spacing`,
//! scale √(1 + 1/n) times the sample standard deviation), which is the Gaussian's tail for a long
//! history and heavier for a short one, where mean and variance are uncertain. The smallest tail, times
//! the number of features (Bonferroni), is the window's p-value, and the raw score is its
//! surprise in decades, `−log10(p) / 10`, capped to [0, 1]. Under stationary noise that is small
//! (mean ≈ 0.04) with rare spikes; a real change pushes it to 1 within a window. A heavy-tailed
//! score like this is what the likelihood stage calibrates well: a plain `1 − p` saturates near
//! 1 and leaves no room between "unusual" and "never seen".
//! It is the reference every other detector is compared with in `eval`.

use serde::{Deserialize, Serialize};

use super::special::{erfc, student_t_two_sided_tail};
use super::RawScore;
use crate::params::{check_range, ParamError};
use crate::window::WindowView;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineParams {
    /// Learned windows the Gaussian is fitted over. Range 8..=65536, default 256.
    pub history: usize,
    /// Windows needed before scores are produced (score 0 before). Range 2..=history, default 16.
    pub min_history: usize,
    /// Tail of each feature: "normal" (the fitted Gaussian) or "student_t" (default: the
    /// predictive distribution of a new value when mean and variance are estimated from the
    /// history, so a short history, as right after warm-up, does not overstate surprise).
    pub tail: BaselineTail,
    /// Learned windows per independent observation when counting the Student-t's degrees of
    /// freedom (overlapping windows are correlated). Range 1..=4096, default 1.
    pub spacing: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineTail {
    Normal,
    StudentT,
}

impl Default for BaselineParams {
    fn default() -> Self {
        Self {
            history: 256,
            min_history: 16,
            tail: BaselineTail::StudentT,
            spacing: 1.0,
        }
    }
}

impl BaselineParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("history", "in 8..=65536", self.history, 8, 65_536)?;
        check_range(
            "min_history",
            "in 2..=history",
            self.min_history,
            2,
            self.history,
        )?;
        check_range("spacing", "in 1..=4096", self.spacing, 1.0, 4096.0)
    }
}

const FEATURES_PER_CHANNEL: usize = 3;
/// A p-value of 1e-10 or below scores 1.
const SURPRISE_DECADES: f64 = 10.0;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaselineScorer {
    params: BaselineParams,
    channels: usize,
    /// Ring of feature vectors, `history` rows of `2·channels`.
    ring: Vec<f64>,
    stored: usize,
    /// Features of the window scored last, kept so `learn` does not recompute them.
    current: Vec<f64>,
}

impl BaselineScorer {
    pub fn new(params: BaselineParams, channels: usize) -> Self {
        params.check().expect("BaselineParams must be checked");
        let width = FEATURES_PER_CHANNEL * channels;
        Self {
            ring: vec![0.0; params.history * width],
            stored: 0,
            current: vec![0.0; width],
            channels,
            params,
        }
    }

    fn width(&self) -> usize {
        FEATURES_PER_CHANNEL * self.channels
    }

    /// Scores a window (raw values) against the learned history. Does not learn.
    pub fn score(&mut self, window: &WindowView<'_>) -> RawScore {
        for c in 0..self.channels {
            let xs = window.channel(c);
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            let recent = (xs.len() / 8).max(1);
            let recent_mean = xs[xs.len() - recent..].iter().sum::<f64>() / recent as f64;
            self.current[FEATURES_PER_CHANNEL * c] = mean;
            self.current[FEATURES_PER_CHANNEL * c + 1] = var.sqrt();
            self.current[FEATURES_PER_CHANNEL * c + 2] = recent_mean;
        }
        let have = self.stored.min(self.params.history);
        if have < self.params.min_history {
            return RawScore {
                score: 0.0,
                channel: 0,
            };
        }
        let width = self.width();
        let (mut min_tail, mut channel) = (1.0f64, 0);
        for f in 0..width {
            let (mut sum, mut sum_sq) = (0.0, 0.0);
            for row in 0..have {
                let v = self.ring[row * width + f];
                sum += v;
                sum_sq += v * v;
            }
            let mean = sum / have as f64;
            let var = (sum_sq / have as f64 - mean * mean).max(0.0);
            // A feature that never varied (a flat line) gets a scale relative to its size, so
            // only a change that matters in relative terms scores high.
            let std = var.sqrt().max(1e-9).max(1e-6 * mean.abs());
            let z = (self.current[f] - mean) / std;
            let tail = match self.params.tail {
                BaselineTail::Normal => erfc(z.abs() / std::f64::consts::SQRT_2),
                BaselineTail::StudentT => {
                    let n = (have as f64 / self.params.spacing).max(2.0);
                    let t = z * (n - 1.0).sqrt() / (n + 1.0).sqrt();
                    student_t_two_sided_tail(t, n - 1.0)
                }
            };
            if tail < min_tail {
                min_tail = tail;
                channel = f / FEATURES_PER_CHANNEL;
            }
        }
        let p = (min_tail * width as f64).clamp(f64::MIN_POSITIVE, 1.0);
        RawScore {
            score: (-p.log10() / SURPRISE_DECADES).clamp(0.0, 1.0),
            channel,
        }
    }

    /// Adds the features of the window scored last to the history.
    pub fn learn(&mut self) {
        let width = self.width();
        let row = self.stored % self.params.history;
        self.ring[row * width..(row + 1) * width].copy_from_slice(&self.current);
        self.stored += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(values: &[f64]) -> WindowView<'_> {
        WindowView {
            start_ms: 0,
            end_ms: 0,
            len: values.len(),
            channels: 1,
            values,
        }
    }

    #[test]
    fn scores_zero_until_min_history_then_flags_a_shift() {
        let mut b = BaselineScorer::new(BaselineParams::default(), 1);
        for i in 0..40 {
            let w: Vec<f64> = (0..8).map(|j| ((i * 8 + j) as f64 * 0.7).sin()).collect();
            let s = b.score(&view(&w));
            if i < 16 {
                assert_eq!(s.score, 0.0);
            }
            b.learn();
        }
        let normal: Vec<f64> = (0..8).map(|j| ((320 + j) as f64 * 0.7).sin()).collect();
        assert!(b.score(&view(&normal)).score < 0.5);
        let shifted: Vec<f64> = normal.iter().map(|v| v + 5.0).collect();
        assert_eq!(b.score(&view(&shifted)).score, 1.0);
        let stuck = [0.3; 8];
        assert!(
            b.score(&view(&stuck)).score > 0.5,
            "a stuck channel loses its variance"
        );
    }

    #[test]
    fn a_spike_in_the_newest_samples_scores_at_once() {
        // Two channels of 32-sample windows; channel 1 gets one sample 6 amplitudes high as
        // the newest of the window. Its window mean moves by 6/32 of an amplitude (inside the
        // spread of a sine's window means); the newest eighth's mean moves by 6/4.
        let len = 32;
        let mut b = BaselineScorer::new(BaselineParams::default(), 2);
        let window = |i: usize, spike: f64| -> Vec<f64> {
            let mut v: Vec<f64> = (0..2 * len)
                .map(|j| ((i * 4 + j % len) as f64 * 0.3).sin())
                .collect();
            v[2 * len - 1] += spike;
            v
        };
        for i in 0..200 {
            b.score(&WindowView {
                start_ms: 0,
                end_ms: 0,
                len,
                channels: 2,
                values: &window(i, 0.0),
            });
            b.learn();
        }
        let spiked = window(200, 6.0);
        let s = b.score(&WindowView {
            start_ms: 0,
            end_ms: 0,
            len,
            channels: 2,
            values: &spiked,
        });
        assert!(s.score > 0.5, "{s:?}");
        assert_eq!(s.channel, 1);
        // The third feature of channel 1 is the mean of its newest 32 / 8 = 4 samples.
        let newest = spiked[2 * len - 4..].iter().sum::<f64>() / 4.0;
        assert!((b.current[FEATURES_PER_CHANNEL + 2] - newest).abs() < 1e-12);
    }

    #[test]
    fn student_t_tail_is_cautious_on_a_short_history_and_normal_on_a_long_one() {
        let params = |tail| BaselineParams {
            tail,
            ..BaselineParams::default()
        };
        let mut t = BaselineScorer::new(params(BaselineTail::StudentT), 1);
        let mut g = BaselineScorer::new(params(BaselineTail::Normal), 1);
        let window = |i: usize| -> Vec<f64> {
            (0..8)
                .map(|j| ((i * 8 + j) as f64 * 0.7).sin() + 0.3 * ((i * 13 + j * 7) % 11) as f64)
                .collect()
        };
        let shifted = |i: usize| -> Vec<f64> { window(i).iter().map(|v| v + 0.5).collect() };
        let mut checked = 0;
        for i in 0..300 {
            let (st, sg) = (
                t.score(&view(&shifted(i))).score,
                g.score(&view(&shifted(i))).score,
            );
            t.score(&view(&window(i)));
            g.score(&view(&window(i)));
            if (16..40).contains(&i) {
                // A short history: the same outlier is less surprising under the t.
                assert!(st < sg, "window {i}: t {st} normal {sg}");
                checked += 1;
            }
            if i == 299 {
                // 256 windows of history: 255 degrees of freedom, within 10 % of the normal.
                assert!(sg > 0.2 && (st - sg).abs() < 0.1 * sg, "t {st} normal {sg}");
            }
            t.learn();
            g.learn();
        }
        assert_eq!(checked, 24);
        let bad = BaselineParams {
            spacing: 0.5,
            ..BaselineParams::default()
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn flat_history_stays_finite() {
        let mut b = BaselineScorer::new(BaselineParams::default(), 1);
        for _ in 0..20 {
            b.score(&view(&[1.0; 8]));
            b.learn();
        }
        let s = b.score(&view(&[1.0; 8]));
        assert_eq!(s.score, 0.0);
        assert!(b.score(&view(&[0.0; 8])).score.is_finite());
    }
}
