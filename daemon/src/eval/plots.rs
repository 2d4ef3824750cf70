//! `eval --plots DIR`: a figure per benchmark file and detector
//! (`DIR/<detector>/<file>.<svg|png>`, the file's path flattened with `_`), drawn by
//! [`crate::plot`] from the per-row replay: the signal, the raw score and likelihood of the
//! most recent window, the threshold, the labelled windows, NAB's unscored probation and the
//! detections.

use std::path::Path;

use anyhow::Result;
use sparsewatch_dsp::ValidPipelineParams;

use super::corpus::Series;
use super::runner::Replay;
use crate::plot::{self, PlotData};

/// Writes the figure of one file's replay; `labelled` are row ranges (first, last);
/// `unscored`: the number of leading rows the benchmark does not score (NAB's probation).
#[allow(clippy::too_many_arguments)]
pub fn write(
    dir: &Path,
    format: &str,
    detector: &str,
    file: &str,
    series: &Series,
    replay: &Replay,
    labelled: impl Iterator<Item = (usize, usize)>,
    unscored: usize,
    params: &ValidPipelineParams,
) -> Result<()> {
    let ts = &series.ts_ms;
    let rows = |pick: &dyn Fn(usize) -> Option<f64>| -> Vec<(i64, f64)> {
        (0..series.rows())
            .filter_map(|i| pick(i).map(|v| (ts[i], v)))
            .collect()
    };
    let data = PlotData {
        title: format!(
            "{file} — detector {detector} ({})",
            plot::detections(replay.detections as usize)
        ),
        channels: series
            .channel_names
            .iter()
            .enumerate()
            .map(|(c, n)| (n.clone(), rows(&|i| Some(series.row(i)[c]))))
            .collect(),
        score: rows(&|i| replay.scored[i].then_some(replay.score[i])),
        likelihood: rows(&|i| replay.scored[i].then_some(replay.likelihood[i])),
        threshold: Some(params.get().alert.threshold),
        labelled: labelled.map(|(a, b)| (ts[a], ts[b])).collect(),
        unscored: (unscored > 0).then(|| (ts[0], ts[unscored.min(ts.len()) - 1])),
        detections: (0..series.rows())
            .filter(|&i| replay.detection[i] > 0.0)
            .map(|i| (ts[i], ts[i]))
            .collect(),
    };
    let name: String = file
        .trim_end_matches(".csv")
        .chars()
        .map(|c| if c == '/' || c == '\\' { '_' } else { c })
        .collect();
    plot::write(&dir.join(detector).join(format!("{name}.{format}")), &data)
}

/// Runs of `true` in per-row labels, as (first, last) row ranges.
pub fn row_ranges(labels: &[bool]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < labels.len() && !labels[i] {
            i += 1;
        }
        if i == labels.len() {
            return None;
        }
        let first = i;
        while i < labels.len() && labels[i] {
            i += 1;
        }
        Some((first, i - 1))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_runs() {
        let l = [false, true, true, false, true];
        assert_eq!(
            super::row_ranges(&l).collect::<Vec<_>>(),
            vec![(1, 2), (4, 4)]
        );
    }
}
