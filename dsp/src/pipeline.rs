//! The per-stream pipeline: framer → normaliser → dictionary code → scorer → likelihood →
//! alert.
//!
//! One `Pipeline` per sensor stream. `push` takes one sample and, when it completes a window,
//! returns that window's report; the window's sparse code is then readable with
//! [`Pipeline::code`]. The model (scorer and dictionary) learns from the window only after it
//! was scored, and while the stream is alerting only as [`AlertParams`] allows
//! (`learn_every`, `relearn_after`).

use serde::{Deserialize, Serialize};

use crate::coding::SparseCode;
use crate::dictionary::{DictionaryParams, LearnScratch, OrthoDictionary};
use crate::memory::Recall;
use crate::params::{check_range, ParamError};
use crate::sample::Sample;
use crate::score::{
    AlertParams, AlertState, AlertStep, Alerter, AnomalyLikelihood, BaselineParams, BaselineScorer,
    GateReading, GatedParams, GatedScorer, LikelihoodParams, MemoryDetectorParams, MemoryScorer,
    RawScore, ResidualParams, ResidualScorer,
};
use crate::window::{Framer, FramerParams, Normaliser, NormaliserParams, PushOutcome};

/// Which detector scores windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Rolling-window Gaussian on window features ([`crate::score::baseline`]).
    Baseline,
    /// The dictionary's reconstruction residual: the share of the normalised window's energy
    /// its k largest atoms miss. Needs the code stage (window_len × channels ≤ coding.max_dim).
    Residual,
    /// Novelty of the window's code in the sparse-distributed associative memory, combined
    /// with the residual ([`crate::score::memory`]). Needs the code stage.
    Memory,
    /// The baseline's score, let through only for a window state (the baseline's features as
    /// z-scores) the associative memory finds novel ([`crate::score::gated`]): a recurring
    /// rare state stops alarming once the memory learned it. The default.
    #[default]
    Gated,
}

impl DetectorKind {
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Baseline => "baseline",
            DetectorKind::Residual => "residual",
            DetectorKind::Memory => "memory",
            DetectorKind::Gated => "gated",
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
    pub residual: ResidualParams,
    pub memory: MemoryDetectorParams,
    pub gated: GatedParams,
    pub dictionary: DictionaryParams,
    pub coding: CodingParams,
    pub likelihood: LikelihoodParams,
    pub alert: AlertParams,
}

/// Sparse coding of each window in the learned orthogonal dictionary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodingParams {
    /// Atoms kept per window (the k largest |coefficients|). Range 1..=4096, default 8.
    pub k: usize,
    /// Largest window dimension (window_len × channels) that gets a dictionary. A dictionary
    /// is n×n and a learning step costs O(n³), so wider streams run without codes (and cannot
    /// use the residual detector). Range 0..=1024 (0 disables codes), default 256.
    pub max_dim: usize,
}

impl Default for CodingParams {
    fn default() -> Self {
        Self { k: 8, max_dim: 256 }
    }
}

impl CodingParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("k", "in 1..=4096", self.k, 1, 4096)?;
        check_range("max_dim", "in 0..=1024", self.max_dim, 0, 1024)
    }
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
        self.residual
            .check()
            .map_err(|e| e.in_section("residual"))?;
        self.memory.check().map_err(|e| e.in_section("memory"))?;
        self.gated.check().map_err(|e| e.in_section("gated"))?;
        self.dictionary
            .check()
            .map_err(|e| e.in_section("dictionary"))?;
        self.coding.check().map_err(|e| e.in_section("coding"))?;
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
    /// Reconstruction residual of the window's sparse code, when the stream has a dictionary.
    pub residual: Option<f64>,
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
    Residual(ResidualScorer),
    Memory(Box<MemoryScorer>),
    Gated(Box<GatedScorer>),
}

impl Scorer {
    /// `in_incident`: the stream is alerting (the gated detector lets the baseline's score
    /// through then).
    fn score(
        &mut self,
        framer: &Framer,
        codes: Option<&mut CodeStage>,
        y: &[f64],
        in_incident: bool,
    ) -> RawScore {
        match self {
            Scorer::Baseline(b) => b.score(&framer.window()),
            Scorer::Gated(g) => g.score(&framer.window(), in_incident),
            Scorer::Residual(r) => {
                let c = codes.expect("the residual detector has a code stage");
                RawScore {
                    score: r.score(c.code.residual()),
                    channel: c.worst_channel(y, framer.params().window_len),
                }
            }
            Scorer::Memory(m) => {
                let c = codes.expect("the memory detector has a code stage");
                // The level of the channel furthest from its running mean (one channel's
                // offset is not diluted by the others).
                let len = framer.params().window_len;
                let level = y
                    .chunks(len)
                    .map(|ch| ch.iter().sum::<f64>() / len as f64)
                    .fold(0.0f64, |a, m| if m.abs() > a.abs() { m } else { a });
                RawScore {
                    score: m.score(&c.code, level),
                    channel: c.worst_channel(y, framer.params().window_len),
                }
            }
        }
    }

