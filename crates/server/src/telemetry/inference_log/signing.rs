//! Signed checkpoints: the Ed25519 keys that sign the inference log's chain head, and the exact
//! bytes they sign.
//!
//! - Keys are PEM files: the private key as PKCS#8 (`-----BEGIN PRIVATE KEY-----`), the public
//!   key as SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), the formats of
//!   `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
//! - A key's id ([`key_id`]) is the first 16 hex digits of the SHA-256 of its public key's DER
//!   (SubjectPublicKeyInfo) encoding:
//!   `openssl pkey -pubin -in KEY.pub.pem -outform DER | sha256sum | cut -c1-16`.
//! - A checkpoint signs [`checkpoint_message`]: one line of text naming every field of the
//!   checkpoint: the chain head, the records since the previous checkpoint that the server
//!   vouches for and those it does not, the key id, the timestamp and why it was written.
//!   Checkpoints written by earlier versions signed [`checkpoint_message_v1`].

use std::fmt;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer};
use sha2::{Digest, Sha256};

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `checkpoint_records` records were written since the previous checkpoint.
    Records,
    /// `checkpoint_seconds` passed with records written since the previous checkpoint.
    Interval,
    /// The server shut down: the last record of a cleanly stopped server.
    Shutdown,
    /// Written first at startup when the log did not end with a shutdown checkpoint (an unclean
    /// stop, or records written without `signing_key`): it closes the records found after the
    /// last checkpoint as `unverified`, records the server did not write and does not vouch for.
    Recovered,
}

impl Reason {
    /// The name in the record (`records`, `interval`, `shutdown`, `recovered`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Records => "records",
            Reason::Interval => "interval",
            Reason::Shutdown => "shutdown",
            Reason::Recovered => "recovered",
        }
    }

    /// The reason named `name`.
    pub fn parse(name: &str) -> Option<Reason> {
        match name {
            "records" => Some(Reason::Records),
            "interval" => Some(Reason::Interval),
            "shutdown" => Some(Reason::Shutdown),
            "recovered" => Some(Reason::Recovered),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bytes a checkpoint's signature covers: every field of its `checkpoint` object (but the
/// signature) and its timestamp, as one line:
///
/// ```text
/// oxinfer-inference-log-checkpoint/2 head=<64 hex> records=<n> unverified=<n> key_id=<16 hex> timestamp=<RFC 3339> reason=<reason>
/// ```
///
/// (no trailing newline). `head` is the hash of the record before the checkpoint (its
/// `prev_hash`), which commits to every record before it through the hash chain; `records` the
/// records since the previous checkpoint that this server wrote and vouches for; `unverified`
/// those it found on disk after an unclean stop and does not vouch for (0 but in a `recovered`
/// checkpoint).
pub fn checkpoint_message(
    head: &str,
    records: u64,
    unverified: u64,
    key_id: &str,
    timestamp: &str,
    reason: &str,
) -> Vec<u8> {
    format!(
        "oxinfer-inference-log-checkpoint/2 head={head} records={records} \
         unverified={unverified} key_id={key_id} timestamp={timestamp} reason={reason}"
    )
    .into_bytes()
}

/// The bytes signed by checkpoints of the first format (without `unverified`, written by
/// earlier versions; still checked by `audit verify`):
///
/// ```text
/// oxinfer-inference-log-checkpoint/1 head=<64 hex> records=<n> timestamp=<RFC 3339> reason=<reason>
/// ```
pub fn checkpoint_message_v1(head: &str, records: u64, timestamp: &str, reason: &str) -> Vec<u8> {
    format!(
        "oxinfer-inference-log-checkpoint/1 head={head} records={records} \
         timestamp={timestamp} reason={reason}"
    )
    .into_bytes()
}

/// The id of a public key: the first 16 hex digits of the SHA-256 of its DER
/// (SubjectPublicKeyInfo) encoding.
pub fn key_id(key: &ed25519_dalek::VerifyingKey) -> String {
    let der = key
        .to_public_key_der()
        .expect("an Ed25519 public key encodes");
    let mut id = hex::encode(Sha256::digest(der.as_bytes()));
    id.truncate(16);
    id
}

/// The private key that signs checkpoints (`[inference_log] signing_key`).
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key itself.
        write!(f, "SigningKey({})", self.id)
    }
}

