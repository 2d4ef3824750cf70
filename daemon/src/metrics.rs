//! Everything the daemon measures about itself, shared by the MQTT task, the workers, the
//! publisher and the HTTP endpoint, plus the periodic one-line summary.
//!
//! - Counters: plain relaxed atomics; each is independent and only ever read for display.
//! - [`Latencies`]: per-stage [`Histogram`]s (fixed log-scale buckets, atomics, no allocation
//!   per observation).
//! - [`Health`]: what `/healthz` and `/readyz` decide on — broker connected, state restored,
//!   stopping, worker heartbeats, time of the last message and of the last checkpoint.
//! - Queue probes: closures that read a queue's depth when `/metrics` is scraped, so queues
//!   cost nothing extra per message.
//!
//! `/metrics` renders all of it in the Prometheus text format ([`exposition`]).

pub mod exposition;
pub mod histogram;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use histogram::{Histogram, HistogramSnapshot};

use crate::wire::{PayloadError, PayloadErrorKind};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Every count the daemon keeps (all monotonic except `streams`), and the latency
        /// histograms, health state and queue probes behind `/metrics`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// Per-stage latency histograms.
            pub latency: Latencies,
            /// Liveness and readiness state.
            pub health: Health,
            /// Queue depth probes, read at scrape time.
            pub queues: QueueProbes,
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

        impl Snapshot {
            /// Calls `f(name, help, value)` for every counter, in declaration order; `help` is
            /// the counter's doc comment.
            pub fn for_each(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
                $(f(stringify!($name), concat!($($doc),*), self.$name);)*
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
    /// Topics whose sensor key is longer than `wire::MAX_KEY_BYTES` (256) bytes, refused: the
    /// key would make outgoing topics too long for MQTT.
    oversized_keys,
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
    /// No-data conditions raised (a stream that was flowing went silent).
    nodata_raised,
    /// No-data conditions cleared by the stream's next sample.
    nodata_cleared,
    /// Streams restored from a checkpoint at start.
    restored_streams,
    /// Checkpoints written (periodic and at stop).
    checkpoints_written,
    /// Checkpoint writes that failed (full disk, I/O error, a worker that did not answer).
    checkpoint_failures,
    /// Checkpoint files (or streams in them) rejected at start: corrupt, incompatible, or
    /// learned with a different model configuration.
    checkpoint_rejected,
    /// Configuration reloads applied (SIGHUP).
    reloads,
    /// Configuration reloads rejected (the new file did not load or validate).
    reload_failures,
    /// Compactions of the outbox spool file at start that failed (full disk, I/O error): the
    /// daemon starts anyway and appends to the file as it was (or keeps events in memory only
    /// when it cannot reopen it).
    spool_failures,
    /// Outgoing publishes dropped as invalid before they reached the client: a topic longer
    /// than MQTT's 65 535 bytes or with a wildcard. Also counted as `dropped_events` or
    /// `dropped_codes`.
    invalid_publishes,
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

/// Counters exposed as Prometheus gauges (they can go down); every other counter is a counter.
pub const GAUGE_COUNTERS: &[&str] = &["streams", "events_buffered"];

/// Counters left out of `/metrics` because another family already says the same:
/// `broker_connected` is exposed once, as the health gauge `sparsewatch_broker_connected`.
pub const NOT_EXPOSED: &[&str] = &["broker_connected"];

/// Latency of each stage that handles live traffic.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Ingest task, per PUBLISH: topic → key, payload decode and dispatch to a worker.
    pub ingest_decode: Histogram,
    /// Worker, per completed window: the `Pipeline::push` that completed it (framing,
    /// normalising, coding, scoring, learning).
    pub worker_window: Histogram,
    /// Publisher, per anomaly event: handing the QoS 1 PUBLISH to the MQTT client (waits only
    /// when the client's request queue is full).
    pub publish_event: Histogram,
}

impl Latencies {
    /// `(stage label, histogram)` for each stage.
    pub fn stages(&self) -> [(&'static str, &Histogram); 3] {
        [
            ("ingest_decode", &self.ingest_decode),
            ("worker_window", &self.worker_window),
            ("publish_event", &self.publish_event),
        ]
    }
}

/// Milliseconds on a monotonic clock that starts near process start. Heartbeats and stall
/// checks use it so a wall-clock step cannot make a worker look dead.
pub fn mono_ms() -> i64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// One worker's liveness: the monotonic time of its last sign of life. A worker beats after
/// every reading and at least once a second while idle; one that stops beating is stuck.
#[derive(Debug)]
pub struct Heartbeat {
    pub name: String,
    last_mono_ms: AtomicI64,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_mono_ms.store(mono_ms(), Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let ms = mono_ms() - self.last_mono_ms.load(Ordering::Relaxed);
        Duration::from_millis(ms.max(0) as u64)
    }
}

/// What the health endpoints decide on. Written by the tasks that know each fact; read by
/// `/healthz`, `/readyz` and `/metrics` (and by the service's watchdog, if it wants).
#[derive(Debug)]
pub struct Health {
    /// True between a ConnAck and the next connection error. The ingest task owns it (the
    /// service hands this `Arc` to the ingest task as its `connected` flag).
    pub broker_connected: Arc<AtomicBool>,
    /// False while learned state is being restored from a checkpoint; `/readyz` is 503 until
    /// it is true. Defaults to true (nothing to restore); the checkpoint code sets it false
    /// before restoring and true after.
    pub state_restored: AtomicBool,
    /// Set when the daemon has begun to stop; `/readyz` is 503 from then on.
    pub stopping: AtomicBool,
    /// True from the broker's SUBACK to the next connection error: until then messages
    /// published to the input topics may not reach the daemon, so `/readyz` waits for it.
    pub subscribed: AtomicBool,
    /// Wall-clock time (Unix ms) of the last checkpoint written, 0 = none yet. The checkpoint
    /// code stores it after each successful write (or restore); `/metrics` shows it as
    /// `sparsewatch_last_checkpoint_timestamp_seconds` and `sparsewatch_checkpoint_age_seconds`.
    pub last_checkpoint_unix_ms: AtomicI64,
    /// Monotonic time ([`mono_ms`]) of the last PUBLISH received, -1 = none yet.
    pub last_message_mono_ms: AtomicI64,
    /// Monotonic time of the last ConnAck, -1 = never connected.
    pub connected_mono_ms: AtomicI64,
    heartbeats: Mutex<Vec<Arc<Heartbeat>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            broker_connected: Arc::new(AtomicBool::new(false)),
            state_restored: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            last_checkpoint_unix_ms: AtomicI64::new(0),
            last_message_mono_ms: AtomicI64::new(-1),
            connected_mono_ms: AtomicI64::new(-1),
            heartbeats: Mutex::new(Vec::new()),
        }
    }
}

