//! The outbox directory: segment files of [`Record`]s, appended by one writer.
//!
//! Layout: `DIR/outbox-id` (a random id made when the directory is first used; it
//! prefixes every idempotency key, so that two outboxes never share a key),
//! `DIR/lock` (held by the writing process, so that two `serve`s, or `serve` and
//! `tidewatch outbox replay`, never write one outbox at once) and `DIR/<first id>.seg`,
//! the segments, each named by the first event id it may hold. Events, acknowledgements
//! and dead marks go to the newest segment; a segment is rolled once it passes
//! [`SEGMENT_BYTES`], and removed once every event in it, and in every older segment, is
//! acknowledged or dead (older first, so that no acknowledgement is lost while the event
//! it names is still on disk). The newest segment is never removed: its name keeps the
//! event ids growing even when everything was delivered.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::record::{decode_all, Record, StoredEvent};
use crate::sinks::event::AlertEvent;

/// A segment is rolled once it is this large.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// One segment file.
#[derive(Clone, Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes on disk (the valid part).
    bytes: u64,
    /// Events in it not yet acknowledged or dead.
    open: usize,
}

/// What a scan of an outbox directory found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Events not acknowledged nor dead, by id (oldest first).
    pub pending: BTreeMap<u64, StoredEvent>,
    /// Bytes of all segments.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Torn or damaged tails found (and, when opened for writing, cut off).
    pub torn: Vec<(PathBuf, u64)>,
    /// Segments by first id, with what is known of each.
    seg: BTreeMap<u64, Segment>,
    /// The id after the highest seen.
    next_id: u64,
}

fn segment_id(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

/// Reads every segment of `dir` (none if it does not exist). Read-only: torn tails are
/// reported in [`Scan::torn`], not cut.
pub fn scan(dir: &Path) -> anyhow::Result<Scan> {
    let mut scan = Scan::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(e).with_context(|| format!("reading outbox {}", dir.display())),
    };
    let mut files: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| segment_id(&p).map(|id| (id, p)))
        .collect();
    files.sort();
    // event id -> segment first id, for the events still open
    let mut home: HashMap<u64, u64> = HashMap::new();
    for (first, path) in files {
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("reading outbox segment {}", path.display()))?;
        let (records, valid) = decode_all(&bytes);
        if valid < bytes.len() {
            scan.torn.push((path.clone(), (bytes.len() - valid) as u64));
        }
        scan.next_id = scan.next_id.max(first);
        let mut seg = Segment {
            path,
            bytes: valid as u64,
            open: 0,
        };
        for r in records {
            match r {
                Record::Event(e) => {
                    scan.next_id = scan.next_id.max(e.id + 1);
                    home.insert(e.id, first);
                    seg.open += 1;
                    scan.pending.insert(e.id, e);
                }
                Record::Ack(id) | Record::Dead(id) => {
                    if scan.pending.remove(&id).is_some() {
                        let h = home.remove(&id).expect("pending events have a home");
                        if h == first {
                            seg.open -= 1;
                        } else if let Some(s) = scan.seg.get_mut(&h) {
                            s.open -= 1;
                        }
                    }
                }
            }
        }
        scan.bytes += seg.bytes;
        scan.seg.insert(first, seg);
    }
    scan.segments = scan.seg.len();
    Ok(scan)
}

/// Why an event was not appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The outbox holds `--outbox-max-bytes` already.
    OverBudget {
        /// Bytes in the outbox.
        bytes: u64,
        /// The budget.
        budget: u64,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::OverBudget { bytes, budget } => write!(
                f,
                "the outbox is over its disk budget ({bytes} of {budget} bytes, --outbox-max-bytes)"
            ),
        }
    }
}

/// An outbox opened for writing: holds the directory's lock until dropped.
pub struct OutboxLog {
    dir: PathBuf,
    uid: String,
    _lock: File,
    active: File,
    active_first: u64,
    seg: BTreeMap<u64, Segment>,
    home: HashMap<u64, u64>,
    next_id: u64,
    bytes: u64,
    max_bytes: u64,
    /// Records staged, written by [`OutboxLog::commit`].
    buf: Vec<u8>,
    /// Whether `buf` holds an event, which must be on disk before it is delivered.
    staged_event: bool,
}

/// Takes the directory's lock without waiting; fails naming the holder's kind of trouble.
fn lock(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot write the outbox lock {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor we own; it is released when the file closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            bail!(
                "the outbox {} is in use by another process (a running serve?)",
                dir.display()
            );
        }
    }
    Ok(file)
}

