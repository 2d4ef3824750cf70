//! Replicates the synthetic experiments of the online orthogonal dictionary learning spec
//! (`shared/specs/online-orthogonal-dictionary.md`, §4, targets T0–T9) with
//! [`OrthoDictionary`] and prints the targets table with the measured values.
//!
//! ```text
//! cargo run --release -p sparsewatch-dsp --example replicate            # full table
//! cargo run --release -p sparsewatch-dsp --example replicate -- --quick # stops at 3 000 its
//! cargo run --release -p sparsewatch-dsp --example replicate -- --seeds 5   # all experiments
//! cargo run --release -p sparsewatch-dsp --example replicate -- --only E1   # by name prefix
//! ```
//!
//! Data model (spec §1): y = D_o·x, D_o the Q of the QR of a Gaussian n×n matrix, x
//! Bernoulli(θ)–Gaussian, single pass, noiseless. Error: err = |1 − ‖Dᵀ·D_o‖₄⁴ / n| on the
//! published (projected) dictionary. Means are over 20 seeds for n = 10 and 5 for n = 50 (see
//! `main`). Runs use the paper's settings ([`DictionaryParams::paper`]:
//! no clamping, no floors, retraction every step) unless a row says otherwise. Each value is
//! the mean over the seeds; seed s drives both the data and the learner's start, so methods
//! are compared on the same samples. Work is spread over two threads (one per core).
//!
//! The learners store their state as f64 (`OrthoDictionary::<f64>`), the paper's algorithm
//! as written. The daemon's learners store it as f32 between (f64) steps; that perturbs the
//! chaotic first hundred iterations of the unclamped paper schedule enough to move the
//! 20-seed mean of T2 at iteration 100 across its bound (3.32e-2 against ≤ 3e-2, f64 2.68e-2),
//! while every later checkpoint agrees (BENCHMARKS.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use sparsewatch_dsp::dictionary::{
    DictionaryParams, DictionaryStats, Objective, OrthoDictionary, Retraction, Schedule,
};

/// One learning run's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    /// ℓ3, proposed schedule, retraction every step (the authors' NoncvxSFW).
    L3,
    /// Same with projection only at read-out (T9).
    L3ReadOut,
    /// ℓ3 with this crate's production defaults (clamped steps, floors 1e-3, read-out).
    L3Defaults,
    /// ℓ4, proposed schedule, retraction every step.
    L4,
    /// ℓ3 with the convex SFW schedule, projected only at read-out (E1 in the spec).
    ConvexReadOut,
    /// ℓ3 with the convex SFW schedule, retraction every step (E2, E3).
    Convex,
}

impl Method {
    fn params(self, b: usize, seed: u64) -> DictionaryParams {
        let base = DictionaryParams {
            minibatch: b,
            seed,
            ..DictionaryParams::paper()
        };
        match self {
            Method::L3 => base,
            Method::L3ReadOut => DictionaryParams {
                retraction: Retraction::ReadOut,
                ..base
            },
            Method::L3Defaults => DictionaryParams {
                minibatch: b,
                seed,
                ..DictionaryParams::default()
            },
            Method::L4 => DictionaryParams {
                objective: Objective::L4,
                ..base
            },
            Method::ConvexReadOut => DictionaryParams {
                schedule: Schedule::Convex,
                retraction: Retraction::ReadOut,
                ..base
            },
            Method::Convex => DictionaryParams {
                schedule: Schedule::Convex,
                ..base
            },
        }
    }
}

/// An experiment of spec §4: dimension, sparsity, minibatch, and where err is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Experiment {
    name: &'static str,
    n: usize,
    theta_milli: u32,
    b: usize,
    iterations: u64,
    seeds: u64,
}

