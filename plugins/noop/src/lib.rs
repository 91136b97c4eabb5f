//! Returns its FP32 input `x` `[-1, 16]` as `y`: the smallest possible plugin, for measuring
//! what the plugin boundary costs (compare with `examples/models/identity.onnx` on tract).

use std::path::Path;

use oxinfer_plugin_sdk::{
    DataType, Metadata, Outputs, Plugin, PluginError, TensorSpec, TensorView, export_plugin,
};

/// The plugin.
pub struct Noop;

impl Plugin for Noop {
    fn load(_options: serde_json::Value, _model_dir: &Path) -> Result<Self, PluginError> {
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
