//! Reading recordings for `sparsewatch replay`: the project's JSONL of MQTT messages
//! ([`crate::fixtures`]) and delimited text (CSV) with a timestamp column and one column per
//! channel.
//!
//! A CSV row becomes the MQTT message a sensor would have sent: the topic is the configured
//! template filled with the sensor key's levels, the payload `{"ts":<ms>,"values":{…}}`. So
//! both kinds go through the daemon's own topic and payload decoding.
//!
//! What is an error and what is a counted skip (the same rules as the daemon, which skips bad
//! payloads and keeps running, except where a file is plainly not what was asked for):
//!
//! | input | outcome |
//! |---|---|
//! | empty file, header only, no usable row | error naming the file |
//! | `--ts-column` or a `--columns` name missing from the header | error `file:1` with the header |
//! | no `--columns`, and a column named like a label (`anomaly`, `changepoint`, `label`, …) | error `file:1` suggesting `--columns` without it |
//! | a row with too few or too many fields, an unreadable timestamp | error `file:line` |
//! | a timestamp earlier than the row before (JSONL: `time_ms` going backwards) | error `file:line` |
//! | a JSONL line that is not a fixture message | error `file:line` |
//! | a CSV cell that is not a finite number (empty, `NaN`, `n/a`, …) | the row is skipped and counted; the first few are listed with their line |
//! | a JSONL payload the daemon would refuse, a topic off the template | skipped and counted with its line, as the daemon does |

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::eval::corpus::parse_timestamp;
use crate::fixtures::{self, FixtureMessage};

/// How to read a CSV file.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub delimiter: char,
    /// Name of the timestamp column.
    pub ts_column: String,
    /// Channel columns; empty: every column but the timestamp.
    pub columns: Vec<String>,
    /// Sensor key the rows belong to, e.g. `plant1/pump1`.
    pub key: String,
}

/// One message of a recording, with the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub line: usize,
    pub msg: FixtureMessage,
}

/// A row or message left out, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub line: usize,
    pub reason: String,
}

/// A file read for replay.
#[derive(Debug, Clone)]
pub struct Recording {
    pub path: PathBuf,
    pub messages: Vec<Recorded>,
    /// Rows skipped while reading (CSV cells that are not numbers).
    pub skipped: Vec<Skip>,
}

/// Reads `path` as CSV when its extension is `.csv` (or `.txt`) or `csv` is given with a
/// key, and as JSONL otherwise.
pub fn read(path: &Path, csv: Option<&CsvOptions>, template: &str) -> Result<Recording> {
    match (is_csv(path), csv) {
        (true, Some(opts)) => read_csv(path, opts, template),
        (true, None) => bail!(
            "{}: a CSV file needs --key (the sensor key its rows belong to)",
            path.display()
        ),
        (false, _) => Ok(Recording {
            path: path.to_path_buf(),
            messages: fixtures::read_jsonl_numbered(path)?
                .into_iter()
                .map(|(line, msg)| Recorded { line, msg })
                .collect(),
            skipped: vec![],
        }),
    }
}

/// Whether [`read`] reads `path` as CSV (by its extension, `.csv` or `.txt`).
pub fn is_csv(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("txt"))
}

/// The topic a sensor with `key` publishes on under `template`: each `{name}` level takes the
/// next level of the key, in order.
pub fn topic_for(template: &str, key: &str) -> Result<String> {
    let mut parts = key.split('/');
    let mut levels = Vec::new();
    for level in template.split('/') {
        if level.starts_with('{') && level.ends_with('}') {
            let part = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| {
                anyhow!("key `{key}` has fewer levels than topic template `{template}`")
            })?;
            levels.push(part);
        } else {
            levels.push(level);
        }
    }
    if parts.next().is_some() {
        bail!("key `{key}` has more levels than topic template `{template}`");
    }
    Ok(levels.join("/"))
}

