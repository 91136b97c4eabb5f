//! Accepting connections on both ports, and the limits every connection and request lives
//! under, whatever its protocol:
//!
//! - `max_connections` per port: a connection over it is closed as soon as it is accepted;
//! - the TLS handshake (`[server.tls]`), done in the connection's own task, never in the
//!   accept loop;
//! - `header_read_timeout_seconds`: a connection that has not completed its first request's
//!   headers (TLS handshake included) in time is closed, however slowly it keeps sending;
//! - `idle_timeout_seconds`: a connection with no request in flight for that long is closed;
//! - `max_concurrent_requests` server-wide: one more is answered at once with HTTP 429 /
//!   gRPC `RESOURCE_EXHAUSTED` (health probes and `/metrics` are not counted).
//!
//! The timeouts live in the connection's I/O ([`Conn`]): a read past the deadline fails, and
//! hyper (REST) or tonic (gRPC) closes the connection. Requests mark their connection busy
//! through a [`RequestGuard`] held until the response body has been sent.

pub mod tls;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// How connections are served (`[server]` transport settings; the defaults are the manifest's).
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// `TCP_NODELAY` on accepted connections (both ports).
    pub tcp_nodelay: bool,
    /// The HTTP/2 initial stream window, in bytes (both ports).
    pub http2_stream_window: u32,
    /// The HTTP/2 initial connection window, in bytes (both ports).
    pub http2_connection_window: u32,
    /// When gRPC responses are compressed.
    pub grpc_compression: oxinfer_core::manifest::GrpcCompression,
    /// Seconds a connection has to complete its first request's headers (and TLS handshake),
    /// and an HTTP/1.1 connection each later request's headers.
    pub header_read_timeout_seconds: u64,
    /// Seconds a connection with no request in flight is kept.
    pub idle_timeout_seconds: u64,
    /// Open connections per port.
    pub max_connections: usize,
    /// Requests in flight, server-wide.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams per connection, both ports.
    pub http2_max_concurrent_streams: u32,
    /// The largest HTTP/2 header list, in bytes, both ports.
    pub http2_max_header_list_bytes: u32,
}

impl Default for Transport {
    fn default() -> Self {
        Transport::of(&oxinfer_core::manifest::ServerSettings::default())
    }
}

impl Transport {
    /// The transport settings of a manifest's `[server]` table.
    pub fn of(server: &oxinfer_core::manifest::ServerSettings) -> Self {
        Transport {
            tcp_nodelay: server.tcp_nodelay,
            http2_stream_window: server.http2_stream_window_bytes,
            http2_connection_window: server.http2_connection_window_bytes,
            grpc_compression: server.grpc_compression,
            header_read_timeout_seconds: server.header_read_timeout_seconds,
            idle_timeout_seconds: server.idle_timeout_seconds,
            max_connections: server.max_connections,
            max_concurrent_requests: server.max_concurrent_requests,
            http2_max_concurrent_streams: server.http2_max_concurrent_streams,
            http2_max_header_list_bytes: server.http2_max_header_list_bytes,
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: Duration::from_secs(self.header_read_timeout_seconds),
            idle: Duration::from_secs(self.idle_timeout_seconds),
        }
    }
}

/// What both listeners share: the settings, TLS, the request limit and the connection
/// counters.
#[derive(Debug)]
pub(crate) struct Listening {
    pub(crate) transport: Transport,
    pub(crate) tls: Option<Arc<tls::Tls>>,
    pub(crate) requests: RequestLimit,
    pub(crate) metrics: ConnectionMetrics,
}

impl Listening {
    pub(crate) fn new(transport: Transport, tls: Option<Arc<tls::Tls>>) -> Self {
        Listening {
            transport,
            tls,
            requests: RequestLimit::new(transport.max_concurrent_requests),
            metrics: ConnectionMetrics::default(),
        }
    }
}

/// The connection counters, rendered with the other metrics.
#[derive(Debug)]
pub(crate) struct ConnectionMetrics {
    /// Open connections, by port.
    pub(crate) open: prometheus::IntGaugeVec,
    /// Connections closed by the server's limits, by port and reason.
    pub(crate) dropped: prometheus::IntCounterVec,
    /// Requests answered 429 / `RESOURCE_EXHAUSTED` over `max_concurrent_requests`.
    pub(crate) over_limit: prometheus::IntCounter,
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        let open = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("oxinfer_connections", "Open connections, by port."),
            &["port"],
        )
        .expect("valid gauge options");
        let dropped = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "oxinfer_connections_dropped_total",
                "Connections the server closed, by port and reason: max_connections, \
                 header_timeout, idle_timeout, stalled (requests in flight but no byte moved \
                 for the idle timeout), tls_handshake.",
            ),
            &["port", "reason"],
        )
        .expect("valid counter options");
        for port in [Port::Http, Port::Grpc] {
            open.with_label_values(&[port.as_str()]);
            for reason in [
                "max_connections",
                "header_timeout",
                "idle_timeout",
                "stalled",
                "tls_handshake",
            ] {
                dropped.with_label_values(&[port.as_str(), reason]);
            }
        }
        let over_limit = prometheus::IntCounter::new(
            "oxinfer_requests_over_limit_total",
            "Requests answered 429 / RESOURCE_EXHAUSTED because max_concurrent_requests were \
             in flight.",
        )
        .expect("valid counter options");
        ConnectionMetrics {
            open,
            dropped,
            over_limit,
        }
    }
}

