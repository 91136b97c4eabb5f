//! The per-model request scheduler: a bounded queue, worker threads (one per model instance),
//! dynamic batching, queue deadlines and cancellation.
//!
//! Requests are validated on the async side and submitted as [`Job`]s. Each model has its own
//! queue and `instances` worker threads that pull from it and call [`Model::execute`]; the
//! async side awaits the reply on a oneshot channel, so an async thread does not block on a
//! model (the one exception, bounded: inline execution, below).
//!
//! - **Workers start with the first queued job** (a model's first request is always queued:
//!   inline execution needs a recent execution time), not when the model loads: a model not
//!   called yet has no thread. A thread per model at load was 1,000 threads for 1,000 small
//!   models (each with its stack, allocator state and kernel task, and counted against a
//!   container's `pids.max`): 79 MiB of RSS and 207 ms to load them all, against 56 MiB and
//!   100 ms now. The async thread that queues the first job starts them (tens of microseconds
//!   per thread, counted in that job's queue time). A worker that cannot be started leaves its
//!   instance for the next queued job to try again; when no worker runs at all, the queued jobs
//!   are answered with [`Error::Unavailable`] instead of waiting for one.
//!
//! - **Backpressure**: the queue holds at most `max_queue_size` jobs; [`Scheduler::submit`]
//!   refuses more at once with [`Error::Overloaded`] (HTTP 503, gRPC `UNAVAILABLE`).
//! - **Deadlines**: a job carries the request's deadline (its `timeout` parameter, else the
//!   model's `default_timeout_us`). The request is answered with [`Error::DeadlineExceeded`]
//!   at its deadline if it is still queued then ([`Ticket::outcome`] takes it out of the queue,
//!   so it is never executed and its slot is free at once); a worker that reaches an expired
//!   job first answers it the same way. A job a worker has taken, to run or to gather into a
//!   batch (at most `max_queue_delay_us`), is answered by the worker: a running one runs to the
//!   end (as in Triton).
//! - **Inline execution**: a request that would wait for nobody runs on the async thread that
//!   received it, without the hand-off to a worker thread and back (two thread wake-ups, most
//!   of a tiny model's latency): only for a model that may run on any thread
//!   ([`Model::runs_on_any_thread`]), without dynamic batching, when the caller says the inputs
//!   are small ([`Inline`]), the queue is empty, the first instance is idle (its worker and an
//!   inline run take turns on a lock, so an instance never runs two executions at once), and
//!   the model's recent executions were fast: under [`INLINE_BELOW`] when the server has no
//!   other request in flight, under [`INLINE_BELOW_CONCURRENT`] when it has (the async thread
//!   is then held while other connections may wait on it, so only for a few tens of
//!   microseconds, within what tokio asks of a task between two yields). A request that finds
//!   the instance busy waits for it, spinning, for up to twice the model's recent execution
//!   time ([`INLINE_WAIT_MAX`] at most): at c=16 on a tiny model, that took the futex calls
//!   per request from about 0.4 to 0.1-0.15. It goes to the workers when the wait runs out,
//!   and behind them when others are queued.
//! - **Cancellation**: when a client goes away, the front end drops the future that awaits the
//!   reply, which closes the channel; a worker that reaches such a job drops it unexecuted.
//! - **Dynamic batching** (`max_batch_size > 0`, models whose inputs and outputs all have a
//!   dynamic first dimension): a worker takes the oldest job, then every queued job whose
//!   inputs have the same trailing dimensions, up to `max_batch_size` rows. It runs the batch
//!   at once when it is full or reaches a preferred size, and otherwise waits for more until
//!   the oldest job has waited `max_queue_delay_us`. Jobs with other shapes stay queued for
//!   their own batch: shapes are never mixed. The inputs are concatenated along the first
//!   dimension, executed once, and each output is split back by each job's row count
//!   (zero-copy for fixed-size data).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use oxinfer_core::{Error, ErrorCode, Model, Result, Scheduling, Tensor};
use tokio::sync::oneshot;

use crate::telemetry::ModelTelemetry;

/// One request waiting for a worker.
#[derive(Debug)]
struct Job {
    /// Unique within its scheduler: how [`Ticket::outcome`] finds it in the queue. Given when
    /// the job is queued (an inline run never is).
    id: u64,
    inputs: Vec<Tensor>,
    rows: usize,
    /// The trailing dimensions of each input, when the job may be batched with others.
    key: Option<Vec<Vec<usize>>>,
    enqueued: Instant,
    deadline: Option<Instant>,
    /// The job's outputs, in the model's declaration order, or why there are none.
    reply: oneshot::Sender<Result<Vec<Tensor>>>,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Workers waiting for a job (in [`Shared::next_candidates`]): a job queued while none
    /// waits wakes nobody, since the workers look at the queue before they wait again.
    idle: usize,
    /// The instances whose worker has not started yet, with their index (module doc): all of
    /// them until a job is first queued.
    unstarted: Vec<(usize, Arc<dyn Model>)>,
    /// Workers started.
    workers: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or the scheduler closes.
    ready: Condvar,
    config: Scheduling,
    telemetry: Arc<ModelTelemetry>,
    /// The next job id.
    next_id: AtomicU64,
    /// The model, for the log.
    label: String,
    /// The first instance, for inline execution; `None` when the model may not run inline.
    inline: Option<InlineInstance>,
    /// The queue's length as of its last change, `usize::MAX` once closed ([`Shared::publish`]):
    /// what an inline run checks, without taking the queue's lock. Taking it, the I/O threads
    /// of a busy server took turns on one lock for every request (about 4% of a tiny model's
    /// server CPU time over gRPC at 16 connections).
    waiting: AtomicUsize,
    /// A worker thread failed to start (logged at error level once).
    spawn_failed: AtomicBool,
}

