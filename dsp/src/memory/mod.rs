//! The associative memory: a Sparsey-style sparse distributed memory (spec
//! `sdr-associative-memory.md`) that tells how familiar a window's code is.
//!
//! A *mac* is Q competitive modules of K binary cells; a stored item is a code of one winner
//! per module. Binary input x (from an [`encoder`]) reaches every cell through binary weights
//! U; a cell's evidence V = (|U_i ∩ x| / |x|)^λ, and the familiarity G is the mean over
//! modules of the best V. G ≈ 1 means some stored trace covers x; a never-seen x scores near
//! the chance level of the current fill. Learning is single-trial: the winners' weight rows
//! are ORed with x. Which cells win is the code selection algorithm ([`csa`](self)): the more
//! familiar x, the more deterministic the choice, so familiar inputs get their old code back
//! and similar inputs get overlapping codes, while novel inputs get a fresh random one.
//! Cost per sample is fixed (Q·K·N/64 AND+popcounts), whatever the number stored.
//!
//! - [`encoder`]: sparse code → x with a fixed active count ([`AtomSlotEncoder`],
//!   [`ProjectionEncoder`]).
//! - [`SdrMemory`]: the mac, its two banks and best-match index. [`recognize`]
//!   (score, never writes) then, if the caller decides so, [`learn`] (writes); alerting
//!   windows are not learned, so a repeated fault keeps scoring as novel.
//! - [`Recall`]: what recognition returns: G, the two-sided precision R, the code and
//!   the best-matching stored item. [`Recall::novelty`] is the raw score 1 − G,
//!   [`Recall::two_sided_novelty`] is 1 − G·R (also sees *missing* features).
//! - [`MemoryParams`], [`SaturationPolicy`]: shape, CSA constants, fill policy.
//! - [`bitset`]: the `[u64]` bit-vector helpers everything here shares.
//!
//! Deterministic: the winner-choice RNG is seeded and lives in the state, which serialises
//! with serde; the same inputs give the same outputs, also across a checkpoint.
//!
//! Optional temporal context ([`MemoryParams::temporal`], off by default): horizontal weights
//! W_H (Q·K × Q·K bits per bank) from the previous window's code to the cells, so
//! V_i = U_i^λU · H_i^λH with `H_i = |{ j ∈ previous code : W_H[j][i] = 1 }| / Q`, and learning
//! also sets `W_H[j][winner]` for j in the previous code (spec §2). A familiar window after an
//! unfamiliar predecessor then scores as novel. One departure from the spec's CSA: H enters
//! the familiarity G (the score) only; the code (c* and learning's draw) is chosen on U as
//! without context, so an input keeps one code in every context and W_H is a first-order
//! transition memory between those codes. With H in the code choice, a continuous stream
//! (no sequence starts) never converges: the first time a transition is seen its window gets
//! a fresh code, whose successor was never seen after that new code, so it gets a fresh code
//! too, and so on every cycle of even a strictly periodic stream.
//!
//! The previous code is state (it serialises). The first window of a sequence skips H: after
//! [`break_sequence`](SdrMemory::break_sequence) (the pipeline calls it on a gap), after a
//! window without a code, and in a new memory. Each call of [`recognize`](SdrMemory::recognize)
//! (or of [`learn`](SdrMemory::learn) without a current recognition) is one time step. W_H
//! lives in each bank beside U, so rotation clears it with U, and the fill the saturation
//! policy watches is the fuller of the two.
//!
//! [`recognize`]: SdrMemory::recognize
//! [`learn`]: SdrMemory::learn

pub mod bitset;
mod csa;
pub mod encoder;
mod index;
mod params;

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::params::ParamError;
use bitset::{and_count, count_ones, ones_into, words_for};
use csa::{Bank, Csa};
use index::CodeIndex;

