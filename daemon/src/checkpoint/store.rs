//! The state directory: atomic writes with one generation kept back, and loading with
//! fallback to that generation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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
}

impl Store {
    /// The store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir, fault: None })
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
