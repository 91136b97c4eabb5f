//! Where a model's files come from when its `path` is a URI rather than a local path: an MLflow
//! model registry, an S3-compatible object store, or an HTTPS URL. The manifest parses and
//! checks the URI ([`ModelUri::parse`]); the `oxinfer-sources` crate fetches it.
//!
//! ```toml
//! [server]
//! model_cache = "/var/cache/oxinfer"   # default: $XDG_CACHE_HOME/oxinfer, else ~/.cache/oxinfer
//!
//! [sources]
//! timeout_seconds = 60                 # to connect, and for each read (a stalled transfer)
//! retries = 3                          # on transient errors (connect, timeout, 429, 5xx)
//! ca_file = "certs/internal-ca.pem"    # extra roots to trust for HTTPS sources
//! offline = false                      # as --offline: never touch the network
//!
//! [sources.mlflow]
//! tracking_uri = "http://mlflow:5000"  # else MLFLOW_TRACKING_URI
//!
//! [sources.s3]                         # else the AWS_* environment
//! endpoint = "http://minio:9000"
//! region = "us-east-1"
//! allow_http = true
//!
//! [sources.http]
//! allow_http = false                   # plain http:// model URLs
//!
//! [[models]]
//! name = "fraud"
//! runtime = "onnxruntime"
//! path = "models:/fraud@champion"      # or models:/fraud/3, models:/fraud/latest,
//!                                      # s3://bucket/key.onnx, s3://bucket/prefix/,
//!                                      # https://host/model.onnx (with sha256 = "...")
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Which version of a registered MLflow model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MlflowVersion {
    /// `models:/NAME/3`: exactly this version.
    Number(u64),
    /// `models:/NAME@ALIAS`: the version the alias points at when it is resolved.
    Alias(String),
    /// `models:/NAME/latest`: the highest version.
    Latest,
}

/// A model `path` that names a remote source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelUri {
    /// `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/NAME/latest`.
    Mlflow {
        /// The registered model's name.
        name: String,
        /// Which of its versions.
        version: MlflowVersion,
    },
    /// `s3://BUCKET/KEY` (one object) or `s3://BUCKET/PREFIX/` (every object under it).
    S3 {
        /// The bucket.
        bucket: String,
        /// The object's key, or the prefix (ending in `/`) of a directory.
        key: String,
    },
    /// `https://...` or `http://...`: one file, whose content a pinned `sha256` names.
    Http {
        /// The URL as written.
        url: String,
    },
}

impl ModelUri {
    /// Whether `path` is written as a URI that [`ModelUri::parse`] reads (rather than a local
    /// path). `file:` URIs and anything else with a scheme are refused by `parse`.
    pub fn is_uri(path: &str) -> bool {
        path.starts_with("models:")
            || path.split_once("://").is_some_and(|(scheme, _)| {
                !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            })
    }