pub use encoder::{
    AtomSlotEncoder, AtomSlotParams, CodeInput, EncoderParams, ProjectionEncoder, ProjectionParams,
    ScalarBlockParams, SdrEncoder,
};
pub use index::BestMatch;
pub use params::{MemoryParams, SaturationPolicy};

/// Whether an input got a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecallStatus {
    /// π inside the band; the scores and the code are valid.
    Coded,
    /// π below the band (includes an empty input): no code.
    TooFew,
    /// π above the band: no code.
    TooMany,
}

/// The result of [`SdrMemory::recognize`]. Allocate once with [`SdrMemory::new_recall`] and
/// reuse, so recognition does not allocate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    pub status: RecallStatus,
    /// π, the input's active bits.
    pub active: usize,
    /// G ∈ [0, 1], the familiarity (0 when not coded).
    pub familiarity: f64,
    /// R = |x ∩ x̂| / |x̂| ∈ [0, 1], where x̂ holds the bits that at least
    /// [`recall_quorum`](MemoryParams::recall_quorum) of the winners' weight rows hold
    /// (the input the code recalls): below 1 when the recalled trace has bits x lacks, which
    /// G cannot see since V divides by |x|. 0 when x̂ is empty or not coded.
    pub precision: f64,
    /// c*: the winner (0..K) of each module; meaningful only when coded.
    pub code: Vec<u16>,
    /// The stored code closest to c*, if the index holds any sharing a cell.
    pub best_match: Option<BestMatch>,
    /// Which recognition this is, so [`SdrMemory::learn`] can tell if its tables are current.
    stamp: u64,
}

impl Recall {
    /// Whether the input got a code.
    pub fn is_coded(&self) -> bool {
        self.status == RecallStatus::Coded
    }

    /// Raw anomaly score 1 − G ∈ [0, 1] (1 when not coded).
    pub fn novelty(&self) -> f64 {
        1.0 - self.familiarity
    }

    /// Two-sided raw score 1 − G·R ∈ [0, 1] (spec §3a): also high when x is a strict subset
    /// of a stored input. 1 when not coded.
    pub fn two_sided_novelty(&self) -> f64 {
        1.0 - self.familiarity * self.precision
    }
}

/// What [`SdrMemory::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Learned {
    /// The code was written.
    Stored {
        /// Weights newly set in the scoring bank, U and W_H (0: nothing new, the input was
        /// familiar).
        new_weights: u64,
        /// The code is not in the index yet (a new distinct state).
        new_code: bool,
        /// The banks were rotated after this write.
        rotated: bool,
    },
    /// The input was out of band; nothing written.
    OutOfBand,
    /// [`SaturationPolicy::Freeze`] and the bank is full; nothing written.
    Frozen,
}

/// Buffers of the hot path, allocated with the memory: the set bits of the last input
/// (`active[..active_len]`, valid for `last_x`), the byte counters of the overlap pass, the
/// winners' cells as a bitset. Not state: not serialised (a deserialised memory has them
/// empty and sizes them on first use, reloading the bits of `last_x` if needed), and equal
/// whatever they hold, so `==` on memories compares state only.
#[derive(Debug, Clone, Default)]
struct Scratch {
    active: Vec<u16>,
    active_len: usize,
    counters: Vec<u64>,
    winners: Vec<u64>,
}

impl Scratch {
    fn new(words: usize, cells: usize) -> Self {
        Self {
            active: vec![0; words * 64],
            active_len: 0,
            counters: vec![0; words_for(cells) * 8],
            winners: vec![0; words_for(cells)],
        }
    }

    fn is_sized(&self) -> bool {
        !self.active.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        self.active.len() * 2 + (self.counters.len() + self.winners.len()) * 8
    }
}

