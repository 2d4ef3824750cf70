//! The online orthogonal dictionary learner (stochastic Frank–Wolfe, "NoncvxSFW").

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::identity::AtomMatcher;
use super::params::{DictionaryParams, Objective, PolarMethod, Retraction};
use super::polar::{gemm_nt, polar_svd, PolarWorkspace};
use crate::coding::{encode_threshold, encode_top_k, SparseCode, StorageScalar};

/// What [`OrthoDictionary::learn`] did with a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnOutcome {
    /// Added to the minibatch; the dictionary is unchanged.
    Buffered,
    /// The minibatch was full and a step ran: the dictionary changed (new version).
    Stepped,
    /// The minibatch was full but carried no gradient (e.g. all-zero windows) and the running
    /// gradient was zero too, so there was no direction to move in; the step was skipped and
    /// the schedule did not advance.
    Skipped,
}

/// Counters over the learner's life, for health reporting and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DictionaryStats {
    /// Minibatches that could not move the dictionary ([`LearnOutcome::Skipped`]).
    pub skipped: u64,
    /// Polar factors computed by Newton–Schulz, and its total iterations.
    pub newton_schulz: u64,
    pub newton_schulz_iterations: u64,
    /// Polar factors that needed the SVD (by choice or as fallback).
    pub svd: u64,
}

/// Everything that defines the learner; serialised as is.
///
/// With f32 storage there is no minibatch buffer: the gradient of the ℓ3/ℓ4 objective is a
/// sum of per-window outer products, so each window is folded into d as it arrives
/// ([`absorb`]), and d between the first window of a minibatch and its step already holds
/// (1−ρ_t)·d_{t−1} + (ρ_t/b)·Σ w_i·y_iᵀ. With f64 storage
/// ([`StorageScalar::KEEPS_MINIBATCH`]) the windows are kept in `batch` and the gradient is
/// one matrix product at the step, as the paper writes it. A, d and D are stored as `T`
/// (f32 in the daemon: three eighths of the f64 state with a minibatch buffer) and widened to
/// f64 for the step itself ([`step`]), which narrows its results back on exit. Rounding to
/// f32 perturbs A, d and D by about 6e-8 relative, far below the stochastic gradient's own
/// noise; it does change the trajectory in its chaotic first ~100 steps under the paper's
/// unclamped schedule, which is why the replication keeps f64 (BENCHMARKS.md). The published
/// D is orthogonal to f32 precision (see [`OrthoDictionary::dictionary`]). A checkpoint
/// written before (f64 matrices, a minibatch buffer) decodes into an f32 state by rounding
/// each value to the nearest f32 and folding the buffered windows into d.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
struct State<T: StorageScalar> {
    params: DictionaryParams,
    /// Resolved minibatch size b.
    minibatch: usize,
    /// The Frank–Wolfe iterate (analysis matrix, rows are atoms). Orthogonal with
    /// [`Retraction::EveryStep`], inside the spectral-norm unit ball otherwise.
    a: DMatrix<T>,
    /// Running average of the stochastic gradient.
    d: DMatrix<T>,
    /// The published dictionary D = polar(A)ᵀ (atoms are columns), orthogonal to f32 rounding.
    dictionary: DMatrix<T>,
    /// Windows of the current minibatch taken (folded into d, or kept in `batch`).
    filled: usize,
    /// The minibatch being collected, one window per column, the first `filled` valid, and d
    /// not yet updated for the step: kept by f64 learners; in an f32 learner only when read
    /// from a checkpoint written before windows were folded into d, and folded at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<DMatrix<T>>,
    /// Steps taken (t − 1 in the spec's notation).
    steps: u64,
    version: u64,
    /// Frank–Wolfe gap proxy ⟨d, S − A⟩ of the last step.
    gap: f64,
    /// Consecutive oracle calls where Newton–Schulz did not converge; while positive, the
    /// oracle goes straight to the SVD except every `NS_RETRY`-th step, so persistently
    /// degenerate data does not pay for both.
    ns_failures: u32,
    stats: DictionaryStats,
}

