//! The health and metrics endpoint of a running daemon: `/readyz` follows the broker
//! connection, `/metrics` counts what the daemon did, and a port that is taken fails the start.

use std::net::SocketAddr;

use sparsewatch_e2e::{
    free_port, http_get, wait_until, Daemon, Mosquitto, Process, TestClient, TestConfig, TIMEOUT,
};

use crate::{values_payload, T0_MS};

/// The value of one series (`name` or `name{labels}`, exactly as exposed) in a scrape.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok()).flatten()
    })
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn wait_status(daemon: &Daemon, addr: SocketAddr, path: &str, want: u16) -> String {
    let got = wait_until(TIMEOUT, || {
        let (status, body) = http_get(addr, path).ok()?;
        (status == want).then_some(body)
    });
    got.unwrap_or_else(|| {
        panic!(
            "{path} never answered {want} within {TIMEOUT:?}; last: {:?}; log:\n{}",
            http_get(addr, path).ok(),
            daemon.output()
        )
    })
}

/// The daemon starts before its broker: `/readyz` is 503 and says it is not connected, while
/// `/healthz` is 200 (the process and its workers are fine). Once the broker is up, `/readyz`
/// turns 200. Samples and a bad payload published then show up in `/metrics` — messages,
/// samples, windows, payload errors, the ingest and window latency histograms, connections
/// and the broker gauge. When the broker is killed, `/readyz` is 503 again, the broker gauge
/// drops to 0 and connection errors are counted; the daemon still stops cleanly.
#[test]
fn readyz_follows_the_broker_and_metrics_count_the_traffic() {
    let port = free_port().expect("a free port");
    let config = TestConfig::new("http", port);
    let mut daemon = Daemon::start(&config).expect("start the daemon");
    let addr = daemon.http_addr().expect("the http address");

    let body = wait_status(&daemon, addr, "/readyz", 503);
    assert!(body.contains("not connected"), "{body}");
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(addr, "/nowhere").expect("404").0, 404);

    let broker = Mosquitto::start_on(port).expect("start mosquitto on the reserved port");
    wait_status(&daemon, addr, "/readyz", 200);

    let mut client =
        TestClient::connect(port, &format!("{}-pub", config.node_id)).expect("connect");
    let topic = config.input_topic("site/s1");
    let n = 64;
    for i in 0..n {
        let v = (i as f64 * 0.1).sin();
        client
            .publish(&topic, values_payload(T0_MS + i * 1000, &[("v", v)]))
            .expect("publish");
    }
    client.publish(&topic, "not a number").expect("publish");
    client.flush().expect("broker acknowledged every message");

    let n = n as f64;
    let body = wait_until(TIMEOUT, || {
        let body = scrape(addr);
        (metric(&body, "sparsewatch_samples_total")? >= n).then_some(body)
    })
    .unwrap_or_else(|| panic!("samples never counted; last scrape:\n{}", scrape(addr)));
    let get = |series: &str| {
        metric(&body, series).unwrap_or_else(|| panic!("{series} missing from:\n{body}"))
    };
    assert!(get("sparsewatch_messages_total") >= n + 1.0);
    assert!(get("sparsewatch_windows_total") >= 1.0);
    assert!(get("sparsewatch_payload_errors_total") >= 1.0);
    assert!(get("sparsewatch_streams") >= 1.0);
    assert!(get("sparsewatch_stage_duration_seconds_count{stage=\"ingest_decode\"}") >= n + 1.0);
    assert!(get("sparsewatch_stage_duration_seconds_count{stage=\"worker_window\"}") >= 1.0);
    assert!(
        get("sparsewatch_stage_duration_seconds_bucket{stage=\"ingest_decode\",le=\"+Inf\"}")
            >= n + 1.0
    );
    assert!(get("sparsewatch_connections_total") >= 1.0);
    assert_eq!(get("sparsewatch_broker_connected"), 1.0);
    assert_eq!(
        get("sparsewatch_worker_queue_capacity{worker=\"0\"}"),
        4096.0
    );
    assert!(get("sparsewatch_worker_queue_depth{worker=\"1\"}") >= 0.0);
    assert_eq!(
        get("sparsewatch_output_queue_capacity{queue=\"events\"}"),
        1024.0
    );
    assert!(get("sparsewatch_last_message_age_seconds") >= 0.0);
    assert!(get("sparsewatch_worker_heartbeat_age_seconds{worker=\"0\"}") >= 0.0);

    drop(broker);
    let body = wait_status(&daemon, addr, "/readyz", 503);
    assert!(body.contains("not connected"), "{body}");
    let body = scrape(addr);
    assert_eq!(
        metric(&body, "sparsewatch_broker_connected"),
        Some(0.0),
        "{body}"
    );
    assert!(metric(&body, "sparsewatch_connection_errors_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 200);

    assert_eq!(
        daemon.stop().expect("stop").code(),
        Some(0),
        "{}",
        daemon.output()
    );
}

/// A daemon whose `http.listen` port is already taken exits with a failure that names the
/// key, instead of running without its health endpoint.
#[test]
fn a_taken_http_port_fails_the_start_by_name() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut config = TestConfig::new("http-taken", free_port().expect("port"));
    config.extra = String::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.toml");
    let toml = config.to_toml().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, toml).expect("write config");
    let mut p = Process::spawn(
        sparsewatch_e2e::daemon_binary(),
        ["run".as_ref(), "--config".as_ref(), path.as_os_str()],
    )
    .expect("spawn");
    let status = p.wait_timeout(TIMEOUT).expect("the daemon exits");
    assert_eq!(status.code(), Some(1), "{}", p.output());
    assert!(p.output().contains("http.listen"), "{}", p.output());
}

/// With `[http] enabled = false` nothing listens and the daemon runs as before.
#[test]
fn the_endpoint_can_be_turned_off() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let mut config = TestConfig::new("http-off", broker.port());
    config.http_extra = "enabled = false".into();
    let mut daemon = crate::start_online(&config);
    assert!(
        !daemon.output().contains("http endpoint listening"),
        "{}",
        daemon.output()
    );
    assert_eq!(daemon.stop().expect("stop").code(), Some(0));
}
