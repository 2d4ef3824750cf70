//! Restarts with checkpoints: a stopped and restarted daemon continues its streams without a
//! new warm-up, and every checkpoint fault (kill -9 in the middle of a write, a damaged
//! file, a full disk) ends in a daemon that starts, says what happened, and continues from
//! the last good state.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use sparsewatch_e2e::{daemon_binary, Daemon, Process, TestClient, TestConfig, TIMEOUT};

use crate::{gaussian, start_online, start_online_with_env, values_payload, T0_MS};

const KEY: &str = "line1/motor";
/// Samples per run; 1 200 samples make (1 200 − 32) / 4 + 1 = 293 windows, past the
/// likelihood's warm-up (64 windows on the default raw scale).
const N: usize = 1_200;

/// A config whose checkpoints go to `state` (written only at a clean stop, unless
/// `interval_secs` > 0).
fn config(name: &str, port: u16, state: &Path, interval_secs: u64) -> TestConfig {
    let mut c = TestConfig::new(name, port);
    c.extra = format!(
        "[state]\ndir = \"{}\"\ncheckpoint_interval_secs = {interval_secs}\n",
        state.display()
    );
    c
}

/// Publishes samples `from..to` of the test's one healthy two-channel stream and waits until
/// the daemon has taken `to - from` more samples than `samples_before`.
fn publish_range(daemon: &Daemon, from: usize, to: usize, samples_before: u64) {
    let config = daemon.config();
    let xs = gaussian(crate::stream_seed(60), to, 10.0, 1.0);
    let ys = gaussian(crate::stream_seed(61), to, 5.0, 0.5);
    let mut publisher = TestClient::connect(config.port, &format!("{}-pub", config.node_id))
        .expect("connect publisher");
    for i in from..to {
        let ts = T0_MS + i as i64 * 1000;
        publisher
            .publish(
                &config.input_topic(KEY),
                values_payload(ts, &[("x", xs[i]), ("y", ys[i])]),
            )
            .expect("publish");
    }
    publisher.flush().expect("broker acknowledged every sample");
    let want = samples_before + (to - from) as u64;
    let got = daemon.wait_for_summary(TIMEOUT, |s| s.get("samples") >= want);
    assert!(
        got.is_some(),
        "the daemon did not take {want} samples; log:\n{}",
        daemon.output()
    );
}

fn stop(daemon: &mut Daemon) {
    let status = daemon.stop().expect("stop");
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        daemon.output()
    );
}

/// `sparsewatch inspect <state>`: its output and exit status.
fn inspect(state: &Path) -> (String, bool) {
    let mut p = Process::spawn(daemon_binary(), [OsStr::new("inspect"), state.as_os_str()])
        .expect("run inspect");
    let status = p.wait_timeout(TIMEOUT).expect("inspect exits");
    (p.output(), status.success())
}

/// The `samples` column of `key`'s line in the first file `inspect` lists.
fn inspected_samples(text: &str, key: &str) -> Option<u64> {
    let first_file: Vec<&str> = text
        .lines()
        .skip(1)
        .take_while(|l| !l.contains(": ok,") && !l.contains("UNUSABLE"))
        .collect();
    first_file
        .iter()
        .find(|l| l.starts_with(&format!("{key} ")))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
}

/// Whether the daemon logged one line containing every one of `needles`.
fn log_line_has(daemon: &mut Daemon, needles: &[&str]) -> bool {
    daemon
        .process()
        .wait_for_line(TIMEOUT, |l| needles.iter().all(|n| l.contains(n)))
        .is_some()
}

/// Whether the daemon logged a line containing `needle` (waiting for its output to be read).
fn log_has(daemon: &mut Daemon, needle: &str) -> bool {
    daemon
        .process()
        .wait_for_line(TIMEOUT, |l| l.contains(needle))
        .is_some()
}

