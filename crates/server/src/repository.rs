//! The model repository: every model of the manifest, by name and version, and its state.
//!
//! Models can be taken out of service and brought back at run time (Triton's model repository
//! extension):
//! - **unload** marks every version of a name unavailable: new requests get 503, requests already
//!   running hold their own reference to the model and finish normally; the memory is freed when
//!   the last of them completes.
//! - **load** re-reads the model's files, as listed in the manifest, with a fresh runtime load,
//!   and puts the new instance in service (a model already loaded is replaced once the new one
//!   is ready). Only models named in the manifest can be loaded; nothing else is read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use oxinfer_core::protocol::ModelMetadata;
use oxinfer_core::protocol::{Parameter, Parameters};
use oxinfer_core::{
    Error, LoadRequest, Manifest, Model, ModelEntry, ModelSignature, Result, digest,
};

use crate::loader::RuntimeRegistry;
use crate::metrics::ModelMetrics;
use crate::scheduler::Scheduler;
use crate::stats::ModelStats;

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
    /// The loaded model (the first instance when the model is loaded once per instance).
    pub model: Arc<dyn Model>,
    /// The queue and worker threads that execute its requests.
    pub scheduler: Scheduler,
    /// Request statistics of this loaded instance.
    pub stats: Arc<ModelStats>,
    /// The SHA-256 of the model's file (or the stable digest of its directory), as loaded.
    pub sha256: String,
    /// Prometheus metrics of this loaded instance.
    pub metrics: Arc<ModelMetrics>,
}