/// Retry Newton–Schulz for the oracle this often while it keeps failing.
const NS_RETRY: u64 = 16;

/// The buffers of one learning step for one dimension (n, b). Nothing in them outlives a
/// step: every buffer is written before it is read, so a step's result does not depend on
/// what a previous step, of this learner or another, left in them.
#[derive(Debug, Clone)]
struct Workspace {
    n: usize,
    b: usize,
    /// The learner's A, d and D widened to f64 for the step.
    a: DMatrix<f64>,
    d: DMatrix<f64>,
    dictionary: DMatrix<f64>,
    /// Learners that keep their minibatch only: the windows Y widened, and their codes A·Y,
    /// then the gradient weights (n × b each; empty until such a learner steps).
    y: DMatrix<f64>,
    z: DMatrix<f64>,
    /// The oracle answer S.
    g: DMatrix<f64>,
    /// Candidate running gradient, then the new dictionary before matching.
    next: DMatrix<f64>,
    /// The matched new dictionary.
    aligned: DMatrix<f64>,
    polar: PolarWorkspace,
    matcher: AtomMatcher,
}

impl Workspace {
    fn new(n: usize, b: usize) -> Self {
        Self {
            n,
            b,
            a: DMatrix::zeros(n, n),
            d: DMatrix::zeros(n, n),
            dictionary: DMatrix::zeros(n, n),
            y: DMatrix::zeros(0, 0),
            z: DMatrix::zeros(0, 0),
            g: DMatrix::zeros(n, n),
            next: DMatrix::zeros(n, n),
            aligned: DMatrix::zeros(n, n),
            polar: PolarWorkspace::new(n),
            matcher: AtomMatcher::new(n),
        }
    }

    /// Heap bytes held (f64 and index buffers).
    fn bytes(&self) -> usize {
        let n = self.n;
        8 * (7 * n * n + 2 * n + self.y.len() + self.z.len()) + self.matcher.bytes()
    }
}

/// Scratch space for learning steps, shared by every learner one thread drives.
///
/// A learning step needs about nine n×n f64 work matrices (among them the learner's state
/// widened from f32); the learner's state between steps is three f32 ones (A, d, D).
/// Keeping the work matrices per learner would multiply the memory of every stream, so they live here instead: one set per distinct
/// dimension (n, b) in use, created by [`reserve`](Self::reserve) (call it when a stream is
/// created, so the hot path does not allocate) or, failing that, by the first step that needs
/// it. A daemon worker owns one `LearnScratch` and passes it to every stream it runs; the
/// results are bit-identical to a learner with buffers of its own.
#[derive(Debug, Clone, Default)]
pub struct LearnScratch {
    sets: Vec<Workspace>,
    /// One window's codes A·y, then its gradient weights (the largest n reserved or used).
    window: Vec<f64>,
}

impl LearnScratch {
    /// An empty scratch; holds nothing until a dimension is reserved or used.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes sure the buffers for `learner`'s dimension exist (allocates at most once per
    /// distinct dimension).
    pub fn reserve<T: StorageScalar>(&mut self, learner: &OrthoDictionary<T>) {
        self.get(learner.n(), learner.minibatch());
        self.window(learner.n());
    }

    /// Heap bytes held by the buffers, for diagnostics.
    pub fn bytes(&self) -> usize {
        self.sets.iter().map(Workspace::bytes).sum::<usize>() + 8 * self.window.len()
    }

    /// The per-window buffer, at least `n` long (grows at most once per larger n).
    fn window(&mut self, n: usize) -> &mut [f64] {
        if self.window.len() < n {
            self.window.resize(n, 0.0);
        }
        &mut self.window[..n]
    }

