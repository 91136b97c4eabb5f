//! The plugin runtime (`runtime = "plugin"`): loads a shared library that speaks the oxinfer C
//! ABI (`oxinfer-plugin-abi`, `docs/plugin-abi.md`) and serves its model.
//!
//! - The library path comes only from the manifest's `path`; a pinned `sha256` is checked by the
//!   server before this runtime opens the file.
//! - At load, the entry symbol, the magic value, the ABI major version and the table size are
//!   checked; a mismatch stops startup with a message naming the plugin, the ABI it was built for
//!   and the one this server speaks. Libraries are never unloaded, so reloading a model whose
//!   library file has changed since it was opened is refused (the old code would keep running
//!   under the new file's digest): a new library takes a restart or a new file name.
//! - Inputs are lent as pointer + length views of the request's buffers (BYTES tensors are
//!   serialised to the length-prefixed form); outputs are written into buffers this host
//!   allocates and then owns; errors are created by this host.
//! - A plugin that declares itself not thread-safe has its calls serialised.
//!
//! Options: `model_dir` (relative to the manifest) is the plugin's model directory, which must
//! exist and be a directory; every other key of `[models.options]` is passed to the plugin as a
//! JSON object (the plugin checks them: the SDK's `parse_options` into a
//! `#[serde(deny_unknown_fields)]` struct refuses a misspelt key).

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use oxinfer_core::protocol::{TensorMetadata, raw};
use oxinfer_core::{DataType, Error, LoadRequest, Model, ModelSignature, Result, Runtime, Tensor};
use oxinfer_plugin_abi::{
    ABI_MAJOR, ABI_MINOR, ENTRY_SYMBOL, EntryFn, MAGIC, OxError, OxErrorCode, OxHostApi,
    OxPluginApi, OxTensor, datatype as code,
};

/// The runtime factory registered as `plugin`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PluginRuntime;

fn to_code(dt: DataType) -> u32 {
    code::code(dt.as_str()).unwrap_or(0)
}

fn from_code(c: u32) -> Option<DataType> {
    code::name(c)?.parse().ok()
}

/// An error created through [`OxHostApi::error_new`]; the pointer handed to the plugin is a
/// `Box<HostError>`.
struct HostError {
    code: u32,
    message: String,
}

unsafe extern "C" fn error_new(code: u32, message: *const u8, len: usize) -> *mut OxError {
    // SAFETY: the plugin passes `len` readable bytes (or NULL).
    let message =
        String::from_utf8_lossy(unsafe { plugin_slice(message, len) }.unwrap_or_default())
            .into_owned();
    Box::into_raw(Box::new(HostError { code, message })).cast()
}

/// Output storage aligned to 8 bytes (a `Vec<u8>` only guarantees 1), so that a C plugin may
/// write through an `int64_t *` or `double *`.
struct AlignedBuffer {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuffer {
    fn zeroed(len: usize) -> Self {
        AlignedBuffer {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }
}

impl AsRef<[u8]> for AlignedBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }
}

/// An output a plugin allocated: datatype, shape and the buffer it fills.
type Produced = (DataType, Vec<usize>, AlignedBuffer);

/// A slice from a plugin's pointer and length; an empty slice for length 0 (whatever the
/// pointer, NULL included, as C code passes), `None` for NULL with a length.
///
/// # Safety
/// When `len > 0` and `ptr` is not null, `ptr` must point to `len` readable elements that stay
/// valid for `'a`.
unsafe fn plugin_slice<'a, T>(ptr: *const T, len: usize) -> Option<&'a [T]> {
    match (len, ptr.is_null()) {
        (0, _) => Some(&[]),
        (_, true) => None,
        // SAFETY: guaranteed by the caller.
        _ => Some(unsafe { std::slice::from_raw_parts(ptr, len) }),
    }
}

/// Where one `execute` call's outputs go.
struct OutputSink<'a> {
    declared: &'a [TensorMetadata],
    produced: Vec<Option<Produced>>,
}

