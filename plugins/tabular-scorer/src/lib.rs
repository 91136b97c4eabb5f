//! A tabular scorer: logistic regression whose coefficients come from `model.json` in the model
//! directory. Input `features` FP32 `[-1, n]`; outputs `probability` FP32 `[-1]` and `label`
//! BYTES `[-1]` (`labels[1]` when the probability reaches `threshold`, else `labels[0]`).
//!
//! `model.json`:
//! ```json
//! {"features": ["age", "income"], "coefficients": [0.5, -1.0], "intercept": 0.1,
//!  "labels": ["reject", "approve"]}
//! ```
//! Options: `threshold` (default 0.5).

use std::path::Path;

use oxinfer_plugin_sdk::{
    DataType, Metadata, Outputs, Plugin, PluginError, TensorSpec, TensorView, export_plugin,
    parse_options,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    features: Vec<String>,
    coefficients: Vec<f32>,
    intercept: f32,
    labels: [String; 2],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "half")]
    threshold: f32,
}

fn half() -> f32 {
    0.5
}

/// The loaded scorer.
pub struct TabularScorer {
    model: ModelFile,
    threshold: f32,
}

impl Plugin for TabularScorer {
    fn load(options: serde_json::Value, model_dir: &Path) -> Result<Self, PluginError> {
        let options: Options = parse_options(options)?;
        let path = model_dir.join("model.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| PluginError::internal(format!("cannot read {}: {e}", path.display())))?;
        let model: ModelFile = serde_json::from_str(&text)
            .map_err(|e| PluginError::internal(format!("invalid {}: {e}", path.display())))?;
        if model.features.len() != model.coefficients.len() {
            return Err(PluginError::internal(
                "model.json: one coefficient per feature",
            ));
        }
        Ok(TabularScorer {
            model,
            threshold: options.threshold,
        })
    }

    fn metadata(&self) -> Metadata {
        let n = self.model.coefficients.len() as i64;
        Metadata {
            inputs: vec![TensorSpec::new("features", DataType::Fp32, &[-1, n])],
            outputs: vec![
                TensorSpec::new("probability", DataType::Fp32, &[-1]),
                TensorSpec::new("label", DataType::Bytes, &[-1]),
            ],
        }
    }

    fn infer(
        &self,
        inputs: &[TensorView<'_>],
        outputs: &mut Outputs<'_>,
    ) -> Result<(), PluginError> {
        let features = inputs[0].f32s()?;
        let n = self.model.coefficients.len();
        let rows = inputs[0].shape()[0];
        let probabilities: Vec<f32> = features
            .chunks(n)
            .map(|row| {
                let z = self.model.intercept
                    + row
                        .iter()
                        .zip(&self.model.coefficients)
                        .map(|(x, w)| x * w)
                        .sum::<f32>();
                1.0 / (1.0 + (-z).exp())
            })
            .collect();
        let labels: Vec<&str> = probabilities
            .iter()
            .map(|&p| &*self.model.labels[usize::from(p >= self.threshold)])
            .collect();
        outputs.add_f32("probability", &[rows], &probabilities)?;
        outputs.add_bytes("label", &[rows], &labels)
    }
}

export_plugin!(TabularScorer);

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/scorer")
    }

    #[test]
    fn loads_with_its_options_and_refuses_a_misspelt_one() {
        let scorer = TabularScorer::load(serde_json::json!({"threshold": 0.3}), &model_dir())
            .expect("the example model loads");
        assert_eq!(scorer.threshold, 0.3);
        let scorer = TabularScorer::load(serde_json::json!({}), &model_dir()).unwrap();
        assert_eq!(scorer.threshold, 0.5);
        let e = TabularScorer::load(serde_json::json!({"threshhold": 0.3}), &model_dir())
            .err()
            .expect("a misspelt option is refused");
        assert!(
            e.to_string().contains(
                "invalid plugin options: unknown field `threshhold`, expected `threshold`"
            ),
            "{e}"
        );
    }
}