impl Experiment {
    fn theta(&self) -> f64 {
        f64::from(self.theta_milli) / 1000.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    exp: Experiment,
    method: Method,
}

/// Mean err over seeds at each recorded iteration, plus cost counters.
#[derive(Debug, Default, Clone)]
struct Outcome {
    err_sum: BTreeMap<u64, f64>,
    seeds: usize,
    seconds: f64,
    steps: u64,
    stats: DictionaryStats,
}

impl Outcome {
    fn mean(&self, it: u64) -> Option<f64> {
        self.err_sum.get(&it).map(|s| s / self.seeds as f64)
    }
}

const CHECKPOINTS: [u64; 7] = [0, 100, 300, 1_000, 3_000, 10_000, 30_000];

/// err = |1 − ‖Dᵀ·D_o‖₄⁴ / n|.
fn recovery_error(dictionary: &DMatrix<f64>, truth: &DMatrix<f64>) -> f64 {
    let m = dictionary.transpose() * truth;
    (1.0 - m.iter().map(|v| v.powi(4)).sum::<f64>() / truth.nrows() as f64).abs()
}

fn gaussian(n: usize, rng: &mut Xoshiro256PlusPlus) -> DMatrix<f64> {
    DMatrix::from_fn(n, n, |_, _| StandardNormal.sample(rng))
}

/// One run: returns err at each checkpoint ≤ the experiment's length, and the learner.
fn run(job: Job, seed: u64) -> (Vec<(u64, f64)>, OrthoDictionary<f64>) {
    let Experiment { n, b, .. } = job.exp;
    let mut data_rng = Xoshiro256PlusPlus::seed_from_u64(0xDA7A ^ seed.wrapping_mul(0x9E37));
    let truth = gaussian(n, &mut data_rng).qr().q();
    let mut learner = OrthoDictionary::<f64>::with_storage(job.method.params(b, seed), n);
    let mut x = vec![0.0; n];
    let mut y = vec![0.0; n];
    let mut errs = vec![(0, recovery_error(learner.dictionary(), &truth))];
    for it in 1..=job.exp.iterations {
        for _ in 0..b {
            for xi in x.iter_mut() {
                let g: f64 = StandardNormal.sample(&mut data_rng);
                let keep = data_rng.random::<f64>() < job.exp.theta();
                *xi = if keep { g } else { 0.0 };
            }
            for (i, yi) in y.iter_mut().enumerate() {
                *yi = (0..n).map(|j| truth[(i, j)] * x[j]).sum();
            }
            learner.learn(&y);
        }
        if CHECKPOINTS.contains(&it) {
            errs.push((it, recovery_error(learner.dictionary(), &truth)));
        }
    }
    (errs, learner)
}

/// Runs every job on every seed over two worker threads.
fn run_all(jobs: &[Job]) -> BTreeMap<Job, Outcome> {
    // Longest runs first, so the two workers finish together.
    let mut tasks: Vec<(Job, u64)> = jobs
        .iter()
        .flat_map(|&j| (0..j.exp.seeds).map(move |s| (j, s)))
        .collect();
    tasks.sort_by_key(|(j, _)| {
        std::cmp::Reverse(j.exp.iterations * (j.exp.n * j.exp.n * j.exp.n) as u64)
    });
    let next = AtomicUsize::new(0);
    let results = Mutex::new(BTreeMap::<Job, Outcome>::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(job, seed)) = tasks.get(i) else {
                    break;
                };
                let start = Instant::now();
                let (errs, learner) = run(job, seed);
                let seconds = start.elapsed().as_secs_f64();
                if std::env::var_os("REPLICATE_VERBOSE").is_some() {
                    let last = errs.last().copied().unwrap_or_default();
                    eprintln!(
                        "{} {:?} seed {seed}: err {:.2e} at it {}",
                        job.exp.name, job.method, last.1, last.0
                    );
                }
                let mut all = results.lock().unwrap();
                let out = all.entry(job).or_default();
                for (it, e) in errs {
                    *out.err_sum.entry(it).or_default() += e;
                }
                out.seeds += 1;
                out.seconds += seconds;
                out.steps += learner.steps();
                let s = learner.stats();
                out.stats.newton_schulz += s.newton_schulz;
                out.stats.newton_schulz_iterations += s.newton_schulz_iterations;
                out.stats.svd += s.svd;
                out.stats.skipped += s.skipped;
            });
        }
    });
    results.into_inner().unwrap()
}

/// Err of Haar-random orthogonal matrices (QR of a Gaussian with the sign fix) against a
/// fixed basis: the T0 reference 1 − 3/(n+2).
fn haar_error(n: usize, samples: u64) -> f64 {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x0AA5 + n as u64);
    let truth = DMatrix::<f64>::identity(n, n);
    let total: f64 = (0..samples)
        .map(|_| {
            let qr = gaussian(n, &mut rng).qr();
            let (mut q, r) = (qr.q(), qr.r());
            for j in 0..n {
                if r[(j, j)] < 0.0 {
                    q.column_mut(j).neg_mut();
                }
            }
            recovery_error(&q, &truth)
        })
        .sum();
    total / samples as f64
}

