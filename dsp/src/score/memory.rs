//! The memory detector: familiarity of the window's sparse code in the associative memory,
//! combined with what the dictionary cannot explain.
//!
//! Per window: the code (top-k atoms with sign and magnitude, the energy, the level) is
//! encoded into a fixed-count binary input, the memory is asked in recognition mode how
//! familiar it is (two-sided novelty 1 − G·R, spec §3a), and the dictionary's relative
//! residual ([`super::residual`]) is folded in as a probabilistic OR:
//! `raw = 1 − (1 − novelty)·(1 − residual)`. A window is novel when its *shape* was never
//! stored, or when the dictionary cannot express it at all. Learning writes the window into
//! the memory (single trial) only after it was scored, and not while alerting.

use serde::{Deserialize, Serialize};

use super::residual::{ResidualParams, ResidualScorer};
use crate::coding::SparseCode;
use crate::memory::{CodeInput, EncoderParams, MemoryParams, Recall, SdrEncoder, SdrMemory};
use crate::params::ParamError;

/// Parameters of the memory detector: the encoder and the memory, from [`crate::memory`],
/// and which parts make up the raw score (the switches exist for the ablation in
/// BENCHMARKS.md; the defaults are the full detector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryDetectorParams {
    /// Fold the dictionary's relative residual into the score. Default true.
    pub residual: bool,
    /// Give the memory the code's atoms (false: only the energy and level blocks, i.e. the
    /// memory sees no dictionary code). Default true.
    pub codes: bool,
    pub encoder: EncoderParams,
    pub sdr: MemoryParams,
}

impl Default for MemoryDetectorParams {
    fn default() -> Self {
        Self {
            residual: true,
            codes: true,
            encoder: EncoderParams::default(),
            sdr: MemoryParams::default(),
        }
    }
}

impl MemoryDetectorParams {
    pub fn check(&self) -> Result<(), ParamError> {
        self.encoder.check().map_err(|e| e.in_section("encoder"))?;
        self.sdr.check().map_err(|e| e.in_section("sdr"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryScorer {
    use_residual: bool,
    use_codes: bool,
    encoder: SdrEncoder,
    memory: SdrMemory,
    residual: ResidualScorer,
    /// The encoded input and the recall of the window scored last (reused by `learn`).
    input: Vec<u64>,
    recall: Recall,
}

impl MemoryScorer {
    /// A scorer for codes of dictionary dimension `n`.
    pub fn new(params: &MemoryDetectorParams, residual: ResidualParams, n: usize) -> Self {
        let encoder = SdrEncoder::new(params.encoder.clone(), n);
        let active = if params.codes {
            encoder.active_bits()
        } else {
            encoder.scalar_active_bits()
        };
        let memory = SdrMemory::new(params.sdr.clone(), encoder.input_bits(), active);
        Self {
            use_residual: params.residual,
            use_codes: params.codes,
            input: vec![0; memory.input_words()],
            recall: memory.new_recall(),
            residual: ResidualScorer::new(residual),
            encoder,
            memory,
        }
    }

    /// Raw score of the window coded as `code`, whose normalised samples have mean `level`.
    pub fn score(&mut self, code: &SparseCode, level: f64) -> f64 {
        let k = if self.use_codes {
            code.indices().len()
        } else {
            0
        };
        let input = CodeInput {
            indices: &code.indices()[..k],
            values: &code.values()[..k],
            energy: code.energy(),
            level,
        };
        self.input.fill(0);
        self.encoder.encode(&input, &mut self.input);
        self.memory.recognize(&self.input, &mut self.recall);
        let novelty = self.recall.two_sided_novelty().clamp(0.0, 1.0);
        let residual = self.residual.score(code.residual());
        if !self.use_residual {
            return novelty;
        }
        1.0 - (1.0 - novelty) * (1.0 - residual)
    }

    /// Stores the window scored last.
    pub fn learn(&mut self) {
        self.memory.learn(&self.input, &self.recall);
        self.residual.learn();
    }

    /// Starts a new sequence (after a gap): the next window gets no temporal context.
    /// Without [`MemoryParams::temporal`] this does nothing.
    pub fn break_sequence(&mut self) {
        self.memory.break_sequence();
    }

    /// Familiarity G of the window scored last.
    pub fn familiarity(&self) -> f64 {
        self.recall.familiarity
    }

    /// The recall of the window scored last: its SDR code, familiarity and best match.
    pub fn recall(&self) -> &Recall {
        &self.recall
    }

    pub fn memory(&self) -> &SdrMemory {
        &self.memory
    }
}