/// A daemon learns a healthy stream for 1 200 samples and is stopped with SIGTERM, which
/// writes the final checkpoint (`inspect` then lists the stream with its 1 200 samples). A
/// second daemon on the same state directory logs the restored stream and, fed the next 400
/// samples, continues it: the first window code it publishes has window index 147 (not 0)
/// and already carries a likelihood (no new warm-up), and no anomaly event is published (no
/// re-alarm). After the second stop the checkpoint holds all 1 600 samples.
#[test]
fn a_restarted_daemon_continues_its_streams_without_a_new_warm_up() {
    let broker = sparsewatch_e2e::Mosquitto::start().expect("start mosquitto");
    let state = tempfile::tempdir().expect("state dir");
    let cfg = config("restart", broker.port(), state.path(), 0);

    let mut first = start_online(&cfg);
    publish_range(&first, 0, N, 0);
    stop(&mut first);
    assert!(
        log_has(&mut first, "final checkpoint written"),
        "{}",
        first.output()
    );
    let (text, ok) = inspect(state.path());
    assert!(ok, "{text}");
    assert_eq!(inspected_samples(&text, KEY), Some(N as u64), "{text}");

    let mut second = start_online(&cfg);
    assert!(
        log_has(&mut second, "checkpoint restored") && log_has(&mut second, "streams=1"),
        "{}",
        second.output()
    );
    let watcher = TestClient::connect(broker.port(), &format!("{}-sub", cfg.node_id))
        .expect("connect subscriber");
    watcher
        .subscribe(&format!("{}/{}/#", cfg.prefix, cfg.node_id))
        .expect("subscribe");
    publish_range(&second, N, N + 400, 0);
    let code_topic = format!("{}/{}/code/{KEY}", cfg.prefix, cfg.node_id);
    let (code, others) = watcher.recv_matching(Duration::from_secs(20), |m| m.topic == code_topic);
    let code = code
        .expect("a code message after the restart")
        .json()
        .unwrap();
    assert_eq!(
        code["window"],
        // The default framer: window 32, hop 4.
        ((N - 32) / 4 + 1) as u64,
        "window numbering continues: {code}"
    );
    assert!(
        code["likelihood"].is_number(),
        "no new warm-up: the first window after the restart has a likelihood: {code}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let anomaly_prefix = format!("{}/{}/anomaly/", cfg.prefix, cfg.node_id);
    let alarms: Vec<_> = others
        .into_iter()
        .chain(watcher.drain())
        .filter(|m| m.topic.starts_with(&anomaly_prefix))
        .map(|m| m.text())
        .collect();
    assert!(alarms.is_empty(), "re-alarm after the restart: {alarms:?}");
    stop(&mut second);
    let (text, ok) = inspect(state.path());
    assert!(ok, "{text}");
    assert_eq!(
        inspected_samples(&text, KEY),
        Some(N as u64 + 400),
        "{text}"
    );
}

/// A daemon restarted with another `[pipeline.framer]` cannot use what its stream learned: it
/// discards the stream and says so, and keeps the checkpoint aside before its own stop
/// replaces it. Moved back to `checkpoint.swst` under the original configuration, it
/// restores the stream with all its samples: a configuration mistake loses nothing.
#[test]
fn a_checkpoint_whose_streams_do_not_fit_the_configuration_is_kept_aside() {
    let broker = sparsewatch_e2e::Mosquitto::start().expect("start mosquitto");
    let state = tempfile::tempdir().expect("state dir");
    let cfg = config("aside", broker.port(), state.path(), 0);
    let mut first = start_online(&cfg);
    publish_range(&first, 0, N, 0);
    stop(&mut first);

    let mut other = cfg.clone();
    other.extra.push_str("[pipeline.framer]\nhop = 8\n");
    let mut second = start_online(&other);
    assert!(
        log_line_has(&mut second, &["restored stream discarded", KEY])
            && log_line_has(&mut second, &["kept aside", "streams=1"])
            && log_line_has(
                &mut second,
                &["checkpoint restored", "streams=0", "discarded=1"]
            ),
        "{}",
        second.output()
    );
    stop(&mut second);
    let aside: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".discarded.swst"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let (text, ok) = inspect(state.path());
    assert!(ok, "{text}");
    assert_eq!(
        inspected_samples(&text, KEY),
        None,
        "the stop wrote no stream: {text}"
    );

    std::fs::rename(&aside[0], state.path().join("checkpoint.swst")).unwrap();
    let mut third = start_online(&cfg);
    assert!(
        log_line_has(
            &mut third,
            &["checkpoint restored", "streams=1", "discarded=0"]
        ),
        "{}",
        third.output()
    );
    stop(&mut third);
    let (text, ok) = inspect(state.path());
    assert!(ok, "{text}");
    assert_eq!(inspected_samples(&text, KEY), Some(N as u64), "{text}");
}

/// Every fault in a row, on one state directory:
/// 1. a clean run leaves checkpoint A (1 200 samples);
/// 2. a daemon is killed -9 half-way through writing a periodic checkpoint (an injected pause
///    holds the writer there);
/// 3. the next daemon removes the unfinished write, restores A, and on SIGTERM writes B
///    (A becomes the previous generation);
/// 4. B gets a flipped byte: the next daemon rejects it with the checksum error, restores the
///    previous generation (A) and comes online; its final checkpoint hits a full disk
///    (ENOSPC injected), which is reported, and the daemon still exits cleanly;
/// 5. the last daemon restores A again: nothing good was lost, nothing was silently reset.
#[test]
fn checkpoint_faults_fall_back_to_the_last_good_state() {
    let broker = sparsewatch_e2e::Mosquitto::start().expect("start mosquitto");
    let state = tempfile::tempdir().expect("state dir");
    let cfg = config("ckfault", broker.port(), state.path(), 0);

    // 1. Checkpoint A.
    let mut d = start_online(&cfg);
    publish_range(&d, 0, N, 0);
    stop(&mut d);

    // 2. kill -9 in the middle of a periodic checkpoint write.
    let marker = state.path().join("paused");
    let fault = format!("pause-after-half={}", marker.display());
    let mut periodic = cfg.clone();
    periodic.extra = config("unused", broker.port(), state.path(), 1).extra;
    let mut d = start_online_with_env(
        &periodic,
        &[(
            "SPARSEWATCH_TEST_CHECKPOINT_FAULT",
            OsStr::new(fault.as_str()),
        )],
    );
    let paused = sparsewatch_e2e::wait_until(TIMEOUT, || marker.exists().then_some(()));
    assert!(
        paused.is_some(),
        "no checkpoint write began; log:\n{}",
        d.output()
    );
    assert!(state.path().join("checkpoint.swst.tmp").exists());
    d.process().kill_hard().expect("kill -9");

    // 3. The unfinished write is discarded; A is restored; B is written at the stop.
    let mut d = start_online(&cfg);
    assert!(
        log_has(&mut d, "removed an unfinished checkpoint write"),
        "{}",
        d.output()
    );
    assert!(log_has(&mut d, "checkpoint restored"), "{}", d.output());
    publish_range(&d, N, N + 80, 0);
    stop(&mut d);
    let (text, _) = inspect(state.path());
    assert_eq!(
        inspected_samples(&text, KEY),
        Some(N as u64 + 80),
        "B: {text}"
    );

    // 4. A flipped byte in B: rejected, A restored; the final write fails on a full disk.
    let current = state.path().join("checkpoint.swst");
    let mut bytes = std::fs::read(&current).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&current, &bytes).unwrap();
    let (text, ok) = inspect(&current);
    assert!(!ok && text.contains("UNUSABLE"), "{text}");
    let mut d = start_online_with_env(
        &cfg,
        &[(
            "SPARSEWATCH_TEST_CHECKPOINT_FAULT",
            OsStr::new("enospc-after=4096"),
        )],
    );
    assert!(
        log_has(&mut d, "checkpoint rejected") && log_has(&mut d, "payload checksum mismatch"),
        "{}",
        d.output()
    );
    assert!(
        log_has(&mut d, "restoring the previous checkpoint generation"),
        "{}",
        d.output()
    );
    stop(&mut d);
    assert!(
        log_has(&mut d, "final checkpoint failed") && log_has(&mut d, "No space left on device"),
        "{}",
        d.output()
    );

    // 5. A is still there and is restored.
    let (text, ok) = inspect(state.path());
    assert!(ok, "{text}");
    assert_eq!(inspected_samples(&text, KEY), Some(N as u64), "A: {text}");
    let mut d = start_online(&cfg);
    assert!(log_has(&mut d, "checkpoint restored"), "{}", d.output());
    stop(&mut d);
}