    /// Distinct dimensions (n, b) with buffers.
    pub fn dimensions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.sets.iter().map(|w| (w.n, w.b))
    }

    fn get(&mut self, n: usize, b: usize) -> &mut Workspace {
        let i = match self.sets.iter().position(|w| w.n == n && w.b == b) {
            Some(i) => i,
            None => {
                self.sets.push(Workspace::new(n, b));
                self.sets.len() - 1
            }
        };
        &mut self.sets[i]
    }
}

/// An n×n orthogonal dictionary learned online from windows y ∈ Rⁿ, and the sparse coder
/// that uses it.
///
/// Each window goes into a minibatch of b; a full minibatch runs one stochastic Frank–Wolfe
/// step (spec §2) and refreshes the published dictionary, whose atoms keep their index and
/// sign across steps (each update is matched to the previous dictionary, largest overlap
/// first, and signs are fixed so ⟨old_i, new_i⟩ ≥ 0). The learner's state is allocated in
/// [`new`](Self::new): buffering a window and coding never allocate. The work matrices of a
/// step (once per b windows) are not part of it: they come from a [`LearnScratch`] passed to
/// [`learn_with`](Self::learn_with), shared by all learners of a thread; [`learn`](Self::learn)
/// allocates a scratch for each step it runs. A step runs its matrix products through
/// nalgebra's `gemm`, whose matrixmultiply backend allocates a small packing buffer per
/// product (about 30 per step, freed at once), and the rare SVD fallback of the polar factor
/// allocates too (counted in [`stats`](Self::stats)).
///
/// Inputs must be finite (the pipeline drops non-finite samples before framing); this is
/// checked in debug builds only. Serialises (serde) to its full state; a restored learner
/// produces bit-identical outputs.
#[derive(Debug, Clone)]
pub struct OrthoDictionary<T: StorageScalar = f32> {
    state: State<T>,
}

impl<T: StorageScalar> PartialEq for OrthoDictionary<T> {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
    }
}

impl<T: StorageScalar> Serialize for OrthoDictionary<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.state.serialize(s)
    }
}

impl<'de, T: StorageScalar> Deserialize<'de> for OrthoDictionary<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut state = State::<T>::deserialize(d)?;
        state.validate().map_err(serde::de::Error::custom)?;
        // A checkpoint with a minibatch buffer: fold its windows into d, as `learn` would
        // have done had they arrived now.
        if T::KEEPS_MINIBATCH && state.batch.is_none() {
            // Written by a learner that folds windows into d: fine at a minibatch boundary.
            if state.filled != 0 {
                return Err(serde::de::Error::custom(
                    "dictionary state: a folded minibatch cannot be resumed with a kept one",
                ));
            }
            let (n, b) = (state.dictionary.nrows(), state.minibatch);
            state.batch = Some(DMatrix::from_element(n, b, T::from_f64(0.0)));
        }
        if let Some(batch) = state.batch.take_if(|_| !T::KEEPS_MINIBATCH) {
            let (n, filled) = (batch.nrows(), state.filled);
            state.filled = 0;
            let (mut y, mut w) = (vec![0.0; n], vec![0.0; n]);
            for column in batch.column_iter().take(filled) {
                y.iter_mut()
                    .zip(column.iter())
                    .for_each(|(y, &v)| *y = v.into());
                absorb(&mut state, &y, &mut w);
                state.filled += 1;
            }
        }
        Ok(Self { state })
    }
}

impl<T: StorageScalar> State<T> {
    /// Shape checks for a deserialised state, so a corrupt checkpoint is an error, not a
    /// panic later on the hot path.
    fn validate(&self) -> Result<(), String> {
        self.params.check().map_err(|e| e.to_string())?;
        let n = self.dictionary.nrows();
        let square = |m: &DMatrix<T>| m.nrows() == n && m.ncols() == n;
        if n == 0 || !square(&self.dictionary) || !square(&self.a) || !square(&self.d) {
            return Err(format!("dictionary state: matrices must all be {n}×{n}"));
        }
        let legacy_batch_fits = self
            .batch
            .as_ref()
            .is_none_or(|m| m.nrows() == n && m.ncols() == self.minibatch);
        if self.minibatch != self.params.minibatch_for(n)
            || !legacy_batch_fits
            || self.filled >= self.minibatch
        {
            return Err("dictionary state: minibatch inconsistent".into());
        }
        // f64 values beyond the f32 range (an old checkpoint cannot hold them, a damaged one
        // might) would have become infinite when narrowed.
        let finite = |m: &DMatrix<T>| m.iter().all(|&v| v.into().is_finite());
        if ![&self.a, &self.d, &self.dictionary]
            .into_iter()
            .chain(self.batch.as_ref())
            .all(finite)
        {
            return Err("dictionary state: non-finite value".into());
        }
        Ok(())
    }
}

