//! Runtime registration and loading a manifest's models into a [`ModelRepository`].

use std::collections::BTreeMap;
use std::sync::Arc;

use oxinfer_core::{Error, LoadRequest, Manifest, Result, Runtime};

use crate::repository::{ModelRepository, ServedModel};

/// Runtime names a manifest may use, whether or not this binary was built with them, and the
/// cargo feature that adds each.
pub const KNOWN_RUNTIMES: [(&str, &str); 4] = [
    ("tract", "tract"),
    ("onnxruntime", "onnxruntime"),
    ("candle", "candle"),
    ("plugin", "plugin"),
];

/// The runtimes compiled into this binary, by manifest name.
#[derive(Default, Clone)]
pub struct RuntimeRegistry {
    runtimes: BTreeMap<&'static str, Arc<dyn Runtime>>,
}

impl RuntimeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a runtime under its [`Runtime::name`].
    pub fn register(&mut self, runtime: Arc<dyn Runtime>) -> &mut Self {
        self.runtimes.insert(runtime.name(), runtime);
        self
    }

    /// The names of the registered runtimes.
    pub fn names(&self) -> Vec<&'static str> {
        self.runtimes.keys().copied().collect()
    }

    /// Finds a runtime; a known runtime that was not compiled in says which feature adds it.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Runtime>> {
        if let Some(rt) = self.runtimes.get(name) {
            return Ok(rt);
        }
        let available = self.names().join(", ");
        Err(Error::Manifest(
            match KNOWN_RUNTIMES.iter().find(|(n, _)| *n == name) {
                Some((_, feature)) => format!(
                    "runtime '{name}' is not built into this oxinfer binary (built with: \
                     {available}); rebuild with `--features {feature}`"
                ),
                None => format!("unknown runtime '{name}' (available: {available})"),
            },
        ))
    }

    /// Loads every model of a manifest. Stops at the first failure, with an error that names
    /// the manifest file, the model and the cause.
    pub fn load_manifest(&self, manifest: &Manifest) -> Result<ModelRepository> {
        for name in manifest.runtimes.keys() {
            self.get(name).map_err(|e| {
                Error::Manifest(format!(
                    "{}: [runtimes.{name}]: {e}",
                    manifest.source.display()
                ))
            })?;
        }
        let no_settings = toml::Table::new();
        let mut repo = ModelRepository::default();
        for entry in &manifest.models {
            let fail =
                |e: Error| Error::Manifest(format!("{}: {entry}: {e}", manifest.source.display()));
            let runtime = self.get(&entry.runtime).map_err(fail)?;
            let model = runtime
                .load(&LoadRequest {
                    name: &entry.name,
                    version: &entry.version,
                    path: &entry.path,
                    options: &entry.options,
                    settings: manifest
                        .runtimes
                        .get(&entry.runtime)
                        .unwrap_or(&no_settings),
                })
                .map_err(fail)?;
            repo.insert(ServedModel {
                name: entry.name.clone(),
                version: entry.version.clone(),
                platform: runtime.platform(),
                entry: entry.clone(),
                model: Arc::from(model),
            });
        }
        Ok(repo)
    }
}