/// Parses a CSV timestamp: `YYYY-MM-DD HH:MM:SS[.f]` (or with `T`, read as UTC), RFC 3339,
/// or a number: ms since the epoch when at least 10¹¹, else seconds.
pub fn parse_csv_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(n) = text.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let ms = if n >= 1e11 { n } else { n * 1000.0 };
        return (ms < 1e13).then(|| ms.round() as i64);
    }
    parse_timestamp(text).or_else(|| {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

fn read_csv(path: &Path, opts: &CsvOptions, template: &str) -> Result<Recording> {
    let topic = topic_for(template, &opts.key)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let at = |line: usize| format!("{}:{line}", path.display());
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("{}: empty file (no header)", path.display());
    };
    let header: Vec<&str> = header
        .split(opts.delimiter)
        .map(|h| h.trim().trim_start_matches('\u{feff}').trim_matches('"'))
        .collect();
    let column = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| {
            anyhow!(
                "{}: missing column `{name}` (header: {}; delimiter {:?})",
                at(1),
                header.join(","),
                opts.delimiter
            )
        })
    };
    let ts_col = header
        .iter()
        .position(|h| *h == opts.ts_column)
        .ok_or_else(|| {
            anyhow!(
                "{}: missing column `{}` (header: {}; delimiter {:?}): name the timestamp \
                 column with --ts-column",
                at(1),
                opts.ts_column,
                header.join(","),
                opts.delimiter
            )
        })?;
    let value_cols: Vec<usize> = if opts.columns.is_empty() {
        let all: Vec<usize> = (0..header.len()).filter(|&c| c != ts_col).collect();
        // A labelled benchmark's label column fed as a signal makes the detector "find" the
        // labelled anomaly in the label itself: a result that looks right and means nothing.
        let labels: Vec<&str> = all
            .iter()
            .map(|&c| header[c])
            .filter(|h| looks_like_label(h))
            .collect();
        if !labels.is_empty() {
            let signals: Vec<&str> = all
                .iter()
                .map(|&c| header[c])
                .filter(|h| !looks_like_label(h))
                .collect();
            let named = labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ");
            if signals.is_empty() {
                let look = if labels.len() > 1 {
                    "look like labels"
                } else {
                    "looks like a label"
                };
                bail!(
                    "{}: no signal columns: besides the timestamp only {named}, which {look}; \
                     name the channels with --columns if they are signals",
                    at(1)
                );
            }
            let what = if labels.len() > 1 {
                format!("columns {named} look like labels, not sensor signals")
            } else {
                format!("column {named} looks like a label, not a sensor signal")
            };
            bail!(
                "{}: {what}; without --columns every column but the timestamp is a channel: \
                 name the channels, e.g. --columns '{}'",
                at(1),
                signals.join(",")
            );
        }
        all
    } else {
        opts.columns
            .iter()
            .map(|c| column(c))
            .collect::<Result<_>>()?
    };
    if value_cols.is_empty() {
        bail!("{}: no channel columns besides `{}`", at(1), opts.ts_column);
    }
    let names: Vec<String> = value_cols.iter().map(|&c| header[c].to_string()).collect();
    let mut rec = Recording {
        path: path.to_path_buf(),
        messages: vec![],
        skipped: vec![],
    };
    let mut rows = 0usize;
    let mut last_ts: Option<i64> = None;
    for (n, line) in lines {
        rows += 1;
        let fields: Vec<&str> = line.split(opts.delimiter).collect();
        if fields.len() != header.len() {
            bail!(
                "{}: {} fields, the header has {} (delimiter {:?})",
                at(n),
                fields.len(),
                header.len(),
                opts.delimiter
            );
        }
        let ts_text = fields[ts_col].trim().trim_matches('"');
        let ts = parse_csv_timestamp(ts_text)
            .ok_or_else(|| anyhow!("{}: bad timestamp `{ts_text}`", at(n)))?;
        if let Some(prev) = last_ts.filter(|&p| ts < p) {
            bail!(
                "{}: timestamp `{ts_text}` is earlier than the row before ({} ms < {prev} ms)",
                at(n),
                ts
            );
        }
        last_ts = Some(ts);
        let mut values = serde_json::Map::new();
        let mut bad = None;
        for (&c, name) in value_cols.iter().zip(&names) {
            let cell = fields[c].trim().trim_matches('"');
            match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => {
                    values.insert(name.clone(), serde_json::json!(v));
                }
                _ => {
                    bad = Some(format!("column `{name}`: `{cell}` is not a finite number"));
                    break;
                }
            }
        }
        if let Some(reason) = bad {
            rec.skipped.push(Skip { line: n, reason });
            continue;
        }
        let payload = serde_json::json!({ "ts": ts, "values": values }).to_string();
        rec.messages.push(Recorded {
            line: n,
            msg: FixtureMessage {
                time_ms: ts,
                topic: topic.clone(),
                qos: 1,
                payload,
            },
        });
    }
    if rows == 0 {
        bail!("{}: no data rows after the header", path.display());
    }
    if rec.messages.is_empty() {
        bail!(
            "{}: none of its {rows} rows is usable (first: line {}: {})",
            path.display(),
            rec.skipped[0].line,
            rec.skipped[0].reason
        );
    }
    Ok(rec)
}

/// Column names that label a row rather than measure something (NAB's and SKAB's, and the
/// usual spellings): compared without case, `_`, `-` or spaces.
fn looks_like_label(name: &str) -> bool {
    let norm: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    matches!(
        norm.as_str(),
        "anomaly" | "anomalies" | "isanomaly" | "changepoint" | "label" | "labels" | "outlier"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_filled_from_the_key() {
        let t = "sensors/{site}/{sensor}";
        assert_eq!(
            topic_for(t, "plant1/pump1").unwrap(),
            "sensors/plant1/pump1"
        );
        assert!(topic_for(t, "plant1").is_err());
        assert!(topic_for(t, "a/b/c").is_err());
    }

    #[test]
    fn csv_timestamps() {
        assert_eq!(
            parse_csv_timestamp("1767600000000"),
            Some(1_767_600_000_000)
        );
        assert_eq!(parse_csv_timestamp("1767600000"), Some(1_767_600_000_000));
        assert_eq!(
            parse_csv_timestamp("2026-01-05 08:00:00"),
            Some(1_767_600_000_000)
        );
        assert_eq!(
            parse_csv_timestamp("2026-01-05T09:00:00+01:00"),
            Some(1_767_600_000_000)
        );
        assert_eq!(parse_csv_timestamp("yesterday"), None);
    }

    #[test]
    fn label_columns_are_recognised_in_their_usual_spellings() {
        for name in [
            "anomaly",
            "Anomaly",
            "is_anomaly",
            "changepoint",
            "change-point",
            "Label",
        ] {
            assert!(looks_like_label(name), "{name}");
        }
        for name in [
            "Accelerometer1RMS",
            "anomaly_score",
            "value",
            "labelled_flow",
        ] {
            assert!(!looks_like_label(name), "{name}");
        }
    }
}
