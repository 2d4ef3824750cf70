//! The outbox: anomaly and no-data events kept until the broker acknowledges them.
//!
//! The publisher pushes every event the workers produce here and removes it only when the
//! broker's PUBACK for it has come back, so an event produced while the broker is unreachable
//! (or published just before the connection dropped) is delivered after reconnection. At most
//! `output.buffer.capacity` events are held; further events are refused and counted.
//!
//! With `output.buffer.file` set, the outbox is mirrored to an append-only spool file of JSON
//! lines, `{"add":<id>,"event":{…}}` when an event enters and `{"done":<id>}` when the broker
//! acknowledged it, so undelivered events survive a restart (they come back flagged
//! `delayed`). A torn last line (a crash mid-write) is ignored on load. Before a record would
//! take the file beyond `output.buffer.max_file_bytes`, the file is rewritten (temporary file,
//! fsync, rename) with only the undelivered events; if those alone do not fit, the oldest are
//! dropped and counted. With `output.buffer.fsync` every record is fsynced before the call
//! returns.
//!
//! Several events can be in flight at once (handed to the MQTT client, PUBACK awaited): the
//! publisher takes the oldest event not in flight with [`Outbox::next_unsent`], marks it
//! sent, and removes each one by id when its PUBACK comes, in whatever order the PUBACKs
//! come ([`Outbox::complete`]). A publish lost with its session goes back to "not in flight"
//! ([`Outbox::resend`]) and, being older than every event not yet sent, goes out again
//! before them, so the events of a key reach the broker in the order they were produced.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::BufferSettings;
use crate::wire::OutboundEvent;

/// One event in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: u64,
    pub event: OutboundEvent,
    /// The connection (counted from 1) that was up when the event entered, if any. An event
    /// published on another connection is late and flagged `delayed`.
    pub connection: Option<u64>,
    /// Handed to the MQTT client and not yet acknowledged (not persisted: after a restart
    /// every event goes out again).
    pub in_flight: bool,
}

// A record lives only while one spool line is written or read, never in a collection, so
// the size of the `Add` variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Record {
    Add { add: u64, event: OutboundEvent },
    Done { done: u64 },
}

struct Spool {
    path: PathBuf,
    file: File,
    len: u64,
    max_len: u64,
    fsync: bool,
}

impl Spool {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.file.write_all(line)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.len += line.len() as u64;
        Ok(())
    }
}

/// What [`Outbox::push`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushResult {
    /// The event was refused (outbox full).
    pub refused: bool,
    /// Older events dropped so the spool file stays within its bound.
    pub dropped_oldest: u64,
}

/// The bounded, optionally file-backed queue of events awaiting a PUBACK.
pub struct Outbox {
    items: VecDeque<Entry>,
    capacity: usize,
    next_id: u64,
    spool: Option<Spool>,
    /// The compaction at [`Outbox::open`] failed (see there).
    start_compaction_failed: bool,
}

