//! The tract runtime: pure-Rust ONNX inference, compiled into oxinfer by default.
//!
//! Selected with `runtime = "tract"` in the manifest. Models are compiled at load, never per
//! request, with one of two strategies:
//!
//! - **symbolic**: one plan with the dynamic dimensions (ONNX `dim_param`s such as a batch
//!   dimension) left symbolic, serving every shape;
//! - **per_shape**: for models tract cannot analyse that way (a `BroadcastTo` whose shape input
//!   has variable length, a source without a determined fact, symbols it cannot unify...), one
//!   plan per concrete input-shape signature, compiled on first use (on the model's scheduler worker
//!   thread, never on the I/O threads) and kept in a bounded LRU cache (see [`plans`]).
//!
//! `auto` (the default) tries symbolic first and falls back to per_shape, logging why. Model
//! metadata reports the graph's own dims (`-1` where dynamic) whatever the strategy.
//!
//! Options (`[models.options]`, unknown keys are an error):
//!
//! ```toml
//! [models.options]
//! strategy = "auto"            # auto | symbolic | per_shape
//! plan_cache_size = 8          # per_shape: plans kept (least recently used evicted)
//! warmup_shapes = [{ x = [1, 3, 224, 224] }, { x = [8, 3, 224, 224] }]  # compiled at load
//! # Replace what the ONNX file says about an input: integers are fixed sizes, strings name a
//! # symbolic (dynamic) dimension. Use it when the file's shapes are missing or wrong.
//! inputs.x = { shape = ["batch", 3, 224, 224], datatype = "FP32" }
//! # Fix named symbolic dimensions to a concrete size (they then stop being dynamic).
//! dims = { sequence = 128 }
//! # Run tract's optimiser (default true). false keeps the decluttered graph only.
//! optimize = true
//! ```

mod convert;
pub mod plans;

use std::collections::{BTreeMap, HashMap};

use oxinfer_core::protocol::TensorMetadata;
use oxinfer_core::{DataType, Error, LoadRequest, Model, ModelSignature, Result, Runtime, Tensor};
use serde::Deserialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::{ShapeFactoid, format_err};

use convert::{datum_type, from_tract, oip_type, to_tract};
use plans::{ShapeCache, ShapeKey};

/// The runtime factory registered as `tract`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractRuntime;

/// A dimension in an `inputs.<name>.shape` override.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DimSpec {
    Fixed(u64),
    Symbol(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputOverride {
    shape: Vec<DimSpec>,
    datatype: Option<DataType>,
}

/// How a model is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Strategy {
    /// Symbolic first, per-shape plans when tract cannot analyse the model symbolically.
    #[default]
    Auto,
    /// One plan with symbolic dims; a model tract cannot analyse that way fails to load.
    Symbolic,
    /// One plan per input-shape signature, always.
    PerShape,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TractOptions {
    #[serde(default)]
    inputs: BTreeMap<String, InputOverride>,
    #[serde(default)]
    dims: BTreeMap<String, u64>,
    #[serde(default = "yes")]
    optimize: bool,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default = "default_cache_size")]
    plan_cache_size: usize,
    #[serde(default)]
    warmup_shapes: Vec<BTreeMap<String, Vec<usize>>>,
}

/// `[runtimes.tract]`: tract has no process-wide settings; any key is an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TractSettings {}

fn yes() -> bool {
    true
}

fn default_cache_size() -> usize {
    8
}

impl Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn platform(&self) -> &'static str {
        "onnx_tract"
    }

    fn load(&self, request: &LoadRequest<'_>) -> Result<Box<dyn Model>> {
        let options: TractOptions = request.parse_options()?;
        let TractSettings {} = request.parse_settings()?;
        if options.plan_cache_size == 0 {
            return Err(Error::Manifest(
                "invalid options for runtime 'tract': plan_cache_size must be at least 1".into(),
            ));
        }
        let model = TractModel::load(request, &options).map_err(|e| {
            Error::Load(format!(
                "tract could not load {}: {e:#}",
                request.path.display()
            ))
        })?;
        Ok(Box::new(model))
    }
}

