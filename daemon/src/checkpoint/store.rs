//! The state directory: atomic writes with one generation kept back, loading with fallback
//! to that generation, and the lock that keeps a second daemon out of it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{decode_file, Checkpoint, CheckpointError};

/// The last good checkpoint.
pub const CURRENT: &str = "checkpoint.swst";
/// The one before it.
pub const PREVIOUS: &str = "checkpoint.prev.swst";
/// A write in progress (never read; removed when found at start).
pub const TMP: &str = "checkpoint.swst.tmp";
/// Suffix a checkpoint that failed its checks is renamed with.
pub const REJECTED_SUFFIX: &str = ".rejected";
/// A checkpoint some of whose streams were discarded at a restore (learned with another
/// `[pipeline]` than configured) is copied aside as `checkpoint.<created_ms>` + this, so a
/// configuration mistake does not lose what they learned once later checkpoints replace it.
pub const DISCARDED_SUFFIX: &str = ".discarded.swst";
/// Copies kept aside that way; the oldest go first.
pub const DISCARDED_KEPT: usize = 3;

/// The lock file. The daemon holds an exclusive advisory lock (`flock`) on it for its
/// lifetime, with its pid in it for the message a second daemon gets. The file is left behind
/// on exit and that is harmless: the lock, not the file, is what keeps others out, and it dies
/// with its process (a crash included).
pub const LOCK: &str = "lock";

/// Why [`Store::lock_exclusive`] did not get the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it: two daemons would write one checkpoint, and each would
    /// overwrite the other's learned state.
    #[error(
        "state directory {} is in use by another sparsewatch ({}); give each instance its own [state] dir",
        dir.display(),
        pid.map_or("its pid is not written yet".to_string(), |p| format!("pid {p}"))
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
    /// The lock file cannot be created or locked (a read-only directory, a file system
    /// without locks).
    #[error("cannot lock the state directory {} ({}): {source}", dir.display(), LOCK)]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Environment variable that injects a fault into checkpoint writes, for the fault tests:
/// `enospc-after=N` fails every write with ENOSPC once N bytes of it are written (a full
/// disk), `pause-after-half=PATH` writes half of the file, fsyncs it, creates PATH and sleeps
/// (so a test can kill -9 the daemon in the middle of a write).
pub const FAULT_ENV: &str = "SPARSEWATCH_TEST_CHECKPOINT_FAULT";

/// An injected write fault (tests only; see [`FAULT_ENV`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Writes fail with ENOSPC after this many bytes.
    EnospcAfter(u64),
    /// Writes stop half-way: the marker file is created and the writer sleeps.
    PauseAfterHalf(PathBuf),
}

/// The copies kept aside by [`Store::keep_discarded`] in `dir`, with the creation time in
/// their names, oldest first.
pub fn discarded_copies(dir: &Path) -> io::Result<Vec<(i64, PathBuf)>> {
    let mut copies: Vec<(i64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let ms = path
                .file_name()?
                .to_str()?
                .strip_prefix("checkpoint.")?
                .strip_suffix(DISCARDED_SUFFIX)?
                .parse()
                .ok()?;
            Some((ms, path))
        })
        .collect();
    copies.sort();
    Ok(copies)
}

impl Fault {
    /// The fault named by [`FAULT_ENV`], if any.
    pub fn from_env() -> Option<Self> {
        let v = std::env::var(FAULT_ENV).ok()?;
        if let Some(n) = v.strip_prefix("enospc-after=") {
            return n.parse().ok().map(Fault::EnospcAfter);
        }
        v.strip_prefix("pause-after-half=")
            .map(|p| Fault::PauseAfterHalf(PathBuf::from(p)))
    }
}

/// Which file a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    Current,
    Previous,
}

impl Generation {
    pub fn file_name(self) -> &'static str {
        match self {
            Generation::Current => CURRENT,
            Generation::Previous => PREVIOUS,
        }
    }
}

/// A checkpoint read from the state directory.
#[derive(Debug)]
pub struct Loaded {
    pub generation: Generation,
    pub checkpoint: Checkpoint,
}

/// What loading found: the checkpoint to restore (if any) and every file that was rejected,
/// with the reason.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub loaded: Option<Loaded>,
    pub rejected: Vec<(PathBuf, CheckpointError)>,
    /// An unfinished write (from a crash during a checkpoint) was found and removed.
    pub removed_unfinished: bool,
}

/// A state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    fault: Option<Fault>,
    /// The locked [`LOCK`] file, once [`Store::lock_exclusive`] took it; closing it (when
    /// the store is dropped) releases the lock.
    lock: Option<File>,
}

