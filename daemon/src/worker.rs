//! DSP workers: named OS threads, each owning the pipelines of the sensor keys that hash to it.
//!
//! The MQTT task hands readings over with [`Workers::try_dispatch`], a `try_send` on the owning
//! worker's bounded crossbeam channel: it never blocks the async side; a full queue hands the
//! reading back, and the ingest then holds it (stops reading) or sheds it, as configured. A
//! worker blocks only while its queue is empty (waking every so often to look for silent
//! streams) and never awaits; once it has taken a sample into its stream's state (or refused
//! it) it acknowledges the MQTT message ([`Acker`]). Events leave it through a bounded tokio
//! channel with `try_send`, so a stalled publisher costs counted events, never a stalled
//! worker.
//!
//! Besides readings, each worker takes [`Control`] requests on a small channel of its own
//! (snapshots for checkpoints, live settings on reload), beats its heartbeat
//! ([`metrics::Heartbeat`](crate::metrics::Heartbeat)) after every message and at least every
//! [`HEARTBEAT_EVERY`] while idle (the systemd watchdog is fed and `/healthz` passes only while
//! every worker beats), and hands back the encoded state of its streams when its queue closes,
//! for the final checkpoint.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use sparsewatch_dsp::score::AlertParams;
use sparsewatch_dsp::{
    LearnScratch, Pipeline, PushOutcome, Sample, ValidPipelineParams, WindowReport,
};
use tokio::sync::mpsc;

use crate::checkpoint::{self, StreamRecord};
use crate::metrics::{now_ms, Heartbeat, LogLimiter, Metrics, QueueKind};
use crate::mqtt::{AckToken, Acker};
use crate::wire::{AnomalyMessage, CodeMessage, NoDataMessage, OutboundEvent, Reading};

/// A reading on its way to its worker, with what the worker needs to acknowledge it.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub reading: Reading,
    /// The broker marked the message as a redelivery (DUP).
    pub dup: bool,
    /// Acknowledgement owed once the worker has taken the reading (QoS 1 with manual acks).
    pub ack: Option<AckToken>,
    /// The payload had no timestamp; `reading.ts_ms` is its arrival time, which the worker
    /// moves past the stream's last timestamp (see [`arrival_stamp`]).
    pub arrival_ts: bool,
}

impl Dispatch {
    /// A reading that needs no acknowledgement (tests, QoS 0).
    pub fn plain(reading: Reading) -> Self {
        Self {
            reading,
            dup: false,
            ack: None,
            arrival_ts: false,
        }
    }
}

/// The timestamp of a sample whose payload had none, received at `arrival_ms`, on a stream
/// whose last timestamp is `last_ts`: the arrival time, or 1 ms after the last one when that
/// is later. A backlog delivered within one millisecond (after an outage, or a burst) would
/// otherwise make every sample after the first a "duplicate" the framer refuses.
pub fn arrival_stamp(arrival_ms: i64, last_ts: Option<i64>) -> i64 {
    match last_ts {
        Some(last) => arrival_ms.max(last.saturating_add(1)),
        None => arrival_ms,
    }
}

/// Where a worker sends window codes, and how often.
#[derive(Clone)]
pub struct CodeSink {
    pub tx: mpsc::Sender<CodeMessage>,
    /// Every n-th window of a stream is sent.
    pub every: u64,
    /// Whether codes are sent at all (`output.codes.enabled`; a reload may change it).
    pub enabled: bool,
}

/// Everything a worker needs besides its queue.
#[derive(Clone)]
pub struct WorkerContext {
    pub node: String,
    pub pipeline: ValidPipelineParams,
    pub max_streams: usize,
    pub metrics: Arc<Metrics>,
    pub events: mpsc::Sender<OutboundEvent>,
    pub codes: Option<CodeSink>,
    /// Streams tracked over all workers (bounded by `max_streams`).
    pub stream_count: Arc<AtomicUsize>,
    /// Where acknowledgements go (None: nothing to acknowledge).
    pub acker: Option<Arc<Acker>>,
    /// Silence after which a stream raises a no-data condition (None: off).
    pub no_data_after: Option<Duration>,
}

/// How often an idle worker beats its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

/// Test hook, off unless set: the path of a gate file. While that file exists, every worker
/// leaves its queue alone (it still beats its heartbeat, and readings keep queueing up to
/// `workers.queue_capacity`); removing the file lets them go on. The e2e tests use it to have
/// the daemon hold readings while they stop the broker, so that the windows are scored (and
/// anomalies detected) during the outage, deterministically.
pub const GATE_ENV: &str = "SPARSEWATCH_TEST_WORKER_GATE";

/// How often a gated worker looks whether the gate file is gone.
const GATE_POLL: Duration = Duration::from_millis(10);

/// Requests to a worker besides readings.
pub enum Control {
    /// Encode every stream's state (checkpoint records) and send them back.
    Snapshot(Sender<Vec<Vec<u8>>>),
    /// Apply settings that may change while running, to every stream and to new ones.
    Reload(LiveWorkerSettings),
}

/// What a reload can change in a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveWorkerSettings {
    /// `pipeline.alert`: thresholds and hysteresis.
    pub alert: AlertParams,
    /// `output.codes.enabled` and `.every`: `Some(every)` while codes are published.
    pub codes_every: Option<u64>,
}

