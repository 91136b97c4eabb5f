//! Write an oxinfer model plugin in safe Rust.
//!
//! Implement [`Plugin`] for your model type and export it with [`export_plugin!`]; build the crate
//! as a `cdylib`; name the library in the manifest with `runtime = "plugin"`. Every entry point
//! the macro generates catches panics and turns them into internal errors: a panic never crosses
//! into the server, the request fails with 500 and the server keeps serving.
//!
//! ```no_run
//! use oxinfer_plugin_sdk::{export_plugin, serde_json, DataType, Metadata, Outputs, Plugin, PluginError, TensorSpec, TensorView};
//!
//! struct Doubler;
//!
//! impl Plugin for Doubler {
//!     fn load(_options: serde_json::Value, _dir: &std::path::Path) -> Result<Self, PluginError> {
//!         Ok(Doubler)
//!     }
//!     fn metadata(&self) -> Metadata {
//!         Metadata {
//!             inputs: vec![TensorSpec::new("x", DataType::Fp32, &[-1])],
//!             outputs: vec![TensorSpec::new("y", DataType::Fp32, &[-1])],
//!         }
//!     }
//!     fn infer(&self, inputs: &[TensorView<'_>], outputs: &mut Outputs<'_>) -> Result<(), PluginError> {
//!         let x = inputs[0].f32s()?;
//!         let y: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
//!         outputs.add_f32("y", inputs[0].shape(), &y)
//!     }
//! }
//!
//! export_plugin!(Doubler);
//! ```

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::path::Path;

pub use oxinfer_plugin_abi as abi;
pub use serde_json;

use abi::{OxErrorCode, OxHostApi, datatype as code};

/// The OIP datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

const TYPES: [(DataType, u32, &str, usize); 14] = [
    (DataType::Bool, code::BOOL, "BOOL", 1),
    (DataType::Uint8, code::UINT8, "UINT8", 1),
    (DataType::Uint16, code::UINT16, "UINT16", 2),
    (DataType::Uint32, code::UINT32, "UINT32", 4),
    (DataType::Uint64, code::UINT64, "UINT64", 8),
    (DataType::Int8, code::INT8, "INT8", 1),
    (DataType::Int16, code::INT16, "INT16", 2),
    (DataType::Int32, code::INT32, "INT32", 4),
    (DataType::Int64, code::INT64, "INT64", 8),
    (DataType::Fp16, code::FP16, "FP16", 2),
    (DataType::Bf16, code::BF16, "BF16", 2),
    (DataType::Fp32, code::FP32, "FP32", 4),
    (DataType::Fp64, code::FP64, "FP64", 8),
    (DataType::Bytes, code::BYTES, "BYTES", 0),
];

impl DataType {
    /// The ABI code.
    pub fn code(self) -> u32 {
        TYPES.iter().find(|t| t.0 == self).map_or(0, |t| t.1)
    }

    /// The datatype of an ABI code.
    pub fn from_code(c: u32) -> Option<Self> {
        TYPES.iter().find(|t| t.1 == c).map(|t| t.0)
    }

    /// The protocol name (`"FP32"`).
    pub fn as_str(self) -> &'static str {
        TYPES.iter().find(|t| t.0 == self).map_or("", |t| t.2)
    }

    /// Bytes per element; `None` for `BYTES`.
    pub fn size(self) -> Option<usize> {
        TYPES
            .iter()
            .find(|t| t.0 == self)
            .and_then(|t| (t.3 > 0).then_some(t.3))
    }
}

/// An error to return from a plugin: bad input (400) or internal (500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    code: OxErrorCode,
    message: String,
}

impl PluginError {
    /// The request's inputs are wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        PluginError {
            code: OxErrorCode::InvalidInput,
            message: message.into(),
        }
    }

    /// The plugin failed.
    pub fn internal(message: impl Into<String>) -> Self {
        PluginError {
            code: OxErrorCode::Internal,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One input or output in a plugin's metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// Datatype name (`"FP32"`).
    pub datatype: &'static str,
    /// Shape; -1 for dynamic dims.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// A tensor description.
    pub fn new(name: &str, datatype: DataType, shape: &[i64]) -> Self {
        TensorSpec {
            name: name.to_string(),
            datatype: datatype.as_str(),
            shape: shape.to_vec(),
        }
    }
}

/// A plugin's inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    /// Inputs, in the order `infer` receives them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs; `infer` must produce each of them.
    pub outputs: Vec<TensorSpec>,
}

