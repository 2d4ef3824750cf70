//! Criterion benchmarks of the associative memory's hot path, per window, at the spec's
//! working size N = 1024 input bits, s = 32 active, Q = 32 modules, K = 16 cells (§6 table):
//!
//! - `memory/recognize`: recognize mode (u for all 512 cells, G, argmax, x̂ and R, best match).
//! - `memory/recognize_learn`: recognize then learn (sample, write to both banks, index).
//! - `memory/recognize_learn_familiar`: the same on inputs already stored (the common case on
//!   a repetitive stream: the write sets no new weight, the index only refreshes).
//! - `memory/*_temporal`: the two learn cases with the temporal context on
//!   ([`MemoryParams::temporal`]): h from the previous code's W_H rows, V = U·H, W_H writes.
//! - `encode/atom_slot`, `encode/projection`: a k = 8 sparse code over n = 64 atoms → x.
//! - `gated/baseline`, `gated/gated`: one window (32 samples, 1 channel) scored and learned by
//!   the baseline scorer alone and by the gated detector (the baseline, its features' z-scores,
//!   the state's encoding, recognition in the channel's memory, and learning the rare
//!   windows), on a stream of noise with a burst every 50 windows.
//!
//! Memories are pre-filled with 60 distinct items outside the timed closure (p1 ≈ 0.1 of the
//! scoring bank, past the younger bank's start, so both banks are written). Inputs are
//! seeded and cycled. Results: docs/bench-memory.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use sparsewatch_dsp::memory::bitset::{set_bit, words_for};
use sparsewatch_dsp::memory::encoder::{CodeInput, EncoderParams, ProjectionParams, SdrEncoder};
use sparsewatch_dsp::memory::{MemoryParams, SdrMemory};

const SEED: u64 = 0x0BE7_C3E3;
const N: usize = 1024;
const S: usize = 32;
const INPUTS: usize = 4096;

fn inputs(rng: &mut Xoshiro256PlusPlus, count: usize) -> Vec<Vec<u64>> {
    (0..count)
        .map(|_| {
            let mut x = vec![0u64; words_for(N)];
            for j in sample(rng, N, S) {
                set_bit(&mut x, j);
            }
            x
        })
        .collect()
}

fn filled(rng: &mut Xoshiro256PlusPlus, temporal: bool) -> (SdrMemory, Vec<Vec<u64>>) {
    let params = MemoryParams {
        temporal,
        ..MemoryParams::default()
    };
    let mut mem = SdrMemory::new(params, N, S);
    let stored = inputs(rng, 60);
    let mut recall = mem.new_recall();
    for x in &stored {
        mem.recognize(x, &mut recall);
        mem.learn(x, &recall);
    }
    (mem, stored)
}

