//! A plugin that exercises the edges of the ABI, for tests and as an example:
//! BYTES in and out, several datatypes, failure and panic on demand, and no thread safety.
//!
//! Inputs `text` BYTES `[-1]` and `values` FP64 `[-1]`; outputs `upper` BYTES `[-1]` (the text
//! upper-cased), `lengths` INT64 `[-1]`, `doubled` FP64 `[-1]`, `flags` BOOL `[-1]` (length is
//! even) and `max_concurrent` INT64 `[1]`: the most calls this instance has seen running at once.
//! It declares itself not thread-safe, so the host must keep that at 1.
//!
//! Option `on_demand_failures = true` makes the text `error` fail the request (a bad-input error)
//! and `panic` panic inside the plugin; `slow` sleeps 50 ms (to make overlaps likely).

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use oxinfer_plugin_sdk::{
    DataType, Metadata, Outputs, Plugin, PluginError, TensorSpec, TensorView, export_plugin,
    parse_options,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    on_demand_failures: bool,
}

/// The plugin.
pub struct EdgeCases {
    on_demand_failures: bool,
    running: AtomicI64,
    max_running: AtomicI64,
}

impl Plugin for EdgeCases {
    const THREAD_SAFE: bool = false;

    fn load(options: serde_json::Value, _model_dir: &Path) -> Result<Self, PluginError> {
        let options: Options = parse_options(options)?;
        Ok(EdgeCases {
            on_demand_failures: options.on_demand_failures,
            running: AtomicI64::new(0),
            max_running: AtomicI64::new(0),
        })
    }

    fn metadata(&self) -> Metadata {
        Metadata {
            inputs: vec![
                TensorSpec::new("text", DataType::Bytes, &[-1]),
                TensorSpec::new("values", DataType::Fp64, &[-1]),
            ],
            outputs: vec![
                TensorSpec::new("upper", DataType::Bytes, &[-1]),
                TensorSpec::new("lengths", DataType::Int64, &[-1]),
                TensorSpec::new("doubled", DataType::Fp64, &[-1]),
                TensorSpec::new("flags", DataType::Bool, &[-1]),
                TensorSpec::new("max_concurrent", DataType::Int64, &[1]),
            ],
        }
    }

    fn infer(
        &self,
        inputs: &[TensorView<'_>],
        outputs: &mut Outputs<'_>,
    ) -> Result<(), PluginError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let result = self.run(inputs, outputs);
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl EdgeCases {
    fn run(&self, inputs: &[TensorView<'_>], outputs: &mut Outputs<'_>) -> Result<(), PluginError> {
        let texts = inputs[0].strings()?;
        let values = inputs[1].f64s()?;
        for text in &texts {
            match (self.on_demand_failures, *text) {
                (true, b"error") => {
                    return Err(PluginError::invalid("asked to fail: text 'error'"));
                }
                (true, b"panic") => panic!("asked to panic: text 'panic'"),
                (_, b"slow") => std::thread::sleep(std::time::Duration::from_millis(50)),
                _ => {}
            }
        }
        let n = texts.len() as i64;
        let upper: Vec<Vec<u8>> = texts.iter().map(|t| t.to_ascii_uppercase()).collect();
        let lengths: Vec<i64> = texts.iter().map(|t| t.len() as i64).collect();
        let flags: Vec<bool> = lengths.iter().map(|l| l % 2 == 0).collect();
        let doubled: Vec<f64> = values.iter().map(|v| v * 2.0).collect();
        outputs.add_bytes("upper", &[n], &upper)?;
        outputs.add_i64("lengths", &[n], &lengths)?;
        outputs.add_f64("doubled", &[values.len() as i64], &doubled)?;
        outputs.add_bool("flags", &[n], &flags)?;
        outputs.add_i64(
            "max_concurrent",
            &[1],
            &[self.max_running.load(Ordering::SeqCst)],
        )
    }
}

export_plugin!(EdgeCases);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_option_is_an_error() {
        let edge = EdgeCases::load(
            serde_json::json!({"on_demand_failures": true}),
            Path::new(""),
        )
        .expect("a known option loads");
        assert!(edge.on_demand_failures);
        let e = EdgeCases::load(
            serde_json::json!({"on_demand_failure": true}),
            Path::new(""),
        )
        .err()
        .expect("a misspelt option is refused");
        assert!(
            e.to_string().contains(
                "invalid plugin options: unknown field `on_demand_failure`, expected `on_demand_failures`"
            ),
            "{e}"
        );
    }
}
