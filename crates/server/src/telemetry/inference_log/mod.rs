//! The inference log: one tamper-evident JSON Lines record per inference request.
//!
//! - Records are built on the request path from cheap clones (tensor data is reference-counted)
//!   and handed to a bounded queue; a dedicated writer thread encodes them (tensors as OIP JSON,
//!   or their SHA-256 above `max_tensor_bytes`) and appends them to the file. When the queue is
//!   full the configured policy applies: wait, or drop and count the drop.
//! - **Hash chain.** Each record carries `prev_hash`, the `hash` of the record before it (64
//!   zeros for the first record ever), and ends with `hash`: the SHA-256 of the record's own line
//!   up to that field, i.e. the line with the trailing `,"hash":"<64 hex>"}` replaced by `}`.
//!   Changing, removing or reordering records breaks the chain; [`verify`] finds the first broken
//!   record. A rotated file ends the chain segment; the next file starts with the previous file's
//!   last hash, and a restarted server resumes from the last record on disk.
//! - Rotation by size and/or age, renaming the file to `<path>.<UTC timestamp>`; only the newest
//!   `retention_files` rotated files are kept.
//! - On graceful shutdown the writer drains the queue and flushes before the process exits.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use oxinfer_core::manifest::{InferenceLogSettings, OnFull};
use oxinfer_core::protocol::json::JsonTensor;
use oxinfer_core::protocol::raw;
use oxinfer_core::{Error, Result, Tensor};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

mod verify;

use verify::split_hash;
pub use verify::{Verified, find, verify};

/// The version of the record format.
pub const FORMAT_VERSION: u32 = 1;

/// The `prev_hash` of the first record of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the request path knows about one finished request.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// When the request arrived.
    pub(crate) timestamp: SystemTime,
    /// The request id (the client's or a generated one).
    pub(crate) request_id: String,
    /// The model name asked for.
    pub(crate) model: String,
    /// The concrete version that answered (or the one asked for).
    pub(crate) version: String,
    /// The model's digest, when the model was found.
    pub(crate) sha256: Option<String>,
    /// `http` or `grpc`.
    pub(crate) protocol: &'static str,
    /// The client's address.
    pub(crate) client: Option<SocketAddr>,
    /// The authenticated caller, once authentication exists.
    pub(crate) identity: Option<String>,
    /// The error message, for a failed request.
    pub(crate) error: Option<String>,
    /// Time from arrival to response, in microseconds.
    pub(crate) latency_us: u64,
    /// The decoded inputs (empty when decoding failed).
    pub(crate) inputs: Vec<Tensor>,
    /// The outputs returned (empty on failure).
    pub(crate) outputs: Vec<Tensor>,
}

enum Message {
    Record(Box<Event>),
    Shutdown(oneshot::Sender<()>),
}

/// The sending side of the log, shared by the request handlers.
#[derive(Debug, Clone)]
pub struct InferenceLog {
    tx: mpsc::Sender<Message>,
    on_full: OnFull,
    counters: Arc<LogCounters>,
}

/// Records written and dropped, for metrics.
#[derive(Debug, Default)]
pub(crate) struct LogCounters {
    /// Records appended to the file.
    written: AtomicU64,
    /// Records dropped because the queue was full (policy `drop`).
    dropped: AtomicU64,
}

impl LogCounters {
    /// (written, dropped) so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

impl InferenceLog {
    /// Opens (or resumes) the log and starts its writer thread.
    pub fn start(settings: InferenceLogSettings) -> Result<InferenceLog> {
        let counters = Arc::new(LogCounters::default());
        let mut writer = Writer::open(settings.clone(), counters.clone())?;
        let (tx, mut rx) = mpsc::channel::<Message>(settings.queue_capacity);
        std::thread::Builder::new()
            .name("oxinfer-inference-log".into())
            .spawn(move || {
                while let Some(message) = rx.blocking_recv() {
                    match message {
                        Message::Record(event) => writer.append(&event),
                        Message::Shutdown(done) => {
                            // Everything sent before the shutdown is already written.
                            writer.flush();
                            let _ = done.send(());
                            return;
                        }
                    }
                    if rx.is_empty() {
                        writer.flush();
                    }
                }
                writer.flush();
            })
            .map_err(|e| Error::Internal(format!("cannot start the inference log writer: {e}")))?;
        tracing::info!(path = %settings.path.display(), "inference log enabled");
        Ok(InferenceLog {
            tx,
            on_full: settings.on_full,
            counters,
        })
    }

    /// Queues a record, following the `on_full` policy.
    pub(crate) async fn record(&self, event: Event) {
        let message = Message::Record(Box::new(event));
        match self.on_full {
            OnFull::Block => {
                let _ = self.tx.send(message).await;
            }
            OnFull::Drop => {
                if self.tx.try_send(message).is_err() {
                    let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped,
                            "inference log queue full: records dropped (on_full = \"drop\")"
                        );
                    }
                }
            }
        }
    }

    /// The written / dropped counters.
    pub(crate) fn counters(&self) -> &LogCounters {
        &self.counters
    }

    /// Writes out everything queued so far, flushes, and stops the writer.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

