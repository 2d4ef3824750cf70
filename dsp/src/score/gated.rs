//! The gated detector: the baseline's score, let through only for a window *state* the
//! associative memory has not seen before.
//!
//! The baseline ([`super::baseline`]) judges each window feature against a (Student-t)
//! Gaussian fit of its history. A Gaussian cannot represent a *recurring rare state*: a burst
//! a hundred times the background that comes back every few hundred samples is always far in
//! its tail, so it alarms every time although the stream has done it before. The memory can:
//! it stores states, and a stored state is familiar however rare it is.
//!
//! Per window and channel, the state is that channel's baseline features (mean, spread,
//! newest-eighth mean, maximum, and the two long time-scale features), each as a z-score against its
//! learned history (what the baseline judged), compressed to `u = sign(z)·log2(1 + |z|)` so a
//! burst at z = 100 and one at z = 300 are neighbours while z = 0 and z = 8 are not, and
//! encoded into an overlapping-bucket scalar block ([`ScalarBlockParams`]): nearby values
//! share most of their bits. Unlike the dictionary code, which is new for every window's fine
//! shape, this input repeats whenever the channel is in the same kind of state. Each channel
//! has its own memory ([`SdrMemory`], evidence exponent 4 so that a state matching five of
//! six features is not "mostly familiar"); each channel's memory is asked in recognition mode
//! how familiar its state is, and
//!
//! `raw = max over channels c of baseline_c × g(novelty_c)`,
//! `g = clamp((novelty − floor) / (full − floor), 0, 1)`,
//!
//! with novelty = 1 − G (or the two-sided 1 − G·R) and `baseline_c` the baseline's score from
//! channel c's features alone (with the Bonferroni factor of all features; the baseline's own
//! score is the largest of them). So a familiar burst on one channel does not hide a new
//! change on another in the same window. A product, not a minimum or an OR: the
//! memory may only take surprise away (a familiar state), never add it, so on a stream
//! without recurring rare states the detector is the baseline. While an incident is open the
//! gate is 1 (by default): it decides whether a state opens an incident, not how long one
//! lasts.
//!
//! What the memory stores: only windows the pipeline learns (warm-up and quiet windows, and
//! in an incident only those the alert policy samples, `learn_every` / `relearn_after`), and
//! of those only each channel's rare states, whose `baseline_c` was at least `store_above`. So a fault
//! that keeps coming back while alerting stays novel, but a burst the stream made while it
//! was being learned, or that stayed below the alert level, makes its later repeats familiar;
//! and the many mildly unusual windows of a normal stream are not stored, so they cannot make
//! a real but modest change look familiar (storing every learned window lost half of the
//! NAB true positives; BENCHMARKS.md, "Memory-gated baseline").
//!
//! The state is relative to the baseline's history, which changes as rare windows enter it,
//! so the same burst drifts through neighbouring states until the history holds several;
//! the first repeats after a burst was learned are not always familiar yet.

use serde::{Deserialize, Serialize};

use super::baseline::{BaselineParams, BaselineScorer};
use super::RawScore;
use crate::memory::bitset::words_for;
use crate::memory::encoder::ScalarBlock;
use crate::memory::{MemoryParams, Recall, ScalarBlockParams, SdrMemory};
use crate::params::{check_range, ParamError};
use crate::window::WindowView;

/// Parameters of the gated detector (`[pipeline.gated]`); the baseline part is
/// `[pipeline.baseline]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatedParams {
    /// Put the long time-scale features (when the baseline has them) into the state too.
    /// Default true.
    pub long_features: bool,
    /// The scalar block of each feature, on the compressed z-score u = sign(z)·log2(1 + |z|)
    /// (linear buckets from `min` to `max`). Default 64 bits, runs of 6, u in −10..10
    /// (|z| up to ≈ 1000; 2.9 buckets per doubling of |z|).
    pub block: ScalarBlockParams,
    /// Novelty at or below which the baseline's score is cleared (a familiar state).
    /// Range 0..novelty_full, default 0.1.
    pub novelty_floor: f64,
    /// Novelty at or above which the baseline's score passes unchanged.
    /// Range novelty_floor..=1, default 0.4.
    pub novelty_full: f64,
    /// Novelty as 1 − G·R (two-sided: also a state that lacks parts of a stored one) rather
    /// than 1 − G. Default false.
    pub two_sided: bool,
    /// The memory stores the state of a learned window only if the baseline's raw score
    /// was at least this: a memory of *rare* states. Storing every normal window makes any
    /// moderately unusual state look familiar (normal streams pass through z ≈ 3–4 often),
    /// so a real but modest change would be gated. Range 0..=1, default 0.8 (p ≤ 1e-8).
    pub store_above: f64,
    /// Whether the gate also applies while an incident is open. false (default): the gate
    /// only decides whether a state opens an incident; once open, the baseline's score runs
    /// it unchanged, so a fault whose phases pass through familiar states is not split into
    /// several incidents.
    pub gate_in_incident: bool,
    /// The memory of each channel. Default Q = 8 modules of K = 16 cells and evidence
    /// exponent λ = 4 (V = (u/π)^4: a state that shares five of its six features' bits with
    /// a stored one is (5/6)^4 = 0.48 familiar, not 0.83, so a state that differs in one
    /// feature still counts as new); otherwise as [`MemoryParams::default`].
    pub sdr: MemoryParams,
}