impl ConnectionMetrics {
    fn opened(&self, port: Port) {
        self.open.with_label_values(&[port.as_str()]).inc();
    }

    fn closed(&self, port: Port) {
        self.open.with_label_values(&[port.as_str()]).dec();
    }

    /// Counts a connection closed by a limit (`reason`).
    fn dropped(&self, port: Port, reason: &str) {
        self.dropped
            .with_label_values(&[port.as_str(), reason])
            .inc();
    }
}

/// Which of the two listeners a connection came to (the `port` label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// The REST port.
    Http,
    /// The gRPC port.
    Grpc,
}

impl Port {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Port::Http => "http",
            Port::Grpc => "grpc",
        }
    }
}

/// Who is on the other end of a connection; every request carries it in its extensions.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// The subject of the client's certificate, under mutual TLS.
    pub(crate) certificate: Option<Arc<str>>,
    activity: Arc<Activity>,
}

/// Who made a request, when known: the subject of the client's certificate under mutual
/// TLS. Inserted into the request's extensions for the handlers and the inference log.
#[derive(Debug, Clone)]
pub(crate) struct Identity(pub(crate) Arc<str>);

/// Where a request came from and who sent it, from its extensions (both front ends).
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    /// The client's address.
    pub(crate) addr: Option<SocketAddr>,
    /// The caller's identity ([`Identity`]).
    pub(crate) identity: Option<Arc<str>>,
}

impl Caller {
    /// The caller of a request served through this module.
    pub(crate) fn of(extensions: &http::Extensions) -> Caller {
        Caller {
            addr: extensions.get::<Peer>().map(|peer| peer.addr),
            identity: extensions.get::<Identity>().map(|i| i.0.clone()),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Caller, Infallible> {
        Ok(Caller::of(&parts.extensions))
    }
}

/// What a connection's timeouts look at: the requests in flight on it and since when it has
/// had none.
#[derive(Debug)]
struct Activity {
    born: Instant,
    /// Requests in flight (until their response body has been sent).
    active: AtomicUsize,
    /// Milliseconds after `born` when the last request in flight finished.
    idle_since_ms: AtomicU64,
    /// Whether any request has started (until then, the header timeout applies).
    served: AtomicBool,
    /// Requests started and finished, and header reads started (`header_wake_ms`): a change
    /// moves the connection's deadline.
    changes: AtomicU64,
    /// When hyper's header read timeout for the request it is reading now (HTTP/1.1, REST
    /// port) passes, in milliseconds after `born`, rounded up; `u64::MAX` before the first.
    /// The connection's timer wakes its task then, for hyper to find the timeout passed
    /// ([`ConnTimer`]).
    header_wake_ms: AtomicU64,
    /// What [`StreamExecutor`] decides by.
    in_place: InPlace,
}

/// What the connection's task alone reads and writes, for [`StreamExecutor`]: on a cache line
/// of its own, away from the counts the calls' tasks change on the other threads.
#[derive(Debug)]
#[repr(align(128))]
struct InPlace {
    /// Reads from the socket that brought bytes.
    reads: AtomicU64,
    /// `reads` when a stream was last run in place.
    ran_at: AtomicU64,
    /// The client has had two calls at once on this connection.
    multiplexed: AtomicBool,
}

/// The connection timeouts of `[server]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) header: Duration,
    pub(crate) idle: Duration,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            header_wake_ms: AtomicU64::new(u64::MAX),
            in_place: InPlace {
                reads: AtomicU64::new(0),
                ran_at: AtomicU64::new(u64::MAX),
                multiplexed: AtomicBool::new(false),
            },
        }
    }

    /// When to look again, or why the connection has outlived its timeout. `last_io` is when a
    /// byte last moved in either direction: a connection with requests in flight is closed
    /// only when nothing has moved for the idle timeout (a client that stops reading its
    /// responses, or an HTTP/2 peer that never opens its flow-control window).
    fn next_check(&self, timeouts: Timeouts, last_io: Instant) -> Result<Instant, &'static str> {
        let now = Instant::now();
        let (deadline, reason) = self.deadline(timeouts, last_io);
        // A timeout too long to represent: look again in a day.
        let deadline = deadline.unwrap_or(now + Duration::from_secs(86_400));
        if now < deadline {
            Ok(deadline)
        } else {
            Err(reason)
        }
    }

    /// When hyper's current header read timeout passes, if it has set one ([`ConnTimer`]).
    fn header_wake(&self) -> Option<Instant> {
        match self.header_wake_ms.load(Ordering::Acquire) {
            u64::MAX => None,
            ms => self.born.checked_add(Duration::from_millis(ms)),
        }
    }

    /// Sets [`Activity::header_wake`] to `at` (a millisecond later at most), for the
    /// connection's timer to look at.
    fn set_header_wake(&self, at: Instant) {
        let after = at.saturating_duration_since(self.born);
        let ms = after.as_millis() + u128::from(!after.subsec_nanos().is_multiple_of(1_000_000));
        let ms = u64::try_from(ms).unwrap_or(u64::MAX - 1).min(u64::MAX - 1);
        self.header_wake_ms.store(ms, Ordering::Release);
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The connection's deadline and what passing it means, without reading the clock (`None`:
    /// too far to represent).
    fn deadline(&self, timeouts: Timeouts, last_io: Instant) -> (Option<Instant>, &'static str) {
        if self.active.load(Ordering::Acquire) > 0 {
            (last_io.checked_add(timeouts.idle), "stalled")
        } else if self.served.load(Ordering::Acquire) {
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            (
                (self.born + since).checked_add(timeouts.idle),
                "idle_timeout",
            )
        } else {
            (self.born.checked_add(timeouts.header), "header_timeout")
        }
    }
}

