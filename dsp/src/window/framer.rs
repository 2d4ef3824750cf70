//! The framer: window length L, hop H, C channels, windows laid out channel-major.
//!
//! Gap handling (event time): a sample whose timestamp is more than `max_gap_ms` after the
//! previous one, and more than `gap_factor` times the stream's usual interval, starts a new
//! segment; the partial window before the gap is discarded, because a window that straddles a
//! gap mixes two unrelated stretches of signal. The usual interval is learned per stream (a
//! running mean of its intervals that were not gaps), so a sensor that reports once an hour
//! is framed like one that reports once a second, instead of every one of its samples being
//! a "gap" that discards the window (no window would ever complete). A sample whose
//! timestamp is not after the previous one (duplicate or out of order) is refused, so a
//! redelivered message is never counted twice in a window.

use serde::{Deserialize, Serialize};

use crate::params::{check_range, ParamError};
use crate::sample::{Sample, MAX_CHANNELS};

/// Intervals the usual interval is averaged over (the weight of a new one is 1/this).
const USUAL_SPAN: f64 = 32.0;

/// Framing parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FramerParams {
    /// Samples per window, per channel. Range 4..=4096, default 32.
    pub window_len: usize,
    /// Samples between the starts of consecutive windows. Range 1..=window_len, default 4
    /// (a window every 4 samples: detections land within 4 rows of the evidence).
    pub hop: usize,
    /// A larger gap between consecutive timestamps (ms) discards the partial window and
    /// restarts framing, if it is also a gap by `gap_factor`. 0 disables gap detection.
    /// Default 600 000 (10 minutes).
    pub max_gap_ms: i64,
    /// An interval is a gap only when it is also longer than `gap_factor` × the stream's usual
    /// interval (the running mean of its non-gap intervals; the first interval sets it).
    /// 0 = `max_gap_ms` alone. Range 0..=1e6, default 8.
    pub gap_factor: f64,
}

impl Default for FramerParams {
    fn default() -> Self {
        Self {
            window_len: 32,
            hop: 4,
            max_gap_ms: 600_000,
            gap_factor: 8.0,
        }
    }
}

impl FramerParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("window_len", "in 4..=4096", self.window_len, 4, 4096)?;
        check_range("hop", "in 1..=window_len", self.hop, 1, self.window_len)?;
        check_range("max_gap_ms", ">= 0", self.max_gap_ms, 0, i64::MAX)?;
        check_range("gap_factor", "in 0..=1e6", self.gap_factor, 0.0, 1e6)
    }
}

/// What happened to one pushed sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Taken into the current window; no window completed.
    Buffered,
    /// Taken, and it completed a window (read it with [`Framer::window`]).
    WindowReady,
    /// Taken, after a gap that discarded the partial window.
    AfterGap,
    /// Refused: its timestamp is not after the previous sample's.
    OutOfOrder,
    /// Refused: its channel count differs from the stream's.
    ChannelMismatch,
}

/// A completed window, borrowed from the framer.
#[derive(Debug, Clone, Copy)]
pub struct WindowView<'a> {
    /// Event time of the first and last sample in the window.
    pub start_ms: i64,
    pub end_ms: i64,
    /// Samples per channel (L) and number of channels (C).
    pub len: usize,
    pub channels: usize,
    /// L·C values, channel-major: `values[c * len + i]` is sample i of channel c.
    pub values: &'a [f64],
}

impl WindowView<'_> {
    /// The L values of channel `c`, oldest first.
    pub fn channel(&self, c: usize) -> &[f64] {
        &self.values[c * self.len..(c + 1) * self.len]
    }
}

/// Ring buffer of the last L samples per channel; all storage is allocated at construction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Framer {
    params: FramerParams,
    channels: usize,
    /// Ring storage, L slots × C channels, slot-major.
    ring: Vec<f64>,
    ring_ts: Vec<i64>,
    /// Next slot to write, samples held (≤ L), samples since the last emitted window.
    head: usize,
    held: usize,
    since_emit: usize,
    last_ts: Option<i64>,
    /// Running mean of the intervals that were not gaps (ms); 0 before the first interval.
    #[serde(default)]
    usual_interval_ms: f64,
    /// The last completed window, channel-major.
    window: Vec<f64>,
    window_start_ms: i64,
    window_end_ms: i64,
}

