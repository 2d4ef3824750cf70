//! Hostile input through a real broker: thousands of keys, and payloads built to hurt (too
//! big, too deep, too wide, not UTF-8, numbers beyond f64, timestamps from the far future).
//! The daemon bounds what it keeps, counts every refusal under its own name, and carries on.

use sparsewatch_e2e::{Mosquitto, TestClient, TestConfig, TIMEOUT};

use crate::{start_online, T0_MS};

/// `workers.max_streams` in the many-keys test.
const MAX_STREAMS: u64 = 1_000;
/// Distinct keys published in the many-keys test.
const KEYS: u64 = 3_000;

/// Publishes one sample on each of 3 000 distinct keys to a daemon that tracks at most
/// 1 000 streams. Proves that exactly 1 000 streams exist afterwards, the other 2 000 samples
/// are refused and counted (`refused_streams`, also in `drops`), a second sample of a refused
/// key is refused again (no stream appears later for it while the table is full), and the
/// daemon is still running and still takes samples of the keys it tracks.
#[test]
fn thousands_of_keys_are_bounded_by_max_streams() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("many-keys", broker.port());
    config.extra =
        format!("[workers]\nmax_streams = {MAX_STREAMS}\n\n[output.codes]\nenabled = false\n");
    let mut daemon = start_online(&config);
    let mut client = TestClient::connect(broker.port(), &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    for k in 0..KEYS {
        let topic = config.input_topic(&format!("site/k{k}"));
        client
            .publish(&topic, format!("{{\"ts\":{T0_MS},\"value\":{k}}}"))
            .expect("publish");
    }
    client.flush().expect("broker acknowledged every message");
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| {
            s.get("messages") >= KEYS && s.get("samples") + s.get("refused_streams") >= KEYS
        })
        .unwrap_or_else(|| {
            panic!(
                "not every key was handled; last: {:?}",
                daemon.last_summary()
            )
        });
    assert_eq!(s.get("streams"), MAX_STREAMS, "{}", s.line);
    assert_eq!(s.get("samples"), MAX_STREAMS, "{}", s.line);
    assert_eq!(s.get("refused_streams"), KEYS - MAX_STREAMS, "{}", s.line);
    assert!(s.get("drops") >= KEYS - MAX_STREAMS, "{}", s.line);

    // Every key once more, one second later: the tracked ones take the sample, the others are
    // refused again.
    for k in 0..KEYS {
        let topic = config.input_topic(&format!("site/k{k}"));
        client
            .publish(
                &topic,
                format!("{{\"ts\":{},\"value\":{k}}}", T0_MS + 1_000),
            )
            .expect("publish");
    }
    client.flush().expect("broker acknowledged every message");
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| {
            s.get("messages") >= 2 * KEYS && s.get("samples") + s.get("refused_streams") >= 2 * KEYS
        })
        .unwrap_or_else(|| {
            panic!(
                "second round not handled; last: {:?}",
                daemon.last_summary()
            )
        });
    assert_eq!(s.get("streams"), MAX_STREAMS, "{}", s.line);
    assert_eq!(s.get("samples"), 2 * MAX_STREAMS, "{}", s.line);
    assert_eq!(
        s.get("refused_streams"),
        2 * (KEYS - MAX_STREAMS),
        "{}",
        s.line
    );
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.output());
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}

