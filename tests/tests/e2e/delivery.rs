//! Delivery guarantees through a real broker: nothing lost and nothing counted twice when the
//! daemon or the broker restarts; reconnection after a broker kill; the no-data condition;
//! events kept in the spool file delivered late.

use std::time::Duration;

use sparsewatch_e2e::{
    read_retained, wait_until, BrokerOptions, Daemon, Mosquitto, Summary, TestClient, TestConfig,
    TIMEOUT,
};

use crate::{start_online, T0_MS};

/// Keys the numbered messages are spread over.
const KEYS: [&str; 4] = ["line1/a", "line1/b", "line2/a", "line2/b"];

/// Publishes messages `from..to` of the numbered sequence at QoS 1: message `i` goes to key
/// `KEYS[i % 4]` with event time `T0 + i` ms (so every key's timestamps increase), and waits
/// until the broker acknowledged all of them.
fn publish_numbered(port: u16, config: &TestConfig, from: usize, to: usize) {
    let mut client = TestClient::connect(port, &sparsewatch_e2e::unique("numbered-pub"))
        .expect("connect publisher");
    for i in from..to {
        let key = KEYS[i % KEYS.len()];
        let payload = format!("{{\"ts\":{},\"value\":{}}}", T0_MS + i as i64, i % 97);
        client
            .publish(&config.input_topic(key), payload)
            .expect("publish");
    }
    client.flush().expect("broker acknowledged every message");
}

/// The first summary line in which the daemon has taken (or refused as duplicates) at least
/// `n` messages.
fn wait_taken(daemon: &Daemon, n: u64) -> Summary {
    daemon
        .wait_for_summary(TIMEOUT, |s| s.get("samples") + s.get("duplicates") >= n)
        .unwrap_or_else(|| {
            panic!(
                "the daemon did not take {n} messages within {TIMEOUT:?}; last summary: {:?}\n{}",
                daemon.last_summary(),
                daemon.output()
            )
        })
}

/// Nothing but samples and protocol duplicates: no loss, no reordering, no drop.
fn assert_clean(s: &Summary) {
    for field in ["out_of_order", "drops", "payload_errors", "unknown_topics"] {
        assert_eq!(s.get(field), 0, "{field} in {}", s.line);
    }
}

/// N numbered QoS 1 messages, published while the daemon runs, while it stops (SIGTERM in
/// the middle of the stream), and while it is down. Its persistent session keeps the
/// subscription and everything not acknowledged at the broker; acknowledgements are sent only
/// after a worker took the sample and are flushed before the clean disconnect, so the second
/// run gets exactly what the first did not take. Proves: first run's samples + second run's
/// samples = N exactly, nothing out of order or dropped, and the broker held back the second
/// half until the daemon came back (left_at_broker counts what arrived during the stop).
#[test]
fn daemon_restart_loses_nothing_and_takes_nothing_twice() {
    const N: usize = 6_000;
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("restart", broker.port());
    config.summary_interval_secs = 1;
    let mut first = start_online(&config);
    // Half the stream while the daemon runs, then stop it while it is still taking them.
    publish_numbered(broker.port(), &config, 0, N / 2);
    assert_eq!(first.stop().expect("stop").code(), Some(0));
    let s1 = first
        .last_summary()
        .expect("final summary of the first run");
    assert_clean(&s1);
    // The other half while the daemon is down: the broker queues it for the session.
    publish_numbered(broker.port(), &config, N / 2, N);

    let second = start_online(&config);
    let need = N as u64 - s1.get("samples");
    let s2 = wait_taken(&second, need);
    // Let anything that would be a double delivery arrive and be counted.
    std::thread::sleep(Duration::from_millis(1_500));
    let s2 = second.last_summary().unwrap_or(s2);
    assert_clean(&s2);
    assert_eq!(
        s1.get("samples") + s2.get("samples"),
        N as u64,
        "every message taken exactly once over both runs:\n first: {}\nsecond: {}",
        s1.line,
        s2.line
    );
    assert_eq!(
        s2.get("duplicates"),
        0,
        "a clean stop acknowledges everything it took: {}",
        s2.line
    );
}

