//! HTTP(S) requests to sources: retries with backoff on transient errors, a timeout per request,
//! bounded JSON answers, and downloads streamed to a file while they are hashed.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use oxinfer_core::source::SourcesSettings;
use oxinfer_core::{Error, Result};

/// The largest JSON answer read from a registry.
const MAX_JSON_BYTES: usize = 16 << 20;

/// A failed request: what to tell the user, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    /// A connection error, a timeout, HTTP 429 or 5xx: the source may answer later. An
    /// unreachable source can be stood in for by the cache; a definite answer (404, 403, a
    /// version that is not READY) cannot.
    pub(crate) transient: bool,
}

impl Failure {
    pub(crate) fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            transient: false,
        }
    }

    /// The same failure with `context` before its message.
    pub(crate) fn context(self, context: impl std::fmt::Display) -> Failure {
        Failure {
            message: format!("{context}: {}", self.message),
            ..self
        }
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        Error::Load(f.message)
    }
}

pub(crate) type Fetched<T> = std::result::Result<T, Failure>;

/// Runs `attempt` until it succeeds, fails permanently, or has failed `retries + 1` times,
/// sleeping 0.5 s, 1 s, 2 s, ... (at most 8 s) between attempts.
pub(crate) async fn retrying<T, F, Fut>(retries: u32, what: &str, mut attempt: F) -> Fetched<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Fetched<T>>,
{
    let mut delay = Duration::from_millis(500);
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(f) if f.transient && tries <= retries => {
                tracing::warn!(
                    "{what}: {} (attempt {tries} of {}; retrying in {:?})",
                    f.message,
                    retries + 1,
                    delay
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            Err(f) if f.transient && tries > 1 => {
                return Err(Failure {
                    message: format!("{} (after {tries} attempts)", f.message),
                    ..f
                });
            }
            Err(f) => return Err(f),
        }
    }
}

/// An HTTP client for registries and model URLs.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    pub(crate) retries: u32,
    timeout: Duration,
}

/// What a transport error says, with its causes.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn transport(e: reqwest::Error) -> Failure {
    let message = describe(&e);
    // Anything that is not an answer from the server (no connection, reset, timeout, a body
    // cut short) may go better next time; a certificate that does not verify, a redirect loop
    // or a request that cannot be built will not, and must not be papered over by the cache.
    let transient = !e.is_builder()
        && !e.is_redirect()
        && !tls_refused(&e, &message)
        && e.status()
            .is_none_or(|s| s.as_u16() == 429 || s.is_server_error());
    Failure { message, transient }
}

/// Whether a transport error is TLS refusing the peer (a rustls error among its causes).
pub(crate) fn tls_refused(e: &(dyn std::error::Error + 'static), message: &str) -> bool {
    use tokio_rustls::rustls;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<rustls::Error>().is_some()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cause = c.source();
    }
    message.contains("certificate")
}

/// Installs ring as the process's TLS crypto provider, once (the HTTP clients' TLS needs one).
pub(crate) fn install_crypto() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

impl Http {
    pub(crate) fn new(settings: &SourcesSettings) -> Result<Http> {
        install_crypto();
        let timeout = Duration::from_secs(settings.timeout_seconds);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("oxinfer/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = extra_roots(settings)? {
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Manifest(format!("[sources] ca_file: {}", describe(&e))))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Load(format!("cannot set up the HTTP client: {}", describe(&e))))?;
        Ok(Http {
            client,
            retries: settings.retries,
            timeout,
        })
    }

    /// Sends `request` (built anew for each attempt) and reads its JSON answer. An HTTP error
    /// status is a failure that names the status and what the server said.
    pub(crate) async fn json(
        &self,
        what: &str,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Fetched<serde_json::Value> {
        retrying(self.retries, what, || async {
            let response = request(&self.client)
                .timeout(self.timeout)
                .send()
                .await
                .map_err(transport)?;
            let status = response.status();
            let url = response.url().clone();
            let body = read_bounded(response, MAX_JSON_BYTES).await?;
            if !status.is_success() {
                return Err(status_failure(status, &url, &body));
            }
            serde_json::from_slice(&body).map_err(|e| {
                Failure::permanent(format!("GET {}: the answer is not JSON: {e}", redact(&url)))
            })
        })
        .await
    }

    /// Downloads what `request` answers into a new file `to`, hashing it as it arrives; a
    /// retry starts the file over. Returns the SHA-256 (hex) and the size. `expected_len`,
    /// when the source listed it, must match.
    pub(crate) async fn download(
        &self,
        what: &str,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        to: &Path,
        expected_len: Option<u64>,
    ) -> Fetched<(String, u64)> {
        retrying(self.retries, what, || async {
            let mut response = request(&self.client).send().await.map_err(transport)?;
            let status = response.status();
            let url = response.url().clone();
            if !status.is_success() {
                let body = read_bounded(response, 64 << 10).await.unwrap_or_default();
                return Err(status_failure(status, &url, &body));
            }
            let declared = response.content_length();
            let limit = declared.into_iter().chain(expected_len).min();
            let mut sink = Sink::create(to)?;
            while let Some(chunk) = response.chunk().await.map_err(|e| {
                transport(e).context(format!(
                    "GET {} cut off after {} bytes",
                    redact(&url),
                    sink.len
                ))
            })? {
                sink.write(&chunk)?;
                if let Some(limit) = limit
                    && sink.len > limit
                {
                    return Err(Failure::permanent(format!(
                        "GET {}: more than the {limit} bytes announced arrived",
                        redact(&url)
                    )));
                }
            }
            let (digest, len) = sink.finish()?;
            for (expected, by) in [(declared, "Content-Length"), (expected_len, "the listing")] {
                if let Some(expected) = expected
                    && expected != len
                {
                    return Err(Failure {
                        message: format!(
                            "GET {}: {len} bytes arrived but {by} says {expected}",
                            redact(&url)
                        ),
                        transient: true,
                    });
                }
            }
            Ok((digest, len))
        })
        .await
    }
}

