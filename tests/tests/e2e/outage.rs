//! Outbound while the broker is down (issue #7): anomalies detected during an outage wait in
//! the outbox (in memory, or in the spool file `output.buffer.file`) and reach the broker
//! after it comes back, flagged `"delayed": true`; codes of the outage are dropped and
//! counted; the outbox is bounded and refuses (and counts) the newest events when full.
//!
//! To have the windows scored while the broker is down, the daemon runs with the test hook
//! `SPARSEWATCH_TEST_WORKER_GATE` (`worker::GATE_ENV`): while the gate file exists its worker
//! leaves its queue alone. A test publishes the whole stream (the worker queue holds all of
//! it), waits until the daemon has received every message, stops the broker, waits until the
//! daemon reports the connection lost, and only then removes the gate. Every step waits on the
//! daemon's `/metrics`, never on a fixed sleep.
//!
//! The oracle for "exactly as produced" is `sparsewatch replay --offline` over the same
//! messages with the same configuration: the same pipeline, single-threaded, deterministic.
//! The delivered events must be its events, in its order, each with `"delayed": true` added.
//!
//! The test subscriber has a persistent session on a broker that saves its state at SIGTERM,
//! so events the daemon publishes after the broker restart wait for the subscriber at the
//! broker, whenever it connects.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sparsewatch_e2e::{
    daemon_binary, http_get, unique, wait_until, BrokerOptions, Daemon, Mosquitto, Process,
    TestClient, TestConfig, TIMEOUT,
};

use crate::{gaussian, start_online_with_env, values_payload, T0_MS};

/// The daemon's test hook (`worker::GATE_ENV` in the daemon crate).
const GATE_ENV: &str = "SPARSEWATCH_TEST_WORKER_GATE";

/// Samples per key, and the index of the first faulty one (as in `detection.rs`).
const N: usize = 4_000;
const ONSET: usize = 3_000;
const PERIOD_MS: i64 = 1_000;

/// The messages of `keys` step-fault streams (channel `x` steps up by 8 standard deviations
/// at sample `ONSET`), interleaved in time, as (topic, payload) in publish order.
fn fault_streams(config: &TestConfig, keys: &[&str]) -> Vec<(String, String)> {
    let series: Vec<(Vec<f64>, Vec<f64>)> = (0..keys.len() as u64)
        .map(|k| {
            (
                gaussian(crate::stream_seed(100 + 2 * k), N, 10.0, 1.0),
                gaussian(crate::stream_seed(101 + 2 * k), N, 5.0, 0.5),
            )
        })
        .collect();
    let mut out = Vec::with_capacity(N * keys.len());
    for i in 0..N {
        for (k, key) in keys.iter().enumerate() {
            let ts = T0_MS + i as i64 * PERIOD_MS + k as i64;
            let step = if i >= ONSET { 8.0 } else { 0.0 };
            let (x, y) = &series[k];
            out.push((
                config.input_topic(key),
                values_payload(ts, &[("x", x[i] + step), ("y", y[i])]),
            ));
        }
    }
    out
}