/// N numbered QoS 1 messages, half before and half after the broker is stopped (SIGTERM, so
/// Mosquitto saves its persistence file: sessions, subscriptions, unacknowledged messages) and
/// started again on the same port. The broker keeps Mosquitto's default in-flight window of
/// 20 per client, so most of the stream waits in its queue for the daemon's PUBACKs (with a
/// large finite `max_queued_messages`: Mosquitto 2.0.11 stalls with 0 and a finite window).
/// Proves: the daemon reconnects (reconnects ≥ 1, the outage
/// is measured, broker_connected = 1 again), takes every message exactly once as a sample
/// (samples = N, out_of_order 0): what the broker redelivers after the restart and the daemon
/// had already taken is counted apart as duplicates, never as samples.
#[test]
fn broker_restart_loses_nothing_and_takes_nothing_twice() {
    const N: usize = 6_000;
    let mut broker = Mosquitto::start_with(&BrokerOptions {
        persistence: true,
        max_inflight: 20,
        max_queued: 1_000_000,
        ..BrokerOptions::default()
    })
    .expect("start mosquitto");
    let config = TestConfig::new("broker-restart", broker.port());
    let daemon = start_online(&config);
    publish_numbered(broker.port(), &config, 0, N / 2);
    broker.stop(libc::SIGTERM).expect("stop the broker");
    broker.restart().expect("restart the broker");
    let back = daemon.wait_for_summary(TIMEOUT, |s| {
        s.get("reconnects") >= 1 && s.get("broker_connected") == 1
    });
    assert!(
        back.is_some(),
        "the daemon did not report a reconnection within {TIMEOUT:?}:\n{}",
        daemon.output()
    );
    publish_numbered(broker.port(), &config, N / 2, N);
    wait_taken(&daemon, N as u64);
    std::thread::sleep(Duration::from_millis(1_500));
    let s = daemon.last_summary().expect("a summary");
    assert_clean(&s);
    assert_eq!(s.get("samples"), N as u64, "{}", s.line);
    assert!(s.get("outage_ms") > 0, "the outage is measured: {}", s.line);
    assert_eq!(s.get("broker_connected"), 1, "{}", s.line);
}

/// The broker is killed (SIGKILL, no persistence: it forgets the session, the subscription
/// and the retained status) while the daemon is connected, and started again. Proves: the
/// daemon logs the failure, reconnects with its capped backoff, subscribes again (samples
/// published after the restart are taken), publishes its retained "online" status again, and
/// reports the outage (reconnects, outage_ms, broker_connected).
#[test]
fn daemon_recovers_from_a_broker_kill() {
    let mut broker = Mosquitto::start().expect("start mosquitto");
    let config = TestConfig::new("broker-kill", broker.port());
    let mut daemon = start_online(&config);
    publish_numbered(broker.port(), &config, 0, 400);
    wait_taken(&daemon, 400);

    broker.stop(libc::SIGKILL).expect("kill the broker");
    let lost = daemon
        .process()
        .wait_for_line(TIMEOUT, |l| l.contains("broker connection failed"));
    assert!(
        lost.is_some(),
        "no log of the lost connection:\n{}",
        daemon.output()
    );
    broker.restart().expect("restart the broker");

    let online = wait_until(TIMEOUT, || {
        let m = read_retained(config.port, &config.status_topic()).ok()??;
        (m.json().ok()?["state"] == "online").then_some(())
    });
    assert!(
        online.is_some(),
        "no retained online status after the broker restart:\n{}",
        daemon.output()
    );
    // Resubscribed: new samples are taken.
    publish_numbered(broker.port(), &config, 400, 800);
    let s = wait_taken(&daemon, 800);
    assert!(s.get("reconnects") >= 1, "{}", s.line);
    assert!(s.get("outage_ms") > 0, "{}", s.line);
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| {
            s.get("broker_connected") == 1 && s.get("samples") >= 800
        })
        .expect("connected summary");
    assert_clean(&s);
    assert!(
        daemon
            .output()
            .lines()
            .any(|l| l.contains("reconnected to broker") && l.contains("outage_ms=")),
        "the reconnection and its outage are logged:\n{}",
        daemon.output()
    );
}

