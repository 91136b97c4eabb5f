//! The models being served: which runtimes are compiled in ([`registry`]), how a manifest
//! entry is loaded ([`served`]; models named by URI are fetched by `oxinfer-sources` first),
//! the repository of loaded versions with its load/unload semantics ([`repository`]), and the
//! Triton model configuration they report ([`model_config`]); after loads and unloads, the C
//! heap's free memory goes back to the system ([`crate::heap`]).

pub(crate) mod model_config;
pub(crate) mod registry;
pub(crate) mod repository;
pub(crate) mod served;

pub use registry::RuntimeRegistry;
pub use repository::{ModelRepository, ReloadReport};
pub use served::ServedModel;
