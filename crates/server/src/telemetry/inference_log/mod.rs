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
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use oxinfer_core::manifest::{InferenceLogSettings, OnError, OnFull};
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
    /// The end user the client named (OpenAI's `user`), as the client sent it.
    pub(crate) user: Option<String>,
    /// The error message, for a failed request.
    pub(crate) error: Option<String>,
    /// Time from arrival to response, in microseconds.
    pub(crate) latency_us: u64,
    /// The decoded inputs (empty when decoding failed).
    pub(crate) inputs: Vec<Tensor>,
    /// The outputs returned (empty on failure).
    pub(crate) outputs: Vec<Tensor>,
    /// The request's bytes against the in-flight budget: the tensors above stay counted until
    /// the record is written and the event dropped.
    pub(crate) _held: Option<crate::budget::Reservation>,
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
    on_error: OnError,
    counters: Arc<LogCounters>,
}

/// Records written and dropped, for metrics.
#[derive(Debug, Default)]
pub(crate) struct LogCounters {
    /// Records appended to the file.
    written: AtomicU64,
    /// Records dropped because the queue was full (policy `drop`), the writer had stopped, or
    /// writes kept failing for longer than the retry buffer holds.
    dropped: AtomicU64,
    /// Failed writes to the log file (disk full, I/O error).
    write_errors: AtomicU64,
    /// Set while records cannot be written; cleared by the next successful write.
    failing: AtomicBool,
}

impl LogCounters {
    /// (written, dropped, write errors) so far.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.write_errors.load(Ordering::Relaxed),
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
                loop {
                    let message = if writer.failing() {
                        // Writes are failing: retry what is held every RETRY_INTERVAL, taking
                        // new records meanwhile.
                        match rx.try_recv() {
                            Ok(message) => Some(message),
                            Err(mpsc::error::TryRecvError::Empty) => {
                                std::thread::sleep(RETRY_INTERVAL);
                                writer.flush();
                                continue;
                            }
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        }
                    } else {
                        rx.blocking_recv()
                    };
                    match message {
                        Some(Message::Record(event)) => writer.append(&event),
                        Some(Message::Shutdown(done)) => {
                            // Everything sent before the shutdown is already written.
                            writer.flush();
                            let _ = done.send(());
                            return;
                        }
                        None => break,
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
            on_error: settings.on_error,
            counters,
        })
    }

    /// Queues a record, following the `on_full` policy.
    pub(crate) async fn record(&self, event: Event) {
        let message = Message::Record(Box::new(event));
        let lost = match self.on_full {
            OnFull::Block => self.tx.send(message).await.is_err(),
            OnFull::Drop => match self.tx.try_send(message) {
                Ok(()) => false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped,
                            "inference log queue full: records dropped (on_full = \"drop\")"
                        );
                    }
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => true,
            },
        };
        if lost {
            // The writer thread has stopped: say so (rate-limited) and count every lost record.
            let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(
                    dropped,
                    "the inference log writer has stopped: records are being lost"
                );
            }
        }
    }

    /// Whether requests may be served: false while records cannot be written and the log's
    /// `on_error` policy is `refuse`.
    pub(crate) fn accepting(&self) -> bool {
        self.on_error != OnError::Refuse || !self.counters.failing.load(Ordering::Relaxed)
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
    name: std::borrow::Cow<'a, str>,
    version: std::borrow::Cow<'a, str>,
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
    /// The end user the client named (OpenAI's `user`), cut like client strings.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<std::borrow::Cow<'a, str>>,
    status: &'a str,
    error: Option<std::borrow::Cow<'a, str>>,
    latency_us: u64,
    inputs: Vec<LoggedTensor<'a>>,
    outputs: Vec<LoggedTensor<'a>>,
    /// Tensors left out because even their digests made the record longer than
    /// `max_record_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    omitted_tensors: Option<usize>,
    prev_hash: &'a str,
}

/// The longest client-influenced string (error message, model name or version asked for) kept
/// in a record, in bytes; a longer one is cut, with a marker.
const MAX_ERROR_BYTES: usize = 1024;

fn shortened(e: &str) -> std::borrow::Cow<'_, str> {
    if e.len() <= MAX_ERROR_BYTES {
        return e.into();
    }
    let mut cut = MAX_ERROR_BYTES;
    while !e.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes)", &e[..cut], e.len()).into()
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

/// How much of a request's tensors a record carries.
#[derive(Clone, Copy)]
enum Detail {
    /// As JSON up to this many bytes per tensor, digests above.
    Capped(usize),
    /// Digests only.
    Digests,
    /// None: only their count.
    Omitted,
}

/// Serializes one record with its hash, as one line (with the newline). A record longer than
/// `max_record` bytes is made again with digests instead of tensors, then without tensors.
fn encode(event: &Event, prev_hash: &str, cap: usize, max_record: usize) -> (Vec<u8>, String) {
    let mut line = serialize(event, prev_hash, Detail::Capped(cap));
    for detail in [Detail::Digests, Detail::Omitted] {
        if line.len() <= max_record {
            break;
        }
        line = serialize(event, prev_hash, detail);
    }
    let hash = hex::encode(Sha256::digest(&line));
    line.pop(); // the closing brace
    line.extend_from_slice(format!(",\"hash\":\"{hash}\"}}\n").as_bytes());
    (line, hash)
}