impl OrthoDictionary {
    /// A learner for windows of length `n` with its state stored as f32 (the daemon's
    /// learner), starting from a seeded random orthogonal basis (Q of the QR of a U[0,1)
    /// matrix, as in the authors' code).
    ///
    /// # Panics
    /// If `params` does not pass [`DictionaryParams::check`] or `n` is 0.
    pub fn new(params: DictionaryParams, n: usize) -> Self {
        Self::with_storage(params, n)
    }
}

impl<T: StorageScalar> OrthoDictionary<T> {
    /// A learner whose state is stored as `T` between steps: `OrthoDictionary::<f64>` keeps
    /// the whole algorithm in f64 (the replication example measures the paper's algorithm
    /// that way); steps always run in f64. Same start as [`OrthoDictionary::new`].
    ///
    /// # Panics
    /// If `params` does not pass [`DictionaryParams::check`] or `n` is 0.
    pub fn with_storage(params: DictionaryParams, n: usize) -> Self {
        params.check().expect("DictionaryParams must be checked");
        assert!(n > 0, "dictionary dimension must be positive");
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
        let uniform: Vec<f64> = (0..n * n).map(|_| rng.random::<f64>()).collect();
        let q = DMatrix::from_vec(n, n, uniform).qr().q();
        let b = params.minibatch_for(n);
        let q: DMatrix<T> = narrowed(&q);
        let zero = T::from_f64(0.0);
        let state = State {
            a: q.transpose(),
            d: DMatrix::from_element(n, n, zero),
            dictionary: q,
            filled: 0,
            batch: T::KEEPS_MINIBATCH.then(|| DMatrix::from_element(n, b, zero)),
            steps: 0,
            version: 0,
            gap: 0.0,
            ns_failures: 0,
            stats: DictionaryStats::default(),
            minibatch: b,
            params,
        };
        Self { state }
    }

    /// Window length n = number of atoms.
    pub fn n(&self) -> usize {
        self.state.dictionary.nrows()
    }

    /// Minibatch size b.
    pub fn minibatch(&self) -> usize {
        self.state.minibatch
    }

    pub fn params(&self) -> &DictionaryParams {
        &self.state.params
    }

    /// The published dictionary D (n×n, atoms are columns), stored as f32: computed in f64
    /// as the polar factor of A (orthogonal to ~1e-15) and rounded, so DᵀD = I to f32
    /// precision, ‖DᵀD − I‖_F ≲ √n·2⁻²³ (each entry of D off by at most half an f32 ulp).
    pub fn dictionary(&self) -> &DMatrix<T> {
        &self.state.dictionary
    }

    /// The Frank–Wolfe iterate A (rows are atoms); equals Dᵀ with per-step retraction.
    /// For diagnostics and tests.
    pub fn iterate(&self) -> &DMatrix<T> {
        &self.state.a
    }

    /// The running gradient average d. For diagnostics and tests.
    pub fn gradient_average(&self) -> &DMatrix<T> {
        &self.state.d
    }

    /// Increments each time the published dictionary changes.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// Frank–Wolfe steps taken.
    pub fn steps(&self) -> u64 {
        self.state.steps
    }

    /// Windows in the minibatch being collected.
    pub fn pending(&self) -> usize {
        self.state.filled
    }

