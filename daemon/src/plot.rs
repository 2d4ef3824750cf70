//! Pictures of a replayed stream (`replay --plot`, `eval --plots`), drawn with `plotters`.
//!
//! One figure per stream or file: a panel per channel (small multiples) with the signal, the
//! labelled anomaly windows shaded (and a benchmark's unscored probation, grey) and the
//! detections marked; under them one panel with the
//! raw anomaly score (left axis, 0..1) and the anomaly likelihood as the pipeline reports it
//! (right axis, 0..1; on the log scale 0.4 is L = 0.9999 and 0.5 is L = 0.99999) with
//! the alert threshold. Time runs along the
//! bottom in UTC. The format follows the file's extension: `.svg` (text as SVG elements) or
//! `.png`. Text is laid out and rasterised with DejaVu Sans, embedded from the `dejavu`
//! crate, so no system font or fontconfig is needed.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One figure's data. Times are ms since the Unix epoch.
#[derive(Debug, Clone, Default)]
pub struct PlotData {
    pub title: String,
    /// (channel name, samples).
    pub channels: Vec<(String, Vec<(i64, f64)>)>,
    /// Raw anomaly score per window (or row), in [0, 1].
    pub score: Vec<(i64, f64)>,
    /// Anomaly likelihood per window (or row), in [0, 1]; warm-up left out.
    pub likelihood: Vec<(i64, f64)>,
    pub threshold: Option<f64>,
    /// Labelled anomaly windows (start, end).
    pub labelled: Vec<(i64, i64)>,
    /// A span the benchmark does not score (NAB's probation: the first 15 % of a file), shaded
    /// grey, so a detection there is seen not to count.
    pub unscored: Option<(i64, i64)>,
    /// Detections: the onset window (start, end); marked at its end.
    pub detections: Vec<(i64, i64)>,
}

/// Points kept per line; longer series are reduced to each bucket's minimum and maximum.
const MAX_POINTS: usize = 2_400;
/// Likelihood shown up to 1 − 10⁻⁶.
const FONT: &str = "sans-serif";

const SIGNAL: RGBColor = RGBColor(31, 90, 160);
const SCORE: RGBColor = RGBColor(140, 140, 140);
const LIKELIHOOD: RGBColor = RGBColor(20, 120, 60);
const THRESHOLD: RGBColor = RGBColor(200, 30, 30);
const DETECTION: RGBColor = RGBColor(200, 30, 30);
const LABELLED: RGBAColor = RGBAColor(255, 150, 0, 0.22);
const UNSCORED: RGBAColor = RGBAColor(120, 120, 120, 0.12);

/// Checks that `path` names a format [`write`] can produce (`.svg` or `.png`), so a command
/// can refuse a wrong `--plot` before doing the work rather than after.
pub fn check_path(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg" | "png") => Ok(()),
        _ => bail!(
            "{}: the plot format is chosen by the extension, .svg or .png",
            path.display()
        ),
    }
}

/// Writes the figure to `path` (`.svg` or `.png`).
pub fn write(path: &Path, data: &PlotData) -> Result<()> {
    register_font();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let size = (1200, 150 + 170 * data.channels.len().max(1) as u32 + 240);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let err = |e: String| anyhow!("cannot draw {}: {e}", path.display());
    match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(&root, data).map_err(err)?;
            root.present().map_err(|e| err(e.to_string()))
        }
        Some("png") => {
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                draw(&root, data).map_err(err)?;
                root.present().map_err(|e| err(e.to_string()))?;
            }
            write_png(path, size, &rgb)
        }
        _ => bail!(
            "{}: the plot format is chosen by the extension, .svg or .png",
            path.display()
        ),
    }
}

