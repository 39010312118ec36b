//! Feature-wise one-class SVM models: parameters, metadata, loading and saving.
//!
//! A model lives in a directory `models/<name>/` as `model.safetensors` (the tensors, f32,
//! little-endian) and `model.json` ([`ModelMeta`]). Every feature has its own OCSVM over a
//! window of its last W values; the anomaly score of feature f is `-(w_f · φ(x_f) + b_f)`,
//! positive outside the learned region, optionally calibrated per feature
//! ([`Calibration`]) so that one global threshold means one false-alarm rate.

pub mod entities;
mod names;
mod scorer;
pub mod trig;

pub use names::{FeatureIndex, FeatureNames};
pub use scorer::{Folded, Scorer, FOLDED_BLOCK};

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

/// Writes `value` as JSON to `dir/file`, creating `dir`: the per-entity model files
/// (`pca.json`, `forecast.json`).
pub(crate) fn write_json<T: Serialize>(
    dir: &std::path::Path,
    file: &str,
    value: &T,
) -> Result<(), ModelError> {
    let path = dir.join(file);
    let io = |source| ModelError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let text = serde_json::to_string(value).expect("a model serialises");
    std::fs::write(&path, text).map_err(io)
}

/// Reads the JSON model `dir/file`, an error naming the file when it cannot be read or
/// is not a `what`; the caller checks what it read.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    dir: &std::path::Path,
    file: &str,
    what: &str,
) -> Result<T, ModelError> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
        path,
        problem: format!("not a {what}: {e}"),
    })
}

/// Why a model could not be loaded or saved; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read or written.
    #[error("model file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but its content is wrong.
    #[error("model file {path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },
}

/// The two model kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Seed 001's linear OCSVM on the raw window: `φ(x) = x`. Flags departures in the
    /// one direction its weights point to.
    Linear,
    /// RBF-kernel OCSVM through D random Fourier features of the standardised window:
    /// `φ(x) = sqrt(2/D) cos(Ω z + φ0)`, `z = (x - mean) / std`. Flags departures in
    /// both directions.
    Rff,
}

/// Random Fourier feature settings of an `rff` model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RffMeta {
    /// Number of random features D.
    pub components: usize,
    /// RBF kernel width: `k(x, y) = exp(-gamma |z_x - z_y|^2)`.
    pub gamma: f64,
    /// Seed that drew Ω and the phases.
    pub seed: u64,
}

/// How the per-feature calibration was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationMeta {
    /// The method, in words.
    pub method: String,
    /// The false-alarm rate per (frame, feature) the model's `threshold` was chosen for.
    pub target_false_alarm_rate: f64,
    /// Number of held-out normal windows per feature used.
    pub heldout_windows: usize,
}

/// Where a model came from: enough to make it again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The training data, in words or as a path.
    pub data: String,
    /// The random seed of training (and of generated data).
    pub seed: Option<u64>,
    /// The command that reproduces the model, from a clean checkout.
    pub command: String,
}

/// `model.json`: everything about a model except its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Format version of this file; 1.
    pub format: u32,
    /// The model kind.
    pub kind: ModelKind,
    /// Window length W the model scores.
    pub window: usize,
    /// Number of features F.
    pub n_features: usize,
    /// How input keys map to features.
    #[serde(default)]
    pub features: FeatureNames,
    /// The OCSVM's ν: the upper bound on the fraction of training windows outside.
    pub nu: f64,
    /// What the score means, in words.
    pub score: String,
    /// The default threshold: a feature with score >= threshold is anomalous.
    pub threshold: f32,
    /// Random-feature settings (`rff` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rff: Option<RffMeta>,
    /// How the calibration tensors were made, if the model has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationMeta>,
    /// Training settings (learning rate, epochs, ...), as given.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Where the model came from.
    #[serde(default)]
    pub provenance: Provenance,
}

/// Parameters of the feature-wise map φ and the per-feature hyperplanes.
#[derive(Clone, Debug, PartialEq)]
pub enum Params {
    /// `score_f = -(Σ_k weight[f][k] x[k] + bias[f])`.
    Linear {
        /// `[F][W]`, row-major.
        weight: Vec<f32>,
        /// `[F]`.
        bias: Vec<f32>,
    },
    /// `score_f = -(Σ_d weight[f][d] sqrt(2/D) cos(Σ_k omega[d][k] z[k] + phase[d]) + bias[f])`.
    Rff {
        /// Per-feature mean used to standardise, `[F]`.
        mean: Vec<f32>,
        /// Per-feature 1/std used to standardise, `[F]`.
        inv_std: Vec<f32>,
        /// Random frequencies shared by all features, `[D][W]`.
        omega: Vec<f32>,
        /// Random phases, `[D]`.
        phase: Vec<f32>,
        /// `[F][D]`, row-major.
        weight: Vec<f32>,
        /// `[F]`.
        bias: Vec<f32>,
    },
}

