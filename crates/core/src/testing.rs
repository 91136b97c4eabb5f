//! Helpers for runtime crates' tests (cargo feature `testing`): load the repository's example
//! models with a runtime and options written as TOML.

use std::path::{Path, PathBuf};

use crate::{LoadRequest, Model, Result, Runtime};

/// The path of an example model (`examples/models/<file>`).
pub fn example_model(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/models")
        .join(file)
}

/// Loads `examples/models/<file>` with `runtime`, `options` being the `[models.options]` TOML.
pub fn load_example(runtime: &dyn Runtime, file: &str, options: &str) -> Result<Box<dyn Model>> {
    let table: toml::Table = toml::from_str(options).expect("test options are valid TOML");
    let path = example_model(file);
    runtime.load(&LoadRequest {
        runtime: runtime.name(),
        name: "m",
        version: "1",
        path: &path,
        base_dir: Path::new("."),
        options: &table,
        settings: &toml::Table::new(),
        instances: 1,
    })
}
