//! The ONNX Runtime runtime (`runtime = "onnxruntime"`), through the `ort` crate with the library
//! loaded dynamically at run time: nothing is downloaded or linked at build time, and a binary
//! built with this runtime runs fine without the library as long as no model uses it.
//!
//! Finding the library, in this order:
//! 1. `[runtimes.onnxruntime] library = "/path/to/libonnxruntime.so.1.31.1"` in the manifest;
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. a Python install of the `onnxruntime` package (`onnxruntime/capi/libonnxruntime.so.*`), found
//!    through `$VIRTUAL_ENV/bin/python`, then `python3` on the `PATH`.
//!
//! When none is found, or the library is older than 1.31, loading a model fails with a message
//! that says so and how to fix it. One ONNX Runtime environment serves the whole process; each
//! loaded model instance has its own session.
//!
//! Options (`[models.options]`, unknown keys are an error):
//!
//! ```toml
//! [models.options]
//! intra_op_threads = 2                 # threads inside one operator (default: ONNX Runtime's)
//! inter_op_threads = 1                 # threads across operators (parallel mode only)
//! graph_optimization_level = "all"     # disable | basic | extended | layout | all
//! execution_mode = "sequential"        # sequential | parallel
//! execution_providers = ["cuda", "cpu"] # in order of preference; cpu is always the last resort
//! on_unavailable_provider = "error"    # error | fallback (log and try the next one)
//! cuda_device = 0
//! optimized_model_path = "/var/cache/oxinfer/model.opt.onnx"  # write the optimised graph there
//! ```

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use oxinfer_core::protocol::TensorMetadata;
use oxinfer_core::{
    DataType, Element, Error, LoadRequest, Model, ModelSignature, Result, Runtime, Tensor,
    TensorData,
};
use serde::Deserialize;

/// The ONNX Runtime version oxinfer is built and tested against.
pub const EXPECTED_VERSION: &str = "1.31.1";

/// How to get the library, appended to every "not found" / "incompatible" message.
const HOW_TO_FIX: &str = "install it with `pip install onnxruntime==1.31.1` (oxinfer finds it in \
    the Python environment), or set ORT_DYLIB_PATH, or set `library` under [runtimes.onnxruntime] \
    in the manifest, to the path of libonnxruntime.so.1.31.1";

/// The runtime factory registered as `onnxruntime`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrtRuntime;

/// `[runtimes.onnxruntime]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrtSettings {
    library: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Provider {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnUnavailable {
    #[default]
    Error,
    Fallback,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OptLevel {
    Disable,
    Basic,
    Extended,
    Layout,
    #[default]
    All,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ExecutionMode {
    #[default]
    Sequential,
    Parallel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrtOptions {
    intra_op_threads: Option<usize>,
    inter_op_threads: Option<usize>,
    #[serde(default)]
    graph_optimization_level: OptLevel,
    #[serde(default)]
    execution_mode: ExecutionMode,
    #[serde(default = "cpu_only")]
    execution_providers: Vec<Provider>,
    #[serde(default)]
    on_unavailable_provider: OnUnavailable,
    #[serde(default)]
    cuda_device: i32,
    optimized_model_path: Option<PathBuf>,
}

fn cpu_only() -> Vec<Provider> {
    vec![Provider::Cpu]
}

/// The process-wide environment: created on the first load, kept (or its error) for every later
/// one. ONNX Runtime allows one environment per process.
static ENVIRONMENT: OnceLock<std::result::Result<(Environment, PathBuf), String>> = OnceLock::new();

/// Where the ONNX Runtime library is, following the documented order; `Err` lists where it looked.
pub fn find_library(configured: Option<&Path>) -> std::result::Result<PathBuf, String> {
    if let Some(path) = configured {
        return if path.exists() {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "[runtimes.onnxruntime] library = {} does not exist",
                path.display()
            ))
        };
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(format!("ORT_DYLIB_PATH={} does not exist", path.display()))
        };
    }
    let mut pythons = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        pythons.push(PathBuf::from(venv).join("bin/python"));
    }
    pythons.push(PathBuf::from("python3"));
    let mut looked = vec![
        "[runtimes.onnxruntime] library (not set)".to_string(),
        "ORT_DYLIB_PATH (not set)".to_string(),
    ];
    for python in pythons {
        match python_onnxruntime_dir(&python) {
            Some(dir) => {
                let capi = dir.join("capi");
                if let Some(lib) = newest_library_in(&capi) {
                    return Ok(lib);
                }
                looked.push(format!("{} (no libonnxruntime.so.* there)", capi.display()));
            }
            None => looked.push(format!(
                "the `onnxruntime` Python package of {} (not installed)",
                python.display()
            )),
        }
    }
    Err(format!("looked at: {}", looked.join("; ")))
}