/// Two keys flow; then one goes silent for longer than `streams.no_data_after_secs` (1 s)
/// while the other keeps flowing. Proves: a retained no-data event with `active: true`
/// (schema `nodata.schema.json`) appears for the silent key only, and its next sample clears
/// it (`active: false`, retained, so a fresh subscriber reads the current condition).
#[test]
fn a_silent_stream_raises_no_data_and_data_clears_it() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("nodata", broker.port());
    config.extra = "[streams]\nno_data_after_secs = 1\n".to_string();
    let daemon = start_online(&config);
    let nodata = format!("{}/{}/nodata/#", config.prefix, config.node_id);
    let watcher =
        TestClient::connect(broker.port(), &format!("{}-watch", config.node_id)).expect("connect");
    watcher.subscribe(&nodata).expect("subscribe");
    let mut publisher =
        TestClient::connect(broker.port(), &format!("{}-pub", config.node_id)).expect("connect");
    let quiet = config.input_topic("site/quiet");
    let busy = config.input_topic("site/busy");
    let sample = |i: i64| format!("{{\"ts\":{},\"value\":1.0}}", T0_MS + i);
    publisher.publish(&quiet, sample(0)).expect("publish");
    // The busy key keeps flowing for 3 s.
    for i in 0..30 {
        publisher.publish(&busy, sample(i)).expect("publish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let schema = crate::schema("nodata.schema.json");
    let quiet_topic = format!("{}/{}/nodata/site/quiet", config.prefix, config.node_id);
    let (raised, others) = watcher.recv_matching(TIMEOUT, |m| m.topic == quiet_topic);
    let raised = raised
        .unwrap_or_else(|| panic!("no no-data event for the silent key:\n{}", daemon.output()))
        .json()
        .expect("JSON");
    crate::assert_valid(&schema, &raised);
    assert_eq!(raised["active"], true, "{raised}");
    assert_eq!(raised["key"], "site/quiet", "{raised}");
    assert_eq!(raised["after_secs"], 1, "{raised}");
    assert!(others.is_empty(), "events for the busy key: {others:?}");

    publisher.publish(&quiet, sample(1)).expect("publish");
    let (cleared, _) = watcher.recv_matching(TIMEOUT, |m| m.topic == quiet_topic);
    let cleared = cleared
        .expect("a cleared no-data event")
        .json()
        .expect("JSON");
    crate::assert_valid(&schema, &cleared);
    assert_eq!(cleared["active"], false, "{cleared}");
    let retained = read_retained(broker.port(), &quiet_topic)
        .expect("read")
        .expect("retained");
    assert_eq!(retained.json().expect("JSON")["active"], false);
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| s.get("nodata") >= 1)
        .expect("summary");
    assert_eq!(
        s.get("nodata"),
        1,
        "only the quiet key went silent: {}",
        s.line
    );
}

