//! The `sparsewatch` process under test.
//!
//! [`Process`] spawns any command with stdout and stderr read line by line into a shared
//! buffer (ANSI colour codes stripped), so tests can wait for a line while the process runs
//! and print everything it said when a test fails. [`Daemon`] is `sparsewatch run` with a
//! config generated from a [`TestConfig`]. Every child is killed when its handle is dropped,
//! and also when the test process itself dies (Linux parent-death signal).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{unique, TIMEOUT};

/// The `sparsewatch` binary cargo built for this test run.
///
/// `cargo test --workspace` builds it before running any test (the daemon package has
/// integration tests of its own, which makes cargo build its binary). It lives beside this
/// test's `deps/` folder, `target/<profile>/sparsewatch`, also under `CARGO_TARGET_DIR`.
/// `SPARSEWATCH_BIN`, when set, names another binary to test.
///
/// # Panics
/// When the binary is missing, with the command that builds it.
pub fn daemon_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SPARSEWATCH_BIN") {
        return PathBuf::from(bin);
    }
    let name = format!("sparsewatch{}", std::env::consts::EXE_SUFFIX);
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe.parent().and_then(|deps| deps.parent());
    let mut candidates: Vec<PathBuf> = profile_dir.iter().map(|d| d.join(&name)).collect();
    if let (Some(target), Some(profile)) = (
        std::env::var_os("CARGO_TARGET_DIR"),
        profile_dir.and_then(|d| d.file_name()),
    ) {
        candidates.push(PathBuf::from(target).join(profile).join(&name));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the sparsewatch binary is not built (looked for {candidates:?}); run the e2e \
                 tests with `cargo test --workspace`, or build it first with \
                 `cargo build -p sparsewatch`"
            )
        })
}

/// Spawns `cmd` so that the child is killed if the test process dies before it could clean
/// up (a test binary killed by a timeout must not leave brokers and daemons behind).
pub(crate) fn spawn_with_parent_death(cmd: &mut Command) -> std::io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn()
}

/// The lines a process printed, shared with the threads that read its pipes.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A child process with captured output, killed on drop.
pub struct Process {
    child: Child,
    lines: Arc<Lines>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
    name: String,
}

impl Process {
    /// Spawns `program args…` with stdout and stderr captured; stderr lines get a
    /// `stderr: ` prefix. `NO_COLOR` is set so logs carry no colour codes.
    pub fn spawn<I, S>(program: impl AsRef<OsStr>, args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_with_env(program, args, &[])
    }

    /// As [`spawn`](Self::spawn), with extra environment variables.
    pub fn spawn_with_env<I, S>(
        program: impl AsRef<OsStr>,
        args: I,
        env: &[(&str, &OsStr)],
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program.as_ref());
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .current_dir(crate::workspace_root())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let name = format!("{cmd:?}");
        let mut child =
            spawn_with_parent_death(&mut cmd).with_context(|| format!("spawning {name}"))?;
        let lines = Arc::new(Lines::default());
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let readers = vec![
            read_lines(out, "", Arc::clone(&lines)),
            read_lines(err, "stderr: ", Arc::clone(&lines)),
        ];
        Ok(Process {
            child,
            lines,
            readers,
            status: None,
            name,
        })
    }

    /// Everything the process printed so far, one line each.
    pub fn output(&self) -> String {
        let lines = self.lines.lines.lock().expect("lines lock");
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }

    /// A copy of the lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lines.lock().expect("lines lock").clone()
    }

    /// The first line (from the start of the output) for which `pred` holds, waiting up to
    /// `timeout` for it to be printed.
    pub fn wait_for_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        let mut lines = self.lines.lines.lock().expect("lines lock");
        loop {
            if let Some(l) = lines[checked..].iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            checked = lines.len();
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // Wake up at least every 100 ms so the deadline holds even if nothing is printed.
            let wait = (deadline - now).min(Duration::from_millis(100));
            lines = self
                .lines
                .changed
                .wait_timeout(lines, wait)
                .expect("lines lock")
                .0;
        }
    }

    /// The process id (for CPU and memory readings from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on a child");
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit, then for its output to be read to the
    /// end. `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = crate::wait_until(timeout, || self.try_status())?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Some(status)
    }

    /// Sends `signal` to the process (no-op once it has exited).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) with a pid of our own, not yet reaped, child.
        if unsafe { libc::kill(pid, signal) } == -1 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to [`TIMEOUT`] for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait_timeout(TIMEOUT).with_context(|| {
            format!(
                "{} did not exit within {TIMEOUT:?} of SIGTERM; output:\n{}",
                self.name,
                self.output()
            )
        })
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        self.wait_timeout(TIMEOUT)
            .context("a SIGKILLed process did not exit")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- output of {} ----\n{}", self.name, self.output());
        }
    }
}

