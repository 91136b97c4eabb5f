//! The MLflow model registry, through its REST API (as MLflow's own client resolves
//! `models:/` URIs): the version by number, alias or `latest` (refused unless READY), its
//! artifact location from `get-download-uri`, and the model directory downloaded from there
//! (`mlflow-artifacts:` through the tracking server, `s3://` from the object store, or a local
//! `file:` path).

use std::collections::BTreeMap;

use oxinfer_core::source::MlflowVersion;
use oxinfer_core::{Error, Result};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::fetch::{Failure, Fetched, Http, redact};

/// The most files a downloaded model directory may hold, and the deepest it may nest.
pub(crate) const MAX_FILES: usize = 10_000;
const MAX_DEPTH: usize = 32;

/// A path segment in a URL: everything but unreserved characters escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A tracking server.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    base: reqwest::Url,
    auth: Option<String>,
}

/// A model version as the registry describes it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ModelVersion {
    pub(crate) version: String,
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) status_message: Option<String>,
    #[serde(default)]
    pub(crate) run_id: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) creation_timestamp: Option<i64>,
    #[serde(default)]
    pub(crate) tags: Vec<Tag>,
}

/// A registry tag.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Tag {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: String,
}

/// A registered model's own description and tags.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RegisteredModel {
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) tags: Vec<Tag>,
}

/// One file to download into a model directory: its path inside it, and its size when listed.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) relative: String,
    pub(crate) size: Option<u64>,
}