/// What `sparsewatch replay --offline` publishes for `messages` under the daemon's own
/// configuration: the anomaly events, (topic, payload) in order.
fn offline_events(config: &TestConfig, messages: &[(String, String)]) -> Vec<(String, Value)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("sparsewatch.toml");
    std::fs::write(&conf, config.to_toml()).expect("write the config");
    let rec = dir.path().join("recording.jsonl");
    let out = dir.path().join("replay.jsonl");
    let mut text = String::new();
    for (topic, payload) in messages {
        let ts: Value = serde_json::from_str(payload).expect("payload JSON");
        let line = serde_json::json!({
            "time_ms": ts["ts"], "topic": topic, "qos": 1, "payload": payload,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(&rec, text).expect("write the recording");
    let args: [&OsStr; 6] = [
        OsStr::new("replay"),
        OsStr::new("--offline"),
        OsStr::new("--config"),
        conf.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ];
    let mut replay = Process::spawn(
        daemon_binary(),
        args.iter().copied().chain([rec.as_os_str()]),
    )
    .expect("spawn replay");
    let status = replay.wait_timeout(TIMEOUT * 4).expect("replay finished");
    assert!(status.success(), "replay failed:\n{}", replay.output());
    std::fs::read_to_string(&out)
        .expect("replay output")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("replay line is JSON"))
        .filter(|v| v["topic"].as_str().is_some_and(|t| t.contains("/anomaly/")))
        .map(|v| {
            (
                v["topic"].as_str().unwrap().to_string(),
                v["payload"].clone(),
            )
        })
        .collect()
}

/// Publishes `messages` at QoS 1 and waits until the broker acknowledged all of them.
fn publish_all(port: u16, messages: &[(String, String)]) {
    let mut publisher = TestClient::connect(port, &unique("outage-pub")).expect("connect");
    for (topic, payload) in messages {
        publisher.publish(topic, payload.clone()).expect("publish");
    }
    publisher.flush().expect("broker acknowledged every sample");
}

/// One scrape of `/metrics`: series name (with labels, as exposed) → value.
#[derive(Debug)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn take(addr: SocketAddr) -> Option<Self> {
        let (status, body) = http_get(addr, "/metrics").ok()?;
        (status == 200).then(|| {
            Scrape(
                body.lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| {
                        let (s, v) = l.rsplit_once(' ')?;
                        Some((s.to_string(), v.parse().ok()?))
                    })
                    .collect(),
            )
        })
    }

    /// A gauge of `Metrics` (`sparsewatch_<name>`, no `_total`).
    fn gauge(&self, name: &str) -> u64 {
        let v = self.0.get(&format!("sparsewatch_{name}"));
        v.copied()
            .unwrap_or_else(|| panic!("no gauge {name} in {self:?}")) as u64
    }

    /// A counter of `Metrics` (`sparsewatch_<name>_total`).
    fn counter(&self, name: &str) -> u64 {
        let v = self.0.get(&format!("sparsewatch_{name}_total"));
        v.copied()
            .unwrap_or_else(|| panic!("no counter {name} in {self:?}")) as u64
    }

    fn connected(&self) -> bool {
        self.0.get("sparsewatch_broker_connected") == Some(&1.0)
    }
}

/// Scrapes until `pred` holds; panics with the last scrape and the daemon's log otherwise.
fn wait_metrics(daemon: &Daemon, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let addr = daemon.http_addr().expect("http endpoint");
    wait_until(TIMEOUT * 2, || Scrape::take(addr).filter(|s| pred(s))).unwrap_or_else(|| {
        panic!(
            "{what}: not reached within {:?}; last scrape: {:?}\nlog:\n{}",
            TIMEOUT * 2,
            Scrape::take(addr),
            daemon.output()
        )
    })
}

