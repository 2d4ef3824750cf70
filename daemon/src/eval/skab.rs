//! SKAB's outlier-detection metrics: a row is predicted anomalous while the daemon's alert
//! state is alerting; precision, recall and F1 over the labelled rows, FAR = FP/(FP+TN) and
//! MAR = FN/(FN+TP) in %. Totals add the counts of every file, then compute the metrics.

use serde::Serialize;

/// Row counts of one file or of a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

/// Metrics of a [`Confusion`]; `None` where the denominator is 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// False-alarm rate, %.
    pub far: Option<f64>,
    /// Missed-alarm rate, %.
    pub mar: Option<f64>,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl Confusion {
    /// Counts predicted against labelled rows.
    ///
    /// # Panics
    /// If the two slices differ in length.
    pub fn count(predicted: &[bool], labels: &[bool]) -> Self {
        assert_eq!(predicted.len(), labels.len(), "one prediction per label");
        let mut c = Self::default();
        for (&p, &l) in predicted.iter().zip(labels) {
            match (p, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    pub fn add(&mut self, other: Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.tn += other.tn;
        self.fn_ += other.fn_;
    }

    pub fn metrics(&self) -> Metrics {
        let precision = ratio(self.tp, self.tp + self.fp);
        let recall = ratio(self.tp, self.tp + self.fn_);
        let f1 = match (precision, recall) {
            (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
            (Some(_), Some(_)) => Some(0.0),
            // Nothing predicted but something labelled: nothing found.
            (None, Some(_)) => Some(0.0),
            _ => None,
        };
        Metrics {
            precision,
            recall,
            f1,
            far: ratio(self.fp, self.fp + self.tn).map(|r| 100.0 * r),
            mar: ratio(self.fn_, self.fn_ + self.tp).map(|r| 100.0 * r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_metrics_from_hand_computed_rows() {
        let pred = [true, true, false, false, true, false];
        let label = [true, false, false, true, true, false];
        let c = Confusion::count(&pred, &label);
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 2,
                fn_: 1
            }
        );
        let m = c.metrics();
        assert_eq!(m.precision, Some(2.0 / 3.0));
        assert_eq!(m.recall, Some(2.0 / 3.0));
        assert!((m.f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.far.unwrap() - 100.0 / 3.0).abs() < 1e-12);
        assert!((m.mar.unwrap() - 100.0 / 3.0).abs() < 1e-12);
        let mut total = c;
        total.add(Confusion {
            tp: 0,
            fp: 0,
            tn: 4,
            fn_: 0,
        });
        assert!((total.metrics().far.unwrap() - 100.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn silent_detector_has_f1_0_and_mar_100() {
        let c = Confusion::count(&[false, false], &[true, false]);
        let m = c.metrics();
        assert_eq!(
            (m.precision, m.f1, m.far, m.mar),
            (None, Some(0.0), Some(0.0), Some(100.0))
        );
    }
}
