//! What sparsewatch publishes: anomaly events and the retained status. Both carry a `schema`
//! number that changes only when a field changes meaning or disappears (new fields may be added).

use serde::{Deserialize, Serialize};
use sparsewatch_dsp::{Detection, Explanation, Recall, SparseCode, WindowReport};

/// Version of the anomaly event and status payloads.
pub const SCHEMA_VERSION: u32 = 1;

/// `<prefix>/<node>/anomaly/<key>`, QoS 1: one per incident (its onset window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyMessage {
    pub schema: u32,
    pub node: String,
    pub key: String,
    /// Per-key sequence number, 1 for the key's first incident. Not unique across an unclean
    /// stop (restored from the last checkpoint); subscribers deduplicate on node, key,
    /// `window_start_ms` and `window_end_ms`.
    pub seq: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub window_start: String,
    pub window_end: String,
    /// Raw score of the window in [0, 1].
    pub score: f64,
    /// Anomaly likelihood in [0, 1] and the threshold it crossed.
    pub likelihood: f64,
    pub threshold: f64,
    pub detector: String,
    /// The channel that contributed most.
    pub channel: String,
    /// True when the event could not be published when it was detected (broker unreachable,
    /// or left over from a previous run in the spool file) and is delivered late. Absent when
    /// false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delayed: bool,
    /// Why the window was flagged; absent when the stream has no dictionary (window wider
    /// than `pipeline.coding.max_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Box<ExplanationMessage>>,
}

/// The explanation part of an anomaly event (see [`Explanation`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplanationMessage {
    /// The window's strongest atoms, largest |coefficient| first, and their coefficients.
    pub atoms: Vec<usize>,
    pub coefficients: Vec<f64>,
    /// Every channel with its share of the energy the sparse code misses and of the energy it
    /// explains, largest missed share first.
    pub channels: Vec<ChannelShare>,
    /// Memory and gated detectors only: familiarity G of the window's SDR code (gated: of the
    /// flagged channel's state), the precision R of what
    /// it recalls (novelty is 1 − G·R), and the overlap of the closest stored code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub familiarity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_match_overlap: Option<f64>,
}

/// One channel's share of what the code misses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelShare {
    pub channel: String,
    /// ‖y_c − ŷ_c‖² / ‖y − ŷ‖²: the channel's part of what the atoms miss.
    pub residual_share: f64,
    /// ‖ŷ_c‖² / ‖ŷ‖²: the channel's part of what the atoms explain.
    pub code_share: f64,
}

impl ExplanationMessage {
    /// `channel_names[c]` names channel `c` of the stream.
    pub fn new(e: &Explanation<'_>, channel_names: &[String]) -> Self {
        let mut channels: Vec<ChannelShare> = e
            .channel_residual
            .iter()
            .zip(e.channel_code)
            .zip(channel_names)
            .map(|((&residual_share, &code_share), name)| ChannelShare {
                channel: name.clone(),
                residual_share,
                code_share,
            })
            .collect();
        // Stable: equal shares keep channel order.
        channels.sort_by(|a, b| b.residual_share.total_cmp(&a.residual_share));
        Self {
            atoms: e.atoms.to_vec(),
            coefficients: e.coefficients.to_vec(),
            channels,
            familiarity: e.familiarity,
            precision: e.precision,
            best_match_overlap: e.best_match_overlap,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl AnomalyMessage {
    pub fn new(node: &str, key: &str, detector: &str, channel: &str, d: &Detection) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            node: node.to_string(),
            key: key.to_string(),
            seq: d.seq,
            window_start_ms: d.start_ms,
            window_end_ms: d.end_ms,
            window_start: rfc3339(d.start_ms),
            window_end: rfc3339(d.end_ms),
            score: d.score,
            likelihood: d.likelihood,
            threshold: d.threshold,
            detector: detector.to_string(),
            channel: channel.to_string(),
            delayed: false,
            explanation: None,
        }
    }

    /// Attaches why the window was flagged.
    pub fn with_explanation(
        mut self,
        e: Option<&Explanation<'_>>,
        channel_names: &[String],
    ) -> Self {
        self.explanation = e.map(|e| Box::new(ExplanationMessage::new(e, channel_names)));
        self
    }
}

/// `<prefix>/<node>/nodata/<key>`, QoS 1, retained: a stream that was flowing has received
/// nothing for `streams.no_data_after_secs` (`active: true`), or has received data again
/// (`active: false`). A fresh subscriber reads each stream's current condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoDataMessage {
    pub schema: u32,
    pub node: String,
    pub key: String,
    /// True while the stream is silent; false once data returned.
    pub active: bool,
    /// Wall-clock arrival time of the stream's last sample before the silence.
    pub last_data_ms: i64,
    pub last_data: String,
    /// When the condition was raised (or cleared), wall clock.
    pub at_ms: i64,
    pub at: String,
    /// The configured silence that raises the condition, seconds.
    pub after_secs: u64,
    /// As in [`AnomalyMessage::delayed`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub delayed: bool,
}

