//! The candle runtime: transformer encoders written in Rust (candle-transformers) with weights
//! from safetensors, serving sentence embeddings. Strings in, vectors out, the way
//! text-embeddings-inference serves them, behind the Open Inference Protocol.
//!
//! Selected with `runtime = "candle"`; `path` is a model directory holding `config.json`,
//! `model.safetensors` (memory-mapped) and `tokenizer.json`. The sentence-transformers files are
//! honoured when present: `modules.json` (a `Normalize` module turns on L2 normalisation, the
//! `Pooling` module's folder gives the pooling), `1_Pooling/config.json` (mean, CLS or max
//! pooling) and `sentence_bert_config.json` (`max_seq_length`). The manifest overrides each.
//!
//! Served tensors:
//! - `input = "text"` (default): input `text`, BYTES `[-1]`, a batch of UTF-8 strings;
//! - `input = "tokens"`: inputs `input_ids`, `attention_mask`, `token_type_ids`, INT64
//!   `[-1, -1]`, already tokenized (the inputs of the usual ONNX exports of the same model);
//! - output `embedding`, FP32 `[-1, hidden_size]`, one pooled (and normalised) vector per row.
//!
//! A batch runs as one forward pass, padded to its longest sequence, with the attention mask
//! keeping the padding out of attention and pooling: a sentence embeds the same alone as in a
//! batch.
//!
//! Options (`[models.options]`, unknown keys are an error):
//!
//! ```toml
//! [models.options]
//! architecture = "bert"        # default: config.json's model_type / architectures
//! input = "text"               # text | tokens
//! pooling = "mean"             # mean | cls | max; default: 1_Pooling/config.json, else mean
//! normalize = true             # default: whether modules.json has a Normalize module
//! max_sequence_length = 256    # tokens, [CLS]/[SEP] included; default: sentence_bert_config.json,
//!                              # else config.json's max_position_embeddings
//! truncate = true              # false: a longer input is an error instead of being cut
//! device = "cpu"               # cpu | cuda:N (needs a binary built with the `candle-cuda` feature)
//! dtype = "f32"                # f32 | f16 | bf16 (weights and compute; output is always FP32)
//! max_rows = 1024              # strings (or token rows) per execution; more is a 400
//! max_batch_tokens = 16384     # padded tokens per forward pass: bigger batches run in chunks
//! ```
//!
//! Memory per execution is bounded by those two: the forward pass runs over consecutive chunks
//! of rows, each padded to its own longest row, with at most `max_batch_tokens` padded tokens.

mod bert;
mod pooling;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use oxinfer_core::protocol::TensorMetadata;
use oxinfer_core::{DataType, Error, LoadRequest, Model, ModelSignature, Result, Runtime, Tensor};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

pub use pooling::Pooling;

/// The runtime factory registered as `candle`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CandleRuntime;

/// What the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum InputKind {
    /// `text`: BYTES strings, tokenized by the server.
    #[default]
    Text,
    /// `input_ids`, `attention_mask`, `token_type_ids`: INT64, tokenized by the client.
    Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WeightType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl WeightType {
    fn dtype(self) -> DType {
        match self {
            WeightType::F32 => DType::F32,
            WeightType::F16 => DType::F16,
            WeightType::Bf16 => DType::BF16,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CandleOptions {
    architecture: Option<String>,
    #[serde(default)]
    input: InputKind,
    pooling: Option<Pooling>,
    normalize: Option<bool>,
    max_sequence_length: Option<usize>,
    #[serde(default = "yes")]
    truncate: bool,
    #[serde(default = "cpu")]
    device: String,
    #[serde(default)]
    dtype: WeightType,
    #[serde(default = "default_max_rows")]
    max_rows: usize,
    #[serde(default = "default_max_batch_tokens")]
    max_batch_tokens: usize,
}

fn default_max_rows() -> usize {
    1024
}

fn default_max_batch_tokens() -> usize {
    16384
}

fn yes() -> bool {
    true
}

fn cpu() -> String {
    "cpu".to_string()
}

/// `[runtimes.candle]`: no process-wide settings; any key is an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CandleSettings {}

impl Runtime for CandleRuntime {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn platform(&self) -> &'static str {
        "candle_safetensors"
    }

    fn load(&self, request: &LoadRequest<'_>) -> Result<Box<dyn Model>> {
        let options: CandleOptions = request.parse_options()?;
        let CandleSettings {} = request.parse_settings()?;
        Ok(Box::new(EmbeddingModel::load(request.path, &options)?))
    }
}

/// Parses `cpu` / `cuda` / `cuda:N` into a candle device.
fn device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| bad_option(format!("device '{spec}': expected cpu or cuda:N")))?,
        None => {
            return Err(bad_option(format!(
                "device '{spec}': expected cpu or cuda:N"
            )));
        }
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal)
        .map_err(|e| Error::Load(format!("candle cannot open CUDA device {ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Err(bad_option(format!(
        "device 'cuda:{ordinal}': this oxinfer binary was built without CUDA support for candle; \
         rebuild with `cargo build --release -p oxinfer --features candle-cuda` (needs the CUDA \
         toolkit), or use device = \"cpu\""
    )))
}

