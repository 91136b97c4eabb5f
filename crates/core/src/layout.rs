//! Models laid out on disk the way Triton and KServe users keep them, turned into manifest
//! entries: directories of versions with a version policy, a whole model repository
//! (`oxinfer serve --model-repository DIR`), and the single-model form KServe mounts at
//! `/mnt/models` (`--model-dir`, `--model-name`).
//!
//! ```text
//! DIR/<model>/<version>/<model file or directory>     versions are integers
//! DIR/<model>/model.toml                              optional: the [[models]] table for it,
//!                                                     without name, version and path
//! ```
//!
//! Inside a version directory, the model is its only entry; otherwise `model.onnx` when there
//! is one; otherwise the directory itself (a candle model directory, say).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::manifest::{Manifest, ModelEntry};
use crate::{Error, Result};

/// Which versions of a directory of versions are served (`version_policy`; Triton's).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The N highest versions (Triton's default, with N = 1).
    Latest(u32),
    /// Every version (`{ all = true }`).
    All(bool),
    /// These versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl fmt::Display for VersionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionPolicy::Latest(n) => write!(f, "{{ latest = {n} }}"),
            VersionPolicy::All(all) => write!(f, "{{ all = {all} }}"),
            VersionPolicy::Specific(v) => write!(f, "{{ specific = {v:?} }}"),
        }
    }
}

/// Chooses a runtime for a model file or directory when none is named (see the binary's
/// detection: `*.onnx`, a candle directory, a shared library).
pub type DetectRuntime<'a> = dyn Fn(&Path) -> Option<&'static str> + 'a;

/// The integer-named subdirectories of `dir`, by version.
pub fn versions(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Some((name.parse().ok()?, e.path())))?
        })
        .collect();
    found.sort();
    found
}

/// Whether `path` is a directory of versions: it has integer-named subdirectories.
pub fn is_versions_dir(path: &Path) -> bool {
    path.is_dir() && !versions(path).is_empty()
}

/// The model inside one version directory: its only entry, else `model.onnx`, else the
/// directory itself.
pub fn version_content(dir: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    match entries.as_slice() {
        [only] => only.clone(),
        _ if dir.join("model.onnx").is_file() => dir.join("model.onnx"),
        _ => dir.to_path_buf(),
    }
}

/// The entries of one model whose `path` is a directory of versions: one per version found,
/// those the policy leaves out marked [`ModelEntry::excluded`] with the reason.
pub fn expand_versions(entry: &ModelEntry) -> Result<Vec<ModelEntry>> {
    let found = versions(&entry.path);
    if found.is_empty() {
        return Err(Error::Manifest(format!(
            "{entry}: {} has no version directories (1/, 2/, ...) for its version_policy",
            entry.path.display()
        )));
    }
    let policy = entry.version_policy.clone().unwrap_or_default();
    let selected: Vec<u64> = match &policy {
        VersionPolicy::Latest(0) | VersionPolicy::All(false) => {
            return Err(Error::Manifest(format!(
                "model '{}': version_policy {policy} selects no version",
                entry.name
            )));
        }
        VersionPolicy::Latest(n) => found
            .iter()
            .rev()
            .take(*n as usize)
            .map(|(v, _)| *v)
            .collect(),
        VersionPolicy::All(true) => found.iter().map(|(v, _)| *v).collect(),
        VersionPolicy::Specific(wanted) => {
            if let Some(missing) = wanted.iter().find(|w| !found.iter().any(|(v, _)| v == *w)) {
                return Err(Error::Manifest(format!(
                    "model '{}': version_policy {policy} names version {missing}, which {} does \
                     not have",
                    entry.name,
                    entry.path.display()
                )));
            }
            wanted.clone()
        }
    };
    Ok(found
        .into_iter()
        .map(|(v, dir)| {
            let mut version = entry.clone();
            version.version = v.to_string();
            version.path = version_content(&dir);
            version.versions_dir = Some(entry.path.clone());
            version.excluded = (!selected.contains(&v))
                .then(|| format!("not selected by version_policy {policy}"));
            version
        })
        .collect())
}

