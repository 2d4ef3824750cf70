//! The per-stream pipeline: framer → normaliser → scorer → likelihood → alert.
//!
//! One `Pipeline` per sensor stream. `push` takes one sample and, when it completes a window,
//! returns that window's report; the model learns from the window only after it was scored,
//! and not while the stream is alerting.

use serde::{Deserialize, Serialize};

use crate::params::ParamError;
use crate::sample::Sample;
use crate::score::{
    AlertParams, AlertState, AlertStep, Alerter, AnomalyLikelihood, BaselineParams, BaselineScorer,
    LikelihoodParams, RawScore,
};
use crate::window::{Framer, FramerParams, Normaliser, NormaliserParams, PushOutcome};

/// Which detector scores windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Rolling-window Gaussian on window features ([`crate::score::baseline`]).
    #[default]
    Baseline,
}

impl DetectorKind {
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Baseline => "baseline",
        }
    }
}

/// Every pipeline parameter, grouped by stage. Deserialises from the daemon's `[pipeline]`
/// table; every field has a default, and unknown fields are errors.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineParams {
    pub detector: DetectorKind,
    pub framer: FramerParams,
    pub normaliser: NormaliserParams,
    pub baseline: BaselineParams,
    pub likelihood: LikelihoodParams,
    pub alert: AlertParams,
}

/// Parameters that passed [`PipelineParams::check`]; only these construct a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPipelineParams(PipelineParams);

impl ValidPipelineParams {
    pub fn get(&self) -> &PipelineParams {
        &self.0
    }
}

impl PipelineParams {
    pub fn check(self) -> Result<ValidPipelineParams, ParamError> {
        self.framer.check().map_err(|e| e.in_section("framer"))?;
        self.normaliser
            .check()
            .map_err(|e| e.in_section("normaliser"))?;
        self.baseline
            .check()
            .map_err(|e| e.in_section("baseline"))?;
        self.likelihood
            .check()
            .map_err(|e| e.in_section("likelihood"))?;
        self.alert.check().map_err(|e| e.in_section("alert"))?;
        Ok(ValidPipelineParams(self))
    }
}

/// A detection: the onset window of an incident, with what it was judged on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Per-stream sequence number, 1 for the first detection.
    pub seq: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub score: f64,
    pub likelihood: f64,
    pub threshold: f64,
    /// The channel that contributed most.
    pub channel: usize,
}

/// What the pipeline says about one completed window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowReport {
    /// 0-based index of the window in this stream.
    pub index: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Raw score in [0, 1] and the channel that contributed most.
    pub score: f64,
    pub channel: usize,
    /// `None` during warm-up.
    pub likelihood: Option<f64>,
    pub step: AlertStep,
    /// Whether the model learned from this window.
    pub learned: bool,
    pub detection: Option<Detection>,
}

/// What one `push` did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushResult {
    pub outcome: PushOutcome,
    pub report: Option<WindowReport>,
}

/// Counts kept by a pipeline over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineCounters {
    pub samples: u64,
    pub windows: u64,
    pub detections: u64,
    pub out_of_order: u64,
    pub channel_mismatch: u64,
    pub gaps: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Scorer {
    Baseline(BaselineScorer),
}

impl Scorer {
    fn score(&mut self, framer: &Framer, _normalised: &[f64]) -> RawScore {
        match self {
            Scorer::Baseline(b) => b.score(&framer.window()),
        }
    }

    fn learn(&mut self) {
        match self {
            Scorer::Baseline(b) => b.learn(),
        }
    }
}

/// The per-stream pipeline. All buffers are allocated in [`Pipeline::new`]; `push` does not
/// allocate. The whole state serialises (serde) for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    params: PipelineParams,
    framer: Framer,
    normaliser: Normaliser,
    normalised: Vec<f64>,
    scorer: Scorer,
    likelihood: AnomalyLikelihood,
    alerter: Alerter,
    counters: PipelineCounters,
}

impl Pipeline {
    /// A pipeline for a stream of `channels` channels.
    ///
    /// # Panics
    /// If `channels` is 0 or above [`crate::MAX_CHANNELS`].
    pub fn new(params: &ValidPipelineParams, channels: usize) -> Self {
        let p = params.get().clone();
        let scorer = match p.detector {
            DetectorKind::Baseline => {
                Scorer::Baseline(BaselineScorer::new(p.baseline.clone(), channels))
            }
        };
        Self {
            framer: Framer::new(p.framer.clone(), channels),
            normaliser: Normaliser::new(p.normaliser.clone(), channels),
            normalised: vec![0.0; p.framer.window_len * channels],
            scorer,
            likelihood: AnomalyLikelihood::new(p.likelihood.clone()),
            alerter: Alerter::new(p.alert.clone()),
            counters: PipelineCounters::default(),
            params: p,
        }
    }

    pub fn channels(&self) -> usize {
        self.framer.channels()
    }

    pub fn params(&self) -> &PipelineParams {
        &self.params
    }

    pub fn counters(&self) -> PipelineCounters {
        self.counters
    }

    pub fn alert_state(&self) -> AlertState {
        self.alerter.state()
    }

    /// Event time of the last accepted sample.
    pub fn last_ts(&self) -> Option<i64> {
        self.framer.last_ts()
    }

