//! Many models in one engine: a model directory with one model per entity.
//!
//! ```text
//! models/<name>/
//!   default/        the model of entities without their own (required)
//!   <entity>/       one per entity, named as the frames name it (`"entity"`, a file stem)
//! ```
//!
//! Each subdirectory holds one model in a format its variant reads: today's
//! `model.json` + `model.safetensors` ([`crate::model::Model`]), a PCA reconstruction
//! model, `pca.json` (`crate::detect::PcaModel::load`), or a forecaster, `forecast.json`
//! (`crate::detect::ForecastModel::load`). A worker loads only the entities it owns
//! (see [`crate::ops::owner`]) and the default, so memory and start-up time grow with the
//! entities per worker.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ModelError;
use crate::types::{entity_key, EntityKey};

/// The subdirectory of the model for entities without their own.
pub const DEFAULT_ENTITY: &str = "default";

/// The entity subdirectories of `dir`, by entity name, [`DEFAULT_ENTITY`] included.
pub fn entity_dirs(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ModelError> {
    let io = |source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if let (true, Some(name)) = (path.is_dir(), path.file_name().and_then(|n| n.to_str())) {
            out.insert(name.to_string(), path.clone());
        }
    }
    Ok(out)
}

/// The models of the entities one worker owns, and the default.
#[derive(Debug)]
pub struct EntityModels<M> {
    by_key: HashMap<EntityKey, Arc<M>>,
    default: Arc<M>,
}

impl<M> EntityModels<M> {
    /// Loads, from the entity directories of `dir`, the default and every entity for
    /// which `owned` holds, with `load`. Fails naming the file when one does not load,
    /// or when there is no [`DEFAULT_ENTITY`].
    pub fn load(
        dir: &Path,
        owned: impl Fn(EntityKey) -> bool,
        load: impl Fn(&Path) -> Result<M, ModelError>,
    ) -> Result<EntityModels<M>, ModelError> {
        let mut dirs = entity_dirs(dir)?;
        let Some(default_dir) = dirs.remove(DEFAULT_ENTITY) else {
            return Err(ModelError::Invalid {
                path: dir.to_path_buf(),
                problem: format!("no {DEFAULT_ENTITY}/ model for entities without their own"),
            });
        };
        let default = Arc::new(load(&default_dir)?);
        let mut by_key = HashMap::new();
        for (name, path) in dirs {
            let key = entity_key(&name);
            if owned(key) {
                by_key.insert(key, Arc::new(load(&path)?));
            }
        }
        Ok(EntityModels { by_key, default })
    }

    /// The model of entity `key`: its own, else the default.
    pub fn get(&self, key: EntityKey) -> &Arc<M> {
        self.by_key.get(&key).unwrap_or(&self.default)
    }

    /// The default model.
    pub fn default_model(&self) -> &Arc<M> {
        &self.default
    }

    /// How many entities have their own model here.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no entity has its own model here.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an entity's model: here the text of its `m.txt`.
    fn text(dir: &Path) -> Result<String, ModelError> {
        let path = dir.join("m.txt");
        std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path, source })
    }

    /// A directory of two entities and a default: an owner loads its own entities
    /// alone, and an entity without a model gets the default.
    #[test]
    fn owners_load_their_entities_and_fall_back_to_the_default() {
        let dir = std::env::temp_dir().join(format!("tw-entities-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for name in ["default", "a", "b"] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("m.txt"), name).unwrap();
        }
        let all = EntityModels::load(&dir, |_| true, text).unwrap();
        assert_eq!(all.len(), 2);
        let a = entity_key("a");
        assert_eq!(all.get(a).as_str(), "a");
        assert_eq!(all.get(entity_key("zz")).as_str(), "default");
        let only_a = EntityModels::load(&dir, |k| k == a, text).unwrap();
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a.get(entity_key("b")).as_str(), "default");
        std::fs::remove_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let err = EntityModels::load(&dir, |_| true, text).unwrap_err();
        assert!(err.to_string().contains("m.txt"), "{err}");
        std::fs::remove_dir_all(dir.join("default")).unwrap();
        let err = EntityModels::load(&dir, |_| true, text).unwrap_err();
        assert!(err.to_string().contains("default"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
