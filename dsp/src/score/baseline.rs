//! The baseline detector: a rolling-window Gaussian on per-window features.
//!
//! For each channel the features of a window are its mean, its standard deviation (a level
//! shift moves the first, a stuck-at fault or a vibration change moves the second) and the
//! mean of its newest eighth (at least one sample): a spike or the first samples of a level
//! shift move that one at once, where the whole window's mean moves by an eighth as much and
//! only reaches its full change a window later; and its largest value: a spike or burst to a
//! level the stream has not reached moves the maximum in every window that holds it (8 at
//! hop 4), where the newest-eighth mean sees it in one window and the mean and spread of the
//! later ones are already judged against a history that learned the first (only the maximum:
//! adding the minimum too raised false alarms on the benchmarks, where dips to idle are
//! normal in load metrics; a dip still moves the mean, spread and newest-eighth mean). Each
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
//!
//! A second, longer time scale (`long_windows`, default 72 windows = 288 samples at hop 4): per
//! channel, the mean and the spread of the window means over the last `long_windows` learned
//! windows, two more features against their own history. A 32-sample window sees a few hours of
//! a daily cycle, so a day that went flat or lost its peak looks like another part of a normal
//! day; over a whole cycle it does not. These two are scored on the normal tail by default (`long_tail`): a sustained
//! shift of a few minutes shows in them at z ≈ 5–6, where the Student-t's heavier tail left
//! it just below the alert level.
//!
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
    /// A second, longer time scale: the mean and the spread of the window means of the last
    /// `long_windows` learned windows per channel (72 windows at hop 4 span 288 samples, a day
    /// at 5-minute sampling), two more features against their own history, scored once that
    /// ring was full and `max(min_history, long_windows)` windows were learned since. The
    /// windows an incident learns by `learn_every` do not enter the ring. Range 0..=65536,
    /// 0 = off; default 72.
    pub long_windows: usize,
    /// Tail the two long-time-scale features are scored with. Default "normal": a sustained
    /// change (SKAB's faults last minutes) shows in them at z ≈ 5–6, where the Student-t's
    /// heavier tail kept two of SKAB's 16 valve faults below the alert level (F1 0.797 →
    /// 0.841 with "normal"; NAB 57.62 → 57.54, one false positive more: BENCHMARKS.md).
    /// `tail` applies to the window features.
    pub long_tail: BaselineTail,
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
            long_windows: 72,
            long_tail: BaselineTail::Normal,
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
        check_range("spacing", "in 1..=4096", self.spacing, 1.0, 4096.0)?;
        check_range("long_windows", "in 0..=65536", self.long_windows, 0, 65_536)
    }
}

/// Window features per channel: mean, standard deviation, newest-eighth mean, maximum.
const WINDOW_FEATURES: usize = 4;
/// Index of the maximum among a channel's features.
const MAX_FEATURE: usize = 3;
/// The maximum's scale is at least this times the mean window standard deviation of its
/// history (0.5: about the sampling spread of the maximum of a window of Gaussian noise; 1.0
/// measured lower on NAB, no floor raised a false alarm on a 0.1 °C-quantised temperature).
const MAX_SCALE_FLOOR: f64 = 0.5;
/// A p-value of 1e-10 or below scores 1.
const SURPRISE_DECADES: f64 = 10.0;

