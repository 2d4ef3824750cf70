//! Integration tests of the associative memory against the spec's numbers
//! (`sdr-associative-memory.md` §2 [SIM], §3c table) and against a slow reference.
//!
//! One seed constant; inputs are random s-of-N bit sets. Tolerances are loose where the spec's
//! numbers are Monte-Carlo estimates over a different random stream.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use sparsewatch_dsp::memory::bitset::{get_bit, set_bit, words_for};
use sparsewatch_dsp::memory::encoder::{AtomSlotParams, CodeInput, EncoderParams, SdrEncoder};
use sparsewatch_dsp::memory::{Learned, MemoryParams, Recall, SaturationPolicy, SdrMemory};

const SEED: u64 = 0x5A_11CE;

fn rng(stream: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(SEED ^ stream)
}

/// A random input with `s` of `n` bits set.
fn random_input(rng: &mut Xoshiro256PlusPlus, n: usize, s: usize) -> Vec<u64> {
    let mut x = vec![0u64; words_for(n)];
    for j in sample(rng, n, s) {
        set_bit(&mut x, j);
    }
    x
}

/// Keeps round(o·s) of `x`'s bits and replaces the rest with bits outside x.
fn probe(rng: &mut Xoshiro256PlusPlus, x: &[u64], n: usize, o: f64) -> Vec<u64> {
    let ones: Vec<usize> = (0..n).filter(|&j| get_bit(x, j)).collect();
    let keep = (o * ones.len() as f64).round() as usize;
    let mut p = vec![0u64; x.len()];
    for i in sample(rng, ones.len(), keep) {
        set_bit(&mut p, ones[i]);
    }
    let mut added = keep;
    while added < ones.len() {
        let j = rng.random_range(0..n);
        if !get_bit(x, j) && !get_bit(&p, j) {
            set_bit(&mut p, j);
            added += 1;
        }
    }
    p
}

fn params(modules: usize, cells: usize, policy: SaturationPolicy) -> MemoryParams {
    MemoryParams {
        modules,
        cells,
        policy,
        ..MemoryParams::default()
    }
}