impl PartialEq for Scratch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The temporal context's state: the code of the previous window (the sources of H), that of
/// the current one, and the buffers of the temporal path (allocated at construction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Temporal {
    /// The previous window's code, valid if `prev_valid` (else this window skips H).
    prev: Vec<u16>,
    prev_valid: bool,
    /// The current window's code (c* after recognition, the stored code after learning).
    current: Vec<u16>,
    current_valid: bool,
    /// The cells of `prev` (q·K + winner), the sources of h.
    sources: Vec<u16>,
    /// h_i of the last recognition.
    h: Vec<u16>,
    /// V_i = U_i^λU · H_i^λH of the last recognition.
    v: Vec<f64>,
    /// H^λH for h in 0..=Q.
    h_evidence: Vec<f64>,
    /// G without H of the last recognition that had a previous code (what the code choice
    /// of learning uses).
    bottom_up: f64,
}

impl Temporal {
    fn new(p: &MemoryParams) -> Self {
        let (q, cells) = (p.modules, p.modules * p.cells);
        Self {
            prev: vec![0; q],
            prev_valid: false,
            current: vec![0; q],
            current_valid: false,
            sources: vec![0; q],
            h: vec![0; cells],
            v: vec![0.0; cells],
            bottom_up: 0.0,
            h_evidence: (0..=q)
                .map(|h| {
                    let ratio = h as f64 / q as f64;
                    if p.temporal_exponent == 1.0 {
                        ratio
                    } else {
                        ratio.powf(p.temporal_exponent)
                    }
                })
                .collect(),
        }
    }

    /// A new time step: the current code becomes the previous one.
    fn advance(&mut self) {
        std::mem::swap(&mut self.prev, &mut self.current);
        self.prev_valid = self.current_valid;
        self.current_valid = false;
    }

    fn heap_bytes(&self) -> usize {
        (self.prev.len() + self.current.len() + self.sources.len() + self.h.len()) * 2
            + (self.v.len() + self.h_evidence.len()) * 8
    }
}

/// A Sparsey-style associative memory (one mac) with its saturation policy and best-match
/// index. The hot path's buffers are allocated at construction; the weight banks and the
/// index at their first write (a memory that never learns holds neither).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdrMemory {
    params: MemoryParams,
    input_bits: usize,
    words: usize,
    band: (usize, usize),
    /// One bank, or two under [`SaturationPolicy::Rotate`]; `banks[scorer]` scores.
    banks: Vec<Bank>,
    scorer: usize,
    csa: Csa,
    index: CodeIndex,
    rng: Xoshiro256PlusPlus,
    /// u_i of the last recognition.
    u: Vec<u16>,
    /// Code chosen by the last learn (or [`sample_code`](Self::sample_code)).
    learn_code: Vec<u16>,
    /// x̂ of the last recognition.
    recalled: Vec<u64>,
    /// x of the last recognition, so `learn` can tell whether its tables are for its input.
    last_x: Vec<u64>,
    /// Buffers of the hot path; not state (see [`Scratch`]).
    #[serde(skip)]
    scratch: Scratch,
    recognitions: u64,
    learns: u64,
    /// The temporal context, if [`MemoryParams::temporal`]; absent in older states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temporal: Option<Temporal>,
}

