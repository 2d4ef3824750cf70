//! The daemon under a service manager: the sd_notify protocol on a Unix datagram socket
//! given as `NOTIFY_SOCKET` (what systemd does for `Type=notify`), the watchdog, and
//! configuration reloads on SIGHUP.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use sparsewatch_e2e::{Mosquitto, TestClient, TestConfig, TIMEOUT};

use crate::{start_online_with_env, values_payload, T0_MS};

/// Receives datagrams until one satisfies `pred`; returns it. Panics after [`TIMEOUT`] with
/// everything received.
fn recv_until(sock: &UnixDatagram, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if pred(&m) {
                    return m;
                }
                seen.push(m);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {what} notification within {TIMEOUT:?}; received: {seen:?}");
}

fn publish_one(config: &TestConfig, topic: &str, ts: i64) {
    let mut p = TestClient::connect(config.port, &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    p.publish(topic, values_payload(ts, &[("v", 1.0)]))
        .expect("publish");
    p.flush().expect("acknowledged");
}

/// With `NOTIFY_SOCKET` and `WATCHDOG_USEC` = 2 s set, the daemon sends `READY=1` after it
/// started (its status line names the restored streams), then `WATCHDOG=1` while its workers
/// beat. On SIGHUP after the file changed the topic template and the alert threshold, it
/// sends `RELOADING=1` with a `MONOTONIC_USEC`, applies both live (a topic shape that was
/// unknown before now feeds a stream), names `mqtt.request_queue` as waiting for a restart
/// and `pipeline.framer.window_len` as waiting for a restart that will discard every stream's
/// learned state, and sends `READY=1`. A second SIGHUP with an invalid file (`mqtt.qos = 7`) is rejected,
/// naming the key, and the running configuration stays (the new template still maps). On
/// SIGTERM it sends `STOPPING=1`.
#[test]
fn notify_protocol_watchdog_and_live_reload() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let state = tempfile::tempdir().expect("state dir");
    let mut cfg = TestConfig::new("notify", broker.port());
    cfg.extra = format!("[state]\ndir = \"{}\"\n", state.path().display());
    let sock_dir = tempfile::tempdir().expect("socket dir");
    let sock_path = sock_dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut daemon = start_online_with_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock_path.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("2000000")),
        ],
    );
    let ready = recv_until(&sock, "READY=1", |m| m.starts_with("READY=1"));
    assert!(
        ready.contains("STATUS=running; 0 streams restored"),
        "{ready}"
    );
    recv_until(&sock, "WATCHDOG=1", |m| m == "WATCHDOG=1");

    // A topic one level deeper than the template: unknown until the reload.
    let deep = cfg.input_topic("a/b/data");
    publish_one(&cfg, &deep, T0_MS);
    let unknown = daemon.wait_for_summary(TIMEOUT, |s| s.get("unknown_topics") >= 1);
    assert!(unknown.is_some(), "{}", daemon.output());

    let mut changed = cfg.clone();
    changed.mqtt_extra = "request_queue = 512\n".into();
    changed.extra = format!(
        "{}\n[pipeline.alert]\nthreshold = 0.999\n[pipeline.framer]\nwindow_len = 64\n",
        cfg.extra
    );
    let text = changed.to_toml().replace(
        &format!("template = \"{}/{{site}}/{{sensor}}\"", cfg.input_root),
        &format!("template = \"{}/{{site}}/{{sensor}}/data\"", cfg.input_root),
    );
    std::fs::write(daemon.config_path(), text).unwrap();
    daemon.process().signal(libc::SIGHUP).unwrap();
    let reloading = recv_until(&sock, "RELOADING=1", |m| m.starts_with("RELOADING=1"));
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec > 0);
    recv_until(&sock, "READY=1 after the reload", |m| {
        m.starts_with("READY=1")
    });
    let applied = daemon
        .process()
        .wait_for_line(TIMEOUT, |l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("{}", daemon.output()));
    assert!(
        applied.contains("pipeline.alert.threshold") && applied.contains("topics.template"),
        "{applied}"
    );
    let restart = daemon.process().wait_for_line(TIMEOUT, |l| {
        l.contains("applied at the next restart") && !l.contains("discard")
    });
    assert!(
        restart.is_some_and(|l| l.contains("mqtt.request_queue") && !l.contains("window_len")),
        "{}",
        daemon.output()
    );
    // The window length is restart-only too, and the learned state cannot take it: the
    // warning must say that the restart will throw every stream's learning away.
    let discard = daemon.process().wait_for_line(TIMEOUT, |l| {
        l.contains("applied at the next restart") && l.contains("discard")
    });
    assert!(
        discard.is_some_and(|l| l.contains("pipeline.framer.window_len")
            && !l.contains("mqtt.request_queue")
            && l.contains("discard the learned state of every stream")
            && l.contains("set these keys back")),
        "{}",
        daemon.output()
    );
    publish_one(&cfg, &deep, T0_MS + 1000);
    let mapped = daemon.wait_for_summary(TIMEOUT, |s| s.get("samples") >= 1);
    assert!(mapped.is_some(), "{}", daemon.output());

    std::fs::write(daemon.config_path(), "[mqtt]\nqos = 7\n").unwrap();
    daemon.process().signal(libc::SIGHUP).unwrap();
    recv_until(&sock, "RELOADING=1", |m| m.starts_with("RELOADING=1"));
    recv_until(&sock, "READY=1 after the rejected reload", |m| {
        m.starts_with("READY=1")
    });
    let rejected = daemon
        .process()
        .wait_for_line(TIMEOUT, |l| l.contains("reload rejected"));
    assert!(
        rejected.is_some_and(|l| l.contains("mqtt.qos")),
        "{}",
        daemon.output()
    );
    publish_one(&cfg, &deep, T0_MS + 2000);
    let still = daemon.wait_for_summary(TIMEOUT, |s| s.get("samples") >= 2);
    assert!(still.is_some(), "{}", daemon.output());

    daemon.process().signal(libc::SIGTERM).unwrap();
    recv_until(&sock, "STOPPING=1", |m| m.starts_with("STOPPING=1"));
    let status = daemon.stop().expect("exit");
    assert!(status.success(), "{}", daemon.output());
}