fn bad_option(message: String) -> Error {
    Error::Manifest(format!("invalid options for runtime 'candle': {message}"))
}

fn load_err(dir: &Path, message: impl std::fmt::Display) -> Error {
    Error::Load(format!(
        "candle could not load {}: {message}",
        dir.display()
    ))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Load(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Load(format!("cannot parse {}: {e}", path.display())))
}

/// The parts of a Hugging Face `config.json` that name the architecture.
#[derive(Debug, Deserialize)]
struct ArchitectureHint {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

/// The architectures this runtime implements, by `model_type` and by class name.
fn architecture(dir: &Path, named: Option<&str>) -> Result<&'static str> {
    let bert = |s: &str| {
        let s = s.to_ascii_lowercase();
        s == "bert" || s.starts_with("bert") || s == "minilm"
    };
    let (what, ok) = match named {
        Some(name) => (name.to_string(), bert(name)),
        None => {
            let hint: ArchitectureHint = read_json(&dir.join("config.json"))?;
            let mut names = hint.model_type.into_iter().chain(hint.architectures);
            let first = names.next();
            let ok = first.as_deref().is_some_and(bert);
            (first.unwrap_or_else(|| "(none)".into()), ok)
        }
    };
    if ok {
        Ok("bert")
    } else {
        Err(load_err(
            dir,
            format!(
                "architecture '{what}' is not supported (supported: bert, which covers BERT and \
                 MiniLM checkpoints); name it with the option architecture = \"bert\" if the \
                 weights are BERT-shaped"
            ),
        ))
    }
}

/// One entry of a sentence-transformers `modules.json`.
#[derive(Debug, Deserialize)]
struct StModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// What the sentence-transformers files say, where present.
#[derive(Debug, Default)]
struct SentenceTransformers {
    pooling: Option<Pooling>,
    normalize: Option<bool>,
    max_seq_length: Option<usize>,
}

impl SentenceTransformers {
    fn read(dir: &Path) -> Result<Self> {
        let mut st = SentenceTransformers::default();
        let modules_path = dir.join("modules.json");
        let mut pooling_dir = Some(dir.join("1_Pooling"));
        if modules_path.is_file() {
            let modules: Vec<StModule> = read_json(&modules_path)?;
            st.normalize = Some(modules.iter().any(|m| m.kind.ends_with(".Normalize")));
            pooling_dir = modules
                .iter()
                .find(|m| m.kind.ends_with(".Pooling"))
                .map(|m| dir.join(&m.path));
        }
        if let Some(pooling_dir) = pooling_dir {
            let config = pooling_dir.join("config.json");
            if config.is_file() {
                st.pooling = Some(Pooling::from_sentence_transformers(&config)?);
            }
        }
        #[derive(Deserialize)]
        struct SbertConfig {
            max_seq_length: Option<usize>,
        }
        let sbert = dir.join("sentence_bert_config.json");
        if sbert.is_file() {
            st.max_seq_length = read_json::<SbertConfig>(&sbert)?.max_seq_length;
        }
        Ok(st)
    }
}