/// Payloads built to hurt, each followed by a valid sample of the same key: one over
/// `mqtt.max_payload_bytes`, 100 000 nested `[` as the value, 10 000 channels, bytes that are
/// not UTF-8, `1e400` and `NaN` and `1e300` as values, a timestamp in the year 2200, one of
/// `-5`. Proves the daemon survives all of them, counts each under its own name in the
/// summary line (`oversized_payloads`, `too_many_channels`, `out_of_range_values`,
/// `bad_timestamps`, all inside the `payload_errors` total), and takes every valid sample.
#[test]
fn hostile_payloads_are_refused_and_counted_by_kind() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("hostile", broker.port());
    config.mqtt_extra = "max_payload_bytes = 262144\nmax_channels = 16".to_string();
    let mut daemon = start_online(&config);
    let mut client = TestClient::connect(broker.port(), &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    let topic = config.input_topic("site/s1");

    let wide: Vec<String> = (0..10_000).map(|i| format!("\"c{i}\":{i}")).collect();
    let mut not_utf8 = br#"{"value": 1, "name": ""#.to_vec();
    not_utf8.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
    let hostile: Vec<(Vec<u8>, &str)> = vec![
        (vec![b'1'; 300_000], "oversized_payloads"),
        (
            format!("{{\"value\":{}", "[".repeat(100_000)).into_bytes(),
            "",
        ),
        (
            format!("{{\"values\":{{{}}}}}", wide.join(",")).into_bytes(),
            "too_many_channels",
        ),
        (not_utf8, ""),
        (br#"{"value": 1e400}"#.to_vec(), "out_of_range_values"),
        (b"NaN".to_vec(), "out_of_range_values"),
        (
            br#"{"values": {"a": 1e300}}"#.to_vec(),
            "out_of_range_values",
        ),
        (
            br#"{"ts": "2200-01-01T00:00:00Z", "value": 1}"#.to_vec(),
            "bad_timestamps",
        ),
        (br#"{"ts": -5, "value": 1}"#.to_vec(), "bad_timestamps"),
    ];
    let mut ts = T0_MS;
    let mut valid = 0;
    for (payload, _) in &hostile {
        client.publish(&topic, payload.clone()).expect("publish");
        ts += 1_000;
        client
            .publish(&topic, format!("{{\"ts\":{ts},\"value\":{valid}}}"))
            .expect("publish");
        valid += 1;
    }
    client.flush().expect("broker acknowledged every message");
    let sent = hostile.len() as u64 + valid;
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| {
            s.get("messages") >= sent && s.get("samples") >= valid
        })
        .unwrap_or_else(|| {
            panic!(
                "not every message was handled; last: {:?}",
                daemon.last_summary()
            )
        });
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.output());
    assert_eq!(s.get("payload_errors"), hostile.len() as u64, "{}", s.line);
    for counter in [
        "oversized_payloads",
        "too_many_channels",
        "out_of_range_values",
        "bad_timestamps",
    ] {
        let want = hostile.iter().filter(|(_, c)| *c == counter).count() as u64;
        assert_eq!(s.get(counter), want, "{counter}: {}", s.line);
    }
    assert_eq!(s.get("samples"), valid, "{}", s.line);
    assert_eq!(s.get("out_of_order"), 0, "{}", s.line);
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}

/// A topic whose sensor key is 65 400 bytes: valid for the broker, but the key would make the
/// daemon's own topics (`<prefix>/<node>/nodata/<key>`, …) longer than MQTT's 65 535 bytes,
/// which rumqttc truncates silently (a garbage retained message on a wrong topic, then a
/// reconnect loop). Proves the key is refused and counted (`oversized_keys`, not a stream),
/// the next key is taken, and the daemon's one stream going silent publishes its no-data event
/// without the connection ever failing.
#[test]
fn a_key_too_long_for_outgoing_topics_is_refused_and_counted() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("long-key", broker.port());
    config.extra = "[streams]\nno_data_after_secs = 1\n".to_string();
    let mut daemon = start_online(&config);
    let mut client = TestClient::connect(broker.port(), &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    let long = config.input_topic(&format!("site/{}", "k".repeat(65_400)));
    client
        .publish(&long, format!("{{\"ts\":{T0_MS},\"value\":1}}"))
        .expect("publish");
    client
        .publish(
            &config.input_topic("site/ok"),
            format!("{{\"ts\":{T0_MS},\"value\":1}}"),
        )
        .expect("publish");
    client.flush().expect("broker acknowledged every message");
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| {
            s.get("messages") >= 2 && s.get("samples") >= 1 && s.get("nodata") >= 1
        })
        .unwrap_or_else(|| panic!("not handled; last: {:?}", daemon.last_summary()));
    assert_eq!(s.get("oversized_keys"), 1, "{}", s.line);
    assert_eq!(s.get("unknown_topics"), 0, "{}", s.line);
    assert_eq!(s.get("streams"), 1, "{}", s.line);
    assert_eq!(
        s.get("nodata"),
        1,
        "only the valid key is a stream: {}",
        s.line
    );
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| s.get("events") >= 1)
        .unwrap_or_else(|| {
            panic!(
                "no-data event not acknowledged; last: {:?}",
                daemon.last_summary()
            )
        });
    assert_eq!(s.get("reconnects"), 0, "{}", s.line);
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.output());
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}

