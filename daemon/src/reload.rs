//! Reloading the configuration on SIGHUP: which keys changed, which of them apply live, and
//! which wait for a restart.
//!
//! Live: `pipeline.alert.*` (thresholds and hysteresis, applied to every stream in place, its
//! learned state kept), `topics.template` (the topic → sensor key mapping), and
//! `output.codes.enabled` / `output.codes.every`. Everything else (broker, subscriptions,
//! node id, workers, the model's structure, …) is reported as needing a restart and keeps its
//! running value. A new configuration that does not load or validate is rejected as a whole
//! and the running one is kept.

use serde_json::Value;
use sparsewatch_dsp::PipelineParams;

use crate::config::ValidSettings;
use crate::worker::LiveWorkerSettings;

/// Keys (dotted, or prefixes ending in `.`) that a reload applies without a restart.
pub const LIVE_KEYS: &[&str] = &[
    "pipeline.alert.",
    "topics.template",
    "output.codes.enabled",
    "output.codes.every",
];

/// What a reload would do.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadPlan {
    /// Changed keys that are applied now.
    pub live: Vec<String>,
    /// Changed keys that only take effect at the next start.
    pub restart: Vec<String>,
    /// Those of `restart` whose new value the learned state of the running streams cannot
    /// take (`checkpoint::fit_params`): at the next start every stream is discarded and
    /// learns again, unless the keys are set back first.
    pub discards_state: Vec<String>,
}

/// Compares the running and the new configuration key by key.
pub fn plan(running: &ValidSettings, new: &ValidSettings) -> ReloadPlan {
    let discards_state = discarding_keys(&running.settings.pipeline, &new.settings.pipeline);
    let old = flatten(&serde_json::to_value(&running.settings).expect("settings serialise"));
    let new = flatten(&serde_json::to_value(&new.settings).expect("settings serialise"));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let (mut live, mut restart) = (Vec::new(), Vec::new());
    for k in keys {
        if old.get(k) == new.get(k) {
            continue;
        }
        if is_live(k) {
            live.push(k.clone());
        } else {
            restart.push(k.clone());
        }
    }
    ReloadPlan {
        live,
        restart,
        discards_state,
    }
}

/// The `pipeline.*` keys whose change from `running` to `new` leaves a stream learned under
/// `running` unusable: after the restart the checkpoint's streams (all learned under the
/// running parameters) are reconciled with `new` and discarded on exactly these.
fn discarding_keys(running: &PipelineParams, new: &PipelineParams) -> Vec<String> {
    let (fit, _) = crate::checkpoint::fit_params(running, new);
    let fit = flatten(&serde_json::to_value(&fit).expect("params serialise"));
    let new = flatten(&serde_json::to_value(new).expect("params serialise"));
    let mut keys: Vec<String> = new
        .iter()
        .filter(|(k, v)| fit.get(*k) != Some(v))
        .map(|(k, _)| format!("pipeline.{k}"))
        .collect();
    // A key only the running side has (another encoder kind's fields) differs too.
    keys.extend(
        fit.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| format!("pipeline.{k}")),
    );
    keys.sort();
    keys
}

fn is_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|l| {
        if l.ends_with('.') {
            key.starts_with(l)
        } else {
            key == *l
        }
    })
}

/// The running configuration with the live part of `new` applied: what the daemon runs with
/// after the reload (restart-only keys keep their running values).
pub fn merge_live(running: &ValidSettings, new: &ValidSettings) -> ValidSettings {
    let mut s = running.settings.clone();
    s.pipeline.alert = new.settings.pipeline.alert.clone();
    s.topics.template = new.settings.topics.template.clone();
    s.output.codes.enabled = new.settings.output.codes.enabled;
    s.output.codes.every = new.settings.output.codes.every;
    crate::config::validate(s).expect("the live part of a valid configuration is valid")
}

/// What the workers get from a configuration.
pub fn worker_settings(v: &ValidSettings) -> LiveWorkerSettings {
    let codes = &v.settings.output.codes;
    LiveWorkerSettings {
        alert: v.settings.pipeline.alert.clone(),
        codes_every: codes.enabled.then_some(codes.every),
    }
}

