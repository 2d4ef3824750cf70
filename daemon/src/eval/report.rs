//! What `sparsewatch eval` reports: serialisable results (the `--json` file) and their text
//! tables, plus the per-row score files in NAB's results layout (`--results`).

use std::fmt::{self, Display, Formatter};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use sparsewatch_dsp::PipelineParams;

use super::nab::FileScore;
use super::skab::{Confusion, Metrics};

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The pipeline settings used (each run overrides `detector`).
    pub pipeline: PipelineParams,
    pub detectors: Vec<String>,
    pub nab: Option<NabReport>,
    pub skab: Option<SkabReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NabReport {
    pub dir: String,
    pub files: usize,
    pub rows: usize,
    pub windows: usize,
    /// Rows whose timestamp repeats the previous row's (scored, not fed to the pipeline).
    pub duplicate_rows: usize,
    pub runs: Vec<NabRun>,
}

/// One detector scored from one per-row input.
#[derive(Debug, Clone, Serialize)]
pub struct NabRun {
    pub detector: String,
    /// `likelihood` (threshold swept per profile) or `detections` (threshold 0.5).
    pub input: String,
    pub profiles: Vec<ProfileResult>,
    pub files: Vec<NabFileResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileResult {
    pub profile: String,
    /// `None`: above every score, i.e. no detection was the best choice.
    pub threshold: Option<f64>,
    pub raw: f64,
    pub null_raw: f64,
    pub perfect_raw: f64,
    /// `None` when the corpus has no window.
    pub normalised: Option<f64>,
    pub detections: usize,
    pub tp: usize,
    pub fp: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct NabFileResult {
    pub file: String,
    pub rows: usize,
    pub windows: usize,
    pub probation: usize,
    /// Windows the pipeline completed and detections (incident onsets) it raised.
    pub pipeline_windows: u64,
    pub pipeline_detections: u64,
    /// One entry per profile, in the order of [`NabRun::profiles`].
    pub scores: Vec<FileScore>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkabReport {
    pub dir: String,
    pub warmup: Option<String>,
    pub runs: Vec<SkabRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkabRun {
    pub detector: String,
    pub files: Vec<SkabFileResult>,
    pub total: Confusion,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkabFileResult {
    pub file: String,
    pub rows: usize,
    pub anomalous_rows: usize,
    pub pipeline_detections: u64,
    pub counts: Confusion,
    pub metrics: Metrics,
}

impl EvalReport {
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Writes `DIR/<detector>/<category>/<detector>_<name>` with `timestamp,value,anomaly_score`.
pub fn write_results_file(
    dir: &Path,
    detector: &str,
    category: &str,
    name: &str,
    rows: impl Iterator<Item = (String, f64, f64)>,
) -> Result<()> {
    let folder = dir.join(detector).join(category);
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let path = folder.join(format!("{detector}_{name}"));
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
    );
    writeln!(out, "timestamp,value,anomaly_score")?;
    for (ts, value, score) in rows {
        writeln!(out, "{ts},{value},{score}")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

impl Display for EvalReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let p = &self.pipeline;
        writeln!(
            f,
            "configuration: detectors {} | window_len {} hop {} max_gap_ms {} | alert threshold {} \
             release {} release_windows {} | likelihood learning {} + estimation {} windows",
            self.detectors.join(","),
            p.framer.window_len,
            p.framer.hop,
            p.framer.max_gap_ms,
            p.alert.threshold,
            p.alert.release,
            p.alert.release_windows,
            p.likelihood.learning_period,
            p.likelihood.estimation_samples,
        )?;
        if let Some(nab) = &self.nab {
            write!(f, "\n{nab}")?;
        }
        if let Some(skab) = &self.skab {
            write!(f, "\n{skab}")?;
        }
        self.write_summary(f)
    }
}

impl EvalReport {
    /// One line per detector after the tables: the figures a reader came for (the NAB scores
    /// of the daemon's own detections, SKAB's totals), so they need not be found among the
    /// per-file rows and the other inputs' tables.
    fn write_summary(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.nab.is_none() && self.skab.is_none() {
            return Ok(());
        }
        writeln!(
            f,
            "\nsummary (NAB: score of the daemon's detections, standard profile, then low-FP and \
             low-FN; SKAB: every file's rows together):"
        )?;
        for detector in &self.detectors {
            write!(f, "  {detector:<9}")?;
            let run = self.nab.as_ref().and_then(|n| {
                n.runs
                    .iter()
                    .find(|r| &r.detector == detector && r.input == "detections")
            });
            if let Some(run) = run {
                let score = |i: usize| run.profiles.get(i).and_then(|p| p.normalised);
                let counts = run.profiles.first();
                write!(
                    f,
                    " NAB {} (low_FP {}, low_FN {}; tp {} fp {} fn {})",
                    opt(score(0), 2),
                    opt(score(1), 2),
                    opt(score(2), 2),
                    counts.map_or(0, |p| p.tp),
                    counts.map_or(0, |p| p.fp),
                    counts.map_or(0, |p| p.fn_),
                )?;
            }
            let skab = self
                .skab
                .as_ref()
                .and_then(|s| s.runs.iter().find(|r| &r.detector == detector));
            if let Some(r) = skab {
                if run.is_some() {
                    write!(f, " |")?;
                }
                write!(
                    f,
                    " SKAB F1 {} FAR {} % MAR {} %",
                    opt(r.metrics.f1, 3),
                    opt(r.metrics.far, 1),
                    opt(r.metrics.mar, 1)
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl Display for NabReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "NAB {}: {} files, {} rows, {} windows, {} duplicate-timestamp rows (scored, not fed)",
            self.dir, self.files, self.rows, self.windows, self.duplicate_rows
        )?;
        for run in &self.runs {
            write!(f, "\n{run}")?;
        }
        Ok(())
    }
}

impl Display for NabRun {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "detector {}, scored from {}:", self.detector, self.input)?;
        if let Some(what) = input_legend(&self.input) {
            writeln!(f, "  ({what})")?;
        }
        let names: Vec<&str> = self.profiles.iter().map(|p| short(&p.profile)).collect();
        write!(
            f,
            "  {:<58} {:>5} {:>3} {:>5} {:>4} {:>3} {:>3} {:>3}",
            "file", "rows", "win", "p.det", "det", "tp", "fp", "fn"
        )?;
        for n in &names {
            write!(f, " {n:>9}")?;
        }
        writeln!(f)?;
        for file in &self.files {
            let s0 = file.scores.first().copied().unwrap_or_default();
            write!(
                f,
                "  {:<58} {:>5} {:>3} {:>5} {:>4} {:>3} {:>3} {:>3}",
                file.file,
                file.rows,
                file.windows,
                file.pipeline_detections,
                s0.detections,
                s0.tp,
                s0.fp,
                s0.fn_
            )?;
            for s in &file.scores {
                write!(f, " {:>9.3}", s.raw)?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "  (p.det: incidents the daemon raised; det/tp/fp/fn: at the {} threshold; \
             last columns: raw score per profile)",
            names.first().copied().unwrap_or("first")
        )?;
        for p in &self.profiles {
            let threshold = p
                .threshold
                .map_or_else(|| "none (no detection)".to_string(), |t| format!("{t:.6}"));
            writeln!(
                f,
                "  {:<20} score {:>8} | raw {:>9.3} (null {:.1}, perfect {:.1}) | threshold {} | \
                 detections {} tp {} fp {} fn {}",
                p.profile,
                opt(p.normalised, 2),
                p.raw,
                p.null_raw,
                p.perfect_raw,
                threshold,
                p.detections,
                p.tp,
                p.fp,
                p.fn_
            )?;
        }
        Ok(())
    }
}

/// What a NAB input is, for the line under its table's heading: three tables per detector
/// otherwise leave a reader guessing why one of them scores 0.
fn input_legend(input: &str) -> Option<&'static str> {
    Some(match input {
        "likelihood" => {
            "every row's likelihood, threshold swept per profile as NAB does: a score that \
             stays high through an incident pays for each of its rows outside a window, so this \
             input scores low; for comparison only"
        }
        "detections" => {
            "one row per incident onset at the alert threshold: the events the daemon \
             publishes; the headline score"
        }
        "events" => {
            "the onset rows' likelihoods, 0 elsewhere, threshold swept: what --results writes \
             for NAB's own scorer"
        }
        _ => return None,
    })
}

fn short(profile: &str) -> &str {
    match profile {
        "reward_low_FP_rate" => "low_FP",
        "reward_low_FN_rate" => "low_FN",
        other => other,
    }
}

impl Display for SkabReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "SKAB {} (warm-up: {}); a row is predicted anomalous while the stream is alerting",
            self.dir,
            self.warmup.as_deref().unwrap_or("none")
        )?;
        for run in &self.runs {
            writeln!(f, "\ndetector {}:", run.detector)?;
            writeln!(
                f,
                "  {:<24} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6}",
                "file",
                "rows",
                "anom",
                "p.det",
                "tp",
                "fp",
                "tn",
                "fn",
                "F1",
                "FAR%",
                "MAR%",
                "prec"
            )?;
            for r in &run.files {
                skab_line(
                    f,
                    &r.file,
                    Some(r.rows),
                    Some(r.anomalous_rows),
                    Some(r.pipeline_detections),
                    r.counts,
                    r.metrics,
                )?;
            }
            skab_line(f, "total", None, None, None, run.total, run.metrics)?;
        }
        Ok(())
    }
}

fn skab_line(
    f: &mut Formatter<'_>,
    name: &str,
    rows: Option<usize>,
    anomalous: Option<usize>,
    detections: Option<u64>,
    c: Confusion,
    m: Metrics,
) -> fmt::Result {
    let n = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    writeln!(
        f,
        "  {:<24} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6}",
        name,
        n(rows.map(|v| v as u64)),
        n(anomalous.map(|v| v as u64)),
        n(detections),
        c.tp,
        c.fp,
        c.tn,
        c.fn_,
        opt(m.f1, 3),
        opt(m.far, 1),
        opt(m.mar, 1),
        opt(m.precision, 3)
    )
}
