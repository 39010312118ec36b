//! Dataflow variants: each file is one whole pipeline, built from the operators in
//! [`crate::ops`] and a detector from [`crate::detect`] through the per-worker
//! [`Env`](crate::runtime::Env), reading its own parameters with
//! [`Env::param`](crate::runtime::Env::param).
//!
//! To add a variant: write `dataflows/<name>.rs` with `pub const NAME` and `pub fn build`
//! (copy `default.rs` and change the chain or the detector), then add its module to
//! `variants!` below. The golden tests (`tests/variants.rs`) then run it too.

use std::collections::BTreeMap;

use anyhow::bail;

use crate::detect::Device;
use crate::ops::Pacing;
use crate::runtime::Settings;
pub use crate::runtime::{Build, Pipeline};

macro_rules! variants {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Names of every variant, in registration order.
        pub const NAMES: &[&str] = &[$($module::NAME),*];

        /// The build function of the variant called `name`.
        pub fn lookup(name: &str) -> anyhow::Result<Build> {
            $(if name == $module::NAME { return Ok($module::build); })*
            bail!("no dataflow variant named {name:?} (known: {})", NAMES.join(", "))
        }
    };
}

variants! { default, ewma, telemetry, machines, rules }

/// Variants that run on keyed data with a model directory of their own (per-entity
/// models of `tidewatch train --data DIR`, a rule file) and not on the generator's frames:
/// their golden tests are in `tests/entities.rs` and `tests/rules.rs`.
pub const PER_ENTITY: &[&str] = &[telemetry::NAME, rules::NAME];

/// The model a run of variant `name` holds, from directory `dir`: the `machines`
/// variant's is its record layout and classifier (see [`crate::machines::frame_model`]),
/// the `rules` variant's its rule file ([`crate::rules::frame_model`]), every other
/// variant's a one-class SVM model ([`Model::load`]).
pub fn load_model(name: &str, dir: &std::path::Path) -> anyhow::Result<crate::model::Model> {
    if name == machines::NAME {
        return crate::machines::frame_model(dir);
    }
    if name == rules::NAME {
        return crate::rules::frame_model(dir);
    }
    Ok(crate::model::Model::load(dir)?)
}

/// Whether variant `name` reads files its own way (`machines`: records, see
/// [`record_file`]) rather than as frames ([`crate::sources::file`]).
pub fn reads_records(name: &str) -> bool {
    name == machines::NAME
}

/// What a body (an HTTP request, a Kafka message) holds for variant `name`: a machine
/// record for `machines`, a frame for every other.
pub fn body_kind(name: &str) -> crate::sources::BodyKind {
    if reads_records(name) {
        crate::sources::BodyKind::MachineRecord
    } else {
        crate::sources::BodyKind::Frame
    }
}

/// The records in `path`, as the `machines` variant reads them.
pub fn record_file(path: &std::path::Path) -> anyhow::Result<Box<dyn crate::sources::FrameSource>> {
    Ok(Box::new(crate::machines::source::RecordFile::open(path)?))
}

/// The variant run when none is named.
pub const DEFAULT: &str = default::NAME;

/// Seed 001's pipeline, [`DEFAULT`], with no parameters.
pub fn default_pipeline() -> Pipeline {
    Pipeline::new(DEFAULT, default::build)
}

/// Seed 001's settings (batches of 64, the model's threshold, unpaced, device `auto`)
/// running the [`DEFAULT`] variant. Here rather than beside `Settings`, so that the
/// runtime names no variant.
impl Default for Settings {
    fn default() -> Self {
        Settings {
            pipeline: default_pipeline(),
            batch_size: 64,
            threshold: None,
            window: None,
            stride: None,
            max_alert_features: crate::sinks::alert::DEFAULT_MAX_FEATURES,
            pacing: Pacing::Unpaced,
            stats: None,
            metrics_interval: None,
            device: Device::Auto,
            incidents: None,
            controls: None,
        }
    }
}

/// The variant called `name`, to be run with `params` (`key=value`, each key once).
pub fn pipeline(name: &str, params: &[(String, String)]) -> anyhow::Result<Pipeline> {
    let mut map = BTreeMap::new();
    for (k, v) in params {
        if map.insert(k.clone(), v.clone()).is_some() {
            bail!("--param {k} is given twice");
        }
    }
    Ok(Pipeline::new(name, lookup(name)?).with_params(map))
}

/// The pipeline flags `serve`, `replay` and `bench` share: which variant, its windows,
/// its threshold and its own parameters.
#[derive(clap::Args, Clone, Debug)]
pub struct PipelineArgs {
    /// Dataflow variant (see `dataflows/`): default (the model's one-class SVM), ewma
    /// (per-feature EWMA z-scores, no trained weights), telemetry (per-entity PCA
    /// models, windows 30/10; needs a directory of per-entity models), machines (seed
    /// 002's machine records and XGBoost classifier, with `--model machines`) or rules
    /// (seed 004's statistics and thresholds of a rule file, windows 30/6, with `--model
    /// rules`).
    #[arg(long, default_value = DEFAULT)]
    pub dataflow: String,
    /// Frames per window; default: the detector's (a model's detector scores the model's
    /// window length and refuses any other).
    #[arg(long)]
    pub window: Option<usize>,
    /// Frames between windows; default: the variant's.
    #[arg(long)]
    pub stride: Option<usize>,
    /// Anomaly threshold on (calibrated) scores; default: the model's (or the variant's).
    #[arg(long, env = "THRESHOLD", allow_negative_numbers = true)]
    pub threshold: Option<f32>,
    /// A parameter of the variant, `KEY=VALUE`; repeat for several (e.g. `--param
    /// alpha=0.1 --param z=5` for ewma). A key the variant does not read is an error.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
}

impl Default for PipelineArgs {
    fn default() -> Self {
        PipelineArgs {
            dataflow: DEFAULT.to_string(),
            window: None,
            stride: None,
            threshold: None,
            params: Vec::new(),
        }
    }
}

impl PipelineArgs {
    /// The pipeline these flags name (its parameters are checked when it is built, by
    /// [`crate::runtime::check`]).
    pub fn pipeline(&self) -> anyhow::Result<Pipeline> {
        if self.window == Some(0) {
            bail!("--window must be at least 1");
        }
        if self.stride == Some(0) {
            bail!("--stride must be at least 1");
        }
        pipeline(&self.dataflow, &self.params)
    }
}

/// `KEY=VALUE` → `(KEY, VALUE)`.
fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, not {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names resolve to variants; an unknown one says which exist; a key given twice is
    /// refused.
    #[test]
    fn pipelines_by_name() {
        for name in NAMES {
            assert_eq!(pipeline(name, &[]).unwrap().name, *name);
        }
        let err = pipeline("nope", &[]).unwrap_err().to_string();
        assert!(err.contains("default") && err.contains("ewma"), "{err}");
        let twice = [
            ("z".to_string(), "1".to_string()),
            ("z".to_string(), "2".to_string()),
        ];
        assert!(pipeline("ewma", &twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert_eq!(
            parse_param("alpha = 0.1"),
            Ok(("alpha".into(), "0.1".into()))
        );
        assert!(parse_param("alpha").is_err() && parse_param("=1").is_err());
    }
}
