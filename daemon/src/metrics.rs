//! Counters shared by the MQTT task, the workers and the publisher, and the periodic one-line
//! summary. Plain relaxed atomics: each counter is independent and only ever read for display.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::wire::{PayloadError, PayloadErrorKind};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Every count the daemon keeps. All are monotonic except `streams`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one instant.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct Snapshot {
            $(pub $name: u64,)*
        }

        impl Metrics {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// PUBLISH packets received on subscribed topics.
    messages,
    /// Samples taken into a stream's window.
    samples,
    /// Windows completed and scored.
    windows,
    /// Incidents detected (anomaly events created).
    detections,
    /// Payloads that could not be decoded, for any reason (the total of the four counters
    /// below and of malformed payloads: not UTF-8, not JSON, no value, a value not a number).
    payload_errors,
    /// Payloads larger than `mqtt.max_payload_bytes`, refused before parsing.
    oversized_payloads,
    /// Payloads with more than `mqtt.max_channels` channels, refused at the first one beyond.
    too_many_channels,
    /// Payloads with a value that is NaN, infinite, beyond f64 or above 1e100 in magnitude.
    out_of_range_values,
    /// Payloads whose timestamp is malformed, outside [1970, 2286), or further from the
    /// arrival time than `mqtt.max_future_ms` / `mqtt.max_past_ms` allow.
    bad_timestamps,
    /// Topics that do not match `topics.template`.
    unknown_topics,
    /// Samples refused because their timestamp was not after the previous one of the stream.
    out_of_order,
    /// Samples whose channel set differs from the stream's first sample.
    channel_mismatch,
    /// Gaps in event time that restarted a stream's window.
    gaps,
    /// Samples dropped because the owning worker's queue was full.
    dropped_samples,
    /// Anomaly events dropped because the output queue was full.
    dropped_events,
    /// Samples refused because `workers.max_streams` keys are already tracked.
    refused_streams,
    /// Anomaly events handed to the MQTT client.
    events_published,
    /// Window codes handed to the MQTT client.
    codes_published,
    /// Window codes dropped: output queue full, over `output.codes.max_per_sec`, or the
    /// client's request queue full. Codes are the first thing shed under load.
    dropped_codes,
    /// Connections to the broker established (the first one included).
    connections,
    /// Broker connection errors.
    connection_errors,
    /// Sensor streams currently tracked.
    streams,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused payload in `payload_errors` and in the counter of its kind.
    pub fn count_payload_error(&self, e: &PayloadError) {
        Self::inc(&self.payload_errors);
        match e.kind() {
            PayloadErrorKind::Oversized => Self::inc(&self.oversized_payloads),
            PayloadErrorKind::TooManyChannels => Self::inc(&self.too_many_channels),
            PayloadErrorKind::OutOfRange => Self::inc(&self.out_of_range_values),
            PayloadErrorKind::Timestamp => Self::inc(&self.bad_timestamps),
            PayloadErrorKind::Malformed => {}
        }
    }
}

impl Snapshot {
    /// Samples and events dropped or refused for lack of room. Codes, which are shed by
    /// design under load, are counted apart (`dropped_codes`).
    pub fn drops(&self) -> u64 {
        self.dropped_samples + self.dropped_events + self.refused_streams
    }

    /// Logs the one-line summary (`summary messages=… samples=… …`).
    pub fn log(&self, what: &str) {
        tracing::info!(
            messages = self.messages,
            samples = self.samples,
            windows = self.windows,
            detections = self.detections,
            payload_errors = self.payload_errors,
            oversized_payloads = self.oversized_payloads,
            too_many_channels = self.too_many_channels,
            out_of_range_values = self.out_of_range_values,
            bad_timestamps = self.bad_timestamps,
            unknown_topics = self.unknown_topics,
            out_of_order = self.out_of_order,
            drops = self.drops(),
            dropped_samples = self.dropped_samples,
            refused_streams = self.refused_streams,
            codes = self.codes_published,
            dropped_codes = self.dropped_codes,
            streams = self.streams,
            "{what}"
        );
    }
}

/// Lets one warning of a kind through per interval and counts the ones held back, so a
/// flood of bad input cannot flood the journal.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: i64,
    last_ms: AtomicI64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub const fn new(interval_ms: i64) -> Self {
        Self {
            interval_ms,
            last_ms: AtomicI64::new(i64::MIN / 2),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a warning may be logged now (`n` were held back since the last one).
    pub fn allow(&self, now_ms: i64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if now_ms - last >= self.interval_ms
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_lets_one_through_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(1000);
        assert_eq!(l.allow(0), Some(0));
        assert_eq!(l.allow(10), None);
        assert_eq!(l.allow(999), None);
        assert_eq!(l.allow(1000), Some(2));
    }

    #[test]
    fn drops_add_up() {
        let m = Metrics::default();
        Metrics::inc(&m.dropped_samples);
        Metrics::inc(&m.refused_streams);
        assert_eq!(m.snapshot().drops(), 2);
    }
}
