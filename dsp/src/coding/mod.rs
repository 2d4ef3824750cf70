//! Sparse coding in an orthogonal dictionary.
//!
//! With D orthogonal the exact coefficients are x = Dᵀ·y (one matrix–vector product, no
//! Lasso or OMP), and the best k-term approximation keeps the k largest |x_i|. The share of
//! the window's energy the kept atoms miss, ‖y − D·x_k‖²/‖y‖², is the anomaly signal: a window
//! the dictionary has learned is explained by few atoms, a new pattern is not. Orthogonality
//! also gives that residual for free, as the energy of the dropped coefficients, so nothing is
//! reconstructed on the hot path.
//!
//! The dictionary is stored as f32 (the learner keeps its state in single precision to halve
//! a stream's memory); each atom entry is widened to f64 as it is loaded and every product
//! and sum is f64, so a code is exact for the stored dictionary up to f64 rounding.
//!
//! [`SparseCode`] holds every buffer, allocated once for a dimension n; [`encode_top_k`] and
//! [`encode_threshold`] fill it without allocating. The learner's
//! [`OrthoDictionary::code`](crate::dictionary::OrthoDictionary::code) calls these with its
//! current dictionary.

use nalgebra::DMatrix;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A scalar a dictionary is stored in: `f32` (the daemon's learners: half the memory) or
/// `f64` (the replication of the paper's experiments). Coding and learning compute in f64
/// either way; entries are widened exactly as they are read.
pub trait StorageScalar:
    nalgebra::Scalar + Copy + Into<f64> + Serialize + DeserializeOwned + Send + Sync
{
    /// Whether a learner with this storage keeps its minibatch's windows and computes the
    /// gradient at the step with one matrix product (f64: the paper's algorithm with the
    /// summation order of before, which the replication example measures), or folds each
    /// window into the running gradient as it arrives (f32: no buffer, the daemon's choice).
    const KEEPS_MINIBATCH: bool;
    /// `v` rounded to this type (nearest f32, or `v` itself).
    fn from_f64(v: f64) -> Self;
    /// x_i = ⟨atom_i, y⟩ for every atom of the column-major `d`, in the fixed order of
    /// [`project_atoms_generic`] (the f32 path may use a SIMD kernel with the same bits).
    #[doc(hidden)]
    fn project_atoms(d: &[Self], y: &[f64], x: &mut [f64]);
}

impl StorageScalar for f32 {
    const KEEPS_MINIBATCH: bool = false;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn project_atoms(d: &[f32], y: &[f64], x: &mut [f64]) {
        project_atoms(d, y, x);
    }
}

impl StorageScalar for f64 {
    const KEEPS_MINIBATCH: bool = true;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn project_atoms(d: &[f64], y: &[f64], x: &mut [f64]) {
        project_atoms_generic(d, y, x);
    }
}

/// The code of one window: all coefficients, the kept ones in decreasing |value| order, and
/// the residual energy. Reused from window to window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseCode {
    coefficients: Vec<f64>,
    /// First `kept` entries are valid.
    indices: Vec<usize>,
    values: Vec<f64>,
    kept: usize,
    energy: f64,
    residual: f64,
    version: u64,
}

impl SparseCode {
    /// Buffers for windows of length `n`.
    pub fn new(n: usize) -> Self {
        Self {
            coefficients: vec![0.0; n],
            indices: vec![0; n],
            values: vec![0.0; n],
            kept: 0,
            energy: 0.0,
            residual: 0.0,
            version: 0,
        }
    }

    /// Window length n this code was allocated for.
    pub fn n(&self) -> usize {
        self.coefficients.len()
    }

    /// All n coefficients x = Dᵀ·y, in atom order.
    pub fn coefficients(&self) -> &[f64] {
        &self.coefficients
    }

    /// Atoms kept, largest |x_i| first (ties: lower index first).
    pub fn indices(&self) -> &[usize] {
        &self.indices[..self.kept]
    }