impl SdrMemory {
    /// A memory for inputs of `input_bits` bits with `active_bits` active (the encoder's s).
    /// Panics unless `params` pass [`MemoryParams::check`], `input_bits` is in 1..=65535 and
    /// `active_bits` in 1..=input_bits.
    pub fn new(params: MemoryParams, input_bits: usize, active_bits: usize) -> Self {
        params.check().expect("MemoryParams must be checked");
        assert!(
            (1..=65_535).contains(&input_bits),
            "input_bits must be in 1..=65535"
        );
        assert!(
            (1..=input_bits).contains(&active_bits),
            "active_bits must be in 1..=input_bits"
        );
        let s = active_bits as f64;
        let lo = ((s * (1.0 - params.active_band)).ceil() as usize).max(1);
        let hi = ((s * (1.0 + params.active_band)).floor() as usize).min(input_bits);
        let words = words_for(input_bits);
        let cells = params.modules * params.cells;
        let banks = match params.policy {
            SaturationPolicy::Rotate => 2,
            SaturationPolicy::Freeze | SaturationPolicy::Unbounded => 1,
        };
        Self {
            input_bits,
            words,
            band: (lo, hi),
            banks: vec![Bank::new(cells, words, params.temporal); banks],
            scorer: 0,
            csa: Csa::new(&params, hi),
            index: CodeIndex::new(params.index_capacity, params.modules, params.cells),
            rng: Xoshiro256PlusPlus::seed_from_u64(params.seed),
            u: vec![0; cells],
            learn_code: vec![0; params.modules],
            recalled: vec![0; words],
            last_x: vec![0; words],
            scratch: Scratch::new(words, cells),
            recognitions: 0,
            learns: 0,
            temporal: params.temporal.then(|| Temporal::new(&params)),
            params,
        }
    }

    pub fn params(&self) -> &MemoryParams {
        &self.params
    }

    /// N, bits per input.
    pub fn input_bits(&self) -> usize {
        self.input_bits
    }

    /// Words an input buffer needs, ⌈N/64⌉.
    pub fn input_words(&self) -> usize {
        self.words
    }

    /// [π⁻, π⁺], the active counts that get a code.
    pub fn band(&self) -> (usize, usize) {
        self.band
    }

    /// A reusable result buffer for [`recognize`](Self::recognize).
    pub fn new_recall(&self) -> Recall {
        Recall {
            status: RecallStatus::TooFew,
            active: 0,
            familiarity: 0.0,
            precision: 0.0,
            code: vec![0; self.params.modules],
            best_match: None,
            stamp: u64::MAX,
        }
    }

    fn weights(&self) -> f64 {
        (self.params.modules * self.params.cells * self.input_bits) as f64
    }

    /// p1 of the scoring bank: set weights / (Q·K·N), or the share of set temporal weights
    /// if that is larger (the fill the saturation policy watches).
    pub fn fill(&self) -> f64 {
        self.banks[self.scorer].fill(self.weights())
    }

    /// p1 of the younger bank under [`SaturationPolicy::Rotate`], None otherwise.
    pub fn shadow_fill(&self) -> Option<f64> {
        (self.banks.len() == 2).then(|| self.banks[1 - self.scorer].fill(self.weights()))
    }

    /// The share of set temporal weights W_H of the scoring bank; None without temporal
    /// context.
    pub fn temporal_fill(&self) -> Option<f64> {
        self.banks[self.scorer].temporal_fill()
    }

    /// Whether the next window starts a sequence (skips H): always without temporal context.
    pub fn at_sequence_start(&self) -> bool {
        self.temporal.as_ref().is_none_or(|t| !t.current_valid)
    }

    /// Starts a new sequence (after a gap or a restart): the next window gets no temporal
    /// evidence, and learning it sets no temporal weights. No effect without temporal context.
    pub fn break_sequence(&mut self) {
        if let Some(t) = &mut self.temporal {
            t.current_valid = false;
        }
    }

    /// Resizes the best-match index to `capacity` codes (0..=65536, else Err). The index
    /// starts empty: best-match reports restart with the next learned codes; the weights,
    /// and so every familiarity and score, are unchanged. For a restored memory whose
    /// configured index size changed.
    pub fn set_index_capacity(&mut self, capacity: usize) -> Result<(), ParamError> {
        let mut params = self.params.clone();
        params.index_capacity = capacity;
        params.check()?;
        if capacity != self.params.index_capacity {
            self.index = CodeIndex::new(capacity, params.modules, params.cells);
            self.params = params;
        }
        Ok(())
    }

    /// Distinct codes in the best-match index.
    pub fn stored_codes(&self) -> usize {
        self.index.len()
    }

    /// Windows learned so far (all banks, all time).
    pub fn learned(&self) -> u64 {
        self.learns
    }