/// A feature as the f32 history holds it: rounded, and clamped to ±f32::MAX (inputs may
/// reach 1e100; an infinite entry would make the feature's fit NaN for its whole history).
fn to_f32(v: f64) -> f32 {
    v.clamp(-f32::MAX as f64, f32::MAX as f64) as f32
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaselineScorer {
    params: BaselineParams,
    channels: usize,
    /// Ring of feature vectors, `history` rows of `features()` (channel-major), stored as
    /// f32: half the memory (18 KiB of a 3-channel stream's 36), and its resolution (6e-8 of
    /// a value) is far below the scale floor of 1e-6 of a feature's mean. The window scored is
    /// rounded the same way before it is compared (in `score`), so a value equal to its
    /// history compares equal. Checkpoints from before (f64) load rounded.
    ring: Vec<f32>,
    stored: usize,
    /// Features of the window scored last, kept so `learn` does not recompute them.
    current: Vec<f64>,
    /// Ring of the last `long_windows` window means, per channel.
    #[serde(default)]
    long: Vec<f64>,
    #[serde(default)]
    long_seen: usize,
    /// `stored` when the ring of window means first became full.
    #[serde(default)]
    long_full_at: Option<usize>,
    /// Per channel, the smallest feature tail of the window scored last, and the number of
    /// features scored (the Bonferroni factor).
    #[serde(default)]
    channel_tail: Vec<f64>,
    #[serde(default)]
    scored: usize,
    /// Each feature of the window scored last as a z-score against its learned history (0 for
    /// a feature not scored yet), for [`feature_z`](Self::feature_z).
    #[serde(default)]
    z: Vec<f64>,
    /// `stored` when the window maximum joined the features (a scorer restored from a
    /// checkpoint written before it was one): the maximum is scored against the windows
    /// learned since. `None`: every learned window has it.
    #[serde(default)]
    max_since: Option<usize>,
}

impl BaselineScorer {
    pub fn new(params: BaselineParams, channels: usize) -> Self {
        params.check().expect("BaselineParams must be checked");
        let per = WINDOW_FEATURES + if params.long_windows > 0 { 2 } else { 0 };
        let width = per * channels;
        Self {
            long: vec![0.0; params.long_windows * channels],
            long_seen: 0,
            long_full_at: None,
            channel_tail: vec![1.0; channels],
            scored: 0,
            z: vec![0.0; width],
            max_since: None,
            ring: vec![0.0; params.history * width],
            stored: 0,
            current: vec![0.0; width],
            channels,
            params,
        }
    }

    fn per_channel(&self) -> usize {
        WINDOW_FEATURES + if self.params.long_windows > 0 { 2 } else { 0 }
    }

    fn width(&self) -> usize {
        self.per_channel() * self.channels
    }

    /// Scores a window (raw values) against the learned history. Does not learn.
    pub fn score(&mut self, window: &WindowView<'_>) -> RawScore {
        if self.current.len() != self.width()
            || self.long.len() != self.params.long_windows * self.channels
        {
            self.migrate();
        }
        for c in 0..self.channels {
            let xs = window.channel(c);
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            let recent = (xs.len() / 8).max(1);
            let recent_mean = xs[xs.len() - recent..].iter().sum::<f64>() / recent as f64;
            let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let per = self.per_channel();
            self.current[per * c] = mean;
            self.current[per * c + 1] = var.sqrt();
            self.current[per * c + 2] = recent_mean;
            self.current[per * c + MAX_FEATURE] = max;
            let d = self.params.long_windows;
            if d > 0 {
                // The newest window replaces the oldest learned one of the ring.
                let slot = self.long_seen % d;
                let have = (self.long_seen + 1).min(d);
                let (mut s1, mut s2) = (mean, mean * mean);
                for i in (0..have).filter(|&i| i != slot) {
                    let v = self.long[i * self.channels + c];
                    s1 += v;
                    s2 += v * v;
                }
                let m = s1 / have as f64;
                self.current[per * c + WINDOW_FEATURES] = m;
                self.current[per * c + WINDOW_FEATURES + 1] =
                    (s2 / have as f64 - m * m).max(0.0).sqrt();
            }
        }

        let have = self.stored.min(self.params.history);
        if self.channel_tail.len() != self.channels {
            // Restored from a checkpoint written before this field: once, not per window.
            self.channel_tail = vec![1.0; self.channels];
        }
        self.channel_tail.fill(1.0);
        self.scored = 0;
        if self.z.len() != self.width() {
            // Restored from a checkpoint written before this field: once, not per window.
            self.z = vec![0.0; self.width()];
        }
        self.z.fill(0.0);
        if have < self.params.min_history {
            return RawScore {
                score: 0.0,
                channel: 0,
            };
        }
        let width = self.width();
        let per = self.per_channel();
        // The long features are comparable only once their ring was full: their history is
        // the windows learned since then (the newest `long_have` rows of the ring).
        let long_have = self
            .long_full_at
            .map_or(0, |at| (self.stored - at).min(self.params.history));
        // Likewise the maximum of a scorer that learned windows before it was a feature.
        let max_have = self
            .max_since
            .map(|at| (self.stored - at).min(self.params.history));
        let (mut min_tail, mut channel, mut scored) = (1.0f64, 0, 0usize);
        for f in 0..width {
            let long = f % per >= WINDOW_FEATURES;
            if long && long_have < self.params.min_history.max(self.params.long_windows) {
                continue;
            }
            // The rows this feature is fitted over: all learned ones, or the newest `have`.
            let (have, newest_only) = match (long, max_have) {
                (true, _) => (long_have, true),
                (false, Some(m)) if f % per == MAX_FEATURE => (m, true),
                (false, _) => (have, false),
            };
            if have < self.params.min_history {
                continue;
            }
            scored += 1;
            let is_max = f % per == MAX_FEATURE;
            let (mut sum, mut sum_sq, mut spread) = (0.0, 0.0, 0.0);
            let newest = self.stored + self.params.history - 1;
            for j in 0..have {
                let row = if newest_only {
                    (newest - j) % self.params.history
                } else {
                    j
                };
                let v = self.ring[row * width + f] as f64;
                sum += v;
                sum_sq += v * v;
                if is_max {
                    spread += self.ring[row * width + f - MAX_FEATURE + 1] as f64;
                }
            }
            let mean = sum / have as f64;
            let var = (sum_sq / have as f64 - mean * mean).max(0.0);
            // A feature that never varied (a flat line) gets a scale relative to its size, so
            // only a change that matters in relative terms scores high.
            let mut std = var.sqrt().max(1e-9).max(1e-6 * mean.abs());
            if is_max {
                // The maximum of a window is no more precise than the noise it is the maximum
                // of: for 32 Gaussian samples its standard deviation is ≈ 0.4 σ. A quantised
                // signal's maximum hardly varies (45.1 °C in every window at 0.1 °C steps),
                // and one step more would otherwise score as extreme.
                std = std.max(MAX_SCALE_FLOOR * spread / have as f64);
            }
            let z = (to_f32(self.current[f]) as f64 - mean) / std;
            self.z[f] = z;
            let kind = if long {
                self.params.long_tail
            } else {
                self.params.tail
            };
            let tail = match kind {
                BaselineTail::Normal => erfc(z.abs() / std::f64::consts::SQRT_2),
                BaselineTail::StudentT => {
                    let n = (have as f64 / self.params.spacing).max(2.0);
                    let t = z * (n - 1.0).sqrt() / (n + 1.0).sqrt();
                    student_t_two_sided_tail(t, n - 1.0)
                }
            };
            let c = f / per;
            self.channel_tail[c] = self.channel_tail[c].min(tail);
            if tail < min_tail {
                min_tail = tail;
                channel = f / per;
            }
        }
        self.scored = scored;
        RawScore {
            score: Self::surprise(min_tail, scored),
            channel,
        }
    }

    /// The raw score of a smallest tail among `scored` features: `−log10(p) / 10` of the
    /// Bonferroni p-value, capped to [0, 1].
    fn surprise(min_tail: f64, scored: usize) -> f64 {
        let p = (min_tail * scored as f64).clamp(f64::MIN_POSITIVE, 1.0);
        (-p.log10() / SURPRISE_DECADES).clamp(0.0, 1.0)
    }

    /// Writes into `out` (one per channel) each channel's share of the window scored last's
    /// raw score: the score its own features alone would give, with the Bonferroni factor of
    /// every feature scored. The window's score is the largest of them. Call after `score`.
    pub fn channel_scores(&self, out: &mut [f64]) {
        for (o, &tail) in out.iter_mut().zip(&self.channel_tail) {
            *o = if self.scored == 0 {
                0.0
            } else {
                Self::surprise(tail, self.scored)
            };
        }
    }

    /// Reshapes a scorer restored from a checkpoint of another feature layout, keeping what
    /// it learned. Layouts per channel: 3 = mean, std, newest-eighth mean (before the long
    /// time scale), 5 = those and the long mean and spread (before the window maximum), 4 and
    /// 6 = the same with the maximum after the newest-eighth mean. Learned features move to
    /// their new columns; a maximum the old layout lacked is scored against the windows
    /// learned from now on (`max_since`), long features against a ring that fills again
    /// unless the old layout had them with the same `long_windows`.
    fn migrate(&mut self) {
        let channels = self.channels.max(1);
        let (old, new) = (self.current.len() / channels, self.per_channel());
        let old_window = if old == 4 || old == 6 { 4 } else { 3 };
        let old_long = old > old_window;
        let new_long = new > WINDOW_FEATURES;
        let rows = self.params.history;
        let mut ring = vec![0.0f32; rows * new * self.channels];
        if self.ring.len() == rows * old * self.channels {
            for r in 0..rows {
                for c in 0..self.channels {
                    let (from, to) = ((r * self.channels + c) * old, (r * self.channels + c) * new);
                    let window = old_window.min(WINDOW_FEATURES);
                    ring[to..to + window].copy_from_slice(&self.ring[from..from + window]);
                    if old_long && new_long {
                        let (to, from) = (to + WINDOW_FEATURES, from + old_window);
                        ring[to..to + 2].copy_from_slice(&self.ring[from..from + 2]);
                    }
                }
            }
        }
        self.ring = ring;
        self.current = vec![0.0; new * self.channels];
        if old_window < WINDOW_FEATURES {
            self.max_since = Some(self.stored);
        }
        let long_len = self.params.long_windows * self.channels;
        if !(old_long && new_long && self.long.len() == long_len) {
            self.long = vec![0.0; long_len];
            self.long_seen = 0;
            self.long_full_at = None;
        }
    }

    /// Adds the features of the window scored last to the history.
    pub fn learn(&mut self) {
        self.learn_window(true);
    }

    /// Learns the window scored last while an incident is open (by the alert policy): its
    /// features join the history, but its mean does not enter the long time scale's ring, so
    /// an incident's few learned windows do not keep the long features raised after it ends.
    pub fn learn_in_incident(&mut self) {
        self.learn_window(false);
    }

    /// Features per window (per channel: mean, std, newest-eighth mean, maximum, and with
    /// the long time scale the mean and spread of the window means), channel-major.
    pub fn features(&self) -> usize {
        self.width()
    }

    /// Features of each channel in [`features`](Self::features) (4, or 6 with the long
    /// time scale).
    pub fn features_per_channel(&self) -> usize {
        self.per_channel()
    }

    /// The first features of each channel that describe the window itself (mean, std,
    /// newest-eighth mean, maximum); the long time scale's follow them.
    pub fn window_features(&self) -> usize {
        WINDOW_FEATURES
    }

    /// Writes into `out` (at least [`features`](Self::features) long) each feature of the
    /// window scored last as the z-score [`score`](Self::score) judged it by; 0 for a feature
    /// that is not scored yet (short history, or a long feature before its ring was learned).
    /// Call after `score`.
    pub fn feature_z(&self, out: &mut [f64]) {
        let out = &mut out[..self.width()];
        if self.z.len() == out.len() {
            out.copy_from_slice(&self.z);
        } else {
            // Nothing scored since a restore from a checkpoint without z-scores.
            out.fill(0.0);
        }
    }

    fn learn_window(&mut self, long: bool) {
        let width = self.width();
        let row = self.stored % self.params.history;
        for (r, &c) in self.ring[row * width..(row + 1) * width]
            .iter_mut()
            .zip(&self.current)
        {
            *r = to_f32(c);
        }
        self.stored += 1;
        let d = self.params.long_windows;
        if d > 0 && long {
            let per = self.per_channel();
            let slot = self.long_seen % d;
            for c in 0..self.channels {
                self.long[slot * self.channels + c] = self.current[per * c];
            }
            self.long_seen += 1;
            if self.long_seen == d {
                self.long_full_at = Some(self.stored);
            }
        }
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
        assert!((b.current[b.per_channel() + 2] - newest).abs() < 1e-12);
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
                assert!(
                    sg > 0.15 && (st - sg).abs() < 0.1 * sg,
                    "t {st} normal {sg}"
                );
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

    /// Windows of 8 samples whose level follows a slow cycle of `period` windows (a "day"),
    /// plus deterministic noise; `amplitude` scales the cycle.
    fn cycle_window(i: usize, period: usize, amplitude: f64) -> Vec<f64> {
        let phase = 2.0 * std::f64::consts::PI * i as f64 / period as f64;
        (0..8)
            .map(|j| amplitude * phase.sin() + 0.2 * (((i * 8 + j) * 37 % 17) as f64 / 17.0 - 0.5))
            .collect()
    }

    #[test]
    fn the_long_time_scale_sees_a_cycle_that_went_flat() {
        // A cycle of 72 windows runs for 6 cycles, then stays at its mean level (the cycle's
        // amplitude drops to 0, like NAB's art_daily_flatmiddle). Every flat window is inside
        // the range of the normal window features (its mean is a level the cycle crosses), so
        // only the spread of the window means over the long ring changes.
        let run = |long_windows: usize| -> (f64, f64) {
            let mut b = BaselineScorer::new(
                BaselineParams {
                    long_windows,
                    ..BaselineParams::default()
                },
                1,
            );
            let (mut before, mut after) = (0.0f64, 0.0f64);
            for i in 0..72 * 9 {
                let amplitude = if i < 72 * 6 { 1.0 } else { 0.0 };
                let s = b.score(&view(&cycle_window(i, 72, amplitude))).score;
                if (72 * 4..72 * 6).contains(&i) {
                    before = before.max(s);
                } else if i >= 72 * 6 {
                    after = after.max(s);
                }
                if s < 0.5 {
                    b.learn();
                }
            }
            (before, after)
        };
        let (before, after) = run(72);
        assert!(before < 0.5, "a normal cycle alarmed: {before}");
        assert!(after >= 0.5, "the flat cycle was not seen: {after}");
        let (before, after) = run(0);
        assert!(
            before < 0.5 && after < 0.5,
            "short scale alone: {before} {after}"
        );
    }

    #[test]
    fn long_tail_scores_only_the_long_features() {
        // The same history and windows with the long features on the Student-t and on the
        // normal tail: only the long features' tail differs. The normal's tail is lighter, so
        // a sustained shift that the long scale sees scores at least as high, and strictly
        // higher once the long features carry the surprise; with the long scale off the
        // setting changes nothing.
        let run = |long_windows: usize, long_tail: BaselineTail| -> Vec<f64> {
            let mut b = BaselineScorer::new(
                BaselineParams {
                    long_windows,
                    long_tail,
                    ..BaselineParams::default()
                },
                1,
            );
            let mut scores = vec![];
            for i in 0..72 * 5 {
                // A cycle, then a small lasting offset of the level.
                let offset = if i >= 72 * 4 { 0.6 } else { 0.0 };
                let w: Vec<f64> = cycle_window(i, 72, 1.0)
                    .iter()
                    .map(|x| x + offset)
                    .collect();
                let s = b.score(&view(&w)).score;
                scores.push(s);
                b.learn();
            }
            scores
        };
        let t = run(72, BaselineTail::StudentT);
        let normal = run(72, BaselineTail::Normal);
        assert!(t.iter().zip(&normal).all(|(t, n)| n >= t));
        assert!(t.iter().zip(&normal).any(|(t, n)| n > t), "never different");
        assert_eq!(
            run(0, BaselineTail::StudentT),
            run(0, BaselineTail::Normal),
            "long_tail touched the window features"
        );
    }

    #[test]
    fn long_features_wait_for_a_full_ring_and_stay_out_of_incident_learning() {
        let mut b = BaselineScorer::new(BaselineParams::default(), 1);
        for i in 0..72 {
            b.score(&view(&cycle_window(i, 72, 1.0)));
            b.learn();
        }
        assert_eq!(b.long_full_at, Some(72));
        let seen = b.long_seen;
        b.score(&view(&cycle_window(72, 72, 1.0)));
        b.learn_in_incident();
        assert_eq!(
            b.long_seen, seen,
            "an incident window entered the long ring"
        );
        assert_eq!(b.stored, 73, "but its features were learned");
    }

    /// Rewrites a scorer's ring and current features to an older layout: only the columns
    /// `keep` of each channel's features, in that order (as a checkpoint of that layout
    /// restores them).
    fn to_old_layout(b: &mut BaselineScorer, keep: &[usize]) {
        let per = b.per_channel();
        let rows = b.ring.len() / per;
        fn pick<T: Copy>(v: &[T], per: usize, keep: &[usize]) -> Vec<T> {
            (0..v.len() / per)
                .flat_map(|r| keep.iter().map(move |&f| v[r * per + f]))
                .collect()
        }
        b.ring = pick(&b.ring, per, keep);
        b.current = pick(&b.current, per, keep);
        assert_eq!(b.ring.len(), rows * keep.len());
    }

    fn two_channel(i: usize) -> Vec<f64> {
        let mut v = cycle_window(i, 72, 1.0);
        v.extend(cycle_window(i + 5, 72, 2.0));
        v
    }

    fn score_two(b: &mut BaselineScorer, i: usize) -> RawScore {
        b.score(&WindowView {
            start_ms: 0,
            end_ms: 0,
            len: 8,
            channels: 2,
            values: &two_channel(i),
        })
    }

    #[test]
    fn a_scorer_from_before_the_long_scale_is_reshaped_keeping_its_history() {
        let mut b = BaselineScorer::new(
            BaselineParams {
                long_windows: 0,
                ..BaselineParams::default()
            },
            2,
        );
        for i in 0..100 {
            score_two(&mut b, i);
            b.learn();
        }
        // Mean, std and newest-eighth mean per channel: the layout before the long scale.
        to_old_layout(&mut b, &[0, 1, 2]);
        let old_row: Vec<f32> = b.ring[..6].to_vec();
        // As a checkpoint of the old layout restores: the parameters say 72 (their default).
        b.params.long_windows = 72;
        let s = score_two(&mut b, 100);
        assert!(s.score.is_finite() && s.score < 0.5, "{s:?}");
        assert_eq!(b.ring.len(), 256 * 12);
        assert_eq!(&b.ring[..3], &old_row[..3]);
        assert_eq!(&b.ring[6..9], &old_row[3..6]);
        assert_eq!(b.long_full_at, None);
        assert_eq!(b.max_since, Some(100));
        b.learn();
        assert_eq!(b.stored, 101);
    }

    #[test]
    fn a_scorer_from_before_the_window_maximum_keeps_its_long_scale_and_learns_the_maximum() {
        let mut b = BaselineScorer::new(BaselineParams::default(), 2);
        for i in 0..200 {
            score_two(&mut b, i);
            b.learn();
        }
        let (long_full_at, long) = (b.long_full_at, b.long.clone());
        assert!(long_full_at.is_some());
        let row: Vec<f32> = b.ring[..12].to_vec();
        to_old_layout(&mut b, &[0, 1, 2, 4, 5]);
        let s = score_two(&mut b, 200);
        assert!(s.score.is_finite() && s.score < 0.5, "{s:?}");
        // Every learned feature is back in its column; the maximum's column is empty...
        assert_eq!(&b.ring[..3], &row[..3]);
        assert_eq!(&b.ring[4..6], &row[4..6]);
        assert_eq!(b.ring[3], 0.0);
        assert_eq!(&b.ring[6..9], &row[6..9]);
        assert_eq!(&b.ring[10..12], &row[10..12]);
        // ... and the long time scale goes on where it was.
        assert_eq!((b.long_full_at, &b.long), (long_full_at, &long));
        let mut z = vec![0.0; b.features()];
        b.feature_z(&mut z);
        assert!(z[4] != 0.0, "the long mean is scored at once");
        assert_eq!(z[3], 0.0, "the maximum has no history yet");
        // The maximum is scored once `min_history` windows with it were learned.
        for i in 200..216 {
            b.learn();
            score_two(&mut b, i + 1);
        }
        b.feature_z(&mut z);
        assert!(z[3] != 0.0 && z[3].is_finite(), "{z:?}");
        assert_eq!(b.max_since, Some(200));
    }

    /// A value beyond f32's range (inputs may reach 1e100) is held clamped, not infinite: the
    /// window scores, and the features of the windows after it stay scored (finite z) instead
    /// of a NaN fit for the whole history.
    #[test]
    fn a_value_beyond_f32_range_does_not_poison_the_history() {
        let mut b = BaselineScorer::new(BaselineParams::default(), 1);
        let window =
            |i: usize| -> Vec<f64> { (0..32).map(|j| ((i * 4 + j) as f64 * 0.7).sin()).collect() };
        for i in 0..100 {
            b.score(&view(&window(i)));
            b.learn();
        }
        let mut huge = window(100);
        huge[31] = 1e60;
        assert_eq!(b.score(&view(&huge)).score, 1.0);
        b.learn();
        let mut z = vec![0.0; b.features()];
        for i in 101..140 {
            let s = b.score(&view(&window(i)));
            assert!(s.score.is_finite(), "window {i}: {s:?}");
            b.feature_z(&mut z);
            assert!(z.iter().all(|v| v.is_finite()), "window {i}: {z:?}");
            b.learn();
        }
    }

    #[test]
    fn a_spike_is_scored_in_every_window_that_holds_it() {
        // Noise in 32-sample windows at hop 4, each window learned after it was scored (as
        // the pipeline does while nothing alarms); one sample 8 σ high sits in 8 windows.
        // Learning the first of them widens the spread and the mean's history the next
        // ones are judged by; the window maximum still stands out in all eight.
        let (len, hop) = (32, 4);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut noise = || {
            // Sum of 12 uniforms − 6: near-normal, unit variance, deterministic.
            (0..12)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng >> 11) as f64 / (1u64 << 53) as f64
                })
                .sum::<f64>()
                - 6.0
        };
        let mut xs: Vec<f64> = (0..len + 300 * hop).map(|_| noise()).collect();
        let spike = len + 280 * hop + 1;
        xs[spike] += 8.0;
        let mut b = BaselineScorer::new(BaselineParams::default(), 1);
        let mut holding = vec![];
        for w in 0..=300 {
            let start = w * hop;
            let s = b.score(&view(&xs[start..start + len]));
            if (start..start + len).contains(&spike) {
                // And it is the maximum that scores: its z-score is the largest.
                let mut z = vec![0.0; b.features()];
                b.feature_z(&mut z);
                let top = (0..z.len())
                    .max_by(|&i, &j| z[i].abs().total_cmp(&z[j].abs()))
                    .unwrap();
                holding.push((s.score, top));
            }
            b.learn();
        }
        assert_eq!(holding.len(), 8);
        assert!(
            holding
                .iter()
                .all(|&(s, top)| s >= 0.5 && top == MAX_FEATURE),
            "{holding:?}"
        );
    }

    #[test]
    fn a_quantised_signal_one_step_above_its_usual_maximum_is_not_extreme() {
        // A temperature at 0.1 °C resolution: 44.9 / 45.0 / 45.1, so nearly every window's
        // maximum is 45.1 and the maximum's own history hardly varies. One reading of 45.2
        // is one step of noise, not a fault; a jump to 46 is one.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut level = || -> f64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            match rng % 10 {
                0 | 1 => 44.9,
                2 | 3 => 45.1,
                _ => 45.0,
            }
        };
        let (len, hop) = (32, 4);
        let xs: Vec<f64> = (0..len + 201 * hop).map(|_| level()).collect();
        let mut b = BaselineScorer::new(BaselineParams::default(), 1);
        for w in 0..200 {
            b.score(&view(&xs[w * hop..w * hop + len]));
            b.learn();
        }
        let mut w: Vec<f64> = xs[200 * hop..200 * hop + len].to_vec();
        w[len / 2] = 45.2;
        let s = b.score(&view(&w)).score;
        assert!(s < 0.5, "one quantisation step scored {s}");
        w[len / 2] = 46.0;
        let s = b.score(&view(&w)).score;
        assert!(s >= 0.5, "a jump of ten steps scored {s}");
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
