//! Reading the benchmarks from disk: NAB (`data/<category>/<file>.csv`, the windows and the
//! profiles) and SKAB (`;`-separated multichannel files with an `anomaly` column).
//!
//! Every error names the file, and the line when one is at fault. Timestamps are
//! `YYYY-MM-DD HH:MM:SS[.ffffff]`, read as UTC. A timestamp earlier than the row before is an
//! error; an equal one is kept as a row (NAB scores every row) and marked as a duplicate,
//! which the replay does not feed to the pipeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use chrono::NaiveDateTime;

use super::nab::{Labels, Profile, Window};

/// One recorded series: one row per input line after the header.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The timestamp as written, and in ms since the Unix epoch (UTC).
    pub ts_text: Vec<String>,
    pub ts_ms: Vec<i64>,
    /// Row-major values, `channels` per row.
    pub values: Vec<f64>,
    pub channels: usize,
    /// The channel names from the header.
    pub channel_names: Vec<String>,
}

impl Series {
    pub fn rows(&self) -> usize {
        self.ts_ms.len()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.channels..(i + 1) * self.channels]
    }

    /// Rows whose timestamp equals the previous row's.
    pub fn duplicates(&self) -> usize {
        self.ts_ms.windows(2).filter(|p| p[0] == p[1]).count()
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS` with an optional fraction (also with a `T`), as UTC.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc().timestamp_millis())
}

/// A delimited text file split into a header and numbered data lines (1-based line numbers).
struct Table {
    path: PathBuf,
    header: Vec<String>,
    lines: Vec<(usize, String)>,
}

impl Table {
    fn read(path: &Path, sep: char) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r').to_string()))
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            bail!("{}: empty file (no header)", path.display());
        };
        let lines: Vec<_> = lines.collect();
        if lines.is_empty() {
            bail!("{}: no data rows after the header", path.display());
        }
        let header = header
            .split(sep)
            .map(|s| s.trim().trim_start_matches('\u{feff}').to_string())
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            header,
            lines,
        })
    }

    fn column(&self, name: &str) -> Result<usize> {
        self.header.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!(
                "{}:1: missing column `{name}` (header: {})",
                self.path.display(),
                self.header.join(",")
            )
        })
    }

    fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.path.display())
    }
}

/// Parses the rows of `table`: timestamp column `ts_col`, value columns `value_cols`;
/// `extra` sees every row's fields (and its `file:line`) to read further columns (labels).
fn parse_rows(
    table: &Table,
    sep: char,
    ts_col: usize,
    value_cols: &[usize],
    mut extra: impl FnMut(&[&str], &str) -> Result<()>,
) -> Result<Series> {
    let mut series = Series {
        ts_text: Vec::with_capacity(table.lines.len()),
        ts_ms: Vec::with_capacity(table.lines.len()),
        values: Vec::with_capacity(table.lines.len() * value_cols.len()),
        channels: value_cols.len(),
        channel_names: value_cols
            .iter()
            .map(|&c| table.header[c].clone())
            .collect(),
    };
    for (line, text) in &table.lines {
        let at = table.at(*line);
        let fields: Vec<&str> = text.split(sep).map(str::trim).collect();
        if fields.len() != table.header.len() {
            bail!(
                "{at}: expected {} fields, got {}",
                table.header.len(),
                fields.len()
            );
        }
        let ts = parse_timestamp(fields[ts_col])
            .ok_or_else(|| anyhow!("{at}: bad timestamp `{}`", fields[ts_col]))?;
        if let Some(&prev) = series.ts_ms.last() {
            if ts < prev {
                bail!(
                    "{at}: timestamp `{}` is earlier than the row before",
                    fields[ts_col]
                );
            }
        }
        for &c in value_cols {
            let v: f64 = fields[c]
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| {
                    anyhow!(
                        "{at}: column `{}` is not a finite number: `{}`",
                        table.header[c],
                        fields[c]
                    )
                })?;
            series.values.push(v);
        }
        extra(&fields, &at)?;
        series.ts_text.push(fields[ts_col].to_string());
        series.ts_ms.push(ts);
    }
    Ok(series)
}

/// One NAB data file with its labels.
#[derive(Debug, Clone)]
pub struct NabFile {
    /// `<category>/<name>.csv`, the key in `combined_windows.json`.
    pub key: String,
    pub category: String,
    pub name: String,
    pub series: Series,
    pub labels: Labels,
}

/// A NAB corpus: the files found under `data/`, in key order, and the profiles.
#[derive(Debug, Clone)]
pub struct NabCorpus {
    pub dir: PathBuf,
    pub files: Vec<NabFile>,
    pub profiles: Vec<Profile>,
}

/// `DIR/name`, or `DIR/alt/name` as in a NAB checkout (`labels/`, `config/`).
fn find(dir: &Path, name: &str, alt: &str) -> Result<PathBuf> {
    // "no combined_windows.json" would send a user with a mistyped path looking for a file.
    if !dir.is_dir() {
        let what = if dir.exists() {
            "not a directory"
        } else {
            "no such directory"
        };
        bail!("{}: {what}", dir.display());
    }
    [dir.join(name), dir.join(alt).join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{}: no {name} (nor {alt}/{name})", dir.display()))
}

/// Loads a NAB directory (the `nab-dev` subset or a whole NAB checkout). Every CSV under
/// `data/<category>/` is scored and must have an entry in `combined_windows.json`; entries
/// without a data file are ignored, so a subset of the data can be scored.
pub fn load_nab(dir: &Path) -> Result<NabCorpus> {
    let windows_path = find(dir, "combined_windows.json", "labels")?;
    let windows: BTreeMap<String, Vec<[String; 2]>> = read_json(&windows_path)?;
    let profiles = read_profiles(&find(dir, "profiles.json", "config")?)?;
    let mut files = Vec::new();
    for (category, name, path) in nab_data_files(&dir.join("data"))? {
        let key = format!("{category}/{name}");
        let win = windows.get(&key).ok_or_else(|| {
            anyhow!(
                "{}: no entry `{key}` for {}",
                windows_path.display(),
                path.display()
            )
        })?;
        let series = read_nab_series(&path)?;
        let labels = map_windows(&series, win)
            .with_context(|| format!("{}: windows of `{key}`", windows_path.display()))?;
        files.push(NabFile {
            key,
            category,
            name,
            series,
            labels,
        });
    }
    if files.is_empty() {
        bail!("{}: no CSV files under data/<category>/", dir.display());
    }
    Ok(NabCorpus {
        dir: dir.to_path_buf(),
        files,
        profiles,
    })
}

/// `(category, file name, path)` of every `data/<category>/*.csv`, sorted.
fn nab_data_files(data: &Path) -> Result<Vec<(String, String, PathBuf)>> {
    let read =
        |p: &Path| std::fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()));
    let mut out = Vec::new();
    for cat in read(data)? {
        let cat = cat?;
        if !cat.file_type()?.is_dir() {
            continue;
        }
        for f in read(&cat.path())? {
            let path = f?.path();
            if path.extension().is_some_and(|e| e == "csv") && path.is_file() {
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                out.push((cat.file_name().to_string_lossy().into_owned(), name, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// NAB's `profiles.json`: `{name: {"CostMatrix": {"tpWeight", "fpWeight", "fnWeight", ..}}}`.
pub fn read_profiles(path: &Path) -> Result<Vec<Profile>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "CostMatrix")]
        cost: Cost,
    }
    #[derive(serde::Deserialize)]
    struct Cost {
        #[serde(rename = "tpWeight")]
        tp: f64,
        #[serde(rename = "fpWeight")]
        fp: f64,
        #[serde(rename = "fnWeight")]
        fn_: f64,
    }
    let map: BTreeMap<String, Entry> = read_json(path)?;
    // NAB's order: standard, low FP, low FN; any other profile after them.
    let order = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];
    let mut profiles: Vec<Profile> = map
        .into_iter()
        .map(|(name, e)| Profile {
            name,
            a_tp: e.cost.tp,
            a_fp: e.cost.fp,
            a_fn: e.cost.fn_,
        })
        .collect();
    profiles.sort_by_key(|p| {
        order
            .iter()
            .position(|o| *o == p.name)
            .unwrap_or(order.len())
    });
    if profiles.is_empty() {
        bail!("{}: no profiles", path.display());
    }
    Ok(profiles)
}

/// A NAB data file: columns `timestamp,value`.
pub fn read_nab_series(path: &Path) -> Result<Series> {
    let table = Table::read(path, ',')?;
    let ts = table.column("timestamp")?;
    let value = table.column("value")?;
    parse_rows(&table, ',', ts, &[value], |_, _| Ok(()))
}

/// Window timestamps → rows: the first row at or after the start; the first row stamped
/// with the end, as NAB's sweeper takes it (a timestamp repeated on the right edge ends the
/// window at its first row, so a detection on a repeat is not counted inside), or else the
/// last row before the end (NAB's windows are cut from the data, so they always match).
fn map_windows(series: &Series, windows: &[[String; 2]]) -> Result<Labels> {
    let mut rows = Vec::with_capacity(windows.len());
    for [start, end] in windows {
        let parse = |t: &str| parse_timestamp(t).ok_or_else(|| anyhow!("bad timestamp `{t}`"));
        let (s, e) = (parse(start)?, parse(end)?);
        let first = series.ts_ms.partition_point(|&t| t < s);
        let at_end = series.ts_ms.partition_point(|&t| t < e);
        let after = if series.ts_ms.get(at_end) == Some(&e) {
            at_end + 1
        } else {
            at_end
        };
        if after == 0 || first >= after {
            bail!("window [{start}, {end}] holds no row");
        }
        rows.push(Window {
            first,
            last: after - 1,
        });
    }
    Ok(Labels::new(series.rows(), rows)?)
}

/// A SKAB file: the sensor channels and, when the file has them, the `anomaly` labels.
#[derive(Debug, Clone)]
pub struct SkabFile {
    pub name: String,
    pub series: Series,
    /// One label per row (`anomaly` = 1); `None` for a file without the column (warm-up).
    pub labels: Option<Vec<bool>>,
}

/// Columns that are not sensor channels.
const SKAB_META: [&str; 3] = ["datetime", "anomaly", "changepoint"];

/// Reads a SKAB file: `datetime;<sensors…>[;anomaly;changepoint]`, `;`-separated. Every
/// column other than those three is a channel, in header order.
pub fn read_skab(path: &Path, need_labels: bool) -> Result<SkabFile> {
    let table = Table::read(path, ';')?;
    let ts = table.column("datetime")?;
    let anomaly = if need_labels {
        Some(table.column("anomaly")?)
    } else {
        None
    };
    let channels: Vec<usize> = (0..table.header.len())
        .filter(|&c| !SKAB_META.contains(&table.header[c].as_str()))
        .collect();
    if channels.is_empty() {
        bail!("{}:1: no sensor columns", path.display());
    }
    let mut labels = Vec::new();
    let series = parse_rows(&table, ';', ts, &channels, |fields, at| {
        if let Some(c) = anomaly {
            labels.push(match fields[c].parse::<f64>() {
                Ok(0.0) => false,
                Ok(1.0) => true,
                _ => bail!("{at}: `anomaly` must be 0 or 1, got `{}`", fields[c]),
            });
        }
        Ok(())
    })?;
    Ok(SkabFile {
        name: path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        series,
        labels: anomaly.map(|_| labels),
    })
}

/// Every `*.csv` of a SKAB folder, searched one level deep too (`DIR/valve1/*.csv`), sorted
/// numerically by file stem where it is a number. `anomaly-free/` is not scored.
pub fn skab_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let visit = |d: &Path, depth: usize, out: &mut Vec<PathBuf>| -> Result<Vec<PathBuf>> {
        let mut subdirs = Vec::new();
        for e in std::fs::read_dir(d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() && depth == 0 && p.file_name().is_some_and(|n| n != "anomaly-free") {
                subdirs.push(p);
            } else if p.is_file() && p.extension().is_some_and(|e| e == "csv") {
                out.push(p);
            }
        }
        Ok(subdirs)
    };
    for sub in visit(dir, 0, &mut out)? {
        visit(&sub, 1, &mut out)?;
    }
    out.sort_by_key(|p| {
        let stem = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        (
            p.parent().map(Path::to_path_buf),
            stem.parse::<u64>().unwrap_or(u64::MAX),
            stem,
        )
    });
    if out.is_empty() {
        bail!("{}: no SKAB CSV files", dir.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_utc_with_or_without_fraction() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:01"), Some(1000));
        assert_eq!(parse_timestamp("1970-01-01 00:00:01.500000"), Some(1500));
        assert_eq!(parse_timestamp("1970-01-01T00:01:00"), Some(60_000));
        assert_eq!(parse_timestamp("2014-13-01 00:00:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_rows_are_errors_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases = [
            (
                "cols.csv",
                "timestamp,val\n2020-01-01 00:00:00,1\n",
                "missing column `value`",
            ),
            ("empty.csv", "", "empty file"),
            ("header.csv", "timestamp,value\n", "no data rows"),
            (
                "fields.csv",
                "timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00\n",
                ":3: expected 2 fields",
            ),
            (
                "num.csv",
                "timestamp,value\n2020-01-01 00:00:00,abc\n",
                ":2: column `value` is not a finite number",
            ),
            (
                "order.csv",
                "timestamp,value\n2020-01-01 00:05:00,1\n2020-01-01 00:00:00,2\n",
                ":3: timestamp `2020-01-01 00:00:00` is earlier",
            ),
        ];
        for (name, text, want) in cases {
            let err = read_nab_series(&write(d, name, text)).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(name) && msg.contains(want), "{name}: {msg}");
        }
        let dup = "timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:00:00,2\n";
        assert_eq!(
            read_nab_series(&write(d, "dup.csv", dup))
                .unwrap()
                .duplicates(),
            1
        );
    }

    #[test]
    fn windows_map_to_the_rows_inside_them() {
        let mut csv = String::from("timestamp,value\n");
        for m in 0..10 {
            csv.push_str(&format!("2020-01-01 00:{:02}:00,{m}\n", m * 5));
        }
        let dir = tempfile::tempdir().unwrap();
        let s = read_nab_series(&write(dir.path(), "a.csv", &csv)).unwrap();
        let w = |a: &str, b: &str| [a.to_string(), b.to_string()];
        let l = map_windows(
            &s,
            &[w(
                "2020-01-01 00:07:00.000000",
                "2020-01-01 00:20:00.000000",
            )],
        )
        .unwrap();
        assert_eq!(l.windows(), &[Window { first: 2, last: 4 }]);
        assert!(map_windows(&s, &[w("2020-01-01 00:06:00", "2020-01-01 00:07:00")]).is_err());
    }

    #[test]
    fn a_timestamp_repeated_on_the_right_edge_ends_the_window_at_its_first_row() {
        // Rows 0..=9 at 5-minute steps, with 00:20 repeated (rows 4, 5, 6): NAB's sweeper
        // ends the window at the first 00:20 row, so rows 5 and 6 are outside it.
        let mut csv = String::from("timestamp,value\n");
        for m in [0, 5, 10, 15, 20, 20, 20, 25, 30, 35] {
            csv.push_str(&format!("2020-01-01 00:{m:02}:00,{m}\n"));
        }
        let dir = tempfile::tempdir().unwrap();
        let s = read_nab_series(&write(dir.path(), "a.csv", &csv)).unwrap();
        let w = |a: &str, b: &str| [a.to_string(), b.to_string()];
        let l = map_windows(&s, &[w("2020-01-01 00:05:00", "2020-01-01 00:20:00")]).unwrap();
        assert_eq!(l.windows(), &[Window { first: 1, last: 4 }]);
        // A start on the repeated stamp begins at its first row.
        let l = map_windows(&s, &[w("2020-01-01 00:20:00", "2020-01-01 00:30:00")]).unwrap();
        assert_eq!(l.windows(), &[Window { first: 4, last: 8 }]);
    }

    #[test]
    fn skab_labels_must_be_0_or_1() {
        let dir = tempfile::tempdir().unwrap();
        let head = "datetime;a;b;anomaly;changepoint\n";
        let ok = write(
            dir.path(),
            "0.csv",
            &format!("{head}2020-03-09 10:14:33;1;2;1.0;0.0\n"),
        );
        let f = read_skab(&ok, true).unwrap();
        assert_eq!((f.series.channels, f.labels), (2, Some(vec![true])));
        let bad = write(
            dir.path(),
            "1.csv",
            &format!("{head}2020-03-09 10:14:33;1;2;0.5;0\n"),
        );
        let msg = format!("{:#}", read_skab(&bad, true).unwrap_err());
        assert!(msg.contains("1.csv:2") && msg.contains("anomaly"), "{msg}");
    }
}
