//! A loaded model version, and how a manifest entry becomes one: digest (checked against a pin),
//! the runtime's load, one instance per scheduler worker where needed, the scheduler, and the
//! one "model loaded" log line for every runtime.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use oxinfer_core::{
    DataType, Error, LoadRequest, Manifest, Model, ModelEntry, ModelSignature, Result,
};

use crate::models::registry::RuntimeRegistry;
use crate::scheduler::Scheduler;
use crate::telemetry::ModelTelemetry;
use crate::telemetry::inference_log::{ModelRecord, Origin};
use oxinfer_sources::digest;

/// One loaded model version, ready to serve.
pub struct ServedModel {
    /// The model's name.
    pub name: String,
    /// The version, as served on the wire (`"1"`).
    pub version: String,
    /// The runtime's `platform` string.
    pub(crate) platform: &'static str,
    /// The manifest entry it was loaded from (for a model named by URI: its path the local
    /// copy, its provenance the source's merged with the manifest's).
    pub entry: ModelEntry,
    /// The loaded model (the first instance when the model is loaded once per instance).
    pub(crate) model: Arc<dyn Model>,
    /// The queue and worker threads that execute its requests.
    pub(crate) scheduler: Scheduler,
    /// The SHA-256 of the model's file (or the stable digest of its directory), as loaded.
    pub sha256: String,
    /// The model as its inference log records name it (with where it was fetched from, for
    /// a model named by URI).
    pub(crate) record: Arc<ModelRecord>,
    /// Its statistics and metrics.
    pub(crate) telemetry: Arc<ModelTelemetry>,
    /// How it is served over the embedding APIs, for a text-embedding model.
    pub(crate) embedding: Option<EmbeddingSpec>,
    /// When it finished loading.
    pub(crate) loaded_at: SystemTime,
}

/// A `tokenizer.json` as it is read: special tokens added, no padding, no truncation.
#[cfg(feature = "tokenizers")]
fn load_tokenizer(path: &std::path::Path) -> Result<Arc<tokenizers::Tokenizer>> {
    let mut tokenizer = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| Error::Load(format!("cannot load {}: {e}", path.display())))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
    Ok(Arc::new(tokenizer))
}

impl EmbeddingSpec {
    /// Tokenizes texts with the tokenizer the server loaded for the model, if any.
    pub(crate) fn tokenize(&self, texts: &[&str]) -> Option<Result<Vec<Vec<oxinfer_core::Token>>>> {
        #[cfg(feature = "tokenizers")]
        if let Some(tokenizer) = &self.tokenizer {
            return Some(oxinfer_core::runtime::tokenize_texts(tokenizer, texts));
        }
        let _ = texts;
        None
    }
}

/// The most bytes a warmup request file may have.
const MAX_WARMUP_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A model file up to this size is digested on the loading thread, before the runtime loads it
/// (at most about 0.2 ms at SHA-NI speed), not on a thread of its own alongside. A thread
/// started and ended per model left memory resident (the allocator's pages for that thread,
/// the stack glibc keeps for the next thread): 1,000 tiny models took 100 MiB of RSS with a
/// digest thread each and 84 MiB without, and were ready in 0.22 s instead of 0.28-0.30 s.
const INLINE_DIGEST_BYTES: u64 = 256 * 1024;

