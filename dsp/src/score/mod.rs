//! Scoring: raw anomaly scores per window, the anomaly likelihood that calibrates them, and
//! the alert state machine that turns likelihoods into one detection per incident.
//!
//! - [`baseline`]: the rolling-window Gaussian reference detector (NAB's "windowed Gaussian"
//!   idea applied to per-window features).
//! - [`gated`]: the baseline's score, gated by the memory's novelty of the window's state
//!   (a recurring rare state stops alarming once it was learned).
//! - [`memory`]: familiarity of the window's code in the associative memory, with the
//!   residual folded in.
//! - [`residual`]: the dictionary's reconstruction residual, relative to its usual level.
//! - [`likelihood`]: the HTM-style anomaly likelihood (rolling Gaussian of averaged raw
//!   scores, one-sided upper tail, warm-up reported as such).
//! - [`alert`]: hysteresis, so one incident raises one event, and the learning gate.

pub mod alert;
pub mod baseline;
pub mod gated;
pub mod likelihood;
pub mod memory;
pub mod residual;
mod special;

pub use alert::{AlertParams, AlertState, AlertStep, Alerter};
pub use baseline::{BaselineParams, BaselineScorer, BaselineTail};
pub use gated::{GateReading, GatedParams, GatedScorer};
pub use likelihood::{AnomalyLikelihood, LikelihoodParams, LikelihoodScale};
pub use memory::{MemoryDetectorParams, MemoryScorer};
pub use residual::{ResidualParams, ResidualScorer};
pub use special::{erfc, normal_upper_tail};

/// A raw score for one window: in [0, 1], higher is more anomalous, plus the channel that
/// contributed most (for the explanation attached to a detection).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawScore {
    pub score: f64,
    pub channel: usize,
}