fn read_lines(
    pipe: impl Read + Send + 'static,
    prefix: &'static str,
    lines: Arc<Lines>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let line = format!(
                        "{prefix}{}",
                        strip_ansi(text.trim_end_matches(['\n', '\r']))
                    );
                    lines.lines.lock().expect("lines lock").push(line);
                    lines.changed.notify_all();
                }
            }
        }
    })
}

/// Removes ANSI escape sequences (`ESC [ … letter`) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What a test daemon is called and where it reads and writes, unique per test.
#[derive(Clone, Debug)]
pub struct TestConfig {
    /// `node.id`.
    pub node_id: String,
    /// `topics.prefix`: the first level of everything the daemon publishes.
    pub prefix: String,
    /// First level of the input topics: the daemon subscribes to `<input_root>/#` with the
    /// template `<input_root>/{site}/{sensor}`.
    pub input_root: String,
    /// Broker port on 127.0.0.1.
    pub port: u16,
    /// `log.summary_interval_secs` (1 by default here: tests read the summary line).
    pub summary_interval_secs: u64,
    /// Extra lines for the `[mqtt]` table, e.g. `max_payload_bytes = 512`.
    pub mqtt_extra: String,
    /// Extra lines for the `[http]` table. Its `listen` is `127.0.0.1:0` (a free port, which
    /// the daemon logs; see [`Daemon::http_addr`]) so parallel daemons never collide.
    pub http_extra: String,
    /// Extra tables appended at the end (any but node, mqtt, topics, log, http).
    pub extra: String,
}

impl TestConfig {
    /// A config for the test called `name` against the broker on `port`.
    pub fn new(name: &str, port: u16) -> Self {
        let id = unique(name);
        TestConfig {
            node_id: format!("node-{id}"),
            prefix: format!("sw-{id}"),
            input_root: format!("in-{id}"),
            port,
            summary_interval_secs: 1,
            mqtt_extra: String::new(),
            http_extra: String::new(),
            extra: String::new(),
        }
    }

    /// The TOML text: only overrides of the compiled-in default.
    pub fn to_toml(&self) -> String {
        let TestConfig {
            node_id,
            prefix,
            input_root,
            port,
            summary_interval_secs,
            mqtt_extra,
            http_extra,
            extra,
        } = self;
        format!(
            "[node]\nid = \"{node_id}\"\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nsubscribe = [\"{input_root}/#\"]\n\
             keep_alive_secs = 5\nreconnect_max_ms = 1000\n{mqtt_extra}\n\n\
             [topics]\ntemplate = \"{input_root}/{{site}}/{{sensor}}\"\nprefix = \"{prefix}\"\n\n\
             [log]\nsummary_interval_secs = {summary_interval_secs}\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\n{http_extra}\n\n{extra}"
        )
    }

    /// The input topic of sensor key `site/sensor`.
    pub fn input_topic(&self, key: &str) -> String {
        format!("{}/{key}", self.input_root)
    }

    /// The topic of the daemon's anomaly events for `key`.
    pub fn anomaly_topic(&self, key: &str) -> String {
        format!("{}/{}/anomaly/{key}", self.prefix, self.node_id)
    }

    /// The daemon's retained status topic.
    pub fn status_topic(&self) -> String {
        format!("{}/{}/status", self.prefix, self.node_id)
    }
}

/// `sparsewatch run --config <generated file>`, killed on drop.
pub struct Daemon {
    process: Process,
    config: TestConfig,
    _dir: tempfile::TempDir,
    config_path: PathBuf,
}

impl Daemon {
    /// Writes `config` to a temporary file and starts the daemon on it.
    pub fn start(config: &TestConfig) -> Result<Self> {
        Self::start_with_env(config, &[])
    }

