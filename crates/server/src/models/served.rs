//! A loaded model version, and how a manifest entry becomes one: digest (checked against a pin),
//! the runtime's load, one instance per scheduler worker where needed, the scheduler, and the
//! one "model loaded" log line for every runtime.

use std::sync::Arc;
use std::time::Instant;

use oxinfer_core::{Error, LoadRequest, Manifest, Model, ModelEntry, ModelSignature, Result};

use crate::models::digest;
use crate::models::registry::RuntimeRegistry;
use crate::scheduler::Scheduler;
use crate::telemetry::ModelTelemetry;

/// One loaded model version, ready to serve.
pub struct ServedModel {
    /// The model's name.
    pub name: String,
    /// The version, as served on the wire (`"1"`).
    pub version: String,
    /// The runtime's `platform` string.
    pub(crate) platform: &'static str,
    /// The manifest entry it was loaded from.
    pub entry: ModelEntry,
    /// The loaded model (the first instance when the model is loaded once per instance).
    pub(crate) model: Arc<dyn Model>,
    /// The queue and worker threads that execute its requests.
    pub(crate) scheduler: Scheduler,
    /// The SHA-256 of the model's file (or the stable digest of its directory), as loaded.
    pub(crate) sha256: String,
    /// Its statistics and metrics.
    pub(crate) telemetry: Arc<ModelTelemetry>,
}

impl ServedModel {
    /// Loads one manifest entry with its runtime. Blocking (reads files, may compile the model):
    /// call it off the I/O threads.
    pub(crate) fn load(
        registry: &RuntimeRegistry,
        manifest: &Manifest,
        entry: &ModelEntry,
    ) -> Result<ServedModel> {
        let started = Instant::now();
        let no_settings = toml::Table::new();
        let runtime = registry.get(&entry.runtime)?;
        // The digest is taken before the runtime reads the files, and a pinned one is checked
        // before anything is loaded.
        let sha256 = digest::model_sha256(&entry.path)?;
        if let Some(pinned) = &entry.sha256
            && *pinned != sha256
        {
            return Err(Error::Load(format!(
                "sha256 mismatch for {}: the manifest pins {pinned} but the file's digest is \
                 {sha256}; refusing to load it",
                entry.path.display()
            )));
        }
        let request = LoadRequest {
            runtime: runtime.name(),
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
        let telemetry = Arc::new(ModelTelemetry::new(&entry.name, &entry.version));
        let scheduler =
            Scheduler::start(&entry.name, instances, config.clone(), telemetry.clone())?;
        // `key="value" ...`, as the runtime-specific fields would read in the text log.
        let details = model
            .details()
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(
            model = entry.name.as_str(),
            version = entry.version.as_str(),
            runtime = runtime.name(),
            instances = config.instances,
            details = %details,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(ServedModel {
            name: entry.name.clone(),
            version: entry.version.clone(),
            platform: runtime.platform(),
            entry: entry.clone(),
            model,
            scheduler,
            sha256,
            telemetry,
        })
    }

    /// The model's declared inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        self.model.signature()
    }

    /// Digest and provenance as flat string pairs: `sha256`, then `provenance.*` from the
    /// manifest. Reported in model metadata and configuration.
    pub(crate) fn provenance(&self) -> Vec<(String, String)> {
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