/// One record without its hash.
fn serialize(event: &Event, prev_hash: &str, detail: Detail) -> Vec<u8> {
    fn tensors(list: &[Tensor], detail: Detail) -> Vec<LoggedTensor<'_>> {
        match detail {
            Detail::Capped(cap) => list.iter().map(|t| logged(t, cap)).collect(),
            Detail::Digests => list.iter().map(|t| logged(t, 0)).collect(),
            Detail::Omitted => Vec::new(),
        }
    }
    let omitted =
        matches!(detail, Detail::Omitted).then(|| event.inputs.len() + event.outputs.len());
    let record = Record {
        format: FORMAT_VERSION,
        timestamp: timestamp(event.timestamp),
        request_id: &event.request_id,
        model: ModelRef {
            name: shortened(&event.model),
            version: shortened(&event.version),
            sha256: event.sha256.as_deref(),
        },
        protocol: event.protocol,
        client: event.client.map(|c| c.to_string()),
        identity: event.identity.as_deref(),
        user: event.user.as_deref().map(shortened),
        status: if event.error.is_some() { "error" } else { "ok" },
        error: event.error.as_deref().map(shortened),
        latency_us: event.latency_us,
        inputs: tensors(&event.inputs, detail),
        outputs: tensors(&event.outputs, detail),
        omitted_tensors: omitted,
        prev_hash,
    };
    serde_json::to_vec(&record).expect("records serialize")
}

/// How often the writer retries while writes fail.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Encoded records are written out once this many bytes are pending (and whenever the queue is
/// empty).
const WRITE_CHUNK: usize = 1 << 16;

/// The file side of the log. Records are encoded into `pending` and written out in chunks; the
/// file only ever holds whole records. When a write fails (a full disk, say), the file is cut
/// back to its last whole record, the failure is counted and logged, and the pending records
/// are kept and retried in order, so that the chain stays intact. Past `max_pending` bytes they
/// are dropped (counted), and the chain continues from the last record on disk.
struct Writer {
    settings: InferenceLogSettings,
    counters: Arc<LogCounters>,
    file: File,
    /// Bytes of whole records in the file.
    size: u64,
    opened: Instant,
    /// The hash of the last record encoded (pending or written).
    prev_hash: String,
    /// The hash of the last record in the file.
    written_hash: String,
    /// Encoded records not yet in the file.
    pending: Vec<u8>,
    pending_records: u64,
    /// The most bytes held while writes fail.
    max_pending: usize,
    last_error_log: Option<Instant>,
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
        let max_pending = settings.max_record_bytes.saturating_mul(16).max(64 << 20);
        Ok(Writer {
            settings,
            counters,
            file,
            size,
            opened: Instant::now(),
            written_hash: prev_hash.clone(),
            prev_hash,
            pending: Vec::with_capacity(WRITE_CHUNK * 2),
            pending_records: 0,
            max_pending,
            last_error_log: None,
        })
    }

    fn failing(&self) -> bool {
        self.counters.failing.load(Ordering::Relaxed)
    }

    fn append(&mut self, event: &Event) {
        // Pending records belong to the current file: they are written before it rotates, so a
        // file rotates at its size whatever the batching (and never while writes fail).
        if self.rotation_due()
            && self.write_out()
            && let Err(e) = self.rotate()
        {
            tracing::error!("inference log rotation failed: {e}");
        }
        let (line, hash) = encode(
            event,
            &self.prev_hash,
            self.settings.max_tensor_bytes,
            self.settings.max_record_bytes,
        );
        self.pending.extend_from_slice(&line);
        self.pending_records += 1;
        self.prev_hash = hash;
        if self.pending.len() >= WRITE_CHUNK {
            self.write_out();
        }
    }

    /// Writes the pending records to the file; on failure keeps them for a retry.
    fn write_out(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                self.counters
                    .written
                    .fetch_add(self.pending_records, Ordering::Relaxed);
                self.written_hash = self.prev_hash.clone();
                self.pending.clear();
                self.pending_records = 0;
                if self.counters.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("inference log writes succeed again");
                }
                true
            }
            Err(e) => {
                self.write_failed(&e);
                false
            }
        }
    }

    /// Cuts the file back to its last whole record, counts and logs the failure (at most once
    /// every 10 s), and drops the pending records when there are too many to hold.
    fn write_failed(&mut self, e: &std::io::Error) {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        self.counters.failing.store(true, Ordering::Relaxed);
        let repaired = self.file.set_len(self.size);
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t).as_secs() >= 10)
        {
            self.last_error_log = Some(now);
            tracing::error!(
                path = %self.settings.path.display(),
                pending_records = self.pending_records,
                repaired = repaired.is_ok(),
                "cannot write the inference log: {e}; retrying"
            );
        }
        if self.pending.len() > self.max_pending {
            self.counters
                .dropped
                .fetch_add(self.pending_records, Ordering::Relaxed);
            tracing::error!(
                records = self.pending_records,
                "inference log records dropped: writes have failed for too long"
            );
            self.pending.clear();
            self.pending_records = 0;
            self.prev_hash = self.written_hash.clone();
        }
    }

    fn flush(&mut self) {
        if self.write_out()
            && let Err(e) = self.file.sync_data()
        {
            tracing::error!("cannot flush the inference log: {e}");
        }
    }

    /// Whether the file, with the records pending for it, is due to rotate.
    fn rotation_due(&self) -> bool {
        let size = self.size + self.pending.len() as u64;
        let too_big = size >= self.settings.max_file_bytes;
        let too_old = self
            .settings
            .rotate_seconds
            .is_some_and(|s| self.opened.elapsed().as_secs() >= s);
        size > 0 && (too_big || too_old)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
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
        self.file = OpenOptions::new().create(true).append(true).open(path)?;
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
            user: None,
            _held: None,
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
            let (line, hash) = encode(&event(&format!("r{i}"), i as f32), &prev, 64, 1 << 20);
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