    /// Frank–Wolfe gap proxy ⟨d, S − A⟩ ≥ 0 of the last step (0 before the first): how much
    /// the linearised objective could still improve. Decays towards 0 at a stationary point.
    pub fn gap(&self) -> f64 {
        self.state.gap
    }

    pub fn stats(&self) -> DictionaryStats {
        self.state.stats
    }

    /// Adds one window to the minibatch and runs a step when the minibatch is full, with
    /// work buffers allocated for that step. A caller that drives learners for long (a
    /// daemon worker) uses [`learn_with`](Self::learn_with) and one scratch instead.
    ///
    /// # Panics
    /// If `y.len() != n`. `y` must be finite (debug-checked).
    pub fn learn(&mut self, y: &[f64]) -> LearnOutcome {
        self.learn_with(y, &mut LearnScratch::new())
    }

    /// Adds one window to the minibatch and runs a step when the minibatch is full, in the
    /// work buffers of `scratch` (which allocates them if [`LearnScratch::reserve`] was not
    /// called for this learner's dimension). Same results as [`learn`](Self::learn).
    ///
    /// # Panics
    /// If `y.len() != n`. `y` must be finite (debug-checked).
    pub fn learn_with(&mut self, y: &[f64], scratch: &mut LearnScratch) -> LearnOutcome {
        let n = self.n();
        assert_eq!(
            y.len(),
            n,
            "window length must equal the dictionary dimension"
        );
        debug_assert!(y.iter().all(|v| v.is_finite()), "non-finite window");
        let st = &mut self.state;
        match &mut st.batch {
            Some(batch) => {
                for (b, &v) in batch.column_mut(st.filled).iter_mut().zip(y) {
                    *b = T::from_f64(v);
                }
            }
            None => absorb(st, y, scratch.window(n)),
        }
        st.filled += 1;
        if st.filled < st.minibatch {
            return LearnOutcome::Buffered;
        }
        st.filled = 0;
        let ws = scratch.get(n, st.minibatch);
        step(st, ws)
    }

    /// Learns every column of `ys` (n × m) in order, as `m` calls of [`learn`](Self::learn).
    /// Returns the number of steps that changed the dictionary.
    pub fn learn_batch(&mut self, ys: &DMatrix<f64>) -> usize {
        assert_eq!(ys.nrows(), self.n(), "windows must be columns of length n");
        let n = self.n();
        let mut scratch = LearnScratch::new();
        ys.as_slice()
            .chunks_exact(n)
            .filter(|y| self.learn_with(y, &mut scratch) == LearnOutcome::Stepped)
            .count()
    }

    /// Codes `y` with the current dictionary, keeping the `k` largest coefficients.
    /// See [`crate::coding`].
    pub fn code(&self, y: &[f64], k: usize, out: &mut SparseCode) {
        encode_top_k(&self.state.dictionary, self.state.version, y, k, out);
    }

    /// Codes `y`, keeping every coefficient with |x_i| ≥ `threshold`.
    pub fn code_threshold(&self, y: &[f64], threshold: f64, out: &mut SparseCode) {
        encode_threshold(
            &self.state.dictionary,
            self.state.version,
            y,
            threshold,
            out,
        );
    }
}

/// One stochastic Frank–Wolfe step on the full minibatch of `st`, in the buffers of `ws`
/// (dimension (n, b) of `st`): the f32 state is widened into `ws`, the step runs in f64, and
/// a step that moved the dictionary narrows A, d and D back into `st`.
fn step<T: StorageScalar>(st: &mut State<T>, ws: &mut Workspace) -> LearnOutcome {
    debug_assert_eq!((ws.n, ws.b), (st.dictionary.nrows(), st.minibatch));
    widen(&st.a, &mut ws.a);
    widen(&st.d, &mut ws.d);
    widen(&st.dictionary, &mut ws.dictionary);
    let outcome = step_f64(st, ws);
    if outcome == LearnOutcome::Stepped {
        narrow(&ws.a, &mut st.a);
        narrow(&ws.d, &mut st.d);
        narrow(&ws.dictionary, &mut st.dictionary);
    }
    outcome
}

