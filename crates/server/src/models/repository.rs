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
//!
//! And the whole manifest can be applied again ([`ModelRepository::apply`]: SIGHUP, `--watch`):
//! added versions are loaded, changed ones (entry, runtime settings, or file digest) loaded
//! beside the old instance and swapped in, removed ones taken out, unchanged ones untouched;
//! a version that fails to load leaves what served before in place.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;

use oxinfer_core::protocol::{ModelMetadata, Parameter, Parameters};
use oxinfer_core::{Error, Manifest, ModelEntry, Result};

use crate::models::registry::RuntimeRegistry;
use crate::models::served::ServedModel;
use oxinfer_sources::{ModelSources, digest};

/// The state of one model version.
#[derive(Debug, Clone)]
enum Slot {
    /// Loaded and serving.
    Ready(Arc<ServedModel>),
    /// Not serving, with the reason (unloaded, or a reload that failed).
    Unavailable(String),
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct IndexEntry {
    pub(crate) name: String,
    pub(crate) version: String,
    /// `READY` or `UNAVAILABLE`.
    pub(crate) state: String,
    /// Why it is not ready (empty when ready).
    pub(crate) reason: String,
}

type Models = BTreeMap<String, BTreeMap<u64, Slot>>;

/// All models of the manifest.
#[derive(Debug)]
pub struct ModelRepository {
    registry: RuntimeRegistry,
    /// The manifest in force (replaced by [`ModelRepository::apply`]).
    manifest: RwLock<Arc<Manifest>>,
    /// Every version's slot. Requests read it without a lock: an [`ArcSwap`] load writes
    /// only the reading thread's own slot, where a `RwLock`'s read lock and unlock wrote one
    /// line that every request shares (two atomic operations on a line that travels between
    /// the cores). Changes copy the map and swap the copy in, under `admin`.
    models: ArcSwap<Models>,
    /// Serialises unload, reload and apply, so that one cannot undo another that was still
    /// running.
    admin: std::sync::Mutex<()>,
    /// Manifest reloads that applied every change, and those that did not.
    reloads: [AtomicU64; 2],
    /// Versions whose last reload failed: the next reload loads them again even when their
    /// entry looks unchanged (a changed `[runtimes.*]` table, say, is already in force).
    failed: std::sync::Mutex<std::collections::HashSet<(String, u64)>>,
    /// Where models named by URI are fetched from (made when first needed).
    sources: SourcesSlot,
}

/// The model sources of the manifest in force: made on first use, and again when `[sources]`
/// or `[server] model_cache` changed.
#[derive(Debug, Default)]
struct SourcesSlot(std::sync::Mutex<Option<Arc<ModelSources>>>);

impl SourcesSlot {
    fn get(&self, manifest: &Manifest) -> Result<Arc<ModelSources>> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let cache = manifest
            .server
            .model_cache
            .clone()
            .unwrap_or_else(oxinfer_sources::default_cache_dir);
        if let Some(sources) = held.as_ref()
            && *sources.settings() == manifest.sources
            && sources.cache_dir() == cache
        {
            return Ok(sources.clone());
        }
        let sources = Arc::new(ModelSources::new(&manifest.sources, Some(&cache))?);
        *held = Some(sources.clone());
        Ok(sources)
    }

    /// The cache directory, once sources were made.
    fn cache_dir(&self) -> Option<std::path::PathBuf> {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref().map(|s| s.cache_dir().to_path_buf())
    }

    /// The entry as its runtime loads it: for a model named by URI, fetched (or found in the
    /// cache), its path the local copy and its provenance the source's under the manifest's.
    fn resolve<'a>(
        &self,
        manifest: &Manifest,
        entry: &'a ModelEntry,
    ) -> Result<std::borrow::Cow<'a, ModelEntry>> {
        if entry.uri.is_none() {
            return Ok(std::borrow::Cow::Borrowed(entry));
        }
        let resolved = self.get(manifest)?.resolve(entry)?;
        if let Some(stale) = &resolved.stale {
            tracing::warn!(model = %entry.name, version = %entry.version, "{stale}");
        }
        let mut local = entry.clone();
        local.provenance = oxinfer_sources::merge_provenance(entry, &resolved.provenance);
        local.path = resolved.path;
        tracing::info!(
            model = %entry.name,
            version = %entry.version,
            source = %entry.path.display(),
            registry_version = local.provenance.registry_version.as_deref().unwrap_or("-"),
            path = %local.path.display(),
            "model source resolved"
        );
        Ok(std::borrow::Cow::Owned(local))
    }
}