/// A file being written and hashed.
pub(crate) struct Sink {
    file: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
    pub(crate) len: u64,
    path: std::path::PathBuf,
}

impl Sink {
    pub(crate) fn create(path: &Path) -> Fetched<Sink> {
        let file = std::fs::File::create(path).map_err(|e| {
            Failure::permanent(format!(
                "model cache: cannot create {}: {e}",
                path.display()
            ))
        })?;
        Ok(Sink {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            len: 0,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn write(&mut self, chunk: &[u8]) -> Fetched<()> {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        self.file.write_all(chunk).map_err(|e| {
            Failure::permanent(format!(
                "model cache: cannot write {}: {e}",
                self.path.display()
            ))
        })
    }

    /// Flushes and syncs the file; returns its digest and size.
    pub(crate) fn finish(self) -> Fetched<(String, u64)> {
        let fail = |e: std::io::Error| {
            Failure::permanent(format!(
                "model cache: cannot write {}: {e}",
                self.path.display()
            ))
        };
        let file = self.file.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        Ok((hex::encode(self.hasher.finalize()), self.len))
    }
}

async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Fetched<Vec<u8>> {
    let url = response.url().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limit {
            return Err(Failure::permanent(format!(
                "GET {}: the answer is over {limit} bytes",
                redact(&url)
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A failure for an HTTP error status, with what the server said (MLflow's `message`, else
/// the start of the body).
fn status_failure(status: reqwest::StatusCode, url: &reqwest::Url, body: &[u8]) -> Failure {
    let said = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string()
        });
    Failure {
        message: format!(
            "{} answered HTTP {status}{}",
            redact(url),
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ),
        transient: status.as_u16() == 429 || status.is_server_error(),
    }
}

/// A URL for messages: without credentials or query string.
pub(crate) fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}

/// The PEM text of `[sources] ca_file`, if set, checked to hold certificates.
pub(crate) fn extra_roots(settings: &SourcesSettings) -> Result<Option<Vec<u8>>> {
    let Some(file) = &settings.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(file).map_err(|e| {
        Error::Manifest(format!(
            "[sources] ca_file: cannot read {}: {e}",
            file.display()
        ))
    })?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(Some(pem)),
        Ok(_) => Err(Error::Manifest(format!(
            "[sources] ca_file: {} holds no PEM certificate",
            file.display()
        ))),
        Err(e) => Err(Error::Manifest(format!(
            "[sources] ca_file: {}: {}",
            file.display(),
            describe(&e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_carry_no_credentials() {
        let url = reqwest::Url::parse("https://user:secret@host/p?token=x").unwrap();
        assert_eq!(redact(&url), "https://host/p");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let mut calls = 0;
        let r: Fetched<()> = retrying(2, "x", || {
            calls += 1;
            async {
                Err(Failure {
                    message: "down".into(),
                    transient: true,
                })
            }
        })
        .await;
        assert_eq!(calls, 3);
        assert!(r.unwrap_err().message.contains("after 3 attempts"));
        let mut calls = 0;
        let r: Fetched<()> = retrying(2, "x", || {
            calls += 1;
            async { Err(Failure::permanent("404")) }
        })
        .await;
        assert_eq!(calls, 1);
        assert_eq!(r.unwrap_err().message, "404");
    }
}