/// The step proper, on the f64 copies in `ws` (A, d, D, Y); `st` supplies the parameters and
/// the counters, and receives the counters, gap and step count.
fn step_f64<T: StorageScalar>(st: &mut State<T>, ws: &mut Workspace) -> LearnOutcome {
    let (rho, gamma) = st.params.rates(st.steps + 1);
    // d ← (1−ρ)·d + ρ·g: already done window by window (`absorb`), or now from the kept
    // minibatch. With zero data and a zero (or, for ρ = 1, discarded) history there is no
    // direction: skip rather than ask the oracle for polar(0).
    if let Some(batch) = &st.batch {
        if ws.y.shape() != batch.shape() {
            ws.y = DMatrix::zeros(batch.nrows(), batch.ncols());
            ws.z = DMatrix::zeros(batch.nrows(), batch.ncols());
        }
        widen(batch, &mut ws.y);
        // Z = A·Y, then the objective's gradient weights: Z∘|Z| (ℓ3) or Z∘Z∘Z (ℓ4).
        ws.z.gemm(1.0, &ws.a, &ws.y, 0.0);
        match st.params.objective {
            Objective::L3 => ws.z.apply(|z| *z *= z.abs()),
            Objective::L4 => ws.z.apply(|z| *z = *z * *z * *z),
        }
        // g = (1/b)·W·Yᵀ, then the candidate d.
        gemm_nt(&mut ws.g, 1.0 / st.minibatch as f64, &ws.z, &ws.y);
        ws.next.copy_from(&ws.d);
        blend(&mut ws.next, rho, &ws.g);
        if ws.next.iter().all(|&v| v == 0.0) {
            st.stats.skipped += 1;
            return LearnOutcome::Skipped;
        }
        std::mem::swap(&mut ws.d, &mut ws.next);
    } else if ws.d.iter().all(|&v| v == 0.0) {
        st.stats.skipped += 1;
        return LearnOutcome::Skipped;
    }
    // Oracle S = polar(d), into `g`.
    ws.g.copy_from(&ws.d);
    let retry = st.steps % NS_RETRY == 0;
    let method = if st.ns_failures > 0 && !retry {
        PolarMethod::Svd
    } else {
        st.params.polar
    };
    let converged = polar(&mut ws.g, &ws.d, method, &mut ws.polar, &mut st.stats);
    if method == PolarMethod::NewtonSchulz {
        st.ns_failures = if converged { 0 } else { st.ns_failures + 1 };
    }
    st.gap = ws.d.dot(&ws.g) - ws.d.dot(&ws.a);
    // A ← (1−γ)·A + γ·S, then the projection onto O(n).
    blend(&mut ws.a, gamma, &ws.g);
    match st.params.retraction {
        Retraction::EveryStep => {
            ws.next.copy_from(&ws.a);
            polar(
                &mut ws.a,
                &ws.next,
                st.params.polar,
                &mut ws.polar,
                &mut st.stats,
            );
            ws.a.transpose_to(&mut ws.next);
        }
        Retraction::ReadOut => {
            ws.g.copy_from(&ws.a);
            polar(
                &mut ws.g,
                &ws.a,
                st.params.polar,
                &mut ws.polar,
                &mut st.stats,
            );
            ws.g.transpose_to(&mut ws.next);
        }
    }
    // Keep atom i meaning the same atom: align the new dictionary (in `next`) to the old.
    if ws.matcher.match_atoms(&ws.dictionary, &ws.next) {
        ws.matcher.permute_columns(&ws.next, &mut ws.aligned);
        std::mem::swap(&mut ws.next, &mut ws.aligned);
        ws.matcher.permute_rows(&mut ws.a);
        ws.matcher.permute_rows(&mut ws.d);
    }
    std::mem::swap(&mut ws.dictionary, &mut ws.next);
    st.steps += 1;
    st.version += 1;
    LearnOutcome::Stepped
}

