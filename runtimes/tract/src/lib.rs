//! The tract runtime: pure-Rust ONNX inference, compiled into oxinfer by default.
//!
//! Selected with `runtime = "tract"` in the manifest. The model is parsed, analysed and optimised
//! once at load, with its dynamic dimensions (ONNX `dim_param`s, such as a batch dimension) kept
//! symbolic, so one plan serves every batch size. Requests run the plan; nothing is recompiled
//! per request.
//!
//! Options (`[models.options]`, unknown keys are an error):
//!
//! ```toml
//! [models.options]
//! # Replace what the ONNX file says about an input: integers are fixed sizes, strings name a
//! # symbolic (dynamic) dimension. Use it when the file's shapes are missing or wrong.
//! inputs.x = { shape = ["batch", 3, 224, 224], datatype = "FP32" }
//! # Fix named symbolic dimensions to a concrete size (they then stop being dynamic).
//! dims = { sequence = 128 }
//! # Run tract's optimiser (default true). false keeps the decluttered graph only.
//! optimize = true
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use oxinfer_core::protocol::TensorMetadata;
use oxinfer_core::{
    DataType, Error, LoadRequest, Model, ModelSignature, Result, Runtime, Tensor, TensorData,
};
use serde::Deserialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{ShapeFactoid, format_err};

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TractOptions {
    #[serde(default)]
    inputs: BTreeMap<String, InputOverride>,
    #[serde(default)]
    dims: BTreeMap<String, u64>,
    #[serde(default = "yes")]
    optimize: bool,
}

/// `[runtimes.tract]`: tract has no process-wide settings; any key is an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TractSettings {}

fn yes() -> bool {
    true
}

fn datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
        DataType::Bf16 => return None,
    })
}

fn oip_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

impl Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn platform(&self) -> &'static str {
        "onnx_tract"
    }

    fn load(&self, request: &LoadRequest<'_>) -> Result<Box<dyn Model>> {
        let options: TractOptions = request.parse_options("tract")?;
        let TractSettings {} = request.parse_settings("tract")?;
        let started = Instant::now();
        let model = TractModel::load(request, &options).map_err(|e| {
            Error::Load(format!(
                "tract could not load {}: {e:#}",
                request.path.display()
            ))
        })?;
        tracing::info!(
            model = request.name,
            version = request.version,
            runtime = "tract",
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Box::new(model))
    }
}

/// One loaded, optimised tract plan.
struct TractModel {
    plan: Arc<TypedSimplePlan>,
    signature: ModelSignature,
    /// Per input, per dimension: the symbol that dimension is bound to, if any. Used to check
    /// that inputs agree on shared dynamic dimensions before running.
    input_symbols: Vec<Vec<Option<Symbol>>>,
}

fn tensor_metadata(name: String, fact: &TypedFact) -> TractResult<TensorMetadata> {
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
        let mut typed = model.into_typed()?;
        if !options.dims.is_empty() {
            let mut values = HashMap::new();
            for (name, value) in &options.dims {
                values.insert(typed.symbols.sym(name), TDim::Val(*value as i64));
            }
            typed = typed.set_symbols(&values)?;
        }
        let typed = if options.optimize {
            typed.into_optimized()?
        } else {
            typed.into_decluttered()?
        };
        let mut signature = ModelSignature::default();
        let mut input_symbols = Vec::new();
        for (ix, name) in input_names.into_iter().enumerate() {
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
            signature.inputs.push(tensor_metadata(name, fact)?);
        }
        for (ix, name) in output_names.into_iter().enumerate() {
            let fact = typed.output_fact(ix)?;
            signature.outputs.push(tensor_metadata(name, fact)?);
        }
        let plan = typed.into_runnable()?;
        Ok(TractModel {
            plan,
            signature,
            input_symbols,
        })
    }

    /// Dynamic dimensions that share a symbol (say `batch`) must have the same size in every
    /// input; tract would fail later with a less helpful message.
    fn check_symbols(&self, inputs: &[Tensor]) -> Result<()> {
        let mut seen: HashMap<&Symbol, (usize, &str)> = HashMap::new();
        for (input, symbols) in inputs.iter().zip(&self.input_symbols) {
            for (&size, symbol) in input.shape().iter().zip(symbols) {
                let Some(symbol) = symbol else { continue };
                match seen.get(symbol) {
                    Some(&(other, other_name)) if other != size => {
                        return Err(Error::invalid(format!(
                            "dimension '{symbol}' is {other} in input '{other_name}' but {size} in input '{}'",
                            input.name()
                        )));
                    }
                    _ => {
                        seen.insert(symbol, (size, input.name()));
                    }
                }
            }
        }
        Ok(())
    }
}