impl Default for GatedParams {
    fn default() -> Self {
        Self {
            long_features: true,
            block: ScalarBlockParams {
                bits: 64,
                window: 6,
                min: -10.0,
                max: 10.0,
            },
            novelty_floor: 0.1,
            novelty_full: 0.4,
            two_sided: false,
            store_above: 0.8,
            gate_in_incident: false,
            sdr: MemoryParams {
                modules: 8,
                evidence_exponent: 4.0,
                // About the distinct-state budget, 0.35·N·K/s = 0.35 · 384 · 16 / 36 ≈ 60
                // states per bank (six features of 64 bits, runs of 6): the index names the
                // stored state a window is closest to, and needs no more slots than a bank
                // can hold states (the memory's default of 256 is for N = 1024, s = 32).
                index_capacity: 64,
                ..MemoryParams::default()
            },
        }
    }
}

impl GatedParams {
    pub fn check(&self) -> Result<(), ParamError> {
        self.block.check(false).map_err(|e| e.in_section("block"))?;
        if self.block.bits == 0 {
            return Err(ParamError::new("block.bits", "in 1..=4096", 0));
        }
        check_range(
            "novelty_full",
            "in 0..=1",
            self.novelty_full,
            f64::MIN_POSITIVE,
            1.0,
        )?;
        check_range(
            "novelty_floor",
            "in 0..novelty_full",
            self.novelty_floor,
            0.0,
            self.novelty_full,
        )?;
        if self.novelty_floor >= self.novelty_full {
            return Err(ParamError::new(
                "novelty_floor",
                "below novelty_full",
                self.novelty_floor,
            ));
        }
        check_range("store_above", "in 0..=1", self.store_above, 0.0, 1.0)?;
        self.sdr.check().map_err(|e| e.in_section("sdr"))
    }
}

/// The gated detector's state: the baseline, one memory of window states per channel, and
/// the buffers of one window (allocated at construction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatedScorer {
    params: GatedParams,
    baseline: BaselineScorer,
    /// One memory per channel: a channel's state is its own features, so a change of one
    /// channel among many is not diluted by the others' familiar features.
    memories: Vec<SdrMemory>,
    /// Features of a channel that enter its state (indices into the channel's features).
    kept: usize,
    /// z-scores of the baseline's features for the window scored last.
    z: Vec<f64>,
    /// The encoded state of each channel (`words` words each) and its recall, reused by
    /// `learn`.
    input: Vec<u64>,
    words: usize,
    recalls: Vec<Recall>,
    /// Per channel, the baseline's score from that channel's features alone (the window's
    /// baseline score is the largest), for the window scored last.
    #[serde(default)]
    channel_score: Vec<f64>,
    /// The channel whose gated score is the window's, in the window scored last.
    channel: usize,
    /// Baseline raw score, novelty and gate of the window scored last.
    last: GateReading,
}

/// What the gate saw for the window scored last.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct GateReading {
    /// The baseline's raw score of the channel that carries the window's gated score, before
    /// the gate (with one channel, the window's baseline score).
    pub baseline: f64,
    /// The memory's novelty of that channel's state.
    pub novelty: f64,
    /// g(novelty) ∈ [0, 1], the factor applied to the baseline's score.
    pub gate: f64,
}