impl NoDataMessage {
    pub fn new(
        node: &str,
        key: &str,
        active: bool,
        last_data_ms: i64,
        at_ms: i64,
        after_secs: u64,
    ) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            node: node.to_string(),
            key: key.to_string(),
            active,
            last_data_ms,
            last_data: rfc3339(last_data_ms),
            at_ms,
            at: rfc3339(at_ms),
            after_secs,
            delayed: false,
        }
    }
}

/// An event the outbox keeps until the broker acknowledges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboundEvent {
    Anomaly(AnomalyMessage),
    NoData(NoDataMessage),
}

impl OutboundEvent {
    pub fn key(&self) -> &str {
        match self {
            OutboundEvent::Anomaly(m) => &m.key,
            OutboundEvent::NoData(m) => &m.key,
        }
    }

    /// Topic below `<prefix>/<node>/`: `anomaly/<key>` or `nodata/<key>`.
    pub fn subtopic(&self) -> String {
        match self {
            OutboundEvent::Anomaly(m) => format!("anomaly/{}", m.key),
            OutboundEvent::NoData(m) => format!("nodata/{}", m.key),
        }
    }

    /// No-data conditions are retained (the current state of each stream); anomalies are not.
    pub fn retain(&self) -> bool {
        matches!(self, OutboundEvent::NoData(_))
    }

    pub fn set_delayed(&mut self, delayed: bool) {
        match self {
            OutboundEvent::Anomaly(m) => m.delayed = delayed,
            OutboundEvent::NoData(m) => m.delayed = delayed,
        }
    }

    pub fn delayed(&self) -> bool {
        match self {
            OutboundEvent::Anomaly(m) => m.delayed,
            OutboundEvent::NoData(m) => m.delayed,
        }
    }

    /// The JSON payload as published (without the `kind` tag).
    pub fn payload(&self) -> Vec<u8> {
        match self {
            OutboundEvent::Anomaly(m) => serde_json::to_vec(m),
            OutboundEvent::NoData(m) => serde_json::to_vec(m),
        }
        .expect("event serialises")
    }
}

/// `<prefix>/<node>/code/<key>`, QoS 0: the sparse code of one window in the stream's
/// learned orthogonal dictionary. Atom indices are stable across dictionary updates (the
/// learner keeps each atom's index and sign), so `atoms` today means the same thing tomorrow;
/// `dictionary_version` says which update produced the code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeMessage {
    pub schema: u32,
    pub node: String,
    pub key: String,
    /// 0-based index of the window in its stream.
    pub window: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// Kept atoms, largest |coefficient| first, and their coefficients (normalised units).
    pub atoms: Vec<usize>,
    pub coefficients: Vec<f64>,
    /// Share of the normalised window's energy the kept atoms miss, in [0, 1].
    pub residual: f64,
    /// ‖y‖² of the normalised window.
    pub energy: f64,
    pub dictionary_version: u64,
    /// Raw anomaly score and likelihood of the window (`null` during warm-up).
    pub score: f64,
    pub likelihood: Option<f64>,
    /// With the memory detector: the window's SDR code (the winning cell of each of the Q
    /// modules) and its familiarity G. Absent otherwise, or when the memory could not code
    /// the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdr: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub familiarity: Option<f64>,
}

