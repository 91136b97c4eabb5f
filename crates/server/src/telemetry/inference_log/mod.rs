//! The inference log: one tamper-evident JSON Lines record per inference request.
//!
//! - Records are handed from the request path to a bounded queue, and a dedicated writer thread
//!   chains them and appends them to the file. A small record (tensors of at most 4 KiB in
//!   all, `PREPARE_MAX_TENSOR_BYTES`) is encoded by the request thread up to its `prev_hash`,
//!   the last field, and SHA-256 fed with it: the writer adds `prev_hash` and finishes the hash,
//!   half of what encoding the whole record cost it (`Prepared`). A larger one is queued as
//!   cheap clones (tensor data is reference-counted) and encoded by the writer (tensors as OIP
//!   JSON, or their SHA-256 above `max_tensor_bytes`), so that an I/O thread never spends long
//!   on it. When the queue is full the configured policy applies: wait, or drop and count the
//!   drop.
//! - **Hash chain.** Each record carries `prev_hash`, the `hash` of the record before it (64
//!   zeros for the first record ever), and ends with `hash`: the SHA-256 of the record's own line
//!   up to that field, i.e. the line with the trailing `,"hash":"<64 hex>"}` replaced by `}`.
//!   Changing, removing or reordering records breaks the chain; [`verify`] finds the first broken
//!   record. A rotated file ends the chain segment; the next file starts with the previous file's
//!   last hash, and a restarted server resumes from the last record on disk.
//! - Rotation by size and/or age, renaming the file to `<path>.<UTC timestamp>`; only the newest
//!   `retention_files` rotated files are kept.
//! - On graceful shutdown the writer drains the queue and flushes before the process exits.
//! - **Signed checkpoints** (with `signing_key`). Every `checkpoint_records` records, when the
//!   oldest record not yet covered is `checkpoint_seconds` old, and at shutdown, the
//!   writer appends a checkpoint: a record of the chain like any other, whose `checkpoint` object
//!   carries the chain head (the hash of the record before it) signed with an Ed25519 key (see
//!   [`signing`]). Cutting off the newest records then removes the checkpoints that covered them,
//!   and `verify` with the public key reports the records left without a signature. Signing runs
//!   on the writer thread, never on the request path.
//! - **Recovery.** The server signs only records it wrote itself. When it starts on a log that
//!   does not end with a shutdown checkpoint (an unclean stop: SIGKILL, a crash; or records
//!   written without `signing_key`), it first writes a `recovered` checkpoint that closes the
//!   records found after the last checkpoint as `unverified` (`records` 0), so that whoever could
//!   rewrite that unsigned tail (and re-hash the unkeyed chain) before the restart cannot have
//!   it signed; `verify` reports them as not vouched for.
//! - Files are created with mode 0600 and directories with mode 0700 (Unix).

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use oxinfer_core::manifest::{InferenceLogSettings, OnError, OnFull};
use oxinfer_core::protocol::json;
use oxinfer_core::protocol::raw;
use oxinfer_core::{Error, Result, Tensor};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

pub mod signing;
mod verify;

use signing::checkpoint_message;
pub use signing::{PublicKey, Reason, SigningKey, keygen};
pub use verify::{Checkpoint, Verified, find, loose_permissions, verify};
use verify::{checkpoint_reason, split_hash};

/// The version of the record format.
pub const FORMAT_VERSION: u32 = 1;

/// The `prev_hash` of the first record of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the request path knows about one finished request. It borrows what the request still
/// holds (its id, the response's outputs) for a record encoded before the response is sent,
/// and is made owned ([`Event::into_owned`]) only for the writer to encode.
#[derive(Debug, Clone)]
pub(crate) struct Event<'a> {
    /// When the request arrived.
    pub(crate) timestamp: SystemTime,
    /// The request id (the client's or a generated one).
    pub(crate) request_id: Cow<'a, str>,
    /// The model asked for and what answered.
    pub(crate) model: Arc<ModelRecord>,
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
    pub(crate) outputs: Cow<'a, [Tensor]>,
    /// The request's bytes against the in-flight budget: the tensors above stay counted until
    /// the record is written and the event dropped.
    pub(crate) _held: Option<crate::budget::Reservation>,
}

impl Event<'_> {
    /// The event with everything it borrows copied (tensor data is reference-counted).
    fn into_owned(self) -> Event<'static> {
        Event {
            request_id: Cow::Owned(self.request_id.into_owned()),
            outputs: Cow::Owned(self.outputs.into_owned()),
            timestamp: self.timestamp,
            model: self.model,
            protocol: self.protocol,
            client: self.client,
            identity: self.identity,
            user: self.user,
            error: self.error,
            latency_us: self.latency_us,
            inputs: self.inputs,
            _held: self._held,
        }
    }
}

// Nearly every message is a record, carried in the channel's slot: boxing it would cost an
// allocation per request (and a free on the writer thread).
enum Message {
    /// A small record, encoded on the request path up to its `prev_hash` ([`Prepared`]).
    Prepared(Prepared),
    /// A record with more tensor data than [`PREPARE_MAX_TENSOR_BYTES`], for the writer to
    /// encode (their JSON or digests would hold an I/O thread too long).
    Record(Event<'static>),
    /// Time for a checkpoint, if one is due (sent every second or so when signing).
    Tick,
    Shutdown(oneshot::Sender<()>),
}

/// A record encoded on the request thread that made it, but for its `prev_hash` and `hash`:
/// the writer appends the one and computes the other, which only it can (they chain the
/// records in the order it writes them). The tensors are then dropped by the thread that
/// allocated them; dropped on the writer's thread, their memory went back to the request
/// threads' allocator pages through its cross-thread free lists, and the writer read them from
/// the other core's cache.
struct Prepared {
    /// The record up to and including `,"prev_hash":`.
    head: Vec<u8>,
    /// SHA-256 fed with `head`: the writer goes on from there.
    sha: Sha256,
    /// The request's bytes against the in-flight budget, until the record is written.
    _held: Option<crate::budget::Reservation>,
}

/// Records whose tensors hold at most this many bytes in all are encoded on the request path
/// (the inputs and outputs of a small request: a few microseconds); larger ones by the writer.
const PREPARE_MAX_TENSOR_BYTES: usize = 4096;

/// The sending side of the log, shared by the request handlers.
#[derive(Debug, Clone)]
pub struct InferenceLog {
    tx: mpsc::Sender<Message>,
    /// `max_tensor_bytes` and `max_record_bytes`, for records encoded on the request path.
    max_tensor_bytes: usize,
    max_record_bytes: usize,
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
    /// Opens (or resumes) the log and starts its writer thread (and, with `signing_key`, the
    /// thread that asks for time-based checkpoints).
    pub fn start(settings: InferenceLogSettings) -> Result<InferenceLog> {
        let counters = Arc::new(LogCounters::default());
        let key = load_signing_key(&settings)?;
        let key_id = key.as_ref().map(|k| k.id().to_string());
        let mut writer = Writer::open(settings.clone(), counters.clone(), key)?;
        let (tx, mut rx) = mpsc::channel::<Message>(settings.queue_capacity);
        std::thread::Builder::new()
            .name("oxinfer-inference-log".into())
            .spawn(move || {
                let mut arrivals = Arrivals::new(Instant::now());
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
                        match rx.try_recv() {
                            Ok(message) => Some(message),
                            Err(mpsc::error::TryRecvError::Empty) => {
                                let message = rx.blocking_recv();
                                arrivals.restart(Instant::now());
                                message
                            }
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        }
                    };
                    match message {
                        Some(Message::Prepared(prepared)) => {
                            writer.append(Record::Prepared(prepared));
                            arrivals.took();
                        }
                        Some(Message::Record(event)) => {
                            writer.append(Record::Event(&event));
                            arrivals.took();
                        }
                        Some(Message::Tick) => writer.tick(),
                        Some(Message::Shutdown(done)) => {
                            // Everything sent before the shutdown is already written.
                            writer.finish();
                            let _ = done.send(());
                            return;
                        }
                        None => break,
                    }
                    if rx.is_empty() {
                        writer.drained();
                        // Let records gather before waiting for the next one: a sender wakes
                        // the writer (a futex call on a request thread) only while it waits,
                        // so under load one wake-up carries a batch instead of a record.
                        std::thread::sleep(arrivals.gather(Instant::now(), rx.max_capacity()));
                    }
                }
                writer.finish();
            })
            .map_err(|e| Error::Internal(format!("cannot start the inference log writer: {e}")))?;
        {
            // Ticks for the sync interval and time-based checkpoints: at most every second,
            // dropped when the queue is full (the writer then checks the time at its next
            // record). The weak sender lets the channel close when the log is dropped.
            let weak = tx.downgrade();
            let mut period = TICK;
            if key_id.is_some() {
                period = period.min(Duration::from_secs(settings.checkpoint_seconds));
            }
            if settings.sync_interval_ms > 0 {
                period = period.min(Duration::from_millis(settings.sync_interval_ms));
            }
            std::thread::Builder::new()
                .name("oxinfer-inference-log-ticks".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(period);
                        let Some(tx) = weak.upgrade() else { return };
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(Message::Tick)
                        {
                            return;
                        }
                    }
                })
                .map_err(|e| {
                    Error::Internal(format!("cannot start the inference log ticks: {e}"))
                })?;
        }
        match &key_id {
            Some(key_id) => tracing::info!(
                path = %settings.path.display(),
                key_id,
                checkpoint_records = settings.checkpoint_records,
                checkpoint_seconds = settings.checkpoint_seconds,
                "inference log enabled, with signed checkpoints"
            ),
            None => tracing::info!(path = %settings.path.display(), "inference log enabled"),
        }
        Ok(InferenceLog {
            tx,
            max_tensor_bytes: settings.max_tensor_bytes,
            max_record_bytes: settings.max_record_bytes,
            on_full: settings.on_full,
            on_error: settings.on_error,
            counters,
        })
    }

    /// Queues a record, following the `on_full` policy. A small one is encoded here, and its
    /// tensors dropped here ([`Prepared`]).
    pub(crate) async fn record(&self, mut event: Event<'_>) {
        let tensor_bytes = event
            .inputs
            .iter()
            .chain(event.outputs.iter())
            .map(raw::raw_len)
            .fold(0usize, usize::saturating_add);
        let message = if tensor_bytes <= PREPARE_MAX_TENSOR_BYTES {
            let (head, sha) = prepare(&event, self.max_tensor_bytes, self.max_record_bytes);
            Message::Prepared(Prepared {
                head,
                sha,
                _held: event._held.take(),
            })
        } else {
            Message::Record(event.into_owned())
        };
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

/// The `signing_key` of `settings`, read and checked, when there is one: the error names the
/// file and the reason (for startup and `oxinfer check`).
pub fn load_signing_key(settings: &InferenceLogSettings) -> Result<Option<SigningKey>> {
    let Some(path) = &settings.signing_key else {
        return Ok(None);
    };
    let key =
        SigningKey::load(path).map_err(|e| Error::Manifest(format!("[inference_log]: {e}")))?;
    if let Some(mode) = loose_permissions(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "the inference log's signing key is readable or writable by group or others; \
             it should be readable by the server only (chmod 600)"
        );
    }
    Ok(Some(key))
}