/// Handles on the workers that stay with the service: control requests and heartbeats.
#[derive(Clone)]
pub struct Controls {
    senders: Vec<Sender<Control>>,
    heartbeats: Vec<Arc<Heartbeat>>,
}

impl Controls {
    /// Controls over no worker, watching `heartbeats` (tests of the watchdog).
    #[cfg(test)]
    pub(crate) fn watching(heartbeats: Vec<Arc<Heartbeat>>) -> Self {
        Self {
            senders: Vec::new(),
            heartbeats,
        }
    }

    /// The time since the worker that beat least recently did; a worker that stalls (or
    /// died) makes this grow without bound.
    pub fn oldest_beat_age(&self) -> Duration {
        self.heartbeats
            .iter()
            .map(|h| h.age())
            .max()
            .unwrap_or_default()
    }

    /// Asks every worker for its streams' records; waits up to `timeout` in all. Blocks: call
    /// it off the async runtime.
    pub fn snapshot(&self, timeout: Duration) -> Result<Vec<Vec<u8>>, String> {
        let (tx, rx) = bounded(self.senders.len());
        for (i, s) in self.senders.iter().enumerate() {
            s.try_send(Control::Snapshot(tx.clone()))
                .map_err(|e| format!("worker {i} does not take requests: {e}"))?;
        }
        drop(tx);
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        for _ in 0..self.senders.len() {
            let part = rx
                .recv_deadline(deadline)
                .map_err(|e| format!("a worker did not answer the snapshot request: {e}"))?;
            records.extend(part);
        }
        Ok(records)
    }

    /// Sends live settings to every worker.
    pub fn reload(&self, live: &LiveWorkerSettings) -> Result<(), String> {
        for (i, s) in self.senders.iter().enumerate() {
            s.try_send(Control::Reload(live.clone()))
                .map_err(|e| format!("worker {i} does not take requests: {e}"))?;
        }
        Ok(())
    }
}

/// The worker threads and the sending halves of their queues.
pub struct Workers {
    senders: Vec<Sender<Dispatch>>,
    handles: Vec<JoinHandle<Vec<Vec<u8>>>>,
    metrics: Arc<Metrics>,
    acker: Option<Arc<Acker>>,
    controls: Controls,
}

impl Workers {
    /// Starts `count` workers with queues of `queue_capacity` readings each.
    pub fn spawn(count: usize, queue_capacity: usize, ctx: WorkerContext) -> std::io::Result<Self> {
        Self::spawn_restored(count, queue_capacity, ctx, Vec::new())
    }

    /// As [`spawn`](Self::spawn), each worker starting with the restored streams whose keys it
    /// owns (by key, whatever worker held them before).
    pub fn spawn_restored(
        count: usize,
        queue_capacity: usize,
        ctx: WorkerContext,
        restored: Vec<StreamRecord>,
    ) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        let mut control_senders = Vec::with_capacity(count);
        let mut heartbeats = Vec::with_capacity(count);
        let mut per_worker: Vec<Vec<StreamRecord>> = (0..count).map(|_| Vec::new()).collect();
        let gate = std::env::var_os(GATE_ENV).map(std::path::PathBuf::from);
        if let Some(g) = &gate {
            tracing::warn!(path = %g.display(), "test hook {GATE_ENV}: workers wait while this file exists");
        }
        for r in restored {
            per_worker[owner(&r.key, count)].push(r);
        }
        for (i, mine) in per_worker.into_iter().enumerate() {
            // Capacity: enough to ride out a burst while a worker scores a window; beyond
            // that, holding more only hides overload. Full → the ingest holds or sheds.
            let (tx, rx) = bounded::<Dispatch>(queue_capacity);
            let probe = rx.clone();
            ctx.metrics.queues.register(
                QueueKind::Worker,
                &i.to_string(),
                queue_capacity,
                move || Some(probe.len()),
            );
            let heartbeat = ctx.metrics.health.register_worker(&i.to_string());
            heartbeats.push(heartbeat.clone());
            // Capacity: control requests are rare (a checkpoint every few minutes, a reload
            // by hand); a full control queue fails that request, which is reported.
            let (ctl_tx, ctl_rx) = bounded::<Control>(4);
            let mut worker = Worker::new(ctx.clone());
            worker.gate = gate.clone();
            for r in mine {
                worker.restore(r);
            }
            let handle = std::thread::Builder::new()
                .name(format!("dsp-worker-{i}"))
                .spawn(move || worker.run(rx, ctl_rx, &heartbeat))?;
            senders.push(tx);
            handles.push(handle);
            control_senders.push(ctl_tx);
        }
        Ok(Self {
            senders,
            handles,
            metrics: ctx.metrics,
            acker: ctx.acker,
            controls: Controls {
                senders: control_senders,
                heartbeats,
            },
        })
    }

    /// Control requests and heartbeats, for the service.
    pub fn controls(&self) -> Controls {
        self.controls.clone()
    }

    /// Hands a reading to the worker that owns its key; never blocks. A full queue hands it
    /// back.
    pub fn try_dispatch(&self, d: Dispatch) -> Result<(), Dispatch> {
        let idx = owner(&d.reading.key, self.senders.len());
        match self.senders[idx].try_send(d) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(d)) => Err(d),
            Err(TrySendError::Disconnected(d)) => {
                // Only after a worker panicked: count the loss like any other drop, and
                // acknowledge it so the broker does not hold it for a worker that is gone.
                Metrics::inc(&self.metrics.dropped_samples);
                self.ack(&d);
                static GONE: LogLimiter = LogLimiter::new(10_000);
                if let Some(held) = GONE.allow(now_ms()) {
                    tracing::error!(key = %d.reading.key, worker = idx, suppressed = held, "worker thread is gone, sample dropped");
                }
                Ok(())
            }
        }
    }

    /// Drops a reading its worker has no room for: counted, and acknowledged (overload
    /// policy "shed").
    pub fn shed(&self, d: Dispatch) {
        Metrics::inc(&self.metrics.dropped_samples);
        self.ack(&d);
        static LIMIT: LogLimiter = LogLimiter::new(10_000);
        if let Some(held) = LIMIT.allow(now_ms()) {
            tracing::warn!(key = %d.reading.key, suppressed = held, "worker queue full, sample dropped");
        }
    }

    fn ack(&self, d: &Dispatch) {
        if let (Some(acker), Some(token)) = (&self.acker, d.ack) {
            acker.ack(token);
        }
    }

    /// Whether the queue of the worker that owns `key` is at most half full: the point at
    /// which a held ingest resumes (resuming at the first free slot would take one message
    /// per wake-up).
    pub fn has_room(&self, key: &str) -> bool {
        let q = &self.senders[owner(key, self.senders.len())];
        q.len() <= q.capacity().unwrap_or(usize::MAX) / 2
    }

    /// Closes the queues, waits until every worker has processed what was queued, and
    /// returns the encoded state of every stream (for the final checkpoint).
    pub fn join(self) -> Vec<Vec<u8>> {
        drop(self.senders);
        let mut records = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(r) => records.extend(r),
                Err(_) => tracing::error!(
                    "a DSP worker panicked; its streams are not in the final checkpoint"
                ),
            }
        }
        records
    }
}