/// A loaded sentence-embedding model.
pub struct EmbeddingModel {
    /// Rows per execution, at most.
    max_rows: usize,
    /// Padded tokens per forward pass, at most.
    max_batch_tokens: usize,
    /// The token id and type id that pad a row.
    pad: (u32, u32),
    bert: bert::Bert,
    /// `Some` for `input = "text"`: padding to the batch's longest, truncation per the options.
    tokenizer: Option<Tokenizer>,
    device: Device,
    pooling: Pooling,
    normalize: bool,
    max_len: usize,
    truncate: bool,
    vocab_size: usize,
    type_vocab_size: usize,
    signature: ModelSignature,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("device", &self.device)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    fn load(dir: &Path, options: &CandleOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(load_err(
                dir,
                "path must be a model directory with config.json, model.safetensors and \
                 tokenizer.json",
            ));
        }
        let device = device(&options.device)?;
        architecture(dir, options.architecture.as_deref())?;
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let st = SentenceTransformers::read(dir)?;
        let pooling = options.pooling.or(st.pooling).unwrap_or(Pooling::Mean);
        let normalize = options.normalize.or(st.normalize).unwrap_or(false);
        let max_len = options
            .max_sequence_length
            .or(st.max_seq_length)
            .unwrap_or(config.max_position_embeddings);
        if max_len < 2 || max_len > config.max_position_embeddings {
            return Err(bad_option(format!(
                "max_sequence_length {max_len} must be between 2 and the model's \
                 max_position_embeddings ({})",
                config.max_position_embeddings
            )));
        }
        let (tokenizer, file_pad) = match options.input {
            InputKind::Text => {
                let (t, pad) = tokenizer(dir, max_len, options.truncate)?;
                (Some(t), pad)
            }
            InputKind::Tokens => (None, None),
        };
        let weights = weights_file(dir)?;
        let dtype = options.dtype.dtype();
        // SAFETY: the file is memory-mapped read-only; candle copies each tensor out of the
        // mapping while building the model and drops the mapping afterwards. A model file that
        // is rewritten while it loads is the one hazard, as for every mmap-based loader.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, &device) }
            .map_err(|e| load_err(dir, e))?;
        let bert = bert::Bert::load(vb, &config).map_err(|e| load_err(dir, e))?;
        let inputs = match options.input {
            InputKind::Text => vec![TensorMetadata::new("text", DataType::Bytes, vec![-1])],
            InputKind::Tokens => ["input_ids", "attention_mask", "token_type_ids"]
                .into_iter()
                .map(|n| TensorMetadata::new(n, DataType::Int64, vec![-1, -1]))
                .collect(),
        };
        let signature = ModelSignature {
            inputs,
            outputs: vec![TensorMetadata::new(
                "embedding",
                DataType::Fp32,
                vec![-1, config.hidden_size as i64],
            )],
        };
        let pad = file_pad.unwrap_or((config.pad_token_id as u32, 0));
        if options.max_rows == 0 || options.max_batch_tokens < max_len {
            return Err(bad_option(format!(
                "max_rows must be at least 1 and max_batch_tokens at least max_sequence_length \
                 ({max_len})"
            )));
        }
        let model = EmbeddingModel {
            max_rows: options.max_rows,
            max_batch_tokens: options.max_batch_tokens,
            pad,
            bert,
            tokenizer,
            device,
            pooling,
            normalize,
            max_len,
            truncate: options.truncate,
            vocab_size: config.vocab_size,
            type_vocab_size: config.type_vocab_size,
            signature,
        };
        // One tiny forward pass at load, so a broken model fails here and not on a request.
        let probe = model
            .forward(&[Row {
                ids: vec![0, 0],
                mask: vec![1, 1],
                types: vec![0, 0],
            }])
            .map_err(|e| load_err(dir, e))?;
        debug_assert_eq!(probe.len(), config.hidden_size);
        Ok(model)
    }

    /// Refuses more rows than `max_rows`, and empty batches.
    fn check_rows(&self, rows: usize, what: &str) -> Result<()> {
        if rows == 0 {
            return Err(Error::invalid(format!(
                "input '{what}': empty batch; send at least one row"
            )));
        }
        if rows > self.max_rows {
            return Err(Error::invalid(format!(
                "input '{what}': {rows} rows in one execution; this model takes at most \
                 max_rows = {}",
                self.max_rows
            )));
        }
        Ok(())
    }

    /// Tokenizes a batch of strings, one unpadded row each.
    fn tokenize(&self, tokenizer: &Tokenizer, input: &Tensor) -> Result<Vec<Row>> {
        self.check_rows(input.element_count(), "text")?;
        let texts = input.to_utf8_strings("candle")?;
        let encodings = tokenizer
            .encode_batch(texts, true)
            .map_err(|e| Error::invalid(format!("input 'text': cannot tokenize: {e}")))?;
        encodings
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                if !self.truncate && e.len() > self.max_len {
                    // Truncation is off in the tokenizer; refuse rather than cut.
                    return Err(Error::invalid(format!(
                        "input 'text': string {i} is {} tokens long, over the model's \
                         max_sequence_length {} (the option truncate = false refuses it)",
                        e.len(),
                        self.max_len
                    )));
                }
                Ok(Row {
                    ids: e.get_ids().to_vec(),
                    mask: e.get_attention_mask().to_vec(),
                    types: e.get_type_ids().to_vec(),
                })
            })
            .collect()
    }

    /// Checks client-tokenized inputs and turns them into rows.
    fn check_tokens(&self, inputs: &[Tensor]) -> Result<Vec<Row>> {
        let [ids, mask, types] = inputs else {
            return Err(Error::Internal("expected three token tensors".into()));
        };
        let shape = ids.shape();
        for t in [mask, types] {
            if t.shape() != shape {
                return Err(Error::invalid(format!(
                    "inputs 'input_ids' {:?} and '{}' {:?} must have the same shape",
                    shape,
                    t.name(),
                    t.shape()
                )));
            }
        }
        let (rows, seq) = (shape[0], shape[1]);
        self.check_rows(rows, "input_ids")?;
        if seq == 0 || seq > self.max_len {
            return Err(Error::invalid(format!(
                "input 'input_ids': sequence length {seq} must be between 1 and the model's \
                 max_sequence_length {}",
                self.max_len
            )));
        }
        let convert = |t: &Tensor, bound: usize, what: &str| -> Result<Vec<u32>> {
            // Borrowed when aligned; the binary extension and gRPC raw contents may deliver the
            // data at any offset, and then it is copied.
            let values = match t.as_slice::<i64>() {
                Ok(slice) => std::borrow::Cow::Borrowed(slice),
                Err(_) => std::borrow::Cow::Owned(t.to_vec::<i64>()?),
            };
            values
                .iter()
                .map(|&v| {
                    if v >= 0 && (v as u64) < bound as u64 {
                        Ok(v as u32)
                    } else {
                        Err(Error::invalid(format!(
                            "input '{}': value {v} is out of range ({what} must be in 0..{bound})",
                            t.name()
                        )))
                    }
                })
                .collect()
        };
        let ids = convert(ids, self.vocab_size, "token ids")?;
        let mask = convert(mask, 2, "mask values")?;
        let types = convert(types, self.type_vocab_size, "token type ids")?;
        (0..rows)
            .map(|r| {
                let span = r * seq..(r + 1) * seq;
                if !mask[span.clone()].contains(&1) {
                    return Err(Error::invalid(format!(
                        "input 'attention_mask': row {r} keeps no token (all zeros)"
                    )));
                }
                Ok(Row {
                    ids: ids[span.clone()].to_vec(),
                    mask: mask[span.clone()].to_vec(),
                    types: types[span].to_vec(),
                })
            })
            .collect()
    }

    /// Embeds rows: consecutive chunks of at most `max_batch_tokens` padded tokens, each one
    /// padded forward pass. Returns the FP32 vectors, row-major.
    fn embed(&self, rows: &[Row]) -> candle_core::Result<Vec<f32>> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut longest = 0;
            while end < rows.len() {
                let next = longest.max(rows[end].ids.len());
                if end > start && next * (end + 1 - start) > self.max_batch_tokens {
                    break;
                }
                longest = next;
                end += 1;
            }
            out.extend(self.forward(&rows[start..end])?);
            start = end;
        }
        Ok(out)
    }

    /// One forward pass over rows padded to the longest of them: pooled (and normalised) FP32
    /// vectors, row-major.
    fn forward(&self, rows: &[Row]) -> candle_core::Result<Vec<f32>> {
        let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let shape = (rows.len(), seq);
        let padded = |pick: fn(&Row) -> &[u32], pad: u32| {
            let mut v = Vec::with_capacity(rows.len() * seq);
            for row in rows {
                let values = pick(row);
                v.extend_from_slice(values);
                v.resize(v.len() + seq - values.len(), pad);
            }
            CTensor::from_vec(v, shape, &self.device)
        };
        let ids = padded(|r| &r.ids, self.pad.0)?;
        let types = padded(|r| &r.types, self.pad.1)?;
        let mask = padded(|r| &r.mask, 0)?;
        // Pooling and normalisation in FP32 whatever the model's dtype (token counts and sums
        // over hundreds of tokens are not exact in half precision).
        let hidden = self
            .bert
            .forward(&ids, &types, &mask)?
            .to_dtype(DType::F32)?;
        let pooled = self.pooling.apply(&hidden, &mask)?;
        let pooled = if self.normalize {
            pooling::l2_normalize(&pooled)?
        } else {
            pooled
        };
        pooled.flatten_all()?.to_vec1::<f32>()
    }
}

