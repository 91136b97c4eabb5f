//! Test fixture for the host's ABI checks: exports `oxinfer_plugin_entry` with a table that is
//! wrong in the way `OXINFER_TEST_ABI_MISMATCH` says: `magic`, `major` or `size`.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::OnceLock;

use oxinfer_plugin_abi::{ABI_MAJOR, MAGIC, OxError, OxHostApi, OxPluginApi, OxTensor};

unsafe extern "C" fn create(
    _: *const OxHostApi,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut *mut c_void,
) -> *mut OxError {
    std::ptr::null_mut()
}
unsafe extern "C" fn metadata(_: *mut c_void, _: *mut *const u8, _: *mut usize) -> *mut OxError {
    std::ptr::null_mut()
}
unsafe extern "C" fn execute(
    _: *mut c_void,
    _: *const OxHostApi,
    _: *const OxTensor,
    _: usize,
    _: *mut c_void,
) -> *mut OxError {
    std::ptr::null_mut()
}
unsafe extern "C" fn destroy(_: *mut c_void) {}

/// The entry point, with a deliberately wrong table.
#[unsafe(no_mangle)]
pub extern "C" fn oxinfer_plugin_entry() -> *const OxPluginApi {
    static TABLE: OnceLock<OxPluginApi> = OnceLock::new();
    TABLE.get_or_init(|| {
        let what = std::env::var("OXINFER_TEST_ABI_MISMATCH").unwrap_or_default();
        OxPluginApi {
            magic: if what == "magic" { 0x1234 } else { MAGIC },
            abi_major: if what == "major" {
                ABI_MAJOR + 1
            } else {
                ABI_MAJOR
            },
            abi_minor: 7,
            struct_size: if what == "size" {
                16
            } else {
                std::mem::size_of::<OxPluginApi>()
            },
            thread_safe: 1,
            create: Some(create),
            metadata_json: Some(metadata),
            execute: Some(execute),
            destroy: Some(destroy),
        }
    })
}
