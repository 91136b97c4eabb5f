//! Models from where they live: a model whose manifest `path` is a URI is fetched from an MLflow
//! model registry (`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/NAME/latest`), an
//! S3-compatible object store (`s3://BUCKET/KEY`, `s3://BUCKET/PREFIX/`) or a URL
//! (`https://...`, with a pinned `sha256`) into a local cache stored by content digest, and
//! what the source says about it is returned as provenance.
//!
//! - [`ModelSources::resolve`]: the local path a runtime loads, and the provenance;
//! - [`cache`]: the content-addressed cache (downloads verified, then renamed into place);
//! - [`digest`]: the content digests of model files and directories;
//! - `mlflow`, `s3`, `fetch`: the registry's REST API, object storage, HTTP with retries.
//!
//! When a source is unreachable (connection refused, timeouts, HTTP 5xx after the retries),
//! the last resolution recorded in the cache is served, with a warning; a definite answer
//! (404, 403, a version that is not READY) is never overridden by the cache. Offline
//! (`--offline`), the network is never touched.
//!
//! The API is blocking (model loading is): each call runs the requests on this crate's own
//! small async runtime, on a thread of its own, so it may be called from anywhere.

pub mod cache;
pub mod digest;
mod fetch;
mod mlflow;
mod mlmodel;
mod s3;

use std::path::{Path, PathBuf};

use oxinfer_core::source::{ModelUri, SourcesSettings};
use oxinfer_core::{Error, ModelEntry, Provenance, Result};

use crate::cache::{Cache, Kind, Ref};
use crate::fetch::{Failure, Http, Sink};
use crate::mlflow::Registry;

/// Installs ring as the process's default TLS crypto provider (once; later calls do nothing).
/// The HTTP clients of this crate, and any other `reqwest` client in the process (the OTLP
/// exporter's), build their TLS on it: call it before making one.
pub fn install_crypto_provider() {
    fetch::install_crypto();
}

/// A model fetched (or found in the cache) for one manifest entry.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the runtime loads: a file or directory in the cache.
    pub path: PathBuf,
    /// What the source says about the model (the entry's own `[models.provenance]` is merged
    /// over it by [`merge_provenance`]).
    pub provenance: Provenance,
    /// Set when the model is served from the cache without the source confirming it (offline,
    /// or the source unreachable): why, and what was last resolved.
    pub stale: Option<String>,
}

/// Fetches models named by URI, through a cache.
pub struct ModelSources {
    settings: SourcesSettings,
    cache: Cache,
    http: Http,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ModelSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSources")
            .field("cache", &self.cache.root())
            .field("offline", &self.settings.offline)
            .finish_non_exhaustive()
    }
}

impl Drop for ModelSources {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids; nothing is in flight.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The default cache directory: `$XDG_CACHE_HOME/oxinfer`, else `$HOME/.cache/oxinfer`, else
/// `oxinfer-cache` in the system's temporary directory.
pub fn default_cache_dir() -> PathBuf {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_CACHE_HOME")
        .or_else(|| from("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("oxinfer"))
        .unwrap_or_else(|| std::env::temp_dir().join("oxinfer-cache"))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl ModelSources {
    /// Sources with the `[sources]` settings and the cache at `cache_dir` (default
    /// [`default_cache_dir`]). Creates the cache directory; touches no network.
    pub fn new(settings: &SourcesSettings, cache_dir: Option<&Path>) -> Result<ModelSources> {
        let root = cache_dir.map_or_else(default_cache_dir, Path::to_path_buf);
        let cache = Cache::open(&root)?;
        let http = Http::new(settings)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Load(format!("cannot start the download runtime: {e}")))?;
        Ok(ModelSources {
            settings: settings.clone(),
            cache,
            http,
            runtime: Some(runtime),
        })
    }

    /// The settings these sources were made with.
    pub fn settings(&self) -> &SourcesSettings {
        &self.settings
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        self.cache.root()
    }

    /// Fetches (or finds in the cache) the model `entry.uri` names, for `entry.runtime`.
    /// Blocking. An entry with a local path is an error.
    pub fn resolve(&self, entry: &ModelEntry) -> Result<Resolved> {
        let uri = entry
            .uri
            .as_ref()
            .ok_or_else(|| Error::Load(format!("{entry}: its path is not a URI")))?;
        let runtime = self.runtime.as_ref().expect("set until dropped");
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(self.resolve_uri(entry, uri)))
                .join()
                .unwrap_or_else(|_| Err(Error::Load("the download thread panicked".into())))
        })
    }