/// Held by a request from admission until its response body has been sent (or dropped):
/// marks its connection busy and holds its `max_concurrent_requests` permit.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    activity: Option<Arc<Activity>>,
    /// The count this request is in, when it is counted.
    counted: Option<Arc<AtomicUsize>>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(count) = &self.counted {
            count.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(activity) = &self.activity {
            let idle = activity.born.elapsed().as_millis() as u64;
            activity.idle_since_ms.store(idle, Ordering::Release);
            activity.active.fetch_sub(1, Ordering::AcqRel);
            activity.changes.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The server-wide bound on requests in flight (`max_concurrent_requests`): a count that
/// admission raises and each request's guard lowers. A request over the bound is refused at
/// once, never made to wait, so there is no waiter list: every request changes one line
/// shared by all of them, in place of a semaphore's (whose release also took its waiters'
/// lock).
#[derive(Debug)]
pub(crate) struct RequestLimit {
    /// Counted requests in flight; its `Arc` header and the count share a line.
    count: Arc<AtomicUsize>,
    max: usize,
}

impl RequestLimit {
    pub(crate) fn new(max: usize) -> Self {
        RequestLimit {
            count: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// The configured bound.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Counted requests in flight now (admitted and not yet answered).
    pub(crate) fn in_flight(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Admits a request on `peer`'s connection; `counted` is false for probes and metrics,
    /// which are served even when the server is full. `None`: over the limit.
    pub(crate) fn admit(&self, peer: Option<&Peer>, counted: bool) -> Option<RequestGuard> {
        let counted = if counted {
            self.count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max).then_some(n + 1)
                })
                .ok()?;
            Some(self.count.clone())
        } else {
            None
        };
        let activity = peer.map(|p| {
            p.activity.active.fetch_add(1, Ordering::AcqRel);
            p.activity.served.store(true, Ordering::Release);
            p.activity.changes.fetch_add(1, Ordering::AcqRel);
            p.activity.clone()
        });
        Some(RequestGuard { activity, counted })
    }
}

/// A response body that holds its request's [`RequestGuard`] until it has been sent.
pub(crate) struct GuardedBody<B> {
    body: B,
    _guard: RequestGuard,
}

impl<B> GuardedBody<B> {
    pub(crate) fn new(body: B, guard: RequestGuard) -> Self {
        GuardedBody {
            body,
            _guard: guard,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's open slot under `max_connections`, counted in `oxinfer_connections`.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    listening: Arc<Listening>,
    port: Port,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.listening.metrics.closed(self.port);
    }
}

/// A TCP connection with the timeouts of [`Timeouts`] applied to its reads.
#[derive(Debug)]
pub(crate) struct Conn {
    io: TcpStream,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The activity's `changes` when the timer was last set.
    seen: u64,
    /// When a byte last moved in either direction.
    last_io: Instant,
    expired: bool,
    slot: Slot,
}

impl Conn {
    fn expire(&mut self, reason: &'static str) -> io::Error {
        if !self.expired {
            self.expired = true;
            self.slot.listening.metrics.dropped(self.slot.port, reason);
        }
        io::Error::new(io::ErrorKind::TimedOut, "connection timed out")
    }

    /// Checks the connection's deadline (and registers for it), from either direction: a
    /// connection blocked on writing is timed out as well as one waiting to read.
    fn check(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        if self.expired {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ));
        }
        // A request started or finished since the timer was set: the deadline may have moved
        // (a finished request starts the idle timeout, which may be shorter than the header
        // timeout). The timer is moved only when the deadline came earlier: one that is later,
        // as it is after every request on a busy connection, is found when the timer fires
        // and looks again (the loop below). Moving a timer takes the runtime's timer lock;
        // doing it twice per request cost about 2% of a tiny model's CPU time.
        //
        // No clock read here (a request starts and ends on every busy connection): a deadline
        // already past is set on the timer, which fires at once, below.
        //
        // The timer also wakes the task when hyper's header read timeout passes ([`ConnTimer`]):
        // hyper then finds it passed. One that has passed is not looked at again.
        let changes = self.activity.changes.load(Ordering::Acquire);
        if changes != self.seen {
            self.seen = changes;
            let (deadline, _) = self.activity.deadline(self.timeouts, self.last_io);
            // A wake before the last byte moved has passed (no clock read needed to tell).
            let wake = self.activity.header_wake().filter(|&w| w > self.last_io);
            let at = match (deadline, wake) {
                (Some(at), Some(wake)) => Some(at.min(wake)),
                (at, wake) => at.or(wake),
            };
            if let Some(at) = at
                && at < self.timer.deadline()
            {
                self.timer.as_mut().reset(at);
            }
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            match self.activity.next_check(self.timeouts, self.last_io) {
                Ok(at) => {
                    let at = match self.activity.header_wake() {
                        Some(wake) if wake < at && wake > Instant::now() => wake,
                        _ => at,
                    };
                    self.timer.as_mut().reset(at)
                }
                Err(reason) => return Err(self.expire(reason)),
            }
        }
        Ok(())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last_io = Instant::now();
            // Only this task writes it.
            let reads = &this.activity.in_place.reads;
            reads.store(reads.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        read
    }
}

impl Conn {
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.last_io = Instant::now();
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An established connection, plain or TLS, and who is on the other end.
#[derive(Debug)]
pub(crate) struct Connection {
    io: Io,
    peer: Peer,
}

#[derive(Debug)]
enum Io {
    Plain(Conn),
    Tls(Box<tokio_rustls::server::TlsStream<Conn>>),
}

impl Connection {
    pub(crate) fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One port's listener with its `max_connections` bound.
pub(crate) struct Acceptor {
    listener: TcpListener,
    port: Port,
    slots: Arc<Semaphore>,
    listening: Arc<Listening>,
}

/// A TCP connection accepted within `max_connections`, before its TLS handshake.
pub(crate) struct Accepted {
    tcp: TcpStream,
    addr: SocketAddr,
    slot: Slot,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener, port: Port, listening: &Arc<Listening>) -> Self {
        let max = listening
            .transport
            .max_connections
            .min(Semaphore::MAX_PERMITS);
        Acceptor {
            listener,
            port,
            slots: Arc::new(Semaphore::new(max)),
            listening: listening.clone(),
        }
    }

    /// The next connection within `max_connections`; connections over it are closed at once.
    /// Cancel-safe.
    pub(crate) async fn accept(&self) -> Accepted {
        loop {
            match self.listener.accept().await {
                Ok((tcp, addr)) => match self.slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        if self.listening.transport.tcp_nodelay
                            && let Err(e) = tcp.set_nodelay(true)
                        {
                            tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
                        }
                        self.listening.metrics.opened(self.port);
                        let slot = Slot {
                            _permit: permit,
                            listening: self.listening.clone(),
                            port: self.port,
                        };
                        return Accepted { tcp, addr, slot };
                    }
                    Err(_) => {
                        self.listening.metrics.dropped(self.port, "max_connections");
                        tracing::debug!(
                            client = %addr,
                            "{} port: max_connections ({}) reached, connection closed",
                            self.port.as_str(),
                            self.listening.transport.max_connections
                        );
                    }
                },
                // Out of file descriptors, or a connection reset before it was accepted:
                // wait a moment instead of spinning, and go on accepting.
                Err(e) => {
                    tracing::warn!("{} port: accept failed: {e}", self.port.as_str());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Accepted {
    /// Completes the TLS handshake when TLS is on (within the header timeout, like everything
    /// before the first request). `None`: the handshake failed and the connection is closed.
    pub(crate) async fn establish(self, port: Port) -> Option<Connection> {
        let Accepted { tcp, addr, slot } = self;
        let listening = slot.listening.clone();
        let timeouts = listening.transport.timeouts();
        let activity = Arc::new(Activity::new());
        let conn = Conn {
            io: tcp,
            activity: activity.clone(),
            timeouts,
            timer: Box::pin(tokio::time::sleep(timeouts.header)),
            seen: 0,
            last_io: Instant::now(),
            expired: false,
            slot,
        };
        let Some(tls) = &listening.tls else {
            return Some(Connection {
                io: Io::Plain(conn),
                peer: Peer {
                    addr,
                    certificate: None,
                    activity,
                },
            });
        };
        match tls.acceptor(port).accept(conn).await {
            Ok(stream) => {
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(tls::subject)
                    .map(Arc::from);
                Some(Connection {
                    io: Io::Tls(Box::new(stream)),
                    peer: Peer {
                        addr,
                        certificate,
                        activity,
                    },
                })
            }
            Err(e) => {
                listening.metrics.dropped(port, "tls_handshake");
                tracing::info!(client = %addr, "{} port: TLS handshake failed: {e}", port.as_str());
                None
            }
        }
    }
}

/// The REST liveness and readiness probes: open to anyone unless `[auth] protect_health`,
/// and never counted against `max_concurrent_requests`.
pub(crate) fn is_rest_probe(path: &str) -> bool {
    matches!(path, "/v2/health/live" | "/v2/health/ready" | "/health")
}

/// The gRPC liveness and readiness probes (the health service, OIP's ServerLive and
/// ServerReady), treated as [`is_rest_probe`]'s paths are.
pub(crate) fn is_grpc_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || matches!(
            path,
            "/inference.GRPCInferenceService/ServerLive"
                | "/inference.GRPCInferenceService/ServerReady"
        )
}

/// REST paths served even when `max_concurrent_requests` is reached: probes, model readiness
/// and metrics.
pub(crate) fn rest_uncounted(path: &str) -> bool {
    is_rest_probe(path)
        || path == "/metrics"
        || (path.starts_with("/v2/models/") && path.ends_with("/ready"))
}

/// gRPC methods served even when `max_concurrent_requests` is reached: probes and model
/// readiness.
fn grpc_uncounted(path: &str) -> bool {
    is_grpc_probe(path) || path == "/inference.GRPCInferenceService/ModelReady"
}

/// The 429 answer over `max_concurrent_requests`.
pub(crate) fn too_many_requests(listening: &Listening) -> http::Response<axum::body::Body> {
    listening.metrics.over_limit.inc();
    let body = serde_json::json!({
        "error": format!(
            "too many requests in flight (max_concurrent_requests = {}); retry later",
            listening.requests.max()
        )
    });
    http::Response::builder()
        .status(http::StatusCode::TOO_MANY_REQUESTS)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::RETRY_AFTER, "1")
        .body(axum::body::Body::from(body.to_string()))
        .expect("valid response")
}

/// Applies `[server]`'s HTTP/2 settings (timer, `max_concurrent_streams`, header list size,
/// flow-control windows) to an HTTP/2 builder: hyper's own on the gRPC port, hyper-util's on the
/// REST port, whose methods have the same names but no trait in common. One list for both
/// ports, so that they cannot drift apart.
macro_rules! http2_settings {
    ($builder:expr, $transport:expr) => {
        $builder
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams($transport.http2_max_concurrent_streams)
            .max_header_list_size($transport.http2_max_header_list_bytes)
            .initial_stream_window_size($transport.http2_stream_window)
            .initial_connection_window_size($transport.http2_connection_window)
    };
}

/// hyper's timer for one HTTP/1.1 connection on the REST port, where hyper times each
/// request's header read (`header_read_timeout_seconds`). hyper makes a sleep for each head it
/// reads and drops it once the head is in; a tokio sleep put every request's timeout into the
/// runtime's timer wheel and took it out again, under the wheel's lock, shared by the I/O
/// threads (about 0.3 us of a tiny REST request's CPU time). This one is the deadline alone:
/// the connection's own timer ([`Conn`]), which it already keeps for its idle and stall
/// timeouts and moves only when a deadline comes earlier, wakes the task at the deadline, and
/// the sleep then reads the clock.
#[derive(Clone)]
struct ConnTimer {
    activity: Arc<Activity>,
}

/// A [`ConnTimer`] sleep: ready once its deadline has passed.
struct ConnSleep {
    deadline: std::time::Instant,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        // The connection's timer wakes the task at the deadline (`Activity::header_wake`).
        if Instant::now().into_std() >= self.deadline {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for ConnSleep {}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.activity.set_header_wake(Instant::from_std(deadline));
        Box::pin(ConnSleep { deadline })
    }

    fn now(&self) -> std::time::Instant {
        // tokio's clock, which tests can pause and advance.
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<ConnSleep>() {
            Some(sleep) => {
                sleep.get_mut().deadline = new_deadline;
                self.activity
                    .set_header_wake(Instant::from_std(new_deadline));
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// The hyper connection builder for the REST port (HTTP/1.1 and HTTP/2, by preface).
fn rest_builder(
    transport: &Transport,
    activity: Arc<Activity>,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(ConnTimer { activity })
        .header_read_timeout(transport.timeouts().header);
    http2_settings!(builder.http2(), transport);
    builder
}

/// What a port serves, with request and response bodies of type `B`: the REST API
/// (`api::rest::RestApp`, `axum::body::Body`) or the gRPC services behind their layers
/// (`api::grpc`, `tonic::body::Body`), named by its shape so that this module does not depend
/// on the APIs.
pub(crate) trait PortService<B>:
    tower::Service<
        http::Request<B>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<B, S> PortService<B> for S where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The accept loop of both ports: accepts connections on `listener` within `max_connections`,
/// establishes each (TLS) in its own task and hands it to `serve` with its graceful-shutdown
/// watcher, until `shutdown` completes; then stops accepting, calls `stopping`, lets open
/// connections finish their requests, and returns.
async fn serve_port<F, Fut>(
    listener: TcpListener,
    port: Port,
    listening: &Arc<Listening>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: impl FnOnce(),
    serve: F,
) -> io::Result<()>
where
    F: Fn(Connection, hyper_util::server::graceful::Watcher) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = Acceptor::new(listener, port, listening);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = &mut shutdown => break,
        };
        let watcher = graceful.watcher();
        let serve = serve.clone();
        tokio::spawn(async move {
            if let Some(connection) = accepted.establish(port).await {
                serve(connection, watcher).await;
            }
        });
    }
    drop(acceptor);
    stopping();
    graceful.shutdown().await;
    Ok(())
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, calls
/// `stopping`, lets open connections finish their requests, and returns.
pub(crate) async fn serve_rest(
    listener: TcpListener,
    listening: Arc<Listening>,
    router: impl PortService<axum::body::Body>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: impl FnOnce(),
) -> io::Result<()> {
    let transport = listening.transport;
    serve_port(
        listener,
        Port::Http,
        &listening,
        shutdown,
        stopping,
        move |connection, watcher| {
            let peer = connection.peer().clone();
            let addr = peer.addr;
            let router = router.clone();
            let service = hyper::service::service_fn(move |request| {
                serve_request(request, router.clone(), peer.clone())
            });
            let connection = rest_builder(&transport, connection.peer().activity.clone())
                .serve_connection(hyper_util::rt::TokioIo::new(connection), service)
                .into_owned();
            async move {
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(client = %addr, "connection closed: {e}");
                }
            }
        },
    )
    .await
}

/// One REST request: who sent it into its extensions, then the router (whose
/// `api::http::admit` middleware, after access control, applies `max_concurrent_requests`).
async fn serve_request(
    mut request: http::Request<hyper::body::Incoming>,
    router: impl PortService<axum::body::Body>,
    peer: Peer,
) -> Result<http::Response<axum::body::Body>, Infallible> {
    let extensions = request.extensions_mut();
    if let Some(subject) = &peer.certificate {
        extensions.insert(Identity(subject.clone()));
    }
    extensions.insert(peer);
    Ok(router
        .oneshot(request.map(axum::body::Body::new))
        .await
        .unwrap_or_else(|never| match never {}))
}

/// Runs the streams of one gRPC connection (hyper hands each new one to its executor, to be
/// spawned): while the client has never had two calls at once on the connection, a new stream
/// is polled once in place, on the connection's own task, and spawned only if it does not
/// finish there. From the first stream that arrives in the same read as the one before, or
/// while another call is in flight, every stream is spawned, as tokio's executor does.
///
/// A small call whose message came with its headers, on a model fast enough to run inline
/// ([`crate::scheduler`]), finishes in that poll: without a task of its own, it is neither
/// scheduled nor stolen by the other I/O thread, whose wake-ups were most of the server's
/// context switches. h2load `-c16 -m1` on the tiny model, 3 alternating rounds: server CPU
/// 15.6 against 16.3 us per call (71.7-73.8k against 69.6-71.8k calls/s). A call that waits
/// (for its message, or for a model's worker thread) goes on in its own task. Concurrent calls
/// on one connection keep running in parallel on both I/O threads: run in place one after
/// another, `-c1 -m16` lost 18% (ARCHITECTURE.md, design decisions).
#[derive(Clone)]
struct StreamExecutor {
    activity: Arc<Activity>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let in_place = &self.activity.in_place;
        if in_place.multiplexed.load(Ordering::Relaxed) {
            tokio::spawn(stream);
            return;
        }
        let reads = in_place.reads.load(Ordering::Relaxed);
        if in_place.ran_at.load(Ordering::Relaxed) == reads
            || self.activity.active.load(Ordering::Relaxed) != 0
        {
            in_place.multiplexed.store(true, Ordering::Relaxed);
            tokio::spawn(stream);
            return;
        }
        in_place.ran_at.store(reads, Ordering::Relaxed);
        // Boxed, so that a stream that does not finish can move to a task once polled. The
        // waker is a no-op: a spawned task polls its future again at once, with its own.
        let mut stream = Box::pin(stream);
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stream
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()))
        }));
        match polled {
            Ok(Poll::Pending) => {
                tokio::spawn(stream);
            }
            // A panic drops the stream (reset), as a panicking task would be dropped, and not
            // the connection.
            Ok(Poll::Ready(())) | Err(_) => {}
        }
    }
}

