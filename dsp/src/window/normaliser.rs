//! Online per-channel normaliser: exponentially weighted mean and variance.
//!
//! Sensor channels differ by orders of magnitude (a current in A, a speed in rpm); later stages
//! (the dictionary especially, whose gradient scales with the cube of the input) need each
//! channel centred and on a unit scale. The statistics forget with a half-life so slow drift
//! of the operating point is followed, while a fault that lasts a few windows barely moves them.

use serde::{Deserialize, Serialize};

use crate::params::{check_range, ParamError};
use crate::sample::Sample;

/// Normaliser parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormaliserParams {
    /// Half-life of the running mean and variance, in samples. Range 1..=1e9, default 4096.
    pub half_life: f64,
    /// Smallest scale a channel is divided by, so a constant channel does not blow up.
    /// Range 1e-12..=1e12, default 1e-6.
    pub min_scale: f64,
}

impl Default for NormaliserParams {
    fn default() -> Self {
        Self {
            half_life: 4096.0,
            min_scale: 1e-6,
        }
    }
}

impl NormaliserParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("half_life", "in 1..=1e9", self.half_life, 1.0, 1e9)?;
        check_range("min_scale", "in 1e-12..=1e12", self.min_scale, 1e-12, 1e12)
    }
}

/// Running mean and variance per channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Normaliser {
    params: NormaliserParams,
    mean: Vec<f64>,
    var: Vec<f64>,
    /// Samples seen; until it passes the half-life the weight is 1/n (a plain average), so the
    /// first samples do not leave a bias towards zero.
    seen: u64,
}

impl Normaliser {
    pub fn new(params: NormaliserParams, channels: usize) -> Self {
        params.check().expect("NormaliserParams must be checked");
        Self {
            params,
            mean: vec![0.0; channels],
            var: vec![0.0; channels],
            seen: 0,
        }
    }

    /// Folds one sample into the statistics.
    pub fn update(&mut self, sample: Sample<'_>) {
        self.seen += 1;
        let decay = 1.0 - 0.5f64.powf(1.0 / self.params.half_life);
        let alpha = decay.max(1.0 / self.seen as f64);
        for ((m, v), &x) in self.mean.iter_mut().zip(&mut self.var).zip(sample.values()) {
            let delta = x - *m;
            *m += alpha * delta;
            *v = (1.0 - alpha) * (*v + alpha * delta * delta);
        }
    }

    pub fn mean(&self, channel: usize) -> f64 {
        self.mean[channel]
    }

    /// The scale channel `c` is divided by: its running standard deviation, floored.
    pub fn scale(&self, channel: usize) -> f64 {
        let floor = self.params.min_scale.max(1e-9 * self.mean[channel].abs());
        self.var[channel].sqrt().max(floor)
    }

    /// Writes the normalised copy of a channel-major window of `len` samples per channel.
    pub fn normalise(&self, window: &[f64], len: usize, out: &mut [f64]) {
        for (c, (src, dst)) in window.chunks(len).zip(out.chunks_mut(len)).enumerate() {
            let (m, s) = (self.mean[c], self.scale(c));
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = (x - m) / s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_to_mean_and_std() {
        let mut n = Normaliser::new(NormaliserParams::default(), 1);
        // Alternating 9 and 11: mean 10, std 1.
        for i in 0..20_000 {
            let v = if i % 2 == 0 { 9.0 } else { 11.0 };
            n.update(Sample::new(i, &[v]).unwrap());
        }
        assert!((n.mean(0) - 10.0).abs() < 0.01, "{}", n.mean(0));
        assert!((n.scale(0) - 1.0).abs() < 0.01, "{}", n.scale(0));
        let mut out = [0.0; 2];
        n.normalise(&[10.0, 12.0], 2, &mut out);
        assert!(
            out[0].abs() < 0.02 && (out[1] - 2.0).abs() < 0.05,
            "{out:?}"
        );
    }

    #[test]
    fn constant_channel_stays_finite() {
        let mut n = Normaliser::new(NormaliserParams::default(), 1);
        for i in 0..100 {
            n.update(Sample::new(i, &[5.0]).unwrap());
        }
        let mut out = [0.0; 4];
        n.normalise(&[5.0; 4], 4, &mut out);
        assert!(
            out.iter().all(|v| v.is_finite() && v.abs() < 1e-3),
            "{out:?}"
        );
    }
}