unsafe extern "C" fn alloc_output(
    ctx: *mut c_void,
    name: *const u8,
    name_len: usize,
    datatype: u32,
    shape: *const i64,
    rank: usize,
    byte_len: usize,
) -> *mut u8 {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `OutputSink` this host passed to `execute` (the ABI requires
        // `alloc_output` to be called from the thread running `execute`); name and shape are
        // valid for the call.
        let (sink, name, shape) = unsafe {
            (
                &mut *ctx.cast::<OutputSink<'_>>(),
                std::str::from_utf8(plugin_slice(name, name_len)?).ok()?,
                plugin_slice(shape, rank)?,
            )
        };
        let ix = sink.declared.iter().position(|t| t.name == name)?;
        let dt = from_code(datatype).filter(|dt| *dt == sink.declared[ix].datatype)?;
        let shape: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()?;
        if let Some(size) = dt.size() {
            let count = oxinfer_core::tensor::element_count(&shape)?;
            if count.checked_mul(size)? != byte_len {
                return None;
            }
        }
        let slot = &mut sink.produced[ix];
        if slot.is_some() {
            // Each output is allocated once: replacing the buffer would free memory the plugin
            // may still hold a pointer to.
            return None;
        }
        *slot = Some((dt, shape, AlignedBuffer::zeroed(byte_len)));
        slot.as_mut().map(|(_, _, buffer)| buffer.as_mut_ptr())
    }));
    result.ok().flatten().unwrap_or(std::ptr::null_mut())
}

static HOST: OxHostApi = OxHostApi {
    struct_size: std::mem::size_of::<OxHostApi>(),
    error_new,
    alloc_output,
};

/// Takes back an error the plugin returned.
fn take_error(plugin: &str, e: *mut OxError) -> Error {
    // SAFETY: every non-null error comes from `error_new` (a `Box<HostError>`), returned once.
    let e = unsafe { Box::from_raw(e.cast::<HostError>()) };
    if e.code == OxErrorCode::InvalidInput as u32 {
        Error::invalid(e.message)
    } else {
        tracing::error!(plugin, "plugin failed: {}", e.message);
        Error::Execution(format!("plugin '{plugin}': {}", e.message))
    }
}

