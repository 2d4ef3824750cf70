//! Tests of the online orthogonal dictionary learner and the sparse coder against a slow,
//! obviously correct reference (plain loops, an explicit SVD for every polar factor, explicit
//! reconstruction), plus the invariants the pipeline relies on and a cheap replication check.

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use sparsewatch_dsp::coding::{SparseCode, StorageScalar};
use sparsewatch_dsp::dictionary::{
    DictionaryParams, LearnOutcome, LearnScratch, Objective, OrthoDictionary, Retraction, Schedule,
};

/// The one seed every test derives its randomness from.
const SEED: u64 = 0x5EED_D1C7;

/// The spec's data model: y = D_o·x, D_o Haar-like orthogonal, x Bernoulli(θ)–Gaussian.
struct Synthetic {
    truth: DMatrix<f64>,
    theta: f64,
    rng: Xoshiro256PlusPlus,
}

impl Synthetic {
    fn new(n: usize, theta: f64, seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED ^ seed);
        let g = DMatrix::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng));
        Self {
            truth: g.qr().q(),
            theta,
            rng,
        }
    }

    fn sample(&mut self) -> Vec<f64> {
        let n = self.truth.nrows();
        let mut y = vec![0.0; n];
        for atom in self.truth.as_slice().chunks_exact(n) {
            let g: f64 = StandardNormal.sample(&mut self.rng);
            if self.rng.random::<f64>() < self.theta {
                y.iter_mut().zip(atom).for_each(|(y, a)| *y += g * a);
            }
        }
        y
    }

    /// A sample with at least one active atom (an all-zero window is skipped by design).
    fn nonzero_sample(&mut self) -> Vec<f64> {
        loop {
            let y = self.sample();
            if y.iter().any(|v| *v != 0.0) {
                return y;
            }
        }
    }

    /// err = |1 − ‖Dᵀ·D_o‖₄⁴ / n| (spec §4).
    fn error(&self, dictionary: &DMatrix<f32>) -> f64 {
        let m = dictionary.map(f64::from).transpose() * &self.truth;
        let n = self.truth.nrows() as f64;
        (1.0 - m.iter().map(|v| v.powi(4)).sum::<f64>() / n).abs()
    }
}

/// ‖DᵀD − I‖_F, computed in f64.
fn orthogonality_error<T: StorageScalar>(d: &DMatrix<T>) -> f64 {
    let n = d.nrows();
    let d = widened(d);
    (d.transpose() * &d - DMatrix::<f64>::identity(n, n)).norm()
}

/// The precision the published dictionary is orthogonal to. The learner computes
/// D = polar(A)ᵀ in f64 (orthogonal to ~1e-15, asserted by the learner's unit tests) and
/// stores it as f32 to halve a stream's memory; rounding moves each entry by at most 2⁻²⁴ of
/// its size, which puts ‖DᵀD − I‖_F near √n·2⁻²³. The bound n·2⁻²³ leaves a factor √n of
/// margin and is still five orders of magnitude below anything the coder or the scorers
/// could notice.
fn f32_orthogonality_bound(n: usize) -> f64 {
    n as f64 * f64::from(f32::EPSILON)
}

/// The algorithm of spec §2 written out directly.
mod reference {
    use super::*;

    /// polar(M) by Higham's Newton iteration X ← (X + X⁻ᵀ)/2, run to convergence: the
    /// textbook method, independent of the learner's Newton–Schulz code. (Not U·Vᵀ from
    /// nalgebra's SVD: when singular values come in pairs, as they do for (1−γ)·A + γ·S with
    /// A and S orthogonal, that polar factor is only accurate to ~1e-10.)
    pub fn polar(m: &DMatrix<f64>) -> DMatrix<f64> {
        let mut x = m.clone();
        for _ in 0..100 {
            let next = (&x + x.clone().try_inverse().expect("singular").transpose()) * 0.5;
            let change = (&next - &x).norm();
            x = next;
            if change < 1e-15 * x.nrows() as f64 {
                break;
            }
        }
        x
    }