    /// Heap bytes of this memory's state as allocated now: U banks + index + scratch. A
    /// bank's weights and the index are allocated at their first write, so a memory that
    /// never learned holds only its tables and buffers; see
    /// [`memory_bytes_full`](Self::memory_bytes_full) for the most it can grow to.
    pub fn memory_bytes(&self) -> usize {
        let banks: usize = self.banks.iter().map(Bank::heap_bytes).sum();
        self.fixed_bytes(banks + self.index.heap_bytes())
    }

    /// Heap bytes once every bank and the index are allocated (both banks under
    /// [`SaturationPolicy::Rotate`]): the bound of [`memory_bytes`](Self::memory_bytes).
    pub fn memory_bytes_full(&self) -> usize {
        let banks: usize = self.banks.iter().map(Bank::full_heap_bytes).sum();
        self.fixed_bytes(banks + self.index.full_heap_bytes())
    }

    fn fixed_bytes(&self, allocated: usize) -> usize {
        allocated
            + self.csa.heap_bytes()
            + (self.u.len() + self.learn_code.len()) * 2
            + (self.recalled.len() + self.last_x.len()) * 8
            + self.scratch.heap_bytes()
            + self.temporal.as_ref().map_or(0, Temporal::heap_bytes)
            + std::mem::size_of::<Self>()
    }

    /// The code chosen by the last [`learn`](Self::learn) or [`sample_code`](Self::sample_code).
    pub fn learned_code(&self) -> &[u16] {
        &self.learn_code
    }

    fn status(&self, active: usize) -> RecallStatus {
        if active < self.band.0 {
            RecallStatus::TooFew
        } else if active > self.band.1 {
            RecallStatus::TooMany
        } else {
            RecallStatus::Coded
        }
    }

    /// Recognize mode (spec §2 with argmax, §3a, §3b): scores x against the scoring bank
    /// without writing anything, and fills `recall`. `x` must have at least
    /// [`input_words`](Self::input_words) words, bits past N zero (panics if shorter).
    pub fn recognize(&mut self, x: &[u64], recall: &mut Recall) {
        let x = &x[..self.words];
        if let Some(t) = &mut self.temporal {
            t.advance();
        }
        self.recognitions += 1;
        self.last_x.copy_from_slice(x);
        recall.stamp = self.recognitions;
        recall.active = self.load_active(x);
        recall.status = self.status(recall.active);
        recall.best_match = None;
        if !recall.is_coded() {
            recall.familiarity = 0.0;
            recall.precision = 0.0;
            return;
        }
        self.overlaps();
        self.csa.set_active(recall.active);
        recall.familiarity = self.csa.familiarity(&self.u);
        self.csa.argmax(&self.u, &mut self.rng, &mut recall.code);
        if self.temporal_evidence() {
            let t = self.temporal.as_mut().expect("temporal evidence");
            t.bottom_up = recall.familiarity;
            recall.familiarity = self.csa.familiarity_of(&t.v);
        }
        if let Some(t) = &mut self.temporal {
            t.current.copy_from_slice(&recall.code);
            t.current_valid = true;
        }
        recall.precision = self.reconstruct(x, &recall.code);
        recall.best_match = self.index.best_match(&recall.code);
    }

    /// With temporal context and a previous code: fills h and V = U^λU · H^λH (from the
    /// current u and V(u) table) and returns true. Otherwise (no context, or a sequence
    /// start) returns false and V is the u table alone.
    fn temporal_evidence(&mut self) -> bool {
        let Some(t) = &mut self.temporal else {
            return false;
        };
        if !t.prev_valid {
            return false;
        }
        let k = self.params.cells;
        for (q, (source, &winner)) in t.sources.iter_mut().zip(&t.prev).enumerate() {
            *source = (q * k + winner as usize) as u16;
        }
        let counters = &mut self.scratch.counters;
        self.banks[self.scorer].temporal_sums(&t.sources, counters, &mut t.h);
        for ((v, &u), &h) in t.v.iter_mut().zip(&self.u).zip(&t.h) {
            *v = self.csa.evidence(u) * t.h_evidence[h as usize];
        }
        true
    }

