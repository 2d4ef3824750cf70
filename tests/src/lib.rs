//! End-to-end test harness: the built `sparsewatch` binary against real MQTT brokers on
//! loopback.
//!
//! The integration tests in `tests/tests/e2e/` use four pieces from here:
//!
//! - [`broker`]: [`Mosquitto`], a private broker on a free loopback port, killed on drop.
//!   Mosquitto is required; a machine without it fails the tests with the install command.
//! - [`daemon`]: [`Daemon`], one `sparsewatch run` process with a generated config, its
//!   stdout and stderr captured line by line, killed on drop; [`Summary`] parses the
//!   daemon's periodic summary log line. [`daemon_binary`] finds the binary cargo built.
//! - [`mqtt`]: [`TestClient`], a small synchronous MQTT client (rumqttc on a background
//!   thread) to publish samples and to collect what the daemon publishes, with timeouts.
//! - [`unique`]: names that no other test uses, so tests can run in parallel and could share
//!   one broker: every test picks its own node id, topic prefix and input topic root.
//!
//! Waits use generous deadlines ([`TIMEOUT`]) but return as soon as their condition holds,
//! so a healthy run is fast and a slow machine is not a failure.

pub mod broker;
pub mod daemon;
pub mod mqtt;

pub use broker::{free_port, BrokerOptions, Mosquitto};
pub use daemon::{daemon_binary, http_get, Daemon, Process, Summary, TestConfig};
pub use mqtt::{read_retained, Message, TestClient};

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Deadline for anything the tests wait on (a connection, a log line, an event).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Seed of every random stream the tests generate, so failures reproduce exactly.
pub const SEED: u64 = 0x5EED_0E2E;

/// A name unique to this test process and call: `<base>-<pid>-<n>`. Usable as one MQTT topic
/// level and as a node id.
pub fn unique(base: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{base}-{}-{n}", std::process::id())
}

/// The workspace root (the folder holding `fixtures/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives inside the workspace")
        .to_path_buf()
}

/// Polls `f` every 20 ms until it returns `Some`, or gives up after `timeout`.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
