//! Criterion benchmarks of the dictionary hot paths, per window, for n ∈ {16, 32, 64, 128}:
//!
//! - `coding/top8`: x = Dᵀ·y plus top-8 selection and residual (one window).
//! - `learning/<polar>`: one full minibatch of b = n windows, i.e. n calls of `learn_with` of
//!   which the last runs the Frank–Wolfe step in a reserved scratch, as a daemon worker does;
//!   reported per window (`Throughput::Elements(n)`).
//!   `newton_schulz` is the default polar method, `svd` the alternative it replaced.
//!
//! Inputs are seeded sparse synthetic windows (spec data model, θ = 0.3); learners are warmed
//! up for 50 steps outside the timed closure so the step is timed in its steady regime.
//! Results: docs/bench-dictionary.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use sparsewatch_dsp::coding::SparseCode;
use sparsewatch_dsp::dictionary::{DictionaryParams, LearnScratch, OrthoDictionary, PolarMethod};

const SIZES: [usize; 4] = [16, 32, 64, 128];
const SEED: u64 = 0xBE7C;

/// `count` windows y = D_o·x with Bernoulli(0.3)–Gaussian x, as columns.
fn windows(n: usize, count: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED ^ seed);
    let truth = DMatrix::<f64>::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng))
        .qr()
        .q();
    let codes = DMatrix::<f64>::from_fn(n, count, |_, _| {
        let g: f64 = StandardNormal.sample(&mut rng);
        if rng.random::<f64>() < 0.3 {
            g
        } else {
            0.0
        }
    });
    truth * codes
}

fn warmed_up(n: usize, polar: PolarMethod) -> OrthoDictionary {
    let params = DictionaryParams {
        polar,
        ..DictionaryParams::default()
    };
    let mut learner = OrthoDictionary::new(params, n);
    learner.learn_batch(&windows(n, 50 * n, 1));
    learner
}

fn coding(c: &mut Criterion) {
    let mut group = c.benchmark_group("coding/top8");
    for n in SIZES {
        let learner = warmed_up(n, PolarMethod::NewtonSchulz);
        let ys = windows(n, 64, 2);
        let mut code = SparseCode::new(n);
        let mut i = 0;
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                let y = &ys.as_slice()[i * n..(i + 1) * n];
                i = (i + 1) % 64;
                learner.code(std::hint::black_box(y), 8, &mut code);
                code.residual()
            })
        });
    }
    group.finish();
}

fn learning(c: &mut Criterion) {
    for (name, polar) in [
        ("learning/newton_schulz", PolarMethod::NewtonSchulz),
        ("learning/svd", PolarMethod::Svd),
    ] {
        let mut group = c.benchmark_group(name);
        for n in SIZES {
            let mut learner = warmed_up(n, polar);
            let mut scratch = LearnScratch::new();
            scratch.reserve(&learner);
            // 16 minibatches cycled, so the data stay in cache like a live window would.
            let ys = windows(n, 16 * n, 3);
            let mut batch = 0;
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
                b.iter(|| {
                    let chunk = &ys.as_slice()[batch * n * n..(batch + 1) * n * n];
                    batch = (batch + 1) % 16;
                    for y in chunk.chunks_exact(n) {
                        learner.learn_with(std::hint::black_box(y), &mut scratch);
                    }
                    learner.version()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, coding, learning);
criterion_main!(benches);
