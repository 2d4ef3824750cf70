//! `sparsewatch eval`: replays labelled benchmarks through the pipeline, exactly as the daemon
//! would run it, and scores the result.
//!
//! - [`corpus`]: reading NAB and SKAB folders; every error names the file and line.
//! - [`runner`]: one fresh [`Pipeline`](sparsewatch_dsp::Pipeline) per file, one sample per
//!   row; per-row likelihood, detection and alert state.
//! - [`nab`]: the NAB scorer (windows, profiles, threshold sweep, normalisation). Pure.
//! - [`skab`]: SKAB's row metrics (F1, FAR, MAR). Pure.
//! - [`report`]: the result types, their text tables, the JSON file and NAB's results layout.
//!
//! NAB is scored from three per-row inputs: `likelihood` (the most recent window's likelihood,
//! 0 during warm-up; the threshold is swept per profile, as NAB does for any detector),
//! `detections` (1 on the row that raised a detection, else 0, at threshold 0.5: what a
//! deployed daemon emits, one event per incident; the headline number) and `events` (the
//! detection rows' likelihoods, 0 elsewhere, swept: what `--results` writes for NAB's own
//! scorer, which counts every row above its threshold; it scores at least `detections`). Detectors are [`DetectorKind`] values, so a
//! new kind is evaluated by naming it in `--detector`.

pub mod corpus;
pub mod nab;
pub mod plots;
pub mod report;
pub mod runner;
pub mod skab;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use sparsewatch_dsp::{DetectorKind, PipelineParams, ValidPipelineParams};

use self::corpus::{NabCorpus, NabFile};
use self::nab::{FileScore, Labels, Profile};
use self::report::{
    EvalReport, NabFileResult, NabReport, NabRun, ProfileResult, SkabFileResult, SkabReport,
    SkabRun,
};
use self::runner::Replay;
use self::skab::Confusion;

/// What to evaluate, from the command line.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    pub nab: Option<PathBuf>,
    pub skab: Option<PathBuf>,
    pub skab_warmup: Option<PathBuf>,
    /// Empty: the configured detector only.
    pub detectors: Vec<DetectorKind>,
    pub json: Option<PathBuf>,
    pub results: Option<PathBuf>,
    /// Folder and format (`svg` or `png`) of a figure per file and detector.
    pub plots: Option<(PathBuf, String)>,
}

/// Parses a detector name as the configuration spells it (`baseline`, …).
pub fn parse_detector(name: &str) -> Result<DetectorKind, String> {
    serde_json::from_value(serde_json::Value::String(name.trim().to_string()))
        .map_err(|e| format!("unknown detector `{name}`: {e}"))
}

/// Runs the evaluation, prints the tables and writes the requested files.
pub fn run_cli(opts: &EvalOptions, pipeline: &ValidPipelineParams) -> Result<()> {
    let report = evaluate(opts, pipeline)?;
    print!("{report}");
    if let Some(path) = &opts.json {
        report.write_json(path)?;
    }
    Ok(())
}