impl GatedScorer {
    /// Panics unless both parameter sets pass their checks and `channels ≥ 1`.
    pub fn new(params: GatedParams, baseline: BaselineParams, channels: usize) -> Self {
        Self::over(params, BaselineScorer::new(baseline, channels), channels)
    }

    /// A gated detector over a baseline that has already learned (a stream that ran with the
    /// `baseline` detector): its history is kept, the memories start empty, so the gate
    /// passes every score until rare states recur. Panics unless `params` pass their check
    /// and `channels ≥ 1`.
    pub fn over(params: GatedParams, baseline: BaselineScorer, channels: usize) -> Self {
        params.check().expect("GatedParams must be checked");
        let mut g = Self {
            z: Vec::new(),
            input: Vec::new(),
            words: 0,
            recalls: Vec::new(),
            channel_score: vec![0.0; channels],
            memories: Vec::new(),
            kept: 0,
            baseline,
            params,
            channel: 0,
            last: GateReading::default(),
        };
        g.build_memories(channels);
        g
    }

    /// Features of a channel that enter its state: all of the baseline's, or without
    /// `long_features` only the window's own.
    fn state_features(&self) -> usize {
        if self.params.long_features {
            self.baseline.features_per_channel()
        } else {
            self.baseline.window_features()
        }
    }

    /// Empty memories (and buffers) sized for the current state layout.
    fn build_memories(&mut self, channels: usize) {
        let kept = self.state_features();
        let bits = kept * self.params.block.bits;
        let active = kept * self.params.block.active();
        let memory = SdrMemory::new(self.params.sdr.clone(), bits, active);
        self.words = words_for(bits);
        self.z = vec![0.0; self.baseline.features()];
        self.input = vec![0; self.words * channels];
        self.recalls = vec![memory.new_recall(); channels];
        self.memories = vec![memory; channels];
        self.kept = kept;
    }

    /// g(novelty): 0 at or below the floor, 1 at or above `novelty_full`, linear between.
    pub fn gate(&self, novelty: f64) -> f64 {
        let (lo, hi) = (self.params.novelty_floor, self.params.novelty_full);
        ((novelty - lo) / (hi - lo)).clamp(0.0, 1.0)
    }

    /// The compressed z-score a feature's scalar block encodes: sign(z)·log2(1 + |z|).
    fn compress(z: f64) -> f64 {
        if z.is_nan() {
            0.0
        } else {
            z.signum() * z.abs().ln_1p() / std::f64::consts::LN_2
        }
    }

    /// Scores a window: per channel, the baseline's score from that channel's features times
    /// the gate of the novelty of that channel's state; the window's score is the largest. A
    /// familiar burst on one channel does not hide a new change on another. Does not learn.
    /// `in_incident`: an incident is open (the gate is then 1 unless `gate_in_incident`).
    pub fn score(&mut self, window: &WindowView<'_>, in_incident: bool) -> RawScore {
        let raw = self.baseline.score(window);
        if self.kept != self.state_features() || self.z.len() != self.baseline.features() {
            // Restored from a checkpoint whose baseline had another feature layout (before
            // the window maximum): its stored states do not encode the same features, so the
            // memories start again (the gate then passes every score until rare states
            // recur). Once, not per window.
            self.build_memories(self.memories.len());
        }
        self.baseline.feature_z(&mut self.z);
        if self.channel_score.len() != self.memories.len() {
            // Restored from a checkpoint written before this field: once, not per window.
            self.channel_score = vec![0.0; self.memories.len()];
        }
        self.baseline.channel_scores(&mut self.channel_score);
        self.input.fill(0);
        let (bits, per, words) = (
            self.params.block.bits,
            self.baseline.features_per_channel(),
            self.words,
        );
        for (c, memory) in self.memories.iter_mut().enumerate() {
            let x = &mut self.input[c * words..(c + 1) * words];
            for f in 0..self.kept {
                let u = Self::compress(self.z[c * per + f]);
                ScalarBlock::new(self.params.block.clone(), false, f * bits).encode(u, x);
            }
            memory.recognize(x, &mut self.recalls[c]);
        }
        let gate_off = in_incident && !self.params.gate_in_incident;
        // The channel with the largest gated score; on a tie (e.g. all 0) the baseline's.
        let flagged = raw.channel.min(self.memories.len() - 1);
        let gated = |c: usize| self.channel_score[c] * self.gate_of(c, gate_off);
        let (mut channel, mut score) = (flagged, gated(flagged));
        for c in 0..self.memories.len() {
            let g = gated(c);
            if g > score {
                (channel, score) = (c, g);
            }
        }
        self.channel = channel;
        self.last = GateReading {
            baseline: self.channel_score[channel],
            novelty: self.novelty_of(channel),
            gate: self.gate_of(channel, gate_off),
        };
        RawScore {
            score,
            channel: self.channel,
        }
    }