    /// What the cache holds for `entry` without touching the network (`None`: nothing).
    pub fn cached(&self, entry: &ModelEntry) -> Option<Resolved> {
        let uri = entry.uri.as_ref()?;
        self.last_resolved(entry, uri, "not contacted (offline)")
            .ok()
    }

    /// The cache key of a source: what it is resolved against, so that two registries or
    /// endpoints never share a record.
    fn key(&self, uri: &ModelUri) -> String {
        match uri {
            ModelUri::Mlflow { .. } => format!(
                "mlflow {} {uri}",
                self.settings
                    .mlflow
                    .tracking_uri
                    .clone()
                    .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
                    .and_then(|u| Registry::from_settings(Some(&u)).ok())
                    .map(|r| r.base())
                    .unwrap_or_default()
            ),
            ModelUri::S3 { .. } => format!(
                "s3 {} {uri}",
                self.settings
                    .s3
                    .endpoint
                    .clone()
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                    .unwrap_or_default()
            ),
            ModelUri::Http { .. } => format!("http {uri}"),
        }
    }

    /// The model as last resolved, from the cache; `why` says why the source was not asked.
    fn last_resolved(&self, entry: &ModelEntry, uri: &ModelUri, why: &str) -> Result<Resolved> {
        let nothing = || {
            Error::Load(format!(
                "{uri}: {why}, and the model cache ({}) holds nothing for it",
                self.cache.root().display()
            ))
        };
        let (resolved, identity) = match uri {
            // A URL's content is its pinned digest: nothing else may stand in for it.
            ModelUri::Http { .. } => match &entry.sha256 {
                Some(pin) if self.cache.has(Kind::File, pin) => (
                    Resolved {
                        path: self.cache.path(Kind::File, pin),
                        provenance: Provenance {
                            source: Some(uri.to_string()),
                            ..Provenance::default()
                        },
                        stale: None,
                    },
                    pin.clone(),
                ),
                _ => return Err(nothing()),
            },
            _ => {
                let mut record = self.cache.read_ref(&self.key(uri)).ok_or_else(nothing)?;
                // A record shared by a version and an alias names the URI first resolved.
                record.provenance.source = Some(uri.to_string());
                let identity = match &record.provenance.registry_version {
                    Some(v) => format!("version {v}"),
                    None => format!("content {}", record.digest.get(..12).unwrap_or("")),
                };
                let identity = format!("{identity} (resolved at {})", record.resolved_at);
                (self.stored(entry, record)?, identity)
            }
        };
        Ok(Resolved {
            stale: Some(format!(
                "{uri}: {why}; serving {identity} from the model cache"
            )),
            ..resolved
        })
    }

    async fn resolve_uri(&self, entry: &ModelEntry, uri: &ModelUri) -> Result<Resolved> {
        if self.settings.offline {
            return self.last_resolved(entry, uri, "offline (--offline or [sources] offline)");
        }
        let fetched = match uri {
            ModelUri::Http { url } => self.fetch_url(entry, uri, url).await,
            ModelUri::S3 { bucket, key } => self.fetch_s3(entry, uri, bucket, key).await,
            ModelUri::Mlflow { name, version } => {
                self.fetch_mlflow(entry, uri, name, version).await
            }
        };
        match fetched {
            Ok(resolved) => Ok(resolved),
            Err(SourceError::Unreachable(f)) => {
                match self.last_resolved(entry, uri, &format!("unreachable ({})", f.message)) {
                    Ok(resolved) => Ok(resolved),
                    Err(_) => Err(Error::Load(format!(
                        "{uri}: {}; the model cache ({}) holds nothing for it",
                        f.message,
                        self.cache.root().display()
                    ))),
                }
            }
            Err(SourceError::Failed(e)) => Err(e),
        }
    }

