//! The NAB scorer, as `../shared/datasets/README.md` describes it. Pure: scores and labels in,
//! numbers out.
//!
//! - The first [`probation_rows`] rows of a file are never scored.
//! - A row is a detection when its score is `>=` the threshold.
//! - Inside a window `[L, R]` only the earliest detection counts, worth
//!   `A_TP · S(−(R − i + 1)/(R − L + 1)) / S(−1)`; a window without one costs `A_FN`.
//! - A detection outside every window adds `A_FP · S((i − R)/(w − 1))` for the last window
//!   before it (right edge `R`, width `w` rows), or `−A_FP` when no window precedes it.
//! - The threshold of a profile maximises the corpus total over every distinct score value
//!   ([`sweep`]); ties go to the higher threshold.
//!
//! [`score_file`] evaluates one threshold directly and is the reference; [`sweep`] finds the
//! best threshold in one pass over the corpus sorted by score (O(n log n), exact: no rounding
//! of scores), and its result is re-evaluated with [`score_file`] before it is reported.

use serde::Serialize;

/// Rows at the start of a file that are never scored: min(⌊15 % of the rows⌋, 750).
pub fn probation_rows(rows: usize) -> usize {
    (rows * 15 / 100).min(750)
}

/// NAB's scaled sigmoid: `2 / (1 + e^(5x)) − 1`, and −1 for `x > 3`.
pub fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// One scoring profile: the weights of a true positive, a false positive and a false negative.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    pub a_tp: f64,
    pub a_fp: f64,
    pub a_fn: f64,
}

/// An anomaly window as inclusive row indices `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub first: usize,
    pub last: usize,
}

impl Window {
    pub fn width(&self) -> usize {
        self.last - self.first + 1
    }
}

/// The labels of one file: its row count and its windows, sorted and disjoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    rows: usize,
    windows: Vec<Window>,
}

/// Why a set of windows cannot label a file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    #[error("window rows {first}..={last} are empty or beyond the {rows} rows of the file")]
    OutOfRange {
        first: usize,
        last: usize,
        rows: usize,
    },
    #[error("windows at rows {0}..={1} and {2}..={3} overlap")]
    Overlap(usize, usize, usize, usize),
}