/// Encodes an RGB8 buffer as PNG with the `png` crate (as `image` would, with its defaults:
/// default compression, adaptive filtering). Encoding here rather than through plotters'
/// `image` encoder keeps `image` and its JPEG and BMP codecs out of the binary.
fn write_png(path: &Path, (width, height): (u32, u32), rgb: &[u8]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot write {}: {e}", path.display());
    let file = std::fs::File::create(path).map_err(|e| err(&e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Default);
    encoder.set_filter(png::FilterType::Sub);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().map_err(|e| err(&e))?;
    writer.write_image_data(rgb).map_err(|e| err(&e))?;
    writer.finish().map_err(|e| err(&e))
}

/// "1 detection", "3 detections": for titles.
pub fn detections(n: usize) -> String {
    format!("{n} detection{}", if n == 1 { "" } else { "s" })
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans is a valid TrueType font; registration cannot fail on it.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Time axis: hours since the first sample (days when the span is over two days, so ticks
/// fall on half days), labelled in UTC.
struct Clock {
    t0: i64,
    /// Milliseconds per x unit: an hour or a day.
    unit_ms: f64,
    /// Span in x units.
    span: f64,
}

impl Clock {
    fn new(t0: i64, t1: i64) -> Self {
        let ms = (t1 - t0) as f64;
        let unit_ms = if ms > 2.0 * 86.4e6 { 86.4e6 } else { 3.6e6 };
        Self {
            t0,
            unit_ms,
            span: (ms / unit_ms).max(1e-3),
        }
    }

    fn x(&self, ms: i64) -> f64 {
        (ms - self.t0) as f64 / self.unit_ms
    }

    fn label(&self, x: &f64) -> String {
        let ms = self.t0 + (x * self.unit_ms).round() as i64;
        let fmt = if self.span * self.unit_ms > 36.0 * 3.6e6 {
            "%m-%d %H:%M"
        } else {
            "%H:%M"
        };
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format(fmt).to_string())
            .unwrap_or_default()
    }

    fn description(&self) -> String {
        let start = chrono::DateTime::from_timestamp_millis(self.t0)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        format!("time (UTC), from {start}")
    }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, data: &PlotData) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (t0, t1) = time_range(data).ok_or("nothing to plot: no samples")?;
    let clock = Clock::new(t0, t1);
    let root = root
        .titled(&data.title, (FONT, 22).into_font().style(FontStyle::Bold))
        .map_err(e)?;
    let (_, h) = root.dim_in_pixel();
    let score_h = 260;
    let (signals, scores) = root.split_vertically(h.saturating_sub(score_h));
    let panels = signals.split_evenly((data.channels.len().max(1), 1));
    for (i, (panel, (name, points))) in panels.iter().zip(&data.channels).enumerate() {
        draw_channel(panel, &clock, name, points, data, i == 0).map_err(e)?;
    }
    draw_scores(&scores, &clock, data).map_err(e)?;
    Ok(())
}

fn time_range(data: &PlotData) -> Option<(i64, i64)> {
    let ts = data
        .channels
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(t, _)| *t));
    let (lo, hi) = ts.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    (lo <= hi).then_some((lo, hi.max(lo + 1)))
}

/// Reduces `points` to at most about [`MAX_POINTS`], keeping each bucket's extremes.
fn decimate(points: &[(i64, f64)], clock: &Clock) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.iter().map(|&(t, v)| (clock.x(t), v)).collect();
    }
    let per = points.len().div_ceil(MAX_POINTS / 2);
    let mut out = Vec::with_capacity(MAX_POINTS + 2);
    for chunk in points.chunks(per) {
        let lo = chunk
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("chunk");
        let hi = chunk
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("chunk");
        let (a, b) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
        out.push((clock.x(a.0), a.1));
        out.push((clock.x(b.0), b.1));
    }
    out
}

/// Whether the value axis from `y0` to `y1` needs [`compact_label`]: plotters writes every
/// digit (`400000000.0`), which for large or tiny values does not fit the 70-pixel label area
/// and runs into the axis title (NAB's ec2_disk_write_bytes, up to 4.6e8). Only when the axis
/// spans at least a tenth of its magnitude: three significant digits then tell its ticks
/// apart, where a narrow axis (4.600e8 to 4.620e8) would get repeated labels.
fn needs_compact_labels(y0: f64, y1: f64) -> bool {
    let m = y0.abs().max(y1.abs());
    ((y1 - y0).abs() >= 0.1 * m) && (m >= 1e6 || (m > 0.0 && m < 1e-3))
}

/// A tick value in scientific notation with at most three significant digits: `4e8`, `2.5e8`.
fn compact_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{v:.2e}");
    match s.split_once('e') {
        Some((mantissa, exponent)) => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        None => s,
    }
}

fn value_range(points: &[(i64, f64)]) -> (f64, f64) {
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

/// Shades the labelled windows and marks the detections in a chart with time on x.
fn draw_events<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    clock: &Clock,
    data: &PlotData,
    (y0, y1): (f64, f64),
    legend: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let unscored =
        chart.draw_series(data.unscored.iter().map(|&(s, e)| {
            Rectangle::new([(clock.x(s), y0), (clock.x(e), y1)], UNSCORED.filled())
        }))?;
    if legend && data.unscored.is_some() {
        unscored
            .label("not scored (NAB probation)")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], UNSCORED.filled()));
    }
    let shaded =
        chart.draw_series(data.labelled.iter().map(|&(s, e)| {
            Rectangle::new([(clock.x(s), y0), (clock.x(e), y1)], LABELLED.filled())
        }))?;
    if legend && !data.labelled.is_empty() {
        shaded
            .label("labelled anomaly window")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], LABELLED.filled()));
    }
    let marks = chart.draw_series(data.detections.iter().map(|&(_, e)| {
        PathElement::new(
            vec![(clock.x(e), y0), (clock.x(e), y1)],
            DETECTION.stroke_width(2),
        )
    }))?;
    if legend && !data.detections.is_empty() {
        marks
            .label("detection (end of onset window)")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x + 9, y - 7), (x + 9, y + 7)],
                    DETECTION.stroke_width(2),
                )
            });
    }
    Ok(())
}

