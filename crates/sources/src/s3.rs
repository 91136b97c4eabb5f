//! S3-compatible object storage through `object_store` (its request signing, retries and
//! timeouts): one object, or every object under a prefix.

use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use oxinfer_core::source::SourcesSettings;
use oxinfer_core::{Error, Result};

use crate::fetch::{Failure, Fetched, Sink, retrying};
use crate::mlflow::{MAX_FILES, check_relative};

/// One object to download.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    /// Its path inside the model directory (empty for a single object).
    pub(crate) relative: String,
    pub(crate) location: ObjectPath,
    pub(crate) size: u64,
    pub(crate) e_tag: Option<String>,
}

/// A store for one bucket, with the settings of `[sources.s3]` over the `AWS_*` environment.
#[derive(Debug)]
pub(crate) struct Bucket {
    store: AmazonS3,
    pub(crate) endpoint: String,
    bucket: String,
    /// `[sources] retries`, for a transfer cut in the middle.
    retries: u32,
}

fn failure(e: object_store::Error, what: &str) -> Failure {
    let definite = matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
    );
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    // object_store reports a listing's error answer as `Generic`: a 4xx (no such bucket,
    // access denied) is as definite as a 404 on an object, and TLS refusing the endpoint too.
    let transient = !definite
        && !message.contains("status code: 4")
        && !crate::fetch::tls_refused(&e, &message);
    Failure {
        message: format!("{what}: {message}"),
        transient,
    }
}

impl Bucket {
    pub(crate) fn open(settings: &SourcesSettings, bucket: &str) -> Result<Bucket> {
        crate::fetch::install_crypto();
        let timeout = Duration::from_secs(settings.timeout_seconds);
        let mut options = ClientOptions::new()
            .with_connect_timeout(timeout)
            .with_read_timeout(timeout)
            // A large model takes longer than any fixed limit: the read timeout bounds a stall.
            .with_timeout_disabled();
        if let Some(pem) = crate::fetch::extra_roots(settings)? {
            for cert in object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Manifest(format!("[sources] ca_file: {e}")))?
            {
                options = options.with_root_certificate(cert);
            }
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(options)
            .with_retry(RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(500),
                    max_backoff: Duration::from_secs(8),
                    base: 2.0,
                },
                max_retries: settings.retries as usize,
                retry_timeout: Duration::from_secs(300),
            });
        let s3 = &settings.s3;
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let region = s3
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(region);
        let endpoint = s3
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok())
            .unwrap_or_else(|| "https://s3.amazonaws.com".into());
        let allow_http = s3.allow_http.unwrap_or_else(|| {
            std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        });
        if endpoint.starts_with("http://") && !allow_http {
            return Err(Error::Load(format!(
                "s3://{bucket}: the endpoint {endpoint} is plain HTTP; use https://, or set \
                 [sources.s3] allow_http = true (or AWS_ALLOW_HTTP=true)"
            )));
        }
        let store = builder
            .with_allow_http(allow_http)
            .build()
            .map_err(|e| Error::Load(format!("s3://{bucket}: cannot set up the S3 client: {e}")))?;
        Ok(Bucket {
            store,
            endpoint,
            bucket: bucket.to_string(),
            retries: settings.retries,
        })
    }

    /// The objects `key` names: itself, or every object under it when it ends in `/`.
    pub(crate) async fn list(&self, key: &str) -> Fetched<Vec<Object>> {
        let what = format!("s3://{}/{key} ({})", self.bucket, self.endpoint);
        if !key.ends_with('/') {
            let location = ObjectPath::from(key);
            let meta = self
                .store
                .head(&location)
                .await
                .map_err(|e| failure(e, &what))?;
            return Ok(vec![Object {
                relative: String::new(),
                location,
                size: meta.size,
                e_tag: meta.e_tag,
            }]);
        }
        let prefix = ObjectPath::from(key.trim_end_matches('/'));
        let mut listing = self.store.list(Some(&prefix));
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| failure(e, &what))?;
            let relative = meta
                .location
                .prefix_match(&prefix)
                .map(|parts| {
                    parts
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default();
            // A zero-byte "folder" marker (`prefix/`) that consoles and file system adapters
            // create is not a file of the model.
            if meta.size == 0 && (relative.is_empty() || meta.location.as_ref().ends_with('/')) {
                continue;
            }
            check_relative(&relative).map_err(|f| f.context(&what))?;
            objects.push(Object {
                relative,
                location: meta.location,
                size: meta.size,
                e_tag: meta.e_tag,
            });
            if objects.len() > MAX_FILES {
                return Err(Failure::permanent(format!(
                    "{what}: more than {MAX_FILES} objects under the prefix"
                )));
            }
        }
        // Markers of subfolders (`prefix/sub/`, listed as an empty `sub`) neither.
        let folders: std::collections::HashSet<String> = objects
            .iter()
            .filter_map(|o| o.relative.rsplit_once('/').map(|(dir, _)| dir.to_string()))
            .flat_map(|dir| {
                let parts: Vec<&str> = dir.split('/').collect();
                (1..=parts.len())
                    .map(|n| parts[..n].join("/"))
                    .collect::<Vec<_>>()
            })
            .collect();
        objects.retain(|o| !(o.size == 0 && folders.contains(&o.relative)));
        objects.sort_by(|a, b| a.relative.cmp(&b.relative));
        if objects.is_empty() {
            return Err(Failure::permanent(format!(
                "{what}: no object under this prefix"
            )));
        }
        Ok(objects)
    }

    /// Downloads one object into a new file, hashing it; returns its digest.
    pub(crate) async fn download(&self, object: &Object, to: &std::path::Path) -> Fetched<String> {
        let what = format!(
            "s3://{}/{} ({})",
            self.bucket, object.location, self.endpoint
        );
        // object_store retries each request; a stream cut in the middle is retried here, with
        // the same `retries` and backoff as every other source.
        retrying(self.retries, &what, || async {
            let got = self
                .store
                .get(&object.location)
                .await
                .map_err(|e| failure(e, &what))?;
            let mut stream = got.into_stream();
            let mut sink = Sink::create(to)?;
            while let Some(chunk) = stream.next().await {
                sink.write(&chunk.map_err(|e| failure(e, &what))?)?;
                if sink.len > object.size {
                    return Err(Failure::permanent(format!(
                        "{what}: more than the {} bytes listed arrived",
                        object.size
                    )));
                }
            }
            match sink.finish()? {
                (digest, len) if len == object.size => Ok(digest),
                (_, len) => Err(Failure::permanent(format!(
                    "{what}: {len} bytes arrived, the listing says {}",
                    object.size
                ))),
            }
        })
        .await
    }
}