/// The entries of one model given as a path and a name, with its `[[models]]` keys (from a
/// `model.toml`, or none): the runtime detected from the files when the table does not name
/// it, versions expanded when the path is a directory of versions. `source` names where the
/// keys came from, for messages, and is the base of relative paths in them.
pub fn model_entries(
    name: &str,
    path: &Path,
    mut table: toml::Table,
    source: &Path,
    detect: &DetectRuntime<'_>,
) -> Result<Vec<ModelEntry>> {
    let fail = |msg: String| Error::Manifest(format!("{}: {msg}", source.display()));
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for key in ["name", "version", "path"] {
        if table.contains_key(key) {
            return Err(fail(format!(
                "`{key}` comes from the directory layout; remove it from the table"
            )));
        }
    }
    let versioned = is_versions_dir(path);
    // A directory that is neither a directory of versions nor a model a runtime recognises
    // (what KServe's storage initializer leaves in /mnt/models: one downloaded file, or an
    // MLflow model directory with `MLmodel` beside `model.onnx`) holds its model the way a
    // version directory does: its only entry, else `model.onnx`.
    let path = &if !versioned && path.is_dir() && detect(path).is_none() {
        version_content(path)
    } else {
        path.clone()
    };
    table.insert("name".into(), name.into());
    table.insert("path".into(), path.display().to_string().into());
    if versioned && !table.contains_key("version_policy") {
        table.insert(
            "version_policy".into(),
            toml::Value::Table(toml::Table::from_iter([(
                "latest".to_string(),
                toml::Value::Integer(1),
            )])),
        );
    }
    let detected = !table.contains_key("runtime");
    if detected {
        let content = match versions(path).last() {
            Some((_, dir)) => version_content(dir),
            None => path.to_path_buf(),
        };
        let runtime = detect(&content).ok_or_else(|| {
            fail(format!(
                "cannot tell which runtime serves {} (an .onnx file, a candle model directory \
                 with model.safetensors and tokenizer.json, or a plugin library are recognised); \
                 name it with `runtime = ...` in model.toml",
                content.display()
            ))
        })?;
        table.insert("runtime".into(), runtime.into());
    }
    let document = toml::Table::from_iter([(
        "models".to_string(),
        toml::Value::Array(vec![toml::Value::Table(table)]),
    )]);
    let text = toml::to_string(&document).map_err(|e| fail(e.to_string()))?;
    let mut manifest = Manifest::parse(&text, source)?;
    for entry in &mut manifest.models {
        entry.runtime_detected = detected;
    }
    Ok(manifest.models)
}

