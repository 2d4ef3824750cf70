//! `sparsewatch eval` as a user runs it: on a tiny NAB-layout folder built per test (fast),
//! on bad input (clear errors, no scores), and on the real `nab-dev` subset when present.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sparsewatch::eval::{corpus, nab};

fn sparsewatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsewatch"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sparsewatch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `rows` rows at 5-minute spacing from 2020-01-01: a daily sine with deterministic jitter,
/// shifted up by 50 from row `step_at` on.
fn series_csv(rows: usize, step_at: usize) -> String {
    let mut out = String::from("timestamp,value\n");
    let mut x: u64 = 12345;
    for i in 0..rows {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let jitter = (x >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
        let base = 10.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + jitter;
        let v = if i >= step_at { base + 50.0 } else { base };
        out.push_str(&format!("{},{v}\n", timestamp(i)));
    }
    out
}

fn timestamp(row: usize) -> String {
    let minutes = row * 5;
    let (day, hour, min) = (1 + minutes / 1440, minutes / 60 % 24, minutes % 60);
    format!("2020-01-{day:02} {hour:02}:{min:02}:00")
}

const PROFILES: &str = r#"{
  "standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0}},
  "reward_low_FP_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22, "tnWeight": 1.0}},
  "reward_low_FN_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0}}
}"#;

/// A NAB-layout folder: `synthetic/step.csv` (one window around a step at row 2000) and
/// `synthetic/calm.csv` (no window), 2500 rows each.
fn tiny_nab(dir: &Path) -> PathBuf {
    let root = dir.join("nab");
    std::fs::create_dir_all(root.join("data/synthetic")).unwrap();
    std::fs::write(root.join("data/synthetic/step.csv"), series_csv(2500, 2000)).unwrap();
    std::fs::write(
        root.join("data/synthetic/calm.csv"),
        series_csv(2500, usize::MAX),
    )
    .unwrap();
    let windows = format!(
        r#"{{"synthetic/step.csv": [["{}.000000", "{}.000000"]], "synthetic/calm.csv": [],
            "other/not-here.csv": []}}"#,
        timestamp(1950),
        timestamp(2150)
    );
    std::fs::write(root.join("combined_windows.json"), windows).unwrap();
    std::fs::write(root.join("profiles.json"), PROFILES).unwrap();
    root
}