impl Outbox {
    /// An outbox in memory only.
    pub fn in_memory(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
            next_id: 1,
            spool: None,
            start_compaction_failed: false,
        }
    }

    /// The outbox `settings` describe, with the undelivered events of a previous run loaded
    /// from the spool file (flagged `delayed`). Returns the outbox and how many events were
    /// restored.
    pub fn open(settings: &BufferSettings) -> std::io::Result<(Self, usize)> {
        let mut outbox = Self::in_memory(settings.capacity);
        if settings.file.is_empty() {
            return Ok((outbox, 0));
        }
        let path = PathBuf::from(&settings.file);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let restored = load(&path, settings.capacity)?;
        let n = restored.len();
        for (id, mut event) in restored {
            event.set_delayed(true);
            outbox.next_id = outbox.next_id.max(id + 1);
            outbox.items.push_back(Entry {
                id,
                event,
                connection: None,
                in_flight: false,
            });
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        outbox.spool = Some(Spool {
            path,
            file,
            len,
            max_len: settings.max_file_bytes,
            fsync: settings.fsync,
        });
        // Start from a compact file: only what is still undelivered. A failure here (a full
        // disk) must not stop the daemon from starting: it keeps this run's events in memory
        // only and leaves the file as it was. Appending to the uncompacted file would be
        // wrong twice: a torn last line (a crash mid-write) would swallow the next record, and
        // the events `load` skipped above the capacity, still pending in the file, would come
        // back at a later start after newer ones. Left alone, the file is loaded again at the
        // next start; what this run delivers from it may then be delivered once more (flagged
        // `delayed`: at least once).
        if let Err(e) = outbox.compact() {
            outbox.start_compaction_failed = true;
            let spool = outbox.spool.take().expect("spool set above");
            let _ = std::fs::remove_file(spool.path.with_extension("compacting"));
            tracing::error!(path = %spool.path.display(), error = %e, "cannot compact the outbox spool file at start; it is left as it is and this run keeps events in memory only");
        }
        Ok((outbox, n))
    }

    /// Whether the compaction of the spool file at [`Outbox::open`] failed (logged there; the
    /// file is then left as it was and the outbox keeps events in memory only).
    pub fn start_compaction_failed(&self) -> bool {
        self.start_compaction_failed
    }

    /// Whether events are mirrored to a spool file.
    pub fn is_spooled(&self) -> bool {
        self.spool.is_some()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn front(&self) -> Option<&Entry> {
        self.items.front()
    }

    /// Adds an event at the back, unless the outbox is full. `connection` is the connection
    /// that is up now, if any.
    pub fn push(
        &mut self,
        event: OutboundEvent,
        connection: Option<u64>,
    ) -> std::io::Result<PushResult> {
        let mut result = PushResult {
            refused: false,
            dropped_oldest: 0,
        };
        if self.items.len() >= self.capacity {
            result.refused = true;
            return Ok(result);
        }
        let id = self.next_id;
        self.next_id += 1;
        if self.spool.is_some() {
            let mut line = serde_json::to_vec(&Record::Add {
                add: id,
                event: event.clone(),
            })
            .expect("record serialises");
            line.push(b'\n');
            result.dropped_oldest = self.make_room(line.len() as u64)?;
            self.spool.as_mut().expect("spool").append(&line)?;
        }
        self.items.push_back(Entry {
            id,
            event,
            connection,
            in_flight: false,
        });
        Ok(result)
    }

    /// The oldest event not in flight, to be published next.
    pub fn next_unsent(&mut self) -> Option<&mut Entry> {
        self.items.iter_mut().find(|e| !e.in_flight)
    }

    /// Events handed to the client whose PUBACK has not come.
    pub fn in_flight(&self) -> usize {
        self.items.iter().filter(|e| e.in_flight).count()
    }

    /// The publish of event `id` was lost with its session (or refused): it is no longer in
    /// flight and goes out again, flagged `delayed` (it is late now). False when the event is
    /// gone (the spool file's bound dropped it).
    pub fn resend(&mut self, id: u64) -> bool {
        match self.position(id) {
            Some(i) => {
                let e = &mut self.items[i];
                e.in_flight = false;
                e.event.set_delayed(true);
                true
            }
            None => false,
        }
    }

    /// Where event `id` is (ids increase from front to back).
    fn position(&self, id: u64) -> Option<usize> {
        let i = self.items.partition_point(|e| e.id < id);
        (self.items.get(i)?.id == id).then_some(i)
    }

    /// Removes the event `id`, which the broker acknowledged, wherever it is (PUBACKs of
    /// events in flight may come in any order). While its publish waited for the PUBACK, the
    /// spool file's bound may have dropped it (the oldest go first, see [`Outbox::push`]);
    /// then nothing is removed and `None` comes back, so an acknowledgement never removes an
    /// event it does not name.
    pub fn complete(&mut self, id: u64) -> std::io::Result<Option<Entry>> {
        match self.position(id) {
            Some(i) => self.remove_at(i),
            None => Ok(None),
        }
    }

    /// Removes the front event (tests: the broker acknowledged it).
    #[cfg(test)]
    fn pop_front(&mut self) -> std::io::Result<Option<Entry>> {
        self.remove_at(0)
    }

    /// Removes the event at `i` (acknowledged) and records it as done in the spool file.
    fn remove_at(&mut self, i: usize) -> std::io::Result<Option<Entry>> {
        let Some(entry) = self.items.remove(i) else {
            return Ok(None);
        };
        if let Some(spool) = self.spool.as_mut() {
            let mut line =
                serde_json::to_vec(&Record::Done { done: entry.id }).expect("record serialises");
            line.push(b'\n');
            if spool.len + line.len() as u64 > spool.max_len {
                // The rewritten file lacks this entry already; no record needed.
                self.compact()?;
            } else {
                spool.append(&line)?;
            }
        }
        Ok(Some(entry))
    }

    fn spool_len(&self) -> u64 {
        self.spool.as_ref().map_or(0, |s| s.len)
    }

    /// Bytes in the spool file (0 without one).
    pub fn file_len(&self) -> u64 {
        self.spool_len()
    }

    /// Compacts the spool file if `extra` more bytes would exceed its bound; drops the oldest
    /// events while even the compacted file would. Returns how many were dropped.
    fn make_room(&mut self, extra: u64) -> std::io::Result<u64> {
        let Some(spool) = self.spool.as_ref() else {
            return Ok(0);
        };
        if spool.len + extra <= spool.max_len {
            return Ok(0);
        }
        let max_len = spool.max_len;
        let mut dropped = 0;
        loop {
            self.compact()?;
            if self.spool_len() + extra <= max_len || self.items.is_empty() {
                return Ok(dropped);
            }
            self.items.pop_front();
            dropped += 1;
        }
    }

    /// Rewrites the spool file with only the events still held.
    fn compact(&mut self) -> std::io::Result<()> {
        let Some(spool) = self.spool.as_mut() else {
            return Ok(());
        };
        let tmp = spool.path.with_extension("compacting");
        let mut out = Vec::new();
        for e in &self.items {
            serde_json::to_writer(
                &mut out,
                &Record::Add {
                    add: e.id,
                    event: e.event.clone(),
                },
            )
            .expect("record serialises");
            out.push(b'\n');
        }
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(&out)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &spool.path)) {
            // Leave no half-written copy behind on a full disk; the spool file is untouched.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if let Some(dir) = spool.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        spool.file = OpenOptions::new().append(true).open(&spool.path)?;
        spool.len = out.len() as u64;
        Ok(())
    }
}