    fn novelty_of(&self, c: usize) -> f64 {
        let recall = &self.recalls[c];
        if self.params.two_sided {
            recall.two_sided_novelty()
        } else {
            recall.novelty()
        }
        .clamp(0.0, 1.0)
    }

    fn gate_of(&self, c: usize, gate_off: bool) -> f64 {
        if gate_off {
            1.0
        } else {
            self.gate(self.novelty_of(c))
        }
    }

    /// Learns the window scored last: its features join the baseline's history, and the
    /// state of each channel whose own baseline score reached `store_above` (a rare state of
    /// that channel) is stored in that channel's memory. `in_incident`: learned by the alert
    /// policy while an incident is open (the baseline keeps it out of its long time scale).
    pub fn learn(&mut self, in_incident: bool) {
        if in_incident {
            self.baseline.learn_in_incident();
        } else {
            self.baseline.learn();
        }
        let words = self.words;
        for (c, memory) in self.memories.iter_mut().enumerate() {
            if self.channel_score.get(c).copied().unwrap_or(0.0) >= self.params.store_above {
                memory.learn(&self.input[c * words..(c + 1) * words], &self.recalls[c]);
            }
        }
    }

    /// The gate's reading of the window scored last.
    pub fn reading(&self) -> GateReading {
        self.last
    }

    /// The recall of the flagged channel's state in the window scored last (its familiarity
    /// G is what gated the score).
    pub fn recall(&self) -> &Recall {
        &self.recalls[self.channel]
    }

    /// The memory of the channel flagged in the window scored last.
    pub fn memory(&self) -> &SdrMemory {
        &self.memories[self.channel]
    }

    /// The memories, one per channel.
    pub fn memories(&self) -> &[SdrMemory] {
        &self.memories
    }

    /// The parameters.
    pub fn params(&self) -> &GatedParams {
        &self.params
    }

    /// Resizes every memory's best-match index (see [`SdrMemory::set_index_capacity`]):
    /// what is stored, and so every score, is kept; best-match reports restart.
    pub fn set_index_capacity(&mut self, capacity: usize) -> Result<(), ParamError> {
        for m in &mut self.memories {
            m.set_index_capacity(capacity)?;
        }
        self.params.sdr.index_capacity = capacity;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(values: &[f64]) -> WindowView<'_> {
        WindowView {
            start_ms: 0,
            end_ms: 0,
            len: values.len(),
            channels: 1,
            values,
        }
    }

    /// A 32-sample window of deterministic noise around 1 (no burst) or with its newest
    /// `burst` samples `height` times the background (a burst entering the window).
    fn window(i: usize, burst: usize, height: f64) -> Vec<f64> {
        (0..32)
            .map(|j| {
                let noise = 1.0 + 0.1 * ((((i * 4 + j) * 37) % 17) as f64 / 17.0 - 0.5);
                if j >= 32 - burst {
                    noise * height
                } else {
                    noise
                }
            })
            .collect()
    }

    /// Runs a stream with a 4-sample burst 300× the background every 50 windows from
    /// window 50 on, learning every window before `learn_until` (as the pipeline does in
    /// warm-up or while the alert stays quiet), and returns the reading of each burst window.
    fn bursts(g: &mut GatedScorer, windows: usize, learn_until: usize) -> Vec<GateReading> {
        let mut readings = vec![];
        for i in 0..windows {
            let burst = i >= 50 && i % 50 == 0;
            let height = 300.0;
            let w = window(i, if burst { 4 } else { 0 }, height);
            let s = g.score(&view(&w), false);
            assert_eq!(s.score, g.reading().baseline * g.reading().gate);
            if burst {
                readings.push(g.reading());
            }
            if i < learn_until {
                g.learn(false);
            }
        }
        readings
    }