fn run_ok(args: &[&str]) -> String {
    let out = sparsewatch(args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The summary line of `detector` (after the `summary` heading that ends the output).
fn summary_line(stdout: &str, detector: &str) -> String {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("summary ("));
    assert!(lines.next().is_some(), "no summary in:\n{stdout}");
    lines
        .find(|l| l.split_whitespace().next() == Some(detector))
        .unwrap_or_else(|| panic!("no summary line for {detector} in:\n{stdout}"))
        .to_string()
}

/// Every normalised score in the JSON report, as (input, profile, score).
fn normalised_scores(json: &serde_json::Value) -> Vec<(String, String, f64)> {
    let mut out = vec![];
    for run in json["nab"]["runs"].as_array().unwrap() {
        for p in run["profiles"].as_array().unwrap() {
            out.push((
                run["input"].as_str().unwrap().to_string(),
                p["profile"].as_str().unwrap().to_string(),
                p["normalised"].as_f64().expect("normalised score"),
            ));
        }
    }
    out
}

/// On a tiny corpus: text tables and JSON for the three inputs and all three profiles, with
/// finite normalised scores, and per data file two results files, one row per input row: the
/// events (non-zero exactly on the rows that raised a detection) and every row's likelihood.
#[test]
fn eval_nab_on_a_tiny_corpus_writes_tables_json_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let nab = tiny_nab(dir.path());
    let json_path = dir.path().join("out.json");
    let results = dir.path().join("results");
    let plots = dir.path().join("plots");
    let stdout = run_ok(&[
        "eval",
        "--nab",
        nab.to_str().unwrap(),
        "--detector",
        "baseline",
        "--json",
        json_path.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
        "--plot-format",
        "svg",
    ]);
    assert!(stdout.contains("synthetic/step.csv") && stdout.contains("reward_low_FN_rate"));
    // The figure shades the labelled window and NAB's unscored probation, each in the legend
    // (SVG keeps text as text).
    let svg = std::fs::read_to_string(plots.join("baseline").join("synthetic_step.svg")).unwrap();
    for legend in ["labelled anomaly window", "not scored (NAB probation)"] {
        assert!(svg.contains(legend), "no `{legend}` in the figure");
    }
    assert!(stdout.contains("window_len 32 hop 4"), "{stdout}");
    // Each of the three inputs' tables says what it is right under its heading.
    for (heading, legend) in [
        (
            "scored from likelihood:",
            "every row's likelihood, threshold swept",
        ),
        (
            "scored from detections:",
            "one row per incident onset at the alert threshold",
        ),
        (
            "scored from events:",
            "the onset rows' likelihoods, 0 elsewhere",
        ),
    ] {
        let next = stdout
            .lines()
            .skip_while(|l| !l.ends_with(heading))
            .nth(1)
            .unwrap_or_else(|| panic!("no `{heading}` table in:\n{stdout}"));
        assert!(
            next.starts_with(&format!("  ({legend}")),
            "{heading}: {next}"
        );
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    // The summary after the tables: the detections' standard score, as in the JSON.
    let headline = |json: &serde_json::Value| {
        json["nab"]["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["input"] == "detections")
            .unwrap()["profiles"][0]["normalised"]
            .as_f64()
            .unwrap()
    };
    let summary = summary_line(&stdout, "baseline");
    assert!(
        summary.contains(&format!(" NAB {:.2} (low_FP ", headline(&json)))
            && !summary.contains("SKAB"),
        "{summary}"
    );
    assert_eq!(json["nab"]["files"], 2);
    assert_eq!(json["nab"]["windows"], 1);
    let scores = normalised_scores(&json);
    assert_eq!(scores.len(), 9, "{scores:?}");
    for (input, profile, s) in &scores {
        assert!(
            s.is_finite() && (-1000.0..=100.0).contains(s),
            "{input} {profile}: {s}"
        );
    }

    let detections = |name: &str| {
        let run = json["nab"]["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["input"] == "detections")
            .unwrap();
        let file = run["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["file"] == format!("synthetic/{name}"))
            .unwrap();
        file["pipeline_detections"].as_u64().unwrap() as usize
    };
    for name in ["step.csv", "calm.csv"] {
        let read = |folder: &str| -> Vec<f64> {
            let path = results.join(format!("{folder}/synthetic/{folder}_{name}"));
            let csv = std::fs::read_to_string(&path).unwrap();
            let mut lines = csv.lines();
            assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
            let scores: Vec<f64> = lines
                .map(|row| row.rsplit(',').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(scores.len(), 2500);
            assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "{path:?}");
            scores
        };
        let events = read("baseline");
        let likelihood = read("baseline_likelihood");
        let raised: Vec<usize> = (0..events.len()).filter(|&i| events[i] > 0.0).collect();
        assert_eq!(raised.len(), detections(name), "{name}");
        for &i in &raised {
            assert_eq!(events[i], likelihood[i], "{name} row {i}");
            assert!(
                events[i] >= 0.5,
                "{name} row {i}: below the alert threshold"
            );
        }
    }
    assert_eq!(detections("step.csv"), 1, "the step is detected once");
}

/// A malformed row, a timestamp going backwards or a missing column fail with exit 1 and a
/// message naming the file and line, and no score is printed.
#[test]
fn eval_refuses_bad_data_naming_file_and_line() {
    type Corrupt = fn(&str) -> String;
    let cases: [(&str, Corrupt, &str); 3] = [
        (
            "bad row",
            |csv| csv.replacen("2020-01-01 00:10:00,", "2020-01-01 00:10:00,x", 1),
            "step.csv:4: column `value` is not a finite number",
        ),
        (
            "backwards",
            |csv| csv.replacen("2020-01-01 00:10:00", "2019-12-31 00:10:00", 1),
            "step.csv:4: timestamp `2019-12-31 00:10:00` is earlier",
        ),
        (
            "no column",
            |csv| csv.replacen("timestamp,value", "timestamp,val", 1),
            "step.csv:1: missing column `value`",
        ),
    ];
    for (what, corrupt, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let nab = tiny_nab(dir.path());
        let file = nab.join("data/synthetic/step.csv");
        let csv = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, corrupt(&csv)).unwrap();
        let out = sparsewatch(&["eval", "--nab", nab.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(
            text(&out.stderr).contains(want),
            "{what}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stdout).contains("score"),
            "{what}: scores printed"
        );
    }
}

/// A mistyped dataset path says the directory is missing (not that a label file is), and a
/// file given as the directory says it is not one.
#[test]
fn eval_names_a_missing_dataset_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nab-dve");
    let file = dir.path().join("windows.json");
    std::fs::write(&file, "{}").unwrap();
    for (path, expected) in [(&missing, "no such directory"), (&file, "not a directory")] {
        let out = sparsewatch(&["eval", "--nab", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("{}: {expected}", path.display())),
            "{err}"
        );
    }
}

/// An unknown detector name is a usage error (exit 2) that names it.
#[test]
fn eval_rejects_unknown_detectors() {
    let out = sparsewatch(&["eval", "--nab", "x", "--detector", "baseline,nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
}

fn nab_dev() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/nab-dev");
    p.is_dir().then_some(p)
}

/// On the real `nab-dev` and `skab-dev` subsets (CI has them; skipped where they are absent):
/// every normalised score is finite and within [-1000, 100], the null detector scores exactly
/// 0, and the summary line after the tables carries both benchmarks' headline figures.
#[test]
fn eval_nab_dev_scores_are_sane_and_null_scores_zero() {
    let Some(dir) = nab_dev() else {
        eprintln!("nab-dev not found; skipped");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let json_path = tmp.path().join("nab.json");
    let skab = dir.join("../skab-dev");
    let stdout = run_ok(&[
        "eval",
        "--nab",
        dir.to_str().unwrap(),
        "--skab",
        skab.to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json["nab"]["files"], 34);
    // The summary line of the default detector carries both benchmarks' headline figures.
    let detector = json["detectors"][0].as_str().unwrap();
    let summary = summary_line(&stdout, detector);
    let f1 = json["skab"]["runs"][0]["metrics"]["f1"].as_f64().unwrap();
    assert!(
        summary.contains(" NAB ") && summary.contains(&format!("| SKAB F1 {f1:.3} FAR ")),
        "{summary}"
    );
    let scores = normalised_scores(&json);
    for (input, profile, s) in &scores {
        assert!(
            s.is_finite() && (-1000.0..=100.0).contains(s),
            "{input} {profile}: {s}"
        );
    }
    // The events, swept, can only choose among the daemon's own detections: never below the
    // fixed-threshold score, so NAB's scorer on `--results` reproduces at least the headline.
    for (input, profile, s) in scores.iter().filter(|(i, _, _)| i == "detections") {
        let (_, _, swept) = scores
            .iter()
            .find(|(i, p, _)| i == "events" && p == profile)
            .unwrap();
        assert!(
            *swept >= s - 1e-9,
            "{input} {profile}: events {swept} < detections {s}"
        );
    }

    let corpus = corpus::load_nab(&dir).unwrap();
    let windows: usize = corpus.files.iter().map(|f| f.labels.windows().len()).sum();
    let zeros: Vec<Vec<f64>> = corpus
        .files
        .iter()
        .map(|f| vec![0.0; f.series.rows()])
        .collect();
    let files: Vec<(&[f64], &nab::Labels)> = zeros
        .iter()
        .zip(&corpus.files)
        .map(|(z, f)| (&z[..], &f.labels))
        .collect();
    assert_eq!(corpus.profiles.len(), 3);
    for profile in &corpus.profiles {
        let best = nab::sweep(&files, profile);
        assert_eq!(best.threshold, None, "{}", profile.name);
        assert_eq!(
            profile.normalise(best.raw, windows),
            Some(0.0),
            "{}",
            profile.name
        );
    }
}