#[derive(Serialize)]
struct ModelRef<'a> {
    name: &'a str,
    version: &'a str,
    sha256: Option<&'a str>,
}

/// A tensor in a record: OIP JSON, or its digest when it is large (or not representable).
enum LoggedTensor<'a> {
    Json(&'a Tensor),
    Digest(&'a Tensor, String, usize),
}

impl Serialize for LoggedTensor<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Digested<'a> {
            name: &'a str,
            datatype: &'a str,
            shape: &'a [usize],
            sha256: &'a str,
            bytes: usize,
        }
        match self {
            LoggedTensor::Json(t) => JsonTensor(t).serialize(s),
            LoggedTensor::Digest(t, sha, bytes) => Digested {
                name: t.name(),
                datatype: t.datatype().as_str(),
                shape: t.shape(),
                sha256: sha,
                bytes: *bytes,
            }
            .serialize(s),
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    format: u32,
    timestamp: String,
    request_id: &'a str,
    model: ModelRef<'a>,
    protocol: &'a str,
    client: Option<String>,
    identity: Option<&'a str>,
    status: &'a str,
    error: Option<&'a str>,
    latency_us: u64,
    inputs: Vec<LoggedTensor<'a>>,
    outputs: Vec<LoggedTensor<'a>>,
    prev_hash: &'a str,
}

fn logged(t: &Tensor, cap: usize) -> LoggedTensor<'_> {
    let raw = raw::raw_bytes(t);
    let utf8 = t
        .strings()
        .is_none_or(|items| items.iter().all(|b| std::str::from_utf8(b).is_ok()));
    if raw.len() <= cap && utf8 {
        LoggedTensor::Json(t)
    } else {
        LoggedTensor::Digest(t, hex::encode(Sha256::digest(&raw)), raw.len())
    }
}

fn timestamp(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Serializes one record with its hash, as one line (with the newline).
fn encode(event: &Event, prev_hash: &str, cap: usize) -> (Vec<u8>, String) {
    let record = Record {
        format: FORMAT_VERSION,
        timestamp: timestamp(event.timestamp),
        request_id: &event.request_id,
        model: ModelRef {
            name: &event.model,
            version: &event.version,
            sha256: event.sha256.as_deref(),
        },
        protocol: event.protocol,
        client: event.client.map(|c| c.to_string()),
        identity: event.identity.as_deref(),
        status: if event.error.is_some() { "error" } else { "ok" },
        error: event.error.as_deref(),
        latency_us: event.latency_us,
        inputs: event.inputs.iter().map(|t| logged(t, cap)).collect(),
        outputs: event.outputs.iter().map(|t| logged(t, cap)).collect(),
        prev_hash,
    };
    let mut line = serde_json::to_vec(&record).expect("records serialize");
    let hash = hex::encode(Sha256::digest(&line));
    line.pop(); // the closing brace
    line.extend_from_slice(format!(",\"hash\":\"{hash}\"}}\n").as_bytes());
    (line, hash)
}

struct Writer {
    settings: InferenceLogSettings,
    counters: Arc<LogCounters>,
    file: BufWriter<File>,
    size: u64,
    opened: Instant,
    prev_hash: String,
}

/// The `hash` of the last complete record of a log file, if it has one.
fn last_hash(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    BufReader::new(file)
        .lines()
        .map_while(std::result::Result::ok)
        .filter_map(|l| split_hash(&l).map(|(_, hash)| hash.to_string()))
        .last()
}

/// Cuts a record left half-written by a crash (no final newline) off the end of the log, so that
/// new records start on a line of their own and the chain resumes from the last whole record.
fn drop_torn_tail(path: &Path) -> std::io::Result<()> {
    let Ok(text) = std::fs::read(path) else {
        return Ok(());
    };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(());
    }
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    tracing::warn!(
        path = %path.display(),
        bytes = text.len() - keep,
        "inference log ends with a torn record (an earlier crash); it is cut off"
    );
    OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(keep as u64)
}

fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    files.sort();
    files
}