/// The names of the files in `dir`, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A second daemon started on the state directory of a running one (another node id, its own
/// free http port: a copied configuration). Proves it exits at once with status 1 and an
/// error naming the directory and the first daemon's pid, having written nothing there (the
/// directory holds only the lock file) and without disturbing the first, which still runs;
/// and that once the first is killed with SIGKILL, which leaves its lock file behind as any
/// crash does, a new daemon starts on the directory and checkpoints into it.
#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let broker = sparsewatch_e2e::Mosquitto::start().expect("start mosquitto");
    let state = tempfile::tempdir().expect("state dir");
    let mut first = start_online(&config("lock-first", broker.port(), state.path(), 0));

    let mut second = Daemon::start(&config("lock-second", broker.port(), state.path(), 0))
        .expect("start the second daemon");
    let status = second
        .process()
        .wait_timeout(TIMEOUT)
        .unwrap_or_else(|| panic!("the second daemon runs:\n{}", second.output()));
    assert_eq!(status.code(), Some(1), "log:\n{}", second.output());
    let want = format!(
        "state directory {} is in use by another sparsewatch (pid {}); give each instance its own [state] dir",
        state.path().display(),
        first.process().pid()
    );
    assert!(second.output().contains(&want), "log:\n{}", second.output());
    assert!(
        !second.output().contains("connected to broker"),
        "the refused daemon reached the broker:\n{}",
        second.output()
    );
    assert!(first.is_running(), "log:\n{}", first.output());
    assert_eq!(file_names(state.path()), ["lock"]);

    first.process().kill_hard().expect("kill -9");
    assert_eq!(file_names(state.path()), ["lock"], "the lock file stays");
    let mut third = start_online(&config("lock-third", broker.port(), state.path(), 0));
    stop(&mut third);
    assert_eq!(
        file_names(state.path()),
        ["checkpoint.swst", "lock"],
        "log:\n{}",
        third.output()
    );
}
