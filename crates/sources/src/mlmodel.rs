//! What a runtime reads from a downloaded directory: an MLflow model directory (`MLmodel`
//! beside its files) is served by its ONNX flavor's file (onnxruntime, tract) or its
//! safetensors directory (candle); a directory without `MLmodel` is served as a model
//! repository's version directory is (candle: the directory; others: its only file, else
//! `model.onnx`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use oxinfer_core::{Error, Result};

/// The parts of an `MLmodel` file that say what the directory holds.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct MlModel {
    #[serde(default)]
    pub(crate) flavors: BTreeMap<String, serde_yaml_ng::Value>,
}

impl MlModel {
    /// Reads `DIR/MLmodel`, if there is one.
    pub(crate) fn read(dir: &Path) -> Result<Option<MlModel>> {
        let file = dir.join("MLmodel");
        if !file.is_file() {
            return Ok(None);
        }
        let size = std::fs::metadata(&file).map_or(0, |m| m.len());
        if size > 1 << 20 {
            return Err(Error::Load(format!(
                "MLmodel is {size} bytes; an MLflow model file is a few hundred (at most 1 MiB \
                 is read)"
            )));
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::Load(format!("cannot read {}: {e}", file.display())))?;
        serde_yaml_ng::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Load(format!("MLmodel is not a valid MLflow model file: {e}")))
    }

    /// `flavors.FLAVOR.data`, when it is a relative path inside the directory.
    fn data(&self, flavor: &str) -> Option<Result<PathBuf>> {
        let data = self.flavors.get(flavor)?.get("data")?.as_str()?;
        let path = PathBuf::from(data);
        let inside = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        Some(if inside && !data.is_empty() {
            Ok(path)
        } else {
            Err(Error::Load(format!(
                "MLmodel: flavors.{flavor}.data = '{data}' is not a path inside the model \
                 directory"
            )))
        })
    }

    fn flavor_names(&self) -> String {
        self.flavors.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// A candle model directory: the transformer's weights and configuration.
fn is_candle_dir(dir: &Path) -> bool {
    dir.join("model.safetensors").is_file() && dir.join("config.json").is_file()
}

/// The path in `tree` that `runtime` loads.
pub(crate) fn served_path(tree: &Path, runtime: &str) -> Result<PathBuf> {
    let Some(mlmodel) = MlModel::read(tree)? else {
        return Ok(if runtime == "candle" {
            tree.to_path_buf()
        } else {
            oxinfer_core::layout::version_content(tree)
        });
    };
    let python_only = || {
        let loader = mlmodel
            .flavors
            .get("python_function")
            .and_then(|f| f.get("loader_module"))
            .and_then(|m| m.as_str())
            .unwrap_or("a Python class");
        Error::Load(format!(
            "this MLflow model has only the python_function flavor (loaded by {loader}): it \
             needs a Python interpreter, which oxinfer does not embed. oxinfer serves the onnx \
             flavor (runtime onnxruntime or tract) and safetensors transformer directories \
             (runtime candle); serve Python models with MLServer, or log the model with \
             mlflow.onnx"
        ))
    };
    match runtime {
        "onnxruntime" | "tract" => match mlmodel.data("onnx") {
            Some(data) => {
                let path = tree.join(data?);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(Error::Load(format!(
                        "MLmodel names {} as the onnx flavor's file, and the download holds no \
                         such file",
                        path.strip_prefix(tree).unwrap_or(&path).display()
                    )))
                }
            }
            None if mlmodel.flavors.len() == 1
                && mlmodel.flavors.contains_key("python_function") =>
            {
                Err(python_only())
            }
            None => Err(Error::Load(format!(
                "runtime {runtime} serves an MLflow model's onnx flavor, and this model has \
                 flavors [{}]; log it with mlflow.onnx.log_model, or choose the runtime that \
                 serves it",
                mlmodel.flavor_names()
            ))),
        },
        "candle" => {
            // A flavor's data directory (sentence_transformers, transformers), the model
            // directory itself, or one directory down.
            let mut candidates: Vec<PathBuf> = mlmodel
                .flavors
                .keys()
                .filter_map(|f| mlmodel.data(f).and_then(Result::ok))
                .map(|d| tree.join(d))
                .collect();
            candidates.push(tree.to_path_buf());
            if let Ok(entries) = std::fs::read_dir(tree) {
                let mut subdirs: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect();
                subdirs.sort();
                candidates.extend(subdirs);
            }
            match candidates.into_iter().find(|d| is_candle_dir(d)) {
                Some(dir) => Ok(dir),
                None if mlmodel.flavors.len() == 1
                    && mlmodel.flavors.contains_key("python_function") =>
                {
                    Err(python_only())
                }
                None => Err(Error::Load(format!(
                    "runtime candle serves a transformer directory (model.safetensors, \
                     config.json, tokenizer.json), and this MLflow model (flavors [{}]) holds \
                     none",
                    mlmodel.flavor_names()
                ))),
            }
        }
        other => Err(Error::Load(format!(
            "runtime {other} cannot serve an MLflow model directory (flavors [{}]); MLflow \
             models are served by onnxruntime or tract (onnx flavor) and candle (safetensors)",
            mlmodel.flavor_names()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str, mlmodel: &str, files: &[&str]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("oxinfer-mlmodel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if !mlmodel.is_empty() {
            std::fs::write(dir.join("MLmodel"), mlmodel).unwrap();
        }
        for f in files {
            let path = dir.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        dir
    }

    const ONNX: &str = "flavors:\n  onnx:\n    data: model.onnx\n  python_function:\n    data: \
                        model.onnx\n    loader_module: mlflow.onnx\nrun_id: abc\n";

    #[test]
    fn the_onnx_flavor_file_is_served_by_the_onnx_runtimes() {
        let dir = tree("onnx", ONNX, &["model.onnx", "conda.yaml"]);
        assert_eq!(served_path(&dir, "tract").unwrap(), dir.join("model.onnx"));
        assert_eq!(
            served_path(&dir, "onnxruntime").unwrap(),
            dir.join("model.onnx")
        );
        let e = served_path(&dir, "plugin").unwrap_err().to_string();
        assert!(e.contains("flavors [onnx, python_function]"), "{e}");
        let e = served_path(&dir, "candle").unwrap_err().to_string();
        assert!(e.contains("holds none"), "{e}");
    }

    #[test]
    fn python_function_models_are_refused_clearly() {
        let dir = tree(
            "pyfunc",
            "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n",
            &["model.pkl"],
        );
        for runtime in ["tract", "candle"] {
            let e = served_path(&dir, runtime).unwrap_err().to_string();
            assert!(e.contains("only the python_function flavor"), "{e}");
            assert!(e.contains("mlflow.sklearn"), "{e}");
        }
    }

    #[test]
    fn candle_finds_the_safetensors_directory() {
        let dir = tree(
            "candle",
            "flavors:\n  sentence_transformers:\n    data: model.st\n",
            &[
                "model.st/model.safetensors",
                "model.st/config.json",
                "model.st/tokenizer.json",
            ],
        );
        assert_eq!(served_path(&dir, "candle").unwrap(), dir.join("model.st"));
    }

    #[test]
    fn a_flavor_path_outside_the_directory_is_refused() {
        let dir = tree(
            "escape",
            "flavors:\n  onnx:\n    data: ../../etc/passwd\n",
            &[],
        );
        let e = served_path(&dir, "tract").unwrap_err().to_string();
        assert!(e.contains("not a path inside"), "{e}");
    }

    #[test]
    fn a_plain_directory_is_served_like_a_version_directory() {
        let dir = tree("plain", "", &["only.onnx"]);
        assert_eq!(served_path(&dir, "tract").unwrap(), dir.join("only.onnx"));
        assert_eq!(served_path(&dir, "candle").unwrap(), dir);
    }
}