/// An error followed by its sources. libloading's own text is only "dlopen failed" or "dlsym
/// failed"; the system's reason (`dlerror`: "invalid ELF header", "cannot open shared object
/// file: No such file or directory", ...) is its source.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The SHA-256 of a library file, as the server reports a model's digest.
fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Load(format!(
            "cannot load plugin library {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    Ok(hex::encode(sha2::Sha256::digest(bytes)))
}

/// Opened libraries by path, with the digest of the file as it was opened: never unloaded, so
/// their code outlives every instance. A library whose file has changed since is refused: the
/// process would go on running the old code under the new file's digest.
fn open_library(path: &Path) -> Result<&'static libloading::Library> {
    type Open = HashMap<PathBuf, (&'static libloading::Library, String)>;
    static OPEN: OnceLock<Mutex<Open>> = OnceLock::new();
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let sha256 = file_sha256(&key)?;
    if let Some((lib, loaded)) = open.get(&key) {
        if *loaded == sha256 {
            return Ok(lib);
        }
        return Err(Error::Load(format!(
            "plugin library {} has changed since it was loaded (sha256 {loaded}, now {sha256}); \
             a library cannot be unloaded from a running process, so its new code cannot run \
             here: restart the server, or install the new library under a new file name and \
             point the manifest at it",
            path.display()
        )));
    }
    // SAFETY: loading a library runs its initialisers; the manifest names it deliberately (and
    // may pin its sha256, checked before this call).
    let lib = unsafe { libloading::Library::new(&key) }.map_err(|e| {
        Error::Load(format!(
            "cannot load plugin library {}: {}",
            path.display(),
            with_sources(&e)
        ))
    })?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    open.insert(key, (lib, sha256));
    Ok(lib)
}

/// A plugin table's functions, checked to be non-NULL.
#[derive(Clone, Copy)]
struct Functions {
    create: unsafe extern "C" fn(
        *const OxHostApi,
        *const u8,
        usize,
        *const u8,
        usize,
        *mut *mut c_void,
    ) -> *mut OxError,
    metadata_json: unsafe extern "C" fn(*mut c_void, *mut *const u8, *mut usize) -> *mut OxError,
    execute: unsafe extern "C" fn(
        *mut c_void,
        *const OxHostApi,
        *const OxTensor,
        usize,
        *mut c_void,
    ) -> *mut OxError,
    destroy: unsafe extern "C" fn(*mut c_void),
}

/// The table's functions; a NULL one is a load error naming it.
fn functions(name: &str, api: &OxPluginApi) -> Result<Functions> {
    let missing = |field: &str| {
        Error::Load(format!(
            "plugin {name}: its table leaves `{field}` NULL; every function of the table is \
             required"
        ))
    };
    Ok(Functions {
        create: api.create.ok_or_else(|| missing("create"))?,
        metadata_json: api.metadata_json.ok_or_else(|| missing("metadata_json"))?,
        execute: api.execute.ok_or_else(|| missing("execute"))?,
        destroy: api.destroy.ok_or_else(|| missing("destroy"))?,
    })
}

/// Finds and checks a library's plugin table.
fn plugin_api(path: &Path) -> Result<&'static OxPluginApi> {
    let lib = open_library(path)?;
    let name = path.display();
    // SAFETY: the symbol's type is the ABI's entry function type.
    let entry: libloading::Symbol<'static, EntryFn> =
        unsafe { lib.get(ENTRY_SYMBOL) }.map_err(|e| {
            Error::Load(format!(
                "{name} is not an oxinfer plugin: it does not export `oxinfer_plugin_entry` ({})",
                with_sources(&e)
            ))
        })?;
    // SAFETY: calling the entry function, which takes nothing and returns a pointer to a static
    // table (checked below before any other use).
    let api = unsafe { entry() };
    if api.is_null() {
        return Err(Error::Load(format!(
            "plugin {name}: oxinfer_plugin_entry returned null"
        )));
    }
    // SAFETY: the first fields (magic, versions, size) are read before trusting the rest.
    let (magic, major, minor, size) = unsafe {
        let p = api.cast::<u8>();
        (
            std::ptr::read_unaligned(p.cast::<u64>()),
            std::ptr::read_unaligned(p.add(8).cast::<u32>()),
            std::ptr::read_unaligned(p.add(12).cast::<u32>()),
            std::ptr::read_unaligned(p.add(16).cast::<usize>()),
        )
    };
    check_table(&name.to_string(), magic, major, minor, size)?;
    // SAFETY: magic, major version and size are right: the table has the ABI's layout.
    Ok(unsafe { &*api })
}

/// The version of `oxinfer-plugin-sdk` that builds plugins for this host: the SDK and this crate
/// share the workspace's version.
const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Checks the head of a plugin table: magic value, ABI major version, table size.
fn check_table(name: &str, magic: u64, major: u32, minor: u32, size: usize) -> Result<()> {
    if magic != MAGIC {
        return Err(Error::Load(format!(
            "plugin {name}: wrong magic value {magic:#018x} (expected {MAGIC:#018x}): not an oxinfer plugin table"
        )));
    }
    if major != ABI_MAJOR {
        return Err(Error::Load(format!(
            "plugin {name} was built for oxinfer plugin ABI {major}.{minor}, but this server speaks ABI \
             {ABI_MAJOR}.{ABI_MINOR}; rebuild the plugin against oxinfer-plugin-sdk {SDK_VERSION} \
             (ABI {ABI_MAJOR}.{ABI_MINOR}), or, in C, against this server's docs/oxinfer_plugin.h \
             (OX_ABI_MAJOR {ABI_MAJOR})"
        )));
    }
    if size < std::mem::size_of::<OxPluginApi>() {
        return Err(Error::Load(format!(
            "plugin {name} (ABI {major}.{minor}) has a {size}-byte table, smaller than the {} bytes ABI \
             {ABI_MAJOR}.{ABI_MINOR} defines",
            std::mem::size_of::<OxPluginApi>()
        )));
    }
    Ok(())
}

