//! Alert state machine: hysteresis so one incident raises one detection, and the gate that
//! keeps alerting windows out of the model.
//!
//! Quiet → Alerting when the likelihood reaches `threshold` (an *onset*: the only step that
//! raises a detection). Alerting → Quiet after `release_windows` consecutive windows below
//! `release`. While alerting, windows are not learned, so a fault that persists keeps its
//! incident open instead of teaching the model that it is normal; after `relearn_after`
//! windows in one incident, learning resumes by policy (the fault becomes the new normal).
//! With `learn_every = m > 0`, every m-th window of an incident is learned before that too
//! (the model follows normal drift at 1/m of its usual rate while an incident is open, so a
//! slow drift that opened it can close it again, while a fault that lasts fewer than about
//! m × history windows stays novel).
//!
//! Thresholds are on the likelihood's output scale (raw by default, where 0.5 on the baseline's
//! score is a Bonferroni p-value of 1e-5; on the log scale 0.5 ↔ L = 0.99999).

use serde::{Deserialize, Serialize};

use crate::params::{check_range, ParamError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertParams {
    /// Likelihood at or above which an incident starts. Range 0..=1, default 0.5.
    pub threshold: f64,
    /// Likelihood below which an alerting window counts towards release. Range 0..=threshold,
    /// default 0.3.
    pub release: f64,
    /// Consecutive windows below `release` that end an incident. Range 1..=100000, default 8.
    pub release_windows: u32,
    /// Windows into one incident after which learning resumes. 0 = never. Default 128
    /// (512 samples at hop 4).
    pub relearn_after: u32,
    /// While an incident is open (and before `relearn_after`), learn every m-th window.
    /// 0 = learn none of them. Range 0..=100000, default 32.
    pub learn_every: u32,
}

impl Default for AlertParams {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            release: 0.3,
            release_windows: 8,
            relearn_after: 128,
            learn_every: 32,
        }
    }
}

impl AlertParams {
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("threshold", "in 0..=1", self.threshold, 0.0, 1.0)?;
        check_range(
            "release",
            "in 0..=threshold",
            self.release,
            0.0,
            self.threshold,
        )?;
        check_range(
            "release_windows",
            "in 1..=100000",
            self.release_windows,
            1,
            100_000,
        )?;
        check_range("learn_every", "in 0..=100000", self.learn_every, 0, 100_000)?;
        Ok(())
    }
}

/// Where a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The likelihood is not fitted yet: nothing can be judged.
    Warmup,
    Quiet,
    Alerting,
}

/// The result of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStep {
    Warmup,
    Quiet,
    /// The window that opened an incident.
    Onset,
    /// A later window of an open incident.
    Ongoing,
    /// The window that closed an incident.
    Released,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alerter {
    params: AlertParams,
    state: AlertState,
    below: u32,
    incident_windows: u32,
}

impl Alerter {
    pub fn new(params: AlertParams) -> Self {
        params.check().expect("AlertParams must be checked");
        Self {
            params,
            state: AlertState::Warmup,
            below: 0,
            incident_windows: 0,
        }
    }

    pub fn params(&self) -> &AlertParams {
        &self.params
    }

    pub fn state(&self) -> AlertState {
        self.state
    }

    /// Replaces thresholds without touching the state (a live reload).
    pub fn set_params(&mut self, params: AlertParams) {
        params.check().expect("AlertParams must be checked");
        self.params = params;
    }

    pub fn observe(&mut self, likelihood: Option<f64>) -> AlertStep {
        let Some(l) = likelihood else {
            if self.state == AlertState::Warmup {
                return AlertStep::Warmup;
            }
            // A stream never goes back to warm-up; a missing value counts as quiet.
            return self.observe(Some(0.0));
        };
        match self.state {
            AlertState::Warmup | AlertState::Quiet => {
                if l >= self.params.threshold {
                    self.state = AlertState::Alerting;
                    self.below = 0;
                    self.incident_windows = 1;
                    AlertStep::Onset
                } else {
                    self.state = AlertState::Quiet;
                    AlertStep::Quiet
                }
            }
            AlertState::Alerting => {
                self.incident_windows = self.incident_windows.saturating_add(1);
                self.below = if l < self.params.release {
                    self.below + 1
                } else {
                    0
                };
                if self.below >= self.params.release_windows {
                    self.state = AlertState::Quiet;
                    self.below = 0;
                    AlertStep::Released
                } else {
                    AlertStep::Ongoing
                }
            }
        }
    }