    /// Coefficients of the kept atoms, in the order of [`indices`](Self::indices).
    pub fn values(&self) -> &[f64] {
        &self.values[..self.kept]
    }

    /// Number of atoms kept.
    pub fn k(&self) -> usize {
        self.kept
    }

    /// ‖y‖², the window's energy.
    pub fn energy(&self) -> f64 {
        self.energy
    }

    /// ‖y − D·x_k‖² / ‖y‖² in [0, 1]: the share of energy the kept atoms miss. 0 for y = 0.
    pub fn residual(&self) -> f64 {
        self.residual
    }

    /// Version of the dictionary that produced the code; codes from different versions refer
    /// to (slightly) different atoms.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Writes ŷ = D·x_k, the k-term approximation, into `out` (length n). Not needed for the
    /// residual; for consumers that want the denoised window.
    pub fn reconstruct<T: StorageScalar>(&self, dictionary: &DMatrix<T>, out: &mut [f64]) {
        assert_eq!(out.len(), self.n(), "output length must be n");
        out.fill(0.0);
        for (&i, &v) in self.indices().iter().zip(self.values()) {
            for (o, &a) in out.iter_mut().zip(dictionary.column(i).iter()) {
                *o += v * a.into();
            }
        }
    }
}

/// Codes `y` in the orthogonal `dictionary` (atoms are its columns), keeping the `k` largest
/// coefficients (all of them if k ≥ n). `version` is copied into the code.
///
/// # Panics
/// If `y` or `out` do not have the dictionary's dimension. `y` must be finite (debug-checked).
pub fn encode_top_k<T: StorageScalar>(
    dictionary: &DMatrix<T>,
    version: u64,
    y: &[f64],
    k: usize,
    out: &mut SparseCode,
) {
    project(dictionary, version, y, out);
    let k = k.min(out.n());
    // Insertion into a sorted buffer of k: O(n) comparisons when k ≪ n, no allocation, and
    // deterministic (a later coefficient must be strictly larger to displace an earlier one).
    let mut kept = 0;
    for (i, &x) in out.coefficients.iter().enumerate() {
        let a = x.abs();
        if kept == k && (k == 0 || a <= out.values[k - 1].abs()) {
            continue;
        }
        let mut pos = kept.min(k - 1);
        while pos > 0 && out.values[pos - 1].abs() < a {
            out.values[pos] = out.values[pos - 1];
            out.indices[pos] = out.indices[pos - 1];
            pos -= 1;
        }
        out.values[pos] = x;
        out.indices[pos] = i;
        kept = (kept + 1).min(k);
    }
    out.kept = kept;
    finish(out);
}

/// Like [`encode_top_k`], but keeps every coefficient with |x_i| ≥ `threshold` (hard
/// thresholding), largest first.
pub fn encode_threshold<T: StorageScalar>(
    dictionary: &DMatrix<T>,
    version: u64,
    y: &[f64],
    threshold: f64,
    out: &mut SparseCode,
) {
    project(dictionary, version, y, out);
    let mut kept = 0;
    for (i, &x) in out.coefficients.iter().enumerate() {
        if x.abs() >= threshold {
            out.indices[kept] = i;
            out.values[kept] = x;
            kept += 1;
        }
    }
    out.kept = kept;
    // Sort the kept pairs by decreasing |value|, in place (insertion sort: stable, no
    // allocation; the kept set is small for a useful threshold).
    for r in 1..kept {
        let (i, v) = (out.indices[r], out.values[r]);
        let mut pos = r;
        while pos > 0 && out.values[pos - 1].abs() < v.abs() {
            out.values[pos] = out.values[pos - 1];
            out.indices[pos] = out.indices[pos - 1];
            pos -= 1;
        }
        out.values[pos] = v;
        out.indices[pos] = i;
    }
    finish(out);
}

