//! The configuration commands: `check-config` and `print-default-config`.

use std::time::Duration;

use sparsewatch_e2e::{daemon_binary, Process};

/// Runs `sparsewatch args…` to the end (at most 30 s) and returns its exit code and output.
fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut p = Process::spawn(daemon_binary(), args).expect("spawn sparsewatch");
    let status = p
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("sparsewatch {args:?} did not finish within 30 s"));
    (status.code(), p.output())
}

/// A file with a key the daemon does not know is refused with exit code 2, and the message
/// names the key, so a typo in a deployed config is caught before the service starts.
#[test]
fn check_config_rejects_an_unknown_key_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[node]\nid = \"t1\"\n\n[mqtt]\nport = 1883\nkeep_alvie_secs = 10\n",
    )
    .expect("write config");
    let (code, out) = run(&["check-config".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(2), "exit code; output:\n{out}");
    assert!(
        out.contains("keep_alvie_secs"),
        "the message does not name the key:\n{out}"
    );
}

/// A file with only valid overrides passes `check-config` with exit code 0.
#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        "[node]\nid = \"t1\"\n\n[mqtt]\nport = 1884\nsubscribe = [\"plant/#\"]\n\n\
         [topics]\ntemplate = \"plant/{site}/{sensor}\"\nprefix = \"sw\"\n\n\
         [log]\nsummary_interval_secs = 1\n",
    )
    .expect("write config");
    let (code, out) = run(&["check-config".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(0), "exit code; output:\n{out}");
}

/// The compiled-in default that `print-default-config` prints is itself a valid config file,
/// so a user can start from it.
#[test]
fn printed_default_config_passes_check_config() {
    let (code, text) = run(&["print-default-config".as_ref()]);
    assert_eq!(code, Some(0), "print-default-config failed:\n{text}");
    assert!(text.contains("[node]"), "not a config:\n{text}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("default.toml");
    std::fs::write(&path, &text).expect("write config");
    let (code, out) = run(&["check-config".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(0), "the default config does not check:\n{out}");
}
