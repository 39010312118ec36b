//! A configuration file a run follows while it goes on: read at start, read again when
//! its modification time changes, and kept as it was when the new text does not parse.
//! The machines variant's type table and the rules variant's rule file both reload
//! through it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What a [`LiveFile`] holds: how to read it, and how to name it in its log lines.
pub trait FileContents: Sized + Send + Sync + 'static {
    /// What the file is, for log lines ("type table").
    const WHAT: &'static str;
    /// What [`FileContents::entries`] counts ("types").
    const UNIT: &'static str;

    /// The contents of the file at `path`; the error names what is wrong and where.
    fn read(path: &Path) -> anyhow::Result<Self>;

    /// How many entries it holds, for the reload log line.
    fn entries(&self) -> usize;

    /// Whether `new` may replace these contents in a running dataflow (say, it keeps the
    /// frame width the run was built for); an error keeps these.
    fn may_become(&self, _new: &Self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A file's contents now, and a version that grows with every change, so that readers
/// act on changes alone. Shared by the dataflow's workers (and `serve`'s handlers).
#[derive(Debug)]
pub struct LiveFile<T> {
    path: Option<PathBuf>,
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    version: u64,
    contents: Arc<T>,
    modified: Option<SystemTime>,
}

impl<T: FileContents> LiveFile<T> {
    /// The file at `path`, followed by [`LiveFile::refresh`]; an error if it does not
    /// read now.
    pub fn open(path: &Path) -> anyhow::Result<LiveFile<T>> {
        let modified = modified(path);
        Ok(LiveFile {
            path: Some(path.to_path_buf()),
            state: Mutex::new(State {
                version: 0,
                contents: Arc::new(T::read(path)?),
                modified,
            }),
        })
    }

    /// Fixed `contents` with no file, changed by [`LiveFile::replace`] alone.
    pub fn fixed(contents: T) -> LiveFile<T> {
        LiveFile {
            path: None,
            state: Mutex::new(State {
                version: 0,
                contents: Arc::new(contents),
                modified: None,
            }),
        }
    }

    /// The version and the contents now.
    pub fn current(&self) -> (u64, Arc<T>) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.version, Arc::clone(&s.contents))
    }

    /// New contents, as a new version.
    pub fn replace(&self, contents: T) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.version += 1;
        s.contents = Arc::new(contents);
    }

    /// Reads the file again if its modification time changed, and logs the new entry
    /// count. A file that no longer reads (or may not replace what is in force) keeps
    /// the contents in force and is logged, once per change of the file.
    pub fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let now = modified(path);
        let old = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if now == s.modified {
                return;
            }
            s.modified = now;
            Arc::clone(&s.contents)
        };
        match T::read(path).and_then(|new| old.may_become(&new).map(|()| new)) {
            Ok(new) => {
                tracing::info!(
                    path = %path.display(),
                    "{} reloaded: {} {}",
                    T::WHAT,
                    new.entries(),
                    T::UNIT
                );
                self.replace(new)
            }
            Err(e) => tracing::warn!("{e:#}; the {} in force stays", T::WHAT),
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
