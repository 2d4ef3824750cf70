//! A private Mosquitto broker on a free loopback port.
//!
//! Each [`Mosquitto`] is its own process with its own config in a temporary folder; it is
//! killed when dropped. The config promises no silent loss (`max_queued_messages 0`), keeps
//! nothing on disk, and writes no pid file (which makes a root-started Mosquitto exit after it
//! drops to its own user).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running Mosquitto, killed on drop.
pub struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto on a free loopback port and waits until it accepts TCP connections.
    ///
    /// # Panics
    /// When Mosquitto is not installed: the e2e tests require it and say how to install it.
    pub fn start() -> Result<Self> {
        let exe = mosquitto_path().unwrap_or_else(|| {
            panic!("Mosquitto is required for the e2e tests: apt-get install -y mosquitto")
        });
        // Another process can take the port between our probe and Mosquitto's bind: retry.
        let mut last_err = None;
        for _ in 0..5 {
            match Self::try_start(&exe) {
                Ok(m) => return Ok(m),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// The broker's process id (for CPU and memory readings from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn try_start(exe: &Path) -> Result<Self> {
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 max_queued_messages 0\n\
                 max_inflight_messages 0\n\
                 persistence false\n\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n"
            ),
        )?;
        let mut child = crate::daemon::spawn_with_parent_death(
            Command::new(exe)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?),
        )
        .with_context(|| format!("starting {}", exe.display()))?;
        let deadline = Instant::now() + crate::TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("mosquitto exited at start ({status}): {err}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Mosquitto {
                    child,
                    port,
                    _dir: dir,
                });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mosquitto did not accept connections on port {port} within the timeout");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
