//! Reading an inference log back: checking its hash chain and its signed checkpoints
//! (`oxinfer audit verify`) and finding the records of one request (`oxinfer audit show`).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::GENESIS;
use super::signing::{PublicKey, Reason, checkpoint_message};

/// Splits a record line into (the hashed text without the hash field, the hash).
pub(crate) fn split_hash(line: &str) -> Option<(String, &str)> {
    const SUFFIX_LEN: usize = ",\"hash\":\"\"}".len() + 64;
    if line.len() < SUFFIX_LEN || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - SUFFIX_LEN;
    let (body, suffix) = (line.get(..cut)?, line.get(cut..)?);
    let hash = suffix.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (format!("{body}}}"), hash))
}

/// Whether a record line is a checkpoint, and if so its reason (`None` for an unknown one):
/// a cheap test on the line's start (`{"format":N,"checkpoint":`), then JSON for checkpoints
/// only.
pub(crate) fn checkpoint_reason(line: &str) -> Option<Option<Reason>> {
    let rest = line.strip_prefix("{\"format\":")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    if !rest.starts_with(",\"checkpoint\":") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(
        value["checkpoint"]["reason"]
            .as_str()
            .and_then(Reason::parse),
    )
}

/// The permission bits of a file when group or others may read or write it (Unix); `None`
/// when they may not, or the file cannot be read.
pub fn loose_permissions(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
        (mode & 0o066 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// A checkpoint found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Where it is, as `file:line`.
    pub at: String,
    /// When it was written.
    pub timestamp: String,
    /// Why it was written.
    pub reason: Reason,
    /// The records since the checkpoint before it.
    pub records: u64,
    /// The id of the key that signed it.
    pub key_id: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Request records checked (checkpoints not counted).
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The hash of the last record.
    pub last_hash: String,
    /// The `prev_hash` the first record starts from.
    pub starts_from: String,
    /// Whether the checkpoints' signatures were checked (public keys were given).
    pub signatures_checked: bool,
    /// The last checkpoint, when there is one.
    pub last_checkpoint: Option<Checkpoint>,
    /// The ids of the keys that signed the checkpoints, in order of first use.
    pub key_ids: Vec<String>,
    /// Records after the last checkpoint (all of them when there is none): no signature covers
    /// them.
    pub unsigned_tail: u64,
}

/// The `checkpoint` object of a record, its fields checked for shape.
struct CheckpointFields<'a> {
    reason: Reason,
    records: u64,
    head: &'a str,
    key_id: &'a str,
    signature: &'a str,
}

fn checkpoint_fields(value: &serde_json::Value) -> Option<CheckpointFields<'_>> {
    Some(CheckpointFields {
        reason: Reason::parse(value["reason"].as_str()?)?,
        records: value["records"].as_u64()?,
        head: value["head"].as_str()?,
        key_id: value["key_id"].as_str()?,
        signature: value["signature"].as_str()?,
    })
}

