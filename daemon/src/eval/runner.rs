//! Replaying a recorded series through a fresh [`Pipeline`], one sample per row, and turning
//! the window reports into per-row values.
//!
//! A report arrives on the row that completes a window (every hop samples). Each row carries
//! the most recent report up to and including it: its likelihood (0 before the first report
//! and during warm-up) and whether the stream is alerting (onset or ongoing incident). The row
//! that brought a detection is marked. Rows whose timestamp repeats the previous row's are not
//! fed (the framer would refuse them) but keep the current values, so every row is scored.

use anyhow::{bail, Result};
use sparsewatch_dsp::{AlertStep, Pipeline, Sample, ValidPipelineParams};

use super::corpus::Series;

/// Per-row outputs of one replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    /// The likelihood of the most recent report, in [0, 1]; 0 before one has a likelihood.
    pub likelihood: Vec<f64>,
    /// The raw score of the most recent report (0 before the first), for the plots.
    pub score: Vec<f64>,
    /// Whether the most recent report had a likelihood (false before and in warm-up).
    pub scored: Vec<bool>,
    /// 1.0 on rows whose report carried a detection, else 0.0.
    pub detection: Vec<f64>,
    /// Whether the most recent report left the stream alerting.
    pub alerting: Vec<bool>,
    pub windows: u64,
    pub detections: u64,
    /// Rows not fed because their timestamp repeats the previous row's.
    pub duplicates: u64,
    /// Gaps longer than `framer.max_gap_ms` (each discards a partial window).
    pub gaps: u64,
}

/// Feeds `warmup` (outputs discarded) and then `series` through one new pipeline.
pub fn replay(
    params: &ValidPipelineParams,
    warmup: Option<&Series>,
    series: &Series,
    name: &str,
) -> Result<Replay> {
    let mut pipeline = Pipeline::new(params, series.channels);
    if let Some(w) = warmup {
        if w.channels != series.channels {
            bail!(
                "{name}: {} channels, the warm-up file has {}",
                series.channels,
                w.channels
            );
        }
        if let (Some(&end), Some(&start)) = (w.ts_ms.last(), series.ts_ms.first()) {
            if end >= start {
                bail!("{name}: starts at or before the end of the warm-up file");
            }
        }
        feed(&mut pipeline, w, name)?;
    }
    let before = pipeline.counters();
    let mut out = feed(&mut pipeline, series, name)?;
    let after = pipeline.counters();
    out.windows = after.windows - before.windows;
    out.detections = after.detections - before.detections;
    out.gaps = after.gaps - before.gaps;
    Ok(out)
}

fn feed(pipeline: &mut Pipeline, series: &Series, name: &str) -> Result<Replay> {
    let rows = series.rows();
    let mut out = Replay {
        likelihood: Vec::with_capacity(rows),
        score: Vec::with_capacity(rows),
        scored: Vec::with_capacity(rows),
        detection: Vec::with_capacity(rows),
        alerting: Vec::with_capacity(rows),
        ..Replay::default()
    };
    let (mut likelihood, mut alerting) = (0.0, false);
    // Learning buffers allocated once for the file, not at every dictionary step.
    let mut scratch = sparsewatch_dsp::LearnScratch::new();
    let (mut score, mut scored) = (0.0, false);
    for i in 0..rows {
        let ts = series.ts_ms[i];
        let mut detected = false;
        if pipeline.last_ts() == Some(ts) {
            out.duplicates += 1;
        } else {
            let sample = Sample::new(ts, series.row(i))
                .map_err(|e| anyhow::anyhow!("{name}: row {}: {e}", i + 1))?;
            if let Some(r) = pipeline.push_with(sample, &mut scratch).report {
                let l = r.likelihood.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&l) {
                    bail!("{name}: row {}: likelihood {l} outside [0, 1]", i + 1);
                }
                likelihood = l;
                score = r.score;
                scored = r.likelihood.is_some();
                alerting = matches!(r.step, AlertStep::Onset | AlertStep::Ongoing);
                detected = r.detection.is_some();
            }
        }
        out.likelihood.push(likelihood);
        out.score.push(score);
        out.scored.push(scored);
        out.detection.push(if detected { 1.0 } else { 0.0 });
        out.alerting.push(alerting);
    }
    Ok(out)
}