    pub struct Learner {
        /// Round the stored state (A, and d after every window) to f32 as the f32 learner
        /// does.
        pub f32_storage: bool,
        pub params: DictionaryParams,
        pub a: DMatrix<f64>,
        pub d: DMatrix<f64>,
        pub t: u64,
    }

    impl Learner {
        pub fn step(&mut self, ys: &[Vec<f64>]) {
            let (n, b) = (self.a.nrows(), ys.len());
            let (rho, gamma) = self.params.rates(self.t);
            let weight = |z: f64| match self.params.objective {
                Objective::L3 => z * z.abs(),
                Objective::L4 => z * z * z,
            };
            if self.f32_storage {
                // The f32 learner folds each window into d as it arrives and stores d as f32
                // after every window; model that storage here, and only that (the sum is the
                // spec's, in f64).
                let r = |v: f64| f64::from(v as f32);
                self.d = self.d.map(|v| r((1.0 - rho) * v));
                for y in ys {
                    for i in 0..n {
                        let z: f64 = (0..n).map(|j| self.a[(i, j)] * y[j]).sum();
                        let w = rho / b as f64 * weight(z);
                        for (j, yj) in y.iter().enumerate() {
                            self.d[(i, j)] = r(self.d[(i, j)] + w * yj);
                        }
                    }
                }
            } else {
                let mut g = DMatrix::zeros(n, n);
                for y in ys {
                    for i in 0..n {
                        let z: f64 = (0..n).map(|j| self.a[(i, j)] * y[j]).sum();
                        let w = weight(z);
                        for j in 0..n {
                            g[(i, j)] += w * y[j] / b as f64;
                        }
                    }
                }
                self.d = &self.d * (1.0 - rho) + g * rho;
            }
            let s = polar(&self.d);
            self.a = &self.a * (1.0 - gamma) + s * gamma;
            if self.params.retraction == Retraction::EveryStep {
                self.a = polar(&self.a);
            }
            if self.f32_storage {
                self.a = self.a.map(|v| f64::from(v as f32));
                self.d = self.d.map(|v| f64::from(v as f32));
            }
            self.t += 1;
        }

        pub fn dictionary(&self) -> DMatrix<f64> {
            polar(&self.a).transpose()
        }
    }

    /// x = Dᵀy by loops, top-k by a full sort, residual by explicit reconstruction.
    pub fn code(d: &DMatrix<f64>, y: &[f64], k: usize) -> (Vec<usize>, f64) {
        let n = d.nrows();
        let x: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| d[(j, i)] * y[j]).sum())
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
        order.truncate(k);
        let energy: f64 = y.iter().map(|v| v * v).sum();
        let mut residual = 0.0;
        for (j, yj) in y.iter().enumerate() {
            let approx: f64 = order.iter().map(|&i| d[(j, i)] * x[i]).sum();
            residual += (yj - approx).powi(2);
        }
        (order, if energy > 0.0 { residual / energy } else { 0.0 })
    }
}

/// Asserts that the fast learner's state equals the reference's up to the signed permutation
/// of atoms the learner applies (the reference does not relabel), within `tol`. The
/// permutation is read off the orthogonal dictionaries, then checked on A and d row by row.
fn widened<T: StorageScalar>(m: &DMatrix<T>) -> DMatrix<f64> {
    m.map(|v| v.into())
}

fn assert_same_up_to_signed_permutation<T: StorageScalar>(
    fast: &OrthoDictionary<T>,
    slow: &reference::Learner,
    tol: f64,
) {
    let n = fast.n();
    let overlap = widened(fast.dictionary()).transpose() * slow.dictionary();
    let mut used = vec![false; n];
    for i in 0..n {
        let (j, c) = (0..n)
            .map(|j| (j, overlap[(i, j)]))
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        assert!(
            !used[j] && c.abs() > 1.0 - 1e-6,
            "atom {i}: no unique partner ({c})"
        );
        used[j] = true;
        let s = c.signum();
        let diff = (widened(fast.iterate()).row(i) - slow.a.row(j) * s).norm();
        assert!(diff < tol, "iterate row {i} differs by {diff:e}");
        let diff = (widened(fast.gradient_average()).row(i) - slow.d.row(j) * s).norm();
        let scale = 1.0 + slow.d.norm();
        assert!(diff < tol * scale, "gradient row {i} differs by {diff:e}");
    }
}