/// What applying a manifest changed ([`ModelRepository::apply`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Versions loaded that were not served before (`name:version`).
    pub added: Vec<String>,
    /// Versions loaded again and swapped in (their entry, runtime settings or files changed).
    pub changed: Vec<String>,
    /// Versions taken out of service.
    pub removed: Vec<String>,
    /// Versions left as they were.
    pub unchanged: usize,
    /// Versions that failed to load, with the reason; what served before still does.
    pub failed: Vec<String>,
    /// Settings that changed but only take effect on a restart.
    pub needs_restart: Vec<String>,
}

impl ReloadReport {
    /// Whether every change was applied.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
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
        let sources = SourcesSlot::default();
        for entry in &manifest.models {
            if let Some(reason) = &entry.excluded {
                models
                    .entry(entry.name.clone())
                    .or_default()
                    .insert(entry.version_number(), Slot::Unavailable(reason.clone()));
                continue;
            }
            let served = sources
                .resolve(&manifest, entry)
                .and_then(|local| ServedModel::load(&registry, &manifest, &local))
                .map_err(|e| {
                    Error::Manifest(format!("{}: {entry}: {e}", manifest.source.display()))
                })?;
            models
                .entry(entry.name.clone())
                .or_default()
                .insert(entry.version_number(), Slot::Ready(Arc::new(served)));
        }
        crate::heap::release_free_memory();
        Ok(ModelRepository {
            registry,
            manifest: RwLock::new(Arc::new(manifest)),
            models: ArcSwap::from_pointee(models),
            admin: std::sync::Mutex::new(()),
            reloads: Default::default(),
            failed: Default::default(),
            sources,
        })
    }

    /// The manifest in force.
    pub fn manifest(&self) -> Arc<Manifest> {
        self.manifest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Manifest reloads so far: (complete, with failures or refused).
    pub(crate) fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads[0].load(Ordering::Relaxed),
            self.reloads[1].load(Ordering::Relaxed),
        )
    }

    /// Counts a manifest that could not be applied at all (it failed to parse or check).
    pub fn count_refused_reload(&self) {
        self.reloads[1].fetch_add(1, Ordering::Relaxed);
    }

    /// Applies a new manifest without a restart (blocking: loads models; call it off the I/O
    /// threads). Versions added are loaded and served once ready; versions whose entry, runtime
    /// settings or files (digest) changed are loaded beside the serving instance and swapped in
    /// when ready (requests already running finish on the old one); versions removed stop
    /// being served once the new state is committed; unchanged ones are untouched (statistics
    /// kept). A version that fails to load changes nothing for that model: the old instance
    /// keeps serving (and a later reload tries again). Server-wide settings that cannot change
    /// at run time are reported in [`ReloadReport::needs_restart`] and left as they are.
    pub fn apply(&self, new: Manifest) -> ReloadReport {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.manifest();
        let mut report = ReloadReport::default();
        if old.server != new.server {
            report.needs_restart.push("[server]".into());
        }
        if old.inference_log != new.inference_log {
            report.needs_restart.push("[inference_log]".into());
        }
        if old.telemetry != new.telemetry {
            report.needs_restart.push("[telemetry]".into());
        }
        let serving: BTreeMap<(String, u64), Option<Arc<ServedModel>>> = self
            .read()
            .iter()
            .flat_map(|(name, versions)| {
                versions.iter().map(move |(v, slot)| {
                    let model = match slot {
                        Slot::Ready(m) => Some(m.clone()),
                        Slot::Unavailable(_) => None,
                    };
                    ((name.clone(), *v), model)
                })
            })
            .collect();
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let retry = std::mem::take(&mut *failed);
        let mut loaded: Vec<((String, u64), Arc<ServedModel>)> = Vec::new();
        // Versions listed but left out by a version policy: retired if they were serving.
        let mut retired: Vec<((String, u64), String)> = Vec::new();
        // The manifest that will be in force: the new one, except that an entry that failed to
        // load is the old one (or absent), so that the next reload tries it again.
        let mut effective = new.clone();
        effective.models.clear();
        // What needs a restart stays as it is in force, so that every reload says so again.
        effective.server = old.server.clone();
        effective.inference_log = old.inference_log.clone();
        effective.telemetry = old.telemetry.clone();
        for entry in &new.models {
            let key = (entry.name.clone(), entry.version_number());
            let label = format!("{}:{}", entry.name, entry.version);
            let before = old
                .models
                .iter()
                .find(|e| e.name == entry.name && e.version_number() == key.1);
            let settings_same =
                old.runtimes.get(&entry.runtime) == new.runtimes.get(&entry.runtime);
            // A model named by URI is resolved again: an alias that moved is a change.
            // The cache in force ([server] changes need a restart), the new [sources].
            let local = match entry.excluded {
                Some(_) => Ok(std::borrow::Cow::Borrowed(entry)),
                None => self.sources.resolve(&effective, entry),
            };
            let unchanged = !retry.contains(&key)
                && match (before, serving.get(&key), &local) {
                    (Some(b), Some(Some(model)), Ok(local)) => {
                        b == entry
                            && settings_same
                            && local.provenance == model.entry.provenance
                            && digest::model_sha256(&local.path).is_ok_and(|d| d == model.sha256)
                    }
                    // Unloaded through the repository API, and still listed as it was.
                    (Some(b), Some(None), _) => b == entry && settings_same,
                    _ => false,
                };
            if unchanged {
                report.unchanged += 1;
                effective.models.push(entry.clone());
                continue;
            }
            if let Some(reason) = &entry.excluded {
                if matches!(serving.get(&key), Some(Some(_))) {
                    report.removed.push(label);
                } else {
                    report.unchanged += 1;
                }
                retired.push((key, reason.clone()));
                effective.models.push(entry.clone());
                continue;
            }
            match local.and_then(|local| ServedModel::load(&self.registry, &new, &local)) {
                Ok(model) => {
                    if serving.contains_key(&key) {
                        report.changed.push(label);
                    } else {
                        report.added.push(label);
                    }
                    loaded.push((key, Arc::new(model)));
                    effective.models.push(entry.clone());
                }
                Err(e) => {
                    tracing::warn!(
                        manifest = %new.source.display(),
                        model = %entry.name,
                        version = %entry.version,
                        "manifest reload: {entry} failed to load, what served before still does: {e}"
                    );
                    report.failed.push(format!("{entry}: {e}"));
                    failed.insert(key.clone());
                    if let Some(b) = before {
                        effective.models.push(b.clone());
                    }
                }
            }
        }
        let listed = |name: &str, v: u64| {
            new.models
                .iter()
                .any(|e| e.name == name && e.version_number() == v)
        };
        let removed: Vec<(String, u64)> = serving
            .keys()
            .filter(|(name, v)| !listed(name, *v))
            .cloned()
            .collect();
        // Commit every change at once; what is replaced is freed here (or, when requests
        // still hold it, once they finish).
        let replaced: Vec<Slot> = self.change_models(|models| {
            let mut replaced = Vec::new();
            for ((name, v), model) in loaded {
                replaced.extend(
                    models
                        .entry(name)
                        .or_default()
                        .insert(v, Slot::Ready(model)),
                );
            }
            for ((name, v), reason) in retired {
                replaced.extend(
                    models
                        .entry(name)
                        .or_default()
                        .insert(v, Slot::Unavailable(reason)),
                );
            }
            for (name, v) in &removed {
                if let Some(versions) = models.get_mut(name) {
                    replaced.extend(versions.remove(v));
                    if versions.is_empty() {
                        models.remove(name);
                    }
                }
                report.removed.push(format!("{name}:{v}"));
            }
            *self.manifest.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(effective);
            replaced
        });
        drop(replaced);
        crate::heap::release_free_memory();
        self.reloads[usize::from(!report.complete())].fetch_add(1, Ordering::Relaxed);
        report
    }

    /// The models as of now (held briefly: a request clones the model it needs out of it).
    fn read(&self) -> arc_swap::Guard<Arc<Models>> {
        self.models.load()
    }

    /// Changes the models: `change` edits a copy, which then replaces them for the requests
    /// that come after. The caller holds `admin` (one change at a time). What the change
    /// replaced is freed once the previous copy's last reader is done with it.
    fn change_models<T>(&self, change: impl FnOnce(&mut Models) -> T) -> T {
        let mut models = Models::clone(&self.models.load());
        let out = change(&mut models);
        self.models.store(Arc::new(models));
        out
    }

    /// Finds a ready model: the given version, or the highest ready one when `version` is `None`.
    pub(crate) fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ServedModel>> {
        let models = self.read();
        let versions = models
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))?;
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
            None => Err(Error::NotFound(format!(
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
    pub(crate) fn ready_versions(&self, name: &str) -> Result<Vec<Arc<ServedModel>>> {
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
    pub(crate) fn metadata(&self, model: &ServedModel) -> ModelMetadata {
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
    pub(crate) fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
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

    /// A message for clients: the manifest's directory and the models' directories cut from
    /// the paths in it, so that it names files without showing the server's file system.
    fn without_paths(&self, text: &str) -> String {
        let manifest = self.manifest();
        let mut dirs: Vec<String> = manifest
            .models
            .iter()
            .filter(|e| e.uri.is_none())
            .filter_map(|e| e.path.parent())
            .chain(manifest.source.parent())
            .map(|d| format!("{}/", d.display()))
            .chain(
                self.sources
                    .cache_dir()
                    .map(|d| format!("{}/", d.display())),
            )
            .filter(|d| d.len() > 1)
            .collect();
        // Longest first, so that a directory is cut before one of its parents.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
        dirs.iter()
            .fold(text.to_string(), |text, dir| text.replace(dir.as_str(), ""))
    }

    fn check_known(&self, name: &str) -> Result<()> {
        let manifest = self.manifest();
        if manifest.models.iter().any(|e| e.name == name) {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "model '{name}' is not in the manifest ({})",
                file_name(&manifest.source)
            )))
        }
    }

    /// Takes every version of `name` out of service (blocking: a model whose last user this is
    /// is freed here, so call it off the I/O threads).
    pub(crate) fn unload(&self, name: &str) -> Result<()> {
        self.check_known(name)?;
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let replaced: Vec<Slot> = self.change_models(|models| {
            models
                .get_mut(name)
                .into_iter()
                .flat_map(BTreeMap::values_mut)
                .map(|slot| std::mem::replace(slot, Slot::Unavailable("unloaded".into())))
                .collect()
        });
        // Freed (if no request still holds them) after the lock is released.
        drop(replaced);
        crate::heap::release_free_memory();
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    /// Loads every version of `name` from its files again (blocking: call it off the I/O
    /// threads). A version that fails to load keeps serving its previous instance if it had one,
    /// and is otherwise left unavailable with the reason.
    pub(crate) fn reload(&self, name: &str) -> Result<()> {
        self.check_known(name)?;
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let mut first_error = None;
        let manifest = self.manifest();
        for entry in manifest
            .models
            .iter()
            .filter(|e| e.name == name && e.excluded.is_none())
        {
            let loaded = self
                .sources
                .resolve(&manifest, entry)
                .and_then(|local| ServedModel::load(&self.registry, &manifest, &local));
            let replaced = self.change_models(|models| {
                let versions = models.entry(name.to_string()).or_default();
                let version = entry.version_number();
                match loaded {
                    Ok(served) => versions.insert(version, Slot::Ready(Arc::new(served))),
                    Err(e) => {
                        // The server log has the paths; clients are told the file names.
                        tracing::warn!(model = name, version = %entry.version, "load failed: {e}");
                        let reason = self.without_paths(&format!("load failed: {e}"));
                        first_error.get_or_insert(Error::Load(
                            self.without_paths(&format!("{entry}: {e}")),
                        ));
                        match versions.get(&version) {
                            Some(Slot::Ready(_)) => None,
                            _ => versions.insert(version, Slot::Unavailable(reason)),
                        }
                    }
                }
            });
            drop(replaced);
        }
        crate::heap::release_free_memory();
        match first_error {
            Some(e) => Err(e),
            None => {
                tracing::info!(model = name, "model loaded through the repository API");
                Ok(())
            }
        }
    }
}

/// The last component of a path, for messages.
fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