fn python_onnxruntime_dir(python: &Path) -> Option<PathBuf> {
    // find_spec locates the package without importing it (importing loads the library).
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('onnxruntime'); \
             print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn newest_library_in(dir: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so")
                    || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
            })
        })
        .collect();
    // The fully versioned name sorts last (libonnxruntime.so < libonnxruntime.so.1.31.1).
    libs.sort();
    libs.pop()
}

fn environment(settings: &OrtSettings) -> Result<&'static Environment> {
    let result = ENVIRONMENT.get_or_init(|| {
        let path = find_library(settings.library.as_deref())
            .map_err(|e| format!("ONNX Runtime library not found: {e}. To fix it, {HOW_TO_FIX}"))?;
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot use the ONNX Runtime library {}: {e}. oxinfer needs ONNX Runtime {EXPECTED_VERSION} \
                 (any 1.31 or newer); to fix it, {HOW_TO_FIX}",
                path.display()
            )
        })?;
        let env = builder
            .with_name("oxinfer")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok((env, path))
    });
    match result {
        Ok((env, _)) => Ok(env),
        Err(e) => Err(Error::Load(e.clone())),
    }
}

fn oip_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn tensor_metadata(name: &str, ty: &ValueType) -> std::result::Result<TensorMetadata, String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let datatype = oip_type(*ty).ok_or_else(|| {
                format!("tensor '{name}' has element type {ty}, which OIP cannot carry")
            })?;
            Ok(TensorMetadata::new(
                name,
                datatype,
                shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
            ))
        }
        other => Err(format!(
            "'{name}' is a {other}, not a tensor; oxinfer serves tensors only"
        )),
    }
}

impl Runtime for OrtRuntime {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn platform(&self) -> &'static str {
        "onnxruntime_onnx"
    }

    fn load(&self, request: &LoadRequest<'_>) -> Result<Box<dyn Model>> {
        let settings: OrtSettings = request.parse_settings()?;
        let options: OrtOptions = request.parse_options()?;
        let env = environment(&settings)?;
        let (session, providers) = build_session(env, request, &options)?;
        let mut signature = ModelSignature::default();
        let fail = |e: String| Error::Load(format!("{}: {e}", request.path.display()));
        for input in session.inputs() {
            signature
                .inputs
                .push(tensor_metadata(input.name(), input.dtype()).map_err(fail)?);
        }
        for output in session.outputs() {
            signature
                .outputs
                .push(tensor_metadata(output.name(), output.dtype()).map_err(fail)?);
        }
        Ok(Box::new(OrtModel {
            session: Mutex::new(session),
            signature,
            providers: format!("{providers:?}"),
        }))
    }
}