/// One tokenized row, unpadded (client-tokenized rows keep their own padding and mask).
#[derive(Debug)]
struct Row {
    ids: Vec<u32>,
    mask: Vec<u32>,
    types: Vec<u32>,
}

fn weights_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("model.safetensors");
    if path.is_file() {
        Ok(path)
    } else {
        Err(load_err(
            dir,
            "no model.safetensors in the directory (candle serves safetensors weights; convert \
             a pytorch_model.bin first)",
        ))
    }
}

/// The model's tokenizer, set to truncate at `max_len` (or not at all when over-long strings
/// are to be refused) and not to pad: [`EmbeddingModel::forward`] pads each chunk to its own
/// longest row, on the right, whatever the file asks for (a fixed 128 in all-MiniLM-L6-v2's).
fn tokenizer(
    dir: &Path,
    max_len: usize,
    truncate: bool,
) -> Result<(Tokenizer, Option<(u32, u32)>)> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| Error::Load(format!("cannot load {}: {e}", path.display())))?;
    // The file's pad token and type id are kept for our own padding; the tokenizer never pads.
    let pad = tokenizer.get_padding().map(|p| (p.pad_id, p.pad_type_id));
    tokenizer.with_padding(None);
    let truncation = truncate.then(|| TruncationParams {
        max_length: max_len,
        ..tokenizer.get_truncation().cloned().unwrap_or_default()
    });
    tokenizer
        .with_truncation(truncation)
        .map_err(|e| Error::Load(format!("cannot set truncation on {}: {e}", path.display())))?;
    Ok((tokenizer, pad))
}

