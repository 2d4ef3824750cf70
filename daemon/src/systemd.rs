//! systemd integration without libsystemd: the `sd_notify` protocol and the watchdog interval.
//!
//! Under `Type=notify` systemd passes a Unix datagram socket in `NOTIFY_SOCKET` (a path, or an
//! abstract name starting with `@`); each datagram is newline-separated `KEY=VALUE` lines
//! (`READY=1`, `STOPPING=1`, `RELOADING=1`, `WATCHDOG=1`, `STATUS=…`). Outside systemd the
//! variable is unset and every call is a no-op. `WATCHDOG_USEC` (with `WATCHDOG_PID`, when set,
//! naming this process) asks for `WATCHDOG=1` more often than that interval.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends notifications to the service manager, when there is one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET`; a no-op one when it is unset or unusable (the reason
    /// is logged).
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) => Self::for_socket(&path.to_string_lossy()).unwrap_or_else(|e| {
                tracing::warn!(socket = ?path, error = %e, "NOTIFY_SOCKET unusable; no systemd notifications");
                Self::disabled()
            }),
            None => Self::disabled(),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// A notifier for the socket at `path` (`@name` for an abstract socket).
    pub fn for_socket(path: &str) -> io::Result<Self> {
        let addr = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else {
            SocketAddr::from_pathname(path)?
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Self {
            target: Some((socket, addr)),
        })
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) as one datagram. Failures are
    /// logged, never fatal: the daemon works without its manager hearing from it.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!(error = %e, state, "sd_notify failed");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping");
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd needs to order the reload.
    pub fn reloading(&self) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd uses for `MONOTONIC_USEC`.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The watchdog timeout systemd enforces for this process (`WATCHDOG_USEC`), if any.
pub fn watchdog_timeout() -> Option<Duration> {
    watchdog_timeout_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_timeout`] on explicit values (testable without touching the environment).
pub fn watchdog_timeout_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_timeout_only_for_this_pid() {
        let d = Duration::from_secs(30);
        assert_eq!(watchdog_timeout_from(Some("30000000"), None, 7), Some(d));
        assert_eq!(
            watchdog_timeout_from(Some("30000000"), Some("7"), 7),
            Some(d)
        );
        assert_eq!(watchdog_timeout_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_timeout_from(None, None, 7), None);
    }

    #[test]
    fn notifications_arrive_as_datagrams_on_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::for_socket(path.to_str().unwrap()).unwrap();
        n.ready("restored 0 streams");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=restored 0 streams");

        let name = format!("sparsewatch-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let abstract_server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::for_socket(&format!("@{name}")).unwrap();
        n.reloading();
        let len = abstract_server.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        let usec: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(text.starts_with("RELOADING=1\n"), "{text}");
        assert!(usec > 0 && usec <= monotonic_usec());
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready("x");
    }
}