fn shared(a: &[u16], b: &[u16]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

/// Learns `items` (recognize first, as the pipeline does) and returns their codes.
fn store_all(mem: &mut SdrMemory, items: &[Vec<u64>]) -> Vec<Vec<u16>> {
    let mut recall = mem.new_recall();
    items
        .iter()
        .map(|x| {
            mem.recognize(x, &mut recall);
            assert!(matches!(mem.learn(x, &recall), Learned::Stored { .. }));
            mem.learned_code().to_vec()
        })
        .collect()
}

/// SISC (spec §2 [SIM], G⁻ = 0.5, N = 1024, s = 32, Q = 32, K = 16, 100 background items):
/// the code learning would give a probe sharing a fraction o of a stored input's bits
/// overlaps that input's code more as o grows: ≈ chance (1/K) at o = 0.3, ≥ 0.9 at o = 1.
/// Spec: 0.05/0.19/0.75/0.91/0.97 for o = 0.3/0.5/0.7/0.8/1.0 (ours gives exactly 1 at
/// o = 1, since an input with G = 1 keeps its stored code instead of being resampled).
#[test]
fn similar_inputs_get_similar_codes() {
    let (n, s) = (1024, 32);
    let mut r = rng(1);
    let mut mem = SdrMemory::new(params(32, 16, SaturationPolicy::Unbounded), n, s);
    let items: Vec<Vec<u64>> = (0..100).map(|_| random_input(&mut r, n, s)).collect();
    let codes = store_all(&mut mem, &items);
    let spec = [
        (0.3, 0.05),
        (0.5, 0.19),
        (0.7, 0.75),
        (0.8, 0.91),
        (1.0, 0.97),
    ];
    let mut recall = mem.new_recall();
    let mut measured = Vec::new();
    for (o, expected) in spec {
        let mut total = 0.0;
        let trials = 60;
        for t in 0..trials {
            let target = t % items.len();
            let p = probe(&mut r, &items[target], n, o);
            mem.recognize(&p, &mut recall);
            let code = mem.sample_code(&p, &recall).unwrap();
            total += shared(code, &codes[target]) as f64 / 32.0;
        }
        let got = total / trials as f64;
        measured.push(got);
        assert!(
            (got - expected).abs() < 0.12,
            "o = {o}: overlap {got}, spec {expected}"
        );
    }
    eprintln!("SISC overlaps {measured:?}");
    assert!(measured.windows(2).all(|w| w[0] <= w[1] + 0.02), "monotone");
    assert!(measured[0] < 0.15 && measured[4] >= 0.9);
}

/// Stored inputs are fully familiar (G = 1, R = 1, best match = themselves); never-seen ones
/// are novel at low fill; a strict subset of a stored input has G = 1 but a low R, so only the
/// two-sided score sees it.
#[test]
fn stored_is_familiar_novel_is_not_subset_is_two_sided() {
    let (n, s) = (1024, 32);
    let mut r = rng(2);
    let mut mem = SdrMemory::new(params(32, 16, SaturationPolicy::Unbounded), n, s);
    let items: Vec<Vec<u64>> = (0..100).map(|_| random_input(&mut r, n, s)).collect();
    let codes = store_all(&mut mem, &items);
    assert_eq!(mem.stored_codes(), 100);
    let mut recall = mem.new_recall();
    for (i, x) in items.iter().enumerate().step_by(7) {
        mem.recognize(x, &mut recall);
        assert_eq!(recall.familiarity, 1.0);
        assert_eq!(recall.precision, 1.0);
        assert_eq!(recall.code, codes[i], "recognize returns the stored code");
        let m = recall.best_match.unwrap();
        assert_eq!((m.item, m.overlap), (i as u64, 1.0));
    }
    let (mut g_novel, mut match_novel) = (0.0, 0.0);
    for _ in 0..50 {
        mem.recognize(&random_input(&mut r, n, s), &mut recall);
        g_novel += recall.familiarity / 50.0;
        match_novel += recall.best_match.map_or(0.0, |m| m.overlap) / 50.0;
    }
    eprintln!("novel: G {g_novel:.3}, best-match overlap {match_novel:.3}");
    assert!(g_novel < 0.6, "G_novel = {g_novel} at p1 = {}", mem.fill());
    // c* of a novel input leans towards the stored item sharing the most bits with it, so
    // its best match is above chance (1/K), but far from a stored input's 1.
    assert!(match_novel < 0.6);
    // Half of item 0's bits: V = 1 for its cells, but the recalled x̂ has twice the bits.
    let mut half = items[0].clone();
    let mut dropped = 0;
    for j in 0..n {
        if get_bit(&half, j) && dropped < s / 2 {
            half[j / 64] &= !(1 << (j % 64));
            dropped += 1;
        }
    }
    mem.recognize(&half, &mut recall);
    assert_eq!(recall.familiarity, 1.0);
    assert!((recall.precision - 0.5).abs() < 0.05);
    assert!(recall.novelty() == 0.0 && recall.two_sided_novelty() > 0.45);
}

/// G_novel over 200 random probes, as the spec's table measures it.
fn g_novel(mem: &mut SdrMemory, r: &mut Xoshiro256PlusPlus, n: usize, s: usize) -> f64 {
    let mut recall = mem.new_recall();
    (0..200)
        .map(|_| {
            mem.recognize(&random_input(r, n, s), &mut recall);
            recall.familiarity
        })
        .sum::<f64>()
        / 200.0
}

/// Capacity and fill (spec §3c table, G⁻ = 0.5, N = 512, s = 32, Q = 16, K = 16):
/// p1 ≈ 1 − exp(−M·s/(N·K)) and G_novel 0.43 / 0.53 / 0.90 at M = 57 / 91 / 177.
#[test]
fn fill_and_novel_familiarity_follow_the_table() {
    let (n, s) = (512, 32);
    let mut r = rng(3);
    let mut mem = SdrMemory::new(params(16, 16, SaturationPolicy::Unbounded), n, s);
    let mut stored = 0;
    let mut last = 0.0;
    for (m, p1_spec, g_spec) in [(57, 0.20, 0.43), (91, 0.30, 0.53), (177, 0.44, 0.90)] {
        let items: Vec<Vec<u64>> = (stored..m).map(|_| random_input(&mut r, n, s)).collect();
        store_all(&mut mem, &items);
        stored = m;
        let model = 1.0 - (-(m as f64) * s as f64 / (n as f64 * 16.0)).exp();
        let g = g_novel(&mut mem, &mut r, n, s);
        eprintln!(
            "M = {m}: p1 {:.3} (model {model:.3}), G_novel {g:.3}",
            mem.fill()
        );
        assert!((mem.fill() - p1_spec).abs() < 0.04, "p1 {}", mem.fill());
        if m < 177 {
            assert!((mem.fill() - model).abs() < 0.03);
        }
        assert!(
            (g - g_spec).abs() < 0.08,
            "M = {m}: G_novel {g}, spec {g_spec}"
        );
        assert!(g > last);
        last = g;
    }
}

/// Rotation keeps the scoring bank under max_fill and G_novel low after storing ten times the
/// distinct-state budget (≈ 0.35·N·K/s = 90), while recent items stay familiar. Without it
/// everything looks familiar.
#[test]
fn rotation_keeps_novel_inputs_novel() {
    let (n, s) = (512, 32);
    let mut r = rng(4);
    let items: Vec<Vec<u64>> = (0..900).map(|_| random_input(&mut r, n, s)).collect();
    let mut rotating = SdrMemory::new(params(16, 16, SaturationPolicy::Rotate), n, s);
    let mut unbounded = SdrMemory::new(params(16, 16, SaturationPolicy::Unbounded), n, s);
    let mut recall = rotating.new_recall();
    let mut rotations = 0;
    for x in &items {
        rotating.recognize(x, &mut recall);
        if let Learned::Stored { rotated: true, .. } = rotating.learn(x, &recall) {
            rotations += 1;
        }
        assert!(rotating.fill() < 0.3 + 0.02);
    }
    store_all(&mut unbounded, &items);
    let (g_rot, g_unb) = (
        g_novel(&mut rotating, &mut r, n, s),
        g_novel(&mut unbounded, &mut r, n, s),
    );
    eprintln!("rotations {rotations}, G_novel rotate {g_rot:.3}, unbounded {g_unb:.3}");
    assert!(rotations >= 8, "{rotations} rotations");
    assert!(g_rot < 0.6 && g_unb > 0.95);
    for x in &items[items.len() - 30..] {
        rotating.recognize(x, &mut recall);
        assert_eq!(recall.familiarity, 1.0, "recent items stay familiar");
        assert_eq!(recall.best_match.unwrap().overlap, 1.0);
    }
    assert!(rotating.stored_codes() >= 30 && rotating.stored_codes() <= 120);
}

/// Re-learning stored inputs writes nothing and adds no code: repeats cost nothing.
#[test]
fn repeats_are_free() {
    let (n, s) = (1024, 32);
    let mut r = rng(10);
    let mut mem = SdrMemory::new(MemoryParams::default(), n, s);
    let items: Vec<Vec<u64>> = (0..60).map(|_| random_input(&mut r, n, s)).collect();
    store_all(&mut mem, &items);
    let (fill, codes) = (mem.fill(), mem.stored_codes());
    let mut recall = mem.new_recall();
    for x in items.iter().cycle().take(600) {
        mem.recognize(x, &mut recall);
        let learned = mem.learn(x, &recall);
        assert!(matches!(
            learned,
            Learned::Stored {
                new_weights: 0,
                new_code: false,
                ..
            }
        ));
    }
    assert_eq!((mem.fill(), mem.stored_codes()), (fill, codes));
}

/// Freeze stops learning at max_fill.
#[test]
fn freeze_stops_learning_when_full() {
    let (n, s) = (512, 32);
    let mut r = rng(5);
    let mut mem = SdrMemory::new(params(16, 16, SaturationPolicy::Freeze), n, s);
    let mut recall = mem.new_recall();
    let mut frozen = 0;
    for _ in 0..200 {
        let x = random_input(&mut r, n, s);
        mem.recognize(&x, &mut recall);
        if mem.learn(&x, &recall) == Learned::Frozen {
            frozen += 1;
        }
    }
    assert!(
        frozen > 80 && mem.fill() < 0.32,
        "{frozen} frozen, p1 {}",
        mem.fill()
    );
}

/// Inputs outside the band get no code and are not learned.
#[test]
fn out_of_band_inputs_are_reported() {
    let mut mem = SdrMemory::new(MemoryParams::default(), 1024, 32);
    assert_eq!(mem.band(), (16, 48));
    let mut recall = mem.new_recall();
    let mut r = rng(6);
    for (s, coded) in [(0, false), (15, false), (16, true), (48, true), (49, false)] {
        let x = random_input(&mut r, 1024, s);
        mem.recognize(&x, &mut recall);
        assert_eq!(recall.is_coded(), coded, "π = {s}");
        if !coded {
            assert_eq!(recall.novelty(), 1.0);
            assert_eq!(mem.learn(&x, &recall), Learned::OutOfBand);
        }
    }
}

/// Same seed, same inputs → identical outputs; a serde round trip mid-stream continues
/// exactly like the original.
#[test]
fn deterministic_and_serde_round_trip() {
    let (n, s) = (1024, 32);
    let mut r = rng(7);
    let items: Vec<Vec<u64>> = (0..120).map(|_| random_input(&mut r, n, s)).collect();
    // Repeats and near-repeats, so ties and familiar codes are exercised too.
    let stream: Vec<&Vec<u64>> = (0..300).map(|i| &items[(i * 7) % 120]).collect();
    let run = |mem: &mut SdrMemory, from: usize, to: usize| -> Vec<(Recall, Learned)> {
        let mut recall = mem.new_recall();
        stream[from..to]
            .iter()
            .map(|x| {
                mem.recognize(x, &mut recall);
                let l = mem.learn(x, &recall);
                (recall.clone(), l)
            })
            .collect()
    };
    let mut a = SdrMemory::new(params(32, 16, SaturationPolicy::Rotate), n, s);
    let mut b = a.clone();
    let first = run(&mut a, 0, 150);
    assert_eq!(first, run(&mut b, 0, 150));
    let json = serde_json::to_string(&a).unwrap();
    let mut c: SdrMemory = serde_json::from_str(&json).unwrap();
    assert_eq!(c, a);
    assert_eq!(run(&mut a, 150, 300), run(&mut c, 150, 300));
}

/// A memory holds no weights and no index until it first learns: a fresh one is small, says
/// every input is novel, and round-trips; the first write allocates the scoring bank (and
/// the index) but not the younger bank, which waits for the older's half life; a state
/// that held nothing comes back unallocated however it was written.
#[test]
fn weights_are_allocated_at_the_first_write() {
    let (n, s) = (1024, 32);
    let mut r = rng(9);
    let mut mem = SdrMemory::new(params(32, 16, SaturationPolicy::Rotate), n, s);
    let (fresh, full) = (mem.memory_bytes(), mem.memory_bytes_full());
    // Two banks of U and its transpose (2 × 2 × 64 KiB) and the index dominate `full`.
    assert!(fresh < 8 * 1024, "fresh memory {fresh} B");
    assert!(full > 256 * 1024, "full memory {full} B");
    let x = random_input(&mut r, n, s);
    let mut recall = mem.new_recall();
    mem.recognize(&x, &mut recall);
    assert!(recall.is_coded());
    assert_eq!((recall.familiarity, recall.precision), (0.0, 0.0));
    assert_eq!(recall.novelty(), 1.0);
    assert!(recall.best_match.is_none());
    let json = serde_json::to_string(&mem).unwrap();
    let back: SdrMemory = serde_json::from_str(&json).unwrap();
    assert_eq!(back, mem);
    // (Less: the hot path's buffers are not state and are sized again on first use.)
    assert!(back.memory_bytes() <= fresh);

    assert!(matches!(mem.learn(&x, &recall), Learned::Stored { .. }));
    let one_bank = mem.memory_bytes();
    // All but the younger bank: its rows and their transpose, 2 × 512 cells × 1024 bits.
    assert_eq!(full - one_bank, 2 * 512 * 1024 / 8);
    mem.recognize(&x, &mut recall);
    assert_eq!(recall.familiarity, 1.0);
    assert_eq!(recall.best_match.map(|b| b.shared), Some(32));
    // Past the half life the younger bank learns too: everything allocated.
    while mem.shadow_fill() == Some(0.0) {
        let x = random_input(&mut r, n, s);
        mem.recognize(&x, &mut recall);
        mem.learn(&x, &recall);
    }
    assert_eq!(mem.memory_bytes(), full);
    // A state that was written out with its empty weights in full (as before lazy
    // allocation) comes back equal and unallocated.
    let empty = SdrMemory::new(params(32, 16, SaturationPolicy::Rotate), n, s);
    let mut state: serde_json::Value = serde_json::to_value(&empty).unwrap();
    for bank in state["banks"].as_array_mut().unwrap() {
        bank["rows"] = serde_json::json!(vec![0u64; 512 * 16]);
        bank.as_object_mut().unwrap().remove("cells");
    }
    let old: SdrMemory = serde_json::from_value(state).unwrap();
    assert_eq!(old, empty);
    assert!(old.memory_bytes() <= fresh);
}

/// Slot encoder → memory end to end: a learned code is familiar; the same shape with small
/// coefficient noise is nearly so; an unrelated code is not.
#[test]
fn encoded_codes_end_to_end() {
    let mut enc = SdrEncoder::new(EncoderParams::AtomSlot(AtomSlotParams::default()), 64);
    let mut mem = SdrMemory::new(MemoryParams::default(), enc.input_bits(), enc.active_bits());
    let mut x = vec![0u64; mem.input_words()];
    let mut recall = mem.new_recall();
    let mut r = rng(8);
    let mut learned = Vec::new();
    for _ in 0..40 {
        let idx: Vec<usize> = sample(&mut r, 64, 8).into_vec();
        let vals: Vec<f64> = (0..8).map(|_| r.random_range(-1.0..1.0)).collect();
        let energy = vals.iter().map(|v| v * v).sum::<f64>() * 1.2;
        let code = CodeInput {
            indices: &idx,
            values: &vals,
            energy,
            level: 0.0,
        };
        enc.encode(&code, &mut x);
        mem.recognize(&x, &mut recall);
        mem.learn(&x, &recall);
        learned.push((idx, vals, energy));
    }
    let (idx, vals, energy) = &learned[3];
    let noisy: Vec<f64> = vals.iter().map(|v| v * 1.03).collect();
    for (values, lo, hi) in [(vals, 1.0, 1.0), (&noisy, 0.8, 1.0)] {
        let code = CodeInput {
            indices: idx,
            values,
            energy: *energy,
            level: 0.0,
        };
        enc.encode(&code, &mut x);
        mem.recognize(&x, &mut recall);
        assert!(
            (lo..=hi).contains(&recall.familiarity),
            "G {}",
            recall.familiarity
        );
    }
    let other = CodeInput {
        indices: &[60, 61, 62],
        values: &[1.0, -1.0, 0.5],
        energy: 1000.0,
        level: 3.0,
    };
    enc.encode(&other, &mut x);
    mem.recognize(&x, &mut recall);
    assert!(recall.familiarity < 0.6, "G {}", recall.familiarity);
}

/// The slow, obviously correct memory: weights as `Vec<bool>` per cell, every step of the
/// spec's CSA pseudocode written out per cell with no tables. Draws from its RNG in the same
/// order as the fast path (a tie-break draw only when a module has a tie; one draw per module
/// when sampling), so with the same seed the outputs must be identical.
struct Reference {
    p: MemoryParams,
    n: usize,
    w: Vec<Vec<bool>>,
    rng: Xoshiro256PlusPlus,
}

// Plain index loops on purpose: the reference should read like the spec's pseudocode.
#[allow(clippy::needless_range_loop)]
impl Reference {
    fn new(p: MemoryParams, n: usize) -> Self {
        Self {
            w: vec![vec![false; n]; p.modules * p.cells],
            rng: Xoshiro256PlusPlus::seed_from_u64(p.seed),
            p,
            n,
        }
    }

    fn bits(&self, x: &[u64]) -> Vec<bool> {
        (0..self.n).map(|j| get_bit(x, j)).collect()
    }

    fn evidence(&self, x: &[bool]) -> (Vec<usize>, Vec<f64>) {
        let pi = x.iter().filter(|&&b| b).count() as f64;
        let u: Vec<usize> = self
            .w
            .iter()
            .map(|row| row.iter().zip(x).filter(|(&w, &b)| w && b).count())
            .collect();
        let lambda = self.p.evidence_exponent;
        let v = u
            .iter()
            .map(|&ui| {
                let ratio = (ui as f64 / pi).min(1.0);
                if lambda == 1.0 {
                    ratio
                } else {
                    ratio.powf(lambda)
                }
            })
            .collect();
        (u, v)
    }

    fn familiarity(&self, v: &[f64]) -> f64 {
        let k = self.p.cells;
        let mut g = 0.0;
        for q in 0..self.p.modules {
            g += v[q * k..(q + 1) * k].iter().cloned().fold(0.0, f64::max);
        }
        g / self.p.modules as f64
    }

    /// (code, G, R) in recognize mode.
    fn recognize(&mut self, x: &[u64]) -> (Vec<u16>, f64, f64) {
        let xb = self.bits(x);
        let (u, v) = self.evidence(&xb);
        let g = self.familiarity(&v);
        let k = self.p.cells;
        let mut code = Vec::new();
        for q in 0..self.p.modules {
            let cm = &u[q * k..(q + 1) * k];
            let best = *cm.iter().max().unwrap();
            let tied: Vec<usize> = (0..k).filter(|&i| cm[i] == best).collect();
            let pick = if tied.len() == 1 {
                0
            } else {
                self.rng.random_range(0..tied.len())
            };
            code.push(tied[pick] as u16);
        }
        let need = ((self.p.recall_quorum * self.p.modules as f64).ceil() as usize).max(1);
        let (mut hit, mut total) = (0, 0);
        for j in 0..self.n {
            let votes = (0..self.p.modules)
                .filter(|&q| self.w[q * k + code[q] as usize][j])
                .count();
            if votes >= need {
                total += 1;
                hit += xb[j] as usize;
            }
        }
        let r = if total == 0 {
            0.0
        } else {
            hit as f64 / total as f64
        };
        (code, g, r)
    }

    /// Learn mode: sample per module with ρ = μ / Σμ, then OR x into the winners; an input
    /// already stored (G = 1) keeps its recognized code.
    fn learn(&mut self, x: &[u64], recognized: &[u16]) -> Vec<u16> {
        let xb = self.bits(x);
        let (_, v) = self.evidence(&xb);
        let g = self.familiarity(&v);
        if g == 1.0 {
            return recognized.to_vec();
        }
        let p = &self.p;
        let k = p.cells;
        let excess = ((g - p.familiarity_floor) / (1.0 - p.familiarity_floor)).max(0.0);
        let eta = if excess == 0.0 {
            1.0
        } else {
            1.0 + p.expansion_factor * k as f64 * excess.powf(p.expansion_exponent)
        };
        let mut code = Vec::new();
        for q in 0..p.modules {
            let winner = if eta == 1.0 {
                self.rng.random_range(0..k)
            } else {
                let mu: Vec<f64> = v[q * k..(q + 1) * k]
                    .iter()
                    .map(|&vi| {
                        let sig = 1.0
                            + p.sigmoid_scale * (-p.sigmoid_slope * (vi - p.sigmoid_center)).exp();
                        1.0 + (eta - 1.0) / sig.powf(p.sigmoid_power)
                    })
                    .collect();
                let total: f64 = mu.iter().sum();
                let mut r = self.rng.random::<f64>() * total;
                let mut pick = k - 1;
                for (i, m) in mu.iter().enumerate() {
                    r -= m;
                    if r < 0.0 {
                        pick = i;
                        break;
                    }
                }
                pick
            };
            code.push(winner as u16);
        }
        for (q, &c) in code.iter().enumerate() {
            for j in 0..self.n {
                if xb[j] {
                    self.w[q * k + c as usize][j] = true;
                }
            }
        }
        code
    }
}

/// The fast bitset path and the reference agree exactly (winners, G, R, learned codes) on
/// random inputs, novel, stored and partial, for λ = 1 and λ = 2, an odd Q, the spec's
/// majority quorum, and the default shape (Q = 32, K = 16, which has its own kernels).
#[test]
fn fast_path_matches_reference() {
    let (n, s) = (300, 24);
    for (modules, cells, lambda, quorum) in
        [(16, 8, 1.0, 0.9), (7, 5, 2.0, 0.5), (32, 16, 1.0, 0.9)]
    {
        let p = MemoryParams {
            modules,
            cells,
            evidence_exponent: lambda,
            recall_quorum: quorum,
            policy: SaturationPolicy::Unbounded,
            ..MemoryParams::default()
        };
        let mut fast = SdrMemory::new(p.clone(), n, s);
        let mut slow = Reference::new(p, n);
        let mut r = rng(9);
        let items: Vec<Vec<u64>> = (0..60).map(|_| random_input(&mut r, n, s)).collect();
        let mut recall = fast.new_recall();
        for i in 0..200 {
            let x = match i % 3 {
                0 => random_input(&mut r, n, s),
                1 => items[i % 60].clone(),
                _ => probe(&mut r, &items[(i * 7) % 60], n, 0.7),
            };
            fast.recognize(&x, &mut recall);
            let (code, g, rr) = slow.recognize(&x);
            assert_eq!(recall.code, code, "step {i}");
            assert_eq!(recall.familiarity, g, "step {i}");
            assert_eq!(recall.precision, rr, "step {i}");
            if i % 2 == 0 {
                fast.learn(&x, &recall);
                let learned = slow.learn(&x, &code);
                assert_eq!(fast.learned_code(), learned.as_slice(), "step {i}");
            }
        }
    }
}

fn temporal_params(temporal: bool) -> MemoryParams {
    MemoryParams {
        temporal,
        ..MemoryParams::default()
    }
}

/// Recognizes (and, if `learn`, learns) `order` of `items` in turn; returns each G.
fn play(mem: &mut SdrMemory, items: &[Vec<u64>], order: &[usize], learn: bool) -> Vec<f64> {
    let mut recall = mem.new_recall();
    order
        .iter()
        .map(|&i| {
            mem.recognize(&items[i], &mut recall);
            if learn {
                assert!(matches!(
                    mem.learn(&items[i], &recall),
                    Learned::Stored { .. }
                ));
            }
            recall.familiarity
        })
        .collect()
}

/// Issue #4: A B C A B C … learned; then A C B. Without context every window of A C B is
/// fully familiar; with it, C after A and B after C (transitions never seen) are novel,
/// while the in-order sequence stays fully familiar and A at a sequence start is too.
#[test]
fn temporal_context_makes_an_unfamiliar_order_novel() {
    let (n, s) = (1024, 32);
    let mut r = rng(40);
    let items: Vec<Vec<u64>> = (0..3).map(|_| random_input(&mut r, n, s)).collect();
    let cycle: Vec<usize> = (0..60).map(|i| i % 3).collect();
    for temporal in [false, true] {
        let mut mem = SdrMemory::new(temporal_params(temporal), n, s);
        play(&mut mem, &items, &cycle, true);
        // In order, learning on: familiar and nothing new written.
        mem.break_sequence();
        let before = mem.fill();
        let g = play(&mut mem, &items, &[0, 1, 2, 0, 1, 2], true);
        assert!(
            g.iter().all(|&g| g == 1.0),
            "in order, temporal {temporal}: {g:?}"
        );
        assert_eq!(mem.fill(), before);
        // Out of order, recognition only.
        mem.break_sequence();
        let g = play(&mut mem, &items, &[0, 2, 1], false);
        assert_eq!(g[0], 1.0, "A starts the sequence: bottom-up only");
        if temporal {
            assert!(g[1] < 0.3 && g[2] < 0.3, "C after A, B after C: {g:?}");
        } else {
            assert_eq!(g, vec![1.0; 3], "without context order is invisible");
        }
        // A gap breaks the sequence: C then is only judged bottom-up.
        mem.break_sequence();
        assert!(mem.at_sequence_start());
        assert_eq!(play(&mut mem, &items, &[2], false), vec![1.0]);
        assert_eq!(mem.temporal_fill().is_some(), temporal);
    }
}

/// With context on, a serde round trip mid-sequence (the previous code is state) continues
/// exactly like the original, and a state saved without the temporal fields (an older
/// checkpoint) still loads, into a memory without context.
#[test]
fn temporal_context_serde_round_trip_and_old_states() {
    let (n, s) = (1024, 32);
    let mut r = rng(41);
    let items: Vec<Vec<u64>> = (0..40).map(|_| random_input(&mut r, n, s)).collect();
    let order: Vec<usize> = (0..300).map(|i| (i * 7 + i / 40) % 40).collect();
    let run = |mem: &mut SdrMemory, part: &[usize]| -> Vec<(Recall, Learned)> {
        let mut recall = mem.new_recall();
        part.iter()
            .map(|&i| {
                mem.recognize(&items[i], &mut recall);
                let l = mem.learn(&items[i], &recall);
                (recall.clone(), l)
            })
            .collect()
    };
    let mut a = SdrMemory::new(temporal_params(true), n, s);
    let first = run(&mut a, &order[..150]);
    assert!(first.iter().any(|(rc, _)| rc.familiarity < 1.0));
    assert!(a.temporal_fill().unwrap() > 0.0);
    assert!(!a.at_sequence_start());
    let json = serde_json::to_string(&a).unwrap();
    let mut c: SdrMemory = serde_json::from_str(&json).unwrap();
    assert_eq!(c, a);
    assert_eq!(run(&mut a, &order[150..]), run(&mut c, &order[150..]));

    // Without context the state has no temporal fields at all, as before the feature.
    let mut old = SdrMemory::new(temporal_params(false), n, s);
    run(&mut old, &order[..50]);
    let mut value: serde_json::Value = serde_json::to_value(&old).unwrap();
    assert!(value.get("temporal").is_none());
    let params = value["params"].as_object_mut().unwrap();
    params.remove("temporal");
    params.remove("temporal_exponent");
    let back: SdrMemory = serde_json::from_value(value).unwrap();
    assert_eq!(back, old);
    assert!(back.temporal_fill().is_none());
}

/// Context on or off, the memory chooses the same codes and draws the same random numbers
/// (codes are bottom-up): only G differs, and only where a previous code exists.
#[test]
fn temporal_context_changes_only_the_familiarity() {
    let (n, s) = (1024, 32);
    let mut r = rng(42);
    let items: Vec<Vec<u64>> = (0..30).map(|_| random_input(&mut r, n, s)).collect();
    let (mut off, mut on) = (
        SdrMemory::new(temporal_params(false), n, s),
        SdrMemory::new(temporal_params(true), n, s),
    );
    let (mut ra, mut rb) = (off.new_recall(), on.new_recall());
    for t in 0..200 {
        let x = &items[(t * 11 + t / 30) % 30];
        off.recognize(x, &mut ra);
        on.recognize(x, &mut rb);
        assert_eq!(ra.code, rb.code, "step {t}");
        if t == 0 {
            assert_eq!(ra.familiarity, rb.familiarity);
        }
        assert!(rb.familiarity <= ra.familiarity);
        off.learn(x, &ra);
        on.learn(x, &rb);
        assert_eq!(off.learned_code(), on.learned_code(), "step {t}");
    }
}

/// In the pipeline, a gap in the stream starts a new sequence: the window after it gets no
/// temporal context.
#[test]
fn a_gap_breaks_the_temporal_sequence() {
    use sparsewatch_dsp::score::MemoryDetectorParams;
    use sparsewatch_dsp::DetectorKind;
    use sparsewatch_dsp::{Pipeline, PipelineParams, PushOutcome, Sample};
    let params = PipelineParams {
        detector: DetectorKind::Memory,
        memory: MemoryDetectorParams {
            sdr: temporal_params(true),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut p = Pipeline::new(&params.check().unwrap(), 1);
    let wave = |t: i64| (t as f64 * 2.0 * std::f64::consts::PI / 16.0).sin();
    for t in 0..2_000i64 {
        p.push(Sample::new(t, &[wave(t)]).unwrap());
    }
    let mem = p.memory().expect("memory detector");
    assert!(mem.learned() > 0 && mem.temporal_fill().unwrap() > 0.0);
    assert!(!mem.at_sequence_start());
    let after = 2_000 + 10_000_000;
    let r = p.push(Sample::new(after, &[wave(after)]).unwrap());
    assert_eq!(r.outcome, PushOutcome::AfterGap);
    assert!(p.memory().unwrap().at_sequence_start());
}