/// How often the ticks thread asks the writer whether a time-based checkpoint is due (at most).
const TICK: Duration = Duration::from_secs(1);
/// How long the writer lets records gather after draining its queue, at most.
const GATHER: Duration = Duration::from_millis(4);

/// What the writer knows of the rate at which records come: how many it took since when.
struct Arrivals {
    taken: u64,
    since: Instant,
}

impl Arrivals {
    fn new(now: Instant) -> Self {
        Arrivals {
            taken: 0,
            since: now,
        }
    }

    /// Starts the count again at `now`: back from a pause, or after waiting for a record (the
    /// queue was empty). The time it waited says nothing of the rate at which records come from
    /// now on (a burst after an idle spell). Counted from before the wait, one record after a
    /// long idle spell made the next pause the full [`GATHER`], whatever the queue's size: a
    /// small queue could fill during it, and senders wait for room (`on_full = "block"`).
    fn restart(&mut self, now: Instant) {
        *self = Arrivals::new(now);
    }

    /// One record taken.
    fn took(&mut self) {
        self.taken += 1;
    }

    /// How long to let records gather, the queue (`capacity` records) drained at `now`.
    fn pause(&self, now: Instant, capacity: usize) -> Duration {
        gather_pause(
            self.taken,
            now.saturating_duration_since(self.since),
            capacity,
        )
    }

    /// The pause after draining the queue at `drained` ([`Arrivals::pause`]), the count
    /// started again from `drained`: the records taken after the pause arrived during it and
    /// after it. (Started again when the pause ended, the count was the rate at which the
    /// writer drains its queue, many times the rate at which records come, and the pauses
    /// under load a fraction of [`GATHER`]: at 70k records/s, about 1 ms.)
    fn gather(&mut self, drained: Instant, capacity: usize) -> Duration {
        let pause = self.pause(drained, capacity);
        self.restart(drained);
        pause
    }
}

/// How long the writer lets records gather after draining its queue, having taken `taken`
/// records over `over` since it last woke: [`GATHER`], or less when, at that rate, the queue
/// (`capacity` records) would be a quarter full sooner, so that a sender never waits for room
/// because the writer slept. Each wake-up of the writer costs a context switch on a core the
/// request threads share; at 40k records/s, 4 ms carries 160 records per wake-up.
fn gather_pause(taken: u64, over: Duration, capacity: usize) -> Duration {
    let quarter = u32::try_from(capacity / 4).unwrap_or(u32::MAX).max(1);
    match u32::try_from(taken) {
        Ok(0) => GATHER,
        Ok(taken) => over
            .checked_mul(quarter)
            .map_or(GATHER, |d| (d / taken).min(GATHER)),
        Err(_) => Duration::ZERO,
    }
}

/// Opens a log file for appending, creating it with mode 0600 (Unix).
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates a directory and its missing parents with mode 0700 (Unix); existing ones are left
/// as they are.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// The model as a record names it. A served model holds one, shared by the events of all its
/// requests: a reference count per record instead of copies of its strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelRecord {
    /// The model name asked for (the served model's, when one answered).
    pub(crate) name: String,
    /// The concrete version that answered (or the one asked for).
    pub(crate) version: String,
    /// The model's digest, when the model was found.
    pub(crate) sha256: Option<String>,
    /// Where the model was fetched from, for a model named by URI.
    pub(crate) origin: Option<Origin>,
}

/// Where a model named by URI came from, as each of its records says: the URI as written and
/// the registry version it resolved to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry_version: Option<String>,
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

/// Whether a record carries a tensor as OIP JSON: up to `cap` bytes, and BYTES only when every
/// element is UTF-8. Others are recorded by digest.
fn as_json(t: &Tensor, cap: usize) -> bool {
    raw::raw_len(t) <= cap
        && t.strings()
            .is_none_or(|items| items.iter().all(|b| std::str::from_utf8(b).is_ok()))
}

/// A tensor by digest: `{"name", "datatype", "shape", "sha256", "bytes"}`.
fn write_digest(out: &mut Vec<u8>, t: &Tensor) {
    let raw = raw::raw_bytes(t);
    let mut sha = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(&raw), &mut sha).expect("a SHA-256 is 64 hex digits");
    json::write_tensor_head(out, t);
    out.extend_from_slice(b",\"sha256\":\"");
    out.extend_from_slice(&sha);
    out.extend_from_slice(b"\",\"bytes\":");
    json::write_int(out, raw.len());
    out.push(b'}');
}

/// `"..."` (escaped), or `null`.
fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json::write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A record's `timestamp`: RFC 3339 in UTC (empty for a time RFC 3339 cannot write).
fn timestamp(t: SystemTime) -> String {
    let mut out = Vec::new();
    write_timestamp(&mut out, t);
    String::from_utf8(out).expect("RFC 3339 is ASCII")
}

/// [`timestamp`] onto the end of `out`, without a `String` of its own.
fn write_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let at = out.len();
    let t: time::OffsetDateTime = t.into();
    if t.format_into(out, &time::format_description::well_known::Rfc3339)
        .is_err()
    {
        out.truncate(at);
    }
}

/// A client address as its `Display` writes it (nothing in it needs escaping). IPv4, what most
/// clients have, without `core::fmt` (about a twentieth of the writer's time went to it).
fn write_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                json::write_int(out, octet);
            }
            out.push(b':');
            json::write_int(out, v4.port());
        }
        SocketAddr::V6(v6) => write!(out, "{v6}").expect("writing to a Vec cannot fail"),
    }
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
#[cfg(test)]
fn encode(event: &Event, prev_hash: &str, cap: usize, max_record: usize) -> (Vec<u8>, String) {
    let mut line = Vec::new();
    let hash = encode_into(&mut line, event, prev_hash, cap, max_record);
    (line, hash)
}

/// The length of `"<64 hex digits>"}`: what follows a record's head ([`serialize_head_into`])
/// before its hash.
const PREV_HASH_TAIL: usize = 67;

/// A record's head onto the end of `out`, at the level of detail that keeps the whole record
/// (with a 64-digit `prev_hash`, without its own hash) within `max_record` bytes.
fn head_into(out: &mut Vec<u8>, event: &Event, cap: usize, max_record: usize) {
    let start = out.len();
    serialize_head_into(out, event, Detail::Capped(cap));
    for detail in [Detail::Digests, Detail::Omitted] {
        if out.len() - start + PREV_HASH_TAIL <= max_record {
            break;
        }
        out.truncate(start);
        serialize_head_into(out, event, detail);
    }
}

/// [`encode`] onto the end of `out` (the writer's pending records: no buffer of its own to
/// allocate and copy per record); returns the record's hash.
fn encode_into(
    out: &mut Vec<u8>,
    event: &Event,
    prev_hash: &str,
    cap: usize,
    max_record: usize,
) -> String {
    let start = out.len();
    head_into(out, event, cap, max_record);
    let sha = Sha256::new_with_prefix(&out[start..]);
    chain_tail(out, sha, prev_hash)
}

thread_local! {
    /// The length of the last record head this thread encoded: the next one's first capacity
    /// (records of one model are much alike), so that it is made without growing.
    static HEAD_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(1024) };
}

/// A record's head ([`head_into`]) in a buffer of its own, with the SHA-256 of it so far: what
/// the request path hands the writer ([`Prepared`]).
fn prepare(event: &Event, cap: usize, max_record: usize) -> (Vec<u8>, Sha256) {
    let mut head = Vec::with_capacity(HEAD_BYTES.get().saturating_add(64).min(64 * 1024));
    head_into(&mut head, event, cap, max_record);
    HEAD_BYTES.set(head.len());
    let sha = Sha256::new_with_prefix(&head);
    (head, sha)
}

/// Appends a prepared record, chained after `prev_hash`, onto the end of `out`; returns its
/// hash. The same bytes as [`encode_into`].
fn chain_into(out: &mut Vec<u8>, head: &[u8], sha: Sha256, prev_hash: &str) -> String {
    out.extend_from_slice(head);
    chain_tail(out, sha, prev_hash)
}

