//! Polar factors: polar(M) = U·Vᵀ for a thin SVD M = U·Σ·Vᵀ.
//!
//! The learner needs two per step: the linear oracle S = polar(d) (the maximiser of ⟨d, S⟩
//! over the spectral-norm unit ball) and the projection of the iterate onto O(n). An SVD costs
//! about 1.3 ms at n = 64 with nalgebra, more than the whole per-step budget, so the fast path
//! is a scaled Newton–Schulz iteration, which needs only matrix products (≈ 30 GFLOP/s through
//! nalgebra's `gemm` here) and no buffers beyond its preallocated workspace. It is also the
//! more accurate of the two for the projection: (1−γ)·A + γ·S has its singular values in exact
//! pairs, where nalgebra's SVD returns a polar factor off by ~1e-10 (see the tests).
//! Newton–Schulz cannot converge when M has (near-)zero singular values, which happens with a
//! rank-deficient gradient early on (b < n); it then reports failure and the caller falls back
//! to the SVD, whose arbitrary completion of the null space is a valid oracle answer.

use nalgebra::{DMatrix, DMatrixView, Dyn};

/// One last plain step is taken once ‖XᵀX − I‖_F is below this; quadratic convergence then
/// leaves X orthogonal to rounding (error ≈ (3/8)·TOL² ≪ ε).
const NS_TOL: f64 = 1e-9;
/// Iterations before giving up. From the smallest lower bound used (`MIN_LOWER`), the scaled
/// iteration needs about 20; more means the matrix is numerically rank-deficient.
const NS_MAX_ITER: u32 = 30;
/// Lower bound on σ_min/σ_max assumed at the least. A zero bound would make the scaled step
/// map σ = 1 to 0, so the estimate is floored.
const MIN_LOWER: f64 = 1e-7;
/// Power iterations spent estimating σ_min (each costs 2n², under a tenth of one NS step).
const POWER_ITERS: usize = 8;

/// A column-major `m` seen as its transpose, without copying: `gemm` takes strides, so
/// `Xᵀ·X` runs through the same fast kernel as `X·X` (nalgebra's `gemm_tr` is 5× slower).
fn transposed(m: &DMatrix<f64>) -> DMatrixView<'_, f64, Dyn, Dyn> {
    DMatrixView::<f64, Dyn, Dyn>::from_slice_with_strides(
        m.as_slice(),
        m.ncols(),
        m.nrows(),
        m.nrows(),
        1,
    )
}

/// nalgebra hands products with a dimension of 5 or less to a column-by-column kernel that
/// mishandles the strided transposed view; those small products use plain loops instead.
const SMALL_DIM: usize = 5;

/// `out = α·xᵀ·y`.
pub(crate) fn gemm_tn(out: &mut DMatrix<f64>, alpha: f64, x: &DMatrix<f64>, y: &DMatrix<f64>) {
    if out.nrows().min(out.ncols()).min(x.nrows()) > SMALL_DIM {
        out.gemm(alpha, &transposed(x), y, 0.0);
        return;
    }
    for (j, mut col) in out.column_iter_mut().enumerate() {
        for (i, o) in col.iter_mut().enumerate() {
            *o = alpha * x.column(i).dot(&y.column(j));
        }
    }
}

/// `out = α·x·yᵀ`.
pub(crate) fn gemm_nt(out: &mut DMatrix<f64>, alpha: f64, x: &DMatrix<f64>, y: &DMatrix<f64>) {
    if out.nrows().min(out.ncols()).min(x.ncols()) > SMALL_DIM {
        out.gemm(alpha, x, &transposed(y), 0.0);
        return;
    }
    out.fill(0.0);
    for (xk, yk) in x.column_iter().zip(y.column_iter()) {
        for (j, mut col) in out.column_iter_mut().enumerate() {
            let w = alpha * yk[j];
            for (o, &xv) in col.iter_mut().zip(xk.iter()) {
                *o += w * xv;
            }
        }
    }
}

/// Buffers for the Newton–Schulz iteration on n×n matrices, allocated once.
#[derive(Debug, Clone)]
pub(crate) struct PolarWorkspace {
    y: DMatrix<f64>,
    b: DMatrix<f64>,
    v: Vec<f64>,
    w: Vec<f64>,
}