/// A device that sends `ts` in seconds (1 767 600 000 = 2026-01-05 as seconds, 1970-01-21 as
/// milliseconds). Proves the sample is taken as documented (milliseconds: not refused, not
/// guessed) and the log says the timestamp looks like seconds, naming the topic.
#[test]
fn a_timestamp_in_seconds_is_taken_as_milliseconds_and_logged() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let config = TestConfig::new("seconds", broker.port());
    let mut daemon = start_online(&config);
    let mut client = TestClient::connect(broker.port(), &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    let topic = config.input_topic("site/secs");
    for i in 0..3u64 {
        client
            .publish(
                &topic,
                format!("{{\"ts\":{},\"value\":{i}}}", 1_767_600_000 + i),
            )
            .expect("publish");
    }
    client.flush().expect("broker acknowledged every message");
    let line = daemon
        .process()
        .wait_for_line(TIMEOUT, |l| l.contains("looks like seconds"))
        .unwrap_or_else(|| panic!("no warning; output:\n{}", daemon.output()));
    // The value as received (not turned into milliseconds), and the topic.
    assert!(
        line.contains(&topic) && line.split_whitespace().any(|t| t == "ts=1767600000"),
        "{line}"
    );
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| s.get("samples") >= 3)
        .unwrap_or_else(|| panic!("samples not taken; last: {:?}", daemon.last_summary()));
    assert_eq!(s.get("payload_errors"), 0, "{}", s.line);
    assert_eq!(
        daemon.output().matches("looks like seconds").count(),
        1,
        "one warning a minute, not one a sample"
    );
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}

/// Four refusals of different kinds in quick succession, each on its own topic: text that is
/// not a number, a timestamp far in the future, a value that is a string, and a sample older
/// than its stream's last one. Proves each is counted (the three bad payloads in
/// `payload_errors`, the far-future one also in `bad_timestamps`, the old sample in
/// `out_of_order`) and that each logs a
/// warning naming its topic (for the stream refusal, its key) and what was wrong with it: a
/// refusal of one kind does not keep the next kind out of the log, which is how a far-future
/// `ts` or a string value used to be counted without a word.
#[test]
fn every_refusal_reason_is_logged_with_its_topic() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let config = TestConfig::new("refusals-logged", broker.port());
    let mut daemon = start_online(&config);
    let mut client = TestClient::connect(broker.port(), &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    let (text, future, string, order) = (
        config.input_topic("site/text"),
        config.input_topic("site/future"),
        config.input_topic("site/string"),
        config.input_topic("site/order"),
    );
    client.publish(&text, "hello").expect("publish");
    client
        .publish(&future, r#"{"ts":99999999999999,"value":1}"#)
        .expect("publish");
    client
        .publish(&string, format!(r#"{{"ts":{now_ms},"value":"x"}}"#))
        .expect("publish");
    client
        .publish(&order, format!(r#"{{"ts":{},"value":1}}"#, T0_MS + 1_000))
        .expect("publish");
    client
        .publish(&order, format!(r#"{{"ts":{T0_MS},"value":2}}"#))
        .expect("publish");
    client.flush().expect("broker acknowledged every message");

    let s = daemon
        .wait_for_summary(TIMEOUT, |s| {
            s.get("payload_errors") >= 3 && s.get("samples") + s.get("out_of_order") >= 2
        })
        .unwrap_or_else(|| panic!("not handled; last: {:?}", daemon.last_summary()));
    assert_eq!(s.get("payload_errors"), 3, "{}", s.line);
    assert_eq!(s.get("bad_timestamps"), 1, "{}", s.line);
    assert_eq!(s.get("out_of_order"), 1, "{}", s.line);
    let key_order = order.split_once('/').expect("root/key").1.to_string();
    let old_ts = format!("ts={T0_MS} ");
    let expected: [(&str, String, &str); 4] = [
        (
            "bad payload",
            format!("topic={text} "),
            "neither a JSON object nor a number",
        ),
        ("bad payload", format!("topic={future} "), "99999999999999"),
        (
            "bad payload",
            format!("topic={string} "),
            "\"value\" is not a number",
        ),
        ("out of order", format!("key={key_order} "), &old_ts),
    ];
    for (what, topic, detail) in &expected {
        let line = daemon.process().wait_for_line(TIMEOUT, |l| {
            l.contains("WARN")
                && l.contains(what)
                && l.contains(topic.as_str())
                && l.contains(detail)
        });
        assert!(
            line.is_some(),
            "no warning with {what:?}, {topic:?} and {detail:?}; log:\n{}",
            daemon.output()
        );
    }
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}
