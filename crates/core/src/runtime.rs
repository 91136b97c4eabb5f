//! The runtime trait: how a backend (tract, ONNX Runtime, candle, a plugin) plugs into oxinfer.
//!
//! A [`Runtime`] is a factory registered under its manifest name; it turns one manifest entry
//! into a loaded [`Model`]. Both traits are synchronous on purpose: loading and executing a
//! model are CPU-bound, blocking work. The server calls them from threads reserved for that work,
//! not from its async I/O threads (unless a model says it may run anywhere,
//! [`Model::runs_on_any_thread`], and only for a lone fast request), so no runtime needs to know
//! about the async executor.
//!
//! Concurrency and batching are designed in:
//! - `Model: Send + Sync` and [`Model::execute`] takes `&self`: one loaded model may serve
//!   concurrent calls, and a runtime may be asked to [`Runtime::load`] the same entry several
//!   times to get independent instances.
//! - [`Model::execute`] runs *one batch*: when every input and output of a model has a dynamic
//!   first dimension ([`ModelSignature::batchable`]), a scheduler may concatenate the inputs of
//!   several requests along that dimension, execute once, and split the outputs back.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::protocol::TensorMetadata;
use crate::{Error, Result, Tensor};

/// What a runtime is given to load one model instance.
#[derive(Debug, Clone, Copy)]
pub struct LoadRequest<'a> {
    /// The [`Runtime::name`] of the runtime asked to load it (for messages).
    pub runtime: &'static str,
    /// The model's name in the manifest.
    pub name: &'a str,
    /// The model's version in the manifest.
    pub version: &'a str,
    /// The model file or directory, already resolved against the manifest's directory.
    pub path: &'a Path,
    /// The manifest's directory, for options that name other files.
    pub base_dir: &'a Path,
    /// The entry's `[models.options]` table, for the runtime to check and interpret.
    pub options: &'a toml::Table,
    /// The manifest's `[runtimes.<name>]` table for this runtime (empty when absent): settings
    /// shared by every model of the runtime, such as where a native library is.
    pub settings: &'a toml::Table,
    /// How many instances of this model the scheduler runs in parallel (`[models.scheduler]
    /// instances`). A runtime that starts threads of its own sizes them to share the cores
    /// among the instances instead of oversubscribing them.
    pub instances: usize,
}

impl LoadRequest<'_> {
    /// Deserializes the options into the runtime's own options type, which should use
    /// `#[serde(deny_unknown_fields)]` so that a misspelt key is an error.
    pub fn parse_options<T: DeserializeOwned>(&self) -> Result<T> {
        toml::Value::Table(self.options.clone())
            .try_into()
            .map_err(|e| {
                Error::Manifest(format!(
                    "invalid options for runtime '{}': {e}",
                    self.runtime
                ))
            })
    }

    /// Deserializes the `[runtimes.<name>]` settings, like [`LoadRequest::parse_options`].
    pub fn parse_settings<T: DeserializeOwned>(&self) -> Result<T> {
        toml::Value::Table(self.settings.clone())
            .try_into()
            .map_err(|e| {
                Error::Manifest(format!("invalid [runtimes.{}] settings: {e}", self.runtime))
            })
    }
}

/// The inputs and outputs a model declares. Shapes use `-1` for dynamic dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelSignature {
    /// The inputs, in the order [`Model::execute`] takes them.
    pub inputs: Vec<TensorMetadata>,
    /// The outputs, in the order [`Model::execute`] returns them.
    pub outputs: Vec<TensorMetadata>,
}

impl ModelSignature {
    /// The position and description of the input called `name`.
    pub fn input(&self, name: &str) -> Option<(usize, &TensorMetadata)> {
        self.inputs.iter().enumerate().find(|(_, t)| t.name == name)
    }