/// The `model_dir` option resolved against the manifest's directory (empty when not given),
/// checked to be an existing directory.
fn model_dir(option: Option<toml::Value>, base_dir: &Path) -> Result<PathBuf> {
    let dir = match option {
        None => return Ok(PathBuf::new()),
        Some(toml::Value::String(dir)) => base_dir.join(dir),
        Some(other) => {
            return Err(Error::Manifest(format!(
                "invalid options for runtime 'plugin': model_dir must be a string, not {other}"
            )));
        }
    };
    let problem = match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => return Ok(dir),
        Ok(_) => "is not a directory".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be read: {e}"),
    };
    Err(Error::Manifest(format!(
        "invalid options for runtime 'plugin': model_dir {} {problem} (a relative model_dir is \
         resolved against the manifest's directory)",
        dir.display()
    )))
}

#[derive(serde::Deserialize)]
struct WireSpec {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
}

#[derive(serde::Deserialize)]
struct WireMetadata {
    inputs: Vec<WireSpec>,
    outputs: Vec<WireSpec>,
}

/// A loaded plugin instance.
struct PluginModel {
    name: String,
    api: &'static OxPluginApi,
    f: Functions,
    instance: *mut c_void,
    signature: ModelSignature,
    /// Held around `execute` when the plugin is not thread-safe.
    serial: Option<Mutex<()>>,
}

// SAFETY: the instance pointer is only used through the plugin's functions; a plugin that is not
// thread-safe is only called under `serial`.
unsafe impl Send for PluginModel {}
// SAFETY: see above.
unsafe impl Sync for PluginModel {}

impl Drop for PluginModel {
    fn drop(&mut self) {
        // SAFETY: the instance was created by this table's `create` and is destroyed once.
        unsafe { (self.f.destroy)(self.instance) };
    }
}

impl Runtime for PluginRuntime {
    fn name(&self) -> &'static str {
        "plugin"
    }

    fn platform(&self) -> &'static str {
        "oxinfer_plugin"
    }

    fn load(&self, request: &LoadRequest<'_>) -> Result<Box<dyn Model>> {
        let mut options = request.options.clone();
        let model_dir = model_dir(options.remove("model_dir"), request.base_dir)?;
        let options_json = serde_json::to_string(&options).map_err(|e| {
            Error::Manifest(format!("plugin options cannot be passed as JSON: {e}"))
        })?;
        let api = plugin_api(request.path)?;
        let plugin = request.name.to_string();
        let f = functions(&request.path.display().to_string(), api)?;
        let dir = model_dir.to_string_lossy();
        let mut instance = std::ptr::null_mut();
        // SAFETY: valid pointers for the call; `instance` receives the new instance.
        let e = unsafe {
            (f.create)(
                &HOST,
                options_json.as_ptr(),
                options_json.len(),
                dir.as_ptr(),
                dir.len(),
                &mut instance,
            )
        };
        if !e.is_null() {
            return Err(Error::Load(format!(
                "plugin '{plugin}' ({}) could not create its model: {}",
                request.path.display(),
                take_error(&plugin, e)
            )));
        }
        if instance.is_null() {
            return Err(Error::Load(format!(
                "plugin '{plugin}' ({}): create reported success but returned no instance (NULL)",
                request.path.display()
            )));
        }
        let mut model = PluginModel {
            name: plugin.clone(),
            api,
            f,
            instance,
            signature: ModelSignature::default(),
            serial: (api.thread_safe == 0).then(|| Mutex::new(())),
        };
        let (mut json, mut len) = (std::ptr::null(), 0usize);
        // SAFETY: the instance is live; the plugin stores a pointer to its own string.
        let e = unsafe { (f.metadata_json)(instance, &mut json, &mut len) };
        if !e.is_null() {
            return Err(Error::Load(format!(
                "plugin '{plugin}': metadata failed: {}",
                take_error(&plugin, e)
            )));
        }
        // SAFETY: the plugin's metadata string is valid until `destroy`.
        let text = unsafe { plugin_slice(json, len) }.ok_or_else(|| {
            Error::Load(format!("plugin '{plugin}': metadata_json returned NULL"))
        })?;
        let metadata: WireMetadata = serde_json::from_slice(text)
            .map_err(|e| Error::Load(format!("plugin '{plugin}': invalid metadata JSON: {e}")))?;
        let spec = |s: WireSpec| TensorMetadata::new(s.name, s.datatype, s.shape);
        model.signature = ModelSignature {
            inputs: metadata.inputs.into_iter().map(spec).collect(),
            outputs: metadata.outputs.into_iter().map(spec).collect(),
        };
        Ok(Box::new(model))
    }
}