impl ServedModel {
    /// The model's declared inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        self.model.signature()
    }

    /// Digest and provenance as flat string pairs: `sha256`, then `provenance.*` from the
    /// manifest. Reported in model metadata and configuration.
    pub fn provenance(&self) -> Vec<(String, String)> {
        let mut pairs = vec![("sha256".to_string(), self.sha256.clone())];
        pairs.extend(self.entry.provenance.flatten());
        pairs
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

/// The state of one model version.
#[derive(Debug, Clone)]
pub enum Slot {
    /// Loaded and serving.
    Ready(Arc<ServedModel>),
    /// Not serving, with the reason (unloaded, or a reload that failed).
    Unavailable(String),
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: String,
    /// Why it is not ready (empty when ready).
    pub reason: String,
}

type Models = BTreeMap<String, BTreeMap<u64, Slot>>;

/// All models of the manifest.
#[derive(Debug)]
pub struct ModelRepository {
    registry: RuntimeRegistry,
    manifest: Manifest,
    models: RwLock<Models>,
    /// Serialises unload and reload, so that an unload cannot be undone by a reload that was
    /// still running.
    admin: std::sync::Mutex<()>,
}

impl std::fmt::Debug for RuntimeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl ModelRepository {
    /// Loads every model of a manifest. Stops at the first failure, with an error that names
    /// the manifest file, the model and the cause.
    pub fn load(registry: RuntimeRegistry, manifest: Manifest) -> Result<ModelRepository> {
        for name in manifest.runtimes.keys() {
            registry.get(name).map_err(|e| {
                Error::Manifest(format!(
                    "{}: [runtimes.{name}]: {e}",
                    manifest.source.display()
                ))
            })?;
        }
        let mut models = Models::new();
        for entry in &manifest.models {
            let served = load_entry(&registry, &manifest, entry).map_err(|e| {
                Error::Manifest(format!("{}: {entry}: {e}", manifest.source.display()))
            })?;
            models
                .entry(entry.name.clone())
                .or_default()
                .insert(entry.version_number(), Slot::Ready(Arc::new(served)));
        }
        Ok(ModelRepository {
            registry,
            manifest,
            models: RwLock::new(models),
            admin: std::sync::Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Models> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds a ready model: the given version, or the highest ready one when `version` is `None`.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ServedModel>> {
        let models = self.read();
        let versions = models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(format!("unknown model '{name}'")))?;
        let slot = match version {
            None => {
                return versions
                    .values()
                    .rev()
                    .find_map(|slot| match slot {
                        Slot::Ready(m) => Some(m.clone()),
                        Slot::Unavailable(_) => None,
                    })
                    .ok_or_else(|| {
                        Error::ModelNotReady(format!("model '{name}' has no version loaded"))
                    });
            }
            Some(v) => v.parse::<u64>().ok().and_then(|n| versions.get(&n)),
        };
        match slot {
            Some(Slot::Ready(m)) => Ok(m.clone()),
            Some(Slot::Unavailable(reason)) => Err(Error::ModelNotReady(format!(
                "model '{name}' version {} is not loaded: {reason}",
                version.unwrap_or_default()
            ))),
            None => Err(Error::ModelNotFound(format!(
                "unknown version '{}' of model '{name}' (versions: {})",
                version.unwrap_or_default(),
                versions
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Every ready model version, by name then version.
    pub fn ready_models(&self) -> Vec<Arc<ServedModel>> {
        self.read()
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|slot| match slot {
                Slot::Ready(m) => Some(m.clone()),
                Slot::Unavailable(_) => None,
            })
            .collect()
    }

    /// The ready versions of `name`; the error of [`ModelRepository::get`] when there is none.
    pub fn ready_versions(&self, name: &str) -> Result<Vec<Arc<ServedModel>>> {
        let versions: Vec<_> = self
            .ready_models()
            .into_iter()
            .filter(|m| m.name == name)
            .collect();
        if versions.is_empty() {
            self.get(name, None)?;
        }
        Ok(versions)
    }

    /// The number of ready model versions.
    pub fn len(&self) -> usize {
        self.ready_models().len()
    }

    /// Whether no model version is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The metadata of a model version, listing the versions of its name that are ready.
    pub fn metadata(&self, model: &ServedModel) -> ModelMetadata {
        let signature = model.signature();
        let versions = self
            .read()
            .get(&model.name)
            .map(|v| {
                v.iter()
                    .filter(|(_, s)| matches!(s, Slot::Ready(_)))
                    .map(|(n, _)| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        ModelMetadata {
            name: model.name.clone(),
            versions,
            platform: model.platform.to_string(),
            inputs: signature.inputs.clone(),
            outputs: signature.outputs.clone(),
            parameters: model
                .provenance()
                .into_iter()
                .map(|(k, v)| (k, Parameter::String(v)))
                .collect::<Parameters>(),
        }
    }

    /// Every model version of the manifest with its state, by name then version; only ready
    /// ones when `ready_only`.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        self.read()
            .iter()
            .flat_map(|(name, versions)| {
                versions.iter().map(move |(v, slot)| {
                    let (state, reason) = match slot {
                        Slot::Ready(_) => ("READY", String::new()),
                        Slot::Unavailable(r) => ("UNAVAILABLE", r.clone()),
                    };
                    IndexEntry {
                        name: name.clone(),
                        version: v.to_string(),
                        state: state.to_string(),
                        reason,
                    }
                })
            })
            .filter(|e| !ready_only || e.state == "READY")
            .collect()
    }

    fn check_known(&self, name: &str) -> Result<()> {
        if self.manifest.models.iter().any(|e| e.name == name) {
            Ok(())
        } else {
            Err(Error::ModelNotFound(format!(
                "model '{name}' is not in the manifest {}",
                self.manifest.source.display()
            )))
        }
    }

    /// Takes every version of `name` out of service (blocking: a model whose last user this is
    /// is freed here, so call it off the I/O threads).
    pub fn unload(&self, name: &str) -> Result<()> {
        self.check_known(name)?;
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let replaced: Vec<Slot> = {
            let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
            models
                .get_mut(name)
                .into_iter()
                .flat_map(BTreeMap::values_mut)
                .map(|slot| std::mem::replace(slot, Slot::Unavailable("unloaded".into())))
                .collect()
        };
        // Freed (if no request still holds them) after the lock is released.
        drop(replaced);
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    /// Loads every version of `name` from its files again (blocking: call it off the I/O
    /// threads). A version that fails to load keeps serving its previous instance if it had one,
    /// and is otherwise left unavailable with the reason.
    pub fn reload(&self, name: &str) -> Result<()> {
        self.check_known(name)?;
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let mut first_error = None;
        for entry in self.manifest.models.iter().filter(|e| e.name == name) {
            let loaded = load_entry(&self.registry, &self.manifest, entry);
            let replaced = {
                let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
                let versions = models.entry(name.to_string()).or_default();
                let version = entry.version_number();
                match loaded {
                    Ok(served) => versions.insert(version, Slot::Ready(Arc::new(served))),
                    Err(e) => {
                        let reason = format!("load failed: {e}");
                        tracing::warn!(model = name, version = %entry.version, "{reason}");
                        first_error.get_or_insert(Error::Load(format!("{entry}: {e}")));
                        match versions.get(&version) {
                            Some(Slot::Ready(_)) => None,
                            _ => versions.insert(version, Slot::Unavailable(reason)),
                        }
                    }
                }
            };
            drop(replaced);
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                tracing::info!(model = name, "model loaded through the repository API");
                Ok(())
            }
        }
    }
}

fn load_entry(
    registry: &RuntimeRegistry,
    manifest: &Manifest,
    entry: &ModelEntry,
) -> Result<ServedModel> {
    let no_settings = toml::Table::new();
    let runtime = registry.get(&entry.runtime)?;
    // The digest is taken before the runtime reads the files, and a pinned one is checked
    // before anything is loaded.
    let sha256 = digest::model_sha256(&entry.path)?;
    if let Some(pinned) = &entry.sha256
        && *pinned != sha256
    {
        return Err(Error::Load(format!(
            "sha256 mismatch for {}: the manifest pins {pinned} but the file's digest is {sha256}; \
             refusing to load it",
            entry.path.display()
        )));
    }
    let request = LoadRequest {
        name: &entry.name,
        version: &entry.version,
        path: &entry.path,
        base_dir: manifest
            .source
            .parent()
            .unwrap_or(std::path::Path::new(".")),
        options: &entry.options,
        settings: manifest
            .runtimes
            .get(&entry.runtime)
            .unwrap_or(&no_settings),
        instances: entry.scheduler.instances,
    };
    let model: Arc<dyn Model> = Arc::from(runtime.load(&request)?);
    let config = &entry.scheduler;
    if config.batching() && !model.signature().batchable() {
        return Err(Error::Load(format!(
            "dynamic batching (max_batch_size = {}) needs every input and output to have a \
             dynamic first dimension (-1), and this model's do not",
            config.max_batch_size
        )));
    }
    // One loaded model serves every worker when it can run concurrently; otherwise each
    // instance is loaded on its own.
    let mut instances = vec![model.clone()];
    for _ in 1..config.instances {
        instances.push(if model.concurrent() {
            model.clone()
        } else {
            Arc::from(runtime.load(&request)?)
        });
    }
    let stats = Arc::new(ModelStats::default());
    let metrics = Arc::new(ModelMetrics::default());
    let scheduler = Scheduler::start(
        &entry.name,
        instances,
        config.clone(),
        stats.clone(),
        metrics.clone(),
    )?;
    Ok(ServedModel {
        name: entry.name.clone(),
        version: entry.version.clone(),
        platform: runtime.platform(),
        entry: entry.clone(),
        model,
        scheduler,
        stats,
        sha256,
        metrics,
    })
}