    /// Whether an incident is open and has not reached `relearn_after` yet: a window learned
    /// now is learned only by the `learn_every` sampling, not because the change became the
    /// new normal.
    pub fn sampling_incident(&self) -> bool {
        self.state == AlertState::Alerting
            && !(self.params.relearn_after > 0 && self.incident_windows > self.params.relearn_after)
    }

    /// Whether the window just observed may be learned by the model.
    pub fn learning_allowed(&self) -> bool {
        match self.state {
            AlertState::Alerting => {
                let m = self.params.learn_every;
                (self.params.relearn_after > 0 && self.incident_windows > self.params.relearn_after)
                    || (m > 0 && self.incident_windows % m == 0)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerter() -> Alerter {
        Alerter::new(AlertParams {
            threshold: 0.99,
            release: 0.9,
            release_windows: 3,
            relearn_after: 5,
            learn_every: 0,
        })
    }

    #[test]
    fn one_incident_one_onset() {
        let mut a = alerter();
        assert_eq!(a.observe(None), AlertStep::Warmup);
        assert_eq!(a.observe(Some(0.5)), AlertStep::Quiet);
        assert_eq!(a.observe(Some(0.995)), AlertStep::Onset);
        assert!(!a.learning_allowed());
        // Flapping around the threshold stays one incident.
        for l in [0.5, 0.999, 0.5, 0.995] {
            assert_eq!(a.observe(Some(l)), AlertStep::Ongoing);
        }
        assert_eq!(a.observe(Some(0.1)), AlertStep::Ongoing);
        assert_eq!(a.observe(Some(0.1)), AlertStep::Ongoing);
        assert_eq!(a.observe(Some(0.1)), AlertStep::Released);
        assert!(a.learning_allowed());
        assert_eq!(a.observe(Some(0.999)), AlertStep::Onset);
    }

    #[test]
    fn learning_resumes_after_relearn_after_windows() {
        let mut a = alerter();
        a.observe(Some(0.5));
        a.observe(Some(1.0));
        let allowed: Vec<bool> = (0..6)
            .map(|_| {
                a.observe(Some(1.0));
                a.learning_allowed()
            })
            .collect();
        assert_eq!(allowed, vec![false, false, false, false, true, true]);
    }

    #[test]
    fn sampling_incident_until_relearn_after() {
        let mut a = alerter();
        a.observe(Some(0.5));
        assert!(!a.sampling_incident(), "quiet");
        a.observe(Some(1.0));
        let sampling: Vec<bool> = (0..6)
            .map(|_| {
                a.observe(Some(1.0));
                a.sampling_incident()
            })
            .collect();
        // relearn_after = 5: incident windows 2..=5 sample, 6 and 7 relearn.
        assert_eq!(sampling, vec![true, true, true, true, false, false]);
    }

    #[test]
    fn learn_every_lets_one_window_in_m_through_during_an_incident() {
        let mut a = Alerter::new(AlertParams {
            learn_every: 3,
            relearn_after: 0,
            ..alerter().params
        });
        a.observe(Some(0.5));
        assert_eq!(a.observe(Some(1.0)), AlertStep::Onset);
        assert!(!a.learning_allowed(), "the onset window is never learned");
        let allowed: Vec<bool> = (0..6)
            .map(|_| {
                a.observe(Some(1.0));
                a.learning_allowed()
            })
            .collect();
        // Incident windows 2..=7: the 3rd and 6th are learned.
        assert_eq!(allowed, vec![false, true, false, false, true, false]);
    }
}
