//! Reading an inference log back: checking its hash chain and its signed checkpoints
//! (`oxinfer audit verify`) and finding the records of one request (`oxinfer audit show`).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::GENESIS;
use super::signing::{PublicKey, Reason, checkpoint_message, checkpoint_message_v1};

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
    /// The records since the checkpoint before it that the server vouches for.
    pub records: u64,
    /// The records since the checkpoint before it that the server found on disk at a restart
    /// after an unclean stop and does not vouch for (0 but in a `recovered` checkpoint).
    pub unverified: u64,
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
    /// Records covered only as `unverified` (by a `recovered` checkpoint): written before an
    /// unclean stop, after the last checkpoint before it; no signature vouches for them.
    pub unvouched: u64,
    /// The `recovered` checkpoints: where the server restarted after an unclean stop.
    pub recovered: Vec<Checkpoint>,
}

/// The `checkpoint` object of a record, its fields checked for shape.
struct CheckpointFields<'a> {
    reason: Reason,
    records: u64,
    /// `None` in a checkpoint of the first format (signed text `/1`).
    unverified: Option<u64>,
    head: &'a str,
    key_id: &'a str,
    signature: &'a str,
}

fn checkpoint_fields(value: &serde_json::Value) -> Option<CheckpointFields<'_>> {
    let unverified = match value.get("unverified") {
        None => None,
        Some(n) => Some(n.as_u64()?),
    };
    let reason = Reason::parse(value["reason"].as_str()?)?;
    // The first format had no recovered checkpoints.
    if unverified.is_none() && reason == Reason::Recovered {
        return None;
    }
    Some(CheckpointFields {
        reason,
        records: value["records"].as_u64()?,
        unverified,
        head: value["head"].as_str()?,
        key_id: value["key_id"].as_str()?,
        signature: value["signature"].as_str()?,
    })
}

impl CheckpointFields<'_> {
    /// The text its signature covers.
    fn message(&self, timestamp: &str) -> Vec<u8> {
        match self.unverified {
            Some(unverified) => checkpoint_message(
                self.head,
                self.records,
                unverified,
                self.key_id,
                timestamp,
                self.reason.as_str(),
            ),
            None => checkpoint_message_v1(self.head, self.records, timestamp, self.reason.as_str()),
        }
    }
}

/// Checks the hash chain of log files given oldest first, and each checkpoint: its head is the
/// hash of the record before it, its record counts (`records` + `unverified`) match the chain,
/// and, when `keys` are given, it is signed by one of them. Records a checkpoint counts as
/// `unverified` are reported as not vouched for ([`Verified::unvouched`]). Returns the first
/// broken record as an error that names the file, the line, the request id (or `checkpoint`)
/// and what is wrong.
pub fn verify(files: &[PathBuf], keys: &[PublicKey]) -> std::result::Result<Verified, String> {
    let mut expected: Option<String> = None;
    let mut starts_from: Option<String> = None;
    let mut records = 0u64;
    let mut checkpoints = 0u64;
    let mut last_checkpoint: Option<Checkpoint> = None;
    let mut key_ids: Vec<String> = Vec::new();
    let mut unvouched = 0u64;
    let mut recovered: Vec<Checkpoint> = Vec::new();
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
                    "{at}: malformed checkpoint: it needs reason (records, interval, shutdown or \
                     recovered), records, unverified (a number; recovered checkpoints need it), \
                     head, key_id and signature"
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
            let unverified = fields.unverified.unwrap_or(0);
            let covers = fields.records.saturating_add(unverified);
            if covers != since && (exact || covers < since) {
                return Err(format!(
                    "{at}: broken checkpoint: it covers {covers} record(s) since the previous \
                     checkpoint, but the chain has {since}"
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
                if !key.verify_hex(&fields.message(timestamp), fields.signature) {
                    return Err(format!(
                        "{at}: bad checkpoint signature (key {}): the checkpoint was altered or \
                         forged, or the records before it were altered and re-hashed",
                        fields.key_id
                    ));
                }
            }
            checkpoints += 1;
            // The oldest records it covers are the unverified ones (found on disk at a restart,
            // before this server wrote any).
            unvouched += since.saturating_sub(fields.records);
            since = 0;
            if !key_ids.iter().any(|id| id == fields.key_id) {
                key_ids.push(fields.key_id.to_string());
            }
            let found = Checkpoint {
                at,
                timestamp: timestamp.to_string(),
                reason: fields.reason,
                records: fields.records,
                unverified,
                key_id: fields.key_id.to_string(),
            };
            if found.reason == Reason::Recovered {
                recovered.push(found.clone());
            }
            last_checkpoint = Some(found);
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
        unvouched,
        recovered,
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