impl PolarWorkspace {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            y: DMatrix::zeros(n, n),
            b: DMatrix::zeros(n, n),
            v: vec![0.0; n],
            w: vec![0.0; n],
        }
    }

    /// Replaces `x` by polar(x) with the scaled Newton–Schulz iteration
    /// X ← ½·α·X·(3I − α²·XᵀX) (Chen & Chow's scaling; α → 1 as the lower bound on the
    /// singular values approaches 1, giving the plain quadratically convergent step).
    /// Returns the number of iterations, or `None` if `x` is zero, non-finite or too close to
    /// singular to converge; `x` holds garbage then.
    pub(crate) fn newton_schulz(&mut self, x: &mut DMatrix<f64>) -> Option<u32> {
        let fro = x.norm();
        if !(fro > 0.0 && fro.is_finite()) {
            return None;
        }
        x.scale_mut(1.0 / fro);
        gemm_tn(&mut self.b, 1.0, x, x);
        // σ_max² = λ_max(XᵀX) ≤ the largest absolute row sum of XᵀX; exact when X is a scaled
        // orthogonal matrix, the common case near convergence.
        let s2 = self
            .b
            .column_iter()
            .map(|c| c.iter().map(|v| v.abs()).sum::<f64>())
            .fold(0.0, f64::max);
        if !(s2 > 0.0 && s2.is_finite()) {
            return None;
        }
        x.scale_mut(1.0 / s2.sqrt());
        self.b.scale_mut(1.0 / s2);
        let mut lower = self.estimate_lower();
        for iter in 1..=NS_MAX_ITER {
            let err = identity_distance(&self.b);
            if !err.is_finite() {
                return None;
            }
            let last = err < NS_TOL;
            let alpha = if last || lower >= 1.0 {
                1.0
            } else {
                (3.0 / (1.0 + lower + lower * lower)).sqrt()
            };
            lower = (0.5 * alpha * lower * (3.0 - alpha * alpha * lower * lower)).min(1.0);
            self.y.copy_from(x);
            self.y.gemm(-0.5 * alpha.powi(3), x, &self.b, 1.5 * alpha);
            std::mem::swap(x, &mut self.y);
            if last {
                return Some(iter);
            }
            gemm_tn(&mut self.b, 1.0, x, x);
        }
        None
    }

    /// An estimate of σ_min(X) for X scaled so that σ_max ≤ 1, from a few power iterations
    /// on I − XᵀX (held in `b`). Power iteration underestimates the top eigenvalue of I − XᵀX,
    /// so this overestimates σ_min; that only makes the first steps less aggressive, never
    /// unstable (every α in [1, √3] keeps the singular values in (0, 1]).
    fn estimate_lower(&mut self) -> f64 {
        let n = self.v.len();
        for (i, v) in self.v.iter_mut().enumerate() {
            // A fixed start vector with no special structure (so it is not orthogonal to the
            // wanted eigenvector for typical inputs).
            *v = 1.0 + ((i * 7 + 3) % 11) as f64 / 11.0 * if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        let mut mu = 0.0;
        for _ in 0..POWER_ITERS {
            let norm = self.v.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            self.v.iter_mut().for_each(|v| *v /= norm);
            // w = (I − B)·v; B is symmetric, so column j of B is row j.
            for j in 0..n {
                let dot: f64 = self
                    .b
                    .column(j)
                    .iter()
                    .zip(&self.v)
                    .map(|(b, v)| b * v)
                    .sum();
                self.w[j] = self.v[j] - dot;
            }
            mu = self.v.iter().zip(&self.w).map(|(v, w)| v * w).sum::<f64>();
            std::mem::swap(&mut self.v, &mut self.w);
        }
        (1.0 - mu).max(0.0).sqrt().clamp(MIN_LOWER, 1.0)
    }
}

/// ‖M − I‖_F for a square matrix.
fn identity_distance(m: &DMatrix<f64>) -> f64 {
    let n = m.nrows();
    let mut sum = 0.0;
    for (j, col) in m.column_iter().enumerate() {
        for (i, &v) in col.iter().enumerate() {
            let e = if i == j { v - 1.0 } else { v };
            sum += e * e;
        }
    }
    debug_assert_eq!(m.ncols(), n);
    sum.sqrt()
}

