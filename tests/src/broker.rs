//! A private Mosquitto broker on a free loopback port.
//!
//! Each [`Mosquitto`] is its own process with its own config in a temporary folder; it is
//! killed when dropped. The config promises no silent loss (`max_queued_messages 0`), keeps
//! nothing on disk unless asked ([`BrokerOptions::persistence`]), and writes no pid file (which makes a root-started Mosquitto exit after it
//! drops to its own user).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running Mosquitto, killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    second_port: Option<u16>,
    exe: PathBuf,
    dir: tempfile::TempDir,
}

/// Broker settings beyond the defaults of [`Mosquitto::start`].
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// `persistence true` with a `persistence_location` in the broker's temporary folder: the
    /// broker saves sessions, subscriptions and queued QoS 1 messages when it stops (SIGTERM)
    /// and loads them when it starts again ([`Mosquitto::restart`]).
    pub persistence: bool,
    /// Mosquitto's `max_inflight_messages` (0 = unlimited, the harness default).
    pub max_inflight: u32,
    /// Mosquitto's `max_queued_messages` (0 = unlimited, the harness default).
    pub max_queued: u32,
    /// Listen on this loopback port (one a test reserved earlier, to start the broker after
    /// the daemon) instead of a free one. Fails if the port has been taken meanwhile.
    pub port: Option<u16>,
    /// A second listener on another free loopback port, configured by these Mosquitto lines
    /// (those that follow its `listener` line: `cafile`, `certfile`, `keyfile`,
    /// `require_certificate`, `allow_anonymous`, `password_file`, …). Settings are then per
    /// listener (`per_listener_settings true`), so the first listener stays plain and
    /// anonymous for the test's own clients.
    pub second_listener: Option<String>,
    /// `set_tcp_nodelay true`: the broker writes every packet at once instead of holding
    /// small ones back (Nagle) until the peer acknowledges what it sent before. On a one-way
    /// flow such as QoS 0 input (the receiver sends nothing back to carry its ACKs, so they
    /// wait for the delayed-ACK timer, 40 ms on Linux) Nagle batches it into 40 ms steps.
    pub tcp_nodelay: bool,
}

impl Mosquitto {
    /// Starts Mosquitto on a free loopback port and waits until it accepts TCP connections.
    ///
    /// # Panics
    /// When Mosquitto is not installed: the e2e tests require it and say how to install it.
    pub fn start() -> Result<Self> {
        Self::start_with(&BrokerOptions::default())
    }

    /// Starts Mosquitto on a given loopback port (see [`BrokerOptions::port`]).
    pub fn start_on(port: u16) -> Result<Self> {
        Self::start_with(&BrokerOptions {
            port: Some(port),
            ..BrokerOptions::default()
        })
    }

    /// As [`start`](Self::start), plus a second listener (see
    /// [`BrokerOptions::second_listener`]).
    pub fn start_with_listener(options: &str) -> Result<Self> {
        Self::start_with(&BrokerOptions {
            second_listener: Some(options.to_string()),
            ..BrokerOptions::default()
        })
    }

    /// The second listener's port (see [`BrokerOptions::second_listener`]).
    pub fn second_port(&self) -> Option<u16> {
        self.second_port
    }

    /// As [`Mosquitto::start`], with `options`.
    pub fn start_with(options: &BrokerOptions) -> Result<Self> {
        let exe = mosquitto_path().unwrap_or_else(|| {
            panic!("Mosquitto is required for the e2e tests: apt-get install -y mosquitto")
        });
        // Another process can take the port between our probe and Mosquitto's bind: retry.
        let mut last_err = None;
        for _ in 0..5 {
            match Self::try_start(&exe, options) {
                Ok(m) => return Ok(m),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Stops the broker with `signal` (SIGTERM: Mosquitto saves its persistence file first;
    /// SIGKILL: it cannot) and waits for it to exit.
    pub fn stop(&mut self, signal: libc::c_int) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
            // SAFETY: kill(2) on our own child, not yet reaped.
            if unsafe { libc::kill(pid, signal) } == -1 {
                bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
            }
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port with the same configuration (and, with
    /// persistence, the state it saved), after [`Mosquitto::stop`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop(libc::SIGKILL)?;
        let conf = self.dir.path().join("mosquitto.conf");
        let deadline = Instant::now() + crate::TIMEOUT;
        loop {
            let log = self.dir.path().join("mosquitto.log");
            let child = spawn_broker(&self.exe, &conf, &log)?;
            match wait_ready(
                child,
                self.port,
                self.second_port,
                &log,
                Instant::now() + Duration::from_secs(5),
            ) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                // The old listener's port may not be free again yet.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The broker's process id (for CPU and memory readings from /proc); 0 while stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The broker's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn try_start(exe: &Path, options: &BrokerOptions) -> Result<Self> {
        let port = match options.port {
            Some(p) => p,
            None => free_port()?,
        };
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let persistence = if options.persistence {
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 0\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_string()
        };
        let mut second_port = None;
        let mut extra = String::new();
        if let Some(lines) = &options.second_listener {
            let p = free_port()?;
            second_port = Some(p);
            extra = format!("listener {p} 127.0.0.1\n{lines}\n");
        }
        // Started as root, Mosquitto drops to its own user, which then can neither read key
        // and password files nor write its persistence file in the test's private temporary
        // folder; stay the same user.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            extra.push_str("user root\n");
        }
        if options.tcp_nodelay {
            extra.push_str("set_tcp_nodelay true\n");
        }
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings {}\n\
                 listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 max_queued_messages {}\n\
                 max_inflight_messages {}\n\
                 {persistence}\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n\
                 {extra}",
                options.second_listener.is_some(),
                options.max_queued,
                options.max_inflight
            ),
        )?;
        let child = spawn_broker(exe, &conf, &log)?;
        let child = wait_ready(
            child,
            port,
            second_port,
            &log,
            Instant::now() + crate::TIMEOUT,
        )?;
        Ok(Mosquitto {
            child: Some(child),
            port,
            second_port,
            exe: exe.to_path_buf(),
            dir,
        })
    }
}

fn spawn_broker(exe: &Path, conf: &Path, log: &Path) -> Result<Child> {
    crate::daemon::spawn_with_parent_death(
        Command::new(exe)
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?),
    )
    .with_context(|| format!("starting {}", exe.display()))
}

/// Waits until the broker accepts TCP connections on `port` (and on `second`, if any).
fn wait_ready(
    mut child: Child,
    port: u16,
    second: Option<u16>,
    log: &Path,
    deadline: Instant,
) -> Result<Child> {
    loop {
        if let Some(status) = child.try_wait()? {
            let err = std::fs::read_to_string(log).unwrap_or_default();
            bail!("mosquitto exited at start ({status}): {err}");
        }
        let second_up = second.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && second_up {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("mosquitto did not accept connections on port {port} within the timeout");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Mosquitto on PATH, or in /usr/sbin (which is not on every user's PATH).
fn mosquitto_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.is_file())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
