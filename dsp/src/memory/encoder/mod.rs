//! Encoders: a real-valued sparse code → a binary input x with a fixed number of active bits
//! (spec §4), written into a caller's `[u64]` buffer without allocating.
//!
//! Both encoders split the code into a shape ĉ = c/‖y‖ (what the memory should recognise)
//! and append scalar blocks for the energy ‖y‖² and the level, so amplitude and offset
//! anomalies change x even when the shape does not.
//!
//! - [`AtomSlotEncoder`] (A, the default): interpretable atom/sign/log-magnitude slots.
//! - [`ProjectionEncoder`] (B): seeded sparse random projection, top-s.
//!
//! [`SdrEncoder`] wraps either behind one API, chosen by [`EncoderParams`].

mod projection;
mod scalar;
mod slot;

use serde::{Deserialize, Serialize};

use crate::params::ParamError;

pub use projection::{ProjectionEncoder, ProjectionParams};
pub(crate) use scalar::ScalarBlock;
pub use scalar::ScalarBlockParams;
pub use slot::{AtomSlotEncoder, AtomSlotParams};

/// One window's sparse code as the encoders read it. Borrowed, so the caller's buffers are
/// used as they are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodeInput<'a> {
    /// Atoms of the kept coefficients (each < the dictionary size n), any order.
    pub indices: &'a [usize],
    /// Their coefficients c_j (signed, unnormalised), same length as `indices`.
    pub values: &'a [f64],
    /// ‖y‖², the window's energy; the shape is ĉ_j = c_j / ‖y‖. 0 gives an all-absent shape.
    pub energy: f64,
    /// The window's level, e.g. its mean (the level block's value).
    pub level: f64,
}

/// Which encoder, with its parameters. In TOML: `kind = "atom_slot"` or
/// `kind = "projection"` plus that encoder's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EncoderParams {
    AtomSlot(AtomSlotParams),
    Projection(ProjectionParams),
}

impl Default for EncoderParams {
    fn default() -> Self {
        EncoderParams::AtomSlot(AtomSlotParams::default())
    }
}

impl EncoderParams {
    pub fn check(&self) -> Result<(), ParamError> {
        match self {
            EncoderParams::AtomSlot(p) => p.check(),
            EncoderParams::Projection(p) => p.check(),
        }
    }
}

/// Either encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SdrEncoder {
    AtomSlot(AtomSlotEncoder),
    Projection(ProjectionEncoder),
}

impl SdrEncoder {
    /// Panics unless `params` pass [`EncoderParams::check`] and n ≥ 1.
    pub fn new(params: EncoderParams, dictionary_size: usize) -> Self {
        match params {
            EncoderParams::AtomSlot(p) => Self::AtomSlot(AtomSlotEncoder::new(p, dictionary_size)),
            EncoderParams::Projection(p) => {
                Self::Projection(ProjectionEncoder::new(p, dictionary_size))
            }
        }
    }

    /// N: bits of the encoded input.
    pub fn input_bits(&self) -> usize {
        match self {
            Self::AtomSlot(e) => e.input_bits(),
            Self::Projection(e) => e.input_bits(),
        }
    }

    /// s: active bits of every encoded input.
    pub fn active_bits(&self) -> usize {
        match self {
            Self::AtomSlot(e) => e.active_bits(),
            Self::Projection(e) => e.active_bits(),
        }
    }

    /// Active bits of the energy and level blocks alone (an input without atoms).
    pub fn scalar_active_bits(&self) -> usize {
        match self {
            Self::AtomSlot(e) => e.scalar_active_bits(),
            Self::Projection(e) => e.scalar_active_bits(),
        }
    }

