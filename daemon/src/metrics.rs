//! Counters shared by the MQTT task, the workers and the publisher, and the periodic one-line
//! summary. Plain relaxed atomics: each counter is independent and only ever read for display.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
    /// Payloads that could not be decoded (malformed, non-number, non-finite, too large).
    payload_errors,
    /// Topics that do not match `topics.template`.
    unknown_topics,
    /// Samples refused because their timestamp was not after the previous one of the stream.
    out_of_order,
    /// Samples whose channel set differs from the stream's first sample.
    channel_mismatch,
    /// Gaps in event time that restarted a stream's window.
    gaps,
    /// Samples dropped because the owning worker's queue was full (`mqtt.overload = "shed"`,
    /// QoS 0, or a worker that is gone).
    dropped_samples,
    /// Anomaly and no-data events dropped: output queue full, outbox full, or undelivered at a
    /// stop without a spool file.
    dropped_events,
    /// Samples refused because `workers.max_streams` keys are already tracked.
    refused_streams,
    /// Anomaly and no-data events acknowledged by the broker (PUBACK).
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
    /// Samples refused as redeliveries: the broker marked them DUP, or their timestamp equals
    /// the stream's last one. Acknowledged, never counted as samples twice.
    duplicates,
    /// QoS 1 messages acknowledged to the broker after their worker took them.
    acks,
    /// Acknowledgements not sent because the connection that delivered the message is gone;
    /// the broker redelivers those messages (seen as `duplicates` if already taken).
    stale_acks,
    /// Times the ingest stopped reading because a worker queue was full (`overload = "hold"`).
    ingest_holds,
    /// QoS 1 messages received while stopping: neither taken nor acknowledged, so the broker
    /// delivers them to the next run.
    left_at_broker,
    /// Connections after the first one (reconnections).
    reconnects,
    /// 1 while connected to the broker, else 0.
    broker_connected,
    /// Total time of the outages that ended in a reconnection, milliseconds.
    outage_ms,
    /// Events delivered late (`"delayed": true`).
    events_delayed,
    /// Events in the outbox, not yet acknowledged by the broker.
    events_buffered,
    /// No-data conditions raised and cleared.
    nodata_raised,
    nodata_cleared,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
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
            unknown_topics = self.unknown_topics,
            out_of_order = self.out_of_order,
            duplicates = self.duplicates,
            drops = self.drops(),
            events = self.events_published,
            events_delayed = self.events_delayed,
            events_buffered = self.events_buffered,
            reconnects = self.reconnects,
            broker_connected = self.broker_connected,
            outage_ms = self.outage_ms,
            holds = self.ingest_holds,
            left_at_broker = self.left_at_broker,
            nodata = self.nodata_raised,
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