impl CodeMessage {
    /// The code message of `report`'s window, whose sparse code is `code`. The workers and the
    /// offline replay both build code messages here, so they publish the same schema.
    pub fn new(node: &str, key: &str, report: &WindowReport, code: &SparseCode) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            node: node.to_string(),
            key: key.to_string(),
            window: report.index,
            window_start_ms: report.start_ms,
            window_end_ms: report.end_ms,
            atoms: code.indices().to_vec(),
            coefficients: code.values().to_vec(),
            residual: code.residual(),
            energy: code.energy(),
            dictionary_version: code.version(),
            score: report.score,
            likelihood: report.likelihood,
            sdr: None,
            familiarity: None,
        }
    }

    /// Adds the memory's SDR code and familiarity of the window, when it coded it.
    pub fn with_recall(mut self, recall: Option<&Recall>) -> Self {
        if let Some(r) = recall.filter(|r| r.is_coded()) {
            self.sdr = Some(r.code.clone());
            self.familiarity = Some(r.familiarity);
        }
        self
    }
}

/// `<prefix>/<node>/status`, retained: "online" while connected; "offline" from the Last Will
/// or a clean stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    pub schema: u32,
    pub node: String,
    pub state: String,
    pub version: String,
    pub started_at: String,
}

impl StatusMessage {
    pub fn new(node: &str, online: bool, started_at_ms: i64) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            node: node.to_string(),
            state: if online { "online" } else { "offline" }.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: rfc3339(started_at_ms),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("status serialises")
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-01-05T08:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomaly_message_has_the_documented_fields() {
        let d = Detection {
            seq: 3,
            start_ms: 1_767_600_000_000,
            end_ms: 1_767_600_031_000,
            score: 1.0,
            likelihood: 0.99999,
            threshold: 0.9999,
            channel: 0,
        };
        let m = AnomalyMessage::new("edge-1", "plant1/pump1", "baseline", "vib_rms", &d);
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["seq"], 3);
        assert_eq!(v["window_start"], "2026-01-05T08:00:00.000Z");
        assert_eq!(v["channel"], "vib_rms");
        let s: serde_json::Value =
            serde_json::from_slice(&StatusMessage::new("n", false, 0).to_json()).unwrap();
        assert_eq!(s["state"], "offline");
        assert_eq!(s["started_at"], "1970-01-01T00:00:00.000Z");
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    fn validator(schema: &str) -> jsonschema::Validator {
        let schema: serde_json::Value = serde_json::from_str(schema).expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    }