/// The first instance, shared by its worker and inline runs. On a cache line of its own: an
/// inline run takes `busy` and, holding it, reads and updates `recent_ns`, so the run moves
/// one line between the cores, not two (and no other field's line with it).
#[repr(align(64))]
struct InlineInstance {
    model: Arc<dyn Model>,
    /// Held by whoever executes on the instance: its worker or an inline run.
    busy: Mutex<()>,
    /// A recent execution's duration in nanoseconds, slow ones weighing at once and decaying
    /// slowly (`u64::MAX` before the first).
    recent_ns: AtomicU64,
}

/// Inline execution of a lone request only for a model whose recent executions took less
/// than this.
pub(crate) const INLINE_BELOW: Duration = Duration::from_micros(200);

/// Inline execution while other requests are in flight only for a model whose recent
/// executions took less than this.
pub(crate) const INLINE_BELOW_CONCURRENT: Duration = Duration::from_micros(50);

/// The longest an inline run waits for its instance while another execution holds it, before
/// it goes to the queue instead (module doc: inline execution).
pub(crate) const INLINE_WAIT_MAX: Duration = Duration::from_micros(20);

/// How long an inline run waits for a busy instance, given the model's recent execution time
/// in nanoseconds: twice that (the execution under way ends within about one), at most
/// [`INLINE_WAIT_MAX`].
fn inline_wait(recent_ns: u64) -> Duration {
    Duration::from_nanos(recent_ns.saturating_mul(2)).min(INLINE_WAIT_MAX)
}

/// Spins on `lock` for at most `limit`: the holder is an execution of a few microseconds, and
/// taking the lock when it ends costs less than the hand-off to a worker thread (a futex wake
/// and two context switches, which cost this machine more than the model).
fn wait_briefly(lock: &Mutex<()>, limit: Duration) -> Option<MutexGuard<'_, ()>> {
    let until = Instant::now() + limit;
    loop {
        for _ in 0..32 {
            match lock.try_lock() {
                Ok(guard) => return Some(guard),
                Err(TryLockError::Poisoned(e)) => return Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => std::hint::spin_loop(),
            }
        }
        if Instant::now() >= until {
            return None;
        }
    }
}

/// Whether the caller of [`Scheduler::submit`] lets the request run on its own thread, and
/// what else the server is doing (module doc: inline execution).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inline {
    /// Never: the inputs are large.
    No,
    /// Small inputs, and no other request in flight in the server.
    Lone,
    /// Small inputs, with other requests in flight.
    Concurrent,
}

impl Inline {
    /// The slowest recent execution that still runs inline, if any does.
    fn below(self) -> Option<Duration> {
        match self {
            Inline::No => None,
            Inline::Lone => Some(INLINE_BELOW),
            Inline::Concurrent => Some(INLINE_BELOW_CONCURRENT),
        }
    }
}

/// A submitted request's claim on its outcome ([`Scheduler::submit`]).
///
/// A queued one borrows the scheduler, whose reference count (shared by every request to the
/// model) it would otherwise move between the cores serving them.
pub(crate) enum Ticket<'a> {
    /// Executed inline (or expired before it could be): the outcome is here.
    Done(Result<Vec<Tensor>>),
    /// Queued for the workers.
    Queued(Queued<'a>),
}

/// A queued job's reply channel, and what [`Ticket::outcome`] needs to take it out of the
/// queue at its deadline.
pub(crate) struct Queued<'a> {
    receiver: oneshot::Receiver<Result<Vec<Tensor>>>,
    deadline: Option<Instant>,
    id: u64,
    shared: &'a Shared,
}

impl Ticket<'_> {
    /// The job's outputs, or why there are none. At the job's deadline, a job still in the
    /// queue is taken out and answered with [`Error::DeadlineExceeded`] then, not when a worker
    /// frees up. Dropping the future cancels a job that has not started.
    pub(crate) async fn outcome(self) -> Result<Vec<Tensor>> {
        match self {
            Ticket::Done(outcome) => outcome,
            Ticket::Queued(queued) => queued.outcome().await,
        }
    }
}

impl Queued<'_> {
    async fn outcome(mut self) -> Result<Vec<Tensor>> {
        if let Some(deadline) = self.deadline {
            match tokio::time::timeout_at(deadline.into(), &mut self.receiver).await {
                Ok(reply) => return self.shared.reply(reply),
                Err(_) => {
                    if let Some(job) = self.shared.withdraw(self.id) {
                        return Err(self.shared.expire(job.enqueued, Instant::now()));
                    }
                    // A worker has it: running, or gathering it into a batch; it answers.
                }
            }
        }
        let reply = (&mut self.receiver).await;
        self.shared.reply(reply)
    }
}

