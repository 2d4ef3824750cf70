//! Recorded sensor traffic (`fixtures/*.jsonl`): one MQTT message per line, in event-time
//! order, with its labels file (`*.labels.json`) saying where faults were injected.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// One recorded MQTT message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureMessage {
    /// Event time, ms since the Unix epoch; replays are paced by it.
    pub time_ms: i64,
    pub topic: String,
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// The exact payload text.
    pub payload: String,
}

fn default_qos() -> u8 {
    1
}

/// Where faults were injected in a fixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    pub fixture: String,
    pub faults: Vec<Fault>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub key: String,
    pub kind: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Reads a JSONL fixture; errors name the file and line. Times must not go backwards.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<FixtureMessage>> {
    Ok(read_jsonl_numbered(path)?
        .into_iter()
        .map(|(_, m)| m)
        .collect())
}

/// [`read_jsonl`], with each message's 1-based line number.
pub fn read_jsonl_numbered(path: &Path) -> anyhow::Result<Vec<(usize, FixtureMessage)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read fixture {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: FixtureMessage = serde_json::from_str(line)
            .with_context(|| {
                format!(
                    "{}:{}: not a fixture message (one JSON object per line: \
                     {{\"time_ms\":…,\"topic\":\"…\",\"qos\":1,\"payload\":\"<the MQTT payload as a JSON \
                     string>\"}})",
                    path.display(),
                    i + 1
                )
            })?;
        if let Some(prev) = out.last().map(|(_, p): &(usize, FixtureMessage)| p.time_ms) {
            if m.time_ms < prev {
                bail!(
                    "{}:{}: time_ms goes backwards ({} after {prev})",
                    path.display(),
                    i + 1,
                    m.time_ms
                );
            }
        }
        out.push((i + 1, m));
    }
    if out.is_empty() {
        bail!("fixture {} holds no messages", path.display());
    }
    Ok(out)
}

/// The labels file beside a fixture (`x.jsonl` → `x.labels.json`), if there is one.
pub fn read_labels(fixture: &Path) -> anyhow::Result<Option<Labels>> {
    let path = fixture.with_extension("labels.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read labels {}", path.display()))?;
    let labels = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a labels file", path.display()))?;
    Ok(Some(labels))
}

/// Resolves a fixture path given relative to the repository root, so the demo works from the
/// repository root and from elsewhere in a source checkout.
pub fn locate(path: &Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_path_buf();
    }
    let beside_sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    if beside_sources.exists() {
        beside_sources
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.jsonl");
        std::fs::write(
            &p,
            "{\"time_ms\":1,\"topic\":\"a\",\"payload\":\"1\"}\n{oops}\n",
        )
        .unwrap();
        let err = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(err.contains("f.jsonl:2"), "{err}");
        std::fs::write(&p, "{\"time_ms\":5,\"topic\":\"a\",\"payload\":\"1\"}\n{\"time_ms\":1,\"topic\":\"a\",\"payload\":\"1\"}\n").unwrap();
        let err = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(
            err.contains("f.jsonl:2") && err.contains("backwards"),
            "{err}"
        );
        std::fs::write(&p, "").unwrap();
        assert!(read_jsonl(&p).is_err());
    }
}
