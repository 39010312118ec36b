//! The machine-type table (seed 002 caches it from PostgreSQL): a machine type (`L`, `M`,
//! `H`) → its encoding for the model, read from a CSV file `type,type_encoded` and
//! reloaded while a run goes on when the file changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context};

/// A machine type as the dataflow keys it: its one character's code point (`'L'` → 76).
pub type TypeCode = u32;

/// The code of a machine type; `None` unless it is exactly one character.
pub fn type_code(machine_type: &str) -> Option<TypeCode> {
    let mut chars = machine_type.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c as TypeCode),
        _ => None,
    }
}

/// Type → encoding.
pub type Rows = BTreeMap<TypeCode, f64>;

/// Reads a `type,type_encoded` CSV (a header row, then one row per type).
pub fn read(path: &Path) -> anyhow::Result<Rows> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading type table {}", path.display()))?;
    parse(&text).with_context(|| format!("type table {}", path.display()))
}

fn parse(text: &str) -> anyhow::Result<Rows> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, h)) if h.replace(' ', "") == "type,type_encoded" => {}
        _ => bail!("expected the header row type,type_encoded"),
    }
    let mut rows = Rows::new();
    for (i, line) in lines {
        let (t, e) = line
            .split_once(',')
            .with_context(|| format!("line {}: expected type,type_encoded", i + 1))?;
        let code = type_code(t.trim())
            .with_context(|| format!("line {}: type {t:?} is not one character", i + 1))?;
        let enc: f64 = e
            .trim()
            .parse()
            .with_context(|| format!("line {}: encoding {e:?}", i + 1))?;
        if rows.insert(code, enc).is_some() {
            bail!("line {}: type {t:?} listed twice", i + 1);
        }
    }
    Ok(rows)
}

/// The table of a run: its rows now, and a version that grows with every change, so that
/// the dataflow sends only what changed. Shared by the dataflow's workers and `serve`'s
/// `/predict`.
#[derive(Debug)]
pub struct LiveTable {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    version: u64,
    rows: Arc<Rows>,
    modified: Option<SystemTime>,
}

impl LiveTable {
    /// The table in `path`, followed by [`LiveTable::refresh`].
    pub fn open(path: &Path) -> anyhow::Result<LiveTable> {
        let modified = modified(path);
        Ok(LiveTable {
            path: Some(path.to_path_buf()),
            state: Mutex::new(State {
                version: 0,
                rows: Arc::new(read(path)?),
                modified,
            }),
        })
    }

    /// A table of fixed `rows` with no file, changed by [`LiveTable::replace`] alone.
    pub fn fixed(rows: Rows) -> LiveTable {
        LiveTable {
            path: None,
            state: Mutex::new(State {
                version: 0,
                rows: Arc::new(rows),
                modified: None,
            }),
        }
    }

    /// The version and the rows now.
    pub fn current(&self) -> (u64, Arc<Rows>) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.version, Arc::clone(&s.rows))
    }

    /// New rows, as a new version.
    pub fn replace(&self, rows: Rows) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.version += 1;
        s.rows = Arc::new(rows);
    }

    /// Reads the file again if its modification time changed. A file that no longer
    /// parses keeps the rows in force and is logged, once per change of the file.
    pub fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let now = modified(path);
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if now == s.modified {
                return;
            }
            s.modified = now;
        }
        match read(path) {
            Ok(rows) => {
                tracing::info!(path = %path.display(), types = rows.len(), "type table reloaded");
                self.replace(rows)
            }
            Err(e) => tracing::warn!("{e:#}; the type table in force stays"),
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let rows = parse("type,type_encoded\nL,0\nM,1\n\nH,2\n").unwrap();
        assert_eq!(rows.get(&('M' as u32)), Some(&1.0));
        assert_eq!(rows.len(), 3);
        assert!(parse("kind,code\nL,0\n").is_err());
        assert!(parse("type,type_encoded\nL,0\nL,1\n").is_err());
        assert!(parse("type,type_encoded\nLL,0\n").is_err());
        assert!(parse("type,type_encoded\nL,zero\n").is_err());
    }

    /// A changed file is a new version; a broken one keeps the old rows.
    #[test]
    fn reloads_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.csv");
        std::fs::write(&path, "type,type_encoded\nL,0\n").unwrap();
        let table = LiveTable::open(&path).unwrap();
        table.refresh();
        assert_eq!(table.current().0, 0);
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::write(&path, "type,type_encoded\nL,7\n").unwrap();
        std::fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        table.refresh();
        let (version, rows) = table.current();
        assert_eq!((version, rows.get(&('L' as u32))), (1, Some(&7.0)));
        std::fs::write(&path, "broken").unwrap();
        std::fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(5))
            .unwrap();
        table.refresh();
        assert_eq!(table.current().0, 1);
    }
}