impl Framer {
    /// # Panics
    /// If `channels` is 0 or above [`MAX_CHANNELS`], or the params are invalid (check them first).
    pub fn new(params: FramerParams, channels: usize) -> Self {
        params.check().expect("FramerParams must be checked");
        assert!(
            (1..=MAX_CHANNELS).contains(&channels),
            "channels out of range"
        );
        let l = params.window_len;
        Self {
            channels,
            ring: vec![0.0; l * channels],
            ring_ts: vec![0; l],
            head: 0,
            held: 0,
            since_emit: 0,
            last_ts: None,
            usual_interval_ms: 0.0,
            window: vec![0.0; l * channels],
            window_start_ms: 0,
            window_end_ms: 0,
            params,
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn params(&self) -> &FramerParams {
        &self.params
    }

    /// Event time of the last accepted sample.
    pub fn last_ts(&self) -> Option<i64> {
        self.last_ts
    }

    /// Samples held towards the next window (for status and checkpoints).
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn push(&mut self, sample: Sample<'_>) -> PushOutcome {
        if sample.channels() != self.channels {
            return PushOutcome::ChannelMismatch;
        }
        let ts = sample.ts_ms();
        let mut gap = false;
        if let Some(last) = self.last_ts {
            if ts <= last {
                return PushOutcome::OutOfOrder;
            }
            let interval = ts.saturating_sub(last);
            gap = self.is_gap(interval);
            if gap {
                self.held = 0;
                self.since_emit = 0;
            } else if self.usual_interval_ms == 0.0 {
                self.usual_interval_ms = interval as f64;
            } else {
                self.usual_interval_ms += (interval as f64 - self.usual_interval_ms) / USUAL_SPAN;
            }
        }
        self.last_ts = Some(ts);
        let l = self.params.window_len;
        let c = self.channels;
        self.ring[self.head * c..(self.head + 1) * c].copy_from_slice(sample.values());
        self.ring_ts[self.head] = ts;
        self.head = (self.head + 1) % l;
        self.held = (self.held + 1).min(l);
        self.since_emit += 1;
        // After a start or a gap `since_emit` grows with `held`, so the first window comes at L.
        if self.held == l && self.since_emit >= self.params.hop {
            self.since_emit = 0;
            self.emit();
            return PushOutcome::WindowReady;
        }
        if gap {
            PushOutcome::AfterGap
        } else {
            PushOutcome::Buffered
        }
    }

    /// Whether an interval between consecutive samples is a gap. The first interval of a
    /// stream never is (it sets the usual interval) unless `gap_factor` is 0.
    fn is_gap(&self, interval: i64) -> bool {
        let p = &self.params;
        if p.max_gap_ms == 0 || interval <= p.max_gap_ms {
            return false;
        }
        if p.gap_factor == 0.0 {
            return true;
        }
        self.usual_interval_ms > 0.0 && interval as f64 > p.gap_factor * self.usual_interval_ms
    }

    /// Copies the ring (oldest first) into the channel-major window buffer.
    fn emit(&mut self) {
        let l = self.params.window_len;
        let c = self.channels;
        for i in 0..l {
            let slot = (self.head + i) % l;
            for ch in 0..c {
                self.window[ch * l + i] = self.ring[slot * c + ch];
            }
        }
        self.window_start_ms = self.ring_ts[self.head % l];
        self.window_end_ms = self.ring_ts[(self.head + l - 1) % l];
    }

    /// The most recently completed window.
    pub fn window(&self) -> WindowView<'_> {
        WindowView {
            start_ms: self.window_start_ms,
            end_ms: self.window_end_ms,
            len: self.params.window_len,
            channels: self.channels,
            values: &self.window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(l: usize, h: usize, c: usize) -> Framer {
        let p = FramerParams {
            window_len: l,
            hop: h,
            max_gap_ms: 100,
            gap_factor: 8.0,
        };
        Framer::new(p, c)
    }

    #[test]
    fn first_window_after_l_samples_then_every_hop() {
        let mut f = framer(4, 2, 1);
        let mut ready = vec![];
        for t in 0..10 {
            if f.push(Sample::new(t, &[t as f64]).unwrap()) == PushOutcome::WindowReady {
                ready.push(t);
                let w = f.window();
                assert_eq!(w.end_ms, t);
                assert_eq!(w.start_ms, t - 3);
                let expect: Vec<f64> = (t - 3..=t).map(|x| x as f64).collect();
                assert_eq!(w.values, &expect[..]);
            }
        }
        assert_eq!(ready, vec![3, 5, 7, 9]);
    }

    #[test]
    fn multichannel_windows_are_channel_major() {
        let mut f = framer(4, 4, 2);
        for t in 0..4 {
            f.push(Sample::new(t, &[t as f64, 10.0 + t as f64]).unwrap());
        }
        let w = f.window();
        assert_eq!(w.channel(0), &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(w.channel(1), &[10.0, 11.0, 12.0, 13.0]);
    }

    #[test]
    fn out_of_order_and_duplicates_are_refused() {
        let mut f = framer(4, 1, 1);
        assert_eq!(
            f.push(Sample::new(10, &[1.0]).unwrap()),
            PushOutcome::Buffered
        );
        assert_eq!(
            f.push(Sample::new(10, &[1.0]).unwrap()),
            PushOutcome::OutOfOrder
        );
        assert_eq!(
            f.push(Sample::new(5, &[1.0]).unwrap()),
            PushOutcome::OutOfOrder
        );
        assert_eq!(f.held(), 1);
    }

    #[test]
    fn a_gap_discards_the_partial_window() {
        let mut f = framer(4, 1, 1);
        for t in 0..3 {
            f.push(Sample::new(t, &[0.0]).unwrap());
        }
        assert_eq!(
            f.push(Sample::new(1000, &[9.0]).unwrap()),
            PushOutcome::AfterGap
        );
        assert_eq!(f.held(), 1);
        for t in 1001..1003 {
            assert_eq!(
                f.push(Sample::new(t, &[9.0]).unwrap()),
                PushOutcome::Buffered
            );
        }
        assert_eq!(
            f.push(Sample::new(1003, &[9.0]).unwrap()),
            PushOutcome::WindowReady
        );
        assert!(f.window().values.iter().all(|&v| v == 9.0));
        assert_eq!(f.window().start_ms, 1000);
    }

    #[test]
    fn a_slow_stream_is_framed_by_its_own_interval() {
        // One sample an hour: every interval is far above max_gap_ms (100 ms here), but it is
        // the stream's usual interval, so windows complete; a silence of 10 hours is a gap.
        let hour = 3_600_000;
        let mut f = framer(4, 1, 1);
        let outcomes: Vec<_> = (0..6)
            .map(|i| f.push(Sample::new(i * hour, &[i as f64]).unwrap()))
            .collect();
        assert_eq!(outcomes[3], PushOutcome::WindowReady, "{outcomes:?}");
        assert!(!outcomes.contains(&PushOutcome::AfterGap), "{outcomes:?}");
        assert_eq!(
            f.push(Sample::new(15 * hour, &[0.0]).unwrap()),
            PushOutcome::AfterGap
        );
        assert_eq!(f.held(), 1);
        // With gap_factor 0 only max_gap_ms counts, as before: every hourly sample is a gap.
        let mut strict = Framer::new(
            FramerParams {
                gap_factor: 0.0,
                ..f.params().clone()
            },
            1,
        );
        strict.push(Sample::new(0, &[0.0]).unwrap());
        assert_eq!(
            strict.push(Sample::new(hour, &[0.0]).unwrap()),
            PushOutcome::AfterGap
        );
    }

    #[test]
    fn channel_mismatch_is_refused() {
        let mut f = framer(4, 1, 2);
        assert_eq!(
            f.push(Sample::new(0, &[1.0]).unwrap()),
            PushOutcome::ChannelMismatch
        );
    }

    #[test]
    fn params_are_checked() {
        let mut p = FramerParams {
            hop: 0,
            ..Default::default()
        };
        assert_eq!(p.check().unwrap_err().field, "hop");
        p.hop = 40;
        assert_eq!(p.check().unwrap_err().field, "hop");
        p = FramerParams::default();
        p.window_len = 2;
        assert!(p
            .check()
            .unwrap_err()
            .to_string()
            .contains("window_len must be in 4..=4096, got 2"));
    }
}