/// An anomaly event a previous run could not deliver (left in the spool file
/// `output.buffer.file`) is published when the daemon starts and reaches the broker. Proves:
/// the event arrives on its topic with `"delayed": true` and matches
/// `anomaly.schema.json`; the daemon counts it as published only once the broker acknowledged
/// it (events = 1, events_delayed = 1, events_buffered = 0); after a clean stop the spool
/// file holds nothing undelivered.
#[test]
fn spooled_events_are_delivered_late_and_flagged() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let spool_dir = tempfile::tempdir().expect("tempdir");
    let spool = spool_dir.path().join("outbox.jsonl");
    let mut config = TestConfig::new("spool", broker.port());
    config.extra = format!("[output.buffer]\nfile = \"{}\"\n", spool.display());
    let event = serde_json::json!({
        "kind": "anomaly", "schema": 1, "node": config.node_id, "key": "site/pump",
        "seq": 7, "window_start_ms": T0_MS, "window_end_ms": T0_MS + 31_000,
        "window_start": "2026-01-05T08:00:00.000Z", "window_end": "2026-01-05T08:00:31.000Z",
        "score": 1.0, "likelihood": 0.99999, "threshold": 0.9999,
        "detector": "baseline", "channel": "x"
    });
    std::fs::write(
        &spool,
        format!("{}\n", serde_json::json!({"add": 1, "event": event})),
    )
    .expect("seed the spool file");

    let watcher =
        TestClient::connect(broker.port(), &format!("{}-watch", config.node_id)).expect("connect");
    watcher
        .subscribe(&format!("{}/{}/anomaly/#", config.prefix, config.node_id))
        .expect("subscribe");
    let mut daemon = start_online(&config);
    let (got, _) = watcher.recv_matching(TIMEOUT, |_| true);
    let got =
        got.unwrap_or_else(|| panic!("the spooled event was not delivered:\n{}", daemon.output()));
    assert_eq!(got.topic, config.anomaly_topic("site/pump"));
    let v = got.json().expect("JSON");
    crate::assert_valid(&crate::schema("anomaly.schema.json"), &v);
    assert_eq!(v["delayed"], true, "{v}");
    assert_eq!(v["seq"], 7, "{v}");
    assert!(
        v.get("kind").is_none(),
        "the spool's tag is not published: {v}"
    );
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| s.get("events") >= 1)
        .expect("summary");
    assert_eq!(
        (
            s.get("events"),
            s.get("events_delayed"),
            s.get("events_buffered")
        ),
        (1, 1, 0),
        "{}",
        s.line
    );
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
    let left: Vec<String> = std::fs::read_to_string(&spool)
        .expect("spool file")
        .lines()
        .map(String::from)
        .collect();
    let added = left.iter().filter(|l| l.contains("\"add\"")).count();
    let done = left.iter().filter(|l| l.contains("\"done\"")).count();
    assert_eq!(
        added, done,
        "nothing undelivered left in the spool: {left:?}"
    );
}

/// Overload policy "hold" (the default) with worker queues of one reading, far smaller than
/// the burst: when the queue is full the ingest stops reading and the broker holds the rest.
/// Proves: every one of N messages becomes a sample, none is dropped, none out of order.
#[test]
fn overload_hold_takes_everything() {
    const N: usize = 3_000;
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("hold", broker.port());
    config.extra = "[workers]\ncount = 1\nqueue_capacity = 1\n".to_string();
    let daemon = start_online(&config);
    publish_numbered(broker.port(), &config, 0, N);
    let s = wait_taken(&daemon, N as u64);
    eprintln!("hold: {}", s.line);
    assert_clean(&s);
    assert_eq!(s.get("samples"), N as u64, "{}", s.line);
    assert_eq!(s.get("duplicates"), 0, "{}", s.line);
}

/// Overload policy "shed" with worker queues of one reading: a message whose worker has no
/// room is dropped, counted and acknowledged. Proves: every one of N messages is either a
/// sample or a counted drop (samples + drops = messages = N), and nothing dropped comes back
/// (no duplicates, nothing out of order), since shed messages are acknowledged.
#[test]
fn overload_shed_counts_every_drop() {
    const N: usize = 3_000;
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("shed", broker.port());
    config.mqtt_extra = "overload = \"shed\"".to_string();
    config.extra = "[workers]\ncount = 1\nqueue_capacity = 1\n".to_string();
    let daemon = start_online(&config);
    publish_numbered(broker.port(), &config, 0, N);
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| s.get("samples") + s.get("drops") >= N as u64)
        .unwrap_or_else(|| panic!("not all messages accounted for:\n{}", daemon.output()));
    std::thread::sleep(Duration::from_millis(1_500));
    let s = daemon.last_summary().unwrap_or(s);
    eprintln!("shed: {}", s.line);
    assert_eq!(s.get("messages"), N as u64, "{}", s.line);
    assert_eq!(s.get("samples") + s.get("drops"), N as u64, "{}", s.line);
    assert_eq!(
        (s.get("duplicates"), s.get("out_of_order"), s.get("holds")),
        (0, 0, 0),
        "{}",
        s.line
    );
}