/// How a loaded model runs.
enum Engine {
    /// One plan for every shape; per input and dimension, the symbol it is bound to (to check
    /// that inputs agree on shared dynamic dimensions before running).
    Symbolic {
        plan: Arc<TypedSimplePlan>,
        input_symbols: Vec<Vec<Option<Symbol>>>,
    },
    /// One plan per input-shape signature, and the symbols of the graph's input dims.
    PerShape {
        cache: ShapeCache,
        input_symbols: Vec<Vec<Option<Symbol>>>,
    },
}

impl Engine {
    fn name(&self) -> &'static str {
        match self {
            Engine::Symbolic { .. } => "symbolic",
            Engine::PerShape { .. } => "per_shape",
        }
    }
}

/// A loaded tract model.
struct TractModel {
    engine: Engine,
    signature: ModelSignature,
}

fn typed_metadata(name: &str, fact: &TypedFact) -> TractResult<TensorMetadata> {
    let datatype = oip_type(fact.datum_type).ok_or_else(|| {
        format_err!(
            "tensor '{name}' has type {:?}, which OIP cannot carry",
            fact.datum_type
        )
    })?;
    let shape = fact
        .shape
        .iter()
        .map(|d| d.as_i64().unwrap_or(-1))
        .collect();
    Ok(TensorMetadata::new(name, datatype, shape))
}

/// Metadata from the graph's own facts, before (or without) full analysis. `what` is "input"
/// or "output"; an input's missing fact can be given with the `inputs` option.
fn inference_metadata(name: &str, fact: &InferenceFact, what: &str) -> TractResult<TensorMetadata> {
    let fix = if what == "input" {
        format!("; set it with the option inputs.{name}")
    } else {
        " (the ONNX file does not declare it)".to_string()
    };
    let dt = fact
        .datum_type
        .concretize()
        .ok_or_else(|| format_err!("the datatype of {what} '{name}' is not known{fix}"))?;
    let datatype = oip_type(dt)
        .ok_or_else(|| format_err!("{what} '{name}' has type {dt:?}, which OIP cannot carry"))?;
    if fact.shape.is_open() {
        return Err(format_err!("the rank of {what} '{name}' is not known{fix}"));
    }
    let shape = fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.as_i64()).unwrap_or(-1))
        .collect();
    Ok(TensorMetadata::new(name, datatype, shape))
}

/// Compiles a template into a runnable plan (symbolic dims stay symbolic unless `dims` fixes them).
fn compile(model: InferenceModel, options: &TractOptions) -> TractResult<Arc<TypedSimplePlan>> {
    optimise(model, options)?.into_runnable()
}

fn optimise(model: InferenceModel, options: &TractOptions) -> TractResult<TypedModel> {
    let mut typed = model.into_typed()?;
    if !options.dims.is_empty() {
        let mut values = HashMap::new();
        for (name, value) in &options.dims {
            values.insert(typed.symbols.sym(name), TDim::Val(*value as i64));
        }
        typed = typed.set_symbols(&values)?;
    }
    if options.optimize {
        typed.into_optimized()
    } else {
        typed.into_decluttered()
    }
}

