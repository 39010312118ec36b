//! Feature metadata: which asset and subsystem each feature belongs to, from a CSV or
//! JSON file a user writes. Features of the same asset and subsystem form one group, and
//! one incident covers a group; a feature the file does not name is a group of its own.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

use crate::model::FeatureIndex;

/// `(feature index, group)` for every feature the metadata names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Groups {
    /// One row per named feature, in file order.
    pub rows: Vec<(u32, String)>,
}

/// One feature's row.
#[derive(Debug, Deserialize)]
struct Row {
    feature: serde_json::Value,
    #[serde(default)]
    asset: String,
    #[serde(default)]
    subsystem: String,
}

impl Groups {
    /// The group of a feature the metadata does not name: the feature alone, by name.
    pub fn ungrouped(names: &FeatureIndex, feature: u32) -> String {
        names.name(feature as usize)
    }

    /// Reads `path`: `.json` is an array of objects `{"feature": name or index, "asset":
    /// ..., "subsystem": ...}`; anything else is CSV with a header row naming `feature`,
    /// and `asset` and/or `subsystem` (other columns, labels of one's own, are read past).
    /// The group is `asset/subsystem` (either alone if the other is empty). Features are
    /// resolved against the model's names; a name the model lacks is an error.
    pub fn load(path: &Path, names: &FeatureIndex) -> anyhow::Result<Groups> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading feature metadata {}", path.display()))?;
        let rows = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<Vec<Row>>(&text).map_err(anyhow::Error::from)
        } else {
            parse_csv(&text)
        }
        .with_context(|| format!("feature metadata {}", path.display()))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut seen = std::collections::BTreeSet::new();
        for (i, row) in rows.into_iter().enumerate() {
            let feature = resolve(&row.feature, names)
                .with_context(|| format!("feature metadata {}, row {}", path.display(), i + 1))?;
            if !seen.insert(feature) {
                bail!(
                    "feature metadata {}: feature {} is listed twice",
                    path.display(),
                    names.name(feature as usize)
                );
            }
            let group = [row.asset.trim(), row.subsystem.trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("/");
            if !group.is_empty() {
                out.push((feature, group));
            }
        }
        Ok(Groups { rows: out })
    }
}

fn resolve(feature: &serde_json::Value, names: &FeatureIndex) -> anyhow::Result<u32> {
    let found = match feature {
        serde_json::Value::String(name) => names
            .index_of(name)
            .or_else(|| name.parse::<usize>().ok().filter(|&i| i < names.len())),
        serde_json::Value::Number(n) => n.as_u64().map(|i| i as usize).filter(|&i| i < names.len()),
        _ => None,
    };
    found
        .map(|i| i as u32)
        .ok_or_else(|| anyhow!("{feature} names no feature of the model"))
}

/// Comma-separated rows without quoting: feature names and group names have no commas,
/// and a CSV crate for three columns would be a dependency for nothing; a quote is
/// refused rather than misread.
fn parse_csv(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| anyhow!("empty file: expected a header row"))?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let feature = col("feature").ok_or_else(|| anyhow!("the header has no `feature` column"))?;
    let (asset, subsystem) = (col("asset"), col("subsystem"));
    if asset.is_none() && subsystem.is_none() {
        bail!("the header has neither an `asset` nor a `subsystem` column");
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            if line.contains('"') {
                bail!("line {}: quoted fields are not supported", i + 2);
            }
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let cell = |c: Option<usize>| c.and_then(|c| cells.get(c)).unwrap_or(&"").to_string();
            Ok(Row {
                feature: serde_json::Value::String(cell(Some(feature))),
                asset: cell(asset),
                subsystem: cell(subsystem),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_name_the_same_groups() {
        let dir = tempfile::tempdir().unwrap();
        let names = FeatureIndex::numbered(4);
        let csv = dir.path().join("m.csv");
        std::fs::write(
            &csv,
            "feature,asset,subsystem,unit\nfeature_0,pump1,motor,V\n2,pump1,\nfeature_3,,\n",
        )
        .unwrap();
        let json = dir.path().join("m.json");
        std::fs::write(
            &json,
            r#"[{"feature":"feature_0","asset":"pump1","subsystem":"motor"},{"feature":2,"asset":"pump1"}]"#,
        )
        .unwrap();
        let want = vec![(0, "pump1/motor".to_string()), (2, "pump1".to_string())];
        assert_eq!(Groups::load(&csv, &names).unwrap().rows, want);
        assert_eq!(Groups::load(&json, &names).unwrap().rows, want);
        std::fs::write(&csv, "feature,asset\nfeature_9,a\n").unwrap();
        let err = format!("{:#}", Groups::load(&csv, &names).unwrap_err());
        assert!(err.contains("feature_9") && err.contains("row 1"), "{err}");
    }
}