/// A model's queue and worker threads. Dropping it lets the workers finish the jobs already
/// queued and exit; they hold the model instances until then.
pub(crate) struct Scheduler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler for `instances`, one worker thread each, started when a job is first queued
    /// (module doc). With dynamic batching on in `config`, the caller has checked that the
    /// model's signature allows it.
    pub(crate) fn start(
        label: &str,
        instances: Vec<Arc<dyn Model>>,
        config: Scheduling,
        telemetry: Arc<ModelTelemetry>,
    ) -> Result<Scheduler> {
        let inline = instances
            .first()
            .filter(|m| !config.batching() && m.runs_on_any_thread())
            .map(|m| InlineInstance {
                model: m.clone(),
                busy: Mutex::new(()),
                recent_ns: AtomicU64::new(u64::MAX),
            });
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(config.max_queue_size.min(1024)),
                closed: false,
                idle: 0,
                unstarted: instances.into_iter().enumerate().collect(),
                workers: 0,
            }),
            ready: Condvar::new(),
            config,
            telemetry,
            next_id: AtomicU64::new(0),
            label: label.to_string(),
            inline,
            waiting: AtomicUsize::new(0),
            spawn_failed: AtomicBool::new(false),
        });
        Ok(Scheduler { shared })
    }

    /// Queues a validated request. `timeout` is how long it may wait to start; `None` uses the
    /// model's default timeout. Returns the ticket its outcome arrives on; dropping it cancels
    /// the job if it has not started. Refuses the job at once when the queue is full or a
    /// request has more rows than `max_batch_size`.
    ///
    /// `inline`: whether the job may be executed here, on the calling thread, before this
    /// returns (see the module doc). `now`: the time of the call, which the caller has just
    /// read (the job's queue time and deadline count from it).
    pub(crate) fn submit(
        &self,
        inputs: Vec<Tensor>,
        timeout: Option<Duration>,
        inline: Inline,
        now: Instant,
    ) -> Result<Ticket<'_>> {
        let shared = &self.shared;
        let config = &shared.config;
        let rows = inputs.first().map_or(1, Tensor::rows);
        let key = if config.batching() {
            if rows > config.max_batch_size {
                return Err(Error::invalid(format!(
                    "the request has a batch of {rows} rows; this model takes at most \
                     max_batch_size = {} per request",
                    config.max_batch_size
                )));
            }
            // Batchable when every input has the same number of rows.
            inputs
                .iter()
                .all(|t| !t.shape().is_empty() && t.rows() == rows)
                .then(|| inputs.iter().map(|t| t.shape()[1..].to_vec()).collect())
        } else {
            None
        };
        let timeout = timeout.or_else(|| {
            (config.default_timeout_us > 0)
                .then(|| Duration::from_micros(config.default_timeout_us))
        });
        let deadline = timeout.map(|t| now + t);
        // Inline, the outcome comes back from the call: no reply channel, no job id.
        let inputs = match inline.below() {
            Some(below) => match shared.run_inline(inputs, rows, now, deadline, below) {
                Ok(outcome) => return Ok(Ticket::Done(outcome)),
                Err(inputs) => inputs,
            },
            None => inputs,
        };
        let (reply, receiver) = oneshot::channel();
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            id,
            inputs,
            rows,
            key,
            enqueued: now,
            deadline,
            reply,
        };
        let ticket = Ticket::Queued(Queued {
            receiver,
            deadline,
            id,
            shared,
        });
        let wake = {
            let mut queue = lock(&shared.queue);
            if queue.jobs.len() >= config.max_queue_size {
                // Jobs nobody waits for any more (client gone, deadline passed) give way first.
                let waiting = std::mem::take(&mut queue.jobs);
                queue.jobs = waiting
                    .into_iter()
                    .filter_map(|job| shared.admit(job, now))
                    .collect();
                shared.publish(&queue);
            }
            if queue.jobs.len() >= config.max_queue_size {
                drop(queue);
                shared.telemetry.rejected.inc();
                return Err(Error::Overloaded(format!(
                    "the model's queue is full ({} requests waiting, max_queue_size); retry later",
                    config.max_queue_size
                )));
            }
            queue.jobs.push_back(job);
            shared.publish(&queue);
            shared.telemetry.queue_depth(queue.jobs.len());
            let unstarted = std::mem::take(&mut queue.unstarted);
            let wake = queue.idle > 0;
            drop(queue);
            if !unstarted.is_empty() {
                // A new worker looks at the queue before it waits: no wake-up needed for it.
                start_workers(shared, unstarted);
            }
            wake
        };
        if config.batching() {
            // A worker gathering a batch and an idle one may both want this job.
            shared.ready.notify_all();
        } else if wake {
            // A wake-up is a system call even when nobody waits: under load, a worker busy
            // with the job before this one takes this one next without it.
            shared.ready.notify_one();
        }
        Ok(ticket)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let mut queue = lock(&self.shared.queue);
        queue.closed = true;
        self.shared.publish(&queue);
        drop(queue);
        self.shared.ready.notify_all();
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // A worker never panics while holding the lock (model code runs outside it), so a
    // poisoned lock still guards a consistent queue.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Executes a request on the calling thread if it would wait for nobody and the model's
    /// recent executions took less than `below` (module doc), returning its outcome (an error
    /// if its deadline is already past, as a worker would answer); gives the inputs back
    /// otherwise.
    fn run_inline(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        enqueued: Instant,
        deadline: Option<Instant>,
        below: Duration,
    ) -> std::result::Result<Result<Vec<Tensor>>, Vec<Tensor>> {
        let Some(inline) = &self.inline else {
            return Err(inputs);
        };
        // Others queued first (or closed): behind them. A job queued just after this check
        // waits for the instance as it would behind a job queued just before.
        if self.waiting.load(Ordering::Acquire) != 0 {
            return Err(inputs);
        }
        let below = u64::try_from(below.as_nanos()).unwrap_or(u64::MAX);
        // When the instance was free at once, the job starts when it was submitted (one clock
        // read fewer per request). The recent time is read holding the lock, on its line.
        let (busy, started) = match inline.busy.try_lock() {
            Ok(busy) => (busy, enqueued),
            // Model code runs under it but never panics out of `execute` (caught there).
            Err(TryLockError::Poisoned(e)) => (e.into_inner(), enqueued),
            Err(TryLockError::WouldBlock) => {
                let recent = inline.recent_ns.load(Ordering::Relaxed);
                if recent >= below {
                    return Err(inputs);
                }
                match wait_briefly(&inline.busy, inline_wait(recent)) {
                    Some(busy) => (busy, Instant::now()),
                    None => return Err(inputs),
                }
            }
        };
        if inline.recent_ns.load(Ordering::Relaxed) >= below {
            return Err(inputs);
        }
        // A deadline already past (a `timeout` of 0) is answered as a worker would.
        if let Some(deadline) = deadline
            && started >= deadline
        {
            drop(busy);
            return Ok(Err(self.expire(enqueued, started)));
        }
        self.telemetry.queued(started - enqueued);
        let outcome = execute_counted(self, inline.model.as_ref(), inputs, rows, started);
        drop(busy);
        Ok(outcome)
    }

    /// Sets [`Shared::waiting`] from `queue`; called, under its lock, after each change.
    fn publish(&self, queue: &Queue) {
        let waiting = if queue.closed {
            usize::MAX
        } else {
            queue.jobs.len()
        };
        self.waiting.store(waiting, Ordering::Release);
    }

    /// Records how long one execution took (for inline runs: nothing to record otherwise).
    fn took(&self, took: Duration) {
        let Some(inline) = &self.inline else {
            return;
        };
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = inline
            .recent_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |recent| {
                Some(if recent == u64::MAX || ns >= recent {
                    ns
                } else {
                    recent - (recent - ns) / 8
                })
            });
    }

    /// Takes the next job (and, when batching, the jobs to run with it). `None` when the
    /// scheduler is closed and the queue is empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
        loop {
            let batch = self.next_candidates()?;
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }

    /// [`Shared::next_batch`]'s single attempt: may come back empty when every job it gathered
    /// expired or was cancelled while the batch filled.
    fn next_candidates(&self) -> Option<Vec<Job>> {
        let mut queue = lock(&self.queue);
        let first = loop {
            if let Some(job) = queue.jobs.pop_front() {
                match self.admit(job, Instant::now()) {
                    Some(job) => break job,
                    None => continue,
                }
            }
            if queue.closed {
                return None;
            }
            self.publish(&queue);
            self.telemetry.queue_depth(0);
            queue.idle += 1;
            queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            queue.idle -= 1;
        };
        let mut batch = vec![first];
        if self.config.batching() && batch[0].key.is_some() {
            queue = self.gather(queue, &mut batch);
            // Waiting for the batch to fill may have outlived a deadline or a client.
            let now = Instant::now();
            batch = batch
                .into_iter()
                .filter_map(|job| self.admit(job, now))
                .collect();
        }
        self.publish(&queue);
        self.telemetry.queue_depth(queue.jobs.len());
        Some(batch)
    }

    /// Checks a job taken off the queue: expired jobs are answered with an error, cancelled
    /// ones dropped; either way `None`.
    fn admit(&self, job: Job, now: Instant) -> Option<Job> {
        if job.reply.is_closed() {
            self.telemetry.cancelled.inc();
            return None;
        }
        if let Some(deadline) = job.deadline
            && now >= deadline
        {
            let e = self.expire(job.enqueued, now);
            let _ = job.reply.send(Err(e));
            return None;
        }
        Some(job)
    }

    /// Counts a job (queued at `enqueued`) whose deadline passed in the queue; the error that
    /// answers it.
    fn expire(&self, enqueued: Instant, now: Instant) -> Error {
        self.telemetry.expired.inc();
        let waited = now - enqueued;
        self.telemetry.queued(waited);
        Error::DeadlineExceeded(format!(
            "the request's timeout expired after {} us in the queue; it was not executed",
            waited.as_micros()
        ))
    }

    /// Takes a job out of the queue if no worker has taken it yet.
    fn withdraw(&self, id: u64) -> Option<Job> {
        let mut queue = lock(&self.queue);
        let position = queue.jobs.iter().position(|j| j.id == id)?;
        let job = queue.jobs.remove(position);
        self.publish(&queue);
        self.telemetry.queue_depth(queue.jobs.len());
        job
    }

    /// A reply as the request's outcome (a closed channel means a worker thread died).
    fn reply(
        &self,
        reply: std::result::Result<Result<Vec<Tensor>>, oneshot::error::RecvError>,
    ) -> Result<Vec<Tensor>> {
        reply.unwrap_or_else(|_| {
            tracing::error!(model = %self.label, "a model worker stopped");
            Err(Error::Internal(
                "the model's worker stopped while executing the request".into(),
            ))
        })
    }

    /// Adds compatible queued jobs to `batch` until it is full, reaches a preferred size, or
    /// the oldest job has waited `max_queue_delay_us`.
    fn gather<'a>(
        &'a self,
        mut queue: MutexGuard<'a, Queue>,
        batch: &mut Vec<Job>,
    ) -> MutexGuard<'a, Queue> {
        let max = self.config.max_batch_size;
        let window = batch[0].enqueued + Duration::from_micros(self.config.max_queue_delay_us);
        let mut rows = batch[0].rows;
        loop {
            let mut i = 0;
            while i < queue.jobs.len() && rows < max {
                let job = &queue.jobs[i];
                if job.key == batch[0].key && rows + job.rows <= max {
                    let job = queue.jobs.remove(i).expect("index in range");
                    if let Some(job) = self.admit(job, Instant::now()) {
                        rows += job.rows;
                        batch.push(job);
                    }
                } else {
                    i += 1;
                }
            }
            let now = Instant::now();
            if rows >= max
                || self.config.preferred_batch_sizes.contains(&rows)
                || now >= window
                || queue.closed
            {
                return queue;
            }
            queue = self
                .ready
                .wait_timeout(queue, window - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Starts a worker thread for each of `unstarted` (taken out of the queue's). One that fails
/// to start goes back with those after it, for the next queued job to try again; if then no
/// worker runs, the queued jobs are answered with the error, since none would take them.
// Once per model: kept out of `submit`'s code, which runs for every request.
#[cold]
#[inline(never)]
fn start_workers(shared: &Arc<Shared>, unstarted: Vec<(usize, Arc<dyn Model>)>) {
    start_workers_with(shared, unstarted, |name, body| {
        std::thread::Builder::new().name(name).spawn(body).map(drop)
    });
}

/// A worker's body, for [`start_workers_with`]'s `spawn`.
type WorkerBody = Box<dyn FnOnce() + Send>;

/// [`start_workers`], each thread started by `spawn(name, body)`.
fn start_workers_with(
    shared: &Arc<Shared>,
    unstarted: Vec<(usize, Arc<dyn Model>)>,
    spawn: impl Fn(String, WorkerBody) -> std::io::Result<()>,
) {
    let mut instances = unstarted.into_iter();
    while let Some((i, model)) = instances.next() {
        let for_worker = shared.clone();
        let instance = model.clone();
        let spawned = spawn(
            format!("oxinfer-{}-{i}", shared.label),
            Box::new(move || {
                // The first worker takes turns with inline runs on its instance.
                let busy = if i == 0 {
                    for_worker.inline.as_ref().map(|inline| &inline.busy)
                } else {
                    None
                };
                worker(&for_worker, instance.as_ref(), busy);
                // The scheduler is closed (the model unloaded, or the server stopping). The
                // last worker out frees what the model still held (its instances, through
                // `Shared`), then gives the C heap's free pages back: the repository's own
                // call after an unload comes before the workers have finished.
                drop(instance);
                if let Some(last) = Arc::into_inner(for_worker) {
                    drop(last);
                    crate::heap::release_free_memory();
                }
            }),
        );
        let mut queue = lock(&shared.queue);
        match spawned {
            Ok(()) => queue.workers += 1,
            Err(e) => {
                queue.unstarted.push((i, model));
                queue.unstarted.extend(instances);
                let failed = if queue.workers == 0 {
                    let jobs = std::mem::take(&mut queue.jobs);
                    shared.publish(&queue);
                    shared.telemetry.queue_depth(0);
                    jobs
                } else {
                    VecDeque::new()
                };
                drop(queue);
                let error =
                    Error::Unavailable(format!("cannot start a worker thread for the model: {e}"));
                for job in failed {
                    let _ = job.reply.send(Err(error.clone()));
                }
                // Once per scheduler at error level: every queued job tries again, and a
                // process at its thread limit would otherwise log once per request.
                if !shared.spawn_failed.swap(true, Ordering::Relaxed) {
                    tracing::error!(model = %shared.label, "cannot start a worker thread: {e}");
                } else {
                    tracing::debug!(model = %shared.label, "cannot start a worker thread: {e}");
                }
                return;
            }
        }
    }
}

/// A worker thread's loop; `busy` is the lock the first worker shares with inline runs.
fn worker(shared: &Shared, model: &dyn Model, busy: Option<&Mutex<()>>) {
    while let Some(batch) = shared.next_batch() {
        let _turn = busy.map(|b| b.lock().unwrap_or_else(|e| e.into_inner()));
        let started = Instant::now();
        for job in &batch {
            shared.telemetry.queued(started - job.enqueued);
        }
        run(shared, model, batch, started);
    }
}

/// Executes a batch (one job or several joined) and replies to each job. When a joined batch
/// fails because of the input (a 400: one request's bad string, say), each job is run again on
/// its own, so only the request at fault gets the error.
fn run(shared: &Shared, model: &dyn Model, mut batch: Vec<Job>, started: Instant) {
    if batch.len() == 1 {
        let job = batch.pop().expect("one job");
        return run_one(shared, model, job, started);
    }
    shared.telemetry.batched_executions.inc();
    let rows: Vec<usize> = batch.iter().map(|j| j.rows).collect();
    let total: usize = rows.iter().sum();
    let columns = batch[0].inputs.len();
    let mut inputs = Vec::with_capacity(columns);
    for c in 0..columns {
        // Tensor clones share their data; the copies made here are the joined buffers.
        let parts = batch.iter().map(|j| j.inputs[c].clone()).collect();
        match Tensor::concat_rows(parts) {
            Ok(t) => inputs.push(t),
            Err(e) => return fail_all(batch, &e),
        }
    }
    let (done, outputs) = execute(shared, model, inputs, started, Instant::now());
    let outputs = match outputs {
        Ok(outputs) => outputs,
        Err(e) if e.code() == ErrorCode::InvalidArgument => {
            for job in batch {
                run_one(shared, model, job, Instant::now());
            }
            return;
        }
        Err(e) => return fail_all(batch, &e),
    };
    shared.telemetry.executed(total as u64, done);
    // Each job's inputs (and with them the request body or message they are views of) are
    // dropped before its answer is sent: the front end encodes the response as soon as it is
    // woken, and a request still held while its response is encoded would count one payload
    // more in the server's memory high-water mark.
    // Split every output back by each job's rows: per job, one tensor per output.
    let mut per_job: Vec<Vec<Tensor>> = (0..batch.len())
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        match output.split_rows(&rows) {
            Ok(pieces) => {
                for (job_outputs, piece) in per_job.iter_mut().zip(pieces) {
                    job_outputs.push(piece);
                }
            }
            Err(e) => return fail_all(batch, &e),
        }
    }
    for (job, outputs) in batch.into_iter().zip(per_job) {
        let Job { reply, inputs, .. } = job;
        drop(inputs);
        let _ = reply.send(Ok(outputs));
    }
}

/// One `Model::execute`, timed from `executing` (the compute time from `started`, which for a
/// joined batch is before the join); a panic becomes an error, and so does a wrong output
/// count. Returns when the execution ended with the outcome.
fn execute(
    shared: &Shared,
    model: &dyn Model,
    inputs: Vec<Tensor>,
    started: Instant,
    executing: Instant,
) -> (Instant, Result<Vec<Tensor>>) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.execute(inputs)))
        .unwrap_or_else(|_| {
            Err(Error::Internal(
                "the model panicked while executing the request".into(),
            ))
        });
    let done = Instant::now();
    shared.took(done - executing);
    shared.telemetry.computed(done - started);
    let declared = model.signature().outputs.len();
    let result = result.and_then(|outputs| {
        if outputs.len() != declared {
            return Err(Error::Internal(format!(
                "the model returned {} outputs but declares {declared}",
                outputs.len()
            )));
        }
        Ok(outputs)
    });
    (done, result)
}

