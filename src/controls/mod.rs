//! What an operator may change while a pipeline runs: the model, the threshold and the
//! muted features ([`Controls`]). `serve`'s admin routes and SIGHUP ask for a [`Change`];
//! it becomes a message in the dataflow, stamped with the frame from which it applies,
//! that reaches every worker of every process ([`relay`], [`crate::ops::control`]).
//!
//! The score and threshold operators hold a frame until every change that could apply to
//! it has arrived (the control stream's frontier has passed it), then score and cut it
//! wholly with the settings in force from that frame on: every frame is scored by one
//! version, whatever `-w`/`-n`, and no frame or window is lost or scored twice. Windows
//! are cut upstream of the scorer, so a new model scores the windows already filled.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::model::Model;

pub mod relay;

pub use relay::{Msg, Relay};

/// The settings in force, as one immutable value: a change makes a new one.
#[derive(Clone, Debug, Serialize)]
pub struct Knobs {
    /// Bumped by every change (0 at start).
    pub version: u64,
    /// The model scoring now.
    #[serde(skip)]
    pub model: Arc<Model>,
    /// Bumped by every model swap (0: the model loaded at start).
    pub model_version: u64,
    /// Where the model was loaded from, if from a directory.
    pub model_path: Option<PathBuf>,
    /// When the model was last swapped (Unix ms), `None` before any swap.
    pub reloaded_at_ms: Option<i64>,
    /// The threshold override; `None`: the model's (or the variant's) own.
    pub threshold: Option<f32>,
    /// Features that never alert, ascending.
    pub muted: Arc<Vec<u32>>,
    /// When anything last changed (Unix ms), `None` before any change.
    pub changed_at_ms: Option<i64>,
}

impl Knobs {
    /// The threshold in force for a variant whose own threshold is `fallback`
    /// (`None`: the model's).
    pub fn threshold_or(&self, fallback: Option<f32>) -> f32 {
        self.threshold
            .or(fallback)
            .unwrap_or(self.model.meta.threshold)
    }

    /// Whether `feature` is muted.
    pub fn is_muted(&self, feature: u32) -> bool {
        self.muted.binary_search(&feature).is_ok()
    }

    /// The settings after `change`, the next version; `model` is the model a
    /// [`Change::Model`] loaded (on this process).
    ///
    /// # Panics
    /// On a model change without its model: every process loads (and agrees on) a model
    /// before the change is committed, so this is a bug.
    pub fn after(&self, change: &Change, model: Option<Arc<Model>>) -> Knobs {
        let mut next = self.clone();
        let now = crate::clock::unix_ms();
        match change {
            Change::Model { path } => {
                next.model = model.expect("a committed model change has its model loaded");
                next.model_path = Some(path.clone());
                next.model_version += 1;
                next.reloaded_at_ms = Some(now);
            }
            Change::Threshold(t) => next.threshold = *t,
            Change::Mutes(features) => {
                let set: BTreeSet<u32> = features.iter().copied().collect();
                next.muted = Arc::new(set.into_iter().collect());
            }
        }
        next.version += 1;
        next.changed_at_ms = Some(now);
        next
    }
}

/// One change an operator asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Load the model in this directory (on every process) and score with it.
    Model {
        /// The model directory, readable at the same path on every process.
        path: PathBuf,
    },
    /// Set (or, with `None`, clear) the threshold override.
    Threshold(Option<f32>),
    /// Mute exactly these features (none: unmute all).
    Mutes(Vec<u32>),
}

/// Why a change cannot be made: a model that does not load, or cannot replace the one
/// scoring (frames are decoded, split and windowed for the old one's features and window
/// length, which must stay the same), a feature that does not exist, a threshold that is
/// not a number.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

/// The settings of a run on one process: the version in force (for `/health/ready` and
/// the dashboard), and the [`Relay`] that carries changes to every worker.
#[derive(Debug)]
pub struct Controls {
    current: RwLock<Arc<Knobs>>,
    relay: Relay,
    /// The variant running, when it does not follow changes made while it runs (it reads
    /// its frames with `Env::frames`, not `Env::controlled_frames`): every change is then
    /// refused, rather than accepted and silently ignored.
    unfollowed: RwLock<Option<String>>,
}

/// Where a process sits in its cluster, for the [`Relay`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads per process.
    pub threads: usize,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            process: 0,
            processes: 1,
            threads: 1,
        }
    }
}

impl Controls {
    /// Controls starting from `model` (loaded from `path`, if any) and a threshold
    /// override, for process `shape.process` of a cluster.
    pub fn new(
        model: Arc<Model>,
        path: Option<PathBuf>,
        threshold: Option<f32>,
        shape: Shape,
    ) -> Controls {
        Controls {
            current: RwLock::new(Arc::new(Knobs {
                version: 0,
                model,
                model_version: 0,
                model_path: path,
                reloaded_at_ms: None,
                threshold,
                muted: Arc::default(),
                changed_at_ms: None,
            })),
            relay: Relay::new(shape),
            unfollowed: RwLock::new(None),
        }
    }

    /// Says that the running variant, `variant`, does not follow changes made while it
    /// runs: from now on every change is refused ([`Controls::validate`]).
    pub fn not_followed_by(&self, variant: &str) {
        *self.unfollowed.write().unwrap_or_else(|e| e.into_inner()) = Some(variant.to_string());
    }

    /// Why no change can be made while this run goes on, if none can: its variant does
    /// not follow them.
    pub fn fixed(&self) -> Option<Mismatch> {
        let variant = self.unfollowed.read().unwrap_or_else(|e| e.into_inner());
        variant.as_ref().map(|v| {
            Mismatch(format!(
                "variant {v:?} does not follow changes made while it runs (it keeps the settings it started with); restart it with the new --model or --threshold"
            ))
        })
    }