/// Why the daemon is not healthy or not ready; empty when it is.
pub type Problems = Vec<String>;

impl Health {
    /// A heartbeat for a new worker called `name` (replacing one of the same name), beaten once.
    pub fn register_worker(&self, name: &str) -> Arc<Heartbeat> {
        let hb = Arc::new(Heartbeat {
            name: name.to_string(),
            last_mono_ms: AtomicI64::new(mono_ms()),
        });
        let mut all = self.heartbeats.lock().expect("heartbeats lock");
        all.retain(|h| h.name != name);
        all.push(hb.clone());
        hb
    }

    /// Every registered worker's heartbeat.
    pub fn heartbeats(&self) -> Vec<Arc<Heartbeat>> {
        self.heartbeats.lock().expect("heartbeats lock").clone()
    }

    /// Records a PUBLISH received now.
    pub fn message_received(&self) {
        self.last_message_mono_ms
            .store(mono_ms(), Ordering::Relaxed);
    }

    /// Records a connection to the broker now.
    pub fn connected(&self) {
        self.broker_connected.store(true, Ordering::Relaxed);
        self.connected_mono_ms.store(mono_ms(), Ordering::Relaxed);
    }

    /// Liveness: every worker has beaten within `stall`. (The process answering at all
    /// shows the runtime is alive.)
    pub fn liveness(&self, stall: Duration) -> Problems {
        self.heartbeats()
            .iter()
            .filter(|h| h.age() > stall)
            .map(|h| {
                format!(
                    "worker {} has not made progress for {} s",
                    h.name,
                    h.age().as_secs()
                )
            })
            .collect()
    }

    /// Readiness: not stopping, broker connected, state restored, and — when `input_stall`
    /// is set — a message received within `input_stall` (or, if none since the connection,
    /// connected for less than that).
    pub fn readiness(&self, input_stall: Option<Duration>) -> Problems {
        self.readiness_at(input_stall, mono_ms())
    }

    fn readiness_at(&self, input_stall: Option<Duration>, now_mono_ms: i64) -> Problems {
        let mut p = Problems::new();
        if self.stopping.load(Ordering::Relaxed) {
            p.push("stopping".into());
        }
        if !self.broker_connected.load(Ordering::Relaxed) {
            p.push("not connected to the broker".into());
        } else if !self.subscribed.load(Ordering::Relaxed) {
            p.push("not subscribed yet".into());
        }
        if !self.state_restored.load(Ordering::Relaxed) {
            p.push("learned state not restored yet".into());
        }
        if let Some(limit) = input_stall {
            let since = self
                .last_message_mono_ms
                .load(Ordering::Relaxed)
                .max(self.connected_mono_ms.load(Ordering::Relaxed));
            let quiet = Duration::from_millis((now_mono_ms - since).max(0) as u64);
            if since >= 0 && quiet > limit {
                p.push(format!("no input for {} s", quiet.as_secs()));
            }
        }
        p
    }
}