    /// Lists the set bits of `x` (its first `words` words) in `active`; returns their count.
    fn load_active(&mut self, x: &[u64]) -> usize {
        if !self.scratch.is_sized() {
            // Scratch is not serialised: sized here after deserialisation, once.
            self.scratch = Scratch::new(self.words, self.params.modules * self.params.cells);
        }
        let s = &mut self.scratch;
        s.active_len = ones_into(&x[..self.words], &mut s.active);
        s.active_len
    }

    /// u for the input in `active`, against the scoring bank.
    fn overlaps(&mut self) {
        let s = &mut self.scratch;
        self.banks[self.scorer].overlaps(&s.active[..s.active_len], &mut s.counters, &mut self.u);
    }

    /// x̂_j = 1 iff at least ⌈quorum·Q⌉ winners have w(j, ·) = 1 (counted with bit-sliced
    /// counters, [`Bank::at_least`]); returns R = |x ∩ x̂| / |x̂| (0 if x̂ is empty).
    fn reconstruct(&mut self, x: &[u64], code: &[u16]) -> f64 {
        let (q, k) = (self.params.modules, self.params.cells);
        let need = ((self.params.recall_quorum * q as f64).ceil() as usize).max(1);
        self.banks[self.scorer].at_least(code, k, need, &mut self.recalled);
        let (hit, total) = (and_count(&self.recalled, x), count_ones(&self.recalled));
        if total == 0 {
            0.0
        } else {
            hit as f64 / total as f64
        }
    }

    /// Whether `recall` is the latest recognition and of `x`, so u and V are current for it.
    fn is_current(&self, x: &[u64], recall: &Recall) -> bool {
        recall.stamp == self.recognitions && self.last_x == x[..self.words]
    }

    /// Brings u and V up to date for `x` unless `recall` is the latest recognition of it.
    fn prepare(&mut self, x: &[u64], recall: &Recall) -> (usize, f64) {
        if self.is_current(x, recall) && recall.is_coded() {
            if !self.scratch.is_sized() {
                // Deserialised since that recognition: the scratch list of x's bits is gone
                // (u, which is serialised, is still current).
                self.load_active(x);
            }
            // The code choice is bottom-up (see the module docs): G without H.
            let g = match &self.temporal {
                Some(t) if t.prev_valid => t.bottom_up,
                _ => recall.familiarity,
            };
            return (recall.active, g);
        }
        let active = self.load_active(x);
        self.overlaps();
        self.csa.set_active(active);
        (active, self.csa.familiarity(&self.u))
    }

    /// Learn mode without the write: the code learning `x` would store now, drawn with the
    /// CSA's noise (spec §2 step 8); for an input already stored (G = 1), its code c*. Returns None if out of band. `recall` should be the
    /// latest [`recognize`](Self::recognize) of `x` (otherwise recognition is redone).
    pub fn sample_code(&mut self, x: &[u64], recall: &Recall) -> Option<&[u16]> {
        if self.status(count_ones(&x[..self.words])) != RecallStatus::Coded {
            return None;
        }
        let current = self.is_current(x, recall);
        let (active, g) = self.prepare(x, recall);
        if current && g == 1.0 {
            // Every module's c* cell already holds all of x: x is stored under c*. Sampling
            // would still pick a wrong cell in each module with probability ≈ 2% (μ ≈ 747 vs
            // 15 × 1.05 at the defaults), so at Q = 32 half the repeats would write x into
            // new cells and add a near-duplicate code, and a repetitive stream would fill
            // the memory with copies of what it already knows. Reusing c* keeps repeats free.
            self.learn_code.copy_from_slice(&recall.code);
        } else {
            self.csa
                .sample(&self.u, active, g, &mut self.rng, &mut self.learn_code);
        }
        Some(&self.learn_code)
    }

