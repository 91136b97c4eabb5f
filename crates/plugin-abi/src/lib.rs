//! The C ABI between the oxinfer host and a model plugin (a shared library).
//!
//! Written down for C and C++ authors in `docs/plugin-abi.md`, with the header
//! `docs/oxinfer_plugin.h`. In short:
//!
//! 1. The library exports `const OxPluginApi *oxinfer_plugin_entry(void)` ([`ENTRY_SYMBOL`]).
//! 2. The table starts with [`MAGIC`], [`ABI_MAJOR`], [`ABI_MINOR`] and its own size; the host
//!    refuses a table whose magic or major version differ, or that is smaller than it needs.
//! 3. `create` builds a model instance from the manifest options (JSON) and the model directory;
//!    `metadata_json` describes its inputs and outputs; `execute` runs one request; `destroy`
//!    frees the instance. Libraries are never unloaded.
//! 4. Inputs are lent as [`OxTensor`] views valid for the call. Outputs are written into memory
//!    the host hands out through [`OxHostApi::alloc_output`], so the host owns them. Errors are
//!    created by the host through [`OxHostApi::error_new`], with an [`OxErrorCode`].
//!
//! Everything here is plain data: no allocation, no Rust-only types.

#![allow(unsafe_code)]

use std::ffi::c_void;

/// The table's magic value: the bytes `OXINFPLG` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"OXINFPLG");
/// The ABI's major version: a host and a plugin must agree on it.
pub const ABI_MAJOR: u32 = 1;
/// The ABI's minor version: additions that older hosts can ignore.
pub const ABI_MINOR: u32 = 0;
/// The symbol every plugin exports (NUL-terminated).
pub const ENTRY_SYMBOL: &[u8] = b"oxinfer_plugin_entry\0";

/// Datatype codes of [`OxTensor::datatype`], in the OIP's order.
pub mod datatype {
    #![allow(missing_docs)]
    pub const BOOL: u32 = 1;
    pub const UINT8: u32 = 2;
    pub const UINT16: u32 = 3;
    pub const UINT32: u32 = 4;
    pub const UINT64: u32 = 5;
    pub const INT8: u32 = 6;
    pub const INT16: u32 = 7;
    pub const INT32: u32 = 8;
    pub const INT64: u32 = 9;
    pub const FP16: u32 = 10;
    pub const BF16: u32 = 11;
    pub const FP32: u32 = 12;
    pub const FP64: u32 = 13;
    pub const BYTES: u32 = 14;

    /// Every code with its OIP datatype name.
    pub const NAMES: [(u32, &str); 14] = [
        (BOOL, "BOOL"),
        (UINT8, "UINT8"),
        (UINT16, "UINT16"),
        (UINT32, "UINT32"),
        (UINT64, "UINT64"),
        (INT8, "INT8"),
        (INT16, "INT16"),
        (INT32, "INT32"),
        (INT64, "INT64"),
        (FP16, "FP16"),
        (BF16, "BF16"),
        (FP32, "FP32"),
        (FP64, "FP64"),
        (BYTES, "BYTES"),
    ];

    /// The OIP name of a code.
    pub fn name(code: u32) -> Option<&'static str> {
        NAMES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
    }

    /// The code of an OIP name.
    pub fn code(name: &str) -> Option<u32> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
    }
}

/// Error classes a plugin reports; the host maps them to the protocol.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OxErrorCode {
    /// The request's inputs are wrong (HTTP 400, gRPC INVALID_ARGUMENT).
    InvalidInput = 1,
    /// The plugin failed (HTTP 500, gRPC INTERNAL).
    Internal = 2,
}

/// An error, created by the host ([`OxHostApi::error_new`]) and owned by it.
#[repr(C)]
pub struct OxError {
    _opaque: [u8; 0],
}

/// A tensor lent by the host for the duration of one call. Fixed-size data is little-endian and
/// row-major; `BYTES` data is, per element, a little-endian `u32` length followed by the bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OxTensor {
    /// The name, UTF-8, not NUL-terminated.
    pub name: *const u8,
    /// Its length in bytes.
    pub name_len: usize,
    /// A [`datatype`] code.
    pub datatype: u32,
    /// The shape.
    pub shape: *const i64,
    /// The number of dimensions.
    pub rank: usize,
    /// The data.
    pub data: *const u8,
    /// Its length in bytes.
    pub data_len: usize,
}

/// Functions the host provides to the plugin.
#[repr(C)]
pub struct OxHostApi {
    /// `size_of::<OxHostApi>()` as the host built it.
    pub struct_size: usize,
    /// Creates an error with a code and a UTF-8 message; the host owns it. Return it from a
    /// plugin function to report the failure.
    pub error_new:
        unsafe extern "C" fn(code: u32, message: *const u8, message_len: usize) -> *mut OxError,
    /// Allocates the output `name` (UTF-8) with a datatype, shape and byte length, and returns
    /// the buffer to fill: 8-byte aligned, valid until `execute` returns. Null if the request is
    /// refused: an unknown output name, a byte length that does not fit the shape, or an output
    /// already allocated (each output is allocated once). Call it only from the thread running
    /// `execute`.
    pub alloc_output: unsafe extern "C" fn(
        outputs: *mut c_void,
        name: *const u8,
        name_len: usize,
        datatype: u32,
        shape: *const i64,
        rank: usize,
        byte_len: usize,
    ) -> *mut u8,
}

/// The table a plugin exports. Its function pointers are nullable, as in C (`Option` of a
/// function pointer has the pointer's layout): the host refuses a table that leaves one NULL
/// before calling any of them.
#[repr(C)]
pub struct OxPluginApi {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`ABI_MAJOR`] the plugin was built for.
    pub abi_major: u32,
    /// [`ABI_MINOR`] the plugin was built for.
    pub abi_minor: u32,
    /// `size_of::<OxPluginApi>()` as the plugin built it.
    pub struct_size: usize,
    /// Non-zero when one instance may execute concurrent requests; zero makes the host
    /// serialise calls to an instance.
    pub thread_safe: u32,
    /// Creates an instance from the manifest options (a JSON object, UTF-8) and the model
    /// directory (UTF-8 path, may be empty). On success stores the instance in `*instance` and
    /// returns null; on failure returns an error.
    pub create: Option<
        unsafe extern "C" fn(
            host: *const OxHostApi,
            options_json: *const u8,
            options_len: usize,
            model_dir: *const u8,
            model_dir_len: usize,
            instance: *mut *mut c_void,
        ) -> *mut OxError,
    >,
    /// The instance's metadata as JSON (`{"inputs":[{"name","datatype","shape"}],"outputs":[...]}`,
    /// -1 for dynamic dims), UTF-8, owned by the instance and valid until `destroy`.
    pub metadata_json: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            json: *mut *const u8,
            json_len: *mut usize,
        ) -> *mut OxError,
    >,
    /// Runs one request: `inputs` in the metadata's order; each output allocated through
    /// `host->alloc_output(outputs, ...)` and filled before returning null (or an error).
    pub execute: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            host: *const OxHostApi,
            inputs: *const OxTensor,
            input_count: usize,
            outputs: *mut c_void,
        ) -> *mut OxError,
    >,
    /// Frees an instance.
    pub destroy: Option<unsafe extern "C" fn(instance: *mut c_void)>,
}

/// The type of the entry symbol.
pub type EntryFn = unsafe extern "C" fn() -> *const OxPluginApi;