/// Where a probed queue sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// A DSP worker's input queue (label: the worker index).
    Worker,
    /// An output queue towards the publisher (label: `events` or `codes`).
    Output,
}

/// Reads a queue's current depth; `None` once the queue is gone.
pub type DepthFn = Box<dyn Fn() -> Option<usize> + Send + Sync>;

/// One probed queue.
pub struct QueueProbe {
    pub kind: QueueKind,
    pub label: String,
    pub capacity: usize,
    depth: DepthFn,
}

impl QueueProbe {
    pub fn depth(&self) -> Option<usize> {
        (self.depth)()
    }
}

impl std::fmt::Debug for QueueProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProbe")
            .field("kind", &self.kind)
            .field("label", &self.label)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The queues `/metrics` reports depths of. A probe must not keep its queue alive (hold a
/// receiver or a weak sender, never a sender), or the queue would never close at shutdown.
#[derive(Debug, Default)]
pub struct QueueProbes(Mutex<Vec<QueueProbe>>);

impl QueueProbes {
    /// Adds a probe, replacing one with the same kind and label.
    pub fn register(
        &self,
        kind: QueueKind,
        label: &str,
        capacity: usize,
        depth: impl Fn() -> Option<usize> + Send + Sync + 'static,
    ) {
        let mut all = self.0.lock().expect("queue probes lock");
        all.retain(|p| !(p.kind == kind && p.label == label));
        all.push(QueueProbe {
            kind,
            label: label.to_string(),
            capacity,
            depth: Box::new(depth),
        });
    }

    /// Calls `f` for each probe, in registration order.
    pub fn for_each(&self, mut f: impl FnMut(&QueueProbe)) {
        for p in self.0.lock().expect("queue probes lock").iter() {
            f(p);
        }
    }
}

impl Metrics {
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
            oversized_keys = self.oversized_keys,
            out_of_order = self.out_of_order,
            channel_mismatch = self.channel_mismatch,
            gaps = self.gaps,
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
    fn summary_line_names_every_refusal_of_a_sample() {
        // Samples of a known stream with other channels, or after a gap, are counted apart from
        // payload_errors and drops; the summary line must show them, or thousands of skipped
        // samples look like a quiet, healthy daemon.
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let snapshot = Snapshot {
            channel_mismatch: 7204,
            gaps: 3,
            ..Snapshot::default()
        };
        tracing::subscriber::with_default(subscriber, || snapshot.log("summary"));
        let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(line.contains("channel_mismatch=7204"), "{line}");
        assert!(line.contains("gaps=3"), "{line}");
    }

    #[test]
    fn readiness_names_each_missing_condition() {
        let h = Health::default();
        let p = h.readiness(None);
        assert_eq!(p, vec!["not connected to the broker".to_string()]);
        h.connected();
        assert_eq!(h.readiness(None), vec!["not subscribed yet".to_string()]);
        h.subscribed.store(true, Ordering::Relaxed);
        assert!(h.readiness(None).is_empty());
        assert!(h.readiness(Some(Duration::from_secs(60))).is_empty());
        h.state_restored.store(false, Ordering::Relaxed);
        h.stopping.store(true, Ordering::Relaxed);
        assert_eq!(h.readiness(None).len(), 2);
    }

    #[test]
    fn input_stall_counts_from_the_connection_then_the_last_message() {
        let h = Health::default();
        let limit = Some(Duration::from_secs(2));
        h.connected();
        h.subscribed.store(true, Ordering::Relaxed);
        let t0 = h.connected_mono_ms.load(Ordering::Relaxed);
        assert!(h.readiness_at(limit, t0 + 1_000).is_empty());
        let p = h.readiness_at(limit, t0 + 5_000);
        assert_eq!(p, vec!["no input for 5 s".to_string()]);
        h.last_message_mono_ms.store(t0 + 4_000, Ordering::Relaxed);
        assert!(h.readiness_at(limit, t0 + 5_000).is_empty());
        assert!(!h.readiness_at(limit, t0 + 7_000).is_empty());
    }

    #[test]
    fn a_worker_that_stops_beating_fails_liveness() {
        let h = Health::default();
        let a = h.register_worker("0");
        let b = h.register_worker("1");
        assert!(h.liveness(Duration::from_secs(10)).is_empty());
        b.last_mono_ms.store(mono_ms() - 20_000, Ordering::Relaxed);
        a.beat();
        let p = h.liveness(Duration::from_secs(10));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("worker 1"), "{p:?}");
        // Re-registering a name replaces the old heartbeat.
        h.register_worker("1");
        assert!(h.liveness(Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn drops_add_up() {
        let m = Metrics::default();
        Metrics::inc(&m.dropped_samples);
        Metrics::inc(&m.refused_streams);
        assert_eq!(m.snapshot().drops(), 2);
    }
}
