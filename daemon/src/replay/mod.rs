//! `sparsewatch replay`: recorded sensor traffic, either through the pipeline offline or onto a
//! broker as live traffic.
//!
//! - [`input`]: reading recordings (the project's JSONL of MQTT messages, CSV with a timestamp
//!   column), and what is an error and what is a counted skip.
//! - [`offline`]: the pipeline run in one thread over a recording, writing what the daemon
//!   would publish as JSONL (`{"topic":…,"payload":{…}}`), byte-identical for the same input
//!   and configuration; and the per-stream traces the plots are drawn from.
//! - [`broker`]: publishing a recording onto a broker paced by its event times.
//!
//! Each input file is an independent recording: its sensor keys start with fresh pipelines.

pub mod broker;
pub mod input;
pub mod offline;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::ValidSettings;
use crate::fixtures;
use crate::plot::{self, PlotData};

pub use input::CsvOptions;

/// Skipped rows listed on stderr per file; the rest are only counted.
const SHOWN_SKIPS: usize = 5;

/// What to do, from the command line.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub inputs: Vec<PathBuf>,
    pub csv: Option<CsvOptions>,
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub enum Mode {
    /// Through the pipeline, output to `out`; a figure per stream when `plot` is given.
    Offline { out: PathBuf, plot: Option<PathBuf> },
    /// Onto a broker at `speed` × real time (0: as fast as possible).
    Broker { host: String, port: u16, speed: f64 },
}

/// `sparsewatch replay`'s arguments.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("mode").required(true).args(["offline", "broker"]))]
pub struct ReplayArgs {
    /// Recordings: `.jsonl` (MQTT messages, as in fixtures/) or `.csv` (needs --key).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Run the pipeline offline and write what the daemon would publish to --out.
    #[arg(long, requires = "out")]
    pub offline: bool,
    /// Output of --offline: one `{"topic":…,"payload":{…}}` line per published message.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With --offline: a figure per stream, `.svg` or `.png` (several streams: FILE-<key>.ext).
    #[arg(long, requires = "offline")]
    pub plot: Option<PathBuf>,
    /// Publish onto this broker instead, as live sensor traffic.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_broker)]
    pub broker: Option<(String, u16)>,
    /// With --broker: multiple of real time (1 = real time), or `max`.
    #[arg(long, default_value = "1", value_parser = parse_speed)]
    pub speed: f64,
    /// TOML configuration (topic template, node id, [pipeline], ...; default: compiled-in).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// CSV: the sensor key the rows belong to, e.g. plant1/pump1.
    #[arg(long)]
    pub key: Option<String>,
    /// CSV: field delimiter.
    #[arg(long, default_value_t = ',')]
    pub csv_delimiter: char,
    /// CSV: name of the timestamp column (ms or s since the epoch, or a UTC date-time).
    #[arg(long, default_value = "timestamp")]
    pub ts_column: String,
    /// CSV: channel columns, comma-separated (default: every other column).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
}

impl ReplayArgs {
    /// The options these arguments ask for.
    pub fn into_options(self) -> ReplayOptions {
        let csv = self.key.map(|key| CsvOptions {
            delimiter: self.csv_delimiter,
            ts_column: self.ts_column,
            columns: self.columns,
            key,
        });
        let mode = match (self.broker, self.out) {
            (Some((host, port)), _) => Mode::Broker {
                host,
                port,
                speed: self.speed,
            },
            (None, out) => Mode::Offline {
                out: out.expect("clap requires --out with --offline"),
                plot: self.plot,
            },
        };
        ReplayOptions {
            inputs: self.files,
            csv,
            mode,
        }
    }
}

/// Parses `--speed`: a positive multiple of real time, or `max`.
pub fn parse_speed(s: &str) -> Result<f64, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(0.0);
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!(
            "`{s}`: give a positive number (1 = real time) or `max`"
        )),
    }
}