    fn learn(&mut self, in_incident: bool) {
        match self {
            Scorer::Baseline(b) if in_incident => b.learn_in_incident(),
            Scorer::Baseline(b) => b.learn(),
            Scorer::Residual(r) => r.learn(),
            Scorer::Memory(m) => m.learn(),
            Scorer::Gated(g) => g.learn(in_incident),
        }
    }
}

/// The dictionary and the code buffers of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CodeStage {
    k: usize,
    dictionary: OrthoDictionary,
    code: SparseCode,
    /// Scratch for the k-term reconstruction (explanations only).
    reconstruction: Vec<f64>,
    /// Per channel, its share of the energy the code misses, ‖y_c − ŷ_c‖² / ‖y − ŷ‖², and of
    /// the energy the code explains, ‖ŷ_c‖² / ‖ŷ‖², for the window `split_fresh` says (onset
    /// windows, and every window of the residual and memory detectors). Default to empty in
    /// checkpoints written before they existed.
    #[serde(default)]
    channel_residual: Vec<f64>,
    #[serde(default)]
    channel_code: Vec<f64>,
    /// Whether the channel split belongs to the current window.
    #[serde(default)]
    split_fresh: bool,
}

impl CodeStage {
    /// The channel whose samples carry most of the energy the code misses, ‖y_c − ŷ_c‖²
    /// (windows are channel-major, `len` samples per channel). O(n·k).
    fn worst_channel(&mut self, y: &[f64], len: usize) -> usize {
        self.split_channels(y, len)
    }

    /// Fills the channel split of the current window (both shares all 0 when their total is
    /// 0 or not finite) and returns the channel with the largest ‖y_c − ŷ_c‖² (the first on
    /// ties; 0 if none is a number). O(n·k); allocates only on the first call after a
    /// restore from a checkpoint without the split.
    fn split_channels(&mut self, y: &[f64], len: usize) -> usize {
        self.code
            .reconstruct(self.dictionary.dictionary(), &mut self.reconstruction);
        self.channel_residual.clear();
        self.channel_code.clear();
        for (yc, rc) in y.chunks(len).zip(self.reconstruction.chunks(len)) {
            let missed: f64 = yc.iter().zip(rc).map(|(a, b)| (a - b) * (a - b)).sum();
            self.channel_residual.push(missed);
            self.channel_code.push(rc.iter().map(|r| r * r).sum());
        }
        let worst = self
            .channel_residual
            .iter()
            .enumerate()
            .fold(
                (0, f64::MIN),
                |best, (c, &e)| if e > best.1 { (c, e) } else { best },
            )
            .0;
        for shares in [&mut self.channel_residual, &mut self.channel_code] {
            let total: f64 = shares.iter().sum();
            if total > 0.0 && total.is_finite() {
                shares.iter_mut().for_each(|e| *e /= total);
            } else {
                shares.fill(0.0);
            }
        }
        self.split_fresh = true;
        worst
    }
}

/// Why the last window was flagged, for the anomaly event ([`Pipeline::explanation`]): the
/// window's strongest atoms, how the energy the code misses splits over the channels, and,
/// with the memory detector, how familiar the window's SDR code was and how close the nearest
/// stored code came.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Explanation<'a> {
    /// The kept atoms, largest |coefficient| first, and their coefficients.
    pub atoms: &'a [usize],
    pub coefficients: &'a [f64],
    /// Per channel, its share in [0, 1] of ‖y − ŷ‖², the energy the atoms miss (sums to 1,
    /// or all 0 when the code explains the window exactly).
    pub channel_residual: &'a [f64],
    /// Per channel, its share in [0, 1] of ‖ŷ‖², the energy the atoms explain (sums to 1, or
    /// all 0 for a zero window).
    pub channel_code: &'a [f64],
    /// Memory and gated detectors only: familiarity G of the window's SDR code (gated: of the
    /// flagged channel's state), and the precision R of
    /// the input it recalls (the score's novelty is 1 − G·R, so a window can be novel at
    /// G ≈ 1 when R is low: it is a strict part of something stored).
    pub familiarity: Option<f64>,
    pub precision: Option<f64>,
    /// Overlap of the window's SDR code with the closest stored code, shared modules / Q
    /// (memory detector, when a stored code shares a cell).
    pub best_match_overlap: Option<f64>,
}