/// x = Dᵀ·y and ‖y‖² into `out`.
fn project<T: StorageScalar>(
    dictionary: &DMatrix<T>,
    version: u64,
    y: &[f64],
    out: &mut SparseCode,
) {
    let n = dictionary.nrows();
    assert_eq!(
        y.len(),
        n,
        "window length must equal the dictionary dimension"
    );
    assert_eq!(out.n(), n, "SparseCode was allocated for another dimension");
    debug_assert!(y.iter().all(|v| v.is_finite()), "non-finite window");
    T::project_atoms(dictionary.as_slice(), y, &mut out.coefficients);
    out.energy = dot(y, y);
    out.version = version;
}

/// Residual from the kept coefficients.
fn finish(out: &mut SparseCode) {
    // With D orthogonal, ‖y − D·x_k‖² = ‖y‖² − Σ_kept x_i². Computed as written, in the
    // form the spec gives, then clamped: rounding (of the sums, and of D to f32, which makes
    // it orthogonal only to ~1e-7) may push it slightly outside [0, 1].
    let kept_energy: f64 = out.values[..out.kept].iter().map(|v| v * v).sum();
    out.residual = if out.energy > 0.0 {
        ((out.energy - kept_energy) / out.energy).clamp(0.0, 1.0)
    } else {
        0.0
    };
}

/// x_i = ⟨atom_i, y⟩ for every atom (column) of the column-major `d`.
///
/// Every coefficient is summed in one fixed order, whatever the path: eight partial sums,
/// lane l collecting the products f64(atom[l])·y[l] at positions l, l + 8, l + 16, … (widen,
/// multiply, then add; no FMA contraction), folded as ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7)), then the
/// products past the last multiple of eight added in order. So the AVX2 kernel (chosen at run
/// time; std caches the CPU check) and the portable one give bit-identical results, and codes
/// do not depend on the machine.
fn project_atoms(d: &[f32], y: &[f64], x: &mut [f64]) {
    debug_assert_eq!(d.len(), x.len() * y.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above; `project_atoms_avx2` checks
            // the slice lengths it relies on.
            unsafe { project_atoms_avx2(d, y, x) };
            return;
        }
    }
    project_atoms_generic(d, y, x);
}

/// The AVX2 kernel, written with intrinsics. Left to itself LLVM vectorises the portable
/// kernel *across* atoms (two atoms per 128-bit register, with shuffles) and spills the
/// accumulators to the stack every iteration: 1.3 µs at n = 64. Here the eight partial sums
/// of an atom are two 256-bit registers (lanes 0–3 and 4–7), four atoms share each pair of y
/// loads, and the 8 accumulators stay in registers: 0.47 µs at n = 64 (BENCHMARKS.md). Each
/// 128-bit load of four f32 atom entries is widened to four f64 (`vcvtps2pd`, exact).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn project_atoms_avx2(d: &[f32], y: &[f64], x: &mut [f64]) {
    use std::arch::x86_64::{
        _mm256_add_pd, _mm256_cvtps_pd, _mm256_hadd_pd, _mm256_loadu_pd, _mm256_mul_pd,
        _mm256_permute2f128_pd, _mm256_setzero_pd, _mm256_storeu_pd, _mm_loadu_ps,
    };
    let n = y.len();
    assert_eq!(d.len(), x.len() * n, "dictionary must be n × atoms");
    let chunks = n / 8;
    let has_tail = n % 8 != 0;
    let blocks = x.len() / 4;
    let yp = y.as_ptr();
    for b in 0..blocks {
        // SAFETY (all pointer arithmetic below): atoms 4b..4b+4 are the 4n values from
        // d[4bn..], inside `d` by the length check above; every offset read is < 8·chunks ≤ n
        // within an atom and within y; x has 4·blocks ≤ x.len() entries.
        let p0 = d.as_ptr().add(4 * b * n);
        let (p1, p2, p3) = (p0.add(n), p0.add(2 * n), p0.add(3 * n));
        let mut acc = [_mm256_setzero_pd(); 8];
        for c in 0..chunks {
            let o = 8 * c;
            let lo = _mm256_loadu_pd(yp.add(o));
            let hi = _mm256_loadu_pd(yp.add(o + 4));
            for (a, p) in [p0, p1, p2, p3].into_iter().enumerate() {
                let pl = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p.add(o))), lo);
                let ph = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p.add(o + 4))), hi);
                acc[2 * a] = _mm256_add_pd(acc[2 * a], pl);
                acc[2 * a + 1] = _mm256_add_pd(acc[2 * a + 1], ph);
            }
        }
        // s_a = [s0+s4, s1+s5, s2+s6, s3+s7] of atom a; hadd pairs (s0+s4)+(s1+s5) and
        // (s2+s6)+(s3+s7) per 128-bit half; the last add joins the halves: `reduce`'s order.
        let s: [_; 4] = std::array::from_fn(|a| _mm256_add_pd(acc[2 * a], acc[2 * a + 1]));
        let t01 = _mm256_hadd_pd(s[0], s[1]);
        let t23 = _mm256_hadd_pd(s[2], s[3]);
        let first = _mm256_permute2f128_pd(t01, t23, 0x20);
        let second = _mm256_permute2f128_pd(t01, t23, 0x31);
        _mm256_storeu_pd(x.as_mut_ptr().add(4 * b), _mm256_add_pd(first, second));
        if has_tail {
            for a in 4 * b..4 * b + 4 {
                x[a] += tail_dot(&d[a * n..(a + 1) * n], y);
            }
        }
    }
    for (a, xo) in x.iter_mut().enumerate().skip(4 * blocks) {
        *xo = dot(&d[a * n..(a + 1) * n], y);
    }
}