    #[test]
    fn a_never_seen_rare_state_passes_and_a_learned_one_is_gated() {
        let mut g = GatedScorer::new(GatedParams::default(), BaselineParams::default(), 1);
        let r = bursts(&mut g, 501, 501);
        // The baseline finds every burst extreme (its Gaussian cannot learn a rare state).
        assert!(r.iter().all(|r| r.baseline >= 0.8), "{r:?}");
        // The first is a state never seen: the gate lets it through whole.
        assert!(r[0].novelty >= g.params.novelty_full, "{:?}", r[0]);
        assert_eq!(r[0].gate, 1.0);
        // Once a few were learned (the baseline's history then holds several bursts, so
        // their z-scores settle), a burst is a familiar state and its score is cleared.
        assert!(r[4..].iter().all(|r| r.gate < 0.1), "{r:?}");
        assert!(r[4..].iter().any(|r| r.gate == 0.0), "{r:?}");
        // Only the rare windows were stored (normal windows score below `store_above`).
        let stored = g.memories()[0].learned();
        assert!((1..=9 * 8).contains(&stored), "{stored}");

        // A rare state of another kind (the whole window far below the background) is new.
        let drop: Vec<f64> = window(501, 0, 1.0).iter().map(|v| -50.0 * v).collect();
        let s = g.score(&view(&drop), false);
        let r = g.reading();
        assert!(r.baseline >= 0.8, "{r:?}");
        assert_eq!(r.gate, 1.0, "{r:?}");
        assert_eq!(s.score, r.baseline);
    }

    #[test]
    fn memories_of_another_state_layout_start_again_instead_of_misreading_it() {
        // A checkpoint from before the window maximum holds memories of 5-feature states;
        // the baseline now describes a channel with 6. They are rebuilt on the first score.
        let mut g = GatedScorer::new(GatedParams::default(), BaselineParams::default(), 1);
        bursts(&mut g, 301, 301);
        assert!(g.memories()[0].learned() > 0);
        let (kept, bits) = (g.kept, g.memories()[0].input_bits());
        g.kept -= 1;
        g.score(&view(&window(301, 4, 300.0)), false);
        assert_eq!((g.kept, g.memories()[0].input_bits()), (kept, bits));
        assert_eq!(g.memories()[0].learned(), 0);
        assert_eq!(g.reading().gate, 1.0, "an empty memory gates nothing");
        // The baseline's feature count changing alone (its z-scores) triggers it too.
        bursts(&mut g, 301, 301);
        assert!(g.memories()[0].learned() > 0);
        g.z.pop();
        g.score(&view(&window(301, 4, 300.0)), false);
        assert_eq!(g.memories()[0].learned(), 0);
        assert_eq!(g.z.len(), g.baseline.features());
        // And it learns again from there.
        let r = bursts(&mut g, 501, 501);
        assert!(r[4..].iter().all(|r| r.gate < 0.1), "{r:?}");
    }