    /// Parses a model URI, with a message that says what is wrong.
    pub fn parse(uri: &str) -> Result<ModelUri, String> {
        if uri.len() > 2048 || uri.chars().any(char::is_control) {
            return Err(format!(
                "'{}' is not a model URI (over 2048 bytes, or control characters)",
                uri.escape_debug()
            ));
        }
        if let Some(rest) = uri.strip_prefix("models:/") {
            let rest = rest.strip_prefix('/').unwrap_or(rest);
            let (name, version) = if let Some((name, alias)) = rest.split_once('@') {
                if alias.is_empty() || alias.contains('/') {
                    return Err(format!("'{uri}': the alias after '@' must be one word"));
                }
                (name, MlflowVersion::Alias(alias.to_string()))
            } else if let Some((name, version)) = rest.rsplit_once('/') {
                let version = match version {
                    "latest" => MlflowVersion::Latest,
                    v => MlflowVersion::Number(v.parse().map_err(|_| {
                        format!(
                            "'{uri}': the version must be a number, 'latest', or '@ALIAS' \
                             (models:/NAME/3, models:/NAME/latest, models:/NAME@champion)"
                        )
                    })?),
                };
                (name, version)
            } else {
                return Err(format!(
                    "'{uri}' names no version: write models:/{rest}/VERSION, \
                     models:/{rest}/latest or models:/{rest}@ALIAS"
                ));
            };
            if name.is_empty() || name.contains('/') {
                return Err(format!("'{uri}': the registered model's name is missing"));
            }
            return Ok(ModelUri::Mlflow {
                name: name.to_string(),
                version,
            });
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let Some((bucket, key)) = rest.split_once('/') else {
                return Err(format!(
                    "'{uri}' names a bucket but no object: s3://BUCKET/KEY"
                ));
            };
            if bucket.is_empty() || key.is_empty() || key == "/" {
                return Err(format!(
                    "'{uri}': write s3://BUCKET/KEY for one object or s3://BUCKET/PREFIX/ for \
                     a directory"
                ));
            }
            if key.split('/').any(|c| c == ".." || c == ".") {
                return Err(format!("'{uri}': '.' and '..' are not allowed in the key"));
            }
            return Ok(ModelUri::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if let Some(rest) = uri
            .strip_prefix("https://")
            .or_else(|| uri.strip_prefix("http://"))
        {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(format!("'{uri}' names no host"));
            }
            let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            if authority.contains('@') {
                return Err(
                    "a model URL may not carry credentials (user:password@): they would be \
                     reported with the model's provenance"
                        .to_string(),
                );
            }
            return Ok(ModelUri::Http {
                url: uri.to_string(),
            });
        }
        let scheme = uri.split_once(':').map_or(uri, |(s, _)| s);
        Err(format!(
            "'{uri}': the scheme '{scheme}:' is not a model source; use models:/ (MLflow), \
             s3://, https:// or a local path"
        ))
    }

    /// Whether the URI names exactly one version of the content: an explicit registry version.
    /// (An HTTPS file is named by its pinned digest, an S3 object by its ETag once resolved.)
    pub fn exact(&self) -> bool {
        matches!(
            self,
            ModelUri::Mlflow {
                version: MlflowVersion::Number(_),
                ..
            }
        )
    }
}

impl fmt::Display for ModelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelUri::Mlflow { name, version } => match version {
                MlflowVersion::Number(v) => write!(f, "models:/{name}/{v}"),
                MlflowVersion::Alias(a) => write!(f, "models:/{name}@{a}"),
                MlflowVersion::Latest => write!(f, "models:/{name}/latest"),
            },
            ModelUri::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            // Without the query: a signed URL's signature is a credential, not a name.
            ModelUri::Http { url } => f.write_str(url.split(['?', '#']).next().unwrap_or(url)),
        }
    }
}

/// The `[sources]` table: how models named by URI are fetched.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesSettings {
    /// Seconds a request may take to connect, and to answer or deliver its next chunk
    /// (default 60): a stalled transfer fails, a slow but steady download of a large model
    /// does not.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Retries after a transient error (connection refused or reset, timeout, HTTP 429 or
    /// 5xx), with exponential backoff from half a second (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// A PEM file of extra certificate authorities to trust for HTTPS sources (the registry,
    /// S3 endpoints, model URLs), besides the system's (relative to the manifest).
    pub ca_file: Option<PathBuf>,
    /// Never touch the network: every model named by URI is served from the cache, or fails
    /// to load (`--offline` sets it).
    #[serde(default)]
    pub offline: bool,
    /// `[sources.mlflow]`.
    #[serde(default)]
    pub mlflow: MlflowSettings,
    /// `[sources.s3]`.
    #[serde(default)]
    pub s3: S3Settings,
    /// `[sources.http]`.
    #[serde(default)]
    pub http: HttpSettings,
}

