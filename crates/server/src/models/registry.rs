//! The runtimes compiled into the binary, by the name a manifest uses for them.

use std::collections::BTreeMap;
use std::sync::Arc;

use oxinfer_core::{Error, Result, Runtime};

/// Runtime names a manifest may use, whether or not this binary was built with them, and the
/// cargo feature that adds each.
const KNOWN_RUNTIMES: [(&str, &str); 4] = [
    ("tract", "tract"),
    ("onnxruntime", "onnxruntime"),
    ("candle", "candle"),
    ("plugin", "plugin"),
];

/// The runtimes compiled into this binary, by manifest name.
#[derive(Default, Clone)]
pub struct RuntimeRegistry {
    runtimes: BTreeMap<&'static str, Arc<dyn Runtime>>,
}

impl RuntimeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a runtime under its [`Runtime::name`].
    pub fn register(&mut self, runtime: Arc<dyn Runtime>) -> &mut Self {
        self.runtimes.insert(runtime.name(), runtime);
        self
    }

    /// The names of the registered runtimes.
    pub fn names(&self) -> Vec<&'static str> {
        self.runtimes.keys().copied().collect()
    }

    /// Finds a runtime; a known runtime that was not compiled in says which feature adds it.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Runtime>> {
        if let Some(rt) = self.runtimes.get(name) {
            return Ok(rt);
        }
        let available = self.names().join(", ");
        Err(Error::Manifest(
            match KNOWN_RUNTIMES.iter().find(|(n, _)| *n == name) {
                Some((_, feature)) => format!(
                    "runtime '{name}' is not built into this oxinfer binary (built with: \
                     {available}); rebuild with `--features {feature}`"
                ),
                None => format!("unknown runtime '{name}' (available: {available})"),
            },
        ))
    }
}

impl std::fmt::Debug for RuntimeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_runtime_left_out_of_the_build_names_its_feature() {
        let registry = RuntimeRegistry::new();
        let e = registry.get("candle").err().unwrap().to_string();
        assert!(
            e.contains("not built into this oxinfer binary")
                && e.contains("rebuild with `--features candle`"),
            "{e}"
        );
        let e = registry.get("pytorch").err().unwrap().to_string();
        assert!(e.contains("unknown runtime 'pytorch'"), "{e}");
    }
}