/// Table printer.
struct Table {
    rows: Vec<[String; 6]>,
    required_failures: Vec<String>,
}

impl Table {
    fn row(&mut self, id: &str, setup: &str, method: &str, target: String, measured: String) {
        self.rows.push([
            id.into(),
            setup.into(),
            method.into(),
            target,
            measured,
            String::new(),
        ]);
    }

    /// A required row: at iteration `it`, err ≤ `bound` (the spec's reference value beside).
    fn bound(
        &mut self,
        id: &str,
        setup: &str,
        method: &str,
        (it, bound, reference): (u64, f64, f64),
        v: Option<f64>,
    ) {
        let target = format!("it {it}: ≤{bound:.1e} (ref {reference:.1e})");
        let (measured, verdict) = match v {
            Some(v) if v <= bound => (format!("{v:.2e}"), "PASS"),
            Some(v) => (format!("{v:.2e}"), "FAIL"),
            None => ("not run".into(), "SKIP"),
        };
        if verdict == "FAIL" {
            self.required_failures.push(format!("{id} it {it}"));
        }
        self.row(id, setup, method, target, measured);
        self.rows.last_mut().unwrap()[5] = verdict.into();
    }

    /// An informational `≈ reference` row.
    fn approx(
        &mut self,
        id: &str,
        setup: &str,
        method: &str,
        it: u64,
        reference: f64,
        v: Option<f64>,
    ) {
        let measured = v.map_or("not run".into(), |v| format!("{v:.2e}"));
        self.row(
            id,
            setup,
            method,
            format!("it {it}: ≈{reference:.1e}"),
            measured,
        );
        self.rows.last_mut().unwrap()[5] = "info".into();
    }

    fn check(
        &mut self,
        id: &str,
        setup: &str,
        method: &str,
        target: String,
        measured: String,
        ok: Option<bool>,
    ) {
        let verdict = match ok {
            Some(true) => "PASS",
            Some(false) => {
                self.required_failures.push(id.to_string());
                "FAIL"
            }
            None => "SKIP",
        };
        self.row(id, setup, method, target, measured);
        self.rows.last_mut().unwrap()[5] = verdict.into();
    }