    /// Learn mode (single trial): draws x's code with the CSA and ORs x into the winners'
    /// rows, then applies the saturation policy. `recall` should be the latest
    /// [`recognize`](Self::recognize) of the same `x`, whose tables it reuses; otherwise
    /// (checked) recognition is redone, which only costs a second pass.
    pub fn learn(&mut self, x: &[u64], recall: &Recall) -> Learned {
        if !self.is_current(x, recall) {
            // Not the latest recognition of x: learning x is a time step of its own.
            if let Some(t) = &mut self.temporal {
                t.advance();
            }
        }
        if self.params.policy == SaturationPolicy::Freeze && self.fill() >= self.params.max_fill {
            return Learned::Frozen;
        }
        if self.sample_code(x, recall).is_none() {
            return Learned::OutOfBand;
        }
        let x = &x[..self.words];
        let stamp = self.learns;
        self.learns += 1;
        let (q, k) = (self.params.modules, self.params.cells);
        // `active` lists x's bits: `sample_code` returned a code, so either recognition of
        // this x was current or `prepare` reloaded them.
        // Taken out for the writes (no allocation), so `past_half_life` can borrow self.
        let mut scratch = std::mem::take(&mut self.scratch);
        let active = &scratch.active[..scratch.active_len];
        let mut new_weights =
            self.banks[self.scorer].write(x, active, &self.learn_code, k, &mut scratch.winners);
        // W_H[j][winner] = 1 for j in the previous code (none at a sequence start).
        let prev = self
            .temporal
            .as_ref()
            .filter(|t| t.prev_valid)
            .map(|t| &t.prev[..]);
        if let Some(prev) = prev {
            new_weights += self.banks[self.scorer].write_temporal(prev, k, &scratch.winners);
        }
        if self.banks[self.scorer].born.is_none() {
            self.banks[self.scorer].born = Some(stamp);
        }
        if self.banks.len() == 2 && self.past_half_life() {
            let shadow = &mut self.banks[1 - self.scorer];
            shadow.born.get_or_insert(stamp);
            shadow.write(x, active, &self.learn_code, k, &mut scratch.winners);
            if let Some(prev) = prev {
                shadow.write_temporal(prev, k, &scratch.winners);
            }
        }
        if let Some(t) = &mut self.temporal {
            t.current.copy_from_slice(&self.learn_code);
            t.current_valid = true;
        }
        self.scratch = scratch;
        debug_assert_eq!(self.learn_code.len(), q);
        // The index's last query is this recall's c* unless something came in between.
        let same = self.is_current(x, recall) && recall.code == self.learn_code;
        let new_code = self.index.store(&self.learn_code, stamp, same);
        let rotated = self.banks.len() == 2 && self.rotate_if_due();
        Learned::Stored {
            new_weights,
            new_code,
            rotated,
        }
    }

    fn past_half_life(&self) -> bool {
        let scorer = &self.banks[self.scorer];
        let t = self.params.rotate_every;
        scorer.fill(self.weights()) >= self.params.half_fill() || (t > 0 && scorer.learned >= t / 2)
    }

    /// Rotates when the scoring bank is full or old: it is cleared and becomes the younger;
    /// index entries the new scorer never saw are dropped.
    fn rotate_if_due(&mut self) -> bool {
        let scorer = &self.banks[self.scorer];
        let t = self.params.rotate_every;
        if scorer.fill(self.weights()) < self.params.max_fill && (t == 0 || scorer.learned < t) {
            return false;
        }
        self.banks[self.scorer].clear();
        self.scorer = 1 - self.scorer;
        match self.banks[self.scorer].born {
            Some(born) => self.index.evict_before(born),
            None => self.index.clear(),
        }
        true
    }
}