/// An input tensor, borrowed from the host for one call.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [i64],
    data: &'a [u8],
}

macro_rules! typed {
    ($($fn:ident: $t:ty = $dt:ident),*) => {$(
        #[doc = concat!("The elements as `", stringify!($t), "` (fails unless the datatype is ", stringify!($dt), ").")]
        pub fn $fn(&self) -> Result<Vec<$t>, PluginError> {
            self.expect(DataType::$dt)?;
            Ok(self.data
                .chunks_exact(std::mem::size_of::<$t>())
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                .collect())
        }
    )*};
}

impl<'a> TensorView<'a> {
    /// The name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The datatype.
    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    /// The shape.
    pub fn shape(&self) -> &'a [i64] {
        self.shape
    }

    /// The raw bytes (little-endian; BYTES length-prefixed).
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    fn expect(&self, dt: DataType) -> Result<(), PluginError> {
        if self.datatype == dt {
            Ok(())
        } else {
            Err(PluginError::invalid(format!(
                "input '{}' is {}, expected {}",
                self.name,
                self.datatype.as_str(),
                dt.as_str()
            )))
        }
    }

    typed!(f32s: f32 = Fp32, f64s: f64 = Fp64, i32s: i32 = Int32, i64s: i64 = Int64, u8s: u8 = Uint8);

    /// The elements of a BOOL tensor.
    pub fn bools(&self) -> Result<Vec<bool>, PluginError> {
        self.expect(DataType::Bool)?;
        Ok(self.data.iter().map(|&b| b != 0).collect())
    }

    /// The elements of a BYTES tensor.
    pub fn strings(&self) -> Result<Vec<&'a [u8]>, PluginError> {
        self.expect(DataType::Bytes)?;
        let mut items = Vec::new();
        let mut rest = self.data;
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_at_checked(4)
                .ok_or_else(|| PluginError::invalid("truncated BYTES"))?;
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let (item, tail) = tail
                .split_at_checked(len)
                .ok_or_else(|| PluginError::invalid("truncated BYTES"))?;
            items.push(item);
            rest = tail;
        }
        Ok(items)
    }
}

/// Where a plugin writes its outputs: memory handed out by the host.
pub struct Outputs<'a> {
    host: &'a OxHostApi,
    ctx: *mut c_void,
}

impl Outputs<'_> {
    /// Writes an output from raw little-endian bytes (BYTES: length-prefixed elements).
    pub fn add_raw(
        &mut self,
        name: &str,
        datatype: DataType,
        shape: &[i64],
        bytes: &[u8],
    ) -> Result<(), PluginError> {
        // SAFETY: the host function and context come from the host for this call; the name and
        // shape pointers are valid for the call; the returned buffer has `bytes.len()` bytes.
        unsafe {
            let buffer = (self.host.alloc_output)(
                self.ctx,
                name.as_ptr(),
                name.len(),
                datatype.code(),
                shape.as_ptr(),
                shape.len(),
                bytes.len(),
            );
            if buffer.is_null() {
                return Err(PluginError::internal(format!(
                    "the host refused output '{name}' ({} {shape:?}, {} bytes): not declared, or the size does not fit",
                    datatype.as_str(),
                    bytes.len()
                )));
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer, bytes.len());
        }
        Ok(())
    }

    /// Writes an FP32 output.
    pub fn add_f32(
        &mut self,
        name: &str,
        shape: &[i64],
        values: &[f32],
    ) -> Result<(), PluginError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, DataType::Fp32, shape, &bytes)
    }

    /// Writes an FP64 output.
    pub fn add_f64(
        &mut self,
        name: &str,
        shape: &[i64],
        values: &[f64],
    ) -> Result<(), PluginError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, DataType::Fp64, shape, &bytes)
    }

    /// Writes an INT64 output.
    pub fn add_i64(
        &mut self,
        name: &str,
        shape: &[i64],
        values: &[i64],
    ) -> Result<(), PluginError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, DataType::Int64, shape, &bytes)
    }

    /// Writes a BOOL output.
    pub fn add_bool(
        &mut self,
        name: &str,
        shape: &[i64],
        values: &[bool],
    ) -> Result<(), PluginError> {
        let bytes: Vec<u8> = values.iter().map(|&b| u8::from(b)).collect();
        self.add_raw(name, DataType::Bool, shape, &bytes)
    }

    /// Writes a BYTES output.
    pub fn add_bytes<B: AsRef<[u8]>>(
        &mut self,
        name: &str,
        shape: &[i64],
        values: &[B],
    ) -> Result<(), PluginError> {
        let mut bytes = Vec::new();
        for v in values {
            let v = v.as_ref();
            bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
            bytes.extend_from_slice(v);
        }
        self.add_raw(name, DataType::Bytes, shape, &bytes)
    }
}