    fn print(&self) {
        let head = [
            "#",
            "setup",
            "method",
            "target (ref)",
            "measured (mean)",
            "verdict",
        ];
        let mut width = head.map(|h| h.chars().count());
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: [&str; 6]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        line(head);
        let rule: Vec<String> = width.iter().map(|&w| "-".repeat(w)).collect();
        println!("|-{}-|", rule.join("-|-"));
        for r in &self.rows {
            line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick =
        args.iter().any(|a| a == "--quick") || std::env::var_os("REPLICATE_QUICK").is_some();
    // The n = 10 runs are cheap, so they average 20 seeds: the convex schedule's error is
    // heavy-tailed (most seeds ~1e-3, one in five ~1e-2), and a 5-seed mean of it is a coin
    // flip. The n = 50 runs average 5 seeds (the spec's minimum). `--seeds N` sets both.
    let forced: Option<u64> = args
        .iter()
        .position(|a| a == "--seeds")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse().expect("--seeds takes a number"));
    let (small_seeds, large_seeds) = forced.map_or((20, 5), |s| (s, s));
    let cap = |it: u64| if quick { it.min(3_000) } else { it };
    let e1b1 = Experiment {
        name: "E1 b=1",
        n: 10,
        theta_milli: 300,
        b: 1,
        iterations: cap(30_000),
        seeds: small_seeds,
    };
    let e1b10 = Experiment {
        name: "E1 b=10",
        n: 10,
        theta_milli: 300,
        b: 10,
        iterations: 3_000,
        seeds: small_seeds,
    };
    let e2 = Experiment {
        name: "E2 n=50",
        n: 50,
        theta_milli: 300,
        b: 10,
        iterations: cap(10_000),
        seeds: large_seeds,
    };
    let e3 = Experiment {
        name: "E3 θ=0.5",
        n: 10,
        theta_milli: 500,
        b: 10,
        iterations: cap(10_000),
        seeds: small_seeds,
    };
    let convex_e1 = Method::ConvexReadOut;
    let convex = Method::Convex;
    let jobs = [
        Job {
            exp: e1b1,
            method: Method::L3,
        },
        Job {
            exp: e1b1,
            method: convex_e1,
        },
        Job {
            exp: e1b1,
            method: Method::L4,
        },
        Job {
            exp: e1b10,
            method: Method::L3,
        },
        Job {
            exp: e1b10,
            method: Method::L3ReadOut,
        },
        Job {
            exp: e1b10,
            method: Method::L3Defaults,
        },
        Job {
            exp: e1b10,
            method: convex_e1,
        },
        Job {
            exp: e1b10,
            method: Method::L4,
        },
        Job {
            exp: e2,
            method: Method::L3,
        },
        Job {
            exp: e2,
            method: convex,
        },
        Job {
            exp: e3,
            method: Method::L3,
        },
        Job {
            exp: e3,
            method: convex,
        },
    ];
    println!(
        "Replicating spec §4: mean over {small_seeds} seeds (n = 10) / {large_seeds} seeds (n = 50){}, 2 threads.",
        if quick { ", quick mode (runs stop at 3 000 iterations)" } else { "" }
    );
    let start = Instant::now();
    // `--only E1` keeps the experiments whose name starts with the given prefix.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| only.is_none_or(|p| j.exp.name.starts_with(p.as_str())))
        .collect();
    let res = run_all(&jobs);
    let wall = start.elapsed().as_secs_f64();
    let get = |exp: Experiment, method: Method, it: u64| {
        res.get(&Job { exp, method }).and_then(|o| o.mean(it))
    };

    let mut t = Table {
        rows: vec![],
        required_failures: vec![],
    };
    // T0: starting points.
    for n in [10usize, 50] {
        let haar = haar_error(n, 200);
        let expect = 1.0 - 3.0 / (n as f64 + 2.0);
        t.check(
            "T0",
            &format!("n={n}, Haar A₀ (200 draws)"),
            "—",
            format!("≈1−3/(n+2) = {expect:.3} (±0.03)"),
            format!("{haar:.3}"),
            Some((haar - expect).abs() <= 0.03),
        );
    }
    let init10 = get(e1b10, Method::L3, 0);
    t.check(
        "T0",
        "n=10, learner start (QR of U[0,1))",
        "—",
        "≈0.7 (±0.1)".into(),
        init10.map_or("not run".into(), |v| format!("{v:.3}")),
        init10.map(|v| (v - 0.7).abs() <= 0.1),
    );
    t.approx(
        "T0",
        "n=50, learner start",
        "—",
        0,
        0.94,
        get(e2, Method::L3, 0),
    );
    // T1, T2: the proposed method.
    for (it, bound, reference) in [
        (300, 3e-2, 2.0e-2),
        (3_000, 6e-3, 3.8e-3),
        (30_000, 1.5e-3, 7.9e-4),
    ] {
        t.bound(
            "T1",
            e1b1.name,
            "ℓ3-NoncvxSFW",
            (it, bound, reference),
            get(e1b1, Method::L3, it),
        );
    }
    for (it, bound, reference) in [
        (100, 3e-2, 1.9e-2),
        (300, 5e-3, 2.4e-3),
        (3_000, 1e-3, 4.6e-4),
    ] {
        t.bound(
            "T2",
            e1b10.name,
            "ℓ3-NoncvxSFW",
            (it, bound, reference),
            get(e1b10, Method::L3, it),
        );
    }
    for it in [100, 300, 3_000] {
        let v = get(e1b10, Method::L3Defaults, it);
        let measured = v.map_or("not run".into(), |v| format!("{v:.2e}"));
        t.row(
            "T2'",
            e1b10.name,
            "ℓ3, crate defaults",
            format!("it {it}: (no target)"),
            measured,
        );
        t.rows.last_mut().unwrap()[5] = "info".into();
    }
    // T3, T4: slower comparisons (informational).
    t.approx(
        "T3",
        e1b1.name,
        "ℓ3-SFW (convex)",
        3_000,
        4.8e-2,
        get(e1b1, convex_e1, 3_000),
    );
    t.approx(
        "T3",
        e1b10.name,
        "ℓ3-SFW (convex)",
        3_000,
        4.8e-3,
        get(e1b10, convex_e1, 3_000),
    );
    t.approx(
        "T4",
        e1b1.name,
        "ℓ4-NoncvxSFW",
        3_000,
        1.0e-2,
        get(e1b1, Method::L4, 3_000),
    );
    t.approx(
        "T4",
        e1b10.name,
        "ℓ4-NoncvxSFW",
        3_000,
        1.6e-3,
        get(e1b10, Method::L4, 3_000),
    );
    t.row(
        "T5",
        e1b10.name,
        "online alternating DL",
        "it 3000: ≈7.5e-2".into(),
        "not implemented".into(),
    );
    t.rows.last_mut().unwrap()[5] = "n/a".into();
    for (it, bound, reference) in [
        (1_000, 4e-2, 1.9e-2),
        (3_000, 6e-3, 3.0e-3),
        (10_000, 2.5e-3, 1.2e-3),
    ] {
        t.bound(
            "T6",
            e2.name,
            "ℓ3-NoncvxSFW",
            (it, bound, reference),
            get(e2, Method::L3, it),
        );
    }
    t.approx(
        "T7",
        e2.name,
        "ℓ3-SFW (convex)",
        10_000,
        0.35,
        get(e2, convex, 10_000),
    );
    for (it, bound, reference, convex_ref) in
        [(3_000, 1.5e-3, 7.3e-4, 0.15), (10_000, 6e-4, 3.0e-4, 0.06)]
    {
        t.bound(
            "T8",
            e3.name,
            "ℓ3-NoncvxSFW",
            (it, bound, reference),
            get(e3, Method::L3, it),
        );
        t.approx(
            "T8",
            e3.name,
            "ℓ3-SFW (convex)",
            it,
            convex_ref,
            get(e3, convex, it),
        );
    }
    for (it, reference) in [(300, 3.1e-3), (1_000, 1.1e-3), (3_000, 4.7e-4)] {
        let pair = get(e1b10, Method::L3ReadOut, it).zip(get(e1b10, Method::L3, it));
        t.check(
            "T9",
            e1b10.name,
            "read-out vs every step",
            format!("it {it}: within 10% (ref {reference:.1e})"),
            pair.map_or("not run".into(), |(ro, re)| {
                format!("{ro:.2e} vs {re:.2e} ({:+.1}%)", 100.0 * (ro / re - 1.0))
            }),
            pair.map(|(ro, re)| (ro / re - 1.0).abs() <= 0.10),
        );
    }
    for (exp, required) in [(e1b10, true), (e1b1, false)] {
        let m = |method| get(exp, method, 3_000);
        let triple = m(Method::L3).zip(m(Method::L4)).zip(m(convex_e1));
        let measured = triple.map_or("not run".into(), |((a, b), c)| {
            format!("{a:.2e} < {b:.2e} < {c:.2e}")
        });
        let ok = triple.map(|((a, b), c)| a < b && b < c);
        if required {
            t.check(
                "order",
                exp.name,
                "ℓ3 < ℓ4 < ℓ3-SFW",
                "it 3000".into(),
                measured,
                ok,
            );
        } else {
            t.row(
                "order",
                exp.name,
                "ℓ3 < ℓ4 < ℓ3-SFW",
                "it 3000 (info)".into(),
                measured,
            );
            t.rows.last_mut().unwrap()[5] = match ok {
                Some(true) => "info ✓",
                Some(false) => "info ✗",
                None => "info",
            }
            .into();
        }
    }
    t.print();

    println!("\nCost per configuration (sum over seeds; one thread each):");
    for (job, out) in &res {
        let s = out.stats;
        let ns_iters = s.newton_schulz_iterations as f64 / s.newton_schulz.max(1) as f64;
        println!(
            "  {:<9} {:<28} {:>7.2} s  {:>8.1} µs/step  NS polars {:>7} (mean {:.1} it)  SVD {:>5}",
            job.exp.name,
            format!("{:?}", job.method),
            out.seconds,
            1e6 * out.seconds / out.steps.max(1) as f64,
            s.newton_schulz,
            ns_iters,
            s.svd,
        );
    }
    println!("\nWall time {wall:.1} s.");
    if t.required_failures.is_empty() {
        println!("All required targets PASS.");
    } else {
        println!(
            "Required targets FAILED: {}",
            t.required_failures.join(", ")
        );
        std::process::exit(1);
    }
}