/// The fast learner (Newton–Schulz, in-place buffers, atom relabelling) follows the
/// reference step for step, for both objectives and both retraction modes, with full and
/// small (b < n, the small-matrix product path) minibatches. With f64 storage they agree to
/// 1e-9. With f32 storage (the default) both round A and d to f32 between steps, so where
/// their f64 results differ by rounding (~1e-10) the stored values may land on neighbouring
/// f32s: the tolerance is a few f32 ulps.
#[test]
fn fast_path_matches_the_reference_implementation() {
    follows_the_reference::<f64>(false, 1e-9);
    follows_the_reference::<f32>(true, 1e-6);
}

fn follows_the_reference<T: StorageScalar>(f32_storage: bool, tol: f64) {
    let n = 8;
    for (objective, retraction, b, paper) in [
        (Objective::L3, Retraction::EveryStep, 8, true),
        (Objective::L3, Retraction::ReadOut, 8, false),
        (Objective::L4, Retraction::ReadOut, 12, false),
        (Objective::L3, Retraction::EveryStep, 3, false),
    ] {
        let base = if paper {
            DictionaryParams::paper()
        } else {
            DictionaryParams::default()
        };
        let params = DictionaryParams {
            minibatch: b,
            objective,
            retraction,
            ..base
        };
        let mut fast = OrthoDictionary::<T>::with_storage(params.clone(), n);
        let mut slow = reference::Learner {
            f32_storage,
            a: widened(fast.iterate()),
            d: DMatrix::zeros(n, n),
            t: 1,
            params,
        };
        let mut data = Synthetic::new(n, 0.3, 1);
        // While ρ_t ≥ 1 (t ≤ 15) d is one minibatch's gradient, often rank-deficient for
        // sparse data (an atom inactive in the whole batch); the oracle's completion of the
        // null space is then arbitrary. So the two are synchronised for the first 20 steps and
        // compared once d averages several batches.
        let warm_up = 20;
        for step in 0..warm_up + 8 {
            let ys: Vec<Vec<f64>> = (0..b).map(|_| data.sample()).collect();
            for y in &ys {
                fast.learn(y);
            }
            slow.step(&ys);
            if step < warm_up {
                slow.a = widened(fast.iterate());
                slow.d = widened(fast.gradient_average());
                continue;
            }
            assert_same_up_to_signed_permutation(&fast, &slow, tol);
        }
    }
}

/// The published dictionary is orthogonal to its storage precision after many steps,
/// whatever the retraction mode: f32 (the default, see `f32_orthogonality_bound`) or f64
/// (1e-12). Rounding does not accumulate, because each step recomputes D as a polar factor
/// in f64.
#[test]
fn dictionary_stays_orthogonal() {
    let n = 16;
    for retraction in [Retraction::EveryStep, Retraction::ReadOut] {
        let params = DictionaryParams {
            retraction,
            ..DictionaryParams::default()
        };
        let mut learner = OrthoDictionary::new(params.clone(), n);
        let mut exact = OrthoDictionary::<f64>::with_storage(params, n);
        assert!(orthogonality_error(learner.dictionary()) < f32_orthogonality_bound(n));
        let mut data = Synthetic::new(n, 0.3, 2);
        for _ in 0..200 * n {
            let y = data.sample();
            learner.learn(&y);
            exact.learn(&y);
        }
        // Stored as f64, D is orthogonal to f64 working precision.
        let e = orthogonality_error(exact.dictionary());
        assert!(
            e < 1e-12,
            "{retraction:?}, f64 storage: ‖DᵀD − I‖_F = {e:e}"
        );
        assert_eq!(learner.steps(), 200);
        assert_eq!(learner.version(), 200);
        let e = orthogonality_error(learner.dictionary());
        assert!(
            e < f32_orthogonality_bound(n),
            "{retraction:?}: ‖DᵀD − I‖_F = {e:e}"
        );
        assert!(learner.gap() >= -1e-12, "FW gap {}", learner.gap());
    }
}

