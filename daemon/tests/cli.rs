//! The command line as a user meets it: exit codes and messages of the configuration
//! commands. (The MQTT paths are exercised end to end in the `sparsewatch-e2e` crate.)

use std::process::{Command, Output};

fn sparsewatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsewatch"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sparsewatch")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// `print-default-config` prints exactly the shipped example configuration.
#[test]
fn print_default_config_is_the_example() {
    let out = sparsewatch(&["print-default-config"]);
    assert!(out.status.success());
    let example = include_str!("../../deploy/config/sparsewatch.example.toml");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), example);
}

/// A valid file passes `check-config` with exit 0; the printed default passes too.
#[test]
fn check_config_accepts_valid_files() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(
        &dir,
        "ok.toml",
        "[node]\nid = \"press-7\"\n[mqtt]\nport = 1884\n",
    );
    let out = sparsewatch(&["check-config", &ok]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node press-7"));
    let example = write(
        &dir,
        "example.toml",
        include_str!("../../deploy/config/sparsewatch.example.toml"),
    );
    assert!(sparsewatch(&["check-config", &example]).status.success());
}

/// Unknown keys, bad values, unparsable TOML and missing files exit 2 naming what is wrong.
#[test]
fn bad_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown.toml", "[mqtt]\nprot = 1\n", "prot"),
        (
            "range.toml",
            "[pipeline.framer]\nwindow_len = 2\n",
            "pipeline.framer.window_len",
        ),
        ("syntax.toml", "[mqtt\nport = 1\n", "syntax.toml"),
        ("qos.toml", "[mqtt]\nqos = 7\n", "mqtt.qos"),
    ];
    for (name, text, needle) in cases {
        let path = write(&dir, name, text);
        for cmd in [
            vec!["check-config", path.as_str()],
            vec!["run", "--config", path.as_str()],
        ] {
            let out = sparsewatch(&cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
            assert!(
                err.contains(needle),
                "{cmd:?}: {err:?} should name {needle}"
            );
        }
    }
    let out = sparsewatch(&["check-config", "/nonexistent/sparsewatch.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sparsewatch.toml"));
}

/// An environment override is validated like a file value.
#[test]
fn environment_overrides_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(&dir, "ok.toml", "");
    let out = Command::new(env!("CARGO_BIN_EXE_sparsewatch"))
        .args(["check-config", &ok])
        .env("SPARSEWATCH__WORKERS__COUNT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workers.count"));
}

/// A build without the `demo` feature (the device build: `--no-default-features`) keeps the
/// `demo` subcommand, and it fails with exit 1 and a message that says which feature is
/// missing and how to build it, not clap's "unrecognized subcommand".
/// Runs with `cargo test -p sparsewatch --no-default-features --test cli`.
#[cfg(not(feature = "demo"))]
#[test]
fn demo_without_the_feature_says_how_to_get_it() {
    let out = sparsewatch(&["demo"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("without the `demo` feature")
            && err.contains("cargo build --release -p sparsewatch"),
        "{err}"
    );
}

/// Every argument of every subcommand is described in its `--help` (check-config's FILE had
/// no text at all).
#[test]
fn every_argument_has_help_text() {
    for cmd in [
        "run",
        "inspect",
        "check-config",
        "print-default-config",
        "replay",
        "eval",
    ] {
        let out = sparsewatch(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        let text = String::from_utf8(out.stdout).unwrap();
        let args = text.split("Arguments:").nth(1).unwrap_or("");
        let args = args.split("Options:").next().unwrap_or("");
        for line in args.lines().filter(|l| !l.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(
                words.len() > 1 || !line.trim_start().starts_with('<'),
                "{cmd} --help: argument without a description: {line:?}"
            );
        }
    }
}