    /// As [`start`](Self::start), with extra environment variables (`NOTIFY_SOCKET`, …).
    pub fn start_with_env(config: &TestConfig, env: &[(&str, &OsStr)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sparsewatch.toml");
        std::fs::write(&path, config.to_toml())?;
        let process = Process::spawn_with_env(
            daemon_binary(),
            [OsStr::new("run"), OsStr::new("--config"), path.as_os_str()],
            env,
        )?;
        Ok(Daemon {
            process,
            config: config.clone(),
            _dir: dir,
            config_path: path,
        })
    }

    /// The configuration file the daemon reads (again on SIGHUP).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// The config the daemon runs with.
    pub fn config(&self) -> &TestConfig {
        &self.config
    }

    /// The daemon process (output, signals, exit).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Whether the daemon is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Everything the daemon logged so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// Stops the daemon the way systemd does (SIGTERM) and returns its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.process.terminate()
    }

    /// Waits for a summary log line for which `pred` holds (the first such, from the start of
    /// the log).
    pub fn wait_for_summary(
        &self,
        timeout: Duration,
        pred: impl Fn(&Summary) -> bool,
    ) -> Option<Summary> {
        let line = self
            .process
            .wait_for_line(timeout, |l| Summary::parse(l).is_some_and(|s| pred(&s)))?;
        Summary::parse(&line)
    }

    /// The address of the daemon's HTTP endpoint, from its start-up log line (waits for it).
    pub fn http_addr(&self) -> Result<std::net::SocketAddr> {
        let line = self
            .process
            .wait_for_line(TIMEOUT, |l| l.contains("http endpoint listening"))
            .with_context(|| format!("no http endpoint in the log:\n{}", self.output()))?;
        let addr = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("addr="))
            .with_context(|| format!("no addr= in {line:?}"))?;
        addr.parse()
            .with_context(|| format!("bad address {addr:?} in {line:?}"))
    }

    /// The last summary line logged so far.
    pub fn last_summary(&self) -> Option<Summary> {
        self.process
            .lines()
            .iter()
            .rev()
            .find_map(|l| Summary::parse(l))
    }
}

/// The counters of one summary log line: every `name=<integer>` field of a line that contains
/// the word `summary`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Field name → value.
    pub fields: BTreeMap<String, u64>,
    /// The line itself.
    pub line: String,
}

impl Summary {
    /// Parses a log line; `None` if it is not a summary with at least a `messages` field.
    pub fn parse(line: &str) -> Option<Self> {
        if !line.contains("summary") {
            return None;
        }
        let fields: BTreeMap<String, u64> = line
            .split_whitespace()
            .filter_map(|tok| {
                let (k, v) = tok.split_once('=')?;
                Some((k.to_string(), v.trim_matches(',').parse().ok()?))
            })
            .collect();
        fields.contains_key("messages").then(|| Summary {
            fields,
            line: line.to_string(),
        })
    }

    /// The value of a field, 0 when absent.
    pub fn get(&self, name: &str) -> u64 {
        self.fields.get(name).copied().unwrap_or(0)
    }
}

/// `GET path` on `addr` (HTTP/1.1, `Connection: close`): the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no blank line after the head in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tracing_summary_line() {
        let l = "2026-01-05T08:00:00.123Z  INFO sparsewatch::stats: summary messages=12 \
                 samples=10 windows=1 detections=0 payload_errors=2 drops=0 uptime_s=3";
        let s = Summary::parse(l).expect("a summary");
        assert_eq!(s.get("messages"), 12);
        assert_eq!(s.get("payload_errors"), 2);
        assert_eq!(s.get("missing"), 0);
        assert!(Summary::parse("INFO connected messages=not-a-summary").is_none());
    }

    #[test]
    fn strips_colour_codes() {
        let l = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[3mmessages\u{1b}[0m\u{1b}[2m=\u{1b}[0m5";
        assert_eq!(strip_ansi(l), "2026  INFO messages=5");
    }

    #[test]
    fn config_has_only_overrides() {
        let c = TestConfig::new("cfg", 1884);
        let toml = c.to_toml();
        assert!(toml.contains("port = 1884"));
        assert!(toml.contains(&format!(
            "template = \"{}/{{site}}/{{sensor}}\"",
            c.input_root
        )));
        assert_eq!(
            c.anomaly_topic("a/b"),
            format!("{}/{}/anomaly/a/b", c.prefix, c.node_id)
        );
    }
}