/// A checkpoint taken mid-minibatch restores to an identical learner that then produces
/// bit-identical dictionaries and codes.
#[test]
fn serde_round_trip_restores_an_identical_learner() {
    let n = 12;
    let mut learner = OrthoDictionary::new(DictionaryParams::default(), n);
    let mut data = Synthetic::new(n, 0.3, 3);
    for _ in 0..(5 * n + 5) {
        learner.learn(&data.sample());
    }
    assert_eq!(learner.pending(), 5);
    let json = serde_json::to_string(&learner).unwrap();
    let mut restored: OrthoDictionary = serde_json::from_str(&json).unwrap();
    assert!(restored == learner, "state changed in a JSON round trip");
    let (mut c1, mut c2) = (SparseCode::new(n), SparseCode::new(n));
    for _ in 0..3 * n {
        let y = data.sample();
        assert_eq!(learner.learn(&y), restored.learn(&y));
        learner.code(&y, 4, &mut c1);
        restored.code(&y, 4, &mut c2);
        assert_eq!(c1, c2);
    }
    assert_eq!(learner.dictionary(), restored.dictionary());
    assert_eq!(learner.version(), restored.version());
    // A checkpoint whose shapes do not fit is rejected, not accepted to panic later.
    let corrupt = json.replacen("\"filled\":5", "\"filled\":99", 1);
    assert!(serde_json::from_str::<OrthoDictionary>(&corrupt).is_err());
}

/// Learners that share one scratch (as a daemon worker's streams do), interleaved and of
/// different dimensions, end bit-identical to learners that each get fresh buffers for every
/// step: nothing a step leaves in the scratch reaches the next one.
#[test]
fn a_shared_scratch_gives_bit_identical_learners() {
    let dims = [8, 12, 8, 5];
    let params = |i: usize| DictionaryParams {
        seed: i as u64,
        polar: if i == 3 {
            sparsewatch_dsp::dictionary::PolarMethod::Svd
        } else {
            Default::default()
        },
        ..DictionaryParams::default()
    };
    let mut shared: Vec<_> = (0..dims.len())
        .map(|i| OrthoDictionary::new(params(i), dims[i]))
        .collect();
    let mut alone = shared.clone();
    let mut scratch = LearnScratch::new();
    for learner in &shared[..2] {
        scratch.reserve(learner);
    }
    let mut data: Vec<_> = dims
        .iter()
        .enumerate()
        .map(|(i, &n)| Synthetic::new(n, 0.3, 40 + i as u64))
        .collect();
    let mut steps = 0;
    for round in 0..40 * 12 {
        // Uneven interleaving, so steps of different learners alternate in the scratch.
        let i = (round * 7 + round / 5) % dims.len();
        let y = data[i].sample();
        let a = shared[i].learn_with(&y, &mut scratch);
        let b = alone[i].learn(&y);
        assert_eq!(a, b);
        steps += usize::from(a == LearnOutcome::Stepped);
    }
    assert!(steps > 20, "only {steps} steps");
    for (a, b) in shared.iter().zip(&alone) {
        assert!(a == b, "n = {}: state differs", a.n());
        assert!(a.version() > 0);
        assert_eq!(a.dictionary(), b.dictionary());
    }
    // One set of buffers per distinct dimension (n, b), however many learners use it.
    let mut dims_held: Vec<_> = scratch.dimensions().collect();
    dims_held.sort_unstable();
    assert_eq!(dims_held, vec![(5, 5), (8, 8), (12, 12)]);
    let per_stream_state = |n: usize| 4 * 3 * n * n;
    assert!(scratch.bytes() > per_stream_state(12));
}