impl Labels {
    /// Sorts the windows; refuses empty, out-of-range and overlapping ones.
    pub fn new(rows: usize, mut windows: Vec<Window>) -> Result<Self, LabelError> {
        windows.sort_by_key(|w| w.first);
        for w in &windows {
            if w.first > w.last || w.last >= rows {
                return Err(LabelError::OutOfRange {
                    first: w.first,
                    last: w.last,
                    rows,
                });
            }
        }
        for pair in windows.windows(2) {
            if pair[1].first <= pair[0].last {
                let (a, b) = (pair[0], pair[1]);
                return Err(LabelError::Overlap(a.first, a.last, b.first, b.last));
            }
        }
        Ok(Self { rows, windows })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// For each row: the window it is in, or the last window that ended before it.
    fn roles(&self) -> Vec<Role> {
        let mut roles = Vec::with_capacity(self.rows);
        let mut next = 0; // index of the first window that does not end before the row
        for i in 0..self.rows {
            while next < self.windows.len() && self.windows[next].last < i {
                next += 1;
            }
            let role = match self.windows.get(next) {
                Some(w) if w.first <= i => Role::Inside(next),
                _ => Role::After(next.checked_sub(1)),
            };
            roles.push(role);
        }
        roles
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Inside(usize),
    After(Option<usize>),
}

impl Profile {
    /// Worth of a detection at row `i` inside window `w`.
    pub fn tp_value(&self, w: Window, i: usize) -> f64 {
        let x = -((w.last - i + 1) as f64) / w.width() as f64;
        self.a_tp * scaled_sigmoid(x) / scaled_sigmoid(-1.0)
    }

    /// Worth (≤ 0) of a detection at row `i` outside every window; `before` is the last
    /// window that ended before `i`. A one-row window has no width to scale by: full cost.
    pub fn fp_value(&self, before: Option<Window>, i: usize) -> f64 {
        match before {
            Some(w) if w.width() > 1 => {
                self.a_fp * scaled_sigmoid((i - w.last) as f64 / (w.width() - 1) as f64)
            }
            _ => -self.a_fp,
        }
    }

    /// Raw score of the detector that never detects.
    pub fn null_raw(&self, windows: usize) -> f64 {
        -self.a_fn * windows as f64
    }

    /// Raw score of the detector that detects every window at its left edge and nothing else.
    pub fn perfect_raw(&self, windows: usize) -> f64 {
        self.a_tp * windows as f64
    }

    /// `100 · (raw − null) / (perfect − null)`; `None` when the corpus has no window.
    pub fn normalise(&self, raw: f64, windows: usize) -> Option<f64> {
        let (null, perfect) = (self.null_raw(windows), self.perfect_raw(windows));
        (perfect > null).then(|| 100.0 * (raw - null) / (perfect - null))
    }
}

/// What one threshold does to one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FileScore {
    pub raw: f64,
    /// Scored rows at or above the threshold.
    pub detections: usize,
    /// Windows with a detection, windows without, detections outside every window.
    pub tp: usize,
    pub fn_: usize,
    pub fp: usize,
}

/// Scores one file at one threshold, directly from the definition.
///
/// # Panics
/// If `scores.len()` differs from the labels' row count.
pub fn score_file(scores: &[f64], labels: &Labels, profile: &Profile, threshold: f64) -> FileScore {
    assert_eq!(scores.len(), labels.rows, "one score per row");
    let mut best: Vec<Option<f64>> = vec![None; labels.windows.len()];
    let mut out = FileScore::default();
    let roles = labels.roles();
    for i in probation_rows(labels.rows)..labels.rows {
        if scores[i] < threshold {
            continue;
        }
        out.detections += 1;
        match roles[i] {
            Role::Inside(k) => {
                // Rows come in order, so the first detection seen is the earliest.
                best[k].get_or_insert_with(|| profile.tp_value(labels.windows[k], i));
            }
            Role::After(before) => {
                out.fp += 1;
                out.raw += profile.fp_value(before.map(|k| labels.windows[k]), i);
            }
        }
    }
    for b in best {
        match b {
            Some(v) => {
                out.tp += 1;
                out.raw += v;
            }
            None => {
                out.fn_ += 1;
                out.raw -= profile.a_fn;
            }
        }
    }
    out
}

/// The threshold a sweep chose: `None` means above every score (no detection at all).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sweep {
    pub threshold: Option<f64>,
    pub raw: f64,
}

/// Totals closer than this are a tie (summation order differs between thresholds).
const TIE_TOLERANCE: f64 = 1e-9;

