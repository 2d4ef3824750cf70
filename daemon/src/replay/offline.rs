//! Offline replay: a recording through the daemon's pipeline in one thread, writing what the
//! daemon would publish, one JSON line per message:
//!
//! ```json
//! {"topic":"sparsewatch/edge-1/anomaly/plant1/pump1","payload":{"schema":1,…}}
//! ```
//!
//! `topic` is the topic the message would have had on the bus and `payload` its JSON payload,
//! built by the same constructors the workers use ([`AnomalyMessage::new`],
//! [`CodeMessage::new`]). Code messages follow `[output.codes]` (`enabled`, `every`); they are
//! always written as JSON (`format = "cbor"` changes only the encoding on the bus) and
//! `max_per_sec` (a wall-clock rate limit) does not apply. Messages are processed in file
//! order and the arrival time of a payload without `ts` is the recording's `time_ms`, so the
//! same input and configuration give byte-identical output.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;
use sparsewatch_dsp::{Pipeline, PushOutcome, Sample};

use super::input::{Recording, Skip};
use crate::config::ValidSettings;
use crate::mqtt::{anomaly_topic, code_topic};
use crate::wire::{
    decode_payload_stamped, looks_like_seconds, AnomalyMessage, CodeMessage, TsSource,
    MAX_KEY_BYTES,
};

/// One output line.
#[derive(Serialize)]
struct Line<'a, P: Serialize> {
    topic: &'a str,
    payload: &'a P,
}

/// Everything one sensor key went through, kept for plots and the summary.
#[derive(Debug, Clone, Default)]
pub struct StreamTrace {
    pub key: String,
    pub channel_names: Vec<String>,
    /// Accepted samples: event time and values (row-major, one per channel).
    pub ts_ms: Vec<i64>,
    pub values: Vec<f64>,
    /// Per window: end time, raw score, likelihood (`None` during warm-up).
    pub windows: Vec<(i64, f64, Option<f64>)>,
    /// Detections: window start and end.
    pub detections: Vec<(i64, i64)>,
    pub threshold: f64,
}

impl StreamTrace {
    /// Channel `c`'s values.
    pub fn channel(&self, c: usize) -> impl Iterator<Item = f64> + '_ {
        self.values
            .iter()
            .skip(c)
            .step_by(self.channel_names.len())
            .copied()
    }
}

/// What happened to the input, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub messages: u64,
    pub samples: u64,
    pub windows: u64,
    pub detections: u64,
    pub codes: u64,
    /// Samples the framer refused (duplicate or earlier timestamp of the same key).
    pub out_of_order: u64,
    pub gaps: u64,
    /// Messages skipped: topic off the template, bad payload, other channels than the
    /// stream's first sample, too many streams.
    pub skipped: u64,
}

/// The result of one offline replay.
#[derive(Debug, Clone, Default)]
pub struct OfflineRun {
    pub streams: Vec<StreamTrace>,
    pub counts: Counts,
    /// Skipped messages with their line (all of them; the CLI prints the first few).
    pub skips: Vec<Skip>,
    /// Messages whose `ts` looks like seconds ([`looks_like_seconds`]): taken as
    /// milliseconds, as the daemon takes them, and reported (the daemon logs them).
    pub seconds_like: u64,
    /// The line and `ts` of the first of them.
    pub first_seconds_like: Option<(usize, i64)>,
}

struct Stream {
    pipeline: Pipeline,
    trace: StreamTrace,
}