    /// The JSON Schema files in `daemon/schemas/` describe what the daemon actually publishes.
    #[test]
    fn published_payloads_match_their_schemas() {
        let anomaly = validator(include_str!("../../schemas/anomaly.schema.json"));
        let d = Detection {
            seq: 1,
            start_ms: 1_767_600_000_000,
            end_ms: 1_767_600_031_000,
            score: 0.5,
            likelihood: 0.99995,
            threshold: 0.9999,
            channel: 0,
        };
        let msg =
            serde_json::to_value(AnomalyMessage::new("n", "a/b", "baseline", "x", &d)).unwrap();
        let errors: Vec<String> = anomaly.iter_errors(&msg).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let mut bad = msg.clone();
        bad["seq"] = 0.into();
        assert!(!anomaly.is_valid(&bad), "the schema must reject seq 0");
        let mut late = AnomalyMessage::new("n", "a/b", "baseline", "x", &d);
        late.delayed = true;
        let late = serde_json::to_value(late).unwrap();
        assert_eq!(late["delayed"], true);
        assert!(anomaly.is_valid(&late), "{late}");
        assert!(
            msg.get("delayed").is_none(),
            "delayed is omitted when false: {msg}"
        );
        assert!(msg.get("explanation").is_none(), "{msg}");
        // An explanation: channels ranked by share, the memory part only when given.
        let names = ["x".to_string(), "y".to_string(), "z".to_string()];
        let e = Explanation {
            atoms: &[5, 0],
            coefficients: &[2.0, -1.0],
            channel_residual: &[0.25, 0.5, 0.25],
            channel_code: &[0.5, 0.0, 0.5],
            familiarity: Some(0.8),
            precision: Some(0.75),
            best_match_overlap: Some(0.9375),
        };
        let explained =
            AnomalyMessage::new("n", "a/b", "memory", "y", &d).with_explanation(Some(&e), &names);
        let v = serde_json::to_value(&explained).unwrap();
        let errors: Vec<String> = anomaly.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let ranked: Vec<&str> = explained
            .explanation
            .as_ref()
            .unwrap()
            .channels
            .iter()
            .map(|c| c.channel.as_str())
            .collect();
        assert_eq!(
            ranked,
            ["y", "x", "z"],
            "largest share first, ties in channel order"
        );
        assert_eq!(v["explanation"]["best_match_overlap"], 0.9375);
        assert_eq!(v["explanation"]["channels"][0]["code_share"], 0.0);
        assert_eq!(v["explanation"]["precision"], 0.75);
        let baseline = Explanation {
            familiarity: None,
            precision: None,
            best_match_overlap: None,
            ..e
        };
        let v = serde_json::to_value(
            AnomalyMessage::new("n", "a/b", "baseline", "y", &d)
                .with_explanation(Some(&baseline), &names),
        )
        .unwrap();
        assert!(anomaly.is_valid(&v), "{v}");
        assert!(v["explanation"].get("familiarity").is_none(), "{v}");
        let mut bad = v.clone();
        bad["explanation"]["channels"][0]["residual_share"] = 1.5.into();
        assert!(!anomaly.is_valid(&bad), "a share above 1 must be rejected");

        let nodata = validator(include_str!("../../schemas/nodata.schema.json"));
        for (active, delayed) in [(true, false), (false, true)] {
            let mut m = NoDataMessage::new(
                "n",
                "a/b",
                active,
                1_767_600_000_000,
                1_767_600_300_000,
                300,
            );
            m.delayed = delayed;
            let v: serde_json::Value =
                serde_json::from_slice(&OutboundEvent::NoData(m).payload()).unwrap();
            let errors: Vec<String> = nodata.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{v}: {errors:?}");
            assert!(
                v.get("kind").is_none(),
                "the outbox tag is not published: {v}"
            );
        }
        let mut bad = serde_json::to_value(NoDataMessage::new("n", "k", true, 0, 1, 5)).unwrap();
        bad["active"] = "yes".into();
        assert!(
            !nodata.is_valid(&bad),
            "the schema must reject a non-boolean active"
        );

        let code = validator(include_str!("../../schemas/code.schema.json"));
        let msg = CodeMessage {
            schema: SCHEMA_VERSION,
            node: "n".into(),
            key: "a/b".into(),
            window: 0,
            window_start_ms: 1,
            window_end_ms: 2,
            atoms: vec![3, 0],
            coefficients: vec![1.5, -0.5],
            residual: 0.25,
            energy: 3.0,
            dictionary_version: 0,
            score: 0.0,
            likelihood: None,
            sdr: None,
            familiarity: None,
        };
        let v = serde_json::to_value(&msg).unwrap();
        let errors: Vec<String> = code.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            v.get("sdr").is_none() && v.get("familiarity").is_none(),
            "{v}"
        );
        let with_sdr = CodeMessage {
            sdr: Some(vec![3, 15, 0]),
            familiarity: Some(0.5),
            ..msg
        };
        let v = serde_json::to_value(&with_sdr).unwrap();
        let errors: Vec<String> = code.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let mut bad = v.clone();
        bad.as_object_mut().unwrap().remove("familiarity");
        assert!(
            !code.is_valid(&bad),
            "an SDR code comes with its familiarity"
        );

        let status = validator(include_str!("../../schemas/status.schema.json"));
        for online in [true, false] {
            let s: serde_json::Value = serde_json::from_slice(
                &StatusMessage::new("n", online, 1_767_600_000_000).to_json(),
            )
            .unwrap();
            assert!(status.is_valid(&s), "{s}");
        }
    }
}