/// Builds a session with the configured providers; returns it and the providers registered.
fn build_session(
    env: &Environment,
    request: &LoadRequest<'_>,
    options: &OrtOptions,
) -> Result<(Session, Vec<Provider>)> {
    let ort_err = |e: ort::Error| Error::Load(format!("ONNX Runtime: {e}"));
    let mut builder = Session::builder(env).map_err(ort_err)?;
    // Unset, each of the model's instances gets an equal share of the cores, so that
    // `instances` x intra-op threads never oversubscribes them (ONNX Runtime's own default
    // would give every instance all the cores).
    let share =
        std::thread::available_parallelism().map_or(1, |n| n.get()) / request.instances.max(1);
    if let Some(n) = options.intra_op_threads.or(Some(share.max(1))) {
        builder = builder
            .with_intra_threads(n)
            .map_err(|e| ort_err(e.into()))?;
    }
    if let Some(n) = options.inter_op_threads {
        builder = builder
            .with_inter_threads(n)
            .map_err(|e| ort_err(e.into()))?;
    }
    builder = builder
        .with_parallel_execution(matches!(options.execution_mode, ExecutionMode::Parallel))
        .map_err(|e| ort_err(e.into()))?;
    let level = match options.graph_optimization_level {
        OptLevel::Disable => GraphOptimizationLevel::Disable,
        OptLevel::Basic => GraphOptimizationLevel::Level1,
        OptLevel::Extended => GraphOptimizationLevel::Level2,
        OptLevel::Layout => GraphOptimizationLevel::Level3,
        OptLevel::All => GraphOptimizationLevel::All,
    };
    builder = builder
        .with_optimization_level(level)
        .map_err(|e| ort_err(e.into()))?;
    if let Some(path) = &options.optimized_model_path {
        builder = builder
            .with_optimized_model_path(path)
            .map_err(|e| ort_err(e.into()))?;
    }
    let mut registered = Vec::new();
    for provider in &options.execution_providers {
        let dispatch = match provider {
            // CPU is ONNX Runtime's own last resort; listing it ends the search.
            Provider::Cpu => {
                registered.push(Provider::Cpu);
                break;
            }
            Provider::Cuda => (
                ep::CUDA::default()
                    .with_device_id(options.cuda_device)
                    .build(),
                ep::CUDA::is_available(),
            ),
            Provider::Tensorrt => (
                ep::TensorRT::default()
                    .with_device_id(options.cuda_device)
                    .build(),
                ep::TensorRT::is_available(),
            ),
        };
        let (dispatch, available) = dispatch;
        let attempt = match available {
            Ok(true) => match builder.with_execution_providers([dispatch.error_on_failure()]) {
                Ok(with_provider) => {
                    builder = with_provider;
                    Ok(())
                }
                Err(e) => {
                    let reason = e.to_string();
                    builder = e.recover();
                    Err(reason)
                }
            },
            Ok(false) => Err("the loaded ONNX Runtime library was not built with it (the PyPI \
                              `onnxruntime` wheel is CPU-only; `onnxruntime-gpu` has CUDA and TensorRT)"
                .to_string()),
            Err(e) => Err(e.to_string()),
        };
        match attempt {
            Ok(()) => registered.push(*provider),
            Err(reason) => {
                let msg = format!(
                    "execution provider '{}' is not available: {reason}",
                    format!("{provider:?}").to_lowercase()
                );
                match options.on_unavailable_provider {
                    OnUnavailable::Error => {
                        return Err(Error::Load(format!(
                            "{msg}; remove it from execution_providers, or set on_unavailable_provider = \"fallback\""
                        )));
                    }
                    OnUnavailable::Fallback => tracing::warn!(
                        model = request.name,
                        version = request.version,
                        "{msg}; falling back to the next provider (on_unavailable_provider = \"fallback\")"
                    ),
                }
            }
        }
    }
    if registered.last() != Some(&Provider::Cpu) {
        registered.push(Provider::Cpu);
    }
    let session = builder.commit_from_file(request.path).map_err(|e| {
        Error::Load(format!(
            "ONNX Runtime could not load {}: {e}",
            request.path.display()
        ))
    })?;
    Ok((session, registered))
}

/// One loaded model instance: its session (ONNX Runtime's `Run` takes `&mut`, so calls on one
/// instance are serialised) and signature.
struct OrtModel {
    session: Mutex<Session>,
    signature: ModelSignature,
    /// The execution providers registered, for the load log line.
    providers: String,
}

