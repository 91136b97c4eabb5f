//! Reading an inference log back: checking its hash chain (`oxinfer audit verify`) and finding
//! the records of one request (`oxinfer audit show`).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::GENESIS;

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

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// The hash of the last record.
    pub last_hash: String,
    /// The `prev_hash` the first record starts from.
    pub starts_from: String,
}

/// Checks the hash chain of log files given oldest first; returns the first broken record as an
/// error that names the file, the line, the request id and what is wrong.
pub fn verify(files: &[PathBuf]) -> std::result::Result<Verified, String> {
    let mut expected: Option<String> = None;
    let mut starts_from = None;
    let mut records = 0u64;
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
            let id = value["request_id"].as_str().unwrap_or("?");
            let computed = hex::encode(Sha256::digest(body.as_bytes()));
            if computed != hash {
                return Err(format!(
                    "{at}: broken record (request_id {id}): its content does not match its hash \
                     (altered after it was written)"
                ));
            }
            let prev = value["prev_hash"].as_str().unwrap_or_default();
            match &expected {
                Some(e) if e != prev => {
                    return Err(format!(
                        "{at}: broken chain at request_id {id}: prev_hash {prev} is not the hash of \
                         the record before it ({e}); records were removed, reordered or inserted"
                    ));
                }
                _ => {}
            }
            starts_from.get_or_insert_with(|| prev.to_string());
            expected = Some(hash.to_string());
            records += 1;
        }
    }
    Ok(Verified {
        records,
        last_hash: expected.unwrap_or_else(|| GENESIS.to_string()),
        starts_from: starts_from.unwrap_or_else(|| GENESIS.to_string()),
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
