//! The Prometheus text exposition format (version 0.0.4) of [`Metrics`]: one `# HELP` and one
//! `# TYPE` line per family, then its samples. Every name starts with `sparsewatch_`.
//!
//! Families:
//! - every counter of [`Metrics`] as `sparsewatch_<name>_total` (`streams` is a gauge,
//!   `sparsewatch_streams`), with the counter's doc comment as help;
//! - `sparsewatch_stage_duration_seconds{stage}`: a histogram per stage ([`super::Latencies`]);
//! - `sparsewatch_worker_queue_depth{worker}` / `_capacity`, `sparsewatch_output_queue_depth{queue}`
//!   / `_capacity`;
//! - `sparsewatch_worker_heartbeat_age_seconds{worker}`;
//! - `sparsewatch_broker_connected`, `sparsewatch_state_restored` (0 or 1);
//! - `sparsewatch_last_message_age_seconds`, `sparsewatch_last_checkpoint_timestamp_seconds`
//!   (0 = none yet) and `sparsewatch_checkpoint_age_seconds` (NaN = none yet);
//! - `sparsewatch_build_info{version}` = 1.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::histogram::{bucket_bound_secs, BUCKETS};
use super::{mono_ms, Metrics, QueueKind, GAUGE_COUNTERS, NOT_EXPOSED};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric; `now_unix_ms` is the wall clock used for the checkpoint age.
pub fn render(m: &Metrics, now_unix_ms: i64) -> String {
    let mut w = Writer(String::with_capacity(16 * 1024));
    w.family(
        "build_info",
        "gauge",
        "Always 1; the version label tells which build runs.",
    );
    w.sample("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);

    m.snapshot().for_each(|name, help, value| {
        if NOT_EXPOSED.contains(&name) {
            return;
        }
        let gauge = GAUGE_COUNTERS.contains(&name);
        let full = if gauge {
            name.to_string()
        } else {
            format!("{name}_total")
        };
        w.family(&full, if gauge { "gauge" } else { "counter" }, help);
        w.sample(&full, &[], value as f64);
    });

    w.family(
        "stage_duration_seconds",
        "histogram",
        "Latency of each stage: ingest_decode (per PUBLISH: topic, decode, dispatch), \
         worker_window (per completed window: the pipeline push that completed it), \
         publish_event (per anomaly event: handing it to the MQTT client).",
    );
    for (stage, h) in m.latency.stages() {
        let s = h.snapshot();
        let mut cumulative = 0;
        for (i, &c) in s.counts.iter().enumerate() {
            cumulative += c;
            let le = if i < BUCKETS {
                format_float(bucket_bound_secs(i))
            } else {
                "+Inf".to_string()
            };
            w.sample(
                "stage_duration_seconds_bucket",
                &[("stage", stage), ("le", &le)],
                cumulative as f64,
            );
        }
        w.sample(
            "stage_duration_seconds_sum",
            &[("stage", stage)],
            s.sum_ns as f64 / 1e9,
        );
        w.sample(
            "stage_duration_seconds_count",
            &[("stage", stage)],
            cumulative as f64,
        );
    }

    queues(&mut w, m);

    let now_mono = mono_ms();
    w.family(
        "worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since each DSP worker last showed progress (it beats after every reading and \
         every second while idle).",
    );
    for hb in m.health.heartbeats() {
        w.sample(
            "worker_heartbeat_age_seconds",
            &[("worker", &hb.name)],
            hb.age().as_secs_f64(),
        );
    }

    let h = &m.health;
    let flag = |b: &std::sync::atomic::AtomicBool| f64::from(u8::from(b.load(Ordering::Relaxed)));
    w.family(
        "broker_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
    );
    w.sample("broker_connected", &[], flag(h.broker_connected.as_ref()));
    w.family(
        "state_restored",
        "gauge",
        "1 once learned state has been restored (or there was none to restore).",
    );
    w.sample("state_restored", &[], flag(&h.state_restored));

    let last_msg = h.last_message_mono_ms.load(Ordering::Relaxed);
    w.family(
        "last_message_age_seconds",
        "gauge",
        "Seconds since the last PUBLISH was received; NaN before the first.",
    );
    w.sample(
        "last_message_age_seconds",
        &[],
        if last_msg < 0 {
            f64::NAN
        } else {
            (now_mono - last_msg).max(0) as f64 / 1e3
        },
    );

    let ckpt = h.last_checkpoint_unix_ms.load(Ordering::Relaxed);
    w.family(
        "last_checkpoint_timestamp_seconds",
        "gauge",
        "Unix time of the last checkpoint written or restored; 0 before the first.",
    );
    w.sample("last_checkpoint_timestamp_seconds", &[], ckpt as f64 / 1e3);
    w.family(
        "checkpoint_age_seconds",
        "gauge",
        "Seconds since the last checkpoint; NaN before the first.",
    );
    w.sample(
        "checkpoint_age_seconds",
        &[],
        if ckpt <= 0 {
            f64::NAN
        } else {
            (now_unix_ms - ckpt).max(0) as f64 / 1e3
        },
    );
    w.0
}

fn queues(w: &mut Writer, m: &Metrics) {
    for (kind, prefix, label, what) in [
        (
            QueueKind::Worker,
            "worker_queue",
            "worker",
            "each DSP worker's input queue",
        ),
        (
            QueueKind::Output,
            "output_queue",
            "queue",
            "each output queue towards the publisher (events, codes)",
        ),
    ] {
        let mut rows = Vec::new();
        m.queues.for_each(|p| {
            if p.kind == kind {
                if let Some(depth) = p.depth() {
                    rows.push((p.label.clone(), depth, p.capacity));
                }
            }
        });
        let depth = format!("{prefix}_depth");
        let capacity = format!("{prefix}_capacity");
        w.family(&depth, "gauge", &format!("Items waiting in {what}."));
        for (l, d, _) in &rows {
            w.sample(&depth, &[(label, l)], *d as f64);
        }
        w.family(&capacity, "gauge", &format!("Capacity of {what}."));
        for (l, _, c) in &rows {
            w.sample(&capacity, &[(label, l)], *c as f64);
        }
    }
}

struct Writer(String);

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.trim().replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP sparsewatch_{name} {help}");
        let _ = writeln!(self.0, "# TYPE sparsewatch_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.0, "sparsewatch_{name}");
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", format_float(value));
    }
}