/// Parses `--broker HOST:PORT`.
pub fn parse_broker(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}`: expected HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("`{s}`: bad port `{port}`"))?;
    if host.is_empty() {
        return Err(format!("`{s}`: empty host"));
    }
    Ok((host.to_string(), port))
}

/// Runs the replay the options ask for.
pub fn run_cli(opts: &ReplayOptions, settings: &ValidSettings) -> Result<()> {
    if opts.inputs.is_empty() {
        bail!("nothing to replay: give one or more files");
    }
    let template = &settings.settings.topics.template;
    let recordings = opts
        .inputs
        .iter()
        .map(|p| input::read(p, opts.csv.as_ref(), template))
        .collect::<Result<Vec<_>>>()?;
    match &opts.mode {
        Mode::Offline { out, plot } => offline_cli(&recordings, settings, out, plot.as_deref()),
        Mode::Broker { host, port, speed } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            for rec in &recordings {
                let messages: Vec<_> = rec.messages.iter().map(|r| r.msg.clone()).collect();
                let target = broker::Target {
                    host: host.clone(),
                    port: *port,
                    client_id: format!("sparsewatch-replay-{}", std::process::id()),
                    speed: *speed,
                };
                let bar = progress(messages.len() as u64, &rec.path);
                let n = rt.block_on(broker::publish(target, messages, bar.clone()))?;
                bar.finish_and_clear();
                eprintln!(
                    "{}: published {n} messages to {host}:{port}",
                    rec.path.display()
                );
                report_skips(&rec.path, &rec.skipped);
            }
            Ok(())
        }
    }
}

/// A line for each stream too wide for the dictionary: it gets no codes, and its events no
/// atoms, which a user otherwise only finds as "0 codes" in the counts. Nothing when codes
/// are off by configuration (`max_dim = 0`): that is a choice, not a surprise.
fn codeless_streams(
    settings: &ValidSettings,
    streams: &[offline::StreamTrace],
    csv: bool,
) -> Vec<String> {
    let p = settings.pipeline.get();
    let (len, max_dim) = (p.framer.window_len, p.coding.max_dim);
    if max_dim == 0 {
        return Vec::new();
    }
    let fewer = if csv {
        "replay fewer channels (--columns)"
    } else {
        "send fewer channels per stream"
    };
    streams
        .iter()
        .filter(|s| len * s.channel_names.len() > max_dim)
        .map(|s| {
            let channels = s.channel_names.len();
            format!(
                "stream {}: no codes (nor atoms in its events): {channels} channels × window_len \
                 {len} = {} is above pipeline.coding.max_dim {max_dim}; {fewer} or raise max_dim \
                 (the dictionary costs O(n³) per learning step)",
                s.key,
                len * channels
            )
        })
        .collect()
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress(len: u64, path: &Path) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} messages, {eta} left")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
    );
    bar
}

fn report_skips(path: &Path, skips: &[input::Skip]) {
    for s in skips.iter().take(SHOWN_SKIPS) {
        eprintln!("{}:{}: skipped: {}", path.display(), s.line, s.reason);
    }
    if skips.len() > SHOWN_SKIPS {
        eprintln!(
            "{}: {} more skipped rows or messages",
            path.display(),
            skips.len() - SHOWN_SKIPS
        );
    }
}

fn offline_cli(
    recordings: &[input::Recording],
    settings: &ValidSettings,
    out: &Path,
    plot: Option<&Path>,
) -> Result<()> {
    if let Some(plot) = plot {
        plot::check_path(plot)?;
    }
    // Written to a temporary file first, so a failed replay leaves no partial output that
    // looks valid.
    let tmp = out.with_extension("jsonl.partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut plots = Vec::new();
    for rec in recordings {
        let bar = progress(rec.messages.len() as u64, &rec.path);
        let result = offline::run(settings, rec, &mut w, || bar.inc(1));
        bar.finish_and_clear();
        let run = match result {
            Ok(r) => r,
            Err(e) => {
                drop(w);
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!("replaying {}", rec.path.display())));
            }
        };
        let c = &run.counts;
        eprintln!(
            "{}: {} messages, {} samples, {} windows, {} detections, {} codes, {} skipped, {} out of order, {} gaps",
            rec.path.display(),
            c.messages,
            c.samples,
            c.windows,
            c.detections,
            c.codes,
            c.skipped,
            c.out_of_order,
            c.gaps
        );
        report_skips(&rec.path, &run.skips);
        for note in codeless_streams(settings, &run.streams, input::is_csv(&rec.path)) {
            eprintln!("{}: {note}", rec.path.display());
        }
        if let Some((line, ts)) = run.first_seconds_like {
            eprintln!(
                "{}:{line}: ts {ts} read as milliseconds since the epoch is in 1970; a number this size \
                 looks like seconds ({} messages like it): record milliseconds or RFC 3339 strings",
                rec.path.display(),
                run.seconds_like
            );
        }
        if c.samples == 0 {
            drop(w);
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "{}: no sample was accepted; nothing replayed",
                rec.path.display()
            );
        }
        if plot.is_some() {
            let labels = fixtures::read_labels(&rec.path)?;
            plots.extend(
                run.streams
                    .into_iter()
                    .map(|s| (rec.path.clone(), s, labels.clone())),
            );
        }
    }
    w.flush().context("cannot write output")?;
    drop(w);
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    if let Some(plot) = plot {
        let many = plots.len() > 1;
        for (path, stream, labels) in &plots {
            let target = if many {
                suffixed(plot, &stream.key)
            } else {
                plot.to_path_buf()
            };
            plot::write(&target, &plot_data(path, stream, labels.as_ref()))?;
            eprintln!("wrote {}", target.display());
        }
    }
    Ok(())
}

/// `dir/name.svg` + `plant1/pump1` → `dir/name-plant1-pump1.svg`.
fn suffixed(path: &Path, key: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let key: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    path.with_file_name(format!("{stem}-{key}.{ext}"))
}

fn plot_data(path: &Path, s: &offline::StreamTrace, labels: Option<&fixtures::Labels>) -> PlotData {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    PlotData {
        title: format!(
            "{name} — {} ({})",
            s.key,
            plot::detections(s.detections.len())
        ),
        channels: s
            .channel_names
            .iter()
            .enumerate()
            .map(|(c, n)| {
                (
                    n.clone(),
                    s.ts_ms.iter().copied().zip(s.channel(c)).collect(),
                )
            })
            .collect(),
        score: s.windows.iter().map(|&(t, sc, _)| (t, sc)).collect(),
        likelihood: s
            .windows
            .iter()
            .filter_map(|&(t, _, l)| l.map(|l| (t, l)))
            .collect(),
        threshold: Some(s.threshold),
        labelled: labels
            .map(|l| {
                l.faults
                    .iter()
                    .filter(|f| f.key == s.key)
                    .map(|f| (f.start_ms, f.end_ms))
                    .collect()
            })
            .unwrap_or_default(),
        unscored: None,
        detections: s.detections.clone(),
    }
}