    /// Changes the alert thresholds in place, keeping everything learned.
    pub fn set_alert_params(&mut self, params: AlertParams) -> Result<(), ParamError> {
        params.check().map_err(|e| e.in_section("alert"))?;
        self.params.alert = params.clone();
        self.alerter.set_params(params);
        Ok(())
    }

    pub fn push(&mut self, sample: Sample<'_>) -> PushResult {
        let outcome = self.framer.push(sample);
        match outcome {
            PushOutcome::OutOfOrder => self.counters.out_of_order += 1,
            PushOutcome::ChannelMismatch => self.counters.channel_mismatch += 1,
            PushOutcome::AfterGap => self.counters.gaps += 1,
            PushOutcome::Buffered | PushOutcome::WindowReady => {}
        }
        if matches!(
            outcome,
            PushOutcome::OutOfOrder | PushOutcome::ChannelMismatch
        ) {
            return PushResult {
                outcome,
                report: None,
            };
        }
        self.counters.samples += 1;
        self.normaliser.update(sample);
        let report = (outcome == PushOutcome::WindowReady).then(|| self.on_window());
        PushResult { outcome, report }
    }

    fn on_window(&mut self) -> WindowReport {
        let window = self.framer.window();
        self.normaliser
            .normalise(window.values, window.len, &mut self.normalised);
        let (start_ms, end_ms) = (window.start_ms, window.end_ms);
        let raw = self.scorer.score(&self.framer, &self.normalised);
        let learning_before = self.alerter.learning_allowed();
        let likelihood = self.likelihood.update(raw.score, learning_before);
        let step = self.alerter.observe(likelihood);
        let learned = self.alerter.learning_allowed();
        if learned {
            self.scorer.learn();
        }
        let index = self.counters.windows;
        self.counters.windows += 1;
        let detection = (step == AlertStep::Onset).then(|| {
            self.counters.detections += 1;
            Detection {
                seq: self.counters.detections,
                start_ms,
                end_ms,
                score: raw.score,
                likelihood: likelihood.unwrap_or(0.0),
                threshold: self.alerter.params().threshold,
                channel: raw.channel,
            }
        });
        WindowReport {
            index,
            start_ms,
            end_ms,
            score: raw.score,
            channel: raw.channel,
            likelihood,
            step,
            learned,
            detection,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn run(values: impl Iterator<Item = [f64; 2]>) -> (Pipeline, Vec<WindowReport>) {
        let params = PipelineParams::default().check().unwrap();
        let mut p = Pipeline::new(&params, 2);
        let mut reports = vec![];
        for (t, v) in values.enumerate() {
            let r = p.push(Sample::new(t as i64 * 1000, &v).unwrap());
            reports.extend(r.report);
        }
        (p, reports)
    }

    fn noise(seed: u64) -> impl Iterator<Item = [f64; 2]> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let n = Normal::new(0.0, 1.0).unwrap();
        std::iter::repeat_with(move || [10.0 + n.sample(&mut rng), 50.0 + 5.0 * n.sample(&mut rng)])
    }

    #[test]
    fn stationary_noise_raises_nothing_and_a_step_raises_one_detection() {
        let (p, reports) = run(noise(3).take(12_000));
        assert_eq!(
            p.counters().detections,
            0,
            "false alarm on stationary noise"
        );
        assert!(reports.iter().any(|r| r.step == AlertStep::Quiet));

        let fault_at = 10_000;
        let stream = noise(4).take(14_000).enumerate().map(|(i, [a, b])| {
            if i >= fault_at {
                [a, b + 40.0]
            } else {
                [a, b]
            }
        });
        let (p, reports) = run(stream);
        let detections: Vec<_> = reports.iter().filter_map(|r| r.detection).collect();
        assert_eq!(
            detections.len(),
            1,
            "one incident, one detection: {detections:?}"
        );
        let d = detections[0];
        assert_eq!(d.channel, 1);
        assert_eq!(d.seq, 1);
        assert!(
            d.end_ms >= fault_at as i64 * 1000 && d.start_ms <= (fault_at as i64 + 100) * 1000,
            "{d:?}"
        );
        assert_eq!(p.counters().detections, 1);
        // Alerting windows are not learned until the relearn policy kicks in.
        let onset = reports.iter().position(|r| r.detection.is_some()).unwrap();
        assert!(!reports[onset].learned);
    }

    #[test]
    fn warm_up_is_reported_as_such() {
        let (_, reports) = run(noise(5).take(600));
        assert!(reports
            .iter()
            .all(|r| r.step == AlertStep::Warmup && r.likelihood.is_none()));
    }

    #[test]
    fn same_input_same_output_and_state_round_trips() {
        let (a, ra) = run(noise(9).take(3000));
        let (b, rb) = run(noise(9).take(3000));
        assert_eq!(ra, rb);
        let json = serde_json::to_string(&a).unwrap();
        let restored: Pipeline = serde_json::from_str(&json).unwrap();
        assert!(restored == b, "state changed in a JSON round trip");
    }

    #[test]
    fn bad_params_name_their_section() {
        let mut p = PipelineParams::default();
        p.framer.hop = 0;
        assert_eq!(p.check().unwrap_err().field, "framer.hop");
    }
}