/// Runs the evaluation (and writes `--results` files, if asked).
pub fn evaluate(opts: &EvalOptions, pipeline: &ValidPipelineParams) -> Result<EvalReport> {
    if opts.nab.is_none() && opts.skab.is_none() {
        bail!("nothing to evaluate: give --nab DIR and/or --skab DIR");
    }
    if opts.skab_warmup.is_some() && opts.skab.is_none() {
        bail!("--skab-warmup needs --skab");
    }
    let base = pipeline.get().clone();
    let mut kinds: Vec<DetectorKind> = Vec::new();
    for &k in &opts.detectors {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    if kinds.is_empty() {
        kinds.push(base.detector);
    }
    let detectors = kinds
        .iter()
        .map(|&k| Ok((k.name().to_string(), with_detector(&base, k)?)))
        .collect::<Result<Vec<_>>>()?;
    let nab = match &opts.nab {
        Some(dir) => Some(evaluate_nab(dir, &detectors, opts)?),
        None => None,
    };
    let skab = match &opts.skab {
        Some(dir) => Some(evaluate_skab(dir, &detectors, opts)?),
        None => None,
    };
    Ok(EvalReport {
        pipeline: base,
        detectors: detectors.into_iter().map(|(n, _)| n).collect(),
        nab,
        skab,
    })
}

fn with_detector(base: &PipelineParams, kind: DetectorKind) -> Result<ValidPipelineParams> {
    let mut p = base.clone();
    p.detector = kind;
    Ok(p.check()?)
}

/// Maps `f` over `items` on every core, keeping the order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("eval worker panicked"))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn evaluate_nab(
    dir: &Path,
    detectors: &[(String, ValidPipelineParams)],
    opts: &EvalOptions,
) -> Result<NabReport> {
    let results = opts.results.as_deref();
    let corpus = corpus::load_nab(dir)?;
    let mut runs = Vec::new();
    for (name, params) in detectors {
        let replays = par_map(&corpus.files, |f| {
            runner::replay(params, None, &f.series, &f.key)
        })
        .into_iter()
        .collect::<Result<Vec<Replay>>>()?;
        // What the daemon emits, per row: the likelihood on a row that raised a detection,
        // 0 elsewhere. NAB's scorer counts every row above its threshold, so this (one
        // positive row per incident) is the per-row score that represents the events.
        let events: Vec<Vec<f64>> = replays
            .iter()
            .map(|r| {
                r.detection
                    .iter()
                    .zip(&r.likelihood)
                    .map(|(&d, &l)| if d > 0.0 { l } else { 0.0 })
                    .collect()
            })
            .collect();
        if let Some(out) = results {
            for ((f, r), ev) in corpus.files.iter().zip(&replays).zip(&events) {
                let rows = |score: &'_ [f64]| {
                    (0..f.series.rows())
                        .map(|i| (f.series.ts_text[i].clone(), f.series.row(i)[0], score[i]))
                        .collect::<Vec<_>>()
                };
                report::write_results_file(out, name, &f.category, &f.name, rows(ev).into_iter())?;
                let per_row = format!("{name}_likelihood");
                report::write_results_file(
                    out,
                    &per_row,
                    &f.category,
                    &f.name,
                    rows(&r.likelihood).into_iter(),
                )?;
            }
        }
        if let Some((out, format)) = &opts.plots {
            for (f, r) in corpus.files.iter().zip(&replays) {
                let ranges = f.labels.windows().iter().map(|w| (w.first, w.last));
                let probation = nab::probation_rows(f.series.rows());
                plots::write(
                    out, format, name, &f.key, &f.series, r, ranges, probation, params,
                )?;
            }
        }
        let likelihood: Vec<&[f64]> = replays.iter().map(|r| &r.likelihood[..]).collect();
        let detections: Vec<&[f64]> = replays.iter().map(|r| &r.detection[..]).collect();
        runs.push(nab_run(
            &corpus,
            name,
            "likelihood",
            &likelihood,
            &replays,
            None,
        ));
        runs.push(nab_run(
            &corpus,
            name,
            "detections",
            &detections,
            &replays,
            Some(0.5),
        ));
        let events: Vec<&[f64]> = events.iter().map(|e| &e[..]).collect();
        runs.push(nab_run(&corpus, name, "events", &events, &replays, None));
    }
    Ok(NabReport {
        dir: dir.display().to_string(),
        files: corpus.files.len(),
        rows: corpus.files.iter().map(|f| f.series.rows()).sum(),
        windows: total_windows(&corpus.files),
        duplicate_rows: corpus.files.iter().map(|f| f.series.duplicates()).sum(),
        runs,
    })
}

fn total_windows(files: &[NabFile]) -> usize {
    files.iter().map(|f| f.labels.windows().len()).sum()
}