impl Model for EmbeddingModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn concurrent(&self) -> bool {
        true
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("device", format!("{:?}", self.device)),
            ("pooling", format!("{:?}", self.pooling)),
            ("normalize", self.normalize.to_string()),
            ("max_sequence_length", self.max_len.to_string()),
        ]
    }

    fn embedder(&self) -> Option<oxinfer_core::Embedder> {
        self.tokenizer.as_ref()?;
        Some(oxinfer_core::Embedder {
            input: self.signature.inputs[0].name.clone(),
            output: self.signature.outputs[0].name.clone(),
            dimensions: self.signature.outputs[0].shape[1] as usize,
            max_input_tokens: Some(self.max_len),
            normalized: self.normalize,
            truncates: self.truncate,
            pooling: Some(format!("{:?}", self.pooling).to_lowercase()),
            max_batch_tokens: Some(self.max_batch_tokens),
        })
    }

    fn tokenize(&self, texts: &[&str]) -> Option<Result<Vec<Vec<oxinfer_core::Token>>>> {
        let tokenizer = self.tokenizer.as_ref()?;
        Some(oxinfer_core::runtime::tokenize_texts(tokenizer, texts))
    }

    fn execute(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let rows = match &self.tokenizer {
            Some(tokenizer) => self.tokenize(tokenizer, &inputs[0])?,
            None => self.check_tokens(&inputs)?,
        };
        let values = self
            .embed(&rows)
            .map_err(|e| Error::Execution(format!("candle forward pass failed: {e}")))?;
        let hidden = values.len() / rows.len();
        Ok(vec![Tensor::from_vec(
            "embedding",
            vec![rows.len(), hidden],
            values,
        )?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_cuda_needs_the_feature() {
        assert!(matches!(device("cpu").unwrap(), Device::Cpu));
        for bad in ["gpu", "cuda:x", "cuda0", ""] {
            let e = device(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu or cuda:N"), "{bad}: {e}");
        }
        if cfg!(not(feature = "cuda")) {
            let e = device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("built without CUDA support"), "{e}");
        }
    }

    #[test]
    fn architecture_comes_from_the_option_or_config() {
        let dir = std::env::temp_dir().join(format!("oxinfer-candle-arch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
        let e = architecture(&dir, None).unwrap_err().to_string();
        assert!(e.contains("architecture 'gpt2' is not supported"), "{e}");
        assert_eq!(architecture(&dir, Some("bert")).unwrap(), "bert");
        std::fs::write(
            dir.join("config.json"),
            r#"{"architectures": ["BertModel"]}"#,
        )
        .unwrap();
        assert_eq!(architecture(&dir, None).unwrap(), "bert");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_reject_unknown_keys_and_values() {
        let parse = |s: &str| {
            toml::from_str::<toml::Table>(s)
                .unwrap()
                .try_into::<CandleOptions>()
        };
        assert!(parse("pooling = \"mean\"\ndtype = \"bf16\"").is_ok());
        assert!(parse("poolin = \"mean\"").is_err());
        assert!(parse("pooling = \"median\"").is_err());
        assert!(parse("input = \"images\"").is_err());
    }
}