/// The per-stream pipeline. All of its state is allocated in [`Pipeline::new`]; the work
/// matrices of a dictionary learning step are not per stream but come from a
/// [`LearnScratch`] shared by the pipelines of one thread ([`Pipeline::push_with`]).
/// `push_with` does not allocate once [`Pipeline::reserve_scratch`] has run, except inside a
/// learning step (nalgebra's matrix products allocate packing buffers, and the rare SVD
/// fallback of the polar factor allocates); [`Pipeline::push`] allocates a scratch for each
/// learning step. The whole state serialises (serde) for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    params: PipelineParams,
    framer: Framer,
    normaliser: Normaliser,
    normalised: Vec<f64>,
    codes: Option<CodeStage>,
    scorer: Scorer,
    likelihood: AnomalyLikelihood,
    alerter: Alerter,
    counters: PipelineCounters,
    /// Whether the last window raised a detection (what [`Pipeline::explanation`] explains).
    #[serde(default)]
    onset: bool,
    /// Windows still to leave out of the dictionary before its first minibatch (see
    /// [`Pipeline::with_learning_stagger`]); absent in checkpoints older than it (0).
    #[serde(default)]
    stagger_left: usize,
}

impl Pipeline {
    /// A pipeline for a stream of `channels` channels.
    ///
    /// # Panics
    /// If `channels` is 0 or above [`crate::MAX_CHANNELS`], or [`Pipeline::try_new`] fails.
    pub fn new(params: &ValidPipelineParams, channels: usize) -> Self {
        Self::try_new(params, channels).expect("pipeline for this stream")
    }

    /// A pipeline for a stream of `channels` channels, or an error when the detector needs a
    /// dictionary and the window is wider than `coding.max_dim`.
    ///
    /// # Panics
    /// If `channels` is 0 or above [`crate::MAX_CHANNELS`].
    pub fn try_new(params: &ValidPipelineParams, channels: usize) -> Result<Self, ParamError> {
        let p = params.get().clone();
        let n = p.framer.window_len * channels;
        let codes = (n <= p.coding.max_dim).then(|| CodeStage {
            k: p.coding.k.min(n),
            dictionary: OrthoDictionary::new(p.dictionary.clone(), n),
            code: SparseCode::new(n),
            reconstruction: vec![0.0; n],
            channel_residual: Vec::with_capacity(channels),
            channel_code: Vec::with_capacity(channels),
            split_fresh: false,
        });
        let scorer = match p.detector {
            DetectorKind::Baseline => {
                Scorer::Baseline(BaselineScorer::new(p.baseline.clone(), channels))
            }
            DetectorKind::Residual | DetectorKind::Memory if codes.is_none() => {
                return Err(ParamError::new(
                    "coding.max_dim",
                    "at least window_len × channels for the residual and memory detectors",
                    format!("{} (window dimension {n})", p.coding.max_dim),
                ));
            }
            DetectorKind::Memory => Scorer::Memory(Box::new(MemoryScorer::new(
                &p.memory,
                p.residual.clone(),
                n,
            ))),
            DetectorKind::Residual => Scorer::Residual(ResidualScorer::new(p.residual.clone())),
            DetectorKind::Gated => Scorer::Gated(Box::new(GatedScorer::new(
                p.gated.clone(),
                p.baseline.clone(),
                channels,
            ))),
        };
        Ok(Self {
            framer: Framer::new(p.framer.clone(), channels),
            normaliser: Normaliser::new(p.normaliser.clone(), channels),
            normalised: vec![0.0; n],
            codes,
            scorer,
            likelihood: AnomalyLikelihood::new(p.likelihood.clone()),
            alerter: Alerter::new(p.alert.clone()),
            counters: PipelineCounters::default(),
            onset: false,
            params: p,
            stagger_left: 0,
        })
    }

    /// Spreads the dictionary learning steps of many streams over time: the first
    /// `seed mod b` windows this stream learns from are left out of its dictionary (b = the
    /// minibatch), so its steps come that many windows later than those of a stream with
    /// seed 0. Streams fed round-robin would otherwise all fill a minibatch, and each run an
    /// O(n³) step, within the same few milliseconds, a burst that outlasts a worker's queue.
    /// Deterministic in `seed`: the daemon and the offline replay derive it from the sensor
    /// key with the same fixed hash, so they agree. Only the dictionary (codes, and the
    /// residual and memory detectors) is shifted; the baseline scorer learns every window.
    /// No effect without a dictionary.
    ///
    /// # Panics
    /// If the pipeline has already completed a window.
    pub fn with_learning_stagger(mut self, seed: u64) -> Self {
        assert_eq!(
            self.counters.windows, 0,
            "the learning stagger is set before the first window"
        );
        if let Some(c) = &self.codes {
            self.stagger_left = (seed % c.dictionary.minibatch() as u64) as usize;
        }
        self
    }

    /// Windows still to be left out of the dictionary by the learning stagger.
    pub fn learning_stagger_left(&self) -> usize {
        self.stagger_left
    }

    /// The sparse code of the last completed window, when the stream has a dictionary.
    pub fn code(&self) -> Option<&SparseCode> {
        self.codes.as_ref().map(|c| &c.code)
    }

