//! `sparsewatch replay --offline`: golden outputs, determinism, the CSV reader, plots, and
//! what bad input does (a clear error naming file and line, or a counted skip; never a panic,
//! never a partial output left behind as if it were valid).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sparsewatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsewatch"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sparsewatch")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs an offline replay of `input` into `out`.
fn replay(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["replay", "--offline"];
    let (i, o) = (input.display().to_string(), out.display().to_string());
    args.extend([i.as_str(), "--out", o.as_str()]);
    args.extend(extra);
    sparsewatch(&args)
}

/// Runs an offline replay of `input` into `out`, asserting success.
fn replay_ok(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let r = replay(input, out, extra);
    assert!(r.status.success(), "replay failed: {}", stderr(&r));
    r
}

/// The offline replay of every committed fixture, with the default configuration, is
/// byte-identical to its golden file in `fixtures/golden/`.
#[test]
fn offline_replay_matches_the_goldens() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["pump-bearing", "temp-stuck-offset", "daynight-normal"] {
        let input = repo().join(format!("fixtures/{name}.jsonl"));
        let golden_path = repo().join(format!("fixtures/golden/{name}.replay.jsonl"));
        let out = dir.path().join(format!("{name}.jsonl"));
        replay_ok(&input, &out, &[]);
        let got = std::fs::read_to_string(&out).unwrap();
        let golden = std::fs::read_to_string(&golden_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", golden_path.display()));
        if got == golden {
            continue;
        }
        let regenerate = format!(
            "cargo run -p sparsewatch -- replay --offline fixtures/{name}.jsonl --out fixtures/golden/{name}.replay.jsonl"
        );
        let diff = golden
            .lines()
            .zip(got.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b);
        match diff {
            Some((n, (a, b))) => panic!(
                "{} differs at line {}:\n  golden:   {a}\n  replayed: {b}\n\
                 if the change is intended, regenerate with: {regenerate}",
                golden_path.display(),
                n + 1
            ),
            None => panic!(
                "{} differs in length ({} vs {} lines); if intended, regenerate with: {regenerate}",
                golden_path.display(),
                golden.lines().count(),
                got.lines().count()
            ),
        }
    }
}

/// Every output line is `{"topic":…,"payload":{…}}` with a topic the daemon would publish on
/// and a payload valid against the published JSON Schemas; the faulty pump raises an anomaly,
/// and the fault-free day–night fixture none.
#[test]
fn goldens_have_the_bus_schema() {
    let schema = |f: &str| {
        let text = std::fs::read_to_string(repo().join("daemon/schemas").join(f)).unwrap();
        jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
    };
    let (anomaly, code) = (schema("anomaly.schema.json"), schema("code.schema.json"));
    let mut anomalies = std::collections::BTreeMap::new();
    for name in ["pump-bearing", "temp-stuck-offset", "daynight-normal"] {
        let text =
            std::fs::read_to_string(repo().join(format!("fixtures/golden/{name}.replay.jsonl")))
                .unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let topic = v["topic"].as_str().unwrap();
            let validator = if topic.starts_with("sparsewatch/edge-1/anomaly/") {
                *anomalies.entry(name).or_insert(0) += 1;
                &anomaly
            } else {
                assert!(topic.starts_with("sparsewatch/edge-1/code/"), "{topic}");
                &code
            };
            let errors: Vec<String> = validator
                .iter_errors(&v["payload"])
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{name}: {errors:?} in {line}");
        }
    }
    assert!(anomalies.get("pump-bearing").is_some_and(|&n| n >= 1));
    assert_eq!(
        anomalies.get("daynight-normal"),
        None,
        "false alarm on a fault-free day"
    );
}