/// Executes one job on its own. Its inputs are moved into the model, which drops them when it
/// no longer needs them, so they (and the request body or message they are views of) are gone
/// before the answer is sent: the front end encodes the response as soon as it is woken, and a
/// request still held then would count one payload more in the memory high-water mark.
fn run_one(shared: &Shared, model: &dyn Model, job: Job, started: Instant) {
    let Job {
        reply,
        inputs,
        rows,
        ..
    } = job;
    let _ = reply.send(execute_counted(shared, model, inputs, rows, started));
}

/// [`execute`] of one job, whose execution starts when it does (`started`), counted as an
/// execution of `rows` inferences when it succeeds.
fn execute_counted(
    shared: &Shared,
    model: &dyn Model,
    inputs: Vec<Tensor>,
    rows: usize,
    started: Instant,
) -> Result<Vec<Tensor>> {
    let (done, outcome) = execute(shared, model, inputs, started, started);
    if outcome.is_ok() {
        shared.telemetry.executed(rows as u64, done);
    }
    outcome
}

fn fail_all(batch: Vec<Job>, error: &Error) {
    for job in batch {
        let _ = job.reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxinfer_core::ModelSignature;

    /// A model that records the thread each execution runs on.
    struct Where {
        signature: ModelSignature,
        threads: Mutex<Vec<String>>,
    }

    impl Model for Where {
        fn signature(&self) -> &ModelSignature {
            &self.signature
        }
        fn runs_on_any_thread(&self) -> bool {
            true
        }
        fn execute(&self, _: Vec<Tensor>) -> Result<Vec<Tensor>> {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            self.threads.lock().unwrap().push(thread);
            Ok(Vec::new())
        }
    }

    /// A scheduler labelled `label` with one [`Where`] instance, whose recent executions took
    /// `recent`.
    fn started(label: &str, recent: Duration) -> (Arc<Where>, Scheduler) {
        started_with(label, recent, 1)
    }

    /// [`started`] with `instances` instances (of one shared [`Where`]).
    fn started_with(label: &str, recent: Duration, instances: usize) -> (Arc<Where>, Scheduler) {
        let model = Arc::new(Where {
            signature: ModelSignature {
                inputs: Vec::new(),
                outputs: Vec::new(),
            },
            threads: Mutex::default(),
        });
        let scheduler = Scheduler::start(
            label,
            vec![model.clone() as Arc<dyn Model>; instances],
            Scheduling::default(),
            Arc::new(ModelTelemetry::new(label, "1")),
        )
        .unwrap();
        let recent = u64::try_from(recent.as_nanos()).unwrap();
        if let Some(inline) = &scheduler.shared.inline {
            inline.recent_ns.store(recent, Ordering::Relaxed);
        }
        (model, scheduler)
    }

    /// A ticket's outcome, awaited from a thread outside any runtime.
    fn outcome(ticket: Ticket<'_>) -> Result<Vec<Tensor>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(ticket.outcome())
    }

    /// Waits for a ticket's outcome, which must be a success.
    fn wait(ticket: Ticket<'_>) {
        outcome(ticket).unwrap();
    }

    /// Queues a job with `id` straight into `shared`'s queue, waking nobody and starting no
    /// worker (as another thread's submit would have just before); its reply comes on the
    /// receiver.
    fn queue_directly(shared: &Shared, id: u64) -> oneshot::Receiver<Result<Vec<Tensor>>> {
        let (reply, receiver) = oneshot::channel();
        let mut queue = lock(&shared.queue);
        queue.jobs.push_back(Job {
            id,
            inputs: Vec::new(),
            rows: 1,
            key: None,
            enqueued: Instant::now(),
            deadline: None,
            reply,
        });
        shared.publish(&queue);
        receiver
    }

    /// Whether one request submitted with `inline` runs on the submitting thread, when the
    /// model's recent executions took `recent`.
    fn runs_inline(inline: Inline, recent: Duration) -> bool {
        let (model, scheduler) = started("where", recent);
        wait(
            scheduler
                .submit(Vec::new(), None, inline, Instant::now())
                .unwrap(),
        );
        let threads = model.threads.lock().unwrap();
        assert_eq!(threads.len(), 1, "{threads:?}");
        !threads[0].starts_with("oxinfer-where-")
    }

    /// The worker threads named for `label` that are running now (Linux: /proc).
    fn workers_named(label: &str) -> usize {
        let prefix = format!("oxinfer-{label}-");
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with(&prefix))
            .count()
    }

    /// Waits (10 s at most) until `count(workers_named(label))` holds: a thread takes its name
    /// once it runs, and loses it when it exits.
    fn wait_for_workers(label: &str, count: impl Fn(usize) -> bool, what: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        while !count(workers_named(label)) {
            assert!(Instant::now() < until, "the workers did not {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn workers_start_with_the_first_queued_job() {
        // Recent executions were fast: an inline run needs no worker.
        let (model, scheduler) = started_with("lazy", Duration::from_micros(1), 2);
        assert_eq!(workers_named("lazy"), 0, "none at start");
        assert_eq!(lock(&scheduler.shared.queue).unstarted.len(), 2);
        wait(
            scheduler
                .submit(Vec::new(), None, Inline::Lone, Instant::now())
                .unwrap(),
        );
        assert_eq!(workers_named("lazy"), 0, "none after an inline run");
        // The first queued job starts both.
        wait(
            scheduler
                .submit(Vec::new(), None, Inline::No, Instant::now())
                .unwrap(),
        );
        let queue = lock(&scheduler.shared.queue);
        assert!(queue.unstarted.is_empty());
        assert_eq!(queue.workers, 2);
        drop(queue);
        wait_for_workers("lazy", |n| n >= 2, "start");
        assert_eq!(workers_named("lazy"), 2);
        let threads = model.threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 2, "{threads:?}");
        assert!(threads[1].starts_with("oxinfer-lazy-"), "{threads:?}");
        // Closed, they exit.
        drop(scheduler);
        wait_for_workers("lazy", |n| n == 0, "exit");
    }

    #[test]
    fn a_worker_that_cannot_start_fails_the_queued_jobs_and_is_tried_again() {
        let (model, scheduler) = started("nospawn", Duration::from_secs(1));
        let shared = &scheduler.shared;
        // Jobs queued as submit queues them, then a start that fails.
        let tickets: Vec<Ticket> = (0..3)
            .map(|_| {
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                Ticket::Queued(Queued {
                    receiver: queue_directly(shared, id),
                    deadline: None,
                    id,
                    shared,
                })
            })
            .collect();
        let unstarted = std::mem::take(&mut lock(&shared.queue).unstarted);
        start_workers_with(shared, unstarted, |_, _| {
            Err(std::io::Error::other("no threads left"))
        });
        for ticket in tickets {
            let e = outcome(ticket).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
            assert!(e.to_string().contains("no threads left"), "{e}");
        }
        assert_eq!(shared.waiting.load(Ordering::Acquire), 0);
        {
            let queue = lock(&shared.queue);
            assert_eq!((queue.unstarted.len(), queue.workers), (1, 0));
        }
        // The next queued job starts it.
        wait(
            scheduler
                .submit(Vec::new(), None, Inline::No, Instant::now())
                .unwrap(),
        );
        assert_eq!(*model.threads.lock().unwrap(), ["oxinfer-nospawn-0"]);
    }

    #[test]
    fn a_request_that_finds_the_instance_busy_goes_to_its_worker() {
        let (model, scheduler) = started("busy", Duration::from_micros(1));
        let inline = scheduler.shared.inline.as_ref().unwrap();
        // Another thread's inline run holds the instance.
        let held = inline.busy.lock().unwrap();
        let ticket = scheduler
            .submit(Vec::new(), None, Inline::Lone, Instant::now())
            .unwrap();
        assert!(model.threads.lock().unwrap().is_empty(), "not run here");
        drop(held);
        wait(ticket);
        let threads = model.threads.lock().unwrap();
        assert_eq!(*threads, ["oxinfer-busy-0"]);
    }

    #[test]
    fn a_request_does_not_run_inline_ahead_of_queued_ones() {
        let (model, scheduler) = started("behind", Duration::from_micros(1));
        let shared = &scheduler.shared;
        // The worker started (as by an earlier queued job). Once it waits for work, a job is
        // queued without waking it (as by another thread just before): the instance is free,
        // and the next request goes behind it.
        let unstarted = std::mem::take(&mut lock(&shared.queue).unstarted);
        start_workers(shared, unstarted);
        while lock(&shared.queue).idle == 0 {
            std::thread::yield_now();
        }
        let first = queue_directly(shared, u64::MAX);
        assert_eq!(shared.waiting.load(Ordering::Relaxed), 1);
        wait(
            scheduler
                .submit(Vec::new(), None, Inline::Lone, Instant::now())
                .unwrap(),
        );
        assert!(first.blocking_recv().unwrap().is_ok());
        let threads = model.threads.lock().unwrap();
        assert_eq!(*threads, ["oxinfer-behind-0", "oxinfer-behind-0"]);
    }

    #[test]
    fn a_closed_scheduler_is_seen_without_its_lock() {
        let (_, scheduler) = started("closed", Duration::from_micros(1));
        let shared = scheduler.shared.clone();
        drop(scheduler);
        assert_eq!(shared.waiting.load(Ordering::Relaxed), usize::MAX);
    }

    #[test]
    fn an_inline_run_waits_for_a_busy_instance_at_most_twice_a_recent_execution() {
        assert_eq!(inline_wait(3_000), Duration::from_micros(6));
        assert_eq!(inline_wait(u64::MAX), INLINE_WAIT_MAX);
        let busy = Mutex::new(());
        let (taken, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            // Another execution holds the instance until told to end.
            s.spawn(|| {
                let held = busy.lock().unwrap();
                taken.wait();
                release.wait();
                std::thread::sleep(Duration::from_millis(20));
                drop(held);
            });
            taken.wait();
            // Held throughout: the wait gives up once its time is over.
            let started = Instant::now();
            assert!(wait_briefly(&busy, Duration::from_millis(5)).is_none());
            assert!(started.elapsed() >= Duration::from_millis(5));
            // Released during the wait: it takes the lock.
            release.wait();
            assert!(wait_briefly(&busy, Duration::from_secs(60)).is_some());
        });
        // Free: at once.
        assert!(wait_briefly(&busy, Duration::ZERO).is_some());
    }

    #[test]
    fn an_inline_run_is_answered_from_the_call_and_takes_no_job_id() {
        let (model, scheduler) = started("ids", Duration::from_micros(1));
        let shared = &scheduler.shared;
        // Inline: the outcome is in the ticket, with no reply channel and no job id.
        let ticket = scheduler
            .submit(Vec::new(), None, Inline::Lone, Instant::now())
            .unwrap();
        assert!(matches!(ticket, Ticket::Done(Ok(_))));
        assert_eq!(shared.next_id.load(Ordering::Relaxed), 0);
        // A deadline already past: answered as a worker would, counted as expired.
        let expired = scheduler.submit(
            Vec::new(),
            Some(Duration::ZERO),
            Inline::Lone,
            Instant::now(),
        );
        match expired.unwrap() {
            Ticket::Done(Err(Error::DeadlineExceeded(_))) => {}
            Ticket::Done(other) => panic!("{other:?}"),
            Ticket::Queued(_) => panic!("queued"),
        }
        assert_eq!(shared.telemetry.expired.get(), 1);
        // Too slow to run inline: queued, with the first id.
        let inline = shared.inline.as_ref().unwrap();
        inline.recent_ns.store(1_000_000, Ordering::Relaxed);
        let ticket = scheduler
            .submit(Vec::new(), None, Inline::Lone, Instant::now())
            .unwrap();
        assert!(matches!(&ticket, Ticket::Queued(q) if q.id == 0));
        assert_eq!(shared.next_id.load(Ordering::Relaxed), 1);
        wait(ticket);
        let threads = model.threads.lock().unwrap();
        assert_eq!(threads.len(), 2, "{threads:?}");
        assert!(!threads[0].starts_with("oxinfer-ids-"), "{threads:?}");
        assert_eq!(threads[1], "oxinfer-ids-0");
    }

    #[test]
    fn a_request_runs_inline_only_on_a_model_fast_enough_for_what_the_server_is_doing() {
        let us = Duration::from_micros;
        for (inline, recent, expected) in [
            (Inline::Lone, us(10), true),
            (Inline::Concurrent, us(10), true),
            (Inline::Lone, us(100), true),
            // Others in flight: the I/O thread is held only for a fast model.
            (Inline::Concurrent, us(100), false),
            (Inline::Lone, us(300), false),
            (Inline::Concurrent, us(300), false),
            // Large inputs: always a worker.
            (Inline::No, us(10), false),
        ] {
            assert_eq!(
                runs_inline(inline, recent),
                expected,
                "{inline:?} with recent executions of {recent:?}"
            );
        }
    }
}