impl SigningKey {
    /// Reads an Ed25519 private key in PKCS#8 PEM; the error names the file and the reason.
    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("signing key {}: cannot read it: {e}", path.display()))?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&text).map_err(|e| {
            format!(
                "signing key {}: not an Ed25519 private key in PKCS#8 PEM (as `oxinfer audit \
                 keygen` or `openssl genpkey -algorithm ed25519` write): {e}",
                path.display()
            )
        })?;
        let id = key_id(&key.verifying_key());
        Ok(SigningKey { key, id })
    }

    /// A new random key (from the operating system's generator).
    pub fn generate() -> Result<SigningKey, String> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice())
            .map_err(|e| format!("cannot get random bytes for a key: {e}"))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = key_id(&key.verifying_key());
        Ok(SigningKey { key, id })
    }

    /// The id of its public key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            id: self.id.clone(),
        }
    }

    /// The signature of `message`, as 128 hex digits.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }

    /// The private key as PKCS#8 PEM, in the form `openssl genpkey -algorithm ed25519` writes
    /// (PKCS#8 v1, without the public key).
    fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, String> {
        KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the private key: {e}"))
    }
}

/// A public key that checks checkpoint signatures (`oxinfer audit verify --public-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    id: String,
}

impl PublicKey {
    /// Reads an Ed25519 public key in SubjectPublicKeyInfo PEM; the error names the file and
    /// the reason.
    pub fn load(path: &Path) -> Result<PublicKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("public key {}: cannot read it: {e}", path.display()))?;
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&text).map_err(|e| {
            format!(
                "public key {}: not an Ed25519 public key in PEM (`-----BEGIN PUBLIC KEY-----`, \
                 as `oxinfer audit keygen` or `openssl pkey -pubout` write): {e}",
                path.display()
            )
        })?;
        let id = key_id(&key);
        Ok(PublicKey { key, id })
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `signature_hex` (128 hex digits) is this key's signature of `message` (strict
    /// Ed25519 verification).
    pub fn verify_hex(&self, message: &[u8], signature_hex: &str) -> bool {
        let Ok(bytes) = hex::decode(signature_hex) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify_strict(message, &signature).is_ok()
    }

    /// The key as SubjectPublicKeyInfo PEM.
    fn to_pem(&self) -> Result<String, String> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("cannot encode the public key: {e}"))
    }
}

/// Creates `path` for writing, failing if it exists; `private` files get mode 0600 on Unix.
fn create_new(path: &Path, private: bool) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Creates the missing directories above `path`, with mode 0700 (Unix).
fn create_parent(path: &Path) -> Result<(), String> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// `oxinfer audit keygen`: writes a new key pair, the private key as PKCS#8 PEM with mode 0600
/// and the public key as SubjectPublicKeyInfo PEM (missing directories are created with mode
/// 0700). Refuses to overwrite an existing file. Returns the public key.
pub fn keygen(private: &Path, public: &Path) -> Result<PublicKey, String> {
    if private == public {
        return Err("the private and public key files must differ".into());
    }
    for path in [private, public] {
        if path.exists() {
            return Err(format!(
                "{} already exists; not overwriting it",
                path.display()
            ));
        }
    }
    let key = SigningKey::generate()?;
    let public_key = key.public_key();
    let private_pem = key.to_pem()?;
    let public_pem = public_key.to_pem()?;
    create_parent(private)?;
    create_parent(public)?;
    let mut file = create_new(private, true)?;
    file.write_all(private_pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", private.display()))?;
    let mut file = create_new(public, false)?;
    file.write_all(public_pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
    Ok(public_key)
}