/// The worker index that owns `key`: stable across runs of one build (std's SipHash with
/// fixed keys; the standard library does not promise the same output across releases).
pub fn owner(key: &str, workers: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// The seed of `key`'s learning stagger ([`Pipeline::with_learning_stagger`]): FNV-1a (64
/// bit) of the key's bytes, a fixed function, so every build, the daemon and `replay
/// --offline` give a key the same learning schedule (std's hasher promises no stable output).
pub fn learning_stagger(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

struct Stream {
    channel_names: Vec<String>,
    values: Vec<f64>,
    pipeline: Pipeline,
    /// Wall-clock arrival of the last sample, and whether a no-data condition is raised.
    last_arrival_ms: i64,
    silent: bool,
}

struct Worker {
    ctx: WorkerContext,
    streams: HashMap<String, Stream>,
    /// Work matrices of dictionary learning steps, shared by all of this worker's streams
    /// (one set per distinct window dimension, reserved when a stream is created), so a
    /// stream holds only its learner's state.
    scratch: LearnScratch,
    /// Live `output.codes` setting: `Some(every)` while codes are published.
    codes_every: Option<u64>,
    /// Test hook [`GATE_ENV`]: readings wait while this file exists.
    gate: Option<std::path::PathBuf>,
}

// One limit per reason a sample is refused, so that a flood of one cannot keep the others
// out of the log (each names the key, which is how a user finds the sender).
static CHANNELS_LOG: LogLimiter = LogLimiter::new(10_000);
static ORDER_LOG: LogLimiter = LogLimiter::new(10_000);
static VALUE_LOG: LogLimiter = LogLimiter::new(10_000);
static STREAMS_LOG: LogLimiter = LogLimiter::new(10_000);
static FIT_LOG: LogLimiter = LogLimiter::new(10_000);

impl Worker {
    fn new(ctx: WorkerContext) -> Self {
        Self {
            codes_every: ctx.codes.as_ref().filter(|c| c.enabled).map(|c| c.every),
            ctx,
            streams: HashMap::new(),
            gate: None,
            scratch: LearnScratch::new(),
        }
    }

    /// Handles readings and control requests until the reading queue closes, then returns
    /// the encoded streams. Beats `heartbeat` after each message and at least every
    /// [`HEARTBEAT_EVERY`] while idle (a worker stuck inside a reading stops beating). With
    /// `streams.no_data_after_secs` set it also looks for silent streams, about ten times per
    /// no-data period (20 ms..=250 ms).
    fn run(
        mut self,
        rx: Receiver<Dispatch>,
        ctl: Receiver<Control>,
        heartbeat: &Heartbeat,
    ) -> Vec<Vec<u8>> {
        let never = crossbeam_channel::never();
        let mut ctl_open = true;
        let after = self.ctx.no_data_after;
        let tick = after.map_or(HEARTBEAT_EVERY, |a| {
            (a / 10).clamp(Duration::from_millis(20), HEARTBEAT_EVERY)
        });
        let mut next_check = Instant::now() + tick;
        heartbeat.beat();
        loop {
            if self.gate.as_ref().is_some_and(|g| g.exists()) {
                heartbeat.beat();
                std::thread::sleep(GATE_POLL);
                continue;
            }
            let wait = next_check.saturating_duration_since(Instant::now());
            let requests = if ctl_open { &ctl } else { &never };
            crossbeam_channel::select! {
                recv(rx) -> d => match d {
                    Ok(d) => self.take(d),
                    Err(_) => break,
                },
                recv(requests) -> c => match c {
                    Ok(c) => self.control(c),
                    // The service is gone; keep handling readings.
                    Err(_) => ctl_open = false,
                },
                default(wait) => {}
            }
            heartbeat.beat();
            if Instant::now() >= next_check {
                if let Some(after) = after {
                    self.check_silence(now_ms(), after);
                }
                next_check = Instant::now() + tick;
            }
        }
        self.encode_all()
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Snapshot(reply) => {
                let _ = reply.send(self.encode_all());
            }
            Control::Reload(live) => {
                for (key, s) in &mut self.streams {
                    if let Err(e) = s.pipeline.set_alert_params(live.alert.clone()) {
                        tracing::error!(key = %key, error = %e, "alert parameters not applied");
                    }
                }
                let mut p = self.ctx.pipeline.get().clone();
                p.alert = live.alert;
                match p.check() {
                    Ok(v) => self.ctx.pipeline = v,
                    Err(e) => {
                        tracing::error!(error = %e, "alert parameters not applied to new streams")
                    }
                }
                self.codes_every = live.codes_every;
            }
        }
    }

    /// Checkpoint records of every stream this worker owns.
    fn encode_all(&self) -> Vec<Vec<u8>> {
        self.streams
            .iter()
            .map(|(key, s)| {
                checkpoint::encode_stream_state(key, &s.channel_names, &s.pipeline, s.silent)
            })
            .collect()
    }

    /// Takes over a stream from a checkpoint (counted like a new stream, within
    /// `max_streams`).
    fn restore(&mut self, r: StreamRecord) {
        if r.key.len() > crate::wire::MAX_KEY_BYTES {
            // A stream from before the key limit: it can take no more samples, and its events
            // could not be published; it would only hold a `max_streams` slot.
            Metrics::inc(&self.ctx.metrics.oversized_keys);
            let start: String = r.key.chars().take(64).collect();
            tracing::warn!(key_start = %start, key_bytes = r.key.len(), "restored stream dropped: its key is longer than the limit");
            return;
        }
        let count = &self.ctx.stream_count;
        if count.fetch_add(1, Ordering::Relaxed) >= self.ctx.max_streams {
            count.fetch_sub(1, Ordering::Relaxed);
            Metrics::inc(&self.ctx.metrics.refused_streams);
            tracing::warn!(key = %r.key, max_streams = self.ctx.max_streams, "restored stream refused: too many streams");
            return;
        }
        self.ctx.metrics.streams.fetch_add(1, Ordering::Relaxed);
        let channels = r.channels.len();
        r.pipeline.reserve_scratch(&mut self.scratch);
        log_if_codeless(&r.key, &r.pipeline);
        self.streams.insert(
            r.key,
            Stream {
                channel_names: r.channels,
                values: vec![0.0; channels],
                pipeline: r.pipeline,
                last_arrival_ms: now_ms(),
                // Its retained "active": true is still out: the first sample clears it.
                silent: r.silent,
            },
        );
    }

    /// Processes one reading, then acknowledges its message: the sample is in the stream's
    /// state (or was refused for good), so the broker need not keep it.
    fn take(&mut self, d: Dispatch) {
        let ack = d.ack;
        self.handle_dispatch(d.reading, d.dup, d.arrival_ts);
        if let (Some(acker), Some(token)) = (&self.ctx.acker, ack) {
            acker.ack(token);
        }
    }

    /// Raises the no-data condition of every stream silent for longer than `after`.
    fn check_silence(&mut self, now: i64, after: Duration) {
        let after_ms = after.as_millis() as i64;
        for (key, s) in self.streams.iter_mut() {
            if !s.silent && now - s.last_arrival_ms > after_ms {
                s.silent = true;
                Metrics::inc(&self.ctx.metrics.nodata_raised);
                tracing::warn!(key = %key, silent_for_ms = now - s.last_arrival_ms, "no data from stream");
                let msg = NoDataMessage::new(
                    &self.ctx.node,
                    key,
                    true,
                    s.last_arrival_ms,
                    now,
                    after.as_secs(),
                );
                send_event(&self.ctx, OutboundEvent::NoData(msg), key);
            }
        }
    }

    #[cfg(test)]
    fn handle(&mut self, r: Reading) {
        self.handle_dispatch(r, false, false);
    }

    fn handle_dispatch(&mut self, r: Reading, dup: bool, arrival_ts: bool) {
        if !self.streams.contains_key(&r.key) && !self.open_stream(&r) {
            return;
        }
        let m = &self.ctx.metrics;
        let stream = self.streams.get_mut(&r.key).expect("stream exists");
        let same_layout = stream.channel_names.len() == r.channels.len()
            && stream
                .channel_names
                .iter()
                .zip(&r.channels)
                .all(|(a, (b, _))| a == b);
        if !same_layout {
            Metrics::inc(&m.channel_mismatch);
            if let Some(held) = CHANNELS_LOG.allow(now_ms()) {
                let got: Vec<&str> = r.channels.iter().map(|(name, _)| name.as_str()).collect();
                tracing::warn!(key = %r.key, expected = ?stream.channel_names, got = ?got, suppressed = held, "channels differ from the stream's first sample; sample skipped");
            }
            return;
        }
        for (slot, (_, v)) in stream.values.iter_mut().zip(&r.channels) {
            *slot = *v;
        }
        let last_ts = stream.pipeline.last_ts();
        let ts_ms = if arrival_ts {
            arrival_stamp(r.ts_ms, last_ts)
        } else {
            r.ts_ms
        };
        let sample = match Sample::new(ts_ms, &stream.values) {
            Ok(sample) => sample,
            Err(e) => {
                // The decoder already refuses non-finite values; this is a second line of
                // defence.
                Metrics::inc(&m.payload_errors);
                if let Some(held) = VALUE_LOG.allow(now_ms()) {
                    tracing::warn!(key = %r.key, ts = ts_ms, error = %e, suppressed = held, "sample refused by the pipeline; skipped");
                }
                return;
            }
        };
        let now = now_ms();
        stream.last_arrival_ms = now;
        if stream.silent {
            stream.silent = false;
            Metrics::inc(&m.nodata_cleared);
            tracing::info!(key = %r.key, "data from stream again");
            if let Some(after) = self.ctx.no_data_after {
                let msg =
                    NoDataMessage::new(&self.ctx.node, &r.key, false, now, now, after.as_secs());
                send_event(&self.ctx, OutboundEvent::NoData(msg), &r.key);
            }
        }
        let started = std::time::Instant::now();
        let result = stream.pipeline.push_with(sample, &mut self.scratch);
        match result.outcome {
            PushOutcome::OutOfOrder => {
                // A redelivery (the broker says so, or the very timestamp of the last sample)
                // is a duplicate the protocol allows; anything else is out of order.
                if dup || last_ts == Some(ts_ms) {
                    Metrics::inc(&m.duplicates);
                } else {
                    Metrics::inc(&m.out_of_order);
                    if let Some(held) = ORDER_LOG.allow(now) {
                        tracing::warn!(key = %r.key, ts = ts_ms, last_ts = ?last_ts, suppressed = held, "timestamp not after the stream's last one; sample skipped (out of order)");
                    }
                }
                return;
            }
            PushOutcome::ChannelMismatch => {
                Metrics::inc(&m.channel_mismatch);
                if let Some(held) = CHANNELS_LOG.allow(now) {
                    tracing::warn!(key = %r.key, expected = ?stream.channel_names, suppressed = held, "channels differ from the stream's; sample skipped");
                }
                return;
            }
            PushOutcome::AfterGap => Metrics::inc(&m.gaps),
            PushOutcome::Buffered | PushOutcome::WindowReady => {}
        }
        Metrics::inc(&m.samples);
        let Some(report) = result.report else { return };
        m.latency.worker_window.observe(started.elapsed());
        Metrics::inc(&m.windows);
        if let (Some(sink), Some(every)) = (&self.ctx.codes, self.codes_every) {
            send_code(
                sink,
                every,
                &self.ctx.node,
                &r.key,
                &stream.pipeline,
                &report,
                m,
            );
        }
        let Some(d) = report.detection else { return };
        Metrics::inc(&m.detections);
        let detector = stream.pipeline.params().detector.name();
        let channel = &stream.channel_names[d.channel];
        let msg = AnomalyMessage::new(&self.ctx.node, &r.key, detector, channel, &d)
            .with_explanation(
                stream.pipeline.explanation().as_ref(),
                &stream.channel_names,
            );
        tracing::info!(key = %r.key, seq = d.seq, window_start = %msg.window_start, likelihood = d.likelihood, channel = %channel, "anomaly");
        send_event(&self.ctx, OutboundEvent::Anomaly(msg), &r.key);
    }

    /// Creates the stream for a new key, unless `max_streams` are already tracked.
    fn open_stream(&mut self, r: &Reading) -> bool {
        let m = &self.ctx.metrics;
        let count = &self.ctx.stream_count;
        if count.fetch_add(1, Ordering::Relaxed) >= self.ctx.max_streams {
            count.fetch_sub(1, Ordering::Relaxed);
            Metrics::inc(&m.refused_streams);
            if let Some(held) = STREAMS_LOG.allow(now_ms()) {
                tracing::warn!(key = %r.key, max_streams = self.ctx.max_streams, suppressed = held, "too many streams; new key refused");
            }
            return false;
        }
        let channels = r.channels.len();
        // The configuration is checked, but whether a detector fits this stream depends on
        // its channel count, which only the first sample tells (residual and memory need
        // window_len × channels ≤ coding.max_dim).
        let pipeline = match Pipeline::try_new(&self.ctx.pipeline, channels) {
            Ok(p) => p.with_learning_stagger(learning_stagger(&r.key)),
            Err(e) => {
                count.fetch_sub(1, Ordering::Relaxed);
                Metrics::inc(&m.refused_streams);
                if let Some(held) = FIT_LOG.allow(now_ms()) {
                    tracing::warn!(key = %r.key, channels, error = %e, suppressed = held, "stream refused: the detector does not fit it");
                }
                return false;
            }
        };
        m.streams.fetch_add(1, Ordering::Relaxed);
        pipeline.reserve_scratch(&mut self.scratch);
        tracing::info!(key = %r.key, channels = ?r.channels.iter().map(|(n, _)| n).collect::<Vec<_>>(), "new stream");
        log_if_codeless(&r.key, &pipeline);
        self.streams.insert(
            r.key.clone(),
            Stream {
                channel_names: r.channels.iter().map(|(n, _)| n.clone()).collect(),
                values: vec![0.0; channels],
                pipeline,
                last_arrival_ms: now_ms(),
                silent: false,
            },
        );
        true
    }
}

/// Hands an event to the publisher; a full output queue drops it (counted).
/// Says once, when a stream is created or restored, that it is too wide for the dictionary:
/// otherwise a user finds only that its code topic stays silent and its events carry no atoms.
/// Not rate-limited: once per stream.
fn log_if_codeless(key: &str, pipeline: &Pipeline) {
    let p = pipeline.params();
    if pipeline.dictionary().is_none() && p.coding.max_dim > 0 {
        tracing::info!(
            key = %key,
            window_dim = p.framer.window_len * pipeline.channels(),
            max_dim = p.coding.max_dim,
            "stream without codes: window_len × channels is above pipeline.coding.max_dim, \
             so no code messages and no atoms in its events (the dictionary costs O(n³))"
        );
    }
}

fn send_event(ctx: &WorkerContext, event: OutboundEvent, key: &str) {
    if ctx.events.try_send(event).is_err() {
        Metrics::inc(&ctx.metrics.dropped_events);
        tracing::warn!(key = %key, "output queue full, event dropped");
    }
}

/// Sends the window's code when the stream has one and this window is due.
fn send_code(
    sink: &CodeSink,
    every: u64,
    node: &str,
    key: &str,
    pipeline: &Pipeline,
    report: &WindowReport,
    m: &Metrics,
) {
    let Some(code) = pipeline.code() else { return };
    if report.index % every != 0 {
        return;
    }
    let msg = CodeMessage::new(node, key, report, code).with_recall(pipeline.recall());
    if sink.tx.try_send(msg).is_err() {
        Metrics::inc(&m.dropped_codes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsewatch_dsp::PipelineParams;

    fn ctx(max_streams: usize) -> (WorkerContext, mpsc::Receiver<OutboundEvent>) {
        let (tx, rx) = mpsc::channel(16);
        let ctx = WorkerContext {
            node: "n".into(),
            pipeline: PipelineParams::default().check().unwrap(),
            max_streams,
            metrics: Arc::new(Metrics::default()),
            events: tx,
            codes: None,
            stream_count: Arc::new(AtomicUsize::new(0)),
            acker: None,
            no_data_after: None,
        };
        (ctx, rx)
    }

    fn reading(key: &str, ts: i64, v: f64) -> Reading {
        Reading {
            key: key.into(),
            ts_ms: ts,
            channels: vec![("a".into(), v), ("b".into(), -v)],
        }
    }

    #[test]
    fn the_learning_stagger_is_fnv1a_of_the_key_and_spreads_keys_evenly() {
        // The published FNV-1a 64 test vectors: the seed must never change across builds.
        assert_eq!(learning_stagger(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(learning_stagger("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(learning_stagger("foobar"), 0x8594_4171_f739_67e8);
        // Keys like the load generator's: every residue of a minibatch of 32 is used, none
        // by more than twice its share.
        let mut per_offset = [0usize; 32];
        for k in 0..1000 {
            per_offset[(learning_stagger(&format!("t/load/k{k}")) % 32) as usize] += 1;
        }
        assert!(
            per_offset.iter().all(|&n| n > 0 && n <= 2 * 1000 / 32),
            "{per_offset:?}"
        );
    }

    #[test]
    fn a_new_stream_gets_the_learning_stagger_of_its_key() {
        let (c, _rx) = ctx(2);
        let mut w = Worker::new(c);
        w.handle(reading("plant/pump-7", 0, 1.0));
        let p = &w.streams["plant/pump-7"].pipeline;
        let b = p.dictionary().unwrap().minibatch() as u64;
        assert_eq!(
            p.learning_stagger_left() as u64,
            learning_stagger("plant/pump-7") % b
        );
    }

    #[test]
    fn counts_samples_windows_refusals_and_mismatches() {
        let (c, _rx) = ctx(2);
        let metrics = c.metrics.clone();
        let mut w = Worker::new(c);
        for t in 0..40 {
            w.handle(reading("k1", t, t as f64));
        }
        w.handle(reading("k1", 5, 0.0)); // out of order
        w.handle(Reading {
            key: "k1".into(),
            ts_ms: 100,
            channels: vec![("a".into(), 1.0)],
        });
        w.handle(reading("k2", 0, 0.0));
        w.handle(reading("k3", 0, 0.0)); // third key: refused
        let s = metrics.snapshot();
        // Window 32, hop 4: windows end at samples 32, 36 and 40.
        assert_eq!((s.samples, s.windows), (41, 3));
        // One latency observation per completed window.
        assert_eq!(metrics.latency.worker_window.snapshot().count(), 3);
        assert_eq!(
            (
                s.out_of_order,
                s.channel_mismatch,
                s.refused_streams,
                s.streams
            ),
            (1, 1, 1, 2)
        );
    }

    #[test]
    fn codes_are_decimated_and_counted_when_the_queue_is_full() {
        let (mut c, _rx) = ctx(10);
        let (tx, mut codes) = mpsc::channel(3);
        c.codes = Some(CodeSink {
            tx,
            every: 2,
            enabled: true,
        });
        let metrics = c.metrics.clone();
        let mut w = Worker::new(c);
        // 32 + 4·18 samples: windows 0..=18, of which the 10 even ones are due; 3 fit the
        // queue, 7 are dropped.
        for t in 0..104 {
            w.handle(reading("k1", t, (t as f64 * 0.3).sin()));
        }
        let mut got = vec![];
        while let Ok(msg) = codes.try_recv() {
            assert_eq!(msg.atoms.len(), 8);
            assert_eq!(msg.atoms.len(), msg.coefficients.len());
            got.push(msg.window);
        }
        assert_eq!(got, vec![0, 2, 4]);
        assert_eq!(metrics.snapshot().dropped_codes, 7);
    }

    #[test]
    fn a_stream_the_detector_cannot_fit_is_refused_not_a_panic() {
        let (mut c, _rx) = ctx(10);
        let params = PipelineParams {
            detector: sparsewatch_dsp::DetectorKind::Residual,
            ..Default::default()
        };
        c.pipeline = params.check().unwrap();
        let metrics = c.metrics.clone();
        let mut w = Worker::new(c);
        // 9 channels × window 32 = 288 > max_dim 256: no dictionary, so no residual detector.
        let wide = Reading {
            key: "wide".into(),
            ts_ms: 0,
            channels: (0..9).map(|i| (format!("c{i}"), 1.0)).collect(),
        };
        w.handle(wide);
        w.handle(reading("narrow", 0, 1.0));
        let s = metrics.snapshot();
        assert_eq!((s.refused_streams, s.streams), (1, 1));
    }

    #[test]
    fn ownership_is_stable_and_spread() {
        assert_eq!(owner("plant1/pump1", 4), owner("plant1/pump1", 4));
        let used: std::collections::HashSet<usize> =
            (0..64).map(|i| owner(&format!("k{i}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (c, _rx) = ctx(10);
        let metrics = c.metrics.clone();
        // A worker pool whose thread we keep busy is racy; use the channel directly instead.
        let (tx, _keep) = bounded::<Dispatch>(2);
        let workers = Workers {
            senders: vec![tx],
            handles: vec![],
            metrics,
            acker: None,
            controls: Controls {
                senders: vec![],
                heartbeats: vec![],
            },
        };
        assert!(workers.has_room("k"));
        assert!(workers
            .try_dispatch(Dispatch::plain(reading("k", 0, 0.0)))
            .is_ok());
        assert!(workers.has_room("k"), "half full still has room");
        assert!(workers
            .try_dispatch(Dispatch::plain(reading("k", 1, 0.0)))
            .is_ok());
        assert!(!workers.has_room("k"));
        let back = workers
            .try_dispatch(Dispatch::plain(reading("k", 2, 0.0)))
            .expect_err("full: handed back");
        assert_eq!(back.reading.ts_ms, 2);
        assert_eq!(
            c.metrics.snapshot().dropped_samples,
            0,
            "holding drops nothing"
        );
        workers.shed(back);
        assert_eq!(c.metrics.snapshot().dropped_samples, 1);
    }

    #[test]
    fn redeliveries_are_duplicates_not_samples() {
        let (c, _rx) = ctx(10);
        let metrics = c.metrics.clone();
        let mut w = Worker::new(c);
        for t in 0..10 {
            w.handle(reading("k", t, t as f64));
        }
        w.handle(reading("k", 9, 9.0)); // the last sample again
        w.handle_dispatch(reading("k", 4, 4.0), true, false); // an older one the broker marked DUP
        w.handle(reading("k", 3, 3.0)); // older, not marked: out of order
        w.handle_dispatch(reading("k", 10, 10.0), true, false); // DUP but new to us: a sample
        let s = metrics.snapshot();
        assert_eq!((s.samples, s.duplicates, s.out_of_order), (11, 2, 1));
    }

    #[test]
    fn a_silent_stream_raises_no_data_once_and_clears_on_data() {
        let (mut c, mut rx) = ctx(10);
        c.no_data_after = Some(Duration::from_secs(5));
        let metrics = c.metrics.clone();
        let mut w = Worker::new(c);
        w.handle(reading("quiet", 0, 0.0));
        w.handle(reading("busy", 0, 0.0));
        let t0 = w.streams["quiet"].last_arrival_ms;
        w.streams.get_mut("busy").unwrap().last_arrival_ms = t0 + 4_000;
        w.check_silence(t0 + 5_000, Duration::from_secs(5));
        assert!(rx.try_recv().is_err(), "not silent for longer than 5 s yet");
        w.check_silence(t0 + 5_001, Duration::from_secs(5));
        w.check_silence(t0 + 6_000, Duration::from_secs(5));
        let Ok(OutboundEvent::NoData(m)) = rx.try_recv() else {
            panic!("a no-data event")
        };
        assert_eq!(
            (m.key.as_str(), m.active, m.last_data_ms),
            ("quiet", true, t0)
        );
        assert!(
            rx.try_recv().is_err(),
            "raised once, and only for the silent stream"
        );
        w.handle(reading("quiet", 1, 1.0));
        let Ok(OutboundEvent::NoData(m)) = rx.try_recv() else {
            panic!("a cleared no-data event")
        };
        assert_eq!((m.key.as_str(), m.active), ("quiet", false));
        let s = metrics.snapshot();
        assert_eq!((s.nodata_raised, s.nodata_cleared), (1, 1));
    }

    /// The records a checkpoint would hold for `w`'s streams, decoded.
    fn checkpointed(w: &Worker) -> Vec<StreamRecord> {
        w.encode_all()
            .iter()
            .map(|b| ciborium::from_reader(b.as_slice()).unwrap())
            .collect()
    }

    /// A new worker with `records` restored into it, as at a start.
    fn restored(c: WorkerContext, records: Vec<StreamRecord>) -> Worker {
        let mut w = Worker::new(c);
        for r in records {
            w.restore(r);
        }
        w
    }

    /// A stream whose no-data condition was raised when the checkpoint was written publishes
    /// the clear at its first sample after a restart; before, the flag was not in the record
    /// and the retained `"active": true` stayed forever.
    #[test]
    fn a_restored_silent_stream_clears_no_data_at_its_first_sample() {
        let (mut c, mut rx) = ctx(10);
        c.no_data_after = Some(Duration::from_secs(5));
        let mut w = Worker::new(c);
        w.handle(reading("quiet", 0, 0.0));
        w.handle(reading("busy", 0, 0.0));
        let t0 = w.streams["quiet"].last_arrival_ms;
        w.streams.get_mut("busy").unwrap().last_arrival_ms = t0 + 6_000;
        w.check_silence(t0 + 6_000, Duration::from_secs(5));
        assert!(matches!(rx.try_recv(), Ok(OutboundEvent::NoData(m)) if m.active));
        let records = checkpointed(&w);
        assert_eq!(records.len(), 2);

        let (mut c, mut rx) = ctx(10);
        c.no_data_after = Some(Duration::from_secs(5));
        let metrics = c.metrics.clone();
        let w = &mut restored(c, records);
        w.handle(reading("busy", 1, 1.0));
        assert!(
            rx.try_recv().is_err(),
            "a stream that was not silent clears nothing"
        );
        w.handle(reading("quiet", 1, 1.0));
        let Ok(OutboundEvent::NoData(m)) = rx.try_recv() else {
            panic!("a cleared no-data event")
        };
        assert_eq!((m.key.as_str(), m.active), ("quiet", false));
        assert_eq!(metrics.snapshot().nodata_cleared, 1);
    }

    /// A stream restored from before the key limit, with a key over it, is dropped and
    /// counted: it could take no sample and publish no event, and would hold a slot.
    #[test]
    fn a_restored_stream_with_a_key_over_the_limit_is_dropped() {
        let (c, _rx) = ctx(10);
        let mut w = Worker::new(c);
        let long = "k".repeat(crate::wire::MAX_KEY_BYTES + 1);
        w.handle(reading("ok", 0, 0.0));
        w.handle(reading(&long, 0, 0.0));
        let records = checkpointed(&w);
        assert_eq!(records.len(), 2);
        let (c, _rx) = ctx(10);
        let metrics = c.metrics.clone();
        let w = &mut restored(c, records);
        assert_eq!(w.streams.len(), 1);
        assert!(w.streams.contains_key("ok"));
        let snap = metrics.snapshot();
        assert_eq!((snap.oversized_keys, snap.streams), (1, 1));
    }

    /// A record written before `silent` existed still loads, as a stream that is not silent.
    #[test]
    fn a_stream_record_without_the_silent_flag_loads() {
        #[derive(serde::Serialize)]
        struct OldRecord<'a> {
            key: &'a str,
            channels: &'a [String],
            pipeline: &'a Pipeline,
        }
        let pipeline = Pipeline::new(&PipelineParams::default().check().unwrap(), 2);
        let channels = ["a".to_string(), "b".to_string()];
        let mut bytes = vec![];
        let old = OldRecord {
            key: "k",
            channels: &channels,
            pipeline: &pipeline,
        };
        ciborium::into_writer(&old, &mut bytes).unwrap();
        let r: StreamRecord = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!((r.key.as_str(), r.silent), ("k", false));
    }

    /// Timestamp-less samples delivered within one millisecond (a backlog after an outage)
    /// are all taken, stamped 1 ms apart; before, every one after the first was refused as a
    /// duplicate of the first's arrival time.
    #[test]
    fn a_burst_without_timestamps_is_taken_not_refused_as_duplicates() {
        let (c, _rx) = ctx(10);
        let metrics = c.metrics.clone();
        let mut w = Worker::new(c);
        for i in 0..40 {
            w.take(Dispatch {
                arrival_ts: true,
                ..Dispatch::plain(reading("k", 5_000, f64::from(i)))
            });
        }
        let s = metrics.snapshot();
        assert_eq!((s.samples, s.duplicates, s.out_of_order), (40, 0, 0));
        assert_eq!(s.windows, 3, "window 32, hop 4: samples 32, 36 and 40");
        assert_eq!(w.streams["k"].pipeline.last_ts(), Some(5_039));
        // A later arrival time is taken as it is.
        w.take(Dispatch {
            arrival_ts: true,
            ..Dispatch::plain(reading("k", 9_000, 1.0))
        });
        assert_eq!(w.streams["k"].pipeline.last_ts(), Some(9_000));
        // A payload's own timestamp is never moved: a repeat is a duplicate.
        w.take(Dispatch::plain(reading("k", 9_000, 1.0)));
        assert_eq!(metrics.snapshot().duplicates, 1);
    }

    #[test]
    fn arrival_stamps_move_past_the_last_timestamp_only() {
        assert_eq!(arrival_stamp(100, None), 100);
        assert_eq!(arrival_stamp(100, Some(50)), 100);
        assert_eq!(arrival_stamp(100, Some(100)), 101);
        assert_eq!(arrival_stamp(100, Some(250)), 251);
    }
}