    /// The settings in force on this process.
    pub fn current(&self) -> Arc<Knobs> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Publishes `knobs` as the settings in force on this process.
    fn publish(&self, knobs: Arc<Knobs>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = knobs;
    }

    /// The messages between this process's workers and the other processes'.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Checks `change` against the settings in force, loading the model of a
    /// [`Change::Model`] (which blocks for as long as loading takes): the model, if any,
    /// or why the change cannot be made.
    pub fn validate(&self, change: &Change) -> Result<Option<Arc<Model>>, Mismatch> {
        if let Some(why) = self.fixed() {
            return Err(why);
        }
        let current = self.current();
        match change {
            Change::Model { path } => {
                let model = Model::load(path)
                    .map_err(|e| Mismatch(format!("loading model {}: {e}", path.display())))?;
                fits(&current.model, &model)?;
                Ok(Some(Arc::new(model)))
            }
            Change::Threshold(Some(t)) if !t.is_finite() => Err(Mismatch(
                "the threshold must be a finite number (or null)".into(),
            )),
            Change::Threshold(_) => Ok(None),
            Change::Mutes(features) => {
                let n = current.model.n_features();
                match features.iter().find(|&&f| f as usize >= n) {
                    Some(f) => Err(Mismatch(format!(
                        "feature {f} does not exist (the model has {n})"
                    ))),
                    None => Ok(None),
                }
            }
        }
    }

    /// Checks `change` on this process ([`Controls::validate`], which blocks while a model
    /// loads), then asks for it everywhere ([`Controls::request`]): the answer to wait for,
    /// or why this process refuses it.
    pub fn make(&self, change: Change) -> Result<relay::Answer, Mismatch> {
        let model = self.validate(&change)?;
        Ok(self.request(change, model))
    }

    /// Asks for `change`, already validated on this process (`model`: the model
    /// [`Controls::validate`] loaded): the answer comes once every worker of every process
    /// has it in force from one frame on, or once a process refused it.
    pub fn request(&self, change: Change, model: Option<Arc<Model>>) -> relay::Answer {
        self.relay.request(change, model)
    }
}
/// Whether `new` can replace `old` in a running pipeline.
fn fits(old: &Model, new: &Model) -> Result<(), Mismatch> {
    fits_layout(old, new).map_err(|Mismatch(why)| {
        Mismatch(format!(
            "the new model does not fit the running pipeline: {why}"
        ))
    })
}

fn fits_layout(old: &Model, new: &Model) -> Result<(), Mismatch> {
    if new.n_features() != old.n_features() {
        return Err(Mismatch(format!(
            "it has {} features, the running model {}",
            new.n_features(),
            old.n_features()
        )));
    }
    if new.meta.features != old.meta.features {
        return Err(Mismatch(
            "its feature names differ from the running model's".into(),
        ));
    }
    if new.window() != old.window() {
        return Err(Mismatch(format!(
            "its window is {} frames, the running model's {}",
            new.window(),
            old.window()
        )));
    }
    Ok(())
}

/// A model for unit tests here and in the operators that read [`Controls`].
#[cfg(test)]
pub(crate) mod test_model {
    use crate::model::{FeatureNames, Model, ModelKind, ModelMeta, Params, Provenance};

    /// A linear model of `f` features over windows of `w`, all weights zero.
    pub(crate) fn tiny(f: usize, w: usize) -> Model {
        Model {
            meta: ModelMeta {
                format: 1,
                kind: ModelKind::Linear,
                window: w,
                n_features: f,
                features: FeatureNames::default(),
                nu: 0.1,
                score: String::new(),
                threshold: 0.5,
                rff: None,
                calibration: None,
                training: serde_json::Value::Null,
                provenance: Provenance::default(),
            },
            params: Params::Linear {
                weight: vec![0.0; f * w],
                bias: vec![0.0; f],
            },
            calibration: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_model::tiny;
    use super::*;

    /// A model with the running one's layout is accepted; one with other features or
    /// another window, a feature that does not exist or a threshold that is not a
    /// number are refused; each change makes the next version, and mutes are kept sorted.
    #[test]
    fn changes_are_checked_and_make_the_next_version() {
        let dir = tempfile::tempdir().unwrap();
        let controls = Controls::new(Arc::new(tiny(4, 2)), None, None, Shape::default());
        let model = |name: &str, m: Model| {
            let path = dir.path().join(name);
            m.save(&path).unwrap();
            Change::Model { path }
        };
        let err = controls.validate(&model("wide", tiny(5, 2))).unwrap_err();
        assert!(err.to_string().contains("5 features"), "{err}");
        let err = controls.validate(&model("long", tiny(4, 3))).unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
        let missing = Change::Model {
            path: dir.path().join("missing"),
        };
        assert!(controls.validate(&missing).is_err());
        assert!(controls.validate(&Change::Mutes(vec![4])).is_err());
        assert!(controls
            .validate(&Change::Threshold(Some(f32::NAN)))
            .is_err());

        let swap = model("same", tiny(4, 2));
        let loaded = controls.validate(&swap).unwrap();
        let k0 = controls.current();
        let k1 = k0.after(&swap, loaded);
        assert_eq!((k1.model_version, k1.version), (1, 1));
        assert!(k1.reloaded_at_ms.is_some());
        let k2 = k1.after(&Change::Threshold(Some(2.5)), None);
        assert_eq!((k2.threshold_or(None), k2.version), (2.5, 2));
        let k3 = k2.after(&Change::Mutes(vec![3, 1, 3]), None);
        assert_eq!(*k3.muted, vec![1, 3]);
        assert!(k3.is_muted(3) && !k3.is_muted(2));
        assert_eq!(k3.model_version, 1);
    }
}