fn memory(c: &mut Criterion) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED);
    let (base, stored) = filled(&mut rng.clone(), false);
    let (temporal, _) = filled(&mut rng, true);
    let fresh = inputs(&mut rng, INPUTS);
    eprintln!(
        "memory per stream: {} bytes allocated after 60 items, {} once both banks are (p1 {:.3})",
        base.memory_bytes(),
        base.memory_bytes_full(),
        base.fill()
    );
    eprintln!(
        "with temporal context: {} bytes allocated, {} in all (p1 {:.3}, W_H {:.3})",
        temporal.memory_bytes(),
        temporal.memory_bytes_full(),
        temporal.fill(),
        temporal.temporal_fill().unwrap_or(0.0)
    );
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));

    let mut mem = base.clone();
    let mut recall = mem.new_recall();
    let mut i = 0;
    group.bench_function("recognize", |b| {
        b.iter(|| {
            i = (i + 1) % INPUTS;
            mem.recognize(std::hint::black_box(&fresh[i]), &mut recall);
            recall.familiarity
        })
    });

    // Novel inputs, learned: the fill grows and banks rotate during the run, as on a stream
    // with a steady supply of new states (the worst case).
    let mut mem = base.clone();
    group.bench_function("recognize_learn", |b| {
        b.iter(|| {
            i = (i + 1) % INPUTS;
            let x = std::hint::black_box(&fresh[i]);
            mem.recognize(x, &mut recall);
            mem.learn(x, &recall)
        })
    });

    let mut mem = base.clone();
    group.bench_function("recognize_learn_familiar", |b| {
        b.iter(|| {
            i = (i + 1) % stored.len();
            let x = std::hint::black_box(&stored[i]);
            mem.recognize(x, &mut recall);
            mem.learn(x, &recall)
        })
    });

    let mut mem = temporal.clone();
    group.bench_function("recognize_learn_temporal", |b| {
        b.iter(|| {
            i = (i + 1) % INPUTS;
            let x = std::hint::black_box(&fresh[i]);
            mem.recognize(x, &mut recall);
            mem.learn(x, &recall)
        })
    });

    let mut mem = temporal.clone();
    group.bench_function("recognize_learn_familiar_temporal", |b| {
        b.iter(|| {
            i = (i + 1) % stored.len();
            let x = std::hint::black_box(&stored[i]);
            mem.recognize(x, &mut recall);
            mem.learn(x, &recall)
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED ^ 1);
    let codes: Vec<(Vec<usize>, Vec<f64>)> = (0..256)
        .map(|_| {
            let idx = sample(&mut rng, 64, 8).into_vec();
            let vals = (0..8).map(|_| rng.random_range(-1.0..1.0)).collect();
            (idx, vals)
        })
        .collect();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for (name, params) in [
        ("atom_slot", EncoderParams::default()),
        (
            "projection",
            EncoderParams::Projection(ProjectionParams::default()),
        ),
    ] {
        let mut enc = SdrEncoder::new(params, 64);
        let mut x = vec![0u64; words_for(enc.input_bits())];
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % codes.len();
                let (idx, vals) = &codes[i];
                let code = CodeInput {
                    indices: idx,
                    values: vals,
                    energy: 2.0,
                    level: 0.1,
                };
                enc.encode(std::hint::black_box(&code), &mut x)
            })
        });
    }
    group.finish();
}

fn gated(c: &mut Criterion) {
    use sparsewatch_dsp::score::{BaselineParams, BaselineScorer, GatedParams, GatedScorer};
    use sparsewatch_dsp::window::WindowView;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED ^ 2);
    let windows: Vec<Vec<f64>> = (0..1000)
        .map(|i| {
            (0..32)
                .map(|j| {
                    let v = 1.0 + 0.1 * rng.random_range(-1.0..1.0);
                    if i % 50 == 0 && j >= 28 {
                        v * 300.0
                    } else {
                        v
                    }
                })
                .collect()
        })
        .collect();
    fn view(values: &[f64]) -> WindowView<'_> {
        WindowView {
            start_ms: 0,
            end_ms: 0,
            len: 32,
            channels: 1,
            values,
        }
    }
    let mut group = c.benchmark_group("gated");
    group.throughput(Throughput::Elements(1));
    let mut baseline = BaselineScorer::new(BaselineParams::default(), 1);
    let mut gated = GatedScorer::new(GatedParams::default(), BaselineParams::default(), 1);
    for w in &windows[..300] {
        baseline.score(&view(w));
        baseline.learn();
        gated.score(&view(w), false);
        gated.learn(false);
    }
    let mut i = 0;
    group.bench_function("baseline", |b| {
        b.iter(|| {
            i = (i + 1) % windows.len();
            let s = baseline.score(std::hint::black_box(&view(&windows[i])));
            baseline.learn();
            s.score
        })
    });
    let mut i = 0;
    group.bench_function("gated", |b| {
        b.iter(|| {
            i = (i + 1) % windows.len();
            let s = gated.score(std::hint::black_box(&view(&windows[i])), false);
            gated.learn(false);
            s.score
        })
    });
    group.finish();
}

criterion_group!(benches, memory, encode, gated);
criterion_main!(benches);
