//! `sparsewatch demo`: the first look the README promises.

use std::time::Duration;

use sparsewatch_e2e::{daemon_binary, workspace_root, Process};

/// How long the demo may take (it replays two hours of fixture at 600× real time).
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);
/// Onset of the bearing fault in `fixtures/pump-bearing.labels.json`, ms since the epoch…
const FAULT_START_MS: u64 = 1_767_605_400_000;
/// …and as the demo prints times (RFC 3339, UTC, milliseconds), which sort as text.
const FAULT_START: &str = "2026-01-05T09:30:00.000Z";

/// Runs `sparsewatch demo` on the committed pump fixture with its embedded broker. Proves the
/// demo works out of the box: it exits 0 within two minutes, prints an anomaly event for the
/// pump with the bearing fault (`plant1/pump1`) whose window reaches past the labelled onset
/// (the fault is caught, not just some earlier alarm on that key), and none for the healthy
/// pump (`plant1/pump2`).
#[test]
fn demo_alarms_on_the_faulty_pump_only() {
    let fixture = workspace_root().join("fixtures/pump-bearing.jsonl");
    let mut demo = Process::spawn(
        daemon_binary(),
        ["demo".as_ref(), "--fixture".as_ref(), fixture.as_os_str()],
    )
    .expect("spawn the demo");
    let status = demo
        .wait_timeout(DEMO_TIMEOUT)
        .unwrap_or_else(|| panic!("the demo did not finish within {DEMO_TIMEOUT:?}"));
    let out = demo.output();
    assert_eq!(status.code(), Some(0), "demo exit status {status}:\n{out}");

    let labels =
        std::fs::read_to_string(workspace_root().join("fixtures/pump-bearing.labels.json"))
            .expect("read the labels");
    let labels: serde_json::Value = serde_json::from_str(&labels).expect("labels are JSON");
    assert_eq!(
        labels["faults"][0]["start_ms"], FAULT_START_MS,
        "labels changed: {labels}"
    );

    let events: Vec<DemoEvent> = out.lines().filter_map(DemoEvent::parse).collect();
    assert!(
        events
            .iter()
            .any(|e| e.key == "plant1/pump1" && e.window_end >= FAULT_START),
        "no anomaly event for plant1/pump1 at or after the fault onset {FAULT_START}:\n{out}"
    );
    assert!(
        events.iter().all(|e| e.key != "plant1/pump2"),
        "an anomaly event for the healthy plant1/pump2:\n{out}"
    );
}

/// One event line of the demo:
/// `anomaly  <key> seq=<n> window <start> .. <end> likelihood=… score=… channel=…`.
struct DemoEvent<'a> {
    key: &'a str,
    window_end: &'a str,
}

impl<'a> DemoEvent<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut words = line.strip_prefix("anomaly ")?.split_whitespace();
        let key = words.next()?;
        let mut words = words.skip_while(|w| *w != "..");
        words.next()?;
        Some(DemoEvent {
            key,
            window_end: words.next()?,
        })
    }
}