    /// `https://` (or allowed `http://`): one file, checked against the pinned digest before
    /// it is stored.
    async fn fetch_url(&self, entry: &ModelEntry, uri: &ModelUri, url: &str) -> Fetch<Resolved> {
        let pin = entry
            .sha256
            .clone()
            .ok_or_else(|| Error::Load(format!("{uri}: a URL source needs a pinned sha256")))?;
        let path = if self.cache.has(Kind::File, &pin) {
            // The content is named by its digest: what is stored is what the URL must serve.
            self.cache.path(Kind::File, &pin)
        } else {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| Error::Load(format!("{uri}: not a URL: {e}")))?;
            let temp = self.cache.temp("part");
            let downloaded = self
                .http
                .download(
                    &format!("GET {url}"),
                    |c| c.get(parsed.clone()),
                    &temp,
                    None,
                )
                .await;
            let (digest, _) = match downloaded {
                Ok(d) => d,
                Err(f) => {
                    cache::remove(&temp);
                    return Err(SourceError::from_failure(f.context(uri)));
                }
            };
            if digest != pin {
                cache::remove(&temp);
                return Err(SourceError::Failed(Error::Load(format!(
                    "sha256 mismatch for {uri}: the manifest pins {pin} but the download's digest \
                     is {digest}; nothing was stored or loaded"
                ))));
            }
            self.cache.commit(Kind::File, &temp, &digest)?
        };
        let provenance = Provenance {
            source: Some(uri.to_string()),
            artifact_location: Some(uri.to_string()),
            downloaded: Some(now_rfc3339()),
            ..Provenance::default()
        };
        let key = self.key(uri);
        let provenance = match self.cache.read_ref(&key) {
            Some(r) if r.digest == pin => r.provenance,
            _ => {
                self.record(&key, Kind::File, &pin, &pin, &provenance);
                provenance
            }
        };
        Ok(Resolved {
            path,
            provenance,
            stale: None,
        })
    }

    /// `s3://`: one object or a prefix; downloaded again only when the ETags changed.
    async fn fetch_s3(
        &self,
        entry: &ModelEntry,
        uri: &ModelUri,
        bucket: &str,
        key: &str,
    ) -> Fetch<Resolved> {
        let store = s3::Bucket::open(&self.settings, bucket)?;
        let objects = store.list(key).await.map_err(SourceError::from_failure)?;
        let identity = objects
            .iter()
            .map(|o| {
                format!(
                    "{} {} {}\n",
                    o.relative,
                    o.size,
                    o.e_tag.as_deref().unwrap_or("-")
                )
            })
            .collect::<String>();
        let cache_key = self.key(uri);
        let location = format!("{uri} at {}", store.endpoint);
        if let Some(record) = self
            .cache
            .read_ref(&cache_key)
            .filter(|r| r.identity == identity)
        {
            return Ok(self.stored(entry, record)?);
        }
        let single = !key.ends_with('/');
        let (kind, digest) = if single {
            let temp = self.cache.temp("part");
            let digest = match store.download(&objects[0], &temp).await {
                Ok(d) => d,
                Err(f) => {
                    cache::remove(&temp);
                    return Err(SourceError::from_failure(f));
                }
            };
            self.cache.commit(Kind::File, &temp, &digest)?;
            (Kind::File, digest)
        } else {
            let temp = self.cache.temp("tree");
            let filled = download_objects(&store, &objects, &temp).await;
            let digest = self.store_tree(&temp, filled)?;
            (Kind::Tree, digest)
        };
        let provenance = Provenance {
            source: Some(uri.to_string()),
            artifact_location: Some(location),
            downloaded: Some(now_rfc3339()),
            ..Provenance::default()
        };
        let record = self.record(&cache_key, kind, &digest, &identity, &provenance);
        Ok(self.stored(entry, record)?)
    }

    /// `models:/`: the version resolved through the registry, its directory downloaded unless
    /// that version is already in the cache.
    async fn fetch_mlflow(
        &self,
        entry: &ModelEntry,
        uri: &ModelUri,
        name: &str,
        version: &oxinfer_core::source::MlflowVersion,
    ) -> Fetch<Resolved> {
        let registry = Registry::from_settings(self.settings.mlflow.tracking_uri.as_deref())?;
        let context = |f: Failure| {
            SourceError::from_failure(f.context(format!("{uri} ({})", registry.base())))
        };
        let found = registry
            .version(&self.http, name, version)
            .await
            .map_err(context)?;
        let model = registry
            .registered_model(&self.http, name)
            .await
            .map_err(context)?;
        let resolved_as = format!("{uri} (version {})", found.version);
        let context = |f: Failure| {
            SourceError::from_failure(f.context(format!("{resolved_as} ({})", registry.base())))
        };
        let location = registry
            .download_uri(&self.http, name, &found.version)
            .await
            .map_err(context)?;
        let provenance = Provenance {
            source: Some(uri.to_string()),
            registry_version: Some(found.version.clone()),
            run_id: found.run_id.clone().filter(|r| !r.is_empty()),
            created: found.creation_timestamp.and_then(|ms| {
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .ok()?
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
            artifact_location: Some(location.clone()),
            description: found
                .description
                .clone()
                .filter(|d| !d.is_empty())
                .or(model.description.clone().filter(|d| !d.is_empty())),
            tags: mlflow::tags(&model, &found),
            ..Provenance::default()
        };
        // One registry version's files never change: keyed by version, they are fetched once.
        let version_key = self.key(&ModelUri::Mlflow {
            name: name.to_string(),
            version: oxinfer_core::source::MlflowVersion::Number(
                found.version.parse().unwrap_or(0),
            ),
        });
        let record = match self
            .cache
            .read_ref(&version_key)
            .filter(|r| r.identity == location)
        {
            Some(record) => Ref {
                provenance: Provenance {
                    downloaded: record.provenance.downloaded.clone(),
                    ..provenance
                },
                ..record
            },
            None => {
                let digest =
                    self.download_mlflow(&registry, &location)
                        .await
                        .map_err(|f| match f {
                            SourceError::Unreachable(f) => {
                                SourceError::Unreachable(f.context(&resolved_as))
                            }
                            SourceError::Failed(e) => {
                                SourceError::Failed(Error::Load(format!("{resolved_as}: {e}")))
                            }
                        })?;
                Ref {
                    key: version_key.clone(),
                    kind: Kind::Tree,
                    digest,
                    identity: location.clone(),
                    provenance: Provenance {
                        downloaded: Some(now_rfc3339()),
                        ..provenance
                    },
                    resolved_at: now_rfc3339(),
                }
            }
        };
        self.record(
            &version_key,
            Kind::Tree,
            &record.digest,
            &location,
            &record.provenance,
        );
        let written = self.record(
            &self.key(uri),
            Kind::Tree,
            &record.digest,
            &location,
            &record.provenance,
        );
        self.stored(entry, written)
            .map_err(|e| SourceError::Failed(Error::Load(format!("{resolved_as}: {e}"))))
    }

    /// Downloads a registry version's directory from its artifact location into the cache;
    /// returns the directory's digest.
    async fn download_mlflow(&self, registry: &Registry, location: &str) -> Fetch<String> {
        let temp = self.cache.temp("tree");
        let filled = self.download_location(registry, location, &temp).await;
        self.store_tree(&temp, filled)
    }

    /// Stores the directory downloaded into `temp` (its files and their digests in `filled`)
    /// and returns its digest; when the download failed, removes what it left.
    fn store_tree(&self, temp: &Path, filled: Fetch<Vec<(String, String)>>) -> Fetch<String> {
        match filled {
            Ok(mut files) => {
                let digest = digest::listing_sha256(&mut files);
                self.commit_tree(temp, &digest)?;
                Ok(digest)
            }
            Err(e) => {
                cache::remove(temp);
                Err(e)
            }
        }
    }

    async fn download_location(
        &self,
        registry: &Registry,
        location: &str,
        temp: &Path,
    ) -> Fetch<Vec<(String, String)>> {
        std::fs::create_dir_all(temp).map_err(|e| {
            Error::Load(format!(
                "model cache: cannot create {}: {e}",
                temp.display()
            ))
        })?;
        let mut files = Vec::new();
        if let Some(root) = Registry::artifacts_path(location) {
            let listed = registry
                .list(&self.http, &root)
                .await
                .map_err(SourceError::from_failure)?;
            if listed.is_empty() {
                return Err(SourceError::Failed(Error::Load(format!(
                    "the artifact location {location} holds no files"
                ))));
            }
            for file in listed {
                let to = prepare(temp, &file.relative)?;
                let (digest, _) = self
                    .http
                    .download(
                        &format!("{location}/{}", file.relative),
                        |c| registry.artifact(c, &root, &file.relative),
                        &to,
                        file.size,
                    )
                    .await
                    .map_err(SourceError::from_failure)?;
                files.push((file.relative, digest));
            }
        } else if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            let store = s3::Bucket::open(&self.settings, bucket)?;
            let prefix = format!("{}/", key.trim_end_matches('/'));
            let objects = store
                .list(&prefix)
                .await
                .map_err(SourceError::from_failure)?;
            files = download_objects(&store, &objects, temp).await?;
        } else if let Some(dir) = location
            .strip_prefix("file://")
            .or_else(|| location.starts_with('/').then_some(location))
        {
            // A path on this machine: only a registry on this machine may name one, or a remote
            // one could have the server copy any file it can read into the cache.
            if !registry.is_local() {
                return Err(SourceError::Failed(Error::Load(format!(
                    "the artifact location {location} is a local path, and the registry at {} is \
                     not on this machine; serve the tracking server with --serve-artifacts",
                    registry.base()
                ))));
            }
            copy_tree(Path::new(dir), temp, &mut files)?;
        } else {
            return Err(SourceError::Failed(Error::Load(format!(
                "the artifact location {location} is not one oxinfer downloads from \
                 (mlflow-artifacts:, s3:// or a local path); serve the tracking server with \
                 --serve-artifacts"
            ))));
        }
        Ok(files)
    }

    /// Stores a downloaded directory once what is on disk is what was downloaded (so that
    /// nothing removed or added meanwhile is stored as whole).
    fn commit_tree(&self, temp: &Path, digest: &str) -> Result<PathBuf> {
        match digest::model_sha256(temp) {
            Ok(on_disk) if on_disk == digest => self.cache.commit(Kind::Tree, temp, digest),
            other => {
                cache::remove(temp);
                Err(Error::Load(format!(
                    "model cache: the download in {} changed while it was written ({}); \
                     nothing was stored",
                    temp.display(),
                    match other {
                        Ok(d) => format!("its digest is {d}, the files downloaded make {digest}"),
                        Err(e) => e.to_string(),
                    }
                )))
            }
        }
    }

    /// Records a resolution in the cache (a failure to write it is logged, not fatal: the
    /// model is still served, only not from the cache when the source is down).
    fn record(
        &self,
        key: &str,
        kind: Kind,
        digest: &str,
        identity: &str,
        provenance: &Provenance,
    ) -> Ref {
        let record = Ref {
            key: key.to_string(),
            kind,
            digest: digest.to_string(),
            identity: identity.to_string(),
            provenance: provenance.clone(),
            resolved_at: now_rfc3339(),
        };
        if let Err(e) = self.cache.write_ref(key, &record) {
            tracing::warn!("{e}");
        }
        record
    }

    /// The resolution for a record whose content is in the cache.
    fn stored(&self, entry: &ModelEntry, record: Ref) -> Result<Resolved> {
        let stored = self.cache.path(record.kind, &record.digest);
        let path = match record.kind {
            Kind::File => stored,
            Kind::Tree => mlmodel::served_path(&stored, &entry.runtime)?,
        };
        Ok(Resolved {
            path,
            provenance: record.provenance,
            stale: None,
        })
    }
}

