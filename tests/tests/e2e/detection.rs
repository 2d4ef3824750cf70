//! Detection through a real broker: a stream with a step fault produces an anomaly event on
//! the right topic, with the documented fields, and a healthy stream beside it produces none.

use std::time::Duration;

use sparsewatch_e2e::{Mosquitto, TestClient, TestConfig, TIMEOUT};

use crate::{gaussian, start_online, values_payload, T0_MS};

/// Samples per key.
const N: usize = 4_000;
/// Index of the first faulty sample of the faulty key.
const ONSET: usize = 3_000;
/// Event-time spacing of the samples, ms.
const PERIOD_MS: i64 = 1_000;

/// Publishes two interleaved two-channel streams as fast as the broker takes them (QoS 1,
/// explicit `ts`): `line1/motor`, whose channel `x` steps up by 8 standard deviations at
/// sample 3 000, and `line1/fan`, which stays healthy. Proves that the daemon decodes the
/// stream, windows it and alarms on the faulty key only: the first event is on
/// `<prefix>/<node>/anomaly/line1/motor`, has schema 1, the right node and key, `seq` 1, names
/// channel `x`, and its window reaches the onset (ends at or after it, starts no later than
/// 300 s after it); no event is ever published for `line1/fan`, even after every sample has
/// been processed.
#[test]
fn step_fault_is_detected_on_its_key_only() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let config = TestConfig::new("detect", broker.port());
    let mut daemon = start_online(&config);

    let events = TestClient::connect(broker.port(), &format!("{}-sub", config.node_id))
        .expect("connect subscriber");
    events
        .subscribe(&format!("{}/{}/anomaly/#", config.prefix, config.node_id))
        .expect("subscribe to anomalies");

    let motor_x = gaussian(crate::stream_seed(1), N, 10.0, 1.0);
    let motor_y = gaussian(crate::stream_seed(2), N, 5.0, 0.5);
    let fan_x = gaussian(crate::stream_seed(3), N, 10.0, 1.0);
    let fan_y = gaussian(crate::stream_seed(4), N, 5.0, 0.5);
    let mut publisher = TestClient::connect(broker.port(), &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    for i in 0..N {
        let ts = T0_MS + i as i64 * PERIOD_MS;
        let step = if i >= ONSET { 8.0 } else { 0.0 };
        let motor = values_payload(ts, &[("x", motor_x[i] + step), ("y", motor_y[i])]);
        let fan = values_payload(ts + 500, &[("x", fan_x[i]), ("y", fan_y[i])]);
        publisher
            .publish(&config.input_topic("line1/motor"), motor)
            .expect("publish");
        publisher
            .publish(&config.input_topic("line1/fan"), fan)
            .expect("publish");
    }
    publisher.flush().expect("broker acknowledged every sample");

    let motor_topic = config.anomaly_topic("line1/motor");
    let (first, before) = events.recv_matching(Duration::from_secs(60), |m| m.topic == motor_topic);
    assert!(
        before.is_empty(),
        "events before the faulty key's first: {:?}",
        before
            .iter()
            .map(|m| (&m.topic, m.text()))
            .collect::<Vec<_>>()
    );
    let first = first.unwrap_or_else(|| {
        panic!(
            "no anomaly event on {motor_topic} within 60 s; last summary: {:?}",
            daemon.last_summary()
        )
    });
    let event = first.json().expect("event is JSON");
    crate::assert_valid(&crate::schema("anomaly.schema.json"), &event);
    assert_eq!(event["schema"], 1, "{event}");
    assert_eq!(event["node"], config.node_id.as_str(), "{event}");
    assert_eq!(event["key"], "line1/motor", "{event}");
    assert_eq!(event["seq"], 1, "{event}");
    assert_eq!(event["channel"], "x", "{event}");
    // The explanation ranks the stepped channel first and names the window's atoms.
    let explanation = &event["explanation"];
    assert_eq!(explanation["channels"][0]["channel"], "x", "{event}");
    assert_eq!(
        explanation["channels"].as_array().map(Vec::len),
        Some(2),
        "{event}"
    );
    assert_eq!(
        explanation["atoms"].as_array().map(Vec::len),
        Some(8),
        "{event}"
    );
    for field in ["score", "likelihood", "threshold"] {
        assert!(event[field].is_number(), "{field} missing in {event}");
    }
    for field in ["detector", "window_start", "window_end"] {
        assert!(event[field].is_string(), "{field} missing in {event}");
    }
    let onset_ms = T0_MS + ONSET as i64 * PERIOD_MS;
    let start = event["window_start_ms"].as_i64().expect("window_start_ms");
    let end = event["window_end_ms"].as_i64().expect("window_end_ms");
    assert!(start <= end, "{event}");
    assert!(
        end >= onset_ms,
        "window ends before the onset {onset_ms}: {event}"
    );
    assert!(
        start <= onset_ms + 300_000,
        "window starts more than 300 s after the onset {onset_ms}: {event}"
    );

    // Every sample is in: no event can still be on its way for the healthy key.
    let total = 2 * N as u64;
    let done = daemon.wait_for_summary(TIMEOUT, |s| s.get("samples") + s.get("drops") >= total);
    let done = done.unwrap_or_else(|| {
        panic!(
            "the daemon did not take all {total} samples within {TIMEOUT:?}; last summary: {:?}",
            daemon.last_summary()
        )
    });
    assert_eq!(done.get("drops"), 0, "samples were dropped: {}", done.line);
    assert_eq!(done.get("payload_errors"), 0, "{}", done.line);
    // Events are published after the windows are scored; give the publisher a moment.
    let fan_topic = config.anomaly_topic("line1/fan");
    let (fan_event, _) = events.recv_matching(Duration::from_secs(2), |m| m.topic == fan_topic);
    let late: Vec<_> = events
        .drain()
        .into_iter()
        .filter(|m| m.topic == fan_topic)
        .collect();
    assert!(
        fan_event.is_none() && late.is_empty(),
        "the healthy key alarmed: {:?}",
        fan_event
            .iter()
            .chain(&late)
            .map(|m| m.text())
            .collect::<Vec<_>>()
    );
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}