/// The portable kernel (any target; also the order the AVX2 kernel must reproduce): four
/// atoms at a time against the same loads of y, eight accumulators per atom (a single running
/// sum is a serial dependency chain the compiler may not reorder), y read once per four atoms.
fn project_atoms_generic<T: Copy + Into<f64>>(d: &[T], y: &[f64], x: &mut [f64]) {
    let n = y.len();
    // Products past the last multiple of eight; skipped outright in the common n % 8 == 0
    // case (adding the empty sum 0.0 would change nothing).
    let has_tail = n % 8 != 0;
    let mut blocks = d.chunks_exact(4 * n);
    let mut xs = x.chunks_exact_mut(4);
    for (block, xb) in (&mut blocks).zip(&mut xs) {
        let (c0, rest) = block.split_at(n);
        let (c1, rest) = rest.split_at(n);
        let (c2, c3) = rest.split_at(n);
        let mut acc = [[0.0f64; 8]; 4];
        let chunks = y
            .chunks_exact(8)
            .zip(c0.chunks_exact(8))
            .zip(c1.chunks_exact(8))
            .zip(c2.chunks_exact(8))
            .zip(c3.chunks_exact(8));
        for ((((y8, a0), a1), a2), a3) in chunks {
            for l in 0..8 {
                acc[0][l] += a0[l].into() * y8[l];
                acc[1][l] += a1[l].into() * y8[l];
                acc[2][l] += a2[l].into() * y8[l];
                acc[3][l] += a3[l].into() * y8[l];
            }
        }
        for ((xo, acc), atom) in xb.iter_mut().zip(&acc).zip([c0, c1, c2, c3]) {
            *xo = reduce(acc);
            if has_tail {
                *xo += tail_dot(atom, y);
            }
        }
    }
    for (xo, atom) in xs
        .into_remainder()
        .iter_mut()
        .zip(blocks.remainder().chunks_exact(n))
    {
        *xo = dot(atom, y);
    }
}

/// Dot product with the same eight-accumulator order as the blocked kernel, so a
/// coefficient does not depend on which block its atom fell in. `a` is an f32 atom or an
/// f64 window; its entries are widened (exactly) before multiplying.
#[inline(always)]
fn dot<T: Copy + Into<f64>>(a: &[T], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    for (ac, bc) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let (ac, bc): (&[T; 8], &[f64; 8]) = (ac.try_into().unwrap(), bc.try_into().unwrap());
        for l in 0..8 {
            acc[l] += ac[l].into() * bc[l];
        }
    }
    let sum = reduce(&acc);
    if a.len() % 8 != 0 {
        sum + tail_dot(a, b)
    } else {
        sum
    }
}

