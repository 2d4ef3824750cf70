//! Polar factor polar(M) = U·Vᵀ three ways, on the two kinds of matrix a learning step
//! factors: the linear oracle's input (the running gradient, a general matrix; Gaussian here)
//! and the projection's input (1 − γ)·A + γ·S of two orthogonal matrices (near-orthogonal).
//!
//! - `newton-schulz`: the learner's default (`dictionary::polar`), matrix products only;
//! - `nalgebra-svd`: nalgebra's SVD, the learner's fallback;
//! - `faer-svd`: faer's thin SVD (single-threaded), the alternative the spec names.
//!
//! Prints, per n ∈ {16, 32, 64, 128}, the median time of one polar factor (one core) and its
//! accuracy: ‖PᵀP − I‖_F and the distance to the other methods' factor.
//!
//! ```sh
//! cargo run --release -p sparsewatch-dsp --features faer --example polar
//! ```
//! Results and the choice: docs/bench-dictionary.md, "Polar factor".

use std::hint::black_box;
use std::time::Instant;

use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use sparsewatch_dsp::dictionary::polar_routines::{polar_svd, NewtonSchulz};

const SIZES: [usize; 4] = [16, 32, 64, 128];
const SEED: u64 = 0x9017;
/// Timed batches per method; the median batch is reported.
const BATCHES: usize = 9;

fn gaussian(n: usize, rng: &mut Xoshiro256PlusPlus) -> DMatrix<f64> {
    DMatrix::from_fn(n, n, |_, _| StandardNormal.sample(rng))
}

fn orthogonal(n: usize, rng: &mut Xoshiro256PlusPlus) -> DMatrix<f64> {
    gaussian(n, rng).qr().q()
}

fn polar_faer(x: &mut DMatrix<f64>) -> bool {
    let n = x.nrows();
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| x[(i, j)]);
    let Ok(svd) = m.thin_svd() else {
        return false;
    };
    let p = svd.U() * svd.V().transpose();
    for j in 0..n {
        for i in 0..n {
            x[(i, j)] = p[(i, j)];
        }
    }
    true
}

/// ‖PᵀP − I‖_F.
fn orthogonality(p: &DMatrix<f64>) -> f64 {
    (p.transpose() * p - DMatrix::identity(p.nrows(), p.ncols())).norm()
}

/// Median seconds per call of `polar` on a copy of `input`.
fn time(input: &DMatrix<f64>, reps: usize, mut polar: impl FnMut(&mut DMatrix<f64>)) -> f64 {
    let mut x = input.clone();
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                x.copy_from(input);
                polar(black_box(&mut x));
            }
            start.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

fn main() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED);
    println!(
        "{:>4}  {:<10} {:<14} {:>10} {:>12} {:>14} {:>14}",
        "n", "input", "method", "µs/polar", "‖PᵀP−I‖_F", "vs nalgebra", "vs faer"
    );
    for n in SIZES {
        let gamma = 0.1;
        let (a, s) = (orthogonal(n, &mut rng), orthogonal(n, &mut rng));
        let inputs = [
            ("gradient", gaussian(n, &mut rng)),
            ("projection", a * (1.0 - gamma) + s * gamma),
        ];
        // About 0.2 s per method and input at the rates measured.
        let reps = (4_000_000 / (n * n * n)).max(8);
        let mut ns = NewtonSchulz::new(n);
        for (kind, input) in &inputs {
            let mut p_ns = input.clone();
            let iters = ns.polar(&mut p_ns).expect("full-rank input converges");
            let mut p_na = input.clone();
            assert!(polar_svd(&mut p_na));
            let mut p_fa = input.clone();
            assert!(polar_faer(&mut p_fa));
            let t_ns = time(input, reps, |x| {
                ns.polar(x);
            });
            let t_na = time(input, reps, |x| {
                polar_svd(x);
            });
            let t_fa = time(input, reps, |x| {
                polar_faer(x);
            });
            let rows = [
                (format!("newton-schulz ({iters} it)"), t_ns, &p_ns),
                ("nalgebra-svd".to_string(), t_na, &p_na),
                ("faer-svd".to_string(), t_fa, &p_fa),
            ];
            for (method, t, p) in rows {
                println!(
                    "{n:>4}  {kind:<10} {method:<14} {:>10.2} {:>12.1e} {:>14.1e} {:>14.1e}",
                    t * 1e6,
                    orthogonality(p),
                    (p - &p_na).norm(),
                    (p - &p_fa).norm(),
                );
            }
        }
    }
}