/// Finds the threshold that maximises the corpus total for `profile`.
///
/// Candidates: every distinct score of a scored (post-probation) row, plus "above every
/// score", which is the null detector. Rows are sorted by score once, descending; lowering
/// the threshold to the next distinct value adds that value's rows as detections, and each
/// changes the total by a known amount (its false-positive value, or the gain of its window
/// when it is earlier than the window's best detection so far). Ties go to the higher
/// threshold. O(n log n) in the number of scored rows.
///
/// # Panics
/// If a file's score count differs from its row count, or a score is NaN.
pub fn sweep(files: &[(&[f64], &Labels)], profile: &Profile) -> Sweep {
    struct Entry {
        score: f64,
        file: usize,
        row: usize,
    }
    let mut entries = Vec::new();
    let mut roles = Vec::with_capacity(files.len());
    let mut best_in_window: Vec<Vec<f64>> = Vec::with_capacity(files.len());
    let mut total = 0.0;
    for (f, (scores, labels)) in files.iter().enumerate() {
        assert_eq!(scores.len(), labels.rows, "one score per row");
        for (row, &score) in scores.iter().enumerate().skip(probation_rows(labels.rows)) {
            assert!(!score.is_nan(), "NaN score in file {f}, row {row}");
            entries.push(Entry {
                score,
                file: f,
                row,
            });
        }
        roles.push(labels.roles());
        best_in_window.push(vec![-profile.a_fn; labels.windows.len()]);
        total += profile.null_raw(labels.windows.len());
    }
    entries.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best = Sweep {
        threshold: None,
        raw: total,
    };
    let mut start = 0;
    while start < entries.len() {
        let value = entries[start].score;
        let mut end = start;
        while end < entries.len() && entries[end].score == value {
            let Entry { file, row, .. } = entries[end];
            let labels = files[file].1;
            match roles[file][row] {
                Role::Inside(k) => {
                    let v = profile.tp_value(labels.windows[k], row);
                    let current = &mut best_in_window[file][k];
                    if v > *current {
                        total += v - *current;
                        *current = v;
                    }
                }
                Role::After(before) => {
                    total += profile.fp_value(before.map(|k| labels.windows[k]), row);
                }
            }
            end += 1;
        }
        if total > best.raw + TIE_TOLERANCE {
            best = Sweep {
                threshold: Some(value),
                raw: total,
            };
        }
        start = end;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard() -> Profile {
        Profile {
            name: "standard".into(),
            a_tp: 1.0,
            a_fp: 0.11,
            a_fn: 1.0,
        }
    }

    /// 1000 rows (probation 150), one window at rows 500..=599.
    fn one_window() -> Labels {
        Labels::new(
            1000,
            vec![Window {
                first: 500,
                last: 599,
            }],
        )
        .unwrap()
    }

    fn with_detections(rows: usize, at: &[usize]) -> Vec<f64> {
        let mut s = vec![0.0; rows];
        for &i in at {
            s[i] = 1.0;
        }
        s
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn sigmoid_matches_its_definition() {
        assert!(close(scaled_sigmoid(0.0), 0.0));
        assert!(close(
            scaled_sigmoid(-1.0),
            2.0 / (1.0 + (-5.0f64).exp()) - 1.0
        ));
        assert_eq!(scaled_sigmoid(3.5), -1.0);
        assert!(scaled_sigmoid(3.0) > -1.0);
        assert_eq!(probation_rows(1000), 150);
        assert_eq!(probation_rows(100_000), 750);
    }

    /// A detection at the left edge earns A_TP; one at the right edge about 0; only the
    /// earliest of several counts, and the later ones are not false positives.
    #[test]
    fn detection_at_left_edge_earns_a_tp() {
        let labels = one_window();
        let s = score_file(&with_detections(1000, &[500]), &labels, &standard(), 0.5);
        assert!(close(s.raw, 1.0), "{s:?}");
        assert_eq!((s.tp, s.fp, s.fn_, s.detections), (1, 0, 0, 1));

        let right = score_file(&with_detections(1000, &[599]), &labels, &standard(), 0.5);
        let expected = scaled_sigmoid(-1.0 / 100.0) / scaled_sigmoid(-1.0);
        assert!(close(right.raw, expected) && right.raw > 0.0 && right.raw < 0.05);

        let both = score_file(
            &with_detections(1000, &[520, 510, 590]),
            &labels,
            &standard(),
            0.5,
        );
        let expected = scaled_sigmoid(-90.0 / 100.0) / scaled_sigmoid(-1.0);
        assert!(close(both.raw, expected));
        assert_eq!((both.tp, both.fp, both.detections), (1, 0, 3));
    }

    /// Just after a window a detection costs less than A_FP; three widths later the full A_FP.
    #[test]
    fn detection_after_a_window_costs_less_than_a_fp() {
        let labels = one_window();
        let p = standard();
        let s = score_file(&with_detections(1000, &[500, 610]), &labels, &p, 0.5);
        let fp = p.a_fp * scaled_sigmoid(11.0 / 99.0);
        assert!(close(s.raw, 1.0 + fp), "{s:?}");
        assert!(fp < 0.0 && fp > -p.a_fp);
        assert_eq!((s.tp, s.fp), (1, 1));

        let far = score_file(&with_detections(1000, &[500, 999]), &labels, &p, 0.5);
        assert!(close(far.raw, 1.0 - p.a_fp));
        // Before any window: the full cost (and the window is missed).
        let early = score_file(&with_detections(1000, &[200]), &labels, &p, 0.5);
        assert!(close(early.raw, -p.a_fp - p.a_fn));
    }

    /// Rows in the probationary period are never scored.
    #[test]
    fn detection_in_probation_is_ignored() {
        let labels = Labels::new(1000, vec![]).unwrap();
        let s = score_file(&with_detections(1000, &[0, 149]), &labels, &standard(), 0.5);
        assert_eq!(s, FileScore::default());
        let s = score_file(&with_detections(1000, &[150]), &labels, &standard(), 0.5);
        assert!(close(s.raw, -0.11));
    }

    /// A window without a detection costs A_FN.
    #[test]
    fn missed_window_costs_a_fn() {
        let mut p = standard();
        p.a_fn = 2.0;
        let s = score_file(&vec![0.0; 1000], &one_window(), &p, 0.5);
        assert!(close(s.raw, -2.0));
        assert_eq!((s.tp, s.fn_, s.fp), (0, 1, 0));
    }

    /// The null detector normalises to 0 and the perfect one to 100.
    #[test]
    fn null_and_perfect_normalise_to_0_and_100() {
        let labels = one_window();
        let p = standard();
        let null = score_file(&vec![0.0; 1000], &labels, &p, 0.5);
        let perfect = score_file(&with_detections(1000, &[500]), &labels, &p, 0.5);
        assert!(close(p.normalise(null.raw, 1).unwrap(), 0.0));
        assert!(close(p.normalise(perfect.raw, 1).unwrap(), 100.0));
        assert_eq!(p.normalise(0.0, 0), None);
        // The sweep chooses "no detection" for a constant score, which is the null score.
        let constant = vec![0.5; 1000];
        let s = sweep(&[(&constant, &labels)], &p);
        assert_eq!(s.threshold, None);
        assert!(close(s.raw, p.null_raw(1)));
    }

    /// Equal totals go to the higher threshold; the sweep agrees with direct evaluation.
    #[test]
    fn sweep_breaks_ties_towards_the_higher_threshold() {
        let labels = one_window();
        let p = standard();
        // 0.9 at the left edge, 0.7 later in the same window: threshold 0.9 and 0.7 score the
        // same (the later detection does not count), so 0.9 must win.
        let mut s = vec![0.0; 1000];
        s[500] = 0.9;
        s[550] = 0.7;
        let best = sweep(&[(&s, &labels)], &p);
        assert_eq!(best.threshold, Some(0.9));
        assert!(close(best.raw, 1.0));
        // A better, lower threshold is still found: 0.6 at the left edge, 0.8 at the right.
        let mut s = vec![0.0; 1000];
        s[599] = 0.8;
        s[500] = 0.6;
        let best = sweep(&[(&s, &labels)], &p);
        assert_eq!(best.threshold, Some(0.6));
        assert!(close(best.raw, score_file(&s, &labels, &p, 0.6).raw));
    }

    /// The sweep's best total equals the best direct evaluation over every candidate.
    #[test]
    fn sweep_matches_exhaustive_direct_evaluation() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(42);
        let a = Labels::new(
            800,
            vec![
                Window {
                    first: 300,
                    last: 340,
                },
                Window {
                    first: 600,
                    last: 650,
                },
            ],
        )
        .unwrap();
        let b = Labels::new(400, vec![]).unwrap();
        for p in [
            standard(),
            Profile {
                name: "fn".into(),
                a_tp: 1.0,
                a_fp: 0.11,
                a_fn: 2.0,
            },
        ] {
            for _ in 0..20 {
                let sa: Vec<f64> = (0..800)
                    .map(|_| (rng.random::<f64>() * 50.0).floor() / 50.0)
                    .collect();
                let sb: Vec<f64> = (0..400)
                    .map(|_| (rng.random::<f64>() * 50.0).floor() / 50.0)
                    .collect();
                let files = [(&sa[..], &a), (&sb[..], &b)];
                let got = sweep(&files, &p);
                let total = |t: f64| {
                    files
                        .iter()
                        .map(|(s, l)| score_file(s, l, &p, t).raw)
                        .sum::<f64>()
                };
                let mut candidates: Vec<f64> = sa.iter().chain(&sb).copied().collect();
                candidates.sort_by(|x, y| y.total_cmp(x));
                candidates.dedup();
                let mut want = (None, p.null_raw(2));
                for t in candidates {
                    let v = total(t);
                    if v > want.1 + TIE_TOLERANCE {
                        want = (Some(t), v);
                    }
                }
                assert_eq!(got.threshold, want.0);
                assert!((got.raw - want.1).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn labels_refuse_bad_windows() {
        assert!(Labels::new(10, vec![Window { first: 5, last: 10 }]).is_err());
        assert!(Labels::new(10, vec![Window { first: 5, last: 4 }]).is_err());
        let overlap = vec![Window { first: 1, last: 5 }, Window { first: 5, last: 6 }];
        assert!(matches!(
            Labels::new(10, overlap),
            Err(LabelError::Overlap(..))
        ));
    }
}