/// A CSV file (custom delimiter, timestamp column, chosen columns) replays, twice to the same
/// bytes, and a non-numeric cell is a counted skip named with its line.
#[test]
fn csv_replays_deterministically_and_skips_non_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pump.csv");
    let mut text = String::from("datetime;a;b;ignored\n");
    for i in 0..400 {
        let (a, b) = ((i as f64 * 0.1).sin(), (i as f64 * 0.07).cos());
        let a = if i == 150 {
            "n/a".to_string()
        } else {
            format!("{a:.4}")
        };
        text.push_str(&format!(
            "{};{a};{b:.4};x\n",
            1_767_600_000_000i64 + i * 1000
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let args = [
        "--csv-delimiter",
        ";",
        "--ts-column",
        "datetime",
        "--columns",
        "a,b",
        "--key",
        "plant1/pump1",
    ];
    let (o1, o2) = (dir.path().join("1.jsonl"), dir.path().join("2.jsonl"));
    let r = replay_ok(&csv, &o1, &args);
    replay_ok(&csv, &o2, &args);
    let first = std::fs::read(&o1).unwrap();
    assert!(!first.is_empty());
    assert_eq!(first, std::fs::read(&o2).unwrap());
    let err = stderr(&r);
    assert!(
        err.contains("pump.csv:152: skipped") && err.contains("n/a"),
        "{err}"
    );
    assert!(
        err.contains("399 samples") && err.contains("1 skipped"),
        "{err}"
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(first).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line["topic"], "sparsewatch/edge-1/code/plant1/pump1");
}

/// Bad files are errors that name the file and the line at fault, exit 1, and leave no
/// output file behind.
#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str], &str); 8] = [
        (
            "short.csv",
            "timestamp,a\n1767600000000,1\n1767600001000\n",
            &[],
            "short.csv:3: 1 fields, the header has 2",
        ),
        (
            "back.csv",
            "timestamp,a\n1767600005000,1\n1767600001000,2\n",
            &[],
            "back.csv:3: timestamp `1767600001000` is earlier",
        ),
        ("empty.csv", "", &[], "empty.csv: empty file"),
        (
            "nocol.csv",
            "time,a\n1767600000000,1\n",
            &[],
            "nocol.csv:1: missing column `timestamp` (header: time,a; delimiter ','): name the \
             timestamp column with --ts-column",
        ),
        (
            "labelled.csv",
            "datetime;a;b;anomaly;changepoint\n1767600000000;1;2;0;0\n",
            &["--csv-delimiter", ";", "--ts-column", "datetime"],
            "labelled.csv:1: columns `anomaly`, `changepoint` look like labels, not sensor signals; \
             without --columns every column but the timestamp is a channel: name the channels, \
             e.g. --columns 'a,b'",
        ),
        (
            "onlylabel.csv",
            "timestamp,label\n1767600000000,0\n",
            &[],
            "onlylabel.csv:1: no signal columns: besides the timestamp only `label`, which looks \
             like a label; name the channels with --columns if they are signals",
        ),
        (
            "badcol.csv",
            "timestamp,a\n1767600000000,1\n",
            &["--columns", "a,zz"],
            "badcol.csv:1: missing column `zz`",
        ),
        (
            "broken.jsonl",
            "{\"time_ms\":1,\"topic\":\"sensors/a/b\",\"payload\":\"1\"}\n{oops\n",
            &[],
            "broken.jsonl:2: not a fixture message (one JSON object per line",
        ),
    ];
    for (name, text, extra, expected) in cases {
        let input = dir.path().join(name);
        std::fs::write(&input, text).unwrap();
        let out = dir.path().join(format!("{name}.out"));
        let (i, o) = (input.display().to_string(), out.display().to_string());
        let mut args = vec![
            "replay",
            "--offline",
            i.as_str(),
            "--out",
            o.as_str(),
            "--key",
            "a/b",
        ];
        args.extend(extra);
        let r = sparsewatch(&args);
        let err = stderr(&r);
        assert_eq!(r.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(expected),
            "{name}: expected `{expected}` in: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(!out.exists(), "{name}: output left behind");
    }
}

/// A file whose every row is unusable, or whose payloads the daemon would all refuse, is an
/// error rather than an empty output presented as a result.
#[test]
fn nothing_usable_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"time_ms\":1767600000000,\"topic\":\"sensors/a/b\",\"payload\":\"{\\\"value\\\":\\\"x\\\"}\"}\n",
    )
    .unwrap();
    let out = dir.path().join("o.jsonl");
    let r = sparsewatch(&[
        "replay",
        "--offline",
        &input.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.jsonl:1: skipped: payload"), "{err}");
    assert!(err.contains("no sample was accepted"), "{err}");
    assert!(!out.exists());
}

/// A `--plot` with an extension no figure can be written as is refused before the replay, naming
/// the path given (it used to fail only after the whole run, naming `FILE-<key>.gif`).
#[test]
fn a_plot_of_unknown_format_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("fixtures/pump-bearing.jsonl");
    let out = dir.path().join("o.jsonl");
    let plot = dir.path().join("p.gif");
    let r = replay(&input, &out, &["--plot", &plot.display().to_string()]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("p.gif: the plot format is chosen by the extension"),
        "{err}"
    );
    assert!(!err.contains("messages"), "the replay ran first: {err}");
    assert!(!out.exists());
}

/// `--plot` writes an SVG (text as SVG elements) or a PNG, one per stream when there are
/// several.
#[test]
fn plots_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("fixtures/temp-stuck-offset.jsonl");
    let svg = dir.path().join("t.svg");
    replay_ok(
        &input,
        &dir.path().join("o.jsonl"),
        &["--plot", &svg.display().to_string()],
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("plant1/hall-temp"),
        "not the SVG expected"
    );
    let png = dir.path().join("t.png");
    replay_ok(
        &input,
        &dir.path().join("o2.jsonl"),
        &["--plot", &png.display().to_string()],
    );
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
}

