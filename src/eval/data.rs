//! Labelled data sets for `tidewatch evaluate`, in two layouts:
//!
//! - Telemanom's (NASA SMAP/MSL): `train/<chan>.npy[.gz]`, `test/<chan>.npy[.gz]` and
//!   `labeled_anomalies.csv` with `chan_id,…,anomaly_sequences,…`, the sequences a list
//!   `[[start, end], …]` of test row indices, end inclusive. Column 0 is the value,
//!   the other columns are command flags (context): only column 0 is scored by default.
//! - Generic: `train/<entity>.<ext>`, `test/<entity>.<ext>` and `labels/<entity>.<ext>`
//!   (any format [`read_matrix`] reads: `.npy`, `.npy.gz`, `.csv`, `.jsonl`, optionally
//!   gzipped). A labels file of one column holds 0/1 per test row; one of two columns
//!   holds index ranges `start,end` (end inclusive, as Telemanom's). Every column is
//!   scored by default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};

use crate::sources::file::{read_matrix, Matrix};

/// Which layout a data set directory has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `labeled_anomalies.csv` beside `train/` and `test/`.
    Telemanom,
    /// `labels/` beside `train/` and `test/`.
    Generic,
}

/// One entity (a channel, a machine): its training and test data and test labels.
#[derive(Clone, Debug)]
pub struct Entity {
    /// Its name (the file name without extension).
    pub name: String,
    /// Normal data to fit on.
    pub train: Matrix,
    /// Data to score.
    pub test: Matrix,
    /// One label per test row: `true` inside a labelled anomaly.
    pub labels: Vec<bool>,
}

/// A labelled data set.
#[derive(Clone, Debug)]
pub struct DataSet {
    /// Its layout.
    pub layout: Layout,
    /// Its entities, by name.
    pub entities: Vec<Entity>,
    /// The columns scored unless the caller says otherwise (Telemanom: the value,
    /// column 0; generic: every column).
    pub default_values: Option<Vec<usize>>,
}

const EXTENSIONS: &[&str] = &[".npy.gz", ".npy", ".csv.gz", ".csv", ".jsonl.gz", ".jsonl"];

/// The entity name of a data file, `None` for a file of no known format.
fn entity_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    EXTENSIONS
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// The data files of `dir`, by entity name.
fn files(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if let Some(name) = entity_name(&path) {
            if let Some(other) = out.insert(name.clone(), path.clone()) {
                bail!(
                    "entity {name:?} has two files: {} and {}",
                    other.display(),
                    path.display()
                );
            }
        }
    }
    Ok(out)
}

/// Loads the data set in `dir` (either layout).
pub fn load(dir: &Path) -> anyhow::Result<DataSet> {
    let (train, test) = (dir.join("train"), dir.join("test"));
    ensure!(
        train.is_dir() && test.is_dir(),
        "{}: a data set needs train/ and test/ folders",
        dir.display()
    );
    let train_files = files(&train)?;
    let test_files = files(&test)?;
    let telemanom = dir.join("labeled_anomalies.csv");
    let (layout, ranges) = if telemanom.is_file() {
        let text = std::fs::read_to_string(&telemanom)
            .with_context(|| format!("{}", telemanom.display()))?;
        (Layout::Telemanom, Some(parse_telemanom(&text, &telemanom)?))
    } else {
        ensure!(
            dir.join("labels").is_dir(),
            "{}: no labeled_anomalies.csv (Telemanom layout) and no labels/ folder (generic layout)",
            dir.display()
        );
        (Layout::Generic, None)
    };
    let label_files = match layout {
        Layout::Generic => files(&dir.join("labels"))?,
        Layout::Telemanom => BTreeMap::new(),
    };
    let mut entities = Vec::new();
    for (name, test_path) in &test_files {
        let Some(train_path) = train_files.get(name) else {
            bail!(
                "{}: no training file for it in {}",
                test_path.display(),
                train.display()
            );
        };
        let train = read_matrix(train_path)?;
        let test = read_matrix(test_path)?;
        ensure!(
            train.cols == test.cols,
            "{name}: train has {} columns, test {}",
            train.cols,
            test.cols
        );
        let labels = match &ranges {
            Some(ranges) => {
                let Some(r) = ranges.get(name) else {
                    bail!("{name}: not in labeled_anomalies.csv");
                };
                from_ranges(r, test.rows, name)?
            }
            None => {
                let Some(path) = label_files.get(name) else {
                    bail!("{name}: no labels file in labels/");
                };
                read_labels(path, test.rows)?
            }
        };
        entities.push(Entity {
            name: name.clone(),
            train,
            test,
            labels,
        });
    }
    ensure!(
        !entities.is_empty(),
        "{}: no entities in test/",
        test.display()
    );
    Ok(DataSet {
        layout,
        entities,
        default_values: match layout {
            Layout::Telemanom => Some(vec![0]),
            Layout::Generic => None,
        },
    })
}

