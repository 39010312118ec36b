//! Seed 002's machine failure classifier: machine records (one per sensor event, keyed by
//! machine id), enriched with their machine type's encoding from a type table, the five
//! derived features of training, and an XGBoost model's failure probability. The
//! `machines` dataflow variant (`dataflows/machines.rs`) runs it on a stream of records;
//! `serve`'s `POST /predict` on one.
//!
//! A model directory (`models/machines/`) holds `machines.json` ([`MachinesMeta`]),
//! XGBoost's `xgboost.json` and the type table `types.csv`; `scripts/train-machines.py`
//! writes the first two.

pub mod features;
pub mod record;
pub mod source;
pub mod stage;
pub mod table;
pub mod xgb;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context};
use serde::{Deserialize, Serialize};

use crate::model::{FeatureNames, Model};
use features::Sensors;
use table::{LiveTable, TypeCode};

/// `machines.json`: what the engine needs to know about the model, and how it scored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachinesMeta {
    /// Format version; 1.
    pub format: u32,
    /// XGBoost's JSON model, relative to the directory.
    pub model: String,
    /// The type table, relative to the directory.
    pub types: String,
    /// The model's inputs, in order: must be [`features::NAMES`].
    pub features: Vec<String>,
    /// A record fails when its probability is at or over this.
    pub threshold: f32,
    /// Everything else training wrote (held-out scores, parameters, provenance).
    #[serde(flatten)]
    pub report: serde_json::Map<String, serde_json::Value>,
}

/// A loaded machines model: the trees, the threshold, and where the type table is.
#[derive(Clone, Debug)]
pub struct MachinesModel {
    /// The classifier.
    pub booster: Arc<xgb::Booster>,
    /// The model directory's description.
    pub meta: MachinesMeta,
    /// The type table's file.
    pub types_path: PathBuf,
}

/// The probability and verdict on one record.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Probability of a machine failure.
    pub probability: f32,
    /// Whether it is at or over the threshold.
    pub failure: bool,
}

impl MachinesModel {
    /// Loads the model in `dir` (see the module docs).
    pub fn load(dir: &Path) -> anyhow::Result<MachinesModel> {
        let meta_path = dir.join("machines.json");
        let text = std::fs::read_to_string(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let meta: MachinesMeta = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a machines model", meta_path.display()))?;
        ensure!(
            meta.format == 1,
            "{}: format {}",
            meta_path.display(),
            meta.format
        );
        ensure!(
            meta.features == features::NAMES,
            "{}: features {:?}, this engine computes {:?}",
            meta_path.display(),
            meta.features,
            features::NAMES
        );
        let model_path = dir.join(&meta.model);
        let json = std::fs::read_to_string(&model_path)
            .with_context(|| format!("reading {}", model_path.display()))?;
        let booster = xgb::Booster::from_json(&json)
            .with_context(|| format!("{}: not a usable XGBoost model", model_path.display()))?;
        ensure!(
            booster.n_features() == features::NAMES.len(),
            "{}: {} inputs, expected {}",
            model_path.display(),
            booster.n_features(),
            features::NAMES.len()
        );
        Ok(MachinesModel {
            booster: Arc::new(booster),
            types_path: dir.join(&meta.types),
            meta,
        })
    }

    /// The type table of this model, followed while the run goes on.
    pub fn table(&self) -> anyhow::Result<LiveTable> {
        LiveTable::open(&self.types_path)
    }

    /// The verdict on a record of a type encoded as `type_encoded`, at `threshold`.
    pub fn verdict(&self, type_encoded: f64, sensors: &Sensors, threshold: f32) -> Verdict {
        let x = features::features(type_encoded, sensors).map(|f| f as f32);
        let probability = self.booster.probability(&x);
        Verdict {
            probability,
            failure: probability >= threshold,
        }
    }

    /// The verdict on a record with type `code` against `table`; `None` when the table
    /// has no such type.
    pub fn verdict_with(
        &self,
        table: &LiveTable,
        code: TypeCode,
        sensors: &Sensors,
        threshold: f32,
    ) -> Option<(f64, Verdict)> {
        let (_, rows) = table.current();
        let enc = *rows.get(&code)?;
        Some((enc, self.verdict(enc, sensors, threshold)))
    }
}

/// The field names of a machine record's frame (see [`record`]).
pub const FRAME_FIELDS: [&str; 6] = [
    "type_code",
    "Air temperature [K]",
    "Process temperature [K]",
    "Rotational speed [rpm]",
    "Torque [Nm]",
    "Tool wear [min]",
];

/// What the runtime holds as "the model" of a `machines` run: the machines model in
/// `dir` checked loadable, described as a model whose features are the fields of a
/// record's frame ([`FRAME_FIELDS`]) and whose threshold is the classifier's. It has no
/// one-class SVM (zero weights, never used: only `--dataflow machines` makes it, and that
/// variant scores with the trees); its `training.model_dir` tells the variant where the
/// trees are.
pub fn frame_model(dir: &Path) -> anyhow::Result<Model> {
    let machines = MachinesModel::load(dir)?;
    Ok(Model::descriptive(
        FeatureNames::List(FRAME_FIELDS.iter().map(|s| s.to_string()).collect()),
        FRAME_FIELDS.len(),
        "machine failure probability of the XGBoost model in training.model_dir".into(),
        machines.meta.threshold,
        serde_json::json!({ "model_dir": dir }),
    ))
}

/// The machines model directory a [`frame_model`] names.
pub fn model_dir(model: &Model) -> anyhow::Result<PathBuf> {
    model.meta.training["model_dir"]
        .as_str()
        .map(PathBuf::from)
        .context("the machines variant needs a machines model (models/machines)")
}