/// Scrapes until the daemon has taken `total` samples, for as long as it keeps taking more:
/// fails only when the count stands still for `TIMEOUT * 2`. How long a backlog takes depends
/// on the machine (a debug build under qemu-user takes minutes for what takes seconds here);
/// that it makes progress and finishes is what the tests rely on.
fn wait_samples(daemon: &Daemon, total: u64) -> Scrape {
    let addr = daemon.http_addr().expect("http endpoint");
    let (mut last, mut since) = (None, std::time::Instant::now());
    loop {
        if let Some(s) = Scrape::take(addr) {
            let taken = s.counter("samples");
            if taken == total {
                return s;
            }
            if last != Some(taken) {
                (last, since) = (Some(taken), std::time::Instant::now());
            }
        }
        assert!(
            since.elapsed() < TIMEOUT * 2,
            "the daemon stopped taking samples at {last:?} of {total} for {:?}; last scrape: {:?}\nlog:\n{}",
            TIMEOUT * 2,
            Scrape::take(addr),
            daemon.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The gate file of the worker hook; the daemon's workers wait while it exists.
struct Gate {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Gate {
    fn closed() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gate");
        std::fs::write(&path, b"closed").expect("create the gate file");
        Gate { _dir: dir, path }
    }

    fn open(&self) {
        std::fs::remove_file(&self.path).expect("remove the gate file");
    }

    fn env(&self) -> [(&'static str, &OsStr); 1] {
        [(GATE_ENV, self.path.as_os_str())]
    }
}

/// The broker the tests stop and start again: it saves sessions and queued messages at a
/// SIGTERM, so the test subscriber's session survives the restart.
fn persistent_broker() -> Mosquitto {
    Mosquitto::start_with(&BrokerOptions {
        persistence: true,
        ..BrokerOptions::default()
    })
    .expect("start mosquitto")
}

/// Creates the subscriber's persistent session (anomaly events of `config`'s node) and
/// leaves; [`collect_events`] connects to it again.
fn subscribe_persistent(config: &TestConfig) -> String {
    let id = format!("{}-watch", config.node_id);
    let watcher = TestClient::connect_persistent(config.port, &id).expect("connect watcher");
    watcher
        .subscribe(&format!("{}/{}/anomaly/#", config.prefix, config.node_id))
        .expect("subscribe");
    id
}

/// Connects the persistent subscriber `id` again and takes the `n` events queued for it,
/// then checks that nothing else comes for a moment (a second copy would be queued already).
fn collect_events(daemon: &Daemon, port: u16, id: &str, n: usize) -> Vec<(String, Value)> {
    let watcher = TestClient::connect_persistent(port, id).expect("reconnect watcher");
    let mut got = Vec::new();
    while got.len() < n {
        let m = watcher.recv(TIMEOUT).unwrap_or_else(|| {
            panic!(
                "only {} of {n} events reached the subscriber: {got:?}\nlog:\n{}",
                got.len(),
                daemon.output()
            )
        });
        got.push((m.topic.clone(), m.json().expect("event is JSON")));
    }
    let extra = watcher.recv(std::time::Duration::from_secs(2));
    assert!(
        extra.is_none(),
        "an event was delivered more than once: {:?} after {got:?}",
        extra.map(|m| m.text())
    );
    got
}

/// Checks the delivered events against the offline replay: the same events in the same order,
/// each valid against `anomaly.schema.json` and flagged `"delayed": true`.
fn assert_delivered_as_produced(got: &[(String, Value)], expected: &[(String, Value)]) {
    let schema = crate::schema("anomaly.schema.json");
    assert_eq!(
        got.len(),
        expected.len(),
        "got {got:?}\nexpected {expected:?}"
    );
    for ((topic, event), (want_topic, want)) in got.iter().zip(expected) {
        crate::assert_valid(&schema, event);
        assert_eq!(topic, want_topic);
        assert_eq!(event["delayed"], true, "{event}");
        let mut produced = event.clone();
        produced
            .as_object_mut()
            .expect("event is an object")
            .remove("delayed");
        assert_eq!(&produced, want, "the event was changed on its way");
    }
}

/// Starts a gated daemon, publishes `messages`, waits until the daemon received all of them,
/// stops the broker (SIGTERM) and waits until the daemon knows, then opens the gate and waits
/// until every sample is in and every event of the outage is in the outbox (or refused).
/// Returns the daemon and the scrape at that point.
fn detect_during_outage(
    broker: &mut Mosquitto,
    config: &TestConfig,
    messages: &[(String, String)],
    events: usize,
) -> (Daemon, Scrape) {
    let gate = Gate::closed();
    let daemon = start_online_with_env(config, &gate.env());
    publish_all(broker.port(), messages);
    let n = messages.len() as u64;
    wait_metrics(&daemon, "every message received", |s| {
        s.counter("messages") == n
    });
    let held = Scrape::take(daemon.http_addr().expect("http")).expect("scrape");
    assert_eq!(held.counter("samples"), 0, "the gate held the worker");

    broker.stop(libc::SIGTERM).expect("stop the broker");
    wait_metrics(&daemon, "the daemon saw the broker go", |s| !s.connected());
    gate.open();
    wait_samples(&daemon, n);
    let s = wait_metrics(&daemon, "every sample scored, every event out", |s| {
        s.counter("samples") == n
            && s.counter("detections") == events as u64
            && s.gauge("events_buffered") + s.counter("dropped_events") == events as u64
            && s.counter("dropped_codes") == s.counter("windows")
    });
    assert!(!s.connected(), "the broker is still down");
    assert_eq!(
        (s.counter("events_published"), s.counter("codes_published")),
        (0, 0),
        "nothing can be published while the broker is down: {s:?}"
    );
    assert!(s.counter("windows") > 0);
    eprintln!(
        "{}: during the outage: samples={} windows={} detections={} events_buffered={} \
         dropped_events={} dropped_codes={}",
        config.node_id,
        s.counter("samples"),
        s.counter("windows"),
        s.counter("detections"),
        s.gauge("events_buffered"),
        s.counter("dropped_events"),
        s.counter("dropped_codes")
    );
    (daemon, s)
}

/// With the in-memory outbox (no spool file) and the default persistent session: an anomaly
/// is detected while Mosquitto is stopped. Proves: while the broker is down the event waits
/// in the outbox (events_buffered = the events of the replay, events_published 0) and every
/// code of the outage is dropped and counted (dropped_codes = windows, codes_published 0: codes
/// are never buffered, by design); after the broker is back the events arrive exactly as the
/// offline replay produced them, plus `"delayed": true`, schema-valid, once each
/// (events_published = events_delayed = events, events_buffered 0, dropped_events 0). The
/// broker then redelivers the inputs the daemon could not acknowledge during the outage; they
/// are refused as duplicates and raise no event a second time.
#[test]
fn an_anomaly_detected_while_the_broker_is_down_is_delivered_late_and_flagged() {
    let mut broker = persistent_broker();
    let mut config = TestConfig::new("outage-mem", broker.port());
    config.extra = format!("[workers]\ncount = 1\nqueue_capacity = {}\n", 2 * N);
    let messages = fault_streams(&config, &["line1/motor"]);
    let watcher = subscribe_persistent(&config);
    let expected = offline_events(&config, &messages);
    assert!(!expected.is_empty(), "the replay detects the fault");

    let (daemon, down) = detect_during_outage(&mut broker, &config, &messages, expected.len());
    assert_eq!(down.gauge("events_buffered"), expected.len() as u64);
    assert_eq!(down.counter("dropped_events"), 0);

    broker.restart().expect("restart the broker");
    let n = expected.len() as u64;
    let up = wait_metrics(&daemon, "the events delivered", |s| {
        s.connected() && s.counter("events_published") == n && s.gauge("events_buffered") == 0
    });
    assert_eq!(up.counter("events_delayed"), n, "{up:?}");
    assert_eq!(up.counter("dropped_events"), 0, "{up:?}");
    let got = collect_events(&daemon, broker.port(), &watcher, expected.len());
    assert_delivered_as_produced(&got, &expected);

    // The inputs held unacknowledged through the outage come back; none counts twice.
    let total = messages.len() as u64;
    let again = wait_metrics(&daemon, "the redelivered inputs refused", |s| {
        s.counter("duplicates") == total
    });
    assert_eq!(again.counter("samples"), total, "{again:?}");
    assert_eq!(again.counter("detections"), n, "{again:?}");
    assert_eq!(again.counter("out_of_order"), 0, "{again:?}");
}

/// A burst: eight keys fault at the same sample while the broker is up, so their events are
/// produced within moments and the publisher keeps several in flight at once (up to
/// `mqtt::EVENTS_IN_FLIGHT`), each completed by its own PUBACK. The gate holds the worker
/// until every sample is in, so the whole burst is scored in one go. Proves: every event
/// reaches the subscriber once, exactly as the offline replay produced it and in its order
/// (one worker: the replay's order is the order produced), not flagged delayed
/// (events_published = events, events_delayed 0, events_buffered 0, dropped_events 0).
#[test]
fn a_burst_of_events_from_many_keys_goes_out_in_flight_together_in_order() {
    let broker = persistent_broker();
    let mut config = TestConfig::new("outage-burst", broker.port());
    let keys = ["k/1", "k/2", "k/3", "k/4", "k/5", "k/6", "k/7", "k/8"];
    config.extra = format!(
        "[workers]\ncount = 1\nqueue_capacity = {}\n",
        keys.len() * N
    );
    let messages = fault_streams(&config, &keys);
    let watcher = subscribe_persistent(&config);
    let expected = offline_events(&config, &messages);
    assert!(
        expected.len() >= keys.len(),
        "every key detects: {expected:?}"
    );

    let gate = Gate::closed();
    let daemon = start_online_with_env(&config, &gate.env());
    publish_all(broker.port(), &messages);
    let total = messages.len() as u64;
    wait_metrics(&daemon, "every message received", |s| {
        s.counter("messages") == total
    });
    gate.open();
    wait_samples(&daemon, total);
    let n = expected.len() as u64;
    let s = wait_metrics(&daemon, "every event delivered", |s| {
        s.counter("samples") == total
            && s.counter("events_published") == n
            && s.gauge("events_buffered") == 0
    });
    assert_eq!(
        (s.counter("events_delayed"), s.counter("dropped_events")),
        (0, 0),
        "{s:?}"
    );
    let got = collect_events(&daemon, broker.port(), &watcher, expected.len());
    let schema = crate::schema("anomaly.schema.json");
    let got_events: Vec<(String, Value)> = got
        .into_iter()
        .map(|(topic, mut event)| {
            crate::assert_valid(&schema, &event);
            let flag = event
                .as_object_mut()
                .expect("event is an object")
                .remove("delayed");
            assert_eq!(flag, None, "not delayed (absent when false): {event}");
            (topic, event)
        })
        .collect();
    assert_eq!(got_events, expected, "the events as produced, in order");
}

/// The undelivered events of a spool file: `add` records without a `done`, by id.
fn pending_in_spool(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("spool file");
    let mut pending = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("a whole record");
        if let Some(id) = v["add"].as_u64() {
            pending.insert(id, v["event"].clone());
        } else if let Some(id) = v["done"].as_u64() {
            pending.remove(&id);
        }
    }
    pending.into_values().collect()
}

/// How the first daemon of [`spooled_event_survives_the_daemon`] ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// SIGTERM: a clean stop, which leaves what the broker did not take in the spool file.
    Stop,
    /// SIGKILL: no chance to write anything more; only what was fsynced survives.
    Kill,
}

/// An anomaly detected while the broker is down goes into the spool file
/// (`output.buffer.file`, `fsync = true`, the default); the daemon then ends (`end`) while the
/// broker is still down, starts again, and only then the broker comes back. Proves: the event
/// is in the spool file when the first daemon is gone, the second run restores it
/// (events_buffered = events before any connection), and delivers it once, exactly as the
/// offline replay produced it plus `"delayed": true` (events_published = events_delayed =
/// events); after a clean stop the spool file holds nothing undelivered. The daemon uses a
/// clean MQTT session here, so the broker does not hand the inputs to the second run (which,
/// without a checkpoint, would detect the fault again and publish a fresh event): this test is
/// about the outbox.
fn spooled_event_survives_the_daemon(end: End) {
    let mut broker = persistent_broker();
    let spool_dir = tempfile::tempdir().expect("tempdir");
    let spool = spool_dir.path().join("outbox.jsonl");
    let mut config = TestConfig::new("outage-spool", broker.port());
    config.mqtt_extra = "persistent_session = false".to_string();
    config.extra = format!(
        "[workers]\ncount = 1\nqueue_capacity = {}\n\n[output.buffer]\nfile = \"{}\"\nfsync = true\n",
        2 * N,
        spool.display()
    );
    let messages = fault_streams(&config, &["line2/pump"]);
    let watcher = subscribe_persistent(&config);
    let expected = offline_events(&config, &messages);
    assert!(!expected.is_empty(), "the replay detects the fault");
    let n = expected.len() as u64;

    let (mut first, down) = detect_during_outage(&mut broker, &config, &messages, expected.len());
    assert_eq!(down.gauge("events_buffered"), n, "{down:?}");
    match end {
        End::Stop => {
            assert_eq!(first.stop().expect("stop").code(), Some(0));
            assert!(
                first
                    .output()
                    .contains("stay in the spool file for the next run"),
                "{}",
                first.output()
            );
        }
        End::Kill => {
            first.process().kill_hard().expect("kill -9");
        }
    }
    let spooled = pending_in_spool(&spool);
    assert_eq!(spooled.len(), expected.len(), "spool: {spooled:?}");

    let second = Daemon::start(&config).expect("start the daemon again");
    let restored = wait_metrics(&second, "the spool restored", |s| {
        s.gauge("events_buffered") == n
    });
    assert!(!restored.connected(), "the broker is still down");
    assert_eq!(restored.counter("connections"), 0, "{restored:?}");

    broker.restart().expect("restart the broker");
    let up = wait_metrics(&second, "the spooled events delivered", |s| {
        s.connected() && s.counter("events_published") == n && s.gauge("events_buffered") == 0
    });
    assert_eq!(up.counter("events_delayed"), n, "{up:?}");
    assert_eq!(up.counter("dropped_events"), 0, "{up:?}");
    assert_eq!(up.counter("messages"), 0, "no input reached the second run");
    let got = collect_events(&second, broker.port(), &watcher, expected.len());
    assert_delivered_as_produced(&got, &expected);

    let mut second = second;
    assert_eq!(second.stop().expect("stop").code(), Some(0));
    assert!(
        pending_in_spool(&spool).is_empty(),
        "nothing undelivered is left in the spool file"
    );
}

/// [`spooled_event_survives_the_daemon`] with a clean stop (SIGTERM) of the first daemon.
#[test]
fn a_spooled_event_survives_a_daemon_restart_during_the_outage() {
    spooled_event_survives_the_daemon(End::Stop);
}

/// [`spooled_event_survives_the_daemon`] with kill -9 of the first daemon: the spool file is
/// fsynced after every record, so the event survives the crash.
#[test]
fn a_spooled_event_survives_a_daemon_crash_during_the_outage() {
    spooled_event_survives_the_daemon(End::Kill);
}

/// `output.buffer.capacity = 2` and four faulty streams, so more events than the outbox holds
/// are detected while the broker is down. The design (outbox.rs, ARCHITECTURE.md "Channels"):
/// a full outbox refuses the new event and counts it. Proves: the outbox never holds more
/// than its capacity (events_buffered = 2), every refused event is counted (dropped_events =
/// detections − 2), and after the broker is back exactly the two oldest events arrive, as the
/// offline replay produced them plus `"delayed": true`.
#[test]
fn a_full_outbox_refuses_the_newest_events_and_counts_them() {
    const CAPACITY: usize = 2;
    let mut broker = persistent_broker();
    let mut config = TestConfig::new("outage-full", broker.port());
    let keys = ["a/one", "a/two", "b/one", "b/two"];
    config.extra = format!(
        "[workers]\ncount = 1\nqueue_capacity = {}\n\n[output.buffer]\ncapacity = {CAPACITY}\n",
        keys.len() * N
    );
    let messages = fault_streams(&config, &keys);
    let watcher = subscribe_persistent(&config);
    let expected = offline_events(&config, &messages);
    assert!(
        expected.len() > CAPACITY,
        "the test needs more events than the outbox holds: {expected:?}"
    );

    let (daemon, down) = detect_during_outage(&mut broker, &config, &messages, expected.len());
    assert_eq!(down.gauge("events_buffered"), CAPACITY as u64, "{down:?}");
    assert_eq!(
        down.counter("dropped_events"),
        (expected.len() - CAPACITY) as u64,
        "{down:?}"
    );

    broker.restart().expect("restart the broker");
    let up = wait_metrics(&daemon, "the buffered events delivered", |s| {
        s.connected() && s.counter("events_published") == CAPACITY as u64
    });
    assert_eq!(up.counter("events_delayed"), CAPACITY as u64, "{up:?}");
    assert_eq!(up.gauge("events_buffered"), 0, "{up:?}");
    let got = collect_events(&daemon, broker.port(), &watcher, CAPACITY);
    assert_delivered_as_produced(&got, &expected[..CAPACITY]);
}