/// Replaces `x` by polar(x) through nalgebra's SVD. Allocates (the SVD consumes a copy).
/// Returns false, leaving `x` unchanged, if the SVD fails or `x` is not finite.
pub(crate) fn polar_svd(x: &mut DMatrix<f64>) -> bool {
    if !x.iter().all(|v| v.is_finite()) {
        return false;
    }
    let svd = x.clone().svd(true, true);
    match (svd.u, svd.v_t) {
        (Some(u), Some(v_t)) => {
            x.gemm(1.0, &u, &v_t, 0.0);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn gaussian(n: usize, seed: u64) -> DMatrix<f64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        DMatrix::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng))
    }

    fn orthogonality(m: &DMatrix<f64>) -> f64 {
        identity_distance(&(m.transpose() * m))
    }

    #[test]
    fn newton_schulz_matches_the_svd_polar_factor() {
        for (n, seed) in [(3, 1), (8, 2), (17, 3), (64, 4)] {
            let m = gaussian(n, seed);
            let mut svd = m.clone();
            assert!(polar_svd(&mut svd));
            let mut ns = m.clone();
            let iters = PolarWorkspace::new(n).newton_schulz(&mut ns).unwrap();
            assert!(orthogonality(&ns) < 1e-13, "n={n}: {}", orthogonality(&ns));
            assert!((&ns - &svd).norm() < 1e-9, "n={n}: {}", (&ns - &svd).norm());
            assert!(iters <= 25, "n={n}: {iters} iterations");
        }
    }

    /// Newton–Schulz is as accurate as the SVD when it converges, and more accurate when
    /// singular values come in pairs, as they do for (1−γ)·A + γ·S with A, S orthogonal:
    /// there nalgebra's SVD returns a polar factor Q with ‖QᵀM − MᵀQ‖ ≈ 1e-10.
    #[test]
    fn paired_singular_values_are_handled_exactly() {
        let n = 8;
        let (a, s) = (gaussian(n, 11).qr().q(), gaussian(n, 12).qr().q());
        let m = &a * 0.7 + &s * 0.3;
        let mut ns = m.clone();
        PolarWorkspace::new(n).newton_schulz(&mut ns).unwrap();
        let h = ns.transpose() * &m;
        assert!((&h - h.transpose()).norm() < 1e-14, "QᵀM not symmetric");
        assert!(orthogonality(&ns) < 1e-14);
    }

    #[test]
    fn ill_conditioned_input_is_accurate() {
        // M = U·diag(σ)·Vᵀ with σ from 1 down to 1/κ: polar(M) = U·Vᵀ exactly.
        let n = 8;
        let (u, v) = (gaussian(n, 9).qr().q(), gaussian(n, 10).qr().q());
        for kappa in [1e2f64, 1e3, 1e4, 1e6] {
            let sigma = DMatrix::from_fn(n, n, |i, j| {
                if i == j {
                    kappa.powf(-(i as f64) / (n - 1) as f64)
                } else {
                    0.0
                }
            });
            let m = &u * sigma * v.transpose();
            let exact = &u * v.transpose();
            let mut ns = m.clone();
            let iters = PolarWorkspace::new(n).newton_schulz(&mut ns);
            match iters {
                Some(iters) => {
                    let err = (&ns - &exact).norm();
                    assert!(err < 1e-12, "κ={kappa:e}: error {err:e}");
                    assert!(iters <= 27, "κ={kappa:e}: {iters} iterations");
                }
                // Too ill-conditioned for the iteration budget: the caller uses the SVD.
                None => assert!(kappa > 1e5, "κ={kappa:e} should converge"),
            }
        }
    }

    #[test]
    fn near_orthogonal_input_takes_few_iterations() {
        let n = 32;
        let mut q = gaussian(n, 5).qr().q();
        let s = gaussian(n, 6).qr().q();
        q = q * 0.95 + s * 0.05;
        let mut ws = PolarWorkspace::new(n);
        let iters = ws.newton_schulz(&mut q).unwrap();
        assert!(iters <= 5, "{iters}");
    }

    #[test]
    fn singular_input_fails_and_svd_completes_it() {
        let n = 6;
        let u = gaussian(n, 7).column(0).into_owned();
        let v = gaussian(n, 8).column(1).into_owned();
        let rank_one = &u * v.transpose();
        let mut ns = rank_one.clone();
        assert_eq!(PolarWorkspace::new(n).newton_schulz(&mut ns), None);
        let mut svd = rank_one.clone();
        assert!(polar_svd(&mut svd));
        assert!(orthogonality(&svd) < 1e-12, "{}", orthogonality(&svd));
        // The oracle value ⟨M, S⟩ equals the nuclear norm σ₁ = ‖u‖‖v‖.
        let value = rank_one.dot(&svd);
        assert!((value - u.norm() * v.norm()).abs() < 1e-12);
        let mut zero = DMatrix::zeros(n, n);
        assert_eq!(PolarWorkspace::new(n).newton_schulz(&mut zero), None);
    }
}