/// Ends the record whose head ([`head_into`]) is at the end of `out`, `sha` having been fed
/// that head: its `prev_hash`, the closing brace, then its hash ([`seal_digest`]). Both ways
/// of encoding a record ([`encode_into`], [`chain_into`]) end here.
fn chain_tail(out: &mut Vec<u8>, mut sha: Sha256, prev_hash: &str) -> String {
    let tail = out.len();
    json::write_str(out, prev_hash);
    out.push(b'}');
    sha.update(&out[tail..]);
    seal_digest(out, sha)
}

/// Appends a record's hash to it: `line` is the record serialized without its hash; returns
/// the line (with the newline) and the hash.
fn seal(mut line: Vec<u8>) -> (Vec<u8>, String) {
    let hash = seal_into(&mut line, 0);
    (line, hash)
}

/// [`seal`] for the record that `out[start..]` holds.
fn seal_into(out: &mut Vec<u8>, start: usize) -> String {
    let sha = Sha256::new_with_prefix(&out[start..]);
    seal_digest(out, sha)
}

/// Ends the record at the end of `out` with its hash, `sha` having been fed all of it.
fn seal_digest(out: &mut Vec<u8>, sha: Sha256) -> String {
    let mut hash = [0u8; 64];
    hex::encode_to_slice(sha.finalize(), &mut hash).expect("a SHA-256 is 64 hex digits");
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(&hash);
    out.extend_from_slice(b"\"}\n");
    String::from_utf8(hash.to_vec()).expect("hex digits are ASCII")
}

/// A checkpoint record, without its hash.
#[derive(Serialize)]
struct CheckpointRecord<'a> {
    format: u32,
    checkpoint: CheckpointBody<'a>,
    timestamp: &'a str,
    prev_hash: &'a str,
}

/// The `checkpoint` object of a checkpoint record.
#[derive(Serialize)]
struct CheckpointBody<'a> {
    /// `records`, `interval`, `shutdown` or `recovered`.
    reason: &'a str,
    /// Records since the previous checkpoint that this server wrote (checkpoints not counted).
    records: u64,
    /// Records since the previous checkpoint that this server found on disk at startup and
    /// does not vouch for (0 but in a `recovered` checkpoint).
    unverified: u64,
    /// The hash of the record before this one (its `prev_hash`).
    head: &'a str,
    /// The signing key's id.
    key_id: &'a str,
    /// The Ed25519 signature of [`checkpoint_message`], hex.
    signature: &'a str,
}

/// A signed checkpoint after `head`, as one line with its hash.
fn encode_checkpoint(
    key: &SigningKey,
    head: &str,
    records: u64,
    unverified: u64,
    reason: Reason,
    at: SystemTime,
) -> (Vec<u8>, String) {
    let timestamp = timestamp(at);
    let signature = key.sign_hex(&checkpoint_message(
        head,
        records,
        unverified,
        key.id(),
        &timestamp,
        reason.as_str(),
    ));
    let record = CheckpointRecord {
        format: FORMAT_VERSION,
        checkpoint: CheckpointBody {
            reason: reason.as_str(),
            records,
            unverified,
            head,
            key_id: key.id(),
            signature: &signature,
        },
        timestamp: &timestamp,
        prev_hash: head,
    };
    seal(serde_json::to_vec(&record).expect("checkpoints serialize"))
}

/// One record without its hash, onto the end of `out`.
#[cfg(test)]
fn serialize_into(out: &mut Vec<u8>, event: &Event, prev_hash: &str, detail: Detail) {
    serialize_head_into(out, event, detail);
    json::write_str(out, prev_hash);
    out.push(b'}');
}

/// One record up to and including `,"prev_hash":` (its last field, so that all but the chain
/// can be encoded and hashed before the writer knows the record before it), onto the end of
/// `out`. Written field by field rather than through serde: this runs for every request, and
/// serde's calls per key and per element were most of the writer thread's time (the bytes are
/// the same: see the tests).
fn serialize_head_into(out: &mut Vec<u8>, event: &Event, detail: Detail) {
    fn tensors(out: &mut Vec<u8>, list: &[Tensor], detail: Detail) {
        out.push(b'[');
        if !matches!(detail, Detail::Omitted) {
            let cap = match detail {
                Detail::Capped(cap) => cap,
                _ => 0,
            };
            for (i, t) in list.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if as_json(t, cap) {
                    json::write_tensor(out, t).expect("UTF-8 was checked");
                } else {
                    write_digest(out, t);
                }
            }
        }
        out.push(b']');
    }
    out.extend_from_slice(b"{\"format\":");
    json::write_int(out, FORMAT_VERSION);
    out.extend_from_slice(b",\"timestamp\":\"");
    write_timestamp(out, event.timestamp);
    out.extend_from_slice(b"\",\"request_id\":");
    json::write_str(out, &event.request_id);
    out.extend_from_slice(b",\"model\":{\"name\":");
    json::write_str(out, &shortened(&event.model.name));
    out.extend_from_slice(b",\"version\":");
    json::write_str(out, &shortened(&event.model.version));
    out.extend_from_slice(b",\"sha256\":");
    write_opt_str(out, event.model.sha256.as_deref());
    if let Some(origin) = &event.model.origin {
        out.extend_from_slice(b",\"source\":");
        json::write_str(out, &origin.source);
        if let Some(version) = &origin.registry_version {
            out.extend_from_slice(b",\"registry_version\":");
            json::write_str(out, version);
        }
    }
    out.extend_from_slice(b"},\"protocol\":");
    json::write_str(out, event.protocol);
    out.extend_from_slice(b",\"client\":");
    match event.client {
        Some(addr) => {
            out.push(b'"');
            write_addr(out, addr);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"identity\":");
    write_opt_str(out, event.identity.as_deref());
    if let Some(user) = &event.user {
        out.extend_from_slice(b",\"user\":");
        json::write_str(out, &shortened(user));
    }
    out.extend_from_slice(if event.error.is_some() {
        b",\"status\":\"error\",\"error\":"
    } else {
        b",\"status\":\"ok\",\"error\":"
    });
    write_opt_str(out, event.error.as_deref().map(shortened).as_deref());
    out.extend_from_slice(b",\"latency_us\":");
    json::write_int(out, event.latency_us);
    out.extend_from_slice(b",\"inputs\":");
    tensors(out, &event.inputs, detail);
    out.extend_from_slice(b",\"outputs\":");
    tensors(out, &event.outputs, detail);
    if matches!(detail, Detail::Omitted) {
        out.extend_from_slice(b",\"omitted_tensors\":");
        json::write_int(out, event.inputs.len() + event.outputs.len());
    }
    out.extend_from_slice(b",\"prev_hash\":");
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
    /// Signed checkpoints, with `signing_key`.
    checkpoints: Option<Checkpoints>,
    /// Whether everything written is synced to the disk, and when it last was.
    synced: bool,
    last_sync: Instant,
}

/// The checkpoint side of the writer.
struct Checkpoints {
    key: SigningKey,
    /// A checkpoint after this many records...
    every_records: u64,
    /// ... or when the oldest record not covered by one is this old.
    every: Duration,
    /// When the oldest record not covered by a checkpoint was encoded (records found on disk
    /// after the last checkpoint are closed by a `recovered` checkpoint at startup).
    oldest_unsigned: Option<Instant>,
    /// The end of the chain as encoded (pending records included)...
    encoded: ChainEnd,
    /// ... and as in the file (restored when pending records are dropped).
    written: ChainEnd,
}

/// What the end of the chain looks like, for checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ChainEnd {
    /// Records since the last checkpoint (all of them when there is none).
    since_checkpoint: u64,
    /// Whether the last record is a shutdown checkpoint.
    clean_end: bool,
}

/// What one log file says about the end of the chain.
#[derive(Debug, Default)]
struct FileEnd {
    /// The hash of its last whole record.
    last_hash: Option<String>,
    /// Records after its last checkpoint, and whether its last record is a shutdown
    /// checkpoint.
    end: ChainEnd,
    /// Whether it has a checkpoint.
    has_checkpoint: bool,
}

/// Reads a log file for the hash of its last complete record and its last checkpoint (only
/// checkpoint lines are parsed as JSON).
fn scan(path: &Path) -> FileEnd {
    let mut found = FileEnd::default();
    let Ok(file) = File::open(path) else {
        return found;
    };
    for line in BufReader::new(file)
        .lines()
        .map_while(std::result::Result::ok)
    {
        let Some((_, hash)) = split_hash(&line) else {
            continue;
        };
        found.last_hash = Some(hash.to_string());
        match checkpoint_reason(&line) {
            Some(reason) => {
                found.has_checkpoint = true;
                found.end = ChainEnd {
                    since_checkpoint: 0,
                    clean_end: reason == Some(Reason::Shutdown),
                };
            }
            None => {
                found.end.since_checkpoint += 1;
                found.end.clean_end = false;
            }
        }
    }
    found
}

/// The hash of the last record of the chain that `path` continues (the current file, else the
/// newest rotated file with a record), and the chain's end: records since the last checkpoint
/// are counted back through rotated files to the last checkpoint when `count` is set.
fn chain_end(path: &Path, count: bool) -> (Option<String>, ChainEnd) {
    let mut files = vec![path.to_path_buf()];
    files.extend(rotated_files(path).into_iter().rev());
    let (mut last_hash, mut end, mut counting) = (None, ChainEnd::default(), count);
    for file in files {
        if last_hash.is_some() && !counting {
            break;
        }
        let found = scan(&file);
        if last_hash.is_none() && found.last_hash.is_some() {
            last_hash = found.last_hash;
            end.clean_end = found.end.clean_end;
        }
        if counting {
            end.since_checkpoint += found.end.since_checkpoint;
            counting = !found.has_checkpoint;
        }
    }
    (last_hash, end)
}

