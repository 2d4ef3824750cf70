//! The scalar block: one number → a run of `window` consecutive bits among `bits`, HTM
//! scalar-encoder style, so that nearby values share most of their bits and the overlap
//! falls off linearly with distance. Used for the window's energy (log scale: amplitude
//! changes are relative) and level (linear scale).

use serde::{Deserialize, Serialize};

use crate::params::{check_range, ParamError};

use super::super::bitset::set_run;

/// A scalar block of an encoder. `bits = 0` disables the block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalarBlockParams {
    /// Bits of the block. Range 0..=4096 (0 = block off), default 64 (the spec's example).
    pub bits: usize,
    /// Active bits (the run length). Two values `d` buckets apart share `window − d` bits.
    /// Range 1..=bits, default 8.
    pub window: usize,
    /// Value mapped to the first bucket; smaller values clamp to it. Must be > 0 on a log
    /// scale. Default depends on the block (energy 1e-3, level −4).
    pub min: f64,
    /// Value mapped to the last bucket; larger values clamp to it. Must exceed `min`.
    /// Default depends on the block (energy 1e4, level 4).
    pub max: f64,
}

impl Default for ScalarBlockParams {
    fn default() -> Self {
        Self::level()
    }
}

impl ScalarBlockParams {
    /// Default energy block: ‖y‖² over seven decades, 1e-3..1e4 (log scale), so a window
    /// with twice the energy keeps about 5 of its 8 bits.
    pub fn energy() -> Self {
        Self {
            bits: 64,
            window: 8,
            min: 1e-3,
            max: 1e4,
        }
    }

    /// Default level block: the window mean over −4..4 (linear; normalised units).
    pub fn level() -> Self {
        Self {
            bits: 64,
            window: 8,
            min: -4.0,
            max: 4.0,
        }
    }

    /// A disabled block.
    pub fn off() -> Self {
        Self {
            bits: 0,
            ..Self::level()
        }
    }

    pub(crate) fn check(&self, log: bool) -> Result<(), ParamError> {
        check_range("bits", "in 0..=4096", self.bits, 0, 4096)?;
        if self.bits == 0 {
            return Ok(());
        }
        check_range("window", "in 1..=bits", self.window, 1, self.bits)?;
        if !self.min.is_finite() || (log && self.min <= 0.0) {
            return Err(ParamError::new(
                "min",
                "finite (and > 0 on the log-scale energy block)",
                self.min,
            ));
        }
        if !(self.max.is_finite() && self.max > self.min) {
            return Err(ParamError::new("max", "finite and > min", self.max));
        }
        Ok(())
    }

    /// Active bits this block contributes.
    pub fn active(&self) -> usize {
        if self.bits == 0 {
            0
        } else {
            self.window
        }
    }
}

/// A checked scalar block placed at `offset` in the encoder's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScalarBlock {
    params: ScalarBlockParams,
    log: bool,
    offset: usize,
}

impl ScalarBlock {
    pub(crate) fn new(params: ScalarBlockParams, log: bool, offset: usize) -> Self {
        Self {
            params,
            log,
            offset,
        }
    }

    pub(crate) fn bits(&self) -> usize {
        self.params.bits
    }

    pub(crate) fn active(&self) -> usize {
        self.params.active()
    }

    /// Bucket of `value` in 0..=bits−window. Non-finite values (and, on the log scale,
    /// values ≤ 0) go to the first bucket: a NaN must still give a fixed-size input.
    fn bucket(&self, value: f64) -> usize {
        let p = &self.params;
        let last = p.bits - p.window;
        let t = if self.log {
            if value.is_nan() || value <= 0.0 {
                return 0;
            }
            (value.ln() - p.min.ln()) / (p.max.ln() - p.min.ln())
        } else {
            (value - p.min) / (p.max - p.min)
        };
        if !t.is_finite() {
            return if t == f64::INFINITY { last } else { 0 };
        }
        (t.clamp(0.0, 1.0) * last as f64).round() as usize
    }

    /// Sets the block's run for `value`; returns the bits set.
    pub(crate) fn encode(&self, value: f64, out: &mut [u64]) -> usize {
        if self.params.bits == 0 {
            return 0;
        }
        set_run(out, self.offset + self.bucket(value), self.params.window);
        self.params.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::bitset::{and_count, count_ones};

    #[test]
    fn nearby_values_share_bits_and_extremes_clamp() {
        let b = ScalarBlock::new(ScalarBlockParams::energy(), true, 0);
        let enc = |v: f64| {
            let mut w = vec![0u64; 1];
            assert_eq!(b.encode(v, &mut w), 8);
            assert_eq!(count_ones(&w), 8);
            w
        };
        let (a, a2, far) = (enc(10.0), enc(20.0), enc(1e4));
        assert!(and_count(&a, &a2) >= 5);
        assert_eq!(and_count(&a, &far), 0);
        assert_eq!(enc(1e9), far);
        assert_eq!(enc(f64::NAN), enc(0.0));
        assert_eq!(enc(-1.0), enc(1e-9));
    }

    #[test]
    fn check_rejects_bad_ranges() {
        let mut p = ScalarBlockParams::energy();
        p.min = 0.0;
        assert_eq!(p.check(true).unwrap_err().field, "min");
        assert!(p.check(false).is_ok());
        p.window = 65;
        assert_eq!(p.check(false).unwrap_err().field, "window");
        assert!(ScalarBlockParams::off().check(true).is_ok());
    }
}
