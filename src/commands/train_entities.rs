//! `tidewatch train --data DIR`: one model per entity file of `DIR` into a directory of
//! per-entity models ([`crate::model::entities`]): each entity's PCA reconstruction
//! model, and under `default/` the same fitted on every entity's data pooled (for
//! entities without their own) beside a one-class SVM in today's format, which names the
//! frames' features for the engine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};

use super::train::TrainArgs;
use crate::detect::{PcaConfig, PcaModel};
use crate::model::entities::DEFAULT_ENTITY;
use crate::sources::{read_matrix, Matrix};
use crate::train::{self, MatrixView};

const EXTENSIONS: &[&str] = &[".npy.gz", ".npy", ".csv.gz", ".csv", ".jsonl.gz", ".jsonl"];

/// The first `keep` of the `cols` columns of each row of `values`.
pub(super) fn columns(values: &[f32], cols: usize, keep: usize) -> Vec<f32> {
    values
        .chunks_exact(cols)
        .flat_map(|r| &r[..keep])
        .copied()
        .collect()
}

/// The entity files of `dir` (a data file per entity, named by its stem), by name.
pub(super) fn entity_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(stem) = EXTENSIONS.iter().find_map(|e| name.strip_suffix(e)) {
            ensure!(
                stem != DEFAULT_ENTITY,
                "{}: an entity may not be called {DEFAULT_ENTITY:?}",
                path.display()
            );
            files.push((stem.to_string(), path.clone()));
        }
    }
    files.sort();
    ensure!(!files.is_empty(), "{}: no data files", dir.display());
    Ok(files)
}

/// Fits the `default/` entry's one-class SVM on every entity's frames pooled (`cols`
/// columns) and saves it to `default_dir`: it names the frames' features for the
/// engine. Returns the command that reproduces the run.
pub(super) fn save_default_ocsvm(
    args: &TrainArgs,
    dir: &Path,
    entities: usize,
    pooled: &[f32],
    cols: usize,
    default_dir: &Path,
) -> anyhow::Result<String> {
    let view = MatrixView::new(pooled.len() / cols, cols, pooled)?;
    let mut ocsvm = train::train(view, &args.config(None))?;
    ocsvm.meta.provenance.data = format!(
        "{} ({entities} entities, pooled for the default)",
        dir.display()
    );
    ocsvm.meta.provenance.seed = Some(args.seed);
    ocsvm.meta.provenance.command = args.reproducing_command();
    ocsvm.save(default_dir)?;
    Ok(ocsvm.meta.provenance.command)
}

/// Entity `name`'s training file and how many of its first columns are values
/// (`values`, else all), checked against the column count of the entities read before
/// (`width`, set by the first).
pub(super) fn read_entity(
    name: &str,
    path: &Path,
    values: Option<usize>,
    width: &mut Option<usize>,
) -> anyhow::Result<(Matrix, usize)> {
    let m = read_matrix(path).with_context(|| format!("entity {name}"))?;
    let keep = values.unwrap_or(m.cols);
    ensure!(
        (1..=m.cols).contains(&keep),
        "{}: --values {keep} of {} columns",
        path.display(),
        m.cols
    );
    ensure!(
        *width.get_or_insert(m.cols) == m.cols,
        "{}: {} columns, other entities have {}",
        path.display(),
        m.cols,
        width.unwrap_or(0)
    );
    Ok((m, keep))
}

/// Trains every entity of `dir` into `args.out` and prints a summary.
pub fn run(args: &TrainArgs, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let files = entity_files(dir)?;
    let config = PcaConfig {
        window: args.window,
        ..PcaConfig::default()
    };
    let (mut pooled, mut pooled_values, mut width) = (Vec::new(), Vec::new(), None);
    for (name, path) in &files {
        let (m, keep) = read_entity(name, path, args.values, &mut width)?;
        let x = columns(&m.values, m.cols, keep);
        let model = PcaModel::fit(&x, keep, config).with_context(|| format!("entity {name}"))?;
        model.save(&args.out.join(name))?;
        pooled.extend_from_slice(&m.values);
        pooled_values.extend(x);
    }
    let cols = width.unwrap_or(1);
    let keep = args.values.unwrap_or(cols);
    let default_dir = args.out.join(DEFAULT_ENTITY);
    PcaModel::fit(&pooled_values, keep, config)?.save(&default_dir)?;
    let command = save_default_ocsvm(args, dir, files.len(), &pooled, cols, &default_dir)?;
    println!(
        "trained {} per-entity PCA models (window {}, {keep} of {cols} values) and a default \
         in {:.1} s",
        files.len(),
        args.window,
        started.elapsed().as_secs_f64()
    );
    println!("saved to {}", args.out.display());
    println!("reproduce with: {command}");
    Ok(())
}
