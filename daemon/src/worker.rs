//! DSP workers: named OS threads, each owning the pipelines of the sensor keys that hash to it.
//!
//! The MQTT task hands readings over with [`Workers::dispatch`], a `try_send` on the owning
//! worker's bounded crossbeam channel: it never blocks the async side, and a full queue drops
//! the reading and counts it. A worker blocks only while its queue is empty and never awaits;
//! anomaly events leave it through a bounded tokio channel with `try_send`, so a stalled
//! publisher costs counted events, never a stalled worker.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use sparsewatch_dsp::{Pipeline, PushOutcome, Sample, ValidPipelineParams, WindowReport};
use tokio::sync::mpsc;

use crate::metrics::{now_ms, LogLimiter, Metrics};
use crate::wire::{AnomalyMessage, CodeMessage, Reading};

/// Where a worker sends window codes, and how often.
#[derive(Clone)]
pub struct CodeSink {
    pub tx: mpsc::Sender<CodeMessage>,
    /// Every n-th window of a stream is sent.
    pub every: u64,
}

/// Everything a worker needs besides its queue.
#[derive(Clone)]
pub struct WorkerContext {
    pub node: String,
    pub pipeline: ValidPipelineParams,
    pub max_streams: usize,
    pub metrics: Arc<Metrics>,
    pub events: mpsc::Sender<AnomalyMessage>,
    pub codes: Option<CodeSink>,
    /// Streams tracked over all workers (bounded by `max_streams`).
    pub stream_count: Arc<AtomicUsize>,
}

/// The worker threads and the sending halves of their queues.
pub struct Workers {
    senders: Vec<Sender<Reading>>,
    handles: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl Workers {
    /// Starts `count` workers with queues of `queue_capacity` readings each.
    pub fn spawn(count: usize, queue_capacity: usize, ctx: WorkerContext) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            // Capacity: enough to ride out a burst while a worker scores a window; beyond
            // that, holding more only hides overload. Full → the reading is dropped and counted.
            let (tx, rx) = bounded::<Reading>(queue_capacity);
            let ctx = ctx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("dsp-worker-{i}"))
                .spawn(move || Worker::new(ctx).run(rx))?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(Self {
            senders,
            handles,
            metrics: ctx.metrics,
        })
    }

    /// Hands a reading to the worker that owns its key; never blocks.
    pub fn dispatch(&self, reading: Reading) {
        let idx = owner(&reading.key, self.senders.len());
        match self.senders[idx].try_send(reading) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) => {
                Metrics::inc(&self.metrics.dropped_samples);
                static LIMIT: LogLimiter = LogLimiter::new(10_000);
                if let Some(held) = LIMIT.allow(now_ms()) {
                    tracing::warn!(key = %r.key, worker = idx, suppressed = held, "worker queue full, sample dropped");
                }
            }
            Err(TrySendError::Disconnected(r)) => {
                // Only after a worker panicked: count the loss like any other drop.
                Metrics::inc(&self.metrics.dropped_samples);
                static GONE: LogLimiter = LogLimiter::new(10_000);
                if let Some(held) = GONE.allow(now_ms()) {
                    tracing::error!(key = %r.key, worker = idx, suppressed = held, "worker thread is gone, sample dropped");
                }
            }
        }
    }

    /// Closes the queues and waits until every worker has processed what was queued.
    pub fn join(self) {
        drop(self.senders);
        for h in self.handles {
            if h.join().is_err() {
                tracing::error!("a DSP worker panicked");
            }
        }
    }
}