    /// The position and description of the output called `name`.
    pub fn output(&self, name: &str) -> Option<(usize, &TensorMetadata)> {
        self.outputs
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == name)
    }

    /// Checks one input against the signature: a declared input, with its datatype and a
    /// compatible shape (`-1` is any size). Returns its position and description. `model`
    /// names the model in the error.
    pub fn check_input(
        &self,
        model: &str,
        name: &str,
        datatype: crate::DataType,
        shape: &[usize],
    ) -> Result<(usize, &TensorMetadata)> {
        let Some((ix, meta)) = self.input(name) else {
            return Err(Error::invalid(format!(
                "model '{model}' has no input '{name}' (inputs: {})",
                list(&self.inputs)
            )));
        };
        if datatype != meta.datatype {
            return Err(Error::invalid(format!(
                "input '{}': datatype {datatype} does not match the model's {}",
                meta.name, meta.datatype
            )));
        }
        let fits = meta.shape.len() == shape.len()
            && meta
                .shape
                .iter()
                .zip(shape)
                .all(|(&d, &a)| d < 0 || d as u64 == a as u64);
        if !fits {
            return Err(Error::invalid(format!(
                "input '{}': shape {shape:?} does not match the model's {:?} (-1 is any size)",
                meta.name, meta.shape
            )));
        }
        Ok((ix, meta))
    }

    /// Puts a request's tensors in the signature's input order, each checked with
    /// [`ModelSignature::check_input`]: every declared input exactly once, no unknown ones.
    pub fn arrange_inputs(&self, model: &str, tensors: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for tensor in tensors {
            let (ix, meta) =
                self.check_input(model, tensor.name(), tensor.datatype(), tensor.shape())?;
            if slots[ix].replace(tensor).is_some() {
                return Err(Error::invalid(format!(
                    "input '{}' is given more than once",
                    meta.name
                )));
            }
        }
        slots
            .into_iter()
            .zip(&self.inputs)
            .map(|(slot, meta)| {
                slot.ok_or_else(|| {
                    Error::invalid(format!(
                        "missing input '{}' ({}, shape {:?})",
                        meta.name, meta.datatype, meta.shape
                    ))
                })
            })
            .collect()
    }

    /// Whether every input and output has a dynamic first dimension, so that requests can be
    /// concatenated along it and executed as one batch.
    pub fn batchable(&self) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .all(|t| t.shape.first() == Some(&-1))
    }
}

