//! The machine-type table (seed 002 caches it from PostgreSQL): a machine type (`L`, `M`,
//! `H`) → its encoding for the model, read from a CSV file `type,type_encoded` and
//! reloaded while a run goes on when the file changes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};

use crate::live_file::{FileContents, LiveFile};

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

/// The table of a run, followed while it goes on (see [`LiveFile`]); shared by the
/// dataflow's workers and `serve`'s `/predict`.
pub type LiveTable = LiveFile<Rows>;

impl FileContents for Rows {
    const WHAT: &'static str = "type table";
    const UNIT: &'static str = "types";

    fn read(path: &Path) -> anyhow::Result<Rows> {
        read(path)
    }

    fn entries(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

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