/// Per-feature affine map of raw scores: `calibrated = (raw - offset[f]) * scale[f]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// `[F]`.
    pub offset: Vec<f32>,
    /// `[F]`, positive.
    pub scale: Vec<f32>,
}

/// A loaded, validated model.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// `model.json`.
    pub meta: ModelMeta,
    /// The tensors.
    pub params: Params,
    /// Optional per-feature calibration.
    pub calibration: Option<Calibration>,
}

/// File names inside a model directory.
pub const TENSORS_FILE: &str = "model.safetensors";
/// See [`TENSORS_FILE`].
pub const META_FILE: &str = "model.json";

impl Model {
    /// A model that only describes the frames (`n_features` values named by `features`)
    /// and holds no one-class SVM (zero weights, never used): what the runtime holds for
    /// a variant that scores with something of its own (the machines variant's trees, the
    /// rules variant's rule file), which `training` names for it.
    pub fn descriptive(
        features: FeatureNames,
        n_features: usize,
        score: String,
        threshold: f32,
        training: serde_json::Value,
    ) -> Model {
        Model {
            meta: ModelMeta {
                format: 1,
                kind: ModelKind::Linear,
                window: 1,
                n_features,
                features,
                nu: 0.0,
                score,
                threshold,
                rff: None,
                calibration: None,
                training,
                provenance: Provenance::default(),
            },
            params: Params::Linear {
                weight: vec![0.0; n_features],
                bias: vec![0.0; n_features],
            },
            calibration: None,
        }
    }

    /// Window length W.
    pub fn window(&self) -> usize {
        self.meta.window
    }

    /// Number of features F.
    pub fn n_features(&self) -> usize {
        self.meta.n_features
    }

    /// The name index for decoding frames.
    pub fn feature_index(&self) -> FeatureIndex {
        FeatureIndex::new(&self.meta.features, self.meta.n_features).expect("validated at load")
    }