/// As the daemon: payloads without a timestamp that arrived within one millisecond (a
/// backlog) are all taken, stamped 1 ms apart, and a sensor key over the 256-byte limit is
/// skipped with its reason, not turned into a stream.
#[test]
fn timestamp_less_bursts_and_oversized_keys_replay_as_the_daemon_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("burst.jsonl");
    let mut text = String::new();
    for i in 0..100 {
        let line = serde_json::json!({
            "time_ms": 1_767_600_000_000i64 + (i / 10),
            "topic": "sensors/plant1/pump1",
            "qos": 1,
            "payload": format!("{}", (i as f64 * 0.3).sin()),
        });
        text.push_str(&format!("{line}\n"));
    }
    let long = serde_json::json!({
        "time_ms": 1_767_600_000_100i64,
        "topic": format!("sensors/plant1/{}", "k".repeat(300)),
        "qos": 1,
        "payload": "1.0",
    });
    text.push_str(&format!("{long}\n"));
    std::fs::write(&rec, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let r = replay_ok(&rec, &out, &[]);
    let err = stderr(&r);
    assert!(
        err.contains("100 samples") && err.contains("0 out of order"),
        "{err}"
    );
    assert!(
        err.contains("burst.jsonl:101: skipped") && err.contains("longer than the 256-byte limit"),
        "{err}"
    );
    // Windows of 32 at hop 4 over 100 samples: 18 codes, all of the one stream.
    let codes = std::fs::read_to_string(&out).unwrap();
    assert_eq!(codes.lines().count(), 18, "{codes}");
    assert!(codes.lines().all(|l| l.contains("code/plant1/pump1")));
}

/// As the daemon: a recording whose `ts` is in seconds is replayed as milliseconds (as
/// documented: 1970 dates), not guessed, and the replay says so once, naming the first line.
#[test]
fn a_recording_with_timestamps_in_seconds_is_replayed_as_milliseconds_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("secs.jsonl");
    let mut text = String::new();
    // A line in milliseconds first, then 40 in seconds (each a second after the other).
    for (i, ts) in std::iter::once(1_000_000)
        .chain((0..40).map(|i| 1_767_600_000 + i))
        .enumerate()
    {
        let line = serde_json::json!({
            "time_ms": 1_767_600_000_000i64 + i as i64,
            "topic": "sensors/plant1/pump1",
            "qos": 1,
            "payload": format!("{{\"ts\": {ts}, \"value\": {}}}", (i as f64 * 0.3).sin()),
        });
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(&rec, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let r = replay_ok(&rec, &out, &[]);
    let err = stderr(&r);
    assert!(err.contains("41 samples"), "{err}");
    assert!(
        err.contains("secs.jsonl:2: ts 1767600000 read as milliseconds")
            && err.contains("(40 messages like it)"),
        "{err}"
    );
    assert_eq!(err.matches("looks like seconds").count(), 1, "{err}");
    // The windows are dated as the timestamps say, read as milliseconds: 1970-01-21.
    let codes = std::fs::read_to_string(&out).unwrap();
    let first: serde_json::Value = serde_json::from_str(codes.lines().next().unwrap()).unwrap();
    let start = first["payload"]["window_start_ms"].as_i64().unwrap();
    assert!((1_000_000..1_767_600_040).contains(&start), "{first}");
}

/// A stream too wide for the dictionary replays, and the user is told why it has no codes
/// instead of finding "0 codes" in the counts.
#[test]
fn a_stream_too_wide_for_codes_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wide.csv");
    let names: Vec<String> = (0..9).map(|c| format!("c{c}")).collect();
    let mut text = format!("timestamp,{}\n", names.join(","));
    for i in 0..200i64 {
        let row: Vec<String> = (0..9)
            .map(|c| format!("{:.4}", ((i + c) as f64 * 0.1).sin()))
            .collect();
        text.push_str(&format!(
            "{},{}\n",
            1_767_600_000_000 + i * 1000,
            row.join(",")
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let r = replay_ok(&csv, &out, &["--key", "plant1/wide"]);
    let err = stderr(&r);
    assert!(err.contains("0 codes"), "{err}");
    // Eight of the nine channels fit (8 × 32 = 256): codes, and no such line.
    let columns = names[..8].join(",");
    let fits = replay_ok(&csv, &out, &["--key", "plant1/wide", "--columns", &columns]);
    let fits = stderr(&fits);
    assert!(
        !fits.contains("no codes") && !fits.contains(" 0 codes"),
        "{fits}"
    );
    assert!(
        err.contains(
            "stream plant1/wide: no codes (nor atoms in its events): 9 channels × window_len 32 \
             = 288 is above pipeline.coding.max_dim 256"
        ),
        "{err}"
    );
}
