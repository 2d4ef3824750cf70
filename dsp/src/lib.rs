//! # sparsewatch-dsp: pure signal processing for sparsewatch
//!
//! Everything numeric the daemon does lives here, with no I/O, no clock, no threads, no
//! logging and no async: inputs are samples with event timestamps, outputs are return values.
//! Randomness, where a stage needs it, comes from a seeded RNG kept in its state, so the same
//! input always gives byte-identical output, and every stage's state is serde-serialisable
//! for checkpoints.
//!
//! ## Map
//!
//! - [`sample`]: [`Sample`], one validated reading (event time + finite channel values).
//! - [`window`]: the [`Framer`](window::Framer) (window length L, hop H, C channels, gaps and
//!   out-of-order samples handled) and the online [`Normaliser`](window::Normaliser).
//! - [`dictionary`]: the online orthogonal dictionary learner (stochastic Frank–Wolfe on the
//!   ℓ3 objective, polar-factor oracle by Newton–Schulz with an SVD fallback), with stable atom
//!   identity across updates.
//! - [`coding`]: [`SparseCode`], a window's code in the dictionary (x = Dᵀy, top-k, residual,
//!   energy), allocation-free.
//! - [`memory`]: the Sparsey-style associative memory ([`SdrMemory`]; weights and index
//!   allocated at their first write) and the encoders from sparse codes and scalars to
//!   binary inputs ([`SdrEncoder`]).
//! - [`score`]: raw scores ([`gated`](score::gated), the default: the baseline's score
//!   cleared for window states a per-channel memory of rare states has seen;
//!   [`baseline`](score::baseline): rolling fit of window features on two time scales;
//!   [`residual`](score::residual): the dictionary's reconstruction residual;
//!   [`memory`](score::memory): novelty of the window's code in the memory), the HTM-style
//!   [`likelihood`](score::likelihood), and the [`alert`](score::alert) state machine
//!   (hysteresis, learning gate).
//! - [`pipeline`]: [`Pipeline`], one per stream, wiring the stages in order; its
//!   [`PipelineParams`] is the `[pipeline]` table of the daemon's configuration.
//! - [`params`]: [`ParamError`], the error every checked parameter struct returns.
//!
//! ## Data flow of one sample
//!
//! `Pipeline::push(sample)` → framer (a window every H samples once L are held) → normaliser
//! → sparse code in the learned dictionary → scorer (raw score in [0, 1]) → likelihood (None
//! during warm-up) → alerter (onset raises a [`Detection`]) → the scorer and the dictionary
//! learn the window unless the stream is alerting.

pub mod coding;
pub mod dictionary;
pub mod memory;
pub mod params;
pub mod pipeline;
pub mod sample;
pub mod score;
pub mod window;

pub use coding::SparseCode;
pub use dictionary::{DictionaryParams, LearnScratch, OrthoDictionary};
pub use memory::{CodeInput, EncoderParams, MemoryParams, Recall, SdrEncoder, SdrMemory};
pub use params::ParamError;
pub use pipeline::{
    Detection, DetectorKind, Explanation, Pipeline, PipelineCounters, PipelineParams, PushResult,
    ValidPipelineParams, WindowReport,
};
pub use sample::{Sample, SampleError, MAX_CHANNELS};
pub use score::{AlertState, AlertStep};
pub use window::PushOutcome;
