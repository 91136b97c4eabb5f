//! The model repository: every loaded model, by name and version.

use std::collections::BTreeMap;
use std::sync::Arc;

use oxinfer_core::protocol::ModelMetadata;
use oxinfer_core::{Error, Model, ModelEntry, ModelSignature, Result};

/// One loaded model version, ready to serve.
pub struct ServedModel {
    /// The model's name.
    pub name: String,
    /// The version, as served on the wire (`"1"`).
    pub version: String,
    /// The runtime's `platform` string.
    pub platform: &'static str,
    /// The manifest entry it was loaded from.
    pub entry: ModelEntry,
    /// The loaded instance.
    pub model: Arc<dyn Model>,
}

impl ServedModel {
    /// The model's declared inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        self.model.signature()
    }
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

/// All served models. Versions of one name are ordered numerically.
#[derive(Debug, Default)]
pub struct ModelRepository {
    models: BTreeMap<String, BTreeMap<u64, Arc<ServedModel>>>,
}

impl ModelRepository {
    /// Adds a model; the manifest has already rejected duplicate name/version pairs.
    pub fn insert(&mut self, model: ServedModel) {
        let version = model.entry.version_number();
        self.models
            .entry(model.name.clone())
            .or_default()
            .insert(version, Arc::new(model));
    }

    /// Finds a model: the given version, or the highest when `version` is `None`.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ServedModel>> {
        let versions = self
            .models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(format!("unknown model '{name}'")))?;
        match version {
            None => versions.values().next_back().cloned(),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|n| versions.get(&n).cloned()),
        }
        .ok_or_else(|| {
            Error::ModelNotFound(format!(
                "unknown version '{}' of model '{name}' (served: {})",
                version.unwrap_or_default(),
                versions
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Every served model version, by name then version.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.models.values().flat_map(BTreeMap::values)
    }

    /// The number of served model versions.
    pub fn len(&self) -> usize {
        self.models.values().map(BTreeMap::len).sum()
    }

    /// Whether no model is served.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The metadata of a model version, listing every version served under its name.
    pub fn metadata(&self, model: &ServedModel) -> ModelMetadata {
        let signature = model.signature();
        ModelMetadata {
            name: model.name.clone(),
            versions: self
                .models
                .get(&model.name)
                .map(|v| v.keys().map(u64::to_string).collect())
                .unwrap_or_default(),
            platform: model.platform.to_string(),
            inputs: signature.inputs.clone(),
            outputs: signature.outputs.clone(),
            parameters: Default::default(),
        }
    }
}