/// Replays `rec` through fresh pipelines (one per key), writing the output lines to `out`.
/// `tick` is called once per message (progress).
pub fn run(
    settings: &ValidSettings,
    rec: &Recording,
    out: &mut dyn Write,
    mut tick: impl FnMut(),
) -> Result<OfflineRun> {
    let s = &settings.settings;
    let mut streams: HashMap<String, Stream> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut run = OfflineRun {
        skips: rec.skipped.clone(),
        ..OfflineRun::default()
    };
    let c = &mut run.counts;
    c.skipped = rec.skipped.len() as u64;
    let mut values: Vec<f64> = Vec::new();
    // One set of learning buffers for every stream, as a DSP worker has (not one per step).
    let mut scratch = sparsewatch_dsp::LearnScratch::new();
    for r in &rec.messages {
        tick();
        c.messages += 1;
        let mut skip = |reason: String| {
            run.skips.push(Skip {
                line: r.line,
                reason,
            })
        };
        let Some(key) = settings.template.key(&r.msg.topic) else {
            c.skipped += 1;
            skip(format!(
                "topic `{}` does not match the template",
                r.msg.topic
            ));
            continue;
        };
        if key.len() > MAX_KEY_BYTES {
            // As the daemon refuses it at ingest (`oversized_keys`).
            c.skipped += 1;
            skip(format!(
                "key of {} bytes, longer than the {MAX_KEY_BYTES}-byte limit",
                key.len()
            ));
            continue;
        }
        let decoded = decode_payload_stamped(
            r.msg.payload.as_bytes(),
            r.msg.time_ms,
            &settings.payload_limits(),
        );
        let (ts, source, channels) = match decoded {
            Ok(v) => v,
            Err(e) => {
                c.skipped += 1;
                skip(format!("payload: {e}"));
                continue;
            }
        };
        if source == TsSource::Payload && looks_like_seconds(ts) {
            run.seconds_like += 1;
            run.first_seconds_like.get_or_insert((r.line, ts));
        }
        if !streams.contains_key(&key) {
            if streams.len() >= s.workers.max_streams {
                c.skipped += 1;
                skip(format!(
                    "key `{key}`: more than workers.max_streams streams"
                ));
                continue;
            }
            let names: Vec<String> = channels.iter().map(|(n, _)| n.clone()).collect();
            let pipeline = Pipeline::try_new(&settings.pipeline, names.len())
                .with_context(|| format!("key `{key}`"))?
                .with_learning_stagger(crate::worker::learning_stagger(&key));
            let trace = StreamTrace {
                key: key.clone(),
                channel_names: names,
                threshold: settings.pipeline.get().alert.threshold,
                ..StreamTrace::default()
            };
            streams.insert(key.clone(), Stream { pipeline, trace });
            order.push(key.clone());
        }
        let stream = streams.get_mut(&key).expect("stream exists");
        // A payload without a timestamp takes its arrival time, moved past the stream's last
        // timestamp, as the daemon's worker stamps it.
        let ts = match source {
            TsSource::Arrival => crate::worker::arrival_stamp(ts, stream.pipeline.last_ts()),
            TsSource::Payload => ts,
        };
        let t = &mut stream.trace;
        let same_layout = t.channel_names.len() == channels.len()
            && t.channel_names
                .iter()
                .zip(&channels)
                .all(|(a, (b, _))| a == b);
        if !same_layout {
            c.skipped += 1;
            skip(format!(
                "key `{key}`: channels differ from the stream's first sample ({})",
                t.channel_names.join(",")
            ));
            continue;
        }
        values.clear();
        values.extend(channels.iter().map(|(_, v)| *v));
        let sample = Sample::new(ts, &values).map_err(|e| anyhow::anyhow!("{e}"))?;
        let result = stream.pipeline.push_with(sample, &mut scratch);
        match result.outcome {
            PushOutcome::OutOfOrder => {
                c.out_of_order += 1;
                continue;
            }
            PushOutcome::ChannelMismatch => {
                c.skipped += 1;
                continue;
            }
            PushOutcome::AfterGap => c.gaps += 1,
            PushOutcome::Buffered | PushOutcome::WindowReady => {}
        }
        c.samples += 1;
        t.ts_ms.push(ts);
        t.values.extend_from_slice(&values);
        let Some(report) = result.report else {
            continue;
        };
        c.windows += 1;
        t.windows
            .push((report.end_ms, report.score, report.likelihood));
        let codes = &s.output.codes;
        if codes.enabled && report.index % codes.every == 0 {
            if let Some(code) = stream.pipeline.code() {
                let msg = CodeMessage::new(&s.node.id, &key, &report, code)
                    .with_recall(stream.pipeline.recall());
                write_line(out, &code_topic(settings, &key), &msg)?;
                c.codes += 1;
            }
        }
        if let Some(d) = report.detection {
            c.detections += 1;
            t.detections.push((d.start_ms, d.end_ms));
            let detector = stream.pipeline.params().detector.name();
            let channel = &t.channel_names[d.channel];
            let msg = AnomalyMessage::new(&s.node.id, &key, detector, channel, &d)
                .with_explanation(stream.pipeline.explanation().as_ref(), &t.channel_names);
            write_line(out, &anomaly_topic(settings, &key), &msg)?;
        }
    }
    run.streams = order
        .into_iter()
        .map(|k| streams.remove(&k).expect("stream exists").trace)
        .collect();
    Ok(run)
}

fn write_line<P: Serialize>(out: &mut dyn Write, topic: &str, payload: &P) -> Result<()> {
    serde_json::to_writer(&mut *out, &Line { topic, payload }).context("cannot write output")?;
    out.write_all(b"\n").context("cannot write output")?;
    Ok(())
}