/// The worker index that owns `key`: stable across runs of one build (std's SipHash with
/// fixed keys; the standard library does not promise the same output across releases).
pub fn owner(key: &str, workers: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

struct Stream {
    channel_names: Vec<String>,
    values: Vec<f64>,
    pipeline: Pipeline,
}

struct Worker {
    ctx: WorkerContext,
    streams: HashMap<String, Stream>,
}

static BAD_INPUT: LogLimiter = LogLimiter::new(10_000);

impl Worker {
    fn new(ctx: WorkerContext) -> Self {
        Self {
            ctx,
            streams: HashMap::new(),
        }
    }

    fn run(mut self, rx: Receiver<Reading>) {
        for reading in rx.iter() {
            self.handle(reading);
        }
    }

    fn handle(&mut self, r: Reading) {
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
            if let Some(held) = BAD_INPUT.allow(now_ms()) {
                tracing::warn!(key = %r.key, expected = ?stream.channel_names, suppressed = held, "channels differ from the stream's first sample; sample skipped");
            }
            return;
        }
        for (slot, (_, v)) in stream.values.iter_mut().zip(&r.channels) {
            *slot = *v;
        }
        let Ok(sample) = Sample::new(r.ts_ms, &stream.values) else {
            // The decoder already refuses non-finite values; this is a second line of defence.
            Metrics::inc(&m.payload_errors);
            return;
        };
        let result = stream.pipeline.push(sample);
        match result.outcome {
            PushOutcome::OutOfOrder => {
                Metrics::inc(&m.out_of_order);
                return;
            }
            PushOutcome::ChannelMismatch => {
                Metrics::inc(&m.channel_mismatch);
                return;
            }
            PushOutcome::AfterGap => Metrics::inc(&m.gaps),
            PushOutcome::Buffered | PushOutcome::WindowReady => {}
        }
        Metrics::inc(&m.samples);
        let Some(report) = result.report else { return };
        Metrics::inc(&m.windows);
        if let Some(sink) = &self.ctx.codes {
            send_code(sink, &self.ctx.node, &r.key, &stream.pipeline, &report, m);
        }
        let Some(d) = report.detection else { return };
        Metrics::inc(&m.detections);
        let detector = stream.pipeline.params().detector.name();
        let channel = &stream.channel_names[d.channel];
        let msg = AnomalyMessage::new(&self.ctx.node, &r.key, detector, channel, &d);
        tracing::info!(key = %r.key, seq = d.seq, window_start = %msg.window_start, likelihood = d.likelihood, channel = %channel, "anomaly");
        if self.ctx.events.try_send(msg).is_err() {
            Metrics::inc(&m.dropped_events);
            tracing::warn!(key = %r.key, seq = d.seq, "output queue full, anomaly event dropped");
        }
    }

    /// Creates the stream for a new key, unless `max_streams` are already tracked.
    fn open_stream(&mut self, r: &Reading) -> bool {
        let m = &self.ctx.metrics;
        let count = &self.ctx.stream_count;
        if count.fetch_add(1, Ordering::Relaxed) >= self.ctx.max_streams {
            count.fetch_sub(1, Ordering::Relaxed);
            Metrics::inc(&m.refused_streams);
            if let Some(held) = BAD_INPUT.allow(now_ms()) {
                tracing::warn!(key = %r.key, max_streams = self.ctx.max_streams, suppressed = held, "too many streams; new key refused");
            }
            return false;
        }
        let channels = r.channels.len();
        // The configuration is checked, but whether a detector fits this stream depends on
        // its channel count, which only the first sample tells (residual and memory need
        // window_len × channels ≤ coding.max_dim).
        let pipeline = match Pipeline::try_new(&self.ctx.pipeline, channels) {
            Ok(p) => p,
            Err(e) => {
                count.fetch_sub(1, Ordering::Relaxed);
                Metrics::inc(&m.refused_streams);
                if let Some(held) = BAD_INPUT.allow(now_ms()) {
                    tracing::warn!(key = %r.key, channels, error = %e, suppressed = held, "stream refused: the detector does not fit it");
                }
                return false;
            }
        };
        m.streams.fetch_add(1, Ordering::Relaxed);
        tracing::info!(key = %r.key, channels = ?r.channels.iter().map(|(n, _)| n).collect::<Vec<_>>(), "new stream");
        self.streams.insert(
            r.key.clone(),
            Stream {
                channel_names: r.channels.iter().map(|(n, _)| n.clone()).collect(),
                values: vec![0.0; channels],
                pipeline,
            },
        );
        true
    }
}

/// Sends the window's code when the stream has one and this window is due.
fn send_code(
    sink: &CodeSink,
    node: &str,
    key: &str,
    pipeline: &Pipeline,
    report: &WindowReport,
    m: &Metrics,
) {
    let Some(code) = pipeline.code() else { return };
    if report.index % sink.every != 0 {
        return;
    }
    let msg = CodeMessage::new(node, key, report, code);
    if sink.tx.try_send(msg).is_err() {
        Metrics::inc(&m.dropped_codes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsewatch_dsp::PipelineParams;

    fn ctx(max_streams: usize) -> (WorkerContext, mpsc::Receiver<AnomalyMessage>) {
        let (tx, rx) = mpsc::channel(16);
        let ctx = WorkerContext {
            node: "n".into(),
            pipeline: PipelineParams::default().check().unwrap(),
            max_streams,
            metrics: Arc::new(Metrics::default()),
            events: tx,
            codes: None,
            stream_count: Arc::new(AtomicUsize::new(0)),
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
        c.codes = Some(CodeSink { tx, every: 2 });
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
        let (tx, _keep) = bounded::<Reading>(1);
        let workers = Workers {
            senders: vec![tx],
            handles: vec![],
            metrics,
        };
        workers.dispatch(reading("k", 0, 0.0));
        workers.dispatch(reading("k", 1, 0.0));
        assert_eq!(c.metrics.snapshot().dropped_samples, 1);
    }
}