/// Why a fetch failed: the source could not be reached (the cache may stand in), or a definite
/// failure.
enum SourceError {
    Unreachable(Failure),
    Failed(Error),
}

type Fetch<T> = std::result::Result<T, SourceError>;

impl SourceError {
    fn from_failure(f: Failure) -> SourceError {
        if f.transient {
            SourceError::Unreachable(f)
        } else {
            SourceError::Failed(f.into())
        }
    }
}

impl From<Error> for SourceError {
    fn from(e: Error) -> SourceError {
        SourceError::Failed(e)
    }
}

/// Downloads S3 objects into `dir` at their paths relative to the prefix; returns each one's
/// path and digest.
async fn download_objects(
    store: &s3::Bucket,
    objects: &[s3::Object],
    dir: &Path,
) -> Fetch<Vec<(String, String)>> {
    let mut files = Vec::with_capacity(objects.len());
    for object in objects {
        let to = prepare(dir, &object.relative)?;
        let digest = store
            .download(object, &to)
            .await
            .map_err(SourceError::from_failure)?;
        files.push((object.relative.clone(), digest));
    }
    Ok(files)
}

/// A new file at `relative` (checked) under `dir`, its parent directories made.
fn prepare(dir: &Path, relative: &str) -> Result<PathBuf> {
    mlflow::check_relative(relative).map_err(Error::from)?;
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::Load(format!(
                "model cache: cannot create {}: {e}",
                parent.display()
            ))
        })?;
    }
    Ok(path)
}

