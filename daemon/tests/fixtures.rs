//! The committed fixtures are exactly what their generator produces.
//!
//! The generators (`fixtures/gen/*.rs`) are compiled into this test as a module, so the
//! check needs no subprocess. When it fails after an intended change to the generator,
//! regenerate with `cargo run -p sparsewatch --example generate_fixtures -- fixtures/`.

#[path = "../../fixtures/gen/mod.rs"]
mod fixture_gen;

use fixture_gen::{pump, temperature};

use std::path::Path;

/// Every file the generator writes is committed under `fixtures/` with the same bytes, so
/// the fixtures' provenance (the generator and its seed) is true.
#[test]
fn committed_fixtures_match_the_generator() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    for file in fixture_gen::generate() {
        let path = dir.join(file.name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if committed == file.contents {
            continue;
        }
        let first_diff = committed
            .lines()
            .zip(file.contents.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b);
        match first_diff {
            Some((n, (a, b))) => panic!(
                "{} differs from the generator at line {}:\n  committed: {a}\n  generated: {b}\n\
                 regenerate with: cargo run -p sparsewatch --example generate_fixtures -- fixtures/",
                path.display(),
                n + 1
            ),
            None => panic!(
                "{} differs from the generator in length ({} vs {} bytes); regenerate with: \
                 cargo run -p sparsewatch --example generate_fixtures -- fixtures/",
                path.display(),
                committed.len(),
                file.contents.len()
            ),
        }
    }
}

/// The fixture has the promised shape: 2 × 7 200 lines in event-time order, one per
/// sensor per second, each with a JSON payload carrying `ts` (equal to the line's event time)
/// and the three channels; the file does not grow past 3 MB by accident (it is about 2.3 MB).
#[test]
fn fixture_shape() {
    let files = pump::generate();
    let stream = &files[0].contents;
    assert!(stream.len() < 3_000_000, "stream is {} bytes", stream.len());
    let lines: Vec<&str> = stream.lines().collect();
    assert_eq!(lines.len() as u64, 2 * pump::SAMPLES);
    let mut last = 0;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("line is JSON");
        let t = v["time_ms"].as_u64().expect("time_ms");
        assert!(t > last, "time_ms not increasing at {line}");
        last = t;
        let payload: serde_json::Value =
            serde_json::from_str(v["payload"].as_str().expect("payload")).expect("payload JSON");
        assert_eq!(payload["ts"].as_u64(), Some(t));
        for channel in ["current", "temp", "vib_rms"] {
            assert!(payload["values"][channel].is_f64(), "{channel} in {line}");
        }
    }
    let labels: serde_json::Value = serde_json::from_str(&files[1].contents).expect("labels");
    assert_eq!(labels["faults"][0]["key"], "plant1/pump1");
}

/// Checks one JSONL stream: `lines` lines in event-time order, one sensor key, the payload's
/// `ts` equal to the line's event time, every channel a number; and its size stays below
/// `max_bytes`.
fn check_stream(stream: &str, lines: u64, topic: &str, channels: &[&str], max_bytes: usize) {
    assert!(stream.len() < max_bytes, "stream is {} bytes", stream.len());
    assert_eq!(stream.lines().count() as u64, lines);
    let mut last = 0;
    for line in stream.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("line is JSON");
        let t = v["time_ms"].as_u64().expect("time_ms");
        assert!(t > last, "time_ms not increasing at {line}");
        last = t;
        assert_eq!(v["topic"], topic);
        let payload: serde_json::Value =
            serde_json::from_str(v["payload"].as_str().expect("payload")).expect("payload JSON");
        assert_eq!(payload["ts"].as_u64(), Some(t));
        for channel in channels {
            assert!(
                payload["values"][channel].is_number(),
                "{channel} in {line}"
            );
        }
    }
}

/// The temperature fixtures: five days at one sample per minute, each under 1.5 MB; the
/// stuck-at fault really repeats one value for six hours and the offset is really there; the
/// day–night fixture has no labelled fault.
#[test]
fn temperature_fixtures_shape() {
    let files = temperature::generate();
    let by_name = |n: &str| &files.iter().find(|f| f.name == n).unwrap().contents;
    let stuck = by_name("temp-stuck-offset.jsonl");
    check_stream(
        stuck,
        temperature::SAMPLES,
        "sensors/plant1/hall-temp",
        &["temp"],
        1_500_000,
    );
    let temps: Vec<f64> = stuck
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let p: serde_json::Value =
                serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
            p["values"]["temp"].as_f64().unwrap()
        })
        .collect();
    let (s, e) = (
        temperature::STUCK_START as usize,
        temperature::STUCK_END as usize,
    );
    assert!(
        temps[s..e].iter().all(|&t| t == temps[s - 1]),
        "stuck-at repeats the last value"
    );
    assert_ne!(temps[e], temps[s], "the sensor recovers");
    let labels: serde_json::Value =
        serde_json::from_str(by_name("temp-stuck-offset.labels.json")).unwrap();
    assert_eq!(labels["faults"].as_array().unwrap().len(), 2);
    assert_eq!(labels["faults"][1]["kind"], "offset");

    let yard = by_name("daynight-normal.jsonl");
    check_stream(
        yard,
        temperature::SAMPLES,
        "sensors/plant1/yard",
        &["humidity", "temp"],
        1_500_000,
    );
    let labels: serde_json::Value =
        serde_json::from_str(by_name("daynight-normal.labels.json")).unwrap();
    assert!(labels["faults"].as_array().unwrap().is_empty());
}
