//! Checkpoints: the learned state of every stream on disk, so a restart does not mean
//! re-learning and re-alarming.
//!
//! ## File format (version 2)
//!
//! ```text
//! offset  size  field
//!      0     8  magic  "SWSTATE\n"
//!      8     4  format version, u32 LE (2; 1 is read too)
//!     12     4  flags, u32 LE (0)
//!     16     8  payload length in bytes, u64 LE
//!     24     4  CRC-32 (IEEE) of the payload, u32 LE
//!     28     4  CRC-32 of bytes 0..28 (the header), u32 LE
//!     32     …  payload: records, each a u32 LE length and that many bytes of CBOR
//! ```
//!
//! The first record is [`Meta`]; each further record is one stream ([`StreamRecord`]: sensor
//! key, channel names, the whole `dsp::Pipeline`), keyed by sensor key, never by worker: the
//! key → worker hash is stable only within a build, so restoring re-dispatches every stream
//! to whichever worker owns its key now.
//!
//! ## Files in the state directory
//!
//! `checkpoint.swst` (the last good write) and `checkpoint.prev.swst` (the one before). A
//! write goes to `checkpoint.swst.tmp`, is fsynced, the current file becomes the previous one,
//! the temporary file becomes current (rename), and the directory is fsynced. A crash at any
//! point leaves at least one complete, checksummed generation. On load, a current file that
//! fails its checks is renamed `checkpoint.swst.rejected` (kept for diagnosis, and so the next
//! write cannot rotate the good previous generation away) and the previous one is used.
//!
//! `lock`: the daemon's exclusive `flock` on it, held for the process lifetime, keeps a second
//! daemon out of the directory ([`Store::lock_exclusive`]); it holds the pid of the daemon
//! that last took it, and is left behind (harmlessly: the lock dies with its process).

mod inspect;
pub mod store;

pub use inspect::{inspect_path, Inspection};
pub use store::{Fault, Generation, LoadOutcome, Loaded, Store};

use serde::{Deserialize, Serialize};
use sparsewatch_dsp::{DetectorKind, Pipeline, PipelineParams, ValidPipelineParams};
use thiserror::Error;

/// First bytes of every checkpoint file.
pub const MAGIC: [u8; 8] = *b"SWSTATE\n";
/// The format this build writes. 2 since the associative memory writes an empty weight bank
/// as empty rows (allocated at its first write): a build that read only version 1 would
/// take such a bank for one of 0 cells and panic at its first write, so it must refuse the
/// file instead. The records of version 1 are a subset; this build reads both.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 32;

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Wall-clock time of the snapshot, ms since the epoch.
    pub created_ms: i64,
    /// `node.id` of the daemon that wrote it.
    pub node: String,
    /// Version of the daemon that wrote it.
    pub daemon_version: String,
    /// Stream records that follow.
    pub streams: u64,
}

/// One stream's learned state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub key: String,
    /// Channel names in the stream's order (fixed by its first sample).
    pub channels: Vec<String>,
    pub pipeline: Pipeline,
    /// The stream's no-data condition was raised (its retained `"active": true` is out) and
    /// not yet cleared, so the restored stream publishes the clear at its first sample.
    /// Absent in checkpoints written before it existed: not silent.
    #[serde(default)]
    pub silent: bool,
}

/// A stream as read back, with the size of its record.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredStream {
    pub record: StreamRecord,
    pub bytes: usize,
}

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub meta: Meta,
    pub streams: Vec<RestoredStream>,
    /// Size of the whole file.
    pub file_bytes: usize,
    /// The file's format version.
    pub format: u32,
}

/// Why a checkpoint cannot be used.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("truncated: {got} bytes, expected {expected}")]
    Truncated { expected: u64, got: u64 },
    #[error("not a sparsewatch checkpoint (bad magic)")]
    BadMagic,
    #[error("header checksum mismatch (header damaged)")]
    HeaderChecksum,
    #[error("format version {found} is not supported by this build (it reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (data damaged)")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("incompatible stream record {index}: {reason}")]
    Incompatible { index: usize, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// CBOR of one stream's record whose no-data condition is not raised.
pub fn encode_stream(key: &str, channels: &[String], pipeline: &Pipeline) -> Vec<u8> {
    encode_stream_state(key, channels, pipeline, false)
}

/// CBOR of one stream's record, as a worker produces it for a snapshot (`silent`: see
/// [`StreamRecord::silent`]).
pub fn encode_stream_state(
    key: &str,
    channels: &[String],
    pipeline: &Pipeline,
    silent: bool,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Ref<'a> {
        key: &'a str,
        channels: &'a [String],
        pipeline: &'a Pipeline,
        silent: bool,
    }
    let mut out = Vec::with_capacity(64 * 1024);
    ciborium::into_writer(
        &Ref {
            key,
            channels,
            pipeline,
            silent,
        },
        &mut out,
    )
    .expect("a pipeline serialises to CBOR");
    out
}

