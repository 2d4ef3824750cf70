//! `sparsewatch inspect STATE`: what a checkpoint holds, in plain text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sparsewatch_dsp::AlertState;

use super::store::{discarded_copies, CURRENT, PREVIOUS};
use super::{decode_file, Checkpoint};
use crate::metrics::now_ms;

/// The report on one file.
#[derive(Debug)]
pub struct Inspection {
    pub path: PathBuf,
    pub result: Result<Checkpoint, super::CheckpointError>,
}

/// Inspects a checkpoint file, or a state directory: both generations, then the copies kept
/// aside when streams were discarded at a start (newest first). Returns the reports; the
/// text for each is [`Inspection::render`].
pub fn inspect_path(path: &Path) -> std::io::Result<Vec<Inspection>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = [CURRENT, PREVIOUS]
            .iter()
            .map(|n| path.join(n))
            .filter(|p| p.exists())
            .collect();
        // Then the copies kept aside when streams were discarded at a start, newest first.
        files.extend(discarded_copies(path)?.into_iter().rev().map(|(_, p)| p));
        files
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no checkpoint in {}", path.display()),
        ));
    }
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p)?;
            Ok(Inspection {
                result: decode_file(&bytes),
                path: p,
            })
        })
        .collect()
}

impl Inspection {
    /// A header with the file's facts, then one line per stream, by key: channel names,
    /// record bytes, samples and windows seen, samples buffered towards the next window,
    /// alert state, detector, dictionary dimension, version and learning steps, detections
    /// (the last anomaly sequence number), and the memory's fill and learned windows.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let c = match &self.result {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(s, "{}: UNUSABLE: {e}", self.path.display());
                return s;
            }
        };
        let age_s = (now_ms() - c.meta.created_ms) as f64 / 1000.0;
        let created = chrono::DateTime::from_timestamp_millis(c.meta.created_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| c.meta.created_ms.to_string());
        let _ = writeln!(
            s,
            "{}: ok, format {}, {} bytes, written {created} ({age_s:.0} s ago) by sparsewatch {} on node {}, {} streams",
            self.path.display(),
            c.format,
            c.file_bytes,
            c.meta.daemon_version,
            c.meta.node,
            c.streams.len()
        );
        // Keys and channel lists vary in length: the two columns are as wide as their longest
        // entry, so the columns after them stay aligned.
        let kw = c
            .streams
            .iter()
            .map(|st| st.record.key.chars().count())
            .fold(28, usize::max);
        let cw = c
            .streams
            .iter()
            .map(|st| st.record.channels.join(",").chars().count())
            .fold(8, usize::max);
        let _ = writeln!(
            s,
            "{:<kw$} {:>cw$} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>4} {:>6} {:>6} {:>9} {:>8} {:>7}",
            "key",
            "channels",
            "bytes",
            "samples",
            "windows",
            "buffered",
            "state",
            "detector",
            "dict",
            "dver",
            "dsteps",
            "det",
            "mem_fill",
            "mem_n"
        );
        let mut streams: Vec<_> = c.streams.iter().collect();
        streams.sort_by(|a, b| a.record.key.cmp(&b.record.key));
        for st in streams {
            let p = &st.record.pipeline;
            let k = p.counters();
            let state = match p.alert_state() {
                AlertState::Warmup => "warmup",
                AlertState::Quiet => "quiet",
                AlertState::Alerting => "alerting",
            };
            let (n, ver, steps) = p
                .dictionary()
                .map(|d| {
                    (
                        d.n().to_string(),
                        d.version().to_string(),
                        d.steps().to_string(),
                    )
                })
                .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
            let (fill, learned) = p
                .memory()
                .map(|m| (format!("{:.4}", m.fill()), m.learned().to_string()))
                .unwrap_or_else(|| ("-".into(), "-".into()));
            let _ = writeln!(
                s,
                "{:<kw$} {:>cw$} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>4} {:>6} {:>6} {:>9} {:>8} {:>7}",
                st.record.key,
                st.record.channels.join(","),
                st.bytes,
                k.samples,
                k.windows,
                p.held(),
                state,
                p.params().detector.name(),
                n,
                ver,
                steps,
                k.detections,
                fill,
                learned
            );
        }
        s
    }
}