/// Borrows a tensor's bytes as `&[T]` when aligned (no copy), else copies them.
fn typed<T: Element>(t: &Tensor) -> Result<Cow<'_, [T]>> {
    Ok(match t.as_slice::<T>() {
        Ok(slice) => Cow::Borrowed(slice),
        Err(_) => Cow::Owned(t.to_vec::<T>()?),
    })
}

macro_rules! prepared {
    ($($variant:ident($t:ty) = $dt:ident),* $(,)?) => {
        /// One input's data in the form ONNX Runtime takes, borrowed from the request when it can be.
        enum Prepared<'a> {
            $($variant(Cow<'a, [$t]>),)*
            Bool(Vec<bool>),
            Strings(Vec<String>),
        }

        fn prepare(t: &Tensor) -> Result<Prepared<'_>> {
            Ok(match t.datatype() {
                $(DataType::$dt => Prepared::$variant(typed::<$t>(t)?),)*
                DataType::Bool => Prepared::Bool(t.to_bools()?),
                DataType::Bytes => Prepared::Strings(t.to_utf8_strings("ONNX Runtime")?),
            })
        }

        impl Prepared<'_> {
            /// A zero-copy ONNX Runtime view of the prepared data (strings are copied by ORT).
            fn value(&self, shape: Vec<i64>) -> ort::Result<SessionInputValue<'_>> {
                Ok(match self {
                    $(Prepared::$variant(data) => TensorRef::from_array_view((shape, &data[..]))?.into(),)*
                    Prepared::Bool(data) => TensorRef::from_array_view((shape, &data[..]))?.into(),
                    Prepared::Strings(data) => ort::value::Tensor::from_string_array((shape, &data[..]))?.into(),
                })
            }
        }
    };
}

prepared! {
    U8(u8) = Uint8, U16(u16) = Uint16, U32(u32) = Uint32, U64(u64) = Uint64,
    I8(i8) = Int8, I16(i16) = Int16, I32(i32) = Int32, I64(i64) = Int64,
    F16(half::f16) = Fp16, Bf16(half::bf16) = Bf16, F32(f32) = Fp32, F64(f64) = Fp64,
}

/// Owns an output value and lends its memory to a [`Bytes`] without copying it.
struct OutputBytes {
    value: DynValue,
    datatype: DataType,
}

impl AsRef<[u8]> for OutputBytes {
    fn as_ref(&self) -> &[u8] {
        fn bytes<T: ort::value::PrimitiveTensorElementType + bytemuck::NoUninit>(
            v: &DynValue,
        ) -> &[u8] {
            v.try_extract_tensor::<T>()
                .map(|(_, data)| bytemuck::cast_slice(data))
                .unwrap_or_default()
        }
        match self.datatype {
            DataType::Bool => bytes::<bool>(&self.value),
            DataType::Uint8 => bytes::<u8>(&self.value),
            DataType::Uint16 => bytes::<u16>(&self.value),
            DataType::Uint32 => bytes::<u32>(&self.value),
            DataType::Uint64 => bytes::<u64>(&self.value),
            DataType::Int8 => bytes::<i8>(&self.value),
            DataType::Int16 => bytes::<i16>(&self.value),
            DataType::Int32 => bytes::<i32>(&self.value),
            DataType::Int64 => bytes::<i64>(&self.value),
            DataType::Fp16 => bytes::<half::f16>(&self.value),
            DataType::Bf16 => bytes::<half::bf16>(&self.value),
            DataType::Fp32 => bytes::<f32>(&self.value),
            DataType::Fp64 => bytes::<f64>(&self.value),
            DataType::Bytes => &[],
        }
    }
}

fn output_tensor(meta: &TensorMetadata, value: DynValue) -> Result<Tensor> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype().clone() else {
        return Err(Error::Execution(format!(
            "output '{}' is not a tensor",
            meta.name
        )));
    };
    let datatype = oip_type(ty).ok_or_else(|| {
        Error::Execution(format!(
            "output '{}' has element type {ty}, which OIP cannot carry",
            meta.name
        ))
    })?;
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let data = if datatype == DataType::Bytes {
        let (_, strings) = value
            .try_extract_strings()
            .map_err(|e| Error::Execution(format!("output '{}': {e}", meta.name)))?;
        TensorData::Strings(strings.into_iter().map(Bytes::from).collect())
    } else {
        TensorData::Raw(Bytes::from_owner(OutputBytes { value, datatype }))
    };
    Tensor::new(&meta.name, datatype, shape, data)
}

