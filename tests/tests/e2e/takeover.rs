//! Two daemons with one MQTT client id: the broker keeps only one connection per client id,
//! so each connect of one closes the other's connection, and the log must say why.

use std::time::Duration;

use sparsewatch_e2e::{Daemon, Mosquitto, TestConfig, TIMEOUT};

use crate::start_online;

const HINT: &str = "another client with this client id is probably connected";

/// A second daemon started with the first one's configuration (same node id, so the same
/// default client id `sparsewatch-<node>`; each its own free http port, no state
/// directory). Mosquitto closes the older connection at every connect, and the two take
/// turns. Proves that both daemons log the hint at error level, naming the client id, while
/// the connection keeps failing, and that the hint is rate-limited: each logs it once in the
/// seconds that follow, while the connection fails again and again.
#[test]
fn two_daemons_with_one_client_id_are_told_so() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let config = TestConfig::new("takeover", broker.port());
    let mut first = start_online(&config);
    let mut second = Daemon::start(&config).expect("start the second daemon");
    let client_id = format!("client_id=sparsewatch-{} ", config.node_id);
    for daemon in [&mut first, &mut second] {
        let line = daemon
            .process()
            .wait_for_line(TIMEOUT, |l| l.contains(HINT));
        let line = line.unwrap_or_else(|| panic!("no hint; log:\n{}", daemon.output()));
        assert!(
            line.contains("ERROR") && line.contains(&client_id),
            "{line}"
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    for daemon in [&mut first, &mut second] {
        assert!(daemon.is_running(), "log:\n{}", daemon.output());
        let out = daemon.output();
        assert_eq!(out.matches(HINT).count(), 1, "log:\n{out}");
        assert!(
            out.matches("broker connection failed").count() >= 5,
            "the two should still be taking turns; log:\n{out}"
        );
    }
    for daemon in [&mut first, &mut second] {
        assert_eq!(daemon.stop().expect("stop").code(), Some(0));
    }
}