/// The undelivered events recorded in a spool file, oldest first (at most `capacity`, the
/// newest kept).
fn load(path: &Path, capacity: usize) -> std::io::Result<Vec<(u64, OutboundEvent)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut pending: std::collections::BTreeMap<u64, OutboundEvent> = Default::default();
    let mut bad = 0usize;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(Record::Add { add, event }) => {
                pending.insert(add, event);
            }
            Ok(Record::Done { done }) => {
                pending.remove(&done);
            }
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(path = %path.display(), lines = bad, "unreadable lines in the outbox spool file skipped (a torn last write after a crash is expected)");
    }
    let skip = pending.len().saturating_sub(capacity);
    if skip > 0 {
        tracing::warn!(
            path = %path.display(),
            dropped = skip,
            "more undelivered events in the spool file than output.buffer.capacity; the oldest are dropped"
        );
    }
    Ok(pending.into_iter().skip(skip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::NoDataMessage;

    fn event(key: &str) -> OutboundEvent {
        OutboundEvent::NoData(NoDataMessage::new("n", key, true, 1_000, 2_000, 5))
    }

    fn settings(dir: &Path, capacity: usize, max_file_bytes: u64) -> BufferSettings {
        BufferSettings {
            capacity,
            file: dir.join("spool/outbox.jsonl").display().to_string(),
            max_file_bytes,
            fsync: true,
        }
    }

    #[test]
    fn memory_outbox_is_bounded_and_fifo() {
        let mut o = Outbox::in_memory(2);
        assert!(!o.push(event("a"), Some(1)).unwrap().refused);
        assert!(!o.push(event("b"), None).unwrap().refused);
        assert!(o.push(event("c"), None).unwrap().refused, "full");
        assert_eq!(o.front().unwrap().event.key(), "a");
        assert_eq!(o.front().unwrap().connection, Some(1));
        assert_eq!(o.pop_front().unwrap().unwrap().event.key(), "a");
        assert!(!o.push(event("c"), None).unwrap().refused);
        let keys: Vec<_> = std::iter::from_fn(|| o.pop_front().unwrap())
            .map(|e| e.event.key().to_string())
            .collect();
        assert_eq!(keys, ["b", "c"]);
    }

    #[test]
    fn undelivered_events_survive_a_restart_flagged_delayed() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 10, 1 << 20);
        {
            let (mut o, restored) = Outbox::open(&s).unwrap();
            assert_eq!(restored, 0);
            for k in ["a", "b", "c"] {
                o.push(event(k), Some(1)).unwrap();
            }
            o.pop_front().unwrap(); // "a" acknowledged
        }
        // A torn last line, as after a crash in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(&s.file).unwrap();
        f.write_all(b"{\"add\":99,\"ev").unwrap();
        drop(f);
        let (mut o, restored) = Outbox::open(&s).unwrap();
        assert_eq!(restored, 2);
        let e = o.pop_front().unwrap().unwrap();
        assert_eq!(e.event.key(), "b");
        assert!(e.event.delayed());
        assert_eq!(e.connection, None);
        // New ids continue after the restored ones, and the file was compacted on open.
        o.push(event("d"), None).unwrap();
        drop(o);
        let (o, restored) = Outbox::open(&s).unwrap();
        assert_eq!(restored, 2);
        let keys: Vec<_> = o.items.iter().map(|e| e.event.key().to_string()).collect();
        assert_eq!(keys, ["c", "d"]);
        let text = std::fs::read_to_string(&s.file).unwrap();
        assert_eq!(text.lines().count(), 2, "compacted: {text}");
    }

    /// A compaction that fails at start (a full disk; here the temporary file's path is
    /// taken by a directory, so creating it fails) does not fail the start: the outbox
    /// appends to the spool file as it was, and nothing in it is lost.
    #[test]
    fn a_failed_compaction_at_start_leaves_the_spool_file_and_runs_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 10, 1 << 20);
        {
            let (mut o, _) = Outbox::open(&s).unwrap();
            for k in ["a", "b"] {
                o.push(event(k), Some(1)).unwrap();
            }
            o.pop_front().unwrap(); // "a" acknowledged
        }
        // A crash mid-write left a torn last line.
        let mut torn = std::fs::read_to_string(&s.file).unwrap();
        assert_eq!(torn.lines().count(), 3, "add a, add b, done a: {torn}");
        torn.push_str("{\"add\":9,\"ev");
        std::fs::write(&s.file, &torn).unwrap();
        let blocker = Path::new(&s.file).with_extension("compacting");
        std::fs::create_dir(&blocker).unwrap();
        let (mut o, restored) = Outbox::open(&s).expect("a failed compaction is not fatal");
        assert_eq!(restored, 1);
        assert!(o.start_compaction_failed());
        assert!(!o.is_spooled(), "this run keeps events in memory only");
        // Nothing is appended after the torn line, so no record is glued onto it.
        o.push(event("c"), None).unwrap();
        o.pop_front().unwrap(); // "b" delivered in this run
        drop(o);
        assert_eq!(std::fs::read_to_string(&s.file).unwrap(), torn);
        std::fs::remove_dir(&blocker).unwrap();
        // The next start loads the file as it was: "b" again (at least once), flagged delayed.
        let (o, restored) = Outbox::open(&s).unwrap();
        assert!(!o.start_compaction_failed());
        assert_eq!(restored, 1);
        let keys: Vec<_> = o.items.iter().map(|e| e.event.key().to_string()).collect();
        assert_eq!(keys, ["b"]);
    }

    /// The publish of the front event waits for its PUBACK while new events arrive; the spool
    /// file's bound drops the oldest, which is that front event. Its PUBACK must not remove
    /// the next event, which was never published.
    /// Bytes one added event takes in the spool file (its JSON line).
    fn spooled_event_bytes() -> u64 {
        let mut l = serde_json::to_vec(&Record::Add {
            add: 1,
            event: event("k"),
        })
        .unwrap();
        l.push(b'\n');
        l.len() as u64
    }

    #[test]
    fn an_acknowledgement_never_removes_an_event_it_does_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let one = spooled_event_bytes();
        let s = settings(dir.path(), 100, one * 2 + one / 2);
        let (mut o, _) = Outbox::open(&s).unwrap();
        o.push(event("a"), Some(1)).unwrap();
        o.push(event("b"), Some(1)).unwrap();
        let in_flight = o.front().unwrap().id;
        let r = o.push(event("c"), None).unwrap();
        assert_eq!(r.dropped_oldest, 1, "the bound drops the oldest");
        assert_eq!(o.complete(in_flight).unwrap(), None);
        let keys: Vec<_> = o.items.iter().map(|e| e.event.key().to_string()).collect();
        assert_eq!(keys, ["b", "c"], "nothing unpublished was removed");
        let b = o.front().unwrap().id;
        assert_eq!(o.complete(b).unwrap().unwrap().event.key(), "b");
        let (reloaded, restored) = Outbox::open(&s).unwrap();
        assert_eq!(restored, 1);
        assert_eq!(reloaded.front().unwrap().event.key(), "c");
    }

    #[test]
    fn the_spool_file_stays_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let one = spooled_event_bytes();
        // Room for about three events.
        let s = settings(dir.path(), 100, one * 3 + one / 2);
        let (mut o, _) = Outbox::open(&s).unwrap();
        let mut dropped = 0;
        for i in 0..50 {
            let r = o.push(event("k"), None).unwrap();
            assert!(!r.refused);
            dropped += r.dropped_oldest;
            if i % 3 == 0 {
                o.pop_front().unwrap();
            }
            let len = std::fs::metadata(&s.file).unwrap().len();
            assert!(len <= s.max_file_bytes, "{len} > {}", s.max_file_bytes);
        }
        assert!(dropped > 0, "the bound must have forced drops");
        assert!(o.len() <= 3);
        // Delivered events are never dropped: acknowledged ones are simply gone.
        let (reloaded, restored) = Outbox::open(&s).unwrap();
        assert_eq!(restored, o.len());
        assert_eq!(
            reloaded.items.iter().map(|e| e.id).collect::<Vec<_>>(),
            o.items.iter().map(|e| e.id).collect::<Vec<_>>()
        );
    }

    /// Marks the next unsent event in flight, as the publisher does; returns its id.
    fn send_next(o: &mut Outbox) -> u64 {
        let e = o.next_unsent().expect("an unsent event");
        e.in_flight = true;
        e.id
    }

    fn keys(o: &Outbox) -> Vec<String> {
        o.items.iter().map(|e| e.event.key().to_string()).collect()
    }

    #[test]
    fn out_of_order_acknowledgements_remove_exactly_the_named_events() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 10, 1 << 20);
        let (mut o, _) = Outbox::open(&s).unwrap();
        for k in ["a", "b", "c", "d"] {
            o.push(event(k), Some(1)).unwrap();
        }
        let ids: Vec<u64> = (0..3).map(|_| send_next(&mut o)).collect();
        assert_eq!(o.in_flight(), 3);
        assert_eq!(o.next_unsent().unwrap().event.key(), "d");
        // PUBACKs for c, then a; b still awaited.
        assert_eq!(o.complete(ids[2]).unwrap().unwrap().event.key(), "c");
        assert_eq!(o.complete(ids[0]).unwrap().unwrap().event.key(), "a");
        assert_eq!(
            o.complete(ids[0]).unwrap(),
            None,
            "a second PUBACK removes nothing"
        );
        assert_eq!(keys(&o), ["b", "d"]);
        assert_eq!(o.in_flight(), 1);
        // The spool file agrees: a restart brings back b and d only.
        drop(o);
        let (o, restored) = Outbox::open(&s).unwrap();
        assert_eq!(restored, 2);
        assert_eq!(keys(&o), ["b", "d"]);
        assert_eq!(o.in_flight(), 0, "nothing is in flight after a restart");
    }

    /// Three events in flight when the session is lost: they go out again, flagged delayed,
    /// before the event that was never sent, so the order of the events is kept.
    #[test]
    fn events_lost_with_their_session_go_out_again_first_and_delayed() {
        let mut o = Outbox::in_memory(10);
        for k in ["a", "b", "c", "d"] {
            o.push(event(k), Some(1)).unwrap();
        }
        let ids: Vec<u64> = (0..3).map(|_| send_next(&mut o)).collect();
        // b was acknowledged before the connection dropped; a and c were not.
        o.complete(ids[1]).unwrap().unwrap();
        assert!(o.resend(ids[2]));
        assert!(o.resend(ids[0]));
        assert_eq!(o.in_flight(), 0);
        let again: Vec<(String, bool)> = (0..3)
            .map(|_| {
                let e = o.next_unsent().unwrap();
                e.in_flight = true;
                (e.event.key().to_string(), e.event.delayed())
            })
            .collect();
        assert_eq!(
            again,
            [("a".into(), true), ("c".into(), true), ("d".into(), false)]
        );
        assert!(o.next_unsent().is_none());
    }

    /// The spool file's bound drops the oldest events while several are in flight: their
    /// PUBACKs (or their loss) later must touch nothing else, and the events still in
    /// flight complete normally.
    #[test]
    fn the_spool_bound_with_several_events_in_flight_drops_only_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let one = spooled_event_bytes();
        let s = settings(dir.path(), 100, one * 3 + one / 2);
        let (mut o, _) = Outbox::open(&s).unwrap();
        for k in ["a", "b", "c"] {
            o.push(event(k), Some(1)).unwrap();
        }
        let ids: Vec<u64> = (0..3).map(|_| send_next(&mut o)).collect();
        let r = o.push(event("d"), None).unwrap();
        let r2 = o.push(event("e"), None).unwrap();
        assert_eq!(r.dropped_oldest + r2.dropped_oldest, 2, "a and b dropped");
        assert_eq!(keys(&o), ["c", "d", "e"]);
        assert!(std::fs::metadata(&s.file).unwrap().len() <= s.max_file_bytes);
        // The PUBACK of dropped a, the loss of dropped b: nothing changes.
        assert_eq!(o.complete(ids[0]).unwrap(), None);
        assert!(!o.resend(ids[1]));
        assert_eq!(keys(&o), ["c", "d", "e"]);
        assert_eq!(o.in_flight(), 1, "c is still in flight");
        assert_eq!(o.next_unsent().unwrap().event.key(), "d");
        assert_eq!(o.complete(ids[2]).unwrap().unwrap().event.key(), "c");
        let (reloaded, restored) = Outbox::open(&s).unwrap();
        assert_eq!(restored, 2);
        assert_eq!(keys(&reloaded), ["d", "e"]);
    }
}
