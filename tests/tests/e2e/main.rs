//! End-to-end tests of the `sparsewatch` binary: one test binary, a module per topic.
//!
//! Every test that needs a broker starts its own Mosquitto on a free loopback port and uses
//! unique node ids and topic roots (`sparsewatch_e2e::unique`), so the tests run in parallel.
//! Run them with `cargo test --workspace` (which builds the daemon binary first); Mosquitto
//! must be installed (`apt-get install -y mosquitto`).

mod cli;
mod codes;
mod delivery;
mod demo;
mod detection;
mod garbage;
mod hostile;
mod http;
mod outage;
mod restart;
mod security;
mod status;
mod systemd;
mod takeover;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use sparsewatch_e2e::{read_retained, wait_until, Daemon, TestConfig, TIMEOUT};

/// Event time of the first generated sample: 2026-01-05T08:00:00Z, ms since the epoch.
pub const T0_MS: i64 = 1_767_600_000_000;

/// A seeded Gaussian stream: `n` values with mean `mean` and standard deviation `sd`.
pub fn gaussian(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let normal = Normal::new(mean, sd).expect("valid normal");
    (0..n).map(|_| normal.sample(&mut rng)).collect()
}

/// A JSON payload with an explicit event time and one or more named channels.
pub fn values_payload(ts_ms: i64, channels: &[(&str, f64)]) -> String {
    let values = channels
        .iter()
        .map(|(name, v)| format!("\"{name}\":{v:.4}"))
        .collect::<Vec<_>>()
        .join(",");
    format!("{{\"ts\":{ts_ms},\"values\":{{{values}}}}}")
}

/// Starts the daemon and waits until its retained status on the broker reads "online".
///
/// The daemon subscribes to its inputs and then publishes that status on the same
/// connection, and the broker handles one connection's packets in order: once the status is
/// visible, samples published by the test reach the daemon.
pub fn start_online(config: &TestConfig) -> Daemon {
    start_online_with_env(config, &[])
}

/// As [`start_online`], with extra environment variables for the daemon.
pub fn start_online_with_env(config: &TestConfig, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
    let mut daemon = Daemon::start_with_env(config, env).expect("start the daemon");
    let online = wait_until(TIMEOUT, || {
        assert!(
            daemon.is_running(),
            "the daemon exited at start:\n{}",
            daemon.output()
        );
        let m = read_retained(config.port, &config.status_topic()).expect("read status")?;
        let v = m.json().ok()?;
        (v["state"] == "online").then_some(v)
    });
    assert!(
        online.is_some(),
        "the daemon's status never read online within {TIMEOUT:?}; log:\n{}",
        daemon.output()
    );
    daemon
}

/// A validator for one of the JSON Schema files in `daemon/schemas/`.
pub fn schema(name: &str) -> jsonschema::Validator {
    let path = sparsewatch_e2e::workspace_root()
        .join("daemon/schemas")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read the schema");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// Panics with every violation when `value` does not match `validator`.
pub fn assert_valid(validator: &jsonschema::Validator, value: &serde_json::Value) {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{value} violates its schema: {errors:?}");
}

/// Seed of the `n`-th random stream of a test, derived from the harness's one seed.
pub fn stream_seed(n: u64) -> u64 {
    sparsewatch_e2e::SEED.wrapping_mul(31).wrapping_add(n)
}