/// The outbox's own id, made on first use.
fn outbox_uid(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("outbox-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let uid = format!("{:016x}", rand::random::<u64>());
    let tmp = dir.join("outbox-id.tmp");
    std::fs::write(&tmp, &uid)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(uid)
}

fn sync_dir(dir: &Path) {
    // Makes a new segment's name durable; where directories cannot be opened, the next
    // fsync of the file covers it on the common file systems.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl OutboxLog {
    /// Opens (creating) the outbox in `dir` for writing, cuts off torn tails, and returns
    /// it with the events still to deliver (oldest first).
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<(OutboxLog, Vec<StoredEvent>)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the outbox directory {}", dir.display()))?;
        let lock = lock(dir)?;
        let uid = outbox_uid(dir)?;
        let scan = scan(dir)?;
        for (path, cut) in &scan.torn {
            tracing::warn!(
                segment = %path.display(),
                bytes = cut,
                "the outbox segment ends in a torn record (a crash while writing); it is cut off"
            );
        }
        let mut seg = scan.seg;
        for s in seg.values() {
            let f = OpenOptions::new()
                .write(true)
                .open(&s.path)
                .with_context(|| format!("opening {}", s.path.display()))?;
            if f.metadata().map(|m| m.len()).unwrap_or(0) != s.bytes {
                f.set_len(s.bytes)
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("cutting {}", s.path.display()))?;
            }
        }
        let next_id = scan.next_id.max(1);
        let (active_first, active) = match seg.last_key_value() {
            Some((&first, s)) => (
                first,
                OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .with_context(|| format!("opening {}", s.path.display()))?,
            ),
            None => {
                let path = dir.join(format!("{next_id:020}.seg"));
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                sync_dir(dir);
                seg.insert(
                    next_id,
                    Segment {
                        path,
                        bytes: 0,
                        open: 0,
                    },
                );
                (next_id, f)
            }
        };
        let mut home = HashMap::new();
        let mut first_of = seg.keys().copied().collect::<Vec<_>>();
        first_of.reverse();
        for id in scan.pending.keys() {
            let h = first_of.iter().copied().find(|&f| f <= *id).unwrap_or(0);
            home.insert(*id, h);
        }
        let pending: Vec<StoredEvent> = scan.pending.into_values().collect();
        let log = OutboxLog {
            dir: dir.to_path_buf(),
            uid,
            _lock: lock,
            active,
            active_first,
            seg,
            home,
            next_id,
            bytes: scan.bytes,
            max_bytes,
            buf: Vec::new(),
            staged_event: false,
        };
        Ok((log, pending))
    }

    /// Stages `event` (written by the next [`OutboxLog::commit`]) with the next id, and
    /// `idempotency_key` if given (a replayed dead letter keeps its own), else one made
    /// from this outbox's id and the event id.
    pub fn stage(
        &mut self,
        event: AlertEvent,
        idempotency_key: Option<String>,
        at_ms: i64,
    ) -> Result<StoredEvent, Refused> {
        if self.max_bytes > 0 && self.bytes + self.buf.len() as u64 >= self.max_bytes {
            return Err(Refused::OverBudget {
                bytes: self.bytes + self.buf.len() as u64,
                budget: self.max_bytes,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let stored = StoredEvent {
            id,
            idempotency_key: idempotency_key.unwrap_or_else(|| format!("{}-{id}", self.uid)),
            at_ms,
            event,
        };
        Record::Event(stored.clone()).encode(&mut self.buf);
        self.staged_event = true;
        self.home.insert(id, self.active_first);
        if let Some(s) = self.seg.get_mut(&self.active_first) {
            s.open += 1;
        }
        Ok(stored)
    }

    /// Stages the end of event `id`: acknowledged by the receiver (`acked`), or dead.
    pub fn resolve(&mut self, id: u64, acked: bool) {
        let Some(h) = self.home.remove(&id) else {
            return;
        };
        if let Some(s) = self.seg.get_mut(&h) {
            s.open = s.open.saturating_sub(1);
        }
        let r = if acked {
            Record::Ack(id)
        } else {
            Record::Dead(id)
        };
        r.encode(&mut self.buf);
    }

    /// Writes what was staged in one write; if it held an event, syncs the data to disk
    /// (`fdatasync`) before returning, so that an event is durable before its first
    /// delivery attempt. Acknowledgements alone are not synced: losing one to a power
    /// failure means a delivery again, under the same idempotency key. Then rolls the
    /// segment if it is full and removes the segments fully resolved.
    pub fn commit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.active.write_all(&self.buf);
        let n = self.buf.len() as u64;
        self.buf.clear();
        written?;
        if std::mem::take(&mut self.staged_event) {
            self.active.sync_data()?;
        }
        self.bytes += n;
        let active_bytes = {
            let s = self
                .seg
                .get_mut(&self.active_first)
                .expect("the active segment is known");
            s.bytes += n;
            s.bytes
        };
        if active_bytes >= SEGMENT_BYTES {
            self.roll()?;
        }
        self.remove_resolved(false);
        Ok(())
    }

    fn roll(&mut self) -> std::io::Result<()> {
        self.active.sync_data()?;
        let first = self.next_id;
        let path = self.dir.join(format!("{first:020}.seg"));
        self.active = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&self.dir);
        self.active_first = first;
        self.seg.insert(
            first,
            Segment {
                path,
                bytes: 0,
                open: 0,
            },
        );
        Ok(())
    }

    /// Removes the oldest segments while every event in them is resolved (never the
    /// active one). With `all`, rolls first so that the active one can go too if it is
    /// fully resolved. Returns the segments and bytes removed.
    pub fn remove_resolved(&mut self, all: bool) -> (usize, u64) {
        if all
            && self
                .seg
                .get(&self.active_first)
                .is_some_and(|s| s.bytes > 0)
        {
            if let Err(e) = self.roll() {
                tracing::warn!(error = %e, "cannot roll the outbox segment");
            }
        }
        let mut removed = (0, 0);
        while let Some((&first, s)) = self.seg.first_key_value() {
            if first == self.active_first || s.open > 0 {
                break;
            }
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(segment = %s.path.display(), error = %e, "cannot remove an outbox segment");
                break;
            }
            removed.0 += 1;
            removed.1 += s.bytes;
            self.bytes -= s.bytes;
            self.seg.remove(&first);
        }
        removed
    }

    /// Events appended and not yet acknowledged or dead.
    pub fn pending(&self) -> usize {
        self.home.len()
    }

    /// Bytes in the outbox's segments.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(seq: u64) -> AlertEvent {
        AlertEvent {
            key: format!("frame-{seq}"),
            body: Bytes::from(vec![b'x'; 100]),
            seq: Some(seq),
            incident: None,
        }
    }

    /// What is not acknowledged comes back on the next open, with the same ids and
    /// idempotency keys; ids keep growing; a second writer is refused while one holds it.
    #[test]
    fn unacknowledged_events_come_back_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, pending) = OutboxLog::open(dir.path(), 0).unwrap();
        assert!(pending.is_empty());
        assert!(OutboxLog::open(dir.path(), 0).is_err(), "locked");
        let a = log.stage(ev(0), None, 1).unwrap();
        let b = log.stage(ev(1), None, 2).unwrap();
        let c = log.stage(ev(2), Some("kept".into()), 3).unwrap();
        log.commit().unwrap();
        log.resolve(a.id, true);
        log.resolve(c.id, false);
        log.commit().unwrap();
        assert_eq!(log.pending(), 1);
        drop(log);
        let (mut log, pending) = OutboxLog::open(dir.path(), 0).unwrap();
        assert_eq!(pending, vec![b.clone()]);
        let d = log.stage(ev(3), None, 4).unwrap();
        assert!(d.id > c.id);
        assert_eq!(c.idempotency_key, "kept");
        assert_ne!(a.idempotency_key, b.idempotency_key);
    }

    /// A crash mid-append: the torn record is cut off at open and the outbox goes on.
    #[test]
    fn a_torn_tail_is_cut_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = OutboxLog::open(dir.path(), 0).unwrap();
        let a = log.stage(ev(0), None, 1).unwrap();
        log.commit().unwrap();
        drop(log);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 1, 9]).unwrap();
        drop(f);
        assert_eq!(scan(dir.path()).unwrap().torn.len(), 1);
        let (mut log, pending) = OutboxLog::open(dir.path(), 0).unwrap();
        assert_eq!(pending, vec![a]);
        log.stage(ev(1), None, 2).unwrap();
        log.commit().unwrap();
        drop(log);
        let s = scan(dir.path()).unwrap();
        assert!(s.torn.is_empty());
        assert_eq!(s.pending.len(), 2);
    }

    /// Fully resolved segments go (oldest first, never the active one), and the budget
    /// refuses events once the outbox holds it.
    #[test]
    fn resolved_segments_are_removed_and_the_budget_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = OutboxLog::open(dir.path(), 0).unwrap();
        let big = AlertEvent {
            body: Bytes::from(vec![b'y'; SEGMENT_BYTES as usize]),
            ..ev(0)
        };
        let a = log.stage(big, None, 1).unwrap();
        log.commit().unwrap();
        assert_eq!(log.seg.len(), 2, "rolled");
        let b = log.stage(ev(1), None, 2).unwrap();
        log.commit().unwrap();
        log.resolve(a.id, true);
        log.commit().unwrap();
        assert_eq!(log.seg.len(), 1, "the first segment went");
        assert!(log.bytes() < 1000);
        log.resolve(b.id, true);
        log.commit().unwrap();
        assert_eq!(log.remove_resolved(true).0, 1);
        drop(log);
        let (mut log, pending) = OutboxLog::open(dir.path(), 300).unwrap();
        assert!(pending.is_empty());
        assert!(
            log.stage(ev(2), None, 3).unwrap().id > b.id,
            "ids keep growing"
        );
        log.commit().unwrap();
        log.stage(ev(3), None, 4).unwrap();
        log.commit().unwrap();
        assert!(matches!(
            log.stage(ev(4), None, 5),
            Err(Refused::OverBudget { .. })
        ));
    }
}