/// Tensor names for messages: `'a', 'b'`.
pub fn list(tensors: &[TensorMetadata]) -> String {
    tensors
        .iter()
        .map(|t| format!("'{}'", t.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A backend that loads models: registered under the name a manifest's `runtime` key uses.
pub trait Runtime: Send + Sync {
    /// The manifest name (`"tract"`, `"onnxruntime"`, ...).
    fn name(&self) -> &'static str;

    /// The `platform` reported in model metadata (`"onnx_tract"`, `"onnxruntime_onnx"`, ...).
    fn platform(&self) -> &'static str;

    /// Loads one instance of the model a manifest entry describes. Blocking; called once per
    /// instance at startup (or on an explicit reload), never per request.
    fn load(&self, request: &LoadRequest<'_>) -> Result<Box<dyn Model>>;
}

/// A loaded model instance.
pub trait Model: Send + Sync {
    /// The inputs and outputs, as the model file declares them.
    fn signature(&self) -> &ModelSignature;

    /// Executes one batch. The server has already checked `inputs` against
    /// [`Model::signature`]: there is exactly one tensor per declared input, in declaration
    /// order, with the declared datatype and a shape that fits the declared one. Returns one
    /// tensor per declared output, in declaration order.
    ///
    /// Errors caused by the input values (for example a shape the graph cannot take) should be
    /// [`Error::InvalidInput`]; failures of the runtime itself [`Error::Execution`].
    fn execute(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>>;

    /// Whether one loaded instance may run [`Model::execute`] on several threads at once and
    /// scale with them (tract and candle plans: yes; a session behind a lock: no). With
    /// `instances = N`, the scheduler shares one loaded model among its N workers when this is
    /// true (the weights are in memory once) and loads N independent instances otherwise.
    fn concurrent(&self) -> bool {
        false
    }

    /// Whether [`Model::execute`] may also run on one of the server's async I/O threads: true
    /// for a runtime that keeps no per-thread state, never blocks on I/O and does not wait on
    /// threads of its own (tract). For such a model the scheduler runs a request that would
    /// otherwise wait for nobody (no other request in the server, an empty queue, an idle first
    /// instance, small inputs, recent executions fast) on the thread that received it, saving
    /// the hand-off to a worker thread and back. Default false: always a worker thread.
    fn runs_on_any_thread(&self) -> bool {
        false
    }

    /// Counters the runtime keeps about this model (e.g. `plans_compiled`, `plan_cache_hits`),
    /// for statistics and metrics. Empty by default.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// How the runtime set the model up (e.g. tract's execution strategy, ONNX Runtime's
    /// execution providers), as key/value pairs for the server's "model loaded" log line.
    /// Empty by default.
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// For a text-embedding model (one string in, one vector out per row): which input and
    /// output those are and how it treats text, so the server can serve it over the OpenAI and
    /// TEI embedding APIs. `None` (the default) for other models; a manifest's
    /// `[models.embeddings]` declares it for models whose runtime does not.
    fn embedder(&self) -> Option<Embedder> {
        None
    }

    /// Tokenizes texts as the model does before it runs them (special tokens included), for
    /// token counts and TEI's `/tokenize`. `None` (the default) when the model has no
    /// tokenizer the server can call.
    fn tokenize(&self, texts: &[&str]) -> Option<Result<Vec<Vec<Token>>>> {
        let _ = texts;
        None
    }
}

/// What makes a model a text-embedding model ([`Model::embedder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedder {
    /// The `BYTES` input taking one string per row (shape `[-1]`).
    pub input: String,
    /// The `FP32` output with one vector per row (shape `[-1, dimensions]`).
    pub output: String,
    /// The length of each vector.
    pub dimensions: usize,
    /// The longest input, in tokens (special tokens included), when the model has a limit.
    pub max_input_tokens: Option<usize>,
    /// Whether the model's vectors are already L2-normalised.
    pub normalized: bool,
    /// Whether the model cuts inputs longer than `max_input_tokens` (else it refuses them).
    pub truncates: bool,
    /// How token vectors are pooled into one (`mean`, `cls`, ...), for TEI's `/info`.
    pub pooling: Option<String>,
    /// The most (padded) tokens one forward pass takes, when the model has a limit.
    pub max_batch_tokens: Option<usize>,
}

/// Each text's tokens by a Hugging Face tokenizer (special tokens added, padding left out), for
/// [`Model::tokenize`] and the server's own tokenizers.
#[cfg(feature = "tokenizers")]
pub fn tokenize_texts(
    tokenizer: &tokenizers::Tokenizer,
    texts: &[&str],
) -> crate::Result<Vec<Vec<Token>>> {
    texts
        .iter()
        .map(|text| {
            let encoding = tokenizer
                .encode(*text, true)
                .map_err(|e| crate::Error::invalid(format!("cannot tokenize: {e}")))?;
            Ok(encoding
                .get_ids()
                .iter()
                .zip(encoding.get_tokens())
                .zip(encoding.get_special_tokens_mask())
                .zip(encoding.get_offsets())
                .zip(encoding.get_attention_mask())
                .filter(|(_, mask)| **mask == 1)
                .map(|((((&id, token), &special), &span), _)| Token {
                    id,
                    text: token.clone(),
                    special: special == 1,
                    span: (special == 0).then_some(span),
                })
                .collect())
        })
        .collect()
}

/// One token of a tokenized text ([`Model::tokenize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token id.
    pub id: u32,
    /// The token as text.
    pub text: String,
    /// Whether the tokenizer added it (`[CLS]`, `[SEP]`, ...) rather than read it from the text.
    pub special: bool,
    /// Where it came from in the text, as byte offsets (`None` for special tokens).
    pub span: Option<(usize, usize)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataType;

    #[test]
    fn batchable_needs_a_dynamic_first_dim_everywhere() {
        let mut sig = ModelSignature {
            inputs: vec![TensorMetadata::new("x", DataType::Fp32, vec![-1, 4])],
            outputs: vec![TensorMetadata::new("y", DataType::Fp32, vec![-1, 3])],
        };
        assert!(sig.batchable());
        sig.outputs[0].shape = vec![3];
        assert!(!sig.batchable());
        assert_eq!(sig.input("x").unwrap().0, 0);
        assert!(sig.output("nope").is_none());
    }

    #[test]
    fn options_reject_unknown_keys() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Opts {
            threads: Option<u32>,
        }
        let table: toml::Table = toml::from_str("treads = 2").unwrap();
        let req = LoadRequest {
            runtime: "x",
            name: "m",
            version: "1",
            path: Path::new("m.onnx"),
            base_dir: Path::new("."),
            options: &table,
            settings: &toml::Table::new(),
            instances: 1,
        };
        let e = req.parse_options::<Opts>().unwrap_err().to_string();
        assert!(e.contains("unknown field `treads`"), "{e}");
    }
}