impl Writer {
    fn open(settings: InferenceLogSettings, counters: Arc<LogCounters>) -> Result<Writer> {
        let path = &settings.path;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Manifest(format!(
                    "[inference_log]: cannot create {}: {e}",
                    dir.display()
                ))
            })?;
        }
        drop_torn_tail(path).map_err(|e| {
            Error::Manifest(format!(
                "[inference_log]: cannot repair {}: {e}",
                path.display()
            ))
        })?;
        let prev_hash = last_hash(path)
            .or_else(|| rotated_files(path).last().and_then(|p| last_hash(p)))
            .unwrap_or_else(|| GENESIS.to_string());
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                Error::Manifest(format!(
                    "[inference_log]: cannot open {}: {e}",
                    path.display()
                ))
            })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Writer {
            settings,
            counters,
            file: BufWriter::with_capacity(1 << 16, file),
            size,
            opened: Instant::now(),
            prev_hash,
        })
    }

    fn append(&mut self, event: &Event) {
        if let Err(e) = self.rotate_if_due() {
            tracing::error!("inference log rotation failed: {e}");
        }
        let (line, hash) = encode(event, &self.prev_hash, self.settings.max_tensor_bytes);
        match self.file.write_all(&line) {
            Ok(()) => {
                self.size += line.len() as u64;
                self.prev_hash = hash;
                self.counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!("cannot write the inference log: {e}"),
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self
            .file
            .flush()
            .and_then(|_| self.file.get_ref().sync_data())
        {
            tracing::error!("cannot flush the inference log: {e}");
        }
    }

    fn rotate_if_due(&mut self) -> std::io::Result<()> {
        let too_big = self.size >= self.settings.max_file_bytes;
        let too_old = self
            .settings
            .rotate_seconds
            .is_some_and(|s| self.opened.elapsed().as_secs() >= s);
        if self.size == 0 || !(too_big || too_old) {
            return Ok(());
        }
        self.file.flush()?;
        let path = &self.settings.path;
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
            ))
            .unwrap_or_default();
        let mut rotated = PathBuf::from(format!("{}.{stamp}", path.display()));
        let mut n = 1;
        while rotated.exists() {
            rotated = PathBuf::from(format!("{}.{stamp}-{n}", path.display()));
            n += 1;
        }
        std::fs::rename(path, &rotated)?;
        self.file = BufWriter::with_capacity(
            1 << 16,
            OpenOptions::new().create(true).append(true).open(path)?,
        );
        self.size = 0;
        self.opened = Instant::now();
        tracing::info!(rotated = %rotated.display(), "inference log rotated");
        let rotated_all = rotated_files(path);
        let excess = rotated_all
            .len()
            .saturating_sub(self.settings.retention_files);
        for old in &rotated_all[..excess] {
            match std::fs::remove_file(old) {
                Ok(()) => tracing::info!(removed = %old.display(), "inference log retention"),
                Err(e) => tracing::warn!("cannot remove {}: {e}", old.display()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, value: f32) -> Event {
        Event {
            timestamp: SystemTime::now(),
            request_id: id.into(),
            model: "m".into(),
            version: "1".into(),
            sha256: Some("ab".repeat(32)),
            protocol: "http",
            client: Some("127.0.0.1:9".parse().unwrap()),
            identity: None,
            error: None,
            latency_us: 12,
            inputs: vec![Tensor::from_vec("x", vec![2], vec![value, 2.0]).unwrap()],
            outputs: vec![Tensor::from_vec("big", vec![100], vec![1u8; 100]).unwrap()],
        }
    }

    #[test]
    fn records_chain_and_verify() {
        let mut prev = GENESIS.to_string();
        let mut text = String::new();
        for i in 0..3 {
            let (line, hash) = encode(&event(&format!("r{i}"), i as f32), &prev, 64);
            let line = String::from_utf8(line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["prev_hash"], prev.as_str());
            assert_eq!(v["hash"], hash.as_str());
            assert_eq!(v["inputs"][0]["data"], serde_json::json!([i as f64, 2.0]));
            // Above the cap: digest and size only.
            assert_eq!(v["outputs"][0]["bytes"], 100);
            assert_eq!(v["outputs"][0]["sha256"].as_str().unwrap().len(), 64);
            text.push_str(&line);
            prev = hash;
        }
        let dir = std::env::temp_dir().join(format!("oxinfer-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.jsonl");
        std::fs::write(&path, &text).unwrap();
        let ok = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!((ok.records, ok.last_hash.as_str()), (3, prev.as_str()));
        // One byte changed in the middle record.
        let at = text.find("\"r1\"").unwrap() + 2;
        let mut bytes = text.clone().into_bytes();
        bytes[at] = b'7';
        std::fs::write(&path, &bytes).unwrap();
        let e = verify(std::slice::from_ref(&path)).unwrap_err();
        assert!(
            e.contains("log.jsonl:2: broken record (request_id r7)"),
            "{e}"
        );
        // A record removed.
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let e = verify(std::slice::from_ref(&path)).unwrap_err();
        assert!(
            e.contains("log.jsonl:2: broken chain at request_id r2"),
            "{e}"
        );
        std::fs::write(&path, &text).unwrap();
        assert_eq!(find(std::slice::from_ref(&path), "r2").unwrap().len(), 1);
        // A multi-byte character where the hash suffix should start is a broken record, not a
        // panic.
        std::fs::write(&path, format!("{}{}\n", "é".repeat(40), "x")).unwrap();
        assert!(verify(std::slice::from_ref(&path)).is_err());
        // A torn last record (a crash mid-write) is cut off and the chain resumes.
        std::fs::write(&path, format!("{text}{{\"format\":1,\"request_id\":\"torn")).unwrap();
        drop_torn_tail(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(last_hash(&path).as_deref(), Some(prev.as_str()));
    }
}