impl TractModel {
    fn load(request: &LoadRequest<'_>, options: &TractOptions) -> TractResult<TractModel> {
        let mut model = tract_onnx::onnx().model_for_path(request.path)?;
        let input_names: Vec<String> = model
            .input_outlets()?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let output_names: Vec<String> = model
            .output_outlets()?
            .iter()
            .map(|&o| {
                model
                    .outlet_label(o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        for (name, spec) in &options.inputs {
            let ix = input_names.iter().position(|n| n == name).ok_or_else(|| {
                format_err!("option inputs.{name}: the model has no input '{name}' (inputs: {input_names:?})")
            })?;
            let dims: TVec<TDim> = spec
                .shape
                .iter()
                .map(|d| match d {
                    DimSpec::Fixed(n) => TDim::Val(*n as i64),
                    DimSpec::Symbol(s) => model.symbols.sym(s).into(),
                })
                .collect();
            let shape: ShapeFactoid = dims.into_iter().collect();
            let mut fact = model.input_fact(ix)?.clone().with_shape(shape);
            if let Some(dt) = spec.datatype {
                let dt =
                    datum_type(dt).ok_or_else(|| format_err!("tract does not support {dt}"))?;
                fact = fact.with_datum_type(dt);
            }
            model.set_input_fact(ix, fact)?;
        }
        let warmup = warmup_keys(&options.warmup_shapes, &input_names)?;

        if options.strategy != Strategy::PerShape {
            match optimise(model.clone(), options) {
                Ok(typed) => {
                    if !warmup.is_empty() {
                        tracing::info!(
                            model = request.name,
                            "warmup_shapes ignored: the symbolic plan serves every shape"
                        );
                    }
                    return Self::symbolic(typed, &input_names, &output_names);
                }
                Err(e) if options.strategy == Strategy::Auto => tracing::warn!(
                    model = request.name,
                    version = request.version,
                    "tract cannot compile the model with symbolic dimensions ({e:#}); using one \
                     plan per input-shape signature (strategy per_shape, up to {} plans)",
                    options.plan_cache_size
                ),
                Err(e) => return Err(e),
            }
        }
        Self::per_shape(request, options, model, &input_names, &output_names, warmup)
    }

    fn symbolic(
        typed: TypedModel,
        input_names: &[String],
        output_names: &[String],
    ) -> TractResult<TractModel> {
        let mut signature = ModelSignature::default();
        let mut input_symbols = Vec::new();
        for (ix, name) in input_names.iter().enumerate() {
            let fact = typed.input_fact(ix)?;
            input_symbols.push(
                fact.shape
                    .iter()
                    .map(|d| match d {
                        TDim::Sym(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            );
            signature.inputs.push(typed_metadata(name, fact)?);
        }
        for (ix, name) in output_names.iter().enumerate() {
            signature
                .outputs
                .push(typed_metadata(name, typed.output_fact(ix)?)?);
        }
        let plan = typed.into_runnable()?;
        Ok(TractModel {
            engine: Engine::Symbolic {
                plan,
                input_symbols,
            },
            signature,
        })
    }

    fn per_shape(
        request: &LoadRequest<'_>,
        options: &TractOptions,
        template: InferenceModel,
        input_names: &[String],
        output_names: &[String],
        warmup: Vec<ShapeKey>,
    ) -> TractResult<TractModel> {
        // Metadata from the graph's declared facts, refined by a best-effort analysis.
        let mut analysed = template.clone();
        let _ = analysed.analyse(true);
        let mut signature = ModelSignature::default();
        let mut input_symbols = Vec::new();
        for (ix, name) in input_names.iter().enumerate() {
            let fact = analysed.input_fact(ix)?;
            input_symbols.push(
                fact.shape
                    .dims()
                    .map(|d| match d.concretize() {
                        Some(TDim::Sym(s)) => Some(s),
                        _ => None,
                    })
                    .collect(),
            );
            signature
                .inputs
                .push(inference_metadata(name, fact, "input")?);
        }
        // tract ignores the output types and shapes an ONNX file declares unless asked; what the
        // analysis could not find out is taken from them.
        let declared = tract_onnx::onnx()
            .with_ignore_output_shapes(false)
            .model_for_path(request.path)?;
        for (ix, name) in output_names.iter().enumerate() {
            let analysed_fact = analysed.output_fact(ix)?;
            let fact = if analysed_fact.datum_type.concretize().is_some()
                && !analysed_fact.shape.is_open()
            {
                analysed_fact
            } else {
                declared.output_fact(ix)?
            };
            signature
                .outputs
                .push(inference_metadata(name, fact, "output")?);
        }
        let input_types: Vec<DatumType> = signature
            .inputs
            .iter()
            .map(|t| datum_type(t.datatype).expect("tract types only"))
            .collect();
        let compile_options = options.clone();
        let compiler = move |key: &ShapeKey| {
            let mut model = template.clone();
            for (ix, (shape, dt)) in key.iter().zip(&input_types).enumerate() {
                model.set_input_fact(ix, InferenceFact::dt_shape(*dt, shape.as_slice()))?;
            }
            compile(model, &compile_options)
        };
        let cache = ShapeCache::new(request.name, options.plan_cache_size, Box::new(compiler));
        for key in &warmup {
            cache
                .get(key)
                .map_err(|e| format_err!("warmup_shapes: {e}"))?;
        }
        Ok(TractModel {
            engine: Engine::PerShape {
                cache,
                input_symbols,
            },
            signature,
        })
    }

    /// Dynamic dimensions that share a symbol (say `batch`) must have the same size in every
    /// input; tract would fail later with a less helpful message.
    fn check_symbols(input_symbols: &[Vec<Option<Symbol>>], inputs: &[Tensor]) -> Result<()> {
        // A model has a handful of symbols: a linear search in a vector that stays on the stack
        // (no allocation per request).
        let mut seen: TVec<(&Symbol, usize, &str)> = TVec::new();
        for (input, symbols) in inputs.iter().zip(input_symbols) {
            for (&size, symbol) in input.shape().iter().zip(symbols) {
                let Some(symbol) = symbol else { continue };
                match seen.iter().find(|(s, ..)| *s == symbol) {
                    Some(&(_, other, other_name)) if other != size => {
                        return Err(Error::invalid(format!(
                            "dimension '{symbol}' is {other} in input '{other_name}' but {size} in input '{}'",
                            input.name()
                        )));
                    }
                    Some(_) => {}
                    None => seen.push((symbol, size, input.name())),
                }
            }
        }
        Ok(())
    }
}

/// Turns `warmup_shapes` tables into signatures in input order; every input must be given.
fn warmup_keys(
    tables: &[BTreeMap<String, Vec<usize>>],
    input_names: &[String],
) -> TractResult<Vec<ShapeKey>> {
    tables
        .iter()
        .map(|table| {
            if let Some(unknown) = table.keys().find(|k| !input_names.contains(k)) {
                return Err(format_err!(
                    "warmup_shapes: the model has no input '{unknown}' (inputs: {input_names:?})"
                ));
            }
            input_names
                .iter()
                .map(|name| {
                    table.get(name).cloned().ok_or_else(|| {
                        format_err!(
                            "warmup_shapes: every entry must give a shape for input '{name}'"
                        )
                    })
                })
                .collect()
        })
        .collect()
}

impl Model for TractModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn concurrent(&self) -> bool {
        true
    }

    fn runs_on_any_thread(&self) -> bool {
        // Plain CPU code on the calling thread, with no thread-local state. Not per_shape: a
        // new shape's plan is compiled on the first request, and compiling stays off the I/O
        // threads.
        matches!(self.engine, Engine::Symbolic { .. })
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![("strategy", self.engine.name().to_string())]
    }

    fn execute(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let plan = match &self.engine {
            Engine::Symbolic {
                plan,
                input_symbols,
            } => {
                Self::check_symbols(input_symbols, &inputs)?;
                plan.clone()
            }
            Engine::PerShape {
                cache,
                input_symbols,
            } => {
                Self::check_symbols(input_symbols, &inputs)?;
                let key: ShapeKey = inputs.iter().map(|t| t.shape().to_vec()).collect();
                cache.get(&key)?
            }
        };
        let values = inputs.iter().map(to_tract).collect::<Result<TVec<_>>>()?;
        drop(inputs);
        let outputs = plan
            .run(values)
            .map_err(|e| Error::Execution(format!("{e:#}")))?;
        outputs
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(value, meta)| from_tract(meta, value))
            .collect()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        match &self.engine {
            Engine::Symbolic { .. } => vec![("plans_compiled", 1)],
            Engine::PerShape { cache, .. } => {
                let c = cache.counters();
                vec![
                    ("plans_compiled", c.compilations),
                    ("plan_cache_hits", c.hits),
                    ("plan_cache_evictions", c.evictions),
                    ("plans_cached", c.cached),
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use oxinfer_core::TensorData;

    fn load(file: &str, options: &str) -> Result<Box<dyn Model>> {
        oxinfer_core::testing::load_example(&TractRuntime, file, options)
    }

    #[test]
    fn reports_metadata_with_dynamic_batch() {
        let m = load("simple.onnx", "").unwrap();
        let sig = m.signature();
        assert_eq!(
            sig.inputs[0],
            TensorMetadata::new("INPUT0", DataType::Int32, vec![-1, 16])
        );
        assert_eq!(
            sig.outputs[1],
            TensorMetadata::new("OUTPUT1", DataType::Int32, vec![-1, 16])
        );
        assert!(sig.batchable());
    }

    #[test]
    fn runs_simple_for_two_batch_sizes() {
        let m = load("simple.onnx", "").unwrap();
        for batch in [1usize, 3] {
            let a: Vec<i32> = (0..16 * batch as i32).collect();
            let b: Vec<i32> = vec![2; 16 * batch];
            let out = m
                .execute(vec![
                    Tensor::from_vec("INPUT0", vec![batch, 16], a.clone()).unwrap(),
                    Tensor::from_vec("INPUT1", vec![batch, 16], b).unwrap(),
                ])
                .unwrap();
            assert_eq!(out[0].shape(), &[batch, 16]);
            assert_eq!(
                out[0].to_vec::<i32>().unwrap(),
                a.iter().map(|x| x + 2).collect::<Vec<_>>()
            );
            assert_eq!(
                out[1].to_vec::<i32>().unwrap(),
                a.iter().map(|x| x - 2).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn all_datatypes_go_through() {
        let m = load("dtypes.onnx", "").unwrap();
        let sig = m.signature().clone();
        let names: Vec<_> = sig.inputs.iter().map(|t| t.datatype).collect();
        assert_eq!(names.len(), 13);
        let inputs: Vec<Tensor> = sig
            .inputs
            .iter()
            .map(|t| match t.datatype {
                DataType::Bool => Tensor::from_bools(&t.name, vec![1, 2], &[true, false]).unwrap(),
                DataType::Bytes => Tensor::from_strings(&t.name, vec![1, 2], ["a", "é"]).unwrap(),
                dt => Tensor::new(
                    &t.name,
                    dt,
                    vec![1, 2],
                    TensorData::Raw(Bytes::from(vec![0u8; 2 * dt.size().unwrap()])),
                )
                .unwrap(),
            })
            .collect();
        let out = m.execute(inputs).unwrap();
        assert_eq!(out[0].to_bools().unwrap(), vec![false, true]);
        let i32_out = out.iter().find(|t| t.name() == "out_INT32").unwrap();
        assert_eq!(i32_out.to_vec::<i32>().unwrap(), vec![1, 1]);
        let s = out.iter().find(|t| t.name() == "out_BYTES").unwrap();
        assert_eq!(s.strings().unwrap()[1].as_ref(), "é".as_bytes());
    }

    #[test]
    fn options_are_checked() {
        let e = load("simple.onnx", "colour = 1").err().unwrap().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = load("simple.onnx", "inputs.NOPE = { shape = [1] }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no input 'NOPE'"), "{e}");
    }

    #[test]
    fn dims_option_fixes_a_symbol() {
        let m = load("simple.onnx", "dims = { batch = 2 }").unwrap();
        assert_eq!(m.signature().inputs[0].shape, vec![2, 16]);
    }

    #[test]
    fn input_override_sets_shape() {
        let m = load(
            "mlp.onnx",
            r#"inputs.x = { shape = ["n", 4], datatype = "FP32" }"#,
        )
        .unwrap();
        assert_eq!(m.signature().inputs[0].shape, vec![-1, 4]);
        assert_eq!(m.signature().outputs[0].shape, vec![-1, 3]);
    }

    #[test]
    fn mismatched_shared_dims_are_input_errors() {
        let m = load("simple.onnx", "").unwrap();
        let e = m
            .execute(vec![
                Tensor::from_vec("INPUT0", vec![1, 16], vec![0i32; 16]).unwrap(),
                Tensor::from_vec("INPUT1", vec![2, 16], vec![0i32; 32]).unwrap(),
            ])
            .unwrap_err();
        assert_eq!(e.code(), oxinfer_core::ErrorCode::InvalidArgument);
        assert!(
            e.to_string()
                .contains("dimension 'batch' is 1 in input 'INPUT0' but 2"),
            "{e}"
        );
    }

    #[test]
    fn a_broken_file_is_a_load_error() {
        let dir = std::env::temp_dir().join(format!("oxinfer-tract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("broken.onnx");
        std::fs::write(&path, b"not a model").unwrap();
        let table = toml::Table::new();
        let e = TractRuntime
            .load(&LoadRequest {
                runtime: "tract",
                name: "m",
                version: "1",
                path: &path,
                base_dir: &dir,
                options: &table,
                settings: &table,
                instances: 1,
            })
            .err()
            .unwrap();
        assert!(e.to_string().contains("tract could not load"), "{e}");
    }

    fn counters(m: &dyn Model) -> HashMap<&'static str, u64> {
        m.counters().into_iter().collect()
    }

    /// An image batch whose pixel values encode their position, and its expected mean and max.
    fn image(batch: usize, h: usize, w: usize) -> (Tensor, Vec<f32>, Vec<f32>) {
        let n = batch * 3 * h * w;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 10.0).collect();
        let (mut mean, mut max) = (Vec::new(), Vec::new());
        for plane in values.chunks(h * w) {
            mean.push(plane.iter().sum::<f32>() / (h * w) as f32);
            max.push(plane.iter().cloned().fold(f32::MIN, f32::max));
        }
        (
            Tensor::from_vec("image", vec![batch, 3, h, w], values).unwrap(),
            mean,
            max,
        )
    }

    fn check_image(m: &dyn Model, batch: usize, h: usize, w: usize) {
        let (input, mean, max) = image(batch, h, w);
        let out = m.execute(vec![input]).unwrap();
        assert_eq!(out[0].shape(), &[batch, 3]);
        for (got, want) in out[0].to_vec::<f32>().unwrap().iter().zip(&mean) {
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
        assert_eq!(out[1].to_vec::<f32>().unwrap(), max);
    }

    #[test]
    fn auto_keeps_one_symbolic_plan_when_tract_can() {
        let m = load("image.onnx", "").unwrap();
        assert_eq!(m.signature().inputs[0].shape, vec![-1, 3, -1, -1]);
        check_image(m.as_ref(), 1, 4, 4);
        check_image(m.as_ref(), 2, 8, 6);
        assert_eq!(counters(m.as_ref()), HashMap::from([("plans_compiled", 1)]));
    }

    #[test]
    fn per_shape_serves_two_resolutions_with_two_plans() {
        let m = load("image.onnx", "strategy = \"per_shape\"").unwrap();
        // The graph's own dims, whatever the strategy.
        assert_eq!(m.signature().inputs[0].shape, vec![-1, 3, -1, -1]);
        assert_eq!(m.signature().outputs[0].shape, vec![-1, 3]);
        assert_eq!(counters(m.as_ref())["plans_compiled"], 0);
        check_image(m.as_ref(), 1, 4, 4);
        check_image(m.as_ref(), 2, 8, 6);
        check_image(m.as_ref(), 1, 4, 4);
        let c = counters(m.as_ref());
        assert_eq!(
            (c["plans_compiled"], c["plans_cached"], c["plan_cache_hits"]),
            (2, 2, 1)
        );
    }

    #[test]
    fn cache_of_one_alternating_shapes_stays_correct() {
        let m = load(
            "image.onnx",
            "strategy = \"per_shape\"\nplan_cache_size = 1",
        )
        .unwrap();
        for _ in 0..3 {
            check_image(m.as_ref(), 1, 4, 4);
            check_image(m.as_ref(), 3, 5, 7);
        }
        let c = counters(m.as_ref());
        assert_eq!(
            (
                c["plans_compiled"],
                c["plans_cached"],
                c["plan_cache_evictions"]
            ),
            (6, 1, 5)
        );
    }

    #[test]
    fn concurrent_first_requests_compile_once() {
        let m: Arc<dyn Model> = Arc::from(load("image.onnx", "strategy = \"per_shape\"").unwrap());
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (m, barrier) = (m.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    check_image(m.as_ref(), 2, 16, 16);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = counters(m.as_ref());
        assert_eq!((c["plans_compiled"], c["plan_cache_hits"]), (1, 15));
    }

    #[test]
    fn a_failing_shape_is_a_remembered_400_that_does_not_poison_others() {
        let m = load("pairs.onnx", "strategy = \"per_shape\"").unwrap();
        let run =
            |n: usize| m.execute(vec![Tensor::from_vec("x", vec![n], vec![1f32; n]).unwrap()]);
        let e = run(3).unwrap_err();
        assert_eq!(e.code(), oxinfer_core::ErrorCode::InvalidArgument, "{e}");
        assert!(
            e.to_string()
                .contains("tract cannot compile the model for input shapes [[3]]"),
            "{e}"
        );
        assert_eq!(run(3).unwrap_err().to_string(), e.to_string());
        assert_eq!(
            counters(m.as_ref())["plans_compiled"],
            1,
            "the failure is not retried"
        );
        assert_eq!(run(4).unwrap()[0].to_vec::<f32>().unwrap(), vec![2.0, 2.0]);
        assert_eq!(run(6).unwrap()[0].to_vec::<f32>().unwrap(), vec![2.0; 3]);
        let c = counters(m.as_ref());
        assert_eq!((c["plans_compiled"], c["plans_cached"]), (3, 2));
    }

    #[test]
    fn per_shape_checks_shared_dims_before_compiling() {
        let m = load("simple.onnx", "strategy = \"per_shape\"").unwrap();
        let e = m
            .execute(vec![
                Tensor::from_vec("INPUT0", vec![2, 16], vec![1i32; 32]).unwrap(),
                Tensor::from_vec("INPUT1", vec![3, 16], vec![2i32; 48]).unwrap(),
            ])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("dimension 'batch' is 2 in input 'INPUT0' but 3"),
            "{e}"
        );
        assert_eq!(counters(m.as_ref())["plans_compiled"], 0);
    }

    #[test]
    fn warmup_shapes_are_compiled_at_load() {
        let m = load(
            "image.onnx",
            "strategy = \"per_shape\"\nwarmup_shapes = [{ image = [1, 3, 4, 4] }, { image = [2, 3, 8, 8] }]",
        )
        .unwrap();
        assert_eq!(counters(m.as_ref())["plans_compiled"], 2);
        check_image(m.as_ref(), 2, 8, 8);
        let c = counters(m.as_ref());
        assert_eq!((c["plans_compiled"], c["plan_cache_hits"]), (2, 1));
        let e = load(
            "image.onnx",
            "strategy = \"per_shape\"\nwarmup_shapes = [{ img = [1] }]",
        )
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .contains("warmup_shapes: the model has no input 'img'"),
            "{e}"
        );
        let e = load(
            "simple.onnx",
            "strategy = \"per_shape\"\nwarmup_shapes = [{ INPUT0 = [1, 16] }]",
        )
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .contains("must give a shape for input 'INPUT1'"),
            "{e}"
        );
        let e = load("image.onnx", "plan_cache_size = 0").err().unwrap();
        assert!(
            e.to_string().contains("plan_cache_size must be at least 1"),
            "{e}"
        );
        let e = load("image.onnx", "strategy = \"fast\"").err().unwrap();
        assert!(e.to_string().contains("unknown variant `fast`"), "{e}");
    }
}
