//! Online orthogonal dictionary learning by stochastic Frank–Wolfe (Xue & Lau,
//! arXiv 2103.01484; spec: `shared/specs/online-orthogonal-dictionary.md`).
//!
//! The learner finds an n×n orthogonal basis D in which the windows are sparse, by maximising
//! the expected ℓ3 "spikiness" E‖Dᵀy‖₃³ of the codes. The constraint DᵀD = I is relaxed to its
//! convex hull, the spectral-norm unit ball: the maximum of a convex function over that ball is
//! still attained on O(n), Frank–Wolfe iterates stay feasible without projection, and the
//! linear oracle over the ball is a polar factor. Nothing but the current iterate, a running
//! gradient and a step counter is kept, so the learner runs forever on a stream.
//!
//! - [`params`]: [`DictionaryParams`] (minibatch, schedule, objective, retraction, floors).
//! - [`learner`]: [`OrthoDictionary`], the state and the Frank–Wolfe step, and
//!   [`LearnScratch`], the step's work matrices, shared by the learners of one thread.
//! - `polar`: polar factors by scaled Newton–Schulz with an SVD fallback.
//! - `identity`: matching atoms across updates so an atom keeps its index and sign.
//!
//! Coding windows with the learned dictionary is in [`crate::coding`].

pub mod learner;
pub mod params;

mod identity;
mod polar;

/// The learner's two polar-factor routines, exposed for the comparison with other libraries
/// in `examples/polar.rs` (feature `faer`); not part of the API.
#[cfg(feature = "faer")]
#[doc(hidden)]
pub mod polar_routines {
    use nalgebra::DMatrix;

    /// Newton–Schulz buffers for n×n matrices.
    pub struct NewtonSchulz(super::polar::PolarWorkspace);

    impl NewtonSchulz {
        pub fn new(n: usize) -> Self {
            Self(super::polar::PolarWorkspace::new(n))
        }

        /// Replaces `x` by polar(x); the iterations, or `None` when it does not converge.
        pub fn polar(&mut self, x: &mut DMatrix<f64>) -> Option<u32> {
            self.0.newton_schulz(x)
        }
    }

    /// Replaces `x` by polar(x) through nalgebra's SVD; false when the SVD fails.
    pub fn polar_svd(x: &mut DMatrix<f64>) -> bool {
        super::polar::polar_svd(x)
    }
}

pub use learner::{DictionaryStats, LearnOutcome, LearnScratch, OrthoDictionary};
pub use params::{DictionaryParams, Objective, PolarMethod, Retraction, Schedule, MAX_MINIBATCH};