fn flatten(v: &Value) -> std::collections::BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut std::collections::BTreeMap<String, Value>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_with_env, Source};

    fn load(text: &str) -> ValidSettings {
        load_with_env(Source::Text(text), Vec::new()).unwrap()
    }

    #[test]
    fn live_and_restart_keys_are_told_apart() {
        let running = load("");
        let new = load(
            "[pipeline.alert]\nthreshold = 0.999\n[topics]\ntemplate = \"s/{a}/{b}/x\"\n\
             [mqtt]\nport = 1999\n[pipeline.framer]\nhop = 8\n[output.codes]\nevery = 5\n",
        );
        let p = plan(&running, &new);
        assert_eq!(
            p.live,
            vec![
                "output.codes.every",
                "pipeline.alert.threshold",
                "topics.template"
            ]
        );
        assert_eq!(p.restart, vec!["mqtt.port", "pipeline.framer.hop"]);
        let merged = merge_live(&running, &new);
        assert_eq!(merged.settings.pipeline.alert.threshold, 0.999);
        assert_eq!(merged.settings.mqtt.port, running.settings.mqtt.port);
        assert_eq!(
            merged.settings.pipeline.framer.hop, 4,
            "the running hop stays until a restart"
        );
        assert_eq!(merged.template.key("s/p/q/x").as_deref(), Some("p/q"));
        assert_eq!(
            worker_settings(&merged).codes_every,
            Some(5),
            "codes stay on, every 5th window"
        );
    }

    /// The keys a reload warns about must be exactly those on which the next start's
    /// `checkpoint::reconcile` discards a stream learned under the running configuration.
    #[test]
    fn keys_that_make_the_next_restart_discard_learned_state_are_named() {
        // Restart-only, and the learned state cannot take them.
        let running = load("");
        let new = load(
            "[pipeline.framer]\nwindow_len = 64\n[pipeline.coding]\nk = 4\n[mqtt]\nport = 1999\n\
             [pipeline.alert]\nthreshold = 0.9\n",
        );
        let p = plan(&running, &new);
        assert_eq!(
            p.discards_state,
            vec!["pipeline.coding.k", "pipeline.framer.window_len"]
        );
        assert!(p.restart.contains(&"mqtt.port".to_string()));
        assert!(p.discards_state.iter().all(|k| p.restart.contains(k)));
        // Restart-only too, but a restored stream takes them: the best-match index size of the
        // gated detector, the gated parameters under another detector, baseline → gated.
        for (from, to) in [
            ("", "[pipeline.gated.sdr]\nindex_capacity = 8\n"),
            (
                "[pipeline]\ndetector = \"baseline\"\n",
                "[pipeline]\ndetector = \"baseline\"\n[pipeline.gated]\nnovelty_full = 0.5\n",
            ),
            (
                "[pipeline]\ndetector = \"baseline\"\n",
                "[pipeline.gated]\nnovelty_full = 0.5\n",
            ),
        ] {
            let p = plan(&load(from), &load(to));
            assert!(!p.restart.is_empty(), "{to:?} is a restart key");
            assert!(p.discards_state.is_empty(), "{from:?} → {to:?}: {p:?}");
        }
        // The oracle: reconcile a stream learned under the running parameters with the new
        // ones, as the next start does.
        for (to, discarded) in [
            ("[pipeline.framer]\nwindow_len = 64\n", true),
            ("[pipeline.gated.sdr]\nindex_capacity = 8\n", false),
            ("[pipeline]\ndetector = \"memory\"\n", true),
        ] {
            let new = load(to);
            let p = plan(&running, &new);
            let record = crate::checkpoint::StreamRecord {
                key: "k".into(),
                channels: vec!["x".into()],
                pipeline: sparsewatch_dsp::Pipeline::new(&running.pipeline, 1),
                silent: false,
            };
            let restored = crate::checkpoint::reconcile(record, &new.pipeline);
            assert_eq!(restored.is_err(), discarded, "{to:?}");
            assert_eq!(!p.discards_state.is_empty(), discarded, "{to:?}: {p:?}");
        }
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let a = load("[mqtt]\nport = 1884\n");
        let p = plan(&a, &a.clone());
        assert!(p.live.is_empty() && p.restart.is_empty());
    }
}