fn to_tract(t: &Tensor) -> Result<TValue> {
    let tensor = match t.data() {
        TensorData::Raw(bytes) => {
            let dt = datum_type(t.datatype()).ok_or_else(|| {
                Error::invalid(format!("tract does not support {}", t.datatype()))
            })?;
            #[allow(unsafe_code)]
            // SAFETY: `dt` is a plain fixed-size type (never String, TDim or Blob), for which any
            // byte pattern of the right length is a valid value except BOOL, whose 0/1 values
            // `Tensor::new` has checked; `from_raw_dt` checks the length against the shape and
            // copies into an aligned buffer.
            unsafe { tract_onnx::prelude::Tensor::from_raw_dt(dt, t.shape(), bytes) }
                .map_err(|e| Error::Internal(format!("{e:#}")))?
        }
        TensorData::Strings(items) => {
            let strings = items
                .iter()
                .map(|b| {
                    String::from_utf8(b.to_vec()).map_err(|_| {
                        Error::invalid(format!(
                            "input '{}': tract needs UTF-8 strings for BYTES tensors",
                            t.name()
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            tract_ndarray::ArrayD::from_shape_vec(t.shape(), strings)
                .map_err(|e| Error::Internal(e.to_string()))?
                .into()
        }
    };
    Ok(tensor.into_tvalue())
}

/// Lends a tract tensor's memory to a [`Bytes`] without copying it.
struct TractBytes(Arc<tract_onnx::prelude::Tensor>);

impl AsRef<[u8]> for TractBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn from_tract(meta: &TensorMetadata, value: TValue) -> Result<Tensor> {
    let tensor = value.into_arc_tensor();
    let datatype = oip_type(tensor.datum_type()).ok_or_else(|| {
        Error::Execution(format!(
            "output '{}' has type {:?}, which OIP cannot carry",
            meta.name,
            tensor.datum_type()
        ))
    })?;
    let shape = tensor.shape().to_vec();
    let plain = tensor
        .try_as_plain_ram()
        .map_err(|e| Error::Execution(format!("output '{}': {e:#}", meta.name)))?;
    let data = if datatype == DataType::Bytes {
        let strings = plain
            .as_slice::<String>()
            .map_err(|e| Error::Execution(format!("{e:#}")))?;
        TensorData::Strings(
            strings
                .iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
    } else {
        TensorData::Raw(Bytes::from_owner(TractBytes(tensor.clone())))
    };
    Tensor::new(meta.name.clone(), datatype, shape, data)
}

impl Model for TractModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn execute(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.check_symbols(&inputs)?;
        let values = inputs.iter().map(to_tract).collect::<Result<TVec<_>>>()?;
        drop(inputs);
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| Error::Execution(format!("{e:#}")))?;
        outputs
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(value, meta)| from_tract(meta, value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
    }

    fn load(file: &str, options: &str) -> Result<Box<dyn Model>> {
        let table: toml::Table = toml::from_str(options).unwrap();
        let path = models().join(file);
        TractRuntime.load(&LoadRequest {
            name: "m",
            version: "1",
            path: &path,
            options: &table,
            settings: &toml::Table::new(),
        })
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
                name: "m",
                version: "1",
                path: &path,
                options: &table,
                settings: &table,
            })
            .err()
            .unwrap();
        assert!(e.to_string().contains("tract could not load"), "{e}");
    }
}