/// Scores one per-row input for every profile: at `fixed` threshold, or the swept one.
fn nab_run(
    corpus: &NabCorpus,
    detector: &str,
    input: &str,
    scores: &[&[f64]],
    replays: &[Replay],
    fixed: Option<f64>,
) -> NabRun {
    let labelled: Vec<(&[f64], &Labels)> = scores
        .iter()
        .zip(&corpus.files)
        .map(|(s, f)| (*s, &f.labels))
        .collect();
    let windows = total_windows(&corpus.files);
    let mut per_file: Vec<Vec<FileScore>> = vec![Vec::new(); corpus.files.len()];
    let mut profiles = Vec::new();
    for profile in &corpus.profiles {
        let threshold = fixed.or_else(|| nab::sweep(&labelled, profile).threshold);
        let scored: Vec<FileScore> = labelled
            .iter()
            .map(|(s, l)| nab::score_file(s, l, profile, threshold.unwrap_or(f64::INFINITY)))
            .collect();
        profiles.push(profile_result(profile, threshold, &scored, windows));
        for (acc, s) in per_file.iter_mut().zip(scored) {
            acc.push(s);
        }
    }
    let files = corpus
        .files
        .iter()
        .zip(replays)
        .zip(per_file)
        .map(|((f, r), scores)| NabFileResult {
            file: f.key.clone(),
            rows: f.series.rows(),
            windows: f.labels.windows().len(),
            probation: nab::probation_rows(f.series.rows()),
            pipeline_windows: r.windows,
            pipeline_detections: r.detections,
            scores,
        })
        .collect();
    NabRun {
        detector: detector.to_string(),
        input: input.to_string(),
        profiles,
        files,
    }
}

fn profile_result(
    profile: &Profile,
    threshold: Option<f64>,
    scored: &[FileScore],
    windows: usize,
) -> ProfileResult {
    let raw = scored.iter().map(|s| s.raw).sum();
    ProfileResult {
        profile: profile.name.clone(),
        threshold,
        raw,
        null_raw: profile.null_raw(windows),
        perfect_raw: profile.perfect_raw(windows),
        normalised: profile.normalise(raw, windows),
        detections: scored.iter().map(|s| s.detections).sum(),
        tp: scored.iter().map(|s| s.tp).sum(),
        fp: scored.iter().map(|s| s.fp).sum(),
        fn_: scored.iter().map(|s| s.fn_).sum(),
    }
}

fn evaluate_skab(
    dir: &Path,
    detectors: &[(String, ValidPipelineParams)],
    opts: &EvalOptions,
) -> Result<SkabReport> {
    let warmup = opts.skab_warmup.as_deref();
    let warm = warmup.map(|p| corpus::read_skab(p, false)).transpose()?;
    let files = corpus::skab_files(dir)?
        .iter()
        .map(|p| {
            let mut f = corpus::read_skab(p, true)?;
            f.name = p.strip_prefix(dir).unwrap_or(p).display().to_string();
            Ok(f)
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(w) = &warm {
        for f in &files {
            if f.series.channel_names != w.series.channel_names {
                bail!(
                    "{}: sensor columns differ from the warm-up file's ({} vs {})",
                    f.name,
                    f.series.channel_names.join(","),
                    w.series.channel_names.join(",")
                );
            }
        }
    }
    let mut runs = Vec::new();
    for (name, params) in detectors {
        let replays = par_map(&files, |f| {
            runner::replay(params, warm.as_ref().map(|w| &w.series), &f.series, &f.name)
        })
        .into_iter()
        .collect::<Result<Vec<Replay>>>()?;
        let mut total = Confusion::default();
        let mut results = Vec::new();
        for (f, r) in files.iter().zip(&replays) {
            let labels = f.labels.as_deref().unwrap_or_default();
            if let Some((out, format)) = &opts.plots {
                let ranges = plots::row_ranges(labels);
                plots::write(out, format, name, &f.name, &f.series, r, ranges, 0, params)?;
            }
            let counts = Confusion::count(&r.alerting, labels);
            total.add(counts);
            results.push(SkabFileResult {
                file: f.name.clone(),
                rows: f.series.rows(),
                anomalous_rows: labels.iter().filter(|&&l| l).count(),
                pipeline_detections: r.detections,
                counts,
                metrics: counts.metrics(),
            });
        }
        runs.push(SkabRun {
            detector: name.clone(),
            files: results,
            total,
            metrics: total.metrics(),
        });
    }
    Ok(SkabReport {
        dir: dir.display().to_string(),
        warmup: warmup.map(|p| p.display().to_string()),
        runs,
    })
}