/// The products past the last multiple of eight, summed in order.
#[inline(always)]
fn tail_dot<T: Copy + Into<f64>>(a: &[T], b: &[f64]) -> f64 {
    let full = a.len() - a.len() % 8;
    a[full..]
        .iter()
        .zip(&b[full..])
        .map(|(&x, y)| x.into() * y)
        .sum()
}

#[inline(always)]
fn reduce(acc: &[f64; 8]) -> f64 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed orthogonal matrix (the QR of a deterministic, well-conditioned matrix), stored
    /// as f32 like the learner's dictionary: orthogonal to f32 precision only.
    fn rotation(n: usize) -> DMatrix<f32> {
        DMatrix::<f64>::from_fn(n, n, |i, j| {
            ((i * 31 + j * 17) % 13) as f64 + (i == j) as u8 as f64 * 20.0
        })
        .qr()
        .q()
        .map(|v| v as f32)
    }

    /// Tolerance for identities that hold for an exactly orthogonal D (coefficients of
    /// y = D·x, residual = missed energy): D rounded to f32 is orthogonal to ~√n·6e-8.
    const F32_ORTHO_TOL: f64 = 1e-6;

    #[test]
    fn top_k_keeps_the_largest_in_order_and_residual_matches_reconstruction() {
        let n = 12;
        let d = rotation(n);
        let d64 = d.map(f64::from);
        let x: Vec<f64> = (0..n)
            .map(|i| (((i * 5) % 12) as f64 - 5.5) * 1.5)
            .collect();
        let y = &d64 * nalgebra::DVector::from_column_slice(&x);
        let mut code = SparseCode::new(n);
        encode_top_k(&d, 7, y.as_slice(), 4, &mut code);
        assert_eq!(code.k(), 4);
        assert_eq!(code.version(), 7);
        // Exact for the stored dictionary (f64 arithmetic on the widened f32 entries) …
        let exact = d64.transpose() * &y;
        for (c, e) in code.coefficients().iter().zip(exact.iter()) {
            assert!((c - e).abs() < 1e-12);
        }
        // … and the true coefficients up to the dictionary's f32 orthogonality.
        for (c, e) in code.coefficients().iter().zip(&x) {
            assert!((c - e).abs() < F32_ORTHO_TOL * 10.0, "{c} vs {e}");
        }
        let mags: Vec<f64> = code.values().iter().map(|v| v.abs()).collect();
        assert!(mags.windows(2).all(|w| w[0] >= w[1]), "{mags:?}");
        let mut sorted: Vec<f64> = x.iter().map(|v| v.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (m, s) in mags.iter().zip(&sorted[..4]) {
            assert!(
                (m - s).abs() < F32_ORTHO_TOL * 10.0,
                "{mags:?} vs {sorted:?}"
            );
        }
        let mut y_hat = vec![0.0; n];
        code.reconstruct(&d, &mut y_hat);
        let res: f64 = y.iter().zip(&y_hat).map(|(a, b)| (a - b) * (a - b)).sum();
        assert!((res / y.norm_squared() - code.residual()).abs() < F32_ORTHO_TOL);
    }

    #[test]
    fn zero_window_and_edge_k() {
        let n = 5;
        let d = rotation(n);
        let mut code = SparseCode::new(n);
        encode_top_k(&d, 0, &[0.0; 5], 3, &mut code);
        assert_eq!((code.residual(), code.energy(), code.k()), (0.0, 0.0, 3));
        encode_top_k(&d, 0, &[1.0, 2.0, 3.0, 4.0, 5.0], 0, &mut code);
        assert_eq!((code.k(), code.residual()), (0, 1.0));
        encode_top_k(&d, 0, &[1.0, 2.0, 3.0, 4.0, 5.0], 99, &mut code);
        assert_eq!(code.k(), 5);
        assert!(code.residual() < F32_ORTHO_TOL);
    }

    /// The summation order every kernel promises (see `project_atoms`), written out with
    /// scalars: the slow, obviously correct definition of a coefficient's bits.
    fn reference_coefficient(atom: &[f32], y: &[f64]) -> f64 {
        let n = y.len();
        let full = n - n % 8;
        let mut lane = [0.0f64; 8];
        for (l, s) in lane.iter_mut().enumerate() {
            let mut i = l;
            while i < full {
                *s += f64::from(atom[i]) * y[i];
                i += 8;
            }
        }
        let mut sum = ((lane[0] + lane[4]) + (lane[1] + lane[5]))
            + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
        if full < n {
            let mut tail = 0.0;
            for i in full..n {
                tail += f64::from(atom[i]) * y[i];
            }
            sum += tail;
        }
        sum
    }

    /// The SIMD-dispatched projection is bit-identical to the portable one and to the scalar
    /// reference (same additions in the same order, no FMA), for sizes with and without a
    /// tail and a partial block of atoms, and close to the naive sum.
    #[test]
    fn dispatched_projection_is_bit_identical() {
        for n in [1, 3, 4, 7, 8, 9, 13, 16, 37, 64, 65, 128] {
            let d: Vec<f32> = (0..n * n)
                .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5)
                .collect();
            let y: Vec<f64> = (0..n).map(|i| ((i * 31) % 17) as f64 / 3.0 - 2.7).collect();
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            project_atoms(&d, &y, &mut a);
            project_atoms_generic(&d, &y, &mut b);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut c = vec![0.0; n];
                // SAFETY: AVX2 checked just above.
                unsafe { project_atoms_avx2(&d, &y, &mut c) };
                assert!(
                    c.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "avx2 n={n}"
                );
            }
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "n={n}"
            );
            for (i, x) in a.iter().enumerate() {
                let atom = &d[i * n..(i + 1) * n];
                let reference = reference_coefficient(atom, &y);
                assert_eq!(x.to_bits(), reference.to_bits(), "n={n} atom {i}");
                let naive: f64 = (0..n).map(|k| f64::from(atom[k]) * y[k]).sum();
                assert!((x - naive).abs() < 1e-12, "n={n} atom {i}");
            }
        }
    }

    /// Random inputs over the sizes the benchmarks and deployments use: the fast path equals
    /// the reference bit for bit.
    #[test]
    fn fast_path_matches_reference_on_random_inputs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0xC0DE);
        for n in [16, 24, 32, 48, 64, 96, 128] {
            for _ in 0..8 {
                let d: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let y: Vec<f64> = (0..n).map(|_| rng.random_range(-1e3..1e3)).collect();
                let mut x = vec![0.0; n];
                project_atoms(&d, &y, &mut x);
                for (i, v) in x.iter().enumerate() {
                    let r = reference_coefficient(&d[i * n..(i + 1) * n], &y);
                    assert_eq!(v.to_bits(), r.to_bits(), "n={n} atom {i}");
                }
            }
        }
    }

    #[test]
    fn threshold_keeps_exactly_the_large_coefficients() {
        let n = 8;
        let d = DMatrix::<f32>::identity(n, n);
        let y = [0.1, -2.0, 0.5, 3.0, -0.4, 0.0, 1.0, -1.0];
        let mut code = SparseCode::new(n);
        encode_threshold(&d, 1, &y, 0.5, &mut code);
        assert_eq!(code.indices(), &[3, 1, 6, 7, 2]);
        assert_eq!(code.values(), &[3.0, -2.0, 1.0, -1.0, 0.5]);
        let missed = 0.1f64 * 0.1 + 0.4 * 0.4;
        assert!((code.residual() - missed / code.energy()).abs() < 1e-15);
    }
}
