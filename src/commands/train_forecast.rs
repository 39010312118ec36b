//! `tidewatch train --kind forecast --data DIR`: per entity file of `DIR`, the forecaster
//! that `tidewatch evaluate` fits by default ([`ForecastModel`] with
//! [`ForecastConfig::default`]), saved as `<out>/<entity>/forecast.json` for `replay
//! --dataflow forecast`. The first `--values` columns are scored and the others are the
//! forecasters' context, as `evaluate` splits them. Under `default/`, for entities without
//! their own, the forecaster fitted on every entity's training rows end to end, beside a
//! one-class SVM that names the frames' features for the engine.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use super::train::TrainArgs;
use super::train_entities::{columns, entity_files, read_entity, save_default_ocsvm};
use crate::detect::{ForecastConfig, ForecastModel};
use crate::model::entities::DEFAULT_ENTITY;

/// The columns after the first `keep` of each row of `values` (`cols` to a row).
fn context_columns(values: &[f32], cols: usize, keep: usize) -> Vec<f32> {
    values
        .chunks_exact(cols)
        .flat_map(|r| &r[keep..])
        .copied()
        .collect()
}

/// The absolute floor `evaluate` would set for training files in `dir`: 0.05 when the
/// data set around it is in Telemanom's layout (`labeled_anomalies.csv` beside `dir`),
/// whose values are scaled to [-1, 1], else the unit-free default.
fn min_error_for(dir: &Path) -> (f32, &'static str) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let telemanom = dir
        .parent()
        .is_some_and(|p| p.join("labeled_anomalies.csv").is_file());
    if telemanom {
        (0.05, "Telemanom's layout, as evaluate sets it")
    } else {
        (ForecastConfig::default().min_error, "the default")
    }
}

/// Fits `values` (the first `keep` of `cols` columns scored, the rest context) as
/// `evaluate` does.
fn fit(
    values: &[f32],
    cols: usize,
    keep: usize,
    config: ForecastConfig,
) -> anyhow::Result<ForecastModel> {
    ForecastModel::fit_with_context(
        &columns(values, cols, keep),
        keep,
        &context_columns(values, cols, keep),
        cols - keep,
        config,
    )
}

/// Trains a forecaster per entity of `dir` into `args.out` and prints a summary.
pub fn run(args: &TrainArgs, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let files = entity_files(dir)?;
    let (min_error, why) = match args.min_error {
        Some(m) => (m, "--min-error"),
        None => min_error_for(dir),
    };
    let config = ForecastConfig {
        min_error,
        ..ForecastConfig::default()
    };
    // the recorded command spells out the floor it was given or chose, so that it means
    // the same wherever the data directory lies
    let args = &TrainArgs {
        min_error: Some(min_error),
        ..args.clone()
    };
    let (mut pooled, mut width, mut flat) = (Vec::new(), None, Vec::new());
    for (name, path) in &files {
        let (m, keep) = read_entity(name, path, args.values, &mut width)?;
        let model =
            fit(&m.values, m.cols, keep, config).with_context(|| format!("entity {name}"))?;
        if !model.flat_features().is_empty() {
            flat.push(name.clone());
        }
        model.save(&args.out.join(name))?;
        pooled.extend_from_slice(&m.values);
    }
    let cols = width.unwrap_or(1);
    let keep = args.values.unwrap_or(cols);
    let default_dir = args.out.join(DEFAULT_ENTITY);
    fit(&pooled, cols, keep, config)
        .context("the default forecaster, on every entity pooled")?
        .save(&default_dir)?;
    let command = save_default_ocsvm(args, dir, files.len(), &pooled, cols, &default_dir)?;
    println!(
        "trained {} per-entity forecasters ({keep} of {cols} columns scored, the rest \
         context; min_error {min_error}: {why}) and a default in {:.1} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    if !flat.is_empty() {
        eprintln!(
            "warning: {} entities have value columns that never moved in training (their \
             thresholds rest on the floor): {}",
            flat.len(),
            flat.join(",")
        );
    }
    println!("saved to {}", args.out.display());
    println!("reproduce with: {command}");
    Ok(())
}