impl Default for SourcesSettings {
    fn default() -> Self {
        SourcesSettings {
            timeout_seconds: default_timeout(),
            retries: default_retries(),
            ca_file: None,
            offline: false,
            mlflow: MlflowSettings::default(),
            s3: S3Settings::default(),
            http: HttpSettings::default(),
        }
    }
}

fn default_timeout() -> u64 {
    60
}
fn default_retries() -> u32 {
    3
}

/// `[sources.mlflow]`: the MLflow tracking server that holds the model registry.
/// Credentials come from the environment, as MLflow's own client reads them:
/// `MLFLOW_TRACKING_TOKEN` (a bearer token) or `MLFLOW_TRACKING_USERNAME` and
/// `MLFLOW_TRACKING_PASSWORD` (basic authentication).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowSettings {
    /// The tracking server, e.g. `http://mlflow:5000` (default: `MLFLOW_TRACKING_URI`).
    pub tracking_uri: Option<String>,
}

/// `[sources.s3]`: an S3-compatible object store. Each key unset here comes from the standard
/// `AWS_*` environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The endpoint of a store other than AWS (MinIO, Ceph, ...), e.g. `https://minio:9000`.
    pub endpoint: Option<String>,
    /// The region (default `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Allow an `http://` endpoint (default false: only HTTPS).
    pub allow_http: Option<bool>,
}

/// `[sources.http]`: model files fetched by URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Allow plain `http://` model URLs (default false: HTTPS only). The pinned `sha256`
    /// still guards the content.
    #[serde(default)]
    pub allow_http: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_uri_form_parses_and_prints_back() {
        for (text, uri) in [
            (
                "models:/fraud/3",
                ModelUri::Mlflow {
                    name: "fraud".into(),
                    version: MlflowVersion::Number(3),
                },
            ),
            (
                "models:/fraud@champion",
                ModelUri::Mlflow {
                    name: "fraud".into(),
                    version: MlflowVersion::Alias("champion".into()),
                },
            ),
            (
                "models:/fraud/latest",
                ModelUri::Mlflow {
                    name: "fraud".into(),
                    version: MlflowVersion::Latest,
                },
            ),
            (
                "s3://models/fraud/model.onnx",
                ModelUri::S3 {
                    bucket: "models".into(),
                    key: "fraud/model.onnx".into(),
                },
            ),
            (
                "s3://models/fraud/",
                ModelUri::S3 {
                    bucket: "models".into(),
                    key: "fraud/".into(),
                },
            ),
            (
                "https://example.com/m.onnx",
                ModelUri::Http {
                    url: "https://example.com/m.onnx".into(),
                },
            ),
        ] {
            assert_eq!(ModelUri::parse(text).unwrap(), uri, "{text}");
            assert_eq!(uri.to_string(), text);
            assert!(ModelUri::is_uri(text));
        }
        assert_eq!(
            ModelUri::parse("https://h/m.onnx?X-Amz-Signature=s")
                .unwrap()
                .to_string(),
            "https://h/m.onnx"
        );
        assert!(ModelUri::parse("models:/fraud/3").unwrap().exact());
        assert!(!ModelUri::parse("models:/fraud@a").unwrap().exact());
    }

    #[test]
    fn malformed_uris_are_refused_with_the_reason() {
        for (text, says) in [
            ("models:/fraud", "names no version"),
            ("models:/fraud/x", "must be a number"),
            ("models:/@a", "name is missing"),
            ("models:/f@", "alias"),
            ("s3://bucket", "no object"),
            ("s3://bucket/", "s3://BUCKET/KEY"),
            ("s3://b/a/../k", "'..'"),
            ("https://", "no host"),
            ("https://u:p@host/m.onnx", "credentials"),
            ("gs://b/k", "not a model source"),
            ("file:///m.onnx", "not a model source"),
        ] {
            let e = ModelUri::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(!ModelUri::is_uri("models/fraud.onnx"));
        assert!(!ModelUri::is_uri("/abs/path.onnx"));
        assert!(ModelUri::is_uri("file:///abs/path.onnx"));
    }
}