    /// Resolves a model name or path: a directory that exists is used as is, otherwise
    /// `models/<name>` under the current directory and then under the crate's own
    /// `models/` (so the shipped models work from any directory in a checkout).
    pub fn resolve(name_or_path: &str) -> PathBuf {
        let direct = PathBuf::from(name_or_path);
        if direct.is_dir() {
            return direct;
        }
        let local = Path::new("models").join(name_or_path);
        if local.is_dir() {
            return local;
        }
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name_or_path);
        if shipped.is_dir() {
            return shipped;
        }
        direct
    }

    /// Loads and validates the model in directory `dir`; of a directory of per-entity
    /// models ([`entities`]) with no model of its own, its `default/` model.
    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        let default = dir.join(entities::DEFAULT_ENTITY);
        if !dir.join(META_FILE).exists() && default.join(META_FILE).exists() {
            return Model::load(&default);
        }
        let meta_path = dir.join(META_FILE);
        let tensors_path = dir.join(TENSORS_FILE);
        let meta_text = std::fs::read_to_string(&meta_path).map_err(|source| ModelError::Io {
            path: meta_path.clone(),
            source,
        })?;
        let invalid_meta = |problem: String| ModelError::Invalid {
            path: meta_path.clone(),
            problem,
        };
        let meta: ModelMeta = serde_json::from_str(&meta_text)
            .map_err(|e| invalid_meta(format!("not a valid model description: {e}")))?;
        meta.validate().map_err(invalid_meta)?;

        let bytes = std::fs::read(&tensors_path).map_err(|source| ModelError::Io {
            path: tensors_path.clone(),
            source,
        })?;
        let invalid = |problem: String| ModelError::Invalid {
            path: tensors_path.clone(),
            problem,
        };
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
        let mut reader = TensorReader { st: &st };
        let (f, w) = (meta.n_features, meta.window);
        let params = match meta.kind {
            ModelKind::Linear => Params::Linear {
                weight: reader.get("weight", &[f, w]).map_err(invalid)?,
                bias: reader.get("bias", &[f]).map_err(invalid)?,
            },
            ModelKind::Rff => {
                let d = meta.rff.as_ref().map(|r| r.components).unwrap_or(0);
                let inv_std = reader.get("inv_std", &[f]).map_err(invalid)?;
                if let Some(i) = inv_std.iter().position(|&s| s <= 0.0) {
                    return Err(invalid(format!(
                        "tensor inv_std: value {} at feature {i} is not positive",
                        inv_std[i]
                    )));
                }
                Params::Rff {
                    mean: reader.get("mean", &[f]).map_err(invalid)?,
                    inv_std,
                    omega: reader.get("omega", &[d, w]).map_err(invalid)?,
                    phase: reader.get("phase", &[d]).map_err(invalid)?,
                    weight: reader.get("weight", &[f, d]).map_err(invalid)?,
                    bias: reader.get("bias", &[f]).map_err(invalid)?,
                }
            }
        };
        let names = st.names();
        let has_calibration = names.contains(&"calib_offset") || names.contains(&"calib_scale");
        if has_calibration != meta.calibration.is_some() {
            let problem = if has_calibration {
                "has calibration tensors but model.json describes no calibration"
            } else {
                "has no calib_offset/calib_scale tensors but model.json describes a calibration"
            };
            return Err(invalid(problem.to_string()));
        }
        let calibration = if has_calibration {
            let scale = reader.get("calib_scale", &[f]).map_err(invalid)?;
            if let Some(i) = scale.iter().position(|&s| s <= 0.0) {
                return Err(invalid(format!(
                    "tensor calib_scale: value {} at feature {i} is not positive",
                    scale[i]
                )));
            }
            Some(Calibration {
                offset: reader.get("calib_offset", &[f]).map_err(invalid)?,
                scale,
            })
        } else {
            None
        };
        Ok(Model {
            meta,
            params,
            calibration,
        })
    }

    /// Writes the model to directory `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let (f, w) = (self.meta.n_features, self.meta.window);
        let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = Vec::new();
        match &self.params {
            Params::Linear { weight, bias } => {
                tensors.push(("weight", vec![f, w], weight));
                tensors.push(("bias", vec![f], bias));
            }
            Params::Rff {
                mean,
                inv_std,
                omega,
                phase,
                weight,
                bias,
            } => {
                let d = phase.len();
                tensors.push(("mean", vec![f], mean));
                tensors.push(("inv_std", vec![f], inv_std));
                tensors.push(("omega", vec![d, w], omega));
                tensors.push(("phase", vec![d], phase));
                tensors.push(("weight", vec![f, d], weight));
                tensors.push(("bias", vec![f], bias));
            }
        }
        if let Some(c) = &self.calibration {
            tensors.push(("calib_offset", vec![f], &c.offset));
            tensors.push(("calib_scale", vec![f], &c.scale));
        }
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(name, shape, data)| {
                let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.to_string(), shape, raw)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = bytes
            .iter()
            .map(|(name, shape, raw)| {
                let view = TensorView::new(Dtype::F32, shape.clone(), raw)
                    .expect("shape matches data length");
                (name.clone(), view)
            })
            .collect();
        let tensors_path = dir.join(TENSORS_FILE);
        let data = safetensors::serialize(views, None).map_err(|e| ModelError::Invalid {
            path: tensors_path.clone(),
            problem: e.to_string(),
        })?;
        std::fs::write(&tensors_path, data).map_err(|source| ModelError::Io {
            path: tensors_path,
            source,
        })?;
        let meta_path = dir.join(META_FILE);
        let json = serde_json::to_string_pretty(&self.meta).expect("metadata serialises");
        std::fs::write(&meta_path, json + "\n").map_err(|source| ModelError::Io {
            path: meta_path,
            source,
        })
    }
}

impl ModelMeta {
    fn validate(&self) -> Result<(), String> {
        if self.format != 1 {
            return Err(format!(
                "format {} is not supported (expected 1)",
                self.format
            ));
        }
        if self.window == 0 {
            return Err("window must be at least 1".into());
        }
        if self.n_features == 0 {
            return Err("n_features must be at least 1".into());
        }
        if !self.threshold.is_finite() {
            return Err(format!("threshold {} is not finite", self.threshold));
        }
        match (self.kind, &self.rff) {
            (ModelKind::Rff, None) => return Err("kind rff needs an \"rff\" section".into()),
            (ModelKind::Rff, Some(r)) if r.components == 0 => {
                return Err("rff.components must be at least 1".into())
            }
            _ => {}
        }
        FeatureIndex::new(&self.features, self.n_features)?;
        Ok(())
    }
}

struct TensorReader<'a, 'b> {
    st: &'a SafeTensors<'b>,
}

impl TensorReader<'_, '_> {
    /// Reads tensor `name` as f32 with exactly `shape`, every value finite.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| format!("tensor {name} is missing"))?;
        if t.dtype() != Dtype::F32 {
            return Err(format!(
                "tensor {name} has dtype {:?}, expected F32",
                t.dtype()
            ));
        }
        if t.shape() != shape {
            return Err(format!(
                "tensor {name} has shape {:?}, expected {:?}",
                t.shape(),
                shape
            ));
        }
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "tensor {name} has a non-finite value ({}) at flat index {i}",
                values[i]
            ));
        }
        Ok(values)
    }
}