fn run_error(e: ort::Error) -> Error {
    if e.code() == ort::ErrorCode::InvalidArgument {
        Error::invalid(format!("ONNX Runtime rejected the input: {}", e.message()))
    } else {
        Error::Execution(format!("ONNX Runtime: {e}"))
    }
}

impl Model for OrtModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![("providers", self.providers.clone())]
    }

    fn execute(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let prepared = inputs.iter().map(prepare).collect::<Result<Vec<_>>>()?;
        let values = prepared
            .iter()
            .zip(&inputs)
            .zip(&self.signature.inputs)
            .map(|((p, t), meta)| {
                p.value(t.shape().iter().map(|&d| d as i64).collect())
                    .map(|v| (Cow::Borrowed(meta.name.as_str()), v))
                    .map_err(|e| Error::invalid(format!("input '{}': {e}", meta.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| Error::Internal("ONNX Runtime session lock poisoned".into()))?;
        let mut outputs = session.run(values).map_err(run_error)?;
        let taken = self
            .signature
            .outputs
            .iter()
            .map(|meta| {
                outputs.remove(&meta.name).ok_or_else(|| {
                    Error::Execution(format!("ONNX Runtime returned no output '{}'", meta.name))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(outputs);
        drop(session);
        taken
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(value, meta)| output_tensor(meta, value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! These tests need ONNX Runtime 1.31: `scripts/test.sh` installs it in its venv and sets
    //! ORT_DYLIB_PATH. Without it they fail (never skip) with the message that says how to get it.
    use super::*;
    use oxinfer_core::ErrorCode;

    fn load(file: &str, options: &str) -> Result<Box<dyn Model>> {
        oxinfer_core::testing::load_example(&OrtRuntime, file, options)
    }

    #[test]
    fn metadata_has_every_datatype_and_dynamic_dims() {
        let m = load("dtypes.onnx", "").unwrap();
        let types: Vec<_> = m.signature().inputs.iter().map(|t| t.datatype).collect();
        // Every OIP datatype ONNX has (ONNX's bfloat16 is not in the example model).
        let expected: Vec<_> = DataType::ALL
            .into_iter()
            .filter(|&d| d != DataType::Bf16)
            .collect();
        assert_eq!(types, expected);
        assert!(m.signature().inputs.iter().all(|t| t.shape == vec![-1, 2]));
        assert!(m.signature().batchable());
    }

    #[test]
    fn runs_every_datatype() {
        let m = load("dtypes.onnx", "").unwrap();
        let inputs: Vec<Tensor> = m
            .signature()
            .inputs
            .iter()
            .map(|t| match t.datatype {
                DataType::Bool => Tensor::from_bools(&t.name, vec![1, 2], &[true, false]).unwrap(),
                DataType::Bytes => Tensor::from_strings(&t.name, vec![1, 2], ["a", "é"]).unwrap(),
                DataType::Fp16 => {
                    Tensor::from_vec(&t.name, vec![1, 2], vec![half::f16::from_f32(1.5); 2])
                        .unwrap()
                }
                DataType::Fp64 => {
                    Tensor::from_vec(&t.name, vec![1, 2], vec![0.25f64, -3.0]).unwrap()
                }
                dt => Tensor::new(
                    &t.name,
                    dt,
                    vec![1, 2],
                    TensorData::Raw(Bytes::from(vec![1u8; 2 * dt.size().unwrap()])),
                )
                .unwrap(),
            })
            .collect();
        let out = m.execute(inputs).unwrap();
        let by = |n: &str| out.iter().find(|t| t.name() == n).unwrap();
        assert_eq!(by("out_BOOL").to_bools().unwrap(), vec![false, true]);
        assert_eq!(
            by("out_INT32").to_vec::<i32>().unwrap(),
            vec![0x0101_0102; 2]
        );
        assert_eq!(by("out_FP64").to_vec::<f64>().unwrap(), vec![0.5, -6.0]);
        assert_eq!(
            by("out_FP16").to_vec::<half::f16>().unwrap(),
            vec![half::f16::from_f32(1.5); 2]
        );
        assert_eq!(
            by("out_UINT64").to_vec::<u64>().unwrap(),
            vec![0x0101_0101_0101_0101; 2]
        );
        assert_eq!(
            by("out_BYTES").strings().unwrap()[1].as_ref(),
            "é".as_bytes()
        );
    }

    #[test]
    fn unaligned_inputs_are_copied_and_still_correct() {
        let m = load("simple.onnx", "").unwrap();
        let mut raw = vec![0u8];
        raw.extend((0..16i32).flat_map(|v| v.to_le_bytes()));
        let unaligned = Bytes::from(raw).slice(1..);
        let a = Tensor::new(
            "INPUT0",
            DataType::Int32,
            vec![1, 16],
            TensorData::Raw(unaligned),
        )
        .unwrap();
        let b = Tensor::from_vec("INPUT1", vec![1, 16], vec![10i32; 16]).unwrap();
        let out = m.execute(vec![a, b]).unwrap();
        assert_eq!(
            out[0].to_vec::<i32>().unwrap(),
            (10..26).collect::<Vec<_>>()
        );
        assert_eq!(
            out[1].to_vec::<i32>().unwrap(),
            (-10..6).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_bad_input_is_a_400_with_onnx_runtimes_message() {
        let m = load("simple.onnx", "").unwrap();
        // Bypass the server's validation to see ONNX Runtime's own check.
        let e = m
            .execute(vec![
                Tensor::from_vec("INPUT0", vec![1, 15], vec![0i32; 15]).unwrap(),
                Tensor::from_vec("INPUT1", vec![1, 15], vec![0i32; 15]).unwrap(),
            ])
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(
            e.to_string().contains("ONNX Runtime rejected the input"),
            "{e}"
        );
    }

    #[test]
    fn options_are_validated() {
        let e = load("simple.onnx", "intra_op_treads = 1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field `intra_op_treads`"), "{e}");
        let e = load("simple.onnx", "graph_optimization_level = \"max\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown variant `max`"), "{e}");
        let e = load("simple.onnx", "execution_providers = [\"tpu\"]")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown variant `tpu`"), "{e}");
        let m = load(
            "simple.onnx",
            "intra_op_threads = 1\ninter_op_threads = 1\ngraph_optimization_level = \"basic\"\nexecution_mode = \"parallel\"",
        );
        assert!(m.is_ok());
    }

    #[test]
    fn an_unavailable_provider_is_an_error_or_a_logged_fallback_by_choice() {
        let e = load("simple.onnx", "execution_providers = [\"cuda\", \"cpu\"]")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("execution provider 'cuda' is not available"),
            "{e}"
        );
        assert!(e.contains("on_unavailable_provider = \"fallback\""), "{e}");
        let m = load(
            "simple.onnx",
            "execution_providers = [\"tensorrt\", \"cuda\", \"cpu\"]\non_unavailable_provider = \"fallback\"",
        )
        .unwrap();
        assert_eq!(m.signature().inputs.len(), 2);
    }

    #[test]
    fn the_optimized_model_is_written_where_asked() {
        let out = std::env::temp_dir().join(format!("oxinfer-ort-opt-{}.onnx", std::process::id()));
        let _ = std::fs::remove_file(&out);
        load(
            "mlp.onnx",
            &format!("optimized_model_path = {:?}", out.display().to_string()),
        )
        .unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 0);
    }

    #[test]
    fn library_lookup_explains_itself() {
        let e = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(
            e.contains("/nonexistent/libonnxruntime.so does not exist"),
            "{e}"
        );
    }
}
