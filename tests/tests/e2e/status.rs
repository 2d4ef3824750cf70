//! The retained status topic: online while the daemon runs, offline after a clean stop and
//! after a crash (the Last Will).

use std::time::Duration;

use sparsewatch_e2e::{read_retained, Mosquitto, TestClient, TestConfig, TIMEOUT};

use crate::start_online;

/// The retained status a fresh subscriber reads, as JSON.
fn retained_status(config: &TestConfig) -> serde_json::Value {
    read_retained(config.port, &config.status_topic())
        .expect("read the status")
        .unwrap_or_else(|| panic!("no retained message on {}", config.status_topic()))
        .json()
        .expect("status is JSON")
}

/// Stops a running daemon with `signal` and checks what a clean stop promises.
fn clean_stop(name: &str, signal: libc::c_int) {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new(name, broker.port());
    // No periodic summary: any summary line must be the one logged at shutdown.
    config.summary_interval_secs = 0;
    let mut daemon = start_online(&config);

    let online = retained_status(&config);
    assert_eq!(online["state"], "online", "{online}");
    assert_eq!(online["node"], config.node_id.as_str(), "{online}");
    assert!(online["version"].is_string(), "no version in {online}");
    assert!(!online["started_at"].is_null(), "no started_at in {online}");

    daemon.process().signal(signal).expect("signal the daemon");
    let status = daemon
        .process()
        .wait_timeout(TIMEOUT)
        .unwrap_or_else(|| panic!("the daemon did not exit within {TIMEOUT:?} of the signal"));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        daemon.last_summary().is_some(),
        "no summary logged at shutdown:\n{}",
        daemon.output()
    );

    let offline = retained_status(&config);
    assert_eq!(offline["state"], "offline", "{offline}");
    assert_eq!(offline["node"], config.node_id.as_str(), "{offline}");
}

/// While the daemon runs, a fresh subscriber reads a retained status with state "online",
/// the node id, the version and the start time. After SIGTERM (how systemd stops it) the
/// daemon exits 0, logs a last summary, and leaves the retained status "offline".
#[test]
fn sigterm_stops_cleanly_and_leaves_status_offline() {
    clean_stop("sigterm", libc::SIGTERM);
}

/// The same clean stop on SIGINT (Ctrl-C in a terminal).
#[test]
fn sigint_stops_cleanly_and_leaves_status_offline() {
    clean_stop("sigint", libc::SIGINT);
}

/// A daemon killed with SIGKILL cannot say goodbye: its Last Will does. A subscriber
/// watching the status sees "offline" published by the broker once the connection drops,
/// and a fresh subscriber then reads "offline" as the retained status.
#[test]
fn killed_daemon_status_goes_offline_by_last_will() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let config = TestConfig::new("will", broker.port());
    let mut daemon = start_online(&config);

    let watcher = TestClient::connect(broker.port(), &format!("{}-watch", config.node_id))
        .expect("connect watcher");
    watcher
        .subscribe(&config.status_topic())
        .expect("subscribe to status");
    let (online, _) = watcher.recv_matching(Duration::from_secs(5), |m| m.retain);
    let online = online.expect("retained status").json().expect("JSON");
    assert_eq!(online["state"], "online", "{online}");

    daemon.process().kill_hard().expect("SIGKILL the daemon");
    let (offline, _) =
        watcher.recv_matching(TIMEOUT, |m| m.json().is_ok_and(|v| v["state"] == "offline"));
    assert!(
        offline.is_some(),
        "no offline status within {TIMEOUT:?} of SIGKILL"
    );
    let retained = retained_status(&config);
    assert_eq!(retained["state"], "offline", "{retained}");
    assert_eq!(retained["node"], config.node_id.as_str(), "{retained}");
}