    /// The stream's dictionary, when it has one.
    pub fn dictionary(&self) -> Option<&OrthoDictionary> {
        self.codes.as_ref().map(|c| &c.dictionary)
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

    /// Samples held towards the next window (the partial window).
    pub fn held(&self) -> usize {
        self.framer.held()
    }

    /// Whether the likelihood is fitted, i.e. the stream is past its warm-up.
    pub fn is_warm(&self) -> bool {
        self.likelihood.is_warm()
    }

    /// The memory's recall of the last completed window (its SDR code, familiarity and best
    /// match), when the detector is `memory` (the window's code) or `gated` (the window's
    /// state).
    pub fn recall(&self) -> Option<&Recall> {
        match &self.scorer {
            Scorer::Memory(m) => Some(m.recall()),
            Scorer::Gated(g) => Some(g.recall()),
            Scorer::Baseline(_) | Scorer::Residual(_) => None,
        }
    }

    /// The gate's reading of the last completed window (baseline score, novelty, gate), when
    /// the detector is `gated`.
    pub fn gate_reading(&self) -> Option<GateReading> {
        match &self.scorer {
            Scorer::Gated(g) => Some(g.reading()),
            _ => None,
        }
    }

    /// Why the last completed window raised a detection: `Some` from a [`Pipeline::push`]
    /// whose report carries one until the next window completes, when the stream has a
    /// dictionary (window no wider than `coding.max_dim`); `None` after any other window.
    pub fn explanation(&self) -> Option<Explanation<'_>> {
        if !self.onset {
            return None;
        }
        let c = self.codes.as_ref().filter(|c| c.split_fresh)?;
        let recall = self.recall().filter(|r| r.is_coded());
        Some(Explanation {
            atoms: c.code.indices(),
            coefficients: c.code.values(),
            channel_residual: &c.channel_residual,
            channel_code: &c.channel_code,
            familiarity: recall.map(|r| r.familiarity),
            precision: recall.map(|r| r.precision),
            best_match_overlap: recall.and_then(|r| r.best_match.map(|b| b.overlap)),
        })
    }

    /// The associative memory, when the detector is `memory` or `gated`.
    pub fn memory(&self) -> Option<&crate::memory::SdrMemory> {
        match &self.scorer {
            Scorer::Memory(m) => Some(m.memory()),
            Scorer::Gated(g) => Some(g.memory()),
            Scorer::Baseline(_) | Scorer::Residual(_) => None,
        }
    }

    /// Switches a pipeline that learned with the `baseline` detector to the `gated` one (the
    /// default since the memory became it), keeping everything the baseline learned: the
    /// gated detector is the baseline plus per-channel memories, which start empty (so until
    /// rare states recur it scores exactly as the baseline did). `gated`: the new
    /// `[pipeline.gated]` (checked). Returns false, changing nothing, for any other detector.
    pub fn adopt_gated(&mut self, gated: GatedParams) -> Result<bool, ParamError> {
        gated.check().map_err(|e| e.in_section("gated"))?;
        let channels = self.channels();
        let scorer = std::mem::replace(
            &mut self.scorer,
            Scorer::Residual(ResidualScorer::new(self.params.residual.clone())),
        );
        let Scorer::Baseline(baseline) = scorer else {
            self.scorer = scorer;
            return Ok(false);
        };
        self.scorer = Scorer::Gated(Box::new(GatedScorer::over(
            gated.clone(),
            baseline,
            channels,
        )));
        self.params.detector = DetectorKind::Gated;
        self.params.gated = gated;
        Ok(true)
    }

    /// Takes a new `[pipeline.gated]` without losing what was learned, where that is
    /// possible: for a detector other than `gated` the section is not read, so it is replaced
    /// as is; for `gated`, only a changed `sdr.index_capacity` (the best-match index starts
    /// again, scores are unchanged). Anything else: Err, nothing changed.
    pub fn set_gated_params(&mut self, gated: GatedParams) -> Result<(), ParamError> {
        gated.check().map_err(|e| e.in_section("gated"))?;
        if let Scorer::Gated(g) = &mut self.scorer {
            let mut same_but_index = g.params().clone();
            same_but_index.sdr.index_capacity = gated.sdr.index_capacity;
            if same_but_index != gated {
                return Err(ParamError::new(
                    "gated",
                    "the learned gate's parameters, or another sdr.index_capacity",
                    "other parameters",
                ));
            }
            g.set_index_capacity(gated.sdr.index_capacity)
                .map_err(|e| e.in_section("gated.sdr"))?;
        }
        self.params.gated = gated;
        Ok(())
    }

    /// Changes the alert thresholds in place, keeping everything learned.
    pub fn set_alert_params(&mut self, params: AlertParams) -> Result<(), ParamError> {
        params.check().map_err(|e| e.in_section("alert"))?;
        self.params.alert = params.clone();
        self.alerter.set_params(params);
        Ok(())
    }

    /// Makes sure `scratch` holds the work buffers this pipeline's learning steps need (call
    /// it when the stream is created or restored; allocates only for a new dimension).
    pub fn reserve_scratch(&self, scratch: &mut LearnScratch) {
        if let Some(c) = &self.codes {
            scratch.reserve(&c.dictionary);
        }
    }