/// Every model of a Triton-style repository: one subdirectory per model (see the module
/// documentation), by name.
pub fn repository_entries(dir: &Path, detect: &DetectRuntime<'_>) -> Result<Vec<ModelEntry>> {
    let mut models: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            Error::Manifest(format!(
                "cannot read model repository {}: {e}",
                dir.display()
            ))
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    models.sort();
    let mut entries = Vec::new();
    for model in models {
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = model.join("model.toml");
        let table = if config.is_file() {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| Error::Manifest(format!("cannot read {}: {e}", config.display())))?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| Error::Manifest(format!("{}: {e}", config.display())))?
        } else {
            toml::Table::new()
        };
        if !is_versions_dir(&model) {
            return Err(Error::Manifest(format!(
                "{}: a model in a repository keeps each version in a numbered directory \
                 ({}/1/...)",
                model.display(),
                name
            )));
        }
        entries.extend(model_entries(&name, &model, table, &config, detect)?);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("oxinfer-layout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn onnx(_: &Path) -> Option<&'static str> {
        Some("tract")
    }

    #[test]
    fn a_plain_directory_holds_its_model_like_a_version_directory() {
        // What KServe's storage initializer leaves in /mnt/models: one file, or an MLflow model.
        let dir = temp("plain");
        let detect = |p: &Path| {
            (p.extension().is_some_and(|e| e == "onnx") || p.join("model.safetensors").is_file())
                .then_some("tract")
        };
        let entries = |path: &Path| {
            model_entries("m", path, toml::Table::new(), &dir.join("x"), &detect)
                .map(|e| e[0].path.clone())
        };
        std::fs::create_dir_all(dir.join("single")).unwrap();
        std::fs::write(dir.join("single/classifier.onnx"), b"x").unwrap();
        assert_eq!(
            entries(&dir.join("single")).unwrap(),
            dir.join("single/classifier.onnx")
        );
        std::fs::create_dir_all(dir.join("mlflow")).unwrap();
        for file in ["MLmodel", "model.onnx", "conda.yaml", "requirements.txt"] {
            std::fs::write(dir.join("mlflow").join(file), b"x").unwrap();
        }
        assert_eq!(
            entries(&dir.join("mlflow")).unwrap(),
            dir.join("mlflow/model.onnx")
        );
        // A directory a runtime recognises as a whole stays a directory.
        std::fs::create_dir_all(dir.join("whole")).unwrap();
        for file in ["model.safetensors", "config.json"] {
            std::fs::write(dir.join("whole").join(file), b"x").unwrap();
        }
        assert_eq!(entries(&dir.join("whole")).unwrap(), dir.join("whole"));
        // Nothing recognisable: the error names the directory.
        std::fs::create_dir_all(dir.join("unknown")).unwrap();
        std::fs::write(dir.join("unknown/a.txt"), b"x").unwrap();
        std::fs::write(dir.join("unknown/b.txt"), b"x").unwrap();
        let e = entries(&dir.join("unknown")).unwrap_err().to_string();
        assert!(e.contains("cannot tell which runtime"), "{e}");
    }

    #[test]
    fn policies_select_versions_and_list_the_others() {
        let dir = temp("policies");
        for v in ["1", "2", "10"] {
            std::fs::create_dir_all(dir.join("m").join(v)).unwrap();
            std::fs::write(dir.join("m").join(v).join("model.onnx"), b"x").unwrap();
        }
        std::fs::create_dir_all(dir.join("m/notes")).unwrap();
        let served = |table: &str| {
            let entries = model_entries(
                "m",
                &dir.join("m"),
                toml::from_str(table).unwrap(),
                &dir.join("m/model.toml"),
                &onnx,
            )
            .unwrap();
            let (on, off): (Vec<_>, Vec<_>) = entries.iter().partition(|e| e.excluded.is_none());
            (
                on.iter().map(|e| e.version.clone()).collect::<Vec<_>>(),
                off.iter().map(|e| e.version.clone()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            served(""),
            (vec!["10".to_string()], vec!["1".into(), "2".into()])
        );
        assert_eq!(served("version_policy = { latest = 2 }").0, ["2", "10"]);
        assert_eq!(
            served("version_policy = { all = true }").0,
            ["1", "2", "10"]
        );
        assert_eq!(served("version_policy = { specific = [1] }").0, ["1"]);
        let e = model_entries(
            "m",
            &dir.join("m"),
            toml::from_str("version_policy = { specific = [3] }").unwrap(),
            &dir.join("m/model.toml"),
            &onnx,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("names version 3"), "{e}");
        let entries = model_entries(
            "m",
            &dir.join("m"),
            toml::Table::new(),
            &dir.join("x"),
            &onnx,
        )
        .unwrap();
        assert!(
            entries
                .iter()
                .all(|e| e.runtime == "tract" && e.runtime_detected)
        );
        assert_eq!(entries[2].path, dir.join("m/10/model.onnx"));
        let e = model_entries(
            "m",
            &dir.join("m"),
            toml::from_str("version = 3").unwrap(),
            &dir.join("x"),
            &onnx,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`version` comes from the directory layout"),
            "{e}"
        );
    }

    #[test]
    fn the_content_of_a_version_directory() {
        let dir = temp("content");
        std::fs::write(dir.join("weights.onnx"), b"x").unwrap();
        assert_eq!(version_content(&dir), dir.join("weights.onnx"));
        std::fs::write(dir.join("model.onnx"), b"x").unwrap();
        assert_eq!(version_content(&dir), dir.join("model.onnx"));
        std::fs::remove_file(dir.join("model.onnx")).unwrap();
        std::fs::write(dir.join("tokenizer.json"), b"x").unwrap();
        assert_eq!(version_content(&dir), dir);
    }
}