/// The hyper connection builder for one connection on the gRPC port (HTTP/2 only).
fn grpc_builder(
    transport: &Transport,
    activity: Arc<Activity>,
) -> hyper::server::conn::http2::Builder<StreamExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(StreamExecutor { activity });
    http2_settings!(builder, transport);
    builder
}

/// Serves `services` over HTTP/2 on `listener` until `shutdown` completes, then stops
/// accepting, lets open connections finish their calls (HTTP/2 GOAWAY), and returns.
///
/// hyper serves the connections directly, as on the REST port, rather than through tonic's
/// `Server`, which turns off h2's bound on the streams a client can make the server reset
/// (`max_local_error_reset_streams`: here hyper's default, 1024, then GOAWAY
/// `ENHANCE_YOUR_CALM`). Its per-call layers (the router, `grpc-timeout`, the service boxed
/// and cloned once more, the connection info) are gone too: they cost the bare tonic floor
/// 1.25 us of its 10.3 us per call (h2load c=16), but oxinfer, whose admission layer already
/// skipped the router, within noise.
pub(crate) async fn serve_grpc(
    listener: TcpListener,
    listening: Arc<Listening>,
    services: impl PortService<tonic::body::Body>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let transport = listening.transport;
    serve_port(
        listener,
        Port::Grpc,
        &listening,
        shutdown,
        || {},
        move |connection, watcher| {
            let peer = connection.peer().clone();
            let addr = peer.addr;
            let services = services.clone();
            let service = hyper::service::service_fn(move |request| {
                serve_call(request, services.clone(), peer.clone())
            });
            let connection = grpc_builder(&transport, connection.peer().activity.clone())
                .serve_connection(hyper_util::rt::TokioIo::new(connection), service);
            async move {
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(client = %addr, "gRPC connection closed: {e}");
                }
            }
        },
    )
    .await
}