/// All-zero windows carry no gradient: the step is skipped and nothing changes. Constant
/// windows give a rank-one gradient (the SVD fallback completes it). Nothing is ever NaN.
#[test]
fn zero_and_constant_windows_produce_no_nan() {
    let n = 8;
    let mut learner = OrthoDictionary::new(DictionaryParams::default(), n);
    let before = learner.dictionary().clone();
    let zeros = vec![0.0; n];
    for i in 0..3 * n {
        let outcome = learner.learn(&zeros);
        let expect = if i % n == n - 1 {
            LearnOutcome::Skipped
        } else {
            LearnOutcome::Buffered
        };
        assert_eq!(outcome, expect);
    }
    assert_eq!((learner.steps(), learner.version()), (0, 0));
    assert_eq!(learner.dictionary(), &before);
    let mut code = SparseCode::new(n);
    learner.code(&zeros, 3, &mut code);
    assert_eq!(code.residual(), 0.0);
    assert!(code.coefficients().iter().all(|v| *v == 0.0));

    for level in [1.0, -3.0, 1e-3] {
        for _ in 0..4 * n {
            learner.learn(&vec![level; n]);
        }
    }
    // Zeros again after real data: the running gradient decays but stays usable.
    for _ in 0..2 * n {
        learner.learn(&zeros);
    }
    let d = learner.dictionary();
    assert!(d.iter().all(|v| v.is_finite()));
    assert!(orthogonality_error(d) < f32_orthogonality_bound(n));
    assert!(learner.iterate().iter().all(|v| v.is_finite()));
    assert!(learner.gradient_average().iter().all(|v| v.is_finite()));
    assert!(learner.stats().svd > 0, "a rank-one gradient needs the SVD");
    // The constant windows taught it a DC atom.
    learner.code(&vec![2.0; n], 1, &mut code);
    assert!(
        code.residual().is_finite() && code.residual() < 1e-3,
        "{}",
        code.residual()
    );
}

/// With b = 1 the gradient has rank ≤ t for the first n steps; the oracle must still return
/// an orthogonal matrix, the Frank–Wolfe gap ⟨d, S − A⟩ must be ≥ 0 (S maximises ⟨d, ·⟩
/// over the ball that contains A), and learning must proceed.
#[test]
fn rank_deficient_early_gradient_with_single_window_batches() {
    let n = 10;
    let params = DictionaryParams {
        minibatch: 1,
        ..DictionaryParams::default()
    };
    let mut learner = OrthoDictionary::new(params, n);
    let mut data = Synthetic::new(n, 0.3, 4);
    for t in 1..=3 * n as u64 {
        assert_eq!(learner.learn(&data.nonzero_sample()), LearnOutcome::Stepped);
        assert_eq!(learner.steps(), t);
        let e = orthogonality_error(learner.dictionary());
        assert!(e < f32_orthogonality_bound(n), "step {t}: {e:e}");
        let d = learner.gradient_average().map(f64::from);
        let nuclear: f64 = d.svd(false, false).singular_values.sum();
        assert!(
            learner.gap() >= -1e-9 * nuclear,
            "step {t}: gap {}",
            learner.gap()
        );
    }
    assert!(learner.stats().svd > 0);
    assert!(data.error(learner.dictionary()) < 0.75);
}

/// Atom i means the same atom across updates: a converged dictionary moves each atom only a
/// little and keeps its sign; even a large early step keeps every atom on the side of its
/// predecessor (⟨old_i, new_i⟩ ≥ 0).
#[test]
fn atom_identity_is_stable_across_updates() {
    let n = 8;
    let mut learner = OrthoDictionary::new(DictionaryParams::default(), n);
    let mut data = Synthetic::new(n, 0.3, 5);
    let mut old = learner.dictionary().clone();
    for step in 0..400 {
        for _ in 0..n {
            learner.learn(&data.sample());
        }
        let new = learner.dictionary();
        for i in 0..n {
            let c = old.column(i).dot(&new.column(i));
            assert!(c >= 0.0, "step {step}: atom {i} flipped ({c})");
            if step >= 300 {
                assert!(c > 0.999, "step {step}: atom {i} moved: ⟨old, new⟩ = {c}");
            }
        }
        old = new.clone();
    }
    assert!(data.error(learner.dictionary()) < 1e-2);
}