    /// Writes x for `code` into `out` (cleared first; at least ⌈N/64⌉ words) and returns
    /// its active bit count.
    pub fn encode(&mut self, code: &CodeInput<'_>, out: &mut [u64]) -> usize {
        match self {
            Self::AtomSlot(e) => e.encode(code, out),
            Self::Projection(e) => e.encode(code, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;
    use crate::memory::bitset::{and_count, count_ones, words_for};

    const N_ATOMS: usize = 64;

    /// A random k-sparse code with unit-energy shape (plus a residual share of energy).
    fn random_code(rng: &mut Xoshiro256PlusPlus, k: usize) -> (Vec<usize>, Vec<f64>) {
        let mut idx: Vec<usize> = Vec::new();
        while idx.len() < k {
            let j = rng.random_range(0..N_ATOMS);
            if !idx.contains(&j) {
                idx.push(j);
            }
        }
        let vals = idx.iter().map(|_| rng.random_range(-1.0..1.0)).collect();
        (idx, vals)
    }

    fn encode(enc: &mut SdrEncoder, idx: &[usize], vals: &[f64], energy: f64) -> Vec<u64> {
        let mut out = vec![u64::MAX; words_for(enc.input_bits())];
        let input = CodeInput {
            indices: idx,
            values: vals,
            energy,
            level: 0.3,
        };
        let active = enc.encode(&input, &mut out);
        assert_eq!(active, enc.active_bits());
        assert_eq!(count_ones(&out), active, "reported count is the real count");
        out
    }

    fn encoders() -> Vec<SdrEncoder> {
        vec![
            SdrEncoder::new(EncoderParams::default(), N_ATOMS),
            SdrEncoder::new(
                EncoderParams::Projection(ProjectionParams::default()),
                N_ATOMS,
            ),
        ]
    }

    /// Both encoders: exactly the configured count for any code, including empty, NaN and
    /// zero-energy ones; N and s as documented.
    #[test]
    fn active_count_is_fixed() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xE1);
        let mut encs = encoders();
        assert_eq!(
            (encs[0].input_bits(), encs[0].active_bits()),
            (1024 + 24 + 128, 40)
        );
        assert_eq!(
            (encs[1].input_bits(), encs[1].active_bits()),
            (1024 + 128, 48)
        );
        for enc in &mut encs {
            for k in [0, 1, 3, 8, 20] {
                let (idx, vals) = random_code(&mut rng, k);
                encode(enc, &idx, &vals, 2.0);
            }
            encode(enc, &[3, 5], &[f64::NAN, 1.0], 1.0);
            encode(enc, &[3], &[1.0], 0.0);
            encode(enc, &[3], &[1.0], f64::INFINITY);
        }
    }

    /// Similar codes (small coefficient noise) share most bits; unrelated codes share few.
    #[test]
    fn similar_codes_overlap_unrelated_do_not() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xE2);
        for mut enc in encoders() {
            let (mut near, mut far) = (0.0, 0.0);
            let trials = 50;
            for _ in 0..trials {
                let (idx, vals) = random_code(&mut rng, 8);
                let energy: f64 = vals.iter().map(|v| v * v).sum::<f64>() * 1.1;
                let noisy: Vec<f64> = vals
                    .iter()
                    .map(|v| v * (1.0 + 0.05 * rng.random_range(-1.0..1.0)))
                    .collect();
                let (idx2, vals2) = random_code(&mut rng, 8);
                let energy2: f64 = vals2.iter().map(|v| v * v).sum::<f64>() * 1.1;
                let a = encode(&mut enc, &idx, &vals, energy);
                let b = encode(&mut enc, &idx, &noisy, energy);
                let c = encode(&mut enc, &idx2, &vals2, energy2);
                let s = enc.active_bits() as f64;
                near += and_count(&a, &b) as f64 / s;
                // The level block is shared by construction; count only the rest.
                far += (and_count(&a, &c) as f64 - 8.0) / (s - 8.0);
            }
            let (near, far) = (near / trials as f64, far / trials as f64);
            assert!(near > 0.75, "similar codes overlap {near}");
            assert!(far < 0.35, "unrelated codes overlap {far}");
        }
    }

    /// The slot encoder's bits mean what the docs say: atom 2 negative in bucket 5 (|ĉ| = 1
    /// → top bucket) sets bits 2·16 + 8 + 5 .. +3.
    #[test]
    fn slot_layout_is_interpretable() {
        let mut enc = AtomSlotEncoder::new(AtomSlotParams::default(), N_ATOMS);
        let mut out = vec![0u64; words_for(enc.input_bits())];
        let input = CodeInput {
            indices: &[2],
            values: &[-2.0],
            energy: 4.0,
            level: 0.0,
        };
        enc.encode(&input, &mut out);
        let ones: Vec<usize> = crate::memory::bitset::ones(&out).collect();
        assert_eq!(&ones[..3], &[45, 46, 47]);
        // Seven absent ranks follow the 1024 slot bits, starting at rank 1.
        assert_eq!(&ones[3..6], &[1027, 1028, 1029]);
    }

    /// Encoder parameters deserialise with defaults, reject unknown fields and name bad ones.
    #[test]
    fn params_deserialise_and_check() {
        let p: EncoderParams =
            serde_json::from_str(r#"{"kind":"projection","active":16}"#).unwrap();
        assert!(matches!(&p, EncoderParams::Projection(q) if q.active == 16 && q.bits == 1024));
        assert!(
            serde_json::from_str::<EncoderParams>(r#"{"kind":"atom_slot","atomz":3}"#).is_err()
        );
        let bad = EncoderParams::AtomSlot(AtomSlotParams {
            energy: ScalarBlockParams {
                max: 0.0,
                ..ScalarBlockParams::energy()
            },
            ..AtomSlotParams::default()
        });
        assert_eq!(bad.check().unwrap_err().field, "energy.max");
    }

    /// Same seed, same R: two encoders built alike encode alike; serde keeps it.
    #[test]
    fn projection_is_seeded_and_serialises() {
        let p = EncoderParams::Projection(ProjectionParams::default());
        let mut a = SdrEncoder::new(p.clone(), N_ATOMS);
        let json = serde_json::to_string(&a).unwrap();
        let mut b: SdrEncoder = serde_json::from_str(&json).unwrap();
        let mut c = SdrEncoder::new(p, N_ATOMS);
        let (idx, vals) = (vec![1, 9, 40], vec![0.5, -0.7, 0.2]);
        let x = encode(&mut a, &idx, &vals, 1.0);
        assert_eq!(x, encode(&mut b, &idx, &vals, 1.0));
        assert_eq!(x, encode(&mut c, &idx, &vals, 1.0));
    }
}
