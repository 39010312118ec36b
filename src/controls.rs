//! What an operator may change while a pipeline runs: the model, the threshold and the
//! muted features ([`Controls`]). `serve`'s admin routes and SIGHUP write them; the score
//! and threshold operators read them once per batch through a [`Watch`], which costs one
//! atomic load while nothing changes, so scoring takes no lock per frame or per batch.
//!
//! A change takes effect between batches: windows are cut upstream of the scorer, so a
//! new model scores the very next batch of the windows already filled, and no frame or
//! window is lost or scored twice.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::model::Model;

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
}

/// Why a model cannot replace the one scoring: frames are decoded, split and windowed
/// for the old one's features and window length, which must stay the same.
#[derive(Debug, thiserror::Error)]
#[error("the new model does not fit the running pipeline: {0}")]
pub struct Mismatch(pub String);

/// The shared, versioned settings of a run (see the module's docs).
#[derive(Debug)]
pub struct Controls {
    version: AtomicU64,
    current: RwLock<Arc<Knobs>>,
}

impl Controls {
    /// Controls starting from `model` (loaded from `path`, if any) and a threshold
    /// override.
    pub fn new(model: Arc<Model>, path: Option<PathBuf>, threshold: Option<f32>) -> Controls {
        Controls {
            version: AtomicU64::new(0),
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
        }
    }

    /// The version in force: one atomic load.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<Knobs> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies `change` to a copy of the settings and publishes it as the next version.
    fn update(&self, change: impl FnOnce(&mut Knobs)) -> Arc<Knobs> {
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Knobs::clone(&slot);
        change(&mut next);
        next.version += 1;
        next.changed_at_ms = Some(crate::clock::unix_ms());
        let next = Arc::new(next);
        *slot = Arc::clone(&next);
        // Published after the new value is in place, so a reader that sees the version
        // reads the value.
        self.version.store(next.version, Ordering::Release);
        next
    }

    /// Replaces the model with `model` (from `path`) if it has the same features, in the
    /// same order, and the same window length; otherwise the old one keeps scoring.
    pub fn swap_model(
        &self,
        model: Arc<Model>,
        path: Option<PathBuf>,
    ) -> Result<Arc<Knobs>, Mismatch> {
        let old = self.current();
        fits(&old.model, &model)?;
        Ok(self.update(|k| {
            k.model = model;
            k.model_path = path;
            k.model_version += 1;
            k.reloaded_at_ms = Some(crate::clock::unix_ms());
        }))
    }

    /// Sets (or, with `None`, clears) the threshold override.
    pub fn set_threshold(&self, threshold: Option<f32>) -> Arc<Knobs> {
        self.update(|k| k.threshold = threshold)
    }

    /// Mutes exactly `features` (an empty list unmutes all); each must be a feature of the
    /// model.
    pub fn set_muted(&self, features: &[u32]) -> Result<Arc<Knobs>, Mismatch> {
        let n = self.current().model.n_features();
        if let Some(f) = features.iter().find(|&&f| f as usize >= n) {
            return Err(Mismatch(format!(
                "feature {f} does not exist (the model has {n})"
            )));
        }
        let set: BTreeSet<u32> = features.iter().copied().collect();
        Ok(self.update(|k| k.muted = Arc::new(set.into_iter().collect())))
    }
}

/// Whether `new` can replace `old` in a running pipeline.
fn fits(old: &Model, new: &Model) -> Result<(), Mismatch> {
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

/// One reader's view of [`Controls`]: re-reads the settings only when their version
/// moved, so that checking once per batch costs one atomic load.
#[derive(Clone, Debug)]
pub struct Watch {
    controls: Arc<Controls>,
    knobs: Arc<Knobs>,
}

impl Watch {
    /// A view of `controls`, reading the settings in force now.
    pub fn new(controls: Arc<Controls>) -> Watch {
        let knobs = controls.current();
        Watch { controls, knobs }
    }

    /// The settings in force, and whether they changed since the last call.
    pub fn get(&mut self) -> (&Arc<Knobs>, bool) {
        let changed = self.controls.version() != self.knobs.version;
        if changed {
            self.knobs = self.controls.current();
        }
        (&self.knobs, changed)
    }
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

    /// A swap of a model with the same layout takes; one with other features or another
    /// window is refused and leaves the old one in force; mutes are kept sorted and
    /// checked against the model; a watch sees each change once.
    #[test]
    fn swaps_check_the_layout_and_watches_see_changes() {
        let controls = Arc::new(Controls::new(Arc::new(tiny(4, 2)), None, None));
        let mut watch = Watch::new(Arc::clone(&controls));
        assert!(!watch.get().1);
        let err = controls.swap_model(Arc::new(tiny(5, 2)), None).unwrap_err();
        assert!(err.to_string().contains("5 features"), "{err}");
        let err = controls.swap_model(Arc::new(tiny(4, 3)), None).unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
        assert!(!watch.get().1, "a refused swap changes nothing");
        let k = controls
            .swap_model(Arc::new(tiny(4, 2)), Some("x".into()))
            .unwrap();
        assert_eq!((k.model_version, k.version), (1, 1));
        assert!(k.reloaded_at_ms.is_some());
        let (seen, changed) = watch.get();
        assert!(changed && seen.model_version == 1);
        assert!(!watch.get().1);
        controls.set_threshold(Some(2.5));
        assert_eq!(watch.get().0.threshold_or(None), 2.5);
        controls.set_muted(&[3, 1, 3]).unwrap();
        let (k, _) = watch.get();
        assert_eq!(*k.muted, vec![1, 3]);
        assert!(k.is_muted(3) && !k.is_muted(2));
        assert!(controls.set_muted(&[4]).is_err());
    }
}