impl Registry {
    /// The registry at `[sources.mlflow] tracking_uri`, else `MLFLOW_TRACKING_URI`; credentials
    /// from `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`.
    pub(crate) fn from_settings(tracking_uri: Option<&str>) -> Result<Registry> {
        let uri = tracking_uri
            .map(str::to_owned)
            .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
            .ok_or_else(|| {
                Error::Load(
                    "a models:/ path needs an MLflow tracking server: set [sources.mlflow] \
                     tracking_uri or MLFLOW_TRACKING_URI"
                        .into(),
                )
            })?;
        let mut base = reqwest::Url::parse(uri.trim_end_matches('/'))
            .map_err(|e| Error::Load(format!("MLflow tracking URI '{uri}' is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Load(format!(
                "MLflow tracking URI '{uri}': oxinfer talks to a tracking server over http(s); \
                 a local file or database store has no REST API"
            )));
        }
        let auth = if let Ok(token) = std::env::var("MLFLOW_TRACKING_TOKEN") {
            Some(format!("Bearer {token}"))
        } else if let (Ok(user), Ok(password)) = (
            std::env::var("MLFLOW_TRACKING_USERNAME"),
            std::env::var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            use base64::Engine;
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ))
        } else if !base.username().is_empty() {
            use base64::Engine;
            let user = percent_encoding::percent_decode_str(base.username()).decode_utf8_lossy();
            let password = base
                .password()
                .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy())
                .unwrap_or_default();
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ))
        } else {
            None
        };
        let _ = base.set_username("");
        let _ = base.set_password(None);
        Ok(Registry { base, auth })
    }

    /// Whether the tracking server is on this machine (a loopback address or `localhost`).
    pub(crate) fn is_local(&self) -> bool {
        let host = self.base.host_str().unwrap_or("");
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The tracking server, for provenance and cache keys (no credentials).
    pub(crate) fn base(&self) -> String {
        redact(&self.base)
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.set_path(&format!(
            "{}/{}",
            self.base.path().trim_end_matches('/'),
            path
        ));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: reqwest::Url,
    ) -> reqwest::RequestBuilder {
        let request = client.request(method, url);
        match &self.auth {
            Some(auth) => request.header(reqwest::header::AUTHORIZATION, auth),
            None => request,
        }
    }

    async fn get(
        &self,
        http: &Http,
        path: &str,
        query: &[(&str, &str)],
    ) -> Fetched<serde_json::Value> {
        let url = self.url(path, query);
        let what = format!("GET {}", redact(&url));
        http.json(&what, |c| {
            self.request(c, reqwest::Method::GET, url.clone())
        })
        .await
    }

    /// The version `version` of registered model `name`, refused unless READY.
    pub(crate) async fn version(
        &self,
        http: &Http,
        name: &str,
        version: &MlflowVersion,
    ) -> Fetched<ModelVersion> {
        let found: ModelVersion = match version {
            MlflowVersion::Number(n) => {
                let v = self
                    .get(
                        http,
                        "api/2.0/mlflow/model-versions/get",
                        &[("name", name), ("version", &n.to_string())],
                    )
                    .await?;
                parse(&v["model_version"], "model_version")?
            }
            MlflowVersion::Alias(alias) => {
                let v = self
                    .get(
                        http,
                        "api/2.0/mlflow/registered-models/alias",
                        &[("name", name), ("alias", alias)],
                    )
                    .await?;
                parse(&v["model_version"], "model_version")?
            }
            MlflowVersion::Latest => {
                let url = self.url("api/2.0/mlflow/registered-models/get-latest-versions", &[]);
                let body = serde_json::json!({ "name": name }).to_string();
                let v = http
                    .json(&format!("POST {}", redact(&url)), |c| {
                        self.request(c, reqwest::Method::POST, url.clone())
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(body.clone())
                    })
                    .await?;
                let versions: Vec<ModelVersion> = match v.get("model_versions") {
                    Some(list) => parse(list, "model_versions")?,
                    None => Vec::new(),
                };
                versions
                    .into_iter()
                    .max_by_key(|v| v.version.parse::<u64>().unwrap_or(0))
                    .ok_or_else(|| {
                        Failure::permanent(format!("registered model '{name}' has no versions"))
                    })?
            }
        };
        if found.status != "READY" {
            return Err(Failure::permanent(format!(
                "version {} of '{name}' is {}, not READY{}; only READY versions are served",
                found.version,
                if found.status.is_empty() {
                    "of unknown status"
                } else {
                    &found.status
                },
                found
                    .status_message
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            )));
        }
        Ok(found)
    }

    /// The registered model's own description and tags.
    pub(crate) async fn registered_model(
        &self,
        http: &Http,
        name: &str,
    ) -> Fetched<RegisteredModel> {
        let v = self
            .get(
                http,
                "api/2.0/mlflow/registered-models/get",
                &[("name", name)],
            )
            .await?;
        parse(&v["registered_model"], "registered_model")
    }

    /// Where a version's files are: `get-download-uri`'s artifact location.
    pub(crate) async fn download_uri(
        &self,
        http: &Http,
        name: &str,
        version: &str,
    ) -> Fetched<String> {
        let v = self
            .get(
                http,
                "api/2.0/mlflow/model-versions/get-download-uri",
                &[("name", name), ("version", version)],
            )
            .await?;
        v["artifact_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::permanent("get-download-uri answered no artifact_uri"))
    }

    /// The path under the tracking server's proxied artifact store of an `mlflow-artifacts:`
    /// location (`mlflow-artifacts:/P` or `mlflow-artifacts://HOST/P`).
    pub(crate) fn artifacts_path(location: &str) -> Option<String> {
        let rest = location.strip_prefix("mlflow-artifacts:")?;
        let path = match rest.strip_prefix("//") {
            Some(authority_and_path) => authority_and_path.split_once('/').map_or("", |(_, p)| p),
            None => rest,
        };
        Some(path.trim_matches('/').to_string())
    }

    /// Every file under `root` in the proxied artifact store, recursively.
    pub(crate) async fn list(&self, http: &Http, root: &str) -> Fetched<Vec<Listed>> {
        let mut out = Vec::new();
        let mut pending = vec![(String::new(), 0usize)];
        let mut listed = 0usize;
        while let Some((dir, depth)) = pending.pop() {
            // Every directory listed counts, so that a listing of ever more directories ends.
            listed += 1;
            if listed > MAX_FILES {
                return Err(Failure::permanent(format!(
                    "the model directory holds more than {MAX_FILES} directories"
                )));
            }
            let path = if dir.is_empty() {
                root.to_string()
            } else {
                format!("{root}/{dir}")
            };
            let v = self
                .get(
                    http,
                    "api/2.0/mlflow-artifacts/artifacts",
                    &[("path", &path)],
                )
                .await?;
            #[derive(Deserialize)]
            struct Entry {
                path: String,
                #[serde(default)]
                is_dir: bool,
                #[serde(default)]
                file_size: Option<u64>,
            }
            let entries: Vec<Entry> = match v.get("files") {
                Some(files) => parse(files, "files")?,
                None => Vec::new(),
            };
            for entry in entries {
                // The server names entries relative to the listed root, or by their last
                // component; either way they must stay inside the model directory.
                let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
                let relative = if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                };
                check_relative(&relative)?;
                if entry.is_dir {
                    if depth + 1 > MAX_DEPTH {
                        return Err(Failure::permanent(format!(
                            "the model directory nests deeper than {MAX_DEPTH} levels"
                        )));
                    }
                    pending.push((relative, depth + 1));
                } else {
                    out.push(Listed {
                        relative,
                        size: entry.file_size,
                    });
                }
                if out.len() + pending.len() > MAX_FILES {
                    return Err(Failure::permanent(format!(
                        "the model directory holds more than {MAX_FILES} files"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The request that downloads one file of the proxied artifact store.
    pub(crate) fn artifact(
        &self,
        client: &reqwest::Client,
        root: &str,
        relative: &str,
    ) -> reqwest::RequestBuilder {
        let encoded: Vec<String> = root
            .split('/')
            .chain(relative.split('/'))
            .filter(|s| !s.is_empty())
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        let mut url = self.base.clone();
        url.set_path(&format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}",
            self.base.path().trim_end_matches('/'),
            encoded.join("/")
        ));
        self.request(client, reqwest::Method::GET, url)
    }
}

/// A path inside a model directory: relative, `/`-separated, no `.`, `..` or empty parts.
pub(crate) fn check_relative(relative: &str) -> Fetched<()> {
    let fine = !relative.is_empty()
        && relative.len() <= 1024
        && relative.split('/').all(|c| {
            !c.is_empty() && c != "." && c != ".." && !c.contains('\\') && !c.contains('\0')
        });
    if fine {
        Ok(())
    } else {
        Err(Failure::permanent(format!(
            "the source lists a file '{}' that is not a plain path inside the model directory",
            relative.escape_debug()
        )))
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value, what: &str) -> Fetched<T> {
    T::deserialize(v).map_err(|e| {
        Failure::permanent(format!("the registry's answer has no usable '{what}': {e}"))
    })
}

/// Registry tags as a map: the registered model's, then the version's over them.
pub(crate) fn tags(model: &RegisteredModel, version: &ModelVersion) -> BTreeMap<String, String> {
    model
        .tags
        .iter()
        .chain(&version.tags)
        .filter(|t| !t.key.starts_with("mlflow."))
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_locations_name_their_path() {
        assert_eq!(
            Registry::artifacts_path("mlflow-artifacts:/0/models/m-1/artifacts").as_deref(),
            Some("0/models/m-1/artifacts")
        );
        assert_eq!(
            Registry::artifacts_path("mlflow-artifacts://host:5000/0/m/artifacts").as_deref(),
            Some("0/m/artifacts")
        );
        assert_eq!(Registry::artifacts_path("s3://b/k"), None);
    }

    #[test]
    fn listed_paths_must_stay_inside_the_directory() {
        assert!(check_relative("model.onnx").is_ok());
        assert!(check_relative("sub/tokenizer.json").is_ok());
        for bad in ["", "../x", "a/../../x", "/abs", "a//b", "a\\..\\b", "."] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_escape_names_and_carry_no_credentials() {
        crate::fetch::install_crypto();
        let registry = Registry::from_settings(Some("http://u:p@mlflow:5000/prefix/")).unwrap();
        assert_eq!(registry.base(), "http://mlflow:5000/prefix");
        assert!(registry.auth.as_deref().unwrap().starts_with("Basic "));
        let url = registry.url(
            "api/2.0/mlflow/model-versions/get",
            &[("name", "a b&c"), ("version", "1")],
        );
        assert_eq!(
            url.as_str(),
            "http://mlflow:5000/prefix/api/2.0/mlflow/model-versions/get?name=a+b%26c&version=1"
        );
        let request = registry
            .artifact(&reqwest::Client::new(), "0/m/artifacts", "dir/a b.onnx")
            .build()
            .unwrap();
        assert_eq!(
            request.url().as_str(),
            "http://mlflow:5000/prefix/api/2.0/mlflow-artifacts/artifacts/0/m/artifacts/dir/a%20b.onnx"
        );
    }
}
