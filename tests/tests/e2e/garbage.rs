//! Bad input through a real broker: the daemon counts it and carries on.

use sparsewatch_e2e::{Daemon, Mosquitto, TestClient, TestConfig, TIMEOUT};

use crate::{start_online, T0_MS};

/// `mqtt.max_payload_bytes` in this test's config.
const MAX_PAYLOAD: usize = 512;

/// Interleaves bad payloads (truncated JSON, text that is not a number, `NaN`, a JSON value
/// that is a string, a payload larger than `mqtt.max_payload_bytes`) and a topic that does not
/// match the template with valid samples of one key. Proves that the daemon survives all of
/// them (the process is still running), counts each bad payload in `payload_errors` and the
/// unmatched topic in `unknown_topics`, takes every valid sample, and still takes valid samples
/// sent after the garbage.
#[test]
fn garbage_is_counted_and_the_daemon_carries_on() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("garbage", broker.port());
    config.mqtt_extra = format!("max_payload_bytes = {MAX_PAYLOAD}");
    let mut daemon = start_online(&config);
    let mut client = TestClient::connect(broker.port(), &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    let topic = config.input_topic("site/s1");

    let oversized = format!(
        "{{\"ts\":{T0_MS},\"value\":1.0,\"pad\":\"{}\"}}",
        "x".repeat(MAX_PAYLOAD * 4)
    );
    let bad_payloads = [
        format!("{{\"ts\": {T0_MS}, \"value\": "),
        "hello".to_string(),
        "NaN".to_string(),
        format!("{{\"ts\": {T0_MS}, \"value\": \"abc\"}}"),
        oversized,
    ];
    let mut feed = Feed {
        topic,
        ts: T0_MS,
        sent: 0,
    };
    feed.publish(&mut client, 20);
    for bad in &bad_payloads {
        client.publish(&feed.topic, bad.as_str()).expect("publish");
        feed.publish(&mut client, 5);
    }
    // One level short of the template `<root>/{site}/{sensor}`.
    client
        .publish(&config.input_topic("site"), "1.0")
        .expect("publish");
    feed.publish(&mut client, 5);
    client.flush().expect("broker acknowledged every message");

    let valid = feed.sent;
    let sent = valid + bad_payloads.len() as u64 + 1;
    let summary = wait_all_taken(&daemon, sent, valid);
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.output());
    assert!(
        summary.get("payload_errors") >= bad_payloads.len() as u64,
        "{} bad payloads sent: {}",
        bad_payloads.len(),
        summary.line
    );
    assert!(
        summary.get("unknown_topics") >= 1,
        "one unknown topic sent: {}",
        summary.line
    );

    // Valid samples after the garbage are still taken.
    let before = summary.get("samples");
    feed.publish(&mut client, 50);
    client.flush().expect("broker acknowledged every message");
    let after = daemon.wait_for_summary(TIMEOUT, |s| s.get("samples") >= before + 50);
    assert!(
        after.is_some(),
        "valid samples after the garbage were not taken; last summary: {:?}",
        daemon.last_summary()
    );
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}

/// Valid single-value samples of one key, one second apart in event time.
struct Feed {
    topic: String,
    ts: i64,
    sent: u64,
}

impl Feed {
    fn publish(&mut self, client: &mut TestClient, count: usize) {
        for _ in 0..count {
            self.ts += 1_000;
            let v = 1.0 + (self.sent % 7) as f64 * 0.1;
            client
                .publish(&self.topic, format!("{{\"ts\":{},\"value\":{v}}}", self.ts))
                .expect("publish");
            self.sent += 1;
        }
    }
}

/// Waits for a summary that shows `sent` messages received and `valid` samples taken.
fn wait_all_taken(daemon: &Daemon, sent: u64, valid: u64) -> sparsewatch_e2e::Summary {
    daemon
        .wait_for_summary(TIMEOUT, |s| {
            s.get("messages") >= sent && s.get("samples") >= valid
        })
        .unwrap_or_else(|| {
            panic!(
                "no summary with messages >= {sent} and samples >= {valid} within {TIMEOUT:?}; \
                 last: {:?}",
                daemon.last_summary()
            )
        })
}