/// Folds window `y` into the running gradient: at the first window of a minibatch
/// d ← (1−ρ_t)·d, then for every window d ← d + (ρ_t/b)·w·yᵀ with w = z∘|z| (ℓ3) or z∘z∘z
/// (ℓ4), z = A·y. After b windows d is (1−ρ_t)·d + ρ_t·g with g = (1/b)·Σ w·yᵀ, the spec's
/// update, so the minibatch need not be kept. Each update is computed in f64 and stored as
/// `T`. Costs two passes over n×n (z, then the rank-one update); `w` is n long.
fn absorb<T: StorageScalar>(st: &mut State<T>, y: &[f64], w: &mut [f64]) {
    let n = y.len();
    let (rho, _) = st.params.rates(st.steps + 1);
    if st.filled == 0 {
        let keep = 1.0 - rho;
        for v in st.d.iter_mut() {
            *v = T::from_f64(keep * (*v).into());
        }
    }
    // z = A·y, column by column of the column-major A.
    w.fill(0.0);
    for (column, &yj) in st.a.as_slice().chunks_exact(n).zip(y) {
        for (z, &a) in w.iter_mut().zip(column) {
            *z += a.into() * yj;
        }
    }
    let c = rho / st.minibatch as f64;
    match st.params.objective {
        Objective::L3 => w.iter_mut().for_each(|z| *z = c * (*z * z.abs())),
        Objective::L4 => w.iter_mut().for_each(|z| *z = c * (*z * *z * *z)),
    }
    // d ← d + (ρ/b)·w·yᵀ: column j of d gains y_j·(ρ/b)·w.
    for (column, &yj) in st.d.as_mut_slice().chunks_exact_mut(n).zip(y) {
        for (d, &wi) in column.iter_mut().zip(w.iter()) {
            *d = T::from_f64((*d).into() + wi * yj);
        }
    }
}

/// `dst ← src` widened to f64 (exact).
fn widen<T: StorageScalar>(src: &DMatrix<T>, dst: &mut DMatrix<f64>) {
    debug_assert_eq!(src.shape(), dst.shape());
    for (d, &s) in dst.iter_mut().zip(src.iter()) {
        *d = s.into();
    }
}

/// `dst ← src` rounded to the storage type (to the nearest f32, or copied).
fn narrow<T: StorageScalar>(src: &DMatrix<f64>, dst: &mut DMatrix<T>) {
    debug_assert_eq!(src.shape(), dst.shape());
    for (d, &s) in dst.iter_mut().zip(src.iter()) {
        *d = T::from_f64(s);
    }
}

/// `src` rounded to the storage type, in a new matrix (construction only).
fn narrowed<T: StorageScalar>(src: &DMatrix<f64>) -> DMatrix<T> {
    let mut out = DMatrix::from_element(src.nrows(), src.ncols(), T::from_f64(0.0));
    narrow(src, &mut out);
    out
}

/// `y ← (1−w)·y + w·x`, elementwise.
fn blend(y: &mut DMatrix<f64>, w: f64, x: &DMatrix<f64>) {
    for (y, &x) in y.iter_mut().zip(x.iter()) {
        *y = (1.0 - w) * *y + w * x;
    }
}