impl Model for PluginModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "abi",
                format!("{}.{}", self.api.abi_major, self.api.abi_minor),
            ),
            ("thread_safe", (self.api.thread_safe != 0).to_string()),
        ]
    }

    fn concurrent(&self) -> bool {
        // A thread-safe plugin is called from every worker; one that is not is loaded once per
        // instance (each load is its own plugin state).
        self.serial.is_none()
    }

    fn execute(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        // BYTES inputs go as length-prefixed buffers; the others are lent as they are.
        let buffers: Vec<Bytes> = inputs.iter().map(raw::raw_bytes).collect();
        let shapes: Vec<Vec<i64>> = inputs
            .iter()
            .map(|t| t.shape().iter().map(|&d| d as i64).collect())
            .collect();
        let views: Vec<OxTensor> = inputs
            .iter()
            .zip(&buffers)
            .zip(&shapes)
            .map(|((t, data), shape)| OxTensor {
                name: t.name().as_ptr(),
                name_len: t.name().len(),
                datatype: to_code(t.datatype()),
                shape: shape.as_ptr(),
                rank: shape.len(),
                data: data.as_ptr(),
                data_len: data.len(),
            })
            .collect();
        let mut sink = OutputSink {
            declared: &self.signature.outputs,
            produced: (0..self.signature.outputs.len()).map(|_| None).collect(),
        };
        let _serial = self
            .serial
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
        // SAFETY: the views point into `inputs`, `buffers` and `shapes`, alive for the call; the
        // sink outlives it.
        let e = unsafe {
            (self.f.execute)(
                self.instance,
                &HOST,
                views.as_ptr(),
                views.len(),
                (&mut sink as *mut OutputSink<'_>).cast(),
            )
        };
        if !e.is_null() {
            return Err(take_error(&self.name, e));
        }
        sink.produced
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(produced, meta)| {
                let (dt, shape, data) = produced.ok_or_else(|| {
                    Error::Execution(format!(
                        "plugin '{}' did not produce output '{}'",
                        self.name, meta.name
                    ))
                })?;
                raw::tensor_from_raw(&meta.name, dt, shape, Bytes::from_owner(data))
                    .map_err(|e| Error::Execution(format!("plugin '{}': {e}", self.name)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("oxinfer-plugin-host-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn load(library: &Path, base_dir: &Path, options: &str) -> Result<Box<dyn Model>> {
        let options: toml::Table = toml::from_str(options).unwrap();
        PluginRuntime.load(&LoadRequest {
            runtime: "plugin",
            name: "p",
            version: "1",
            path: library,
            base_dir,
            options: &options,
            settings: &toml::Table::new(),
            instances: 1,
        })
    }

    fn load_error(library: &Path, base_dir: &Path, options: &str) -> String {
        match load(library, base_dir, options) {
            Ok(_) => panic!(
                "{} with options {options:?} should not load",
                library.display()
            ),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_with_the_systems_reason() {
        let dir = temp_dir("not-a-library");
        let text = dir.join("x.so");
        std::fs::write(&text, "a text file, not a shared library\n".repeat(8)).unwrap();
        let short = dir.join("short.so");
        std::fs::write(&short, "not ELF").unwrap();
        for path in [text, short] {
            let e = load_error(&path, &dir, "");
            assert!(
                e.contains(&format!("cannot load plugin library {}: ", path.display())),
                "{e}"
            );
            // The system's reason (dlerror), not only libloading's "dlopen failed".
            assert!(
                e.contains("invalid ELF header") || e.contains("file too short"),
                "{e}"
            );
        }
        let missing = dir.join("libmissing.so");
        let e = load_error(&missing, &dir, "");
        assert!(e.contains("No such file or directory"), "{e}");
    }

    #[test]
    fn a_model_dir_that_is_not_a_directory_is_a_load_error_naming_it() {
        let dir = temp_dir("model-dir");
        // The option is checked before the library is opened.
        let library = dir.join("libnever-opened.so");
        let e = load_error(&library, &dir, "model_dir = \"nope\"");
        assert!(
            e.contains(&format!(
                "model_dir {} does not exist",
                dir.join("nope").display()
            )),
            "{e}"
        );
        std::fs::write(dir.join("model.json"), "{}").unwrap();
        let e = load_error(&library, &dir, "model_dir = \"model.json\"");
        assert!(
            e.contains(&format!(
                "model_dir {} is not a directory",
                dir.join("model.json").display()
            )),
            "{e}"
        );
        let e = load_error(&library, &dir, "model_dir = 3");
        assert!(e.contains("model_dir must be a string, not 3"), "{e}");
        // An existing directory passes: the load goes on to the library.
        std::fs::create_dir(dir.join("models")).unwrap();
        let e = load_error(&library, &dir, "model_dir = \"models\"");
        assert!(e.contains("cannot load plugin library"), "{e}");
        assert_eq!(
            model_dir(Some("models".into()), &dir).unwrap(),
            dir.join("models")
        );
        assert_eq!(model_dir(None, &dir).unwrap(), PathBuf::new());
    }

    #[test]
    fn an_abi_mismatch_names_the_real_versions() {
        let size = std::mem::size_of::<OxPluginApi>();
        let e = check_table("libx.so", MAGIC, ABI_MAJOR + 1, 7, size)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "plugin libx.so was built for oxinfer plugin ABI {}.7, but this server speaks ABI \
                 {ABI_MAJOR}.{ABI_MINOR}",
                ABI_MAJOR + 1
            )),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "oxinfer-plugin-sdk {} (ABI {ABI_MAJOR}.{ABI_MINOR})",
                env!("CARGO_PKG_VERSION")
            )),
            "{e}"
        );
        // SDK_VERSION is this crate's version: both crates take the workspace's.
        for manifest in [
            include_str!("../Cargo.toml"),
            include_str!("../../../crates/plugin-sdk/Cargo.toml"),
        ] {
            assert!(manifest.contains("\nversion.workspace = true\n"));
        }
        assert!(check_table("libx.so", MAGIC, ABI_MAJOR, ABI_MINOR + 1, size).is_ok());
        let e = check_table("libx.so", 0x1234, ABI_MAJOR, ABI_MINOR, size)
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong magic value 0x0000000000001234"), "{e}");
        let e = check_table("libx.so", MAGIC, ABI_MAJOR, ABI_MINOR, 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has a 16-byte table, smaller than"), "{e}");
    }

    /// Builds the C example plugin into `dir`.
    fn c_doubler(dir: &Path) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let library = dir.join("libdoubler.so");
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-Wall", "-Werror", "-I"])
            .arg(root.join("docs"))
            .arg("-o")
            .arg(&library)
            .arg(root.join("plugins/c-doubler/doubler.c"))
            .status()
            .expect("a C compiler (cc)");
        assert!(status.success(), "plugins/c-doubler/doubler.c compiles");
        library
    }

    #[test]
    fn a_library_changed_on_disk_is_not_reloaded_under_its_new_digest() {
        let dir = temp_dir("changed");
        let library = c_doubler(&dir);
        load(&library, &dir, "").unwrap();
        // The same file again: the library already open serves it.
        load(&library, &dir, "").unwrap();
        // A new build in its place (here: the same code with bytes appended, still a valid
        // library), installed as deploys do, by renaming a new file over the old one (writing
        // into the mapped file would change the code running now): its code could not replace
        // the code already mapped.
        let mut bytes = std::fs::read(&library).unwrap();
        bytes.extend_from_slice(b"a new build");
        let staged = dir.join("libdoubler.so.new");
        std::fs::write(&staged, bytes).unwrap();
        std::fs::rename(&staged, &library).unwrap();
        let e = load_error(&library, &dir, "");
        assert!(
            e.contains("has changed since it was loaded") && e.contains("restart the server"),
            "{e}"
        );
    }

    /// Compiles a C plugin whose table is `table` (the initialiser of an `OxPluginApi`, with
    /// `create_null` / `create_ok` / `meta` / `exec` / `destroy` defined).
    fn c_plugin(dir: &Path, table: &str) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let source = dir.join("plugin.c");
        std::fs::write(
            &source,
            format!(
                "#include \"oxinfer_plugin.h\"\n\
                 static OxError *create_null(const OxHostApi *h, const uint8_t *o, size_t ol,\n\
                     const uint8_t *d, size_t dl, void **instance) {{ *instance = 0; return 0; }}\n\
                 static OxError *meta(void *i, const uint8_t **j, size_t *l) {{ return 0; }}\n\
                 static OxError *exec(void *i, const OxHostApi *h, const OxTensor *in, size_t n,\n\
                     void *out) {{ return 0; }}\n\
                 static void destroy(void *i) {{}}\n\
                 static const OxPluginApi API = {{{table}}};\n\
                 const OxPluginApi *oxinfer_plugin_entry(void) {{ return &API; }}\n"
            ),
        )
        .unwrap();
        let library = dir.join("libplugin.so");
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-I"])
            .arg(root.join("docs"))
            .arg("-o")
            .arg(&library)
            .arg(&source)
            .status()
            .expect("a C compiler (cc)");
        assert!(status.success(), "{} compiles", source.display());
        library
    }

    #[test]
    fn a_table_with_a_null_function_or_a_null_instance_is_refused() {
        let header = "OX_MAGIC, OX_ABI_MAJOR, OX_ABI_MINOR, sizeof(OxPluginApi), 1";
        let dir = temp_dir("null-execute");
        let library = c_plugin(&dir, &format!("{header}, create_null, meta, 0, destroy"));
        let e = load_error(&library, &dir, "");
        assert!(e.contains("leaves `execute` NULL"), "{e}");
        let dir = temp_dir("null-instance");
        let library = c_plugin(&dir, &format!("{header}, create_null, meta, exec, destroy"));
        let e = load_error(&library, &dir, "");
        assert!(e.contains("returned no instance (NULL)"), "{e}");
    }

    #[test]
    fn the_c_example_plugin_loads_and_refuses_options() {
        let dir = temp_dir("c-doubler");
        let library = c_doubler(&dir);
        let model = load(&library, &dir, "").unwrap();
        assert_eq!(model.signature().inputs[0].name, "x");
        assert_eq!(model.signature().outputs[0].name, "y");
        let e = load_error(&library, &dir, "threshhold = 0.5");
        assert!(
            e.contains("plugin 'p'")
                && e.contains("c-doubler takes no options, got {\"threshhold\":0.5}"),
            "{e}"
        );
    }
}