/// The learner's coder agrees with the reference coder (full sort, explicit reconstruction)
/// on the learned dictionary.
#[test]
fn codes_match_the_reference_coder() {
    let n = 16;
    let mut learner = OrthoDictionary::new(DictionaryParams::default(), n);
    let mut data = Synthetic::new(n, 0.3, 6);
    for _ in 0..50 * n {
        learner.learn(&data.sample());
    }
    let mut code = SparseCode::new(n);
    let mut y_hat = vec![0.0; n];
    for k in [0, 1, 4, n] {
        for _ in 0..20 {
            let y = data.sample();
            learner.code(&y, k, &mut code);
            let (order, residual) = reference::code(&learner.dictionary().map(f64::from), &y, k);
            assert_eq!(code.indices(), &order[..], "k={k}");
            // The coder's residual is the energy of the dropped coefficients, which equals the
            // reference's explicit ‖y − D·x_k‖² only as far as D is orthogonal: to f32
            // precision.
            assert!((code.residual() - residual).abs() < 1e-6, "k={k}");
            assert_eq!(code.version(), learner.version());
            code.reconstruct(learner.dictionary(), &mut y_hat);
            let explicit: f64 = y.iter().zip(&y_hat).map(|(a, b)| (a - b).powi(2)).sum();
            let energy: f64 = y.iter().map(|v| v * v).sum();
            if energy > 0.0 {
                assert!((explicit / energy - code.residual()).abs() < 1e-6);
            }
        }
    }
}

/// Mean err over `seeds` seeds after `iterations` steps of E1 (n = 10, b = 10, θ = 0.3).
fn e1_error(params: DictionaryParams, iterations: usize, seeds: u64) -> f64 {
    let n = 10;
    let total: f64 = (0..seeds)
        .map(|seed| {
            let mut data = Synthetic::new(n, 0.3, 100 + seed);
            let params = DictionaryParams {
                minibatch: 10,
                seed,
                ..params.clone()
            };
            let mut learner = OrthoDictionary::new(params, n);
            for _ in 0..iterations * 10 {
                learner.learn(&data.sample());
            }
            data.error(learner.dictionary())
        })
        .sum();
    total / seeds as f64
}

/// CI-sized replication of spec target T2 and the ordering of methods: after 3 000
/// iterations of E1 with b = 10, the proposed ℓ3 method reaches err ≤ 1e-3 (mean over 5
/// seeds), ℓ4 is worse and the convex schedule worse still, comparing means as the spec
/// asks. The convex schedule's error is heavy-tailed over seeds (most seeds ~1e-3, a few
/// ~1e-2), so the last comparison rests on its tail; docs/bench-dictionary.md has the spread.
#[test]
fn replication_e1_proposed_beats_l4_beats_convex() {
    let paper = DictionaryParams::paper;
    let configs = [
        paper(),
        DictionaryParams {
            objective: Objective::L4,
            ..paper()
        },
        DictionaryParams {
            schedule: Schedule::Convex,
            retraction: Retraction::ReadOut,
            ..paper()
        },
    ];
    // One thread per method: this is the slowest test in debug builds.
    let errs: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .into_iter()
            .map(|p| scope.spawn(move || e1_error(p, 3_000, 5)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (l3, l4, convex) = (errs[0], errs[1], errs[2]);
    assert!(l3 <= 1e-3, "ℓ3 err {l3:e}");
    assert!(
        l3 < l4 && l4 < convex,
        "ℓ3 {l3:e}, ℓ4 {l4:e}, convex {convex:e}"
    );
}