/// Replaces `x` (a copy of `source`) by polar(source), by Newton–Schulz with SVD fallback or
/// by SVD directly. Returns whether Newton–Schulz converged (true for the SVD method). If
/// both fail (cannot happen for finite input), `x` is left as `source`'s copy.
fn polar(
    x: &mut DMatrix<f64>,
    source: &DMatrix<f64>,
    method: PolarMethod,
    ws: &mut PolarWorkspace,
    stats: &mut DictionaryStats,
) -> bool {
    if method == PolarMethod::NewtonSchulz {
        if let Some(iters) = ws.newton_schulz(x) {
            stats.newton_schulz += 1;
            stats.newton_schulz_iterations += u64::from(iters);
            return true;
        }
        x.copy_from(source);
    }
    stats.svd += 1;
    let ok = polar_svd(x);
    debug_assert!(ok, "SVD of a finite matrix failed");
    method == PolarMethod::Svd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step computes D in f64 orthogonal to working precision (the scratch holds it
    /// before narrowing); only its storage as f32 limits what the published D satisfies.
    /// Storing rounds each entry to the nearest f32 and nothing else.
    #[test]
    fn the_step_is_orthogonal_in_f64_and_storage_only_rounds() {
        let n = 16;
        let mut learner = OrthoDictionary::new(DictionaryParams::default(), n);
        let mut scratch = LearnScratch::new();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut checked = 0;
        for _ in 0..40 * n {
            let y: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            if learner.learn_with(&y, &mut scratch) != LearnOutcome::Stepped {
                continue;
            }
            let ws = scratch.get(n, n);
            let d64 = &ws.dictionary;
            let e = (d64.transpose() * d64 - DMatrix::<f64>::identity(n, n)).norm();
            assert!(e < 1e-12, "f64 step result: ‖DᵀD − I‖_F = {e:e}");
            let stored = learner.dictionary();
            assert!(stored.iter().zip(d64.iter()).all(|(&s, &w)| s == w as f32));
            let a = learner.iterate();
            assert!(a.iter().zip(ws.a.iter()).all(|(&s, &w)| s == w as f32));
            checked += 1;
        }
        assert_eq!(checked, 40);
    }
}

#[cfg(test)]
mod legacy_tests {
    use super::*;

    /// A checkpoint written while the learner kept a minibatch buffer (field `batch`, d not
    /// yet scaled for the coming step) loads into the same state as a learner that folded
    /// those windows into d as they came.
    #[test]
    fn a_checkpoint_with_a_minibatch_buffer_is_folded_into_d() {
        let n = 6;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        // Windows exactly representable in f32, so the old buffer held them exactly.
        let mut window = || -> Vec<f64> {
            (0..n)
                .map(|_| f64::from(rng.random_range(-1.0f32..1.0)))
                .collect()
        };
        let mut before = OrthoDictionary::new(DictionaryParams::default(), n);
        for _ in 0..3 * n {
            before.learn(&window());
        }
        assert_eq!((before.steps(), before.pending()), (3, 0));
        let pending: Vec<Vec<f64>> = (0..4).map(|_| window()).collect();
        let mut now = before.clone();
        for y in &pending {
            assert_eq!(now.learn(y), LearnOutcome::Buffered);
        }
        // The old layout: the state at the start of the minibatch plus the buffered windows.
        let mut batch = DMatrix::<f32>::zeros(n, n);
        for (j, y) in pending.iter().enumerate() {
            for (i, &v) in y.iter().enumerate() {
                batch[(i, j)] = v as f32;
            }
        }
        let mut old = serde_json::to_value(&before).unwrap();
        old["filled"] = serde_json::json!(pending.len());
        old["batch"] = serde_json::to_value(&batch).unwrap();
        let restored: OrthoDictionary = serde_json::from_value(old.clone()).unwrap();
        assert!(restored == now, "folded state differs");
        assert!(serde_json::to_value(&restored)
            .unwrap()
            .get("batch")
            .is_none());
        // An f64 learner keeps its minibatch, and a checkpoint of it mid-minibatch restores
        // that buffer.
        let mut exact = OrthoDictionary::<f64>::with_storage(DictionaryParams::default(), n);
        for y in &pending {
            exact.learn(y);
        }
        let json = serde_json::to_string(&exact).unwrap();
        assert!(json.contains("\"batch\""));
        let back: OrthoDictionary<f64> = serde_json::from_str(&json).unwrap();
        assert!(back == exact);
        // A buffer of the wrong shape is refused.
        old["batch"] = serde_json::to_value(DMatrix::<f32>::zeros(n, n - 1)).unwrap();
        assert!(serde_json::from_value::<OrthoDictionary>(old).is_err());
    }
}
