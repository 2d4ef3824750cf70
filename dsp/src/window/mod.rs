//! Windowing: the framer cuts a stream of samples into overlapping multichannel windows,
//! and the normaliser rescales each channel online so later stages see comparable numbers.

mod framer;
mod normaliser;

pub use framer::{Framer, FramerParams, PushOutcome, WindowView};
pub use normaliser::{Normaliser, NormaliserParams};