/// One gRPC call: who sent it into its extensions, then the services, within the client's
/// `grpc-timeout` when it sent one (answered `CANCELLED`, "Timeout expired", once it is past,
/// as tonic's server does).
async fn serve_call<B>(
    mut request: http::Request<B>,
    services: impl PortService<tonic::body::Body>,
    peer: Peer,
) -> Result<http::Response<tonic::body::Body>, Infallible>
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    let timeout = request
        .headers()
        .get("grpc-timeout")
        .and_then(|value| grpc_timeout(value.as_bytes()));
    request.extensions_mut().insert(peer);
    let call = services.oneshot(request.map(tonic::body::Body::new));
    let Some(timeout) = timeout else {
        return call.await;
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(answer) => answer,
        Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
    }
}

/// A `grpc-timeout` header's value (gRPC over HTTP/2: at most 8 digits and a unit, `H`, `M`,
/// `S`, `m`, `u` or `n`); `None` when malformed, which is as if there were none.
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A tower layer for the gRPC server: admission under `max_concurrent_requests` (the health
/// service is not counted) and the connection's busy mark until the response has been sent.
#[derive(Clone)]
pub(crate) struct GrpcLimitLayer {
    pub(crate) listening: Arc<Listening>,
}

impl<S> tower::Layer<S> for GrpcLimitLayer {
    type Service = GrpcLimit<S>;

    fn layer(&self, inner: S) -> GrpcLimit<S> {
        GrpcLimit {
            inner,
            listening: self.listening.clone(),
        }
    }
}

/// The service of [`GrpcLimitLayer`].
#[derive(Clone)]
pub(crate) struct GrpcLimit<S> {
    inner: S,
    listening: Arc<Listening>,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let counted = !grpc_uncounted(request.uri().path());
        let peer = request.extensions().get::<Peer>().cloned();
        let Some(guard) = self.listening.requests.admit(peer.as_ref(), counted) else {
            self.listening.metrics.over_limit.inc();
            let status = tonic::Status::resource_exhausted(format!(
                "too many requests in flight (max_concurrent_requests = {}); retry later",
                self.listening.requests.max()
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        if let Some(subject) = peer.and_then(|p| p.certificate)
            && request.extensions().get::<Identity>().is_none()
        {
            // The access layer runs first: a token's name, when it named the caller, stays the
            // identity.
            request.extensions_mut().insert(Identity(subject));
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| tonic::body::Body::new(GuardedBody::new(body, guard))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_secs(30),
        idle: Duration::from_secs(5),
    };

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_grpc_timeout_is_cancelled() {
        // A service that answers after a second.
        let slow = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>(tonic::Status::ok("answered").into_http())
        });
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            certificate: None,
            activity: Arc::new(Activity::new()),
        };
        for (timeout, after, status, message) in [
            (Some("10m"), 10, "1", "Timeout%20expired"), // percent-encoded, as gRPC says
            (Some("2S"), 1000, "0", "answered"),
            (None, 1000, "0", "answered"),
            // Malformed: as if there were none.
            (Some("10x"), 1000, "0", "answered"),
        ] {
            let mut request = http::Request::new(tonic::body::Body::empty());
            if let Some(timeout) = timeout {
                request
                    .headers_mut()
                    .insert("grpc-timeout", timeout.parse().unwrap());
            }
            let started = Instant::now();
            let response = serve_call(request, slow, peer.clone()).await.unwrap();
            assert_eq!(
                started.elapsed(),
                Duration::from_millis(after),
                "{timeout:?}"
            );
            assert_eq!(response.headers()["grpc-status"], status, "{timeout:?}");
            assert_eq!(response.headers()["grpc-message"], message, "{timeout:?}");
        }
    }

    #[test]
    fn a_grpc_timeout_header_is_read_as_grpc_over_http2_defines_it() {
        for (value, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("30S", Some(Duration::from_secs(30))),
            ("500m", Some(Duration::from_millis(500))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("7n", Some(Duration::from_nanos(7))),
            // Malformed: as if there were none.
            ("", None),
            ("S", None),
            ("100", None),
            ("123456789S", None),
            ("-1S", None),
            ("1.5S", None),
            ("10x", None),
            ("１S", None),
        ] {
            assert_eq!(grpc_timeout(value.as_bytes()), want, "{value:?}");
        }
    }

    /// A stream for [`StreamExecutor`] that counts its runs.
    fn counted(runs: &Arc<AtomicUsize>) -> impl Future<Output = ()> + Send + 'static {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Waits (at most a second) until `runs` reaches `n`.
    async fn until(runs: &AtomicUsize, n: usize) {
        tokio::time::timeout(Duration::from_secs(1), async {
            while runs.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the spawned stream ran");
    }

    #[tokio::test]
    async fn a_stream_runs_in_place_until_the_client_has_two_calls_at_once() {
        use hyper::rt::Executor;
        let activity = Arc::new(Activity::new());
        let executor = StreamExecutor {
            activity: activity.clone(),
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let read = |n| activity.in_place.reads.store(n, Ordering::Relaxed);
        // One stream per read: each has finished when `execute` returns.
        read(1);
        executor.execute(counted(&runs));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the first stream ran in place"
        );
        read(2);
        executor.execute(counted(&runs));
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the next read's stream too");
        // A second stream from the same read: spawned, and so is every one after it.
        executor.execute(counted(&runs));
        assert_eq!(runs.load(Ordering::SeqCst), 2, "spawned, not run in place");
        until(&runs, 3).await;
        assert!(activity.in_place.multiplexed.load(Ordering::Relaxed));
        read(3);
        executor.execute(counted(&runs));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "spawned after a new read too"
        );
        until(&runs, 4).await;

        // A stream that arrives while a call is in flight: spawned.
        let activity = Arc::new(Activity::new());
        let executor = StreamExecutor {
            activity: activity.clone(),
        };
        activity.active.store(1, Ordering::Relaxed);
        activity.in_place.reads.store(1, Ordering::Relaxed);
        executor.execute(counted(&runs));
        assert_eq!(runs.load(Ordering::SeqCst), 4, "spawned, not run in place");
        until(&runs, 5).await;
        assert!(activity.in_place.multiplexed.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_stream_that_waits_goes_on_in_its_own_task() {
        use hyper::rt::Executor;
        let executor = StreamExecutor {
            activity: Arc::new(Activity::new()),
        };
        let (send, message) = tokio::sync::oneshot::channel::<u32>();
        let (answer, answered) = tokio::sync::oneshot::channel();
        executor.execute(async move {
            let _ = answer.send(message.await.unwrap() + 1);
        });
        send.send(41).unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(1), answered).await;
        assert_eq!(answered.unwrap().unwrap(), 42);
    }

    #[tokio::test]
    async fn a_stream_that_panics_in_place_is_dropped_and_the_connection_goes_on() {
        use hyper::rt::Executor;
        let executor = StreamExecutor {
            activity: Arc::new(Activity::new()),
        };
        executor.execute(async { panic!("a stream's bug (this panic is expected)") });
        let runs = Arc::new(AtomicUsize::new(0));
        executor.activity.in_place.reads.store(1, Ordering::Relaxed);
        executor.execute(counted(&runs));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_header_timer_publishes_its_deadline_for_the_connection_timer() {
        use hyper::rt::Timer;
        let activity = Arc::new(Activity::new());
        let timer = ConnTimer {
            activity: activity.clone(),
        };
        assert_eq!(activity.header_wake(), None);
        let changes = activity.changes.load(Ordering::Relaxed);
        // A deadline between two milliseconds: the wake-up comes at the next one, not before.
        let deadline = timer.now() + Duration::from_micros(2_500);
        let mut sleep = timer.sleep_until(deadline);
        let wake = activity.header_wake().unwrap();
        assert_eq!(wake, activity.born + Duration::from_millis(3));
        assert!(wake.into_std() >= deadline);
        assert_eq!(activity.changes.load(Ordering::Relaxed), changes + 1);
        // Ready once the deadline has passed, by tokio's clock.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(3)).await;
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
        // Reset in place for the next head: a later deadline, published again.
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(30));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            activity.header_wake().unwrap(),
            activity.born + Duration::from_millis(30_003)
        );
        assert_eq!(activity.changes.load(Ordering::Relaxed), changes + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_the_requests_in_flight() {
        let activity = Arc::new(Activity::new());
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            certificate: None,
            activity: activity.clone(),
        };
        // Before the first request: the header timeout, from the connection's start, however
        // recently a byte arrived.
        assert_eq!(
            activity.next_check(TIMEOUTS, Instant::now()),
            Ok(activity.born + TIMEOUTS.header)
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            activity.next_check(TIMEOUTS, Instant::now()),
            Err("header_timeout")
        );
        // A request in flight is not idle while bytes move, however long it takes...
        let limit = RequestLimit::new(1);
        let guard = limit.admit(Some(&peer), true).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(activity.next_check(TIMEOUTS, Instant::now()).is_ok());
        // ...but is when nothing has moved for the idle timeout (a client that stopped reading).
        let moved = Instant::now();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(activity.next_check(TIMEOUTS, moved), Err("stalled"));
        // Over the limit: refused, and not counted; probes are not counted.
        assert_eq!(limit.in_flight(), 1);
        assert!(limit.admit(Some(&peer), true).is_none());
        assert_eq!(limit.in_flight(), 1);
        let probe = limit.admit(Some(&peer), false).unwrap();
        assert_eq!(limit.in_flight(), 1);
        drop(probe);
        drop(guard);
        assert_eq!(limit.in_flight(), 0);
        // Idle from the moment the last request finished.
        let idle_deadline = activity.next_check(TIMEOUTS, Instant::now()).unwrap();
        assert_eq!(idle_deadline, Instant::now() + TIMEOUTS.idle);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            activity.next_check(TIMEOUTS, Instant::now()),
            Err("idle_timeout")
        );
        assert!(limit.admit(Some(&peer), true).is_some());
    }

    #[test]
    fn probes_and_metrics_are_not_counted() {
        for path in [
            "/v2/health/live",
            "/v2/health/ready",
            "/metrics",
            "/v2/models/m/ready",
            "/v2/models/m/versions/2/ready",
        ] {
            assert!(rest_uncounted(path), "{path}");
        }
        for path in [
            "/v2/models/m/infer",
            "/v2",
            "/v2/models/m",
            "/v1/embeddings",
        ] {
            assert!(!rest_uncounted(path), "{path}");
        }
        assert!(grpc_uncounted("/grpc.health.v1.Health/Check"));
        assert!(grpc_uncounted(
            "/inference.GRPCInferenceService/ServerReady"
        ));
        assert!(!grpc_uncounted(
            "/inference.GRPCInferenceService/ModelInfer"
        ));
        assert!(!grpc_uncounted(
            "/inference.GRPCInferenceService/RepositoryModelLoad"
        ));
    }
}
