//! One reading of one sensor: an event timestamp and one or more finite channel values.

use thiserror::Error;

/// Largest number of channels one stream may carry. Bounds every per-stream buffer.
pub const MAX_CHANNELS: usize = 64;

/// A validated reading: `ts_ms` is the event time in milliseconds since the Unix epoch,
/// `values` holds one finite value per channel, in the stream's fixed channel order.
///
/// The sensor key is not part of a sample: the daemon routes samples to the pipeline that
/// owns the key, so the pipeline only ever sees one stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    ts_ms: i64,
    values: &'a [f64],
}

/// Why a reading cannot become a [`Sample`].
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum SampleError {
    #[error("a sample needs at least one channel value")]
    Empty,
    #[error("a sample may carry at most {MAX_CHANNELS} channels, got {0}")]
    TooManyChannels(usize),
    #[error("channel {channel} is not a finite number ({value})")]
    NonFinite { channel: usize, value: f64 },
}

impl<'a> Sample<'a> {
    /// Checks that there is at least one value, at most [`MAX_CHANNELS`], and that all are finite.
    pub fn new(ts_ms: i64, values: &'a [f64]) -> Result<Self, SampleError> {
        if values.is_empty() {
            return Err(SampleError::Empty);
        }
        if values.len() > MAX_CHANNELS {
            return Err(SampleError::TooManyChannels(values.len()));
        }
        if let Some((channel, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(SampleError::NonFinite { channel, value });
        }
        Ok(Self { ts_ms, values })
    }

    pub fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    pub fn values(&self) -> &'a [f64] {
        self.values
    }

    pub fn channels(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_too_many_and_non_finite() {
        assert_eq!(Sample::new(0, &[]), Err(SampleError::Empty));
        let many = [0.0; MAX_CHANNELS + 1];
        assert_eq!(
            Sample::new(0, &many),
            Err(SampleError::TooManyChannels(MAX_CHANNELS + 1))
        );
        let err = Sample::new(0, &[1.0, f64::NAN]).unwrap_err();
        assert!(matches!(err, SampleError::NonFinite { channel: 1, .. }));
        assert!(Sample::new(0, &[1.0, f64::INFINITY]).is_err());
        let ok = Sample::new(5, &[1.0, 2.0]).unwrap();
        assert_eq!((ok.ts_ms(), ok.channels()), (5, 2));
    }
}