/// The bytes of a checkpoint file holding `meta` and the encoded `streams`, in one buffer.
pub fn encode_file(meta: &Meta, streams: &[Vec<u8>]) -> Vec<u8> {
    let file = FileParts::new(meta, streams);
    let mut out = Vec::with_capacity(file.len());
    for part in file.parts() {
        out.extend_from_slice(part);
    }
    out
}

/// A checkpoint file as a sequence of slices (header + meta, then each record's length and
/// bytes), so it can be written without first copying every record into one buffer.
pub struct FileParts<'a> {
    head: Vec<u8>,
    lengths: Vec<[u8; 4]>,
    streams: &'a [Vec<u8>],
}

impl<'a> FileParts<'a> {
    pub fn new(meta: &Meta, streams: &'a [Vec<u8>]) -> Self {
        let mut meta_bytes = Vec::new();
        ciborium::into_writer(meta, &mut meta_bytes).expect("meta serialises");
        let len4 = |n: usize| {
            u32::try_from(n)
                .expect("a stream record is below 4 GiB")
                .to_le_bytes()
        };
        let lengths: Vec<[u8; 4]> = streams.iter().map(|s| len4(s.len())).collect();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len4(meta_bytes.len()));
        crc.update(&meta_bytes);
        for (len, record) in lengths.iter().zip(streams) {
            crc.update(len);
            crc.update(record);
        }
        let payload_len = 4 + meta_bytes.len() + streams.iter().map(|s| 4 + s.len()).sum::<usize>();
        let mut head = Vec::with_capacity(HEADER_LEN + 4 + meta_bytes.len());
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&(payload_len as u64).to_le_bytes());
        head.extend_from_slice(&crc.finalize().to_le_bytes());
        let header_crc = crc32fast::hash(&head);
        head.extend_from_slice(&header_crc.to_le_bytes());
        head.extend_from_slice(&len4(meta_bytes.len()));
        head.extend_from_slice(&meta_bytes);
        Self {
            head,
            lengths,
            streams,
        }
    }

    /// The file's bytes, in order.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.head.as_slice()).chain(
            self.lengths
                .iter()
                .zip(self.streams)
                .flat_map(|(len, record)| [len.as_slice(), record.as_slice()]),
        )
    }

    /// Size of the file.
    pub fn len(&self) -> usize {
        self.head.len() + self.streams.iter().map(|s| 4 + s.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Checks and decodes a checkpoint file's bytes. Every stream is decoded, so a record this
/// build cannot read makes the whole checkpoint incompatible (the caller then falls back to
/// the previous generation).
pub fn decode_file(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let (meta, records) = split_file(bytes)?;
    let streams = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let record: StreamRecord =
                ciborium::from_reader(r).map_err(|e| CheckpointError::Incompatible {
                    index: i,
                    reason: e.to_string(),
                })?;
            if record.channels.len() != record.pipeline.channels() {
                return Err(CheckpointError::Incompatible {
                    index: i,
                    reason: format!(
                        "key {:?}: {} channel names for a {}-channel pipeline",
                        record.key,
                        record.channels.len(),
                        record.pipeline.channels()
                    ),
                });
            }
            Ok(RestoredStream {
                record,
                bytes: r.len(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Checkpoint {
        meta,
        streams,
        file_bytes: bytes.len(),
        format: u32::from_le_bytes(bytes[8..12].try_into().expect("checked by split_file")),
    })
}

/// Checks the header and checksums, and splits the payload into the meta and the raw
/// stream records.
pub fn split_file(bytes: &[u8]) -> Result<(Meta, Vec<&[u8]>), CheckpointError> {
    // Magic first: a file too short for a header is a truncated checkpoint only if what it has
    // begins like one; anything else (`inspect /etc/hostname`) is not a checkpoint at all.
    if !MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) {
        return Err(CheckpointError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(CheckpointError::Truncated {
            expected: HEADER_LEN as u64,
            got: bytes.len() as u64,
        });
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..28]) != u32_at(28) {
        return Err(CheckpointError::HeaderChecksum);
    }
    let version = u32_at(8);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(CheckpointError::UnsupportedVersion { found: version });
    }
    let payload_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let expected = HEADER_LEN as u64 + payload_len;
    if bytes.len() as u64 != expected {
        return Err(CheckpointError::Truncated {
            expected,
            got: bytes.len() as u64,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    let stored = u32_at(24);
    if computed != stored {
        return Err(CheckpointError::PayloadChecksum { stored, computed });
    }
    let mut records = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(CheckpointError::Malformed(
                "a record length is cut off".into(),
            ));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() - 4 < len {
            return Err(CheckpointError::Malformed(format!(
                "a record of {len} bytes runs past the end"
            )));
        }
        records.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    let Some((first, streams)) = records.split_first() else {
        return Err(CheckpointError::Malformed("no meta record".into()));
    };
    let meta: Meta =
        ciborium::from_reader(*first).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    if meta.streams != streams.len() as u64 {
        return Err(CheckpointError::Malformed(format!(
            "meta lists {} streams, the file holds {}",
            meta.streams,
            streams.len()
        )));
    }
    Ok((meta, streams.to_vec()))
}

/// The parameters a stream learned under `have` can take when `want` is configured: `have`
/// with every difference from `want` that its learned state allows applied (see
/// [`reconcile`]), and whether that moves it from the baseline to the gated detector. Where
/// the result still differs from `want`, the stream is discarded. Pure, so a reload can tell
/// in advance which changed keys the next restart will discard streams for
/// (`reload::plan`).
pub fn fit_params(have: &PipelineParams, want: &PipelineParams) -> (PipelineParams, bool) {
    let mut fit = have.clone();
    fit.alert = want.alert.clone();
    let to_gated = fit.detector == DetectorKind::Baseline && want.detector == DetectorKind::Gated;
    if to_gated {
        fit.detector = DetectorKind::Gated;
        fit.gated = want.gated.clone();
    }
    if fit.detector == want.detector {
        if want.detector != DetectorKind::Gated {
            fit.gated = want.gated.clone();
        } else {
            fit.gated.sdr.index_capacity = want.gated.sdr.index_capacity;
        }
    }
    (fit, to_gated)
}

/// Fits a restored stream to the running pipeline parameters, keeping what it learned
/// wherever the new parameters allow. Equal parameters: restored as is. Otherwise, when the
/// differences are only of these kinds, they are applied and everything learned is kept:
/// - `pipeline.alert`: the new thresholds;
/// - learned with the `baseline` detector and configured for `gated` (the default before and
///   after the memory became it): the stream moves to the gated detector over what its
///   baseline learned, with empty memories;
/// - `pipeline.gated` when neither side is `gated` (no other detector reads it), or, for
///   `gated`, only its `sdr.index_capacity` (the best-match index starts again).
///
/// Anything else differs (window, detector, model sizes, …): the learned state does not
/// fit the configured model; the error names the sections that differ.
pub fn reconcile(
    mut record: StreamRecord,
    params: &ValidPipelineParams,
) -> Result<StreamRecord, String> {
    let want = params.get();
    let have = record.pipeline.params().clone();
    if &have == want {
        return Ok(record);
    }
    let (fit, to_gated) = fit_params(&have, want);
    if &fit != want {
        // Name only what could not be applied (not, say, new alert thresholds).
        let old = serde_json::to_value(&fit).expect("params serialise");
        let new = serde_json::to_value(want).expect("params serialise");
        let differ: Vec<String> = match (old, new) {
            (serde_json::Value::Object(o), serde_json::Value::Object(n)) => n
                .iter()
                .filter(|(k, v)| o.get(*k) != Some(v))
                .map(|(k, _)| format!("pipeline.{k}"))
                .collect(),
            _ => vec!["pipeline".into()],
        };
        return Err(format!(
            "learned with different {} than configured now",
            differ.join(", ")
        ));
    }
    let p = &mut record.pipeline;
    if have.alert != want.alert {
        p.set_alert_params(want.alert.clone())
            .map_err(|e| e.to_string())?;
    }
    if to_gated {
        if !p
            .adopt_gated(want.gated.clone())
            .map_err(|e| e.to_string())?
        {
            return Err("its parameters say baseline, its state is another detector's".into());
        }
    } else if have.gated != want.gated {
        p.set_gated_params(want.gated.clone())
            .map_err(|e| e.to_string())?;
    }
    if p.params() != want {
        return Err("its state could not take the configured parameters".into());
    }
    Ok(record)
}
