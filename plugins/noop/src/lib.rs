//! Returns its FP32 input `x` `[-1, 16]` as `y`: the smallest possible plugin, for measuring
//! what the plugin boundary costs (compare with `examples/models/identity.onnx` on tract).
//!
//! It takes no options: any key under `[models.options]` is refused at load.

use std::path::Path;

use oxinfer_plugin_sdk::{
    DataType, Metadata, Outputs, Plugin, PluginError, TensorSpec, TensorView, export_plugin,
    parse_options,
};
use serde::Deserialize;

/// No options: `deny_unknown_fields` makes any key an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {}

/// The plugin.
pub struct Noop;

impl Plugin for Noop {
    fn load(options: serde_json::Value, _model_dir: &Path) -> Result<Self, PluginError> {
        let Options {} = parse_options(options)?;
        Ok(Noop)
    }

    fn metadata(&self) -> Metadata {
        Metadata {
            inputs: vec![TensorSpec::new("x", DataType::Fp32, &[-1, 16])],
            outputs: vec![TensorSpec::new("y", DataType::Fp32, &[-1, 16])],
        }
    }

    fn infer(
        &self,
        inputs: &[TensorView<'_>],
        outputs: &mut Outputs<'_>,
    ) -> Result<(), PluginError> {
        outputs.add_raw("y", DataType::Fp32, inputs[0].shape(), inputs[0].bytes())
    }
}

export_plugin!(Noop);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_option_is_an_error() {
        assert!(Noop::load(serde_json::json!({}), Path::new("")).is_ok());
        let e = Noop::load(serde_json::json!({"threshhold": 0.5}), Path::new(""))
            .err()
            .expect("an unknown option is refused");
        assert!(
            e.to_string()
                .starts_with("invalid plugin options: unknown field `threshhold`"),
            "{e}"
        );
    }
}