fn draw_channel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    clock: &Clock,
    name: &str,
    points: &[(i64, f64)],
    data: &PlotData,
    legend: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (y0, y1) = value_range(points);
    let compact = |v: &f64| compact_label(*v);
    let time = |h: &f64| clock.label(h);
    let mut chart = ChartBuilder::on(area)
        .margin_left(10)
        .margin_right(25)
        .margin_top(6)
        .x_label_area_size(26)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .caption(format!("signal: {name}"), (FONT, 16))
        .build_cartesian_2d(0.0..clock.span, y0..y1)?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .x_labels(10)
        .y_labels(5)
        .x_label_formatter(&time)
        .y_desc(name)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14));
    if needs_compact_labels(y0, y1) {
        mesh.y_label_formatter(&compact);
    }
    mesh.draw()?;
    draw_events(&mut chart, clock, data, (y0, y1), legend)?;
    chart
        .draw_series(LineSeries::new(
            decimate(points, clock),
            SIGNAL.stroke_width(1),
        ))?
        .label(format!("{name} (recorded)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], SIGNAL.stroke_width(2)));
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13))
            .draw()?;
    }
    Ok(())
}

fn draw_scores<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    clock: &Clock,
    data: &PlotData,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .margin_left(10)
        .margin_right(25)
        .margin_top(6)
        .margin_bottom(6)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .caption("anomaly score and likelihood", (FONT, 16))
        .build_cartesian_2d(0.0..clock.span, 0.0..1.05)?
        .set_secondary_coord(0.0..clock.span, 0.0..1.05);
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .x_labels(10)
        .y_labels(6)
        .x_label_formatter(&|h| clock.label(h))
        .x_desc(clock.description())
        .y_desc("raw score (0..1)")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_labels(6)
        .y_desc("likelihood")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    draw_events(&mut chart, clock, data, (0.0, 1.05), false)?;
    chart
        .draw_series(LineSeries::new(
            decimate(&data.score, clock),
            SCORE.stroke_width(1),
        ))?
        .label("raw score (left axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], SCORE.stroke_width(2)));
    let likelihood = &data.likelihood;
    chart
        .draw_secondary_series(LineSeries::new(
            decimate(likelihood, clock),
            LIKELIHOOD.stroke_width(2),
        ))?
        .label("likelihood (right axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], LIKELIHOOD.stroke_width(2)));
    if let Some(th) = data.threshold {
        let y = th;
        chart
            .draw_secondary_series(DashedLineSeries::new(
                vec![(0.0, y), (clock.span, y)],
                8,
                5,
                THRESHOLD.stroke_width(2),
            ))?
            .label(format!("alert threshold {th} (right axis)"))
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], THRESHOLD.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_tiny_axis_values_get_short_labels() {
        assert!(needs_compact_labels(0.0, 4.6e8));
        assert!(needs_compact_labels(-2e6, 0.0));
        assert!(needs_compact_labels(1e-5, 9e-4));
        assert!(!needs_compact_labels(0.0265, 0.0285));
        assert!(!needs_compact_labels(-1.0, 250.0));
        // A narrow axis far from 0 keeps plotters' full labels: three digits would repeat.
        assert!(!needs_compact_labels(4.600e8, 4.620e8));
        assert!(!needs_compact_labels(1.0e-4, 1.001e-4));
        assert!(!needs_compact_labels(0.0, 0.0));
        assert_eq!(compact_label(4e8), "4e8");
        assert_eq!(compact_label(2.5e8), "2.5e8");
        assert_eq!(compact_label(-1.25e6), "-1.25e6");
        assert_eq!(compact_label(123_456_789.0), "1.23e8");
        assert_eq!(compact_label(5e-4), "5e-4");
        assert_eq!(compact_label(0.0), "0");
    }

    #[test]
    fn long_series_are_reduced_keeping_extremes() {
        let clock = Clock::new(0, 3_600_000);
        let pts: Vec<(i64, f64)> = (0..100_000)
            .map(|i| (i, if i == 777 { 9.0 } else { 0.0 }))
            .collect();
        let d = decimate(&pts, &clock);
        assert!(d.len() <= MAX_POINTS + 2);
        assert!(d.iter().any(|p| p.1 == 9.0));
    }
}