/// A custom model served by oxinfer.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// Whether one instance may run concurrent requests. `false` makes the host serialise calls.
    const THREAD_SAFE: bool = true;

    /// Creates the model from its manifest options (`[models.options]` without `model_dir`, as
    /// JSON) and its model directory (empty when the manifest gives none).
    fn load(options: serde_json::Value, model_dir: &Path) -> Result<Self, PluginError>;

    /// The inputs and outputs.
    fn metadata(&self) -> Metadata;

    /// Runs one request: `inputs` in the metadata's order (the host has checked names,
    /// datatypes and shapes); write every output to `outputs`.
    fn infer(
        &self,
        inputs: &[TensorView<'_>],
        outputs: &mut Outputs<'_>,
    ) -> Result<(), PluginError>;
}

/// Deserializes plugin options into a typed struct. Give the struct
/// `#[serde(deny_unknown_fields)]`, so that a misspelt key is a load error ("invalid plugin
/// options: unknown field `threshhold`, expected `threshold`") rather than silently ignored; a
/// plugin without options can parse into an empty struct, which then refuses every key.
///
/// ```
/// use oxinfer_plugin_sdk::{parse_options, serde_json::json};
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Options {
///     #[serde(default)]
///     threshold: f32,
/// }
///
/// let options: Options = parse_options(json!({"threshold": 0.3})).unwrap();
/// assert_eq!(options.threshold, 0.3);
/// assert!(parse_options::<Options>(json!({"threshhold": 0.3})).is_err());
/// ```
pub fn parse_options<T: serde::de::DeserializeOwned>(
    options: serde_json::Value,
) -> Result<T, PluginError> {
    serde_json::from_value(options)
        .map_err(|e| PluginError::invalid(format!("invalid plugin options: {e}")))
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use abi::{OxError, OxPluginApi, OxTensor};
    use std::panic::{AssertUnwindSafe, catch_unwind};

    struct Instance<P> {
        plugin: P,
        metadata_json: String,
    }

    fn error(host: *const OxHostApi, e: PluginError) -> *mut OxError {
        // SAFETY: `host` is the table the host passed to this call.
        unsafe { ((*host).error_new)(e.code as u32, e.message.as_ptr(), e.message.len()) }
    }

    fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".into())
    }

    /// Runs `f`, turning an error or a panic into a host error.
    fn guard(host: *const OxHostApi, f: impl FnOnce() -> Result<(), PluginError>) -> *mut OxError {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(())) => std::ptr::null_mut(),
            Ok(Err(e)) => error(host, e),
            Err(payload) => error(
                host,
                PluginError::internal(format!("plugin panicked: {}", panic_message(payload))),
            ),
        }
    }

    unsafe fn text<'a>(ptr: *const u8, len: usize) -> &'a str {
        if len == 0 {
            return "";
        }
        // SAFETY: the host passes valid UTF-8 of `len` bytes, alive for the call.
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr, len)) }
    }

    unsafe extern "C" fn create<P: Plugin>(
        host: *const OxHostApi,
        options: *const u8,
        options_len: usize,
        dir: *const u8,
        dir_len: usize,
        instance: *mut *mut c_void,
    ) -> *mut OxError {
        guard(host, || {
            // SAFETY: see `text`.
            let (options, dir) = unsafe { (text(options, options_len), text(dir, dir_len)) };
            let options = serde_json::from_str(options)
                .map_err(|e| PluginError::invalid(format!("options are not JSON: {e}")))?;
            let plugin = P::load(options, Path::new(dir))?;
            let metadata_json = serde_json::to_string(&plugin.metadata())
                .map_err(|e| PluginError::internal(e.to_string()))?;
            // SAFETY: `instance` points to storage the host provides for the result.
            unsafe {
                *instance = Box::into_raw(Box::new(Instance {
                    plugin,
                    metadata_json,
                }))
                .cast()
            };
            Ok(())
        })
    }

    unsafe extern "C" fn metadata_json<P: Plugin>(
        instance: *mut c_void,
        json: *mut *const u8,
        len: *mut usize,
    ) -> *mut OxError {
        // SAFETY: `instance` was created by `create::<P>`; the out pointers are the host's.
        unsafe {
            let instance = &*instance.cast::<Instance<P>>();
            *json = instance.metadata_json.as_ptr();
            *len = instance.metadata_json.len();
        }
        std::ptr::null_mut()
    }

    unsafe extern "C" fn execute<P: Plugin>(
        instance: *mut c_void,
        host: *const OxHostApi,
        inputs: *const OxTensor,
        input_count: usize,
        outputs: *mut c_void,
    ) -> *mut OxError {
        guard(host, || {
            // SAFETY: the host lends `input_count` tensors whose pointers are valid for the call,
            // and `instance` was created by `create::<P>`.
            let (instance, views) = unsafe {
                let instance = &*instance.cast::<Instance<P>>();
                let raw = if input_count == 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(inputs, input_count)
                };
                let views = raw
                    .iter()
                    .map(|t| {
                        let datatype = DataType::from_code(t.datatype)
                            .ok_or_else(|| PluginError::internal("unknown datatype code"))?;
                        let slice = |p: *const u8, n: usize| {
                            if n == 0 {
                                &[][..]
                            } else {
                                std::slice::from_raw_parts(p, n)
                            }
                        };
                        Ok(TensorView {
                            name: text(t.name, t.name_len),
                            datatype,
                            shape: if t.rank == 0 {
                                &[]
                            } else {
                                std::slice::from_raw_parts(t.shape, t.rank)
                            },
                            data: slice(t.data, t.data_len),
                        })
                    })
                    .collect::<Result<Vec<_>, PluginError>>()?;
                (instance, views)
            };
            // SAFETY: `host` is valid for the call.
            let mut out = Outputs {
                host: unsafe { &*host },
                ctx: outputs,
            };
            instance.plugin.infer(&views, &mut out)
        })
    }

    unsafe extern "C" fn destroy<P: Plugin>(instance: *mut c_void) {
        if !instance.is_null() {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: created by `create::<P>`, destroyed once by the host.
                drop(unsafe { Box::from_raw(instance.cast::<Instance<P>>()) });
            }));
        }
    }

    /// The table for plugin type `P`.
    pub const fn api<P: Plugin>() -> OxPluginApi {
        OxPluginApi {
            magic: abi::MAGIC,
            abi_major: abi::ABI_MAJOR,
            abi_minor: abi::ABI_MINOR,
            struct_size: std::mem::size_of::<OxPluginApi>(),
            thread_safe: P::THREAD_SAFE as u32,
            create: Some(create::<P>),
            metadata_json: Some(metadata_json::<P>),
            execute: Some(execute::<P>),
            destroy: Some(destroy::<P>),
        }
    }
}

/// Exports a [`Plugin`] type as this library's `oxinfer_plugin_entry`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The plugin's entry point, called by the oxinfer host.
        #[unsafe(no_mangle)]
        pub extern "C" fn oxinfer_plugin_entry() -> *const $crate::abi::OxPluginApi {
            static API: $crate::abi::OxPluginApi = $crate::__private::api::<$plugin>();
            &API
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Options {
        #[serde(default)]
        threshold: f32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoOptions {}

    #[test]
    fn a_misspelt_option_is_an_invalid_input_error() {
        let options: Options = parse_options(serde_json::json!({"threshold": 0.25})).unwrap();
        assert_eq!(options.threshold, 0.25);
        let e = parse_options::<Options>(serde_json::json!({"threshhold": 0.25})).unwrap_err();
        assert_eq!(e.code, OxErrorCode::InvalidInput);
        assert_eq!(
            e.to_string(),
            "invalid plugin options: unknown field `threshhold`, expected `threshold`"
        );
        parse_options::<NoOptions>(serde_json::json!({})).unwrap();
        let e = parse_options::<NoOptions>(serde_json::json!({"x": 1})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid plugin options: unknown field `x`"),
            "{e}"
        );
    }
}
