//! Codes on the bus: every window's sparse code is published on
//! `<prefix>/<node>/code/<key>` at QoS 0, matches `daemon/schemas/code.schema.json`, and the
//! decimation and CBOR options do what the configuration says.

use std::time::Duration;

use sparsewatch_e2e::{Mosquitto, TestClient, TestConfig, TIMEOUT};

use crate::{gaussian, start_online, values_payload, T0_MS};

/// Samples published; with window 32 and hop 4 they make (200 − 32) / 4 + 1 = 43 windows.
const N: usize = 200;
const WINDOWS: u64 = 43;

fn publish_stream(config: &TestConfig, key: &str) {
    let xs = gaussian(crate::stream_seed(40), N, 3.0, 1.0);
    let mut publisher = TestClient::connect(config.port, &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    for (i, x) in xs.iter().enumerate() {
        let ts = T0_MS + i as i64 * 1000;
        publisher
            .publish(
                &config.input_topic(key),
                values_payload(ts, &[("a", *x), ("b", -x)]),
            )
            .expect("publish");
    }
    publisher.flush().expect("broker acknowledged every sample");
}

fn collect(client: &TestClient, want: usize) -> Vec<sparsewatch_e2e::Message> {
    let mut got = vec![];
    while got.len() < want {
        match client.recv(Duration::from_secs(20)) {
            Some(m) => got.push(m),
            None => break,
        }
    }
    got
}

/// With the default configuration, each of the 43 windows of a two-channel stream yields one
/// JSON code message, in window order, valid against the code schema, with 8 atoms (the
/// default k) and their coefficients, a residual in [0, 1] and the stream's key.
#[test]
fn every_window_publishes_a_valid_json_code() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let config = TestConfig::new("codes", broker.port());
    let mut daemon = start_online(&config);
    let codes = TestClient::connect(broker.port(), &format!("{}-sub", config.node_id))
        .expect("connect subscriber");
    let topic = format!("{}/{}/code/site1/pump", config.prefix, config.node_id);
    codes.subscribe(&topic).expect("subscribe to codes");

    publish_stream(&config, "site1/pump");
    let got = collect(&codes, WINDOWS as usize);
    assert_eq!(got.len() as u64, WINDOWS, "log:\n{}", daemon.output());
    let validator = crate::schema("code.schema.json");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.topic, topic);
        let v = m.json().expect("code is JSON");
        crate::assert_valid(&validator, &v);
        assert_eq!(v["window"], i as u64, "{v}");
        assert_eq!(v["key"], "site1/pump", "{v}");
        assert_eq!(v["atoms"].as_array().map(Vec::len), Some(8), "{v}");
        assert_eq!(v["coefficients"].as_array().map(Vec::len), Some(8), "{v}");
    }
    let done = daemon.wait_for_summary(TIMEOUT, |s| s.get("codes") >= WINDOWS);
    assert!(
        done.is_some(),
        "summary never counted the codes: {:?}",
        daemon.last_summary()
    );
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}

/// A stream too wide for the dictionary (9 channels × window 32 = 288 > max_dim 256) is
/// scored without codes, and the log says so once with the arithmetic, where a user would
/// otherwise only see its code topic stay silent; again when a restart restores it.
#[test]
fn a_stream_too_wide_for_codes_is_logged() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let state = tempfile::tempdir().expect("state dir");
    let mut config = TestConfig::new("codes-wide", broker.port());
    config.extra = format!("[state]\ndir = \"{}\"\n", state.path().display());
    let mut daemon = start_online(&config);
    let mut publisher = TestClient::connect(config.port, &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    let names: Vec<String> = (0..9).map(|c| format!("c{c}")).collect();
    for i in 0..40i64 {
        let values: Vec<(&str, f64)> = names
            .iter()
            .enumerate()
            .map(|(c, n)| (n.as_str(), ((i + c as i64) as f64 * 0.3).sin()))
            .collect();
        publisher
            .publish(
                &config.input_topic("site1/wide"),
                values_payload(T0_MS + i * 1000, &values),
            )
            .expect("publish");
    }
    publisher.flush().expect("broker acknowledged every sample");
    let line = daemon.process().wait_for_line(TIMEOUT, |l| {
        l.contains("stream without codes") && l.contains("key=site1/wide")
    });
    let line = line.unwrap_or_else(|| panic!("no such line in:\n{}", daemon.output()));
    assert!(
        line.contains("window_dim=288") && line.contains("max_dim=256"),
        "{line}"
    );
    // The stream is scored all the same: its windows are counted, no code was published.
    let s = daemon
        .wait_for_summary(TIMEOUT, |s| s.get("windows") >= 3)
        .unwrap_or_else(|| panic!("no windows; last: {:?}", daemon.last_summary()));
    assert_eq!(s.get("codes"), 0, "{}", s.line);
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));

    let mut restarted = start_online(&config);
    let line = restarted.process().wait_for_line(TIMEOUT, |l| {
        l.contains("stream without codes") && l.contains("key=site1/wide")
    });
    assert!(
        line.is_some_and(|l| l.contains("window_dim=288")),
        "not logged for the restored stream:\n{}",
        restarted.output()
    );
    assert_eq!(restarted.stop().expect("stop").code(), Some(0));
}

/// `output.codes.every = 4` and `format = "cbor"`: only windows 0, 4, 8, … are published,
/// as CBOR maps with the same fields as the JSON form.
#[test]
fn decimated_cbor_codes() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("codes-cbor", broker.port());
    config.extra = "[output.codes]\nevery = 4\nformat = \"cbor\"\n".into();
    let mut daemon = start_online(&config);
    let codes = TestClient::connect(broker.port(), &format!("{}-sub", config.node_id))
        .expect("connect subscriber");
    codes
        .subscribe(&format!("{}/{}/code/#", config.prefix, config.node_id))
        .expect("subscribe to codes");

    publish_stream(&config, "site1/fan");
    let expected: Vec<u64> = (0..WINDOWS).step_by(4).collect();
    let got = collect(&codes, expected.len());
    let windows: Vec<u64> = got
        .iter()
        .map(|m| {
            let v: serde_json::Value = ciborium::from_reader(&m.payload[..]).expect("code is CBOR");
            crate::assert_valid(&crate::schema("code.schema.json"), &v);
            v["window"].as_u64().expect("window index")
        })
        .collect();
    assert_eq!(windows, expected, "log:\n{}", daemon.output());
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}

/// With the memory detector each code message also carries the window's SDR code (one winner
/// per module, 32 modules by default) and its familiarity, and still matches the schema.
#[test]
fn memory_detector_codes_carry_the_sdr_code_and_familiarity() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("codes-sdr", broker.port());
    config.extra = "[pipeline]\ndetector = \"memory\"\n".into();
    let mut daemon = start_online(&config);
    let codes = TestClient::connect(broker.port(), &format!("{}-sub", config.node_id))
        .expect("connect subscriber");
    codes
        .subscribe(&format!("{}/{}/code/#", config.prefix, config.node_id))
        .expect("subscribe to codes");

    publish_stream(&config, "site1/mixer");
    let got = collect(&codes, WINDOWS as usize);
    assert_eq!(got.len() as u64, WINDOWS, "log:\n{}", daemon.output());
    let validator = crate::schema("code.schema.json");
    for m in &got {
        let v = m.json().expect("code is JSON");
        crate::assert_valid(&validator, &v);
        assert_eq!(v["sdr"].as_array().map(Vec::len), Some(32), "{v}");
        let g = v["familiarity"].as_f64().expect("familiarity");
        assert!((0.0..=1.0).contains(&g), "{v}");
    }
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}