/// Per-row labels from inclusive index ranges.
fn from_ranges(ranges: &[(usize, usize)], rows: usize, name: &str) -> anyhow::Result<Vec<bool>> {
    let mut labels = vec![false; rows];
    for &(start, end) in ranges {
        ensure!(
            start <= end && end < rows,
            "{name}: anomaly range [{start}, {end}] is not within its {rows} test rows"
        );
        labels[start..=end].iter_mut().for_each(|l| *l = true);
    }
    Ok(labels)
}

/// A labels file: one column of 0/1 per row, or two columns of inclusive ranges.
fn read_labels(path: &Path, rows: usize) -> anyhow::Result<Vec<bool>> {
    let m = read_matrix(path)?;
    let name = path.display().to_string();
    match m.cols {
        1 => {
            ensure!(
                m.rows == rows,
                "{name}: {} labels for {rows} test rows",
                m.rows
            );
            m.values
                .iter()
                .map(|&v| match v {
                    0.0 => Ok(false),
                    1.0 => Ok(true),
                    _ => bail!("{name}: label {v} is neither 0 nor 1"),
                })
                .collect()
        }
        2 => {
            let ranges: Vec<(usize, usize)> = (0..m.rows)
                .map(|r| {
                    let (s, e) = (m.row(r)[0], m.row(r)[1]);
                    ensure!(
                        s >= 0.0 && e >= 0.0 && s.fract() == 0.0 && e.fract() == 0.0,
                        "{name}: row {r}: ranges are whole row indices, not {s}, {e}"
                    );
                    Ok((s as usize, e as usize))
                })
                .collect::<anyhow::Result<_>>()?;
            from_ranges(&ranges, rows, &name)
        }
        c => bail!("{name}: {c} columns; labels are one column of 0/1 or two (start, end)"),
    }
}

/// `labeled_anomalies.csv`: channel → its anomaly ranges. A channel listed twice (SMAP's
/// P-2) gets the union of its rows' ranges.
fn parse_telemanom(
    text: &str,
    path: &Path,
) -> anyhow::Result<BTreeMap<String, Vec<(usize, usize)>>> {
    let mut out: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let chan = line.split(',').next().unwrap_or("").trim().to_string();
        // the sequences: from the first "[[" to the first "]]"
        let (Some(open), Some(close)) = (line.find("[["), line.find("]]")) else {
            bail!("{}: no [[start, end], …] list", at());
        };
        ensure!(!chan.is_empty() && open < close, "{}: malformed row", at());
        let numbers: Vec<usize> = line[open..close]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(at)?;
        ensure!(
            numbers.len().is_multiple_of(2),
            "{}: odd number of bounds",
            at()
        );
        out.entry(chan)
            .or_default()
            .extend(numbers.chunks(2).map(|p| (p[0], p[1])));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemanom_labels_parse_and_merge() {
        let text = "chan_id,spacecraft,anomaly_sequences,class,num_values\n\
            P-1,SMAP,\"[[2, 4], [7, 7]]\",\"[contextual, point]\",10\n\
            P-2,SMAP,\"[[1, 2]]\",[point],10\n\
            P-2,SMAP,\"[[2, 3]]\",[point],10\n";
        let m = parse_telemanom(text, Path::new("l.csv")).unwrap();
        assert_eq!(m["P-1"], vec![(2, 4), (7, 7)]);
        let l = from_ranges(&m["P-2"], 5, "P-2").unwrap();
        assert_eq!(l, vec![false, true, true, true, false]);
        assert!(from_ranges(&[(3, 5)], 5, "x").is_err());
        assert!(parse_telemanom("h\nX,SMAP,none,1\n", Path::new("l.csv")).is_err());
    }

    #[test]
    fn entity_names() {
        assert_eq!(
            entity_name(Path::new("a/P-1.npy.gz")).as_deref(),
            Some("P-1")
        );
        assert_eq!(entity_name(Path::new("m.csv")).as_deref(), Some("m"));
        assert_eq!(entity_name(Path::new("README.md")), None);
    }
}