    /// Takes one sample, as [`push_with`](Self::push_with) with a scratch of its own for
    /// each dictionary learning step (allocated then, about seven n×n matrices). For tests
    /// and one-off runs; a thread that runs many streams shares one scratch.
    pub fn push(&mut self, sample: Sample<'_>) -> PushResult {
        self.push_with(sample, &mut LearnScratch::new())
    }

    /// Takes one sample; when it completes a window, scores it, learns from it as the
    /// alert policy allows (a dictionary step works in `scratch`), and reports it. The
    /// result does not depend on `scratch`'s history.
    pub fn push_with(&mut self, sample: Sample<'_>, scratch: &mut LearnScratch) -> PushResult {
        let outcome = self.framer.push(sample);
        match outcome {
            PushOutcome::OutOfOrder => self.counters.out_of_order += 1,
            PushOutcome::ChannelMismatch => self.counters.channel_mismatch += 1,
            PushOutcome::AfterGap => {
                self.counters.gaps += 1;
                // The memory's temporal context (if on) must not link across the gap.
                if let Scorer::Memory(m) = &mut self.scorer {
                    m.break_sequence();
                }
            }
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
        let report = (outcome == PushOutcome::WindowReady).then(|| self.on_window(scratch));
        PushResult { outcome, report }
    }

    fn on_window(&mut self, scratch: &mut LearnScratch) -> WindowReport {
        let window = self.framer.window();
        self.normaliser
            .normalise(window.values, window.len, &mut self.normalised);
        let (start_ms, end_ms) = (window.start_ms, window.end_ms);
        if let Some(c) = &mut self.codes {
            c.dictionary.code(&self.normalised, c.k, &mut c.code);
            c.split_fresh = false;
        }
        let residual = self.codes.as_ref().map(|c| c.code.residual());
        let alerting = self.alerter.state() == AlertState::Alerting;
        let raw = self.scorer.score(
            &self.framer,
            self.codes.as_mut(),
            &self.normalised,
            alerting,
        );
        let learning_before = self.alerter.learning_allowed();
        let likelihood = self.likelihood.update(raw.score, learning_before);
        let step = self.alerter.observe(likelihood);
        self.onset = step == AlertStep::Onset;
        if self.onset {
            // Before learning moves the dictionary away from the code's.
            if let Some(c) = self.codes.as_mut().filter(|c| !c.split_fresh) {
                c.split_channels(&self.normalised, self.framer.params().window_len);
            }
        }
        let learned = self.alerter.learning_allowed();
        if learned {
            self.scorer.learn(self.alerter.sampling_incident());
            if let Some(c) = &mut self.codes {
                if self.stagger_left > 0 {
                    self.stagger_left -= 1;
                } else {
                    c.dictionary.learn_with(&self.normalised, scratch);
                }
            }
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
            residual,
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
    use crate::score::LikelihoodScale;
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
        // Alerting windows are not learned, except by the documented policy: every
        // `learn_every`-th window of the incident, and all after `relearn_after`.
        let onset = reports.iter().position(|r| r.detection.is_some()).unwrap();
        assert!(!reports[onset].learned);
        let alert = AlertParams::default();
        let mut checked = 0;
        for (i, r) in reports[onset..].iter().enumerate().skip(1) {
            if r.step != AlertStep::Ongoing {
                break;
            }
            let nth = i as u32 + 1;
            let policy = nth % alert.learn_every == 0 || nth > alert.relearn_after;
            assert_eq!(r.learned, policy, "incident window {nth}");
            checked += 1;
        }
        assert!(
            checked >= alert.learn_every,
            "the incident lasted {checked} windows"
        );
    }

    #[test]
    fn no_false_alarm_right_after_the_warm_up() {
        // The raw scale scores from window 64 (sample 288), when the baseline's history holds
        // only 48 heavily overlapping windows: its Gaussian fit must not turn noise into alarms.
        for seed in 100..108 {
            let (p, reports) = run(noise(seed).take(3000));
            assert!(reports.iter().any(|r| r.likelihood.is_some()));
            assert_eq!(p.counters().detections, 0, "false alarm with seed {seed}");
        }
    }

    #[test]
    fn warm_up_is_reported_as_such() {
        // 150 samples are windows 0..=29 at hop 4; the raw-scale likelihood needs 64 windows.
        let (_, reports) = run(noise(5).take(150));
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
    fn windows_carry_a_sparse_code_from_the_learned_dictionary() {
        let (p, reports) = run(noise(11).take(3000));
        let code = p
            .code()
            .expect("2 × 32 = 64 ≤ max_dim, so the stream has a dictionary");
        assert_eq!(code.n(), 64);
        assert_eq!(code.k(), 8);
        assert!(reports
            .iter()
            .all(|r| r.residual.is_some_and(|v| (0.0..=1.0).contains(&v))));
        let d = p.dictionary().unwrap();
        assert!(d.version() > 0, "the dictionary learned");
        // D is stored as f32: orthogonal to f32 precision (see `OrthoDictionary::dictionary`).
        let dd = d.dictionary().map(f64::from);
        let off = (dd.transpose() * &dd - nalgebra::DMatrix::<f64>::identity(64, 64)).norm();
        assert!(off < 64.0 * f64::from(f32::EPSILON), "‖DᵀD − I‖ = {off}");
    }

    #[test]
    fn wide_streams_run_without_codes_and_refuse_the_residual_detector() {
        let mut params = PipelineParams::default();
        params.coding.max_dim = 32;
        let p = Pipeline::new(&params.clone().check().unwrap(), 2);
        assert!(p.code().is_none());
        params.detector = DetectorKind::Residual;
        let err = Pipeline::try_new(&params.check().unwrap(), 2).unwrap_err();
        assert_eq!(err.field, "coding.max_dim");
    }

    #[test]
    fn residual_detector_flags_a_new_pattern_and_constant_input_stays_finite() {
        // The residual and memory scores are not calibrated: they go through the fitted
        // likelihood (log scale), as the configuration documents.
        let params = PipelineParams {
            detector: DetectorKind::Residual,
            likelihood: LikelihoodParams {
                scale: LikelihoodScale::Log,
                ..Default::default()
            },
            ..Default::default()
        };
        let params = params.check().unwrap();
        let mut p = Pipeline::new(&params, 1);
        let mut detections = vec![];
        for t in 0..16_000i64 {
            // A clean sine, then a square wave of the same amplitude: a shape never seen.
            let phase = t as f64 * 2.0 * std::f64::consts::PI / 16.0;
            let v = if t < 12_000 {
                phase.sin()
            } else {
                phase.sin().signum()
            };
            let r = p.push(Sample::new(t, &[v]).unwrap());
            if let Some(rep) = r.report {
                assert!(rep.score.is_finite() && rep.likelihood.is_none_or(f64::is_finite));
                detections.extend(rep.detection);
            }
        }
        assert!(!detections.is_empty(), "a change of shape must be detected");
        assert!(
            detections.iter().all(|d| d.end_ms >= 12_000),
            "{detections:?}"
        );

        let mut flat = Pipeline::new(&params, 1);
        for t in 0..2000i64 {
            let r = flat.push(Sample::new(t, &[0.0]).unwrap());
            if let Some(rep) = r.report {
                assert!(rep.score.is_finite() && rep.residual.unwrap().is_finite());
            }
        }
        assert!(flat
            .code()
            .unwrap()
            .coefficients()
            .iter()
            .all(|c| c.is_finite()));
    }

    #[test]
    fn memory_detector_flags_a_new_shape_and_round_trips() {
        // The residual and memory scores are not calibrated: they go through the fitted
        // likelihood (log scale), as the configuration documents.
        let params = PipelineParams {
            detector: DetectorKind::Memory,
            likelihood: LikelihoodParams {
                scale: LikelihoodScale::Log,
                ..Default::default()
            },
            ..Default::default()
        };
        let params = params.check().unwrap();
        let mut p = Pipeline::new(&params, 1);
        let mut detections = vec![];
        for t in 0..12_000i64 {
            let phase = t as f64 * 2.0 * std::f64::consts::PI / 16.0;
            let v = if t < 9_000 {
                phase.sin()
            } else {
                phase.sin().signum()
            };
            if let Some(rep) = p.push(Sample::new(t, &[v]).unwrap()).report {
                assert!((0.0..=1.0).contains(&rep.score), "{rep:?}");
                if rep.detection.is_some() {
                    // The memory part of the explanation is the window's recall.
                    let e = p.explanation().expect("explained");
                    let r = p.recall().unwrap();
                    assert_eq!(e.familiarity, Some(r.familiarity));
                    assert_eq!(e.precision, Some(r.precision));
                    assert_eq!(e.best_match_overlap, r.best_match.map(|b| b.overlap));
                }
                detections.extend(rep.detection);
            }
            if t == 6_000 {
                let json = serde_json::to_string(&p).unwrap();
                let restored: Pipeline = serde_json::from_str(&json).unwrap();
                assert!(
                    restored == p,
                    "memory detector state changed in a round trip"
                );
            }
        }
        assert!(!detections.is_empty(), "a change of shape must be detected");
        assert!(
            detections.iter().all(|d| d.end_ms >= 9_000),
            "{detections:?}"
        );
    }

    /// The onset window's explanation names the stepped channel as carrying most of what the
    /// code misses, with shares that sum to 1, and the code's atoms; the gated detector (the
    /// default) adds the familiarity of the flagged channel's state, the baseline detector has
    /// no memory part.
    #[test]
    fn a_detection_explains_its_channels_and_atoms() {
        for detector in [DetectorKind::Gated, DetectorKind::Baseline] {
            assert!(explains_the_stepped_channel(detector) > 0, "{detector:?}");
        }
    }

    fn explains_the_stepped_channel(detector: DetectorKind) -> usize {
        let params = PipelineParams {
            detector,
            ..PipelineParams::default()
        }
        .check()
        .unwrap();
        let mut p = Pipeline::new(&params, 2);
        let mut explained = 0;
        for (t, [a, b]) in noise(4).take(14_000).enumerate() {
            let v = if t >= 10_000 { [a, b + 40.0] } else { [a, b] };
            let r = p.push(Sample::new(t as i64 * 1000, &v).unwrap());
            let Some(d) = r.report.and_then(|r| r.detection) else {
                if r.report.is_some() {
                    assert!(p.explanation().is_none(), "only a detection is explained");
                }
                continue;
            };
            let e = p.explanation().expect("two channels × 32 get a dictionary");
            assert_eq!(e.channel_residual.len(), 2);
            for shares in [e.channel_residual, e.channel_code] {
                assert_eq!(shares.len(), 2);
                let total: f64 = shares.iter().sum();
                assert!((total - 1.0).abs() < 1e-12, "{e:?}");
            }
            assert!(e.channel_residual[1] > e.channel_residual[0], "{e:?}");
            assert_eq!(d.channel, 1);
            assert_eq!(e.atoms.len(), params.get().coding.k);
            assert_eq!(e.atoms.len(), e.coefficients.len());
            assert_eq!(e.atoms, p.code().unwrap().indices());
            if detector == DetectorKind::Baseline {
                assert_eq!(
                    (e.familiarity, e.precision, e.best_match_overlap),
                    (None, None, None)
                );
            } else {
                let g = e.familiarity.expect("the gate's familiarity");
                // The onset passed the gate: the state was not familiar enough to clear it.
                assert!((0.0..0.9).contains(&g), "{e:?}");
                assert!(e.precision.is_some());
            }
            explained += 1;
        }
        assert_eq!(explained, 1, "{detector:?}");
        explained
    }

    /// With the memory detector every window's recall is exposed (a code of one winner per
    /// module, a familiarity in [0, 1]), and a repeated shape is familiar and matched.
    #[test]
    fn the_memory_detector_exposes_each_windows_recall() {
        let params = PipelineParams {
            detector: DetectorKind::Memory,
            ..Default::default()
        };
        let params = params.check().unwrap();
        let q = params.get().memory.sdr.modules;
        let mut p = Pipeline::new(&params, 1);
        let mut last = None;
        for t in 0..4_000i64 {
            let v = (t as f64 * 2.0 * std::f64::consts::PI / 16.0).sin();
            if p.push(Sample::new(t, &[v]).unwrap()).report.is_some() {
                let r = p.recall().expect("memory detector");
                assert!((0.0..=1.0).contains(&r.familiarity), "{r:?}");
                if r.is_coded() {
                    assert_eq!(r.code.len(), q);
                }
                last = Some(r.clone());
            }
        }
        let r = last.expect("windows");
        assert!(r.is_coded());
        assert!(r.familiarity > 0.9, "a repeated sine is familiar: {r:?}");
        assert!(r.best_match.is_some_and(|b| b.overlap > 0.5), "{r:?}");
    }

    /// The gated detector: the memory stores only windows the pipeline learns (never an
    /// incident's unlearned windows), the whole state round-trips, and the gate's reading and
    /// recall are exposed.
    #[test]
    fn the_gated_detector_learns_only_learned_windows_and_round_trips() {
        let params = PipelineParams {
            detector: DetectorKind::Gated,
            ..Default::default()
        };
        let params = params.check().unwrap();
        let mut p = Pipeline::new(&params, 1);
        let (mut detections, mut unlearned, mut json_checked) = (0, 0, false);
        for (t, [_, b]) in noise(4).take(14_000).enumerate() {
            // Bursts every 600 samples, then a lasting step from sample 10 000.
            let v = if t >= 10_000 {
                b + 40.0
            } else if t % 600 < 3 && t > 600 {
                b * 20.0
            } else {
                b
            };
            let before = p.memory().map(|m| m.learned()).unwrap();
            let Some(r) = p.push(Sample::new(t as i64 * 1000, &[v]).unwrap()).report else {
                continue;
            };
            let after = p.memory().map(|m| m.learned()).unwrap();
            let g = p.gate_reading().expect("gated detector");
            assert!((0.0..=1.0).contains(&g.gate) && (0.0..=1.0).contains(&g.novelty));
            assert!((r.score - g.baseline * g.gate).abs() < 1e-12, "{r:?} {g:?}");
            let familiarity = p.recall().unwrap().familiarity;
            assert!((familiarity - (1.0 - g.novelty)).abs() < 1e-12, "{g:?}");
            if !r.learned {
                assert_eq!(
                    after, before,
                    "an unlearned window entered the memory: {r:?}"
                );
                unlearned += 1;
            } else {
                assert!(after - before <= 1);
            }
            detections += usize::from(r.detection.is_some());
            if !json_checked && t >= 10_400 {
                let json = serde_json::to_string(&p).unwrap();
                let restored: Pipeline = serde_json::from_str(&json).unwrap();
                assert!(restored == p, "gated state changed in a round trip");
                json_checked = true;
            }
        }
        assert!(json_checked);
        assert!(detections >= 1 && unlearned > 0, "{detections} {unlearned}");
        assert!(
            p.memory().unwrap().learned() > 0,
            "no rare state was stored"
        );
    }

    #[test]
    fn a_checkpoint_from_before_the_gated_detector_restores() {
        let params = PipelineParams {
            detector: DetectorKind::Baseline,
            ..PipelineParams::default()
        }
        .check()
        .unwrap();
        let mut p = Pipeline::new(&params, 2);
        for (t, v) in noise(12).take(500).enumerate() {
            p.push(Sample::new(t as i64 * 1000, &v).unwrap());
        }
        let mut v = serde_json::to_value(&p).unwrap();
        v["params"]
            .as_object_mut()
            .unwrap()
            .remove("gated")
            .unwrap();
        // ... and from before the long features' own tail and the per-channel scores.
        v["params"]["baseline"]
            .as_object_mut()
            .unwrap()
            .remove("long_tail")
            .unwrap();
        let old: Pipeline = serde_json::from_value(v).unwrap();
        assert!(old == p);
        assert_eq!(old.params(), params.get());
        assert!(old.gate_reading().is_none() && old.memory().is_none());
    }

    #[test]
    fn bad_params_name_their_section() {
        let mut p = PipelineParams::default();
        p.framer.hop = 0;
        assert_eq!(p.check().unwrap_err().field, "framer.hop");
        let mut p = PipelineParams::default();
        p.coding.k = 0;
        assert_eq!(p.check().unwrap_err().field, "coding.k");
        let mut p = PipelineParams::default();
        p.coding.max_dim = 5000;
        assert_eq!(p.check().unwrap_err().field, "coding.max_dim");
        let mut p = PipelineParams::default();
        p.dictionary.gamma_floor = 2.0;
        assert_eq!(p.check().unwrap_err().field, "dictionary.gamma_floor");
        let mut p = PipelineParams::default();
        p.residual.half_life = 0.0;
        assert_eq!(p.check().unwrap_err().field, "residual.half_life");
        let mut p = PipelineParams::default();
        p.memory.sdr.max_fill = 0.0;
        assert!(p.check().unwrap_err().field.starts_with("memory.sdr."));
    }

    /// Window index at which each dictionary version first appears.
    fn version_changes(p: &mut Pipeline, samples: usize) -> Vec<u64> {
        let mut last = 0;
        let mut changes = vec![];
        for (t, v) in noise(21).take(samples).enumerate() {
            if let Some(r) = p.push(Sample::new(t as i64 * 1000, &v).unwrap()).report {
                let version = p.dictionary().unwrap().version();
                if version != last {
                    changes.push(r.index);
                    last = version;
                }
            }
        }
        changes
    }

    #[test]
    fn the_learning_stagger_delays_every_dictionary_step_by_the_seed_mod_b() {
        let params = PipelineParams::default().check().unwrap();
        let b = Pipeline::new(&params, 2).dictionary().unwrap().minibatch();
        assert_eq!(b, 64, "the default minibatch of a 2 × 32 window");
        let mut plain = Pipeline::new(&params, 2);
        // seed ≡ 5 (mod 64): five windows later.
        let mut late = Pipeline::new(&params, 2).with_learning_stagger(3 * 64 + 5);
        assert_eq!(late.learning_stagger_left(), 5);
        let a = version_changes(&mut plain, 2000);
        let c = version_changes(&mut late, 2000);
        assert!(a.len() >= 5, "steps: {a:?}");
        assert_eq!(
            a[0],
            b as u64 - 1,
            "the first step completes the first minibatch"
        );
        let shifted: Vec<u64> = a.iter().map(|i| i + 5).take(c.len()).collect();
        assert_eq!(c, shifted, "every step five windows later");
        assert_eq!(late.learning_stagger_left(), 0);
        // Deterministic in the seed, and a multiple of b is no stagger at all.
        let mut again = Pipeline::new(&params, 2).with_learning_stagger(3 * 64 + 5);
        assert_eq!(version_changes(&mut again, 2000), c);
        assert!(again == late, "same seed, same state");
        let mut whole = Pipeline::new(&params, 2).with_learning_stagger(128);
        assert_eq!(version_changes(&mut whole, 2000), a);
    }

    #[test]
    fn a_checkpoint_without_the_stagger_field_restores_with_none_left() {
        let params = PipelineParams::default().check().unwrap();
        let p = Pipeline::new(&params, 2).with_learning_stagger(7);
        let mut v = serde_json::to_value(&p).unwrap();
        v.as_object_mut().unwrap().remove("stagger_left").unwrap();
        let old: Pipeline = serde_json::from_value(v).unwrap();
        assert_eq!(old.learning_stagger_left(), 0);
    }
}