/// Copies the regular files under `from` (an artifact location on a local file system) into
/// `to`, collecting each one's relative path and digest.
fn copy_tree(from: &Path, to: &Path, files: &mut Vec<(String, String)>) -> Result<()> {
    let mut pending = vec![(from.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::Load(format!("cannot list {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| Error::Load(format!("cannot read {}: {e}", path.display())))?;
            if kind.is_dir() {
                if depth >= 32 {
                    return Err(Error::Load(format!(
                        "{} nests deeper than 32 directories",
                        from.display()
                    )));
                }
                pending.push((path, relative, depth + 1));
            } else if !kind.is_file() {
                return Err(Error::Load(format!(
                    "{} is not a regular file or directory; a model directory holds only those",
                    path.display()
                )));
            } else {
                if files.len() >= mlflow::MAX_FILES {
                    return Err(Error::Load(format!(
                        "{} holds more than {} files",
                        from.display(),
                        mlflow::MAX_FILES
                    )));
                }
                let target = prepare(to, &relative)?;
                let mut source = std::fs::File::open(&path)
                    .map_err(|e| Error::Load(format!("cannot read {}: {e}", path.display())))?;
                let mut sink = Sink::create(&target).map_err(Error::from)?;
                let mut buffer = vec![0u8; 1 << 20];
                loop {
                    let n = std::io::Read::read(&mut source, &mut buffer)
                        .map_err(|e| Error::Load(format!("cannot read {}: {e}", path.display())))?;
                    if n == 0 {
                        break;
                    }
                    sink.write(&buffer[..n]).map_err(Error::from)?;
                }
                let (digest, _) = sink.finish().map_err(Error::from)?;
                files.push((relative, digest));
            }
        }
    }
    Ok(())
}

/// The provenance a model is served with: the entry's own `[models.provenance]` keys over what
/// the source reported. A key both set and different is logged (the manifest wins).
pub fn merge_provenance(entry: &ModelEntry, from_source: &Provenance) -> Provenance {
    let written = &entry.provenance;
    let mut merged = from_source.clone();
    let conflict = |key: &str, ours: &str, theirs: &str| {
        tracing::warn!(
            model = %entry.name,
            version = %entry.version,
            "provenance.{key}: the manifest says '{ours}' and the source says '{theirs}'; \
             the manifest's is reported"
        );
    };
    for (ours, theirs, key) in [
        (&written.source, &mut merged.source, "source"),
        (
            &written.registry_version,
            &mut merged.registry_version,
            "registry_version",
        ),
        (&written.run_id, &mut merged.run_id, "run_id"),
        (&written.created, &mut merged.created, "created"),
        (&written.model_card, &mut merged.model_card, "model_card"),
        (
            &written.artifact_location,
            &mut merged.artifact_location,
            "artifact_location",
        ),
        (&written.description, &mut merged.description, "description"),
        (&written.downloaded, &mut merged.downloaded, "downloaded"),
    ] {
        if let Some(ours) = ours {
            if let Some(theirs) = theirs.as_ref().filter(|t| *t != ours) {
                conflict(key, ours, theirs);
            }
            *theirs = Some(ours.clone());
        }
    }
    for (ours, theirs, key) in [
        (&written.labels, &mut merged.labels, "labels"),
        (&written.tags, &mut merged.tags, "tags"),
    ] {
        for (k, v) in ours {
            if let Some(previous) = theirs.insert(k.clone(), v.clone()).filter(|p| p != v) {
                conflict(&format!("{key}.{k}"), v, &previous);
            }
        }
    }
    merged
}
