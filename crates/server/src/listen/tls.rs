//! TLS on both ports (rustls, no OpenSSL): the certificate, key and client CA of
//! `[server.tls]`. [`Tls::reload`] (SIGHUP, or [`Tls::reload_if_changed`] when the files
//! change) reads the files again: new connections get the new certificate, open ones keep the
//! one they were made with.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use oxinfer_core::manifest::TlsSettings;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// The TLS configuration both ports serve, replaceable while they run.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    configs: RwLock<Configs>,
    /// The files' modification times and sizes when last read.
    stamps: Mutex<Vec<Stamp>>,
}

/// A file's modification time and size (following symbolic links, as a Kubernetes Secret
/// volume's `..data` link is swapped on update).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// One configuration per port: REST offers HTTP/2 and HTTP/1.1 by ALPN, gRPC HTTP/2 only.
#[derive(Debug, Clone)]
struct Configs {
    rest: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
}

impl Tls {
    /// Reads and checks the files of `[server.tls]`. The error names the file and the reason.
    pub fn load(settings: &TlsSettings) -> Result<Tls, String> {
        let stamps = stamps(settings);
        Ok(Tls {
            settings: settings.clone(),
            configs: RwLock::new(configs(settings)?),
            stamps: Mutex::new(stamps),
        })
    }

    /// Reads the files again if any of them changed since they were last read (cert-manager
    /// renewing a mounted Secret): `None` when nothing changed, else what [`Tls::reload`] says.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = stamps(&self.settings);
        let mut seen = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return None;
        }
        // Remembered even when the reload fails, so that a broken file is reported once, not
        // at every poll; the next change is tried again.
        *seen = now;
        drop(seen);
        Some(self.reload())
    }

    /// Reads the files again; on success new connections use them. On failure nothing changes
    /// (the error says why), so a half-written rotation never takes the server down.
    pub fn reload(&self) -> Result<(), String> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.settings);
        let fresh = configs(&self.settings)?;
        *self.configs.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Whether clients must present a certificate (`client_ca` is set).
    pub fn mutual(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    /// The acceptor for a new connection on `port`, with the configuration current now.
    pub(crate) fn acceptor(&self, port: super::Port) -> tokio_rustls::TlsAcceptor {
        let configs = self.configs.read().unwrap_or_else(|e| e.into_inner());
        let config = match port {
            super::Port::Http => configs.rest.clone(),
            super::Port::Grpc => configs.grpc.clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Stamp> {
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| stamp(path))
    .collect()
}

fn configs(settings: &TlsSettings) -> Result<Configs, String> {
    let mut rest = server_config(settings)?;
    let mut grpc = rest.clone();
    rest.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        rest: Arc::new(rest),
        grpc: Arc::new(grpc),
    })
}

fn certificates(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("[server.tls] {what} {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    if certs.is_empty() {
        return Err(fail(&"no PEM certificate in the file"));
    }
    Ok(certs)
}

fn server_config(settings: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&settings.cert, "cert")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .map_err(|e| format!("[server.tls] key {}: {e}", settings.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("[server.tls]: {e}"))?;
    let builder = match &settings.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(path, "client_ca")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("[server.tls] client_ca {}: {e}", path.display()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("[server.tls] client_ca {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "[server.tls] cert {} with key {}: {e}",
            settings.cert.display(),
            settings.key.display()
        )
    })
}

/// The subject of a client's certificate (its first, leaf certificate), as
/// `CN=fraud-api, O=Example`: the caller's identity under mutual TLS.
pub(crate) fn subject(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}