/// Runs the warmup requests on every distinct instance; returns the executions.
fn warm_up(
    warmup: &oxinfer_core::Warmup,
    name: &str,
    signature: &ModelSignature,
    instances: &[Arc<dyn Model>],
) -> Result<usize> {
    use oxinfer_core::protocol::json;
    let mut requests = Vec::new();
    if warmup.zeros {
        let inputs = signature
            .inputs
            .iter()
            .map(|meta| {
                let shape: Vec<usize> = meta.shape.iter().map(|&d| d.max(1) as usize).collect();
                let size = meta.datatype.size().ok_or_else(|| {
                    Error::invalid(format!(
                        "zeros = true cannot build {} input '{}'; give a request",
                        meta.datatype, meta.name
                    ))
                })?;
                let bytes = shape.iter().product::<usize>() * size;
                oxinfer_core::Tensor::new(
                    meta.name.clone(),
                    meta.datatype,
                    shape,
                    oxinfer_core::TensorData::Raw(bytes::Bytes::from(vec![0u8; bytes])),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        requests.push(("zeros".to_string(), inputs));
    }
    let decode = |label: String, body: Vec<u8>| -> Result<(String, Vec<oxinfer_core::Tensor>)> {
        let request = json::decode_infer_request(&bytes::Bytes::from(body), None)
            .map_err(|e| Error::invalid(format!("{label}: {e}")))?;
        Ok((label, request.inputs))
    };
    for file in &warmup.requests {
        let label = file.display().to_string();
        let size = std::fs::metadata(file)
            .map_err(|e| Error::invalid(format!("{label}: {e}")))?
            .len();
        if size > MAX_WARMUP_FILE_BYTES {
            return Err(Error::invalid(format!(
                "{label}: {size} bytes, over the {MAX_WARMUP_FILE_BYTES} a warmup request may have"
            )));
        }
        let body = std::fs::read(file).map_err(|e| Error::invalid(format!("{label}: {e}")))?;
        requests.push(decode(label, body)?);
    }
    if !warmup.inputs.is_empty() {
        let body = serde_json::to_vec(&serde_json::json!({ "inputs": warmup.inputs }))
            .map_err(|e| Error::invalid(e.to_string()))?;
        requests.push(decode("the inline request".into(), body)?);
    }
    let mut distinct: Vec<&Arc<dyn Model>> = Vec::new();
    for instance in instances {
        if !distinct.iter().any(|d| Arc::ptr_eq(d, instance)) {
            distinct.push(instance);
        }
    }
    let mut runs = 0;
    for (label, tensors) in requests {
        // The checks a client's request gets.
        let inputs = signature
            .arrange_inputs(name, tensors)
            .map_err(|e| Error::invalid(format!("{label}: {e}")))?;
        for instance in &distinct {
            for _ in 0..warmup.count {
                let outputs = instance
                    .execute(inputs.clone())
                    .map_err(|e| Error::invalid(format!("{label}: {e}")))?;
                if outputs.len() != signature.outputs.len() {
                    return Err(Error::invalid(format!(
                        "{label}: the model returned {} outputs but declares {}",
                        outputs.len(),
                        signature.outputs.len()
                    )));
                }
                runs += 1;
            }
        }
    }
    Ok(runs)
}

/// How a text-embedding model is served over `/v1/embeddings` and `/embed`: what the runtime
/// says of it ([`Model::embedder`]) with the manifest's `[models.embeddings]` over it.
#[derive(Clone)]
pub(crate) struct EmbeddingSpec {
    /// The BYTES input, one string per row.
    pub(crate) input: String,
    /// The FP32 output, one vector per row.
    pub(crate) output: String,
    /// The vectors' length.
    pub(crate) dimensions: usize,
    /// The longest input in tokens, when the model has a limit.
    pub(crate) max_input_tokens: Option<usize>,
    /// Whether the vectors are already L2-normalised.
    pub(crate) normalized: bool,
    /// Whether the model cuts inputs longer than `max_input_tokens`.
    pub(crate) truncates: bool,
    /// Whether a prefix of a vector is an embedding too (OpenAI's `dimensions`).
    pub(crate) matryoshka: bool,
    /// The most inputs one request may carry.
    pub(crate) max_client_batch_size: usize,
    /// Pooling, for TEI's `/info`.
    pub(crate) pooling: Option<String>,
    /// The most padded tokens per forward pass, for TEI's `/info`.
    pub(crate) max_batch_tokens: Option<usize>,
    /// A tokenizer the server loaded for a model whose runtime does not tokenize.
    #[cfg(feature = "tokenizers")]
    tokenizer: Option<Arc<tokenizers::Tokenizer>>,
}

impl std::fmt::Debug for EmbeddingSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingSpec")
            .field("input", &self.input)
            .field("output", &self.output)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

impl EmbeddingSpec {
    /// The spec of a loaded model, or why its `[models.embeddings]` does not fit it.
    fn of(entry: &ModelEntry, model: &dyn Model) -> Result<Option<EmbeddingSpec>> {
        let declared = entry.embeddings.clone();
        let described = model.embedder();
        if declared.is_none() && described.is_none() {
            return Ok(None);
        }
        let table = declared.clone().unwrap_or_default();
        let signature = model.signature();
        let fail = |msg: String| Err(Error::Load(format!("[models.embeddings]: {msg}")));
        let input = match (&table.input, &described) {
            (Some(name), _) => name.clone(),
            (None, Some(d)) => d.input.clone(),
            (None, None) => return fail("`input` (the BYTES text input) is needed".into()),
        };
        let output = match (&table.output, &described) {
            (Some(name), _) => name.clone(),
            (None, Some(d)) => d.output.clone(),
            (None, None) => return fail("`output` (the FP32 embedding output) is needed".into()),
        };
        match signature.input(&input) {
            Some((_, meta)) if meta.datatype == DataType::Bytes && meta.shape == [-1] => {}
            Some((_, meta)) => {
                return fail(format!(
                    "input '{input}' is {} {:?}; a text input is BYTES [-1] (one string per row)",
                    meta.datatype, meta.shape
                ));
            }
            None => return fail(format!("the model has no input '{input}'")),
        }
        if signature.inputs.len() != 1 {
            return fail(format!(
                "the model has {} inputs; an embedding model takes only its text",
                signature.inputs.len()
            ));
        }
        let dimensions = match signature.output(&output) {
            Some((_, meta))
                if meta.datatype == DataType::Fp32
                    && meta.shape.len() == 2
                    && meta.shape[0] == -1
                    && meta.shape[1] > 0 =>
            {
                meta.shape[1] as usize
            }
            Some((_, meta)) => {
                return fail(format!(
                    "output '{output}' is {} {:?}; an embedding output is FP32 [-1, d]",
                    meta.datatype, meta.shape
                ));
            }
            None => return fail(format!("the model has no output '{output}'")),
        };
        #[cfg(feature = "tokenizers")]
        let tokenizer = match &table.tokenizer {
            Some(path) => Some(load_tokenizer(path)?),
            None if described.is_none() => {
                let beside = if entry.path.is_dir() {
                    entry.path.join("tokenizer.json")
                } else {
                    entry.path.with_file_name("tokenizer.json")
                };
                beside
                    .is_file()
                    .then(|| load_tokenizer(&beside))
                    .transpose()?
            }
            None => None,
        };
        #[cfg(not(feature = "tokenizers"))]
        if let Some(path) = &table.tokenizer {
            return fail(format!(
                "tokenizer = {}: this binary was built without tokenizers (the candle feature \
                 brings them)",
                path.display()
            ));
        }
        Ok(Some(EmbeddingSpec {
            #[cfg(feature = "tokenizers")]
            tokenizer,
            input,
            output,
            dimensions,
            max_input_tokens: described.as_ref().and_then(|d| d.max_input_tokens),
            normalized: table
                .normalized
                .or(described.as_ref().map(|d| d.normalized))
                .unwrap_or(false),
            truncates: described.as_ref().is_some_and(|d| d.truncates),
            matryoshka: table.matryoshka,
            max_client_batch_size: table.max_client_batch_size,
            max_batch_tokens: described.as_ref().and_then(|d| d.max_batch_tokens),
            pooling: described.and_then(|d| d.pooling),
        }))
    }
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
        // A pinned digest is checked before the runtime reads anything of the files: a file
        // that is not the one pinned is never parsed.
        let pinned = match &entry.sha256 {
            Some(pinned) => {
                let sha256 = digest::model_sha256(&entry.path)?;
                if *pinned != sha256 {
                    return Err(Error::Load(format!(
                        "sha256 mismatch for {}: the manifest pins {pinned} but the file's digest \
                         is {sha256}; refusing to load it",
                        entry.path.display()
                    )));
                }
                Some(sha256)
            }
            None => None,
        };
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
        // Without a pin, the digest (recorded for provenance) is taken on its own thread while
        // the runtime loads, so that it does not add to the time to ready; a small file's is
        // taken here, first (less time than starting a thread, and a thread per model left
        // memory resident: see INLINE_DIGEST_BYTES).
        let (loaded, sha256) = match pinned {
            Some(sha256) => (runtime.load(&request), Ok(sha256)),
            None if std::fs::metadata(&entry.path)
                .is_ok_and(|m| m.is_file() && m.len() <= INLINE_DIGEST_BYTES) =>
            {
                let sha256 = digest::model_sha256(&entry.path);
                (runtime.load(&request), sha256)
            }
            None => std::thread::scope(|scope| {
                let digesting = scope.spawn(|| digest::model_sha256(&entry.path));
                let loaded = runtime.load(&request);
                let sha256 = digesting.join().unwrap_or_else(|_| {
                    Err(Error::Internal("the model's digest thread panicked".into()))
                });
                (loaded, sha256)
            }),
        };
        // A file that cannot be read is reported as such, before whatever the runtime made of it.
        let sha256 = sha256?;
        let model: Arc<dyn Model> = Arc::from(loaded?);
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
        if let Some(warmup) = &entry.warmup {
            let warming = Instant::now();
            let runs = warm_up(warmup, &entry.name, model.signature(), &instances)
                .map_err(|e| Error::Load(format!("warmup failed: {e}")))?;
            tracing::info!(
                model = entry.name.as_str(),
                version = entry.version.as_str(),
                runs,
                elapsed_ms = warming.elapsed().as_millis() as u64,
                "model warmed up"
            );
        }
        let embedding = EmbeddingSpec::of(entry, model.as_ref())?;
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
            runtime_detected = entry.runtime_detected,
            instances = config.instances,
            details = %details,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let record = Arc::new(ModelRecord {
            name: entry.name.clone(),
            version: entry.version.clone(),
            sha256: Some(sha256.clone()),
            origin: entry.uri.as_ref().map(|uri| Origin {
                source: uri.to_string(),
                registry_version: entry.provenance.registry_version.clone(),
            }),
        });
        Ok(ServedModel {
            name: entry.name.clone(),
            version: entry.version.clone(),
            platform: runtime.platform(),
            entry: entry.clone(),
            model,
            scheduler,
            sha256,
            record,
            telemetry,
            embedding,
            loaded_at: SystemTime::now(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use oxinfer_core::{Runtime, Tensor};
    use sha2::Digest;

    /// Loads any file as a model that does nothing.
    struct AnyFile(ModelSignature);

    impl Runtime for AnyFile {
        fn name(&self) -> &'static str {
            "any-file"
        }
        fn platform(&self) -> &'static str {
            "any-file"
        }
        fn load(&self, _: &LoadRequest<'_>) -> Result<Box<dyn Model>> {
            Ok(Box::new(AnyFile(self.0.clone())))
        }
    }

    impl Model for AnyFile {
        fn signature(&self) -> &ModelSignature {
            &self.0
        }
        fn execute(&self, _: Vec<Tensor>) -> Result<Vec<Tensor>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn the_digest_is_the_files_whether_taken_inline_or_on_its_own_thread() {
        let dir = std::env::temp_dir().join(format!("oxinfer-served-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut registry = RuntimeRegistry::new();
        registry.register(Arc::new(AnyFile(ModelSignature {
            inputs: Vec::new(),
            outputs: Vec::new(),
        })));
        // At the limit (digested before the load), one byte over and a few read buffers long
        // (on a thread of its own, in several reads).
        let limit = INLINE_DIGEST_BYTES as usize;
        for len in [0, 1, limit, limit + 1, 5 * 64 * 1024 + 7] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.join(format!("model-{len}.bin"));
            std::fs::write(&path, &bytes).unwrap();
            let text = format!(
                "[[models]]\nname = \"m\"\nruntime = \"any-file\"\npath = \"{}\"\n",
                path.display()
            );
            let manifest = Manifest::parse(&text, &dir.join("m.toml")).unwrap();
            let model = ServedModel::load(&registry, &manifest, &manifest.models[0]).unwrap();
            assert_eq!(
                model.sha256,
                hex::encode(sha2::Sha256::digest(&bytes)),
                "{len} bytes"
            );
        }
        // A file gone between the manifest's check and the load.
        std::fs::write(dir.join("gone.bin"), b"gone").unwrap();
        let missing = Manifest::parse(
            "[[models]]\nname = \"m\"\nruntime = \"any-file\"\npath = \"gone.bin\"\n",
            &dir.join("m.toml"),
        )
        .unwrap();
        std::fs::remove_file(dir.join("gone.bin")).unwrap();
        let e = ServedModel::load(&registry, &missing, &missing.models[0])
            .expect_err("a missing file is an error");
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