impl Store {
    /// The store in `dir`, created if missing. Not locked: the daemon calls
    /// [`Store::lock_exclusive`] before it reads or writes anything.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            fault: None,
            lock: None,
        })
    }

    /// Takes the exclusive lock on the directory and keeps it as long as the store lives;
    /// never waits. Advisory locks die with their process, so a lock file a crashed daemon
    /// left behind blocks nobody. The file is never removed: a process that opened it and
    /// waits to lock would then lock a file nobody else sees, beside a new one.
    pub fn lock_exclusive(&mut self) -> Result<(), LockError> {
        let io_error = |source| LockError::Io {
            dir: self.dir.clone(),
            source,
        };
        let mut file = open_lock_file(&self.path(LOCK), |path| {
            let mut opts = OpenOptions::new();
            // Not truncated on open: until the lock is ours the pid in it is the holder's.
            opts.read(true).write(true).create(true).truncate(false);
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600).open(path)
        })
        .map_err(io_error)?;
        // flock(2) itself, not `File::try_lock` (the same call), which needs Rust 1.89: the
        // workspace builds with 1.85, Debian's toolchain for the device packages.
        // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(io_error(e));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::InUse {
                dir: self.dir.clone(),
                pid: text.trim().parse().ok(),
            });
        }
        // The pid only makes the other daemon's message more useful: a failure to write it
        // (a full disk, a file opened read-only) leaves the lock held and is not worth
        // refusing the start for. (A second daemon reading between our flock and this write
        // names the previous holder's pid: a window of microseconds, left as is.)
        let _ = file
            .set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
        self.lock = Some(file);
        Ok(())
    }

    /// Injects `fault` into every later write.
    pub fn with_fault(mut self, fault: Option<Fault>) -> Self {
        self.fault = fault;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` as the new current checkpoint: temporary file, fsync, current →
    /// previous, temporary → current, fsync of the directory. On an error the temporary file
    /// is removed and the existing generations are untouched.
    pub fn save(&self, bytes: &[u8]) -> io::Result<()> {
        self.save_parts([bytes])
    }

    /// As [`save`](Self::save), the file given as consecutive slices (see
    /// [`super::FileParts`]), written in order without joining them first.
    pub fn save_parts<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let tmp = self.path(TMP);
        let parts: Vec<&[u8]> = parts.into_iter().collect();
        let result = self.write_tmp(&tmp, &parts);
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let current = self.path(CURRENT);
        if current.exists() {
            fs::rename(&current, self.path(PREVIOUS))?;
        }
        fs::rename(&tmp, &current)?;
        File::open(&self.dir)?.sync_all()
    }

    fn write_tmp(&self, tmp: &Path, parts: &[&[u8]]) -> io::Result<()> {
        match fs::remove_file(tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = io::BufWriter::with_capacity(64 * 1024, opts.open(tmp)?);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // Where an injected fault strikes, in bytes from the start of the file.
        let stop_at = match &self.fault {
            None => usize::MAX,
            Some(Fault::EnospcAfter(n)) => (*n as usize).min(total),
            Some(Fault::PauseAfterHalf(_)) => total / 2,
        };
        let mut written = 0usize;
        for part in parts {
            if written + part.len() <= stop_at {
                file.write_all(part)?;
                written += part.len();
                continue;
            }
            let (before, after) = part.split_at(stop_at.saturating_sub(written));
            file.write_all(before)?;
            match &self.fault {
                Some(Fault::PauseAfterHalf(marker)) => {
                    file.flush()?;
                    file.get_ref().sync_all()?;
                    fs::write(marker, b"paused")?;
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                    file.write_all(after)?;
                    written = usize::MAX / 2;
                }
                _ => {
                    file.flush()?;
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
            }
        }
        if let Some(Fault::EnospcAfter(_)) = self.fault {
            // The file fitted in the allowance: the disk fills up at the end.
            file.flush()?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()
    }

    /// Copies the checkpoint file of `generation` (written at `created_ms`) aside as
    /// `checkpoint.<created_ms>.discarded.swst` (through a temporary file and a directory
    /// sync, so a copy is whole or absent) and then removes the oldest other copies so that
    /// at most [`DISCARDED_KEPT`] remain (never the new one, whatever its time: a device
    /// clock may have gone back). Returns the copy's path once it is durable; a failure to
    /// prune older copies does not undo that and is not an error. To use a copy again: stop
    /// the daemon, restore the configuration its streams were learned with, and move it to
    /// [`CURRENT`].
    pub fn keep_discarded(&self, generation: Generation, created_ms: i64) -> io::Result<PathBuf> {
        let name = format!("checkpoint.{created_ms}{DISCARDED_SUFFIX}");
        let (aside, tmp) = (self.path(&name), self.path(&format!("{name}.tmp")));
        let copied = fs::copy(self.path(generation.file_name()), &tmp)
            .and_then(|_| File::open(&tmp)?.sync_all())
            .and_then(|()| fs::rename(&tmp, &aside))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let Ok(mut others) = discarded_copies(&self.dir) else {
            return Ok(aside);
        };
        others.retain(|(_, path)| *path != aside);
        let excess = (others.len() + 1).saturating_sub(DISCARDED_KEPT);
        for (_, old) in &others[..excess] {
            let _ = fs::remove_file(old);
        }
        Ok(aside)
    }

    /// Reads the newest usable checkpoint. An unfinished write is removed; a current file
    /// that fails its checks is renamed aside (`.rejected`) and the previous one is tried.
    /// Never fails: what went wrong is in the outcome, for the caller to report.
    pub fn load(&self) -> LoadOutcome {
        let mut out = LoadOutcome::default();
        let tmp = self.path(TMP);
        if tmp.exists() && fs::remove_file(&tmp).is_ok() {
            out.removed_unfinished = true;
        }
        // A copy aside that a crash left unfinished (as big as a checkpoint; never read).
        if let Ok(entries) = fs::read_dir(&self.dir) {
            let unfinished = format!("{DISCARDED_SUFFIX}.tmp");
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("checkpoint.") && name.ends_with(&unfinished) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        for generation in [Generation::Current, Generation::Previous] {
            let path = self.path(generation.file_name());
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    out.rejected.push((path, e.into()));
                    continue;
                }
            };
            match decode_file(&bytes) {
                Ok(checkpoint) => {
                    out.loaded = Some(Loaded {
                        generation,
                        checkpoint,
                    });
                    return out;
                }
                Err(e) => {
                    let aside = self.path(&format!("{}{REJECTED_SUFFIX}", generation.file_name()));
                    let _ = fs::rename(&path, &aside);
                    out.rejected.push((path, e));
                }
            }
        }
        out
    }
}

/// Opens the lock file with `read_write`, or read-only when that is refused because another
/// user's daemon made the file (0600) or the directory is read-only: flock needs no write
/// access, so a second daemon run by someone else (an admin's `sparsewatch run` on
/// /var/lib/sparsewatch) is still kept out rather than run unguarded beside the service.
fn open_lock_file(
    path: &Path,
    read_write: impl FnOnce(&Path) -> io::Result<File>,
) -> io::Result<File> {
    match read_write(path) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            File::open(path).map_err(|_| e)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the lock file cannot be opened for writing (another user's, or a read-only
    /// directory), it is locked read-only: the holder is still seen, and a free lock is taken.
    /// (Tests run as root, which no file mode stops, so the refusal is injected.)
    #[test]
    fn a_lock_file_that_cannot_be_written_is_locked_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut service = Store::open(dir.path()).unwrap();
        service.lock_exclusive().unwrap();
        let denied = |_: &Path| Err(io::Error::from(io::ErrorKind::PermissionDenied));
        let file = open_lock_file(&dir.path().join(LOCK), denied).unwrap();
        // SAFETY: flock on a descriptor owned by `file`.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(
            locked, 0,
            "the service's lock must be seen through a read-only open"
        );
        drop(service);
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(locked, 0, "a free lock is taken read-only");
        // Any other refusal, or no file to fall back on, stays an error.
        let missing = dir.path().join("no-such-lock");
        let e = open_lock_file(&missing, denied).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let other = |_: &Path| Err(io::Error::from(io::ErrorKind::StorageFull));
        let e = open_lock_file(&dir.path().join(LOCK), other).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }

    /// Two stores in one process hold two open files, and `flock` locks conflict between open
    /// files, so this is what a second daemon sees.
    #[test]
    fn a_second_lock_on_the_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Store::open(dir.path()).unwrap();
        first.lock_exclusive().unwrap();
        let mut second = Store::open(dir.path()).unwrap();
        let err = second.lock_exclusive().unwrap_err();
        let me = std::process::id();
        assert!(
            matches!(&err, LockError::InUse { pid: Some(p), .. } if *p == me),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains(&format!("(pid {me})")), "{text}");
        assert!(text.contains("its own [state] dir"), "{text}");
        // Released with the store that held it.
        drop(first);
        second.lock_exclusive().unwrap();
    }

    /// A crashed daemon leaves its lock file, with its pid, but not its lock.
    #[test]
    fn a_lock_file_left_behind_does_not_block_and_gets_the_new_pid() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK), "4242424\n").unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.lock_exclusive().unwrap();
        let text = fs::read_to_string(dir.path().join(LOCK)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }
}