/// Checks the hash chain of log files given oldest first, and each checkpoint: its head is the
/// hash of the record before it, its record count matches the chain, and, when `keys` are
/// given, it is signed by one of them. Returns the first broken record as an error that names
/// the file, the line, the request id (or `checkpoint`) and what is wrong.
pub fn verify(files: &[PathBuf], keys: &[PublicKey]) -> std::result::Result<Verified, String> {
    let mut expected: Option<String> = None;
    let mut starts_from: Option<String> = None;
    let mut records = 0u64;
    let mut checkpoints = 0u64;
    let mut last_checkpoint: Option<Checkpoint> = None;
    let mut key_ids: Vec<String> = Vec::new();
    // Records since the last checkpoint (all records so far, before the first).
    let mut since = 0u64;
    for path in files {
        let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (ix, line) in BufReader::new(file).lines().enumerate() {
            let at = format!("{}:{}", path.display(), ix + 1);
            let line = line.map_err(|e| format!("{at}: cannot read: {e}"))?;
            if line.trim().is_empty() {
                continue;
            }
            let (body, hash) = split_hash(&line).ok_or_else(|| {
                format!("{at}: broken record: no well-formed trailing \"hash\" field")
            })?;
            let value: serde_json::Value = serde_json::from_str(&body)
                .map_err(|e| format!("{at}: broken record: not valid JSON ({e})"))?;
            let checkpoint = value.get("checkpoint");
            let what = match (checkpoint, value["request_id"].as_str()) {
                (Some(_), _) => "checkpoint".to_string(),
                (None, id) => format!("request_id {}", id.unwrap_or("?")),
            };
            let computed = hex::encode(Sha256::digest(body.as_bytes()));
            if computed != hash {
                return Err(format!(
                    "{at}: broken record ({what}): its content does not match its hash \
                     (altered after it was written)"
                ));
            }
            let prev = value["prev_hash"].as_str().unwrap_or_default();
            match &expected {
                Some(e) if e != prev => {
                    return Err(format!(
                        "{at}: broken chain at {what}: prev_hash {prev} is not the hash of \
                         the record before it ({e}); records were removed, reordered or inserted"
                    ));
                }
                _ => {}
            }
            let starts_from = starts_from.get_or_insert_with(|| prev.to_string());
            expected = Some(hash.to_string());
            let Some(checkpoint) = checkpoint else {
                records += 1;
                since += 1;
                continue;
            };
            let fields = checkpoint_fields(checkpoint).ok_or_else(|| {
                format!(
                    "{at}: malformed checkpoint: it needs reason (records, interval or shutdown), \
                     records, head, key_id and signature"
                )
            })?;
            if fields.head != prev {
                return Err(format!(
                    "{at}: broken checkpoint: its head {} is not the hash of the record before it \
                     ({prev})",
                    fields.head
                ));
            }
            // The count is exact from the previous checkpoint or the chain's first record ever;
            // otherwise records before the first file given may be counted too.
            let exact = last_checkpoint.is_some() || starts_from == GENESIS;
            if fields.records != since && (exact || fields.records < since) {
                return Err(format!(
                    "{at}: broken checkpoint: it covers {} record(s) since the previous \
                     checkpoint, but the chain has {since}",
                    fields.records
                ));
            }
            let timestamp = value["timestamp"].as_str().unwrap_or_default();
            if !keys.is_empty() {
                let key = keys.iter().find(|k| k.id() == fields.key_id).ok_or_else(|| {
                    format!(
                        "{at}: checkpoint signed by key {}, not by the public key given ({}): a \
                         wrong --public-key, or a forged checkpoint",
                        fields.key_id,
                        keys.iter().map(PublicKey::id).collect::<Vec<_>>().join(", ")
                    )
                })?;
                let message = checkpoint_message(
                    fields.head,
                    fields.records,
                    timestamp,
                    fields.reason.as_str(),
                );
                if !key.verify_hex(&message, fields.signature) {
                    return Err(format!(
                        "{at}: bad checkpoint signature (key {}): the checkpoint was altered or \
                         forged, or the records before it were altered and re-hashed",
                        fields.key_id
                    ));
                }
            }
            checkpoints += 1;
            since = 0;
            if !key_ids.iter().any(|id| id == fields.key_id) {
                key_ids.push(fields.key_id.to_string());
            }
            last_checkpoint = Some(Checkpoint {
                at,
                timestamp: timestamp.to_string(),
                reason: fields.reason,
                records: fields.records,
                key_id: fields.key_id.to_string(),
            });
        }
    }
    Ok(Verified {
        records,
        checkpoints,
        last_hash: expected.unwrap_or_else(|| GENESIS.to_string()),
        starts_from: starts_from.unwrap_or_else(|| GENESIS.to_string()),
        signatures_checked: !keys.is_empty(),
        last_checkpoint,
        key_ids,
        unsigned_tail: since,
    })
}

/// The records of `files` whose `request_id` is `id`, as (file:line, record text).
pub fn find(files: &[PathBuf], id: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    for path in files {
        let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (ix, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), ix + 1))?;
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if value["request_id"].as_str() == Some(id) {
                found.push((format!("{}:{}", path.display(), ix + 1), line));
            }
        }
    }
    Ok(found)
}