/// The `hash` of the last complete record of a log file, if it has one.
#[cfg(test)]
fn last_hash(path: &Path) -> Option<String> {
    scan(path).last_hash
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

/// A record for [`Writer::append`].
enum Record<'a> {
    Prepared(Prepared),
    Event(&'a Event<'a>),
}

impl Writer {
    fn open(
        settings: InferenceLogSettings,
        counters: Arc<LogCounters>,
        key: Option<SigningKey>,
    ) -> Result<Writer> {
        let path = &settings.path;
        if let Some(dir) = path.parent() {
            create_dirs(dir).map_err(|e| {
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
        let (last_hash, end) = chain_end(path, key.is_some());
        let last_hash_found = last_hash.is_some();
        let prev_hash = last_hash.unwrap_or_else(|| GENESIS.to_string());
        let file = open_append(path).map_err(|e| {
            Error::Manifest(format!(
                "[inference_log]: cannot open {}: {e}",
                path.display()
            ))
        })?;
        if let Some(mode) = loose_permissions(path) {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "the inference log is readable or writable by group or others (it is created \
                 0600); chmod 600 it unless that is meant"
            );
        }
        let checkpoints = key.map(|key| Checkpoints {
            key,
            every_records: settings.checkpoint_records.max(1),
            every: Duration::from_secs(settings.checkpoint_seconds.max(1)),
            oldest_unsigned: None,
            encoded: end,
            written: end,
        });
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let max_pending = settings.max_record_bytes.saturating_mul(16).max(64 << 20);
        let mut writer = Writer {
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
            checkpoints,
            synced: true,
            last_sync: Instant::now(),
        };
        if writer.checkpoints.is_some() && last_hash_found && !end.clean_end {
            // Never sign what this process did not write: close the records found after the
            // last checkpoint as unverified.
            tracing::warn!(
                path = %writer.settings.path.display(),
                unverified = end.since_checkpoint,
                "the inference log does not end with a shutdown checkpoint (an unclean stop, or \
                 records written without signing_key): a recovered checkpoint marks the records \
                 after the last checkpoint as not vouched for"
            );
            writer.checkpoint(Reason::Recovered);
            writer.flush();
        }
        Ok(writer)
    }

    fn failing(&self) -> bool {
        self.counters.failing.load(Ordering::Relaxed)
    }

    fn append(&mut self, record: Record<'_>) {
        // Pending records belong to the current file: they are written before it rotates, so a
        // file rotates at its size whatever the batching (and never while writes fail).
        if self.rotation_due()
            && self.write_out()
            && let Err(e) = self.rotate()
        {
            tracing::error!("inference log rotation failed: {e}");
        }
        self.prev_hash = match record {
            Record::Prepared(p) => chain_into(&mut self.pending, &p.head, p.sha, &self.prev_hash),
            Record::Event(event) => encode_into(
                &mut self.pending,
                event,
                &self.prev_hash,
                self.settings.max_tensor_bytes,
                self.settings.max_record_bytes,
            ),
        };
        self.pending_records += 1;
        if let Some(c) = &mut self.checkpoints {
            c.encoded.since_checkpoint += 1;
            c.encoded.clean_end = false;
            let oldest = *c.oldest_unsigned.get_or_insert_with(Instant::now);
            if c.encoded.since_checkpoint >= c.every_records {
                self.checkpoint(Reason::Records);
            } else if oldest.elapsed() >= c.every {
                self.checkpoint(Reason::Interval);
            }
        }
        if self.pending.len() >= WRITE_CHUNK {
            self.write_out();
        }
    }

    /// Appends a signed checkpoint to the pending records (checkpoints are not counted as
    /// records written or dropped). A `recovered` one counts the records since the last
    /// checkpoint as `unverified`, the others as `records`.
    fn checkpoint(&mut self, reason: Reason) {
        let Some(c) = &mut self.checkpoints else {
            return;
        };
        let since = c.encoded.since_checkpoint;
        let (records, unverified) = match reason {
            Reason::Recovered => (0, since),
            _ => (since, 0),
        };
        let (line, hash) = encode_checkpoint(
            &c.key,
            &self.prev_hash,
            records,
            unverified,
            reason,
            SystemTime::now(),
        );
        self.pending.extend_from_slice(&line);
        self.prev_hash = hash;
        c.encoded = ChainEnd {
            since_checkpoint: 0,
            clean_end: reason == Reason::Shutdown,
        };
        c.oldest_unsigned = None;
    }

    /// A time-based checkpoint, when one is due: the oldest record not covered by a checkpoint
    /// is `checkpoint_seconds` old. And the sync that the interval has made due.
    fn tick(&mut self) {
        if let Some(c) = &self.checkpoints
            && c.encoded.since_checkpoint > 0
            && c.oldest_unsigned.is_some_and(|t| t.elapsed() >= c.every)
        {
            self.checkpoint(Reason::Interval);
        }
        self.drained();
    }

    /// The queue is empty: write what is pending, and sync when the interval has passed.
    fn drained(&mut self) {
        if !self.write_out() {
            return;
        }
        let due = self.last_sync.elapsed() >= Duration::from_millis(self.settings.sync_interval_ms);
        if !self.synced && due {
            self.sync();
        }
    }

    fn sync(&mut self) {
        match self.file.sync_data() {
            Ok(()) => {
                self.synced = true;
                self.last_sync = Instant::now();
            }
            Err(e) => tracing::error!("cannot flush the inference log: {e}"),
        }
    }

    /// At shutdown: a shutdown checkpoint (unless the chain already ends with one) and a flush.
    fn finish(&mut self) {
        if let Some(c) = &self.checkpoints
            && (c.encoded.since_checkpoint > 0 || !c.encoded.clean_end)
        {
            self.checkpoint(Reason::Shutdown);
        }
        self.flush();
    }

    /// Writes the pending records to the file; on failure keeps them for a retry.
    fn write_out(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.synced = false;
                self.size += self.pending.len() as u64;
                self.counters
                    .written
                    .fetch_add(self.pending_records, Ordering::Relaxed);
                self.written_hash = self.prev_hash.clone();
                self.pending.clear();
                self.pending_records = 0;
                if let Some(c) = &mut self.checkpoints {
                    c.written = c.encoded;
                }
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
            if let Some(c) = &mut self.checkpoints {
                c.encoded = c.written;
                if c.encoded.since_checkpoint == 0 {
                    c.oldest_unsigned = None;
                }
            }
        }
    }

    /// Writes what is pending and syncs it to the disk.
    fn flush(&mut self) {
        if self.write_out() && !self.synced {
            self.sync();
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
        // The file being closed is synced whole before it is renamed.
        self.file.sync_data()?;
        std::fs::rename(path, &rotated)?;
        self.file = open_append(path)?;
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

    fn event(id: &str, value: f32) -> Event<'static> {
        Event {
            timestamp: SystemTime::now(),
            request_id: id.to_string().into(),
            model: Arc::new(ModelRecord {
                name: "m".into(),
                version: "1".into(),
                sha256: Some("ab".repeat(32)),
                origin: None,
            }),
            protocol: "http",
            client: Some("127.0.0.1:9".parse().unwrap()),
            identity: None,
            user: None,
            _held: None,
            error: None,
            latency_us: 12,
            inputs: vec![Tensor::from_vec("x", vec![2], vec![value, 2.0]).unwrap()],
            outputs: vec![Tensor::from_vec("big", vec![100], vec![1u8; 100]).unwrap()].into(),
        }
    }

    /// serde's rendering of a record, as the writer wrote records before [`serialize_into`]
    /// wrote them field by field: the reference its bytes are checked against.
    mod reference {
        use super::super::*;
        use oxinfer_core::protocol::json::JsonTensor;

        #[derive(Serialize)]
        struct ModelRef<'a> {
            name: std::borrow::Cow<'a, str>,
            version: std::borrow::Cow<'a, str>,
            sha256: Option<&'a str>,
            #[serde(flatten)]
            origin: Option<&'a Origin>,
        }

        /// A tensor in a record: OIP JSON, or its digest when it is large (or not representable).
        enum LoggedTensor<'a> {
            Json(&'a Tensor),
            Digest(&'a Tensor, String, usize),
        }

        impl Serialize for LoggedTensor<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
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

        pub(super) fn line(event: &Event, prev_hash: &str, detail: Detail) -> Vec<u8> {
            fn tensors(list: &[Tensor], detail: Detail) -> Vec<LoggedTensor<'_>> {
                match detail {
                    Detail::Capped(cap) => list.iter().map(|t| logged(t, cap)).collect(),
                    Detail::Digests => list.iter().map(|t| logged(t, 0)).collect(),
                    Detail::Omitted => Vec::new(),
                }
            }
            let omitted =
                matches!(detail, Detail::Omitted).then(|| event.inputs.len() + event.outputs.len());
            serde_json::to_vec(&Record {
                format: FORMAT_VERSION,
                timestamp: time::OffsetDateTime::from(event.timestamp)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                request_id: &event.request_id,
                model: ModelRef {
                    name: shortened(&event.model.name),
                    version: shortened(&event.model.version),
                    sha256: event.model.sha256.as_deref(),
                    origin: event.model.origin.as_ref(),
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
            })
            .unwrap()
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:9",
            "10.20.255.7:65535",
            "192.168.100.1:8080",
            "[::1]:80",
            "[::ffff:10.0.0.1]:443",
            "[fe80::1%3]:1",
            "[2001:db8::8:800:200c:417a]:8001",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            write_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn records_are_written_as_serde_would_write_them() {
        let odd = "q\"uote\\back\nline\u{1}\u{7f}é";
        let mut events = vec![event("plain", 1.0)];
        let mut e = event(odd, f32::NAN);
        e.timestamp = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_120_000_000);
        e.model = Arc::new(ModelRecord {
            name: format!("{odd}{}", "é".repeat(700)),
            version: odd.into(),
            sha256: None,
            origin: Some(Origin {
                source: format!("s3://b/{odd}"),
                registry_version: Some(odd.into()),
            }),
        });
        e.protocol = "grpc";
        e.client = Some("[::1]:80".parse().unwrap());
        e.identity = Some(odd.into());
        e.user = Some("u".repeat(3000));
        e.error = Some(format!("{odd}{}", "x".repeat(2000)));
        e.inputs = vec![
            Tensor::from_strings(odd, vec![2], vec![odd.as_bytes().to_vec(), Vec::new()]).unwrap(),
            Tensor::from_strings("raw", vec![1], vec![vec![0xff, 0]]).unwrap(),
            Tensor::from_bools("b", vec![3], &[true, false, true]).unwrap(),
            Tensor::from_vec("d", vec![1, 3], vec![f64::INFINITY, -0.0, 1e300]).unwrap(),
            Tensor::from_vec("i", vec![2], vec![i64::MIN, i64::MAX]).unwrap(),
        ];
        events.push(e);
        let mut e = event("origin without a registry version", -1.5e-40);
        Arc::make_mut(&mut e.model).origin = Some(Origin {
            source: "mlflow://m/1".into(),
            registry_version: None,
        });
        e.client = None;
        e.timestamp = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        events.push(e);
        for event in &events {
            for detail in [
                Detail::Capped(0),
                Detail::Capped(16),
                Detail::Capped(1 << 20),
                Detail::Digests,
                Detail::Omitted,
            ] {
                let mut out = b"before".to_vec();
                serialize_into(&mut out, event, GENESIS, detail);
                assert_eq!(
                    String::from_utf8(out[6..].to_vec()).unwrap(),
                    String::from_utf8(reference::line(event, GENESIS, detail)).unwrap()
                );
            }
        }
    }

    #[test]
    fn the_writer_gathers_records_no_longer_than_a_quarter_of_its_queue_takes_to_fill() {
        let ms = Duration::from_millis;
        // Idle, or a trickle: the full pause.
        assert_eq!(gather_pause(0, ms(4), 4096), GATHER);
        assert_eq!(gather_pause(10, ms(5), 4096), GATHER);
        // 40k records/s (160 in 4 ms): a quarter of the default queue takes 25 ms.
        assert_eq!(gather_pause(160, ms(4), 4096), GATHER);
        // A queue of 16: 4 records take 100 us at that rate.
        assert_eq!(gather_pause(160, ms(4), 16), Duration::from_micros(100));
        assert_eq!(gather_pause(1, ms(1), 1), ms(1));
        assert_eq!(gather_pause(u64::MAX, ms(1), 4096), Duration::ZERO);
        assert_eq!(gather_pause(1, Duration::MAX / 2, usize::MAX), GATHER);
    }

    #[test]
    fn after_an_idle_spell_the_writer_counts_the_rate_from_the_first_record() {
        let us = Duration::from_micros;
        let t0 = Instant::now();
        // Ten idle seconds, then one record, written in 5 us, and the queue is empty again.
        let mut arrivals = Arrivals::new(t0);
        arrivals.restart(t0 + Duration::from_secs(10));
        arrivals.took();
        let drained = t0 + Duration::from_secs(10) + us(5);
        // A queue of 16: a quarter (4 records) at one record per 5 us, not the full pause
        // that counting from before the wait gave.
        assert_eq!(arrivals.pause(drained, 16), us(20));
        assert_eq!(
            gather_pause(1, drained - t0, 16),
            GATHER,
            "the count from before the wait"
        );
        // The default queue: the full pause either way.
        assert_eq!(arrivals.pause(drained, 4096), GATHER);
        // Under load, no waiting: 160 records over the 4 ms since the last pause.
        let mut arrivals = Arrivals::new(t0);
        for _ in 0..160 {
            arrivals.took();
        }
        assert_eq!(arrivals.pause(t0 + Duration::from_millis(4), 16), us(100));
        arrivals.restart(t0 + Duration::from_millis(4));
        assert_eq!(arrivals.taken, 0);
    }

    #[test]
    fn under_load_the_writer_counts_the_rate_over_its_pause_and_the_drain_after_it() {
        let us = Duration::from_micros;
        let t0 = Instant::now();
        let mut arrivals = Arrivals::new(t0);
        // 70k records/s, the default queue (4096): a quarter fills in 14.6 ms, more than the
        // longest pause.
        let mut drained = t0;
        for _ in 0..3 {
            assert_eq!(arrivals.gather(drained, 4096), GATHER);
            // What came during the 4 ms pause, written in 280 us (1 us each), while 20 more
            // came.
            for _ in 0..300 {
                arrivals.took();
            }
            drained += GATHER + us(280);
        }
        // Counted from the pause's end instead: 300 records in 280 us, the writer's speed.
        assert_eq!(
            gather_pause(300, us(280), 4096),
            Duration::from_nanos(955_733)
        );
        // A queue of 64 at that rate: a quarter (16 records) comes in 228 us, the pause.
        let mut arrivals = Arrivals::new(t0);
        arrivals.gather(t0, 64);
        for _ in 0..300 {
            arrivals.took();
        }
        assert_eq!(
            arrivals.gather(t0 + us(4280), 64),
            Duration::from_nanos(228_266)
        );
    }

    fn prepared(event: &Event, cap: usize, max_record: usize) -> Prepared {
        let (head, sha) = prepare(event, cap, max_record);
        Prepared {
            head,
            sha,
            _held: None,
        }
    }

    #[test]
    fn a_record_prepared_on_the_request_path_is_the_one_the_writer_would_encode() {
        let mut small = event("small", 1.0);
        small.error = Some("e\"".repeat(40));
        let mut big = event("big", 2.0);
        big.inputs
            .push(Tensor::from_vec("x2", vec![1000], vec![0.5f32; 1000]).unwrap());
        let odd = prev_odd();
        for e in [event("plain", 3.0), small, big] {
            // The whole record, its tensors as digests, then without them: each cap is what
            // one of them needs (the line but its `,"hash":"<64 hex>"` and newline: 75
            // bytes), or one byte less.
            let needs = |cap| encode(&e, GENESIS, cap, 1 << 20).0.len() - 75;
            let (full, digests) = (needs(1 << 20), needs(0));
            assert_eq!(encode(&e, GENESIS, 1 << 20, full).0.len() - 75, full);
            assert!(encode(&e, GENESIS, 1 << 20, full - 1).0.len() - 75 < full);
            for max_record in [1 << 20, full, full - 1, digests, digests - 1, 10] {
                for cap in [0, 8, 64, 1 << 20] {
                    for prev in [GENESIS, &"ab".repeat(32), odd.as_str()] {
                        let (line, hash) = encode(&e, prev, cap, max_record);
                        let mut out = b"pending".to_vec();
                        let p = prepared(&e, cap, max_record);
                        let chained = chain_into(&mut out, &p.head, p.sha, prev);
                        assert_eq!(
                            String::from_utf8(out[7..].to_vec()).unwrap(),
                            String::from_utf8(line).unwrap()
                        );
                        assert_eq!(chained, hash);
                    }
                }
            }
        }
        // A head's first capacity follows the last one's length on this thread.
        let e = event("again", 1.0);
        let (head, _) = prepare(&e, 64, 1 << 20);
        assert_eq!(HEAD_BYTES.get(), head.len());
        let (next, _) = prepare(&e, 64, 1 << 20);
        assert_eq!(next.len(), head.len());
        assert!(next.capacity() >= head.len());
    }

    #[tokio::test]
    async fn small_records_are_encoded_on_the_request_path_and_large_ones_by_the_writer() {
        let (tx, mut rx) = mpsc::channel(4);
        let log = InferenceLog {
            tx,
            max_tensor_bytes: 64,
            max_record_bytes: 1 << 20,
            on_full: OnFull::Block,
            on_error: OnError::Serve,
            counters: Arc::default(),
        };
        // event(): 108 bytes of tensors; PREPARE_MAX_TENSOR_BYTES of them still qualify.
        let small = event("small", 1.0);
        let mut edge = event("edge", 1.0);
        let fill = (PREPARE_MAX_TENSOR_BYTES - 108) / 4;
        edge.inputs
            .push(Tensor::from_vec("fill", vec![fill], vec![0f32; fill]).unwrap());
        let mut large = edge.clone();
        large
            .inputs
            .push(Tensor::from_vec("one", vec![1], vec![0u8]).unwrap());
        for e in [&small, &edge] {
            log.record(e.clone()).await;
            match rx.try_recv() {
                Ok(Message::Prepared(p)) => {
                    let mut out = Vec::new();
                    chain_into(&mut out, &p.head, p.sha, GENESIS);
                    assert_eq!(out, encode(e, GENESIS, 64, 1 << 20).0);
                }
                _ => panic!("{} was not prepared", e.request_id),
            }
        }
        log.record(large).await;
        assert!(matches!(rx.try_recv(), Ok(Message::Record(e)) if e.request_id == "edge"));
        // What pipeline::handle passes: the id and the outputs borrowed from the response.
        let id = String::from("borrowed");
        let outputs = edge.inputs.clone();
        let borrowed = Event {
            request_id: Cow::Borrowed(&id),
            outputs: Cow::Borrowed(&outputs),
            ..event("", 1.0)
        };
        let expected = encode(&borrowed, GENESIS, 64, 1 << 20).0;
        log.record(borrowed.clone()).await;
        match rx.try_recv() {
            Ok(Message::Prepared(p)) => {
                let mut out = Vec::new();
                chain_into(&mut out, &p.head, p.sha, GENESIS);
                assert_eq!(out, expected);
            }
            _ => panic!("the borrowed event was not prepared"),
        }
        let mut owned_outputs = outputs.clone();
        owned_outputs.push(Tensor::from_vec("more", vec![100], vec![0u8; 100]).unwrap());
        log.record(Event {
            outputs: Cow::Borrowed(&owned_outputs),
            ..borrowed
        })
        .await;
        match rx.try_recv() {
            Ok(Message::Record(e)) => {
                assert!(matches!(e.request_id, Cow::Owned(ref id) if id == "borrowed"));
                assert!(matches!(e.outputs, Cow::Owned(ref o) if *o == owned_outputs));
            }
            _ => panic!("the large borrowed event was not queued for the writer"),
        }
    }

    /// A `prev_hash` that needs escaping (a tampered file's last hash is read as it is).
    fn prev_odd() -> String {
        "\"quoted\\".to_string()
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
        let ok = verify(std::slice::from_ref(&path), &[]).unwrap();
        assert_eq!((ok.records, ok.last_hash.as_str()), (3, prev.as_str()));
        // One byte changed in the middle record.
        let at = text.find("\"r1\"").unwrap() + 2;
        let mut bytes = text.clone().into_bytes();
        bytes[at] = b'7';
        std::fs::write(&path, &bytes).unwrap();
        let e = verify(std::slice::from_ref(&path), &[]).unwrap_err();
        assert!(
            e.contains("log.jsonl:2: broken record (request_id r7)"),
            "{e}"
        );
        // A record removed.
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let e = verify(std::slice::from_ref(&path), &[]).unwrap_err();
        assert!(
            e.contains("log.jsonl:2: broken chain at request_id r2"),
            "{e}"
        );
        std::fs::write(&path, &text).unwrap();
        assert_eq!(find(std::slice::from_ref(&path), "r2").unwrap().len(), 1);
        // A multi-byte character where the hash suffix should start is a broken record, not a
        // panic.
        std::fs::write(&path, format!("{}{}\n", "é".repeat(40), "x")).unwrap();
        assert!(verify(std::slice::from_ref(&path), &[]).is_err());
        // A torn last record (a crash mid-write) is cut off and the chain resumes.
        std::fs::write(&path, format!("{text}{{\"format\":1,\"request_id\":\"torn")).unwrap();
        drop_torn_tail(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(last_hash(&path).as_deref(), Some(prev.as_str()));
    }

    /// A private key made by `openssl genpkey -algorithm ed25519`, and its public key from
    /// `openssl pkey -pubout`; `openssl pkey -pubin -outform DER | sha256sum` starts with the id.
    const OPENSSL_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIAYpyVMnF5IMrVFBTnQ4sUfG5zIj5lA+Sq944syhl8Yf\n\
        -----END PRIVATE KEY-----\n";
    const OPENSSL_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEAe6rlHCUR7hDYZDBWrKbosFbEckigAMimeeuDDyo8OTM=\n\
        -----END PUBLIC KEY-----\n";
    const OPENSSL_KEY_ID: &str = "fac51a7ef2002549";

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("oxinfer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn openssl_keys(dir: &Path) -> (SigningKey, PublicKey) {
        std::fs::write(dir.join("k.pem"), OPENSSL_PRIVATE).unwrap();
        std::fs::write(dir.join("k.pub.pem"), OPENSSL_PUBLIC).unwrap();
        (
            SigningKey::load(&dir.join("k.pem")).unwrap(),
            PublicKey::load(&dir.join("k.pub.pem")).unwrap(),
        )
    }

    /// `n` records after `prev`, as text; returns the text and the last hash.
    fn records(from: usize, n: usize, prev: &str) -> (String, String) {
        let (mut text, mut prev) = (String::new(), prev.to_string());
        for i in from..from + n {
            let (line, hash) = encode(&event(&format!("r{i}"), i as f32), &prev, 64, 1 << 20);
            text.push_str(std::str::from_utf8(&line).unwrap());
            prev = hash;
        }
        (text, prev)
    }

    /// A checkpoint covering `n` records, as the writer makes it (`unverified` for a recovered
    /// one).
    fn checkpoint_line(key: &SigningKey, head: &str, n: u64, reason: Reason) -> (String, String) {
        let (records, unverified) = match reason {
            Reason::Recovered => (0, n),
            _ => (n, 0),
        };
        let (line, hash) =
            encode_checkpoint(key, head, records, unverified, reason, SystemTime::now());
        (String::from_utf8(line).unwrap(), hash)
    }

    /// A checkpoint in the first format (no `unverified`, signed text `/1`), as earlier versions
    /// wrote it.
    fn checkpoint_line_v1(key: &SigningKey, head: &str, n: u64, reason: &str) -> (String, String) {
        let ts = "2026-01-01T00:00:00Z";
        let signature = key.sign_hex(&signing::checkpoint_message_v1(head, n, ts, reason));
        let body = format!(
            "{{\"format\":1,\"checkpoint\":{{\"reason\":\"{reason}\",\"records\":{n},\
             \"head\":\"{head}\",\"key_id\":\"{}\",\"signature\":\"{signature}\"}},\
             \"timestamp\":\"{ts}\",\"prev_hash\":\"{head}\"}}",
            key.id()
        );
        let (line, hash) = seal(body.into_bytes());
        (String::from_utf8(line).unwrap(), hash)
    }

    /// `text` with `edit` applied to line `from` (0-based) and the chain re-hashed from there,
    /// as someone who can write the file can do (the chain is not keyed).
    fn rewrite(text: &str, from: usize, edit: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        let mut prev: Option<String> = None;
        for (ix, line) in text.lines().enumerate() {
            if ix < from {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let (mut body, _) = split_hash(line).unwrap();
            if ix == from {
                body = edit(&body);
            }
            if let Some(prev) = &prev {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let old = v["prev_hash"].as_str().unwrap();
                body = body.replace(
                    &format!("\"head\":\"{old}\""),
                    &format!("\"head\":\"{prev}\""),
                );
                body = body.replace(
                    &format!("\"prev_hash\":\"{old}\""),
                    &format!("\"prev_hash\":\"{prev}\""),
                );
            }
            let (line, hash) = seal(body.into_bytes());
            out.push_str(std::str::from_utf8(&line).unwrap());
            prev = Some(hash);
        }
        out
    }

    #[test]
    fn keys_interoperate_with_openssl_and_keygen() {
        let dir = temp_dir("keys");
        let (private, public) = openssl_keys(&dir);
        assert_eq!(private.id(), OPENSSL_KEY_ID);
        assert_eq!(public.id(), OPENSSL_KEY_ID);
        assert_eq!(private.public_key(), public);
        let message = checkpoint_message(
            GENESIS,
            0,
            0,
            OPENSSL_KEY_ID,
            "2026-01-01T00:00:00Z",
            "shutdown",
        );
        assert_eq!(
            std::str::from_utf8(&message).unwrap(),
            format!(
                "oxinfer-inference-log-checkpoint/2 head={GENESIS} records=0 unverified=0 \
                 key_id={OPENSSL_KEY_ID} timestamp=2026-01-01T00:00:00Z reason=shutdown"
            )
        );
        let signature = private.sign_hex(&message);
        assert_eq!(signature.len(), 128);
        assert!(public.verify_hex(&message, &signature));
        assert!(!public.verify_hex(b"something else", &signature));
        assert!(!public.verify_hex(&message, "zz"));
        // keygen: a pair that loads, the private key 0600, nothing overwritten.
        let made = keygen(&dir.join("new.pem"), &dir.join("pub/new.pub.pem")).unwrap();
        let loaded = SigningKey::load(&dir.join("new.pem")).unwrap();
        assert_eq!(loaded.public_key(), made);
        assert_eq!(PublicKey::load(&dir.join("pub/new.pub.pem")).unwrap(), made);
        assert_ne!(made.id(), OPENSSL_KEY_ID);
        #[cfg(unix)]
        assert_eq!(loose_permissions(&dir.join("new.pem")), None);
        let e = keygen(&dir.join("new.pem"), &dir.join("other.pub.pem")).unwrap_err();
        assert!(e.contains("already exists"), "{e}");
        // Bad keys: the path and the reason.
        let e = SigningKey::load(&dir.join("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem: cannot read it"), "{e}");
        let e = SigningKey::load(&dir.join("k.pub.pem")).unwrap_err();
        assert!(e.contains("k.pub.pem: not an Ed25519 private key"), "{e}");
        let e = PublicKey::load(&dir.join("k.pem")).unwrap_err();
        assert!(e.contains("k.pem: not an Ed25519 public key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checkpoints_sign_the_head_and_verify_counts_the_unsigned_tail() {
        let dir = temp_dir("checkpoints");
        let (key, public) = openssl_keys(&dir);
        let path = dir.join("log.jsonl");
        let (first, head) = records(0, 3, GENESIS);
        let (cp, after) = checkpoint_line(&key, &head, 3, Reason::Records);
        let (tail, last) = records(3, 2, &after);
        let v: serde_json::Value = serde_json::from_str(&cp).unwrap();
        assert_eq!(v["checkpoint"]["head"], head.as_str());
        assert_eq!(v["prev_hash"], head.as_str());
        assert_eq!(v["checkpoint"]["records"], 3);
        assert_eq!(v["checkpoint"]["unverified"], 0);
        assert_eq!(v["checkpoint"]["key_id"], OPENSSL_KEY_ID);
        assert_eq!(v["checkpoint"]["reason"], "records");
        assert_eq!(
            checkpoint_reason(cp.trim_end()),
            Some(Some(Reason::Records))
        );
        assert_eq!(checkpoint_reason(first.lines().next().unwrap()), None);
        std::fs::write(&path, format!("{first}{cp}{tail}")).unwrap();
        let files = std::slice::from_ref(&path);
        // Without keys: chained, not checked.
        let ok = verify(files, &[]).unwrap();
        assert_eq!((ok.records, ok.checkpoints, ok.unsigned_tail), (5, 1, 2));
        assert!(!ok.signatures_checked);
        assert_eq!(ok.last_hash, last);
        // With the key: checked; two records after the checkpoint are not signed.
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert!(ok.signatures_checked);
        assert_eq!(ok.unsigned_tail, 2);
        let cp_at = ok.last_checkpoint.unwrap();
        assert_eq!((cp_at.reason, cp_at.records), (Reason::Records, 3));
        assert!(cp_at.at.ends_with("log.jsonl:4"), "{}", cp_at.at);
        // A final checkpoint covers everything.
        let (end, _) = checkpoint_line(&key, &last, 2, Reason::Shutdown);
        std::fs::write(&path, format!("{first}{cp}{tail}{end}")).unwrap();
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert_eq!((ok.checkpoints, ok.unsigned_tail), (2, 0));
        assert_eq!(ok.last_checkpoint.unwrap().reason, Reason::Shutdown);
        // The tail cut with its checkpoint: a valid chain, two unsigned records.
        std::fs::write(&path, format!("{first}{cp}{tail}")).unwrap();
        assert_eq!(
            verify(files, std::slice::from_ref(&public))
                .unwrap()
                .unsigned_tail,
            2
        );
        // No checkpoint at all: every record unsigned.
        std::fs::write(&path, &first).unwrap();
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert_eq!((ok.checkpoints, ok.unsigned_tail), (0, 3));
        assert!(ok.last_checkpoint.is_none());
        // Another key: refused, naming both ids.
        let other = SigningKey::generate().unwrap().public_key();
        std::fs::write(&path, format!("{first}{cp}{tail}{end}")).unwrap();
        let e = verify(files, std::slice::from_ref(&other)).unwrap_err();
        assert!(
            e.contains(&format!("checkpoint signed by key {OPENSSL_KEY_ID}"))
                && e.contains(other.id()),
            "{e}"
        );
        // Either of several keys will do.
        let both = verify(files, &[other, public.clone()]).unwrap();
        assert_eq!(both.key_ids, [OPENSSL_KEY_ID]);
        // A signature changed and the record re-hashed: the chain holds, the signature fails.
        let rehash = |line: &str| {
            let (body, _) = split_hash(line.trim_end()).unwrap();
            String::from_utf8(seal(body.into_bytes()).0).unwrap()
        };
        let sig = v["checkpoint"]["signature"].as_str().unwrap();
        let flipped = format!(
            "{}{}",
            if sig.starts_with('0') { "1" } else { "0" },
            &sig[1..]
        );
        let forged = rehash(&cp.replace(sig, &flipped));
        let (tail2, _) = records(3, 2, split_hash(forged.trim_end()).unwrap().1);
        std::fs::write(&path, format!("{first}{forged}{tail2}")).unwrap();
        assert!(verify(files, &[]).is_ok(), "the chain itself is intact");
        let e = verify(files, std::slice::from_ref(&public)).unwrap_err();
        assert!(e.contains("log.jsonl:4: bad checkpoint signature"), "{e}");
        // A record before the checkpoint changed and everything re-hashed: the head no longer
        // matches what was signed.
        let (altered, altered_head) = records(10, 3, GENESIS);
        let moved = rehash(&cp.replace(&head, &altered_head));
        std::fs::write(&path, format!("{altered}{moved}")).unwrap();
        assert!(verify(files, &[]).is_ok());
        let e = verify(files, std::slice::from_ref(&public)).unwrap_err();
        assert!(e.contains("bad checkpoint signature"), "{e}");
        // A checkpoint whose count is wrong, or whose head is not its prev_hash.
        let (miscounted, _) = checkpoint_line(&key, &head, 2, Reason::Records);
        std::fs::write(&path, format!("{first}{miscounted}")).unwrap();
        let e = verify(files, &[]).unwrap_err();
        assert!(
            e.contains("covers 2 record(s)") && e.contains("the chain has 3"),
            "{e}"
        );
        let wrong_head = rehash(&cp.replacen(
            &format!("\"head\":\"{head}\""),
            &format!("\"head\":\"{GENESIS}\""),
            1,
        ));
        std::fs::write(&path, format!("{first}{wrong_head}")).unwrap();
        let e = verify(files, &[]).unwrap_err();
        assert!(e.contains("broken checkpoint: its head"), "{e}");
        // `show` skips checkpoints.
        std::fs::write(&path, format!("{first}{cp}{tail}{end}")).unwrap();
        assert_eq!(find(files, "r4").unwrap().len(), 1);
        // A recovered checkpoint: the records before it are counted, not vouched for.
        let (recovered, after) = checkpoint_line(&key, &last, 2, Reason::Recovered);
        let rv: serde_json::Value = serde_json::from_str(&recovered).unwrap();
        assert_eq!(rv["checkpoint"]["records"], 0);
        assert_eq!(rv["checkpoint"]["unverified"], 2);
        let (more, more_head) = records(5, 1, &after);
        let (end, _) = checkpoint_line(&key, &more_head, 1, Reason::Shutdown);
        std::fs::write(&path, format!("{first}{cp}{tail}{recovered}{more}{end}")).unwrap();
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert_eq!(
            (ok.records, ok.checkpoints, ok.unsigned_tail, ok.unvouched),
            (6, 3, 0, 2)
        );
        assert_eq!(ok.recovered.len(), 1);
        let r = &ok.recovered[0];
        assert_eq!(
            (r.reason, r.records, r.unverified),
            (Reason::Recovered, 0, 2)
        );
        assert!(r.at.ends_with("log.jsonl:7"), "{}", r.at);
        // Its counts changed (to vouch for the records) and the chain re-hashed: the
        // signature fails.
        let text = format!("{first}{cp}{tail}{recovered}{more}{end}");
        let vouched = rewrite(&text, 6, |b| {
            b.replace(
                "\"records\":0,\"unverified\":2",
                "\"records\":2,\"unverified\":0",
            )
        });
        std::fs::write(&path, &vouched).unwrap();
        assert!(verify(files, &[]).is_ok());
        let e = verify(files, std::slice::from_ref(&public)).unwrap_err();
        assert!(e.contains("log.jsonl:7: bad checkpoint signature"), "{e}");
        // Or `unverified` removed (the first format): first-format checkpoints cannot be
        // recovered ones, and a current checkpoint read as the first format fails its
        // signature.
        let stripped = rewrite(&text, 6, |b| {
            b.replace("\"records\":0,\"unverified\":2", "\"records\":2")
        });
        std::fs::write(&path, &stripped).unwrap();
        let e = verify(files, &[]).unwrap_err();
        assert!(e.contains("log.jsonl:7: malformed checkpoint"), "{e}");
        let downgraded = rewrite(&text, 3, |b| b.replace(",\"unverified\":0", ""));
        std::fs::write(&path, &downgraded).unwrap();
        assert!(verify(files, &[]).is_ok());
        let e = verify(files, std::slice::from_ref(&public)).unwrap_err();
        assert!(e.contains("log.jsonl:4: bad checkpoint signature"), "{e}");
        // Checkpoints of the first format, as earlier versions wrote them, still verify.
        let (old, old_after) = checkpoint_line_v1(&key, &head, 3, "records");
        let (tail, last) = records(3, 2, &old_after);
        let (old_end, _) = checkpoint_line_v1(&key, &last, 2, "shutdown");
        std::fs::write(&path, format!("{first}{old}{tail}{old_end}")).unwrap();
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert_eq!(
            (ok.records, ok.checkpoints, ok.unsigned_tail, ok.unvouched),
            (5, 2, 0, 0)
        );
        let (bad, _) = checkpoint_line_v1(&key, &last, 2, "interval");
        let bad = bad.replace("\"reason\":\"interval\"", "\"reason\":\"shutdown\"");
        std::fs::write(
            &path,
            rewrite(&format!("{first}{old}{tail}{bad}"), 6, |b| b.into()),
        )
        .unwrap();
        let e = verify(files, std::slice::from_ref(&public)).unwrap_err();
        assert!(e.contains("log.jsonl:7: bad checkpoint signature"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn settings(dir: &Path, key: Option<PathBuf>, every: u64) -> InferenceLogSettings {
        let text = format!(
            "[inference_log]\npath = \"audit/log.jsonl\"\ncheckpoint_records = {every}\n{}",
            key.map(|k| format!("signing_key = {:?}\n", k.display().to_string()))
                .unwrap_or_default()
        );
        oxinfer_core::Manifest::parse(&text, &dir.join("m.toml"))
            .unwrap()
            .inference_log
            .unwrap()
    }

    #[test]
    fn the_writer_signs_every_n_records_and_at_shutdown() {
        let dir = temp_dir("writer");
        let (_, public) = openssl_keys(&dir);
        let settings = settings(&dir, Some("k.pem".into()), 3);
        assert_eq!(
            settings.signing_key.as_deref(),
            Some(dir.join("k.pem").as_path())
        );
        assert_eq!(settings.checkpoint_seconds, 60);
        let path = settings.path.clone();
        let open = || {
            let key = load_signing_key(&settings).unwrap();
            Writer::open(settings.clone(), Arc::default(), key).unwrap()
        };
        let mut writer = open();
        for i in 0..7 {
            // Records encoded by the writer and on the request path, in one chain.
            let e = event(&format!("w{i}"), i as f32);
            if i % 2 == 0 {
                writer.append(Record::Event(&e));
            } else {
                writer.append(Record::Prepared(prepared(&e, 64, 1 << 20)));
            }
        }
        writer.finish();
        drop(writer);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let kinds: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                match v["checkpoint"]["reason"].as_str() {
                    Some(r) => format!("{r}:{}", v["checkpoint"]["records"]),
                    None => v["request_id"].as_str().unwrap().to_string(),
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "w0",
                "w1",
                "w2",
                "records:3",
                "w3",
                "w4",
                "w5",
                "records:3",
                "w6",
                "shutdown:1"
            ]
        );
        let files = std::slice::from_ref(&path);
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert_eq!((ok.records, ok.checkpoints, ok.unsigned_tail), (7, 3, 0));
        // A restart with nothing written adds no second shutdown checkpoint.
        open().finish();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // Records written unsigned (signing off, or a crash), then signing resumes: a recovered
        // checkpoint closes them as unverified; the server signs only what it writes.
        let mut unsigned = Writer::open(
            InferenceLogSettings {
                signing_key: None,
                ..settings.clone()
            },
            Arc::default(),
            None,
        )
        .unwrap();
        unsigned.append(Record::Event(&event("u0", 0.0)));
        unsigned.append(Record::Event(&event("u1", 0.0)));
        unsigned.finish();
        drop(unsigned);
        assert_eq!(
            verify(files, std::slice::from_ref(&public))
                .unwrap()
                .unsigned_tail,
            2
        );
        let mut writer = open();
        writer.append(Record::Event(&event("w7", 0.0)));
        writer.finish();
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        // u0, u1, a recovered checkpoint for them, w7, a shutdown checkpoint for it.
        assert_eq!(
            (ok.records, ok.checkpoints, ok.unsigned_tail, ok.unvouched),
            (10, 5, 0, 2)
        );
        assert_eq!(
            (
                ok.recovered.len(),
                ok.recovered[0].records,
                ok.recovered[0].unverified
            ),
            (1, 0, 2)
        );
        let last = ok.last_checkpoint.unwrap();
        assert_eq!((last.reason, last.records), (Reason::Shutdown, 1));
        // Rotated away: the count goes on across files.
        let mut writer = open();
        writer.append(Record::Event(&event("w8", 0.0)));
        writer.write_out();
        writer.rotate().unwrap();
        writer.append(Record::Event(&event("w9", 0.0)));
        writer.finish();
        let mut all = rotated_files(&path);
        all.push(path.clone());
        let ok = verify(&all, std::slice::from_ref(&public)).unwrap();
        assert_eq!(
            (ok.records, ok.checkpoints, ok.unsigned_tail, ok.unvouched),
            (12, 6, 0, 2)
        );
        assert_eq!(ok.last_checkpoint.unwrap().records, 2);
        // A wrong key is refused at startup with the path and the reason.
        let bad = settings_with_key(&dir, "k.pub.pem");
        let e = load_signing_key(&bad).unwrap_err().to_string();
        assert!(e.contains("k.pub.pem: not an Ed25519 private key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn settings_with_key(dir: &Path, key: &str) -> InferenceLogSettings {
        settings(dir, Some(key.into()), 3)
    }

    #[test]
    fn a_restart_after_an_unclean_stop_does_not_sign_the_tail_it_finds() {
        let dir = temp_dir("recovered");
        let (_, public) = openssl_keys(&dir);
        let settings = settings(&dir, Some("k.pem".into()), 3);
        let path = settings.path.clone();
        let files = std::slice::from_ref(&path);
        let open = || {
            let key = load_signing_key(&settings).unwrap();
            Writer::open(settings.clone(), Arc::default(), key).unwrap()
        };
        let reasons = || -> Vec<String> {
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let c = &v["checkpoint"];
                    match c["reason"].as_str() {
                        Some(r) => format!("{r}:{}+{}", c["records"], c["unverified"]),
                        None => v["request_id"].as_str().unwrap().to_string(),
                    }
                })
                .collect()
        };
        // A checkpoint after a0..a2, then a3 and a4 written and the process killed: no
        // shutdown checkpoint.
        let mut writer = open();
        for i in 0..5 {
            writer.append(Record::Event(&event(&format!("a{i}"), i as f32)));
        }
        writer.write_out();
        drop(writer);
        // Someone who can write the file rewrites a3 and re-hashes the chain after it.
        let text = std::fs::read_to_string(&path).unwrap();
        let forged = rewrite(&text, 4, |b| b.replace("\"a3\"", "\"f3\""));
        std::fs::write(&path, &forged).unwrap();
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert_eq!((ok.unsigned_tail, ok.unvouched), (2, 0));
        // The restart closes them at once as unverified: its first checkpoint signs nothing
        // it did not write.
        let mut writer = open();
        let after_open = std::fs::read_to_string(&path).unwrap();
        assert!(after_open.starts_with(&forged));
        assert_eq!(after_open.lines().count(), 7);
        writer.append(Record::Event(&event("b0", 0.0)));
        writer.finish();
        drop(writer);
        assert_eq!(
            reasons(),
            [
                "a0",
                "a1",
                "a2",
                "records:3+0",
                "f3",
                "a4",
                "recovered:0+2",
                "b0",
                "shutdown:1+0"
            ]
        );
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert_eq!(
            (ok.records, ok.checkpoints, ok.unsigned_tail, ok.unvouched),
            (6, 3, 0, 2)
        );
        assert_eq!(ok.recovered.len(), 1);
        assert!(ok.recovered[0].at.ends_with("log.jsonl:7"));
        // A clean stop, then a restart: nothing to recover.
        let clean = std::fs::read_to_string(&path).unwrap();
        open().finish();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), clean);
        // Killed right after a checkpoint: the unclean stop is still recorded, with nothing
        // unverified.
        let mut writer = open();
        for i in 1..4 {
            writer.append(Record::Event(&event(&format!("b{i}"), 0.0)));
        }
        writer.write_out();
        drop(writer);
        open().finish();
        assert_eq!(
            reasons()[9..],
            [
                "b1",
                "b2",
                "b3",
                "records:3+0",
                "recovered:0+0",
                "shutdown:0+0"
            ]
        );
        let ok = verify(files, std::slice::from_ref(&public)).unwrap();
        assert_eq!(
            (ok.records, ok.checkpoints, ok.unsigned_tail, ok.unvouched),
            (9, 6, 0, 2)
        );
        assert_eq!(ok.recovered.len(), 2);
        // Without a key, nothing is signed and nothing recovered.
        let mut unsigned = Writer::open(
            InferenceLogSettings {
                signing_key: None,
                ..settings.clone()
            },
            Arc::default(),
            None,
        )
        .unwrap();
        unsigned.append(Record::Event(&event("u0", 0.0)));
        unsigned.write_out();
        drop(unsigned);
        assert_eq!(reasons().len(), 16);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_are_written_at_once_and_synced_within_the_interval() {
        let dir = temp_dir("sync");
        let settings = settings(&dir, None, 1000);
        assert_eq!(settings.sync_interval_ms, 100);
        let mut writer = Writer::open(settings.clone(), Arc::default(), None).unwrap();
        writer.last_sync = Instant::now();
        writer.append(Record::Event(&event("a", 0.0)));
        writer.drained();
        // In the file (a crash of the process loses nothing), not yet synced to the disk.
        assert_eq!(
            std::fs::read_to_string(&settings.path)
                .unwrap()
                .lines()
                .count(),
            1
        );
        assert!(!writer.synced);
        writer.last_sync -= Duration::from_millis(150);
        writer.tick();
        assert!(writer.synced, "synced once the interval passed");
        // sync_interval_ms = 0: synced every time the queue drains.
        let mut eager = Writer::open(
            InferenceLogSettings {
                sync_interval_ms: 0,
                ..settings.clone()
            },
            Arc::default(),
            None,
        )
        .unwrap();
        eager.append(Record::Event(&event("b", 0.0)));
        eager.drained();
        assert!(eager.synced);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_checkpoint_is_due_after_the_interval_only_with_new_records() {
        let dir = temp_dir("interval");
        openssl_keys(&dir);
        let settings = settings(&dir, Some("k.pem".into()), 1000);
        let key = load_signing_key(&settings).unwrap();
        let mut writer = Writer::open(settings.clone(), Arc::default(), key).unwrap();
        // A tick writes out what is pending (and syncs when the interval has passed).
        let written = || std::fs::read_to_string(&settings.path).unwrap_or_default();
        writer.tick();
        assert!(written().is_empty(), "nothing written, no checkpoint");
        writer.append(Record::Event(&event("a", 0.0)));
        writer.tick();
        assert_eq!(written().lines().count(), 1);
        assert!(writer.pending.is_empty());
        // Pretend the interval passed since the record.
        let c = writer.checkpoints.as_mut().unwrap();
        c.oldest_unsigned = c.oldest_unsigned.map(|t| t - Duration::from_secs(61));
        writer.tick();
        writer.tick();
        let text = written();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            checkpoint_reason(text.lines().nth(1).unwrap()),
            Some(Some(Reason::Interval))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