/// A sample value as Prometheus reads it: integers without a fraction, `NaN`, `+Inf`, `-Inf`.
fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// One parsed sample: metric name, labels, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// A strict parser of the text format: every line is a well-formed HELP, TYPE or sample;
    /// each family has exactly one HELP and one TYPE, before its samples, and its samples are
    /// contiguous; names and label names match the allowed character sets; label values
    /// unescape cleanly; values parse as floats.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let valid_name = |n: &str| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let family_of = |name: &str, types: &BTreeMap<String, String>| -> String {
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if types.get(base).map(String::as_str) == Some("histogram") {
                        return base.to_string();
                    }
                }
            }
            name.to_string()
        };
        assert!(text.ends_with('\n'), "the exposition ends with a newline");
        let mut types = BTreeMap::new();
        let mut helps = BTreeMap::new();
        let mut samples = Vec::new();
        let mut finished: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a name and text");
                assert!(valid_name(name), "{line}");
                assert!(!help.is_empty(), "{line}");
                assert!(
                    helps.insert(name.to_string(), help.to_string()).is_none(),
                    "second HELP: {line}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and kind");
                assert!(valid_name(name), "{line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(helps.contains_key(name), "TYPE before HELP: {line}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "second TYPE: {line}"
                );
                if let Some(c) = current.take() {
                    finished.push(c);
                }
                current = Some(name.to_string());
            } else {
                assert!(
                    !line.starts_with('#') && !line.is_empty(),
                    "unexpected line {line:?}"
                );
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v
                        .parse()
                        .unwrap_or_else(|_| panic!("bad value in {line:?}")),
                };
                let (name, labels) = match series.split_once('{') {
                    None => (series, BTreeMap::new()),
                    Some((name, rest)) => {
                        let body = rest.strip_suffix('}').expect("labels close");
                        (name, parse_labels(body))
                    }
                };
                assert!(valid_name(name), "{line}");
                for k in labels.keys() {
                    assert!(valid_name(k) && !k.contains(':'), "{line}");
                }
                let family = family_of(name, &types);
                assert!(types.contains_key(&family), "sample without TYPE: {line}");
                assert_eq!(
                    current.as_deref(),
                    Some(family.as_str()),
                    "samples of {family} not contiguous"
                );
                assert!(!finished.contains(&family));
                samples.push(Sample {
                    name: name.to_string(),
                    labels,
                    value,
                });
            }
        }
        (types, samples)
    }

    fn parse_labels(body: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert_eq!(
                chars.next(),
                Some('"'),
                "label value opens with a quote in {body:?}"
            );
            let mut value = String::new();
            loop {
                match chars.next().expect("label value closes") {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?} in {body:?}"),
                    },
                    c => value.push(c),
                }
            }
            assert!(
                out.insert(key, value).is_none(),
                "duplicate label in {body:?}"
            );
            match chars.next() {
                None => break,
                Some(',') => {}
                Some(c) => panic!("unexpected {c:?} after a label in {body:?}"),
            }
        }
        out
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels.len() == s.labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
            .value
    }

    #[test]
    fn the_exposition_parses_back_with_the_values_put_in() {
        let m = Metrics::default();
        for _ in 0..3 {
            Metrics::inc(&m.messages);
        }
        Metrics::inc(&m.dropped_samples);
        m.streams.store(2, Ordering::Relaxed);
        m.latency.ingest_decode.observe(Duration::from_micros(3));
        m.latency.ingest_decode.observe(Duration::from_secs(100));
        m.latency.worker_window.observe(Duration::from_micros(700));
        let q = crossbeam_channel::bounded::<u8>(8);
        q.0.send(1).unwrap();
        let rx = q.1.clone();
        m.queues
            .register(QueueKind::Worker, "0", 8, move || Some(rx.len()));
        m.queues
            .register(QueueKind::Output, "odd \"name\"\\", 4, || Some(0));
        m.queues.register(QueueKind::Output, "gone", 4, || None);
        m.health.register_worker("0");
        m.health.connected();
        m.health
            .last_checkpoint_unix_ms
            .store(1_000_000, Ordering::Relaxed);

        let text = render(&m, 1_005_000);
        let (types, samples) = parse(&text);
        assert!(types.keys().all(|n| n.starts_with("sparsewatch_")));
        assert_eq!(types["sparsewatch_messages_total"], "counter");
        assert_eq!(types["sparsewatch_streams"], "gauge");
        assert_eq!(types["sparsewatch_stage_duration_seconds"], "histogram");
        assert_eq!(value(&samples, "sparsewatch_messages_total", &[]), 3.0);
        assert_eq!(
            value(&samples, "sparsewatch_dropped_samples_total", &[]),
            1.0
        );
        assert_eq!(value(&samples, "sparsewatch_streams", &[]), 2.0);
        // Every counter of the summary is exposed, once: gauges without `_total`, and
        // broker_connected only as the health gauge.
        assert_eq!(types["sparsewatch_events_buffered"], "gauge");
        assert_eq!(types["sparsewatch_broker_connected"], "gauge");
        assert!(!types.contains_key("sparsewatch_broker_connected_total"));
        m.snapshot().for_each(|name, _, _| {
            let n = if NOT_EXPOSED.contains(&name) || GAUGE_COUNTERS.contains(&name) {
                format!("sparsewatch_{name}")
            } else {
                format!("sparsewatch_{name}_total")
            };
            assert!(types.contains_key(&n), "{n} missing");
        });
        assert_eq!(
            value(
                &samples,
                "sparsewatch_worker_queue_depth",
                &[("worker", "0")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "sparsewatch_worker_queue_capacity",
                &[("worker", "0")]
            ),
            8.0
        );
        assert_eq!(
            value(
                &samples,
                "sparsewatch_output_queue_capacity",
                &[("queue", "odd \"name\"\\")]
            ),
            4.0
        );
        assert!(!samples
            .iter()
            .any(|s| s.labels.get("queue").map(String::as_str) == Some("gone")));
        assert_eq!(value(&samples, "sparsewatch_broker_connected", &[]), 1.0);
        assert_eq!(
            value(&samples, "sparsewatch_checkpoint_age_seconds", &[]),
            5.0
        );
        assert_eq!(
            value(
                &samples,
                "sparsewatch_last_checkpoint_timestamp_seconds",
                &[]
            ),
            1000.0
        );
        assert!(value(&samples, "sparsewatch_last_message_age_seconds", &[]).is_nan());

        // Histogram: cumulative, monotonic buckets ending in +Inf = count; the sum in seconds.
        let stage = [("stage", "ingest_decode")];
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| {
                s.name == "sparsewatch_stage_duration_seconds_bucket"
                    && s.labels["stage"] == "ingest_decode"
            })
            .map(|s| {
                let le = &s.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, s.value)
            })
            .collect();
        assert_eq!(buckets.len(), BUCKETS + 1);
        assert!(buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 2.0));
        let le4us = buckets
            .iter()
            .find(|(le, _)| (*le - 4e-6).abs() < 1e-12)
            .unwrap();
        assert_eq!(le4us.1, 1.0, "3 µs counts in le=0.000004");
        assert_eq!(
            value(&samples, "sparsewatch_stage_duration_seconds_count", &stage),
            2.0
        );
        let sum = value(&samples, "sparsewatch_stage_duration_seconds_sum", &stage);
        assert!((sum - 100.000003).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn before_any_checkpoint_the_age_is_nan() {
        let m = Metrics::default();
        let (_, samples) = parse(&render(&m, 5_000));
        assert!(value(&samples, "sparsewatch_checkpoint_age_seconds", &[]).is_nan());
        assert_eq!(
            value(
                &samples,
                "sparsewatch_last_checkpoint_timestamp_seconds",
                &[]
            ),
            0.0
        );
        assert_eq!(value(&samples, "sparsewatch_broker_connected", &[]), 0.0);
        assert_eq!(value(&samples, "sparsewatch_state_restored", &[]), 1.0);
    }
}