    #[test]
    fn each_channel_is_gated_and_stored_on_its_own() {
        // Two channels: channel 0 bursts every 50 windows and learns its bursts; channel 1
        // stays normal. Channel 1's memory must store nothing (its own states are never rare),
        // and once channel 0's burst is familiar, a new change on channel 1 in the same window
        // as a familiar burst is not hidden by channel 0's gate.
        let two = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().chain(b).copied().collect() };
        fn view2(values: &[f64]) -> WindowView<'_> {
            WindowView {
                start_ms: 0,
                end_ms: 0,
                len: 32,
                channels: 2,
                values,
            }
        }
        let mut g = GatedScorer::new(GatedParams::default(), BaselineParams::default(), 2);
        let mut last_burst = (0.0, 0.0);
        for i in 0..451 {
            let burst = i >= 50 && i % 50 == 0;
            let w = two(
                &window(i, if burst { 4 } else { 0 }, 300.0),
                &window(i + 7, 0, 1.0),
            );
            let s = g.score(&view2(&w), false);
            if burst {
                last_burst = (g.channel_score[0], s.score);
            }
            g.learn(false);
        }
        assert!(g.memories()[0].learned() > 0, "channel 0 stored no burst");
        assert_eq!(
            g.memories()[1].learned(),
            0,
            "channel 1 stored a normal state"
        );
        // The burst is as surprising as ever to the baseline, and gated as familiar.
        assert!(last_burst.0 >= 0.8 && last_burst.1 < 0.1, "{last_burst:?}");

        // The familiar burst on channel 0 together with a never-seen drop on channel 1.
        let drop: Vec<f64> = window(451, 0, 1.0).iter().map(|v| -50.0 * v).collect();
        let w = two(&window(450, 4, 300.0), &drop);
        let s = g.score(&view2(&w), false);
        let r = g.reading();
        assert_eq!(s.channel, 1, "{r:?}");
        assert!(r.baseline >= 0.8 && r.gate == 1.0, "{r:?}");
        assert_eq!(s.score, r.baseline * r.gate);
    }

    #[test]
    fn bursts_never_learned_stay_novel() {
        // The same stream, with every normal window learned but no burst window (as when each
        // burst opens an incident): the memory never stores a burst, so none is gated, while
        // the same stream learning its bursts gates them (the test above).
        let mut g = GatedScorer::new(GatedParams::default(), BaselineParams::default(), 1);
        let mut readings = vec![];
        for i in 0..501 {
            let burst = i >= 50 && i % 50 == 0;
            let w = window(i, if burst { 4 } else { 0 }, 300.0);
            g.score(&view(&w), false);
            if burst {
                readings.push(g.reading());
            } else {
                g.learn(false);
            }
        }
        assert_eq!(readings.len(), 10);
        assert!(readings.iter().all(|r| r.baseline >= 0.8), "{readings:?}");
        assert!(readings.iter().all(|r| r.gate == 1.0), "{readings:?}");
        assert_eq!(g.memories()[0].learned(), 0);
    }

    #[test]
    fn inside_an_incident_the_baseline_runs_unchanged() {
        let run = |params: GatedParams| {
            let mut g = GatedScorer::new(params, BaselineParams::default(), 1);
            bursts(&mut g, 450, 450);
            let burst = window(450, 4, 300.0);
            let quiet = g.score(&view(&burst), false);
            let open = g.score(&view(&burst), true);
            (quiet.score, open.score, g.reading())
        };
        let (quiet, open, r) = run(GatedParams::default());
        assert_eq!(quiet, 0.0, "{r:?}");
        assert_eq!(open, r.baseline);
        assert_eq!(r.gate, 1.0);
        let (_, open, r) = run(GatedParams {
            gate_in_incident: true,
            ..GatedParams::default()
        });
        assert_eq!(open, 0.0, "{r:?}");
    }

    #[test]
    fn normal_states_are_not_stored_and_the_state_round_trips() {
        let mut g = GatedScorer::new(GatedParams::default(), BaselineParams::default(), 2);
        for i in 0..150 {
            let mut v = window(i, 0, 1.0);
            v.extend(window(i + 7, 0, 1.0));
            g.score(
                &WindowView {
                    start_ms: 0,
                    end_ms: 0,
                    len: 32,
                    channels: 2,
                    values: &v,
                },
                false,
            );
            g.learn(false);
        }
        assert!(g.memories().iter().all(|m| m.learned() == 0));
        let json = serde_json::to_string(&g).unwrap();
        let back: GatedScorer = serde_json::from_str(&json).unwrap();
        assert!(back == g);
        // A memory that stored nothing holds no weights: what the default detector costs a
        // channel that never sees a rare state (most). Figures in ARCHITECTURE.md.
        let m = &g.memories()[0];
        assert_eq!(m.input_bits(), 6 * 64);
        assert!(m.memory_bytes() < 3 * 1024, "{} B", m.memory_bytes());
        assert!(
            m.memory_bytes_full() < 31 * 1024,
            "{} B",
            m.memory_bytes_full()
        );
        let memories = serde_json::to_string(g.memories()).unwrap().len();
        assert!(
            memories < 2 * 3 * 1024,
            "checkpoint of empty memories {memories} B"
        );
    }

    #[test]
    fn bad_params_are_rejected() {
        let bad = |f: fn(&mut GatedParams)| {
            let mut p = GatedParams::default();
            f(&mut p);
            p.check().unwrap_err().field
        };
        assert_eq!(bad(|p| p.novelty_floor = 0.5), "novelty_floor");
        assert_eq!(bad(|p| p.novelty_full = 0.0), "novelty_full");
        assert_eq!(bad(|p| p.store_above = 1.5), "store_above");
        assert_eq!(bad(|p| p.block.bits = 0), "block.bits");
        assert!(bad(|p| p.sdr.modules = 0).starts_with("sdr."));
        assert!(GatedParams::default().check().is_ok());
    }
}
